//! Certificates are built from our profiles; from a CSR only the public key is taken.
// test helpers outside #[test] fns: a panic there is a failing test
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, SystemTime};

use common::*;
use hale_pki::{CaRole, KeyAlgorithm, PkiError, StaffRole};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};

/// A CSR asking for everything a device must not get.
fn hostile_csr() -> String {
    let kp = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = CertificateParams::new(vec!["evil.example".to_string()]).unwrap();
    p.subject_alt_names.push(SanType::URI(
        "urn:hale:device:someone-else".try_into().unwrap(),
    ));
    p.distinguished_name
        .push(DnType::CommonName, "Hale Device Issuing CA");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::CodeSigning,
    ];
    let csr = p.serialize_request(&kp).unwrap();
    // the request really carries an extensionRequest attribute
    use x509_cert::der::Decode;
    let req = x509_cert::request::CertReq::from_der(csr.der()).unwrap();
    assert!(req
        .info
        .attributes
        .iter()
        .any(|a| a.oid.to_string() == "1.2.840.113549.1.9.14"));
    csr.pem().unwrap()
}

fn assert_device_profile(p: &Parsed, id: &str) {
    assert_eq!(p.is_ca, Some(false));
    assert_eq!(p.ekus, vec![CLIENT_AUTH.to_string()]);
    assert_eq!(p.sans, vec![format!("URI:urn:hale:device:{id}")]);
    assert!(
        p.subject.starts_with(&format!("CN={id},SERIALNUMBER=")),
        "{}",
        p.subject
    );
    assert_eq!(p.issuer, "CN=Hale Device Issuing CA,O=Hale");
    // only key usage and basic constraints are critical: no critical custom extension
    let mut crit = p.critical.clone();
    crit.sort();
    assert_eq!(crit, vec!["2.5.29.15".to_string(), "2.5.29.19".to_string()]);
}

#[test]
fn hostile_csr_asking_for_ca_true_server_auth_and_other_names_gets_none_of_it() {
    let h = hierarchy();
    let now = SystemTime::now();
    let cert = h
        .device_issuing
        .issue_device_certificate(
            &hostile_csr(),
            "pump-0001",
            "HP-200",
            "SN0001",
            90 * DAY,
            now,
        )
        .unwrap();
    let p = parse(&cert.der);
    assert_device_profile(&p, "pump-0001");
    assert_eq!(
        p.subject,
        "CN=pump-0001,SERIALNUMBER=SN0001,OU=HP-200,O=Hale"
    );
    let v = &p.cert.tbs_certificate.validity;
    assert_eq!(
        v.not_after.to_unix_duration().as_secs() - v.not_before.to_unix_duration().as_secs(),
        (90 * DAY + hale_pki::profile::BACKDATE).as_secs()
    );
    assert_eq!(cert.serial_hex, hex::encode(&p.serial));
}

#[test]
fn device_certificate_takes_the_csr_key() {
    let h = hierarchy();
    for alg in [KeyAlgorithm::P256, KeyAlgorithm::Ed25519] {
        let k = key(alg);
        let cert = h
            .device_issuing
            .issue_device_certificate(
                &k.csr_pem,
                "pump-7",
                "HP-200",
                "SN7",
                DAY,
                SystemTime::now(),
            )
            .unwrap();
        let kp = KeyPair::from_pem(&k.private_key_pem).unwrap();
        let p = parse(&cert.der);
        assert_eq!(
            p.cert
                .tbs_certificate
                .subject_public_key_info
                .subject_public_key
                .raw_bytes(),
            kp.public_key_raw()
        );
        assert_device_profile(&p, "pump-7");
    }
}

#[test]
fn reissue_for_the_same_key_gets_a_new_serial() {
    let h = hierarchy();
    let k = key(KeyAlgorithm::P256);
    let now = SystemTime::now();
    let a = h
        .device_issuing
        .issue_device_certificate(&k.csr_pem, "pump-1", "HP-200", "SN1", DAY, now)
        .unwrap();
    let b = h
        .device_issuing
        .issue_device_certificate(&k.csr_pem, "pump-1", "HP-200", "SN1", DAY, now)
        .unwrap();
    assert_ne!(a.serial_hex, b.serial_hex);
    assert_eq!(a.spki_sha256, b.spki_sha256);
}

#[test]
fn csr_with_a_broken_self_signature_is_refused() {
    let h = hierarchy();
    let k = key(KeyAlgorithm::P256);
    // swap the public key for another one: the signature no longer matches
    let other = key(KeyAlgorithm::P256);
    use x509_cert::der::{Decode, DecodePem, Encode, EncodePem};
    let mut req = x509_cert::request::CertReq::from_pem(k.csr_pem.as_bytes()).unwrap();
    let o = x509_cert::request::CertReq::from_pem(other.csr_pem.as_bytes()).unwrap();
    req.info.public_key = o.info.public_key;
    let pem = req.to_pem(x509_cert::der::pem::LineEnding::LF).unwrap();
    let err = h
        .device_issuing
        .issue_device_certificate(&pem, "pump-1", "HP-200", "SN1", DAY, SystemTime::now())
        .unwrap_err();
    assert!(matches!(err, PkiError::CsrSignatureInvalid), "{err}");
    // same for ed25519
    let k = key(KeyAlgorithm::Ed25519);
    let mut der = x509_cert::request::CertReq::from_pem(k.csr_pem.as_bytes())
        .unwrap()
        .to_der()
        .unwrap();
    let n = der.len();
    der[n - 1] ^= 1; // last byte of the signature
    let err = hale_pki::RequestedKey::from_csr_der(&der).unwrap_err();
    assert!(matches!(err, PkiError::CsrSignatureInvalid), "{err}");
    let _ = x509_cert::request::CertReq::from_der(&der).unwrap();
}

#[test]
fn garbage_csr_is_malformed() {
    let h = hierarchy();
    let err = h
        .device_issuing
        .issue_device_certificate(
            "not a csr",
            "pump-1",
            "HP-200",
            "SN1",
            DAY,
            SystemTime::now(),
        )
        .unwrap_err();
    assert!(matches!(err, PkiError::CsrMalformed(_)), "{err}");
}

#[test]
fn unsupported_key_algorithm_is_refused() {
    let kp = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let csr = CertificateParams::default().serialize_request(&kp).unwrap();
    let err = hale_pki::RequestedKey::from_csr_der(csr.der()).unwrap_err();
    assert!(
        matches!(&err, PkiError::UnsupportedKeyAlgorithm { oid } if oid.starts_with("1.2.840.10045.2.1 with curve")),
        "{err}"
    );
}

#[test]
fn each_profile_needs_its_own_ca() {
    let h = hierarchy();
    let k = key(KeyAlgorithm::P256);
    let now = SystemTime::now();
    let err = h
        .technician
        .issue_device_certificate(&k.csr_pem, "pump-1", "HP-200", "SN1", DAY, now)
        .unwrap_err();
    assert!(
        matches!(
            err,
            PkiError::WrongCa {
                expected: CaRole::DeviceIssuing,
                actual: CaRole::Technician
            }
        ),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "this needs the Hale Device Issuing CA but was given the Hale Technician CA"
    );
    let err = h
        .device_issuing
        .issue_factory_certificate(&k.csr_pem, "SN1", "HP-200", DAY, now)
        .unwrap_err();
    assert!(matches!(
        err,
        PkiError::WrongCa {
            expected: CaRole::Manufacturing,
            ..
        }
    ));
    let err = h
        .root
        .issue_staff_certificate(&k.csr_pem, "alice", StaffRole::Technician, HOUR, now)
        .unwrap_err();
    assert!(matches!(
        err,
        PkiError::WrongCa {
            expected: CaRole::Technician,
            ..
        }
    ));
    let err = h
        .device_issuing
        .issue_server_certificate(&k.csr_pem, &["hale.test"], &[], DAY, now)
        .unwrap_err();
    assert!(matches!(
        err,
        PkiError::WrongCa {
            expected: CaRole::Server,
            ..
        }
    ));
}

#[test]
fn names_outside_the_charset_are_refused() {
    let h = hierarchy();
    let k = key(KeyAlgorithm::P256);
    for bad in ["", "a/b", "pump 1", "-x", "x,CN=admin", &"a".repeat(65)] {
        let err = h
            .device_issuing
            .issue_device_certificate(&k.csr_pem, bad, "HP-200", "SN1", DAY, SystemTime::now())
            .unwrap_err();
        assert!(
            matches!(&err, PkiError::InvalidName { field: "device id", value } if value == bad),
            "{err}"
        );
    }
}

#[test]
fn factory_certificate_follows_its_profile() {
    let h = hierarchy();
    let cert = h
        .manufacturing
        .issue_factory_certificate(
            &hostile_csr(),
            "SN0042",
            "HP-200",
            20 * YEAR,
            SystemTime::now(),
        )
        .unwrap();
    let p = parse(&cert.der);
    assert_eq!(p.is_ca, Some(false));
    assert_eq!(p.ekus, vec![CLIENT_AUTH.to_string()]);
    assert_eq!(p.sans, vec!["URI:urn:hale:factory:SN0042".to_string()]);
    assert_eq!(p.issuer, "CN=Hale Manufacturing CA,O=Hale");
}

#[test]
fn technician_certificate_lasts_one_shift_and_names_the_role() {
    let h = hierarchy();
    let now = SystemTime::now();
    let cert = h
        .technician
        .issue_staff_certificate(
            &hostile_csr(),
            "alice",
            StaffRole::Technician,
            8 * HOUR,
            now,
        )
        .unwrap();
    let p = parse(&cert.der);
    assert_eq!(p.is_ca, Some(false));
    assert_eq!(p.ekus, vec![CLIENT_AUTH.to_string()]);
    assert_eq!(p.sans, vec!["URI:urn:hale:technician:alice".to_string()]);
    assert_eq!(p.subject, "CN=alice,OU=technician,O=Hale");
    let op = h
        .technician
        .issue_staff_certificate(&hostile_csr(), "bob", StaffRole::Operator, 8 * HOUR, now)
        .unwrap();
    assert_eq!(
        parse(&op.der).sans,
        vec!["URI:urn:hale:operator:bob".to_string()]
    );

    let err = h
        .technician
        .issue_staff_certificate(
            &hostile_csr(),
            "alice",
            StaffRole::Technician,
            13 * HOUR,
            now,
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            PkiError::ValidityTooLong {
                requested_secs: 46800,
                max_secs: 43200
            }
        ),
        "{err}"
    );
}

#[test]
fn server_certificate_is_server_auth_with_dns_and_ip_names() {
    let h = hierarchy();
    let cert = h
        .server
        .issue_server_certificate(
            &hostile_csr(),
            &["Updates.Hale.Test", "enroll.hale.test"],
            &[IpAddr::V4(Ipv4Addr::LOCALHOST)],
            30 * DAY,
            SystemTime::now(),
        )
        .unwrap();
    let p = parse(&cert.der);
    assert_eq!(p.is_ca, Some(false));
    assert_eq!(p.ekus, vec![SERVER_AUTH.to_string()]);
    assert_eq!(
        p.sans,
        vec![
            "DNS:updates.hale.test".to_string(),
            "DNS:enroll.hale.test".to_string(),
            "IP:7f000001".to_string()
        ]
    );
    assert_eq!(p.issuer, "CN=Hale Server CA,O=Hale");
    let err = h
        .server
        .issue_server_certificate(&hostile_csr(), &["bad name!"], &[], DAY, SystemTime::now())
        .unwrap_err();
    assert!(
        matches!(&err, PkiError::InvalidServerName(n) if n == "bad name!"),
        "{err}"
    );
}

#[test]
fn validity_must_be_positive() {
    let h = hierarchy();
    let k = key(KeyAlgorithm::P256);
    let err = h
        .device_issuing
        .issue_device_certificate(&k.csr_pem, "p", "m", "s", Duration::ZERO, SystemTime::now())
        .unwrap_err();
    assert!(
        matches!(err, PkiError::InvalidValidity { secs: 0 }),
        "{err}"
    );
}
