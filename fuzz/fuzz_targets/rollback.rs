//! Rollback authorizations (`rollback::verify_authorization`) against the fixture's top-level
//! targets, which delegate `rollback` to the fixture delegate key. Input: one flags byte (bit 0:
//! the authorization is a raw envelope, not a `signed` body to sign here), then 0xFF-separated
//! parts: authorization, device id, group, target path. An accepted authorization must name
//! this device (or its group), this target and its hash, and be valid now for at most the
//! maximum validity, issued no more than `ISSUED_LEEWAY` after now.
#![no_main]
use std::sync::OnceLock;

use hale_core::metadata::{Envelope, Targets};
use hale_core::rollback::{verify_authorization, Request, DEFAULT_MAX_VALIDITY, ISSUED_LEEWAY};
use hale_core::{Name, Version};
use hale_fuzz::fixture::{self, Signer25519};
use libfuzzer_sys::fuzz_target;

fn delegate() -> &'static Signer25519 {
    static K: OnceLock<Signer25519> = OnceLock::new();
    K.get_or_init(|| Signer25519::new("fuzz-delegate"))
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let parts = fixture::parts(rest);
    let part = |i: usize| parts.get(i).copied().unwrap_or_default();
    let auth = if flags & 1 != 0 {
        part(0).to_vec()
    } else {
        delegate()
            .envelope(part(0))
            .unwrap_or_else(|| part(0).to_vec())
    };
    let device_id = core::str::from_utf8(part(1)).unwrap_or("pump-a-000123");
    let group = core::str::from_utf8(part(2)).ok().filter(|g| !g.is_empty());
    let target = core::str::from_utf8(part(3)).unwrap_or("pump-a/firmware.bin");

    let env = Envelope::parse(fixture::TARGETS, "targets").expect("fixture targets");
    let targets = Targets::parse(&env.signed, Name::new("targets")).expect("fixture targets");
    let req = Request {
        device_id,
        group,
        running: Version::new(2, 1, 0),
        target,
        target_sha256: hale_core::crypto::sha256(b"firmware image"),
        last_used: 0,
    };
    for max in [DEFAULT_MAX_VALIDITY, i64::MAX, 0, -1] {
        let r = verify_authorization(&targets, &auth, &req, fixture::NOW, max);
        if std::env::var_os("HALE_FUZZ_DEBUG").is_some() {
            eprintln!(
                "verify_authorization(max_validity {max}): {:?}",
                r.as_ref().map(|a| a.header)
            );
        }
        if let Ok(a) = r {
            assert!(
                a.header.expires > fixture::NOW,
                "accepted an expired authorization"
            );
            let validity = a.header.expires - a.issued;
            assert!(
                validity > 0 && validity <= max,
                "accepted validity {validity} > max {max}"
            );
            assert!(
                a.target.eq_str(target),
                "accepted an authorization for another target"
            );
            assert!(
                a.issued - fixture::NOW <= ISSUED_LEEWAY,
                "accepted an authorization issued {} s ahead",
                a.issued - fixture::NOW
            );
        }
    }
});
