//! scim-sync: receive SCIM 2.0 pushes from Okta / Entra ID, record them durably, and reconcile
//! them into LDAP directories and legacy SQL databases.
//!
//! Module map (see `docs/ARCHITECTURE.md` for the full picture and the invariants):
//! - [`scim`]: pure SCIM core (schemas, filters, PATCH, resources); no I/O.
//! - [`mapping`]: pure attribute-mapping engine (config rules -> target entries and deltas).
//! - [`store`]: the only user of diesel (resources, outbox, target state, tokens, audit).
//! - [`targets`]: LDAP and SQL targets behind one trait; never see SCIM types.
//! - [`reconcile`]: workers that make targets match the store.
//! - [`http`]: the SCIM and admin listeners (thin).
//! - [`daemon`]: startup, tasks, signals, systemd.
//! - [`cli`]: one file per subcommand.
//! - [`bookkeeping`]: what `target_state` remembers per resource and target (plain data).
//! - [`health`]: each target's health, written by the reconciler, read by `/readyz` (plain data).
//! - [`clock`]: the wall clock.

pub mod bookkeeping;
pub mod cli;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod health;
pub mod http;
pub mod mapping;
pub mod reconcile;
pub mod scim;
pub mod store;
pub mod targets;
pub mod telemetry;
