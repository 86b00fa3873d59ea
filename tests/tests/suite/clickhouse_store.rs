//! The ClickHouse event store behind the same collector and read API as
//! DuckDB: the same requests give the same stored events on both.

use leanloop_store::clickhouse::ClickHouseOptions;
use leanloop_tests::clickhouse::{self as ch, fresh_database, store_url, Private};
use leanloop_tests::{eventually_within, message_id, TestServer};
use serde_json::{json, Value};
use std::time::Duration;

async fn on_clickhouse() -> (TestServer, String) {
    let database = fresh_database();
    let url = store_url(&ch::shared(), &database);
    let s = TestServer::start_with(|c| c.clickhouse = Some(ClickHouseOptions::new(url))).await;
    (s, database)
}

/// As [`on_clickhouse`], with requests given `request_timeout`.
async fn on_clickhouse_answering_within(request_timeout: Duration) -> (TestServer, String) {
    let database = fresh_database();
    let url = store_url(&ch::shared(), &database);
    let s = TestServer::start_with(|c| {
        c.clickhouse = Some(ClickHouseOptions::new(url));
        c.request_timeout = request_timeout;
    })
    .await;
    (s, database)
}

fn traffic() -> Value {
    let at = "2026-03-01T10:00:00.000Z";
    json!({"batch": [
        {"type": "page", "name": "Pricing", "anonymousId": "anon-1", "messageId": message_id(), "timestamp": at,
         "context": {"release": "2.1.0", "page": {"url": "https://shop.example/pricing?utm_source=news&utm_campaign=spring",
                     "referrer": "https://www.google.com/search?q=x"},
                     "userAgent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36"}},
        {"type": "track", "event": "checkout", "anonymousId": "anon-1", "messageId": message_id(), "timestamp": at,
         "properties": {"plan": "pro", "amount": 12.5, "quote": "it's \"quoted\"", "nested": {"a": [1, 2]}}},
        {"type": "identify", "userId": "user-1", "anonymousId": "anon-1", "messageId": message_id(), "timestamp": at,
         "traits": {"email": "a@example.com", "plan": "free"}},
        {"type": "identify", "userId": "user-1", "messageId": message_id(), "timestamp": at, "traits": {"plan": "pro"}},
        {"type": "alias", "userId": "user-1", "previousId": "old-id", "messageId": message_id(), "timestamp": at},
        {"type": "track", "event": "名前 with ' quote", "userId": "user-1", "messageId": message_id(), "timestamp": at}
    ]})
}

#[tokio::test(flavor = "multi_thread")]
async fn clickhouse_and_duckdb_store_the_same_events() {
    let (click, database) = on_clickhouse().await;
    let duck = TestServer::start().await;
    let body = traffic();
    for _ in 0..3 {
        assert_eq!(click.post("/v1/batch", &body).await.status(), 200);
        assert_eq!(duck.post("/v1/batch", &body).await.status(), 200);
    }
    assert_eq!(click.count(&[]).await, 6, "a batch sent three times is stored once");
    assert_eq!(ch::totals(&ch::shared(), &database).await, (6, 6));

    // Events of one time come in the same order from both stores.
    let order = |events: Vec<Value>| -> Vec<Value> { events.into_iter().map(|e| e["uuid"].clone()).collect() };
    assert_eq!(order(click.events(&[]).await), order(duck.events(&[]).await));

    // The same stored events, field for field, on both stores.
    let strip = |events: Vec<Value>| -> Vec<Value> {
        let mut events: Vec<Value> = events
            .into_iter()
            .map(|mut e| {
                let e_map = e.as_object_mut().unwrap();
                e_map.remove("received_at");
                e_map.remove("session_id");
                e
            })
            .collect();
        events.sort_by_key(|e| e["uuid"].as_str().unwrap().to_owned());
        events
    };
    let (on_click, on_duck) = (strip(click.events(&[]).await), strip(duck.events(&[]).await));
    assert_eq!(on_click, on_duck);
    let page = click.only_event("$pageview").await;
    assert_eq!(
        (&page["release"], &page["utm_source"], &page["browser"], &page["referrer_domain"], &page["page_name"]),
        (&json!("2.1.0"), &json!("news"), &json!("Chrome"), &json!("google.com"), &json!("Pricing"))
    );
    for (query, expected) in [
        (vec![("name", "checkout")], 1),
        (vec![("name", "名前 with ' quote")], 1),
        (vec![("user", "anon-1")], 3),
        (vec![("from", "2026-03-01T10:00:00Z"), ("to", "2026-03-01T10:00:00.001Z")], 6),
        (vec![("from", "2026-03-01T10:00:00.001Z")], 0),
        (vec![("name", "x' OR 1=1 --")], 0),
    ] {
        assert_eq!(click.count(&query).await, expected, "{query:?}");
        assert_eq!(duck.count(&query).await, expected, "{query:?}");
    }

    // People: traits merged in order, first link wins, same on both.
    assert_eq!(click.user_traits("user-1").await, Some(json!({"email": "a@example.com", "plan": "pro"})));
    assert_eq!(click.user_traits("user-1").await, duck.user_traits("user-1").await);
    assert_eq!(click.identity("anon-1").await.as_deref(), Some("user-1"));
    assert_eq!(click.identity("old-id").await.as_deref(), Some("user-1"));
    assert_eq!(click.identity("nobody").await, None);

    // Top-level properties are also stored as key/value arrays for fast filters.
    let sql = format!(
        "SELECT prop_values[indexOf(prop_keys, 'plan')], prop_values[indexOf(prop_keys, 'amount')],
                prop_values[indexOf(prop_keys, 'quote')] FROM {database}.events WHERE name = 'checkout' FORMAT TSV"
    );
    assert_eq!(ch::query(&ch::shared(), &sql).await.trim_end(), "pro\t12.5\tit\\'s \"quoted\"");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_starts_while_clickhouse_is_down_answers_reads_503_and_stores_once_it_is_up() {
    let server = Private::start();
    server.stop();
    let database = fresh_database();
    let s = TestServer::start_with(|c| c.clickhouse = Some(ClickHouseOptions::new(store_url(&server.http, &database))))
        .await;
    let body = traffic();
    assert_eq!(s.post("/v1/batch", &body).await.status(), 200, "the log takes events while the store is down");
    let reading = s.client.get(s.url(&format!("/api/v1/projects/{}/events/count", s.project.id)));
    let down = reading.try_clone().unwrap().bearer_auth(&s.project.read_key).send().await.unwrap();
    assert_eq!(down.status(), 503);
    assert!(down.headers().contains_key("retry-after"));
    let message = down.json::<Value>().await.unwrap()["error"]["message"].as_str().unwrap_or_default().to_owned();
    assert!(message.contains("unavailable"), "{message}");

    server.restart();
    assert_eq!(s.post("/v1/batch", &body).await.status(), 200, "a retry of the same batch");
    eventually_within("the logged batch in ClickHouse", Duration::from_secs(60), || async {
        // The store creates the database when it opens.
        let tables = format!("SELECT count() FROM system.tables WHERE database = '{database}' AND name = 'events'");
        let created = ch::query(&server.http, &tables).await.trim() == "1";
        (created && ch::totals(&server.http, &database).await == (6, 6)).then_some(())
    })
    .await;
    assert_eq!(s.count(&[]).await, 6, "stored once, read back once the store opened");
    // An outage after the store opened is a 503 too, not an internal error.
    server.stop();
    let down = reading.try_clone().unwrap().bearer_auth(&s.project.read_key).send().await.unwrap();
    assert_eq!(down.status(), 503, "{:?}", down.text().await);

    // A cohort saved meanwhile is saved, and says so: a 503 would have a
    // client retry, and save it twice.
    let cohorts = s.url(&format!("/api/v1/projects/{}/cohorts", s.project.id));
    let definition = json!({"name": "Pro", "filters": [{"field": "traits.plan", "op": "eq", "value": "pro"}]});
    let created = s.client.post(&cohorts).bearer_auth(&s.project.read_key).json(&definition).send().await.unwrap();
    assert_eq!(created.status(), 201);
    let created: Value = created.json().await.unwrap();
    assert_eq!(created["count"], Value::Null, "{created}");
    assert!(created["count_error"].as_str().is_some_and(|e| e.contains("cannot count members now")), "{created}");
    let listed = s.client.get(&cohorts).bearer_auth(&s.project.read_key).send().await.unwrap();
    assert_eq!(listed.status(), 503, "counts cannot be read while the store is down");
    let id = created["id"].as_i64().unwrap();
    let one = format!("{cohorts}/{id}");
    let deleted = s.client.delete(&one).bearer_auth(&s.project.read_key).send().await.unwrap();
    assert_eq!(deleted.status(), 204, "{:?}", deleted.text().await);
    server.restart();
    eventually_within("reads once ClickHouse is back", Duration::from_secs(60), || async {
        let answer = reading.try_clone().unwrap().bearer_auth(&s.project.read_key).send().await.ok()?;
        answer.status().is_success().then_some(())
    })
    .await;
    let again = s.client.post(&cohorts).bearer_auth(&s.project.read_key).json(&definition).send().await.unwrap();
    let again: Value = again.json().await.unwrap();
    assert!(again["id"].as_i64().unwrap() > id && again["count"].is_u64(), "{again}");
    let listed: Value =
        s.client.get(&cohorts).bearer_auth(&s.project.read_key).send().await.unwrap().json().await.unwrap();
    assert_eq!(listed["cohorts"].as_array().map(Vec::len), Some(1), "{listed}");

    let bad = leanloop::Config::for_tests(tempfile::tempdir().unwrap().path());
    let bad = leanloop::Config { clickhouse: Some(ClickHouseOptions::new("https://127.0.0.1/")), ..bad };
    let err = leanloop::App::build(bad, leanloop::Role::Server).await.err().expect("a bad URL fails start-up");
    assert!(format!("{err:#}").contains("https is not supported"), "{err:#}");
}

#[tokio::test(flavor = "multi_thread")]
async fn set_once_fills_only_traits_a_person_lacks_on_both_stores() {
    let (click, _database) = on_clickhouse().await;
    let duck = TestServer::start().await;
    let capture = |key: &str, events: Value| json!({"api_key": key, "batch": events});
    for s in [&click, &duck] {
        let first = capture(
            &s.project.write_key,
            json!([
                {"event": "$pageview", "distinct_id": "p1", "properties": {
                    "$set_once": {"initial_referrer": "news.example", "plan": "trial"},
                    "$set": {"plan": "free", "address": {"city": "Oslo", "zip": "0150"}}}},
                {"event": "$pageview", "distinct_id": "p1", "properties": {"$set_once": {"initial_referrer": "later.example"}}}
            ]),
        );
        assert_eq!(s.client.post(s.url("/batch/")).json(&first).send().await.unwrap().status(), 200);
        s.settle().await;
        let second = capture(
            &s.project.write_key,
            json!([
                {"event": "signed_up", "distinct_id": "p1",
                 "$set_once": {"initial_referrer": "third.example", "signup": "2026-01-01", "address": {"country": "NO"}},
                 "$set": {"plan": "pro", "email": "p1@example.com", "address": {"city": "Bergen", "floor": null}}}
            ]),
        );
        assert_eq!(s.client.post(s.url("/batch/")).json(&second).send().await.unwrap().status(), 200);
        let traits = s.user_traits("p1").await.expect("person stored");
        assert_eq!(
            traits,
            json!({"initial_referrer": "news.example", "plan": "pro", "signup": "2026-01-01", "email": "p1@example.com",
                "address": {"city": "Bergen", "floor": null}}),
            "$set_once never overwrites; $set always does, an object whole"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn traits_sent_with_an_id_linked_before_change_its_user_on_both_stores() {
    let (click, _database) = on_clickhouse().await;
    let duck = TestServer::start().await;
    for s in [&click, &duck] {
        let send = |event: Value| {
            let body = json!({"api_key": s.project.write_key, "batch": [event]});
            async move { assert_eq!(s.client.post(s.url("/batch/")).json(&body).send().await.unwrap().status(), 200) }
        };
        send(json!({"event": "$identify", "distinct_id": "user1",
            "properties": {"$anon_distinct_id": "device1", "$set": {"plan": "free"}}}))
        .await;
        s.settle().await;
        send(
            json!({"event": "upgraded", "distinct_id": "device1", "properties": {"$set": {"plan": "pro", "seats": 3}}}),
        )
        .await;
        let traits = s.user_traits("user1").await.expect("person stored");
        assert_eq!(traits, json!({"plan": "pro", "seats": 3}));
        // An identify naming an id aliased on before: the visitor it links
        // brings its traits to the person that id is.
        send(json!({"event": "$create_alias", "distinct_id": "old", "properties": {"alias": "new"}})).await;
        s.settle().await;
        send(json!({"event": "$set", "distinct_id": "visitor", "$set": {"color": "red"}})).await;
        s.settle().await;
        send(json!({"event": "$identify", "distinct_id": "old", "properties": {"$anon_distinct_id": "visitor"}})).await;
        let traits = s.user_traits("new").await.expect("person stored");
        assert_eq!(traits["color"], "red", "{traits}");
        let pro = json!({"filters": [{"field": "traits.plan", "op": "eq", "value": "pro"}]});
        let (status, listed) = s.insight("people", &pro).await;
        assert_eq!((status, &listed["total"]), (200, &json!(1)), "{listed}");
        assert_eq!(listed["people"][0]["user_id"], "user1", "{listed}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_spanning_150_months_and_thousands_of_people_is_stored() {
    let (s, database) = on_clickhouse().await;
    // ClickHouse refuses one insert touching over 100 partitions (months), and
    // caps a query's text: neither may wedge delivery.
    let events: Vec<Value> = (0..150)
        .map(|m| {
            let at = format!("{:04}-{:02}-15T12:00:00Z", 2000 + m / 12, m % 12 + 1);
            json!({"type": "track", "event": "old", "userId": format!("u{m}"), "timestamp": at, "messageId": message_id()})
        })
        .collect();
    assert_eq!(s.post("/v1/batch", &json!({"batch": events})).await.status(), 200);
    let people: Vec<Value> = (0..1000)
        .map(|i| json!({"type": "identify", "userId": format!("{i}-{}", "p".repeat(200)), "traits": {"i": i}, "messageId": message_id()}))
        .collect();
    assert_eq!(s.post("/v1/batch", &json!({"batch": people})).await.status(), 200);
    assert_eq!(s.count(&[("name", "old")]).await, 150);
    assert_eq!(s.count(&[("name", "$identify")]).await, 1000);
    assert_eq!(ch::totals(&ch::shared(), &database).await, (1150, 1150));
    assert_eq!(s.user_traits(&format!("999-{}", "p".repeat(200))).await, Some(json!({"i": 999})));
}

/// A retry is the same event even when its timestamp comes out different:
/// clock-skew correction moves it by when each attempt was received (here
/// a client whose second attempt carries an older `sentAt`), as does the
/// lack of a client timestamp. Stored once on both stores.
#[tokio::test(flavor = "multi_thread")]
async fn a_retry_whose_corrected_time_moved_is_stored_once_on_both_stores() {
    let (clickhouse, _) = on_clickhouse().await;
    let duckdb = TestServer::start().await;
    for s in [&clickhouse, &duckdb] {
        let id = message_id();
        let attempt = |sent_at: &str| {
            json!({"userId": "u", "event": "retried", "messageId": id, "timestamp": "2024-05-01T10:00:00.000Z",
                   "sentAt": sent_at})
        };
        assert_eq!(s.post("/v1/track", &attempt("2024-05-01T10:00:01.000Z")).await.status(), 200);
        s.settle().await;
        // Corrected times 5 s apart: in another second, even another minute.
        assert_eq!(s.post("/v1/track", &attempt("2024-05-01T09:59:56.000Z")).await.status(), 200);
        assert_eq!(s.count(&[("name", "retried")]).await, 1);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_anonymous_id_identified_as_two_people_stays_with_the_first_link_on_both_stores() {
    let (click, _database) = on_clickhouse().await;
    let duck = TestServer::start().await;
    let at = |minutes_ago: i64| (chrono::Utc::now() - chrono::Duration::minutes(minutes_ago)).to_rfc3339();
    for s in [&click, &duck] {
        let first = json!({"batch": [
            {"type": "track", "event": "seen", "anonymousId": "anon-s", "messageId": message_id(), "timestamp": at(30)},
            {"type": "identify", "anonymousId": "anon-s", "userId": "u2", "messageId": message_id(), "timestamp": at(10)}
        ]});
        assert_eq!(s.post("/v1/batch", &first).await.status(), 200);
        s.settle().await;
        // Sent later, though it happened earlier: the first link stored stays.
        let later = json!({"batch": [
            {"type": "identify", "anonymousId": "anon-s", "userId": "u1", "messageId": message_id(), "timestamp": at(20)}
        ]});
        assert_eq!(s.post("/v1/batch", &later).await.status(), 200);
        assert_eq!(s.identity("anon-s").await.as_deref(), Some("u2"));
        let profile = |user: &'static str| async move {
            let url = s.url(&format!("/api/v1/projects/{}/people/{user}", s.project.id));
            let answer: Value =
                s.client.get(url).bearer_auth(&s.project.read_key).send().await.unwrap().json().await.unwrap();
            answer["anonymous_ids"].clone()
        };
        assert_eq!((profile("u1").await, profile("u2").await), (json!([]), json!(["anon-s"])));
        // Erasing the other person leaves the anonymous events with their owner.
        let url = s.url(&format!("/api/v1/projects/{}/people/u1", s.project.id));
        let erased = s.client.delete(url).bearer_auth(&s.project.read_key).send().await.unwrap();
        assert_eq!(erased.status(), 200, "{:?}", erased.text().await);
        assert_eq!(s.count(&[("name", "seen")]).await, 1);
        assert_eq!(s.identity("anon-s").await.as_deref(), Some("u2"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_a_newer_build_migrated_refuses_start() {
    let database = fresh_database();
    let url = store_url(&ch::shared(), &database);
    drop(TestServer::start_with(|c| c.clickhouse = Some(ClickHouseOptions::new(url.clone()))).await);
    ch::query(&ch::shared(), &format!("INSERT INTO {database}.leanloop_schema VALUES (99, now())")).await;
    let config = leanloop::Config::for_tests(tempfile::tempdir().unwrap().path());
    let config = leanloop::Config { clickhouse: Some(ClickHouseOptions::new(url)), ..config };
    let err = leanloop::App::build(config, leanloop::Role::Collector).await.err().expect("start-up fails");
    assert!(format!("{err:#}").contains("version 99, newer than this build"), "{err:#}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_holding_another_applications_events_table_refuses_start_and_is_left_alone() {
    for (table, columns) in [("events", "x UInt8"), ("events", "project_id Int64, what String"), ("users", "id UInt64")]
    {
        let database = fresh_database();
        ch::query(&ch::shared(), &format!("CREATE DATABASE {database}")).await;
        ch::query(&ch::shared(), &format!("CREATE TABLE {database}.{table} ({columns}) ENGINE = Memory")).await;
        let parent = tempfile::tempdir().unwrap();
        let data_dir = parent.path().join("data");
        let config = leanloop::Config::for_tests(&data_dir);
        let url = store_url(&ch::shared(), &database);
        let config = leanloop::Config { clickhouse: Some(ClickHouseOptions::new(url)), ..config };
        let err = leanloop::App::build(config, leanloop::Role::Collector).await.err().expect("start-up fails");
        assert!(!data_dir.exists(), "no data directory left behind");
        let said = format!("{err:#}");
        assert!(said.contains(&format!("a table `{table}` that is not Leanloop's")), "{columns}: {said}");
        let tables =
            ch::query(&ch::shared(), &format!("SELECT name FROM system.tables WHERE database = '{database}'")).await;
        assert_eq!(tables.trim(), table, "nothing created beside it");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_float_filtered_by_its_own_value_matches_on_both_stores() {
    let (click, _) = on_clickhouse().await;
    let duck = TestServer::start().await;
    // Values older ClickHouse servers read a digit off in the last place.
    let values = [0.1958041958041958, 11.02638190954774, 2.7890840981819507e20, 5e-324, 0.30000000000000004];
    let at = "2026-03-01T10:00:00.000Z";
    let batch: Vec<Value> = values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            json!({"type": "track", "event": format!("v{i}"), "userId": "u", "timestamp": at,
                              "messageId": message_id(), "properties": {"r": v}})
        })
        .collect();
    for s in [&click, &duck] {
        assert_eq!(s.post("/v1/batch", &json!({ "batch": batch })).await.status(), 200);
        for (i, value) in values.iter().enumerate() {
            for op in ["eq", "lte", "gte"] {
                let query = json!({"series": [{"event": format!("v{i}"),
                    "filters": [{"field": "properties.r", "op": op, "value": value}]}],
                    "date_from": "2026-03-01T00:00:00Z", "date_to": "2026-03-02T00:00:00Z"});
                let (status, answer) = s.insight("trend", &query).await;
                assert_eq!((status, &answer["series"][0]["aggregate"]), (200, &json!(1)), "{value} {op}: {answer}");
            }
        }
        // As many filters of as many values as a query may have: past
        // ClickHouse's default limit on a statement's parts, answered all
        // the same.
        let many: Vec<f64> = (0..1000).map(|i| values[0] + f64::from(i)).collect();
        let filter = json!({"field": "properties.r", "op": "eq", "value": many});
        let query = json!({"series": [{"event": "v0", "filters": vec![filter; 50]}],
            "date_from": "2026-03-01T00:00:00Z", "date_to": "2026-03-02T00:00:00Z"});
        let (status, answer) = s.insight("trend", &query).await;
        assert_eq!((status, &answer["series"][0]["aggregate"]), (200, &json!(1)), "{answer}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn collectors_started_together_on_an_empty_database_all_start() {
    // Databases made by this build, and one made before its schema table
    // was a MergeTree (a TinyLog, which takes one writer at a time).
    for old_schema_table in [false, false, false, true] {
        let database = fresh_database();
        if old_schema_table {
            ch::query(&ch::shared(), &format!("CREATE DATABASE {database}")).await;
            let table = format!(
                "CREATE TABLE {database}.leanloop_schema (version UInt32, applied_at DateTime) ENGINE = TinyLog"
            );
            ch::query(&ch::shared(), &table).await;
        }
        let url = store_url(&ch::shared(), &database);
        let dirs: Vec<tempfile::TempDir> = (0..6).map(|_| tempfile::tempdir().unwrap()).collect();
        let starts = dirs.iter().map(|dir| {
            let config = leanloop::Config::for_tests(dir.path());
            let config = leanloop::Config { clickhouse: Some(ClickHouseOptions::new(url.clone())), ..config };
            leanloop::App::build(config, leanloop::Role::Collector)
        });
        for started in futures::future::join_all(starts).await {
            if let Err(err) = started {
                panic!("a collector did not start: {err:#}");
            }
        }
        let steps = ch::query(&ch::shared(), &format!("SELECT max(version) FROM {database}.leanloop_schema")).await;
        assert_eq!(steps.trim(), "2", "{database}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_question_whose_asker_leaves_is_killed_on_the_server() {
    use leanloop_store::asker::Asker;
    use leanloop_store::clickhouse::ClickHouseStore;
    use leanloop_store::{ColumnKind, EventStore, Select, StoreError};
    use std::sync::Arc;
    let url = store_url(&ch::shared(), &fresh_database());
    let store = tokio::task::spawn_blocking(move || ClickHouseStore::open(&ClickHouseOptions::new(url)).unwrap())
        .await
        .unwrap();
    let store = Arc::new(store);
    // Hours of work; the marker finds it among the server's queries.
    let marker = format!("m{}", uuid::Uuid::new_v4().simple());
    let running = format!(
        "SELECT count() FROM system.processes WHERE query LIKE '%{marker}%' AND query NOT LIKE '%system.processes%'"
    );
    let endless = Select {
        sql: format!("SELECT count() FROM numbers(1000000000000) WHERE sipHash64(number) % 7 = 0 AND '{marker}' != ''"),
        params: vec![],
        columns: vec![ColumnKind::Int],
    };
    let asker = Asker::default();
    let asking = tokio::task::spawn_blocking({
        let (store, asker) = (store.clone(), asker.clone());
        move || asker.answer(|| store.select(&endless))
    });
    eventually_within("the question to run on the server", Duration::from_secs(30), || async {
        (ch::query(&ch::shared(), &running).await.trim() == "1").then_some(())
    })
    .await;
    assert!(asker.reading());
    asker.leave();
    let answer = asking.await.unwrap();
    assert!(matches!(answer, Err(StoreError::Abandoned)), "{answer:?}");
    eventually_within("the abandoned query to be killed", Duration::from_secs(30), || async {
        (ch::query(&ch::shared(), &running).await.trim() == "0").then_some(())
    })
    .await;
    // The next question, and a read outside any, are answered.
    let next = tokio::task::spawn_blocking(move || {
        let answer = Asker::default().answer(|| {
            store.select(&Select { sql: "SELECT 42".into(), params: vec![], columns: vec![ColumnKind::Int] })
        });
        (answer, store.count(&leanloop_store::EventFilter::project(1)))
    });
    let (answer, count) = next.await.unwrap();
    assert_eq!((answer.unwrap()[0][0].int(), count.unwrap()), (42, 0));
}

/// Two writers (two collectors, say) linking ids of one chain at the same
/// moment each look the links up before the other's is stored: one links
/// `anon → user` while the other links `user → account`, or they link two
/// ids each way. Once both writes return, every id of a chain names the
/// chain's end, and two ids linked each way are one person.
#[tokio::test(flavor = "multi_thread")]
async fn links_made_at_the_same_moment_by_two_writers_end_as_one_person() {
    use leanloop_store::EventStore;
    const PEOPLE: usize = 60;
    // Each writer's links, written one at a time, both writers in step.
    let chain = |i: usize| [(format!("anon-{i}"), format!("user-{i}")), (format!("user-{i}"), format!("acct-{i}"))];
    let each_way = |i: usize| [(format!("x-{i}"), format!("y-{i}")), (format!("y-{i}"), format!("x-{i}"))];
    let [one, _] = in_step(2 * PEOPLE, move |round, side| {
        let pair = if round % 2 == 0 { chain(round / 2) } else { each_way(round / 2) };
        let (from, to) = pair[side].clone();
        link(&from, &to)
    })
    .await;
    let split = tokio::task::spawn_blocking(move || {
        let of = |id: &str| one.identity(1, id).unwrap();
        let mut split = Vec::new();
        for i in 0..PEOPLE {
            let (anon, user, acct) = (format!("anon-{i}"), format!("user-{i}"), format!("acct-{i}"));
            let chain = [of(&anon), of(&user), of(&acct)];
            if chain != [Some(acct.clone()), Some(acct.clone()), None] {
                split.push(format!("{anon} → {:?}, {user} → {:?}, {acct} → {:?}", chain[0], chain[1], chain[2]));
            }
            let (x, y) = (format!("x-{i}"), format!("y-{i}"));
            let (to_x, to_y) = (of(&x), of(&y));
            let one_person = (to_x.as_deref() == Some(y.as_str()) && to_y.is_none())
                || (to_y.as_deref() == Some(x.as_str()) && to_x.is_none());
            if !one_person {
                split.push(format!("{x} → {to_x:?}, {y} → {to_y:?}"));
            }
        }
        split
    });
    let split = split.await.unwrap();
    assert!(split.is_empty(), "{} of {} people split: {split:#?}", split.len(), 2 * PEOPLE);
}

/// A browser's identify (`anon → user`, with traits) and a server's alias
/// (`user → account`) written at the same moment by two writers: each
/// looked the other's id up before the other's rows were stored. The
/// traits still reach the account, as on DuckDB, whichever wrote last.
#[tokio::test(flavor = "multi_thread")]
async fn traits_given_to_an_id_linked_at_the_same_moment_reach_its_user() {
    use leanloop_store::EventStore;
    const PEOPLE: usize = 30;
    let [one, _] = in_step(PEOPLE, |i, side| match side {
        0 => leanloop_core::UserUpdate {
            traits: json!({"plan": "pro", "i": i}).to_string(),
            ..link(&format!("anon-{i}"), &format!("user-{i}"))
        },
        _ => link(&format!("user-{i}"), &format!("acct-{i}")),
    })
    .await;
    let missed = tokio::task::spawn_blocking(move || {
        (0..PEOPLE)
            .filter_map(|i| {
                let account = one.user(1, &format!("acct-{i}")).unwrap().map(|u| u.traits);
                let linked = one.identity(1, &format!("user-{i}")).unwrap();
                let whole = account.as_ref().is_some_and(|t| t["plan"] == "pro" && t["i"] == i);
                (!whole || linked.as_deref() != Some(format!("acct-{i}").as_str()))
                    .then(|| format!("acct-{i}: {account:?}, user-{i} → {linked:?}"))
            })
            .collect::<Vec<_>>()
    });
    let missed = missed.await.unwrap();
    assert!(missed.is_empty(), "{} of {PEOPLE} people missed traits: {missed:#?}", missed.len());
}

/// Two writers (two stores, as two collectors) over a fresh database, each
/// writing `update(round, side)` once a round, both rounds' writes started
/// together; the two stores, once every round is written.
async fn in_step(
    rounds: usize,
    update: impl Fn(usize, usize) -> leanloop_core::UserUpdate + Send + Sync + 'static,
) -> [std::sync::Arc<leanloop_store::clickhouse::ClickHouseStore>; 2] {
    use leanloop_store::clickhouse::ClickHouseStore;
    use leanloop_store::EventStore;
    use std::sync::{Arc, Barrier};
    let url = store_url(&ch::shared(), &fresh_database());
    let update = Arc::new(update);
    let written = tokio::task::spawn_blocking(move || {
        let open = || Arc::new(ClickHouseStore::open(&ClickHouseOptions::new(url.clone())).unwrap());
        let stores = [open(), open()];
        let together = Arc::new(Barrier::new(2));
        let writers: Vec<_> = (0..2)
            .map(|side| {
                let (store, together, update) = (stores[side].clone(), together.clone(), update.clone());
                std::thread::spawn(move || {
                    for round in 0..rounds {
                        let written = update(round, side);
                        together.wait();
                        store.write(&[], &[written]).unwrap();
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.join().unwrap();
        }
        stores
    });
    written.await.unwrap()
}

/// A ClickHouse store over a database of its own, which has stored `from`
/// identified as `to`; and the database's name.
async fn store_linking(from: &'static str, to: &'static str) -> (String, leanloop_store::clickhouse::ClickHouseStore) {
    use leanloop_store::clickhouse::ClickHouseStore;
    use leanloop_store::EventStore;
    let database = fresh_database();
    let url = store_url(&ch::shared(), &database);
    let store = tokio::task::spawn_blocking(move || {
        let store = ClickHouseStore::open(&ClickHouseOptions::new(url)).unwrap();
        store.write(&[], &[link(from, to)]).unwrap();
        store
    });
    (database, store.await.unwrap())
}

/// `from` identified as `to`, in project 1.
fn link(from: &str, to: &str) -> leanloop_core::UserUpdate {
    leanloop_core::UserUpdate {
        project_id: 1,
        user_id: to.into(),
        anonymous_id: Some(from.into()),
        traits: "{}".into(),
        traits_once: "{}".into(),
        seen_at_ms: chrono::Utc::now().timestamp_millis(),
    }
}

/// A write whose links were stored but not yet set right (its process
/// killed between the two) comes again, replayed from the log, with its
/// links already stored: the chains through them are still set right.
#[tokio::test(flavor = "multi_thread")]
async fn a_write_stopped_between_its_links_and_their_repair_repairs_when_it_comes_again() {
    use leanloop_store::EventStore;
    let (database, store) = store_linking("anon", "user").await;
    // The first try of `user → account`: its link row stored, no repair.
    let now = chrono::Utc::now().timestamp_millis() + 1;
    let row = format!("INSERT INTO {database}.identities (project_id, anonymous_id, user_id, linked_at_ms) VALUES (1, 'user', 'account', {now})");
    ch::query(&ch::shared(), &row).await;
    let anon = tokio::task::spawn_blocking(move || {
        store.write_replayed(&[], &[link("user", "account")]).unwrap();
        (store.identity(1, "anon").unwrap(), store.identity(1, "user").unwrap())
    });
    assert_eq!(anon.await.unwrap(), (Some("account".to_owned()), Some("account".to_owned())));
}

/// An id whose link a repair undid (linked to itself, half of two ids
/// linked each way at once) is linked to no one, so a later link of it is
/// made, as DuckDB makes it, and the ids linked to it move along.
#[tokio::test(flavor = "multi_thread")]
async fn an_id_whose_loop_was_undone_is_linked_again_later_as_on_duckdb() {
    use leanloop_store::EventStore;
    let (database, store) = store_linking("x", "y").await;
    // `y → x` was written at the same moment by another writer, and undone.
    let now = chrono::Utc::now().timestamp_millis() + 1;
    let rows = format!(
        "INSERT INTO {database}.identities (project_id, anonymous_id, user_id, linked_at_ms) VALUES \
         (1, 'y', 'x', {now}), (1, 'y', 'y', {})",
        now - 1
    );
    ch::query(&ch::shared(), &rows).await;
    let linked = tokio::task::spawn_blocking(move || {
        assert_eq!(store.identity(1, "y").unwrap(), None, "undone, y is linked to no one");
        store.write(&[], &[link("y", "z")]).unwrap();
        // Sent again, it is the same link.
        store.write(&[], &[link("y", "z")]).unwrap();
        (store.identity(1, "x").unwrap(), store.identity(1, "y").unwrap())
    });
    assert_eq!(linked.await.unwrap(), (Some("z".to_owned()), Some("z".to_owned())));
}

/// An erasure waits for its own deletes, not for a mutation of another
/// table that fails on every try and so never finishes.
#[tokio::test(flavor = "multi_thread")]
async fn an_erasure_waits_for_its_own_deletes_not_a_stuck_mutation_beside_them() {
    use leanloop_store::EventStore;
    let (database, store) = store_linking("anon", "ann").await;
    for statement in [
        format!("CREATE TABLE {database}.scratch (x String) ENGINE = MergeTree ORDER BY x"),
        format!("INSERT INTO {database}.scratch VALUES ('a')"),
        format!("ALTER TABLE {database}.scratch DELETE WHERE throwIf(x != '') = 0"),
    ] {
        ch::query(&ch::shared(), &statement).await;
    }
    let erased = tokio::task::spawn_blocking(move || {
        (store.delete_person(1, "ann", std::time::Instant::now() + Duration::from_secs(60)), store.identity(1, "anon"))
    });
    let (erased, anon) = erased.await.unwrap();
    ch::query(&ch::shared(), &format!("DROP TABLE {database}.scratch")).await;
    assert!(erased.is_ok(), "{erased:?}");
    assert_eq!(anon.unwrap(), None, "the person's links are gone");
}

/// An erasure whose deletes cannot finish within its wait, two thirds of
/// the request deadline (merges, which run mutations, are stopped on the
/// events table), answers 202 with `"finished": false`; once they run,
/// the person is gone.
#[tokio::test(flavor = "multi_thread")]
async fn an_erasure_that_outlasts_its_wait_answers_202_and_its_deletes_go_on() {
    let (s, database) = on_clickhouse_answering_within(Duration::from_secs(6)).await;
    let batch = json!({"batch": [
        {"type": "track", "event": "seen", "userId": "gone", "messageId": message_id()},
        {"type": "track", "event": "seen", "userId": "stays", "messageId": message_id()}
    ]});
    assert_eq!(s.post("/v1/batch", &batch).await.status(), 200);
    assert_eq!(s.count(&[("name", "seen")]).await, 2);
    ch::query(&ch::shared(), &format!("SYSTEM STOP MERGES {database}.events")).await;
    let url = s.url(&format!("/api/v1/projects/{}/people/gone", s.project.id));
    let asked = std::time::Instant::now();
    let erased = s.client.delete(url).bearer_auth(&s.project.read_key).send().await.unwrap();
    let took = asked.elapsed();
    ch::query(&ch::shared(), &format!("SYSTEM START MERGES {database}.events")).await;
    assert_eq!(erased.status(), 202);
    assert!(took < Duration::from_secs(6), "answered within the request deadline, not at it: {took:?}");
    let body: Value = erased.json().await.unwrap();
    assert_eq!((&body["deleted_events"], &body["finished"]), (&json!(1), &json!(false)), "{body}");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    eventually_within("the erasure's deletes to finish", Duration::from_secs(60), || async {
        (s.count(&[("name", "seen")]).await == 1).then_some(())
    })
    .await;
    assert_eq!(s.count(&[("user", "stays")]).await, 1);
}

/// Erasures waiting for their deletes (here for up to 20 s, two thirds of
/// the request deadline) hold back no question, however many there are;
/// their deletes go on after their clients left.
#[tokio::test(flavor = "multi_thread")]
async fn erasures_awaiting_their_deletes_hold_back_no_question() {
    let (s, database) = on_clickhouse_answering_within(Duration::from_secs(30)).await;
    let people: Vec<String> = (0..leanloop::api::MAX_QUESTIONS).map(|n| format!("left-{n}")).collect();
    let events: Vec<Value> = people
        .iter()
        .map(|user| json!({"type": "track", "event": "left", "userId": user, "messageId": message_id()}))
        .collect();
    assert_eq!(s.post("/v1/batch", &json!({"batch": events})).await.status(), 200);
    assert_eq!(s.count(&[("name", "left")]).await, people.len() as u64);
    ch::query(&ch::shared(), &format!("SYSTEM STOP MERGES {database}.events")).await;
    let impatient = reqwest::Client::builder().timeout(Duration::from_secs(1)).build().unwrap();
    let asked = people.iter().map(|user| {
        let url = s.url(&format!("/api/v1/projects/{}/people/{user}", s.project.id));
        impatient.delete(url).bearer_auth(&s.project.read_key).send()
    });
    for left in futures::future::join_all(asked).await {
        assert!(left.is_err_and(|e| e.is_timeout()), "each client leaves before its answer");
    }
    // Their waits would end 20 s after they were asked (two thirds of 30).
    let counted = std::time::Instant::now();
    assert_eq!(s.count(&[("name", "left")]).await, people.len() as u64, "not deleted while merges stop");
    let took = counted.elapsed();
    ch::query(&ch::shared(), &format!("SYSTEM START MERGES {database}.events")).await;
    assert!(took < Duration::from_secs(10), "a question waited {took:?} for the erasures");
    eventually_within("the erasures' deletes to finish", Duration::from_secs(60), || async {
        (s.count(&[("name", "left")]).await == 0).then_some(())
    })
    .await;
}

/// Every sharding key of the cluster DDL is computed by the server the
/// tests run (18.16 hashes no UUID value; a key it refuses makes every
/// insert into the Distributed table fail).
#[tokio::test(flavor = "multi_thread")]
async fn the_cluster_ddl_shards_rows_this_server_can_hash() {
    use leanloop_store::clickhouse::{cluster_ddl, ServerVersion};
    let version = ch::query(&ch::shared(), "SELECT version()").await;
    let version = ServerVersion::parse(&version).expect("a server version");
    let keys: Vec<String> = cluster_ddl("prod", "leanloop", version, None)
        .iter()
        .filter_map(|statement| statement.split_once("ENGINE = Distributed(")?.1.strip_suffix(')').map(str::to_owned))
        .map(|args| args.splitn(4, ", ").nth(3).expect("a sharding key").to_owned())
        .collect();
    assert_eq!(keys.len(), 4, "{keys:?}");
    let row = "SELECT toInt64(1) AS project_id, generateUUIDv4() AS uuid, 'u' AS user_id, 'a' AS anonymous_id";
    for key in keys {
        let hashed = ch::query(&ch::shared(), &format!("SELECT {key} FROM ({row}) FORMAT TSV")).await;
        assert!(hashed.trim().parse::<u64>().is_ok(), "{key}: {hashed}");
    }
}
