//! `herald up` (grows as layers land).
use clap::Args;

#[derive(Debug, Args)]
pub struct UpArgs {}

pub async fn run(_args: UpArgs) -> anyhow::Result<()> {
    anyhow::bail!("herald up is not available yet")
}
