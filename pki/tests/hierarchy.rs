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

#[test]
fn the_crl_base_url_gets_its_final_slash_and_one_no_client_could_fetch_is_refused() {
    let opts = |url: &str, constraints: &[&str]| HierarchyOptions {
        validity: YEAR,
        crl_base_url: url.into(),
        server_dns_constraints: constraints.iter().map(|c| c.to_string()).collect(),
    };
    // a base URL without its final slash: the CRLs go under it, not beside it
    for base in [
        "https://pki.example.com/crl",
        "https://pki.example.com/crl/",
    ] {
        let h = Hierarchy::create_with(&opts(base, &[]), SystemTime::now()).unwrap();
        assert_eq!(h.root.crl_url(), "https://pki.example.com/crl/root.crl");
        assert_eq!(h.server.crl_url(), "https://pki.example.com/crl/server.crl");
    }
    for base in ["http://10.0.0.5:8080/c", "http://[::1]/crl"] {
        Hierarchy::create_with(&opts(base, &[]), SystemTime::now()).unwrap();
    }
    for bad in [
        "not a url",
        "pki.example.com/crl/",
        "ftp://pki.example.com/crl/",
        "https://",
        "https:///crl/",
        "https://pki example.com/crl/",
        "https://pki.example.com/crl?x=1/",
        "https://pki.example.com/crl#a/",
        "https://pki.example.com:99999/crl/",
    ] {
        let err = Hierarchy::create_with(&opts(bad, &[]), SystemTime::now()).unwrap_err();
        assert!(
            matches!(&err, PkiError::InvalidCrlUrl(u) if u == bad),
            "{bad}: {err}"
        );
    }
    for bad in [
        "*.bad..",
        "",
        "hale..test",
        "-hale.test",
        "*.hale.test",
        "hale_test",
    ] {
        let err =
            Hierarchy::create_with(&opts(DEFAULT_CRL, &[bad]), SystemTime::now()).unwrap_err();
        assert!(
            matches!(&err, PkiError::InvalidNameConstraint(c) if c == bad),
            "{bad:?}: {err}"
        );
    }
}

const DEFAULT_CRL: &str = hale_pki::ca::DEFAULT_CRL_BASE_URL;

#[test]
fn nothing_issued_outlives_its_ca_or_leaves_the_server_cas_names() {
    let day = std::time::Duration::from_secs(86_400);
    let now = SystemTime::now();
    let h = Hierarchy::create_with(
        &HierarchyOptions {
            validity: 10 * day,
            crl_base_url: DEFAULT_CRL.into(),
            server_dns_constraints: vec!["hale.test".into()],
        },
        now,
    )
    .unwrap();
    let csr = key(hale_pki::KeyAlgorithm::P256).csr_pem;
    // asked for a year, given what the CA has left
    let ca_end = h.device_issuing.not_after().unwrap();
    let c = h
        .device_issuing
        .issue_device_certificate(&csr, "p", "m", "s", 365 * day, now)
        .unwrap();
    assert_eq!(c.not_after, ca_end);
    let c = h
        .server
        .issue_server_certificate(&csr, &["updates.hale.test", "hale.test"], &[], day, now)
        .unwrap();
    assert_eq!(c.not_after, now.checked_add(day).map(whole_secs).unwrap());
    // a name the constraints do not permit: TLS clients would refuse the certificate
    for name in ["evil.example", "nothale.test", "hale.test.evil"] {
        let err = h
            .server
            .issue_server_certificate(&csr, &["updates.hale.test", name], &[], day, now)
            .unwrap_err();
        assert!(
            matches!(&err, PkiError::NameNotPermitted { name: n, permitted }
                if n == name && *permitted == ["hale.test"]),
            "{name}: {err}"
        );
    }
    // from a CA that has ended: nothing
    let later = now.checked_add(11 * day).unwrap();
    let err = h
        .device_issuing
        .issue_device_certificate(&csr, "p", "m", "s", day, later)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "the Hale Device Issuing CA ended at {}: it issues nothing more",
            hale_pki::utc(ca_end)
        )
    );
}

/// `t` to whole seconds (what a certificate holds).
fn whole_secs(t: SystemTime) -> SystemTime {
    let s = t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
    SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(s)
}
