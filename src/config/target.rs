//! The `[[targets]]` sections of the config file, as strict serde types (file-shaped, no I/O).
