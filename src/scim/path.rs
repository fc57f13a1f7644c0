//! Attribute paths (RFC 7644 §3.10 and the PATCH `path` grammar of §3.5.2):
//! `userName`, `name.givenName`, `emails[type eq "work"].value`, `members[value eq "x"]`,
//! `urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager.value`.
//!
//! Owns path syntax only; what a path may touch (mutability, known attributes) is decided by
//! `patch.rs`. No I/O.

use crate::scim::error::ScimError;
use crate::scim::filter::{parse_value_filter, Filter, FilterLimits};

/// Longest path accepted, in bytes.
pub const MAX_PATH_LEN: usize = 4096;

/// A parsed attribute path. Attribute names keep the client's spelling; comparisons are
/// case-insensitive (RFC 7643 §2.1).
#[derive(Debug, Clone, PartialEq)]
pub struct AttrPath {
    /// Schema URN prefix when given (`urn:...:enterprise:2.0:User`), else `None` (core schema).
    pub urn: Option<String>,
    /// Top-level attribute name.
    pub attr: String,
    /// Optional value filter on a multi-valued attribute: `emails[type eq "work"]`.
    pub value_filter: Option<Box<Filter>>,
    /// Optional sub-attribute: `name.givenName` or `emails[...].value`.
    pub sub_attr: Option<String>,
    /// How a filter compares this attribute's strings when the schema says so (a declared
    /// extension attribute's `caseExact`, set by `schema::check_filter`); `None`: by name
    /// (`filter::case_exact`).
    pub case_exact: Option<bool>,
}

impl AttrPath {
    /// A plain core attribute path (`attr` or `attr.sub`), no URN, no filter.
    pub fn simple(attr: &str, sub_attr: Option<&str>) -> Self {
        Self {
            urn: None,
            attr: attr.to_string(),
            value_filter: None,
            sub_attr: sub_attr.map(str::to_string),
            case_exact: None,
        }
    }
}

/// Parse a PATCH or filter attribute path.
///
/// # Errors
/// `400 invalidPath` on a malformed path or one deeper than the configured limits.
pub fn parse_path(input: &str) -> Result<AttrPath, ScimError> {
    if input.len() > MAX_PATH_LEN {
        return Err(ScimError::invalid_path("path is too long"));
    }
    let input = input.trim();
    let Some(open) = input.find('[') else {
        return parse_attr_word(input);
    };
    let (head, rest) = input.split_at(open);
    let close = matching_bracket(rest).ok_or_else(|| ScimError::invalid_path("unbalanced '['"))?;
    let inner = rest
        .get(1..close)
        .ok_or_else(|| ScimError::invalid_path("bad value filter"))?;
    let tail = rest.get(close + 1..).unwrap_or("");
    let mut path = parse_attr_word(head)?;
    if path.sub_attr.is_some() {
        return Err(ScimError::invalid_path(
            "a value filter must follow the attribute name",
        ));
    }
    let filter = parse_value_filter(inner, FilterLimits::default())
        .map_err(|e| ScimError::invalid_path(format!("bad value filter: {}", e.detail)))?;
    path.value_filter = Some(Box::new(filter));
    if !tail.is_empty() {
        let sub = tail
            .strip_prefix('.')
            .ok_or_else(|| ScimError::invalid_path("unexpected text after ']'"))?;
        check_name(sub)?;
        path.sub_attr = Some(sub.to_string());
    }
    Ok(path)
}

/// Index (in `s`, which starts with `[`) of the `]` closing it, skipping quoted strings.
fn matching_bracket(s: &str) -> Option<usize> {
    let mut in_str = false;
    let mut escaped = false;
    for (i, c) in s.char_indices().skip(1) {
        match (in_str, escaped, c) {
            (true, true, _) => escaped = false,
            (true, false, '\\') => escaped = true,
            (true, false, '"') => in_str = false,
            (false, _, '"') => in_str = true,
            (false, _, '[') => return None, // nested value paths: RFC 7644 §3.10 has none
            (false, _, ']') => return Some(i),
            _ => {}
        }
    }
    None
}

/// Parse `[urn:]attr[.sub]` (no brackets). The URN ends at the last ':' (URNs contain dots
/// and colons, attribute names neither).
pub(crate) fn parse_attr_word(word: &str) -> Result<AttrPath, ScimError> {
    let (urn, name) = match word.rfind(':') {
        Some(i) => {
            let (u, n) = word.split_at(i);
            if !u.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("urn:")) || u.len() < 5 {
                return Err(ScimError::invalid_path("a schema prefix must be a URN"));
            }
            (Some(u.to_string()), n.get(1..).unwrap_or(""))
        }
        None => (None, word),
    };
    let (attr, sub) = match name.split_once('.') {
        Some((a, s)) => (a, Some(s)),
        None => (name, None),
    };
    check_name(attr)?;
    if let Some(s) = sub {
        check_name(s)?;
    }
    Ok(AttrPath {
        urn,
        attr: attr.to_string(),
        value_filter: None,
        sub_attr: sub.map(str::to_string),
        case_exact: None,
    })
}

/// RFC 7643 §2.1 ATTRNAME = ALPHA *(nameChar); `$ref` is the one reserved exception.
fn check_name(name: &str) -> Result<(), ScimError> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if name == "$ref" || (first_ok && rest_ok && name.len() <= 128) {
        Ok(())
    } else {
        Err(ScimError::invalid_path("invalid attribute name"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scim::error::ScimType;

    #[test]
    fn simple_and_dotted() {
        assert_eq!(
            parse_path("userName").unwrap(),
            AttrPath::simple("userName", None)
        );
        assert_eq!(
            parse_path("name.givenName").unwrap(),
            AttrPath::simple("name", Some("givenName"))
        );
        assert_eq!(
            parse_path("members.$ref").unwrap(),
            AttrPath::simple("members", Some("$ref"))
        );
    }

    #[test]
    fn urn_qualified() {
        let p =
            parse_path("urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager.value")
                .unwrap();
        assert_eq!(
            p.urn.as_deref(),
            Some("urn:ietf:params:scim:schemas:extension:enterprise:2.0:User")
        );
        assert_eq!(p.attr, "manager");
        assert_eq!(p.sub_attr.as_deref(), Some("value"));
        let p = parse_path("urn:ietf:params:scim:schemas:core:2.0:User:userName").unwrap();
        assert_eq!(p.attr, "userName");
    }

    #[test]
    fn value_filters() {
        let p = parse_path("emails[type eq \"work\"].value").unwrap();
        assert_eq!(p.attr, "emails");
        assert!(p.value_filter.is_some());
        assert_eq!(p.sub_attr.as_deref(), Some("value"));
        let p = parse_path("members[value eq \"a]b\"]").unwrap();
        assert!(p.sub_attr.is_none());
        let p = parse_path(
            "urn:ietf:params:scim:schemas:extension:x:2.0:User:things[type eq \"a\" and v co \"[\"].v",
        )
        .unwrap();
        assert_eq!(p.attr, "things");
    }

    #[test]
    fn invalid_paths() {
        for bad in [
            "",
            "__proto__",
            "1abc",
            "a.b.c",
            "emails[type eq \"work\"].value.foo",
            "emails[type eq \"work\"",
            "emails[type eq \"work\"]x",
            "emails[]",
            "emails[type eq]",
            "a[b[c eq 1]]",
            "name.givenName[type eq \"x\"]",
            "http://x:y",
            "urn:",
            "user name",
            "emails[type eq \"w\"].",
            "é",
        ] {
            let err = parse_path(bad).unwrap_err();
            assert_eq!(err.scim_type, Some(ScimType::InvalidPath), "{bad}");
        }
        assert!(parse_path(&"a".repeat(5000)).is_err());
        assert!(parse_path(&"[".repeat(100_000)).is_err());
    }
}
