//! `hale-sign factory issue`: what a factory station does for each device it builds.
//!
//! The device made its own key and a CSR (`hale-agent factory-csr`); the station issues a factory
//! certificate from our profile (CN = hardware serial, `urn:hale:factory:<serial>`, OU = model,
//! `CA:FALSE`, clientAuth) — from the CSR only the public key is taken after its self-signature
//! verifies, so a CSR asking for `CA:TRUE` or extra names gets none of it — and records
//! (serial, model, sha256 of the key) in the signed manufacturing manifest that hale-server
//! imports (`hale-server manifest import`). Enrollment with a factory certificate whose serial or
//! key is not in an imported manifest is refused.
//!
//! An existing manifest is verified with the Manufacturing CA before an entry is added (a
//! tampered manifest is refused, not re-signed), a serial or key already listed is refused, and
//! the manifest is re-signed as a whole.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use hale_pki::{CaRole, Manifest, ManifestEntry};

use super::ca::{open_ca, CaDirArgs};
use crate::durable;

#[derive(Subcommand, Debug)]
pub enum FactoryCmd {
    /// Issue a factory certificate from a device CSR and add the device to the manifest.
    Issue(IssueArgs),
}

#[derive(Args, Debug)]
pub struct IssueArgs {
    #[command(flatten)]
    ca: CaDirArgs,
    /// The device's CSR (PEM), from `hale-agent factory-csr`.
    #[arg(long, value_name = "FILE")]
    csr: PathBuf,
    /// The hardware serial (the certificate's CN; the CSR's subject is ignored).
    #[arg(long, value_name = "S")]
    serial: String,
    /// The device model.
    #[arg(long, value_name = "M")]
    model: String,
    /// Validity of the factory certificate in days (the device's lifetime); it ends with the
    /// Manufacturing CA at the latest, and says so.
    #[arg(long, default_value_t = 7300)]
    days: u64,
    /// Where to write the factory certificate (PEM).
    #[arg(long, value_name = "CERT")]
    out: PathBuf,
    /// The manufacturing manifest to add the device to (created when missing).
    #[arg(long, value_name = "FILE")]
    manifest: Option<PathBuf>,
    /// Batch name of a new manifest.
    #[arg(long, default_value = "batch-1")]
    batch: String,
}

pub fn run(cmd: FactoryCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        FactoryCmd::Issue(a) => issue(a),
    }
}

fn issue(a: IssueArgs) -> anyhow::Result<ExitCode> {
    if a.out.exists() {
        bail!("{}: exists; refusing to overwrite", a.out.display());
    }
    let csr = std::fs::read_to_string(&a.csr).with_context(|| a.csr.display().to_string())?;
    let ca = open_ca(&a.ca, CaRole::Manufacturing)?;
    let now = SystemTime::now();

    // the existing manifest, verified before anything is added to it
    let (batch, mut entries) = match &a.manifest {
        Some(p) if p.exists() => {
            let bytes = std::fs::read(p).with_context(|| p.display().to_string())?;
            let m = Manifest::verify(&bytes, ca.certificate_der())
                .with_context(|| p.display().to_string())?;
            (m.batch().to_string(), m.into_entries())
        }
        _ => (a.batch.clone(), Vec::new()),
    };
    if let Some(p) = &a.manifest {
        if entries.iter().any(|e| e.serial == a.serial) {
            bail!("{}: serial {:?} is already listed", p.display(), a.serial);
        }
    }

    let validity = a
        .days
        .checked_mul(86_400)
        .filter(|s| *s > 0)
        .map(Duration::from_secs)
        .with_context(|| format!("--days {}: invalid", a.days))?;
    let cert = ca
        .issue_factory_certificate(&csr, &a.serial, &a.model, validity, now)
        .map_err(|e| match e {
            // --serial or --model: the error names the field and the value
            hale_pki::PkiError::InvalidName { .. } => anyhow::Error::from(e),
            e => anyhow::Error::from(e).context(a.csr.display().to_string()),
        })?;
    let key_hash = hex::encode(cert.spki_sha256);

    let mut batch_w = durable::Batch::new();
    batch_w.add(&a.out, cert.pem.as_bytes())?;
    if let Some(p) = &a.manifest {
        if let Some(e) = entries.iter().find(|e| e.spki_sha256 == key_hash) {
            bail!(
                "{}: this key is already listed for serial {:?}",
                p.display(),
                e.serial
            );
        }
        entries.push(ManifestEntry {
            serial: a.serial.clone(),
            model: a.model.clone(),
            spki_sha256: key_hash.clone(),
        });
        let signed = Manifest::sign(&ca, &batch, &entries, now)?;
        batch_w.add(p, &signed)?;
    }
    batch_w.commit()?;
    println!(
        "factory certificate {} for {} ({}) serial {} key sha256 {key_hash} valid until {}",
        a.out.display(),
        a.serial,
        a.model,
        cert.serial_hex,
        hale_pki::utc(cert.not_after)
    );
    // no certificate outlives its issuer: a factory certificate asked to last longer than the
    // Manufacturing CA ends with it, and the station is told (the default, 20 years, is the
    // device's lifetime; the CA's is 10 unless `ca init --days` said more)
    if cert.not_after >= ca.not_after()? {
        let days = cert
            .not_after
            .duration_since(now)
            .unwrap_or_default()
            .as_secs()
            / 86_400;
        eprintln!(
            "note: --days {}: the certificate ends with the Manufacturing CA, {days} days from now; \
             after that the device enrolls again only with an enrollment token (renewal of its \
             operational certificate does not need this one)",
            a.days
        );
    }
    if let Some(p) = &a.manifest {
        println!("manifest {}: {} device(s)", p.display(), entries.len());
    }
    Ok(ExitCode::SUCCESS)
}
