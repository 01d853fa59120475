//! `hale-server demo`: a throwaway repository that serves at once, with what it did on record.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

mod common;

use common::*;
use serde_json::Value;

#[test]
fn the_demo_serves_a_release_a_client_verifies_and_audits_it_as_a_publish() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("demo");
    let log = dir.path().join("demo.log");
    let d = data.to_str().unwrap();
    let mut s = Server::spawn(&["demo", "--data", d, "--listen", "127.0.0.1:0"], &log, &[]);

    let root = std::fs::read(data.join("demo-root.json")).unwrap();
    let view = client_update(&s.base, &root, &["hello.txt"]).unwrap();
    assert_eq!(
        (view.root, view.timestamp, view.snapshot, view.targets),
        (1, 1, 1, 1)
    );
    assert!(s.terminate().success());

    // the first release is a publish, not a commit whose record a crash lost
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(!log.contains("crash after commit"), "{log}");
    let records: Vec<Value> = with_store(&data, |store| {
        use hale_server::store::Store;
        store.audit_all().unwrap()
    })
    .iter()
    .map(|(_, b)| serde_json::from_slice(b).unwrap())
    .collect();
    let kinds: Vec<(&str, &str)> = records
        .iter()
        .map(|r| (r["kind"].as_str().unwrap(), r["actor"].as_str().unwrap()))
        .collect();
    assert_eq!(
        kinds,
        [("init", "cli"), ("publish", "demo"), ("token-add", "cli")]
    );
    let publish = &records[1]["detail"];
    assert_eq!(
        (
            &publish["root"],
            &publish["timestamp"],
            &publish["roles"]["targets"]
        ),
        (&Value::from(1), &Value::from(1), &Value::from(1))
    );
    let verify = run_bin(&["audit", "verify", "--data", d], &dir.path().join("none"));
    assert!(verify.status.success(), "{verify:?}");
    assert!(String::from_utf8_lossy(&verify.stdout).starts_with("audit chain OK: 3 records"));
}
