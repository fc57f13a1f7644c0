//! The live column types (`check-config --connect`, a reload, the start's healthcheck): each
//! mapped column's declared type is read from the server (PostgreSQL `pg_attribute`,
//! MariaDB/MySQL `information_schema.COLUMNS`, SQLite `pragma_table_info`) and checked
//! against what the rule writes into it, so an impossible conversion is refused before
//! anything is written, naming the target, table, column and config key:
//! - text (no `type`, or a flag whose values are strings) into an integer, boolean or
//!   timestamp column (`set type = "integer"` ...), e.g. a text key on an integer column;
//! - a boolean (`type = "boolean"`, or a flag written with TOML booleans `true = true`) into a
//!   text column, where it would land as the text `true`/`1`, or into a timestamp column
//!   (and, on PostgreSQL, an integer column);
//! - an integer into a timestamp column (and, on PostgreSQL, a boolean column);
//! - a timestamp into an integer or boolean column;
//! - a membership column of another kind than the key (or `*_holds` column) it holds.
//!
//! A type we do not classify (uuid, json, ...) is not checked.

use super::conn::{Bind, Conn, Db};
use super::dialect::Backend;
use super::settings::Settings;
use crate::config::target::{RawSqlValue, SqlColumnType, SqlDeactivatePolicy};
use crate::targets::{ErrorClass, TargetError};
use diesel::result::Error as DieselError;

/// What a declared column type holds, as far as our conversions care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Text,
    Integer,
    /// A boolean (MariaDB's `tinyint(1)` too, which also takes integers).
    Boolean,
    Timestamp,
    /// Anything else: not checked.
    Other,
}

/// What a rule binds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    Text,
    Integer,
    Boolean,
    Timestamp,
}

impl Written {
    fn of(ty: SqlColumnType, flag: Option<&(RawSqlValue, RawSqlValue)>) -> Written {
        match (ty, flag) {
            (SqlColumnType::Integer, _) => Written::Integer,
            (SqlColumnType::Boolean, _) => Written::Boolean,
            (SqlColumnType::Timestamp, _) => Written::Timestamp,
            (SqlColumnType::Flag, Some((v, _))) => Written::of_literal(v),
            _ => Written::Text,
        }
    }

    fn of_literal(v: &RawSqlValue) -> Written {
        match v {
            RawSqlValue::Bool(_) => Written::Boolean,
            RawSqlValue::Integer(_) => Written::Integer,
            RawSqlValue::Text(_) => Written::Text,
        }
    }
}

/// The class of a declared type on a backend.
#[must_use]
pub fn classify(backend: Backend, declared: &str) -> Class {
    let t = declared.trim().to_ascii_lowercase();
    let has = |w: &str| t.contains(w);
    match backend {
        Backend::Postgres => {
            if t == "boolean" {
                Class::Boolean
            } else if matches!(t.as_str(), "smallint" | "integer" | "bigint")
                || t.starts_with("numeric")
            {
                Class::Integer
            } else if t.starts_with("character")
                || t.starts_with("varchar")
                || t.starts_with("char")
                || t == "text"
                || t == "citext"
                || t == "name"
            {
                Class::Text
            } else if t.starts_with("timestamp") || t == "date" {
                Class::Timestamp
            } else {
                Class::Other
            }
        }
        Backend::Mysql => {
            if t.starts_with("tinyint(1)") || t == "boolean" || t == "bool" {
                Class::Boolean
            } else if has("int") || t.starts_with("decimal") || t.starts_with("numeric") {
                Class::Integer
            } else if has("char") || has("text") || t.starts_with("enum") || t.starts_with("set(") {
                Class::Text
            } else if t.starts_with("datetime") || t.starts_with("timestamp") || t == "date" {
                Class::Timestamp
            } else {
                Class::Other
            }
        }
        // SQLite's type affinity rules (in their order), plus booleans and dates by name.
        Backend::Sqlite => {
            if has("int") {
                Class::Integer
            } else if has("char") || has("clob") || has("text") {
                Class::Text
            } else if has("bool") {
                Class::Boolean
            } else if has("date") || has("time") {
                Class::Timestamp
            } else {
                Class::Other
            }
        }
    }
}

/// Why `written` cannot go into a column of class `class` (`None`: it can).
#[must_use]
pub fn refusal(backend: Backend, written: Written, class: Class) -> Option<&'static str> {
    let pg = backend == Backend::Postgres;
    match (written, class) {
        (_, Class::Other) => None,
        (Written::Text, Class::Integer) => {
            Some("the rule writes text: set type = \"integer\" (or map a text column)")
        }
        (Written::Text, Class::Boolean) => {
            Some("the rule writes text: set type = \"boolean\" or \"flag\" with values the column takes")
        }
        (Written::Text, Class::Timestamp) => {
            Some("the rule writes text: set type = \"timestamp\" (RFC 3339 values)")
        }
        (Written::Boolean, Class::Text) => Some(
            "the rule writes a boolean, which would land as the text 'true'/'1': write the flag values as strings (true = \"Y\", false = \"N\") or map a boolean column",
        ),
        (Written::Boolean, Class::Timestamp) | (Written::Integer, Class::Timestamp) => {
            Some("a timestamp column takes type = \"timestamp\" only")
        }
        (Written::Boolean, Class::Integer) if pg => Some(
            "PostgreSQL does not store a boolean in an integer column: write the flag values as integers (true = 1, false = 0)",
        ),
        (Written::Integer, Class::Boolean) if pg => Some(
            "PostgreSQL does not store an integer in a boolean column: set type = \"boolean\" or write the flag values as TOML booleans",
        ),
        (Written::Timestamp, Class::Integer | Class::Boolean) => {
            Some("the rule writes a timestamp into a column that holds none")
        }
        _ => None,
    }
}

/// One checked column: (config key, quoted table, quoted column, what is written).
struct Check {
    key: String,
    table: String,
    column: String,
    written: Written,
}

fn checks(s: &Settings) -> Vec<Check> {
    let base = format!("targets[{}]", s.index);
    let mut out = Vec::new();
    let mut tables = vec![("users", &s.users)];
    if let Some(g) = &s.groups {
        tables.push(("groups", g));
    }
    for (kind, t) in tables {
        out.push(Check {
            key: format!("{base}.{kind}.key"),
            table: t.table.clone(),
            column: t.key_column.clone(),
            written: Written::of(t.key_type, None),
        });
        for c in &t.columns {
            out.push(Check {
                key: format!("{base}.{kind}.columns.{}", unquote(&c.quoted)),
                table: t.table.clone(),
                column: c.quoted.clone(),
                written: Written::of(c.ty, c.flag.as_ref()),
            });
        }
    }
    // A join-table column holding a key is bound as that key; one holding another column
    // (`user_holds`, `group_holds`) is compared with it in [`pairs`].
    if let Some(m) = &s.membership {
        if m.user_holds.is_none() {
            out.push(Check {
                key: format!("{base}.groups.membership.user_column"),
                table: m.table.clone(),
                column: m.user_column.clone(),
                written: Written::of(s.users.key_type, None),
            });
        }
        if let (None, Some(g)) = (&m.group_holds, &s.groups) {
            out.push(Check {
                key: format!("{base}.groups.membership.group_column"),
                table: m.table.clone(),
                column: m.group_column.clone(),
                written: Written::of(g.key_type, None),
            });
        }
    }
    if let Some(d) = &s.deactivate {
        if let Some(column) = &d.column {
            let written = match (d.policy, &d.flag) {
                (SqlDeactivatePolicy::Timestamp, _) => Written::Timestamp,
                (_, Some((v, _))) => Written::of_literal(v),
                _ => Written::Text,
            };
            out.push(Check {
                key: format!("{base}.users.deactivate.column"),
                table: s.users.table.clone(),
                column: column.clone(),
                written,
            });
        }
    }
    out
}

/// Join-table columns that hold another table's column: (config key, join table, join column,
/// held table, held column).
fn pairs(s: &Settings) -> Vec<(String, String, String, String, String)> {
    let base = format!("targets[{}]", s.index);
    let mut out = Vec::new();
    if let Some(m) = &s.membership {
        if let Some(h) = &m.user_holds {
            out.push((
                format!("{base}.groups.membership.user_holds"),
                m.table.clone(),
                m.user_column.clone(),
                s.users.table.clone(),
                h.clone(),
            ));
        }
        if let (Some(h), Some(g)) = (&m.group_holds, &s.groups) {
            out.push((
                format!("{base}.groups.membership.group_holds"),
                m.table.clone(),
                m.group_column.clone(),
                g.table.clone(),
                h.clone(),
            ));
        }
    }
    out
}

/// An identifier without its quotes (`"a"."b"` -> `a.b`).
fn unquote(quoted: &str) -> String {
    quoted.replace(['"', '`'], "")
}

/// The declared type of a column, `None` when the server has no such column.
fn declared(
    db: &mut dyn Db,
    b: Backend,
    table: &str,
    column: &str,
) -> Result<Option<String>, DieselError> {
    let column = unquote(column);
    let plain = unquote(table);
    let (schema, name) = match plain.split_once('.') {
        Some((s, n)) => (Some(s.to_owned()), n.to_owned()),
        None => (None, plain.clone()),
    };
    let rows = match b {
        Backend::Postgres => db.load_text(
            "SELECT format_type(a.atttypid, a.atttypmod) AS v FROM pg_attribute a \
             WHERE a.attrelid = to_regclass($1) AND a.attname = $2 AND a.attnum > 0 \
             AND NOT a.attisdropped",
            &[Bind::Text(Some(table.to_owned())), Bind::Text(Some(column))],
        )?,
        Backend::Mysql => db.load_text(
            "SELECT CAST(COLUMN_TYPE AS CHAR) AS v FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA = COALESCE(?, DATABASE()) AND TABLE_NAME = ? AND COLUMN_NAME = ?",
            &[
                Bind::Text(schema),
                Bind::Text(Some(name)),
                Bind::Text(Some(column)),
            ],
        )?,
        Backend::Sqlite => db.load_text(
            "SELECT type AS v FROM pragma_table_info(?, ?) WHERE name = ? COLLATE NOCASE",
            &[
                Bind::Text(Some(name)),
                Bind::Text(Some(schema.unwrap_or_else(|| "main".into()))),
                Bind::Text(Some(column)),
            ],
        )?,
    };
    Ok(rows.into_iter().next().map(Option::unwrap_or_default))
}

/// Every impossible conversion of the target's mapped columns, one message each, naming the
/// target, table, column, its declared type and the config key.
///
/// # Errors
/// A database error while reading the types.
pub(super) fn problems(s: &Settings, db: &mut dyn Db) -> Result<Vec<String>, DieselError> {
    let mut out = Vec::new();
    for c in checks(s) {
        let Some(declared) = declared(db, s.backend, &c.table, &c.column)? else {
            // The existence check before this one names a missing column.
            continue;
        };
        if let Some(why) = refusal(s.backend, c.written, classify(s.backend, &declared)) {
            out.push(format!(
                "target {}: {}.{} is {declared}, {why} (config key {})",
                s.name,
                unquote(&c.table),
                unquote(&c.column),
                c.key
            ));
        }
    }
    for (key, join_table, join_col, held_table, held_col) in pairs(s) {
        let (Some(join), Some(held)) = (
            declared(db, s.backend, &join_table, &join_col)?,
            declared(db, s.backend, &held_table, &held_col)?,
        ) else {
            continue;
        };
        let (a, b) = (classify(s.backend, &join), classify(s.backend, &held));
        if a != b && a != Class::Other && b != Class::Other {
            out.push(format!(
                "target {}: {}.{} is {join} but holds {}.{}, which is {held}: the two must hold the same kind of value (config key {key})",
                s.name,
                unquote(&join_table),
                unquote(&join_col),
                unquote(&held_table),
                unquote(&held_col),
            ));
        }
    }
    Ok(out)
}

/// [`problems`] in one read transaction: a permanent `config` error listing them all.
///
/// # Errors
/// The problems found, or a database error (classified).
pub(super) fn check(s: &Settings, conn: &mut Conn) -> Result<(), TargetError> {
    let found = conn
        .transaction(false, |db| Ok(problems(s, db)?))
        .map_err(|e| super::apply::tx_error(e, &format!("column types of target {}", s.name)))?;
    if found.is_empty() {
        return Ok(());
    }
    Err(TargetError {
        class: ErrorClass::Permanent,
        code: Some("config".into()),
        message: found.join("; "),
    })
}

/// [`check`] once per target (its first healthcheck or sync), the answer kept in `cache`
/// unless it was a transient failure: a sync whose columns cannot take what the rules write
/// fails before anything is written, even when no check ran before it (a target that was
/// down at start). A column altered afterwards is seen after a reload or a restart.
///
/// # Errors
/// The problems found (permanent), or a database error.
pub(super) fn checked(
    s: &Settings,
    conn: &mut Conn,
    cache: &std::sync::Mutex<Option<Result<(), TargetError>>>,
) -> Result<(), TargetError> {
    let known = match cache.lock() {
        Ok(g) => g.clone(),
        Err(p) => p.into_inner().clone(),
    };
    if let Some(answer) = known {
        return answer;
    }
    let answer = check(s, conn);
    if answer
        .as_ref()
        .err()
        .is_none_or(|e| e.class == ErrorClass::Permanent)
    {
        match cache.lock() {
            Ok(mut g) => *g = Some(answer.clone()),
            Err(p) => *p.into_inner() = Some(answer.clone()),
        }
    }
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_types_classify_per_backend() {
        use Backend::{Mysql, Postgres, Sqlite};
        for (b, t, want) in [
            (Postgres, "integer", Class::Integer),
            (Postgres, "character varying(40)", Class::Text),
            (Postgres, "timestamp with time zone", Class::Timestamp),
            (Postgres, "boolean", Class::Boolean),
            (Postgres, "uuid", Class::Other),
            (Mysql, "tinyint(1)", Class::Boolean),
            (Mysql, "int(11)", Class::Integer),
            (Mysql, "varchar(40)", Class::Text),
            (Mysql, "datetime", Class::Timestamp),
            (Sqlite, "INTEGER", Class::Integer),
            (Sqlite, "VARCHAR(10)", Class::Text),
            (Sqlite, "DATETIME", Class::Timestamp),
            (Sqlite, "", Class::Other),
        ] {
            assert_eq!(classify(b, t), want, "{b:?} {t}");
        }
    }

    #[test]
    fn impossible_conversions_are_refused_and_the_rest_pass() {
        let pg = Backend::Postgres;
        assert!(refusal(pg, Written::Text, Class::Integer).is_some());
        assert!(refusal(pg, Written::Text, Class::Timestamp).is_some());
        assert!(refusal(pg, Written::Boolean, Class::Text).is_some());
        assert!(refusal(pg, Written::Boolean, Class::Integer).is_some());
        assert!(refusal(Backend::Mysql, Written::Boolean, Class::Integer).is_none());
        assert!(refusal(pg, Written::Integer, Class::Text).is_none());
        assert!(refusal(pg, Written::Timestamp, Class::Timestamp).is_none());
        assert!(refusal(pg, Written::Text, Class::Other).is_none());
    }
}
