//! The embedded event store on DuckDB: one database file in the data directory.
//!
//! Writes go through one connection (the collector's single writer), reads
//! through a small pool of cloned connections so queries never wait for a
//! write to finish. A fatal error (a checkpoint that found the disk full or
//! read-only) leaves a DuckDB database unusable until it is opened again:
//! the store then closes it and opens the file again once nothing holds
//! it, so writes resume on their own when the disk recovers.

mod budget;
mod columnar;
mod dedup;
mod read;
mod schema;
mod sessions;
mod staged;
mod write;

use crate::asker;
use crate::{Chunk, Column, Dialect, EventFilter, EventStore, Rows, Select, StoreError, UserRecord, WriteOutcome};
use ::duckdb::{Config, Connection};
use leanloop_core::{Event, UserUpdate};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

/// Rows in one of DuckDB's row groups (its default `row_group_size`).
pub const ROW_GROUP_ROWS: usize = 122_880;

/// Resource limits handed to DuckDB.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DuckDbOptions {
    /// DuckDB's `memory_limit` while questions are answered, e.g. `"256MB"`.
    pub memory_limit: String,
    /// DuckDB's `memory_limit` otherwise (see `budget.rs`); not above
    /// `memory_limit`.
    pub ingest_memory_limit: String,
    /// How long after the last question the ingest mode comes back.
    pub ingest_limit_after: Duration,
    /// DuckDB's threads while questions are answered.
    pub threads: usize,
    /// DuckDB's threads otherwise (see `budget.rs`); not above `threads`.
    pub ingest_threads: usize,
}

impl Default for DuckDbOptions {
    fn default() -> Self {
        DuckDbOptions {
            memory_limit: "256MB".into(),
            ingest_memory_limit: "128MB".into(),
            ingest_limit_after: Duration::from_secs(30),
            threads: 2,
            ingest_threads: 1,
        }
    }
}

/// The store: the open database, opened again after a fatal error.
pub struct DuckDbStore {
    path: PathBuf,
    options: DuckDbOptions,
    /// `None` from a fatal error until the file is open again.
    open: RwLock<Option<Arc<Database>>>,
    /// What the database closed after a fatal error still holds: the file
    /// is not opened again while anything of it is alive.
    retired: Mutex<Option<Retired>>,
    /// When opening again was last tried: at most once per [`REOPEN_EVERY`].
    last_try: Mutex<Option<Instant>>,
    /// Counts writes that changed people, across reopenings. This process
    /// is the file's only writer, so the count sees every change.
    people_writes: Arc<AtomicU64>,
}

/// The database closed after a fatal error, and its writer (which the
/// compaction thread may hold a moment longer).
type Retired = (Weak<Database>, Weak<Mutex<write::Writer>>);

/// How often opening the database again is tried after a fatal error.
const REOPEN_EVERY: Duration = Duration::from_secs(1);

/// One open DuckDB database.
struct Database {
    /// Shared with the compaction thread, which holds it weakly.
    writer: Arc<Mutex<write::Writer>>,
    readers: Mutex<Vec<Connection>>,
    /// Source of new reader connections; never used for queries itself.
    origin: Mutex<Connection>,
    /// The store's count of writes that changed people.
    people_writes: Arc<AtomicU64>,
    /// The memory limit, as named to a query that exceeds it.
    memory_limit: String,
    budget: budget::Budget,
    /// Dropped with the store, which ends the compaction thread at once.
    _compaction: std::sync::mpsc::Sender<()>,
}

impl DuckDbStore {
    /// Opens (creating if needed) the database at `path` and migrates it.
    pub fn open(path: &Path, options: &DuckDbOptions) -> Result<DuckDbStore, StoreError> {
        let people_writes = Arc::new(AtomicU64::new(0));
        let database = Database::open(path, options, people_writes.clone())?;
        Ok(DuckDbStore {
            path: path.to_owned(),
            options: options.clone(),
            open: RwLock::new(Some(Arc::new(database))),
            retired: Mutex::new(None),
            last_try: Mutex::new(None),
            people_writes,
        })
    }

    /// The open database, opening the file again if a fatal error closed it.
    fn database(&self) -> Result<Arc<Database>, StoreError> {
        if let Some(db) = self.open.read().unwrap_or_else(|p| p.into_inner()).as_ref() {
            return Ok(db.clone());
        }
        let mut open = self.open.write().unwrap_or_else(|p| p.into_inner());
        if let Some(db) = open.as_ref() {
            return Ok(db.clone());
        }
        let mut last_try = lock(&self.last_try);
        let held =
            lock(&self.retired).as_ref().is_some_and(|(db, writer)| db.strong_count() > 0 || writer.strong_count() > 0);
        if held || last_try.is_some_and(|at| at.elapsed() < REOPEN_EVERY) {
            return Err(StoreError::Unavailable("the event store is being opened again after a fatal error".into()));
        }
        *last_try = Some(Instant::now());
        let database = Database::open(&self.path, &self.options, self.people_writes.clone())
            .map_err(|e| StoreError::Unavailable(format!("opening the event store again after a fatal error: {e}")))?;
        tracing::warn!(path = %self.path.display(), "DuckDB opened again after a fatal error");
        metrics::counter!("leanloop_store_reopened_total").increment(1);
        lock(&self.retired).take();
        let database = Arc::new(database);
        *open = Some(database.clone());
        Ok(database)
    }

    /// Runs `f` on the open database; a fatal error closes it, to be
    /// opened again by the next call (see [`DuckDbStore::database`]).
    fn with<T>(&self, f: impl FnOnce(&Database) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let db = self.database()?;
        let result = f(&db);
        if let Err(e) = &result {
            if e.is_fatal() {
                let mut open = self.open.write().unwrap_or_else(|p| p.into_inner());
                if open.as_ref().is_some_and(|current| Arc::ptr_eq(current, &db)) {
                    tracing::error!(error = %e, "DuckDB stopped on a fatal error: it is closed and opened again");
                    *lock(&self.retired) = Some((Arc::downgrade(&db), Arc::downgrade(&db.writer)));
                    *open = None;
                }
            }
        }
        result
    }

    /// Loads newline-delimited JSON rows (flat event rows: times in ms, uuid
    /// as text) with DuckDB's own `read_json`, without checking the file's
    /// rows for duplicate uuids. Returns the rows stored and the time
    /// `read_json` took.
    pub fn load_ndjson_unchecked(&self, path: &Path) -> Result<(usize, Duration), StoreError> {
        self.with(|db| lock(&db.writer).load_ndjson_unchecked(path))
    }
}

impl Database {
    fn open(path: &Path, options: &DuckDbOptions, people_writes: Arc<AtomicU64>) -> Result<Database, StoreError> {
        // Every read that needs an order says so (`ORDER BY`), so DuckDB
        // need not keep rows in insertion order: a funnel's 2.4M sorted rows
        // came back 14 % sooner.
        // Extensions are never fetched or loaded on the fly: a foreign file
        // (a SQLite database) would otherwise make DuckDB download native
        // code from the internet to read it. JSON is built in.
        let config = Config::default()
            .max_memory(&options.memory_limit)?
            .threads(options.threads.max(1) as i64)?
            .with("preserve_insertion_order", "false")?
            .with("autoinstall_known_extensions", "false")?
            .with("autoload_known_extensions", "false")?;
        let origin = Connection::open_with_flags(path, config)?;
        schema::migrate(&origin)?;
        let budget = budget::Budget::start(
            &origin,
            budget::Mode { memory_limit: options.memory_limit.clone(), threads: options.threads },
            budget::Mode {
                memory_limit: options.ingest_memory_limit.clone(),
                threads: options.ingest_threads.min(options.threads),
            },
            options.ingest_limit_after,
        )?;
        let writer = Arc::new(Mutex::new(write::Writer::new(origin.try_clone()?)?));
        let compaction = compact_in_background(Arc::downgrade(&writer));
        Ok(Database {
            writer,
            readers: Mutex::new(Vec::new()),
            origin: Mutex::new(origin),
            people_writes,
            memory_limit: format!(
                "DuckDB memory limit {}: store.duckdb_memory_limit or LEANLOOP_DUCKDB_MEMORY_LIMIT",
                options.memory_limit
            ),
            budget,
            _compaction: compaction,
        })
    }

    /// Runs `f` on a pooled reader connection, interrupted if its asker
    /// leaves (see `asker.rs`).
    fn with_reader<T>(&self, f: impl FnOnce(&Connection) -> Result<T, StoreError>) -> Result<T, StoreError> {
        /// Set when the read ends, even by a panic.
        struct Ended(Arc<AtomicBool>);
        impl Drop for Ended {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Release);
            }
        }
        let pooled = lock(&self.readers).pop();
        let conn = match pooled {
            Some(conn) => conn,
            None => lock(&self.origin).try_clone()?,
        };
        let interrupt = conn.interrupt_handle();
        let ended = Ended(Arc::new(AtomicBool::new(false)));
        let watching = asker::watch({
            let ended = ended.0.clone();
            // DuckDB clears an interrupt as a statement begins: one that
            // lands before the read's first statement, or between two, is
            // lost. So it is repeated until the read ends.
            move || {
                std::thread::spawn(move || {
                    while !ended.load(Ordering::Acquire) {
                        interrupt.interrupt();
                        std::thread::sleep(Duration::from_millis(5));
                    }
                });
            }
        });
        let watch = match watching {
            Ok(watch) => watch,
            Err(gone) => {
                self.pool(conn);
                return Err(gone);
            }
        };
        let result = f(&conn);
        drop(ended);
        if watch.end() {
            // An interrupt may be pending on the connection, and would stop
            // the next question to use it: it is not pooled again.
            return Err(StoreError::Abandoned);
        }
        self.pool(conn);
        result
    }

    /// Keeps a reader for the next read, up to eight.
    fn pool(&self, conn: Connection) {
        let mut readers = lock(&self.readers);
        if readers.len() < 8 {
            readers.push(conn);
        }
    }

    /// Runs an analytics question on a reader under the query memory limit.
    fn question<T>(&self, f: impl FnOnce(&Connection) -> Result<T, StoreError>) -> Result<T, StoreError> {
        self.with_reader(|conn| self.budget.reading(conn).and_then(|_reading| f(conn)))
            .map_err(|e| e.or_query_memory(&self.memory_limit))
    }
}

/// Locks `m`, ignoring poisoning: DuckDB keeps its own transactional state, so
/// a panic in another holder cannot leave a connection half-written.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl EventStore for DuckDbStore {
    fn write(&self, events: &[Event], users: &[UserUpdate]) -> Result<WriteOutcome, StoreError> {
        self.with(|db| db.write(events, users))
    }

    fn write_stream(&self, chunks: &mut dyn Iterator<Item = Chunk>) -> Result<WriteOutcome, StoreError> {
        self.with(|db| db.write_stream(chunks))
    }

    /// Two of DuckDB's row groups (122,880 rows each): a write that fills
    /// one is stored straight to the file, compressed (see `write.rs`).
    fn preferred_write_events(&self) -> usize {
        2 * ROW_GROUP_ROWS
    }

    /// One row group. A smaller write is logged row by row in DuckDB's own
    /// WAL and appended to the table's last, open row group, which every
    /// checkpoint compresses again whole until it is full: a steady trickle
    /// of one-second writes costs about twice the CPU per event.
    fn fill_write_events(&self) -> Option<usize> {
        Some(ROW_GROUP_ROWS)
    }

    fn count(&self, filter: &EventFilter) -> Result<u64, StoreError> {
        self.with(|db| db.count(filter))
    }

    fn recent(&self, filter: &EventFilter, limit: usize) -> Result<Vec<Event>, StoreError> {
        self.with(|db| db.recent(filter, limit))
    }

    fn user(&self, project_id: i64, user_id: &str) -> Result<Option<UserRecord>, StoreError> {
        self.with(|db| db.user(project_id, user_id))
    }

    fn identity(&self, project_id: i64, anonymous_id: &str) -> Result<Option<String>, StoreError> {
        self.with(|db| db.identity(project_id, anonymous_id))
    }

    fn settle(&self) -> Result<(), StoreError> {
        self.with(|db| db.settle())
    }

    fn delete_person(&self, project_id: i64, user_id: &str, wait_until: Instant) -> Result<u64, StoreError> {
        self.with(|db| db.delete_person(project_id, user_id, wait_until))
    }

    fn dialect(&self) -> Dialect {
        Dialect::DuckDb
    }

    fn select(&self, query: &Select) -> Result<Rows, StoreError> {
        self.with(|db| db.select(query))
    }

    fn select_columns(&self, query: &Select) -> Result<Vec<Column>, StoreError> {
        self.with(|db| db.select_columns(query))
    }

    fn select_batches(&self, query: &Select, each: &mut dyn FnMut(Vec<Column>)) -> Result<(), StoreError> {
        self.with(|db| db.select_batches(query, each))
    }

    fn write_cohort(
        &self,
        project_id: i64,
        cohort_id: i64,
        version: i64,
        user_ids: &[String],
    ) -> Result<(), StoreError> {
        self.with(|db| db.write_cohort(project_id, cohort_id, version, user_ids))
    }

    fn drop_cohort_versions(&self, project_id: i64, cohort_id: i64, below: i64) -> Result<(), StoreError> {
        self.with(|db| db.drop_cohort_versions(project_id, cohort_id, below))
    }

    fn people_revision(&self, _project_id: i64) -> Result<u64, StoreError> {
        Ok(self.people_writes.load(Ordering::Acquire))
    }
}

/// What each of the store's calls does on the open database.
impl Database {
    fn write(&self, events: &[Event], users: &[UserUpdate]) -> Result<WriteOutcome, StoreError> {
        self.budget.settle(&lock(&self.origin));
        let outcome = lock(&self.writer).write(events, users)?;
        if !users.is_empty() {
            self.people_writes.fetch_add(1, Ordering::Release);
        }
        Ok(outcome)
    }

    fn write_stream(&self, chunks: &mut dyn Iterator<Item = Chunk>) -> Result<WriteOutcome, StoreError> {
        self.budget.settle(&lock(&self.origin));
        let mut people = false;
        let outcome = lock(&self.writer).write_stream(&mut chunks.inspect(|c| people |= !c.users.is_empty()))?;
        if people {
            self.people_writes.fetch_add(1, Ordering::Release);
        }
        Ok(outcome)
    }

    // A count streams: it runs in the mode in force. Raised for it, DuckDB's
    // pool would stay at the query limit while a client polls the count
    // during ingest: the benchmark's polling took the server from 200 MB
    // to 370 MB as its last write committed.
    fn count(&self, filter: &EventFilter) -> Result<u64, StoreError> {
        self.with_reader(|conn| read::count(conn, filter)).map_err(|e| e.or_query_memory(&self.memory_limit))
    }

    // A question: the events list of large events needs the query memory,
    // and a refusal for want of it is a 503 naming the limit.
    fn recent(&self, filter: &EventFilter, limit: usize) -> Result<Vec<Event>, StoreError> {
        self.question(|conn| read::recent(conn, filter, limit))
    }

    fn user(&self, project_id: i64, user_id: &str) -> Result<Option<UserRecord>, StoreError> {
        self.with_reader(|conn| read::user(conn, project_id, user_id))
    }

    fn identity(&self, project_id: i64, anonymous_id: &str) -> Result<Option<String>, StoreError> {
        self.with_reader(|conn| read::identity(conn, project_id, anonymous_id))
    }

    fn settle(&self) -> Result<(), StoreError> {
        lock(&self.writer).compact_sessions()
    }

    fn delete_person(&self, project_id: i64, user_id: &str, _wait_until: Instant) -> Result<u64, StoreError> {
        let deleted = lock(&self.writer).delete_person(project_id, user_id)?;
        self.people_writes.fetch_add(1, Ordering::Release);
        Ok(deleted)
    }

    fn select(&self, query: &Select) -> Result<Rows, StoreError> {
        self.question(|conn| read::select(conn, query))
    }

    fn select_columns(&self, query: &Select) -> Result<Vec<Column>, StoreError> {
        self.question(|conn| read::select_columns(conn, query))
    }

    fn select_batches(&self, query: &Select, each: &mut dyn FnMut(Vec<Column>)) -> Result<(), StoreError> {
        self.question(|conn| read::select_batches(conn, query, each))
    }

    fn write_cohort(
        &self,
        project_id: i64,
        cohort_id: i64,
        version: i64,
        user_ids: &[String],
    ) -> Result<(), StoreError> {
        lock(&self.writer).write_cohort(project_id, cohort_id, version, user_ids)
    }

    fn drop_cohort_versions(&self, project_id: i64, cohort_id: i64, below: i64) -> Result<(), StoreError> {
        lock(&self.writer).drop_cohort_versions(project_id, cohort_id, below)
    }
}

/// Compacts session parts when due, after writes stop too (a write only
/// marks them due), until the returned sender is dropped with the store.
/// Without the thread they are still compacted at the next open and when
/// asked.
fn compact_in_background(writer: Weak<Mutex<write::Writer>>) -> std::sync::mpsc::Sender<()> {
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let started = std::thread::Builder::new().name("duckdb-compaction".into()).spawn(move || {
        // Wakes to check every 15 s; returns as soon as the store is gone.
        while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(Duration::from_secs(15)) {
            let Some(writer) = writer.upgrade() else { return };
            lock(&writer).compact_sessions_when_due();
        }
    });
    if let Err(err) = started {
        tracing::warn!(error = %err, "no compaction thread: session parts compact at open and when asked");
    }
    stop
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ColumnKind, EventStore, Select};
    use leanloop_core::{Classify, ErrorClass};

    #[test]
    fn batches_hand_over_every_row_once_as_whole_columns_read_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = DuckDbStore::open(&dir.path().join("events.duckdb"), &DuckDbOptions::default()).unwrap();
        let query = Select {
            sql: "SELECT range AS i, CASE WHEN range % 3 = 0 THEN NULL ELSE CAST(range AS VARCHAR) END AS t \
                  FROM range(10000) ORDER BY range"
                .into(),
            params: Vec::new(),
            columns: vec![ColumnKind::Int, ColumnKind::Text],
        };
        let whole = store.select_columns(&query).unwrap();
        let mut batches = 0;
        let mut joined: Vec<Column> = vec![Column::Ints(Vec::new()), Column::Cells(Vec::new())];
        store
            .select_batches(&query, &mut |columns| {
                batches += 1;
                for (all, more) in joined.iter_mut().zip(columns) {
                    all.append(more);
                }
            })
            .unwrap();
        assert!(batches > 1, "10,000 rows come in more than one batch");
        assert_eq!(whole[0].len(), 10_000);
        assert_eq!(joined, whole);
    }

    #[test]
    fn a_query_over_the_memory_limit_is_refused_naming_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let options = DuckDbOptions {
            memory_limit: "16MB".into(),
            ingest_memory_limit: "16MB".into(),
            threads: 1,
            ..Default::default()
        };
        let store = DuckDbStore::open(&dir.path().join("events.duckdb"), &options).unwrap();
        // A list of 20M integers is one aggregate state of 160 MB: it cannot spill.
        let huge = Select {
            sql: "SELECT list(i) FROM range(20000000) t(i)".into(),
            params: vec![],
            columns: vec![ColumnKind::Text],
        };
        let e = store.select(&huge).unwrap_err();
        assert!(e.to_string().contains("DuckDB memory limit 16MB"), "{e}");
        assert_eq!(e.class(), ErrorClass::Unavailable { retry_after_secs: 5 });
        // Within the limit the same store answers.
        let small =
            Select { sql: "SELECT count(*) FROM range(1000)".into(), params: vec![], columns: vec![ColumnKind::Int] };
        assert_eq!(store.select(&small).unwrap()[0][0].int(), 1000);
    }

    fn event(n: u128) -> Event {
        Event::new(uuid::Uuid::from_u128(n), 1, leanloop_core::EventKind::Track, "e", 1_700_000_000_000)
    }

    /// DuckDB's memory limit and threads now.
    fn current_mode(store: &DuckDbStore) -> (String, i64) {
        lock(&store.database().unwrap().origin)
            .query_row("SELECT current_setting('memory_limit'), current_setting('threads')", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap()
    }

    #[test]
    fn a_foreign_file_is_refused_without_fetching_an_extension() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.duckdb");
        let mut sqlite = b"SQLite format 3\0".to_vec();
        sqlite.resize(4096, 0);
        std::fs::write(&path, sqlite).unwrap();
        let err = DuckDbStore::open(&path, &DuckDbOptions::default()).err().expect("refused").to_string();
        assert!(!err.contains("download") && !err.contains("http"), "{err}");
        // Checked as set too: with network access a fetched extension would
        // fail differently, and the message alone could not tell.
        let store = DuckDbStore::open(&dir.path().join("ours.duckdb"), &DuckDbOptions::default()).unwrap();
        let settings: (String, String) = lock(&store.database().unwrap().origin)
            .query_row(
                "SELECT current_setting('autoinstall_known_extensions')::VARCHAR, \
                 current_setting('autoload_known_extensions')::VARCHAR",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(settings, ("false".to_owned(), "false".to_owned()));
    }

    #[test]
    fn a_question_whose_asker_leaves_is_interrupted_and_its_reader_not_reused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(DuckDbStore::open(&dir.path().join("events.duckdb"), &DuckDbOptions::default()).unwrap());
        let select = |sql: &str| Select { sql: sql.into(), params: vec![], columns: vec![ColumnKind::Int] };
        // Hours of work on two threads.
        let endless = select("SELECT count(*) FROM range(1000000000000) t(i) WHERE hash(i) % 7 = 0");
        let asker = crate::asker::Asker::default();
        let asking = std::thread::spawn({
            let (store, asker) = (store.clone(), asker.clone());
            move || asker.answer(|| store.select(&endless))
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !asker.reading() {
            assert!(std::time::Instant::now() < deadline, "the question never started");
            std::thread::yield_now();
        }
        asker.leave();
        let answer = asking.join().unwrap();
        assert!(matches!(answer, Err(StoreError::Abandoned)), "{answer:?}");
        assert!(lock(&store.database().unwrap().readers).is_empty(), "the interrupted reader is not pooled");
        // The next question, on a fresh reader, is answered.
        assert_eq!(store.select(&select("SELECT 42")).unwrap()[0][0].int(), 42);
    }

    #[test]
    fn questions_get_the_full_memory_limit_and_threads_and_writes_bring_back_the_ingest_mode() {
        let dir = tempfile::tempdir().unwrap();
        let options = DuckDbOptions {
            memory_limit: "400MB".into(),
            ingest_memory_limit: "24MB".into(),
            ingest_limit_after: Duration::ZERO,
            threads: 2,
            ingest_threads: 1,
        };
        let store = DuckDbStore::open(&dir.path().join("events.duckdb"), &options).unwrap();
        let ingest = current_mode(&store);
        assert_eq!(ingest.1, 1, "ingest runs on one thread");
        // A count, polled during ingest, leaves the ingest mode in force.
        store.write(&[event(100)], &[]).unwrap();
        assert_eq!(store.count(&crate::EventFilter::project(1)).unwrap(), 1);
        assert_eq!(current_mode(&store), ingest);
        // One aggregate state of about 80 MB, which cannot spill: more than
        // the ingest limit allows.
        let big = Select {
            sql: "SELECT length(list(i)) FROM range(10000000) t(i)".into(),
            params: vec![],
            columns: vec![ColumnKind::Int],
        };
        assert!(
            lock(&store.database().unwrap().origin).query_row(&big.sql, [], |r| r.get::<_, i64>(0)).is_err(),
            "over {ingest:?}"
        );
        assert_eq!(store.select(&big).unwrap()[0][0].int(), 10_000_000);
        let query = current_mode(&store);
        assert_ne!(query.0, ingest.0);
        assert_eq!(query.1, 2, "a question gets every thread");
        // The next write, with no question running, brings the ingest mode back.
        store.write(&[event(1)], &[]).unwrap();
        assert_eq!(current_mode(&store), ingest);

        // Within `ingest_limit_after` of a question the limit stays up.
        drop(store);
        let options = DuckDbOptions { ingest_limit_after: Duration::from_secs(3600), ..options };
        let store = DuckDbStore::open(&dir.path().join("events.duckdb"), &options).unwrap();
        assert_eq!(current_mode(&store), ingest);
        store.select(&big).unwrap();
        store.write(&[event(2)], &[]).unwrap();
        assert_eq!(current_mode(&store), query);
    }
}
