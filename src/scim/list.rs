//! List and query parameters (RFC 7644 §3.4.2): `filter`, `startIndex`, `count`, `attributes`,
//! `excludedAttributes`, the `ListResponse` envelope and attribute projection.
//!
//! Owns query parsing, projection and sort keys of rendered resources (`sortBy` on
//! [`SORTABLE`]); paging of unsorted lists is done by the store. No I/O.

use crate::scim::error::ScimError;
use crate::scim::filter::{parse_filter, Filter, FilterLimits};
use crate::scim::resource::is_urn;
use crate::scim::schema::{SchemaSet, GROUP_SCHEMA, USER_SCHEMA};
use serde_json::{Map, Value};

/// A validated list query.
#[derive(Debug, Clone)]
pub struct ListQuery {
    /// The parsed `filter`, if any.
    pub filter: Option<Filter>,
    /// 1-based, at least 1 (RFC 7644: values below 1 are read as 1).
    pub start_index: u64,
    /// Page size, capped at `max_count`; 0 means totals only.
    pub count: u64,
    /// `attributes` / `excludedAttributes`.
    pub attributes: AttrSelection,
    /// `sortBy` / `sortOrder`, when asked for.
    pub sort: Option<Sort>,
}

/// The attributes `sortBy` accepts (RFC 7644 §3.4.2.3), in their schema spelling;
/// `urn:...:core:2.0:User:`-qualified spellings are accepted too.
pub const SORTABLE: &[&str] = &[
    "userName",
    "displayName",
    "name.formatted",
    "name.familyName",
    "name.givenName",
    "name.middleName",
    "name.honorificPrefix",
    "name.honorificSuffix",
    "emails.value",
    "meta.created",
    "meta.lastModified",
];

/// A validated sort request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sort {
    /// One of [`SORTABLE`].
    pub by: &'static str,
    /// `sortOrder=descending`.
    pub descending: bool,
}

impl Sort {
    /// The value a rendered resource sorts by: strings folded as the filter folds them
    /// (userName, displayName, name.* and emails.value are caseExact false), the primary email
    /// or else the first (RFC 7644 §3.4.2.3), timestamps as rendered (one fixed-width UTC
    /// format, so their text order is their time order). `None`: unassigned.
    pub fn key(&self, resource: &Value) -> Option<String> {
        let get = |v: &Value, k: &str| crate::scim::filter::get_ci(v, k).cloned();
        let value = match self.by.split_once('.') {
            None => get(resource, self.by),
            Some(("emails", sub)) => {
                let items = get(resource, "emails")?;
                let items = items.as_array()?;
                let chosen = items
                    .iter()
                    .find(|e| get(e, "primary") == Some(Value::Bool(true)))
                    .or_else(|| items.first())?;
                get(chosen, sub)
            }
            Some((top, sub)) => get(&get(resource, top)?, sub),
        }?;
        let text = value.as_str()?;
        Some(if self.by.starts_with("meta.") {
            text.to_string()
        } else {
            crate::scim::filter::fold(text)
        })
    }

    /// Sort `items` (in creation order) by their keys: stable, so equal keys stay in
    /// creation order in both directions; unassigned values last when ascending and first
    /// when descending (RFC 7644 §3.4.2.3).
    pub fn sort<T>(&self, items: &mut [(Option<String>, T)]) {
        items.sort_by(|(a, _), (b, _)| {
            let ord = match (a, b) {
                (None, None) => std::cmp::Ordering::Equal,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (Some(_), None) => std::cmp::Ordering::Less,
                (Some(a), Some(b)) => a.cmp(b),
            };
            if self.descending {
                ord.reverse()
            } else {
                ord
            }
        });
    }
}

/// `sortBy` and `sortOrder` as a [`Sort`].
fn parse_sort(by: Option<&str>, order: Option<&str>) -> Result<Option<Sort>, ScimError> {
    let descending = match order.map(str::trim) {
        None | Some("") => false,
        Some(o) if o.eq_ignore_ascii_case("ascending") => false,
        Some(o) if o.eq_ignore_ascii_case("descending") => true,
        Some(_) => {
            return Err(ScimError::invalid_value(
                "sortOrder must be ascending or descending",
            ))
        }
    };
    let Some(by) = by.map(str::trim).filter(|b| !b.is_empty()) else {
        return Ok(None);
    };
    let lowered = by.to_ascii_lowercase();
    let name = strip_core(&lowered);
    let by = SORTABLE
        .iter()
        .find(|s| s.eq_ignore_ascii_case(name))
        .ok_or_else(|| {
            ScimError::invalid_value(format!("sortBy supports {} only", SORTABLE.join(", ")))
        })?;
    Ok(Some(Sort { by, descending }))
}

/// `attributes` / `excludedAttributes` selection.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AttrSelection {
    /// Lower-cased attribute paths (URN-qualified or not).
    pub attributes: Vec<String>,
    /// Lower-cased `excludedAttributes` paths.
    pub excluded: Vec<String>,
}

impl AttrSelection {
    /// Whether `members` (on groups) or `groups` (on users) must be loaded at all.
    /// `attr` is a top-level core attribute name, compared case-insensitively.
    pub fn wants(&self, attr: &str) -> bool {
        let attr = attr.to_ascii_lowercase();
        let selected = |e: &String| {
            let lowered = e.to_ascii_lowercase();
            let e = strip_core(&lowered);
            e == attr
                || e.strip_prefix(attr.as_str())
                    .is_some_and(|r| r.starts_with(['.', '[']))
        };
        if !self.attributes.is_empty() && !self.attributes.iter().any(selected) {
            return false;
        }
        !self
            .excluded
            .iter()
            .any(|e| strip_core(&e.to_ascii_lowercase()) == attr)
    }
}

/// Parse list parameters from decoded query pairs (`filter`, `startIndex`, `count`,
/// `attributes`, `excludedAttributes`, `sortBy`, `sortOrder`); unknown parameters are ignored.
/// Without `sortBy` the order is the stable creation order. An empty `filter` means no filter;
/// a missing `count` means `max_count`. Whether the filter's attributes exist is checked by
/// the caller, who knows the resource type (`schema::check_filter`).
///
/// # Errors
/// 400 `invalidFilter` for a bad filter, 400 `invalidValue` for a non-integer `startIndex` or
/// `count`, a `sortBy` outside [`SORTABLE`] or a `sortOrder` other than ascending/descending.
pub fn parse_list_query(
    pairs: &[(String, String)],
    limits: FilterLimits,
    max_count: u64,
) -> Result<ListQuery, ScimError> {
    let mut query = ListQuery {
        filter: None,
        start_index: 1,
        count: max_count,
        attributes: AttrSelection::default(),
        sort: None,
    };
    let (mut sort_by, mut sort_order) = (None, None);
    for (key, value) in pairs {
        match key.to_ascii_lowercase().as_str() {
            "filter" if value.trim().is_empty() => query.filter = None,
            "filter" => query.filter = Some(parse_filter(value, limits)?),
            // RFC 7644 §3.4.2.4: startIndex < 1 is read as 1; a negative count as 0.
            "startindex" => {
                query.start_index = u64::try_from(parse_int(value, "startIndex")?)
                    .unwrap_or(1)
                    .max(1)
            }
            "count" => {
                query.count = u64::try_from(parse_int(value, "count")?)
                    .unwrap_or(0)
                    .min(max_count)
            }
            "attributes" => query.attributes.attributes = split_list(value),
            "excludedattributes" => query.attributes.excluded = split_list(value),
            "sortby" => sort_by = Some(value.as_str()),
            "sortorder" => sort_order = Some(value.as_str()),
            _ => {}
        }
    }
    query.sort = parse_sort(sort_by, sort_order)?;
    Ok(query)
}

/// An integer parameter; out-of-range integers saturate.
fn parse_int(value: &str, name: &str) -> Result<i64, ScimError> {
    let v = value.trim();
    if let Ok(n) = v.parse::<i64>() {
        return Ok(n);
    }
    let digits = v.strip_prefix(['-', '+']).unwrap_or(v);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(if v.starts_with('-') {
            i64::MIN
        } else {
            i64::MAX
        });
    }
    Err(ScimError::invalid_value(format!(
        "{name} must be an integer"
    )))
}

fn split_list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Drop a core schema URN prefix: `urn:...:core:2.0:user:username` is `username`.
fn strip_core(entry: &str) -> &str {
    for core in [USER_SCHEMA, GROUP_SCHEMA] {
        let stripped = entry
            .get(..core.len())
            .filter(|p| p.eq_ignore_ascii_case(core))
            .and_then(|_| entry.get(core.len()..))
            .and_then(|r| r.strip_prefix(':'));
        if let Some(rest) = stripped {
            return rest;
        }
    }
    entry
}

/// Which key of `obj` an entry names, and which of its sub-attributes (None: all of it).
/// Extension attributes are `urn:...:attr[.sub]`; within an extension only `attr` counts.
fn resolve_entry(entry: &str, obj: &Map<String, Value>) -> Option<(String, Option<String>)> {
    let lowered = entry.to_ascii_lowercase();
    let entry = strip_core(&lowered);
    if is_urn(entry) {
        for key in obj.keys().filter(|k| is_urn(k)) {
            let lower = key.to_ascii_lowercase();
            if entry == lower {
                return Some((key.clone(), None));
            }
            if let Some(rest) = entry
                .strip_prefix(lower.as_str())
                .and_then(|r| r.strip_prefix(':'))
            {
                let attr = rest.split(['.', '[']).next().unwrap_or(rest);
                return Some((key.clone(), Some(attr.to_string())));
            }
        }
        return None;
    }
    let (top, sub) = match entry.split_once('.') {
        Some((t, s)) => (t, Some(s.to_string())),
        None => (entry, None),
    };
    let top = top.split('[').next().unwrap_or(top);
    let key = obj.keys().find(|k| k.eq_ignore_ascii_case(top))?.clone();
    Some((key, sub))
}

/// Always returned (RFC 7643 §7 `returned: always`), whatever the selection says.
fn is_always(key: &str) -> bool {
    key.eq_ignore_ascii_case("id") || key.eq_ignore_ascii_case("schemas")
}

/// Keep only the named sub-attributes (case-insensitive) of an object or of each element.
fn keep_subs(value: Value, subs: &[String], keep_resource_type: bool) -> Value {
    let keep = |k: &String| {
        subs.iter().any(|s| s.eq_ignore_ascii_case(k))
            || (keep_resource_type && k.eq_ignore_ascii_case("resourceType"))
    };
    match value {
        Value::Object(o) => Value::Object(o.into_iter().filter(|(k, _)| keep(k)).collect()),
        Value::Array(items) => Value::Array(
            items
                .into_iter()
                .map(|v| match v {
                    Value::Object(o) => {
                        Value::Object(o.into_iter().filter(|(k, _)| keep(k)).collect())
                    }
                    other => other,
                })
                .collect(),
        ),
        other => other,
    }
}

/// Apply `attributes`/`excludedAttributes` to a rendered resource (RFC 7643 §7 `returned`:
/// `id`, `schemas` and `meta.resourceType` always stay).
pub fn project(resource: Value, selection: &AttrSelection) -> Value {
    let Value::Object(mut obj) = resource else {
        return resource;
    };
    if !selection.attributes.is_empty() {
        obj = keep_only(obj, &selection.attributes);
    }
    for entry in &selection.excluded {
        exclude(&mut obj, entry);
    }
    Value::Object(obj)
}

fn keep_only(obj: Map<String, Value>, entries: &[String]) -> Map<String, Value> {
    // key -> None (whole) or the sub-attributes asked for
    let mut wanted: Map<String, Value> = Map::new();
    for (key, sub) in entries.iter().filter_map(|e| resolve_entry(e, &obj)) {
        match (wanted.get_mut(&key), sub) {
            (Some(Value::Null), _) => {}
            (_, None) => {
                wanted.insert(key, Value::Null);
            }
            (Some(Value::Array(subs)), Some(s)) => subs.push(Value::String(s)),
            (_, Some(s)) => {
                wanted.insert(key, Value::Array(vec![Value::String(s)]));
            }
        }
    }
    let is_meta = |k: &str| k.eq_ignore_ascii_case("meta");
    let mut out = Map::new();
    for (k, v) in obj {
        let subs: Option<Vec<String>> = match wanted.get(&k) {
            _ if is_always(&k) => None,
            Some(Value::Null) => None,
            Some(Value::Array(s)) => Some(
                s.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect(),
            ),
            _ if is_meta(&k) => Some(Vec::new()),
            _ => continue,
        };
        let v = match subs {
            None => v,
            Some(subs) => keep_subs(v, &subs, is_meta(&k)),
        };
        out.insert(k, v);
    }
    out
}

fn exclude(obj: &mut Map<String, Value>, entry: &str) {
    let Some((key, sub)) = resolve_entry(entry, obj) else {
        return;
    };
    if is_always(&key) {
        return;
    }
    let is_meta = key.eq_ignore_ascii_case("meta");
    let Some(value) = obj.get_mut(&key) else {
        return;
    };
    let remove_in = |o: &mut Map<String, Value>, sub: &str| {
        let keys: Vec<String> = o
            .keys()
            .filter(|k| {
                k.eq_ignore_ascii_case(sub) && !(is_meta && k.eq_ignore_ascii_case("resourceType"))
            })
            .cloned()
            .collect();
        keys.iter().for_each(|k| {
            o.remove(k);
        });
    };
    match (sub, value) {
        (None, Value::Object(o)) if is_meta => {
            o.retain(|k, _| k.eq_ignore_ascii_case("resourceType"))
        }
        (None, _) => {
            obj.remove(&key);
        }
        (Some(s), Value::Object(o)) => remove_in(o, &s),
        (Some(s), Value::Array(items)) => items
            .iter_mut()
            .filter_map(Value::as_object_mut)
            .for_each(|o| remove_in(o, &s)),
        (Some(_), _) => {}
    }
}

/// RFC 7643 §7 `returned` of declared extension attributes, on a projected resource: `never`
/// ones are dropped, `request` ones kept only when `attributes` names them, `always` ones put
/// back from `full` (the resource before projection) whatever the selection says. An
/// extension left empty goes, with its URN in `schemas`.
pub fn apply_returned(
    full: &Value,
    projected: &mut Value,
    schemas: &SchemaSet,
    sel: &AttrSelection,
) {
    let Some(obj) = projected.as_object_mut() else {
        return;
    };
    for (urn, defs) in &schemas.extension_attributes {
        let named = |name: &str| {
            let whole = urn.to_ascii_lowercase();
            let attr = format!("{whole}:{}", name.to_ascii_lowercase());
            sel.attributes
                .iter()
                .any(|a| *a == attr || a.starts_with(&format!("{attr}.")))
        };
        let key = obj.keys().find(|k| k.eq_ignore_ascii_case(urn)).cloned();
        for d in defs {
            let hide = match d.returned.as_str() {
                "never" => true,
                "request" => !named(&d.name),
                _ => false,
            };
            if hide {
                if let Some(ext) = key
                    .as_ref()
                    .and_then(|k| obj.get_mut(k))
                    .and_then(Value::as_object_mut)
                {
                    ext.retain(|k, _| !k.eq_ignore_ascii_case(&d.name));
                }
            } else if d.returned == "always" {
                let value = full
                    .as_object()
                    .and_then(|f| f.iter().find(|(k, _)| k.eq_ignore_ascii_case(urn)))
                    .and_then(|(_, e)| e.get(&d.name))
                    .cloned();
                if let Some(v) = value {
                    let k = key.clone().unwrap_or_else(|| urn.clone());
                    if let Some(ext) = obj
                        .entry(k)
                        .or_insert_with(|| Value::Object(Map::new()))
                        .as_object_mut()
                    {
                        ext.insert(d.name.clone(), v);
                    }
                }
            }
        }
        let empty = obj
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(urn))
            .is_some_and(|(_, v)| v.as_object().is_some_and(Map::is_empty));
        if empty {
            obj.retain(|k, _| !k.eq_ignore_ascii_case(urn));
        }
        let present = obj.keys().any(|k| k.eq_ignore_ascii_case(urn));
        if let Some(Value::Array(list)) = obj.get_mut("schemas") {
            let listed = list
                .iter()
                .any(|s| s.as_str().is_some_and(|s| s.eq_ignore_ascii_case(urn)));
            if !present {
                list.retain(|s| !s.as_str().is_some_and(|s| s.eq_ignore_ascii_case(urn)));
            } else if !listed {
                list.push(Value::String(urn.clone()));
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scim::error::ScimType;
    use crate::scim::schema::ENTERPRISE_USER;
    use serde_json::json;

    fn q(pairs: &[(&str, &str)]) -> Result<ListQuery, ScimError> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        parse_list_query(&pairs, FilterLimits::default(), 100)
    }

    #[test]
    fn okta_and_entra_queries() {
        let query = q(&[("startIndex", "1"), ("count", "2")]).unwrap();
        assert_eq!((query.start_index, query.count), (1, 2));
        assert!(query.filter.is_none());
        let query = q(&[
            ("filter", "userName eq \"test.user@okta.local\""),
            ("startIndex", "1"),
            ("count", "100"),
        ])
        .unwrap();
        assert!(query.filter.is_some());
        let query = q(&[
            ("excludedAttributes", "members"),
            ("filter", "displayName eq \"G\""),
        ])
        .unwrap();
        assert!(!query.attributes.wants("members"));
        assert!(query.attributes.wants("displayName"));
        assert_eq!(query.count, 100);
    }

    #[test]
    fn numbers_are_clamped_or_refused() {
        assert_eq!(q(&[("startIndex", "0")]).unwrap().start_index, 1);
        assert_eq!(q(&[("startIndex", "-5")]).unwrap().start_index, 1);
        assert_eq!(q(&[("count", "-1")]).unwrap().count, 0);
        assert_eq!(q(&[("count", "1000")]).unwrap().count, 100);
        assert_eq!(
            q(&[("count", "99999999999999999999999")]).unwrap().count,
            100
        );
        assert_eq!(
            q(&[("startIndex", "99999999999999999999999")])
                .unwrap()
                .start_index,
            i64::MAX as u64
        );
        for (k, v) in [
            ("startIndex", "x"),
            ("count", "1.5"),
            ("count", ""),
            ("startIndex", "--1"),
        ] {
            assert_eq!(
                q(&[(k, v)]).unwrap_err().scim_type,
                Some(ScimType::InvalidValue),
                "{k}={v}"
            );
        }
        let err = q(&[("filter", "TEST@EXAMPLE.COM")]).unwrap_err();
        assert_eq!(err.scim_type, Some(ScimType::InvalidFilter));
        let sorted = q(&[
            (
                "sortBy",
                "urn:ietf:params:scim:schemas:core:2.0:User:USERNAME",
            ),
            ("sortOrder", "descending"),
            ("unknown", "x"),
        ])
        .unwrap();
        assert_eq!(
            sorted.sort,
            Some(Sort {
                by: "userName",
                descending: true
            })
        );
        assert_eq!(q(&[("sortOrder", "descending")]).unwrap().sort, None);
        for (k, v) in [("sortBy", "title"), ("sortOrder", "down")] {
            assert_eq!(
                q(&[("sortBy", "userName"), (k, v)]).unwrap_err().scim_type,
                Some(ScimType::InvalidValue),
                "{k}={v}"
            );
        }
    }

    #[test]
    fn sort_keys_and_order() {
        let by = |b: &'static str, descending| Sort { by: b, descending };
        let u = json!({"userName": "Bob", "name": {"givenName": "Zoë"},
            "emails": [{"value": "B@x"}, {"value": "A@x", "primary": true}],
            "meta": {"created": "2026-01-01T00:00:00.000Z"}});
        assert_eq!(by("userName", false).key(&u).as_deref(), Some("bob"));
        assert_eq!(by("name.givenName", false).key(&u).as_deref(), Some("zoë"));
        assert_eq!(by("emails.value", false).key(&u).as_deref(), Some("a@x"));
        assert_eq!(
            by("meta.created", false).key(&u).as_deref(),
            Some("2026-01-01T00:00:00.000Z")
        );
        assert_eq!(by("displayName", false).key(&u), None);
        let first = json!({"emails": [{"value": "C@x"}, {"value": "d@x"}]});
        assert_eq!(
            by("emails.value", false).key(&first).as_deref(),
            Some("c@x")
        );
        let mut items = vec![
            (Some("b".to_string()), 1),
            (None, 2),
            (Some("a".to_string()), 3),
            (Some("b".to_string()), 4),
        ];
        by("userName", false).sort(&mut items);
        assert_eq!(items.iter().map(|i| i.1).collect::<Vec<_>>(), [3, 1, 4, 2]);
        by("userName", true).sort(&mut items);
        assert_eq!(items.iter().map(|i| i.1).collect::<Vec<_>>(), [2, 1, 4, 3]);
    }

    #[test]
    fn declared_returned_never_request_and_always() {
        use crate::scim::schema::ExtensionAttr;
        let urn = "urn:x:ext:2.0:User";
        let def = |name: &str, returned: &str| ExtensionAttr {
            name: name.into(),
            ty: "string".into(),
            multi_valued: false,
            case_exact: false,
            mutability: "readWrite".into(),
            returned: returned.into(),
        };
        let set = SchemaSet::with_attributes(
            vec![urn.into()],
            vec![(
                urn.into(),
                vec![
                    def("pin", "never"),
                    def("notes", "request"),
                    def("tag", "always"),
                    def("plain", "default"),
                ],
            )],
        );
        let full = json!({"schemas": [USER_SCHEMA, urn], "id": "1", "userName": "u",
            urn: {"pin": "1", "notes": "n", "tag": "t", "plain": "p"}});
        let run = |attributes: &str| {
            let sel = AttrSelection {
                attributes: split_list(attributes),
                excluded: vec![],
            };
            let mut out = project(full.clone(), &sel);
            apply_returned(&full, &mut out, &set, &sel);
            out
        };
        assert_eq!(run("")[urn], json!({"tag": "t", "plain": "p"}));
        assert_eq!(
            run(&format!("{urn}:notes"))[urn],
            json!({"notes": "n", "tag": "t"})
        );
        let only = run("userName");
        assert_eq!(only[urn], json!({"tag": "t"}), "always comes back");
        assert_eq!(only["schemas"], json!([USER_SCHEMA, urn]));
        let hidden = json!({"schemas": [USER_SCHEMA, urn], "id": "1", urn: {"pin": "1"}});
        let mut out = hidden.clone();
        apply_returned(&hidden, &mut out, &set, &AttrSelection::default());
        assert_eq!(
            out,
            json!({"schemas": [USER_SCHEMA], "id": "1"}),
            "an emptied extension goes"
        );
    }

    #[test]
    fn wants() {
        let sel = AttrSelection {
            attributes: vec!["username".into(), "members.value".into()],
            excluded: vec![],
        };
        assert!(sel.wants("members"));
        assert!(sel.wants("userName"));
        assert!(!sel.wants("groups"));
        let sel = AttrSelection {
            attributes: vec![],
            excluded: vec!["urn:ietf:params:scim:schemas:core:2.0:user:groups".into()],
        };
        assert!(!sel.wants("groups"));
        assert!(AttrSelection::default().wants("members"));
    }

    fn user() -> Value {
        json!({"schemas": ["s"], "id": "1", "userName": "u", "name": {"givenName": "g", "familyName": "f"},
            "emails": [{"value": "a@x", "type": "work"}], "active": true,
            ENTERPRISE_USER: {"department": "D", "manager": {"value": "m"}},
            "meta": {"resourceType": "User", "version": "W/\"1\""}})
    }

    #[test]
    fn project_attributes() {
        let sel = AttrSelection {
            attributes: split_list(&format!(
                "userName,name.givenName,emails.value,{}:manager.value",
                ENTERPRISE_USER
            )),
            excluded: vec![],
        };
        let out = project(user(), &sel);
        assert_eq!(
            out,
            json!({"schemas": ["s"], "id": "1", "userName": "u", "name": {"givenName": "g"},
                "emails": [{"value": "a@x"}], ENTERPRISE_USER: {"manager": {"value": "m"}},
                "meta": {"resourceType": "User"}})
        );
        let sel = AttrSelection {
            attributes: vec![ENTERPRISE_USER.to_ascii_lowercase()],
            excluded: vec![],
        };
        assert_eq!(project(user(), &sel)[ENTERPRISE_USER]["department"], "D");
        let sel = AttrSelection {
            attributes: vec!["urn:ietf:params:scim:schemas:core:2.0:user:active".into()],
            excluded: vec![],
        };
        let out = project(user(), &sel);
        assert_eq!(out["active"], true);
        assert!(out.get("userName").is_none());
    }

    #[test]
    fn project_excluded() {
        let sel = AttrSelection {
            attributes: vec![],
            excluded: split_list("emails, name.familyName, id, meta, schemas, nosuch, urn:ietf:params:scim:schemas:extension:enterprise:2.0:user:department"),
        };
        let out = project(user(), &sel);
        assert!(out.get("emails").is_none());
        assert_eq!(out["name"], json!({"givenName": "g"}));
        assert_eq!(out["id"], "1");
        assert_eq!(out["schemas"], json!(["s"]));
        assert_eq!(out["meta"], json!({"resourceType": "User"}));
        assert_eq!(out[ENTERPRISE_USER], json!({"manager": {"value": "m"}}));
        assert_eq!(project(json!("x"), &sel), json!("x"));
    }
}
