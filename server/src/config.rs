//! Configuration: embedded defaults, an optional JSON file, environment variables, flags (each
//! overriding the one before). There is no default password or token: keys need a passphrase from
//! a file or the environment, and publishing needs a token made with `hale-server token add`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// File whose first line is the passphrase of the online key files.
    pub passphrase_file: Option<PathBuf>,
    /// Environment variable holding that passphrase (used when no file is given).
    pub passphrase_env: String,
    /// How long a signed timestamp is valid, and how long before expiry it is re-signed.
    pub timestamp_lifetime_secs: i64,
    pub timestamp_resign_before_secs: i64,
    /// The same for the snapshot.
    pub snapshot_lifetime_secs: i64,
    pub snapshot_resign_before_secs: i64,
    /// How often the re-sign schedule is checked.
    pub resign_check_secs: u64,
    /// Largest target upload.
    pub max_target_bytes: u64,
    /// Largest publish request (all metadata of one release).
    pub max_publish_bytes: u64,
    /// Largest device report.
    pub max_report_bytes: u64,
    /// Reports of one device that make an audit record (say something new), at most this many
    /// an hour; past it such a report is refused (`429 too_many_reports`, `Retry-After`) and
    /// the pump reports at a later poll. A report that says nothing new is always taken.
    pub max_audited_reports_per_hour: u32,
    /// "standard" (TUF 1.0.34) or "compat" (older clients such as rust-tuf).
    pub profile: String,
    /// Validity of operational device certificates issued by EST.
    pub device_certificate_validity_secs: u64,
    /// Youngest operational certificate (counted from its notBefore) that a device may renew
    /// (`simplereenroll`) or replace with its factory certificate; default half of
    /// `device_certificate_validity_secs`. Devices renew at 2/3 of the lifetime, so it may be at
    /// most 2/3 of the validity. Bounds how fast one device can grow the CRL.
    pub device_renewal_min_age_secs: Option<u64>,
    /// Youngest current certificate that an enrollment with the factory certificate may replace;
    /// default one day, at most `device_renewal_min_age_secs`. Shorter than the renewal bound: a
    /// device that lost its operational key or a renewal answer has only its factory certificate
    /// left, and should not wait half a lifetime to talk to the server again.
    pub device_factory_reenroll_min_age_secs: Option<u64>,
    /// Lifetime of the Device Issuing CA's CRL (re-signed after half of it, and on revocation).
    pub device_crl_lifetime_secs: u64,
    /// How often CRL files in the TLS directory are checked and the server's CRL kept fresh.
    /// Less than half of `device_crl_lifetime_secs` (see [`Config::check`]).
    pub crl_check_secs: u64,
    /// Connections one listener holds at once; past it the listener accepts again only as
    /// connections close (the others listeners are not affected: a flood on the enrollment
    /// listener cannot take the device listener's file descriptors). Keep the sum over the
    /// listeners under the process's open-file limit (`ulimit -n`).
    pub max_connections: usize,
    /// A connection on which nothing went either way for this long is closed (a client that
    /// opened one and went quiet, or sends a byte now and then, holds it no longer).
    pub idle_timeout_secs: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            passphrase_file: None,
            passphrase_env: "HALE_KEY_PASSPHRASE".into(),
            timestamp_lifetime_secs: 86_400,
            timestamp_resign_before_secs: 43_200,
            snapshot_lifetime_secs: 7 * 86_400,
            snapshot_resign_before_secs: 3 * 86_400,
            resign_check_secs: 60,
            max_target_bytes: 1 << 30,
            max_publish_bytes: 16 << 20,
            max_report_bytes: 16 << 10,
            max_audited_reports_per_hour: 60,
            profile: "standard".into(),
            device_certificate_validity_secs: 30 * 86_400,
            device_renewal_min_age_secs: None,
            device_factory_reenroll_min_age_secs: None,
            device_crl_lifetime_secs: 7 * 86_400,
            crl_check_secs: 5,
            max_connections: 200,
            idle_timeout_secs: 60,
        }
    }
}

impl Config {
    /// Defaults, then `file` (or `DATA/config.json` when it exists), then `HALE_LISTEN` and
    /// `HALE_PASSPHRASE_FILE`.
    pub fn load(data: &Path, file: Option<&Path>) -> anyhow::Result<Config> {
        use anyhow::Context;
        let default_file = data.join("config.json");
        let file = file
            .map(Path::to_path_buf)
            .or_else(|| default_file.exists().then_some(default_file));
        let mut c = match file {
            Some(f) => {
                let bytes =
                    std::fs::read(&f).with_context(|| format!("reading {}", f.display()))?;
                serde_json::from_slice(&bytes)
                    .with_context(|| format!("parsing {}", f.display()))?
            }
            None => Config::default(),
        };
        if let Ok(l) = std::env::var("HALE_LISTEN") {
            c.listen = l.parse().with_context(|| format!("HALE_LISTEN={l}"))?;
        }
        if let Ok(p) = std::env::var("HALE_PASSPHRASE_FILE") {
            c.passphrase_file = Some(PathBuf::from(p));
        }
        c.check()?;
        Ok(c)
    }

    pub fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.timestamp_lifetime_secs > 0 && self.snapshot_lifetime_secs > 0,
            "lifetimes must be positive"
        );
        anyhow::ensure!(
            self.timestamp_resign_before_secs < self.timestamp_lifetime_secs
                && self.snapshot_resign_before_secs < self.snapshot_lifetime_secs,
            "resign_before must be shorter than the lifetime (or the server re-signs without end)"
        );
        anyhow::ensure!(
            self.resign_check_secs > 0,
            "resign_check_secs must be positive"
        );
        // a check must fall inside the re-sign window, or the server serves an expired role
        // until the next check (or for ever, for a window of zero or less)
        let check = i64::try_from(self.resign_check_secs).unwrap_or(i64::MAX);
        for (name, before) in [
            (
                "timestamp_resign_before_secs",
                self.timestamp_resign_before_secs,
            ),
            (
                "snapshot_resign_before_secs",
                self.snapshot_resign_before_secs,
            ),
        ] {
            anyhow::ensure!(
                before >= check,
                "{name} is {before}: it must be at least resign_check_secs ({check}), or the \
                 server serves an expired {} before it re-signs it",
                name.split('_').next().unwrap_or("role")
            );
        }
        anyhow::ensure!(
            self.device_certificate_validity_secs > 0
                && self.device_crl_lifetime_secs > 0
                && self.crl_check_secs > 0,
            "device certificate validity, CRL lifetime and CRL check interval must be positive"
        );
        // The Device Issuing CA's CRL is valid from its signing for device_crl_lifetime_secs
        // (L); a check every crl_check_secs (C) signs a new one once half of that has passed
        // (`Identity::refresh_crl`: at or after thisUpdate + L/2, in whole seconds), so the
        // first check that finds it due comes up to C after thisUpdate + L/2, and must come
        // before nextUpdate = thisUpdate + L, when the listeners stop taking device
        // certificates under it. 2C < L leaves at least a second for the check itself (L/2 is
        // rounded down; the interval waits for a late check rather than bursting).
        anyhow::ensure!(
            self.crl_check_secs.saturating_mul(2) < self.device_crl_lifetime_secs,
            "crl_check_secs is {check} and device_crl_lifetime_secs is {life}: crl_check_secs must \
             be less than half of device_crl_lifetime_secs ({half}), or the Device Issuing CA's \
             CRL, signed again at the first check after half its lifetime, can expire before that \
             check and every device handshake is refused until it comes",
            check = self.crl_check_secs,
            life = self.device_crl_lifetime_secs,
            half = self.device_crl_lifetime_secs / 2,
        );
        anyhow::ensure!(
            self.device_renewal_min_age_secs().saturating_mul(3)
                <= self.device_certificate_validity_secs.saturating_mul(2),
            "device_renewal_min_age_secs must be at most 2/3 of device_certificate_validity_secs \
             (devices renew at 2/3 of the lifetime)"
        );
        anyhow::ensure!(
            self.device_factory_reenroll_min_age_secs() <= self.device_renewal_min_age_secs(),
            "device_factory_reenroll_min_age_secs must be at most device_renewal_min_age_secs"
        );
        anyhow::ensure!(
            self.max_connections > 0 && self.idle_timeout_secs > 0,
            "max_connections and idle_timeout_secs must be positive"
        );
        anyhow::ensure!(
            self.max_audited_reports_per_hour > 0,
            "max_audited_reports_per_hour must be positive"
        );
        hale_repo::build::Profile::parse(&self.profile)?;
        Ok(())
    }

    /// `device_renewal_min_age_secs`, else half of `device_certificate_validity_secs`.
    pub fn device_renewal_min_age_secs(&self) -> u64 {
        self.device_renewal_min_age_secs
            .unwrap_or(self.device_certificate_validity_secs / 2)
    }

    /// `device_factory_reenroll_min_age_secs`, else one day (or the renewal minimum, if shorter).
    pub fn device_factory_reenroll_min_age_secs(&self) -> u64 {
        self.device_factory_reenroll_min_age_secs
            .unwrap_or_else(|| self.device_renewal_min_age_secs().min(86_400))
    }

    pub fn passphrase(&self) -> hale_repo::Passphrase {
        match &self.passphrase_file {
            Some(f) => hale_repo::Passphrase::File(f.clone()),
            None => hale_repo::Passphrase::Env(self.passphrase_env.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Config;

    #[test]
    fn a_re_sign_window_shorter_than_the_check_interval_is_refused() {
        for (before, check) in [(-600, 60), (0, 60), (59, 60)] {
            let c = Config {
                timestamp_resign_before_secs: before,
                resign_check_secs: check,
                ..Config::default()
            };
            assert_eq!(
                c.check().map_err(|e| e.to_string()),
                Err(format!(
                    "timestamp_resign_before_secs is {before}: it must be at least \
                     resign_check_secs ({check}), or the server serves an expired timestamp \
                     before it re-signs it"
                ))
            );
        }
        let c = Config {
            snapshot_resign_before_secs: 0,
            ..Config::default()
        };
        assert_eq!(
            c.check().map_err(|e| e.to_string()),
            Err(
                "snapshot_resign_before_secs is 0: it must be at least resign_check_secs (60), \
                 or the server serves an expired snapshot before it re-signs it"
                    .to_string()
            )
        );
        let edge = Config {
            timestamp_resign_before_secs: 60,
            ..Config::default()
        };
        assert!(edge.check().is_ok());
    }

    /// The CRL is signed again at the first check after half its lifetime: a check interval of
    /// half the lifetime or more lets it expire before that check (every device handshake then
    /// fails), and nothing refused such a configuration.
    #[test]
    fn a_crl_check_interval_that_lets_the_device_crl_expire_is_refused() {
        let refused = |check: u64, life: u64| {
            Err(format!(
                "crl_check_secs is {check} and device_crl_lifetime_secs is {life}: \
                 crl_check_secs must be less than half of device_crl_lifetime_secs ({}), or the \
                 Device Issuing CA's CRL, signed again at the first check after half its \
                 lifetime, can expire before that check and every device handshake is refused \
                 until it comes",
                life / 2
            ))
        };
        for (check, life) in [
            (3600, 7200),
            (3601, 7200),
            (86_400, 86_400),
            (5, 10),
            (5, 9),
        ] {
            let c = Config {
                crl_check_secs: check,
                device_crl_lifetime_secs: life,
                ..Config::default()
            };
            assert_eq!(
                c.check().map_err(|e| e.to_string()),
                refused(check, life),
                "{check} {life}"
            );
        }
        for (check, life) in [(3599, 7200), (4, 9), (5, 7 * 86_400)] {
            let c = Config {
                crl_check_secs: check,
                device_crl_lifetime_secs: life,
                ..Config::default()
            };
            assert!(c.check().is_ok(), "{check} {life}");
        }
    }

    #[test]
    fn renewal_min_age_defaults_to_half_the_validity_and_may_not_pass_two_thirds_of_it() {
        let c = Config::default();
        assert_eq!(c.device_renewal_min_age_secs(), 15 * 86_400);
        assert_eq!(c.device_factory_reenroll_min_age_secs(), 86_400);
        let short = Config {
            device_renewal_min_age_secs: Some(600),
            ..Config::default()
        };
        assert_eq!(short.device_factory_reenroll_min_age_secs(), 600);
        let factory_later = Config {
            device_factory_reenroll_min_age_secs: Some(15 * 86_400 + 1),
            ..Config::default()
        };
        assert_eq!(
            factory_later.check().map_err(|e| e.to_string()),
            Err(
                "device_factory_reenroll_min_age_secs must be at most device_renewal_min_age_secs"
                    .to_string()
            )
        );
        assert!(c.check().is_ok());
        let two_thirds = Config {
            device_renewal_min_age_secs: Some(20 * 86_400),
            ..Config::default()
        };
        assert!(two_thirds.check().is_ok());
        let later = Config {
            device_renewal_min_age_secs: Some(20 * 86_400 + 1),
            ..Config::default()
        };
        assert_eq!(
            later.check().map_err(|e| e.to_string()),
            Err("device_renewal_min_age_secs must be at most 2/3 of \
                 device_certificate_validity_secs (devices renew at 2/3 of the lifetime)"
                .to_string())
        );
    }
}
