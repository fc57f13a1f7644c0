//! The one integration-test binary (every extra `tests/*.rs` is another link): a `mod` per area
//! (STYLE.md §8). Areas share `harness`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::disallowed_methods
)]

mod crash;
mod directories;
mod faults;
#[allow(dead_code)]
mod harness;
mod hostile;
mod ldap_target;
mod process;
mod properties;
mod reconcile;
mod scim_api;
mod sql_target;
mod tidy;
mod verify;
