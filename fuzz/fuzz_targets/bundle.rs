//! Offline bundles (`bundle::Bundle::parse`): whatever parses is served back entry by entry, and
//! writing its entries again gives exactly the input bytes.
#![no_main]
use hale_core::bundle::{encoded_len, write, Bundle, MAX_BUNDLE_ENTRIES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(b) = Bundle::parse(data) else { return };
    assert!(b.len() <= MAX_BUNDLE_ENTRIES);
    let entries: Vec<(&str, &[u8])> = b.iter().collect();
    assert_eq!(
        entries.len(),
        b.len(),
        "iter() yields fewer entries than parse counted"
    );
    assert_eq!(b.is_empty(), entries.is_empty());
    for (name, d) in &entries {
        assert_eq!(b.get(name), Some(*d), "get({name:?}) is not its entry");
    }
    let _ = b.authorization();
    let _ = b.get("no-such-entry.json");
    // round trip
    assert_eq!(
        encoded_len(&entries),
        data.len(),
        "encoded_len disagrees with the parsed bytes"
    );
    let mut out = vec![0u8; data.len()];
    let w = write(&entries, &mut out).expect("re-writing parsed entries");
    assert_eq!(w, data, "write(parse(x)) != x");
    // one byte short is refused, not overrun
    if !data.is_empty() {
        let mut short = vec![0u8; data.len() - 1];
        assert!(write(&entries, &mut short).is_err());
    }
});
