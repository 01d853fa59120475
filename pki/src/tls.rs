//! rustls configurations, one per trust domain, with ring as the only crypto provider.
//!
//! Each listener anchors on the **issuing CA it needs**, never on the shared root: with the root
//! as anchor, a technician or factory certificate was accepted on the device API. Each anchor must
//! come with its CRL; unknown revocation status is refused, and so is an expired CRL
//! (`enforce_revocation_expiration`). Since the anchor is the issuing CA, only the end entity has
//! a CRL to be checked against (`only_check_end_entity_revocation`).
//!
//! Hot reload: build a new [`ServerConfig`] with [`ListenerTls::server_config`] and swap it into
//! the [`ReloadableServerConfig`]; accept loops take [`ReloadableServerConfig::current`] for each
//! new connection. A new config has a new session-ticket key, so a client cannot resume a session
//! established before the reload with a certificate revoked since (resumption does not re-verify
//! the client certificate).

use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName};
use x509_cert::der::Decode;

use crate::ca::CaRole;
use crate::x509::{self, common_name};
use crate::PkiError;

/// The one crypto provider of Hale's TLS: ring.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A listener's trust domain: which client certificates it accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TrustDomain {
    /// Metadata, targets, reports: operational device certificates only.
    DeviceApi,
    /// EST enrollment: factory certificates (`simpleenroll`), current device certificates
    /// (`simplereenroll`), or no certificate at all (token enrollment: the handler must then
    /// demand a token).
    Enrollment,
    /// Technician and operator endpoints: Technician CA only; handlers check the role.
    Staff,
}

impl TrustDomain {
    pub fn name(self) -> &'static str {
        match self {
            TrustDomain::DeviceApi => "device API",
            TrustDomain::Enrollment => "enrollment",
            TrustDomain::Staff => "staff",
        }
    }

    /// The CAs this listener may anchor on.
    pub fn allowed_anchors(self) -> &'static [CaRole] {
        match self {
            TrustDomain::DeviceApi => &[CaRole::DeviceIssuing],
            TrustDomain::Enrollment => &[CaRole::Manufacturing, CaRole::DeviceIssuing],
            TrustDomain::Staff => &[CaRole::Technician],
        }
    }

    /// Whether a client may connect without a certificate.
    pub fn client_certificate_optional(self) -> bool {
        self == TrustDomain::Enrollment
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a listener's TLS is made of, minus the CRLs (which change).
#[derive(Debug)]
pub struct ListenerTls {
    domain: TrustDomain,
    anchors: Vec<(CaRole, CertificateDer<'static>)>,
    server_chain: Vec<CertificateDer<'static>>,
    server_key: PrivateKeyDer<'static>,
}

impl ListenerTls {
    /// `anchors`: the CA certificates to trust (each must be one the domain allows);
    /// `server_chain`: the server certificate then the Server CA certificate.
    pub fn new(
        domain: TrustDomain,
        anchors: &[CertificateDer<'static>],
        server_chain: Vec<CertificateDer<'static>>,
        server_key: PrivateKeyDer<'static>,
    ) -> Result<ListenerTls, PkiError> {
        let mut roles = Vec::new();
        for a in anchors {
            let cert = x509::parse_certificate(a)?;
            let cn = common_name(&cert.tbs_certificate.subject).unwrap_or_default();
            let role =
                CaRole::from_common_name(&cn).ok_or(PkiError::NotACaCertificate { subject: cn })?;
            if !domain.allowed_anchors().contains(&role) {
                return Err(PkiError::AnchorNotAllowed {
                    domain: domain.name(),
                    ca: role,
                });
            }
            roles.push((role, a.clone()));
        }
        if roles.is_empty() {
            return Err(PkiError::NoAnchors);
        }
        Ok(ListenerTls {
            domain,
            anchors: roles,
            server_chain,
            server_key,
        })
    }

    pub fn domain(&self) -> TrustDomain {
        self.domain
    }

    /// A server configuration with these CRLs; each anchor needs one (matched by issuer name).
    pub fn server_config(
        &self,
        crls: &[CertificateRevocationListDer<'static>],
    ) -> Result<Arc<ServerConfig>, PkiError> {
        let mut roots = RootCertStore::empty();
        for (role, anchor) in &self.anchors {
            let cert = x509::parse_certificate(anchor)?;
            let has_crl = crls.iter().any(|c| {
                x509_cert::crl::CertificateList::from_der(c)
                    .is_ok_and(|l| l.tbs_cert_list.issuer == cert.tbs_certificate.subject)
            });
            if !has_crl {
                return Err(PkiError::MissingCrl { ca: *role });
            }
            roots.add(anchor.clone())?;
        }
        let provider = provider();
        let mut verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .with_crls(crls.iter().cloned())
                .only_check_end_entity_revocation()
                .enforce_revocation_expiration();
        if self.domain.client_certificate_optional() {
            verifier = verifier.allow_unauthenticated();
        }
        let verifier = verifier.build()?;
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.server_chain.clone(), self.server_key.clone_key())?;
        // TLS 1.3 session tickets: a polling device resumes instead of a full handshake
        config.ticketer = rustls::crypto::ring::Ticketer::new()?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// The current server configuration of a listener, swappable while it runs.
#[derive(Debug)]
pub struct ReloadableServerConfig {
    current: RwLock<Arc<ServerConfig>>,
}

impl ReloadableServerConfig {
    pub fn new(config: Arc<ServerConfig>) -> Self {
        ReloadableServerConfig {
            current: RwLock::new(config),
        }
    }

    /// The configuration for the next connection (e.g. `TlsAcceptor::from(holder.current())`).
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Use `config` for every connection accepted from now on.
    pub fn replace(&self, config: Arc<ServerConfig>) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = config;
    }
}

/// A client configuration trusting only the Server CA, presenting `client_chain` (the agent, a
/// technician's tool, tests). Resumption on (rustls keeps tickets in memory).
pub fn client_config(
    server_ca: CertificateDer<'static>,
    client_chain: Vec<CertificateDer<'static>>,
    client_key: PrivateKeyDer<'static>,
) -> Result<Arc<ClientConfig>, PkiError> {
    Ok(Arc::new(
        client_builder(server_ca)?.with_client_auth_cert(client_chain, client_key)?,
    ))
}

/// A client configuration trusting only the Server CA, with no client certificate (token
/// enrollment).
pub fn client_config_without_certificate(
    server_ca: CertificateDer<'static>,
) -> Result<Arc<ClientConfig>, PkiError> {
    Ok(Arc::new(client_builder(server_ca)?.with_no_client_auth()))
}

fn client_builder(
    server_ca: CertificateDer<'static>,
) -> Result<rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert>, PkiError> {
    let mut roots = RootCertStore::empty();
    roots.add(server_ca)?;
    let provider = provider();
    let verifier =
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build()?;
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_webpki_verifier(verifier))
}

/// Parse a PEM private key (PKCS#8, as [`crate::generate_key_and_csr`] writes it).
pub fn private_key_from_pem(pem: &str) -> Result<PrivateKeyDer<'static>, PkiError> {
    let der = x509::pem_to_der(pem, "PRIVATE KEY")?;
    Ok(PrivateKeyDer::Pkcs8(der.into()))
}

/// Parse a PEM certificate.
pub fn certificate_from_pem(pem: &str) -> Result<CertificateDer<'static>, PkiError> {
    Ok(CertificateDer::from(x509::pem_to_der(pem, "CERTIFICATE")?))
}

/// When a certificate (DER) ends: its notAfter.
pub fn certificate_not_after(der: &[u8]) -> Result<std::time::SystemTime, PkiError> {
    let c = x509::parse_certificate(der)?;
    Ok(c.tbs_certificate.validity.not_after.to_system_time())
}

/// The names a server certificate (DER) is for, as clients connect to it: its DNS names and IP
/// addresses.
pub fn server_names(der: &[u8]) -> Result<Vec<ServerName<'static>>, PkiError> {
    use x509_cert::ext::pkix::name::GeneralName;
    use x509_cert::ext::pkix::SubjectAltName;
    const OID_SAN: x509_cert::der::asn1::ObjectIdentifier =
        x509_cert::der::asn1::ObjectIdentifier::new_unwrap("2.5.29.17");
    let c = x509::parse_certificate(der)?;
    let mut names = Vec::new();
    for e in c.tbs_certificate.extensions.iter().flatten() {
        if e.extn_id != OID_SAN {
            continue;
        }
        let san = SubjectAltName::from_der(e.extn_value.as_bytes())
            .map_err(|e| PkiError::CertificateMalformed(e.to_string()))?;
        for g in san.0 {
            match g {
                GeneralName::DnsName(d) => names.push(
                    ServerName::try_from(d.as_str().to_string())
                        .map_err(|_| PkiError::InvalidServerName(d.as_str().to_string()))?,
                ),
                GeneralName::IpAddress(ip) => {
                    let b = ip.as_bytes();
                    let ip = match b.len() {
                        4 => std::net::IpAddr::from(<[u8; 4]>::try_from(b).unwrap_or_default()),
                        16 => std::net::IpAddr::from(<[u8; 16]>::try_from(b).unwrap_or_default()),
                        _ => return Err(PkiError::InvalidServerName(hex::encode(b))),
                    };
                    names.push(ServerName::IpAddress(ip.into()));
                }
                _ => {}
            }
        }
    }
    Ok(names)
}

/// Would a client that trusts only `server_ca` (as pumps, staff tools and `hale-sign push` do)
/// accept `chain` (the server's certificate first) for each of `names` at `now`: issued by the
/// Server CA, valid then, for TLS servers, for those names? A certificate reload checks this
/// before the listeners present a new chain.
pub fn check_server_chain(
    chain: &[CertificateDer<'static>],
    server_ca: &CertificateDer<'static>,
    names: &[ServerName<'static>],
    now: std::time::SystemTime,
) -> Result<(), PkiError> {
    use rustls::client::danger::ServerCertVerifier;
    let (leaf, intermediates) = chain
        .split_first()
        .ok_or(PkiError::Tls(rustls::Error::NoCertificatesPresented))?;
    let mut roots = RootCertStore::empty();
    roots.add(server_ca.clone())?;
    let verifier =
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider()).build()?;
    let now = rustls_pki_types::UnixTime::since_unix_epoch(
        now.duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default(),
    );
    for name in names {
        verifier.verify_server_cert(leaf, intermediates, name, &[], now)?;
    }
    Ok(())
}

/// A certificate's (DER) serial number, lower-case hex.
pub fn certificate_serial(der: &[u8]) -> Result<String, PkiError> {
    let c = x509::parse_certificate(der)?;
    Ok(hex::encode(c.tbs_certificate.serial_number.as_bytes()))
}

/// Parse a PEM CRL.
pub fn crl_from_pem(pem: &str) -> Result<CertificateRevocationListDer<'static>, PkiError> {
    Ok(CertificateRevocationListDer::from(x509::pem_to_der(
        pem, "X509 CRL",
    )?))
}

/// Seal a PEM PKCS#8 private key (P-256 or ed25519, as [`crate::generate_key_and_csr`] makes
/// it) for storage at rest: hale-repo's key file (scrypt + XChaCha20-Poly1305). What
/// `hale-sign ca server-cert` writes as `server.key` and `hale-server` opens with
/// [`open_private_key`].
pub fn seal_private_key(pem: &str, passphrase: &[u8]) -> Result<Vec<u8>, PkiError> {
    seal_private_key_with_cost(pem, passphrase, crate::ca::CA_FILE_SCRYPT_LOG_N)
}

/// As [`seal_private_key`] with a chosen scrypt cost (tests use 10).
pub fn seal_private_key_with_cost(
    pem: &str,
    passphrase: &[u8],
    log_n: u8,
) -> Result<Vec<u8>, PkiError> {
    use ed25519_dalek::pkcs8::DecodePrivateKey as _;
    let der = zeroize::Zeroizing::new(x509::pem_to_der(pem, "PRIVATE KEY")?);
    let key = if let Ok(k) = p256::ecdsa::SigningKey::from_pkcs8_der(&der) {
        hale_repo::SigningKey::EcdsaP256(k)
    } else if let Ok(k) = ed25519_dalek::SigningKey::from_pkcs8_der(&der) {
        hale_repo::SigningKey::Ed25519(k)
    } else {
        return Err(PkiError::CertificateMalformed(
            "private key is neither P-256 nor ed25519 PKCS#8".into(),
        ));
    };
    Ok(key.to_encrypted_file_with_cost(passphrase, log_n)?)
}

/// Open a key sealed by [`seal_private_key`] as a rustls private key (PKCS#8 DER).
pub fn open_private_key(
    sealed: &[u8],
    passphrase: &[u8],
) -> Result<PrivateKeyDer<'static>, PkiError> {
    use ed25519_dalek::pkcs8::EncodePrivateKey as _;
    let der = match hale_repo::SigningKey::from_encrypted_file(sealed, passphrase)? {
        hale_repo::SigningKey::EcdsaP256(k) => p256::pkcs8::EncodePrivateKey::to_pkcs8_der(&k),
        hale_repo::SigningKey::Ed25519(k) => k.to_pkcs8_der(),
    }
    .map_err(|e| PkiError::CertificateMalformed(format!("private key: {e}")))?;
    Ok(PrivateKeyDer::Pkcs8(der.as_bytes().to_vec().into()))
}
