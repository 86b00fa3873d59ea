//! The ClickHouse event store, for volumes beyond one machine.
//!
//! Talks HTTP through the official `clickhouse` crate: RowBinary inserts,
//! bound (escaped) parameters for every value in a query, and no schema
//! validation round trip (`with_validation(false)`), which servers older
//! than 24.x do not support. Schema and queries run on ClickHouse 18.16 and
//! on current releases; newer features are switched on by server version
//! (`schema.rs`).
//!
//! The crate is async; the store's interface is blocking (it is called from
//! the collector's writer threads), so the store owns a small runtime and
//! blocks on it.

mod dedup;
mod deferred;
mod fence;
mod identities;
mod mutations;
mod props;
mod read;
mod schema;
mod write;

pub use deferred::Deferred;
pub use props::float_text;
pub use schema::{cluster_ddl, ServerVersion};

use crate::asker;
use crate::seen::{key, Key, SeenKeys, MIN_CAPACITY};
use crate::{Chunk, Dialect, EventFilter, EventStore, Rows, Select, StoreError, UserRecord, WriteOutcome};
use leanloop_core::{Event, UserUpdate};
use std::collections::HashSet;
use std::future::Future;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Where the server is and how the store uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClickHouseOptions {
    /// `http://host:8123/?database=leanloop[&user=..&password=..]` (plain HTTP).
    pub url: String,
    /// Keys received within this window are remembered for uuid dedup; a
    /// retry arriving later than this after the original is not recognised.
    pub dedup_window: Duration,
    /// Events older than this are dropped by a TTL (servers 19.6+; ignored,
    /// with a warning, on older ones).
    pub retention_days: Option<u32>,
}

impl ClickHouseOptions {
    pub fn new(url: impl Into<String>) -> ClickHouseOptions {
        ClickHouseOptions { url: url.into(), dedup_window: Duration::from_secs(24 * 3600), retention_days: None }
    }

    /// Checks the URL's form, asking no server: at start-up, before
    /// anything is created.
    pub fn check(&self) -> Result<(), StoreError> {
        Endpoint::parse(&self.url).map(drop)
    }
}

/// `text` with its password (in the user info or as `password=`) shown as
/// `***`, for banners and errors; text that is no URL is not shown at all.
pub fn redacted(text: &str) -> String {
    let Some(mut url) = url::Url::parse(text).ok().filter(|u| u.has_host()) else { return "(not a URL)".into() };
    if url.password().is_some() {
        let _ = url.set_password(Some("***"));
    }
    if url.query_pairs().any(|(k, _)| k == "password") {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| (k.to_string(), if k == "password" { "***".to_owned() } else { v.to_string() }))
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    url.to_string()
}

/// Whether `name` can stand in DDL unquoted (databases, clusters): names
/// spliced into statements are checked with this first.
/// What [`is_identifier`] asks, as error messages say it.
pub const IDENTIFIER_RULE: &str = "letters, digits and underscores, not starting with a digit";

pub fn is_identifier(name: &str) -> bool {
    !name.is_empty()
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit())
}

/// A parsed server URL: the HTTP endpoint and the settings carried in its query.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Endpoint {
    http: String,
    database: String,
    user: Option<String>,
    password: Option<String>,
}

impl Endpoint {
    fn parse(text: &str) -> Result<Endpoint, StoreError> {
        let bad = |why: &str| StoreError::Config(format!("clickhouse url `{}`: {why}", redacted(text)));
        let url = url::Url::parse(text).map_err(|e| bad(&e.to_string()))?;
        match url.scheme() {
            "http" => {}
            "https" => return Err(bad("https is not supported: reach ClickHouse over plain HTTP on a private network, or through a local TLS proxy")),
            _ => return Err(bad("the scheme must be http (ClickHouse's HTTP interface, port 8123 by default)")),
        }
        let host = url.host_str().ok_or_else(|| bad("no host"))?;
        if !matches!(url.path(), "" | "/") {
            return Err(bad("a path is not supported: name the database as `?database=NAME`"));
        }
        // The user and password as written in the URL, where `@ : / ?` and
        // the like are percent-encoded.
        let decoded = |text: &str| {
            percent_encoding::percent_decode_str(text)
                .decode_utf8()
                .map(|text| text.into_owned())
                .map_err(|_| bad("the user or password is not UTF-8 once its %-escapes are decoded"))
        };
        let mut endpoint = Endpoint {
            http: format!("http://{}:{}", host, url.port_or_known_default().unwrap_or(8123)),
            database: "leanloop".into(),
            user: (!url.username().is_empty()).then(|| decoded(url.username())).transpose()?,
            password: url.password().map(decoded).transpose()?,
        };
        let mut seen = std::collections::HashSet::new();
        for (key, value) in url.query_pairs() {
            if !seen.insert(key.clone()) {
                return Err(bad(&format!("`{key}` is given twice")));
            }
            match key.as_ref() {
                "database" => endpoint.database = value.into_owned(),
                "user" => endpoint.user = Some(value.into_owned()),
                "password" => endpoint.password = Some(value.into_owned()),
                other => return Err(bad(&format!("unknown setting `{other}` (known: database, user, password)"))),
            }
        }
        if !is_identifier(&endpoint.database) {
            return Err(bad(&format!("database must be {IDENTIFIER_RULE}")));
        }
        Ok(endpoint)
    }

    fn client(&self, database: bool) -> clickhouse::Client {
        /// What a statement's text may take (the API's bodies are 2 MB at
        /// most, and a funnel repeats its steps' filters).
        const MAX_QUERY_BYTES: usize = 64 << 20;
        const MAX_AST_ELEMENTS: usize = 20_000_000;
        let mut client = clickhouse::Client::default().with_url(&self.http).with_validation(false);
        if database {
            // On a cluster, `events`, `identities` and `cohort_members` are
            // Distributed tables: the identity join and the cohort subquery
            // must run once and be shipped to the shards (GLOBAL), which the
            // default refuses. A single server ignores the setting.
            client = client.with_database(&self.database).with_setting("distributed_product_mode", "global");
            // An insert into a Distributed table returns once its rows are
            // on their shards, not queued on this server's disk: the log is
            // truncated only then, and a replay's uuid lookup finds them.
            client = client.with_setting("insert_distributed_sync", "1");
            // ... and reads and writes the same replica of each shard: the
            // connected server's own, else the first that answers in the
            // cluster's order, not a random one. Replicas copy rows to
            // each other later: read elsewhere, a link just stored would be
            // missed by the repair. (Where the server holds a replica of
            // the shard, inserts take it: on 18.16 whatever
            // `prefer_localhost_replica` says, on current servers as it is
            // on by default; reads take it as that setting is on.)
            client = client.with_setting("load_balancing", "in_order");
            // Bound values are written into the statement's text: a filter
            // of 1,000 long values, or a funnel of such steps, runs past
            // the default 256 KiB a statement may take.
            client = client.with_setting("max_query_size", MAX_QUERY_BYTES.to_string());
            // ... and parse to more than the default 50,000 elements (a
            // filter of 50 conditions of 1,000 values, a person's tens of
            // thousands of ids): refused, they were 500s DuckDB answers.
            client = client
                .with_setting("max_ast_elements", MAX_AST_ELEMENTS.to_string())
                .with_setting("max_expanded_ast_elements", MAX_AST_ELEMENTS.to_string());
        }
        if let Some(user) = &self.user {
            client = client.with_user(user);
        }
        if let Some(password) = &self.password {
            client = client.with_password(password);
        }
        client
    }
}

pub struct ClickHouseStore {
    client: clickhouse::Client,
    /// Always `Some` until dropped (see the `Drop` impl).
    runtime: Option<tokio::runtime::Runtime>,
    seen: Mutex<SeenKeys>,
    options: ClickHouseOptions,
    database: String,
    /// Set when an insert failed: it may still be running, unseen. The next
    /// write waits for inserts older than this (`fence.rs`), then looks up
    /// every key, the filter aside.
    fence: Mutex<Option<Instant>>,
    /// Where deletes run: the tables, or each shard's on a cluster.
    mutations: mutations::Mutations,
    /// How many events, from where the next write starts, belong to a
    /// write of people that failed (see [`people_doubt_after`]).
    people_in_doubt: std::sync::atomic::AtomicU64,
}

impl ClickHouseStore {
    /// Connects, creates the database and applies migrations, and loads the
    /// dedup filter. Fails when the server cannot be reached.
    pub fn open(options: &ClickHouseOptions) -> Result<ClickHouseStore, StoreError> {
        let opened = Instant::now();
        let endpoint = Endpoint::parse(&options.url)?;
        let runtime = small_runtime()?;
        block(&runtime, answers(&endpoint.client(false)))?;
        let client = endpoint.client(true);
        let version = block(&runtime, schema::migrate(&endpoint.client(false), &client, &endpoint.database, options))?;
        // The dedup filter must hold what a dead predecessor's inserts still
        // store, or a client's retry of those events would pass unchecked.
        block(&runtime, fence::wait_for_older_inserts(&client, &endpoint.database, opened))?;
        let keys = dedup::ClickHouseKeys { client: &client, runtime: &runtime, window: options.dedup_window };
        let seen = SeenKeys::load(&keys, MIN_CAPACITY)?;
        let mutations =
            block(&runtime, mutations::Mutations::of(&client, endpoint.user.as_deref(), endpoint.password.as_deref()))?;
        tracing::info!(server = %version, database = %endpoint.database, ?mutations, "ClickHouse event store ready");
        Ok(ClickHouseStore {
            client,
            runtime: Some(runtime),
            seen: Mutex::new(seen),
            options: options.clone(),
            database: endpoint.database,
            fence: Mutex::new(None),
            mutations,
            people_in_doubt: Default::default(),
        })
    }

    fn runtime(&self) -> &tokio::runtime::Runtime {
        self.runtime.as_ref().expect("the runtime lives as long as the store")
    }
}

/// How long a server that took the connection has to answer at open.
const OPEN_ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// Whether the server answers at all. One that takes connections and never
/// answers (stopped, or stuck swapping) would otherwise hold the process's
/// start for as long: it counts as one that does not answer, so the store
/// opens later and the log takes events meanwhile (`deferred.rs`).
async fn answers(client: &clickhouse::Client) -> Result<(), StoreError> {
    match tokio::time::timeout(OPEN_ANSWER_WITHIN, client.query("SELECT 1").fetch_one::<u8>()).await {
        Ok(answer) => answer.map(drop).map_err(StoreError::from),
        Err(_) => Err(StoreError::Unavailable(format!(
            "ClickHouse took the connection but did not answer within {} s",
            OPEN_ANSWER_WITHIN.as_secs()
        ))),
    }
}

impl ClickHouseStore {
    fn block<F: Future>(&self, future: F) -> F::Output {
        block(self.runtime(), future)
    }

    /// Runs a read: one ClickHouse refuses for want of memory is a
    /// [`StoreError::QueryMemory`] (503 naming the limit), not a failure.
    /// Its queries carry an id of their own, by which they are killed if
    /// their asker leaves (see `asker.rs`): closing the connection alone
    /// would leave them running on the server.
    fn read<T, F: Future<Output = Result<T, StoreError>>>(
        &self,
        ask: impl FnOnce(clickhouse::Client) -> F,
    ) -> Result<T, StoreError> {
        let id = uuid::Uuid::new_v4().to_string();
        let (stopped, stop) = futures::channel::oneshot::channel::<()>();
        let (killer, runtime) = (self.client.clone(), self.runtime().handle().clone());
        let kill = id.clone();
        let watch = asker::watch(move || {
            let _ = stopped.send(());
            runtime.spawn(async move {
                // A query still on its way to the server is not found by
                // the first kill; the next ones catch it.
                for _ in 0..5 {
                    let killed =
                        killer.query("KILL QUERY WHERE query_id = ? ASYNC").bind(kill.as_str()).execute().await;
                    if let Err(e) = killed {
                        tracing::warn!(error = %e, "an abandoned question's query could not be killed");
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            });
        })?;
        let reading = ask(self.client.clone().with_setting("query_id", id));
        let answer = self.block(async move {
            use futures::future::Either;
            match futures::future::select(std::pin::pin!(reading), stop).await {
                Either::Left((answer, _)) => answer,
                Either::Right((Ok(()), _)) => Err(StoreError::Abandoned),
                // Not watched (no asker): nothing can stop it.
                Either::Right((Err(_), reading)) => reading.await,
            }
        });
        if watch.end() {
            return Err(StoreError::Abandoned);
        }
        answer.map_err(|e| e.or_query_memory("ClickHouse's max_memory_usage"))
    }
}

impl Drop for ClickHouseStore {
    /// The last holder may be an async task (the server shutting down), where
    /// a runtime must not be dropped in place: let it wind down on its own.
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Runs `future` to completion on this thread with the store's runtime as
/// its context (the runtime's worker drives the sockets). Unlike
/// `Runtime::block_on` this may be called from inside another runtime's
/// blocking threads.
fn block<F: Future>(runtime: &tokio::runtime::Runtime, future: F) -> F::Output {
    let _context = runtime.enter();
    futures::executor::block_on(future)
}

/// The version current servers report, for DDL printed without a server.
pub const CURRENT_SERVER: ServerVersion = ServerVersion { major: 24, minor: 8 };

/// The server's version and the database the URL names.
pub fn server_info(url: &str) -> Result<(ServerVersion, String), StoreError> {
    let endpoint = Endpoint::parse(url)?;
    let runtime = small_runtime()?;
    let version = block(&runtime, schema::server_version(&endpoint.client(false)))?;
    Ok((version, endpoint.database))
}

/// Runs DDL statements in order (each names its database itself).
pub fn execute_all(url: &str, statements: &[String]) -> Result<(), StoreError> {
    let endpoint = Endpoint::parse(url)?;
    let runtime = small_runtime()?;
    let client = endpoint.client(false);
    for sql in statements {
        block(&runtime, client.query(sql).execute())?;
    }
    Ok(())
}

fn small_runtime() -> Result<tokio::runtime::Runtime, StoreError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("clickhouse-io")
        .enable_all()
        .build()
        .map_err(|e| StoreError::Config(format!("starting the ClickHouse client runtime: {e}")))
}

/// One write to `events` (people and links written before its insert
/// ends) under the store's locks: each
/// batch of events is deduplicated and streamed into the open INSERT as it
/// comes, so ClickHouse parses one while the next is being read.
struct Writing<'s> {
    store: &'s ClickHouseStore,
    seen: MutexGuard<'s, SeenKeys>,
    fence: MutexGuard<'s, Option<Instant>>,
    check_all: bool,
    /// A chunk of this write is replayed from the log: a dead process may
    /// have stored part of it.
    replayed: bool,
    inserts: write::Inserts<'s>,
    /// Keys sent in this write: a repeat in a later batch would pass the
    /// look-up, as the rows before it are not stored until the end.
    sent: HashSet<Key>,
    /// Events given to this write, stored or found stored before.
    given: u64,
    outcome: WriteOutcome,
}

impl<'s> Writing<'s> {
    fn begin(store: &'s ClickHouseStore, check_all: bool) -> Result<Writing<'s>, StoreError> {
        let seen = store.seen.lock().unwrap_or_else(|p| p.into_inner());
        // No look-up may run while a failed insert of the same records may
        // still land.
        let mut fence = store.fence.lock().unwrap_or_else(|p| p.into_inner());
        let mut check_all = check_all;
        if let Some(since) = *fence {
            store.block(fence::wait_for_older_inserts(&store.client, &store.database, since))?;
            *fence = None;
            check_all = true;
        }
        let inserts = write::Inserts::new(&store.client, &store.database);
        Ok(Writing {
            store,
            seen,
            fence,
            check_all,
            replayed: false,
            inserts,
            sent: HashSet::new(),
            given: 0,
            outcome: WriteOutcome::default(),
        })
    }

    /// Sends the events not stored yet; `replayed`: a dead process may have
    /// stored any of them, so every key is looked up.
    fn events(&mut self, events: &[Event], replayed: bool) -> Result<(), StoreError> {
        self.replayed |= replayed;
        self.given += events.len() as u64;
        let sent = self.send(events, replayed);
        self.fenced(sent)
    }

    fn send(&mut self, events: &[Event], replayed: bool) -> Result<(), StoreError> {
        let store = self.store;
        let keys = dedup::ClickHouseKeys {
            client: &store.client,
            runtime: store.runtime(),
            window: store.options.dedup_window,
        };
        let fresh = self.seen.new_events(&keys, events, self.check_all || replayed)?;
        let rows: Vec<&Event> = fresh.iter().map(|&i| &events[i]).filter(|e| self.sent.insert(key(e))).collect();
        // Recorded before the insert: an insert whose answer is lost (server
        // gone mid-request) may still have landed, so its retry must find
        // these keys "maybe seen" and look them up.
        self.seen.record(&keys, rows.iter().copied(), &self.sent)?;
        store.block(self.inserts.write_all(&rows))?;
        self.outcome.inserted += rows.len();
        self.outcome.duplicates += events.len() - rows.len();
        Ok(())
    }

    /// Writes the person updates and links, then ends the events' insert:
    /// a question (or an erasure) that sees the events sees whose they are.
    fn finish(mut self, users: &[UserUpdate]) -> Result<WriteOutcome, StoreError> {
        use std::sync::atomic::Ordering;
        let doubt = self.store.people_in_doubt.load(Ordering::Acquire);
        let in_doubt = self.check_all || self.replayed || doubt > 0;
        let people = self.store.block(write::users(&self.store.client, users, in_doubt));
        let people_ok = people.is_ok();
        let written = self.fenced(people).and_then(|()| {
            let ended = self.store.block(self.inserts.end());
            self.fenced(ended)
        });
        let doubt = people_doubt_after(doubt, self.given, people_ok, written.is_ok());
        self.store.people_in_doubt.store(doubt, Ordering::Release);
        written?;
        Ok(self.outcome)
    }

    /// An insert cut short by an error may go on on the server (its abort
    /// is sent over a connection that may be gone): the retry waits for it
    /// to end.
    fn fenced(&mut self, result: Result<(), StoreError>) -> Result<(), StoreError> {
        if result.is_err() && self.inserts.unsettled() {
            *self.fence = Some(Instant::now());
        }
        result
    }
}

/// How many events from the next write's start are in doubt after a write
/// of `given` events, which began where `doubt` counted from, stored its
/// people (`ok`) or not. A write of people that failed may have stored its
/// links and not set their chains right; it is tried again from its start
/// (delivery and the queue retry a write until it succeeds), perhaps
/// smaller (delivery quarters a write that failed), so every write until
/// its events have all been written again repairs every id it links. A
/// write whose people were stored but whose events were not (`written`)
/// counts down nothing: it is tried again from its start too.
fn people_doubt_after(doubt: u64, given: u64, people: bool, written: bool) -> u64 {
    match (people, written) {
        (false, _) => doubt.max(given),
        (true, false) => doubt,
        (true, true) => doubt.saturating_sub(given),
    }
}

impl EventStore for ClickHouseStore {
    fn write(&self, events: &[Event], users: &[UserUpdate]) -> Result<WriteOutcome, StoreError> {
        let mut writing = Writing::begin(self, false)?;
        writing.events(events, false)?;
        writing.finish(users)
    }

    fn write_replayed(&self, events: &[Event], users: &[UserUpdate]) -> Result<WriteOutcome, StoreError> {
        let mut writing = Writing::begin(self, true)?;
        writing.events(events, true)?;
        writing.finish(users)
    }

    /// Streams each chunk into the open INSERT as it is read, not gathering
    /// the whole write first: reading the log and ClickHouse's parsing then
    /// overlap, and one chunk of events is in memory at a time.
    fn write_stream(&self, chunks: &mut dyn Iterator<Item = Chunk>) -> Result<WriteOutcome, StoreError> {
        let mut writing = Writing::begin(self, false)?;
        let mut users = Vec::new();
        for chunk in chunks {
            writing.events(&chunk.events, chunk.replayed)?;
            users.extend(chunk.users);
        }
        writing.finish(&users)
    }

    fn count(&self, filter: &EventFilter) -> Result<u64, StoreError> {
        self.read(|client| async move { read::count(&client, filter).await })
    }

    fn recent(&self, filter: &EventFilter, limit: usize) -> Result<Vec<Event>, StoreError> {
        self.read(|client| async move { read::recent(&client, filter, limit).await })
    }

    fn user(&self, project_id: i64, user_id: &str) -> Result<Option<UserRecord>, StoreError> {
        self.read(|client| async move { read::user(&client, project_id, user_id).await })
    }

    fn identity(&self, project_id: i64, anonymous_id: &str) -> Result<Option<String>, StoreError> {
        self.read(|client| async move { read::identity(&client, project_id, anonymous_id).await })
    }

    fn delete_person(&self, project_id: i64, user_id: &str, wait_until: Instant) -> Result<u64, StoreError> {
        let erasure = write::Erasure { project_id, user_id, wait_until };
        self.block(write::delete_person(&self.client, &self.mutations, &self.database, erasure))
    }

    fn dialect(&self) -> Dialect {
        Dialect::ClickHouse
    }

    fn select(&self, query: &Select) -> Result<Rows, StoreError> {
        self.read(|client| async move { read::select(&client, query).await })
    }

    fn write_cohort(
        &self,
        project_id: i64,
        cohort_id: i64,
        version: i64,
        user_ids: &[String],
    ) -> Result<(), StoreError> {
        self.block(write::cohort(&self.client, project_id, cohort_id, version, user_ids))
    }

    fn drop_cohort_versions(&self, project_id: i64, cohort_id: i64, below: i64) -> Result<(), StoreError> {
        self.block(write::drop_cohort_versions(&self.client, &self.mutations, project_id, cohort_id, below))
    }

    fn people_revision(&self, project_id: i64) -> Result<u64, StoreError> {
        self.block(read::people_revision(&self.client, project_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A write of 1,000 events fails after its links; delivery tries it
    /// again a quarter as large, fails once more in its people and once
    /// after them, then goes on: every write up to its 1,000th event is in
    /// doubt, and none after.
    #[test]
    fn a_failed_write_of_people_leaves_its_events_in_doubt_until_all_are_written_again() {
        let mut doubt = 0;
        let mut in_doubt = Vec::new();
        let tries = [
            (1000, false, false),
            (250, false, false),
            (250, true, false),
            (250, true, true),
            (250, true, true),
            (250, true, true),
            (250, true, true),
            (100, true, true),
        ];
        for (given, people, written) in tries {
            in_doubt.push(doubt > 0);
            doubt = people_doubt_after(doubt, given, people, written);
        }
        assert_eq!(in_doubt, [false, true, true, true, true, true, true, false]);
        assert_eq!(doubt, 0);
    }

    #[test]
    fn passwords_are_never_shown() {
        assert_eq!(redacted("http://u:s3cret@ch:8123/?database=x"), "http://u:***@ch:8123/?database=x");
        assert_eq!(redacted("http://ch:8123/?user=u&password=s3cret"), "http://ch:8123/?user=u&password=***");
        assert_eq!(redacted("u:s3cret@ch"), "(not a URL)");
        let err = Endpoint::parse("ftp://u:s3cret@ch/").unwrap_err().to_string();
        assert!(!err.contains("s3cret"), "{err}");
    }

    #[test]
    fn urls_name_their_database_and_bad_ones_are_explained() {
        let e = Endpoint::parse("http://127.0.0.1:8123/?database=events_db").unwrap();
        assert_eq!((e.http.as_str(), e.database.as_str()), ("http://127.0.0.1:8123", "events_db"));
        assert!(Endpoint::parse("https://ch.internal/").unwrap_err().to_string().contains("https"));
        let e = Endpoint::parse("http://bob:secret@ch.internal/").unwrap();
        assert_eq!((e.http.as_str(), e.database.as_str()), ("http://ch.internal:80", "leanloop"));
        assert_eq!((e.user.as_deref(), e.password.as_deref()), (Some("bob"), Some("secret")));
        let e = Endpoint::parse("http://bob%40corp:p%40ss%20w%3Frd@ch.internal/").unwrap();
        assert_eq!((e.user.as_deref(), e.password.as_deref()), (Some("bob@corp"), Some("p@ss w?rd")));
        for (bad, why) in [
            ("tcp://127.0.0.1:9000", "scheme"),
            ("http://127.0.0.1:8123/?database=x;DROP", "database"),
            ("http://127.0.0.1:8123/?db=x", "unknown setting `db`"),
            ("not a url", "clickhouse url"),
        ] {
            let err = Endpoint::parse(bad).unwrap_err().to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }
}
