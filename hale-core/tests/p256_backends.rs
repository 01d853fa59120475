//! ECDSA P-256 has two verifiers: ring in `std` builds (server, signing tool, host agent,
//! conformance client) and RustCrypto `p256` on the device. They must accept exactly the same
//! signatures, or a repository could sign something one build trusts and the other refuses. This
//! runs both (`PublicKey::verify` and the hidden `verify_with_p256_crate`) over a few hundred
//! random valid signatures and their malleated, malformed and mutated variants and asserts they
//! agree, and that the answer is the one expected:
//! - (a) high `s` (`n - s`): accepted by both (neither enforces low `s`; nor does python-tuf);
//! - (b) non-DER (unneeded leading zeros, negative integers, long-form or indefinite lengths, wrong
//!   tags, raw `r || s`): refused by both;
//! - (c) `r` or `s` zero or at least `n`: refused by both;
//! - (d) bytes after the signature, an extra integer in it, any truncation: refused by both.
//!
//! `cargo test -p hale-core --features std --test p256_backends`
#![cfg(feature = "std")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use hale_core::crypto::PublicKey;
use hale_core::json::{parse, JsonError};
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use p256::pkcs8::{EncodePublicKey, LineEnding};

/// The order of the P-256 group.
const N: [u8; 32] = [
    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51,
];

/// splitmix64: deterministic, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

#[derive(Clone, Copy, Debug)]
enum Form {
    Pem,
    HexUncompressed,
    HexCompressed,
}

/// The key as TUF metadata carries it, parsed by hale-core.
fn tuf_key(vk: &VerifyingKey, form: Form) -> PublicKey {
    let public = match form {
        Form::Pem => vk
            .to_public_key_pem(LineEnding::LF)
            .unwrap()
            .replace('\n', "\\n"),
        Form::HexUncompressed => hex(vk.to_encoded_point(false).as_bytes()),
        Form::HexCompressed => hex(vk.to_encoded_point(true).as_bytes()),
    };
    let json = format!(
        r#"{{"keytype":"ecdsa","scheme":"ecdsa-sha2-nistp256","keyval":{{"public":"{public}"}}}}"#
    );
    let doc = parse(json.as_bytes()).unwrap();
    let key = PublicKey::from_tuf(&doc.as_object().unwrap()).unwrap();
    assert!(matches!(key, PublicKey::EcdsaP256(_)));
    key
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Both verifiers' answer; panics if they differ. ring gets the message in one write, p256 in
/// small chunks (streaming must not matter either). ring is also asked directly, without the
/// `p256` DER parse that `verify` puts in front of it: its own parser agrees too, so that parse
/// only keeps the old order (a malformed signature is refused before the message is produced).
fn agree(key: &PublicKey, sig: &[u8], msg: &[u8]) -> bool {
    let ring = key.verify(sig, |sink| {
        sink.write(msg);
        Ok(())
    });
    let p256 = key.verify_with_p256_crate(sig, |sink| {
        msg.chunks(7).for_each(|c| sink.write(c));
        Ok(())
    });
    assert_eq!(
        ring,
        p256,
        "ring and p256 disagree on signature {} over {} bytes",
        hex(sig),
        msg.len()
    );
    let PublicKey::EcdsaP256(vk) = key else {
        panic!("not a P-256 key")
    };
    let point = vk.to_encoded_point(false);
    let raw = ring::signature::UnparsedPublicKey::new(
        &ring::signature::ECDSA_P256_SHA256_ASN1,
        point.as_bytes(),
    )
    .verify(msg, sig)
    .is_ok();
    assert_eq!(
        Ok(raw),
        p256,
        "ring's own DER parser and p256 disagree on signature {}",
        hex(sig)
    );
    raw
}

/// An INTEGER with exactly these content bytes (so non-minimal ones can be written).
fn int(content: &[u8]) -> Vec<u8> {
    tlv(0x02, content)
}

fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    assert!(content.len() < 0x80);
    let mut v = vec![tag, content.len() as u8];
    v.extend_from_slice(content);
    v
}

/// The minimal two's-complement content bytes of an unsigned big-endian value.
fn minimal(value: &[u8]) -> Vec<u8> {
    let first = value
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(value.len() - 1);
    let mut v = value[first..].to_vec();
    if v[0] & 0x80 != 0 {
        v.insert(0, 0);
    }
    v
}

fn der(r: &[u8], s: &[u8]) -> Vec<u8> {
    tlv(0x30, &[int(r), int(s)].concat())
}

fn plus_one(v: &[u8; 32]) -> [u8; 32] {
    let mut v = *v;
    for b in v.iter_mut().rev() {
        let (x, carry) = b.overflowing_add(1);
        *b = x;
        if !carry {
            break;
        }
    }
    v
}

/// Crafted variants of a valid signature `(r, s)`, each with the answer both must give.
fn variants(sig: &Signature) -> Vec<(&'static str, Vec<u8>, bool)> {
    let (r, s) = sig.split_bytes();
    let (r, s): ([u8; 32], [u8; 32]) = (r.into(), s.into());
    let (rm, sm) = (minimal(&r), minimal(&s));
    let good = der(&rm, &sm);
    assert_eq!(good, sig.to_der().as_bytes(), "the test's DER encoder");
    let high_s: [u8; 32] = (-sig.s()).to_bytes().into();
    let zero = [0u8];
    let max = [0xffu8; 32];
    let mut cases = vec![
        // (a) malleability: (r, n - s) is a valid signature of the same message
        ("high/low s swapped", der(&rm, &minimal(&high_s)), true),
        // (c) out of range
        ("r = 0", der(&zero, &sm), false),
        ("s = 0", der(&rm, &zero), false),
        ("r = n", der(&minimal(&N), &sm), false),
        ("s = n", der(&rm, &minimal(&N)), false),
        ("r = n + 1", der(&minimal(&plus_one(&N)), &sm), false),
        ("s = n + 1", der(&rm, &minimal(&plus_one(&N))), false),
        ("s = 2^256 - 1", der(&rm, &minimal(&max)), false),
        (
            "r of 33 value bytes",
            der(&[&[1u8][..], &r].concat(), &sm),
            false,
        ),
        // (b) not DER
        (
            "extra leading zero in r",
            der(&[&[0u8][..], &rm].concat(), &sm),
            false,
        ),
        (
            "extra leading zero in s",
            der(&rm, &[&[0u8][..], &sm].concat()),
            false,
        ),
        (
            "two leading zeros in s",
            der(&rm, &[&[0u8, 0][..], &sm].concat()),
            false,
        ),
        ("r zero-padded to 32 bytes", der(&r, &sm), r[..] == rm[..]),
        ("empty r", der(&[], &sm), false),
        (
            "negative r",
            der(&[&[0x80u8][..], &r[1..]].concat(), &sm),
            false,
        ),
        ("raw r || s", [r, s].concat(), false),
        ("empty", vec![], false),
        ("SET instead of SEQUENCE", tlv(0x31, &good[2..]), false),
        (
            "constructed integer tag",
            tlv(0x30, &[tlv(0x22, &rm), int(&sm)].concat()),
            false,
        ),
        (
            "BIT STRING for s",
            tlv(0x30, &[int(&rm), tlv(0x03, &sm)].concat()),
            false,
        ),
        (
            "long-form SEQUENCE length",
            [&[0x30u8, 0x81, good[1]][..], &good[2..]].concat(),
            false,
        ),
        (
            "long-form INTEGER length",
            tlv(
                0x30,
                &[&[0x02u8, 0x81, rm.len() as u8][..], &rm, &int(&sm)].concat(),
            ),
            false,
        ),
        (
            "indefinite SEQUENCE length",
            [&[0x30u8, 0x80][..], &good[2..], &[0, 0]].concat(),
            false,
        ),
        // (d) trailing or missing bytes
        ("trailing zero byte", [&good[..], &[0]].concat(), false),
        ("trailing INTEGER", [&good[..], &int(&[1])].concat(), false),
        (
            "third INTEGER inside",
            tlv(0x30, &[int(&rm), int(&sm), int(&[1])].concat()),
            false,
        ),
        (
            "SEQUENCE length one short",
            [&[0x30u8, good[1] - 1][..], &good[2..]].concat(),
            false,
        ),
        (
            "SEQUENCE length one long",
            [&[0x30u8, good[1] + 1][..], &good[2..], &[0]].concat(),
            false,
        ),
    ];
    for n in 0..good.len() {
        cases.push(("truncated", good[..n].to_vec(), false));
    }
    cases.push(("valid", good, true));
    cases
}

#[test]
fn ring_and_p256_agree_on_random_valid_signatures_and_their_variants() {
    let mut rng = Rng(0x4841_4c45);
    let keys: Vec<SigningKey> = (0..8)
        .map(|_| SigningKey::from_slice(&rng.bytes(32)).unwrap())
        .collect();
    let forms = [Form::Pem, Form::HexUncompressed, Form::HexCompressed];
    let (mut accepted, mut high_s) = (0, 0);
    for i in 0..300 {
        let sk = &keys[i % keys.len()];
        let key = tuf_key(sk.verifying_key(), forms[i % forms.len()]);
        let other = tuf_key(keys[(i + 1) % keys.len()].verifying_key(), Form::Pem);
        let len = rng.below(300);
        let msg = rng.bytes(len);
        let sig: Signature = sk.sign(&msg);
        let der = sig.to_der();
        assert!(agree(&key, der.as_bytes(), &msg), "a valid signature");
        accepted += 1;
        high_s += usize::from(sig.normalize_s().is_some());
        assert!(!agree(&other, der.as_bytes(), &msg), "another key");
        let mut wrong = msg.clone();
        if wrong.is_empty() {
            wrong.push(0);
        } else {
            let at = rng.below(wrong.len());
            wrong[at] ^= 1 << rng.below(8);
        }
        assert!(!agree(&key, der.as_bytes(), &wrong), "another message");
        // the crafted variants on every tenth signature
        if i % 10 == 0 {
            for (what, bytes, expected) in variants(&sig) {
                assert_eq!(
                    agree(&key, &bytes, &msg),
                    expected,
                    "{what}: {}",
                    hex(&bytes)
                );
                accepted += usize::from(expected);
            }
        }
    }
    // both kinds occur: p256 signs with whichever s comes out, and the variant flips it
    assert!(
        high_s > 100 && high_s < 200,
        "{high_s} of 300 signed with high s"
    );
    assert!(accepted >= 300 + 30 * 2, "{accepted} accepted");
}

#[test]
fn ring_and_p256_agree_on_every_one_byte_change_of_a_signature() {
    let mut rng = Rng(7);
    for _ in 0..4 {
        let sk = SigningKey::from_slice(&rng.bytes(32)).unwrap();
        let key = tuf_key(sk.verifying_key(), Form::HexCompressed);
        let msg = rng.bytes(64);
        let sig: Signature = sk.sign(&msg);
        let good = sig.to_der().as_bytes().to_vec();
        let high = Signature::from_scalars(sig.r(), -sig.s()).unwrap();
        for base in [good, high.to_der().as_bytes().to_vec()] {
            assert!(agree(&key, &base, &msg));
            for at in 0..base.len() {
                for bit in 0..8 {
                    let mut b = base.clone();
                    b[at] ^= 1 << bit;
                    agree(&key, &b, &msg);
                }
                for byte in [0x00, 0x7f, 0x80, 0xff] {
                    let mut b = base.clone();
                    b[at] = byte;
                    agree(&key, &b, &msg);
                    b.insert(at, byte);
                    agree(&key, &b, &msg);
                }
                let mut b = base.clone();
                b.remove(at);
                assert!(!agree(&key, &b, &msg));
            }
        }
    }
}

#[test]
fn ring_and_p256_agree_on_random_bytes() {
    let mut rng = Rng(11);
    let sk = SigningKey::from_slice(&rng.bytes(32)).unwrap();
    let key = tuf_key(sk.verifying_key(), Form::Pem);
    for _ in 0..2000 {
        let len = rng.below(80);
        let mut sig = rng.bytes(len);
        // often a plausible header, so the parsers get past the first bytes
        if sig.len() >= 4 && rng.below(2) == 0 {
            sig[0] = 0x30;
            sig[1] = (sig.len() - 2) as u8;
            sig[2] = 0x02;
            sig[3] = (rng.below(36)) as u8;
        }
        assert!(!agree(&key, &sig, b"message"));
    }
}

#[test]
fn both_refuse_a_malformed_signature_before_producing_the_message() {
    // as before ring: a signature that does not parse is `Ok(false)` even when the message
    // cannot be produced; one that parses surfaces the message's error
    let mut rng = Rng(3);
    let sk = SigningKey::from_slice(&rng.bytes(32)).unwrap();
    let key = tuf_key(sk.verifying_key(), Form::HexUncompressed);
    let sig: Signature = sk.sign(b"m");
    let fail = |_: &mut dyn hale_core::canonical::Sink| Err(JsonError::DuplicateKey);
    assert_eq!(key.verify(b"\x30\x00", fail), Ok(false));
    assert_eq!(key.verify_with_p256_crate(b"\x30\x00", fail), Ok(false));
    let der = sig.to_der();
    assert_eq!(
        key.verify(der.as_bytes(), fail),
        Err(JsonError::DuplicateKey)
    );
    assert_eq!(
        key.verify_with_p256_crate(der.as_bytes(), fail),
        Err(JsonError::DuplicateKey)
    );
}
