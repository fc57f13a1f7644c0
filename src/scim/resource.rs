//! SCIM resources as this server stores and renders them.
//!
//! A stored resource is its canonical body (`data`) minus what the server owns: `id`, `meta`,
//! `schemas`, the derived `groups` of a user, the `members` of a group (kept as rows by the
//! store) and any `password` (hashed or dropped before it is stored).
//!
//! Owns validation and canonical spelling of bodies and their rendering; no I/O, no clock
//! (timestamps come in as epoch milliseconds).

use crate::scim::error::ScimError;
use crate::scim::schema::{ExtensionAttr, SchemaSet, ENTERPRISE_USER, GROUP_SCHEMA, USER_SCHEMA};
use serde_json::{json, Map, Value};

/// The two resource types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResourceType {
    /// `/Users`
    User,
    /// `/Groups`
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

/// A group member: a user or (nested groups) a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRef {
    /// The member's SCIM `id`.
    pub value: String,
    /// `display` as the client sent it, if any (not authoritative).
    pub display: Option<String>,
    /// What the member is: as the client said (`type`, optional: the store checks it against
    /// the id, and decides by the id when absent), or as the store has it when rendered
    /// (`None` renders as a user).
    pub kind: Option<ResourceType>,
}

/// An entry of a user's derived `groups` attribute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRef {
    /// The group's SCIM `id`.
    pub value: String,
    /// The group's `displayName`.
    pub display: String,
    /// A member of this group itself (`type: "direct"`), or only through nested groups
    /// (`"indirect"`, RFC 7643 §4.1.2).
    pub direct: bool,
}

/// A validated user body from POST or PUT (or the result of a PATCH).
#[derive(Debug, Clone)]
pub struct UserInput {
    /// Canonical body (core attribute names in their schema spelling; extension objects under
    /// their URN keys; explicit nulls removed; `active` a boolean; a string `manager` turned
    /// into `{"value": ...}`); without `id`, `meta`, `schemas`, `groups`, `password`.
    pub data: Map<String, Value>,
    /// `userName` (required, non-empty).
    pub user_name: String,
    /// `externalId`, if sent.
    pub external_id: Option<String>,
    /// `None` when the body has no `active` (the caller keeps the current value, or `true` on create).
    pub active: Option<bool>,
    /// Every `emails[].value`, for the store's lookup index.
    pub emails: Vec<String>,
    /// A `password` the client sent; never part of `data`.
    pub password: Option<Password>,
}

/// A validated group body from POST or PUT.
#[derive(Debug, Clone)]
pub struct GroupInput {
    /// Canonical body without `id`, `meta`, `schemas`, `members`.
    pub data: Map<String, Value>,
    /// `displayName` (required, non-empty).
    pub display_name: String,
    /// `externalId`, if sent.
    pub external_id: Option<String>,
    /// `None` when the body has no `members` (or `members: null`): membership is left as it is.
    pub members: Option<Vec<MemberRef>>,
}

/// Deepest JSON nesting accepted in a body.
pub const MAX_DEPTH: usize = 32;
/// Most values accepted in one multi-valued attribute.
pub const MAX_VALUES: usize = 10_000;
/// Most members in one `members` list: Okta's App Integration Wizard apps push a group's whole
/// membership in one PUT, so this is bounded by the group body limit rather than by
/// [`MAX_VALUES`] (a 16 MiB body holds about 300,000 members).
pub const MAX_MEMBERS: usize = 1_000_000;

/// How a core attribute is validated and canonicalised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A single string.
    Str,
    /// A boolean (`"true"`/`"false"` strings accepted, Entra).
    Bool,
    /// A single complex value with these sub-attributes.
    Complex(&'static [&'static str]),
    /// A multi-valued complex attribute with these sub-attributes.
    Multi(&'static [&'static str]),
    /// Server-owned: ignored on input (RFC 7644 §3.3), refused as a PATCH target.
    ReadOnly,
    /// Write-only (`returned: never`, RFC 7643 §4.1.1).
    Password,
}

const NAME_SUBS: &[&str] = &[
    "formatted",
    "familyName",
    "givenName",
    "middleName",
    "honorificPrefix",
    "honorificSuffix",
];
const MV_SUBS: &[&str] = &["value", "display", "type", "primary"];
const ADDRESS_SUBS: &[&str] = &[
    "formatted",
    "streetAddress",
    "locality",
    "region",
    "postalCode",
    "country",
    "type",
    "primary",
];
const MANAGER_SUBS: &[&str] = &["value", "$ref", "displayName"];

/// Core User attributes (RFC 7643 §4.1) in their schema spelling.
pub(crate) const USER_ATTRS: &[(&str, Kind)] = &[
    ("userName", Kind::Str),
    ("externalId", Kind::Str),
    ("displayName", Kind::Str),
    ("nickName", Kind::Str),
    ("profileUrl", Kind::Str),
    ("title", Kind::Str),
    ("userType", Kind::Str),
    ("preferredLanguage", Kind::Str),
    ("locale", Kind::Str),
    ("timezone", Kind::Str),
    ("active", Kind::Bool),
    ("name", Kind::Complex(NAME_SUBS)),
    ("emails", Kind::Multi(MV_SUBS)),
    ("phoneNumbers", Kind::Multi(MV_SUBS)),
    ("ims", Kind::Multi(MV_SUBS)),
    ("photos", Kind::Multi(MV_SUBS)),
    ("addresses", Kind::Multi(ADDRESS_SUBS)),
    ("entitlements", Kind::Multi(MV_SUBS)),
    ("roles", Kind::Multi(MV_SUBS)),
    ("x509Certificates", Kind::Multi(MV_SUBS)),
    ("id", Kind::ReadOnly),
    ("meta", Kind::ReadOnly),
    ("groups", Kind::ReadOnly),
    ("schemas", Kind::ReadOnly),
    ("password", Kind::Password),
];

/// Core Group attributes (RFC 7643 §4.2); `members` is handled apart.
pub(crate) const GROUP_ATTRS: &[(&str, Kind)] = &[
    ("displayName", Kind::Str),
    ("externalId", Kind::Str),
    ("id", Kind::ReadOnly),
    ("meta", Kind::ReadOnly),
    ("schemas", Kind::ReadOnly),
];

/// Enterprise User attributes (RFC 7643 §4.3).
pub(crate) const ENTERPRISE_ATTRS: &[(&str, Kind)] = &[
    ("employeeNumber", Kind::Str),
    ("costCenter", Kind::Str),
    ("organization", Kind::Str),
    ("division", Kind::Str),
    ("department", Kind::Str),
    ("manager", Kind::Complex(MANAGER_SUBS)),
];

/// Case-insensitive lookup in an attribute table: (schema spelling, kind).
pub(crate) fn lookup(table: &[(&'static str, Kind)], name: &str) -> Option<(&'static str, Kind)> {
    table
        .iter()
        .copied()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
}

/// Does this key name a schema extension object (`urn:...`)?
pub(crate) fn is_urn(key: &str) -> bool {
    key.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("urn:"))
}

/// The spelling an extension URN is stored under: the enterprise URN or a declared extension
/// in their canonical spelling, any other URN as sent (Entra's undeclared custom extension).
pub(crate) fn canonical_urn(urn: &str, schemas: &SchemaSet) -> String {
    if urn.eq_ignore_ascii_case(ENTERPRISE_USER) {
        return ENTERPRISE_USER.to_string();
    }
    schemas
        .user_extensions
        .iter()
        .find(|u| u.eq_ignore_ascii_case(urn))
        .cloned()
        .unwrap_or_else(|| urn.to_string())
}

/// Reject bodies nested deeper than [`MAX_DEPTH`] (400 invalidSyntax) or with more than
/// [`MAX_VALUES`] values in one array ([`MAX_MEMBERS`] for a `members` list; 400 tooMany).
/// Iterative.
pub(crate) fn check_shape(value: &Value) -> Result<(), ScimError> {
    let mut stack = vec![(value, 1usize, MAX_VALUES)];
    while let Some((v, depth, max)) = stack.pop() {
        if depth > MAX_DEPTH {
            return Err(ScimError::invalid_syntax("body is nested too deeply"));
        }
        match v {
            Value::Array(a) if a.len() > max => {
                return Err(ScimError::too_many(
                    "too many values in a multi-valued attribute",
                ))
            }
            Value::Array(a) => stack.extend(a.iter().map(|c| (c, depth + 1, MAX_VALUES))),
            Value::Object(o) => stack.extend(o.iter().map(|(k, c)| {
                let max = if k.eq_ignore_ascii_case("members") {
                    MAX_MEMBERS
                } else {
                    MAX_VALUES
                };
                (c, depth + 1, max)
            })),
            _ => {}
        }
    }
    Ok(())
}

/// How an attribute is named in an error: its dotted path when that is a plain name, else a
/// neutral word (details never echo raw input).
fn attribute_label(path: &str) -> String {
    let plain = !path.is_empty()
        && path.len() <= 128
        && path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b":._$-".contains(&b));
    if plain {
        path.to_string()
    } else {
        "an attribute".to_string()
    }
}

/// Reject any string value or attribute name longer than `max_bytes` (the operator's
/// `scim.max_value_bytes`), naming the attribute: a 200 KB `userName` must not become a dead
/// letter whose every retry logs it. `prefix` names the attribute `value` sits under ("" for a
/// whole resource). Iterative; array positions are not part of the name.
///
/// # Errors
/// 400 `invalidValue` naming the first attribute over the limit.
pub fn check_value_sizes(prefix: &str, value: &Value, max_bytes: usize) -> Result<(), ScimError> {
    let too_long = |path: &str| {
        ScimError::invalid_value(format!(
            "The value of {} is longer than the limit of {max_bytes} bytes.",
            attribute_label(path)
        ))
    };
    let mut stack = vec![(prefix.to_string(), value)];
    while let Some((path, v)) = stack.pop() {
        match v {
            Value::String(s) if s.len() > max_bytes => return Err(too_long(&path)),
            Value::Array(a) => stack.extend(a.iter().map(|c| (path.clone(), c))),
            Value::Object(o) => {
                for (k, c) in o {
                    if k.len() > max_bytes {
                        return Err(ScimError::invalid_value(format!(
                            "An attribute name under {} is longer than the limit of {max_bytes} bytes.",
                            if path.is_empty() { "the resource".to_string() } else { attribute_label(&path) }
                        )));
                    }
                    let child = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    stack.push((child, c));
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// [`check_value_sizes`] for a PATCH body: each operation's `path` and `value`, the value named
/// by the attribute its path starts with.
///
/// # Errors
/// 400 `invalidValue` naming the first attribute over the limit.
pub fn check_patch_value_sizes(body: &Value, max_bytes: usize) -> Result<(), ScimError> {
    let Some(ops) = body.as_object().and_then(|o| {
        o.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("Operations"))
            .and_then(|(_, v)| v.as_array())
    }) else {
        return Ok(());
    };
    for op in ops.iter().filter_map(Value::as_object) {
        let path = op
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("path"))
            .and_then(|(_, v)| v.as_str())
            .unwrap_or("");
        if path.len() > max_bytes {
            return Err(ScimError::invalid_path(format!(
                "A PATCH path is longer than the limit of {max_bytes} bytes."
            )));
        }
        // `emails[type eq "work"].value` is named `emails`; a URN path keeps its URN.
        let name = path.split('[').next().unwrap_or("");
        for (k, v) in op {
            if k.len() > max_bytes || k.eq_ignore_ascii_case("value") {
                check_value_sizes(name, v, max_bytes)?;
            }
        }
    }
    Ok(())
}

/// Remove explicit nulls (RFC 7643 §2.5: null is "unassigned"). Depth is bounded by
/// [`check_shape`] before this runs.
pub(crate) fn strip_nulls(value: Value) -> Value {
    match value {
        Value::Object(o) => Value::Object(
            o.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, strip_nulls(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(
            a.into_iter()
                .filter(|v| !v.is_null())
                .map(strip_nulls)
                .collect(),
        ),
        other => other,
    }
}

fn invalid(name: &str, what: &str) -> ScimError {
    ScimError::invalid_value(format!("{name} must be {what}"))
}

/// A boolean, or "true"/"false" in any case (Entra's default dialect sends strings).
pub(crate) fn parse_bool(name: &str, v: &Value) -> Result<bool, ScimError> {
    match v {
        Value::Bool(b) => Ok(*b),
        Value::String(s) if s.eq_ignore_ascii_case("true") => Ok(true),
        Value::String(s) if s.eq_ignore_ascii_case("false") => Ok(false),
        _ => Err(invalid(name, "a boolean")),
    }
}

/// Validate and canonicalise one attribute value of a known kind (nulls already removed).
pub(crate) fn normalize(name: &str, kind: Kind, v: Value) -> Result<Value, ScimError> {
    match kind {
        Kind::Str if v.is_string() => Ok(v),
        Kind::Str => Err(invalid(name, "a string")),
        Kind::Bool => parse_bool(name, &v).map(Value::Bool),
        Kind::Complex(subs) => match v {
            Value::Object(o) => normalize_complex(name, subs, o).map(Value::Object),
            _ => Err(invalid(name, "an object")),
        },
        Kind::Multi(subs) => match v {
            Value::Array(items) => items
                .into_iter()
                .map(|item| match item {
                    Value::Object(o) => normalize_complex(name, subs, o).map(Value::Object),
                    _ => Err(invalid(name, "an array of objects")),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(|mut items| {
                    keep_one_primary(&mut items);
                    Value::Array(items)
                }),
            _ => Err(invalid(name, "an array")),
        },
        Kind::ReadOnly | Kind::Password => Ok(v),
    }
}

/// RFC 7643 §2.4: `primary` true appears at most once in a multi-valued attribute. Of several,
/// the last keeps it (the later mark wins); the others get `false`. PATCH settles its own ops
/// first (`patch::settle_primaries`), so this only decides bodies that mark several.
pub(crate) fn keep_one_primary(items: &mut [Value]) {
    let is_primary = |v: &Value| v.get("primary") == Some(&Value::Bool(true));
    let Some(last) = items.iter().rposition(is_primary) else {
        return;
    };
    for (i, item) in items.iter_mut().enumerate() {
        if i != last && is_primary(item) {
            if let Some(obj) = item.as_object_mut() {
                obj.insert("primary".into(), Value::Bool(false));
            }
        }
    }
}

/// Canonical sub-attribute spelling; `primary` a boolean, the other sub-attributes strings.
/// A sub-attribute the schema does not define is ignored (RFC 7644 §3.3 lets a server ignore
/// what it does not know), so what is stored and returned is what `/Schemas` describes.
fn normalize_complex(
    name: &str,
    subs: &[&'static str],
    obj: Map<String, Value>,
) -> Result<Map<String, Value>, ScimError> {
    let mut out = Map::new();
    for (k, v) in obj {
        let Some(key) = subs.iter().find(|s| s.eq_ignore_ascii_case(&k)) else {
            continue;
        };
        let v = if *key == "primary" {
            Value::Bool(parse_bool(&format!("{name}.primary"), &v)?)
        } else if !v.is_string() {
            return Err(invalid(&format!("{name}.{key}"), "a string"));
        } else {
            v
        };
        out.insert((*key).to_string(), v);
    }
    Ok(out)
}

/// An extension object. Enterprise attributes are type-checked and `manager` given as a bare
/// string (Entra) becomes `{"value": ...}`; a declared extension with attribute definitions
/// takes exactly those (in their declared spelling, values of their type, `readOnly` ones
/// ignored on input as RFC 7644 §3.3 says); other extensions are kept verbatim.
pub(crate) fn normalize_extension(
    urn: &str,
    v: Value,
    schemas: &SchemaSet,
) -> Result<Value, ScimError> {
    let Value::Object(obj) = v else {
        return Err(invalid(urn, "an object"));
    };
    if let Some(defs) = schemas.extension_defs(urn) {
        let mut out = Map::new();
        for (k, v) in obj {
            let def = defs
                .iter()
                .find(|d| d.name.eq_ignore_ascii_case(&k))
                .ok_or_else(|| {
                    ScimError::invalid_value(format!(
                        "{} is not an attribute of {} (GET /Schemas lists them)",
                        attribute_label(&k),
                        attribute_label(urn)
                    ))
                })?;
            if def.mutability == "readOnly" {
                continue;
            }
            out.insert(def.name.clone(), declared_value(def, v)?);
        }
        return Ok(Value::Object(out));
    }
    if urn != ENTERPRISE_USER {
        return Ok(Value::Object(obj));
    }
    let mut out = Map::new();
    for (k, v) in obj {
        match lookup(ENTERPRISE_ATTRS, &k) {
            Some(("manager", _)) if v.is_string() => {
                out.insert("manager".into(), json!({ "value": v }));
            }
            Some((name, kind)) => {
                out.insert(name.into(), normalize(name, kind, v)?);
            }
            None => {
                out.insert(k, v);
            }
        }
    }
    Ok(Value::Object(out))
}

/// A value of a declared extension attribute, checked against its type; a single value of a
/// multi-valued attribute becomes a list of one.
fn declared_value(def: &ExtensionAttr, v: Value) -> Result<Value, ScimError> {
    let name = def.name.as_str();
    let one = |v: Value| -> Result<Value, ScimError> {
        match def.ty.as_str() {
            "boolean" => parse_bool(name, &v).map(Value::Bool),
            "integer" if v.is_i64() || v.is_u64() => Ok(v),
            "integer" => Err(invalid(name, "an integer")),
            "decimal" if v.is_number() => Ok(v),
            "decimal" => Err(invalid(name, "a number")),
            "dateTime" => match &v {
                Value::String(s)
                    if time::OffsetDateTime::parse(
                        s,
                        &time::format_description::well_known::Rfc3339,
                    )
                    .is_ok() =>
                {
                    Ok(v)
                }
                _ => Err(invalid(name, "an RFC 3339 date-time")),
            },
            _ if v.is_string() => Ok(v),
            _ => Err(invalid(name, "a string")),
        }
    };
    match v {
        Value::Array(items) if def.multi_valued => items
            .into_iter()
            .map(one)
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
        Value::Array(_) => Err(invalid(name, "a single value")),
        v if def.multi_valued => one(v).map(|x| Value::Array(vec![x])),
        v => one(v),
    }
}

/// `immutable` attributes of declared extensions (RFC 7643 §7): once assigned, a PUT or PATCH
/// may repeat the value but not change or remove it.
///
/// # Errors
/// 400 `mutability` naming the attribute.
pub fn check_immutable(
    old: &Map<String, Value>,
    new: &Map<String, Value>,
    schemas: &SchemaSet,
) -> Result<(), ScimError> {
    for (urn, defs) in &schemas.extension_attributes {
        let get = |m: &Map<String, Value>, name: &str| {
            m.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(urn))
                .and_then(|(_, v)| v.get(name))
                .cloned()
        };
        for d in defs.iter().filter(|d| d.mutability == "immutable") {
            let before = get(old, &d.name);
            if before.is_some() && before != get(new, &d.name) {
                return Err(ScimError::mutability(format!(
                    "{}:{} is immutable",
                    attribute_label(urn),
                    attribute_label(&d.name)
                )));
            }
        }
    }
    Ok(())
}

/// `schemas`, when present, must be an array of strings; non-URN entries are tolerated.
fn check_schemas(v: Option<&Value>) -> Result<(), ScimError> {
    match v {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => Ok(()),
        Some(_) => Err(ScimError::invalid_syntax(
            "schemas must be an array of strings",
        )),
    }
}

/// The body as an object, shape-checked, `schemas` checked, nulls removed.
/// A core attribute may also arrive URN-qualified as a member of a `"urn:...:core:2.0:User"`
/// object; it is lifted to the top level (a top-level spelling wins).
fn prepare(body: Value, core: &str) -> Result<Map<String, Value>, ScimError> {
    check_shape(&body)?;
    let Value::Object(obj) = body else {
        return Err(ScimError::invalid_syntax("body must be a JSON object"));
    };
    let schemas = obj
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("schemas"))
        .map(|(_, v)| v);
    check_schemas(schemas)?;
    let Value::Object(mut obj) = strip_nulls(Value::Object(obj)) else {
        return Err(ScimError::invalid_syntax("body must be a JSON object"));
    };
    let core_key = obj.keys().find(|k| k.eq_ignore_ascii_case(core)).cloned();
    if let Some(key) = core_key {
        match obj.remove(&key) {
            Some(Value::Object(inner)) => {
                for (k, v) in inner {
                    if !obj.keys().any(|o| o.eq_ignore_ascii_case(&k)) {
                        obj.insert(k, v);
                    }
                }
            }
            _ => {
                return Err(ScimError::invalid_syntax(
                    "a core schema key must hold an object",
                ))
            }
        }
    }
    Ok(obj)
}

fn required_string(data: &Map<String, Value>, name: &str) -> Result<String, ScimError> {
    match data.get(name) {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.clone()),
        _ => Err(ScimError::invalid_value(format!(
            "{name} is required and must be a non-empty string"
        ))),
    }
}

/// Validate a User body (POST or PUT). Read-only attributes (`id`, `meta`, `groups`) are ignored
/// (RFC 7644 §3.3); `active` accepts booleans and the strings "true"/"false" in any case (Entra).
///
/// # Errors
/// 400 `invalidValue`/`invalidSyntax` when `userName` is missing or a core attribute has the wrong
/// type; 400 `invalidSyntax` when the body is not an object.
pub fn parse_user(body: Value, schemas: &SchemaSet) -> Result<UserInput, ScimError> {
    let mut data = Map::new();
    let mut password = None;
    for (k, v) in prepare(body, USER_SCHEMA)? {
        if is_urn(&k) {
            let urn = canonical_urn(&k, schemas);
            let ext = normalize_extension(&urn, v, schemas)?;
            data.insert(urn, ext);
            continue;
        }
        match lookup(USER_ATTRS, &k) {
            Some((_, Kind::ReadOnly)) => {}
            Some((_, Kind::Password)) => match v {
                Value::String(s) => password = Some(Password(s)),
                _ => return Err(invalid("password", "a string")),
            },
            Some((name, kind)) => {
                data.insert(name.to_string(), normalize(name, kind, v)?);
            }
            // Attributes outside the core schema (e.g. Okta custom attributes mapped into the
            // core namespace) are stored as sent.
            None => {
                data.insert(k, v);
            }
        }
    }
    let user_name = required_string(&data, "userName")?;
    let external_id = data
        .get("externalId")
        .and_then(Value::as_str)
        .map(str::to_string);
    let active = data.get("active").and_then(Value::as_bool);
    let emails = data
        .get("emails")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|e| e.get("value")?.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    Ok(UserInput {
        data,
        user_name,
        external_id,
        active,
        emails,
        password,
    })
}

/// Validate a Group body (POST or PUT). Non-URN schema entries such as Entra's
/// `http://schemas.microsoft.com/2006/11/ResourceManagement/ADSCIM/2.0/Group` are tolerated.
///
/// # Errors
/// 400 when `displayName` is missing or `members` is malformed.
pub fn parse_group(body: Value, schemas: &SchemaSet) -> Result<GroupInput, ScimError> {
    let mut data = Map::new();
    let mut members = None;
    for (k, v) in prepare(body, GROUP_SCHEMA)? {
        if is_urn(&k) {
            let urn = canonical_urn(&k, schemas);
            let ext = normalize_extension(&urn, v, schemas)?;
            data.insert(urn, ext);
        } else if k.eq_ignore_ascii_case("members") {
            members = Some(parse_members(&v)?);
        } else {
            match lookup(GROUP_ATTRS, &k) {
                Some((_, Kind::ReadOnly)) => {}
                Some((name, kind)) => {
                    data.insert(name.to_string(), normalize(name, kind, v)?);
                }
                None => {
                    data.insert(k, v);
                }
            }
        }
    }
    let display_name = required_string(&data, "displayName")?;
    let external_id = data
        .get("externalId")
        .and_then(Value::as_str)
        .map(str::to_string);
    Ok(GroupInput {
        data,
        display_name,
        external_id,
        members,
    })
}

/// A member list: an array of `{"value", "display"?, "$ref"?, "type"?}` objects. Duplicate
/// values collapse (first wins); `type` is `"User"` or `"Group"` (nested groups), checked
/// against the id by the store.
///
/// # Errors
/// 400 `invalidValue` for anything else.
pub fn parse_members(v: &Value) -> Result<Vec<MemberRef>, ScimError> {
    let items = v.as_array().ok_or_else(|| invalid("members", "an array"))?;
    if items.len() > MAX_MEMBERS {
        return Err(ScimError::too_many("too many members in one request"));
    }
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for item in items {
        let m = parse_member(item)?;
        if seen.insert(m.value.clone()) {
            out.push(m);
        }
    }
    Ok(out)
}

fn parse_member(item: &Value) -> Result<MemberRef, ScimError> {
    let obj = item
        .as_object()
        .ok_or_else(|| invalid("members", "an array of objects"))?;
    let field = |name: &str| {
        obj.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    };
    let value = match field("value") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
        _ => return Err(invalid("members.value", "a non-empty string")),
    };
    let display = match field("display") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(invalid("members.display", "a string")),
    };
    let kind = match field("type") {
        None | Some(Value::Null) => None,
        Some(Value::String(t)) if t.eq_ignore_ascii_case("User") => Some(ResourceType::User),
        Some(Value::String(t)) if t.eq_ignore_ascii_case("Group") => Some(ResourceType::Group),
        Some(_) => return Err(invalid("members.type", "\"User\" or \"Group\"")),
    };
    match field("$ref") {
        None | Some(Value::Null) | Some(Value::String(_)) => {}
        Some(_) => return Err(invalid("members.$ref", "a string")),
    }
    Ok(MemberRef {
        value,
        display,
        kind,
    })
}

/// `schemas` of a rendered resource: the core schema, then the URN of each extension object.
fn schema_list(core: &str, data: &Map<String, Value>) -> Value {
    let mut list = vec![core.to_string()];
    for (k, v) in data {
        if is_urn(k) && v.is_object() && !list.iter().any(|s| s.eq_ignore_ascii_case(k)) {
            list.push(k.clone());
        }
    }
    Value::Array(list.into_iter().map(Value::String).collect())
}

/// RFC 3339 UTC with milliseconds from epoch milliseconds (civil-from-days, H. Hinnant).
pub fn format_timestamp(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let milli = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{milli:03}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

fn meta_json(rt: ResourceType, id: &str, meta: &Meta, base: &str) -> Value {
    json!({
        "resourceType": rt.as_str(),
        "created": format_timestamp(meta.created_ms),
        "lastModified": format_timestamp(meta.last_modified_ms),
        "location": format!("{base}/{}/{id}", rt.endpoint()),
        "version": etag(meta.version),
    })
}

/// Keys the server owns or never returns; stored data should not have them, but a rendered
/// resource must not echo them even if it does.
fn is_server_owned(key: &str, rt: ResourceType) -> bool {
    let owned: &[&str] = match rt {
        ResourceType::User => &["id", "meta", "schemas", "groups", "password"],
        ResourceType::Group => &["id", "meta", "schemas", "members"],
    };
    owned.iter().any(|o| o.eq_ignore_ascii_case(key))
}

/// The full SCIM representation of a user. `groups` is omitted when `None` (not loaded).
pub fn render_user(
    id: &str,
    data: &Map<String, Value>,
    meta: &Meta,
    groups: Option<&[GroupRef]>,
    base_url: &str,
) -> Value {
    let base = base_url.trim_end_matches('/');
    let mut out = Map::new();
    out.insert("schemas".into(), schema_list(USER_SCHEMA, data));
    out.insert("id".into(), Value::String(id.to_string()));
    for (k, v) in data
        .iter()
        .filter(|(k, _)| !is_server_owned(k, ResourceType::User))
    {
        out.insert(k.clone(), render_value(k, v));
    }
    // An unassigned `active` (removed by a PATCH) is not rendered: the store's flag is then
    // false and targets treat the user as inactive (fail closed; docs/mapping.md).
    if let Some(v) = out.get("active").filter(|v| !v.is_boolean()) {
        match parse_bool("active", v) {
            Ok(b) => {
                out.insert("active".into(), Value::Bool(b));
            }
            Err(_) => {
                out.remove("active");
            }
        }
    }
    if let Some(groups) = groups {
        let list = groups
            .iter()
            .map(|g| {
                json!({
                    "value": g.value,
                    "display": g.display,
                    "$ref": format!("{base}/Groups/{}", g.value),
                    "type": if g.direct { "direct" } else { "indirect" },
                })
            })
            .collect();
        out.insert("groups".into(), Value::Array(list));
    }
    out.insert("meta".into(), meta_json(ResourceType::User, id, meta, base));
    Value::Object(out)
}

/// Entra cannot read a `manager` string back (it needs `{"value"}`), whatever is stored.
fn render_value(key: &str, v: &Value) -> Value {
    match v {
        Value::Object(ext) if key == ENTERPRISE_USER => {
            let mut ext = ext.clone();
            if let Some(Value::String(s)) = ext.get("manager") {
                let m = json!({ "value": s });
                ext.insert("manager".into(), m);
            }
            Value::Object(ext)
        }
        other => other.clone(),
    }
}

/// The full SCIM representation of a group. `members` is omitted when `None` (not loaded).
pub fn render_group(
    id: &str,
    data: &Map<String, Value>,
    meta: &Meta,
    members: Option<&[MemberRef]>,
    base_url: &str,
) -> Value {
    let base = base_url.trim_end_matches('/');
    let mut out = Map::new();
    out.insert("schemas".into(), schema_list(GROUP_SCHEMA, data));
    out.insert("id".into(), Value::String(id.to_string()));
    for (k, v) in data
        .iter()
        .filter(|(k, _)| !is_server_owned(k, ResourceType::Group))
    {
        out.insert(k.clone(), v.clone());
    }
    if let Some(members) = members {
        let list = members
            .iter()
            .map(|m| {
                let mut o = Map::new();
                o.insert("value".into(), Value::String(m.value.clone()));
                if let Some(d) = &m.display {
                    o.insert("display".into(), Value::String(d.clone()));
                }
                let (path, ty) = match m.kind {
                    Some(ResourceType::Group) => ("Groups", "Group"),
                    _ => ("Users", "User"),
                };
                o.insert(
                    "$ref".into(),
                    Value::String(format!("{base}/{path}/{}", m.value)),
                );
                o.insert("type".into(), Value::String(ty.into()));
                Value::Object(o)
            })
            .collect();
        out.insert("members".into(), Value::Array(list));
    }
    out.insert(
        "meta".into(),
        meta_json(ResourceType::Group, id, meta, base),
    );
    Value::Object(out)
}
/// The weak ETag of a version: `W/"<version>"`.
pub fn etag(version: i64) -> String {
    format!("W/\"{version}\"")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scim::error::ScimType;

    fn set() -> SchemaSet {
        SchemaSet::new(vec![
            "urn:ietf:params:scim:schemas:extension:ironclad:2.0:User".into(),
        ])
    }

    fn okta_create() -> Value {
        json!({"schemas": [USER_SCHEMA],
            "userName": "test.user@okta.local",
            "name": {"givenName": "Test", "familyName": "User"},
            "emails": [{"primary": true, "value": "test.user@okta.local", "type": "work"}],
            "displayName": "Test User", "locale": "en-US",
            "externalId": "00ujl29u0le5T6Aj10h7", "groups": [], "password": "1mz050nq",
            "active": true})
    }

    #[test]
    fn a_body_with_two_primary_values_keeps_only_the_last() {
        // RFC 7643 §2.4: "primary" true appears no more than once; the later mark wins.
        let body = json!({"userName": "u", "emails": [
            {"value": "a@x", "primary": true}, {"value": "b@x"}, {"value": "c@x", "primary": "True"}],
            "phoneNumbers": [{"value": "1", "primary": true}, {"value": "2", "primary": false}]});
        let u = parse_user(body, &set()).unwrap();
        assert_eq!(
            u.data["emails"],
            json!([{"value": "a@x", "primary": false}, {"value": "b@x"}, {"value": "c@x", "primary": true}])
        );
        assert_eq!(
            u.data["phoneNumbers"],
            json!([{"value": "1", "primary": true}, {"value": "2", "primary": false}])
        );
    }

    #[test]
    fn okta_create_body() {
        let u = parse_user(okta_create(), &set()).unwrap();
        assert_eq!(u.user_name, "test.user@okta.local");
        assert_eq!(u.external_id.as_deref(), Some("00ujl29u0le5T6Aj10h7"));
        assert_eq!(u.active, Some(true));
        assert_eq!(u.emails, vec!["test.user@okta.local".to_string()]);
        assert_eq!(u.password, Some(Password("1mz050nq".into())));
        assert!(u.data.get("password").is_none());
        assert!(u.data.get("groups").is_none());
        assert!(u.data.get("schemas").is_none());
        assert!(!format!("{:?}", u.password).contains("1mz050nq"));
    }

    #[test]
    fn entra_create_body_with_nulls_and_undeclared_extension() {
        let body = json!({"schemas": [USER_SCHEMA, ENTERPRISE_USER],
            "externalId": "0a21f0f2", "USERNAME": "Test_User", "Active": "False",
            "emails": [{"primary": true, "type": "work", "value": "a@x"}],
            "meta": {"resourceType": "User"}, "title": null, "addresses": null,
            "name": {"formatted": "g f", "FAMILYNAME": "f", "givenName": "g", "middleName": null},
            "roles": [],
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:user": {"manager": "mgr-id", "Department": "D"},
            "urn:ietf:params:scim:schemas:extension:custom:2.0:User": {"x": 1, "y": null}});
        let u = parse_user(body, &set()).unwrap();
        assert_eq!(u.user_name, "Test_User");
        assert_eq!(u.active, Some(false));
        assert_eq!(
            u.data["name"],
            json!({"formatted": "g f", "familyName": "f", "givenName": "g"})
        );
        assert!(u.data.get("title").is_none() && u.data.get("addresses").is_none());
        assert!(u.data.get("meta").is_none());
        assert_eq!(
            u.data[ENTERPRISE_USER]["manager"],
            json!({"value": "mgr-id"})
        );
        assert_eq!(u.data[ENTERPRISE_USER]["department"], "D");
        assert_eq!(
            u.data["urn:ietf:params:scim:schemas:extension:custom:2.0:User"],
            json!({"x": 1})
        );
    }

    #[test]
    fn user_validation_errors() {
        let cases: Vec<(Value, ScimType)> = vec![
            (json!([]), ScimType::InvalidSyntax),
            (json!("x"), ScimType::InvalidSyntax),
            (json!({}), ScimType::InvalidValue),
            (json!({"userName": ""}), ScimType::InvalidValue),
            (json!({"userName": "  "}), ScimType::InvalidValue),
            (json!({"userName": 5}), ScimType::InvalidValue),
            (json!({"userName": null}), ScimType::InvalidValue),
            (
                json!({"userName": "u", "active": "yes"}),
                ScimType::InvalidValue,
            ),
            (
                json!({"userName": "u", "active": 1}),
                ScimType::InvalidValue,
            ),
            (
                json!({"userName": "u", "name": "x"}),
                ScimType::InvalidValue,
            ),
            (
                json!({"userName": "u", "name": {"givenName": 3}}),
                ScimType::InvalidValue,
            ),
            (
                json!({"userName": "u", "emails": {"value": "a"}}),
                ScimType::InvalidValue,
            ),
            (
                json!({"userName": "u", "emails": ["a@x"]}),
                ScimType::InvalidValue,
            ),
            (
                json!({"userName": "u", "emails": [{"value": 1}]}),
                ScimType::InvalidValue,
            ),
            (
                json!({"userName": "u", "emails": [{"value": "a", "primary": "maybe"}]}),
                ScimType::InvalidValue,
            ),
            (
                json!({"userName": "u", "title": []}),
                ScimType::InvalidValue,
            ),
            (
                json!({"userName": "u", "password": 1}),
                ScimType::InvalidValue,
            ),
            (
                json!({"userName": "u", "schemas": "x"}),
                ScimType::InvalidSyntax,
            ),
            (
                json!({"userName": "u", "schemas": [1]}),
                ScimType::InvalidSyntax,
            ),
            (
                json!({"userName": "u", ENTERPRISE_USER: "x"}),
                ScimType::InvalidValue,
            ),
            (
                json!({"userName": "u", ENTERPRISE_USER: {"manager": 5}}),
                ScimType::InvalidValue,
            ),
            (
                json!({"userName": "u", ENTERPRISE_USER: {"department": 5}}),
                ScimType::InvalidValue,
            ),
            (
                json!({"userName": "u", "emails": vec![json!({"value": "a"}); 10_001]}),
                ScimType::TooMany,
            ),
        ];
        for (body, want) in cases {
            let err = parse_user(body.clone(), &set()).unwrap_err();
            assert_eq!((err.status, err.scim_type), (400, Some(want)), "{body}");
        }
    }

    #[test]
    fn deep_nesting_is_refused_iteratively() {
        let mut v = json!("leaf");
        for _ in 0..40 {
            v = json!({ "a": v });
        }
        let err = parse_user(json!({"userName": "u", "x": v}), &set()).unwrap_err();
        assert_eq!(err.scim_type, Some(ScimType::InvalidSyntax));
        let mut v = json!(1);
        for _ in 0..33 {
            v = json!([v]);
        }
        assert!(parse_group(json!({"displayName": "g", "x": v}), &set()).is_err());
    }

    #[test]
    fn urn_qualified_core_object_is_lifted() {
        let body = json!({"userName": "u", USER_SCHEMA: {"userName": "ignored", "title": "T"}});
        let u = parse_user(body, &set()).unwrap();
        assert_eq!(u.user_name, "u");
        assert_eq!(u.data["title"], "T");
        assert!(u.data.get(USER_SCHEMA).is_none());
        let body = json!({GROUP_SCHEMA: {"displayName": "G"}});
        assert_eq!(parse_group(body, &set()).unwrap().display_name, "G");
        assert!(parse_user(json!({"userName": "u", USER_SCHEMA: 1}), &set()).is_err());
    }

    #[test]
    fn hostile_strings_are_kept_not_panicking() {
        let long = "é".repeat(50_000);
        let body = json!({"userName": format!("\u{0}\u{202e}{long}"), "displayName": "🦀\u{7f}"});
        let u = parse_user(body, &set()).unwrap();
        assert!(u.user_name.ends_with('é'));
    }

    #[test]
    fn groups_entra_and_okta() {
        let entra = json!({"schemas": [GROUP_SCHEMA, "http://schemas.microsoft.com/2006/11/ResourceManagement/ADSCIM/2.0/Group"],
            "externalId": "oid", "displayName": "G", "meta": {"resourceType": "Group"}});
        let g = parse_group(entra, &set()).unwrap();
        assert_eq!(g.display_name, "G");
        assert_eq!(g.members, None);
        assert!(g.data.get("meta").is_none());
        let okta = json!({"schemas": [GROUP_SCHEMA], "id": "x", "displayName": "G",
            "members": [{"value": "u1", "display": "a"}, {"value": "u2", "$ref": null, "type": "User"}, {"value": "u1"}]});
        let g = parse_group(okta, &set()).unwrap();
        let values: Vec<_> = g.members.unwrap().into_iter().map(|m| m.value).collect();
        assert_eq!(values, vec!["u1", "u2"]);
        assert!(g.data.get("id").is_none());
        let g = parse_group(json!({"displayName": "G", "members": null}), &set()).unwrap();
        assert_eq!(g.members, None);
        let g = parse_group(json!({"displayName": "G", "members": []}), &set()).unwrap();
        assert_eq!(g.members, Some(vec![]));
    }

    #[test]
    fn group_errors() {
        for body in [
            json!({}),
            json!({"displayName": 1}),
            json!({"displayName": "G", "members": {}}),
            json!({"displayName": "G", "members": ["u1"]}),
            json!({"displayName": "G", "members": [{"display": "x"}]}),
            json!({"displayName": "G", "members": [{"value": 5}]}),
            json!({"displayName": "G", "members": [{"value": ""}]}),
            json!({"displayName": "G", "members": [{"value": "g", "type": "Team"}]}),
            json!({"displayName": "G", "members": [{"value": "g", "type": 1}]}),
        ] {
            let err = parse_group(body.clone(), &set()).unwrap_err();
            assert_eq!(err.status, 400, "{body}");
        }
    }

    #[test]
    fn a_member_may_be_a_group_and_says_so_or_not() {
        let g = parse_group(
            json!({"displayName": "G", "members": [{"value": "g", "type": "Group"}, {"value": "u", "type": "user"}, {"value": "x"}]}),
            &set(),
        )
        .unwrap();
        let kinds: Vec<_> = g.members.unwrap().into_iter().map(|m| m.kind).collect();
        assert_eq!(
            kinds,
            vec![Some(ResourceType::Group), Some(ResourceType::User), None]
        );
    }

    #[test]
    fn timestamps() {
        assert_eq!(format_timestamp(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            format_timestamp(1_795_383_754_123),
            "2026-11-22T21:42:34.123Z"
        );
        assert_eq!(
            format_timestamp(951_782_400_000),
            "2000-02-29T00:00:00.000Z"
        );
        assert_eq!(format_timestamp(-1), "1969-12-31T23:59:59.999Z");
        let _ = format_timestamp(i64::MAX);
        let _ = format_timestamp(i64::MIN);
    }

    #[test]
    fn render_user_shape() {
        let u = parse_user(
            json!({"userName": "u", "password": "p", ENTERPRISE_USER: {"manager": "m"}}),
            &set(),
        )
        .unwrap();
        let meta = Meta {
            created_ms: 0,
            last_modified_ms: 1_795_383_754_123,
            version: 3,
        };
        let groups = [
            GroupRef {
                value: "g1".into(),
                display: "G".into(),
                direct: true,
            },
            GroupRef {
                value: "g2".into(),
                display: "P".into(),
                direct: false,
            },
        ];
        let r = render_user("id1", &u.data, &meta, Some(&groups), "https://h/scim/v2/");
        assert_eq!(r["schemas"], json!([USER_SCHEMA, ENTERPRISE_USER]));
        assert_eq!(r["id"], "id1");
        // Unassigned `active` is not invented (the handlers store one on create).
        assert!(r.get("active").is_none());
        assert!(r.get("password").is_none());
        assert_eq!(r[ENTERPRISE_USER]["manager"], json!({"value": "m"}));
        assert_eq!(
            r["groups"],
            json!([{"value": "g1", "display": "G", "$ref": "https://h/scim/v2/Groups/g1", "type": "direct"},
                   {"value": "g2", "display": "P", "$ref": "https://h/scim/v2/Groups/g2", "type": "indirect"}])
        );
        assert_eq!(r["meta"]["location"], "https://h/scim/v2/Users/id1");
        assert_eq!(r["meta"]["version"], "W/\"3\"");
        assert_eq!(r["meta"]["lastModified"], "2026-11-22T21:42:34.123Z");
        assert_eq!(r["meta"]["resourceType"], "User");
        let r = render_user("id1", &u.data, &meta, None, "https://h");
        assert!(r.get("groups").is_none());
        // Re-parsing the rendered form (Okta's GET-then-PUT) gives the same data.
        let again = parse_user(r, &set()).unwrap();
        assert_eq!(again.data.get("userName"), u.data.get("userName"));
        assert_eq!(again.data.get(ENTERPRISE_USER), u.data.get(ENTERPRISE_USER));
    }

    #[test]
    fn render_group_shape() {
        let g = parse_group(json!({"displayName": "G", "externalId": "e"}), &set()).unwrap();
        let meta = Meta {
            created_ms: 0,
            last_modified_ms: 0,
            version: 1,
        };
        let members = [
            MemberRef {
                value: "u1".into(),
                display: Some("a".into()),
                kind: Some(ResourceType::User),
            },
            MemberRef {
                value: "u2".into(),
                display: None,
                kind: None,
            },
            MemberRef {
                value: "g2".into(),
                display: Some("Child".into()),
                kind: Some(ResourceType::Group),
            },
        ];
        let r = render_group("g1", &g.data, &meta, Some(&members), "https://h");
        assert_eq!(r["schemas"], json!([GROUP_SCHEMA]));
        assert_eq!(r["displayName"], "G");
        assert_eq!(
            r["members"],
            json!([{"value": "u1", "display": "a", "$ref": "https://h/Users/u1", "type": "User"},
                   {"value": "u2", "$ref": "https://h/Users/u2", "type": "User"},
                   {"value": "g2", "display": "Child", "$ref": "https://h/Groups/g2", "type": "Group"}])
        );
        assert_eq!(r["meta"]["location"], "https://h/Groups/g1");
        assert!(render_group("g1", &g.data, &meta, None, "https://h")
            .get("members")
            .is_none());
    }
}

#[cfg(test)]
mod member_limit_tests {
    use super::*;

    /// Okta's wizard apps PUT a group's whole membership: more than `MAX_VALUES` members must
    /// be accepted (the group body limit bounds it), while other arrays keep the tighter cap.
    #[test]
    fn a_full_membership_push_may_exceed_the_per_attribute_cap() {
        let members: Vec<Value> = (0..MAX_VALUES + 5_000)
            .map(|i| serde_json::json!({"value": format!("u{i}")}))
            .collect();
        let body = serde_json::json!({"displayName": "Everyone", "members": members});
        let g = parse_group(body, &SchemaSet::default()).unwrap();
        assert_eq!(g.members.unwrap().len(), MAX_VALUES + 5_000);
        let emails: Vec<Value> = (0..MAX_VALUES + 1)
            .map(|i| serde_json::json!({"value": format!("e{i}@x")}))
            .collect();
        let user = serde_json::json!({"userName": "a", "emails": emails});
        assert_eq!(
            parse_user(user, &SchemaSet::default())
                .unwrap_err()
                .scim_type,
            Some(crate::scim::ScimType::TooMany)
        );
    }
}
