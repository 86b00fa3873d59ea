//! Delivery under faults, on a real ClickHouse, loopback only and bounded in
//! time: every acknowledged event is stored exactly once whatever the store
//! or the process does (acknowledged ⊆ stored, count() = uniqExact(uuid)).

use leanloop_core::{Event, EventKind};
use leanloop_store::clickhouse::{ClickHouseOptions, ClickHouseStore};
use leanloop_store::duckdb::{DuckDbOptions, DuckDbStore};
use leanloop_store::{EventFilter, EventStore, WriteOutcome};
use leanloop_tests::clickhouse::{self as ch, fresh_database, store_url, Private};
use leanloop_tests::load::{self, Outcome};
use leanloop_tests::process::Process;
use leanloop_tests::{eventually_within, TestServer};
use std::collections::HashSet;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Long enough for a large backlog to reach ClickHouse on a busy machine.
const DELIVERY_DEADLINE: Duration = Duration::from_secs(180);
/// How long the store stays down in the outage scenario (the figure).
const OUTAGE: Duration = Duration::from_secs(30);

/// Waits until everything acknowledged is in `database`, then checks nothing
/// is there twice and nothing is there that was never sent.
async fn assert_exactly_once(http: &str, database: &str, outcome: &Outcome) {
    let acknowledged = outcome.acknowledged.len() as u64;
    let what = format!("{acknowledged} acknowledged events in ClickHouse");
    eventually_within(&what, DELIVERY_DEADLINE, || async {
        let (count, unique) = ch::totals(http, database).await;
        assert_eq!(count, unique, "an event was stored twice");
        (unique >= acknowledged).then_some(())
    })
    .await;
    let stored = ch::stored_uuids(http, database).await;
    let lost = outcome.acknowledged.difference(&stored).count();
    assert_eq!(lost, 0, "acknowledged events missing from ClickHouse");
    assert!(stored.is_subset(&outcome.sent), "ClickHouse holds events nobody sent");
    let (count, unique) = ch::totals(http, database).await;
    assert_eq!(count, unique, "an event was stored twice");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_30_second_clickhouse_outage_loses_and_duplicates_nothing() {
    let server = Private::start();
    let database = fresh_database();
    let url = store_url(&server.http, &database);
    let s = TestServer::start_with(|c| c.clickhouse = Some(ClickHouseOptions::new(url))).await;
    let target = load::target(&s.base);
    let sending = load::sustain(target, s.project.write_key.clone(), 50, Duration::from_millis(5));

    sending.until_more_acknowledged(5_000).await;
    server.stop();
    let down = Instant::now();
    // The outage lasts OUTAGE, and ingest must keep being acknowledged into
    // the log through all of it: wait on both.
    while down.elapsed() < OUTAGE {
        sending.until_more_acknowledged(1_000).await;
    }
    let backlog = s.collector.queue().backlog().used;
    assert!(backlog > 0, "events acknowledged during the outage wait in the log");
    server.restart();
    sending.until_more_acknowledged(5_000).await;
    let outcome = sending.finish().await;
    assert!(outcome.acknowledged.len() > 10_000, "sustained ingest: {} acknowledged", outcome.acknowledged.len());
    assert_exactly_once(&server.http, &database, &outcome).await;
}

/// A collector process over its own log directory and a shared data directory.
struct Edge {
    data_dir: std::path::PathBuf,
    log_dir: tempfile::TempDir,
    config: std::path::PathBuf,
    store: String,
}

impl Edge {
    fn new(data_dir: &std::path::Path, store: &str) -> Edge {
        let log_dir = tempfile::tempdir().unwrap();
        let config = log_dir.path().join("collector.toml");
        std::fs::write(&config, "[collector]\ndelivery_interval_ms = 100\n").unwrap();
        Edge { data_dir: data_dir.to_owned(), log_dir, config, store: store.to_owned() }
    }

    /// Starts a collector on a fresh loopback port.
    fn start(&self) -> Process {
        let log_dir = self.log_dir.path().join("log");
        let args = [
            "collector",
            "--listen",
            "127.0.0.1:0",
            "--clickhouse",
            &self.store,
            "--data-dir",
            &self.data_dir.to_string_lossy(),
            "--log-dir",
            &log_dir.to_string_lossy(),
            "--config",
            &self.config.to_string_lossy(),
        ];
        Process::start(&args.map(str::to_owned))
    }
}

fn project_in(dir: &std::path::Path) -> leanloop_control::Project {
    let control = leanloop_control::ControlPlane::open(&dir.join("control.sqlite")).unwrap();
    control.create_project("fault tests").unwrap()
}

/// Waits until a collector reports an empty backlog.
async fn drained(base: &str) {
    let client = reqwest::Client::new();
    eventually_within("the collector's backlog to be delivered", DELIVERY_DEADLINE, || async {
        let ready: serde_json::Value = client.get(format!("{base}/readyz")).send().await.unwrap().json().await.unwrap();
        (ready["backlog"] == 0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_collector_killed_20_times_mid_stream_loses_and_duplicates_nothing() {
    let http = ch::shared();
    let database = fresh_database();
    let data = tempfile::tempdir().unwrap();
    let project = project_in(data.path());
    let edge = Edge::new(data.path(), &store_url(&http, &database));

    let mut collector = edge.start();
    let target = load::target(&collector.base);
    let sending = load::sustain(target.clone(), project.write_key.clone(), 50, Duration::from_millis(2));
    for round in 0..20u64 {
        // Kill at a different point of the stream each time: after a
        // different number of events acknowledged by this incarnation.
        sending.until_more_acknowledged(200 + (round * 37) % 300).await;
        collector.kill();
        // A new port each time: the freed one may be taken meanwhile.
        collector = edge.start();
        *target.write().unwrap() = collector.base.clone();
    }
    sending.until_more_acknowledged(500).await;
    let outcome = sending.finish().await;
    drained(&collector.base).await;
    assert!(outcome.failures > 0, "the kills interrupted requests");
    assert!(outcome.acknowledged.len() > 1000, "{} acknowledged", outcome.acknowledged.len());
    assert_exactly_once(&http, &database, &outcome).await;
    collector.terminate();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hang_up_stops_the_server_gracefully_storing_every_acknowledged_event() {
    let data = tempfile::tempdir().unwrap();
    let project = project_in(data.path());
    // No log: what the in-memory queue holds is stored only by a graceful stop.
    let config = data.path().join("server.toml");
    std::fs::write(&config, "[collector]\nlog = false\n").unwrap();
    let args = ["serve", "--listen", "127.0.0.1:0", "--data-dir", &data.path().to_string_lossy(), "--config"]
        .map(str::to_owned)
        .into_iter()
        .chain([config.to_string_lossy().into_owned()])
        .collect::<Vec<_>>();
    let server = Process::start(&args);
    let sending = load::sustain(load::target(&server.base), project.write_key.clone(), 50, Duration::from_millis(2));
    sending.until_more_acknowledged(2_000).await;
    server.hang_up();
    let outcome = sending.finish().await;
    // The stopped server's store, read directly: every event, not a page.
    let store = DuckDbStore::open(&data.path().join("events.duckdb"), &DuckDbOptions::default()).unwrap();
    let events = store.recent(&EventFilter::project(project.id), 10_000_000).unwrap();
    let stored: HashSet<Uuid> = events.iter().map(|e| e.uuid).collect();
    assert_eq!(stored.len(), events.len(), "an event was stored twice");
    assert!(outcome.acknowledged.len() >= 2_000, "{} acknowledged", outcome.acknowledged.len());
    let lost = outcome.acknowledged.difference(&stored).count();
    assert_eq!(lost, 0, "acknowledged events lost by the hang-up");
    assert!(stored.is_subset(&outcome.sent), "the store holds events nobody sent");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_collector_started_and_killed_while_clickhouse_is_down_delivers_once_it_is_up() {
    let server = Private::start();
    server.stop();
    let database = fresh_database();
    let data = tempfile::tempdir().unwrap();
    let project = project_in(data.path());
    let edge = Edge::new(data.path(), &store_url(&server.http, &database));

    // The store has never been reached: no database, no tables yet.
    let collector = edge.start();
    let target = load::target(&collector.base);
    let sending = load::sustain(target.clone(), project.write_key.clone(), 50, Duration::from_millis(5));
    sending.until_more_acknowledged(1_000).await;
    collector.kill();
    let collector = edge.start();
    *target.write().unwrap() = collector.base.clone();
    sending.until_more_acknowledged(1_000).await;
    // A process of its own: its metrics count its own attempts alone.
    let client = reqwest::Client::new();
    eventually_within("failed deliveries to be counted", DELIVERY_DEADLINE, || async {
        let text = client.get(format!("{}/metrics", collector.base)).send().await.ok()?.text().await.ok()?;
        (leanloop_tests::metric(&text, "leanloop_store_write_errors_total")? > 0.0).then_some(())
    })
    .await;
    server.restart();
    sending.until_more_acknowledged(1_000).await;
    let outcome = sending.finish().await;
    drained(&collector.base).await;
    assert_exactly_once(&server.http, &database, &outcome).await;
    collector.terminate();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_log_answers_503_with_retry_after_and_ingest_resumes_after_the_backlog_drains() {
    let server = Private::start();
    let database = fresh_database();
    let url = store_url(&server.http, &database);
    let s = TestServer::start_with(|c| {
        c.clickhouse = Some(ClickHouseOptions::new(url));
        c.collector.max_body_bytes = 256 * 1024;
        c.collector.log_max_bytes = 1024 * 1024;
    })
    .await;
    server.stop();
    let events = |tag: &str| {
        let batch: Vec<serde_json::Value> = (0..200)
            .map(|i| serde_json::json!({"type": "track", "event": tag, "userId": format!("u{i}"),
                                       "messageId": leanloop_tests::message_id(), "properties": {"pad": "x".repeat(64)}}))
            .collect();
        serde_json::json!({ "batch": batch })
    };
    let (accepted, refused) = s.post_until_refused(200, 1_000_000, || events("fill")).await;
    assert!(refused.headers().contains_key("retry-after"), "503 carries Retry-After");
    let answer: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(answer["error"]["code"], "unavailable", "{answer}");
    assert_eq!(s.client.get(s.url("/readyz")).send().await.unwrap().status(), 503);

    server.restart();
    s.settle_within(DELIVERY_DEADLINE).await;
    assert_eq!(s.post("/v1/batch", &events("after")).await.status(), 200, "ingest resumes");
    assert_eq!(s.count(&[("name", "fill")]).await, accepted);
    assert_eq!(s.count(&[("name", "after")]).await, 200);
    assert_eq!(ch::totals(&server.http, &database).await, (accepted + 200, accepted + 200));
}

#[tokio::test(flavor = "multi_thread")]
async fn two_collectors_into_one_clickhouse_store_exact_totals() {
    let http = ch::shared();
    let database = fresh_database();
    let data = tempfile::tempdir().unwrap();
    let project = project_in(data.path());
    let store = store_url(&http, &database);
    let (a, b) = (Edge::new(data.path(), &store), Edge::new(data.path(), &store));
    let (ca, cb) = (a.start(), b.start());
    let la = load::sustain(load::target(&ca.base), project.write_key.clone(), 100, Duration::from_millis(2));
    let lb = load::sustain(load::target(&cb.base), project.write_key.clone(), 100, Duration::from_millis(2));
    la.until_more_acknowledged(10_000).await;
    lb.until_more_acknowledged(10_000).await;
    let (oa, ob) = (la.finish().await, lb.finish().await);
    drained(&ca.base).await;
    drained(&cb.base).await;
    let mut both = Outcome::default();
    for o in [oa, ob] {
        assert_eq!((o.failures, o.refusals), (0, 0), "nothing was refused");
        both.acknowledged.extend(o.acknowledged);
        both.sent.extend(o.sent);
    }
    assert_exactly_once(&http, &database, &both).await;
    let (count, _) = ch::totals(&http, &database).await;
    assert_eq!(count, both.acknowledged.len() as u64, "totals are exact");
    ca.terminate();
    cb.terminate();
}

/// A dead process's insert of 2,000 events, still running on the server
/// (slowed by `sleepEachRow(row_sleep)` over blocks of `block_rows`), while
/// the next process opens the store and writes the same events: replayed
/// from the log, or sent again by a client that got no answer. Returns the
/// write's outcome, the table's (count, uniqExact(uuid)) and whether the
/// predecessor's insert succeeded.
async fn write_beside_a_running_insert(
    row_sleep: f64,
    block_rows: usize,
    replayed: bool,
) -> (WriteOutcome, (u64, u64), bool) {
    let http = ch::shared();
    let database = fresh_database();
    let options = ClickHouseOptions::new(store_url(&http, &database));
    drop(
        tokio::task::spawn_blocking({
            let options = options.clone();
            move || ClickHouseStore::open(&options).unwrap()
        })
        .await
        .unwrap(),
    );
    let events: Vec<Event> = (0..2_000u128)
        .map(|n| Event::new(uuid::Uuid::from_u128(n + 1), 1, EventKind::Track, "replayed", 1_714_557_600_000))
        .collect();

    // The predecessor's insert, tagged as every insert is.
    let uuids: Vec<String> = events.iter().map(|e| format!("'{}'", e.uuid)).collect();
    let query_id = format!("leanloop-events-{database}-{}", uuid::Uuid::new_v4());
    let slow_insert = format!(
        "INSERT INTO {database}.events (uuid, project_id, kind, name, timestamp, timestamp_ms, received_at_ms, properties)
         SELECT toUUID(arrayElement([{}], toUInt32(number + 1))), 1, 'track', 'replayed', toDateTime(1714557600),
             1714557600000, {received_at_ms}, '{{}}'
         FROM numbers(2000) WHERE sleepEachRow({row_sleep}) = 0
         SETTINGS max_block_size = {block_rows}",
        uuids.join(","),
        // Received now, as a predecessor's events are: within the dedup window.
        received_at_ms = chrono::Utc::now().timestamp_millis(),
    );
    let insert = tokio::spawn(
        reqwest::Client::new()
            .post(format!("{}/", http.trim_end_matches('/')))
            .query(&[("query_id", query_id.as_str())])
            .body(slow_insert)
            .send(),
    );
    let running = format!("SELECT count() FROM system.processes WHERE query_id = '{query_id}' FORMAT TSV");
    eventually_within("the insert to run", Duration::from_secs(30), || async {
        (ch::query(&http, &running).await.trim() == "1").then_some(())
    })
    .await;

    // The next process opens the store and writes the same records.
    let store = tokio::task::spawn_blocking(move || ClickHouseStore::open(&options).unwrap()).await.unwrap();
    let outcome = tokio::task::spawn_blocking(move || match replayed {
        true => store.write_replayed(&events, &[]).unwrap(),
        false => store.write(&events, &[]).unwrap(),
    })
    .await
    .unwrap();
    // Ended one way or the other: the fence waited for it, or killed it.
    let succeeded = insert.await.unwrap().is_ok_and(|answer| answer.status().is_success());
    (outcome, ch::totals(&http, &database).await, succeeded)
}

/// The race a SIGKILL can leave behind, played out exactly: the next
/// process's store waits for the dead process's insert to end before it
/// loads its dedup filter, so both the replay and a client's retry find the
/// rows and store none of them again. (Without the wait, the replay's
/// look-up and the retry's filter find nothing, and all 2,000 are stored a
/// second time.)
#[tokio::test(flavor = "multi_thread")]
async fn a_restart_waits_for_an_insert_its_dead_predecessor_left_running() {
    for replayed in [true, false] {
        let (outcome, totals, insert_succeeded) = write_beside_a_running_insert(0.0014, 65_536, replayed).await;
        assert!(insert_succeeded, "the predecessor's insert ran to its end");
        assert_eq!((outcome.inserted, outcome.duplicates), (0, 2_000), "replayed {replayed}: rows found");
        assert_eq!(totals, (2_000, 2_000), "replayed {replayed}");
    }
}

/// An insert from before the start that outlasts the fence's patience (a
/// client gone mid-body) is killed, so it stores nothing: the replay
/// stores every event once.
#[tokio::test(flavor = "multi_thread")]
async fn a_restart_kills_an_older_insert_that_will_not_end() {
    // 2,000 rows at 10 ms: 20 s, past the 10 s the fence waits.
    let (outcome, totals, insert_succeeded) = write_beside_a_running_insert(0.01, 200, true).await;
    assert!(!insert_succeeded, "the predecessor's insert was killed");
    assert_eq!((outcome.inserted, outcome.duplicates), (2_000, 0), "the killed insert stored nothing");
    assert_eq!(totals, (2_000, 2_000));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_clickhouse_that_takes_connections_and_never_answers_holds_up_neither_answers_nor_a_start() {
    let server = Private::start();
    let database = fresh_database();
    let data = tempfile::tempdir().unwrap();
    let project = project_in(data.path());
    // Answers come within two thirds of the deadline: 4 s here.
    let config = data.path().join("server.toml");
    std::fs::write(&config, "request_timeout_secs = 6\n[collector]\ndelivery_interval_ms = 100\n").unwrap();
    let data_dir = data.path().to_string_lossy().into_owned();
    let store = store_url(&server.http, &database);
    let args = ["serve", "--listen", "127.0.0.1:0", "--data-dir", &data_dir, "--clickhouse", &store, "--config"]
        .map(str::to_owned)
        .into_iter()
        .chain([config.to_string_lossy().into_owned()])
        .collect::<Vec<_>>();
    let start = |args: Vec<String>| async move {
        let started = tokio::task::spawn_blocking(move || Process::start(&args));
        tokio::time::timeout(Duration::from_secs(60), started).await.expect("started within a minute").unwrap()
    };
    let leanloop = start(args.clone()).await;
    let client = reqwest::Client::new();
    let send = |base: String, tag: &'static str| {
        let events: Vec<serde_json::Value> = (0..50)
            .map(|i| {
                serde_json::json!({"type": "track", "event": tag, "userId": format!("u{i}"),
                                       "messageId": leanloop_tests::message_id()})
            })
            .collect();
        client
            .post(format!("{base}/v1/batch"))
            .basic_auth(&project.write_key, Some(""))
            .json(&serde_json::json!({"batch": events}))
            .send()
    };
    assert_eq!(send(leanloop.base.clone(), "before").await.unwrap().status(), 200);
    drained(&leanloop.base).await;

    server.freeze(true);
    // A cohort is saved and said to be, without its count: a client that
    // retried a 503 would make a second one.
    let cohorts = format!("{}/api/v1/projects/{}/cohorts", leanloop.base, project.id);
    let definition =
        serde_json::json!({"name": "Pro", "filters": [{"field": "traits.plan", "op": "eq", "value": "pro"}]});
    let created = client.post(&cohorts).bearer_auth(&project.read_key).json(&definition).send().await.unwrap();
    assert_eq!(created.status(), 201);
    let created: serde_json::Value = created.json().await.unwrap();
    assert_eq!(created["count"], serde_json::Value::Null, "{created}");
    assert!(created["count_error"].as_str().unwrap().contains("did not answer"), "{created}");
    let one = format!("{cohorts}/{}", created["id"]);
    assert_eq!(client.delete(&one).bearer_auth(&project.read_key).send().await.unwrap().status(), 204);

    // A restart while it is stuck starts, and takes events into its log.
    leanloop.terminate();
    let leanloop = start(args).await;
    assert_eq!(send(leanloop.base.clone(), "while stuck").await.unwrap().status(), 200);
    server.freeze(false);
    drained(&leanloop.base).await;
    let count = ch::query(&server.http, &format!("SELECT count() FROM {database}.events")).await;
    assert_eq!(count.trim(), "100");
    leanloop.terminate();
}

/// A server started on another log directory, or with the log off, while
/// the log it last used still holds acknowledged events not yet stored
/// would hide them: that start is refused, naming the log. Started on that
/// log again (here with DuckDB in place of the ClickHouse that was down),
/// it stores them.
#[tokio::test(flavor = "multi_thread")]
async fn a_start_that_would_leave_acknowledged_events_behind_in_the_last_log_is_refused() {
    use leanloop::{App, Config, Role};
    // Nothing listens on port 1: the store is down, the log keeps the events.
    let down = ClickHouseOptions::new("http://127.0.0.1:1/?database=leanloop");
    let s = TestServer::start_in(tempfile::tempdir().unwrap(), |c| {
        c.clickhouse = Some(down.clone());
        c.shutdown_timeout = Duration::from_millis(200);
    })
    .await;
    let kept = serde_json::json!({"batch": [
        {"type": "track", "event": "kept", "userId": "u-1", "messageId": leanloop_tests::message_id()}
    ]});
    assert_eq!(s.post("/v1/batch", &kept).await.status(), 200);
    // While it runs, a second server on its data directory is refused as
    // that (not told to start on the log in use), and no log directory is
    // made for it.
    let elsewhere = tempfile::tempdir().unwrap();
    let second = Config { log_dir: elsewhere.path().join("second"), ..Config::for_tests(s.data_dir.path()) };
    let refused = App::build(second, Role::Server).await.err().expect("a second server started");
    assert!(format!("{refused:#}").contains("in use by another server"), "{refused:#}");
    assert!(!elsewhere.path().join("second").exists());
    let data = s.stop().await;
    let last_log = data.path().join("log");
    let on_another_log = Config { log_dir: elsewhere.path().join("log"), ..Config::for_tests(data.path()) };
    let mut with_the_log_off = Config::for_tests(data.path());
    with_the_log_off.collector.log = false;
    for (what, config) in [("another log directory", on_another_log), ("the log off", with_the_log_off)] {
        let refused = App::build(config, Role::Server).await.err().unwrap_or_else(|| panic!("{what}: started"));
        let text = format!("{refused:#}");
        assert!(text.contains("still holds") && text.contains(&last_log.display().to_string()), "{what}: {text}");
    }
    let s = TestServer::start_in(data, |_| {}).await;
    assert_eq!(s.count(&[("name", "kept")]).await, 1);
    // Delivered, the last log holds nothing: another one is taken.
    let data = s.stop().await;
    let s = TestServer::start_in(data, |c| c.log_dir = elsewhere.path().join("log")).await;
    assert_eq!(s.count(&[("name", "kept")]).await, 1);
    s.stop().await;
}
