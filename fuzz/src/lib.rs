//! Helpers shared by the fuzz targets: a heap sink for canonical bytes, a bounded walk over parsed
//! JSON, and the fixture repository (keys from the test suite's fixed seeds) that the trusted-set
//! target signs fuzzed metadata with.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use hale_core::canonical::Sink;
use hale_core::json::{JStr, Value};

pub mod fixture;

/// The agent's working buffers for one check (the sizes the fuzzed pumps use), so each target
/// builds its `Workspace` the same way.
pub struct Buffers {
    root: [u8; 4096],
    timestamp: [u8; 2048],
    snapshot: [u8; 2048],
    targets: [u8; 4096],
    scratch: [u8; 4096],
    chunk: [u8; 256],
    delegations: [u8; 4096],
}

impl Buffers {
    pub fn new() -> Self {
        Buffers {
            root: [0; 4096],
            timestamp: [0; 2048],
            snapshot: [0; 2048],
            targets: [0; 4096],
            scratch: [0; 4096],
            chunk: [0; 256],
            delegations: [0; 4096],
        }
    }

    /// A workspace over these buffers; `delegations` false leaves it none (a pump whose
    /// repository delegates nothing).
    pub fn workspace(&mut self, delegations: bool) -> device_agent::Workspace<'_> {
        device_agent::Workspace {
            metadata: hale_core::Storage {
                root: &mut self.root[..],
                timestamp: &mut self.timestamp[..],
                snapshot: &mut self.snapshot[..],
                targets: &mut self.targets[..],
            },
            scratch: &mut self.scratch[..],
            chunk: &mut self.chunk[..],
            delegations: if delegations {
                &mut self.delegations[..]
            } else {
                &mut []
            },
        }
    }
}

impl Default for Buffers {
    fn default() -> Self {
        Self::new()
    }
}

/// Canonical bytes into a `Vec` (hale-core only implements `Sink for Vec` with `alloc`).
#[derive(Debug, Default)]
pub struct VecSink(pub Vec<u8>);

impl Sink for VecSink {
    fn write(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes)
    }
}

/// Decode a JSON string with every API hale-core offers and check they agree.
pub fn check_jstr(s: &JStr<'_>) {
    let decoded: Vec<u8> = s.bytes().collect();
    assert_eq!(
        s.decoded_len(),
        decoded.len(),
        "decoded_len disagrees with bytes()"
    );
    assert!(s.eq_bytes(&decoded), "eq_bytes(own decoding) is false");
    assert!(s.eq_concat(&[&decoded]), "eq_concat(own decoding) is false");
    let text = core::str::from_utf8(&decoded).expect("a parsed JSON string decodes to valid UTF-8");
    assert!(s.eq_str(text));
    assert_eq!(s.to_string(), text, "Display disagrees with bytes()");
    if let Some(p) = s.as_plain() {
        assert_eq!(
            p.as_bytes(),
            &decoded[..],
            "as_plain disagrees with bytes()"
        );
    }
    let mut buf = [0u8; 256];
    match s.decode_into(&mut buf) {
        Some(d) => assert_eq!(d.as_bytes(), &decoded[..]),
        None => assert!(
            decoded.len() > buf.len(),
            "decode_into refused a string that fits"
        ),
    }
    // too small a buffer must be refused, not overrun
    if !decoded.is_empty() {
        let mut small = vec![0u8; decoded.len() - 1];
        assert!(s.decode_into(&mut small).is_none());
    }
    assert_eq!(s.cmp_decoded(s), core::cmp::Ordering::Equal);
}

/// Two keys to ask `next_fields` for: the first two plain keys of `o` (so that fuzzed documents
/// find fields), else fixed ones.
fn field_keys<'a>(o: Option<hale_core::json::Object<'a>>) -> [&'a str; 2] {
    let mut keys = ["a", "b"];
    let plain = o
        .into_iter()
        .flat_map(|o| o.members())
        .filter_map(|(k, _)| k.as_plain());
    for (slot, k) in keys.iter_mut().zip(plain) {
        *slot = k;
    }
    keys
}

/// What `next_fields` must give for value `v`: an object's `fields`, no fields for anything else.
fn same_fields<'a>(
    v: &Value<'a>,
    keys: [&str; 2],
) -> Result<[Option<Value<'a>>; 2], hale_core::json::JsonError> {
    match v.as_object() {
        Some(o) => o.fields(keys),
        None => Ok([None; 2]),
    }
}

/// Visit every value below `v`: members, elements, strings; check lengths and lookups agree.
/// Returns the number of values seen.
pub fn walk(v: &Value<'_>, depth: usize) -> usize {
    assert!(
        depth <= hale_core::limits::MAX_JSON_DEPTH + 1,
        "parser accepted nesting deeper than MAX_JSON_DEPTH"
    );
    let mut n = 1;
    match v {
        Value::Str(s) => check_jstr(s),
        Value::Int(i) => {
            assert_eq!(v.as_i64(), Some(*i));
            assert_eq!(v.as_u64(), u64::try_from(*i).ok());
        }
        Value::Array(a) => {
            let mut count = 0;
            for e in a.iter() {
                n += walk(&e, depth + 1);
                count += 1;
            }
            assert_eq!(a.len(), count, "Array::len disagrees with iter()");
            assert_eq!(a.is_empty(), count == 0);
            // the fields of each element read in the walk's own pass are what `fields` finds
            let keys = field_keys(a.iter().find_map(|e| e.as_object()));
            let mut fields = a.iter();
            for e in a.iter() {
                let got = fields
                    .next_fields(keys)
                    .expect("next_fields ended before iter()");
                assert_eq!(
                    got,
                    same_fields(&e, keys).map(|f| (e, f)),
                    "next_fields of {e:?}"
                );
            }
            assert!(
                fields.next_fields(keys).is_none(),
                "next_fields went past the end"
            );
        }
        Value::Object(o) => {
            let mut count = 0;
            let members: Vec<_> = o.members().collect();
            for (k, val) in &members {
                check_jstr(k);
                n += walk(val, depth + 1);
                count += 1;
                // a lookup by the decoded key finds a value, or reports the duplicate
                let dup = members.iter().filter(|(k2, _)| k2 == k).count() > 1;
                match o.get_by(|k2| k2 == k) {
                    Ok(Some(_)) => assert!(!dup, "get_by returned a value for a duplicate key"),
                    Ok(None) => panic!("get_by did not find a key that members() yields"),
                    Err(_) => assert!(dup, "get_by failed on a unique key"),
                }
                if let Some(plain) = k.as_plain() {
                    assert_eq!(o.get(plain).is_ok(), !dup);
                }
            }
            assert_eq!(o.len(), count, "Object::len disagrees with members()");
            assert_eq!(o.is_empty(), count == 0);
            let keys = field_keys(members.iter().find_map(|(_, v)| v.as_object()));
            let mut fields = o.members();
            for (k, v) in &members {
                let (k2, got) = fields.next_fields(keys).expect("next_fields ended early");
                assert_eq!(&k2, k);
                assert_eq!(
                    got,
                    same_fields(v, keys).map(|f| (*v, f)),
                    "next_fields of {v:?}"
                );
            }
            assert!(
                fields.next_fields(keys).is_none(),
                "next_fields went past the end"
            );
        }
        Value::Null | Value::Bool(_) => {}
    }
    n
}
