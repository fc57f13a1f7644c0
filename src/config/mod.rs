//! Configuration: the file as strict serde types ([`raw`], [`target`]), loaded from TOML plus
//! `SCIM_SYNC__SECTION__KEY` environment overrides ([`mod@load`]), with secrets read from files or
//! the environment ([`secret`]). Validation into runtime types is each module's own
//! (`reconcile::settings`, the targets' `from_raw`, the mapping's `compile`), assembled by
//! `daemon::settings`.

pub mod load;
pub mod raw;
pub mod secret;
mod spanned;
pub mod target;

pub use load::{load, ConfigError};
pub use raw::RawConfig;
pub use secret::Secret;
