//! Every way verification can refuse something. Each variant names the check that failed and
//! carries the data needed to assert on it exactly; "nothing new" is never an error.

use core::fmt;

use crate::json::{JStr, JsonError};
use crate::limits::{MAX_ERROR_NAME_LEN, MAX_NAME_LEN};
use crate::policy::PolicyError;
use crate::time::UnixTime;

/// A short owned string (role name, key id, target path) kept in errors: diagnostic only.
/// Longer input is truncated and marked with `…` — names in errors only identify, they are never
/// trusted. Small ([`MAX_ERROR_NAME_LEN`] bytes) so that every `Result` a device moves is small.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Name(Bounded<MAX_ERROR_NAME_LEN>);

/// A role name (or key id) kept in full up to [`MAX_NAME_LEN`] bytes: the delegation search's
/// stack and signature reports. A truncated one ([`RoleName::is_truncated`]) is never used as a
/// key: the search skips it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RoleName(Bounded<MAX_NAME_LEN>);

#[derive(Clone, Copy, PartialEq, Eq)]
struct Bounded<const N: usize> {
    buf: [u8; N],
    len: u8,
    truncated: bool,
}

impl<const N: usize> Bounded<N> {
    const fn empty() -> Self {
        Bounded {
            buf: [0; N],
            len: 0,
            truncated: false,
        }
    }

    /// The longest prefix of `s` that fits and ends on a character boundary.
    fn from_str(s: &str) -> Self {
        let mut n = Self::empty();
        let mut len = s.len().min(N);
        while !s.is_char_boundary(len) {
            len -= 1;
        }
        if let (Some(dst), Some(src)) = (n.buf.get_mut(..len), s.as_bytes().get(..len)) {
            dst.copy_from_slice(src);
            n.len = len as u8;
        }
        n.truncated = usize::from(n.len) < s.len();
        n
    }

    fn from_bytes(it: impl Iterator<Item = u8>) -> Self {
        let mut n = Self::empty();
        let mut len = 0usize;
        for b in it {
            match n.buf.get_mut(len) {
                Some(slot) => {
                    *slot = b;
                    len += 1;
                }
                None => {
                    n.truncated = true;
                    break;
                }
            }
        }
        // never cut a UTF-8 sequence in half
        while len > 0 && core::str::from_utf8(n.buf.get(..len).unwrap_or(&[])).is_err() {
            len -= 1;
            n.truncated = true;
        }
        n.len = len as u8;
        n
    }

    fn as_str(&self) -> &str {
        core::str::from_utf8(self.buf.get(..self.len as usize).unwrap_or(&[])).unwrap_or("")
    }

    fn ellipsis(&self) -> &'static str {
        if self.truncated {
            "…"
        } else {
            ""
        }
    }
}

macro_rules! bounded_name {
    ($t:ident) => {
        impl $t {
            pub const fn empty() -> Self {
                $t(Bounded::empty())
            }

            pub fn new(s: &str) -> Self {
                $t(Bounded::from_str(s))
            }

            pub fn from_json(s: &JStr<'_>) -> Self {
                $t(Bounded::from_bytes(s.bytes()))
            }

            pub fn as_str(&self) -> &str {
                self.0.as_str()
            }

            /// True when the original was longer than the capacity (so it cannot be used as a
            /// key).
            pub fn is_truncated(&self) -> bool {
                self.0.truncated
            }
        }

        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:?}{}", self.as_str(), self.0.ellipsis())
            }
        }

        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}{}", self.as_str(), self.0.ellipsis())
            }
        }

        impl PartialEq<&str> for $t {
            fn eq(&self, other: &&str) -> bool {
                !self.0.truncated && self.as_str() == *other
            }
        }
    };
}

bounded_name!(Name);
bounded_name!(RoleName);

impl From<RoleName> for Name {
    /// The same name for an error (truncated to [`MAX_ERROR_NAME_LEN`], marked if it was).
    fn from(r: RoleName) -> Self {
        let mut n = Name::new(r.as_str());
        n.0.truncated |= r.0.truncated;
        n
    }
}

/// The four top-level roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Root,
    Timestamp,
    Snapshot,
    Targets,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Root, Role::Timestamp, Role::Snapshot, Role::Targets];

    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Root => "root",
            Role::Timestamp => "timestamp",
            Role::Snapshot => "snapshot",
            Role::Targets => "targets",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a trust decision refused.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The document is not acceptable JSON (or has a duplicate key where it is read).
    Json { role: Name, error: JsonError },
    /// The envelope or `signed` lacks a required field, or it has the wrong JSON type.
    Field { role: Name, field: &'static str },
    /// `signed._type` is not the role being loaded.
    WrongType { expected: &'static str, found: Name },
    /// `spec_version` is not `1.x`.
    UnsupportedSpecVersion { role: Name, found: Name },
    /// `expires` is not `YYYY-MM-DDTHH:MM:SSZ`.
    BadExpires { role: Name },
    /// A key entry we cannot use (unknown type or scheme, malformed key material).
    BadKey { keyid: Name, reason: &'static str },
    /// A role lists more keys than [`crate::limits::MAX_KEYS_PER_ROLE`].
    TooManyKeys { role: Name, count: usize },
    /// A role's threshold is zero or does not fit 32 bits. (A threshold above the number of usable
    /// keys is not an error of its own: it cannot be met, [`Error::ThresholdNotMet`].)
    BadThreshold {
        role: Name,
        threshold: u64,
        keys: usize,
    },
    /// Fewer valid signatures from distinct authorized keys than the threshold.
    ThresholdNotMet {
        role: Name,
        threshold: u32,
        valid: u32,
    },
    /// A new root's version is not the trusted version plus one.
    RootVersionNotNext { trusted: u64, received: u64 },
    /// More root rotations in one update than the configured cap.
    TooManyRootRotations { cap: u32 },
    /// A role's version went backwards (rollback attack).
    Rollback {
        role: Name,
        trusted: u64,
        received: u64,
    },
    /// Metadata version differs from what the referencing metadata (timestamp, snapshot) says.
    VersionMismatch {
        role: Name,
        expected: u64,
        received: u64,
    },
    /// A new snapshot no longer lists a role the trusted snapshot listed.
    MissingFromSnapshot { role: Name },
    /// The role is not listed in the trusted snapshot at all.
    NotInSnapshot { role: Name },
    /// Metadata whose `expires` is at or before the update start time (freeze attack).
    Expired {
        role: Name,
        expires: UnixTime,
        now: UnixTime,
    },
    /// Bytes longer or shorter than the length the referencing metadata fixed.
    LengthMismatch {
        what: Name,
        expected: u64,
        received: u64,
    },
    /// Bytes whose hash differs from the referencing metadata.
    HashMismatch { what: Name, algorithm: &'static str },
    /// No hash algorithm we support (sha256, sha512) is listed for this file.
    NoSupportedHash { what: Name },
    /// More data than the limit for this download (endless-data attack).
    TooLarge { what: Name, limit: u64 },
    /// The caller's storage for this role is too small for the metadata.
    StorageTooSmall {
        role: Role,
        capacity: usize,
        needed: usize,
    },
    /// A call made in the wrong order (e.g. snapshot before timestamp).
    WrongOrder {
        operation: &'static str,
        requires: &'static str,
    },
    /// Trusted root has expired at the end of the root update.
    ExpiredRoot { expires: UnixTime, now: UnixTime },
    /// The stored timestamp did not load (its keys rotated, most often: the fast-forward attack's
    /// recovery, spec 5.3.11; or it no longer verifies or parses for another reason), so the
    /// stored snapshot is not used as a baseline either.
    OnlineKeysRotated,
    /// Delegations nested deeper than [`crate::limits::MAX_DELEGATION_DEPTH`].
    DelegationTooDeep { role: Name },
    /// More delegated roles visited than [`crate::limits::MAX_DELEGATION_VISITS`].
    TooManyDelegations { cap: u32 },
    /// A role or target name that could escape a directory or URL path (`..`, `/`, `\`, NUL, …).
    UnsafeName { name: Name },
    /// A succinct-bins delegation with parameters outside TAP 15 (bit_length 1..=32).
    BadSuccinctRoles { reason: &'static str },
    /// A firmware policy refusal (wrong hardware, older version, security counter, bootloader).
    Policy(PolicyError),
    /// Top-level targets delegates to no `rollback` role: no authorization can be valid.
    NoRollbackRole,
    /// A rollback authorization that names neither this device nor its group.
    NotForThisDevice { device: Name },
    /// A rollback authorization for another target than the one being installed.
    AuthorizationTargetMismatch { authorized: Name, requested: Name },
    /// A rollback authorization for devices running another version than this one.
    AuthorizationInstalledMismatch {
        authorized: crate::policy::Version,
        running: crate::policy::Version,
    },
    /// A rollback authorization valid for longer than the configured maximum (seconds).
    AuthorizationTooLong { max: i64, validity: i64 },
    /// A rollback authorization issued `ahead` seconds after this clock's time, more than the
    /// `leeway` allowed for clocks apart: dated ahead of this clock (or this clock runs behind).
    AuthorizationAhead { ahead: i64, leeway: i64 },
    /// A rollback authorization issued no later than the last one this device installed by: an
    /// authorization is used once (Unix seconds).
    AuthorizationUsed { issued: UnixTime, last: UnixTime },
    /// An offline bundle whose structure is broken.
    BadBundle { reason: &'static str },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use Error::*;
        match self {
            Json { role, error } => write!(f, "{role}: {error}"),
            Field { role, field } => write!(f, "{role}: missing or malformed field `{field}`"),
            WrongType { expected, found } => {
                write!(f, "expected _type \"{expected}\", found \"{found}\"")
            }
            UnsupportedSpecVersion { role, found } => {
                write!(f, "{role}: spec_version \"{found}\" is not 1.x")
            }
            BadExpires { role } => write!(f, "{role}: expires is not YYYY-MM-DDTHH:MM:SSZ"),
            BadKey { keyid, reason } => write!(f, "key {keyid}: {reason}"),
            TooManyKeys { role, count } => {
                write!(f, "{role}: lists {count} keys, more than the limit")
            }
            BadThreshold {
                role,
                threshold,
                keys,
            } => {
                write!(
                    f,
                    "{role}: threshold {threshold} cannot be met with {keys} distinct keys"
                )
            }
            ThresholdNotMet {
                role,
                threshold,
                valid,
            } => {
                write!(f, "{role}: {valid} valid signatures from distinct authorized keys, threshold is {threshold}")
            }
            RootVersionNotNext { trusted, received } => {
                write!(
                    f,
                    "root version {received} does not follow trusted version {trusted}"
                )
            }
            TooManyRootRotations { cap } => {
                write!(f, "more than {cap} root rotations in one update")
            }
            Rollback {
                role,
                trusted,
                received,
            } => {
                write!(
                    f,
                    "{role}: version {received} is older than trusted version {trusted} (rollback)"
                )
            }
            VersionMismatch {
                role,
                expected,
                received,
            } => {
                write!(
                    f,
                    "{role}: version {received}, but {expected} was referenced"
                )
            }
            MissingFromSnapshot { role } => write!(f, "new snapshot no longer lists {role}"),
            NotInSnapshot { role } => write!(f, "{role} is not listed in the trusted snapshot"),
            Expired { role, expires, now } => {
                let (expires, now) = (Date(*expires), Date(*now));
                write!(f, "{role}: expired at {expires} (update started at {now})")
            }
            LengthMismatch {
                what,
                expected,
                received,
            } => {
                write!(f, "{what}: length {received}, expected {expected}")
            }
            HashMismatch { what, algorithm } => {
                write!(f, "{what}: {algorithm} hash does not match")
            }
            NoSupportedHash { what } => write!(f, "{what}: no sha256 or sha512 hash listed"),
            TooLarge { what, limit } => write!(f, "{what}: more than {limit} bytes"),
            StorageTooSmall {
                role,
                capacity,
                needed,
            } => {
                write!(
                    f,
                    "{role}: {needed} bytes do not fit the {capacity}-byte storage"
                )
            }
            WrongOrder {
                operation,
                requires,
            } => write!(f, "{operation} requires {requires} first"),
            OnlineKeysRotated => f.write_str(
                "the stored timestamp no longer verifies (rotated keys): the stored snapshot is \
                 not used either (spec 5.3.11)",
            ),
            ExpiredRoot { expires, now } => {
                let (expires, now) = (Date(*expires), Date(*now));
                write!(f, "root expired at {expires} (update started at {now})")
            }
            DelegationTooDeep { role } => write!(f, "delegation to {role} nested too deep"),
            TooManyDelegations { cap } => write!(f, "more than {cap} delegated roles visited"),
            UnsafeName { name } => write!(f, "unsafe role or target name {name:?}"),
            BadSuccinctRoles { reason } => write!(f, "succinct_roles: {reason}"),
            Policy(p) => write!(f, "{p}"),
            NoRollbackRole => write!(f, "targets delegates to no rollback role"),
            NotForThisDevice { device } => {
                write!(f, "rollback authorization does not name device {device}")
            }
            AuthorizationTargetMismatch {
                authorized,
                requested,
            } => {
                write!(
                    f,
                    "rollback authorization is for {authorized}, not {requested}"
                )
            }
            AuthorizationInstalledMismatch {
                authorized,
                running,
            } => {
                write!(f, "rollback authorization is for devices running {authorized}, this one runs {running}")
            }
            AuthorizationTooLong { validity, .. } if *validity <= 0 => write!(
                f,
                "rollback authorization expires before it is issued ({validity} s)"
            ),
            AuthorizationTooLong { max, validity } => {
                write!(
                    f,
                    "rollback authorization valid for {validity} s, more than the {max} s allowed"
                )
            }
            AuthorizationAhead { ahead, leeway } => write!(
                f,
                "rollback authorization issued {ahead} s after this clock's time, more than the \
                 {leeway} s allowed: it is dated ahead of this clock (check the clock here and \
                 the signer's)"
            ),
            AuthorizationUsed { issued, last } => write!(
                f,
                "rollback authorization issued at {} is not newer than the last one this device \
                 used (issued at {}): each is used once; ask for a new one",
                Date(*issued),
                Date(*last)
            ),
            BadBundle { reason } => write!(f, "bundle: {reason}"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for Error {}

impl From<PolicyError> for Error {
    fn from(p: PolicyError) -> Self {
        Error::Policy(p)
    }
}

/// `Err(e)` built out of line: a `?` whose callee's `Result` is laid out differently from the
/// caller's copies the ~136-byte [`Error`] field by field at every exit; [`pass!`] hands it to
/// this one copy instead.
#[inline(never)]
pub(crate) fn pass_err<T>(e: Error) -> Result<T, Error> {
    Err(e)
}

/// `r?` for a `Result<_, Error>` in a function returning `Result<_, Error>`, through
/// [`pass_err`].
macro_rules! pass {
    ($r:expr) => {
        match $r {
            Ok(v) => v,
            Err(e) => return $crate::error::pass_err(e),
        }
    };
}
pub(crate) use pass;

/// A time in an error message: `YYYY-MM-DDTHH:MM:SSZ` (UTC), or the Unix seconds when out of
/// that range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Date(pub UnixTime);

impl fmt::Display for Date {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; 20];
        match crate::time::format_expires(self.0, &mut buf) {
            Some(s) => f.write_str(s),
            None => write!(f, "{} (unix seconds)", self.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rollback_refusals_say_dates_and_what_to_check() {
        extern crate std;
        use std::string::ToString;
        assert_eq!(
            Error::AuthorizationUsed {
                issued: 1_795_000_000,
                last: 1_795_003_600
            }
            .to_string(),
            "rollback authorization issued at 2026-11-18T11:06:40Z is not newer than the last \
             one this device used (issued at 2026-11-18T12:06:40Z): each is used once; ask for a \
             new one"
        );
        assert_eq!(
            Error::AuthorizationTooLong {
                max: 86_400,
                validity: 115_200
            }
            .to_string(),
            "rollback authorization valid for 115200 s, more than the 86400 s allowed"
        );
        assert_eq!(
            Error::AuthorizationAhead {
                ahead: 43_200,
                leeway: 3_600
            }
            .to_string(),
            "rollback authorization issued 43200 s after this clock's time, more than the 3600 s \
             allowed: it is dated ahead of this clock (check the clock here and the signer's)"
        );
        assert_eq!(
            Error::AuthorizationTooLong {
                max: 86_400,
                validity: -60
            }
            .to_string(),
            "rollback authorization expires before it is issued (-60 s)"
        );
    }

    #[test]
    fn error_names_are_short_and_marked_when_truncated() {
        let long = "a-delegated-role-name-longer-than-thirty-two-bytes";
        let n = Name::new(long);
        assert!(n.is_truncated());
        assert_eq!(n.as_str(), &long[..MAX_ERROR_NAME_LEN]);
        assert!(n != long);
        let r = RoleName::new(long);
        assert!(!r.is_truncated());
        assert!(r == long);
        assert_eq!(Name::from(r), n);
        // never cut a character in half
        let s = "ééééééééééééééééé"; // 17 × 2 bytes
        let n = Name::new(s);
        assert!(n.is_truncated());
        assert_eq!(n.as_str().len(), 32);
        let odd = "xééééééééééééééééé";
        assert_eq!(Name::new(odd).as_str().len(), 31);
        // a role name too long for the search stack is marked, so it is never used as a key
        let huge = [b'r'; MAX_NAME_LEN + 1];
        let huge = core::str::from_utf8(&huge).unwrap_or("");
        assert!(RoleName::new(huge).is_truncated());
        assert!(Name::from(RoleName::new(huge)).is_truncated());
    }
}
