//! Constrained output options shared by `run` and `chat`: --grammar, --json-schema, --json.

use clap::Args;
use std::path::PathBuf;

#[derive(Args, Clone, Debug)]
pub struct ConstraintArgs {
    /// A GBNF grammar file (llama.cpp's format).
    #[arg(long)]
    pub grammar: Option<PathBuf>,
    /// A JSON Schema file; the output is JSON valid under it.
    #[arg(long = "json-schema")]
    pub json_schema: Option<PathBuf>,
    /// Any valid JSON.
    #[arg(long)]
    pub json: bool,
}
