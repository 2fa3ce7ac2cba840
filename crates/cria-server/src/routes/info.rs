//! GET /health, /metrics and /v1/models.

use super::AppState;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

/// 200 `{"status": "ok"}`, or 503 `{"status": "error"}` once the scheduler thread is gone (the
/// server answers HTTP but can no longer generate: a supervisor should restart it).
pub(super) async fn health(State(st): State<Arc<AppState>>) -> Response {
    if st.engine.is_alive() {
        Json(json!({"status": "ok"})).into_response()
    } else {
        let body = json!({"status": "error", "error": cria_engine::scheduler::STOPPED});
        (axum::http::StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
}

pub(super) async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    st.metrics.requests_other.fetch_add(1, Relaxed);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        st.metrics.render(st.parallel),
    )
        .into_response()
}

pub(super) async fn models(State(st): State<Arc<AppState>>) -> Response {
    st.metrics.requests_other.fetch_add(1, Relaxed);
    let i = &st.info;
    Json(json!({
        "object": "list",
        "data": [{
            "id": st.names[0],
            "object": "model",
            "created": st.created,
            "owned_by": "cria",
            "meta": {
                "n_ctx_train": i.n_ctx_train,
                "n_ctx": st.ctx_size,
                "n_vocab": i.n_vocab,
                "n_embd": i.n_embd,
                "n_params": i.n_params,
                "slots": st.parallel,
            }
        }]
    }))
    .into_response()
}
