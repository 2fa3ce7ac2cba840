//! POST /tokenize and /detokenize (llama-server's).

use super::{token_ids, AppState};
use crate::access::AccessLog;
use crate::error::ApiError;
use crate::params::{get, opt_bool, opt_str, Obj};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use cria_tokenizer::Tokenizer;
use serde_json::{json, Value};
use std::sync::Arc;

/// Most bytes of text /tokenize takes.
const MAX_TOKENIZE_BYTES: usize = 1 << 20;

/// Most tokens /detokenize takes.
const MAX_DETOKENIZE: usize = 1 << 17;

pub(super) async fn tokenize(
    st: Arc<AppState>,
    _log: Arc<AccessLog>,
    o: Obj,
) -> Result<Response, ApiError> {
    let text = opt_str(&o, "content")?
        .ok_or_else(|| ApiError::param("content", "'content' (a string) is required"))?;
    if text.len() > MAX_TOKENIZE_BYTES {
        return Err(ApiError::param(
            "content",
            format!(
                "'content' is {} bytes; /tokenize takes at most {MAX_TOKENIZE_BYTES}",
                text.len()
            ),
        ));
    }
    let text = text.to_string();
    let add_special = opt_bool(&o, "add_special")?.unwrap_or(false);
    let parse_special = opt_bool(&o, "parse_special")?.unwrap_or(true);
    let pieces = opt_bool(&o, "with_pieces")?.unwrap_or(false);
    let st2 = st.clone();
    // Tokenized and written out as JSON text on a blocking thread, without a JSON value per
    // token in between (a megabyte of text is some 250000 of them).
    let body = tokio::task::spawn_blocking(move || {
        let ids = st2.tok.encode(&text, add_special, parse_special);
        tokens_json(&st2.tok, &ids, pieces)
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// `{"tokens": [ids]}`, or with pieces `{"tokens": [{"id", "piece"}]}` (a piece that is not
/// UTF-8 as its list of bytes), as JSON text.
fn tokens_json(tok: &Tokenizer, ids: &[u32], pieces: bool) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(16 + ids.len() * if pieces { 24 } else { 7 });
    out.push_str("{\"tokens\":[");
    for (i, &id) in ids.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        if pieces {
            let piece = match String::from_utf8(tok.token_to_piece_special(id, true)) {
                Ok(s) => Value::String(s).to_string(),
                Err(e) => json!(e.into_bytes()).to_string(),
            };
            let _ = write!(out, "{{\"id\":{id},\"piece\":{piece}}}");
        } else {
            let _ = write!(out, "{id}");
        }
    }
    out.push_str("]}");
    out
}

pub(super) async fn detokenize(
    st: Arc<AppState>,
    _log: Arc<AccessLog>,
    o: Obj,
) -> Result<Response, ApiError> {
    let v = get(&o, "tokens")
        .ok_or_else(|| ApiError::param("tokens", "'tokens' (a list of ids) is required"))?;
    if v.as_array().is_some_and(|a| a.len() > MAX_DETOKENIZE) {
        return Err(ApiError::param(
            "tokens",
            format!("/detokenize takes at most {MAX_DETOKENIZE} tokens"),
        ));
    }
    let ids = token_ids(v, "tokens", st.vocab)?;
    let bytes = st.tok.detokenize(&ids, false, true);
    let content = String::from_utf8_lossy(&bytes).into_owned();
    Ok(Json(json!({ "content": content })).into_response())
}
