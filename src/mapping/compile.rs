//! Compiling `[[targets]]` attribute rules into a [`CompiledTarget`]: paths, templates,
//! transforms and DN templates are parsed here, once, and every problem is reported with its
//! full key (`targets[0].users.attributes.cn: unknown transform "lowr"`). Pure: no I/O.

use super::dn::parse_dn;
use super::path::Path;
use super::schema::{Resource, Schemas};
use crate::config::target::{
    ForeignMembers, MemberValue, NestedGroups, RawLdapTarget, RawRule, RawSqlColumn, RawSqlTarget,
    RawTarget, RefBy,
};
use std::collections::BTreeSet;

/// A configuration problem, with the full key it concerns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct ConfigError {
    /// The full key, e.g. `targets[0].users.attributes.cn`.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl ConfigError {
    pub(crate) fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// A template: literal text with `{path}` placeholders (`{{` and `}}` are literal braces).
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    pub(crate) parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Part {
    Literal(String),
    Var(Path),
}

impl Template {
    /// Parse a template.
    ///
    /// # Errors
    /// A description of what is wrong (unbalanced braces, a bad path).
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut chars = text.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            match c {
                '{' if chars.peek().map(|p| p.1) == Some('{') => {
                    chars.next();
                    lit.push('{');
                }
                '}' if chars.peek().map(|p| p.1) == Some('}') => {
                    chars.next();
                    lit.push('}');
                }
                '}' => return Err(format!("unmatched '}}' in template {text:?}")),
                '{' => {
                    let mut in_str = false;
                    let mut end = None;
                    for (j, d) in chars.by_ref() {
                        if d == '"' {
                            in_str = !in_str;
                        } else if d == '}' && !in_str {
                            end = Some(j);
                            break;
                        }
                    }
                    let end = end.ok_or_else(|| format!("unclosed '{{' in template {text:?}"))?;
                    let inner = text.get(i + 1..end).unwrap_or("");
                    let path = Path::parse(inner)
                        .map_err(|e| format!("in template variable {{{inner}}}: {e}"))?;
                    if !lit.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut lit)));
                    }
                    parts.push(Part::Var(path));
                }
                other => lit.push(other),
            }
        }
        if !lit.is_empty() {
            parts.push(Part::Literal(lit));
        }
        Ok(Template { parts })
    }

    fn has_vars(&self) -> bool {
        self.parts.iter().any(|p| matches!(p, Part::Var(_)))
    }
}

/// Where rule values come from.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Source {
    Path(Path),
    Template(Template),
}

/// A value transform.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transform {
    Lower,
    Upper,
    Trim,
    First,
}

/// A compiled attribute rule.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Rule {
    Expr {
        source: Source,
        transforms: Vec<Transform>,
        default: Vec<String>,
    },
    Constant(Vec<String>),
    Reference {
        path: Path,
        by: RefBy,
        transforms: Vec<Transform>,
    },
}

/// The compiled mapping of one resource type (users or groups).
#[derive(Debug, Clone, PartialEq)]
pub struct KindMap {
    /// LDAP: the DN template (empty for SQL targets).
    pub(crate) dn: Template,
    /// SQL: the rule whose first value is the entry's key (`None` for LDAP: the DN is the key).
    pub(crate) key_rule: Option<(String, Rule)>,
    /// The naming attribute of the DN template's first RDN, lower-cased.
    pub(crate) rdn_attr: String,
    pub(crate) object_classes: Vec<String>,
    /// (lower-cased attribute name, rule), sorted by name.
    pub(crate) rules: Vec<(String, Rule)>,
}

impl KindMap {
    /// The lower-cased names of the mapped attributes (the only ones a target may touch).
    #[must_use]
    pub fn attribute_names(&self) -> Vec<String> {
        self.rules.iter().map(|(n, _)| n.clone()).collect()
    }

    /// The object classes of created entries.
    #[must_use]
    pub fn object_classes(&self) -> &[String] {
        &self.object_classes
    }
}

/// One target's compiled mapping. See the module docs of [`crate::mapping`] for the API flow.
#[derive(Debug, Clone, PartialEq)]
pub struct CompiledTarget {
    /// The target's name.
    pub name: String,
    /// The user mapping.
    pub users: KindMap,
    /// The group mapping (groups are not provisioned when `None`).
    pub groups: Option<KindMap>,
    pub(crate) role_groups: Vec<(String, String)>,
    pub(crate) remove_inactive_from_groups: bool,
    pub(crate) member_value: MemberValue,
    pub(crate) foreign_members: ForeignMembers,
    pub(crate) members_fingerprint: String,
    pub(crate) nested: NestedGroups,
}

impl CompiledTarget {
    /// [`CompiledTarget::compile_with`] against the core User and Group schemas and the
    /// enterprise extension only (no declared extension).
    ///
    /// # Errors
    /// Every problem found, each naming its full key.
    pub fn compile(raw: &RawTarget, index: usize) -> Result<CompiledTarget, Vec<ConfigError>> {
        Self::compile_with(raw, index, &Schemas::default())
    }

    /// Compile the `index`th `[[targets]]` entry. Every SCIM path (in rules, templates, DN
    /// templates, keys and references) must name an attribute `schemas` serves. Pure; returns
    /// every problem at once.
    ///
    /// # Errors
    /// Every problem found, each naming its full key.
    pub fn compile_with(
        raw: &RawTarget,
        index: usize,
        schemas: &Schemas,
    ) -> Result<CompiledTarget, Vec<ConfigError>> {
        match raw {
            RawTarget::Ldap(t) => compile_ldap(t, index, schemas),
            RawTarget::Sql(t) => compile_sql(t, index, schemas),
        }
    }

    /// Whether inactive users must be left out of every group's `Desired::members` (the
    /// reconciler's job; `deactivate.remove_from_groups`).
    #[must_use]
    pub fn remove_inactive_from_groups(&self) -> bool {
        self.remove_inactive_from_groups
    }

    /// Whether a group rule or the group DN template names `members` (then a group's entry
    /// depends on its whole membership, and the reconciler never applies member changes
    /// alone). Conservative: any rule whose path spells `members` counts.
    #[must_use]
    pub fn group_renders_members(&self) -> bool {
        self.groups.as_ref().is_some_and(|g| {
            let text = format!("{:?} {:?} {:?}", g.dn, g.key_rule, g.rules).to_ascii_lowercase();
            text.contains("members")
        })
    }

    /// `groups.nested`: what this target does with a group's member groups (the default
    /// already resolved for the member value form).
    #[must_use]
    pub fn nested_groups(&self) -> NestedGroups {
        self.nested
    }

    /// `foreign_members`: what happens to member values of a managed group we did not write.
    #[must_use]
    pub fn foreign_members(&self) -> ForeignMembers {
        self.foreign_members
    }

    /// Where and how member values are written (the LDAP member attribute and value form, the
    /// SQL join table and columns): a group's record of the values we wrote
    /// (`store::members`) holds for this fingerprint only.
    #[must_use]
    pub fn members_fingerprint(&self) -> &str {
        &self.members_fingerprint
    }
}

fn compile_ldap(
    t: &RawLdapTarget,
    index: usize,
    schemas: &Schemas,
) -> Result<CompiledTarget, Vec<ConfigError>> {
    let base = format!("targets[{index}]");
    let mut errors = Vec::new();
    if t.name.trim().is_empty() {
        errors.push(ConfigError::new(
            format!("{base}.name"),
            "must not be empty",
        ));
    }
    let users = compile_kind(
        &format!("{base}.users"),
        &t.users.dn,
        &t.users.object_classes,
        &t.users.attributes,
        Checker::new(schemas, Resource::User),
        &mut errors,
    );
    let groups = t.groups.as_ref().map(|g| {
        compile_kind(
            &format!("{base}.groups"),
            &g.dn,
            &g.object_classes,
            &g.attributes,
            Checker::new(schemas, Resource::Group),
            &mut errors,
        )
    });
    let mut role_groups = Vec::new();
    for (i, rg) in t.users.role_groups.iter().enumerate() {
        let key = format!("{base}.users.role_groups[{i}]");
        if rg.value.is_empty() {
            errors.push(ConfigError::new(
                format!("{key}.value"),
                "must not be empty",
            ));
        }
        match parse_dn(&rg.group) {
            Ok(rdns) if !rdns.is_empty() => role_groups.push((rg.value.clone(), rg.group.clone())),
            Ok(_) => errors.push(ConfigError::new(
                format!("{key}.group"),
                "must not be empty",
            )),
            Err(e) => errors.push(ConfigError::new(format!("{key}.group"), e)),
        }
    }
    let remove_inactive_from_groups = t
        .users
        .deactivate
        .as_ref()
        .is_some_and(|d| d.remove_from_groups);
    let member_value = t
        .groups
        .as_ref()
        .map(|g| g.member_value)
        .unwrap_or_default();
    let nested = match (member_value, t.groups.as_ref().and_then(|g| g.nested)) {
        (MemberValue::Dn, None) => NestedGroups::Member,
        (MemberValue::Uid, None) => NestedGroups::Flatten,
        (MemberValue::Uid, Some(NestedGroups::Member)) => {
            errors.push(ConfigError::new(
                format!("{base}.groups.nested"),
                "\"member\" needs member_value = \"dn\" (a memberUid value cannot name a group); use \"flatten\" or \"refuse\"",
            ));
            NestedGroups::Flatten
        }
        (_, Some(n)) => n,
    };
    match (users, groups) {
        (Some(users), groups) if errors.is_empty() => Ok(CompiledTarget {
            name: t.name.clone(),
            users,
            groups: groups.flatten(),
            role_groups,
            remove_inactive_from_groups,
            member_value,
            foreign_members: t.foreign_members,
            nested,
            members_fingerprint: t.groups.as_ref().map_or_else(String::new, |g| {
                format!(
                    "ldap/{}/{:?}",
                    g.member_attribute.to_ascii_lowercase(),
                    g.member_value
                )
            }),
        }),
        _ => Err(errors),
    }
}

fn compile_kind(
    key: &str,
    dn: &str,
    object_classes: &[String],
    attributes: &std::collections::BTreeMap<String, RawRule>,
    check: Checker<'_>,
    errors: &mut Vec<ConfigError>,
) -> Option<KindMap> {
    let before = errors.len();
    let dn_key = format!("{key}.dn");
    let mut rdn_attr = String::new();
    let dn_template = match Template::parse(dn) {
        Ok(t) => {
            // Validate the static shape by substituting a harmless value for every variable.
            let probe: String = t
                .parts
                .iter()
                .map(|p| match p {
                    Part::Literal(l) => l.as_str(),
                    Part::Var(_) => "x",
                })
                .collect();
            match parse_dn(&probe) {
                Ok(rdns) if rdns.len() >= 2 => {
                    rdn_attr = rdns
                        .first()
                        .and_then(|r| r.first())
                        .map(|(ty, _)| ty.to_ascii_lowercase())
                        .unwrap_or_default();
                }
                Ok(_) => errors.push(ConfigError::new(
                    &dn_key,
                    "needs an RDN and a parent, e.g. uid={userName},ou=People,dc=example,dc=com",
                )),
                Err(e) => errors.push(ConfigError::new(&dn_key, e)),
            }
            if !t.has_vars() {
                errors.push(ConfigError::new(&dn_key, "must contain a {variable}"));
            }
            if let Err(e) = check.template(&t) {
                errors.push(ConfigError::new(&dn_key, e));
            }
            Some(t)
        }
        Err(e) => {
            errors.push(ConfigError::new(&dn_key, e));
            None
        }
    };
    if object_classes.is_empty() {
        errors.push(ConfigError::new(
            format!("{key}.object_classes"),
            "must not be empty",
        ));
    }
    for oc in object_classes {
        if !valid_attr_name(oc) {
            errors.push(ConfigError::new(
                format!("{key}.object_classes"),
                format!("bad object class {oc:?}"),
            ));
        }
    }
    let mut rules = Vec::new();
    let mut seen = BTreeSet::new();
    for (name, raw) in attributes {
        let akey = format!("{key}.attributes.{name}");
        if !valid_attr_name(name) {
            errors.push(ConfigError::new(&akey, "bad attribute name"));
            continue;
        }
        let lower = name.to_ascii_lowercase();
        if lower == "objectclass" {
            errors.push(ConfigError::new(&akey, "use object_classes instead"));
            continue;
        }
        if !seen.insert(lower.clone()) {
            errors.push(ConfigError::new(
                &akey,
                "attribute mapped twice (names are case-insensitive)",
            ));
            continue;
        }
        match compile_rule(raw, check) {
            Ok(rule) => rules.push((lower, rule)),
            Err(msg) => errors.push(ConfigError::new(&akey, msg)),
        }
    }
    if errors.len() > before {
        return None;
    }
    Some(KindMap {
        dn: dn_template?,
        key_rule: None,
        rdn_attr,
        object_classes: object_classes.to_vec(),
        rules,
    })
}

/// SQL targets: the key rule and the column rules use the same compiler as LDAP attributes;
/// the entry's key is the key rule's first value and `attrs` are the lower-cased columns.
/// Identifiers, types and the deactivation options are checked by `targets::sql::Settings`.
fn compile_sql(
    t: &RawSqlTarget,
    index: usize,
    schemas: &Schemas,
) -> Result<CompiledTarget, Vec<ConfigError>> {
    let base = format!("targets[{index}]");
    let mut errors = Vec::new();
    if t.name.trim().is_empty() {
        errors.push(ConfigError::new(
            format!("{base}.name"),
            "must not be empty",
        ));
    }
    let users = compile_sql_kind(
        &format!("{base}.users"),
        &t.users.key,
        &t.users.columns,
        Checker::new(schemas, Resource::User),
        &mut errors,
    );
    let groups = t.groups.as_ref().map(|g| {
        compile_sql_kind(
            &format!("{base}.groups"),
            &g.key,
            &g.columns,
            Checker::new(schemas, Resource::Group),
            &mut errors,
        )
    });
    let remove_inactive_from_groups = t
        .users
        .deactivate
        .as_ref()
        .is_some_and(|d| d.remove_from_groups);
    let nested = match t.groups.as_ref().and_then(|g| g.nested) {
        None | Some(NestedGroups::Flatten) => NestedGroups::Flatten,
        Some(NestedGroups::Refuse) => NestedGroups::Refuse,
        Some(NestedGroups::Member) => {
            errors.push(ConfigError::new(
                format!("{base}.groups.nested"),
                "\"member\" is for LDAP member DNs; a SQL join table holds users: use \"flatten\" or \"refuse\"",
            ));
            NestedGroups::Flatten
        }
    };
    match (users, groups) {
        (Some(users), groups) if errors.is_empty() => Ok(CompiledTarget {
            name: t.name.clone(),
            users,
            groups: groups.flatten(),
            nested,
            role_groups: Vec::new(),
            remove_inactive_from_groups,
            member_value: MemberValue::Dn,
            foreign_members: t.foreign_members,
            members_fingerprint: t
                .groups
                .as_ref()
                .and_then(|g| g.membership.as_ref())
                .map_or_else(String::new, |m| format!("sql/{m:?}")),
        }),
        _ => Err(errors),
    }
}

fn compile_sql_kind(
    key: &str,
    key_rule: &RawSqlColumn,
    columns: &std::collections::BTreeMap<String, RawSqlColumn>,
    check: Checker<'_>,
    errors: &mut Vec<ConfigError>,
) -> Option<KindMap> {
    let before = errors.len();
    let key_text = match key_rule.rule() {
        RawRule::Expr(e) => e,
        RawRule::Table(t) => t.from.unwrap_or_default(),
    };
    let compiled_key = match compile_rule(&key_rule.rule(), check.no_references()) {
        Ok(r @ Rule::Expr { .. }) => Some(r),
        Ok(_) => {
            errors.push(ConfigError::new(
                format!("{key}.key"),
                "the key must come from the resource (a path or template, not a constant)",
            ));
            None
        }
        Err(e) => {
            errors.push(ConfigError::new(format!("{key}.key"), e));
            None
        }
    };
    let mut rules = Vec::new();
    let mut seen = BTreeSet::new();
    for (name, raw) in columns {
        let ckey = format!("{key}.columns.{name}");
        let lower = name.to_ascii_lowercase();
        if !seen.insert(lower.clone()) {
            errors.push(ConfigError::new(
                &ckey,
                "column mapped twice (names are case-insensitive)",
            ));
            continue;
        }
        match compile_rule(&raw.rule(), check) {
            Ok(rule) => rules.push((lower, rule)),
            Err(msg) => errors.push(ConfigError::new(&ckey, msg)),
        }
    }
    if errors.len() > before {
        return None;
    }
    Some(KindMap {
        dn: Template { parts: Vec::new() },
        key_rule: compiled_key.map(|r| (key_text, r)),
        rdn_attr: String::new(),
        object_classes: Vec::new(),
        rules,
    })
}

fn valid_attr_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == ';')
}

/// How paths are checked while compiling one resource type's rules.
#[derive(Debug, Clone, Copy)]
struct Checker<'a> {
    schemas: &'a Schemas,
    resource: Resource,
    allow_references: bool,
}

impl<'a> Checker<'a> {
    fn new(schemas: &'a Schemas, resource: Resource) -> Self {
        Checker {
            schemas,
            resource,
            allow_references: resource == Resource::User,
        }
    }

    fn no_references(self) -> Self {
        Checker {
            allow_references: false,
            ..self
        }
    }

    fn path(self, path: &Path) -> Result<(), String> {
        self.schemas.check(self.resource, path)
    }

    /// Every variable of a template, the first problem reported.
    fn template(self, t: &Template) -> Result<(), String> {
        for part in &t.parts {
            if let Part::Var(p) = part {
                self.path(p)?;
            }
        }
        Ok(())
    }
}

fn compile_source(text: &str, check: Checker<'_>) -> Result<Source, String> {
    if text.contains('{') || text.contains('}') {
        let t = Template::parse(text)?;
        if !t.has_vars() {
            return Err(format!(
                "template {text:?} has no variable; use {{ constant = .. }}"
            ));
        }
        check.template(&t)?;
        Ok(Source::Template(t))
    } else {
        let p = Path::parse(text)?;
        check.path(&p)?;
        Ok(Source::Path(p))
    }
}

fn compile_transforms(names: &[String]) -> Result<Vec<Transform>, String> {
    names
        .iter()
        .map(|n| match n.as_str() {
            "lower" => Ok(Transform::Lower),
            "upper" => Ok(Transform::Upper),
            "trim" => Ok(Transform::Trim),
            "first" => Ok(Transform::First),
            other => Err(format!(
                "unknown transform {other:?} (expected lower, upper, trim or first)"
            )),
        })
        .collect()
}

fn compile_rule(raw: &RawRule, check: Checker<'_>) -> Result<Rule, String> {
    match raw {
        RawRule::Expr(text) => Ok(Rule::Expr {
            source: compile_source(text, check)?,
            transforms: Vec::new(),
            default: Vec::new(),
        }),
        RawRule::Table(t) => {
            let forms = [
                t.from.is_some(),
                t.constant.is_some(),
                t.reference.is_some(),
            ];
            if forms.iter().filter(|f| **f).count() != 1 {
                return Err("a rule table needs exactly one of from, constant, reference".into());
            }
            if let Some(c) = &t.constant {
                if !t.transform.is_empty() || t.default.is_some() || t.by.is_some() {
                    return Err("constant takes no transform, default or by".into());
                }
                let values = c.to_vec();
                if values.iter().any(String::is_empty) {
                    return Err("constant values must not be empty".into());
                }
                return Ok(Rule::Constant(values));
            }
            let transforms = compile_transforms(&t.transform)?;
            if let Some(r) = &t.reference {
                if !check.allow_references {
                    return Err("reference rules are only supported for users".into());
                }
                if t.default.is_some() {
                    return Err("reference takes no default".into());
                }
                let path = Path::parse(r)?;
                check.path(&path)?;
                return Ok(Rule::Reference {
                    path,
                    by: t.by.unwrap_or_default(),
                    transforms,
                });
            }
            if t.by.is_some() {
                return Err("by is only valid with reference".into());
            }
            let from = t.from.as_deref().unwrap_or_default();
            let default = t.default.as_ref().map(|d| d.to_vec()).unwrap_or_default();
            if default.iter().any(String::is_empty) {
                return Err("default values must not be empty".into());
            }
            Ok(Rule::Expr {
                source: compile_source(from, check)?,
                transforms,
                default,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(attrs: &str) -> RawTarget {
        let text = format!(
            r#"
name = "corp"
type = "ldap"
url = "ldap://127.0.0.1"
[users]
dn = "uid={{userName}},ou=People,dc=example,dc=com"
object_classes = ["inetOrgPerson"]
[users.attributes]
{attrs}
"#
        );
        toml::from_str(&text).unwrap()
    }

    fn errors(attrs: &str) -> Vec<String> {
        match CompiledTarget::compile(&target(attrs), 0) {
            Ok(_) => Vec::new(),
            Err(e) => e.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn a_group_rule_naming_members_is_seen_and_the_member_configuration_fingerprinted() {
        let with = |group_attrs: &str, member: &str| {
            let text = format!(
                "name = \"corp\"\ntype = \"ldap\"\nurl = \"ldap://127.0.0.1\"\n\
                 [users]\ndn = \"uid={{userName}},dc=x\"\nobject_classes = [\"person\"]\n\
                 [groups]\ndn = \"cn={{displayName}},dc=x\"\nobject_classes = [\"groupOfNames\"]\n\
                 {member}\n[groups.attributes]\n{group_attrs}\n"
            );
            let raw: RawTarget = toml::from_str(&text).unwrap();
            CompiledTarget::compile(&raw, 0).unwrap()
        };
        let plain = with("description = \"externalId\"", "");
        assert!(!plain.group_renders_members());
        assert!(with("description = \"members.display\"", "").group_renders_members());
        assert_eq!(plain.members_fingerprint(), "ldap/member/Dn");
        let unique = with("", "member_attribute = \"uniqueMember\"");
        assert_ne!(unique.members_fingerprint(), plain.members_fingerprint());
        assert_eq!(plain.foreign_members(), ForeignMembers::Keep);
    }

    #[test]
    fn nested_defaults_follow_the_member_value_and_member_is_refused_where_no_dn_is_written() {
        let ldap = |groups: &str| {
            let text = format!(
                "name = \"corp\"\ntype = \"ldap\"\nurl = \"ldap://127.0.0.1\"\n\
                 [users]\ndn = \"uid={{userName}},dc=x\"\nobject_classes = [\"person\"]\n\
                 [groups]\ndn = \"cn={{displayName}},dc=x\"\nobject_classes = [\"posixGroup\"]\n\
                 {groups}\n"
            );
            let raw: RawTarget = toml::from_str(&text).unwrap();
            CompiledTarget::compile(&raw, 2)
                .map_err(|e| e.iter().map(ToString::to_string).collect::<Vec<_>>())
        };
        assert_eq!(ldap("").unwrap().nested_groups(), NestedGroups::Member);
        assert_eq!(
            ldap("member_value = \"uid\"").unwrap().nested_groups(),
            NestedGroups::Flatten
        );
        assert_eq!(
            ldap("nested = \"flatten\"").unwrap().nested_groups(),
            NestedGroups::Flatten
        );
        assert_eq!(
            ldap("member_value = \"uid\"\nnested = \"refuse\"")
                .unwrap()
                .nested_groups(),
            NestedGroups::Refuse
        );
        let e = ldap("member_value = \"uid\"\nnested = \"member\"").unwrap_err();
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with("targets[2].groups.nested: \"member\" needs member_value"),
            "{e:?}"
        );
        let text = "name = \"hr\"\ntype = \"sql\"\nurl = \"sqlite:///tmp/x.db\"\n\
             [users]\ntable = \"users\"\nkey_column = \"login\"\nkey = \"userName\"\n\
             [groups]\ntable = \"groups\"\nkey_column = \"name\"\nkey = \"displayName\"\n";
        let sql = |extra: &str| {
            let raw: RawTarget = toml::from_str(&format!("{text}{extra}")).unwrap();
            CompiledTarget::compile(&raw, 0)
                .map_err(|e| e.iter().map(ToString::to_string).collect::<Vec<_>>())
        };
        assert_eq!(sql("").unwrap().nested_groups(), NestedGroups::Flatten);
        assert_eq!(
            sql("nested = \"refuse\"").unwrap().nested_groups(),
            NestedGroups::Refuse
        );
        let e = sql("nested = \"member\"").unwrap_err();
        assert!(e[0].starts_with("targets[0].groups.nested: "), "{e:?}");
    }

    #[test]
    fn errors_name_the_key_and_are_all_reported() {
        let e = errors(
            r#"cn = { from = "userName", transform = ["lowr"] }
sn = "name..familyName"
mail = "{emails.value"
o = { constant = "x", from = "userName" }"#,
        );
        assert_eq!(e.len(), 4, "{e:?}");
        assert!(e.contains(
            &"targets[0].users.attributes.cn: unknown transform \"lowr\" (expected lower, upper, trim or first)"
                .to_owned()
        ));
        assert!(e
            .iter()
            .any(|m| m.starts_with("targets[0].users.attributes.sn: ")));
        assert!(e
            .iter()
            .any(|m| m.starts_with("targets[0].users.attributes.mail: ")));
        assert!(e
            .iter()
            .any(|m| m.starts_with("targets[0].users.attributes.o: ")));
    }

    #[test]
    fn good_rules_compile() {
        let e = errors(
            r#"cn = "{name.givenName} {name.familyName}"
sn = "name.familyName"
mail = 'emails[type eq "work"].value'
o = { constant = ["a", "b"] }
manager = { reference = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager.value" }
title = { from = "title", transform = ["trim", "upper"], default = "none" }"#,
        );
        assert!(e.is_empty(), "{e:?}");
    }

    #[test]
    fn bad_dn_templates_and_duplicates() {
        let mut t = target("cn = \"userName\"\nCN = \"userName\"");
        let RawTarget::Ldap(l) = &mut t else {
            panic!("ldap")
        };
        l.users.dn = "uid={userName}".into();
        l.users.object_classes.clear();
        let e: Vec<String> = CompiledTarget::compile(&t, 3)
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert!(
            e.iter()
                .any(|m| m.starts_with("targets[3].users.dn: needs an RDN")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|m| m.starts_with("targets[3].users.object_classes")),
            "{e:?}"
        );
        assert!(e.iter().any(|m| m.contains("mapped twice")), "{e:?}");
        for dn in [
            "ou=People,dc=x",
            "uid={userName,dc=x",
            "uid={user..Name},dc=x",
            "{userName}",
        ] {
            let RawTarget::Ldap(l) = &mut t else {
                panic!("ldap")
            };
            l.users.dn = dn.into();
            assert!(CompiledTarget::compile(&t, 0).is_err(), "accepted {dn}");
        }
    }

    #[test]
    fn template_braces() {
        let t = Template::parse("{{literal}} {userName}").unwrap();
        assert_eq!(t.parts.len(), 2);
        assert!(Template::parse("a } b").is_err());
        assert!(Template::parse("{}").is_err());
    }

    fn sql_target(key: &str, columns: &str) -> RawTarget {
        toml::from_str(&format!(
            "name = \"app\"\ntype = \"sql\"\nurl = \"sqlite:///x.db\"\n[users]\ntable = \"u\"\nkey_column = \"login\"\nkey = {key}\n[users.columns]\n{columns}\n[groups]\ntable = \"g\"\nkey_column = \"name\"\nkey = \"displayName\"\n"
        ))
        .unwrap()
    }

    #[test]
    fn sql_columns_use_the_same_rules_and_report_their_keys() {
        let ok = CompiledTarget::compile(
            &sql_target(
                "'emails[primary eq true].value'",
                "first_name = \"name.givenName\"\nflag = { from = \"active\", type = \"flag\", true = \"Y\", false = \"N\" }\nmgr = { reference = \"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager.value\" }",
            ),
            0,
        )
        .unwrap();
        assert!(ok.users.object_classes().is_empty());
        assert_eq!(ok.users.attribute_names(), ["first_name", "flag", "mgr"]);
        let e: Vec<String> = CompiledTarget::compile(
            &sql_target(
                "{ constant = \"x\" }",
                "a = \"name..x\"\nc = { from = \"x\", transform = [\"lowr\"] }\nD = \"userName\"\nd = \"userName\"",
            ),
            4,
        )
        .unwrap_err()
        .iter()
        .map(ToString::to_string)
        .collect();
        for want in [
            "targets[4].users.key: the key must come from the resource",
            "targets[4].users.columns.a: ",
            "targets[4].users.columns.c: unknown transform",
            "targets[4].users.columns.d: column mapped twice",
        ] {
            assert!(e.iter().any(|m| m.starts_with(want)), "{want} in {e:?}");
        }
    }

    #[test]
    fn unknown_scim_paths_are_refused_naming_the_key_with_a_suggestion() {
        // Issue 13: each of these rendered NULL for every user before.
        let e: Vec<String> = CompiledTarget::compile(
            &sql_target(
                "\"userName\"",
                "job_title = \"tittle\"\nfirst_name = \"name.givenNam\"\ndept_code = \"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:departement\"\ncn = \"{name.givenName} {name.familyNam}\"\nmgr = { reference = \"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager.valeu\" }\nok = { from = \"title\", default = \"-\" }",
            ),
            0,
        )
        .unwrap_err()
        .iter()
        .map(ToString::to_string)
        .collect();
        assert_eq!(
            e,
            [
                "targets[0].users.columns.cn: unknown SCIM attribute `name.familyNam` (User schema); did you mean `name.familyName`?",
                "targets[0].users.columns.dept_code: unknown SCIM attribute `urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:departement` (enterprise User extension); did you mean `urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department`?",
                "targets[0].users.columns.first_name: unknown SCIM attribute `name.givenNam` (User schema); did you mean `name.givenName`?",
                "targets[0].users.columns.job_title: unknown SCIM attribute `tittle` (User schema); did you mean `title`?",
                "targets[0].users.columns.mgr: unknown SCIM attribute `urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager.valeu` (enterprise User extension); did you mean `urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager.value`?",
            ]
        );
    }

    #[test]
    fn keys_dn_templates_and_group_rules_are_checked_against_their_schema() {
        let e: Vec<String> = CompiledTarget::compile(&sql_target("\"usrName\"", ""), 1)
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            e,
            ["targets[1].users.key: unknown SCIM attribute `usrName` (User schema); did you mean `userName`?"]
        );
        let mut t = target("cn = \"displayName\"");
        let RawTarget::Ldap(l) = &mut t else {
            panic!("ldap")
        };
        l.users.dn = "uid={userNam},ou=People,dc=example,dc=com".into();
        l.groups = Some(crate::config::target::RawGroups {
            dn: "cn={displayName},ou=Groups,dc=example,dc=com".into(),
            object_classes: vec!["groupOfNames".into()],
            attributes: [("description".to_owned(), RawRule::Expr("userName".into()))]
                .into_iter()
                .collect(),
            member_attribute: "member".into(),
            member_value: MemberValue::Dn,
            placeholder_member: None,
            nested: None,
        });
        let e: Vec<String> = CompiledTarget::compile(&t, 0)
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            e,
            [
                "targets[0].users.dn: unknown SCIM attribute `userNam` (User schema); did you mean `userName`?",
                "targets[0].groups.attributes.description: unknown SCIM attribute `userName` (Group schema); GET /Schemas lists the attributes served",
            ]
        );
    }

    #[test]
    fn a_declared_extension_is_mappable_an_undeclared_one_is_not() {
        let ironclad = "urn:ietf:params:scim:schemas:extension:ironclad:2.0:User";
        let t = target(&format!("employeeType = \"{ironclad}:managementLevel\""));
        assert!(CompiledTarget::compile_with(&t, 0, &Schemas::new(&[ironclad.to_owned()])).is_ok());
        let e = CompiledTarget::compile(&t, 0).unwrap_err();
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].key, "targets[0].users.attributes.employeeType");
        assert!(
            e[0].message
                .starts_with(&format!("`{ironclad}` is not a schema of user resources")),
            "{e:?}"
        );
    }
}
