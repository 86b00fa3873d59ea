//! Deletes, as ClickHouse mutations (`ALTER TABLE … DELETE`), on one server
//! or on a cluster. On a cluster (`leanloop migrate --cluster`) the store's
//! tables are Distributed tables, which take no mutation: a delete runs on
//! every shard's `*_local` table `ON CLUSTER`, and its end is awaited on
//! every server of the cluster.

use super::write::bounded_chunks;
use crate::StoreError;
use clickhouse::query::Query;
use std::time::Duration;

/// Where the database's mutations run.
#[derive(Clone, PartialEq)]
pub enum Mutations {
    /// On the tables themselves.
    Local,
    /// On each shard's `*_local` tables.
    Cluster(Cluster),
}

#[derive(Clone, PartialEq)]
pub struct Cluster {
    name: String,
    database: String,
    /// Its servers as `remote()` names them (`host:port,…`).
    servers: String,
    server_count: u64,
    /// The store's own user and password, which `remote()` is given: it
    /// would connect as `default` with no password.
    user: String,
    password: String,
}

/// The password left out.
impl std::fmt::Debug for Mutations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Mutations::Local => f.write_str("Local"),
            Mutations::Cluster(c) => f
                .debug_struct("Cluster")
                .field("name", &c.name)
                .field("servers", &c.servers)
                .field("user", &c.user)
                .finish_non_exhaustive(),
        }
    }
}

impl Mutations {
    /// How the connected database is laid out: a cluster's when its
    /// `events` table is Distributed. `user` and `password` are the store's.
    pub async fn of(
        client: &clickhouse::Client,
        user: Option<&str>,
        password: Option<&str>,
    ) -> Result<Mutations, StoreError> {
        let engines: Vec<(String, String)> = client
            .query(
                "SELECT database, engine_full FROM system.tables
                 WHERE database = currentDatabase() AND name = 'events' AND engine = 'Distributed'",
            )
            .fetch_all()
            .await?;
        let Some((database, engine)) = engines.into_iter().next() else { return Ok(Mutations::Local) };
        let name = cluster_of(&engine)
            .ok_or_else(|| StoreError::Config(format!("cannot read the cluster of the events table: {engine}")))?;
        let servers: Vec<(String, u16)> = client
            .query("SELECT host_address, port FROM system.clusters WHERE cluster = ?")
            .bind(&name)
            .fetch_all()
            .await?;
        let servers: Vec<String> = servers.iter().map(|(host, port)| server_address(host, *port)).collect();
        Ok(Mutations::Cluster(Cluster {
            name,
            database,
            servers: servers.join(","),
            server_count: servers.len() as u64,
            user: user.unwrap_or("default").to_owned(),
            password: password.unwrap_or_default().to_owned(),
        }))
    }

    /// The start of a statement altering `table`.
    pub fn alter(&self, table: &str) -> String {
        match self {
            Mutations::Local => format!("ALTER TABLE {table}"),
            // Named with its database: a server's `default_database` would
            // otherwise decide where the statement runs.
            Mutations::Cluster(c) => format!("ALTER TABLE {}.{table}_local ON CLUSTER {}", c.database, c.name),
        }
    }

    /// Makes a mutation, `statement`; answers whether every server took it.
    /// On a cluster, one a server has not taken within `wait` seconds (it
    /// is down) stays queued for it (ClickHouse's queue of `ON CLUSTER`
    /// statements, `distributed_ddl_task_timeout`; 0 waits for none): made,
    /// and awaited like the others.
    pub async fn make(&self, statement: Query, wait: Duration) -> Result<bool, StoreError> {
        let Mutations::Cluster(_) = self else { return Ok(statement.execute().await.map(|()| true)?) };
        let waited = statement.with_setting("distributed_ddl_task_timeout", wait.as_secs().to_string());
        match waited.execute().await.map_err(StoreError::from) {
            Ok(()) => Ok(wait > Duration::ZERO),
            // TIMEOUT_EXCEEDED: "… unfinished hosts …, they are going to
            // execute the query in background".
            Err(e) if crate::error::clickhouse_code(&e.to_string()) == Some(159) => {
                tracing::warn!(error = %e, "a server of the cluster has not taken a delete yet; it runs it once back");
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// `ids` as the sets a delete's condition takes, each to be bound to
    /// the statement it is written into (see [`IdSet`]).
    pub fn id_sets<'a>(&self, ids: &'a [&'a str]) -> Vec<IdSet<'a>> {
        match self {
            Mutations::Local => vec![IdSet::Bound(ids)],
            Mutations::Cluster(_) if ids.is_empty() => vec![IdSet::Listed(&[])],
            Mutations::Cluster(_) => bounded_chunks(ids).into_iter().map(IdSet::Listed).collect(),
        }
    }

    /// How many of the `made` mutations of `database` whose text holds
    /// `tag` have not finished. On a cluster each is awaited on every
    /// server, and one a server does not show yet counts as unfinished.
    pub async fn unfinished(
        &self,
        client: &clickhouse::Client,
        database: &str,
        tag: &str,
        made: u64,
    ) -> Result<u64, StoreError> {
        let counts = "SELECT countIf(is_done = 0), count()";
        let condition = "WHERE database = ? AND position(command, ?) > 0";
        let (query, expected) = match self {
            Mutations::Local => (client.query(&format!("{counts} FROM system.mutations {condition}")), made),
            // A server down is skipped: its mutations, not shown, count as
            // unfinished (it runs them from the cluster's queue once back).
            Mutations::Cluster(c) => (
                client
                    .clone()
                    .with_setting("skip_unavailable_shards", "1")
                    .query(&format!("{counts} FROM remote(?, system, mutations, ?, ?) {condition}"))
                    .bind(&c.servers)
                    .bind(&c.user)
                    .bind(&c.password),
                made * c.server_count,
            ),
        };
        let (running, shown): (u64, u64) = query.bind(database).bind(tag).fetch_one().await?;
        Ok(running + expected.saturating_sub(shown))
    }
}

/// A set of ids a delete's condition tests a column against.
pub enum IdSet<'a> {
    /// One bound array, read as a set (`IN` a subquery, hashed): any
    /// number of ids, in a statement a server may take long.
    Bound(&'a [&'a str]),
    /// The ids written out, as a cluster's mutations need: current servers
    /// refuse a mutation of a replicated table holding a subquery (it might
    /// read differently on each replica), and every server runs the
    /// statement under its own default size limits.
    Listed(&'a [&'a str]),
}

impl IdSet<'_> {
    /// `expr` is one of the set, with a `?` for each value [`IdSet::bind`]
    /// binds.
    pub fn condition(&self, expr: &str) -> String {
        match self {
            IdSet::Bound(_) => in_bound_set(expr),
            IdSet::Listed([]) => "0".to_owned(),
            IdSet::Listed(ids) => format!("{expr} IN ({})", vec!["?"; ids.len()].join(", ")),
        }
    }

    pub fn bind(&self, query: Query) -> Query {
        match self {
            IdSet::Bound(ids) => query.bind(ids),
            IdSet::Listed(ids) => ids.iter().fold(query, |query, id| query.bind(id)),
        }
    }

    pub fn is_empty(&self) -> bool {
        match self {
            IdSet::Bound(ids) | IdSet::Listed(ids) => ids.is_empty(),
        }
    }
}

/// `expr` is one of the strings of an array bound to the `?`, as a set:
/// hashed, and on a table's key column narrowed by its index, where
/// `has(?, expr)` searches the array for every row of the table (2,000
/// ids over 3 million links: 54 s against 0.2 s on 18.16).
pub fn in_bound_set(expr: &str) -> String {
    // Cast, as an empty list is an `Array(Nothing)` older servers refuse.
    format!("{expr} IN (SELECT arrayJoin(CAST(? AS Array(String))))")
}

/// `host:port` as `remote()` takes it, an IPv6 address in brackets.
fn server_address(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The cluster a `Distributed(cluster, database, table, key)` engine names.
fn cluster_of(engine: &str) -> Option<String> {
    let name = engine.strip_prefix("Distributed(")?.split(',').next()?.trim().trim_matches('\'');
    super::is_identifier(name).then(|| name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster() -> Mutations {
        Mutations::Cluster(Cluster {
            name: "prod".into(),
            database: "leanloop".into(),
            servers: "a:9000,b:9000".into(),
            server_count: 2,
            user: "leanloop".into(),
            password: "s3cret".into(),
        })
    }

    #[test]
    fn a_cluster_is_read_from_its_distributed_engine() {
        let engine = "Distributed(lshard, leanloop, events_local, cityHash64(project_id, toString(uuid)))";
        assert_eq!(cluster_of(engine).as_deref(), Some("lshard"));
        assert_eq!(cluster_of("Distributed('prod', leanloop, events_local)").as_deref(), Some("prod"));
        assert_eq!(cluster_of("MergeTree ORDER BY x"), None);
        assert_eq!(cluster().alter("users"), "ALTER TABLE leanloop.users_local ON CLUSTER prod");
        assert_eq!(Mutations::Local.alter("users"), "ALTER TABLE users");
        assert_eq!(server_address("::1", 9000), "[::1]:9000");
        assert_eq!(server_address("10.0.0.7", 9000), "10.0.0.7:9000");
        assert!(!format!("{:?}", cluster()).contains("s3cret"));
    }

    /// A cluster's deletes hold no subquery, and their text stays under a
    /// server's default statement size whatever the number of ids.
    #[test]
    fn a_cluster_deletes_listed_ids_in_statements_of_bounded_size() {
        let long = "x".repeat(1000);
        let ids: Vec<&str> = (0..300).map(|_| long.as_str()).collect();
        let sets = cluster().id_sets(&ids);
        assert!(sets.len() >= 4, "{}", sets.len());
        assert_eq!(sets.iter().map(|s| s.condition("c").matches('?').count()).sum::<usize>(), ids.len());
        for set in &sets {
            let condition = set.condition("c");
            assert!(!condition.contains("SELECT"), "{condition}");
            let IdSet::Listed(listed) = set else { panic!("bound ids on a cluster") };
            assert!(listed.iter().map(|id| id.len() + 4).sum::<usize>() < 128 * 1024);
        }
        assert_eq!(cluster().id_sets(&[])[0].condition("c"), "0");
        let local = Mutations::Local.id_sets(&ids);
        assert_eq!(local.len(), 1);
        assert!(local[0].condition("c").contains("arrayJoin"));
    }
}
