//! Seed corpora and the fixture root for `fuzz/` (see fuzz/README.md), from a [`RepoSim`]
//! repository: deterministic (fixed key seeds, fixed "now"), so regenerating gives the same files.
//!
//! `cargo run -p hale-tests --example fuzz_seeds -- fuzz`
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::{Path, PathBuf};

use hale_repo::build;
use hale_repo::keys::KeyKind;
use hale_tests::{key, RepoSim};
use serde_json::{json, Value};
use sha2::Digest;

/// Flags of the trusted_set target (fuzz/fuzz_targets/trusted_set.rs).
const ROOT: u8 = 16;
const AS_BASELINE: u8 = 64;
const TWICE: u8 = 128;

fn signed(bytes: &[u8]) -> Value {
    let v: Value = serde_json::from_slice(bytes).unwrap();
    v["signed"].clone()
}

fn compact(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap()
}

fn pretty(v: &Value) -> Vec<u8> {
    serde_json::to_vec_pretty(v).unwrap()
}

/// Hashes and length are computed over the envelope the fuzz target builds, not this one: drop them.
fn strip_hashes(mut ts: Value) -> Value {
    if let Some(m) = ts["meta"]["snapshot.json"].as_object_mut() {
        m.remove("hashes");
        m.remove("length");
    }
    ts
}

fn join(flags: u8, parts: &[Vec<u8>]) -> Vec<u8> {
    let mut out = vec![flags];
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            out.push(0xFF);
        }
        out.extend_from_slice(p);
    }
    out
}

fn write(dir: &Path, target: &str, name: &str, bytes: &[u8]) {
    let d = dir.join("seeds").join(target);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join(name), bytes).unwrap();
}

fn firmware_custom(version: &str) -> Value {
    json!({
        "hardware": [{"model": "pump-a", "revisions": ["r2", "r3"]}, {"model": "pump-b", "revisions": ["r1"]}],
        "version": version,
        "security_counter": 4,
        "min_bootloader": "1.2.0",
        "sbom": format!("pump-a/{version}/sbom.spdx.json"),
    })
}

/// The fixture repository: every role signed by one ed25519 key the fuzz target can rebuild
/// (`fuzz-targets` for targets instead of the suite's ECDSA key, `fuzz-delegate` for delegations).
fn repo() -> RepoSim {
    let mut sim = RepoSim::new();
    sim.targets.keys = vec![key("fuzz-targets", KeyKind::Ed25519)];
    sim.write_root();
    sim.add_target("targets", "readme.txt", b"hello", None);
    sim.delegate(
        "targets",
        "firmware",
        &["pump-a/*", "pump-b/*/*.bin"],
        false,
        vec![key("fuzz-delegate", KeyKind::Ed25519)],
        1,
    );
    sim.add_target(
        "firmware",
        "pump-a/firmware.bin",
        b"firmware image",
        Some(firmware_custom("2.1.0")),
    );
    // the rollback role: no paths, it only signs rollback authorizations
    sim.delegate(
        "targets",
        "rollback",
        &[],
        false,
        vec![key("fuzz-delegate", KeyKind::Ed25519)],
        1,
    );
    sim.publish();
    sim
}

fn main() {
    let out: PathBuf = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("fuzz"));
    let sim = repo();
    let f = |name: &str| sim.files[name].clone();
    let latest = |role: &str| {
        let (_, b) = sim
            .files
            .iter()
            .filter(|(k, _)| {
                k.ends_with(&format!(".{role}.json"))
                    && k.split('.').next().unwrap().parse::<u64>().is_ok()
            })
            .max_by_key(|(k, _)| k.split('.').next().unwrap().parse::<u64>().unwrap())
            .unwrap();
        b.clone()
    };
    let root1 = f("1.root.json");
    let (ts, snap, targets, firmware) = (
        f("timestamp.json"),
        latest("snapshot"),
        latest("targets"),
        latest("firmware"),
    );

    std::fs::create_dir_all(out.join("fixtures")).unwrap();
    std::fs::write(out.join("fixtures/root.json"), &root1).unwrap();
    std::fs::write(out.join("fixtures/targets.json"), &targets).unwrap();

    // a second repository: succinct hash bins (TAP 15)
    let mut bins = repo();
    bins.delegate_bins("targets", 2, key("fuzz-delegate", KeyKind::Ed25519));
    let bin = build::bin_for("pump-a/firmware.bin", 2, "bin");
    bins.add_target(
        &bin,
        "pump-a/firmware.bin",
        b"firmware image",
        Some(firmware_custom("3.0.0")),
    );
    bins.publish();
    let bins_latest = |role: &str| {
        let (_, b) = bins
            .files
            .iter()
            .filter(|(k, _)| {
                k.ends_with(&format!(".{role}.json"))
                    && k.split('.').next().unwrap().parse::<u64>().is_ok()
            })
            .max_by_key(|(k, _)| k.split('.').next().unwrap().parse::<u64>().unwrap())
            .unwrap();
        b.clone()
    };
    let (bts, bsnap, btargets, bbin) = (
        bins.files["timestamp.json"].clone(),
        bins_latest("snapshot"),
        bins_latest("targets"),
        bins_latest(&bin),
    );

    // the next root, signed by the fixture root key (ROOT flag)
    let mut rotated = repo();
    rotated.rotate_root(|_| {});
    let root2 = rotated.files["2.root.json"].clone();

    // json_parse, canonical, metadata: whole documents
    let docs: Vec<(&str, Vec<u8>)> = vec![
        ("root.json", root1.clone()),
        ("timestamp.json", ts.clone()),
        ("snapshot.json", snap.clone()),
        ("targets.json", targets.clone()),
        ("firmware.json", firmware.clone()),
        ("bins-targets.json", btargets.clone()),
        ("bin.json", bbin.clone()),
        (
            "root-pretty.json",
            pretty(&serde_json::from_slice::<Value>(&root1).unwrap()),
        ),
    ];
    for (name, b) in &docs {
        write(&out, "metadata", name, b);
        write(&out, "json_parse", name, b);
    }
    let tricky: &[(&str, &str)] = &[
        (
            "escapes.json",
            r#"{"a\u0000b":"\"\\\/\b\f\n\r\t","\ud83d\ude00":"é\u00e9","z":[-0,1,-9223372036854775808,9223372036854775807]}"#,
        ),
        ("nested.json", "[[[[[[[[[[[[[[[[{\"a\":[{}]}]]]]]]]]]]]]]]]"),
        ("dup.json", r#"{"a":1,"\u0061":2}"#),
        ("scalars.json", " [ true , false , null , \"\" , 0 ] "),
    ];
    for (name, s) in tricky {
        write(&out, "json_parse", name, s.as_bytes());
        write(&out, "canonical", name, s.as_bytes());
    }
    for (name, b) in docs
        .iter()
        .filter(|(n, _)| matches!(*n, "root-pretty.json" | "targets.json" | "timestamp.json"))
    {
        write(&out, "canonical", name, b);
    }

    // trusted_set: flags, then signed bodies
    let body = |b: &[u8]| compact(&signed(b));
    let ts_body = compact(&strip_hashes(signed(&ts)));
    let chain = |path: &str| {
        vec![
            ts_body.clone(),
            body(&snap),
            body(&targets),
            path.as_bytes().to_vec(),
            body(&firmware),
        ]
    };
    write(
        &out,
        "trusted_set",
        "delegated",
        &join(0, &chain("pump-a/firmware.bin")),
    );
    write(
        &out,
        "trusted_set",
        "top-level",
        &join(0, &chain("readme.txt")),
    );
    write(
        &out,
        "trusted_set",
        "baseline-twice",
        &join(AS_BASELINE | TWICE, &chain("pump-a/firmware.bin")),
    );
    let mut with_root = vec![body(&root2)];
    with_root.extend(chain("pump-a/firmware.bin"));
    write(
        &out,
        "trusted_set",
        "root-rotation",
        &join(ROOT, &with_root),
    );
    write(
        &out,
        "trusted_set",
        "pretty",
        &join(
            0,
            &[
                pretty(&strip_hashes(signed(&ts))),
                pretty(&signed(&snap)),
                pretty(&signed(&targets)),
                b"pump-b/x/y.bin".to_vec(),
                pretty(&signed(&firmware)),
            ],
        ),
    );
    write(
        &out,
        "trusted_set",
        "succinct",
        &join(
            0,
            &[
                compact(&strip_hashes(signed(&bts))),
                body(&bsnap),
                body(&btargets),
                b"pump-a/firmware.bin".to_vec(),
                body(&bbin),
            ],
        ),
    );

    // policy: three versions, then a custom object
    let custom = |v: &str| compact(&firmware_custom(v));
    for (name, versions, c) in [
        ("newer", "1.0.0\n1.2.0\n2.1.0", custom("2.1.0")),
        (
            "prerelease",
            "2.1.0-rc.1\n2.1.0-rc.1.5\n2.1.0-alpha.beta+build.7",
            custom("2.1.0-rc.2"),
        ),
        (
            "numeric-pre",
            "1.0.0-2\n1.0.0-10\n1.0.0-a-1",
            custom("1.0.0"),
        ),
        (
            "no-custom",
            "0.0.1\n18446744073709551615.0.0\n1.2.3+x",
            b"null".to_vec(),
        ),
        (
            "min-fields",
            "1.0.0\n1.0.0\n1.0.0",
            br#"{"hardware":[{"model":"pump-a","revisions":["r2"]}],"version":"1.0.1"}"#.to_vec(),
        ),
    ] {
        let mut b = versions.as_bytes().to_vec();
        b.push(b'\n');
        b.extend_from_slice(&c);
        write(&out, "policy", name, &b);
    }

    // expires
    for (name, s) in [
        ("epoch", "1970-01-01T00:00:00Z"),
        ("fixture-now", "2030-01-01T00:00:00Z"),
        ("leap", "2024-02-29T23:59:59Z"),
        ("max", "9999-12-31T23:59:59Z"),
    ] {
        write(&out, "expires", name, s.as_bytes());
    }

    // key: key object, 0xFF, hex signature, 0xFF, message
    let msg = b"{\"_type\":\"timestamp\"}";
    for (name, k) in [
        ("ed25519", key("fuzz-key", KeyKind::Ed25519)),
        ("ecdsa-pem", key("fuzz-key", KeyKind::EcdsaP256)),
    ] {
        let sig = hex::encode(k.sign(msg));
        write(
            &out,
            "key",
            name,
            &join_plain(&[compact(&k.public()), sig.into_bytes(), msg.to_vec()]),
        );
    }
    // ECDSA as a hex SEC1 point
    {
        let k = key("fuzz-key", KeyKind::EcdsaP256);
        let pem = k.public()["keyval"]["public"].as_str().unwrap().to_string();
        let der = pem_body(&pem);
        // the SPKI of a P-256 key ends with the 65-byte uncompressed point
        let point = hex::encode(&der[der.len() - 65..]);
        let obj = json!({"keytype": "ecdsa-sha2-nistp256", "scheme": "ecdsa-sha2-nistp256", "keyval": {"public": point}});
        let sig = hex::encode(k.sign(msg));
        write(
            &out,
            "key",
            "ecdsa-hex",
            &join_plain(&[compact(&obj), sig.into_bytes(), msg.to_vec()]),
        );
    }
    // RSA-PSS (parsed with --features std; refused as unsupported otherwise)
    let rsa_root: Value = serde_json::from_slice(
        &std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/rsa-pss/root.json"),
        )
        .unwrap(),
    )
    .unwrap();
    if let Some((_, k)) = rsa_root["signed"]["keys"]
        .as_object()
        .unwrap()
        .iter()
        .find(|(_, k)| k["keytype"] == "rsa")
    {
        write(
            &out,
            "key",
            "rsa-pss",
            &join_plain(&[compact(k), b"00".to_vec(), msg.to_vec()]),
        );
    }
    // rollback: flags, authorization body, device id, group, target
    let auth = json!({
        "_type": "rollback-authorization",
        "spec_version": "1.0.34",
        "version": 1,
        "issued": "2029-12-31T20:00:00Z",
        "expires": "2030-01-01T08:00:00Z",
        "devices": ["pump-a-000123"],
        "group": "ward-7",
        "target": "pump-a/firmware.bin",
        "hashes": {"sha256": hex::encode(sha2::Sha256::digest(b"firmware image"))},
        "installed": "2.1.0",
        "reason": "INC-4711: occlusion alarm regression in 2.1.0",
    });
    write(
        &out,
        "rollback",
        "device",
        &join(
            0,
            &[
                compact(&auth),
                b"pump-a-000123".to_vec(),
                Vec::new(),
                b"pump-a/firmware.bin".to_vec(),
            ],
        ),
    );
    write(
        &out,
        "rollback",
        "group",
        &join(
            0,
            &[
                pretty(&auth),
                b"pump-b-9".to_vec(),
                b"ward-7".to_vec(),
                b"pump-a/firmware.bin".to_vec(),
            ],
        ),
    );

    // bundle: a whole offline update
    let image_name = sim.target_file_name("pump-a/firmware.bin");
    let auth_env = compact(&json!({"signatures": [], "signed": auth}));
    let entries: Vec<(&str, &[u8])> = vec![
        ("1.root.json", &root1),
        ("timestamp.json", &ts),
        ("2.snapshot.json", &snap),
        ("2.targets.json", &targets),
        ("1.firmware.json", &firmware),
        (image_name.as_str(), b"firmware image"),
        ("rollback-authorization.json", &auth_env),
    ];
    let mut buf = vec![0u8; hale_core::bundle::encoded_len(&entries)];
    write(
        &out,
        "bundle",
        "update",
        hale_core::bundle::write(&entries, &mut buf).unwrap(),
    );
    let mut small = vec![0u8; 64];
    write(
        &out,
        "bundle",
        "empty",
        hale_core::bundle::write(&[], &mut small).unwrap(),
    );

    install_fixture(&out);

    println!(
        "wrote {}/fixtures/root.json and {}/seeds/",
        out.display(),
        out.display()
    );
}

/// The install target's repository (fuzz/fuzz_targets/install.rs) before and after 3.0.0 is
/// published: `fixtures/install.bin` serves firmware 2.0.0 (counter 7, 3000 bytes) for pump-a r2,
/// `fixtures/install-v3.bin` 3.0.0 (counter 9, 3500 bytes); every role ed25519, so regenerating
/// gives the same bytes. Each file packs every served file as `name_len:u16 name len:u32 bytes`,
/// little-endian. Seeds: scripts of the target (its header documents the format).
fn install_fixture(out: &Path) {
    let mut sim = RepoSim::new();
    sim.targets.keys = vec![key("fuzz-targets", KeyKind::Ed25519)];
    sim.write_root();
    // the offline bundle of each release, for the bundle_install target's seeds
    let mut bundles = Vec::new();
    for (file, version, counter, len, seed) in [
        ("install.bin", "2.0.0", 7, 3000, 0x2545_f491u32),
        ("install-v3.bin", "3.0.0", 9, 3500, 0x0bad_5eed),
    ] {
        let image = lcg_image(len, seed);
        let custom = json!({"hardware": [{"model": "pump-a", "revisions": ["r2"]}],
                            "version": version, "security_counter": counter, "min_bootloader": "1.0.0"});
        sim.add_target("targets", "pump-a/firmware.bin", &image, Some(custom));
        sim.publish();
        std::fs::write(out.join("fixtures").join(file), pack(&sim.files)).unwrap();
        bundles.push(offline_bundle(&sim, &[]));
    }
    bundle_install_fixture(out, &mut sim, bundles);
    // flags (bit 0 cached flash, bit 1 cut, bit 2 two-sector checkpoints, bit 3 cut instead of
    // a sync), cut:u16, keep mode, then steps (0 check, 1 boot, 2 confirm, 3 reject, 4 publish
    // 3.0.0) and transport actions read as needed
    for (name, script) in [
        (
            "v2-then-v3-cached-cut",
            vec![
                11, 12, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 4, 0, 0, 0, 0, 0,
            ],
        ),
        ("honest", vec![0u8, 0, 0, 0, 0, 1, 2]),
        ("cached-cut-mid-download", vec![3, 40, 0, 3, 0, 1, 2]),
        (
            "cached-cut-at-a-sync",
            vec![11, 5, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 8],
        ),
        ("nor-cut-at-confirm", vec![2, 90, 0, 0, 0, 1, 2]),
        (
            "corrupt-block",
            vec![5, 0, 0, 0, 0, 0, 0, 0, 0, 6, 100, 0, 1, 2],
        ),
        ("reject", vec![1, 0, 0, 0, 0, 1, 3, 0]),
        // found by the fuzzer with the store's sync before a record removed: a checkpoint on the
        // medium without the slot bytes it claims
        (
            "sync-before-a-record",
            vec![
                91, 3, 146, 7, 100, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 100, 1, 0, 44, 178, 3, 191, 3,
                255, 240, 41, 64, 102, 255, 196, 44, 59,
            ],
        ),
    ] {
        write(out, "install", name, &script);
    }
    // with the sync after a record removed: v2 installed, 3.0.0 released, the power fails
    // instead of sync 9 of the check that stages 3.0.0 over 1.0.0; the record saying slot A is
    // being replaced is lost, the erase of slot A is kept: "slot A is Good but holds other bytes"
    let mut script = vec![11u8, 9, 0, 2, 0];
    script.extend([0; 16]);
    script.extend([1, 2, 4, 0]);
    for _ in 0..40 {
        script.extend([0, 120]);
    }
    write(out, "install", "sync-after-a-record", &script);
}

/// `len` bytes from a linear congruential generator seeded with `seed` (a fixture image).
fn lcg_image(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed;
    (0..len)
        .map(|_| {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (x >> 24) as u8
        })
        .collect()
}

/// Every served file of a repository packed as `name_len:u16 name len:u32 bytes`, little-endian.
fn pack(files: &std::collections::BTreeMap<String, Vec<u8>>) -> Vec<u8> {
    let mut packed = Vec::new();
    for (name, bytes) in files {
        packed.extend_from_slice(&u16::try_from(name.len()).unwrap().to_le_bytes());
        packed.extend_from_slice(name.as_bytes());
        packed.extend_from_slice(&u32::try_from(bytes.len()).unwrap().to_le_bytes());
        packed.extend_from_slice(bytes);
    }
    packed
}

/// The offline bundle a pump provisioned with root 1 needs for `pump-a/firmware.bin` from `sim`
/// as published now (what `hale-sign bundle` and device-agent's tests put in one: the timestamp,
/// the snapshot and targets it names, the image), plus `extra` entries; entries in name order.
/// The bundle_install target builds the same bundles from the packed fixtures.
fn offline_bundle(sim: &RepoSim, extra: &[(&str, &[u8])]) -> Vec<u8> {
    let mut entries = std::collections::BTreeMap::new();
    for name in [
        "timestamp.json".to_string(),
        format!("{}.snapshot.json", sim.snapshot.version),
        format!("{}.targets.json", sim.targets.version),
        sim.target_file_name("pump-a/firmware.bin"),
    ] {
        entries.insert(name.clone(), sim.files[&name].clone());
    }
    for (name, bytes) in extra {
        entries.insert(name.to_string(), bytes.to_vec());
    }
    hale_repo::bundle::encode(&entries.into_iter().collect::<Vec<_>>()).unwrap()
}

/// The bundle_install target's (fuzz/fuzz_targets/bundle_install.rs) third repository state:
/// the install repository after 3.0.0, taken back to 0.9.0 (counter 1, 2000 bytes) with a
/// `rollback` role (the `fuzz-delegate` key, threshold 1), and a rollback authorization it signs
/// for pump-a-000123 to go from 1.0.0 to 0.9.0 (issued an hour before the fixed "now", valid 8
/// hours). `fixtures/install-rollback.bin` packs every served file, and the authorization under
/// `rollback-authorization.json`. Seeds: the offline bundles of 2.0.0, 3.0.0 and 0.9.0 (with the
/// authorization), the 2.0.0 bundle with one image byte flipped, with its image cut short, and
/// cut off in the middle of the image (as an interrupted copy leaves it), and a bundle of every
/// file the repository serves with the authorization.
fn bundle_install_fixture(out: &Path, sim: &mut RepoSim, bundles: Vec<Vec<u8>>) {
    let image = lcg_image(2000, 0x0909_0909);
    sim.delegate(
        "targets",
        "rollback",
        &[],
        false,
        vec![key("fuzz-delegate", KeyKind::Ed25519)],
        1,
    );
    let custom = json!({"hardware": [{"model": "pump-a", "revisions": ["r2"]}],
                        "version": "0.9.0", "security_counter": 1, "min_bootloader": "1.0.0"});
    sim.add_target("targets", "pump-a/firmware.bin", &image, Some(custom));
    sim.publish();
    let authorization = hale_repo::sign::sign_new(
        &build::rollback_authorization(
            build::Profile::Standard,
            &build::RollbackAuthorization {
                devices: vec!["pump-a-000123".into()],
                group: None,
                target: "pump-a/firmware.bin".into(),
                target_sha256: hex::encode(sha2::Sha256::digest(&image)),
                installed: Some("1.0.0".into()),
                reason: "INC-4711: occlusion alarm regression in 1.0.0".into(),
                issued: hale_tests::NOW - 3600,
                expires: hale_tests::NOW + 8 * 3600,
            },
        )
        .unwrap(),
        &[&key("fuzz-delegate", KeyKind::Ed25519)],
    )
    .unwrap();
    let mut files = sim.files.clone();
    files.insert(
        hale_core::bundle::AUTHORIZATION.to_string(),
        authorization.clone(),
    );
    std::fs::write(out.join("fixtures/install-rollback.bin"), pack(&files)).unwrap();

    let rollback = offline_bundle(sim, &[(hale_core::bundle::AUTHORIZATION, &authorization)]);
    let [v2, v3] = <[Vec<u8>; 2]>::try_from(bundles).unwrap();
    // the 2.0.0 bundle with one byte of its image flipped, and with its image 500 bytes short
    let parsed = hale_core::bundle::Bundle::parse(&v2).unwrap();
    let with_image = |f: &dyn Fn(&mut Vec<u8>)| {
        let entries: Vec<(String, Vec<u8>)> = parsed
            .iter()
            .map(|(n, d)| {
                let mut d = d.to_vec();
                if n.starts_with("targets/") {
                    f(&mut d);
                }
                (n.to_string(), d)
            })
            .collect();
        hale_repo::bundle::encode(&entries).unwrap()
    };
    let tampered = with_image(&|d| d[1500] ^= 0x01);
    let short_image = with_image(&|d| d.truncate(2500));
    let truncated = v2[..v2.len() - 1000].to_vec();
    // every file the repository ever served (all releases' metadata and images) and the
    // authorization: splice material for the mutator, and room for it (libFuzzer's -max_len
    // defaults to the largest seed)
    let whole = hale_repo::bundle::encode(&files.into_iter().collect::<Vec<_>>()).unwrap();
    for (name, bytes) in [
        ("valid-v2", &v2),
        ("valid-v3", &v3),
        ("rollback-authorized", &rollback),
        ("tampered-image", &tampered),
        ("short-image", &short_image),
        ("truncated", &truncated),
        ("whole-repository", &whole),
    ] {
        write(out, "bundle_install", name, bytes);
    }
}

fn join_plain(parts: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            out.push(0xFF);
        }
        out.extend_from_slice(p);
    }
    out
}

/// Base64 body of a PEM block (tiny decoder: no extra dependency for one fixture).
fn pem_body(pem: &str) -> Vec<u8> {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let (mut acc, mut bits, mut out) = (0u32, 0u32, Vec::new());
    for c in pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .flat_map(|l| l.bytes())
    {
        let Some(v) = A.iter().position(|a| *a == c) else {
            continue;
        };
        acc = (acc << 6) | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}
