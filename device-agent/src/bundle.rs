//! Offline bundles as a [`Transport`]: a technician's file (USB, or pushed over `hale-link`)
//! installs through the same [`crate::check_for_update`] as an online update.
//!
//! The bundle is a transport, never a source of trust: the agent starts from the device's own
//! stored root, walks the root chain the bundle carries, and verifies timestamp, snapshot,
//! targets, delegations and the image in hale-core exactly as it would from a server. A tampered
//! or foreign bundle fails the checks a tampered or foreign repository fails. Its rollback
//! authorization, if any ([`BundleTransport::authorization`]), goes to a
//! [`crate::rollback::RollbackAuthorization`] hook, which verifies it against the trusted
//! `targets` that came out of that same workflow.
//!
//! No heap, no copy of the bundle: entries are slices of the parsed input.

use core::fmt;

use hale_core::bundle::Bundle;
use hale_core::Name;

use crate::transport::Transport;

/// Why a bundle could not serve a read (not a trust decision: the agent reports it as
/// `AgentError::Transport`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BundleError {
    /// Metadata entry `name` is larger than the agent's buffer (endless data).
    TooLarge {
        name: Name,
        length: usize,
        limit: usize,
    },
    /// The bundle has no target file `name`.
    NoTarget { name: Name },
    /// The target file is shorter than the range asked for.
    Short {
        name: Name,
        offset: u64,
        length: usize,
    },
}

impl fmt::Display for BundleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BundleError::TooLarge {
                name,
                length,
                limit,
            } => write!(f, "bundle entry {name}: {length} bytes, more than {limit}"),
            BundleError::NoTarget { name } => write!(f, "bundle holds no target file {name}"),
            BundleError::Short {
                name,
                offset,
                length,
            } => write!(
                f,
                "bundle target {name} has no {length} bytes at offset {offset}"
            ),
        }
    }
}

/// Serves repository files from a parsed bundle.
#[derive(Debug, Clone, Copy)]
pub struct BundleTransport<'a> {
    bundle: Bundle<'a>,
}

impl<'a> BundleTransport<'a> {
    pub fn new(bundle: Bundle<'a>) -> Self {
        BundleTransport { bundle }
    }

    /// Check the structure of `bytes` and serve it (hale-core's [`Bundle::parse`]).
    pub fn parse(bytes: &'a [u8]) -> Result<Self, hale_core::Error> {
        Bundle::parse(bytes).map(Self::new)
    }

    /// The rollback authorization the bundle carries, if any (unverified bytes: hand them to
    /// a [`crate::rollback::RollbackAuthorization`]).
    pub fn authorization(&self) -> Option<&'a [u8]> {
        self.bundle.authorization()
    }

    pub fn bundle(&self) -> &Bundle<'a> {
        &self.bundle
    }

    fn target(&self, name: &str) -> Option<&'a [u8]> {
        self.bundle
            .iter()
            .find(|(n, _)| n.strip_prefix("targets/") == Some(name))
            .map(|(_, d)| d)
    }
}

impl Transport for BundleTransport<'_> {
    type Error = BundleError;

    fn fetch_metadata(&mut self, name: &str, buf: &mut [u8]) -> Result<Option<usize>, BundleError> {
        // only metadata names: a `targets/…` entry is never served as metadata
        if name.contains('/') {
            return Ok(None);
        }
        let Some(data) = self.bundle.get(name) else {
            return Ok(None);
        };
        let limit = buf.len();
        let dst = buf
            .get_mut(..data.len())
            .ok_or_else(|| BundleError::TooLarge {
                name: Name::new(name),
                length: data.len(),
                limit,
            })?;
        dst.copy_from_slice(data);
        Ok(Some(data.len()))
    }

    /// A bundle carries its own bytes: an image the server served wrong is tried from it at
    /// once.
    fn remote(&self) -> bool {
        false
    }

    fn fetch_target(&mut self, name: &str, offset: u64, buf: &mut [u8]) -> Result<(), BundleError> {
        let data = self.target(name).ok_or_else(|| BundleError::NoTarget {
            name: Name::new(name),
        })?;
        let length = buf.len();
        let short = || BundleError::Short {
            name: Name::new(name),
            offset,
            length,
        };
        let start = usize::try_from(offset).map_err(|_| short())?;
        let end = start.checked_add(buf.len()).ok_or_else(short)?;
        let src = data.get(start..end).ok_or_else(short)?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_metadata_and_target_ranges_and_refuses_what_is_not_there() {
        let mut out = [0u8; 256];
        let bytes = hale_core::bundle::write(
            &[
                ("2.root.json", b"{\"r\":2}"),
                ("targets/pump-a/ab.fw.bin", b"0123456789"),
            ],
            &mut out,
        )
        .unwrap();
        let mut t = BundleTransport::parse(bytes).unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(t.fetch_metadata("2.root.json", &mut buf), Ok(Some(7)));
        assert_eq!(t.fetch_metadata("3.root.json", &mut buf), Ok(None));
        assert_eq!(
            t.fetch_metadata("targets/pump-a/ab.fw.bin", &mut buf),
            Ok(None)
        );
        let mut small = [0u8; 3];
        assert_eq!(
            t.fetch_metadata("2.root.json", &mut small),
            Err(BundleError::TooLarge {
                name: Name::new("2.root.json"),
                length: 7,
                limit: 3
            })
        );
        let mut four = [0u8; 4];
        assert_eq!(t.fetch_target("pump-a/ab.fw.bin", 6, &mut four), Ok(()));
        assert_eq!(&four, b"6789");
        assert_eq!(
            t.fetch_target("pump-a/ab.fw.bin", 7, &mut four),
            Err(BundleError::Short {
                name: Name::new("pump-a/ab.fw.bin"),
                offset: 7,
                length: 4
            })
        );
        assert_eq!(
            t.fetch_target("pump-a/cd.fw.bin", 0, &mut four),
            Err(BundleError::NoTarget {
                name: Name::new("pump-a/cd.fw.bin")
            })
        );
        assert_eq!(t.authorization(), None);
    }
}
