//! Fixed limits. Every bound on work or memory that untrusted input could otherwise push is here,
//! so an integrator can see and size them in one place.
//!
//! Metadata buffers are not limits of the crate: the caller hands the trusted set its storage (see
//! [`crate::trusted::Storage`]) and sizes it for its repository. Everything else is bounded below.

/// Deepest JSON nesting accepted. TUF metadata needs about 6.
pub const MAX_JSON_DEPTH: usize = 32;

/// Keys listed for one role that are kept while counting a threshold. A role listing more keys than
/// this is refused ([`crate::Error::TooManyKeys`]).
pub const MAX_KEYS_PER_ROLE: usize = 16;

/// Longest role name kept on the delegation search's stack (and key id in a signature report), in
/// bytes. A delegation to a longer name is refused, never passed over (that would let a
/// lower-priority delegation answer for its targets): with `alloc` (server, tools) the targets
/// role that lists it does not verify ([`crate::Error::Field`] naming it); on a device the
/// search stops where it meets it ([`crate::Error::UnsafeName`]).
pub const MAX_NAME_LEN: usize = 128;

/// Longest `paths` pattern of a delegation, in bytes; longer ones are refused as
/// [`MAX_NAME_LEN`] says (on a device: `Field { role: "delegations", .. }` where the search
/// meets one).
pub const MAX_PATTERN_LEN: usize = 2 * MAX_NAME_LEN;

/// Longest role name, key id or target path kept in an error, in bytes (diagnostic only: a longer
/// one is shown truncated, marked with `…`). Small, because every `Result` carries an error.
pub const MAX_ERROR_NAME_LEN: usize = 32;

/// Deepest chain of delegations followed from `targets` (python-tuf has none beyond its visit cap).
pub const MAX_DELEGATION_DEPTH: usize = 8;

/// Delegated roles fetched and verified in one target search (python-tuf's `max_delegations`).
pub const MAX_DELEGATION_VISITS: u32 = 32;

/// Default cap on root versions applied in one update (python-tuf's `max_root_rotations` is 256;
/// a device catching up through years of rotations needs far fewer). Configurable per trusted set.
pub const DEFAULT_MAX_ROOT_ROTATIONS: u32 = 64;

/// Longest PEM public key accepted: an RSA-4096 SPKI is about 800 bytes (`std` builds); a P-256
/// SPKI in PEM is 178 bytes (device builds, smaller stack).
#[cfg(feature = "std")]
pub const MAX_PEM_LEN: usize = 1024;
#[cfg(not(feature = "std"))]
pub const MAX_PEM_LEN: usize = 256;

/// Longest signature accepted: RSA-4096 is 512 bytes (`std` builds); ECDSA P-256 DER is at most 72
/// and ed25519 64 (device builds).
#[cfg(feature = "std")]
pub const MAX_SIGNATURE_LEN: usize = 512;
#[cfg(not(feature = "std"))]
pub const MAX_SIGNATURE_LEN: usize = 80;

/// Longest semantic-version pre-release tag kept, in bytes.
pub const MAX_PRERELEASE_LEN: usize = 32;

/// Hardware entries in one firmware target's `custom.hardware`, and revisions per entry, examined.
pub const MAX_HARDWARE_ENTRIES: usize = 64;

/// Without `alloc`, canonical JSON emits object members by repeated selection, re-scanning an
/// object once per member. This bounds the bytes re-scanned in one canonicalisation, so that a
/// hostile document costs bounded CPU (found by fuzzing: a 120 KB timestamp cost 10+ s). A
/// 257-entry snapshot (256 hash bins) needs about 2 MiB. Builds with `alloc` sort instead and
/// need no budget.
pub const MAX_CANONICAL_WORK: usize = 4 << 20;

/// Repeated signature entries of a key verified for one document in all (each verification
/// canonicalises `signed` once more): the threshold plus this many. Each listed key's first
/// entry is always tried ([`MAX_KEYS_PER_ROLE`] at most), so stale signatures of some listed
/// keys never fail a document the others sign to its threshold.
pub const EXTRA_SIGNATURE_ATTEMPTS: u32 = 2;
