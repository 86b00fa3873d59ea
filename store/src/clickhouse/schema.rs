//! The ClickHouse schema, its migrations, and the DDL for a cluster.
//!
//! Events are a MergeTree partitioned by month and ordered by project, day,
//! name and time, so the queries every screen makes (one project, a time
//! range, some event names) read few granules. Top-level properties are also
//! kept as two parallel arrays, `prop_keys` and `prop_values`, so a property
//! filter is `prop_values[indexOf(prop_keys, 'plan')] = 'pro'` instead of
//! parsing JSON per row (`JSONExtract*` does not exist on 18.16).
//!
//! The same text must run on Debian's 18.16 and on current servers; newer
//! features are added by server version: `LowCardinality` (20.1+) and a TTL
//! (19.6+, when a retention is configured). Migrations are append-only and
//! recorded in `leanloop_schema`.

use super::ClickHouseOptions;
use crate::StoreError;
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServerVersion {
    pub major: u32,
    pub minor: u32,
}

impl ServerVersion {
    pub fn parse(text: &str) -> Option<ServerVersion> {
        let mut parts = text.trim().split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        Some(ServerVersion { major, minor })
    }

    fn at_least(self, major: u32, minor: u32) -> bool {
        self >= ServerVersion { major, minor }
    }
}

impl fmt::Display for ServerVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// What a table's DDL depends on besides its name.
#[derive(Debug, Clone, Copy)]
struct Flavour<'a> {
    version: ServerVersion,
    retention_days: Option<u32>,
    /// `ON CLUSTER` target and replicated engines, for [`cluster_ddl`].
    cluster: Option<&'a str>,
}

impl Flavour<'_> {
    /// A low-cardinality text column where the server has the type.
    fn label(&self, nullable: bool) -> &'static str {
        match (self.version.at_least(20, 1), nullable) {
            (true, true) => "LowCardinality(Nullable(String))",
            (true, false) => "LowCardinality(String)",
            (false, true) => "Nullable(String)",
            (false, false) => "String",
        }
    }

    fn on_cluster(&self) -> String {
        self.cluster.map(|c| format!(" ON CLUSTER {c}")).unwrap_or_default()
    }

    /// `MergeTree`, or its replicated twin in a cluster; `variant` is e.g. `Replacing`.
    fn engine(&self, variant: &str, args: &str, database: &str, table: &str) -> String {
        match self.cluster {
            None => format!("{variant}MergeTree({args})"),
            Some(_) => {
                let path = format!("'/clickhouse/tables/{{shard}}/{database}/{table}', '{{replica}}'");
                let args = if args.is_empty() { path } else { format!("{path}, {args}") };
                format!("Replicated{variant}MergeTree({args})")
            }
        }
    }
}

fn events_table(f: Flavour, database: &str, table: &str) -> String {
    let label = |nullable| f.label(nullable);
    let ttl = match f.retention_days {
        Some(days) if f.version.at_least(19, 6) => format!("\nTTL timestamp + INTERVAL {days} DAY"),
        _ => String::new(),
    };
    format!(
        "CREATE TABLE IF NOT EXISTS {database}.{table}{on_cluster} (
            uuid UUID, project_id Int64, kind {kind}, name {name},
            timestamp DateTime, timestamp_ms Int64, received_at_ms Int64, timestamp_clamped UInt8,
            anonymous_id Nullable(String), user_id Nullable(String), session_id Nullable(String),
            release {opt_label}, url Nullable(String), path Nullable(String), page_name Nullable(String),
            referrer Nullable(String), referrer_domain {opt_label},
            utm_source {opt_label}, utm_medium {opt_label}, utm_campaign {opt_label},
            utm_term Nullable(String), utm_content Nullable(String),
            browser {opt_label}, browser_version {opt_label}, os {opt_label}, device_type {opt_label},
            country {opt_label}, ip Nullable(String), library {opt_label},
            properties String, prop_keys Array(String), prop_values Array(String)
        ) ENGINE = {engine}
        PARTITION BY toYYYYMM(timestamp)
        ORDER BY (project_id, toDate(timestamp), name, timestamp_ms){ttl}",
        on_cluster = f.on_cluster(),
        kind = label(false),
        name = label(false),
        opt_label = label(true),
        engine = f.engine("", "", database, table),
    )
}

/// People: one row per update; reads take the newest traits (`version`).
fn users_table(f: Flavour, database: &str, table: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {database}.{table}{} (
            project_id Int64, user_id String, traits String,
            first_seen_ms Int64, last_seen_ms Int64, version UInt64
        ) ENGINE = {} ORDER BY (project_id, user_id)",
        f.on_cluster(),
        f.engine("Replacing", "version", database, table),
    )
}

/// Anonymous id → user id links; the first link stored wins (`argMin` of
/// `linked_at_ms`, when the link was written, or just before the first row
/// of a link moved along a chain: see `write.rs`), as on DuckDB.
fn identities_table(f: Flavour, database: &str, table: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {database}.{table}{} (
            project_id Int64, anonymous_id String, user_id String, linked_at_ms Int64
        ) ENGINE = {} ORDER BY (project_id, anonymous_id)",
        f.on_cluster(),
        f.engine("", "", database, table),
    )
}

/// Cohort members, one set of rows per computed version.
fn cohort_members_table(f: Flavour, database: &str, table: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {database}.{table}{} (
            project_id Int64, cohort_id Int64, version Int64, user_id String
        ) ENGINE = {} ORDER BY (project_id, cohort_id, version, user_id)",
        f.on_cluster(),
        f.engine("", "", database, table),
    )
}

/// A MergeTree, not a TinyLog: servers started together on an empty
/// database insert into it at once, and TinyLog's files do not take
/// concurrent writers (one failed with `tmp_sizes.json` not found).
const SCHEMA_TABLE: &str =
    "CREATE TABLE IF NOT EXISTS leanloop_schema (version UInt32, applied_at DateTime) ENGINE = MergeTree ORDER BY version";

/// How often a migration is tried before start is refused.
const MIGRATE_ATTEMPTS: u64 = 5;

/// Migration steps, in order; step `n` brings the schema to version `n`.
fn steps(f: Flavour, database: &str) -> Vec<Vec<String>> {
    vec![
        vec![
            events_table(f, database, "events"),
            users_table(f, database, "users"),
            identities_table(f, database, "identities"),
        ],
        vec![cohort_members_table(f, database, "cohort_members")],
    ]
}

/// What the server says it is.
pub async fn server_version(client: &clickhouse::Client) -> Result<ServerVersion, StoreError> {
    let text: String = client.query("SELECT version()").fetch_one().await?;
    ServerVersion::parse(&text)
        .ok_or_else(|| StoreError::Corrupt(format!("ClickHouse reported an unreadable version `{text}`")))
}

/// Creates the database and applies missing steps. Returns the server
/// version. Every step may run twice, so one that failed, as it may while
/// other servers migrate the same database (a database made before the
/// schema table was a MergeTree), is tried again a few times, a little
/// apart, before start is refused.
pub async fn migrate(
    root: &clickhouse::Client,
    client: &clickhouse::Client,
    database: &str,
    options: &ClickHouseOptions,
) -> Result<ServerVersion, StoreError> {
    let mut attempt = 1;
    loop {
        match migrate_once(root, client, database, options).await {
            Err(err @ StoreError::ClickHouse(_)) if attempt < MIGRATE_ATTEMPTS => {
                tracing::warn!(%err, attempt, "ClickHouse schema migration failed; trying again");
                // Apart from the other servers' attempts, by process.
                let pause = 100 * attempt + u64::from(std::process::id() % 100);
                tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

async fn migrate_once(
    root: &clickhouse::Client,
    client: &clickhouse::Client,
    database: &str,
    options: &ClickHouseOptions,
) -> Result<ServerVersion, StoreError> {
    let version = server_version(root).await?;
    if options.retention_days.is_some() && !version.at_least(19, 6) {
        tracing::warn!(server = %version, "ClickHouse before 19.6 has no TTL: retention_days is not applied");
    }
    // The database name was checked to be an identifier when the URL was parsed.
    root.query(&format!("CREATE DATABASE IF NOT EXISTS {database}")).execute().await?;
    refuse_foreign_tables(root, database).await?;
    client.query(SCHEMA_TABLE).execute().await?;
    let current: u32 = client.query("SELECT max(version) FROM leanloop_schema").fetch_one().await?;
    let flavour = Flavour { version, retention_days: options.retention_days, cluster: None };
    let steps = steps(flavour, database);
    // A newer build migrated this database: its data may not read as this
    // build expects, so nothing is written into it.
    if current as usize > steps.len() {
        return Err(StoreError::SchemaTooNew { found: current.into(), known: steps.len() as i64 });
    }
    for (index, statements) in steps.into_iter().enumerate() {
        let step = index as u32 + 1;
        if step <= current {
            continue;
        }
        for sql in statements {
            client.query(&sql).execute().await?;
        }
        client.query("INSERT INTO leanloop_schema VALUES (?, now())").bind(step).execute().await?;
        tracing::info!(step, "ClickHouse schema migrated");
    }
    Ok(version)
}

/// The tables the migrations create, each with columns only Leanloop's has
/// all of.
const TABLES: [(&str, &[&str]); 5] = [
    ("events", &["uuid", "project_id", "received_at_ms", "prop_keys", "prop_values"]),
    ("users", &["project_id", "user_id", "traits"]),
    ("identities", &["project_id", "anonymous_id", "user_id", "linked_at_ms"]),
    ("cohort_members", &["project_id", "cohort_id", "version", "user_id"]),
    ("leanloop_schema", &["version", "applied_at"]),
];

/// Refuses a database where another application has a table of one of
/// Leanloop's names, before anything is created beside it.
async fn refuse_foreign_tables(root: &clickhouse::Client, database: &str) -> Result<(), StoreError> {
    let names = TABLES.map(|(t, _)| format!("'{t}'")).join(", ");
    // The database name was checked to be an identifier.
    let columns: Vec<(String, String)> = root
        .query(&format!("SELECT table, name FROM system.columns WHERE database = '{database}' AND table IN ({names})"))
        .fetch_all()
        .await?;
    for (table, marks) in TABLES {
        let has: Vec<&str> = columns.iter().filter(|(t, _)| t == table).map(|(_, c)| c.as_str()).collect();
        let missing = marks.iter().find(|m| !has.contains(m));
        if let (false, Some(missing)) = (has.is_empty(), missing) {
            return Err(StoreError::Config(format!(
                "database {database} holds a table `{table}` that is not Leanloop's (it has no `{missing}`): \
                 give Leanloop a database of its own"
            )));
        }
    }
    Ok(())
}

/// The shard of an event: its uuid as text, as servers before 19.x hash no
/// UUID value (`Unexpected type UUID of argument of function cityHash64`).
pub const EVENTS_SHARDING_KEY: &str = "cityHash64(project_id, toString(uuid))";

/// The DDL for a replicated, sharded deployment: per-node `*_local` tables on
/// Replicated engines (the `{shard}` and `{replica}` macros come from each
/// server's configuration) and `Distributed` tables with the names the store
/// uses, sharded by event uuid so a retried event lands on the shard that
/// holds its first copy. Run once against any node.
pub fn cluster_ddl(cluster: &str, database: &str, version: ServerVersion, retention_days: Option<u32>) -> Vec<String> {
    let f = Flavour { version, retention_days, cluster: Some(cluster) };
    let distributed = |table: &str, key: &str| {
        format!(
            "CREATE TABLE IF NOT EXISTS {database}.{table} ON CLUSTER {cluster} AS {database}.{table}_local \
             ENGINE = Distributed({cluster}, {database}, {table}_local, {key})"
        )
    };
    vec![
        format!("CREATE DATABASE IF NOT EXISTS {database} ON CLUSTER {cluster}"),
        events_table(f, database, "events_local"),
        users_table(f, database, "users_local"),
        identities_table(f, database, "identities_local"),
        cohort_members_table(f, database, "cohort_members_local"),
        distributed("events", EVENTS_SHARDING_KEY),
        distributed("users", "cityHash64(project_id, user_id)"),
        distributed("identities", "cityHash64(project_id, anonymous_id)"),
        distributed("cohort_members", "cityHash64(project_id, user_id)"),
        format!(
            "CREATE TABLE IF NOT EXISTS {database}.leanloop_schema ON CLUSTER {cluster} \
             (version UInt32, applied_at DateTime) ENGINE = MergeTree ORDER BY version"
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newer_servers_get_low_cardinality_and_ttl() {
        let old =
            Flavour { version: ServerVersion::parse("18.16.1").unwrap(), retention_days: Some(30), cluster: None };
        let new = Flavour { version: ServerVersion::parse("24.8.4.13").unwrap(), ..old };
        let (old_sql, new_sql) = (events_table(old, "db", "events"), events_table(new, "db", "events"));
        assert!(!old_sql.contains("LowCardinality") && !old_sql.contains("TTL"), "{old_sql}");
        assert!(new_sql.contains("name LowCardinality(String)") && new_sql.contains("TTL timestamp + INTERVAL 30 DAY"));
    }

    #[test]
    fn cluster_ddl_is_replicated_and_distributed() {
        let ddl = cluster_ddl("prod", "leanloop", ServerVersion { major: 24, minor: 3 }, None).join(";\n");
        assert!(ddl.contains("CREATE DATABASE IF NOT EXISTS leanloop ON CLUSTER prod"));
        assert!(ddl.contains("ReplicatedMergeTree('/clickhouse/tables/{shard}/leanloop/events_local', '{replica}')"));
        assert!(ddl.contains(
            "ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/leanloop/users_local', '{replica}', version)"
        ));
        assert!(
            ddl.contains("ENGINE = Distributed(prod, leanloop, events_local, cityHash64(project_id, toString(uuid)))")
        );
    }
}
