//! The test site: a few HTML pages on their own loopback origin, so every
//! request the SDK makes to the collector is cross-origin, as on a customer's
//! site.

use crate::TestServer;
use axum::extract::State;
use axum::response::Html;
use axum::routing::get;
use axum::Router;
use std::sync::Arc;

/// Where the pages load the SDK from and what they configure it with.
#[derive(Debug, Clone)]
pub struct Site {
    /// The collector serving `/sdk.js`.
    pub collector: String,
    /// The SDK's host: the collector itself, or a gate in front of it.
    pub host: String,
    pub write_key: String,
    pub release: String,
}

impl Site {
    /// Pages of `server`'s default project, at `release`, sending straight to it.
    pub fn of(server: &TestServer, release: &str) -> Site {
        Site {
            collector: server.base.clone(),
            host: server.base.clone(),
            write_key: server.project.write_key.clone(),
            release: release.to_owned(),
        }
    }

    /// Sends through `host` instead; the script still loads from the
    /// collector, so pages load whatever happens to `host`.
    pub fn via(mut self, host: &str) -> Site {
        self.host = host.to_owned();
        self
    }
}

/// The drop-in script, initialised from its `data-` attributes, and a page
/// that behaves like a small single-page app.
const APP: &str = r##"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Leanloop test app</title>
<script src="{collector}/sdk.js" data-write-key="{key}" data-host="{host}" data-release="{release}"></script>
</head>
<body>
<nav><a id="pricing" href="/pricing">Pricing</a> <a id="faq" href="#/faq">FAQ</a> <a id="top" href="#top">Top</a></nav>
<button id="cart" data-ll-event="Opened Cart" data-ll-items="2">Cart</button>
<button id="boom">Break</button>
<button id="reject">Save</button>
<script>
  // The app's router: links change the URL without loading a page.
  document.getElementById('pricing').addEventListener('click', e => {
    e.preventDefault()
    history.pushState({}, '', e.currentTarget.href)
  })
  // Errors must come from the page's own code: WebDriver's injected scripts
  // report theirs as a muted "Script error." and their rejections not at all.
  document.getElementById('boom').addEventListener('click', () => {
    throw new Error('boom')
  })
  document.getElementById('reject').addEventListener('click', () => {
    Promise.reject(new TypeError('save failed'))
  })
</script>
</body>
</html>
"##;

/// The README's snippet with an async script, and a flush interval so long
/// that only leaving the page can send what is queued.
const SNIPPET: &str = r##"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Leanloop snippet page</title>
<script>
  !function(w,l){l=w.leanloop=w.leanloop||[];'init track page identify group alias reset flush optOut optIn feedback setRelease showFeedback'.split(' ').forEach(function(m){l[m]=l[m]||function(){l.push([m].concat([].slice.call(arguments)))}})}(window);
  leanloop.init({key_js}, {options_js});
</script>
<script async src="{collector}/sdk.js"></script>
</head>
<body><p>Snippet page</p></body>
</html>
"##;

/// Somewhere to go: no SDK.
const OTHER: &str = r##"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Elsewhere</title></head>
<body><p>Another page</p></body></html>
"##;

/// The page server; stops when dropped.
pub struct Pages {
    pub base: String,
    serving: tokio::task::JoinHandle<()>,
}

impl Pages {
    pub async fn start(site: Site) -> Pages {
        let router = Router::new()
            .route("/app.html", get(app))
            .route("/snippet.html", get(snippet))
            .route("/other.html", get(|| async { Html(OTHER) }))
            .with_state(Arc::new(site));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the page server");
        let base = format!("http://{}", listener.local_addr().expect("page server address"));
        let serving = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Pages { base, serving }
    }
}

impl Drop for Pages {
    fn drop(&mut self) {
        self.serving.abort();
    }
}

async fn app(State(site): State<Arc<Site>>) -> Html<String> {
    Html(render(APP, &site))
}

async fn snippet(State(site): State<Arc<Site>>) -> Html<String> {
    let options = serde_json::json!({ "host": site.host, "release": site.release, "flushInterval": 60_000 });
    let page = render(SNIPPET, &site)
        .replace("{key_js}", &script_json(&serde_json::json!(site.write_key)))
        .replace("{options_js}", &script_json(&options));
    Html(page)
}

/// Fills the attribute placeholders.
fn render(template: &str, site: &Site) -> String {
    template
        .replace("{collector}", &attribute(&site.collector))
        .replace("{host}", &attribute(&site.host))
        .replace("{key}", &attribute(&site.write_key))
        .replace("{release}", &attribute(&site.release))
}

fn attribute(value: &str) -> String {
    value.replace('&', "&amp;").replace('"', "&quot;").replace('<', "&lt;").replace('>', "&gt;")
}

/// JSON is a JavaScript literal; `</` is escaped so it cannot end the script.
fn script_json(value: &serde_json::Value) -> String {
    value.to_string().replace("</", "<\\/")
}
