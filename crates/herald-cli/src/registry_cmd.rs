//! `herald registry` (placeholder until herald-registry lands).
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum RegistryCommand {}

pub async fn run(cmd: RegistryCommand) -> anyhow::Result<()> {
    match cmd {}
}
