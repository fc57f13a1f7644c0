//! Loading: read the TOML file, apply `SCIM_SYNC__SECTION__KEY` environment overrides (through
//! the `config` crate's environment source), and deserialize into [`RawConfig`]. Errors name the
//! file, the line and the key.

use crate::config::raw::RawConfig;
use serde::Deserialize;
use std::path::Path;

/// Prefix of environment overrides: `SCIM_SYNC__SERVER__LISTEN=0.0.0.0:8443`.
pub const ENV_PREFIX: &str = "SCIM_SYNC";

/// A configuration error: where (file and line when known), which key, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{key}: {message}", location(.file, .line))]
pub struct ConfigError {
    pub file: Option<String>,
    pub line: Option<usize>,
    /// Dotted key path, e.g. `server.listen` or `targets[0].users.dn`.
    pub key: String,
    pub message: String,
}

fn location(file: &Option<String>, line: &Option<usize>) -> String {
    match (file, line) {
        (Some(f), Some(l)) => format!("{f}:{l}: "),
        (Some(f), None) => format!("{f}: "),
        _ => String::new(),
    }
}

impl ConfigError {
    /// An error about `key` without a known location.
    pub fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            file: None,
            line: None,
            key: key.into(),
            message: message.into(),
        }
    }

    /// Attach the file (and the line where `key`'s last segment is defined, when found).
    pub fn in_file(mut self, file: &str, text: &str) -> Self {
        if self.file.is_none() {
            self.file = Some(file.to_string());
        }
        if self.line.is_none() {
            self.line = find_key_line(text, &self.key);
        }
        self
    }
}

/// Best-effort line of a dotted key: the first line that assigns its last segment after the
/// table header of the preceding segments.
fn find_key_line(text: &str, key: &str) -> Option<usize> {
    let last = key.rsplit('.').next()?.split('[').next()?;
    if last.is_empty() {
        return None;
    }
    // `targets[N].…`: search only the N-th `[[targets]]` table (and its sub-tables), so a key
    // of the same name in [store] or another target is not reported instead.
    let (skip, text) = match array_table(text, key) {
        Some((start, body)) => (start, body),
        None => (0, text),
    };
    let found = find_in(text, last)?;
    Some(skip + found)
}

/// For a key `name[N].rest`: the line offset of the N-th `[[name]]` header and the text from
/// it to the next `[[name]]` header.
fn array_table<'a>(text: &'a str, key: &str) -> Option<(usize, &'a str)> {
    let (head, _) = key.split_once('.')?;
    let (name, index) = head.strip_suffix(']')?.split_once('[')?;
    let index: usize = index.parse().ok()?;
    let header = format!("[[{name}]]");
    let mut starts = Vec::new();
    let mut offset = 0;
    for (n, line) in text.split_inclusive('\n').enumerate() {
        if line.trim() == header {
            starts.push((n, offset));
        }
        offset += line.len();
    }
    let (line_no, start) = *starts.get(index)?;
    let end = starts.get(index + 1).map_or(text.len(), |(_, o)| *o);
    Some((line_no, text.get(start..end)?))
}

/// 1-based line in `text` that assigns `last` (or a table header naming it).
fn find_in(text: &str, last: &str) -> Option<usize> {
    text.lines().enumerate().find_map(|(n, line)| {
        let t = line.trim_start();
        let assigns = t.strip_prefix(last).map(|rest| {
            let rest = rest.trim_start();
            rest.starts_with('=')
        });
        let header = t.starts_with('[') && t.contains(last);
        (assigns == Some(true) || header).then_some(n + 1)
    })
}

/// Read and parse the config file, apply environment overrides.
///
/// # Errors
/// A missing or unreadable file, TOML syntax, unknown keys, wrong types: each names the file,
/// line and key.
pub fn load(path: &Path) -> Result<RawConfig, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|error| ConfigError {
        file: Some(file.clone()),
        line: None,
        key: "-".into(),
        message: format!("cannot read config file: {error}"),
    })?;
    let env: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| k.starts_with(&format!("{ENV_PREFIX}__")))
        .collect();
    parse(&file, &text, &env)
}

/// Parse config text with the given environment overrides (pure, for tests and `load`).
///
/// # Errors
/// As [`load`].
pub fn parse(file: &str, text: &str, env: &[(String, String)]) -> Result<RawConfig, ConfigError> {
    // First pass: the file alone, so errors carry the TOML span (line) and the key.
    let mut tree: toml::Table = toml::from_str(text).map_err(|e| toml_error(file, text, &e))?;
    if let Err(e) = RawConfig::deserialize(toml::Value::Table(tree.clone())) {
        return Err(from_toml_str_error(file, text, e));
    }
    if env.is_empty() {
        return RawConfig::deserialize(toml::Value::Table(tree))
            .map_err(|e| from_toml_str_error(file, text, e));
    }
    // Second pass: overlay environment overrides, collected through the `config` crate.
    let mut builder = config::Config::builder();
    for (k, v) in env {
        let Some(rest) = k.strip_prefix(&format!("{ENV_PREFIX}__")) else {
            continue;
        };
        let dotted = rest.to_ascii_lowercase().replace("__", ".");
        builder = builder
            .set_override(dotted.as_str(), v.as_str())
            .map_err(|e| ConfigError::invalid(k.clone(), e.to_string()))?;
    }
    let overrides = builder
        .build()
        .map_err(|e| ConfigError::invalid(ENV_PREFIX, e.to_string()))?;
    for (k, _) in env {
        let Some(rest) = k.strip_prefix(&format!("{ENV_PREFIX}__")) else {
            continue;
        };
        let dotted = rest.to_ascii_lowercase().replace("__", ".");
        let value: String = overrides
            .get_string(&dotted)
            .map_err(|e| ConfigError::invalid(k.clone(), e.to_string()))?;
        set_dotted(&mut tree, &dotted, parse_scalar(&value))
            .map_err(|message| ConfigError::invalid(k.clone(), message))?;
    }
    RawConfig::deserialize(toml::Value::Table(tree)).map_err(|e| ConfigError {
        file: Some(format!("{file} + {ENV_PREFIX}__* environment")),
        line: None,
        key: "-".into(),
        message: e.to_string(),
    })
}

/// An environment value as TOML would read it: integer, float, boolean, else a string.
fn parse_scalar(v: &str) -> toml::Value {
    if let Ok(i) = v.parse::<i64>() {
        return toml::Value::Integer(i);
    }
    if let Ok(b) = v.parse::<bool>() {
        return toml::Value::Boolean(b);
    }
    if let Ok(f) = v.parse::<f64>() {
        return toml::Value::Float(f);
    }
    toml::Value::String(v.to_string())
}

fn set_dotted(tree: &mut toml::Table, dotted: &str, value: toml::Value) -> Result<(), String> {
    let mut parts = dotted.split('.').peekable();
    let mut table = tree;
    while let Some(part) = parts.next() {
        if parts.peek().is_none() {
            table.insert(part.to_string(), value);
            return Ok(());
        }
        let next = table
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = next
            .as_table_mut()
            .ok_or_else(|| format!("`{part}` is not a table; cannot override `{dotted}`"))?;
    }
    Ok(())
}

fn toml_error(file: &str, text: &str, e: &toml::de::Error) -> ConfigError {
    let line = e.span().map(|s| line_of(text, s.start));
    ConfigError {
        file: Some(file.to_string()),
        line,
        key: "-".into(),
        message: e.message().trim().to_string(),
    }
}

/// Deserialization errors from a `toml::Value` lose spans; find the key named in the message.
fn from_toml_str_error(file: &str, text: &str, e: toml::de::Error) -> ConfigError {
    // Re-run on the text to get the span-carrying error.
    match toml::from_str::<RawConfig>(text) {
        Err(spanned) => {
            let mut err = toml_error(file, text, &spanned);
            if let Some(span) = spanned.span() {
                err.key = key_at(text, span.start).unwrap_or_else(|| "-".into());
            }
            err
        }
        Ok(_) => ConfigError {
            file: Some(file.to_string()),
            line: None,
            key: "-".into(),
            message: e.message().trim().to_string(),
        },
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset)
        .map_or(1, |t| t.matches('\n').count() + 1)
}

/// The dotted key at a byte offset: the nearest table header above plus the key on that line.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let before = text.get(..offset)?;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = text.get(line_start..)?.lines().next().unwrap_or("");
    let header = before
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('['))
        .map(|l| l.trim().trim_matches(['[', ']']).trim().to_string());
    let key = line
        .split('=')
        .next()
        .map(str::trim)
        .filter(|k| !k.starts_with('['));
    match (header, key) {
        (Some(h), Some(k)) if !k.is_empty() => Some(format!("{h}.{k}")),
        (Some(h), _) => Some(h),
        (None, Some(k)) if !k.is_empty() => Some(k.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_from_empty_file() {
        let c = parse("x.toml", "", &[]).unwrap();
        assert_eq!(c.server.base_path, "/scim/v2");
        assert_eq!(c.scim.password_sync, "off");
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let text = "[server]\nlisten = \"127.0.0.1:1\"\nlisen = \"x\"\n";
        let e = parse("/etc/scim-sync.toml", text, &[]).unwrap_err();
        assert_eq!(e.line, Some(3), "{e}");
        assert_eq!(e.key, "server.lisen", "{e}");
        assert!(
            e.to_string()
                .starts_with("/etc/scim-sync.toml:3: server.lisen"),
            "{e}"
        );
        assert!(e.message.contains("unknown field"), "{e}");
    }

    #[test]
    fn a_target_key_is_found_under_its_own_table() {
        // `url` also appears in [store] and in the first target; the error is about the second.
        let text = "[store]\nurl = \"sqlite:///x.db\"\n\n[[targets]]\nname = \"a\"\nurl = \"ldap://127.0.0.1\"\n[targets.users]\ndn = \"x\"\n\n[[targets]]\nname = \"b\"\nurl = \"ldap://remote\"\n[targets.users]\ndn = \"y\"\n";
        let e = ConfigError::invalid("targets[1].url", "x").in_file("c.toml", text);
        assert_eq!(e.line, Some(12), "{e}");
        let e = ConfigError::invalid("targets[1].users.dn", "x").in_file("c.toml", text);
        assert_eq!(e.line, Some(14), "{e}");
        let e = ConfigError::invalid("store.url", "x").in_file("c.toml", text);
        assert_eq!(e.line, Some(2), "{e}");
    }

    #[test]
    fn wrong_type_names_key() {
        let text = "[reconcile]\nworkers = \"many\"\n";
        let e = parse("c.toml", text, &[]).unwrap_err();
        assert_eq!(e.line, Some(2), "{e}");
        assert_eq!(e.key, "reconcile.workers", "{e}");
    }

    #[test]
    fn syntax_error_has_line() {
        let e = parse("c.toml", "[server\nlisten=1", &[]).unwrap_err();
        assert_eq!(e.line, Some(1), "{e}");
    }

    #[test]
    fn env_overrides_win_and_are_typed() {
        let env = vec![
            (
                "SCIM_SYNC__SERVER__LISTEN".to_string(),
                "0.0.0.0:9999".to_string(),
            ),
            ("SCIM_SYNC__RECONCILE__WORKERS".to_string(), "7".to_string()),
        ];
        let c = parse("c.toml", "[server]\nlisten = \"127.0.0.1:1\"\n", &env).unwrap();
        assert_eq!(c.server.listen, "0.0.0.0:9999");
        assert_eq!(c.reconcile.workers, 7);
    }

    #[test]
    fn bad_env_override_is_named() {
        let env = vec![("SCIM_SYNC__SERVER__NOPE".to_string(), "1".to_string())];
        let e = parse("c.toml", "", &env).unwrap_err();
        assert!(e.to_string().contains("SCIM_SYNC__"), "{e}");
        assert!(e.message.contains("nope"), "{e}");
    }
}
