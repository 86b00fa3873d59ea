//! Docker hosts and the scheduler that places runs on them.
//!
//! Each host has a capacity (runs at once). A run goes to the reachable host
//! with the most free places; an unreachable host is skipped (and asked again
//! next time); when every reachable host is full the run waits, pending.

use crate::PipelineError;
use bollard::Docker;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, Notify};
use tokio_util::sync::CancellationToken;

/// How long a host may take to answer a ping before it is skipped.
const PING_TIMEOUT: Duration = Duration::from_secs(3);
/// Engine calls' own timeout; long builds stream, so this bounds silence.
const ENGINE_TIMEOUT_SECS: u64 = 600;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HostSpec {
    /// `unix:///var/run/docker.sock` or `tcp://10.0.0.2:2375`.
    pub url: String,
    /// Runs at once on this host.
    #[serde(default = "default_capacity")]
    pub capacity: usize,
}

fn default_capacity() -> usize {
    2
}

impl HostSpec {
    pub fn local() -> HostSpec {
        HostSpec { url: "unix:///var/run/docker.sock".into(), capacity: default_capacity() }
    }

    pub fn validate(&self) -> Result<(), String> {
        if !(self.url.starts_with("unix://") || self.url.starts_with("tcp://") || self.url.starts_with("http://")) {
            return Err(format!("docker host `{}` must start with unix://, tcp:// or http://", self.url));
        }
        // A network address must be one: a host and its port (1 to 65535;
        // the client would take 80 for none, never the engine's 2375).
        if !self.url.starts_with("unix://") {
            let address = self.url.split_once("://").map_or("", |(_, rest)| rest).trim_end_matches('/');
            let (host, port) = address.rsplit_once(':').unwrap_or((address, ""));
            let bracketed = host.starts_with('[') && host.ends_with(']');
            if host.is_empty()
                || host.contains(['/', '@', ' '])
                || (host.contains(':') && !bracketed)
                || port.parse::<u16>().map_or(true, |p| p == 0)
            {
                return Err(format!("docker host `{}` must be tcp://HOST:PORT (a port of 1 to 65535)", self.url));
            }
        }
        if self.capacity == 0 || self.capacity > crate::MAX_PLACES {
            return Err(format!("docker host `{}`: capacity must be 1 to {}", self.url, crate::MAX_PLACES));
        }
        Ok(())
    }
}

pub struct Host {
    pub spec: HostSpec,
    /// Negotiated client, made on first successful contact.
    client: Mutex<Option<Docker>>,
    running: AtomicUsize,
}

impl Host {
    fn new(spec: HostSpec) -> Host {
        Host { spec, client: Mutex::new(None), running: AtomicUsize::new(0) }
    }

    /// A client for this host if it answers now.
    pub async fn reachable(&self) -> Option<Docker> {
        let mut slot = self.client.lock().await;
        let docker = match slot.as_ref() {
            Some(d) => d.clone(),
            None => {
                let raw = if self.spec.url.starts_with("unix://") {
                    Docker::connect_with_unix(&self.spec.url, ENGINE_TIMEOUT_SECS, bollard::API_DEFAULT_VERSION)
                } else {
                    Docker::connect_with_http(&self.spec.url, ENGINE_TIMEOUT_SECS, bollard::API_DEFAULT_VERSION)
                }
                .ok()?;
                // Older engines refuse the crate's newest API version.
                let negotiated = tokio::time::timeout(PING_TIMEOUT, raw.negotiate_version()).await.ok()?.ok()?;
                *slot = Some(negotiated.clone());
                return Some(negotiated);
            }
        };
        match tokio::time::timeout(PING_TIMEOUT, docker.ping()).await {
            Ok(Ok(_)) => Some(docker),
            _ => {
                *slot = None;
                None
            }
        }
    }

    pub fn running(&self) -> usize {
        self.running.load(Ordering::SeqCst)
    }
}

pub struct Hosts {
    hosts: Vec<Arc<Host>>,
    freed: Notify,
}

/// A place on a host, given back when dropped.
pub struct Lease {
    pub host: Arc<Host>,
    pub docker: Docker,
    hosts: Arc<Hosts>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.host.running.fetch_sub(1, Ordering::SeqCst);
        self.hosts.freed.notify_waiters();
    }
}

impl Hosts {
    pub fn new(specs: Vec<HostSpec>) -> Arc<Hosts> {
        Arc::new(Hosts { hosts: specs.into_iter().map(|s| Arc::new(Host::new(s))).collect(), freed: Notify::new() })
    }

    pub fn all(&self) -> &[Arc<Host>] {
        &self.hosts
    }

    /// Every host that answers now, with its client.
    pub async fn reachable(&self) -> Vec<(Arc<Host>, Docker)> {
        let mut out = Vec::new();
        for host in &self.hosts {
            if let Some(docker) = host.reachable().await {
                out.push((host.clone(), docker));
            }
        }
        out
    }

    /// Waits for a free place on a reachable host. Fails at once when no host
    /// answers at all.
    pub async fn acquire(self: &Arc<Self>, cancel: &CancellationToken) -> Result<Option<Lease>, PipelineError> {
        loop {
            let freed = self.freed.notified();
            let reachable = self.reachable().await;
            if reachable.is_empty() {
                return Err(PipelineError::NoHost);
            }
            let best = reachable
                .into_iter()
                .filter(|(h, _)| h.running() < h.spec.capacity)
                .max_by_key(|(h, _)| h.spec.capacity - h.running());
            if let Some((host, docker)) = best {
                // Claimed with a compare-and-swap so two runs cannot take the last place.
                let current = host.running();
                if current < host.spec.capacity
                    && host.running.compare_exchange(current, current + 1, Ordering::SeqCst, Ordering::SeqCst).is_ok()
                {
                    return Ok(Some(Lease { host, docker, hosts: self.clone() }));
                }
                continue;
            }
            tokio::select! {
                _ = freed => {}
                // A host may come back or free up without a lease being dropped here.
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                _ = cancel.cancelled() => return Ok(None),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_urls_are_checked_at_start() {
        let spec = |url: &str| HostSpec { url: url.into(), capacity: 2 };
        for good in
            ["unix:///var/run/docker.sock", "tcp://127.0.0.1:2375", "http://docker.example:2376/", "tcp://[::1]:2375"]
        {
            assert_eq!(spec(good).validate(), Ok(()), "{good}");
        }
        for bad in [
            "tcp://127.0.0.1:99999",
            "tcp://127.0.0.1:0",
            "tcp://:2375",
            "http://a/b:1",
            "ftp://x",
            "tcp://h:port",
            "tcp://dockerhost",
            "tcp://[::1]",
        ] {
            assert!(spec(bad).validate().is_err(), "{bad}");
        }
    }
}
