//! Hale's technician link: a field technician's laptop pushes an offline bundle
//! (`hale_core::bundle`) to a pump over a byte stream — a serial port in the field, a socket pair
//! or pty in tests — in blocks, resuming from the offset the device reports.
//!
//! # Protocol
//!
//! embedded-update's wire types (`Status`, `Command::{Wait, Sync, Write, Swap}`) encoded with
//! postcard, in COBS frames ended by `0x00` ([`wire`]). The host asks for the status (`Wait`);
//! the device reports its running version, its MTU and the bundle it is receiving with the next
//! offset it expects; the host sends `Write` blocks of `min(mtu, configured)` bytes from that
//! offset, then `Swap` with the SHA-256 of the whole bundle. Every command gets one [`Report`]:
//! the device's `Status` and what it did ([`Outcome`]). A bundle is named by a [`BundleId`]
//! (digest prefix and length), so blocks of two bundles never mix and the device knows the total
//! size before it writes a byte.
//!
//! # Threats, and who handles them
//!
//! The link is a **transport, never a source of trust**. Whoever holds the cable (a stolen
//! laptop, a malicious USB-serial adapter, line noise) can send any bytes. What they cannot do:
//! - get firmware installed: a complete bundle goes through hale-core's verified path from the
//!   device's own trusted root, exactly like an online update; the link's checksum only detects
//!   corruption in transit;
//! - exhaust the device's memory or overrun its buffers: no heap, frames are bounded by
//!   `max_frame_len(mtu)` and oversize ones are dropped undecoded;
//! - write outside the bundle store: blocks are stored only at the expected offset and never past
//!   the declared length, itself capped by the device's maximum;
//! - hand off a corrupted bundle: the whole stored bundle is hashed on read-back before `Swap`
//!   succeeds; a mismatch discards it.
//!
//! What they can do is deny service: start another transfer (which discards the one in
//! progress). That needs physical access to the pump and is visible in its log ([`Event`]).
//!
//! # Features
//!
//! - default: `no_std`, no heap: [`device`] and [`wire`] (for the pump's agent).
//! - `std`: `host::push` over `std::io` streams (for the technician CLI).
#![cfg_attr(not(feature = "std"), no_std)]

pub mod device;
#[cfg(feature = "std")]
pub mod host;
mod id;
pub mod wire;

pub use device::{
    BundleSink, Config, Error, Event, Handled, Receiver, ServeError,
    DEFAULT_MIN_RESTART_INTERVAL_MS, MAX_NOISE_BYTES,
};
pub use id::BundleId;
pub use wire::{max_frame_len, Outcome, Refusal, Report};
