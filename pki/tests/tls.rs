//! Real TLS handshakes on loopback: what each listener accepts and refuses, with the exact rustls
//! error the server sees.
// test helpers outside #[test] fns: a panic there is a failing test
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::*;
use hale_pki::crl::{RevocationReason, RevokedCertificate};
use hale_pki::tls::{
    client_config, client_config_without_certificate, private_key_from_pem, ListenerTls,
    ReloadableServerConfig, TrustDomain,
};
use hale_pki::{
    CaRole, Hierarchy, IssuedCertificate, KeyAlgorithm, PeerIdentity, PeerKind, PkiError, StaffRole,
};
use rustls::{CertificateError, ClientConfig, ServerConfig};
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// What the server saw of one connection.
#[derive(Debug)]
struct Seen {
    identity: Option<PeerIdentity>,
    resumed: bool,
}

/// One connection: the server accepts with `server`, the client connects with `client`. Returns
/// the server's verdict (the rustls error it refused with, if any).
async fn handshake(
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
) -> Result<Seen, rustls::Error> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let srv = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        match TlsAcceptor::from(server).accept(tcp).await {
            Ok(mut tls) => {
                let (_, conn) = tls.get_ref();
                let identity = conn
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|c| PeerIdentity::from_der(c).unwrap());
                let resumed = conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
                tls.write_all(b"ok").await.unwrap();
                tls.shutdown().await.unwrap();
                Ok(Seen { identity, resumed })
            }
            Err(e) => Err(e
                .get_ref()
                .and_then(|i| i.downcast_ref::<rustls::Error>())
                .cloned()
                .unwrap_or_else(|| panic!("not a rustls error: {e}"))),
        }
    });
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("api.hale.test").unwrap();
    // the client's own view does not matter: with TLS 1.3 it finishes before the server decides
    if let Ok(mut tls) = TlsConnector::from(client).connect(name, tcp).await {
        let mut buf = Vec::new();
        let _ = tls.read_to_end(&mut buf).await;
    }
    tokio::time::timeout(Duration::from_secs(10), srv)
        .await
        .unwrap()
        .unwrap()
}

struct Pki {
    h: Hierarchy,
    server_chain: Vec<CertificateDer<'static>>,
    server_key: PrivateKeyDer<'static>,
}

impl Pki {
    fn new() -> Pki {
        let h = hierarchy();
        let k = key(KeyAlgorithm::P256);
        let cert = h
            .server
            .issue_server_certificate(
                &k.csr_pem,
                &["api.hale.test"],
                &[IpAddr::V4(Ipv4Addr::LOCALHOST)],
                30 * DAY,
                SystemTime::now(),
            )
            .unwrap();
        Pki {
            server_chain: vec![cert.der, h.server.certificate_der().clone()],
            server_key: private_key_from_pem(&k.private_key_pem).unwrap(),
            h,
        }
    }

    fn listener(&self, domain: TrustDomain, anchors: &[CaRole]) -> ListenerTls {
        let anchors: Vec<_> = anchors
            .iter()
            .map(|r| self.h.get(*r).certificate_der().clone())
            .collect();
        ListenerTls::new(
            domain,
            &anchors,
            self.server_chain.clone(),
            self.server_key.clone_key(),
        )
        .unwrap()
    }

    fn crl(
        &self,
        role: CaRole,
        revoked: &[RevokedCertificate],
    ) -> CertificateRevocationListDer<'static> {
        self.h
            .get(role)
            .crl(revoked, 1, SystemTime::now() - HOUR, 7 * DAY)
            .unwrap()
            .der
    }

    fn device_api(&self) -> Arc<ServerConfig> {
        self.listener(TrustDomain::DeviceApi, &[CaRole::DeviceIssuing])
            .server_config(&[self.crl(CaRole::DeviceIssuing, &[])])
            .unwrap()
    }

    fn client(&self, cert: &IssuedCertificate, key_pem: &str) -> Arc<ClientConfig> {
        client_config(
            self.h.server.certificate_der().clone(),
            vec![cert.der.clone()],
            private_key_from_pem(key_pem).unwrap(),
        )
        .unwrap()
    }

    fn device(
        &self,
        alg: KeyAlgorithm,
        now: SystemTime,
        validity: Duration,
    ) -> (IssuedCertificate, Arc<ClientConfig>) {
        let k = key(alg);
        let c = self
            .h
            .device_issuing
            .issue_device_certificate(&k.csr_pem, "pump-0001", "HP-200", "SN0001", validity, now)
            .unwrap();
        let cfg = self.client(&c, &k.private_key_pem);
        (c, cfg)
    }
}

#[tokio::test]
async fn device_certificate_is_accepted_on_the_device_api() {
    let pki = Pki::new();
    for alg in [KeyAlgorithm::P256, KeyAlgorithm::Ed25519] {
        let (cert, client) = pki.device(alg, SystemTime::now(), 90 * DAY);
        let seen = handshake(pki.device_api(), client).await.unwrap();
        let id = seen.identity.unwrap();
        assert_eq!(id.kind, PeerKind::Device);
        assert_eq!(id.device_id(), Some("pump-0001"));
        assert_eq!(id.certificate_serial, cert.serial_hex);
    }
}

#[tokio::test]
async fn no_client_certificate_is_refused_on_the_device_api() {
    let pki = Pki::new();
    let client = client_config_without_certificate(pki.h.server.certificate_der().clone()).unwrap();
    let err = handshake(pki.device_api(), client).await.unwrap_err();
    assert_eq!(err, rustls::Error::NoCertificatesPresented);
}

#[tokio::test]
async fn certificate_from_another_pki_is_refused() {
    let pki = Pki::new();
    let other = Pki::new();
    // the client trusts our server CA but presents a certificate from a look-alike CA
    let k = key(KeyAlgorithm::P256);
    let c = other
        .h
        .device_issuing
        .issue_device_certificate(
            &k.csr_pem,
            "pump-0001",
            "HP-200",
            "SN0001",
            DAY,
            SystemTime::now(),
        )
        .unwrap();
    let err = handshake(pki.device_api(), pki.client(&c, &k.private_key_pem))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        rustls::Error::InvalidCertificate(CertificateError::BadSignature)
    );
}

#[tokio::test]
async fn technician_and_factory_certificates_are_refused_on_the_device_api() {
    let pki = Pki::new();
    let now = SystemTime::now();
    let k = key(KeyAlgorithm::P256);
    let t = pki
        .h
        .technician
        .issue_staff_certificate(&k.csr_pem, "alice", StaffRole::Technician, 8 * HOUR, now)
        .unwrap();
    let err = handshake(pki.device_api(), pki.client(&t, &k.private_key_pem))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
    );

    let f = pki
        .h
        .manufacturing
        .issue_factory_certificate(&k.csr_pem, "SN0001", "HP-200", YEAR, now)
        .unwrap();
    let err = handshake(pki.device_api(), pki.client(&f, &k.private_key_pem))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
    );
}

#[tokio::test]
async fn expired_device_certificate_is_refused() {
    let pki = Pki::new();
    let (cert, client) = pki.device(KeyAlgorithm::P256, SystemTime::now() - 3 * DAY, DAY);
    let err = handshake(pki.device_api(), client).await.unwrap_err();
    match err {
        rustls::Error::InvalidCertificate(CertificateError::ExpiredContext {
            not_after, ..
        }) => {
            assert_eq!(
                not_after.as_secs(),
                cert.not_after
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap()
                    .as_secs()
            )
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn revoked_certificate_is_refused_after_the_crl_reload_even_with_a_session_ticket() {
    let pki = Pki::new();
    let listener = pki.listener(TrustDomain::DeviceApi, &[CaRole::DeviceIssuing]);
    let holder = ReloadableServerConfig::new(
        listener
            .server_config(&[pki.crl(CaRole::DeviceIssuing, &[])])
            .unwrap(),
    );
    let (cert, client) = pki.device(KeyAlgorithm::P256, SystemTime::now(), 90 * DAY);
    let (other_cert, other_client) = pki.device(KeyAlgorithm::P256, SystemTime::now(), 90 * DAY);

    let first = handshake(holder.current(), client.clone()).await.unwrap();
    assert!(!first.resumed);
    // same config: the device resumes with its ticket, and its identity comes with the session
    let again = handshake(holder.current(), client.clone()).await.unwrap();
    assert!(again.resumed);
    assert_eq!(again.identity.unwrap().certificate_serial, cert.serial_hex);

    // revoke, reload
    let crl = pki.crl(
        CaRole::DeviceIssuing,
        &[RevokedCertificate {
            serial_hex: cert.serial_hex.clone(),
            revoked_at: SystemTime::now() - Duration::from_secs(60),
            reason: Some(RevocationReason::KeyCompromise),
        }],
    );
    holder.replace(listener.server_config(&[crl]).unwrap());

    // the client still holds a ticket from before the reload: it cannot resume past the CRL
    let err = handshake(holder.current(), client).await.unwrap_err();
    assert_eq!(
        err,
        rustls::Error::InvalidCertificate(CertificateError::Revoked)
    );
    // other devices are not affected
    let ok = handshake(holder.current(), other_client).await.unwrap();
    assert_eq!(
        ok.identity.unwrap().certificate_serial,
        other_cert.serial_hex
    );
}

#[tokio::test]
async fn crl_whose_distribution_point_does_not_match_locks_every_device_out() {
    let pki = Pki::new();
    let crl = pki
        .h
        .device_issuing
        .crl_with_idp_for_tests("https://elsewhere.invalid/x.crl", SystemTime::now(), DAY)
        .unwrap();
    let cfg = pki
        .listener(TrustDomain::DeviceApi, &[CaRole::DeviceIssuing])
        .server_config(&[crl.der])
        .unwrap();
    let (_, client) = pki.device(KeyAlgorithm::P256, SystemTime::now(), DAY);
    let err = handshake(cfg, client).await.unwrap_err();
    assert_eq!(
        err,
        rustls::Error::InvalidCertificate(CertificateError::UnknownRevocationStatus)
    );
}

#[tokio::test]
async fn expired_crl_is_refused() {
    let pki = Pki::new();
    let crl = pki
        .h
        .device_issuing
        .crl(&[], 1, SystemTime::now() - 2 * DAY, DAY)
        .unwrap();
    let cfg = pki
        .listener(TrustDomain::DeviceApi, &[CaRole::DeviceIssuing])
        .server_config(&[crl.der])
        .unwrap();
    let (_, client) = pki.device(KeyAlgorithm::P256, SystemTime::now(), DAY);
    let err = handshake(cfg, client).await.unwrap_err();
    assert!(
        matches!(
            err,
            rustls::Error::InvalidCertificate(
                CertificateError::ExpiredRevocationListContext { .. }
            )
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn enrollment_accepts_factory_and_device_certificates_and_token_clients() {
    let pki = Pki::new();
    let cfg = pki
        .listener(
            TrustDomain::Enrollment,
            &[CaRole::Manufacturing, CaRole::DeviceIssuing],
        )
        .server_config(&[
            pki.crl(CaRole::Manufacturing, &[]),
            pki.crl(CaRole::DeviceIssuing, &[]),
        ])
        .unwrap();
    let k = key(KeyAlgorithm::P256);
    let f = pki
        .h
        .manufacturing
        .issue_factory_certificate(&k.csr_pem, "SN0001", "HP-200", YEAR, SystemTime::now())
        .unwrap();
    let seen = handshake(cfg.clone(), pki.client(&f, &k.private_key_pem))
        .await
        .unwrap();
    assert_eq!(seen.identity.unwrap().kind, PeerKind::Factory);
    let (_, dev) = pki.device(KeyAlgorithm::P256, SystemTime::now(), DAY);
    let seen = handshake(cfg.clone(), dev).await.unwrap();
    assert_eq!(seen.identity.unwrap().kind, PeerKind::Device);
    let anon = client_config_without_certificate(pki.h.server.certificate_der().clone()).unwrap();
    let seen = handshake(cfg.clone(), anon).await.unwrap();
    assert!(seen.identity.is_none());
    // but not a technician
    let t = pki
        .h
        .technician
        .issue_staff_certificate(
            &k.csr_pem,
            "alice",
            StaffRole::Technician,
            HOUR,
            SystemTime::now(),
        )
        .unwrap();
    let err = handshake(cfg, pki.client(&t, &k.private_key_pem))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
    );
}

#[tokio::test]
async fn staff_listener_accepts_technicians_and_refuses_devices() {
    let pki = Pki::new();
    let cfg = pki
        .listener(TrustDomain::Staff, &[CaRole::Technician])
        .server_config(&[pki.crl(CaRole::Technician, &[])])
        .unwrap();
    let k = key(KeyAlgorithm::P256);
    let t = pki
        .h
        .technician
        .issue_staff_certificate(
            &k.csr_pem,
            "bob",
            StaffRole::Operator,
            HOUR,
            SystemTime::now(),
        )
        .unwrap();
    let seen = handshake(cfg.clone(), pki.client(&t, &k.private_key_pem))
        .await
        .unwrap();
    assert_eq!(seen.identity.unwrap().kind, PeerKind::Operator);
    let (_, dev) = pki.device(KeyAlgorithm::P256, SystemTime::now(), DAY);
    let err = handshake(cfg, dev).await.unwrap_err();
    assert_eq!(
        err,
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
    );
}

#[test]
fn listeners_refuse_the_root_and_foreign_anchors_and_missing_crls() {
    let pki = Pki::new();
    let err = ListenerTls::new(
        TrustDomain::DeviceApi,
        &[pki.h.root.certificate_der().clone()],
        pki.server_chain.clone(),
        pki.server_key.clone_key(),
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            PkiError::AnchorNotAllowed {
                domain: "device API",
                ca: CaRole::Root
            }
        ),
        "{err}"
    );
    let err = ListenerTls::new(
        TrustDomain::DeviceApi,
        &[pki.h.technician.certificate_der().clone()],
        pki.server_chain.clone(),
        pki.server_key.clone_key(),
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            PkiError::AnchorNotAllowed {
                ca: CaRole::Technician,
                ..
            }
        ),
        "{err}"
    );
    let err = pki
        .listener(TrustDomain::DeviceApi, &[CaRole::DeviceIssuing])
        .server_config(&[pki.crl(CaRole::Technician, &[])])
        .unwrap_err();
    assert!(
        matches!(
            err,
            PkiError::MissingCrl {
                ca: CaRole::DeviceIssuing
            }
        ),
        "{err}"
    );
    let err = ListenerTls::new(
        TrustDomain::Staff,
        &[],
        pki.server_chain.clone(),
        pki.server_key.clone_key(),
    )
    .unwrap_err();
    assert!(matches!(err, PkiError::NoAnchors), "{err}");
}
