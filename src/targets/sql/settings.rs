//! The validated runtime settings of a SQL target, built from `config::target` by a pure
//! function that reports every problem with its full key: URL and backend, identifiers
//! (validated and quoted here, once), column types, deactivation and membership options.
//! Must not read files or the environment (the password is read in `conn.rs`).

use super::dialect::{Backend, Ident};
use crate::config::target::{
    OnDelete, OnExisting, RawSqlColumn, RawSqlTarget, RawSqlValue, SqlColumnType,
    SqlDeactivatePolicy,
};
use crate::mapping::ConfigError;
use crate::targets::PasswordSource;
use std::collections::BTreeMap;
use std::time::Duration;

/// One mapped column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// The lower-cased name (the rendered entry's attribute name).
    pub name: String,
    /// The quoted identifier.
    pub quoted: String,
    /// The conversion.
    pub ty: SqlColumnType,
    /// `flag`: the values written for true and false.
    pub flag: Option<(RawSqlValue, RawSqlValue)>,
}

/// Deactivation of users.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deactivate {
    /// The policy.
    pub policy: SqlDeactivatePolicy,
    /// `flag`/`timestamp`: the quoted column.
    pub column: Option<String>,
    /// `flag`: (inactive value, active value).
    pub flag: Option<(RawSqlValue, RawSqlValue)>,
}

/// A users or groups table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// Where it is configured, for messages: `target NAME, targets[i].users` (or `.groups`).
    pub origin: String,
    /// The quoted table.
    pub table: String,
    /// The quoted key column.
    pub key_column: String,
    /// The key's conversion (`text` or `integer`).
    pub key_type: SqlColumnType,
    /// The mapped columns, sorted by lower-cased name.
    pub columns: Vec<Column>,
}

/// The membership join table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    /// The quoted join table.
    pub table: String,
    /// The quoted join-table column identifying the group.
    pub group_column: String,
    /// The quoted groups-table column whose value `group_column` holds (`None`: the key).
    pub group_holds: Option<String>,
    /// The quoted join-table column identifying the member.
    pub user_column: String,
    /// The quoted users-table column whose value `user_column` holds (`None`: the key).
    pub user_holds: Option<String>,
}

/// Validated SQL target settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Target name.
    pub name: String,
    /// Its position in `[[targets]]` (config keys in messages: `targets[index].users...`).
    pub index: usize,
    /// The backend named by the URL.
    pub backend: Backend,
    /// The URL as configured (no password in it).
    pub url: String,
    /// The password source.
    pub password: PasswordSource,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Statement / lock-wait timeout, and the bound of one whole sync.
    pub timeout: Duration,
    /// A row with our key that we did not create.
    pub on_existing: OnExisting,
    /// Users.
    pub users: Table,
    /// What `active = false` does (`None`: column updates only).
    pub deactivate: Option<Deactivate>,
    /// What a SCIM DELETE does.
    pub on_delete: OnDelete,
    /// Groups (`None`: not provisioned).
    pub groups: Option<Table>,
    /// The membership join table.
    pub membership: Option<Membership>,
}

impl Settings {
    /// Validate the `index`th `[[targets]]` entry. Pure; returns every problem at once.
    ///
    /// # Errors
    /// Every problem, each naming its full key.
    pub fn from_raw(raw: &RawSqlTarget, index: usize) -> Result<Settings, Vec<ConfigError>> {
        let base = format!("targets[{index}]");
        let mut errors = Vec::new();
        let mut err = |k: &str, m: String| errors.push(ConfigError::new(format!("{base}.{k}"), m));
        let backend = Backend::from_url(&raw.url);
        if backend.is_none() {
            err(
                "url",
                format!(
                    "{:?} must be postgres://..., mysql://... or sqlite://<path>",
                    raw.url
                ),
            );
        }
        if backend.is_some_and(|b| b != Backend::Sqlite) && url_has_password(&raw.url) {
            err(
                "url",
                "must not contain a password; use password_file or password_env".into(),
            );
        }
        let password = match (&raw.password_file, &raw.password_env) {
            (Some(_), Some(_)) => {
                err(
                    "password_env",
                    "set only one of password_file and password_env".into(),
                );
                PasswordSource::None
            }
            (Some(f), None) => PasswordSource::File(f.clone()),
            (None, Some(v)) => PasswordSource::Env(v.clone()),
            (None, None) => PasswordSource::None,
        };
        if backend == Some(Backend::Sqlite) && password != PasswordSource::None {
            err("password_file", "SQLite takes no password".into());
        }
        if raw.connect_timeout_secs == 0 || raw.connect_timeout_secs > 600 {
            err("connect_timeout_secs", "must be between 1 and 600".into());
        }
        if raw.timeout_secs == 0 || raw.timeout_secs > 3600 {
            err("timeout_secs", "must be between 1 and 3600".into());
        }
        let b = backend.unwrap_or(Backend::Postgres);
        let mut ident = |k: &str, v: &str| match Ident::parse(v) {
            Ok(i) => b.quote(&i),
            Err(e) => {
                err(k, e);
                String::new()
            }
        };
        let users = table(
            &mut ident,
            format!("target {}, {base}.users", raw.name),
            "users",
            &raw.users.table,
            &raw.users.key_column,
            &raw.users.key,
            &raw.users.columns,
        );
        let deactivate = raw.users.deactivate.as_ref().map(|d| Deactivate {
            policy: d.policy,
            column: d
                .column
                .as_ref()
                .map(|c| ident("users.deactivate.column", c)),
            flag: d.value.clone().zip(d.active_value.clone()),
        });
        let groups = raw.groups.as_ref().map(|g| {
            table(
                &mut ident,
                format!("target {}, {base}.groups", raw.name),
                "groups",
                &g.table,
                &g.key_column,
                &g.key,
                &g.columns,
            )
        });
        let membership = raw
            .groups
            .as_ref()
            .and_then(|g| g.membership.as_ref())
            .map(|m| Membership {
                table: ident("groups.membership.table", &m.table),
                group_column: ident("groups.membership.group_column", &m.group_column),
                group_holds: m
                    .group_holds
                    .as_ref()
                    .filter(|h| !h.eq_ignore_ascii_case(&group_key_column(raw)))
                    .map(|h| ident("groups.membership.group_holds", h)),
                user_column: ident("groups.membership.user_column", &m.user_column),
                user_holds: m
                    .user_holds
                    .as_ref()
                    .filter(|h| !h.eq_ignore_ascii_case(&raw.users.key_column))
                    .map(|h| ident("groups.membership.user_holds", h)),
            });
        // Checks that need the columns.
        check_columns(
            &mut err,
            "users",
            &raw.users.key,
            &raw.users.key_column,
            &raw.users.columns,
        );
        if let Some(g) = &raw.groups {
            check_columns(&mut err, "groups", &g.key, &g.key_column, &g.columns);
        }
        if let Some(d) = &raw.users.deactivate {
            let needs_column = d.policy != SqlDeactivatePolicy::Delete;
            match (&d.column, needs_column) {
                (None, true) => err(
                    "users.deactivate.column",
                    "policies \"flag\" and \"timestamp\" need a column".into(),
                ),
                (Some(_), false) => err(
                    "users.deactivate.column",
                    "policy \"delete\" takes no column".into(),
                ),
                (Some(c), true) => {
                    if c.eq_ignore_ascii_case(&raw.users.key_column)
                        || raw.users.columns.keys().any(|k| k.eq_ignore_ascii_case(c))
                    {
                        err(
                            "users.deactivate.column",
                            "is also the key or a mapped column".into(),
                        );
                    }
                }
                (None, false) => {}
            }
            let flag = d.policy == SqlDeactivatePolicy::Flag;
            if flag && (d.value.is_none() || d.active_value.is_none()) {
                err(
                    "users.deactivate.value",
                    "policy \"flag\" needs value and active_value".into(),
                );
            }
            if !flag && (d.value.is_some() || d.active_value.is_some()) {
                err(
                    "users.deactivate.value",
                    "value and active_value are only used with policy \"flag\"".into(),
                );
            }
        }
        if raw.users.on_delete == OnDelete::Disable
            && raw
                .users
                .deactivate
                .as_ref()
                .is_none_or(|d| d.policy == SqlDeactivatePolicy::Delete)
        {
            err(
                "users.on_delete",
                "\"disable\" needs users.deactivate with policy \"flag\" or \"timestamp\"".into(),
            );
        }
        if let Some(g) = &raw.groups {
            if let Some(m) = &g.membership {
                if m.group_column.eq_ignore_ascii_case(&m.user_column) {
                    err(
                        "groups.membership.user_column",
                        "must differ from group_column".into(),
                    );
                }
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Settings {
            name: raw.name.clone(),
            index,
            backend: b,
            url: raw.url.clone(),
            password,
            connect_timeout: Duration::from_secs(raw.connect_timeout_secs),
            timeout: Duration::from_secs(raw.timeout_secs),
            on_existing: raw.on_existing,
            users,
            deactivate,
            on_delete: raw.users.on_delete,
            groups,
            membership,
        })
    }
}

fn group_key_column(raw: &RawSqlTarget) -> String {
    raw.groups
        .as_ref()
        .map(|g| g.key_column.clone())
        .unwrap_or_default()
}

fn table(
    ident: &mut dyn FnMut(&str, &str) -> String,
    origin: String,
    kind: &str,
    table: &str,
    key_column: &str,
    key: &RawSqlColumn,
    columns: &BTreeMap<String, RawSqlColumn>,
) -> Table {
    Table {
        origin,
        table: ident(&format!("{kind}.table"), table),
        key_column: ident(&format!("{kind}.key_column"), key_column),
        key_type: key.column_type(),
        columns: columns
            .iter()
            .map(|(name, c)| Column {
                name: name.to_ascii_lowercase(),
                quoted: ident(&format!("{kind}.columns.{name}"), name),
                ty: c.column_type(),
                flag: match c {
                    RawSqlColumn::Table(t) if t.column_type == SqlColumnType::Flag => Some((
                        t.true_value
                            .clone()
                            .unwrap_or(RawSqlValue::Text("Y".into())),
                        t.false_value
                            .clone()
                            .unwrap_or(RawSqlValue::Text("N".into())),
                    )),
                    _ => None,
                },
            })
            .collect(),
    }
}

fn check_columns(
    err: &mut dyn FnMut(&str, String),
    kind: &str,
    key: &RawSqlColumn,
    key_column: &str,
    columns: &BTreeMap<String, RawSqlColumn>,
) {
    if !matches!(
        key.column_type(),
        SqlColumnType::Text | SqlColumnType::Integer
    ) {
        err(
            &format!("{kind}.key"),
            "a key is of type \"text\" or \"integer\"".into(),
        );
    }
    if let RawSqlColumn::Table(t) = key {
        if t.true_value.is_some() || t.false_value.is_some() {
            err(
                &format!("{kind}.key"),
                "true/false are only used with type \"flag\"".into(),
            );
        }
    }
    if let Some(why) = never_an_integer(key) {
        err(&format!("{kind}.key"), why);
    }
    for (name, c) in columns {
        let k = format!("{kind}.columns.{name}");
        if let Some(why) = never_an_integer(c) {
            err(&k, why);
        }
        if name.eq_ignore_ascii_case(key_column) {
            err(
                &k,
                "is the key column; it is written from the key rule".into(),
            );
        }
        if let RawSqlColumn::Table(t) = c {
            let has_flag_values = t.true_value.is_some() || t.false_value.is_some();
            if has_flag_values && t.column_type != SqlColumnType::Flag {
                err(&k, "true/false are only used with type \"flag\"".into());
            }
            if t.column_type == SqlColumnType::Flag {
                if let (Some(a), Some(b)) = (&t.true_value, &t.false_value) {
                    if a == b {
                        err(&k, "true and false must differ".into());
                    }
                }
            }
        }
    }
}

/// Why an `integer` column's rule can never render an integer: a template with literal text
/// (`"L{x}"`) or a constant or default that is not one. A plain path may hold digits.
fn never_an_integer(c: &RawSqlColumn) -> Option<String> {
    if c.column_type() != SqlColumnType::Integer {
        return None;
    }
    let literal_text = |t: &str| -> Option<String> {
        if !t.contains('{') {
            return None;
        }
        let mut outside = String::new();
        let mut depth = 0usize;
        for ch in t.chars() {
            match ch {
                '{' => depth += 1,
                '}' => depth = depth.saturating_sub(1),
                _ if depth == 0 => outside.push(ch),
                _ => {}
            }
        }
        outside
            .chars()
            .any(|ch| !(ch.is_ascii_digit() || ch == '-' || ch == '+' || ch.is_whitespace()))
            .then(|| {
                format!(
                    "type \"integer\" of the template {t:?}, whose literal text {:?} is not a number: no rendered value can convert",
                    outside.trim()
                )
            })
    };
    let not_int = |v: &str| v.trim().parse::<i64>().is_err();
    match c {
        RawSqlColumn::Expr(e) => literal_text(e),
        RawSqlColumn::Table(t) => {
            if let Some(why) = t.from.as_deref().and_then(literal_text) {
                return Some(why);
            }
            for (what, v) in [("constant", &t.constant), ("default", &t.default)] {
                if let Some(bad) = v
                    .as_ref()
                    .and_then(|v| v.to_vec().into_iter().find(|x| not_int(x)))
                {
                    return Some(format!(
                        "type \"integer\" with the {what} {bad:?}, which is not an integer"
                    ));
                }
            }
            None
        }
    }
}

/// Whether the URL's user-info part carries a password (`user:pw@`).
fn url_has_password(url: &str) -> bool {
    url.split_once("://")
        .map(|(_, rest)| rest.split(['/', '?']).next().unwrap_or_default())
        .and_then(|authority| authority.rsplit_once('@'))
        .is_some_and(|(userinfo, _)| userinfo.contains(':'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::target::RawTarget;

    const BASE: &str = r#"
name = "legacy"
type = "sql"
url = "postgres://app@127.0.0.1/app"
password_env = "APP_DB_PW"
[users]
table = "legacy.app_users"
key_column = "login"
key = "userName"
[users.columns]
first_name = "name.givenName"
is_active = { from = "active", type = "flag", true = "Y", false = "N" }
emp_no = { from = "externalId", type = "integer" }
[users.deactivate]
policy = "flag"
column = "locked"
value = 1
active_value = 0
[groups]
table = "app_groups"
key_column = "group_name"
key = "displayName"
[groups.membership]
table = "app_user_groups"
group_column = "group_name"
user_column = "login"
user_holds = "user_id"
"#;

    fn parse(text: &str) -> RawSqlTarget {
        match toml::from_str::<RawTarget>(text).unwrap() {
            RawTarget::Sql(s) => s,
            RawTarget::Ldap(_) => panic!("sql expected"),
        }
    }

    fn errs(text: &str) -> Vec<String> {
        Settings::from_raw(&parse(text), 2)
            .err()
            .unwrap_or_default()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn valid_config_is_quoted_once() {
        let s = Settings::from_raw(&parse(BASE), 0).unwrap();
        assert_eq!(s.backend, Backend::Postgres);
        assert_eq!(s.users.table, "\"legacy\".\"app_users\"");
        assert_eq!(s.users.columns.len(), 3);
        let flag = s
            .users
            .columns
            .iter()
            .find(|c| c.name == "is_active")
            .unwrap();
        assert_eq!(
            flag.flag,
            Some((RawSqlValue::Text("Y".into()), RawSqlValue::Text("N".into())))
        );
        let d = s.deactivate.unwrap();
        assert_eq!(
            d.flag,
            Some((RawSqlValue::Integer(1), RawSqlValue::Integer(0)))
        );
        let m = s.membership.unwrap();
        assert_eq!(m.user_column, "\"login\"");
        assert_eq!(m.user_holds.as_deref(), Some("\"user_id\""));
        assert_eq!(m.group_holds, None);
        let my = BASE.replace("postgres://", "mysql://");
        let s = Settings::from_raw(&parse(&my), 0).unwrap();
        assert_eq!(s.users.table, "`legacy`.`app_users`");
    }

    #[test]
    fn every_problem_names_its_key() {
        let text = BASE
            .replace("postgres://app@", "postgres://app:secret@")
            .replace("\"legacy.app_users\"", "\"app users; drop\"")
            .replace("first_name =", "\"first-name\" =")
            .replace("column = \"locked\"", "column = \"emp_no\"")
            .replace("user_column = \"login\"", "user_column = \"group_name\"")
            .replace(
                "key = \"userName\"",
                "key = { from = \"userName\", type = \"flag\" }",
            )
            .replace("timeout", "x");
        let e = errs(&text);
        for want in [
            "targets[2].url: must not contain a password",
            "targets[2].users.table: ",
            "targets[2].users.columns.first-name: ",
            "targets[2].users.deactivate.column: is also the key or a mapped column",
            "targets[2].groups.membership.user_column: must differ",
            "targets[2].users.key: a key is of type",
        ] {
            assert!(
                e.iter().any(|m| m.starts_with(want)),
                "{want} missing in {e:?}"
            );
        }
        let e = errs(&BASE.replace("postgres://", "ldap://"));
        assert!(e[0].starts_with("targets[2].url: "), "{e:?}");
        let e = errs(&BASE.replace("value = 1\n", ""));
        assert!(
            e[0].starts_with("targets[2].users.deactivate.value"),
            "{e:?}"
        );
        let e = errs(
            &BASE
                .replace(
                    "key = \"userName\"\n",
                    "key = \"userName\"\non_delete = \"disable\"\n",
                )
                .replace(
                    "policy = \"flag\"\ncolumn = \"locked\"\nvalue = 1\nactive_value = 0",
                    "policy = \"delete\"",
                ),
        );
        assert!(
            e.iter()
                .any(|m| m.starts_with("targets[2].users.on_delete")),
            "{e:?}"
        );
    }

    #[test]
    fn misspelled_keys_and_inline_passwords_are_rejected() {
        for (from, to) in [
            ("key_column = \"login\"", "key_colum = \"login\""),
            ("type = \"integer\"", "typ = \"integer\""),
            ("policy = \"flag\"", "policy = \"flags\""),
            ("group_column", "group_col"),
            ("url =", "password = \"x\"\nurl ="),
        ] {
            let text = BASE.replacen(from, to, 1);
            assert!(toml::from_str::<RawTarget>(&text).is_err(), "accepted {to}");
        }
    }

    #[test]
    fn url_password_detection() {
        assert!(url_has_password("postgres://u:p@h/db"));
        assert!(!url_has_password("postgres://u@h/db"));
        assert!(!url_has_password("postgres://h/db?x=a:b@c"));
    }
}
