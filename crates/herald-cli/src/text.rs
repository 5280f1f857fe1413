//! Text output of values that come from the network.
//!
//! Service names, str ports (unix socket paths) and hosts reach the program from
//! registries and from anyone who can REGISTER. Printed raw in text mode, a `\n` in a
//! name would forge further output lines and an escape sequence would reach the
//! terminal. [`Escaped`] shows such characters the way `char::escape_debug` does
//! (`\n`, `\u{1b}`); `--json` output needs nothing of the kind (serde escapes).

use std::fmt::{self, Write};

/// Displays `T` with control characters (C0, DEL, C1), bidirectional-text controls
/// and the backslash escaped like [`char::escape_debug`], everything else as is. The
/// backslash is escaped too, so that the output is unambiguous: `A\nB` printed means
/// the name had a newline, `A\\nB` that it had a backslash.
pub(crate) struct Escaped<T>(pub T);

/// Whether `c` is shown escaped.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || c == '\\'
        // Bidirectional formatting: they reorder what the terminal shows.
        || matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Writes `s` with the characters [`needs_escape`] picks escaped.
fn write_escaped(f: &mut impl Write, s: &str) -> fmt::Result {
    let mut rest = s;
    while let Some(i) = rest.find(needs_escape) {
        f.write_str(&rest[..i])?;
        let c = rest[i..].chars().next().unwrap_or_default();
        write!(f, "{}", c.escape_debug())?;
        rest = &rest[i + c.len_utf8()..];
    }
    f.write_str(rest)
}

impl<T: fmt::Display> fmt::Display for Escaped<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Formatted first: `Display` impls (an address with a str port) may write in
        // several pieces.
        write_escaped(f, &self.0.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::Escaped;

    #[test]
    fn control_characters_and_backslash_are_escaped_the_rest_kept() {
        let cases = [
            ("CALC", "CALC"),
            ("A\nREMOVED B", r"A\nREMOVED B"),
            ("x\r\t\0y", r"x\r\t\0y"),
            ("\u{1b}[31mred\u{1b}[0m", r"\u{1b}[31mred\u{1b}[0m"),
            ("del\u{7f}", r"del\u{7f}"),
            ("csi\u{9b}1m", r"csi\u{9b}1m"),
            ("rtl\u{202e}txt", r"rtl\u{202e}txt"),
            (r"back\slash", r"back\\slash"),
            (
                "ÜMLAUT 名前 \"quoted\" 'single'",
                "ÜMLAUT 名前 \"quoted\" 'single'",
            ),
            ("", ""),
        ];
        for (raw, shown) in cases {
            assert_eq!(Escaped(raw).to_string(), shown, "{raw:?}");
        }
    }

    #[test]
    fn display_values_are_escaped_after_formatting() {
        let addr = herald_registry::ServiceAddr {
            host: "127.0.0.1".into(),
            port: herald_registry::Port::Path("/tmp/s\nadded X".into()),
        };
        assert_eq!(Escaped(&addr).to_string(), r"127.0.0.1:/tmp/s\nadded X");
    }
}
