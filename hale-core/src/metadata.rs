//! TUF 1.0 metadata (spec 1.0.34) as zero-copy views over validated JSON.
//!
//! A view is only a reading of bytes: it checks shape (required fields, types, `_type`,
//! `spec_version` 1.x, `expires` format) but decides nothing about trust. Signatures and the
//! rules between documents live in [`crate::verify`] and [`crate::trusted`]. Unknown fields are
//! kept (they stay in the bytes) and are covered by the signature, which is computed over the
//! canonical form of the whole `signed` object.

use sha2::{Digest, Sha256, Sha512};

use crate::error::{pass, Error, Name};
use crate::json::{self, Array, Elements, JStr, JsonError, Members, Object, Value};
use crate::limits::{MAX_NAME_LEN, MAX_PATTERN_LEN};
use crate::time::{parse_expires, UnixTime};

/// `{"signed": …, "signatures": […]}`.
#[derive(Debug, Clone, Copy)]
pub struct Envelope<'a> {
    pub signed: Object<'a>,
    pub signatures: Array<'a>,
}

impl<'a> Envelope<'a> {
    /// Parse the envelope of metadata for `role` (the name is only used in errors).
    pub fn parse(bytes: &'a [u8], role: &str) -> Result<Self, Error> {
        Self::read(bytes).map_err(|shape| shape.named(Name::new(role)))
    }

    fn read(bytes: &'a [u8]) -> Result<Self, Shape<'a>> {
        // one pass over the document, validating it and finding the two fields (`signed` is
        // most of it)
        let (top, [signed, signatures]) =
            json::parse_fields(bytes, ["signed", "signatures"]).map_err(Shape::Json)?;
        top.as_object().ok_or(Shape::Field("signed"))?;
        let signed = signed
            .and_then(|v| v.as_object())
            .ok_or(Shape::Field("signed"))?;
        let signatures = signatures
            .and_then(|v| v.as_array())
            .ok_or(Shape::Field("signatures"))?;
        Ok(Envelope { signed, signatures })
    }
}

/// Fields every role has.
#[derive(Debug, Default, Clone, Copy)]
pub struct Header {
    pub version: u64,
    pub expires: UnixTime,
}

/// Check `_type`, `spec_version`, `version` and `expires` of `signed`.
pub fn parse_header(
    signed: &Object<'_>,
    expected_type: &'static str,
    role: Name,
) -> Result<Header, Error> {
    read_header(signed, expected_type).map_err(|shape| shape.named(role))
}

/// [`parse_header`] with the refusal unnamed.
fn read_header<'a>(signed: &Object<'a>, expected_type: &'static str) -> Result<Header, Shape<'a>> {
    // one pass over `signed` for the four fields (a lookup each would walk the object 4 times)
    let [ty, spec, version, expires] = signed
        .fields(["_type", "spec_version", "version", "expires"])
        .map_err(Shape::Json)?;
    let ty = ty.and_then(|v| v.as_str()).ok_or(Shape::Field("_type"))?;
    if !ty.eq_str(expected_type) {
        return Err(Shape::WrongType(expected_type, ty));
    }
    let spec = spec
        .and_then(|v| v.as_str())
        .ok_or(Shape::Field("spec_version"))?;
    if !spec_version_supported(&spec) {
        return Err(Shape::SpecVersion(spec));
    }
    let version = version
        .and_then(|v| v.as_u64())
        .filter(|v| *v > 0)
        .ok_or(Shape::Field("version"))?;
    let mut buf = [0u8; 32];
    let expires = expires
        .and_then(|v| v.as_str())
        .ok_or(Shape::Field("expires"))?
        .decode_into(&mut buf)
        .and_then(|s| parse_expires(s.as_bytes()))
        .ok_or(Shape::BadExpires)?;
    Ok(Header { version, expires })
}

/// Any `1.x` or `1.x.y` (python-tuf 7 writes 1.0.31, rust-tuf 1.0.0, older tools "1.0").
fn spec_version_supported(s: &JStr<'_>) -> bool {
    let mut buf = [0u8; 32];
    let Some(s) = s.decode_into(&mut buf) else {
        return false;
    };
    // split as bytes: the same parts for an ASCII separator, without `str`'s char searcher
    let mut parts = s.as_bytes().split(|b| *b == b'.');
    if parts.next() != Some(b"1") {
        return false;
    }
    let mut n = 0;
    for p in parts {
        n += 1;
        if p.is_empty() || !p.iter().all(|b| b.is_ascii_digit()) {
            return false;
        }
    }
    (1..=2).contains(&n)
}

/// A refusal of a document's shape before it is named: [`Shape::named`] builds the [`Error`] (with
/// the role's name) once, so a parser's many exits each move a few bytes, not a whole `Error`.
#[derive(Debug, Clone, Copy)]
enum Shape<'a> {
    Json(JsonError),
    Field(&'static str),
    BadSuccinctRoles(&'static str),
    /// `_type` is not the expected one (which, found).
    WrongType(&'static str, JStr<'a>),
    /// `spec_version` is not 1.x (found).
    SpecVersion(JStr<'a>),
    BadExpires,
}

impl Shape<'_> {
    fn named(self, role: Name) -> Error {
        match self {
            Shape::Json(error) => Error::Json { role, error },
            Shape::Field(field) => Error::Field { role, field },
            Shape::BadSuccinctRoles(reason) => Error::BadSuccinctRoles { reason },
            Shape::WrongType(expected, found) => Error::WrongType {
                expected,
                found: Name::from_json(&found),
            },
            Shape::SpecVersion(found) => Error::UnsupportedSpecVersion {
                role,
                found: Name::from_json(&found),
            },
            Shape::BadExpires => Error::BadExpires { role },
        }
    }
}

fn shape_get<'a>(o: &Object<'a>, field: &str) -> Result<Option<Value<'a>>, Shape<'a>> {
    o.get(field).map_err(Shape::Json)
}

fn shape_obj<'a>(o: &Object<'a>, field: &'static str) -> Result<Object<'a>, Shape<'a>> {
    shape_get(o, field)?
        .and_then(|v| v.as_object())
        .ok_or(Shape::Field(field))
}

// --- root ---------------------------------------------------------------------------------

/// `root` metadata.
#[derive(Debug, Clone, Copy)]
pub struct Root<'a> {
    pub header: Header,
    pub consistent_snapshot: bool,
    pub keys: Object<'a>,
    pub roles: Object<'a>,
}

impl<'a> Root<'a> {
    pub fn parse(signed: &Object<'a>) -> Result<Self, Error> {
        Self::read(signed).map_err(|shape| shape.named(Name::new("root")))
    }

    fn read(signed: &Object<'a>) -> Result<Self, Shape<'a>> {
        let header = read_header(signed, "root")?;
        let [consistent_snapshot, keys, roles] = signed
            .fields(["consistent_snapshot", "keys", "roles"])
            .map_err(Shape::Json)?;
        let consistent_snapshot = match consistent_snapshot {
            None => false,
            Some(v) => v.as_bool().ok_or(Shape::Field("consistent_snapshot"))?,
        };
        let object =
            |v: Option<Value<'a>>, field| v.and_then(|v| v.as_object()).ok_or(Shape::Field(field));
        let keys = object(keys, "keys")?;
        let roles = object(roles, "roles")?;
        Ok(Root {
            header,
            consistent_snapshot,
            keys,
            roles,
        })
    }

    /// `roles[name]`: its key ids and threshold.
    pub fn role(&self, name: &'static str) -> Result<RoleKeys<'a>, Error> {
        let read = || {
            let r = shape_get(&self.roles, name)?
                .and_then(|v| v.as_object())
                .ok_or(Shape::Field(name))?;
            let keyids = shape_get(&r, "keyids")?
                .and_then(|v| v.as_array())
                .ok_or(Shape::Field("keyids"))?;
            let threshold = shape_get(&r, "threshold")?
                .and_then(|v| v.as_u64())
                .ok_or(Shape::Field("threshold"))?;
            Ok((keyids, threshold))
        };
        let (keyids, threshold) =
            pass!(read().map_err(|shape: Shape<'_>| shape.named(Name::new("root"))));
        Ok(RoleKeys {
            name: Name::new(name),
            keys: self.keys,
            keyids,
            threshold,
        })
    }
}

/// The keys a delegator authorises for one role, and how many must sign.
#[derive(Debug, Clone, Copy)]
pub struct RoleKeys<'a> {
    pub name: Name,
    /// The delegator's `keys` map (key id → key).
    pub keys: Object<'a>,
    pub keyids: Array<'a>,
    pub threshold: u64,
}

// --- timestamp and snapshot ----------------------------------------------------------------

/// An entry of `meta`: the version of a metadata file and, optionally, its length and hashes.
#[derive(Debug, Clone, Copy)]
pub struct MetaFile<'a> {
    pub version: u64,
    pub length: Option<u64>,
    pub hashes: Option<Object<'a>>,
}

/// The fields of a `meta` entry, in the order [`MetaFile::of`] takes them.
const META_FILE: [&str; 3] = ["version", "length", "hashes"];

impl<'a> MetaFile<'a> {
    fn read(o: &Object<'a>) -> Result<Self, Shape<'a>> {
        Self::of(o.fields(META_FILE).map_err(Shape::Json)?)
    }

    /// Check the next entry of `meta` (`None` at the end): its name, and whether it is well formed.
    fn check_next(entries: &mut Members<'a>) -> Option<(JStr<'a>, Result<(), Shape<'a>>)> {
        // with a heap its fields are read as the walk steps over it (`next_fields`); a device
        // steps over it and then reads it, as `next_fields` does there (its answer; written out
        // here, less flash than through `next_fields`: see `DelegatedRole::next`)
        #[cfg(feature = "alloc")]
        {
            let (k, entry) = entries.next_fields(META_FILE)?;
            let checked = entry.map_err(Shape::Json).and_then(|(v, fields)| {
                v.as_object().ok_or(Shape::Field("meta"))?;
                Self::of(fields).map(|_| ())
            });
            Some((k, checked))
        }
        #[cfg(not(feature = "alloc"))]
        {
            let (k, v) = entries.next()?;
            let checked = v.as_object().ok_or(Shape::Field("meta"));
            Some((k, checked.and_then(|o| Self::read(&o)).map(|_| ())))
        }
    }

    /// The entry from the values of its [`META_FILE`] fields.
    fn of([version, length, hashes]: [Option<Value<'a>>; 3]) -> Result<Self, Shape<'a>> {
        let version = version
            .and_then(|v| v.as_u64())
            .ok_or(Shape::Field("version"))?;
        let length = match length {
            None => None,
            Some(v) => Some(v.as_u64().ok_or(Shape::Field("length"))?),
        };
        let hashes = match hashes {
            None => None,
            Some(v) => Some(v.as_object().ok_or(Shape::Field("hashes"))?),
        };
        Ok(MetaFile {
            version,
            length,
            hashes,
        })
    }

    /// Check `bytes` against the length and hashes listed here (either may be absent).
    pub fn verify_bytes(&self, bytes: &[u8], what: Name) -> Result<(), Error> {
        if let Some(len) = self.length {
            if bytes.len() as u64 != len {
                return Err(Error::LengthMismatch {
                    what,
                    expected: len,
                    received: bytes.len() as u64,
                });
            }
        }
        if let Some(h) = &self.hashes {
            let mut hs = pass!(Hasher::new(h, what));
            hs.update(bytes);
            pass!(hs.finish());
        }
        Ok(())
    }
}

/// `timestamp` metadata.
#[derive(Debug, Clone, Copy)]
pub struct Timestamp<'a> {
    pub header: Header,
    pub snapshot: MetaFile<'a>,
}

impl<'a> Timestamp<'a> {
    pub fn parse(signed: &Object<'a>) -> Result<Self, Error> {
        Self::read(signed).map_err(|shape| shape.named(Name::new("timestamp")))
    }

    fn read(signed: &Object<'a>) -> Result<Self, Shape<'a>> {
        let header = read_header(signed, "timestamp")?;
        let meta = shape_obj(signed, "meta")?;
        let snap = shape_obj(&meta, "snapshot.json")?;
        Ok(Timestamp {
            header,
            snapshot: MetaFile::read(&snap)?,
        })
    }
}

/// `snapshot` metadata.
#[derive(Debug, Clone, Copy)]
pub struct Snapshot<'a> {
    pub header: Header,
    pub meta: Object<'a>,
}

impl<'a> Snapshot<'a> {
    pub fn parse(signed: &Object<'a>) -> Result<Self, Error> {
        let snapshot = pass!(Self::parse_stored(signed));
        // every entry must be well formed, so that later lookups cannot fail on shape (each
        // entry's fields read as the walk steps over it: a catalog lists hundreds)
        let mut entries = snapshot.meta.members();
        while let Some((k, checked)) = MetaFile::check_next(&mut entries) {
            pass!(checked.map_err(|shape| shape.named(Name::from_json(&k))));
        }
        Ok(snapshot)
    }

    /// Re-read a snapshot that [`Snapshot::parse`] accepted before, without re-checking every
    /// entry (walking many hash bins would otherwise be quadratic).
    pub(crate) fn parse_stored(signed: &Object<'a>) -> Result<Self, Error> {
        let read = || {
            Ok(Snapshot {
                header: read_header(signed, "snapshot")?,
                meta: shape_obj(signed, "meta")?,
            })
        };
        read().map_err(|shape: Shape<'a>| shape.named(Name::new("snapshot")))
    }

    /// The entry for role `name` (`<name>.json`).
    pub fn role(&self, name: &str) -> Result<Option<MetaFile<'a>>, Error> {
        let v = self
            .meta
            .get_by(|k| k.eq_concat(&[name.as_bytes(), b".json"]))
            .map_err(|error| Error::Json {
                role: Name::new("snapshot"),
                error,
            })?;
        match v {
            None => Ok(None),
            Some(v) => v
                .as_object()
                .ok_or(Shape::Field("meta"))
                .and_then(|o| MetaFile::read(&o))
                .map(Some)
                .map_err(|shape| shape.named(Name::new(name))),
        }
    }
}

// --- targets -------------------------------------------------------------------------------

/// `targets` metadata (top-level or delegated).
#[derive(Debug, Clone, Copy)]
pub struct Targets<'a> {
    pub header: Header,
    pub targets: Object<'a>,
    pub delegations: Option<Delegations<'a>>,
}

impl<'a> Targets<'a> {
    pub fn parse(signed: &Object<'a>, role: Name) -> Result<Self, Error> {
        Self::read(signed, true).map_err(|shape| shape.named(role))
    }

    /// Re-read targets metadata that [`Targets::parse`] accepted before, without re-checking
    /// every delegated role's entry (a catalog of hashed bins lists hundreds; the walk reads
    /// the entries it passes, and refuses a malformed one there).
    pub(crate) fn parse_stored(signed: &Object<'a>, role: Name) -> Result<Self, Error> {
        Self::read(signed, false).map_err(|shape| shape.named(role))
    }

    /// [`parse`](Self::parse) with the refusal unnamed (one exit builds the [`Error`]); `all`:
    /// check every delegated role's entry.
    fn read(signed: &Object<'a>, all: bool) -> Result<Self, Shape<'a>> {
        let header = read_header(signed, "targets")?;
        let [targets, delegations] = signed
            .fields(["targets", "delegations"])
            .map_err(Shape::Json)?;
        let targets = targets
            .and_then(|v| v.as_object())
            .ok_or(Shape::Field("targets"))?;
        let delegations = match delegations {
            None => None,
            Some(v) => {
                let d = v.as_object().ok_or(Shape::Field("delegations"))?;
                Some(Delegations::read(&d, all)?)
            }
        };
        Ok(Targets {
            header,
            targets,
            delegations,
        })
    }

    /// Every target entry in one pass (bulk checks on hosts: looking each path up with
    /// [`target`](Self::target) re-reads the role and is quadratic).
    pub fn entries(
        &self,
        role: Name,
    ) -> impl Iterator<Item = (JStr<'a>, Result<TargetFile<'a>, Error>)> + 'a {
        self.targets.members().map(move |(k, v)| {
            let t = v
                .as_object()
                .ok_or_else(|| Error::Field {
                    role,
                    field: "targets",
                })
                .and_then(|o| TargetFile::parse(&o, role));
            (k, t)
        })
    }

    /// The entry for target `path`, if this role lists it.
    pub fn target(&self, path: &str, role: Name) -> Result<Option<TargetFile<'a>>, Error> {
        self.read_target(path).map_err(|shape| shape.named(role))
    }

    fn read_target(&self, path: &str) -> Result<Option<TargetFile<'a>>, Shape<'a>> {
        match self.targets.get(path).map_err(Shape::Json)? {
            None => Ok(None),
            Some(v) => {
                let o = v.as_object().ok_or(Shape::Field("targets"))?;
                TargetFile::read(&o).map(Some)
            }
        }
    }
}

/// A target entry: length, hashes and the optional `custom` object.
#[derive(Debug, Clone, Copy)]
pub struct TargetFile<'a> {
    pub length: u64,
    pub hashes: Object<'a>,
    pub custom: Option<Object<'a>>,
}

impl<'a> TargetFile<'a> {
    pub fn parse(o: &Object<'a>, role: Name) -> Result<Self, Error> {
        Self::read(o).map_err(|shape| shape.named(role))
    }

    fn read(o: &Object<'a>) -> Result<Self, Shape<'a>> {
        let length = shape_get(o, "length")?
            .and_then(|v| v.as_u64())
            .ok_or(Shape::Field("length"))?;
        let hashes = shape_get(o, "hashes")?
            .and_then(|v| v.as_object())
            .ok_or(Shape::Field("hashes"))?;
        let custom = match shape_get(o, "custom")? {
            None => None,
            Some(v) => Some(v.as_object().ok_or(Shape::Field("custom"))?),
        };
        Ok(TargetFile {
            length,
            hashes,
            custom,
        })
    }

    /// The sha256 digest, when listed.
    pub fn sha256(&self) -> Option<[u8; 32]> {
        let h = self.hashes.get("sha256").ok()??.as_str()?;
        let mut out = [0u8; 32];
        let mut buf = [0u8; 64];
        let s = h.decode_into(&mut buf)?;
        (crate::crypto::hex_decode(s.as_bytes(), &mut out)? == 32).then_some(out)
    }

    /// A streaming checker for this target's bytes: refuses more than `length` bytes as they
    /// arrive (endless data) and checks every listed hash at the end.
    pub fn hasher(&self, what: Name) -> Result<TargetHasher, Error> {
        Ok(TargetHasher {
            inner: pass!(Hasher::new(&self.hashes, what)),
            expected: self.length,
            received: 0,
            what,
        })
    }

    /// Check a whole target held in memory.
    pub fn verify_bytes(&self, bytes: &[u8], what: Name) -> Result<(), Error> {
        let mut h = self.hasher(what)?;
        h.update(bytes)?;
        h.finish()
    }

    /// [`verify_bytes`](Self::verify_bytes) for bytes of which only `digest` is known (computed
    /// ahead, e.g. by the conformance client while the server answers): the same answer, the
    /// same error, when SHA-256 is the only hash the target lists; `None` when it lists another
    /// one too (then check the bytes).
    pub fn verify_digest(&self, digest: &FileDigest, what: Name) -> Option<Result<(), Error>> {
        let h = match Hasher::new(&self.hashes, what) {
            Ok(h) => h,
            Err(e) => return Some(Err(e)),
        };
        let (None, Some((_, want))) = (&h.sha512, &h.sha256) else {
            return None;
        };
        // in `verify_bytes`' order: too many bytes, a different length, then the hash
        Some(if digest.length > self.length {
            Err(Error::TooLarge {
                what,
                limit: self.length,
            })
        } else if digest.length != self.length {
            Err(Error::LengthMismatch {
                what,
                expected: self.length,
                received: digest.length,
            })
        } else if digest.sha256 != *want {
            Err(Error::HashMismatch {
                what,
                algorithm: "sha256",
            })
        } else {
            Ok(())
        })
    }
}

/// The length and SHA-256 of a whole file, computed before the target it is checked against is
/// known ([`TargetFile::verify_digest`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileDigest {
    pub length: u64,
    pub sha256: [u8; 32],
}

impl FileDigest {
    pub fn of(bytes: &[u8]) -> Self {
        FileDigest {
            length: bytes.len() as u64,
            sha256: crate::crypto::sha256(bytes),
        }
    }
}

/// Streaming length and hash check of a target (see [`TargetFile::hasher`]).
#[derive(Debug, Clone)]
pub struct TargetHasher {
    inner: Hasher,
    expected: u64,
    received: u64,
    what: Name,
}

impl TargetHasher {
    /// Feed the next chunk; refused as soon as the total passes the listed length.
    pub fn update(&mut self, chunk: &[u8]) -> Result<(), Error> {
        self.received = self.received.saturating_add(chunk.len() as u64);
        if self.received > self.expected {
            return Err(Error::TooLarge {
                what: self.what,
                limit: self.expected,
            });
        }
        self.inner.update(chunk);
        Ok(())
    }

    pub fn received(&self) -> u64 {
        self.received
    }

    /// All bytes arrived: check the length and every hash.
    pub fn finish(self) -> Result<(), Error> {
        if self.received != self.expected {
            return Err(Error::LengthMismatch {
                what: self.what,
                expected: self.expected,
                received: self.received,
            });
        }
        self.inner.finish()
    }
}

/// Hashes listed for a file: sha256 and/or sha512 are checked; at least one must be listed.
#[derive(Debug, Clone)]
struct Hasher {
    sha256: Option<(Sha256, [u8; 32])>,
    sha512: Option<(Sha512, [u8; 64])>,
    what: Name,
}

impl Hasher {
    fn new(hashes: &Object<'_>, what: Name) -> Result<Self, Error> {
        let mut h = Hasher {
            sha256: None,
            sha512: None,
            what,
        };
        let field = |alg: &'static str| -> Result<Option<[u8; 64]>, Error> {
            let Some(v) = hashes
                .get(alg)
                .map_err(|error| Error::Json { role: what, error })?
            else {
                return Ok(None);
            };
            let s = v.as_str().ok_or_else(|| Error::Field {
                role: what,
                field: "hashes",
            })?;
            let mut buf = [0u8; 128];
            let mut out = [0u8; 64];
            let s = s.decode_into(&mut buf).ok_or_else(|| Error::Field {
                role: what,
                field: "hashes",
            })?;
            let n =
                crate::crypto::hex_decode(s.as_bytes(), &mut out).ok_or_else(|| Error::Field {
                    role: what,
                    field: "hashes",
                })?;
            let want = if alg == "sha256" { 32 } else { 64 };
            if n != want {
                return Err(Error::Field {
                    role: what,
                    field: "hashes",
                });
            }
            Ok(Some(out))
        };
        if let Some(d) = pass!(field("sha256")) {
            let mut d32 = [0u8; 32];
            d32.copy_from_slice(d.get(..32).unwrap_or(&[0; 32]));
            h.sha256 = Some((Sha256::new(), d32));
        }
        if let Some(d) = pass!(field("sha512")) {
            h.sha512 = Some((Sha512::new(), d));
        }
        if h.sha256.is_none() && h.sha512.is_none() {
            return Err(Error::NoSupportedHash { what });
        }
        Ok(h)
    }

    fn update(&mut self, chunk: &[u8]) {
        if let Some((h, _)) = &mut self.sha256 {
            crate::crypto::sha256_update(h, chunk);
        }
        if let Some((h, _)) = &mut self.sha512 {
            h.update(chunk);
        }
    }

    fn finish(self) -> Result<(), Error> {
        if let Some((h, want)) = self.sha256 {
            if crate::crypto::sha256_finish(h) != want {
                return Err(Error::HashMismatch {
                    what: self.what,
                    algorithm: "sha256",
                });
            }
        }
        if let Some((h, want)) = self.sha512 {
            if h.finalize()[..] != want[..] {
                return Err(Error::HashMismatch {
                    what: self.what,
                    algorithm: "sha512",
                });
            }
        }
        Ok(())
    }
}

// --- delegations ---------------------------------------------------------------------------

/// `delegations`: keys, and either a list of roles or succinct hash bins (TAP 15).
#[derive(Debug, Clone, Copy)]
pub struct Delegations<'a> {
    pub keys: Object<'a>,
    pub roles: Option<Array<'a>>,
    pub succinct: Option<SuccinctRoles<'a>>,
}

impl<'a> Delegations<'a> {
    /// The hashed bins' `name_prefix` and the keys they share (`None`: no hashed bins).
    pub fn bins_keys(&self) -> Option<(JStr<'a>, RoleKeys<'a>)> {
        let s = self.succinct?;
        let role = RoleKeys {
            name: Name::from_json(&s.name_prefix),
            keys: self.keys,
            keyids: s.keyids,
            threshold: s.threshold,
        };
        Some((s.name_prefix, role))
    }

    /// `all`: check every entry of `roles` too.
    fn read(d: &Object<'a>, all: bool) -> Result<Self, Shape<'a>> {
        // one pass over the delegations (`roles` may be most of the document)
        let [keys, roles, succinct] = d
            .fields(["keys", "roles", "succinct_roles"])
            .map_err(Shape::Json)?;
        let keys = keys
            .and_then(|v| v.as_object())
            .ok_or(Shape::Field("keys"))?;
        let roles = match roles {
            None => None,
            Some(v) => Some(v.as_array().ok_or(Shape::Field("roles"))?),
        };
        let succinct = match succinct {
            None => None,
            Some(v) => Some(SuccinctRoles::read(
                &v.as_object().ok_or(Shape::Field("succinct_roles"))?,
            )?),
        };
        if roles.is_some() == succinct.is_some() {
            return Err(Shape::Field("roles or succinct_roles (exactly one)"));
        }
        if let Some(r) = roles.filter(|_| all) {
            // with a heap, a name listed twice refuses the whole file, as python-tuf does (so a
            // repository tool or server finds out before devices do); without one, the walk
            // and rollback authorizations refuse a duplicate they consult (`listed_keys`)
            // (names borrowed when they have no escapes: a catalog lists hundreds)
            #[cfg(feature = "alloc")]
            let mut names: alloc::vec::Vec<alloc::borrow::Cow<'_, [u8]>> = alloc::vec::Vec::new();
            let mut entries = r.iter();
            while let Some(entry) = DelegatedRole::next(&mut entries) {
                let _role = entry?.ok_or(Shape::Field("roles"))?;
                #[cfg(feature = "alloc")]
                names.push(match _role.name.as_plain() {
                    Some(plain) => alloc::borrow::Cow::Borrowed(plain.as_bytes()),
                    None => alloc::borrow::Cow::Owned(_role.name.bytes().collect()),
                });
            }
            #[cfg(feature = "alloc")]
            {
                names.sort_unstable();
                if names.windows(2).any(|w| w.first() == w.get(1)) {
                    return Err(Shape::Field("delegations.roles (a name is listed twice)"));
                }
            }
        }
        Ok(Delegations {
            keys,
            roles,
            succinct,
        })
    }

    /// Delegations that [`Targets::parse`] accepted before, from their parts: `keys`, and the
    /// `roles` array or the `succinct_roles` object (`list`).
    pub(crate) fn stored(keys: &'a [u8], list: &'a [u8]) -> Option<Self> {
        let (roles, succinct) = match list.first() {
            Some(b'[') => (Some(Array::validated(list)), None),
            _ => (
                None,
                Some(SuccinctRoles::read(&Object::validated(list)).ok()?),
            ),
        };
        Some(Delegations {
            keys: Object::validated(keys),
            roles,
            succinct,
        })
    }

    /// Where [`stored`](Self::stored) finds `roles` or `succinct_roles`.
    pub(crate) fn list(&self) -> &'a [u8] {
        match (self.roles, self.succinct) {
            (Some(r), _) => r.raw(),
            (None, Some(s)) => s.object.raw(),
            (None, None) => &[],
        }
    }

    /// The keys and threshold of entry `index` of `roles` when it is a well-formed entry for
    /// `name`: what [`listed_keys`](Self::listed_keys) finds there without searching, for
    /// delegations [`Targets::parse`] accepted (with a heap it refuses a name listed twice), where
    /// the walk met that entry. `None` otherwise (search then).
    #[cfg(feature = "alloc")]
    pub(crate) fn entry_keys(&self, index: usize, name: &str) -> Option<RoleKeys<'a>> {
        let mut entries = self.roles?.iter();
        for _ in entries.by_ref().take(index) {}
        let role = DelegatedRole::next(&mut entries)?.ok()??;
        role.name.eq_str(name).then(|| role.keys(self.keys))
    }

    /// The keys and threshold of `name` as `roles` lists it; `None` when `roles` does not list
    /// it (or the delegations are succinct). A name listed twice is refused (python-tuf refuses
    /// the whole file): the walk would take the paths and `terminating` of one entry and the keys
    /// of another. The search for rollback authorizations, for `verify_delegated`, and for the
    /// delegation walk on a device (a host's walk reads the entry it matched:
    /// `entry_keys`).
    pub fn listed_keys(&self, name: &str) -> Result<Option<RoleKeys<'a>>, Error> {
        let Some(roles) = self.roles else {
            return Ok(None);
        };
        // each entry's name first (a catalog lists hundreds), the whole entry only when it is
        // the one asked for
        let (mut found, mut named) = (None, false);
        for v in roles.iter() {
            let Some(o) = v.as_object() else { continue };
            let this = o.get("name").ok().flatten().and_then(|n| n.as_str());
            if !this.is_some_and(|n| n.eq_str(name)) {
                continue;
            }
            if named {
                return Err(Error::Field {
                    role: Name::new(name),
                    field: "delegations.roles (the name is listed twice)",
                });
            }
            named = true;
            found = DelegatedRole::read(&o).ok().map(|r| r.keys(self.keys));
        }
        Ok(found)
    }
}

/// The fields of an entry of `delegations.roles`, in the order [`DelegatedRole::of`] takes them.
const DELEGATED_ROLE: [&str; 6] = [
    "name",
    "keyids",
    "threshold",
    "terminating",
    "paths",
    "path_hash_prefixes",
];

/// One entry of `delegations.roles`.
#[derive(Debug, Clone, Copy)]
pub struct DelegatedRole<'a> {
    pub name: JStr<'a>,
    pub keyids: Array<'a>,
    pub threshold: u64,
    pub terminating: bool,
    pub paths: Option<Array<'a>>,
    pub path_hash_prefixes: Option<Array<'a>>,
}

impl<'a> DelegatedRole<'a> {
    pub fn parse(o: &Object<'a>, role: Name) -> Result<Self, Error> {
        Self::read(o).map_err(|shape| shape.named(role))
    }

    /// [`parse`](Self::parse) with the refusal unnamed.
    fn read(o: &Object<'a>) -> Result<Self, Shape<'a>> {
        // one pass over the entry (a lookup per field walks it six times; a catalog of hashed
        // bins parses hundreds of entries)
        Self::of(o.fields(DELEGATED_ROLE).map_err(Shape::Json)?)
    }

    /// The next entry of `roles` (`None` at the end), refused as [`parse`](Self::parse) refuses
    /// it; `Some(Ok(None))` for an entry that is not an object. With a heap, its fields are read
    /// as the walk steps over it ([`Elements::next_fields`]: a catalog of hashed bins lists
    /// hundreds).
    fn next(roles: &mut Elements<'a>) -> Option<Result<Option<Self>, Shape<'a>>> {
        // a device steps over the entry and then reads it, as `next_fields` does there (its
        // answer; written out here, with `MetaFile::check_next`, some 400 B less flash than through
        // `next_fields`)
        #[cfg(feature = "alloc")]
        {
            let entry = roles.next_fields(DELEGATED_ROLE)?;
            Some(entry.map_err(Shape::Json).and_then(|(v, fields)| match v {
                Value::Object(_) => Self::of(fields).map(Some),
                _ => Ok(None),
            }))
        }
        #[cfg(not(feature = "alloc"))]
        {
            Some(
                roles
                    .next()?
                    .as_object()
                    .map(|o| Self::read(&o))
                    .transpose(),
            )
        }
    }

    /// The entry from the values of its [`DELEGATED_ROLE`] fields.
    fn of(
        [name, keyids, threshold, terminating, paths, prefixes]: [Option<Value<'a>>; 6],
    ) -> Result<Self, Shape<'a>> {
        let name = name.and_then(|v| v.as_str()).ok_or(Shape::Field("name"))?;
        // a name the search cannot hold, or a pattern it cannot match, would be passed over
        // and let a lower-priority delegation answer for its targets: refused. With a heap
        // (server, tools) here, for the whole file; a device refuses where its search meets one
        // (`trusted::child`, `DelegatedRole::matches`), which costs less flash
        #[cfg(feature = "alloc")]
        if name.decoded_len() > MAX_NAME_LEN {
            return Err(Shape::Field("name (longer than 128 bytes)"));
        }
        let keyids = keyids
            .and_then(|v| v.as_array())
            .ok_or(Shape::Field("keyids"))?;
        let threshold = threshold
            .and_then(|v| v.as_u64())
            .ok_or(Shape::Field("threshold"))?;
        let terminating = terminating
            .and_then(|v| v.as_bool())
            .ok_or(Shape::Field("terminating"))?;
        let array_or_none = |v: Option<Value<'a>>, field| match v {
            None => Ok(None),
            Some(v) => v.as_array().map(Some).ok_or(Shape::Field(field)),
        };
        let paths = array_or_none(paths, "paths")?;
        let path_hash_prefixes = array_or_none(prefixes, "path_hash_prefixes")?;
        if paths.is_some() == path_hash_prefixes.is_some() {
            return Err(Shape::Field("paths or path_hash_prefixes (exactly one)"));
        }
        for a in [paths, path_hash_prefixes].into_iter().flatten() {
            if a.iter().any(|v| v.as_str().is_none()) {
                return Err(Shape::Field("paths"));
            }
        }
        #[cfg(feature = "alloc")]
        if let Some(p) = paths {
            if p.iter()
                .filter_map(|v| v.as_str())
                .any(|p| p.decoded_len() > MAX_PATTERN_LEN)
            {
                return Err(Shape::Field(PATTERN_TOO_LONG));
            }
        }
        Ok(DelegatedRole {
            name,
            keyids,
            threshold,
            terminating,
            paths,
            path_hash_prefixes,
        })
    }

    pub fn keys(&self, delegator_keys: Object<'a>) -> RoleKeys<'a> {
        RoleKeys {
            name: Name::from_json(&self.name),
            keys: delegator_keys,
            keyids: self.keyids,
            threshold: self.threshold,
        }
    }

    /// Is `target` delegated to this role (by glob patterns or by hash prefixes)? `None` when
    /// that cannot be told: a pattern that cannot be told ([`path_matches`]) comes before any
    /// that matches (the search refuses it rather than pass the delegation over).
    pub fn matches(&self, target: &str, target_hash: &[u8; 32]) -> Option<bool> {
        if let Some(paths) = &self.paths {
            for p in paths.iter().filter_map(|v| v.as_str()) {
                if path_matches(&p, target)? {
                    return Some(true);
                }
            }
            return Some(false);
        }
        if let Some(prefixes) = &self.path_hash_prefixes {
            return Some(
                prefixes
                    .iter()
                    .filter_map(|v| v.as_str())
                    .any(|p| hex_prefix_matches(&p, target_hash)),
            );
        }
        Some(false)
    }
}

/// TAP 15 succinct hash bins: `2^bit_length` roles named `<prefix>-<bin in hex>`.
#[derive(Debug, Clone, Copy)]
pub struct SuccinctRoles<'a> {
    pub keyids: Array<'a>,
    pub threshold: u64,
    pub bit_length: u32,
    pub name_prefix: JStr<'a>,
    /// the `succinct_roles` object these were read from
    pub(crate) object: Object<'a>,
}

impl<'a> SuccinctRoles<'a> {
    fn read(o: &Object<'a>) -> Result<Self, Shape<'a>> {
        let get = |field| o.get(field).map_err(Shape::Json);
        let keyids = get("keyids")?
            .and_then(|v| v.as_array())
            .ok_or(Shape::Field("keyids"))?;
        let uint = |field| {
            get(field)?
                .and_then(|v| v.as_u64())
                .ok_or(Shape::Field(field))
        };
        let threshold = uint("threshold")?;
        let bit_length = uint("bit_length")?;
        let name_prefix = get("name_prefix")?
            .and_then(|v| v.as_str())
            .ok_or(Shape::Field("name_prefix"))?;
        if !(1..=32).contains(&bit_length) {
            return Err(Shape::BadSuccinctRoles("bit_length must be 1..=32"));
        }
        Ok(SuccinctRoles {
            keyids,
            threshold,
            bit_length: bit_length as u32,
            name_prefix,
            object: *o,
        })
    }

    /// The bin a target belongs to: the first `bit_length` bits of sha256(target path).
    pub fn bin_of(&self, target_hash: &[u8; 32]) -> u32 {
        let first = u32::from_be_bytes([
            target_hash[0],
            target_hash[1],
            target_hash[2],
            target_hash[3],
        ]);
        first >> (32 - self.bit_length)
    }

    /// Hex digits in a bin name suffix (python-tuf: ceil(bit_length / 4)).
    pub fn suffix_len(&self) -> usize {
        self.bit_length.div_ceil(4) as usize
    }

    /// Write the name of `bin` (`<prefix>-<hex>`) into `out`.
    pub fn bin_name<'b>(&self, bin: u32, out: &'b mut [u8]) -> Option<&'b str> {
        let mut n = 0;
        for b in self.name_prefix.bytes() {
            *out.get_mut(n)? = b;
            n += 1;
        }
        *out.get_mut(n)? = b'-';
        n += 1;
        let width = self.suffix_len();
        for i in (0..width).rev() {
            let d = (bin >> (4 * i)) & 0xf;
            *out.get_mut(n)? = *b"0123456789abcdef".get(d as usize)?;
            n += 1;
        }
        core::str::from_utf8(out.get(..n)?).ok()
    }

    /// Is `name` one of the `2^bit_length` bin role names (`<prefix>-<hex>`, exact width)?
    pub fn is_bin(&self, name: &str) -> bool {
        let prefix_len = self.name_prefix.decoded_len();
        let (Some(head), Some(rest)) = (name.as_bytes().get(..prefix_len), name.get(prefix_len..))
        else {
            return false;
        };
        let Some(hex) = rest.strip_prefix('-') else {
            return false;
        };
        if !self.name_prefix.eq_bytes(head) || hex.len() != self.suffix_len() {
            return false;
        }
        // lowercase hex digits only; at most 8 of them (`bit_length` is 1..=32), so the value
        // fits (`u64::from_str_radix` pulls in 64-bit overflow checks for nothing)
        let mut bin = 0u64;
        for b in hex.bytes() {
            let d = match b {
                b'0'..=b'9' => b - b'0',
                b'a'..=b'f' => b - b'a' + 10,
                _ => return false,
            };
            bin = (bin << 4) | u64::from(d);
        }
        bin < (1u64 << self.bit_length)
    }

    pub fn keys(&self, delegator_keys: Object<'a>, bin_name: &str) -> RoleKeys<'a> {
        RoleKeys {
            name: Name::new(bin_name),
            keys: delegator_keys,
            keyids: self.keyids,
            threshold: self.threshold,
        }
    }
}

fn hex_prefix_matches(prefix: &JStr<'_>, hash: &[u8; 32]) -> bool {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, c) in prefix.bytes().enumerate() {
        let Some(byte) = hash.get(i / 2) else {
            return false;
        };
        let nib = if i % 2 == 0 { byte >> 4 } else { byte & 0xf };
        // lowercase only, as python-tuf compares with the hexdigest: "AB" matches nothing
        if HEX.get(nib as usize) != Some(&c) {
            return false;
        }
    }
    true
}

/// python-tuf's rule: pattern and target split on `/` must have the same number of parts, and
/// each part must match with shell-style wildcards (`*`, `?`, `[seq]`, `[!seq]`).
/// `None`: whether it matches is not told: the pattern is longer than [`MAX_PATTERN_LEN`]
/// bytes, or it does not match a non-ASCII target here and has a `?` or a class, which python
/// could match there (see [`fnmatch`]).
pub fn path_matches(pattern: &JStr<'_>, target: &str) -> Option<bool> {
    let mut buf = [0u8; MAX_PATTERN_LEN];
    let pattern = pattern.decode_into(&mut buf)?;
    // split as bytes (as in `spec_version_supported`)
    let (mut p, mut t) = (
        pattern.as_bytes().split(|b| *b == b'/'),
        target.as_bytes().split(|b| *b == b'/'),
    );
    loop {
        match (p.next(), t.next()) {
            (None, None) => return Some(true),
            (Some(ps), Some(ts)) => {
                if !fnmatch(ps, ts)? {
                    return Some(false);
                }
            }
            _ => return Some(false),
        }
    }
}

/// The refusal of a delegation whose `paths` pattern is too long to match, or whose match this
/// build cannot tell ([`fnmatch`]): the search stops there, as it would at a match.
pub(crate) const PATTERN_TOO_LONG: &str = "paths (a pattern too long, or ?/[] on non-ASCII)";

/// Shell-style match of one path segment (no `/` in either). Iterative with one backtrack point,
/// so its work is bounded by `pattern.len() * name.len()`.
///
/// `?` and classes match one ASCII character here, where python's `fnmatch` takes a whole
/// character (`fw-?.bin` matches `fw-é.bin`), which costs flash the microcontroller build lacks.
/// Whatever matches here matches in python-tuf too (literals compare bytes, and a match never
/// splits a character: a continuation byte matches nothing). Where a pattern with `?` or a
/// class does not match a non-ASCII path, python's might: [`path_matches`] does not tell, and
/// the search stops with an error rather than pass the delegation over (passing it over would
/// give the path to a later delegation that a terminating match here shuts out, or that python
/// asks first). Before 2026-11-24 `?` and classes took any byte, and a pattern could match a
/// path python-tuf does not (`*?[a-é]?` and `éb]é`); from then until the next fix the
/// undecided case was read as no match.
fn fnmatch(pattern: &[u8], name: &[u8]) -> Option<bool> {
    let (mut p, mut n) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        let c = name.get(n).copied().unwrap_or(0);
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, n));
                p += 1;
                continue;
            }
            // a non-ASCII character python's `?` or class would take: not told
            Some(b'?' | b'[') if !c.is_ascii() => return None,
            Some(b'?') => {
                p += 1;
                n += 1;
                continue;
            }
            Some(b'[') => {
                if let Some((matched, next)) = class_match(pattern, p, c) {
                    if matched {
                        p = next;
                        n += 1;
                        continue;
                    }
                } else if name.get(n) == Some(&b'[') {
                    // an unclosed `[` matches itself
                    p += 1;
                    n += 1;
                    continue;
                }
            }
            Some(c) if Some(c) == name.get(n) => {
                p += 1;
                n += 1;
                continue;
            }
            _ => {}
        }
        match star {
            Some((sp, sn)) => {
                p = sp + 1;
                n = sn + 1;
                star = Some((sp, sn + 1));
            }
            None => return Some(false),
        }
    }
    while pattern.get(p) == Some(&b'*') {
        p += 1;
    }
    Some(p == pattern.len())
}

/// Match `c` against the class starting at `pattern[start] == '['`. Returns (matched, index after
/// the class), or `None` if the class is not closed.
fn class_match(pattern: &[u8], start: usize, c: u8) -> Option<(bool, usize)> {
    let mut i = start + 1;
    let negate = matches!(pattern.get(i), Some(b'!'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    loop {
        let ch = *pattern.get(i)?;
        if ch == b']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        if pattern.get(i + 1) == Some(&b'-') && pattern.get(i + 2).is_some_and(|e| *e != b']') {
            let hi = *pattern.get(i + 2)?;
            if ch <= c && c <= hi {
                matched = true;
            }
            i += 3;
        } else {
            if ch == c {
                matched = true;
            }
            i += 1;
        }
    }
}

/// Names that become file names or URL path segments must not be able to leave their directory:
/// no empty name, no `.` or `..` segment, no `\`, NUL or control characters, and for role names no
/// `/` at all, and no role name longer than [`MAX_NAME_LEN`] bytes (the delegation search holds
/// names that long). Target paths may contain `/` (directories) but not a leading one.
pub fn check_role_name(name: &str) -> Result<(), Error> {
    if name.is_empty()
        || name.len() > MAX_NAME_LEN
        || name == "."
        || name == ".."
        || name.contains('/')
        || !safe_chars(name)
    {
        return Err(Error::UnsafeName {
            name: Name::new(name),
        });
    }
    Ok(())
}

/// Whether `name` is a top-level role's (`root`, `timestamp`, `snapshot`, `targets`).
pub fn is_top_level_role(name: &str) -> bool {
    matches!(name, "root" | "timestamp" | "snapshot" | "targets")
}

/// [`check_role_name`], and not a top-level role's name: a delegated role's metadata would be
/// confused with the top-level role's wherever roles are kept by name (a device's search, a
/// server's `N.root.json`). python-tuf refuses a delegator that names one; a device refuses the
/// delegation when its search reaches it; a repository refuses it at publish.
pub fn check_delegated_role_name(name: &str) -> Result<(), Error> {
    check_role_name(name)?;
    if is_top_level_role(name) {
        return Err(Error::UnsafeName {
            name: Name::new(name),
        });
    }
    Ok(())
}

/// See [`check_role_name`].
pub fn check_target_path(path: &str) -> Result<(), Error> {
    if path.is_empty()
        || path.starts_with('/')
        || !safe_chars(path)
        || path
            .as_bytes()
            .split(|b| *b == b'/')
            .any(|seg| seg.is_empty() || seg == b"." || seg == b"..")
    {
        return Err(Error::UnsafeName {
            name: Name::new(path),
        });
    }
    Ok(())
}

fn safe_chars(s: &str) -> bool {
    !s.chars().any(|c| c == '\\' || c.is_control())
}

/// Parse a whole metadata document of the given top-level type and return its header (for
/// callers that only need version and expiry, e.g. to list what a directory holds).
pub fn peek_header(bytes: &[u8], expected_type: &'static str) -> Result<Header, Error> {
    let env = Envelope::parse(bytes, expected_type)?;
    parse_header(&env.signed, expected_type, Name::new(expected_type))
}

#[allow(dead_code)]
fn _assert_json_error_is_copy(e: JsonError) -> JsonError {
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    fn js(s: &str) -> JStr<'_> {
        // JSON string literal → JStr; test inputs have no escapes
        match json::parse(s.as_bytes()).unwrap() {
            Value::Str(j) => j,
            _ => panic!(),
        }
    }

    #[test]
    fn a_name_listed_twice_is_refused_where_it_is_consulted_or_in_the_whole_file() {
        let doc = br#"{"keys": {}, "roles": [
            {"name": "pump", "keyids": [], "threshold": 1, "terminating": false, "paths": ["a/*"]},
            {"name": "other", "keyids": [], "threshold": 1, "terminating": false, "paths": ["b/*"]},
            {"name": "pu\u006dp", "keyids": [], "threshold": 2, "terminating": true, "paths": ["c/*"]}
        ]}"#;
        let Ok(Value::Object(o)) = json::parse(doc) else {
            panic!("test input")
        };
        #[cfg(feature = "alloc")]
        assert!(matches!(
            Delegations::read(&o, true),
            Err(Shape::Field("delegations.roles (a name is listed twice)"))
        ));
        #[cfg(not(feature = "alloc"))]
        assert!(Delegations::read(&o, true).is_ok());
        // parsed without the whole-file check (stored, or a device build): refused where used
        let d = Delegations::read(&o, false).unwrap_or_else(|_| panic!("read"));
        assert_eq!(
            d.listed_keys("pump").map(|k| k.map(|k| k.threshold)),
            Err(Error::Field {
                role: Name::new("pump"),
                field: "delegations.roles (the name is listed twice)"
            })
        );
        assert_eq!(
            d.listed_keys("other").map(|k| k.map(|k| k.threshold)),
            Ok(Some(1))
        );
        assert_eq!(d.listed_keys("none").map(|k| k.is_some()), Ok(false));
    }

    #[test]
    fn a_meta_entry_with_a_field_twice_is_refused_for_that_before_its_other_faults() {
        let doc = br#"{"_type": "snapshot", "spec_version": "1.0.31", "version": 1,
            "expires": "2030-01-01T00:00:00Z", "meta": {
            "a.json": {"version": 1},
            "b.json": {"version": "x", "length": 1, "length": 2}}}"#;
        let Ok(Value::Object(o)) = json::parse(doc) else {
            panic!("test input")
        };
        assert_eq!(
            Snapshot::parse(&o).map(|_| ()),
            Err(Error::Json {
                role: Name::new("b.json"),
                error: JsonError::DuplicateKey
            })
        );
        // one fault: that one
        let doc = br#"{"_type": "snapshot", "spec_version": "1.0.31", "version": 1,
            "expires": "2030-01-01T00:00:00Z", "meta": {"b.json": {"version": "x"}}}"#;
        let Ok(Value::Object(o)) = json::parse(doc) else {
            panic!("test input")
        };
        assert_eq!(
            Snapshot::parse(&o).map(|_| ()),
            Err(Error::Field {
                role: Name::new("b.json"),
                field: "version"
            })
        );
    }

    #[cfg(feature = "alloc")]
    #[test]
    fn an_entry_read_where_the_walk_met_it_has_the_keys_a_search_finds() {
        let doc = br#"{"keys": {}, "roles": [
            {"name": "a", "keyids": ["k1"], "threshold": 1, "terminating": false, "paths": ["a/*"]},
            7,
            {"name": "b", "keyids": ["k2", "k3"], "threshold": 2, "terminating": true, "paths": ["b/*"]},
            {"name": "c", "keyids": [], "threshold": 1, "terminating": false},
            {"name": "d", "keyids": [], "threshold": 1, "threshold": 1, "terminating": false, "paths": []}
        ]}"#;
        let Ok(Value::Object(o)) = json::parse(doc) else {
            panic!("test input")
        };
        let d = Delegations::read(&o, false).unwrap_or_else(|_| panic!("read"));
        fn keys<'a>(k: Option<RoleKeys<'a>>) -> Option<(&'a [u8], u64)> {
            k.map(|k| (k.keyids.raw(), k.threshold))
        }
        for (i, name) in [(0, "a"), (2, "b")] {
            let found = keys(d.listed_keys(name).unwrap());
            assert!(found.is_some());
            assert_eq!(keys(d.entry_keys(i, name)), found, "{name}");
        }
        // another entry's name, not an object, past the end, malformed (no paths; a field
        // twice): nothing, and the walk searches (which finds nothing for those either)
        assert_eq!(keys(d.entry_keys(0, "b")), None);
        assert_eq!(keys(d.entry_keys(1, "a")), None);
        assert_eq!(keys(d.entry_keys(5, "a")), None);
        for (i, name) in [(3, "c"), (4, "d")] {
            assert_eq!(keys(d.entry_keys(i, name)), None, "{name}");
            assert_eq!(keys(d.listed_keys(name).unwrap()), None, "{name}");
        }
    }

    #[test]
    fn a_delegation_too_long_to_follow_is_refused_for_the_file_or_where_the_search_meets_it() {
        extern crate std;
        use std::format;
        let long_pattern = format!("fw/{}", "?".repeat(MAX_PATTERN_LEN));
        let long_name = "n".repeat(MAX_NAME_LEN + 1);
        let entry = |name: &str, pattern: &str| {
            format!(
                r#"{{"name": "{name}", "keyids": [], "threshold": 1, "terminating": false, "paths": ["other/*", "{pattern}", "fw/*"]}}"#
            )
        };
        for (doc, field) in [
            (entry("r", &long_pattern), PATTERN_TOO_LONG),
            (entry(&long_name, "fw/*"), "name (longer than 128 bytes)"),
        ] {
            let Ok(Value::Object(o)) = json::parse(doc.as_bytes()) else {
                panic!("test input")
            };
            let read = DelegatedRole::read(&o);
            #[cfg(feature = "alloc")]
            assert!(
                matches!(read, Err(Shape::Field(f)) if f == field),
                "{field}"
            );
            #[cfg(not(feature = "alloc"))]
            {
                let _ = field;
                let r = read.unwrap_or_else(|_| panic!("read"));
                let hash = crate::crypto::sha256(b"fw/x.bin");
                // a device build: the pattern cannot be told, before the one that matches
                let told = r.matches("fw/x.bin", &hash);
                if r.name.eq_str("r") {
                    assert_eq!(told, None);
                } else {
                    assert_eq!(told, Some(true));
                }
                assert_eq!(r.matches("other/x.bin", &hash), Some(true));
            }
        }
    }

    #[test]
    fn glob_matching_follows_python_tuf() {
        let cases = [
            ("\"pump-a/*\"", "pump-a/fw.bin", true),
            ("\"pump-a/*\"", "pump-a/beta/fw.bin", false),
            ("\"*\"", "a/b", false),
            ("\"*/*\"", "a/b", true),
            ("\"fw-?.bin\"", "fw-1.bin", true),
            ("\"fw-[0-9].bin\"", "fw-7.bin", true),
            ("\"fw-[!0-9].bin\"", "fw-7.bin", false),
            ("\"*.bin\"", "firmware.bin", true),
            ("\"*.bin\"", "firmware.hex", false),
            ("\"a*b*c\"", "axxbyyc", true),
            ("\"a*b*c\"", "axxbyy", false),
            ("\"[]a]\"", "]", true),
            ("\"[!]]\"", "]", false),
            ("\"[a-]\"", "-", true),
            ("\"[a\"", "[a", true),
            ("\"fw-é.bin\"", "fw-é.bin", true),
            ("\"*é\"", "aéé", true),
            ("\"[!é]\"", "a", true),
            ("\"[a-é]\"", "z", true),
            ("\"[é-z]\"", "a", false),
        ];
        for (p, t, want) in cases {
            assert_eq!(path_matches(&js(p), t), Some(want), "{p} vs {t}");
        }
        // `?` and classes never take a non-ASCII character (python's do; see `fnmatch`), nor a
        // byte of one: the first two matched before 2026-11-24, where python-tuf says no. Where
        // such a pattern does not match a non-ASCII path, the match is not told (python: no,
        // no, yes, yes; and no for the fifth, whose second part cannot match)
        for (p, t) in [
            ("\"*?[a-é]?\"", "éb]é"),
            ("\"*??\"", "é"),
            ("\"fw-?.bin\"", "fw-é.bin"),
            ("\"fw-[!a].bin\"", "fw-é.bin"),
            ("\"?/b\"", "é/c"),
        ] {
            assert_eq!(path_matches(&js(p), t), None, "{p} vs {t}");
        }
        assert_eq!(path_matches(&js("\"a/b\""), "é/c"), Some(false));
        assert_eq!(path_matches(&js("\"?é\""), "aé"), Some(true));
    }

    #[test]
    fn hash_prefix_matching() {
        let h = crate::crypto::sha256(b"file-00001.bin");
        let hex0 = b"0123456789abcdef"[(h[0] >> 4) as usize] as char;
        let mut p = std::string::String::from("\"");
        p.push(hex0);
        p.push('"');
        assert!(hex_prefix_matches(&js(&p), &h));
    }

    #[test]
    fn unsafe_names_are_refused() {
        let unsafe_name = |n: &str| Err(Error::UnsafeName { name: Name::new(n) });
        let long = "r".repeat(MAX_NAME_LEN + 1);
        for bad in ["", ".", "..", "a/b", "a\\b", "x\0", &long] {
            assert_eq!(check_role_name(bad), unsafe_name(bad), "{bad:?}");
        }
        assert!(check_role_name(&long[1..]).is_ok());
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../b",
            "a//b",
            "a\\b",
            "./a",
            "a/",
            "a\nb",
        ] {
            assert_eq!(check_target_path(bad), unsafe_name(bad), "{bad:?}");
        }
        assert!(check_target_path("pump-a/v1.2/fw.bin").is_ok());
        assert!(check_role_name("bin-0a").is_ok());
        for top in ["root", "timestamp", "snapshot", "targets"] {
            assert!(check_role_name(top).is_ok());
            assert_eq!(check_delegated_role_name(top), unsafe_name(top), "{top:?}");
        }
        assert!(check_delegated_role_name("root-a").is_ok());
        assert_eq!(check_delegated_role_name("a/b"), unsafe_name("a/b"));
    }

    #[test]
    fn spec_versions() {
        for (v, ok) in [
            ("\"1.0\"", true),
            ("\"1.0.0\"", true),
            ("\"1.0.31\"", true),
            ("\"1.0.34\"", true),
            ("\"2.0.0\"", false),
            ("\"1\"", false),
            ("\"1.x\"", false),
            ("\"1.0.0.0\"", false),
        ] {
            assert_eq!(spec_version_supported(&js(v)), ok, "{v}");
        }
    }

    extern crate std;
}
