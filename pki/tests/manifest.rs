//! The manufacturing manifest: signed by the Manufacturing CA, verified with its certificate.
// test helpers outside #[test] fns: a panic there is a failing test
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;

use std::time::SystemTime;

use common::*;
use hale_pki::manifest::check_factory_identity;
use hale_pki::{KeyAlgorithm, Manifest, ManifestEntry, PeerIdentity, PkiError};

struct Factory {
    h: hale_pki::Hierarchy,
    certs: Vec<hale_pki::IssuedCertificate>,
    manifest: Vec<u8>,
}

fn factory() -> Factory {
    let h = hierarchy();
    let now = SystemTime::now();
    let mut certs = vec![];
    let mut entries = vec![];
    for i in 0..3 {
        let serial = format!("SN{i:04}");
        let c = h
            .manufacturing
            .issue_factory_certificate(
                &key(KeyAlgorithm::P256).csr_pem,
                &serial,
                "HP-200",
                20 * YEAR,
                now,
            )
            .unwrap();
        entries.push(ManifestEntry::new(&serial, "HP-200", &c.spki_sha256));
        certs.push(c);
    }
    let manifest = Manifest::sign(&h.manufacturing, "batch-2026-11", &entries, now).unwrap();
    Factory { h, certs, manifest }
}

#[test]
fn manifest_verifies_with_the_manufacturing_ca_certificate() {
    let f = factory();
    let m = Manifest::verify(&f.manifest, f.h.manufacturing.certificate_der()).unwrap();
    assert_eq!(m.batch(), "batch-2026-11");
    assert_eq!(m.entries().len(), 3);
    assert_eq!(m.entries()[1].serial, "SN0001");
    assert_eq!(
        m.entries()[1].spki_sha256,
        hex::encode(f.certs[1].spki_sha256)
    );
    // every factory certificate is in it
    for c in &f.certs {
        let id = PeerIdentity::from_der(&c.der).unwrap();
        assert_eq!(m.check_factory_identity(&id).unwrap().serial, id.name);
    }
    // the signed part is canonical JSON signed by hale-repo's envelope
    let doc: serde_json::Value = serde_json::from_slice(&f.manifest).unwrap();
    assert_eq!(doc["signed"]["_type"], "hale-manufacturing-manifest");
}

#[test]
fn tampered_manifest_is_refused() {
    let f = factory();
    let text = String::from_utf8(f.manifest.clone()).unwrap();
    let forged = text.replace("SN0002", "SN6666");
    let err = Manifest::verify(forged.as_bytes(), f.h.manufacturing.certificate_der()).unwrap_err();
    assert!(matches!(err, PkiError::ManifestSignatureInvalid), "{err}");
}

#[test]
fn manifest_from_another_manufacturing_ca_is_refused() {
    let f = factory();
    let other = hierarchy();
    let err = Manifest::verify(&f.manifest, other.manufacturing.certificate_der()).unwrap_err();
    assert!(matches!(err, PkiError::ManifestSignatureInvalid), "{err}");
    // and a certificate of another CA is not accepted as the manufacturing one
    let err = Manifest::verify(&f.manifest, f.h.device_issuing.certificate_der()).unwrap_err();
    assert!(
        matches!(&err, PkiError::NotACaCertificate { subject } if subject == "Hale Device Issuing CA"),
        "{err}"
    );
}

#[test]
fn only_the_manufacturing_ca_signs_manifests() {
    let h = hierarchy();
    let err = Manifest::sign(&h.device_issuing, "b", &[], SystemTime::now()).unwrap_err();
    assert!(matches!(err, PkiError::WrongCa { .. }), "{err}");
}

#[test]
fn duplicate_serials_are_refused() {
    let h = hierarchy();
    let e = ManifestEntry::new("SN1", "HP-200", &[7; 32]);
    let err =
        Manifest::sign(&h.manufacturing, "b", &[e.clone(), e], SystemTime::now()).unwrap_err();
    assert!(
        matches!(&err, PkiError::ManifestDuplicateSerial(s) if s == "SN1"),
        "{err}"
    );
}

#[test]
fn factory_certificate_not_in_the_manifest_cannot_enroll() {
    let f = factory();
    let m = Manifest::verify(&f.manifest, f.h.manufacturing.certificate_der()).unwrap();
    let stray =
        f.h.manufacturing
            .issue_factory_certificate(
                &key(KeyAlgorithm::P256).csr_pem,
                "SN9999",
                "HP-200",
                YEAR,
                SystemTime::now(),
            )
            .unwrap();
    let id = PeerIdentity::from_der(&stray.der).unwrap();
    let err = m.check_factory_identity(&id).unwrap_err();
    assert!(
        matches!(&err, PkiError::NotInManifest(s) if s == "SN9999"),
        "{err}"
    );
}

#[test]
fn factory_certificate_with_another_key_cannot_enroll() {
    let f = factory();
    let m = Manifest::verify(&f.manifest, f.h.manufacturing.certificate_der()).unwrap();
    // a second factory certificate for a listed serial, with a key the factory never recorded
    let clone =
        f.h.manufacturing
            .issue_factory_certificate(
                &key(KeyAlgorithm::P256).csr_pem,
                "SN0001",
                "HP-200",
                YEAR,
                SystemTime::now(),
            )
            .unwrap();
    let id = PeerIdentity::from_der(&clone.der).unwrap();
    let err = check_factory_identity(m.entries(), &id).unwrap_err();
    assert!(
        matches!(&err, PkiError::ManifestKeyMismatch { serial } if serial == "SN0001"),
        "{err}"
    );
    // a device certificate is not a factory certificate
    let dev =
        f.h.device_issuing
            .issue_device_certificate(
                &key(KeyAlgorithm::P256).csr_pem,
                "pump-1",
                "HP-200",
                "SN0001",
                DAY,
                SystemTime::now(),
            )
            .unwrap();
    let err = m
        .check_factory_identity(&PeerIdentity::from_der(&dev.der).unwrap())
        .unwrap_err();
    assert!(matches!(err, PkiError::NotOurProfile { .. }), "{err}");
}
