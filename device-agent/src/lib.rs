//! # device-agent: what stands between a pump and a bad image
//!
//! The agent drives [`hale_core`]'s trusted set through a [`Transport`] (fetch metadata, fetch a
//! byte range of a target) and a [`FirmwareStore`] on `embedded-storage` [`NorFlash`]
//! (A/B image slots and a power-loss-safe state area). It installs only what hale-core verified
//! and never leaves the device without a bootable, verified image.
//!
//! ```text
//! check_for_update(now)
//!   trial running? ──────────────────────────────> Outcome::TrialRunning / AwaitingReboot (nothing staged)
//!   root chain N+1.root.json until not found       hale-core: both thresholds, version N+1
//!   timestamp -> snapshot -> targets               hale-core: versions, hashes, expiry; persisted
//!   find_target(device target)                     delegations walked and verified in hale-core
//!   policy::evaluate(custom, device, rollback?)    model, revision, version, security counter, bootloader
//!   Application::safe_to_install()? ─── no ──────> Outcome::Deferred { reason }
//!   stream into the INACTIVE slot                  hashed as read back from flash, never past the
//!                                                  listed length, checkpointed per erase sector (resume)
//!   mark pending ────────────────────────────────> Outcome::Staged
//! boot()      pending -> trial; trial without confirmation -> revert (trial slot rejected);
//!             an image whose bytes no longer match -> the other slot's good one (Boot::Damaged)
//! confirm()   trial -> good; the security counter rises here
//! ```
//!
//! ## Threats and where each is stopped
//! - *Arbitrary software, rollback, freeze, mix-and-match, endless data*: every trust decision is
//!   hale-core's; the agent only moves bytes and persists what verified.
//! - *A bad image bricking the pump*: the running image stays `Good` during the whole trial; a
//!   reset before the application confirms reverts to it, and the failed image is never retried.
//! - *Power loss*: every change of state is one record written to the older of two alternating
//!   records, each with a sequence number and a sha256 over its contents; a torn record is ignored
//!   and the previous one stands. The flash is synced before and after each record
//!   ([`Durable`]), so a flash behind a cache never holds a record without the bytes it claims.
//!   Image bytes are only trusted after they are re-read from flash and hashed (at staging and at
//!   every boot).
//! - *Anti-rollback*: the security counter is a floor raised only at confirmation.
//! - *Installing during therapy*: [`Application::safe_to_install`] gates staging.
//!
//! ## Features
//! - default: `no_std`, no heap.
//! - `std`: the `hale-agent` binary (simulated pump over HTTP(S), TUF conformance client).
//! - `sim`: `cachedflash`, flash behind a write-back cache (needs `alloc`; tests and fuzzing).
#![cfg_attr(not(feature = "std"), no_std)]
// Errors are built only when they are returned: `ok_or_else(|| Error::…)`, not `ok_or(Error::…)`.
// An eager error (up to 136 bytes) is constructed on the success path too; lazily, the Cortex-M4
// firmware is ~0.6 KB smaller. Clippy calls these closures unnecessary.
#![allow(clippy::unnecessary_lazy_evaluations)]
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )
)]

#[cfg(feature = "sim")]
extern crate alloc;

pub mod agent;
pub mod bundle;
#[cfg(feature = "sim")]
pub mod cachedflash;
pub mod memflash;
pub mod rollback;
pub mod store;
pub mod transport;

#[cfg(feature = "std")]
pub mod host;
#[cfg(feature = "std")]
pub mod http1;
#[cfg(feature = "std")]
pub mod identity;
#[cfg(feature = "std")]
pub mod link_store;
#[cfg(feature = "std")]
pub mod offline;

pub use agent::{
    check_for_update, AgentError, Application, DeferReason, DeviceInfo, Downgrade, NoRollback,
    Outcome, RollbackHook, Workspace,
};
pub use bundle::BundleTransport;
pub use embedded_storage::nor_flash::NorFlash;
pub use hale_core::slots::{Boot, Image, Slot, SlotInfo, SlotState, Slots};
pub use rollback::RollbackAuthorization;
pub use store::{Conclusion, Durable, FirmwareStore, LastCheck, Layout, StoreError};
pub use transport::Transport;
