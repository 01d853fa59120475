//! The QEMU firmware's fixtures, deterministic (fixed-seed keys, ed25519 signatures, a fixed
//! "now"): the device's trusted root, a full metadata chain for one firmware update, the images
//! and a tampered targets file. Shared by `examples/qemu_fixtures.rs` (writes them) and
//! `tests/qemu_fixtures.rs` (fails when the committed files differ).
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use hale_repo::build::{self, Profile, RollbackAuthorization};
use hale_repo::{sign, KeyKind};
use hale_tests::{key, RepoSim, NOW};
use serde_json::json;
use sha2::{Digest, Sha256};

pub const TARGET: &str = "pump-a/firmware.bin";
/// The QEMU pump's device ID (what a rollback authorization must name).
pub const DEVICE_ID: &str = "pump-a-qemu-0001";

fn image(version: &str, len: usize) -> Vec<u8> {
    let mut v = format!("HALE-FW {version}\n").into_bytes();
    let mut x: u32 = 0x9E37_79B9;
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        v.push(x as u8);
    }
    v
}

/// A repository whose `targets` delegate to a two-of-two `rollback` role (ed25519 keys: the
/// firmware has no ECDSA) and list TARGET as 1.0.0, with authorizations to go back to it from
/// 2.0.0: one for this device and one for another.
fn rollback_fixtures(v1: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut sim = RepoSim::new();
    sim.targets.keys = vec![key("targets-ed25519", KeyKind::Ed25519)];
    sim.write_root();
    let rollback_keys = vec![
        key("field-service-ed25519", KeyKind::Ed25519),
        key("clinical-eng", KeyKind::Ed25519),
    ];
    sim.delegate("targets", "rollback", &[], false, rollback_keys.clone(), 2);
    let custom = json!({"hardware": [{"model": "pump-a", "revisions": ["r2"]}], "version": "1.0.0", "security_counter": 1, "min_bootloader": "1.0.0"});
    sim.add_target("targets", TARGET, v1, Some(custom));
    sim.publish();
    let authorization = |device: &str| {
        let a = RollbackAuthorization {
            devices: vec![device.into()],
            group: None,
            target: TARGET.into(),
            target_sha256: Sha256::digest(v1)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
            installed: Some("2.0.0".into()),
            reason: "INC-4711: occlusion alarm regression in 2.0.0".into(),
            issued: NOW - 3600,
            expires: NOW + 8 * 3600,
        };
        let refs: Vec<_> = rollback_keys.iter().collect();
        sign::sign_new(
            &build::rollback_authorization(Profile::Standard, &a).unwrap(),
            &refs,
        )
        .unwrap()
    };
    let tv = sim.targets.version;
    let sv = sim.snapshot.version;
    let target_file = sim.target_file_name(TARGET);
    vec![
        ("rollback-root.json".into(), sim.initial_root()),
        (
            "rollback-timestamp.json".into(),
            sim.files["timestamp.json"].clone(),
        ),
        (
            "rollback-snapshot.json".into(),
            sim.files[&format!("{sv}.snapshot.json")].clone(),
        ),
        (
            "rollback-targets.json".into(),
            sim.files[&format!("{tv}.targets.json")].clone(),
        ),
        (
            "rollback-authorization.json".into(),
            authorization(DEVICE_ID),
        ),
        (
            "rollback-authorization-other-device.json".into(),
            authorization("pump-a-qemu-0002"),
        ),
        (
            "rollback-names.txt".into(),
            format!(
                "{sv}.snapshot.json\n{tv}.targets.json\n{}\n{NOW}\n{DEVICE_ID}\n",
                target_file.trim_start_matches("targets/")
            )
            .into_bytes(),
        ),
    ]
}

/// (file name, bytes) of every fixture.
pub fn fixtures() -> Vec<(String, Vec<u8>)> {
    let mut sim = RepoSim::new();
    // ed25519 only on the device (the smallest verifier); a new root v1 with that key
    sim.targets.keys = vec![key("targets-ed25519", KeyKind::Ed25519)];
    sim.write_root();
    let v1 = image("1.0.0", 3000);
    let v2 = image("2.0.0", 4000);
    let custom = json!({"hardware": [{"model": "pump-a", "revisions": ["r2"]}], "version": "2.0.0", "security_counter": 2, "min_bootloader": "1.0.0"});
    sim.add_target("targets", TARGET, &v2, Some(custom));
    sim.publish();
    let tv = sim.targets.version;
    let sv = sim.snapshot.version;
    let targets = sim.files[&format!("{tv}.targets.json")].clone();
    let tampered = hale_tests::tamper_signed(&targets, |s| {
        s["targets"][TARGET]["length"] = json!(4001);
    });
    let target_file = sim.target_file_name(TARGET);
    let rollback = rollback_fixtures(&v1);
    let mut all: Vec<(String, Vec<u8>)> = vec![
        ("root.json".into(), sim.initial_root()),
        ("timestamp.json".into(), sim.files["timestamp.json"].clone()),
        (
            "snapshot.json".into(),
            sim.files[&format!("{sv}.snapshot.json")].clone(),
        ),
        ("targets.json".into(), targets),
        ("targets-tampered.json".into(), tampered),
        ("firmware-v1.bin".into(), v1),
        ("firmware-v2.bin".into(), v2),
        (
            "names.txt".into(),
            format!(
                "{sv}.snapshot.json\n{tv}.targets.json\n{}\n{NOW}\n",
                target_file.trim_start_matches("targets/")
            )
            .into_bytes(),
        ),
    ];
    all.extend(rollback);
    all
}
