//! Firmware policy: what a device decides from a verified target's `custom` field.
//!
//! ```json
//! "custom": {
//!   "hardware": [{"model": "pump-a", "revisions": ["r2", "r3"]}],
//!   "version": "2.1.0",
//!   "security_counter": 4,
//!   "min_bootloader": "1.2.0",
//!   "sbom": "pump-a/2.1.0/sbom.spdx.json"
//! }
//! ```
//!
//! A device refuses a target that is not for its model and revision, not newer than what it runs,
//! below its stored security counter, or that needs a newer bootloader. Fields the device does not
//! know are ignored, so a repository can add fields without stranding older agents. A downgrade is
//! possible only through a signed rollback authorization (checked by [`evaluate`]'s caller with the
//! `allow_downgrade_to` hook); the security counter is never crossed.

use core::cmp::Ordering;
use core::fmt;

use crate::error::Name;
use crate::json::Object;
use crate::limits::{MAX_HARDWARE_ENTRIES, MAX_PRERELEASE_LEN};

/// A semantic version (2.0.0): `MAJOR.MINOR.PATCH[-PRERELEASE][+BUILD]`; build metadata is ignored.
#[derive(Clone, Copy)]
pub struct Version {
    pub major: u64,
    pub minor: u64,
    pub patch: u64,
    pre: [u8; MAX_PRERELEASE_LEN],
    pre_len: u8,
}

impl Version {
    pub const fn new(major: u64, minor: u64, patch: u64) -> Self {
        Version {
            major,
            minor,
            patch,
            pre: [0; MAX_PRERELEASE_LEN],
            pre_len: 0,
        }
    }

    pub fn parse(s: &str) -> Option<Version> {
        let core_pre = s
            .split_once('+')
            .map_or(s, |(a, build)| if build.is_empty() { "" } else { a });
        if core_pre.is_empty() {
            return None;
        }
        let (core, pre) = match core_pre.split_once('-') {
            Some((c, p)) => (c, Some(p)),
            None => (core_pre, None),
        };
        let mut it = core.split('.');
        let num = |p: Option<&str>| -> Option<u64> {
            let p = p?;
            if p.is_empty() || (p.len() > 1 && p.starts_with('0')) {
                return None;
            }
            // digits only, refused on overflow (what `str::parse::<u64>` accepts here, in less code)
            p.bytes().try_fold(0u64, |v, b| {
                let d = b.checked_sub(b'0').filter(|d| *d < 10)?;
                v.checked_mul(10)?.checked_add(u64::from(d))
            })
        };
        let (major, minor, patch) = (num(it.next())?, num(it.next())?, num(it.next())?);
        if it.next().is_some() {
            return None;
        }
        let mut v = Version::new(major, minor, patch);
        if let Some(pre) = pre {
            if pre.is_empty() || pre.len() > MAX_PRERELEASE_LEN {
                return None;
            }
            for id in pre.split('.') {
                let numeric = id.bytes().all(|b| b.is_ascii_digit());
                if id.is_empty()
                    || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    || (numeric && id.len() > 1 && id.starts_with('0'))
                {
                    return None;
                }
            }
            v.pre.get_mut(..pre.len())?.copy_from_slice(pre.as_bytes());
            v.pre_len = pre.len() as u8;
        }
        Some(v)
    }

    pub fn pre_release(&self) -> &str {
        core::str::from_utf8(self.pre.get(..self.pre_len as usize).unwrap_or(&[])).unwrap_or("")
    }
}

impl PartialEq for Version {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Version {}
impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.major, self.minor, self.patch)
            .cmp(&(other.major, other.minor, other.patch))
            .then_with(|| cmp_pre(self.pre_release(), other.pre_release()))
    }
}

fn cmp_pre(a: &str, b: &str) -> Ordering {
    match (a.is_empty(), b.is_empty()) {
        (true, true) => return Ordering::Equal,
        (true, false) => return Ordering::Greater,
        (false, true) => return Ordering::Less,
        _ => {}
    }
    let (mut x, mut y) = (a.split('.'), b.split('.'));
    loop {
        match (x.next(), y.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(p), Some(q)) => {
                let numeric = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
                // numeric identifiers compare as numbers of any size: no leading zeros (refused at
                // parse), so the longer is the larger and equal lengths compare digit by digit
                let o = match (numeric(p), numeric(q)) {
                    (true, true) => p.len().cmp(&q.len()).then_with(|| p.cmp(q)),
                    (true, false) => Ordering::Less,
                    (false, true) => Ordering::Greater,
                    (false, false) => p.cmp(q),
                };
                if o != Ordering::Equal {
                    return o;
                }
            }
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)?;
        if self.pre_len > 0 {
            write!(f, "-{}", self.pre_release())?;
        }
        Ok(())
    }
}

impl fmt::Debug for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Version({self})")
    }
}

/// What the device knows about itself.
#[derive(Debug, Clone, Copy)]
pub struct Device<'a> {
    pub model: &'a str,
    pub revision: &'a str,
    /// The version of the confirmed, running image.
    pub running: Version,
    /// The highest security counter ever confirmed (stored by the agent, never lowered).
    pub security_counter: u64,
    pub bootloader: Version,
}

/// The policy fields of an acceptable target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Firmware {
    pub version: Version,
    pub security_counter: u64,
    pub min_bootloader: Option<Version>,
}

/// Why a device refuses a target.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyError {
    /// The target has no `custom` object: it is not firmware.
    NotFirmware,
    /// A policy field is missing or malformed.
    Field { field: &'static str },
    /// No `hardware` entry names this model.
    WrongModel { model: Name },
    /// The model is listed, but not this revision.
    WrongRevision { model: Name, revision: Name },
    /// Not newer than the running version (and no authorization to go back).
    NotNewer { running: Version, offered: Version },
    /// Below the device's security counter: never installable, authorized or not.
    BelowSecurityCounter { floor: u64, offered: u64 },
    /// Needs a newer bootloader than the device has.
    BootloaderTooOld { required: Version, have: Version },
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicyError::NotFirmware => write!(f, "target has no firmware policy (custom)"),
            PolicyError::Field { field } => {
                write!(f, "firmware policy field `{field}` missing or malformed")
            }
            PolicyError::WrongModel { model } => write!(f, "image is not built for model {model}"),
            PolicyError::WrongRevision { model, revision } => {
                write!(f, "image is not built for {model} revision {revision}")
            }
            PolicyError::NotNewer { running, offered } => {
                write!(f, "version {offered} is not newer than running {running}")
            }
            PolicyError::BelowSecurityCounter { floor, offered } => {
                write!(
                    f,
                    "security counter {offered} is below the device's {floor}"
                )
            }
            PolicyError::BootloaderTooOld { required, have } => {
                write!(f, "needs bootloader {required}, device has {have}")
            }
        }
    }
}

/// Read the policy fields of `custom` without judging them against a device.
pub fn parse_firmware(custom: Option<&Object<'_>>) -> Result<Firmware, PolicyError> {
    let custom = custom.ok_or_else(|| PolicyError::NotFirmware)?;
    let version =
        version_field(custom, "version")?.ok_or_else(|| PolicyError::Field { field: "version" })?;
    let security_counter = match custom.get("security_counter") {
        Ok(Some(v)) => v.as_u64().ok_or_else(|| PolicyError::Field {
            field: "security_counter",
        })?,
        Ok(None) => 0,
        Err(_) => {
            return Err(PolicyError::Field {
                field: "security_counter",
            })
        }
    };
    let min_bootloader = version_field(custom, "min_bootloader")?;
    hardware(custom)?;
    Ok(Firmware {
        version,
        security_counter,
        min_bootloader,
    })
}

fn version_field(custom: &Object<'_>, field: &'static str) -> Result<Option<Version>, PolicyError> {
    match custom.get(field) {
        Ok(None) => Ok(None),
        Ok(Some(v)) => {
            let s = v.as_str().ok_or_else(|| PolicyError::Field { field })?;
            let mut buf = [0u8; 96];
            let s = s
                .decode_into(&mut buf)
                .ok_or_else(|| PolicyError::Field { field })?;
            Version::parse(s)
                .map(Some)
                .ok_or_else(|| PolicyError::Field { field })
        }
        Err(_) => Err(PolicyError::Field { field }),
    }
}

fn hardware<'a>(custom: &Object<'a>) -> Result<crate::json::Array<'a>, PolicyError> {
    let field = "hardware";
    let hw = custom
        .get(field)
        .ok()
        .flatten()
        .and_then(|v| v.as_array())
        .ok_or_else(|| PolicyError::Field { field })?;
    if hw.is_empty() || hw.len() > MAX_HARDWARE_ENTRIES {
        return Err(PolicyError::Field { field });
    }
    for e in hw.iter() {
        let o = e.as_object().ok_or_else(|| PolicyError::Field { field })?;
        o.get("model")
            .ok()
            .flatten()
            .and_then(|v| v.as_str())
            .ok_or_else(|| PolicyError::Field {
                field: "hardware.model",
            })?;
        let revs = o
            .get("revisions")
            .ok()
            .flatten()
            .and_then(|v| v.as_array())
            .ok_or_else(|| PolicyError::Field {
                field: "hardware.revisions",
            })?;
        if revs.len() > MAX_HARDWARE_ENTRIES || revs.iter().any(|r| r.as_str().is_none()) {
            return Err(PolicyError::Field {
                field: "hardware.revisions",
            });
        }
    }
    Ok(hw)
}

/// Decide whether `device` may install the target with this `custom` field.
///
/// `allow_downgrade_to`: set only after a rollback authorization naming this device and exactly
/// this target verified (the rollback role's job); it lifts the "newer than running" rule and
/// nothing else.
pub fn evaluate(
    custom: Option<&Object<'_>>,
    device: &Device<'_>,
    allow_downgrade_to: bool,
) -> Result<Firmware, PolicyError> {
    let fw = parse_firmware(custom)?;
    let hw = custom
        .map(hardware)
        .ok_or_else(|| PolicyError::NotFirmware)??;
    let mut model_seen = false;
    let mut fits = false;
    for e in hw.iter().filter_map(|e| e.as_object()) {
        let model = e.get("model").ok().flatten().and_then(|v| v.as_str());
        if !model.is_some_and(|m| m.eq_str(device.model)) {
            continue;
        }
        model_seen = true;
        let revs = e.get("revisions").ok().flatten().and_then(|v| v.as_array());
        if revs.is_some_and(|r| {
            r.iter()
                .filter_map(|v| v.as_str())
                .any(|r| r.eq_str(device.revision))
        }) {
            fits = true;
        }
    }
    if !model_seen {
        return Err(PolicyError::WrongModel {
            model: Name::new(device.model),
        });
    }
    if !fits {
        return Err(PolicyError::WrongRevision {
            model: Name::new(device.model),
            revision: Name::new(device.revision),
        });
    }
    if fw.security_counter < device.security_counter {
        return Err(PolicyError::BelowSecurityCounter {
            floor: device.security_counter,
            offered: fw.security_counter,
        });
    }
    if fw.version <= device.running && !allow_downgrade_to {
        return Err(PolicyError::NotNewer {
            running: device.running,
            offered: fw.version,
        });
    }
    if let Some(req) = fw.min_bootloader {
        if device.bootloader < req {
            return Err(PolicyError::BootloaderTooOld {
                required: req,
                have: device.bootloader,
            });
        }
    }
    Ok(fw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::parse;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    #[test]
    fn semver_precedence() {
        let order = [
            "1.0.0-alpha",
            "1.0.0-alpha.1",
            "1.0.0-alpha.beta",
            "1.0.0-beta",
            "1.0.0-beta.2",
            "1.0.0-beta.11",
            "1.0.0-rc.1",
            "1.0.0",
            "1.0.1",
            "1.1.0",
            "2.0.0",
        ];
        for w in order.windows(2) {
            assert!(v(w[0]) < v(w[1]), "{} < {}", w[0], w[1]);
        }
        assert_eq!(v("1.2.3+build.5"), v("1.2.3"));
        assert_eq!(v("18446744073709551615.0.0").major, u64::MAX);
        // numeric identifiers beyond u64 still compare as numbers (found by fuzzing)
        assert!(v("1.0.0-99999999999999999999") < v("1.0.0-100000000000000000000"));
        assert!(v("2.1.0-rc.73705c.1") > v("2.1.0-rc.7370909595000776585509"));
        for bad in [
            "1.2",
            "1.2.3.4",
            "01.2.3",
            "1.2.3-",
            "1.2.3-01",
            "a.b.c",
            "",
            "1.2.3+",
            "+1.2.3",
            "1.-2.3",
            "18446744073709551616.0.0",
        ] {
            assert!(Version::parse(bad).is_none(), "{bad}");
        }
    }

    const CUSTOM: &str = r#"{"hardware":[{"model":"pump-a","revisions":["r2","r3"]}],"version":"2.1.0",
        "security_counter":4,"min_bootloader":"1.2.0","some_future_field":{"x":[1,2]}}"#;

    fn device() -> Device<'static> {
        Device {
            model: "pump-a",
            revision: "r2",
            running: v("2.0.0"),
            security_counter: 3,
            bootloader: v("1.2.0"),
        }
    }

    fn eval(d: &Device<'_>, allow: bool) -> Result<Firmware, PolicyError> {
        let c = parse(CUSTOM.as_bytes()).unwrap().as_object().unwrap();
        evaluate(Some(&c), d, allow)
    }

    #[test]
    fn accepts_newer_firmware_for_this_hardware_and_ignores_unknown_fields() {
        let fw = eval(&device(), false).unwrap();
        assert_eq!(fw.version, v("2.1.0"));
        assert_eq!(fw.security_counter, 4);
    }

    #[test]
    fn refuses_other_model_revision_older_counter_bootloader() {
        let d = Device {
            model: "monitor-b",
            ..device()
        };
        assert_eq!(
            eval(&d, false),
            Err(PolicyError::WrongModel {
                model: Name::new("monitor-b")
            })
        );
        let d = Device {
            revision: "r1",
            ..device()
        };
        assert_eq!(
            eval(&d, false),
            Err(PolicyError::WrongRevision {
                model: Name::new("pump-a"),
                revision: Name::new("r1")
            })
        );
        let d = Device {
            running: v("2.1.0"),
            ..device()
        };
        assert_eq!(
            eval(&d, false),
            Err(PolicyError::NotNewer {
                running: v("2.1.0"),
                offered: v("2.1.0")
            })
        );
        let d = Device {
            security_counter: 5,
            ..device()
        };
        assert_eq!(
            eval(&d, false),
            Err(PolicyError::BelowSecurityCounter {
                floor: 5,
                offered: 4
            })
        );
        // an authorization never crosses the security counter
        assert_eq!(
            eval(&d, true),
            Err(PolicyError::BelowSecurityCounter {
                floor: 5,
                offered: 4
            })
        );
        let d = Device {
            bootloader: v("1.1.9"),
            ..device()
        };
        assert_eq!(
            eval(&d, false),
            Err(PolicyError::BootloaderTooOld {
                required: v("1.2.0"),
                have: v("1.1.9")
            })
        );
    }

    #[test]
    fn authorized_downgrade_lifts_only_the_version_rule() {
        let d = Device {
            running: v("3.0.0"),
            ..device()
        };
        assert!(matches!(eval(&d, false), Err(PolicyError::NotNewer { .. })));
        assert_eq!(eval(&d, true).unwrap().version, v("2.1.0"));
    }

    #[test]
    fn refuses_targets_without_policy() {
        let d = device();
        assert_eq!(evaluate(None, &d, false), Err(PolicyError::NotFirmware));
        let c = parse(br#"{"version":"1.0.0"}"#)
            .unwrap()
            .as_object()
            .unwrap();
        assert_eq!(
            evaluate(Some(&c), &d, false),
            Err(PolicyError::Field { field: "hardware" })
        );
    }
}
