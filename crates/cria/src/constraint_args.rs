//! Constrained output options shared by `run` and `chat`: --grammar, --json-schema, --json.
//!
//! `load` turns the flags into a [`Grammar`] (None when no flag is given); [`token_table`] builds
//! the vocabulary view the matcher needs, once per model. Per reply, the caller makes a
//! `Matcher::new(grammar.clone(), table.clone())` and samples with `grammar::sample`.

use anyhow::{anyhow, Context, Result};
use clap::Args;
use cria_engine::grammar::{json_schema_to_gbnf, Grammar, TokenTable};
use cria_tokenizer::Tokenizer;
use std::path::{Path, PathBuf};

#[derive(Args, Clone, Debug)]
pub struct ConstraintArgs {
    /// A GBNF grammar file (llama.cpp's format); the output matches it.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["json_schema", "json"])]
    pub grammar: Option<PathBuf>,
    /// A JSON Schema file; the output is JSON valid under it. Unsupported keywords are errors.
    #[arg(long = "json-schema", value_name = "FILE", conflicts_with = "json")]
    pub json_schema: Option<PathBuf>,
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

impl ConstraintArgs {
    /// The grammar the flags ask for, or None without any of them.
    pub fn load(&self) -> Result<Option<Grammar>> {
        if let Some(p) = &self.grammar {
            let src = read_text(p, "grammar file")?;
            let g = Grammar::parse(&src).map_err(|e| anyhow!("{}:{e}", p.display()))?;
            return Ok(Some(g));
        }
        if let Some(p) = &self.json_schema {
            let src = read_text(p, "JSON Schema file")?;
            let schema: serde_json::Value = serde_json::from_str(&src).map_err(|e| {
                anyhow!(
                    "{}:{}:{}: not valid JSON: {e}",
                    p.display(),
                    e.line(),
                    e.column()
                )
            })?;
            let gbnf = json_schema_to_gbnf(&schema).map_err(|e| anyhow!("{}: {e}", p.display()))?;
            let g = Grammar::parse(&gbnf).map_err(|e| {
                anyhow!(
                    "{}: internal error: the grammar made from the schema does not parse: {e}\n{gbnf}",
                    p.display()
                )
            })?;
            return Ok(Some(g));
        }
        if self.json {
            return Ok(Some(Grammar::any_json()));
        }
        Ok(None)
    }
}

/// The vocabulary as the grammar matcher sees it: each token's bytes (control tokens none, so a
/// grammar never produces them by accident), the end-of-generation ids, and control tokens'
/// texts as names for `<think>`-style token references. Build once per model; share via `Arc`.
pub fn token_table(tok: &Tokenizer) -> TokenTable {
    let eog: Vec<u32> = tok.eog_ids().collect();
    TokenTable::from_vocab(
        tok.vocab_size() as u32,
        |t| tok.token_to_piece(t),
        &eog,
        |t| tok.is_control(t).then(|| tok.token_text(t).to_string()),
    )
}
