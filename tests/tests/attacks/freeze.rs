//! Indefinite freeze: an attacker keeps serving old, still-signed metadata so the device never
//! learns of a fix. Expiry, judged against the fixed update start time, ends that.

use hale_core::{Error, Name};
use hale_tests::*;

#[test]
fn rejects_expired_timestamp() {
    let r = RepoSim::new();
    let mut c = Client::new(r.initial_root());
    let later = NOW + 2 * DAY; // timestamp expires after one day
    let err = c.refresh(&r.files, later).unwrap_err();
    assert_eq!(
        err,
        ClientError::Trust(Error::Expired {
            role: Name::new("timestamp"),
            expires: NOW + DAY,
            now: later
        })
    );
    assert_eq!(
        c.core(),
        Trusted {
            root: 1,
            timestamp: None,
            snapshot: None,
            targets: None
        }
    );
}

#[test]
fn rejects_replayed_timestamp_once_it_expired() {
    let r = RepoSim::new();
    let mut c = Client::new(r.initial_root());
    c.refresh(&r.files, NOW).unwrap();
    let before = c.trusted();
    // the same (equal-version) timestamp is served again, after its expiry
    let later = NOW + DAY;
    let err = c.refresh(&r.files, later).unwrap_err();
    assert_eq!(
        err,
        ClientError::Trust(Error::Expired {
            role: Name::new("timestamp"),
            expires: NOW + DAY,
            now: later
        })
    );
    assert_eq!(
        c.core(),
        Trusted {
            root: 1,
            timestamp: Some(1),
            snapshot: None,
            targets: None
        }
    );
    assert_eq!(c.trusted(), before);
}

#[test]
fn rejects_expired_snapshot_and_targets() {
    let mut r = RepoSim::new();
    r.snapshot.expires = NOW - 1;
    r.publish();
    let mut c = Client::new(r.initial_root());
    let err = c.refresh(&r.files, NOW).unwrap_err();
    assert_eq!(
        err,
        ClientError::Trust(Error::Expired {
            role: Name::new("snapshot"),
            expires: NOW - 1,
            now: NOW
        })
    );
    assert_eq!(
        c.core(),
        Trusted {
            root: 1,
            timestamp: Some(2),
            snapshot: None,
            targets: None
        }
    );

    let mut r = RepoSim::new();
    r.targets.expires = NOW;
    r.mark("targets");
    r.publish();
    let mut c = Client::new(r.initial_root());
    let err = c.refresh(&r.files, NOW).unwrap_err();
    assert_eq!(
        err,
        ClientError::Trust(Error::Expired {
            role: Name::new("targets"),
            expires: NOW,
            now: NOW
        })
    );
    assert_eq!(
        c.core(),
        Trusted {
            root: 1,
            timestamp: Some(2),
            snapshot: Some(2),
            targets: None
        }
    );
}

#[test]
fn rejects_expired_final_root() {
    let mut r = RepoSim::new();
    r.rotate_root(|r| r.root.expires = NOW - DAY);
    let mut c = Client::new(r.initial_root());
    let err = c.refresh(&r.files, NOW).unwrap_err();
    assert_eq!(
        err,
        ClientError::Trust(Error::ExpiredRoot {
            expires: NOW - DAY,
            now: NOW
        })
    );
    // nothing persisted: the device still trusts root v1
    assert_eq!(
        c.trusted(),
        Trusted {
            root: 1,
            ..Default::default()
        }
    );
    // hale-core verified the expired root v2 (spec 5.3.10 checks expiry after the chain) and went
    // no further: no timestamp was loaded
    assert_eq!(
        c.core(),
        Trusted {
            root: 2,
            timestamp: None,
            snapshot: None,
            targets: None
        }
    );
}

#[test]
fn an_expired_intermediate_root_is_fine_when_the_final_one_is_valid() {
    let mut r = RepoSim::new();
    r.rotate_root(|r| r.root.expires = NOW - DAY);
    r.rotate_root(|r| r.root.expires = NOW + 365 * DAY);
    let mut c = Client::new(r.initial_root());
    c.refresh(&r.files, NOW).unwrap();
    assert_eq!(c.trusted().root, 3);
}
