//! `cria chat`: the interactive conversation.

use anyhow::{bail, Result};
use clap::Args;

#[derive(Args, Clone, Debug)]
pub struct ChatArgs {}

pub fn run(_a: &ChatArgs) -> Result<()> {
    bail!("cria chat is not implemented yet")
}
