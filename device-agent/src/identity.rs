//! Device identity on the host build (`std`): the simulated pump's factory key, its operational
//! certificate from EST enrollment, renewal, and the mTLS client configuration every call uses.
//!
//! ```text
//! factory-csr   device makes its factory key (P-256 default, ed25519 allowed) and a CSR
//! (station)     hale-sign factory issue → identity/factory.crt, manifest entry
//! enroll        POST /.well-known/est/simpleenroll with the factory certificate (mTLS) or a
//!               single-use token (Authorization: Bearer); new key + CSR each time
//! run           every request (metadata, targets, reports) over mTLS with the operational cert;
//!               at 2/3 of its lifetime: simplereenroll with the current cert; refused by the
//!               server (its answer to an earlier renewal lost): simpleenroll with the factory
//!               cert; expired (back from storage): simpleenroll again with the factory cert;
//!               refused by the device listener before then (revoked by an operator):
//!               simpleenroll with the factory cert at once (`Identity::replace_refused`)
//! ```
//!
//! ## Keys at rest
//! A real pump keeps its keys in a secure element. The simulated pump seals them
//! (`hale_pki::tls::seal_private_key`: scrypt + XChaCha20-Poly1305) under a **device secret**
//! read from `HALE_DEVICE_SECRET` or a file (`--device-secret-file`), standing in for the secure
//! element's key: nothing in the state directory is a plaintext key.
//!
//! ## What is checked
//! - The server is verified against the Server CA certificate given at enrollment (nothing else:
//!   no system roots).
//! - An issued certificate is accepted only if it is an operational device certificate
//!   (`PeerIdentity`: `CA:FALSE`, clientAuth, issued by the Device Issuing CA) for this device's
//!   serial and for the key the device just generated; otherwise nothing is stored.
//! - A response is read up to [`MAX_RESPONSE`] bytes; a refusal's JSON error is shown as sent.
//! - The operational certificate and its key are replaced in one atomic rename, so a power cut
//!   leaves the old pair or the new one.
//! - One process changes the identity at a time (`identity/.lock`, `flock`): a tester's `enroll`
//!   beside a running pump's renewal is refused ([`IdentityError::Busy`]), never interleaved.
//!
//! Time is a parameter: [`Identity::ensure`] takes `now`.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hale_pki::{KeyAlgorithm, PeerIdentity, PeerKind};
use rustls::ClientConfig;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// Environment variable holding the device secret (the simulated secure element's key).
pub const DEVICE_SECRET_ENV: &str = "HALE_DEVICE_SECRET";
/// Test-only knob: scrypt cost (log2 N, 10..=20) of newly sealed device keys.
pub const INSECURE_SCRYPT_ENV: &str = "HALE_AGENT_INSECURE_TEST_SCRYPT_LOG_N";
/// Largest EST response or error body read.
pub const MAX_RESPONSE: usize = 64 << 10;
/// Most certificates accepted in an EST response chain.
pub const MAX_CHAIN: usize = 4;

const FACTORY_KEY: &str = "factory.key";
const FACTORY_CERT: &str = "factory.crt";
const FACTORY_CSR: &str = "factory.csr";
const OPERATIONAL: &str = "operational.json";
const SERVER_CA: &str = "server-ca.crt";
const CONFIG: &str = "identity.json";
/// Held (`flock`) by the process changing the identity files.
const LOCK: &str = ".lock";
/// The server's `Retry-After` for a renewal, as the Unix time before which none is asked.
const RENEW_WAIT: &str = "renew-not-before";

/// Why identity work failed.
#[derive(Debug)]
pub enum IdentityError {
    /// A file could not be read or written.
    Io { path: PathBuf, message: String },
    /// Something stored or given is not what it should be.
    Invalid(String),
    /// The device has no factory certificate and no valid operational certificate.
    NotEnrolled(String),
    /// The EST server refused (HTTP status and the server's JSON error). `retry_after`: the
    /// seconds its `Retry-After` asks the device to wait (delta-seconds only; at most
    /// [`MAX_RETRY_AFTER`]).
    Refused {
        url: String,
        status: u16,
        code: String,
        message: String,
        retry_after: Option<u64>,
    },
    /// The server ended the TLS exchange with an alert: it refused the client certificate
    /// (revoked, expired, not under its CA). With TLS 1.3 the server judges the client
    /// certificate after the client's handshake is done, so the alert arrives in place of the
    /// answer; with TLS 1.2 during the handshake.
    HandshakeRefused {
        url: String,
        alert: rustls::AlertDescription,
        message: String,
    },
    /// No answer from the server: no connection could be made (name resolution, connection
    /// refused or timed out), this device refused the server (its certificate), or the
    /// connection broke or timed out.
    Transport { url: String, message: String },
    /// The server answered 200 with something we do not accept.
    BadResponse { url: String, reason: String },
    /// The PKI refused (key generation, parsing, sealing).
    Pki(hale_pki::PkiError),
    /// Another process is changing the identity files (an `enroll` beside a running pump's
    /// renewal, say): nothing was done; try again.
    Busy(PathBuf),
}

impl fmt::Display for IdentityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdentityError::Io { path, message } => write!(f, "{}: {message}", path.display()),
            IdentityError::Invalid(m) => write!(f, "{m}"),
            IdentityError::NotEnrolled(m) => write!(f, "not enrolled: {m}"),
            IdentityError::Refused {
                url,
                status,
                code,
                message,
                retry_after,
            } => {
                write!(f, "{url}: refused (HTTP {status} {code}): {message}")?;
                match retry_after {
                    Some(s) => write!(f, " (asked to wait {s} s)"),
                    None => Ok(()),
                }
            }
            IdentityError::HandshakeRefused { url, message, .. }
            | IdentityError::Transport { url, message } => write!(f, "{url}: {message}"),
            IdentityError::BadResponse { url, reason } => {
                write!(f, "{url}: unacceptable response: {reason}")
            }
            IdentityError::Pki(e) => write!(f, "{e}"),
            IdentityError::Busy(dir) => write!(
                f,
                "{}: another process is changing the device identity; nothing changed, try again",
                dir.display()
            ),
        }
    }
}

impl std::error::Error for IdentityError {}

impl IdentityError {
    /// Did the EST server refuse the certificate the request was made with: answer 401 or 403
    /// (revoked, expired, not this device's), or end the TLS handshake with an alert? Not when
    /// no answer came (an unreachable server is asked nothing more, so that a server that is
    /// down costs one failed request a poll), nor for another refusal: 429 refuses the timing
    /// (the certificate is too young to replace), 5xx is the server's own trouble, and a 400
    /// would meet the factory request too.
    pub fn refused_by_server(&self) -> bool {
        matches!(
            self,
            IdentityError::Refused {
                status: 401 | 403,
                ..
            } | IdentityError::HandshakeRefused { .. }
        )
    }
}

impl From<hale_pki::PkiError> for IdentityError {
    fn from(e: hale_pki::PkiError) -> Self {
        IdentityError::Pki(e)
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> IdentityError + '_ {
    move |e| IdentityError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// The secret that seals the device's keys.
pub struct DeviceSecret(Zeroizing<Vec<u8>>);

impl fmt::Debug for DeviceSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DeviceSecret([secret])")
    }
}

impl DeviceSecret {
    /// The first line of `file` if given, else [`DEVICE_SECRET_ENV`]. Never the command line.
    pub fn load(file: Option<&Path>) -> Result<DeviceSecret, IdentityError> {
        let v = match file {
            Some(p) => {
                let raw = std::fs::read(p).map_err(io(p))?;
                let line = raw.split(|b| *b == b'\n').next().unwrap_or(&[]);
                line.strip_suffix(b"\r").unwrap_or(line).to_vec()
            }
            None => std::env::var(DEVICE_SECRET_ENV)
                .map_err(|_| {
                    IdentityError::Invalid(format!(
                        "no device secret: set {DEVICE_SECRET_ENV} or give --device-secret-file"
                    ))
                })?
                .into_bytes(),
        };
        if v.len() < 16 {
            return Err(IdentityError::Invalid(
                "the device secret must be at least 16 bytes".into(),
            ));
        }
        Ok(DeviceSecret(Zeroizing::new(v)))
    }

    pub fn from_bytes(b: &[u8]) -> DeviceSecret {
        DeviceSecret(Zeroizing::new(b.to_vec()))
    }
}

/// Where an operational certificate stands at `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifetime {
    /// Before its notBefore (a clock behind the CA's): use it, the server decides.
    NotYetValid,
    /// In the first 2/3 of its lifetime.
    Valid,
    /// Past 2/3 of its lifetime: renew with `simplereenroll`.
    RenewDue,
    /// Past notAfter: only the factory certificate (or a token) can enroll the device again.
    Expired,
}

/// The longest wait a server's `Retry-After` imposes on renewal: a day. A longer one is cut to
/// it (the certificate still has a third of its lifetime; an expired one is enrolled again
/// whatever the server asked).
pub const MAX_RETRY_AFTER: u64 = 86_400;

/// A `Retry-After` value in delta-seconds (RFC 9110 §10.2.3), at most [`MAX_RETRY_AFTER`]; an
/// HTTP date or anything else is ignored.
fn retry_after(value: Option<&str>) -> Option<u64> {
    let v = value?.trim();
    if v.is_empty() || v.len() > 20 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(v.parse::<u64>().unwrap_or(u64::MAX).min(MAX_RETRY_AFTER))
}

/// The server's wait `until` (its `Retry-After`), while it lasts at `now`. A wait longer than the
/// longest the server may ask is void (a clock set back).
fn waiting(until: Option<SystemTime>, now: SystemTime) -> Option<SystemTime> {
    let longest = Duration::from_secs(MAX_RETRY_AFTER);
    until.filter(|until| {
        until
            .duration_since(now)
            .is_ok_and(|left| !left.is_zero() && left <= longest)
    })
}

/// When a certificate valid from `not_before` to `not_after` is due for renewal: 2/3 through.
pub fn renewal_time(not_before: SystemTime, not_after: SystemTime) -> SystemTime {
    let life = not_after
        .duration_since(not_before)
        .unwrap_or(Duration::ZERO);
    not_before + life / 3 * 2
}

/// Classify a certificate's lifetime at `now`.
pub fn lifetime(not_before: SystemTime, not_after: SystemTime, now: SystemTime) -> Lifetime {
    if now >= not_after {
        Lifetime::Expired
    } else if now < not_before {
        Lifetime::NotYetValid
    } else if now >= renewal_time(not_before, not_after) {
        Lifetime::RenewDue
    } else {
        Lifetime::Valid
    }
}

/// What [`Identity::ensure`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// The operational certificate is current; nothing done.
    Current,
    /// First enrollment (factory certificate or token).
    Enrolled { serial_hex: String },
    /// Renewed with the current certificate at 2/3 of its lifetime.
    Renewed { serial_hex: String },
    /// The certificate had expired: enrolled again with the factory certificate.
    ReEnrolled { serial_hex: String },
    /// The server refused the renewal (an HTTP error status, or an alert that ended the TLS
    /// handshake), and the factory certificate enrolled the device again (the server may have
    /// revoked the current certificate already: it superseded it with one whose answer never
    /// arrived).
    RenewedWithFactory {
        serial_hex: String,
        renewal_error: String,
    },
    /// Renewal was due but failed: the server did not answer (unreachable, the connection
    /// broke, or this device refused the server), or it refused and so did the factory
    /// certificate (or there is none). The current certificate is still valid and stays in use;
    /// the next poll tries again, or, when the refusal said how long to wait (`Retry-After`),
    /// the first poll after that.
    RenewalFailed { reason: String },
    /// Renewal is due (or the device listener refused the certificate), but the server's last
    /// refusal asked to wait until `until`: nothing was asked. The current certificate stays in
    /// use.
    RenewalWaiting { until: SystemTime },
    /// The device listener refused the current certificate before it was due for renewal
    /// (revoked by an operator, or expired by the server's clock: `refusal`, as the pump's
    /// request met it), and the factory certificate enrolled the device again.
    ReplacedRefused { serial_hex: String, refusal: String },
    /// The device listener refused the current certificate, and enrolling again with the
    /// factory certificate failed (or there is none). Nothing changed; the next poll that meets
    /// the refusal tries again, or, when the server asked for a wait (`Retry-After`), the
    /// first poll after it.
    ReplacementFailed { reason: String },
}

/// An operational certificate with its (open) key.
#[derive(Debug)]
pub struct Operational {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub identity: PeerIdentity,
}

/// The device's identity files in `STATE/identity/`.
#[derive(Debug)]
pub struct Identity {
    dir: PathBuf,
    secret: DeviceSecret,
    /// No renewal before this (the server's `Retry-After`), kept in [`RENEW_WAIT`] too, so a
    /// pump started again waits as well.
    renew_not_before: std::sync::Mutex<Option<SystemTime>>,
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), IdentityError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file")
    ));
    {
        use std::io::Write;
        // owner only (sealed keys, the device's configuration), set as the file is made
        let _ = std::fs::remove_file(&tmp);
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut f = options.open(&tmp).map_err(io(&tmp))?;
        f.write_all(bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(io(path))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

fn seal_cost() -> Result<u8, IdentityError> {
    match std::env::var(INSECURE_SCRYPT_ENV) {
        Err(_) => Ok(hale_pki::ca::CA_FILE_SCRYPT_LOG_N),
        Ok(v) => v
            .parse::<u8>()
            .ok()
            .filter(|n| (10..=20).contains(n))
            .ok_or_else(|| IdentityError::Invalid(format!("{INSECURE_SCRYPT_ENV}={v:?}: 10..=20"))),
    }
}

/// All PEM certificates in `pem`, at most [`MAX_CHAIN`].
pub fn parse_chain(pem: &str) -> Result<Vec<CertificateDer<'static>>, IdentityError> {
    let mut out = Vec::new();
    for block in pem.split_inclusive("-----END CERTIFICATE-----") {
        if !block.contains("-----BEGIN CERTIFICATE-----") {
            continue;
        }
        if out.len() == MAX_CHAIN {
            return Err(IdentityError::Invalid(format!(
                "more than {MAX_CHAIN} certificates"
            )));
        }
        let start = block.find("-----BEGIN").unwrap_or(0);
        let one = block.get(start..).unwrap_or_default();
        out.push(hale_pki::tls::certificate_from_pem(&format!("{one}\n"))?);
    }
    if out.is_empty() {
        return Err(IdentityError::Invalid("no certificate".into()));
    }
    Ok(out)
}

fn to_pem(chain: &[CertificateDer<'_>]) -> String {
    use base64::Engine;
    let mut s = String::new();
    for c in chain {
        s.push_str("-----BEGIN CERTIFICATE-----\n");
        let b = base64::engine::general_purpose::STANDARD.encode(c.as_ref());
        for line in b.as_bytes().chunks(64) {
            s.push_str(std::str::from_utf8(line).unwrap_or_default());
            s.push('\n');
        }
        s.push_str("-----END CERTIFICATE-----\n");
    }
    s
}

/// sha256 of the SubjectPublicKeyInfo of a private key (to match it with a certificate).
fn key_spki_sha256(key: &PrivateKeyDer<'_>) -> Result<[u8; 32], IdentityError> {
    let provider = hale_pki::tls::provider();
    let signer = provider
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|e| IdentityError::Invalid(format!("private key: {e}")))?;
    let spki = signer
        .public_key()
        .ok_or_else(|| IdentityError::Invalid("private key without public key".into()))?;
    Ok(Sha256::digest(spki.as_ref()).into())
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Identity {
    /// `dir` is `STATE/identity`.
    pub fn new(dir: &Path, secret: DeviceSecret) -> Identity {
        // unreadable or malformed: no wait (the server says again if it must)
        let kept = std::fs::read_to_string(dir.join(RENEW_WAIT))
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .and_then(|secs| std::time::UNIX_EPOCH.checked_add(Duration::from_secs(secs)));
        Identity {
            dir: dir.to_path_buf(),
            secret,
            renew_not_before: std::sync::Mutex::new(kept),
        }
    }

    /// Keep the renewal wait (`None`: there is none) across restarts; a failure to write it
    /// costs at most one early request, so it is not an error.
    fn keep_wait(&self, until: Option<SystemTime>) {
        let p = self.path(RENEW_WAIT);
        let _ = match until.and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()) {
            Some(d) => write_atomic(&p, d.as_secs().to_string().as_bytes()),
            None => match std::fs::remove_file(&p) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(&p)(e)),
                _ => Ok(()),
            },
        };
    }

    /// The server's renewal wait, held while the caller asks (one replacement at a time in this
    /// process), or `Err(until)` while it lasts at `now` ([`waiting`]).
    fn renewal_wait(
        &self,
        now: SystemTime,
    ) -> Result<std::sync::MutexGuard<'_, Option<SystemTime>>, SystemTime> {
        let wait = self
            .renew_not_before
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match waiting(*wait, now) {
            Some(until) => Err(until),
            None => Ok(wait),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Take the right to change the identity files, for as long as the returned file is open,
    /// or refuse ([`IdentityError::Busy`]) when another process has it. Every change is a
    /// read-decide-write (the factory key's absence, the config's other fields, the key a
    /// certificate is for): two at once would write over each other's decisions.
    fn changing(&self) -> Result<std::fs::File, IdentityError> {
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let p = self.path(LOCK);
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(io(&p))?;
        match crate::host::lock(&f, &p) {
            Ok(()) => Ok(f),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                Err(IdentityError::Busy(self.dir.clone()))
            }
            Err(e) => Err(io(&p)(e)),
        }
    }

    fn read(&self, name: &str) -> Result<Option<Vec<u8>>, IdentityError> {
        let p = self.path(name);
        match std::fs::read(&p) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&p)(e)),
        }
    }

    fn config(&self) -> Result<Value, IdentityError> {
        let b = self.read(CONFIG)?.ok_or_else(|| {
            IdentityError::NotEnrolled(format!("{}: missing", self.path(CONFIG).display()))
        })?;
        serde_json::from_slice(&b)
            .map_err(|e| IdentityError::Invalid(format!("{}: {e}", self.path(CONFIG).display())))
    }

    fn config_str(&self, k: &str) -> Result<String, IdentityError> {
        self.config()?
            .get(k)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| {
                IdentityError::NotEnrolled(format!("no {k} in {}", self.path(CONFIG).display()))
            })
    }

    fn set_config(&self, k: &str, v: &str) -> Result<(), IdentityError> {
        let mut c = self.config().unwrap_or_else(|_| json!({}));
        if let Some(o) = c.as_object_mut() {
            o.insert(k.into(), Value::String(v.into()));
        }
        write_atomic(&self.path(CONFIG), c.to_string().as_bytes())
    }

    /// The serial a pump's identity in `dir` (`STATE/identity`) was made with (`factory-csr`),
    /// if it has one; read without the device secret, which opens keys only.
    pub fn stored_serial(dir: &Path) -> Result<Option<String>, IdentityError> {
        let id = Identity::new(dir, DeviceSecret::from_bytes(&[]));
        if id.read(CONFIG)?.is_none() {
            return Ok(None);
        }
        Ok(id
            .config()?
            .get("serial")
            .and_then(Value::as_str)
            .map(str::to_string))
    }

    /// The hardware serial (the device id).
    pub fn serial(&self) -> Result<String, IdentityError> {
        self.config_str("serial").map_err(|e| match e {
            // the device has not made its key yet: say the step that does
            IdentityError::NotEnrolled(m) => IdentityError::NotEnrolled(format!(
                "{m}: make the device's key first (`hale-agent --state DIR factory-csr --serial S`)"
            )),
            e => e,
        })
    }

    fn key_algorithm(&self) -> KeyAlgorithm {
        match self.config_str("key_type").as_deref() {
            Ok("ed25519") => KeyAlgorithm::Ed25519,
            _ => KeyAlgorithm::P256,
        }
    }

    /// The device makes its factory key and CSR (CN = serial). Refused when a factory key exists:
    /// a device has one factory identity.
    pub fn factory_csr(&self, serial: &str, alg: KeyAlgorithm) -> Result<String, IdentityError> {
        let _changing = self.changing()?;
        if self.path(FACTORY_KEY).exists() {
            return Err(IdentityError::Invalid(format!(
                "{}: the device already has a factory key",
                self.path(FACTORY_KEY).display()
            )));
        }
        let kc = hale_pki::generate_key_and_csr(alg, serial)?;
        let sealed = hale_pki::tls::seal_private_key_with_cost(
            &kc.private_key_pem,
            &self.secret.0,
            seal_cost()?,
        )?;
        self.set_config("serial", serial)?;
        self.set_config(
            "key_type",
            if alg == KeyAlgorithm::Ed25519 {
                "ed25519"
            } else {
                "p256"
            },
        )?;
        write_atomic(&self.path(FACTORY_KEY), &sealed)?;
        write_atomic(&self.path(FACTORY_CSR), kc.csr_pem.as_bytes())?;
        Ok(kc.csr_pem)
    }

    /// Store the factory certificate the station issued, after checking it names this device and
    /// holds its factory key.
    pub fn install_factory_certificate(&self, pem: &str) -> Result<(), IdentityError> {
        let _changing = self.changing()?;
        let chain = parse_chain(pem)?;
        let leaf = chain
            .first()
            .ok_or_else(|| IdentityError::Invalid("no certificate".into()))?;
        let id = PeerIdentity::from_der(leaf)?;
        let serial = self.serial()?;
        if id.kind != PeerKind::Factory || id.name != serial {
            return Err(IdentityError::Invalid(format!(
                "the certificate is a {} certificate for {:?}, not the factory certificate of {serial:?}",
                id.kind, id.name
            )));
        }
        let key = self.open_factory_key()?;
        if key_spki_sha256(&key)? != id.spki_sha256 {
            return Err(IdentityError::Invalid(
                "the factory certificate is not for this device's factory key".into(),
            ));
        }
        write_atomic(&self.path(FACTORY_CERT), to_pem(&chain).as_bytes())
    }

    /// Trust this Server CA certificate for enrollment and the device API, and use this EST URL.
    pub fn configure(&self, est_url: &str, server_ca_pem: &str) -> Result<(), IdentityError> {
        let _changing = self.changing()?;
        let ca = hale_pki::tls::certificate_from_pem(server_ca_pem)?;
        write_atomic(&self.path(SERVER_CA), to_pem(&[ca]).as_bytes())?;
        self.set_config("est", est_url)
    }

    fn open_factory_key(&self) -> Result<PrivateKeyDer<'static>, IdentityError> {
        let sealed = self.read(FACTORY_KEY)?.ok_or_else(|| {
            IdentityError::NotEnrolled(format!("{}: missing", self.path(FACTORY_KEY).display()))
        })?;
        Ok(hale_pki::tls::open_private_key(&sealed, &self.secret.0)?)
    }

    fn server_ca(&self) -> Result<CertificateDer<'static>, IdentityError> {
        let b = self.read(SERVER_CA)?.ok_or_else(|| {
            IdentityError::NotEnrolled(format!("{}: missing", self.path(SERVER_CA).display()))
        })?;
        Ok(hale_pki::tls::certificate_from_pem(
            &String::from_utf8_lossy(&b),
        )?)
    }

    /// The factory certificate and key, if the device has them.
    fn factory(
        &self,
    ) -> Result<Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>, IdentityError> {
        let Some(pem) = self.read(FACTORY_CERT)? else {
            return Ok(None);
        };
        let chain = parse_chain(&String::from_utf8_lossy(&pem))?;
        Ok(Some((chain, self.open_factory_key()?)))
    }

    /// The serial of the stored operational certificate, if any, read without opening its key
    /// (what [`operational`](Self::operational) would give, for a check at every poll).
    pub fn current_serial(&self) -> Result<Option<String>, IdentityError> {
        let Some(b) = self.read(OPERATIONAL)? else {
            return Ok(None);
        };
        let v: Value = serde_json::from_slice(&b).map_err(|e| {
            IdentityError::Invalid(format!("{}: {e}", self.path(OPERATIONAL).display()))
        })?;
        Ok(v.get("serial").and_then(Value::as_str).map(str::to_string))
    }

    /// The stored operational certificate and its key, if any.
    pub fn operational(&self) -> Result<Option<Operational>, IdentityError> {
        let Some(b) = self.read(OPERATIONAL)? else {
            return Ok(None);
        };
        let bad = |m: String| {
            IdentityError::Invalid(format!("{}: {m}", self.path(OPERATIONAL).display()))
        };
        let v: Value = serde_json::from_slice(&b).map_err(|e| bad(e.to_string()))?;
        let chain = parse_chain(
            v.get("chain")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("no chain".into()))?,
        )?;
        let sealed = serde_json::to_vec(v.get("key").unwrap_or(&Value::Null))
            .map_err(|e| bad(e.to_string()))?;
        let key = hale_pki::tls::open_private_key(&sealed, &self.secret.0)?;
        let leaf = chain.first().ok_or_else(|| bad("empty chain".into()))?;
        let identity = PeerIdentity::from_der(leaf)?;
        Ok(Some(Operational {
            chain,
            key,
            identity,
        }))
    }

    /// mTLS client configuration with the operational certificate (device API, renewal).
    /// With it, the serial of the certificate it presents.
    pub fn device_tls(&self) -> Result<(Arc<ClientConfig>, String), IdentityError> {
        let op = self.operational()?.ok_or_else(|| {
            IdentityError::NotEnrolled("no operational certificate; run `enroll`".into())
        })?;
        let serial_hex = op.identity.certificate_serial;
        Ok((
            client_config(self.server_ca()?, Some((op.chain, op.key)))?,
            serial_hex,
        ))
    }

    /// Enroll (or renew) so that a usable operational certificate is stored at `now`.
    pub fn ensure(&self, now: SystemTime) -> Result<Action, IdentityError> {
        let current = self.operational()?;
        match current
            .as_ref()
            .map(|o| lifetime(o.identity.not_before, o.identity.not_after, now))
        {
            Some(Lifetime::Valid | Lifetime::NotYetValid) => Ok(Action::Current),
            Some(Lifetime::RenewDue) => {
                let Some(op) = current else {
                    return Ok(Action::Current);
                };
                let mut wait = match self.renewal_wait(now) {
                    Ok(wait) => wait,
                    Err(until) => return Ok(Action::RenewalWaiting { until }),
                };
                let renewal_error =
                    match self.request(Auth::Current(op.chain, op.key), "simplereenroll", None) {
                        Ok(serial_hex) => {
                            *wait = None;
                            self.keep_wait(None);
                            return Ok(Action::Renewed { serial_hex });
                        }
                        Err(e) if e.refused_by_server() => e.to_string(),
                        // no answer (the server is down, the connection broke, or we refused
                        // the server), or another process is changing the identity (`Busy`,
                        // nothing asked): the factory certificate would fare no better. A
                        // refusal that says how long to wait (429 renewal_too_early) is
                        // not asked again before then.
                        Err(e) => {
                            *wait = match &e {
                                IdentityError::Refused {
                                    retry_after: Some(s),
                                    ..
                                } => now.checked_add(Duration::from_secs(*s)),
                                _ => None,
                            };
                            self.keep_wait(*wait);
                            return Ok(Action::RenewalFailed {
                                reason: e.to_string(),
                            });
                        }
                    };
                *wait = None;
                self.keep_wait(None);
                drop(wait);
                // a renewal answer lost on the way leaves the device holding a certificate the
                // server has already superseded (and revoked), so its next renewal is refused
                // (an alert at the handshake, or 403): the factory certificate gets it a new one
                // (the server decides how soon a current one may be replaced)
                let Some((chain, key)) = self.factory()? else {
                    return Ok(Action::RenewalFailed {
                        reason: renewal_error,
                    });
                };
                match self.request(Auth::Factory(chain, key), "simpleenroll", None) {
                    Ok(serial_hex) => Ok(Action::RenewedWithFactory {
                        serial_hex,
                        renewal_error,
                    }),
                    Err(e) => Ok(Action::RenewalFailed {
                        reason: format!("{renewal_error}; with the factory certificate: {e}"),
                    }),
                }
            }
            Some(Lifetime::Expired) => {
                let (chain, key) = self.factory()?.ok_or_else(|| {
                    IdentityError::NotEnrolled(
                        "the operational certificate expired and there is no factory certificate; enroll with a token".into(),
                    )
                })?;
                let serial_hex = self.request(Auth::Factory(chain, key), "simpleenroll", None)?;
                Ok(Action::ReEnrolled { serial_hex })
            }
            None => {
                let (chain, key) = self.factory()?.ok_or_else(|| {
                    IdentityError::NotEnrolled("no factory certificate; enroll with a token".into())
                })?;
                let serial_hex = self.request(Auth::Factory(chain, key), "simpleenroll", None)?;
                Ok(Action::Enrolled { serial_hex })
            }
        }
    }

    /// The device listener refused the operational certificate `serial_hex` (`refusal`: the
    /// alert or the error its request met) although the pump holds it valid, or not yet due for
    /// renewal: an operator revoked it, or the server's clock has it expired. Waiting for the
    /// renewal time would leave the pump without updates or reports for up to a third of the
    /// lifetime (20 days of the default 30), and a renewal with the refused certificate would be
    /// refused too; the factory certificate enrolls the device again at once (the server takes
    /// it: a revoked or expired certificate does not hold a re-enrollment back; a current one
    /// younger than the factory minimum age does, with `429` and `Retry-After`, kept as a
    /// renewal's is).
    ///
    /// `serial_hex` is the certificate the refused requests were made with: when another
    /// process replaced it since, nothing is done ([`Action::Current`]). An expired certificate
    /// goes the way [`ensure`](Self::ensure) takes it.
    pub fn replace_refused(
        &self,
        serial_hex: &str,
        refusal: &str,
        now: SystemTime,
    ) -> Result<Action, IdentityError> {
        let Some(op) = self.operational()? else {
            return self.ensure(now);
        };
        if op.identity.certificate_serial != serial_hex {
            return Ok(Action::Current);
        }
        if lifetime(op.identity.not_before, op.identity.not_after, now) == Lifetime::Expired {
            return self.ensure(now);
        }
        let mut wait = match self.renewal_wait(now) {
            Ok(wait) => wait,
            Err(until) => return Ok(Action::RenewalWaiting { until }),
        };
        let Some((chain, key)) = self.factory()? else {
            return Ok(Action::ReplacementFailed {
                reason: format!(
                    "{refusal}; there is no factory certificate to enroll again with (it needs \
                     an enrollment token from an operator; a decommissioned pump gets none)"
                ),
            });
        };
        match self.request(Auth::Factory(chain, key), "simpleenroll", Some(serial_hex)) {
            Ok(serial_hex) => {
                *wait = None;
                self.keep_wait(None);
                Ok(Action::ReplacedRefused {
                    serial_hex,
                    refusal: refusal.to_string(),
                })
            }
            // another process stored another certificate since the check above (a token's
            // enrollment beside the pump): the transport presents it from the next poll
            Err(IdentityError::Busy(_))
                if self.current_serial().ok().flatten().as_deref() != Some(serial_hex) =>
            {
                Ok(Action::Current)
            }
            Err(e) => {
                if let IdentityError::Refused {
                    retry_after: Some(s),
                    ..
                } = &e
                {
                    *wait = now.checked_add(Duration::from_secs(*s));
                    self.keep_wait(*wait);
                }
                Ok(Action::ReplacementFailed {
                    reason: format!("{refusal}; with the factory certificate: {e}"),
                })
            }
        }
    }

    /// First enrollment with a single-use token (no client certificate).
    pub fn enroll_with_token(&self, token: &str) -> Result<Action, IdentityError> {
        let serial_hex = self.request(Auth::Token(token.to_string()), "simpleenroll", None)?;
        Ok(Action::Enrolled { serial_hex })
    }

    /// POST a fresh CSR to `/.well-known/est/<op>`; on success store the new key and
    /// certificate atomically and return the certificate serial.
    ///
    /// `replacing`: the serial of the certificate this request is to replace; when another
    /// process stored another since, nothing is asked ([`IdentityError::Busy`]).
    fn request(
        &self,
        auth: Auth,
        op: &str,
        replacing: Option<&str>,
    ) -> Result<String, IdentityError> {
        // held through the exchange: the certificate stored is the one for the key sent
        let _changing = self.changing()?;
        if replacing.is_some_and(|s| self.current_serial().ok().flatten().as_deref() != Some(s)) {
            return Err(IdentityError::Busy(self.dir.clone()));
        }
        let serial = self.serial()?;
        let base = self.config_str("est")?;
        let url = format!("{}/.well-known/est/{op}", base.trim_end_matches('/'));
        let kc = hale_pki::generate_key_and_csr(self.key_algorithm(), &serial)?;
        let (config, bearer) = match auth {
            Auth::Factory(chain, key) | Auth::Current(chain, key) => {
                (client_config(self.server_ca()?, Some((chain, key)))?, None)
            }
            Auth::Token(t) => (client_config(self.server_ca()?, None)?, Some(t)),
        };
        let agent = agent_with_timeout(config, crate::http1::REQUEST_DEADLINE);
        let mut req = agent.post(&url).set("Content-Type", "application/pkcs10");
        if let Some(t) = &bearer {
            req = req.set("Authorization", &format!("Bearer {t}"));
        }
        let body = match req.send_string(&kc.csr_pem) {
            Ok(r) => read_limited(r, &url)?,
            Err(ureq::Error::Status(status, r)) => {
                let retry_after = retry_after(r.header("Retry-After"));
                let body = read_limited(r, &url).unwrap_or_default();
                let (code, message) = error_body(&body);
                return Err(IdentityError::Refused {
                    url,
                    status,
                    code,
                    message,
                    retry_after,
                });
            }
            Err(ureq::Error::Transport(t)) => {
                let message = crate::host::transport_message(&t);
                return Err(match alert_received(&t) {
                    Some(alert) => IdentityError::HandshakeRefused {
                        url,
                        alert,
                        message,
                    },
                    None => IdentityError::Transport { url, message },
                });
            }
        };
        let bad = |reason: String| IdentityError::BadResponse {
            url: url.clone(),
            reason,
        };
        let chain = parse_chain(&String::from_utf8_lossy(&body)).map_err(|e| bad(e.to_string()))?;
        let leaf = chain.first().ok_or_else(|| bad("no certificate".into()))?;
        let id = PeerIdentity::from_der(leaf).map_err(|e| bad(e.to_string()))?;
        if id.kind != PeerKind::Device || id.name != serial {
            return Err(bad(format!(
                "a {} certificate for {:?}, expected a device certificate for {serial:?}",
                id.kind, id.name
            )));
        }
        let key = hale_pki::tls::private_key_from_pem(&kc.private_key_pem)?;
        if key_spki_sha256(&key)? != id.spki_sha256 {
            return Err(bad("the certificate is not for the key we sent".into()));
        }
        let sealed = hale_pki::tls::seal_private_key_with_cost(
            &kc.private_key_pem,
            &self.secret.0,
            seal_cost()?,
        )?;
        let sealed: Value =
            serde_json::from_slice(&sealed).map_err(|e| IdentityError::Invalid(e.to_string()))?;
        let doc = json!({
            "chain": to_pem(&chain),
            "key": sealed,
            "serial": id.certificate_serial,
            "not_before": unix(id.not_before),
            "not_after": unix(id.not_after),
        });
        write_atomic(&self.path(OPERATIONAL), doc.to_string().as_bytes())?;
        Ok(id.certificate_serial)
    }
}

enum Auth {
    Factory(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>),
    Current(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>),
    Token(String),
}

/// A client configuration trusting only `server_ca`, with an optional client certificate;
/// HTTP/1.1 (what ureq speaks); session resumption on.
pub fn client_config(
    server_ca: CertificateDer<'static>,
    client: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<Arc<ClientConfig>, IdentityError> {
    let c = match client {
        Some((chain, key)) => hale_pki::tls::client_config(server_ca, chain, key)?,
        None => hale_pki::tls::client_config_without_certificate(server_ca)?,
    };
    let mut c = (*c).clone();
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(c))
}

/// A ureq agent over `config`, each request given at most `timeout` (the update transport's).
pub fn agent_with_timeout(config: Arc<ClientConfig>, timeout: Duration) -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(10).min(timeout))
        .timeout(timeout)
        .tls_config(config)
        .build()
}

/// The alert with which the server refused the client certificate itself, after the handshake:
/// revoked, or expired by the server's clock (rustls sends `CertificateExpired` for a
/// certificate not valid yet too), the refusals a certificate enrolled anew mends. Not:
/// - an alert during the handshake: before the client has checked the server's `Finished`, an
///   alert may come from anyone in the network path (a plaintext one in place of the server's
///   answer to the ClientHello, or one under handshake keys agreed with an impostor). With TLS
///   1.3 the server judges the client certificate after the client's handshake is done, so its
///   refusal arrives as an error of the first read (ureq's `ErrorKind::Io`); with TLS 1.2 it ends
///   the handshake and is not taken;
/// - the other alerts about the certificate: `UnknownCA` is also what every device hears when
///   the server's own CRL expired (`enforce_revocation_expiration`), and `DecryptError`,
///   `BadCertificate` or `CertificateUnknown` say nothing a new certificate from the same CA
///   would mend: a whole fleet would enroll again at every poll.
fn refusal_of_certificate(t: &ureq::Transport) -> Option<rustls::AlertDescription> {
    use rustls::AlertDescription as A;
    if t.kind() != ureq::ErrorKind::Io {
        return None;
    }
    alert_received(t).filter(|a| matches!(a, A::CertificateRevoked | A::CertificateExpired))
}

/// The server's refusal of the client certificate in `t`, if that is how it failed (see
/// [`refusal_of_certificate`]).
pub fn refuses_certificate(t: &ureq::Transport) -> bool {
    refusal_of_certificate(t).is_some()
}

/// The alert the server ended the TLS exchange with, if that is how `e` failed: rustls's
/// `AlertReceived`, in an `io::Error` somewhere down ureq's chain of sources (ureq's
/// `ErrorKind::ConnectionFailed` when the alert came during the handshake, TLS 1.2;
/// `ErrorKind::Io`, around the status line's read error, when it came in place of the answer,
/// TLS 1.3). Refusing the server (its certificate) is another rustls error, not this one; a
/// refused or timed-out connect, a failed name lookup or a hang-up carry no rustls error.
fn alert_received(e: &ureq::Transport) -> Option<rustls::AlertDescription> {
    let mut next = std::error::Error::source(e);
    while let Some(err) = next {
        let tls = err.downcast_ref::<rustls::Error>().or_else(|| {
            err.downcast_ref::<std::io::Error>()
                .and_then(std::io::Error::get_ref)
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        });
        if let Some(rustls::Error::AlertReceived(alert)) = tls {
            return Some(*alert);
        }
        next = err.source();
    }
    None
}

fn read_limited(r: ureq::Response, url: &str) -> Result<Vec<u8>, IdentityError> {
    let mut body = Vec::new();
    r.into_reader()
        .take(MAX_RESPONSE as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|e| IdentityError::Transport {
            url: url.into(),
            message: e.to_string(),
        })?;
    if body.len() > MAX_RESPONSE {
        return Err(IdentityError::BadResponse {
            url: url.into(),
            reason: format!("longer than {MAX_RESPONSE} bytes"),
        });
    }
    Ok(body)
}

/// `(code, message)` of a `{"error": CODE, "message": TEXT}` body; the raw text otherwise.
pub fn error_body(body: &[u8]) -> (String, String) {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    match (
        v.get("error").and_then(Value::as_str),
        v.get("message").and_then(Value::as_str),
    ) {
        (Some(c), m) => (c.to_string(), m.unwrap_or_default().to_string()),
        _ => (
            String::new(),
            String::from_utf8_lossy(body.get(..512).unwrap_or(body))
                .trim()
                .to_string(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(s)
    }

    #[test]
    fn retry_after_takes_delta_seconds_only_and_caps_them() {
        assert_eq!(retry_after(Some("10")), Some(10));
        assert_eq!(retry_after(Some(" 0 ")), Some(0));
        assert_eq!(retry_after(Some("86401")), Some(MAX_RETRY_AFTER));
        assert_eq!(
            retry_after(Some("99999999999999999999")),
            Some(MAX_RETRY_AFTER)
        );
        for ignored in [
            None,
            Some(""),
            Some("-5"),
            Some("+5"),
            Some("1.5"),
            Some("Wed, 21 Oct 2026 07:28:00 GMT"),
            Some("999999999999999999999"),
        ] {
            assert_eq!(retry_after(ignored), None, "{ignored:?}");
        }
    }

    #[test]
    fn renewal_is_due_at_two_thirds_of_the_lifetime() {
        // 30 days from t=1000
        let (nb, na) = (t(1000), t(1000 + 30 * 86_400));
        assert_eq!(renewal_time(nb, na), t(1000 + 20 * 86_400));
        assert_eq!(lifetime(nb, na, t(999)), Lifetime::NotYetValid);
        assert_eq!(lifetime(nb, na, t(1000)), Lifetime::Valid);
        assert_eq!(lifetime(nb, na, t(1000 + 20 * 86_400 - 1)), Lifetime::Valid);
        assert_eq!(lifetime(nb, na, t(1000 + 20 * 86_400)), Lifetime::RenewDue);
        assert_eq!(
            lifetime(nb, na, t(1000 + 30 * 86_400 - 1)),
            Lifetime::RenewDue
        );
        assert_eq!(lifetime(nb, na, t(1000 + 30 * 86_400)), Lifetime::Expired);
    }

    #[test]
    fn error_bodies_are_read_as_sent() {
        assert_eq!(
            error_body(br#"{"error":"token_used","message":"token already redeemed"}"#),
            ("token_used".into(), "token already redeemed".into())
        );
        assert_eq!(
            error_body(b"gateway down"),
            (String::new(), "gateway down".into())
        );
    }
}
