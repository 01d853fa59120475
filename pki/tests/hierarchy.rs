// test helpers outside #[test] fns: a panic there is a failing test
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;

use std::collections::BTreeSet;
use std::time::SystemTime;

use common::*;
use hale_pki::{Ca, CaRole, Hierarchy, HierarchyOptions, PkiError};
use x509_cert::der::Decode;
use x509_cert::ext::pkix::{KeyUsage, KeyUsages};

fn key_usage(p: &Parsed) -> KeyUsage {
    let ext = p
        .cert
        .tbs_certificate
        .extensions
        .as_ref()
        .unwrap()
        .iter()
        .find(|e| e.extn_id.to_string() == "2.5.29.15")
        .unwrap();
    assert!(ext.critical, "key usage is critical");
    KeyUsage::from_der(ext.extn_value.as_bytes()).unwrap()
}

#[test]
fn root_is_self_signed_with_path_length_one() {
    let h = hierarchy();
    let root = parse(h.root.certificate_der());
    assert_eq!(root.subject, "CN=Hale Device Root CA,O=Hale");
    assert_eq!(root.issuer, root.subject);
    assert_eq!(root.is_ca, Some(true));
    assert_eq!(root.path_len, Some(1));
    let ku = key_usage(&root);
    assert!(ku.0.contains(KeyUsages::KeyCertSign) && ku.0.contains(KeyUsages::CRLSign));
    assert!(root.ekus.is_empty());
}

#[test]
fn issuing_cas_are_signed_by_the_root_with_path_length_zero_and_one_purpose() {
    let h = hierarchy();
    for (role, eku) in [
        (CaRole::Manufacturing, CLIENT_AUTH),
        (CaRole::DeviceIssuing, CLIENT_AUTH),
        (CaRole::Technician, CLIENT_AUTH),
        (CaRole::Server, SERVER_AUTH),
    ] {
        let ca = h.get(role);
        assert_eq!(ca.role(), role);
        let p = parse(ca.certificate_der());
        assert_eq!(p.subject, format!("CN={},O=Hale", role.common_name()));
        assert_eq!(p.issuer, "CN=Hale Device Root CA,O=Hale");
        assert_eq!(p.is_ca, Some(true));
        assert_eq!(p.path_len, Some(0), "{role}");
        assert_eq!(p.ekus, vec![eku.to_string()], "{role}");
        let ku = key_usage(&p);
        assert!(ku.0.contains(KeyUsages::KeyCertSign) && ku.0.contains(KeyUsages::CRLSign));
        assert_eq!(
            ca.crl_url(),
            format!("https://pki.hale.invalid/crl/{}.crl", role.slug())
        );
    }
}

#[test]
fn serials_are_random_positive_and_distinct() {
    let a = hierarchy();
    let b = hierarchy();
    let mut serials = BTreeSet::new();
    for h in [&a, &b] {
        for role in CaRole::ALL {
            let s = parse(h.get(role).certificate_der()).serial;
            assert_eq!(s.len(), 16);
            assert!(s[0] & 0x80 == 0 && s[0] != 0);
            assert!(serials.insert(s));
        }
    }
}

#[test]
fn server_ca_name_constraints_are_optional() {
    let h = Hierarchy::create_with(
        &HierarchyOptions {
            validity: YEAR,
            crl_base_url: "https://example.invalid/crl/".into(),
            server_dns_constraints: vec!["hale.test".into()],
        },
        SystemTime::now(),
    )
    .unwrap();
    let p = parse(h.server.certificate_der());
    let nc = p
        .cert
        .tbs_certificate
        .extensions
        .as_ref()
        .unwrap()
        .iter()
        .find(|e| e.extn_id.to_string() == "2.5.29.30")
        .expect("name constraints");
    assert!(nc.critical);
    assert_eq!(h.server.crl_url(), "https://example.invalid/crl/server.crl");
    // the other CAs carry none
    let d = parse(h.device_issuing.certificate_der());
    assert!(!d.critical.contains(&"2.5.29.30".to_string()));
}

#[test]
fn ca_files_seal_the_key_and_round_trip() {
    let h = hierarchy();
    let file = h.device_issuing.to_file_with_cost(b"ceremony", 10).unwrap();
    let text = String::from_utf8(file.clone()).unwrap();
    assert!(text.contains("\"role\": \"device-issuing\""));
    assert!(text.contains("xchacha20poly1305"));
    let back = Ca::from_file(&file, b"ceremony").unwrap();
    assert_eq!(back.role(), CaRole::DeviceIssuing);
    assert_eq!(back.certificate_der(), h.device_issuing.certificate_der());
    assert_eq!(back.crl_url(), h.device_issuing.crl_url());
    // the reopened CA still issues
    let k = key(hale_pki::KeyAlgorithm::P256);
    back.issue_device_certificate(&k.csr_pem, "dev-1", "HP-200", "SN1", DAY, SystemTime::now())
        .unwrap();
}

#[test]
fn ca_file_refuses_wrong_passphrase() {
    let h = hierarchy();
    let file = h.root.to_file_with_cost(b"ceremony", 10).unwrap();
    let err = Ca::from_file(&file, b"guess").unwrap_err();
    assert_eq!(
        err.to_string(),
        "key file: wrong passphrase or damaged key file"
    );
}

#[test]
fn ca_file_with_another_cas_certificate_is_refused() {
    let h = hierarchy();
    let mut doc: serde_json::Value =
        serde_json::from_slice(&h.technician.to_file_with_cost(b"pw", 10).unwrap()).unwrap();
    // a certificate of the same role but another hierarchy: the key does not match it
    let other = hierarchy();
    doc["certificate"] = other.technician.certificate_pem().unwrap().into();
    let err = Ca::from_file(&serde_json::to_vec(&doc).unwrap(), b"pw").unwrap_err();
    assert!(
        matches!(
            err,
            PkiError::KeyMismatch {
                ca: CaRole::Technician
            }
        ),
        "{err}"
    );
    // a certificate of another role
    doc["certificate"] = h.server.certificate_pem().unwrap().into();
    let err = Ca::from_file(&serde_json::to_vec(&doc).unwrap(), b"pw").unwrap_err();
    assert!(
        matches!(&err, PkiError::NotACaCertificate { subject } if subject == "Hale Server CA"),
        "{err}"
    );
}

#[test]
fn zero_validity_is_refused() {
    let err = Hierarchy::create(std::time::Duration::ZERO, SystemTime::now()).unwrap_err();
    assert!(
        matches!(err, PkiError::InvalidValidity { secs: 0 }),
        "{err}"
    );
}

#[test]
fn debug_output_shows_no_secrets() {
    let h = hierarchy();
    let text = format!("{h:?}");
    assert!(
        text.contains("DeviceIssuing") && !text.contains("key"),
        "{text}"
    );
    let k = key(hale_pki::KeyAlgorithm::P256);
    let text = format!("{k:?}");
    assert!(
        !text.contains("PRIVATE KEY") && text.contains("[secret]"),
        "{text}"
    );
}
