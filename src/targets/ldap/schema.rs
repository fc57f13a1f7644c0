//! The server's schema against the mapping (`check-config --connect`, a reload): every object
//! class and attribute a target writes must be known to the directory, read from the
//! subschema subentry the root DSE names (`subschemaSubentry`, RFC 4512 §4.2). An unknown one
//! is refused before anything is written, naming the config key. A server that publishes no
//! readable schema is not checked.

use super::conn::LdapTarget;
use crate::targets::TargetError;
use std::collections::BTreeSet;

/// The names (lower-cased, every alias) in schema definitions such as
/// `( 2.5.4.3 NAME ( 'cn' 'commonName' ) SUP name )`.
#[must_use]
pub fn defined_names(definitions: &[String]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for def in definitions {
        let Some(at) = def.find(" NAME ") else {
            continue;
        };
        let rest = def[at + " NAME ".len()..].trim_start();
        let names: Vec<&str> = if let Some(list) = rest.strip_prefix('(') {
            let list = list.split(')').next().unwrap_or("");
            list.split('\'').skip(1).step_by(2).collect()
        } else {
            rest.split('\'').nth(1).into_iter().collect()
        };
        out.extend(names.into_iter().map(str::to_ascii_lowercase));
    }
    out
}

/// What a target's mapping writes: (config key, object class or attribute name).
#[derive(Debug, Clone, Default)]
pub struct Wanted {
    pub object_classes: Vec<(String, String)>,
    pub attributes: Vec<(String, String)>,
}

impl LdapTarget {
    /// The object classes and attributes of `wanted` the server's schema does not define (plus
    /// the member attribute and the attributes deactivation sets, from the settings), one
    /// message each.
    ///
    /// # Errors
    /// A failure reading the root DSE or the subschema subentry.
    pub async fn schema_problems(&self, wanted: &Wanted) -> Result<Vec<String>, TargetError> {
        let root = self.read("", &["subschemaSubentry".to_owned()]).await?;
        let Some(dn) = root
            .and_then(|e| e.attrs.get("subschemasubentry").cloned())
            .and_then(|v| v.into_iter().next())
        else {
            tracing::warn!(target = %self.settings.name, "The directory names no subschema subentry; its schema is not checked.");
            return Ok(Vec::new());
        };
        let schema = self
            .read(
                &dn,
                &["objectClasses".to_owned(), "attributeTypes".to_owned()],
            )
            .await?
            .unwrap_or_default();
        let get = |k: &str| schema.attrs.get(k).cloned().unwrap_or_default();
        let (classes, attributes) = (
            defined_names(&get("objectclasses")),
            defined_names(&get("attributetypes")),
        );
        if classes.is_empty() || attributes.is_empty() {
            tracing::warn!(target = %self.settings.name, subschema = %dn, "The directory's schema is not readable with this bind; it is not checked.");
            return Ok(Vec::new());
        }
        let s = &self.settings;
        let mut attrs = wanted.attributes.clone();
        if let Some(g) = &s.groups {
            attrs.push((
                "groups.member_attribute".to_owned(),
                g.member_attribute.clone(),
            ));
        }
        if let Some(d) = &s.users.deactivate {
            for name in d.set.keys() {
                attrs.push(("users.deactivate.set".to_owned(), name.clone()));
            }
        }
        let mut out = Vec::new();
        for (key, class) in &wanted.object_classes {
            if !classes.contains(&class.to_ascii_lowercase()) {
                out.push(format!(
                    "target {}: the directory's schema has no object class `{class}` ({key})",
                    s.name
                ));
            }
        }
        for (key, attr) in &attrs {
            let base = attr.split(';').next().unwrap_or(attr).to_ascii_lowercase();
            if !attributes.contains(&base) {
                out.push(format!(
                    "target {}: the directory's schema has no attribute `{attr}` ({key})",
                    s.name
                ));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_aliases_are_read_from_definitions() {
        let defs = [
            "( 2.5.4.3 NAME ( 'cn' 'commonName' ) DESC 'x' SUP name )".to_owned(),
            "( 2.5.6.6 NAME 'person' DESC 'RFC2256: a person' SUP top STRUCTURAL )".to_owned(),
            "( 1.2.3 DESC 'no name' )".to_owned(),
        ];
        let got: Vec<String> = defined_names(&defs).into_iter().collect();
        assert_eq!(got, ["cn", "commonname", "person"]);
    }
}
