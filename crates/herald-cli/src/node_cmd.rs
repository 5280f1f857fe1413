//! `herald tell` (placeholder until herald-transport lands).
use clap::Args;

#[derive(Debug, Args)]
pub struct TellArgs {}

pub async fn run_tell(_args: TellArgs) -> anyhow::Result<()> {
    anyhow::bail!("herald tell is not available yet")
}
