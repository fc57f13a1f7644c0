//! List and query parameters (RFC 7644 §3.4.2): `filter`, `startIndex`, `count`, `attributes`,
//! `excludedAttributes`, the `ListResponse` envelope and attribute projection.

use crate::scim::error::ScimError;
use crate::scim::filter::{Filter, FilterLimits};
use serde_json::Value;

/// A validated list query.
#[derive(Debug, Clone)]
pub struct ListQuery {
    pub filter: Option<Filter>,
    /// 1-based, at least 1 (RFC 7644: values below 1 are read as 1).
    pub start_index: u64,
    /// Page size, capped at `max_count`; 0 means totals only.
    pub count: u64,
    pub attributes: AttrSelection,
}

/// `attributes` / `excludedAttributes` selection.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AttrSelection {
    /// Lower-cased attribute paths (URN-qualified or not).
    pub attributes: Vec<String>,
    pub excluded: Vec<String>,
}

impl AttrSelection {
    /// Whether `members` (on groups) or `groups` (on users) must be loaded at all.
    pub fn wants(&self, attr: &str) -> bool {
        let _ = attr;
        unimplemented!("scim::list::AttrSelection::wants")
    }
}

/// Parse list parameters from decoded query pairs (`filter`, `startIndex`, `count`,
/// `attributes`, `excludedAttributes`, `sortBy`, `sortOrder`); unknown parameters are ignored.
///
/// # Errors
/// 400 `invalidFilter` / `invalidValue` for bad values; `sortBy` is not supported (400 invalidValue
/// only if it names an unknown attribute: ordering is always the stable creation order).
pub fn parse_list_query(
    _pairs: &[(String, String)],
    _limits: FilterLimits,
    _max_count: u64,
) -> Result<ListQuery, ScimError> {
    unimplemented!("scim::list::parse_list_query")
}

/// Apply `attributes`/`excludedAttributes` to a rendered resource (RFC 7643 §7 `returned`:
/// `id`, `schemas` and `meta.resourceType` always stay).
pub fn project(_resource: Value, _selection: &AttrSelection) -> Value {
    unimplemented!("scim::list::project")
}

/// The ListResponse envelope; `totalResults`, `startIndex`, `itemsPerPage` are integers.
pub fn list_response(resources: Vec<Value>, total: u64, start_index: u64) -> Value {
    serde_json::json!({
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:ListResponse"],
        "totalResults": total,
        "startIndex": start_index,
        "itemsPerPage": resources.len(),
        "Resources": resources,
    })
}
