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

use hale_repo::KeyKind;
use hale_tests::{key, RepoSim, NOW};
use serde_json::json;

pub const TARGET: &str = "pump-a/firmware.bin";

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
    vec![
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
    ]
}
