//! `herald mesh` (placeholder until herald-mesh lands).
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum MeshCommand {}

pub async fn run(cmd: MeshCommand) -> anyhow::Result<()> {
    match cmd {}
}
