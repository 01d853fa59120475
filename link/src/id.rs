//! The name a transfer goes by on the link.

use sha2::{Digest, Sha256};

/// Identifies one bundle on the link: the first 16 bytes of the SHA-256 of the whole bundle and
/// its length.
///
/// On the wire (in `Command::Write`/`Swap` `version` and in `UpdateStatus::version`) it is 40
/// lowercase hex characters: 32 for the digest prefix, 8 for the length (big-endian). Carrying the
/// length lets the device refuse a bundle larger than it may hold **before** it writes a byte and
/// never write past the declared end: embedded-update's `Write` names no total size.
///
/// The id is not a source of trust: it only keeps the blocks of different bundles apart. The
/// device trusts a bundle only after hale-core has verified it from its own root.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BundleId {
    digest_prefix: [u8; 16],
    bundle_len: u32,
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

impl BundleId {
    /// Length of the wire form.
    pub const WIRE_LEN: usize = 40;

    /// The id of `bundle`; `None` if it is 4 GiB or larger (the link's offsets are `u32`).
    pub fn of(bundle: &[u8]) -> Option<Self> {
        let bundle_len = u32::try_from(bundle.len()).ok()?;
        Some(Self::from_digest(
            &Sha256::digest(bundle).into(),
            bundle_len,
        ))
    }

    /// The id of a bundle with this SHA-256 and length.
    pub fn from_digest(sha256: &[u8; 32], bundle_len: u32) -> Self {
        let mut digest_prefix = [0u8; 16];
        for (d, s) in digest_prefix.iter_mut().zip(sha256.iter()) {
            *d = *s;
        }
        Self {
            digest_prefix,
            bundle_len,
        }
    }

    /// Whether `sha256` starts with this id's digest prefix.
    pub fn matches_digest(&self, sha256: &[u8; 32]) -> bool {
        sha256.starts_with(&self.digest_prefix)
    }

    /// The bundle's declared length.
    pub fn bundle_len(&self) -> u32 {
        self.bundle_len
    }

    /// The wire form: 40 lowercase hex characters.
    pub fn to_wire(&self) -> [u8; Self::WIRE_LEN] {
        let mut out = [0u8; Self::WIRE_LEN];
        let len = self.bundle_len.to_be_bytes();
        let bytes = self.digest_prefix.iter().chain(len.iter());
        for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
            for (o, n) in pair.iter_mut().zip([b >> 4, b & 0x0f]) {
                *o = HEX.get(usize::from(n)).copied().unwrap_or(b'0');
            }
        }
        out
    }

    /// Parse the wire form; `None` unless it is exactly 40 lowercase hex characters.
    pub fn from_wire(wire: &[u8]) -> Option<Self> {
        if wire.len() != Self::WIRE_LEN {
            return None;
        }
        let mut bytes = [0u8; 20];
        for (b, pair) in bytes.iter_mut().zip(wire.chunks_exact(2)) {
            let hi = nibble(*pair.first()?)?;
            let lo = nibble(*pair.get(1)?)?;
            *b = (hi << 4) | lo;
        }
        let (prefix, len) = bytes.split_at(16);
        let mut digest_prefix = [0u8; 16];
        digest_prefix.copy_from_slice(prefix);
        let mut l = [0u8; 4];
        l.copy_from_slice(len);
        Some(Self {
            digest_prefix,
            bundle_len: u32::from_be_bytes(l),
        })
    }
}

impl core::fmt::Display for BundleId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        for b in self.to_wire() {
            write!(f, "{}", char::from(b))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_form_round_trips_and_is_canonical() {
        let id = BundleId::of(b"hello bundle").unwrap();
        let wire = id.to_wire();
        assert_eq!(&wire[32..], b"0000000c");
        assert_eq!(BundleId::from_wire(&wire), Some(id));
        let mut upper = wire;
        upper[0] = b'A';
        assert_eq!(BundleId::from_wire(&upper), None);
        assert_eq!(BundleId::from_wire(&wire[..39]), None);
        assert_eq!(BundleId::from_wire(b"zz"), None);
        assert!(id.matches_digest(&Sha256::digest(b"hello bundle").into()));
    }
}
