//! What hale-server needs from a CSR, a CRL and a sealed TLS key, checked here once.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::time::{Duration, SystemTime};

use hale_pki::crl::verify_crl;
use hale_pki::csr::CsrSummary;
use hale_pki::{generate_key_and_csr, Hierarchy, KeyAlgorithm, PkiError};

#[test]
fn csr_summary_names_the_cn_and_spots_a_ca_request() {
    let k = generate_key_and_csr(KeyAlgorithm::Ed25519, "pump-4").unwrap();
    let s = CsrSummary::from_pem(&k.csr_pem).unwrap();
    assert_eq!(
        (s.common_name.as_deref(), s.requests_ca),
        (Some("pump-4"), false)
    );

    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "pump-4");
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let hostile = p.serialize_request(&key).unwrap().pem().unwrap();
    assert!(CsrSummary::from_pem(&hostile).unwrap().requests_ca);

    // an explicit CA:FALSE is not a CA request
    p.is_ca = rcgen::IsCa::ExplicitNoCa;
    let fine = p.serialize_request(&key).unwrap().pem().unwrap();
    assert!(!CsrSummary::from_pem(&fine).unwrap().requests_ca);
}

#[test]
fn crl_is_verified_against_its_ca_and_its_dates() {
    let now = SystemTime::now();
    let h = Hierarchy::create(Duration::from_secs(86_400), now).unwrap();
    let crl = h
        .technician
        .crl(&[], 7, now, Duration::from_secs(3600))
        .unwrap();
    let v = verify_crl(&crl.der, h.technician.certificate_der(), now).unwrap();
    assert_eq!((v.number, v.revoked.len()), (7, 0));

    let other = |e: PkiError| e.to_string();
    assert_eq!(
        other(verify_crl(&crl.der, h.manufacturing.certificate_der(), now).unwrap_err()),
        "malformed certificate: CRL: issued by another CA"
    );
    let foreign = Hierarchy::create(Duration::from_secs(86_400), now).unwrap();
    assert_eq!(
        other(verify_crl(&crl.der, foreign.technician.certificate_der(), now).unwrap_err()),
        "malformed certificate: CRL: signature does not verify with the CA key"
    );
    assert_eq!(
        other(
            verify_crl(
                &crl.der,
                h.technician.certificate_der(),
                now + Duration::from_secs(7200)
            )
            .unwrap_err()
        ),
        "malformed certificate: CRL: expired (nextUpdate has passed)"
    );
}

#[test]
fn sealed_tls_key_round_trips_and_needs_the_passphrase() {
    for alg in [KeyAlgorithm::P256, KeyAlgorithm::Ed25519] {
        let k = generate_key_and_csr(alg, "server").unwrap();
        let sealed =
            hale_pki::tls::seal_private_key_with_cost(&k.private_key_pem, b"pass", 10).unwrap();
        assert!(!String::from_utf8_lossy(&sealed).contains("PRIVATE KEY"));
        let opened = hale_pki::tls::open_private_key(&sealed, b"pass").unwrap();
        let original = hale_pki::tls::private_key_from_pem(&k.private_key_pem).unwrap();
        // same key: the public part derived by ring from both matches
        let sign = |der: &rustls::pki_types::PrivateKeyDer<'static>| {
            rustls::crypto::ring::sign::any_supported_type(der)
                .unwrap()
                .public_key()
                .map(|p| p.to_vec())
        };
        assert_eq!(sign(&opened), sign(&original));
        assert!(hale_pki::tls::open_private_key(&sealed, b"wrong").is_err());
    }
}
