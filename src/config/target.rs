//! The `[[targets]]` sections of the config file, as strict serde types (file-shaped, no I/O).
//! PLACEHOLDER in the lead's tree until the ldap branch lands.

use serde::Deserialize;

/// One target (placeholder).
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct RawTarget {
    pub name: String,
}
