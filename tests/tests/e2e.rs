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
use std::path::PathBuf;
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
    let target_dir = profile_dir.parent().unwrap();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "-p",
        "hale-sign",
        "-p",
        "hale-server",
        "-p",
        "device-agent",
        "--features",
        "device-agent/std",
        "--bins",
    ])
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
    assert!(st.success(), "building hale-sign, hale-server, hale-agent");
    profile_dir
}

struct Tools {
    bin: PathBuf,
    work: PathBuf,
}

impl Tools {
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
        let out = self.run(tool, args);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{tool} {args:?}: {}\n{text}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        text
    }

    fn p(&self, name: &str) -> String {
        self.work.join(name).to_str().unwrap().to_string()
    }

    fn sign(&self, args: &[&str]) -> String {
        let mut a = args.to_vec();
        a.extend(["--passphrase-env", PASS_VAR]);
        self.ok("hale-sign", &a)
    }

    /// target add + sign + push of one firmware image under TARGET.
    fn release(&self, url: &str, version: &str, counter: &str, model: &str) -> Output {
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
        self.push(url)
    }

    fn push(&self, url: &str) -> Output {
        let token = std::fs::read_to_string(self.work.join("token")).unwrap();
        self.push_with(url, token.trim())
    }

    fn push_with(&self, url: &str, token: &str) -> Output {
        Command::new(self.bin.join("hale-sign"))
            .args([
                "push",
                &self.p("release"),
                "--server",
                url,
                "--token-env",
                TOKEN_VAR,
                "--timeout",
                "20",
            ])
            .env(TOKEN_VAR, token)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn pump(&self, n: u32, args: &[&str]) -> String {
        let state = self.p(&format!("pump{n}"));
        let mut a = vec!["--state", state.as_str()];
        a.extend(args);
        self.ok("hale-agent", &a)
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
        (
            v["last_result"]["result"].as_str().unwrap().to_string(),
            v["last_result"]["reason"].as_str().unwrap().to_string(),
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

fn start_server(t: &Tools) -> Server {
    let mut child = Command::new(t.bin.join("hale-server"))
        .args(["serve", "--data", &t.p("server"), "--listen", "127.0.0.1:0"])
        .env("HALE_KEY_PASSPHRASE", PASS)
        .env("HALE_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(url) = line.strip_prefix("listening on ") {
                let _ = tx.send(url.to_string());
            }
        }
    });
    let url = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("hale-server did not print its address within 20 s");
    Server { child, url }
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

/// The server's inventory record of one device: (result, reason, slots as "name=version(state)").
fn inventory(url: &str, id: &str) -> (String, String, Vec<String>) {
    let inv: Value = serde_json::from_str(&http_get(&format!("{url}/api/v1/devices"))).unwrap();
    let d = inv["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["device"] == id)
        .unwrap_or_else(|| panic!("{id} not in the inventory: {inv}"));
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

fn provision(t: &Tools, n: u32) {
    let root = t.p("release/repository/1.root.json");
    let image = t.p("fw-1.0.0-pump-a.bin");
    let id = format!("pump-000{n}");
    t.pump(
        n,
        &[
            "provision",
            "--root",
            &root,
            "--image",
            &image,
            "--version",
            "1.0.0",
            "--security-counter",
            "1",
            "--id",
            &id,
            "--model",
            "pump-a",
            "--revision",
            "r2",
            "--target",
            TARGET,
        ],
    );
}

#[test]
fn pumps_update_defer_revert_and_refuse_through_hale_sign_and_hale_server() {
    let started = Instant::now();
    let bin = binaries();
    let tmp = tempfile::tempdir().unwrap();
    let t = Tools {
        bin,
        work: tmp.path().to_path_buf(),
    };
    let built = started.elapsed();

    // keys: 3 root (2-of-3), targets, and the online snapshot/timestamp keys the server holds
    std::fs::create_dir_all(t.work.join("keys")).unwrap();
    for (name, kind) in [
        ("root-1", "ed25519"),
        ("root-2", "ecdsa-p256"),
        ("root-3", "ed25519"),
        ("targets", "ed25519"),
        ("snapshot", "ed25519"),
        ("timestamp", "ed25519"),
    ] {
        t.sign(&[
            "key",
            "generate",
            "--type",
            kind,
            "--out",
            &t.p(&format!("keys/{name}")),
        ]);
    }
    let repo = t.p("release");
    let k = |n: &str| t.p(&format!("keys/{n}"));
    t.ok(
        "hale-sign",
        &[
            "init",
            &repo,
            "--root-key",
            &k("root-1.pub"),
            "--root-key",
            &k("root-2.pub"),
            "--root-key",
            &k("root-3.pub"),
            "--root-threshold",
            "2",
            "--targets-key",
            &k("targets.pub"),
            "--snapshot-key",
            &k("snapshot.pub"),
            "--timestamp-key",
            &k("timestamp.pub"),
        ],
    );
    let staged_root = format!("{repo}/staged/root.json");
    t.sign(&["sign", &staged_root, "--key", &k("root-1.key")]);

    // the server: init with hale-sign's root and the online keys; an operator token
    let data = t.p("server");
    let init_args = [
        "init",
        "--data",
        data.as_str(),
        "--root",
        staged_root.as_str(),
        "--timestamp-key",
        &k("timestamp.key"),
        "--snapshot-key",
        &k("snapshot.key"),
    ];
    let one_of_three = t.run("hale-server", &init_args);
    assert!(
        !one_of_three.status.success(),
        "a root with 1 of 2 signatures must not initialise a server"
    );
    t.sign(&["sign", &staged_root, "--key", &k("root-2.key")]);
    t.ok("hale-server", &init_args);
    let token = t.ok(
        "hale-server",
        &["token", "add", "--data", &data, "--name", "e2e"],
    );
    std::fs::write(t.work.join("token"), token.trim()).unwrap();
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
    std::fs::write(&fw, b"never signed").unwrap();
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
    let out = t.push(&url);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("threshold(s) not met"),
        "{}",
        text(&out)
    );
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
    assert_eq!((result.as_str(), running.as_str()), ("rejected", "2.0.0"));
    assert!(reason.contains("model"), "{reason}");
    let (result, server_reason, _) = inventory(&url, "pump-0002");
    assert_eq!(
        (result.as_str(), server_reason.as_str()),
        ("rejected", reason.as_str())
    );

    // an older image (1.5.0 < running 2.0.0): refused too
    let out = t.release(&url, "1.5.0", "2", "pump-a");
    assert!(out.status.success(), "push 1.5.0: {}", text(&out));
    t.poll(2, &url);
    let (result, reason, running) = t.status(2);
    assert_eq!(
        (result.as_str(), running.as_str()),
        ("rejected", "2.0.0"),
        "{reason}"
    );
    assert!(
        reason.contains("1.5.0") || reason.contains("older"),
        "{reason}"
    );
    let (result, server_reason, slots) = inventory(&url, "pump-0002");
    assert_eq!(
        (result.as_str(), server_reason.as_str()),
        ("rejected", reason.as_str())
    );
    assert_eq!(slots, ["a=1.0.0(inactive)", "b=2.0.0(active)"]);

    // nothing newer than what the server serves: refused before anything is sent
    let out = t.push(&url);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("nothing to push"), "{}", text(&out));
    // the server's refusal is shown verbatim (here: an unknown operator token)
    std::fs::write(&fw, b"v6 notes").unwrap();
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
    t.sign(&[
        "sign",
        &format!("{repo}/staged/targets.json"),
        "--key",
        &k("targets.key"),
    ]);
    let out = t.push_with(&url, "hale_not-a-token");
    let msg = text(&out);
    assert_eq!(out.status.code(), Some(2), "{msg}");
    assert!(msg.contains("the server refused (HTTP 401)"), "{msg}");
    assert!(
        msg.contains("\"error\""),
        "the server's JSON error body verbatim: {msg}"
    );
    assert!(
        std::fs::metadata(t.work.join("release/staged/targets.json")).is_ok(),
        "a refused push leaves the staged release in place"
    );

    drop(server);
    let total = started.elapsed();
    eprintln!("e2e: build check {built:?}, scenario {:?}", total - built);
    assert!(
        total - built < Duration::from_secs(60),
        "scenario took {:?}",
        total - built
    );
}
