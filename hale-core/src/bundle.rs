//! Offline bundles: one file a field technician carries on USB (or pushes over a serial link).
//!
//! A bundle is a frozen slice of the repository — the root chain, timestamp, snapshot, targets,
//! the delegated roles on the way to the image, the image, and optionally a rollback
//! authorization — under the same names the repository serves them. The device installs from it
//! through exactly the path of an online update, from its **own** trusted root: the bundle is a
//! transport, never a source of trust. A tampered bundle fails the same checks a tampered
//! repository fails.
//!
//! Layout (all integers big-endian):
//!
//! ```text
//! magic    "HALEBNDL"                8 bytes
//! format   1                         u16
//! count    number of entries         u16   (at most MAX_BUNDLE_ENTRIES)
//! entries  count × { name_len u16, name (UTF-8), data_len u32, data }
//! ```
//!
//! Names follow the repository layout: `3.root.json`, `timestamp.json`, `7.snapshot.json`,
//! `7.targets.json`, `2.pump-a.json`, `targets/pump-a/<sha256>.fw.bin`, and
//! `rollback-authorization.json`. Parsing checks the whole structure up front (no entry runs past
//! the end, no duplicate or unsafe name, nothing after the last entry) and then serves slices of
//! the input: no copy, no heap.

use crate::error::{Error, Name};

pub const MAGIC: &[u8; 8] = b"HALEBNDL";
pub const FORMAT: u16 = 1;
/// Most entries a bundle may hold (a deep root chain plus delegations plus one image).
pub const MAX_BUNDLE_ENTRIES: usize = 256;
/// Name of the optional rollback authorization entry.
pub const AUTHORIZATION: &str = "rollback-authorization.json";

/// A validated bundle borrowing its bytes.
#[derive(Debug, Clone, Copy)]
pub struct Bundle<'a> {
    entries: &'a [u8],
    count: usize,
}

fn bad(reason: &'static str) -> Error {
    Error::BadBundle { reason }
}

struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        let end = self.i.checked_add(n).ok_or(bad("length overflow"))?;
        let s = self
            .b
            .get(self.i..end)
            .ok_or(bad("entry runs past the end"))?;
        self.i = end;
        Ok(s)
    }
    fn u16(&mut self) -> Result<u16, Error> {
        let s = self.take(2)?;
        Ok(u16::from_be_bytes([
            *s.first().unwrap_or(&0),
            *s.get(1).unwrap_or(&0),
        ]))
    }
    fn u32(&mut self) -> Result<u32, Error> {
        let s = self.take(4)?;
        let mut a = [0u8; 4];
        a.copy_from_slice(s);
        Ok(u32::from_be_bytes(a))
    }
    fn entry(&mut self) -> Result<(&'a str, &'a [u8]), Error> {
        let n = self.u16()? as usize;
        let name =
            core::str::from_utf8(self.take(n)?).map_err(|_| bad("entry name is not UTF-8"))?;
        let len = self.u32()? as usize;
        Ok((name, self.take(len)?))
    }
}

impl<'a> Bundle<'a> {
    /// Check the structure of `bytes`.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, Error> {
        let mut c = Cursor { b: bytes, i: 0 };
        if c.take(8)? != MAGIC {
            return Err(bad("not a Hale bundle"));
        }
        if c.u16()? != FORMAT {
            return Err(bad("unsupported bundle format"));
        }
        let count = c.u16()? as usize;
        if count > MAX_BUNDLE_ENTRIES {
            return Err(bad("too many entries"));
        }
        let start = c.i;
        for i in 0..count {
            let (name, _) = c.entry()?;
            check_entry_name(name)?;
            // no duplicates: each earlier name is compared (count is bounded)
            let mut before = Cursor { b: bytes, i: start };
            for _ in 0..i {
                if before.entry()?.0 == name {
                    return Err(bad("duplicate entry"));
                }
            }
        }
        if c.i != bytes.len() {
            return Err(bad("data after the last entry"));
        }
        Ok(Bundle {
            entries: bytes.get(start..).unwrap_or(&[]),
            count,
        })
    }

    /// The entry called `name`.
    pub fn get(&self, name: &str) -> Option<&'a [u8]> {
        self.iter().find(|(n, _)| *n == name).map(|(_, d)| d)
    }

    /// The rollback authorization, if the bundle carries one.
    pub fn authorization(&self) -> Option<&'a [u8]> {
        self.get(AUTHORIZATION)
    }

    /// All `(name, data)` entries.
    pub fn iter(&self) -> impl Iterator<Item = (&'a str, &'a [u8])> {
        let mut c = Cursor {
            b: self.entries,
            i: 0,
        };
        (0..self.count).map_while(move |_| c.entry().ok())
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

fn check_entry_name(name: &str) -> Result<(), Error> {
    if let Some(path) = name.strip_prefix("targets/") {
        return crate::metadata::check_target_path(path);
    }
    let unsafe_name = || Error::UnsafeName {
        name: Name::new(name),
    };
    // `<role>.json` or `<version>.<role>.json`: the role's name is held to the rules (and the
    // length) of role names everywhere else; a delegated role with a name of 128 bytes is
    // published and fetched online, so its file goes into a bundle too
    let stem = name.strip_suffix(".json").ok_or_else(unsafe_name)?;
    let role = match stem.split_once('.') {
        Some((v, role))
            if !v.is_empty() && v.len() <= 20 && v.bytes().all(|b| b.is_ascii_digit()) =>
        {
            role
        }
        _ => stem,
    };
    crate::metadata::check_role_name(role).map_err(|_| unsafe_name())
}

/// Write a bundle into `out`; returns the bytes used. (Hosts use `hale_repo::bundle`.)
pub fn write<'o>(entries: &[(&str, &[u8])], out: &'o mut [u8]) -> Result<&'o [u8], Error> {
    if entries.len() > MAX_BUNDLE_ENTRIES {
        return Err(bad("too many entries"));
    }
    let mut n = 0usize;
    let mut put = |bytes: &[u8], out: &mut [u8]| -> Result<(), Error> {
        let end = n.checked_add(bytes.len()).ok_or(bad("length overflow"))?;
        out.get_mut(n..end)
            .ok_or(bad("output buffer too small"))?
            .copy_from_slice(bytes);
        n = end;
        Ok(())
    };
    put(MAGIC, out)?;
    put(&FORMAT.to_be_bytes(), out)?;
    put(&(entries.len() as u16).to_be_bytes(), out)?;
    for (name, data) in entries {
        check_entry_name(name)?;
        let nl = u16::try_from(name.len()).map_err(|_| bad("name too long"))?;
        let dl = u32::try_from(data.len()).map_err(|_| bad("entry too large"))?;
        put(&nl.to_be_bytes(), out)?;
        put(name.as_bytes(), out)?;
        put(&dl.to_be_bytes(), out)?;
        put(data, out)?;
    }
    out.get(..n).ok_or(bad("output buffer too small"))
}

/// Bytes [`write()`] needs for these entries.
pub fn encoded_len(entries: &[(&str, &[u8])]) -> usize {
    12 + entries
        .iter()
        .map(|(n, d)| 6 + n.len() + d.len())
        .sum::<usize>()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A delegated role's name may have 128 bytes (`check_delegated_role_name`), and its
    /// metadata file takes a version and `.json` on top: it goes into a bundle as it is fetched
    /// online (review: such a role's targets could not be carried to a pump without a network).
    #[test]
    fn a_delegated_role_with_the_longest_name_goes_into_a_bundle() {
        let role = [b'r'; crate::limits::MAX_NAME_LEN];
        let role = core::str::from_utf8(&role).unwrap();
        crate::metadata::check_delegated_role_name(role).unwrap();
        let mut file = [0u8; 20 + 1 + crate::limits::MAX_NAME_LEN + 5];
        let prefix = b"18446744073709551615.";
        file[..prefix.len()].copy_from_slice(prefix);
        file[prefix.len()..prefix.len() + role.len()].copy_from_slice(role.as_bytes());
        file[prefix.len() + role.len()..].copy_from_slice(b".json");
        let file = core::str::from_utf8(&file).unwrap();
        let mut buf = [0u8; 512];
        let bytes = write(&[(file, b"{}"), ("1.root.json", b"{}")], &mut buf).unwrap();
        let b = Bundle::parse(bytes).unwrap();
        assert_eq!(b.get(file), Some(&b"{}"[..]));
        // one byte longer is a name no role may have
        let mut longer = [0u8; 20 + 1 + crate::limits::MAX_NAME_LEN + 1 + 5];
        longer[..file.len() - 5].copy_from_slice(&file.as_bytes()[..file.len() - 5]);
        longer[file.len() - 5] = b'r';
        longer[file.len() - 4..].copy_from_slice(b".json");
        let longer = core::str::from_utf8(&longer).unwrap();
        assert_eq!(
            write(&[(longer, b"{}")], &mut buf).unwrap_err(),
            Error::UnsafeName {
                name: Name::new(longer)
            }
        );
    }

    fn sample(out: &mut [u8]) -> &[u8] {
        write(
            &[
                ("2.root.json", b"{}"),
                ("timestamp.json", b"ts"),
                ("targets/pump-a/ab.fw.bin", b"image"),
            ],
            out,
        )
        .unwrap()
    }

    #[test]
    fn round_trips() {
        let mut buf = [0u8; 256];
        let b = sample(&mut buf);
        let parsed = Bundle::parse(b).unwrap();
        assert_eq!(parsed.len(), 3);
        assert_eq!(parsed.get("timestamp.json"), Some(&b"ts"[..]));
        assert_eq!(parsed.get("targets/pump-a/ab.fw.bin"), Some(&b"image"[..]));
        assert_eq!(parsed.authorization(), None);
    }

    #[test]
    fn refuses_truncation_trailing_data_and_bad_magic() {
        let mut buf = [0u8; 256];
        let b = sample(&mut buf);
        for cut in 0..b.len() {
            assert!(Bundle::parse(&b[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = [0u8; 257];
        longer[..b.len()].copy_from_slice(b);
        assert_eq!(
            Bundle::parse(&longer[..b.len() + 1]).unwrap_err(),
            Error::BadBundle {
                reason: "data after the last entry"
            }
        );
        let mut wrong = [0u8; 256];
        wrong[..b.len()].copy_from_slice(b);
        wrong[0] = b'X';
        assert_eq!(
            Bundle::parse(&wrong[..b.len()]).unwrap_err(),
            Error::BadBundle {
                reason: "not a Hale bundle"
            }
        );
    }

    #[test]
    fn refuses_duplicate_and_unsafe_names() {
        let mut buf = [0u8; 256];
        let mut raw = [0u8; 256];
        // write() refuses unsafe names itself; build a hostile bundle by hand
        let hostile = {
            let mut n = 0;
            for part in [
                &MAGIC[..],
                &1u16.to_be_bytes(),
                &1u16.to_be_bytes(),
                &9u16.to_be_bytes(),
                b"../x.json",
                &0u32.to_be_bytes(),
            ] {
                raw[n..n + part.len()].copy_from_slice(part);
                n += part.len();
            }
            &raw[..n]
        };
        assert_eq!(
            Bundle::parse(hostile).unwrap_err(),
            Error::UnsafeName {
                name: Name::new("../x.json")
            }
        );
        assert!(write(&[("a/b.json", b"")], &mut buf).is_err());
        for bad_name in [
            "json",
            ".json",
            "1..json",
            "1.a/b.json",
            "1.json.x",
            "x.txt",
            "1...json",
        ] {
            assert_eq!(
                write(&[(bad_name, b"")], &mut buf).unwrap_err(),
                Error::UnsafeName {
                    name: Name::new(bad_name)
                },
                "{bad_name}"
            );
        }
        let dup = write(
            &[("timestamp.json", b"1"), ("timestamp.json", b"2")],
            &mut buf,
        )
        .unwrap();
        assert_eq!(
            Bundle::parse(dup).unwrap_err(),
            Error::BadBundle {
                reason: "duplicate entry"
            }
        );
    }
}
