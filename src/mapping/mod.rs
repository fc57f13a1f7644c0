//! The attribute-mapping engine (pure): compiles the `[[targets]]` attribute rules from the
//! config and renders a SCIM resource (as rendered JSON) into a target [`Entry`], and diffs
//! entries. Must not do I/O; the only ldap3 items allowed here are `dn_escape`/`ldap_escape`.

use std::collections::BTreeMap;

/// A target entry as the mapping renders it or a target reads it: an LDAP entry (key = DN) or a
/// SQL row (key = the key column's value). Attribute names are lower-cased; values keep order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Entry {
    /// The entry's key in the target: a DN for LDAP, the key column value for SQL.
    pub key: String,
    /// Object classes (LDAP) — empty for SQL.
    pub object_classes: Vec<String>,
    /// Mapped attributes: lower-cased name -> values. An attribute mapped to nothing has an
    /// empty vector (meaning "must be absent").
    pub attrs: BTreeMap<String, Vec<String>>,
}
