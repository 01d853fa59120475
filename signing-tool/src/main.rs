//! # hale-sign: the offline signing tool for Hale release engineers
//!
//! A repository working directory holds `hale-repo.json` (profile, expiry policy, hashed bins),
//! `staged/` (metadata being signed, passed from signer to signer) and `repository/` (the
//! published, servable TUF repository). Every trust decision — who signed, whether a threshold is
//! met, whether a published repository is acceptable to a device — is made by `hale-core`, the
//! same code the devices and the server run. See `hale-sign --help` and the README's key ceremony.
//!
//! Threats handled here: a signature from a key the role does not list is refused before it is
//! written; nothing below threshold is published; a publish that a client would reject is never
//! written, and one interrupted is finished, never taken back; passphrases never come from the command line; demo keys are announced loudly.

mod changes;
mod client;
mod commands;
mod config;
mod demo;
mod durable;
mod error;
mod journal;
mod key_source;
mod par;
mod staff;
mod state;
mod timings;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use hale_repo::Passphrase;

#[derive(Parser, Debug)]
#[command(
    name = "hale-sign",
    version,
    about = "Offline signing tool for Hale TUF repositories",
    after_help = "Exit codes: 0 success; 1 `status`: a threshold is not met; 2 error.\n\
                  Passphrases: --passphrase-env VAR, --passphrase-file PATH, or a prompt; never the secret itself."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// Where a private key's passphrase comes from. Never the command line itself.
#[derive(Args, Debug, Clone, Default)]
pub struct PassArgs {
    /// Read the passphrase from this environment variable.
    #[arg(
        long,
        value_name = "VAR",
        conflicts_with = "passphrase_file",
        global = false
    )]
    pub passphrase_env: Option<String>,
    /// Read the passphrase from the first line of this file.
    #[arg(long, value_name = "PATH")]
    pub passphrase_file: Option<PathBuf>,
}

impl PassArgs {
    /// The source; a terminal prompt naming `what` when neither option is given.
    pub fn source(&self, what: &str) -> Passphrase {
        if let Some(v) = &self.passphrase_env {
            Passphrase::Env(v.clone())
        } else if let Some(p) = &self.passphrase_file {
            Passphrase::File(p.clone())
        } else {
            Passphrase::Prompt(format!("passphrase for {what}: "))
        }
    }
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Generate keys, or the demo keys of keys-example/.
    Key {
        #[command(subcommand)]
        cmd: commands::key::KeyCmd,
    },
    /// Start a repository: root k-of-n, targets, snapshot and timestamp keys, expiry policy.
    Init(commands::init::InitArgs),
    /// Change the repository's settings (hale-repo.json): the key types the fleet's devices verify.
    Config(commands::config::ConfigArgs),
    /// Add your signature to staged metadata (a file, or every staged file your key may sign).
    Sign(commands::sign::SignArgs),
    /// Who signed staged metadata and who still has to (exit 1 while a threshold is unmet).
    Status(commands::status::StatusArgs),
    /// Add firmware targets (with policy fields and an SBOM) to a targets role.
    Target {
        #[command(subcommand)]
        cmd: commands::target::TargetCmd,
    },
    /// Delegate target paths from a targets role to a new role.
    Delegate(commands::delegate::DelegateArgs),
    /// Delegate a targets role's catalog to TAP 15 succinct hashed bins.
    Bins(commands::bins::BinsArgs),
    /// Change the keys or threshold of a role (a new version of its delegator).
    Rotate(commands::rotate::RotateArgs),
    /// Stage the next version of root, targets or delegated roles with a later expiry.
    Renew(commands::renew::RenewArgs),
    /// Publish fully signed staged metadata into repository/ (and sign snapshot/timestamp).
    Publish(commands::publish::PublishArgs),
    /// Send a signed release (root, targets, delegated roles and their contents) to hale-server.
    Push(commands::push::PushArgs),
    /// Run the full client workflow over a repository directory with hale-core.
    Verify(commands::verify::VerifyArgs),
    /// Device-identity PKI: CA hierarchy, server and staff certificates, CRLs.
    Ca {
        #[command(subcommand)]
        cmd: commands::ca::CaCmd,
    },
    /// Factory station: factory certificates from device CSRs, the manufacturing manifest.
    Factory {
        #[command(subcommand)]
        cmd: commands::factory::FactoryCmd,
    },
    /// Rollback authorizations signed by the `rollback` role: authorize, sign, status.
    Rollback {
        #[command(subcommand)]
        cmd: commands::rollback::RollbackCmd,
    },
    /// Write an offline bundle: the metadata a device needs, the image, an authorization.
    Bundle(commands::bundle::BundleArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Key { cmd } => commands::key::run(cmd),
        Cmd::Init(a) => commands::init::run(a),
        Cmd::Config(a) => commands::config::run(a),
        Cmd::Sign(a) => commands::sign::run(a),
        Cmd::Status(a) => commands::status::run(a),
        Cmd::Target { cmd } => commands::target::run(cmd),
        Cmd::Delegate(a) => commands::delegate::run(a),
        Cmd::Bins(a) => commands::bins::run(a),
        Cmd::Rotate(a) => commands::rotate::run(a),
        Cmd::Renew(a) => commands::renew::run(a),
        Cmd::Publish(a) => commands::publish::run(a),
        Cmd::Push(a) => commands::push::run(a),
        Cmd::Verify(a) => commands::verify::run(a),
        Cmd::Ca { cmd } => commands::ca::run(cmd),
        Cmd::Factory { cmd } => commands::factory::run(cmd),
        Cmd::Rollback { cmd } => commands::rollback::run(cmd),
        Cmd::Bundle(a) => commands::bundle::run(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", render(&e));
            ExitCode::from(2)
        }
    }
}

/// The error and its causes, each once: a cause whose text its parent already shows is skipped.
pub(crate) fn render(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let msg = cause.to_string();
        if out.contains(&msg) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&msg);
    }
    out
}
