//! `herald envelope` and `herald frame` (placeholder until herald-wire lands).
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum EnvelopeCommand {}

#[derive(Debug, Subcommand)]
pub enum FrameCommand {}

pub fn run_envelope(cmd: EnvelopeCommand) -> anyhow::Result<()> {
    match cmd {}
}

pub fn run_frame(cmd: FrameCommand) -> anyhow::Result<()> {
    match cmd {}
}
