//! Exit-code convention: errors caused by what the user typed or supplied
//! (bad flags values, malformed hex, undecodable input) are wrapped in [`BadInput`]
//! and exit with status 2; other failures (network, broker) exit with status 1.

use std::fmt;

/// Marks an error as caused by the user's input (exit status 2).
#[derive(Debug)]
pub struct BadInput(pub anyhow::Error);

impl fmt::Display for BadInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&one_line(&self.0))
    }
}

/// The error as one line: its message, then each cause joined by ": ", leaving out a
/// cause whose text the error it came from already holds (the libraries' messages
/// often name their OS error, which is also their source: "... failed: Connection
/// refused (os error 111)" once, not twice).
pub fn one_line(err: &anyhow::Error) -> String {
    let mut line = String::new();
    let mut outer: Option<String> = None;
    for cause in err.chain() {
        let text = cause.to_string();
        if !outer.as_ref().is_some_and(|o| o.contains(&text)) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
        outer = Some(text);
    }
    line
}

impl std::error::Error for BadInput {}

/// Wraps any error as [`BadInput`] so that `main` exits with status 2.
pub fn bad_input(err: impl Into<anyhow::Error>) -> anyhow::Error {
    anyhow::Error::new(BadInput(err.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error whose message names its source, which it also exposes as `source()`.
    #[derive(Debug)]
    struct Connect {
        source: std::io::Error,
    }

    impl fmt::Display for Connect {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "connect to 127.0.0.1:9 failed: {}", self.source)
        }
    }

    impl std::error::Error for Connect {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.source)
        }
    }

    #[test]
    fn one_line_names_a_cause_already_in_the_message_once() {
        let os = std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "refused (os error 111)",
        );
        let err = anyhow::Error::new(Connect { source: os }).context("discovering CALC");
        assert_eq!(
            one_line(&err),
            "discovering CALC: connect to 127.0.0.1:9 failed: refused (os error 111)"
        );
        let plain = anyhow::anyhow!("inner").context("outer");
        assert_eq!(one_line(&plain), "outer: inner");
        // Only the error a cause came from is looked at: an outer message that happens
        // to hold the text of a deeper cause (here the user's input) does not hide it.
        let echoed = anyhow::anyhow!("expected a number")
            .context("parsing failed")
            .context("request \"--n: expected a number\" refused");
        assert_eq!(
            one_line(&echoed),
            "request \"--n: expected a number\" refused: parsing failed: expected a number"
        );
    }
}
