//! Hale's attack suite: one module per attack class of the TUF spec (and the 2026 diamond
//! delegation bug). Each test asserts the exact error and that the client's trusted state did not
//! move. See docs/threat-model.md for the map from attack to spec section, error and test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod arbitrary_software;
mod diamond;
mod endless_data;
mod fast_forward;
mod freeze;
mod key_compromise;
mod mix_and_match;
mod path_traversal;
mod rollback;
