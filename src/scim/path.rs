//! Attribute paths (RFC 7644 §3.10 and the PATCH `path` grammar of §3.5.2):
//! `userName`, `name.givenName`, `emails[type eq "work"].value`, `members[value eq "x"]`,
//! `urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager.value`.

use crate::scim::error::ScimError;
use crate::scim::filter::Filter;

/// A parsed attribute path. Attribute names keep the client's spelling; comparisons are
/// case-insensitive (RFC 7643 §2.1).
#[derive(Debug, Clone, PartialEq)]
pub struct AttrPath {
    /// Schema URN prefix when given (`urn:...:enterprise:2.0:User`), else `None` (core schema).
    pub urn: Option<String>,
    /// Top-level attribute name.
    pub attr: String,
    /// Optional value filter on a multi-valued attribute: `emails[type eq "work"]`.
    pub value_filter: Option<Box<Filter>>,
    /// Optional sub-attribute: `name.givenName` or `emails[...].value`.
    pub sub_attr: Option<String>,
}

/// Parse a PATCH or filter attribute path.
///
/// # Errors
/// `400 invalidPath` on a malformed path or one deeper than the configured limits.
pub fn parse_path(_input: &str) -> Result<AttrPath, ScimError> {
    unimplemented!("scim::path::parse_path")
}
