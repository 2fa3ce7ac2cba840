//! Chat templates: the Jinja programs shipped in GGUF metadata (`tokenizer.chat_template`) and
//! Hugging Face `tokenizer_config.json`, rendered with minijinja the way transformers'
//! `apply_chat_template` renders them with jinja2, so the prompt text is byte-identical.
//!
//! What transformers sets up, and how it is mirrored here:
//! - `trim_blocks` and `lstrip_blocks` on, trailing newline of the template dropped (jinja2's
//!   default), `{% break %}` / `{% continue %}` allowed (jinja2's `loopcontrols` extension).
//! - globals `raise_exception(msg)` (aborts the render with `msg`) and `strftime_now(fmt)`
//!   (local time, C strftime codes); variables `messages`, `add_generation_prompt`, `bos_token`,
//!   `eos_token`, `tools` (none when absent) and `documents` (always none here).
//! - `tojson` is Python's `json.dumps(x, ensure_ascii=False)` with the `indent`, `separators`,
//!   `sort_keys` and `ensure_ascii` keywords; not jinja2's HTML-escaping filter.
//! - Python's string/dict/list methods (`.strip()`, `.split()`, `.startswith()`, `.items()`, ...)
//!   through minijinja-contrib's pycompat, with `.title()` and `.capitalize()` given Python's
//!   exact semantics.
//! - Printing follows Python's `str()`: `None`, `True`, `False`, `1.0`, `1e+16`, `['a', 1]`.
//! - The `{% generation %}...{% endgeneration %}` block of transformers' assistant-mask extension
//!   renders its body unchanged.
//!
//! Errors are `cria_core::Error::Msg`, e.g. "chat template error (line 1): invalid operation:
//! Conversation roles must alternate ..." (the `raise_exception` message) or "chat template error
//! (line 3): syntax error: unexpected `}`, expected end of variable block".
//!
//! # Limits
//!
//! A template comes with the model file and runs on every request, so one render is bounded:
//!
//! | limit | value | error |
//! |---|---|---|
//! | work: instructions, plus one unit per 64 bytes of data made (minijinja fuel) | [`TEMPLATE_FUEL`] = 10,000,000 (10M instructions, or 640 MB of data made in all) | "the chat template ran out of fuel (infinite loop?)" |
//! | rendered prompt | [`TEMPLATE_MAX_OUTPUT`] = 16 MiB | "the chat template's output exceeded 16777216 bytes" |
//! | `range(n)` | 100,000 items (minijinja's own bound) | "... range has too many elements" |
//! | nesting of values printed or passed to `tojson` | [`TEMPLATE_MAX_DEPTH`] = 256 | "... a value nested deeper than 256 levels" |
//!
//! The real templates in `tests/fixtures` render a 1 MiB conversation (512 turns) with at most
//! 116,000 fuel (llama2), so a conversation as long as the output bound needs under a fifth.

use std::fmt::Write as _;

use cria_core::{Error, Result};
use minijinja::value::{Kwargs, Serde, Value, ValueKind};
use minijinja::{Environment, ErrorKind, State};
use serde::{Deserialize, Serialize};

/// Fuel for one render (minijinja's unit: about one instruction, or 64 bytes of data made).
pub const TEMPLATE_FUEL: u64 = 10_000_000;
/// Largest rendered prompt, in bytes.
pub const TEMPLATE_MAX_OUTPUT: usize = 16 << 20;
/// Deepest value the template's printing and `tojson` recurse into.
pub const TEMPLATE_MAX_DEPTH: usize = 256;

/// One chat turn as templates see it: `message['role']`, `message['content']`, and whatever else
/// the turn carries (`tool_calls`, `tool_call_id`, `name`, ...), passed through in the order given
/// so that `'tool_calls' in message` is true exactly when the caller set it, as in transformers.
/// `content` is `None` (JSON null) for an assistant turn that only calls tools.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    #[serde(default)]
    pub content: Option<String>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Message {
            role: role.into(),
            content: Some(content.into()),
            extra: serde_json::Map::new(),
        }
    }

    /// The text of the turn ("" for a tool-call-only turn).
    pub fn text(&self) -> &str {
        self.content.as_deref().unwrap_or("")
    }
}

const NAME: &str = "chat_template";

/// A compiled chat template, to render many conversations without re-parsing.
pub struct ChatTemplate {
    env: Environment<'static>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// Compile `source`; syntax errors are reported here.
    pub fn new(source: &str) -> Result<Self> {
        let mut env = Environment::new();
        let mut syntax = minijinja::syntax::SyntaxConfig::builder();
        syntax
            .trim_blocks(true)
            .lstrip_blocks(true)
            .keep_trailing_newline(false);
        env.set_syntax(syntax.build().map_err(template_error)?);
        env.set_unknown_method_callback(python_methods);
        env.set_formatter(python_formatter);
        env.set_fuel(Some(TEMPLATE_FUEL));
        env.add_filter("tojson", tojson);
        env.add_filter("string", |v: Value| py_str(&v));
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_template_owned(NAME, rewrite_generation_tags(source))
            .map_err(template_error)?;
        Ok(ChatTemplate { env })
    }

    /// Render a conversation. `tools` is the OpenAI-style list of tool schemas, if any.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        bos_token: &str,
        eos_token: &str,
        tools: Option<&serde_json::Value>,
    ) -> Result<String> {
        let tmpl = self.env.get_template(NAME).map_err(template_error)?;
        let ctx = minijinja::context! {
            messages => Value::from(Serde(messages)),
            add_generation_prompt => add_generation_prompt,
            bos_token => bos_token,
            eos_token => eos_token,
            tools => tools.map(|t| Value::from(Serde(t))).unwrap_or(Value::from(())),
            documents => Value::from(()),
        };
        let mut out = Bounded {
            buf: Vec::new(),
            limit: TEMPLATE_MAX_OUTPUT,
            over: false,
        };
        let r = tmpl.render_captured_to(ctx, &mut out).map(drop);
        if out.over {
            return Err(Error::msg(format!(
                "the chat template's output exceeded {TEMPLATE_MAX_OUTPUT} bytes"
            )));
        }
        r.map_err(template_error)?;
        String::from_utf8(out.buf)
            .map_err(|_| Error::msg("the chat template's output is not valid UTF-8"))
    }
}

/// A byte buffer that refuses to grow past `limit` (the render then fails).
struct Bounded {
    buf: Vec<u8>,
    limit: usize,
    over: bool,
}

impl std::io::Write for Bounded {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if self.buf.len().saturating_add(b.len()) > self.limit {
            self.over = true;
            return Err(std::io::Error::other("output limit"));
        }
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Compile and render in one go (see [`ChatTemplate`]).
pub fn render(
    template: &str,
    messages: &[Message],
    add_generation_prompt: bool,
    bos_token: &str,
    eos_token: &str,
    tools: Option<&serde_json::Value>,
) -> Result<String> {
    ChatTemplate::new(template)?.render(
        messages,
        add_generation_prompt,
        bos_token,
        eos_token,
        tools,
    )
}

fn template_error(e: minijinja::Error) -> Error {
    if e.kind() == ErrorKind::OutOfFuel {
        return Error::msg("the chat template ran out of fuel (infinite loop?)");
    }
    let mut msg = String::from("chat template error");
    if let Some(line) = e.line() {
        let _ = write!(msg, " (line {line})");
    }
    let _ = write!(msg, ": {}", e.kind());
    if let Some(detail) = e.detail() {
        let _ = write!(msg, ": {detail}");
    }
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        let _ = write!(msg, ": {s}");
        src = s.source();
    }
    Error::msg(msg)
}

/// transformers' `{% generation %}` tag only records where assistant text lands; its body renders
/// as is. Turning the tags into `{% if true %}` / `{% endif %}` keeps the body and every
/// whitespace-control dash exactly where it was.
fn rewrite_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(start) = rest.find("{%") {
        out.push_str(&rest[..start]);
        let tag = &rest[start..];
        let Some(end) = tag.find("%}") else {
            break;
        };
        let inner = &tag[2..end];
        let body = inner
            .trim_start_matches(['-', '+'])
            .trim_end_matches(['-', '+'])
            .trim();
        let replacement = match body {
            "generation" => Some("if true"),
            "endgeneration" => Some("endif"),
            _ => None,
        };
        match replacement {
            Some(r) => {
                out.push_str("{%");
                out.push_str(&inner.replacen(body, r, 1));
                out.push_str("%}");
            }
            None => out.push_str(&tag[..end + 2]),
        }
        rest = &tag[end + 2..];
    }
    out.push_str(rest);
    out
}

fn raise_exception(msg: String) -> std::result::Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
}

fn strftime_now(format: String) -> std::result::Result<Value, minijinja::Error> {
    let mut s = String::new();
    // chrono reports an unknown specifier as a fmt::Error; `to_string()` would panic on it.
    write!(s, "{}", chrono::Local::now().format(&format)).map_err(|_| {
        minijinja::Error::new(
            ErrorKind::InvalidOperation,
            format!("strftime_now: bad format {format:?}"),
        )
    })?;
    Ok(Value::from(s))
}

// ---------------------------------------------------------------------------------------------
// Python methods
// ---------------------------------------------------------------------------------------------

fn python_methods(
    state: &mut State,
    value: &Value,
    method: &str,
    args: &[Value],
) -> std::result::Result<Value, minijinja::Error> {
    if let (Some(s), true) = (value.as_str(), args.is_empty()) {
        match method {
            "title" => return Ok(Value::from(py_title(s))),
            "capitalize" => return Ok(Value::from(py_capitalize(s))),
            _ => {}
        }
    }
    minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args).map_err(|e| {
        if e.kind() != ErrorKind::UnknownMethod {
            return e;
        }
        // jinja2's wording, so a template's failure reads the same as under transformers.
        let owner = match value.kind() {
            ValueKind::None | ValueKind::Undefined => "'None'".to_string(),
            ValueKind::String => "'str object'".to_string(),
            ValueKind::Map => "'dict object'".to_string(),
            ValueKind::Seq => "'list object'".to_string(),
            ValueKind::Bool => "'bool object'".to_string(),
            ValueKind::Number if value.is_integer() => "'int object'".to_string(),
            ValueKind::Number => "'float object'".to_string(),
            k => format!("'{k} object'"),
        };
        minijinja::Error::new(
            ErrorKind::UnknownMethod,
            format!("{owner} has no attribute '{method}'"),
        )
    })
}

/// Python `str.title()`: a cased character after an uncased one starts a word (so "they're"
/// becomes "They'Re", unlike jinja2's `title` filter).
fn py_title(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut prev_cased = false;
    for c in s.chars() {
        let cased = c.is_lowercase() || c.is_uppercase();
        if prev_cased {
            out.extend(c.to_lowercase());
        } else {
            out.extend(c.to_uppercase());
        }
        prev_cased = cased;
    }
    out
}

/// Python `str.capitalize()`: first character upper-cased, the rest lower-cased.
fn py_capitalize(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first
            .to_uppercase()
            .chain(chars.flat_map(|c| c.to_lowercase()))
            .collect(),
        None => String::new(),
    }
}

// ---------------------------------------------------------------------------------------------
// Printing values like Python's str() / repr()
// ---------------------------------------------------------------------------------------------

fn python_formatter(
    out: &mut minijinja::Output,
    state: &mut State,
    value: &Value,
) -> std::result::Result<(), minijinja::Error> {
    match value.kind() {
        ValueKind::None | ValueKind::Bool | ValueKind::Number | ValueKind::Seq | ValueKind::Map => {
            out.write_str(&py_str(value))
                .map_err(|e| minijinja::Error::new(ErrorKind::WriteFailure, e.to_string()))
        }
        _ => minijinja::escape_formatter(out, state, value),
    }
}

/// Python `str(x)`.
fn py_str(v: &Value) -> String {
    match v.kind() {
        ValueKind::Undefined => String::new(),
        ValueKind::String => v.as_str().unwrap_or_default().to_string(),
        _ => {
            let mut s = String::new();
            py_repr(v, 0, &mut s);
            s
        }
    }
}

/// Python `repr(x)` for the value kinds templates deal in. Containers nested deeper than
/// [`TEMPLATE_MAX_DEPTH`] print as `...` (Python's mark for a list that contains itself).
fn py_repr(v: &Value, depth: usize, out: &mut String) {
    if depth >= TEMPLATE_MAX_DEPTH
        && matches!(
            v.kind(),
            ValueKind::Seq | ValueKind::Iterable | ValueKind::Map
        )
    {
        out.push_str("...");
        return;
    }
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("None"),
        ValueKind::Bool => out.push_str(if v.is_true() { "True" } else { "False" }),
        ValueKind::Number => {
            if v.is_integer() {
                let _ = write!(out, "{v}");
            } else {
                out.push_str(&py_float_repr(f64::try_from(v.clone()).unwrap_or(f64::NAN)));
            }
        }
        ValueKind::String => py_repr_str(v.as_str().unwrap_or_default(), out),
        ValueKind::Seq | ValueKind::Iterable => {
            let (open, close) = if v.is_tuple() { ("(", ")") } else { ("[", "]") };
            out.push_str(open);
            if let Ok(iter) = v.try_iter() {
                for (i, item) in iter.enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    py_repr(&item, depth + 1, out);
                }
            }
            out.push_str(close);
        }
        ValueKind::Map => {
            out.push('{');
            if let Ok(iter) = v.try_iter() {
                for (i, key) in iter.enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    py_repr(&key, depth + 1, out);
                    out.push_str(": ");
                    py_repr(&v.get_item(&key).unwrap_or_default(), depth + 1, out);
                }
            }
            out.push('}');
        }
        _ => {
            let _ = write!(out, "{v}");
        }
    }
}

/// Python's string repr: single quotes unless the text has a single quote and no double one.
/// Non-printable characters are approximated by the ASCII/Latin-1 control ranges and the line and
/// paragraph separators (Python consults the full Unicode database).
fn py_repr_str(s: &str, out: &mut String) {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || (0x7f..=0xa0).contains(&(c as u32)) || c == '\u{ad}' => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            '\u{2028}' | '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

/// Python's `repr(float)`: the shortest digits that round-trip, positional for exponents in
/// [-4, 16), scientific (`1e+16`, `1.5e-05`) outside, and always a `.0` on whole numbers.
pub(crate) fn py_float_repr(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf".into() } else { "-inf".into() };
    }
    // Rust's `{:e}` prints the shortest round-trip digits: "-1.2345e-7".
    let sci = format!("{x:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let n = digits.len() as i32;
    let mut out = String::from(sign);
    if (-4..16).contains(&exp) {
        let point = exp + 1; // digits before the decimal point
        if point <= 0 {
            out.push_str("0.");
            out.push_str(&"0".repeat((-point) as usize));
            out.push_str(&digits);
        } else if point >= n {
            out.push_str(&digits);
            out.push_str(&"0".repeat((point - n) as usize));
            out.push_str(".0");
        } else {
            out.push_str(&digits[..point as usize]);
            out.push('.');
            out.push_str(&digits[point as usize..]);
        }
    } else {
        out.push_str(&digits[..1]);
        if n > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let _ = write!(out, "e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs());
    }
    out
}

// ---------------------------------------------------------------------------------------------
// tojson = Python json.dumps
// ---------------------------------------------------------------------------------------------

struct JsonStyle {
    ensure_ascii: bool,
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
}

/// `x | tojson(ensure_ascii=False, indent=None, separators=None, sort_keys=False)`, exactly
/// transformers' override of the filter (a plain `json.dumps`).
fn tojson(value: Value, kwargs: Kwargs) -> std::result::Result<Value, minijinja::Error> {
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    let indent_v: Option<Value> = kwargs.get("indent")?;
    let separators: Option<Value> = kwargs.get("separators")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let indent = match indent_v {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => match (v.as_str(), i64::try_from(v.clone())) {
            (Some(s), _) => Some(s.to_string()),
            (None, Ok(n)) => Some(" ".repeat(n.max(0) as usize)),
            _ => {
                return Err(minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    "tojson: indent must be an integer or a string",
                ))
            }
        },
    };
    // json.dumps: (', ', ': ') without indent, (',', ': ') with one.
    let (mut item_sep, mut key_sep) = (
        if indent.is_some() {
            ",".to_string()
        } else {
            ", ".to_string()
        },
        ": ".to_string(),
    );
    if let Some(seps) = separators.filter(|s| !s.is_none()) {
        let pair: Vec<Value> = seps.try_iter()?.collect();
        match (
            pair.first().and_then(|v| v.as_str()),
            pair.get(1).and_then(|v| v.as_str()),
            pair.len(),
        ) {
            (Some(a), Some(b), 2) => {
                item_sep = a.to_string();
                key_sep = b.to_string();
            }
            _ => {
                return Err(minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    "tojson: separators must be a pair of strings",
                ))
            }
        }
    }
    let style = JsonStyle {
        ensure_ascii: ensure_ascii.unwrap_or(false),
        indent,
        item_sep,
        key_sep,
        sort_keys: sort_keys.unwrap_or(false),
    };
    let mut out = String::new();
    json_dump(&value, &style, 0, &mut out)?;
    Ok(Value::from(out))
}

fn json_newline(style: &JsonStyle, level: usize, out: &mut String) {
    if let Some(ind) = &style.indent {
        out.push('\n');
        for _ in 0..level {
            out.push_str(ind);
        }
    }
}

fn json_dump(
    v: &Value,
    style: &JsonStyle,
    level: usize,
    out: &mut String,
) -> std::result::Result<(), minijinja::Error> {
    if level > TEMPLATE_MAX_DEPTH {
        return Err(minijinja::Error::new(
            ErrorKind::InvalidOperation,
            format!("tojson: a value nested deeper than {TEMPLATE_MAX_DEPTH} levels"),
        ));
    }
    match v.kind() {
        ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if v.is_integer() {
                let _ = write!(out, "{v}");
            } else {
                let x = f64::try_from(v.clone()).unwrap_or(f64::NAN);
                if x.is_nan() {
                    out.push_str("NaN");
                } else if x.is_infinite() {
                    out.push_str(if x > 0.0 { "Infinity" } else { "-Infinity" });
                } else {
                    out.push_str(&py_float_repr(x));
                }
            }
        }
        ValueKind::String => json_str(v.as_str().unwrap_or_default(), style.ensure_ascii, out),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(&style.item_sep);
                }
                json_newline(style, level + 1, out);
                json_dump(item, style, level + 1, out)?;
            }
            json_newline(style, level, out);
            out.push(']');
        }
        ValueKind::Map => {
            let mut entries: Vec<(String, Value)> = Vec::new();
            for key in v.try_iter()? {
                let k = match key.kind() {
                    ValueKind::String => key.as_str().unwrap_or_default().to_string(),
                    ValueKind::None => "null".into(),
                    ValueKind::Bool => (if key.is_true() { "true" } else { "false" }).into(),
                    ValueKind::Number => {
                        let mut s = String::new();
                        json_dump(&key, style, level, &mut s)?;
                        s
                    }
                    other => {
                        return Err(minijinja::Error::new(
                            ErrorKind::InvalidOperation,
                            format!(
                                "tojson: keys must be str, int, float, bool or None, not {other}"
                            ),
                        ))
                    }
                };
                let val = v.get_item(&key)?;
                entries.push((k, val));
            }
            if style.sort_keys {
                entries.sort_by(|a, b| a.0.cmp(&b.0));
            }
            if entries.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, (k, val)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push_str(&style.item_sep);
                }
                json_newline(style, level + 1, out);
                json_str(k, style.ensure_ascii, out);
                out.push_str(&style.key_sep);
                json_dump(val, style, level + 1, out)?;
            }
            json_newline(style, level, out);
            out.push('}');
        }
        ValueKind::Undefined => {
            return Err(minijinja::Error::new(
                ErrorKind::InvalidOperation,
                "tojson: Object of type Undefined is not JSON serializable",
            ))
        }
        other => {
            return Err(minijinja::Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson: a value of kind {other} is not JSON serializable"),
            ))
        }
    }
    Ok(())
}

/// A JSON string as Python's encoder writes it: `"`, `\`, and control characters escaped (the
/// usual short forms, else `\u00XX`); with `ensure_ascii` every non-ASCII character too, as
/// `\uXXXX` (surrogate pairs above U+FFFF).
fn json_str(s: &str, ensure_ascii: bool, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c if ensure_ascii && (c as u32) > 0x7e => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    let _ = write!(out, "\\u{:04x}", unit);
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_repr_like_python() {
        // Expected strings are Python 3's repr() of the same doubles.
        let cases: [(f64, &str); 14] = [
            (1.0, "1.0"),
            (1.5, "1.5"),
            (-0.0, "-0.0"),
            (0.1, "0.1"),
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (1e15, "1000000000000000.0"),
            (123456789.125, "123456789.125"),
            (1e-5, "1e-05"),
            (0.0001, "0.0001"),
            (0.00012, "0.00012"),
            (2.5e-7, "2.5e-07"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (5e-324, "5e-324"),
        ];
        for (x, want) in cases {
            assert_eq!(py_float_repr(x), want, "{x:e}");
        }
    }

    #[test]
    fn raise_exception_message_reaches_the_error() {
        let err = render(
            "{{ raise_exception('roles must alternate') }}",
            &[],
            false,
            "",
            "",
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("roles must alternate"), "{err}");
        assert!(
            err.starts_with("chat template error (line 1): invalid operation"),
            "{err}"
        );
    }

    #[test]
    fn syntax_error_is_an_error() {
        let err = ChatTemplate::new("{% for m in messages %}{{ m.content }}")
            .unwrap_err()
            .to_string();
        assert!(err.contains("chat template error"), "{err}");
    }

    #[test]
    fn strftime_now_formats_the_clock() {
        let year = render("{{ strftime_now('%Y') }}", &[], false, "", "", None).unwrap();
        let now = chrono::Local::now().format("%Y").to_string();
        assert_eq!(year, now);
        // An unknown specifier is an error, not a panic.
        assert!(render("{{ strftime_now('%Q%') }}", &[], false, "", "", None).is_err());
    }

    #[test]
    fn generation_tags_render_their_body() {
        let msgs = [Message::new("assistant", "hi")];
        let t = "{% for m in messages %}{%- generation -%}  [{{ m.content }}]  {%- endgeneration %}{% endfor %}";
        assert_eq!(render(t, &msgs, false, "", "", None).unwrap(), "[hi]");
    }

    #[test]
    fn tojson_options() {
        let msgs = [Message::new("user", "é\u{1F642}")];
        let t =
            "{{ messages[0] | tojson(ensure_ascii=true, sort_keys=true, separators=(',', ':')) }}";
        // json.dumps({'role': 'user', 'content': 'é🙂'}, ensure_ascii=True, sort_keys=True,
        //            separators=(',', ':'))
        assert_eq!(
            render(t, &msgs, false, "", "", None).unwrap(),
            r#"{"content":"\u00e9\ud83d\ude42","role":"user"}"#
        );
        assert!(render("{{ nothing | tojson }}", &msgs, false, "", "", None).is_err());
    }

    #[test]
    fn python_title_and_capitalize() {
        assert_eq!(
            py_title("they're bill's friends from the UK"),
            "They'Re Bill'S Friends From The Uk"
        );
        assert_eq!(py_title("hello-world 2nd"), "Hello-World 2Nd");
        assert_eq!(py_capitalize("hELLO World"), "Hello world");
    }
}
