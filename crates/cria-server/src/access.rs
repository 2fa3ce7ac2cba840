//! Who may call the server and what is written about it: the `Host` check (DNS rebinding), CORS,
//! the JSON content type (a web page cannot send it cross-site without a preflight), the bearer
//! key, and the access log (one line per request on stderr).

use axum::http::{header, HeaderMap, HeaderValue, Method};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering::Relaxed};
use std::time::Instant;

/// Which `Host` names and web origins are let in.
pub struct Policy {
    /// Lower-case host names (IPv6 in brackets) a request's `Host` may carry; None: any.
    hosts: Option<Vec<String>>,
    /// Origins (`scheme://host[:port]`) that get CORS headers; `*` is any.
    cors: Vec<String>,
    pub log_prompts: bool,
}

/// A host name as `Host` carries it: lower case, IPv6 in brackets, no trailing dot.
fn normalize_host(h: &str) -> String {
    let h = h.trim().trim_end_matches('.').to_ascii_lowercase();
    match h.parse::<IpAddr>() {
        Ok(IpAddr::V6(a)) => format!("[{a}]"),
        _ => h,
    }
}

/// Whether a listen address reaches this machine only (`localhost`, 127.0.0.0/8, ::1).
pub fn is_loopback(listen: &str) -> bool {
    let h = listen.trim().trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost") || h.parse::<IpAddr>().is_ok_and(|a| a.is_loopback())
}

impl Policy {
    /// Bound to loopback (or a named address) the Host must be one of the listen host,
    /// localhost, 127.0.0.1, [::1] or an `--allowed-host`; bound to 0.0.0.0 or :: any Host is
    /// accepted unless `--allowed-host` names some (`*` accepts any in every case).
    pub fn new(listen: &str, allowed: &[String], cors: &[String], log_prompts: bool) -> Policy {
        let unspecified = listen.parse::<IpAddr>().is_ok_and(|a| a.is_unspecified());
        let any = allowed.iter().any(|h| h == "*") || (unspecified && allowed.is_empty());
        let hosts = (!any).then(|| {
            let mut v: Vec<String> = ["localhost", "127.0.0.1", "[::1]", listen]
                .iter()
                .map(|h| normalize_host(h))
                .collect();
            v.extend(allowed.iter().map(|h| normalize_host(h)));
            v
        });
        let cors = cors
            .iter()
            .map(|o| o.trim().trim_end_matches('/').to_ascii_lowercase())
            .collect();
        Policy {
            hosts,
            cors,
            log_prompts,
        }
    }

    /// Whether the request's `Host` is one this server answers to. A request without one
    /// (HTTP/1.0 tools) passes: browsers always send it.
    pub fn host_ok(&self, h: &HeaderMap) -> bool {
        let Some(hosts) = &self.hosts else {
            return true;
        };
        let Some(v) = h.get(header::HOST) else {
            return true;
        };
        let Ok(v) = v.to_str() else {
            return false;
        };
        // Without the port: "[::1]:8080" -> "[::1]", "localhost:8080" -> "localhost".
        let name = match v.find(']') {
            Some(end) if v.starts_with('[') => &v[..=end],
            _ => v.split(':').next().unwrap_or(""),
        };
        hosts.contains(&normalize_host(name))
    }

    /// The request's `Origin` when `--cors` lets it in (to echo in Access-Control-Allow-Origin).
    pub fn cors_origin(&self, h: &HeaderMap) -> Option<HeaderValue> {
        let o = h.get(header::ORIGIN)?;
        let s = o.to_str().ok()?.trim_end_matches('/').to_ascii_lowercase();
        self.cors
            .iter()
            .any(|c| c == "*" || *c == s)
            .then(|| o.clone())
    }
}

/// `Content-Type: application/json` (any parameters, any case).
pub fn is_json(h: &HeaderMap) -> bool {
    h.get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
}

/// The key of `Authorization: Bearer KEY` (the scheme in any case, as RFC 7235 has it).
pub fn bearer(h: &HeaderMap) -> Option<&str> {
    let v = h.get(header::AUTHORIZATION)?.to_str().ok()?.trim_start();
    let (scheme, key) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| key.trim())
}

/// Headers of a CORS preflight answer for an allowed origin.
pub fn preflight_headers(origin: HeaderValue) -> [(header::HeaderName, HeaderValue); 5] {
    [
        (header::ACCESS_CONTROL_ALLOW_ORIGIN, origin),
        (
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, HEAD, POST, DELETE, OPTIONS"),
        ),
        (
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("Authorization, Content-Type"),
        ),
        (
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        ),
        (header::VARY, HeaderValue::from_static("Origin")),
    ]
}

/// One request's access-log line, written to stderr when the last reference goes: after the
/// response body is sent (a stream's at its end, with its token counts) or dropped.
pub struct AccessLog {
    method: Method,
    path: String,
    started: Instant,
    status: AtomicU16,
    pub prompt_tokens: AtomicUsize,
    pub completion_tokens: AtomicUsize,
}

impl AccessLog {
    pub fn new(method: Method, path: &str) -> Self {
        AccessLog {
            method,
            // A path is at most what hyper accepts in a request line; keep the line short anyway.
            path: path.chars().take(200).collect(),
            started: Instant::now(),
            status: AtomicU16::new(0),
            prompt_tokens: AtomicUsize::new(0),
            completion_tokens: AtomicUsize::new(0),
        }
    }

    pub fn set_status(&self, s: u16) {
        self.status.store(s, Relaxed);
    }

    /// Token counts of a generation or embedding (added: a request may have several choices).
    pub fn tokens(&self, prompt: usize, completion: usize) {
        self.prompt_tokens.fetch_add(prompt, Relaxed);
        self.completion_tokens.fetch_add(completion, Relaxed);
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        let (p, c) = (
            self.prompt_tokens.load(Relaxed),
            self.completion_tokens.load(Relaxed),
        );
        let tokens = if p + c > 0 {
            format!(" prompt={p} completion={c}")
        } else {
            String::new()
        };
        eprintln!(
            "cria serve: {} {} {}{tokens} {} ms",
            self.method,
            self.path,
            self.status.load(Relaxed),
            self.started.elapsed().as_millis()
        );
    }
}

/// A response body that holds its request's [`AccessLog`] until it is done with; sizes and
/// frames are the inner body's.
pub struct Logged {
    inner: axum::body::Body,
    _log: std::sync::Arc<AccessLog>,
}

impl Logged {
    pub fn new(inner: axum::body::Body, log: std::sync::Arc<AccessLog>) -> Self {
        Logged { inner, _log: log }
    }
}

impl http_body::Body for Logged {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_listen_addresses() {
        for h in [
            "127.0.0.1",
            "127.3.2.1",
            "localhost",
            "LocalHost",
            "::1",
            "[::1]",
        ] {
            assert!(is_loopback(h), "{h}");
        }
        for h in ["0.0.0.0", "::", "192.168.1.2", "example.com", "[::]"] {
            assert!(!is_loopback(h), "{h}");
        }
    }

    fn host(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn host_check_follows_the_listen_address() {
        let p = Policy::new("127.0.0.1", &[], &[], false);
        for ok in [
            "127.0.0.1:8080",
            "localhost",
            "LOCALHOST:1",
            "[::1]:8080",
            "localhost.",
        ] {
            assert!(p.host_ok(&host(ok)), "{ok}");
        }
        for bad in [
            "evil.example:8080",
            "127.0.0.2",
            "localhost.evil.example",
            "[::2]",
        ] {
            assert!(!p.host_ok(&host(bad)), "{bad}");
        }
        assert!(p.host_ok(&HeaderMap::new()), "no Host header");
        let p = Policy::new("127.0.0.1", &["my.box".into()], &[], false);
        assert!(p.host_ok(&host("my.box:8080")) && !p.host_ok(&host("other.box")));
        let p = Policy::new("0.0.0.0", &[], &[], false);
        assert!(p.host_ok(&host("anything.example")));
        let p = Policy::new("0.0.0.0", &["my.box".into()], &[], false);
        assert!(p.host_ok(&host("my.box")) && !p.host_ok(&host("anything.example")));
        let p = Policy::new("::1", &[], &[], false);
        assert!(p.host_ok(&host("[::1]:80")) && !p.host_ok(&host("evil.example")));
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        let mut h = HeaderMap::new();
        for (v, want) in [
            ("Bearer k1", Some("k1")),
            ("bearer k1", Some("k1")),
            ("BEARER  k1 ", Some("k1")),
            ("Basic k1", None),
            ("Bearerk1", None),
        ] {
            h.insert(header::AUTHORIZATION, HeaderValue::from_static(v));
            assert_eq!(bearer(&h), want, "{v}");
        }
    }

    #[test]
    fn json_content_type() {
        let mut h = HeaderMap::new();
        assert!(!is_json(&h));
        for (v, want) in [
            ("application/json", true),
            ("Application/JSON; charset=utf-8", true),
            ("text/plain", false),
            ("application/x-www-form-urlencoded", false),
            ("application/jsonx", false),
        ] {
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(v));
            assert_eq!(is_json(&h), want, "{v}");
        }
    }
}
