//! The connection to one legacy database: an enum over diesel's PostgreSQL, MySQL (MariaDB)
//! and SQLite connections chosen by the URL, connected lazily, one per concurrent sync (a few
//! kept idle), dropped after any error (the next sync reconnects), and used only on
//! `spawn_blocking` threads with a bound on each job.
//! Every diesel failure leaves this file as a classified [`TargetError`]. Must not decide what
//! to change (that is `apply.rs`) and never formats a value into SQL.

use super::dialect::Backend;
use super::settings::Settings;
use crate::targets::{config_error, ErrorClass, TargetError};
use diesel::connection::SimpleConnection;
use diesel::result::{ConnectionError, DatabaseErrorKind, Error as DieselError};
use diesel::sql_types::{BigInt, Bool, Nullable, Text};
use diesel::{Connection, MysqlConnection, PgConnection, RunQueryDsl, SqliteConnection};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// A bound value, typed so that each backend receives the parameter type it expects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bind {
    /// Text (also timestamps, as UTC `YYYY-MM-DD HH:MM:SS`, cast by the placeholder).
    Text(Option<String>),
    /// A 64-bit integer.
    Int(Option<i64>),
    /// A boolean.
    Bool(Option<bool>),
}

/// The statements `apply.rs` needs, over any backend (object safe, used as `&mut dyn Db`).
pub(super) trait Db {
    /// Run a query whose one column (aliased `v`) is text; one `Option<String>` per row.
    fn load_text(&mut self, sql: &str, binds: &[Bind]) -> Result<Vec<Option<String>>, DieselError>;
    /// Run a statement; the number of rows affected.
    fn execute(&mut self, sql: &str, binds: &[Bind]) -> Result<usize, DieselError>;
}

#[derive(diesel::QueryableByName)]
struct TextRow {
    #[diesel(sql_type = Nullable<Text>)]
    v: Option<String>,
}

macro_rules! impl_db {
    ($conn:ty, $backend:ty) => {
        impl Db for $conn {
            fn load_text(
                &mut self,
                sql: &str,
                binds: &[Bind],
            ) -> Result<Vec<Option<String>>, DieselError> {
                let mut q = diesel::sql_query(sql).into_boxed::<$backend>();
                for b in binds {
                    q = match b {
                        Bind::Text(v) => q.bind::<Nullable<Text>, _>(v.clone()),
                        Bind::Int(v) => q.bind::<Nullable<BigInt>, _>(*v),
                        Bind::Bool(v) => q.bind::<Nullable<Bool>, _>(*v),
                    };
                }
                Ok(q.load::<TextRow>(self)?.into_iter().map(|r| r.v).collect())
            }

            fn execute(&mut self, sql: &str, binds: &[Bind]) -> Result<usize, DieselError> {
                let mut q = diesel::sql_query(sql).into_boxed::<$backend>();
                for b in binds {
                    q = match b {
                        Bind::Text(v) => q.bind::<Nullable<Text>, _>(v.clone()),
                        Bind::Int(v) => q.bind::<Nullable<BigInt>, _>(*v),
                        Bind::Bool(v) => q.bind::<Nullable<Bool>, _>(*v),
                    };
                }
                q.execute(self)
            }
        }
    };
}

impl_db!(PgConnection, diesel::pg::Pg);
impl_db!(MysqlConnection, diesel::mysql::Mysql);
impl_db!(SqliteConnection, diesel::sqlite::Sqlite);

/// A failure inside a transaction: a database error, or a decision of `apply.rs`.
#[derive(Debug)]
pub(super) enum TxError {
    Db(DieselError),
    Target(TargetError),
}

impl From<DieselError> for TxError {
    fn from(e: DieselError) -> Self {
        TxError::Db(e)
    }
}

impl From<TargetError> for TxError {
    fn from(e: TargetError) -> Self {
        TxError::Target(e)
    }
}

/// One open connection.
pub(super) enum Conn {
    Pg(PgConnection),
    Mysql(MysqlConnection),
    Sqlite(SqliteConnection),
}

impl Conn {
    /// Run `f` in one transaction (committed when it returns `Ok`, rolled back otherwise).
    /// `writes`: the transaction may write (SQLite then takes the write lock up front).
    pub(super) fn transaction<T>(
        &mut self,
        writes: bool,
        f: impl FnOnce(&mut dyn Db) -> Result<T, TxError>,
    ) -> Result<T, TxError> {
        match self {
            Conn::Pg(c) => c.transaction(|c| f(c)),
            Conn::Mysql(c) => c.transaction(|c| f(c)),
            // BEGIN IMMEDIATE: a deferred transaction that reads and then writes fails at once
            // with "database is locked" when another writer got there first (the busy timeout
            // is not applied to a lock upgrade); taking the write lock up front waits instead.
            Conn::Sqlite(c) if writes => c.immediate_transaction(|c| f(c)),
            Conn::Sqlite(c) => c.transaction(|c| f(c)),
        }
    }
}

/// A SQL target: settings, the connection URL with its password, and the shared connection.
pub struct SqlTarget {
    pub(super) settings: Arc<Settings>,
    url: Arc<String>,
    idle: Arc<Mutex<Vec<Conn>>>,
    /// The live column-type check (`types::check`) once it had an answer: `Ok`, or the
    /// permanent error every sync then returns before writing (`types::checked`).
    pub(super) types_checked: Arc<Mutex<Option<Result<(), TargetError>>>>,
}

impl std::fmt::Debug for SqlTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlTarget")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl SqlTarget {
    /// Build the target: resolve the password (file or environment) into the connection URL.
    /// Does not connect (see `healthcheck`).
    ///
    /// # Errors
    /// An unreadable password file or a missing environment variable (permanent).
    pub fn new(settings: Settings) -> Result<SqlTarget, TargetError> {
        let password = settings.password.resolve(&settings.name, "password_file")?;
        let url = connection_url(&settings, password.as_deref());
        Ok(SqlTarget {
            settings: Arc::new(settings),
            url: Arc::new(url),
            idle: Arc::new(Mutex::new(Vec::new())),
            types_checked: Arc::new(Mutex::new(None)),
        })
    }

    /// The validated settings.
    #[must_use]
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Run `f` on a blocking thread with the idle connection (connecting first if there is
    /// none), bounded by the connect timeout plus twice the statement timeout. Any error drops
    /// the connection, so the next call reconnects. Concurrent calls (several workers) each
    /// use their own connection; up to `MAX_IDLE` idle ones are kept.
    pub(super) async fn with_conn<T: Send + 'static>(
        &self,
        what: &str,
        f: impl FnOnce(&Settings, &mut Conn) -> Result<T, TargetError> + Send + 'static,
    ) -> Result<T, TargetError> {
        let settings = Arc::clone(&self.settings);
        let url = Arc::clone(&self.url);
        let idle = Arc::clone(&self.idle);
        let bound = settings.connect_timeout + settings.timeout + settings.timeout;
        // Set when this call returns or is dropped: a job the blocking pool has not started
        // yet then does nothing, so a stale sync never runs after the caller gave up.
        let abandoned = Arc::new(AtomicBool::new(false));
        let _abandon_on_return = SetOnDrop(Arc::clone(&abandoned));
        let job = tokio::task::spawn_blocking(move || {
            if abandoned.load(Ordering::SeqCst) {
                return Err(transient(
                    "the caller gave up before the operation started".into(),
                ));
            }
            // Take an idle connection (or open one): a job that hangs holds only its own
            // connection, and the next job simply uses or opens another.
            let taken = match idle.lock() {
                Ok(mut g) => g.pop(),
                Err(poisoned) => poisoned.into_inner().pop(),
            };
            let mut conn = match taken {
                Some(c) => c,
                None => establish(&settings, &url)?,
            };
            let result = f(&settings, &mut conn);
            // Any error drops the connection (the next job reconnects); a healthy one is kept
            // for the next job, up to MAX_IDLE of them.
            if result.is_ok() {
                let mut g = match idle.lock() {
                    Ok(g) => g,
                    Err(poisoned) => poisoned.into_inner(),
                };
                if g.len() < MAX_IDLE {
                    g.push(conn);
                }
            }
            result
        });
        match tokio::time::timeout(bound, job).await {
            Ok(Ok(r)) => r,
            Ok(Err(join)) => Err(TargetError {
                class: ErrorClass::Permanent,
                code: None,
                message: format!("{what}: worker thread failed: {join}"),
            }),
            Err(_) => Err(TargetError {
                class: ErrorClass::Transient,
                code: Some("timeout".into()),
                message: format!("{what}: timed out after {}s", bound.as_secs()),
            }),
        }
    }
}

/// Idle connections kept per target (about one per reconciler worker).
const MAX_IDLE: usize = 4;

/// Sets its flag when dropped.
struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

fn transient(message: String) -> TargetError {
    TargetError {
        class: ErrorClass::Transient,
        code: None,
        message,
    }
}

/// Characters kept as they are in a SQLite `file:` URI path.
const PATH_SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'/')
    .remove(b'.')
    .remove(b'_')
    .remove(b'-');

/// The URL diesel connects with: the password inserted into the user-info (PostgreSQL,
/// MySQL), `connect_timeout` added for libpq; for SQLite a `file:` URI that never creates a
/// missing database (a legacy database that is not there is an error, not a new empty file).
fn connection_url(s: &Settings, password: Option<&str>) -> String {
    let (_, rest) = s.url.split_once("://").unwrap_or(("", s.url.as_str()));
    match s.backend {
        Backend::Sqlite => {
            let path = percent_encoding::utf8_percent_encode(rest, PATH_SET);
            format!("file:{path}?mode=rw")
        }
        Backend::Postgres | Backend::Mysql => {
            let scheme = if s.backend == Backend::Postgres {
                "postgres"
            } else {
                "mysql"
            };
            let mut rest = rest.to_owned();
            if let Some(pw) = password {
                let enc =
                    percent_encoding::utf8_percent_encode(pw, percent_encoding::NON_ALPHANUMERIC)
                        .to_string();
                let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
                if let Some(at) = rest.get(..authority_end).and_then(|a| a.rfind('@')) {
                    rest.insert_str(at, &format!(":{enc}"));
                }
            }
            if s.backend == Backend::Postgres && !rest.contains("connect_timeout=") {
                let sep = if rest.contains('?') { '&' } else { '?' };
                rest.push_str(&format!(
                    "{sep}connect_timeout={}",
                    s.connect_timeout.as_secs()
                ));
            }
            format!("{scheme}://{rest}")
        }
    }
}

/// Connect and set the session up: UTC, statement and lock-wait timeouts.
fn establish(s: &Settings, url: &str) -> Result<Conn, TargetError> {
    let what = format!("connect to target {}", s.name);
    let ms = s.timeout.as_millis();
    let secs = s.timeout.as_secs().max(1);
    let setup = |c: &mut dyn SimpleConnection, sql: &str| {
        c.batch_execute(sql).map_err(|e| classify(&e, &what))
    };
    match s.backend {
        Backend::Postgres => {
            let mut c = PgConnection::establish(url).map_err(|e| connect_error(&e, &what))?;
            setup(
                &mut c,
                // A transaction left open longer than the timeout (its process stopped
                // between its lease check and its COMMIT) is ended by the server, so its
                // COMMIT cannot land after another instance took the resource over.
                &format!(
                    "SET TIME ZONE 'UTC'; SET statement_timeout = {ms}; SET lock_timeout = {ms}; \
                     SET idle_in_transaction_session_timeout = {ms}"
                ),
            )?;
            Ok(Conn::Pg(c))
        }
        Backend::Mysql => {
            let mut c = MysqlConnection::establish(url).map_err(|e| connect_error(&e, &what))?;
            setup(
                &mut c,
                &format!("SET time_zone = '+00:00'; SET SESSION innodb_lock_wait_timeout = {secs}"),
            )?;
            // MariaDB names the statement timeout max_statement_time (seconds); MySQL has
            // none for writes. Best effort: the job bound in `with_conn` covers both.
            let _ = c.batch_execute(&format!("SET SESSION max_statement_time = {secs}"));
            Ok(Conn::Mysql(c))
        }
        Backend::Sqlite => {
            let mut c = SqliteConnection::establish(url).map_err(|e| connect_error(&e, &what))?;
            setup(
                &mut c,
                &format!("PRAGMA busy_timeout = {ms}; PRAGMA foreign_keys = ON"),
            )?;
            Ok(Conn::Sqlite(c))
        }
    }
}

fn connect_error(e: &ConnectionError, what: &str) -> TargetError {
    match e {
        ConnectionError::InvalidConnectionUrl(m) => config_error(format!("{what}: {m}")),
        // Refused, unreachable, authentication, a missing database or file: an operator or
        // the network fixes these; the data is fine, so retry.
        _ => TargetError {
            class: ErrorClass::Transient,
            code: Some("connect".into()),
            message: format!(
                "{what}: {} (retried; check the url, the server and the password)",
                e.to_string().trim()
            ),
        },
    }
}

/// Message fragments of the three servers that mean "try again": lost or killed connections,
/// deadlocks, serialization failures, lock timeouts, a busy or read-only SQLite file,
/// statement timeouts and a server shutting down.
const TRANSIENT_TEXT: &[&str] = &[
    "deadlock detected",
    "deadlock found",
    "could not serialize access",
    "canceling statement due to lock timeout",
    "lock wait timeout exceeded",
    "canceling statement due to statement timeout",
    "max_statement_time exceeded",
    "terminating connection",
    "server closed the connection",
    "no connection to the server",
    "connection reset",
    "connection refused",
    "connection was killed",
    "broken pipe",
    "could not receive data",
    "could not send data",
    "ssl connection has been closed",
    "gone away",
    "lost connection",
    "server shutdown",
    "query execution was interrupted",
    "database is locked",
    "database table is locked",
    "database is busy",
    "readonly database",
    "read-only transaction",
    "read-only option",
    "disk i/o error",
    "unable to open database",
    "too many connections",
    "the database system is",
];

/// Classify a diesel error. Constraint violations, unknown tables or columns, bad values and
/// "data too long" are permanent; lost connections, deadlocks, serialization failures and
/// lock timeouts are transient.
pub(super) fn classify(e: &DieselError, what: &str) -> TargetError {
    let (class, code) = match e {
        DieselError::DatabaseError(kind, info) => {
            let text = info.message().to_ascii_lowercase();
            match kind {
                DatabaseErrorKind::SerializationFailure
                | DatabaseErrorKind::ClosedConnection
                | DatabaseErrorKind::ReadOnlyTransaction => {
                    (ErrorClass::Transient, format!("{kind:?}"))
                }
                DatabaseErrorKind::UniqueViolation
                | DatabaseErrorKind::ForeignKeyViolation
                | DatabaseErrorKind::NotNullViolation
                | DatabaseErrorKind::CheckViolation => (ErrorClass::Permanent, format!("{kind:?}")),
                _ if TRANSIENT_TEXT.iter().any(|t| text.contains(t)) => {
                    (ErrorClass::Transient, "database".to_owned())
                }
                _ => (ErrorClass::Permanent, "database".to_owned()),
            }
        }
        DieselError::BrokenTransactionManager | DieselError::AlreadyInTransaction => {
            (ErrorClass::Transient, "transaction".to_owned())
        }
        _ => (ErrorClass::Permanent, "diesel".to_owned()),
    };
    TargetError {
        class,
        code: Some(code),
        message: format!("{what}: {}", e.to_string().trim()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::target::RawTarget;

    fn settings(url: &str) -> Settings {
        let text = format!(
            "name = \"t\"\ntype = \"sql\"\nurl = \"{url}\"\n[users]\ntable = \"u\"\nkey_column = \"k\"\nkey = \"userName\"\n"
        );
        let RawTarget::Sql(raw) = toml::from_str::<RawTarget>(&text).unwrap() else {
            panic!("sql")
        };
        Settings::from_raw(&raw, 0).unwrap()
    }

    #[test]
    fn password_goes_into_the_url_encoded() {
        let s = settings("postgres://app@db.example:5433/legacy");
        assert_eq!(
            connection_url(&s, Some("p@ss/w:rd")),
            "postgres://app:p%40ss%2Fw%3Ard@db.example:5433/legacy?connect_timeout=5"
        );
        let s = settings("mysql://app@127.0.0.1/legacy");
        assert_eq!(connection_url(&s, None), "mysql://app@127.0.0.1/legacy");
        let s = settings("sqlite:///var/lib/app db/x.db");
        assert_eq!(
            connection_url(&s, None),
            "file:/var/lib/app%20db/x.db?mode=rw"
        );
    }

    #[test]
    fn debug_never_shows_the_password() {
        let mut s = settings("postgres://app@h/db");
        s.password = crate::targets::PasswordSource::Value("hunter2".into());
        let t = SqlTarget::new(s).unwrap();
        assert!(!format!("{t:?}").contains("hunter2"));
    }

    #[test]
    fn classification() {
        let e = DieselError::DatabaseError(
            DatabaseErrorKind::UniqueViolation,
            Box::new("duplicate key".to_owned()),
        );
        assert_eq!(classify(&e, "x").class, ErrorClass::Permanent);
        for text in [
            "deadlock detected",
            "Lock wait timeout exceeded; try restarting transaction",
            "database is locked",
            "terminating connection due to administrator command",
            "MySQL server has gone away",
        ] {
            let e =
                DieselError::DatabaseError(DatabaseErrorKind::Unknown, Box::new(text.to_owned()));
            assert_eq!(classify(&e, "x").class, ErrorClass::Transient, "{text}");
        }
        for text in [
            "Data too long for column 'x' at row 1",
            "column \"nope\" does not exist",
            "no such table: x",
            "relation \"connections\" does not exist",
            "Unknown column 'deadlock_count' in 'field list'",
            "invalid input syntax for type integer",
        ] {
            let e =
                DieselError::DatabaseError(DatabaseErrorKind::Unknown, Box::new(text.to_owned()));
            assert_eq!(classify(&e, "x").class, ErrorClass::Permanent, "{text}");
        }
    }
}
