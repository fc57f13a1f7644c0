//! The store: the only module that uses diesel. Resources, group membership rows, the outbox,
//! per-target state, tokens and the audit history, on SQLite (embedded default) or PostgreSQL,
//! selected by the URL. Every diesel call runs on `spawn_blocking` behind one of the async
//! methods below.
//!
//! Invariants: every mutation writes the resource (version + 1), one outbox row per configured
//! target (coalescing on (target, resource)), and an audit row in one transaction; a unique
//! constraint on the normalised `userName` / group `displayName` of live resources decides
//! conflicts (never a check-then-insert).

use crate::scim::patch::MemberOp;
use crate::scim::resource::{GroupInput, GroupRef, MemberRef, Meta, ResourceType, UserInput};
use crate::scim::ScimError;
use serde_json::{Map, Value};

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
}

/// Who did what, written to the audit table with every mutation.
#[derive(Debug, Clone, Default)]
pub struct AuditCtx {
    /// The authenticated token's name.
    pub token_name: String,
    /// The request id, also stored on the outbox row.
    pub request_id: String,
    /// Wall-clock time of the request, ms since the epoch (time is a parameter).
    pub now_ms: i64,
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
    /// Opaque per-target JSON (e.g. deactivation bookkeeping).
    pub extra: Option<Value>,
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
    /// `create`, `replace`, `patch`, `delete`, or `applied:<target>` / `dead:<target>`.
    pub operation: String,
    pub token_name: Option<String>,
    pub request_id: Option<String>,
    pub version: i64,
    pub detail: Option<String>,
}

/// A cheap-to-clone handle on the database pool.
#[derive(Clone)]
pub struct Store {
    _private: (),
}

/// Connection settings for [`Store::open`].
#[derive(Debug, Clone)]
pub struct StoreSettings {
    /// `sqlite:///path/to.db`, `sqlite://relative.db`, `sqlite::memory:` or `postgres://...`.
    pub url: String,
    /// Password for PostgreSQL, read from a file or the environment by the config loader.
    pub password: Option<String>,
    pub pool_size: u32,
    pub busy_timeout_ms: u64,
}

#[allow(clippy::unused_async)]
impl Store {
    /// Open the pool (SQLite: WAL, `synchronous=FULL`, busy timeout, foreign keys; refuses a second
    /// daemon on the same file via an instance lock). Does not migrate.
    ///
    /// # Errors
    /// `Other` for a bad URL, `Unavailable` when the database cannot be reached.
    pub async fn open(_settings: &StoreSettings) -> Result<Store, StoreError> {
        unimplemented!()
    }

    /// Apply pending embedded migrations; returns the names applied.
    ///
    /// # Errors
    /// On a failed migration.
    pub async fn migrate(&self) -> Result<Vec<String>, StoreError> {
        unimplemented!()
    }

    /// The targets that receive outbox rows for each mutation (set at startup and on reload).
    pub fn set_targets(&self, _names: Vec<String>) {
        unimplemented!()
    }

    /// A cheap liveness query (`SELECT 1`), for `/readyz`.
    ///
    /// # Errors
    /// `Unavailable`.
    pub async fn ping(&self) -> Result<(), StoreError> {
        unimplemented!()
    }

    // ---- users ----

    /// Insert a user. `active` defaults to true.
    ///
    /// # Errors
    /// 409 uniqueness on a live user with the same normalised `userName`.
    pub async fn create_user(
        &self,
        _input: UserInput,
        _password_hash: Option<String>,
        _ctx: &AuditCtx,
    ) -> Result<StoredUser, StoreError> {
        unimplemented!()
    }

    /// A live user by id.
    pub async fn get_user(&self, _id: &str) -> Result<Option<StoredUser>, StoreError> {
        unimplemented!()
    }

    /// A user by id, tombstones included (for the reconciler).
    pub async fn get_user_any(&self, _id: &str) -> Result<Option<StoredUser>, StoreError> {
        unimplemented!()
    }

    /// Read-modify-write in one write transaction: `f` sees the current user and returns the
    /// replacement (or a SCIM error, e.g. 412 from an If-Match check). Bumps the version,
    /// writes outbox + audit rows. `operation` is `replace` or `patch`.
    ///
    /// # Errors
    /// 404 when there is no live user; whatever `f` returns; 409 on a `userName` collision.
    pub async fn update_user<F>(
        &self,
        _id: &str,
        _operation: &str,
        _ctx: &AuditCtx,
        _f: F,
    ) -> Result<StoredUser, StoreError>
    where
        F: FnOnce(&StoredUser) -> Result<UserUpdate, ScimError> + Send + 'static,
    {
        unimplemented!()
    }

    /// Delete: the row becomes a tombstone (kept for the reconciler), memberships are removed in
    /// the same transaction and every affected group is queued too.
    ///
    /// # Errors
    /// 404 when there is no live user; 412 when `if_match` names another version.
    pub async fn delete_user(
        &self,
        _id: &str,
        _if_match: Option<i64>,
        _ctx: &AuditCtx,
    ) -> Result<(), StoreError> {
        unimplemented!()
    }

    /// List live users in stable creation order. The filter is evaluated with
    /// `Filter::matches` on the rendered user; `Filter::equality_lookups` narrow the candidates
    /// through indexes first (userName, externalId, id, emails.value).
    ///
    /// # Errors
    /// `Unavailable`.
    pub async fn list_users(
        &self,
        _filter: Option<crate::scim::filter::Filter>,
        _start_index: u64,
        _count: u64,
        _base_url: String,
    ) -> Result<Page<StoredUser>, StoreError> {
        unimplemented!()
    }

    /// The groups a user belongs to (value + display), for the derived `groups` attribute.
    pub async fn groups_of_user(&self, _user_id: &str) -> Result<Vec<GroupRef>, StoreError> {
        unimplemented!()
    }

    /// A live user by `userName` (case-insensitive), `externalId` (exact) or id; `by` is
    /// `"id"`, `"userName"` or `"externalId"`. Used to resolve `manager.value`.
    pub async fn find_user(
        &self,
        _by: &str,
        _value: &str,
    ) -> Result<Option<StoredUser>, StoreError> {
        unimplemented!()
    }

    // ---- groups ----

    /// Insert a group with its members (every member must be a live user: else 400 invalidValue).
    ///
    /// # Errors
    /// 409 uniqueness on the normalised `displayName`.
    pub async fn create_group(
        &self,
        _input: GroupInput,
        _ctx: &AuditCtx,
    ) -> Result<StoredGroup, StoreError> {
        unimplemented!()
    }

    /// A live group by id.
    pub async fn get_group(&self, _id: &str) -> Result<Option<StoredGroup>, StoreError> {
        unimplemented!()
    }

    /// A group by id, tombstones included.
    pub async fn get_group_any(&self, _id: &str) -> Result<Option<StoredGroup>, StoreError> {
        unimplemented!()
    }

    /// The members of a group, in insertion order, with `display` = the member's current userName.
    pub async fn group_members(&self, _group_id: &str) -> Result<Vec<MemberRef>, StoreError> {
        unimplemented!()
    }

    /// Read-modify-write of a group in one transaction; member ops become row inserts/deletes
    /// (a `Replace` writes only the difference). New members must be live users (400 invalidValue).
    ///
    /// # Errors
    /// 404, whatever `f` returns, 409 on a displayName collision, 400 for unknown members.
    pub async fn update_group<F>(
        &self,
        _id: &str,
        _operation: &str,
        _ctx: &AuditCtx,
        _f: F,
    ) -> Result<StoredGroup, StoreError>
    where
        F: FnOnce(&StoredGroup) -> Result<GroupUpdate, ScimError> + Send + 'static,
    {
        unimplemented!()
    }

    /// Delete a group (tombstone, membership rows removed); never touches its users.
    ///
    /// # Errors
    /// 404; 412 on an `if_match` mismatch.
    pub async fn delete_group(
        &self,
        _id: &str,
        _if_match: Option<i64>,
        _ctx: &AuditCtx,
    ) -> Result<(), StoreError> {
        unimplemented!()
    }

    /// List live groups in creation order; members are never loaded here (the caller asks
    /// [`Store::group_members`] per group only when `members` is wanted). A filter that names
    /// `members` is evaluated with members loaded.
    pub async fn list_groups(
        &self,
        _filter: Option<crate::scim::filter::Filter>,
        _start_index: u64,
        _count: u64,
        _base_url: String,
    ) -> Result<Page<StoredGroup>, StoreError> {
        unimplemented!()
    }

    // ---- tokens ----

    /// Store a new token's SHA-256 digest under a unique name.
    ///
    /// # Errors
    /// 409-style `Scim` uniqueness error when the name is taken by a live token.
    pub async fn create_token(
        &self,
        _name: &str,
        _sha256: [u8; 32],
        _now_ms: i64,
    ) -> Result<TokenInfo, StoreError> {
        unimplemented!()
    }

    /// All tokens, revoked ones included.
    pub async fn list_tokens(&self) -> Result<Vec<TokenInfo>, StoreError> {
        unimplemented!()
    }

    /// Revoke by name or numeric id; returns false when nothing live matched.
    pub async fn revoke_token(&self, _name_or_id: &str, _now_ms: i64) -> Result<bool, StoreError> {
        unimplemented!()
    }

    /// (name, digest) of every live token, for the in-memory auth table.
    pub async fn live_token_digests(&self) -> Result<Vec<(String, [u8; 32])>, StoreError> {
        unimplemented!()
    }

    // ---- outbox and target state ----

    /// Claim up to `limit` due pending rows of `target` (not claimed, or whose lease expired),
    /// setting a lease until `now_ms + lease_ms` and a new fencing epoch. A row is exclusive while
    /// claimed, so one resource is never applied twice at once.
    pub async fn claim(
        &self,
        _target: &str,
        _now_ms: i64,
        _lease_ms: i64,
        _limit: i64,
    ) -> Result<Vec<OutboxItem>, StoreError> {
        unimplemented!()
    }

    /// Record success: upsert `state` (never lowering `applied_version`), then delete the outbox
    /// row only if its version did not move since the claim (else release it for another round).
    /// Writes an `applied:<target>` history row.
    pub async fn settle_applied(
        &self,
        _item: &OutboxItem,
        _state: TargetState,
        _now_ms: i64,
    ) -> Result<(), StoreError> {
        unimplemented!()
    }

    /// Record a failure: bump attempts, set `next_attempt_ms` and `last_error`, release the claim;
    /// `dead` turns the row into a dead letter (kept until retried or discarded).
    pub async fn settle_failed(
        &self,
        _item: &OutboxItem,
        _error: &str,
        _next_attempt_ms: i64,
        _dead: bool,
        _now_ms: i64,
    ) -> Result<(), StoreError> {
        unimplemented!()
    }

    /// Queue a resource for one target (coalescing with an existing row; a dead row becomes
    /// pending again). Used for dependants (a user's groups once it exists) and full reconciles.
    pub async fn enqueue(
        &self,
        _target: &str,
        _resource_type: ResourceType,
        _resource_id: &str,
        _operation: &str,
        _now_ms: i64,
    ) -> Result<(), StoreError> {
        unimplemented!()
    }

    /// The recorded state of one resource in one target.
    pub async fn target_state(
        &self,
        _target: &str,
        _resource_id: &str,
    ) -> Result<Option<TargetState>, StoreError> {
        unimplemented!()
    }

    /// Every target state of a target (drift repair walks these), in resource order.
    pub async fn target_states(&self, _target: &str) -> Result<Vec<TargetState>, StoreError> {
        unimplemented!()
    }

    /// Ids of every resource of a type, tombstones included, in creation order.
    pub async fn all_resource_ids(
        &self,
        _resource_type: ResourceType,
        _include_deleted: bool,
    ) -> Result<Vec<String>, StoreError> {
        unimplemented!()
    }

    /// Ids of the groups a user is a member of (live groups only).
    pub async fn group_ids_of_user(&self, _user_id: &str) -> Result<Vec<String>, StoreError> {
        unimplemented!()
    }

    /// Dead letters, optionally of one target.
    pub async fn dead_letters(&self, _target: Option<&str>) -> Result<Vec<OutboxItem>, StoreError> {
        unimplemented!()
    }

    /// Make dead letters pending again (all of a target when `id` is `None`); returns how many.
    pub async fn retry_dead(
        &self,
        _id: Option<i64>,
        _target: Option<&str>,
        _now_ms: i64,
    ) -> Result<u64, StoreError> {
        unimplemented!()
    }

    /// Drop dead letters; returns how many.
    pub async fn discard_dead(
        &self,
        _id: Option<i64>,
        _target: Option<&str>,
    ) -> Result<u64, StoreError> {
        unimplemented!()
    }

    /// Per-target counters for the given targets.
    pub async fn status(&self, _targets: &[String]) -> Result<Vec<TargetStatus>, StoreError> {
        unimplemented!()
    }

    /// Audit history of one resource, oldest first.
    pub async fn history(&self, _resource_id: &str) -> Result<Vec<HistoryEntry>, StoreError> {
        unimplemented!()
    }

    /// Find a resource id by userName or group displayName (for `scim-sync history NAME`).
    pub async fn resolve_name(
        &self,
        _name: &str,
    ) -> Result<Option<(ResourceType, String)>, StoreError> {
        unimplemented!()
    }
}
