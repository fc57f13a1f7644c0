//! The small path language of mapping rules, parsed once and evaluated over rendered SCIM JSON.
//!
//! Grammar: `[URN ":"] segment ("." segment)*`, `segment = name ["[" name "eq" literal "]"]`,
//! `literal = JSON string | true | false | number | null`. Attribute names match
//! case-insensitively (RFC 7643 §2.1). A URN prefix selects the extension object of that name;
//! the core User/Group schema URNs select the top level. Pure; must not depend on `crate::scim`.

use serde_json::Value;

const CORE_URN_PREFIX: &str = "urn:ietf:params:scim:schemas:core:";

/// A compiled path.
#[derive(Debug, Clone, PartialEq)]
pub struct Path {
    text: String,
    /// Extension object to start from (`None`: the top level).
    urn: Option<String>,
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq)]
struct Segment {
    name: String,
    filter: Option<(String, Value)>,
}

impl Path {
    /// Parse a path.
    ///
    /// # Errors
    /// A description of what is wrong.
    pub fn parse(text: &str) -> Result<Path, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("empty path".to_owned());
        }
        let (urn, rest) = split_urn(text)?;
        let mut segments = Vec::new();
        let mut rest = rest;
        loop {
            let end = rest.find(['.', '[']).unwrap_or(rest.len());
            let (name, tail) = rest.split_at(end);
            check_name(name, text)?;
            let mut seg = Segment {
                name: name.to_owned(),
                filter: None,
            };
            let mut tail = tail;
            if let Some(after) = tail.strip_prefix('[') {
                let close = find_close(after).ok_or_else(|| format!("unclosed '[' in {text:?}"))?;
                let (inner, after_close) = after.split_at(close);
                seg.filter = Some(parse_filter(inner)?);
                tail = after_close.get(1..).unwrap_or("");
            }
            segments.push(seg);
            if tail.is_empty() {
                break;
            }
            rest = tail
                .strip_prefix('.')
                .ok_or_else(|| format!("expected '.' after ']' in {text:?}"))?;
        }
        Ok(Path {
            text: text.to_owned(),
            urn,
            segments,
        })
    }

    /// The path as written.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The schema URN the path starts with, as written (core URNs included); `None` when it
    /// has none.
    #[must_use]
    pub(crate) fn schema_urn(&self) -> Option<&str> {
        if !self
            .text
            .get(..4)
            .is_some_and(|p| p.eq_ignore_ascii_case("urn:"))
        {
            return None;
        }
        let head = self
            .text
            .get(..self.text.find('[').unwrap_or(self.text.len()))?;
        head.get(..head.rfind(':')?)
    }

    /// Each segment's attribute name and the attribute its `[... eq ...]` filter compares.
    #[must_use]
    pub(crate) fn steps(&self) -> Vec<(String, Option<String>)> {
        self.segments
            .iter()
            .map(|s| (s.name.clone(), s.filter.as_ref().map(|(a, _)| a.clone())))
            .collect()
    }

    /// Each segment's filter literal in JSON form (`"work"`, `true`), `None` without a filter.
    #[must_use]
    pub(crate) fn filter_literals(&self) -> Vec<Option<String>> {
        self.segments
            .iter()
            .map(|s| s.filter.as_ref().map(|(_, v)| v.to_string()))
            .collect()
    }

    /// Every leaf value the path reaches, multi-valued attributes flattened, in document order.
    /// Strings as-is, booleans as LDAP `TRUE`/`FALSE`, numbers in JSON form; nulls, objects
    /// and empty strings yield nothing.
    #[must_use]
    pub fn eval(&self, root: &Value) -> Vec<String> {
        let start = match &self.urn {
            None => Some(root),
            Some(urn) => get_ci(root, urn),
        };
        let mut current: Vec<&Value> = start.into_iter().collect();
        for seg in &self.segments {
            let mut next = Vec::new();
            for v in current {
                for item in flatten(v) {
                    let Some(child) = get_ci(item, &seg.name) else {
                        continue;
                    };
                    match &seg.filter {
                        None => next.push(child),
                        Some((sub, lit)) => {
                            for el in flatten(child) {
                                if get_ci(el, sub).is_some_and(|x| literal_eq(x, lit)) {
                                    next.push(el);
                                }
                            }
                        }
                    }
                }
            }
            current = next;
        }
        let mut out = Vec::new();
        for v in current {
            for leaf in flatten(v) {
                match leaf {
                    Value::String(s) if !s.is_empty() => out.push(s.clone()),
                    Value::Bool(true) => out.push("TRUE".to_owned()),
                    Value::Bool(false) => out.push("FALSE".to_owned()),
                    Value::Number(n) => out.push(n.to_string()),
                    _ => {}
                }
            }
        }
        out
    }
}

fn split_urn(text: &str) -> Result<(Option<String>, &str), String> {
    if !text
        .get(..4)
        .is_some_and(|p| p.eq_ignore_ascii_case("urn:"))
    {
        return Ok((None, text));
    }
    // The attribute starts after the last ':' that precedes any filter.
    let head_end = text.find('[').unwrap_or(text.len());
    let head = text.get(..head_end).unwrap_or(text);
    let colon = head
        .rfind(':')
        .ok_or_else(|| format!("bad URN path {text:?}"))?;
    let urn = text.get(..colon).unwrap_or("");
    let rest = text.get(colon + 1..).unwrap_or("");
    if rest.is_empty() || urn.len() <= 4 {
        return Err(format!("URN path {text:?} names no attribute"));
    }
    let lower = urn.to_ascii_lowercase();
    if lower.starts_with(CORE_URN_PREFIX) {
        Ok((None, rest))
    } else {
        Ok((Some(urn.to_owned()), rest))
    }
}

fn check_name(name: &str, text: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '$')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '$');
    if ok {
        Ok(())
    } else {
        Err(format!("bad attribute name {name:?} in {text:?}"))
    }
}

/// Index of the `]` closing a filter, skipping quoted strings.
fn find_close(s: &str) -> Option<usize> {
    let mut in_str = false;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if in_str {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_str = false;
            }
        } else if c == '"' {
            in_str = true;
        } else if c == ']' {
            return Some(i);
        }
    }
    None
}

fn parse_filter(inner: &str) -> Result<(String, Value), String> {
    let inner = inner.trim();
    let mut parts = inner.splitn(3, char::is_whitespace);
    let (Some(attr), Some(op), Some(lit)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(format!("filter {inner:?} is not `attr eq value`"));
    };
    check_name(attr, inner)?;
    if !op.eq_ignore_ascii_case("eq") {
        return Err(format!("filter {inner:?}: only `eq` is supported"));
    }
    let lit: Value = serde_json::from_str(lit.trim()).map_err(|_| {
        format!("filter {inner:?}: value must be a quoted string, true, false, a number or null")
    })?;
    if lit.is_array() || lit.is_object() {
        return Err(format!("filter {inner:?}: value must be a scalar"));
    }
    Ok((attr.to_owned(), lit))
}

fn flatten(v: &Value) -> Vec<&Value> {
    match v {
        Value::Array(items) => items.iter().collect(),
        other => vec![other],
    }
}

fn get_ci<'a>(v: &'a Value, name: &str) -> Option<&'a Value> {
    let obj = v.as_object()?;
    obj.get(name).or_else(|| {
        obj.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    })
}

fn literal_eq(x: &Value, lit: &Value) -> bool {
    match (x, lit) {
        // RFC 7644 §3.4.2.2: string comparisons are case-insensitive unless caseExact.
        (Value::String(a), Value::String(b)) => a.to_lowercase() == b.to_lowercase(),
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (a, b) => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn user() -> Value {
        json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
            "userName": "bjensen",
            "name": {"givenName": "Barbara", "familyName": "Jensen"},
            "emails": [
                {"value": "b@work.example", "type": "work", "primary": true},
                {"value": "b@home.example", "type": "home"}
            ],
            "active": false,
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {
                "department": "Sales", "manager": {"value": "42"}
            },
            "urn:ietf:params:scim:schemas:extension:ironclad:2.0:User": {"managementLevel": 3}
        })
    }

    fn eval(p: &str) -> Vec<String> {
        Path::parse(p).unwrap().eval(&user())
    }

    #[test]
    fn simple_nested_and_case_insensitive() {
        assert_eq!(eval("userName"), ["bjensen"]);
        assert_eq!(eval("USERNAME"), ["bjensen"]);
        assert_eq!(eval("name.familyName"), ["Jensen"]);
        assert_eq!(eval("emails.value"), ["b@work.example", "b@home.example"]);
        assert_eq!(eval("active"), ["FALSE"]);
        assert!(eval("missing.attr").is_empty());
    }

    #[test]
    fn filters_select_values() {
        assert_eq!(eval("emails[primary eq true].value"), ["b@work.example"]);
        assert_eq!(eval(r#"emails[type eq "HOME"].value"#), ["b@home.example"]);
        assert!(eval(r#"emails[type eq "other"].value"#).is_empty());
    }

    #[test]
    fn urn_prefixes() {
        assert_eq!(
            eval("urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department"),
            ["Sales"]
        );
        assert_eq!(
            eval("urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager.value"),
            ["42"]
        );
        assert_eq!(
            eval("urn:ietf:params:scim:schemas:extension:ironclad:2.0:User:managementLevel"),
            ["3"]
        );
        assert_eq!(
            eval("urn:ietf:params:scim:schemas:core:2.0:User:userName"),
            ["bjensen"]
        );
    }

    #[test]
    fn hostile_paths_are_errors_not_panics() {
        for bad in [
            "",
            " ",
            "a..b",
            ".a",
            "a.",
            "a[",
            "a[b eq]",
            "a[b gt 1].c",
            "a[b eq \"x].c",
            "a]b",
            "urn:",
            "urn:x:",
            "a[b eq [1]].c",
            "1abc",
            "a b",
            "a[b eq 1]x",
            "ü",
        ] {
            assert!(Path::parse(bad).is_err(), "accepted {bad:?}");
        }
        // Filters containing ']' and ':' inside strings are fine.
        assert!(Path::parse(r#"emails[type eq "a]:b"].value"#).is_ok());
    }

    #[test]
    fn eval_on_odd_documents_is_empty() {
        let p = Path::parse("name.givenName").unwrap();
        assert!(p.eval(&json!(null)).is_empty());
        assert!(p.eval(&json!({"name": 5})).is_empty());
        assert!(p.eval(&json!({"name": [1, {"givenName": ""}]})).is_empty());
    }
}
