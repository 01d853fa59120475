//! Device identity on the server: device records, EST enrollment and renewal, enrollment tokens,
//! manufacturing manifests, revocation and the Device Issuing CA's CRL.
//!
//! Everything here is synchronous and takes `now` as a parameter; HTTP handlers call it from
//! `spawn_blocking`. Changes are serialised by one lock and written in one atomic sled batch (a
//! redeemed token, the device record, the certificate index and a new CRL commit together or not
//! at all), then recorded in the audit log.
//!
//! Threats and what answers them (see `docs/pki.md` for the contract):
//! - *A CSR that asks for more* (`CA:TRUE`, other names): refused with `csr_requests_ca` before
//!   anything is read or written; otherwise only its public key is used ([`hale_pki::profile`]).
//! - *A stolen factory certificate of a device the factory never made*: the serial and key must be
//!   in an imported, Manufacturing-CA-signed manifest.
//! - *A leaked or replayed enrollment token*: stored as a hash, single use (the redemption commits
//!   with the certificate), expiring, bound to one serial.
//! - *A revoked, superseded or decommissioned device certificate*: every device request checks the
//!   record (immediate); the CRL that the listeners load makes new handshakes fail too.

use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hale_pki::crl::{RevocationReason, RevokedCertificate};
use hale_pki::csr::CsrSummary;
use hale_pki::manifest::{self, Manifest, ManifestEntry};
use hale_pki::token::token_hash;
use hale_pki::{Ca, PeerIdentity, PeerKind, PkiError, Token, TokenError, TokenRecord};
use hyper::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::audit::Audit;
use crate::store::StoreError;

/// Largest CSR body accepted.
pub const MAX_CSR_BYTES: usize = 8 << 10;
/// Events kept in a device record (the audit log keeps all of them).
pub const MAX_HISTORY: usize = 32;
/// Devices per page of the staff listing.
pub const MAX_PAGE: usize = 1000;
/// Longest enrollment token lifetime (30 days), whoever issues it.
pub const MAX_TOKEN_TTL: u64 = 30 * 86_400;

/// Why an identity operation was refused. Each variant has a stable code ([`code`](Self::code)).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    #[error("{0}")]
    ClientCertificateRequired(String),
    #[error("serial {0:?} is not in any imported manufacturing manifest")]
    NotInManifest(String),
    #[error("the key or model of {0:?} is not the one in the manufacturing manifest")]
    ManifestKeyMismatch(String),
    #[error("unknown enrollment token")]
    TokenInvalid,
    #[error("enrollment token already used at {redeemed_at} (unix seconds)")]
    TokenUsed { redeemed_at: u64 },
    #[error("enrollment token expired at {expired_at} (unix seconds)")]
    TokenExpired { expired_at: u64 },
    #[error("enrollment token is for serial {bound:?}, not {presented:?}")]
    TokenWrongSerial { bound: String, presented: String },
    #[error("bad certificate signing request: {0}")]
    BadCsr(String),
    #[error("the certificate signing request asks for a CA certificate")]
    CsrRequestsCa,
    #[error("{0}")]
    IdentityMismatch(String),
    #[error("device {0:?} is not enrolled")]
    DeviceUnknown(String),
    #[error("device {0:?} is quarantined")]
    DeviceQuarantined(String),
    #[error("device {0:?} is decommissioned")]
    DeviceDecommissioned(String),
    #[error(
        "certificate {serial} is not the device's current certificate (revoked or superseded)"
    )]
    CertificateRevoked { serial: String },
    /// The loaded CRL of the CA that issued the peer's certificate has expired: a connection
    /// opened (or a session resumed) before it did is refused as a new handshake is.
    #[error("the {ca} CRL expired at {expired_at} (unix seconds): its certificates are refused until a current CRL is loaded")]
    CrlExpired { ca: String, expired_at: u64 },
    #[error(
        "certificate {serial} is valid from {not_before} to {not_after} (unix seconds), not at {now}"
    )]
    CertificateExpired {
        serial: String,
        not_before: u64,
        not_after: u64,
        now: u64,
    },
    /// `retry_after` is the answer's `Retry-After` (RFC 9110 §10.2.3): the whole seconds from
    /// the time of the request until `earliest`, rounded up, at least 1.
    #[error("certificate {serial} may be renewed or replaced from {earliest} (unix seconds) on")]
    RenewalTooEarly {
        serial: String,
        earliest: u64,
        retry_after: u64,
    },
    #[error("no rollout for the image {0}")]
    RolloutUnknown(String),
    #[error("no certificate with serial {0}")]
    CertificateUnknown(String),
    #[error("a {role} may not {action}")]
    RoleForbidden { role: String, action: &'static str },
    #[error("{0}")]
    BadRequest(String),
    #[error("manufacturing manifest refused: {0}")]
    BadManifest(String),
    #[error("CRL refused: {0}")]
    BadCrl(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl IdentityError {
    /// The stable error code of the JSON answer.
    pub fn code(&self) -> &'static str {
        match self {
            IdentityError::ClientCertificateRequired(_) => "client_certificate_required",
            IdentityError::NotInManifest(_) => "not_in_manifest",
            IdentityError::ManifestKeyMismatch(_) => "manifest_key_mismatch",
            IdentityError::TokenInvalid => "token_invalid",
            IdentityError::TokenUsed { .. } => "token_used",
            IdentityError::TokenExpired { .. } => "token_expired",
            IdentityError::TokenWrongSerial { .. } => "token_wrong_serial",
            IdentityError::BadCsr(_) => "bad_csr",
            IdentityError::CsrRequestsCa => "csr_requests_ca",
            IdentityError::IdentityMismatch(_) => "identity_mismatch",
            IdentityError::DeviceUnknown(_) => "device_unknown",
            IdentityError::DeviceQuarantined(_) => "device_quarantined",
            IdentityError::DeviceDecommissioned(_) => "device_decommissioned",
            IdentityError::CertificateRevoked { .. } => "certificate_revoked",
            IdentityError::CrlExpired { .. } => "crl_expired",
            IdentityError::CertificateExpired { .. } => "certificate_expired",
            IdentityError::RenewalTooEarly { .. } => "renewal_too_early",
            IdentityError::CertificateUnknown(_) => "certificate_unknown",
            IdentityError::RolloutUnknown(_) => "rollout_unknown",
            IdentityError::RoleForbidden { .. } => "role_forbidden",
            IdentityError::BadRequest(_) => "bad_request",
            IdentityError::BadManifest(_) => "bad_manifest",
            IdentityError::BadCrl(_) => "bad_crl",
            IdentityError::Internal(_) => "internal",
        }
    }

    /// The HTTP status of the JSON answer.
    pub fn status(&self) -> StatusCode {
        match self {
            IdentityError::ClientCertificateRequired(_)
            | IdentityError::TokenInvalid
            | IdentityError::TokenUsed { .. }
            | IdentityError::TokenExpired { .. } => StatusCode::UNAUTHORIZED,
            IdentityError::NotInManifest(_)
            | IdentityError::ManifestKeyMismatch(_)
            | IdentityError::TokenWrongSerial { .. }
            | IdentityError::IdentityMismatch(_)
            | IdentityError::DeviceQuarantined(_)
            | IdentityError::DeviceDecommissioned(_)
            | IdentityError::CertificateRevoked { .. }
            | IdentityError::CrlExpired { .. }
            | IdentityError::CertificateExpired { .. }
            | IdentityError::RoleForbidden { .. } => StatusCode::FORBIDDEN,
            IdentityError::DeviceUnknown(_)
            | IdentityError::CertificateUnknown(_)
            | IdentityError::RolloutUnknown(_) => StatusCode::NOT_FOUND,
            IdentityError::BadCsr(_)
            | IdentityError::CsrRequestsCa
            | IdentityError::BadRequest(_)
            | IdentityError::BadManifest(_)
            | IdentityError::BadCrl(_) => StatusCode::BAD_REQUEST,
            IdentityError::RenewalTooEarly { .. } => StatusCode::TOO_MANY_REQUESTS,
            IdentityError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The seconds the client should wait before it asks again (the answer's `Retry-After`),
    /// for the refusals that end on their own.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            IdentityError::RenewalTooEarly { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }
}

impl From<StoreError> for IdentityError {
    fn from(e: StoreError) -> Self {
        IdentityError::Internal(e.to_string())
    }
}

impl From<crate::audit::AuditError> for IdentityError {
    fn from(e: crate::audit::AuditError) -> Self {
        IdentityError::Internal(format!("audit log: {e}"))
    }
}

impl From<sled::Error> for IdentityError {
    fn from(e: sled::Error) -> Self {
        IdentityError::Internal(e.to_string())
    }
}

impl From<TokenError> for IdentityError {
    fn from(e: TokenError) -> Self {
        match e {
            TokenError::Unknown => IdentityError::TokenInvalid,
            TokenError::Reused { redeemed_at } => IdentityError::TokenUsed { redeemed_at },
            TokenError::WrongSerial { bound, presented } => {
                IdentityError::TokenWrongSerial { bound, presented }
            }
            TokenError::Expired { expired_at } => IdentityError::TokenExpired { expired_at },
            other => IdentityError::TokenInvalid.with_log(&other.to_string()),
        }
    }
}

impl IdentityError {
    fn with_log(self, detail: &str) -> Self {
        tracing::warn!(%detail, "token refused");
        self
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn internal(e: impl std::fmt::Display) -> IdentityError {
    IdentityError::Internal(e.to_string())
}

/// Is `peer`'s certificate valid at `now` ([`PeerIdentity::valid_at`], the handshake's rule)?
/// The handshake checked it when the connection opened; every request that the certificate
/// authorizes checks it again, so a kept-alive connection does not outlive its certificate.
pub fn check_validity(peer: &PeerIdentity, now: SystemTime) -> Result<(), IdentityError> {
    if !peer.valid_at(now) {
        return Err(IdentityError::CertificateExpired {
            serial: peer.certificate_serial.clone(),
            not_before: unix(peer.not_before),
            not_after: unix(peer.not_after),
            now: unix(now),
        });
    }
    Ok(())
}

// --- records ---------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceStatus {
    Active,
    Quarantined,
    Decommissioned,
}

/// The certificate a device currently holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateRef {
    pub serial: String,
    pub not_before: u64,
    pub not_after: u64,
    /// The hex sha256 of the SubjectPublicKeyInfo of the Device Issuing CA that issued it (the
    /// key its signature verifies with); absent in a record written before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer_spki_sha256: Option<String>,
}

/// A current certificate is superseded by the device itself (renewal, factory certificate)
/// only once it is `min_age` old: each supersession adds a CRL entry until the certificate
/// expires, and the CRL is re-signed and reloaded under the lock, so one device may not grow it
/// without bound. Devices renew at 2/3 of the lifetime, past the renewal minimum.
fn check_age(
    current: &CertificateRef,
    min_age: Duration,
    now: SystemTime,
) -> Result<(), IdentityError> {
    let earliest = current.not_before.saturating_add(min_age.as_secs());
    if unix(now) < earliest {
        // `now` is before the whole second `earliest`: the wait is positive, and whole seconds
        // rounded up so that a client waiting that long is not refused again
        let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
        let wait = Duration::from_secs(earliest).saturating_sub(since_epoch);
        let retry_after = wait
            .as_secs()
            .saturating_add(u64::from(wait.subsec_nanos() > 0));
        return Err(IdentityError::RenewalTooEarly {
            serial: current.serial.clone(),
            earliest,
            retry_after: retry_after.max(1),
        });
    }
    Ok(())
}

/// The Device Issuing CA loaded now, as [`Identity::issued_by_loaded_ca`] tells its certificates.
#[derive(Debug, Clone)]
struct LoadedCa {
    /// hex sha256 of its SubjectPublicKeyInfo ([`CertificateRef::issuer_spki_sha256`])
    spki_sha256: String,
    /// its certificate's notBefore (unix seconds)
    not_before: u64,
}

impl LoadedCa {
    fn of(ca: &Ca) -> Result<LoadedCa, IdentityError> {
        Ok(LoadedCa {
            spki_sha256: hex::encode(
                hale_pki::spki_sha256_of_certificate(ca.certificate_der()).map_err(internal)?,
            ),
            not_before: unix(ca.not_before().map_err(internal)?),
        })
    }

    /// Whether `c` may have been issued by this CA. Its record names the issuer's key since
    /// 2026-11-25; an older one is this CA's unless it begins before this CA did, by more than
    /// the backdating every certificate gets ([`hale_pki::profile::BACKDATE`]).
    fn may_have_issued(&self, c: &CertificateRef) -> bool {
        match &c.issuer_spki_sha256 {
            Some(key) => *key == self.spki_sha256,
            None => {
                c.not_before
                    .saturating_add(hale_pki::profile::BACKDATE.as_secs())
                    >= self.not_before
            }
        }
    }
}

/// Staff actors are `<role>:<certificate name>` ([`crate::identity_http`]); the CLI is `cli`.
fn is_technician(actor: &str) -> bool {
    actor.starts_with("technician:")
}

/// How the audit log names an enrollment token: the start of its hash (the stored key), as
/// `hale-server token list` names operator tokens. The `enroll-token` record that issued it and
/// the `enroll` record that redeemed it carry the same.
fn token_id(hash: &str) -> &str {
    hash.get(..16).unwrap_or(hash)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEvent {
    pub time: u64,
    pub event: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
    pub actor: String,
    /// why, as the staff member said (quarantine, reactivate, decommission)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What the server knows about one device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRecord {
    pub id: String,
    pub serial: String,
    pub model: String,
    pub status: DeviceStatus,
    pub certificate: Option<CertificateRef>,
    pub enrolled_at: u64,
    pub updated_at: u64,
    pub history: Vec<HistoryEvent>,
}

impl DeviceRecord {
    /// The certificate the device holds at `now`: not revoked (a revocation clears it), not
    /// expired.
    fn current_certificate(&self, now: SystemTime) -> Option<&CertificateRef> {
        self.certificate
            .as_ref()
            .filter(|c| c.not_after > unix(now))
    }

    fn event(&mut self, now: u64, event: &str, certificate: Option<&str>, actor: &str) {
        self.updated_at = now;
        self.history.push(HistoryEvent {
            time: now,
            event: event.to_string(),
            certificate: certificate.map(str::to_string),
            actor: actor.to_string(),
            reason: None,
        });
        if self.history.len() > MAX_HISTORY {
            let extra = self.history.len() - MAX_HISTORY;
            self.history.drain(..extra);
        }
    }
}

/// An enrollment token as stored: the hash record plus what the certificate will carry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredToken {
    pub record: TokenRecord,
    pub model: String,
    pub issued_by: String,
}

/// A revoked certificate, kept until it would have expired anyway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokedEntry {
    pub serial: String,
    pub device: String,
    pub revoked_at: u64,
    pub not_after: u64,
    /// `superseded`, `key_compromise`, `cessation_of_operation` or `unspecified`.
    pub reason: String,
}

/// An issued certificate: which device it belongs to and until when it is valid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateIndex {
    pub device: String,
    pub not_after: u64,
}

/// The Device Issuing CA's current CRL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrlState {
    pub number: u64,
    pub this_update: u64,
    pub next_update: u64,
    #[serde(with = "hex_bytes")]
    pub der: Vec<u8>,
}

mod hex_bytes {
    pub fn serialize<S: serde::Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(b))
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s: String = serde::Deserialize::deserialize(d)?;
        hex::decode(s).map_err(serde::de::Error::custom)
    }
}

// --- storage -----------------------------------------------------------------------------------

/// Writes that commit together.
#[derive(Debug, Default)]
pub struct IdentityBatch {
    pub devices: Vec<DeviceRecord>,
    pub tokens: Vec<StoredToken>,
    pub manifest: Vec<ManifestEntry>,
    pub certificates: Vec<(String, CertificateIndex)>,
    pub revoked: Vec<RevokedEntry>,
    pub unrevoked: Vec<String>,
    pub crl: Option<CrlState>,
    /// The audit record of the change (`seq`, its bytes), written in the same transaction:
    /// the change and its record are stored both or neither ([`Identity`]'s changes all carry
    /// one; the CRL's scheduled re-signing none).
    pub audit: Option<(u64, Vec<u8>)>,
}

/// Device-identity storage, behind a trait like [`crate::store::Store`] (a SQL backend later).
pub trait IdentityStore: Send + Sync + std::fmt::Debug + 'static {
    fn device(&self, id: &str) -> Result<Option<DeviceRecord>, IdentityError>;
    fn devices(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DeviceRecord>, IdentityError>;
    fn token(&self, hash: &str) -> Result<Option<StoredToken>, IdentityError>;
    fn manifest_entry(&self, serial: &str) -> Result<Option<ManifestEntry>, IdentityError>;
    fn certificate(&self, serial: &str) -> Result<Option<CertificateIndex>, IdentityError>;
    fn revoked(&self) -> Result<Vec<RevokedEntry>, IdentityError>;
    fn crl(&self) -> Result<Option<CrlState>, IdentityError>;
    /// Apply `batch`, with its audit record if it has one, atomically and durably. An audit
    /// `seq` already taken refuses the whole batch.
    fn commit(&self, batch: IdentityBatch) -> Result<(), IdentityError>;
}

/// sled: one tree `identity`, keys prefixed by kind (`d/` devices, `t/` token hashes, `m/`
/// manifest serials, `c/` certificate serials, `r/` revoked serials, `crl` the CRL), so one
/// `apply_batch` is atomic across them; a batch with its audit record is one transaction over
/// this tree and the audit chain's.
#[derive(Debug, Clone)]
pub struct SledIdentityStore {
    db: sled::Db,
    tree: sled::Tree,
    /// [`crate::store::SledStore`]'s audit tree
    audit: sled::Tree,
}

impl SledIdentityStore {
    pub fn new(store: &crate::store::SledStore) -> Result<Self, StoreError> {
        Ok(SledIdentityStore {
            db: store.db().clone(),
            tree: store.open_tree("identity")?,
            audit: store.open_tree(crate::store::AUDIT_TREE)?,
        })
    }

    fn get<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>, IdentityError> {
        match self.tree.get(key.as_bytes())? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|e| internal(format!("record {key}: {e}"))),
        }
    }
}

fn put<T: Serialize>(b: &mut sled::Batch, key: String, v: &T) -> Result<(), IdentityError> {
    b.insert(key.as_bytes(), serde_json::to_vec(v).map_err(internal)?);
    Ok(())
}

impl IdentityStore for SledIdentityStore {
    fn device(&self, id: &str) -> Result<Option<DeviceRecord>, IdentityError> {
        self.get(&format!("d/{id}"))
    }

    fn devices(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DeviceRecord>, IdentityError> {
        let start = match after {
            Some(a) => std::ops::Bound::Excluded(format!("d/{a}").into_bytes()),
            None => std::ops::Bound::Included(b"d/".to_vec()),
        };
        let mut out = Vec::new();
        for kv in self
            .tree
            .range::<Vec<u8>, _>((start, std::ops::Bound::Excluded(b"d0".to_vec())))
            .take(limit)
        {
            let (_, v) = kv?;
            out.push(serde_json::from_slice(&v).map_err(internal)?);
        }
        Ok(out)
    }

    fn token(&self, hash: &str) -> Result<Option<StoredToken>, IdentityError> {
        self.get(&format!("t/{hash}"))
    }

    fn manifest_entry(&self, serial: &str) -> Result<Option<ManifestEntry>, IdentityError> {
        self.get(&format!("m/{serial}"))
    }

    fn certificate(&self, serial: &str) -> Result<Option<CertificateIndex>, IdentityError> {
        self.get(&format!("c/{serial}"))
    }

    fn revoked(&self) -> Result<Vec<RevokedEntry>, IdentityError> {
        let mut out = Vec::new();
        for kv in self.tree.scan_prefix(b"r/") {
            let (_, v) = kv?;
            out.push(serde_json::from_slice(&v).map_err(internal)?);
        }
        Ok(out)
    }

    fn crl(&self) -> Result<Option<CrlState>, IdentityError> {
        self.get("crl")
    }

    fn commit(&self, batch: IdentityBatch) -> Result<(), IdentityError> {
        let mut b = sled::Batch::default();
        for d in &batch.devices {
            put(&mut b, format!("d/{}", d.id), d)?;
        }
        for t in &batch.tokens {
            put(&mut b, format!("t/{}", t.record.hash), t)?;
        }
        for m in &batch.manifest {
            put(&mut b, format!("m/{}", m.serial), m)?;
        }
        for (serial, c) in &batch.certificates {
            put(&mut b, format!("c/{serial}"), c)?;
        }
        for r in &batch.revoked {
            put(&mut b, format!("r/{}", r.serial), r)?;
        }
        for s in &batch.unrevoked {
            b.remove(format!("r/{s}").as_bytes());
        }
        if let Some(c) = &batch.crl {
            put(&mut b, "crl".to_string(), c)?;
        }
        match &batch.audit {
            None => self.tree.apply_batch(b)?,
            Some((seq, record)) => {
                use sled::transaction::{abort, TransactionError};
                use sled::Transactional;
                let key = seq.to_be_bytes();
                (&self.tree, &self.audit)
                    .transaction(|(tree, audit)| {
                        if audit.get(key)?.is_some() {
                            return abort(StoreError::AuditConflict(*seq));
                        }
                        tree.apply_batch(&b)?;
                        audit.insert(&key, record.as_slice())?;
                        Ok(())
                    })
                    .map_err(|e| match e {
                        TransactionError::Abort(e) => IdentityError::from(e),
                        TransactionError::Storage(e) => IdentityError::from(e),
                    })?;
            }
        }
        self.db.flush()?;
        Ok(())
    }
}

// --- the service -------------------------------------------------------------------------------

/// Settings of the identity service.
#[derive(Debug, Clone)]
pub struct IdentitySettings {
    /// Validity of operational device certificates.
    pub device_certificate_validity: Duration,
    /// Lifetime of the Device Issuing CA's CRL (re-signed after half of it).
    pub device_crl_lifetime: Duration,
    /// Youngest current certificate (from its notBefore) that `simplereenroll` or `simpleenroll`
    /// with the factory certificate may supersede.
    pub device_renewal_min_age: Duration,
    /// Youngest current certificate that `simpleenroll` with the factory certificate may
    /// supersede (shorter: the device may have lost its operational key or a renewal answer).
    pub device_factory_reenroll_min_age: Duration,
}

/// The TLS listeners: told when the Device Issuing CA's CRL changed (they reload), and asked
/// about the Manufacturing CA CRL they loaded.
pub trait CrlListener: Send + Sync + std::fmt::Debug {
    fn device_crl_changed(&self, crl_der: &[u8]);
    /// Is this factory certificate (hex serial) on the loaded Manufacturing CA CRL? The handshake
    /// checks it when a connection opens; `simpleenroll` checks it again on every request, for
    /// connections that were open when the CRL arrived.
    fn factory_certificate_revoked(&self, certificate_serial: &str) -> bool;
    /// When the loaded Manufacturing CA CRL expired (unix seconds), if it has at `now`: the
    /// handshake then refuses every factory certificate, and `simpleenroll` refuses connections
    /// and resumed sessions from before.
    fn factory_crl_expired(&self, now: SystemTime) -> Option<u64>;
}

/// What an enrollment returns.
#[derive(Debug, Clone)]
pub struct Enrolled {
    pub record: DeviceRecord,
    /// PEM: the operational certificate, then the Device Issuing CA certificate.
    pub chain_pem: String,
}

/// How a caller of `simpleenroll` authenticated.
#[derive(Debug, Clone, Copy)]
pub enum EnrollAuth<'a> {
    Token(&'a str),
    Certificate(Option<&'a PeerIdentity>),
}

/// The identity service. `ca` (the Device Issuing CA) is needed to enroll and to sign the CRL; CLI
/// commands that only store tokens or manifests run without it.
#[derive(Debug)]
pub struct Identity {
    store: Arc<dyn IdentityStore>,
    audit: Audit,
    ca: Option<Ca>,
    /// `ca`'s key and start, to tell the certificates it issued
    loaded_ca: Option<LoadedCa>,
    /// PEM of the Device Issuing CA then the root (`cacerts`).
    cacerts_pem: String,
    manufacturing_der: Option<Vec<u8>>,
    settings: IdentitySettings,
    lock: Mutex<()>,
    crl: RwLock<Option<Arc<CrlState>>>,
    listener: OnceLock<Arc<dyn CrlListener>>,
}

impl Identity {
    pub fn new(
        store: Arc<dyn IdentityStore>,
        audit: Audit,
        ca: Option<Ca>,
        root_pem: Option<&str>,
        manufacturing_der: Option<Vec<u8>>,
        settings: IdentitySettings,
    ) -> Result<Identity, IdentityError> {
        let mut cacerts_pem = String::new();
        if let Some(ca) = &ca {
            cacerts_pem.push_str(&ca.certificate_pem().map_err(internal)?);
        }
        if let Some(r) = root_pem {
            cacerts_pem.push_str(r);
        }
        let crl = store.crl()?.map(Arc::new);
        let loaded_ca = ca.as_ref().map(LoadedCa::of).transpose()?;
        Ok(Identity {
            store,
            audit,
            ca,
            loaded_ca,
            cacerts_pem,
            manufacturing_der,
            settings,
            lock: Mutex::new(()),
            crl: RwLock::new(crl),
            listener: OnceLock::new(),
        })
    }

    pub fn set_crl_listener(&self, l: Arc<dyn CrlListener>) {
        let _ = self.listener.set(l);
    }

    pub fn store(&self) -> &Arc<dyn IdentityStore> {
        &self.store
    }

    pub fn cacerts_pem(&self) -> &str {
        &self.cacerts_pem
    }

    /// The current Device Issuing CA CRL.
    pub fn device_crl(&self) -> Option<Arc<CrlState>> {
        self.crl
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn ca(&self) -> Result<&Ca, IdentityError> {
        self.ca
            .as_ref()
            .ok_or_else(|| internal("the Device Issuing CA key is not loaded"))
    }

    /// Record the refusal `e` of an authenticated request by `actor` (see
    /// [`Audit::refusal`]: repeats within the hour are recorded once).
    pub fn audit_refusal(&self, kind: &str, actor: &str, e: &IdentityError, detail: Value) {
        self.audit
            .refusal(kind, actor, e.code(), detail, Some(e.to_string()));
    }

    /// Record a refused `simpleenroll`/`simplereenroll` when its requester authenticated: a
    /// certificate of ours, or a token this server issued (`token:<its serial>`). An unknown
    /// token is anyone's: only logged. Routine answers (too early to renew, internal errors)
    /// are not refusals of the requester.
    pub fn audit_refused_enrollment(
        &self,
        endpoint: &str,
        auth: &EnrollAuth<'_>,
        e: &IdentityError,
    ) {
        if matches!(
            e,
            IdentityError::TokenInvalid
                | IdentityError::RenewalTooEarly { .. }
                | IdentityError::Internal(_)
        ) {
            return;
        }
        let actor = match auth {
            EnrollAuth::Certificate(Some(p)) => format!("{}:{}", p.kind, p.name),
            EnrollAuth::Certificate(None) => return,
            EnrollAuth::Token(secret) => match self.store.token(&token_hash(secret)) {
                Ok(Some(t)) => format!("token:{}", t.record.serial),
                _ => return,
            },
        };
        self.audit_refusal("enroll-refused", &actor, e, json!({"endpoint": endpoint}));
    }

    /// Commit `batch` with its audit record (`kind`, `actor`, `detail`) in one transaction:
    /// a change that cannot be recorded is not made, and the request fails.
    fn commit_audited(
        &self,
        mut batch: IdentityBatch,
        kind: &str,
        actor: &str,
        detail: Value,
    ) -> Result<(), IdentityError> {
        self.audit
            .append_with(kind, actor, detail, |seq, record| {
                batch.audit = Some((seq, record.to_vec()));
                self.store.commit(batch)
            })
            .map(|_| ())
    }

    fn locked(&self) -> std::sync::MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A new CRL over the stored revocations plus `adding`, minus what expired: number + 1.
    fn next_crl(
        &self,
        adding: &[RevokedEntry],
        now: SystemTime,
    ) -> Result<(CrlState, Vec<String>), IdentityError> {
        let ca = self.ca()?;
        let now_s = unix(now);
        let mut list = Vec::new();
        let mut expired = Vec::new();
        let stored = self.store.revoked()?;
        for r in stored.iter().chain(adding) {
            // (webpki accepts a certificate up to and including its notAfter second: the entry
            // stays through it)
            if r.not_after < now_s {
                expired.push(r.serial.clone());
                continue;
            }
            list.push(RevokedCertificate {
                serial_hex: r.serial.clone(),
                revoked_at: UNIX_EPOCH + Duration::from_secs(r.revoked_at),
                reason: Some(match r.reason.as_str() {
                    "superseded" => RevocationReason::Superseded,
                    "key_compromise" => RevocationReason::KeyCompromise,
                    "cessation_of_operation" => RevocationReason::CessationOfOperation,
                    _ => RevocationReason::Unspecified,
                }),
            });
        }
        let number = self.store.crl()?.map(|c| c.number).unwrap_or(0) + 1;
        let crl = ca
            .crl(&list, number, now, self.settings.device_crl_lifetime)
            .map_err(internal)?;
        Ok((
            CrlState {
                number,
                this_update: unix(crl.this_update),
                next_update: unix(crl.next_update),
                der: crl.der.to_vec(),
            },
            expired,
        ))
    }

    fn install_crl(&self, crl: CrlState) {
        let der = crl.der.clone();
        *self.crl.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(crl));
        if let Some(l) = self.listener.get() {
            l.device_crl_changed(&der);
        }
    }

    /// Sign a new CRL if there is none, half of its lifetime has passed, or the stored one was
    /// signed by another key (the Device Issuing CA was replaced: the listeners find a CRL by
    /// its issuer's name, the same for the new CA, and would refuse every device certificate
    /// whose CRL does not verify). Returns whether it did.
    pub fn refresh_crl(&self, now: SystemTime) -> Result<bool, IdentityError> {
        let _g = self.locked();
        let due = match self.store.crl()? {
            None => true,
            Some(c) => {
                let other_key = self.ca.as_ref().is_some_and(|ca| {
                    hale_pki::crl::verify_crl_signature(&c.der, ca.certificate_der()).is_err()
                });
                if other_key {
                    tracing::warn!(
                        crl_number = c.number,
                        "the stored Device Issuing CA CRL does not verify with the CA loaded now \
                         (a new Device Issuing CA?): signing a new one"
                    );
                }
                other_key
                    || unix(now)
                        >= c.this_update + (c.next_update - c.this_update.min(c.next_update)) / 2
            }
        };
        if !due {
            return Ok(false);
        }
        let (crl, expired) = self.next_crl(&[], now)?;
        self.store.commit(IdentityBatch {
            unrevoked: expired,
            crl: Some(crl.clone()),
            ..Default::default()
        })?;
        self.install_crl(crl);
        Ok(true)
    }

    fn parse_csr(body: &[u8]) -> Result<(CsrSummary, String), IdentityError> {
        if body.len() > MAX_CSR_BYTES {
            return Err(IdentityError::BadCsr(format!(
                "larger than {MAX_CSR_BYTES} bytes"
            )));
        }
        let text = std::str::from_utf8(body)
            .map_err(|_| IdentityError::BadCsr("not text (PEM or base64 DER)".into()))?
            .trim();
        let pem = if text.starts_with("-----BEGIN") {
            text.to_string()
        } else {
            // RFC 7030: base64 DER, possibly with line breaks
            use base64::Engine as _;
            let compact: String = text.split_ascii_whitespace().collect();
            let der = base64::engine::general_purpose::STANDARD
                .decode(compact.as_bytes())
                .map_err(|_| IdentityError::BadCsr("neither PEM nor base64 DER".into()))?;
            x509_pem("CERTIFICATE REQUEST", &der)
        };
        let summary =
            CsrSummary::from_pem(&pem).map_err(|e| IdentityError::BadCsr(e.to_string()))?;
        if summary.requests_ca {
            return Err(IdentityError::CsrRequestsCa);
        }
        Ok((summary, pem))
    }

    /// The Manufacturing CA CRL as loaded now, not as it was when the connection opened, current
    /// at `now`. Without the listeners (no CRL loaded) no factory certificate is taken.
    fn check_factory_not_revoked(
        &self,
        peer: &PeerIdentity,
        now: SystemTime,
    ) -> Result<(), IdentityError> {
        let listener = self
            .listener
            .get()
            .ok_or_else(|| internal("the Manufacturing CA CRL is not loaded"))?;
        if listener.factory_certificate_revoked(&peer.certificate_serial) {
            return Err(IdentityError::CertificateRevoked {
                serial: peer.certificate_serial.clone(),
            });
        }
        if let Some(expired_at) = listener.factory_crl_expired(now) {
            return Err(IdentityError::CrlExpired {
                ca: "Manufacturing CA".into(),
                expired_at,
            });
        }
        Ok(())
    }

    /// `simpleenroll`: a factory certificate in the manifest, or a token, for the CSR's CN.
    pub fn enroll(
        &self,
        auth: EnrollAuth<'_>,
        csr_body: &[u8],
        now: SystemTime,
    ) -> Result<Enrolled, IdentityError> {
        let (csr, csr_pem) = Self::parse_csr(csr_body)?;
        let id = csr.common_name.clone().ok_or_else(|| {
            IdentityError::BadCsr("no subject common name (the device id)".into())
        })?;
        let _g = self.locked();
        let mut batch = IdentityBatch::default();
        let mut token = None;
        let (model, actor, method, by_factory) = match auth {
            EnrollAuth::Token(secret) => {
                let mut stored = self
                    .store
                    .token(&token_hash(secret))?
                    .ok_or(IdentityError::TokenInvalid)?;
                stored.record.redeem(secret, &id, now)?;
                // a technician enrolls only a device without a current certificate; the device
                // may have enrolled since the token was issued
                if is_technician(&stored.issued_by)
                    && self
                        .store
                        .device(&id)?
                        .is_some_and(|d| d.current_certificate(now).is_some())
                {
                    return Err(IdentityError::RoleForbidden {
                        role: "technician".into(),
                        action: "replace a device's current certificate with an enrollment token",
                    });
                }
                let model = stored.model.clone();
                token = Some(json!({"token": token_id(&stored.record.hash),
                                    "issued_by": stored.issued_by}));
                batch.tokens.push(stored);
                (model, format!("token:{id}"), "token", false)
            }
            EnrollAuth::Certificate(Some(peer)) if peer.kind == PeerKind::Factory => {
                check_validity(peer, now)?;
                self.check_factory_not_revoked(peer, now)?;
                let entry = self
                    .store
                    .manifest_entry(&peer.name)?
                    .ok_or_else(|| IdentityError::NotInManifest(peer.name.clone()))?;
                manifest::check_factory_identity(std::slice::from_ref(&entry), peer).map_err(
                    |e| match e {
                        PkiError::NotInManifest(s) => IdentityError::NotInManifest(s),
                        _ => IdentityError::ManifestKeyMismatch(peer.name.clone()),
                    },
                )?;
                if id != peer.name {
                    return Err(IdentityError::IdentityMismatch(format!(
                        "the CSR names {id:?}, the factory certificate {:?}",
                        peer.name
                    )));
                }
                (
                    entry.model,
                    format!("factory:{id}"),
                    "factory certificate",
                    true,
                )
            }
            EnrollAuth::Certificate(_) => {
                return Err(IdentityError::ClientCertificateRequired(
                    "simpleenroll needs a factory certificate or an enrollment token".into(),
                ))
            }
        };
        let old = self.store.device(&id)?;
        if let Some(d) = &old {
            match d.status {
                DeviceStatus::Decommissioned => {
                    return Err(IdentityError::DeviceDecommissioned(id))
                }
                DeviceStatus::Quarantined => return Err(IdentityError::DeviceQuarantined(id)),
                DeviceStatus::Active => {}
            }
            // the device replacing its own current certificate waits for the minimum age (a
            // token that gets here is an operator's: a technician's cannot replace it), unless
            // that certificate is another Device Issuing CA's (the one before a replacement):
            // the listeners, anchored on the CA loaded now, refuse it, so the device holds no
            // certificate it can use and must not wait a day for one. The minimum age bounds
            // how fast one device grows the CRL (each supersession is an entry until the
            // certificate expires); that bound still holds: the certificate this issues is the
            // loaded CA's, to which the minimum age applies again, so a device supersedes
            // another CA's certificate this way at most once per CA replacement (an offline
            // ceremony), one entry per device.
            if by_factory {
                if let Some(c) = d.current_certificate(now) {
                    if self.issued_by_loaded_ca(c) {
                        check_age(c, self.settings.device_factory_reenroll_min_age, now)?;
                    }
                }
            }
        }
        let mut detail = json!({"device": id, "model": model, "method": method});
        if let (Some(d), Some(Value::Object(t))) = (detail.as_object_mut(), token) {
            d.extend(t);
        }
        self.issue(
            old, &id, &model, &csr_pem, &actor, "enroll", batch, detail, now,
        )
    }

    /// Whether `c` may have been issued by the Device Issuing CA loaded now (with none loaded,
    /// nothing is issued anyway: taken as its).
    fn issued_by_loaded_ca(&self, c: &CertificateRef) -> bool {
        self.loaded_ca
            .as_ref()
            .is_none_or(|ca| ca.may_have_issued(c))
    }

    /// `simplereenroll`: the device's current operational certificate, a CSR for the same id.
    pub fn reenroll(
        &self,
        peer: Option<&PeerIdentity>,
        csr_body: &[u8],
        now: SystemTime,
    ) -> Result<Enrolled, IdentityError> {
        let (csr, csr_pem) = Self::parse_csr(csr_body)?;
        let peer = peer.ok_or_else(|| {
            IdentityError::ClientCertificateRequired(
                "simplereenroll needs the device's current certificate".into(),
            )
        })?;
        let Some(id) = peer.device_id() else {
            return Err(IdentityError::IdentityMismatch(format!(
                "simplereenroll needs an operational device certificate, not a {} certificate",
                peer.kind
            )));
        };
        if csr.common_name.as_deref() != Some(id) {
            return Err(IdentityError::IdentityMismatch(format!(
                "the CSR names {:?}, the certificate {id:?}",
                csr.common_name
            )));
        }
        let _g = self.locked();
        let record = self.check_device_locked(peer, now)?;
        if record.status == DeviceStatus::Quarantined {
            return Err(IdentityError::DeviceQuarantined(id.to_string()));
        }
        if let Some(c) = &record.certificate {
            check_age(c, self.settings.device_renewal_min_age, now)?;
        }
        let model = record.model.clone();
        let actor = format!("device:{id}");
        self.issue(
            Some(record),
            id,
            &model,
            &csr_pem,
            &actor,
            "reenroll",
            IdentityBatch::default(),
            json!({"device": id, "previous": peer.certificate_serial}),
            now,
        )
    }

    /// Issue, supersede the previous certificate, commit with `batch` and the audit record
    /// `event` (`detail` and the new certificate), reload the CRL.
    #[allow(clippy::too_many_arguments)]
    fn issue(
        &self,
        old: Option<DeviceRecord>,
        id: &str,
        model: &str,
        csr_pem: &str,
        actor: &str,
        event: &str,
        mut batch: IdentityBatch,
        mut detail: Value,
        now: SystemTime,
    ) -> Result<Enrolled, IdentityError> {
        let ca = self.ca()?;
        let cert = ca
            .issue_device_certificate(
                csr_pem,
                id,
                model,
                id,
                self.settings.device_certificate_validity,
                now,
            )
            .map_err(|e| match e {
                PkiError::InvalidName { .. } => IdentityError::BadCsr(e.to_string()),
                other => internal(other),
            })?;
        let now_s = unix(now);
        let mut record = old.unwrap_or_else(|| DeviceRecord {
            id: id.to_string(),
            serial: id.to_string(),
            model: model.to_string(),
            status: DeviceStatus::Active,
            certificate: None,
            enrolled_at: now_s,
            updated_at: now_s,
            history: Vec::new(),
        });
        let mut superseded = Vec::new();
        if let Some(prev) = record.certificate.take() {
            // revoked by this change: its record names it
            detail["superseded"] = Value::String(prev.serial.clone());
            superseded.push(RevokedEntry {
                serial: prev.serial,
                device: id.to_string(),
                revoked_at: now_s,
                not_after: prev.not_after,
                reason: "superseded".into(),
            });
        }
        let cref = CertificateRef {
            serial: cert.serial_hex.clone(),
            not_before: unix(cert.not_before),
            not_after: unix(cert.not_after),
            issuer_spki_sha256: self.loaded_ca.as_ref().map(|ca| ca.spki_sha256.clone()),
        };
        record.model = model.to_string();
        record.certificate = Some(cref.clone());
        record.event(now_s, event, Some(&cref.serial), actor);
        batch.certificates.push((
            cref.serial.clone(),
            CertificateIndex {
                device: id.to_string(),
                not_after: cref.not_after,
            },
        ));
        let new_crl = if superseded.is_empty() {
            None
        } else {
            let (crl, expired) = self.next_crl(&superseded, now)?;
            batch.unrevoked = expired;
            batch.revoked = superseded;
            Some(crl)
        };
        batch.crl = new_crl.clone();
        batch.devices.push(record.clone());
        detail["certificate"] = serde_json::to_value(&cref).map_err(internal)?;
        self.commit_audited(batch, event, actor, detail)?;
        if let Some(c) = new_crl {
            self.install_crl(c);
        }
        let mut chain_pem = cert.pem.clone();
        if !chain_pem.ends_with('\n') {
            chain_pem.push('\n');
        }
        chain_pem.push_str(&ca.certificate_pem().map_err(internal)?);
        Ok(Enrolled { record, chain_pem })
    }

    /// The per-request check of the device listener: the certificate is valid at `now`, the
    /// record exists, is not decommissioned, and `peer` holds its current certificate. Returns the
    /// record (the caller decides what a quarantined device may do).
    pub fn check_device(
        &self,
        peer: &PeerIdentity,
        now: SystemTime,
    ) -> Result<DeviceRecord, IdentityError> {
        self.check_device_locked(peer, now)
    }

    fn check_device_locked(
        &self,
        peer: &PeerIdentity,
        now: SystemTime,
    ) -> Result<DeviceRecord, IdentityError> {
        check_validity(peer, now)?;
        let Some(id) = peer.device_id() else {
            return Err(IdentityError::IdentityMismatch(format!(
                "a {} certificate is not a device certificate",
                peer.kind
            )));
        };
        let record = self
            .store
            .device(id)?
            .ok_or_else(|| IdentityError::DeviceUnknown(id.to_string()))?;
        if record.status == DeviceStatus::Decommissioned {
            return Err(IdentityError::DeviceDecommissioned(id.to_string()));
        }
        if record.certificate.as_ref().map(|c| c.serial.as_str())
            != Some(peer.certificate_serial.as_str())
        {
            return Err(IdentityError::CertificateRevoked {
                serial: peer.certificate_serial.clone(),
            });
        }
        Ok(record)
    }

    /// Quarantine, reactivate or decommission a device. `reason` is one line of at most 512
    /// bytes without control or format characters (the rule of every text a device reports,
    /// [`hale_core::report::one_line`]: no line break or line separator, no bidirectional or
    /// zero-width character): the history and the audit log keep it as given, and staff tools
    /// print it.
    pub fn set_status(
        &self,
        id: &str,
        action: StatusAction,
        actor: &str,
        reason: Option<&str>,
        now: SystemTime,
    ) -> Result<DeviceRecord, IdentityError> {
        use hale_core::report::{one_line, MAX_REASON};
        if reason.is_some_and(|r| !one_line(r, MAX_REASON)) {
            return Err(IdentityError::BadRequest(format!(
                "reason: one line of at most {MAX_REASON} bytes, without control or format \
                 characters (line breaks, line separators, bidirectional or zero-width characters)"
            )));
        }
        let _g = self.locked();
        let mut record = self
            .store
            .device(id)?
            .ok_or_else(|| IdentityError::DeviceUnknown(id.to_string()))?;
        if record.status == DeviceStatus::Decommissioned {
            return Err(IdentityError::DeviceDecommissioned(id.to_string()));
        }
        let now_s = unix(now);
        let mut batch = IdentityBatch::default();
        let (target, event) = match action {
            StatusAction::Quarantine => (DeviceStatus::Quarantined, "quarantine"),
            StatusAction::Reactivate => (DeviceStatus::Active, "reactivate"),
            StatusAction::Decommission => (DeviceStatus::Decommissioned, "decommission"),
        };
        // the same status again: nothing to do, unless a quarantine gives a new reason (a
        // second finding about a device already held): recorded and audited like the first
        let last_reason = record
            .history
            .iter()
            .rev()
            .find(|e| e.event == event)
            .and_then(|e| e.reason.clone());
        if record.status == target
            && (action != StatusAction::Quarantine
                || reason.is_none()
                || reason.map(str::to_string) == last_reason)
        {
            return Ok(record);
        }
        let mut new_crl = None;
        let mut revoked_serial = None;
        if action == StatusAction::Decommission {
            if let Some(c) = record.certificate.take() {
                let entry = RevokedEntry {
                    serial: c.serial.clone(),
                    device: id.to_string(),
                    revoked_at: now_s,
                    not_after: c.not_after,
                    reason: "cessation_of_operation".into(),
                };
                let (crl, expired) = self.next_crl(std::slice::from_ref(&entry), now)?;
                batch.unrevoked = expired;
                batch.revoked.push(entry);
                new_crl = Some(crl);
                revoked_serial = Some(c.serial);
            }
        }
        record.status = target;
        record.event(now_s, event, revoked_serial.as_deref(), actor);
        if let Some(e) = record.history.last_mut() {
            e.reason = reason.map(str::to_string);
        }
        batch.devices.push(record.clone());
        batch.crl = new_crl.clone();
        self.commit_audited(
            batch,
            &format!("device-{event}"),
            actor,
            json!({"device": id, "reason": reason, "revoked": revoked_serial}),
        )?;
        if let Some(c) = new_crl {
            self.install_crl(c);
        }
        Ok(record)
    }

    /// Revoke a device certificate by serial (lower-case hex).
    pub fn revoke(
        &self,
        serial: &str,
        reason: &str,
        actor: &str,
        now: SystemTime,
    ) -> Result<Value, IdentityError> {
        let serial = serial.to_ascii_lowercase();
        if !is_certificate_serial(&serial) {
            return Err(IdentityError::BadRequest(
                "certificate serial: 1-40 hex digits".into(),
            ));
        }
        let reason = match reason {
            "key_compromise" | "cessation_of_operation" | "superseded" | "unspecified" => reason,
            _ => {
                return Err(IdentityError::BadRequest(
                    "reason: key_compromise, cessation_of_operation, superseded or unspecified"
                        .into(),
                ))
            }
        };
        let _g = self.locked();
        let idx = self
            .store
            .certificate(&serial)?
            .ok_or_else(|| IdentityError::CertificateUnknown(serial.clone()))?;
        if self.store.revoked()?.iter().any(|r| r.serial == serial) {
            return Ok(json!({"revoked": serial, "device": idx.device, "already": true}));
        }
        let now_s = unix(now);
        let entry = RevokedEntry {
            serial: serial.clone(),
            device: idx.device.clone(),
            revoked_at: now_s,
            not_after: idx.not_after,
            reason: reason.to_string(),
        };
        let (crl, expired) = self.next_crl(std::slice::from_ref(&entry), now)?;
        let mut batch = IdentityBatch {
            unrevoked: expired,
            revoked: vec![entry],
            crl: Some(crl.clone()),
            ..Default::default()
        };
        if let Some(mut d) = self.store.device(&idx.device)? {
            if d.certificate.as_ref().is_some_and(|c| c.serial == serial) {
                d.certificate = None;
            }
            d.event(now_s, "revoke", Some(&serial), actor);
            batch.devices.push(d);
        }
        self.commit_audited(
            batch,
            "certificate-revoke",
            actor,
            json!({"certificate": serial, "device": idx.device, "reason": reason}),
        )?;
        self.install_crl(crl);
        Ok(json!({"revoked": serial, "device": idx.device}))
    }

    /// Store a new enrollment token for `serial`; returns the secret (shown once) and its expiry.
    /// A technician may issue one only for a device that holds no current certificate (its
    /// redemption would replace the genuine device's certificate: revoking is the operator's); an
    /// operator (or the CLI) for any device not decommissioned, and the audit record names the
    /// certificate the token will replace.
    pub fn issue_token(
        &self,
        serial: &str,
        model: Option<&str>,
        ttl: Duration,
        actor: &str,
        now: SystemTime,
    ) -> Result<(zeroize::Zeroizing<String>, u64), IdentityError> {
        // from the staff API and the CLI alike: a token that never ends would be a standing
        // enrollment right
        if ttl.is_zero() || ttl.as_secs() > MAX_TOKEN_TTL {
            return Err(IdentityError::BadRequest(format!(
                "token lifetime of {} s: 1 to {MAX_TOKEN_TTL} s (30 days)",
                ttl.as_secs()
            )));
        }
        let _g = self.locked();
        let (secret, record) =
            Token::new(serial, ttl, now).map_err(|e| IdentityError::BadRequest(e.to_string()))?;
        let mut replaces = None;
        if let Some(d) = self.store.device(serial)? {
            if d.status == DeviceStatus::Decommissioned {
                return Err(IdentityError::DeviceDecommissioned(serial.to_string()));
            }
            replaces = d.current_certificate(now).map(|c| c.serial.clone());
            if replaces.is_some() && is_technician(actor) {
                let e = IdentityError::RoleForbidden {
                    role: "technician".into(),
                    action:
                        "issue an enrollment token for a device that holds a current certificate",
                };
                self.audit_refusal(
                    "staff-refused",
                    actor,
                    &e,
                    json!({"action": "issue an enrollment token", "device": serial}),
                );
                return Err(e);
            }
        }
        let model = match (self.store.manifest_entry(serial)?, model) {
            (Some(e), Some(m)) if e.model != m => {
                return Err(IdentityError::BadRequest(format!(
                    "the manifest says {serial:?} is a {:?}, not a {m:?}",
                    e.model
                )))
            }
            (Some(e), _) => e.model,
            (None, Some(m)) => m.to_string(),
            (None, None) => {
                return Err(IdentityError::BadRequest(format!(
                    "{serial:?} is in no imported manifest: give the model"
                )))
            }
        };
        check_model(&model)?;
        let expires_at = record.expires_at;
        let detail = json!({"serial": serial, "model": model, "expires_at": expires_at,
                            "replaces": replaces, "token": token_id(&record.hash)});
        self.commit_audited(
            IdentityBatch {
                tokens: vec![StoredToken {
                    record,
                    model,
                    issued_by: actor.to_string(),
                }],
                ..Default::default()
            },
            "enroll-token",
            actor,
            detail,
        )?;
        Ok((secret, expires_at))
    }

    /// Verify a manufacturing manifest against the Manufacturing CA and store its entries.
    pub fn import_manifest(&self, bytes: &[u8], actor: &str) -> Result<Value, IdentityError> {
        let mca = self
            .manufacturing_der
            .as_deref()
            .ok_or_else(|| internal("the Manufacturing CA certificate is not loaded"))?;
        let m =
            Manifest::verify(bytes, mca).map_err(|e| IdentityError::BadManifest(e.to_string()))?;
        let _g = self.locked();
        let batch_name = m.batch().to_string();
        let n = m.entries().len();
        let entries = m.into_entries();
        let replaced: Vec<String> = entries
            .iter()
            .filter_map(|e| match self.store.manifest_entry(&e.serial) {
                Ok(Some(old)) if old != *e => Some(e.serial.clone()),
                _ => None,
            })
            .collect();
        let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(bytes));
        self.commit_audited(
            IdentityBatch {
                manifest: entries,
                ..Default::default()
            },
            "manifest-import",
            actor,
            json!({"batch": batch_name, "entries": n, "sha256": sha, "replaced": replaced}),
        )?;
        Ok(json!({"batch": batch_name, "entries": n, "replaced": replaced}))
    }

    /// Record that the listeners present a new server certificate (`server.crt` reloaded).
    pub fn record_server_certificate_load(&self, serial: &str, not_after: SystemTime) {
        let detail = json!({"certificate": serial, "not_after": unix(not_after)});
        if let Err(e) = self
            .audit
            .append("server-certificate-load", "tls-dir", detail)
        {
            // presented already: report, cannot undo
            tracing::error!(error = %e, "server certificate load not recorded in the audit log");
        }
    }

    /// Record that a CRL of an offline CA was loaded.
    pub fn record_crl_load(&self, ca: &str, number: u64, source: &str, actor: &str) {
        let detail = json!({"ca": ca, "crl_number": number, "source": source});
        if let Err(e) = self.audit.append("crl-load", actor, detail) {
            // loaded already (the listeners hold it): report, cannot undo
            tracing::error!(error = %e, "CRL load not recorded in the audit log");
        }
    }
}

/// Whether `name` is a name certificates carry (a device id, a model): hale-pki's rule for the
/// names it puts into subjects. Every enrolled device's id is one.
pub fn is_certificate_name(name: &str) -> bool {
    hale_pki::check_name("name", name).is_ok()
}

/// Whether `serial` can be a certificate's serial as the store keys it: 1 to 40 hex digits (an
/// X.509 serial is at most 20 bytes).
pub fn is_certificate_serial(serial: &str) -> bool {
    !serial.is_empty() && serial.len() <= 40 && serial.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A model name: hale-pki's rule for names, as the CA applies it when it issues a certificate
/// naming the model.
fn check_model(m: &str) -> Result<(), IdentityError> {
    hale_pki::check_name("model", m).map_err(|e| IdentityError::BadRequest(e.to_string()))
}

fn x509_pem(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Staff status changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusAction {
    Quarantine,
    Reactivate,
    Decommission,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64, millis: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(millis)
    }

    /// The tokens the identity tree holds (their stored records, raw).
    fn stored_tokens(sled: &crate::store::SledStore) -> Vec<Vec<u8>> {
        sled.open_tree("identity")
            .unwrap()
            .scan_prefix(b"t/")
            .map(|kv| kv.unwrap().1.to_vec())
            .collect()
    }

    #[test]
    fn an_identity_change_is_stored_with_its_audit_record_or_not_at_all() {
        use crate::audit::{self, Audit};
        use crate::store::{SledStore, Store};
        let dir = tempfile::tempdir().unwrap();
        let sled = SledStore::open(dir.path()).unwrap();
        let store: Arc<dyn Store> = Arc::new(sled.clone());
        let identity = Identity::new(
            Arc::new(SledIdentityStore::new(&sled).unwrap()),
            Audit::open(store.clone()).unwrap(),
            None,
            None,
            None,
            IdentitySettings {
                device_certificate_validity: Duration::from_secs(86_400),
                device_crl_lifetime: Duration::from_secs(86_400),
                device_renewal_min_age: Duration::from_secs(3600),
                device_factory_reenroll_min_age: Duration::from_secs(3600),
            },
        )
        .unwrap();
        let ttl = Duration::from_secs(3600);
        let now = SystemTime::now();
        // another writer of the same chain takes the record the token was to get
        Audit::open(store.clone())
            .unwrap()
            .append("token-add", "cli", json!({"operator": "olga"}))
            .unwrap();
        let e = identity
            .issue_token("pump-1", Some("pump-a"), ttl, "operator:olga", now)
            .unwrap_err();
        assert_eq!(
            e,
            IdentityError::Internal("audit record 0 already exists (concurrent writer?)".into())
        );
        // the token was not stored, the chain holds the other writer's record only
        assert!(stored_tokens(&sled).is_empty());
        assert_eq!(audit::verify(&*store).unwrap().0, 1);
        // the head was read again: the next change is recorded after that record, with it
        identity
            .issue_token("pump-1", Some("pump-a"), ttl, "operator:olga", now)
            .unwrap();
        assert_eq!(stored_tokens(&sled).len(), 1);
        assert_eq!(audit::verify(&*store).unwrap().0, 2);
        let (_, last) = store.audit_last().unwrap().unwrap();
        let last: Value = serde_json::from_slice(&last).unwrap();
        assert_eq!(last["kind"], "enroll-token");
        assert_eq!(last["detail"]["serial"], "pump-1");
    }

    #[test]
    fn renewal_too_early_says_the_whole_seconds_to_wait_rounded_up() {
        // notBefore 1000, minimum age 300: may be superseded from 1300 on
        let c = CertificateRef {
            serial: "0a".into(),
            not_before: 1000,
            not_after: 5000,
            issuer_spki_sha256: None,
        };
        let age = Duration::from_secs(300);
        let refused = |retry_after| {
            Err(IdentityError::RenewalTooEarly {
                serial: "0a".into(),
                earliest: 1300,
                retry_after,
            })
        };
        assert_eq!(check_age(&c, age, at(1000, 0)), refused(300));
        assert_eq!(check_age(&c, age, at(1290, 0)), refused(10));
        // 9.5 s to go: 10, so that a client waiting that long is not refused again
        assert_eq!(check_age(&c, age, at(1290, 500)), refused(10));
        assert_eq!(check_age(&c, age, at(1299, 0)), refused(1));
        // a millisecond to go: still a whole second
        assert_eq!(check_age(&c, age, at(1299, 999)), refused(1));
        assert_eq!(check_age(&c, age, at(1300, 0)), Ok(()));
        assert_eq!(check_age(&c, age, at(1300, 1)), Ok(()));
        // a clock before the epoch reads as 0
        assert_eq!(
            check_age(&c, age, UNIX_EPOCH - Duration::from_secs(5)),
            refused(1300)
        );
        assert_eq!(refused(10).unwrap_err().retry_after(), Some(10));
        assert_eq!(
            IdentityError::CertificateRevoked {
                serial: "0a".into()
            }
            .retry_after(),
            None
        );
    }

    /// A certificate's record names the key of the CA that issued it; a record written before
    /// it did is the loaded CA's unless it begins before that CA did by more than the
    /// backdating (it then cannot be that CA's, and is not held to the minimum age).
    #[test]
    fn a_certificate_is_told_as_the_loaded_cas_by_its_issuer_key_or_else_by_its_start() {
        let ca = LoadedCa {
            spki_sha256: "aa".into(),
            not_before: 10_000,
        };
        let cert = |issuer: Option<&str>, not_before| CertificateRef {
            serial: "0a".into(),
            not_before,
            not_after: 50_000,
            issuer_spki_sha256: issuer.map(str::to_string),
        };
        assert!(ca.may_have_issued(&cert(Some("aa"), 1)));
        assert!(!ca.may_have_issued(&cert(Some("bb"), 20_000)));
        // no key recorded: issued by this CA at the earliest when it began, backdated 300 s
        assert!(ca.may_have_issued(&cert(None, 9_700)));
        assert!(ca.may_have_issued(&cert(None, 20_000)));
        assert!(!ca.may_have_issued(&cert(None, 9_699)));
    }

    // --- review of 2026-11-25: time as a parameter ---------------------------------------------

    /// The Manufacturing CA's CRL as the listeners hold it: valid until `next_update`.
    #[derive(Debug)]
    struct FactoryCrl {
        next_update: SystemTime,
    }

    impl CrlListener for FactoryCrl {
        fn device_crl_changed(&self, _crl_der: &[u8]) {}
        fn factory_certificate_revoked(&self, _certificate_serial: &str) -> bool {
            false
        }
        fn factory_crl_expired(&self, now: SystemTime) -> Option<u64> {
            (self.next_update <= now).then(|| unix(self.next_update))
        }
    }

    /// `simpleenroll` with a factory certificate judges the Manufacturing CA CRL's expiry at
    /// the `now` it is given, as every other check of the enrollment: it read the wall clock,
    /// so an enrollment at a time past the CRL's end was taken (and one before it refused).
    #[test]
    fn a_factory_enrollment_judges_the_manufacturing_crl_at_its_own_time() {
        use crate::audit::Audit;
        use crate::store::{SledStore, Store};
        use hale_pki::{generate_key_and_csr, Hierarchy, KeyAlgorithm};
        let wall = SystemTime::now();
        let hour = Duration::from_secs(3600);
        let h = Hierarchy::create(Duration::from_secs(30 * 86_400), wall - 24 * hour).unwrap();
        let Hierarchy {
            device_issuing,
            manufacturing,
            ..
        } = h;
        let fk = generate_key_and_csr(KeyAlgorithm::P256, "pump-1").unwrap();
        let factory = manufacturing
            .issue_factory_certificate(
                &fk.csr_pem,
                "pump-1",
                "pump-x1",
                24 * hour,
                wall - 12 * hour,
            )
            .unwrap();
        let peer = PeerIdentity::from_der(&factory.der).unwrap();
        let manifest = Manifest::sign(
            &manufacturing,
            "batch-1",
            &[ManifestEntry::new(
                "pump-1",
                "pump-x1",
                &factory.spki_sha256,
            )],
            wall,
        )
        .unwrap();
        let csr = generate_key_and_csr(KeyAlgorithm::P256, "pump-1").unwrap();
        let setup = |crl_end: SystemTime| {
            let dir = tempfile::tempdir().unwrap();
            let sled = SledStore::open(dir.path()).unwrap();
            let store: Arc<dyn Store> = Arc::new(sled.clone());
            let ca =
                Ca::from_file(&device_issuing.to_file_with_cost(b"p", 10).unwrap(), b"p").unwrap();
            let identity = Identity::new(
                Arc::new(SledIdentityStore::new(&sled).unwrap()),
                Audit::open(store.clone()).unwrap(),
                Some(ca),
                None,
                Some(manufacturing.certificate_der().to_vec()),
                IdentitySettings {
                    device_certificate_validity: 24 * hour,
                    device_crl_lifetime: 24 * hour,
                    device_renewal_min_age: hour,
                    device_factory_reenroll_min_age: hour,
                },
            )
            .unwrap();
            identity.import_manifest(&manifest, "cli").unwrap();
            identity.set_crl_listener(Arc::new(FactoryCrl {
                next_update: crl_end,
            }));
            (dir, store, identity)
        };
        let enroll = |identity: &Identity, now| {
            identity.enroll(
                EnrollAuth::Certificate(Some(&peer)),
                csr.csr_pem.as_bytes(),
                now,
            )
        };

        // the CRL ends an hour from the wall clock; the enrollment is at two hours from it
        let crl_end = wall + hour;
        let (_dir, store, identity) = setup(crl_end);
        let e = enroll(&identity, wall + 2 * hour).map(|e| e.record.id);
        assert_eq!(
            e,
            Err(IdentityError::CrlExpired {
                ca: "Manufacturing CA".into(),
                expired_at: unix(crl_end),
            })
        );
        // nothing stored: no device, the audit log holds the manifest import only
        assert_eq!(identity.store().device("pump-1").unwrap(), None);
        assert_eq!(crate::audit::verify(&*store).unwrap().0, 1);

        // the CRL ended an hour ago; the enrollment is at two hours ago, when it was current
        let (_dir, _store, identity) = setup(wall - hour);
        let e = enroll(&identity, wall - 2 * hour).map(|e| e.record.id);
        assert_eq!(e, Ok("pump-1".to_string()));
    }
}
