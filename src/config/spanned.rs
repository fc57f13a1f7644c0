//! Deserializing the config file on toml's span-carrying tree (`toml::de::DeTable`), so that
//! every error names its own key path (`targets[0].users.columns.job_title.form`) and its own
//! line, and every error of the file is reported at once, not only the first.
//!
//! serde stops at the first error, so each section is deserialized on its own and, after an
//! error, the offending key is taken out of the tree and the section deserialized again (a
//! missing required key that follows from such a removal is not reported twice). `[[targets]]`
//! are deserialized one by one, their `type` read here: the derived internally tagged enum
//! buffers the table and loses every span inside it. Pure: no I/O, no environment.

use crate::config::raw::RawConfig;
use crate::config::target::{RawLdapTarget, RawSqlTarget, RawTarget};
use serde::Deserialize;
use std::ops::Range;
use toml::de::{DeTable, DeValue, ValueDeserializer};
use toml::Spanned;

/// One problem in the file: the full key path, the line (1-based) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FileError {
    pub line: Option<usize>,
    pub key: String,
    pub message: String,
}

/// Most errors reported for one section before giving up on it (a file of garbage).
const MAX_ROUNDS: usize = 64;

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(usize),
}

fn render_path(prefix: &str, steps: &[Step]) -> String {
    let mut out = prefix.to_owned();
    for s in steps {
        match s {
            Step::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Step::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// 1-based line of a byte offset.
pub(crate) fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset)
        .map_or(1, |t| t.matches('\n').count() + 1)
}

/// Parse and deserialize the whole file.
///
/// # Errors
/// Every syntax error, or else every unknown key, wrong type, missing key and bad target
/// `type`, each with its key path and line, sorted by line.
pub(crate) fn parse_file(text: &str) -> Result<RawConfig, Vec<FileError>> {
    let (root, syntax) = DeTable::parse_recoverable(text);
    if !syntax.is_empty() {
        return Err(syntax
            .iter()
            .map(|e| FileError {
                line: e.span().map(|s| line_of(text, s.start)),
                key: "-".into(),
                message: e.message().trim().to_owned(),
            })
            .collect());
    }
    let span = root.span();
    let mut root = root.into_inner();
    let targets = root.remove("targets");
    let mut errors = Vec::new();
    let config = section::<RawConfig>(
        text,
        Spanned::new(span, DeValue::Table(root)),
        "",
        &mut errors,
    );
    let mut parsed_targets = Vec::new();
    if let Some(targets) = targets {
        let span = targets.span();
        match targets.into_inner() {
            DeValue::Array(items) => {
                for (i, item) in items.into_iter().enumerate() {
                    if let Some(t) = target(text, item, i, &mut errors) {
                        parsed_targets.push(t);
                    }
                }
            }
            other => errors.push(FileError {
                line: Some(line_of(text, span.start)),
                key: "targets".into(),
                message: format!(
                    "invalid type: {}, expected an array of tables ([[targets]])",
                    other.type_str()
                ),
            }),
        }
    }
    match config {
        Some(mut config) if errors.is_empty() => {
            config.targets = parsed_targets;
            Ok(config)
        }
        _ => {
            errors.sort_by_key(|e| e.line.unwrap_or(usize::MAX));
            Err(errors)
        }
    }
}

/// One `[[targets]]` entry: its `type` decides the struct, which is deserialized without it.
fn target(
    text: &str,
    item: Spanned<DeValue<'_>>,
    index: usize,
    errors: &mut Vec<FileError>,
) -> Option<RawTarget> {
    let prefix = format!("targets[{index}]");
    let span = item.span();
    let DeValue::Table(mut table) = item.into_inner() else {
        errors.push(FileError {
            line: Some(line_of(text, span.start)),
            key: prefix,
            message: "invalid type, expected a table ([[targets]])".into(),
        });
        return None;
    };
    let kind = table.remove_entry("type");
    let rest = Spanned::new(span.clone(), DeValue::Table(table));
    let Some((key, kind)) = kind else {
        errors.push(FileError {
            line: Some(line_of(text, span.start)),
            key: prefix,
            message: "missing field `type` (`ldap` or `sql`)".into(),
        });
        return None;
    };
    let line = Some(line_of(text, key.span().start));
    match kind.get_ref().as_str() {
        Some("ldap") => section::<RawLdapTarget>(text, rest, &prefix, errors).map(RawTarget::Ldap),
        Some("sql") => section::<RawSqlTarget>(text, rest, &prefix, errors).map(RawTarget::Sql),
        Some(other) => {
            errors.push(FileError {
                line,
                key: format!("{prefix}.type"),
                message: format!("unknown target type `{other}`, expected `ldap` or `sql`"),
            });
            None
        }
        None => {
            errors.push(FileError {
                line,
                key: format!("{prefix}.type"),
                message: format!(
                    "invalid type: {}, expected a string (`ldap` or `sql`)",
                    kind.get_ref().type_str()
                ),
            });
            None
        }
    }
}

/// Deserialize `T` from `value`, collecting every error: after each one the offending key is
/// removed and `T` deserialized again.
fn section<T: for<'de> Deserialize<'de>>(
    text: &str,
    value: Spanned<DeValue<'_>>,
    prefix: &str,
    errors: &mut Vec<FileError>,
) -> Option<T> {
    let mut value = value;
    let mut removed: Vec<Vec<Step>> = Vec::new();
    for _ in 0..MAX_ROUNDS {
        let e = match T::deserialize(ValueDeserializer::from(value.clone())) {
            Ok(v) => return removed.is_empty().then_some(v),
            Err(e) => e,
        };
        let span = e.span();
        let steps = span
            .clone()
            .and_then(|s| locate(&value, &s))
            .unwrap_or_default();
        let message = e.message().trim().to_owned();
        // A required key removed after its own error is then missing: said once already.
        let follows_removal = message.starts_with("missing field")
            && removed
                .iter()
                .any(|r| r.len() == steps.len() + 1 && r.starts_with(&steps));
        if follows_removal {
            return None;
        }
        let key = render_path(prefix, &steps);
        errors.push(FileError {
            line: span.map(|s| line_of(text, s.start)),
            key: if key.is_empty() { "-".into() } else { key },
            message,
        });
        // Remove the innermost key (an array element goes with its key).
        let mut key_path = steps;
        while matches!(key_path.last(), Some(Step::Index(_))) {
            key_path.pop();
        }
        if key_path.is_empty() || !remove(&mut value, &key_path) {
            return None;
        }
        removed.push(key_path);
    }
    None
}

/// The key path of the innermost key or value whose span holds `span` (a key's span for an
/// unknown key, a value's for a wrong type, a table's for a missing key).
fn locate(root: &Spanned<DeValue<'_>>, span: &Range<usize>) -> Option<Vec<Step>> {
    let mut best: Option<(usize, Vec<Step>)> = None;
    let mut consider = |len: usize, path: &[Step]| {
        let better = best
            .as_ref()
            .is_none_or(|(l, p)| len < *l || (len == *l && path.len() > p.len()));
        if better {
            best = Some((len, path.to_vec()));
        }
    };
    let holds = |outer: &Range<usize>| outer.start <= span.start && span.end <= outer.end;
    let mut stack: Vec<(Vec<Step>, &Spanned<DeValue<'_>>)> = vec![(Vec::new(), root)];
    while let Some((path, v)) = stack.pop() {
        let vs = v.span();
        if holds(&vs) && !path.is_empty() {
            consider(vs.len(), &path);
        }
        match v.get_ref() {
            DeValue::Table(t) => {
                for (k, child) in t.iter() {
                    let mut p = path.clone();
                    p.push(Step::Key(k.get_ref().to_string()));
                    let ks = k.span();
                    if holds(&ks) {
                        consider(ks.len(), &p);
                    }
                    stack.push((p, child));
                }
            }
            DeValue::Array(a) => {
                for (i, child) in a.iter().enumerate() {
                    let mut p = path.clone();
                    p.push(Step::Index(i));
                    stack.push((p, child));
                }
            }
            _ => {}
        }
    }
    best.map(|(_, p)| p)
}

/// Remove the key at `path` (keys only); false when it is not there.
fn remove(root: &mut Spanned<DeValue<'_>>, path: &[Step]) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut current = root;
    for step in parents {
        let next = match (current.get_mut(), step) {
            (DeValue::Table(t), Step::Key(k)) => t.get_mut(k.as_str()),
            (DeValue::Array(a), Step::Index(i)) => a.get_mut(*i),
            _ => None,
        };
        let Some(next) = next else {
            return false;
        };
        current = next;
    }
    match (current.get_mut(), last) {
        (DeValue::Table(t), Step::Key(k)) => t.remove(k.as_str()).is_some(),
        _ => false,
    }
}

/// The line of a dotted key path such as `targets[1].users.columns.job_title` or
/// `scim.user_extensions[0]`: the line of the key itself when the file has it, else of the
/// innermost enclosing key it has (e.g. the `[targets.users.deactivate]` header of a missing
/// `targets[0].users.deactivate.column`). `None` when the file does not parse or has none of it.
pub(crate) fn key_line(text: &str, key: &str) -> Option<usize> {
    let root = DeTable::parse(text).ok()?;
    let steps = parse_path(key)?;
    let root = Spanned::new(root.span(), DeValue::Table(root.into_inner()));
    let mut current = &root;
    let mut line = None;
    for step in &steps {
        let next = match (current.get_ref(), step) {
            (DeValue::Table(t), Step::Key(k)) => t.get_key_value(k.as_str()).map(|(k, v)| {
                line = Some(line_of(text, k.span().start));
                v
            }),
            (DeValue::Array(a), Step::Index(i)) => a.get(*i).inspect(|v| {
                line = Some(line_of(text, v.span().start));
            }),
            _ => None,
        };
        match next {
            Some(next) => current = next,
            None => break,
        }
    }
    line
}

/// `a.b[2].c` as steps; `None` for an empty or malformed path.
fn parse_path(key: &str) -> Option<Vec<Step>> {
    let mut steps = Vec::new();
    for part in key.split('.') {
        let (name, mut rest) = part.split_once('[').map_or((part, ""), |(n, r)| (n, r));
        if name.is_empty() {
            return None;
        }
        steps.push(Step::Key(name.to_owned()));
        while !rest.is_empty() {
            let (index, after) = rest.split_once(']')?;
            steps.push(Step::Index(index.parse().ok()?));
            rest = after.strip_prefix('[').unwrap_or(after);
        }
    }
    (!steps.is_empty()).then_some(steps)
}
