//! The vector `vectors/p256-threshold/` that hale-core's `tests/ecdsa_feature.rs` verifies with and
//! without its `ecdsa` feature (hale-core alone is the only build here without it: every other
//! crate turns it on). A repository whose `targets` role lists an ed25519 and a P-256 key with
//! threshold 2, so the threshold is met only when the P-256 signature counts; root, timestamp and
//! snapshot are ed25519-only. The committed files are exactly what this generator makes
//! (regenerate with `HALE_WRITE_VECTORS=1 cargo test -p hale-tests --test p256_threshold_vector`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use hale_repo::keys::KeyKind;
use hale_tests::{key, RepoSim};

fn vector() -> Vec<(&'static str, Vec<u8>)> {
    let mut sim = RepoSim::new();
    sim.targets.keys = vec![
        key("vector-targets-ed25519", KeyKind::Ed25519),
        key("vector-targets-p256", KeyKind::EcdsaP256),
    ];
    sim.targets.threshold = 2;
    sim.write_root();
    sim.add_target("targets", "pump-a/firmware.bin", b"firmware", None);
    sim.publish();
    vec![
        ("1.root.json", sim.root_bytes(1)),
        ("timestamp.json", sim.files["timestamp.json"].clone()),
        ("2.snapshot.json", sim.files["2.snapshot.json"].clone()),
        ("2.targets.json", sim.files["2.targets.json"].clone()),
    ]
}

#[test]
fn committed_p256_threshold_vector_matches_the_generator() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/p256-threshold");
    for (name, bytes) in vector() {
        if std::env::var_os("HALE_WRITE_VECTORS").is_some() {
            std::fs::write(dir.join(name), &bytes).unwrap();
        }
        let have = std::fs::read(dir.join(name)).unwrap_or_default();
        assert!(
            have == bytes,
            "vectors/p256-threshold/{name} is stale: regenerate it"
        );
    }
    // the targets metadata carries both signatures
    let t: serde_json::Value = serde_json::from_slice(&vector()[3].1).unwrap();
    assert_eq!(t["signatures"].as_array().unwrap().len(), 2);
}
