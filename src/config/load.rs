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

    /// Attach the file (and the line of `key`, or of the innermost enclosing key the file has).
    pub fn in_file(mut self, file: &str, text: &str) -> Self {
        if self.file.is_none() {
            self.file = Some(file.to_string());
        }
        if self.line.is_none() {
            self.line = super::spanned::key_line(text, &self.key)
                .or_else(|| find_key_line(text, &self.key));
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
/// A missing or unreadable file, TOML syntax, unknown keys, wrong types: every one found, each
/// naming the file, line and key.
pub fn load(path: &Path) -> Result<RawConfig, Vec<ConfigError>> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|error| {
        vec![ConfigError {
            file: Some(file.clone()),
            line: None,
            key: "-".into(),
            message: format!("cannot read config file: {error}"),
        }]
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
pub fn parse(
    file: &str,
    text: &str,
    env: &[(String, String)],
) -> Result<RawConfig, Vec<ConfigError>> {
    // First pass: the file alone, on the span-carrying tree, so every error names its own key
    // path and line (targets included).
    let parsed = super::spanned::parse_file(text).map_err(|errors| {
        errors
            .into_iter()
            .map(|e| ConfigError {
                file: Some(file.to_string()),
                line: e.line,
                key: e.key,
                message: e.message,
            })
            .collect::<Vec<_>>()
    })?;
    if env.is_empty() {
        return Ok(parsed);
    }
    let mut tree: toml::Table =
        toml::from_str(text).map_err(|e| vec![toml_error(file, text, &e)])?;
    // Second pass: overlay environment overrides, collected through the `config` crate.
    let mut builder = config::Config::builder();
    for (k, v) in env {
        let Some(rest) = k.strip_prefix(&format!("{ENV_PREFIX}__")) else {
            continue;
        };
        let dotted = rest.to_ascii_lowercase().replace("__", ".");
        builder = builder
            .set_override(dotted.as_str(), v.as_str())
            .map_err(|e| vec![ConfigError::invalid(k.clone(), e.to_string())])?;
    }
    let overrides = builder
        .build()
        .map_err(|e| vec![ConfigError::invalid(ENV_PREFIX, e.to_string())])?;
    for (k, _) in env {
        let Some(rest) = k.strip_prefix(&format!("{ENV_PREFIX}__")) else {
            continue;
        };
        let dotted = rest.to_ascii_lowercase().replace("__", ".");
        let value: String = overrides
            .get_string(&dotted)
            .map_err(|e| vec![ConfigError::invalid(k.clone(), e.to_string())])?;
        set_dotted(&mut tree, &dotted, parse_scalar(&value))
            .map_err(|message| vec![ConfigError::invalid(k.clone(), message)])?;
    }
    RawConfig::deserialize(toml::Value::Table(tree)).map_err(|e| {
        vec![ConfigError {
            file: Some(format!("{file} + {ENV_PREFIX}__* environment")),
            line: None,
            key: "-".into(),
            message: e.to_string(),
        }]
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

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset)
        .map_or(1, |t| t.matches('\n').count() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The only error of a parse that must fail.
    fn one(r: Result<RawConfig, Vec<ConfigError>>) -> ConfigError {
        let mut errors = r.unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        errors.remove(0)
    }

    #[test]
    fn defaults_from_empty_file() {
        let c = parse("x.toml", "", &[]).unwrap();
        assert_eq!(c.server.base_path, "/scim/v2");
        assert_eq!(c.scim.password_sync, "off");
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let text = "[server]\nlisten = \"127.0.0.1:1\"\nlisen = \"x\"\n";
        let e = one(parse("/etc/scim-sync.toml", text, &[]));
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
        let e = one(parse("c.toml", text, &[]));
        assert_eq!(e.line, Some(2), "{e}");
        assert_eq!(e.key, "reconcile.workers", "{e}");
    }

    #[test]
    fn syntax_error_has_line() {
        let e = parse("c.toml", "[server\nlisten=1", &[])
            .unwrap_err()
            .remove(0);
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
        let e = one(parse("c.toml", "", &env));
        assert!(e.to_string().contains("SCIM_SYNC__"), "{e}");
        assert!(e.message.contains("nope"), "{e}");
    }

    /// A valid file with one SQL target; the golden cases below break it.
    const BASE: &str = r#"[server]
listen = "127.0.0.1:1"

[[targets]]
name = "app"
type = "sql"
url = "sqlite:///x.db"
timeout_secs = 10
[targets.users]
table = "users"
key_column = "login"
key = "userName"
[targets.users.columns]
first_name = "name.givenName"
[targets.users.deactivate]
policy = "flag"
column = "enabled"

[log]
level = "info"
"#;

    /// Every error of `text`, as `check-config` prints them.
    fn all_errors(text: &str) -> Vec<String> {
        match parse("c.toml", text, &[]) {
            Ok(_) => Vec::new(),
            Err(errors) => errors.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn golden_errors_inside_targets_name_their_own_key_path_and_line() {
        assert_eq!(all_errors(BASE), Vec::<String>::new());
        let cases: &[(&str, &str, &str, &[&str])] = &[
            (
                "nested unknown key inside [targets.users.columns]",
                "first_name = \"name.givenName\"",
                "first_name = { form = \"name.givenName\" }",
                &["c.toml:14: targets[0].users.columns.first_name.form: unknown field `form`, expected one of `from`, `transform`, `default`, `constant`, `reference`, `by`, `type`, `true`, `false`"],
            ),
            (
                "misspelled sub-table",
                "[targets.users.columns]",
                "[targets.users.colums]",
                &["c.toml:13: targets[0].users.colums: unknown field `colums`, expected one of `table`, `key_column`, `key`, `columns`, `deactivate`, `on_delete`"],
            ),
            (
                "unknown key in a target",
                "timeout_secs = 10",
                "timout_secs = 10",
                &["c.toml:8: targets[0].timout_secs: unknown field `timout_secs`, expected one of `name`, `url`, `password_file`, `password_env`, `connect_timeout_secs`, `timeout_secs`, `on_existing`, `foreign_members`, `users`, `groups`"],
            ),
            (
                "bad target type",
                "type = \"sql\"",
                "type = \"sqll\"",
                &["c.toml:6: targets[0].type: unknown target type `sqll`, expected `ldap` or `sql`"],
            ),
            (
                "target type of the wrong TOML type",
                "type = \"sql\"",
                "type = 1",
                &["c.toml:6: targets[0].type: invalid type: integer, expected a string (`ldap` or `sql`)"],
            ),
            (
                "missing target type",
                "type = \"sql\"\n",
                "",
                &["c.toml:4: targets[0]: missing field `type` (`ldap` or `sql`)"],
            ),
            (
                "string where an integer is wanted",
                "timeout_secs = 10",
                "timeout_secs = \"10\"",
                &["c.toml:8: targets[0].timeout_secs: invalid type: string \"10\", expected u64"],
            ),
            (
                "wrong type of a required key: no second error for the same key",
                "table = \"users\"",
                "table = 5",
                &["c.toml:10: targets[0].users.table: invalid type: integer `5`, expected a string"],
            ),
            (
                "bad enum value deep inside a target",
                "policy = \"flag\"",
                "policy = \"flags\"",
                &["c.toml:16: targets[0].users.deactivate.policy: unknown variant `flags`, expected one of `flag`, `timestamp`, `delete`"],
            ),
            (
                "unknown key in [targets.users.deactivate] (it pointed at [log])",
                "column = \"enabled\"",
                "column = \"enabled\"\nremove_from_group = true",
                &["c.toml:18: targets[0].users.deactivate.remove_from_group: unknown field `remove_from_group`, expected one of `policy`, `column`, `value`, `active_value`, `remove_from_groups`"],
            ),
            (
                "missing required key names its table",
                "key_column = \"login\"\n",
                "",
                &["c.toml:9: targets[0].users: missing field `key_column`"],
            ),
        ];
        for (what, from, to, want) in cases {
            assert!(BASE.contains(from), "{what}: {from}");
            let got = all_errors(&BASE.replacen(from, to, 1));
            assert_eq!(&got, want, "{what}");
        }
        // Several errors at once: in [server], in a target's own keys, in its sub-tables and
        // in a second target, all reported, in file order.
        let text = BASE
            .replacen(
                "listen = \"127.0.0.1:1\"\n",
                "listen = \"127.0.0.1:1\"\nlisen = 1\n",
                1,
            )
            .replacen("timeout_secs = 10", "timeout_secs = \"10\"", 1)
            .replacen(
                "first_name = \"name.givenName\"",
                "first_name = { form = \"name.givenName\" }\nlast_name = 5",
                1,
            )
            .replacen(
                "[log]",
                "[[targets]]\nname = \"dir\"\ntype = \"ldapp\"\n\n[log]",
                1,
            );
        assert_eq!(
            all_errors(&text),
            [
                "c.toml:3: server.lisen: unknown field `lisen`, expected one of `listen`, `base_path`, `public_url`, `tls_cert_file`, `tls_key_file`, `max_body_users`, `max_body_groups`, `header_timeout_secs`, `request_timeout_secs`, `body_timeout_secs`, `idle_timeout_secs`, `max_connections`, `shutdown_grace_secs`",
                "c.toml:9: targets[0].timeout_secs: invalid type: string \"10\", expected u64",
                "c.toml:15: targets[0].users.columns.first_name.form: unknown field `form`, expected one of `from`, `transform`, `default`, `constant`, `reference`, `by`, `type`, `true`, `false`",
                "c.toml:16: targets[0].users.columns.last_name: invalid type: integer `5`, expected a path or template string, or a column rule table",
                "c.toml:23: targets[1].type: unknown target type `ldapp`, expected `ldap` or `sql`",
            ]
        );
        // Env overrides still apply over a good file.
        let env = vec![("SCIM_SYNC__LOG__LEVEL".to_string(), "debug".to_string())];
        let c = parse("c.toml", BASE, &env).unwrap();
        assert_eq!(c.log.level, "debug");
        assert_eq!(c.targets.len(), 1);
    }

    #[test]
    fn targets_must_be_an_array_of_tables() {
        assert_eq!(
            all_errors("targets = \"x\"\n"),
            ["c.toml:1: targets: invalid type: string, expected an array of tables ([[targets]])"]
        );
        assert_eq!(
            all_errors("targets = [1]\n"),
            ["c.toml:1: targets[0]: invalid type, expected a table ([[targets]])"]
        );
    }

    #[test]
    fn the_line_of_a_validation_error_is_its_own_key() {
        // `in_file` places a key path found by a validator (mapping, settings).
        let line = |key: &str| ConfigError::invalid(key, "x").in_file("c.toml", BASE).line;
        assert_eq!(line("targets[0].users.columns.first_name"), Some(14));
        assert_eq!(line("targets[0].users.key"), Some(12));
        assert_eq!(line("targets[0].users.deactivate.policy"), Some(16));
        // A key the file does not have: the innermost table it has.
        assert_eq!(line("targets[0].users.deactivate.value"), Some(15));
        assert_eq!(line("log.level"), Some(20));
    }
}
