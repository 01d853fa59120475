//! Authorized rollback (issue 6): a field technician may take a device back to an earlier image
//! only with an authorization signed by a threshold of the `rollback` role, naming the device,
//! the exact image, and expiring soon — and never below the security counter.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use hale_core::policy::{evaluate, Device, PolicyError, Version};
use hale_core::rollback::{verify_authorization, Request, DEFAULT_MAX_VALIDITY};
use hale_core::{Error, Name};
use hale_repo::build::{self, Profile, RollbackAuthorization};
use hale_repo::keys::{KeyKind, SigningKey};
use hale_repo::sign;
use hale_tests::*;
use serde_json::json;
use sha2::{Digest, Sha256};

const OLD: &[u8] = b"pump firmware 2.0.0";

struct World {
    repo: RepoSim,
    client: Client,
    rollback_keys: Vec<SigningKey>,
}

fn world() -> World {
    let mut r = RepoSim::new();
    let rollback_keys = vec![
        key("field-service", KeyKind::EcdsaP256),
        key("clinical-eng", KeyKind::Ed25519),
    ];
    // the rollback role: delegated by targets, two of two, no paths (it can never sign targets)
    r.delegate("targets", "rollback", &[], false, rollback_keys.clone(), 2);
    let custom = |v: &str, sc: u64| json!({"hardware": [{"model": "pump-a", "revisions": ["r2"]}], "version": v, "security_counter": sc});
    r.add_target(
        "targets",
        "pump-a/fw-2.0.0.bin",
        OLD,
        Some(custom("2.0.0", 3)),
    );
    r.add_target(
        "targets",
        "pump-a/fw-1.0.0.bin",
        b"pump firmware 1.0.0",
        Some(custom("1.0.0", 1)),
    );
    r.add_target(
        "targets",
        "pump-a/fw-2.1.0.bin",
        b"pump firmware 2.1.0",
        Some(custom("2.1.0", 3)),
    );
    r.publish();
    let client = Client::new(r.initial_root());
    World {
        repo: r,
        client,
        rollback_keys,
    }
}

fn authorization(keys: &[&SigningKey], f: impl FnOnce(&mut RollbackAuthorization)) -> Vec<u8> {
    let mut a = RollbackAuthorization {
        devices: vec!["pump-a-000123".into()],
        group: None,
        target: "pump-a/fw-2.0.0.bin".into(),
        target_sha256: hex::encode(Sha256::digest(OLD)),
        installed: Some("2.1.0".into()),
        reason: "INC-4711: occlusion alarm regression in 2.1.0".into(),
        issued: NOW - 3600,
        expires: NOW + 8 * 3600,
    };
    f(&mut a);
    sign::sign_new(
        &build::rollback_authorization(Profile::Standard, &a).unwrap(),
        keys,
    )
    .unwrap()
}

fn device(security_counter: u64) -> Device<'static> {
    Device {
        model: "pump-a",
        revision: "r2",
        running: Version::new(2, 1, 0),
        security_counter,
        bootloader: Version::new(1, 0, 0),
    }
}

fn request(target: &'static str, content: &[u8]) -> Request<'static> {
    Request {
        device_id: "pump-a-000123",
        group: Some("ward-7"),
        running: Version::new(2, 1, 0),
        target,
        target_sha256: Sha256::digest(content).into(),
        last_used: 0,
    }
}

/// Verify `auth` for `req` with the device's trusted targets, then evaluate policy as the agent does.
fn decide(
    w: &mut World,
    auth: Option<&[u8]>,
    req: &Request<'_>,
    sc: u64,
) -> Result<Version, Error> {
    let set = w.client.refresh(&w.repo.files, NOW).unwrap();
    let targets = set.targets().unwrap();
    let allow = match auth {
        Some(a) => {
            verify_authorization(&targets, a, req, NOW, DEFAULT_MAX_VALIDITY)?;
            true
        }
        None => false,
    };
    let t = targets.target(req.target, Name::new("targets"))?.unwrap();
    Ok(evaluate(t.custom.as_ref(), &device(sc), allow)?.version)
}

#[test]
fn an_authorized_rollback_is_accepted() {
    let mut w = world();
    let keys: Vec<&SigningKey> = w.rollback_keys.iter().collect();
    let auth = authorization(&keys, |_| {});
    assert_eq!(
        decide(&mut w, Some(&auth), &request("pump-a/fw-2.0.0.bin", OLD), 3),
        Ok(Version::new(2, 0, 0))
    );
}

#[test]
fn an_authorization_for_the_devices_group_is_accepted() {
    let mut w = world();
    let keys: Vec<&SigningKey> = w.rollback_keys.iter().collect();
    let auth = authorization(&keys, |a| {
        a.devices.clear();
        a.group = Some("ward-7".into());
    });
    assert_eq!(
        decide(&mut w, Some(&auth), &request("pump-a/fw-2.0.0.bin", OLD), 3),
        Ok(Version::new(2, 0, 0))
    );
}

#[test]
fn refuses_a_downgrade_without_authorization() {
    let mut w = world();
    assert_eq!(
        decide(&mut w, None, &request("pump-a/fw-2.0.0.bin", OLD), 3),
        Err(Error::Policy(PolicyError::NotNewer {
            running: Version::new(2, 1, 0),
            offered: Version::new(2, 0, 0)
        }))
    );
}

#[test]
fn refuses_an_authorization_for_another_device() {
    let mut w = world();
    let keys: Vec<&SigningKey> = w.rollback_keys.iter().collect();
    let auth = authorization(&keys, |a| a.devices = vec!["pump-a-000999".into()]);
    assert_eq!(
        decide(&mut w, Some(&auth), &request("pump-a/fw-2.0.0.bin", OLD), 3),
        Err(Error::NotForThisDevice {
            device: Name::new("pump-a-000123")
        })
    );
}

#[test]
fn refuses_an_expired_authorization() {
    let mut w = world();
    let keys: Vec<&SigningKey> = w.rollback_keys.iter().collect();
    let auth = authorization(&keys, |a| {
        a.issued = NOW - 10 * 3600;
        a.expires = NOW - 3600;
    });
    assert_eq!(
        decide(&mut w, Some(&auth), &request("pump-a/fw-2.0.0.bin", OLD), 3),
        Err(Error::Expired {
            role: Name::new("rollback-authorization"),
            expires: NOW - 3600,
            now: NOW
        })
    );
}

#[test]
fn refuses_an_authorization_issued_no_later_than_the_last_one_the_device_used() {
    let mut w = world();
    let keys: Vec<&SigningKey> = w.rollback_keys.iter().collect();
    let auth = authorization(&keys, |_| {});
    let issued = NOW - 3600;
    // the device installed by this very authorization, or by one issued later
    for last_used in [issued, issued + 60] {
        let req = Request {
            last_used,
            ..request("pump-a/fw-2.0.0.bin", OLD)
        };
        assert_eq!(
            decide(&mut w, Some(&auth), &req, 3),
            Err(Error::AuthorizationUsed {
                issued,
                last: last_used
            })
        );
    }
    // by one issued earlier: this one is new to it
    let req = Request {
        last_used: issued - 1,
        ..request("pump-a/fw-2.0.0.bin", OLD)
    };
    assert_eq!(
        decide(&mut w, Some(&auth), &req, 3),
        Ok(Version::new(2, 0, 0))
    );
}

#[test]
fn refuses_an_authorization_valid_for_longer_than_the_maximum() {
    let mut w = world();
    let keys: Vec<&SigningKey> = w.rollback_keys.iter().collect();
    let auth = authorization(&keys, |a| a.expires = a.issued + 30 * DAY);
    assert_eq!(
        decide(&mut w, Some(&auth), &request("pump-a/fw-2.0.0.bin", OLD), 3),
        Err(Error::AuthorizationTooLong {
            max: DEFAULT_MAX_VALIDITY,
            validity: 30 * DAY
        })
    );
}

#[test]
fn refuses_a_rollback_below_the_security_counter_even_when_authorized() {
    let mut w = world();
    let keys: Vec<&SigningKey> = w.rollback_keys.iter().collect();
    let content = b"pump firmware 1.0.0";
    let auth = authorization(&keys, |a| {
        a.target = "pump-a/fw-1.0.0.bin".into();
        a.target_sha256 = hex::encode(Sha256::digest(content));
    });
    assert_eq!(
        decide(
            &mut w,
            Some(&auth),
            &request("pump-a/fw-1.0.0.bin", content),
            3
        ),
        Err(Error::Policy(PolicyError::BelowSecurityCounter {
            floor: 3,
            offered: 1
        }))
    );
}

#[test]
fn refuses_an_authorization_signed_below_threshold() {
    let mut w = world();
    let one = [&w.rollback_keys[0]];
    let auth = authorization(&one, |_| {});
    assert_eq!(
        decide(&mut w, Some(&auth), &request("pump-a/fw-2.0.0.bin", OLD), 3),
        Err(Error::ThresholdNotMet {
            role: Name::new("rollback"),
            threshold: 2,
            valid: 1
        })
    );
}

#[test]
fn refuses_an_authorization_signed_by_keys_of_another_role() {
    let mut w = world();
    let tk = w.repo.targets.keys[0].clone();
    let auth = authorization(&[&tk, &w.rollback_keys[1]], |_| {});
    assert_eq!(
        decide(&mut w, Some(&auth), &request("pump-a/fw-2.0.0.bin", OLD), 3),
        Err(Error::ThresholdNotMet {
            role: Name::new("rollback"),
            threshold: 2,
            valid: 1
        })
    );
}

#[test]
fn refuses_an_authorization_whose_target_differs_from_what_is_installed() {
    let mut w = world();
    let keys: Vec<&SigningKey> = w.rollback_keys.iter().collect();
    let auth = authorization(&keys, |_| {});
    let content = b"pump firmware 1.0.0";
    assert_eq!(
        decide(
            &mut w,
            Some(&auth),
            &request("pump-a/fw-1.0.0.bin", content),
            3
        ),
        Err(Error::AuthorizationTargetMismatch {
            authorized: Name::new("pump-a/fw-2.0.0.bin"),
            requested: Name::new("pump-a/fw-1.0.0.bin")
        })
    );
}

#[test]
fn refuses_an_authorization_for_other_image_bytes() {
    let mut w = world();
    let keys: Vec<&SigningKey> = w.rollback_keys.iter().collect();
    let auth = authorization(&keys, |a| a.target_sha256 = "11".repeat(32));
    assert_eq!(
        decide(&mut w, Some(&auth), &request("pump-a/fw-2.0.0.bin", OLD), 3),
        Err(Error::HashMismatch {
            what: Name::new("pump-a/fw-2.0.0.bin"),
            algorithm: "sha256"
        })
    );
}

#[test]
fn refuses_an_authorization_for_devices_running_another_version() {
    let mut w = world();
    let keys: Vec<&SigningKey> = w.rollback_keys.iter().collect();
    let auth = authorization(&keys, |a| a.installed = Some("2.0.5".into()));
    assert_eq!(
        decide(&mut w, Some(&auth), &request("pump-a/fw-2.0.0.bin", OLD), 3),
        Err(Error::AuthorizationInstalledMismatch {
            authorized: Version::new(2, 0, 5),
            running: Version::new(2, 1, 0)
        })
    );
}

#[test]
fn refuses_every_authorization_when_targets_delegates_no_rollback_role() {
    let mut r = RepoSim::new();
    r.add_target("targets", "pump-a/fw-2.0.0.bin", OLD, None);
    r.publish();
    let mut c = Client::new(r.initial_root());
    let set = c.refresh(&r.files, NOW).unwrap();
    let k = key("field-service", KeyKind::EcdsaP256);
    let auth = authorization(&[&k], |_| {});
    let err = verify_authorization(
        &set.targets().unwrap(),
        &auth,
        &request("pump-a/fw-2.0.0.bin", OLD),
        NOW,
        DEFAULT_MAX_VALIDITY,
    )
    .unwrap_err();
    assert_eq!(err, Error::NoRollbackRole);
}
