//! PATCH (RFC 7644 §3.5.2) with the dialects Okta and Entra really send: op names in any case,
//! path-less value objects with dotted and URN keys, `"True"`/`"False"` strings, a manager sent as
//! a bare string, member removal as a value list, a path-less replace that repeats `id`.
//!
//! The supported member operations and their exact effect:
//! | op | path | value | effect |
//! |---|---|---|---|
//! | add | `members` or none (`{"members": [...]}`) | list | add each (already a member: no-op) |
//! | remove | `members[value eq "ID"]` (any filter) | none | remove those matching |
//! | remove | `members` | list of `{"value"}` | remove those values (Entra default dialect) |
//! | remove | `members` | none | remove all |
//! | replace | `members` or none | list (may be `[]`) | exactly this set |

use crate::scim::error::ScimError;
use crate::scim::filter::Filter;
use crate::scim::path::AttrPath;
use crate::scim::resource::{MemberRef, Password};
use crate::scim::schema::SchemaSet;
use serde_json::{Map, Value};

/// The three PATCH operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    Add,
    Remove,
    Replace,
}

/// One parsed operation.
#[derive(Debug, Clone, PartialEq)]
pub struct PatchOp {
    pub op: OpKind,
    pub path: Option<AttrPath>,
    pub value: Option<Value>,
}

/// A change to a group's membership, in request order. The store applies these as row inserts
/// and deletes, so one added member costs O(1) rows whatever the group's size.
#[derive(Debug, Clone, PartialEq)]
pub enum MemberOp {
    Add(Vec<MemberRef>),
    Remove(Vec<String>),
    /// Remove the members matching a filter other than `value eq` (evaluated against
    /// `{"value", "display", "type"}` member objects).
    RemoveMatching(Filter),
    RemoveAll,
    Replace(Vec<MemberRef>),
}

/// Parse a PatchOp body.
///
/// # Errors
/// 400 `invalidSyntax` for a missing `Operations` array, a bad `op`, a missing `value` where one is
/// required; 400 `invalidPath` for a bad path; 400 `tooMany` over `max_ops` operations.
pub fn parse_patch(_body: Value, _max_ops: usize) -> Result<Vec<PatchOp>, ScimError> {
    unimplemented!("scim::patch::parse_patch")
}

/// Apply operations to a user's canonical body (`UserInput::data` shape). The result is
/// re-validated by the caller with `resource::parse_user`. Returns a password set by the patch.
///
/// # Errors
/// 400 `mutability` for `id`, `meta`, `groups` (a path-less replace that repeats the current `id`
/// is accepted, as Okta sends it); 400 `noTarget` when a value filter matches nothing on replace;
/// 400 `invalidPath`/`invalidValue` for paths or values that do not fit.
pub fn apply_user_patch(
    _data: &mut Map<String, Value>,
    _ops: &[PatchOp],
    _schemas: &SchemaSet,
) -> Result<Option<Password>, ScimError> {
    unimplemented!("scim::patch::apply_user_patch")
}

/// Apply operations to a group's canonical body; membership changes come back as [`MemberOp`]s.
///
/// # Errors
/// As [`apply_user_patch`]; a malformed member payload is 400, never a silent no-op.
pub fn apply_group_patch(
    _data: &mut Map<String, Value>,
    _ops: &[PatchOp],
) -> Result<Vec<MemberOp>, ScimError> {
    unimplemented!("scim::patch::apply_group_patch")
}
