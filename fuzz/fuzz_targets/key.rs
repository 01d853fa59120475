//! Key parsing (`PublicKey::from_tuf`: hex, PEM/SPKI, SEC1, RSA with `--features std`) and
//! signature verification (with `--features std`, ring's P-256 verifier against p256's). Input:
//! key object JSON, 0xFF, signature (hex, as metadata carries it; raw bytes if it is not hex),
//! 0xFF, message.
#![no_main]
use hale_core::crypto::{hex_decode, PublicKey};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let parts = hale_fuzz::fixture::parts(data);
    let key_json = parts.first().copied().unwrap_or_default();
    let sig_text = parts.get(1).copied().unwrap_or_default();
    let msg = parts.get(2).copied().unwrap_or_default();

    let mut raw = [0u8; 600];
    let sig: &[u8] = match hex_decode(sig_text, &mut raw) {
        Some(n) => {
            assert_eq!(n * 2, sig_text.len());
            &raw[..n]
        }
        None => sig_text,
    };

    let Ok(v) = hale_core::json::parse(key_json) else {
        return;
    };
    let Some(o) = v.as_object() else { return };
    let Ok(key) = PublicKey::from_tuf(&o) else {
        return;
    };
    assert!(key.same_key(&key.clone()));
    let direct = key.verify(sig, |sink| {
        sink.write(msg);
        Ok(())
    });
    // the message split into chunks gives the same answer (streamed verification)
    let chunked = key.verify(sig, |sink| {
        for c in msg.chunks(5) {
            sink.write(c);
        }
        Ok(())
    });
    assert_eq!(
        direct, chunked,
        "verification depends on how the message is chunked"
    );
    // with `std`, P-256 is verified by ring; the device's verifier (p256) must answer the same
    #[cfg(feature = "std")]
    assert_eq!(
        direct,
        key.verify_with_p256_crate(sig, |sink| {
            sink.write(msg);
            Ok(())
        }),
        "ring and p256 disagree"
    );
});
