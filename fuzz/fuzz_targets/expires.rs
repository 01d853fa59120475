//! `time::parse_expires` and `format_expires`: whatever parses formats back to the same bytes, and
//! every time in range formats to something that parses back to it.
#![no_main]
use hale_core::time::{format_expires, parse_expires};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(t) = parse_expires(data) {
        let mut out = [0u8; 20];
        let s = format_expires(t, &mut out).unwrap_or_else(|| {
            panic!(
                "{:?} parsed to {t} but does not format",
                String::from_utf8_lossy(data)
            )
        });
        assert_eq!(s.as_bytes(), data, "format(parse(x)) != x");
    }
    // any i64 (from the first 8 bytes)
    if let Some(b) = data.get(..8) {
        let t = i64::from_le_bytes(b.try_into().expect("8 bytes"));
        let mut out = [0u8; 20];
        if let Some(s) = format_expires(t, &mut out) {
            let s = s.to_string();
            assert_eq!(
                parse_expires(s.as_bytes()),
                Some(t),
                "parse(format({t})) = {s:?} is not {t}"
            );
        }
    }
});
