//! Training data: JSONL files (one JSON object per line) read into [`Example`]s, and an example
//! rendered into token ids with a loss mask.
//!
//! Shapes, decided by the keys present (other keys are ignored, as dataset columns often are):
//! - `{"messages": [{"role", "content"}, ...]}`: a conversation; roles system, user, assistant,
//!   tool; content a string or a list of `{"type": "text", "text"}` parts. Loss on the assistant
//!   turns only (TRL's `assistant_only_loss`).
//! - `{"prompt", "completion"}` (strings): loss on the completion (and EOS).
//! - `{"instruction", "input"?, "output"}` (Alpaca): a user turn (instruction, then a blank line
//!   and the input when it is not empty) and an assistant turn, rendered as a conversation.
//! - `{"text"}`: loss on everything (and EOS).
//!
//! A line that does not parse, has no known shape (or two), or is empty (no text, an empty
//! conversation, one without an assistant turn) is a [`LineError`] with its 1-based line number;
//! reading collects them beside the examples, so the caller can skip them with a count or stop at
//! the first (`Dataset::strict`). Blank lines are skipped, as the Python JSON-lines readers do.
//! Lines longer than [`Limits::max_line_bytes`] are errors (the reader never holds more than that
//! of one line); more than [`Limits::max_lines`] lines stop the read.
//!
//! Rendering ([`render`]) takes the chat template and the tokenizer as closures, so this crate
//! needs neither (they live in cria-engine and cria-tokenizer).

use serde_json::{Map, Value};
use std::io::{BufRead, BufReader};
use std::path::Path;
use thiserror::Error;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
    Tool,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub role: Role,
    pub content: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Example {
    Messages(Vec<Message>),
    PromptCompletion {
        prompt: String,
        completion: String,
    },
    Alpaca {
        instruction: String,
        input: String,
        output: String,
    },
    Text(String),
    /// Pre-tokenized: `{"input_ids": [...], "labels": [...]}` (labels optional; HF's convention:
    /// as long as input_ids, unshifted, -100 = not trained; absent = every token trained).
    Tokens {
        input_ids: Vec<u32>,
        labels: Option<Vec<i32>>,
    },
}

impl Example {
    /// The conversation a chat-rendered example is (Alpaca's is a user turn and an assistant turn).
    pub fn messages(&self) -> Option<Vec<Message>> {
        match self {
            Example::Messages(m) => Some(m.clone()),
            Example::Alpaca {
                instruction,
                input,
                output,
            } => {
                let user = if input.is_empty() {
                    instruction.clone()
                } else {
                    format!("{instruction}\n\n{input}")
                };
                Some(vec![
                    Message {
                        role: Role::User,
                        content: user,
                    },
                    Message {
                        role: Role::Assistant,
                        content: output.clone(),
                    },
                ])
            }
            _ => None,
        }
    }
}

/// What went wrong on one line.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum LineErrorKind {
    #[error("not valid JSON: {0}")]
    Json(String),
    #[error("not UTF-8")]
    NotUtf8,
    #[error("longer than {0} bytes")]
    TooLong(usize),
    #[error("unknown shape: {0}")]
    UnknownShape(String),
    #[error("{0}")]
    BadField(String),
    #[error("empty: {0}")]
    Empty(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("line {line}: {kind}")]
pub struct LineError {
    /// 1-based.
    pub line: usize,
    pub kind: LineErrorKind,
}

#[derive(Debug, Error)]
pub enum DataError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("more than {0} lines")]
    TooManyLines(usize),
    #[error("no training examples ({0} lines with errors)")]
    NoExamples(usize),
    #[error(transparent)]
    Line(#[from] LineError),
}

/// Bounds on what a read accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_line_bytes: usize,
    pub max_lines: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_line_bytes: 8 << 20,
            max_lines: 10_000_000,
        }
    }
}

/// The examples of a file, each with its line number, and the lines that were not examples.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Dataset {
    pub examples: Vec<(usize, Example)>,
    pub errors: Vec<LineError>,
}

impl Dataset {
    /// The examples if no line had an error, else the first error.
    pub fn strict(self) -> Result<Vec<(usize, Example)>, DataError> {
        match self.errors.into_iter().next() {
            Some(e) => Err(e.into()),
            None => Ok(self.examples),
        }
    }
}

/// Reads a JSONL file; a file with no example at all is an error (its line errors are in the
/// count).
pub fn read_jsonl_file(path: &Path, limits: &Limits) -> Result<Dataset, DataError> {
    let io = |source| DataError::Io {
        path: path.display().to_string(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let ds = read_jsonl(BufReader::new(file), limits).map_err(|e| match e {
        DataError::Io { source, .. } => io(source),
        e => e,
    })?;
    if ds.examples.is_empty() {
        return Err(DataError::NoExamples(ds.errors.len()));
    }
    Ok(ds)
}

/// Reads JSONL from any reader (an empty input gives an empty dataset).
pub fn read_jsonl(mut reader: impl BufRead, limits: &Limits) -> Result<Dataset, DataError> {
    let mut ds = Dataset::default();
    let mut buf = Vec::new();
    let mut line = 0usize;
    while let Some(too_long) =
        next_line(&mut reader, limits.max_line_bytes, &mut buf).map_err(|source| DataError::Io {
            path: "<input>".into(),
            source,
        })?
    {
        line += 1;
        if line > limits.max_lines {
            return Err(DataError::TooManyLines(limits.max_lines));
        }
        let kind = if too_long {
            LineErrorKind::TooLong(limits.max_line_bytes)
        } else {
            let bytes = buf.strip_suffix(b"\r").unwrap_or(&buf);
            let bytes = if line == 1 {
                bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes)
            } else {
                bytes
            };
            match std::str::from_utf8(bytes) {
                Err(_) => LineErrorKind::NotUtf8,
                Ok(s) if s.trim().is_empty() => continue,
                Ok(s) => match parse_line(s) {
                    Ok(ex) => {
                        ds.examples.push((line, ex));
                        continue;
                    }
                    Err(kind) => kind,
                },
            }
        };
        ds.errors.push(LineError { line, kind });
    }
    Ok(ds)
}

/// The next line into `buf` (without its '\n'); `Some(true)` when it was longer than `max` (then
/// `buf` is empty and the rest of the line was skipped); `None` at the end.
fn next_line(r: &mut impl BufRead, max: usize, buf: &mut Vec<u8>) -> std::io::Result<Option<bool>> {
    buf.clear();
    let mut too_long = false;
    let mut any = false;
    loop {
        let avail = r.fill_buf()?;
        if avail.is_empty() {
            return Ok(any.then_some(too_long));
        }
        any = true;
        let (chunk, used, done) = match avail.iter().position(|&b| b == b'\n') {
            Some(i) => (&avail[..i], i + 1, true),
            None => (avail, avail.len(), false),
        };
        if !too_long {
            if buf.len() + chunk.len() > max {
                too_long = true;
                buf.clear();
            } else {
                buf.extend_from_slice(chunk);
            }
        }
        r.consume(used);
        if done {
            return Ok(Some(too_long));
        }
    }
}

const SHAPES: [(&str, &[&str]); 5] = [
    ("messages", &["messages"]),
    ("prompt/completion", &["prompt", "completion"]),
    (
        "instruction/input/output",
        &["instruction", "input", "output"],
    ),
    ("text", &["text"]),
    ("input_ids/labels", &["input_ids"]),
];

/// One line's JSON into an example.
pub fn parse_line(s: &str) -> Result<Example, LineErrorKind> {
    let v: Value = serde_json::from_str(s).map_err(|e| LineErrorKind::Json(e.to_string()))?;
    let Value::Object(obj) = v else {
        return Err(LineErrorKind::UnknownShape(format!(
            "{}, not an object",
            kind_of(&v)
        )));
    };
    let found: Vec<&str> = SHAPES
        .iter()
        .filter(|(_, keys)| keys.iter().any(|k| obj.contains_key(*k)))
        .map(|(name, _)| *name)
        .collect();
    match found[..] {
        [] => {
            let keys: Vec<&str> = obj.keys().take(8).map(String::as_str).collect();
            Err(LineErrorKind::UnknownShape(format!(
                "keys {keys:?}; expected one of \"messages\", \"prompt\"+\"completion\", \
                 \"instruction\"+\"output\" (+\"input\"), \"text\", \"input_ids\" (+\"labels\")"
            )))
        }
        [shape] => parse_shape(shape, &obj),
        _ => Err(LineErrorKind::UnknownShape(format!(
            "keys of several shapes ({})",
            found.join(", ")
        ))),
    }
}

fn parse_shape(shape: &str, obj: &Map<String, Value>) -> Result<Example, LineErrorKind> {
    match shape {
        "messages" => parse_messages(&obj["messages"]),
        "prompt/completion" => {
            let prompt = string_field(obj, "prompt", true)?;
            let completion = string_field(obj, "completion", true)?;
            if completion.trim().is_empty() {
                return Err(LineErrorKind::Empty("\"completion\" is empty".into()));
            }
            Ok(Example::PromptCompletion { prompt, completion })
        }
        "instruction/input/output" => {
            let instruction = string_field(obj, "instruction", true)?;
            let output = string_field(obj, "output", true)?;
            let input = string_field(obj, "input", false)?;
            for (name, v) in [("instruction", &instruction), ("output", &output)] {
                if v.trim().is_empty() {
                    return Err(LineErrorKind::Empty(format!("\"{name}\" is empty")));
                }
            }
            Ok(Example::Alpaca {
                instruction,
                input,
                output,
            })
        }
        "input_ids/labels" => parse_tokens(obj),
        _ => {
            let text = string_field(obj, "text", true)?;
            if text.trim().is_empty() {
                return Err(LineErrorKind::Empty("\"text\" is empty".into()));
            }
            Ok(Example::Text(text))
        }
    }
}

/// `{"input_ids": [...], "labels": [...]}`: ids are u32, labels i32 (-100 or an id), same length.
fn parse_tokens(obj: &Map<String, Value>) -> Result<Example, LineErrorKind> {
    let ints = |name: &str, v: &Value| -> Result<Vec<i64>, LineErrorKind> {
        let Value::Array(a) = v else {
            return Err(LineErrorKind::BadField(format!(
                "\"{name}\" must be an array of integers, not {}",
                kind_of(v)
            )));
        };
        a.iter()
            .enumerate()
            .map(|(i, x)| {
                x.as_i64().ok_or_else(|| {
                    LineErrorKind::BadField(format!(
                        "\"{name}\"[{i}] is {}, not an integer",
                        kind_of(x)
                    ))
                })
            })
            .collect()
    };
    let ids = ints("input_ids", &obj["input_ids"])?;
    if ids.is_empty() {
        return Err(LineErrorKind::Empty("\"input_ids\" is empty".into()));
    }
    let input_ids = ids
        .iter()
        .enumerate()
        .map(|(i, &x)| {
            u32::try_from(x).map_err(|_| {
                LineErrorKind::BadField(format!("\"input_ids\"[{i}] = {x} is not a token id"))
            })
        })
        .collect::<Result<Vec<u32>, _>>()?;
    let labels = match obj.get("labels") {
        None | Some(Value::Null) => None,
        Some(v) => {
            let l = ints("labels", v)?;
            if l.len() != input_ids.len() {
                return Err(LineErrorKind::BadField(format!(
                    "\"labels\" has {} values, \"input_ids\" {} (HF labels are unshifted, one \
                     per input id)",
                    l.len(),
                    input_ids.len()
                )));
            }
            let l = l
                .iter()
                .enumerate()
                .map(|(i, &x)| match i32::try_from(x) {
                    Ok(x) if x == IGNORE || x >= 0 => Ok(x),
                    _ => Err(LineErrorKind::BadField(format!(
                        "\"labels\"[{i}] = {x}: a token id or -100"
                    ))),
                })
                .collect::<Result<Vec<i32>, _>>()?;
            Some(l)
        }
    };
    Ok(Example::Tokens { input_ids, labels })
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A string field; absent is an error when `required`, else "".
fn string_field(
    obj: &Map<String, Value>,
    name: &str,
    required: bool,
) -> Result<String, LineErrorKind> {
    match obj.get(name) {
        Some(Value::String(s)) => Ok(s.clone()),
        None if !required => Ok(String::new()),
        None => Err(LineErrorKind::BadField(format!("missing \"{name}\""))),
        Some(v) => Err(LineErrorKind::BadField(format!(
            "\"{name}\" must be a string, not {}",
            kind_of(v)
        ))),
    }
}

fn parse_messages(v: &Value) -> Result<Example, LineErrorKind> {
    let Value::Array(items) = v else {
        return Err(LineErrorKind::BadField(format!(
            "\"messages\" must be an array, not {}",
            kind_of(v)
        )));
    };
    if items.is_empty() {
        return Err(LineErrorKind::Empty("\"messages\" is empty".into()));
    }
    let mut out = Vec::with_capacity(items.len());
    for (i, m) in items.iter().enumerate() {
        let bad = |why: String| LineErrorKind::BadField(format!("message {i}: {why}"));
        let Value::Object(m) = m else {
            return Err(bad(format!("{}, not an object", kind_of(m))));
        };
        let role = match m.get("role") {
            Some(Value::String(r)) => match r.as_str() {
                "system" => Role::System,
                "user" => Role::User,
                "assistant" => Role::Assistant,
                "tool" => Role::Tool,
                other => {
                    return Err(bad(format!(
                        "unknown role {other:?} (system, user, assistant, tool)"
                    )))
                }
            },
            Some(v) => {
                return Err(bad(format!(
                    "\"role\" must be a string, not {}",
                    kind_of(v)
                )))
            }
            None => return Err(bad("missing \"role\"".into())),
        };
        let content = match m.get("content") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(parts)) => text_parts(parts).map_err(bad)?,
            Some(v) => {
                return Err(bad(format!(
                    "\"content\" must be a string or text parts, not {}",
                    kind_of(v)
                )))
            }
            None => return Err(bad("missing \"content\"".into())),
        };
        out.push(Message { role, content });
    }
    if !out.iter().any(|m| m.role == Role::Assistant) {
        return Err(LineErrorKind::Empty(
            "no assistant turn to learn from".into(),
        ));
    }
    Ok(Example::Messages(out))
}

/// OpenAI-style content parts: only `{"type": "text", "text"}`, concatenated.
fn text_parts(parts: &[Value]) -> Result<String, String> {
    let mut s = String::new();
    for (j, p) in parts.iter().enumerate() {
        match (
            p.get("type").and_then(Value::as_str),
            p.get("text").and_then(Value::as_str),
        ) {
            (Some("text"), Some(t)) => s.push_str(t),
            (Some(t), _) if t != "text" => {
                return Err(format!(
                    "content part {j} has type {t:?}; only text is supported"
                ))
            }
            _ => {
                return Err(format!(
                    "content part {j} is not {{\"type\": \"text\", \"text\": STRING}}"
                ))
            }
        }
    }
    Ok(s)
}

/// Token ids and, per token, whether the loss counts it as a target (HF's labels are the ids with
/// -100 where `mask` is false; the shift to next-token prediction is the loss's business).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tokens {
    pub ids: Vec<u32>,
    pub mask: Vec<bool>,
}

impl Tokens {
    fn push(&mut self, ids: Vec<u32>, train: bool) {
        self.mask.extend(std::iter::repeat(train).take(ids.len()));
        self.ids.extend(ids);
    }

    /// Tokens the loss counts.
    pub fn trained(&self) -> usize {
        self.mask.iter().filter(|&&m| m).count()
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RenderOptions {
    /// Appended (as a target) after a text or a completion that does not already end with it, as
    /// TRL's SFT does. Conversations end their turns through the template.
    pub eos: Option<u32>,
    /// The context length: a longer example is an error.
    pub max_tokens: Option<usize>,
}

#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum RenderError {
    #[error("chat template: {0}")]
    Template(String),
    #[error("tokenizer: {0}")]
    Encode(String),
    #[error(
        "the chat template does not render turn by turn (the conversation up to message {0} is \
         not a prefix of the whole), which assistant-only loss needs"
    )]
    NotPrefix(usize),
    #[error("no assistant turn to learn from")]
    NoAssistant,
    #[error("no token to learn from (the trained text encodes to nothing)")]
    NoTrainedTokens,
    #[error("{tokens} tokens, longer than the context ({max})")]
    TooLong { tokens: usize, max: usize },
}

/// Renders one example into tokens and a loss mask.
///
/// `chat(messages, add_generation_prompt)` is the model's chat template; `encode(text, at_start)`
/// the tokenizer, which must parse the special tokens a template writes as text and decides
/// whether a BOS goes before a text that starts the sequence (`at_start`).
///
/// A conversation is rendered whole, and its assistant spans found by rendering prefixes: turn
/// `i`'s span runs from the end of `chat(messages[..i], true)` to the end of
/// `chat(messages[..=i], false)` (its content and what the template closes it with, e.g. ChatML's
/// `<|im_end|>`), less trailing whitespace (the newline after `<|im_end|>` is not something the
/// model generates; templates written for assistant masks leave it outside `{% generation %}`,
/// unverified here against TRL's). The text is
/// encoded span by span, so token boundaries fall at span boundaries (in chat templates they are
/// special tokens). A prompt and completion are encoded apart for the same reason.
pub fn render<C, E>(
    ex: &Example,
    mut chat: C,
    mut encode: E,
    opts: &RenderOptions,
) -> Result<Tokens, RenderError>
where
    C: FnMut(&[Message], bool) -> Result<String, String>,
    E: FnMut(&str, bool) -> Result<Vec<u32>, String>,
{
    let mut enc = |s: &str, at_start: bool| encode(s, at_start).map_err(RenderError::Encode);
    let mut out = Tokens::default();
    match ex {
        Example::Text(text) => {
            out.push(enc(text, true)?, true);
            push_eos(&mut out, opts.eos);
        }
        Example::PromptCompletion { prompt, completion } => {
            if !prompt.is_empty() {
                out.push(enc(prompt, true)?, false);
            }
            out.push(enc(completion, prompt.is_empty())?, true);
            push_eos(&mut out, opts.eos);
        }
        Example::Tokens { input_ids, labels } => {
            out.ids = input_ids.clone();
            out.mask = match labels {
                Some(l) => l.iter().map(|&x| x != IGNORE).collect(),
                None => vec![true; input_ids.len()],
            };
        }
        Example::Messages(_) | Example::Alpaca { .. } => {
            let msgs = ex.messages().unwrap_or_default();
            let mut render = |m: &[Message], gen: bool| chat(m, gen).map_err(RenderError::Template);
            let full = render(&msgs, false)?;
            let mut spans = Vec::new();
            let mut end = 0usize;
            for i in (0..msgs.len()).filter(|&i| msgs[i].role == Role::Assistant) {
                let pre = render(&msgs[..i], true)?;
                let upto = render(&msgs[..=i], false)?;
                if !upto.starts_with(&pre) || !full.starts_with(&upto) || pre.len() < end {
                    return Err(RenderError::NotPrefix(i));
                }
                // Whitespace the template writes after the turn's end marker is not generated
                // by the model: it stays out of the loss.
                let span_end = pre.len() + upto[pre.len()..].trim_end().len();
                if span_end > pre.len() {
                    spans.push((pre.len(), span_end));
                }
                end = upto.len();
            }
            if spans.is_empty() {
                return Err(RenderError::NoAssistant);
            }
            let mut at = 0;
            for (s, e) in spans {
                if s > at {
                    out.push(enc(&full[at..s], at == 0)?, false);
                }
                out.push(enc(&full[s..e], s == 0)?, true);
                at = e;
            }
            if at < full.len() {
                out.push(enc(&full[at..], false)?, false);
            }
        }
    }
    if out.trained() == 0 {
        return Err(RenderError::NoTrainedTokens);
    }
    if let Some(max) = opts.max_tokens {
        if out.ids.len() > max {
            return Err(RenderError::TooLong {
                tokens: out.ids.len(),
                max,
            });
        }
    }
    Ok(out)
}

fn push_eos(out: &mut Tokens, eos: Option<u32>) {
    if let Some(eos) = eos {
        if out.ids.last() != Some(&eos) {
            out.push(vec![eos], true);
        }
    }
}

/// HF's ignore index: a label (or a shifted target) the loss skips.
pub const IGNORE: i32 = -100;

/// HF labels (unshifted, one per token, [`IGNORE`] = not trained) of rendered tokens: the id
/// where the mask trains it.
pub fn labels_of(t: &Tokens) -> Vec<i32> {
    t.ids
        .iter()
        .zip(&t.mask)
        .map(|(&id, &m)| if m { id as i32 } else { IGNORE })
        .collect()
}

/// A training sequence from ids and HF labels: `targets[i] = labels[i + 1]` (the token after
/// position i), the last position untrained, as transformers' causal-LM loss shifts them.
pub fn to_seq(ids: &[u32], labels: &[i32]) -> crate::model::Seq {
    let mut targets: Vec<i32> = labels.iter().skip(1).copied().collect();
    targets.push(IGNORE);
    targets.truncate(ids.len());
    crate::model::Seq {
        tokens: ids.to_vec(),
        targets,
    }
}

/// One example as a training sequence: rendered ([`render`]), labels taken from a pre-tokenized
/// example's own `labels` (which may differ from its ids), then shifted ([`to_seq`]). Token ids
/// must be below `vocab`; a sequence with no trained target after the shift is an error.
pub fn example_seq<C, E>(
    ex: &Example,
    chat: C,
    encode: E,
    opts: &RenderOptions,
    vocab: usize,
) -> Result<crate::model::Seq, RenderError>
where
    C: FnMut(&[Message], bool) -> Result<String, String>,
    E: FnMut(&str, bool) -> Result<Vec<u32>, String>,
{
    let t = render(ex, chat, encode, opts)?;
    let labels = match ex {
        Example::Tokens {
            labels: Some(l), ..
        } => l.clone(),
        _ => labels_of(&t),
    };
    let ids = t.ids.iter().map(|&i| i as i64);
    let trained = labels.iter().filter(|&&l| l != IGNORE).map(|&l| l as i64);
    if let Some(bad) = ids.chain(trained).find(|&id| id as u64 >= vocab as u64) {
        return Err(RenderError::Encode(format!(
            "token id {bad} is outside the vocabulary ({vocab})"
        )));
    }
    let seq = to_seq(&t.ids, &labels);
    if seq.targets.iter().all(|&x| x == IGNORE) {
        return Err(RenderError::NoTrainedTokens);
    }
    Ok(seq)
}
