//! The trusted-metadata set and the client workflow of TUF spec §5, with no I/O.
//!
//! Modelled on python-tuf's `TrustedMetadataSet`. The caller fetches bytes; this type decides.
//! Order is enforced: root chain → timestamp → snapshot → targets → delegated roles. Every check
//! uses the update start time fixed at construction (spec 5.1), never a clock.
//!
//! ```text
//! new(storage, trusted_root, now)       root verified by itself (threshold of its root role)
//!   or resume(.., seal)                 ... unless it is the root a `Seal` was made of
//! update_root(N+1.root.json)*           signed by the trusted root AND by itself; version N+1;
//!                                       at most `max_root_rotations` per update
//! load_trusted_timestamp(local)?        previous timestamp: the rollback baseline. Fails when the
//!                                       timestamp keys rotated -> dropped (fast-forward recovery);
//!                                       not verified again when sealed with the same root
//! update_timestamp(remote)              root unexpired; threshold; no rollback of timestamp or of
//!                                       the snapshot version it names; unexpired. Same version:
//!                                       Ok(Unchanged), the trusted one stays (and must be unexpired)
//! load_trusted_snapshot(local)?         baseline; `Current` means no download needed
//! update_snapshot(remote)               hashes+length from timestamp; threshold; version as the
//!                                       timestamp says; no role removed or rolled back; unexpired
//! update_targets(local or remote)       hashes+length+version from snapshot; threshold; unexpired
//! find_target(path, source)             pre-order DFS over delegations; each delegated role is
//!                                       verified against the delegator that led to it
//! ```
//!
//! A failed call leaves the set exactly as it was, but for one step of the spec (5.3.11): a stored
//! timestamp that `load_trusted_timestamp` refuses, whatever the reason (its keys rotated, most
//! often; an expired root, a damaged store), takes the stored snapshot with it, and
//! `load_trusted_snapshot` then fails with [`Error::OnlineKeysRotated`] (the next snapshot is
//! downloaded, without a rollback baseline). Storage is the caller's: four buffers (one per
//! top-level role) sized for its repository — a few KiB each on a microcontroller.

use heapless::Vec as HVec;

use crate::crypto::{sha256, sha256_finish, sha256_update};
use crate::error::{pass, Error, Name, Role, RoleName};
use crate::json::{Object, Value};
use crate::limits::{
    DEFAULT_MAX_ROOT_ROTATIONS, MAX_DELEGATION_DEPTH, MAX_DELEGATION_VISITS, MAX_NAME_LEN,
};
use crate::metadata::{
    check_role_name, DelegatedRole, Delegations, Envelope, Header, MetaFile, Root, Snapshot,
    TargetFile, Targets, Timestamp,
};
use crate::time::UnixTime;
use crate::verify::verify_threshold;

/// A buffer one trusted role is kept in: `&mut [u8]` and `[u8; N]` (their length is the
/// capacity), or `Vec<u8>` (its allocated capacity is the limit: it is never grown, so no
/// allocation happens while verifying, and nothing is zeroed up front).
pub trait RoleBuffer: AsRef<[u8]> {
    /// Replace what is kept with `bytes`; `Err(capacity)` when they do not fit.
    fn keep(&mut self, bytes: &[u8]) -> Result<(), usize>;
}

impl RoleBuffer for &mut [u8] {
    fn keep(&mut self, bytes: &[u8]) -> Result<(), usize> {
        let capacity = self.len();
        let dst = self.get_mut(..bytes.len()).ok_or(capacity)?;
        dst.copy_from_slice(bytes);
        Ok(())
    }
}

impl<const N: usize> RoleBuffer for [u8; N] {
    fn keep(&mut self, bytes: &[u8]) -> Result<(), usize> {
        let dst = self.get_mut(..bytes.len()).ok_or(N)?;
        dst.copy_from_slice(bytes);
        Ok(())
    }
}

#[cfg(feature = "alloc")]
impl RoleBuffer for alloc::vec::Vec<u8> {
    fn keep(&mut self, bytes: &[u8]) -> Result<(), usize> {
        let capacity = self.capacity();
        if bytes.len() > capacity {
            return Err(capacity);
        }
        self.clear();
        // within the capacity: never reallocates
        self.extend_from_slice(bytes);
        Ok(())
    }
}

/// A heap buffer that grows to what it keeps, up to `limit` bytes (hosts): unlike a `Vec` whose
/// reserved capacity is the limit, a generous limit (megabytes) costs no reservation per update,
/// only the bytes actually kept. May allocate while verifying; devices use fixed buffers.
#[cfg(feature = "alloc")]
#[derive(Debug, Clone)]
pub struct HeapBuffer {
    bytes: alloc::vec::Vec<u8>,
    limit: usize,
}

#[cfg(feature = "alloc")]
impl HeapBuffer {
    pub fn new(limit: usize) -> Self {
        HeapBuffer {
            bytes: alloc::vec::Vec::new(),
            limit,
        }
    }
}

#[cfg(feature = "alloc")]
impl AsRef<[u8]> for HeapBuffer {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

#[cfg(feature = "alloc")]
impl RoleBuffer for HeapBuffer {
    fn keep(&mut self, bytes: &[u8]) -> Result<(), usize> {
        if bytes.len() > self.limit {
            return Err(self.limit);
        }
        self.bytes.clear();
        self.bytes.extend_from_slice(bytes);
        Ok(())
    }
}

/// Storage for the four top-level roles (see [`RoleBuffer`]).
#[derive(Debug)]
pub struct Storage<B> {
    pub root: B,
    pub timestamp: B,
    pub snapshot: B,
    pub targets: B,
}

#[cfg(feature = "alloc")]
impl Storage<alloc::vec::Vec<u8>> {
    /// Heap buffers of `capacity` bytes each (hosts). Allocated, not zeroed: a 4 MiB limit per
    /// role costs nothing until metadata that large arrives.
    pub fn with_capacity(capacity: usize) -> Self {
        let v = || alloc::vec::Vec::with_capacity(capacity);
        Storage {
            root: v(),
            timestamp: v(),
            snapshot: v(),
            targets: v(),
        }
    }
}

#[cfg(feature = "alloc")]
impl Storage<HeapBuffer> {
    /// [`HeapBuffer`]s that keep at most `limit` bytes each.
    pub fn on_heap(limit: usize) -> Self {
        let b = || HeapBuffer::new(limit);
        Storage {
            root: b(),
            timestamp: b(),
            snapshot: b(),
            targets: b(),
        }
    }
}

/// Result of an update that may have nothing new.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Update {
    /// New metadata was verified and is now trusted.
    Updated { version: u64 },
    /// The same version as the trusted one: nothing changed.
    Unchanged { version: u64 },
}

/// Whether a locally stored snapshot is what the new timestamp names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Matches the timestamp and is unexpired: no download needed.
    Current,
    /// Kept as the rollback baseline only; download the snapshot the timestamp names.
    Stale,
}

/// The trusted-metadata set. See the module documentation for the call order.
#[derive(Debug)]
pub struct TrustedSet<B> {
    store: Storage<B>,
    len: Lens,
    now: UnixTime,
    max_root_rotations: u32,
    rotations: u32,
    /// the stored snapshot passed the final checks (version named by timestamp, unexpired)
    snapshot_final: bool,
    /// the stored timestamp did not verify (its keys rotated): the stored snapshot is not loaded
    /// as a baseline either (spec 5.3.11)
    online_rotated: bool,
    /// the seal `resume` was given, while it can still stand for the stored timestamp's check
    /// (until the root changes or a timestamp is loaded)
    seal: Option<Seal>,
    spans: Spans,
    /// [`TrustedSet::time_passed`]
    passed: UnixTime,
}

/// What a [`TrustedSet`] verified of its root and timestamp, bound to their bytes
/// ([`TrustedSet::seal`]). Given back to [`TrustedSet::resume`] with byte for byte the same root,
/// and then to [`TrustedSet::load_trusted_timestamp`] with the same timestamp, it stands for
/// their signature checks, which could only give the same answer again: a running device's next
/// check, reading back from its flash what the last one recorded. Other bytes (a new root
/// applied, a damaged record, another timestamp) are verified in full; expiry is checked as
/// always. It holds digests, not a verdict: only hale-core makes one, from bytes it verified,
/// and a caller keeps it in memory (after a restart everything is verified again).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seal {
    /// of the root's bytes
    root: [u8; 32],
    /// of the root's digest and the timestamp's bytes: the timestamp verified by that root
    timestamp: [u8; 32],
}

/// The digest a [`Seal`] holds of a timestamp's `bytes` verified by the root of `root` digest.
fn seal_timestamp(root: &[u8; 32], bytes: &[u8]) -> [u8; 32] {
    let mut h = sha2::Sha256::default();
    sha256_update(&mut h, root);
    sha256_update(&mut h, bytes);
    sha256_finish(h)
}

/// Lengths of the stored bytes (0: nothing stored).
#[derive(Debug, Default, Clone, Copy)]
struct Lens {
    root: usize,
    timestamp: usize,
    snapshot: usize,
    targets: usize,
}

/// Copy `bytes` into `role`'s buffer of `store`.
fn keep_in<B: RoleBuffer>(store: &mut Storage<B>, role: Role, bytes: &[u8]) -> Result<(), Error> {
    let buf = match role {
        Role::Root => &mut store.root,
        Role::Timestamp => &mut store.timestamp,
        Role::Snapshot => &mut store.snapshot,
        Role::Targets => &mut store.targets,
    };
    buf.keep(bytes).map_err(|capacity| Error::StorageTooSmall {
        role,
        capacity,
        needed: bytes.len(),
    })
}

/// A part of stored bytes, as offsets: `(start, end)`.
type Span = (usize, usize);

/// Where things lie in the stored bytes, noted when they were verified and stored, so reading a
/// stored role does not walk its JSON again (every check reads the root's keys and roles; each
/// walk of a root skips over all its keys).
#[derive(Debug, Default, Clone, Copy)]
struct Spans {
    /// `signed` of each top-level role (by [`Role`] order: root, timestamp, snapshot, targets)
    signed: [Span; 4],
    /// the trusted root's `keys` and `roles`, and what else [`Root`] holds
    keys: Span,
    roles: Span,
    root_header: Header,
    consistent_snapshot: bool,
    /// the trusted snapshot's header and `meta`
    snapshot_header: Header,
    snapshot_meta: Span,
    /// the trusted top-level targets' header, `targets`, and `delegations` parts (`keys`, and
    /// `roles` or `succinct_roles`; empty without delegations): a catalog of hashed bins is
    /// mostly its delegations, which every search used to walk again
    targets_header: Header,
    targets_list: Span,
    delegation_keys: Span,
    delegation_list: Span,
}

/// `inner`'s place in `outer`, which contains it (a view parsed out of it).
fn span_in(outer: &[u8], inner: &[u8]) -> Span {
    let start = (inner.as_ptr() as usize).wrapping_sub(outer.as_ptr() as usize);
    (start, start.wrapping_add(inner.len()))
}

fn role_index(r: Role) -> usize {
    match r {
        Role::Root => 0,
        Role::Timestamp => 1,
        Role::Snapshot => 2,
        Role::Targets => 3,
    }
}

impl Lens {
    fn get(&self, r: Role) -> usize {
        match r {
            Role::Root => self.root,
            Role::Timestamp => self.timestamp,
            Role::Snapshot => self.snapshot,
            Role::Targets => self.targets,
        }
    }
    fn set(&mut self, r: Role, n: usize) {
        match r {
            Role::Root => self.root = n,
            Role::Timestamp => self.timestamp = n,
            Role::Snapshot => self.snapshot = n,
            Role::Targets => self.targets = n,
        }
    }
}

impl<B: RoleBuffer> TrustedSet<B> {
    /// Start an update from a trusted root (shipped with the device, or stored by the last
    /// update). `now` is the update start time used for every expiry check.
    pub fn new(store: Storage<B>, trusted_root: &[u8], now: UnixTime) -> Result<Self, Error> {
        Self::resume(store, trusted_root, now, None)
    }

    /// [`new`](Self::new), where `seal` is what the last update of this device verified
    /// ([`seal`](Self::seal)): when `trusted_root` is the root it was made of, the root's own
    /// signatures are not checked again, and neither are the stored timestamp's if
    /// [`load_trusted_timestamp`](Self::load_trusted_timestamp) gets the sealed one before any
    /// new root is applied ([`Seal`]).
    pub fn resume(
        store: Storage<B>,
        trusted_root: &[u8],
        now: UnixTime,
        seal: Option<&Seal>,
    ) -> Result<Self, Error> {
        let mut set = TrustedSet {
            store,
            len: Lens::default(),
            now,
            max_root_rotations: DEFAULT_MAX_ROOT_ROTATIONS,
            rotations: 0,
            snapshot_final: false,
            online_rotated: false,
            seal: None,
            spans: Spans::default(),
            passed: UnixTime::MIN,
        };
        let env = pass!(Envelope::parse(trusted_root, "root"));
        let root = Root::parse(&env.signed)?;
        match seal {
            Some(s) if s.root == sha256(trusted_root) => set.seal = Some(*s),
            _ => pass!(verify_threshold(&env, &pass!(root.role("root")))),
        }
        pass!(set.put_root(trusted_root, &env, &root));
        Ok(set)
    }

    /// The [`Seal`] of the trusted root and timestamp, for the next update's
    /// [`resume`](Self::resume); `None` before a timestamp is loaded. (Each timestamp this set
    /// holds was verified by the root it holds: no root is applied after a timestamp.)
    pub fn seal(&self) -> Option<Seal> {
        let timestamp = self.stored(Role::Timestamp)?;
        let root = sha256(self.stored(Role::Root)?);
        Some(Seal {
            root,
            timestamp: seal_timestamp(&root, timestamp),
        })
    }

    /// Cap the root versions applied in this update (default
    /// [`crate::limits::DEFAULT_MAX_ROOT_ROTATIONS`]).
    pub fn with_max_root_rotations(mut self, cap: u32) -> Self {
        self.max_root_rotations = cap;
        self
    }

    /// The update start time.
    pub fn now(&self) -> UnixTime {
        self.now
    }

    /// The latest time this update has shown to be past, from
    /// [`update_timestamp`](Self::update_timestamp): the start time once a timestamp verified
    /// unexpired at it, or the expiry of a timestamp it refused as expired (checked only after
    /// its signatures); `UnixTime::MIN` before either. (Later roles add nothing: what they find
    /// expired expired before a start time already noted.) A device keeps the latest it has
    /// seen as the floor under its clock ([`crate::time::check_time`]). It is at most the start
    /// time, and at most the expiry of a timestamp the repository signed: a clock that ran
    /// ahead holds a device's checks back until the repository's next timestamp, no longer.
    pub fn time_passed(&self) -> UnixTime {
        self.passed
    }

    /// Verified bytes of a top-level role, exactly as received (to persist them).
    pub fn stored(&self, role: Role) -> Option<&[u8]> {
        let n = self.len.get(role);
        if n == 0 {
            return None;
        }
        self.buf(role).get(..n)
    }

    /// This set, state and all, in other buffers: a copy to try the next steps on while this one
    /// stays as it is. Fails only when `store` is too small for what is kept.
    pub fn copy_into<C: RoleBuffer>(&self, mut store: Storage<C>) -> Result<TrustedSet<C>, Error> {
        for role in [Role::Root, Role::Timestamp, Role::Snapshot, Role::Targets] {
            if let Some(bytes) = self.stored(role) {
                pass!(keep_in(&mut store, role, bytes));
            }
        }
        Ok(TrustedSet {
            store,
            len: self.len,
            now: self.now,
            max_root_rotations: self.max_root_rotations,
            rotations: self.rotations,
            snapshot_final: self.snapshot_final,
            online_rotated: self.online_rotated,
            seal: self.seal,
            spans: self.spans,
            passed: self.passed,
        })
    }

    /// Give the storage back (e.g. to reuse the buffers for the next update).
    pub fn into_storage(self) -> Storage<B> {
        self.store
    }

    fn buf(&self, role: Role) -> &[u8] {
        match role {
            Role::Root => self.store.root.as_ref(),
            Role::Timestamp => self.store.timestamp.as_ref(),
            Role::Snapshot => self.store.snapshot.as_ref(),
            Role::Targets => self.store.targets.as_ref(),
        }
    }

    /// Store verified `bytes` of `role`, whose `signed` is `env`'s.
    fn put(&mut self, role: Role, bytes: &[u8], env: &Envelope<'_>) -> Result<(), Error> {
        pass!(keep_in(&mut self.store, role, bytes));
        self.len.set(role, bytes.len());
        if let Some(at) = self.spans.signed.get_mut(role_index(role)) {
            *at = span_in(bytes, env.signed.raw());
        }
        Ok(())
    }

    /// Store a verified root (`root` read from `env`, read from `bytes`).
    fn put_root(&mut self, bytes: &[u8], env: &Envelope<'_>, root: &Root<'_>) -> Result<(), Error> {
        pass!(self.put(Role::Root, bytes, env));
        self.spans.keys = span_in(bytes, root.keys.raw());
        self.spans.roles = span_in(bytes, root.roles.raw());
        self.spans.root_header = root.header;
        self.spans.consistent_snapshot = root.consistent_snapshot;
        Ok(())
    }

    /// Store a verified snapshot (`snap` read from `env`, read from `bytes`).
    fn put_snapshot(
        &mut self,
        bytes: &[u8],
        env: &Envelope<'_>,
        snap: &Snapshot<'_>,
    ) -> Result<(), Error> {
        pass!(self.put(Role::Snapshot, bytes, env));
        self.spans.snapshot_header = snap.header;
        self.spans.snapshot_meta = span_in(bytes, snap.meta.raw());
        Ok(())
    }

    /// Store verified top-level targets (`t` read from `env`, read from `bytes`).
    fn put_targets(
        &mut self,
        bytes: &[u8],
        env: &Envelope<'_>,
        t: &Targets<'_>,
    ) -> Result<(), Error> {
        pass!(self.put(Role::Targets, bytes, env));
        let s = &mut self.spans;
        s.targets_header = t.header;
        s.targets_list = span_in(bytes, t.targets.raw());
        (s.delegation_keys, s.delegation_list) = match &t.delegations {
            Some(d) => (span_in(bytes, d.keys.raw()), span_in(bytes, d.list())),
            None => ((0, 0), (0, 0)),
        };
        Ok(())
    }

    /// A stored part of `role`'s bytes, by its noted span.
    fn stored_part(&self, role: Role, (start, end): Span) -> Option<&[u8]> {
        self.stored(role)?.get(start..end)
    }

    /// `signed` of a stored role: validated before it was stored, found by its noted span.
    fn signed(&self, role: Role) -> Option<Object<'_>> {
        let span = *self.spans.signed.get(role_index(role))?;
        Some(Object::validated(self.stored_part(role, span)?))
    }

    /// The trusted root.
    pub fn root(&self) -> Root<'_> {
        // set in `new`, replaced only by verified roots
        let part = |span| self.stored_part(Role::Root, span).map(Object::validated);
        match (part(self.spans.keys), part(self.spans.roles)) {
            (Some(keys), Some(roles)) => Root {
                header: self.spans.root_header,
                consistent_snapshot: self.spans.consistent_snapshot,
                keys,
                roles,
            },
            _ => unreachable_root(),
        }
    }

    pub fn timestamp(&self) -> Option<Timestamp<'_>> {
        self.signed(Role::Timestamp)
            .and_then(|signed| Timestamp::parse(&signed).ok())
    }

    pub fn snapshot(&self) -> Option<Snapshot<'_>> {
        // the parts noted when it was verified and stored
        let meta = self
            .stored_part(Role::Snapshot, self.spans.snapshot_meta)
            .filter(|m| !m.is_empty())?;
        Some(Snapshot {
            header: self.spans.snapshot_header,
            meta: Object::validated(meta),
        })
    }

    pub fn targets(&self) -> Option<Targets<'_>> {
        // the parts noted when they were verified and stored
        let part = |span| self.stored_part(Role::Targets, span);
        let s = &self.spans;
        let targets = Object::validated(part(s.targets_list).filter(|p| !p.is_empty())?);
        let delegations = match (part(s.delegation_keys), part(s.delegation_list)) {
            (Some(keys), Some(list)) if !keys.is_empty() => Some(Delegations::stored(keys, list)?),
            _ => None,
        };
        Some(Targets {
            header: s.targets_header,
            targets,
            delegations,
        })
    }

    /// Parse `bytes` as metadata of top-level `role` and verify the threshold of the trusted
    /// root's keys for it: the first checks of every top-level update, shared (not inlined) so a
    /// device holds one copy.
    #[inline(never)]
    fn verified_by_root<'b>(&self, role: Role, bytes: &'b [u8]) -> Result<Envelope<'b>, Error> {
        let env = pass!(Envelope::parse(bytes, role.as_str()));
        pass!(verify_threshold(
            &env,
            &pass!(self.root().role(role.as_str()))
        ));
        Ok(env)
    }

    fn check_root_unexpired(&self) -> Result<(), Error> {
        let root = self.root();
        if crate::time::is_expired(root.header.expires, self.now) {
            return Err(Error::ExpiredRoot {
                expires: root.header.expires,
                now: self.now,
            });
        }
        Ok(())
    }

    #[inline(never)]
    fn check_unexpired(&self, role: Name, h: &Header) -> Result<(), Error> {
        if crate::time::is_expired(h.expires, self.now) {
            return Err(Error::Expired {
                role,
                expires: h.expires,
                now: self.now,
            });
        }
        Ok(())
    }

    /// The version the referencing role fixed ([`Error::VersionMismatch`]), then expiry: the last
    /// checks of snapshot, targets and delegated roles, shared.
    #[inline(never)]
    fn check_version_unexpired(&self, role: Name, expected: u64, h: &Header) -> Result<(), Error> {
        if h.version != expected {
            return Err(Error::VersionMismatch {
                role,
                expected,
                received: h.version,
            });
        }
        self.check_unexpired(role, h)
    }

    // --- root --------------------------------------------------------------------------------

    /// Apply the next root version (spec 5.3).
    #[inline(never)]
    pub fn update_root(&mut self, bytes: &[u8]) -> Result<u64, Error> {
        if self.len.get(Role::Timestamp) != 0 {
            return Err(Error::WrongOrder {
                operation: "update_root",
                requires: "no timestamp loaded yet",
            });
        }
        if self.rotations >= self.max_root_rotations {
            return Err(Error::TooManyRootRotations {
                cap: self.max_root_rotations,
            });
        }
        // signed by the trusted root's root role (before reading anything else of it)
        let env = pass!(self.verified_by_root(Role::Root, bytes));
        let trusted = self.root();
        let new = pass!(Root::parse(&env.signed));
        if new.header.version != trusted.header.version + 1 {
            return Err(Error::RootVersionNotNext {
                trusted: trusted.header.version,
                received: new.header.version,
            });
        }
        // and by its own root role
        pass!(verify_threshold(&env, &pass!(new.role("root"))));
        let version = new.header.version;
        pass!(self.put_root(bytes, &env, &new));
        // a seal stands for what the root it was made of verified
        self.seal = None;
        self.rotations += 1;
        Ok(version)
    }

    // --- timestamp ---------------------------------------------------------------------------

    /// Load the previously trusted timestamp (from the device's storage) as the rollback baseline.
    /// Expiry is not checked. An error here means "drop it". Spec 5.3.11 (the fast-forward
    /// attack's recovery): once the timestamp keys rotate, the stored timestamp no longer
    /// verifies and is dropped, and the stored snapshot must go with it, or a snapshot version an
    /// attacker holding the old online keys pushed up would refuse every genuine one. So after
    /// this fails, [`load_trusted_snapshot`](Self::load_trusted_snapshot) refuses
    /// ([`Error::OnlineKeysRotated`]). (A rotation of the snapshot keys alone leaves the stored
    /// timestamp, which still verifies, as the baseline: every fast-forward needs the timestamp
    /// key, so its recovery rotates that key. Comparing the roots' online roles as the spec puts
    /// it cost more flash than the device build has; docs/threat-model.md.)
    pub fn load_trusted_timestamp(&mut self, bytes: &[u8]) -> Result<(), Error> {
        if self.len.get(Role::Timestamp) != 0 {
            return Err(Error::WrongOrder {
                operation: "load_trusted_timestamp",
                requires: "no timestamp loaded yet",
            });
        }
        if self.online_rotated {
            return Err(Error::OnlineKeysRotated);
        }
        // until it verifies: a stored timestamp refused takes the stored snapshot with it
        self.online_rotated = true;
        pass!(self.check_root_unexpired());
        let env = match self.seal.take() {
            // the timestamp this root verified when the seal was made
            Some(s) if s.timestamp == seal_timestamp(&s.root, bytes) => {
                pass!(Envelope::parse(bytes, "timestamp"))
            }
            _ => pass!(self.verified_by_root(Role::Timestamp, bytes)),
        };
        pass!(Timestamp::parse(&env.signed));
        self.online_rotated = false;
        self.put(Role::Timestamp, bytes, &env)
    }

    /// Verify a new timestamp (spec 5.4).
    #[inline(never)]
    pub fn update_timestamp(&mut self, bytes: &[u8]) -> Result<Update, Error> {
        let r = self.timestamp_update(bytes);
        let t = match r {
            Ok(_) => self.now,
            // (not a root's expiry: a root lives a year or so, and a clock that once ran
            // ahead past it would stop every update until the next root)
            Err(Error::Expired { expires, .. }) => expires,
            Err(_) => UnixTime::MIN,
        };
        self.passed = self.passed.max(t);
        r
    }

    fn timestamp_update(&mut self, bytes: &[u8]) -> Result<Update, Error> {
        if self.len.get(Role::Snapshot) != 0 {
            return Err(Error::WrongOrder {
                operation: "update_timestamp",
                requires: "no snapshot loaded yet",
            });
        }
        pass!(self.check_root_unexpired());
        let name = Name::new("timestamp");
        // The same bytes as the trusted timestamp: verified by this root when they were loaded
        // (`update_root` is refused once a timestamp is loaded), so verifying them again could
        // only give the same answer. The usual poll when nothing changed: one signature check
        // less. Expiry is still checked against the update start time.
        if self.stored(Role::Timestamp) == Some(bytes) {
            if let Some(old) = self.timestamp() {
                pass!(self.check_unexpired(name, &old.header));
                return Ok(Update::Unchanged {
                    version: old.header.version,
                });
            }
        }
        let env = pass!(self.verified_by_root(Role::Timestamp, bytes));
        let new = pass!(Timestamp::parse(&env.signed));
        if let Some(old) = self.timestamp() {
            if new.header.version < old.header.version {
                return Err(Error::Rollback {
                    role: name,
                    trusted: old.header.version,
                    received: new.header.version,
                });
            }
            if new.header.version == old.header.version {
                pass!(self.check_unexpired(name, &old.header));
                return Ok(Update::Unchanged {
                    version: old.header.version,
                });
            }
            if new.snapshot.version < old.snapshot.version {
                return Err(Error::Rollback {
                    role: Name::new("snapshot"),
                    trusted: old.snapshot.version,
                    received: new.snapshot.version,
                });
            }
        }
        pass!(self.check_unexpired(name, &new.header));
        let version = new.header.version;
        pass!(self.put(Role::Timestamp, bytes, &env));
        Ok(Update::Updated { version })
    }

    fn final_timestamp(&self) -> Result<Timestamp<'_>, Error> {
        let ts = pass!(self.timestamp().ok_or_else(|| Error::WrongOrder {
            operation: "snapshot update",
            requires: "a timestamp",
        }));
        pass!(self.check_unexpired(Name::new("timestamp"), &ts.header));
        Ok(ts)
    }

    // --- snapshot ----------------------------------------------------------------------------

    /// Load the previously trusted snapshot (the rollback baseline for the next one). Its hashes
    /// are not checked against the new timestamp (it may be older); its signatures are.
    pub fn load_trusted_snapshot(&mut self, bytes: &[u8]) -> Result<Freshness, Error> {
        if self.len.get(Role::Snapshot) != 0 {
            return Err(Error::WrongOrder {
                operation: "load_trusted_snapshot",
                requires: "no snapshot loaded yet",
            });
        }
        if self.online_rotated {
            return Err(Error::OnlineKeysRotated);
        }
        let (ts_version, expected) = {
            let ts = pass!(self.final_timestamp());
            (ts.header.version, ts.snapshot.version)
        };
        let _ = ts_version;
        let env = pass!(self.verified_by_root(Role::Snapshot, bytes));
        let snap = pass!(Snapshot::parse(&env.signed));
        let fresh = snap.header.version == expected && snap.header.expires > self.now;
        pass!(self.put_snapshot(bytes, &env, &snap));
        self.snapshot_final = fresh;
        Ok(if fresh {
            Freshness::Current
        } else {
            Freshness::Stale
        })
    }

    /// Verify a new snapshot (spec 5.5).
    #[inline(never)]
    pub fn update_snapshot(&mut self, bytes: &[u8]) -> Result<Update, Error> {
        if self.len.get(Role::Targets) != 0 {
            return Err(Error::WrongOrder {
                operation: "update_snapshot",
                requires: "no targets loaded yet",
            });
        }
        let name = Name::new("snapshot");
        let expected = {
            let ts = pass!(self.final_timestamp());
            pass!(ts.snapshot.verify_bytes(bytes, Name::new("snapshot.json")));
            ts.snapshot.version
        };
        let env = pass!(self.verified_by_root(Role::Snapshot, bytes));
        let new = pass!(Snapshot::parse(&env.signed));
        if let Some(old) = self.snapshot() {
            if new.header.version < old.header.version {
                return Err(Error::Rollback {
                    role: name,
                    trusted: old.header.version,
                    received: new.header.version,
                });
            }
            // the new snapshot usually lists the old roles in the same order (canonical JSON
            // sorts them), maybe with new ones between: each is looked for from where the last
            // one was found (a search of the whole list for every role of a catalog of hashed
            // bins was quadratic), else in the whole list
            let mut beside = new.meta.members();
            for (k, v) in old.meta.members() {
                let role = role_of_meta_key(&k);
                let old_version = v
                    .as_object()
                    .and_then(|o| o.get("version").ok().flatten())
                    .and_then(|v| v.as_u64());
                let mut ahead = beside.clone();
                let new_entry = match ahead.find(|(nk, _)| *nk == k) {
                    // verified, so canonical: no key twice (the encoder refuses duplicates)
                    Some((_, nv)) => {
                        beside = ahead;
                        Some(nv)
                    }
                    None => pass!(new
                        .meta
                        .get_by(|nk| *nk == k)
                        .map_err(|error| Error::Json { role: name, error })),
                };
                let Some(new_entry) = new_entry else {
                    return Err(Error::MissingFromSnapshot { role });
                };
                let new_version = new_entry
                    .as_object()
                    .and_then(|o| o.get("version").ok().flatten())
                    .and_then(|v| v.as_u64());
                if let (Some(o), Some(n)) = (old_version, new_version) {
                    if n < o {
                        return Err(Error::Rollback {
                            role,
                            trusted: o,
                            received: n,
                        });
                    }
                }
            }
        }
        pass!(self.check_version_unexpired(name, expected, &new.header));
        let version = new.header.version;
        pass!(self.put_snapshot(bytes, &env, &new));
        self.snapshot_final = true;
        Ok(Update::Updated { version })
    }

    fn final_snapshot(&self) -> Result<Snapshot<'_>, Error> {
        let snap = pass!(self
            .snapshot()
            .filter(|_| self.snapshot_final)
            .ok_or_else(|| Error::WrongOrder {
                operation: "targets update",
                requires: "a current snapshot",
            }));
        pass!(self.check_unexpired(Name::new("snapshot"), &snap.header));
        Ok(snap)
    }

    // --- targets -----------------------------------------------------------------------------

    /// Verify top-level targets (spec 5.6), from local storage or the repository.
    pub fn update_targets(&mut self, bytes: &[u8]) -> Result<Update, Error> {
        if self.len.get(Role::Targets) != 0 {
            return Err(Error::WrongOrder {
                operation: "update_targets",
                requires: "no targets loaded yet",
            });
        }
        let name = Name::new("targets");
        let expected = {
            let snap = pass!(self.final_snapshot());
            let m = pass!(
                pass!(snap.role("targets")).ok_or_else(|| Error::NotInSnapshot { role: name })
            );
            pass!(m.verify_bytes(bytes, Name::new("targets.json")));
            m.version
        };
        let env = pass!(self.verified_by_root(Role::Targets, bytes));
        let new = pass!(Targets::parse(&env.signed, name));
        pass!(self.check_version_unexpired(name, expected, &new.header));
        let version = new.header.version;
        pass!(self.put_targets(bytes, &env, &new));
        Ok(Update::Updated { version })
    }

    /// The snapshot entry for a delegated role (what to fetch: its version, maybe length/hashes).
    pub fn delegated_meta(&self, role: &str) -> Result<MetaFile<'_>, Error> {
        pass!(pass!(self.final_snapshot()).role(role)).ok_or_else(|| Error::NotInSnapshot {
            role: Name::new(role),
        })
    }

    /// Verify delegated role `name` against `delegator` (verified metadata that delegates to it)
    /// and the trusted snapshot: length, hashes, threshold of the delegator's keys for it, version
    /// as the snapshot says, expiry. The caller passes the delegator that led it here; a role
    /// reachable from several delegators is checked against each separately (never cached by name).
    pub fn verify_delegated<'b>(
        &self,
        delegator: &Targets<'_>,
        name: &str,
        bytes: &'b [u8],
    ) -> Result<Targets<'b>, Error> {
        self.verify_delegated_at(delegator, name, bytes, None)
    }

    /// [`verify_delegated`](Self::verify_delegated) of the role the walk `matched` (what it read
    /// for `name` already: not read again).
    fn verify_delegated_at<'b>(
        &self,
        delegator: &Targets<'_>,
        name: &str,
        bytes: &'b [u8],
        matched: Option<Matched<'_>>,
    ) -> Result<Targets<'b>, Error> {
        pass!(check_role_name(name));
        let role = Name::new(name);
        let delegations = pass!(delegator
            .delegations
            .ok_or_else(|| Error::NotInSnapshot { role }));
        let (entry, meta) = match matched {
            Some(m) => (m.entry, m.meta),
            None => (None, pass!(self.delegated_meta(name))),
        };
        pass!(meta.verify_bytes(bytes, role));
        let env = pass!(Envelope::parse(bytes, name));
        #[cfg(feature = "alloc")]
        let at = entry.and_then(|i| delegations.entry_keys(i, name));
        // the walk's own entry is always found where it matched (debug builds: every test's walk
        // checks it; a miss would only cost the search below)
        #[cfg(feature = "alloc")]
        debug_assert!(entry.is_none() || delegations.roles.is_none() || at.is_some());
        #[cfg(not(feature = "alloc"))]
        let at = {
            let _ = entry;
            None
        };
        let keys = match (delegations.roles, delegations.succinct) {
            (Some(_), _) if at.is_some() => at,
            (Some(_), _) => pass!(delegations.listed_keys(name)),
            (None, Some(s)) => s.is_bin(name).then(|| s.keys(delegations.keys, name)),
            (None, None) => None,
        };
        let keys = pass!(keys.ok_or_else(|| Error::NotInSnapshot { role }));
        pass!(verify_threshold(&env, &keys));
        let t = pass!(Targets::parse(&env.signed, role));
        pass!(self.check_version_unexpired(role, meta.version, &t.header));
        Ok(t)
    }

    /// Find `path` (spec 5.6.7): top-level targets first, then a pre-order depth-first walk of the
    /// delegations that match it, in priority order. A terminating delegation ends the walk once
    /// its subtree is done; at most [`MAX_DELEGATION_VISITS`] roles are fetched. `source` fetches
    /// delegated roles; its errors come back apart from trust errors.
    pub fn find_target<S: RoleSource>(
        &self,
        path: &str,
        source: &mut S,
    ) -> Result<Option<Found<'_, S::Buf>>, SearchError<S::Error>> {
        // The trust steps live in two non-generic functions (`probe`, `accept`): each trust
        // error leaves them through one return, so the generic walk below stays small.
        let (top_bytes, listed) = self.top_lookup(path)?;
        let hash = sha256(path.as_bytes());
        if listed {
            return Ok(Some(Found {
                role: Name::new("targets"),
                holder: Holder::Top(top_bytes),
                path_hash: hash,
            }));
        }
        let mut walk = Walk {
            frames: HVec::new(),
            top_next: 0,
            visits: 0,
            visited: HVec::new(),
        };
        let mut bufs: HVec<S::Buf, MAX_DELEGATION_DEPTH> = HVec::new();
        loop {
            // 1. the next matching child of the current delegator
            match self.probe(current(&bufs), &mut walk, path, &hash)? {
                Probe::Exhausted => {
                    let _ = bufs.pop();
                    match walk.frames.pop() {
                        None => return Ok(None),
                        Some(f) if f.terminating => return Ok(None),
                        Some(_) => {}
                    }
                }
                Probe::End => return Ok(None),
                // 2. fetched, then verified against the delegator that led here
                Probe::Fetch {
                    after,
                    name,
                    terminating,
                    meta,
                } => {
                    let buf = source
                        .fetch_role(name.as_str(), &meta)
                        .map_err(SearchError::Fetch)?;
                    // (first: `accept` finds the delegator's entry for `name` just before it)
                    walk.set_next(after);
                    let has =
                        self.accept(current(&bufs), &walk, &name, &meta, buf.as_ref(), path)?;
                    let name = Name::from(name);
                    if has {
                        return Ok(Some(Found {
                            role: name,
                            holder: Holder::Delegated(buf),
                            path_hash: hash,
                        }));
                    }
                    let frame = Frame {
                        name,
                        next: 0,
                        terminating,
                    };
                    if walk.frames.push(frame).is_err() || bufs.push(buf).is_err() {
                        return Err(SearchError::Trust(Error::DelegationTooDeep { role: name }));
                    }
                }
            }
        }
    }

    /// The trusted top-level targets' bytes, and whether they list `path` themselves.
    #[inline(never)]
    fn top_lookup(&self, path: &str) -> Result<(&[u8], bool), Error> {
        let order = || Error::WrongOrder {
            operation: "find_target",
            requires: "targets",
        };
        let bytes = pass!(self.stored(Role::Targets).ok_or_else(order));
        let top = pass!(self.targets().ok_or_else(order));
        Ok((
            bytes,
            pass!(top.target(path, Name::new("targets"))).is_some(),
        ))
    }

    /// The current delegator: the trusted top-level targets (`None`), or the bytes of a role
    /// this walk accepted. Either was parsed whole when it was accepted: only the parts the walk
    /// reads are read again.
    fn delegator<'s>(&'s self, bytes: Option<&'s [u8]>, name: Name) -> Result<Targets<'s>, Error> {
        match bytes {
            None => self.targets().ok_or(Error::WrongOrder {
                operation: "find_target",
                requires: "targets",
            }),
            // the name is only used in errors
            Some(b) => {
                Targets::parse_stored(&pass!(Envelope::parse(b, name.as_str())).signed, name)
            }
        }
    }

    /// The next delegation of the current delegator (see [`delegator`](Self::delegator)) that
    /// matches `path`, and what to fetch for it: passed over when visited before (spec 5.6.7.1:
    /// whichever delegator names it again; this also breaks cycles) unless it is terminating,
    /// which ends the walk ([`Probe::End`]); refused when unsafe or past the visit cap.
    #[inline(never)]
    fn probe(
        &self,
        bytes: Option<&[u8]>,
        walk: &mut Walk,
        path: &str,
        hash: &[u8; 32],
    ) -> Result<Probe<'_>, Error> {
        let (dname, next) = walk.current();
        let delegator = pass!(self.delegator(bytes, dname));
        let (after, child_name, terminating, name_hash) =
            match pass!(next_child(&delegator, path, hash, next, &walk.visited)) {
                Child::None => return Ok(Probe::Exhausted),
                Child::End => return Ok(Probe::End),
                Child::Next {
                    after,
                    name,
                    terminating,
                    name_hash,
                } => (after, name, terminating, name_hash),
            };
        let cname = child_name.as_str();
        walk.visits += 1;
        if walk.visits > MAX_DELEGATION_VISITS || walk.visited.push(name_hash).is_err() {
            return Err(Error::TooManyDelegations {
                cap: MAX_DELEGATION_VISITS,
            });
        }
        pass!(check_role_name(cname));
        // the rollback role signs rollback authorizations, never targets: a delegation that
        // gives it this path would let its keys answer for firmware (hale-server refuses such a
        // delegation at publish; a device refuses it here, whoever made it)
        if cname == crate::rollback::ROLLBACK_ROLE {
            return Err(Error::Field {
                role: dname,
                field: "delegations (paths given to the rollback role)",
            });
        }
        let meta = pass!(self.delegated_meta(cname));
        Ok(Probe::Fetch {
            after,
            name: child_name,
            terminating,
            meta,
        })
    }

    /// Verify the fetched `child` against the current delegator (see
    /// [`delegator`](Self::delegator)), whose entry for it [`probe`](Self::probe) found just
    /// before the walk's next, and against `meta`, the trusted snapshot's entry for it that
    /// `probe` read; whether it lists `path`.
    #[inline(never)]
    fn accept(
        &self,
        bytes: Option<&[u8]>,
        walk: &Walk,
        name: &RoleName,
        meta: &MetaFile<'_>,
        child: &[u8],
        path: &str,
    ) -> Result<bool, Error> {
        let (dname, next) = walk.current();
        let delegator = pass!(self.delegator(bytes, dname));
        let entry = next.checked_sub(1);
        // (a device reads both again: less flash, and no catalog)
        #[cfg(feature = "alloc")]
        let matched = Some(Matched { entry, meta: *meta });
        #[cfg(not(feature = "alloc"))]
        let matched = {
            let _ = (entry, meta);
            None
        };
        let child = pass!(self.verify_delegated_at(&delegator, name.as_str(), child, matched));
        Ok(pass!(child.target(path, Name::from(*name))).is_some())
    }
}

/// What the walk read for the role it fetched: the index of the delegator's `roles` entry for it
/// (succinct bins have no list: not used there), and the trusted snapshot's entry for it.
#[derive(Clone, Copy)]
struct Matched<'s> {
    /// with a heap, the role's keys are read there rather than searched for
    /// ([`Delegations::entry_keys`])
    entry: Option<usize>,
    meta: MetaFile<'s>,
}

/// The bytes of the delegator being searched: the last fetched role, or `None` for the
/// top-level targets.
fn current<B: AsRef<[u8]>>(bufs: &HVec<B, MAX_DELEGATION_DEPTH>) -> Option<&[u8]> {
    bufs.last().map(|b| b.as_ref())
}

/// The delegation walk's state apart from the fetched roles: one frame per delegator being
/// searched below the top-level targets.
struct Walk {
    frames: HVec<Frame, MAX_DELEGATION_DEPTH>,
    top_next: usize,
    visits: u32,
    /// name hashes of every role visited so far
    visited: HVec<[u8; 32], { MAX_DELEGATION_VISITS as usize }>,
}

impl Walk {
    /// The current delegator's name (errors only) and the index of its next delegation to try.
    fn current(&self) -> (Name, usize) {
        match self.frames.last() {
            Some(f) => (f.name, f.next),
            None => (Name::new("targets"), self.top_next),
        }
    }

    fn set_next(&mut self, after: usize) {
        match self.frames.last_mut() {
            Some(f) => f.next = after,
            None => self.top_next = after,
        }
    }
}

enum Probe<'s> {
    Exhausted,
    /// A terminating delegation visited before: the walk ends (spec 5.6.7.2.2; python-tuf
    /// clears what is left to visit when it meets a terminating delegation).
    End,
    Fetch {
        after: usize,
        name: RoleName,
        terminating: bool,
        meta: MetaFile<'s>,
    },
}

struct Frame {
    /// only named in errors from here on: the role was found by its full name
    name: Name,
    next: usize,
    terminating: bool,
}

/// `pump-a.json` → `pump-a` (snapshot keys are file names; errors name roles).
fn role_of_meta_key(k: &crate::json::JStr<'_>) -> Name {
    let mut buf = [0u8; MAX_NAME_LEN + 8];
    match k.decode_into(&mut buf) {
        Some(s) => Name::new(s.strip_suffix(".json").unwrap_or(s)),
        None => Name::from_json(k),
    }
}

fn unreachable_root() -> ! {
    // `root()` re-reads bytes this type verified and stored itself; a failure here means memory
    // corruption. Stop rather than trust anything.
    #[allow(clippy::panic)]
    {
        panic!("trusted root storage corrupted")
    }
}

/// The first delegation at or after index `from` that matches `path` and was not visited
/// before (`visited`: name hashes), or the end of the walk at a terminating one that was.
fn next_child(
    d: &Targets<'_>,
    path: &str,
    hash: &[u8; 32],
    from: usize,
    visited: &[[u8; 32]],
) -> Result<Child, Error> {
    let Some(del) = d.delegations else {
        return Ok(Child::None);
    };
    if let Some(s) = del.succinct {
        if from > 0 {
            return Ok(Child::None);
        }
        let mut buf = [0u8; MAX_NAME_LEN];
        let name =
            pass!(s
                .bin_name(s.bin_of(hash), &mut buf)
                .ok_or_else(|| Error::BadSuccinctRoles {
                    reason: "name_prefix too long",
                }));
        // succinct bins are terminating: a target belongs to exactly one bin
        return child(1, RoleName::new(name), true, visited);
    }
    let Some(roles) = del.roles else {
        return Ok(Child::None);
    };
    // one pass from `from`: children visited before are passed over here, not one probe (and
    // one parse of the delegator) each
    for (i, v) in roles.iter().enumerate().skip(from) {
        let Some(o) = v.as_object() else { continue };
        let r = pass!(DelegatedRole::parse(&o, Name::new("delegations")));
        let Some(matched) = r.matches(path, hash) else {
            return Err(Error::Field {
                role: Name::new("delegations"),
                field: crate::metadata::PATTERN_TOO_LONG,
            });
        };
        if matched {
            match pass!(child(
                i + 1,
                RoleName::from_json(&r.name),
                r.terminating,
                visited
            )) {
                Child::None => continue,
                c => return Ok(c),
            }
        }
    }
    Ok(Child::None)
}

/// A matching delegation to `name` (`after`: the index of the next one to try), as the walk
/// takes it: refused when it takes a top-level role's name or cannot be held; passed over
/// ([`Child::None`]) when visited before, unless it is terminating ([`Child::End`]).
fn child(
    after: usize,
    name: RoleName,
    terminating: bool,
    visited: &[[u8; 32]],
) -> Result<Child, Error> {
    let cname = name.as_str();
    if crate::metadata::is_top_level_role(cname) || name.is_truncated() {
        // a delegated role may not take a top-level role's name (python-tuf refuses such
        // delegations too): its metadata would be confused with the top-level role's
        // wherever roles are kept by name. (A name too long to hold was refused when its
        // delegator was verified; refused here too rather than passed over.)
        return Err(Error::UnsafeName {
            name: Name::new(cname),
        });
    }
    let name_hash = sha256(cname.as_bytes());
    if visited.contains(&name_hash) {
        // visited before (a cycle, or a second delegator): not fetched again, like python-tuf;
        // a terminating one ends the walk there, as it did the first time
        return Ok(if terminating { Child::End } else { Child::None });
    }
    Ok(Child::Next {
        after,
        name,
        terminating,
        name_hash,
    })
}

/// What [`next_child`] found.
enum Child {
    /// No further matching delegation.
    None,
    /// A terminating delegation visited before: the walk ends.
    End,
    Next {
        after: usize,
        name: RoleName,
        terminating: bool,
        name_hash: [u8; 32],
    },
}

/// Where delegated roles come from during a search (HTTP, flash, a bundle, a directory).
pub trait RoleSource {
    /// Bytes of one role; kept while its subtree is searched.
    type Buf: AsRef<[u8]>;
    /// Transport errors, kept apart from trust errors.
    type Error;
    /// Fetch delegated role `name` at `meta.version` (`N.name.json` with consistent snapshots).
    /// The source must refuse more than `meta.length` bytes when it is given, and otherwise bound
    /// what it reads.
    fn fetch_role(&mut self, name: &str, meta: &MetaFile<'_>) -> Result<Self::Buf, Self::Error>;
}

/// A search failure: a trust decision, or the source could not deliver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SearchError<E> {
    Trust(Error),
    Fetch(E),
}

impl<E> From<Error> for SearchError<E> {
    fn from(e: Error) -> Self {
        SearchError::Trust(e)
    }
}

impl<E: core::fmt::Display> core::fmt::Display for SearchError<E> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            SearchError::Trust(e) => write!(f, "{e}"),
            SearchError::Fetch(e) => write!(f, "fetching delegated metadata: {e}"),
        }
    }
}

#[cfg(feature = "std")]
impl<E: core::fmt::Debug + core::fmt::Display> std::error::Error for SearchError<E> {}

/// A target found by [`TrustedSet::find_target`], with the verified role that lists it.
#[derive(Debug)]
pub struct Found<'s, B> {
    role: Name,
    holder: Holder<'s, B>,
    path_hash: [u8; 32],
}

#[derive(Debug)]
enum Holder<'s, B> {
    Top(&'s [u8]),
    Delegated(B),
}

impl<B: AsRef<[u8]>> Found<'_, B> {
    /// The role that lists the target, as errors name it (at most
    /// [`MAX_ERROR_NAME_LEN`](crate::limits::MAX_ERROR_NAME_LEN) bytes, `…` when longer).
    pub fn role(&self) -> Name {
        self.role
    }

    /// The verified bytes of that role.
    pub fn role_bytes(&self) -> &[u8] {
        match &self.holder {
            Holder::Top(b) => b,
            Holder::Delegated(b) => b.as_ref(),
        }
    }

    /// sha256 of the target path (for hashed-bin layouts).
    pub fn path_hash(&self) -> [u8; 32] {
        self.path_hash
    }

    /// The target entry (length, hashes, custom).
    pub fn file(&self, path: &str) -> Result<TargetFile<'_>, Error> {
        let env = pass!(Envelope::parse(self.role_bytes(), self.role.as_str()));
        let t = pass!(Targets::parse_stored(&env.signed, self.role));
        pass!(t.target(path, self.role)).ok_or_else(|| Error::Field {
            role: self.role,
            field: "targets",
        })
    }
}

/// Re-exported for shells that keep their own copy of the chain: the JSON value of `signed`.
pub fn signed_value<'a>(bytes: &'a [u8], role: &str) -> Result<Value<'a>, Error> {
    Ok(Value::Object(Envelope::parse(bytes, role)?.signed))
}
