//! A TCP relay between the browser and the collector that a test can break:
//! the SDK's host points at the gate, so the network path to the collector
//! fails on command while the pages themselves still load.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// What the gate does with the browser's connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Relays both ways.
    Open,
    /// Closes each connection unanswered: the collector is unreachable.
    Refuse,
    /// Relays the request, then closes the connection as the answer starts:
    /// the collector has the events but the browser never learns it.
    LoseAnswers,
}

struct State {
    mode: Mutex<Mode>,
    /// Cancelled when the mode changes, ending the connections opened before:
    /// browsers keep connections alive and would otherwise go on using them.
    current: Mutex<CancellationToken>,
    lost: AtomicUsize,
}

pub struct Gate {
    /// The address to give the SDK as its host, `http://127.0.0.1:PORT`.
    pub base: String,
    state: Arc<State>,
    accepting: tokio::task::JoinHandle<()>,
}

impl Gate {
    /// Starts an open gate in front of the collector at `target` (`http://IP:PORT`).
    pub async fn start(target: &str) -> Gate {
        let target: SocketAddr = target
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .unwrap_or_else(|e| panic!("the gate needs an http://IP:PORT target, not {target}: {e}"));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the gate");
        let base = format!("http://{}", listener.local_addr().expect("gate address"));
        let state = Arc::new(State {
            mode: Mutex::new(Mode::Open),
            current: Mutex::new(CancellationToken::new()),
            lost: AtomicUsize::new(0),
        });
        let accepting = tokio::spawn(accept(listener, target, state.clone()));
        Gate { base, state, accepting }
    }

    /// Switches mode and ends every connection made under the old one.
    pub fn set(&self, mode: Mode) {
        *lock(&self.state.mode) = mode;
        let old = std::mem::replace(&mut *lock(&self.state.current), CancellationToken::new());
        old.cancel();
    }

    /// Requests whose answers were swallowed so far.
    pub fn lost(&self) -> usize {
        self.state.lost.load(Ordering::SeqCst)
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.accepting.abort();
        lock(&self.state.current).cancel();
    }
}

async fn accept(listener: TcpListener, target: SocketAddr, state: Arc<State>) {
    while let Ok((inbound, _)) = listener.accept().await {
        let mode = *lock(&state.mode);
        let ended = lock(&state.current).clone();
        let state = state.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = relay(inbound, target, mode, &state) => {}
                _ = ended.cancelled() => {}
            }
        });
    }
}

async fn relay(mut inbound: TcpStream, target: SocketAddr, mode: Mode, state: &State) {
    if mode == Mode::Refuse {
        return; // dropping the socket closes it without an answer
    }
    let Ok(mut outbound) = TcpStream::connect(target).await else {
        return;
    };
    if mode == Mode::Open {
        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
        return;
    }
    let (mut from_browser, _to_browser) = inbound.split();
    let (mut from_collector, mut to_collector) = outbound.split();
    let mut first = [0u8; 1];
    // The collector answers only after reading the whole request, so the
    // first byte of its answer means the request went through.
    tokio::select! {
        _ = tokio::io::copy(&mut from_browser, &mut to_collector) => {}
        read = from_collector.read(&mut first) => {
            if matches!(read, Ok(n) if n > 0) {
                state.lost.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
