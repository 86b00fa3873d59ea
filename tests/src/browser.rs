//! Real headless Chromium for the browser SDK's end-to-end tests.
//!
//! Each [`Browser`] has its own chromedriver (a child process on a free
//! loopback port), its own Chromium profile, and its own page server on a
//! second origin, so the SDK's requests to the collector are cross-origin as
//! on a customer's site. Chromium and chromedriver come from Debian's
//! `chromium` and `chromium-driver` packages (`LEANLOOP_TEST_CHROMIUM` and
//! `LEANLOOP_TEST_CHROMEDRIVER` override the paths); without them the tests
//! fail rather than skip.
//!
//! Two ways to break the network: [`Browser::set_offline`] is Chromium's own
//! offline mode (`navigator.onLine` turns false, `online` fires on the way
//! back), and a [`Gate`] makes only the collector unreachable while pages
//! still load, which is what a reload during an outage needs.

mod driver;
mod gate;
mod pages;

pub use gate::{Gate, Mode};
pub use pages::Site;

use crate::DEADLINE;
use driver::Driver;
use fantoccini::elements::{Element, ShadowRoot};
use fantoccini::wd::{Capabilities, WebDriverCompatibleCommand, WindowHandle};
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use pages::Pages;
use serde_json::{json, Value};
use std::fmt::Debug;
use std::future::Future;
use std::path::Path;

/// The page's stored queue (`ll_q:<write key>`; the pages use one key).
const STORED_QUEUE: &str =
    "JSON.parse(localStorage.getItem(Object.keys(localStorage).find(k => k.startsWith('ll_q:'))) || '[]')";

pub struct Browser {
    // Fields drop in order: the session, the pages, then chromedriver (which
    // quits Chromium), and last the directory Chromium was writing to.
    client: Client,
    pages: Pages,
    _driver: Driver,
    _scratch: tempfile::TempDir,
}

impl Browser {
    /// A fresh browser session and page server for `site`.
    pub async fn start(site: Site) -> Browser {
        let chromium = driver::binary("LEANLOOP_TEST_CHROMIUM", "/usr/bin/chromium", "chromium");
        let scratch = tempfile::tempdir().expect("browser scratch directory");
        let driver = Driver::start(&scratch.path().join("chromedriver.log")).await;
        let pages = Pages::start(site).await;
        let mut builder = ClientBuilder::new(HttpConnector::new());
        builder.capabilities(capabilities(&chromium, &scratch.path().join("profile")));
        let client = within("a WebDriver session", builder.connect(&driver.url)).await;
        Browser { client, pages, _driver: driver, _scratch: scratch }
    }

    /// The WebDriver client, for what the helpers below do not cover.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// A URL on the page server.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.pages.base)
    }

    /// Loads a page of the test site and waits for its `load` event.
    pub async fn open(&self, path: &str) {
        within(&format!("loading {path}"), self.client.goto(&self.url(path))).await
    }

    /// Opens a new tab and makes it current; returns the tab it was on.
    pub async fn new_tab(&self) -> WindowHandle {
        let left = within("the current tab", self.client.window()).await;
        let tab = within("a new tab", self.client.new_window(true)).await;
        within("switching tabs", self.client.switch_to_window(tab.handle)).await;
        left
    }

    /// Makes `tab` the current one.
    pub async fn switch_to(&self, tab: WindowHandle) {
        within("switching tabs", self.client.switch_to_window(tab)).await
    }

    /// Reloads the current page and waits for its `load` event.
    pub async fn reload(&self) {
        within("a reload", self.client.refresh()).await
    }

    /// Runs `body` as an async function in the page and returns what it
    /// returns (`await` and `return` work as usual).
    pub async fn run(&self, body: &str) -> Value {
        let script = format!(
            "const done = arguments[arguments.length - 1];
             (async () => {{ {body} }})().then(
               value => done({{ value: value === undefined ? null : value }}),
               error => done({{ error: String(error && error.stack || error) }}))"
        );
        let answer = within("a script", self.client.execute_async(&script, vec![])).await;
        if let Some(error) = answer.get("error") {
            panic!("script failed: {}\n{body}", error.as_str().unwrap_or_default());
        }
        answer["value"].clone()
    }

    /// Waits until the SDK has loaded (the snippet's stub is only an array).
    pub async fn wait_for_sdk(&self) {
        crate::eventually("the SDK to load", || async {
            (self.run("return typeof window.leanloop?.VERSION == 'string'").await == true).then_some(())
        })
        .await
    }

    /// `leanloop.flush()`, then how many messages are still queued.
    pub async fn flush(&self) -> usize {
        let left = self.run(&format!("await leanloop.flush(); return {STORED_QUEUE}.length")).await;
        left.as_u64().expect("a queue length") as usize
    }

    /// The SDK's queue as it stands in localStorage.
    pub async fn queued(&self) -> Vec<Value> {
        let queue = self.run(&format!("return {STORED_QUEUE}")).await;
        queue.as_array().expect("the queue is a list").clone()
    }

    /// A localStorage value the SDK keeps (`ll_aid`, `ll_ses`, ...).
    pub async fn local_storage(&self, key: &str) -> Option<String> {
        let value = self.run(&format!("return localStorage.getItem({})", json!(key))).await;
        value.as_str().map(str::to_owned)
    }

    pub async fn find(&self, css: &str) -> Element {
        within(&format!("finding {css}"), self.client.find(Locator::Css(css))).await
    }

    /// A real click (WebDriver input), not a script's `el.click()`.
    pub async fn click(&self, css: &str) {
        let element = self.find(css).await;
        within(&format!("clicking {css}"), element.click()).await
    }

    /// The open shadow root of the element at `css`; WebDriver's ordinary
    /// lookups do not enter shadow roots.
    pub async fn shadow_root(&self, css: &str) -> ShadowRoot {
        // The host may come a moment later: the NPS prompt's module is
        // fetched when it first shows.
        let host = within(&format!("waiting for {css}"), self.client.wait().for_element(Locator::Css(css))).await;
        within(&format!("the shadow root of {css}"), host.shadow_root()).await
    }

    /// Chromium's offline mode on (true) or off, through chromedriver's
    /// network conditions command.
    pub async fn set_offline(&self, offline: bool) {
        within("network conditions", self.client.issue_cmd(NetworkConditions { offline })).await;
    }
}

/// Capabilities for headless Chromium in a fresh profile.
fn capabilities(chromium: &Path, profile: &Path) -> Capabilities {
    let options = json!({
        "binary": chromium,
        "args": [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--no-first-run",
            "--disable-dev-shm-usage",
            // Test traffic stays on loopback whatever proxy the machine has.
            "--no-proxy-server",
            // The feedback prompt picks its language from the browser's.
            "--lang=en-US",
            format!("--user-data-dir={}", profile.display()),
        ],
    });
    // Bounded on the driver's side too, so a stuck page fails the test.
    let limit = DEADLINE.as_millis() as u64;
    let mut capabilities = Capabilities::new();
    capabilities.insert("goog:chromeOptions".into(), options);
    capabilities.insert("timeouts".into(), json!({ "script": limit, "pageLoad": limit }));
    capabilities
}

/// chromedriver's `POST /session/{id}/chromium/network_conditions` (offline)
/// and `DELETE` (back to normal): not part of WebDriver, so not in fantoccini.
#[derive(Debug)]
struct NetworkConditions {
    offline: bool,
}

impl WebDriverCompatibleCommand for NetworkConditions {
    fn endpoint(&self, base: &url::Url, session: Option<&str>) -> Result<url::Url, url::ParseError> {
        // Commands are only issued once the session exists.
        let session = session.unwrap_or_default();
        base.join(&format!("session/{session}/chromium/network_conditions"))
    }

    fn method_and_body(&self, _: &url::Url) -> (axum::http::Method, Option<String>) {
        if self.offline {
            let body = json!({ "network_conditions": {
                "offline": true, "latency": 0, "download_throughput": -1, "upload_throughput": -1
            }});
            (axum::http::Method::POST, Some(body.to_string()))
        } else {
            (axum::http::Method::DELETE, None)
        }
    }
}

/// Awaits a browser step, failing the test on an error or after [`DEADLINE`].
async fn within<T, E: Debug>(what: &str, step: impl Future<Output = Result<T, E>>) -> T {
    match tokio::time::timeout(DEADLINE, step).await {
        Ok(Ok(value)) => value,
        Ok(Err(e)) => panic!("{what} failed: {e:?}"),
        Err(_) => panic!("{what} took over {DEADLINE:?}"),
    }
}
