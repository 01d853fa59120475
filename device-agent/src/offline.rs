//! Host shell (`std`) for offline installs and rollbacks on the simulated pump: reading a bundle
//! with a bound, choosing the target an authorization names, and the install record the pump
//! reports to the server at its next sync. Every decision stays in hale-core (through
//! [`crate::check_for_update`] and [`crate::rollback::RollbackAuthorization`]).

use std::io::Read;
use std::path::Path;

use hale_core::metadata::Targets;
use hale_core::rollback::Authorization;
use hale_core::verify::KeyStatus;
use serde_json::{json, Value};

/// Largest bundle the simulated pump reads (two 1 MiB slots' worth plus metadata, with room).
pub const MAX_BUNDLE: u64 = 16 << 20;
/// Largest rollback authorization read from a file.
pub const MAX_AUTHORIZATION: u64 = 64 << 10;

/// Read at most `max` bytes of `path`; a longer file is refused, not truncated.
pub fn read_bounded(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    let f = std::fs::File::open(path)?;
    let mut out = Vec::new();
    f.take(max + 1).read_to_end(&mut out)?;
    if out.len() as u64 > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{}: longer than {max} bytes", path.display()),
        ));
    }
    Ok(out)
}

/// The target an (unverified) authorization names: which target to look up. Verification —
/// including that this is exactly the target — is hale-core's, at install.
pub fn authorization_target(bytes: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(bytes).ok()?;
    v.get("signed")?.get("target")?.as_str().map(str::to_string)
}

/// The target paths of the images `bundle` carries (`targets/DIR/<sha256>.NAME` → `DIR/NAME`),
/// read from the entry names only: to tell a technician that a bundle was made for another target
/// than the one this pump looks up. Which image installs is hale-core's decision.
pub fn bundle_images(bundle: &hale_core::bundle::Bundle<'_>) -> Vec<String> {
    bundle
        .iter()
        .filter_map(|(name, _)| {
            let rest = name.strip_prefix("targets/")?;
            let (dir, file) = match rest.rsplit_once('/') {
                Some((d, f)) => (Some(d), f),
                None => (None, rest),
            };
            let (hash, base) = file.split_once('.')?;
            if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            Some(match dir {
                Some(d) => format!("{d}/{base}"),
                None => base.to_string(),
            })
        })
        .collect()
}

/// `issued` and `expires` of an (unverified) authorization, when it states them: only to tell a
/// spent or expired one apart, so the pump stops offering it (verification is hale-core's).
pub fn authorization_times(bytes: &[u8]) -> Option<(i64, i64)> {
    let v: Value = serde_json::from_slice(bytes).ok()?;
    let time = |k: &str| {
        let s = v.get("signed")?.get(k)?.as_str()?;
        hale_core::time::parse_expires(s.as_bytes())
    };
    Some((time("issued")?, time("expires")?))
}

/// The record the pump reports after an offline install or a rollback (hale-server's
/// `install_record`): what verified, and which rollback-role keys signed the authorization.
pub fn install_record(
    kind: &str,
    target: &str,
    version: &str,
    authorization: Option<(&Authorization<'_>, &Targets<'_>, &[u8])>,
) -> Value {
    let mut rec = serde_json::Map::new();
    rec.insert("kind".into(), json!(kind));
    rec.insert("target".into(), json!(target));
    rec.insert("version".into(), json!(version));
    if let Some((a, targets, bytes)) = authorization {
        let signers: Vec<String> = crate::rollback::signers(targets, bytes)
            .map(|r| {
                r.keys
                    .iter()
                    .filter(|(_, s)| *s == KeyStatus::Signed)
                    .map(|(k, _)| k.as_str().to_string())
                    .collect()
            })
            .unwrap_or_default();
        rec.insert("kind".into(), json!("rollback"));
        rec.insert("reason".into(), json!(a.reason.to_owned_string()));
        rec.insert("issued".into(), json!(iso8601(a.issued)));
        rec.insert("signers".into(), json!(signers));
    }
    Value::Object(rec)
}

/// `YYYY-MM-DDTHH:MM:SSZ` for a Unix time (days from the civil calendar, no time zone data).
pub fn iso8601(t: i64) -> String {
    let days = t.div_euclid(86_400);
    let secs = t.rem_euclid(86_400);
    // Howard Hinnant's days_from_civil inverse
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_unix_times() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso8601(1_893_456_000), "2030-01-01T00:00:00Z");
        assert_eq!(iso8601(951_782_400 + 3661), "2000-02-29T01:01:01Z");
    }
}
