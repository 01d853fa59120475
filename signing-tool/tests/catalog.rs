//! Targets, delegations, hashed bins, publish and verify through the real binary.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::{publish_args, Env, PW_ENV};
use sha2::{Digest, Sha256};

/// `targets` delegates `pump-a/*` to `pump-a` (key `pump-a.pub`), terminating.
const DELEGATE_PUMP_A: [&str; 11] = [
    "delegate",
    "repo",
    "--from",
    "targets",
    "--to",
    "pump-a",
    "--key",
    "pump-a.pub",
    "--paths",
    "pump-a/*",
    "--terminating",
];

fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

#[test]
fn target_add_records_policy_fields_and_the_sbom_as_its_own_target() {
    let e = Env::new();
    e.published_repo();
    e.write("build/firmware.bin", b"pump-a firmware 2.1.0");
    e.write("build/sbom.spdx.json", br#"{"spdxVersion":"SPDX-2.3"}"#);
    // a policy hale-core cannot parse is refused before anything is staged
    let r = e.run(&[
        "target",
        "add",
        "repo",
        "--file",
        "build/firmware.bin",
        "--model",
        "pump-a",
        "--revisions",
        "r2",
        "--version",
        "2.1",
    ]);
    assert_eq!(r.code, 2);
    assert_eq!(
        r.stderr.trim_end(),
        "error: refusing the firmware policy: firmware policy field `version` missing or malformed"
    );
    assert!(!e.path("repo/staged/targets.json").exists());

    e.ok(&[
        "target",
        "add",
        "repo",
        "--file",
        "build/firmware.bin",
        "--name",
        "pump-a/2.1.0/firmware.bin",
        "--model",
        "pump-a",
        "--revisions",
        "r2,r3",
        "--model",
        "pump-a-mini",
        "--revisions",
        "r1",
        "--version",
        "2.1.0",
        "--security-counter",
        "4",
        "--min-bootloader",
        "1.2.0",
        "--sbom",
        "build/sbom.spdx.json",
    ]);
    let t = e.json("repo/staged/targets.json");
    assert_eq!(t["signed"]["version"], 2, "published v1 -> staged v2");
    assert_eq!(
        t["signatures"],
        serde_json::json!([]),
        "content changed: signatures cleared"
    );
    let fw = &t["signed"]["targets"]["pump-a/2.1.0/firmware.bin"];
    assert_eq!(
        fw["custom"],
        serde_json::json!({
            "hardware": [{"model": "pump-a", "revisions": ["r2", "r3"]}, {"model": "pump-a-mini", "revisions": ["r1"]}],
            "version": "2.1.0", "security_counter": 4, "min_bootloader": "1.2.0", "sbom": "pump-a/2.1.0/sbom.spdx.json"
        })
    );
    assert_eq!(fw["length"], 21);
    assert_eq!(fw["hashes"]["sha256"], sha(b"pump-a firmware 2.1.0"));
    let sbom = &t["signed"]["targets"]["pump-a/2.1.0/sbom.spdx.json"];
    assert_eq!(
        sbom["hashes"]["sha256"],
        sha(br#"{"spdxVersion":"SPDX-2.3"}"#)
    );
    // contents under their consistent names
    let fw_path = format!(
        "repo/repository/targets/pump-a/2.1.0/{}.firmware.bin",
        sha(b"pump-a firmware 2.1.0")
    );
    assert_eq!(
        std::fs::read(e.path(&fw_path)).unwrap(),
        b"pump-a firmware 2.1.0"
    );

    // signing, then changing the content again clears the signature but keeps the version
    e.sign("repo/staged/targets.json", "targets");
    e.write("build/other.bin", b"other");
    e.ok(&["target", "add", "repo", "--file", "build/other.bin"]);
    let t = e.json("repo/staged/targets.json");
    assert_eq!(t["signed"]["version"], 2);
    assert_eq!(t["signatures"], serde_json::json!([]));
    e.sign("repo/staged/targets.json", "targets");
    e.publish();
    let v = e.verify();
    assert_eq!(v.code, 0, "{}", v.stderr);
    assert!(
        v.stdout
            .contains("3 file(s), 52 bytes, 1 with firmware policy"),
        "{}",
        v.stdout
    );
}

#[test]
fn delegation_and_hashed_bins_route_targets_and_verify_against_their_delegators() {
    let e = Env::new();
    e.published_repo();
    let pa = e.key("pump-a", "ecdsa-p256");
    e.key("bins", "ed25519");
    e.ok(&DELEGATE_PUMP_A);
    let t = e.json("repo/staged/targets.json");
    assert_eq!(
        t["signed"]["delegations"]["roles"][0],
        serde_json::json!({"name": "pump-a", "keyids": [pa], "threshold": 1, "terminating": true, "paths": ["pump-a/*"]})
    );
    // a path outside the delegation is refused
    e.write("fw.bin", b"fw");
    let r = e.run(&[
        "target",
        "add",
        "repo",
        "--role",
        "pump-a",
        "--file",
        "fw.bin",
        "--name",
        "pump-b/fw.bin",
    ]);
    assert_eq!(r.code, 2);
    assert_eq!(
        r.stderr.trim_end(),
        "error: target \"pump-b/fw.bin\" is outside the paths delegated to role pump-a (clients would never look for it there)"
    );
    // pump-a's catalog goes into 8 succinct bins
    e.ok(&[
        "bins",
        "repo",
        "--from",
        "pump-a",
        "--bit-length",
        "3",
        "--key",
        "bins.pub",
    ]);
    for i in 0..8 {
        assert!(
            e.path(&format!("repo/staged/bin-{i}.json")).exists(),
            "bin-{i} staged even when empty"
        );
    }
    // a `bins` stopped after staging, before hale-repo.json was saved: the bins are read from
    // the metadata (routing below goes into them; before, `target add` ignored them)
    let cfg_path = e.path("repo/hale-repo.json");
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&cfg_path).unwrap()).unwrap();
    assert_eq!(
        cfg["bins"],
        serde_json::json!({"from": "pump-a", "bit_length": 3, "prefix": "bin"})
    );
    cfg.as_object_mut().unwrap().remove("bins");
    std::fs::write(&cfg_path, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
    let names: Vec<String> = (0..20).map(|i| format!("pump-a/fw-{i:02}.bin")).collect();
    for n in &names {
        e.write(
            &format!("src/{}", n.trim_start_matches("pump-a/")),
            n.as_bytes(),
        );
    }
    e.ok(&[
        "target",
        "add",
        "repo",
        "--role",
        "pump-a",
        "--from-dir",
        "src",
        "--name-prefix",
        "pump-a/",
    ]);
    for n in &names {
        let bin = hale_repo::build::bin_for(n, 3, "bin");
        let b = e.json(&format!("repo/staged/{bin}.json"));
        assert_eq!(b["signed"]["targets"][n]["length"], n.len(), "{n} in {bin}");
    }
    // the bins key signs every bin in one go; pump-a and targets signed by their keys
    let r = e.sign("repo", "bins");
    assert_eq!(r.stdout.lines().count(), 8, "{}", r.stdout);
    assert_eq!(e.run(&["status", "repo"]).code, 1);
    e.sign("repo", "pump-a");
    e.sign("repo", "targets");
    let s = e.run(&["status", "repo"]);
    assert_eq!(s.code, 0, "{}", s.stdout);
    assert!(
        s.stdout
            .contains("delegated by pump-a v1: threshold 1 — 1 valid — MET"),
        "{}",
        s.stdout
    );
    let p = e.publish();
    assert!(p.stdout.contains("9 delegated role(s)"), "{}", p.stdout);
    let v = e.verify();
    assert_eq!(v.code, 0, "{}", v.stderr);
    assert!(
        v.stdout.contains("delegated  9 role verification(s)"),
        "{}",
        v.stdout
    );
    assert!(v.stdout.contains("bin-0 v1 (by pump-a)"), "{}", v.stdout);
    assert!(v.stdout.contains("20 file(s)"), "{}", v.stdout);
    let snap = e.json("repo/repository/2.snapshot.json");
    assert_eq!(
        snap["signed"]["meta"].as_object().unwrap().len(),
        10,
        "targets, pump-a and 8 bins"
    );
    // the bins' prefix renews every bin: 8 new versions, signed by the bins key in one go
    let r = e.ok(&["renew", "repo", "--role", "bin"]);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 8, "{}", r.stdout);
    for (i, line) in lines.iter().enumerate() {
        assert!(
            line.starts_with(&format!("bin-{i} v2 staged: expires ")),
            "{line}"
        );
        let b = e.json(&format!("repo/staged/bin-{i}.json"));
        assert_eq!(b["signed"]["version"], 2, "bin-{i}");
    }
    assert_eq!(e.sign("repo", "bins").stdout.lines().count(), 8);
    e.publish();
    assert_eq!(e.verify().code, 0);

    // rotating by one bin's name changes the keys all bins share: every bin is staged again,
    // not only the one named
    e.key("bins-2", "ed25519");
    let r = e.ok(&[
        "rotate",
        "repo",
        "--role",
        "bin-3",
        "--add-key",
        "bins-2.pub",
    ]);
    let all: Vec<String> = (0..8).map(|i| format!("bin-{i} v3")).collect();
    assert!(
        r.stdout.contains(&format!(
            "{} staged (same content) to be signed by bin-3's keys as they are now",
            all.join(", ")
        )),
        "{}",
        r.stdout
    );
}

#[test]
fn verify_passes_on_the_published_repository_and_fails_after_one_target_byte_flips() {
    let e = Env::new();
    e.published_repo();
    e.write("fw.bin", b"firmware image");
    e.ok(&[
        "target",
        "add",
        "repo",
        "--file",
        "fw.bin",
        "--name",
        "pump-a/fw.bin",
    ]);
    e.sign("repo/staged/targets.json", "targets");
    e.publish();
    let v = e.verify();
    assert_eq!(v.code, 0, "{}", v.stderr);
    assert!(v.stdout.contains("repo/repository: OK"), "{}", v.stdout);

    let h = sha(b"firmware image");
    let path = e.path(&format!("repo/repository/targets/pump-a/{h}.fw.bin"));
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[3] ^= 0x01;
    std::fs::write(&path, bytes).unwrap();
    let v = e.verify();
    assert_eq!(v.code, 2);
    assert_eq!(
        v.stderr.trim_end(),
        format!(
            "error: verifying repo/repository: target pump-a/fw.bin (repo/repository/targets/pump-a/{h}.fw.bin): \
             pump-a/fw.bin: sha256 hash does not match"
        )
    );

    // expired metadata is the core's error too
    std::fs::write(&path, b"firmware image").unwrap();
    let v = e.run(&[
        "verify",
        "repo/repository",
        "--root",
        "repo/repository/1.root.json",
        "--now",
        "4102444800",
    ]);
    assert_eq!(v.code, 2);
    assert!(v.stderr.contains("root expired at"), "{}", v.stderr);
    let _ = PW_ENV;
}

#[test]
fn publish_rolls_back_when_hale_core_rejects_the_result() {
    let e = Env::new();
    e.published_repo();
    // rotate the targets key in root v2 without re-signing targets: the published targets v1 no
    // longer verifies under root v2, so the client workflow fails and publish restores everything
    e.key("targets-2", "ed25519");
    let r = e.ok(&[
        "rotate",
        "repo",
        "--role",
        "targets",
        "--add-key",
        "targets-2.pub",
        "--remove-key",
        "targets.pub",
    ]);
    // rotate stages targets v2 too (same content), for the new key to sign: publishing root v2
    // alone would leave the published targets v1 signed by a key the new root no longer lists
    assert!(
        r.stdout.contains(
            "targets v2 staged (same content) to be signed by targets's keys as they are now"
        ),
        "{}",
        r.stdout
    );
    e.sign("repo/staged/root.json", "root-a");
    e.sign("repo/staged/root.json", "root-b");
    let before = common::snapshot_tree(&e.path("repo/repository"));
    let r = e.run(&publish_args("repo"));
    assert_eq!(r.code, 2);
    assert_eq!(
        r.stderr.trim_end(),
        "error: refusing to publish repo: 1 threshold(s) not met: targets v2: 0/1 by root v2 \
         (repository unchanged; see `hale-sign status repo`)"
    );
    assert_eq!(common::snapshot_tree(&e.path("repo/repository")), before);

    // an engineer who throws the staged targets away: the threshold checks pass, the client
    // workflow over the result does not, and publish writes nothing
    std::fs::remove_file(e.path("repo/staged/targets.json")).unwrap();
    let r = e.run(&publish_args("repo"));
    assert_eq!(r.code, 2);
    assert_eq!(
        r.stderr.trim_end(),
        "error: refusing to publish repo: 1.targets.json: targets: 0 valid signatures from distinct authorized keys, \
         threshold is 1 (repository unchanged; staged files kept)"
    );
    assert_eq!(common::snapshot_tree(&e.path("repo/repository")), before);
    assert!(e.path("repo/staged/root.json").exists());

    // the way rotate leaves it: targets v2 signed by the new key, published with root v2
    e.ok(&["renew", "repo", "--role", "targets"]);
    e.sign("repo/staged/targets.json", "targets-2");
    e.publish();
}

#[test]
fn status_counts_expiring_hashed_bins_on_one_line_and_renews_them_by_prefix() {
    let e = Env::new();
    e.published_repo();
    // delegated roles (the bins) made with a policy of 3½ days
    let cfg = e.path("repo/hale-repo.json");
    let mut c: serde_json::Value = serde_json::from_slice(&std::fs::read(&cfg).unwrap()).unwrap();
    c["expires"]["delegated"] = serde_json::json!(3 * 86_400 + 43_200);
    std::fs::write(&cfg, serde_json::to_vec_pretty(&c).unwrap()).unwrap();
    e.key("bins", "ed25519");
    e.ok(&[
        "bins",
        "repo",
        "--from",
        "targets",
        "--bit-length",
        "2",
        "--key",
        "bins.pub",
    ]);
    e.sign("repo", "bins");
    e.sign("repo/staged/targets.json", "targets");
    e.publish();
    let first = e.json("repo/repository/1.bin-0.json")["signed"]["expires"]
        .as_str()
        .unwrap()
        .to_string();
    let st = e.ok(&["status", "repo"]);
    assert_eq!(
        st.stdout,
        format!(
            "4 of 4 published hashed bins bin-* expire within 14 days, the first at {first} (in 3 \
             days): devices refuse the targets they hold after that\n\
             to renew: `hale-sign renew repo --role bin`, then sign, publish and push\n\
             repo: nothing staged\n"
        )
    );
    // the command it names works
    let r = e.ok(&["renew", "repo", "--role", "bin"]);
    assert_eq!(r.stdout.lines().count(), 4, "{}", r.stdout);
    assert!(
        r.stdout.lines().all(|l| l.starts_with("bin-")),
        "{}",
        r.stdout
    );
}

/// `bins` moves the targets its delegator lists into their bins: clients look in the delegator
/// before its delegations, so an entry left there answered for its name forever, and a rebuilt
/// image added under the same name (routed into its bin) never reached a device (found by review,
/// 2026-11-24). A catalog binned before still lists some in the delegator: `target add` of such a
/// name moves it out, and keeps the firmware-policy guard on the entry devices find now.
#[test]
fn hashed_bins_take_the_targets_their_delegator_listed_so_a_new_image_is_the_one_found() {
    let e = Env::new();
    e.published_repo();
    e.key("bins", "ed25519");
    let name = "pump-a/2.1.0/firmware.bin";
    let policy = [
        "--model",
        "pump-a",
        "--revisions",
        "r2",
        "--version",
        "2.1.0",
    ];
    let add = |file: &str, with_policy: bool| {
        let mut args = vec!["target", "add", "repo", "--file", file, "--name", name];
        if with_policy {
            args.extend(policy);
        }
        e.run(&args)
    };
    e.write("fw-1.bin", b"first build");
    assert_eq!(add("fw-1.bin", true).code, 0);
    e.sign("repo/staged/targets.json", "targets");
    e.publish();
    e.ok(&[
        "bins",
        "repo",
        "--from",
        "targets",
        "--bit-length",
        "2",
        "--key",
        "bins.pub",
    ]);
    let bin = hale_repo::build::bin_for(name, 2, "bin");
    let t = e.json("repo/staged/targets.json");
    assert_eq!(t["signed"]["targets"], serde_json::json!({}));
    let b = e.json(&format!("repo/staged/{bin}.json"));
    assert_eq!(
        b["signed"]["targets"][name]["hashes"]["sha256"],
        sha(b"first build")
    );
    assert_eq!(b["signed"]["targets"][name]["custom"]["version"], "2.1.0");

    // a rebuilt image under the same name goes into the bin, the one entry for the name
    e.write("fw-2.bin", b"second build");
    assert_eq!(add("fw-2.bin", true).code, 0);
    let b = e.json(&format!("repo/staged/{bin}.json"));
    assert_eq!(
        b["signed"]["targets"][name]["hashes"]["sha256"],
        sha(b"second build")
    );
    e.sign("repo", "bins");
    e.sign("repo/staged/targets.json", "targets");
    e.publish();
    let v = e.verify();
    assert_eq!(v.code, 0, "{}", v.stderr);
    let published = e.json("repo/repository/3.targets.json");
    assert_eq!(published["signed"]["targets"], serde_json::json!({}));

    // a catalog binned before: the delegator still lists the name itself
    let staged = e.path("repo/staged/targets.json");
    let mut t = e.json("repo/repository/3.targets.json");
    t["signed"]["version"] = 4.into();
    t["signed"]["targets"][name] = b["signed"]["targets"][name].clone();
    t["signatures"] = serde_json::json!([]);
    std::fs::write(&staged, serde_json::to_vec(&t).unwrap()).unwrap();
    // without a policy: refused, on the entry devices find now (the delegator's)
    e.write("fw-3.bin", b"third build");
    let r = add("fw-3.bin", false);
    assert_eq!(r.code, 2);
    assert_eq!(
        r.stderr.trim_end(),
        format!(
            "error: target \"{name}\" in targets has a firmware policy ({}); the new entry has \
             none: give its --version, --model and --revisions (and --security-counter) again",
            b["signed"]["targets"][name]["custom"]
        )
    );
    assert_eq!(e.json("repo/staged/targets.json"), t, "nothing staged");
    // with one: moved out of the delegator, into the bin
    let r = add("fw-3.bin", true);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains(&format!(
            "note: target {name} was listed in targets itself, where clients find it before its \
             bin: removed there (the new entry goes into {bin})"
        )),
        "{}",
        r.stderr
    );
    let t = e.json("repo/staged/targets.json");
    assert_eq!(t["signed"]["targets"], serde_json::json!({}));
    assert_eq!(t["signed"]["version"], 4);
    let b = e.json(&format!("repo/staged/{bin}.json"));
    assert_eq!(
        b["signed"]["targets"][name]["hashes"]["sha256"],
        sha(b"third build")
    );
}

/// `delegate --to` refuses a top-level role's name and a name that differs from a role's only in
/// case: on a signer's Mac `staged/Root.json` is `staged/root.json` (hale-server refuses both
/// too). Nothing is staged (found by review, 2026-11-24; fails on the old code).
#[test]
fn delegate_refuses_a_name_a_case_insensitive_file_system_would_confuse() {
    let e = Env::new();
    e.published_repo();
    e.key("pump-a", "ed25519");
    let delegate = |to: &str| {
        e.run(&[
            "delegate",
            "repo",
            "--from",
            "targets",
            "--to",
            to,
            "--key",
            "pump-a.pub",
            "--paths",
            "pump-a/*",
        ])
    };
    assert_eq!(delegate("pump-a").code, 0);
    let staged = common::snapshot_tree(&e.path("repo/staged"));
    for (to, error) in [
        (
            "root",
            "error: --to root: a top-level role cannot be delegated".to_string(),
        ),
        (
            "Root",
            "error: --to Root: differs from the role root only in case: a case-insensitive file \
             system would keep both in one file"
                .to_string(),
        ),
        (
            "Pump-A",
            "error: --to Pump-A: differs from the role pump-a only in case: a case-insensitive \
             file system would keep both in one file"
                .to_string(),
        ),
    ] {
        let r = delegate(to);
        assert_eq!(r.code, 2, "{to}");
        assert_eq!(r.stderr.trim_end(), error);
        assert_eq!(
            common::snapshot_tree(&e.path("repo/staged")),
            staged,
            "{to}"
        );
    }
}

/// A staged targets that only swaps two delegations hands a path to another key (devices take
/// the first delegation that matches: the catalog's `*/*` ahead of a terminating `pump-a/*` lets
/// the catalog's key sign pump-a's firmware). `sign` shows that as a change of who may sign; it
/// called it "no change but the version (a renewal)" (review: the reorder was signed and
/// published, and a catalog image reached pump-a's devices).
#[test]
fn sign_shows_a_new_search_order_of_delegations_as_a_trust_change() {
    let e = Env::new();
    e.published_repo();
    e.key("pump-a", "ed25519");
    e.key("catalog", "ed25519");
    e.ok(&DELEGATE_PUMP_A);
    e.ok(&[
        "delegate",
        "repo",
        "--from",
        "targets",
        "--to",
        "catalog",
        "--key",
        "catalog.pub",
        "--paths",
        "*/*",
    ]);
    for (file, key) in [
        ("targets", "targets"),
        ("pump-a", "pump-a"),
        ("catalog", "catalog"),
    ] {
        e.sign(&format!("repo/staged/{file}.json"), key);
    }
    e.publish();
    // someone who can write the staged files swaps the two delegations
    let published = e.json("repo/repository/2.targets.json");
    let mut signed = published["signed"].clone();
    signed["delegations"]["roles"]
        .as_array_mut()
        .unwrap()
        .swap(0, 1);
    signed["version"] = serde_json::json!(3);
    let doc = serde_json::json!({"signatures": [], "signed": signed});
    e.write(
        "repo/staged/targets.json",
        &serde_json::to_vec(&doc).unwrap(),
    );
    let r = e.sign("repo/staged/targets.json", "targets");
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("delegations searched in a NEW ORDER: catalog, pump-a (was pump-a, catalog)"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("renewal"), "{}", r.stderr);
}
