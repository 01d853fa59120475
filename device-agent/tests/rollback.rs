//! Authorized rollback through the agent: a pump goes back to an older image only with a
//! rollback authorization that hale-core verified against its trusted `targets`, and never
//! below its security counter. Every refusal asserts the exact error and that nothing persisted
//! changed (slots, running version, security counter, trusted metadata).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
// `drop(store)` is the power going off: it ends the borrow of the flash memory
#![allow(clippy::drop_non_drop)]

mod common;
mod offline;

use common::*;
use device_agent::rollback::signers;
use device_agent::{
    AgentError, Boot, DeviceInfo, FirmwareStore, NoRollback, Outcome, RollbackAuthorization,
    RollbackHook, Slot,
};
use hale_core::metadata::Targets;
use hale_core::policy::PolicyError;
use hale_core::rollback::{DEFAULT_MAX_VALIDITY, ISSUED_LEEWAY};
use hale_core::verify::KeyStatus;
use hale_core::{Error, Name, Role, Version};
use hale_tests::RepoSim;
use offline::*;

fn v(s: &str) -> Version {
    Version::parse(s).unwrap()
}

fn not_newer() -> Err<MapError> {
    AgentError::Policy(PolicyError::NotNewer {
        running: v("1.0.0"),
        offered: v("0.9.0"),
    })
}

/// The pump (running 1.0.0, counter 1) first checks without an authorization (refused; the
/// verified metadata is stored), then with `hook`: refused with `want`, and nothing changed.
fn assert_refused<R: RollbackHook>(sim: &RepoSim, hook: &mut R, want: Err<MapError>) {
    let mut mem = provisioned(sim);
    let mut store = FirmwareStore::open(Flash::new(&mut mem), LAYOUT).unwrap();
    let mut t = MapTransport::new(&sim.files);
    check_with(&mut store, &mut t, &mut Pump::default(), &mut NoRollback).unwrap_err();
    let before = persisted(&mut store);
    let err = check_with(&mut store, &mut t, &mut Pump::default(), hook).unwrap_err();
    assert_eq!(err, want);
    assert_eq!(
        persisted(&mut store),
        before,
        "slots or trusted metadata changed"
    );
    assert_eq!(store.slots().running().unwrap().version, v("1.0.0"));
    assert_eq!(store.slots().security_counter(), 1);
    drop(store);
    let mut store = FirmwareStore::open(Flash::new(&mut mem), LAYOUT).unwrap();
    assert_eq!(store.boot().unwrap(), Boot::Normal { slot: Slot::A });
}

/// The repository offers `version` at TARGET (an image of `len` bytes, security counter 1, for
/// revisions r1 and r2).
fn offer(sim: &mut RepoSim, version: &str, len: usize) {
    sim.add_target(
        "targets",
        TARGET,
        &image_bytes(version, len),
        Some(custom_for(version, 1, &["r1", "r2"], "1.0.0")),
    );
    sim.publish();
}

fn hook(bytes: &[u8]) -> RollbackAuthorization<'_> {
    RollbackAuthorization::new(bytes, DEVICE_ID, Some(GROUP))
}

fn trusted_targets<'a>(store: &mut FirmwareStore<Flash<'_>>, buf: &'a mut [u8]) -> Targets<'a> {
    let bytes = store.read_metadata(Role::Targets, buf).unwrap().unwrap();
    let env = hale_core::metadata::Envelope::parse(bytes, "targets").unwrap();
    Targets::parse(&env.signed, Name::new("targets")).unwrap()
}

#[test]
fn an_authorized_rollback_installs_and_never_lowers_the_security_counter() {
    let sim = repo_offering("0.9.0", 1);
    let auth = signed(&authorization_for("0.9.0"), &rollback_keys());
    let mut mem = provisioned(&sim);
    let mut store = FirmwareStore::open(Flash::new(&mut mem), LAYOUT).unwrap();
    let mut h = hook(&auth);
    assert_eq!(
        check_with(
            &mut store,
            &mut MapTransport::new(&sim.files),
            &mut Pump::default(),
            &mut h
        ),
        Ok(Outcome::Staged {
            version: v("0.9.0")
        })
    );
    // what verified, for the report
    let a = h.verified().unwrap();
    assert_eq!(a.reason.as_plain(), Some(REASON));
    assert_eq!(a.target.as_plain(), Some(TARGET));
    assert_eq!(a.issued, NOW - 3600);
    let mut buf = vec![0u8; 8192];
    let targets = trusted_targets(&mut store, &mut buf);
    let report = signers(&targets, &auth).unwrap();
    assert_eq!(report.valid(), 2);
    assert!(report.keys.iter().all(|(_, s)| *s == KeyStatus::Signed));

    assert_eq!(store.boot().unwrap(), Boot::Trial { slot: Slot::B });
    store.confirm().unwrap();
    assert_eq!(store.slots().running().unwrap().version, v("0.9.0"));
    assert_eq!(store.slots().security_counter(), 1);
}

#[test]
fn an_authorization_is_used_once() {
    // no `installed`: the authorization fits whatever the pump runs
    let mut a = authorization_for("0.9.0");
    a.installed = None;
    let auth = signed(&a, &rollback_keys());
    let issued = NOW - 3600;
    let mut sim = repo_offering("0.9.0", 1);
    let mut mem = provisioned(&sim);
    let mut store = FirmwareStore::open(Flash::new(&mut mem), LAYOUT).unwrap();
    assert_eq!(store.last_authorization(), 0);
    let mut t = MapTransport::new(&sim.files);
    assert_eq!(
        check_with(&mut store, &mut t, &mut Pump::default(), &mut hook(&auth)),
        Ok(Outcome::Staged {
            version: v("0.9.0")
        })
    );
    // spent with the record that staged the image
    assert_eq!(store.last_authorization(), issued);
    assert_eq!(store.boot().unwrap(), Boot::Trial { slot: Slot::B });
    store.confirm().unwrap();

    // the pump moves on to 1.1.0, while the repository offers 0.9.0 again
    offer(&mut sim, "1.1.0", 4000);
    let mut t = MapTransport::new(&sim.files);
    assert_eq!(
        check_with(&mut store, &mut t, &mut Pump::default(), &mut NoRollback),
        Ok(Outcome::Staged {
            version: v("1.1.0")
        })
    );
    assert_eq!(store.boot().unwrap(), Boot::Trial { slot: Slot::A });
    store.confirm().unwrap();
    offer(&mut sim, "0.9.0", 3000);

    // the same authorization replayed (still within its validity): refused, nothing changed,
    // and so after a power cycle
    let used = AgentError::Authorization(Error::AuthorizationUsed {
        issued,
        last: issued,
    });
    let mut t = MapTransport::new(&sim.files);
    check_with(&mut store, &mut t, &mut Pump::default(), &mut NoRollback).unwrap_err();
    let before = persisted(&mut store);
    assert_eq!(
        check_with(&mut store, &mut t, &mut Pump::default(), &mut hook(&auth)),
        Err(used.clone())
    );
    assert_eq!(persisted(&mut store), before, "something persisted changed");
    drop(store);
    let mut store = FirmwareStore::open(Flash::new(&mut mem), LAYOUT).unwrap();
    assert_eq!(store.boot().unwrap(), Boot::Normal { slot: Slot::A });
    assert_eq!(store.slots().running().unwrap().version, v("1.1.0"));
    let mut t = MapTransport::new(&sim.files);
    assert_eq!(
        check_with(&mut store, &mut t, &mut Pump::default(), &mut hook(&auth)),
        Err(used)
    );
    assert_eq!(persisted(&mut store), before, "something persisted changed");

    // an authorization issued later is new to it
    let mut later = a.clone();
    later.issued = NOW - 60;
    let later = signed(&later, &rollback_keys());
    assert_eq!(
        check_with(&mut store, &mut t, &mut Pump::default(), &mut hook(&later)),
        Ok(Outcome::Staged {
            version: v("0.9.0")
        })
    );
    assert_eq!(store.last_authorization(), NOW - 60);
}

#[test]
fn an_interrupted_authorized_download_resumes_and_a_power_cut_never_spends_the_authorization_alone()
{
    let sim = repo_offering("0.9.0", 1);
    let auth = signed(&authorization_for("0.9.0"), &rollback_keys());
    let issued = NOW - 3600;
    // the download breaks off after the first 1 KiB: nothing spent yet, and the same
    // authorization finishes it
    let mut mem = provisioned(&sim);
    let mut store = FirmwareStore::open(Flash::new(&mut mem), LAYOUT).unwrap();
    let mut t = MapTransport::new(&sim.files);
    t.fail_target_after = Some(1024);
    assert_eq!(
        check_with(&mut store, &mut t, &mut Pump::default(), &mut hook(&auth)),
        Err(AgentError::Transport {
            what: Name::new(TARGET),
            error: MapError::Cut
        })
    );
    assert_eq!(store.last_authorization(), 0);
    let mut t = MapTransport::new(&sim.files);
    assert_eq!(
        check_with(&mut store, &mut t, &mut Pump::default(), &mut hook(&auth)),
        Ok(Outcome::Staged {
            version: v("0.9.0")
        })
    );
    assert_eq!(store.last_authorization(), issued);

    // the power cut at every flash operation of the authorized install: after each, the
    // authorization is spent exactly when the image stands staged, and a retry with it finishes
    let mut cuts = 0;
    for n in 0.. {
        let mut mem = provisioned(&sim);
        let done = {
            let mut store =
                FirmwareStore::open(Flash::new(&mut mem).fail_after(n), LAYOUT).unwrap();
            let mut t = MapTransport::new(&sim.files);
            check_with(&mut store, &mut t, &mut Pump::default(), &mut hook(&auth)).is_ok()
                && !store.flash_mut().power_lost()
        };
        let mut store = FirmwareStore::open(Flash::new(&mut mem), LAYOUT).unwrap();
        let staged = store.slots().info(Slot::B).state == device_agent::SlotState::Pending;
        assert_eq!(
            store.last_authorization(),
            if staged { issued } else { 0 },
            "cut after {n} operations: slot B {:?}",
            store.slots().info(Slot::B).state
        );
        if done {
            assert!(staged);
            break;
        }
        cuts += 1;
        if !staged {
            let mut t = MapTransport::new(&sim.files);
            assert_eq!(
                check_with(&mut store, &mut t, &mut Pump::default(), &mut hook(&auth)),
                Ok(Outcome::Staged {
                    version: v("0.9.0")
                }),
                "retry after a cut at {n}"
            );
            assert_eq!(store.last_authorization(), issued);
        }
        assert_eq!(store.boot().unwrap(), Boot::Trial { slot: Slot::B });
    }
    assert!(cuts > 10, "only {cuts} cuts");
}

#[test]
fn the_image_a_device_was_rolled_back_from_is_not_installed_again() {
    let mut sim = repo_offering("0.9.0", 1);
    let auth = signed(&authorization_for("0.9.0"), &rollback_keys());
    let mut mem = provisioned(&sim);
    let mut store = FirmwareStore::open(Flash::new(&mut mem), LAYOUT).unwrap();
    let mut t = MapTransport::new(&sim.files);
    check_with(&mut store, &mut t, &mut Pump::default(), &mut hook(&auth)).unwrap();
    assert_eq!(store.boot().unwrap(), Boot::Trial { slot: Slot::B });
    store.confirm().unwrap();
    assert_eq!(store.slots().running().unwrap().version, v("0.9.0"));

    // the repository offers the release the technician took the pump back from: same bytes
    offer(&mut sim, "1.0.0", 5000);
    let slots = store.slots();
    let mut t = MapTransport::new(&sim.files);
    assert_eq!(
        check_with(&mut store, &mut t, &mut Pump::default(), &mut NoRollback),
        Err(AgentError::PreviouslyReverted {
            version: v("1.0.0")
        })
    );
    assert_eq!(store.slots(), slots, "slots changed");

    // a newer release installs as usual
    offer(&mut sim, "1.1.0", 4000);
    let mut t = MapTransport::new(&sim.files);
    assert_eq!(
        check_with(&mut store, &mut t, &mut Pump::default(), &mut NoRollback),
        Ok(Outcome::Staged {
            version: v("1.1.0")
        })
    );

    // 1.1.0 went into the slot that held 1.0.0, and fails its trial: back on 0.9.0. Neither
    // comes back, though no slot holds 1.0.0 any more (the repository withdrew 1.1.0 and
    // offers 1.0.0 again, then 1.1.0 again)
    assert_eq!(store.boot().unwrap(), Boot::Trial { slot: Slot::A });
    assert_eq!(
        store.reject().unwrap(),
        Boot::Reverted {
            slot: Slot::B,
            rejected: Slot::A
        }
    );
    assert_eq!(store.slots().running().unwrap().version, v("0.9.0"));
    for (version, len) in [("1.0.0", 5000), ("1.1.0", 4000)] {
        offer(&mut sim, version, len);
        let slots = store.slots();
        let mut t = MapTransport::new(&sim.files);
        assert_eq!(
            check_with(&mut store, &mut t, &mut Pump::default(), &mut NoRollback),
            Err(AgentError::PreviouslyReverted {
                version: v(version)
            })
        );
        assert_eq!(store.slots(), slots, "slots changed");
        assert_eq!(t.target_bytes, 0, "{version} was downloaded");
    }
    // and a restart remembers them
    drop(store);
    let mut store = FirmwareStore::open(Flash::new(&mut mem), LAYOUT).unwrap();
    offer(&mut sim, "1.0.0", 5000);
    let mut t = MapTransport::new(&sim.files);
    assert_eq!(
        check_with(&mut store, &mut t, &mut Pump::default(), &mut NoRollback),
        Err(AgentError::PreviouslyReverted {
            version: v("1.0.0")
        })
    );
}

#[test]
fn an_authorization_for_the_devices_group_is_accepted() {
    let sim = repo_offering("0.9.0", 1);
    let mut a = authorization_for("0.9.0");
    a.devices.clear();
    a.group = Some(GROUP.into());
    let auth = signed(&a, &rollback_keys());
    let mut mem = provisioned(&sim);
    let mut store = FirmwareStore::open(Flash::new(&mut mem), LAYOUT).unwrap();
    assert_eq!(
        check_with(
            &mut store,
            &mut MapTransport::new(&sim.files),
            &mut Pump::default(),
            &mut hook(&auth)
        ),
        Ok(Outcome::Staged {
            version: v("0.9.0")
        })
    );
}

#[test]
fn an_upgrade_never_consults_the_authorization() {
    // an unrelated (even unparsable) authorization neither blocks nor changes a normal update
    let sim = repo_offering("2.0.0", 2);
    let mut mem = provisioned(&sim);
    let mut store = FirmwareStore::open(Flash::new(&mut mem), LAYOUT).unwrap();
    let mut h = hook(b"not an authorization");
    assert_eq!(
        check_with(
            &mut store,
            &mut MapTransport::new(&sim.files),
            &mut Pump::default(),
            &mut h
        ),
        Ok(Outcome::Staged {
            version: v("2.0.0")
        })
    );
    assert!(h.verified().is_none());
}

#[test]
fn refuses_a_downgrade_without_authorization() {
    let sim = repo_offering("0.9.0", 1);
    assert_refused(&sim, &mut NoRollback, not_newer());
    assert_refused(&sim, &mut None::<RollbackAuthorization<'_>>, not_newer());
}

#[test]
fn refuses_an_authorization_for_another_device() {
    let sim = repo_offering("0.9.0", 1);
    let mut a = authorization_for("0.9.0");
    a.devices = vec!["pump-a-000999".into()];
    a.group = Some("ward-9".into());
    let auth = signed(&a, &rollback_keys());
    assert_refused(
        &sim,
        &mut hook(&auth),
        AgentError::Authorization(Error::NotForThisDevice {
            device: Name::new(DEVICE_ID),
        }),
    );
}

#[test]
fn refuses_an_expired_authorization() {
    let sim = repo_offering("0.9.0", 1);
    let mut a = authorization_for("0.9.0");
    a.issued = NOW - 10 * 3600;
    a.expires = NOW - 60;
    let auth = signed(&a, &rollback_keys());
    assert_refused(
        &sim,
        &mut hook(&auth),
        AgentError::Authorization(Error::Expired {
            role: Name::new("rollback-authorization"),
            expires: NOW - 60,
            now: NOW,
        }),
    );
}

#[test]
fn an_expired_authorization_is_not_good_again_with_the_clock_set_back() {
    // the pump polled at NOW (nothing held: the offered 0.9.0 is not newer); then its clock is
    // set back to when a technician's authorization, expired a minute before NOW, was good
    let sim = repo_offering("0.9.0", 1);
    let mut a = authorization_for("0.9.0");
    a.issued = NOW - 10 * 3600;
    a.expires = NOW - 60;
    let auth = signed(&a, &rollback_keys());
    let mut mem = provisioned(&sim);
    let mut store = FirmwareStore::open(Flash::new(&mut mem), LAYOUT).unwrap();
    let mut t = MapTransport::new(&sim.files);
    let err = check_with(&mut store, &mut t, &mut Pump::default(), &mut NoRollback).unwrap_err();
    assert_eq!(err, not_newer());
    assert_eq!(store.time_floor(), NOW);
    let before = persisted(&mut store);
    let mut bufs = Bufs::new();
    let err = device_agent::check_for_update(
        &mut store,
        &device(),
        &mut t,
        &mut Pump::default(),
        &mut hook(&auth),
        NOW - 3600,
        bufs.ws(),
    )
    .unwrap_err();
    assert_eq!(
        err,
        AgentError::Authorization(Error::Expired {
            role: Name::new("rollback-authorization"),
            expires: NOW - 60,
            now: NOW,
        })
    );
    assert_eq!(persisted(&mut store), before);
    assert_eq!(store.slots().running().unwrap().version, v("1.0.0"));
}

#[test]
fn refuses_an_authorization_valid_longer_than_the_device_allows() {
    let sim = repo_offering("0.9.0", 1);
    let auth = signed(&authorization_for("0.9.0"), &rollback_keys());
    // the default allows a day; this device is configured for one hour, the document says nine
    assert_refused(
        &sim,
        &mut hook(&auth).with_max_validity(3600),
        AgentError::Authorization(Error::AuthorizationTooLong {
            max: 3600,
            validity: 9 * 3600,
        }),
    );
    let mut a = authorization_for("0.9.0");
    a.expires = NOW + 2 * 86_400;
    let auth = signed(&a, &rollback_keys());
    assert_refused(
        &sim,
        &mut hook(&auth),
        AgentError::Authorization(Error::AuthorizationTooLong {
            max: DEFAULT_MAX_VALIDITY,
            validity: 3600 + 2 * 86_400,
        }),
    );
}

#[test]
fn refuses_an_authorization_dated_ahead_of_the_device() {
    let sim = repo_offering("0.9.0", 1);
    // a year ahead (valid a day), and 12 h ahead for 8 h (issued for tomorrow morning, valid
    // within a day of now: it was good from tonight, and once used the device's last one)
    for (issued_in, valid) in [(365 * 86_400, 8 * 3600), (12 * 3600, 8 * 3600)] {
        let mut a = authorization_for("0.9.0");
        a.issued = NOW + issued_in;
        a.expires = a.issued + valid;
        let auth = signed(&a, &rollback_keys());
        assert_refused(
            &sim,
            &mut hook(&auth),
            AgentError::Authorization(Error::AuthorizationAhead {
                ahead: issued_in,
                leeway: ISSUED_LEEWAY,
            }),
        );
    }
}

/// Clocks a little apart: one issued up to `ISSUED_LEEWAY` after the pump's time is good, and
/// one past it is refused (the pump's clock behind the signer's).
#[test]
fn an_authorization_issued_within_the_leeway_ahead_of_the_device_is_good() {
    let sim = repo_offering("0.9.0", 1);
    let mut a = authorization_for("0.9.0");
    a.issued = NOW + ISSUED_LEEWAY + 1;
    a.expires = a.issued + 8 * 3600;
    assert_refused(
        &sim,
        &mut hook(&signed(&a, &rollback_keys())),
        AgentError::Authorization(Error::AuthorizationAhead {
            ahead: ISSUED_LEEWAY + 1,
            leeway: ISSUED_LEEWAY,
        }),
    );
    a.issued = NOW + ISSUED_LEEWAY;
    a.expires = a.issued + 8 * 3600;
    let auth = signed(&a, &rollback_keys());
    let mut mem = provisioned(&sim);
    let mut store = FirmwareStore::open(Flash::new(&mut mem), LAYOUT).unwrap();
    let mut t = MapTransport::new(&sim.files);
    assert_eq!(
        check_with(&mut store, &mut t, &mut Pump::default(), &mut hook(&auth)),
        Ok(Outcome::Staged {
            version: v("0.9.0")
        })
    );
    assert_eq!(store.last_authorization(), NOW + ISSUED_LEEWAY);
}

#[test]
fn refuses_an_installed_version_that_is_not_a_string() {
    // signed, but `installed` is a number: read as absent, it would fit any running version
    let sim = repo_offering("0.9.0", 1);
    let mut body = hale_repo::build::rollback_authorization(
        hale_repo::build::Profile::Standard,
        &authorization_for("0.9.0"),
    )
    .unwrap();
    body["installed"] = serde_json::json!(100);
    let keys = rollback_keys();
    let refs: Vec<&hale_repo::keys::SigningKey> = keys.iter().collect();
    let auth = hale_repo::sign::sign_new(&body, &refs).unwrap();
    assert_refused(
        &sim,
        &mut hook(&auth),
        AgentError::Authorization(Error::Field {
            role: Name::new("rollback-authorization"),
            field: "installed",
        }),
    );
}

#[test]
fn refuses_a_rollback_below_the_security_counter_even_when_authorized() {
    let sim = repo_offering("0.9.0", 0);
    let auth = signed(&authorization_for("0.9.0"), &rollback_keys());
    assert_refused(
        &sim,
        &mut hook(&auth),
        AgentError::Policy(PolicyError::BelowSecurityCounter {
            floor: 1,
            offered: 0,
        }),
    );
}

#[test]
fn refuses_an_authorization_signed_below_threshold() {
    let sim = repo_offering("0.9.0", 1);
    let auth = signed(&authorization_for("0.9.0"), &rollback_keys()[..1]);
    assert_refused(
        &sim,
        &mut hook(&auth),
        AgentError::Authorization(Error::ThresholdNotMet {
            role: Name::new("rollback"),
            threshold: 2,
            valid: 1,
        }),
    );
}

#[test]
fn refuses_an_authorization_for_another_installed_version() {
    let sim = repo_offering("0.9.0", 1);
    let mut a = authorization_for("0.9.0");
    a.installed = Some("1.1.0".into());
    let auth = signed(&a, &rollback_keys());
    assert_refused(
        &sim,
        &mut hook(&auth),
        AgentError::Authorization(Error::AuthorizationInstalledMismatch {
            authorized: v("1.1.0"),
            running: v("1.0.0"),
        }),
    );
}

#[test]
fn refuses_an_authorization_for_other_image_bytes() {
    let sim = repo_offering("0.9.0", 1);
    // names the right path, but the sha256 of another build
    let auth = signed(&authorization_for("0.8.0"), &rollback_keys());
    assert_refused(
        &sim,
        &mut hook(&auth),
        AgentError::Authorization(Error::HashMismatch {
            what: Name::new(TARGET),
            algorithm: "sha256",
        }),
    );
}

#[test]
fn refuses_an_authorized_image_for_another_hardware_revision() {
    let sim = repo_offering_custom("0.9.0", custom_for("0.9.0", 1, &["r3"], "1.0.0"));
    let auth = signed(&authorization_for("0.9.0"), &rollback_keys());
    assert_refused(
        &sim,
        &mut hook(&auth),
        AgentError::Policy(PolicyError::WrongRevision {
            model: Name::new("pump-a"),
            revision: Name::new("r2"),
        }),
    );
}

#[test]
fn refuses_an_authorized_image_that_needs_a_newer_bootloader() {
    let sim = repo_offering_custom("0.9.0", custom_for("0.9.0", 1, &["r2"], "2.0.0"));
    let auth = signed(&authorization_for("0.9.0"), &rollback_keys());
    assert_refused(
        &sim,
        &mut hook(&auth),
        AgentError::Policy(PolicyError::BootloaderTooOld {
            required: v("2.0.0"),
            have: v("1.2.0"),
        }),
    );
}

#[test]
fn refuses_when_targets_delegates_to_no_rollback_role() {
    let mut sim = RepoSim::new();
    publish(&mut sim, "0.9.0", 1, 3000, "pump-a");
    let auth = signed(&authorization_for("0.9.0"), &rollback_keys());
    assert_refused(
        &sim,
        &mut hook(&auth),
        AgentError::Authorization(Error::NoRollbackRole),
    );
}

/// One check by an idle pump that looks up `target` for the rollback authorization `auth`:
/// what it returned, and whether the authorization verified.
fn check_rollback_to(
    store: &mut FirmwareStore<Flash<'_>>,
    t: &mut MapTransport,
    auth: &[u8],
    target: &str,
) -> (Result<Outcome, Err<MapError>>, bool) {
    let mut h = hook(auth);
    let mut bufs = Bufs::new();
    let device = device_agent::DeviceInfo {
        rollback_target: Some(target),
        ..device()
    };
    let r = device_agent::check_for_update(
        store,
        &device,
        t,
        &mut Pump::default(),
        &mut h,
        NOW,
        bufs.ws(),
    );
    (r, h.verified().is_some())
}

#[test]
fn an_authorizations_target_never_installs_as_an_upgrade() {
    // the shell looks up the target an authorization names before anything verified it: a
    // bundle carrying unsigned text naming an off-channel (beta) image must not install it
    const BETA: &str = "pump-a/beta/firmware.bin";
    let mut sim = repo_offering("0.9.0", 1);
    sim.add_target(
        "targets",
        BETA,
        &image_bytes("2.0.0", 3000),
        Some(custom_for("2.0.0", 1, &["r1", "r2"], "1.0.0")),
    );
    sim.publish();
    let unsigned = format!(r#"{{"signed":{{"target":"{BETA}"}}}}"#).into_bytes();
    let mut beta = authorization_for("2.0.0");
    beta.target = BETA.into();
    let signed_for_beta = signed(&beta, &rollback_keys());
    for auth in [unsigned, signed_for_beta] {
        let mut mem = provisioned(&sim);
        let mut store = FirmwareStore::open(Flash::new(&mut mem), LAYOUT).unwrap();
        let mut t = MapTransport::new(&sim.files);
        check_with(&mut store, &mut t, &mut Pump::default(), &mut NoRollback).unwrap_err();
        let before = persisted(&mut store);
        let (r, verified) = check_rollback_to(&mut store, &mut t, &auth, BETA);
        assert_eq!(
            r,
            Err(AgentError::NotARollback {
                target: Name::new(BETA),
                offered: v("2.0.0"),
                running: v("1.0.0"),
            })
        );
        assert!(!verified);
        assert_eq!(persisted(&mut store), before, "nothing staged or stored");
        assert_eq!(store.slots().running().unwrap().version, v("1.0.0"));
    }
}

#[test]
fn an_authorizations_target_at_the_running_version_is_not_a_rollback() {
    // the running version under other bytes (a rebuilt 1.0.0) is neither older nor "up to date"
    // for a technician who asked for a rollback: they are told it is no rollback
    const REBUILT: &str = "pump-a/rebuilt/firmware.bin";
    let mut sim = repo_offering("0.9.0", 1);
    let rebuilt = image_bytes("1.0.0-rebuilt", 3000);
    sim.add_target(
        "targets",
        REBUILT,
        &rebuilt,
        Some(custom_for("1.0.0", 1, &["r1", "r2"], "1.0.0")),
    );
    sim.publish();
    let mut auth = authorization_for("1.0.0");
    auth.target = REBUILT.into();
    auth.target_sha256 = hale_core::crypto::sha256(&rebuilt)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let auth = signed(&auth, &rollback_keys());
    let mut mem = provisioned(&sim);
    let mut store = FirmwareStore::open(Flash::new(&mut mem), LAYOUT).unwrap();
    let mut t = MapTransport::new(&sim.files);
    check_with(&mut store, &mut t, &mut Pump::default(), &mut NoRollback).unwrap_err();
    let before = persisted(&mut store);
    let (r, verified) = check_rollback_to(&mut store, &mut t, &auth, REBUILT);
    assert_eq!(
        r,
        Err(AgentError::NotARollback {
            target: Name::new(REBUILT),
            offered: v("1.0.0"),
            running: v("1.0.0"),
        })
    );
    assert!(!verified);
    assert_eq!(persisted(&mut store), before, "nothing staged or stored");
    assert_eq!(store.last_check(), None, "no channel conclusion recorded");
}

#[test]
fn a_rollback_to_another_path_is_looked_up_after_an_up_to_date_check() {
    // the channel lists what the pump runs; the technician's image sits under its own path, and
    // the authorization changes no repository metadata: the snapshot stays the one of the
    // pump's last check, which concluded "up to date" about the channel
    const OLD: &str = "pump-a/fw-0.9.0.bin";
    let mut sim = repo_offering("0.9.0", 1);
    sim.add_target(
        "targets",
        TARGET,
        &image_bytes("1.0.0", 5000),
        Some(custom_for("1.0.0", 1, &["r1", "r2"], "1.0.0")),
    );
    sim.add_target(
        "targets",
        OLD,
        &image_bytes("0.9.0", 3000),
        Some(custom_for("0.9.0", 1, &["r1", "r2"], "1.0.0")),
    );
    sim.publish();
    let mut a = authorization_for("0.9.0");
    a.target = OLD.into();
    let auth = signed(&a, &rollback_keys());
    let mut mem = provisioned(&sim);
    let mut store = FirmwareStore::open(Flash::new(&mut mem), LAYOUT).unwrap();
    assert_eq!(
        check_with(
            &mut store,
            &mut MapTransport::new(&sim.files),
            &mut Pump::default(),
            &mut NoRollback
        ),
        Ok(Outcome::UpToDate {
            running: v("1.0.0")
        })
    );
    let last = store.last_check();
    assert!(last.is_some(), "the up-to-date check is remembered");

    let rollback = DeviceInfo {
        rollback_target: Some(OLD),
        ..device()
    };
    // a check with the authorization's target looked up: its outcome and what it requested
    let check_rollback = |store: &mut FirmwareStore<Flash<'_>>| {
        let mut bufs = Bufs::new();
        let mut t = MapTransport::new(&sim.files);
        let outcome = device_agent::check_for_update(
            store,
            &rollback,
            &mut t,
            &mut Pump::default(),
            &mut hook(&auth),
            NOW,
            bufs.ws(),
        );
        (outcome, t.requests)
    };
    let (outcome, requests) = check_rollback(&mut store);
    assert_eq!(
        outcome,
        Ok(Outcome::Staged {
            version: v("0.9.0")
        })
    );
    assert!(
        requests.iter().any(|r| r.starts_with("targets/")),
        "the image was fetched: {requests:?}"
    );
    assert_eq!(store.boot().unwrap(), Boot::Trial { slot: Slot::B });
    store.confirm().unwrap();
    assert_eq!(store.slots().running().unwrap().version, v("0.9.0"));

    // with the rollback running, a check for the authorization's target concludes "already
    // running" without recording a channel conclusion about it
    assert_eq!(
        check_rollback(&mut store).0,
        Ok(Outcome::UpToDate {
            running: v("0.9.0")
        })
    );
    assert_eq!(store.last_check(), None);
}
