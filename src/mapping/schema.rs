//! The SCIM attributes a mapping rule may name: the schemas this server serves (its own
//! `/Schemas` and `/ResourceTypes` documents, core User and Group, the enterprise extension and
//! the declared user extensions) plus the common attributes (`id`, `externalId`, `meta`,
//! `schemas`, RFC 7643 §3.1). Rule paths are checked against them when a target is compiled,
//! so that a typo (`tittle`, `name.givenNam`) is a config error with a "did you mean" and never
//! an attribute that renders empty for every user. Pure: no I/O.
//!
//! A declared extension without attribute definitions (a URN in `[scim] user_extensions` alone)
//! accepts any attribute name under its URN; one with definitions
//! (`[scim.extension_attributes]`) accepts exactly those; a URN that is neither served nor
//! declared is refused. See `docs/mapping.md`, "Paths are checked".

use super::path::Path;
use crate::scim::schema::{resource_types, schemas, SchemaSet, ENTERPRISE_USER};
use serde_json::Value;

/// One attribute: its schema spelling, sub-attributes (complex when not empty), whether it is
/// multi-valued and whether the server ever returns it.
#[derive(Debug, Clone, PartialEq)]
struct Attr {
    name: String,
    multi: bool,
    returned: bool,
    subs: Vec<Attr>,
}

impl Attr {
    fn from_json(v: &Value) -> Option<Attr> {
        Some(Attr {
            name: v.get("name")?.as_str()?.to_owned(),
            multi: v
                .get("multiValued")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            returned: v.get("returned").and_then(Value::as_str) != Some("never"),
            subs: v
                .get("subAttributes")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Attr::from_json).collect())
                .unwrap_or_default(),
        })
    }

    fn simple(name: &str, multi: bool) -> Attr {
        Attr {
            name: name.to_owned(),
            multi,
            returned: true,
            subs: Vec::new(),
        }
    }
}

/// One schema a path can start in.
#[derive(Debug, Clone, PartialEq)]
struct Schema {
    urn: String,
    /// How errors name it ("User schema", "enterprise User extension").
    label: String,
    /// `None`: a declared extension without attribute definitions (any name is accepted).
    attrs: Option<Vec<Attr>>,
}

/// The schemas of one resource type: the core schema first, then its extensions.
#[derive(Debug, Clone, PartialEq)]
struct ResourceSchemas {
    /// `User` or `Group`.
    name: String,
    core: Schema,
    extensions: Vec<Schema>,
}

/// Which resource type a rule renders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resource {
    User,
    Group,
}

/// The attributes rules may name, per resource type.
#[derive(Debug, Clone, PartialEq)]
pub struct Schemas {
    user: ResourceSchemas,
    group: ResourceSchemas,
}

impl Default for Schemas {
    /// Core User and Group and the enterprise extension, no declared extension.
    fn default() -> Self {
        Schemas::new(&[])
    }
}

impl Schemas {
    /// The schemas served with these declared user extensions (`[scim] user_extensions`).
    #[must_use]
    pub fn new(user_extensions: &[String]) -> Schemas {
        Schemas::from_set(&SchemaSet::new(user_extensions.to_vec()))
    }

    /// The schemas served for this set: declared extensions with attribute definitions
    /// (`[scim.extension_attributes]`) accept exactly those attributes.
    #[must_use]
    pub fn from_set(set: &SchemaSet) -> Schemas {
        let docs = schemas("", set);
        let types = resource_types("", set);
        let resources = |v: &Value| {
            v.get("Resources")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        };
        let schema_docs = resources(&docs);
        let schema = |urn: &str| -> Schema {
            let doc = schema_docs
                .iter()
                .find(|d| d.get("id").and_then(Value::as_str) == Some(urn));
            let attrs: Vec<Attr> = doc
                .and_then(|d| d.get("attributes"))
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Attr::from_json).collect())
                .unwrap_or_default();
            let label = if urn == ENTERPRISE_USER {
                "enterprise User extension".to_owned()
            } else {
                format!("extension {urn}")
            };
            let served = urn == ENTERPRISE_USER || !attrs.is_empty();
            Schema {
                urn: urn.to_owned(),
                label,
                attrs: served.then_some(attrs),
            }
        };
        let mut user = None;
        let mut group = None;
        for rt in resources(&types) {
            let name = rt.get("name").and_then(Value::as_str).unwrap_or_default();
            let core_urn = rt.get("schema").and_then(Value::as_str).unwrap_or_default();
            let mut core = schema(core_urn);
            core.label = format!("{name} schema");
            let mut attrs = core.attrs.take().unwrap_or_default();
            add_common(&mut attrs);
            core.attrs = Some(attrs);
            let extensions = rt
                .get("schemaExtensions")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|e| e.get("schema").and_then(Value::as_str))
                        .map(schema)
                        .collect()
                })
                .unwrap_or_default();
            let r = ResourceSchemas {
                name: name.to_owned(),
                core,
                extensions,
            };
            match name {
                "User" => user = Some(r),
                "Group" => group = Some(r),
                _ => {}
            }
        }
        let empty = |name: &str| ResourceSchemas {
            name: name.to_owned(),
            core: Schema {
                urn: String::new(),
                label: format!("{name} schema"),
                attrs: Some(Vec::new()),
            },
            extensions: Vec::new(),
        };
        Schemas {
            user: user.unwrap_or_else(|| empty("User")),
            group: group.unwrap_or_else(|| empty("Group")),
        }
    }

    /// Check that `path` names an attribute a `resource` renders with a value.
    ///
    /// # Errors
    /// What is wrong, with a "did you mean" when a served name is close.
    pub(crate) fn check(&self, resource: Resource, path: &Path) -> Result<(), String> {
        let r = match resource {
            Resource::User => &self.user,
            Resource::Group => &self.group,
        };
        let written = path.as_str();
        let steps = path.steps();
        let schema = match path.schema_urn() {
            None => &r.core,
            Some(urn) => match find_schema(r, urn) {
                Some(s) => s,
                None => return Err(unknown_urn(r, urn, &steps)),
            },
        };
        let Some(attrs) = &schema.attrs else {
            // A declared extension without attribute definitions: any name.
            return Ok(());
        };
        let prefix = path
            .schema_urn()
            .map(|u| format!("{u}:"))
            .unwrap_or_default();
        let mut level: &[Attr] = attrs;
        let mut parent: Option<&Attr> = None;
        for (i, (name, filter)) in steps.iter().enumerate() {
            let Some(attr) = level.iter().find(|a| a.name.eq_ignore_ascii_case(name)) else {
                let mut msg = format!("unknown SCIM attribute `{written}` ({})", schema.label);
                if let Some(p) = parent.filter(|p| p.subs.is_empty()) {
                    msg = format!(
                        "`{}` has no sub-attributes, so `{written}` names nothing ({})",
                        p.name, schema.label
                    );
                } else if let Some(elsewhere) = (i == 0 && path.schema_urn().is_none())
                    .then(|| in_extension(r, name))
                    .flatten()
                {
                    msg.push_str(&format!(
                        "; did you mean `{elsewhere}:{}`?",
                        join_steps(&steps, path)
                    ));
                } else if let Some(close) = closest(name, level.iter().map(|a| a.name.as_str())) {
                    let mut fixed = steps.clone();
                    if let Some(step) = fixed.get_mut(i) {
                        step.0 = close.to_owned();
                    }
                    msg.push_str(&format!(
                        "; did you mean `{prefix}{}`?",
                        join_steps(&fixed, path)
                    ));
                } else {
                    msg.push_str("; GET /Schemas lists the attributes served");
                }
                return Err(msg);
            };
            if let Some(sub) = filter {
                if attr.subs.is_empty() {
                    return Err(format!(
                        "`{}` has no sub-attributes to filter on in `{written}` ({})",
                        attr.name, schema.label
                    ));
                }
                if !attr.subs.iter().any(|s| s.name.eq_ignore_ascii_case(sub)) {
                    let mut msg = format!(
                        "`{}` has no sub-attribute `{sub}` to filter on in `{written}` ({})",
                        attr.name, schema.label
                    );
                    if let Some(close) = closest(sub, attr.subs.iter().map(|a| a.name.as_str())) {
                        msg.push_str(&format!("; did you mean `{close}`?"));
                    }
                    return Err(msg);
                }
            }
            if !attr.returned {
                return Err(format!(
                    "`{}` is write-only and never rendered, so `{written}` would always be empty",
                    attr.name
                ));
            }
            let is_last = i + 1 == steps.len();
            if is_last && !attr.subs.is_empty() {
                let sub = attr.subs.iter().find(|s| s.name == "value");
                let mut msg = format!(
                    "`{}` is a complex attribute and renders no value of its own; name one of its sub-attributes ({})",
                    attr.name,
                    attr.subs
                        .iter()
                        .map(|s| s.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                if let Some(sub) = sub {
                    msg.push_str(&format!("; did you mean `{written}.{}`?", sub.name));
                }
                return Err(msg);
            }
            parent = Some(attr);
            level = &attr.subs;
        }
        Ok(())
    }
}

/// The common attributes every resource has (RFC 7643 §3.1) that the schema documents leave
/// out: `id`, `meta` and `schemas` (`externalId` is in each core schema).
fn add_common(attrs: &mut Vec<Attr>) {
    attrs.push(Attr::simple("id", false));
    attrs.push(Attr::simple("schemas", true));
    attrs.push(Attr {
        name: "meta".to_owned(),
        multi: false,
        returned: true,
        subs: [
            "resourceType",
            "created",
            "lastModified",
            "location",
            "version",
        ]
        .into_iter()
        .map(|n| Attr::simple(n, false))
        .collect(),
    });
    if !attrs.iter().any(|a| a.name == "externalId") {
        attrs.push(Attr::simple("externalId", false));
    }
}

/// The URN of the served extension that has an attribute of this name (a core path naming an
/// enterprise attribute such as `department` or `manager.value`).
fn in_extension<'a>(r: &'a ResourceSchemas, name: &str) -> Option<&'a str> {
    r.extensions
        .iter()
        .find(|s| {
            s.attrs
                .as_ref()
                .is_some_and(|a| a.iter().any(|a| a.name.eq_ignore_ascii_case(name)))
        })
        .map(|s| s.urn.as_str())
}

fn find_schema<'a>(r: &'a ResourceSchemas, urn: &str) -> Option<&'a Schema> {
    std::iter::once(&r.core)
        .chain(&r.extensions)
        .find(|s| s.urn.eq_ignore_ascii_case(urn))
}

fn unknown_urn(r: &ResourceSchemas, urn: &str, steps: &[(String, Option<String>)]) -> String {
    let known: Vec<&str> = std::iter::once(r.core.urn.as_str())
        .chain(r.extensions.iter().map(|s| s.urn.as_str()))
        .collect();
    // `urn:...:enterprise:2.0:User` alone parses as attribute `User` of `urn:...:2.0`.
    if let Some((first, _)) = steps.first() {
        let whole = format!("{urn}:{first}");
        if steps.len() == 1 && known.iter().any(|k| k.eq_ignore_ascii_case(&whole)) {
            return format!("`{whole}` names a schema, not an attribute: add `:<attribute>`");
        }
    }
    let mut msg = format!(
        "`{urn}` is not a schema of {} resources",
        r.name.to_ascii_lowercase()
    );
    if let Some(close) = closest(urn, known.iter().copied()) {
        msg.push_str(&format!("; did you mean `{close}`?"));
    }
    if r.name == "User" {
        msg.push_str(
            " (a custom extension must be declared in [scim] user_extensions to be mapped)",
        );
    } else {
        msg.push_str(" (groups have no extensions)");
    }
    msg
}

/// The steps back as a path (filters as `[attr eq literal]`).
fn join_steps(steps: &[(String, Option<String>)], path: &Path) -> String {
    let literals = path.filter_literals();
    steps
        .iter()
        .zip(literals)
        .map(|((name, filter), lit)| match (filter, lit) {
            (Some(attr), Some(lit)) => format!("{name}[{attr} eq {lit}]"),
            _ => name.clone(),
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// The candidate closest to `name` (case-insensitive edit distance), when close enough to be
/// a likely typo: at most a third of `name`'s length, between one and three edits (the URN
/// of another extension, `ironclad` for `enterprise`, is no typo).
pub(crate) fn closest<'a>(
    name: &str,
    candidates: impl Iterator<Item = &'a str>,
) -> Option<&'a str> {
    let limit = (name.chars().count() / 3).clamp(1, 3);
    let lower = name.to_lowercase();
    candidates
        .map(|c| (edit_distance(&lower, &c.to_lowercase()), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Edit distance over chars (optimal string alignment: insertions, deletions, substitutions
/// and transpositions of neighbours each cost one, so `valeu` is one edit from `value`).
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let width = b.len() + 1;
    let mut d = vec![0usize; (a.len() + 1) * width];
    let at = |i: usize, j: usize| i * width + j;
    for i in 0..=a.len() {
        if let Some(c) = d.get_mut(at(i, 0)) {
            *c = i;
        }
    }
    for j in 0..=b.len() {
        if let Some(c) = d.get_mut(at(0, j)) {
            *c = j;
        }
    }
    let get = |d: &[usize], i: usize, j: usize| d.get(at(i, j)).copied().unwrap_or(usize::MAX - 1);
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let (ca, cb) = (a.get(i - 1), b.get(j - 1));
            let cost = usize::from(ca != cb);
            let mut best = (get(&d, i - 1, j) + 1)
                .min(get(&d, i, j - 1) + 1)
                .min(get(&d, i - 1, j - 1) + cost);
            if i > 1 && j > 1 && ca == b.get(j - 2) && a.get(i - 2) == cb {
                best = best.min(get(&d, i - 2, j - 2) + 1);
            }
            if let Some(c) = d.get_mut(at(i, j)) {
                *c = best;
            }
        }
    }
    get(&d, a.len(), b.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(resource: Resource, ext: &[&str], path: &str) -> Result<(), String> {
        let ext: Vec<String> = ext.iter().map(|s| (*s).to_owned()).collect();
        Schemas::new(&ext).check(resource, &Path::parse(path).unwrap())
    }

    const ENT: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";

    #[test]
    fn served_paths_pass() {
        for p in [
            "userName",
            "USERNAME",
            "name.givenName",
            "emails.value",
            r#"emails[type eq "work"].value"#,
            "emails[primary eq true].value",
            "roles.value",
            "groups.display",
            "id",
            "externalId",
            "meta.created",
            "active",
            "urn:ietf:params:scim:schemas:core:2.0:User:userName",
            &format!("{ENT}:department"),
            &format!("{ENT}:manager.value"),
            &format!("{ENT}:manager.displayName"),
        ] {
            assert_eq!(check(Resource::User, &[], p), Ok(()), "{p}");
        }
        for p in [
            "displayName",
            "members.value",
            "members.display",
            "externalId",
            "id",
        ] {
            assert_eq!(check(Resource::Group, &[], p), Ok(()), "{p}");
        }
    }

    #[test]
    fn typos_are_refused_with_a_suggestion() {
        for (path, want) in [
            ("tittle", "unknown SCIM attribute `tittle` (User schema); did you mean `title`?"),
            (
                "name.givenNam",
                "unknown SCIM attribute `name.givenNam` (User schema); did you mean `name.givenName`?",
            ),
            (
                "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:departement",
                "unknown SCIM attribute `urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:departement` (enterprise User extension); did you mean `urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department`?",
            ),
            (
                r#"emails[type eq "work"].valeu"#,
                r#"unknown SCIM attribute `emails[type eq "work"].valeu` (User schema); did you mean `emails[type eq "work"].value`?"#,
            ),
            (
                r#"emails[typ eq "work"].value"#,
                r#"`emails` has no sub-attribute `typ` to filter on in `emails[typ eq "work"].value` (User schema); did you mean `type`?"#,
            ),
            (
                "userName.first",
                "`userName` has no sub-attributes, so `userName.first` names nothing (User schema)",
            ),
            (
                "name",
                "`name` is a complex attribute and renders no value of its own; name one of its sub-attributes (formatted, familyName, givenName, middleName, honorificPrefix, honorificSuffix)",
            ),
            (
                "password",
                "`password` is write-only and never rendered, so `password` would always be empty",
            ),
            (
                "urn:ietf:params:scim:schemas:extension:enterprize:2.0:User:department",
                "`urn:ietf:params:scim:schemas:extension:enterprize:2.0:User` is not a schema of user resources; did you mean `urn:ietf:params:scim:schemas:extension:enterprise:2.0:User`? (a custom extension must be declared in [scim] user_extensions to be mapped)",
            ),
            ("zzz", "unknown SCIM attribute `zzz` (User schema); GET /Schemas lists the attributes served"),
            (
                "manager.value",
                "unknown SCIM attribute `manager.value` (User schema); did you mean `urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager.value`?",
            ),
        ] {
            assert_eq!(check(Resource::User, &[], path), Err(want.to_owned()), "{path}");
        }
        // Group rules are checked against the Group schema.
        assert_eq!(
            check(Resource::Group, &[], "userName"),
            Err("unknown SCIM attribute `userName` (Group schema); GET /Schemas lists the attributes served".to_owned())
        );
        assert_eq!(
            check(Resource::Group, &[], "members.valeu"),
            Err("unknown SCIM attribute `members.valeu` (Group schema); did you mean `members.value`?".to_owned())
        );
    }

    #[test]
    fn declared_extensions_accept_any_attribute_undeclared_ones_are_refused() {
        let ironclad = "urn:ietf:params:scim:schemas:extension:ironclad:2.0:User";
        let path = format!("{ironclad}:managementLevel");
        assert_eq!(check(Resource::User, &[ironclad], &path), Ok(()));
        assert_eq!(
            check(
                Resource::User,
                &[ironclad],
                &path.to_uppercase().replace("URN", "urn")
            ),
            Ok(())
        );
        let e = check(Resource::User, &[], &path).unwrap_err();
        assert!(
            e.starts_with(&format!("`{ironclad}` is not a schema of user resources")),
            "{e}"
        );
        assert!(e.contains("[scim] user_extensions"), "{e}");
        assert!(
            !e.contains("did you mean"),
            "another extension is no typo: {e}"
        );
        // A typo in a declared URN is caught, with the declared one suggested.
        let e = check(
            Resource::User,
            &[ironclad],
            "urn:ietf:params:scim:schemas:extension:ironclat:2.0:User:managementLevel",
        )
        .unwrap_err();
        assert!(e.contains(&format!("did you mean `{ironclad}`?")), "{e}");
        // The schema URN alone names no attribute.
        assert_eq!(
            check(Resource::User, &[], ENT),
            Err(format!(
                "`{ENT}` names a schema, not an attribute: add `:<attribute>`"
            ))
        );
        // User extensions are not group schemas.
        assert!(check(Resource::Group, &[ironclad], &path).is_err());
    }

    #[test]
    fn declared_extension_attributes_are_checked_like_served_ones() {
        use crate::scim::schema::ExtensionAttr;
        let ironclad = "urn:ietf:params:scim:schemas:extension:ironclad:2.0:User";
        let def = |name: &str, returned: &str| ExtensionAttr {
            name: name.into(),
            ty: "string".into(),
            multi_valued: false,
            case_exact: false,
            mutability: "readWrite".into(),
            returned: returned.into(),
        };
        let set = SchemaSet::with_attributes(
            vec![ironclad.into()],
            vec![(
                ironclad.into(),
                vec![def("managementLevel", "default"), def("pin", "never")],
            )],
        );
        let schemas = Schemas::from_set(&set);
        let check = |p: &str| schemas.check(Resource::User, &Path::parse(p).unwrap());
        assert_eq!(check(&format!("{ironclad}:managementLevel")), Ok(()));
        assert_eq!(
            check(&format!("{ironclad}:managementLevl")),
            Err(format!(
                "unknown SCIM attribute `{ironclad}:managementLevl` (extension {ironclad}); did you mean `{ironclad}:managementLevel`?"
            ))
        );
        assert!(check(&format!("{ironclad}:pin"))
            .unwrap_err()
            .contains("write-only"));
    }

    #[test]
    fn edit_distance_and_closest() {
        assert_eq!(edit_distance("tittle", "title"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("valeu", "value"), 1);
        assert_eq!(
            closest("tittle", ["title", "userName"].into_iter()),
            Some("title")
        );
        assert_eq!(closest("x", ["title"].into_iter()), None);
    }
}
