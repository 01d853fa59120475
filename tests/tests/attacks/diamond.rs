//! Diamond delegation (the 2026 bug in python-tuf, go-tuf and sigstore-rust): role X is reachable
//! through two delegators. A client that caches X by name after verifying it through the first
//! delegator trusts it through the second without checking the second delegator's keys for it.
//! Hale verifies a delegated role against the delegator that led to it, every time.

use hale_core::{Error, Name};
use hale_repo::keys::KeyKind;
use hale_tests::*;

/// targets → a (paths *) → x (paths a-*, signed by x's key)
/// targets → b (paths *) → x (paths b-*, delegated to the attacker's key)
fn diamond() -> RepoSim {
    let mut r = RepoSim::new();
    let xkey = key("x", KeyKind::Ed25519);
    let evil = key("attacker", KeyKind::Ed25519);
    r.delegate(
        "targets",
        "a",
        &["*"],
        false,
        vec![key("a", KeyKind::Ed25519)],
        1,
    );
    r.delegate(
        "targets",
        "b",
        &["*"],
        false,
        vec![key("b", KeyKind::Ed25519)],
        1,
    );
    r.delegate("a", "x", &["a-*"], false, vec![xkey.clone()], 1);
    // b's delegation to x names another key; x itself is still signed by xkey
    r.delegate("b", "x", &["b-*"], false, vec![evil], 1);
    r.delegated.get_mut("x").unwrap().keys = vec![xkey];
    r.add_target("x", "a-firmware.bin", b"A", None);
    r.add_target("x", "b-firmware.bin", b"B", None);
    r.publish();
    r
}

#[test]
fn role_reached_through_a_second_delegator_is_verified_against_that_delegator() {
    let r = diamond();
    let mut c = Client::new(r.initial_root());
    // through a, x verifies: a-firmware is found
    assert_eq!(c.download(&r.files, "a-firmware.bin", NOW).unwrap(), b"A");
    // through b, x is checked against b's keys for it, which did not sign it
    let err = c.download(&r.files, "b-firmware.bin", NOW).unwrap_err();
    assert_eq!(
        err,
        ClientError::Trust(Error::ThresholdNotMet {
            role: Name::new("x"),
            threshold: 1,
            valid: 0
        })
    );
}

#[test]
fn same_trusted_set_does_not_reuse_a_role_verified_through_another_path() {
    use hale_core::trusted::{RoleSource, SearchError};
    struct Src<'a>(&'a std::collections::BTreeMap<String, Vec<u8>>);
    impl RoleSource for Src<'_> {
        type Buf = Vec<u8>;
        type Error = ();
        fn fetch_role(
            &mut self,
            name: &str,
            m: &hale_core::metadata::MetaFile<'_>,
        ) -> Result<Vec<u8>, ()> {
            self.0
                .get(&format!("{}.{name}.json", m.version))
                .cloned()
                .ok_or(())
        }
    }
    let r = diamond();
    let mut c = Client::new(r.initial_root());
    let set = c.refresh(&r.files, NOW).unwrap();
    let mut src = Src(&r.files);
    assert!(set
        .find_target("a-firmware.bin", &mut src)
        .unwrap()
        .is_some());
    // a second search in the same set, after x was verified through a
    let err = set.find_target("b-firmware.bin", &mut src).unwrap_err();
    assert_eq!(
        err,
        SearchError::Trust(Error::ThresholdNotMet {
            role: Name::new("x"),
            threshold: 1,
            valid: 0
        })
    );
}
