//! The one integration-test binary: a `mod` per area (STYLE.md §8). Areas share `harness`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod harness;
mod ldap_target;
