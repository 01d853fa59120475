//! A validating JSON reader that never allocates.
//!
//! [`parse`] checks a whole document once: syntax (RFC 8259), UTF-8, escapes, a nesting limit, and
//! integers only (canonical JSON has no floats). It returns a [`Value`] that borrows the input.
//! Objects and arrays are views over the validated bytes; walking them re-reads those bytes and
//! cannot fail. Strings stay escaped ([`JStr`]) and are decoded on the fly when compared.
//!
//! Duplicate object keys are a classic parser-differential attack (two readers disagree on which
//! value counts). [`Object::get`] scans every member and refuses a key that appears twice, and the
//! canonical encoder refuses them everywhere under `signed`, so a signed document can only be read
//! one way.

use core::cmp::Ordering;
use core::fmt;

use crate::limits::MAX_JSON_DEPTH;

/// Why a document is not acceptable JSON.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonError {
    /// Bad syntax at this byte offset.
    Syntax { offset: usize },
    /// Invalid UTF-8, a bad escape or a lone surrogate in a string at this offset.
    BadString { offset: usize },
    /// A number with a fraction or exponent, a leading zero, or outside the i64 range.
    BadNumber { offset: usize },
    /// Nested deeper than [`MAX_JSON_DEPTH`].
    TooDeep { offset: usize },
    /// Bytes after the top-level value.
    TrailingData { offset: usize },
    /// The same key twice in one object.
    DuplicateKey,
    /// Canonicalising would take more work than [`crate::limits::MAX_CANONICAL_WORK`] allows
    /// (objects too large for a build without `alloc`).
    TooComplex,
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JsonError::Syntax { offset } => write!(f, "JSON syntax error at byte {offset}"),
            JsonError::BadString { offset } => write!(f, "invalid JSON string at byte {offset}"),
            JsonError::BadNumber { offset } => {
                write!(
                    f,
                    "number at byte {offset} is not an integer in the i64 range"
                )
            }
            JsonError::TooDeep { offset } => {
                write!(
                    f,
                    "JSON nested deeper than {MAX_JSON_DEPTH} levels at byte {offset}"
                )
            }
            JsonError::TrailingData { offset } => {
                write!(f, "data after the JSON value at byte {offset}")
            }
            JsonError::DuplicateKey => write!(f, "duplicate key in a JSON object"),
            JsonError::TooComplex => {
                write!(f, "JSON objects too large to canonicalise without a heap")
            }
        }
    }
}

/// A value and, when it is an object, its members named by the keys asked for (in their order;
/// `None`: not there): what [`parse_fields`] and the `next_fields` of [`Members`] and
/// [`Elements`] answer.
pub type WithFields<'a, const N: usize> = Result<(Value<'a>, [Option<Value<'a>>; N]), JsonError>;

/// A validated JSON value borrowing its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Str(JStr<'a>),
    Array(Array<'a>),
    Object(Object<'a>),
}

impl<'a> Value<'a> {
    pub fn as_object(&self) -> Option<Object<'a>> {
        match self {
            Value::Object(o) => Some(*o),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<Array<'a>> {
        match self {
            Value::Array(a) => Some(*a),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<JStr<'a>> {
        match self {
            Value::Str(s) => Some(*s),
            _ => None,
        }
    }
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Value::Int(i) => u64::try_from(*i).ok(),
            _ => None,
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }
    /// The exact input bytes of this value (for objects and arrays, brackets included).
    pub fn raw(&self) -> Option<&'a [u8]> {
        match self {
            Value::Str(s) => Some(s.raw),
            Value::Array(a) => Some(a.raw),
            Value::Object(o) => Some(o.raw),
            _ => None,
        }
    }
}

/// A JSON string as it appears in the input, between the quotes, escapes not yet decoded.
#[derive(Clone, Copy)]
pub struct JStr<'a> {
    raw: &'a [u8],
}

impl<'a> JStr<'a> {
    /// The bytes between the quotes, escapes as written.
    #[cfg(feature = "alloc")]
    pub(crate) fn raw_bytes(&self) -> &'a [u8] {
        self.raw
    }

    /// The string itself when it has no escapes (the common case): no copy, no decoding.
    pub fn as_plain(&self) -> Option<&'a str> {
        if self.raw.contains(&b'\\') {
            None
        } else {
            core::str::from_utf8(self.raw).ok()
        }
    }

    /// Decoded UTF-8 bytes, one at a time.
    pub fn bytes(&self) -> StrBytes<'a> {
        StrBytes {
            raw: self.raw,
            i: 0,
            pending: [0; 4],
            p_len: 0,
            p_i: 0,
        }
    }

    /// Length of the decoded string in bytes.
    pub fn decoded_len(&self) -> usize {
        if self.as_plain().is_some() {
            self.raw.len()
        } else {
            self.bytes().count()
        }
    }

    pub fn eq_str(&self, s: &str) -> bool {
        self.eq_bytes(s.as_bytes())
    }

    pub fn eq_bytes(&self, s: &[u8]) -> bool {
        // without escapes the string is its bytes (validated when parsed: no UTF-8 check again)
        if !self.raw.contains(&b'\\') {
            return self.raw == s;
        }
        self.bytes().eq(s.iter().copied())
    }

    /// Equal to the concatenation of `parts` (e.g. a role name and ".json"), without building it.
    pub fn eq_concat(&self, parts: &[&[u8]]) -> bool {
        // hosts: without escapes the string is its bytes, compared part by part (a catalog's
        // snapshot is searched for a role among hundreds); a device keeps the one general
        // path (flash)
        #[cfg(feature = "alloc")]
        if !self.raw.contains(&b'\\') {
            return self.eq_concat_plain(parts);
        }
        self.bytes()
            .eq(parts.iter().flat_map(|p| p.iter().copied()))
    }

    #[cfg(feature = "alloc")]
    fn eq_concat_plain(&self, parts: &[&[u8]]) -> bool {
        let mut rest = self.raw;
        for p in parts {
            match rest.split_at_checked(p.len()) {
                Some((head, tail)) if head == *p => rest = tail,
                _ => return false,
            }
        }
        rest.is_empty()
    }

    /// Copy the decoded string into `buf`; `None` if it does not fit.
    pub fn decode_into<'b>(&self, buf: &'b mut [u8]) -> Option<&'b str> {
        let mut n = 0;
        for b in self.bytes() {
            *buf.get_mut(n)? = b;
            n += 1;
        }
        core::str::from_utf8(buf.get(..n)?).ok()
    }

    #[cfg(feature = "alloc")]
    pub fn to_owned_string(&self) -> alloc::string::String {
        let v: alloc::vec::Vec<u8> = self.bytes().collect();
        // decoded from validated UTF-8 and escapes: always valid
        alloc::string::String::from_utf8(v).unwrap_or_default()
    }

    /// Order by decoded bytes, which for UTF-8 is Unicode code point order (what canonical JSON
    /// sorts keys by).
    pub fn cmp_decoded(&self, other: &JStr<'_>) -> Ordering {
        // without escapes a string is its bytes (validated when parsed: no UTF-8 check again)
        if self.raw.contains(&b'\\') || other.raw.contains(&b'\\') {
            self.bytes().cmp(other.bytes())
        } else {
            self.raw.cmp(other.raw)
        }
    }
}

impl PartialEq for JStr<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp_decoded(other) == Ordering::Equal
    }
}
impl Eq for JStr<'_> {}

impl fmt::Debug for JStr<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

impl fmt::Display for JStr<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(p) = self.as_plain() {
            return f.write_str(p);
        }
        let mut buf = [0u8; 4];
        let mut n = 0;
        for b in self.bytes() {
            if let Some(slot) = buf.get_mut(n) {
                *slot = b;
            }
            n += 1;
            if let Ok(s) = core::str::from_utf8(buf.get(..n).unwrap_or(&[])) {
                f.write_str(s)?;
                n = 0;
            } else if n >= 4 {
                n = 0;
            }
        }
        Ok(())
    }
}

/// Iterator over the decoded UTF-8 bytes of a [`JStr`].
#[derive(Debug, Clone)]
pub struct StrBytes<'a> {
    raw: &'a [u8],
    i: usize,
    pending: [u8; 4],
    p_len: u8,
    p_i: u8,
}

impl Iterator for StrBytes<'_> {
    type Item = u8;
    fn next(&mut self) -> Option<u8> {
        if self.p_i < self.p_len {
            let b = self.pending.get(self.p_i as usize).copied();
            self.p_i += 1;
            return b;
        }
        let b = *self.raw.get(self.i)?;
        if b != b'\\' {
            self.i += 1;
            return Some(b);
        }
        let e = *self.raw.get(self.i + 1)?;
        self.i += 2;
        let c = match e {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let (c, used) = decode_u_escape(self.raw.get(self.i..)?)?;
                self.i += used;
                c
            }
            _ => return None,
        };
        let s = c.encode_utf8(&mut self.pending);
        self.p_len = s.len() as u8;
        self.p_i = 1;
        self.pending.first().copied()
    }
}

fn hex4(b: &[u8]) -> Option<u32> {
    let mut v = 0u32;
    for &c in b.get(..4)? {
        v = v * 16 + (c as char).to_digit(16)?;
    }
    Some(v)
}

/// Decode the rest of a `\u` escape (`b` starts at the 4 hex digits). Returns the char and how
/// many bytes were used (4, or 10 for a surrogate pair).
fn decode_u_escape(b: &[u8]) -> Option<(char, usize)> {
    let hi = hex4(b)?;
    if (0xD800..0xDC00).contains(&hi) {
        if b.get(4) != Some(&b'\\') || b.get(5) != Some(&b'u') {
            return None;
        }
        let lo = hex4(b.get(6..)?)?;
        if !(0xDC00..0xE000).contains(&lo) {
            return None;
        }
        let c = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
        Some((char::from_u32(c)?, 10))
    } else {
        Some((char::from_u32(hi)?, 4))
    }
}

/// A validated JSON object (brackets included).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Object<'a> {
    raw: &'a [u8],
}

impl fmt::Debug for Object<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Object({} bytes)", self.raw.len())
    }
}

impl<'a> Object<'a> {
    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }

    /// An object over bytes that [`parse`] accepted as one before (a part this crate stored
    /// after checking it). Walking other bytes never panics, but may misread: crate-private.
    pub(crate) fn validated(raw: &'a [u8]) -> Self {
        Object { raw }
    }

    pub fn members(&self) -> Members<'a> {
        Members {
            r: Reader { b: self.raw, i: 1 },
            done: false,
        }
    }

    pub fn len(&self) -> usize {
        self.members().count()
    }

    pub fn is_empty(&self) -> bool {
        self.members().next().is_none()
    }

    /// The value of `key`; `Err(DuplicateKey)` if it appears more than once.
    pub fn get(&self, key: &str) -> Result<Option<Value<'a>>, JsonError> {
        self.get_by(|k| k.eq_str(key))
    }

    /// The values of `keys` in one pass over the members (a lookup per key would walk the object
    /// once each); duplicates of any of them refused as in [`get`](Self::get).
    pub fn fields<const N: usize>(
        &self,
        keys: [&str; N],
    ) -> Result<[Option<Value<'a>>; N], JsonError> {
        let mut found = [None; N];
        self.fields_into(&keys, &mut found)?;
        Ok(found)
    }

    /// [`fields`](Self::fields) for any number of keys: one copy of the walk in the firmware,
    /// not one per `N`.
    fn fields_into(&self, keys: &[&str], found: &mut [Option<Value<'a>>]) -> Result<(), JsonError> {
        let mut members = self.members();
        fill(&mut members, keys, found)
    }

    /// Lookup with a key predicate (e.g. [`JStr::eq_concat`]); duplicates refused as in [`get`](Self::get).
    pub fn get_by(
        &self,
        mut pred: impl FnMut(&JStr<'a>) -> bool,
    ) -> Result<Option<Value<'a>>, JsonError> {
        let mut found = None;
        for (k, v) in self.members() {
            if pred(&k) {
                if found.is_some() {
                    return Err(JsonError::DuplicateKey);
                }
                found = Some(v);
            }
        }
        Ok(found)
    }
}

/// Note the members of `members` named by `keys` in `found` (all `None` on entry), to the end of
/// the object; a requested key met twice is refused: [`Object::fields`] in one pass. (With a heap,
/// `value_fields` runs the same loop to the end past a key met twice.)
fn fill<'a>(
    members: &mut Members<'a>,
    keys: &[&str],
    found: &mut [Option<Value<'a>>],
) -> Result<(), JsonError> {
    for (k, v) in members {
        if note(&k, v, keys, found) {
            return Err(JsonError::DuplicateKey);
        }
    }
    Ok(())
}

/// Put `v` in the slot of `found` whose key in `keys` is `k` (compared decoded, as
/// [`Object::get`] does); whether that slot was taken already (the key is there twice).
fn note<'a>(k: &JStr<'a>, v: Value<'a>, keys: &[&str], found: &mut [Option<Value<'a>>]) -> bool {
    let plain = !k.raw.contains(&b'\\');
    let Some(slot) = keys
        .iter()
        .position(|key| {
            if plain {
                k.raw == key.as_bytes()
            } else {
                k.eq_str(key)
            }
        })
        .and_then(|i| found.get_mut(i))
    else {
        return false;
    };
    slot.replace(v).is_some()
}

/// Iterator over `(key, value)` members of an [`Object`], in document order.
#[derive(Debug, Clone)]
pub struct Members<'a> {
    r: Reader<'a>,
    done: bool,
}

impl<'a> Members<'a> {
    /// The next member's key, the reader left at its value.
    fn key(&mut self) -> Option<JStr<'a>> {
        if self.done {
            return None;
        }
        self.r.ws();
        match self.r.peek()? {
            b'}' => {
                self.done = true;
                return None;
            }
            b',' => {
                self.r.i += 1;
                self.r.ws();
            }
            _ => {}
        }
        let k = self.r.string_span().ok()?;
        self.r.ws();
        self.r.expect(b':').ok()?;
        Some(JStr { raw: k })
    }

    /// The next member, as [`next`](Iterator::next) gives it, and when its value is an object,
    /// that object's members named by `keys`, read in the same pass (stepping over an object
    /// and then reading its fields walks it twice: a catalog's snapshot lists hundreds). A
    /// requested key twice in that object is refused ([`JsonError::DuplicateKey`]); the walk can
    /// go on to the next member.
    pub fn next_fields<const N: usize>(
        &mut self,
        keys: [&str; N],
    ) -> Option<(JStr<'a>, WithFields<'a, N>)> {
        // with a heap (hosts, where a catalog is met) in one pass; a device steps over the value
        // and reads its fields after (less flash; for the validated objects this type walks, the
        // same answer: fuzz/fuzz_targets/json_parse)
        #[cfg(feature = "alloc")]
        {
            let mut found = [None; N];
            let k = self.key()?;
            let v = self.r.value_fields(&keys, &mut found);
            self.done |= matches!(v, Err(e) if e != JsonError::DuplicateKey);
            Some((k, v.map(|v| (v, found))))
        }
        #[cfg(not(feature = "alloc"))]
        {
            let (k, v) = self.next()?;
            Some((k, with_fields(v, keys)))
        }
    }
}

impl<'a> Iterator for Members<'a> {
    type Item = (JStr<'a>, Value<'a>);
    fn next(&mut self) -> Option<Self::Item> {
        let k = self.key()?;
        let v = self.r.value(0, false).ok()?;
        Some((k, v))
    }
}

/// A validated JSON array (brackets included).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Array<'a> {
    raw: &'a [u8],
}

impl fmt::Debug for Array<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Array({} bytes)", self.raw.len())
    }
}

impl<'a> Array<'a> {
    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }

    /// An array over bytes that [`parse`] accepted as one before (see [`Object::validated`]).
    pub(crate) fn validated(raw: &'a [u8]) -> Self {
        Array { raw }
    }

    pub fn iter(&self) -> Elements<'a> {
        Elements {
            r: Reader { b: self.raw, i: 1 },
            done: false,
        }
    }
    pub fn len(&self) -> usize {
        self.iter().count()
    }
    pub fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }
}

/// Iterator over the values of an [`Array`].
#[derive(Debug, Clone)]
pub struct Elements<'a> {
    r: Reader<'a>,
    done: bool,
}

impl<'a> Elements<'a> {
    /// Step to the next element; `None` at the end.
    fn step(&mut self) -> Option<()> {
        if self.done {
            return None;
        }
        self.r.ws();
        match self.r.peek()? {
            b']' => {
                self.done = true;
                return None;
            }
            b',' => {
                self.r.i += 1;
            }
            _ => {}
        }
        Some(())
    }

    /// The next element, as [`next`](Iterator::next) gives it, and when it is an object, its
    /// members named by `keys`, read in the same pass (stepping over an object and then reading
    /// its fields walks it twice: a catalog's delegations list hundreds of roles). A requested
    /// key twice in that object is refused ([`JsonError::DuplicateKey`]); the walk can go on to
    /// the next element.
    pub fn next_fields<const N: usize>(&mut self, keys: [&str; N]) -> Option<WithFields<'a, N>> {
        // with a heap in one pass; a device in two (see `Members::next_fields`)
        #[cfg(feature = "alloc")]
        {
            let mut found = [None; N];
            self.step()?;
            let v = self.r.value_fields(&keys, &mut found);
            self.done |= matches!(v, Err(e) if e != JsonError::DuplicateKey);
            Some(v.map(|v| (v, found)))
        }
        #[cfg(not(feature = "alloc"))]
        {
            Some(with_fields(self.next()?, keys))
        }
    }
}

impl<'a> Iterator for Elements<'a> {
    type Item = Value<'a>;
    fn next(&mut self) -> Option<Self::Item> {
        self.step()?;
        self.r.value(0, false).ok()
    }
}

/// Parse and validate a whole JSON document.
pub fn parse(input: &[u8]) -> Result<Value<'_>, JsonError> {
    let mut r = Reader { b: input, i: 0 };
    // a UTF-8 byte order mark is not JSON (RFC 8259 §8.1 lets a parser ignore it; we refuse, so that
    // two readers cannot disagree)
    let v = r.value(0, true)?;
    r.ws();
    if r.i != input.len() {
        return Err(JsonError::TrailingData { offset: r.i });
    }
    Ok(v)
}

/// `v`, and when it is an object, its fields named by `keys` ([`Object::fields`]): what the
/// one-pass readers answer, in two passes.
#[cfg(not(feature = "alloc"))]
fn with_fields<'a, const N: usize>(v: Value<'a>, keys: [&str; N]) -> WithFields<'a, N> {
    match v.as_object() {
        Some(o) => o.fields(keys).map(|f| (v, f)),
        None => Ok((v, [None; N])),
    }
}

/// [`parse`], and when the document is an object, its members named by `keys` (as
/// [`Object::fields`] finds them), read in the same pass: a metadata envelope is mostly `signed`,
/// which reading the fields after validating would walk again.
pub fn parse_fields<'a, const N: usize>(input: &'a [u8], keys: [&str; N]) -> WithFields<'a, N> {
    // with a heap (hosts, where a catalog is met) in one pass; a device validates, then reads
    // the fields (less flash; the same answer: fuzz/fuzz_targets/json_parse)
    #[cfg(not(feature = "alloc"))]
    {
        with_fields(parse(input)?, keys)
    }
    #[cfg(feature = "alloc")]
    {
        parse_fields_one_pass(input, keys)
    }
}

#[cfg(feature = "alloc")]
fn parse_fields_one_pass<'a, const N: usize>(
    input: &'a [u8],
    keys: [&str; N],
) -> WithFields<'a, N> {
    let mut found = [None; N];
    let mut r = Reader { b: input, i: 0 };
    r.ws();
    let (v, twice) = if r.peek() == Some(b'{') {
        let start = r.i;
        let twice = r.object_noting::<true>(0, &keys, &mut found)?;
        let raw = input.get(start..r.i).unwrap_or(&[]);
        (Value::Object(Object { raw }), twice)
    } else {
        (r.value(0, true)?, false)
    };
    r.ws();
    if r.i != input.len() {
        return Err(JsonError::TrailingData { offset: r.i });
    }
    if twice {
        return Err(JsonError::DuplicateKey);
    }
    Ok((v, found))
}

/// How many leading bytes of `s` are neither `"` nor `\\` (and, with `PRINTABLE`, printable
/// ASCII: nothing to check in a string being validated), counted a machine word at a time. The
/// result is the offset of the first other byte, except in the last bytes of `s` (less than a
/// word), where it may stop short of it; never past it: callers look at the byte it stops at.
fn word_prefix<const PRINTABLE: bool>(s: &[u8]) -> usize {
    const W: usize = core::mem::size_of::<usize>();
    const ONES: usize = usize::MAX / 255;
    const HIGH: usize = ONES << 7;
    // the high bit of every byte equal to `b`; exact up to the first one (a subtraction's
    // borrow can mark only the bytes after it, and the lowest marked byte is all that counts)
    let equal = |x: usize, b: u8| {
        let y = x ^ (ONES * b as usize);
        y.wrapping_sub(ONES) & !y & HIGH
    };
    let mut n = 0;
    for w in s.chunks_exact(W) {
        let Ok(arr) = <[u8; W]>::try_from(w) else {
            break;
        };
        // little-endian: the first byte is the lowest
        let x = usize::from_le_bytes(arr);
        let mut marked = equal(x, b'"') | equal(x, b'\\');
        if PRINTABLE {
            // a byte >= 0x80, or one below 0x20 (the subtraction sets its high bit)
            marked |= (x | x.wrapping_sub(ONES * 0x20)) & HIGH;
        }
        if marked != 0 {
            return n + (marked.trailing_zeros() / 8) as usize;
        }
        n += W;
    }
    n
}

/// The offset of the closing quote of a valid string whose contents start at `i` in `b`.
fn string_end(b: &[u8], mut i: usize) -> Option<usize> {
    loop {
        // to the next quote or backslash a word at a time: metadata is mostly long strings
        // (key ids, hashes, keys), re-read on every lookup
        i += b.get(i..).map_or(0, plain_prefix);
        match b.get(i)? {
            b'"' => return Some(i),
            b'\\' => i += 2,
            _ => i += 1,
        }
    }
}

/// [`word_prefix`] for strings known to be valid: up to a quote or backslash.
pub(crate) fn plain_prefix(s: &[u8]) -> usize {
    word_prefix::<false>(s)
}

#[derive(Debug, Clone)]
struct Reader<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Reader<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    fn expect(&mut self, c: u8) -> Result<(), JsonError> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(JsonError::Syntax { offset: self.i })
        }
    }

    fn literal(&mut self, lit: &[u8]) -> Result<(), JsonError> {
        if self.b.get(self.i..self.i + lit.len()) == Some(lit) {
            self.i += lit.len();
            Ok(())
        } else {
            Err(JsonError::Syntax { offset: self.i })
        }
    }

    /// Read one value. `validate` checks everything; without it the input is known to be valid
    /// (it came out of [`parse`]) and containers are skipped quickly.
    fn value(&mut self, depth: usize, validate: bool) -> Result<Value<'a>, JsonError> {
        self.ws();
        let start = self.i;
        match self.peek() {
            Some(b'{') => {
                if validate {
                    if depth >= MAX_JSON_DEPTH {
                        return Err(JsonError::TooDeep { offset: start });
                    }
                    self.object_body(depth)?;
                } else {
                    self.skip_container()?;
                }
                Ok(Value::Object(Object {
                    raw: self.b.get(start..self.i).unwrap_or(&[]),
                }))
            }
            Some(b'[') => {
                if validate {
                    if depth >= MAX_JSON_DEPTH {
                        return Err(JsonError::TooDeep { offset: start });
                    }
                    self.array_body(depth)?;
                } else {
                    self.skip_container()?;
                }
                Ok(Value::Array(Array {
                    raw: self.b.get(start..self.i).unwrap_or(&[]),
                }))
            }
            Some(b'"') => {
                let raw = if validate {
                    self.string_validated()?
                } else {
                    self.string_span()?
                };
                Ok(Value::Str(JStr { raw }))
            }
            Some(b't') => self.literal(b"true").map(|_| Value::Bool(true)),
            Some(b'f') => self.literal(b"false").map(|_| Value::Bool(false)),
            Some(b'n') => self.literal(b"null").map(|_| Value::Null),
            Some(b'-' | b'0'..=b'9') => self.number().map(Value::Int),
            _ => Err(JsonError::Syntax { offset: start }),
        }
    }

    /// Step over the value here, as `value(0, false)` does, noting on the way the members named
    /// by `keys` when it is an object (into `found`, all `None` on entry). A requested key there
    /// twice is refused with the reader past the object.
    #[cfg(feature = "alloc")]
    fn value_fields(
        &mut self,
        keys: &[&str],
        found: &mut [Option<Value<'a>>],
    ) -> Result<Value<'a>, JsonError> {
        self.ws();
        let start = self.i;
        if self.peek() != Some(b'{') {
            return self.value(0, false);
        }
        let mut members = Members {
            r: Reader {
                b: self.b,
                i: start + 1,
            },
            done: false,
        };
        // to the end of the object even past a key met twice, so that the walk can go on
        let mut twice = false;
        for (k, v) in &mut members {
            twice |= note(&k, v, keys, found);
        }
        if !members.done {
            return Err(JsonError::Syntax {
                offset: members.r.i,
            });
        }
        // the members stop at the closing brace
        self.i = members.r.i + 1;
        if twice {
            return Err(JsonError::DuplicateKey);
        }
        Ok(Value::Object(Object {
            raw: self.b.get(start..self.i).unwrap_or(&[]),
        }))
    }

    /// Validate an object.
    fn object_body(&mut self, depth: usize) -> Result<(), JsonError> {
        self.object_noting::<false>(depth, &[], &mut []).map(|_| ())
    }

    /// Validate an object; with `NOTE`, note on the way its members named by `keys` (the top
    /// level of [`parse_fields`]). `Ok(true)`: valid, but a noted key is there twice (refused by
    /// the caller once the whole document is known to be valid: a syntax error comes first, as
    /// with `parse` then `fields`). One loop for both: `NOTE` is a constant, so validation pays
    /// nothing per member for it (a run-time check made validating ~15% slower).
    #[inline(always)]
    fn object_noting<const NOTE: bool>(
        &mut self,
        depth: usize,
        keys: &[&str],
        found: &mut [Option<Value<'a>>],
    ) -> Result<bool, JsonError> {
        let mut twice = false;
        self.expect(b'{')?;
        self.ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
            return Ok(twice);
        }
        loop {
            self.ws();
            if self.peek() != Some(b'"') {
                return Err(JsonError::Syntax { offset: self.i });
            }
            let k = self.string_validated()?;
            self.ws();
            self.expect(b':')?;
            let v = self.value(depth + 1, true)?;
            if NOTE {
                twice |= note(&JStr { raw: k }, v, keys, found);
            }
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    return Ok(twice);
                }
                _ => return Err(JsonError::Syntax { offset: self.i }),
            }
        }
    }

    fn array_body(&mut self, depth: usize) -> Result<(), JsonError> {
        self.expect(b'[')?;
        self.ws();
        if self.peek() == Some(b']') {
            self.i += 1;
            return Ok(());
        }
        loop {
            self.value(depth + 1, true)?;
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b']') => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return Err(JsonError::Syntax { offset: self.i }),
            }
        }
    }

    /// Skip a container known to be valid: count brackets outside strings.
    fn skip_container(&mut self) -> Result<(), JsonError> {
        // a local index (not `self.i`) stays in a register through the loop
        let (b, mut i) = (self.b, self.i);
        let mut depth = 0usize;
        while let Some(&c) = b.get(i) {
            i += 1;
            match c {
                b'"' => i = string_end(b, i).ok_or(JsonError::Syntax { offset: i })? + 1,
                b'{' | b'[' => depth += 1,
                b'}' | b']' => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        self.i = i;
                        return Ok(());
                    }
                }
                _ => {}
            }
        }
        Err(JsonError::Syntax { offset: i })
    }

    /// A string known to be valid: find its end. Returns the bytes between the quotes.
    fn string_span(&mut self) -> Result<&'a [u8], JsonError> {
        self.expect(b'"')?;
        let start = self.i;
        let end = string_end(self.b, start).ok_or(JsonError::Syntax { offset: start })?;
        self.i = end + 1;
        Ok(self.b.get(start..end).unwrap_or(&[]))
    }

    fn string_validated(&mut self) -> Result<&'a [u8], JsonError> {
        self.expect(b'"')?;
        let start = self.i;
        loop {
            self.i += self.b.get(self.i..).map_or(0, word_prefix::<true>);
            let c = self.peek().ok_or(JsonError::Syntax { offset: self.i })?;
            match c {
                b'"' => break,
                0x00..=0x1f => return Err(JsonError::BadString { offset: self.i }),
                b'\\' => {
                    let e = self.b.get(self.i + 1).copied();
                    match e {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => self.i += 2,
                        Some(b'u') => {
                            let rest = self.b.get(self.i + 2..).unwrap_or(&[]);
                            let (_, used) = decode_u_escape(rest)
                                .ok_or(JsonError::BadString { offset: self.i })?;
                            self.i += 2 + used;
                        }
                        _ => return Err(JsonError::BadString { offset: self.i }),
                    }
                }
                0x80.. => {
                    // one UTF-8 sequence, strictly
                    let len = match c {
                        0xC2..=0xDF => 2,
                        0xE0..=0xEF => 3,
                        0xF0..=0xF4 => 4,
                        _ => return Err(JsonError::BadString { offset: self.i }),
                    };
                    let seq = self
                        .b
                        .get(self.i..self.i + len)
                        .ok_or(JsonError::BadString { offset: self.i })?;
                    if core::str::from_utf8(seq).is_err() {
                        return Err(JsonError::BadString { offset: self.i });
                    }
                    self.i += len;
                }
                _ => self.i += 1,
            }
        }
        let s = self.b.get(start..self.i).unwrap_or(&[]);
        self.i += 1;
        Ok(s)
    }

    fn number(&mut self) -> Result<i64, JsonError> {
        let start = self.i;
        let neg = self.peek() == Some(b'-');
        if neg {
            self.i += 1;
        }
        let digits_start = self.i;
        while let Some(b'0'..=b'9') = self.peek() {
            self.i += 1;
        }
        let digits = self.b.get(digits_start..self.i).unwrap_or(&[]);
        let bad = JsonError::BadNumber { offset: start };
        if digits.is_empty() || (digits.len() > 1 && digits.first() == Some(&b'0')) {
            return Err(bad);
        }
        if let Some(b'.' | b'e' | b'E') = self.peek() {
            return Err(bad);
        }
        // accumulate negatively so i64::MIN parses
        let mut v: i64 = 0;
        for &d in digits {
            v = v
                .checked_mul(10)
                .and_then(|v| v.checked_sub(i64::from(d - b'0')))
                .ok_or(bad)?;
        }
        if neg {
            if v == 0 {
                // "-0" has no canonical form
                return Err(bad);
            }
            Ok(v)
        } else {
            v.checked_neg().ok_or(bad)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_in_one_pass_answer_as_get_does() {
        let doc = br#"{"b": 2, "a": {"x": 1}, "\u0063": "c", "z": 0, "z": 1}"#;
        let o = parse(doc).unwrap().as_object().unwrap();
        let [a, b, c, d] = o.fields(["a", "b", "c", "d"]).unwrap();
        assert_eq!(a, o.get("a").unwrap());
        assert_eq!(b, Some(Value::Int(2)));
        // keys compare decoded, as in `get`
        assert_eq!(
            c.and_then(|v| v.as_str()).map(|s| s.eq_str("c")),
            Some(true)
        );
        assert_eq!(d, None);
        // a duplicate of a requested key is refused; one of another key is not looked at
        assert_eq!(o.fields(["a", "z"]), Err(JsonError::DuplicateKey));
        assert_eq!(o.get("z"), Err(JsonError::DuplicateKey));
    }

    #[test]
    fn fields_read_in_the_walks_own_pass_answer_as_fields_does() {
        let doc = br#"[{"a": [1, {"a": 2}], "b": "x"}, 7, {"\u0062": 3, "c": {}}, {"a": 1, "a": 2}, {"b": 4}]"#;
        let arr = parse(doc).unwrap().as_array().unwrap();
        let elements: heapless::Vec<Value<'_>, 8> = arr.iter().collect();
        let mut walk = arr.iter();
        let mut next = || walk.next_fields(["a", "b"]);
        let (v, [a, b]) = next().unwrap().unwrap();
        assert_eq!(v, elements[0]);
        assert_eq!(a.unwrap().raw(), Some(&b"[1, {\"a\": 2}]"[..]));
        assert!(b.unwrap().as_str().unwrap().eq_str("x"));
        // not an object: the element, no fields
        assert_eq!(next(), Some(Ok((Value::Int(7), [None, None]))));
        // keys compare decoded
        let (v, [a, b]) = next().unwrap().unwrap();
        assert_eq!((v, a, b), (elements[2], None, Some(Value::Int(3))));
        // a requested key twice is refused, and the walk goes on past that element
        assert_eq!(next(), Some(Err(JsonError::DuplicateKey)));
        assert_eq!(next(), Some(Ok((elements[4], [None, Some(Value::Int(4))]))));
        assert_eq!(next(), None);

        // the same for the members of an object
        let o = parse(br#"{"x": {"a": 1, "a": 1}, "y": {"b": true}, "z": 0}"#)
            .unwrap()
            .as_object()
            .unwrap();
        let mut walk = o.members();
        let (k, r) = walk.next_fields(["b"]).unwrap();
        assert!(k.eq_str("x"));
        // "a" was not asked for: twice is not looked at
        assert_eq!(r.map(|(_, f)| f), Ok([None]));
        let (k, r) = walk.next_fields(["a"]).unwrap();
        assert!(k.eq_str("y"));
        assert_eq!(r.map(|(_, f)| f), Ok([None]));
        let (k, r) = walk.next_fields(["a"]).unwrap();
        assert!(k.eq_str("z"));
        assert_eq!(r, Ok((Value::Int(0), [None])));
        assert!(walk.next_fields(["a"]).is_none());
        let mut walk = o.members();
        assert_eq!(
            walk.next_fields(["a"]).unwrap().1,
            Err(JsonError::DuplicateKey)
        );
        assert!(walk.next_fields(["b"]).unwrap().0.eq_str("y"));
    }

    #[test]
    fn fields_read_while_validating_answer_as_parse_then_fields() {
        let doc = br#" {"signatures": [], "signed": {"v": 1}} "#;
        let (v, [signed, sigs]) = parse_fields(doc, ["signed", "signatures"]).unwrap();
        assert_eq!(v, parse(doc).unwrap());
        assert_eq!(signed.unwrap().raw(), Some(&b"{\"v\": 1}"[..]));
        assert_eq!(sigs.unwrap().raw(), Some(&b"[]"[..]));
        // a key twice is refused, but only once the whole document is known to be JSON
        assert_eq!(
            parse_fields(br#"{"a": 1, "a": 2}"#, ["a"]),
            Err(JsonError::DuplicateKey)
        );
        assert_eq!(
            parse_fields(br#"{"a": 1, "a": 2, "b": 1.5}"#, ["a"]),
            Err(JsonError::BadNumber { offset: 22 })
        );
        assert_eq!(
            parse_fields(br#"{"a": 1, "a": 2} x"#, ["a"]),
            Err(JsonError::TrailingData { offset: 17 })
        );
        // twice under a key not asked for is not looked at, as with `fields`
        assert!(parse_fields(br#"{"a": 1, "a": 2}"#, ["b"]).is_ok());
        // not an object: the value, no fields
        assert_eq!(
            parse_fields(b" [1] ", ["a"]),
            Ok((parse(b"[1]").unwrap(), [None]))
        );
        assert_eq!(parse_fields(b"", ["a"]), parse(b"").map(|v| (v, [None])));
    }

    #[test]
    fn parses_nested_values_and_walks_them() {
        let doc = br#" {"a": [1, -2, {"b": null}], "c": "x\u00e9\"y", "d": true} "#;
        let v = parse(doc).unwrap();
        let o = v.as_object().unwrap();
        assert_eq!(o.len(), 3);
        let a = o.get("a").unwrap().unwrap().as_array().unwrap();
        let items: heapless::Vec<Value<'_>, 4> = a.iter().collect();
        assert_eq!(items[0], Value::Int(1));
        assert_eq!(items[1], Value::Int(-2));
        let c = o.get("c").unwrap().unwrap().as_str().unwrap();
        assert!(c.eq_str("xé\"y"));
        assert_eq!(c.as_plain(), None);
        assert_eq!(o.get("d").unwrap(), Some(Value::Bool(true)));
        assert_eq!(o.get("zz").unwrap(), None);
    }

    #[test]
    fn refuses_duplicate_keys_on_lookup() {
        let v = parse(br#"{"k":1,"k":2}"#).unwrap();
        assert_eq!(
            v.as_object().unwrap().get("k"),
            Err(JsonError::DuplicateKey)
        );
    }

    #[test]
    fn refuses_floats_and_bad_numbers() {
        assert_eq!(parse(b"1.5"), Err(JsonError::BadNumber { offset: 0 }));
        assert_eq!(parse(b"1e3"), Err(JsonError::BadNumber { offset: 0 }));
        assert_eq!(parse(b"01"), Err(JsonError::BadNumber { offset: 0 }));
        assert_eq!(parse(b"-0"), Err(JsonError::BadNumber { offset: 0 }));
        assert_eq!(
            parse(b"9223372036854775808"),
            Err(JsonError::BadNumber { offset: 0 })
        );
        assert_eq!(parse(b"-9223372036854775808"), Ok(Value::Int(i64::MIN)));
    }

    #[test]
    fn refuses_bad_strings() {
        assert_eq!(
            parse(b"\"\\ud800\""),
            Err(JsonError::BadString { offset: 1 })
        );
        assert_eq!(parse(b"\"a\x01\""), Err(JsonError::BadString { offset: 2 }));
        assert_eq!(parse(b"\"\xff\""), Err(JsonError::BadString { offset: 1 }));
        assert_eq!(parse(b"\"\\q\""), Err(JsonError::BadString { offset: 1 }));
        assert!(parse("\"\\ud83d\\ude00\"".as_bytes()).is_ok());
    }

    #[test]
    fn refuses_deep_nesting_and_trailing_data() {
        let mut deep = [b'['; 200];
        deep[199] = b']';
        assert!(matches!(parse(&deep), Err(JsonError::TooDeep { .. })));
        assert_eq!(parse(b"{} x"), Err(JsonError::TrailingData { offset: 3 }));
        assert_eq!(
            parse(b"\xef\xbb\xbf{}"),
            Err(JsonError::Syntax { offset: 0 })
        );
    }

    /// Bytes where the word-at-a-time scan could go wrong: the bytes it looks for, their
    /// neighbours (a subtraction borrows from a 0x00 or a byte below 0x20 into the next one),
    /// and the edges of the printable range.
    const EDGES: [u8; 12] = [
        b'"', b'\\', 0x00, 0x01, 0x1f, b' ', b'!', b'#', 0x7f, 0x80, 0xff, b'a',
    ];

    #[test]
    fn word_scan_stops_exactly_at_the_first_byte_it_looks_for() {
        // every string of 8 + 3 bytes drawn from the edges at 3 places over a plain background
        // (the rest of a word, a whole word, the tail past the last whole word)
        let naive = |s: &[u8], printable: bool| {
            s.iter()
                .position(|&c| c == b'"' || c == b'\\' || (printable && !(0x20..0x80).contains(&c)))
                .unwrap_or(s.len())
        };
        let mut checked = 0;
        for &x in &EDGES {
            for &y in &EDGES {
                for &z in &EDGES {
                    for (i, j, k) in [(0, 1, 9), (3, 4, 10), (7, 8, 2), (6, 7, 8), (1, 5, 6)] {
                        let mut s = [b'k'; 11];
                        s[i] = x;
                        s[j] = y;
                        s[k] = z;
                        for (got, want) in [
                            (word_prefix::<false>(&s), naive(&s, false)),
                            (word_prefix::<true>(&s), naive(&s, true)),
                        ] {
                            // exact within whole words; in the last bytes it may stop short
                            assert!(got <= want, "{s:?}: {got} past {want}");
                            if want < 8 {
                                assert_eq!(got, want, "{s:?}");
                            } else {
                                assert_eq!(got, 8, "{s:?}");
                            }
                            checked += 1;
                        }
                    }
                }
            }
        }
        assert_eq!(checked, 12 * 12 * 12 * 5 * 2);
    }

    #[test]
    fn known_valid_strings_and_containers_end_where_the_validating_reader_says() {
        let doc = br#"{"a\"b":["\\",{"c":"\"}\""}],"k":"0123456789abcdef\u00e9x","e":{}}"#;
        let o = parse(doc).unwrap().as_object().unwrap();
        let members: heapless::Vec<(JStr<'_>, Value<'_>), 4> = o.members().collect();
        assert_eq!(members.len(), 3);
        assert!(members[0].0.eq_str("a\"b"));
        assert_eq!(members[0].1.raw(), Some(&br#"["\\",{"c":"\"}\""}]"#[..]));
        assert!(members[1].1.as_str().unwrap().eq_str("0123456789abcdeféx"));
        assert_eq!(members[2].1.raw(), Some(&b"{}"[..]));
        // an escaped key compares decoded; a plain one by its bytes
        assert_eq!(o.fields(["a\"b", "k", "x"]).unwrap()[0], Some(members[0].1));
        assert!(JStr { raw: b"ab" }.eq_bytes(b"ab"));
        assert!(!JStr { raw: b"ab" }.eq_bytes(b"abc"));
        assert!(JStr { raw: br"\u0061" }.eq_bytes(b"a"));
        // a role's snapshot key: its name and ".json", plain or escaped
        let key = |raw: &'static [u8]| JStr { raw };
        assert!(key(b"bin-0a.json").eq_concat(&[b"bin-0a", b".json"]));
        assert!(key(br"bin-0\u0061.json").eq_concat(&[b"bin-0a", b".json"]));
        for other in [
            &b"bin-0a.jso"[..],
            b"bin-0a.jsonx",
            b"bin-0b.json",
            b"bin-0a",
            b"",
        ] {
            assert!(!key(other).eq_concat(&[b"bin-0a", b".json"]), "{other:?}");
        }
        assert_eq!(
            JStr { raw: b"b" }.cmp_decoded(&JStr { raw: br"\u0061" }),
            Ordering::Greater
        );
    }

    #[test]
    fn decodes_surrogate_pairs_and_orders_by_code_point() {
        let v = parse("[\"\\ud83d\\ude00\", \"\u{ffff}\"]".as_bytes()).unwrap();
        let a: heapless::Vec<Value<'_>, 2> = v.as_array().unwrap().iter().collect();
        let emoji = a[0].as_str().unwrap();
        let ffff = a[1].as_str().unwrap();
        assert!(emoji.eq_str("😀"));
        // U+1F600 sorts after U+FFFF by code point (UTF-16 order would put it before)
        assert_eq!(emoji.cmp_decoded(&ffff), Ordering::Greater);
    }
}
