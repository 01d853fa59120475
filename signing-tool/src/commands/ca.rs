//! `hale-sign ca …`: the offline ceremony of the device-identity PKI (ARCHITECTURE §5).
//!
//! ```text
//! ca init        --out CA_DIR                       Device Root CA + Manufacturing, Device Issuing,
//!                [--server-passphrase-*]            Technician and Server CA: CA_DIR/<slug>.crt (PEM)
//!                [--operations-passphrase-*]        and CA_DIR/<slug>.key (hale-pki CA file, key sealed)
//! ca server-cert --ca-dir D --dns N... [--ip IP...] --out PREFIX [--force]
//!                                                   PREFIX.crt (chain), PREFIX.key
//! ca staff       --ca-dir D --role R --name N --hours H --out PREFIX [--force]
//!                                                   PREFIX.crt, PREFIX.key
//! ca crl         --ca-dir D --ca SLUG [--revoke SERIAL...] --out FILE
//! ca reseal      --ca-dir D --ca technician|server|operations [--new-passphrase-*]
//!                                                   the CA file(s) sealed again, certificate unchanged
//! ```
//!
//! Every private key is sealed at rest: CA keys inside hale-pki's CA file, issued keys (server TLS,
//! staff) with `hale_pki::tls::seal_private_key` (hale-repo's key file: scrypt +
//! XChaCha20-Poly1305, the public key bound as associated data), opened with
//! `hale_pki::tls::open_private_key`. Passphrases come from the environment, a file or a prompt, never argv.
//!
//! Threat notes: `init` seals the CA files under up to three passphrases, one per place that
//! holds them: the offline one (root, Manufacturing: the ceremony), the server's
//! (`--server-passphrase-*`: Device Issuing, the one CA key the server holds) and the operations
//! one (`--operations-passphrase-*`: Technician and Server, which issue operator and server
//! certificates from the operations side and never go to the server). So the server's secret
//! opens neither the root nor a CA that mints operators (who publish releases), wherever those
//! files are copied; the three must differ. `crl` keeps the revoked list and the CRL number in
//! `CA_DIR/<slug>.crl.json`: a serial once revoked stays in every later CRL, and numbers only rise.
//! `server-cert --force` and `staff --force` replace PREFIX.crt and PREFIX.key together, after
//! every check ([`durable::Batch`]): a server reloading its certificate can meet the new
//! certificate with the old key only between the two renames, and refuses that pair.
//! `reseal` gives the Technician and Server CA files of a hierarchy made without
//! `--operations-passphrase-*` (sealed with the server's passphrase, or the offline one) their
//! own: it refuses a new passphrase that is the current one or that opens the Device Issuing
//! (the server's), root or Manufacturing CA file beside them, and replaces a file only with one
//! that opens with the new passphrase to the same CA. Copies of the old file still open with the
//! old passphrase: it says so.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use hale_pki::crl::RevokedCertificate;
use hale_pki::{Ca, CaRole, Hierarchy, HierarchyOptions, KeyAlgorithm, StaffRole};
use hale_repo::Passphrase;
use serde_json::{json, Value};

use crate::durable;
use crate::key_source;
use crate::PassArgs;

#[derive(Subcommand, Debug)]
pub enum CaCmd {
    /// Create the CA hierarchy: root, Manufacturing, Device Issuing, Technician and Server CA.
    Init(InitArgs),
    /// Issue a TLS server certificate (Server CA) with a fresh, sealed key.
    ServerCert(ServerCertArgs),
    /// Issue a short-lived technician or operator certificate (Technician CA), key sealed.
    Staff(StaffArgs),
    /// Sign the CRL of a CA, adding serials to its revoked list.
    Crl(CrlArgs),
    /// Seal the Technician and/or Server CA file again under a new (operations) passphrase.
    #[command(
        after_help = "--passphrase-env/--passphrase-file: the passphrase the file(s) are sealed \
                      with now (a hierarchy made without --operations-passphrase-*: the \
                      server's); without either, a prompt. The certificates do not change."
    )]
    Reseal(ResealArgs),
}

#[derive(Args, Debug)]
pub struct InitArgs {
    /// Directory for the CA certificates and CA files (created; existing CA files are refused).
    #[arg(long, value_name = "CA_DIR")]
    out: PathBuf,
    /// Validity of the CA certificates, in days.
    #[arg(long, default_value_t = 3650)]
    days: u64,
    /// Base URL of the CRLs (`<url><slug>.crl`): every certificate's CRL distribution point.
    #[arg(long, value_name = "URL", default_value = hale_pki::ca::DEFAULT_CRL_BASE_URL)]
    crl_base_url: String,
    /// DNS subtree(s) the Server CA may issue for (name constraints); none = unconstrained.
    #[arg(long = "server-dns-constraint", value_name = "DOMAIN")]
    server_dns_constraints: Vec<String>,
    /// Passphrase of the root and Manufacturing CA files (and of the others not given their own).
    #[command(flatten)]
    pass: PassArgs,
    /// Separate passphrase for the Device Issuing CA file, the one CA key the server holds
    /// (and for the Technician and Server CA files, unless --operations-passphrase-*): read
    /// from this environment variable.
    #[arg(long, value_name = "VAR", conflicts_with = "server_passphrase_file")]
    server_passphrase_env: Option<String>,
    /// As --server-passphrase-env, from the first line of this file.
    #[arg(long, value_name = "PATH")]
    server_passphrase_file: Option<PathBuf>,
    /// Separate passphrase for the Technician and Server CA files (they issue operator,
    /// technician and server certificates; kept on the operations side, never on the server),
    /// different from the offline and the server's: read from this environment variable.
    #[arg(
        long,
        value_name = "VAR",
        conflicts_with = "operations_passphrase_file"
    )]
    operations_passphrase_env: Option<String>,
    /// As --operations-passphrase-env, from the first line of this file.
    #[arg(long, value_name = "PATH")]
    operations_passphrase_file: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct CaDirArgs {
    /// The directory `ca init` wrote.
    #[arg(long, value_name = "CA_DIR")]
    pub ca_dir: PathBuf,
    /// Passphrase of the CA file used: the one `ca init` (or `ca reseal`) sealed it with (the
    /// operations passphrase for the Technician and Server CA, the server's for Device Issuing,
    /// the offline one for root and Manufacturing).
    #[command(flatten)]
    pub pass: PassArgs,
}

/// Where the passphrase of a newly issued key comes from.
#[derive(Args, Debug, Clone, Default)]
pub struct OutPassArgs {
    /// Seal the new private key with the passphrase in this environment variable.
    #[arg(long, value_name = "VAR", conflicts_with = "key_passphrase_file")]
    pub key_passphrase_env: Option<String>,
    /// Seal the new private key with the first line of this file.
    #[arg(long, value_name = "PATH")]
    pub key_passphrase_file: Option<PathBuf>,
}

impl OutPassArgs {
    fn source(&self, what: &str) -> Passphrase {
        if let Some(v) = &self.key_passphrase_env {
            Passphrase::Env(v.clone())
        } else if let Some(p) = &self.key_passphrase_file {
            Passphrase::File(p.clone())
        } else {
            Passphrase::Prompt(format!("new passphrase for {what}: "))
        }
    }
}

#[derive(Args, Debug)]
pub struct ServerCertArgs {
    #[command(flatten)]
    ca: CaDirArgs,
    /// DNS name(s) of the server.
    #[arg(long = "dns", value_name = "NAME")]
    dns: Vec<String>,
    /// IP address(es) of the server.
    #[arg(long = "ip", value_name = "IP")]
    ip: Vec<IpAddr>,
    /// Validity in days.
    #[arg(long, default_value_t = 397)]
    days: u64,
    /// Output prefix: PREFIX.crt (server certificate then Server CA) and PREFIX.key (sealed).
    #[arg(long, value_name = "PREFIX")]
    out: PathBuf,
    /// Replace an existing PREFIX.crt and PREFIX.key (a renewal: hale-server loads the new pair
    /// without a restart). Both are written beside the old ones, then renamed over them.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    key_pass: OutPassArgs,
}

#[derive(Args, Debug)]
pub struct StaffArgs {
    #[command(flatten)]
    ca: CaDirArgs,
    /// operator or technician.
    #[arg(long, value_name = "ROLE")]
    role: String,
    /// The person (1–64 of A-Z a-z 0-9 . _ -).
    #[arg(long, value_name = "NAME")]
    name: String,
    /// Validity in hours (at most one shift: 12).
    #[arg(long, value_name = "H")]
    hours: u64,
    /// Key type: p256 (default) or ed25519.
    #[arg(long, default_value = "p256")]
    key_type: String,
    /// Output prefix: PREFIX.crt (certificate then Technician CA) and PREFIX.key (sealed).
    #[arg(long, value_name = "PREFIX")]
    out: PathBuf,
    /// Replace an existing PREFIX.crt and PREFIX.key (the next shift's certificate), together.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    key_pass: OutPassArgs,
}

#[derive(Args, Debug)]
pub struct CrlArgs {
    #[command(flatten)]
    ca: CaDirArgs,
    /// The CA whose CRL to sign (root, manufacturing, device-issuing, technician, server).
    #[arg(long = "ca", value_name = "SLUG")]
    role: String,
    /// Certificate serial(s) (hex) to add to the revoked list.
    #[arg(long = "revoke", value_name = "SERIAL")]
    revoke: Vec<String>,
    /// Days until the CRL's nextUpdate (listeners refuse every certificate after it).
    #[arg(long, default_value_t = 7)]
    next_update_days: u64,
    /// Where to write the CRL (PEM).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

#[derive(Args, Debug)]
pub struct ResealArgs {
    /// The directory `ca init` wrote, and with --passphrase-env/--passphrase-file the passphrase
    /// the CA file(s) are sealed with now (a hierarchy made without --operations-passphrase-*:
    /// the server's, or without that the offline one); else a prompt.
    #[command(flatten)]
    ca: CaDirArgs,
    /// The CA file(s) to seal again: technician, server, or operations (both).
    #[arg(long = "ca", value_name = "CA")]
    which: String,
    /// The new passphrase (the operations passphrase: different from the offline and the
    /// server's), from this environment variable; else a prompt (typed twice).
    #[arg(long, value_name = "VAR", conflicts_with = "new_passphrase_file")]
    new_passphrase_env: Option<String>,
    /// As --new-passphrase-env, from the first line of this file.
    #[arg(long, value_name = "PATH")]
    new_passphrase_file: Option<PathBuf>,
}

pub fn run(cmd: CaCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        CaCmd::Init(a) => init(a),
        CaCmd::ServerCert(a) => server_cert(a),
        CaCmd::Staff(a) => staff(a),
        CaCmd::Crl(a) => crl(a),
        CaCmd::Reseal(a) => reseal(a),
    }
}

/// `CA_DIR/<slug>.crt`.
pub fn cert_path(dir: &Path, role: CaRole) -> PathBuf {
    dir.join(format!("{}.crt", role.slug()))
}

/// `CA_DIR/<slug>.key` (the CA file).
pub fn key_path(dir: &Path, role: CaRole) -> PathBuf {
    dir.join(format!("{}.key", role.slug()))
}

fn with_ext(base: &Path, ext: &str) -> PathBuf {
    let mut s = base.as_os_str().to_owned();
    s.push(".");
    s.push(ext);
    PathBuf::from(s)
}

fn days(d: u64) -> anyhow::Result<Duration> {
    d.checked_mul(86_400)
        .filter(|s| *s > 0)
        .map(Duration::from_secs)
        .with_context(|| format!("invalid validity of {d} days"))
}

/// Seal a CA with the test knob's scrypt cost when set (hale-sign warns), else the default.
fn seal_ca(ca: &Ca, pass: &[u8]) -> anyhow::Result<Vec<u8>> {
    Ok(match key_source::new_key_cost()? {
        Some(n) => ca.to_file_with_cost(pass, n)?,
        None => ca.to_file(pass)?,
    })
}

/// Open `CA_DIR/<slug>.key`, checking it is the CA asked for.
pub fn open_ca(a: &CaDirArgs, role: CaRole) -> anyhow::Result<Ca> {
    let path = key_path(&a.ca_dir, role);
    let bytes = std::fs::read(&path).with_context(|| path.display().to_string())?;
    let pass = a
        .pass
        .source(&path.display().to_string())
        .read()
        .with_context(|| format!("passphrase for {}", path.display()))?;
    open_ca_file(&path, &bytes, &pass, role)
}

/// Open the CA file `bytes` read from `path` with `pass`, checking it is the CA of `role`; a
/// file that does not open names the passphrase `ca init` seals it with.
fn open_ca_file(path: &Path, bytes: &[u8], pass: &[u8], role: CaRole) -> anyhow::Result<Ca> {
    let ca = match Ca::from_file(bytes, pass) {
        Ok(ca) => ca,
        // a wrong passphrase and a damaged file look the same: say which passphrase it takes
        Err(e @ hale_pki::PkiError::KeyFile(_)) => {
            bail!(
                "{}: {e}; `ca init` seals it with {}",
                path.display(),
                sealed_with(role)
            )
        }
        Err(e) => return Err(e).with_context(|| path.display().to_string()),
    };
    if ca.role() != role {
        bail!(
            "{}: holds the {}, expected the {role}",
            path.display(),
            ca.role()
        );
    }
    Ok(ca)
}

/// Which of `ca init`'s passphrases seals the CA file of `role`.
fn sealed_with(role: CaRole) -> &'static str {
    match role {
        CaRole::Root | CaRole::Manufacturing => "the offline CA passphrase (--passphrase-*)",
        CaRole::DeviceIssuing => {
            "the server's passphrase (--server-passphrase-*; without it, the offline one)"
        }
        CaRole::Technician | CaRole::Server => {
            "the operations passphrase (--operations-passphrase-*; without it, the server's, \
             or without that the offline one)"
        }
    }
}

/// Write an issued certificate (followed by its CA's, so a peer gets the chain) and its new key,
/// sealed under a passphrase from `key_pass`, together: both are written and flushed under
/// temporary names beside them, then renamed over PREFIX.crt and then PREFIX.key. A failure
/// before the renames leaves the old files (or none); between the two renames a reader can find
/// the new certificate with the old key for an instant, which hale-server refuses to load (the
/// key must be the certificate's: it keeps what it presents and loads the pair once the key
/// lands).
fn write_issued(
    (crt, key): (&Path, &Path),
    cert_pem: &str,
    ca: &Ca,
    private_key_pem: &str,
    key_pass: &OutPassArgs,
    what: &str,
) -> anyhow::Result<()> {
    let pass = key_source::read_new_passphrase(&key_pass.source(&key.display().to_string()), what)?;
    let mut batch = durable::Batch::new();
    batch.add(
        crt,
        format!("{cert_pem}{}", ca.certificate_pem()?).as_bytes(),
    )?;
    batch.add_secret(key, &seal_key(private_key_pem, &pass)?)?;
    batch.commit()?;
    Ok(())
}

/// Seal a PKCS#8 PEM private key (hale-pki's sealed key file, opened by
/// `hale_pki::tls::open_private_key`), at the test knob's scrypt cost when it is set.
fn seal_key(pem: &str, pass: &[u8]) -> anyhow::Result<Vec<u8>> {
    Ok(match key_source::new_key_cost()? {
        Some(n) => hale_pki::tls::seal_private_key_with_cost(pem, pass, n)?,
        None => hale_pki::tls::seal_private_key(pem, pass)?,
    })
}

fn refuse_existing(paths: &[&Path]) -> anyhow::Result<()> {
    for p in paths {
        if p.exists() {
            bail!("{}: exists; refusing to overwrite", p.display());
        }
    }
    Ok(())
}

fn init(a: InitArgs) -> anyhow::Result<ExitCode> {
    let paths: Vec<PathBuf> = CaRole::ALL
        .iter()
        .flat_map(|r| [cert_path(&a.out, *r), key_path(&a.out, *r)])
        .collect();
    refuse_existing(&paths.iter().map(PathBuf::as_path).collect::<Vec<_>>())?;
    let offline_src = a.pass.source("the offline CA files (root, manufacturing)");
    let offline = key_source::read_new_passphrase(&offline_src, "the offline CA files")?;
    let separate = |env: &Option<String>, file: &Option<PathBuf>, what: &str| {
        let src = match (env, file) {
            (Some(v), _) => Passphrase::Env(v.clone()),
            (None, Some(p)) => Passphrase::File(p.clone()),
            (None, None) => return Ok(None),
        };
        key_source::read_new_passphrase(&src, what).map(Some)
    };
    let online = separate(
        &a.server_passphrase_env,
        &a.server_passphrase_file,
        "the server's CA files",
    )?;
    if online.as_ref().is_some_and(|o| **o == *offline) {
        bail!("the server's passphrase must differ from the offline CA files' passphrase");
    }
    let operations = separate(
        &a.operations_passphrase_env,
        &a.operations_passphrase_file,
        "the operations CA files",
    )?;
    if let Some(ops) = &operations {
        if **ops == *offline {
            bail!(
                "the operations passphrase (Technician and Server CA files) must differ from the \
                 offline CA files' passphrase"
            );
        }
        if online.as_ref().is_some_and(|o| **o == **ops) {
            bail!(
                "the operations passphrase (Technician and Server CA files) must differ from the \
                 server's passphrase: the server holds that one"
            );
        }
    }
    let h = Hierarchy::create_with(
        &HierarchyOptions {
            validity: days(a.days)?,
            crl_base_url: a.crl_base_url.clone(),
            server_dns_constraints: a.server_dns_constraints.clone(),
        },
        SystemTime::now(),
    )?;
    let mut batch = durable::Batch::new();
    for role in CaRole::ALL {
        let ca = h.get(role);
        let pass = match role {
            CaRole::Root | CaRole::Manufacturing => &offline,
            CaRole::DeviceIssuing => online.as_ref().unwrap_or(&offline),
            CaRole::Technician | CaRole::Server => {
                operations.as_ref().or(online.as_ref()).unwrap_or(&offline)
            }
        };
        batch.add(&cert_path(&a.out, role), ca.certificate_pem()?.as_bytes())?;
        batch.add_secret(&key_path(&a.out, role), &seal_ca(ca, pass)?)?;
        println!("{:<15} {}", role.slug(), cert_path(&a.out, role).display());
    }
    batch
        .commit()
        .with_context(|| format!("writing the CA hierarchy to {}", a.out.display()))?;
    println!(
        "CRLs to publish at {} (each CA's beside it: <ca>.crl)",
        h.root.crl_url()
    );
    if online.is_none() {
        eprintln!(
            "WARNING: the Device Issuing CA file the server holds is sealed with the offline CA \
             passphrase, so the server will need it; give --server-passphrase-env or \
             --server-passphrase-file to keep it off the server"
        );
    }
    if operations.is_none() {
        let shared = if online.is_some() {
            "the server's passphrase, so anyone who reads it on the server can open them \
             wherever they are copied"
        } else {
            "the offline CA passphrase, so whoever issues staff and server certificates holds \
             the root's passphrase"
        };
        eprintln!(
            "WARNING: the Technician and Server CA files, which issue operator (release \
             publishing) and server certificates, are sealed with {shared}; give \
             --operations-passphrase-env or --operations-passphrase-file to seal them with \
             their own, or seal them again with `hale-sign ca reseal --ca-dir {} --ca \
             operations` (as those of a hierarchy made before)",
            a.out.display()
        );
    }
    eprintln!(
        "the server needs the five CA certificates (*.crt) and device-issuing.key, and nothing \
         else of this directory: the root and manufacturing CA files stay offline, and the \
         technician and server CA keys, which issue staff and server certificates, never go to \
         the server"
    );
    Ok(ExitCode::SUCCESS)
}

fn server_cert(a: ServerCertArgs) -> anyhow::Result<ExitCode> {
    let (crt, key) = (with_ext(&a.out, "crt"), with_ext(&a.out, "key"));
    durable::refuse_existing(&crt, a.force)?;
    durable::refuse_existing(&key, a.force)?;
    if a.dns.is_empty() && a.ip.is_empty() {
        bail!("give the server's names with --dns and/or --ip");
    }
    let ca = open_ca(&a.ca, CaRole::Server)?;
    let cn = a
        .dns
        .first()
        .cloned()
        .or_else(|| a.ip.first().map(IpAddr::to_string))
        .unwrap_or_default();
    let kc = hale_pki::generate_key_and_csr(KeyAlgorithm::P256, &cn)?;
    let dns: Vec<&str> = a.dns.iter().map(String::as_str).collect();
    let now = SystemTime::now();
    let validity = days(a.days)?;
    // the library would end it with the CA: asked for more, say so instead
    let ca_end = ca.not_after()?;
    if now.checked_add(validity).is_none_or(|end| end > ca_end) {
        let left = ca_end.duration_since(now).unwrap_or_default().as_secs() / 86_400;
        bail!(
            "--days {}: the certificate would outlive the Server CA, valid until {} (at most {left} days)",
            a.days,
            hale_pki::utc(ca_end)
        );
    }
    let cert = ca.issue_server_certificate(&kc.csr_pem, &dns, &a.ip, validity, now)?;
    write_issued(
        (&crt, &key),
        &cert.pem,
        &ca,
        &kc.private_key_pem,
        &a.key_pass,
        "the server key",
    )?;
    println!(
        "server certificate {} serial {} valid until {}",
        crt.display(),
        cert.serial_hex,
        hale_pki::utc(cert.not_after)
    );
    Ok(ExitCode::SUCCESS)
}

fn parse_key_type(s: &str) -> anyhow::Result<KeyAlgorithm> {
    match s {
        "p256" | "ecdsa-p256" => Ok(KeyAlgorithm::P256),
        "ed25519" => Ok(KeyAlgorithm::Ed25519),
        _ => bail!("--key-type {s:?}: expected p256 or ed25519"),
    }
}

fn staff(a: StaffArgs) -> anyhow::Result<ExitCode> {
    let (crt, key) = (with_ext(&a.out, "crt"), with_ext(&a.out, "key"));
    durable::refuse_existing(&crt, a.force)?;
    durable::refuse_existing(&key, a.force)?;
    let role = match a.role.as_str() {
        "operator" => StaffRole::Operator,
        "technician" => StaffRole::Technician,
        r => bail!("--role {r:?}: expected operator or technician"),
    };
    let validity = a
        .hours
        .checked_mul(3600)
        .filter(|s| *s > 0)
        .map(Duration::from_secs)
        .with_context(|| format!("--hours {}: invalid", a.hours))?;
    let alg = parse_key_type(&a.key_type)?;
    let ca = open_ca(&a.ca, CaRole::Technician)?;
    let kc = hale_pki::generate_key_and_csr(alg, &a.name)?;
    let cert =
        ca.issue_staff_certificate(&kc.csr_pem, &a.name, role, validity, SystemTime::now())?;
    write_issued(
        (&crt, &key),
        &cert.pem,
        &ca,
        &kc.private_key_pem,
        &a.key_pass,
        "the staff key",
    )?;
    println!(
        "{} certificate for {} {} serial {} valid until {}",
        role.as_str(),
        a.name,
        crt.display(),
        cert.serial_hex,
        hale_pki::utc(cert.not_after)
    );
    Ok(ExitCode::SUCCESS)
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The revoked list and CRL number of a CA, kept next to its CA file.
fn crl_state_path(dir: &Path, role: CaRole) -> PathBuf {
    dir.join(format!("{}.crl.json", role.slug()))
}

fn normalise_serial(s: &str) -> anyhow::Result<String> {
    let s = s
        .trim()
        .trim_start_matches("0x")
        .replace(':', "")
        .to_ascii_lowercase();
    let ok = !s.is_empty() && s.len() <= 40 && s.len() % 2 == 0 && hex::decode(&s).is_ok();
    if !ok {
        bail!("certificate serial {s:?}: expected 1 to 20 bytes of hex");
    }
    Ok(s)
}

fn crl(a: CrlArgs) -> anyhow::Result<ExitCode> {
    let role = CaRole::from_slug(&a.role).with_context(|| {
        format!(
            "--ca {:?}: expected root, manufacturing, device-issuing, technician or server",
            a.role
        )
    })?;
    let state_path = crl_state_path(&a.ca.ca_dir, role);
    let state: Value = match std::fs::read(&state_path) {
        Ok(b) => serde_json::from_slice(&b).with_context(|| state_path.display().to_string())?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => json!({"number": 0, "revoked": []}),
        Err(e) => return Err(e).with_context(|| state_path.display().to_string()),
    };
    let number = state["number"]
        .as_u64()
        .with_context(|| format!("{}: no CRL number", state_path.display()))?
        .checked_add(1)
        .context("CRL number overflow")?;
    let mut revoked: Vec<(String, u64)> = state["revoked"]
        .as_array()
        .with_context(|| format!("{}: no revoked list", state_path.display()))?
        .iter()
        .map(|r| {
            Some((
                r.get("serial")?.as_str()?.to_string(),
                r.get("revoked_at")?.as_u64()?,
            ))
        })
        .collect::<Option<_>>()
        .with_context(|| format!("{}: malformed revoked list", state_path.display()))?;
    let now = SystemTime::now();
    for s in &a.revoke {
        let s = normalise_serial(s)?;
        if !revoked.iter().any(|(r, _)| *r == s) {
            revoked.push((s, unix(now)));
        }
    }
    let ca = open_ca(&a.ca, role)?;
    let list: Vec<RevokedCertificate> = revoked
        .iter()
        .map(|(s, at)| RevokedCertificate {
            serial_hex: s.clone(),
            revoked_at: UNIX_EPOCH + Duration::from_secs(*at),
            reason: None,
        })
        .collect();
    let crl = ca.crl(&list, number, now, days(a.next_update_days)?)?;
    let new_state = json!({
        "number": number,
        "revoked": revoked.iter().map(|(s, at)| json!({"serial": s, "revoked_at": at})).collect::<Vec<_>>(),
    });
    let mut batch = durable::Batch::new();
    batch.add(&a.out, crl.pem.as_bytes())?;
    batch.add(&state_path, &serde_json::to_vec_pretty(&new_state)?)?;
    batch.commit()?;
    println!(
        "CRL {} of the {role}: {} revoked, next update {}",
        number,
        revoked.len(),
        hale_pki::utc(crl.next_update)
    );
    Ok(ExitCode::SUCCESS)
}

fn reseal(a: ResealArgs) -> anyhow::Result<ExitCode> {
    let (roles, what): (&[CaRole], &str) = match a.which.as_str() {
        "technician" => (&[CaRole::Technician], "Technician CA file"),
        "server" => (&[CaRole::Server], "Server CA file"),
        "operations" => (
            &[CaRole::Technician, CaRole::Server],
            "Technician and Server CA files",
        ),
        s => bail!(
            "--ca {s:?}: expected technician, server or operations (both: the CA files that \
             take the operations passphrase)"
        ),
    };
    let dir = &a.ca.ca_dir;
    let paths: Vec<PathBuf> = roles.iter().map(|r| key_path(dir, *r)).collect();
    let files: Vec<Vec<u8>> = paths
        .iter()
        .map(|p| std::fs::read(p).with_context(|| p.display().to_string()))
        .collect::<anyhow::Result<_>>()?;
    let names = paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(" and ");
    let old =
        a.ca.pass
            .source(&names)
            .read()
            .with_context(|| format!("passphrase for {names}"))?;
    let cas: Vec<Ca> = roles
        .iter()
        .zip(&paths)
        .zip(&files)
        .map(|((role, path), bytes)| open_ca_file(path, bytes, &old, *role))
        .collect::<anyhow::Result<_>>()?;

    let new_src = match (&a.new_passphrase_env, &a.new_passphrase_file) {
        (Some(v), _) => Passphrase::Env(v.clone()),
        (None, Some(p)) => Passphrase::File(p.clone()),
        (None, None) => Passphrase::Prompt(format!("new passphrase for {names}: ")),
    };
    let new = key_source::read_new_passphrase(&new_src, &format!("the {what}"))?;
    if *new == *old {
        bail!("the new passphrase ({what}) must differ from the current one");
    }
    // the separation `ca init` makes: the new passphrase must open no other CA file here
    let mut not_compared = Vec::new();
    for (others, whose, held) in [
        (
            &[CaRole::DeviceIssuing][..],
            "the server's passphrase",
            ", the CA file the server holds",
        ),
        (
            &[CaRole::Root, CaRole::Manufacturing][..],
            "the offline CA files' passphrase",
            "",
        ),
    ] {
        let mut compared = false;
        for role in others {
            let path = key_path(dir, *role);
            let bytes = match std::fs::read(&path) {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e).with_context(|| path.display().to_string()),
            };
            match Ca::from_file(&bytes, &new) {
                Ok(_) => bail!(
                    "the new passphrase ({what}) must differ from {whose}: it opens {}{held}",
                    path.display()
                ),
                Err(hale_pki::PkiError::KeyFile(_)) => compared = true,
                Err(e) => return Err(e).with_context(|| path.display().to_string()),
            }
        }
        if !compared {
            not_compared.push((others, whose));
        }
    }

    // what is written must open with the new passphrase to the same CA: its role, CRL URL and
    // certificate (`Ca::from_file` checks the key is the certificate's)
    let mut sealed = Vec::with_capacity(cas.len());
    for (ca, path) in cas.iter().zip(&paths) {
        let file = seal_ca(ca, &new)?;
        let again = Ca::from_file(&file, &new)
            .with_context(|| format!("{}: sealed again, it does not open", path.display()))?;
        if again.role() != ca.role()
            || again.certificate_der() != ca.certificate_der()
            || again.crl_url() != ca.crl_url()
        {
            bail!("{}: sealed again, it holds another CA", path.display());
        }
        sealed.push(file);
    }
    let mut batch = durable::Batch::new();
    for (path, file) in paths.iter().zip(&sealed) {
        batch.add_secret(path, file)?;
    }
    batch
        .commit()
        .with_context(|| format!("sealing {names} again"))?;
    for (ca, path) in cas.iter().zip(&paths) {
        println!(
            "{:<15} {} sealed with the new passphrase (certificate unchanged)",
            ca.role().slug(),
            path.display()
        );
    }
    for (others, whose) in not_compared {
        let files = others
            .iter()
            .map(|r| key_path(dir, *r).display().to_string())
            .collect::<Vec<_>>()
            .join(" or ");
        eprintln!(
            "note: no {files}: the new passphrase was not compared with {whose}; it must \
             differ from it"
        );
    }
    eprintln!(
        "copies of the old {what} (backups, other machines) still open with the old passphrase: \
         replace or destroy them"
    );
    Ok(ExitCode::SUCCESS)
}
