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
//!
//! Choices where the RFC leaves room (documented here, pinned by tests):
//! - removing (or replacing with null) `userName` on a user or `displayName` on a group is
//!   400 `mutability`: both are required, and RFC 7644 §3.5.2 says an operation must be
//!   compatible with the attribute's schema;
//! - a path to an attribute outside the core, Group or enterprise schema is 400 `invalidPath`
//!   `objectClass`, `memberOf`, `userPassword` ...) unless the resource already has that
//!   attribute (an Okta custom attribute sent in the core namespace by POST/PUT, which stores
//!   it as sent); attributes of other extension URNs (declared or, like Entra's custom one,
//!   not) are accepted, the mapping's allowlist decides what reaches a target; a known simple
//!   attribute with a sub-attribute (`userName.foo`) is 400 `invalidPath`;
//! - `replace` with `"value": null` removes the attribute (RFC 7643 §2.5: null is unassigned),
//!   `add` with null is a no-op; member payloads are never silently ignored.
//!
//! Owns PATCH semantics only; no I/O. Results are re-validated by `resource::parse_*`.

use crate::scim::error::ScimError;
use crate::scim::filter::{CompareOp, Filter};
use crate::scim::path::{parse_path, AttrPath};
use crate::scim::resource::{
    canonical_urn, check_shape, is_urn, lookup, normalize, parse_bool, parse_members, strip_nulls,
    Kind, MemberRef, Password, ENTERPRISE_ATTRS, GROUP_ATTRS, MAX_VALUES, USER_ATTRS,
};
use crate::scim::schema::{SchemaSet, ENTERPRISE_USER, GROUP_SCHEMA, USER_SCHEMA};
use serde_json::{json, Map, Value};

/// The three PATCH operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    /// RFC 7644 §3.5.2.1
    Add,
    /// RFC 7644 §3.5.2.2
    Remove,
    /// RFC 7644 §3.5.2.3
    Replace,
}

/// One parsed operation.
#[derive(Debug, Clone, PartialEq)]
pub struct PatchOp {
    /// The operation, whatever case the client used.
    pub op: OpKind,
    /// The target; `None` for a path-less add/replace with a value object.
    pub path: Option<AttrPath>,
    /// The value as sent (may be JSON null).
    pub value: Option<Value>,
}

/// A change to a group's membership, in request order. The store applies these as row inserts
/// and deletes, so one added member costs O(1) rows whatever the group's size.
#[derive(Debug, Clone, PartialEq)]
pub enum MemberOp {
    /// Add these members (already a member: no-op).
    Add(Vec<MemberRef>),
    /// Remove the members with these ids (not a member: no-op).
    Remove(Vec<String>),
    /// Remove the members matching a filter other than `value eq` (evaluated against
    /// `{"value", "display", "type"}` member objects, with
    /// [`Filter::matches_element`]`(obj, "members")` so that `value` compares case-exactly).
    RemoveMatching(Filter),
    /// Remove every member.
    RemoveAll,
    /// Make the membership exactly this set.
    Replace(Vec<MemberRef>),
}

/// Parse a PatchOp body. `schemas` is tolerated when missing or without the PatchOp URN
/// (clients differ); when present it must be an array of strings.
///
/// # Errors
/// 400 `invalidSyntax` for a missing `Operations` array, a bad `op`, a missing `value` where one is
/// required; 400 `invalidPath` for a bad path; 400 `tooMany` over `max_ops` operations;
/// 400 `noTarget` for a `remove` without a path (RFC 7644 §3.5.2.2).
pub fn parse_patch(body: Value, max_ops: usize) -> Result<Vec<PatchOp>, ScimError> {
    check_shape(&body)?;
    let Value::Object(mut obj) = body else {
        return Err(ScimError::invalid_syntax(
            "PATCH body must be a JSON object",
        ));
    };
    match take_ci(&mut obj, "schemas") {
        None | Some(Value::Null) => {}
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => {}
        Some(_) => {
            return Err(ScimError::invalid_syntax(
                "schemas must be an array of strings",
            ))
        }
    }
    // Entra and Okta send `Operations`; accept any case.
    let Some(Value::Array(ops)) = take_ci(&mut obj, "Operations") else {
        return Err(ScimError::invalid_syntax("Operations must be an array"));
    };
    if ops.len() > max_ops {
        return Err(ScimError::too_many("too many PATCH operations"));
    }
    ops.into_iter().map(parse_op).collect()
}

/// Remove and return the member whose key matches `name` case-insensitively.
fn take_ci(obj: &mut Map<String, Value>, name: &str) -> Option<Value> {
    let key = obj.keys().find(|k| k.eq_ignore_ascii_case(name))?.clone();
    obj.remove(&key)
}

fn parse_op(v: Value) -> Result<PatchOp, ScimError> {
    let Value::Object(mut obj) = v else {
        return Err(ScimError::invalid_syntax(
            "each operation must be an object",
        ));
    };
    // Entra's default dialect capitalises ops ("Replace"); RFC 7644 §3.5.2 names are lower-case.
    let op = match take_ci(&mut obj, "op") {
        Some(Value::String(s)) if s.eq_ignore_ascii_case("add") => OpKind::Add,
        Some(Value::String(s)) if s.eq_ignore_ascii_case("remove") => OpKind::Remove,
        Some(Value::String(s)) if s.eq_ignore_ascii_case("replace") => OpKind::Replace,
        _ => {
            return Err(ScimError::invalid_syntax(
                "op must be add, remove or replace",
            ))
        }
    };
    let path = match take_ci(&mut obj, "path") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.trim().is_empty() => None,
        Some(Value::String(s)) => Some(parse_path(&s)?),
        Some(_) => return Err(ScimError::invalid_path("path must be a string")),
    };
    let value = take_ci(&mut obj, "value");
    match (op, &path, &value) {
        (OpKind::Remove, None, _) => Err(ScimError::no_target("remove requires a path")),
        (OpKind::Add | OpKind::Replace, _, None) => {
            Err(ScimError::invalid_syntax("add and replace require a value"))
        }
        _ => Ok(PatchOp { op, path, value }),
    }
}

/// The value object of a path-less operation (RFC 7644 §3.5.2.1 / §3.5.2.3).
fn value_object(value: Option<&Value>) -> Result<&Map<String, Value>, ScimError> {
    match value {
        Some(Value::Object(o)) => Ok(o),
        _ => Err(ScimError::invalid_value(
            "an operation without a path needs an object value",
        )),
    }
}

fn is_ignored_in_value_object(key: &str) -> bool {
    ["id", "meta", "schemas"]
        .iter()
        .any(|r| r.eq_ignore_ascii_case(key))
}

/// Drop extension objects a patch emptied.
fn drop_empty_extensions(data: &mut Map<String, Value>) {
    data.retain(|k, v| !(is_urn(k) && v.as_object().is_some_and(Map::is_empty)));
}

/// Apply operations to a user's canonical body (`UserInput::data` shape). The result is
/// re-validated by the caller with `resource::parse_user`. Returns a password set by the patch.
/// On error `data` may hold part of the changes: discard it (RFC 7644 §3.5.2: a PATCH is
/// atomic, so the caller applies to a copy).
///
/// # Errors
/// 400 `mutability` for `id`, `meta`, `groups` (a path-less replace that repeats the current `id`
/// is accepted, as Okta sends it); 400 `noTarget` when a value filter matches nothing on replace;
/// 400 `invalidPath`/`invalidValue` for paths or values that do not fit.
pub fn apply_user_patch(
    data: &mut Map<String, Value>,
    ops: &[PatchOp],
    schemas: &SchemaSet,
) -> Result<Option<Password>, ScimError> {
    let mut ctx = UserCtx {
        data,
        schemas,
        password: None,
    };
    for op in ops {
        let before = primary_values(ctx.data);
        apply_user_op(&mut ctx, op)?;
        settle_primaries(ctx.data, &before);
    }
    drop_empty_extensions(ctx.data);
    Ok(ctx.password)
}

/// The values marked primary in each top-level multi-valued attribute.
fn primary_values(data: &Map<String, Value>) -> Vec<(String, Value)> {
    data.iter()
        .filter_map(|(k, v)| Some((k, v.as_array()?)))
        .flat_map(|(k, items)| {
            items
                .iter()
                .filter(|e| e.get("primary") == Some(&Value::Bool(true)))
                .map(move |e| (k.clone(), e.clone()))
        })
        .collect()
}

/// RFC 7644 §3.5.2: an operation that sets `primary` true on a value sets it false on the
/// other values of the attribute. A value is newly primary when it was not among `before`
/// (the attribute's primary values before the operation); if one op marks several, the last
/// wins.
fn settle_primaries(data: &mut Map<String, Value>, before: &[(String, Value)]) {
    for (k, v) in data.iter_mut() {
        let Some(items) = v.as_array_mut() else {
            continue;
        };
        let was = |e: &Value| before.iter().any(|(bk, bv)| bk == k && bv == e);
        let is_primary = |e: &Value| e.get("primary") == Some(&Value::Bool(true));
        let Some(keep) = items.iter().rposition(|e| is_primary(e) && !was(e)) else {
            continue;
        };
        for (i, item) in items.iter_mut().enumerate() {
            if i != keep && is_primary(item) {
                if let Some(obj) = item.as_object_mut() {
                    obj.insert("primary".into(), Value::Bool(false));
                }
            }
        }
    }
}

fn apply_user_op(ctx: &mut UserCtx<'_>, op: &PatchOp) -> Result<(), ScimError> {
    match &op.path {
        Some(path) => ctx.apply_path(op.op, path, op.value.as_ref())?,
        None => {
            for (k, v) in value_object(op.value.as_ref())? {
                if is_ignored_in_value_object(k) {
                    continue; // Okta repeats `id` in a path-less replace
                }
                if let Some(urn) = ctx.extension_key(k, Some(v)) {
                    ctx.apply_extension_object(op.op, &urn, v)?;
                    continue;
                }
                // Keys may be plain, dotted or URN-qualified (Entra aadOptscim062020).
                let path = parse_path(k)?;
                ctx.apply_path(op.op, &path, Some(v))?;
            }
        }
    }
    Ok(())
}

struct UserCtx<'a> {
    data: &'a mut Map<String, Value>,
    schemas: &'a SchemaSet,
    password: Option<Password>,
}

/// Where a user path lands.
enum Target {
    Password,
    Attr {
        container: Option<String>,
        attr: String,
        kind: Option<Kind>,
    },
}

/// The spelling `key` already has in `map` (attribute names are case-insensitive), if any.
fn existing_key(map: &Map<String, Value>, key: &str) -> Option<String> {
    map.keys().find(|k| k.eq_ignore_ascii_case(key)).cloned()
}

impl UserCtx<'_> {
    fn ext_spelling(&self, urn: &str) -> String {
        let canonical = canonical_urn(urn, self.schemas);
        if canonical != urn {
            return canonical;
        }
        existing_key(self.data, urn).unwrap_or(canonical)
    }

    /// Does `key` name a whole extension object (rather than an attribute inside one)?
    fn extension_key(&self, key: &str, value: Option<&Value>) -> Option<String> {
        if !is_urn(key) {
            return None;
        }
        if key.eq_ignore_ascii_case(USER_SCHEMA) {
            // `{"urn:...:core:2.0:User": {"userName": ..}}`: core attributes, URN-qualified.
            return Some(USER_SCHEMA.to_string());
        }
        let known = key.eq_ignore_ascii_case(ENTERPRISE_USER)
            || self
                .schemas
                .user_extensions
                .iter()
                .any(|u| u.eq_ignore_ascii_case(key))
            || existing_key(self.data, key).is_some();
        let looks_like_schema = value.is_none_or(Value::is_object)
            && key
                .rsplit(':')
                .next()
                .is_some_and(|last| last.eq_ignore_ascii_case("User"));
        (known || looks_like_schema).then(|| self.ext_spelling(key))
    }

    /// A whole extension object: each of its attributes is applied as `urn:attr`.
    fn apply_extension_object(
        &mut self,
        op: OpKind,
        urn: &str,
        v: &Value,
    ) -> Result<(), ScimError> {
        match (op, v) {
            (OpKind::Remove, _) | (OpKind::Replace, Value::Null) if urn == USER_SCHEMA => {
                Err(ScimError::invalid_path("the core schema cannot be removed"))
            }
            (OpKind::Remove, _) | (OpKind::Replace, Value::Null) => {
                self.data.remove(urn);
                Ok(())
            }
            (_, Value::Object(obj)) => {
                for (k, av) in obj {
                    if k.contains([':', '[']) {
                        return Err(ScimError::invalid_path("invalid extension attribute name"));
                    }
                    let path = parse_path(&format!("{urn}:{k}"))?;
                    self.apply_path(op, &path, Some(av))?;
                }
                Ok(())
            }
            (OpKind::Add, Value::Null) => Ok(()),
            _ => Err(ScimError::invalid_value("an extension must be an object")),
        }
    }

    fn apply_path(
        &mut self,
        op: OpKind,
        path: &AttrPath,
        value: Option<&Value>,
    ) -> Result<(), ScimError> {
        if let (Some(urn), None, None) = (&path.urn, &path.sub_attr, &path.value_filter) {
            if let Some(ext) = self.extension_key(&format!("{urn}:{}", path.attr), value) {
                return self.apply_extension_object(op, &ext, value.unwrap_or(&Value::Null));
            }
        }
        match self.target(path)? {
            Target::Password => self.set_password(op, path, value),
            Target::Attr {
                container,
                attr,
                kind,
            } => {
                let sub = check_sub(&attr, kind, path)?;
                let removes = op == OpKind::Remove || value.is_some_and(Value::is_null);
                if container.is_none() && attr == "userName" && sub.is_none() && removes {
                    return Err(ScimError::mutability(
                        "userName is required and cannot be removed",
                    ));
                }
                let is_manager = container.as_deref() == Some(ENTERPRISE_USER) && attr == "manager";
                let whole = sub.is_none() && path.value_filter.is_none();
                let value = match value {
                    Some(v) if whole => Some(whole_value(&attr, kind, is_manager, v)?),
                    Some(v) if sub.as_deref() == Some("primary") && !v.is_null() => {
                        Some(Value::Bool(parse_bool("primary", v)?))
                    }
                    Some(v) => Some(strip_nulls(v.clone())),
                    None => None,
                };
                let map = container_map(self.data, container.as_deref())?;
                let attr = existing_key(map, &attr).unwrap_or(attr);
                let spec = AttrOp {
                    attr: &attr,
                    kind,
                    merge: !is_manager,
                    op,
                };
                spec.apply(map, path.value_filter.as_deref(), sub.as_deref(), value)
            }
        }
    }

    fn target(&self, path: &AttrPath) -> Result<Target, ScimError> {
        let urn = path
            .urn
            .as_deref()
            .filter(|u| !u.eq_ignore_ascii_case(USER_SCHEMA));
        if let Some(urn) = urn {
            let ext = self.ext_spelling(urn);
            let (attr, kind) = match lookup(ENTERPRISE_ATTRS, &path.attr) {
                Some((n, k)) if ext == ENTERPRISE_USER => (n.to_string(), Some(k)),
                None if ext == ENTERPRISE_USER => {
                    let current = self.data.get(ENTERPRISE_USER).and_then(Value::as_object);
                    (known_or_existing(current, &path.attr)?, None)
                }
                _ => match self.schemas.extension_defs(&ext) {
                    // A declared extension with definitions: its attributes only.
                    Some(defs) => {
                        let def = defs
                            .iter()
                            .find(|d| d.name.eq_ignore_ascii_case(&path.attr))
                            .ok_or_else(|| ScimError::invalid_path("unknown attribute"))?;
                        if def.mutability == "readOnly" {
                            return Err(ScimError::mutability(format!(
                                "{} is read-only",
                                def.name
                            )));
                        }
                        if path.sub_attr.is_some() {
                            return Err(ScimError::invalid_path(format!(
                                "{} has no sub-attributes",
                                def.name
                            )));
                        }
                        (def.name.clone(), None)
                    }
                    None => (path.attr.clone(), None),
                },
            };
            return Ok(Target::Attr {
                container: Some(ext),
                attr,
                kind,
            });
        }
        match lookup(USER_ATTRS, &path.attr) {
            Some((n, Kind::ReadOnly)) => Err(ScimError::mutability(format!("{n} is read-only"))),
            Some((_, Kind::Password)) => Ok(Target::Password),
            Some((n, k)) => Ok(Target::Attr {
                container: None,
                attr: n.to_string(),
                kind: Some(k),
            }),
            // Older Entra sends the enterprise manager unqualified: `"path": "manager"`.
            None if path.attr.eq_ignore_ascii_case("manager") => Ok(Target::Attr {
                container: Some(ENTERPRISE_USER.to_string()),
                attr: "manager".to_string(),
                kind: lookup(ENTERPRISE_ATTRS, "manager").map(|(_, k)| k),
            }),
            None => Ok(Target::Attr {
                container: None,
                attr: known_or_existing(Some(self.data), &path.attr)?,
                kind: None,
            }),
        }
    }

    /// `password` is write-only: it is returned to the caller and never stored in `data`.
    fn set_password(
        &mut self,
        op: OpKind,
        path: &AttrPath,
        value: Option<&Value>,
    ) -> Result<(), ScimError> {
        if path.sub_attr.is_some() || path.value_filter.is_some() {
            return Err(ScimError::invalid_path("password has no sub-attributes"));
        }
        match (op, value) {
            (OpKind::Remove, _) => Ok(()),
            (_, Some(Value::String(s))) => {
                self.password = Some(Password(s.clone()));
                Ok(())
            }
            _ => Err(ScimError::invalid_value("password must be a string")),
        }
    }
}

/// An attribute outside the schema may be patched only when the resource already has it (it
/// came in a POST/PUT, e.g. an Okta custom attribute); anything else is 400 invalidPath, so a
/// PATCH can never invent `objectClass`, `memberOf` or `userPassword`.
fn known_or_existing(map: Option<&Map<String, Value>>, attr: &str) -> Result<String, ScimError> {
    map.and_then(|m| existing_key(m, attr))
        .ok_or_else(|| ScimError::invalid_path("unknown attribute"))
}

/// The canonical sub-attribute for a path on an attribute of `kind`.
fn check_sub(attr: &str, kind: Option<Kind>, path: &AttrPath) -> Result<Option<String>, ScimError> {
    let sub = path.sub_attr.as_deref();
    match kind {
        Some(Kind::Str | Kind::Bool) if sub.is_some() || path.value_filter.is_some() => Err(
            ScimError::invalid_path(format!("{attr} has no sub-attributes")),
        ),
        Some(Kind::Complex(_)) if path.value_filter.is_some() => Err(ScimError::invalid_path(
            format!("{attr} is not multi-valued"),
        )),
        Some(Kind::Complex(subs) | Kind::Multi(subs)) => match sub {
            None => Ok(None),
            Some(s) => subs
                .iter()
                .find(|c| c.eq_ignore_ascii_case(s))
                .map(|c| Some((*c).to_string()))
                .ok_or_else(|| ScimError::invalid_path(format!("unknown sub-attribute of {attr}"))),
        },
        _ => Ok(sub.map(str::to_string)),
    }
}

/// A value for a whole attribute: nulls removed, a single object wrapped for a multi-valued
/// attribute, a manager string or `[{"$ref","value"}]` list turned into `{"value"}`, and known
/// attributes type-checked (`active: "False"` becomes `false`).
fn whole_value(
    attr: &str,
    kind: Option<Kind>,
    is_manager: bool,
    v: &Value,
) -> Result<Value, ScimError> {
    if v.is_null() {
        return Ok(Value::Null);
    }
    let v = strip_nulls(v.clone());
    let v = match (kind, v) {
        (_, v) if is_manager => manager_value(v)?,
        (Some(Kind::Multi(_)), Value::Object(o)) => Value::Array(vec![Value::Object(o)]),
        (_, v) => v,
    };
    match kind {
        Some(k) if !v.is_null() => normalize(attr, k, v),
        _ => Ok(v),
    }
}

/// Entra sends the manager as a bare id (SDK-686) or, in older tenants, as
/// `[{"$ref": .., "value": ..}]`; it is stored and returned as `{"value": ...}`.
fn manager_value(v: Value) -> Result<Value, ScimError> {
    let bad = || ScimError::invalid_value("manager must be a string or an object with a value");
    match v {
        Value::String(s) => Ok(json!({ "value": s })),
        Value::Object(o) => Ok(Value::Object(o)),
        Value::Array(items) => match items.into_iter().next() {
            None => Ok(Value::Null),
            Some(Value::String(s)) => Ok(json!({ "value": s })),
            Some(Value::Object(o)) => {
                let value = o
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("value"))
                    .map(|(_, v)| v);
                match value {
                    Some(Value::String(s)) => Ok(json!({ "value": s })),
                    _ => Err(bad()),
                }
            }
            Some(_) => Err(bad()),
        },
        _ => Err(bad()),
    }
}

/// The object holding a target attribute: the body itself or an extension object in it.
fn container_map<'a>(
    data: &'a mut Map<String, Value>,
    container: Option<&str>,
) -> Result<&'a mut Map<String, Value>, ScimError> {
    let Some(urn) = container else {
        return Ok(data);
    };
    data.entry(urn.to_string())
        .or_insert_with(|| Value::Object(Map::new()))
        .as_object_mut()
        .ok_or_else(|| ScimError::invalid_value("an extension must be an object"))
}

/// One operation on one attribute of one container.
struct AttrOp<'a> {
    attr: &'a str,
    kind: Option<Kind>,
    /// Merge complex values (RFC 7644 §3.5.2.3: unspecified sub-attributes stay); off for
    /// `manager`, which is replaced whole.
    merge: bool,
    op: OpKind,
}

impl AttrOp<'_> {
    fn apply(
        &self,
        map: &mut Map<String, Value>,
        filter: Option<&Filter>,
        sub: Option<&str>,
        value: Option<Value>,
    ) -> Result<(), ScimError> {
        // RFC 7643 §2.5: null is unassigned. replace with null removes; add with null does nothing.
        let op = match (self.op, &value) {
            (OpKind::Replace, Some(Value::Null)) => OpKind::Remove,
            (OpKind::Add, Some(Value::Null)) => return Ok(()),
            (op, _) => op,
        };
        let value = value.unwrap_or(Value::Null);
        let multi = matches!(self.kind, Some(Kind::Multi(_)))
            || (self.kind.is_none() && map.get(self.attr).is_some_and(Value::is_array));
        let result = match (filter, sub) {
            (Some(f), _) => self.filtered(map, op, f, sub, value),
            (None, None) => self.whole(map, op, value, multi),
            (None, Some(s)) if multi => self.sub_of_all(map, op, s, value),
            (None, Some(s)) => self.sub_of_single(map, op, s, value),
        };
        if map
            .get(self.attr)
            .is_some_and(|v| v.as_array().is_some_and(Vec::is_empty))
            && op == OpKind::Remove
        {
            map.remove(self.attr); // RFC 7644 §3.5.2.2: no values left means unassigned
        }
        result
    }

    fn whole(
        &self,
        map: &mut Map<String, Value>,
        op: OpKind,
        value: Value,
        multi: bool,
    ) -> Result<(), ScimError> {
        let existing_object = map.get(self.attr).is_some_and(Value::is_object);
        let complex =
            matches!(self.kind, Some(Kind::Complex(_))) || (self.kind.is_none() && existing_object);
        match (op, value) {
            (OpKind::Remove, _) => {
                map.remove(self.attr);
            }
            // RFC 7644 §3.5.2.1: add to a multi-valued attribute appends (no duplicates).
            (OpKind::Add, Value::Array(items)) if multi => {
                let arr = array_mut(map, self.attr)?;
                for item in items {
                    if !arr.contains(&item) {
                        arr.push(item);
                    }
                }
                if arr.len() > MAX_VALUES {
                    return Err(ScimError::too_many(
                        "too many values in a multi-valued attribute",
                    ));
                }
            }
            (_, Value::Object(new)) if complex && self.merge && existing_object => {
                if let Some(Value::Object(old)) = map.get_mut(self.attr) {
                    for (k, v) in new {
                        let key = existing_key(old, &k).unwrap_or(k);
                        old.insert(key, v);
                    }
                }
            }
            (_, value) => {
                map.insert(self.attr.to_string(), value);
            }
        }
        Ok(())
    }

    fn sub_of_single(
        &self,
        map: &mut Map<String, Value>,
        op: OpKind,
        sub: &str,
        value: Value,
    ) -> Result<(), ScimError> {
        if op == OpKind::Remove {
            if let Some(Value::Object(o)) = map.get_mut(self.attr) {
                remove_ci(o, sub);
                if o.is_empty() {
                    map.remove(self.attr);
                }
            }
            return Ok(());
        }
        let entry = map
            .entry(self.attr.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        if !entry.is_object() {
            *entry = Value::Object(Map::new());
        }
        if let Value::Object(o) = entry {
            insert_ci(o, sub, value);
        }
        Ok(())
    }

    /// A sub-attribute of a multi-valued attribute without a filter applies to every value.
    fn sub_of_all(
        &self,
        map: &mut Map<String, Value>,
        op: OpKind,
        sub: &str,
        value: Value,
    ) -> Result<(), ScimError> {
        let arr = array_mut(map, self.attr)?;
        match op {
            // A multi-valued element is identified by its `value` (RFC 7643 §2.4): without it,
            // it is gone.
            OpKind::Remove if sub.eq_ignore_ascii_case("value") => arr.clear(),
            OpKind::Remove => {
                arr.iter_mut()
                    .filter_map(Value::as_object_mut)
                    .for_each(|o| remove_ci(o, sub));
                arr.retain(|e| !e.as_object().is_some_and(Map::is_empty));
            }
            _ if arr.is_empty() => {
                arr.push(Value::Object(Map::from_iter([(sub.to_string(), value)])))
            }
            _ => {
                for o in arr.iter_mut().filter_map(Value::as_object_mut) {
                    insert_ci(o, sub, value.clone());
                }
            }
        }
        Ok(())
    }

    /// `attr[filter]` and `attr[filter].sub` (RFC 7644 §3.5.2.1-3).
    fn filtered(
        &self,
        map: &mut Map<String, Value>,
        op: OpKind,
        f: &Filter,
        sub: Option<&str>,
        value: Value,
    ) -> Result<(), ScimError> {
        if !map.contains_key(self.attr) && op == OpKind::Remove {
            return Ok(());
        }
        if matches!(self.kind, Some(Kind::Complex(_) | Kind::Str | Kind::Bool)) {
            return Err(ScimError::invalid_path(format!(
                "{} is not multi-valued",
                self.attr
            )));
        }
        let arr = array_mut(map, self.attr)?;
        let parent = self.attr;
        let hit = |el: &Value| f.matches_element(el, parent);
        match (op, sub) {
            (OpKind::Remove, None) => arr.retain(|el| !hit(el)),
            (OpKind::Remove, Some(s)) if s.eq_ignore_ascii_case("value") => {
                arr.retain(|el| !hit(el))
            }
            (OpKind::Remove, Some(s)) => {
                for el in arr.iter_mut().filter(|el| hit(el)) {
                    if let Some(o) = el.as_object_mut() {
                        remove_ci(o, s);
                    }
                }
                arr.retain(|e| !e.as_object().is_some_and(Map::is_empty));
            }
            // Nothing matches: Entra uses add (and replace) on `emails[type eq "work"].value` for
            // a value that did not exist yet; create it when the filter says how.
            _ if !arr.iter().any(hit) => arr.push(created_element(f, sub, value)?),
            (_, Some(s)) => {
                for o in arr
                    .iter_mut()
                    .filter(|el| hit(el))
                    .filter_map(Value::as_object_mut)
                {
                    insert_ci(o, s, value.clone());
                }
            }
            (op, None) => {
                let Value::Object(new) = value else {
                    return Err(ScimError::invalid_value(format!(
                        "{parent} values must be objects"
                    )));
                };
                for el in arr.iter_mut().filter(|el| hit(el)) {
                    match (op, el.as_object_mut()) {
                        (OpKind::Add, Some(o)) => {
                            new.iter().for_each(|(k, v)| insert_ci(o, k, v.clone()))
                        }
                        _ => *el = Value::Object(new.clone()),
                    }
                }
            }
        }
        Ok(())
    }
}

/// The element a simple `attr eq "x"` filter describes, with the patched value in it; any
/// other filter that matches nothing is 400 noTarget (RFC 7644 §3.5.2.3).
fn created_element(f: &Filter, sub: Option<&str>, value: Value) -> Result<Value, ScimError> {
    let Filter::Compare {
        path,
        op: CompareOp::Eq,
        value: key_value,
    } = f
    else {
        return Err(ScimError::no_target("the value filter matched no values"));
    };
    if path.urn.is_some() || path.sub_attr.is_some() || path.value_filter.is_some() {
        return Err(ScimError::no_target("the value filter matched no values"));
    }
    let mut o = Map::new();
    o.insert(path.attr.clone(), key_value.clone());
    match (sub, value) {
        (Some(s), v) => insert_ci(&mut o, s, v),
        (None, Value::Object(v)) => v.into_iter().for_each(|(k, v)| insert_ci(&mut o, &k, v)),
        (None, _) => {
            return Err(ScimError::invalid_value(
                "multi-valued values must be objects",
            ))
        }
    }
    Ok(Value::Object(o))
}

fn array_mut<'a>(
    map: &'a mut Map<String, Value>,
    attr: &str,
) -> Result<&'a mut Vec<Value>, ScimError> {
    map.entry(attr.to_string())
        .or_insert_with(|| Value::Array(Vec::new()))
        .as_array_mut()
        .ok_or_else(|| ScimError::invalid_path(format!("{attr} is not multi-valued")))
}

fn insert_ci(o: &mut Map<String, Value>, key: &str, value: Value) {
    let key = existing_key(o, key).unwrap_or_else(|| key.to_string());
    o.insert(key, value);
}

fn remove_ci(o: &mut Map<String, Value>, key: &str) {
    if let Some(k) = existing_key(o, key) {
        o.remove(&k);
    }
}

/// Apply operations to a group's canonical body; membership changes come back as [`MemberOp`]s.
/// As for users, on error `data` may hold part of the changes and must be discarded.
///
/// # Errors
/// As [`apply_user_patch`]; a malformed member payload is 400, never a silent no-op.
pub fn apply_group_patch(
    data: &mut Map<String, Value>,
    ops: &[PatchOp],
) -> Result<Vec<MemberOp>, ScimError> {
    let mut out = Vec::new();
    for op in ops {
        match &op.path {
            Some(path) if is_members(path) => {
                out.extend(member_op(op.op, path, op.value.as_ref())?)
            }
            Some(path) => group_attr(data, op.op, path, op.value.as_ref())?,
            None => {
                for (k, v) in value_object(op.value.as_ref())? {
                    if is_ignored_in_value_object(k) {
                        continue; // Okta's rename repeats the group `id`
                    }
                    let path = if is_urn(k) && v.is_object() {
                        AttrPath {
                            urn: None,
                            attr: k.clone(),
                            value_filter: None,
                            sub_attr: None,
                            case_exact: None,
                        }
                    } else {
                        parse_path(k)?
                    };
                    if is_members(&path) {
                        out.extend(member_op(op.op, &path, Some(v))?);
                    } else {
                        group_attr(data, op.op, &path, Some(v))?;
                    }
                }
            }
        }
    }
    drop_empty_extensions(data);
    Ok(out)
}

fn is_members(path: &AttrPath) -> bool {
    path.urn
        .as_deref()
        .is_none_or(|u| u.eq_ignore_ascii_case(GROUP_SCHEMA))
        && path.attr.eq_ignore_ascii_case("members")
}

/// A non-member group attribute: `displayName` (required), `externalId`, extensions.
fn group_attr(
    data: &mut Map<String, Value>,
    op: OpKind,
    path: &AttrPath,
    value: Option<&Value>,
) -> Result<(), ScimError> {
    let value = value.map(|v| strip_nulls(v.clone()));
    if let Some(urn) = path
        .urn
        .as_deref()
        .filter(|u| !u.eq_ignore_ascii_case(GROUP_SCHEMA))
    {
        let ext = existing_key(data, urn).unwrap_or_else(|| urn.to_string());
        let map = container_map(data, Some(&ext))?;
        let attr = existing_key(map, &path.attr).unwrap_or_else(|| path.attr.clone());
        let spec = AttrOp {
            attr: &attr,
            kind: None,
            merge: true,
            op,
        };
        return spec.apply(
            map,
            path.value_filter.as_deref(),
            path.sub_attr.as_deref(),
            value,
        );
    }
    let known = lookup(GROUP_ATTRS, &path.attr);
    let (name, kind) = match known {
        Some((n, Kind::ReadOnly)) => {
            return Err(ScimError::mutability(format!("{n} is read-only")))
        }
        Some((n, k)) => (n.to_string(), Some(k)),
        None => (known_or_existing(Some(data), &path.attr)?, None),
    };
    if kind.is_some() && (path.sub_attr.is_some() || path.value_filter.is_some()) {
        return Err(ScimError::invalid_path(format!(
            "{name} has no sub-attributes"
        )));
    }
    let removes = op == OpKind::Remove || value.as_ref().is_some_and(Value::is_null);
    if name == "displayName" {
        match (&value, removes) {
            (_, true) => {
                return Err(ScimError::mutability(
                    "displayName is required and cannot be removed",
                ))
            }
            (Some(Value::String(s)), _) if !s.trim().is_empty() => {}
            _ => {
                return Err(ScimError::invalid_value(
                    "displayName must be a non-empty string",
                ))
            }
        }
    }
    let value = match (kind, value) {
        (Some(k), Some(v)) if !v.is_null() => Some(normalize(&name, k, v)?),
        (_, v) => v,
    };
    let spec = AttrOp {
        attr: &name,
        kind,
        merge: true,
        op,
    };
    spec.apply(
        data,
        path.value_filter.as_deref(),
        path.sub_attr.as_deref(),
        value,
    )
}

/// One member operation per the table in this module's header.
fn member_op(
    op: OpKind,
    path: &AttrPath,
    value: Option<&Value>,
) -> Result<Option<MemberOp>, ScimError> {
    if path.sub_attr.is_some() {
        return Err(ScimError::invalid_path(
            "member sub-attributes cannot be patched",
        ));
    }
    if let Some(f) = &path.value_filter {
        return match op {
            OpKind::Remove => Ok(Some(member_filter_op(f))),
            _ => Err(ScimError::invalid_path(
                "a members filter is only supported with remove",
            )),
        };
    }
    let op = match (op, value) {
        (OpKind::Remove, None | Some(Value::Null)) => MemberOp::RemoveAll,
        (OpKind::Replace, Some(Value::Null)) => MemberOp::RemoveAll,
        (OpKind::Remove, Some(v)) => {
            MemberOp::Remove(member_list(v)?.into_iter().map(|m| m.value).collect())
        }
        (OpKind::Add, Some(v)) => MemberOp::Add(member_list(v)?),
        (OpKind::Replace, Some(v)) => MemberOp::Replace(member_list(v)?),
        (_, None) => return Err(ScimError::invalid_syntax("add and replace require a value")),
    };
    Ok(match op {
        MemberOp::Add(list) if list.is_empty() => None,
        MemberOp::Remove(list) if list.is_empty() => None,
        other => Some(other),
    })
}

/// A member list; a single member object is read as a list of one.
fn member_list(v: &Value) -> Result<Vec<MemberRef>, ScimError> {
    match v {
        Value::Object(_) => parse_members(&Value::Array(vec![v.clone()])),
        _ => parse_members(v),
    }
}

/// `members[value eq "x"]` (or an `or` of such) is a removal by id; any other filter is
/// evaluated by the store against the member objects.
fn member_filter_op(f: &Filter) -> MemberOp {
    let mut ids = Vec::new();
    let mut stack = vec![f];
    while let Some(term) = stack.pop() {
        match term {
            Filter::Or(a, b) => {
                stack.push(b);
                stack.push(a);
            }
            Filter::Compare {
                path,
                op: CompareOp::Eq,
                value: Value::String(id),
            } if path.urn.is_none()
                && path.sub_attr.is_none()
                && path.value_filter.is_none()
                && path.attr.eq_ignore_ascii_case("value") =>
            {
                ids.push(id.clone());
            }
            _ => return MemberOp::RemoveMatching(f.clone()),
        }
    }
    MemberOp::Remove(ids)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scim::error::ScimType;
    use crate::scim::resource::parse_user;
    use std::collections::BTreeSet;

    const ENT: &str = ENTERPRISE_USER;

    fn patch(ops: Value) -> Value {
        json!({"schemas": [crate::scim::schema::PATCH_OP], "Operations": ops})
    }

    fn group_ops(ops: Value) -> Result<(Vec<MemberOp>, Map<String, Value>), ScimError> {
        let mut data = Map::from_iter([("displayName".to_string(), json!("G"))]);
        let parsed = parse_patch(patch(ops), 100)?;
        let out = apply_group_patch(&mut data, &parsed)?;
        Ok((out, data))
    }

    fn m(value: &str, display: Option<&str>) -> MemberRef {
        MemberRef {
            value: value.into(),
            display: display.map(str::to_string),
            kind: None,
        }
    }

    fn remove(ids: &[&str]) -> MemberOp {
        MemberOp::Remove(ids.iter().map(|s| s.to_string()).collect())
    }

    fn f(text: &str) -> Filter {
        crate::scim::filter::parse_filter(text, Default::default()).unwrap()
    }

    /// The member table: Okta OIN, Entra default and Entra aadOptscim062020 payloads
    /// (idp-requests.md §1.8, §2.3) plus edge cases.
    #[test]
    fn member_table() {
        let ok: Vec<(Value, Vec<MemberOp>)> = vec![
            // Okta OIN
            (
                json!([{"op": "remove", "path": "members[value eq \"u1\"]"}]),
                vec![remove(&["u1"])],
            ),
            (
                json!([{"op": "add", "path": "members", "value": [{"value": "u2", "display": "bob"}]}]),
                vec![MemberOp::Add(vec![m("u2", Some("bob"))])],
            ),
            (
                json!([{"op": "remove", "path": "members[value eq \"u1\"]"},
                       {"op": "add", "path": "members", "value": [{"value": "u2", "display": "bob"}]}]),
                vec![remove(&["u1"]), MemberOp::Add(vec![m("u2", Some("bob"))])],
            ),
            (
                json!([{"op": "replace", "path": "members", "value": [{"value": "u1"}, {"value": "u2"}]}]),
                vec![MemberOp::Replace(vec![m("u1", None), m("u2", None)])],
            ),
            (
                json!([{"op": "replace", "path": "members", "value": []}]),
                vec![MemberOp::Replace(vec![])],
            ),
            (
                json!([{"op": "replace", "value": {"id": "g1", "displayName": "New"}}]),
                vec![],
            ),
            (
                json!([{"op": "replace", "value": {"id": "g1", "displayName": "New", "members": [{"value": "u1"}]}}]),
                vec![MemberOp::Replace(vec![m("u1", None)])],
            ),
            // Entra default
            (
                json!([{"op": "Add", "path": "members", "value": [{"$ref": null, "value": "u1"}]}]),
                vec![MemberOp::Add(vec![m("u1", None)])],
            ),
            (
                json!([{"op": "Add", "path": "members", "value": [{"$ref": null, "value": "u1"}, {"$ref": null, "value": "u2"}]}]),
                vec![MemberOp::Add(vec![m("u1", None), m("u2", None)])],
            ),
            (
                json!([{"op": "Remove", "path": "members", "value": [{"value": "u1"}]}]),
                vec![remove(&["u1"])],
            ),
            (
                json!([{"op": "Remove", "path": "members", "value": [{"value": "u1"}, {"value": "u2"}]}]),
                vec![remove(&["u1", "u2"])],
            ),
            (
                json!([{"op": "Replace", "path": "displayName", "value": "Renamed"}]),
                vec![],
            ),
            // Entra aadOptscim062020
            (
                json!([{"op": "remove", "path": "members[value eq \"u9\"]"}]),
                vec![remove(&["u9"])],
            ),
            (
                json!([{"op": "add", "path": "members", "value": [{"value": "u1"}]}]),
                vec![MemberOp::Add(vec![m("u1", None)])],
            ),
            (
                json!([{"op": "replace", "value": {"displayName": "x"}}]),
                vec![],
            ),
            // RFC forms and tolerated variants
            (
                json!([{"op": "remove", "path": "members"}]),
                vec![MemberOp::RemoveAll],
            ),
            (
                json!([{"op": "remove", "path": "members", "value": null}]),
                vec![MemberOp::RemoveAll],
            ),
            (
                json!([{"op": "replace", "path": "members", "value": null}]),
                vec![MemberOp::RemoveAll],
            ),
            (
                json!([{"op": "remove", "path": "members[display eq \"bob\"]"}]),
                vec![MemberOp::RemoveMatching(f("display eq \"bob\""))],
            ),
            (
                json!([{"op": "remove", "path": "members[value eq \"a\" or value eq \"b\"]"}]),
                vec![remove(&["a", "b"])],
            ),
            (
                json!([{"op": "remove", "path": "members[value eq \"a\" and display eq \"x\"]"}]),
                vec![MemberOp::RemoveMatching(f(
                    "value eq \"a\" and display eq \"x\"",
                ))],
            ),
            (
                json!([{"op": "add", "path": "members", "value": {"value": "u1"}}]),
                vec![MemberOp::Add(vec![m("u1", None)])],
            ),
            (
                json!([{"op": "add", "path": "members", "value": []}]),
                vec![],
            ),
            (
                json!([{"op": "add", "path": "members", "value": [{"value": "u1"}, {"value": "u1", "display": "x"}]}]),
                vec![MemberOp::Add(vec![m("u1", None)])],
            ),
            (
                json!([{"op": "add", "value": {"members": [{"value": "u1", "type": "User"}]}}]),
                vec![MemberOp::Add(vec![MemberRef {
                    kind: Some(crate::scim::resource::ResourceType::User),
                    ..m("u1", None)
                }])],
            ),
            (
                json!([{"op": "add", "path": "members", "value": [{"value": "g1", "type": "Group"}]}]),
                vec![MemberOp::Add(vec![MemberRef {
                    kind: Some(crate::scim::resource::ResourceType::Group),
                    ..m("g1", None)
                }])],
            ),
            (
                json!([{"op": "REMOVE", "path": "Members[VALUE EQ \"u1\"]"}]),
                vec![remove(&["u1"])],
            ),
            (
                json!([{"op": "add", "path": "urn:ietf:params:scim:schemas:core:2.0:Group:members", "value": [{"value": "u1"}]}]),
                vec![MemberOp::Add(vec![m("u1", None)])],
            ),
            (
                json!([{"op": "remove", "path": "members[value eq \"u1\"]", "value": [{"value": "ignored"}]}]),
                vec![remove(&["u1"])],
            ),
        ];
        for (ops, want) in ok {
            let (got, _) = group_ops(ops.clone()).unwrap_or_else(|e| panic!("{ops}: {e}"));
            assert_eq!(got, want, "{ops}");
        }
        let bad: Vec<(Value, ScimType)> = vec![
            (
                json!([{"op": "add", "path": "members", "value": [{"value": "g", "type": "Team"}]}]),
                ScimType::InvalidValue,
            ),
            (
                json!([{"op": "add", "path": "members", "value": ["u1"]}]),
                ScimType::InvalidValue,
            ),
            (
                json!([{"op": "add", "path": "members", "value": [{"display": "x"}]}]),
                ScimType::InvalidValue,
            ),
            (
                json!([{"op": "Remove", "path": "members", "value": "u1"}]),
                ScimType::InvalidValue,
            ),
            (
                json!([{"op": "Remove", "path": "members", "value": [{"val": "u1"}]}]),
                ScimType::InvalidValue,
            ),
            (
                json!([{"op": "add", "path": "members", "value": {}}]),
                ScimType::InvalidValue,
            ),
            (
                json!([{"op": "add", "path": "members", "value": null}]),
                ScimType::InvalidValue,
            ),
            (
                json!([{"op": "add", "path": "members", "value": 5}]),
                ScimType::InvalidValue,
            ),
            (
                json!([{"op": "replace", "path": "members[value eq \"x\"]", "value": {"value": "y"}}]),
                ScimType::InvalidPath,
            ),
            (
                json!([{"op": "add", "path": "members.value", "value": "x"}]),
                ScimType::InvalidPath,
            ),
            (
                json!([{"op": "remove", "path": "members[value eq \"x\"].display"}]),
                ScimType::InvalidPath,
            ),
            (json!([{"op": "remove"}]), ScimType::NoTarget),
            (
                json!([{"op": "replace", "path": "displayName", "value": ""}]),
                ScimType::InvalidValue,
            ),
            (
                json!([{"op": "replace", "path": "displayName", "value": 5}]),
                ScimType::InvalidValue,
            ),
            (
                json!([{"op": "remove", "path": "displayName"}]),
                ScimType::Mutability,
            ),
            (
                json!([{"op": "replace", "path": "id", "value": "x"}]),
                ScimType::Mutability,
            ),
            (
                json!([{"op": "replace", "path": "meta.lastModified", "value": "x"}]),
                ScimType::Mutability,
            ),
            (
                json!([{"op": "replace", "value": [1]}]),
                ScimType::InvalidValue,
            ),
            (
                json!([{"op": "move", "path": "members"}]),
                ScimType::InvalidSyntax,
            ),
            (
                json!([{"op": "add", "path": "objectClass", "value": "x"}]),
                ScimType::InvalidPath,
            ),
            (
                json!([{"op": "replace", "value": {"memberOf": "x"}}]),
                ScimType::InvalidPath,
            ),
        ];
        for (ops, want) in bad {
            let err = group_ops(ops.clone()).unwrap_err();
            assert_eq!((err.status, err.scim_type), (400, Some(want)), "{ops}");
        }
    }

    #[test]
    fn group_attributes() {
        let (_, data) =
            group_ops(json!([{"op": "Replace", "path": "displayName", "value": "Renamed"}]))
                .unwrap();
        assert_eq!(data["displayName"], "Renamed");
        let (_, data) =
            group_ops(json!([{"op": "replace", "value": {"id": "g1", "displayName": "New", "externalId": "e"}}]))
                .unwrap();
        assert_eq!(data["displayName"], "New");
        assert_eq!(data["externalId"], "e");
        assert!(data.get("id").is_none());
        let (_, data) = group_ops(json!([{"op": "remove", "path": "externalId"}])).unwrap();
        assert!(data.get("externalId").is_none());
    }

    #[test]
    fn parse_patch_errors() {
        let cases: Vec<(Value, ScimType)> = vec![
            (json!([]), ScimType::InvalidSyntax),
            (json!({}), ScimType::InvalidSyntax),
            (json!({"Operations": {}}), ScimType::InvalidSyntax),
            (json!({"Operations": [1]}), ScimType::InvalidSyntax),
            (
                json!({"Operations": [{"path": "x", "value": 1}]}),
                ScimType::InvalidSyntax,
            ),
            (
                json!({"Operations": [{"op": "add", "path": "title"}]}),
                ScimType::InvalidSyntax,
            ),
            (
                json!({"Operations": [{"op": "replace"}]}),
                ScimType::InvalidSyntax,
            ),
            (
                json!({"Operations": [{"op": "remove"}]}),
                ScimType::NoTarget,
            ),
            (
                json!({"Operations": [{"op": "remove", "path": 5}]}),
                ScimType::InvalidPath,
            ),
            (
                json!({"Operations": [{"op": "remove", "path": "a b"}]}),
                ScimType::InvalidPath,
            ),
            (
                json!({"schemas": "x", "Operations": []}),
                ScimType::InvalidSyntax,
            ),
            (
                json!({"Operations": vec![json!({"op": "remove", "path": "title"}); 11]}),
                ScimType::TooMany,
            ),
        ];
        for (body, want) in cases {
            let err = parse_patch(body.clone(), 10).unwrap_err();
            assert_eq!(err.scim_type, Some(want), "{body}");
        }
        // Tolerated: no schemas, lower-case key, op in any case.
        let ops = parse_patch(
            json!({"operations": [{"OP": "Replace", "Path": "active", "Value": "False"}]}),
            10,
        )
        .unwrap();
        assert_eq!(ops.len(), 1);
        assert_eq!(ops[0].op, OpKind::Replace);
        assert_eq!(ops[0].value, Some(json!("False")));
    }

    fn base_user() -> Map<String, Value> {
        let body = json!({"userName": "bob@x", "active": true, "externalId": "e1",
            "name": {"givenName": "Bob", "familyName": "Builder"},
            "emails": [{"value": "bob@x", "type": "work", "primary": true}],
            ENT: {"employeeNumber": "1"}});
        parse_user(body, &SchemaSet::default()).unwrap().data
    }

    fn user_patch(ops: Value) -> Result<(Map<String, Value>, Option<Password>), ScimError> {
        let mut data = base_user();
        let parsed = parse_patch(patch(ops), 100)?;
        let pw = apply_user_patch(&mut data, &parsed, &SchemaSet::default())?;
        // The caller re-validates; the result must always pass.
        let again = parse_user(Value::Object(data.clone()), &SchemaSet::default())?;
        assert_eq!(again.data, data);
        Ok((data, pw))
    }

    #[test]
    fn an_extension_urn_path_sets_and_merges_the_extension_object() {
        for op in ["add", "replace", "Replace"] {
            let (d, _) = user_patch(json!([{"op": op, "path": ENT,
                "value": {"department": "D", "manager": "m-1"}}]))
            .unwrap();
            assert_eq!(
                d[ENT],
                json!({"employeeNumber": "1", "department": "D", "manager": {"value": "m-1"}}),
                "{op}"
            );
        }
        let (d, _) = user_patch(json!([{"op": "remove", "path": ENT}])).unwrap();
        assert!(d.get(ENT).is_none());
        assert_eq!(
            user_patch(json!([{"op": "add", "path": ENT, "value": "x"}]))
                .unwrap_err()
                .scim_type,
            Some(ScimType::InvalidValue)
        );
    }

    #[test]
    fn removing_active_and_other_optional_attributes_unassigns_them() {
        for path in ["active", "externalId", "name", "emails", "name.givenName"] {
            let (d, _) = user_patch(json!([{"op": "remove", "path": path}])).unwrap();
            let top = path.split('.').next().unwrap();
            match path.split_once('.') {
                None => assert!(d.get(top).is_none(), "{path}: {d:?}"),
                Some((_, sub)) => assert!(d[top].get(sub).is_none(), "{path}"),
            }
        }
        let (d, _) =
            user_patch(json!([{"op": "replace", "path": "active", "value": null}])).unwrap();
        assert!(d.get("active").is_none());
    }

    #[test]
    fn declared_extension_attributes_are_the_only_ones_under_their_urn() {
        use crate::scim::schema::ExtensionAttr;
        let urn = "urn:ietf:params:scim:schemas:extension:ironclad:2.0:User";
        let def = |name: &str, mutability: &str| ExtensionAttr {
            name: name.into(),
            ty: "string".into(),
            multi_valued: false,
            case_exact: false,
            mutability: mutability.into(),
            returned: "default".into(),
        };
        let set = SchemaSet::with_attributes(
            vec![urn.into()],
            vec![(
                urn.into(),
                vec![def("level", "readWrite"), def("stamp", "readOnly")],
            )],
        );
        let run = |ops: Value| {
            let mut data = base_user();
            let parsed = parse_patch(patch(ops), 100)?;
            apply_user_patch(&mut data, &parsed, &set)?;
            Ok::<_, ScimError>(data)
        };
        let d = run(json!([{"op": "add", "path": format!("{urn}:LEVEL"), "value": "L1"}])).unwrap();
        assert_eq!(d[urn], json!({"level": "L1"}));
        let d = run(json!([{"op": "add", "path": urn, "value": {"Level": "L2"}}])).unwrap();
        assert_eq!(d[urn], json!({"level": "L2"}));
        for (ops, want) in [
            (
                json!([{"op": "add", "path": format!("{urn}:other"), "value": "x"}]),
                ScimType::InvalidPath,
            ),
            (
                json!([{"op": "add", "path": urn, "value": {"other": "x"}}]),
                ScimType::InvalidPath,
            ),
            (
                json!([{"op": "add", "path": format!("{urn}:stamp"), "value": "x"}]),
                ScimType::Mutability,
            ),
            (
                json!([{"op": "add", "path": format!("{urn}:level.sub"), "value": "x"}]),
                ScimType::InvalidPath,
            ),
        ] {
            assert_eq!(run(ops.clone()).unwrap_err().scim_type, Some(want), "{ops}");
        }
    }

    #[test]
    fn okta_user_dialect() {
        let (d, _) = user_patch(json!([{"op": "replace", "value": {"active": false}}])).unwrap();
        assert_eq!(d["active"], false);
        let (d, _) = user_patch(
            json!([{"op": "replace", "value": {"id": "abc", "active": true, "meta": {}}}]),
        )
        .unwrap();
        assert_eq!(d["active"], true);
        assert!(d.get("id").is_none());
        let (d, pw) =
            user_patch(json!([{"op": "replace", "value": {"password": "s3cret"}}])).unwrap();
        assert_eq!(pw, Some(Password("s3cret".into())));
        assert!(d.get("password").is_none());
        let (_, pw) =
            user_patch(json!([{"op": "replace", "path": "password", "value": "p"}])).unwrap();
        assert_eq!(pw, Some(Password("p".into())));
    }

    #[test]
    fn entra_default_dialect() {
        let (d, _) =
            user_patch(json!([{"op": "Replace", "path": "active", "value": "False"}])).unwrap();
        assert_eq!(d["active"], false);
        let (d, _) =
            user_patch(json!([{"op": "Replace", "path": "active", "value": "True"}])).unwrap();
        assert_eq!(d["active"], true);
        let (d, _) = user_patch(json!([
            {"op": "Replace", "path": "name.familyName", "value": "Smith"},
            {"op": "Replace", "path": "displayName", "value": "Bob S"},
            {"op": "Replace", "path": "userName", "value": "bob.s@x"},
            {"op": "Add", "path": "title", "value": "Boss"},
            {"op": "Replace", "path": format!("{ENT}:employeeNumber"), "value": "42"}
        ]))
        .unwrap();
        assert_eq!(
            d["name"],
            json!({"givenName": "Bob", "familyName": "Smith"})
        );
        assert_eq!(d["displayName"], "Bob S");
        assert_eq!(d["userName"], "bob.s@x");
        assert_eq!(d["title"], "Boss");
        assert_eq!(d[ENT]["employeeNumber"], "42");
        // Add used for an email change (MSQA-1684621).
        let (d, _) = user_patch(
            json!([{"op": "Add", "path": "emails[type eq \"work\"].value", "value": "new@x"}]),
        )
        .unwrap();
        assert_eq!(
            d["emails"],
            json!([{"value": "new@x", "type": "work", "primary": true}])
        );
        // ... and for an email that did not exist yet.
        let (d, _) = user_patch(
            json!([{"op": "Add", "path": "emails[type eq \"home\"].value", "value": "h@x"}]),
        )
        .unwrap();
        assert_eq!(d["emails"][1], json!({"type": "home", "value": "h@x"}));
        // Manager as a bare string (SDK-686).
        let (d, _) =
            user_patch(json!([{"op": "Add", "path": format!("{ENT}:manager"), "value": "mgr-1"}]))
                .unwrap();
        assert_eq!(d[ENT]["manager"], json!({"value": "mgr-1"}));
        assert_eq!(d[ENT]["employeeNumber"], "1");
        // Older tutorial form: unqualified path with a [{"$ref","value"}] list.
        let (d, _) = user_patch(json!([{"op": "Add", "path": "manager", "value": [{"$ref": "../Users/m2", "value": "m2"}]}]))
            .unwrap();
        assert_eq!(d[ENT]["manager"], json!({"value": "m2"}));
        let (d, _) =
            user_patch(json!([{"op": "replace", "path": "manager", "value": {"value": "m3"}}]))
                .unwrap();
        assert_eq!(d[ENT]["manager"], json!({"value": "m3"}));
        let (d, _) = user_patch(
            json!([{"op": "Add", "path": format!("{ENT}:manager"), "value": "m"},
                                      {"op": "Remove", "path": format!("{ENT}:manager")}]),
        )
        .unwrap();
        assert!(d[ENT].get("manager").is_none());
        let (d, _) = user_patch(
            json!([{"op": "Add", "path": format!("{ENT}:manager.value"), "value": "m4"}]),
        )
        .unwrap();
        assert_eq!(d[ENT]["manager"], json!({"value": "m4"}));
    }

    #[test]
    fn entra_flag_dialect() {
        let (d, _) = user_patch(json!([{"op": "replace", "value": {
            "displayName": "DN", "name.givenName": "G", "name.familyName": "F",
            format!("{ENT}:employeeNumber"): "99",
            "urn:ietf:params:scim:schemas:extension:custom:2.0:User:shoe": "44"
        }}]))
        .unwrap();
        assert_eq!(d["displayName"], "DN");
        assert_eq!(d["name"], json!({"givenName": "G", "familyName": "F"}));
        assert_eq!(d[ENT]["employeeNumber"], "99");
        assert_eq!(
            d["urn:ietf:params:scim:schemas:extension:custom:2.0:User"]["shoe"],
            "44"
        );
        let (d, _) =
            user_patch(json!([{"op": "replace", "path": "active", "value": false}])).unwrap();
        assert_eq!(d["active"], false);
        // Whole extension objects in a path-less value, manager string inside.
        let (d, _) =
            user_patch(json!([{"op": "add", "value": {ENT: {"department": "D", "manager": "m"}}}]))
                .unwrap();
        assert_eq!(
            d[ENT],
            json!({"employeeNumber": "1", "department": "D", "manager": {"value": "m"}})
        );
        let ops = json!([{"op": "replace", "value": {USER_SCHEMA: {"title": "T"}}}]);
        let (d, _) = user_patch(ops).unwrap();
        assert_eq!(d["title"], "T");
        assert!(d.get(USER_SCHEMA).is_none());
        let ops = json!([{"op": "add", "path": format!("{USER_SCHEMA}:nickName"), "value": "N"}]);
        assert_eq!(user_patch(ops).unwrap().0["nickName"], "N");
        let err = user_patch(json!([{"op": "remove", "path": USER_SCHEMA}])).unwrap_err();
        assert_eq!(err.scim_type, Some(ScimType::InvalidPath));
        let (d, _) = user_patch(json!([{"op": "remove", "path": ENT}])).unwrap();
        assert!(d.get(ENT).is_none());
        let (d, _) =
            user_patch(json!([{"op": "remove", "path": format!("{ENT}:employeeNumber")}])).unwrap();
        assert!(d.get(ENT).is_none(), "an emptied extension is dropped");
    }

    fn primaries(v: &Value) -> Vec<&str> {
        v.as_array()
            .unwrap()
            .iter()
            .filter(|e| e["primary"] == true)
            .map(|e| e["value"].as_str().unwrap())
            .collect()
    }

    #[test]
    fn marking_a_value_primary_clears_the_flag_on_the_others() {
        // RFC 7644 §3.5.2: setting "primary" true on a value sets it false on the others.
        // base_user: bob@x (work) is primary.
        let (d, _) = user_patch(json!([{"op": "add", "path": "emails",
            "value": [{"value": "h@x", "type": "home", "primary": true}]}]))
        .unwrap();
        assert_eq!(primaries(&d["emails"]), ["h@x"], "{}", d["emails"]);
        assert_eq!(d["emails"][0]["primary"], false);
        // An existing value marked primary through a value filter (it sits before... or after).
        let (d, _) = user_patch(json!([
            {"op": "add", "path": "emails", "value": [{"value": "h@x", "type": "home"}]},
            {"op": "replace", "path": "emails[type eq \"home\"].primary", "value": true}]))
        .unwrap();
        assert_eq!(primaries(&d["emails"]), ["h@x"], "{}", d["emails"]);
        let (d, _) = user_patch(json!([
            {"op": "replace", "path": "emails", "value": [{"value": "h@x", "type": "home"}, {"value": "bob@x", "type": "work", "primary": true}]},
            {"op": "replace", "path": "emails[type eq \"home\"].primary", "value": "true"}]))
        .unwrap();
        assert_eq!(primaries(&d["emails"]), ["h@x"], "{}", d["emails"]);
        // Okta's path-less replace of the whole attribute.
        let (d, _) = user_patch(json!([{"op": "replace", "value": {"emails": [
            {"value": "a@x", "primary": true}, {"value": "b@x", "primary": true}]}}]))
        .unwrap();
        assert_eq!(primaries(&d["emails"]), ["b@x"], "{}", d["emails"]);
    }

    #[test]
    fn rfc_semantics() {
        let (d, _) = user_patch(json!([{"op": "add", "path": "emails", "value": [{"value": "b@x", "type": "home"}, {"value": "bob@x", "type": "work", "primary": true}]}])).unwrap();
        assert_eq!(d["emails"].as_array().unwrap().len(), 2);
        let (d, _) =
            user_patch(json!([{"op": "replace", "path": "emails", "value": [{"value": "c@x"}]}]))
                .unwrap();
        assert_eq!(d["emails"], json!([{"value": "c@x"}]));
        let (d, _) =
            user_patch(json!([{"op": "remove", "path": "emails[type eq \"work\"]"}])).unwrap();
        assert!(d.get("emails").is_none());
        let (d, _) =
            user_patch(json!([{"op": "remove", "path": "emails[type eq \"home\"]"}])).unwrap();
        assert_eq!(d["emails"].as_array().unwrap().len(), 1);
        let (d, _) =
            user_patch(json!([{"op": "replace", "path": "name", "value": {"givenName": "Rob"}}]))
                .unwrap();
        assert_eq!(
            d["name"],
            json!({"givenName": "Rob", "familyName": "Builder"})
        );
        let ops = json!([{"op": "Remove", "path": "emails[type eq \"work\"].value"}]);
        let (d, _) = user_patch(ops).unwrap();
        assert!(d.get("emails").is_none());
        let ops = json!([{"op": "remove", "path": "emails[type eq \"work\"].primary"}]);
        let (d, _) = user_patch(ops).unwrap();
        assert_eq!(d["emails"], json!([{"value": "bob@x", "type": "work"}]));
        let (d, _) = user_patch(json!([{"op": "remove", "path": "emails.value"}])).unwrap();
        assert!(d.get("emails").is_none());
        let (d, _) = user_patch(json!([{"op": "remove", "path": "name.givenName"}])).unwrap();
        assert_eq!(d["name"], json!({"familyName": "Builder"}));
        let (d, _) = user_patch(json!([{"op": "replace", "path": "title", "value": null}, {"op": "replace", "path": "externalId", "value": null}])).unwrap();
        assert!(d.get("externalId").is_none());
        let (d, _) = user_patch(json!([{"op": "replace", "path": "emails[type eq \"work\"]", "value": {"value": "w@x", "type": "work"}}])).unwrap();
        assert_eq!(d["emails"], json!([{"value": "w@x", "type": "work"}]));
        let (d, _) =
            user_patch(json!([{"op": "replace", "path": "emails.primary", "value": "false"}]))
                .unwrap();
        assert_eq!(d["emails"][0]["primary"], false);
        let mut data = base_user();
        data.insert("customAttr".into(), json!("old"));
        let ops = json!([{"op": "replace", "path": "CUSTOMATTR", "value": "x"}]);
        let ops = parse_patch(patch(ops), 10).unwrap();
        apply_user_patch(&mut data, &ops, &SchemaSet::default()).unwrap();
        assert_eq!(data["customAttr"], "x");
        let (d, _) =
            user_patch(json!([{"op": "add", "path": "USERNAME", "value": "upper@x"}])).unwrap();
        assert_eq!(d["userName"], "upper@x");
    }

    #[test]
    fn user_patch_errors() {
        let cases: Vec<(Value, ScimType)> = vec![
            (
                json!([{"op": "remove", "path": "userName"}]),
                ScimType::Mutability,
            ),
            (
                json!([{"op": "replace", "path": "userName", "value": null}]),
                ScimType::Mutability,
            ),
            (
                json!([{"op": "replace", "path": "id", "value": "x"}]),
                ScimType::Mutability,
            ),
            (
                json!([{"op": "replace", "path": "meta", "value": {}}]),
                ScimType::Mutability,
            ),
            (
                json!([{"op": "replace", "path": "meta.version", "value": "x"}]),
                ScimType::Mutability,
            ),
            (
                json!([{"op": "add", "path": "groups", "value": [{"value": "g"}]}]),
                ScimType::Mutability,
            ),
            (
                json!([{"op": "add", "value": {"groups": [{"value": "g"}]}}]),
                ScimType::Mutability,
            ),
            (
                json!([{"op": "replace", "path": "userName.foo", "value": "x"}]),
                ScimType::InvalidPath,
            ),
            (
                json!([{"op": "replace", "path": "__proto__", "value": "x"}]),
                ScimType::InvalidPath,
            ),
            (
                json!([{"op": "add", "path": "customAttr", "value": "x"}]),
                ScimType::InvalidPath,
            ),
            (
                json!([{"op": "add", "path": "objectClass", "value": "top"}]),
                ScimType::InvalidPath,
            ),
            (
                json!([{"op": "add", "path": "memberOf", "value": "cn=admins"}]),
                ScimType::InvalidPath,
            ),
            (
                json!([{"op": "replace", "path": "userPassword", "value": "x"}]),
                ScimType::InvalidPath,
            ),
            (
                json!([{"op": "replace", "value": {"uidNumber": 0}}]),
                ScimType::InvalidPath,
            ),
            (
                json!([{"op": "replace", "path": format!("{ENT}:uidNumber"), "value": 0}]),
                ScimType::InvalidPath,
            ),
            (
                json!([{"op": "replace", "path": "meta.created", "value": "x"}]),
                ScimType::Mutability,
            ),
            (
                json!([{"op": "replace", "path": "emails[type eq \"work\"].value.foo", "value": "x"}]),
                ScimType::InvalidPath,
            ),
            (
                json!([{"op": "replace", "path": "emails.foo", "value": "x"}]),
                ScimType::InvalidPath,
            ),
            (
                json!([{"op": "replace", "path": "name[givenName eq \"x\"]", "value": "x"}]),
                ScimType::InvalidPath,
            ),
            (
                json!([{"op": "replace", "path": "active[x eq 1]", "value": true}]),
                ScimType::InvalidPath,
            ),
            (
                json!([{"op": "replace", "value": {"__proto__": 1}}]),
                ScimType::InvalidPath,
            ),
            (
                json!([{"op": "replace", "path": "emails[type eq \"work\" and primary eq false].value", "value": "x"}]),
                ScimType::NoTarget,
            ),
            (
                json!([{"op": "replace", "path": "emails[value co \"zzz\"]", "value": {"value": "x"}}]),
                ScimType::NoTarget,
            ),
            (
                json!([{"op": "replace", "path": "active", "value": "maybe"}]),
                ScimType::InvalidValue,
            ),
            (
                json!([{"op": "replace", "path": "name", "value": "x"}]),
                ScimType::InvalidValue,
            ),
            (
                json!([{"op": "replace", "path": "emails", "value": "x"}]),
                ScimType::InvalidValue,
            ),
            (
                json!([{"op": "replace", "path": "password", "value": 1}]),
                ScimType::InvalidValue,
            ),
            (
                json!([{"op": "replace", "path": "manager", "value": 5}]),
                ScimType::InvalidValue,
            ),
            (
                json!([{"op": "replace", "value": "x"}]),
                ScimType::InvalidValue,
            ),
            (
                json!([{"op": "replace", "path": "title", "value": 1}]),
                ScimType::InvalidValue,
            ),
            (
                json!([{"op": "replace", "path": "name.givenName", "value": 1}]),
                ScimType::InvalidValue,
            ),
        ];
        for (ops, want) in cases {
            let err = user_patch(ops.clone()).unwrap_err();
            assert_eq!((err.status, err.scim_type), (400, Some(want)), "{ops}");
        }
    }

    #[test]
    fn hostile_patches_never_panic() {
        let long = "x".repeat(100_000);
        let mut deep = json!(1);
        for _ in 0..40 {
            deep = json!({"a": deep});
        }
        let bodies = vec![
            patch(json!([{"op": "add", "path": "title", "value": long}])),
            patch(json!([{"op": "add", "path": format!("{long}"), "value": 1}])),
            patch(json!([{"op": "add", "path": "title", "value": "\u{0}\u{7}\u{202e}🦀"}])),
            patch(json!([{"op": "add", "path": "x", "value": deep}])),
            patch(
                json!([{"op": "add", "path": "emails[value eq \"\\u0000\"].value", "value": "é"}]),
            ),
            patch(json!([{"op": "add", "value": {"": 1}}])),
            patch(json!([{"op": "add", "value": {"urn:": {}}}])),
            patch(json!([{"op": "add", "value": {"urn:a:User": {"b:c": 1}}}])),
            patch(
                json!([{"op": "add", "path": "members", "value": vec![json!({"value": "u"}); 10_001]}]),
            ),
            patch(
                json!([{"op": "remove", "path": "emails[(((((((((((((((((((((((((((((((((((type pr)))))))))))))))))))))))))))))))))))]"}]),
            ),
        ];
        use ScimType::{InvalidPath, InvalidSyntax, TooMany};
        // What each body must get: a parse error, or the user and group answers. A user patch
        // that succeeds is checked by `user_ok`; a failed apply leaves the data as it was.
        type UserCheck = fn(&Map<String, Value>) -> bool;
        enum Want {
            Parse(ScimType),
            Apply(Result<UserCheck, ScimType>, Option<ScimType>),
        }
        let wants: Vec<Want> = vec![
            Want::Apply(
                Ok(|d| d["title"].as_str().is_some_and(|t| t.len() == 100_000)),
                Some(InvalidPath),
            ),
            Want::Parse(InvalidPath),
            Want::Apply(
                Ok(|d| d["title"] == "\u{0}\u{7}\u{202e}🦀"),
                Some(InvalidPath),
            ),
            Want::Parse(InvalidSyntax),
            // No element matches: `add` through a value filter appends one.
            Want::Apply(
                Ok(|d| {
                    d["emails"]
                        == json!([{"value": "bob@x", "type": "work", "primary": true}, {"value": "é"}])
                }),
                Some(InvalidPath),
            ),
            Want::Apply(Err(InvalidPath), Some(InvalidPath)),
            Want::Apply(Err(InvalidPath), Some(InvalidPath)),
            Want::Apply(Err(InvalidPath), Some(InvalidPath)),
            Want::Parse(TooMany),
            Want::Parse(InvalidPath),
        ];
        assert_eq!(bodies.len(), wants.len());
        for (body, want) in bodies.into_iter().zip(wants) {
            let shown = format!("{body:.200}");
            match (parse_patch(body, 100), want) {
                (Err(e), Want::Parse(t)) => {
                    assert_eq!((e.status, e.scim_type), (400, Some(t)), "{shown}");
                }
                (Ok(ops), Want::Apply(user_want, group_want)) => {
                    let mut data = base_user();
                    match (
                        apply_user_patch(&mut data, &ops, &SchemaSet::default()),
                        user_want,
                    ) {
                        (Ok(_), Ok(check)) => assert!(check(&data), "{shown}: {data:?}"),
                        (Err(e), Err(t)) => {
                            assert_eq!((e.status, e.scim_type), (400, Some(t)), "{shown}");
                            assert_eq!(data, base_user(), "{shown}: a failed patch changed data");
                        }
                        (got, _) => panic!("{shown}: user patch gave {:?}", got.map(|_| ())),
                    }
                    let mut data = Map::new();
                    let got = apply_group_patch(&mut data, &ops);
                    assert_eq!(
                        got.as_ref().err().map(|e| (e.status, e.scim_type)),
                        group_want.map(|t| (400, Some(t))),
                        "{shown}"
                    );
                }
                (got, _) => panic!("{shown}: parse gave {:?}", got.map(|_| ())),
            }
        }
    }

    /// Tiny deterministic PRNG (xorshift64).
    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// The store's side of a [`MemberOp`], on a set of member ids.
    fn apply_member_op(set: &mut BTreeSet<String>, op: &MemberOp) {
        match op {
            MemberOp::Add(list) => set.extend(list.iter().map(|m| m.value.clone())),
            MemberOp::Remove(ids) => ids.iter().for_each(|id| {
                set.remove(id);
            }),
            MemberOp::RemoveMatching(f) => {
                set.retain(|v| !f.matches_element(&json!({"value": v, "type": "User"}), "members"))
            }
            MemberOp::RemoveAll => set.clear(),
            MemberOp::Replace(list) => *set = list.iter().map(|m| m.value.clone()).collect(),
        }
    }

    type ModelStep = Box<dyn Fn(&mut BTreeSet<String>)>;

    /// Random member operations in all three dialects, checked against a BTreeSet model.
    #[test]
    fn random_member_ops_match_model() {
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let mut model = BTreeSet::new();
        let mut actual = BTreeSet::new();
        for round in 0..2_000 {
            let ids: Vec<String> = (0..rng.below(4))
                .map(|_| format!("U{}", rng.below(12)))
                .collect();
            let list: Vec<Value> = ids.iter().map(|id| json!({"value": id})).collect();
            let first = ids.first().cloned().unwrap_or_else(|| "U0".into());
            let (op, expect): (Value, ModelStep) = match rng.below(9) {
                0 => (json!({"op": "add", "path": "members", "value": list}), {
                    let ids = ids.clone();
                    Box::new(move |s| s.extend(ids.iter().cloned()))
                }),
                1 => (
                    json!({"op": "Add", "path": "members", "value": list.iter().map(|v| json!({"$ref": null, "value": v["value"]})).collect::<Vec<_>>()}),
                    {
                        let ids = ids.clone();
                        Box::new(move |s| s.extend(ids.iter().cloned()))
                    },
                ),
                2 => (json!({"op": "Remove", "path": "members", "value": list}), {
                    let ids = ids.clone();
                    Box::new(move |s| {
                        ids.iter().for_each(|i| {
                            s.remove(i);
                        })
                    })
                }),
                3 => (
                    json!({"op": "remove", "path": format!("members[value eq \"{first}\"]")}),
                    {
                        let first = first.clone();
                        Box::new(move |s| {
                            s.remove(&first);
                        })
                    },
                ),
                4 => (
                    json!({"op": "replace", "path": "members", "value": list}),
                    {
                        let ids = ids.clone();
                        Box::new(move |s| *s = ids.iter().cloned().collect())
                    },
                ),
                5 => (
                    json!({"op": "remove", "path": "members"}),
                    Box::new(|s| s.clear()),
                ),
                6 => (
                    json!({"op": "add", "value": {"id": "g", "members": list}}),
                    {
                        let ids = ids.clone();
                        Box::new(move |s| s.extend(ids.iter().cloned()))
                    },
                ),
                7 => (
                    json!({"op": "remove", "path": format!("members[value sw \"{first}\"]")}),
                    {
                        let first = first.clone();
                        Box::new(move |s| s.retain(|v| !v.starts_with(&first)))
                    },
                ),
                _ => (
                    json!({"op": "replace", "value": {"displayName": format!("G{round}"), "members": list}}),
                    {
                        let ids = ids.clone();
                        Box::new(move |s| *s = ids.iter().cloned().collect())
                    },
                ),
            };
            expect(&mut model);
            let (member_ops, data) = group_ops(json!([op])).unwrap_or_else(|e| panic!("{op}: {e}"));
            assert!(data.contains_key("displayName"));
            for mop in &member_ops {
                apply_member_op(&mut actual, mop);
            }
            assert_eq!(actual, model, "round {round}: {op}");
        }
        assert!(model.len() < 13);
    }
}
