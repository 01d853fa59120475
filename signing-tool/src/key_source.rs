//! Where keys come from: public keys (`.pub`, or the public half of a `.key` file) and private
//! keys in encrypted key files, opened with a passphrase from the environment, a file or a prompt.
//! A hardware security module would be another source here; the commands do not care.

use std::path::{Path, PathBuf};

use hale_repo::{KeyKind, Passphrase, SigningKey};
use serde_json::{json, Value};

use crate::error::{invalid, read, read_json, Result, ToolError};

/// Test-only knob: scrypt cost (log2 N, 10..=20) for *newly generated* key files. Lowering it
/// makes brute-forcing a stolen key file's passphrase cheaper, so it exists for test suites only
/// and hale-sign warns whenever it is set. Key files record their cost; reading ignores this.
pub const INSECURE_SCRYPT_ENV: &str = "HALE_SIGN_INSECURE_TEST_SCRYPT_LOG_N";

/// A public key and its key id.
#[derive(Debug, Clone)]
pub struct PublicKey {
    pub keyid: String,
    /// The TUF key object (`keytype`, `scheme`, `keyval`) exactly as it goes into metadata.
    pub key: Value,
    pub path: PathBuf,
}

impl PublicKey {
    pub fn keytype(&self) -> &str {
        self.key
            .get("keytype")
            .and_then(Value::as_str)
            .unwrap_or("?")
    }

    pub fn is_ed25519(&self) -> bool {
        self.keytype() == "ed25519"
    }

    /// The `.pub` file body: the TUF key object plus its key id.
    pub fn pub_file(key: &SigningKey) -> Result<Vec<u8>> {
        let mut v = key.public();
        if let Some(o) = v.as_object_mut() {
            o.insert("keyid".into(), json!(key.keyid()));
        }
        let mut out = serde_json::to_vec_pretty(&sorted(v)).map_err(|e| invalid(e.to_string()))?;
        out.push(b'\n');
        Ok(out)
    }
}

/// The same value with every object's keys in sorted order (so `.pub` files are byte-for-byte
/// reproducible whatever serde_json's map order).
fn sorted(v: Value) -> Value {
    match v {
        Value::Object(o) => {
            let mut entries: Vec<(String, Value)> = o.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        Value::Array(a) => Value::Array(a.into_iter().map(sorted).collect()),
        other => other,
    }
}

/// Read a public key from a `.pub` file (TUF key object, `keyid` optional and checked) or from
/// the public half of an encrypted `.key` file. The key must be usable by hale-core.
pub fn load_public(path: &Path) -> Result<PublicKey> {
    let doc = read_json(path)?;
    let mut key = if doc.get("format").and_then(Value::as_str) == Some("hale-key-v1") {
        doc.get("public")
            .cloned()
            .ok_or_else(|| invalid(format!("{}: key file has no public key", path.display())))?
    } else {
        doc.clone()
    };
    let claimed = key
        .as_object_mut()
        .and_then(|o| o.remove("keyid"))
        .or_else(|| doc.get("keyid").cloned());
    let keyid =
        hale_repo::keys::keyid_of(&key).map_err(|e| invalid(format!("{}: {e}", path.display())))?;
    if let Some(c) = claimed {
        if c.as_str() != Some(keyid.as_str()) {
            return Err(invalid(format!(
                "{}: keyid {c} does not match the key (its keyid is {keyid})",
                path.display()
            )));
        }
    }
    // hale-core decides whether the key is usable
    let bytes = serde_json::to_vec(&key).map_err(|e| ToolError::json(path, e))?;
    let parsed =
        hale_core::json::parse(&bytes).map_err(|e| invalid(format!("{}: {e}", path.display())))?;
    let obj = parsed
        .as_object()
        .ok_or_else(|| invalid(format!("{}: not a TUF key object", path.display())))?;
    hale_core::crypto::PublicKey::from_tuf(&obj)
        .map_err(|e| invalid(format!("{}: unusable key: {e}", path.display())))?;
    Ok(PublicKey {
        keyid,
        key,
        path: path.to_path_buf(),
    })
}

/// The key id and type a `.key` file claims, read without the passphrase.
pub fn peek_private(path: &Path) -> Result<PublicKey> {
    let doc = read_json(path)?;
    if doc.get("format").and_then(Value::as_str) != Some("hale-key-v1") {
        return Err(invalid(format!(
            "{}: not a hale-sign key file (expected format hale-key-v1)",
            path.display()
        )));
    }
    load_public(path)
}

/// Open an encrypted key file.
pub fn load_private(path: &Path, passphrase: &Passphrase) -> Result<SigningKey> {
    let claimed = peek_private(path)?;
    let bytes = read(path)?;
    let secret = passphrase
        .read()
        .map_err(|e| invalid(format!("{}: passphrase: {e}", path.display())))?;
    let key = SigningKey::from_encrypted_file(&bytes, &secret)
        .map_err(|e| invalid(format!("{}: {e}", path.display())))?;
    if key.keyid() != claimed.keyid {
        return Err(invalid(format!(
            "{}: key file's keyid does not match its secret",
            path.display()
        )));
    }
    // a file sealed at a lower cost than new ones get (written before the cost rose, or by the
    // test-only knob): said, unless this is a test run or a public demo key
    let default = hale_repo::keys::SCRYPT_LOG_N;
    if let Some(n) = hale_repo::keys::file_cost(&bytes).filter(|n| *n < default) {
        if std::env::var_os(INSECURE_SCRYPT_ENV).is_none()
            && crate::demo::name_of(&key.keyid()).is_none()
        {
            eprintln!(
                "warning: {}: sealed with scrypt N = 2^{n}, below the 2^{default} new key files \
                 get: a stolen copy is {}x cheaper to guess. Generate a new key and rotate to it \
                 when you can.",
                path.display(),
                1u32 << (default - n).min(16)
            );
        }
    }
    Ok(key)
}

/// scrypt cost for new key files: the default, unless the test-only knob is set.
pub fn new_key_cost() -> Result<Option<u8>> {
    match std::env::var(INSECURE_SCRYPT_ENV) {
        Err(_) => Ok(None),
        Ok(v) => {
            let n: u8 = v
                .parse()
                .ok()
                .filter(|n| (10..=20).contains(n))
                .ok_or_else(|| invalid(format!("{INSECURE_SCRYPT_ENV}={v:?}: expected 10..=20")))?;
            eprintln!(
                "warning: {INSECURE_SCRYPT_ENV}={n}: writing key files with a LOWERED scrypt cost (tests only)"
            );
            Ok(Some(n))
        }
    }
}

/// Encrypt `key` for its file.
/// Shortest passphrase (bytes) a new key or CA file is sealed with: the file is all that stands
/// between a copy of it and the key, and scrypt only slows a guesser down.
pub const MIN_NEW_PASSPHRASE: usize = 12;

/// The passphrase for a new key or CA file (`what`): at least [`MIN_NEW_PASSPHRASE`] bytes, and
/// typed twice when asked for on the terminal.
pub fn read_new_passphrase(
    source: &Passphrase,
    what: &str,
) -> anyhow::Result<zeroize::Zeroizing<Vec<u8>>> {
    use anyhow::Context as _;
    let pass = source
        .read()
        .with_context(|| format!("passphrase for {what}"))?;
    if pass.len() < MIN_NEW_PASSPHRASE {
        anyhow::bail!(
            "passphrase for {what}: {} bytes; a new key's needs at least {MIN_NEW_PASSPHRASE}",
            pass.len()
        );
    }
    if let Passphrase::Prompt(_) = source {
        let again = Passphrase::Prompt("repeat the passphrase: ".into()).read()?;
        if *again != *pass {
            anyhow::bail!("{what}: the passphrases do not match");
        }
    }
    Ok(pass)
}

pub fn encrypt(key: &SigningKey, passphrase: &[u8]) -> Result<Vec<u8>> {
    Ok(match new_key_cost()? {
        Some(n) => key.to_encrypted_file_with_cost(passphrase, n)?,
        None => key.to_encrypted_file(passphrase)?,
    })
}

pub fn parse_kind(s: &str) -> Result<KeyKind> {
    Ok(KeyKind::parse(s)?)
}
