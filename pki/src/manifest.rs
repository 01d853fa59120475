//! The manufacturing manifest: which devices the factory made, each as (serial, model, sha256 of
//! the device key's SubjectPublicKeyInfo), signed with the Manufacturing CA key (ECDSA P-256 over
//! OLPC canonical JSON, hale-repo's envelope `{"signatures": [...], "signed": {...}}`).
//!
//! The server imports it; a factory certificate whose serial is missing, or whose key differs
//! from the one recorded, cannot enroll ([`Manifest::check_factory_identity`]). A stolen
//! Manufacturing CA key alone is therefore not enough to enroll a device the factory never made,
//! unless the attacker also signs a manifest — which is why the server records each import in
//! the audit log.

use std::collections::BTreeSet;
use std::time::SystemTime;

use p256::ecdsa::signature::Verifier;
use p256::pkcs8::DecodePublicKey;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use x509_cert::der::Encode;

use crate::ca::{Ca, CaRole};
use crate::identity::{PeerIdentity, PeerKind};
use crate::x509::{self, check_name, common_name};
use crate::PkiError;

/// The manifest's `_type`.
pub const MANIFEST_TYPE: &str = "hale-manufacturing-manifest";
/// At most this many signatures are tried (bounded work on untrusted input).
const MAX_SIGNATURES: usize = 8;

/// One device of a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestEntry {
    pub serial: String,
    pub model: String,
    /// Lower-case hex sha256 of the device key's DER SubjectPublicKeyInfo.
    pub spki_sha256: String,
}

impl ManifestEntry {
    /// The entry for a factory certificate just issued.
    pub fn new(serial: &str, model: &str, spki_sha256: &[u8; 32]) -> ManifestEntry {
        ManifestEntry {
            serial: serial.to_string(),
            model: model.to_string(),
            spki_sha256: hex::encode(spki_sha256),
        }
    }

    fn check(&self) -> Result<(), PkiError> {
        check_name("serial", &self.serial)?;
        check_name("model", &self.model)?;
        let ok = self.spki_sha256.len() == 64
            && self
                .spki_sha256
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !ok {
            return Err(PkiError::ManifestMalformed(format!(
                "key hash of {:?} is not 64 lower-case hex digits",
                self.serial
            )));
        }
        Ok(())
    }
}

/// A manifest whose signature verified. Only [`Manifest::verify`] makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    batch: String,
    issued_at: u64,
    entries: Vec<ManifestEntry>,
}

impl Manifest {
    /// Sign a manifest with the Manufacturing CA (the factory command).
    pub fn sign(
        manufacturing_ca: &Ca,
        batch: &str,
        entries: &[ManifestEntry],
        now: SystemTime,
    ) -> Result<Vec<u8>, PkiError> {
        manufacturing_ca.require(CaRole::Manufacturing)?;
        check_name("batch", batch)?;
        check_entries(entries)?;
        let signed = json!({
            "_type": MANIFEST_TYPE,
            "version": 1,
            "batch": batch,
            "issued_at": x509::unix_secs(now),
            "entries": entries,
        });
        let key = manufacturing_ca.signing_key();
        Ok(hale_repo::sign::sign_new(&signed, &[&key])?)
    }

    /// Verify a manifest against the Manufacturing CA certificate (DER) and return it.
    pub fn verify(bytes: &[u8], manufacturing_ca_cert_der: &[u8]) -> Result<Manifest, PkiError> {
        let cert = x509::parse_certificate(manufacturing_ca_cert_der)?;
        let tbs = &cert.tbs_certificate;
        let cn = common_name(&tbs.subject).unwrap_or_default();
        if CaRole::from_common_name(&cn) != Some(CaRole::Manufacturing) {
            return Err(PkiError::NotACaCertificate { subject: cn });
        }
        let spki = tbs
            .subject_public_key_info
            .to_der()
            .map_err(|e| PkiError::CertificateMalformed(e.to_string()))?;
        let vk = p256::ecdsa::VerifyingKey::from_public_key_der(&spki)
            .map_err(|e| PkiError::CertificateMalformed(e.to_string()))?;

        let bad = |m: String| PkiError::ManifestMalformed(m);
        let doc: Value = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        let signed = doc.get("signed").ok_or_else(|| bad("no `signed`".into()))?;
        let sigs = doc
            .get("signatures")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("no `signatures`".into()))?;
        let msg = hale_repo::sign::canonical(signed)?;
        let verified = sigs.iter().take(MAX_SIGNATURES).any(|s| {
            s.get("sig")
                .and_then(Value::as_str)
                .and_then(|h| hex::decode(h).ok())
                .and_then(|der| p256::ecdsa::Signature::from_der(&der).ok())
                .is_some_and(|sig| vk.verify(&msg, &sig).is_ok())
        });
        if !verified {
            return Err(PkiError::ManifestSignatureInvalid);
        }

        // only now is the content worth reading
        if signed.get("_type").and_then(Value::as_str) != Some(MANIFEST_TYPE)
            || signed.get("version").and_then(Value::as_u64) != Some(1)
        {
            return Err(bad("not a version 1 manufacturing manifest".into()));
        }
        let batch = signed
            .get("batch")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("no batch".into()))?
            .to_string();
        let issued_at = signed
            .get("issued_at")
            .and_then(Value::as_u64)
            .ok_or_else(|| bad("no issued_at".into()))?;
        let entries: Vec<ManifestEntry> = serde_json::from_value(
            signed
                .get("entries")
                .cloned()
                .ok_or_else(|| bad("no entries".into()))?,
        )
        .map_err(|e| bad(e.to_string()))?;
        check_entries(&entries)?;
        Ok(Manifest {
            batch,
            issued_at,
            entries,
        })
    }

    pub fn batch(&self) -> &str {
        &self.batch
    }

    pub fn issued_at(&self) -> SystemTime {
        x509::from_unix_secs(self.issued_at)
    }

    pub fn entries(&self) -> &[ManifestEntry] {
        &self.entries
    }

    pub fn into_entries(self) -> Vec<ManifestEntry> {
        self.entries
    }

    pub fn find(&self, serial: &str) -> Option<&ManifestEntry> {
        self.entries.iter().find(|e| e.serial == serial)
    }

    /// A factory certificate may enroll only if its serial is listed with its key (and model).
    pub fn check_factory_identity(&self, id: &PeerIdentity) -> Result<&ManifestEntry, PkiError> {
        check_factory_identity(&self.entries, id)
    }
}

/// [`Manifest::check_factory_identity`] over entries the server stored after verifying them.
pub fn check_factory_identity<'a>(
    entries: &'a [ManifestEntry],
    id: &PeerIdentity,
) -> Result<&'a ManifestEntry, PkiError> {
    if id.kind != PeerKind::Factory {
        return Err(PkiError::NotOurProfile {
            reason: format!("a {} certificate is not a factory certificate", id.kind),
        });
    }
    let entry = entries
        .iter()
        .find(|e| e.serial == id.name)
        .ok_or_else(|| PkiError::NotInManifest(id.name.clone()))?;
    if entry.spki_sha256 != hex::encode(id.spki_sha256)
        || id.model.as_deref() != Some(entry.model.as_str())
    {
        return Err(PkiError::ManifestKeyMismatch {
            serial: id.name.clone(),
        });
    }
    Ok(entry)
}

fn check_entries(entries: &[ManifestEntry]) -> Result<(), PkiError> {
    let mut seen = BTreeSet::new();
    for e in entries {
        e.check()?;
        if !seen.insert(e.serial.as_str()) {
            return Err(PkiError::ManifestDuplicateSerial(e.serial.clone()));
        }
    }
    Ok(())
}
