//! `json::parse` on arbitrary bytes, then every member, element and string walked and decoded.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
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
