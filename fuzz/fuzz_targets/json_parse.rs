//! `json::parse` on arbitrary bytes (and `parse_fields` held to it), then every member, element
//! and string walked and decoded, and the fields read in a walk's own pass held to `fields`.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // validating and reading an envelope's two fields in one pass answers as parse, then fields
    let one_pass = hale_core::json::parse_fields(data, ["signed", "signatures"]);
    let two_passes = hale_core::json::parse(data).and_then(|v| match v.as_object() {
        Some(o) => o.fields(["signed", "signatures"]).map(|f| (v, f)),
        None => Ok((v, [None; 2])),
    });
    assert_eq!(
        one_pass, two_passes,
        "parse_fields disagrees with parse + fields"
    );
    let Ok(v) = hale_core::json::parse(data) else {
        return;
    };
    // what was accepted is UTF-8 JSON
    assert!(
        core::str::from_utf8(data).is_ok(),
        "parse accepted invalid UTF-8"
    );
    hale_fuzz::walk(&v, 0);
    // raw spans lie inside the input
    if let Some(raw) = v.raw() {
        let (start, end) = (data.as_ptr() as usize, data.as_ptr() as usize + data.len());
        assert!(raw.as_ptr() as usize >= start && raw.as_ptr() as usize + raw.len() <= end);
    }
});
