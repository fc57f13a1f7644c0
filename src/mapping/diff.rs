//! The pure difference between a desired and a current [`Entry`], over the desired entry's
//! mapped attributes only: attributes we do not map are never touched. Object classes, group
//! members and deactivation attributes are the target's business, not this diff's.

use super::Entry;

/// One attribute change (LDAP modify semantics; a SQL target maps them to column updates).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mod {
    /// Add these values (the attribute may be absent).
    Add(String, Vec<String>),
    /// Delete these values; an empty list deletes the whole attribute.
    Delete(String, Vec<String>),
    /// Replace all values with these (single-valued changes).
    Replace(String, Vec<String>),
}

impl Mod {
    /// The attribute the change concerns.
    #[must_use]
    pub fn attr(&self) -> &str {
        match self {
            Mod::Add(a, _) | Mod::Delete(a, _) | Mod::Replace(a, _) => a,
        }
    }
}

/// The changes that turn `current` into `desired` for the attributes `desired` maps.
///
/// An empty desired list deletes the attribute. When both sides hold at most one value the
/// change is a `Replace`; otherwise values are added and deleted individually (deletes first),
/// so concurrent additions by others to multi-valued attributes we map are only removed when
/// they differ from the desired set. Values compare exactly; attribute names case-insensitively.
#[must_use]
pub fn diff(desired: &Entry, current: &Entry) -> Vec<Mod> {
    let mut out = Vec::new();
    for (name, want) in &desired.attrs {
        let have = current
            .attrs
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
            .unwrap_or_default();
        let same = want.len() == have.len() && want.iter().all(|w| have.contains(w));
        if same {
            continue;
        }
        if want.is_empty() {
            out.push(Mod::Delete(name.clone(), Vec::new()));
        } else if have.is_empty() {
            out.push(Mod::Add(name.clone(), want.clone()));
        } else if want.len() == 1 && have.len() == 1 {
            out.push(Mod::Replace(name.clone(), want.clone()));
        } else {
            let del: Vec<String> = have.iter().filter(|h| !want.contains(h)).cloned().collect();
            let add: Vec<String> = want.iter().filter(|w| !have.contains(w)).cloned().collect();
            if !del.is_empty() && del.len() == have.len() {
                // Nothing kept: one replace is simpler and atomic.
                out.push(Mod::Replace(name.clone(), want.clone()));
                continue;
            }
            if !del.is_empty() {
                out.push(Mod::Delete(name.clone(), del));
            }
            if !add.is_empty() {
                out.push(Mod::Add(name.clone(), add));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(attrs: &[(&str, &[&str])]) -> Entry {
        Entry {
            key: "uid=x".into(),
            object_classes: vec![],
            attrs: attrs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.iter().map(|s| (*s).to_owned()).collect()))
                .collect(),
        }
    }

    #[test]
    fn only_mapped_attributes_change() {
        let d = entry(&[("cn", &["A"]), ("title", &[]), ("mail", &["a", "b"])]);
        let c = entry(&[
            ("cn", &["A"]),
            ("title", &["old"]),
            ("mail", &["a", "c"]),
            ("x", &["1"]),
        ]);
        assert_eq!(
            diff(&d, &c),
            vec![
                Mod::Delete("mail".into(), vec!["c".into()]),
                Mod::Add("mail".into(), vec!["b".into()]),
                Mod::Delete("title".into(), vec![]),
            ]
        );
    }

    #[test]
    fn equal_entries_have_no_diff_and_order_is_ignored() {
        let d = entry(&[("mail", &["a", "b"]), ("sn", &[])]);
        let c = entry(&[("mail", &["b", "a"])]);
        assert!(diff(&d, &c).is_empty());
    }

    #[test]
    fn add_replace_and_full_replace() {
        let d = entry(&[("cn", &["B"]), ("sn", &["S"]), ("mail", &["x", "y"])]);
        let c = entry(&[("CN", &["A"]), ("mail", &["z"])]);
        assert_eq!(
            diff(&d, &c),
            vec![
                Mod::Replace("cn".into(), vec!["B".into()]),
                Mod::Replace("mail".into(), vec!["x".into(), "y".into()]),
                Mod::Add("sn".into(), vec!["S".into()]),
            ]
        );
    }
}
