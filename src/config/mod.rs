//! Configuration: the file as strict serde types (`raw`, `target`), loaded from TOML plus
//! environment overrides, with secrets read from files or the environment.

pub mod target;
