//! Helpers for the CLI tests: run the real `hale-sign` binary in a temporary directory.
//!
//! Key files are written with the test-only low scrypt cost (`HALE_SIGN_INSECURE_TEST_SCRYPT_LOG_N`,
//! documented in `key_source.rs`), so a key operation takes milliseconds instead of ~0.1 s.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const PW_ENV: &str = "HALE_TEST_PASSPHRASE";
pub const PW: &str = "correct horse battery staple";

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(o: Output) -> Self {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

pub struct Env {
    pub tmp: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Self {
        Env {
            tmp: tempfile::tempdir().unwrap(),
        }
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.tmp.path().join(p)
    }

    pub fn p(&self, p: &str) -> String {
        self.path(p).display().to_string()
    }

    /// Run hale-sign with `args` (string slices, or owned strings such as absolute paths) in the
    /// temporary directory.
    pub fn run<S: AsRef<OsStr> + Debug>(&self, args: &[S]) -> Run {
        let o = Command::new(env!("CARGO_BIN_EXE_hale-sign"))
            .args(args)
            .current_dir(self.tmp.path())
            .env(PW_ENV, PW)
            .env("HALE_SIGN_INSECURE_TEST_SCRYPT_LOG_N", "10")
            .output()
            .unwrap();
        Run::from(o)
    }

    /// `publish repo` killed at `point` (`HALE_SIGN_TEST_CRASH_AFTER`): it must not succeed.
    #[allow(dead_code)] // not every test binary that includes this module crashes a publish
    pub fn crash_publish(&self, point: &str) {
        let o = Command::new(env!("CARGO_BIN_EXE_hale-sign"))
            .args(publish_args("repo"))
            .current_dir(self.tmp.path())
            .env(PW_ENV, PW)
            .env("HALE_SIGN_INSECURE_TEST_SCRYPT_LOG_N", "10")
            .env("HALE_SIGN_TEST_CRASH_AFTER", point)
            .output()
            .unwrap();
        assert!(!o.status.success(), "{point}: the publish was to die");
    }

    /// Run and require exit 0.
    pub fn ok<S: AsRef<OsStr> + Debug>(&self, args: &[S]) -> Run {
        let r = self.run(args);
        assert_eq!(
            r.code, 0,
            "hale-sign {args:?} failed:\nstdout:\n{}\nstderr:\n{}",
            r.stdout, r.stderr
        );
        r
    }

    /// Generate NAME.key/.pub; returns the keyid.
    pub fn key(&self, name: &str, kind: &str) -> String {
        self.ok(&[
            "key",
            "generate",
            "--type",
            kind,
            "--out",
            name,
            "--passphrase-env",
            PW_ENV,
        ]);
        self.keyid(name)
    }

    pub fn keyid(&self, name: &str) -> String {
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(self.path(&format!("{name}.pub"))).unwrap())
                .unwrap();
        v["keyid"].as_str().unwrap().to_string()
    }

    /// Sign FILE-or-DIR with KEY (passphrase from the environment).
    pub fn sign(&self, target: &str, key: &str) -> Run {
        self.ok(&sign_args(target, &format!("{key}.key")))
    }

    /// Assert that file `p` holds `before`, byte for byte (a refusal wrote nothing).
    pub fn unchanged(&self, p: &str, before: &[u8], what: &str) {
        assert_eq!(
            std::fs::read(self.path(p)).unwrap(),
            before,
            "{p} byte for byte ({what})"
        );
    }

    pub fn json(&self, p: &str) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(self.path(p)).unwrap()).unwrap()
    }

    /// Standard keys: root-a (ed25519), root-b (ecdsa), root-c (ed25519), targets, snapshot, timestamp.
    pub fn standard_keys(&self) {
        self.key("root-a", "ed25519");
        self.key("root-b", "ecdsa-p256");
        self.key("root-c", "ed25519");
        self.key("targets", "ed25519");
        self.key("snapshot", "ed25519");
        self.key("timestamp", "ed25519");
    }

    /// `init repo` with root 2-of-3.
    pub fn init(&self) {
        self.ok(&[
            "init",
            "repo",
            "--root-key",
            "root-a.pub",
            "--root-key",
            "root-b.pub",
            "--root-key",
            "root-c.pub",
            "--root-threshold",
            "2",
            "--targets-key",
            "targets.pub",
            "--snapshot-key",
            "snapshot.pub",
            "--timestamp-key",
            "timestamp.pub",
        ]);
    }

    /// Publish `repo` and require exit 0.
    pub fn publish(&self) -> Run {
        self.ok(&publish_args("repo"))
    }

    /// A published, fully signed empty repository.
    pub fn published_repo(&self) {
        self.standard_keys();
        self.init();
        self.sign("repo/staged/root.json", "root-a");
        self.sign("repo/staged/root.json", "root-b");
        self.sign("repo/staged/targets.json", "targets");
        self.publish();
    }

    /// [`published_repo`](Self::published_repo), then a new targets v2 listing fw.bin, staged
    /// and signed: ready to publish.
    pub fn signed_release(&self) {
        self.published_repo();
        self.write("fw.bin", b"firmware");
        self.ok(&["target", "add", "repo", "--file", "fw.bin"]);
        self.sign("repo/staged/targets.json", "targets");
    }

    pub fn verify(&self) -> Run {
        self.run(&[
            "verify",
            "repo/repository",
            "--root",
            "repo/repository/1.root.json",
        ])
    }

    /// The permission bits of `p`.
    pub fn mode(&self, p: &str) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(self.path(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    }

    /// Hold `repo`'s working-directory lock, as a command that changes it does (a signer at a
    /// passphrase prompt, a publish), until the file returned is dropped.
    pub fn hold_lock(&self) -> std::fs::File {
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.path("repo/.hale-sign.lock"))
            .unwrap();
        fs2::FileExt::try_lock_exclusive(&lock).unwrap();
        lock
    }

    pub fn write(&self, p: &str, bytes: &[u8]) {
        let path = self.path(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
}

/// `sign TARGET --key KEY_FILE` with the passphrase from the environment, for `Env::run` (a
/// refusal) or `Env::ok`; on success the signature is added to the staged file(s) in place.
pub fn sign_args<'a>(target: &'a str, key_file: &'a str) -> [&'a str; 6] {
    [
        "sign",
        target,
        "--key",
        key_file,
        "--passphrase-env",
        PW_ENV,
    ]
}

/// `publish REPO` with snapshot.key and timestamp.key (passphrase from the environment), for
/// `Env::run` (a refusal) or `Env::ok`; on success the staged files move into REPO/repository.
pub fn publish_args(repo: &str) -> [&str; 8] {
    [
        "publish",
        repo,
        "--snapshot-key",
        "snapshot.key",
        "--timestamp-key",
        "timestamp.key",
        "--passphrase-env",
        PW_ENV,
    ]
}

/// Every file under `dir` with its bytes (to assert that nothing changed).
pub fn snapshot_tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    fn walk(d: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for e in std::fs::read_dir(d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                walk(&e.path(), out);
            } else {
                out.insert(e.path(), std::fs::read(e.path()).unwrap());
            }
        }
    }
    walk(dir, &mut out);
    out
}
