//! The worker loops and the per-row apply. A loop registers for the wake-up *before* claiming
//! (so a push committed between the claim and the sleep is never missed), claims a batch with
//! a lease, applies each row, settles it, then sleeps until woken or `poll_interval`. The apply
//! is level-triggered: it renders the resource as stored *now*, so three quick PUTs coalesce
//! into one apply of the last state.
//!
//! Dependants, in the same target, are queued after a successful apply: a user whose key
//! appeared, changed or vanished queues its groups (how a membership naming a
//! not-yet-provisioned user waits for it) and the users whose references resolve to it, as
//! the store's reference index knows them (a report's `manager` follows its manager's create,
//! rename, move and delete). A flip of `active` queues the user's groups in the
//! mutation's own transaction (the store does it), not here: revocation must not wait for
//! the user's own apply.
//!
//! Must not answer HTTP, hold a std lock across `.await`, or spawn outside the daemon's tracker.

use super::{backoff, kind_of, members, Reconciler, TargetRuntime};
use crate::bookkeeping::Bookkeeping;
use crate::config::target::RefBy;
use crate::http::server::now_ms;
use crate::mapping::MapError;
use crate::scim::resource::{render_user, ResourceType};
use crate::store::{MembersSettle, OutboxItem, StoreError, TargetState};
use crate::targets::{
    Change, Desired, ErrorClass, Kind, Lease, Outcome, Prior, Target, TargetError, MEMBERS_FULL,
};
use crate::telemetry::{metrics, TargetLabels, TargetResultLabels};
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Rows claimed per turn.
const BATCH: i64 = 16;
/// How often an idle worker bumps its progress counter.
const HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(1);
/// Upper bound of claim rounds in one `run_pending` drain of one target.
const MAX_DRAIN_ROUNDS: usize = 100_000;
/// The named pause point between rendering a resource and syncing it (see
/// [`Reconciler::arm_pause`]).
pub const PAUSE_BEFORE_SYNC: &str = "before_sync";

/// Why an apply failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApplyError {
    /// The store could not be read: not the target's fault, the row is left to its lease.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The resource cannot be rendered with this mapping (permanent).
    #[error("mapping: {0}")]
    Map(#[from] MapError),
    /// The target refused or failed.
    #[error("{0}")]
    Target(#[from] TargetError),
    /// Another resource holds or intends the key this one renders to (permanent; the text
    /// names both resources).
    #[error("{0}")]
    Conflict(String),
}

impl ApplyError {
    /// The text recorded as `last_error` and logged (with the target's code when there is
    /// one), at most [`MAX_ERROR_TEXT`] bytes: a target may echo a huge value back, and every
    /// retry logs the text again.
    pub(crate) fn text(&self) -> String {
        let text = match self {
            ApplyError::Target(e) => match &e.code {
                Some(code) => format!("{code}: {}", e.message),
                None => e.message.clone(),
            },
            other => other.to_string(),
        };
        bounded_text(text, MAX_ERROR_TEXT)
    }
}

/// Longest apply error text logged or recorded, in bytes.
pub(crate) const MAX_ERROR_TEXT: usize = 1024;

/// `text` cut to at most `max` bytes on a char boundary, marked when cut.
pub(crate) fn bounded_text(mut text: String, max: usize) -> String {
    const MARK: &str = " [truncated]";
    if text.len() <= max {
        return text;
    }
    let mut cut = max.saturating_sub(MARK.len());
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text.truncate(cut);
    text.push_str(MARK);
    text
}

/// The result of one successful sync.
pub(crate) struct Applied {
    /// The resource version that was rendered (0 when the resource is gone from the store).
    pub(crate) version: i64,
    pub(crate) prior: Prior,
    pub(crate) outcome: Outcome,
    /// Users: the SCIM `active` flag rendered (`None` for deleted users and groups).
    pub(crate) active: Option<bool>,
    /// Groups: what the store forgets of its record of our member values once this apply is
    /// settled (`members::settle`); `None` for users.
    pub(crate) members: Option<MembersSettle>,
    /// Groups: the member configuration the record was kept for ([`Bookkeeping::members_record`]).
    pub(crate) members_record: Option<String>,
}

impl Applied {
    /// `Outcome.extra` plus the reconciler's own bookkeeping (a user's SCIM `active` at this
    /// apply, [`Bookkeeping::scim_active`], to notice a flip), as stored in `target_state`.
    pub(crate) fn extra_to_store(&self) -> Option<Bookkeeping> {
        if let (Some(fp), Some(_)) = (&self.members_record, &self.outcome.key) {
            let mut extra = self.outcome.extra.clone().unwrap_or_default();
            extra.members_record = Some(fp.clone());
            return Some(extra);
        }
        let Some(active) = self.active else {
            return self.outcome.extra.clone();
        };
        let mut extra = self.outcome.extra.clone().unwrap_or_default();
        extra.scim_active = Some(active);
        Some(extra)
    }
}

fn store_by(by: RefBy) -> &'static str {
    match by {
        RefBy::Id => "id",
        RefBy::UserName => "userName",
        RefBy::ExternalId => "externalId",
    }
}

/// Who each of a user's references names now: `(by, value, resolved user id)`.
async fn resolve_references(
    rec: &Reconciler,
    t: &TargetRuntime,
    json: &Value,
) -> Result<Vec<(RefBy, String, Option<String>)>, StoreError> {
    let mut out = Vec::new();
    for (by, value) in t.map.references(json) {
        let other = rec.inner.store.find_user(store_by(by), &value).await?;
        out.push((by, value, other.map(|u| u.id)));
    }
    Ok(out)
}

fn to_index(refs: &[(RefBy, String, Option<String>)]) -> Vec<crate::store::Reference> {
    refs.iter()
        .map(|(by, v, r)| (store_by(*by).to_owned(), v.clone(), r.clone()))
        .collect()
}

/// Desired state of a user: `(version, desired, active)`; `desired` is `None` for
/// a deleted (or purged) user. Unless `dry_run`, records the user's references in the store's
/// reference index (cleared for a deleted user).
async fn desired_user(
    rec: &Reconciler,
    t: &TargetRuntime,
    id: &str,
    dry_run: bool,
) -> Result<(i64, Option<Desired>, Option<bool>), ApplyError> {
    let store = &rec.inner.store;
    let indexed = !dry_run && !t.map.reference_rules().is_empty();
    let user = store.get_user_any(id).await?;
    let version = user.as_ref().map_or(0, |u| u.meta.version);
    let Some(user) = user.filter(|u| !u.deleted) else {
        if indexed {
            store.record_references(&t.name, id, Vec::new()).await?;
        }
        return Ok((version, None, None));
    };
    let groups = store.groups_of_user(id).await?;
    let mut json = render_user(&user.id, &user.data, &user.meta, Some(&groups), "");
    if let Some(o) = json.as_object_mut() {
        o.insert("active".into(), Value::Bool(user.active));
    }
    let refs = resolve_references(rec, t, &json).await?;
    // Recorded before the referenced users' keys are read: a referenced user whose key
    // changes asks the index whom to re-queue inside its settle, after locking its state row,
    // which a new record share-locks (`store::outbox::settle_applied`). So either this render
    // reads the new key, or the record committed before the lookup and it finds this user
    // (issue 8 item 2); the worker looks again after the settle (`enqueue_dependants`).
    if indexed {
        store
            .record_references(&t.name, id, to_index(&refs))
            .await?;
    }
    let mut resolved: HashMap<(RefBy, String), String> = HashMap::new();
    for (by, value, other) in refs {
        let key = match other {
            Some(other) => store
                .target_state(&t.name, &other)
                .await?
                .and_then(|s| s.target_key),
            None => None,
        };
        if let Some(k) = key {
            resolved.insert((by, value), k);
        }
    }
    let entry = t
        .map
        .render_user(&json, &|by, v| resolved.get(&(by, v.to_owned())).cloned())?;
    let desired = Desired {
        kind: Kind::User,
        entry,
        active: user.active,
        members: Vec::new(),
        password_hash: user.password_hash.clone(),
        role_groups: t.map.role_groups(&json),
        member_changes: None,
    };
    Ok((user.meta.version, Some(desired), Some(user.active)))
}

/// The rendered desired state of one resource in one target as an apply would render it now
/// (`None`: deleted, or groups not provisioned there). `verify` shows its values as "want".
pub(crate) async fn desired_of(
    rec: &Reconciler,
    t: &TargetRuntime,
    resource_type: ResourceType,
    id: &str,
) -> Result<Option<Desired>, ApplyError> {
    match resource_type {
        ResourceType::User => Ok(desired_user(rec, t, id, true).await?.1),
        ResourceType::Group if t.map.groups.is_none() => Ok(None),
        ResourceType::Group => {
            let state = rec.inner.store.target_state(&t.name, id).await?;
            let prior = Prior {
                key: state.as_ref().and_then(|s| s.target_key.clone()),
                extra: state.and_then(|s| s.extra),
                ..Prior::default()
            };
            Ok(members::plan_group(rec, t, id, &prior, 0, false, true)
                .await?
                .desired)
        }
    }
}

/// Before a target first creates an entry, record the intent (`creating` = key, `since_ms` =
/// `attempt_ms` = now, set in the prior bookkeeping, which a `delete`-policy user must
/// keep), so an entry left by an apply interrupted before its settle is recognised as ours
/// ([`crate::store::Store::record_intent`]). The store refuses an intent for a key another
/// resource holds or intends: a conflict naming both. Returns the prior with the
/// intent the store kept (an earlier one for the same key keeps its `since_ms`).
async fn record_intent(
    rec: &Reconciler,
    t: &TargetRuntime,
    resource_type: ResourceType,
    id: &str,
    key: &str,
    prior: Prior,
) -> Result<Prior, ApplyError> {
    let store = &rec.inner.store;
    let now = now_ms();
    let mut extra = prior.extra.clone().unwrap_or_default();
    extra.creating = Some(key.to_owned());
    extra.since_ms = Some(now);
    extra.attempt_ms = Some(now);
    let recorded = store
        .record_intent(TargetState {
            target: t.name.clone(),
            resource_type,
            resource_id: id.to_owned(),
            applied_version: 0,
            target_key: None,
            extra: Some(extra),
            updated_ms: now,
        })
        .await;
    conflict_or(rec, t, id, recorded).await?;
    let state = store.target_state(&t.name, id).await?;
    Ok(Prior {
        key: state.as_ref().and_then(|s| s.target_key.clone()),
        extra: state.and_then(|s| s.extra),
        lease: prior.lease,
        members_ours: prior.members_ours,
    })
}

/// A store result with a `KeyConflict` turned into [`ApplyError::Conflict`], its text naming
/// both resources (id and `userName` / `displayName`).
async fn conflict_or(
    rec: &Reconciler,
    t: &TargetRuntime,
    id: &str,
    result: Result<(), StoreError>,
) -> Result<(), ApplyError> {
    let Err(StoreError::KeyConflict { key, holder, .. }) = result else {
        return Ok(result?);
    };
    let store = &rec.inner.store;
    let describe = |id: String| async move {
        if let Ok(Some(u)) = store.get_user_any(&id).await {
            return format!("user {id} (userName {:?})", u.user_name);
        }
        if let Ok(Some(g)) = store.get_group_any(&id).await {
            return format!("group {id} (displayName {:?})", g.display_name);
        }
        format!("resource {id}")
    };
    let this = describe(id.to_owned()).await;
    let other = match holder {
        Some(h) => describe(h).await,
        None => "another resource".to_owned(),
    };
    Err(ApplyError::Conflict(format!(
        "key conflict in target {}: {key} is already held or being created by {other}; \
         {this} renders the same key and is not applied (two resources never share an entry)",
        t.name
    )))
}

/// Before a target renames an entry (the key it will give it differs from the recorded
/// one), reserve the new key in the store, so a rename onto a key another resource holds or
/// intends is a conflict before the target is touched.
async fn reserve_key(
    rec: &Reconciler,
    t: &TargetRuntime,
    resource_type: ResourceType,
    id: &str,
    key: &str,
) -> Result<(), ApplyError> {
    let reserved = rec
        .inner
        .store
        .reserve_key(&t.name, resource_type, id, key)
        .await;
    conflict_or(rec, t, id, reserved).await
}

/// The earlier intents an intent keeps (`extra.orphans`, see `store::outbox::keep_orphan`)
/// whose key another resource now holds or intends are dropped before the target sees them:
/// an entry there may be that resource's, never ours to take along or remove.
async fn unheld_orphans(
    rec: &Reconciler,
    t: &TargetRuntime,
    resource_type: ResourceType,
    id: &str,
    mut prior: Prior,
) -> Result<Prior, ApplyError> {
    let Some(extra) = prior.extra.as_mut() else {
        return Ok(prior);
    };
    let mut kept = Vec::new();
    for o in &extra.orphans {
        let Some(key) = o.creating.as_deref() else {
            continue;
        };
        let held = rec
            .inner
            .store
            .key_holder(&t.name, resource_type, key, id)
            .await?;
        if held.is_none() {
            kept.push(o.clone());
        }
    }
    extra.orphans = kept;
    Ok(prior)
}

/// Before a user last applied as active is deactivated, note `deactivating` in its state,
/// so that if the apply is interrupted after the target wrote its deactivation but before
/// the settle, a later reactivation knows those values may be ours to undo (the
/// target's own record of them, written by the settle, never arrived). The settle replaces
/// the whole `extra`, dropping the note.
async fn note_deactivating(
    rec: &Reconciler,
    t: &TargetRuntime,
    id: &str,
    prior: Prior,
) -> Result<Prior, ApplyError> {
    let extra = prior.extra.as_ref();
    let was_active = extra.and_then(|e| e.scim_active);
    let noted = extra.and_then(|e| e.deactivating);
    if was_active == Some(false) || noted == Some(true) {
        return Ok(prior);
    }
    rec.inner
        .store
        .note_target_extra(&t.name, id, |e| e.deactivating = Some(true))
        .await?;
    let mut extra = prior.extra.unwrap_or_default();
    extra.deactivating = Some(true);
    Ok(Prior {
        key: prior.key,
        extra: Some(extra),
        lease: prior.lease,
        members_ours: prior.members_ours,
    })
}

/// Render one resource for one target and sync it (or, with `dry_run`, report what would
/// change). Does not settle anything. `lease` is the claim's (the target writes only while
/// enough of it remains). Groups get their whole membership applied (see [`apply_with`]).
pub(crate) async fn apply(
    rec: &Reconciler,
    t: &TargetRuntime,
    resource_type: ResourceType,
    id: &str,
    dry_run: bool,
    lease: Lease,
) -> Result<Applied, ApplyError> {
    apply_with(rec, t, resource_type, id, dry_run, lease, false).await
}

/// [`apply`]; with `delta`, a group whose change record can be trusted gets only the member
/// values that changed since its applied version (`members::plan_group`), and when the
/// target cannot apply them alone ([`MEMBERS_FULL`]) its whole membership in the same call.
pub(crate) async fn apply_with(
    rec: &Reconciler,
    t: &TargetRuntime,
    resource_type: ResourceType,
    id: &str,
    dry_run: bool,
    lease: Lease,
    delta: bool,
) -> Result<Applied, ApplyError> {
    let delta = delta && !dry_run && resource_type == ResourceType::Group;
    match apply_once(rec, t, resource_type, id, dry_run, lease.clone(), delta).await {
        Err(ApplyError::Target(e)) if delta && e.code.as_deref() == Some(MEMBERS_FULL) => {
            tracing::debug!(target = %t.name, resource_id = %id, reason = %e.message, "Applying the group's whole membership.");
            apply_once(rec, t, resource_type, id, dry_run, lease, false).await
        }
        other => other,
    }
}

async fn apply_once(
    rec: &Reconciler,
    t: &TargetRuntime,
    resource_type: ResourceType,
    id: &str,
    dry_run: bool,
    lease: Lease,
    delta: bool,
) -> Result<Applied, ApplyError> {
    let state = rec.inner.store.target_state(&t.name, id).await?;
    let applied_version = state.as_ref().map_or(0, |s| s.applied_version);
    let prior = Prior {
        key: state.as_ref().and_then(|s| s.target_key.clone()),
        extra: state.and_then(|s| s.extra),
        lease,
        members_ours: None,
    };
    let mut group_plan = None;
    let (version, desired, active) = match resource_type {
        ResourceType::User => desired_user(rec, t, id, dry_run).await?,
        ResourceType::Group if t.map.groups.is_none() => {
            // Groups are not provisioned in this target: nothing to do, nothing to change.
            let version = rec
                .inner
                .store
                .get_group_any(id)
                .await?
                .map_or(0, |g| g.meta.version);
            let outcome = Outcome {
                key: prior.key.clone(),
                extra: prior.extra.clone(),
                ..Outcome::default()
            };
            return Ok(Applied {
                version,
                prior,
                outcome,
                active: None,
                members: None,
                members_record: None,
            });
        }
        ResourceType::Group => {
            let plan =
                members::plan_group(rec, t, id, &prior, applied_version, delta, dry_run).await?;
            let (v, d) = (plan.version, plan.desired.clone());
            group_plan = Some(plan);
            (v, d, None)
        }
    };
    let prior = Prior {
        members_ours: group_plan.as_ref().and_then(|p| p.ours.clone()),
        ..prior
    };
    // The key the target will give the entry: recorded (intent) or reserved (rename) first,
    // so no two resources ever hold or intend one key (the store's unique index).
    let planned = desired.as_ref().and_then(|d| t.target.planned_key(d));
    let kind = kind_of(resource_type);
    let prior = match (&desired, &prior.key, &planned, dry_run) {
        (Some(_), None, Some(k), false) => {
            record_intent(rec, t, resource_type, id, k, prior).await?
        }
        (Some(_), Some(old), Some(k), false)
            if t.target.key_norm(kind, old) != t.target.key_norm(kind, k) =>
        {
            reserve_key(rec, t, resource_type, id, k).await?;
            prior
        }
        _ => prior,
    };
    let prior = unheld_orphans(rec, t, resource_type, id, prior).await?;
    let prior = match (&desired, &prior.key, dry_run) {
        (Some(d), Some(_), false) if d.kind == Kind::User && !d.active => {
            note_deactivating(rec, t, id, prior).await?
        }
        _ => prior,
    };
    if let (Some(plan), false) = (&group_plan, dry_run) {
        // The values about to be written are ours before they are written; under the same
        // fence as the target's writes (an apply that lost its claim records nothing).
        prior.lease.check(t.target.timeout())?;
        members::record(rec, t, id, plan).await?;
    }
    if !dry_run {
        rec.pause_point(PAUSE_BEFORE_SYNC).await;
    }
    let started = Instant::now();
    let change = match &desired {
        Some(d) => Change::Upsert(d),
        // What the target recorded it made wins (that is the entry to remove); the store's
        // type only when the bookkeeping does not say (a row written before `kind` was kept).
        None => Change::Remove {
            kind: prior.extra.as_ref().and_then(|b| b.kind).unwrap_or(kind),
        },
    };
    let result = t.target.sync(change, &prior, dry_run).await;
    metrics()
        .target_op_duration
        .get_or_create(&TargetLabels {
            target: t.name.clone(),
        })
        .observe(started.elapsed().as_secs_f64());
    let outcome = result?;
    let members_record = group_plan
        .as_ref()
        .filter(|p| p.desired.is_some())
        .map(|_| t.map.members_fingerprint().to_owned());
    Ok(Applied {
        version,
        prior,
        outcome,
        active,
        members: group_plan.map(|p| p.settle),
        members_record,
    })
}

fn count(target: &str, result: &str) {
    metrics()
        .applies
        .get_or_create(&TargetResultLabels {
            target: target.to_owned(),
            result: result.to_owned(),
        })
        .inc();
}

/// Apply and settle one claimed row. Returns true when it was applied.
async fn process(rec: &Reconciler, t: &TargetRuntime, item: &OutboxItem) -> bool {
    let attempt = item.attempts.saturating_add(1);
    let span = tracing::debug_span!(
        "apply",
        resource_id = %item.resource_id,
        target = %t.name,
        attempt,
        request_id = item.request_id.as_deref().unwrap_or(""),
    );
    async move {
        let Some(result) = apply_claimed(rec, t, item, true).await else {
            return false;
        };
        let now = now_ms();
        match result {
            Ok(done) => {
                // The settle queues the dependants of a key that appeared, changed or vanished
                // in its own transaction (`store::outbox::settle_applied`): a crash after its
                // commit cannot lose them, and a group applied before it (reading no key)
                // runs again. The reference index it looks holders up in is filled first; the
                // queueing after the settle only repeats it (idempotent, coalescing).
                if item.resource_type == ResourceType::User && !t.map.reference_rules().is_empty() {
                    if let Err(e) = ensure_reference_index(rec, t).await {
                        tracing::error!(target = %t.name, resource_id = %item.resource_id, error = %e, "Cannot fill the reference index; drift repair will fix references.");
                    }
                }
                if !members::settle(rec, t, item, done.members.as_ref()).await {
                    return false;
                }
                let state = TargetState {
                    target: t.name.clone(),
                    resource_type: item.resource_type,
                    resource_id: item.resource_id.clone(),
                    applied_version: done.version,
                    target_key: done.outcome.key.clone(),
                    extra: done.extra_to_store(),
                    updated_ms: now,
                };
                let settled = rec.inner.store.settle_applied(item, state, now).await;
                let settled = conflict_or(rec, t, &item.resource_id, settled).await;
                if let Err(ApplyError::Conflict(text)) = &settled {
                    fail(rec, t, item, ErrorClass::Permanent, text, now).await;
                    return false;
                }
                if let Err(e) = settled {
                    tracing::error!(target = %t.name, resource_id = %item.resource_id, outbox_id = item.id, error = %e, "Applied, but cannot record it in the store; it re-applies when the lease expires.");
                    return false;
                }
                count(&t.name, "applied");
                tracing::debug!(target = %t.name, resource_id = %item.resource_id, changes = done.outcome.changes.len(), "Applied.");
                rec.set_health(&t.name, true, "ok".into());
                if item.resource_type == ResourceType::Group {
                    members::prune(rec, t, &item.resource_id).await;
                }
                enqueue_dependants(rec, t, item.resource_type, &item.resource_id, &done).await;
                true
            }
            Err(ApplyError::Store(e)) => {
                tracing::error!(target = %t.name, resource_id = %item.resource_id, outbox_id = item.id, error = %e, "Cannot read the resource from the store; it re-applies when the lease expires.");
                false
            }
            Err(ApplyError::Target(e)) if e.code.as_deref() == Some("lease") => {
                // Not the target's fault: the claim ran short (a stalled process, a store that
                // could not renew it) or was lost. Give the row back, due now; a settle of a
                // lost claim changes nothing.
                tracing::warn!(target = %t.name, resource_id = %item.resource_id, outbox_id = item.id, "The claim's lease ran short during the apply; nothing more was written and the row goes back to the outbox.");
                if let Err(e) = rec.inner.store.settle_failed(item, &e.message, now, false, now).await {
                    tracing::error!(target = %t.name, resource_id = %item.resource_id, outbox_id = item.id, error = %e, "Cannot give the row back; it re-applies when the lease expires.");
                }
                false
            }
            Err(e) => {
                let class = match &e {
                    ApplyError::Target(te) => te.class,
                    ApplyError::Map(_) | ApplyError::Store(_) | ApplyError::Conflict(_) => {
                        ErrorClass::Permanent
                    }
                };
                // A write that timed out on our side may still run in the server: the next
                // attempt waits at least the timeout, so it cannot be overtaken by it.
                let timed_out = matches!(&e, ApplyError::Target(te) if te.code.as_deref() == Some("timeout"));
                let not_before = if timed_out {
                    now.saturating_add(i64::try_from(t.target.timeout().as_millis()).unwrap_or(i64::MAX))
                } else {
                    now
                };
                fail_not_before(rec, t, item, class, &e.text(), now, not_before).await;
                false
            }
        }
    }
    .instrument(span)
    .await
}

/// The claim's lease in ms.
fn lease_ms(rec: &Reconciler) -> i64 {
    i64::try_from(rec.inner.settings.lease.as_millis()).unwrap_or(i64::MAX)
}

/// Apply a claimed row under its lease: the lease counts from the start of this row's apply
/// (not from the batch's claim), a heartbeat renews it every lease/3 while the apply runs, and
/// the target writes only while at least its operation timeout remains (`Lease::check`).
/// `None` when the claim was lost before the apply started (another worker took the row after
/// the lease of this batch ran out) or the store cannot renew it.
pub(crate) async fn apply_claimed(
    rec: &Reconciler,
    t: &TargetRuntime,
    item: &OutboxItem,
    delta: bool,
) -> Option<Result<Applied, ApplyError>> {
    let store = &rec.inner.store;
    let lease = lease_ms(rec);
    let start = now_ms();
    match store.renew_claim(item, start, lease).await {
        Ok(true) => {}
        Ok(false) => {
            tracing::debug!(target = %t.name, resource_id = %item.resource_id, outbox_id = item.id, "Claim lost before the apply started; another worker has the row.");
            return None;
        }
        Err(e) => {
            tracing::error!(target = %t.name, resource_id = %item.resource_id, outbox_id = item.id, error = %e, "Cannot renew the claim; the row re-applies when the lease expires.");
            return None;
        }
    }
    let until = Arc::new(AtomicI64::new(start.saturating_add(lease)));
    let heartbeat = async {
        let period = (rec.inner.settings.lease / 3).max(std::time::Duration::from_millis(10));
        loop {
            tokio::time::sleep(period).await;
            if rec.pause_holding() {
                // A paused apply stands for a stopped process: its heartbeat stops too.
                continue;
            }
            let now = now_ms();
            match store.renew_claim(item, now, lease).await {
                Ok(true) => until.store(now.saturating_add(lease), Ordering::SeqCst),
                Ok(false) => {
                    tracing::warn!(target = %t.name, resource_id = %item.resource_id, outbox_id = item.id, "Claim lost while applying; this apply writes nothing more.");
                    until.store(i64::MIN, Ordering::SeqCst);
                    std::future::pending::<()>().await;
                }
                // The store is down: the lease runs out on its own and writes stop.
                Err(e) => {
                    tracing::warn!(target = %t.name, resource_id = %item.resource_id, error = %e, "Cannot renew the claim.");
                }
            }
        }
    };
    let lease = Lease::until(until.clone());
    tokio::select! {
        result = apply_with(rec, t, item.resource_type, &item.resource_id, false, lease, delta) => Some(result),
        () = heartbeat => None,
    }
}

/// Record a failure: transient ones retry forever with backoff, permanent ones become a dead
/// letter once `max_attempts` is reached.
pub(crate) async fn fail(
    rec: &Reconciler,
    t: &TargetRuntime,
    item: &OutboxItem,
    class: ErrorClass,
    text: &str,
    now: i64,
) {
    fail_not_before(rec, t, item, class, text, now, now).await;
}

/// [`fail`], with the next attempt no earlier than `not_before`.
async fn fail_not_before(
    rec: &Reconciler,
    t: &TargetRuntime,
    item: &OutboxItem,
    class: ErrorClass,
    text: &str,
    now: i64,
    not_before: i64,
) {
    let settings = &rec.inner.settings;
    let attempt = u32::try_from(item.attempts.saturating_add(1)).unwrap_or(1);
    let delay = backoff::delay(
        attempt,
        settings.backoff_base,
        settings.backoff_max,
        rand::random::<f64>(),
    );
    let next = now
        .saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX))
        .max(not_before);
    let dead = class == ErrorClass::Permanent && attempt >= settings.max_attempts;
    let resource_type = item.resource_type.as_str();
    if let Err(e) = rec
        .inner
        .store
        .settle_failed(item, text, next, dead, now)
        .await
    {
        tracing::error!(target = %t.name, resource_id = %item.resource_id, outbox_id = item.id, error = %e, "Cannot record a failed apply in the store; it re-applies when the lease expires.");
        return;
    }
    let labels = TargetLabels {
        target: t.name.clone(),
    };
    // The store keeps the row pending when a newer change arrived meanwhile (it deserves its
    // own attempts): check, on this rare path, before calling it a dead letter.
    let dead = dead
        && match rec.inner.store.dead_letters(Some(&t.name)).await {
            Ok(rows) => rows.iter().any(|r| r.id == item.id),
            Err(_) => true,
        };
    if dead {
        count(&t.name, "dead");
        metrics().dead_letters.get_or_create(&labels).inc();
        tracing::error!(target = %t.name, resource_type, resource_id = %item.resource_id, outbox_id = item.id, attempt, error = %text, "Apply failed permanently; the change is now a dead letter (see `scim-sync dead-letters list`).");
    } else {
        count(&t.name, "failed");
        metrics().retries.get_or_create(&labels).inc();
        if class == ErrorClass::Transient {
            rec.set_health(&t.name, false, text.to_owned());
            tracing::warn!(target = %t.name, resource_type, resource_id = %item.resource_id, outbox_id = item.id, attempt, retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX), error = %text, "Apply failed; will retry.");
        } else {
            tracing::warn!(target = %t.name, resource_type, resource_id = %item.resource_id, outbox_id = item.id, attempt, max_attempts = settings.max_attempts, error = %text, "Apply refused by the target; will retry before making it a dead letter.");
        }
    }
}

/// Queue what depends on a user just applied (see the module docs).
pub(crate) async fn enqueue_dependants(
    rec: &Reconciler,
    t: &TargetRuntime,
    resource_type: ResourceType,
    id: &str,
    done: &Applied,
) {
    if resource_type != ResourceType::User {
        return;
    }
    let store = &rec.inner.store;
    let now = now_ms();
    let key_changed = done.prior.key != done.outcome.key;
    // A flip of `active` is not looked at here: the mutation that flipped it queued the
    // user's groups in its own transaction (`store::resources::enqueue_groups_of`).
    if t.map.groups.is_some() && key_changed {
        let queued = match store.group_ids_of_user(id).await {
            Ok(groups) => {
                store
                    .enqueue_many(&t.name, ResourceType::Group, &groups, "membership", now)
                    .await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = queued {
            tracing::error!(target = %t.name, resource_id = %id, error = %e, "Cannot queue the user's groups; drift repair will fix their membership.");
        }
    }
    // Whose references resolve (or resolved, at their last render) to this user: re-queued
    // when its key appeared (created), changed (renamed, moved) or vanished (deleted).
    if key_changed && !t.map.reference_rules().is_empty() {
        let holders = match referencing_users(rec, t, id).await {
            Ok(h) => h,
            Err(e) => {
                tracing::error!(target = %t.name, resource_id = %id, error = %e, "Cannot find the users referencing this one; drift repair will fix their references.");
                return;
            }
        };
        if !holders.is_empty() {
            if let Err(e) = store
                .enqueue_many(&t.name, ResourceType::User, &holders, "reference", now)
                .await
            {
                tracing::error!(target = %t.name, resource_id = %id, error = %e, "Cannot queue the users referencing this one; drift repair will fix their references.");
            }
        }
    }
}

/// The users whose references name `id` (see [`crate::store::Store::users_referencing`]),
/// first filling the store's reference index when it was never filled for this target's
/// reference rules (a new target, changed rules, a database from before the index): one pass
/// over the live users, once per rules change, not once per process.
async fn referencing_users(
    rec: &Reconciler,
    t: &TargetRuntime,
    id: &str,
) -> Result<Vec<String>, StoreError> {
    ensure_reference_index(rec, t).await?;
    rec.inner.store.users_referencing(&t.name, id).await
}

/// Fill the store's reference index when it was never filled for this target's reference
/// rules (see [`referencing_users`]).
async fn ensure_reference_index(rec: &Reconciler, t: &TargetRuntime) -> Result<(), StoreError> {
    let store = &rec.inner.store;
    let mut indexed = t.references_indexed.lock().await;
    if !*indexed {
        let rules = t.map.reference_rules();
        if store.reference_index_rules(&t.name).await?.as_deref() != Some(rules.as_str()) {
            store.reset_reference_index(&t.name).await?;
            for holder in store.all_resource_ids(ResourceType::User, false).await? {
                let Some(user) = store.get_user_any(&holder).await? else {
                    continue;
                };
                let json = render_user(&user.id, &user.data, &user.meta, None, "");
                let refs = resolve_references(rec, t, &json).await?;
                store
                    .backfill_references(&t.name, &holder, to_index(&refs))
                    .await?;
            }
            store.finish_reference_index(&t.name, &rules).await?;
            tracing::info!(target = %t.name, "Rebuilt the reference index.");
        }
        *indexed = true;
    }
    Ok(())
}

/// Once per target runtime: give the states recorded before the key index existed their
/// normalised key, and report the resources that already share an entry. Every claim waits
/// for it (`turn`, `drain`): until it is done a state upgraded without a key (e.g. a rename
/// reserved before the upgrade) would leave its entry's key free for another resource. A
/// failed fill is tried again at the next turn; nothing is claimed meanwhile.
async fn fill_key_norms(rec: &Reconciler, t: &TargetRuntime) -> bool {
    let mut filled = t.keys_filled.lock().await;
    if *filled {
        return true;
    }
    match rec.inner.store.fill_key_norms(&t.name).await {
        Ok(shared) => {
            for (resource_id, holder, key) in shared {
                tracing::error!(target = %t.name, resource_id = %resource_id, holder = %holder, dn = %key, "Two resources already share one target entry; the resource's next apply fails as a conflict until an operator resolves it.");
            }
            *filled = true;
            true
        }
        Err(e) => {
            tracing::error!(target = %t.name, error = %e, "Cannot fill in the normalised target keys; nothing is claimed until it succeeds.");
            false
        }
    }
}

/// Claim one batch and process it; returns how many rows were claimed.
async fn turn(rec: &Reconciler, t: &TargetRuntime) -> usize {
    if !fill_key_norms(rec, t).await {
        return 0;
    }
    let lease = lease_ms(rec);
    let items = match rec.inner.store.claim(&t.name, now_ms(), lease, BATCH).await {
        Ok(items) => items,
        Err(e) => {
            tracing::error!(target = %t.name, error = %e, "Cannot claim outbox rows; the store is unavailable.");
            return 0;
        }
    };
    for item in &items {
        process(rec, t, item).await;
    }
    items.len()
}

/// One worker loop of target `index` (see the module docs). Abandoning a claimed row on
/// shutdown is fine: its lease expires and it re-applies idempotently.
pub(crate) async fn run(
    rec: Reconciler,
    index: usize,
    progress: Arc<AtomicU64>,
    cancel: CancellationToken,
) {
    let Some(t) = rec.inner.targets.get(index).cloned() else {
        return;
    };
    let poll = rec.inner.settings.poll_interval;
    loop {
        progress.fetch_add(1, Ordering::Relaxed);
        // Register for the wake-up before claiming: a push committed after the claim's query
        // still wakes this loop.
        let notified = rec.inner.wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let work = async {
            let _shared = rec.inner.gate.read().await;
            turn(&rec, &t).await
        };
        let claimed = tokio::select! {
            () = cancel.cancelled() => return,
            n = work => n,
        };
        if i64::try_from(claimed).unwrap_or(0) >= BATCH {
            continue;
        }
        // Idle until woken or `poll_interval`, bumping the counter every heartbeat so an idle
        // worker never looks wedged to the watchdog, whatever the poll interval.
        let deadline = tokio::time::Instant::now() + poll;
        loop {
            let slice = deadline
                .saturating_duration_since(tokio::time::Instant::now())
                .min(HEARTBEAT);
            if slice.is_zero() {
                break;
            }
            tokio::select! {
                () = cancel.cancelled() => return,
                () = &mut notified => break,
                () = tokio::time::sleep(slice) => {
                    progress.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

/// Apply everything pending for target `index` now (see [`Reconciler::run_pending`]); the
/// caller holds the gate exclusively. Returns how many rows were applied.
pub(crate) async fn drain(rec: &Reconciler, index: usize) -> usize {
    let Some(t) = rec.inner.targets.get(index).cloned() else {
        return 0;
    };
    if !fill_key_norms(rec, &t).await {
        return 0;
    }
    let store = &rec.inner.store;
    if let Err(e) = store.expedite(&t.name, now_ms()).await {
        tracing::error!(target = %t.name, error = %e, "Cannot read the outbox; the store is unavailable.");
        return 0;
    }
    let lease = lease_ms(rec);
    let mut applied = 0;
    let mut failed: HashSet<i64> = HashSet::new();
    for _ in 0..MAX_DRAIN_ROUNDS {
        let items = match store.claim(&t.name, now_ms(), lease, BATCH).await {
            Ok(items) => items,
            Err(e) => {
                tracing::error!(target = %t.name, error = %e, "Cannot claim outbox rows; the store is unavailable.");
                break;
            }
        };
        if items.is_empty() {
            break;
        }
        // A row that failed in this drain and came due again (a short backoff) gets this one
        // more attempt, and then the drain ends: it must not spin on a target that is down.
        let only_repeats = items.iter().all(|i| failed.contains(&i.id));
        for item in &items {
            if process(rec, &t, item).await {
                applied += 1;
            } else {
                failed.insert(item.id);
            }
        }
        if only_repeats {
            break;
        }
    }
    applied
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn applied(active: Option<bool>, extra: Option<Value>) -> Applied {
        Applied {
            version: 3,
            prior: Prior::default(),
            outcome: Outcome {
                key: Some("uid=a,dc=x".into()),
                extra: extra.map(Bookkeeping::from_json),
                ..Outcome::default()
            },
            active,
            members: None,
            members_record: None,
        }
    }

    #[test]
    fn apply_error_text_is_bounded_for_logs_and_last_error() {
        let e = ApplyError::Target(TargetError {
            class: ErrorClass::Permanent,
            code: Some("21".into()),
            message: format!("invalid value: {}", "é".repeat(100_000)),
        });
        let text = e.text();
        assert!(text.len() <= MAX_ERROR_TEXT, "{} bytes", text.len());
        assert!(text.starts_with("21: invalid value: é"));
        assert!(text.ends_with("[truncated]"));
        assert_eq!(bounded_text("short".into(), 10), "short");
    }

    #[test]
    fn stored_extra_keeps_the_targets_bookkeeping_and_adds_active() {
        let a = applied(Some(false), Some(json!({"kind": "user", "uid": "a"})));
        assert_eq!(
            a.extra_to_store().map(|e| e.to_json()),
            Some(json!({"kind": "user", "uid": "a", "scim_active": false}))
        );
        // No bookkeeping from the target, or a non-object: only ours.
        assert_eq!(
            applied(Some(true), None)
                .extra_to_store()
                .map(|e| e.to_json()),
            Some(json!({"scim_active": true}))
        );
        assert_eq!(
            applied(Some(true), Some(json!([1, 2])))
                .extra_to_store()
                .map(|e| e.to_json()),
            Some(json!({"scim_active": true}))
        );
        // Groups and deleted users: the target's extra untouched.
        assert_eq!(
            applied(None, Some(json!({"kind": "group"})))
                .extra_to_store()
                .map(|e| e.to_json()),
            Some(json!({"kind": "group"}))
        );
        assert_eq!(
            applied(None, None).extra_to_store().map(|e| e.to_json()),
            None
        );
    }

    #[test]
    fn error_text_carries_the_target_code() {
        let e = ApplyError::Target(TargetError {
            class: ErrorClass::Permanent,
            code: Some("objectClassViolation".into()),
            message: "add uid=a: missing sn".into(),
        });
        assert_eq!(e.text(), "objectClassViolation: add uid=a: missing sn");
        let e = ApplyError::Target(TargetError {
            class: ErrorClass::Transient,
            code: None,
            message: "connection refused".into(),
        });
        assert_eq!(e.text(), "connection refused");
        let e = ApplyError::Map(MapError::NoGroupMapping);
        assert_eq!(e.text(), "mapping: this target does not map groups");
    }

    #[test]
    fn reference_kinds_use_the_store_spelling() {
        assert_eq!(store_by(RefBy::Id), "id");
        assert_eq!(store_by(RefBy::UserName), "userName");
        assert_eq!(store_by(RefBy::ExternalId), "externalId");
    }
}
