//! The write-ahead log on a disk that fills up: a small tmpfs of its own,
//! mounted for the test (which needs root, as the test command runs).
//! Requests the disk cannot take get 503 with Retry-After, nothing
//! acknowledged is lost or stored twice, and ingest resumes as soon as the
//! space returns; a disk the log shares with DuckDB keeps room for the
//! store to catch up.

use leanloop_tests::TestServer;
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The log's filesystem: smaller than one of its segments (64 MiB), so the
/// log must leave what room there is to its appends and roll early.
const DISK_MIB: u64 = 8;

/// A tmpfs mounted at `path` until dropped.
struct Disk {
    path: PathBuf,
}

impl Disk {
    fn mount(path: &Path, mib: u64) -> Disk {
        std::fs::create_dir_all(path).expect("mount point");
        let mounted =
            Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"]).arg(path).status();
        assert!(
            mounted.as_ref().is_ok_and(|s| s.success()),
            "mounting a tmpfs for the log needs root, as the test command runs: {mounted:?}"
        );
        Disk { path: path.to_owned() }
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Writes to a new file at `path` until the filesystem refuses more.
fn fill(path: &Path) {
    let mut file = std::fs::File::create(path).expect("ballast file");
    let block = vec![0xa5u8; 64 * 1024];
    while file.write_all(&block).is_ok() {}
    // What a full last block left: a byte at a time.
    while file.write_all(&[0xa5]).is_ok() {}
}

fn batch(tag: &str) -> Value {
    let events: Vec<Value> = (0..100)
        .map(|i| {
            json!({"type": "track", "event": tag, "userId": format!("u{i}"),
                   "messageId": leanloop_tests::message_id(), "properties": {"pad": "x".repeat(200)}})
        })
        .collect();
    json!({ "batch": events })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_answers_503_loses_nothing_and_ingest_resumes_when_space_returns() {
    let dir = tempfile::tempdir().expect("temp dir");
    let disk = Disk::mount(&dir.path().join("log"), DISK_MIB);
    let s = TestServer::start_with(|c| c.log_dir = disk.path.clone()).await;

    let first = s.post("/v1/batch", &batch("before")).await;
    assert_eq!(first.status(), 200, "the log has the disk's room: {}", first.text().await.unwrap());
    assert!(!disk.path.join("spare.tmp").exists(), "no spare segment on a disk under two segments");

    // Twice the disk through the log, delivered as it goes: segments roll
    // early and are retired, so records already stored never fill the disk.
    let (mut cycled, mut sent_bytes) = (0u64, 0u64);
    while sent_bytes < (2 * DISK_MIB) << 20 {
        for _ in 0..20 {
            let body = batch("cycled");
            sent_bytes += body.to_string().len() as u64;
            let r = s.post("/v1/batch", &body).await;
            assert_eq!(r.status(), 200, "after {sent_bytes} bytes: {}", r.text().await.unwrap());
            cycled += 100;
        }
        s.settle().await;
    }

    let ballast = disk.path.join("ballast");
    fill(&ballast);
    let (accepted, refused) = s.post_until_refused(100, 10_000, || batch("full")).await;
    assert!(refused.headers().contains_key("retry-after"), "503 carries Retry-After");
    let answer: Value = refused.json().await.unwrap();
    assert_eq!(answer["error"]["code"], "unavailable", "{answer}");
    let said = answer["error"]["message"].as_str().unwrap();
    assert!(said.contains("No space left") || said.contains("disk is nearly full"), "{answer}");
    let ready = s.client.get(s.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503, "a collector whose disk refuses is not ready");
    let ready: Value = ready.json().await.unwrap();
    let said = ready["error"].as_str().unwrap();
    assert!(said.contains("No space left") || said.contains("disk is nearly full"), "{ready}");

    std::fs::remove_file(&ballast).expect("ballast removed");
    let after = s.post("/v1/batch", &batch("after")).await;
    assert_eq!(after.status(), 200, "ingest resumes: {}", after.text().await.unwrap());
    assert_eq!(s.client.get(s.url("/readyz")).send().await.unwrap().status(), 200, "ready once an append succeeds");

    assert_eq!(s.count(&[("name", "before")]).await, 100);
    assert_eq!(s.count(&[("name", "cycled")]).await, cycled);
    assert_eq!(s.count(&[("name", "full")]).await, accepted);
    assert_eq!(s.count(&[("name", "after")]).await, 100);
    assert_eq!(s.count(&[]).await, 200 + cycled + accepted, "nothing stored that was refused, nothing twice");
}

/// The log and DuckDB on one disk, as by default. The disk fills under
/// load; once space returns, a burst of load would give the log all of it
/// while the store waits to retry, and nothing would be stored again. The
/// log leaves part of the disk to the store (`log_min_free_bytes`, here a
/// quarter of the disk), which catches up with no restart.
#[tokio::test(flavor = "multi_thread")]
async fn a_disk_shared_with_duckdb_keeps_room_for_the_store_to_catch_up() {
    let dir = tempfile::tempdir().expect("temp dir");
    let disk = Disk::mount(&dir.path().join("data"), 256);
    let s = std::sync::Arc::new(
        TestServer::start_with(|c| {
            c.data_dir = disk.path.clone();
            c.log_dir = disk.path.join("log");
        })
        .await,
    );
    let first = s.post("/v1/batch", &batch("before")).await;
    assert_eq!(first.status(), 200, "{}", first.text().await.unwrap());
    s.settle().await;

    let ballast = disk.path.join("ballast");
    fill(&ballast);
    let (full, refused) = s.post_until_refused(100, 2_000_000, || batch("full")).await;
    assert!(refused.headers().contains_key("retry-after"), "503 carries Retry-After");
    std::fs::remove_file(&ballast).expect("ballast removed");

    // Four clients at once for two seconds: the log takes what it may of
    // the freed space while the store waits to retry its failed write.
    let burst = (0..4).map(|_| {
        let s = s.clone();
        tokio::spawn(async move {
            let (mut accepted, until) = (0u64, std::time::Instant::now() + std::time::Duration::from_secs(2));
            while std::time::Instant::now() < until {
                let r = s.post("/v1/batch", &batch("after")).await;
                match r.status().as_u16() {
                    200 => accepted += 100,
                    503 => assert!(r.headers().contains_key("retry-after"), "503 carries Retry-After"),
                    other => panic!("{other}: {}", r.text().await.unwrap_or_default()),
                }
            }
            accepted
        })
    });
    let mut after = 0;
    for client in burst {
        after += client.await.expect("client");
    }
    assert!(after > 0, "ingest resumed once space returned");
    s.settle_within(std::time::Duration::from_secs(120)).await;
    assert_eq!(s.count(&[("name", "full")]).await, full);
    assert_eq!(s.count(&[("name", "after")]).await, after);
    assert_eq!(s.count(&[]).await, 100 + full + after, "everything acknowledged stored once, with no restart");
}
