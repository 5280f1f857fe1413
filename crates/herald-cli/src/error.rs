//! Exit-code convention: errors caused by what the user typed or supplied
//! (bad flags values, malformed hex, undecodable input) are wrapped in [`BadInput`]
//! and exit with status 2; other failures (network, broker) exit with status 1.

use std::fmt;

/// Marks an error as caused by the user's input (exit status 2).
#[derive(Debug)]
pub struct BadInput(pub anyhow::Error);

impl fmt::Display for BadInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#}", self.0)
    }
}

impl std::error::Error for BadInput {}

/// Wraps any error as [`BadInput`] so that `main` exits with status 2.
pub fn bad_input(err: impl Into<anyhow::Error>) -> anyhow::Error {
    anyhow::Error::new(BadInput(err.into()))
}
