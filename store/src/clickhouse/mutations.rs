//! Deletes, as ClickHouse mutations (`ALTER TABLE … DELETE`), on one server
//! or on a cluster. On a cluster (`leanloop migrate --cluster`) the store's
//! tables are Distributed tables, which take no mutation: a delete runs on
//! every shard's `*_local` table `ON CLUSTER`, and its end is awaited on
//! every server of the cluster.

use crate::StoreError;

/// Where the database's mutations run.
#[derive(Debug, Clone, PartialEq)]
pub enum Mutations {
    /// On the tables themselves.
    Local,
    /// On each shard's `*_local` tables: the cluster's name, and its
    /// servers as `remote()` names them (`host:port,…`).
    Cluster { name: String, servers: String },
}

impl Mutations {
    /// How the connected database is laid out: a cluster's when its
    /// `events` table is Distributed.
    pub async fn of(client: &clickhouse::Client) -> Result<Mutations, StoreError> {
        let engines: Vec<String> = client
            .query(
                "SELECT engine_full FROM system.tables
                 WHERE database = currentDatabase() AND name = 'events' AND engine = 'Distributed'",
            )
            .fetch_all()
            .await?;
        let Some(engine) = engines.first() else { return Ok(Mutations::Local) };
        let name = cluster_of(engine)
            .ok_or_else(|| StoreError::Config(format!("cannot read the cluster of the events table: {engine}")))?;
        let servers: Vec<(String, u16)> = client
            .query("SELECT host_address, port FROM system.clusters WHERE cluster = ?")
            .bind(&name)
            .fetch_all()
            .await?;
        let servers: Vec<String> = servers.into_iter().map(|(host, port)| format!("{host}:{port}")).collect();
        Ok(Mutations::Cluster { name, servers: servers.join(",") })
    }

    /// The start of a statement altering `table`.
    pub fn alter(&self, table: &str) -> String {
        match self {
            Mutations::Local => format!("ALTER TABLE {table}"),
            Mutations::Cluster { name, .. } => format!("ALTER TABLE {table}_local ON CLUSTER {name}"),
        }
    }

    /// How many of the database's mutations have not finished, on every
    /// server they run on.
    pub async fn pending(&self, client: &clickhouse::Client, database: &str) -> Result<u64, StoreError> {
        let mutations = match self {
            Mutations::Local => "system.mutations".to_owned(),
            Mutations::Cluster { servers, .. } => format!("remote('{servers}', system, mutations)"),
        };
        let sql = format!("SELECT count() FROM {mutations} WHERE database = ? AND is_done = 0");
        Ok(client.query(&sql).bind(database).fetch_one().await?)
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

    #[test]
    fn a_cluster_is_read_from_its_distributed_engine() {
        let engine = "Distributed(lshard, leanloop, events_local, cityHash64(project_id, toString(uuid)))";
        assert_eq!(cluster_of(engine).as_deref(), Some("lshard"));
        assert_eq!(cluster_of("Distributed('prod', leanloop, events_local)").as_deref(), Some("prod"));
        assert_eq!(cluster_of("MergeTree ORDER BY x"), None);
        let cluster = Mutations::Cluster { name: "prod".into(), servers: "a:9000,b:9000".into() };
        assert_eq!(cluster.alter("users"), "ALTER TABLE users_local ON CLUSTER prod");
        assert_eq!(Mutations::Local.alter("users"), "ALTER TABLE users");
    }
}
