//! One ECDSA P-256 verify, the `std` build's (ring) against the device's (RustCrypto `p256`), over
//! a message the size of a small `targets.json`: the measurement behind the "ring for P-256 on
//! std builds" entry in docs/decisions.md.
//! `cargo run --release -p hale-core --features std --example p256_verify [ITERS]`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use hale_core::crypto::PublicKey;
use hale_core::json::parse;
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};

fn main() {
    let iters: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2000);
    let sk = SigningKey::from_slice(&[0x42; 32]).unwrap();
    let point: String = sk
        .verifying_key()
        .to_encoded_point(false)
        .as_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let json = format!(
        r#"{{"keytype":"ecdsa","scheme":"ecdsa-sha2-nistp256","keyval":{{"public":"{point}"}}}}"#
    );
    let key = PublicKey::from_tuf(&parse(json.as_bytes()).unwrap().as_object().unwrap()).unwrap();
    let msg: Vec<u8> = (0..1200u32).map(|i| (i * 31) as u8).collect();
    let sig: Signature = sk.sign(&msg);
    let der = sig.to_der();
    let write = |sink: &mut dyn hale_core::canonical::Sink| {
        sink.write(&msg);
        Ok(())
    };

    let time = |name: &str, f: &dyn Fn() -> bool| {
        assert!(f(), "{name}: the signature must verify");
        let t = Instant::now();
        for _ in 0..iters {
            assert!(f());
        }
        let us = t.elapsed().as_secs_f64() * 1e6 / f64::from(iters);
        println!("{name:<28} {us:8.1} µs per verify ({iters} iterations)");
        us
    };
    let ring = time("ring (std builds)", &|| {
        key.verify(der.as_bytes(), write).unwrap()
    });
    let p256 = time("p256 (device build)", &|| {
        key.verify_with_p256_crate(der.as_bytes(), write).unwrap()
    });
    println!("ring is {:.1}x faster", p256 / ring);
}
