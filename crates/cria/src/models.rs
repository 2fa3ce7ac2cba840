//! Model management: `cria pull`, `cria list`, `cria rm`.

use anyhow::{bail, Result};
use clap::Args;

#[derive(Args, Clone, Debug)]
pub struct PullArgs {
    /// hf:ORG/REPO[:FILE], ORG/REPO, or a short name (smollm2).
    pub model: String,
}

#[derive(Args, Clone, Debug)]
pub struct ListArgs {}

#[derive(Args, Clone, Debug)]
pub struct RmArgs {
    pub model: String,
}

pub fn pull(_a: &PullArgs) -> Result<()> {
    bail!("cria pull is not implemented yet")
}

pub fn list(_a: &ListArgs) -> Result<()> {
    bail!("cria list is not implemented yet")
}

pub fn rm(_a: &RmArgs) -> Result<()> {
    bail!("cria rm is not implemented yet")
}
