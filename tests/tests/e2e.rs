//! End to end (issue 4): the three real binaries over loopback, no mocks.
//!
//! hale-sign makes keys (encrypted files, passphrase from the environment) and a repository with
//! a 2-of-3 root; hale-server is initialised with that root and the online snapshot/timestamp
//! keys and started; hale-sign pushes v1 then v2 through the publish API; two simulated pumps
//! (hale-agent, model pump-a rev r2, provisioned with the trusted root) update to v2 and confirm;
//! an install is deferred while therapy runs and happens after it stops; a v3 whose health check
//! fails is reverted; an image for another model and an older image are refused. Every step is
//! checked on the pump's own `status` and on the server's inventory.
//!
//! The binaries live in three packages, so `CARGO_BIN_EXE_*` cannot name them from here: the test
//! builds them with the same `cargo build` as `scripts/demo.sh` (a no-op when they are current)
//! into the target directory it runs from.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const PASS_VAR: &str = "HALE_E2E_PASSPHRASE";
const PASS: &str = "e2e-only passphrase, not a secret";
const TOKEN_VAR: &str = "HALE_E2E_TOKEN";
const TARGET: &str = "pump-a/firmware.bin";

/// The binaries' directory: next to this test's `deps/`, built first.
fn binaries() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
    let target_dir = profile_dir.parent().unwrap().to_path_buf();
    // device-agent and hale-link each on its own: with other packages, `--features
    // device-agent/std` (`hale-link/std`) lands on its dev-dependency on itself and the binary
    // (which needs `std`) is skipped, leaving whatever an earlier build left
    for args in [
        &["-p", "hale-sign", "-p", "hale-server"][..],
        &["-p", "hale-link", "--features", "std"][..],
        &["-p", "device-agent", "--features", "std"][..],
    ] {
        build(args, &target_dir, &profile_dir);
    }
    profile_dir
}

fn build(packages: &[&str], target_dir: &Path, profile_dir: &Path) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.arg("build")
        .args(packages)
        .arg("--bins")
        .env("CARGO_TARGET_DIR", target_dir)
        // as if typed in a shell: without the variables cargo sets for this test (some build
        // scripts track them, and a different value rebuilds their crates every time)
        .env_remove("LD_LIBRARY_PATH")
        .env_remove("OUT_DIR")
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if [
            "CARGO_PKG_",
            "CARGO_MANIFEST_",
            "CARGO_CRATE_",
            "CARGO_BIN_",
            "CARGO_PRIMARY_",
            "CARGO_TARGET_TMPDIR",
            "CARGO_RUSTC_CURRENT_DIR",
        ]
        .iter()
        .any(|p| k.starts_with(p))
        {
            cmd.env_remove(k);
        }
    }
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    let st = cmd.status().unwrap();
    assert!(st.success(), "building {packages:?}");
}

struct Tools {
    bin: PathBuf,
    work: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Tools {
    /// The built binaries (see [`binaries`]) and a fresh, empty work directory, removed when the
    /// `Tools` is dropped.
    fn new() -> Self {
        let bin = binaries();
        let tmp = tempfile::tempdir().unwrap();
        Tools {
            bin,
            work: tmp.path().to_path_buf(),
            _tmp: tmp,
        }
    }

    fn run(&self, tool: &str, args: &[&str]) -> Output {
        Command::new(self.bin.join(tool))
            .args(args)
            .env(PASS_VAR, PASS)
            .env("HALE_KEY_PASSPHRASE", PASS)
            // new key files with a low scrypt cost (hale-sign warns); reading uses the file's cost
            .env("HALE_SIGN_INSECURE_TEST_SCRYPT_LOG_N", "10")
            .env("HALE_LOG", "warn")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Run and require success; stdout.
    fn ok(&self, tool: &str, args: &[&str]) -> String {
        succeeded(&format!("{tool} {args:?}"), &self.run(tool, args))
    }

    fn p(&self, name: &str) -> String {
        self.work.join(name).to_str().unwrap().to_string()
    }

    /// The path of `WORK/keys/name`.
    fn key(&self, name: &str) -> String {
        self.p(&format!("keys/{name}"))
    }

    fn sign(&self, args: &[&str]) -> String {
        let mut a = args.to_vec();
        a.extend(["--passphrase-env", PASS_VAR]);
        self.ok("hale-sign", &a)
    }

    /// `hale-sign key generate` of each (name, type) into `WORK/keys/name.{key,pub}`, in order.
    fn generate_keys(&self, keys: &[(&str, &str)]) {
        std::fs::create_dir_all(self.work.join("keys")).unwrap();
        for &(name, kind) in keys {
            let out = self.key(name);
            self.sign(&["key", "generate", "--type", kind, "--out", &out]);
        }
    }

    /// `hale-sign init WORK/release ROOT_ARGS…` with the targets, snapshot and timestamp keys of
    /// `WORK/keys`; the path of the staged (still unsigned) root.
    fn init_repo(&self, root_args: &[&str]) -> String {
        let repo = self.p("release");
        let mut args = vec!["init", repo.as_str()];
        args.extend(root_args);
        let (targets, snapshot, timestamp) = (
            self.key("targets.pub"),
            self.key("snapshot.pub"),
            self.key("timestamp.pub"),
        );
        args.extend([
            "--targets-key",
            &targets,
            "--snapshot-key",
            &snapshot,
            "--timestamp-key",
            &timestamp,
        ]);
        self.ok("hale-sign", &args);
        format!("{repo}/staged/root.json")
    }

    /// `hale-server init` of `WORK/server` with `staged_root` and the online timestamp/snapshot
    /// keys of `WORK/keys`; the output whatever the exit status.
    fn server_init(&self, staged_root: &str) -> Output {
        self.run(
            "hale-server",
            &[
                "init",
                "--data",
                &self.p("server"),
                "--root",
                staged_root,
                "--timestamp-key",
                &self.key("timestamp.key"),
                "--snapshot-key",
                &self.key("snapshot.key"),
            ],
        )
    }

    /// [`Self::server_init`], required to succeed, then an operator token for the publish API,
    /// saved in `WORK/token` (where [`Self::push`] reads it).
    fn init_server(&self, staged_root: &str) {
        succeeded("hale-server init", &self.server_init(staged_root));
        let token = self.ok(
            "hale-server",
            &["token", "add", "--data", &self.p("server"), "--name", "e2e"],
        );
        std::fs::write(self.work.join("token"), token.trim()).unwrap();
    }

    /// target add + sign + push of one firmware image under TARGET.
    fn release(&self, url: &str, version: &str, counter: &str, model: &str) -> Output {
        self.stage(version, counter, model);
        self.push(url)
    }

    /// As [`Self::release`], pushed to the staff listener with operator olga's certificate (the
    /// server has TLS on: the plain listener refuses the publish API).
    fn release_as_operator(
        &self,
        staff: &str,
        version: &str,
        counter: &str,
        model: &str,
    ) -> Output {
        self.stage(version, counter, model);
        self.push_with_cert(staff, "olga", PASS)
    }

    /// `hale-sign push` of the staged release to the staff listener with `name`'s certificate
    /// (`name.crt`, `name.key`), the key opened with `pass`.
    fn push_with_cert(&self, staff: &str, name: &str, pass: &str) -> Output {
        self.push_raw(
            staff,
            &[
                "--cert",
                &self.p(&format!("{name}.crt")),
                "--key",
                &self.p(&format!("{name}.key")),
                "--ca-cert",
                &self.p("ca/server.crt"),
                "--key-passphrase-env",
                "HALE_E2E_PUSH_PASS",
            ],
            ("HALE_E2E_PUSH_PASS", pass),
        )
    }

    /// `hale-sign push WORK/release --server URL AUTH… --timeout 20` with only `env` set (no
    /// signing passphrase); the output whatever the exit status.
    fn push_raw(&self, url: &str, auth: &[&str], env: (&str, &str)) -> Output {
        Command::new(self.bin.join("hale-sign"))
            .args(["push", &self.p("release"), "--server", url])
            .args(auth)
            .args(["--timeout", "20"])
            .env(env.0, env.1)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// target add + sign of one firmware image under TARGET (staged, not pushed).
    fn stage(&self, version: &str, counter: &str, model: &str) {
        let fw = self.work.join(format!("fw-{version}-{model}.bin"));
        let mut bytes = format!("HALE PUMP FIRMWARE {version} for {model}\n").into_bytes();
        bytes.extend((0..20_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
        std::fs::write(&fw, &bytes).unwrap();
        let repo = self.p("release");
        self.ok(
            "hale-sign",
            &[
                "target",
                "add",
                &repo,
                "--file",
                fw.to_str().unwrap(),
                "--name",
                TARGET,
                "--model",
                model,
                "--revisions",
                "r2,r3",
                "--version",
                version,
                "--security-counter",
                counter,
                "--min-bootloader",
                "1.0.0",
            ],
        );
        self.sign(&[
            "sign",
            &format!("{repo}/staged/targets.json"),
            "--key",
            &self.p("keys/targets.key"),
        ]);
    }

    fn push(&self, url: &str) -> Output {
        let token = std::fs::read_to_string(self.work.join("token")).unwrap();
        self.push_with(url, token.trim())
    }

    fn push_with(&self, url: &str, token: &str) -> Output {
        self.push_raw(url, &["--token-env", TOKEN_VAR], (TOKEN_VAR, token))
    }

    fn pump(&self, n: u32, args: &[&str]) -> String {
        let state = self.p(&format!("pump{n}"));
        let mut a = vec!["--state", state.as_str()];
        a.extend(args);
        self.ok("hale-agent", &a)
    }

    /// `pump`, for a command that must exit with `code` (a bundle install: 1 not installed, 3
    /// deferred); its stdout and stderr.
    fn pump_exits(&self, n: u32, args: &[&str], code: i32) -> String {
        let state = self.p(&format!("pump{n}"));
        let mut a = vec!["--state", state.as_str()];
        a.extend(args);
        let out = self.run("hale-agent", &a);
        assert_eq!(
            out.status.code(),
            Some(code),
            "hale-agent {a:?}: {}",
            text(&out)
        );
        text(&out)
    }

    fn poll(&self, n: u32, url: &str) -> String {
        self.pump(n, &["run", "--server", url, "--once", "--jitter", "0"])
    }

    /// (last result, reason, running version) from the pump's own `status`.
    fn status(&self, n: u32) -> (String, String, String) {
        let v: Value = serde_json::from_str(&self.pump(n, &["status"])).unwrap();
        let running = v["slots"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["active"] == true)
            .and_then(|s| s["version"].as_str())
            .unwrap_or("")
            .to_string();
        // (none standing: null)
        (
            v["last_result"]["result"]
                .as_str()
                .unwrap_or("")
                .to_string(),
            v["last_result"]["reason"]
                .as_str()
                .unwrap_or("")
                .to_string(),
            running,
        )
    }
}

/// hale-server, killed when dropped.
struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `hale-server serve --data WORK/server --listen 127.0.0.1:0 EXTRA…` with the key passphrase,
/// stdout piped for [`spawn_server`] (stderr goes to the test's).
fn serve_command(t: &Tools, extra: &[&str]) -> Command {
    let mut cmd = Command::new(t.bin.join("hale-server"));
    cmd.args(["serve", "--data", &t.p("server"), "--listen", "127.0.0.1:0"])
        .args(extra)
        .env("HALE_KEY_PASSPHRASE", PASS)
        .env("HALE_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    cmd
}

/// Spawn `cmd` and wait (20 s each, else fail with "hale-server did not print `what` within
/// 20 s") until it has printed `PREFIX URL` for every prefix; the running server (its `url` the
/// first listener's) and the URLs in the order of `prefixes`.
fn spawn_server(
    mut cmd: Command,
    prefixes: &'static [&'static str],
    what: &str,
) -> (Server, Vec<String>) {
    let mut child = cmd.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            for (i, p) in prefixes.iter().enumerate() {
                if let Some(url) = line.strip_prefix(p) {
                    let _ = tx.send((i, url.to_string()));
                }
            }
        }
    });
    let mut urls = vec![String::new(); prefixes.len()];
    for _ in 0..prefixes.len() {
        let (i, u) = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("hale-server did not print {what} within 20 s"));
        urls[i] = u;
    }
    let url = urls[0].clone();
    (Server { child, url }, urls)
}

/// hale-server on a plain loopback listener, serving `WORK/server`.
fn start_server(t: &Tools) -> Server {
    spawn_server(serve_command(t, &[]), &["listening on "], "its address").0
}

/// GET over loopback with a deadline; the body.
fn http_get(url: &str) -> String {
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut s = TcpStream::connect(host).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n",
        if path.is_empty() { "/" } else { path }
    )
    .unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    let resp = String::from_utf8(resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "GET {url}: {head}");
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        // de-chunk
        let mut out = String::new();
        let mut rest = body;
        loop {
            let (size, after) = rest.split_once("\r\n").unwrap();
            let n = usize::from_str_radix(size.trim(), 16).unwrap();
            if n == 0 {
                break;
            }
            out.push_str(&after[..n]);
            rest = &after[n + 2..];
        }
        return out;
    }
    body.to_string()
}

/// The server's inventory entry of device `id` (from the plain listener at `url`); fails if the
/// device is not listed.
fn inventory_entry(url: &str, id: &str) -> Value {
    let inv: Value = serde_json::from_str(&http_get(&format!("{url}/api/v1/devices"))).unwrap();
    inv["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["device"] == id)
        .unwrap_or_else(|| panic!("{id} not in the inventory: {inv}"))
        .clone()
}

/// The server's inventory record of one device: (result, reason, slots as "name=version(state)").
fn inventory(url: &str, id: &str) -> (String, String, Vec<String>) {
    let d = inventory_entry(url, id);
    let r = &d["report"];
    let slots = r["slots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            format!(
                "{}={}({})",
                s["name"].as_str().unwrap(),
                s["version"].as_str().unwrap(),
                s["state"].as_str().unwrap()
            )
        })
        .collect();
    (
        r["last_result"]["result"].as_str().unwrap().to_string(),
        r["last_result"]["reason"]
            .as_str()
            .unwrap_or("")
            .to_string(),
        slots,
    )
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Require that the command `what` succeeded, else fail with its exit status, stdout and stderr;
/// its stdout.
fn succeeded(what: &str, out: &Output) -> String {
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what}: {}\n{text}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// Provision pump `n` (state `pumpN`, id `pump-000N`) with v1 and the trusted root.
fn provision(t: &Tools, n: u32) {
    provision_serial(t, n, &format!("pump-000{n}"));
}

#[test]
fn pumps_update_defer_revert_and_refuse_through_hale_sign_and_hale_server() {
    let started = Instant::now();
    let t = Tools::new();
    let built = started.elapsed();

    // keys: 3 root (2-of-3), targets, and the online snapshot/timestamp keys the server holds
    t.generate_keys(&[
        ("root-1", "ed25519"),
        ("root-2", "ecdsa-p256"),
        ("root-3", "ed25519"),
        ("targets", "ed25519"),
        ("snapshot", "ed25519"),
        ("timestamp", "ed25519"),
    ]);
    let repo = t.p("release");
    let k = |n: &str| t.key(n);
    let staged_root = t.init_repo(&[
        "--root-key",
        &k("root-1.pub"),
        "--root-key",
        &k("root-2.pub"),
        "--root-key",
        &k("root-3.pub"),
        "--root-threshold",
        "2",
    ]);
    t.sign(&["sign", &staged_root, "--key", &k("root-1.key")]);

    // the server: init with hale-sign's root and the online keys; an operator token
    let one_of_three = t.server_init(&staged_root);
    assert_eq!(
        (
            one_of_three.status.code(),
            String::from_utf8_lossy(&one_of_three.stderr).trim_end()
        ),
        (
            Some(1),
            format!(
                "error: {staged_root}: root: 1 valid signatures from distinct authorized keys, \
                 threshold is 2"
            )
            .as_str()
        ),
        "a root with 1 of 2 signatures must not initialise a server: {}",
        text(&one_of_three)
    );
    assert!(
        !Path::new(&t.p("server")).exists(),
        "a refused init writes no server data"
    );
    t.sign(&["sign", &staged_root, "--key", &k("root-2.key")]);
    t.init_server(&staged_root);
    let server = start_server(&t);
    let url = server.url.clone();

    // v1, pushed; the pumps leave the factory with it and the trusted root
    let out = t.release(&url, "1.0.0", "1", "pump-a");
    assert!(out.status.success(), "push v1: {}", text(&out));
    assert!(
        std::fs::metadata(t.work.join("release/repository/1.root.json")).is_ok(),
        "push records the pushed root v1 locally"
    );
    provision(&t, 1);
    provision(&t, 2);

    // a push below threshold is refused locally; one the server refuses shows its error verbatim
    let fw = t.work.join("unsigned.bin");
    // `fw` with `bytes`, staged as `pump-a/notes.txt` (not signed)
    let add_notes = |bytes: &[u8]| {
        std::fs::write(&fw, bytes).unwrap();
        t.ok(
            "hale-sign",
            &[
                "target",
                "add",
                &repo,
                "--file",
                fw.to_str().unwrap(),
                "--name",
                "pump-a/notes.txt",
            ],
        );
    };
    add_notes(b"never signed");
    let served = || http_get(&format!("{url}/timestamp.json"));
    let before = served();
    let out = t.push(&url);
    assert_eq!(
        (out.status.code(), text(&out).trim_end()),
        (
            Some(2),
            format!(
                "error: refusing to push {repo}: 1 threshold(s) not met: targets v2: 0/1 by root v1 \
                 (nothing sent; see `hale-sign status {repo}`)"
            )
            .as_str()
        )
    );
    assert_eq!(served(), before, "nothing published");
    std::fs::remove_file(t.work.join("release/staged/targets.json")).unwrap();

    // v2
    let out = t.release(&url, "2.0.0", "2", "pump-a");
    assert!(out.status.success(), "push v2: {}", text(&out));
    assert!(text(&out).contains("pushed targets v2"), "{}", text(&out));

    // pump1 updates and confirms
    t.pump(1, &["health", "pass"]);
    let log = t.poll(1, &url);
    assert!(log.contains("2.0.0 confirmed"), "{log}");
    assert_eq!(
        t.status(1),
        ("installed".into(), "2.0.0".into(), "2.0.0".into())
    );
    let (result, _, slots) = inventory(&url, "pump-0001");
    assert_eq!(result, "installed");
    assert_eq!(slots, ["a=1.0.0(inactive)", "b=2.0.0(active)"]);

    // pump2 under therapy: deferred, nothing written; after therapy stops: installed
    t.pump(2, &["therapy", "on"]);
    t.poll(2, &url);
    assert_eq!(
        t.status(2),
        ("deferred".into(), "therapy running".into(), "1.0.0".into())
    );
    let (result, reason, slots) = inventory(&url, "pump-0002");
    assert_eq!(
        (result.as_str(), reason.as_str()),
        ("deferred", "therapy running")
    );
    assert_eq!(slots, ["a=1.0.0(active)", "b=(empty)"]);
    t.pump(2, &["therapy", "off"]);
    t.poll(2, &url);
    assert_eq!(
        t.status(2),
        ("installed".into(), "2.0.0".into(), "2.0.0".into())
    );
    assert_eq!(inventory(&url, "pump-0002").0, "installed");

    // v3 fails its health check on pump1: reverted to v2, the server shows `reverted`
    let out = t.release(&url, "3.0.0", "3", "pump-a");
    assert!(out.status.success(), "push v3: {}", text(&out));
    t.pump(1, &["health", "fail"]);
    let log = t.poll(1, &url);
    assert!(log.contains("health check failed"), "{log}");
    let (result, reason, running) = t.status(1);
    assert_eq!((result.as_str(), running.as_str()), ("reverted", "2.0.0"));
    assert!(reason.contains("3.0.0"), "{reason}");
    let (result, _, slots) = inventory(&url, "pump-0001");
    assert_eq!(result, "reverted");
    assert_eq!(slots, ["a=3.0.0(bad)", "b=2.0.0(active)"]);
    t.pump(1, &["health", "pass"]);

    // an image for another hardware model: refused, reported `rejected` with the reason
    let out = t.release(&url, "4.0.0", "4", "pump-b");
    assert!(out.status.success(), "push pump-b image: {}", text(&out));
    t.poll(2, &url);
    let (result, reason, running) = t.status(2);
    assert_eq!(
        (result.as_str(), reason.as_str(), running.as_str()),
        ("rejected", "image is not built for model pump-a", "2.0.0")
    );
    let (result, server_reason, slots) = inventory(&url, "pump-0002");
    assert_eq!(
        (result.as_str(), server_reason.as_str()),
        ("rejected", reason.as_str())
    );
    assert_eq!(slots, ["a=1.0.0(inactive)", "b=2.0.0(active)"]);

    // (a copy of the working directory as it is now, for a push the server has moved past)
    let copied = Command::new("cp")
        .args(["-a", &repo, &t.p("release-v4")])
        .status()
        .unwrap();
    assert!(copied.success());
    // an older image (1.5.0 < running 2.0.0): refused too
    let out = t.release(&url, "1.5.0", "2", "pump-a");
    assert!(out.status.success(), "push 1.5.0: {}", text(&out));
    t.poll(2, &url);
    let (result, reason, running) = t.status(2);
    assert_eq!(
        (result.as_str(), reason.as_str(), running.as_str()),
        (
            "rejected",
            "version 1.5.0 is not newer than running 2.0.0",
            "2.0.0"
        )
    );
    let (result, server_reason, slots) = inventory(&url, "pump-0002");
    assert_eq!(
        (result.as_str(), server_reason.as_str()),
        ("rejected", reason.as_str())
    );
    assert_eq!(slots, ["a=1.0.0(inactive)", "b=2.0.0(active)"]);

    // nothing newer than what the server serves: nothing sent, and nothing to do (a script that
    // pushes again after a push went through succeeds)
    let before = served();
    let out = t.push(&url);
    assert_eq!(
        (out.status.code(), text(&out).trim_end()),
        (
            Some(0),
            "nothing to push: the server serves this copy's versions already (targets v5)"
        )
    );
    assert_eq!(served(), before, "nothing published");
    // from the copy the server has moved past: said so
    std::fs::rename(&repo, t.p("release-v5")).unwrap();
    std::fs::rename(t.p("release-v4"), &repo).unwrap();
    let out = t.push(&url);
    assert_eq!(
        (out.status.code(), text(&out).trim_end()),
        (
            Some(2),
            format!(
                "error: {repo}: nothing to push: the server serves every role at this copy's \
                 version or later (targets v4 here, v5 on the server); the server is ahead: this \
                 copy is not the one its releases come from"
            )
            .as_str()
        )
    );
    std::fs::remove_dir_all(&repo).unwrap();
    std::fs::rename(t.p("release-v5"), &repo).unwrap();
    // the server's refusal is shown verbatim (here: an unknown operator token)
    add_notes(b"v6 notes");
    t.sign(&[
        "sign",
        &format!("{repo}/staged/targets.json"),
        "--key",
        &k("targets.key"),
    ]);
    let before = served();
    let out = t.push_with(&url, "hale_not-a-token");
    // the server's JSON error body verbatim
    assert_eq!(
        (out.status.code(), text(&out).trim_end()),
        (
            Some(2),
            format!(
                "error: {url}/api/v1/publish: the server refused (HTTP 401): \
                 {{\"error\":\"unauthorized\",\"message\":\"a valid operator token is required \
                 (Authorization: Bearer …)\"}}"
            )
            .as_str()
        )
    );
    assert_eq!(served(), before, "nothing published");
    assert!(
        std::fs::metadata(t.work.join("release/staged/targets.json")).is_ok(),
        "a refused push leaves the staged release in place"
    );

    // a push the server takes whose answer is lost (a timeout, a dropped connection): staged v6
    // stays staged, as in this copy of the directory taken before the push
    let copy = |to: &str| {
        let ok = Command::new("cp")
            .args(["-a", &repo, &t.p(to)])
            .status()
            .unwrap();
        assert!(ok.success());
    };
    let swap_in = |from: &str| {
        std::fs::remove_dir_all(&repo).unwrap();
        std::fs::rename(t.p(from), &repo).unwrap();
    };
    copy("release-lost");
    copy("release-other");
    let out = t.push(&url);
    assert!(out.status.success(), "push v6: {}", text(&out));
    let v6 = served();
    swap_in("release-lost");
    // pushing again finds the server serving the staged file byte for byte: it goes where the
    // lost answer would have put it, and the next change starts v7
    let staged_v6 = std::fs::read(t.work.join("release/staged/targets.json")).unwrap();
    let out = t.push(&url);
    assert_eq!(
        (out.status.code(), text(&out).trim_end()),
        (
            Some(0),
            "already on the server, byte for byte: targets v6 (an earlier push went through but \
             its answer was lost); moved from staged/ into repository/"
        )
    );
    assert_eq!(served(), v6, "nothing published");
    assert!(!t.work.join("release/staged/targets.json").exists());
    assert_eq!(
        std::fs::read(t.work.join("release/repository/6.targets.json")).unwrap(),
        staged_v6
    );
    let out = t.push(&url);
    assert_eq!(
        (out.status.code(), text(&out).trim_end()),
        (
            Some(0),
            "nothing to push: the server serves this copy's versions already (targets v6)"
        )
    );
    copy("release-current");
    copy("release-stale");
    // another v6 (changed after the push went through, or from another copy): refused, nothing
    // sent, nothing moved, with the way on
    swap_in("release-other");
    add_notes(b"other v6 notes");
    t.sign(&[
        "sign",
        &format!("{repo}/staged/targets.json"),
        "--key",
        &k("targets.key"),
    ]);
    let staged = std::fs::read(t.work.join("release/staged/targets.json")).unwrap();
    let out = t.push(&url);
    assert_eq!(
        (out.status.code(), text(&out).trim_end()),
        (
            Some(2),
            format!(
                "error: {repo}/staged/targets.json: the server serves another targets v6 than the \
                 one staged here: another copy published that version, or an earlier push of this \
                 copy went through (its answer lost) before the staged file changed again. \
                 Nothing sent. To go on from what the server serves: keep aside what you staged \
                 since, put the server's 6.targets.json ({url}/6.targets.json) into \
                 {repo}/repository and remove {repo}/staged/targets.json, then stage your changes \
                 again (they become v7)"
            )
            .as_str()
        )
    );
    assert_eq!(served(), v6, "nothing published");
    assert_eq!(
        std::fs::read(t.work.join("release/staged/targets.json")).unwrap(),
        staged,
        "the staged file stays"
    );
    assert!(!t.work.join("release/repository/6.targets.json").exists());

    // root v2 pushed from one copy: another copy, still at root v1 with nothing newer, is told
    // the server is ahead (it used to hear "nothing to push", exit 0)
    swap_in("release-current");
    t.ok(
        "hale-sign",
        &[
            "rotate",
            &repo,
            "--role",
            "root",
            "--remove-key",
            &k("root-3.pub"),
        ],
    );
    for key in ["root-1.key", "root-2.key"] {
        t.sign(&[
            "sign",
            &format!("{repo}/staged/root.json"),
            "--key",
            &k(key),
        ]);
    }
    let out = t.push(&url);
    assert!(out.status.success(), "push root v2: {}", text(&out));
    swap_in("release-stale");
    let before = served();
    let out = t.push(&url);
    assert_eq!(
        (out.status.code(), text(&out).trim_end()),
        (
            Some(2),
            format!(
                "error: {repo}: the server serves a newer root (2.root.json) than this copy's \
                 root v1; the server is ahead: this copy is not the one its releases come from \
                 (nothing sent)"
            )
            .as_str()
        )
    );
    assert_eq!(served(), before, "nothing published");

    drop(server);
    let total = started.elapsed();
    // printed, not asserted: a shared machine's load is no property of the product
    eprintln!("e2e: build check {built:?}, scenario {:?}", total - built);
}

/// hale-server with the TLS listeners; (plain, device, enroll, staff) URLs.
fn start_tls_server(t: &Tools) -> (Server, [String; 4]) {
    let mut cmd = serve_command(
        t,
        &[
            "--tls-dir",
            &t.p("server/tls"),
            "--device-listen",
            "127.0.0.1:0",
            "--enroll-listen",
            "127.0.0.1:0",
            "--staff-listen",
            "127.0.0.1:0",
        ],
    );
    cmd.env("HALE_CA_PASSPHRASE", PASS);
    let (server, urls) = spawn_server(
        cmd,
        &[
            "listening on ",
            "device listening on ",
            "enroll listening on ",
            "staff listening on ",
        ],
        "its listeners",
    );
    (server, urls.try_into().unwrap())
}

/// Issue 5, client side: a pump made at the factory (key + CSR, factory certificate, manifest)
/// enrolls over EST with its factory certificate, polls, updates and reports over mTLS on the
/// device listener, renews at 2/3 of its (short) certificate lifetime; the audit log (staff API,
/// operator certificate) has every step.
#[test]
fn pump_enrolls_updates_reports_and_renews_over_mtls() {
    let t = Tools::new();
    identity_setup(&t);
    let data = t.p("server");
    let pass = offline_ca_pass(&t);
    // short device certificates, so renewal happens within the test: issued backdated by 300 s,
    // valid 180 s ahead, a 480 s lifetime whose 2/3 point is 20 s after issue
    std::fs::write(
        t.work.join("server/config.json"),
        br#"{"device_certificate_validity_secs": 180}"#,
    )
    .unwrap();

    // the factory: the pump makes its key and CSR, the station issues and records it
    let serial = "SN-E2E-0001";
    let agent = |args: &[&str]| -> Output {
        agent_with_secret(
            &t,
            "pump1",
            "e2e device secret, a secure element stands here",
            args,
        )
    };
    let out = agent(&[
        "factory-csr",
        "--serial",
        serial,
        "--out",
        &t.p("pump1.csr"),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    t.ok(
        "hale-sign",
        &[
            "factory",
            "issue",
            "--ca-dir",
            &t.p("ca"),
            "--csr",
            &t.p("pump1.csr"),
            "--serial",
            serial,
            "--model",
            "pump-a",
            "--out",
            &t.p("pump1-factory.crt"),
            "--manifest",
            &t.p("manifest.json"),
            &pass[0],
            &pass[1],
        ],
    );
    let out = agent(&["factory-install", "--cert", &t.p("pump1-factory.crt")]);
    assert!(out.status.success(), "{}", text(&out));
    for f in ["factory.key", "identity.json"] {
        let b = std::fs::read_to_string(t.work.join("pump1/identity").join(f)).unwrap();
        assert!(!b.contains("PRIVATE KEY"), "{f} holds a plaintext key");
    }
    t.ok(
        "hale-server",
        &["manifest", "import", "--data", &data, &t.p("manifest.json")],
    );

    let (server, [plain, device, enroll, staff]) = start_tls_server(&t);
    let out = t.release_as_operator(&staff, "1.0.0", "1", "pump-a");
    assert!(out.status.success(), "push v1: {}", text(&out));
    provision_serial(&t, 1, serial);

    let out = t.release_as_operator(&staff, "2.0.0", "2", "pump-a");
    assert!(out.status.success(), "push v2: {}", text(&out));

    // a technician's certificate cannot publish, and a wrong passphrase opens no key: both
    // refused with their reason, and the served repository stays at v2
    let served = || -> Value {
        serde_json::from_slice(&http_get_bytes(&format!("{plain}/timestamp.json"))).unwrap()
    };
    let before = served();
    t.stage("3.0.0", "3", "pump-a");
    let out = t.push_with_cert(&staff, "tom", PASS);
    assert_eq!(
        (out.status.code(), text(&out).trim_end()),
        (
            Some(2),
            format!(
                "error: {staff}/api/v1/publish: the server refused (HTTP 403): \
                 {{\"error\":\"role_forbidden\",\"message\":\"a technician may not publish\"}}"
            )
            .as_str()
        ),
        "technician published"
    );
    assert_eq!(served(), before);
    let out = t.push_with_cert(&staff, "olga", "not olga's passphrase");
    assert_eq!(
        (out.status.code(), text(&out).trim_end()),
        (
            Some(2),
            format!(
                "error: opening {}: key file: wrong passphrase or damaged key file",
                t.p("olga.key")
            )
            .as_str()
        ),
        "wrong passphrase published"
    );
    assert_eq!(served(), before);

    // with TLS on, the repository is read on the staff listener: technician tom bundles v2 from
    // it for a pump out of reach; without a staff certificate the read is refused, named
    let (bundle, release) = (t.p("v2-from-staff.bin"), t.p("release"));
    let from_staff = |creds: &[&str]| {
        let mut args = vec![
            "bundle",
            &release,
            "--from-server",
            &staff,
            "--target",
            TARGET,
            "--out",
            &bundle,
        ];
        args.extend(creds);
        t.run("hale-sign", &args)
    };
    let out = from_staff(&[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert_eq!(
        text(&out).trim_end(),
        format!(
            "error: resolving {TARGET} at {staff}: {staff}/2.root.json: Connection Failed: tls \
             connection init failed: invalid peer certificate: UnknownIssuer (a server with TLS \
             on serves its repository to staff on the staff listener: give --staff-cert, \
             --staff-key and --server-ca-cert)"
        ),
        "read without a certificate"
    );
    assert!(!t.work.join("v2-from-staff.bin").exists());
    let (tom_crt, tom_key, server_ca) = (t.p("tom.crt"), t.p("tom.key"), t.p("ca/server.crt"));
    let out = from_staff(&[
        "--staff-cert",
        &tom_crt,
        "--staff-key",
        &tom_key,
        "--server-ca-cert",
        &server_ca,
        "--staff-key-passphrase-env",
        PASS_VAR,
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("{TARGET} for devices trusting root v1")),
        "{}",
        text(&out)
    );
    let (carried, v2) = (
        std::fs::read(&bundle).unwrap(),
        std::fs::read(t.work.join("fw-2.0.0-pump-a.bin")).unwrap(),
    );
    assert!(
        carried.windows(v2.len()).any(|w| w == v2),
        "v2's image bundled"
    );

    // enroll with the factory certificate; the pump trusts only the Server CA
    let out_enroll = agent(&[
        "enroll",
        "--est",
        &enroll,
        "--ca-cert",
        &t.p("ca/server.crt"),
    ]);
    assert!(out_enroll.status.success(), "{}", text(&out_enroll));
    assert!(
        text(&out_enroll).starts_with("enrolled: operational certificate "),
        "{}",
        text(&out_enroll)
    );

    // v2 over mTLS: poll, stage, trial boot, confirm, report
    let poll = || agent(&["run", "--server", &device, "--once", "--jitter", "0"]);
    let out = poll();
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("health check passed: 2.0.0 confirmed"),
        "{log}"
    );
    assert!(!log.contains("refused") && !log.contains("failed"), "{log}");
    let (result, reason, running) = t.status(1);
    assert_eq!(
        (result.as_str(), reason.as_str(), running.as_str()),
        ("installed", "2.0.0", "2.0.0")
    );

    // reports are bound to the certificate: the plain listener refuses them
    let rest = plain.strip_prefix("http://").unwrap();
    let mut s = TcpStream::connect(rest).unwrap();
    write!(s, "POST /api/v1/devices/{serial}/report HTTP/1.1\r\nHost: {rest}\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 403"), "{resp}");
    assert!(resp.contains("client_certificate_required"), "{resp}");

    // an operator revokes the pump's certificate, young (its renewal is 20 s after issue): the
    // next poll meets the refusal, enrolls again with the factory certificate at once, and polls
    // with the new certificate
    let enrolled = enrolled_serial(&out_enroll);
    let (code, body) = staff_post(
        &t,
        &staff,
        "olga",
        &format!("/api/v1/staff/certificates/{enrolled}/revoke"),
        serde_json::json!({"reason": "key_compromise"}),
    );
    assert_eq!(code, 200, "{body}");
    let out = poll();
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    let said = log
        .lines()
        .find(|l| l.starts_with("the server refused the operational certificate ("))
        .unwrap_or_else(|| panic!("no re-enrollment: {log}"));
    assert!(said.contains("CertificateRevoked"), "{said}");
    let replaced = said
        .rsplit_once("): enrolled again with the factory certificate (")
        .and_then(|(_, s)| s.strip_suffix(')'))
        .unwrap_or_else(|| panic!("{said}"));
    assert_ne!(replaced, enrolled);
    assert_eq!(
        device_record(&t, &staff, serial)["certificate"]["serial"],
        replaced,
        "the server's record holds the new certificate"
    );
    assert!(log.ends_with("up to date: running 2.0.0\n"), "{log}");

    // a running pump whose certificate another process replaces (an operator's token, enrolled
    // beside it; the server supersedes the certificate the pump's connections present): its
    // next poll presents the new one, and it does not enroll again on its own
    let mut running = Command::new(t.bin.join("hale-agent"))
        .args(["--state", &t.p("pump1")])
        .args([
            "run",
            "--server",
            &device,
            "--interval",
            "1",
            "--jitter",
            "0",
        ])
        .env(
            "HALE_DEVICE_SECRET",
            "e2e device secret, a secure element stands here",
        )
        .env("HALE_AGENT_INSECURE_TEST_SCRYPT_LOG_N", "10")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let reader = {
        let (stdout, lines) = (running.stdout.take().unwrap(), lines.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        })
    };
    let up_to_date = |from: usize| {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let seen = lines.lock().unwrap().clone();
            if let Some(i) = (from..seen.len()).find(|&i| seen[i] == "up to date: running 2.0.0") {
                return i + 1;
            }
            assert!(Instant::now() < deadline, "no poll went through: {seen:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let polled = up_to_date(0);
    let (code, v) = staff_post(
        &t,
        &staff,
        "olga",
        "/api/v1/staff/enroll-tokens",
        serde_json::json!({"serial": serial, "model": "pump-a"}),
    );
    assert_eq!(code, 200, "{v}");
    std::fs::write(t.p("enroll.token"), v["token"].as_str().unwrap()).unwrap();
    let by_token = enrolled_serial(&agent(&[
        "enroll",
        "--est",
        &enroll,
        "--ca-cert",
        &t.p("ca/server.crt"),
        "--token-file",
        &t.p("enroll.token"),
    ]));
    let seen_then = lines.lock().unwrap().len().max(polled);
    up_to_date(seen_then);
    running.kill().unwrap();
    running.wait().unwrap();
    reader.join().unwrap();
    let seen = lines.lock().unwrap().clone();
    assert!(
        !seen.iter().any(|l| l.contains("enrolled again")),
        "the pump replaced the token's certificate: {seen:?}"
    );
    assert_eq!(
        device_record(&t, &staff, serial)["certificate"]["serial"],
        by_token.as_str(),
        "{seen:?}"
    );

    // past the 2/3 point (20 s after issue): the next poll renews with simplereenroll first
    std::thread::sleep(Duration::from_secs(22));
    let out = poll();
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("renewed: operational certificate "), "{log}");
    assert!(!log.contains("refused") && !log.contains("failed"), "{log}");

    // the audit log, read by an operator over the staff listener: every poll that went through
    // reported (the refused one could not; the running pump's last report may have been cut
    // short), and the later reports (2.0.0 installed, as before) said nothing new, so only the
    // first is audited
    let metrics = String::from_utf8(http_get_bytes(&format!("{plain}/metrics"))).unwrap();
    let reports: usize = metrics
        .lines()
        .find_map(|l| l.strip_prefix("hale_reports_total "))
        .unwrap()
        .parse()
        .unwrap();
    let loop_polls = seen
        .iter()
        .filter(|l| *l == "up to date: running 2.0.0")
        .count();
    assert!(
        (2 + loop_polls..=3 + loop_polls).contains(&reports),
        "{reports} reports, {loop_polls} polls of the running pump"
    );
    let kinds = audit_kinds(&t, &staff);
    eprintln!("audit kinds: {kinds:?}");
    let count = |step: &str| kinds.iter().filter(|k| **k == step).count();
    for (step, n) in [
        ("manifest-import", 1),
        ("enroll", 3),
        ("enroll-token", 1),
        ("certificate-revoke", 1),
        ("reenroll", 1),
        ("report", 1),
    ] {
        assert_eq!(count(step), n, "audit {step}: {kinds:?}");
    }
    assert!(
        kinds.ends_with(
            &[
                "report",
                "certificate-revoke",
                "enroll",
                "enroll-token",
                "enroll",
                "reenroll"
            ]
            .map(String::from)
        ),
        "{kinds:?}"
    );
    drop(server);
    t.ok("hale-server", &["audit", "verify", "--data", &data]);
}

/// GET with ureq, bounded; the body bytes (200 only).
fn http_get_bytes(url: &str) -> Vec<u8> {
    let r = ureq::get(url)
        .timeout(Duration::from_secs(20))
        .call()
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let mut out = Vec::new();
    r.into_reader()
        .take(64 << 20)
        .read_to_end(&mut out)
        .unwrap();
    out
}

/// Authorized rollback delivered offline (issue: rollback + bundles + technician link):
/// hale-sign delegates a 2-of-2 `rollback` role; the pump updates online to 1.1.0; 1.1.0 is
/// pulled and 1.0.0 re-listed, which the pump refuses online and from a bundle without an
/// authorization; two signers authorize the rollback for this pump, hale-sign bundles it, a
/// technician pushes it with `hale-link` into `hale-agent link`, the pump verifies and installs
/// 1.0.0; at its next sync the server's inventory and audit show the rollback and who signed.
#[test]
fn authorized_rollback_travels_offline_over_the_link_and_the_server_records_its_signers() {
    let t = Tools::new();
    t.generate_keys(&[
        ("root", "ed25519"),
        ("targets", "ed25519"),
        ("snapshot", "ed25519"),
        ("timestamp", "ed25519"),
        ("field-service", "ecdsa-p256"),
        ("clinical-eng", "ed25519"),
    ]);
    let repo = t.p("release");
    let k = |n: &str| t.key(n);
    let staged_root = t.init_repo(&["--root-key", &k("root.pub")]);
    t.sign(&["sign", &staged_root, "--key", &k("root.key")]);
    let data = t.p("server");
    t.init_server(&staged_root);
    let server = start_server(&t);
    let url = server.url.clone();

    // the rollback role: two people, both needed; it is delegated no paths
    t.ok(
        "hale-sign",
        &[
            "delegate",
            &repo,
            "--to",
            "rollback",
            "--key",
            &k("field-service.pub"),
            "--key",
            &k("clinical-eng.pub"),
            "--threshold",
            "2",
        ],
    );
    for key in ["field-service", "clinical-eng"] {
        t.sign(&[
            "sign",
            &format!("{repo}/staged/rollback.json"),
            "--key",
            &k(&format!("{key}.key")),
        ]);
    }
    let out = t.release(&url, "1.0.0", "1", "pump-a");
    assert!(out.status.success(), "push v1: {}", text(&out));
    provision(&t, 1);
    let v1 = std::fs::read(t.work.join("fw-1.0.0-pump-a.bin")).unwrap();

    // 1.1.0 (same security counter) goes out online
    let out = t.release(&url, "1.1.0", "1", "pump-a");
    assert!(out.status.success(), "push v1.1: {}", text(&out));
    t.poll(1, &url);
    assert_eq!(t.status(1).2, "1.1.0");

    // 1.1.0 is pulled: TARGET lists the 1.0.0 image again (same bytes, same counter)
    std::fs::write(t.work.join("fw-1.0.0-pump-a.bin"), &v1).unwrap();
    let out = t.release(&url, "1.0.0", "1", "pump-a");
    assert!(out.status.success(), "re-list v1: {}", text(&out));
    let refused = "update refused: version 1.0.0 is not newer than running 1.1.0";
    let out = t.poll(1, &url);
    assert!(out.contains(refused), "online downgrade: {out}");
    assert_eq!(t.status(1).2, "1.1.0");

    // the server signs timestamp and snapshot: the local repository has none, and hale-sign
    // says where to read them
    let out = t.run(
        "hale-sign",
        &[
            "bundle",
            &repo,
            "--target",
            TARGET,
            "--out",
            &t.p("plain.bin"),
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains(
            "timestamp.json: not found (releases pushed to hale-server get their timestamp and \
             snapshot there: give --from-server URL, the server's repository)"
        ),
        "{}",
        text(&out)
    );
    // a bundle without an authorization is refused in the same words
    t.ok(
        "hale-sign",
        &[
            "bundle",
            &repo,
            "--from-server",
            &url,
            "--target",
            TARGET,
            "--out",
            &t.p("plain.bin"),
        ],
    );
    let out = t.pump_exits(1, &["bundle", "install", &t.p("plain.bin")], 1);
    assert!(out.contains(refused), "offline downgrade: {out}");
    assert_eq!(
        t.status(1),
        (
            "rejected".into(),
            refused["update refused: ".len()..].into(),
            "1.1.0".into()
        )
    );
    assert!(!t.work.join("pump1/install_records.json").exists());

    // two signers authorize the rollback for this pump; hale-sign bundles it
    let reason = "INC-4711: occlusion alarm regression in 1.1.0";
    let auth = t.p("auth.json");
    t.sign(&[
        "rollback",
        "authorize",
        &repo,
        "--from-server",
        &url,
        "--device",
        "pump-0001",
        "--target",
        TARGET,
        "--reason",
        reason,
        "--installed",
        "1.1.0",
        "--expires-in",
        "8h",
        "--key",
        &k("field-service.key"),
        "--out",
        &auth,
    ]);
    let st = t.run(
        "hale-sign",
        &["rollback", "status", &repo, &auth, "--from-server", &url],
    );
    assert_eq!(st.status.code(), Some(1), "one of two: {}", text(&st));
    t.sign(&[
        "rollback",
        "sign",
        &repo,
        &auth,
        "--from-server",
        &url,
        "--key",
        &k("clinical-eng.key"),
    ]);
    t.ok(
        "hale-sign",
        &["rollback", "status", &repo, &auth, "--from-server", &url],
    );
    t.ok(
        "hale-sign",
        &[
            "bundle",
            &repo,
            "--from-server",
            &url,
            "--target",
            TARGET,
            "--authorization",
            &auth,
            "--out",
            &t.p("rollback.bin"),
        ],
    );

    // the technician pushes it over the link (the pump's stdin/stdout as its serial line)
    let state = t.p("pump1");
    let agent = t.bin.join("hale-agent");
    let push = [
        "push",
        "--bundle",
        &t.p("rollback.bin"),
        "--",
        agent.to_str().unwrap(),
        "--state",
        &state,
        "link",
        "--device",
        "-",
    ];
    // during therapy the pump defers, and hale-link exits as the pump did (3, not 1)
    t.pump(1, &["therapy", "on"]);
    let before = t.status(1);
    let out = t.run("hale-link", &push);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let said = err
        .lines()
        .find(|l| l.contains("exited with exit status: 3 after receiving bundle "))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(
        said.ends_with(
            ": the install is deferred (see the pump's log above); push again when the pump \
             allows it"
        ),
        "{said}"
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("deferred: therapy running"),
        "{}",
        text(&out)
    );
    assert_eq!(t.status(1).2, before.2, "still running what it ran");
    t.pump(1, &["therapy", "off"]);
    let out = t.ok("hale-link", &push);
    // the pump kept the deferred bundle whole: nothing is sent again
    let len = std::fs::metadata(t.p("rollback.bin")).unwrap().len();
    assert!(
        out.contains(&format!("0 bytes in 0 blocks, resumed from offset {len}")),
        "{out}"
    );
    assert!(
        out.contains(&format!("rollback authorized: {reason}")),
        "{out}"
    );
    assert!(
        out.contains("health check passed: 1.0.0 confirmed"),
        "{out}"
    );
    assert_eq!(t.status(1).2, "1.0.0");
    let keyid = |n: &str| -> String {
        let v: Value =
            serde_json::from_slice(&std::fs::read(k(&format!("{n}.pub"))).unwrap()).unwrap();
        v["keyid"].as_str().unwrap().to_string()
    };
    let mut signers = vec![keyid("field-service"), keyid("clinical-eng")];
    signers.sort();

    // the next sync reports it once; the server keeps it with the device and audits it
    t.poll(1, &url);
    let queued = std::fs::read_to_string(t.work.join("pump1/install_records.json")).unwrap();
    assert_eq!(queued, "[]", "reported, and forgotten");
    let dev = inventory_entry(&url, "pump-0001");
    let rec = &dev["report"]["install_record"];
    assert_eq!(rec["kind"], "rollback", "{dev}");
    assert_eq!(rec["outcome"], "confirmed", "{dev}");
    assert_eq!(rec["target"], TARGET);
    assert_eq!(rec["version"], "1.0.0");
    assert_eq!(rec["reason"], reason);
    // when the pump staged it: YYYY-MM-DDTHH:MM:SSZ
    assert_eq!(rec["staged"].as_str().map(str::len), Some(20), "{dev}");
    let mut got: Vec<String> = rec["signers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect();
    got.sort();
    assert_eq!(got, signers);
    let (_, _, slots) = inventory(&url, "pump-0001");
    assert!(
        slots
            .iter()
            .any(|s| s.starts_with("b=1.0.0") || s.starts_with("a=1.0.0")),
        "{slots:?}"
    );
    drop(server);
    let out = t.ok("hale-server", &["audit", "verify", "--data", &data]);
    assert!(out.contains("audit chain OK"), "{out}");
}

// --- device identity: token enrollment and decommission (issue 5) ------------------------------

/// `--passphrase-file` of the offline CA files (root, Manufacturing) of `identity_setup`.
fn offline_ca_pass(t: &Tools) -> [String; 2] {
    ["--passphrase-file".to_string(), t.p("ca-offline-pass")]
}

/// A TUF repository, an initialised hale-server (`server/`), the device-identity hierarchy
/// (`ca/`, its three passphrases apart as the ceremony's: the offline one in `ca-offline-pass`
/// ([`offline_ca_pass`]), the server's `PASS` (Device Issuing CA and the server's TLS key), the
/// operations one in `ca-operations-pass` (Technician and Server CA)), the server's TLS
/// directory and an operator (`olga.crt`/`olga.key`) and a technician (`tom.crt`/`tom.key`)
/// certificate, all through the real binaries.
fn identity_setup(t: &Tools) {
    t.generate_keys(&[
        ("root", "ed25519"),
        ("targets", "ed25519"),
        ("snapshot", "ed25519"),
        ("timestamp", "ed25519"),
    ]);
    let staged_root = t.init_repo(&["--root-key", &t.key("root.pub"), "--root-threshold", "1"]);
    t.sign(&["sign", &staged_root, "--key", &t.key("root.key")]);
    t.init_server(&staged_root);

    std::fs::write(
        t.work.join("ca-offline-pass"),
        "e2e-only offline CA passphrase\n",
    )
    .unwrap();
    std::fs::write(
        t.work.join("ca-operations-pass"),
        "e2e-only operations CA passphrase\n",
    )
    .unwrap();
    let offline = offline_ca_pass(t);
    let offline = [offline[0].as_str(), offline[1].as_str()];
    let ops_file = t.p("ca-operations-pass");
    let pass = ["--passphrase-file", ops_file.as_str()];
    let kpass = ["--key-passphrase-env", PASS_VAR];
    let ca = t.p("ca");
    t.ok(
        "hale-sign",
        &[
            "ca",
            "init",
            "--out",
            &ca,
            offline[0],
            offline[1],
            "--server-passphrase-env",
            PASS_VAR,
            "--operations-passphrase-file",
            &ops_file,
        ],
    );
    std::fs::create_dir_all(t.work.join("server/tls/ca")).unwrap();
    std::fs::create_dir_all(t.work.join("server/tls/crl")).unwrap();
    let server_prefix = t.p("server/tls/server");
    t.ok(
        "hale-sign",
        &[
            "ca",
            "server-cert",
            "--ca-dir",
            &ca,
            "--dns",
            "localhost",
            "--ip",
            "127.0.0.1",
            "--out",
            &server_prefix,
            pass[0],
            pass[1],
            kpass[0],
            kpass[1],
        ],
    );
    for f in [
        "root.crt",
        "manufacturing.crt",
        "device-issuing.crt",
        "technician.crt",
        "server.crt",
        "device-issuing.key",
    ] {
        std::fs::copy(
            t.work.join("ca").join(f),
            t.work.join("server/tls/ca").join(f),
        )
        .unwrap();
    }
    for (slug, pass) in [("manufacturing", offline), ("technician", pass)] {
        let out = t.p(&format!("server/tls/crl/{slug}.crl"));
        t.ok(
            "hale-sign",
            &[
                "ca", "crl", "--ca-dir", &ca, "--ca", slug, "--out", &out, pass[0], pass[1],
            ],
        );
    }
    for (role, name) in [("operator", "olga"), ("technician", "tom")] {
        let out = t.p(name);
        t.ok(
            "hale-sign",
            &[
                "ca", "staff", "--ca-dir", &ca, "--role", role, "--name", name, "--hours", "1",
                "--out", &out, pass[0], pass[1], kpass[0], kpass[1],
            ],
        );
    }
}

/// Every certificate of a PEM chain file.
fn pem_chain(pem: &str) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    pem.split_inclusive("-----END CERTIFICATE-----")
        .filter(|c| c.contains("-----BEGIN CERTIFICATE-----"))
        .map(|c| hale_pki::tls::certificate_from_pem(c.trim_start()).unwrap())
        .collect()
}

/// An HTTP/1.1 client over mTLS trusting only the Server CA, presenting `chain` and `key`.
fn mtls_agent(
    t: &Tools,
    chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
) -> ureq::Agent {
    let mut cfg = (*hale_pki::tls::client_config(server_ca(t), chain, key).unwrap()).clone();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    ureq::AgentBuilder::new()
        .tls_config(std::sync::Arc::new(cfg))
        .timeout(Duration::from_secs(20))
        .build()
}

/// The Server CA certificate (`WORK/ca/server.crt`), the only trust anchor of the clients here.
fn server_ca(t: &Tools) -> rustls::pki_types::CertificateDer<'static> {
    hale_pki::tls::certificate_from_pem(
        &std::fs::read_to_string(t.work.join("ca/server.crt")).unwrap(),
    )
    .unwrap()
}

/// The private key of an `operational.json` (`op`) of state pump1, unsealed with pump1's device
/// secret.
fn pump1_key(op: &Value) -> rustls::pki_types::PrivateKeyDer<'static> {
    hale_pki::tls::open_private_key(
        &serde_json::to_vec(&op["key"]).unwrap(),
        b"e2e device secret of pump1, a secure element stands here",
    )
    .unwrap()
}

/// The staff API client of the person `name` (`hale-sign ca staff --out WORK/name`).
fn staff_agent(t: &Tools, name: &str) -> ureq::Agent {
    let sealed = std::fs::read(t.work.join(format!("{name}.key"))).unwrap();
    let key = hale_pki::tls::open_private_key(&sealed, PASS.as_bytes()).unwrap();
    let chain = pem_chain(&std::fs::read_to_string(t.work.join(format!("{name}.crt"))).unwrap());
    mtls_agent(t, chain, key)
}

/// (HTTP status, JSON body) of a request, error statuses included.
fn json_call(r: Result<ureq::Response, ureq::Error>) -> (u16, Value) {
    let resp = match r {
        Ok(resp) => resp,
        Err(ureq::Error::Status(_, resp)) => resp,
        Err(e) => panic!("transport: {e}"),
    };
    let status = resp.status();
    let body = resp.into_string().unwrap();
    (
        status,
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}")),
    )
}

/// Handshake with the device API as the device whose `operational.json` is `op` (key sealed under
/// the pump1 device secret), send nothing, and return the TLS error the server answers with.
fn handshake_refusal(
    t: &Tools,
    url: &str,
    chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    op: &Value,
) -> rustls::Error {
    let cfg = hale_pki::tls::client_config(server_ca(t), chain, pump1_key(op)).unwrap();
    let hostport = url.strip_prefix("https://").unwrap();
    let host = hostport.rsplit_once(':').unwrap().0.to_string();
    let name = rustls::pki_types::ServerName::try_from(host).unwrap();
    let mut conn = rustls::ClientConnection::new(cfg, name).unwrap();
    let mut tcp = TcpStream::connect(hostport).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let rustls_error = |e: std::io::Error| -> rustls::Error {
        e.get_ref()
            .and_then(|i| i.downcast_ref::<rustls::Error>())
            .cloned()
            .unwrap_or_else(|| panic!("not a TLS error: {e}"))
    };
    while conn.is_handshaking() {
        if let Err(e) = conn.complete_io(&mut tcp) {
            return rustls_error(e);
        }
    }
    loop {
        while conn.wants_write() {
            conn.write_tls(&mut tcp).unwrap();
        }
        let n = conn.read_tls(&mut tcp).unwrap();
        assert!(n > 0, "the server closed without an alert");
        if let Err(e) = conn.process_new_packets() {
            return e;
        }
    }
}

/// POST a JSON body to `path` of the staff API (at `staff`) as the person `name`; (HTTP status,
/// JSON body).
fn staff_post(t: &Tools, staff: &str, name: &str, path: &str, body: Value) -> (u16, Value) {
    json_call(
        staff_agent(t, name)
            .post(&format!("{staff}{path}"))
            .set("Content-Type", "application/json")
            .send_string(&body.to_string()),
    )
}

/// GET `path` of the staff API (at `staff`) as operator olga; the JSON body, which must come with
/// status 200.
fn staff_get(t: &Tools, staff: &str, path: &str) -> Value {
    let (status, v) = json_call(staff_agent(t, "olga").get(&format!("{staff}{path}")).call());
    assert_eq!(status, 200, "{v}");
    v
}

/// The server's device record of `id`, read by operator olga over the staff API.
fn device_record(t: &Tools, staff: &str, id: &str) -> Value {
    let v = staff_get(t, staff, "/api/v1/staff/devices?limit=1000");
    v["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == id)
        .cloned()
        .unwrap_or(Value::Null)
}

/// Audit record kinds, read by operator olga over the staff API.
fn audit_kinds(t: &Tools, staff: &str) -> Vec<String> {
    let v = staff_get(t, staff, "/api/v1/staff/audit?limit=1000");
    v["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["kind"].as_str().unwrap().to_string())
        .collect()
}

/// `hale-agent --state WORK/STATE ARGS` with the device secret of that state (and a low scrypt
/// cost for new device keys); the output whatever the exit status.
fn agent_in(t: &Tools, state: &str, args: &[&str]) -> Output {
    let secret = format!("e2e device secret of {state}, a secure element stands here");
    agent_with_secret(t, state, &secret, args)
}

/// As [`agent_in`], with the device secret `secret`.
fn agent_with_secret(t: &Tools, state: &str, secret: &str, args: &[&str]) -> Output {
    let dir = t.p(state);
    let mut a = vec!["--state", dir.as_str()];
    a.extend(args);
    Command::new(t.bin.join("hale-agent"))
        .args(&a)
        .env("HALE_DEVICE_SECRET", secret)
        .env("HALE_AGENT_INSECURE_TEST_SCRYPT_LOG_N", "10")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// One poll of the agent in `state` ([`agent_in`]) against `url`, no jitter; the output whatever
/// the exit status.
fn poll_once(t: &Tools, state: &str, url: &str) -> Output {
    agent_in(
        t,
        state,
        &["run", "--server", url, "--once", "--jitter", "0"],
    )
}

/// `hale-agent enroll` of the agent in `state` ([`agent_in`]) over EST at `enroll` with `token`,
/// trusting only the Server CA; the output whatever the exit status.
fn enroll_with_token(t: &Tools, state: &str, enroll: &str, token: &str) -> Output {
    // a secret: from a file, never the command line
    let file = t.p(&format!("{state}.token"));
    std::fs::write(&file, format!("{token}\n")).unwrap();
    agent_in(
        t,
        state,
        &[
            "enroll",
            "--est",
            enroll,
            "--ca-cert",
            &t.p("ca/server.crt"),
            "--token-file",
            &file,
        ],
    )
}

/// Provision pump `n` (state `pumpN`, id `serial`) with v1 and the trusted root.
fn provision_serial(t: &Tools, n: u32, serial: &str) {
    t.pump(
        n,
        &[
            "provision",
            "--root",
            &t.p("release/repository/1.root.json"),
            "--image",
            &t.p("fw-1.0.0-pump-a.bin"),
            "--version",
            "1.0.0",
            "--security-counter",
            "1",
            "--id",
            serial,
            "--model",
            "pump-a",
            "--revision",
            "r2",
            "--target",
            TARGET,
        ],
    );
}

/// The operational certificate serial an `enroll` printed.
fn enrolled_serial(o: &Output) -> String {
    let log = text(o);
    assert!(o.status.success(), "{log}");
    log.strip_prefix("enrolled: operational certificate ")
        .unwrap_or_else(|| panic!("{log}"))
        .trim()
        .to_string()
}

/// Issue 5: `hale-server enroll-token` → `hale-agent enroll --token`; the token-enrolled pump
/// updates over mTLS. The same token presented again — by a second device claiming the same
/// serial with its own fresh key — is refused with `token_used`: no certificate is written on that
/// device, the server's record keeps the first certificate and the audit log one enrollment.
#[test]
fn token_enrolled_pump_updates_over_mtls_and_a_reused_token_is_refused() {
    let t = Tools::new();
    identity_setup(&t);
    let serial = "SN-TOKEN-0001";
    let data = t.p("server");
    let token = t.ok(
        "hale-server",
        &[
            "enroll-token",
            "--data",
            &data,
            "--serial",
            serial,
            "--model",
            "pump-a",
            "--ttl",
            "600",
        ],
    );
    let token = token.trim().to_string();
    assert!(token.starts_with("hale-et-"), "{token}");

    let (server, [_plain, device, enroll, staff]) = start_tls_server(&t);
    let out = t.release_as_operator(&staff, "1.0.0", "1", "pump-a");
    assert!(out.status.success(), "push v1: {}", text(&out));
    provision_serial(&t, 1, serial);
    // the pump makes its key (and records its serial); the factory certified nothing
    let out = agent_in(&t, "pump1", &["factory-csr", "--serial", serial]);
    assert!(out.status.success(), "{}", text(&out));
    let issued = enrolled_serial(&enroll_with_token(&t, "pump1", &enroll, &token));

    // the token-enrolled certificate works on the device API: v2 installs over mTLS
    let out = t.release_as_operator(&staff, "2.0.0", "2", "pump-a");
    assert!(out.status.success(), "push v2: {}", text(&out));
    let out = poll_once(&t, "pump1", &device);
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("health check passed: 2.0.0 confirmed"),
        "{log}"
    );
    assert!(!log.contains("refused") && !log.contains("failed"), "{log}");
    let record = device_record(&t, &staff, serial);
    assert_eq!(record["status"], "active", "{record}");
    assert_eq!(record["certificate"]["serial"], issued.as_str(), "{record}");
    let operational = std::fs::read(t.work.join("pump1/identity/operational.json")).unwrap();

    // the same token again, from a clone with the same serial and its own key
    let out = agent_in(&t, "clone", &["factory-csr", "--serial", serial]);
    assert!(out.status.success(), "{}", text(&out));
    let out = enroll_with_token(&t, "clone", &enroll, &token);
    let log = text(&out);
    assert_eq!(out.status.code(), Some(1), "{log}");
    let refusal = format!(
        "enrollment refused: {enroll}/.well-known/est/simpleenroll: refused (HTTP 401 token_used): "
    );
    assert!(log.starts_with(&refusal), "{log}");
    assert!(
        !t.work.join("clone/identity/operational.json").exists(),
        "a refused enrollment stored a certificate"
    );
    // and from the pump that redeemed it: refused the same way, its certificate untouched
    let out = enroll_with_token(&t, "pump1", &enroll, &token);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).starts_with(&refusal), "{}", text(&out));
    assert_eq!(
        std::fs::read(t.work.join("pump1/identity/operational.json")).unwrap(),
        operational,
        "a refused enrollment changed the pump's certificate"
    );
    // the server: same record, same certificate, one enrollment
    let after = device_record(&t, &staff, serial);
    assert_eq!(after["status"], "active", "{after}");
    assert_eq!(after["certificate"], record["certificate"], "{after}");
    let kinds = audit_kinds(&t, &staff);
    let count = |k: &str| kinds.iter().filter(|x| *x == k).count();
    assert_eq!(
        (count("enroll-token"), count("enroll")),
        (1, 1),
        "{kinds:?}"
    );
    drop(server);
    t.ok("hale-server", &["audit", "verify", "--data", &data]);
}

/// Issue 5: decommission through the staff API. A technician may not decommission
/// (`role_forbidden`, the pump stays active); operator olga does. The pump's certificate is revoked
/// with it, so the device API refuses it at the handshake (TLS alert `certificate_revoked`): the
/// pump's next poll fails, installs nothing of the v2 on offer, and the pump keeps running its
/// verified v1 (state and flash unchanged); a connection the pump opened before the decommission
/// gets `403 device_decommissioned` from the per-request record check; the pump cannot enroll
/// again (`device_decommissioned`, with a token issued before, and no new token).
#[test]
fn decommissioned_pump_is_refused_on_its_next_poll_and_keeps_its_image() {
    let t = Tools::new();
    identity_setup(&t);
    let serial = "SN-DECOM-0001";
    let data = t.p("server");
    let (server, [_plain, device, enroll, staff]) = start_tls_server(&t);

    // a token from the staff API (technician), then enrollment and a first poll
    let (status, v) = staff_post(
        &t,
        &staff,
        "tom",
        "/api/v1/staff/enroll-tokens",
        serde_json::json!({"serial": serial, "model": "pump-a", "ttl_secs": 600}),
    );
    assert_eq!(status, 200, "{v}");
    let token = v["token"].as_str().unwrap().to_string();
    let out = t.release_as_operator(&staff, "1.0.0", "1", "pump-a");
    assert!(out.status.success(), "push v1: {}", text(&out));
    provision_serial(&t, 1, serial);
    let out = agent_in(&t, "pump1", &["factory-csr", "--serial", serial]);
    assert!(out.status.success(), "{}", text(&out));
    let issued = enrolled_serial(&enroll_with_token(&t, "pump1", &enroll, &token));
    let poll = || poll_once(&t, "pump1", &device);
    let out = poll();
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    assert!(!log.contains("refused") && !log.contains("failed"), "{log}");

    // a connection of the pump's own certificate, opened while it is active
    let op: Value = serde_json::from_slice(
        &std::fs::read(t.work.join("pump1/identity/operational.json")).unwrap(),
    )
    .unwrap();
    let open = mtls_agent(&t, pem_chain(op["chain"].as_str().unwrap()), pump1_key(&op));
    let r = open
        .get(&format!("{device}/timestamp.json"))
        .call()
        .unwrap();
    assert_eq!(r.status(), 200);
    r.into_string().unwrap();

    // v2 is on offer from now on
    let out = t.release_as_operator(&staff, "2.0.0", "2", "pump-a");
    assert!(out.status.success(), "push v2: {}", text(&out));
    let before_status = t.pump(1, &["status"]);
    let before_flash = std::fs::read(t.work.join("pump1/flash.bin")).unwrap();

    // a spare token for the pump, issued while it is active
    let (status, v) = staff_post(
        &t,
        &staff,
        "olga",
        "/api/v1/staff/enroll-tokens",
        serde_json::json!({"serial": serial, "model": "pump-a"}),
    );
    assert_eq!(status, 200, "{v}");
    let spare_token = v["token"].as_str().unwrap().to_string();

    // a technician may not decommission: refused, nothing changed
    let decommission = format!("/api/v1/staff/devices/{serial}/decommission");
    let (status, v) = staff_post(
        &t,
        &staff,
        "tom",
        &decommission,
        serde_json::json!({"reason": "e2e"}),
    );
    assert_eq!(
        (status, v["error"].as_str()),
        (403, Some("role_forbidden")),
        "{v}"
    );
    let record = device_record(&t, &staff, serial);
    assert_eq!(record["status"], "active", "{record}");
    assert_eq!(record["certificate"]["serial"], issued.as_str(), "{record}");

    // the operator does
    let (status, v) = staff_post(
        &t,
        &staff,
        "olga",
        &decommission,
        serde_json::json!({"reason": "returned to the manufacturer"}),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["status"], "decommissioned", "{v}");
    let record = device_record(&t, &staff, serial);
    assert_eq!(record["status"], "decommissioned", "{record}");

    // the connection opened before: the record check answers device_decommissioned
    let (status, v) = json_call(open.get(&format!("{device}/timestamp.json")).call());
    assert_eq!(
        (status, v["error"].as_str()),
        (403, Some("device_decommissioned")),
        "{v}"
    );

    // the pump's certificate is refused at the handshake: a client that sends nothing after its
    // Finished reads the server's alert (with a request already in flight, the server's close can
    // reach the client as a reset first, so the agent's poll shows the alert or a broken pipe)
    assert_eq!(
        handshake_refusal(&t, &device, pem_chain(op["chain"].as_str().unwrap()), &op),
        rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRevoked)
    );
    // the pump's next poll fails at the transport, nothing is installed, it keeps running
    let out = poll();
    let log = text(&out);
    assert!(out.status.success(), "the pump keeps running: {log}");
    let lines: Vec<&str> = log.lines().collect();
    // the alert read (not a broken pipe): the pump, enrolled by token, has no factory
    // certificate to enroll again with, and says so
    let alert = lines
        .get(1)
        .and_then(|l| l.strip_prefix("update check failed: fetching 2.root.json: "))
        .filter(|l| l.ends_with("received fatal alert: CertificateRevoked"));
    match alert {
        Some(refusal) => assert_eq!(
            lines.get(3).copied(),
            Some(format!(
                "the server refused the operational certificate, and enrolling again failed: \
                 {refusal}; there is no factory certificate to enroll again with (it needs an \
                 enrollment token from an operator; a decommissioned pump gets none)"
            ))
            .as_deref(),
            "{log}"
        ),
        None => assert_eq!(lines.len(), 3, "{log}"),
    }
    assert_eq!(lines.len(), 3 + usize::from(alert.is_some()), "{log}");
    assert_eq!(lines[0], "booted slot a", "{log}");
    assert!(
        lines[1].starts_with(&format!(
            "update check failed: fetching 2.root.json: {device}/2.root.json: "
        )),
        "{log}"
    );
    // each line names its URL once
    let report = format!("{device}/api/v1/devices/{serial}/report");
    assert!(
        lines[2].starts_with(&format!("report to {report} failed: ")),
        "{log}"
    );
    assert!(
        lines[1..3].iter().all(|l| l.matches(&*device).count() == 1),
        "{log}"
    );
    // the same state, the last check aside (when it ran, and why it failed)
    let without_check = |s: &str| {
        let mut v: Value = serde_json::from_str(s).unwrap();
        let check = v["last_check"]["outcome"].take();
        v["last_check"]["at"].take();
        (v, check)
    };
    let (after, check) = without_check(&t.pump(1, &["status"]));
    assert_eq!(
        after,
        without_check(&before_status).0,
        "the pump's state changed"
    );
    assert!(
        check
            .as_str()
            .unwrap()
            .starts_with("update check failed: fetching 2.root.json: "),
        "{check}"
    );
    assert_eq!(
        std::fs::read(t.work.join("pump1/flash.bin")).unwrap(),
        before_flash,
        "the pump's flash changed"
    );
    let (_, _, running) = t.status(1);
    assert_eq!(running, "1.0.0");

    // and it cannot come back: a token issued before the decommission is refused at enrollment
    // (nothing stored), and no new token is issued for it
    let operational = std::fs::read(t.work.join("pump1/identity/operational.json")).unwrap();
    let out = enroll_with_token(&t, "pump1", &enroll, &spare_token);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).starts_with(&format!(
            "enrollment refused: {enroll}/.well-known/est/simpleenroll: refused (HTTP 403 device_decommissioned): "
        )),
        "{}",
        text(&out)
    );
    assert_eq!(
        std::fs::read(t.work.join("pump1/identity/operational.json")).unwrap(),
        operational
    );
    let (status, v) = staff_post(
        &t,
        &staff,
        "olga",
        "/api/v1/staff/enroll-tokens",
        serde_json::json!({"serial": serial, "model": "pump-a"}),
    );
    assert_eq!(
        (status, v["error"].as_str()),
        (403, Some("device_decommissioned")),
        "{v}"
    );
    let record = device_record(&t, &staff, serial);
    assert_eq!(record["status"], "decommissioned", "{record}");
    assert!(record["certificate"].is_null(), "{record}");
    let kinds = audit_kinds(&t, &staff);
    assert_eq!(
        kinds.iter().filter(|k| *k == "device-decommission").count(),
        1,
        "{kinds:?}"
    );
    drop(server);
    t.ok("hale-server", &["audit", "verify", "--data", &data]);
}

// `hale-sign push` and the root chain: every root the server lacks, a root the one before it did
// not sign, a server ahead or with another root (tests/tests/e2e/push_roots.rs)
#[path = "e2e/push_roots.rs"]
mod push_roots;
