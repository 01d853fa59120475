//! What hale-server takes in a device's report: its text fields are one line each (no control,
//! format, line or paragraph separator characters: [`one_line`]), of at most these lengths. A
//! device whose report breaks them is refused at every poll, so the tools that make those texts
//! (hale-sign for a rollback's reason, `hale-agent` for its target and its own words) hold them
//! to the same rules, from here.

use crate::policy::Version;

/// Longest target path in a report, in bytes.
pub const MAX_TARGET: usize = 256;
/// Longest reason (a result's, a rollback authorization's), in bytes.
pub const MAX_REASON: usize = 512;
/// Longest version: any a device can hold ([`Version::MAX_TEXT`]).
pub const MAX_VERSION: usize = Version::MAX_TEXT;

/// Whether `text` is one line of at most `max` bytes, shown as it is stored: no character for
/// which [`refused`] says so.
pub fn one_line(text: &str, max: usize) -> bool {
    text.len() <= max && !text.chars().any(refused)
}

/// The Unicode format characters (general category Cf, Unicode 15.1), inclusive ranges.
const FORMAT: [(u32, u32); 21] = [
    (0x00AD, 0x00AD),
    (0x0600, 0x0605),
    (0x061C, 0x061C),
    (0x06DD, 0x06DD),
    (0x070F, 0x070F),
    (0x0890, 0x0891),
    (0x08E2, 0x08E2),
    (0x180E, 0x180E),
    (0x200B, 0x200F),
    (0x202A, 0x202E),
    (0x2060, 0x2064),
    (0x2066, 0x206F),
    (0xFEFF, 0xFEFF),
    (0xFFF9, 0xFFFB),
    (0x110BD, 0x110BD),
    (0x110CD, 0x110CD),
    (0x13430, 0x1343F),
    (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A),
    (0xE0001, 0xE0001),
    (0xE0020, 0xE007F),
];

/// Whether `c` may not be in a text a device reports or a staff member gives as a reason. These
/// texts go into the audit log and a device's history, and staff tools print them; a text
/// must read as one line, as it is stored.
///
/// Refused:
/// - **Control characters** (Cc: C0, DEL, C1): a line break forges a second line, an escape
///   sequence rewrites the console that shows it.
/// - **Line and paragraph separators** (U+2028, U+2029, categories Zl and Zp, not control
///   characters): a line break to every viewer that follows Unicode's line breaking (a browser,
///   a JSON viewer, an editor), so a forged line as above.
/// - **Format characters** (Cf), the whole category, and among them:
///   - the bidirectional controls (U+061C, U+200E, U+200F, U+202A–U+202E, U+2066–U+2069): they
///     reorder what is shown after them, so a record reads otherwise than it is stored ("Trojan
///     Source", CVE-2021-42574): `pump-1 quarantined` can show as another device's or another
///     action, and the reorder reaches past the field into the rest of the line;
///   - the zero-width and invisible ones (U+200B–U+200D, U+2060–U+2064, U+FEFF, U+00AD, U+180E,
///     the tags U+E0001 and U+E0020–U+E007F, the interlinear annotation, musical and
///     hieroglyph format controls): text that is stored but not shown, so two texts that look
///     the same differ, a search of the log for what a reader saw misses, and the tags carry a
///     hidden ASCII message.
///
///   The joiners U+200C and U+200D are refused with the rest, at a cost: Persian and Indic text
///   written with them, and emoji sequences joined by U+200D, must be given without them (they
///   read as the same words, drawn a little differently). A rule that kept them would have to
///   say where they may stand; refusing the category is the rule a reader can check.
///
/// Taken: every other character, letters and marks of any script and spaces included. A look-
/// alike (a Cyrillic `р` for a Latin `p`) or a combining mark or variation selector (invisible on
/// its own, but neither a line break nor a reorder) is not refused: no rule by character tells
/// those from the scripts that need them, and the names a record is about (the device, the
/// actor) are fields of their own, held to `[A-Za-z0-9._-]`. A character a later Unicode version
/// makes a format character passes until [`FORMAT`] lists it.
pub fn refused(c: char) -> bool {
    let u = u32::from(c);
    c.is_control()
        || c == '\u{2028}'
        || c == '\u{2029}'
        || FORMAT.iter().any(|&(lo, hi)| (lo..=hi).contains(&u))
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

    /// A line or paragraph separator breaks the line for every viewer that follows Unicode; a
    /// bidirectional control reorders what is shown ("Trojan Source"); a zero-width or other
    /// format character hides what is stored. Each went through as one line.
    #[test]
    fn one_line_refuses_separators_bidirectional_controls_and_format_characters() {
        let separators = ['\u{2028}', '\u{2029}'];
        let bidi = [
            '\u{061C}', '\u{200E}', '\u{200F}', '\u{202A}', '\u{202B}', '\u{202C}', '\u{202D}',
            '\u{202E}', '\u{2066}', '\u{2067}', '\u{2068}', '\u{2069}',
        ];
        let invisible = [
            '\u{00AD}',
            '\u{180E}',
            '\u{200B}',
            '\u{200C}',
            '\u{200D}',
            '\u{2060}',
            '\u{2064}',
            '\u{FEFF}',
            '\u{FFF9}',
            '\u{FFFB}',
            '\u{1343F}',
            '\u{1D173}',
            '\u{E0001}',
            '\u{E0041}',
            '\u{E007F}',
        ];
        for c in separators.iter().chain(&bidi).chain(&invisible) {
            let mut text = [0u8; 4];
            let text = c.encode_utf8(&mut text);
            assert!(!one_line(text, MAX_REASON), "U+{:04X}", u32::from(*c));
            assert!(!one_line(&["pump-1", text, "ok"].concat(), MAX_REASON));
        }
        // a reason that reads "approved by olivia" and is stored otherwise
        assert!(!one_line("approved by \u{202E}aivilo\u{202C}", MAX_REASON));
        // letters and marks of any script, spaces and symbols are taken
        for good in [
            "Wartung: Akku getauscht, Gerät geprüft",
            "صيانة البطارية",
            "배터리 교체",
            "no\u{00A0}break, thin\u{2009}space, 10\u{202F}mL",
            "e\u{0301} combined, variation\u{FE0F}",
            "«Ω≤µ» ✓",
        ] {
            assert!(one_line(good, MAX_REASON), "{good:?}");
        }
    }

    /// Every range of [`FORMAT`] is ordered and refused at both ends; the characters beside
    /// them are not format characters (a range that starts or ends one off would show there).
    #[test]
    fn the_format_ranges_are_the_categorys_edges() {
        for (lo, hi) in FORMAT {
            assert!(lo <= hi);
            for u in [lo, hi] {
                assert!(char::from_u32(u).is_some_and(refused), "U+{u:04X}");
            }
            for u in [lo - 1, hi + 1] {
                let c = char::from_u32(u).unwrap_or('x');
                // (U+2029 before U+202A: a paragraph separator, refused as such)
                assert!(
                    !refused(c) || c.is_control() || c == '\u{2029}',
                    "U+{u:04X}"
                );
            }
        }
    }
}
