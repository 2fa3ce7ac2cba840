//! LoRA adapter endpoints: llama-server's `GET/POST /lora-adapters` (the list, the global
//! scales) and cria's `POST /v1/adapters` (load one into the running server), `GET /v1/adapters`
//! and `DELETE /v1/adapters/NAME` (unload). The registry is `crate::lora`.

use super::{respond, AppState};
use crate::access::AccessLog;
use crate::error::ApiError;
use crate::params::Obj;
use crate::sink::{EmbedSink, EventSink};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use cria_engine::scheduler::Request;
use serde_json::Value;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

/// `GET /lora-adapters` and `GET /v1/adapters`.
pub(super) async fn list(State(st): State<Arc<AppState>>) -> Response {
    st.metrics.requests_other.fetch_add(1, Relaxed);
    Json(st.adapters.list(&st.names[0])).into_response()
}

/// `POST /lora-adapters`: `[{"id": N, "scale": S}]`, the global scales.
pub(super) async fn set_global(
    State(st): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    st.metrics.requests_other.fetch_add(1, Relaxed);
    let r = (|| {
        let v: Value = serde_json::from_slice(&body?)
            .map_err(|e| ApiError::bad(format!("the request body is not valid JSON: {e}")))?;
        Ok(Json(st.adapters.set_global(&v)?).into_response())
    })();
    respond(&st, r)
}

/// `POST /v1/adapters`: `{"name", "path", "scale"}`, an adapter loaded into the running server.
pub(super) async fn load(
    st: Arc<AppState>,
    _log: Arc<AccessLog>,
    o: Obj,
) -> Result<Response, ApiError> {
    let v = st.adapters.load(&o).await?;
    Ok(Json(v).into_response())
}

/// `DELETE /v1/adapters/NAME`: unloaded if no request uses it (409 otherwise); the scheduler
/// then drops what its idle slots cached with it, which frees its memory.
pub(super) async fn unload(State(st): State<Arc<AppState>>, Path(name): Path<String>) -> Response {
    st.metrics.requests_other.fetch_add(1, Relaxed);
    let r = st.adapters.unload(&name).map(|v| {
        let _ = st.engine.submit(Request::<EventSink, EmbedSink>::Release);
        Json(v).into_response()
    });
    respond(&st, r)
}
