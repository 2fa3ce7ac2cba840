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
    let (loaded, bytes, per) = st.adapters.metrics();
    let mut text = st.metrics.render(st.parallel);
    text.push_str(&crate::metrics::render_adapters(loaded, bytes, &per));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

pub(super) async fn models(State(st): State<Arc<AppState>>) -> Response {
    st.metrics.requests_other.fetch_add(1, Relaxed);
    let i = &st.info;
    let base = &st.names[0];
    let mut data = vec![json!({
        "id": base,
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
    })];
    // Each LoRA adapter is a model of its own, `BASE:NAME` (as vLLM lists them, with `parent`).
    for (id, lora_id, path) in st.adapters.models(base) {
        data.push(json!({
            "id": id,
            "object": "model",
            "created": st.created,
            "owned_by": "cria",
            "parent": base,
            "lora": {"id": lora_id, "path": path},
        }));
    }
    Json(json!({"object": "list", "data": data})).into_response()
}
