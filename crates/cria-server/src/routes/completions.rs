//! POST /v1/completions, and the prompt inputs it shares with /v1/embeddings.

use super::generate::{generate, Generation};
use super::{token_ids, AppState};
use crate::access::AccessLog;
use crate::error::ApiError;
use crate::params::{self, get, opt_bool, Obj};
use axum::response::Response;
use serde_json::Value;
use std::sync::Arc;

/// `prompt` / `input`: a string, a list of strings, a list of ids, or a list of lists of ids.
fn prompt_inputs(
    st: &AppState,
    v: Option<&Value>,
    param: &str,
) -> Result<Vec<(Vec<u32>, String)>, ApiError> {
    let v = v.ok_or_else(|| ApiError::param(param, format!("'{param}' is required")))?;
    let text = |s: &str| (st.tok.encode(s, true, true), s.to_string());
    let ids = |v: &Value| -> Result<(Vec<u32>, String), ApiError> {
        // Checked before the ids are read and their text made (a body may hold millions).
        if v.as_array().is_some_and(|a| a.len() > st.ctx_size) {
            return Err(ApiError::param(
                param,
                format!(
                    "a prompt of token ids is longer than the context ({})",
                    st.ctx_size
                ),
            )
            .with_code("context_length_exceeded"));
        }
        let ids = token_ids(v, param, st.vocab)?;
        let t = String::from_utf8_lossy(&st.tok.detokenize(&ids, false, true)).into_owned();
        Ok((ids, t))
    };
    let bad = || {
        ApiError::param(
            param,
            format!("'{param}' must be a string, a list of strings, a list of token ids or a list of lists of token ids"),
        )
    };
    let out = match v {
        Value::String(s) => vec![text(s)],
        Value::Array(a) if a.is_empty() => {
            return Err(ApiError::param(param, format!("'{param}' is empty")))
        }
        Value::Array(a) if !a[0].is_number() && a.len() > params::MAX_N as usize => {
            return Err(ApiError::param(
                param,
                format!("at most {} inputs per request", params::MAX_N),
            ))
        }
        Value::Array(a) => match &a[0] {
            Value::String(_) => a
                .iter()
                .map(|x| x.as_str().map(text).ok_or_else(bad))
                .collect::<Result<_, _>>()?,
            Value::Number(_) => vec![ids(v)?],
            Value::Array(_) => a.iter().map(ids).collect::<Result<_, _>>()?,
            _ => return Err(bad()),
        },
        _ => return Err(bad()),
    };
    if out.len() > params::MAX_N as usize {
        return Err(ApiError::param(
            param,
            format!("at most {} inputs per request", params::MAX_N),
        ));
    }
    Ok(out)
}

/// [`prompt_inputs`] off the async threads (a long text takes a while to tokenize).
pub(super) async fn tokenize_inputs(
    st: &Arc<AppState>,
    v: Option<Value>,
    param: &'static str,
) -> Result<Vec<(Vec<u32>, String)>, ApiError> {
    let st = st.clone();
    tokio::task::spawn_blocking(move || prompt_inputs(&st, v.as_ref(), param))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
}

pub(super) async fn completions(
    st: Arc<AppState>,
    log: Arc<AccessLog>,
    o: Obj,
) -> Result<Response, ApiError> {
    let mut c = params::common(&o, false, st.ctx_size, st.vocab)?;
    let lora = st.adapters.choose(&o, &st.names)?;
    st.compile_grammar(&mut c).await?;
    let echo = opt_bool(&o, "echo")?.unwrap_or(false);
    let inputs = tokenize_inputs(&st, get(&o, "prompt").cloned(), "prompt").await?;
    if inputs.len() * c.n > params::MAX_N as usize {
        return Err(ApiError::param(
            "n",
            format!("prompts x n is at most {}", params::MAX_N),
        ));
    }
    params::logprob_budget(&c, inputs.len() * c.n, false, st.ctx_size)?;
    for (p, _) in &inputs {
        st.check_prompt(p, "prompt")?;
    }
    let (prompts, texts): (Vec<_>, Vec<_>) = inputs.into_iter().unzip();
    let g = Generation {
        prompts: prompts.into_iter().map(Arc::new).collect(),
        echo: if echo { texts } else { vec![] },
        c,
        chat: false,
        model: st.names[0].clone(),
        tools: None,
        triggers: vec![],
        lora,
    };
    generate(&st, g, log).await
}
