//! POST /v1/embeddings: one embedding job per input, floats or base64.

use super::completions::tokenize_inputs;
use super::AppState;
use crate::access::AccessLog;
use crate::error::ApiError;
use crate::params::{get, opt_str, Obj};
use crate::sink::EmbedSink;
use axum::response::{IntoResponse, Response};
use axum::Json;
use cria_engine::scheduler::{EmbedJob, Request, STOPPED};
use serde_json::{json, Value};
use std::sync::Arc;
use tokio::sync::mpsc::unbounded_channel;

pub(super) async fn embeddings(
    st: Arc<AppState>,
    log: Arc<AccessLog>,
    o: Obj,
) -> Result<Response, ApiError> {
    let base64 = match opt_str(&o, "encoding_format")? {
        None | Some("float") => false,
        Some("base64") => true,
        Some(f) => {
            return Err(ApiError::param(
                "encoding_format",
                format!("'encoding_format' must be 'float' or 'base64', not '{f}'"),
            ))
        }
    };
    st.adapters.refuse_for_embeddings(&o, &st.names)?;
    let inputs = tokenize_inputs(&st, get(&o, "input").cloned(), "input").await?;
    let mut ids = Vec::with_capacity(inputs.len());
    for (p, _) in inputs {
        if p.is_empty() {
            return Err(ApiError::param("input", "an input is empty"));
        }
        if p.len() > st.ctx_size {
            return Err(ApiError::param(
                "input",
                format!(
                    "an input is {} tokens but the context holds {}; cria never truncates",
                    p.len(),
                    st.ctx_size
                ),
            )
            .with_code("context_length_exceeded"));
        }
        ids.push(p);
    }
    let n_tokens: usize = ids.iter().map(Vec::len).sum();
    log.tokens(n_tokens, 0);
    // One job per input: each takes a slot and is read within the steps' token budget,
    // beside the generations; if this client goes away, `rx` is dropped and so are they.
    let (tx, mut rx) = unbounded_channel();
    let count = ids.len();
    for (index, input) in ids.into_iter().enumerate() {
        st.engine
            .submit(Request::Embed(EmbedJob {
                input,
                sink: EmbedSink {
                    tx: tx.clone(),
                    index,
                },
            }))
            .map_err(ApiError::unavailable)?;
    }
    drop(tx);
    let mut vecs: Vec<Vec<f32>> = vec![Vec::new(); count];
    for _ in 0..count {
        let (i, v) = rx
            .recv()
            .await
            .ok_or_else(|| ApiError::unavailable(STOPPED))?;
        vecs[i] = v.map_err(ApiError::internal)?;
    }
    let data: Vec<Value> = vecs
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let e = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                json!(base64_encode(&bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": i, "embedding": e})
        })
        .collect();
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "model": st.names[0],
        "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens},
    }))
    .into_response())
}

/// Standard base64 with padding (the OpenAI client's default embedding encoding).
fn base64_encode(b: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::with_capacity(b.len().div_ceil(3) * 4);
    for c in b.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for k in 0..4 {
            if k <= c.len() {
                s.push(A[(n >> (18 - 6 * k) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64_encode(i.as_bytes()), o);
        }
    }
}
