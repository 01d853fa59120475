//! The CA hierarchy (ARCHITECTURE §5):
//!
//! ```text
//! Device Root CA (offline, signing-tool)      pathlen 1, keyCertSign + cRLSign
//! ├─ Manufacturing CA   factory certificates   pathlen 0, EKU clientAuth
//! ├─ Device Issuing CA  operational certs      pathlen 0, EKU clientAuth
//! ├─ Technician CA      technicians, operators pathlen 0, EKU clientAuth
//! └─ Server CA          TLS server certs       pathlen 0, EKU serverAuth, optional DNS constraints
//! ```
//!
//! Every CA key is ECDSA P-256 and is kept at rest in hale-repo's key-file format (scrypt +
//! XChaCha20-Poly1305, the public part bound as associated data) inside a CA file that also holds
//! the certificate and the CRL URL. Every certificate gets a random serial and a CRL distribution
//! point equal to the issuing distribution point of its issuer's CRLs ([`crate::crl`]): a
//! mismatch there makes rustls refuse every certificate of that CA as "unknown revocation status".

use std::fmt;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CrlDistributionPoint, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, GeneralSubtree, IsCa, Issuer, KeyIdMethod, KeyUsagePurpose,
    NameConstraints, PublicKeyData, SignatureAlgorithm,
};
use rustls_pki_types::CertificateDer;
use serde_json::{json, Value};

use crate::x509::{self, random_serial, validity_window};
use crate::PkiError;

/// The organisation name in every Hale subject.
pub const ORGANIZATION: &str = "Hale";

/// The CAs of the hierarchy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CaRole {
    Root,
    Manufacturing,
    DeviceIssuing,
    Technician,
    Server,
}

impl CaRole {
    pub const ALL: [CaRole; 5] = [
        CaRole::Root,
        CaRole::Manufacturing,
        CaRole::DeviceIssuing,
        CaRole::Technician,
        CaRole::Server,
    ];

    /// The CA certificate's subject common name.
    pub fn common_name(self) -> &'static str {
        match self {
            CaRole::Root => "Hale Device Root CA",
            CaRole::Manufacturing => "Hale Manufacturing CA",
            CaRole::DeviceIssuing => "Hale Device Issuing CA",
            CaRole::Technician => "Hale Technician CA",
            CaRole::Server => "Hale Server CA",
        }
    }

    /// Short name for file names and CRL URLs.
    pub fn slug(self) -> &'static str {
        match self {
            CaRole::Root => "root",
            CaRole::Manufacturing => "manufacturing",
            CaRole::DeviceIssuing => "device-issuing",
            CaRole::Technician => "technician",
            CaRole::Server => "server",
        }
    }

    pub fn from_slug(s: &str) -> Option<Self> {
        CaRole::ALL.into_iter().find(|r| r.slug() == s)
    }

    pub fn from_common_name(cn: &str) -> Option<Self> {
        CaRole::ALL.into_iter().find(|r| r.common_name() == cn)
    }

    /// The CA's own subject (also the issuer name of everything it signs).
    pub(crate) fn distinguished_name(self) -> DistinguishedName {
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, ORGANIZATION);
        dn.push(DnType::CommonName, self.common_name());
        dn
    }

    /// The CA certificate profile (without validity, serial, CRL distribution point).
    fn params(self, server_dns_constraints: &[String]) -> Result<CertificateParams, PkiError> {
        let mut p = CertificateParams::default();
        p.distinguished_name = self.distinguished_name();
        p.key_identifier_method = KeyIdMethod::Sha256;
        p.use_authority_key_identifier_extension = self != CaRole::Root;
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        match self {
            CaRole::Root => p.is_ca = IsCa::Ca(BasicConstraints::Constrained(1)),
            CaRole::Manufacturing | CaRole::DeviceIssuing | CaRole::Technician => {
                p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
                p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            }
            CaRole::Server => {
                p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
                p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
                if !server_dns_constraints.is_empty() {
                    let permitted = server_dns_constraints
                        .iter()
                        .map(|d| GeneralSubtree::DnsName(d.clone()))
                        .collect();
                    p.name_constraints = Some(NameConstraints {
                        permitted_subtrees: permitted,
                        excluded_subtrees: Vec::new(),
                    });
                }
            }
        }
        Ok(p)
    }
}

impl fmt::Display for CaRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.common_name())
    }
}

/// A P-256 CA key as rcgen sees it: signs with the RustCrypto `p256` key hale-repo stores.
pub(crate) struct CaKey {
    key: p256::ecdsa::SigningKey,
    public: Vec<u8>,
}

impl CaKey {
    fn new(key: p256::ecdsa::SigningKey) -> Self {
        let public = key
            .verifying_key()
            .to_encoded_point(false)
            .as_bytes()
            .to_vec();
        CaKey { key, public }
    }
}

impl PublicKeyData for CaKey {
    fn der_bytes(&self) -> &[u8] {
        &self.public
    }
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

impl rcgen::SigningKey for CaKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        use p256::ecdsa::signature::Signer;
        let sig: p256::ecdsa::Signature = self.key.sign(msg);
        Ok(sig.to_der().as_bytes().to_vec())
    }
}

/// One CA: its role, certificate, CRL URL and (decrypted, in memory) key.
pub struct Ca {
    role: CaRole,
    cert_der: CertificateDer<'static>,
    crl_url: String,
    key: CaKey,
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca")
            .field("role", &self.role)
            .field("crl_url", &self.crl_url)
            .finish_non_exhaustive()
    }
}

const CA_FILE_FORMAT: &str = "hale-ca-v1";
/// scrypt cost of CA files (hale-repo's default for key files).
pub const CA_FILE_SCRYPT_LOG_N: u8 = 15;

impl Ca {
    pub fn role(&self) -> CaRole {
        self.role
    }

    /// The CA certificate (DER).
    pub fn certificate_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The CA certificate (PEM), for `cacerts`, trust stores and listeners.
    pub fn certificate_pem(&self) -> Result<String, PkiError> {
        x509::der_to_pem(&self.cert_der, "CERTIFICATE")
    }

    /// Where this CA's CRL is published; the CRL distribution point of every certificate it
    /// issues and the issuing distribution point of every CRL it signs.
    pub fn crl_url(&self) -> &str {
        &self.crl_url
    }

    /// The CA's public key in hale-repo's TUF key form (for manifests and audit records).
    pub(crate) fn signing_key(&self) -> hale_repo::SigningKey {
        hale_repo::SigningKey::EcdsaP256(self.key.key.clone())
    }

    pub(crate) fn issuer(&self) -> Issuer<'static, &CaKey> {
        let mut p = CertificateParams::default();
        p.distinguished_name = self.role.distinguished_name();
        p.key_identifier_method = KeyIdMethod::Sha256;
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        Issuer::new(p, &self.key)
    }

    /// When this CA's certificate ends (nothing it issues may outlive it).
    pub fn not_after(&self) -> Result<SystemTime, PkiError> {
        let c = x509::parse_certificate(&self.cert_der)?;
        Ok(c.tbs_certificate.validity.not_after.to_system_time())
    }

    /// When this CA's certificate begins: it issued nothing before, so a certificate whose
    /// validity starts earlier than this by more than [`crate::profile::BACKDATE`] is another
    /// CA's.
    pub fn not_before(&self) -> Result<SystemTime, PkiError> {
        let c = x509::parse_certificate(&self.cert_der)?;
        Ok(c.tbs_certificate.validity.not_before.to_system_time())
    }

    /// The DNS subtrees this CA's certificate permits (name constraints); empty: unconstrained.
    pub(crate) fn permitted_dns(&self) -> Result<Vec<String>, PkiError> {
        use x509_cert::ext::pkix::{name::GeneralName, NameConstraints};
        let c = x509::parse_certificate(&self.cert_der)?;
        let nc = c
            .tbs_certificate
            .get::<NameConstraints>()
            .map_err(|e| PkiError::CertificateMalformed(e.to_string()))?;
        Ok(nc
            .and_then(|(_, nc)| nc.permitted_subtrees)
            .unwrap_or_default()
            .iter()
            .filter_map(|t| match &t.base {
                GeneralName::DnsName(d) => Some(d.to_string()),
                _ => None,
            })
            .collect())
    }

    pub(crate) fn require(&self, expected: CaRole) -> Result<(), PkiError> {
        if self.role == expected {
            Ok(())
        } else {
            Err(PkiError::WrongCa {
                expected,
                actual: self.role,
            })
        }
    }

    /// The CA file: certificate, CRL URL and the key sealed under `passphrase` (hale-repo key
    /// file, scrypt N = 2^15).
    pub fn to_file(&self, passphrase: &[u8]) -> Result<Vec<u8>, PkiError> {
        self.to_file_with_cost(passphrase, CA_FILE_SCRYPT_LOG_N)
    }

    /// As [`to_file`](Self::to_file) with a chosen scrypt cost (tests use 10).
    pub fn to_file_with_cost(&self, passphrase: &[u8], log_n: u8) -> Result<Vec<u8>, PkiError> {
        let sealed = self
            .signing_key()
            .to_encrypted_file_with_cost(passphrase, log_n)?;
        let sealed: Value = serde_json::from_slice(&sealed)
            .map_err(|e| PkiError::CaFileMalformed(e.to_string()))?;
        let doc = json!({
            "format": CA_FILE_FORMAT,
            "role": self.role.slug(),
            "crl_url": self.crl_url,
            "certificate": self.certificate_pem()?,
            "key": sealed,
        });
        let mut out = serde_json::to_vec_pretty(&doc)
            .map_err(|e| PkiError::CaFileMalformed(e.to_string()))?;
        out.push(b'\n');
        Ok(out)
    }

    /// Open a CA file. Checks the certificate is the one of the role the file names and that the
    /// key belongs to it. A wrong passphrase is hale-repo's "wrong passphrase or damaged key file".
    pub fn from_file(bytes: &[u8], passphrase: &[u8]) -> Result<Ca, PkiError> {
        let bad = |m: &str| PkiError::CaFileMalformed(m.to_string());
        let doc: Value = serde_json::from_slice(bytes).map_err(|e| bad(&e.to_string()))?;
        if doc["format"] != CA_FILE_FORMAT {
            return Err(bad("not a Hale CA file"));
        }
        let role = doc["role"]
            .as_str()
            .and_then(CaRole::from_slug)
            .ok_or_else(|| bad("unknown role"))?;
        let crl_url = doc["crl_url"]
            .as_str()
            .ok_or_else(|| bad("no crl_url"))?
            .to_string();
        let cert_pem = doc["certificate"]
            .as_str()
            .ok_or_else(|| bad("no certificate"))?;
        let cert_der = x509::pem_to_der(cert_pem, "CERTIFICATE")?;
        let key_file = serde_json::to_vec(&doc["key"])
            .map_err(|e| PkiError::CaFileMalformed(e.to_string()))?;
        let key = match hale_repo::SigningKey::from_encrypted_file(&key_file, passphrase)? {
            hale_repo::SigningKey::EcdsaP256(k) => k,
            hale_repo::SigningKey::Ed25519(_) => return Err(bad("CA keys are P-256")),
        };
        Ca::from_parts(role, CertificateDer::from(cert_der), crl_url, key)
    }

    fn from_parts(
        role: CaRole,
        cert_der: CertificateDer<'static>,
        crl_url: String,
        key: p256::ecdsa::SigningKey,
    ) -> Result<Ca, PkiError> {
        let cert = x509::parse_certificate(&cert_der)?;
        let tbs = &cert.tbs_certificate;
        let cn = x509::common_name(&tbs.subject).unwrap_or_default();
        if CaRole::from_common_name(&cn) != Some(role) {
            return Err(PkiError::NotACaCertificate { subject: cn });
        }
        let key = CaKey::new(key);
        if tbs.subject_public_key_info.subject_public_key.raw_bytes() != key.public.as_slice() {
            return Err(PkiError::KeyMismatch { ca: role });
        }
        Ok(Ca {
            role,
            cert_der,
            crl_url,
            key,
        })
    }
}

/// How to build a hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HierarchyOptions {
    /// Validity of every CA certificate (sub-CAs end with the root).
    pub validity: Duration,
    /// CRLs are published at `<crl_base_url><slug>.crl` (e.g. `.../crl/device-issuing.crl`).
    pub crl_base_url: String,
    /// If not empty, the Server CA may only issue for these DNS subtrees (name constraints).
    pub server_dns_constraints: Vec<String>,
}

/// Default CRL location; a deployment sets its own with [`HierarchyOptions::crl_base_url`].
pub const DEFAULT_CRL_BASE_URL: &str = "https://pki.hale.invalid/crl/";

/// The five CAs. The root's key belongs offline (hale-sign's ceremony); the server holds only the
/// Device Issuing, Technician and Server CA files; the factory holds the Manufacturing CA file.
#[derive(Debug)]
pub struct Hierarchy {
    pub root: Ca,
    pub manufacturing: Ca,
    pub device_issuing: Ca,
    pub technician: Ca,
    pub server: Ca,
}

impl Hierarchy {
    /// A fresh hierarchy valid from `now` for `validity`, CRLs under [`DEFAULT_CRL_BASE_URL`].
    pub fn create(validity: Duration, now: SystemTime) -> Result<Hierarchy, PkiError> {
        Hierarchy::create_with(
            &HierarchyOptions {
                validity,
                crl_base_url: DEFAULT_CRL_BASE_URL.to_string(),
                server_dns_constraints: Vec::new(),
            },
            now,
        )
    }

    /// A fresh hierarchy as `opts` describe it. The CRL base URL must be an absolute `http://`
    /// or `https://` URL without query or fragment; a missing final `/` is added (CRLs are at
    /// `<base>/<slug>.crl`). Server DNS constraints must be DNS names.
    pub fn create_with(opts: &HierarchyOptions, now: SystemTime) -> Result<Hierarchy, PkiError> {
        let base = crl_base_url(&opts.crl_base_url)?;
        for d in &opts.server_dns_constraints {
            if !is_dns_name(d) {
                return Err(PkiError::InvalidNameConstraint(d.clone()));
            }
        }
        let (not_before, not_after) = validity_window(now, opts.validity)?;
        let url = |role: CaRole| format!("{base}{}.crl", role.slug());
        let root_key = CaKey::new(generate_p256()?);
        let mut rp = CaRole::Root.params(&[])?;
        rp.not_before = not_before;
        rp.not_after = not_after;
        rp.serial_number = Some(random_serial()?);
        let root_cert = rp.self_signed(&root_key)?;
        let root = Ca {
            role: CaRole::Root,
            cert_der: root_cert.der().clone(),
            crl_url: url(CaRole::Root),
            key: root_key,
        };
        let sub = |role: CaRole| -> Result<Ca, PkiError> {
            let key = CaKey::new(generate_p256()?);
            let mut p = role.params(&opts.server_dns_constraints)?;
            p.not_before = not_before;
            p.not_after = not_after;
            p.serial_number = Some(random_serial()?);
            p.crl_distribution_points = vec![CrlDistributionPoint {
                uris: vec![root.crl_url.clone()],
            }];
            let cert = p.signed_by(&key, &root.issuer())?;
            Ok(Ca {
                role,
                cert_der: cert.der().clone(),
                crl_url: url(role),
                key,
            })
        };
        Ok(Hierarchy {
            manufacturing: sub(CaRole::Manufacturing)?,
            device_issuing: sub(CaRole::DeviceIssuing)?,
            technician: sub(CaRole::Technician)?,
            server: sub(CaRole::Server)?,
            root,
        })
    }

    pub fn get(&self, role: CaRole) -> &Ca {
        match role {
            CaRole::Root => &self.root,
            CaRole::Manufacturing => &self.manufacturing,
            CaRole::DeviceIssuing => &self.device_issuing,
            CaRole::Technician => &self.technician,
            CaRole::Server => &self.server,
        }
    }
}

/// `url` checked and ending in `/`.
fn crl_base_url(url: &str) -> Result<String, PkiError> {
    let bad = || PkiError::InvalidCrlUrl(url.to_string());
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(bad)?;
    let host = rest.split('/').next().unwrap_or_default();
    let host_name =
        host.rsplit_once(':').map_or(
            host,
            |(h, port)| {
                if port.parse::<u16>().is_ok() {
                    h
                } else {
                    host
                }
            },
        );
    let host_ok = is_dns_name(host_name)
        || host_name.parse::<std::net::IpAddr>().is_ok()
        || host_name
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .is_some_and(|h| h.parse::<std::net::Ipv6Addr>().is_ok());
    if !host_ok
        || url
            .bytes()
            .any(|b| b <= b' ' || b >= 0x7f || matches!(b, b'?' | b'#' | b'"' | b'\\'))
    {
        return Err(bad());
    }
    Ok(if url.ends_with('/') {
        url.to_string()
    } else {
        format!("{url}/")
    })
}

/// A DNS name: dot-separated labels of letters, digits and inner hyphens, 1 to 63 bytes each,
/// at most 253 in all (no wildcard, no empty label).
pub(crate) fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn generate_p256() -> Result<p256::ecdsa::SigningKey, PkiError> {
    match hale_repo::SigningKey::generate(hale_repo::KeyKind::EcdsaP256)? {
        hale_repo::SigningKey::EcdsaP256(k) => Ok(k),
        hale_repo::SigningKey::Ed25519(_) => Err(PkiError::Randomness("wrong key kind".into())),
    }
}
