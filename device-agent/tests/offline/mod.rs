//! Fixtures for rollback authorizations and offline bundles (shared by `rollback.rs` and
//! `bundle.rs`): a repository with a `rollback` role, authorizations signed by its keys, bundles
//! holding what a pump at root version 1 fetches.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeMap;

use device_agent::memflash::MemFlashError;
use device_agent::{AgentError, FirmwareStore, Outcome, RollbackHook, Transport};
use hale_repo::build::{self, Profile, RollbackAuthorization};
use hale_repo::keys::{KeyKind, SigningKey};
use hale_repo::sign;
use hale_tests::{key, RepoSim};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::common::*;

pub const DEVICE_ID: &str = "pump-a-000123";
pub const GROUP: &str = "ward-7";
pub const REASON: &str = "INC-4711: occlusion alarm regression in 1.0.0";

pub fn rollback_keys() -> Vec<SigningKey> {
    vec![
        key("field-service", KeyKind::EcdsaP256),
        key("clinical-eng", KeyKind::Ed25519),
    ]
}

/// `custom` for TARGET at `version`, for hardware revisions `revisions`, needing `bootloader`.
pub fn custom_for(version: &str, counter: u64, revisions: &[&str], bootloader: &str) -> Value {
    json!({"hardware": [{"model": "pump-a", "revisions": revisions}], "version": version,
           "security_counter": counter, "min_bootloader": bootloader})
}

/// A repository with a two-of-two `rollback` role that lists TARGET as `version` (the pump
/// runs 1.0.0 with security counter 1).
pub fn repo_offering(version: &str, counter: u64) -> RepoSim {
    repo_offering_custom(
        version,
        custom_for(version, counter, &["r1", "r2"], "1.0.0"),
    )
}

pub fn repo_offering_custom(version: &str, custom: Value) -> RepoSim {
    let mut sim = RepoSim::new();
    sim.delegate("targets", "rollback", &[], false, rollback_keys(), 2);
    sim.add_target("targets", TARGET, &image_bytes(version, 3000), Some(custom));
    sim.publish();
    sim
}

/// The authorization the tests start from: this device, TARGET at `version`, replacing 1.0.0.
pub fn authorization_for(version: &str) -> RollbackAuthorization {
    RollbackAuthorization {
        devices: vec![DEVICE_ID.into()],
        group: None,
        target: TARGET.into(),
        target_sha256: Sha256::digest(image_bytes(version, 3000))
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
        installed: Some("1.0.0".into()),
        reason: REASON.into(),
        issued: NOW - 3600,
        expires: NOW + 8 * 3600,
    }
}

pub fn signed(a: &RollbackAuthorization, keys: &[SigningKey]) -> Vec<u8> {
    let refs: Vec<&SigningKey> = keys.iter().collect();
    sign::sign_new(
        &build::rollback_authorization(Profile::Standard, a).unwrap(),
        &refs,
    )
    .unwrap()
}

/// Every file a pump at root version 1 fetches for TARGET (what a probe pump requested online),
/// plus `extra` entries.
pub fn bundle_for(sim: &RepoSim, extra: &[(&str, &[u8])]) -> Vec<u8> {
    let mut mem = provisioned(sim);
    let mut store = FirmwareStore::open(Flash::new(&mut mem), LAYOUT).unwrap();
    let mut probe = MapTransport::new(&sim.files);
    // whatever the probe decides, it has requested every file the workflow needs
    let _ = check(&mut store, &mut probe, &mut Pump::default());
    let mut entries: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for r in &probe.requests {
        let name = r.split('@').next().unwrap();
        if let Some(b) = sim.files.get(name) {
            entries.insert(name.to_string(), b.clone());
        }
    }
    // the image, even when the probe's policy stopped before downloading it
    let image = sim.target_file_name(TARGET);
    entries.insert(image.clone(), sim.files[&image].clone());
    for (n, d) in extra {
        entries.insert(n.to_string(), d.to_vec());
    }
    hale_repo::bundle::encode(&entries.into_iter().collect::<Vec<_>>()).unwrap()
}

pub type Err<E> = AgentError<E, MemFlashError>;

/// One update check over `t` with rollback hook `hook`.
pub fn check_with<T: Transport, R: RollbackHook>(
    store: &mut FirmwareStore<Flash<'_>>,
    t: &mut T,
    pump: &mut Pump,
    hook: &mut R,
) -> Result<Outcome, Err<T::Error>> {
    let mut bufs = Bufs::new();
    device_agent::check_for_update(store, &device(), t, pump, hook, NOW, bufs.ws())
}
