//! Rollback authorizations on the device: the [`RollbackHook`] that lets a pump go back to an
//! older image only when hale-core verified a document signed by a threshold of the `rollback`
//! role (see [`hale_core::rollback`]).
//!
//! The hook holds the authorization's bytes (from a bundle, a technician's link or the host's
//! `--authorization` file), the device's own ID and group, and the largest validity the device
//! accepts. The agent consults it only for a downgrade; a verified authorization lifts the
//! "newer than running" rule and nothing else — [`hale_core::policy::evaluate`] still refuses an
//! image below the security counter, for other hardware or for a newer bootloader. A refused
//! authorization is the exact hale-core error ([`crate::AgentError::Authorization`]), never a
//! silent "no".
//!
//! No heap: what verified ([`Authorization`]: header, issued, reason, target) borrows the bytes
//! the hook holds, so the host can report it after the install.

use hale_core::metadata::{Envelope, Targets};
use hale_core::rollback::{
    rollback_keys, verify_authorization, Authorization, Request, AUTHORIZATION_TYPE,
    DEFAULT_MAX_VALIDITY,
};
use hale_core::verify::{check_signatures, Report};
use hale_core::{Error, UnixTime};

use crate::agent::{Downgrade, RollbackHook};

/// A rollback authorization the device was handed, checked when a downgrade is offered.
#[derive(Debug, Clone)]
pub struct RollbackAuthorization<'a> {
    bytes: &'a [u8],
    device_id: &'a str,
    group: Option<&'a str>,
    max_validity: i64,
    verified: Option<Authorization<'a>>,
}

impl<'a> RollbackAuthorization<'a> {
    /// `bytes` as an authorization for the device `device_id` (member of `group`, if any),
    /// accepting at most [`DEFAULT_MAX_VALIDITY`] between `issued` and `expires`.
    pub fn new(bytes: &'a [u8], device_id: &'a str, group: Option<&'a str>) -> Self {
        RollbackAuthorization {
            bytes,
            device_id,
            group,
            max_validity: DEFAULT_MAX_VALIDITY,
            verified: None,
        }
    }

    /// The device's configured maximum validity, in seconds.
    pub fn with_max_validity(mut self, seconds: i64) -> Self {
        self.max_validity = seconds;
        self
    }

    /// The authorization bytes this hook holds.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// What verified at the last downgrade (`None` if none was offered or it was refused).
    pub fn verified(&self) -> Option<&Authorization<'a>> {
        self.verified.as_ref()
    }
}

impl RollbackHook for RollbackAuthorization<'_> {
    fn authorize_downgrade(
        &mut self,
        targets: &Targets<'_>,
        downgrade: &Downgrade<'_>,
        now: UnixTime,
    ) -> Result<Option<UnixTime>, Error> {
        self.verified = None;
        let request = Request {
            device_id: self.device_id,
            group: self.group,
            running: downgrade.device.running,
            target: downgrade.target,
            target_sha256: downgrade.sha256,
            last_used: downgrade.last_used,
        };
        verify_authorization(targets, self.bytes, &request, now, self.max_validity).map(|a| {
            self.verified = Some(a);
            Some(a.issued)
        })
    }
}

/// An optional hook: `None` holds no authorization (downgrades refused).
impl<H: RollbackHook> RollbackHook for Option<H> {
    fn authorize_downgrade(
        &mut self,
        targets: &Targets<'_>,
        downgrade: &Downgrade<'_>,
        now: UnixTime,
    ) -> Result<Option<UnixTime>, Error> {
        match self {
            Some(h) => h.authorize_downgrade(targets, downgrade, now),
            None => Ok(None),
        }
    }
}

/// Which of the `rollback` role's keys signed `bytes`, per the trusted top-level `targets`
/// (for the report after a rollback; deciding is [`verify_authorization`]'s job).
pub fn signers(targets: &Targets<'_>, bytes: &[u8]) -> Result<Report, Error> {
    let keys = rollback_keys(targets)?;
    let env = Envelope::parse(bytes, AUTHORIZATION_TYPE)?;
    check_signatures(&env, &keys)
}
