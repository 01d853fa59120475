//! python-tuf's ngclient (the reference client) refreshes and downloads from the running server
//! after a publish, and again after the server re-signed the timestamp on its own schedule;
//! hale-core's client does the same.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

#[test]
fn python_tuf_refreshes_after_publish_and_after_automatic_resign() {
    let f = Fixture::with_config(json!({
        "timestamp_lifetime_secs": 4, "timestamp_resign_before_secs": 2, "resign_check_secs": 1,
    }));
    let s = f.start();
    let fw = b"pump-a firmware 2.0.0".repeat(5000);
    let fw_b = b"pump-b firmware".to_vec();
    upload(&s, &f.token, &fw).unwrap();
    upload(&s, &f.token, &fw_b).unwrap();
    let d = f.delegation("pump-b", &["pump-b/*"]);
    let custom =
        json!({"version": "2.0.0", "hardware": [{"model": "pump-a", "revisions": ["r1", "r2"]}]});
    let t = f.targets(1, &[("pump-a/fw.bin", &fw, Some(custom))], Some(&d));
    let pb = f.delegated(1, &[("pump-b/fw.bin", &fw_b, None)]);
    let r = publish(&s, &f.token, None, &[("targets", &t), ("pump-b", &pb)]).unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));

    let root = f.dir.path().join("root.json");
    let work = f.dir.path().join("py");
    let names = ["pump-a/fw.bin", "pump-b/fw.bin"];
    let Some(first) = python_tuf(&s.base, &root, &names, &work) else {
        return;
    };
    let first = first.unwrap();
    assert_eq!(
        first["targets"]["pump-a/fw.bin"],
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&fw))
    );
    let v1 = client_update(&s.base, &f.root, &names).unwrap().timestamp;

    // wait for the scheduler to re-sign the timestamp
    wait_until(
        "an automatic timestamp re-sign",
        Duration::from_secs(15),
        || {
            get(&s.url("healthz")).json()["timestamp"]
                .as_u64()
                .unwrap_or(0)
                > v1
        },
    );
    let ts: serde_json::Value =
        serde_json::from_slice(&get(&s.url("timestamp.json")).body).unwrap();
    assert!(ts["signed"]["version"].as_u64().unwrap() > v1);
    python_tuf(&s.base, &root, &names, &work).unwrap().unwrap();
    assert!(client_update(&s.base, &f.root, &names).unwrap().timestamp > v1);
    let m = String::from_utf8(get(&s.url("metrics")).body).unwrap();
    assert!(!m.contains("hale_resigns_total 0\n"), "{m}");
}
