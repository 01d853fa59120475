//! The mTLS listeners: the TLS directory, one rustls configuration per trust domain (each
//! anchored only on the CA it needs, CRLs enforced, hot-reloaded), and the accept loop.
//!
//! ```text
//! TcpListener ─▶ TlsAcceptor(ReloadableServerConfig::current()) ─▶ verified peer certificate
//!   ─▶ PeerIdentity in the request extensions ─▶ hyper_util auto builder ─▶ handler (warp)
//! ```
//!
//! warp 0.4 has no TLS and never sees the peer certificate, hence the own loop (ARCHITECTURE §4).
//! A new configuration (after a CRL change) has a new session-ticket key: sessions from before a
//! revocation cannot resume. Connections that are already open keep their handshake; the device
//! listener therefore checks the device record on every request ([`crate::identity`]).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use hale_pki::tls::{ListenerTls, ReloadableServerConfig, TrustDomain};
use hale_pki::{Ca, CaRole, PeerIdentity};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, ServerName};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

use crate::http::Body;
use crate::identity::{CrlListener, Identity, IdentityError};

/// A TLS handshake must finish within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest certificate, key or CRL file read from the TLS directory.
const MAX_TLS_FILE: u64 = 4 << 20;

/// What the TLS directory holds (see `docs/pki.md`).
#[derive(Debug)]
pub struct TlsMaterial {
    pub dir: PathBuf,
    /// Taken by the identity service (the one online CA key).
    pub device_issuing: Option<Ca>,
    pub device_issuing_der: CertificateDer<'static>,
    pub root_pem: String,
    pub manufacturing_der: CertificateDer<'static>,
    pub technician_der: CertificateDer<'static>,
    pub server_chain: Vec<CertificateDer<'static>>,
    pub server_key: rustls_pki_types::PrivateKeyDer<'static>,
    /// `server.crt` and `server.key` as they were before being read (modified, length)
    server_files: [Option<(SystemTime, u64)>; 2],
    /// `ca/server.crt` as it was at start: what the fleet trusts (none: unreadable)
    server_ca: Option<CertificateDer<'static>>,
}

fn read_small(path: &Path) -> Result<Vec<u8>> {
    let len = std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    anyhow::ensure!(len <= MAX_TLS_FILE, "{} is too large", path.display());
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

fn read_text(path: &Path) -> Result<String> {
    String::from_utf8(read_small(path)?).with_context(|| format!("{} is not text", path.display()))
}

/// Every `CERTIFICATE` block of a PEM file, in order.
pub fn certificates_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let mut out = Vec::new();
    let mut rest = pem;
    while let Some(start) = rest.find(BEGIN) {
        let after = rest.get(start..).unwrap_or_default();
        let end = after
            .find(END)
            .context("PEM certificate without an END line")?;
        let block = after.get(..end + END.len()).unwrap_or_default();
        out.push(hale_pki::tls::certificate_from_pem(block)?);
        rest = after.get(end + END.len()..).unwrap_or_default();
    }
    anyhow::ensure!(!out.is_empty(), "no certificate in the PEM file");
    Ok(out)
}

impl TlsMaterial {
    /// Load the TLS directory; `passphrase` opens `ca/device-issuing.key` and `server.key`.
    pub fn load(dir: &Path, passphrase: &[u8]) -> Result<TlsMaterial> {
        // before they are read: a pair replaced while the server starts is reloaded after
        let server_files = server_files(dir);
        let ca_dir = dir.join("ca");
        let ca_key = ca_dir.join("device-issuing.key");
        let device_issuing = Ca::from_file(&read_small(&ca_key)?, passphrase)
            .with_context(|| format!("opening {}", ca_key.display()))?;
        anyhow::ensure!(
            device_issuing.role() == CaRole::DeviceIssuing,
            "{} is the {}, not the Device Issuing CA",
            ca_key.display(),
            device_issuing.role()
        );
        let cert = |slug: &str| -> Result<(String, CertificateDer<'static>)> {
            let p = ca_dir.join(format!("{slug}.crt"));
            let pem = read_text(&p)?;
            let der = hale_pki::tls::certificate_from_pem(&pem)
                .with_context(|| format!("parsing {}", p.display()))?;
            Ok((pem, der))
        };
        let (root_pem, _) = cert(CaRole::Root.slug())?;
        let (_, manufacturing_der) = cert(CaRole::Manufacturing.slug())?;
        let (_, technician_der) = cert(CaRole::Technician.slug())?;
        let (_, issuing_file) = cert(CaRole::DeviceIssuing.slug())?;
        anyhow::ensure!(
            issuing_file == *device_issuing.certificate_der(),
            "ca/device-issuing.crt is not the certificate in ca/device-issuing.key"
        );
        let chain_path = dir.join("server.crt");
        let server_chain = certificates_from_pem(&read_text(&chain_path)?)
            .with_context(|| format!("parsing {}", chain_path.display()))?;
        let key_path = dir.join("server.key");
        let server_key = hale_pki::tls::open_private_key(&read_small(&key_path)?, passphrase)
            .with_context(|| format!("opening {}", key_path.display()))?;
        Ok(TlsMaterial {
            dir: dir.to_path_buf(),
            device_issuing_der: device_issuing.certificate_der().clone(),
            device_issuing: Some(device_issuing),
            root_pem,
            manufacturing_der,
            technician_der,
            server_chain,
            server_key,
            server_files,
            server_ca: server_ca(dir).ok(),
        })
    }
}

/// A loaded CRL of an offline CA, with the file state it came from.
#[derive(Debug, Clone)]
struct OfflineCrl {
    der: CertificateRevocationListDer<'static>,
    number: u64,
    /// its validity: the listener refuses every certificate of the CA once `next_update` passed
    this_update: SystemTime,
    next_update: SystemTime,
    modified: Option<SystemTime>,
    /// Hex serials it lists: checked on every staff and factory-certificate enrollment request
    /// too, so a connection opened before the revocation cannot go on using it.
    revoked: std::collections::BTreeSet<String>,
}

#[derive(Debug)]
struct Crls {
    device: Option<CertificateRevocationListDer<'static>>,
    manufacturing: OfflineCrl,
    technician: OfflineCrl,
    /// the listeners' TLS (the server's chain and key, each listener's anchors)
    tls: ListenerSet,
}

/// The three listeners' TLS, without the CRLs.
#[derive(Debug)]
struct ListenerSet {
    device: ListenerTls,
    enroll: ListenerTls,
    staff: ListenerTls,
    /// the chain they present, the server's certificate first
    chain: Vec<CertificateDer<'static>>,
}

impl ListenerSet {
    fn new(
        chain: Vec<CertificateDer<'static>>,
        key: &rustls_pki_types::PrivateKeyDer<'static>,
        issuing: &CertificateDer<'static>,
        manufacturing: &CertificateDer<'static>,
        technician: &CertificateDer<'static>,
    ) -> Result<ListenerSet> {
        let device = ListenerTls::new(
            TrustDomain::DeviceApi,
            std::slice::from_ref(issuing),
            chain.clone(),
            key.clone_key(),
        )?;
        let enroll = ListenerTls::new(
            TrustDomain::Enrollment,
            &[manufacturing.clone(), issuing.clone()],
            chain.clone(),
            key.clone_key(),
        )?;
        let staff = ListenerTls::new(
            TrustDomain::Staff,
            std::slice::from_ref(technician),
            chain.clone(),
            key.clone_key(),
        )?;
        Ok(ListenerSet {
            device,
            enroll,
            staff,
            chain,
        })
    }

    /// The three configurations with `crls`, all or none.
    fn configs(&self, crls: &Crls) -> Result<[Arc<rustls::ServerConfig>; 3]> {
        Ok([
            self.device.server_config(&device_crls(crls))?,
            self.enroll.server_config(&enroll_crls(crls))?,
            self.staff
                .server_config(std::slice::from_ref(&crls.technician.der))?,
        ])
    }
}

/// A certificate the server reloaded ([`Listeners::poll_server_certificate`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// serial, lower-case hex
    pub serial: String,
    pub not_after: SystemTime,
}

/// The three listeners' TLS: built from the material, rebuilt when a CRL changes.
#[derive(Debug)]
pub struct Listeners {
    dir: PathBuf,
    pub device_config: Arc<ReloadableServerConfig>,
    pub enroll_config: Arc<ReloadableServerConfig>,
    pub staff_config: Arc<ReloadableServerConfig>,
    device_issuing_der: CertificateDer<'static>,
    manufacturing_der: CertificateDer<'static>,
    technician_der: CertificateDer<'static>,
    /// what the configurations are built from, changed under this one lock
    crls: Mutex<Crls>,
    /// where `server.key`'s passphrase comes from, for a reload of `server.crt` and
    /// `server.key` ([`Listeners::poll_server_certificate`]); none: no reload
    reload_passphrase: std::sync::OnceLock<hale_repo::Passphrase>,
    /// `server.crt` and `server.key` as last read (modified, length)
    server_files: Mutex<[Option<(SystemTime, u64)>; 2]>,
    /// the Server CA certificate as it was at start: a reloaded chain must verify with it
    server_ca: Option<CertificateDer<'static>>,
    /// `(CA slug, CRL number, expired)` already logged ([`offline_crl_warnings`](Listeners::offline_crl_warnings))
    crl_warned: Mutex<std::collections::BTreeSet<(&'static str, u64, bool)>>,
    /// the certificates presented and trusted, for their expiry
    certificates: Mutex<Vec<Served>>,
    /// `(name, notAfter, expired)` already logged ([`certificate_warnings`](Listeners::certificate_warnings))
    cert_warned: Mutex<std::collections::BTreeSet<(&'static str, SystemTime, bool)>>,
}

/// How long before the server's own TLS certificate expires the log and `/healthz` warn: 30
/// days, time to issue a new one (the server reloads it: no restart).
pub const SERVER_CERT_WARNING: Duration = Duration::from_secs(30 * 86_400);
/// How long before a CA certificate expires they warn: 180 days, as renewing one is a key
/// ceremony (and replacing the hierarchy means enrolling every device again).
pub const CA_CERT_WARNING: Duration = Duration::from_secs(180 * 86_400);

/// A certificate the listeners present or trust, and when it ends.
#[derive(Debug, Clone)]
struct Served {
    /// `server`, `server-ca`, or the CA's slug
    name: &'static str,
    /// where it is, relative to the TLS directory
    file: &'static str,
    what: &'static str,
    /// what stops once it has expired
    stops: &'static str,
    not_after: SystemTime,
    /// the names it is for (the server's own certificate: a renewal must keep them)
    names: Vec<ServerName<'static>>,
}

/// A certificate that expired or expires soon ([`Listeners::certificate_status`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertNotice {
    /// `server`, `server-ca`, or the CA's slug
    pub name: &'static str,
    pub not_after: SystemTime,
    pub expired: bool,
    /// what stops and what to do
    pub message: String,
}

/// The certificates of `m` the listeners present or trust, each with its notAfter; one that does
/// not parse is left out with an error in the log (rustls took it: not a reason to stop serving).
fn served_certificates(m: &TlsMaterial) -> Vec<Served> {
    let mut out = served_server(&m.server_chain, &m.dir);
    let mut add = |n, f, w, st, der| add_served(&mut out, (n, f, w, st), der);
    add(
        "device-issuing",
        "ca/device-issuing.crt",
        "the Device Issuing CA certificate",
        "the device listener refuses every device certificate, and enrollment and renewal stop",
        Ok(m.device_issuing_der.to_vec()),
    );
    add(
        "manufacturing",
        "ca/manufacturing.crt",
        "the Manufacturing CA certificate",
        "the enrollment listener refuses every factory certificate",
        Ok(m.manufacturing_der.to_vec()),
    );
    add(
        "technician",
        "ca/technician.crt",
        "the Technician CA certificate",
        "the staff listener refuses every technician and operator certificate",
        Ok(m.technician_der.to_vec()),
    );
    add(
        "root",
        "ca/root.crt",
        "the root CA certificate",
        "no certificate of the hierarchy verifies: every listener refuses every client",
        hale_pki::tls::certificate_from_pem(&m.root_pem).map(|d| d.to_vec()),
    );
    out
}

/// A [`Served`] into `out`, or an error in the log when `der` has no readable notAfter.
fn add_served(
    out: &mut Vec<Served>,
    (name, file, what, stops): (&'static str, &'static str, &'static str, &'static str),
    der: Result<Vec<u8>, hale_pki::PkiError>,
) {
    match der.and_then(|d| hale_pki::tls::certificate_not_after(&d)) {
        Ok(not_after) => out.push(Served {
            name,
            file,
            what,
            stops,
            not_after,
            names: Vec::new(),
        }),
        Err(e) => {
            tracing::error!(certificate = file, error = %e, "its expiry cannot be read: not watched")
        }
    }
}

/// The server's certificate and the Server CA's, from the chain the listeners present.
fn served_server(chain: &[CertificateDer<'static>], dir: &Path) -> Vec<Served> {
    const EVERY_CONNECTION: &str =
        "devices, technicians, operators and factory enrollment refuse every connection to this server";
    let mut out = Vec::new();
    let mut add = |n, f, w, st, der| add_served(&mut out, (n, f, w, st), der);
    let leaf = chain.first().map(|c| c.to_vec()).unwrap_or_default();
    // what a renewal is issued for (none readable: the hint shows where they go)
    let names = hale_pki::tls::server_names(&leaf).unwrap_or_default();
    add(
        "server",
        "server.crt",
        "the server's TLS certificate",
        EVERY_CONNECTION,
        Ok(leaf),
    );
    // the Server CA: as the chain sends it, else as the directory keeps it (clients hold it)
    match chain.get(1) {
        Some(ca) => add(
            "server-ca",
            "server.crt",
            "the Server CA certificate in the server's chain",
            EVERY_CONNECTION,
            Ok(ca.to_vec()),
        ),
        None => add(
            "server-ca",
            "ca/server.crt",
            "the Server CA certificate",
            EVERY_CONNECTION,
            server_ca(dir).map(|d| d.to_vec()),
        ),
    }
    if let Some(server) = out.iter_mut().find(|c| c.name == "server") {
        server.names = names;
    }
    out
}

/// The command that renews the server's certificate in `dir` in place: issued for `names`, the
/// names of the certificate presented now (a reload takes only a certificate valid for all of
/// them), `--force` replacing `server.crt` and `server.key` together (hale-sign's
/// `ServerCertArgs`). `CA_DIR` stands for the `ca init` directory, which the server does not
/// know (its Server CA file never comes here).
fn server_cert_renewal(dir: &Path, names: &[ServerName<'_>]) -> String {
    let mut args = String::from("hale-sign ca server-cert --ca-dir CA_DIR");
    for n in names {
        let flag = match n {
            ServerName::IpAddress(_) => "--ip",
            _ => "--dns",
        };
        args.push_str(&format!(" {flag} {}", n.to_str()));
    }
    if names.is_empty() {
        args.push_str(" --dns NAME… [--ip IP…]");
    }
    let out = dir.join("server");
    format!(
        "{args} --out {} --force",
        shell_word(&out.to_string_lossy())
    )
}

/// `s` as one word of a POSIX shell command: as it is when that is safe, else single-quoted.
fn shell_word(s: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "/._-+:@%=,".contains(c);
    if !s.is_empty() && s.chars().all(plain) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// The Server CA certificate as the TLS directory keeps it (`ca/server.crt`): what clients trust.
fn server_ca(dir: &Path) -> Result<CertificateDer<'static>, hale_pki::PkiError> {
    std::fs::read_to_string(dir.join("ca/server.crt"))
        .map_err(|e| hale_pki::PkiError::CertificateMalformed(format!("ca/server.crt: {e}")))
        .and_then(|pem| hale_pki::tls::certificate_from_pem(&pem))
}

/// `server.crt` and `server.key` as they are on disk now: (modified, length) each.
fn server_files(dir: &Path) -> [Option<(SystemTime, u64)>; 2] {
    ["server.crt", "server.key"].map(|f| {
        std::fs::metadata(dir.join(f))
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())))
    })
}

/// An offline CA's CRL that expired or expires soon ([`Listeners::offline_crl_status`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlNotice {
    pub ca: CaRole,
    pub number: u64,
    pub expired: bool,
    /// what the listener does and what to run
    pub message: String,
}

fn crl_path(dir: &Path, ca: CaRole) -> PathBuf {
    dir.join("crl").join(format!("{}.crl", ca.slug()))
}

fn modified(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

impl Listeners {
    /// Build the listeners' configurations. `device_crl` is the server's Device Issuing CA CRL.
    pub fn new(m: &TlsMaterial, device_crl: &[u8], now: SystemTime) -> Result<Listeners> {
        let tls = ListenerSet::new(
            m.server_chain.clone(),
            &m.server_key,
            &m.device_issuing_der,
            &m.manufacturing_der,
            &m.technician_der,
        )?;
        // at start an expired CRL is loaded (and logged, [`Listeners::offline_crl_warnings`]):
        // its listener refuses every certificate of that CA by itself, while the device API
        // serves on; refusing to start would take updates away from every device
        let load = |ca: CaRole, cert: &CertificateDer<'static>| -> Result<OfflineCrl> {
            let p = crl_path(&m.dir, ca);
            let pem = read_text(&p)?;
            let checked = hale_pki::tls::crl_from_pem(&pem).and_then(|der| {
                let v = hale_pki::crl::verify_crl_signature(&der, cert)?;
                if now < v.this_update {
                    return Err(hale_pki::PkiError::CertificateMalformed(
                        "CRL: not yet valid (thisUpdate in the future)".into(),
                    ));
                }
                Ok(offline_crl(der, v, modified(&p)))
            });
            checked.with_context(|| format!("{}", p.display()))
        };
        let crls = Crls {
            device: Some(CertificateRevocationListDer::from(device_crl.to_vec())),
            manufacturing: load(CaRole::Manufacturing, &m.manufacturing_der)?,
            technician: load(CaRole::Technician, &m.technician_der)?,
            tls,
        };
        let [device, enroll, staff] = crls.tls.configs(&crls)?;
        Ok(Listeners {
            dir: m.dir.clone(),
            device_config: Arc::new(ReloadableServerConfig::new(device)),
            enroll_config: Arc::new(ReloadableServerConfig::new(enroll)),
            staff_config: Arc::new(ReloadableServerConfig::new(staff)),
            device_issuing_der: m.device_issuing_der.clone(),
            manufacturing_der: m.manufacturing_der.clone(),
            technician_der: m.technician_der.clone(),
            crls: Mutex::new(crls),
            reload_passphrase: std::sync::OnceLock::new(),
            server_files: Mutex::new(m.server_files),
            server_ca: m.server_ca.clone(),
            crl_warned: Mutex::default(),
            certificates: Mutex::new(served_certificates(m)),
            cert_warned: Mutex::default(),
        })
    }

    fn served(&self) -> std::sync::MutexGuard<'_, Vec<Served>> {
        self.certificates
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Reload `server.crt` and `server.key` when they change on disk
    /// ([`Listeners::poll_server_certificate`]), opening the key with the passphrase from
    /// `passphrase` (a file or the environment, read again at each reload).
    pub fn watch_server_certificate(&self, passphrase: hale_repo::Passphrase) {
        let _ = self.reload_passphrase.set(passphrase);
    }

    /// When `server.crt` or `server.key` changed on disk since they were last read (and a
    /// passphrase source was given, [`Listeners::watch_server_certificate`]): load them and
    /// present them on every listener from the next connection, or say why not (the listeners
    /// keep what they present). Each state of the two files is tried once: a key written after
    /// its certificate is tried again when it lands.
    ///
    /// A new chain is taken only if a client that trusts the Server CA (`ca/server.crt` as it
    /// was at start, as pumps and staff tools do) would accept it now for every name (DNS name or
    /// IP address) the current certificate is for, and its key is the certificate's: a reload
    /// never makes the fleet refuse the server. A passphrase that cannot be read and a
    /// certificate not valid yet (a signer's clock ahead) are tried again at each poll.
    pub fn poll_server_certificate(&self, now: SystemTime) -> Option<Result<Reloaded>> {
        let passphrase = self.reload_passphrase.get()?;
        let files = server_files(&self.dir);
        let before = {
            let mut known = self
                .server_files
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if *known == files {
                return None;
            }
            std::mem::replace(&mut *known, files)
        };
        let mut transient = false;
        let r = self.reload_server_certificate(passphrase, now, &mut transient);
        if transient {
            // not the files' fault (the passphrase cannot be read now, a certificate a few
            // seconds ahead of this clock): tried again at the next poll
            *self
                .server_files
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = before;
        }
        Some(r)
    }

    fn reload_server_certificate(
        &self,
        passphrase: &hale_repo::Passphrase,
        now: SystemTime,
        transient: &mut bool,
    ) -> Result<Reloaded> {
        let chain_path = self.dir.join("server.crt");
        let chain = certificates_from_pem(&read_text(&chain_path)?)
            .with_context(|| format!("parsing {}", chain_path.display()))?;
        let key_path = self.dir.join("server.key");
        let pass = passphrase.read().map_err(|e| {
            *transient = true;
            anyhow::anyhow!("reading the passphrase of server.key: {e}")
        })?;
        let key = hale_pki::tls::open_private_key(&read_small(&key_path)?, &pass)
            .with_context(|| format!("opening {}", key_path.display()))?;
        let server_ca = self.server_ca.as_ref().context(
            "ca/server.crt could not be read at start: restart the server to present a new certificate",
        )?;
        let mut crls = self.crls();
        let current = crls
            .tls
            .chain
            .first()
            .context("no certificate presented now")?;
        let names = hale_pki::tls::server_names(current)?;
        anyhow::ensure!(
            !names.is_empty(),
            "the certificate presented now names no DNS name or IP address: which names the new \
             one must be valid for is not known (restart the server to load it)"
        );
        hale_pki::tls::check_server_chain(&chain, server_ca, &names, now).map_err(|e| {
            use rustls::CertificateError::{NotValidYet, NotValidYetContext};
            if let hale_pki::PkiError::Tls(rustls::Error::InvalidCertificate(
                NotValidYet | NotValidYetContext { .. },
            )) = e
            {
                *transient = true;
            }
            anyhow::anyhow!(
                "{}: clients that trust ca/server.crt would refuse it for {}: {}",
                chain_path.display(),
                names
                    .iter()
                    .map(|n| n.to_str().into_owned())
                    .collect::<Vec<_>>()
                    .join(", "),
                match e {
                    hale_pki::PkiError::Tls(e) => e.to_string(),
                    e => e.to_string(),
                }
            )
        })?;
        let leaf = chain.first().context("no certificate in server.crt")?;
        let reloaded = Reloaded {
            serial: hale_pki::tls::certificate_serial(leaf)?,
            not_after: hale_pki::tls::certificate_not_after(leaf)?,
        };
        // the key must be the certificate's (rustls checks), and all three configurations build
        let tls = ListenerSet::new(
            chain.clone(),
            &key,
            &self.device_issuing_der,
            &self.manufacturing_der,
            &self.technician_der,
        )?;
        let [device, enroll, staff] = tls.configs(&crls)?;
        self.device_config.replace(device);
        self.enroll_config.replace(enroll);
        self.staff_config.replace(staff);
        crls.tls = tls;
        drop(crls);
        let mut served = self.served();
        served.retain(|c| c.name != "server" && c.name != "server-ca");
        let mut new = served_server(&chain, &self.dir);
        new.append(&mut served);
        *served = new;
        Ok(reloaded)
    }

    /// Log what has not been logged of [`offline_crl_warnings`](Self::offline_crl_warnings)
    /// and [`certificate_warnings`](Self::certificate_warnings): an error once expired, a
    /// warning before.
    pub fn log_warnings(&self, now: SystemTime) {
        let crls = self.offline_crl_warnings(now);
        let certs = self.certificate_warnings(now);
        let notices = crls.iter().map(|n| (n.expired, &n.message));
        for (expired, message) in notices.chain(certs.iter().map(|n| (n.expired, &n.message))) {
            if expired {
                tracing::error!("{message}");
            } else {
                tracing::warn!("{message}");
            }
        }
    }

    /// `(name, notAfter)` of each certificate the listeners present or trust.
    pub fn certificate_validity(&self) -> Vec<(&'static str, SystemTime)> {
        self.served()
            .iter()
            .map(|c| (c.name, c.not_after))
            .collect()
    }

    /// What the certificates' expiry means at `now` and what to do, for `/healthz` and the log:
    /// one notice per certificate that expired or expires within [`SERVER_CERT_WARNING`] (the
    /// server's own) or [`CA_CERT_WARNING`] (a CA's). The server's certificate is reloaded when
    /// its files change ([`Listeners::poll_server_certificate`]); a new CA certificate takes a
    /// restart.
    pub fn certificate_status(&self, now: SystemTime) -> Vec<CertNotice> {
        let mut out = Vec::new();
        for c in self.served().iter() {
            let left = c
                .not_after
                .duration_since(now)
                .ok()
                .filter(|l| !l.is_zero());
            let (within, fix) = if c.name == "server" {
                (
                    SERVER_CERT_WARNING,
                    format!(
                        "issue a new one for the same names, its key sealed with the server's passphrase: `{}` (CA_DIR: where the Server CA file is kept; issued elsewhere, put the pair at {} and {}): the server presents it from the next connection (no restart)",
                        server_cert_renewal(&self.dir, &c.names),
                        self.dir.join("server.crt").display(),
                        self.dir.join("server.key").display()
                    ),
                )
            } else {
                (
                    CA_CERT_WARNING,
                    "a CA certificate is renewed from the key above it in a key ceremony (hale-sign has no command for it yet); a new hierarchy (`hale-sign ca init`) means enrolling every device again".to_string(),
                )
            };
            if left.is_some_and(|l| l > within) {
                continue;
            }
            let when = hale_pki::utc(c.not_after);
            let message = match left {
                Some(l) => format!(
                    "{} ({}) expires at {when} (in {}): then {}; {fix}",
                    c.what,
                    c.file,
                    match l.as_secs() {
                        s if s < 2 * 86_400 => format!("{} h", s / 3600),
                        s => format!("{} days", s / 86_400),
                    },
                    c.stops
                ),
                None => format!(
                    "{} ({}) expired at {when}: {}; {fix}",
                    c.what, c.file, c.stops
                ),
            };
            out.push(CertNotice {
                name: c.name,
                not_after: c.not_after,
                expired: left.is_none(),
                message,
            });
        }
        out
    }

    /// [`certificate_status`](Self::certificate_status), each notice once per certificate and
    /// state: for the log.
    pub fn certificate_warnings(&self, now: SystemTime) -> Vec<CertNotice> {
        let mut warned = self
            .cert_warned
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.certificate_status(now)
            .into_iter()
            .filter(|n| warned.insert((n.name, n.not_after, n.expired)))
            .collect()
    }

    /// `(CA, CRL number, nextUpdate)` of the loaded Manufacturing and Technician CA CRLs.
    pub fn offline_crl_validity(&self) -> Vec<(CaRole, u64, SystemTime)> {
        let crls = self.crls();
        vec![
            (
                CaRole::Manufacturing,
                crls.manufacturing.number,
                crls.manufacturing.next_update,
            ),
            (
                CaRole::Technician,
                crls.technician.number,
                crls.technician.next_update,
            ),
        ]
    }

    /// What the loaded offline CRLs mean at `now` and what to do, for `/healthz` and the log:
    /// one notice per CRL that expired (its listener refuses every certificate of that CA) or
    /// expires within two days (half its lifetime when that is shorter).
    pub fn offline_crl_status(&self, now: SystemTime) -> Vec<CrlNotice> {
        let crls = self.crls();
        let mut out = Vec::new();
        for (ca, c) in [
            (CaRole::Manufacturing, &crls.manufacturing),
            (CaRole::Technician, &crls.technician),
        ] {
            let life = c
                .next_update
                .duration_since(c.this_update)
                .unwrap_or_default();
            let within = (life / 2).min(Duration::from_secs(2 * 86_400));
            let left = c.next_update.duration_since(now).ok();
            let expired = left.is_none_or(|l| l.is_zero());
            if !expired && left.is_some_and(|l| l > within) {
                continue;
            }
            let refused = match ca {
                CaRole::Manufacturing => {
                    "the enrollment listener refuses every factory certificate (devices enrolling with it)"
                }
                _ => "the staff listener refuses every technician and operator certificate",
            };
            let fix = format!(
                "sign a new CRL (`hale-sign ca crl --ca {} …`) and put it at {} (read within seconds)",
                ca.slug(),
                crl_path(&self.dir, ca).display()
            );
            let when = hale_pki::utc(c.next_update);
            let message = match left {
                Some(l) if !expired => format!(
                    "{ca} CRL number {} expires at {when} (in {} h): then {refused}; {fix}",
                    c.number,
                    l.as_secs() / 3600
                ),
                _ => format!(
                    "{ca} CRL number {} expired at {when}: {refused}; {fix}",
                    c.number
                ),
            };
            out.push(CrlNotice {
                ca,
                number: c.number,
                expired,
                message,
            });
        }
        out
    }

    /// [`offline_crl_status`](Self::offline_crl_status), each notice once per CRL and state:
    /// for the log.
    pub fn offline_crl_warnings(&self, now: SystemTime) -> Vec<CrlNotice> {
        let mut warned = self
            .crl_warned
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.offline_crl_status(now)
            .into_iter()
            .filter(|n| warned.insert((n.ca.slug(), n.number, n.expired)))
            .collect()
    }

    /// Is this staff certificate (hex serial) on the loaded Technician CA CRL? The handshake
    /// checks it for new connections; staff requests check it again, for connections that were
    /// open when the CRL arrived.
    pub fn staff_certificate_revoked(&self, certificate_serial: &str) -> bool {
        self.crls().technician.revoked.contains(certificate_serial)
    }

    /// When the loaded Technician CA CRL expired (unix seconds), if it has at `now`. The
    /// handshake refuses every staff certificate then; staff requests check it again, for
    /// connections and resumed sessions from before.
    pub fn staff_crl_expired(&self, now: SystemTime) -> Option<u64> {
        expired_at(self.crls().technician.next_update, now)
    }

    /// The number of the loaded CRL of the Manufacturing or Technician CA.
    pub fn offline_crl_number(&self, ca: CaRole) -> Option<u64> {
        let crls = self.crls();
        match ca {
            CaRole::Manufacturing => Some(crls.manufacturing.number),
            CaRole::Technician => Some(crls.technician.number),
            _ => None,
        }
    }

    fn crls(&self) -> std::sync::MutexGuard<'_, Crls> {
        self.crls.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Load a CRL of the Manufacturing or Technician CA (from the staff API or the TLS
    /// directory): verified with its CA, current, and not older than the loaded one. Returns its
    /// number. On success the affected listener uses it for every new connection; on any refusal
    /// (here, or rustls/webpki building the listener's configuration) nothing changes: the file
    /// (`write_file`) is written only once the new configuration is built.
    pub fn load_offline_crl(
        &self,
        ca: CaRole,
        pem: &str,
        now: SystemTime,
        write_file: bool,
    ) -> Result<u64, IdentityError> {
        let bad = |e: anyhow::Error| IdentityError::BadCrl(format!("{e:#}"));
        let cert = match ca {
            CaRole::Manufacturing => &self.manufacturing_der,
            CaRole::Technician => &self.technician_der,
            other => {
                return Err(IdentityError::BadRequest(format!(
                    "the server loads CRLs of the Manufacturing and Technician CAs, not the {other}"
                )))
            }
        };
        let path = crl_path(&self.dir, ca);
        let new = check_offline_crl(pem, cert, now, None).map_err(bad)?;
        let (der, number) = (new.der.clone(), new.number);
        let mut crls = self.crls();
        let current = match ca {
            CaRole::Manufacturing => &crls.manufacturing,
            _ => &crls.technician,
        };
        if number < current.number {
            return Err(IdentityError::BadCrl(format!(
                "CRL number {number} is older than the loaded {}",
                current.number
            )));
        }
        // the listener's configuration first: webpki may refuse a CRL that verify_crl took, and
        // then neither the file nor the loaded state may change (a file it refuses would stop
        // the next start in Listeners::new)
        let config = match ca {
            CaRole::Manufacturing => crls
                .tls
                .enroll
                .server_config(&enroll_crls_with(&crls, &der)),
            _ => crls.tls.staff.server_config(std::slice::from_ref(&der)),
        }
        .map_err(|e| IdentityError::BadCrl(e.to_string()))?;
        if write_file {
            hale_repo::layout::write_atomic(&path, pem.as_bytes())
                .map_err(|e| IdentityError::Internal(e.to_string()))?;
        }
        let new = OfflineCrl {
            modified: modified(&path),
            ..new
        };
        match ca {
            CaRole::Manufacturing => {
                crls.manufacturing = new;
                self.enroll_config.replace(config);
            }
            _ => {
                crls.technician = new;
                self.staff_config.replace(config);
            }
        }
        Ok(number)
    }

    /// `pem` is a CRL signed by `ca` whose thisUpdate is after `now`.
    fn crl_not_yet_valid(&self, ca: CaRole, pem: &str, now: SystemTime) -> bool {
        let cert = match ca {
            CaRole::Manufacturing => &self.manufacturing_der,
            CaRole::Technician => &self.technician_der,
            _ => return false,
        };
        hale_pki::tls::crl_from_pem(pem)
            .ok()
            .and_then(|der| hale_pki::crl::verify_crl_signature(&der, cert).ok())
            .is_some_and(|v| v.this_update > now)
    }

    /// Re-read CRL files that changed on disk (one not valid yet at every call until it is).
    /// Returns the (CA, number) of each one loaded.
    pub fn poll_crl_files(&self, now: SystemTime) -> Vec<(CaRole, Result<u64, IdentityError>)> {
        let mut out = Vec::new();
        for ca in [CaRole::Manufacturing, CaRole::Technician] {
            let p = crl_path(&self.dir, ca);
            let m = modified(&p);
            let known = {
                let crls = self.crls();
                match ca {
                    CaRole::Manufacturing => crls.manufacturing.modified,
                    _ => crls.technician.modified,
                }
            };
            if m.is_none() || m == known {
                continue;
            }
            let text = read_text(&p).map_err(|e| IdentityError::BadCrl(format!("{e:#}")));
            let r = text
                .as_ref()
                .map_err(Clone::clone)
                .and_then(|pem| self.load_offline_crl(ca, pem, now, false));
            // a CRL signed by a clock ahead of this one (not valid yet) is read again at every
            // poll until it is: remembered as refused, the revocation it carries would wait for
            // the file to change or a restart
            let not_yet = r.is_err()
                && text
                    .as_ref()
                    .is_ok_and(|pem| self.crl_not_yet_valid(ca, pem, now));
            if r.is_err() && !not_yet {
                // do not retry the same file every poll: remember its time
                let mut crls = self.crls();
                match ca {
                    CaRole::Manufacturing => crls.manufacturing.modified = m,
                    _ => crls.technician.modified = m,
                }
            }
            out.push((ca, r));
        }
        out
    }
}

fn device_crls(c: &Crls) -> Vec<CertificateRevocationListDer<'static>> {
    c.device.iter().cloned().collect()
}

fn enroll_crls(c: &Crls) -> Vec<CertificateRevocationListDer<'static>> {
    enroll_crls_with(c, &c.manufacturing.der)
}

/// The enrollment listener's CRLs with `manufacturing` as the Manufacturing CA's.
fn enroll_crls_with(
    c: &Crls,
    manufacturing: &CertificateRevocationListDer<'static>,
) -> Vec<CertificateRevocationListDer<'static>> {
    let mut v = device_crls(c);
    v.push(manufacturing.clone());
    v
}

/// A new CRL file of an offline CA: issued by it and current at `now` (a CRL the server never
/// had must be usable).
fn check_offline_crl(
    pem: &str,
    ca_cert: &CertificateDer<'static>,
    now: SystemTime,
    modified: Option<SystemTime>,
) -> Result<OfflineCrl> {
    let der = hale_pki::tls::crl_from_pem(pem)?;
    let v = hale_pki::crl::verify_crl(&der, ca_cert, now)?;
    Ok(offline_crl(der, v, modified))
}

fn offline_crl(
    der: CertificateRevocationListDer<'static>,
    v: hale_pki::crl::VerifiedCrl,
    modified: Option<SystemTime>,
) -> OfflineCrl {
    OfflineCrl {
        der,
        number: v.number,
        this_update: v.this_update,
        next_update: v.next_update,
        modified,
        revoked: v.revoked.into_iter().collect(),
    }
}

/// `next_update` in unix seconds, when it is not after `now`.
fn expired_at(next_update: SystemTime, now: SystemTime) -> Option<u64> {
    (next_update <= now).then(|| {
        next_update
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    })
}

impl CrlListener for Listeners {
    fn factory_certificate_revoked(&self, certificate_serial: &str) -> bool {
        self.crls()
            .manufacturing
            .revoked
            .contains(certificate_serial)
    }

    fn factory_crl_expired(&self, now: SystemTime) -> Option<u64> {
        expired_at(self.crls().manufacturing.next_update, now)
    }

    fn device_crl_changed(&self, crl_der: &[u8]) {
        let mut crls = self.crls();
        crls.device = Some(CertificateRevocationListDer::from(crl_der.to_vec()));
        match crls.tls.device.server_config(&device_crls(&crls)) {
            Ok(c) => self.device_config.replace(c),
            Err(e) => tracing::error!(error = %e, "device listener: new CRL not loaded"),
        }
        match crls.tls.enroll.server_config(&enroll_crls(&crls)) {
            Ok(c) => self.enroll_config.replace(c),
            Err(e) => tracing::error!(error = %e, "enrollment listener: new CRL not loaded"),
        }
    }
}

/// Keep the server's CRL fresh, pick up CRL files dropped into the TLS directory, and a new
/// `server.crt` and `server.key`.
pub async fn maintain_crls(identity: Arc<Identity>, listeners: Arc<Listeners>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (id, l) = (identity.clone(), listeners.clone());
        let r = tokio::task::spawn_blocking(move || {
            let now = SystemTime::now();
            if let Err(e) = id.refresh_crl(now) {
                tracing::error!(error = %e, "Device Issuing CA CRL not re-signed");
            }
            match l.poll_server_certificate(now) {
                None => {}
                Some(Ok(r)) => {
                    tracing::info!(serial = %r.serial, not_after = %hale_pki::utc(r.not_after), "server certificate reloaded: presented from the next connection");
                    id.record_server_certificate_load(&r.serial, r.not_after);
                }
                Some(Err(e)) => tracing::error!(error = %format!("{e:#}"), "server.crt and server.key not reloaded: the listeners present the certificate they had"),
            }
            l.log_warnings(now);
            for (ca, r) in l.poll_crl_files(now) {
                match r {
                    Ok(n) => {
                        tracing::info!(ca = %ca, crl_number = n, "CRL file loaded");
                        id.record_crl_load(ca.slug(), n, "file", "tls-dir");
                    }
                    Err(e) => tracing::error!(ca = %ca, error = %e, "CRL file refused"),
                }
            }
        })
        .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "CRL maintenance task failed");
        }
    }
}

/// Serve TLS connections on `listener` until `shutdown`. Each request carries the verified
/// client's [`PeerIdentity`] in its extensions (none on the enrollment listener without a
/// certificate). A verified certificate that does not follow our profiles closes the connection.
pub async fn serve<F, Fut>(
    domain: TrustDomain,
    listener: TcpListener,
    config: Arc<ReloadableServerConfig>,
    mut limits: crate::http::ConnLimits,
    handler: F,
    shutdown: impl Future<Output = ()>,
) where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let builder = Arc::new(crate::http::connection_builder());
    let (watch_tx, watch_rx) = tokio::sync::watch::channel(());
    tokio::pin!(shutdown);
    loop {
        let Some((stream, peer_addr, admitted)) =
            crate::http::next_connection(&listener, &mut limits, shutdown.as_mut()).await
        else {
            break;
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(config.current());
        let handler = handler.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let mut stop = watch_rx.clone();
        tokio::spawn(async move {
            let accept = acceptor.accept(stream).into_fallible();
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, accept).await {
                Ok(Ok(s)) => s,
                Ok(Err((e, mut tcp))) => {
                    tracing::info!(%peer_addr, listener = %domain, error = %e, "TLS handshake refused");
                    // the alert is written: a lingering close lets it reach a client that has
                    // already sent its request, instead of a reset
                    let _ = tcp.shutdown().await;
                    return;
                }
                Err(_) => {
                    tracing::info!(%peer_addr, listener = %domain, "TLS handshake timed out");
                    return;
                }
            };
            let identity = match tls.get_ref().1.peer_certificates().and_then(|c| c.first()) {
                None => None,
                Some(cert) => match PeerIdentity::from_der(cert) {
                    Ok(id) => Some(id),
                    Err(e) => {
                        tracing::warn!(%peer_addr, listener = %domain, error = %e, "verified certificate outside our profiles: closing");
                        return;
                    }
                },
            };
            let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                if let Some(id) = &identity {
                    req.extensions_mut().insert(id.clone());
                }
                let fut = handler(req);
                async move { Ok::<_, std::convert::Infallible>(fut.await) }
            });
            let conn = builder
                .serve_connection_with_upgrades(TokioIo::new(tls), svc)
                .into_owned();
            let conn = watcher.watch(conn);
            tokio::select! {
                () = admitted.run(conn, peer_addr) => {}
                _ = stop.changed() => {}
            }
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(Duration::from_secs(10)) => {
            tracing::warn!(listener = %domain, "connections still open after 10 s; closing");
        }
    }
    drop(watch_tx);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The expiry hint's command renews in place with hale-sign's own options, for every name
    /// the certificate presented now is for (a reload takes nothing less).
    #[test]
    fn server_cert_renewal_names_the_command_for_the_same_names() {
        let names = [
            ServerName::try_from("updates.example").unwrap(),
            ServerName::try_from("pumps.example").unwrap(),
            ServerName::IpAddress(std::net::IpAddr::from([127, 0, 0, 1]).into()),
            ServerName::IpAddress(std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST).into()),
        ];
        assert_eq!(
            server_cert_renewal(Path::new("/srv/hale/tls"), &names),
            "hale-sign ca server-cert --ca-dir CA_DIR --dns updates.example --dns pumps.example \
             --ip 127.0.0.1 --ip ::1 --out /srv/hale/tls/server --force"
        );
        // no readable names: where they go; a directory a shell would split is quoted
        assert_eq!(
            server_cert_renewal(Path::new("/srv/it's tls"), &[]),
            "hale-sign ca server-cert --ca-dir CA_DIR --dns NAME… [--ip IP…] --out \
             '/srv/it'\\''s tls/server' --force"
        );
    }
}
