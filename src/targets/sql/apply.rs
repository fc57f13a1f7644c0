//! Making one row (and, for groups, its membership rows) match the desired state, in ONE
//! transaction: read the row by key (mapped columns only), ownership check, INSERT or UPDATE
//! of the mapped columns that differ (via `mapping::diff`), renames as an UPDATE of the key
//! column, the deactivation policy, membership rows added and removed as a difference, and
//! deletes. Every value is a bound parameter; identifiers were validated and quoted at load.
//! Runs on a blocking thread (see `conn.rs`). Must not know SCIM or the store.
//!
//! NUL bytes: PostgreSQL refuses them in text, so they are removed from every value (and
//! key) on every backend before it is bound or compared; the rest of the value is stored.

use super::conn::{Bind, Conn, Db, TxError};
use super::settings::{Column, Settings, Table};
use crate::bookkeeping::{Bookkeeping, Disabled};
use crate::config::target::{OnDelete, RawSqlValue, SqlColumnType, SqlDeactivatePolicy};
use crate::mapping::{diff, Entry};
use crate::targets::plan::{self, Found};
use crate::targets::{Change, Desired, ErrorClass, Kind, Outcome, Prior, TargetError};
use std::collections::{BTreeMap, BTreeSet};

/// Longest value shown in a change line.
const SHOW_MAX: usize = 80;

/// Membership rows per INSERT or DELETE statement.
const MEMBER_CHUNK: usize = 500;

fn permanent(message: String) -> TargetError {
    TargetError {
        class: ErrorClass::Permanent,
        code: None,
        message,
    }
}

/// Entry point of `Target::sync` for SQL: one transaction on `conn`.
pub(super) fn sync(
    s: &Settings,
    conn: &mut Conn,
    change: Change<'_>,
    prior: &Prior,
    dry_run: bool,
) -> Result<Outcome, TargetError> {
    let what = format!("sync in target {}", s.name);
    let result = conn.transaction(!dry_run, |db| {
        let mut tx = Tx {
            db,
            s,
            dry_run,
            changes: Vec::new(),
            foreign: Vec::new(),
        };
        let (key, extra) = match change {
            Change::Remove { kind } => remove(&mut tx, prior, kind)?,
            Change::Upsert(d) if d.kind == Kind::User => sync_user(&mut tx, d, prior)?,
            Change::Upsert(d) => sync_group(&mut tx, d, prior)?,
        };
        if !dry_run {
            // The commit is the write: it starts only while its timeout remains on the claim
            // (else the transaction rolls back and nothing was written).
            prior.lease.check(s.timeout)?;
        }
        Ok(Outcome {
            key,
            extra,
            changes: tx.changes,
            foreign: tx.foreign,
        })
    });
    result.map_err(|e| tx_error(e, &what))
}

/// `SELECT <every configured column> FROM <table> LIMIT 1` for the users table, and the
/// groups and join tables when configured: a real connection and read that also proves every
/// mapped table and column exists (a misspelt one is a permanent error naming it).
pub(super) fn healthcheck(s: &Settings, conn: &mut Conn) -> Result<(), TargetError> {
    let b = s.backend;
    let mut checks: Vec<(String, Vec<String>)> = Vec::new();
    let mut cols = vec![s.users.key_column.clone()];
    cols.extend(s.users.columns.iter().map(|c| c.quoted.clone()));
    cols.extend(deact_column(s).map(str::to_owned));
    checks.push((s.users.table.clone(), cols));
    if let Some(g) = &s.groups {
        let mut cols = vec![g.key_column.clone()];
        cols.extend(g.columns.iter().map(|c| c.quoted.clone()));
        checks.push((g.table.clone(), cols));
    }
    if let Some(m) = &s.membership {
        checks.push((
            m.table.clone(),
            vec![m.group_column.clone(), m.user_column.clone()],
        ));
        if let (Some(h), Some(g)) = (&m.group_holds, &s.groups) {
            checks.push((g.table.clone(), vec![h.clone()]));
        }
        if let Some(h) = &m.user_holds {
            checks.push((s.users.table.clone(), vec![h.clone()]));
        }
    }
    let what = format!("healthcheck of target {}", s.name);
    conn.transaction(false, |db| {
        for (table, cols) in &checks {
            let exprs: Vec<String> = cols.iter().map(|c| b.as_text(c)).collect();
            let sql = format!("SELECT {} AS v FROM {table} LIMIT 1", b.json_array(&exprs));
            db.load_text(&sql, &[])?;
        }
        Ok(())
    })
    .map_err(|e| tx_error(e, &what))
}

/// A [`TxError`] as a classified [`TargetError`].
pub(super) fn tx_error(e: TxError, what: &str) -> TargetError {
    match e {
        TxError::Target(t) => t,
        TxError::Db(d) => super::conn::classify(&d, what),
    }
}

/// One transaction's reads and (unless a dry run) writes, with the change lines.
struct Tx<'a> {
    db: &'a mut dyn Db,
    s: &'a Settings,
    dry_run: bool,
    changes: Vec<String>,
    /// Membership rows found that we did not write and kept (see [`Outcome::foreign`]).
    foreign: Vec<String>,
}

/// A statement being built: SQL with placeholders, its binds, and the line shown in changes.
struct Stmt {
    sql: String,
    shown: String,
    binds: Vec<Bind>,
}

impl Stmt {
    fn new() -> Stmt {
        Stmt {
            sql: String::new(),
            shown: String::new(),
            binds: Vec::new(),
        }
    }

    fn raw(&mut self, text: &str) -> &mut Self {
        self.sql.push_str(text);
        self.shown.push_str(text);
        self
    }

    /// A bound value; `secret` hides it from the change line.
    fn value(&mut self, s: &Settings, b: Bind, ty: SqlColumnType, secret: bool) -> &mut Self {
        self.sql
            .push_str(&s.backend.placeholder(self.binds.len() + 1, ty));
        self.shown.push_str(&if secret {
            "'[redacted]'".to_owned()
        } else {
            show(&b)
        });
        self.binds.push(b);
        self
    }
}

fn show(b: &Bind) -> String {
    match b {
        Bind::Text(None) | Bind::Int(None) | Bind::Bool(None) => "NULL".into(),
        Bind::Text(Some(t)) => {
            let mut v: String = t.chars().take(SHOW_MAX).collect();
            if t.chars().count() > SHOW_MAX {
                v.push_str("...");
            }
            format!("'{}'", v.replace('\'', "''"))
        }
        Bind::Int(Some(i)) => i.to_string(),
        Bind::Bool(Some(x)) => if *x { "TRUE" } else { "FALSE" }.into(),
    }
}

/// Columns whose values never appear in change lines.
fn is_secret(column: &str) -> bool {
    let c = column.to_ascii_lowercase();
    ["password", "passwd", "pwd", "secret", "hash"]
        .iter()
        .any(|p| c.contains(p))
}

impl Tx<'_> {
    fn load(&mut self, st: &Stmt) -> Result<Vec<Option<String>>, TxError> {
        Ok(self.db.load_text(&st.sql, &st.binds)?)
    }

    fn write(&mut self, st: &Stmt) -> Result<usize, TxError> {
        self.changes.push(st.shown.clone());
        if self.dry_run {
            return Ok(1);
        }
        // Some database messages name no column ("value too long for type character
        // varying(1)"): the statement (placeholders, never values) names table and columns.
        self.db.execute(&st.sql, &st.binds).map_err(|e| {
            TxError::Target(super::conn::classify(
                &e,
                &format!("target {}: {}", self.s.name, st.sql),
            ))
        })
    }

    /// Read the row with this key: (column -> text) for the key, the mapped columns and the
    /// deactivation column. `None` when there is no row; an error when the key is not unique.
    fn read(
        &mut self,
        t: &Table,
        extra_col: Option<&str>,
        key: &Bind,
        key_ty: SqlColumnType,
    ) -> Result<Option<BTreeMap<String, Option<String>>>, TxError> {
        let b = self.s.backend;
        let mut names: Vec<String> = t.columns.iter().map(|c| c.name.clone()).collect();
        let mut exprs: Vec<String> = t.columns.iter().map(|c| b.as_text(&c.quoted)).collect();
        if let Some(c) = extra_col {
            names.push(DEACT.into());
            exprs.push(b.as_text(c));
        }
        // The key as stored: with a case-insensitive collation it may differ from ours.
        names.push(KEY.into());
        exprs.push(b.as_text(&t.key_column));
        let mut st = Stmt::new();
        st.raw(&format!(
            "SELECT {} AS v FROM {} WHERE {} = ",
            b.json_array(&exprs),
            t.table,
            t.key_column
        ))
        .value(self.s, key.clone(), key_ty, false)
        .raw(" LIMIT 2");
        let rows = self.load(&st)?;
        if rows.len() > 1 {
            return Err(permanent(format!(
                "{}: more than one row has {} = {}; the key column must be unique",
                t.table,
                t.key_column,
                show(key)
            ))
            .into());
        }
        let Some(row) = rows.into_iter().next() else {
            return Ok(None);
        };
        let values: Vec<Option<String>> = serde_json::from_str(row.as_deref().unwrap_or("[]"))
            .map_err(|e| permanent(format!("{}: unreadable row: {e}", t.table)))?;
        Ok(Some(names.into_iter().zip(values).collect()))
    }
}

const DEACT: &str = "\u{0}deactivate";
const KEY: &str = "\u{0}key";

/// The key as a bind and as the canonical text recorded in `Outcome.key`.
fn convert_key(ty: SqlColumnType, key: &str, what: &str) -> Result<(Bind, String), TargetError> {
    let clean = key.replace('\0', "");
    match ty {
        SqlColumnType::Integer => {
            let i: i64 = clean
                .trim()
                .parse()
                .map_err(|_| permanent(format!("{what}: key {clean:?} is not an integer")))?;
            Ok((Bind::Int(Some(i)), i.to_string()))
        }
        _ => Ok((Bind::Text(Some(clean.clone())), clean)),
    }
}

/// The table a kind of resource lives in.
fn table_of(s: &Settings, kind: Kind) -> Option<&Table> {
    match kind {
        Kind::User => Some(&s.users),
        Kind::Group => s.groups.as_ref(),
    }
}

/// The key `sync` records for `desired` (see `Target::planned_key`).
pub(super) fn planned_key(s: &Settings, d: &Desired) -> Option<String> {
    let delete_policy = s
        .deactivate
        .as_ref()
        .is_some_and(|x| x.policy == SqlDeactivatePolicy::Delete);
    if d.kind == Kind::User && !d.active && delete_policy {
        return None;
    }
    let t = table_of(s, d.kind)?;
    convert_key(t.key_type, &d.entry.key, &t.table)
        .ok()
        .map(|(_, k)| k)
}

/// A key's normal form for the store's uniqueness index: the table (users and groups may be
/// apart) and the key as the database compares it. MySQL/MariaDB's usual collations ignore
/// case and trailing spaces, so there the key is folded (for a binary collation this errs
/// toward a conflict, never a merge); PostgreSQL and SQLite compare text exactly.
pub(super) fn key_norm(s: &Settings, kind: Kind, key: &str) -> String {
    let Some(t) = table_of(s, kind) else {
        return key.to_owned();
    };
    let canonical =
        convert_key(t.key_type, key, &t.table).map_or_else(|_| key.to_owned(), |(_, k)| k);
    let folded = match (s.backend, t.key_type) {
        (super::dialect::Backend::Mysql, SqlColumnType::Text) => {
            canonical.trim_end_matches(' ').to_lowercase()
        }
        _ => canonical,
    };
    format!("{}:{}:{folded}", t.table.len(), t.table)
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "t" | "1" | "yes" | "y" | "on" => Some(true),
        "false" | "f" | "0" | "no" | "n" | "off" => Some(false),
        _ => None,
    }
}

fn literal(v: &RawSqlValue) -> (Bind, String) {
    match v {
        RawSqlValue::Bool(b) => (Bind::Bool(Some(*b)), b.to_string()),
        RawSqlValue::Integer(i) => (Bind::Int(Some(*i)), i.to_string()),
        RawSqlValue::Text(t) => (Bind::Text(Some(t.clone())), t.clone()),
    }
}

fn null_of(ty: SqlColumnType, flag: Option<&(RawSqlValue, RawSqlValue)>) -> Bind {
    match (ty, flag) {
        (SqlColumnType::Integer, _) => Bind::Int(None),
        (SqlColumnType::Boolean, _) => Bind::Bool(None),
        (SqlColumnType::Flag, Some((RawSqlValue::Integer(_), _))) => Bind::Int(None),
        (SqlColumnType::Flag, Some((RawSqlValue::Bool(_), _))) => Bind::Bool(None),
        _ => Bind::Text(None),
    }
}

/// RFC 3339 (or the server's `YYYY-MM-DD HH:MM:SS[.f][+zz]` in a UTC session) as UTC
/// `YYYY-MM-DD HH:MM:SS`.
fn utc_timestamp(v: &str) -> Option<String> {
    use time::format_description::well_known::Rfc3339;
    let fmt = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    if let Ok(t) = time::OffsetDateTime::parse(v.trim(), &Rfc3339) {
        return t.to_offset(time::UtcOffset::UTC).format(&fmt).ok();
    }
    let head: String = v
        .trim()
        .chars()
        .take(19)
        .collect::<String>()
        .replace('T', " ");
    time::PrimitiveDateTime::parse(&head, &fmt)
        .ok()
        .and_then(|t| t.format(&fmt).ok())
}

/// A rendered value converted for its column: the bind and its canonical text.
fn convert(
    c: &Column,
    value: Option<&str>,
    table: &str,
) -> Result<(Bind, Option<String>), TargetError> {
    let Some(v) = value.map(|v| v.replace('\0', "")) else {
        return Ok((null_of(c.ty, c.flag.as_ref()), None));
    };
    let bad = |kind: &str| {
        permanent(format!(
            "{table}.{}: {:?} is not {kind}",
            c.quoted,
            v.chars().take(SHOW_MAX).collect::<String>()
        ))
    };
    match c.ty {
        SqlColumnType::Text => Ok((Bind::Text(Some(v.clone())), Some(v))),
        SqlColumnType::Integer => {
            let i: i64 = v.trim().parse().map_err(|_| bad("an integer"))?;
            Ok((Bind::Int(Some(i)), Some(i.to_string())))
        }
        SqlColumnType::Boolean => {
            let b = parse_bool(&v).ok_or_else(|| bad("a boolean"))?;
            Ok((Bind::Bool(Some(b)), Some(b.to_string())))
        }
        SqlColumnType::Timestamp => {
            let ts = utc_timestamp(&v).ok_or_else(|| bad("an RFC 3339 timestamp"))?;
            Ok((Bind::Text(Some(ts.clone())), Some(ts)))
        }
        SqlColumnType::Flag => {
            let b = parse_bool(&v).ok_or_else(|| bad("a boolean"))?;
            let (t, f) = c
                .flag
                .as_ref()
                .ok_or_else(|| permanent(format!("{table}.{}: flag without values", c.quoted)))?;
            let (bind, canon) = literal(if b { t } else { f });
            Ok((bind, Some(canon)))
        }
    }
}

/// The server's text for a column, in the canonical form of [`convert`].
fn canonical_current(c: &Column, raw: &str) -> String {
    let as_int = |r: &str| {
        r.trim()
            .parse::<i64>()
            .map_or(r.to_owned(), |i| i.to_string())
    };
    let as_bool = |r: &str| parse_bool(r).map_or(r.to_owned(), |b| b.to_string());
    match (c.ty, c.flag.as_ref()) {
        (SqlColumnType::Integer, _) | (SqlColumnType::Flag, Some((RawSqlValue::Integer(_), _))) => {
            as_int(raw)
        }
        (SqlColumnType::Boolean, _) | (SqlColumnType::Flag, Some((RawSqlValue::Bool(_), _))) => {
            as_bool(raw)
        }
        (SqlColumnType::Timestamp, _) => utc_timestamp(raw).unwrap_or_else(|| raw.to_owned()),
        _ => raw.to_owned(),
    }
}

fn canonical_literal(v: &RawSqlValue, raw: &str) -> bool {
    match v {
        RawSqlValue::Integer(i) => raw.trim().parse::<i64>().ok() == Some(*i),
        RawSqlValue::Bool(b) => parse_bool(raw) == Some(*b),
        RawSqlValue::Text(t) => raw == t,
    }
}

fn ty_of_literal(v: &RawSqlValue) -> SqlColumnType {
    match v {
        RawSqlValue::Integer(_) => SqlColumnType::Integer,
        RawSqlValue::Bool(_) => SqlColumnType::Boolean,
        RawSqlValue::Text(_) => SqlColumnType::Text,
    }
}

/// Desired values of the mapped columns: (column, bind, canonical text; `None` = NULL).
type Wanted<'c> = Vec<(&'c Column, Bind, Option<String>)>;

/// Desired values of the mapped columns: (column, bind, canonical).
fn desired_values<'c>(t: &'c Table, entry: &Entry) -> Result<Wanted<'c>, TargetError> {
    t.columns
        .iter()
        .map(|c| {
            let v = entry.attrs.get(&c.name).and_then(|v| v.first());
            convert(c, v.map(String::as_str), &t.table)
                .map(|(b, canon)| (c, b, canon))
                // Name the target and the config key too (`origin`: target and section).
                .map_err(|e| TargetError {
                    message: format!(
                        "{}: {} (config key {}.columns.{})",
                        t.origin,
                        e.message,
                        t.origin.rsplit(", ").next().unwrap_or_default(),
                        c.quoted.replace(['"', '`'], "")
                    ),
                    ..e
                })
        })
        .collect()
}

/// What the deactivation column must hold.
#[derive(Debug, Clone)]
enum DeactWant {
    /// Not managed (no policy, or policy `delete`).
    Nothing,
    /// `flag`: this value.
    Value(RawSqlValue),
    /// `timestamp` while inactive: any non-NULL value (set to the current time when NULL).
    Now,
    /// `timestamp` while active: NULL.
    Null,
}

fn deact_want(s: &Settings, active: bool) -> DeactWant {
    match &s.deactivate {
        Some(d) => match (d.policy, &d.flag, active) {
            (SqlDeactivatePolicy::Flag, Some((inactive, _)), false) => {
                DeactWant::Value(inactive.clone())
            }
            (SqlDeactivatePolicy::Flag, Some((_, act)), true) => DeactWant::Value(act.clone()),
            (SqlDeactivatePolicy::Timestamp, _, false) => DeactWant::Now,
            (SqlDeactivatePolicy::Timestamp, _, true) => DeactWant::Null,
            _ => DeactWant::Nothing,
        },
        None => DeactWant::Nothing,
    }
}

fn deact_column(s: &Settings) -> Option<&str> {
    s.deactivate
        .as_ref()
        .filter(|d| d.policy != SqlDeactivatePolicy::Delete)
        .and_then(|d| d.column.as_deref())
}

/// Append `col = value` for the deactivation column when it must change; returns whether it did.
fn deact_assignment(
    st: &mut Stmt,
    s: &Settings,
    col: &str,
    want: &DeactWant,
    current: Option<&Option<String>>,
    first: bool,
) -> bool {
    let have = current.cloned().flatten();
    let sep = if first { "" } else { ", " };
    match want {
        DeactWant::Nothing => false,
        DeactWant::Value(v) => {
            if have.as_deref().is_some_and(|h| canonical_literal(v, h)) {
                return false;
            }
            st.raw(&format!("{sep}{col} = "));
            let (b, _) = literal(v);
            st.value(s, b, ty_of_literal(v), false);
            true
        }
        DeactWant::Now => {
            if have.is_some() {
                return false;
            }
            st.raw(&format!("{sep}{col} = CURRENT_TIMESTAMP"));
            true
        }
        DeactWant::Null => {
            if have.is_none() {
                return false;
            }
            st.raw(&format!("{sep}{col} = NULL"));
            true
        }
    }
}

/// Find the live row for `key`: renames it from `prior.key` when that differs, applies the
/// ownership rule when we never wrote it.
#[allow(clippy::too_many_arguments)]
fn locate(
    tx: &mut Tx<'_>,
    t: &Table,
    kind: Kind,
    prior: &Prior,
    key: &str,
    key_bind: &Bind,
    deact: Option<&str>,
) -> Result<Option<BTreeMap<String, Option<String>>>, TxError> {
    let s = tx.s;
    match &prior.key {
        Some(old) if old != key => {
            let (old_bind, _) = convert_key(t.key_type, old, &t.table)?;
            if let Some(cur) = tx.read(t, deact, &old_bind, t.key_type)? {
                let other = tx.read(t, deact, key_bind, t.key_type)?;
                // With a case-insensitive collation a case-only change finds the row itself.
                if other.is_some_and(|o| o.get(KEY) != cur.get(KEY)) {
                    return Err(permanent(format!(
                        "{}: cannot change key {old:?} to {key:?}: a row with that key already exists",
                        t.table
                    ))
                    .into());
                }
                let mut st = Stmt::new();
                st.raw(&format!("UPDATE {} SET {} = ", t.table, t.key_column))
                    .value(s, key_bind.clone(), t.key_type, false)
                    .raw(&format!(" WHERE {} = ", t.key_column))
                    .value(s, old_bind.clone(), t.key_type, false);
                tx.write(&st)?;
                // The join table follows a key change only where it holds the key itself.
                let join = s.membership.as_ref().and_then(|m| {
                    let (col, holds) = if kind == Kind::User {
                        (&m.user_column, &m.user_holds)
                    } else {
                        (&m.group_column, &m.group_holds)
                    };
                    holds.is_none().then_some((m, col))
                });
                if let Some((m, col)) = join {
                    let mut st = Stmt::new();
                    st.raw(&format!("UPDATE {} SET {col} = ", m.table))
                        .value(s, key_bind.clone(), t.key_type, false)
                        .raw(&format!(" WHERE {col} = "))
                        .value(s, old_bind, t.key_type, false);
                    tx.write(&st)?;
                }
                if tx.dry_run {
                    return Ok(Some(cur));
                }
            }
            tx.read(t, deact, key_bind, t.key_type)
        }
        Some(_) => tx.read(t, deact, key_bind, t.key_type),
        None => {
            let cur = tx.read(t, deact, key_bind, t.key_type)?;
            // SQL rows carry no creator marker: an interrupted insert is never recognised.
            match plan::unrecorded_entry(cur.is_some(), false, s.on_existing) {
                Found::Create | Found::Resume => {}
                Found::Refuse => {
                    return Err(TargetError {
                        class: ErrorClass::Permanent,
                        code: Some("conflict".into()),
                        message: format!(
                            "{}: a row with {} = {key:?} exists and is not managed by \
                                 scim-sync (set on_existing = \"adopt\" to take it over)",
                            t.table, t.key_column
                        ),
                    }
                    .into())
                }
                Found::Adopt => tx
                    .changes
                    .push(format!("adopt: {} {} = {key:?}", t.table, t.key_column)),
            }
            Ok(cur)
        }
    }
}

/// INSERT or UPDATE the row so its mapped columns (and the deactivation column) match.
fn upsert(
    tx: &mut Tx<'_>,
    t: &Table,
    key_bind: &Bind,
    entry: &Entry,
    current: Option<&BTreeMap<String, Option<String>>>,
    deact: Option<(&str, DeactWant)>,
) -> Result<(), TxError> {
    let s = tx.s;
    let want = desired_values(t, entry)?;
    match current {
        None => {
            let mut cols = vec![t.key_column.clone()];
            let mut st = Stmt::new();
            let mut vals = Stmt::new();
            vals.value(s, key_bind.clone(), t.key_type, false);
            for (c, b, canon) in &want {
                if canon.is_some() {
                    cols.push(c.quoted.clone());
                    vals.raw(", ").value(s, b.clone(), c.ty, is_secret(&c.name));
                }
            }
            if let Some((col, w)) = &deact {
                let mut d = Stmt::new();
                if deact_assignment(&mut d, s, col, w, None, true) {
                    cols.push((*col).to_owned());
                    // `col = <value>`: keep only the value part for VALUES.
                    let value_sql = d.sql.split_once(" = ").map_or("", |x| x.1).to_owned();
                    let value_shown = d.shown.split_once(" = ").map_or("", |x| x.1).to_owned();
                    if let Some(b) = d.binds.pop() {
                        vals.raw(", ");
                        let ty = match &w {
                            DeactWant::Value(v) => ty_of_literal(v),
                            _ => SqlColumnType::Text,
                        };
                        vals.value(s, b, ty, false);
                    } else {
                        vals.sql.push_str(", ");
                        vals.sql.push_str(&value_sql);
                        vals.shown.push_str(", ");
                        vals.shown.push_str(&value_shown);
                    }
                }
            }
            st.raw(&format!(
                "INSERT INTO {} ({}) VALUES (",
                t.table,
                cols.join(", ")
            ));
            st.sql.push_str(&vals.sql);
            st.shown.push_str(&vals.shown);
            st.binds.extend(vals.binds);
            st.raw(")");
            tx.write(&st)?;
        }
        Some(cur) => {
            let desired = Entry {
                key: String::new(),
                object_classes: Vec::new(),
                attrs: want
                    .iter()
                    .map(|(c, _, canon)| (c.name.clone(), canon.iter().cloned().collect()))
                    .collect(),
            };
            let current = Entry {
                key: String::new(),
                object_classes: Vec::new(),
                attrs: t
                    .columns
                    .iter()
                    .map(|c| {
                        let v = cur.get(&c.name).cloned().flatten();
                        (
                            c.name.clone(),
                            v.map(|r| canonical_current(c, &r)).into_iter().collect(),
                        )
                    })
                    .collect(),
            };
            let changed: BTreeSet<String> = diff(&desired, &current)
                .iter()
                .map(|m| m.attr().to_owned())
                .collect();
            let mut st = Stmt::new();
            st.raw(&format!("UPDATE {} SET ", t.table));
            let mut first = true;
            for (c, b, _) in &want {
                if changed.contains(&c.name) {
                    if !first {
                        st.raw(", ");
                    }
                    first = false;
                    st.raw(&format!("{} = ", c.quoted)).value(
                        s,
                        b.clone(),
                        c.ty,
                        is_secret(&c.name),
                    );
                }
            }
            if let Some((col, w)) = &deact {
                if deact_assignment(&mut st, s, col, w, cur.get(DEACT), first) {
                    first = false;
                }
            }
            if first {
                return Ok(());
            }
            st.raw(&format!(" WHERE {} = ", t.key_column)).value(
                s,
                key_bind.clone(),
                t.key_type,
                false,
            );
            tx.write(&st)?;
        }
    }
    Ok(())
}

fn sync_user(
    tx: &mut Tx<'_>,
    d: &Desired,
    prior: &Prior,
) -> Result<(Option<String>, Option<Bookkeeping>), TxError> {
    let s = tx.s;
    let t = &s.users;
    let (key_bind, key) = convert_key(t.key_type, &d.entry.key, &t.table)?;
    let delete_policy = s
        .deactivate
        .as_ref()
        .is_some_and(|x| x.policy == SqlDeactivatePolicy::Delete);
    if !d.active && delete_policy {
        if let Some(k) = &prior.key {
            delete_row(tx, Kind::User, k)?;
        }
        let extra = Bookkeeping {
            kind: Some(Kind::User),
            deleted_inactive: Some(true),
            ..Bookkeeping::default()
        };
        return Ok((None, Some(extra)));
    }
    let deact = deact_column(s);
    let current = locate(tx, t, Kind::User, prior, &key, &key_bind, deact)?;
    let want = deact.map(|c| (c, deact_want(s, d.active)));
    upsert(tx, t, &key_bind, &d.entry, current.as_ref(), want)?;
    Ok((Some(key), Some(of_kind(Kind::User))))
}

fn sync_group(
    tx: &mut Tx<'_>,
    d: &Desired,
    prior: &Prior,
) -> Result<(Option<String>, Option<Bookkeeping>), TxError> {
    let s = tx.s;
    let t = s
        .groups
        .as_ref()
        .ok_or_else(|| permanent(format!("target {} does not map groups", s.name)))?;
    let (key_bind, key) = convert_key(t.key_type, &d.entry.key, &t.table)?;
    let current = locate(tx, t, Kind::Group, prior, &key, &key_bind, None)?;
    upsert(tx, t, &key_bind, &d.entry, current.as_ref(), None)?;
    if let Some(m) = &s.membership {
        let uty = s.users.key_type;
        let mut want: Vec<(Bind, String)> = Vec::new();
        for member in &d.members {
            let (b, canon) = convert_key(uty, member, &m.table)?;
            if !want.iter().any(|(_, c)| *c == canon) {
                want.push((b, canon));
            }
        }
        // The O(change) path: only the members that changed (their rows alone are read).
        let only: Option<Vec<(Bind, String)>> = match &d.member_changes {
            None => None,
            Some(_) if current.is_none() => {
                return Err(TargetError::members_full("no row at the recorded key").into());
            }
            Some(c) => {
                want.clear();
                for member in &c.add {
                    let (b, canon) = convert_key(uty, member, &m.table)?;
                    if !want.iter().any(|(_, w)| *w == canon) {
                        want.push((b, canon));
                    }
                }
                let mut only: Vec<(Bind, String)> = want.clone();
                for member in &c.delete {
                    let (b, canon) = convert_key(uty, member, &m.table)?;
                    if !only.iter().any(|(_, w)| *w == canon) {
                        only.push((b, canon));
                    }
                }
                if only.len() > MEMBER_CHUNK {
                    // One read of that many keys would pass the databases' bind limits.
                    return Err(
                        TargetError::members_full("more changed members than one read").into(),
                    );
                }
                Some(only)
            }
        };
        let nothing_to_read =
            (current.is_none() && tx.dry_run) || only.as_ref().is_some_and(Vec::is_empty);
        let have: Vec<String> = if nothing_to_read {
            Vec::new()
        } else {
            let mut st = Stmt::new();
            match &m.user_holds {
                None => st.raw(&format!(
                    "SELECT {} AS v FROM {} WHERE {} = ",
                    s.backend.as_text(&m.user_column),
                    m.table,
                    m.group_column
                )),
                // Members are reported by their key, through the users row they point at.
                Some(holds) => st.raw(&format!(
                    "SELECT {} AS v FROM {} j JOIN {} u ON u.{holds} = j.{} WHERE j.{} = ",
                    s.backend.as_text(&format!("u.{}", s.users.key_column)),
                    m.table,
                    s.users.table,
                    m.user_column,
                    m.group_column
                )),
            };
            member_ref(&mut st, s, Kind::Group, &key_bind);
            if let Some(only) = &only {
                match &m.user_holds {
                    None => st.raw(&format!(" AND {} IN (", m.user_column)),
                    Some(_) => st.raw(&format!(" AND u.{} IN (", s.users.key_column)),
                };
                for (i, (b, _)) in only.iter().enumerate() {
                    if i > 0 {
                        st.raw(", ");
                    }
                    st.value(s, b.clone(), uty, false);
                }
                st.raw(")");
            }
            tx.load(&st)?
                .into_iter()
                .flatten()
                .map(|v| match uty {
                    SqlColumnType::Integer => v.trim().parse::<i64>().map_or(v, |i| i.to_string()),
                    _ => v,
                })
                .collect()
        };
        let to_add: Vec<&Bind> = want
            .iter()
            .filter(|(_, c)| !have.contains(c))
            .map(|(b, _)| b)
            .collect();
        // Rows of members we never wrote stay under `foreign_members = "keep"` (`ours` is the
        // store's record then; `None`: every row is ours). The O(change) path deletes only
        // the values it was given.
        let ours: Option<Vec<String>> = match (&d.member_changes, &prior.members_ours) {
            (Some(c), _) => Some(c.delete.clone()),
            (None, o) => o.clone(),
        };
        let ours: Option<Vec<String>> = ours.map(|o| {
            o.iter()
                .filter_map(|v| convert_key(uty, v, &m.table).ok().map(|(_, c)| c))
                .collect()
        });
        let (mut to_del, mut foreign): (Vec<String>, Vec<String>) = have
            .iter()
            .filter(|h| !want.iter().any(|(_, c)| c == *h))
            .cloned()
            .partition(|h| ours.as_ref().is_none_or(|o| o.contains(h)));
        to_del.sort();
        to_del.dedup();
        if d.member_changes.is_none() {
            foreign.sort();
            foreign.dedup();
            tx.foreign = foreign;
        }
        // Adds before deletes, in chunks (one statement per chunk, not per member).
        for chunk in to_add.chunks(MEMBER_CHUNK) {
            let mut st = Stmt::new();
            st.raw(&format!(
                "INSERT INTO {} ({}, {}) VALUES ",
                m.table, m.group_column, m.user_column
            ));
            for (i, b) in chunk.iter().enumerate() {
                st.raw(if i == 0 { "(" } else { ", (" });
                member_ref(&mut st, s, Kind::Group, &key_bind);
                st.raw(", ");
                member_ref(&mut st, s, Kind::User, b);
                st.raw(")");
            }
            tx.write(&st)?;
        }
        for chunk in to_del.chunks(MEMBER_CHUNK) {
            let mut st = Stmt::new();
            st.raw(&format!(
                "DELETE FROM {} WHERE {} = ",
                m.table, m.group_column
            ));
            member_ref(&mut st, s, Kind::Group, &key_bind);
            st.raw(&format!(" AND {} IN (", m.user_column));
            for (i, h) in chunk.iter().enumerate() {
                if i > 0 {
                    st.raw(", ");
                }
                let (b, _) = convert_key(uty, h, &m.table)?;
                member_ref(&mut st, s, Kind::User, &b);
            }
            st.raw(")");
            tx.write(&st)?;
        }
    }
    Ok((Some(key), Some(of_kind(Kind::Group))))
}

/// Append what a join-table column holds for the user or group with this key: the key itself
/// (a bound value), or, with `user_holds`/`group_holds`, that column of the row with this key
/// (a scalar subquery; the key is still bound).
fn member_ref(st: &mut Stmt, s: &Settings, kind: Kind, key: &Bind) {
    let users = &s.users;
    let (t, holds) = match (kind, &s.membership, &s.groups) {
        (Kind::User, Some(m), _) => (users, m.user_holds.as_ref()),
        (Kind::Group, Some(m), Some(g)) => (g, m.group_holds.as_ref()),
        _ => (users, None),
    };
    match holds {
        None => {
            st.value(s, key.clone(), t.key_type, false);
        }
        Some(h) => {
            st.raw(&format!(
                "(SELECT {h} FROM {} WHERE {} = ",
                t.table, t.key_column
            ))
            .value(s, key.clone(), t.key_type, false)
            .raw(")");
        }
    }
}

/// Delete a row we own, and its membership rows first (so a foreign key from the join table
/// does not refuse it). A row already gone counts as deleted.
fn delete_row(tx: &mut Tx<'_>, kind: Kind, key: &str) -> Result<(), TxError> {
    let s = tx.s;
    let t = match kind {
        Kind::User => &s.users,
        Kind::Group => s
            .groups
            .as_ref()
            .ok_or_else(|| permanent(format!("target {} does not map groups", s.name)))?,
    };
    let (key_bind, _) = convert_key(t.key_type, key, &t.table)?;
    if let Some(m) = &s.membership {
        let col = if kind == Kind::User {
            &m.user_column
        } else {
            &m.group_column
        };
        let mut st = Stmt::new();
        st.raw(&format!("DELETE FROM {} WHERE {col} = ", m.table));
        member_ref(&mut st, s, kind, &key_bind);
        tx.write(&st)?;
    }
    let mut st = Stmt::new();
    st.raw(&format!(
        "DELETE FROM {} WHERE {} = ",
        t.table, t.key_column
    ))
    .value(s, key_bind, t.key_type, false);
    tx.write(&st)?;
    Ok(())
}

/// The bookkeeping of a row: what it is.
fn of_kind(kind: Kind) -> Bookkeeping {
    Bookkeeping {
        kind: Some(kind),
        ..Bookkeeping::default()
    }
}

/// The resource was deleted in the store.
fn remove(
    tx: &mut Tx<'_>,
    prior: &Prior,
    kind: Kind,
) -> Result<(Option<String>, Option<Bookkeeping>), TxError> {
    let Some(key) = &prior.key else {
        return Ok((None, prior.extra.clone()));
    };
    let s = tx.s;
    if kind == Kind::User && s.on_delete == OnDelete::Disable {
        if let Some(col) = deact_column(s) {
            let t = &s.users;
            let (key_bind, _) = convert_key(t.key_type, key, &t.table)?;
            let Some(cur) = tx.read(t, Some(col), &key_bind, t.key_type)? else {
                return Ok((None, None));
            };
            let mut st = Stmt::new();
            st.raw(&format!("UPDATE {} SET ", t.table));
            if deact_assignment(&mut st, s, col, &deact_want(s, false), cur.get(DEACT), true) {
                st.raw(&format!(" WHERE {} = ", t.key_column))
                    .value(s, key_bind, t.key_type, false);
                tx.write(&st)?;
            }
            let extra = Bookkeeping {
                kind: Some(Kind::User),
                disabled: Some(Disabled::Flag(true)),
                ..Bookkeeping::default()
            };
            return Ok((Some(key.clone()), Some(extra)));
        }
    }
    delete_row(tx, kind, key)?;
    Ok((None, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(ty: SqlColumnType, flag: Option<(RawSqlValue, RawSqlValue)>) -> Column {
        Column {
            name: "c".into(),
            quoted: "\"c\"".into(),
            ty,
            flag,
        }
    }

    #[test]
    fn conversions_and_canonical_forms() {
        let flag = col(
            SqlColumnType::Flag,
            Some((RawSqlValue::Text("Y".into()), RawSqlValue::Text("N".into()))),
        );
        assert_eq!(
            convert(&flag, Some("FALSE"), "t").unwrap(),
            (Bind::Text(Some("N".into())), Some("N".into()))
        );
        let int_flag = col(
            SqlColumnType::Flag,
            Some((RawSqlValue::Integer(1), RawSqlValue::Integer(0))),
        );
        assert_eq!(
            convert(&int_flag, Some("TRUE"), "t").unwrap().0,
            Bind::Int(Some(1))
        );
        assert_eq!(convert(&int_flag, None, "t").unwrap().0, Bind::Int(None));
        let ts = col(SqlColumnType::Timestamp, None);
        assert_eq!(
            convert(&ts, Some("2024-02-29T23:30:00-02:00"), "t")
                .unwrap()
                .1,
            Some("2024-03-01 01:30:00".into())
        );
        assert_eq!(
            canonical_current(&ts, "2024-03-01 01:30:00+00"),
            "2024-03-01 01:30:00"
        );
        assert_eq!(
            canonical_current(&ts, "2024-03-01 01:30:00.25"),
            "2024-03-01 01:30:00"
        );
        assert!(convert(&ts, Some("yesterday"), "t").is_err());
        let int = col(SqlColumnType::Integer, None);
        assert!(convert(&int, Some("12; DROP TABLE x"), "t").is_err());
        assert_eq!(canonical_current(&int, " 0042"), "42");
        let b = col(SqlColumnType::Boolean, None);
        assert_eq!(canonical_current(&b, "t"), "true");
        assert_eq!(
            convert(&b, Some("0"), "t").unwrap().0,
            Bind::Bool(Some(false))
        );
        let text = col(SqlColumnType::Text, None);
        assert_eq!(
            convert(&text, Some("a\0b'c"), "t").unwrap().1,
            Some("ab'c".into())
        );
    }

    #[test]
    fn keys_and_change_lines() {
        assert_eq!(
            convert_key(SqlColumnType::Integer, " 17", "t").unwrap(),
            (Bind::Int(Some(17)), "17".into())
        );
        assert!(convert_key(SqlColumnType::Integer, "x", "t").is_err());
        assert_eq!(show(&Bind::Text(Some("o'brien".into()))), "'o''brien'");
        assert!(show(&Bind::Text(Some("x".repeat(10_000)))).len() < 100);
        assert!(is_secret("password_hash") && is_secret("PWD") && !is_secret("login"));
    }
}

#[cfg(test)]
mod key_tests {
    use super::*;

    fn settings(url: &str, user_key_type: &str) -> Settings {
        let text = format!(
            "name = \"t\"\ntype = \"sql\"\nurl = \"{url}\"\n[users]\ntable = \"u\"\n\
             key_column = \"k\"\nkey = {{ from = \"userName\", type = \"{user_key_type}\" }}\n\
             [groups]\ntable = \"g\"\nkey_column = \"k\"\nkey = \"displayName\"\n"
        );
        let raw: crate::config::target::RawTarget = toml::from_str(&text).unwrap();
        let crate::config::target::RawTarget::Sql(s) = &raw else {
            panic!("sql")
        };
        Settings::from_raw(s, 0).unwrap()
    }

    #[test]
    fn row_keys_are_per_table_and_compared_as_the_database_does() {
        let pg = settings("postgres://h/db", "text");
        // Users and groups live in different tables: the same key text is two rows.
        assert_ne!(
            key_norm(&pg, Kind::User, "x"),
            key_norm(&pg, Kind::Group, "x")
        );
        // PostgreSQL compares text exactly.
        assert_ne!(
            key_norm(&pg, Kind::User, "Babs"),
            key_norm(&pg, Kind::User, "babs")
        );
        // MySQL/MariaDB collations ignore case and trailing spaces.
        let my = settings("mysql://h/db", "text");
        assert_eq!(
            key_norm(&my, Kind::User, "Babs "),
            key_norm(&my, Kind::User, "babs")
        );
        // Integer keys in their canonical form.
        let int = settings("postgres://h/db", "integer");
        assert_eq!(
            key_norm(&int, Kind::User, " 0042"),
            key_norm(&int, Kind::User, "42")
        );
    }
}
