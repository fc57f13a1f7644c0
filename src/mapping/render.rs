//! Rendering a SCIM resource (rendered JSON, exactly as GET returns it) into an [`Entry`]
//! with a compiled mapping. Every value substituted into a DN goes through
//! `ldap3::dn_escape`. Pure: references are resolved by the caller's function.

use super::compile::{CompiledTarget, KindMap, Part, Rule, Source, Template, Transform};
use super::Entry;
use crate::bookkeeping::Bookkeeping;
use crate::config::target::{MemberValue, RefBy};
use serde_json::Value;
use std::collections::BTreeMap;

/// A resource that cannot be rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    /// A DN template variable has no value in the resource.
    #[error("the DN template needs {{{variable}}}, which has no value")]
    MissingDnValue {
        /// The variable, as written in the template.
        variable: String,
    },
    /// A SQL target's key rule has no value in the resource.
    #[error("the key rule {rule:?} has no value")]
    MissingKey {
        /// The key rule, as written in the config.
        rule: String,
    },
    /// Groups are rendered but the target maps no groups.
    #[error("this target does not map groups")]
    NoGroupMapping,
}

impl CompiledTarget {
    /// Render a user. `refs(by, value)` returns the DN of the referenced user in this target,
    /// or `None` while that user does not exist there (the attribute is then left out).
    ///
    /// # Errors
    /// [`MapError::MissingDnValue`] when the DN cannot be built.
    pub fn render_user(
        &self,
        user: &Value,
        refs: &dyn Fn(RefBy, &str) -> Option<String>,
    ) -> Result<Entry, MapError> {
        render(&self.users, user, refs)
    }

    /// Render a group (without members: those are the reconciler's `Desired::members`).
    ///
    /// # Errors
    /// [`MapError::NoGroupMapping`] or [`MapError::MissingDnValue`].
    pub fn render_group(&self, group: &Value) -> Result<Entry, MapError> {
        let map = self.groups.as_ref().ok_or(MapError::NoGroupMapping)?;
        render(map, group, &|_, _| None)
    }

    /// The (by, value) pairs the user's reference rules need resolved, deduplicated.
    #[must_use]
    pub fn references(&self, user: &Value) -> Vec<(RefBy, String)> {
        let mut out: Vec<(RefBy, String)> = Vec::new();
        for (_, rule) in &self.users.rules {
            if let Rule::Reference { path, by, .. } = rule {
                for v in path.eval(user) {
                    if !out.iter().any(|(b, x)| b == by && *x == v) {
                        out.push((*by, v));
                    }
                }
            }
        }
        out
    }

    /// A description of the user reference rules (path and kind of each, in config order),
    /// empty when there are none: the reconciler rebuilds its reference index when it changes.
    #[must_use]
    pub fn reference_rules(&self) -> String {
        let mut out = String::new();
        for (attr, rule) in &self.users.rules {
            if let Rule::Reference { path, by, .. } = rule {
                out.push_str(&format!("{attr:?}={path:?}/{by:?};"));
            }
        }
        out
    }

    /// The DNs of the role groups (`[[targets.users.role_groups]]`) whose role value the user
    /// has in `roles[].value` (compared case-insensitively), in config order.
    #[must_use]
    pub fn role_groups(&self, user: &Value) -> Vec<String> {
        let roles: Vec<String> = super::path::Path::parse("roles.value")
            .map(|p| p.eval(user))
            .unwrap_or_default()
            .into_iter()
            .map(|r| r.to_lowercase())
            .collect();
        let mut out: Vec<String> = Vec::new();
        for (value, group) in &self.role_groups {
            if roles.contains(&value.to_lowercase()) && !out.contains(group) {
                out.push(group.clone());
            }
        }
        out
    }

    /// The value to put in a group's `Desired::members` for a user, from the user's
    /// `target_state` in this target (`key` = its DN, `extra` = the recorded bookkeeping):
    /// the DN, or for `member_value = "uid"` the `uid` the LDAP target recorded in `extra`.
    #[must_use]
    pub fn member_key(&self, key: &str, extra: Option<&Bookkeeping>) -> Option<String> {
        match self.member_value {
            MemberValue::Dn => Some(key.to_owned()),
            MemberValue::Uid => extra.and_then(|e| e.uid.clone()),
        }
    }
}

fn render(
    map: &KindMap,
    doc: &Value,
    refs: &dyn Fn(RefBy, &str) -> Option<String>,
) -> Result<Entry, MapError> {
    let mut dn = String::new();
    let mut rdn_value: Option<String> = None;
    for part in &map.dn.parts {
        match part {
            Part::Literal(l) => dn.push_str(l),
            Part::Var(p) => {
                let v = p
                    .eval(doc)
                    .into_iter()
                    .next()
                    .ok_or_else(|| MapError::MissingDnValue {
                        variable: p.as_str().to_owned(),
                    })?;
                if rdn_value.is_none() {
                    rdn_value = Some(v.clone());
                }
                dn.push_str(&ldap3::dn_escape(v.as_str()));
            }
        }
    }
    if let Some((text, rule)) = &map.key_rule {
        dn = eval_rule(rule, doc, refs)
            .into_iter()
            .find(|v| !v.is_empty())
            .ok_or_else(|| MapError::MissingKey { rule: text.clone() })?;
    }
    let mut attrs: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, rule) in &map.rules {
        attrs.insert(name.clone(), dedup(eval_rule(rule, doc, refs)));
    }
    // LDAP requires the RDN value among the naming attribute's values.
    if let Some(rv) = rdn_value.filter(|_| map.key_rule.is_none()) {
        if is_rdn_whole_value(&map.dn) {
            let vals = attrs.entry(map.rdn_attr.clone()).or_default();
            if !vals.iter().any(|v| v.to_lowercase() == rv.to_lowercase()) {
                vals.insert(0, rv);
            }
        }
    }
    Ok(Entry {
        key: dn,
        object_classes: map.object_classes.clone(),
        attrs,
    })
}

fn eval_rule(
    rule: &Rule,
    doc: &Value,
    refs: &dyn Fn(RefBy, &str) -> Option<String>,
) -> Vec<String> {
    match rule {
        Rule::Constant(v) => v.clone(),
        Rule::Expr {
            source,
            transforms,
            default,
        } => {
            let v = apply_transforms(eval_source(source, doc), transforms);
            if v.is_empty() {
                default.clone()
            } else {
                v
            }
        }
        Rule::Reference {
            path,
            by,
            transforms,
        } => {
            let resolved = path.eval(doc).iter().filter_map(|v| refs(*by, v)).collect();
            apply_transforms(resolved, transforms)
        }
    }
}

/// True when the first RDN's value is exactly one variable (`uid={userName},...`), so the
/// variable's value is the naming value.
fn is_rdn_whole_value(t: &Template) -> bool {
    matches!(
        (t.parts.first(), t.parts.get(1), t.parts.get(2)),
        (Some(Part::Literal(a)), Some(Part::Var(_)), Some(Part::Literal(b)))
            if a.ends_with('=') && !a.contains(',') && !a.contains('+') && b.starts_with(',')
    )
}

fn eval_source(source: &Source, doc: &Value) -> Vec<String> {
    match source {
        Source::Path(p) => p.eval(doc),
        Source::Template(t) => {
            let mut out = String::new();
            for part in &t.parts {
                match part {
                    Part::Literal(l) => out.push_str(l),
                    // A template with a missing variable renders nothing (or the default).
                    Part::Var(p) => match p.eval(doc).into_iter().next() {
                        Some(v) => out.push_str(&v),
                        None => return Vec::new(),
                    },
                }
            }
            vec![out]
        }
    }
}

fn apply_transforms(mut values: Vec<String>, transforms: &[Transform]) -> Vec<String> {
    for t in transforms {
        values = match t {
            Transform::Lower => values.into_iter().map(|v| v.to_lowercase()).collect(),
            Transform::Upper => values.into_iter().map(|v| v.to_uppercase()).collect(),
            Transform::Trim => values.into_iter().map(|v| v.trim().to_owned()).collect(),
            Transform::First => values.into_iter().take(1).collect(),
        };
    }
    values
}

/// Drop empty values and case-insensitive duplicates (LDAP rejects both), keeping order.
fn dedup(values: Vec<String>) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    values
        .into_iter()
        .filter(|v| !v.is_empty() && seen.insert(v.to_lowercase()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::target::RawTarget;
    use serde_json::json;

    fn compiled(attrs: &str) -> CompiledTarget {
        let text = format!(
            r#"
name = "corp"
type = "ldap"
url = "ldap://127.0.0.1"
[users]
dn = "uid={{userName}},ou=People,dc=example,dc=com"
object_classes = ["inetOrgPerson"]
[[users.role_groups]]
value = "admin"
group = "cn=admins,dc=example,dc=com"
[users.attributes]
{attrs}
[groups]
dn = "cn={{displayName}},ou=Groups,dc=example,dc=com"
object_classes = ["groupOfNames"]
member_value = "uid"
"#
        );
        let raw: RawTarget = toml::from_str(&text).unwrap();
        CompiledTarget::compile(&raw, 0).unwrap()
    }

    #[test]
    fn hostile_user_name_is_escaped_in_dn_only() {
        let c = compiled("cn = \"userName\"");
        let e = c
            .render_user(&json!({"userName": " a,b+c=\"d\\<e>;#f "}), &|_, _| None)
            .unwrap();
        assert_eq!(
            e.key,
            r"uid=\20a\2cb\2bc\3d\22d\5c\3ce\3e\3b#f\20,ou=People,dc=example,dc=com"
        );
        assert_eq!(e.attrs["cn"], [" a,b+c=\"d\\<e>;#f "]);
        assert_eq!(e.attrs["uid"], [" a,b+c=\"d\\<e>;#f "]);
        assert!(crate::mapping::dn::parse_dn(&e.key).is_ok());
    }

    #[test]
    fn missing_dn_value_is_an_error() {
        let c = compiled("");
        let err = c.render_user(&json!({}), &|_, _| None).unwrap_err();
        assert_eq!(
            err,
            MapError::MissingDnValue {
                variable: "userName".into()
            }
        );
    }

    #[test]
    fn rules_render_defaults_templates_and_references() {
        let c = compiled(
            r#"cn = "{name.givenName} {name.familyName}"
displayName = { from = "{name.givenName} {name.middleName}", default = "n/a" }
mail = { from = "emails.value", transform = ["lower"] }
manager = { reference = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager.value" }
title = "title""#,
        );
        let u = json!({"userName": "bj", "name": {"givenName": "B", "familyName": "J"},
            "emails": [{"value": "A@X"}, {"value": "a@x"}, {"value": "b@x"}],
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {"manager": {"value": "7"}}});
        assert_eq!(c.references(&u), vec![(RefBy::Id, "7".to_owned())]);
        let e = c
            .render_user(&u, &|by, v| {
                (by == RefBy::Id && v == "7").then(|| "uid=boss".to_owned())
            })
            .unwrap();
        assert_eq!(e.attrs["cn"], ["B J"]);
        assert_eq!(e.attrs["displayname"], ["n/a"]);
        assert_eq!(e.attrs["mail"], ["a@x", "b@x"]);
        assert_eq!(e.attrs["manager"], ["uid=boss"]);
        assert!(e.attrs["title"].is_empty());
        let unresolved = c.render_user(&u, &|_, _| None).unwrap();
        assert!(unresolved.attrs["manager"].is_empty());
    }

    #[test]
    fn roles_and_member_keys() {
        let c = compiled("");
        assert_eq!(
            c.role_groups(&json!({"roles": [{"value": "ADMIN"}, {"value": "x"}]})),
            ["cn=admins,dc=example,dc=com"]
        );
        assert!(c.role_groups(&json!({"roles": "admin-ish"})).is_empty());
        assert_eq!(
            c.member_key("uid=a", Some(&json!({"uid": "a"}).into())),
            Some("a".into())
        );
        assert_eq!(c.member_key("uid=a", None), None);
        let g = c.render_group(&json!({"displayName": "Ops"})).unwrap();
        assert_eq!(g.key, "cn=Ops,ou=Groups,dc=example,dc=com");
        assert_eq!(g.attrs["cn"], ["Ops"]);
    }

    #[test]
    fn sql_keys_are_plain_values_and_missing_keys_are_errors() {
        let raw: RawTarget = toml::from_str(
            "name = \"app\"\ntype = \"sql\"\nurl = \"sqlite:///x.db\"\n[users]\ntable = \"u\"\nkey_column = \"login\"\nkey = { from = \"userName\", transform = [\"lower\"] }\n[users.columns]\nname = \"{name.givenName} {name.familyName}\"\nlogin_copy = \"userName\"\n[groups]\ntable = \"g\"\nkey_column = \"name\"\nkey = \"id\"\n",
        )
        .unwrap();
        let c = CompiledTarget::compile(&raw, 0).unwrap();
        let e = c
            .render_user(
                &json!({"userName": "O'Brien, J=\"x\";--", "name": {"givenName": "A", "familyName": "B"}}),
                &|_, _| None,
            )
            .unwrap();
        assert_eq!(e.key, "o'brien, j=\"x\";--");
        assert_eq!(e.attrs["name"], ["A B"]);
        assert_eq!(e.attrs["login_copy"], ["O'Brien, J=\"x\";--"]);
        assert!(!e.attrs.contains_key("uid"));
        assert_eq!(
            c.render_user(&json!({"name": {"givenName": "A"}}), &|_, _| None)
                .unwrap_err(),
            MapError::MissingKey {
                rule: "userName".into()
            }
        );
        assert_eq!(c.render_group(&json!({"id": "g-1"})).unwrap().key, "g-1");
        assert_eq!(c.member_key("o'brien", None), Some("o'brien".into()));
    }
}
