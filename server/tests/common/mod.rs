//! Shared fixtures: keys, a repository initialised through the real binary, a running server on
//! an ephemeral port, HTTP helpers and a hale-core client that verifies what the server serves.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hale_core::metadata::{Envelope, Targets};
use hale_core::{Name, Storage, TrustedSet};
use hale_repo::build::{self, Profile, RoleKeys};
use hale_repo::{KeyKind, SigningKey};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

pub const BIN: &str = env!("CARGO_BIN_EXE_hale-server");
pub const PASS: &str = "test passphrase, not a secret";

pub fn now() -> i64 {
    hale_server::now()
}

fn key(seed: u8) -> SigningKey {
    SigningKey::from_seed(KeyKind::Ed25519, &[seed; 32]).unwrap()
}

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub data: PathBuf,
    pub root_key: SigningKey,
    pub targets_keys: [SigningKey; 2],
    pub ts_key: SigningKey,
    pub snap_key: SigningKey,
    pub delegate_key: SigningKey,
    pub root: Vec<u8>,
    pub token: String,
    pub pass_file: PathBuf,
}

pub fn run_bin(args: &[&str], pass_file: &Path) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .env("HALE_PASSPHRASE_FILE", pass_file)
        .env("HALE_LOG", "warn")
        .output()
        .unwrap()
}

impl Fixture {
    /// A data directory initialised with `hale-server init` (root v1: targets threshold 2,
    /// one online key each for timestamp and snapshot) and one operator token.
    pub fn new() -> Fixture {
        Self::with_config(json!({}))
    }

    pub fn with_config(config: Value) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let pass_file = dir.path().join("pass");
        std::fs::write(&pass_file, PASS).unwrap();
        let f = Fixture {
            root_key: key(1),
            targets_keys: [key(2), key(3)],
            ts_key: key(4),
            snap_key: key(5),
            delegate_key: key(6),
            root: Vec::new(),
            token: String::new(),
            pass_file,
            data,
            dir,
        };
        let root = f.root_v(1, &f.ts_key, &f.snap_key, &[&f.root_key]);
        let root_path = f.dir.path().join("root.json");
        std::fs::write(&root_path, &root).unwrap();
        let ts = f.write_key("ts.key", &f.ts_key);
        let snap = f.write_key("snap.key", &f.snap_key);
        std::fs::write(
            f.data.join("config.json"),
            serde_json::to_vec(&config).unwrap(),
        )
        .unwrap();
        let out = run_bin(
            &[
                "init",
                "--data",
                f.data.to_str().unwrap(),
                "--root",
                root_path.to_str().unwrap(),
                "--timestamp-key",
                ts.to_str().unwrap(),
                "--snapshot-key",
                snap.to_str().unwrap(),
            ],
            &f.pass_file,
        );
        assert!(
            out.status.success(),
            "init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = run_bin(
            &[
                "token",
                "add",
                "--data",
                f.data.to_str().unwrap(),
                "--name",
                "alice",
            ],
            &f.pass_file,
        );
        assert!(
            out.status.success(),
            "token add: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
        Fixture { root, token, ..f }
    }

    pub fn write_key(&self, name: &str, k: &SigningKey) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(
            &p,
            k.to_encrypted_file_with_cost(PASS.as_bytes(), 10).unwrap(),
        )
        .unwrap();
        p
    }

    /// Root version `v` listing these online keys, signed by `signers`.
    pub fn root_v(
        &self,
        v: u64,
        ts: &SigningKey,
        snap: &SigningKey,
        signers: &[&SigningKey],
    ) -> Vec<u8> {
        let mut keys = BTreeMap::new();
        let mut roles = BTreeMap::new();
        for k in [
            &self.root_key,
            &self.targets_keys[0],
            &self.targets_keys[1],
            ts,
            snap,
        ] {
            keys.insert(k.keyid(), k.public());
        }
        roles.insert(
            "root".into(),
            RoleKeys {
                keyids: vec![self.root_key.keyid()],
                threshold: 1,
            },
        );
        roles.insert(
            "targets".into(),
            RoleKeys {
                keyids: vec![self.targets_keys[0].keyid(), self.targets_keys[1].keyid()],
                threshold: 2,
            },
        );
        roles.insert(
            "timestamp".into(),
            RoleKeys {
                keyids: vec![ts.keyid()],
                threshold: 1,
            },
        );
        roles.insert(
            "snapshot".into(),
            RoleKeys {
                keyids: vec![snap.keyid()],
                threshold: 1,
            },
        );
        let body = build::root(
            Profile::Standard,
            v,
            &build::expires_at(now(), 365 * 86_400).unwrap(),
            &keys,
            &roles,
            true,
        );
        hale_repo::sign::sign_new(&body, signers).unwrap()
    }

    /// Top-level targets version `v` listing `(path, content, custom)`, signed by both targets keys.
    pub fn targets(
        &self,
        v: u64,
        files: &[(&str, &[u8], Option<Value>)],
        delegations: Option<&Value>,
    ) -> Vec<u8> {
        let body = targets_body(v, files, delegations);
        hale_repo::sign::sign_new(&body, &[&self.targets_keys[0], &self.targets_keys[1]]).unwrap()
    }

    /// A delegation of `paths` to role `name` with the delegate key.
    pub fn delegation(&self, name: &str, paths: &[&str]) -> Value {
        json!({
            "keys": {self.delegate_key.keyid(): self.delegate_key.public()},
            "roles": [{"name": name, "keyids": [self.delegate_key.keyid()], "threshold": 1, "terminating": true, "paths": paths}],
        })
    }

    pub fn delegated(&self, v: u64, files: &[(&str, &[u8], Option<Value>)]) -> Vec<u8> {
        hale_repo::sign::sign_new(&targets_body(v, files, None), &[&self.delegate_key]).unwrap()
    }

    pub fn start(&self) -> Server {
        Server::start(&self.data, &self.pass_file)
    }

    /// sha256 of every file under DATA/repo except in-progress uploads and content blobs.
    pub fn repo_digest(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let root = self.data.join("repo");
        walk(&root, &root, &mut out);
        out.retain(|k, _| !k.starts_with("upload") && !k.starts_with("blobs"));
        out
    }
}

fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(base, &p, out);
        } else {
            let b = std::fs::read(&p).unwrap();
            out.insert(
                p.strip_prefix(base).unwrap().display().to_string(),
                hex::encode(Sha256::digest(&b)),
            );
        }
    }
}

pub fn targets_body(
    v: u64,
    files: &[(&str, &[u8], Option<Value>)],
    delegations: Option<&Value>,
) -> Value {
    let mut t = Map::new();
    for (path, content, custom) in files {
        t.insert(
            path.to_string(),
            build::target_entry(content, custom.clone()),
        );
    }
    build::targets(
        Profile::Standard,
        v,
        &build::expires_at(now(), 30 * 86_400).unwrap(),
        &t,
        delegations,
    )
}

/// A running `hale-server serve` on 127.0.0.1 with an ephemeral port. Killed on drop.
pub struct Server {
    pub child: Child,
    pub base: String,
}

impl Server {
    pub fn start(data: &Path, pass_file: &Path) -> Server {
        Self::start_with_env(data, pass_file, &[])
    }

    pub fn start_with_env(data: &Path, pass_file: &Path, env: &[(&str, &str)]) -> Server {
        let data_arg = data.to_str().unwrap();
        let args = ["serve", "--data", data_arg, "--listen", "127.0.0.1:0"];
        let pass = [("HALE_PASSPHRASE_FILE", pass_file.to_str().unwrap())];
        Self::spawn(&args, &data.join("server.log"), &[&pass[..], env].concat())
    }

    /// `hale-server ARGS` (a command that serves until killed), its log appended to `log_path`;
    /// returns once it prints the address it listens on.
    pub fn spawn(args: &[&str], log_path: &Path, env: &[(&str, &str)]) -> Server {
        if let Some(dir) = log_path.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .unwrap();
        let mut child = Command::new(BIN)
            .args(args)
            .env("HALE_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut line = String::new();
            while r.read_line(&mut line).unwrap_or(0) > 0 {
                if let Some(u) = line.trim().strip_prefix("listening on ") {
                    let _ = tx.send(u.to_string());
                }
                line.clear();
            }
        });
        let base = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(b) => b,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "server did not start: {}",
                    std::fs::read_to_string(log_path).unwrap_or_default()
                );
            }
        };
        Server { child, base }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}/{}", self.base, path.trim_start_matches('/'))
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for a graceful exit; returns its status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s;
            }
            assert!(Instant::now() < deadline, "server did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// --- HTTP -------------------------------------------------------------------------------------

pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(60))
        .build()
}

fn finish(r: Result<ureq::Response, ureq::Error>) -> Result<Resp, String> {
    let resp = match r {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => return Err(e.to_string()),
    };
    let status = resp.status();
    let headers = resp
        .headers_names()
        .into_iter()
        .map(|n| (n.clone(), resp.header(&n).unwrap_or("").to_string()))
        .collect();
    let mut body = Vec::new();
    resp.into_reader()
        .take(1 << 30)
        .read_to_end(&mut body)
        .map_err(|e| e.to_string())?;
    Ok(Resp {
        status,
        headers,
        body,
    })
}

/// A request with headers; Err only for transport errors.
pub fn request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Result<Resp, String> {
    let mut r = agent().request(method, url);
    for (k, v) in headers {
        r = r.set(k, v);
    }
    finish(match body {
        Some(b) => r.send_bytes(b),
        None => r.call(),
    })
}

pub fn get(url: &str) -> Resp {
    request("GET", url, &[], None).unwrap()
}

/// Upload target content; returns the response.
pub fn upload(s: &Server, token: &str, content: &[u8]) -> Result<Resp, String> {
    request(
        "POST",
        &s.url("/api/v1/targets"),
        &[("Authorization", &format!("Bearer {token}"))],
        Some(content),
    )
}

/// The publish body: envelopes embedded byte for byte.
pub fn publish_body(root: Option<&[u8]>, roles: &[(&str, &[u8])]) -> Vec<u8> {
    let mut s = String::from("{");
    if let Some(r) = root {
        s.push_str("\"root\":");
        s.push_str(std::str::from_utf8(r).unwrap());
        s.push(',');
    }
    s.push_str("\"roles\":{");
    for (i, (name, b)) in roles.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&format!(
            "{}:{}",
            json!(name),
            std::str::from_utf8(b).unwrap()
        ));
    }
    s.push_str("}}");
    s.into_bytes()
}

pub fn publish(
    s: &Server,
    token: &str,
    root: Option<&[u8]>,
    roles: &[(&str, &[u8])],
) -> Result<Resp, String> {
    request(
        "POST",
        &s.url("/api/v1/publish"),
        &[
            ("Authorization", &format!("Bearer {token}")),
            ("Content-Type", "application/json"),
        ],
        Some(&publish_body(root, roles)),
    )
}

// --- a hale-core client -------------------------------------------------------------------------

/// What a device sees after a full update from `trusted_root`.
#[derive(Debug)]
pub struct ClientView {
    pub root: u64,
    pub timestamp: u64,
    pub snapshot: u64,
    pub targets: u64,
}

/// Run TUF §5 with hale-core against a served repository and download every listed target of
/// top-level targets (checking length and hashes). `Err` with the reason on any refusal.
pub fn client_update(
    base: &str,
    trusted_root: &[u8],
    paths: &[&str],
) -> Result<ClientView, String> {
    let fetch = |name: &str| -> Result<Option<Vec<u8>>, String> {
        let r = request("GET", &format!("{base}/{name}"), &[], None)?;
        match r.status {
            200 => Ok(Some(r.body)),
            404 => Ok(None),
            s => Err(format!("{name}: HTTP {s}")),
        }
    };
    let mut set = TrustedSet::new(Storage::with_capacity(1 << 20), trusted_root, now())
        .map_err(|e| e.to_string())?;
    let mut root_v = set.root().header.version;
    while let Some(b) = fetch(&format!("{}.root.json", root_v + 1))? {
        root_v = set.update_root(&b).map_err(|e| format!("root: {e}"))?;
    }
    let ts = fetch("timestamp.json")?.ok_or("no timestamp.json")?;
    set.update_timestamp(&ts)
        .map_err(|e| format!("timestamp: {e}"))?;
    let snap_v = set.timestamp().unwrap().snapshot.version;
    let snap = fetch(&format!("{snap_v}.snapshot.json"))?.ok_or("no snapshot")?;
    set.update_snapshot(&snap)
        .map_err(|e| format!("snapshot: {e}"))?;
    let tv = set
        .snapshot()
        .unwrap()
        .role("targets")
        .unwrap()
        .unwrap()
        .version;
    let t = fetch(&format!("{tv}.targets.json"))?.ok_or("no targets")?;
    set.update_targets(&t)
        .map_err(|e| format!("targets: {e}"))?;
    struct Src<'a>(&'a str);
    impl hale_core::RoleSource for Src<'_> {
        type Buf = Vec<u8>;
        type Error = String;
        fn fetch_role(
            &mut self,
            name: &str,
            meta: &hale_core::metadata::MetaFile<'_>,
        ) -> Result<Vec<u8>, String> {
            let r = request(
                "GET",
                &format!("{}/{}.{name}.json", self.0, meta.version),
                &[],
                None,
            )?;
            if r.status != 200 {
                return Err(format!("{name}: HTTP {}", r.status));
            }
            Ok(r.body)
        }
    }
    for p in paths {
        let found = set
            .find_target(p, &mut Src(base))
            .map_err(|e| format!("{p}: {e}"))?
            .ok_or(format!("{p}: not found"))?;
        let f = found.file(p).map_err(|e| e.to_string())?;
        let sha = hex::encode(f.sha256().unwrap());
        let rel = hale_repo::layout::target_path(p, &sha, true).unwrap();
        let r = request("GET", &format!("{base}/{rel}"), &[], None)?;
        if r.status != 200 {
            return Err(format!("{rel}: HTTP {}", r.status));
        }
        f.verify_bytes(&r.body, Name::new(p))
            .map_err(|e| e.to_string())?;
    }
    let _ = Envelope::parse(&t, "targets").map(|e| Targets::parse(&e.signed, Name::new("targets")));
    Ok(ClientView {
        root: root_v,
        timestamp: set.timestamp().unwrap().header.version,
        snapshot: snap_v,
        targets: tv,
    })
}

/// The venv's python: `$HALE_VENV/bin/python` (set by scripts/test-all.sh) or target/venv.
pub fn python() -> PathBuf {
    match std::env::var_os("HALE_VENV") {
        Some(v) => PathBuf::from(v).join("bin/python"),
        None => PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../target/venv/bin/python"
        )),
    }
}
pub const PY_CLIENT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/interop/python_tuf_client.py"
);

/// python-tuf's ngclient against the server; `None` when the venv is missing (loudly).
pub fn python_tuf(
    base: &str,
    root: &Path,
    targets: &[&str],
    work: &Path,
) -> Option<Result<Value, String>> {
    let py = python();
    if !py.exists() {
        eprintln!("\n!!!!! SKIPPING python-tuf interop: {} is missing (run `bash .ci/install.sh`) !!!!!\n", py.display());
        return None;
    }
    let mut cmd = Command::new(py);
    cmd.arg(PY_CLIENT)
        .args([
            "--root",
            root.to_str().unwrap(),
            "--metadata-url",
            &format!("{base}/"),
            "--target-base-url",
            &format!("{base}/targets/"),
        ])
        .args(["--work", work.to_str().unwrap()]);
    for t in targets {
        cmd.args(["--target", t]);
    }
    let out = cmd.output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    Some(if out.status.success() && v["ok"] == true {
        Ok(v)
    } else {
        Err(format!(
            "{} {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    })
}

pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Open the stopped server's store in this process, run `f` on it and close it again.
///
/// Dropping a sled handle does not release the database's lock at once: sled's background
/// threads hold it a little longer (spacejam/sled#1234). A test that reopens the store or runs a
/// `hale-server` command right after would race them, so this waits (10 s at most) until the
/// lock can be taken.
pub fn with_store<T>(data: &Path, f: impl FnOnce(&hale_server::store::SledStore) -> T) -> T {
    let dir = data.join("db");
    let store = hale_server::store::SledStore::open(&dir).unwrap();
    let out = f(&store);
    let lock_file = std::fs::File::open(dir.join("db")).unwrap();
    // the lock this waits for is the one the store holds
    assert!(fs2::FileExt::try_lock_exclusive(&lock_file).is_err());
    drop(store);
    wait_until("sled to release its lock", Duration::from_secs(10), || {
        fs2::FileExt::try_lock_exclusive(&lock_file).is_ok()
    });
    fs2::FileExt::unlock(&lock_file).unwrap();
    out
}
