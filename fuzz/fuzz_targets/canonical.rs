//! Canonical JSON: writing is deterministic, and canonical output re-parses to itself (idempotent).
#![no_main]
use hale_core::canonical::{write_canonical, Counter};
use hale_fuzz::VecSink;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(v) = hale_core::json::parse(data) else {
        return;
    };
    let mut a = VecSink::default();
    let ra = write_canonical(&v, &mut a);
    let mut b = VecSink::default();
    let rb = write_canonical(&v, &mut b);
    assert_eq!(ra, rb, "write_canonical is not deterministic (result)");
    if ra.is_err() {
        return;
    }
    assert_eq!(a.0, b.0, "write_canonical is not deterministic (bytes)");
    // the already-canonical shortcut (hosts: built with `std`) writes what the member-by-member
    // encoder writes
    #[cfg(feature = "std")]
    {
        let mut g = VecSink::default();
        assert_eq!(
            hale_core::canonical::write_canonical_general(&v, &mut g),
            ra,
            "shortcut and encoder disagree (result)"
        );
        assert!(
            a.0 == g.0,
            "shortcut and encoder disagree on {:?}",
            String::from_utf8_lossy(data)
        );
    }
    let mut c = Counter::default();
    write_canonical(&v, &mut c).expect("succeeded once");
    assert_eq!(c.0, a.0.len(), "Counter disagrees with the bytes written");
    // the hash sink sees the same bytes
    let mut h = <sha2::Sha256 as sha2::Digest>::new();
    write_canonical(&v, &mut h).expect("succeeded once");
    let digest: [u8; 32] = sha2::Digest::finalize(h).into();
    assert_eq!(digest, hale_core::crypto::sha256(&a.0));

    // round trip: canonical bytes are JSON and canonicalise to themselves. OLPC canonical JSON
    // writes control characters raw, which strict JSON (and our parser) refuses: re-escape them
    // (they only occur inside strings) before re-parsing.
    let reparse = escape_controls(&a.0);
    let v2 = match hale_core::json::parse(&reparse) {
        Ok(v2) => v2,
        Err(e) => panic!(
            "canonical output does not re-parse: {e:?}\n input: {:?}\n canonical: {:?}",
            String::from_utf8_lossy(data),
            String::from_utf8_lossy(&a.0)
        ),
    };
    let mut d = VecSink::default();
    if let Err(e) = write_canonical(&v2, &mut d) {
        panic!(
            "canonical output is not canonicalisable: {e:?}\n input: {:?}\n canonical: {:?}",
            String::from_utf8_lossy(data),
            String::from_utf8_lossy(&a.0)
        );
    }
    assert!(
        a.0 == d.0,
        "canonical form is not a fixed point\n input: {:?}\n once: {:?}\n twice: {:?}",
        String::from_utf8_lossy(data),
        String::from_utf8_lossy(&a.0),
        String::from_utf8_lossy(&d.0)
    );
    // no insignificant whitespace outside strings
    hale_fuzz::walk(&v2, 0);
});

fn escape_controls(canon: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(canon.len());
    for &b in canon {
        if b < 0x20 {
            out.extend_from_slice(format!("\\u{b:04x}").as_bytes());
        } else {
            out.push(b);
        }
    }
    out
}
