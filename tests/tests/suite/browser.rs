//! The browser SDK end to end: `/sdk.js` in real headless Chromium, on a page
//! from another origin, sending to a real server; what arrives is read back
//! through the events API.

use fantoccini::Locator;
use leanloop_tests::browser::{Browser, Gate, Mode, Site};
use leanloop_tests::{eventually, TestServer};
use serde_json::{json, Value};

const RELEASE: &str = "3.1.4";

/// The `i` property of each event, sorted: each index once means each event once.
fn indexes(events: &[Value]) -> Vec<u64> {
    let mut seen: Vec<u64> = events.iter().map(|e| e["properties"]["i"].as_u64().expect("an index")).collect();
    seen.sort_unstable();
    seen
}

/// Waits until exactly `n` events named `name` are stored.
async fn stored(s: &TestServer, name: &str, n: u64) {
    eventually(&format!("{n} `{name}` events to be stored"), || async {
        (s.count(&[("name", name)]).await == n).then_some(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn events_carry_the_release_page_session_and_ids() {
    let s = TestServer::start().await;
    let b = Browser::start(Site::of(&s, RELEASE)).await;
    b.open("/app.html").await;
    b.run("leanloop.track('Clicked Buy', {plan: 'pro'})").await;
    b.click("#cart").await;
    assert_eq!(b.flush().await, 0, "the collector took the whole queue");

    let anonymous_id = b.local_storage("ll_aid").await.expect("an anonymous id is kept");
    let session = b.local_storage("ll_ses").await.expect("a session is kept");
    let session_id = session.split('|').next().expect("id|last seen|count");
    let app = b.url("/app.html");

    let view = s.only_event("$pageview").await;
    assert_eq!(view["type"], "page");
    assert_eq!(view["release"], RELEASE);
    assert_eq!(view["url"], app.as_str());
    assert_eq!(view["path"], "/app.html");
    assert_eq!(view["library"], "leanloop-js");
    assert_eq!(view["anonymous_id"], anonymous_id.as_str());
    assert_eq!(view["session_id"], session_id);
    assert_eq!(view["properties"]["title"], "Leanloop test app");

    let buy = s.only_event("Clicked Buy").await;
    assert_eq!(buy["type"], "track");
    assert_eq!(buy["properties"], json!({"plan": "pro"}));
    assert_eq!(buy["release"], RELEASE);
    assert_eq!(buy["path"], "/app.html");
    assert_eq!(buy["anonymous_id"], anonymous_id.as_str());
    assert_eq!(buy["session_id"], session_id);

    let cart = s.only_event("Opened Cart").await;
    assert_eq!(cart["properties"], json!({"items": "2"}), "a data-ll-event click sends its data-ll-* attributes");
    assert_eq!(cart["release"], RELEASE);
    assert_eq!(s.count(&[]).await, 3, "nothing else was sent");
}

#[tokio::test(flavor = "multi_thread")]
async fn single_page_navigation_sends_a_page_view_per_route() {
    let s = TestServer::start().await;
    let b = Browser::start(Site::of(&s, RELEASE)).await;
    b.open("/app.html").await;
    b.click("#pricing").await; // history.pushState
    b.client().back().await.expect("back"); // popstate
    b.click("#faq").await; // hashchange to a hash route
    b.click("#top").await; // hashchange to an anchor: not a page view
    assert_eq!(b.flush().await, 0);

    let views = s.events(&[("name", "$pageview")]).await;
    assert_eq!(views.len(), 4, "load, pushState, back and hash route: {views:#?}");
    let app = b.url("/app.html");
    let at = |url: &str| views.iter().filter(|v| v["url"] == url).collect::<Vec<_>>();
    assert_eq!(at(app.as_str()).len(), 2, "the first load and the way back");
    let pricing = at(b.url("/pricing").as_str());
    assert_eq!(pricing.len(), 1);
    assert_eq!(pricing[0]["path"], "/pricing");
    assert_eq!(pricing[0]["referrer"], app.as_str(), "the previous route is the referrer");
    let faq = at(format!("{app}#/faq").as_str());
    assert_eq!(faq.len(), 1);
    assert_eq!(faq[0]["path"], "/app.html");
    for v in &views {
        assert_eq!(v["release"], RELEASE);
        assert_eq!(v["session_id"], views[0]["session_id"], "one visit, one session");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn uncaught_errors_and_rejections_are_reported_with_the_release() {
    let s = TestServer::start().await;
    let b = Browser::start(Site::of(&s, RELEASE)).await;
    b.open("/app.html").await;
    b.click("#boom").await; // a click handler throws
    b.click("#reject").await; // a click handler leaves a promise rejected

    // The rejection is reported a task after the click, so flush until both are in.
    let errors = eventually("both errors to be stored", || async {
        b.flush().await;
        let errors = s.events(&[("name", "$exception")]).await;
        (errors.len() == 2).then_some(errors)
    })
    .await;
    let of_type =
        |t: &str| errors.iter().find(|e| e["properties"]["type"] == t).cloned().expect("an error of that type");

    let thrown = of_type("Error");
    assert_eq!(thrown["release"], RELEASE);
    assert_eq!(thrown["properties"]["message"], "boom");
    assert_eq!(thrown["properties"]["source"], b.url("/app.html").as_str());
    assert!(thrown["properties"]["line"].as_u64().is_some_and(|l| l > 0), "{thrown:#}");
    assert!(thrown["properties"]["stack"].as_str().is_some_and(|stack| stack.contains("boom")), "{thrown:#}");

    let rejected = of_type("TypeError");
    assert_eq!(rejected["release"], RELEASE);
    assert_eq!(rejected["properties"]["message"], "save failed");
    assert_eq!(rejected["path"], "/app.html");
}

#[tokio::test(flavor = "multi_thread")]
async fn leaving_the_page_delivers_the_tail() {
    let s = TestServer::start().await;
    let b = Browser::start(Site::of(&s, RELEASE)).await;
    // The snippet page flushes only every 60 s: leaving is the only way out.
    b.open("/snippet.html").await;
    b.wait_for_sdk().await;
    b.run("leanloop.track('Left Page', {step: 3})").await;
    assert_eq!(b.queued().await.len(), 2, "the page view and the event are still queued");
    assert_eq!(s.count(&[]).await, 0);

    b.open("/other.html").await;
    stored(&s, "Left Page", 1).await;
    let left = s.only_event("Left Page").await;
    assert_eq!(left["properties"], json!({"step": 3}));
    assert_eq!(left["release"], RELEASE);
    assert_eq!(left["path"], "/snippet.html");
    assert_eq!(s.only_event("$pageview").await["path"], "/snippet.html");
    assert_eq!(s.count(&[("name", "$web_vitals")]).await, 1, "web vitals go out when the page is hidden");
}

#[tokio::test(flavor = "multi_thread")]
async fn offline_then_online_delivers_the_queue_exactly_once() {
    let s = TestServer::start().await;
    let b = Browser::start(Site::of(&s, RELEASE)).await;
    b.open("/app.html").await;
    assert_eq!(b.flush().await, 0);

    b.set_offline(true).await;
    assert_eq!(b.run("return navigator.onLine").await, false);
    b.run("for (let i = 0; i < 5; i++) leanloop.track('Saved Offline', {i})").await;
    assert_eq!(b.flush().await, 5, "offline, the flush fails and the queue is kept");
    let queued = b.queued().await;
    assert!(queued.iter().all(|e| e["event"] == "Saved Offline"), "kept in localStorage: {queued:#?}");
    assert_eq!(s.count(&[("name", "Saved Offline")]).await, 0);

    // Back online, the SDK flushes on the browser's `online` event by itself.
    b.set_offline(false).await;
    stored(&s, "Saved Offline", 5).await;
    assert_eq!(b.flush().await, 0, "nothing left to send");
    let events = s.events(&[("name", "Saved Offline")]).await;
    assert_eq!(indexes(&events), [0, 1, 2, 3, 4], "each event stored once");
    assert!(events.iter().all(|e| e["release"] == RELEASE));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_whose_answer_is_lost_is_resent_and_stored_once() {
    let s = TestServer::start().await;
    let gate = Gate::start(&s.base).await;
    let b = Browser::start(Site::of(&s, RELEASE).via(&gate.base)).await;
    b.open("/app.html").await;
    assert_eq!(b.flush().await, 0);

    gate.set(Mode::LoseAnswers);
    b.run("for (let i = 0; i < 5; i++) leanloop.track('Checked Out', {i})").await;
    assert_eq!(b.flush().await, 5, "without an answer the SDK keeps the batch");
    stored(&s, "Checked Out", 5).await;
    assert!(gate.lost() >= 1, "the collector answered and the browser never saw it");

    gate.set(Mode::Open);
    eventually("the SDK to resend its queue", || async { (b.flush().await == 0).then_some(()) }).await;
    let events = s.events(&[("name", "Checked Out")]).await;
    assert_eq!(indexes(&events), [0, 1, 2, 3, 4], "the resent batch is not stored twice");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_while_the_collector_is_unreachable_keeps_the_queue() {
    let s = TestServer::start().await;
    let gate = Gate::start(&s.base).await;
    let b = Browser::start(Site::of(&s, RELEASE).via(&gate.base)).await;
    b.open("/app.html").await;
    assert_eq!(b.flush().await, 0);

    gate.set(Mode::Refuse);
    b.run("for (let i = 0; i < 3; i++) leanloop.track('Queued Before Reload', {i})").await;
    assert_eq!(b.flush().await, 3, "the collector is unreachable: the queue is kept");
    // The reload hides the page while the collector is still unreachable.
    b.reload().await;
    gate.set(Mode::Open);

    eventually("the reloaded page to send its queue", || async { (b.flush().await == 0).then_some(()) }).await;
    let events = s.events(&[("name", "Queued Before Reload")]).await;
    assert_eq!(indexes(&events), [0, 1, 2], "the queue kept in localStorage outlives the reload");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_feedback_prompt_submits_a_score_and_message() {
    let s = TestServer::start().await;
    let b = Browser::start(Site::of(&s, RELEASE)).await;
    b.open("/app.html").await;
    b.run("leanloop.showFeedback()").await;

    let prompt = b.shadow_root("[data-ll-widget]").await;
    let find = |css: &'static str| {
        let prompt = prompt.clone();
        async move { prompt.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("{css} in the prompt: {e:?}")) }
    };
    let nine = find(r#"button[data-ll-score="9"]"#).await;
    nine.click().await.expect("click 9");
    assert_eq!(nine.attr("aria-pressed").await.expect("aria-pressed").as_deref(), Some("true"));
    find("textarea").await.send_keys("Exports save me hours").await.expect("type a message");
    find("button[data-ll-submit]").await.click().await.expect("send");
    assert_eq!(find("[role=status]").await.text().await.expect("status text"), "Thank you!");

    stored(&s, "$feedback", 1).await;
    let feedback = s.only_event("$feedback").await;
    assert_eq!(feedback["type"], "feedback");
    assert_eq!(feedback["release"], RELEASE);
    assert_eq!(feedback["url"], b.url("/app.html").as_str());
    assert_eq!(feedback["properties"], json!({"score": 9, "message": "Exports save me hours", "category": "nps"}));
    let view = s.only_event("$pageview").await;
    assert_eq!(feedback["anonymous_id"], view["anonymous_id"]);
    assert_eq!(feedback["session_id"], view["session_id"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_opt_out_in_one_tab_holds_in_every_tab_and_across_a_reload() {
    let s = TestServer::start().await;
    let gate = Gate::start(&s.base).await;
    let b = Browser::start(Site::of(&s, RELEASE).via(&gate.base)).await;
    b.open("/app.html").await;
    assert_eq!(b.flush().await, 0);
    stored(&s, "$pageview", 1).await;

    // The first tab queues events the collector cannot take yet.
    gate.set(Mode::Refuse);
    b.run("for (let i = 0; i < 3; i++) leanloop.track('Before Opt Out', {i})").await;
    assert_eq!(b.flush().await, 3);
    // A second tab of the same site opts out.
    let first = b.new_tab().await;
    b.open("/app.html").await;
    b.run("leanloop.optOut()").await;
    gate.set(Mode::Open);
    b.run("leanloop.track('Opted Out', {i: 0})").await;
    assert_eq!(b.queued().await, Vec::<Value>::new(), "nothing is queued once opted out");
    // The first tab: its queue went with the opt-out, and it sends nothing new.
    b.switch_to(first).await;
    b.run("leanloop.track('Opted Out', {i: 1})").await;
    assert_eq!(b.queued().await, Vec::<Value>::new(), "the other tab's queue is cleared");
    // The choice outlives a reload; opting in sends again.
    b.reload().await;
    b.run("leanloop.track('Opted Out', {i: 2})").await;
    b.run("leanloop.optIn(); leanloop.track('Opted In')").await;
    assert_eq!(b.flush().await, 0);
    stored(&s, "Opted In", 1).await;
    // What was queued before the opt-out would have gone with that flush.
    assert_eq!(s.count(&[("name", "Before Opt Out")]).await, 0);
    assert_eq!(s.count(&[("name", "Opted Out")]).await, 0);
    assert_eq!(s.count(&[]).await, 2, "the first page view and the event after opting in");
}
