//! `POST /v1/feedback`: scores, messages, and refusals that name the field.

use leanloop_tests::TestServer;
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn feedback_is_stored_as_an_event() {
    let s = TestServer::start().await;
    let r = s
        .post("/v1/feedback", &json!({"userId": "u1", "score": 9, "message": "Love the new export", "category": "praise",
                                       "page": "/reports", "release": "2.0.0", "messageId": "fb-1", "timestamp": "2024-06-01T08:00:00Z"}))
        .await;
    assert_eq!(r.status(), 200);
    // Score only, message only; the write key may ride in the body.
    s.post("/v1/feedback", &json!({"anonymousId": "a2", "score": 3})).await;
    let r = s
        .client
        .post(s.url("/v1/feedback"))
        .json(&json!({"writeKey": s.project.write_key, "anonymousId": "a3", "message": "Where is dark mode?"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // A retry of the same message id is not counted twice.
    s.post("/v1/feedback", &json!({"userId": "u1", "score": 9, "messageId": "fb-1"})).await;

    assert_eq!(s.count(&[("name", "$feedback")]).await, 3);
    let e = s.events(&[("user", "u1")]).await.remove(0);
    assert_eq!(e["type"], "feedback");
    assert_eq!(e["release"], "2.0.0");
    assert_eq!(e["path"], "/reports");
    assert_eq!(e["properties"], json!({"score": 9, "message": "Love the new export", "category": "praise"}));
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_feedback_is_refused_naming_the_field() {
    let s = TestServer::start().await;
    let cases = [
        (json!({"userId": "u", "score": 11}), "score"),
        (json!({"userId": "u", "score": 4.5}), "score"),
        (json!({"userId": "u", "score": "ten"}), "score"),
        (json!({"userId": "u"}), "score"),
        (json!({"score": 5}), "userId"),
        (json!({"userId": "u", "message": ["no"]}), "message"),
        (json!({"userId": "u", "score": 5, "timestamp": "later"}), "timestamp"),
        (json!({"userId": "u", "score": 5, "scroe": 5}), "scroe"),
    ];
    for (body, field) in cases {
        let r = s.post("/v1/feedback", &body).await;
        assert_eq!(r.status(), 400, "{body}");
        let answer: serde_json::Value = r.json().await.unwrap();
        assert_eq!(answer["error"]["field"], field, "{body}: {answer}");
        assert!(answer["error"]["message"].as_str().unwrap().len() > 5);
    }
    assert_eq!(s.count(&[]).await, 0);
}
