//! `hale-server`: see `hale-server --help` and the crate documentation.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, ensure, Context, Result};
use clap::{Parser, Subcommand};
use hale_repo::{KeyKind, SigningKey};
use hale_server::app::App;
use hale_server::audit::{Audit, AuditError};
use hale_server::config::Config;
use hale_server::identity::{Identity, SledIdentityStore};
use hale_server::publish::{Lifetimes, OnlineKeys, Upload};
use hale_server::repo::{RepoDir, MAX_METADATA_LEN};
use hale_server::store::{SledStore, Store};
use serde_json::json;
use sha2::{Digest, Sha256};

#[derive(Parser, Debug)]
#[command(
    name = "hale-server",
    version,
    about = "Hale update server: publish signed releases, sign timestamp/snapshot online, serve fleets"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Serve an initialised data directory.
    Serve {
        #[arg(long, env = "HALE_DATA")]
        data: PathBuf,
        /// JSON config file (default: DATA/config.json when present).
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// File holding the online keys' passphrase (else $HALE_KEY_PASSPHRASE).
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
        #[command(flatten)]
        tls: TlsArgs,
    },
    /// One-command demo: throwaway keys, a demo release, a printed token. Never for production.
    Demo {
        #[arg(long, default_value = "hale-demo")]
        data: PathBuf,
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Also publish `firmware.bin` of this many random bytes (for benchmarks).
        #[arg(long)]
        extra_target_size: Option<usize>,
    },
    /// Initialise a data directory with a root (made by hale-sign) and the online keys it lists.
    Init {
        #[arg(long, env = "HALE_DATA")]
        data: PathBuf,
        #[arg(long)]
        root: PathBuf,
        #[arg(long = "timestamp-key", required = true)]
        timestamp_keys: Vec<PathBuf>,
        #[arg(long = "snapshot-key", required = true)]
        snapshot_keys: Vec<PathBuf>,
        /// File holding the online keys' passphrase (else $HALE_KEY_PASSPHRASE).
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
    },
    /// Operator tokens.
    Token {
        #[command(subcommand)]
        cmd: TokenCmd,
    },
    /// Online keys (for rotation: add the new key, then publish a root that lists it).
    Key {
        #[command(subcommand)]
        cmd: KeyCmd,
    },
    /// The audit chain.
    Audit {
        #[command(subcommand)]
        cmd: AuditCmd,
    },
    /// Manufacturing manifests (device identity).
    Manifest {
        #[command(subcommand)]
        cmd: ManifestCmd,
    },
    /// Make a single-use enrollment token for one device serial; printed once, only its hash is
    /// stored.
    EnrollToken {
        #[arg(long, env = "HALE_DATA")]
        data: PathBuf,
        #[arg(long)]
        serial: String,
        /// Model for the certificate (default: the model the imported manifest lists).
        #[arg(long)]
        model: Option<String>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 86_400)]
        ttl: u64,
    },
    /// Write the served repository as plain files (for a CDN or an object store).
    Export {
        #[arg(long, env = "HALE_DATA")]
        data: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
}

/// Device identity: mTLS listeners (docs/pki.md). Without --tls-dir the server speaks plain HTTP
/// only (development and interop), accepts unauthenticated device reports and publishes with
/// operator tokens.
#[derive(clap::Args, Debug)]
struct TlsArgs {
    /// TLS directory: server.crt (chain), server.key (sealed), ca/<slug>.crt,
    /// ca/device-issuing.key (the Device Issuing CA file), crl/manufacturing.crl,
    /// crl/technician.crl. With it, device reports are accepted only on --device-listen, and
    /// the publish API (POST /api/v1/targets, /api/v1/publish) only on --staff-listen with an
    /// operator certificate: the plain listener refuses it and operator tokens
    /// (403 client_certificate_required).
    #[arg(long, requires_all = ["device_listen", "enroll_listen", "staff_listen"])]
    tls_dir: Option<PathBuf>,
    /// Device API (mTLS, Device Issuing CA): TUF metadata, targets, reports.
    #[arg(long, requires = "tls_dir")]
    device_listen: Option<std::net::SocketAddr>,
    /// EST enrollment (TLS, client certificate optional): cacerts, simpleenroll, simplereenroll,
    /// /crl/device-issuing.crl.
    #[arg(long, requires = "tls_dir")]
    enroll_listen: Option<std::net::SocketAddr>,
    /// Staff API (mTLS, Technician CA): fleet, device reports, revocation, tokens, manifests,
    /// audit, CRLs; the publish API for operator certificates (`hale-sign push --cert`) and the
    /// TUF read path (what push, bundle and rollback read with a staff certificate).
    #[arg(long, requires = "tls_dir")]
    staff_listen: Option<std::net::SocketAddr>,
    /// File whose first line opens ca/device-issuing.key and server.key (else
    /// $HALE_CA_PASSPHRASE).
    #[arg(long)]
    ca_passphrase_file: Option<PathBuf>,
}

impl TlsArgs {
    fn passphrase(&self) -> hale_repo::Passphrase {
        match &self.ca_passphrase_file {
            Some(f) => hale_repo::Passphrase::File(f.clone()),
            None => hale_repo::Passphrase::Env("HALE_CA_PASSPHRASE".into()),
        }
    }
}

#[derive(Subcommand, Debug)]
enum ManifestCmd {
    /// Verify a manufacturing manifest against the Manufacturing CA and store its entries.
    Import {
        #[arg(long, env = "HALE_DATA")]
        data: PathBuf,
        /// TLS directory holding ca/manufacturing.crt (default $HALE_TLS_DIR, else DATA/tls).
        #[arg(long, env = "HALE_TLS_DIR")]
        tls_dir: Option<PathBuf>,
        file: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum TokenCmd {
    /// Create a token for an operator and print it once (only its sha256 is stored).
    Add {
        #[arg(long, env = "HALE_DATA")]
        data: PathBuf,
        #[arg(long)]
        name: String,
    },
    /// List the tokens: operator and token id (the start of the token's sha256).
    List {
        #[arg(long, env = "HALE_DATA")]
        data: PathBuf,
    },
    /// Revoke every token of an operator (--name) or one token (--id, from `token list`).
    #[command(group(clap::ArgGroup::new("which").required(true).args(["name", "id"])))]
    Revoke {
        #[arg(long, env = "HALE_DATA")]
        data: PathBuf,
        #[arg(long)]
        name: Option<String>,
        /// The token id `token list` shows (at least 8 hex digits of its sha256).
        #[arg(long)]
        id: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
enum KeyCmd {
    /// Add an online key file for `timestamp` or `snapshot`.
    Add {
        #[arg(long, env = "HALE_DATA")]
        data: PathBuf,
        #[arg(long)]
        role: String,
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum AuditCmd {
    /// Check the chain end to end; names the first broken record.
    Verify {
        #[arg(long, env = "HALE_DATA")]
        data: PathBuf,
    },
}

fn main() -> std::process::ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_env("HALE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // colours only for a terminal: a log file or journal gets plain text
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Serve {
            data,
            config,
            listen,
            passphrase_file,
            tls,
        } => {
            let mut cfg = Config::load(&data, config.as_deref())?;
            if let Some(l) = listen {
                cfg.listen = l;
            }
            if let Some(p) = passphrase_file {
                cfg.passphrase_file = Some(p);
            }
            serve(&data, cfg, Some(&tls))
        }
        Cmd::Manifest {
            cmd:
                ManifestCmd::Import {
                    data,
                    tls_dir,
                    file,
                },
        } => {
            initialised(&data)?;
            let tls_dir = tls_dir.unwrap_or_else(|| data.join("tls"));
            let mca = tls_dir.join("ca").join("manufacturing.crt");
            let pem = std::fs::read_to_string(&mca)
                .with_context(|| format!("reading {}", mca.display()))?;
            let der = hale_pki::tls::certificate_from_pem(&pem)
                .with_context(|| format!("parsing {}", mca.display()))?;
            let bytes = hale_server::repo::read_bounded(&file, 16 << 20)
                .with_context(|| format!("reading {}", file.display()))?;
            let id = offline_identity(&data, Some(der.to_vec()))?;
            let r = id
                .import_manifest(&bytes, "cli")
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            println!("imported manifest {}", r);
            Ok(())
        }
        Cmd::EnrollToken {
            data,
            serial,
            model,
            ttl,
        } => {
            let id = offline_identity(&data, None)?;
            let (secret, expires_at) = id
                .issue_token(
                    &serial,
                    model.as_deref(),
                    std::time::Duration::from_secs(ttl),
                    "cli",
                    std::time::SystemTime::now(),
                )
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("{}", secret.as_str());
            let mut buf = [0u8; 20];
            let when = hale_core::time::format_expires(expires_at as i64, &mut buf).unwrap_or("?");
            eprintln!("enrollment token for serial {serial:?}, single use, expires at {when}: shown once, only its sha256 is stored");
            Ok(())
        }
        Cmd::Demo {
            data,
            listen,
            extra_target_size,
        } => demo(&data, listen, extra_target_size),
        Cmd::Init {
            data,
            root,
            timestamp_keys,
            snapshot_keys,
            passphrase_file,
        } => {
            let mut cfg = Config::load(&data, None)?;
            if let Some(p) = passphrase_file {
                cfg.passphrase_file = Some(p);
            }
            init(&data, &root, &timestamp_keys, &snapshot_keys, &cfg)
        }
        Cmd::Token {
            cmd: TokenCmd::Add { data, name },
        } => {
            let token = token_add(&data, &name)?;
            println!("{token}");
            eprintln!("token for operator {name:?}: shown once, store it now (the server keeps only its sha256)");
            Ok(())
        }
        Cmd::Token {
            cmd: TokenCmd::List { data },
        } => {
            let store = open_store(&data)?;
            let tokens = store.tokens()?;
            if tokens.is_empty() {
                eprintln!("no operator tokens");
            }
            for (sha, op) in tokens {
                println!("{}  {op}", sha.get(..TOKEN_ID_LEN).unwrap_or(&sha));
            }
            Ok(())
        }
        Cmd::Token {
            cmd: TokenCmd::Revoke { data, name, id },
        } => token_revoke(&data, name.as_deref(), id.as_deref()),
        Cmd::Key {
            cmd:
                KeyCmd::Add {
                    data,
                    role,
                    key,
                    passphrase_file,
                },
        } => {
            let mut cfg = Config::load(&data, None)?;
            if let Some(p) = passphrase_file {
                cfg.passphrase_file = Some(p);
            }
            ensure!(
                role == "timestamp" || role == "snapshot",
                "--role must be timestamp or snapshot (root and targets keys stay offline)"
            );
            // the store first: it is locked while a server runs, and nothing must change then
            let store = open_store(&data)?;
            let k = install_key(&data, &role, &key, &cfg)?;
            Audit::open(store)?.append(
                "key-add",
                "cli",
                json!({"role": role, "keyid": k.keyid()}),
            )?;
            println!("added {role} key {}", k.keyid());
            Ok(())
        }
        Cmd::Audit {
            cmd: AuditCmd::Verify { data },
        } => {
            let store = open_store(&data)?;
            match hale_server::audit::verify(store.as_ref()) {
                Ok((n, head)) => {
                    println!("audit chain OK: {n} records, head {head}");
                    Ok(())
                }
                Err(e) => bail!("{e}"),
            }
        }
        Cmd::Export { data, out } => export(&data, &out),
    }
}

fn open_store(data: &Path) -> Result<Arc<dyn Store>> {
    initialised(data)?;
    Ok(Arc::new(SledStore::open(&data.join("db"))?))
}

/// Refuse a data directory `hale-server init` has not made: a mistyped `--data` must not get a
/// fresh database of its own (a token the real server never sees, an empty audit chain "OK").
fn initialised(data: &Path) -> Result<()> {
    ensure!(
        RepoDir::new(data).is_initialised(),
        "{}: not a hale-server data directory (no repository: check --data, or run `hale-server init`)",
        data.display()
    );
    Ok(())
}

fn identity_settings(cfg: &Config) -> hale_server::identity::IdentitySettings {
    hale_server::identity::IdentitySettings {
        device_certificate_validity: std::time::Duration::from_secs(
            cfg.device_certificate_validity_secs,
        ),
        device_crl_lifetime: std::time::Duration::from_secs(cfg.device_crl_lifetime_secs),
        device_renewal_min_age: std::time::Duration::from_secs(cfg.device_renewal_min_age_secs()),
        device_factory_reenroll_min_age: std::time::Duration::from_secs(
            cfg.device_factory_reenroll_min_age_secs(),
        ),
    }
}

/// The identity service without the CA key (tokens, manifests: CLI commands, server stopped).
fn offline_identity(data: &Path, manufacturing_der: Option<Vec<u8>>) -> Result<Identity> {
    initialised(data)?;
    let cfg = Config::load(data, None)?;
    let sled = SledStore::open(&data.join("db"))?;
    let store: Arc<dyn Store> = Arc::new(sled.clone());
    Identity::new(
        Arc::new(SledIdentityStore::new(&sled)?),
        Audit::open(store)?,
        None,
        None,
        manufacturing_der,
        identity_settings(&cfg),
    )
    .map_err(|e| anyhow::anyhow!("{e}"))
}

fn keys_dir(data: &Path) -> PathBuf {
    data.join("keys")
}

/// The online keys' passphrase, and where it is looked for when it cannot be read.
fn online_passphrase(cfg: &Config) -> Result<zeroize::Zeroizing<Vec<u8>>> {
    cfg.passphrase().read().with_context(|| {
        format!(
            "reading the online keys' passphrase (from --passphrase-file F, HALE_PASSPHRASE_FILE \
             or the config's passphrase_file, else the environment variable {})",
            cfg.passphrase_env
        )
    })
}

/// Decrypt `src`, then copy it into `DATA/keys/<role>-<keyid prefix>.key`.
fn install_key(data: &Path, role: &str, src: &Path, cfg: &Config) -> Result<SigningKey> {
    let bytes = std::fs::read(src).with_context(|| format!("reading {}", src.display()))?;
    let pass = online_passphrase(cfg)?;
    let key = SigningKey::from_encrypted_file(&bytes, &pass)
        .with_context(|| format!("opening {}", src.display()))?;
    let id = key.keyid();
    let dst = keys_dir(data).join(format!("{role}-{}.key", id.get(..16).unwrap_or(&id)));
    // encrypted, and still its owner's alone: a copy is an offline guessing target
    hale_repo::layout::write_private(&dst, &bytes)?;
    Ok(key)
}

fn load_keys(data: &Path, cfg: &Config) -> Result<OnlineKeys> {
    let pass = online_passphrase(cfg)?;
    let mut keys = OnlineKeys::default();
    let dir = keys_dir(data);
    let rd = std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?;
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let role = if name.starts_with("timestamp-") && name.ends_with(".key") {
            &mut keys.timestamp
        } else if name.starts_with("snapshot-") && name.ends_with(".key") {
            &mut keys.snapshot
        } else {
            continue;
        };
        let bytes =
            std::fs::read(e.path()).with_context(|| format!("reading {}", e.path().display()))?;
        role.push(
            SigningKey::from_encrypted_file(&bytes, &pass)
                .with_context(|| format!("opening {}", e.path().display()))?,
        );
    }
    ensure!(
        !keys.timestamp.is_empty() && !keys.snapshot.is_empty(),
        "no timestamp or snapshot key in {}",
        dir.display()
    );
    Ok(keys)
}

fn init(
    data: &Path,
    root_path: &Path,
    ts: &[PathBuf],
    snap: &[PathBuf],
    cfg: &Config,
) -> Result<()> {
    let repo = RepoDir::new(data);
    ensure!(
        !repo.is_initialised(),
        "{} is already initialised",
        data.display()
    );
    let root = hale_server::repo::read_bounded(root_path, MAX_METADATA_LEN)
        .with_context(|| format!("reading {}", root_path.display()))?;
    let now = hale_server::now();
    // the root must verify by itself (threshold of its own root role) and be usable
    hale_core::TrustedSet::new(
        hale_core::Storage::with_capacity(MAX_METADATA_LEN),
        &root,
        now,
    )
    .map_err(|e| anyhow::anyhow!("{}: {e}", root_path.display()))?;
    let env =
        hale_core::metadata::Envelope::parse(&root, "root").map_err(|e| anyhow::anyhow!("{e}"))?;
    let r = hale_core::metadata::Root::parse(&env.signed).map_err(|e| anyhow::anyhow!("{e}"))?;
    ensure!(
        r.consistent_snapshot,
        "root: consistent_snapshot must be true"
    );
    ensure!(r.header.expires > now, "root has expired");
    let mut held = OnlineKeys::default();
    for p in ts {
        let b = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
        held.timestamp.push(
            SigningKey::from_encrypted_file(&b, &online_passphrase(cfg)?)
                .with_context(|| format!("opening {}", p.display()))?,
        );
    }
    for p in snap {
        let b = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
        held.snapshot.push(
            SigningKey::from_encrypted_file(&b, &online_passphrase(cfg)?)
                .with_context(|| format!("opening {}", p.display()))?,
        );
    }
    // refuse keys the root does not list for their role
    hale_server::publish::online_signers(&root, "timestamp", &held.timestamp)?;
    hale_server::publish::online_signers(&root, "snapshot", &held.snapshot)?;
    for p in ts {
        install_key(data, "timestamp", p, cfg)?;
    }
    for p in snap {
        install_key(data, "snapshot", p, cfg)?;
    }
    let v = r.header.version;
    hale_repo::layout::write_atomic(&repo.meta_path("root", v), &root)?;
    hale_repo::layout::write_atomic(
        &repo.dir.join("CURRENT"),
        json!({"root": v, "timestamp": null}).to_string().as_bytes(),
    )?;
    let store = open_store(data)?;
    Audit::open(store)?.append(
        "init",
        "cli",
        json!({"root": v, "timestamp_keys": held.timestamp.iter().map(|k| k.keyid()).collect::<Vec<_>>(),
               "snapshot_keys": held.snapshot.iter().map(|k| k.keyid()).collect::<Vec<_>>()}),
    )?;
    println!("initialised {} with root version {v}", data.display());
    Ok(())
}

fn token_add(data: &Path, name: &str) -> Result<String> {
    ensure!(
        !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b)),
        "operator name: 1-64 of A-Z a-z 0-9 . _ - @"
    );
    let mut rnd = [0u8; 32];
    getrandom::getrandom(&mut rnd).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let token = format!("hale_{}", hex::encode(rnd));
    let store = open_store(data)?;
    let sha = hex::encode(Sha256::digest(token.as_bytes()));
    Audit::open(store.clone())?.append_with(
        "token-add",
        "cli",
        json!({"operator": name}),
        |seq, record| {
            store
                .token_set(&sha, Some(name), (seq, record))
                .map_err(AuditError::from)
        },
    )?;
    Ok(token)
}

/// How much of a token's sha256 `token list` shows as its id.
const TOKEN_ID_LEN: usize = 16;

/// Remove the tokens of operator `name`, or the one whose sha256 starts with `id`; audited as
/// `token-revoke`. The server reads tokens from the database on every request: a server started
/// afterwards refuses them.
fn token_revoke(data: &Path, name: Option<&str>, id: Option<&str>) -> Result<()> {
    let store = open_store(data)?;
    let tokens = store.tokens()?;
    let chosen: Vec<(String, String)> = match (name, id) {
        (Some(n), _) => {
            let t: Vec<_> = tokens.into_iter().filter(|(_, op)| op == n).collect();
            ensure!(
                !t.is_empty(),
                "operator {n:?} has no token (`token list` shows them)"
            );
            t
        }
        (None, Some(id)) => {
            ensure!(
                id.len() >= 8 && id.bytes().all(|b| b.is_ascii_hexdigit()),
                "--id {id:?}: at least 8 hex digits of a token id from `token list`"
            );
            let id = id.to_ascii_lowercase();
            let t: Vec<_> = tokens
                .into_iter()
                .filter(|(sha, _)| sha.starts_with(&id))
                .collect();
            ensure!(
                !t.is_empty(),
                "no token has id {id} (`token list` shows them)"
            );
            ensure!(
                t.len() == 1,
                "id {id} names {} tokens: give more of it",
                t.len()
            );
            t
        }
        (None, None) => bail!("give --name or --id"),
    };
    let audit = Audit::open(store.clone())?;
    for (sha, op) in &chosen {
        let token_id = sha.get(..TOKEN_ID_LEN).unwrap_or(sha);
        audit.append_with(
            "token-revoke",
            "cli",
            json!({"operator": op, "token_id": token_id}),
            |seq, record| {
                store
                    .token_set(sha, None, (seq, record))
                    .map_err(AuditError::from)
            },
        )?;
        println!("revoked token {token_id} of operator {op}");
    }
    Ok(())
}

/// The CRL files of the offline CAs must be no older than the newest this server loaded before
/// (the audit log's `crl-load` records: numbers only rise, a running server refuses an older
/// one): a backup restored into the TLS directory would otherwise undo revocations at start,
/// silently. A newer file (put there while the server was down) is recorded as loaded.
fn newest_crls_or_refuse(
    store: &dyn Store,
    listeners: &hale_server::tls::Listeners,
    identity: &Identity,
    tls_dir: &Path,
) -> Result<()> {
    use hale_pki::CaRole;
    for ca in [CaRole::Manufacturing, CaRole::Technician] {
        let Some(loaded) = listeners.offline_crl_number(ca) else {
            continue;
        };
        let slug = ca.slug();
        let before = store
            .audit_last_where(&["crl-load"], &|r| {
                r.pointer("/detail/ca").and_then(|c| c.as_str()) == Some(slug)
            })?
            .and_then(|r| {
                r.pointer("/detail/crl_number")
                    .and_then(serde_json::Value::as_u64)
            });
        match before {
            Some(n) if loaded < n => bail!(
                "{}: CRL number {loaded} is older than number {n}, which this server loaded \
                 before (a restored backup?): the revocations since would be undone; put the \
                 newest CRL of the {ca} back",
                tls_dir.join("crl").join(format!("{slug}.crl")).display()
            ),
            Some(n) if loaded == n => {}
            _ => identity.record_crl_load(slug, loaded, "file at start", "tls-dir"),
        }
    }
    Ok(())
}

fn serve(data: &Path, cfg: Config, tls: Option<&TlsArgs>) -> Result<()> {
    let repo = RepoDir::new(data);
    ensure!(
        repo.is_initialised(),
        "{} is not initialised: run `hale-server init` (or `hale-server demo`)",
        data.display()
    );
    // the database's lock first: a second server on this directory stops here, before it removes
    // the running one's uploads and temporary files (`clean_temporaries`)
    let sled = SledStore::open(&data.join("db"))?;
    repo.clean_temporaries();
    let keys = load_keys(data, &cfg)?;
    let store: Arc<dyn Store> = Arc::new(sled.clone());
    let audit = Audit::open(store.clone())?;
    let tls = tls.and_then(|t| t.tls_dir.as_ref().map(|d| (t, d)));
    let (identity, listeners) = match tls {
        None => {
            tracing::warn!(
                "no --tls-dir: device reports and the inventory are unauthenticated and the \
                 publish API takes bearer tokens (development and interop only; a fleet runs \
                 with --tls-dir, see docs/pki.md)"
            );
            (None, None)
        }
        Some((args, dir)) => {
            let pass = args.passphrase().read().context(
                "reading the CA passphrase (--ca-passphrase-file or HALE_CA_PASSPHRASE)",
            )?;
            let mut m = hale_server::tls::TlsMaterial::load(dir, &pass)?;
            // the CA moves into the identity service; the listeners need only its certificate
            let ca = m
                .device_issuing
                .take()
                .context("Device Issuing CA not loaded")?;
            let identity = Arc::new(
                Identity::new(
                    Arc::new(SledIdentityStore::new(&sled)?),
                    audit.clone(),
                    Some(ca),
                    Some(&m.root_pem),
                    Some(m.manufacturing_der.to_vec()),
                    identity_settings(&cfg),
                )
                .map_err(|e| anyhow::anyhow!("{e}"))?,
            );
            identity
                .refresh_crl(std::time::SystemTime::now())
                .map_err(|e| anyhow::anyhow!("signing the Device Issuing CA CRL: {e}"))?;
            let crl = identity.device_crl().context("no Device Issuing CA CRL")?;
            let listeners = Arc::new(hale_server::tls::Listeners::new(
                &m,
                &crl.der,
                std::time::SystemTime::now(),
            )?);
            identity.set_crl_listener(listeners.clone());
            // a new server.crt and server.key are loaded while running: the key's passphrase
            // is read from its file or the environment again then (not kept in memory)
            listeners.watch_server_certificate(args.passphrase());
            newest_crls_or_refuse(store.as_ref(), &listeners, &identity, dir)?;
            // an expired CRL was loaded: its listener refuses that CA's certificates, the device
            // API serves on; and certificates near their end
            listeners.log_warnings(std::time::SystemTime::now());
            let addrs = (
                args.device_listen.context("--device-listen")?,
                args.enroll_listen.context("--enroll-listen")?,
                args.staff_listen.context("--staff-listen")?,
            );
            (Some(identity), Some((listeners, addrs)))
        }
    };
    let current = hale_server::app::load_current(&repo)?;
    let life = Lifetimes {
        timestamp_secs: cfg.timestamp_lifetime_secs,
        timestamp_resign_before_secs: cfg.timestamp_resign_before_secs,
        snapshot_secs: cfg.snapshot_lifetime_secs,
        snapshot_resign_before_secs: cfg.snapshot_resign_before_secs,
        profile: hale_repo::build::Profile::parse(&cfg.profile)?,
    };
    let rollouts = hale_server::rollout::Rollouts::load(&hale_server::rollout::file(data))?;
    let app = Arc::new(App {
        current,
        repo,
        store,
        audit,
        keys,
        life,
        config: cfg.clone(),
        metrics: Default::default(),
        write_lock: Default::default(),
        started: std::time::Instant::now(),
        data: data.to_path_buf(),
        identity: identity.clone(),
        rollouts,
        listeners: listeners.as_ref().map(|(l, _)| l.clone()),
        expiry_logged: Default::default(),
        report_budget: Default::default(),
    });
    if let Err(e) = app.reconcile_audit() {
        tracing::error!(error = %e, "audit reconciliation failed");
    }
    if let Err(e) = app.rollouts.reconcile(&app.audit, &*app.store) {
        // the note stays: the next start tries again, and rollout changes wait for it
        tracing::error!(error = %e, "rollout audit reconciliation failed");
    }
    // a server that was down may hold an expired timestamp: re-sign before serving
    match app.resign() {
        Ok(Some(s)) => tracing::info!(%s, "re-signed at start"),
        Ok(None) => {}
        Err(e) => tracing::error!(error = ?e, "re-sign at start failed"),
    }
    {
        let st = &app.served().state;
        let blob_len = |sha: &str| {
            std::fs::metadata(app.repo.blob_path(sha))
                .ok()
                .map(|m| m.len())
        };
        // an expired delegated role is the expiry report's to tell (below): devices refuse the
        // targets it holds, not the repository
        let delegated = |role: &str| role != "targets";
        match hale_server::repo::verify_as_client(
            None,
            st,
            hale_server::now(),
            &blob_len,
            &delegated,
            None,
        ) {
            Ok(()) => tracing::info!(
                root = st.root_version(),
                timestamp = st.timestamp_version(),
                snapshot = st.snapshot_version(),
                "repository verified as a client would"
            ),
            Err(e) => {
                tracing::error!(error = %e, "the repository does not verify as a client would: devices will refuse it until a new publish")
            }
        }
    }
    app.log_expiries(hale_server::now());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        // every listener is bound before any is announced or anything starts: a port taken
        // stops the server before a script or an operator is told it listens
        let bind = |a: std::net::SocketAddr| async move {
            hale_server::http::bind(a)
                .await
                .with_context(|| format!("listening on {a}"))
        };
        let listener = bind(cfg.listen).await?;
        let tls_listeners = match (&identity, &listeners) {
            (Some(_), Some((_, (dev, enr, stf)))) => {
                Some((bind(*dev).await?, bind(*enr).await?, bind(*stf).await?))
            }
            _ => None,
        };
        // the handlers are in place before the server is announced: a SIGTERM right after the
        // "listening" line (a supervisor, a test) stops it in order, not by the default action
        let shutdown = shutdown_signal();
        let addr = listener.local_addr()?;
        tracing::info!(%addr, data = %data.display(), "hale-server listening");
        // machine-readable lines for scripts and tests (ephemeral ports)
        println!("listening on http://{addr}");
        if let Some((dl, el, sl)) = &tls_listeners {
            for (name, l) in [("device", dl), ("enroll", el), ("staff", sl)] {
                let addr = l.local_addr()?;
                tracing::info!(%addr, "{name} listener (TLS)");
                println!("{name} listening on https://{addr}");
            }
        }
        let resigner = {
            let app = app.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(std::time::Duration::from_secs(
                    app.config.resign_check_secs,
                ));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let a = app.clone();
                    match tokio::task::spawn_blocking(move || a.resign()).await {
                        Ok(Ok(Some(s))) => tracing::info!(%s, "timestamp re-signed"),
                        Ok(Ok(None)) => {}
                        Ok(Err(e)) => tracing::error!(error = ?e, "scheduled re-sign failed"),
                        Err(e) => tracing::error!(error = %e, "re-sign task failed"),
                    }
                    app.log_expiries(hale_server::now());
                }
            })
        };
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stopped = move || {
            let mut rx = stop_rx.clone();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        };
        let mut tasks = Vec::new();
        let mut maintenance = None;
        if let (Some(identity), Some((listeners, _)), Some((dl, el, sl))) =
            (&identity, &listeners, tls_listeners)
        {
            use hale_pki::tls::TrustDomain;
            use hale_server::identity_http as ih;
            tasks.push(tokio::spawn(hale_server::tls::serve(
                TrustDomain::DeviceApi,
                dl,
                listeners.device_config.clone(),
                hale_server::http::ConnLimits::of(&app.config),
                ih::device_handler(app.clone(), identity.clone()),
                stopped(),
            )));
            tasks.push(tokio::spawn(hale_server::tls::serve(
                TrustDomain::Enrollment,
                el,
                listeners.enroll_config.clone(),
                hale_server::http::ConnLimits::of(&app.config),
                ih::warp_handler(ih::enroll_routes(identity.clone())),
                stopped(),
            )));
            tasks.push(tokio::spawn(hale_server::tls::serve(
                TrustDomain::Staff,
                sl,
                listeners.staff_config.clone(),
                hale_server::http::ConnLimits::of(&app.config),
                ih::staff_handler(app.clone(), identity.clone(), listeners.clone()),
                stopped(),
            )));
            maintenance = Some(tokio::spawn(hale_server::tls::maintain_crls(
                identity.clone(),
                listeners.clone(),
                std::time::Duration::from_secs(app.config.crl_check_secs),
            )));
        }
        let plain = tokio::spawn(hale_server::http::serve(app, listener, stopped()));
        shutdown.await;
        let _ = stop_tx.send(true);
        let _ = plain.await;
        for t in tasks {
            let _ = t.await;
        }
        if let Some(m) = maintenance {
            m.abort();
        }
        resigner.abort();
        tracing::info!("stopped");
        Ok::<(), anyhow::Error>(())
    })
}

/// SIGINT or SIGTERM. The handlers are registered when this is called (inside the runtime), not
/// when the future is first polled.
#[cfg(unix)]
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut int = signal(SignalKind::interrupt()).ok();
    let mut term = signal(SignalKind::terminate()).ok();
    async move {
        tokio::select! {
            _ = recv(&mut int) => {}
            _ = recv(&mut term) => {}
        }
        tracing::info!("shutdown signal received");
    }
}

/// The next delivery of `s`; never, for a handler that could not be registered.
#[cfg(unix)]
async fn recv(s: &mut Option<tokio::signal::unix::Signal>) {
    match s {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending::<()>().await,
    }
}

#[cfg(not(unix))]
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    async {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutdown signal received");
    }
}

/// Demo: throwaway keys and a first release, so `hale-server demo` alone gives a working server.
fn demo(
    data: &Path,
    listen: Option<std::net::SocketAddr>,
    extra_target_size: Option<usize>,
) -> Result<()> {
    let repo = RepoDir::new(data);
    let pass_file = keys_dir(data).join("demo-passphrase");
    if !repo.is_initialised() {
        eprintln!(
            "DEMO MODE: generating throwaway keys in {} — never use them for real devices",
            data.display()
        );
        std::fs::create_dir_all(keys_dir(data))?;
        let mut rnd = [0u8; 24];
        getrandom::getrandom(&mut rnd).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        let pass = hex::encode(rnd);
        write_private(&pass_file, pass.as_bytes())?;
        let gen = || SigningKey::generate(KeyKind::Ed25519);
        let (root_k, targets_k, ts_k, snap_k) = (gen()?, gen()?, gen()?, gen()?);
        let offline = data.join("demo-offline-keys");
        for (name, k) in [("root", &root_k), ("targets", &targets_k)] {
            write_private(
                &offline.join(format!("{name}.key")),
                &k.to_encrypted_file(pass.as_bytes())?,
            )?;
        }
        let mut keys = std::collections::BTreeMap::new();
        let mut roles = std::collections::BTreeMap::new();
        for (role, k) in [
            ("root", &root_k),
            ("targets", &targets_k),
            ("timestamp", &ts_k),
            ("snapshot", &snap_k),
        ] {
            keys.insert(k.keyid(), k.public());
            roles.insert(
                role.to_string(),
                hale_repo::build::RoleKeys {
                    keyids: vec![k.keyid()],
                    threshold: 1,
                },
            );
        }
        let now = hale_server::now();
        let profile = hale_repo::build::Profile::Standard;
        let root_body = hale_repo::build::root(
            profile,
            1,
            &hale_repo::build::expires_at(now, 365 * 86_400)?,
            &keys,
            &roles,
            true,
        );
        let root = hale_repo::sign::sign_new(&root_body, &[&root_k])?;
        let root_path = data.join("demo-root.json");
        std::fs::write(&root_path, &root)?;
        let mut ts_files = Vec::new();
        let mut snap_files = Vec::new();
        for (k, list, n) in [
            (&ts_k, &mut ts_files, "timestamp"),
            (&snap_k, &mut snap_files, "snapshot"),
        ] {
            let p = offline.join(format!("{n}.key"));
            write_private(&p, &k.to_encrypted_file(pass.as_bytes())?)?;
            list.push(p);
        }
        let cfg = Config {
            passphrase_file: Some(pass_file.clone()),
            ..Config::default()
        };
        init(data, &root_path, &ts_files, &snap_files, &cfg)?;
        for p in ts_files.iter().chain(&snap_files) {
            let _ = std::fs::remove_file(p);
        }
        // a first release: one target
        let content = b"Hello from Hale's demo release.\n";
        let sha = hex::encode(Sha256::digest(content));
        hale_repo::layout::write_atomic(&repo.blob_path(&sha), content)?;
        let mut targets = serde_json::Map::new();
        targets.insert(
            "hello.txt".into(),
            hale_repo::build::target_entry(content, None),
        );
        if let Some(n) = extra_target_size {
            ensure!(n <= 1 << 30, "--extra-target-size: at most 1 GiB");
            let mut big = vec![0u8; n];
            getrandom::getrandom(&mut big).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
            let sha = hex::encode(Sha256::digest(&big));
            hale_repo::layout::write_atomic(&repo.blob_path(&sha), &big)?;
            targets.insert(
                "firmware.bin".into(),
                hale_repo::build::target_entry(&big, None),
            );
        }
        let tbody = hale_repo::build::targets(
            profile,
            1,
            &hale_repo::build::expires_at(now, 90 * 86_400)?,
            &targets,
            None,
        );
        let tbytes = hale_repo::sign::sign_new(&tbody, &[&targets_k])?;
        let online = OnlineKeys {
            timestamp: vec![ts_k],
            snapshot: vec![snap_k],
        };
        let life = Lifetimes {
            timestamp_secs: cfg.timestamp_lifetime_secs,
            timestamp_resign_before_secs: cfg.timestamp_resign_before_secs,
            snapshot_secs: cfg.snapshot_lifetime_secs,
            snapshot_resign_before_secs: cfg.snapshot_resign_before_secs,
            profile,
        };
        let old = repo.load()?;
        let upload = Upload {
            roots: Vec::new(),
            roles: [("targets".to_string(), bytes::Bytes::from(tbytes))]
                .into_iter()
                .collect(),
        };
        let new = hale_server::publish::prepare(&old, &upload, &online, &life, now, &repo)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        repo.commit(&old, &new)?;
        // recorded as any publish is: without it, the server's start would take the release
        // for a commit whose record a crash lost, and log it (and record it) as one
        Audit::open(open_store(data)?)?.append(
            "publish",
            "demo",
            hale_server::publish::summary(&new),
        )?;
        let token = token_add(data, "demo")?;
        println!("demo operator token (shown once): {token}");
        println!(
            "trusted root for clients: {}",
            data.join("demo-root.json").display()
        );
        println!(
            "offline demo keys (root, targets), passphrase in {}: {}",
            pass_file.display(),
            offline.display()
        );
    }
    let mut cfg = Config::load(data, None)?;
    cfg.passphrase_file = Some(pass_file);
    if let Some(l) = listen {
        cfg.listen = l;
    }
    serve(data, cfg, None)
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    Ok(hale_repo::layout::write_private(path, bytes)?)
}

/// Plain files in the consistent-snapshot layout, timestamp.json written last.
fn export(data: &Path, out: &Path) -> Result<()> {
    let repo = RepoDir::new(data);
    let st = repo.load()?;
    let blob_len = |sha: &str| std::fs::metadata(repo.blob_path(sha)).ok().map(|m| m.len());
    let delegated = |role: &str| role != "targets";
    if let Err(e) = hale_server::repo::verify_as_client(
        None,
        &st,
        hale_server::now(),
        &blob_len,
        &delegated,
        None,
    ) {
        tracing::warn!(error = %e, "exporting a repository that does not verify now (expired? re-sign by running the server)");
    }
    // an image a staged rollout holds back stays out: a CDN serving the export would otherwise
    // hand it to every device (export again once the rollout ends)
    let rollouts = hale_server::rollout::Rollouts::load(&hale_server::rollout::file(data))?;
    let held = |sha: &str| {
        rollouts
            .admits(sha, hale_server::rollout::Reader::Anonymous)
            .err()
    };
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut files = 0;
    for (v, b) in &st.roots {
        hale_repo::layout::write_atomic(&out.join(format!("{v}.root.json")), b)?;
        files += 1;
    }
    if let Some((_, b)) = st.root() {
        hale_repo::layout::write_atomic(&out.join("root.json"), b)?;
    }
    for (role, m) in &st.roles {
        hale_repo::layout::write_atomic(&out.join(format!("{}.{role}.json", m.version)), &m.bytes)?;
        files += 1;
        for (path, sha, _) in hale_server::repo::role_targets(role, &m.bytes)
            .map_err(|e| anyhow::anyhow!("{role}: {e}"))?
        {
            let rel = hale_repo::layout::target_path(&path, &sha, true)?;
            let dst = out.join(&rel);
            if let Some(r) = held(&sha) {
                // a copy from an earlier export goes: a CDN would go on serving it to everyone
                let removed = match std::fs::remove_file(&dst) {
                    Ok(()) => true,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
                    Err(e) => {
                        return Err(e).with_context(|| {
                            format!(
                                "{path}: its staged rollout is at {} %: removing the copy an \
                                 earlier export left at {}",
                                r.percent,
                                dst.display()
                            )
                        })
                    }
                };
                eprintln!(
                    "note: {path} left out: its staged rollout is at {} % (devices fetching from \
                     this export get it once the rollout ends and it is exported again){}",
                    r.percent,
                    if removed {
                        "; the copy an earlier export left here was removed (a CDN or reader \
                         that fetched it before keeps it)"
                    } else {
                        ""
                    }
                );
                continue;
            }
            if dst.exists() {
                continue;
            }
            if let Some(parent) = dst.parent() {
                std::fs::create_dir_all(parent)?;
            }
            // a copy, not a hard link: a file edited in the export must not change what this
            // server serves (it verifies content only when a release is published)
            let src = repo.blob_path(&sha);
            std::fs::copy(&src, &dst).with_context(|| format!("copying {}", src.display()))?;
            files += 1;
        }
    }
    if let Some(s) = &st.snapshot {
        hale_repo::layout::write_atomic(
            &out.join(format!("{}.snapshot.json", s.version)),
            &s.bytes,
        )?;
        files += 1;
    }
    if let Some(t) = &st.timestamp {
        hale_repo::layout::write_atomic(&out.join("timestamp.json"), &t.bytes)?;
        files += 1;
    }
    println!("exported {files} files to {}", out.display());
    Ok(())
}
