//! SCIM resources as this server stores and renders them.
//!
//! A stored resource is its canonical body (`data`) minus what the server owns: `id`, `meta`,
//! `schemas`, the derived `groups` of a user, the `members` of a group (kept as rows by the
//! store) and any `password` (hashed or dropped before it is stored).

use crate::scim::error::ScimError;
use crate::scim::schema::SchemaSet;
use serde_json::{Map, Value};

/// The two resource types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResourceType {
    User,
    Group,
}

impl ResourceType {
    /// `"User"` / `"Group"`, as in `meta.resourceType` and in the store.
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceType::User => "User",
            ResourceType::Group => "Group",
        }
    }
    /// `"Users"` / `"Groups"`, the endpoint name.
    pub fn endpoint(self) -> &'static str {
        match self {
            ResourceType::User => "Users",
            ResourceType::Group => "Groups",
        }
    }
    /// Parse `"User"` / `"Group"`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "User" => Some(ResourceType::User),
            "Group" => Some(ResourceType::Group),
            _ => None,
        }
    }
}

/// A clear-text password as a client sent it; `Debug` never shows it. It lives only until it is
/// hashed or dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(pub String);

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(***)")
    }
}

/// Server-owned metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// Milliseconds since the Unix epoch.
    pub created_ms: i64,
    /// Milliseconds since the Unix epoch.
    pub last_modified_ms: i64,
    /// Starts at 1, +1 on every change; the ETag is `W/"<version>"`.
    pub version: i64,
}

/// A group member (users only: nested groups are refused with 400 invalidValue).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRef {
    /// The member's SCIM `id`.
    pub value: String,
    /// `display` as the client sent it, if any (not authoritative).
    pub display: Option<String>,
}

/// An entry of a user's derived `groups` attribute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRef {
    pub value: String,
    pub display: String,
}

/// A validated user body from POST or PUT (or the result of a PATCH).
#[derive(Debug, Clone)]
pub struct UserInput {
    /// Canonical body (core attribute names in their schema spelling; extension objects under
    /// their URN keys; explicit nulls removed; `active` a boolean; a string `manager` turned
    /// into `{"value": ...}`); without `id`, `meta`, `schemas`, `groups`, `password`.
    pub data: Map<String, Value>,
    pub user_name: String,
    pub external_id: Option<String>,
    /// `None` when the body has no `active` (the caller keeps the current value, or `true` on create).
    pub active: Option<bool>,
    /// Every `emails[].value`, for the store's lookup index.
    pub emails: Vec<String>,
    pub password: Option<Password>,
}

/// A validated group body from POST or PUT.
#[derive(Debug, Clone)]
pub struct GroupInput {
    /// Canonical body without `id`, `meta`, `schemas`, `members`.
    pub data: Map<String, Value>,
    pub display_name: String,
    pub external_id: Option<String>,
    /// `None` when the body has no `members` (or `members: null`): membership is left as it is.
    pub members: Option<Vec<MemberRef>>,
}

/// Validate a User body (POST or PUT). Read-only attributes (`id`, `meta`, `groups`) are ignored
/// (RFC 7644 §3.3); `active` accepts booleans and the strings "true"/"false" in any case (Entra).
///
/// # Errors
/// 400 `invalidValue`/`invalidSyntax` when `userName` is missing or a core attribute has the wrong
/// type; 400 `invalidSyntax` when the body is not an object.
pub fn parse_user(_body: Value, _schemas: &SchemaSet) -> Result<UserInput, ScimError> {
    unimplemented!("scim::resource::parse_user")
}

/// Validate a Group body (POST or PUT). Non-URN schema entries such as Entra's
/// `http://schemas.microsoft.com/2006/11/ResourceManagement/ADSCIM/2.0/Group` are tolerated.
///
/// # Errors
/// 400 when `displayName` is missing or `members` is malformed.
pub fn parse_group(_body: Value, _schemas: &SchemaSet) -> Result<GroupInput, ScimError> {
    unimplemented!("scim::resource::parse_group")
}

/// The full SCIM representation of a user. `groups` is omitted when `None` (not loaded).
pub fn render_user(
    _id: &str,
    _data: &Map<String, Value>,
    _meta: &Meta,
    _groups: Option<&[GroupRef]>,
    _base_url: &str,
) -> Value {
    unimplemented!("scim::resource::render_user")
}

/// The full SCIM representation of a group. `members` is omitted when `None` (not loaded).
pub fn render_group(
    _id: &str,
    _data: &Map<String, Value>,
    _meta: &Meta,
    _members: Option<&[MemberRef]>,
    _base_url: &str,
) -> Value {
    unimplemented!("scim::resource::render_group")
}

/// The weak ETag of a version: `W/"<version>"`.
pub fn etag(version: i64) -> String {
    format!("W/\"{version}\"")
}
