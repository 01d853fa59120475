//! CRLs: one per CA, issuing distribution point equal to the certificates' distribution point.
// test helpers outside #[test] fns: a panic there is a failing test
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;

use std::time::SystemTime;

use common::*;
use hale_pki::crl::{RevocationReason, RevokedCertificate};
use hale_pki::{CaRole, KeyAlgorithm, PkiError};
use x509_cert::crl::CertificateList;
use x509_cert::der::Decode;
use x509_cert::ext::pkix::crl::dp::DistributionPoint;
use x509_cert::ext::pkix::crl::CrlDistributionPoints;
use x509_cert::ext::pkix::name::{DistributionPointName, GeneralName};

fn uris(dp: &Option<DistributionPointName>) -> Vec<String> {
    match dp {
        Some(DistributionPointName::FullName(names)) => names
            .iter()
            .filter_map(|g| match g {
                GeneralName::UniformResourceIdentifier(u) => Some(u.as_str().to_string()),
                _ => None,
            })
            .collect(),
        _ => vec![],
    }
}

#[test]
fn crl_idp_matches_the_certificates_distribution_point() {
    let h = hierarchy();
    let now = SystemTime::now();
    let k = key(KeyAlgorithm::P256);
    let cert = h
        .device_issuing
        .issue_device_certificate(&k.csr_pem, "pump-1", "HP-200", "SN1", DAY, now)
        .unwrap();
    // the certificate's CRL distribution point
    let p = parse(&cert.der);
    let cdp = p
        .cert
        .tbs_certificate
        .extensions
        .as_ref()
        .unwrap()
        .iter()
        .find(|e| e.extn_id.to_string() == "2.5.29.31")
        .unwrap();
    let cdp = CrlDistributionPoints::from_der(cdp.extn_value.as_bytes()).unwrap();
    let cdp: Vec<DistributionPoint> = cdp.0;
    assert_eq!(
        uris(&cdp[0].distribution_point),
        vec![h.device_issuing.crl_url().to_string()]
    );

    let crl = h
        .device_issuing
        .crl(
            &[RevokedCertificate {
                serial_hex: cert.serial_hex.clone(),
                revoked_at: now,
                reason: Some(RevocationReason::CessationOfOperation),
            }],
            300,
            now,
            7 * DAY,
        )
        .unwrap();
    assert!(crl.pem.starts_with("-----BEGIN X509 CRL-----"));
    let list = CertificateList::from_der(&crl.der).unwrap();
    let tbs = &list.tbs_cert_list;
    assert_eq!(tbs.issuer.to_string(), "CN=Hale Device Issuing CA,O=Hale");
    let revoked = tbs.revoked_certificates.as_ref().unwrap();
    assert_eq!(
        hex::encode(revoked[0].serial_number.as_bytes()),
        cert.serial_hex
    );
    let idp = tbs
        .crl_extensions
        .as_ref()
        .unwrap()
        .iter()
        .find(|e| e.extn_id.to_string() == "2.5.29.28")
        .unwrap();
    assert!(idp.critical);
    let idp = x509_cert::ext::pkix::crl::dp::IssuingDistributionPoint::from_der(
        idp.extn_value.as_bytes(),
    )
    .unwrap();
    assert_eq!(
        uris(&idp.distribution_point),
        vec![h.device_issuing.crl_url().to_string()]
    );
    assert!(idp.only_contains_user_certs);
    assert_eq!(
        crl.next_update.duration_since(crl.this_update).unwrap(),
        7 * DAY
    );
}

#[test]
fn root_crl_covers_the_issuing_cas() {
    let h = hierarchy();
    let serial = hex::encode(parse(h.technician.certificate_der()).serial);
    let crl = h
        .root
        .crl(
            &[RevokedCertificate {
                serial_hex: serial,
                revoked_at: SystemTime::now(),
                reason: Some(RevocationReason::CaCompromise),
            }],
            1,
            SystemTime::now(),
            YEAR,
        )
        .unwrap();
    let list = CertificateList::from_der(&crl.der).unwrap();
    let idp = list
        .tbs_cert_list
        .crl_extensions
        .unwrap()
        .into_iter()
        .find(|e| e.extn_id.to_string() == "2.5.29.28")
        .unwrap();
    let idp = x509_cert::ext::pkix::crl::dp::IssuingDistributionPoint::from_der(
        idp.extn_value.as_bytes(),
    )
    .unwrap();
    assert!(idp.only_contains_ca_certs);
    // the issuing CA certificates point at the root's CRL
    let p = parse(h.technician.certificate_der());
    assert!(p.cert.tbs_certificate.extensions.unwrap().iter().any(|e| {
        e.extn_id.to_string() == "2.5.29.31"
            && CrlDistributionPoints::from_der(e.extn_value.as_bytes())
                .map(|d| uris(&d.0[0].distribution_point) == vec![h.root.crl_url().to_string()])
                .unwrap_or(false)
    }));
    assert_eq!(h.root.role(), CaRole::Root);
}

#[test]
fn bad_serial_is_refused() {
    let h = hierarchy();
    let err = h
        .device_issuing
        .crl(
            &[RevokedCertificate {
                serial_hex: "xyz".into(),
                revoked_at: SystemTime::now(),
                reason: None,
            }],
            1,
            SystemTime::now(),
            DAY,
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            PkiError::InvalidName {
                field: "certificate serial",
                ..
            }
        ),
        "{err}"
    );
}
