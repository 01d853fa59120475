//! OLPC canonical JSON, as securesystemslib and python-tuf produce it.
//!
//! Rules: no whitespace; object keys sorted by Unicode code point; strings written with only `\`
//! and `"` escaped (every other character, control characters included, raw UTF-8); integers in
//! decimal; `true`, `false`, `null`. There are no floats. This is not RFC 8785.
//!
//! The encoder streams into a [`Sink`] (a hash, a signature verifier, a buffer) so that a device
//! can verify metadata written in any layout — python-tuf's indented files included — without a
//! heap. Without the `alloc` feature, object members are emitted by repeated selection
//! (O(n²) key comparisons per object, no memory); with `alloc` they are sorted.
//!
//! Two members with the same key make an object that cannot be canonicalised: refused with
//! [`JsonError::DuplicateKey`].

use crate::json::{JStr, JsonError, Value};

/// Where canonical bytes go.
pub trait Sink {
    fn write(&mut self, bytes: &[u8]);
}

impl<S: Sink + ?Sized> Sink for &mut S {
    fn write(&mut self, bytes: &[u8]) {
        (**self).write(bytes)
    }
}

impl Sink for sha2::Sha256 {
    fn write(&mut self, bytes: &[u8]) {
        crate::crypto::sha256_update(self, bytes)
    }
}

#[cfg(feature = "alloc")]
impl Sink for alloc::vec::Vec<u8> {
    fn write(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes)
    }
}

/// Counts bytes (to size a buffer, or to bound work).
#[derive(Debug, Default, Clone, Copy)]
pub struct Counter(pub usize);

impl Sink for Counter {
    fn write(&mut self, bytes: &[u8]) {
        self.0 += bytes.len()
    }
}

/// Write `value` in canonical form.
pub fn write_canonical<S: Sink + ?Sized>(value: &Value<'_>, sink: &mut S) -> Result<(), JsonError> {
    let mut budget = crate::limits::MAX_CANONICAL_WORK;
    write_value::<S, true>(value, sink, &mut budget)
}

/// `SHORTCUT` (hosts only, see [`is_canonical`]): a container already in canonical form is written
/// as its bytes, at once, instead of member by member. Metadata from a canonical encoder
/// (hale-sign, hale-server, python-tuf's compact form) is such a container as a whole; in other
/// files the keys and role lists usually are. A device keeps the one general path, for flash.
fn write_value<S: Sink + ?Sized, const SHORTCUT: bool>(
    value: &Value<'_>,
    sink: &mut S,
    budget: &mut usize,
) -> Result<(), JsonError> {
    #[cfg(feature = "alloc")]
    if SHORTCUT {
        if let Value::Object(o) = value {
            if is_canonical(o.raw()) {
                sink.write(o.raw());
                return Ok(());
            }
        }
    }
    match value {
        Value::Null => sink.write(b"null"),
        Value::Bool(true) => sink.write(b"true"),
        Value::Bool(false) => sink.write(b"false"),
        Value::Int(i) => write_int(*i, sink),
        Value::Str(s) => write_string(s, sink),
        Value::Array(a) => {
            sink.write(b"[");
            for (n, v) in a.iter().enumerate() {
                if n > 0 {
                    sink.write(b",");
                }
                write_value::<S, SHORTCUT>(&v, sink, budget)?;
            }
            sink.write(b"]");
        }
        Value::Object(o) => {
            sink.write(b"{");
            write_members::<S, SHORTCUT>(o, sink, budget)?;
            sink.write(b"}");
        }
    }
    Ok(())
}

/// [`write_canonical`] without the already-canonical shortcut: the member-by-member encoder only.
/// For the differential checks that hold the two equal (unit tests, the `canonical` fuzz target);
/// not part of the API.
#[cfg(feature = "alloc")]
#[doc(hidden)]
pub fn write_canonical_general<S: Sink + ?Sized>(
    value: &Value<'_>,
    sink: &mut S,
) -> Result<(), JsonError> {
    let mut budget = crate::limits::MAX_CANONICAL_WORK;
    write_value::<S, false>(value, sink, &mut budget)
}

/// Whether `raw`, a container that [`crate::json::parse`] accepted, is already in canonical form,
/// so that the encoder would write exactly these bytes: no whitespace; object keys strictly
/// increasing (bytewise, which for UTF-8 is code point order; "strictly" also rules out duplicate
/// keys); no escape but `\"` and `\\` (a key with any escape is left to the encoder). Integers
/// need no check: the parser takes only canonical ones. One pass, no allocation; `false` sends the
/// value to the general encoder, so a wrong `false` costs time, never correctness.
#[cfg(feature = "alloc")]
pub(crate) fn is_canonical(raw: &[u8]) -> bool {
    use crate::limits::MAX_JSON_DEPTH;
    // per open container: is it an object, and the previous key seen in it
    let mut object = [false; MAX_JSON_DEPTH + 1];
    let mut prev: [Option<&[u8]>; MAX_JSON_DEPTH + 1] = [None; MAX_JSON_DEPTH + 1];
    let mut depth = 0usize;
    let mut key_next = false;
    let mut i = 0;
    while let Some(&c) = raw.get(i) {
        i += 1;
        match c {
            b'{' | b'[' => {
                depth += 1;
                let (Some(o), Some(p)) = (object.get_mut(depth), prev.get_mut(depth)) else {
                    return false;
                };
                *o = c == b'{';
                *p = None;
                key_next = c == b'{';
            }
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
                key_next = false;
            }
            b',' => key_next = object.get(depth).copied().unwrap_or(false),
            b':' => key_next = false,
            b'"' => {
                let start = i;
                let mut escaped = false;
                loop {
                    i += raw.get(i..).map_or(0, crate::json::plain_prefix);
                    match raw.get(i) {
                        Some(b'"') => break,
                        Some(b'\\') => {
                            if !matches!(raw.get(i + 1), Some(b'"' | b'\\')) {
                                return false;
                            }
                            escaped = true;
                            i += 2;
                        }
                        Some(_) => i += 1,
                        None => return false,
                    }
                }
                let s = raw.get(start..i).unwrap_or(&[]);
                i += 1;
                if key_next {
                    if escaped {
                        return false;
                    }
                    let Some(p) = prev.get_mut(depth) else {
                        return false;
                    };
                    if p.is_some_and(|p| p >= s) {
                        return false;
                    }
                    *p = Some(s);
                    key_next = false;
                }
            }
            b' ' | b'\t' | b'\n' | b'\r' => return false,
            _ => {}
        }
    }
    true
}

#[cfg(not(feature = "alloc"))]
fn write_members<S: Sink + ?Sized, const SHORTCUT: bool>(
    o: &crate::json::Object<'_>,
    sink: &mut S,
    budget: &mut usize,
) -> Result<(), JsonError> {
    use core::cmp::Ordering;
    let mut prev: Option<JStr<'_>> = None;
    let mut first = true;
    loop {
        // every pass re-scans the whole object
        *budget = budget
            .checked_sub(o.raw().len())
            .ok_or(JsonError::TooComplex)?;
        // the smallest key greater than the last one written
        let mut best: Option<(JStr<'_>, Value<'_>)> = None;
        let mut dup = false;
        for (k, v) in o.members() {
            if let Some(p) = &prev {
                if k.cmp_decoded(p) != Ordering::Greater {
                    continue;
                }
            }
            match &best {
                Some((bk, _)) => match k.cmp_decoded(bk) {
                    Ordering::Less => {
                        best = Some((k, v));
                        dup = false;
                    }
                    Ordering::Equal => dup = true,
                    Ordering::Greater => {}
                },
                None => best = Some((k, v)),
            }
        }
        let Some((k, v)) = best else { return Ok(()) };
        if dup {
            return Err(JsonError::DuplicateKey);
        }
        if !first {
            sink.write(b",");
        }
        first = false;
        write_string(&k, sink);
        sink.write(b":");
        write_value::<S, SHORTCUT>(&v, sink, budget)?;
        prev = Some(k);
    }
}

#[cfg(feature = "alloc")]
fn write_members<S: Sink + ?Sized, const SHORTCUT: bool>(
    o: &crate::json::Object<'_>,
    sink: &mut S,
    budget: &mut usize,
) -> Result<(), JsonError> {
    let mut members: alloc::vec::Vec<(JStr<'_>, Value<'_>)> = o.members().collect();
    // keys without escapes in strictly increasing byte order are sorted by code point and
    // distinct already (UTF-8 keeps code point order): the usual case, no decoding needed
    let plain_sorted = members.windows(2).all(|pair| match pair {
        [a, b] => {
            let (a, b) = (a.0.raw_bytes(), b.0.raw_bytes());
            !a.contains(&b'\\') && !b.contains(&b'\\') && a < b
        }
        _ => true,
    });
    if !plain_sorted {
        members.sort_by(|a, b| a.0.cmp_decoded(&b.0));
        for pair in members.windows(2) {
            if let [a, b] = pair {
                if a.0 == b.0 {
                    return Err(JsonError::DuplicateKey);
                }
            }
        }
    }
    for (n, (k, v)) in members.iter().enumerate() {
        if n > 0 {
            sink.write(b",");
        }
        write_string(k, sink);
        sink.write(b":");
        write_value::<S, SHORTCUT>(v, sink, budget)?;
    }
    Ok(())
}

fn write_int<S: Sink + ?Sized>(i: i64, sink: &mut S) {
    let mut buf = [0u8; 20];
    if i < 0 {
        sink.write(b"-");
    }
    sink.write(decimal(i.unsigned_abs(), &mut buf).as_bytes());
}

/// `v` in decimal, written at the end of `buf`. Only 32-bit divisions: a 64-bit one pulls about
/// 1 KB of library code into a Cortex-M build.
pub fn decimal(mut v: u64, buf: &mut [u8; 20]) -> &str {
    let mut i = buf.len();
    loop {
        let (q, digit) = div10(v);
        i -= 1;
        if let Some(b) = buf.get_mut(i) {
            *b = b'0' + digit;
        }
        v = q;
        if v == 0 || i == 0 {
            break;
        }
    }
    core::str::from_utf8(buf.get(i..).unwrap_or(&[])).unwrap_or("")
}

/// `(v / 10, v % 10)` by long division in 16-bit steps (every partial dividend fits 32 bits).
fn div10(v: u64) -> (u64, u8) {
    let hi = (v >> 32) as u32;
    let lo = v as u32;
    let x = (hi % 10) << 16 | lo >> 16;
    let y = (x % 10) << 16 | (lo & 0xFFFF);
    let q = u64::from(hi / 10) << 32 | u64::from(x / 10) << 16 | u64::from(y / 10);
    (q, (y % 10) as u8)
}

fn write_string<S: Sink + ?Sized>(s: &JStr<'_>, sink: &mut S) {
    sink.write(b"\"");
    if let Some(p) = s.as_plain() {
        // fast path: no escapes in the input; only `"` cannot appear unescaped, so only `\` could
        // need escaping — and a plain string has none
        sink.write(p.as_bytes());
    } else {
        let mut buf = [0u8; 64];
        let mut n = 0;
        for b in s.bytes() {
            let esc = b == b'"' || b == b'\\';
            if n + 2 > buf.len() {
                sink.write(buf.get(..n).unwrap_or(&[]));
                n = 0;
            }
            if esc {
                if let Some(slot) = buf.get_mut(n) {
                    *slot = b'\\';
                }
                n += 1;
            }
            if let Some(slot) = buf.get_mut(n) {
                *slot = b;
            }
            n += 1;
        }
        sink.write(buf.get(..n).unwrap_or(&[]));
    }
    sink.write(b"\"");
}

/// Canonical bytes of a whole document (signing tools and servers).
#[cfg(feature = "alloc")]
pub fn to_canonical_vec(input: &[u8]) -> Result<alloc::vec::Vec<u8>, JsonError> {
    let v = crate::json::parse(input)?;
    let mut out = alloc::vec::Vec::with_capacity(input.len());
    write_canonical(&v, &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::parse;

    #[test]
    fn decimal_matches_64_bit_division() {
        let mut buf = [0u8; 20];
        for v in [
            0u64,
            9,
            10,
            4_294_967_295,
            4_294_967_296,
            12_345_678_901_234_567_890,
            u64::MAX - 1,
            u64::MAX,
        ] {
            assert_eq!(div10(v), (v / 10, (v % 10) as u8));
            let mut expected = [0u8; 20];
            let mut n = expected.len();
            let mut u = v;
            loop {
                n -= 1;
                expected[n] = b'0' + (u % 10) as u8;
                u /= 10;
                if u == 0 {
                    break;
                }
            }
            assert_eq!(decimal(v, &mut buf).as_bytes(), &expected[n..]);
        }
        assert_eq!(decimal(u64::MAX, &mut buf), "18446744073709551615");
    }

    struct Buf {
        b: [u8; 512],
        n: usize,
    }
    impl Sink for Buf {
        fn write(&mut self, bytes: &[u8]) {
            self.b[self.n..self.n + bytes.len()].copy_from_slice(bytes);
            self.n += bytes.len();
        }
    }
    fn canon(input: &str) -> Result<([u8; 512], usize), JsonError> {
        let v = parse(input.as_bytes())?;
        let mut b = Buf { b: [0; 512], n: 0 };
        write_canonical(&v, &mut b)?;
        Ok((b.b, b.n))
    }
    fn canon_str(input: &str) -> Result<&'static str, JsonError> {
        let (b, n) = canon(input)?;
        let s = core::str::from_utf8(&b[..n]).unwrap();
        Ok(std::boxed::Box::leak(
            std::string::String::from(s).into_boxed_str(),
        ))
    }

    extern crate std;

    #[test]
    fn sorts_keys_and_strips_whitespace() {
        assert_eq!(
            canon_str("{ \"b\": [1, 2, {\"z\": null, \"a\": true}],\n  \"a\": \"x\" }"),
            Ok(r#"{"a":"x","b":[1,2,{"a":true,"z":null}]}"#)
        );
    }

    #[test]
    fn escapes_only_quote_and_backslash() {
        // \n decoded to a raw newline, é kept as UTF-8, \" and \\ kept escaped, \/ becomes /
        assert_eq!(
            canon_str(r#"["a\nb\u00e9\"\\\/"]"#),
            Ok("[\"a\nbé\\\"\\\\/\"]")
        );
    }

    #[test]
    fn sorts_by_code_point_with_escaped_keys() {
        assert_eq!(
            canon_str(r#"{"\u00e9":1,"z":2,"A":3}"#),
            Ok("{\"A\":3,\"z\":2,\"é\":1}")
        );
    }

    #[test]
    fn refuses_duplicate_keys() {
        assert_eq!(
            canon_str(r#"{"a":1,"b":{"x":1,"x":2}}"#),
            Err(JsonError::DuplicateKey)
        );
        // the same key spelled with an escape is still the same key
        assert_eq!(
            canon_str(r#"{"a":1,"\u0061":2}"#),
            Err(JsonError::DuplicateKey)
        );
    }

    /// Found by fuzzing: without a heap, canonicalising re-scans an object once per member, so a
    /// hostile object with thousands of members cost seconds. The work is bounded now.
    #[cfg(not(feature = "alloc"))]
    #[test]
    fn refuses_objects_too_large_to_canonicalise_without_a_heap() {
        let mut doc = std::string::String::from("{");
        for i in 0..3000 {
            doc.push_str(&std::format!("\"member-{i:05}\":{{\"version\":{i}}},"));
        }
        doc.pop();
        doc.push('}');
        let v = parse(doc.as_bytes()).unwrap();
        assert_eq!(
            write_canonical(&v, &mut Counter::default()),
            Err(JsonError::TooComplex)
        );
        // a snapshot with 256 hash bins still fits the budget
        let mut snap = std::string::String::from("{");
        for i in 0..257 {
            snap.push_str(&std::format!("\"bin-{i:02x}.json\":{{\"version\":{i}}},"));
        }
        snap.pop();
        snap.push('}');
        let v = parse(snap.as_bytes()).unwrap();
        assert!(write_canonical(&v, &mut Counter::default()).is_ok());
    }

    #[cfg(feature = "alloc")]
    #[test]
    fn already_canonical_shortcut_agrees_with_the_encoder() {
        let docs: &[(&str, bool)] = &[
            (r#"{"a":"x","b":[1,2,{"a":true,"z":null}]}"#, true),
            (r#"{"a":"q\"uote","b":"back\\slash","c":"é"}"#, true),
            (r#"{"":1,"a":{},"b":[],"c":[{}]}"#, true),
            // whitespace, unsorted, duplicate, escaped key, other escapes, deep unsorted
            (r#"{"a": 1}"#, false),
            (r#"{"b":1,"a":2}"#, false),
            (r#"{"a":1,"a":1}"#, false),
            (r#"{"\u0061":1}"#, false),
            (r#"{"a\"":1,"a":2}"#, false),
            (r#"{"a":"\n"}"#, false),
            (r#"{"a":"\/"}"#, false),
            (r#"{"a":"\u00e9"}"#, false),
            (r#"{"a":[{"z":1,"y":2}]}"#, false),
            (r#"{"é":1,"z":2}"#, false),
            (r#"{"z":2,"é":1}"#, true),
        ];
        for (doc, canonical) in docs {
            let v = parse(doc.as_bytes()).unwrap();
            let Value::Object(o) = v else { panic!() };
            assert_eq!(is_canonical(o.raw()), *canonical, "{doc}");
            let mut fast = std::vec::Vec::new();
            let mut general = std::vec::Vec::new();
            let a = write_canonical(&v, &mut fast);
            let b = write_canonical_general(&v, &mut general);
            assert_eq!(a, b, "{doc}");
            assert_eq!(fast, general, "{doc}");
            if *canonical {
                assert_eq!(fast, doc.as_bytes(), "{doc}");
            }
        }
    }

    #[test]
    fn writes_negative_and_extreme_integers() {
        assert_eq!(
            canon_str("[-5,0,9223372036854775807,-9223372036854775808]"),
            Ok("[-5,0,9223372036854775807,-9223372036854775808]")
        );
    }
}
