//! The trusted-set workflow from the fixture root: fuzzed timestamp, snapshot, targets and
//! delegated roles, each (by default) signed with the fixture key of its role so the fuzzer gets
//! past the signature checks into the version, expiry, hash and delegation logic.
//!
//! Input: one flags byte, then parts separated by 0xFF:
//! `[new root]` (flag ROOT), timestamp, snapshot, targets, target path, delegated roles…
//! Each part is the `signed` body (wrapped and signed here) unless its RAW flag is set, in which
//! case it is the whole envelope as received.
#![no_main]
use std::sync::OnceLock;

use hale_core::metadata::MetaFile;
use hale_core::trusted::{RoleSource, SearchError};
use hale_core::{Error, Name, Role, Storage, TrustedSet};
use hale_fuzz::fixture::{self, Keys, Signer25519};
use libfuzzer_sys::fuzz_target;

const RAW_TIMESTAMP: u8 = 1;
const RAW_SNAPSHOT: u8 = 2;
const RAW_TARGETS: u8 = 4;
const RAW_DELEGATED: u8 = 8;
const ROOT: u8 = 16;
const RAW_ROOT: u8 = 32;
const AS_BASELINE: u8 = 64;
const TWICE: u8 = 128;

/// Small fixed buffers, as on a device (the fixture fits; bigger fuzzed roles hit StorageTooSmall).
const CAP: usize = 4096;

/// `HALE_FUZZ_DEBUG=1`: print each step's result (to check that seeds get deep).
fn debug() -> bool {
    static D: OnceLock<bool> = OnceLock::new();
    *D.get_or_init(|| std::env::var_os("HALE_FUZZ_DEBUG").is_some())
}

macro_rules! step {
    ($what:expr, $e:expr) => {{
        let r = $e;
        if debug() {
            eprintln!("{}: {:?}", $what, r);
        }
        r
    }};
}

fn keys() -> &'static Keys {
    static K: OnceLock<Keys> = OnceLock::new();
    K.get_or_init(Keys::new)
}

fn wrap(part: &[u8], raw: bool, key: &Signer25519) -> Vec<u8> {
    if raw {
        return part.to_vec();
    }
    key.envelope(part).unwrap_or_else(|| part.to_vec())
}

struct Source {
    roles: Vec<Vec<u8>>,
    next: usize,
    fetched: u32,
}

impl RoleSource for Source {
    type Buf = Vec<u8>;
    type Error = &'static str;
    fn fetch_role(&mut self, _name: &str, meta: &MetaFile<'_>) -> Result<Vec<u8>, &'static str> {
        self.fetched += 1;
        assert!(
            self.fetched <= hale_core::limits::MAX_DELEGATION_VISITS,
            "search fetched more roles than MAX_DELEGATION_VISITS"
        );
        if self.roles.is_empty() {
            return Err("no such role");
        }
        let b = self.roles[self.next % self.roles.len()].clone();
        self.next += 1;
        if meta.length.is_some_and(|l| b.len() as u64 > l) {
            return Err("longer than listed");
        }
        Ok(b)
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let k = keys();
    let mut parts = fixture::parts(rest).into_iter();
    let (mut b_root, mut b_ts, mut b_snap, mut b_targets) =
        ([0u8; CAP], [0u8; CAP / 2], [0u8; CAP], [0u8; CAP]);
    let store: Storage<&mut [u8]> = Storage {
        root: &mut b_root[..],
        timestamp: &mut b_ts[..],
        snapshot: &mut b_snap[..],
        targets: &mut b_targets[..],
    };
    let mut set =
        TrustedSet::new(store, fixture::ROOT, fixture::NOW).expect("the fixture root verifies");

    if flags & ROOT != 0 {
        let b = wrap(
            parts.next().unwrap_or_default(),
            flags & RAW_ROOT != 0,
            &k.root,
        );
        let before = set.stored(Role::Root).map(<[u8]>::to_vec);
        match step!("update_root", set.update_root(&b)) {
            Ok(v) => {
                assert_eq!(v, 2);
                assert_eq!(set.stored(Role::Root), Some(&b[..]));
            }
            Err(_) => assert_eq!(
                set.stored(Role::Root).map(<[u8]>::to_vec),
                before,
                "failed update_root changed the root"
            ),
        }
        let _ = set.root();
    }

    let ts = wrap(
        parts.next().unwrap_or_default(),
        flags & RAW_TIMESTAMP != 0,
        &k.timestamp,
    );
    if flags & AS_BASELINE != 0 {
        let _ = step!("load_trusted_timestamp", set.load_trusted_timestamp(&ts));
    }
    let r = step!("update_timestamp", set.update_timestamp(&ts));
    if r.is_err() && flags & AS_BASELINE == 0 {
        assert!(
            set.stored(Role::Timestamp).is_none(),
            "failed update_timestamp stored something"
        );
    }
    if flags & TWICE != 0 {
        let _ = set.update_timestamp(&ts);
    }
    let _ = set.timestamp();

    let snap = wrap(
        parts.next().unwrap_or_default(),
        flags & RAW_SNAPSHOT != 0,
        &k.snapshot,
    );
    if flags & AS_BASELINE != 0 {
        let _ = step!("load_trusted_snapshot", set.load_trusted_snapshot(&snap));
    }
    let before = set.stored(Role::Snapshot).map(<[u8]>::to_vec);
    if step!("update_snapshot", set.update_snapshot(&snap)).is_err() {
        assert_eq!(
            set.stored(Role::Snapshot).map(<[u8]>::to_vec),
            before,
            "failed update_snapshot changed the snapshot"
        );
    }
    if flags & TWICE != 0 {
        let _ = set.update_snapshot(&snap);
    }
    let _ = set.snapshot();

    let targets = wrap(
        parts.next().unwrap_or_default(),
        flags & RAW_TARGETS != 0,
        &k.targets,
    );
    let before = set.stored(Role::Targets).map(<[u8]>::to_vec);
    if step!("update_targets", set.update_targets(&targets)).is_err() {
        assert_eq!(
            set.stored(Role::Targets).map(<[u8]>::to_vec),
            before,
            "failed update_targets changed the targets"
        );
    }
    let _ = set.targets();

    let path = core::str::from_utf8(parts.next().unwrap_or_default())
        .unwrap_or("pump-a/firmware.bin")
        .to_string();
    let roles: Vec<Vec<u8>> = parts
        .take(8)
        .map(|p| wrap(p, flags & RAW_DELEGATED != 0, &k.delegate))
        .collect();
    for name in ["targets", "firmware", "bin-0", ""] {
        let _ = set.delegated_meta(name);
    }
    if let Some(top) = set.targets() {
        if let Some(first) = roles.first() {
            let _ = set.verify_delegated(&top, "firmware", first);
        }
    }
    let mut source = Source {
        roles,
        next: 0,
        fetched: 0,
    };
    match step!(
        format!("find_target({path:?})"),
        set.find_target(&path, &mut source)
    ) {
        Ok(Some(found)) => {
            let _ = found.role();
            assert_eq!(
                found.path_hash(),
                hale_core::crypto::sha256(path.as_bytes())
            );
            let _ = Envelope_check(found.role_bytes());
            match found.file(&path) {
                Ok(tf) => {
                    let _ = tf.verify_bytes(path.as_bytes(), Name::new("t"));
                    if let Some(custom) = tf.custom {
                        let _ = hale_core::policy::evaluate(Some(&custom), &device(), false);
                    }
                }
                Err(e) => panic!("find_target found {path:?} but file() fails: {e:?}"),
            }
        }
        Ok(None) | Err(SearchError::Fetch(_)) => {}
        Err(SearchError::Trust(e)) => {
            // every trust error has a Display
            let _ = format!("{e}");
            let _: &Error = &e;
        }
    }
});

#[allow(non_snake_case)]
fn Envelope_check(b: &[u8]) -> bool {
    hale_core::metadata::Envelope::parse(b, "found").is_ok()
}

fn device() -> hale_core::Device<'static> {
    hale_core::Device {
        model: "pump-a",
        revision: "r2",
        running: hale_core::Version::new(1, 0, 0),
        security_counter: 1,
        bootloader: hale_core::Version::new(1, 2, 0),
    }
}
