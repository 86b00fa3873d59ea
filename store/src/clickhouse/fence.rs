//! The insert fence. A process killed mid-insert may leave that insert
//! running on the server: ClickHouse finishes an insert whose body arrived
//! whole even after its client is gone. The same holds for an insert whose
//! answer was lost to a timeout or a dropped connection. Until such an
//! insert has finished, its rows are invisible: to the dedup filter a
//! starting store loads, and to the uuid look-up of a write that stores the
//! same records again (the next process's replay, a client's retry, or the
//! store's own retry), which would store them a second time.
//!
//! So every insert into `events` carries a query id naming its database
//! ([`query_id`]). A store opening waits, before it loads its filter, until
//! none of those that started before it is running; after an insert of its
//! own failed, its next write waits likewise and looks every key up. Those
//! still running after [`PATIENCE`] (a client that vanished mid-body
//! without closing its connection) are killed: a killed insert stores
//! nothing. Either way what follows sees what is finally stored.

use crate::StoreError;
use std::time::{Duration, Instant};

/// How long older inserts may take to finish on their own.
const PATIENCE: Duration = Duration::from_secs(10);
/// How long to wait, killing included, before the write fails (and is
/// retried, fence first).
const GIVE_UP: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(50);

fn prefix(database: &str) -> String {
    format!("leanloop-events-{database}-")
}

/// A fresh query id for one insert into `database`'s `events`.
pub fn query_id(database: &str) -> String {
    format!("{}{}", prefix(database), uuid::Uuid::new_v4())
}

/// Waits until no insert into `database`'s `events` that started before
/// `since` is running; see the module docs.
pub async fn wait_for_older_inserts(
    client: &clickhouse::Client,
    database: &str,
    since: Instant,
) -> Result<(), StoreError> {
    let prefix = prefix(database);
    let waiting = Instant::now();
    let mut killed = false;
    loop {
        // Started before `since`: running for longer than the time since.
        let older = since.elapsed().as_secs_f64();
        let running: u64 = client
            .query("SELECT count() FROM system.processes WHERE position(query_id, ?) = 1 AND elapsed >= ?")
            .bind(&prefix)
            .bind(older)
            .fetch_one()
            .await?;
        if running == 0 {
            if waiting.elapsed() >= POLL {
                tracing::info!(ms = waiting.elapsed().as_millis() as u64, "earlier inserts have ended");
            }
            return Ok(());
        }
        if waiting.elapsed() >= GIVE_UP {
            return Err(StoreError::InFlight(running));
        }
        if waiting.elapsed() >= PATIENCE && !killed {
            tracing::warn!(running, "killing earlier inserts that are still running");
            client
                .query("KILL QUERY WHERE position(query_id, ?) = 1 AND elapsed >= ? ASYNC")
                .bind(&prefix)
                .bind(older)
                .execute()
                .await?;
            killed = true;
        }
        tokio::time::sleep(POLL).await;
    }
}
