//! Constrained output options shared by `run` and `chat`: --grammar TEXT / --grammar-file FILE,
//! --json-schema TEXT / --json-schema-file FILE (llama.cpp's names), --json.
//!
//! `load` turns the flags into a [`Grammar`] (None when no flag is given); [`matcher`] makes its
//! matcher over the model's vocabulary (the engine's `token_table`), which the engine's
//! generation step samples under.

use anyhow::{anyhow, Context, Result};
use clap::Args;
use cria_engine::grammar::{json_schema_to_gbnf, Grammar, Matcher};
use cria_tokenizer::Tokenizer;
use std::path::{Path, PathBuf};

#[derive(Args, Clone, Debug)]
pub struct ConstraintArgs {
    /// A GBNF grammar (llama.cpp's format), as text; the output matches it.
    #[arg(long, value_name = "GBNF", conflicts_with_all = ["grammar_file", "json_schema", "json_schema_file", "json"])]
    pub grammar: Option<String>,
    /// A GBNF grammar file; the output matches it.
    #[arg(long = "grammar-file", value_name = "FILE", conflicts_with_all = ["json_schema", "json_schema_file", "json"])]
    pub grammar_file: Option<PathBuf>,
    /// A JSON Schema, as text; the output is JSON valid under it. Unsupported keywords are
    /// errors.
    #[arg(long = "json-schema", value_name = "SCHEMA", conflicts_with_all = ["json_schema_file", "json"])]
    pub json_schema: Option<String>,
    /// A JSON Schema file; the output is JSON valid under it.
    #[arg(
        long = "json-schema-file",
        value_name = "FILE",
        conflicts_with = "json"
    )]
    pub json_schema_file: Option<PathBuf>,
    /// Any valid JSON.
    #[arg(long)]
    pub json: bool,
}

/// A file's text, with the errors a user can act on: missing, unreadable, not UTF-8.
fn read_text(path: &Path, what: &str) -> Result<String> {
    let bytes =
        std::fs::read(path).with_context(|| format!("cannot read {what} {}", path.display()))?;
    String::from_utf8(bytes).map_err(|e| {
        anyhow!(
            "{what} {} is not UTF-8 text (invalid byte at offset {})",
            path.display(),
            e.utf8_error().valid_up_to()
        )
    })
}

fn parse_gbnf(src: &str, origin: &str) -> Result<Grammar> {
    Grammar::parse(src).map_err(|e| anyhow!("{origin}:{e}"))
}

fn schema_grammar(src: &str, origin: &str) -> Result<Grammar> {
    let schema: serde_json::Value = serde_json::from_str(src)
        .map_err(|e| anyhow!("{origin}:{}:{}: not valid JSON: {e}", e.line(), e.column()))?;
    let gbnf = json_schema_to_gbnf(&schema).map_err(|e| anyhow!("{origin}: {e}"))?;
    Grammar::parse(&gbnf).map_err(|e| {
        anyhow!("{origin}: internal error: the grammar made from the schema does not parse: {e}\n{gbnf}")
    })
}

impl ConstraintArgs {
    /// The grammar the flags ask for, or None without any of them.
    pub fn load(&self) -> Result<Option<Grammar>> {
        if let Some(src) = &self.grammar {
            return parse_gbnf(src, "--grammar")
                .map(Some)
                .map_err(|e| match Path::new(src).is_file() {
                    // llama.cpp's --grammar is the grammar's text; cria's was a file name once.
                    true => anyhow!("{e}\n(--grammar takes the grammar's text; for a file use --grammar-file {src})"),
                    false => e,
                });
        }
        if let Some(p) = &self.grammar_file {
            let src = read_text(p, "grammar file")?;
            return parse_gbnf(&src, &p.display().to_string()).map(Some);
        }
        if let Some(src) = &self.json_schema {
            return schema_grammar(src, "--json-schema").map(Some);
        }
        if let Some(p) = &self.json_schema_file {
            let src = read_text(p, "JSON Schema file")?;
            return schema_grammar(&src, &p.display().to_string()).map(Some);
        }
        if self.json {
            return Ok(Some(Grammar::any_json()));
        }
        Ok(None)
    }

    /// What the constrained output is, for messages: "the JSON" or "the grammar's output".
    pub fn output_kind(&self) -> &'static str {
        if self.grammar.is_some() || self.grammar_file.is_some() {
            "the grammar's output"
        } else {
            "the JSON"
        }
    }
}

/// A matcher of `grammar` (from [`ConstraintArgs::load`]) over the model's vocabulary.
pub fn matcher(tok: &Tokenizer, grammar: Option<Grammar>) -> Result<Option<Matcher>> {
    grammar
        .map(|g| Matcher::new(g, std::sync::Arc::new(cria_engine::load::token_table(tok))))
        .transpose()
        .map_err(|e| anyhow!("grammar: {e}"))
}
