//! What hale-server takes in a device's report: its text fields are one line each (no control
//! characters), of at most these lengths. A device whose report breaks them is refused at every
//! poll, so the tools that make those texts (hale-sign for a rollback's reason, `hale-agent` for
//! its target and its own words) hold them to the same rules, from here.

use crate::policy::Version;

/// Longest target path in a report, in bytes.
pub const MAX_TARGET: usize = 256;
/// Longest reason (a result's, a rollback authorization's), in bytes.
pub const MAX_REASON: usize = 512;
/// Longest version: any a device can hold ([`Version::MAX_TEXT`]).
pub const MAX_VERSION: usize = Version::MAX_TEXT;

/// Whether `text` is one line of at most `max` bytes: no control characters (a line break, an
/// escape sequence that would rewrite a console showing it).
pub fn one_line(text: &str, max: usize) -> bool {
    text.len() <= max && !text.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_is_short_and_free_of_control_characters() {
        assert!(one_line("", 0));
        assert!(one_line(&"é".repeat(256), MAX_REASON));
        assert!(!one_line(&"x".repeat(MAX_REASON + 1), MAX_REASON));
        for bad in ["a\nb", "a\tb", "\u{1b}[2J", "\u{7f}", "\u{85}"] {
            assert!(!one_line(bad, MAX_REASON), "{bad:?}");
        }
    }
}
