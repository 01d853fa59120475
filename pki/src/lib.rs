//! # hale-pki: device identity
//!
//! The PKI logic that `hale-sign` (offline CA ceremony, factory command), `hale-server`
//! (enrollment, mTLS listeners, revocation) and `hale-agent` (key and CSR) share. See
//! ARCHITECTURE §5 for the design and the pitfalls each module defends against:
//!
//! - [`ca`]: the hierarchy (root → Manufacturing, Device Issuing, Technician, Server), CA files
//!   with keys sealed at rest (hale-repo's scrypt + XChaCha20-Poly1305 key files).
//! - [`csr`]: verifying a CSR's self-signature and taking only its public key; making a CSR.
//! - [`profile`]: issuing by profile, never as requested (random serials, `CA:FALSE`, one EKU).
//! - [`manifest`]: the signed manufacturing manifest (serial, model, key hash).
//! - [`identity`]: the verified peer certificate → [`identity::PeerIdentity`].
//! - [`crl`]: CRLs whose issuing distribution point matches the certificates.
//! - [`tls`]: rustls configurations per trust domain (one anchor per listener, CRLs enforced,
//!   hot reload), ring as the only crypto provider.
//! - [`token`]: single-use, expiring, per-serial enrollment tokens stored only as a hash.
//!
//! Nothing here reads a clock, a file or a socket: `now` and bytes come in.

pub mod ca;
pub mod crl;
pub mod csr;
mod error;
pub mod identity;
pub mod manifest;
pub mod profile;
pub mod tls;
pub mod token;
mod x509;

pub use ca::{Ca, CaRole, Hierarchy, HierarchyOptions};
pub use csr::{generate_key_and_csr, KeyAlgorithm, KeyAndCsr, RequestedKey};
pub use error::PkiError;
pub use identity::{PeerIdentity, PeerKind};
pub use manifest::{Manifest, ManifestEntry};
pub use profile::{IssuedCertificate, StaffRole};
pub use token::{Token, TokenError, TokenRecord};
pub use x509::{check_name, spki_sha256_of_certificate, utc};
