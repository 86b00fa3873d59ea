-- Leanloop event store on ClickHouse cluster `leanloop` (server 24.8).
-- Each server needs the {shard} and {replica} macros and ZooKeeper or Keeper.
CREATE DATABASE IF NOT EXISTS leanloop ON CLUSTER leanloop;

CREATE TABLE IF NOT EXISTS leanloop.events_local ON CLUSTER leanloop (
            uuid UUID, project_id Int64, kind LowCardinality(String), name LowCardinality(String),
            timestamp DateTime, timestamp_ms Int64, received_at_ms Int64, timestamp_clamped UInt8,
            anonymous_id Nullable(String), user_id Nullable(String), session_id Nullable(String),
            release LowCardinality(Nullable(String)), url Nullable(String), path Nullable(String), page_name Nullable(String),
            referrer Nullable(String), referrer_domain LowCardinality(Nullable(String)),
            utm_source LowCardinality(Nullable(String)), utm_medium LowCardinality(Nullable(String)), utm_campaign LowCardinality(Nullable(String)),
            utm_term Nullable(String), utm_content Nullable(String),
            browser LowCardinality(Nullable(String)), browser_version LowCardinality(Nullable(String)), os LowCardinality(Nullable(String)), device_type LowCardinality(Nullable(String)),
            country LowCardinality(Nullable(String)), ip Nullable(String), library LowCardinality(Nullable(String)),
            properties String, prop_keys Array(String), prop_values Array(String)
        ) ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/leanloop/events_local', '{replica}')
        PARTITION BY toYYYYMM(timestamp)
        ORDER BY (project_id, toDate(timestamp), name, timestamp_ms);

CREATE TABLE IF NOT EXISTS leanloop.users_local ON CLUSTER leanloop (
            project_id Int64, user_id String, traits String,
            first_seen_ms Int64, last_seen_ms Int64, version UInt64
        ) ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/leanloop/users_local', '{replica}', version) ORDER BY (project_id, user_id);

CREATE TABLE IF NOT EXISTS leanloop.identities_local ON CLUSTER leanloop (
            project_id Int64, anonymous_id String, user_id String, linked_at_ms Int64
        ) ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/leanloop/identities_local', '{replica}') ORDER BY (project_id, anonymous_id);

CREATE TABLE IF NOT EXISTS leanloop.cohort_members_local ON CLUSTER leanloop (
            project_id Int64, cohort_id Int64, version Int64, user_id String
        ) ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/leanloop/cohort_members_local', '{replica}') ORDER BY (project_id, cohort_id, version, user_id);

CREATE TABLE IF NOT EXISTS leanloop.events ON CLUSTER leanloop AS leanloop.events_local ENGINE = Distributed(leanloop, leanloop, events_local, cityHash64(project_id, toString(uuid)));

CREATE TABLE IF NOT EXISTS leanloop.users ON CLUSTER leanloop AS leanloop.users_local ENGINE = Distributed(leanloop, leanloop, users_local, cityHash64(project_id, user_id));

CREATE TABLE IF NOT EXISTS leanloop.identities ON CLUSTER leanloop AS leanloop.identities_local ENGINE = Distributed(leanloop, leanloop, identities_local, cityHash64(project_id, anonymous_id));

CREATE TABLE IF NOT EXISTS leanloop.cohort_members ON CLUSTER leanloop AS leanloop.cohort_members_local ENGINE = Distributed(leanloop, leanloop, cohort_members_local, cityHash64(project_id, user_id));

CREATE TABLE IF NOT EXISTS leanloop.leanloop_schema ON CLUSTER leanloop (version UInt32, applied_at DateTime) ENGINE = MergeTree ORDER BY version;

