//! Signing keys: ed25519 and ECDSA P-256, encrypted at rest.
//!
//! A key file is JSON: the public TUF key (so anyone can read who it belongs to) and the secret
//! sealed with XChaCha20-Poly1305 under a key derived from a passphrase with scrypt. The public
//! part is bound to the ciphertext as associated data, so swapping it is detected. Passphrases
//! come from the environment, a file or a prompt ([`Passphrase`]); never from the command line.

use std::path::PathBuf;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use ed25519_dalek::Signer as _;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::RepoError;

/// Key algorithms Hale signs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Ed25519,
    EcdsaP256,
}

impl KeyKind {
    pub fn parse(s: &str) -> Result<Self, RepoError> {
        match s {
            "ed25519" => Ok(KeyKind::Ed25519),
            "ecdsa" | "ecdsa-p256" | "p256" | "ecdsa-sha2-nistp256" => Ok(KeyKind::EcdsaP256),
            other => Err(RepoError::Invalid(format!(
                "unknown key type {other:?} (ed25519 or ecdsa-p256)"
            ))),
        }
    }
    pub fn as_str(&self) -> &'static str {
        match self {
            KeyKind::Ed25519 => "ed25519",
            KeyKind::EcdsaP256 => "ecdsa-p256",
        }
    }
}

/// A private key able to sign TUF metadata.
#[derive(Clone)]
pub enum SigningKey {
    Ed25519(ed25519_dalek::SigningKey),
    EcdsaP256(p256::ecdsa::SigningKey),
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({}, {})", self.kind().as_str(), self.keyid())
    }
}

/// scrypt cost for new key files: N = 2^17, r = 8, p = 1 (128 MiB, under half a second to open):
/// OWASP's least for scrypt. Root, targets and rollback keys live for years in files whose
/// passphrase is all that stands between a stolen copy and the key; they are opened a few times
/// a ceremony. (Files written before with 2^15 still open; hale-sign says they are cheaper to
/// guess.)
pub const SCRYPT_LOG_N: u8 = 17;

/// The scrypt cost (`log2 N`) a key file was sealed with, read without the passphrase.
pub fn file_cost(bytes: &[u8]) -> Option<u8> {
    let doc: Value = serde_json::from_slice(bytes).ok()?;
    u8::try_from(doc.pointer("/kdf/log_n")?.as_u64()?).ok()
}
const FILE_FORMAT: &str = "hale-key-v1";

impl SigningKey {
    /// A fresh key from the operating system's random source.
    pub fn generate(kind: KeyKind) -> Result<Self, RepoError> {
        loop {
            let mut seed = Zeroizing::new([0u8; 32]);
            getrandom::getrandom(seed.as_mut())
                .map_err(|e| RepoError::Invalid(format!("no randomness: {e}")))?;
            if let Some(k) = Self::from_seed(kind, &seed) {
                return Ok(k);
            }
        }
    }

    /// A key derived from 32 fixed bytes. Only for demo keys and test vectors: anyone who knows
    /// the seed can sign.
    pub fn from_seed(kind: KeyKind, seed: &[u8; 32]) -> Option<Self> {
        match kind {
            KeyKind::Ed25519 => Some(SigningKey::Ed25519(ed25519_dalek::SigningKey::from_bytes(
                seed,
            ))),
            KeyKind::EcdsaP256 => p256::ecdsa::SigningKey::from_bytes(seed.into())
                .ok()
                .map(SigningKey::EcdsaP256),
        }
    }

    pub fn kind(&self) -> KeyKind {
        match self {
            SigningKey::Ed25519(_) => KeyKind::Ed25519,
            SigningKey::EcdsaP256(_) => KeyKind::EcdsaP256,
        }
    }

    /// The TUF public key object (`keytype`, `scheme`, `keyval.public`), as securesystemslib
    /// writes it: ed25519 as hex, P-256 as a PEM SubjectPublicKeyInfo.
    pub fn public(&self) -> Value {
        match self {
            SigningKey::Ed25519(k) => json!({
                "keytype": "ed25519",
                "scheme": "ed25519",
                "keyval": {"public": hex::encode(k.verifying_key().as_bytes())},
            }),
            SigningKey::EcdsaP256(k) => {
                use p256::pkcs8::{EncodePublicKey, LineEnding};
                let pem = k
                    .verifying_key()
                    .to_public_key_pem(LineEnding::LF)
                    .unwrap_or_default();
                json!({
                    "keytype": "ecdsa",
                    "scheme": "ecdsa-sha2-nistp256",
                    "keyval": {"public": pem},
                })
            }
        }
    }

    /// The key id: sha256 of the canonical JSON of [`public`](Self::public) (what
    /// securesystemslib and rust-tuf compute).
    pub fn keyid(&self) -> String {
        keyid_of(&self.public()).unwrap_or_default()
    }

    /// Sign `msg` (the canonical bytes of `signed`): ed25519 raw 64 bytes, ECDSA DER.
    pub fn sign(&self, msg: &[u8]) -> Vec<u8> {
        match self {
            SigningKey::Ed25519(k) => k.sign(msg).to_bytes().to_vec(),
            SigningKey::EcdsaP256(k) => {
                let sig: p256::ecdsa::Signature = k.sign(msg);
                sig.to_der().as_bytes().to_vec()
            }
        }
    }

    fn secret_bytes(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(match self {
            SigningKey::Ed25519(k) => k.to_bytes().to_vec(),
            SigningKey::EcdsaP256(k) => k.to_bytes().to_vec(),
        })
    }

    /// The encrypted key file (JSON).
    pub fn to_encrypted_file(&self, passphrase: &[u8]) -> Result<Vec<u8>, RepoError> {
        self.to_encrypted_file_with_cost(passphrase, SCRYPT_LOG_N)
    }

    /// As [`to_encrypted_file`](Self::to_encrypted_file) with a chosen scrypt cost (tests use a
    /// low one; files record their cost).
    pub fn to_encrypted_file_with_cost(
        &self,
        passphrase: &[u8],
        log_n: u8,
    ) -> Result<Vec<u8>, RepoError> {
        if passphrase.is_empty() {
            return Err(RepoError::Invalid("empty passphrase".into()));
        }
        let mut salt = [0u8; 16];
        let mut nonce = [0u8; 24];
        getrandom::getrandom(&mut salt).map_err(|e| RepoError::Invalid(e.to_string()))?;
        getrandom::getrandom(&mut nonce).map_err(|e| RepoError::Invalid(e.to_string()))?;
        let kek = derive(passphrase, &salt, log_n)?;
        let public = self.public();
        let aad = serde_json::to_vec(&json!([FILE_FORMAT, self.kind().as_str(), public]))?;
        let cipher = XChaCha20Poly1305::new(kek.as_ref().into());
        let ct = cipher
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: self.secret_bytes().as_ref(),
                    aad: &aad,
                },
            )
            .map_err(|_| RepoError::Invalid("encryption failed".into()))?;
        let doc = json!({
            "format": FILE_FORMAT,
            "type": self.kind().as_str(),
            "keyid": self.keyid(),
            "public": public,
            "kdf": {"name": "scrypt", "log_n": log_n, "r": 8, "p": 1, "salt": hex::encode(salt)},
            "cipher": {"name": "xchacha20poly1305", "nonce": hex::encode(nonce), "ciphertext": hex::encode(ct)},
        });
        let mut out = serde_json::to_vec_pretty(&doc)?;
        out.push(b'\n');
        Ok(out)
    }

    /// Open an encrypted key file. A wrong passphrase and a tampered file give the same error.
    pub fn from_encrypted_file(bytes: &[u8], passphrase: &[u8]) -> Result<Self, RepoError> {
        let bad = || RepoError::Invalid("not a Hale key file".into());
        let doc: Value = serde_json::from_slice(bytes).map_err(|_| bad())?;
        if doc["format"] != FILE_FORMAT {
            return Err(bad());
        }
        let kind = KeyKind::parse(doc["type"].as_str().ok_or_else(bad)?)?;
        let kdf = &doc["kdf"];
        if kdf["name"] != "scrypt" || kdf["r"] != 8 || kdf["p"] != 1 {
            return Err(RepoError::Invalid("unsupported key-file KDF".into()));
        }
        let log_n = kdf["log_n"]
            .as_u64()
            .filter(|n| (10..=20).contains(n))
            .ok_or_else(bad)? as u8;
        let salt = hex::decode(kdf["salt"].as_str().ok_or_else(bad)?).map_err(|_| bad())?;
        let nonce =
            hex::decode(doc["cipher"]["nonce"].as_str().ok_or_else(bad)?).map_err(|_| bad())?;
        let ct = hex::decode(doc["cipher"]["ciphertext"].as_str().ok_or_else(bad)?)
            .map_err(|_| bad())?;
        let nonce: [u8; 24] = nonce.try_into().map_err(|_| bad())?;
        if doc["cipher"]["name"] != "xchacha20poly1305" {
            return Err(bad());
        }
        let kek = derive(passphrase, &salt, log_n)?;
        let aad = serde_json::to_vec(&json!([FILE_FORMAT, kind.as_str(), doc["public"]]))?;
        let cipher = XChaCha20Poly1305::new(kek.as_ref().into());
        let secret = Zeroizing::new(
            cipher
                .decrypt(
                    &XNonce::from(nonce),
                    Payload {
                        msg: &ct,
                        aad: &aad,
                    },
                )
                .map_err(|_| RepoError::Invalid("wrong passphrase or damaged key file".into()))?,
        );
        let seed: [u8; 32] = secret.as_slice().try_into().map_err(|_| bad())?;
        let key = Self::from_seed(kind, &seed).ok_or_else(bad)?;
        if key.public() != doc["public"] {
            return Err(RepoError::Invalid(
                "key file's public key does not match its secret".into(),
            ));
        }
        Ok(key)
    }
}

fn derive(passphrase: &[u8], salt: &[u8], log_n: u8) -> Result<Zeroizing<[u8; 32]>, RepoError> {
    let params =
        scrypt::Params::new(log_n, 8, 1, 32).map_err(|e| RepoError::Invalid(e.to_string()))?;
    let mut out = Zeroizing::new([0u8; 32]);
    scrypt::scrypt(passphrase, salt, &params, out.as_mut())
        .map_err(|e| RepoError::Invalid(e.to_string()))?;
    Ok(out)
}

/// sha256 hex of the canonical JSON of a TUF key object.
pub fn keyid_of(public: &Value) -> Result<String, RepoError> {
    let canon = crate::sign::canonical(public)?;
    Ok(hex::encode(Sha256::digest(&canon)))
}

/// Where a passphrase comes from. Never a command-line argument (it would sit in shell history
/// and in `ps`).
#[derive(Debug, Clone)]
pub enum Passphrase {
    /// The value of an environment variable.
    Env(String),
    /// The first line of a file (trailing newline removed).
    File(PathBuf),
    /// Ask on the terminal with this prompt.
    Prompt(String),
}

impl Passphrase {
    pub fn read(&self) -> Result<Zeroizing<Vec<u8>>, RepoError> {
        let v = match self {
            // the bytes as they are: a passphrase need not be UTF-8
            Passphrase::Env(var) => std::env::var_os(var)
                .ok_or_else(|| {
                    RepoError::Invalid(format!("environment variable {var} is not set"))
                })?
                .into_encoded_bytes(),
            Passphrase::File(p) => {
                let raw =
                    std::fs::read(p).map_err(|e| RepoError::Io(p.display().to_string(), e))?;
                let line = raw.split(|b| *b == b'\n').next().unwrap_or(&[]);
                line.strip_suffix(b"\r").unwrap_or(line).to_vec()
            }
            Passphrase::Prompt(prompt) => rpassword::prompt_password(prompt)
                .map_err(|e| {
                    // no terminal to ask on (a script, CI, a pipe): say how else to give it
                    RepoError::Invalid(format!(
                        "cannot ask on a terminal ({e}); give it with --passphrase-env VAR or \
                         --passphrase-file FILE"
                    ))
                })?
                .into_bytes(),
        };
        if v.is_empty() {
            return Err(RepoError::Invalid("empty passphrase".into()));
        }
        Ok(Zeroizing::new(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_round_trip_and_refuse_wrong_passphrase() {
        for kind in [KeyKind::Ed25519, KeyKind::EcdsaP256] {
            let k = SigningKey::generate(kind).unwrap();
            let file = k.to_encrypted_file_with_cost(b"correct horse", 10).unwrap();
            let text = String::from_utf8(file.clone()).unwrap();
            // the secret is not in the file
            assert!(!text.contains(&hex::encode(k.secret_bytes().as_slice())));
            let back = SigningKey::from_encrypted_file(&file, b"correct horse").unwrap();
            assert_eq!(back.keyid(), k.keyid());
            let err = SigningKey::from_encrypted_file(&file, b"wrong").unwrap_err();
            assert_eq!(err.to_string(), "wrong passphrase or damaged key file");
        }
    }

    #[test]
    fn swapping_the_public_part_is_detected() {
        let a = SigningKey::generate(KeyKind::Ed25519).unwrap();
        let b = SigningKey::generate(KeyKind::Ed25519).unwrap();
        let mut doc: Value =
            serde_json::from_slice(&a.to_encrypted_file_with_cost(b"pw", 10).unwrap()).unwrap();
        doc["public"] = b.public();
        let err =
            SigningKey::from_encrypted_file(&serde_json::to_vec(&doc).unwrap(), b"pw").unwrap_err();
        assert_eq!(err.to_string(), "wrong passphrase or damaged key file");
    }

    #[test]
    fn keyid_matches_securesystemslib_rule() {
        let k = SigningKey::from_seed(KeyKind::Ed25519, &[7; 32]).unwrap();
        let canon = crate::sign::canonical(&k.public()).unwrap();
        assert!(canon.starts_with(br#"{"keytype":"ed25519","keyval":{"public":""#));
        assert_eq!(k.keyid(), hex::encode(Sha256::digest(&canon)));
    }
}
