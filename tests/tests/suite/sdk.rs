//! `/sdk.js` as browsers fetch it: compressed, cached, and within its size
//! budget.

use leanloop_tests::TestServer;

/// The browser SDK's budget, gzipped.
const BUDGET_BYTES: usize = 5 * 1024;

#[tokio::test(flavor = "multi_thread")]
async fn the_served_sdk_is_gzipped_cached_and_under_5_kb() {
    let s = TestServer::start().await;
    let raw = reqwest::Client::builder().no_gzip().build().unwrap();
    let r = raw.get(s.url("/sdk.js")).header("accept-encoding", "gzip, br").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-encoding"], "gzip");
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/javascript"));
    assert!(r.headers()["cache-control"].to_str().unwrap().contains("max-age="));
    let etag = r.headers()["etag"].clone();
    let gzipped = r.bytes().await.unwrap();
    println!("/sdk.js gzipped: {} bytes (budget {BUDGET_BYTES})", gzipped.len());
    assert!(gzipped.len() <= BUDGET_BYTES, "/sdk.js is {} bytes gzipped, over {BUDGET_BYTES}", gzipped.len());

    let mut plain = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&gzipped[..]), &mut plain).unwrap();
    assert_eq!(plain, include_str!("../../../sdk-js/dist/leanloop.min.js"));
    let identity = raw.get(s.url("/sdk.js")).send().await.unwrap().text().await.unwrap();
    assert_eq!(identity, plain, "clients without gzip get the plain script");

    // The gzipped and plain bodies are two representations with two tags;
    // a proxy's weak form of the tag revalidates too.
    let plain_etag = raw.get(s.url("/sdk.js")).send().await.unwrap().headers()["etag"].clone();
    assert_ne!(plain_etag, etag);
    for (encoding, tag) in [("gzip", etag.to_str().unwrap()), ("identity", plain_etag.to_str().unwrap())] {
        for sent in [tag.to_owned(), format!("W/{tag}")] {
            let again = raw.get(s.url("/sdk.js")).header("accept-encoding", encoding).header("if-none-match", &sent);
            let again = again.send().await.unwrap();
            assert_eq!(again.status(), 304, "{encoding} revalidated with {sent}");
            assert_eq!(again.headers()["etag"].to_str().unwrap(), tag);
        }
    }
    let other = raw.get(s.url("/sdk.js")).header("if-none-match", plain_etag).header("accept-encoding", "gzip");
    assert_eq!(other.send().await.unwrap().status(), 200, "the plain body's tag does not revalidate the gzipped one");
    // The ES module, for bundlers and `<script type="module">`: the source itself.
    let module = raw.get(s.url("/sdk.mjs")).send().await.unwrap();
    assert_eq!(module.status(), 200);
    assert!(module.headers()["content-type"].to_str().unwrap().starts_with("text/javascript"));
    assert_eq!(module.text().await.unwrap(), include_str!("../../../sdk-js/src/leanloop.js"));
    // The NPS prompt, fetched cross-origin as a module when it first shows.
    let prompt = raw.get(s.url("/sdk-prompt.mjs")).send().await.unwrap();
    assert_eq!(prompt.headers()["access-control-allow-origin"], "*");
    assert!(prompt.headers()["content-type"].to_str().unwrap().starts_with("text/javascript"));
    assert_eq!(prompt.text().await.unwrap(), include_str!("../../../sdk-js/dist/prompt.min.mjs"));
}
