//! Role views over arbitrary metadata: `Envelope::parse`, then the document read as each of the
//! four roles; every target and delegation looked up; fuzzed path patterns matched against fuzzed
//! and fixed paths; hash and length checks on the input itself.
#![no_main]
use hale_core::json::Value;
use hale_core::metadata::{
    check_role_name, check_target_path, path_matches, peek_header, DelegatedRole, Envelope, Root,
    Snapshot, Targets, Timestamp,
};
use hale_core::{Name, Role};
use libfuzzer_sys::fuzz_target;

const PATHS: &[&str] = &[
    "pump-a/firmware.bin",
    "pump-a/2.1.0/fw.bin",
    "a",
    "",
    "x/y/z",
    "../etc/passwd",
    "*",
    "é/ü",
];

fuzz_target!(|data: &[u8]| {
    for ty in ["root", "timestamp", "snapshot", "targets"] {
        let _ = peek_header(data, ty);
    }
    let Ok(env) = Envelope::parse(data, "fuzz") else {
        return;
    };
    for _ in env.signatures.iter() {}

    if let Ok(root) = Root::parse(&env.signed) {
        for r in ["root", "timestamp", "snapshot", "targets", "nope"] {
            if let Ok(k) = root.role(r) {
                for id in k.keyids.iter() {
                    if let Some(s) = id.as_str() {
                        if let Ok(Some(Value::Object(o))) = k.keys.get_by(|x| *x == s) {
                            let _ = hale_core::crypto::PublicKey::from_tuf(&o);
                        }
                    }
                }
            }
        }
    }
    if let Ok(ts) = Timestamp::parse(&env.signed) {
        let _ = ts.snapshot.verify_bytes(data, Name::new("snapshot"));
    }
    if let Ok(snap) = Snapshot::parse(&env.signed) {
        for (k, _) in snap.meta.members() {
            let mut buf = [0u8; 160];
            if let Some(name) = k.decode_into(&mut buf) {
                let role = name.strip_suffix(".json").unwrap_or(name);
                let _ = check_role_name(role);
                if let Ok(Some(m)) = snap.role(role) {
                    let _ = m.verify_bytes(data, Name::new(role));
                }
            }
        }
        for r in Role::ALL {
            let _ = snap.role(r.as_str());
        }
    }
    let Ok(targets) = Targets::parse(&env.signed, Name::new("targets")) else {
        return;
    };

    // every listed target path, and a few fixed ones
    let mut paths: Vec<String> = PATHS.iter().map(|s| s.to_string()).collect();
    for (k, _) in targets.targets.members() {
        paths.push(k.to_string());
    }
    paths.truncate(24);
    for p in &paths {
        let _ = check_target_path(p);
        if let Ok(Some(tf)) = targets.target(p, Name::new("targets")) {
            let _ = tf.sha256();
            let _ = tf.verify_bytes(data, Name::new("t"));
            if let Ok(mut h) = tf.hasher(Name::new("t")) {
                let mut fed = 0u64;
                let mut refused = false;
                for chunk in data.chunks(7) {
                    fed += chunk.len() as u64;
                    if h.update(chunk).is_err() {
                        refused = true;
                        break;
                    }
                }
                // refused exactly when the bytes offered pass the listed length
                assert_eq!(
                    refused,
                    fed > tf.length,
                    "hasher: fed {fed}, listed {}",
                    tf.length
                );
                if !refused {
                    assert_eq!(h.received(), fed);
                    let _ = h.finish();
                }
            }
            if let Some(custom) = tf.custom {
                let _ = hale_core::policy::parse_firmware(Some(&custom));
            }
        }
    }

    let Some(del) = targets.delegations else {
        return;
    };
    if let Some(s) = del.succinct {
        let mut buf = [0u8; 256];
        for p in &paths {
            let h = hale_core::crypto::sha256(p.as_bytes());
            let bin = s.bin_of(&h);
            assert!(
                u64::from(bin) < (1u64 << s.bit_length),
                "bin_of out of range"
            );
            if let Some(name) = s.bin_name(bin, &mut buf) {
                assert!(name.len() >= s.suffix_len());
                let name = name.to_string();
                let _ = s.keys(del.keys, &name);
            }
        }
    }
    let Some(roles) = del.roles else { return };
    for v in roles.iter().take(16) {
        let Some(o) = v.as_object() else { continue };
        let Ok(r) = DelegatedRole::parse(&o, Name::new("delegations")) else {
            continue;
        };
        let _ = r.keys(del.keys);
        for p in &paths {
            let m = r.matches(p, &hale_core::crypto::sha256(p.as_bytes()));
            if let Some(patterns) = r.paths {
                // the first pattern that matches or cannot be told decides, as in `matches`
                let first = patterns
                    .iter()
                    .filter_map(|v| v.as_str())
                    .map(|pat| path_matches(&pat, p))
                    .find(|m| *m != Some(false))
                    .unwrap_or(Some(false));
                assert_eq!(
                    m, first,
                    "DelegatedRole::matches disagrees with path_matches"
                );
            }
        }
        // fuzzed patterns against fuzzed names: every string of the role entry as a target
        if let Some(patterns) = r.paths {
            for pat in patterns.iter().filter_map(|v| v.as_str()).take(8) {
                for t in patterns.iter().filter_map(|v| v.as_str()).take(8) {
                    let t = t.to_string();
                    let hit = path_matches(&pat, &t);
                    // a pattern without metacharacters matches exactly itself
                    let ps = pat.to_string();
                    if !ps.contains(['*', '?', '[', '\\']) && ps.len() <= 256 {
                        assert_eq!(hit, Some(ps == t), "literal pattern {ps:?} vs {t:?}");
                    } else if ps.len() > 256 {
                        assert_eq!(hit, None, "a pattern too long to match is not told");
                    }
                }
            }
        }
    }
});
