//! The outbox (one row per (target, resource), coalescing repeated changes), claims with leases
//! and fencing epochs, settling, dead letters, per-target state and status counters. Must not
//! decide retry policy (the reconciler passes `next_attempt_ms` and `dead`).

use super::dbclock::{self, db_ms};
use super::history::audit;
use super::keys;
use super::models::{OutboxRow, TargetStateRow};
use super::nested::GroupQueue;
use super::resources::lock_by_id;
use super::schema::{outbox, target_counts, target_state};
use super::{
    has_nul, read_tx, sanitize_text, write_tx, AuditCtx, DbConnection, OutboxItem, StoreError,
    TargetState, TargetStatus,
};
use crate::bookkeeping::{Bookkeeping, Intent};
use crate::scim::resource::ResourceType;
use crate::scim::ScimError;
use diesel::prelude::*;

const PENDING: &str = "pending";
const DEAD: &str = "dead";
/// Longest `last_error` kept (bytes, cut on a char boundary).
const MAX_ERROR_LEN: usize = 2000;

/// Queue `resource_id` at `version` for every target (same transaction as the mutation).
pub(crate) fn enqueue_all(
    conn: &mut DbConnection,
    targets: &[String],
    resource_type: ResourceType,
    resource_id: &str,
    version: i64,
    operation: &str,
    ctx: &AuditCtx,
) -> Result<(), StoreError> {
    let request_id = (!ctx.request_id.is_empty()).then_some(ctx.request_id.as_str());
    if !targets.is_empty() {
        super::instances::notify_queued(conn)?;
    }
    for target in targets {
        upsert(
            conn,
            target,
            resource_type,
            resource_id,
            version,
            operation,
            request_id,
            db_ms(ctx.now_ms),
        )?;
    }
    Ok(())
}

/// The coalescing upsert as one statement: `INSERT ... ON CONFLICT (target, resource_id) DO
/// UPDATE` over the table's unique (target, resource_id) constraint. One statement cannot
/// drop the change: on PostgreSQL, a concurrent settle that locked and deleted the row makes
/// the insert wait for it and then insert afresh (a select-then-update by id would hit 0 rows
/// and be acknowledged all the same; test: `store::tests::races`). Only an expired claim is
/// cleared (`excluded.enqueued_ms` is now), never a live one: clearing does not move the
/// epoch, so the holder would keep writing while another worker claims the row (test:
/// `store::tests::fencing`).
const UPSERT_SQL: &str = "INSERT INTO outbox (target, resource_type, resource_id, version, \
     operation, request_id, attempts, next_attempt_ms, last_error, state, enqueued_ms, \
     claimed_until_ms, claim_epoch, generation) \
     VALUES (?, ?, ?, ?, ?, ?, 0, ?, NULL, 'pending', ?, NULL, 0, 0) \
     ON CONFLICT (target, resource_id) DO UPDATE SET \
     version = CASE WHEN excluded.version > outbox.version THEN excluded.version \
               ELSE outbox.version END, operation = excluded.operation, \
     request_id = excluded.request_id, attempts = 0, \
     next_attempt_ms = excluded.next_attempt_ms, last_error = NULL, \
     enqueued_ms = CASE WHEN outbox.state = 'dead' THEN excluded.enqueued_ms \
                   ELSE outbox.enqueued_ms END, \
     claimed_until_ms = CASE WHEN outbox.claimed_until_ms < excluded.enqueued_ms THEN NULL \
                        ELSE outbox.claimed_until_ms END, \
     claimed_by = CASE WHEN outbox.claimed_until_ms < excluded.enqueued_ms THEN NULL \
                  ELSE outbox.claimed_by END, \
     state = 'pending', generation = outbox.generation + 1";

/// [`UPSERT_SQL`] for PostgreSQL: numbered placeholders, and a claim counts as expired only
/// when the database's clock says so too (`dbclock::no_later_than`): an enqueuer whose clock
/// runs ahead clears no live claim (second reader's finding 1). The database's clock is read
/// once for the statement (`statement_timestamp()`, [`dbclock::PG_STATEMENT_MS`]), not per
/// expression (third reader's finding 3): with `clock_timestamp()` in each `CASE`, the clock
/// could cross the lease end between the two, keeping the lease end and clearing its
/// `claimed_by` (an ownerless live lease).
static PG_UPSERT_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let expired = "outbox.claimed_until_ms < excluded.enqueued_ms";
    assert_eq!(UPSERT_SQL.matches(expired).count(), 2);
    numbered_placeholders(&UPSERT_SQL.replace(
        expired,
        &format!(
            "outbox.claimed_until_ms < LEAST(excluded.enqueued_ms, {})",
            dbclock::PG_STATEMENT_MS
        ),
    ))
});

/// `sql` with PostgreSQL's numbered placeholders (`$1`, `$2`, ...) for `?`.
fn numbered_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut n = 0;
    for c in sql.chars() {
        if c == '?' {
            n += 1;
            out.push_str(&format!("${n}"));
        } else {
            out.push(c);
        }
    }
    out
}

/// Coalescing upsert on (target, resource_id), one statement on both backends (see
/// [`UPSERT_SQL`]); `now_ms` is database time (`dbclock`: it is the row's due time and is
/// compared with a claim's lease). The row's version never goes down: a dependant re-queue may read a
/// resource's version without locking it (so it keeps the lock order, groups before users)
/// and land after a newer change of that resource was queued. A pending row keeps its `enqueued_ms` (the oldest-pending age stays
/// honest); a dead row starts over. A claimed row keeps its lease and epoch, and its
/// `generation` goes up even when the version does not (a dependant re-queued at the same
/// version, e.g. a group whose member just got its entry): settling sees the version or
/// `generation` moved and releases the row for another round instead of deleting it.
#[allow(clippy::too_many_arguments)]
fn upsert(
    conn: &mut DbConnection,
    target: &str,
    resource_type: ResourceType,
    resource_id: &str,
    version: i64,
    operation: &str,
    request_id: Option<&str>,
    now_ms: i64,
) -> Result<(), StoreError> {
    use diesel::sql_types::{BigInt, Nullable, Text};
    macro_rules! run {
        ($c:expr, $sql:expr) => {
            diesel::sql_query($sql)
                .bind::<Text, _>(target)
                .bind::<Text, _>(resource_type.as_str())
                .bind::<Text, _>(resource_id)
                .bind::<BigInt, _>(version)
                .bind::<Text, _>(operation)
                .bind::<Nullable<Text>, _>(request_id)
                .bind::<BigInt, _>(now_ms)
                .bind::<BigInt, _>(now_ms)
                .execute($c)?
        };
    }
    match conn {
        DbConnection::Pg(c) => run!(c, PG_UPSERT_SQL.as_str()),
        DbConnection::Sqlite(c) => run!(c, UPSERT_SQL),
    };
    Ok(())
}

/// Queue one resource for one target at its current version.
pub(crate) fn enqueue(
    conn: &mut DbConnection,
    target: &str,
    resource_type: ResourceType,
    resource_id: &str,
    operation: &str,
    now_ms: i64,
) -> Result<(), StoreError> {
    write_tx(conn, |conn| {
        let (stored_type, _seq, version) = lock_by_id(conn, resource_id)?
            .filter(|(t, _, _)| t == resource_type.as_str())
            .ok_or_else(|| {
                StoreError::Scim(ScimError::not_found(format!(
                    "{} not found",
                    resource_type.as_str()
                )))
            })?;
        debug_assert_eq!(stored_type, resource_type.as_str());
        upsert(
            conn,
            target,
            resource_type,
            resource_id,
            version,
            operation,
            None,
            db_ms(now_ms),
        )
    })
}

/// Claim due rows; see [`super::Store::claim`].
pub(crate) fn claim(
    conn: &mut DbConnection,
    instance: &str,
    target: &str,
    now_ms: i64,
    lease_ms: i64,
    limit: i64,
) -> Result<Vec<OutboxItem>, StoreError> {
    if limit <= 0 {
        return Ok(Vec::new());
    }
    // Leases, due times and heartbeats are database time (`dbclock`).
    let now_ms = db_ms(now_ms);
    write_tx(conn, |conn| {
        // Claims of instances whose heartbeat ran out are taken over (their fence ran out
        // with it: `instances`); "" matches no claim (ids are never empty).
        let mut taken = super::instances::take_over(conn, instance, Some(target), now_ms)?;
        taken.push(String::new());
        let due = outbox::table
            .filter(outbox::target.eq(target))
            .filter(outbox::state.eq(PENDING))
            .filter(outbox::next_attempt_ms.le(now_ms))
            .filter(
                outbox::claimed_until_ms
                    .is_null()
                    // Expired by the claimer's reading and the database's clock (`dbclock`).
                    .or(outbox::claimed_until_ms
                        .lt(dbclock::no_later_than(conn, now_ms).nullable()))
                    .or(outbox::claimed_by.eq_any(&taken)),
            )
            .order((outbox::next_attempt_ms, outbox::id))
            .limit(limit)
            .select(outbox::id);
        // PostgreSQL: concurrent claimers skip each other's rows instead of queueing behind them.
        let ids: Vec<i64> = match conn {
            DbConnection::Pg(c) => due.for_update().skip_locked().load(c)?,
            DbConnection::Sqlite(c) => due.load(c)?,
        };
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        diesel::update(outbox::table.filter(outbox::id.eq_any(&ids)))
            .set((
                // No earlier than the database's clock plus the lease (`dbclock`).
                outbox::claimed_until_ms.eq(dbclock::lease_end(conn, now_ms, lease_ms).nullable()),
                outbox::claim_epoch.eq(outbox::claim_epoch + 1),
                outbox::claimed_by.eq(Some(instance)),
            ))
            .execute(conn)?;
        outbox::table
            .filter(outbox::id.eq_any(&ids))
            .order((outbox::next_attempt_ms, outbox::id))
            .select(OutboxRow::as_select())
            .load(conn)?
            .into_iter()
            .map(OutboxRow::into_item)
            .collect()
    })
}

/// Whether `item`'s claim is still held: its row is there with the claim's epoch and a lease
/// (row-locked on PostgreSQL, so a claim taking it over waits for this transaction).
pub(crate) fn claim_held(conn: &mut DbConnection, item: &OutboxItem) -> Result<bool, StoreError> {
    Ok(lock_outbox_row(conn, item.id)?.is_some_and(|r| {
        r.claim_epoch == item.claim_epoch && r.target == item.target && r.claimed_until_ms.is_some()
    }))
}

fn lock_outbox_row(conn: &mut DbConnection, id: i64) -> Result<Option<OutboxRow>, StoreError> {
    if let DbConnection::Pg(c) = conn {
        outbox::table
            .find(id)
            .select(outbox::id)
            .for_update()
            .first::<i64>(c)
            .optional()?;
    }
    Ok(outbox::table
        .find(id)
        .select(OutboxRow::as_select())
        .first(conn)
        .optional()?)
}

/// Write `state` unless the stored applied_version is higher (or, when `strictly_higher`, not
/// lower than it), with `key_norm` as the normalised key it holds or intends: `KeyConflict`
/// when another resource holds that key (see `keys`).
fn upsert_target_state(
    conn: &mut DbConnection,
    state: &TargetState,
    strictly_higher: bool,
    key_norm: Option<&str>,
) -> Result<(), StoreError> {
    let key = target_state::table.find((state.target.as_str(), state.resource_id.as_str()));
    let current: Option<i64> = match conn {
        DbConnection::Pg(c) => key
            .select(target_state::applied_version)
            .for_update()
            .first(c)
            .optional()?,
        DbConnection::Sqlite(c) => key
            .select(target_state::applied_version)
            .first(c)
            .optional()?,
    };
    let mut row = TargetStateRow::from_state(state);
    row.key_norm = key_norm.map(super::encode_text);
    let shown = state
        .target_key
        .as_deref()
        .or_else(|| keys::intent_key(state.extra.as_ref()))
        .unwrap_or("");
    let write = match current {
        None => true,
        Some(applied) if strictly_higher => state.applied_version > applied,
        Some(applied) => state.applied_version >= applied,
    };
    if !write {
        return Ok(());
    }
    keys::check_free(conn, &state.target, &state.resource_id, shown, key_norm)?;
    let written = match current {
        None => diesel::insert_into(target_state::table)
            .values(&row)
            .execute(conn),
        Some(_) => diesel::update(key).set(&row).execute(conn),
    };
    written.map_err(|e| keys::unique_violation(e, &state.target, shown))?;
    Ok(())
}

fn settle_ctx(item: &OutboxItem, now_ms: i64) -> AuditCtx {
    AuditCtx {
        token_name: String::new(),
        request_id: item.request_id.clone().unwrap_or_default(),
        now_ms,
        deadline: None,
    }
}

/// Whether the row was queued again after `item` was claimed: its version moved, or (same
/// version, a dependant re-queue) its generation did.
fn requeued_since_claim(row: &OutboxRow, item: &OutboxItem) -> bool {
    row.version != item.version || row.generation != item.generation
}

/// What to queue, in the settle's own transaction, when a user's recorded key appears,
/// changes or vanishes with this settle: its live groups (they render its key as a member;
/// by `seq`) and the users whose references resolve, or resolved at their last render, to it
/// (by id, without itself), each at its current version (read without locking the resource:
/// the lock order is groups before users, and the upsert never lowers a version). Queued
/// here and not after the commit: a crash between the two would leave a group that applied
/// before this settle (it saw no key for the user) without the member, and a report's
/// `manager` at the old DN, with nothing pending (window K1; test
/// `crash::windows::a_group_applied_before_its_members_first_settle_gets_the_member_after_a_crash`).
/// Locks this resource's state row first (PostgreSQL): a holder recording a reference to it
/// waits for this settle (`references::record`), so either its record is seen here or its
/// render reads the new key.
fn dependants_of_key_change(
    conn: &mut DbConnection,
    item: &OutboxItem,
    state: &TargetState,
) -> Result<Dependants, StoreError> {
    use super::schema::{group_members, resources};
    if let DbConnection::Pg(c) = conn {
        target_state::table
            .find((state.target.as_str(), state.resource_id.as_str()))
            .select(target_state::applied_version)
            .for_update()
            .first::<i64>(c)
            .optional()?;
    }
    let stored = target_state(conn, &state.target, &state.resource_id)?;
    if item.resource_type == ResourceType::Group {
        // Nested groups: a group's parents hold its key (DN) as a member value; they render
        // it anew when it appeared, changed or vanished (marked dirty in them below, like a
        // user's groups). Its `uid` means nothing to them.
        let stored_key = stored.as_ref().and_then(|s| s.target_key.as_deref());
        let stored_version = stored.as_ref().map_or(i64::MIN, |s| s.applied_version);
        if stored_key == state.target_key.as_deref() || state.applied_version < stored_version {
            return Ok(Dependants::default());
        }
        let seq: Option<i64> = resources::table
            .filter(resources::id.eq(&item.resource_id))
            .filter(resources::resource_type.eq(ResourceType::Group.as_str()))
            .select(resources::seq)
            .first(conn)
            .optional()?;
        let Some(seq) = seq else {
            return Ok(Dependants::default());
        };
        let parents: Vec<(i64, String, i64)> = group_members::table
            .inner_join(resources::table.on(resources::seq.eq(group_members::group_seq)))
            .filter(group_members::member_seq.eq(seq))
            .filter(resources::deleted.eq(false))
            .order(group_members::group_seq)
            .select((resources::seq, resources::id, resources::version))
            .load(conn)?;
        return Ok(Dependants {
            own_seq: Some(seq),
            groups: parents
                .into_iter()
                .map(|(seq, id, version)| GroupQueue {
                    seq,
                    id,
                    version,
                    operation: "membership",
                    dirty: true,
                })
                .collect(),
            users: Vec::new(),
        });
    }
    let (stored_version, stored_key) = match &stored {
        Some(s) => (s.applied_version, s.target_key.as_deref()),
        None => (i64::MIN, None),
    };
    // The member value a `memberUid` group holds is the user's `uid`, which may change with
    // the key staying (a DN not made of it): its groups render it anew too (`store::members`
    // marks it in them), its reference holders (which name the key) need nothing.
    let uid_of =
        |s: Option<&TargetState>| s.and_then(|s| s.extra.as_ref()).and_then(|e| e.uid.clone());
    let key_changed = stored_key != state.target_key.as_deref();
    let uid_changed = state.target_key.is_some() && uid_of(stored.as_ref()) != uid_of(Some(state));
    if !(key_changed || uid_changed) || state.applied_version < stored_version {
        return Ok(Dependants::default());
    }
    let mut out = Dependants::default();
    let seq: Option<i64> = resources::table
        .filter(resources::id.eq(&item.resource_id))
        .filter(resources::resource_type.eq(ResourceType::User.as_str()))
        .select(resources::seq)
        .first(conn)
        .optional()?;
    if let Some(seq) = seq {
        // Its direct groups (marked dirty: its member value there changed) and, where nested
        // groups are flattened, their ancestors (they apply their whole flattened membership:
        // queued, not marked), in one order, ascending `seq` (`nested::with_ancestors`, which
        // takes the shared nesting lock before the ancestor read, before this settle's first
        // outbox upsert).
        let groups: Vec<(i64, String, i64)> = group_members::table
            .inner_join(resources::table.on(resources::seq.eq(group_members::group_seq)))
            .filter(group_members::member_seq.eq(seq))
            .filter(resources::deleted.eq(false))
            .order(group_members::group_seq)
            .select((resources::seq, resources::id, resources::version))
            .load(conn)?;
        let direct: Vec<i64> = group_members::table
            .filter(group_members::member_seq.eq(seq))
            .select(group_members::group_seq)
            .load(conn)?;
        let own = groups
            .into_iter()
            .map(|(seq, id, version)| GroupQueue {
                seq,
                id,
                version,
                operation: "membership",
                dirty: true,
            })
            .collect();
        out.groups = super::nested::with_ancestors(conn, own, &direct)?;
    }
    if !key_changed {
        return Ok(out);
    }
    let mut holders = super::references::referencing(conn, &state.target, &item.resource_id)?;
    holders.retain(|h| h != &item.resource_id);
    holders.sort();
    if !holders.is_empty() {
        let live: Vec<(String, i64)> = resources::table
            .filter(resources::id.eq_any(&holders))
            .filter(resources::resource_type.eq(ResourceType::User.as_str()))
            .filter(resources::deleted.eq(false))
            .select((resources::id, resources::version))
            .load(conn)?;
        let mut live = live;
        // Byte order, as the settle compares ids (not the database's collation).
        live.sort();
        out.users = live;
    }
    Ok(out)
}

/// What a settle queues (see [`dependants_of_key_change`]): groups in ascending `seq`, then
/// users by id (byte order), each at its current version.
#[derive(Debug, Default)]
struct Dependants {
    /// The settled resource's `seq` when it is a group with dependants (its own outbox row
    /// takes its place among theirs).
    own_seq: Option<i64>,
    groups: Vec<GroupQueue>,
    users: Vec<(String, i64)>,
}

/// Record success; see [`super::Store::settle_applied`].
pub(crate) fn settle_applied(
    conn: &mut DbConnection,
    item: &OutboxItem,
    state: &TargetState,
    key_norm: Option<&str>,
    now_ms: i64,
) -> Result<(), StoreError> {
    write_tx(conn, |conn| {
        let dependants = dependants_of_key_change(conn, item, state)?;
        // Lock order (PostgreSQL): this state row first (taken by `dependants_of_key_change`),
        // then outbox rows: groups in ascending `seq` (a settled group's own row among its
        // parents', `nested::with_ancestors`), then users by id, this row among them.
        let now = db_ms(now_ms);
        if !dependants.groups.is_empty() || !dependants.users.is_empty() {
            // The workers of every instance wake for what this settle queued.
            super::instances::notify_queued(conn)?;
        }
        let mut row = None;
        let mut own_locked = false;
        for q in &dependants.groups {
            if !own_locked && dependants.own_seq.is_some_and(|own| q.seq > own) {
                row = lock_outbox_row(conn, item.id)?;
                own_locked = true;
            }
            upsert(
                conn,
                &item.target,
                ResourceType::Group,
                &q.id,
                q.version,
                q.operation,
                None,
                now,
            )?;
            if q.dirty {
                // The member value of this resource in the group changed: an O(change) apply
                // of the group looks at it (`store::members`).
                super::members::mark_dirty(
                    conn,
                    &item.target,
                    std::slice::from_ref(&q.id),
                    &item.resource_id,
                )?;
            }
        }
        if !own_locked && item.resource_type == ResourceType::Group {
            row = lock_outbox_row(conn, item.id)?;
            own_locked = true;
        }
        for (id, version) in &dependants.users {
            if !own_locked && id.as_str() > item.resource_id.as_str() {
                row = lock_outbox_row(conn, item.id)?;
                own_locked = true;
            }
            upsert(
                conn,
                &item.target,
                ResourceType::User,
                id,
                *version,
                "reference",
                None,
                now,
            )?;
        }
        if !own_locked {
            row = lock_outbox_row(conn, item.id)?;
        }
        let ours = row
            .as_ref()
            .is_some_and(|r| r.claim_epoch == item.claim_epoch && r.target == item.target);
        if !ours {
            // The claim was lost: the owner settles (a row gone was settled at an equal or
            // higher version). Writing here could move a key the owner reserved.
            return Ok(());
        }
        upsert_target_state(conn, state, !ours, key_norm)?;
        // The settle records where the entry is: a rename's reservation becomes the held key
        // (or, when the rename did not happen, is dropped), in this transaction.
        keys::release(conn, &state.target, &state.resource_id)?;
        if let (true, Some(row)) = (ours, row) {
            if !requeued_since_claim(&row, item) {
                diesel::delete(outbox::table.find(row.id)).execute(conn)?;
            } else {
                // A newer change (or a dependant re-queue) arrived while applying: run again
                // (level-triggered).
                diesel::update(outbox::table.find(row.id))
                    .set(outbox::claimed_until_ms.eq(None::<i64>))
                    .execute(conn)?;
            }
        }
        let operation = format!("applied:{}", item.target);
        audit(
            conn,
            &settle_ctx(item, now_ms),
            item.resource_type,
            &item.resource_id,
            &operation,
            state.applied_version,
            state.target_key.as_deref(),
        )
    })
}

fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.get(..end).unwrap_or("")
}

/// Record a failure; see [`super::Store::settle_failed`].
pub(crate) fn settle_failed(
    conn: &mut DbConnection,
    item: &OutboxItem,
    error: &str,
    next_attempt_ms: i64,
    dead: bool,
    now_ms: i64,
) -> Result<(), StoreError> {
    let error = sanitize_text(truncate(error, MAX_ERROR_LEN));
    let error = error.as_str();
    write_tx(conn, |conn| {
        let Some(row) = lock_outbox_row(conn, item.id)? else {
            return Ok(());
        };
        if row.claim_epoch != item.claim_epoch || row.target != item.target {
            return Ok(());
        }
        let moved = requeued_since_claim(&row, item);
        let dead = dead && !moved;
        // The due time is database time (`dbclock`).
        let next_attempt_ms = db_ms(if moved { now_ms } else { next_attempt_ms });
        diesel::update(outbox::table.find(row.id))
            .set((
                outbox::attempts.eq(row.attempts.saturating_add(1)),
                outbox::next_attempt_ms.eq(next_attempt_ms),
                outbox::last_error.eq(Some(error)),
                outbox::claimed_until_ms.eq(None::<i64>),
                outbox::state.eq(if dead { DEAD } else { PENDING }),
            ))
            .execute(conn)?;
        if dead {
            let operation = format!("dead:{}", item.target);
            audit(
                conn,
                &settle_ctx(item, now_ms),
                item.resource_type,
                &item.resource_id,
                &operation,
                row.version,
                Some(error),
            )?;
        }
        Ok(())
    })
}

/// One resource's state in one target.
pub(crate) fn target_state(
    conn: &mut DbConnection,
    target: &str,
    resource_id: &str,
) -> Result<Option<TargetState>, StoreError> {
    if has_nul(target) || has_nul(resource_id) {
        return Ok(None);
    }
    target_state::table
        .find((target, resource_id))
        .select(TargetStateRow::as_select())
        .first(conn)
        .optional()?
        .map(TargetStateRow::into_state)
        .transpose()
}

/// Every state of a target, by resource id.
pub(crate) fn target_states(
    conn: &mut DbConnection,
    target: &str,
) -> Result<Vec<TargetState>, StoreError> {
    target_state::table
        .filter(target_state::target.eq(target))
        .order(target_state::resource_id)
        .select(TargetStateRow::as_select())
        .load(conn)?
        .into_iter()
        .map(TargetStateRow::into_state)
        .collect()
}

/// Dead letters, oldest first.
pub(crate) fn dead_letters(
    conn: &mut DbConnection,
    target: Option<&str>,
) -> Result<Vec<OutboxItem>, StoreError> {
    let mut query = outbox::table
        .filter(outbox::state.eq(DEAD))
        .order(outbox::id)
        .select(OutboxRow::as_select())
        .into_boxed();
    if let Some(target) = target {
        query = query.filter(outbox::target.eq(target.to_owned()));
    }
    query
        .load(conn)?
        .into_iter()
        .map(OutboxRow::into_item)
        .collect()
}

/// Dead letters back to pending.
pub(crate) fn retry_dead(
    conn: &mut DbConnection,
    id: Option<i64>,
    target: Option<&str>,
    now_ms: i64,
) -> Result<u64, StoreError> {
    // Due times and leases are database time (`dbclock`).
    let now_ms = db_ms(now_ms);
    write_tx(conn, |conn| {
        let mut query = outbox::table
            .filter(outbox::state.eq(DEAD))
            .select(outbox::id)
            .into_boxed();
        if let Some(id) = id {
            query = query.filter(outbox::id.eq(id));
        }
        if let Some(target) = target {
            query = query.filter(outbox::target.eq(target.to_owned()));
        }
        let ids: Vec<i64> = query.load(conn)?;
        let mut changed = 0u64;
        for chunk in ids.chunks(500) {
            let n = diesel::update(
                outbox::table
                    .filter(outbox::id.eq_any(chunk))
                    .filter(outbox::state.eq(DEAD)),
            )
            .set((
                outbox::state.eq(PENDING),
                outbox::attempts.eq(0),
                outbox::next_attempt_ms.eq(now_ms),
                outbox::enqueued_ms.eq(now_ms),
            ))
            .execute(conn)?;
            // Only an expired claim is cleared: a live one (the epoch unmoved) stays exclusive.
            diesel::update(outbox::table.filter(outbox::id.eq_any(chunk)).filter(
                outbox::claimed_until_ms.lt(dbclock::no_later_than(conn, now_ms).nullable()),
            ))
            .set((
                outbox::claimed_until_ms.eq(None::<i64>),
                outbox::claimed_by.eq(None::<&str>),
            ))
            .execute(conn)?;
            changed += n as u64;
        }
        if changed > 0 {
            super::instances::notify_queued(conn)?;
        }
        Ok(changed)
    })
}

/// Drop dead letters.
pub(crate) fn discard_dead(
    conn: &mut DbConnection,
    id: Option<i64>,
    target: Option<&str>,
) -> Result<u64, StoreError> {
    write_tx(conn, |conn| {
        let mut query = outbox::table
            .filter(outbox::state.eq(DEAD))
            .select(outbox::id)
            .into_boxed();
        if let Some(id) = id {
            query = query.filter(outbox::id.eq(id));
        }
        if let Some(target) = target {
            query = query.filter(outbox::target.eq(target.to_owned()));
        }
        let ids: Vec<i64> = query.load(conn)?;
        let mut removed = 0u64;
        for chunk in ids.chunks(500) {
            // `state = dead` again in the statement: on PostgreSQL a change that re-queued the
            // row after the select above (the row is pending again) is re-checked once its lock
            // is released, and survives (test: `store::tests::races`).
            removed += diesel::delete(
                outbox::table
                    .filter(outbox::id.eq_any(chunk))
                    .filter(outbox::state.eq(DEAD)),
            )
            .execute(conn)? as u64;
        }
        Ok(removed)
    })
}

/// Counters per target.
pub(crate) fn status(
    conn: &mut DbConnection,
    targets: &[String],
) -> Result<Vec<TargetStatus>, StoreError> {
    read_tx(conn, |conn| {
        let mut out = Vec::with_capacity(targets.len());
        for target in targets {
            let pending: i64 = outbox::table
                .filter(outbox::target.eq(target))
                .filter(outbox::state.eq(PENDING))
                .count()
                .get_result(conn)?;
            let oldest_pending_ms: Option<i64> = outbox::table
                .filter(outbox::target.eq(target))
                .filter(outbox::state.eq(PENDING))
                .select(diesel::dsl::min(outbox::enqueued_ms))
                .first(conn)?;
            let dead: i64 = outbox::table
                .filter(outbox::target.eq(target))
                .filter(outbox::state.eq(DEAD))
                .count()
                .get_result(conn)?;
            // Kept by triggers on target_state (migration `status_counts`): states applied
            // and holding an entry; intents (version 0) and deleted resources are not.
            let applied: i64 = target_counts::table
                .filter(target_counts::target.eq(target))
                .select(target_counts::applied)
                .first(conn)
                .optional()?
                .unwrap_or(0);
            out.push(TargetStatus {
                target: target.clone(),
                pending: u64::try_from(pending).unwrap_or(0),
                oldest_pending_ms,
                applied: u64::try_from(applied).unwrap_or_else(|_| {
                    tracing::error!(target = %target, applied, "The applied counter of a target is negative; the store's triggers were bypassed.");
                    0
                }),
                dead: u64::try_from(dead).unwrap_or(0),
            });
        }
        Ok(out)
    })
}

/// Record the intent to create a resource's entry; see [`super::Store::record_intent`].
/// `key_norm` is the normalised key it names: `KeyConflict` when another resource holds or
/// intends it. A later attempt for the same key keeps the first `since_ms` (the earliest an
/// entry of ours can have been created), moves the previous attempt's time to
/// `prev_attempt_ms` (the latest an earlier add of ours can have started) and records its own
/// as `attempt_ms`.
pub(crate) fn record_intent(
    conn: &mut DbConnection,
    state: &TargetState,
    key_norm: &str,
) -> Result<(), StoreError> {
    write_tx(conn, |conn| {
        let current = target_state(conn, &state.target, &state.resource_id)?;
        match current {
            None => upsert_target_state(conn, state, false, Some(key_norm)),
            Some(cur) if cur.target_key.is_none() => {
                let mut row = TargetState {
                    applied_version: cur.applied_version,
                    ..state.clone()
                };
                let same = keys::intent_key(cur.extra.as_ref()).is_some()
                    && keys::key_norm_of(conn, &state.target, &state.resource_id)?.as_deref()
                        == Some(key_norm);
                let since = cur.extra.as_ref().and_then(|e| e.since_ms);
                let prev = cur.extra.as_ref().and_then(|e| e.attempt_ms.or(e.since_ms));
                if let (true, Some(since), Some(prev), Some(extra)) =
                    (same, since, prev, row.extra.as_mut())
                {
                    // Keep the first intent's time and note the previous attempt's: an entry
                    // left by an interrupted add is checked against them.
                    extra.since_ms = Some(since);
                    extra.prev_attempt_ms = Some(prev);
                } else if let (Some(old), Some(extra)) = (cur.extra.as_ref(), row.extra.as_mut()) {
                    keep_orphan(extra, old, state.updated_ms);
                }
                upsert_target_state(conn, &row, false, Some(key_norm))
            }
            Some(_) => Ok(()),
        }
    })
}

/// Most earlier intents an intent keeps (see [`keep_orphan`]).
const MAX_ORPHANS: usize = 8;

/// An intent for another key replaces the intent `old` (the resource was renamed or moved
/// before its create settled): `old`'s key is released, but an interrupted attempt may have
/// added its entry there. Keep `old` in `extra.orphans` (`{"creating", "since_ms",
/// "attempt_ms": its last attempt, "released_ms": now}`), so the next apply (a create at the
/// new key, a delete) can find that entry and take it along or remove it, by the same rules
/// as an interrupted create (our creator, inside the old intent's window; the target decides).
fn keep_orphan(extra: &mut Bookkeeping, old: &Bookkeeping, now_ms: i64) {
    let Some(key) = keys::intent_key(Some(old)) else {
        return;
    };
    let mut orphans = old.orphans.clone();
    orphans.push(Intent {
        creating: Some(key.to_owned()),
        since_ms: old.since_ms,
        attempt_ms: old.attempt_ms.or(old.since_ms),
        released_ms: Some(now_ms),
    });
    let skip = orphans.len().saturating_sub(MAX_ORPHANS);
    extra.orphans = orphans.into_iter().skip(skip).collect();
}

/// Note something in an existing state's `extra`; see [`super::Store::note_target_extra`].
pub(crate) fn note_extra(
    conn: &mut DbConnection,
    target: &str,
    resource_id: &str,
    note: impl FnOnce(&mut Bookkeeping),
) -> Result<(), StoreError> {
    write_tx(conn, |conn| {
        let Some(mut state) = target_state(conn, target, resource_id)? else {
            return Ok(());
        };
        let mut extra = state.extra.take().unwrap_or_default();
        note(&mut extra);
        state.extra = Some(extra);
        let key_norm = keys::key_norm_of(conn, target, resource_id)?;
        upsert_target_state(conn, &state, false, key_norm.as_deref())
    })
}

/// Renew the lease of a claim still held; see [`super::Store::renew_claim`].
pub(crate) fn renew_claim(
    conn: &mut DbConnection,
    instance: &str,
    item: &OutboxItem,
    now_ms: i64,
    lease_ms: i64,
) -> Result<bool, StoreError> {
    // The epoch alone decides: a claim whose lease ran out but that nobody took since (the
    // epoch did not move) is still exclusive, because taking it bumps the epoch. The row lock
    // orders this against a concurrent claim (which re-checks its lease condition).
    // In a write transaction so that on SQLite it takes its turn in the write gate instead of
    // racing the gate's holder in the busy handler. The lease is database time (`dbclock`).
    let now_ms = db_ms(now_ms);
    write_tx(conn, |conn| {
        let n = diesel::update(
            outbox::table
                .filter(outbox::id.eq(item.id))
                .filter(outbox::target.eq(&item.target))
                .filter(outbox::claim_epoch.eq(item.claim_epoch))
                // Still recorded under this instance (third reader's finding 3): a lease
                // whose `claimed_by` was cleared is not renewed into an ownerless one (a
                // starting peer's `release_claims` would clear it under this holder).
                .filter(outbox::claimed_by.eq(instance))
                // A row its settle released (or a give-back) is no longer claimed: a late
                // heartbeat must not claim it again for a whole lease.
                .filter(outbox::claimed_until_ms.is_not_null()),
        )
        .set(
            // No earlier than the database's clock plus the lease (`dbclock`).
            outbox::claimed_until_ms.eq(dbclock::lease_end(conn, now_ms, lease_ms).nullable()),
        )
        .execute(conn)?;
        Ok(n == 1)
    })
}

/// Claim the row of one resource for drift repair; see [`super::Store::claim_resource`].
pub(crate) fn claim_resource(
    conn: &mut DbConnection,
    instance: &str,
    target: &str,
    resource_type: ResourceType,
    resource_id: &str,
    now_ms: i64,
    lease_ms: i64,
) -> Result<Option<OutboxItem>, StoreError> {
    // Leases and heartbeats are database time (`dbclock`).
    let now_ms = db_ms(now_ms);
    write_tx(conn, |conn| {
        // A resource purged from the store still has a row to claim (its entry is removed).
        let version = lock_by_id(conn, resource_id)?.map_or(0, |(_, _, v)| v);
        let existing: Option<(i64, Option<i64>, Option<String>)> = outbox::table
            .filter(outbox::target.eq(target))
            .filter(outbox::resource_id.eq(resource_id))
            .select((outbox::id, outbox::claimed_until_ms, outbox::claimed_by))
            .first(conn)
            .optional()?;
        let mut taken = Vec::new();
        if let Some((_, Some(until), Some(_))) = &existing {
            if *until >= now_ms {
                taken = super::instances::take_over(conn, instance, Some(target), now_ms)?;
            }
        }
        taken.push(String::new());
        let held_by_dead = |by: &Option<String>| by.as_ref().is_some_and(|b| taken.contains(b));
        match &existing {
            // A worker holds it: it is applying the current state anyway (unless its
            // instance's heartbeat ran out: taken over).
            Some((_, Some(until), by)) if *until >= now_ms && !held_by_dead(by) => return Ok(None),
            Some(_) => {}
            None => upsert(
                conn,
                target,
                resource_type,
                resource_id,
                version,
                "resync",
                None,
                now_ms,
            )?,
        }
        // The lease condition again in the statement: a worker that claimed the row since the
        // select above wins (PostgreSQL re-checks it after the row lock).
        let claimed = diesel::update(
            outbox::table
                .filter(outbox::target.eq(target))
                .filter(outbox::resource_id.eq(resource_id))
                .filter(
                    outbox::claimed_until_ms
                        .is_null()
                        // Expired by this reading and the database's clock (`dbclock`).
                        .or(outbox::claimed_until_ms
                            .lt(dbclock::no_later_than(conn, now_ms).nullable()))
                        .or(outbox::claimed_by.eq_any(&taken)),
                ),
        )
        .set((
            // No earlier than the database's clock plus the lease (`dbclock`).
            outbox::claimed_until_ms.eq(dbclock::lease_end(conn, now_ms, lease_ms).nullable()),
            outbox::claim_epoch.eq(outbox::claim_epoch + 1),
            outbox::claimed_by.eq(Some(instance)),
            // A dead letter being repaired is pending again: a dead row never holds a claim
            // (its settle or a retry would otherwise clear a live one).
            outbox::state.eq(PENDING),
        ))
        .execute(conn)?;
        if claimed != 1 {
            return Ok(None);
        }
        outbox::table
            .filter(outbox::target.eq(target))
            .filter(outbox::resource_id.eq(resource_id))
            .select(OutboxRow::as_select())
            .first(conn)
            .optional()?
            .map(OutboxRow::into_item)
            .transpose()
    })
}

/// Release claims at startup; see [`super::Store::release_stale_claims`]: those recorded under
/// `instance` (and any recorded under none), never another process's (a CLI `reconcile
/// --full` is `<host>/cli-<pid>` and takes no instance lock). Each released row is due no
/// earlier than `due_ms`.
pub(crate) fn release_claims(
    conn: &mut DbConnection,
    instance: &str,
    due_ms: i64,
) -> Result<u64, StoreError> {
    let due_ms = db_ms(due_ms);
    write_tx(conn, |conn| {
        let released = || {
            outbox::table
                .filter(outbox::claimed_until_ms.is_not_null())
                .filter(
                    outbox::claimed_by
                        .is_null()
                        .or(outbox::claimed_by.eq(instance)),
                )
        };
        diesel::update(released().filter(outbox::next_attempt_ms.lt(due_ms)))
            .set(outbox::next_attempt_ms.eq(due_ms))
            .execute(conn)?;
        let n = diesel::update(released())
            .set((
                outbox::claimed_until_ms.eq(None::<i64>),
                outbox::claimed_by.eq(None::<&str>),
            ))
            .execute(conn)?;
        Ok(u64::try_from(n).unwrap_or(0))
    })
}
