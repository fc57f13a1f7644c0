//! The outbox (one row per (target, resource), coalescing repeated changes), claims with leases
//! and fencing epochs, settling, dead letters, per-target state and status counters. Must not
//! decide retry policy (the reconciler passes `next_attempt_ms` and `dead`).

use super::history::audit;
use super::models::{NewOutbox, OutboxRow, TargetStateRow};
use super::resources::lock_by_id;
use super::schema::{outbox, target_state};
use super::{
    has_nul, read_tx, sanitize_text, write_tx, AuditCtx, DbConnection, OutboxItem, StoreError,
    TargetState, TargetStatus,
};
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
    for target in targets {
        upsert(
            conn,
            target,
            resource_type,
            resource_id,
            version,
            operation,
            request_id,
            ctx.now_ms,
        )?;
    }
    Ok(())
}

/// Coalescing upsert on (target, resource_id). The caller holds the resource row (PostgreSQL
/// `FOR UPDATE`, SQLite write lock), so two writers never race to insert the same row.
/// A pending row keeps its `enqueued_ms` (the oldest-pending age stays honest); a dead row
/// starts over. A claimed row keeps its lease and epoch, and its `next_attempt_ms` moves
/// strictly forward even when the version does not (a dependant re-queued at the same version,
/// e.g. a group whose member just got its entry): settling sees the version or
/// `next_attempt_ms` moved and releases it for another round instead of deleting it.
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
    let existing: Option<(i64, String)> = outbox::table
        .filter(outbox::target.eq(target))
        .filter(outbox::resource_id.eq(resource_id))
        .select((outbox::id, outbox::state))
        .first(conn)
        .optional()?;
    match existing {
        Some((id, state)) => {
            // `generation` + 1 tells a settle of an earlier claim that the row was queued again.
            diesel::update(outbox::table.find(id))
                .set((
                    outbox::version.eq(version),
                    outbox::operation.eq(operation),
                    outbox::request_id.eq(request_id),
                    outbox::attempts.eq(0),
                    outbox::next_attempt_ms.eq(now_ms),
                    outbox::state.eq(PENDING),
                    outbox::last_error.eq(None::<&str>),
                    outbox::generation.eq(outbox::generation + 1),
                ))
                .execute(conn)?;
            if state == DEAD {
                diesel::update(outbox::table.find(id))
                    .set((
                        outbox::enqueued_ms.eq(now_ms),
                        outbox::claimed_until_ms.eq(None::<i64>),
                    ))
                    .execute(conn)?;
            }
        }
        None => {
            diesel::insert_into(outbox::table)
                .values(NewOutbox {
                    target,
                    resource_type: resource_type.as_str(),
                    resource_id,
                    version,
                    operation,
                    request_id,
                    attempts: 0,
                    next_attempt_ms: now_ms,
                    last_error: None,
                    state: PENDING,
                    enqueued_ms: now_ms,
                    claimed_until_ms: None,
                    claim_epoch: 0,
                    generation: 0,
                })
                .execute(conn)?;
        }
    }
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
            now_ms,
        )
    })
}

/// Claim due rows; see [`super::Store::claim`].
pub(crate) fn claim(
    conn: &mut DbConnection,
    target: &str,
    now_ms: i64,
    lease_ms: i64,
    limit: i64,
) -> Result<Vec<OutboxItem>, StoreError> {
    if limit <= 0 {
        return Ok(Vec::new());
    }
    write_tx(conn, |conn| {
        let due = outbox::table
            .filter(outbox::target.eq(target))
            .filter(outbox::state.eq(PENDING))
            .filter(outbox::next_attempt_ms.le(now_ms))
            .filter(
                outbox::claimed_until_ms
                    .is_null()
                    .or(outbox::claimed_until_ms.lt(now_ms)),
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
                outbox::claimed_until_ms.eq(Some(now_ms.saturating_add(lease_ms))),
                outbox::claim_epoch.eq(outbox::claim_epoch + 1),
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
/// lower than it).
fn upsert_target_state(
    conn: &mut DbConnection,
    state: &TargetState,
    strictly_higher: bool,
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
    let row = TargetStateRow::from_state(state);
    match current {
        None => {
            diesel::insert_into(target_state::table)
                .values(&row)
                .execute(conn)?;
        }
        Some(applied) => {
            let newer = if strictly_higher {
                state.applied_version > applied
            } else {
                state.applied_version >= applied
            };
            if newer {
                diesel::update(key).set(&row).execute(conn)?;
            }
        }
    }
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

/// Record success; see [`super::Store::settle_applied`].
pub(crate) fn settle_applied(
    conn: &mut DbConnection,
    item: &OutboxItem,
    state: &TargetState,
    now_ms: i64,
) -> Result<(), StoreError> {
    write_tx(conn, |conn| {
        let row = lock_outbox_row(conn, item.id)?;
        let ours = row
            .as_ref()
            .is_some_and(|r| r.claim_epoch == item.claim_epoch && r.target == item.target);
        upsert_target_state(conn, state, !ours)?;
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
        let next_attempt_ms = if moved { now_ms } else { next_attempt_ms };
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
            let n = diesel::update(outbox::table.filter(outbox::id.eq_any(chunk)))
                .set((
                    outbox::state.eq(PENDING),
                    outbox::attempts.eq(0),
                    outbox::next_attempt_ms.eq(now_ms),
                    outbox::enqueued_ms.eq(now_ms),
                    outbox::claimed_until_ms.eq(None::<i64>),
                ))
                .execute(conn)?;
            changed += n as u64;
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
            removed += diesel::delete(outbox::table.filter(outbox::id.eq_any(chunk)))
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
            // Intent rows (`record_intent`, version 0) are not applies.
            let applied: i64 = target_state::table
                .filter(target_state::target.eq(target))
                .filter(target_state::applied_version.gt(0))
                .count()
                .get_result(conn)?;
            out.push(TargetStatus {
                target: target.clone(),
                pending: u64::try_from(pending).unwrap_or(0),
                oldest_pending_ms,
                applied: u64::try_from(applied).unwrap_or(0),
                dead: u64::try_from(dead).unwrap_or(0),
            });
        }
        Ok(out)
    })
}

/// Record the intent to create a resource's entry; see [`super::Store::record_intent`].
pub(crate) fn record_intent(
    conn: &mut DbConnection,
    state: &TargetState,
) -> Result<(), StoreError> {
    let current = target_state(conn, &state.target, &state.resource_id)?;
    match current {
        None => upsert_target_state(conn, state, false),
        Some(cur) if cur.target_key.is_none() => {
            let same = |s: &TargetState| {
                s.extra
                    .as_ref()
                    .and_then(|e| e.get("creating"))
                    .map(ToString::to_string)
            };
            if same(&cur).is_some() && same(&cur) == same(state) {
                // Keep the first intent: its time is what an interrupted add is checked against.
                return Ok(());
            }
            let row = TargetState {
                applied_version: cur.applied_version,
                ..state.clone()
            };
            upsert_target_state(conn, &row, false)
        }
        Some(_) => Ok(()),
    }
}

/// Merge one key into an existing state's `extra`; see [`super::Store::note_target_extra`].
pub(crate) fn note_extra(
    conn: &mut DbConnection,
    target: &str,
    resource_id: &str,
    key: &str,
    value: serde_json::Value,
) -> Result<(), StoreError> {
    write_tx(conn, |conn| {
        let Some(mut state) = target_state(conn, target, resource_id)? else {
            return Ok(());
        };
        let mut extra = match state.extra.take() {
            Some(serde_json::Value::Object(map)) => map,
            Some(_) | None => serde_json::Map::new(),
        };
        extra.insert(key.to_owned(), value.clone());
        state.extra = Some(serde_json::Value::Object(extra));
        upsert_target_state(conn, &state, false)
    })
}
