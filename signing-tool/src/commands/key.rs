//! `hale-sign key generate` and `hale-sign key demo`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use hale_repo::{Passphrase, SigningKey};

use crate::demo::{self, DEMO_KEYS, DEMO_PASSPHRASE};
use crate::durable;
use crate::key_source::{self, PublicKey};
use crate::PassArgs;

#[derive(Subcommand, Debug)]
pub enum KeyCmd {
    /// Generate a key: NAME.key (encrypted) and NAME.pub (public TUF key with its keyid).
    Generate(GenerateArgs),
    /// Write (or --check) the demo keys of keys-example/. NEVER use them in production.
    Demo(DemoArgs),
}

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// ed25519 or ecdsa-p256.
    #[arg(long = "type", value_name = "TYPE", default_value = "ed25519")]
    kind: String,
    /// Output path without extension: writes OUT.key and OUT.pub.
    #[arg(long, value_name = "NAME")]
    out: PathBuf,
    /// Overwrite existing files.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    pass: PassArgs,
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Directory to write the demo keys to (e.g. keys-example/).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Do not write: check that DIR holds exactly the demo keys (public files byte for byte,
    /// key files decrypting to the same keys). For CI.
    #[arg(long)]
    check: bool,
    /// Overwrite files that exist in DIR (without it, any existing file is refused: the demo
    /// names `snapshot`, `timestamp`, … are also the names real keys get).
    #[arg(long, conflicts_with = "check")]
    force: bool,
}

pub fn run(cmd: KeyCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        KeyCmd::Generate(a) => generate(a),
        KeyCmd::Demo(a) if a.check => demo_check(&a.out),
        KeyCmd::Demo(a) => demo_write(&a.out, a.force),
    }
}

fn with_ext(base: &Path, ext: &str) -> PathBuf {
    let mut s = base.as_os_str().to_owned();
    s.push(".");
    s.push(ext);
    PathBuf::from(s)
}

fn generate(a: GenerateArgs) -> anyhow::Result<ExitCode> {
    let kind = key_source::parse_kind(&a.kind)?;
    let (key_path, pub_path) = (with_ext(&a.out, "key"), with_ext(&a.out, "pub"));
    for p in [&key_path, &pub_path] {
        durable::refuse_existing(p, a.force)?;
    }
    let source = a.pass.source(&key_path.display().to_string());
    let pass = key_source::read_new_passphrase(&source, &key_path.display().to_string())?;
    let key = SigningKey::generate(kind)?;
    let file = key_source::encrypt(&key, &pass)
        .with_context(|| format!("encrypting {}", key_path.display()))?;
    let mut batch = durable::Batch::new();
    batch.add_secret(&key_path, &file)?;
    batch.add(&pub_path, &PublicKey::pub_file(&key)?)?;
    batch.commit()?;
    println!("{} {} {}", kind.as_str(), key.keyid(), pub_path.display());
    Ok(ExitCode::SUCCESS)
}

const PASSPHRASE_FILE: &str = "PASSPHRASE";

fn demo_write(dir: &Path, force: bool) -> anyhow::Result<ExitCode> {
    let mut names: Vec<String> = DEMO_KEYS
        .iter()
        .flat_map(|(name, _)| [format!("{name}.key"), format!("{name}.pub")])
        .collect();
    names.push(PASSPHRASE_FILE.into());
    let existing: Vec<&str> = names
        .iter()
        .filter(|n| dir.join(n).exists())
        .map(String::as_str)
        .collect();
    if !existing.is_empty() && !force {
        bail!(
            "{}: {} exist(s); refusing to overwrite with demo keys (use --force to rewrite a demo key directory)",
            dir.display(),
            existing.join(", ")
        );
    }
    let mut batch = durable::Batch::new();
    for (name, kind) in DEMO_KEYS {
        let key = demo::key(name, kind)?;
        let file = key_source::encrypt(&key, DEMO_PASSPHRASE.as_bytes())?;
        batch.add_secret(&dir.join(format!("{name}.key")), &file)?;
        batch.add(
            &dir.join(format!("{name}.pub")),
            &PublicKey::pub_file(&key)?,
        )?;
        println!("{name:<11} {:<10} {}", kind.as_str(), key.keyid());
    }
    batch.add_secret(
        &dir.join(PASSPHRASE_FILE),
        format!("{DEMO_PASSPHRASE}\n").as_bytes(),
    )?;
    batch
        .commit()
        .with_context(|| format!("writing demo keys to {}", dir.display()))?;
    eprintln!(
        "wrote {} demo keys to {} — DEMO ONLY: anyone can regenerate them; never use in production",
        DEMO_KEYS.len(),
        dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn demo_check(dir: &Path) -> anyhow::Result<ExitCode> {
    let mut problems = Vec::new();
    let pass_path = dir.join(PASSPHRASE_FILE);
    // (the error names the file already)
    let pass = Passphrase::File(pass_path.clone()).read()?;
    if *pass != *DEMO_PASSPHRASE.as_bytes() {
        problems.push(format!("{}: not the demo passphrase", pass_path.display()));
    }
    for (name, kind) in DEMO_KEYS {
        let key = demo::key(name, kind)?;
        let pub_path = dir.join(format!("{name}.pub"));
        match std::fs::read(&pub_path) {
            Ok(b) if b == PublicKey::pub_file(&key)? => {}
            Ok(_) => problems.push(format!(
                "{}: differs from the regenerated public key",
                pub_path.display()
            )),
            Err(e) => problems.push(format!("{}: {e}", pub_path.display())),
        }
        let key_path = dir.join(format!("{name}.key"));
        match key_source::load_private(&key_path, &Passphrase::File(pass_path.clone())) {
            Ok(k) if k.keyid() == key.keyid() => {}
            Ok(k) => problems.push(format!(
                "{}: holds key {}, expected {}",
                key_path.display(),
                k.keyid(),
                key.keyid()
            )),
            Err(e) => problems.push(format!("{e}")),
        }
    }
    if problems.is_empty() {
        println!(
            "{}: all {} demo keys match their seeds",
            dir.display(),
            DEMO_KEYS.len()
        );
        Ok(ExitCode::SUCCESS)
    } else {
        for p in &problems {
            eprintln!("{p}");
        }
        bail!(
            "{}: {} demo key file(s) do not match (regenerate with `hale-sign key demo --out {}`)",
            dir.display(),
            problems.len(),
            dir.display()
        )
    }
}
