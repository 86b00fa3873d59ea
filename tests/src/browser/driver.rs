//! `chromedriver` as a child process on a free loopback port, shut down (and
//! with it the browsers it started) when dropped.

use crate::DEADLINE;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Attempts at a port: another process may take the free port we picked
/// before chromedriver binds it.
const ATTEMPTS: usize = 5;

/// A binary the browser tests need: `var` overrides `default`. Missing is a
/// failure, never a skip.
pub fn binary(var: &str, default: &str, package: &str) -> PathBuf {
    let path = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| PathBuf::from(default));
    assert!(
        path.is_file(),
        "{} is missing: install Debian's `{package}` package (scripts/test.sh does) or set {var}",
        path.display()
    );
    path
}

pub struct Driver {
    child: Child,
    port: u16,
    /// The WebDriver endpoint, `http://127.0.0.1:PORT`.
    pub url: String,
}

impl Driver {
    /// Starts chromedriver, logging to `log` (its own output and the
    /// browser's), and waits until it reports itself ready.
    pub async fn start(log: &Path) -> Driver {
        let program = binary("LEANLOOP_TEST_CHROMEDRIVER", "/usr/bin/chromedriver", "chromium-driver");
        for _ in 0..ATTEMPTS {
            let port = free_port();
            let out = File::create(log).expect("chromedriver log file");
            let err = out.try_clone().expect("chromedriver log file");
            let child = Command::new(&program)
                .arg(format!("--port={port}"))
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .spawn()
                .unwrap_or_else(|e| panic!("{} does not start: {e}", program.display()));
            // Reaped however the wait ends, a timeout's panic included.
            let mut pending = Unready(Some(child));
            let child = pending.0.as_mut().expect("the child is pending");
            if ready(child, port, log).await {
                let child = pending.0.take().expect("the child is pending");
                return Driver { child, port, url: format!("http://127.0.0.1:{port}") };
            }
            // It exited: the port was taken in between. Try another.
        }
        panic!("chromedriver exited {ATTEMPTS} times before listening:\n{}", read_log(log));
    }
}

/// Waits for chromedriver to listen (true) or exit (false). Its own "started
/// successfully" line proves the port is ours; only then is `/status` asked,
/// so a driver another test started on the same port is never mistaken for it.
async fn ready(child: &mut Child, port: u16, log: &Path) -> bool {
    let http = reqwest::Client::new();
    let status = format!("http://127.0.0.1:{port}/status");
    let what = format!("chromedriver to listen or exit (log: {})", log.display());
    crate::eventually_within(&what, DEADLINE, || {
        let exited = child.try_wait().expect("chromedriver status").is_some();
        let started = std::fs::read_to_string(log).unwrap_or_default().contains("started successfully");
        let (http, status) = (http.clone(), status.clone());
        async move {
            if exited {
                return Some(false);
            }
            if !started {
                return None;
            }
            let answer = http.get(&status).timeout(Duration::from_secs(1)).send().await.ok()?;
            let body: serde_json::Value = answer.json().await.ok()?;
            (body["value"]["ready"] == true).then_some(true)
        }
    })
    .await
}

/// A chromedriver not yet known to listen on its own port: killed when
/// dropped. Not a [`Driver`], whose `/shutdown` could reach another test's
/// driver on that port.
struct Unready(Option<Child>);

impl Drop for Unready {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // `/shutdown` makes chromedriver quit the browsers it started; killed
        // outright, it would leave them running.
        request_shutdown(self.port);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(_) => break,
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port nothing listens on right now (the listener is released at once).
fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a loopback port");
    listener.local_addr().expect("bound address").port()
}

/// A blocking `GET /shutdown`: it runs in `Drop`, where nothing can be awaited.
fn request_shutdown(port: u16) {
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut stream) = TcpStream::connect_timeout(&address, Duration::from_secs(1)) else {
        return;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = stream.write_all(b"GET /shutdown HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    let _ = stream.read(&mut [0u8; 512]);
}

/// The end of the log, for failure messages.
fn read_log(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let start = text.len().saturating_sub(4000);
    let start = (start..text.len()).find(|&i| text.is_char_boundary(i)).unwrap_or(text.len());
    text[start..].to_owned()
}
