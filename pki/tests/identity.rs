//! Peer identities read back from the certificates we issue.
// test helpers outside #[test] fns: a panic there is a failing test
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;

use std::time::SystemTime;

use common::*;
use hale_pki::{KeyAlgorithm, PeerIdentity, PeerKind, PkiError, StaffRole};

#[test]
fn device_certificate_gives_a_device_identity() {
    let h = hierarchy();
    let k = key(KeyAlgorithm::P256);
    let now = SystemTime::now();
    let cert = h
        .device_issuing
        .issue_device_certificate(&k.csr_pem, "pump-0001", "HP-200", "SN0001", 90 * DAY, now)
        .unwrap();
    let id = PeerIdentity::from_der(&cert.der).unwrap();
    assert_eq!(
        id,
        PeerIdentity {
            kind: PeerKind::Device,
            name: "pump-0001".into(),
            model: Some("HP-200".into()),
            hardware_serial: Some("SN0001".into()),
            certificate_serial: cert.serial_hex.clone(),
            not_before: cert.not_before,
            not_after: cert.not_after,
            spki_sha256: cert.spki_sha256,
        }
    );
    assert_eq!(id.device_id(), Some("pump-0001"));
}

#[test]
fn factory_technician_and_operator_identities() {
    let h = hierarchy();
    let now = SystemTime::now();
    let f = h
        .manufacturing
        .issue_factory_certificate(
            &key(KeyAlgorithm::Ed25519).csr_pem,
            "SN9",
            "HP-200",
            YEAR,
            now,
        )
        .unwrap();
    let id = PeerIdentity::from_der(&f.der).unwrap();
    assert_eq!(id.kind, PeerKind::Factory);
    assert_eq!(id.name, "SN9");
    assert_eq!(id.hardware_serial.as_deref(), Some("SN9"));
    assert_eq!(id.device_id(), None);

    for (role, kind) in [
        (StaffRole::Technician, PeerKind::Technician),
        (StaffRole::Operator, PeerKind::Operator),
    ] {
        let t = h
            .technician
            .issue_staff_certificate(
                &key(KeyAlgorithm::P256).csr_pem,
                "alice",
                role,
                8 * HOUR,
                now,
            )
            .unwrap();
        let id = PeerIdentity::from_der(&t.der).unwrap();
        assert_eq!(id.kind, kind);
        assert_eq!(id.name, "alice");
        assert_eq!(id.model, None);
        assert_eq!(id.not_after, t.not_after);
    }
}

#[test]
fn server_and_ca_certificates_are_not_peers() {
    let h = hierarchy();
    let s = h
        .server
        .issue_server_certificate(
            &key(KeyAlgorithm::P256).csr_pem,
            &["hale.test"],
            &[],
            DAY,
            SystemTime::now(),
        )
        .unwrap();
    let err = PeerIdentity::from_der(&s.der).unwrap_err();
    assert!(
        matches!(&err, PkiError::NotOurProfile { reason } if reason == "no clientAuth extended key usage"),
        "{err}"
    );
    let err = PeerIdentity::from_der(h.device_issuing.certificate_der()).unwrap_err();
    assert!(
        matches!(&err, PkiError::NotOurProfile { reason } if reason == "a CA certificate is not a peer"),
        "{err}"
    );
    let err = PeerIdentity::from_der(b"\x30\x03\x02\x01\x01").unwrap_err();
    assert!(matches!(err, PkiError::CertificateMalformed(_)), "{err}");
}
