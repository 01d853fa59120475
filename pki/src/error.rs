//! Errors of the PKI. Each names the check that failed and carries what a test or an operator
//! needs to see; enrollment-token errors are apart ([`crate::token::TokenError`]).

use crate::ca::CaRole;

/// Why the PKI refused or could not do something.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PkiError {
    /// The certificate signing request is not a well-formed PKCS#10 request.
    #[error("malformed certificate signing request: {0}")]
    CsrMalformed(String),
    /// The request's self-signature does not verify with the key it carries (proof of possession
    /// failed): the requester does not hold the private key.
    #[error("certificate signing request signature does not verify")]
    CsrSignatureInvalid,
    /// A public key of a kind we do not issue to (P-256 and ed25519 only).
    #[error("unsupported public key algorithm {oid}")]
    UnsupportedKeyAlgorithm { oid: String },
    /// A signature algorithm that does not match the key or that we do not accept.
    #[error("unsupported signature algorithm {oid}")]
    UnsupportedSignatureAlgorithm { oid: String },
    /// A name (device id, serial, model, person) outside `[A-Za-z0-9._-]{1,64}`.
    #[error("invalid {field} {value:?}: 1 to 64 of A-Z a-z 0-9 . _ -, not starting with . or -")]
    InvalidName { field: &'static str, value: String },
    /// A server certificate name that is neither a DNS name nor an IP address.
    #[error("invalid server name {0:?}")]
    InvalidServerName(String),
    /// A validity of zero, or one whose end is not representable.
    #[error("invalid validity of {secs} s: zero, or ending after 9999-12-31")]
    InvalidValidity { secs: u64 },
    /// A CRL base URL that is not an absolute `http://` or `https://` URL (without query or
    /// fragment): every certificate would carry a CRL location no client can fetch.
    #[error("invalid CRL base URL {0:?}: an absolute http:// or https:// URL without query or fragment, e.g. https://pki.example.com/crl/")]
    InvalidCrlUrl(String),
    /// A Server CA name constraint that is not a DNS name (no wildcards, no empty labels).
    #[error("invalid server DNS constraint {0:?}: a DNS name such as example.com (it permits the name and every name under it)")]
    InvalidNameConstraint(String),
    /// A server name the Server CA's name constraints do not permit: TLS clients would refuse
    /// the certificate.
    #[error("server name {name:?} is outside the Server CA's DNS constraints {permitted:?}")]
    NameNotPermitted {
        name: String,
        permitted: Vec<String>,
    },
    /// The issuing CA's certificate has ended: nothing it issues would be valid.
    #[error("the {ca} ended at {ca_end}: it issues nothing more")]
    IssuerExpired { ca: CaRole, ca_end: String },
    /// A validity longer than the profile allows (technician and operator certificates: one shift).
    #[error("validity of {requested_secs} s exceeds the profile's maximum of {max_secs} s")]
    ValidityTooLong { requested_secs: u64, max_secs: u64 },
    /// The operation needs another CA (e.g. device certificates come from the Device Issuing CA).
    #[error("this needs the {expected} but was given the {actual}")]
    WrongCa { expected: CaRole, actual: CaRole },
    /// A certificate is not one of our CA certificates.
    #[error("not a Hale CA certificate (subject {subject:?})")]
    NotACaCertificate { subject: String },
    /// A listener was configured with an anchor its trust domain must not trust.
    #[error("the {domain} listener does not trust the {ca}")]
    AnchorNotAllowed { domain: &'static str, ca: CaRole },
    /// A listener needs at least one anchor.
    #[error("a listener needs at least one CA to anchor on")]
    NoAnchors,
    /// A listener must be given a CRL for each CA it anchors on.
    #[error("no CRL for the {ca}")]
    MissingCrl { ca: CaRole },
    /// A CA file whose key does not belong to its certificate.
    #[error("the {ca} key does not match its certificate")]
    KeyMismatch { ca: CaRole },
    /// A CA file that cannot be read.
    #[error("malformed CA file: {0}")]
    CaFileMalformed(String),
    /// A certificate or CRL that cannot be parsed.
    #[error("malformed certificate: {0}")]
    CertificateMalformed(String),
    /// A certificate that does not follow any of our client profiles.
    #[error("certificate does not follow a Hale profile: {reason}")]
    NotOurProfile { reason: String },
    /// The certificate's identity URI says one kind, its issuer another (e.g. a device URI in a
    /// certificate from the Technician CA).
    #[error("identity {uri:?} cannot be issued by {issuer:?}")]
    IssuerMismatch { uri: String, issuer: String },
    /// A manufacturing manifest that cannot be read.
    #[error("malformed manufacturing manifest: {0}")]
    ManifestMalformed(String),
    /// No signature on the manifest verifies with the Manufacturing CA key.
    #[error("manufacturing manifest signature does not verify with the Manufacturing CA key")]
    ManifestSignatureInvalid,
    /// A serial listed twice in one manifest.
    #[error("serial {0:?} listed twice in the manufacturing manifest")]
    ManifestDuplicateSerial(String),
    /// A factory certificate whose serial is not in the manifest.
    #[error("serial {0:?} is not in the manufacturing manifest")]
    NotInManifest(String),
    /// A factory certificate whose key is not the one the manifest recorded for its serial.
    #[error("the key of {serial:?} is not the one in the manufacturing manifest")]
    ManifestKeyMismatch { serial: String },
    /// rcgen refused to build a certificate or CRL.
    #[error("certificate generation failed: {0}")]
    Generate(String),
    /// rustls refused a configuration.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// rustls refused a client-certificate verifier configuration.
    #[error("TLS client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// The operating system's random source failed.
    #[error("no randomness: {0}")]
    Randomness(String),
    /// Sealing or opening a key at rest (hale-repo's key files).
    #[error("key file: {0}")]
    KeyFile(#[from] hale_repo::RepoError),
}

impl From<rcgen::Error> for PkiError {
    fn from(e: rcgen::Error) -> Self {
        PkiError::Generate(e.to_string())
    }
}
