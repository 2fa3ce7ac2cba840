//! What every request passes before its handler: the Host check, CORS, the body limits, the API
//! key, the read timeout, prompt logging; the access-log line and a handler's panic answered as
//! a 500.

use super::AppState;
use crate::access::{self, AccessLog};
use crate::error::ApiError;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

/// Around every request: the access-log line, CORS headers for an allowed origin, and a panic
/// in a handler answered as a 500 (the connection and the server go on).
pub(super) async fn guard(
    State(st): State<Arc<AppState>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let log = Arc::new(AccessLog::new(req.method().clone(), req.uri().path()));
    let cors = st.policy.cors_origin(req.headers());
    let mut resp = match admit(&st, req, &cors).await {
        Ok(mut req) => {
            req.extensions_mut().insert(log.clone());
            let run = next.run(req);
            match futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(run)).await {
                Ok(r) => r,
                Err(_) => {
                    st.metrics.errors.fetch_add(1, Relaxed);
                    ApiError::internal("internal error (a bug: the server's log has the details)")
                        .into_response()
                }
            }
        }
        Err(r) => {
            if !r.status().is_success() {
                st.metrics.errors.fetch_add(1, Relaxed);
            }
            r
        }
    };
    if let Some(o) = cors {
        let h = resp.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o);
        h.insert(header::VARY, header::HeaderValue::from_static("Origin"));
    }
    log.set_status(resp.status().as_u16());
    // The line is written when the body is done with (a stream's at its end).
    let (parts, body) = resp.into_parts();
    let body = axum::body::Body::new(access::Logged::new(body, log));
    Response::from_parts(parts, body)
}

/// Before any handler: the `Host` (403), a CORS preflight, a body announced larger than the
/// limit (refused before it is read, no `100 Continue`; a body without a length is cut at the
/// limit later), the API key (401), the JSON content type of a POST (415), then the whole body
/// within the read timeout (408). Errors are the response to send.
async fn admit(
    st: &AppState,
    req: axum::extract::Request,
    cors: &Option<header::HeaderValue>,
) -> Result<axum::extract::Request, Response> {
    let h = req.headers();
    if !st.policy.host_ok(h) {
        return Err(ApiError::forbidden(
            "this server does not answer to that Host name (see --allowed-host)",
        )
        .into_response());
    }
    if req.method() == axum::http::Method::OPTIONS {
        return Err(match cors {
            Some(o) => (
                axum::http::StatusCode::NO_CONTENT,
                access::preflight_headers(o.clone()),
            )
                .into_response(),
            None => ApiError::forbidden(
                "cross-origin requests are not allowed from this origin (see --cors)",
            )
            .into_response(),
        });
    }
    let announced = h
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > st.max_body as u64) {
        return Err(ApiError::too_large().into_response());
    }
    if let Some(key) = &st.api_key {
        let path = req.uri().path();
        let open = matches!(path, "/health" | "/v1/health")
            || (matches!(
                *req.method(),
                axum::http::Method::GET | axum::http::Method::HEAD
            ) && crate::web::PUBLIC_PATHS.contains(&path));
        let given = access::bearer(h);
        if !open && !given.is_some_and(|g| constant_time_eq(g.as_bytes(), key.as_bytes())) {
            let msg = if given.is_none() {
                "no API key: send the header 'Authorization: Bearer YOUR_KEY'"
            } else {
                "incorrect API key"
            };
            return Err(ApiError::unauthorized(msg).into_response());
        }
    }
    if req.method() == axum::http::Method::POST && !access::is_json(h) {
        return Err(ApiError::unsupported_media_type().into_response());
    }
    // The whole body within the read timeout: a client trickling it byte by byte (slowloris) is
    // answered 408 and its connection closed, instead of holding a task and a buffer forever.
    let (parts, body) = req.into_parts();
    let read = axum::body::to_bytes(body, st.max_body);
    let bytes = match tokio::time::timeout(st.read_timeout, read).await {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => {
            let inner = e.into_inner();
            if inner
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                return Err(ApiError::too_large().into_response());
            }
            return Err(
                ApiError::bad(format!("cannot read the request body: {inner}")).into_response(),
            );
        }
        Err(_) => {
            let mut r = ApiError::timeout(st.read_timeout.as_secs()).into_response();
            r.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
            return Err(r);
        }
    };
    if st.policy.log_prompts && !bytes.is_empty() {
        const SHOWN: usize = 16 << 10;
        let shown = String::from_utf8_lossy(&bytes[..bytes.len().min(SHOWN)]);
        let more = if bytes.len() > SHOWN {
            format!(" ... ({} bytes)", bytes.len())
        } else {
            String::new()
        };
        eprintln!(
            "cria serve: {} {} body: {shown}{more}",
            parts.method,
            parts.uri.path()
        );
    }
    Ok(axum::extract::Request::from_parts(parts, bytes.into()))
}

/// Compares without an early exit, so the time taken says nothing about where keys differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_is_eq() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
