//! Configuration: the file as strict serde types (`raw`), loaded from TOML plus environment
//! overrides, with secrets read from files or the environment.
