//! Request fields -> generation parameters, with OpenAI's ranges and a 400 naming the field for
//! anything wrong. Requests are read as `serde_json::Value` rather than typed structs so that
//! each error can say which field is at fault and what it accepts.

use crate::error::ApiError;
use cria_engine::grammar::{json_schema_to_gbnf, Grammar};
use cria_engine::stop::{StopLimitError, StopLimits};
use cria_engine::SamplerConfig;
use serde_json::{Map, Value};

pub type Obj = Map<String, Value>;

/// The body as a JSON object, or a 400 saying why not.
pub fn parse_body(body: &[u8]) -> Result<Obj, ApiError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad(format!(
            "the request body is not valid JSON: {e} (line {}, column {})",
            e.line(),
            e.column()
        ))
    })?;
    match v {
        Value::Object(o) => Ok(o),
        _ => Err(ApiError::bad("the request body must be a JSON object")),
    }
}

/// A field, with `null` read as absent (as OpenAI does).
pub fn get<'a>(o: &'a Obj, key: &str) -> Option<&'a Value> {
    o.get(key).filter(|v| !v.is_null())
}

pub fn opt_bool(o: &Obj, key: &str) -> Result<Option<bool>, ApiError> {
    match get(o, key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(ApiError::param(key, format!("'{key}' must be a boolean"))),
    }
}

/// An integer in `lo..=hi`.
pub fn opt_int(o: &Obj, key: &str, lo: i64, hi: i64) -> Result<Option<i64>, ApiError> {
    let Some(v) = get(o, key) else {
        return Ok(None);
    };
    let range = || format!("'{key}' must be an integer from {lo} to {hi}");
    let x = match v {
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => i,
            // 3.0 is fine (some clients send floats); 3.5 or 1e30 are not.
            (None, Some(f)) if f.fract() == 0.0 && f.abs() < 9e15 => f as i64,
            _ => return Err(ApiError::param(key, range())),
        },
        _ => return Err(ApiError::param(key, range())),
    };
    if x < lo || x > hi {
        return Err(ApiError::param(key, format!("{}, got {x}", range())));
    }
    Ok(Some(x))
}

/// A finite number in `lo..=hi`.
pub fn opt_num(o: &Obj, key: &str, lo: f64, hi: f64) -> Result<Option<f32>, ApiError> {
    let Some(v) = get(o, key) else {
        return Ok(None);
    };
    let x = v
        .as_f64()
        .ok_or_else(|| ApiError::param(key, format!("'{key}' must be a number")))?;
    if !(lo..=hi).contains(&x) {
        return Err(ApiError::param(
            key,
            format!("'{key}' must be from {lo} to {hi}, got {x}"),
        ));
    }
    Ok(Some(x as f32))
}

pub fn opt_str<'a>(o: &'a Obj, key: &str) -> Result<Option<&'a str>, ApiError> {
    match get(o, key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ApiError::param(key, format!("'{key}' must be a string"))),
    }
}

/// Request fields OpenAI defines (or llama-server adds) that are handled by name, or accepted
/// and ignored; any other field is tried as one of cria's sampler options.
const KNOWN: &[&str] = &[
    "model",
    "messages",
    "prompt",
    "input",
    "stream",
    "stream_options",
    "n",
    "max_tokens",
    "max_completion_tokens",
    "n_predict",
    "stop",
    "seed",
    "temperature",
    "top_p",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "response_format",
    "grammar",
    "json_schema",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "functions",
    "function_call",
    "user",
    "store",
    "metadata",
    "service_tier",
    "echo",
    "suffix",
    "best_of",
    "ignore_eos",
    "cache_prompt",
    "encoding_format",
    "dimensions",
    "add_generation_prompt",
    "chat_template_kwargs",
    "reasoning_effort",
    "modalities",
    "lora",
];

/// What a chat or completion request asks of the generation, besides its prompt.
pub struct Common {
    pub n: usize,
    pub stream: bool,
    pub include_usage: bool,
    pub max_tokens: Option<usize>,
    pub stop: Vec<String>,
    pub sampler: SamplerConfig,
    /// Whether `seed` was given (without it each choice gets its own random seed).
    pub seeded: bool,
    pub logprobs: Option<usize>,
    /// The compiled grammar (set by the server once `grammar_request` is compiled).
    pub grammar: Option<Grammar>,
    pub grammar_request: Option<GrammarRequest>,
    pub ignore_eos: bool,
}

/// Most choices per request (OpenAI's limit); also most prompts or embedding inputs, and most
/// prompts x choices.
pub const MAX_N: i64 = 128;
/// Most stop strings, and bytes in each.
pub const STOP_LIMITS: StopLimits = StopLimits {
    strings: 16,
    bytes: 1024,
};
/// Most `logit_bias` entries.
pub const MAX_LOGIT_BIAS: usize = 1024;
/// Most values in a list given to a sampler option (`samplers`, `dry_sequence_breakers`, ...).
pub const MAX_OPTION_VALUES: usize = 256;
/// Most log-prob entries one answer may hold: choices x max_tokens x (1 + top_logprobs). A
/// non-streamed answer keeps them all until it is complete, a stream whose client reads slowly
/// queues them, and each becomes a JSON object of a few hundred bytes (131072: some 40 MB at
/// most; a 4096-token answer with top_logprobs 20 fits).
pub const MAX_LOGPROB_ENTRIES: usize = 1 << 17;

/// Fields shared by /v1/chat/completions and /v1/completions. `chat` selects how `logprobs`
/// reads (a boolean plus `top_logprobs` for chat, a count for completions).
pub fn common(o: &Obj, chat: bool, ctx_size: usize, vocab: usize) -> Result<Common, ApiError> {
    let n = opt_int(o, "n", 1, MAX_N)?.unwrap_or(1) as usize;
    let stream = opt_bool(o, "stream")?.unwrap_or(false);
    let include_usage = match get(o, "stream_options") {
        None => false,
        Some(Value::Object(so)) => opt_bool(so, "include_usage")
            .map_err(|_| {
                ApiError::param(
                    "stream_options.include_usage",
                    "'stream_options.include_usage' must be a boolean",
                )
            })?
            .unwrap_or(false),
        Some(_) => {
            return Err(ApiError::param(
                "stream_options",
                "'stream_options' must be an object",
            ))
        }
    };
    let ctx = ctx_size as i64;
    let mut max_tokens = None;
    for key in ["max_completion_tokens", "max_tokens", "n_predict"] {
        if let Some(m) = opt_int(o, key, if key == "n_predict" { -1 } else { 1 }, ctx)? {
            if m >= 0 {
                max_tokens = Some(m as usize);
            }
            break;
        }
    }
    let stop = match get(o, "stop") {
        None => vec![],
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .map(|s| s.as_str().map(String::from))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                ApiError::param("stop", "'stop' must be a string or a list of strings")
            })?,
        Some(_) => {
            return Err(ApiError::param(
                "stop",
                "'stop' must be a string or a list of strings",
            ))
        }
    };
    let StopLimits { strings, bytes } = STOP_LIMITS;
    STOP_LIMITS.check(&stop).map_err(|e| {
        let msg = match e {
            StopLimitError::TooMany { .. } => format!("'stop' may hold at most {strings} strings"),
            StopLimitError::TooLong { .. } => {
                format!("a stop string may be at most {bytes} bytes long")
            }
        };
        ApiError::param("stop", msg)
    })?;
    let mut sc = SamplerConfig::default();
    if let Some(t) = opt_num(o, "temperature", 0.0, 2.0)? {
        sc.temperature = t;
    }
    if let Some(p) = opt_num(o, "top_p", 0.0, 1.0)? {
        sc.top_p = p;
    }
    if let Some(p) = opt_num(o, "presence_penalty", -2.0, 2.0)? {
        sc.presence_penalty = p;
    }
    if let Some(p) = opt_num(o, "frequency_penalty", -2.0, 2.0)? {
        sc.frequency_penalty = p;
    }
    let seeded = match get(o, "seed") {
        None => false,
        Some(v) => {
            // Any 64-bit integer; -1 asks for a random seed, as in llama.cpp.
            sc.seed = match (v.as_u64(), v.as_i64()) {
                (Some(u), _) => u,
                (None, Some(-1)) => cria_engine::sampler::random_seed(),
                (None, Some(i)) => i as u64,
                _ => {
                    return Err(ApiError::param(
                        "seed",
                        "'seed' must be an integer (64-bit)",
                    ))
                }
            };
            v.as_i64() != Some(-1)
        }
    };
    if let Some(b) = get(o, "logit_bias") {
        let Value::Object(m) = b else {
            return Err(ApiError::param(
                "logit_bias",
                "'logit_bias' must map token ids to biases",
            ));
        };
        if m.len() > MAX_LOGIT_BIAS {
            return Err(ApiError::param(
                "logit_bias",
                format!("'logit_bias' may hold at most {MAX_LOGIT_BIAS} tokens"),
            ));
        }
        for (k, v) in m {
            let id: u32 = k.trim().parse().map_err(|_| not_a_token(k, vocab))?;
            let bias = v
                .as_f64()
                .filter(|b| (-100.0..=100.0).contains(b))
                .ok_or_else(|| {
                    ApiError::param(
                        "logit_bias",
                        format!("logit_bias[{k}] must be a number from -100 to 100"),
                    )
                })?;
            // -100 bans the token outright, as OpenAI documents.
            let bias = if bias <= -100.0 {
                f32::NEG_INFINITY
            } else {
                bias as f32
            };
            sc.logit_bias.push((id, bias));
        }
        if let Some(id) = sc.bias_outside_vocab(vocab) {
            let k = m.keys().find(|k| k.trim().parse() == Ok(id));
            return Err(not_a_token(k.map_or("", |k| k.as_str()), vocab));
        }
    }
    // Every other sampler option of the engine's table (`SamplerConfig::options`), by any of its
    // names with `_` for `-` (top_k, min_p, typical, repeat_penalty, mirostat_tau, ...), through
    // `SamplerConfig::set`: a new option needs nothing here. The fields above stay OpenAI's:
    // temperature (0 to 2), top_p, presence/frequency_penalty (-2 to 2) with OpenAI's ranges and
    // wording; seed (a JSON integer; whether it was given decides per-choice seeds); logit_bias
    // (an object of token id -> bias, -100 bans, ids checked against the vocabulary).
    for (k, v) in o {
        if KNOWN.contains(&k.as_str()) || v.is_null() {
            continue;
        }
        let values: Vec<String> = match v {
            Value::Number(x) => vec![x.to_string()],
            Value::String(s) => vec![s.clone()],
            Value::Array(a) if a.len() > MAX_OPTION_VALUES => {
                return Err(ApiError::param(
                    k,
                    format!("'{k}' may hold at most {MAX_OPTION_VALUES} values"),
                ))
            }
            Value::Array(a) => {
                let mut vs = vec!["none".to_string()]; // a list replaces the default list
                for x in a {
                    match x {
                        Value::String(s) => vs.push(s.clone()),
                        Value::Number(x) => vs.push(x.to_string()),
                        _ => return Err(ApiError::param(k, format!("'{k}': unexpected value"))),
                    }
                }
                vs
            }
            Value::Bool(b) => vec![(if *b { "1" } else { "0" }).to_string()],
            _ => continue,
        };
        let mut trial = sc.clone();
        for x in &values {
            match trial.set(k, x) {
                Ok(()) => {}
                // Unknown fields are ignored, as llama-server and most OpenAI-compatible
                // servers do (clients send vendor fields).
                Err(e) if e.starts_with("unknown sampler option") => break,
                Err(e) => return Err(ApiError::param(k, e)),
            }
        }
        sc = trial;
    }
    sc.validate().map_err(ApiError::bad)?;

    let logprobs = if chat {
        let on = opt_bool(o, "logprobs")?.unwrap_or(false);
        let top = opt_int(o, "top_logprobs", 0, 20)?;
        if top.is_some() && !on {
            return Err(ApiError::param(
                "top_logprobs",
                "'top_logprobs' needs 'logprobs': true",
            ));
        }
        on.then_some(top.unwrap_or(0) as usize)
    } else {
        opt_int(o, "logprobs", 0, 20)?.map(|k| k as usize)
    };
    // Checked here (a 400 before anything is queued), compiled by the caller off the async threads.
    let grammar_request = grammar_of(o)?;
    let ignore_eos = opt_bool(o, "ignore_eos")?.unwrap_or(false);
    let c = Common {
        n,
        stream,
        include_usage,
        max_tokens,
        stop,
        sampler: sc,
        seeded,
        logprobs,
        grammar: None,
        grammar_request,
        ignore_eos,
    };
    logprob_budget(&c, n, chat, ctx_size)?;
    Ok(c)
}

/// A `logit_bias` key that is no token id of the model.
fn not_a_token(k: &str, vocab: usize) -> ApiError {
    ApiError::param(
        "logit_bias",
        format!("logit_bias: {k:?} is not a token id of this model (0..{vocab})"),
    )
}

/// `choices` x max_tokens x (1 + top) log-prob entries at most [`MAX_LOGPROB_ENTRIES`].
pub fn logprob_budget(
    c: &Common,
    choices: usize,
    chat: bool,
    ctx_size: usize,
) -> Result<(), ApiError> {
    let Some(k) = c.logprobs else {
        return Ok(());
    };
    let tokens = c.max_tokens.unwrap_or(ctx_size);
    if choices.saturating_mul(tokens).saturating_mul(k + 1) <= MAX_LOGPROB_ENTRIES {
        return Ok(());
    }
    let field = if chat { "top_logprobs" } else { "logprobs" };
    Err(ApiError::param(
        field,
        format!(
            "choices x max_tokens x (1 + {field}) = {choices} x {tokens} x {} is more log-probs \
             than one answer may hold ({MAX_LOGPROB_ENTRIES}); lower one of them",
            k + 1
        ),
    ))
}

/// A grammar a request asks for, not yet compiled: reading the fields is cheap, compiling
/// ([`GrammarRequest::compile`]) may not be, so the server runs it off the async threads.
pub enum GrammarRequest {
    /// GBNF text (`grammar`).
    Gbnf(String),
    /// A JSON schema, and the field it came from.
    Schema(Value, &'static str),
    /// Any JSON value (`response_format` json_object without a schema).
    AnyJson,
}

impl GrammarRequest {
    /// Parses the grammar (or converts the schema and parses the result). Anything the request
    /// gave that does not compile is a 400 naming its field: a schema whose generated grammar
    /// does not parse is the schema's fault as far as the client can tell.
    pub fn compile(self) -> Result<Grammar, ApiError> {
        match self {
            GrammarRequest::Gbnf(g) => {
                Grammar::parse(&g).map_err(|e| ApiError::param("grammar", format!("grammar: {e}")))
            }
            GrammarRequest::Schema(schema, param) => {
                let gbnf = json_schema_to_gbnf(&schema)
                    .map_err(|e| ApiError::param(param, format!("unsupported JSON schema: {e}")))?;
                Grammar::parse(&gbnf).map_err(|e| {
                    ApiError::param(
                        param,
                        format!("unsupported JSON schema: its grammar does not parse: {e}"),
                    )
                })
            }
            GrammarRequest::AnyJson => Ok(Grammar::any_json()),
        }
    }
}

/// `response_format` (json_object, json_schema), or llama-server's `grammar` / `json_schema`.
pub fn grammar_of(o: &Obj) -> Result<Option<GrammarRequest>, ApiError> {
    if let Some(g) = opt_str(o, "grammar")? {
        if !g.trim().is_empty() {
            return Ok(Some(GrammarRequest::Gbnf(g.to_string())));
        }
    }
    if let Some(s) = get(o, "json_schema") {
        return Ok(Some(GrammarRequest::Schema(s.clone(), "json_schema")));
    }
    let Some(rf) = get(o, "response_format") else {
        return Ok(None);
    };
    let bad = || {
        ApiError::param(
            "response_format",
            "'response_format' must be {\"type\": \"text\"}, {\"type\": \"json_object\"} or {\"type\": \"json_schema\", \"json_schema\": {\"schema\": ...}}",
        )
    };
    let Value::Object(rf) = rf else {
        return Err(bad());
    };
    match rf.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(match rf.get("schema") {
            // llama-server accepts a schema here too.
            Some(s) if !s.is_null() => GrammarRequest::Schema(s.clone(), "response_format.schema"),
            _ => GrammarRequest::AnyJson,
        })),
        Some("json_schema") => {
            let js = rf.get("json_schema").ok_or_else(bad)?;
            // {"name", "schema", "strict"} as OpenAI sends it; a bare schema is taken too.
            let schema = js.get("schema").unwrap_or(js);
            Ok(Some(GrammarRequest::Schema(
                schema.clone(),
                "response_format.json_schema",
            )))
        }
        _ => Err(bad()),
    }
}

/// The `model` field: any string (or none) is accepted, as llama-server does; a server has one
/// model and answers with its own name.
pub fn check_model(o: &Obj) -> Result<(), ApiError> {
    match get(o, "model") {
        None | Some(Value::String(_)) => Ok(()),
        Some(_) => Err(ApiError::param("model", "'model' must be a string")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cria_engine::sampler::OptionValue;

    /// Every option of the engine's table is a request field under each of its names (with `_`
    /// for `-`), read through `SamplerConfig::set`, unless it is one of the OpenAI fields.
    #[test]
    fn every_sampler_option_is_a_request_field() {
        for o in SamplerConfig::options() {
            let (value, texts) = match o.value() {
                OptionValue::Number | OptionValue::Count | OptionValue::Seed => {
                    (Value::from(1), vec!["1"])
                }
                OptionValue::LogitBias => (serde_json::json!(["3+1"]), vec!["none", "3+1"]),
                OptionValue::DryBreaker => (serde_json::json!(["x"]), vec!["none", "x"]),
            };
            for name in o.names {
                let key = name.replace('-', "_");
                if KNOWN.contains(&key.as_str()) {
                    continue;
                }
                let mut want = SamplerConfig::default();
                for t in &texts {
                    want.set(name, t).unwrap();
                }
                let body = Obj::from_iter([(key.clone(), value.clone())]);
                let c = common(&body, false, 512, 100).unwrap_or_else(|e| panic!("{key}: {e:?}"));
                assert_eq!(c.sampler, want, "{key}");
            }
        }
    }
}
