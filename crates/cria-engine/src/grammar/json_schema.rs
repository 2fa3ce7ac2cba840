//! JSON Schema -> GBNF, in the manner of llama.cpp's `json-schema-to-grammar`, but strict: a
//! keyword this converter cannot honour is an error naming the keyword and where it is (a JSON
//! pointer into the schema), never silently dropped.
//!
//! Supported: `type` (one or a list), `properties` / `required` (properties in declared order;
//! optional ones may be left out, as llama.cpp does), `additionalProperties` (false, true or a
//! schema; absent means false, as in llama.cpp, which keeps models from inventing keys), `enum`,
//! `const`, `anyOf` / `oneOf`, `allOf` of object schemas, `$ref` to `#/$defs/..` and
//! `#/definitions/..` (recursion included), `items`, `prefixItems`, `minItems` / `maxItems`,
//! `minLength` / `maxLength`, `format` (date, time, date-time, uuid), `pattern` (a regex subset:
//! literals, `.`, classes, `\d \w \s` and their negations, groups, `|`, `* + ? {m,n}`, `^` / `$`
//! at the ends), and `minimum` / `maximum` / `exclusiveMinimum` / `exclusiveMaximum` on integers.
//! Annotations (`title`, `description`, `default`, `examples`, `$schema`, `$id`, `$comment`, ...)
//! are ignored, as they do not constrain values.
//!
//! The output grammar lets whitespace follow every value and punctuation, like llama.cpp's
//! (`space ::= | " " | "\n"{1,2} [ \t]{0,20}`), so any JSON the grammar produces parses.
//!
//! # Limits
//!
//! Schemas come from requests; what they can make large is bounded, with an error naming the
//! keyword (and the limit) beyond it:
//!
//! | what | limit | error |
//! |---|---|---|
//! | sub-schema nesting and `$ref` chains | `Limits::max_nesting` ([`MAX_NESTING`](super::MAX_NESTING) = 128) | "schema nested deeper than 128 levels (sub-schemas and `$ref`s)" |
//! | JSON nesting of the schema document | 4 x `max_nesting` = 512 | "the schema document is nested deeper than 512 levels" |
//! | `minLength` `maxLength` `minItems` `maxItems` | [`MAX_SCHEMA_REPEAT`] = 2000 (the GBNF repetition bound, so a maximum is always honoured) | "`maxLength` above 2000 is not supported" |
//! | properties of one object (`allOf` merged) | [`MAX_SCHEMA_PROPERTIES`] = 10000 | "more than 10000 properties" |
//! | `enum` values | [`MAX_SCHEMA_ENUM`] = 10000 | "`enum` has more than 10000 values" |
//! | property names beside `additionalProperties` | [`MAX_SCHEMA_NAME`] = 256 characters | "... longer than 256 characters ..." |
//! | the GBNF produced | 16 x `Limits::max_elems` bytes (16 MiB) | "the schema's grammar is too large (more than 16777216 bytes of GBNF)" |
//! | time | `Limits` deadline ([`COMPILE_TIME_BUDGET`](super::COMPILE_TIME_BUDGET) = 2 s) | "grammar compilation exceeded its time budget" |

use super::{Clock, Limits, TIME_BUDGET_MSG};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

/// Largest `minLength` / `maxLength` / `minItems` / `maxItems`: the GBNF parser's bound on
/// repetition counts (llama.cpp's), above which a maximum could not be honoured.
pub const MAX_SCHEMA_REPEAT: u64 = 2000;
/// Most properties in one object schema (after merging `allOf`).
pub const MAX_SCHEMA_PROPERTIES: usize = 10_000;
/// Most values in one `enum`.
pub const MAX_SCHEMA_ENUM: usize = 10_000;
/// Longest property name (in characters) in an object that also allows additional properties
/// (the grammar that excludes the known names nests once per character).
pub const MAX_SCHEMA_NAME: usize = 256;

/// Any JSON value (`--json`): llama.cpp's `json.gbnf` shape, but every value kind at the root.
pub const ANY_JSON_GBNF: &str = r#"root   ::= value
value  ::= object | array | string | number | ("true" | "false" | "null") ws
object ::= "{" ws ( string ":" ws value ("," ws string ":" ws value)* )? "}" ws
array  ::= "[" ws ( value ("," ws value)* )? "]" ws
string ::= "\"" ( [^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4}) )* "\"" ws
number ::= ("-"? ([0-9] | [1-9] [0-9]{0,15})) ("." [0-9]{1,16})? ([eE] [-+]? [0-9]{1,16})? ws
ws     ::= | " " | "\n" [ \t]{0,20}
"#;

const SPACE: &str = r#"| " " | "\n"{1,2} [ \t]{0,20}"#;

/// Built-in rules: name, body, dependencies.
const PRIMITIVES: &[(&str, &str, &[&str])] = &[
    ("boolean", r#"("true" | "false") space"#, &[]),
    ("decimal-part", "[0-9]{1,16}", &[]),
    ("integral-part", "[0] | [1-9] [0-9]{0,15}", &[]),
    (
        "number",
        r#"("-"? integral-part) ("." decimal-part)? ([eE] [-+]? decimal-part)? space"#,
        &["integral-part", "decimal-part"],
    ),
    (
        "integer",
        r#"("-"? integral-part) space"#,
        &["integral-part"],
    ),
    (
        "value",
        "object | array | string | number | boolean | null",
        &["object", "array", "string", "number", "boolean", "null"],
    ),
    (
        "object",
        r#""{" space ( string ":" space value ("," space string ":" space value)* )? "}" space"#,
        &["string", "value"],
    ),
    (
        "array",
        r#""[" space ( value ("," space value)* )? "]" space"#,
        &["value"],
    ),
    (
        "uuid",
        r#""\"" [0-9a-fA-F]{8} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{12} "\"" space"#,
        &[],
    ),
    (
        "char",
        r#"[^"\\\x7F\x00-\x1F] | [\\] (["\\/bfnrt] | "u" [0-9a-fA-F]{4})"#,
        &[],
    ),
    ("string", r#""\"" char* "\"" space"#, &["char"]),
    ("null", r#""null" space"#, &[]),
    (
        "date",
        r#"[0-9]{4} "-" ( "0" [1-9] | "1" [0-2] ) "-" ( "0" [1-9] | [1-2] [0-9] | "3" [0-1] )"#,
        &[],
    ),
    (
        "time",
        r#"([01] [0-9] | "2" [0-3]) ":" [0-5] [0-9] ":" [0-5] [0-9] ( "." [0-9]{3} )? ( "Z" | ( "+" | "-" ) ( [01] [0-9] | "2" [0-3] ) ":" [0-5] [0-9] )"#,
        &[],
    ),
    ("date-time", r#"date "T" time"#, &["date", "time"]),
    ("date-string", r#""\"" date "\"" space"#, &["date"]),
    ("time-string", r#""\"" time "\"" space"#, &["time"]),
    (
        "date-time-string",
        r#""\"" date-time "\"" space"#,
        &["date-time"],
    ),
];

/// Keywords that only annotate.
const ANNOTATIONS: &[&str] = &[
    "title",
    "description",
    "default",
    "examples",
    "$schema",
    "$id",
    "$comment",
    "deprecated",
    "readOnly",
    "writeOnly",
    "$defs",
    "definitions",
    "contentMediaType",
    "contentEncoding",
];

/// A schema the converter cannot turn into a grammar, with the JSON pointer of the culprit.
#[derive(Debug, Clone, PartialEq)]
pub struct SchemaError {
    pub path: String,
    pub msg: String,
}

impl fmt::Display for SchemaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = if self.path.is_empty() {
            "#"
        } else {
            &self.path
        };
        write!(f, "{path}: {}", self.msg)
    }
}

impl std::error::Error for SchemaError {}

type Res<T> = Result<T, SchemaError>;

fn err<T>(path: &str, msg: impl Into<String>) -> Res<T> {
    Err(SchemaError {
        path: if path.is_empty() {
            "#".into()
        } else {
            path.into()
        },
        msg: msg.into(),
    })
}

/// Convert a JSON Schema to GBNF (start rule `root`), under the default [`Limits`].
pub fn json_schema_to_gbnf(schema: &Value) -> Result<String, SchemaError> {
    json_schema_to_gbnf_with_limits(schema, &Limits::default())
}

/// [`json_schema_to_gbnf`] with explicit limits (`max_nesting`, `max_elems` for the size of
/// the output, and the deadline).
pub fn json_schema_to_gbnf_with_limits(
    schema: &Value,
    limits: &Limits,
) -> Result<String, SchemaError> {
    let mut clock = limits.clock();
    if clock.expired() {
        return err("", TIME_BUDGET_MSG);
    }
    let max_json = limits.max_nesting.saturating_mul(4);
    if json_depth_exceeds(schema, max_json) {
        return err(
            "",
            format!("the schema document is nested deeper than {max_json} levels"),
        );
    }
    let mut c = Converter {
        root: schema,
        rules: BTreeMap::new(),
        resolving: HashSet::new(),
        refs: BTreeMap::new(),
        reuse: HashMap::new(),
        next_suffix: HashMap::new(),
        depth: 0,
        max_depth: limits.max_nesting,
        clock,
        bytes: 0,
        max_bytes: limits.max_elems.saturating_mul(16),
    };
    c.rules.insert("space".into(), SPACE.into());
    let body = c.visit(schema, "", "#")?;
    c.rules.insert("root".into(), body);
    let mut out = String::new();
    for (name, body) in &c.rules {
        out.push_str(name);
        out.push_str(" ::= ");
        out.push_str(body);
        out.push('\n');
    }
    Ok(out)
}

struct Converter<'a> {
    root: &'a Value,
    rules: BTreeMap<String, String>,
    resolving: HashSet<String>,
    refs: BTreeMap<String, String>, // $ref -> rule name
    /// (base name, body) -> the rule `add_rule` made for them, and per base name the next
    /// numeric suffix to try: `add_rule` stays linear when many rules share a base name.
    reuse: HashMap<String, HashMap<String, String>>,
    next_suffix: HashMap<String, usize>,
    /// Sub-schemas being visited (recursion depth), and the limit.
    depth: usize,
    max_depth: usize,
    clock: Clock,
    /// Bytes of rule bodies so far, and the limit.
    bytes: usize,
    max_bytes: usize,
}

/// Is `v` nested deeper than `max` levels? (Iterative: the document may be deeper than the
/// stack allows recursing.)
fn json_depth_exceeds(v: &Value, max: usize) -> bool {
    let mut todo: Vec<(&Value, usize)> = vec![(v, 1)];
    while let Some((v, d)) = todo.pop() {
        if d > max {
            return true;
        }
        match v {
            Value::Array(a) => todo.extend(a.iter().map(|x| (x, d + 1))),
            Value::Object(o) => todo.extend(o.values().map(|x| (x, d + 1))),
            _ => {}
        }
    }
    false
}

/// A GBNF string literal for `s`.
fn literal(s: &str) -> String {
    let mut o = String::from("\"");
    for ch in s.chars() {
        match ch {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            '\r' => o.push_str("\\r"),
            '\t' => o.push_str("\\t"),
            c if (c as u32) < 0x20 || c as u32 == 0x7F => {
                o.push_str(&format!("\\x{:02X}", c as u32))
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn rule_name(s: &str) -> String {
    let mut out = String::new();
    for ch in s.chars() {
        if ch.is_ascii_alphanumeric() || ch == '-' {
            out.push(ch);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    if out.is_empty() {
        out.push_str("r");
    }
    out
}

fn join(name: &str, part: &str) -> String {
    if name.is_empty() {
        part.to_string()
    } else {
        format!("{name}-{part}")
    }
}

impl<'a> Converter<'a> {
    /// A rule named after `name` with `body` (an existing one if the same body was already
    /// added under that name), taking the first free name of `base`, `base0`, `base1`, ...
    fn add_rule(&mut self, name: &str, body: String) -> Res<String> {
        let base = rule_name(name);
        if let Some(key) = self.reuse.get(&base).and_then(|m| m.get(&body)) {
            return Ok(key.clone());
        }
        let reserved = |n: &str| n == "root" || n == "space" || PRIMITIVES.iter().any(|p| p.0 == n);
        let next = self.next_suffix.entry(base.clone()).or_insert(0);
        let mut key = if *next == 0 {
            base.clone()
        } else {
            format!("{base}{}", *next - 1)
        };
        loop {
            match self.rules.get(&key) {
                Some(b) if *b == body => return Ok(key),
                None if !reserved(&key) => break,
                _ => {
                    key = format!("{base}{}", *next);
                    *next += 1;
                }
            }
        }
        self.bytes = self.bytes.saturating_add(key.len() + body.len() + 6);
        if self.bytes > self.max_bytes {
            return err(
                "",
                format!(
                    "the schema's grammar is too large (more than {} bytes of GBNF)",
                    self.max_bytes
                ),
            );
        }
        self.reuse
            .entry(base)
            .or_default()
            .insert(body.clone(), key.clone());
        self.rules.insert(key.clone(), body);
        Ok(key)
    }

    /// A rule name not yet taken (for `$ref` targets, defined after their first use).
    fn fresh_name(&self, base: &str) -> String {
        let reserved = |n: &str| n == "root" || n == "space" || PRIMITIVES.iter().any(|p| p.0 == n);
        let mut key = base.to_string();
        let mut i = 0;
        while self.rules.contains_key(&key) || reserved(&key) {
            key = format!("{base}{i}");
            i += 1;
        }
        key
    }

    fn primitive(&mut self, name: &str) -> String {
        let Some(&(_, body, deps)) = PRIMITIVES.iter().find(|p| p.0 == name) else {
            unreachable!("no primitive {name}")
        };
        if !self.rules.contains_key(name) {
            self.rules.insert(name.into(), body.into());
            for d in deps {
                self.primitive(d);
            }
        }
        name.to_string()
    }

    /// The grammar expression for values of `schema`, named after `name` for the rules it adds.
    fn visit(&mut self, schema: &Value, name: &str, path: &str) -> Res<String> {
        if self.clock.expired() {
            return err(path, TIME_BUDGET_MSG);
        }
        if self.depth >= self.max_depth {
            return err(
                path,
                format!(
                    "schema nested deeper than {} levels (sub-schemas and `$ref`s)",
                    self.max_depth
                ),
            );
        }
        self.depth += 1;
        let r = self.visit_inner(schema, name, path);
        self.depth -= 1;
        r
    }

    fn visit_inner(&mut self, schema: &Value, name: &str, path: &str) -> Res<String> {
        let obj = match schema {
            Value::Bool(true) => return Ok(self.primitive("value")),
            Value::Bool(false) => return err(path, "the schema `false` matches nothing"),
            Value::Object(o) => o,
            _ => return err(path, "a schema must be an object or a boolean"),
        };
        self.check_keywords(obj, path)?;
        if let Some(r) = obj.get("$ref") {
            if obj.len() > 1
                && obj
                    .keys()
                    .any(|k| k != "$ref" && !ANNOTATIONS.contains(&k.as_str()))
            {
                return err(path, "`$ref` beside other constraints is not supported");
            }
            return self.reference(r, path);
        }
        if let Some(alts) = obj.get("anyOf").or_else(|| obj.get("oneOf")) {
            let kw = if obj.contains_key("anyOf") {
                "anyOf"
            } else {
                "oneOf"
            };
            let Some(alts) = alts.as_array() else {
                return err(&format!("{path}/{kw}"), format!("`{kw}` must be an array"));
            };
            if obj
                .keys()
                .any(|k| k != kw && !ANNOTATIONS.contains(&k.as_str()))
            {
                return err(
                    path,
                    format!("`{kw}` beside other constraints is not supported"),
                );
            }
            let mut parts = Vec::new();
            for (i, a) in alts.iter().enumerate() {
                let p = self.visit(a, &join(name, &i.to_string()), &format!("{path}/{kw}/{i}"))?;
                parts.push(p);
            }
            if parts.is_empty() {
                return err(
                    &format!("{path}/{kw}"),
                    format!("empty `{kw}` matches nothing"),
                );
            }
            return self.add_rule(name_or(name, "alt"), parts.join(" | "));
        }
        if let Some(c) = obj.get("const") {
            return Ok(format!("{} space", literal(&c.to_string())));
        }
        if let Some(e) = obj.get("enum") {
            let Some(vals) = e.as_array() else {
                return err(&format!("{path}/enum"), "`enum` must be an array");
            };
            if vals.is_empty() {
                return err(&format!("{path}/enum"), "empty `enum` matches nothing");
            }
            if vals.len() > MAX_SCHEMA_ENUM {
                return err(
                    &format!("{path}/enum"),
                    format!("`enum` has more than {MAX_SCHEMA_ENUM} values"),
                );
            }
            let alts: Vec<String> = vals.iter().map(|v| literal(&v.to_string())).collect();
            return self.add_rule(
                name_or(name, "enum"),
                format!("({}) space", alts.join(" | ")),
            );
        }
        if let Some(all) = obj.get("allOf") {
            return self.all_of(obj, all, name, path);
        }
        let types: Vec<&str> = match obj.get("type") {
            None => {
                // No type: infer from the keywords present, else any value.
                if obj.contains_key("properties") || obj.contains_key("additionalProperties") {
                    vec!["object"]
                } else if obj.contains_key("items") || obj.contains_key("prefixItems") {
                    vec!["array"]
                } else if obj.contains_key("format")
                    || obj.contains_key("pattern")
                    || obj.contains_key("minLength")
                    || obj.contains_key("maxLength")
                {
                    vec!["string"]
                } else {
                    return Ok(self.primitive("value"));
                }
            }
            Some(Value::String(t)) => vec![t.as_str()],
            Some(Value::Array(ts)) => {
                let mut v = Vec::new();
                for (i, t) in ts.iter().enumerate() {
                    match t.as_str() {
                        Some(s) => v.push(s),
                        None => return err(&format!("{path}/type/{i}"), "a type must be a string"),
                    }
                }
                v
            }
            Some(_) => {
                return err(
                    &format!("{path}/type"),
                    "`type` must be a string or an array",
                )
            }
        };
        let mut parts = Vec::new();
        for t in &types {
            parts.push(self.typed(obj, t, name, path)?);
        }
        if parts.is_empty() {
            return err(
                &format!("{path}/type"),
                "an empty `type` list matches nothing",
            );
        }
        if parts.len() == 1 {
            return Ok(parts.pop().unwrap_or_default());
        }
        self.add_rule(name_or(name, "value"), parts.join(" | "))
    }

    fn check_keywords(&self, obj: &Map<String, Value>, path: &str) -> Res<()> {
        const KNOWN: &[&str] = &[
            "type",
            "properties",
            "required",
            "additionalProperties",
            "enum",
            "const",
            "anyOf",
            "oneOf",
            "allOf",
            "$ref",
            "items",
            "prefixItems",
            "minItems",
            "maxItems",
            "minLength",
            "maxLength",
            "format",
            "pattern",
            "minimum",
            "maximum",
            "exclusiveMinimum",
            "exclusiveMaximum",
        ];
        for k in obj.keys() {
            if !KNOWN.contains(&k.as_str()) && !ANNOTATIONS.contains(&k.as_str()) {
                return err(
                    &format!("{path}/{}", escape_pointer(k)),
                    format!("unsupported keyword `{k}`"),
                );
            }
        }
        Ok(())
    }

    fn reference(&mut self, r: &Value, path: &str) -> Res<String> {
        let Some(r) = r.as_str() else {
            return err(&format!("{path}/$ref"), "`$ref` must be a string");
        };
        if let Some(name) = self.refs.get(r) {
            return Ok(name.clone());
        }
        let Some(ptr) = r.strip_prefix('#') else {
            return err(
                &format!("{path}/$ref"),
                format!(
                    "remote `$ref` {r:?} is not supported (only #/$defs/... and #/definitions/...)"
                ),
            );
        };
        let Some(target) = self.root.pointer(ptr) else {
            return err(
                &format!("{path}/$ref"),
                format!("`$ref` {r:?} points at nothing"),
            );
        };
        let name = self.fresh_name(&rule_name(ptr.rsplit('/').next().unwrap_or("ref")));
        self.rules.insert(name.clone(), String::new()); // placeholder while resolving
        self.refs.insert(r.to_string(), name.clone());
        self.resolving.insert(r.to_string());
        let body = self.visit(target, &name, r)?;
        self.resolving.remove(r);
        self.rules.insert(name.clone(), body);
        Ok(name)
    }

    fn all_of(
        &mut self,
        obj: &Map<String, Value>,
        all: &Value,
        name: &str,
        path: &str,
    ) -> Res<String> {
        let Some(parts) = all.as_array() else {
            return err(&format!("{path}/allOf"), "`allOf` must be an array");
        };
        // Merge object schemas: properties in order of appearance, required united.
        let mut props: Vec<(String, Value, String)> = Vec::new();
        let mut prop_index: HashMap<String, usize> = HashMap::new();
        let mut required: Vec<String> = Vec::new();
        let mut required_set: HashSet<String> = HashSet::new();
        let mut additional: Option<(Value, String)> = None;
        let mut members: Vec<(&Value, String)> = parts
            .iter()
            .enumerate()
            .map(|(i, p)| (p, format!("{path}/allOf/{i}")))
            .collect();
        let mut own = obj.clone();
        own.remove("allOf");
        let own_v = Value::Object(own);
        members.push((&own_v, path.to_string()));
        for (m, p) in members {
            let mut m = m;
            let mut p = p;
            // Follow references to the object they name.
            let mut hops = 0;
            while let Some(r) = m.get("$ref").and_then(Value::as_str) {
                hops += 1;
                let target = r.strip_prefix('#').and_then(|ptr| self.root.pointer(ptr));
                match target {
                    Some(t) if hops < 32 => {
                        m = t;
                        p = r.to_string();
                    }
                    _ => {
                        return err(
                            &format!("{p}/$ref"),
                            format!("cannot resolve `$ref` {r:?} inside `allOf`"),
                        )
                    }
                }
            }
            let Some(mo) = m.as_object() else {
                return err(&p, "`allOf` members must be object schemas");
            };
            self.check_keywords(mo, &p)?;
            for k in mo.keys() {
                let k = k.as_str();
                if !matches!(
                    k,
                    "type" | "properties" | "required" | "additionalProperties"
                ) && !ANNOTATIONS.contains(&k)
                {
                    return err(&format!("{p}/{k}"), format!("`{k}` inside `allOf` is not supported (only object schemas are merged)"));
                }
            }
            if let Some(t) = mo.get("type") {
                if t != "object" {
                    return err(
                        &format!("{p}/type"),
                        "`allOf` members must be object schemas",
                    );
                }
            }
            if let Some(ps) = mo.get("properties").and_then(Value::as_object) {
                for (k, v) in ps {
                    if let Some(&at) = prop_index.get(k) {
                        props[at].1 = v.clone();
                    } else {
                        if props.len() >= MAX_SCHEMA_PROPERTIES {
                            return err(
                                &format!("{p}/properties"),
                                format!("more than {MAX_SCHEMA_PROPERTIES} properties"),
                            );
                        }
                        prop_index.insert(k.clone(), props.len());
                        props.push((
                            k.clone(),
                            v.clone(),
                            format!("{p}/properties/{}", escape_pointer(k)),
                        ));
                    }
                }
            }
            if let Some(rs) = mo.get("required").and_then(Value::as_array) {
                for r in rs.iter().filter_map(Value::as_str) {
                    if required_set.insert(r.to_string()) {
                        required.push(r.to_string());
                    }
                }
            }
            if let Some(a) = mo.get("additionalProperties") {
                additional = Some((a.clone(), format!("{p}/additionalProperties")));
            }
        }
        let props_ref: Vec<(String, &Value, String)> = props
            .iter()
            .map(|(k, v, p)| (k.clone(), v, p.clone()))
            .collect();
        let add = additional.as_ref().map(|(v, p)| (v, p.as_str()));
        let body = self.object(&props_ref, &required, add, name, path)?;
        self.add_rule(name_or(name, "object"), body)
    }

    fn typed(&mut self, obj: &Map<String, Value>, t: &str, name: &str, path: &str) -> Res<String> {
        match t {
            "object" => {
                let mut props = Vec::new();
                if let Some(ps) = obj.get("properties") {
                    let Some(ps) = ps.as_object() else {
                        return err(
                            &format!("{path}/properties"),
                            "`properties` must be an object",
                        );
                    };
                    if ps.len() > MAX_SCHEMA_PROPERTIES {
                        return err(
                            &format!("{path}/properties"),
                            format!("more than {MAX_SCHEMA_PROPERTIES} properties"),
                        );
                    }
                    for (k, v) in ps {
                        props.push((
                            k.clone(),
                            v,
                            format!("{path}/properties/{}", escape_pointer(k)),
                        ));
                    }
                }
                let mut required = Vec::new();
                if let Some(rs) = obj.get("required") {
                    let Some(rs) = rs.as_array() else {
                        return err(&format!("{path}/required"), "`required` must be an array");
                    };
                    for (i, r) in rs.iter().enumerate() {
                        let Some(r) = r.as_str() else {
                            return err(
                                &format!("{path}/required/{i}"),
                                "`required` entries must be strings",
                            );
                        };
                        required.push(r.to_string());
                    }
                }
                let ap_path = format!("{path}/additionalProperties");
                let add = obj
                    .get("additionalProperties")
                    .map(|v| (v, ap_path.as_str()));
                if props.is_empty() && required.is_empty() && add.is_none() {
                    // A bare {"type": "object"}: any object (llama.cpp does the same).
                    return Ok(self.primitive("object"));
                }
                let body = self.object(&props, &required, add, name, path)?;
                self.add_rule(name_or(name, "object"), body)
            }
            "array" => self.array(obj, name, path),
            "string" => self.string(obj, name, path),
            "integer" => self.integer(obj, name, path),
            "number" => self.number(obj, name, path),
            "boolean" => Ok(self.primitive("boolean")),
            "null" => Ok(self.primitive("null")),
            other => err(&format!("{path}/type"), format!("unknown type {other:?}")),
        }
    }

    /// `{ required..., optional...? }`: required properties in declared order, then any subset
    /// of the optional ones, still in order (llama.cpp's layout), then additional ones if allowed.
    fn object(
        &mut self,
        props: &[(String, &Value, String)],
        required: &[String],
        additional: Option<(&Value, &str)>,
        name: &str,
        path: &str,
    ) -> Res<String> {
        let names: HashSet<&str> = props.iter().map(|p| p.0.as_str()).collect();
        let required_set: HashSet<&str> = required.iter().map(String::as_str).collect();
        for r in required {
            if !names.contains(r.as_str()) {
                return err(
                    &format!("{path}/required"),
                    format!("required property {r:?} has no schema in `properties`"),
                );
            }
        }
        // kv rule per property, in declared order, with whether it is required.
        let mut members: Vec<(String, bool)> = Vec::new();
        for (k, v, p) in props {
            let value = self.visit(v, &join(name, k), p)?;
            let rule = self.add_rule(
                &format!("{}-kv", join(name, k)),
                format!(
                    "{} space \":\" space {value}",
                    literal(&Value::String(k.clone()).to_string())
                ),
            )?;
            members.push((rule, required_set.contains(k.as_str())));
        }
        let mut extra: Option<String> = None;
        match additional {
            None | Some((Value::Bool(false), _)) => {}
            Some((schema, ap_path)) => {
                let sub = join(name, "additional");
                let value = match schema {
                    Value::Bool(true) => self.primitive("value"),
                    s => self.visit(s, &format!("{sub}-value"), ap_path)?,
                };
                let key = if props.is_empty() {
                    self.primitive("string")
                } else {
                    let names: Vec<&str> = props.iter().map(|p| p.0.as_str()).collect();
                    let body = self.not_strings(&names, ap_path)?;
                    self.add_rule(&format!("{sub}-k"), body)?
                };
                extra = Some(
                    self.add_rule(&format!("{sub}-kv"), format!("{key} \":\" space {value}"))?,
                );
            }
        }
        // Members in declared order, optional ones skippable, commas only between present
        // ones: built back to front as two states per position, "nothing written yet" (`first`)
        // and "something written" (`after`, so a comma comes next). Additional properties, if
        // allowed, come last, any number of them.
        let (mut first, mut after): (String, String) = match &extra {
            None => (String::new(), String::new()),
            Some(x) => (
                format!(r#"( {x} ( "," space {x} )* )?"#),
                format!(r#"( "," space {x} )*"#),
            ),
        };
        let obj = name_or(name, "object").to_string();
        for (i, (kv, req)) in members.iter().enumerate().rev() {
            let f_next = self.state_rule(&format!("{obj}-{i}-first"), &first)?;
            let a_next = self.state_rule(&format!("{obj}-{i}-after"), &after)?;
            let with_first = format!("{kv} {a_next}");
            let with_after = format!(r#"( "," space {kv} ) {a_next}"#);
            if *req {
                first = with_first;
                after = with_after;
            } else {
                // An empty alternative is written as `( ... )?`: a trailing `|` would continue
                // the rule onto the next line.
                first = if f_next.is_empty() {
                    format!("( {with_first} )?")
                } else {
                    format!("{with_first} | {f_next}")
                };
                after = if a_next.is_empty() {
                    format!("( {with_after} )?")
                } else {
                    format!("{with_after} | {a_next}")
                };
            }
        }
        let _ = after;
        if first.is_empty() {
            return Ok(r#""{" space "}" space"#.into());
        }
        Ok(format!(r#""{{" space ( {first} ) "}}" space"#))
    }

    /// A rule for one state of the member chain ("" for the empty tail: no rule needed).
    fn state_rule(&mut self, name: &str, body: &str) -> Res<String> {
        if body.is_empty() {
            return Ok(String::new());
        }
        self.add_rule(name, body.to_string())
    }

    /// A JSON string (with its trailing space) that is none of `names`.
    fn not_strings(&mut self, names: &[&str], path: &str) -> Res<String> {
        #[derive(Default)]
        struct Node {
            children: BTreeMap<char, Node>,
            end: bool,
        }
        let mut root = Node::default();
        for n in names {
            if n.chars().count() > MAX_SCHEMA_NAME {
                return err(path, format!("additional properties beside a property name longer than {MAX_SCHEMA_NAME} characters are not supported"));
            }
            if n.chars()
                .any(|c| c == '"' || c == '\\' || (c as u32) < 0x20 || c as u32 == 0x7F)
            {
                return err(path, format!("additional properties beside a property name that needs escaping ({n:?}) are not supported"));
            }
            let mut node = &mut root;
            for ch in n.chars() {
                node = node.children.entry(ch).or_default();
            }
            node.end = true;
        }
        let ch = self.primitive("char");
        fn expr(n: &Node, ch: &str) -> String {
            let mut alts = Vec::new();
            for (c, child) in &n.children {
                alts.push(format!("{} {}", literal(&c.to_string()), expr(child, ch)));
            }
            // Any other char, then anything.
            let mut excl = String::from(r#"[^"\\\x7F\x00-\x1F"#);
            for c in n.children.keys() {
                match c {
                    ']' | '-' | '^' => {
                        excl.push('\\');
                        excl.push(*c);
                    }
                    c => excl.push(*c),
                }
            }
            excl.push(']');
            alts.push(format!(
                r#"({excl} | [\\] (["\\/bfnrt] | "u" [0-9a-fA-F]{{4}})) {ch}* "\"""#
            ));
            if !n.end {
                alts.push(r#""\"""#.into());
            }
            format!("({})", alts.join(" | "))
        }
        Ok(format!(r#""\"" {} space"#, expr(&root, &ch)))
    }

    fn array(&mut self, obj: &Map<String, Value>, name: &str, path: &str) -> Res<String> {
        let min = count(obj, "minItems", path)?.unwrap_or(0);
        let max = count(obj, "maxItems", path)?;
        let mut tuple: Vec<String> = Vec::new();
        let mut rest: Option<String> = None;
        let prefix = obj.get("prefixItems").or(match obj.get("items") {
            Some(v @ Value::Array(_)) => Some(v),
            _ => None,
        });
        let prefix_kw = if obj.contains_key("prefixItems") {
            "prefixItems"
        } else {
            "items"
        };
        if let Some(p) = prefix {
            let Some(items) = p.as_array() else {
                return err(
                    &format!("{path}/prefixItems"),
                    "`prefixItems` must be an array",
                );
            };
            for (i, it) in items.iter().enumerate() {
                tuple.push(self.visit(
                    it,
                    &join(name, &format!("tuple-{i}")),
                    &format!("{path}/{prefix_kw}/{i}"),
                )?);
            }
        }
        match obj.get("items") {
            Some(Value::Array(_)) if prefix_kw == "items" => {}
            Some(Value::Bool(false)) => {}
            Some(it) => {
                rest = Some(self.visit(it, &join(name, "item"), &format!("{path}/items"))?)
            }
            None if tuple.is_empty() => rest = Some(self.primitive("value")),
            None => rest = Some(self.primitive("value")),
        }
        if !tuple.is_empty() {
            // The tuple is generated whole (llama.cpp does too); more items follow only if
            // `items` allows them and maxItems leaves room.
            let n = tuple.len() as u64;
            if max.is_some_and(|m| m < n) {
                return err(
                    &format!("{path}/maxItems"),
                    "maxItems below the number of prefixItems is not supported",
                );
            }
            let mut body = String::from(r#""[" space "#);
            body.push_str(&tuple.join(r#" "," space "#));
            let extra_min = min.saturating_sub(n);
            let extra_max = max.map(|m| m - n);
            if let Some(r) = rest {
                if extra_max != Some(0) {
                    let item = format!(r#"( "," space {r} )"#);
                    body.push(' ');
                    body.push_str(&repetition(&item, extra_min, extra_max));
                }
            } else if extra_min > 0 {
                return err(
                    &format!("{path}/minItems"),
                    "minItems above the number of prefixItems with `items: false` matches nothing",
                );
            }
            body.push_str(r#" "]" space"#);
            return self.add_rule(name_or(name, "array"), body);
        }
        let Some(item) = rest else {
            // items: false, no prefix: only the empty array.
            if min > 0 {
                return err(
                    &format!("{path}/minItems"),
                    "minItems > 0 with `items: false` matches nothing",
                );
            }
            return Ok(r#""[" space "]" space"#.into());
        };
        if let Some(m) = max {
            if m < min {
                return err(&format!("{path}/maxItems"), "maxItems is below minItems");
            }
        }
        let body = if max == Some(0) {
            r#""[" space "]" space"#.to_string()
        } else {
            let first = item.clone();
            let more = repetition(
                &format!(r#"( "," space {item} )"#),
                min.saturating_sub(1),
                max.map(|m| m - 1),
            );
            let list = format!("{first} {more}");
            if min == 0 {
                format!(r#""[" space ( {list} )? "]" space"#)
            } else {
                format!(r#""[" space {list} "]" space"#)
            }
        };
        self.add_rule(name_or(name, "array"), body)
    }

    fn string(&mut self, obj: &Map<String, Value>, name: &str, path: &str) -> Res<String> {
        let min = count(obj, "minLength", path)?;
        let max = count(obj, "maxLength", path)?;
        if let Some(f) = obj.get("format") {
            if min.is_some() || max.is_some() || obj.contains_key("pattern") {
                return err(
                    path,
                    "`format` together with `minLength`/`maxLength`/`pattern` is not supported",
                );
            }
            return match f.as_str() {
                Some("date") => Ok(self.primitive("date-string")),
                Some("time") => Ok(self.primitive("time-string")),
                Some("date-time") => Ok(self.primitive("date-time-string")),
                Some("uuid") => Ok(self.primitive("uuid")),
                Some(other) => err(&format!("{path}/format"), format!("unsupported string format {other:?} (supported: date, time, date-time, uuid)")),
                None => err(&format!("{path}/format"), "`format` must be a string"),
            };
        }
        if let Some(p) = obj.get("pattern") {
            if min.is_some() || max.is_some() {
                return err(
                    path,
                    "`pattern` together with `minLength`/`maxLength` is not supported",
                );
            }
            let Some(p) = p.as_str() else {
                return err(&format!("{path}/pattern"), "`pattern` must be a string");
            };
            let ch = self.primitive("char");
            let body = regex_to_gbnf(p, &ch).or_else(|e| err(&format!("{path}/pattern"), e))?;
            return self.add_rule(
                name_or(name, "pattern"),
                format!(r#""\"" {body} "\"" space"#),
            );
        }
        if min.is_none() && max.is_none() {
            return Ok(self.primitive("string"));
        }
        let lo = min.unwrap_or(0);
        if max.is_some_and(|m| m < lo) {
            return err(&format!("{path}/maxLength"), "maxLength is below minLength");
        }
        let ch = self.primitive("char");
        let body = format!(r#""\"" {} "\"" space"#, repetition(&ch, lo, max));
        self.add_rule(name_or(name, "string"), body)
    }

    /// Numbers: bounds only at zero (sign constraints: `minimum: 0`, `exclusiveMinimum: 0`,
    /// ...), the common case; other bounds on non-integers are an error.
    fn number(&mut self, obj: &Map<String, Value>, name: &str, path: &str) -> Res<String> {
        let mut lo = None; // Some(exclusive)
        let mut hi = None;
        for k in ["minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"] {
            let Some(v) = obj.get(k) else { continue };
            if v.as_f64() != Some(0.0) {
                return err(&format!("{path}/{k}"), format!("`{k}` on a number is only supported at 0 (use type integer for other bounds)"));
            }
            let excl = k.starts_with("exclusive");
            if k.ends_with("inimum") {
                lo = Some(lo.unwrap_or(false) || excl);
            } else {
                hi = Some(hi.unwrap_or(false) || excl);
            }
        }
        if lo.is_none() && hi.is_none() {
            return Ok(self.primitive("number"));
        }
        self.primitive("integral-part");
        self.primitive("decimal-part");
        let exp = r#"([eE] [-+]? decimal-part)?"#;
        let positive = format!(
            r#"([1-9] [0-9]{{0,15}} ("." decimal-part)? | "0" "." [0-9]{{0,15}} [1-9] [0-9]{{0,15}}) {exp}"#
        );
        let zero = format!(r#"("0" ("." [0]{{1,16}})? {exp})"#);
        let body = match (lo, hi) {
            (Some(false), None) => format!("({positive} | {zero})"),
            (Some(true), None) => format!("({positive})"),
            (None, Some(false)) => format!(r#"("-" {positive} | {zero})"#),
            (None, Some(true)) => format!(r#"("-" {positive})"#),
            (Some(false), Some(false)) => zero,
            _ => return err(path, "this combination of number bounds matches nothing"),
        };
        self.add_rule(name_or(name, "number"), format!("{body} space"))
    }

    fn integer(&mut self, obj: &Map<String, Value>, name: &str, path: &str) -> Res<String> {
        let bound = |k: &str| -> Res<Option<f64>> {
            match obj.get(k) {
                None => Ok(None),
                Some(Value::Number(n)) => Ok(n.as_f64()),
                Some(Value::Bool(_)) => err(
                    &format!("{path}/{k}"),
                    format!("boolean `{k}` (draft 4) is not supported; use a number"),
                ),
                Some(_) => err(&format!("{path}/{k}"), format!("`{k}` must be a number")),
            }
        };
        let mut lo: Option<i128> = bound("minimum")?.map(|v| v.ceil() as i128);
        let mut hi: Option<i128> = bound("maximum")?.map(|v| v.floor() as i128);
        if let Some(v) = bound("exclusiveMinimum")? {
            let x = v.floor() as i128 + 1;
            lo = Some(lo.map_or(x, |l| l.max(x)));
        }
        if let Some(v) = bound("exclusiveMaximum")? {
            let x = v.ceil() as i128 - 1;
            hi = Some(hi.map_or(x, |h| h.min(x)));
        }
        if lo.is_none() && hi.is_none() {
            return Ok(self.primitive("integer"));
        }
        const LIMIT: i128 = 9_999_999_999_999_999; // 16 digits, as integral-part allows
        if lo.is_some_and(|l| l.abs() > LIMIT) || hi.is_some_and(|h| h.abs() > LIMIT) {
            return err(path, "integer bounds beyond 16 digits are not supported");
        }
        if let (Some(l), Some(h)) = (lo, hi) {
            if l > h {
                return err(path, "the integer range is empty (minimum above maximum)");
            }
        }
        let body = int_range(lo, hi, LIMIT);
        self.add_rule(name_or(name, "integer"), format!("({body}) space"))
    }
}

fn name_or<'n>(name: &'n str, default: &'n str) -> &'n str {
    if name.is_empty() {
        default
    } else {
        name
    }
}

fn escape_pointer(k: &str) -> String {
    k.replace('~', "~0").replace('/', "~1")
}

fn count(obj: &Map<String, Value>, k: &str, path: &str) -> Res<Option<u64>> {
    match obj.get(k) {
        None => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if n <= MAX_SCHEMA_REPEAT => Ok(Some(n)),
            Some(_) => err(
                &format!("{path}/{k}"),
                format!("`{k}` above {MAX_SCHEMA_REPEAT} is not supported"),
            ),
            None => err(
                &format!("{path}/{k}"),
                format!("`{k}` must be a non-negative integer"),
            ),
        },
    }
}

/// `item{min,max}` in GBNF, written the short way where there is one.
fn repetition(item: &str, min: u64, max: Option<u64>) -> String {
    match (min, max) {
        (0, Some(0)) => String::new(),
        (0, Some(1)) => format!("{item}?"),
        (0, None) => format!("{item}*"),
        (1, None) => format!("{item}+"),
        (m, None) => format!("{item}{{{m},}}"),
        (m, Some(n)) if m == n => format!("{item}{{{m}}}"),
        (m, Some(n)) => format!("{item}{{{m},{n}}}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Integer ranges
// ---------------------------------------------------------------------------------------------

/// Decimal integers in `lo..=hi` (either end open), no leading zeros, "-0" never produced.
fn int_range(lo: Option<i128>, hi: Option<i128>, limit: i128) -> String {
    let mut alts = Vec::new();
    // Non-negative part.
    let nlo = lo.map_or(0, |l| l.max(0));
    let nhi = hi.unwrap_or(limit);
    if nlo <= nhi {
        alts.push(nonneg_range(nlo, nhi));
    }
    // Negative part: -x for x in [max(1, -hi), -lo].
    let xlo = hi.map_or(1, |h| (-h).max(1));
    let xhi = lo.map_or(limit, |l| -l);
    if xlo <= xhi {
        alts.push(format!("\"-\" ({})", nonneg_range(xlo, xhi)));
    }
    alts.join(" | ")
}

/// 0 <= a <= b: split by number of digits, then per digit position.
fn nonneg_range(a: i128, b: i128) -> String {
    let mut alts = Vec::new();
    let mut lo = a;
    while lo <= b {
        let d = lo.to_string().len() as u32;
        let top = 10i128.pow(d) - 1;
        let hi = top.min(b);
        alts.push(same_len(&lo.to_string(), &hi.to_string()));
        lo = hi + 1;
    }
    alts.join(" | ")
}

/// Numbers between two digit strings of equal length.
fn same_len(x: &str, y: &str) -> String {
    let (xb, yb) = (x.as_bytes(), y.as_bytes());
    let mut i = 0;
    while i < xb.len() && xb[i] == yb[i] {
        i += 1;
    }
    let prefix = if i > 0 {
        format!("{} ", literal(&x[..i]))
    } else {
        String::new()
    };
    if i == xb.len() {
        return format!("({})", literal(x));
    }
    let rest = xb.len() - i - 1;
    let digits = |n: usize| {
        if n == 0 {
            String::new()
        } else {
            format!(" [0-9]{{{n}}}")
        }
    };
    let (a, b) = (xb[i], yb[i]);
    let xr = &x[i + 1..];
    let yr = &y[i + 1..];
    let zeros = xr.bytes().all(|c| c == b'0');
    let nines = yr.bytes().all(|c| c == b'9');
    let mut alts = Vec::new();
    let mut from = a;
    if !zeros {
        alts.push(format!(
            "[{}] ({})",
            a as char,
            same_len(xr, &"9".repeat(rest))
        ));
        from = a + 1;
    }
    let to = if nines { b } else { b - 1 };
    if from <= to {
        alts.push(format!("[{}-{}]{}", from as char, to as char, digits(rest)));
    }
    if !nines {
        alts.push(format!(
            "[{}] ({})",
            b as char,
            same_len(&"0".repeat(rest), yr)
        ));
    }
    format!("({prefix}({}))", alts.join(" | "))
}

// ---------------------------------------------------------------------------------------------
// Regular expressions (the `pattern` keyword)
// ---------------------------------------------------------------------------------------------

/// A regex (ECMA-262 subset) over the *decoded* string -> GBNF over its JSON-escaped form.
/// Unanchored ends match anything there, as `pattern` is a search, not a full match.
fn regex_to_gbnf(re: &str, ch: &str) -> Result<String, String> {
    let chars: Vec<char> = re.chars().collect();
    let mut p = Re { s: &chars, i: 0 };
    let anchored_start = p.eat('^');
    let body = p.alternation(0)?;
    let anchored_end = p.eat('$');
    if p.i < chars.len() {
        return Err(format!(
            "unsupported regex syntax at offset {} in {re:?}",
            p.i
        ));
    }
    let any = format!("{ch}*");
    Ok(format!(
        "{}({body}){}",
        if anchored_start {
            String::new()
        } else {
            format!("{any} ")
        },
        if anchored_end {
            String::new()
        } else {
            format!(" {any}")
        }
    ))
}

struct Re<'s> {
    s: &'s [char],
    i: usize,
}

impl<'s> Re<'s> {
    fn peek(&self) -> Option<char> {
        self.s.get(self.i).copied()
    }
    fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn alternation(&mut self, depth: usize) -> Result<String, String> {
        if depth > 100 {
            return Err("regex nested too deeply".into());
        }
        let mut alts = vec![self.sequence(depth)?];
        while self.eat('|') {
            alts.push(self.sequence(depth)?);
        }
        Ok(alts.join(" | "))
    }

    fn sequence(&mut self, depth: usize) -> Result<String, String> {
        let mut items: Vec<String> = Vec::new();
        while let Some(c) = self.peek() {
            let atom = match c {
                '|' | ')' => break,
                '$' if self.i + 1 == self.s.len() => break,
                '^' | '$' => {
                    return Err(format!(
                        "anchor '{c}' in the middle of a pattern is not supported"
                    ))
                }
                '(' => {
                    self.i += 1;
                    if self.eat('?') {
                        if !self.eat(':') {
                            return Err(
                                "lookaround and named groups are not supported in patterns".into(),
                            );
                        }
                    }
                    let inner = self.alternation(depth + 1)?;
                    if !self.eat(')') {
                        return Err("unbalanced '(' in pattern".into());
                    }
                    format!("({inner})")
                }
                '[' => {
                    self.i += 1;
                    self.class()?
                }
                '.' => {
                    self.i += 1;
                    // Any char but a line break, JSON-escaped where needed.
                    format!(
                        r#"([^"\\\x7F\x00-\x1F\n\r] | [\\] (["\\/bft] | "u" [0-9a-fA-F]{{4}}))"#
                    )
                }
                '\\' => {
                    self.i += 1;
                    self.escape()?
                }
                '*' | '+' | '?' | '{' => {
                    return Err(format!("'{c}' with nothing to repeat in pattern"))
                }
                _ => {
                    self.i += 1;
                    literal_json_char(c)
                }
            };
            let atom = self.quantified(atom)?;
            items.push(atom);
        }
        if items.is_empty() {
            return Ok("\"\"".into());
        }
        Ok(items.join(" "))
    }

    fn quantified(&mut self, atom: String) -> Result<String, String> {
        let (min, max) = match self.peek() {
            Some('*') => (0, None),
            Some('+') => (1, None),
            Some('?') => (0, Some(1)),
            Some('{') => {
                let start = self.i;
                self.i += 1;
                let num = |r: &mut Self| {
                    let a = r.i;
                    while r.peek().is_some_and(|c| c.is_ascii_digit()) {
                        r.i += 1;
                    }
                    r.s[a..r.i].iter().collect::<String>().parse::<u64>().ok()
                };
                let Some(m) = num(self) else {
                    // A literal '{' (ECMA allows it when not a quantifier).
                    self.i = start;
                    return Ok(atom);
                };
                let n = if self.eat(',') { num(self) } else { Some(m) };
                if !self.eat('}') {
                    return Err("unterminated {m,n} in pattern".into());
                }
                if m > 1000 || n.is_some_and(|n| n > 1000 || n < m) {
                    return Err("pattern repetition bounds out of range".into());
                }
                self.i -= 1; // the common advance below
                (m, n)
            }
            _ => return Ok(atom),
        };
        self.i += 1;
        // Lazy / possessive suffixes do not change the language.
        if !self.eat('?') {
            self.eat('+');
        }
        Ok(repetition(&format!("({atom})"), min, max))
    }

    fn class_escape(&mut self, c: char) -> Result<Option<(bool, Vec<(u32, u32)>)>, String> {
        let digits = vec![(0x30, 0x39)];
        let word = vec![(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)];
        let space = vec![(0x09, 0x0D), (0x20, 0x20)];
        Ok(match c {
            'd' => Some((false, digits)),
            'D' => Some((true, digits)),
            'w' => Some((false, word)),
            'W' => Some((true, word)),
            's' => Some((false, space)),
            'S' => Some((true, space)),
            _ => None,
        })
    }

    fn escaped_char(&mut self, c: char) -> Result<char, String> {
        Ok(match c {
            'n' => '\n',
            'r' => '\r',
            't' => '\t',
            'f' => '\x0C',
            'v' => '\x0B',
            '0' => '\0',
            'x' | 'u' => {
                let n = if c == 'x' { 2 } else { 4 };
                let h: String = self.s.get(self.i..self.i + n).map(|s| s.iter().collect()).unwrap_or_default();
                let v = u32::from_str_radix(&h, 16).map_err(|_| format!("bad \\{c} escape in pattern"))?;
                self.i += n;
                char::from_u32(v).ok_or_else(|| format!("bad \\{c} escape in pattern"))?
            }
            c if c.is_ascii_alphanumeric() => {
                return Err(format!("unsupported escape '\\{c}' in pattern (backreferences, \\b and the like have no grammar equivalent)"))
            }
            c => c,
        })
    }

    fn escape(&mut self) -> Result<String, String> {
        let Some(c) = self.peek() else {
            return Err("pattern ends with '\\'".into());
        };
        self.i += 1;
        if let Some((neg, ranges)) = self.class_escape(c)? {
            return Ok(json_class(neg, &ranges));
        }
        Ok(literal_json_char(self.escaped_char(c)?))
    }

    fn class(&mut self) -> Result<String, String> {
        let neg = self.eat('^');
        let mut ranges: Vec<(u32, u32)> = Vec::new();
        let mut first = true;
        loop {
            let Some(c) = self.peek() else {
                return Err("unterminated '[' in pattern".into());
            };
            if c == ']' && !first {
                self.i += 1;
                break;
            }
            first = false;
            self.i += 1;
            let lo = if c == '\\' {
                let Some(e) = self.peek() else {
                    return Err("pattern ends with '\\'".into());
                };
                self.i += 1;
                if let Some((n2, rs)) = self.class_escape(e)? {
                    if n2 {
                        return Err(format!(
                            "negated '\\{e}' inside a class is not supported in patterns"
                        ));
                    }
                    ranges.extend(rs);
                    continue;
                }
                self.escaped_char(e)?
            } else {
                c
            };
            if self.peek() == Some('-') && self.s.get(self.i + 1).is_some_and(|&n| n != ']') {
                self.i += 1;
                let mut hi = self.s[self.i];
                self.i += 1;
                if hi == '\\' {
                    let Some(e) = self.peek() else {
                        return Err("pattern ends with '\\'".into());
                    };
                    self.i += 1;
                    hi = self.escaped_char(e)?;
                }
                if (hi as u32) < (lo as u32) {
                    return Err("reversed range in a pattern class".into());
                }
                ranges.push((lo as u32, hi as u32));
            } else {
                ranges.push((lo as u32, lo as u32));
            }
        }
        Ok(json_class(neg, &ranges))
    }
}

/// One decoded char as its JSON-escaped GBNF literal.
fn literal_json_char(c: char) -> String {
    let json = Value::String(c.to_string()).to_string();
    literal(&json[1..json.len() - 1])
}

fn class_item(c: u32) -> String {
    match char::from_u32(c) {
        Some(ch) if ch.is_ascii_graphic() && !matches!(ch, '\\' | ']' | '-' | '^' | '"' | '[') => {
            ch.to_string()
        }
        _ => format!("\\U{c:08X}"),
    }
}

/// A class of decoded chars in JSON-escaped form: the plain chars straight, the ones JSON must
/// escape (`"`, `\`, controls) as their escape sequences.
fn json_class(neg: bool, ranges: &[(u32, u32)]) -> String {
    let needs_escape = |c: u32| c < 0x20 || c == 0x22 || c == 0x5C;
    if neg {
        // Not in the ranges: plain chars outside them, or an escape for an excluded-from-plain
        // char that is itself outside the ranges (rare; allow the generic escapes only when no
        // escapable char is excluded).
        let mut s = String::from(r#"[^"\\\x7F\x00-\x1F"#);
        for &(a, b) in ranges {
            s.push_str(&class_item(a));
            if b != a {
                s.push('-');
                s.push_str(&class_item(b));
            }
        }
        s.push(']');
        let excludes_escapable = ranges
            .iter()
            .any(|&(a, b)| (a..=b.min(0x7F)).any(needs_escape));
        if excludes_escapable {
            return s;
        }
        return format!(r#"({s} | [\\] (["\\/bfnrt] | "u" [0-9a-fA-F]{{4}}))"#);
    }
    let mut plain = Vec::new();
    let mut escaped = Vec::new();
    for &(a, b) in ranges {
        // Split off the chars JSON must escape (all below 0x80).
        let mut c = a;
        while c <= b {
            if c < 0x80 && needs_escape(c) {
                escaped.push(literal_json_char(char::from_u32(c).unwrap_or('\0')));
                c += 1;
                continue;
            }
            let mut e = c;
            while e < b && !(e + 1 < 0x80 && needs_escape(e + 1)) {
                e += 1;
            }
            plain.push((c, e));
            if e == u32::MAX {
                break;
            }
            c = e + 1;
        }
    }
    let mut alts = Vec::new();
    if !plain.is_empty() {
        let mut s = String::from("[");
        for (a, b) in plain {
            s.push_str(&class_item(a));
            if b != a {
                s.push('-');
                s.push_str(&class_item(b));
            }
        }
        s.push(']');
        alts.push(s);
    }
    alts.extend(escaped);
    if alts.is_empty() {
        return "[^\\x00-\\U0010FFFF]".into();
    }
    if alts.len() == 1 {
        return alts.pop().unwrap_or_default();
    }
    format!("({})", alts.join(" | "))
}
