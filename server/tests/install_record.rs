//! A device report carrying an `install_record` (an offline install or an authorized rollback the
//! pump verified): stored with the device's record, audited in an entry of its own that names the
//! rollback-role keys that signed, and the audit chain still verifies. Oversize or malformed
//! records are refused with the exact error, and nothing of them is stored or audited.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::*;
use serde_json::{json, Value};

const DEVICE: &str = "pump-a-000123";
const SIGNERS: [&str; 2] = [
    "1f0c2d9e8b7a6f5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e",
    "9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b",
];
const REASON: &str = "INC-4711: occlusion alarm regression in 1.0.0";

fn rollback_report() -> Value {
    json!({
        "slots": [
            {"name": "a", "version": "1.0.0", "state": "inactive"},
            {"name": "b", "version": "0.9.0", "state": "active"}
        ],
        "last_result": {"result": "installed", "target": "pump-a/firmware.bin", "version": "0.9.0"},
        "install_record": {
            "kind": "rollback",
            "target": "pump-a/firmware.bin",
            "version": "0.9.0",
            "reason": REASON,
            "issued": "2030-01-01T00:00:00Z",
            "signers": SIGNERS,
        }
    })
}

fn post(s: &Server, id: &str, body: &Value) -> Resp {
    request(
        "POST",
        &s.url(&format!("api/v1/devices/{id}/report")),
        &[("Content-Type", "application/json")],
        Some(&serde_json::to_vec(body).unwrap()),
    )
    .unwrap()
}

fn devices(s: &Server) -> Vec<Value> {
    get(&s.url("api/v1/devices")).json()["devices"]
        .as_array()
        .unwrap()
        .clone()
}

/// The install records a device's history keeps, oldest first.
fn history_records(device: &Value) -> Vec<&Value> {
    device["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| &h["record"])
        .collect()
}

/// `rollback_report()` with `f` applied to its install record.
fn with_record(f: impl FnOnce(&mut Value)) -> Value {
    let mut r = rollback_report();
    f(&mut r["install_record"]);
    r
}

fn audit_records(f: &Fixture) -> Vec<Value> {
    use hale_server::store::Store;
    with_store(&f.data, |store| store.audit_all().unwrap())
        .iter()
        .map(|(_, b)| serde_json::from_slice(b).unwrap())
        .collect()
}

#[test]
fn a_rollback_record_is_stored_with_the_device_and_audited_with_its_signers() {
    let f = Fixture::new();
    let mut s = f.start();

    let r = post(&s, DEVICE, &rollback_report());
    assert_eq!(r.status, 204, "{}", String::from_utf8_lossy(&r.body));

    let devs = devices(&s);
    assert_eq!(devs.len(), 1);
    assert_eq!(devs[0]["device"], DEVICE);
    let rec = &devs[0]["report"]["install_record"];
    assert_eq!(rec, &rollback_report()["install_record"]);

    // refused records: exact error, nothing stored (the device's record is still the rollback)
    let too_long = "field too long or has control or format characters";
    let refusals: Vec<(&str, Value, String)> = vec![
        (
            "17 signers",
            with_record(|r| r["signers"] = json!(vec!["ab"; 17])),
            format!("install_record: {too_long}"),
        ),
        (
            "a signer of 129 bytes",
            with_record(|r| r["signers"] = json!(["a".repeat(129)])),
            format!("install_record: {too_long}"),
        ),
        (
            "an empty signer",
            with_record(|r| r["signers"] = json!([""])),
            format!("install_record: {too_long}"),
        ),
        (
            "a reason of 513 bytes",
            with_record(|r| r["reason"] = json!("r".repeat(513))),
            format!("install_record: {too_long}"),
        ),
        (
            "a control character in the target",
            with_record(|r| r["target"] = json!("pump-a/firmware.bin\u{1b}[2J")),
            format!("install_record: {too_long}"),
        ),
        (
            // (the longest version a device can hold, 95 bytes, is taken)
            "a version of 96 bytes",
            with_record(|r| r["version"] = json!("9".repeat(96))),
            format!("install_record: {too_long}"),
        ),
        (
            "an issue time of 33 bytes",
            with_record(|r| r["issued"] = json!("2".repeat(33))),
            format!("install_record: {too_long}"),
        ),
    ];
    for (what, body, message) in &refusals {
        for id in [DEVICE, "pump-a-000999"] {
            let r = post(&s, id, body);
            assert_eq!(
                (r.status, r.json()),
                (
                    400,
                    json!({"error": "bad_report", "message": message.as_str()})
                ),
                "{what}"
            );
        }
    }
    // malformed (serde): unknown kind, unknown field, missing version, signers not a list
    let malformed = [
        (
            with_record(|r| r["kind"] = json!("sideload")),
            "unknown variant `sideload`, expected one of `offline`, `rollback`, `damaged`",
        ),
        (
            with_record(|r| r["approved_by"] = json!("nobody")),
            "unknown field `approved_by`",
        ),
        (
            with_record(|r| {
                r.as_object_mut().unwrap().remove("version");
            }),
            "missing field `version`",
        ),
        (
            with_record(|r| r["signers"] = json!("ab")),
            "invalid type: string \"ab\", expected a sequence",
        ),
    ];
    for (body, message) in &malformed {
        for id in [DEVICE, "pump-a-000999"] {
            let r = post(&s, id, body);
            let v = r.json();
            assert_eq!((r.status, v["error"].as_str()), (400, Some("bad_report")));
            let m = v["message"].as_str().unwrap();
            assert!(m.starts_with(message), "{m:?} for {body}");
        }
    }
    assert_eq!(devices(&s), devs, "a refused report changed the inventory");

    assert!(s.terminate().success());
    let data = f.data.to_str().unwrap();
    let out = run_bin(&["audit", "verify", "--data", data], &f.pass_file);
    let recs = audit_records(&f);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().next(),
        Some(
            format!(
                "audit chain OK: {} records, head {}",
                recs.len(),
                recs.last().unwrap()["hash"].as_str().unwrap()
            )
            .as_str()
        ),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // exactly one report and one install record were audited, in that order, none refused
    let tail: Vec<&str> = recs
        .iter()
        .map(|r| r["kind"].as_str().unwrap())
        .filter(|k| *k == "report" || *k == "install-record")
        .collect();
    assert_eq!(tail, ["report", "install-record"]);
    let last = recs.last().unwrap();
    assert_eq!(last["kind"], "install-record");
    assert_eq!(last["actor"], DEVICE);
    assert_eq!(
        last["detail"],
        json!({"device": DEVICE, "record": rollback_report()["install_record"]})
    );
    assert_eq!(last["detail"]["record"]["signers"], json!(SIGNERS));
    assert!(!recs.iter().any(|r| r.to_string().contains("pump-a-000999")));
}

#[test]
fn an_offline_record_without_an_authorization_is_audited_without_signers() {
    let f = Fixture::new();
    let mut s = f.start();
    let body = json!({
        "slots": [{"name": "a", "version": "2.0.0", "state": "active"}],
        "install_record": {"kind": "offline", "target": "pump-a/firmware.bin", "version": "2.0.0"}
    });
    assert_eq!(post(&s, DEVICE, &body).status, 204);
    assert_eq!(
        devices(&s)[0]["report"]["install_record"],
        json!({"kind": "offline", "target": "pump-a/firmware.bin", "version": "2.0.0",
               "reason": null, "issued": null, "signers": []})
    );
    assert!(s.terminate().success());
    let recs = audit_records(&f);
    let last = recs.last().unwrap();
    assert_eq!(last["kind"], "install-record");
    assert_eq!(last["detail"]["record"]["kind"], "offline");
    assert_eq!(last["detail"]["record"]["signers"], json!([]));
}

/// A pump that found an image damaged at a boot reports it as a record of kind `damaged`
/// (not an install: the image did not run), kept in the device's history and audited, even
/// when the report's result is the reinstall that followed.
#[test]
fn a_damaged_image_found_at_boot_is_kept_and_audited_as_its_own_record() {
    let f = Fixture::new();
    let mut s = f.start();
    let reason =
        "2.0.0 in slot b was damaged (its bytes no longer match its record): running 1.0.0";
    let body = json!({
        "slots": [
            {"name": "a", "version": "1.0.0", "state": "inactive"},
            {"name": "b", "version": "2.0.0", "state": "active"}
        ],
        "last_result": {"result": "installed", "target": "pump-a/firmware.bin", "version": "2.0.0"},
        "install_record": {"kind": "damaged", "target": "pump-a/firmware.bin", "version": "2.0.0",
                           "reason": reason, "outcome": "reverted", "staged": "2030-01-01T00:05:00Z"}
    });
    assert_eq!(post(&s, DEVICE, &body).status, 204);
    let dev = &devices(&s)[0];
    let history = history_records(dev);
    assert_eq!(history.len(), 1, "{dev}");
    assert_eq!(history[0]["kind"], "damaged");
    assert_eq!(history[0]["outcome"], "reverted");
    assert_eq!(history[0]["reason"], reason);
    assert!(s.terminate().success());
    let recs = audit_records(&f);
    let last = recs.last().unwrap();
    assert_eq!(last["kind"], "install-record");
    assert_eq!(last["detail"]["record"]["kind"], "damaged");
    assert_eq!(last["detail"]["record"]["staged"], "2030-01-01T00:05:00Z");
}

#[test]
fn install_records_stay_in_the_device_history_across_later_reports() {
    let f = Fixture::new();
    let mut s = f.start();
    let plain = {
        let mut r = rollback_report();
        r.as_object_mut().unwrap().remove("install_record");
        r
    };
    assert_eq!(post(&s, DEVICE, &rollback_report()).status, 204);
    assert_eq!(post(&s, DEVICE, &plain).status, 204);
    let offline = with_record(|r| {
        r["kind"] = json!("offline");
        r["version"] = json!("1.1.0");
        r["signers"] = json!([]);
    });
    assert_eq!(post(&s, DEVICE, &offline).status, 204);
    assert_eq!(post(&s, DEVICE, &plain).status, 204);

    let devs = devices(&s);
    assert_eq!(devs.len(), 1);
    // the latest report replaced the earlier ones; the history kept both records, oldest first
    assert!(devs[0]["report"]["install_record"].is_null());
    assert_eq!(devs[0]["report"]["slots"], plain["slots"]);
    let history = history_records(&devs[0]);
    assert_eq!(
        history,
        [
            &rollback_report()["install_record"],
            &offline["install_record"]
        ]
    );
    assert!(devs[0]["history"][0]["received"].as_u64().is_some());

    // bounded: the oldest records leave the record (the audit log keeps them all)
    let offline_n = |i: usize| {
        with_record(|r| {
            r["kind"] = json!("offline");
            r["version"] = json!(format!("1.2.{i}"));
            r["signers"] = json!([]);
        })
    };
    for i in 0..40 {
        assert_eq!(post(&s, DEVICE, &offline_n(i)).status, 204);
    }
    let devs = devices(&s);
    let history = history_records(&devs[0]);
    let newest: Vec<Value> = (8..40)
        .map(|i| offline_n(i)["install_record"].clone())
        .collect();
    assert_eq!(history, newest.iter().collect::<Vec<_>>());
    assert!(s.terminate().success());
    let audited = audit_records(&f)
        .iter()
        .filter(|r| r["kind"] == "install-record")
        .count();
    assert_eq!(audited, 42);
}

#[test]
fn an_install_record_sent_again_after_a_lost_answer_is_kept_and_audited_once() {
    let f = Fixture::new();
    let mut s = f.start();
    // the pump sends its record until an answer arrives: twice when the first answer was lost
    assert_eq!(post(&s, DEVICE, &rollback_report()).status, 204);
    assert_eq!(post(&s, DEVICE, &rollback_report()).status, 204);
    let history = |s: &Server| devices(s)[0]["history"].as_array().unwrap().clone();
    assert_eq!(history(&s).len(), 1);
    assert_eq!(
        history(&s)[0]["record"],
        rollback_report()["install_record"]
    );
    // another record is kept, and the first one after it again (a second rollback, same text)
    let offline = with_record(|r| {
        r["kind"] = json!("offline");
        r["signers"] = json!([]);
    });
    assert_eq!(post(&s, DEVICE, &offline).status, 204);
    assert_eq!(post(&s, DEVICE, &rollback_report()).status, 204);
    let records: Vec<Value> = history(&s).iter().map(|h| h["record"].clone()).collect();
    assert_eq!(
        records,
        [
            rollback_report()["install_record"].clone(),
            offline["install_record"].clone(),
            rollback_report()["install_record"].clone()
        ]
    );
    // agents that say when they staged each install: the same install twice in a row is two
    // records, one sent again still one
    let staged = |t: &str| with_record(|r| r["staged"] = json!(t));
    for t in [
        "2030-01-02T00:00:00Z",
        "2030-01-02T00:00:00Z",
        "2030-01-03T00:00:00Z",
    ] {
        assert_eq!(post(&s, DEVICE, &staged(t)).status, 204);
    }
    let records: Vec<Value> = history(&s).iter().map(|h| h["record"].clone()).collect();
    assert_eq!(records.len(), 5);
    assert_eq!(records[3], staged("2030-01-02T00:00:00Z")["install_record"]);
    assert_eq!(records[4], staged("2030-01-03T00:00:00Z")["install_record"]);
    // a staging time longer than 32 bytes is refused like the other fields
    let r = post(&s, DEVICE, &staged(&"2".repeat(33)));
    assert_eq!(
        (r.status, r.json()["message"].clone()),
        (
            400,
            json!("install_record: field too long or has control or format characters")
        )
    );
    assert!(s.terminate().success());
    let kinds: Vec<String> = audit_records(&f)
        .iter()
        .map(|r| r["kind"].as_str().unwrap().to_string())
        .filter(|k| k == "report" || k == "install-record")
        .collect();
    assert_eq!(kinds, ["report", "install-record"].repeat(5));
}

/// The longest version a device can hold (three 20-digit numbers and a 32-byte pre-release tag,
/// 95 bytes) is taken in a record and in a slot.
#[test]
fn the_longest_version_a_device_can_hold_is_taken() {
    let f = Fixture::new();
    let s = f.start();
    let n = u64::MAX;
    let longest = format!("{n}.{n}.{n}-{}", "a".repeat(32));
    assert_eq!(longest.len(), hale_core::policy::Version::MAX_TEXT);
    assert!(hale_core::policy::Version::parse(&longest).is_some());
    let mut body = with_record(|r| r["version"] = json!(longest));
    body["slots"][0]["version"] = json!(longest);
    let r = post(&s, DEVICE, &body);
    assert_eq!(r.status, 204, "{}", String::from_utf8_lossy(&r.body));
    let devs = devices(&s);
    assert_eq!(devs[0]["report"]["install_record"]["version"], longest);
    assert_eq!(devs[0]["report"]["slots"][0]["version"], longest);
}
