//! What goes over the byte stream.
//!
//! Every frame is a postcard-encoded value, COBS-encoded and ended by one `0x00` byte, so a
//! receiver that lost sync (line noise, a laptop plugged in mid-frame) finds the next frame at the
//! next `0x00`. The host sends embedded-update [`Command`]s; the device answers every command
//! with exactly one [`Report`]: embedded-update's [`Status`] plus an [`Outcome`] saying what it
//! did with the command (a bare `Status` cannot say "refused: too large" or "checksum
//! mismatch").
//!
//! Commands: `Wait`/`Sync` ask for the status; `Write { version: id, offset, data }` offers one
//! block; `Swap { version: id, checksum: sha256 }` asks the device to check the whole bundle and
//! hand it to the agent. The device echoes a command's `correlation_id` in the report that
//! answers it (`None` for a frame that is not a command), so a host tells its answer from a
//! stale one: after a lone `0x00` ends a partial frame the device held, the device answers that
//! partial frame too.

pub use embedded_update::{Command, Status, UpdateStatus};
use serde::{Deserialize, Serialize};

/// Postcard bytes of a `Command::Write` around its data, at most: variant, version (length +
/// 40-byte id), correlation id, offset and data length.
pub const WRITE_OVERHEAD: usize = 64;

/// Longest version the device reports for its running firmware.
pub const MAX_VERSION_LEN: usize = 32;

/// Longest report frame (COBS-encoded, with its delimiter) a device sends.
pub const MAX_REPORT_FRAME: usize = 192;

/// Longest COBS encoding of `n` bytes plus the `0x00` delimiter.
pub const fn cobs_frame_len(n: usize) -> usize {
    n + n / 254 + 2
}

/// Longest frame (COBS-encoded, with its delimiter) a host may send to a device whose MTU is
/// `mtu`. Devices size their frame buffer with this.
pub const fn max_frame_len(mtu: u32) -> usize {
    cobs_frame_len(mtu as usize + WRITE_OVERHEAD)
}

/// The device's answer to one command. Always carries the device's full status, so the host
/// resumes from `status.update.offset` whatever happened.
#[derive(Debug, Serialize, Deserialize)]
pub struct Report<'a> {
    #[serde(borrow)]
    pub status: Status<'a>,
    pub outcome: Outcome,
}

/// What the device did with the command it answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Answer to `Wait`/`Sync`: nothing changed.
    Status,
    /// The block was stored; the status has the next offset.
    Stored,
    /// The block was not at the offset the device expects and was ignored; resume from the
    /// status's offset.
    Resync,
    /// A new transfer began (any other transfer was discarded); resume from the status's offset.
    Started,
    /// The whole bundle is stored and its SHA-256 matches `Swap`'s checksum; the device's agent
    /// now installs it through hale-core's verified path.
    Complete,
    /// The command was refused; the status says what the device holds now.
    Refused(Refusal),
}

/// Why a device refused a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Refusal {
    /// The frame was longer than the device's frame buffer, or not a valid command. Nothing
    /// changed; resending is safe.
    BadFrame,
    /// `version` is not a bundle id (40 lowercase hex characters).
    BadBundleId,
    /// The bundle is larger than the device may hold. Nothing was written.
    BundleTooLarge { declared: u32, max: u32 },
    /// A block larger than the device's MTU.
    BlockTooLarge { len: u32, mtu: u32 },
    /// A block that would end past the bundle's declared length.
    PastEnd {
        offset: u32,
        len: u32,
        declared: u32,
    },
    /// `Swap` for a bundle the device is not receiving.
    NotInProgress,
    /// `Swap` before every byte is stored.
    Incomplete { offset: u32, declared: u32 },
    /// The stored bundle's SHA-256 is not `Swap`'s checksum (or not the id's). The transfer was
    /// discarded; nothing was handed to the agent.
    ChecksumMismatch,
    /// The device's bundle store failed.
    Storage,
    /// A new transfer too soon after the last one began (each discards the
    /// device's bundle store); nothing changed. Send it again in `wait_ms`.
    RestartTooSoon { wait_ms: u32 },
}

impl core::fmt::Display for Refusal {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Refusal::BadFrame => write!(f, "frame too long or not a valid command"),
            Refusal::BadBundleId => write!(f, "not a bundle id"),
            Refusal::BundleTooLarge { declared, max } => {
                write!(f, "bundle of {declared} bytes exceeds the device's {max}")
            }
            Refusal::BlockTooLarge { len, mtu } => {
                write!(f, "block of {len} bytes exceeds the MTU {mtu}")
            }
            Refusal::PastEnd {
                offset,
                len,
                declared,
            } => write!(
                f,
                "block of {len} bytes at {offset} ends past the declared length {declared}"
            ),
            Refusal::NotInProgress => write!(f, "swap for a bundle not being received"),
            Refusal::Incomplete { offset, declared } => {
                write!(f, "swap with {offset} of {declared} bytes stored")
            }
            Refusal::ChecksumMismatch => {
                write!(f, "stored bundle does not match the checksum; discarded")
            }
            Refusal::Storage => write!(f, "device storage failed"),
            Refusal::RestartTooSoon { wait_ms } => write!(
                f,
                "a new transfer too soon after the last one; possible in {wait_ms} ms"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn largest_write_fits_the_frame_bound() {
        let id = [b'f'; 40];
        let data = [0u8; 300];
        let mut buf = [0u8; 512];
        let cmd = Command::new_write(&id, u32::MAX, &data, Some(u32::MAX));
        let n = postcard::to_slice_cobs(&cmd, &mut buf).unwrap().len();
        assert!(n <= max_frame_len(300), "{n} > {}", max_frame_len(300));
    }

    #[test]
    fn largest_report_fits_the_report_bound() {
        let version = [0xffu8; MAX_VERSION_LEN];
        let id = [b'f'; 40];
        let mut buf = [0u8; 512];
        for outcome in [
            Outcome::Refused(Refusal::PastEnd {
                offset: u32::MAX,
                len: u32::MAX,
                declared: u32::MAX,
            }),
            Outcome::Complete,
        ] {
            let report = Report {
                status: Status::update(&version, Some(u32::MAX), u32::MAX, &id, Some(u32::MAX)),
                outcome,
            };
            let n = postcard::to_slice_cobs(&report, &mut buf).unwrap().len();
            assert!(n <= MAX_REPORT_FRAME, "{n}");
        }
    }
}
