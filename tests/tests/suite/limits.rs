//! Bad input: every refusal is a clear 4xx naming what is wrong, never a 5xx
//! or a panic, and good events beside bad ones are kept.

use base64::Engine;
use flate2::write::GzEncoder;
use leanloop_tests::TestServer;
use serde_json::{json, Value};
use std::io::Write;

async fn error_of(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let body = r.json::<Value>().await.expect("errors are JSON");
    (status, body)
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_are_checked() {
    let s = TestServer::start().await;
    let track = |key: Option<&str>| {
        let mut request = s.client.post(s.url("/v1/track")).json(&json!({"userId": "u", "event": "e"}));
        if let Some(key) = key {
            request = request.basic_auth(key, Some(""));
        }
        async move { error_of(request.send().await.unwrap()).await }
    };
    let message = |body: &Value| body["error"]["message"].as_str().unwrap().to_owned();

    let (status, body) = track(None).await;
    assert_eq!(status, 401);
    assert!(message(&body).contains("write key"), "{body}");
    assert_eq!(track(Some("llw_not-a-real-key")).await.0, 401);
    let (status, body) = track(Some(&s.project.read_key)).await;
    assert_eq!(status, 401);
    assert!(message(&body).contains("read key"), "{body}");

    let r = s.client.post(s.url("/batch/")).json(&json!({"api_key": "phc_unknown", "batch": []})).send().await.unwrap();
    assert_eq!(error_of(r).await.0, 401);
    assert_eq!(s.count(&[]).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_bodies_and_events_name_the_field() {
    let s = TestServer::start().await;
    let auth = |rb: reqwest::RequestBuilder| rb.basic_auth(&s.project.write_key, Some(""));
    let r = auth(s.client.post(s.url("/v1/batch"))).body("{not json").send().await.unwrap();
    let (status, body) = error_of(r).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["field"], "body");

    let r = s.post("/v1/track", &json!({"userId": "u"})).await;
    let (status, body) = error_of(r).await;
    assert_eq!((status, body["error"]["field"].as_str()), (400, Some("event")));

    let r = s.post("/v1/track", &json!({"userId": "u", "event": "e", "properties": "nope"})).await;
    assert_eq!(error_of(r).await.1["error"]["field"], "properties");

    let r = s.post("/v1/batch", &json!({"batch": "nope"})).await;
    assert_eq!(error_of(r).await.1["error"]["field"], "batch");

    let r = s.post("/v1/batch", &json!({"batch": [{"type": "warp", "userId": "u"}]})).await;
    let (status, body) = error_of(r).await;
    assert_eq!(status, 400);
    assert_eq!(body["rejected"][0]["field"], "type");
    // At the top too, where Segment's clients read why they should not retry.
    assert_eq!((body["code"].as_str(), body["message"].is_string()), (Some("bad_request"), true), "{body}");

    let r = auth(s.client.post(s.url("/v1/track"))).header("content-encoding", "br").body("{}").send().await.unwrap();
    assert_eq!(error_of(r).await.1["error"]["field"], "Content-Encoding");
}

#[tokio::test(flavor = "multi_thread")]
async fn one_bad_event_does_not_reject_the_good_ones() {
    let s = TestServer::start().await;
    let fat = "x".repeat(40 * 1024);
    let batch = json!({"batch": [
        {"type": "track", "userId": "u", "event": "good"},
        {"type": "track", "userId": "u"},
        {"type": "track", "userId": "u", "event": "fat", "properties": {"blob": fat}},
        {"type": "track", "event": "nobody"},
        {"type": "track", "userId": "u", "event": "good"},
        {"type": "track", "anonymousId": "a".repeat(1025), "event": "long id"}
    ]});
    let r = s.post("/v1/batch", &batch).await;
    assert_eq!(r.status(), 200);
    let ack: Value = r.json().await.unwrap();
    assert_eq!(ack["accepted"], 2);
    let rejected: Vec<(u64, &str)> = ack["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["index"].as_u64().unwrap(), r["field"].as_str().unwrap()))
        .collect();
    assert_eq!(rejected, [(1, "event"), (2, "event"), (3, "userId"), (5, "anonymousId")]);
    assert_eq!(s.count(&[]).await, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn size_limits() {
    let s = TestServer::start().await;
    // One event over 32 KB.
    let r =
        s.post("/v1/track", &json!({"userId": "u", "event": "e", "properties": {"b": "x".repeat(33 * 1024)}})).await;
    let (status, body) = error_of(r).await;
    assert_eq!(status, 413);
    assert_eq!(body["error"]["field"], "event");

    // More than 1,000 events.
    let batch: Vec<Value> = (0..1001).map(|_| json!({"type": "track", "userId": "u", "event": "e"})).collect();
    let r = s.post("/v1/batch", &json!({"batch": batch})).await;
    let (status, body) = error_of(r).await;
    assert_eq!(status, 413);
    assert_eq!(body["error"]["field"], "batch");

    // A body over 5 MB, declared: refused from the headers, before any of it is sent.
    let auth =
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{}:", s.project.write_key)));
    let head = format!(
        "POST /v1/batch HTTP/1.1\r\nHost: t\r\nAuthorization: {auth}\r\nContent-Length: {}\r\n\r\n",
        6 * 1024 * 1024
    );
    assert!(raw_exchange(&s, &head, &[]).await.starts_with("HTTP/1.1 413"));
    // ...and streamed without a length: cut off one byte past the limit.
    let head =
        format!("POST /v1/batch HTTP/1.1\r\nHost: t\r\nAuthorization: {auth}\r\nTransfer-Encoding: chunked\r\n\r\n");
    let mut chunks: Vec<Vec<u8>> = (0..80).map(|_| chunk(&[b' '; 64 * 1024])).collect();
    chunks.push(chunk(b" "));
    assert!(raw_exchange(&s, &head, &chunks).await.starts_with("HTTP/1.1 413"));

    // A gzip bomb: 200 MB of zeros in about 200 KB, refused without inflating it.
    let mut enc = GzEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![0u8; 1024 * 1024];
    for _ in 0..200 {
        enc.write_all(&zeros).unwrap();
    }
    let bomb = enc.finish().unwrap();
    assert!(bomb.len() < 1024 * 1024);
    let r = s.client.post(s.url("/batch/")).header("content-encoding", "gzip").body(bomb).send().await.unwrap();
    let (status, body) = error_of(r).await;
    assert_eq!(status, 413);
    assert!(body["error"]["message"].as_str().unwrap().contains("decompressed"), "{body}");
    assert_eq!(s.count(&[]).await, 0);
}

/// One HTTP/1.1 chunk.
fn chunk(data: &[u8]) -> Vec<u8> {
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    out
}

/// Writes a request head and body pieces on a raw connection, then returns
/// the response head. Used where a client library would abort its upload
/// when the server answers before reading the whole body.
async fn raw_exchange(s: &TestServer, head: &str, body: &[Vec<u8>]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = s.base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    for piece in body {
        stream.write_all(piece).await.unwrap();
    }
    let mut answer = vec![0u8; 1024];
    let n = tokio::time::timeout(leanloop_tests::DEADLINE, stream.read(&mut answer)).await.unwrap().unwrap();
    String::from_utf8_lossy(&answer[..n]).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_bodies_never_cause_a_server_error() {
    let s = TestServer::start().await;
    let paths = [
        "/v1/track",
        "/v1/page",
        "/v1/identify",
        "/v1/batch",
        "/v1/feedback",
        "/capture/",
        "/batch/",
        "/e/",
        "/i/v0/e/",
    ];
    let bodies: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"null".to_vec(),
        b"[]".to_vec(),
        b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[".to_vec(),
        b"{\"batch\":[null,1,\"x\",{}]}".to_vec(),
        b"{\"userId\":\"\\ud800\",\"event\":\"e\"}".to_vec(),
        b"{\"userId\":1e999,\"event\":\"e\"}".to_vec(),
        b"{\"userId\":\"u\",\"event\":\"e\",\"timestamp\":-1e300}".to_vec(),
        b"{\"userId\":\"u\",\"event\":\"e\",\"context\":{\"page\":7,\"app\":[],\"ip\":\"999.1.1.1\"}}".to_vec(),
        b"{\"event\":\"e\",\"distinct_id\":{},\"properties\":{\"$set\":5}}".to_vec(),
        vec![0xff, 0xfe, 0x00, 0x7b],
        "{\"userId\":\"ü\",\"event\":\"\u{202e}\",\"properties\":{\"\":\"\"}}".as_bytes().to_vec(),
    ];
    for path in paths {
        for body in &bodies {
            let r = s
                .client
                .post(s.url(path))
                .basic_auth(&s.project.write_key, Some(""))
                .body(body.clone())
                .send()
                .await
                .unwrap();
            let status = r.status();
            assert!(status.as_u16() < 500, "{path} answered {status} to {:?}", String::from_utf8_lossy(body));
            if !status.is_success() {
                let answer: Value = r.json().await.expect("a JSON error");
                assert!(answer["error"]["message"].is_string(), "{path}: {answer}");
            }
        }
    }
    // Random bytes, gzip-flagged and not.
    let mut seed = 0x2545f4914f6cdd1du64;
    for i in 0..200 {
        let len = (i * 37) % 3000;
        let body: Vec<u8> = (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        let mut req = s.client.post(s.url(paths[i % paths.len()])).basic_auth(&s.project.write_key, Some(""));
        if i % 3 == 0 {
            req = req.header("content-encoding", "gzip");
        }
        let status = req.body(body).send().await.unwrap().status();
        assert!(status.as_u16() < 500, "random body {i} answered {status}");
    }
    assert_eq!(s.client.get(s.url("/healthz")).send().await.unwrap().status(), 200);
}

/// Sends `request`, expecting a JSON refusal: its status and the field named.
async fn refusal(request: reqwest::RequestBuilder) -> (u16, Option<String>) {
    let (status, body) = error_of(request.send().await.unwrap()).await;
    assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    (status, body["error"]["field"].as_str().map(str::to_owned))
}

fn named(status: u16, field: &str) -> (u16, Option<String>) {
    (status, Some(field.to_owned()))
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_whole_requests_name_the_field() {
    let s = TestServer::start().await;
    let ingest =
        |path: &str, body: String| s.client.post(s.url(path)).basic_auth(&s.project.write_key, Some("")).body(body);
    let read = |path: String| s.client.get(s.url(&path)).bearer_auth(&s.project.read_key);
    // Every event refused: the error names the (first) refused field.
    let capture = json!({"api_key": s.project.write_key, "event": "x", "distinct_id": "d", "properties": 1});
    assert_eq!(refusal(ingest("/capture/", capture.to_string())).await, named(400, "properties"));
    // Nesting the store could not read back is refused, not acknowledged.
    let deep = format!("{}1{}", "[".repeat(130), "]".repeat(130));
    let text = format!(r#"{{"userId":"u","event":"deep","properties":{{"plan":"pro","a":{deep}}}}}"#);
    assert_eq!(refusal(ingest("/v1/track", text)).await, named(400, "properties"));
    // A second event after the first is refused, not dropped.
    let two = "{\"userId\":\"u\",\"event\":\"a\"}\n{\"userId\":\"u\",\"event\":\"b\"}";
    assert_eq!(refusal(ingest("/v1/track", two.to_owned())).await, named(400, "body"));
    // `null` where a query expects one of a set of names is that field's fault.
    let trend = s
        .client
        .post(s.url(&format!("/api/v1/projects/{}/insights/trend", s.project.id)))
        .bearer_auth(&s.project.read_key)
        .json(&json!({"series": [{"event": "e"}], "interval": null}));
    assert_eq!(refusal(trend).await, named(400, "interval"));
    // A query-string parameter of the wrong kind is named too.
    let events = read(format!("/api/v1/projects/{}/events?limit=x", s.project.id));
    assert_eq!(refusal(events).await, named(400, "limit"));
    // ... and so is one that does not apply, and one the route does not know.
    let count = read(format!("/api/v1/projects/{}/events/count?limit=5", s.project.id));
    assert_eq!(refusal(count).await, named(400, "limit"));
    let count = read(format!("/api/v1/projects/{}/events/count?form=2024-01-01T00:00:00Z", s.project.id));
    assert_eq!(refusal(count).await, named(400, "form"));
    // The scheme's name is read in any case.
    let shouted = s
        .client
        .get(s.url(&format!("/api/v1/projects/{}/events/count", s.project.id)))
        .header("authorization", format!("BEARER {}", s.project.read_key));
    assert_eq!(shouted.send().await.unwrap().status(), 200);
    // A body declared over the API's limit is refused from the head, not
    // waited for; one cut short names the body.
    let path = format!("/api/v1/projects/{}/insights/trend", s.project.id);
    let auth = format!("authorization: Bearer {}\r\n", s.project.read_key);
    let head = format!("POST {path} HTTP/1.1\r\nhost: x\r\n{auth}content-length: 6000000\r\n\r\n");
    let answer = raw_exchange(&s, &head, &[b"{".to_vec()]).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains(r#""field":"body""#), "{answer}");
    let head = format!("POST {path} HTTP/1.1\r\nhost: x\r\n{auth}transfer-encoding: chunked\r\n\r\n");
    let answer = raw_exchange(&s, &head, &[b"zz\r\n{}\r\n".to_vec()]).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains(r#""field":"body""#), "{answer}");
    assert_eq!(s.count(&[]).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_routes_and_methods_are_json_errors() {
    let s = TestServer::start().await;
    let read = |path: String| s.client.get(s.url(&path)).bearer_auth(&s.project.read_key);
    let r = s.client.get(s.url("/v1/track")).send().await.unwrap();
    assert_eq!(r.headers()["allow"], "POST");
    let (status, body) = error_of(r).await;
    assert_eq!((status, body["error"]["code"].as_str()), (405, Some("method_not_allowed")), "{body}");
    let r = s.client.post(s.url("/api/v1/projects/1/insights/nope")).send().await.unwrap();
    assert_eq!(r.headers().get("connection"), None, "no body was left unread");
    let (status, body) = error_of(r).await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("not_found")), "{body}");
    // Refused from the head, a body the server will not read closes the
    // connection, and the answer says so.
    let body = vec![b' '; 1 << 20];
    let r = s.client.post(s.url("/v1/nope")).body(body.clone()).send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.headers().get("connection").map(|v| v.as_bytes())), (404, Some(&b"close"[..])));
    let r = s.client.post(s.url("/v1/batch")).basic_auth("not-a-key", Some("")).body(body).send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.headers().get("connection").map(|v| v.as_bytes())), (401, Some(&b"close"[..])));
    // A query body over the API's limit, refused before any handler runs.
    let huge = format!(r#"{{"series":[{{"event":"{}"}}]}}"#, "e".repeat(3 << 20));
    let trend = s
        .client
        .post(s.url(&format!("/api/v1/projects/{}/insights/trend", s.project.id)))
        .bearer_auth(&s.project.read_key)
        .body(huge);
    let r = trend.send().await.unwrap();
    // The unread rest of the body ends the connection, and the answer says so.
    assert_eq!(r.headers().get("connection").map(|v| v.as_bytes()), Some(&b"close"[..]));
    let (status, body) = error_of(r).await;
    assert_eq!((status, body["error"]["field"].as_str()), (413, Some("body")), "{body}");
    // A path segment that is not UTF-8.
    assert_eq!(refusal(read(format!("/api/v1/projects/{}/people/%ff", s.project.id))).await, named(400, "user_id"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_past_its_deadline_is_told_when_to_retry() {
    let s = TestServer::start_with(|c| c.request_timeout = std::time::Duration::from_secs(1)).await;
    // A body announced at 100 bytes that never comes.
    let head = format!(
        "POST /v1/track HTTP/1.1\r\nhost: x\r\norigin: https://shop.example\r\nauthorization: Basic {}\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n",
        base64::engine::general_purpose::STANDARD.encode(format!("{}:", s.project.write_key))
    );
    let answer = raw_exchange(&s, &head, &[b"{\"userId\":".to_vec()]).await.to_ascii_lowercase();
    assert!(answer.starts_with("http/1.1 503"), "{answer}");
    assert!(answer.contains("retry-after: 5"), "{answer}");
    assert!(answer.contains("request_timeout_secs"), "{answer}");
    // A browser may read it: the SDK backs off by Retry-After.
    assert!(answer.contains("access-control-allow-origin: https://shop.example"), "{answer}");
    assert!(answer.contains("access-control-expose-headers: retry-after"), "{answer}");

    // Headers that never end: the connection is closed, not held open.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(s.base.trim_start_matches("http://")).await.unwrap();
    stream.write_all(b"POST /v1/track HTTP/1.1\r\nhost: x\r\n").await.unwrap();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(leanloop_tests::DEADLINE, stream.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "a connection with unfinished headers was still open after {:?}", leanloop_tests::DEADLINE);

    // Connections that send nothing, one byte, or only the HTTP/2 preface,
    // and one kept alive after an answer, are closed once idle that long.
    let silent: [&[u8]; 3] = [b"", b"P", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"];
    let mut idle = Vec::new();
    for sent in silent {
        let mut stream = tokio::net::TcpStream::connect(s.base.trim_start_matches("http://")).await.unwrap();
        stream.write_all(sent).await.unwrap();
        idle.push((format!("{:?}", String::from_utf8_lossy(sent)), stream));
    }
    let mut kept = tokio::net::TcpStream::connect(s.base.trim_start_matches("http://")).await.unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    let mut answer = [0u8; 12];
    kept.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"HTTP/1.1 200");
    idle.push(("kept alive after an answer".into(), kept));
    for (what, mut stream) in idle {
        let mut rest = Vec::new();
        let read = tokio::time::timeout(leanloop_tests::DEADLINE, stream.read_to_end(&mut rest)).await;
        assert!(read.is_ok(), "a connection that sent {what} was still open after {:?}", leanloop_tests::DEADLINE);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_reader_of_a_large_answer_gets_all_of_it() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = TestServer::start_with(|c| c.request_timeout = std::time::Duration::from_secs(1)).await;
    // About 12 MB of events: more than the sockets' buffers hold.
    for _ in 0..4 {
        let batch: Vec<Value> = (0..100)
            .map(|_| {
                json!({"type": "track", "event": "big", "userId": "u", "messageId": leanloop_tests::message_id(),
                "properties": {"blob": "y".repeat(30_000)}})
            })
            .collect();
        assert_eq!(s.post("/v1/batch", &json!({ "batch": batch })).await.status(), 200);
    }
    s.settle().await;
    let mut stream = tokio::net::TcpStream::connect(s.base.trim_start_matches("http://")).await.unwrap();
    let head = format!(
        "GET /api/v1/projects/{}/events?limit=400 HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\nconnection: close\r\n\r\n",
        s.project.id, s.project.read_key
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    // Read at about 2.5 MB/s: the answer takes several idle timeouts to arrive.
    let mut pace = tokio::time::interval(std::time::Duration::from_millis(25));
    let (mut answer, mut piece) = (Vec::new(), vec![0u8; 64 * 1024]);
    let started = std::time::Instant::now();
    loop {
        pace.tick().await;
        let n = tokio::time::timeout(leanloop_tests::DEADLINE, stream.read(&mut piece)).await.unwrap().unwrap();
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&piece[..n]);
    }
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text.split_once("\r\n\r\n").expect("an answer with a head");
    let length: usize = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length: ").map(|v| v.trim().parse().unwrap()))
        .expect("a content-length");
    assert!(length > 10 << 20, "the answer is {length} bytes");
    assert!(started.elapsed() > std::time::Duration::from_secs(2), "read faster than the timeout");
    assert_eq!(body.len(), length, "the answer was cut off");
}

#[tokio::test(flavor = "multi_thread")]
async fn bodies_held_at_once_stay_within_their_budget() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = TestServer::start_with(|c| {
        c.collector.max_body_bytes = 64 * 1024;
        c.collector.max_bodies_bytes = 128 * 1024;
    })
    .await;
    let event = |name: &str, pad: usize| {
        json!({"type": "track", "userId": "u", "event": name, "messageId": leanloop_tests::message_id(),
               "properties": {"pad": "p".repeat(pad)}})
    };
    // Uploads that declare the whole budget and send nothing (no key yet)
    // hold none of it: every request beside them is taken.
    let mut stalled = Vec::new();
    for _ in 0..2 {
        let head =
            "POST /v1/batch HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 65536\r\n\r\n";
        let mut stream = tokio::net::TcpStream::connect(s.base.trim_start_matches("http://")).await.unwrap();
        stream.write_all(head.as_bytes()).await.unwrap();
        stalled.push(stream);
    }
    for i in 0..20 {
        let r = s.post("/v1/batch", &json!({"batch": [event("beside", 10)]})).await;
        assert_eq!(r.status(), 200, "request {i} beside the stalled uploads");
    }
    drop(stalled);
    // Two slow uploads of 60 KB each, stalled 100 bytes before their end,
    // hold what they sent: about 120 KB of the budget.
    let key = base64::engine::general_purpose::STANDARD.encode(format!("{}:", s.project.write_key));
    let mut slow = Vec::new();
    for _ in 0..2 {
        let body = json!({"batch": [event("slow", 100)]}).to_string();
        let body = format!("{body}{}", " ".repeat(60 * 1024 - body.len()));
        let head = format!(
            "POST /v1/batch HTTP/1.1\r\nhost: x\r\nauthorization: Basic {key}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        let mut stream = tokio::net::TcpStream::connect(s.base.trim_start_matches("http://")).await.unwrap();
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(&body.as_bytes()[..body.len() - 100]).await.unwrap();
        slow.push((stream, body));
    }
    // A refusal closes its connection: each request gets a fresh one.
    let client = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    let post =
        |body: Value| client.post(s.url("/v1/batch")).basic_auth(&s.project.write_key, Some("")).json(&body).send();
    // 10 KB more fit beside one slow upload, not beside both. (Read, this
    // body is refused: its event has no name, so nothing is stored.)
    let probe = json!({"batch": [{"type": "track", "userId": "u", "properties": {"pad": "p".repeat(10_000)}}]});
    let refused = leanloop_tests::eventually("both slow uploads' bytes held", || async {
        let r = post(probe.clone()).await.ok()?;
        (r.status() == 503).then_some(r)
    })
    .await;
    assert_eq!(refused.headers()["retry-after"], "1");
    assert_eq!(refused.headers()["connection"], "close", "the body may be left unread");
    let (_, error) = error_of(refused).await;
    assert!(error["error"]["message"].as_str().unwrap().contains("max_bodies_bytes"), "{error}");
    // Another 48 KB would take the budget past 128 KB: refused, to be retried.
    let big = json!({"batch": [event("big", 24_000), event("big", 24_000)]});
    assert_eq!(post(big.clone()).await.unwrap().status(), 503);
    // A small body still fits beside them.
    assert_eq!(post(json!({"batch": [event("small", 10)]})).await.unwrap().status(), 200);
    // A body of 6 KB whose shared context (1 KB) is copied into 40 events
    // grows past what is left.
    let fan_out = json!({"context": {"page": {"url": format!("https://a.example/{}", "x".repeat(1000))}},
                         "batch": (0..40).map(|_| event("fan", 10)).collect::<Vec<_>>()});
    assert!(fan_out.to_string().len() < 7000);
    let refused = post(fan_out.clone()).await.unwrap();
    assert_eq!(refused.status(), 503);
    let (_, error) = error_of(refused).await;
    assert!(error["error"]["message"].as_str().unwrap().contains("max_bodies_bytes"), "{error}");
    // Once the slow uploads end, their shares are given back.
    for (mut stream, body) in slow {
        stream.write_all(&body.as_bytes()[body.len() - 100..]).await.unwrap();
        let mut answer = [0u8; 12];
        stream.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"HTTP/1.1 200");
    }
    assert_eq!(post(big).await.unwrap().status(), 200);
    assert_eq!(post(fan_out).await.unwrap().status(), 200);
    assert_eq!(s.count(&[]).await, 65);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_context_may_not_fan_out_past_the_body_limit() {
    let s = TestServer::start_with(|c| c.collector.max_body_bytes = 64 * 1024).await;
    let batch = |events: usize| {
        json!({"context": {"page": {"url": format!("https://a.example/{}", "x".repeat(1000))}},
               "batch": (0..events).map(|_| json!({"type": "track", "userId": "u", "event": "fan",
                                                   "messageId": leanloop_tests::message_id()}))
                                   .collect::<Vec<_>>()})
    };
    let post =
        |body: Value| s.client.post(s.url("/v1/batch")).basic_auth(&s.project.write_key, Some("")).json(&body).send();
    // 100 copies of a 1 KB context: over 64 KB, though the body is 9 KB.
    let (status, error) = error_of(post(batch(100)).await.unwrap()).await;
    assert_eq!(status, 413, "{error}");
    assert_eq!(error["error"]["field"], "context", "{error}");
    assert!(error["error"]["message"].as_str().unwrap().contains("copied into each"), "{error}");
    assert_eq!(post(batch(40)).await.unwrap().status(), 200);
    assert_eq!(s.count(&[]).await, 40);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_shuts_its_side_after_the_request_is_answered() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = TestServer::start().await;
    let body = json!({"type": "track", "userId": "u", "event": "half-closed",
                      "messageId": leanloop_tests::message_id()})
    .to_string();
    let key = base64::engine::general_purpose::STANDARD.encode(format!("{}:", s.project.write_key));
    let request = format!(
        "POST /v1/track HTTP/1.1\r\nhost: x\r\nauthorization: Basic {key}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut stream = tokio::net::TcpStream::connect(s.base.trim_start_matches("http://")).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(30), stream.read_to_end(&mut answer))
        .await
        .expect("answered within the deadline")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(s.count(&[("name", "half-closed")]).await, 1);
}
