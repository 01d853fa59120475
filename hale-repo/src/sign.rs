//! Canonical signing. Canonical bytes always come from `hale-core`'s encoder, so the signer and
//! every verifier agree byte for byte.
//!
//! Files are written as compact JSON with sorted keys, not in canonical form: OLPC canonical JSON
//! leaves control characters raw (the newlines of a PEM key), which is not valid JSON for other
//! parsers. Signatures cover the canonical form of `signed` as parsed, so both are equivalent.

use serde_json::{json, Value};

use crate::keys::SigningKey;
use crate::RepoError;

/// OLPC canonical JSON of `v` (refuses floats).
pub fn canonical(v: &Value) -> Result<Vec<u8>, RepoError> {
    let bytes = serde_json::to_vec(v)?;
    hale_core::canonical::to_canonical_vec(&bytes)
        .map_err(|e| RepoError::Invalid(format!("cannot canonicalise: {e}")))
}

/// A new envelope `{"signatures": [...], "signed": signed}` signed by `keys`, as canonical bytes.
pub fn sign_new(signed: &Value, keys: &[&SigningKey]) -> Result<Vec<u8>, RepoError> {
    let msg = canonical(signed)?;
    let sigs: Vec<Value> = keys
        .iter()
        .map(|k| json!({"keyid": k.keyid(), "sig": hex::encode(k.sign(&msg))}))
        .collect();
    envelope_bytes(&json!({"signatures": sigs, "signed": signed}))
}

/// Add (or replace) the signatures of `keys` on an existing envelope, keeping everyone else's.
/// This is how a threshold is collected across people: each signer runs it on the same file.
pub fn add_signatures(envelope: &[u8], keys: &[&SigningKey]) -> Result<Vec<u8>, RepoError> {
    let mut doc: Value = serde_json::from_slice(envelope)?;
    let signed = doc
        .get("signed")
        .ok_or_else(|| RepoError::Invalid("no `signed` in metadata".into()))?;
    let msg = canonical(signed)?;
    let sigs = doc
        .get_mut("signatures")
        .and_then(|s| s.as_array_mut())
        .ok_or_else(|| RepoError::Invalid("no `signatures` in metadata".into()))?;
    for k in keys {
        let kid = k.keyid();
        sigs.retain(|s| s.get("keyid").and_then(|v| v.as_str()) != Some(kid.as_str()));
        sigs.push(json!({"keyid": kid, "sig": hex::encode(k.sign(&msg))}));
    }
    envelope_bytes(&doc)
}

/// The `signed` part of an envelope.
pub fn signed_of(envelope: &[u8]) -> Result<Value, RepoError> {
    let doc: Value = serde_json::from_slice(envelope)?;
    doc.get("signed")
        .cloned()
        .ok_or_else(|| RepoError::Invalid("no `signed` in metadata".into()))
}

/// Replace `signed` and drop every signature (the content changed: everyone signs again).
pub fn unsigned(signed: &Value) -> Result<Vec<u8>, RepoError> {
    to_file(&json!({"signatures": [], "signed": signed}))
}

/// The bytes of a metadata file: compact JSON, keys sorted, control characters escaped. Refuses
/// what has no canonical form (floats), so every file written can be verified.
pub fn to_file(doc: &Value) -> Result<Vec<u8>, RepoError> {
    canonical(doc)?;
    Ok(serde_json::to_vec(doc)?)
}

/// [`to_file`] for an envelope whose `signed` was just canonicalised to sign it: the signatures
/// are objects of strings, so the whole document has a canonical form without checking it again.
fn envelope_bytes(doc: &Value) -> Result<Vec<u8>, RepoError> {
    Ok(serde_json::to_vec(doc)?)
}
