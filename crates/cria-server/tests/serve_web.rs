//! The built-in chat page: served from the binary at `/` with its assets, public even when the
//! API needs a key.

mod common;

use common::*;
use std::time::Duration;

/// GET with an optional bearer key: (status, content type, body).
fn fetch(url: &str, key: Option<&str>) -> (u16, String, String) {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(60))
        .build();
    let mut r = agent.get(url);
    if let Some(k) = key {
        r = r.set("Authorization", &format!("Bearer {k}"));
    }
    let resp = match r.call() {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("GET {url}: {e}"),
    };
    let status = resp.status();
    let ct = resp.header("content-type").unwrap_or("").to_string();
    (status, ct, resp.into_string().unwrap())
}

#[test]
fn chat_page_and_assets_are_served_without_the_key() {
    let srv = serve(|a| a.api_key = Some("sesame".into()));
    let url = srv.url();

    // The page: public, HTML, with the form and the script and stylesheet it loads.
    for path in ["/", "/index.html"] {
        let (s, ct, html) = fetch(&format!("{url}{path}"), None);
        assert_eq!(s, 200, "{path}: {html}");
        assert!(ct.starts_with("text/html"), "{path}: {ct}");
        for needle in [
            "<form id=\"composer\"",
            "<textarea id=\"input\"",
            "id=\"send\"",
            "id=\"stop\"",
            "id=\"system\"",
            "id=\"temperature\"",
            "id=\"apikey\"",
            "<script src=\"/app.js\"></script>",
            "href=\"/style.css\"",
        ] {
            assert!(html.contains(needle), "{path} lacks {needle:?}");
        }
        // Offline: nothing is loaded from another origin.
        assert!(!html.contains("http://") && !html.contains("https://"));
    }

    // The assets, with their types; the script streams the chat API and can abort it.
    let (s, ct, js) = fetch(&format!("{url}/app.js"), None);
    assert_eq!(s, 200);
    assert!(ct.starts_with("text/javascript"), "{ct}");
    for needle in [
        "/v1/chat/completions",
        "stream: true",
        "AbortController",
        "getReader()",
        "escapeHtml",
        "Bearer ",
    ] {
        assert!(js.contains(needle), "app.js lacks {needle:?}");
    }
    let (s, ct, css) = fetch(&format!("{url}/style.css"), None);
    assert_eq!(s, 200);
    assert!(ct.starts_with("text/css"), "{ct}");
    assert!(css.contains("#messages"));

    // The API still needs the key: refused without it, served with it.
    let (s, _, body) = fetch(&format!("{url}/v1/models"), None);
    assert_eq!(s, 401, "{body}");
    let (s, _, body) = fetch(&format!("{url}/v1/models"), Some("wrong"));
    assert_eq!(s, 401, "{body}");
    let (s, _, body) = fetch(&format!("{url}/v1/models"), Some("sesame"));
    assert_eq!(s, 200, "{body}");
    assert!(body.contains("SmolLM2-135M-Instruct"), "{body}");

    // Only GET of the page is open: other paths and methods still meet the key check.
    let (s, _, body) = fetch(&format!("{url}/nope.js"), None);
    assert_eq!(s, 401, "{body}");
    let (s, _) = post_raw(&format!("{url}/"), "{}", None);
    assert_eq!(s, 401);
}
