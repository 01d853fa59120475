//! One update check: hale-core decides, the agent fetches, gates and writes.

use core::fmt;

use hale_core::metadata::{parse_header, Envelope, MetaFile, TargetFile, Targets};
use hale_core::policy::{self, Device, PolicyError, Version};
use hale_core::slots::{Image, SlotError, SlotState, Slots};
use hale_core::trusted::{RoleSource, SearchError};
use hale_core::{Error, Freshness, Name, Role, Storage, TrustedSet, UnixTime, Update};
use heapless::String as HString;

use crate::store::{version_fits, Conclusion, Durable, FirmwareStore, LastCheck, Meta, StoreError};
use crate::transport::Transport;

/// What the device knows about itself.
#[derive(Debug, Clone, Copy)]
pub struct DeviceInfo<'a> {
    pub model: &'a str,
    pub revision: &'a str,
    pub bootloader: Version,
    /// The target path this device installs (e.g. `pump-a/firmware.bin`).
    pub target: &'a str,
    /// The target a held rollback authorization names, read from it unverified only to know what
    /// to look up: looked up instead of `target`, and installed only as the downgrade that
    /// authorization verifies. An image there that is not older than the running one is refused
    /// ([`AgentError::NotARollback`]): unsigned text never chooses an upgrade.
    pub rollback_target: Option<&'a str>,
}

/// Why the application will not let an install start now.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeferReason {
    /// Insulin (or another therapy) is being delivered.
    TherapyRunning,
    /// Not enough energy to finish writing and rebooting.
    LowBattery,
    /// Another reason the application names.
    Other(&'static str),
}

impl DeferReason {
    pub fn as_str(&self) -> &'static str {
        match self {
            DeferReason::TherapyRunning => "therapy running",
            DeferReason::LowBattery => "battery low",
            DeferReason::Other(s) => s,
        }
    }
}

impl fmt::Display for DeferReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The device application's say in updates.
pub trait Application {
    /// Is it safe to start installing now? Never while therapy is being delivered.
    fn safe_to_install(&mut self) -> Result<(), DeferReason>;
}

/// A downgrade the verified metadata offers: what a rollback authorization must name.
#[derive(Debug, Clone, Copy)]
pub struct Downgrade<'a> {
    /// The target path and its sha256, both from verified targets metadata.
    pub target: &'a str,
    pub sha256: [u8; 32],
    /// The device as policy sees it (its `running` version is what the image would replace).
    pub device: &'a Device<'a>,
    /// Version of the offered (older or equal) image.
    pub offered: Version,
    /// `issued` of the last rollback authorization this device staged an image by (0: none):
    /// only a later one is accepted.
    pub last_used: UnixTime,
}

/// Where a signed rollback authorization is checked ([`crate::rollback::RollbackAuthorization`]).
///
/// Consulted only when policy refused the offered image as not newer than the running one. It
/// lifts that rule and nothing else: the security counter, hardware and bootloader checks stand.
pub trait RollbackHook {
    /// `Ok(Some(issued))`: a rollback authorization verified by hale-core against the trusted
    /// top-level `targets` at `now` names this device and exactly this image, and was issued
    /// (`issued`) after the last one it used ([`Downgrade::last_used`]); the agent records it
    /// when the image is staged. `Ok(None)`: the hook holds no authorization (the downgrade is
    /// refused as `NotNewer`). `Err`: it holds one and hale-core refused it — reported as
    /// [`AgentError::Authorization`].
    fn authorize_downgrade(
        &mut self,
        targets: &Targets<'_>,
        downgrade: &Downgrade<'_>,
        now: UnixTime,
    ) -> Result<Option<UnixTime>, Error>;
}

/// No rollback authorizations: downgrades are always refused.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoRollback;

impl RollbackHook for NoRollback {
    fn authorize_downgrade(
        &mut self,
        _: &Targets<'_>,
        _: &Downgrade<'_>,
        _: UnixTime,
    ) -> Result<Option<UnixTime>, Error> {
        Ok(None)
    }
}

/// Buffers for one update check (the caller's: static on a microcontroller).
#[derive(Debug)]
pub struct Workspace<'w> {
    /// The trusted set's four role buffers.
    pub metadata: Storage<&'w mut [u8]>,
    /// Incoming metadata (as large as the largest role).
    pub scratch: &'w mut [u8],
    /// One block of a target: a multiple of the flash write size that divides the erase size.
    pub chunk: &'w mut [u8],
    /// Delegated roles held during a target search (may be empty without delegations).
    pub delegations: &'w mut [u8],
}

/// What a check did, when nothing went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The running image is what the repository offers.
    UpToDate { running: Version },
    /// A verified image is in the inactive slot, pending: reboot to try it.
    Staged { version: Version },
    /// The application said not now, and nothing will boot that was not booting: either nothing
    /// was written to a slot, or (the answer changed while the image was written) the verified
    /// image waits in the inactive slot, not bootable, for the next check that may install it.
    Deferred {
        offered: Version,
        reason: DeferReason,
    },
    /// An image is on trial: nothing is checked or staged until it is confirmed or reverted.
    TrialRunning { version: Version },
    /// An image is staged and waits for the reboot that tries it.
    AwaitingReboot { version: Version },
}

/// Why a check did not stage anything. The device keeps running its verified image.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentError<T, F> {
    /// The transport failed fetching `what`.
    Transport { what: Name, error: T },
    /// A file the workflow needs is not in the repository.
    Missing { what: Name },
    /// The firmware store (flash) failed.
    Store(StoreError<F>),
    /// hale-core refused metadata or image bytes.
    Trust(Error),
    /// hale-core refused the rollback authorization offered for a downgrade.
    Authorization(Error),
    /// The verified target is not for this device, or not acceptable.
    Policy(PolicyError),
    /// The slot machine refused (e.g. a trial is running).
    Slot(SlotError),
    /// The verified metadata does not list this device's target.
    TargetNotListed { target: Name },
    /// The target lists no sha256 (needed to re-verify the slot at every boot).
    NoSha256 { target: Name },
    /// This exact image failed its trial on this device before, or an authorized rollback
    /// replaced it: not installed again.
    PreviouslyReverted { version: Version },
    /// The target a rollback authorization names is not older than the running image: it is
    /// installed only as an authorized downgrade.
    NotARollback {
        target: Name,
        offered: Version,
        running: Version,
    },
    /// The image the snapshot offers failed its hashes when it was last downloaded from this
    /// server: not downloaded again before `retry_at` unless a new snapshot comes (see
    /// [`RETRY_WRONG_BYTES`]).
    WrongBytes { retry_at: UnixTime },
    /// The download of the image the snapshot offers broke off before its next checkpoint last
    /// time (and the times before): not tried again before `retry_at` unless a new snapshot
    /// comes, as each try erases the same slot sectors (see [`retry_broken`]).
    DownloadBroken { retry_at: UnixTime },
    /// The image is larger than a slot.
    ImageTooLarge { length: u64, capacity: u32 },
    /// The image's version, printed, is longer than a slot record holds
    /// ([`crate::store::VERSION_MAX`] bytes): the device could not record what it runs.
    VersionTooLong { version: Version },
    /// A file name does not fit the agent's name buffer.
    NameTooLong { what: Name },
    /// The workspace's delegation buffer cannot hold delegated role `role`.
    DelegationSpace { role: Name },
    /// The workspace's chunk buffer does not suit the flash geometry.
    ChunkSize {
        chunk: usize,
        write: usize,
        erase: usize,
    },
}

impl<T: fmt::Display, F: fmt::Debug> fmt::Display for AgentError<T, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AgentError::Transport { what, error } => write!(f, "fetching {what}: {error}"),
            AgentError::Missing { what } => write!(f, "{what} not found in the repository"),
            AgentError::Store(e) => write!(f, "{e}"),
            AgentError::Trust(e) => write!(f, "{e}"),
            AgentError::Authorization(e) => write!(f, "rollback authorization refused: {e}"),
            AgentError::Policy(e) => write!(f, "{e}"),
            AgentError::Slot(e) => write!(f, "{e}"),
            AgentError::TargetNotListed { target } => write!(f, "target {target} is not listed"),
            AgentError::NoSha256 { target } => write!(f, "target {target} lists no sha256"),
            AgentError::PreviouslyReverted { version } => {
                // the slot state is the same for both: a trial that failed, and an image an
                // authorized rollback replaced
                write!(
                    f,
                    "version {version} is not installed again: it failed its trial here, or a \
                     technician rolled this device back from it"
                )
            }
            AgentError::NotARollback {
                target,
                offered,
                running,
            } => write!(
                f,
                "{target} {offered} is not older than running {running}: a rollback authorization's target installs only as the downgrade it authorizes"
            ),
            AgentError::WrongBytes { retry_at } => write!(
                f,
                "the image on offer did not match its hashes when last downloaded: not downloaded again before {retry_at} (Unix time) or a new snapshot"
            ),
            AgentError::DownloadBroken { retry_at } => write!(
                f,
                "the download of the image on offer broke off before its next checkpoint last time: not tried again before {retry_at} (Unix time) or a new snapshot, to spare the flash"
            ),
            AgentError::ImageTooLarge { length, capacity } => write!(
                f,
                "image of {length} bytes exceeds the {capacity}-byte slot"
            ),
            AgentError::VersionTooLong { version } => write!(
                f,
                "version {version} is longer than the {} bytes a slot record holds: this device cannot install it",
                crate::store::VERSION_MAX
            ),
            AgentError::NameTooLong { what } => write!(f, "file name for {what} too long"),
            AgentError::DelegationSpace { role } => {
                write!(f, "no room left to hold delegated role {role}")
            }
            AgentError::ChunkSize {
                chunk,
                write,
                erase,
            } => {
                write!(
                    f,
                    "chunk of {chunk} bytes must be a multiple of {write} dividing {erase}"
                )
            }
        }
    }
}

#[cfg(feature = "std")]
impl<T: fmt::Debug + fmt::Display, F: fmt::Debug> std::error::Error for AgentError<T, F> {}

impl<T, F> From<Error> for AgentError<T, F> {
    fn from(e: Error) -> Self {
        AgentError::Trust(e)
    }
}

impl<T, F> From<StoreError<F>> for AgentError<T, F> {
    fn from(e: StoreError<F>) -> Self {
        AgentError::Store(e)
    }
}

type Res<T, Tr, F> = Result<
    T,
    AgentError<<Tr as Transport>::Error, <F as embedded_storage::nor_flash::ErrorType>::Error>,
>;

/// `Err(AgentError::Trust(e))` built out of line: a `?` on a hale-core `Result` copies the
/// ~136-byte [`Error`] into the caller's differently laid out `Result` at every exit;
/// [`trust!`] hands it to this one copy (per result type) instead.
#[inline(never)]
fn trust_err<T, E, S>(e: Error) -> Result<T, AgentError<E, S>> {
    Err(AgentError::Trust(e))
}

/// `r?` for a hale-core `Result<_, Error>` in a function returning `Result<_, AgentError>`
/// (the error as [`AgentError::Trust`]), through [`trust_err`].
macro_rules! trust {
    ($r:expr) => {
        match $r {
            Ok(v) => v,
            Err(e) => return trust_err(e),
        }
    };
}

const NAME_CAP: usize = 256;

/// How long an image whose downloaded bytes failed their hashes is not downloaded again from
/// the same server and snapshot (one day): each try erases and writes the slot and records
/// checkpoints, and a server, CDN or proxy that served wrong bytes once likely serves them again.
/// At one try a day, a server left wrong costs each slot sector 365 erases a year, and the state
/// regions a record per checkpoint and four more a day (see `docs/decisions.md`); a new snapshot
/// (any new release) is tried at once, and so is an offline bundle.
pub const RETRY_WRONG_BYTES: UnixTime = 86_400;

/// The first wait after a download broke off before its next checkpoint, having erased slot
/// sectors the next try erases again (five minutes); it doubles with every such break in a row,
/// up to [`RETRY_WRONG_BYTES`]. A download that breaks at the same byte every time (a proxy's
/// size limit, a server that always drops the connection there) so costs the sector it breaks in
/// nine erases the first day and one a day after, where a poll a minute cost up to 16 sectors
/// 1,440 erases a day each (a NOR sector lasts about 100,000). A break that completed a sector
/// is progress (a checkpoint is committed there) and waits for nothing, nor does one before any
/// sector was erased.
pub const RETRY_BROKEN_FIRST: UnixTime = 300;

/// The most breaks in a row counted ([`crate::Conclusion::Broken`]); the wait stops growing
/// before this.
pub const BROKEN_TRIES_MAX: u8 = 9;

/// The wait after the `tries + 1`-th download in a row that broke off before its next
/// checkpoint: [`RETRY_BROKEN_FIRST`] doubled `tries` times, at most [`RETRY_WRONG_BYTES`].
pub fn retry_broken(tries: u8) -> UnixTime {
    (RETRY_BROKEN_FIRST << tries.min(BROKEN_TRIES_MAX)).min(RETRY_WRONG_BYTES)
}

/// `[N.]role.json` into `s` (cleared first); `None` when it does not fit. Written in place: a
/// returned `String<256>` is copied twice at every call site on a Cortex-M.
fn meta_name<'s>(
    s: &'s mut HString<NAME_CAP>,
    role: &str,
    version: Option<u64>,
) -> Option<&'s str> {
    s.clear();
    if let Some(v) = version {
        let mut digits = [0u8; 20];
        s.push_str(crate::store::decimal(v, &mut digits)).ok()?;
        s.push('.').ok()?;
    }
    s.push_str(role).ok()?;
    s.push_str(".json").ok()?;
    Some(s.as_str())
}

/// The served file name of target `path`: `dir/<sha256>.base` with consistent snapshots.
pub fn target_file_name(
    path: &str,
    sha256: &[u8; 32],
    consistent: bool,
) -> Option<HString<NAME_CAP>> {
    let mut s: HString<NAME_CAP> = HString::new();
    write_target_file_name(&mut s, path, sha256, consistent)?;
    Some(s)
}

/// [`target_file_name`] into `s` (empty).
fn write_target_file_name(
    s: &mut HString<NAME_CAP>,
    path: &str,
    sha256: &[u8; 32],
    consistent: bool,
) -> Option<()> {
    if !consistent {
        return s.push_str(path).ok();
    }
    let (dir, base) = match path.rsplit_once('/') {
        Some((d, b)) => (Some(d), b),
        None => (None, path),
    };
    if let Some(d) = dir {
        s.push_str(d).ok()?;
        s.push('/').ok()?;
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in sha256 {
        for nibble in [b >> 4, b & 0xF] {
            s.push(char::from(*HEX.get(usize::from(nibble))?)).ok()?;
        }
    }
    s.push('.').ok()?;
    s.push_str(base).ok()
}

/// Fetch `name` into `buf`; `Missing` when the repository has no such file.
fn fetch_required<'b, T: Transport, E>(
    t: &mut T,
    name: &str,
    buf: &'b mut [u8],
) -> Result<&'b [u8], AgentError<T::Error, E>> {
    match t.fetch_metadata(name, buf) {
        Ok(Some(n)) => buf.get(..n).ok_or_else(|| AgentError::Missing {
            what: Name::new(name),
        }),
        Ok(None) => Err(AgentError::Missing {
            what: Name::new(name),
        }),
        Err(error) => Err(AgentError::Transport {
            what: Name::new(name),
            error,
        }),
    }
}

/// Ask ahead for the root after the stored one and for the timestamp, `refresh`'s first two
/// requests (the timestamp comes after the last root of the chain, and its name is always the
/// same), so that their answers travel while `TrustedSet::new` checks the stored root: one round
/// trip for both. Only the first request's name is read from the bytes before they are
/// checked; a stored root that fails its check ends the check with the answers unread, and one
/// that cannot be read asks nothing ahead (and ends the check).
fn ask_next_root<T: Transport>(transport: &mut T, root: &[u8]) {
    let Ok(header) = Envelope::parse(root, "root")
        .and_then(|env| parse_header(&env.signed, "root", Name::empty()))
    else {
        return;
    };
    let mut name = HString::new();
    if let Some(name) = meta_name(&mut name, "root", Some(header.version.saturating_add(1))) {
        transport.ask_ahead(&[name, "timestamp.json"]);
    }
}

/// What the flash holds of a role, for deciding whether a request may be asked ahead.
enum Stored {
    /// Nothing: the check fetches the role when it gets that far.
    Nothing,
    /// This version.
    Version(u64),
    /// Not known here (it does not fit the buffer, or cannot be read or parsed): nothing is
    /// asked ahead on it.
    Unknown,
}

/// The version of the stored metadata of `role` (its header, read into `buf`, not verified: it
/// only decides whether to ask ahead, and the check verifies what it then reads).
fn stored_version<F: Durable>(
    store: &mut FirmwareStore<F>,
    role: Role,
    kind: &'static str,
    buf: &mut [u8],
) -> Stored {
    match store.read_metadata(role, buf) {
        Ok(None) => Stored::Nothing,
        Ok(Some(bytes)) => match Envelope::parse(bytes, kind)
            .and_then(|env| parse_header(&env.signed, kind, Name::empty()))
        {
            Ok(header) => Stored::Version(header.version),
            Err(_) => Stored::Unknown,
        },
        Err(_) => Stored::Unknown,
    }
}

/// Ask ahead for `role` at `version` (`N.role.json` with consistent snapshots) when the check
/// will fetch it, the stored copy being another version or none, if the answer that named it
/// verifies: see [`refresh`].
fn ask_role_ahead<F: Durable, T: Transport>(
    store: &mut FirmwareStore<F>,
    transport: &mut T,
    role: Role,
    kind: &'static str,
    version: u64,
    consistent: bool,
    spare: &mut [u8],
) {
    let fetched = match stored_version(store, role, kind, spare) {
        Stored::Nothing => true,
        Stored::Version(v) => v != version,
        Stored::Unknown => false,
    };
    let mut name = HString::new();
    if let Some(name) =
        meta_name(&mut name, kind, consistent.then_some(version)).filter(|_| fetched)
    {
        transport.ask_ahead(&[name]);
    }
}

/// Delegated roles from the transport, each kept in its own piece of the arena.
struct Delegated<'t, 'w, T> {
    transport: &'t mut T,
    arena: &'w mut [u8],
    consistent: bool,
    /// Earliest `expires` of the roles fetched. Read only after `find_target` succeeded, when
    /// each of them has been verified.
    expires: UnixTime,
}

/// Why a delegated role could not be fetched.
#[derive(Debug)]
enum RoleFetch<E> {
    Transport(Name, E),
    Missing(Name),
    ArenaFull(Name),
}

impl<'w, T: Transport> RoleSource for Delegated<'_, 'w, T> {
    type Buf = &'w [u8];
    type Error = RoleFetch<T::Error>;

    fn fetch_role(&mut self, name: &str, meta: &MetaFile<'_>) -> Result<&'w [u8], Self::Error> {
        let what = Name::new(name);
        let mut file = HString::new();
        let file = meta_name(&mut file, name, self.consistent.then_some(meta.version))
            .ok_or_else(|| RoleFetch::ArenaFull(what))?;
        let arena = core::mem::take(&mut self.arena);
        let cap = meta
            .length
            .map_or(arena.len(), |l| (l as usize).min(arena.len()));
        if meta.length.is_some_and(|l| l as usize > arena.len()) {
            self.arena = arena;
            return Err(RoleFetch::ArenaFull(what));
        }
        let (head, _) = arena.split_at_mut(cap);
        let got = match self.transport.fetch_metadata(file, head) {
            Ok(Some(n)) => n.min(cap),
            Ok(None) => return Err(RoleFetch::Missing(what)),
            Err(e) => return Err(RoleFetch::Transport(what, e)),
        };
        let arena_len = arena.len();
        let (used, rest) = arena.split_at_mut(got.min(arena_len));
        self.arena = rest;
        if let Ok(h) = Envelope::parse(used, name)
            .and_then(|env| parse_header(&env.signed, "targets", Name::empty()))
        {
            self.expires = self.expires.min(h.expires);
        }
        Ok(used)
    }
}

/// Run one update check. On `Ok(Staged)` the image waits in the inactive slot; the caller
/// reboots when the application allows, runs [`FirmwareStore::boot`], and the application
/// calls [`FirmwareStore::confirm`] after its health checks.
///
/// `clock` is the device's time at the start of the update. Every expiry check runs at it, or
/// at the store's time floor when the clock is behind it ([`hale_core::time::check_time`]): the
/// latest time an earlier check showed to be past, which this check raises
/// ([`FirmwareStore::time_floor`]). On any error the device keeps its running image, trusted
/// metadata stays what verified, and an interrupted download resumes from its last checkpoint
/// at the next check.
#[allow(clippy::too_many_arguments)]
pub fn check_for_update<F: Durable, T: Transport, A: Application, R: RollbackHook>(
    store: &mut FirmwareStore<F>,
    device: &DeviceInfo<'_>,
    transport: &mut T,
    app: &mut A,
    rollback: &mut R,
    clock: UnixTime,
    ws: Workspace<'_>,
) -> Res<Outcome, T, F> {
    let now = store.check_time(clock);
    let outcome = check(store, device, transport, app, rollback, now, ws);
    // a floor an hour past the recorded one is recorded by itself (a record carries it anyway);
    // a flash failure comes before the outcome: the device must hear of it
    store.record_time_floor_when_due()?;
    outcome
}

/// [`check_for_update`] at `now`, the time its checks run at.
#[allow(clippy::too_many_arguments)]
fn check<F: Durable, T: Transport, A: Application, R: RollbackHook>(
    store: &mut FirmwareStore<F>,
    device: &DeviceInfo<'_>,
    transport: &mut T,
    app: &mut A,
    rollback: &mut R,
    now: UnixTime,
    ws: Workspace<'_>,
) -> Res<Outcome, T, F> {
    let slots = store.slots();
    if let Some(slot) = slots.in_trial() {
        let info = slots.info(slot);
        let version = info.image.map_or(Version::new(0, 0, 0), |i| i.version);
        return Ok(match info.state {
            SlotState::Pending => Outcome::AwaitingReboot { version },
            _ => Outcome::TrialRunning { version },
        });
    }
    let Some(running) = slots.running() else {
        return Err(AgentError::Slot(SlotError::NoFallback {
            slot: slots.active(),
            state: slots.info(slots.active()).state,
        }));
    };
    if ws.chunk.is_empty()
        || ws.chunk.len() % F::WRITE_SIZE != 0
        || F::ERASE_SIZE % ws.chunk.len() != 0
    {
        return Err(AgentError::ChunkSize {
            chunk: ws.chunk.len(),
            write: F::WRITE_SIZE,
            erase: F::ERASE_SIZE,
        });
    }
    let Workspace {
        metadata,
        scratch,
        chunk,
        delegations,
    } = ws;

    // the stored trusted root; `refresh` walks the chain from it
    let root = store
        .read_metadata(Role::Root, scratch)?
        .ok_or_else(|| AgentError::Missing {
            what: Name::new("trusted root"),
        })?;
    if transport.asks_ahead() {
        ask_next_root(transport, root);
    }
    // (the root and timestamp the last check in this boot verified are not checked again)
    let mut set = trust!(TrustedSet::resume(metadata, root, now, store.seal()));
    // a last check's "up to date" is about `device.target`: a rollback looks up another target
    // (and must verify its authorization), so it neither stops at it nor records one
    let channel = device.rollback_target.is_none();
    let mut verified = 0;
    // (staging records the metadata without it: a break counts on from this one; a refresh
    // that fails keeps it, unless a new root verified)
    let previous = store.last_check();
    // (the larger of the two buffers the target search and the download use later; none
    // without asks)
    let spare: &mut [u8] = if !transport.asks_ahead() {
        &mut []
    } else if delegations.len() >= chunk.len() {
        &mut *delegations
    } else {
        &mut *chunk
    };
    let refreshed = refresh(
        store,
        transport,
        &mut set,
        scratch,
        spare,
        &running.sha256,
        channel,
        &mut verified,
    );
    // whatever `refresh` ended in, the set holds a root and timestamp it verified (bound to
    // their bytes: the next check reads them back from the record, or verifies what it reads)
    store.keep_seal(set.seal());
    store.raise_time_floor(set.time_passed());
    let mut unrecorded = match refreshed {
        Ok(Refreshed::Unchanged) => {
            return match store.last_check() {
                Some(LastCheck {
                    conclusion: Conclusion::WrongBytes,
                    valid_until,
                    ..
                }) => Err(AgentError::WrongBytes {
                    retry_at: valid_until,
                }),
                Some(LastCheck {
                    conclusion: Conclusion::Broken { .. },
                    valid_until,
                    ..
                }) => Err(AgentError::DownloadBroken {
                    retry_at: valid_until,
                }),
                _ => Ok(Outcome::UpToDate {
                    running: running.version,
                }),
            }
        }
        Ok(Refreshed::Search { unrecorded }) => unrecorded,
        Err(e) => {
            // a new root, timestamp or snapshot that verified before the failure is kept (spec
            // §5.3.8, §5.4.5, §5.5.7): a new root must stay trusted even if the timestamp cannot
            // be had right after it (a network drop, a repository not re-signed yet), or a later
            // check, with the next root withheld, would again accept metadata signed by keys
            // that root revoked. Flash wear stays bounded: from then on it is the stored copy.
            // A flash failure comes before the outcome: the device must hear of it. What the
            // last check concluded stays (a wait for wrong bytes, a flash error while it
            // records a new timestamp) unless a new root verified: its keys may revoke what
            // that conclusion relied on.
            if verified != 0 {
                let kept = match verified & (1 << Role::Root as u8) {
                    0 => previous,
                    _ => None,
                };
                record(store, &set, verified, kept)?;
            }
            return Err(e);
        }
    };
    let mut delegated_expires = UnixTime::MAX;
    let mut failed = Failed::No;
    let outcome = install(
        store,
        device,
        transport,
        app,
        rollback,
        &set,
        &running,
        delegations,
        chunk,
        &mut delegated_expires,
        &mut unrecorded,
        &mut failed,
    );
    // what the check verified and, when it is "up to date", what it concluded: one record
    // (staging recorded the metadata before its first slot change). Image bytes from a server
    // that did not match are remembered too: not downloaded again for a while (flash wear).
    let check = match outcome {
        Ok(Outcome::UpToDate { .. }) if channel => Some((Conclusion::UpToDate, delegated_expires)),
        Err(_) if failed != Failed::No && channel && transport.remote() => Some(match failed {
            Failed::Broken => {
                // one more break in a row of this download (same snapshot, same running image)
                let tries = match previous {
                    Some(LastCheck {
                        conclusion: Conclusion::Broken { tries },
                        snapshot_version,
                        running_sha256,
                        ..
                    }) if running_sha256 == running.sha256
                        && set.snapshot().map(|s| s.header.version) == Some(snapshot_version) =>
                    {
                        tries.saturating_add(1).min(BROKEN_TRIES_MAX)
                    }
                    _ => 0,
                };
                (
                    Conclusion::Broken { tries },
                    now.saturating_add(retry_broken(tries)),
                )
            }
            _ => (
                Conclusion::WrongBytes,
                now.saturating_add(RETRY_WRONG_BYTES),
            ),
        }),
        _ => None,
    }
    .map(|c| {
        store.start_wait();
        conclude(&set, running.sha256, c)
    })
    .transpose()?;
    if unrecorded || store.last_check() != check {
        // a flash failure comes before the outcome: the device must hear of it
        let roles = if unrecorded { ALL_ROLES } else { 0 };
        record(store, &set, roles, check)?;
    }
    outcome
}

/// A failed staging the next checks remember, as each try costs the flash erases.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Failed {
    No,
    /// The server's bytes did not match ([`RETRY_WRONG_BYTES`]).
    WrongBytes,
    /// The download broke off before a new checkpoint, after erasing ([`retry_broken`]).
    Broken,
}

/// The wait a remembered failure sets, at most: a valid-until further away than this from the
/// check's time was set by a clock that ran ahead, and is not waited for. (A wait recorded with
/// a time floor never is: the floor is at least the time it was set. One recorded without, by
/// an agent before the floor, may be.)
fn longest_wait(c: Conclusion) -> UnixTime {
    match c {
        Conclusion::Broken { tries } => retry_broken(tries),
        _ => RETRY_WRONG_BYTES,
    }
}

/// What `refresh` leaves to its caller.
enum Refreshed {
    /// Nothing changed since a check that concluded this ("up to date", or wrong image bytes
    /// not to be downloaded again yet) about the running image: the check stops after the
    /// timestamp.
    Unchanged,
    /// The target search follows. `unrecorded`: metadata verified by this check, or the end of
    /// a last check it does not confirm, is still to be recorded ([`record`]).
    Search { unrecorded: bool },
}

/// What the check of the current snapshot concluded about the running image ("up to date", or
/// wrong image bytes), remembered until `until` or the earliest expiry of what it relied on.
fn conclude<E, S>(
    set: &TrustedSet<&mut [u8]>,
    running_sha256: [u8; 32],
    (conclusion, until): (Conclusion, UnixTime),
) -> Result<LastCheck, AgentError<E, S>> {
    let missing = || Error::WrongOrder {
        operation: "remember the check",
        requires: "snapshot and targets",
    };
    let snapshot = set.snapshot().ok_or_else(missing)?;
    let targets = set.targets().ok_or_else(missing)?;
    Ok(LastCheck {
        snapshot_version: snapshot.header.version,
        running_sha256,
        valid_until: snapshot
            .header
            .expires
            .min(targets.header.expires)
            .min(until),
        conclusion,
    })
}

/// Every role, for [`record`].
const ALL_ROLES: u8 = 0b1111;

/// One record: the last check `check`, and the roles in `roles` (bits by [`Role`]) as `set`
/// verified them, the other stored ones kept.
#[inline(never)]
fn record<F: Durable>(
    store: &mut FirmwareStore<F>,
    set: &TrustedSet<&mut [u8]>,
    roles: u8,
    check: Option<LastCheck>,
) -> Result<(), StoreError<F::Error>> {
    let meta = |r: Role| match roles & (1 << r as u8) {
        0 => Meta::Keep,
        _ => Meta::Set(set.stored(r).unwrap_or(&[])),
    };
    store.record_check(
        check,
        [
            meta(Role::Root),
            meta(Role::Timestamp),
            meta(Role::Snapshot),
            meta(Role::Targets),
        ],
    )
}

/// Find this device's target, apply policy and gating, stage it. Not inlined: its frame (the
/// delegation search stack) is never on the stack together with signature verification.
#[allow(clippy::too_many_arguments)]
#[inline(never)]
fn install<F: Durable, T: Transport, A: Application, R: RollbackHook>(
    store: &mut FirmwareStore<F>,
    device: &DeviceInfo<'_>,
    transport: &mut T,
    app: &mut A,
    rollback: &mut R,
    set: &TrustedSet<&mut [u8]>,
    running: &Image,
    delegations: &mut [u8],
    chunk: &mut [u8],
    delegated_expires: &mut UnixTime,
    unrecorded: &mut bool,
    failed: &mut Failed,
) -> Res<Outcome, T, F> {
    let slots = store.slots();
    let consistent = set.root().consistent_snapshot;
    let (lookup, rollback_only) = match device.rollback_target {
        Some(t) => (t, true),
        None => (device.target, false),
    };

    // 6. this device's target, through delegations
    let mut source = Delegated {
        transport: &mut *transport,
        arena: delegations,
        consistent,
        expires: UnixTime::MAX,
    };
    let found = match set.find_target(lookup, &mut source) {
        Ok(Some(f)) => f,
        Ok(None) => {
            return Err(AgentError::TargetNotListed {
                target: Name::new(lookup),
            })
        }
        Err(SearchError::Trust(e)) => return trust_err(e),
        Err(SearchError::Fetch(RoleFetch::Transport(what, error))) => {
            return Err(AgentError::Transport { what, error })
        }
        Err(SearchError::Fetch(RoleFetch::Missing(what))) => {
            return Err(AgentError::Missing { what })
        }
        Err(SearchError::Fetch(RoleFetch::ArenaFull(what))) => {
            return Err(AgentError::DelegationSpace { role: what })
        }
    };
    *delegated_expires = source.expires;
    let file = trust!(found.file(lookup));
    let target = Name::new(lookup);
    let sha256 = file
        .sha256()
        .ok_or_else(|| AgentError::NoSha256 { target })?;

    // 7. policy
    let dev = Device {
        model: device.model,
        revision: device.revision,
        running: running.version,
        security_counter: slots.security_counter(),
        bootloader: device.bootloader,
    };
    if sha256 == running.sha256 {
        return Ok(Outcome::UpToDate {
            running: running.version,
        });
    }
    // `issued` of the rollback authorization this install goes by, if it is a downgrade
    let mut authorized = None;
    let fw = match policy::evaluate(file.custom.as_ref(), &dev, false) {
        Ok(fw) if rollback_only => {
            return Err(AgentError::NotARollback {
                target,
                offered: fw.version,
                running: running.version,
            })
        }
        Ok(fw) => fw,
        // the running version under other bytes: "up to date" on the channel; never a rollback
        Err(PolicyError::NotNewer {
            running: r,
            offered,
        }) if offered == r => {
            if rollback_only {
                return Err(AgentError::NotARollback {
                    target,
                    offered,
                    running: r,
                });
            }
            return Ok(Outcome::UpToDate { running: r });
        }
        // a downgrade: only a verified rollback authorization lifts the version rule
        Err(e @ PolicyError::NotNewer { offered, .. }) => {
            let targets = set.targets().ok_or_else(|| Error::WrongOrder {
                operation: "rollback",
                requires: "targets",
            })?;
            let downgrade = Downgrade {
                target: lookup,
                sha256,
                device: &dev,
                offered,
                last_used: store.last_authorization(),
            };
            authorized = rollback
                .authorize_downgrade(&targets, &downgrade, set.now())
                .map_err(AgentError::Authorization)?;
            if authorized.is_none() {
                return Err(AgentError::Policy(e));
            }
            policy::evaluate(file.custom.as_ref(), &dev, true).map_err(AgentError::Policy)?
        }
        Err(e) => return Err(AgentError::Policy(e)),
    };
    if !version_fits(&fw.version) {
        return Err(AgentError::VersionTooLong {
            version: fw.version,
        });
    }
    let capacity = store.layout().slot_len;
    if file.length > u64::from(capacity) {
        return Err(AgentError::ImageTooLarge {
            length: file.length,
            capacity,
        });
    }
    let image = Image {
        version: fw.version,
        security_counter: fw.security_counter,
        length: file.length,
        sha256,
    };
    // failed its trial here, or rolled back from: never again (whichever slot held it)
    if store.refused(&sha256) {
        return Err(AgentError::PreviouslyReverted {
            version: fw.version,
        });
    }

    // 8. install gating
    if let Err(reason) = app.safe_to_install() {
        return Ok(Outcome::Deferred {
            offered: fw.version,
            reason,
        });
    }

    // the verified metadata is on flash before any slot changes
    if core::mem::take(unrecorded) {
        record(store, set, ALL_ROLES, None)?;
    }
    stage(
        store, transport, app, &file, image, lookup, consistent, chunk, authorized, failed,
    )
}

/// Stream a verified target into the inactive slot (resuming a checkpointed download of the
/// same image), hashing what is read back from flash, then mark it pending. A downgrade goes by
/// a rollback authorization (`authorized`: its `issued`), recorded as used in the record that
/// marks the image pending: an interrupted download resumes with the same authorization, and
/// once staged the authorization is spent, whatever the trial boot then decides.
///
/// The application is asked again before the image is marked pending: a pending image boots at
/// the next reset, whatever caused it, and therapy may have started while the image was written.
/// If it says not now, the image waits in the slot, complete and verified but not bootable
/// (`Staging`, its download at the end), and the first check that may install reads it back
/// from flash, hashes it again and marks it then.
///
/// Bytes that do not match abandon the staging, and set `failed` to `WrongBytes` when this check
/// fetched some of them (see [`RETRY_WRONG_BYTES`]); a download that breaks off after erasing a
/// sector, before it reached a new checkpoint, sets it to `Broken` (see [`retry_broken`]).
#[inline(never)]
#[allow(clippy::too_many_arguments)]
fn stage<F: Durable, T: Transport, A: Application>(
    store: &mut FirmwareStore<F>,
    transport: &mut T,
    app: &mut A,
    file: &TargetFile<'_>,
    image: Image,
    path: &str,
    consistent: bool,
    chunk: &mut [u8],
    authorized: Option<UnixTime>,
    failed: &mut Failed,
) -> Res<Outcome, T, F> {
    let target = Name::new(path);
    let sha256 = image.sha256;
    let slots = store.slots();
    let inactive = slots.inactive();
    let info = slots.info(inactive);
    // 9. stream into the inactive slot, resuming a checkpointed download of the same image
    let mut file_name = HString::new();
    write_target_file_name(&mut file_name, path, &sha256, consistent)
        .ok_or_else(|| AgentError::NameTooLong { what: target })?;
    let mut hasher = trust!(file.hasher(target));
    let resume = info.state == SlotState::Staging && info.image == Some(image);
    let mut offset = if resume {
        store.download_offset().min(image.length)
    } else {
        0
    };
    // a checkpoint resumes at its erase sector; a complete download (verified, and kept for
    // the application's yes) is read back whole
    if offset < image.length {
        offset -= offset % F::ERASE_SIZE as u64;
    }
    // checked now, committed once the first block is here: a download that never starts (a
    // staged rollout holding the image back, a failing server) leaves the slots as they were
    let mut begin = if resume {
        None
    } else {
        let mut next = slots;
        next.begin_staging_in_place(image)
            .map_err(AgentError::Slot)?;
        Some(next)
    };
    // re-hash what is already in flash: the hash covers the slot's bytes, not the network's
    let mut pos = 0u64;
    while pos < offset {
        let n = (offset - pos).min(chunk.len() as u64) as usize;
        let c = chunk.get_mut(..n).unwrap_or(&mut []);
        store.read_slot(inactive, pos, c)?;
        trust!(hasher.update(c));
        pos += n as u64;
    }
    let mut staging = store.slots();
    let checkpoint = store.checkpoint_interval();
    // the bytes as read back from flash either verify (pending) or the staging is abandoned
    // whether this check fetched any of the bytes (not all read back from an earlier one)
    let mut fetched = false;
    // sectors erased by this check and no checkpoint since (a break makes the next try erase
    // them again), and whether this check reached a new checkpoint (progress)
    let (mut erased, mut progress) = (false, false);
    let verified = loop {
        // (0 once the image is whole: an empty image fetches nothing)
        let n = image.length.saturating_sub(offset).min(chunk.len() as u64) as usize;
        if n > 0 {
            let c = chunk.get_mut(..n).unwrap_or(&mut []);
            if let Err(error) = transport.fetch_target(&file_name, offset, c) {
                // the sectors this check completed are kept: a checkpoint at the last one, so
                // the next try starts past them (before the first block, and so before the
                // staging is committed, `offset` is 0: nothing to keep)
                let done = offset - offset % F::ERASE_SIZE as u64;
                if done > store.download_offset() {
                    record_progress::<F, T>(store, staging, done)?;
                    progress = true;
                }
                // no sector completed: the next try erases the one begun here again
                if erased && !progress {
                    *failed = Failed::Broken;
                }
                return Err(AgentError::Transport {
                    what: target,
                    error,
                });
            }
            fetched = true;
        }
        if let Some(next) = begin.take() {
            commit_slots::<F, T>(store, next)?;
            staging = store.slots();
        }
        if n == 0 {
            break hasher.finish();
        }
        // a sector is erased once its first block is here: a server that fails (or withholds)
        // the download costs the flash no erase, however often the device polls
        if offset % F::ERASE_SIZE as u64 == 0 {
            store.erase_slot_sector(inactive, offset)?;
            erased = true;
        }
        // pad the last block to the write size with erased bytes
        let padded = n.div_ceil(F::WRITE_SIZE) * F::WRITE_SIZE;
        if let Some(pad) = chunk.get_mut(n..padded) {
            pad.fill(0xFF);
        }
        store.write_slot(inactive, offset, chunk.get(..padded).unwrap_or(&[]))?;
        let c = chunk.get_mut(..n).unwrap_or(&mut []);
        store.read_slot(inactive, offset, c)?;
        if let Err(e) = hasher.update(c) {
            break Err(e);
        }
        offset += n as u64;
        // (32-bit: a slot is at most 4 GiB, and a 64-bit remainder costs the firmware ~1 KB)
        let at_checkpoint =
            u32::try_from(offset).is_ok_and(|o| o.checked_rem(checkpoint) == Some(0));
        if at_checkpoint && offset < image.length {
            record_progress::<F, T>(store, staging, offset)?;
            progress = true;
        }
    };
    if verified.is_ok() {
        if let Err(reason) = app.safe_to_install() {
            store.commit(staging, image.length, [Meta::Keep; 4])?;
            return Ok(Outcome::Deferred {
                offered: image.version,
                reason,
            });
        }
    }
    // the server is blamed only for bytes it served in this check: an image read back whole
    // from the slot (kept for the application's yes) that no longer verifies is the flash's
    if fetched && verified.is_err() {
        *failed = Failed::WrongBytes;
    }
    match verified {
        Ok(()) => staging.finish_staging_in_place(),
        Err(_) => staging.abandon_staging_in_place(),
    }
    .map_err(AgentError::Slot)?;
    // a staged downgrade spends its authorization in the same record
    store.commit_authorized(staging, authorized.filter(|_| verified.is_ok()))?;
    trust!(verified);
    Ok(Outcome::Staged {
        version: image.version,
    })
}

/// A download checkpoint: `staging` with `offset` bytes written (metadata kept). Out of line:
/// two call sites.
#[inline(never)]
fn record_progress<F: Durable, T: Transport>(
    store: &mut FirmwareStore<F>,
    staging: Slots,
    offset: u64,
) -> Res<(), T, F> {
    store.commit(staging, offset, [Meta::Keep; 4])?;
    Ok(())
}

/// Commit slot transition `next` (download offset 0, metadata kept), or refuse it.
#[inline(never)]
fn commit_slots<F: Durable, T: Transport>(
    store: &mut FirmwareStore<F>,
    next: Slots,
) -> Res<(), T, F> {
    store.commit(next, 0, [Meta::Keep; 4])?;
    Ok(())
}

/// Fetch `role` (`N.role.json` with consistent snapshots) into `scratch`, at most `length` bytes
/// when the trusted metadata lists one.
fn fetch_listed<'b, T: Transport, E>(
    transport: &mut T,
    role: &'static str,
    version: Option<u64>,
    length: Option<u64>,
    scratch: &'b mut [u8],
) -> Result<&'b [u8], AgentError<T::Error, E>> {
    let mut name = HString::new();
    let name = meta_name(&mut name, role, version).ok_or_else(|| AgentError::NameTooLong {
        what: Name::new(role),
    })?;
    let cap = length.map_or(scratch.len(), |l| (l as usize).min(scratch.len()));
    let buf = scratch.get_mut(..cap).unwrap_or(&mut []);
    fetch_required(transport, name, buf)
}

/// Root chain, timestamp, snapshot, targets (spec §5.3–5.6). [`Refreshed::Unchanged`] when the
/// check may stop after the timestamp: no new root, the timestamp names the snapshot version of
/// a check that concluded "up to date" about the image still running, and nothing that check
/// relied on has expired (see [`check_for_update`]), or found the offered image's bytes wrong
/// less than [`RETRY_WRONG_BYTES`] ago (from a remote transport), and `may_stop` (the check
/// looks up the target that conclusion was about); a new timestamp is recorded then. Else
/// what verified is left to the caller to record ([`Refreshed::Search`]).
///
/// A step that fails after a new root, timestamp or snapshot verified does not lose them: the
/// caller records those `verified` (bits by [`Role`]). Not inlined: its frame and the
/// staging frame are never on the stack together.
///
/// With a transport that [asks ahead](Transport::ask_ahead), the snapshot is asked for as soon
/// as the timestamp's bytes are in, before their signature check, and the targets as soon as
/// the snapshot's are: each answer travels while the file before it is checked. The version
/// that names the request is read from bytes not checked yet; the answer is taken only after
/// they verified, by the fetch of the file they name. It is asked only when this check then
/// fetches it: the timestamp names a snapshot version a last check that may end the check
/// here was not about, and the stored copy of the role (read into `spare`, a buffer the target
/// search or the download uses later) is another version or none. A check that ends before that
/// fetch (the bytes do not verify, are expired or a rollback, a flash error) leaves that one
/// answer unread (`docs/decisions.md`, "The pump asks for its next file while it checks").
#[inline(never)]
#[allow(clippy::too_many_arguments)]
fn refresh<F: Durable, T: Transport>(
    store: &mut FirmwareStore<F>,
    transport: &mut T,
    set: &mut TrustedSet<&mut [u8]>,
    scratch: &mut [u8],
    spare: &mut [u8],
    running_sha256: &[u8; 32],
    may_stop: bool,
    verified: &mut u8,
) -> Res<Refreshed, T, F> {
    let mut changed = false;
    let mut name = HString::new();
    // 1. the root chain: N+1.root.json until the repository has no next one
    loop {
        let next = set.root().header.version.saturating_add(1);
        let name =
            meta_name(&mut name, "root", Some(next)).ok_or_else(|| AgentError::NameTooLong {
                what: Name::new("root"),
            })?;
        match transport.fetch_metadata(name, scratch) {
            Ok(None) => break,
            Ok(Some(n)) => {
                let bytes = scratch.get(..n).ok_or_else(|| AgentError::Missing {
                    what: Name::new(name),
                })?;
                // (a failure keeps the roots verified so far, as python-tuf does: after too many
                // rotations in one check the next one goes on from the newest, instead of
                // failing at the same place forever)
                set.update_root(bytes)?;
                changed = true;
                *verified |= 1 << Role::Root as u8;
            }
            Err(error) => {
                return Err(AgentError::Transport {
                    what: Name::new(name),
                    error,
                })
            }
        }
    }
    let root_changed = changed;
    let consistent = set.root().consistent_snapshot;

    // 2. timestamp (the stored one is the rollback baseline; dropped if it no longer verifies).
    // Verified, fresh and unexpired at every check. Asked for at the start of the check, with
    // the next root (`ask_next_root`): the answer has travelled while the roots were checked,
    // and travels while the stored timestamp is, whose result does not change what is asked.
    if let Some(local) = store.read_metadata(Role::Timestamp, scratch)? {
        let _ = set.load_trusted_timestamp(local);
    }
    let remote = fetch_required(transport, "timestamp.json", scratch)?;
    if transport.asks_ahead() {
        // the snapshot this timestamp names, unless a last check may end this one at 2b
        let named = Envelope::parse(remote, "timestamp")
            .and_then(|env| hale_core::metadata::Timestamp::parse(&env.signed))
            .map(|ts| ts.snapshot.version);
        if let Ok(version) = named {
            let may_end_here = store.last_check().is_some_and(|c| {
                may_stop
                    && !root_changed
                    && c.snapshot_version == version
                    && c.running_sha256 == *running_sha256
                    && set.now() < c.valid_until
            });
            if !may_end_here {
                let kind = "snapshot";
                ask_role_ahead(
                    store,
                    transport,
                    Role::Snapshot,
                    kind,
                    version,
                    consistent,
                    spare,
                );
            }
        }
    }
    if let Update::Updated { .. } = set.update_timestamp(remote)? {
        changed = true;
        *verified |= 1 << Role::Timestamp as u8;
    }
    let (snapshot_version, snapshot_length) = {
        let ts = set.timestamp().ok_or_else(|| Error::WrongOrder {
            operation: "snapshot",
            requires: "timestamp",
        })?;
        (ts.snapshot.version, ts.snapshot.length)
    };

    // 2b. nothing changed since a check that concluded "up to date" (or found the image's
    // bytes wrong, not to be downloaded again yet) about the channel target, and this check
    // looks up that target (`may_stop`): snapshot, targets and the target search would repeat it
    let last = store.last_check();
    let now = set.now();
    let unchanged = last.filter(|c| {
        may_stop
            && !root_changed
            && c.snapshot_version == snapshot_version
            && c.running_sha256 == *running_sha256
            && now < c.valid_until
            && (c.conclusion == Conclusion::UpToDate
                // wrong bytes wait for this server only, and a wait set by a clock that ran
                // ahead is not waited for (`longest_wait`), nor one the clock has gone past
                // while behind the time floor (the checks' time stood still)
                || transport.remote() && {
                    let wait = longest_wait(c.conclusion);
                    c.valid_until.saturating_sub(wait) <= now && !store.waited_out(wait)
                })
    });
    if unchanged.is_some() {
        if changed {
            let ts = Meta::Set(set.stored(Role::Timestamp).unwrap_or(&[]));
            store.record_check(last, [Meta::Keep, ts, Meta::Keep, Meta::Keep])?;
        }
        return Ok(Refreshed::Unchanged);
    }

    // 3. snapshot
    let mut fresh = false;
    if let Some(local) = store.read_metadata(Role::Snapshot, scratch)? {
        fresh = set.load_trusted_snapshot(local) == Ok(Freshness::Current);
    }
    if !fresh {
        let version = consistent.then_some(snapshot_version);
        let remote = fetch_listed(transport, "snapshot", version, snapshot_length, scratch)?;
        if transport.asks_ahead() {
            // the targets this snapshot names
            // (read as far as that entry: the signature check parses all of it)
            let named = Envelope::parse(remote, "snapshot").ok().and_then(|env| {
                let meta = env.signed.get("meta").ok()??.as_object()?;
                let targets = meta.get("targets.json").ok()??.as_object()?;
                targets.get("version").ok()??.as_u64()
            });
            if let Some(version) = named {
                let kind = "targets";
                ask_role_ahead(
                    store,
                    transport,
                    Role::Targets,
                    kind,
                    version,
                    consistent,
                    spare,
                );
            }
        }
        set.update_snapshot(remote)?;
        changed = true;
        *verified |= 1 << Role::Snapshot as u8;
    }

    // 4. targets: the stored copy when it is still what the snapshot names
    let local_ok = match store.read_metadata(Role::Targets, scratch)? {
        Some(local) => set.update_targets(local).is_ok(),
        None => false,
    };
    if !local_ok {
        let (version, length) = {
            let snap = set.snapshot().ok_or_else(|| Error::WrongOrder {
                operation: "targets",
                requires: "snapshot",
            })?;
            let m = snap.role("targets")?.ok_or_else(|| Error::NotInSnapshot {
                role: Name::new("targets"),
            })?;
            (m.version, m.length)
        };
        let version = consistent.then_some(version);
        let remote = fetch_listed(transport, "targets", version, length, scratch)?;
        set.update_targets(remote)?;
        changed = true;
    }

    // 5. what verified is persisted (only when something changed: flash wear), and a last
    // check this one does not confirm forgotten (it concludes afresh), in the record that ends
    // the check (or before staging): one record, not two, for a check that stages nothing
    Ok(Refreshed::Search {
        unrecorded: changed || last.is_some(),
    })
}
