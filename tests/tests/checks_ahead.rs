//! Signature checks made ahead on another thread (`hale_core::ahead`): a trusted set that takes
//! its answers from such a table decides exactly as one that checks everything itself, and a
//! table filled from a root the set does not trust lends it nothing.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::sync::Arc;

use hale_core::ahead::Checks;
use hale_core::{Error, Name, Role, Storage, TrustedSet, Update};
use hale_repo::keys::KeyKind;
use hale_tests::*;

fn set(r: &RepoSim) -> TrustedSet<Vec<u8>> {
    TrustedSet::new(Storage::with_capacity(1 << 16), &r.initial_root(), NOW).unwrap()
}

/// The three top-level updates, in order, as a refresh makes them.
fn update(
    s: &mut TrustedSet<Vec<u8>>,
    ts: &[u8],
    snapshot: &[u8],
    targets: &[u8],
) -> Result<[Update; 3], Error> {
    Ok([
        s.update_timestamp(ts)?,
        s.update_snapshot(snapshot)?,
        s.update_targets(targets)?,
    ])
}

fn stored(s: &TrustedSet<Vec<u8>>) -> Vec<Option<Vec<u8>>> {
    [Role::Root, Role::Timestamp, Role::Snapshot, Role::Targets]
        .into_iter()
        .map(|r| s.stored(r).map(<[u8]>::to_vec))
        .collect()
}

#[test]
fn a_set_that_takes_answers_checked_ahead_decides_as_one_that_checks_them() {
    let r = RepoSim::new();
    let (ts, snapshot, targets) = (
        &r.files["timestamp.json"],
        &r.files["1.snapshot.json"],
        &r.files["1.targets.json"],
    );
    let checks = Arc::new(Checks::new());
    // on another thread, as a client polling would
    std::thread::scope(|s| {
        s.spawn(|| {
            checks.check_ahead(
                &r.initial_root(),
                &[
                    ("timestamp", b"not metadata"),
                    ("snapshot", ts),
                    ("timestamp", ts),
                    ("snapshot", snapshot),
                    ("targets", targets),
                ],
            )
        });
    });
    // what does not parse (bytes, a timestamp given as the snapshot) is skipped, the rest checked
    assert_eq!(checks.kept(), 3);
    // once the refresh is over (stopped), a late thread checks nothing more
    let late = Checks::new();
    late.stop();
    late.check_ahead(&r.initial_root(), &[("timestamp", ts)]);
    assert_eq!((late.kept(), late.checked()), (0, 0));

    let mut plain = set(&r);
    let mut ahead = set(&r);
    ahead.check_with(checks.clone());
    assert_eq!(
        update(&mut ahead, ts, snapshot, targets).unwrap(),
        update(&mut plain, ts, snapshot, targets).unwrap()
    );
    assert_eq!(stored(&ahead), stored(&plain));
    // every signature check of the three was answered from the table
    assert_eq!(checks.taken(), 3);

    // a set that let the table go checks alone
    let mut alone = set(&r);
    alone.check_with(checks.clone());
    alone.check_alone();
    assert_eq!(
        update(&mut alone, ts, snapshot, targets).unwrap(),
        update(&mut set(&r), ts, snapshot, targets).unwrap()
    );
    assert_eq!((checks.taken(), checks.kept()), (3, 3));
}

#[test]
fn an_answer_about_another_key_filed_under_a_trusted_key_id_lends_no_trust() {
    let r = RepoSim::new();
    let attacker = key("attacker", KeyKind::Ed25519);
    // a timestamp the attacker signed, under the key id of the trusted timestamp key, and a root
    // (never trusted) that maps that key id to the attacker's key: the table holds a true
    // answer, "a valid signature by the attacker's key", filed under the trusted key's id
    let kid = r.timestamp.keys[0].keyid();
    let mut evil: serde_json::Value =
        serde_json::from_slice(&resign(&r.files["timestamp.json"], &[&attacker], |s| {
            s["version"] = 9.into()
        }))
        .unwrap();
    evil["signatures"][0]["keyid"] = kid.clone().into();
    let evil = serde_json::to_vec(&evil).unwrap();
    let fake_root = tamper_signed(&r.initial_root(), |s| {
        s["keys"][&kid] = attacker.public();
    });
    let checks = Arc::new(Checks::new());
    checks.check_ahead(&fake_root, &[("timestamp", &evil)]);
    assert_eq!(checks.kept(), 1);

    let mut plain = set(&r);
    let mut ahead = set(&r);
    ahead.check_with(checks.clone());
    let error = ahead.update_timestamp(&evil).unwrap_err();
    assert_eq!(error, plain.update_timestamp(&evil).unwrap_err());
    assert_eq!(
        error,
        Error::ThresholdNotMet {
            role: Name::new("timestamp"),
            threshold: 1,
            valid: 0,
        }
    );
    // nothing trusted but the root: the set checked the signature with the key its trusted root
    // names, which the attacker's answer is not about
    assert_eq!(ahead.stored(Role::Timestamp), None);
    assert_eq!(stored(&ahead), stored(&plain));
    assert_eq!(checks.taken(), 0);
}

#[test]
fn a_stored_file_that_no_longer_verifies_is_refused_as_without_checks_ahead() {
    let r = RepoSim::new();
    // changed on disk after it was stored: its signature no longer covers it
    let ts = tamper_signed(&r.files["timestamp.json"], |s| {
        s["expires"] = "2099-01-01T00:00:00Z".into();
    });
    let checks = Arc::new(Checks::new());
    checks.check_ahead(&r.initial_root(), &[("timestamp", &ts)]);
    assert_eq!(checks.kept(), 1);

    let mut plain = set(&r);
    let mut ahead = set(&r);
    ahead.check_with(checks.clone());
    let error = ahead.load_trusted_timestamp(&ts).unwrap_err();
    assert_eq!(error, plain.load_trusted_timestamp(&ts).unwrap_err());
    assert_eq!(
        error,
        Error::ThresholdNotMet {
            role: Name::new("timestamp"),
            threshold: 1,
            valid: 0,
        }
    );
    assert_eq!(stored(&ahead), stored(&plain));
    assert_eq!(ahead.stored(Role::Timestamp), None);
    // the "invalid" answer came from the table
    assert_eq!(checks.taken(), 1);
}

#[test]
fn checks_ahead_racing_the_refresh_on_another_thread_leave_its_decisions_alone() {
    // the thread and the refresh reach the same signatures in whatever order the scheduler
    // gives over many runs (the refresh may wait for a check in progress, make it, or take it;
    // `ahead.rs`'s unit tests force each): the answers never differ
    let r = RepoSim::new();
    let (ts, snapshot, targets) = (
        &r.files["timestamp.json"],
        &r.files["1.snapshot.json"],
        &r.files["1.targets.json"],
    );
    let bad_ts = tamper_signed(ts, |s| s["version"] = 7.into());
    let plain_ok = update(&mut set(&r), ts, snapshot, targets).unwrap();
    let plain_err = update(&mut set(&r), &bad_ts, snapshot, targets).unwrap_err();
    assert!(matches!(plain_err, Error::ThresholdNotMet { .. }));
    for i in 0..40 {
        let ts: &[u8] = if i % 2 == 0 { ts } else { &bad_ts };
        let checks = Arc::new(Checks::new());
        let mut ahead = set(&r);
        ahead.check_with(checks.clone());
        let root = r.initial_root();
        let result = std::thread::scope(|s| {
            let helper = s.spawn(|| {
                checks.check_ahead(
                    &root,
                    &[
                        ("targets", targets),
                        ("snapshot", snapshot),
                        ("timestamp", ts),
                    ],
                )
            });
            let result = update(&mut ahead, ts, snapshot, targets);
            helper.join().unwrap();
            result
        });
        if i % 2 == 0 {
            assert_eq!(result.unwrap(), plain_ok);
        } else {
            assert_eq!(result.unwrap_err(), plain_err);
            assert_eq!(ahead.stored(Role::Timestamp), None);
        }
    }
}
