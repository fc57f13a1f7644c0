//! The RFC 7644 §3.4.2.2 filter grammar: parsing with limits enforced while parsing (never a
//! recursion that counts later) and evaluation against a rendered SCIM resource.

use crate::scim::error::ScimError;
use crate::scim::path::AttrPath;
use serde_json::Value;

/// Limits enforced while parsing a filter.
#[derive(Debug, Clone, Copy)]
pub struct FilterLimits {
    /// Maximum length in bytes of the filter text.
    pub max_len: usize,
    /// Maximum nesting depth of parentheses, `not`, and value paths.
    pub max_depth: usize,
}

impl Default for FilterLimits {
    fn default() -> Self {
        Self {
            max_len: 4096,
            max_depth: 32,
        }
    }
}

/// Comparison operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    Eq,
    Ne,
    Co,
    Sw,
    Ew,
    Gt,
    Ge,
    Lt,
    Le,
}

/// A parsed filter.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    /// `attr op value`
    Compare {
        path: AttrPath,
        op: CompareOp,
        value: Value,
    },
    /// `attr pr`
    Present(AttrPath),
    And(Box<Filter>, Box<Filter>),
    Or(Box<Filter>, Box<Filter>),
    Not(Box<Filter>),
    /// `emails[type eq "work" and value co "@x"]` (with the path naming the multi-valued attribute)
    ValuePath {
        path: AttrPath,
        filter: Box<Filter>,
    },
}

/// Parse a filter.
///
/// # Errors
/// `400 invalidFilter` for bad syntax, unknown operators, or input over `limits`.
pub fn parse_filter(_input: &str, _limits: FilterLimits) -> Result<Filter, ScimError> {
    unimplemented!("scim::filter::parse_filter")
}

impl Filter {
    /// Does `resource` (a rendered SCIM resource, as returned by GET) match?
    /// Case rules follow the schema: `userName`, `emails.value`, `displayName` ... compare
    /// case-insensitively; `id`, `externalId` case-exactly.
    pub fn matches(&self, _resource: &Value) -> bool {
        unimplemented!("scim::filter::Filter::matches")
    }

    /// Equality lookups the store may answer from an index: for a filter that is a single `eq`
    /// or an `and` of terms, each `attr eq "string"` conjunct on a top-level core attribute, as
    /// (lower-cased canonical attribute name, value). Canonical names: `id`, `username`,
    /// `externalid`, `displayname`, `emails.value`, `emails[type eq "work"].value` is reported
    /// as `emails.value` too. The caller still evaluates [`Filter::matches`] on the candidates.
    pub fn equality_lookups(&self) -> Vec<(String, String)> {
        unimplemented!("scim::filter::Filter::equality_lookups")
    }
}
