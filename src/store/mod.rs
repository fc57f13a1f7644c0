//! The store: the only module that uses diesel. Resources, group membership rows, the outbox,
//! per-target state, tokens and the audit history, on SQLite (embedded default) or PostgreSQL,
//! selected by the URL. Every diesel call runs on `spawn_blocking` behind one of the async
//! methods below.
//!
//! Invariants: every mutation writes the resource (version + 1), one outbox row per configured
//! target (coalescing on (target, resource)), and an audit row in one transaction; a unique
//! constraint on the normalised `userName` / group `displayName` of live resources decides
//! conflicts (never a check-then-insert); likewise a unique index on the normalised target key
//! of `target_state` (held or intended) keeps two resources off one entry (`keys`).
//!
//! Client text kept in its own column (names, externalId, target keys) goes through
//! `encode_text` so a NUL survives PostgreSQL; the JSON body keeps the canonical value.

mod apply;
mod batch;
mod commit;
mod dbclock;
mod gate;
mod history;
mod instances;
mod keys;
mod members;
mod models;
mod nested;
mod outbox;
mod references;
mod resources;
mod schema;
mod tokens;

use crate::bookkeeping::Bookkeeping;
use crate::scim::patch::MemberOp;
use crate::scim::resource::{GroupInput, GroupRef, MemberRef, Meta, ResourceType, UserInput};
use crate::scim::ScimError;
pub use apply::{BeforeSync, BeforeSynced, ReferenceLookup, Resolved, Snapshot};
pub use instances::{Fence, InstanceInfo, JobTurn, Registration};
use models::ResourceRow;
pub use references::Reference;
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Store failures. `Scim` carries a client error raised inside a transaction (uniqueness,
/// precondition, invalid member, or an error returned by an update closure).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Scim(#[from] ScimError),
    /// The database is unreachable, full, or failed; the HTTP layer answers 503.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Bad URL, failed migration and the like.
    #[error("store: {0}")]
    Other(String),
    /// Another resource already holds or intends this target key (the unique index on the
    /// normalised key of `target_state`): the write was refused.
    #[error("target {target}: key {key} is already held by {holder_text}", holder_text = holder.as_deref().map_or_else(|| "another resource".to_owned(), |h| format!("resource {h}")))]
    KeyConflict {
        target: String,
        /// The key as written (not normalised).
        key: String,
        /// The resource id holding it (`None` if it could not be read back).
        holder: Option<String>,
    },
}

pub use keys::KeyNormFn;
pub use members::{MemberDelta, MembersSettle, Recorded};

/// Who did what, written to the audit table with every mutation.
#[derive(Debug, Clone, Default)]
pub struct AuditCtx {
    /// The authenticated token's name.
    pub token_name: String,
    /// The request id, also stored on the outbox row.
    pub request_id: String,
    /// Wall-clock time of the request, ms since the epoch (time is a parameter).
    pub now_ms: i64,
    /// The request's deadline, when the mutation answers a client (see [`Deadline`]).
    pub deadline: Option<Deadline>,
}

/// A request's deadline as the store honours it (issue 8): a mutation that reaches its commit
/// after `at` rolls back (`Unavailable`), and [`Deadline::store_started`] tells the HTTP edge
/// that a mutation is under way, so it waits for the outcome instead of answering 503 around a
/// transaction that may still commit. The answer always matches what was committed (test:
/// `scim_api::a_request_past_its_deadline_answers_what_was_committed`).
#[derive(Debug, Clone)]
pub struct Deadline {
    at: std::time::Instant,
    started: Arc<std::sync::atomic::AtomicBool>,
}

impl Deadline {
    /// A deadline at `at`.
    pub fn new(at: std::time::Instant) -> Deadline {
        Deadline {
            at,
            started: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        }
    }

    /// When the request must be answered.
    pub fn at(&self) -> std::time::Instant {
        self.at
    }

    /// True once a mutation has been handed to the store: from then on only the store's
    /// outcome (commit or rollback) may decide the answer.
    pub fn store_started(&self) -> bool {
        self.started.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn mark_started(&self) {
        self.started
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    fn passed(&self) -> bool {
        std::time::Instant::now() >= self.at
    }
}

/// A stored user (live, or a tombstone when `deleted`).
#[derive(Debug, Clone)]
pub struct StoredUser {
    pub id: String,
    pub meta: Meta,
    pub data: Map<String, Value>,
    pub user_name: String,
    pub external_id: Option<String>,
    pub active: bool,
    /// Hash per `[scim] password_sync` (`{SSHA512}...`/`{ARGON2}...`), never clear text.
    pub password_hash: Option<String>,
    pub deleted: bool,
}

/// A stored group (live or tombstone). Members are loaded separately.
#[derive(Debug, Clone)]
pub struct StoredGroup {
    pub id: String,
    pub meta: Meta,
    pub data: Map<String, Value>,
    pub display_name: String,
    pub external_id: Option<String>,
    pub deleted: bool,
}

/// A page of a list query.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub total: u64,
}

/// What a PUT/PATCH closure returns for a user.
#[derive(Debug, Clone)]
pub struct UserUpdate {
    pub input: UserInput,
    /// `Some` to replace the stored hash (already hashed by the caller).
    pub password_hash: Option<String>,
}

/// What a PUT/PATCH closure returns for a group.
#[derive(Debug, Clone)]
pub struct GroupUpdate {
    /// New canonical body, display name and externalId.
    pub data: Map<String, Value>,
    pub display_name: String,
    pub external_id: Option<String>,
    /// Membership changes in order (a PUT with members is one `MemberOp::Replace`).
    pub members: Vec<MemberOp>,
}

/// One outbox row: "make `target` match resource `resource_id` at `version` or later".
#[derive(Debug, Clone)]
pub struct OutboxItem {
    pub id: i64,
    pub target: String,
    pub resource_type: ResourceType,
    pub resource_id: String,
    /// Resource version when the row was last (re)queued.
    pub version: i64,
    /// `create`, `update`, `delete`, `membership`, `resync` (informational: apply is level-triggered).
    pub operation: String,
    pub request_id: Option<String>,
    pub attempts: i32,
    pub next_attempt_ms: i64,
    pub last_error: Option<String>,
    /// `pending` or `dead`.
    pub state: String,
    pub enqueued_ms: i64,
    /// Fencing epoch of the current claim (checked when settling).
    pub claim_epoch: i64,
    /// Bumped by every re-queue of the row; settling deletes the row only when neither
    /// `version` nor `generation` moved since the claim.
    pub generation: i64,
    /// The instance incarnation read before the claim (see [`Fence`]): a lease is this
    /// process's only while the fence still reads it. 0 for a row not claimed by this process.
    pub incarnation: i64,
}

/// What a target holds for one resource.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetState {
    pub target: String,
    pub resource_type: ResourceType,
    pub resource_id: String,
    pub applied_version: i64,
    /// The entry's key in the target (an LDAP DN, a SQL key value); `None` once deleted.
    pub target_key: Option<String>,
    /// The bookkeeping (stored as JSON; see [`crate::bookkeeping`]).
    pub extra: Option<Bookkeeping>,
    pub updated_ms: i64,
}

/// Per-target counters for `scim-sync status`, `/readyz` and metrics.
#[derive(Debug, Clone, Default)]
pub struct TargetStatus {
    pub target: String,
    pub pending: u64,
    pub oldest_pending_ms: Option<i64>,
    pub applied: u64,
    pub dead: u64,
}

/// A token as listed (never the token itself).
#[derive(Debug, Clone)]
pub struct TokenInfo {
    pub id: i64,
    pub name: String,
    pub created_ms: i64,
    pub last_used_ms: Option<i64>,
    pub revoked_ms: Option<i64>,
}

/// One audit / history entry.
#[derive(Debug, Clone)]
pub struct HistoryEntry {
    pub at_ms: i64,
    pub resource_type: ResourceType,
    pub resource_id: String,
    /// `create`, `replace`, `patch`, `delete`, `membership` (a group that lost a member because
    /// the user was deleted), or `applied:<target>` / `dead:<target>`.
    pub operation: String,
    pub token_name: Option<String>,
    pub request_id: Option<String>,
    pub version: i64,
    pub detail: Option<String>,
}

/// The pooled connection: SQLite or PostgreSQL behind one diesel connection type. Queries are
/// written once against it; backend-specific SQL (row locks, `SKIP LOCKED`, `BEGIN IMMEDIATE`)
/// matches on the variant.
#[derive(diesel::MultiConnection)]
pub(crate) enum DbConnection {
    Sqlite(diesel::SqliteConnection),
    Pg(diesel::PgConnection),
}

/// Where the pool connects: parsed from [`StoreSettings`] once.
#[derive(Clone)]
enum ConnTarget {
    Sqlite {
        path: String,
        busy_timeout_ms: u64,
    },
    /// The full libpq URL, password included: never logged (no `Debug`).
    Pg {
        url: String,
    },
}

/// The r2d2 connection manager: establishes the right variant and applies the SQLite pragmas
/// to every new connection.
struct Manager {
    target: ConnTarget,
}

impl diesel::r2d2::ManageConnection for Manager {
    type Connection = DbConnection;
    type Error = diesel::r2d2::Error;

    fn connect(&self) -> Result<DbConnection, diesel::r2d2::Error> {
        use diesel::Connection;
        match &self.target {
            ConnTarget::Sqlite {
                path,
                busy_timeout_ms,
            } => {
                let mut conn = diesel::SqliteConnection::establish(path)
                    .map_err(diesel::r2d2::Error::ConnectionError)?;
                // busy_timeout first: switching to WAL needs a lock another connection may hold.
                diesel::connection::SimpleConnection::batch_execute(
                    &mut conn,
                    &format!(
                        "PRAGMA busy_timeout = {busy_timeout_ms}; PRAGMA journal_mode = WAL; \
                         PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;"
                    ),
                )
                .map_err(diesel::r2d2::Error::QueryError)?;
                Ok(DbConnection::Sqlite(conn))
            }
            ConnTarget::Pg { url } => {
                let conn = diesel::PgConnection::establish(url)
                    .map_err(diesel::r2d2::Error::ConnectionError)?;
                Ok(DbConnection::Pg(conn))
            }
        }
    }

    fn is_valid(&self, conn: &mut DbConnection) -> Result<(), diesel::r2d2::Error> {
        use diesel::r2d2::R2D2Connection;
        conn.ping().map_err(diesel::r2d2::Error::QueryError)
    }

    fn has_broken(&self, conn: &mut DbConnection) -> bool {
        use diesel::r2d2::R2D2Connection;
        conn.is_broken()
    }
}

type Pool = diesel::r2d2::Pool<Manager>;

/// Migrations for each backend, embedded in the binary.
const SQLITE_MIGRATIONS: diesel_migrations::EmbeddedMigrations =
    diesel_migrations::embed_migrations!("migrations/sqlite");
/// `pg_advisory_lock` key serialising migrations across instances ("scimsync" in ASCII).
const MIGRATION_LOCK_KEY: i64 = 0x7363_696d_7379_6e63;
const POSTGRES_MIGRATIONS: diesel_migrations::EmbeddedMigrations =
    diesel_migrations::embed_migrations!("migrations/postgres");

/// How much earlier than a claim's lease end in the store (`outbox.claimed_until_ms`, which the
/// other workers and instances compare) the holder's own reading of it ends, for its target
/// writes (`targets::Lease`): the holder's clock offset to the database is measured with an
/// error (`store::dbclock`), as for the instance fence (second reader's finding 2).
pub const LEASE_MARGIN_MS: i64 = dbclock::FENCE_MARGIN_MS;

struct Inner {
    pool: Pool,
    targets: RwLock<Arc<Vec<String>>>,
    /// Per target, how its keys are normalised for the uniqueness index (`set_key_norm`).
    key_norms: RwLock<std::collections::HashMap<String, KeyNormFn>>,
    /// Recorded on every claim this store takes ([`StoreSettings::instance_id`]).
    instance_id: String,
    /// How long this process's claims stay its own (`instances`).
    fence: instances::Fence,
    /// PostgreSQL: the URL, for the change listener's own connection ([`Store::listen_for_changes`]).
    pg_url: Option<String>,
    /// The instance lock on `<db>.lock`, held for the life of the store (file databases only).
    _instance_lock: Option<std::fs::File>,
    /// PostgreSQL: the connection holding the instance's advisory lock (`take_pg_instance_lock`).
    _pg_instance_lock: Option<std::sync::Mutex<diesel::PgConnection>>,
    /// A SQLite memory database (no other process can hold claims in it).
    memory: bool,
    /// The SQLite file, checked by [`Store::ping`] (an open connection keeps working on a
    /// deleted file, which a restart would then lose).
    sqlite_path: Option<PathBuf>,
    /// The queue for SQLite's write lock (a database file; `None` on PostgreSQL and in memory,
    /// where the one connection already serialises); see [`gate`].
    write_gate: Option<Arc<gate::WriteGate>>,
    /// Group commit of clients' mutations (a SQLite file; `None` where each keeps its own
    /// transaction); see [`commit`].
    committer: Option<Arc<commit::Committer>>,
    /// Database minus local clock (ms), measured on PostgreSQL ([`dbclock`]).
    clock_offset_ms: std::sync::atomic::AtomicI64,
    /// Tests: how far this store's clock runs ahead of the system's ([`Store::skew_clock_for_tests`]).
    clock_skew_ms: std::sync::atomic::AtomicI64,
    /// What [`Store::outbox_counts`] reports.
    counts: Counts,
}

/// The claim and settle work this store did (see [`OutboxCounts`]).
#[derive(Default)]
struct Counts {
    claims: std::sync::atomic::AtomicU64,
    claimed_rows: std::sync::atomic::AtomicU64,
    settles: std::sync::atomic::AtomicU64,
    renewals: std::sync::atomic::AtomicU64,
    /// `NOTIFY` statements sent (`instances::notify_queued`).
    notifies: Arc<std::sync::atomic::AtomicU64>,
}

/// How much claim and settle work this store (this process) did: the claim overhead per
/// applied row is `claims / settles` (`scripts/bench`), and a worker that must not claim
/// (its instance fence ran out) is seen not to (`faults::multi`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxCounts {
    /// The workers' claim transactions ([`Store::claim`]), empty ones included.
    pub claims: u64,
    /// Rows those claims returned.
    pub claimed_rows: u64,
    /// Rows settled (applied or failed), each its own transaction on PostgreSQL.
    pub settles: u64,
    /// Lease renewals of claimed rows.
    pub renewals: u64,
}

/// A cheap-to-clone handle on the database pool.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

/// Connection settings for [`Store::open`].
#[derive(Clone)]
pub struct StoreSettings {
    /// `sqlite:///path/to.db`, `sqlite://relative.db`, `sqlite::memory:` or `postgres://...`.
    pub url: String,
    /// Password for PostgreSQL, read from a file or the environment by the config loader.
    pub password: Option<String>,
    pub pool_size: u32,
    pub busy_timeout_ms: u64,
    /// Take the exclusive instance lock `<db>.lock` (SQLite files): `serve` does, so a second
    /// daemon on the same file refuses to start; one-shot CLI commands (token, status...) do not,
    /// so they work while the daemon runs. On PostgreSQL the lock is an advisory lock on the
    /// instance id: a second daemon under the same `reconcile.instance_id` refuses to start.
    pub instance_lock: bool,
    /// This instance's id, recorded on every outbox claim it takes (`outbox.claimed_by`), so a
    /// restarted daemon releases its own claims at once ([`Store::release_stale_claims`]).
    /// Must be stable across restarts and distinct per instance sharing a PostgreSQL database
    /// (`reconcile.instance_id`, default the host name: see docs/configuration.md).
    pub instance_id: String,
}

impl std::fmt::Debug for StoreSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreSettings")
            .field("url", &redact_url(&self.url))
            .field("password", &self.password.as_ref().map(|_| "[redacted]"))
            .field("pool_size", &self.pool_size)
            .field("busy_timeout_ms", &self.busy_timeout_ms)
            .field("instance_id", &self.instance_id)
            .finish()
    }
}

/// What [`parse_url`] found.
enum ParsedUrl {
    SqliteFile(PathBuf),
    SqliteMemory,
    Pg(String),
}

/// Parse a store URL.
fn parse_url(url: &str, password: Option<&str>) -> Result<ParsedUrl, StoreError> {
    if url == "sqlite::memory:" || url == "sqlite://:memory:" {
        return Ok(ParsedUrl::SqliteMemory);
    }
    if let Some(rest) = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
    {
        if rest.is_empty() || rest.contains('?') || rest.contains('\0') {
            return Err(StoreError::Other(format!("bad sqlite URL {url:?}: expected sqlite:///absolute/path.db, sqlite://relative.db or sqlite::memory:")));
        }
        return Ok(ParsedUrl::SqliteFile(PathBuf::from(rest)));
    }
    for scheme in ["postgres://", "postgresql://"] {
        if let Some(rest) = url.strip_prefix(scheme) {
            return Ok(ParsedUrl::Pg(with_password(scheme, rest, password)));
        }
    }
    Err(StoreError::Other(format!(
        "unsupported store URL {:?}: use sqlite:///path.db, sqlite::memory: or postgres://...",
        redact_url(url)
    )))
}

/// Put `password` (percent-encoded) into the userinfo of a postgres URL, replacing any there.
fn with_password(scheme: &str, rest: &str, password: Option<&str>) -> String {
    let Some(password) = password else {
        return format!("{scheme}{rest}");
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let (user, host) = match authority.rfind('@') {
        Some(at) => {
            let userinfo = authority.get(..at).unwrap_or("");
            let user = userinfo.split(':').next().unwrap_or("");
            (user, authority.get(at + 1..).unwrap_or(""))
        }
        None => ("", authority),
    };
    let encoded =
        percent_encoding::utf8_percent_encode(password, percent_encoding::NON_ALPHANUMERIC);
    format!("{scheme}{user}:{encoded}@{host}{tail}")
}

/// A URL fit for logs and errors: any userinfo password replaced.
fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let (scheme, rest) = url.split_at(scheme_end + 3);
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rfind('@') {
        Some(at) => {
            let userinfo = authority.get(..at).unwrap_or("");
            let host = authority.get(at + 1..).unwrap_or("");
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{scheme}{user}:[redacted]@{host}{tail}"),
                None => url.to_owned(),
            }
        }
        None => url.to_owned(),
    }
}

/// Take the PostgreSQL instance lock: a session advisory lock on
/// `hashtext('scim-sync/instance/' || instance_id)`, held by a connection of its own for the
/// life of the store (it goes with the process, `kill -9` included). Two daemons under one
/// instance id would release each other's live claims at startup.
fn take_pg_instance_lock(url: &str, instance_id: &str) -> Result<diesel::PgConnection, StoreError> {
    use diesel::sql_types::{Bool, Text};
    use diesel::{Connection, RunQueryDsl};
    #[derive(diesel::QueryableByName)]
    struct Locked {
        #[diesel(sql_type = Bool)]
        locked: bool,
    }
    let mut conn = diesel::PgConnection::establish(url)
        .map_err(|e| StoreError::Unavailable(format!("cannot open the store: {e}")))?;
    // A process killed a moment ago holds the lock until the server notices its connection
    // closed (at once on a live network): wait a little before refusing.
    let give_up = std::time::Instant::now() + PG_INSTANCE_LOCK_WAIT;
    loop {
        let got: Locked = diesel::sql_query(
            "SELECT pg_try_advisory_lock(hashtext('scim-sync/instance/' || $1)) AS locked",
        )
        .bind::<Text, _>(instance_id)
        .get_result(&mut conn)?;
        if got.locked {
            return Ok(conn);
        }
        if std::time::Instant::now() >= give_up {
            return Err(StoreError::Other(format!(
                "another scim-sync daemon with instance id {instance_id:?} uses this database \
                 (its instance lock is held): give each daemon its own reconcile.instance_id"
            )));
        }
        #[allow(clippy::disallowed_methods)] // on the blocking pool (`Store::open`)
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// How long [`take_pg_instance_lock`] waits for a held lock.
const PG_INSTANCE_LOCK_WAIT: Duration = Duration::from_secs(10);

/// Take the instance lock `<db>.lock` next to a database file.
fn take_instance_lock(db: &Path) -> Result<std::fs::File, StoreError> {
    let mut lock_path = db.as_os_str().to_owned();
    lock_path.push(".lock");
    let lock_path = PathBuf::from(lock_path);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| {
            StoreError::Other(format!(
                "cannot open instance lock {}: {e}",
                lock_path.display()
            ))
        })?;
    // `File::try_lock` is std since Rust 1.89 (the crate's `rust-version`).
    let locked = file.try_lock();
    match locked {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Other(format!(
            "database {} is in use by another scim-sync process (instance lock {} is held)",
            db.display(),
            lock_path.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(StoreError::Other(format!(
            "cannot lock {}: {e}",
            lock_path.display()
        ))),
    }
}

impl From<diesel::result::Error> for StoreError {
    /// Any database failure the caller did not turn into a client error: the HTTP layer answers
    /// 503 and the IdP retries.
    fn from(e: diesel::result::Error) -> Self {
        StoreError::Unavailable(e.to_string())
    }
}

/// Ids are UUIDs made here: an id with a NUL finds nothing (PostgreSQL text cannot hold it).
pub(crate) fn has_nul(s: &str) -> bool {
    s.contains('\0')
}

/// Refuse a NUL where the store does not escape it (token names).
pub(crate) fn check_text(attribute: &str, value: &str) -> Result<(), StoreError> {
    if has_nul(value) {
        return Err(StoreError::Scim(ScimError::invalid_value(format!(
            "{attribute} must not contain NUL"
        ))));
    }
    Ok(())
}

/// Escape character of [`encode_text`]: a Unicode noncharacter no IdP sends.
const TEXT_ESCAPE: char = '\u{10FFFF}';

/// Client text stored in its own column (names, keys, externalId, target keys): PostgreSQL
/// text cannot hold NUL, so NUL becomes `ESC 0` and ESC becomes `ESC ESC` (reversible and
/// injective, so uniqueness and lookups are unchanged). The same on both backends.
pub(crate) fn encode_text(s: &str) -> String {
    if !s.contains(['\0', TEXT_ESCAPE]) {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len() + 4);
    for c in s.chars() {
        match c {
            '\0' => {
                out.push(TEXT_ESCAPE);
                out.push('0');
            }
            TEXT_ESCAPE => {
                out.push(TEXT_ESCAPE);
                out.push(TEXT_ESCAPE);
            }
            other => out.push(other),
        }
    }
    out
}

/// The inverse of [`encode_text`].
pub(crate) fn decode_text(s: String) -> String {
    if !s.contains(TEXT_ESCAPE) {
        return s;
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != TEXT_ESCAPE {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('0') => out.push('\0'),
            Some(TEXT_ESCAPE) => out.push(TEXT_ESCAPE),
            Some(other) => {
                out.push(c);
                out.push(other);
            }
            None => out.push(c),
        }
    }
    out
}

/// Free text for informational columns (errors, audit details): NUL shown as U+FFFD.
pub(crate) fn sanitize_text(s: &str) -> String {
    s.replace('\0', "\u{FFFD}")
}

/// Lower-case NFC, the key of `name_norm` and of `emails.value` lookups (RFC 7643: `userName`
/// is `caseExact: false`; NFC makes composed and decomposed spellings one name), stored with
/// [`encode_text`].
pub(crate) fn normalise(s: &str) -> String {
    // One fold for the index and for filter matching (`scim::filter::fold`).
    encode_text(&crate::scim::filter::fold(s))
}

/// Run `f` in one write transaction: `BEGIN IMMEDIATE` on SQLite (the write lock is taken up
/// front, so a read never has to upgrade and hit SQLITE_BUSY, R-25), a plain transaction on
/// PostgreSQL (where callers lock rows with `FOR UPDATE`). Rolled back when `f` fails.
///
/// On SQLite the writer first waits its turn in the store's [`gate::WriteGate`] (installed by
/// `Store::run`) as a background write; a client's mutation uses [`write_tx_for`], which goes
/// ahead.
pub(crate) fn write_tx<T>(
    conn: &mut DbConnection,
    f: impl FnOnce(&mut DbConnection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    write_tx_as(conn, gate::Priority::Background, None, f)
}

/// [`write_tx`] for a write a client's request waits on that is not its mutation (the token's
/// last use): it queues as a client's write, with no deadline of its own.
pub(crate) fn write_tx_client<T>(
    conn: &mut DbConnection,
    f: impl FnOnce(&mut DbConnection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    write_tx_as(conn, gate::Priority::Client, None, f)
}

fn write_tx_as<T>(
    conn: &mut DbConnection,
    priority: gate::Priority,
    until: Option<std::time::Instant>,
    f: impl FnOnce(&mut DbConnection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    use diesel::connection::{AnsiTransactionManager, TransactionManager};
    type Tm = <DbConnection as diesel::Connection>::TransactionManager;
    if in_transaction(conn)? {
        // Inside a batch's transaction ([`write_each`]): a savepoint, so this write's error
        // rolls back this write only; the batch already holds its turn and the write lock.
        return diesel::Connection::transaction(conn, f);
    }
    let gate = match conn {
        DbConnection::Sqlite(_) => gate::current(),
        DbConnection::Pg(_) => None,
    };
    // Held until the commit or rollback below.
    let _turn = match &gate {
        Some(g) => Some(g.enter(priority, until)?),
        None => None,
    };
    match conn {
        DbConnection::Sqlite(c) => {
            AnsiTransactionManager::begin_transaction_sql(c, "BEGIN IMMEDIATE")?
        }
        DbConnection::Pg(_) => Tm::begin_transaction(conn)?,
    }
    // One NOTIFY for the whole transaction, whatever its steps queued (`instances`).
    let notify = instances::NotifyScope::begin();
    match f(conn).and_then(|value| notify.finish(conn).map(|()| value)) {
        Ok(value) => {
            Tm::commit_transaction(conn)?;
            Ok(value)
        }
        Err(e) => {
            // The caller's error is the one that matters; a failed rollback leaves the
            // connection marked broken and r2d2 discards it.
            let _ = Tm::rollback_transaction(conn);
            Err(e)
        }
    }
}

/// Whether `conn` is inside a transaction already.
fn in_transaction(conn: &mut DbConnection) -> Result<bool, StoreError> {
    use diesel::connection::{AnsiTransactionManager, TransactionManager};
    let depth = match conn {
        DbConnection::Sqlite(c) => AnsiTransactionManager::transaction_manager_status_mut(c)
            .transaction_depth()?
            .is_some(),
        DbConnection::Pg(c) => AnsiTransactionManager::transaction_manager_status_mut(c)
            .transaction_depth()?
            .is_some(),
    };
    Ok(depth)
}

/// Run `each` for every row of a batch of the reconciler's writes, one result per row. On
/// SQLite in one write transaction (one writer: one turn and one commit per batch instead of
/// per row), each row in a savepoint, so a row's error undoes that row's writes only; when the
/// commit fails every row of that transaction gets its error. The batch gives its turn up
/// between rows when a client's write waits ([`gate::WriteGate::client_waiting`]: it commits
/// the rows so far and queues again for the rest), so a push waits for one row's writes, not a
/// batch's. When SQLite itself rolled the transaction back (a full disk, an I/O error), the
/// rows after it are not run. On PostgreSQL one transaction per row: a row's writes lock in
/// the order its own write takes them (`outbox::settle_applied`), and one transaction spanning
/// rows could deadlock with another worker's batch; PostgreSQL commits concurrently.
pub(crate) fn write_each<R, T>(
    conn: &mut DbConnection,
    rows: Vec<R>,
    each: impl Fn(&mut DbConnection, R) -> Result<T, StoreError>,
) -> Vec<Result<T, StoreError>> {
    if matches!(conn, DbConnection::Pg(_)) {
        return rows
            .into_iter()
            .map(|row| write_tx(conn, |conn| each(conn, row)))
            .collect();
    }
    let gate = gate::current();
    let mut out: Vec<Result<T, StoreError>> = Vec::with_capacity(rows.len());
    let mut rows = rows.into_iter().peekable();
    while rows.peek().is_some() {
        let mut done: Vec<Result<T, StoreError>> = Vec::new();
        let committed = write_tx(conn, |conn| {
            while let Some(row) = rows.next() {
                let result = diesel::Connection::transaction(conn, |conn| each(conn, row));
                let failed = result.is_err();
                done.push(result);
                if failed && !in_transaction(conn)? {
                    return Err(StoreError::Unavailable(
                        "the database rolled the batch back".into(),
                    ));
                }
                if rows.peek().is_some() && gate.as_ref().is_some_and(|g| g.client_waiting()) {
                    break;
                }
            }
            Ok(())
        });
        match committed {
            Ok(()) => out.extend(done),
            Err(e) => {
                let text = e.to_string();
                let n = done.len();
                out.extend((0..n).map(|_| Err(StoreError::Unavailable(text.clone()))));
                // Nothing after a failed commit is tried: the rows left fail alike.
                out.extend(
                    rows.by_ref()
                        .map(|_| Err(StoreError::Unavailable(text.clone()))),
                );
            }
        }
    }
    out
}

/// [`write_tx`] for a client's mutation: ahead of background writes in the SQLite write
/// queue (waiting for it at most until the request's deadline), and rolled back instead of
/// committed when the request's deadline passed meanwhile (e.g. waiting on the SQLite write
/// lock or a row lock), so a client told 503 never finds the change made.
pub(crate) fn write_tx_for<T>(
    conn: &mut DbConnection,
    ctx: &AuditCtx,
    f: impl FnOnce(&mut DbConnection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let until = ctx.deadline.as_ref().map(|d| d.at);
    write_tx_as(conn, gate::Priority::Client, until, |conn| {
        // PostgreSQL: a row lock waited on past the deadline fails the statement (and the
        // request, 503) instead of holding the request open. SQLite waits `busy_timeout`.
        if let (DbConnection::Pg(_), Some(d)) = (&*conn, &ctx.deadline) {
            let left = d.at.saturating_duration_since(std::time::Instant::now());
            let ms = left.as_millis().clamp(1, 3_600_000);
            diesel::RunQueryDsl::execute(
                diesel::sql_query(format!("SET LOCAL lock_timeout = {ms}")),
                conn,
            )?;
        }
        let value = f(conn)?;
        match &ctx.deadline {
            Some(d) if d.passed() => Err(StoreError::Unavailable(
                "the request's deadline passed before commit; rolled back".into(),
            )),
            _ => Ok(value),
        }
    })
}

/// Run `f` in a read transaction: one consistent snapshot for multi-query reads. PostgreSQL
/// needs `REPEATABLE READ` for that (under its default READ COMMITTED each statement sees a
/// new snapshot: a count and a page could disagree); `READ ONLY` because nothing here writes.
/// On SQLite a deferred transaction reads one snapshot already.
pub(crate) fn read_tx<T>(
    conn: &mut DbConnection,
    f: impl FnOnce(&mut DbConnection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    use diesel::connection::{AnsiTransactionManager, TransactionManager};
    use diesel::Connection;
    type Tm = <DbConnection as diesel::Connection>::TransactionManager;
    let DbConnection::Pg(c) = conn else {
        return conn.transaction(f);
    };
    if AnsiTransactionManager::transaction_manager_status_mut(c)
        .transaction_depth()?
        .is_some()
    {
        // Already inside a transaction (a write): its snapshot rules.
        return f(conn);
    }
    AnsiTransactionManager::begin_transaction_sql(
        c,
        "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
    )?;
    match f(conn) {
        Ok(value) => {
            Tm::commit_transaction(conn)?;
            Ok(value)
        }
        Err(e) => {
            let _ = Tm::rollback_transaction(conn);
            Err(e)
        }
    }
}

/// Until when the request waits, if it has a deadline.
fn deadline_of(ctx: &AuditCtx) -> Option<std::time::Instant> {
    ctx.deadline.as_ref().map(|d| d.at)
}

/// Note on the request's [`Deadline`] that a mutation is being handed to the store.
fn mark_started(ctx: &AuditCtx) {
    if let Some(d) = &ctx.deadline {
        d.mark_started();
    }
}

impl Store {
    /// Run blocking diesel work on the blocking pool with a pooled connection.
    async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(&mut DbConnection) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let _gate = gate::install(inner.write_gate.clone());
            let _clock = dbclock::install(
                inner
                    .clock_offset_ms
                    .load(std::sync::atomic::Ordering::SeqCst),
            );
            let _notifies = instances::count_notifies(Arc::clone(&inner.counts.notifies));
            let mut conn = inner
                .pool
                .get()
                .map_err(|e| StoreError::Unavailable(e.to_string()))?;
            f(&mut conn)
        })
        .await
        .map_err(|e| StoreError::Other(format!("store task failed: {e}")))?
    }

    /// Run a client's mutation (`f` calls [`write_tx_for`]): on a SQLite file in the next
    /// group commit ([`commit`]), elsewhere as [`Store::run`] does.
    async fn run_mutation<T, F>(
        &self,
        deadline: Option<std::time::Instant>,
        f: F,
    ) -> Result<T, StoreError>
    where
        F: FnOnce(&mut DbConnection) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        let Some(committer) = self.inner.committer.clone() else {
            return self.run(f).await;
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job = commit::JobOf { f, deadline, tx };
        // The channel closes unanswered only when the job panicked (a 500, as a failed store
        // task always was).
        let closed = |_| StoreError::Other("the store's write task failed".into());
        if !committer.submit(Box::new(job)) {
            return rx.await.map_err(closed)?;
        }
        let inner = Arc::clone(&self.inner);
        let leader = Arc::clone(&committer);
        let mut lead = tokio::task::spawn_blocking(move || commit::lead(&inner, &leader));
        let mut rx = rx;
        tokio::select! {
            result = &mut rx => result.map_err(closed)?,
            joined = &mut lead => {
                // A leader that never ran (the runtime is shutting down) answers nobody.
                if joined.as_ref().is_err_and(tokio::task::JoinError::is_cancelled) {
                    committer.abandon();
                }
                rx.await.map_err(closed)?
            }
        }
    }

    /// The configured targets, as a snapshot for one mutation.
    fn targets(&self) -> Arc<Vec<String>> {
        match self.inner.targets.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Open the pool (SQLite: WAL, `synchronous=FULL`, busy timeout, foreign keys; refuses a second
    /// daemon on the same file via an instance lock). Does not migrate. `targets` are the
    /// targets every mutation queues for (a store without them would queue nothing); reload
    /// changes them with [`Store::set_targets`].
    ///
    /// # Errors
    /// `Other` for a bad URL or a database file held by another process, `Unavailable` when the
    /// database cannot be reached.
    pub async fn open(settings: &StoreSettings, targets: Vec<String>) -> Result<Store, StoreError> {
        let instance_id = settings.instance_id.clone();
        let parsed = parse_url(&settings.url, settings.password.as_deref())?;
        let pool_size = settings.pool_size.max(1);
        let busy_timeout_ms = settings.busy_timeout_ms;
        let want_lock = settings.instance_lock;
        let sqlite_path = match &parsed {
            ParsedUrl::SqliteFile(path) => Some(path.clone()),
            _ => None,
        };
        let store = tokio::task::spawn_blocking(move || {
            let builder = diesel::r2d2::Pool::builder().connection_timeout(Duration::from_secs(10));
            let memory = matches!(parsed, ParsedUrl::SqliteMemory);
            let mut pg_lock = None;
            let mut pg_url = None;
            let (target, builder, lock) = match parsed {
                ParsedUrl::SqliteMemory => (
                    ConnTarget::Sqlite {
                        path: ":memory:".to_owned(),
                        busy_timeout_ms,
                    },
                    // One connection that never expires: the database lives in it.
                    builder
                        .max_size(1)
                        .min_idle(Some(1))
                        .idle_timeout(None)
                        .max_lifetime(None),
                    None,
                ),
                ParsedUrl::SqliteFile(path) => {
                    let lock = if want_lock {
                        Some(take_instance_lock(&path)?)
                    } else {
                        None
                    };
                    let path_str = path
                        .to_str()
                        .ok_or_else(|| {
                            StoreError::Other(format!(
                                "database path {} is not UTF-8",
                                path.display()
                            ))
                        })?
                        .to_owned();
                    (
                        ConnTarget::Sqlite {
                            path: path_str,
                            busy_timeout_ms,
                        },
                        builder.max_size(pool_size),
                        lock,
                    )
                }
                ParsedUrl::Pg(url) => {
                    if want_lock {
                        pg_lock = Some(std::sync::Mutex::new(take_pg_instance_lock(
                            &url,
                            &instance_id,
                        )?));
                    }
                    pg_url = Some(url.clone());
                    (ConnTarget::Pg { url }, builder.max_size(pool_size), None)
                }
            };
            let pool = builder
                .build(Manager { target })
                .map_err(|e| StoreError::Unavailable(format!("cannot open the store: {e}")))?;
            Ok::<Store, StoreError>(Store {
                inner: Arc::new(Inner {
                    pool,
                    targets: RwLock::new(Arc::new(targets)),
                    instance_id,
                    fence: instances::Fence::default(),
                    pg_url,
                    key_norms: RwLock::new(std::collections::HashMap::new()),
                    _instance_lock: lock,
                    _pg_instance_lock: pg_lock,
                    memory,
                    write_gate: sqlite_path.as_ref().map(|_| {
                        Arc::new(gate::WriteGate::new(Duration::from_millis(busy_timeout_ms)))
                    }),
                    committer: sqlite_path
                        .as_ref()
                        .map(|_| Arc::new(commit::Committer::default())),
                    sqlite_path,
                    clock_offset_ms: std::sync::atomic::AtomicI64::new(0),
                    clock_skew_ms: std::sync::atomic::AtomicI64::new(0),
                    counts: Counts::default(),
                }),
            })
        })
        .await
        .map_err(|e| StoreError::Other(format!("store task failed: {e}")))??;
        // PostgreSQL: the offset to the database's clock before any claim (a CLI claims too).
        // Unreachable now: measured again at registration and every heartbeat.
        let _ = store.measure_clock().await;
        Ok(store)
    }

    /// The claim and settle work done through this store so far.
    #[must_use]
    pub fn outbox_counts(&self) -> OutboxCounts {
        let c = &self.inner.counts;
        let get = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        OutboxCounts {
            claims: get(&c.claims),
            claimed_rows: get(&c.claimed_rows),
            settles: get(&c.settles),
            renewals: get(&c.renewals),
        }
    }

    /// Count `n` of one kind of outbox work.
    fn count(&self, which: fn(&Counts) -> &std::sync::atomic::AtomicU64, n: usize) {
        which(&self.inner.counts).fetch_add(
            u64::try_from(n).unwrap_or(u64::MAX),
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// `NOTIFY` statements this store sent (PostgreSQL: one per write transaction that
    /// queued rows).
    #[cfg(test)]
    pub(crate) fn notify_statements(&self) -> u64 {
        self.inner
            .counts
            .notifies
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// This store's clock (ms since the epoch): the system's, plus the skew a test set.
    fn local_ms(&self) -> i64 {
        crate::clock::now_ms().saturating_add(
            self.inner
                .clock_skew_ms
                .load(std::sync::atomic::Ordering::SeqCst),
        )
    }

    /// Tests: make this store's clock run `skew_ms` ahead of the system's (behind when
    /// negative), as a host whose clock is off would; pass readings of the same clock to the
    /// store's methods ([`Store::clock_ms`]). The next measurement of the database's clock
    /// (an instance heartbeat) corrects it.
    #[doc(hidden)]
    pub fn skew_clock_for_tests(&self, skew_ms: i64) {
        self.inner
            .clock_skew_ms
            .store(skew_ms, std::sync::atomic::Ordering::SeqCst);
    }

    /// This store's clock reading (the system clock, unless a test skewed it).
    #[must_use]
    pub fn clock_ms(&self) -> i64 {
        self.local_ms()
    }

    /// PostgreSQL: measure the offset of this store's clock to the database's and keep it
    /// for every lease and heartbeat time (`store::dbclock`). Returns it (0 on SQLite).
    ///
    /// # Errors
    /// `Unavailable`.
    pub async fn measure_clock(&self) -> Result<i64, StoreError> {
        let me = self.clone();
        let offset = self
            .run(move |conn| dbclock::measure(conn, &|| me.local_ms()))
            .await?;
        if let Some(offset) = offset {
            self.inner
                .clock_offset_ms
                .store(offset, std::sync::atomic::Ordering::SeqCst);
        }
        Ok(offset.unwrap_or(0))
    }

    /// Apply pending embedded migrations; returns the names applied.
    ///
    /// # Errors
    /// On a failed migration.
    pub async fn migrate(&self) -> Result<Vec<String>, StoreError> {
        use diesel::RunQueryDsl;
        use diesel_migrations::MigrationHarness;
        self.run(|conn| {
            let failed = |e: Box<dyn std::error::Error + Send + Sync>| {
                StoreError::Other(format!("migration failed: {e}"))
            };
            let names = |v: Vec<diesel::migration::MigrationVersion<'_>>| {
                v.iter().map(ToString::to_string).collect()
            };
            match conn {
                DbConnection::Sqlite(c) => c
                    .run_pending_migrations(SQLITE_MIGRATIONS)
                    .map(names)
                    .map_err(failed),
                DbConnection::Pg(c) => {
                    // Several instances may start at once on one PostgreSQL database: one
                    // migrates, the others wait on the advisory lock and then find nothing to do.
                    diesel::sql_query(format!("SELECT pg_advisory_lock({MIGRATION_LOCK_KEY})"))
                        .execute(c)?;
                    let result = c
                        .run_pending_migrations(POSTGRES_MIGRATIONS)
                        .map(names)
                        .map_err(failed);
                    diesel::sql_query(format!("SELECT pg_advisory_unlock({MIGRATION_LOCK_KEY})"))
                        .execute(c)?;
                    result
                }
            }
        })
        .await
    }

    /// The targets that receive outbox rows for each mutation (set at startup and on reload).
    pub fn set_targets(&self, names: Vec<String>) {
        let names = Arc::new(names);
        match self.inner.targets.write() {
            Ok(mut guard) => *guard = names,
            Err(poisoned) => *poisoned.into_inner() = names,
        }
    }

    /// A cheap liveness query (`SELECT 1`), for `/readyz`.
    ///
    /// # Errors
    /// `Unavailable`.
    pub async fn ping(&self) -> Result<(), StoreError> {
        if let Some(path) = &self.inner.sqlite_path {
            if !path.exists() {
                return Err(StoreError::Unavailable(format!(
                    "the database file {} is gone",
                    path.display()
                )));
            }
        }
        self.run(|conn| {
            use diesel::RunQueryDsl;
            diesel::sql_query("SELECT 1").execute(conn)?;
            Ok(())
        })
        .await
    }

    // ---- users ----

    /// Insert a user. `active` defaults to true.
    ///
    /// # Errors
    /// 409 uniqueness on a live user with the same normalised `userName`.
    pub async fn create_user(
        &self,
        input: UserInput,
        password_hash: Option<String>,
        ctx: &AuditCtx,
    ) -> Result<StoredUser, StoreError> {
        let (targets, ctx) = (self.targets(), ctx.clone());
        mark_started(&ctx);
        self.run_mutation(deadline_of(&ctx), move |conn| {
            resources::create_user(conn, &targets, input, password_hash, &ctx)
        })
        .await
    }

    /// A live user by id.
    ///
    /// # Errors
    /// `Unavailable`.
    pub async fn get_user(&self, id: &str) -> Result<Option<StoredUser>, StoreError> {
        let id = id.to_owned();
        self.run(move |conn| {
            resources::get(conn, ResourceType::User, &id, false)?
                .map(ResourceRow::into_user)
                .transpose()
        })
        .await
    }

    /// A user by id, tombstones included (for the reconciler).
    ///
    /// # Errors
    /// `Unavailable`.
    pub async fn get_user_any(&self, id: &str) -> Result<Option<StoredUser>, StoreError> {
        let id = id.to_owned();
        self.run(move |conn| {
            resources::get(conn, ResourceType::User, &id, true)?
                .map(ResourceRow::into_user)
                .transpose()
        })
        .await
    }

    /// Read-modify-write in one write transaction: `f` sees the current user and returns the
    /// replacement (or a SCIM error, e.g. 412 from an If-Match check). Bumps the version,
    /// writes outbox + audit rows. `operation` is `replace` or `patch`.
    ///
    /// # Errors
    /// 404 when there is no live user; whatever `f` returns; 409 on a `userName` collision.
    pub async fn update_user<F>(
        &self,
        id: &str,
        operation: &str,
        ctx: &AuditCtx,
        f: F,
    ) -> Result<StoredUser, StoreError>
    where
        F: FnOnce(&StoredUser) -> Result<UserUpdate, ScimError> + Send + 'static,
    {
        let (targets, ctx, id, operation) = (
            self.targets(),
            ctx.clone(),
            id.to_owned(),
            operation.to_owned(),
        );
        mark_started(&ctx);
        self.run_mutation(deadline_of(&ctx), move |conn| {
            resources::update_user(conn, &targets, &id, &operation, &ctx, f)
        })
        .await
    }

    /// Delete: the row becomes a tombstone (kept for the reconciler), memberships are removed in
    /// the same transaction and every affected group is queued too.
    ///
    /// # Errors
    /// 404 when there is no live user; 412 when `if_match` names another version.
    pub async fn delete_user(
        &self,
        id: &str,
        if_match: Option<i64>,
        ctx: &AuditCtx,
    ) -> Result<(), StoreError> {
        let (targets, ctx, id) = (self.targets(), ctx.clone(), id.to_owned());
        mark_started(&ctx);
        self.run_mutation(deadline_of(&ctx), move |conn| {
            resources::delete(conn, &targets, ResourceType::User, &id, if_match, &ctx)
        })
        .await
    }

    /// List live users in stable creation order. The filter is evaluated with
    /// `Filter::matches` on the rendered user; `Filter::equality_lookups` narrow the candidates
    /// through indexes first (userName, externalId, id, emails.value).
    ///
    /// # Errors
    /// `Unavailable`.
    pub async fn list_users(
        &self,
        filter: Option<crate::scim::filter::Filter>,
        start_index: u64,
        count: u64,
        base_url: String,
    ) -> Result<Page<StoredUser>, StoreError> {
        self.run(move |conn| {
            let page = resources::list(
                conn,
                ResourceType::User,
                filter.as_ref(),
                start_index,
                count,
                &base_url,
            )?;
            let items = page
                .items
                .into_iter()
                .map(ResourceRow::into_user)
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Page {
                items,
                total: page.total,
            })
        })
        .await
    }

    /// The groups a user belongs to (value + display), for the derived `groups` attribute.
    ///
    /// # Errors
    /// `Unavailable`.
    pub async fn groups_of_user(&self, user_id: &str) -> Result<Vec<GroupRef>, StoreError> {
        let id = user_id.to_owned();
        self.run(move |conn| resources::groups_of_user(conn, &id))
            .await
    }

    /// A live user by `userName` (case-insensitive), `externalId` (exact) or id; `by` is
    /// `"id"`, `"userName"` or `"externalId"` (any case). Used to resolve `manager.value`.
    /// Any other `by` finds nothing.
    ///
    /// # Errors
    /// `Unavailable`.
    pub async fn find_user(&self, by: &str, value: &str) -> Result<Option<StoredUser>, StoreError> {
        let (by, value) = (by.to_ascii_lowercase(), value.to_owned());
        self.run(move |conn| {
            resources::find_user(conn, &by, &value)?
                .map(ResourceRow::into_user)
                .transpose()
        })
        .await
    }

    // ---- groups ----

    /// Insert a group with its members (every member must be a live user: else 400 invalidValue).
    ///
    /// # Errors
    /// 409 uniqueness on the normalised `displayName`.
    pub async fn create_group(
        &self,
        input: GroupInput,
        ctx: &AuditCtx,
    ) -> Result<StoredGroup, StoreError> {
        let (targets, ctx) = (self.targets(), ctx.clone());
        mark_started(&ctx);
        self.run_mutation(deadline_of(&ctx), move |conn| {
            resources::create_group(conn, &targets, input, &ctx)
        })
        .await
    }

    /// A live group by id.
    ///
    /// # Errors
    /// `Unavailable`.
    pub async fn get_group(&self, id: &str) -> Result<Option<StoredGroup>, StoreError> {
        let id = id.to_owned();
        self.run(move |conn| {
            resources::get(conn, ResourceType::Group, &id, false)?
                .map(ResourceRow::into_group)
                .transpose()
        })
        .await
    }

    /// A group by id, tombstones included.
    ///
    /// # Errors
    /// `Unavailable`.
    pub async fn get_group_any(&self, id: &str) -> Result<Option<StoredGroup>, StoreError> {
        let id = id.to_owned();
        self.run(move |conn| {
            resources::get(conn, ResourceType::Group, &id, true)?
                .map(ResourceRow::into_group)
                .transpose()
        })
        .await
    }

    /// The members of a group, in insertion order, with `display` = the member's current userName.
    ///
    /// # Errors
    /// `Unavailable`.
    pub async fn group_members(&self, group_id: &str) -> Result<Vec<MemberRef>, StoreError> {
        let id = group_id.to_owned();
        self.run(move |conn| resources::group_members(conn, &id))
            .await
    }

    /// Read-modify-write of a group in one transaction; member ops become row inserts/deletes
    /// (a `Replace` writes only the difference). New members must be live users (400 invalidValue).
    ///
    /// # Errors
    /// 404, whatever `f` returns, 409 on a displayName collision, 400 for unknown members.
    pub async fn update_group<F>(
        &self,
        id: &str,
        operation: &str,
        ctx: &AuditCtx,
        f: F,
    ) -> Result<StoredGroup, StoreError>
    where
        F: FnOnce(&StoredGroup) -> Result<GroupUpdate, ScimError> + Send + 'static,
    {
        let (targets, ctx, id, operation) = (
            self.targets(),
            ctx.clone(),
            id.to_owned(),
            operation.to_owned(),
        );
        mark_started(&ctx);
        self.run_mutation(deadline_of(&ctx), move |conn| {
            resources::update_group(conn, &targets, &id, &operation, &ctx, f)
        })
        .await
    }

    /// Delete a group (tombstone, membership rows removed); never touches its users.
    ///
    /// # Errors
    /// 404; 412 on an `if_match` mismatch.
    pub async fn delete_group(
        &self,
        id: &str,
        if_match: Option<i64>,
        ctx: &AuditCtx,
    ) -> Result<(), StoreError> {
        let (targets, ctx, id) = (self.targets(), ctx.clone(), id.to_owned());
        mark_started(&ctx);
        self.run_mutation(deadline_of(&ctx), move |conn| {
            resources::delete(conn, &targets, ResourceType::Group, &id, if_match, &ctx)
        })
        .await
    }

    /// List live groups in creation order; members are never loaded here (the caller asks
    /// [`Store::group_members`] per group only when `members` is wanted). A filter that names
    /// `members` is evaluated with members loaded.
    ///
    /// # Errors
    /// `Unavailable`.
    pub async fn list_groups(
        &self,
        filter: Option<crate::scim::filter::Filter>,
        start_index: u64,
        count: u64,
        base_url: String,
    ) -> Result<Page<StoredGroup>, StoreError> {
        self.run(move |conn| {
            let page = resources::list(
                conn,
                ResourceType::Group,
                filter.as_ref(),
                start_index,
                count,
                &base_url,
            )?;
            let items = page
                .items
                .into_iter()
                .map(ResourceRow::into_group)
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Page {
                items,
                total: page.total,
            })
        })
        .await
    }

    // ---- tokens ----

    /// Store a new token's SHA-256 digest under a unique name.
    ///
    /// # Errors
    /// 409-style `Scim` uniqueness error when the name is taken by a live token.
    pub async fn create_token(
        &self,
        name: &str,
        sha256: [u8; 32],
        now_ms: i64,
    ) -> Result<TokenInfo, StoreError> {
        let name = name.to_owned();
        self.run(move |conn| tokens::create(conn, &name, &sha256, now_ms))
            .await
    }

    /// All tokens, revoked ones included.
    ///
    /// # Errors
    /// `Unavailable`.
    pub async fn list_tokens(&self) -> Result<Vec<TokenInfo>, StoreError> {
        self.run(tokens::list).await
    }

    /// Revoke by name or numeric id; returns false when nothing live matched.
    ///
    /// # Errors
    /// `Unavailable`.
    pub async fn revoke_token(&self, name_or_id: &str, now_ms: i64) -> Result<bool, StoreError> {
        let key = name_or_id.to_owned();
        self.run(move |conn| tokens::revoke(conn, &key, now_ms))
            .await
    }

    /// Record a live token's last use (shown by `token list`); no write when a use within
    /// `min_gap_ms` is recorded already.
    ///
    /// # Errors
    /// `Unavailable`.
    pub async fn touch_token(
        &self,
        name: &str,
        now_ms: i64,
        min_gap_ms: i64,
    ) -> Result<(), StoreError> {
        let name = name.to_owned();
        self.run(move |conn| tokens::touch(conn, &name, now_ms, min_gap_ms))
            .await
    }

    /// (name, digest) of every live token, for the in-memory auth table.
    ///
    /// # Errors
    /// `Unavailable`.
    pub async fn live_token_digests(&self) -> Result<Vec<(String, [u8; 32])>, StoreError> {
        self.run(tokens::live_digests).await
    }

    // ---- outbox and target state ----

    /// Claim up to `limit` due pending rows of `target` (not claimed, or whose lease expired),
    /// setting a lease until `now_ms + lease_ms` and a new fencing epoch. A row is exclusive while
    /// claimed, so one resource is never applied twice at once.
    ///
    /// # Errors
    /// `Unavailable`.
    pub async fn claim(
        &self,
        target: &str,
        now_ms: i64,
        lease_ms: i64,
        limit: i64,
    ) -> Result<Vec<OutboxItem>, StoreError> {
        let (target, instance) = (target.to_owned(), self.inner.instance_id.clone());
        let incarnation = self
            .inner
            .fence
            .incarnation
            .load(std::sync::atomic::Ordering::SeqCst);
        self.count(|c| &c.claims, 1);
        let mut items = self
            .run(move |conn| outbox::claim(conn, &instance, &target, now_ms, lease_ms, limit))
            .await?;
        self.count(|c| &c.claimed_rows, items.len());
        for item in &mut items {
            item.incarnation = incarnation;
        }
        Ok(items)
    }

    /// Renew a claim's lease to `now_ms + lease_ms`; false when the claim was lost (another
    /// worker claimed the row since: its epoch moved, or the row is gone). The workers renew
    /// their batches with [`Store::renew_claims`], every lease/3 while applying.
    ///
    /// # Errors
    /// `Unavailable`.
    pub async fn renew_claim(
        &self,
        item: &OutboxItem,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<bool, StoreError> {
        let (item, instance) = (item.clone(), self.inner.instance_id.clone());
        self.count(|c| &c.renewals, 1);
        self.run(move |conn| outbox::renew_claim(conn, &instance, &item, now_ms, lease_ms))
            .await
    }

    /// Claim one resource's row for drift repair, the same claim the workers take (a new
    /// epoch and lease, `claimed_by` this instance), inserting a `resync` row when there is
    /// none. `None` when a worker holds the row (it is applying the current state already).
    ///
    /// # Errors
    /// `Unavailable`.
    pub async fn claim_resource(
        &self,
        target: &str,
        resource_type: ResourceType,
        resource_id: &str,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<Option<OutboxItem>, StoreError> {
        let (target, id, instance) = (
            target.to_owned(),
            resource_id.to_owned(),
            self.inner.instance_id.clone(),
        );
        let incarnation = self
            .inner
            .fence
            .incarnation
            .load(std::sync::atomic::Ordering::SeqCst);
        let item = self
            .run(move |conn| {
                outbox::claim_resource(
                    conn,
                    &instance,
                    &target,
                    resource_type,
                    &id,
                    now_ms,
                    lease_ms,
                )
            })
            .await?;
        Ok(item.map(|mut item| {
            item.incarnation = incarnation;
            item
        }))
    }

    /// Record success: upsert `state` (never lowering `applied_version`), then delete the outbox
    /// row only if its version did not move since the claim (else release it for another round).
    /// Writes an `applied:<target>` history row. When the claim was lost (another worker holds a
    /// newer epoch), nothing is written: the owner settles (a row that is gone was settled at
    /// an equal or higher version).
    ///
    /// # Errors
    /// `Unavailable`.
    pub async fn settle_applied(
        &self,
        item: &OutboxItem,
        state: TargetState,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let item = item.clone();
        self.count(|c| &c.settles, 1);
        let key_norm = state
            .target_key
            .as_deref()
            .map(|k| self.norm_key(&state.target, state.resource_type, k));
        let result = self
            .run(move |conn| {
                outbox::settle_applied(conn, &item, &state, key_norm.as_deref(), now_ms)
            })
            .await;
        self.name_holder(result).await
    }

    /// Record a failure: bump attempts, set `next_attempt_ms` and `last_error`, release the claim;
    /// `dead` turns the row into a dead letter (kept until retried or discarded). A row whose
    /// claim was lost is left alone; a row whose version moved since the claim stays pending
    /// (the newer change deserves its own attempts) even when `dead` is asked.
    ///
    /// # Errors
    /// `Unavailable`.
    pub async fn settle_failed(
        &self,
        item: &OutboxItem,
        error: &str,
        next_attempt_ms: i64,
        dead: bool,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let (item, error) = (item.clone(), error.to_owned());
        self.count(|c| &c.settles, 1);
        self.run(move |conn| {
            outbox::settle_failed(conn, &item, &error, next_attempt_ms, dead, now_ms)
        })
        .await
    }

    /// Queue a resource for one target (coalescing with an existing row; a dead row becomes
    /// pending again). Used for dependants (a user's groups once it exists) and full reconciles.
    ///
    /// # Errors
    /// 404 `Scim` when the resource does not exist (tombstones do); `Unavailable`.
    pub async fn enqueue(
        &self,
        target: &str,
        resource_type: ResourceType,
        resource_id: &str,
        operation: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let (target, id, operation) = (
            target.to_owned(),
            resource_id.to_owned(),
            operation.to_owned(),
        );
        self.run(move |conn| outbox::enqueue(conn, &target, resource_type, &id, &operation, now_ms))
            .await
    }

    /// The recorded state of one resource in one target.
    ///
    /// # Errors
    /// `Unavailable`.
    pub async fn target_state(
        &self,
        target: &str,
        resource_id: &str,
    ) -> Result<Option<TargetState>, StoreError> {
        let (target, id) = (target.to_owned(), resource_id.to_owned());
        self.run(move |conn| outbox::target_state(conn, &target, &id))
            .await
    }

    /// Release the outbox claims left by this instance's previous process, at startup: after
    /// a `kill -9`, claimed rows would otherwise wait out their lease before anyone retried
    /// them. Only with the instance lock held (SQLite: `<db>.lock`; PostgreSQL: an advisory
    /// lock on the instance id, so no other daemon runs under this id), and only the claims
    /// recorded under this store's [`StoreSettings::instance_id`] (or under none): other
    /// instances, and a CLI `reconcile --full` (`<host>/cli-<pid>`), may hold live claims.
    /// Returns how many were released. A released row is due no earlier than `due_ms`: a
    /// write the killed process sent may still be on its way to (or queued in) the target,
    /// and must not land after the retry's newer one (the daemon passes now plus the longest
    /// connect and operation timeout of its targets).
    ///
    /// # Errors
    /// `Unavailable`.
    pub async fn release_stale_claims(&self, due_ms: i64) -> Result<u64, StoreError> {
        let instance = self.inner.instance_id.clone();
        let locked = self.inner._instance_lock.is_some() || self.inner._pg_instance_lock.is_some();
        // Without the instance lock another process under this id may be applying; a SQLite
        // memory database has no other process.
        if instance.is_empty() || !(locked || self.inner.memory) {
            return Ok(0);
        }
        self.run(move |conn| outbox::release_claims(conn, &instance, due_ms))
            .await
    }

    /// Before a target first creates a resource's entry, remember the intent (`state.extra`,
    /// e.g. `{"creating": DN, "since_ms": t, "attempt_ms": t}`, with no key), so that an entry
    /// left by an apply interrupted before [`Store::settle_applied`] is recognised as ours.
    /// The intent holds its key like an applied state does: no two resources may hold or
    /// intend the same normalised key in one target. Does nothing when the resource already
    /// has a key in that target; keeps an earlier intent's `since_ms` for the same entry.
    ///
    /// # Errors
    /// `KeyConflict` when another resource holds or intends that key (naming it);
    /// `Other` when `state.extra` names no `"creating"` key; `Unavailable`.
    pub async fn record_intent(&self, state: TargetState) -> Result<(), StoreError> {
        let Some(key) = keys::intent_key(state.extra.as_ref()) else {
            return Err(StoreError::Other(format!(
                "intent for {} in target {} names no key",
                state.resource_id, state.target
            )));
        };
        let key_norm = self.norm_key(&state.target, state.resource_type, key);
        let result = self
            .run(move |conn| outbox::record_intent(conn, &state, &key_norm))
            .await;
        self.name_holder(result).await
    }

    /// Before a target renames a resource's entry to `key`, reserve that key for it (its
    /// recorded `target_key` stays until the settle), so a rename to a key another resource
    /// holds or intends is refused before the target is touched. Does nothing when the
    /// resource has no state in that target.
    ///
    /// # Errors
    /// `KeyConflict` naming the holder; `Unavailable`.
    pub async fn reserve_key(
        &self,
        target: &str,
        resource_type: ResourceType,
        resource_id: &str,
        key: &str,
    ) -> Result<(), StoreError> {
        let key_norm = self.norm_key(target, resource_type, key);
        let (target, id, key) = (target.to_owned(), resource_id.to_owned(), key.to_owned());
        let result = self
            .run(move |conn| keys::reserve(conn, &target, &id, &key, &key_norm))
            .await;
        self.name_holder(result).await
    }

    /// How `target` normalises its keys for the uniqueness index (LDAP: DNs as the server
    /// compares them; SQL: table and key). Set by the reconciler for every target it runs;
    /// a target without one compares keys exactly.
    pub fn set_key_norm(&self, target: &str, norm: KeyNormFn) {
        match self.inner.key_norms.write() {
            Ok(mut guard) => guard.insert(target.to_owned(), norm),
            Err(poisoned) => poisoned.into_inner().insert(target.to_owned(), norm),
        };
    }

    /// The normalised form of `key` in `target` (see [`Store::set_key_norm`]).
    #[must_use]
    pub fn norm_key(&self, target: &str, resource_type: ResourceType, key: &str) -> String {
        let norm = match self.inner.key_norms.read() {
            Ok(guard) => guard.get(target).cloned(),
            Err(poisoned) => poisoned.into_inner().get(target).cloned(),
        };
        match norm {
            Some(f) => f(resource_type, key),
            None => key.to_owned(),
        }
    }

    /// Fill in the normalised key of `target`'s states recorded before the key index existed
    /// (run when a reconciler starts). Returns the states left without one because another
    /// resource already holds their key, as `(resource, holder, key)`: two resources that
    /// already share an entry, for the operator.
    ///
    /// # Errors
    /// `Unavailable`.
    pub async fn fill_key_norms(
        &self,
        target: &str,
    ) -> Result<Vec<(String, String, String)>, StoreError> {
        let norm = match self.inner.key_norms.read() {
            Ok(guard) => guard.get(target).cloned(),
            Err(poisoned) => poisoned.into_inner().get(target).cloned(),
        };
        let norm: KeyNormFn = norm.unwrap_or_else(|| Arc::new(|_, k: &str| k.to_owned()));
        let target = target.to_owned();
        self.run(move |conn| keys::fill(conn, &target, &norm)).await
    }

    /// A `KeyConflict` whose holder the failed write could not name (a concurrent writer
    /// won the index): look it up now that the transaction is over.
    async fn name_holder(&self, result: Result<(), StoreError>) -> Result<(), StoreError> {
        let Err(StoreError::KeyConflict {
            target,
            key,
            holder: None,
        }) = result
        else {
            return result;
        };
        let (t, k) = (target.clone(), key.clone());
        let norms = self
            .inner
            .key_norms
            .read()
            .ok()
            .and_then(|g| g.get(&t).cloned());
        let holder = self
            .run(move |conn| {
                // Either spelling of the type gives the same norm for LDAP; SQL qualifies by
                // table, so try both.
                for ty in [ResourceType::User, ResourceType::Group] {
                    let n = norms.as_ref().map_or_else(|| k.clone(), |f| f(ty, &k));
                    if let Some(h) = keys::holder(conn, &t, &n, "")? {
                        return Ok(Some(h));
                    }
                }
                Ok(None)
            })
            .await
            .unwrap_or(None);
        Err(StoreError::KeyConflict {
            target,
            key,
            holder,
        })
    }

    /// Change the `extra` of a resource's existing state in one target with `note`, leaving
    /// its version and key alone (an intent noted before an apply that may be interrupted,
    /// e.g. a deactivation). Does nothing when there is no state yet.
    ///
    /// # Errors
    /// `Unavailable`.
    pub async fn note_target_extra(
        &self,
        target: &str,
        resource_id: &str,
        note: impl FnOnce(&mut Bookkeeping) + Send + 'static,
    ) -> Result<(), StoreError> {
        let (target, id) = (target.to_owned(), resource_id.to_owned());
        self.run(move |conn| outbox::note_extra(conn, &target, &id, note))
            .await
    }

    /// Every target state of a target (drift repair walks these), in resource id order.
    ///
    /// # Errors
    /// `Unavailable`.
    pub async fn target_states(&self, target: &str) -> Result<Vec<TargetState>, StoreError> {
        let target = target.to_owned();
        self.run(move |conn| outbox::target_states(conn, &target))
            .await
    }

    /// Ids of every resource of a type, tombstones included when asked, in creation order.
    ///
    /// # Errors
    /// `Unavailable`.
    pub async fn all_resource_ids(
        &self,
        resource_type: ResourceType,
        include_deleted: bool,
    ) -> Result<Vec<String>, StoreError> {
        self.run(move |conn| resources::all_ids(conn, resource_type, include_deleted))
            .await
    }

    /// Ids of the groups a user is a member of (live groups only).
    ///
    /// # Errors
    /// `Unavailable`.
    pub async fn group_ids_of_user(&self, user_id: &str) -> Result<Vec<String>, StoreError> {
        let id = user_id.to_owned();
        self.run(move |conn| {
            Ok(resources::groups_of_user(conn, &id)?
                .into_iter()
                .map(|g| g.value)
                .collect())
        })
        .await
    }

    /// Dead letters, optionally of one target.
    ///
    /// # Errors
    /// `Unavailable`.
    pub async fn dead_letters(&self, target: Option<&str>) -> Result<Vec<OutboxItem>, StoreError> {
        let target = target.map(str::to_owned);
        self.run(move |conn| outbox::dead_letters(conn, target.as_deref()))
            .await
    }

    /// Make dead letters pending again (all of a target, or all, when `id` is `None`); returns
    /// how many.
    ///
    /// # Errors
    /// `Unavailable`.
    pub async fn retry_dead(
        &self,
        id: Option<i64>,
        target: Option<&str>,
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        let target = target.map(str::to_owned);
        self.run(move |conn| outbox::retry_dead(conn, id, target.as_deref(), now_ms))
            .await
    }

    /// Drop dead letters; returns how many.
    ///
    /// # Errors
    /// `Unavailable`.
    pub async fn discard_dead(
        &self,
        id: Option<i64>,
        target: Option<&str>,
    ) -> Result<u64, StoreError> {
        let target = target.map(str::to_owned);
        self.run(move |conn| outbox::discard_dead(conn, id, target.as_deref()))
            .await
    }

    /// Per-target counters for the given targets.
    ///
    /// # Errors
    /// `Unavailable`.
    pub async fn status(&self, targets: &[String]) -> Result<Vec<TargetStatus>, StoreError> {
        let targets = targets.to_vec();
        self.run(move |conn| outbox::status(conn, &targets)).await
    }

    /// Audit history of one resource, oldest first.
    ///
    /// # Errors
    /// `Unavailable`.
    pub async fn history(&self, resource_id: &str) -> Result<Vec<HistoryEntry>, StoreError> {
        let id = resource_id.to_owned();
        self.run(move |conn| history::of_resource(conn, &id)).await
    }

    /// Find a resource id by userName or group displayName (for `scim-sync history NAME`):
    /// live users first, then live groups, then the most recent tombstone.
    ///
    /// # Errors
    /// `Unavailable`.
    pub async fn resolve_name(
        &self,
        name: &str,
    ) -> Result<Option<(ResourceType, String)>, StoreError> {
        let name = name.to_owned();
        self.run(move |conn| resources::resolve_name(conn, &name))
            .await
    }
}

#[cfg(test)]
mod tests;
