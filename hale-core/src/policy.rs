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
    /// Longest text a version is written as: three 20-digit numbers, two dots, a hyphen and the
    /// longest pre-release tag (what a report may carry for a version, and a server take).
    pub const MAX_TEXT: usize = 3 * 20 + 2 + 1 + MAX_PRERELEASE_LEN;

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
        let mut v = Version::new(0, 0, 0);
        v.read(s.as_bytes())?;
        Some(v)
    }

    /// Parse `s` into `self` (which starts as `0.0.0`), byte by byte: a few hundred bytes less
    /// flash than `str::split`, and no `Version` moved through an `Option`.
    fn read(&mut self, s: &[u8]) -> Option<()> {
        // build metadata: everything after the first `+`; ignored, but it must not be empty
        let core_pre = match s.iter().position(|b| *b == b'+') {
            Some(i) if i + 1 < s.len() => s.get(..i)?,
            Some(_) => return None,
            None => s,
        };
        // MAJOR.MINOR.PATCH: digits, no leading zero, refused on overflow; then the end or `-`
        let mut i = 0;
        for (k, n) in [&mut self.major, &mut self.minor, &mut self.patch]
            .into_iter()
            .enumerate()
        {
            let start = i;
            while let Some(d) = core_pre
                .get(i)
                .and_then(|b| b.checked_sub(b'0'))
                .filter(|d| *d < 10)
            {
                *n = n.checked_mul(10)?.checked_add(u64::from(d))?;
                i += 1;
            }
            if i == start || (i - start > 1 && core_pre.get(start) == Some(&b'0')) {
                return None;
            }
            match (k, core_pre.get(i)) {
                (0 | 1, Some(b'.')) => i += 1,
                (2, None | Some(b'-')) => {}
                _ => return None,
            }
        }
        let Some(pre) = core_pre.get(i + 1..) else {
            return Some(());
        };
        if pre.is_empty() || pre.len() > MAX_PRERELEASE_LEN {
            return None;
        }
        // dot-separated identifiers: not empty, [0-9A-Za-z-], no leading zero when numeric
        let (mut len, mut numeric, mut zero) = (0, true, false);
        for b in pre.iter().chain(Some(&b'.')) {
            if *b == b'.' {
                if len == 0 || (numeric && zero && len > 1) {
                    return None;
                }
                (len, numeric) = (0, true);
                continue;
            }
            if !(b.is_ascii_alphanumeric() || *b == b'-') {
                return None;
            }
            if len == 0 {
                zero = *b == b'0';
            }
            numeric &= b.is_ascii_digit();
            len += 1;
        }
        self.pre.get_mut(..pre.len())?.copy_from_slice(pre);
        self.pre_len = pre.len() as u8;
        Some(())
    }

    fn pre_bytes(&self) -> &[u8] {
        self.pre.get(..self.pre_len as usize).unwrap_or(&[])
    }

    pub fn pre_release(&self) -> &str {
        core::str::from_utf8(self.pre_bytes()).unwrap_or("")
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
        [self.major, self.minor, self.patch]
            .cmp(&[other.major, other.minor, other.patch])
            .then_with(|| cmp_pre(self.pre_bytes(), other.pre_bytes()))
    }
}

fn cmp_pre(a: &[u8], b: &[u8]) -> Ordering {
    // no pre-release ranks above any pre-release
    if a.is_empty() || b.is_empty() {
        return a.is_empty().cmp(&b.is_empty());
    }
    // identifier by identifier; a missing one ranks lowest (`None` < `Some`), a numeric one below
    // an alphanumeric one. Numeric identifiers compare as numbers of any size: no leading zeros
    // (refused at parse), so the longer is the larger and equal lengths compare digit by digit.
    let (mut i, mut j) = (0, 0);
    loop {
        let (p, q) = (pre_id(a, &mut i), pre_id(b, &mut j));
        if p.is_none() && q.is_none() {
            return Ordering::Equal;
        }
        let o = p.cmp(&q);
        if o != Ordering::Equal {
            return o;
        }
    }
}

/// The identifier of pre-release `s` at `*at` (moved past it), as a key that orders as SemVer
/// does: `(alphanumeric, length if numeric, bytes)`.
fn pre_id<'a>(s: &'a [u8], at: &mut usize) -> Option<(bool, usize, &'a [u8])> {
    let rest = s.get(*at..)?;
    let n = rest.iter().position(|c| *c == b'.').unwrap_or(rest.len());
    *at += n + 1;
    let id = rest.get(..n)?;
    let alpha = !id.iter().all(u8::is_ascii_digit);
    Some((alpha, if alpha { 0 } else { n }, id))
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
    let mut fw = Firmware::EMPTY;
    read(custom, &mut fw, None)?;
    Ok(fw)
}

impl Firmware {
    const EMPTY: Firmware = Firmware {
        version: Version::new(0, 0, 0),
        security_counter: 0,
        min_bootloader: None,
    };
}

/// Read the policy fields of `custom` into `fw` (in place: a `Version` is 64 bytes, and every
/// move of one costs flash), validating `hardware` and, in the same pass, finding `device`'s
/// model and revision in it: `(model listed, model listed with this revision)`.
fn read(
    custom: Option<&Object<'_>>,
    fw: &mut Firmware,
    device: Option<&Device<'_>>,
) -> Result<(bool, bool), PolicyError> {
    let custom = custom.ok_or(PolicyError::NotFirmware)?;
    read_fields(custom, fw, device).map_err(|field| PolicyError::Field { field })
}

/// [`read`]; `Err` names the missing or malformed field.
fn read_fields(
    custom: &Object<'_>,
    fw: &mut Firmware,
    device: Option<&Device<'_>>,
) -> Result<(bool, bool), &'static str> {
    if !version_field(custom, "version", &mut fw.version)? {
        return Err("version");
    }
    let field = "security_counter";
    fw.security_counter = match custom.get(field).map_err(|_| field)? {
        Some(v) => v.as_u64().ok_or(field)?,
        None => 0,
    };
    let req = fw.min_bootloader.insert(Version::new(0, 0, 0));
    if !version_field(custom, "min_bootloader", req)? {
        fw.min_bootloader = None;
    }

    let field = "hardware";
    let hw = custom
        .get(field)
        .ok()
        .flatten()
        .and_then(|v| v.as_array())
        .ok_or(field)?;
    let n = hw.len();
    if n == 0 || n > MAX_HARDWARE_ENTRIES {
        return Err(field);
    }
    let (mut model_seen, mut fits) = (false, false);
    for e in hw.iter() {
        let o = e.as_object().ok_or(field)?;
        let model = o
            .get("model")
            .ok()
            .flatten()
            .and_then(|v| v.as_str())
            .ok_or("hardware.model")?;
        let field = "hardware.revisions";
        let revs = o
            .get("revisions")
            .ok()
            .flatten()
            .and_then(|v| v.as_array())
            .ok_or(field)?;
        let ours = device.filter(|d| model.eq_str(d.model));
        model_seen |= ours.is_some();
        for (i, r) in revs.iter().enumerate() {
            let r = r.as_str().ok_or(field)?;
            if i >= MAX_HARDWARE_ENTRIES {
                return Err(field);
            }
            fits |= ours.is_some_and(|d| r.eq_str(d.revision));
        }
    }
    Ok((model_seen, fits))
}

/// Parse the string `field` into `out`; `Ok(false)` when it is absent.
fn version_field(
    custom: &Object<'_>,
    field: &'static str,
    out: &mut Version,
) -> Result<bool, &'static str> {
    let Some(v) = custom.get(field).map_err(|_| field)? else {
        return Ok(false);
    };
    let mut buf = [0u8; 96];
    v.as_str()
        .and_then(|s| s.decode_into(&mut buf))
        .and_then(|s| out.read(s.as_bytes()))
        .ok_or(field)?;
    Ok(true)
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
    let mut fw = Firmware::EMPTY;
    let (model_seen, fits) = read(custom, &mut fw, Some(device))?;
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
    if !allow_downgrade_to && fw.version <= device.running {
        return Err(PolicyError::NotNewer {
            running: device.running,
            offered: fw.version,
        });
    }
    if let Some(req) = &fw.min_bootloader {
        if device.bootloader < *req {
            return Err(PolicyError::BootloaderTooOld {
                required: *req,
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
        assert_eq!(
            eval(&d, false),
            Err(PolicyError::NotNewer {
                running: v("3.0.0"),
                offered: v("2.1.0")
            })
        );
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
