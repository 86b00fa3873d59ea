//! The `leanloop` binary as a child process, for tests that kill it.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// The `leanloop` binary built beside this test binary (`LEANLOOP_BIN` overrides).
pub fn leanloop_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("LEANLOOP_BIN") {
        return path.into();
    }
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/suite-xxxx → target/<profile>/leanloop
    let bin = exe.parent().and_then(|deps| deps.parent()).expect("target directory").join("leanloop");
    assert!(bin.exists(), "{} is missing: build the workspace's binaries first", bin.display());
    bin
}

pub struct Process {
    child: Child,
    pub base: String,
}

impl Process {
    /// Runs `leanloop ARGS` and waits until it prints where it listens.
    pub fn start(args: &[String]) -> Process {
        let mut command = Command::new(leanloop_bin());
        // As from a terminal, whatever the test runner ignores (`nohup`).
        // SAFETY: only an async-signal-safe call between fork and exec.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut command, || {
                libc::signal(libc::SIGHUP, libc::SIG_DFL);
                Ok(())
            });
        }
        let mut child = command
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("leanloop starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let base = lines
            .by_ref()
            .map_while(Result::ok)
            .find_map(|line| line.split("listening on ").nth(1).map(|b| b.trim().to_owned()));
        let Some(base) = base else {
            let status = child.wait().expect("exit status");
            panic!("leanloop {args:?} exited ({status}) before listening");
        };
        std::thread::spawn(move || lines.for_each(drop));
        Process { child, base }
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait: the graceful path.
    pub fn terminate(self) {
        self.signal("-TERM");
    }

    /// SIGHUP (a closed terminal) and wait.
    pub fn hang_up(self) {
        self.signal("-HUP");
    }

    fn signal(mut self, signal: &str) {
        let _ = Command::new("kill").args([signal, &self.child.id().to_string()]).status();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
