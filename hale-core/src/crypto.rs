//! Public keys and signature checks.
//!
//! Schemes: `ed25519`; ECDSA over P-256 with SHA-256 (`ecdsa-sha2-nistp256`, key types `ecdsa` and
//! `ecdsa-sha2-nistp256`, keys as PEM SubjectPublicKeyInfo as securesystemslib writes them, or hex
//! SEC1 points); and with `std`, RSA-PSS with SHA-256 (`rsassa-pss-sha256`, PEM keys).
//!
//! Messages are streamed: the caller writes the canonical bytes of `signed` into the verifier, so
//! nothing is buffered (except for P-256 with `std`, below). Ed25519 keys of small order are
//! refused when parsed.
//!
//! ECDSA P-256 has two verifiers. The device build (no `std`) uses RustCrypto's `p256`. With `std`
//! the arithmetic is ring's (several times faster on hosts, which verify every refresh), and the
//! message is buffered because ring hashes it itself. Both accept exactly the same signatures:
//! `p256` parses the DER in both builds, and `hale-core/tests/p256_backends.rs` holds ring's answer
//! to the device verifier's (docs/decisions.md).

use ed25519_dalek::VerifyingKey as EdKey;
#[cfg(feature = "ecdsa")]
use p256::ecdsa::signature::DigestVerifier;
#[cfg(feature = "ecdsa")]
use p256::ecdsa::VerifyingKey as P256Key;
use sha2::{Digest, Sha256};

use crate::canonical::Sink;
use crate::json::{JsonError, Object};
use crate::limits::MAX_PEM_LEN;

/// A verification key from TUF metadata.
#[derive(Debug, Clone)]
pub enum PublicKey {
    Ed25519(EdKey),
    #[cfg(feature = "ecdsa")]
    EcdsaP256(P256Key),
    #[cfg(feature = "std")]
    RsaPss(alloc::boxed::Box<rsa::RsaPublicKey>),
}

/// Why a key entry cannot be used.
pub type KeyError = &'static str;

impl PublicKey {
    /// Parse a TUF key object `{"keytype", "scheme", "keyval": {"public"}}`.
    pub fn from_tuf(key: &Object<'_>) -> Result<PublicKey, KeyError> {
        fn s<'a>(o: &Object<'a>, k: &str) -> Result<crate::json::JStr<'a>, KeyError> {
            match o.get(k) {
                Ok(Some(v)) => v.as_str().ok_or("field is not a string"),
                Ok(None) => Err("missing keytype, scheme or keyval.public"),
                Err(JsonError::DuplicateKey) => Err("duplicate field"),
                Err(_) => Err("malformed key"),
            }
        }
        let keytype = s(key, "keytype")?;
        let scheme = s(key, "scheme")?;
        let keyval = match key.get("keyval") {
            Ok(Some(v)) => v.as_object().ok_or("keyval is not an object")?,
            _ => return Err("missing keyval"),
        };
        let public = s(&keyval, "public")?;
        let mut buf = [0u8; MAX_PEM_LEN];
        let public = public.decode_into(&mut buf).ok_or("public key too long")?;

        if keytype.eq_str("ed25519") && scheme.eq_str("ed25519") {
            let mut raw = [0u8; 32];
            hex_decode(public.as_bytes(), &mut raw)
                .filter(|n| *n == 32)
                .ok_or("ed25519 key is not 32 hex bytes")?;
            let k = EdKey::from_bytes(&raw).map_err(|_| "ed25519 key is not a curve point")?;
            if k.is_weak() {
                return Err("ed25519 key has small order");
            }
            return Ok(PublicKey::Ed25519(k));
        }
        #[cfg(feature = "ecdsa")]
        if (keytype.eq_str("ecdsa") || keytype.eq_str("ecdsa-sha2-nistp256"))
            && scheme.eq_str("ecdsa-sha2-nistp256")
        {
            let mut der = [0u8; MAX_PEM_LEN];
            let k = if public.starts_with("-----BEGIN PUBLIC KEY-----") {
                let n = pem_decode(public, &mut der).ok_or("malformed PEM")?;
                use p256::pkcs8::DecodePublicKey;
                P256Key::from_public_key_der(der.get(..n).ok_or("malformed PEM")?)
                    .map_err(|_| "not a P-256 SubjectPublicKeyInfo")?
            } else {
                let n = hex_decode(public.as_bytes(), &mut der)
                    .ok_or("P-256 key is neither PEM nor hex")?;
                P256Key::from_sec1_bytes(der.get(..n).ok_or("bad key")?)
                    .map_err(|_| "not a P-256 point")?
            };
            return Ok(PublicKey::EcdsaP256(k));
        }
        #[cfg(feature = "std")]
        if keytype.eq_str("rsa") && scheme.eq_str("rsassa-pss-sha256") {
            use rsa::pkcs8::DecodePublicKey;
            let k = rsa::RsaPublicKey::from_public_key_pem(public)
                .map_err(|_| "not an RSA SubjectPublicKeyInfo")?;
            if rsa::traits::PublicKeyParts::n(&k).bits() < 2048 {
                return Err("RSA key shorter than 2048 bits");
            }
            return Ok(PublicKey::RsaPss(alloc::boxed::Box::new(k)));
        }
        Err("unsupported keytype/scheme")
    }

    /// Same key material (two key ids for one key must count once toward a threshold).
    pub fn same_key(&self, other: &PublicKey) -> bool {
        match (self, other) {
            (PublicKey::Ed25519(a), PublicKey::Ed25519(b)) => a.as_bytes() == b.as_bytes(),
            #[cfg(feature = "ecdsa")]
            (PublicKey::EcdsaP256(a), PublicKey::EcdsaP256(b)) => a == b,
            #[cfg(feature = "std")]
            (PublicKey::RsaPss(a), PublicKey::RsaPss(b)) => a == b,
            #[allow(unreachable_patterns)] // only Ed25519 exists without `ecdsa` and `std`
            _ => false,
        }
    }

    /// sha256 over the key type and its public key material: equal iff [`same_key`](Self::same_key).
    pub fn fingerprint(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        match self {
            PublicKey::Ed25519(k) => {
                sha256_update(&mut h, b"ed25519:");
                sha256_update(&mut h, k.as_bytes());
            }
            #[cfg(feature = "ecdsa")]
            PublicKey::EcdsaP256(k) => {
                h.update(b"p256:");
                h.update(k.to_encoded_point(true).as_bytes());
            }
            #[cfg(feature = "std")]
            PublicKey::RsaPss(k) => {
                use rsa::traits::PublicKeyParts;
                h.update(b"rsa:");
                h.update(k.n().to_bytes_be());
                h.update(b":");
                h.update(k.e().to_bytes_be());
            }
        }
        sha256_finish(h)
    }

    /// Check `sig` (the decoded signature bytes) over the message that `write_msg` produces.
    /// Returns `Ok(false)` for a wrong or malformed signature; `Err` only if the message itself
    /// cannot be produced.
    #[inline(never)]
    pub fn verify<F>(&self, sig: &[u8], write_msg: F) -> Result<bool, JsonError>
    where
        F: FnOnce(&mut dyn Sink) -> Result<(), JsonError>,
    {
        match self {
            PublicKey::Ed25519(k) => {
                let Ok(arr) = <[u8; 64]>::try_from(sig) else {
                    return Ok(false);
                };
                let sig = ed25519_dalek::Signature::from_bytes(&arr);
                let Ok(mut v) = k.verify_stream(&sig) else {
                    return Ok(false);
                };
                write_msg(&mut EdSink(&mut v))?;
                Ok(v.finalize_and_verify().is_ok())
            }
            #[cfg(all(feature = "ecdsa", not(feature = "std")))]
            PublicKey::EcdsaP256(k) => verify_p256(k, sig, write_msg),
            #[cfg(feature = "std")]
            PublicKey::EcdsaP256(k) => verify_p256_ring(k, sig, write_msg),
            #[cfg(feature = "std")]
            PublicKey::RsaPss(k) => {
                let Ok(sig) = rsa::pss::Signature::try_from(sig) else {
                    return Ok(false);
                };
                let vk = rsa::pss::VerifyingKey::<Sha256>::new((**k).clone());
                let mut h = Sha256::new();
                write_msg(&mut h)?;
                Ok(rsa::signature::DigestVerifier::verify_digest(&vk, h, &sig).is_ok())
            }
        }
    }

    /// [`verify`](Self::verify) with the device build's ECDSA P-256 verifier (RustCrypto `p256`)
    /// instead of ring; other key types as `verify`. Only for the differential test that holds
    /// the two verifiers equal (`tests/p256_backends.rs`): not part of the API.
    #[cfg(feature = "std")]
    #[doc(hidden)]
    pub fn verify_with_p256_crate<F>(&self, sig: &[u8], write_msg: F) -> Result<bool, JsonError>
    where
        F: FnOnce(&mut dyn Sink) -> Result<(), JsonError>,
    {
        match self {
            PublicKey::EcdsaP256(k) => verify_p256(k, sig, write_msg),
            _ => self.verify(sig, write_msg),
        }
    }
}

/// ECDSA P-256 with SHA-256 over the streamed message, RustCrypto `p256`: the device's verifier
/// (and, in `std` builds, the reference for ring's).
#[cfg(feature = "ecdsa")]
fn verify_p256<F>(k: &P256Key, sig: &[u8], write_msg: F) -> Result<bool, JsonError>
where
    F: FnOnce(&mut dyn Sink) -> Result<(), JsonError>,
{
    // DER, as securesystemslib writes and python-tuf requires (raw r||s is refused there too)
    let Ok(sig) = p256::ecdsa::Signature::from_der(sig) else {
        return Ok(false);
    };
    let mut h = Sha256::new();
    write_msg(&mut h)?;
    Ok(k.verify_digest(h, &sig).is_ok())
}

/// ECDSA P-256 with SHA-256, ring's arithmetic (`std` builds).
///
/// `p256` still decides which DER is well formed, as in [`verify_p256`], and a malformed signature
/// is refused before the message is produced, as there; ring then checks the same bytes. The two
/// parsers agree anyway (strict DER, `r` and `s` in `1..n`, nothing trailing; high `s` accepted by
/// both), so ring never refuses what `p256` parsed except by the arithmetic.
#[cfg(feature = "std")]
fn verify_p256_ring<F>(k: &P256Key, sig: &[u8], write_msg: F) -> Result<bool, JsonError>
where
    F: FnOnce(&mut dyn Sink) -> Result<(), JsonError>,
{
    if p256::ecdsa::Signature::from_der(sig).is_err() {
        return Ok(false);
    }
    // ring hashes the message itself (it has no prehashed ECDSA verify)
    let mut msg = alloc::vec::Vec::new();
    write_msg(&mut msg)?;
    // the uncompressed SEC1 point ring takes; a key given compressed was decompressed when parsed
    let point = k.to_encoded_point(false);
    let key = ring::signature::UnparsedPublicKey::new(
        &ring::signature::ECDSA_P256_SHA256_ASN1,
        point.as_bytes(),
    );
    Ok(key.verify(&msg, sig).is_ok())
}

struct EdSink<'a>(&'a mut ed25519_dalek::StreamVerifier);

impl Sink for EdSink<'_> {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes)
    }
}

/// Decode hex into `out`; returns the number of bytes, `None` on odd length, bad digit or overflow.
pub fn hex_decode(s: &[u8], out: &mut [u8]) -> Option<usize> {
    if s.len() % 2 != 0 || s.len() / 2 > out.len() {
        return None;
    }
    for (i, pair) in s.chunks_exact(2).enumerate() {
        let hi = (*pair.first()? as char).to_digit(16)?;
        let lo = (*pair.get(1)? as char).to_digit(16)?;
        *out.get_mut(i)? = (hi * 16 + lo) as u8;
    }
    Some(s.len() / 2)
}

/// Decode the body of a `PUBLIC KEY` PEM block into `out`.
#[cfg(feature = "ecdsa")]
fn pem_decode(pem: &str, out: &mut [u8]) -> Option<usize> {
    let body = pem
        .trim()
        .strip_prefix("-----BEGIN PUBLIC KEY-----")?
        .strip_suffix("-----END PUBLIC KEY-----")?;
    let mut acc = 0u32;
    let mut bits = 0u32;
    let mut n = 0usize;
    let mut pad = 0;
    for c in body.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => {
                pad += 1;
                continue;
            }
            b'\n' | b'\r' | b' ' | b'\t' => continue,
            _ => return None,
        };
        if pad > 0 {
            return None;
        }
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            *out.get_mut(n)? = (acc >> bits) as u8;
            n += 1;
        }
    }
    if pad > 2 {
        return None;
    }
    Some(n)
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    sha256_update(&mut h, data);
    sha256_finish(h)
}

/// `h.update(data)`, out of line: one copy of SHA-256's update for hale-core and its callers
/// (each crate that calls the generic method otherwise gets its own, ~0.1 KB on a Cortex-M4).
#[inline(never)]
pub fn sha256_update(h: &mut Sha256, data: &[u8]) {
    h.update(data)
}

/// `h.finalize()`, out of line: one copy of SHA-256's finalisation (~0.2 KB each on a
/// Cortex-M4), as [`sha256_update`].
#[inline(never)]
pub fn sha256_finish(h: Sha256) -> [u8; 32] {
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::parse;

    #[test]
    fn decodes_hex() {
        let mut out = [0u8; 4];
        assert_eq!(hex_decode(b"00ff10Ab", &mut out), Some(4));
        assert_eq!(out, [0, 255, 16, 171]);
        assert_eq!(hex_decode(b"0", &mut out), None);
        assert_eq!(hex_decode(b"zz", &mut out), None);
        assert_eq!(hex_decode(b"0000000000", &mut out), None);
    }

    #[test]
    fn refuses_small_order_ed25519_key() {
        // the identity point: every signature on every message would need special care
        let k = br#"{"keytype":"ed25519","scheme":"ed25519","keyval":{"public":"0100000000000000000000000000000000000000000000000000000000000000"}}"#;
        let o = parse(k).unwrap().as_object().unwrap();
        assert_eq!(
            PublicKey::from_tuf(&o).err(),
            Some("ed25519 key has small order")
        );
    }

    #[test]
    fn refuses_unknown_scheme() {
        let k = br#"{"keytype":"ed25519","scheme":"ed448","keyval":{"public":"00"}}"#;
        let o = parse(k).unwrap().as_object().unwrap();
        assert_eq!(
            PublicKey::from_tuf(&o).err(),
            Some("unsupported keytype/scheme")
        );
    }
}
