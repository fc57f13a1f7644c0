//! The worker loops and the batch apply. A loop registers for the wake-up *before* claiming
//! (so a push committed between the claim and the sleep is never missed), claims a batch of
//! up to `BATCH` rows with a lease, applies them together (`process_batch`: one store
//! snapshot, the writes before the syncs in one batch, every sync at once, settles as the
//! syncs finish), then sleeps until woken or `poll_interval`. The apply is level-triggered: it
//! renders the resource as stored *now*, so three quick PUTs coalesce into one apply of the
//! last state.
//!
//! Dependants, in the same target, are queued after a successful apply: a user whose key
//! appeared, changed or vanished queues its groups (how a membership naming a
//! not-yet-provisioned user waits for it) and the users whose references resolve to it, as
//! the store's reference index knows them (a report's `manager` follows its manager's create,
//! rename, move and delete); a nested group whose key appeared, changed or vanished queues
//! its parent groups, the group marked dirty in each. The settle queued the same in its own
//! transaction; this look after its commit catches a membership committed in between, and
//! wakes the process's workers. A flip of `active` queues the user's groups in the
//! mutation's own transaction (the store does it), not here: revocation must not wait for
//! the user's own apply.
//!
//! Must not answer HTTP, hold a std lock across `.await`, or spawn outside the daemon's tracker.

use super::{backoff, kind_of, members, Reconciler, TargetRuntime};
use crate::bookkeeping::Bookkeeping;
use crate::clock::now_ms;
use crate::config::target::RefBy;
use crate::mapping::MapError;
use crate::scim::resource::{render_user, GroupRef, ResourceType};
use crate::store::{
    BeforeSync, MembersSettle, OutboxItem, ReferenceLookup, Resolved, Snapshot, StoreError,
    StoredUser, TargetState,
};
use crate::targets::{
    Change, Desired, ErrorClass, Kind, Lease, Outcome, Prior, Target, TargetError, MEMBERS_FULL,
};
use crate::telemetry::{metrics, TargetLabels, TargetResultLabels};
use futures_util::{FutureExt, StreamExt};
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
    /// The target's configuration refuses what the resource asks for (permanent): a group
    /// with nested groups where `groups.nested = "refuse"`.
    #[error("{0}")]
    Refused(String),
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

/// The references of a user's render as the store takes them: `(by, value)`.
fn lookup_of(t: &TargetRuntime, holder: &str, json: &Value, record: bool) -> ReferenceLookup {
    ReferenceLookup {
        holder: holder.to_owned(),
        references: t
            .map
            .references(json)
            .into_iter()
            .map(|(by, value)| (store_by(by).to_owned(), value))
            .collect(),
        record,
    }
}

/// Desired state of a live user (`desired`, `active`) from its snapshot and its references as
/// resolved (`refs`, one per `t.map.references(json)`, in that order).
fn desired_user(
    t: &TargetRuntime,
    user: &StoredUser,
    json: &Value,
    refs: &[Resolved],
) -> Result<Desired, ApplyError> {
    let mut resolved: HashMap<(RefBy, String), String> = HashMap::new();
    for ((by, value), r) in t.map.references(json).into_iter().zip(refs) {
        if let Some(k) = &r.key {
            resolved.insert((by, value), k.clone());
        }
    }
    let entry = t
        .map
        .render_user(json, &|by, v| resolved.get(&(by, v.to_owned())).cloned())?;
    Ok(Desired {
        kind: Kind::User,
        entry,
        active: user.active,
        members: Vec::new(),
        password_hash: user.password_hash.clone(),
        role_groups: t.map.role_groups(json),
        member_changes: None,
    })
}

/// A user's SCIM representation as the mapping reads it (with its groups and `active`).
fn user_json(user: &StoredUser, groups: Option<&[GroupRef]>) -> Value {
    let mut json = render_user(&user.id, &user.data, &user.meta, groups, "");
    if let Some(o) = json.as_object_mut() {
        o.insert("active".into(), Value::Bool(user.active));
    }
    json
}

/// The rendered desired state of one resource in one target as an apply would render it now
/// (`None`: deleted, or groups not provisioned there). `verify` shows its values as "want".
pub(crate) async fn desired_of(
    rec: &Reconciler,
    t: &TargetRuntime,
    resource_type: ResourceType,
    id: &str,
) -> Result<Option<Desired>, ApplyError> {
    let store = &rec.inner.store;
    let mut snaps = store
        .load_for_apply(&t.name, vec![(resource_type, id.to_owned())])
        .await?;
    let snap = snaps.pop().unwrap_or_else(|| Ok(Snapshot::default()))?;
    match resource_type {
        ResourceType::User => {
            let Some(user) = snap.user.filter(|u| !u.deleted) else {
                return Ok(None);
            };
            let json = user_json(&user, Some(&snap.groups));
            let lookup = lookup_of(t, id, &json, false);
            let refs = match store.resolve_references(&t.name, vec![lookup]).await.pop() {
                Some(r) => r?,
                None => Vec::new(),
            };
            Ok(Some(desired_user(t, &user, &json, &refs)?))
        }
        ResourceType::Group if t.map.groups.is_none() => Ok(None),
        ResourceType::Group => {
            let state = snap.state;
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

/// A store result with a `KeyConflict` turned into [`ApplyError::Conflict`], its text naming
/// both resources (id and `userName` / `displayName`).
async fn conflict_or<T>(
    rec: &Reconciler,
    t: &TargetRuntime,
    id: &str,
    result: Result<T, StoreError>,
) -> Result<T, ApplyError> {
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

/// One resource to apply in a batch ([`apply_many`]).
pub(crate) struct Job {
    pub(crate) resource_type: ResourceType,
    pub(crate) id: String,
    /// The claim's lease (the target writes only while enough of it remains).
    pub(crate) lease: Lease,
    /// The claim itself (`None`: a dry run): the writes before the sync are made only while
    /// it is held.
    pub(crate) claim: Option<OutboxItem>,
    /// A group may take the O(change) membership path (`members::plan_group`: the workers'
    /// applies; never drift repair or a dry run).
    pub(crate) delta: bool,
    /// The span the row's sync runs in (its ids and request id in every log line).
    pub(crate) span: tracing::Span,
}

/// One row between its render and its sync.
pub(crate) struct Draft {
    version: i64,
    prior: Prior,
    /// `None`: deleted in the store (the entry is removed).
    desired: Option<Desired>,
    active: Option<bool>,
    /// Groups are not provisioned in this target: nothing to do, nothing to change.
    skip: bool,
    /// Groups: the membership plan (what the store records around the write).
    plan: Option<members::GroupPlan>,
}

/// What an apply writes before its target is touched: the intent before a first create
/// (`creating` = key, `since_ms` = `attempt_ms` = now, set in the prior bookkeeping, which a
/// `delete`-policy user must keep), so an entry left by an apply interrupted before its settle
/// is recognised as ours; the reservation of a rename's new key, so a rename onto a key
/// another resource holds or intends is a conflict before the target is touched (the store
/// refuses both with a conflict naming the other resource); and before a user last applied as
/// active is deactivated, the note `deactivating`, so that if the apply is interrupted after
/// the target wrote its deactivation but before the settle, a later reactivation knows those
/// values may be ours to undo (the settle replaces the whole `extra`, dropping the note). It
/// also asks which earlier intents (`extra.orphans`, see `store::outbox::keep_orphan`) another
/// resource now holds or intends: those are dropped before the target sees them (an entry
/// there may be that resource's, never ours to take along or remove).
fn before_sync_of(
    t: &TargetRuntime,
    job: &Job,
    draft: &Draft,
    dry_run: bool,
) -> Option<BeforeSync> {
    let (resource_type, id) = (job.resource_type, job.id.as_str());
    let prior = &draft.prior;
    let orphans: Vec<String> = prior
        .extra
        .as_ref()
        .map(|e| {
            e.orphans
                .iter()
                .filter_map(|o| o.creating.clone())
                .collect()
        })
        .unwrap_or_default();
    let mut out = BeforeSync {
        claim: job.claim.clone(),
        resource_type,
        resource_id: id.to_owned(),
        intent: None,
        reserve: None,
        deactivating: false,
        orphans,
    };
    if !dry_run {
        let planned = draft.desired.as_ref().and_then(|d| t.target.planned_key(d));
        let kind = kind_of(resource_type);
        match (&draft.desired, &prior.key, &planned) {
            (Some(_), None, Some(k)) => {
                let now = now_ms();
                let mut extra = prior.extra.clone().unwrap_or_default();
                extra.creating = Some(k.clone());
                extra.since_ms = Some(now);
                extra.attempt_ms = Some(now);
                out.intent = Some(TargetState {
                    target: t.name.clone(),
                    resource_type,
                    resource_id: id.to_owned(),
                    applied_version: 0,
                    target_key: None,
                    extra: Some(extra),
                    updated_ms: now,
                });
            }
            (Some(_), Some(old), Some(k))
                if t.target.key_norm(kind, old) != t.target.key_norm(kind, k) =>
            {
                out.reserve = Some(k.clone());
            }
            _ => {}
        }
        if let (Some(d), Some(_)) = (&draft.desired, &prior.key) {
            let extra = prior.extra.as_ref();
            let was_active = extra.and_then(|e| e.scim_active);
            let noted = extra.and_then(|e| e.deactivating);
            out.deactivating = d.kind == Kind::User
                && !d.active
                && was_active != Some(false)
                && noted != Some(true);
        }
    }
    let needed = out.intent.is_some()
        || out.reserve.is_some()
        || out.deactivating
        || !out.orphans.is_empty();
    needed.then_some(out)
}

/// Render one resource for one target and sync it (or, with `dry_run`, report what would
/// change). Does not settle anything. `lease` is the claim's (the target writes only while
/// enough of it remains).
pub(crate) async fn apply(
    rec: &Reconciler,
    t: &TargetRuntime,
    resource_type: ResourceType,
    id: &str,
    dry_run: bool,
    lease: Lease,
) -> Result<Applied, ApplyError> {
    let job = Job {
        resource_type,
        id: id.to_owned(),
        lease,
        claim: None,
        delta: false,
        span: tracing::Span::current(),
    };
    match apply_many(rec, t, vec![job], dry_run).await.pop() {
        Some(result) => result,
        None => Err(ApplyError::Store(StoreError::Other(
            "an apply of one row gave no result".into(),
        ))),
    }
}

/// Render many resources for one target and sync them, together ([`prepare`], then every
/// [`sync_one`] at once). Does not settle anything. One result per job, in order.
pub(crate) async fn apply_many(
    rec: &Reconciler,
    t: &TargetRuntime,
    jobs: Vec<Job>,
    dry_run: bool,
) -> Vec<Result<Applied, ApplyError>> {
    let prepared = prepare(rec, t, jobs, dry_run).await;
    let syncs = prepared.into_iter().map(|p| async move {
        match p {
            Prepared::Ready(job, draft) => sync_row(rec, t, job, *draft, dry_run).await,
            Prepared::Done(result) => *result,
            Prepared::Deferred(job, e) => conflict_or(rec, t, &job.id, Err(e)).await,
        }
    });
    futures_util::future::join_all(syncs).await
}

/// A row of a batch after [`prepare`].
pub(crate) enum Prepared {
    /// Rendered, its writes before the sync made: ready to sync.
    Ready(Job, Box<Draft>),
    /// Finished already (an error, or nothing to do).
    Done(Box<Result<Applied, ApplyError>>),
    /// Its key is held by another row of the same batch (a rename or delete that frees it
    /// settles first): prepared again once the rest of the batch settled. The conflict, if
    /// it is still one then.
    Deferred(Job, StoreError),
}

/// Render the resources of a batch and make the writes their syncs need first: one store
/// snapshot for the batch, their references resolved (and recorded, unless `dry_run`) in one
/// batch, the writes before the target is touched in one batch ([`before_sync_of`]). One
/// result per job, in order.
pub(crate) async fn prepare(
    rec: &Reconciler,
    t: &TargetRuntime,
    jobs: Vec<Job>,
    dry_run: bool,
) -> Vec<Prepared> {
    /// One row on its way: its snapshot, then its draft, or its result once it has one.
    struct Row {
        job: Job,
        snap: Snapshot,
        json: Option<Value>,
        lookup: Option<ReferenceLookup>,
        draft: Option<Draft>,
        write: Option<BeforeSync>,
        result: Option<Result<Applied, ApplyError>>,
        deferred: Option<StoreError>,
    }
    let store = &rec.inner.store;
    let keys: Vec<(ResourceType, String)> = jobs
        .iter()
        .map(|j| (j.resource_type, j.id.clone()))
        .collect();
    let snaps = match store.load_for_apply(&t.name, keys).await {
        Ok(s) => s,
        Err(e) => {
            let text = e.to_string();
            return jobs
                .iter()
                .map(|_| {
                    Prepared::Done(Box::new(Err(ApplyError::Store(StoreError::Unavailable(
                        text.clone(),
                    )))))
                })
                .collect();
        }
    };
    // References: recorded (unless a dry run) and committed before the referenced users' keys
    // are read: a referenced user whose key changes asks the index whom to re-queue inside its
    // settle, after locking its state row, which a new record share-locks
    // (`store::outbox::settle_applied`). So either this render reads the new key, or the record
    // committed first and the settle finds this user (issue 8 item 2); the worker looks again
    // after the settle (`enqueue_dependants`).
    let indexed = !dry_run && !t.map.reference_rules().is_empty();
    let mut rows: Vec<Row> = jobs
        .into_iter()
        .zip(snaps)
        .map(|(job, snap)| {
            let (snap, result) = match snap {
                Ok(s) => (s, None),
                Err(e) => (Snapshot::default(), Some(Err(ApplyError::Store(e)))),
            };
            let json = snap
                .user
                .as_ref()
                .filter(|u| !u.deleted)
                .map(|u| user_json(u, Some(&snap.groups)));
            let lookup = match (&json, job.resource_type) {
                _ if result.is_some() => None,
                (_, ResourceType::Group) => None,
                (Some(json), _) => Some(lookup_of(t, &job.id, json, indexed)),
                // A deleted user's references are cleared.
                (None, _) if indexed => Some(ReferenceLookup {
                    holder: job.id.clone(),
                    references: Vec::new(),
                    record: true,
                }),
                (None, _) => None,
            }
            .filter(|l| l.record || !l.references.is_empty());
            Row {
                job,
                snap,
                json,
                lookup,
                draft: None,
                write: None,
                result,
                deferred: None,
            }
        })
        .collect();
    let lookups: Vec<ReferenceLookup> = rows.iter().filter_map(|r| r.lookup.clone()).collect();
    let mut resolved = if lookups.is_empty() {
        Vec::new()
    } else {
        store.resolve_references(&t.name, lookups).await
    }
    .into_iter();
    for row in &mut rows {
        let refs = match row.lookup.as_ref().map(|_| resolved.next()) {
            Some(Some(Ok(r))) => r,
            Some(Some(Err(e))) => {
                row.result = Some(Err(ApplyError::Store(e)));
                continue;
            }
            Some(None) | None => Vec::new(),
        };
        if row.result.is_some() {
            continue;
        }
        let state = row.snap.state.take();
        let applied_version = state.as_ref().map_or(0, |s| s.applied_version);
        let prior = Prior {
            key: state.as_ref().and_then(|s| s.target_key.clone()),
            extra: state.and_then(|s| s.extra),
            lease: row.job.lease.clone(),
            members_ours: None,
        };
        let draft = match row.job.resource_type {
            ResourceType::User => {
                let version = row.snap.user.as_ref().map_or(0, |u| u.meta.version);
                let live = row.snap.user.as_ref().filter(|u| !u.deleted);
                match (live, &row.json) {
                    (Some(user), Some(json)) => desired_user(t, user, json, &refs).map(|d| Draft {
                        version,
                        prior,
                        active: Some(user.active),
                        desired: Some(d),
                        skip: false,
                        plan: None,
                    }),
                    _ => Ok(Draft {
                        version,
                        prior,
                        desired: None,
                        active: None,
                        skip: false,
                        plan: None,
                    }),
                }
            }
            ResourceType::Group if t.map.groups.is_none() => Ok(Draft {
                version: row.snap.group.as_ref().map_or(0, |g| g.meta.version),
                prior,
                desired: None,
                active: None,
                skip: true,
                plan: None,
            }),
            ResourceType::Group => {
                let delta = row.job.delta && !dry_run;
                members::plan_group(rec, t, &row.job.id, &prior, applied_version, delta, dry_run)
                    .await
                    .map(|plan| Draft {
                        version: plan.version,
                        prior: Prior {
                            members_ours: plan.ours.clone(),
                            ..prior
                        },
                        desired: plan.desired.clone(),
                        active: None,
                        skip: false,
                        plan: Some(plan),
                    })
            }
        };
        match draft {
            Ok(d) => {
                if !d.skip {
                    row.write = before_sync_of(t, &row.job, &d, dry_run);
                }
                row.draft = Some(d);
            }
            Err(e) => row.result = Some(Err(e)),
        }
    }
    // The writes before the targets are touched, for the whole batch.
    let writes: Vec<BeforeSync> = rows.iter().filter_map(|r| r.write.clone()).collect();
    if !writes.is_empty() {
        let batch_ids: HashSet<String> = rows.iter().map(|r| r.job.id.clone()).collect();
        let mut wrote = store.before_sync(&t.name, writes).await.into_iter();
        for row in &mut rows {
            let Some(w) = row.write.take() else {
                continue;
            };
            let result = wrote.next().unwrap_or_else(|| {
                Err(StoreError::Other(
                    "a write of the batch gave no result".into(),
                ))
            });
            let Some(draft) = row.draft.as_mut() else {
                continue;
            };
            match result {
                Ok(done) if done.lost => {
                    row.result = Some(Err(ApplyError::Target(TargetError {
                        class: ErrorClass::Transient,
                        code: Some("lease".into()),
                        message: "the claim was lost before the apply wrote anything".into(),
                    })));
                    row.draft = None;
                }
                Ok(done) => {
                    if w.intent.is_some() {
                        // The intent as the store kept it (an earlier one for the same key
                        // keeps its `since_ms`).
                        draft.prior.key = done.state.as_ref().and_then(|s| s.target_key.clone());
                        draft.prior.extra = done.state.and_then(|s| s.extra);
                    }
                    if let Some(extra) = draft.prior.extra.as_mut() {
                        extra.orphans.retain(|o| {
                            o.creating.as_ref().is_some_and(|k| !done.held.contains(k))
                        });
                    }
                    if w.deactivating {
                        draft
                            .prior
                            .extra
                            .get_or_insert_with(Bookkeeping::default)
                            .deactivating = Some(true);
                    }
                }
                Err(StoreError::KeyConflict {
                    target,
                    key,
                    holder: Some(holder),
                }) if holder != row.job.id && batch_ids.contains(&holder) => {
                    row.deferred = Some(StoreError::KeyConflict {
                        target,
                        key,
                        holder: Some(holder),
                    });
                    row.draft = None;
                }
                Err(e) => {
                    row.result = Some(conflict_or(rec, t, &row.job.id, Err(e)).await);
                    row.draft = None;
                }
            }
        }
    }
    rows.into_iter()
        .map(|row| match (row.result, row.deferred, row.draft) {
            (Some(result), _, _) => Prepared::Done(Box::new(result)),
            (None, Some(e), _) => Prepared::Deferred(row.job, e),
            (None, None, Some(draft)) if draft.skip => {
                let outcome = Outcome {
                    key: draft.prior.key.clone(),
                    extra: draft.prior.extra.clone(),
                    ..Outcome::default()
                };
                Prepared::Done(Box::new(Ok(Applied {
                    version: draft.version,
                    prior: draft.prior,
                    outcome,
                    active: None,
                    members: None,
                    members_record: None,
                })))
            }
            (None, None, Some(draft)) => Prepared::Ready(row.job, Box::new(draft)),
            (None, None, None) => Prepared::Done(Box::new(Err(ApplyError::Store(
                StoreError::Other("a row of the batch gave no result".into()),
            )))),
        })
        .collect()
}

/// Sync one prepared row with its target (in the row's span).
async fn sync_one(
    rec: &Reconciler,
    t: &TargetRuntime,
    job: &Job,
    draft: Draft,
    dry_run: bool,
) -> Result<Applied, ApplyError> {
    if let (Some(plan), false) = (&draft.plan, dry_run) {
        // The values about to be written are ours before they are written; under the same
        // fence as the target's writes (an apply that lost its claim records nothing).
        draft.prior.lease.check(t.target.timeout())?;
        members::record(rec, t, &job.id, plan).await?;
    }
    let sync = async {
        if !dry_run {
            rec.pause_point(PAUSE_BEFORE_SYNC).await;
        }
        let started = Instant::now();
        let kind = kind_of(job.resource_type);
        let change = match &draft.desired {
            Some(d) => Change::Upsert(d),
            // What the target recorded it made wins (that is the entry to remove); the store's
            // type only when the bookkeeping does not say (a row written before `kind` was
            // kept).
            None => Change::Remove {
                kind: draft
                    .prior
                    .extra
                    .as_ref()
                    .and_then(|b| b.kind)
                    .unwrap_or(kind),
            },
        };
        let result = t.target.sync(change, &draft.prior, dry_run).await;
        metrics()
            .target_op_duration
            .get_or_create(&TargetLabels {
                target: t.name.clone(),
            })
            .observe(started.elapsed().as_secs_f64());
        result
    };
    let outcome = sync.instrument(job.span.clone()).await?;
    let members_record = draft
        .plan
        .as_ref()
        .filter(|p| p.desired.is_some())
        .map(|_| t.map.members_fingerprint().to_owned());
    Ok(Applied {
        version: draft.version,
        prior: draft.prior,
        outcome,
        active: draft.active,
        members: draft.plan.map(|p| p.settle),
        members_record,
    })
}

/// [`sync_one`]; a group the target cannot give its changed member values alone
/// ([`MEMBERS_FULL`]) is prepared again with its whole membership and synced in the same call.
async fn sync_row(
    rec: &Reconciler,
    t: &TargetRuntime,
    job: Job,
    draft: Draft,
    dry_run: bool,
) -> Result<Applied, ApplyError> {
    match sync_one(rec, t, &job, draft, dry_run).await {
        Err(ApplyError::Target(e)) if job.delta && e.code.as_deref() == Some(MEMBERS_FULL) => {
            tracing::debug!(target = %t.name, resource_id = %job.id, reason = %e.message, "Applying the group's whole membership.");
            let whole = Job {
                delta: false,
                ..job
            };
            match prepare(rec, t, vec![whole], dry_run).await.pop() {
                Some(Prepared::Ready(job, draft)) => sync_one(rec, t, &job, *draft, dry_run).await,
                Some(Prepared::Done(result)) => *result,
                Some(Prepared::Deferred(job, e)) => conflict_or(rec, t, &job.id, Err(e)).await,
                None => Err(ApplyError::Store(StoreError::Other(
                    "an apply of one row gave no result".into(),
                ))),
            }
        }
        other => other,
    }
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

/// What became of one claimed row ([`process_batch`]).
pub(crate) enum Processed {
    /// Applied and settled.
    Applied(Box<Applied>),
    /// Not applied: the failure was recorded (a retry, a dead letter) or, for a store error or
    /// a settle that could not be recorded, the row re-applies when its lease expires.
    Failed(ApplyError),
    /// The claim was lost, or its lease ran short, before the apply finished: the row went
    /// back to the outbox (a worker holding it now applies the current state).
    Lost(String),
}

/// The claim's lease in ms.
fn lease_ms(rec: &Reconciler) -> i64 {
    i64::try_from(rec.inner.settings.lease.as_millis()).unwrap_or(i64::MAX)
}

/// Apply and settle rows claimed together at `claimed_ms` (with the configured lease), as one
/// batch: [`prepare`] them together, sync every row at once, and settle the rows as their syncs
/// finish (those finished by then together, in one settle batch: a slow row does not hold the
/// others' settles back), then each failure recorded and each success's dependants queued.
/// A row whose key another row of the batch holds (a delete or rename freeing it) is prepared
/// again once the others settled. The claim started every row's lease (they are applied at
/// once); a heartbeat renews the rows not settled yet every lease/3, and a row whose claim was
/// lost (another worker took it: the epoch moved) writes nothing more (its [`Lease`] is set to
/// the past); the target writes only while at least its operation timeout remains
/// (`Lease::check`). `delta`: groups may take the O(change) membership path (the workers;
/// drift repair reads and diffs the whole membership). The heartbeat is stopped, and a renewal in flight awaited, before this
/// returns. One result per row, in order.
pub(crate) async fn process_batch(
    rec: &Reconciler,
    t: &TargetRuntime,
    items: &[OutboxItem],
    claimed_ms: i64,
    delta: bool,
) -> Vec<Processed> {
    let store = &rec.inner.store;
    let lease = lease_ms(rec);
    let fence = store.fence();

    // The local lease ends a margin before the one the store recorded (and the others
    // compare): the offset to the database's clock is measured with an error
    // (`store::LEASE_MARGIN_MS`), as the instance fence ends a margin before its bound.
    let local_end = |from_ms: i64| {
        from_ms
            .saturating_add(lease)
            .saturating_sub(crate::store::LEASE_MARGIN_MS)
    };
    let untils: Vec<Arc<AtomicI64>> = items
        .iter()
        .map(|_| Arc::new(AtomicI64::new(local_end(claimed_ms))))
        .collect();
    // Rows settled (or given back): the heartbeat leaves them alone.
    let finished: std::sync::Mutex<HashSet<usize>> = std::sync::Mutex::new(HashSet::new());
    let stop = CancellationToken::new();
    let heartbeat = async {
        let period = (rec.inner.settings.lease / 3).max(std::time::Duration::from_millis(10));
        let mut lost: HashSet<usize> = HashSet::new();
        loop {
            tokio::select! {
                () = tokio::time::sleep(period) => {}
                () = stop.cancelled() => return,
            }
            if rec.pause_holding() {
                // A paused apply stands for a stopped process: its heartbeat stops too.
                continue;
            }
            let live: Vec<(usize, &OutboxItem)> = {
                let done = finished
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                items
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| !done.contains(i) && !lost.contains(i))
                    .collect()
            };
            if live.is_empty() {
                continue;
            }
            let now = now_ms();
            let batch: Vec<OutboxItem> = live.iter().map(|(_, item)| (*item).clone()).collect();
            let renewed = store.renew_claims(batch, now, lease).await;
            for ((i, item), result) in live.into_iter().zip(renewed) {
                let Some(until) = untils.get(i) else {
                    continue;
                };
                match result {
                    Ok(true) => until.store(local_end(now), Ordering::SeqCst),
                    Ok(false) => {
                        let settled = finished
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .contains(&i);
                        if !settled {
                            tracing::warn!(target = %t.name, resource_id = %item.resource_id, outbox_id = item.id, "Claim lost while applying; this apply writes nothing more.");
                            until.store(i64::MIN, Ordering::SeqCst);
                        }
                        lost.insert(i);
                    }
                    // The store is down: the lease runs out on its own and writes stop.
                    Err(e) => {
                        tracing::warn!(target = %t.name, resource_id = %item.resource_id, error = %e, "Cannot renew the claim.");
                    }
                }
            }
        }
    };
    let job_of = |i: usize, item: &OutboxItem| Job {
        resource_type: item.resource_type,
        id: item.resource_id.clone(),
        lease: untils.get(i).map_or_else(Lease::default, |u| {
            Lease::until(u.clone()).fenced(
                fence.alive_until_ms.clone(),
                fence.incarnation.clone(),
                item.incarnation,
            )
        }),
        claim: Some(item.clone()),
        delta,
        span: tracing::debug_span!(
            "apply",
            resource_id = %item.resource_id,
            target = %t.name,
            attempt = item.attempts.saturating_add(1),
            request_id = item.request_id.as_deref().unwrap_or(""),
        ),
    };
    let work = async {
        let mut out: Vec<Option<Processed>> =
            std::iter::repeat_with(|| None).take(items.len()).collect();
        let mut round: Vec<usize> = (0..items.len()).collect();
        for second in [false, true] {
            let jobs: Vec<Job> = round
                .iter()
                .filter_map(|&i| items.get(i).map(|item| job_of(i, item)))
                .collect();
            let prepared = prepare(rec, t, jobs, false).await;
            let mut running = futures_util::stream::FuturesUnordered::new();
            let mut ready: Vec<(usize, Result<Applied, ApplyError>)> = Vec::new();
            let mut deferred = Vec::new();
            for (&i, p) in round.iter().zip(prepared) {
                match p {
                    Prepared::Ready(job, draft) => {
                        running.push(async move { (i, sync_row(rec, t, job, *draft, false).await) })
                    }
                    Prepared::Done(result) => ready.push((i, *result)),
                    Prepared::Deferred(_, e) if second => {
                        ready.push((
                            i,
                            conflict_or(
                                rec,
                                t,
                                items.get(i).map_or("", |x| x.resource_id.as_str()),
                                Err(e),
                            )
                            .await,
                        ));
                    }
                    Prepared::Deferred(..) => deferred.push(i),
                }
            }
            loop {
                if ready.is_empty() {
                    match running.next().await {
                        Some(done) => ready.push(done),
                        None => break,
                    }
                }
                // Whatever else finished meanwhile goes in the same settle.
                while let Some(Some(done)) = running.next().now_or_never() {
                    ready.push(done);
                }
                let group = std::mem::take(&mut ready);
                for (i, processed) in settle_group(rec, t, items, group).await {
                    finished
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .insert(i);
                    if let Some(slot) = out.get_mut(i) {
                        *slot = Some(processed);
                    }
                }
            }
            if deferred.is_empty() {
                break;
            }
            round = deferred;
        }
        stop.cancel();
        out
    };
    let ((), out) = tokio::join!(heartbeat, work);
    out.into_iter()
        .map(|p| {
            p.unwrap_or_else(|| {
                Processed::Failed(ApplyError::Store(StoreError::Other(
                    "a row of the batch gave no result".into(),
                )))
            })
        })
        .collect()
}

/// Settle the rows of a batch that finished (the successes in one settle batch), then record
/// each failure and queue each success's dependants.
async fn settle_group(
    rec: &Reconciler,
    t: &TargetRuntime,
    items: &[OutboxItem],
    group: Vec<(usize, Result<Applied, ApplyError>)>,
) -> Vec<(usize, Processed)> {
    let store = &rec.inner.store;
    let now = now_ms();
    // The settle queues the dependants of a key that appeared, changed or vanished in its own
    // transaction (`store::outbox::settle_applied`): a crash after its commit cannot lose
    // them, and a group applied before it (reading no key) runs again. The reference index it
    // looks holders up in is filled first; the queueing after the settle only repeats it
    // (idempotent, coalescing).
    let any_user = group.iter().any(|(i, r)| {
        r.is_ok()
            && items
                .get(*i)
                .is_some_and(|x| x.resource_type == ResourceType::User)
    });
    if any_user && !t.map.reference_rules().is_empty() {
        if let Err(e) = ensure_reference_index(rec, t).await {
            tracing::error!(target = %t.name, error = %e, "Cannot fill the reference index; drift repair will fix references.");
        }
    }
    // A group's record of our member values first, fenced by its claim (`members::settle`):
    // a row whose record cannot be settled is not settled either (it re-applies when its
    // lease expires).
    let mut group = group;
    for (i, result) in &mut group {
        let (Ok(done), Some(item)) = (&*result, items.get(*i)) else {
            continue;
        };
        if !members::settle(rec, t, item, done.members.as_ref()).await {
            *result = Err(ApplyError::Store(StoreError::Unavailable(
                "the group's record of its member values could not be settled".into(),
            )));
        }
    }
    let settles: Vec<(OutboxItem, TargetState)> = group
        .iter()
        .filter_map(|(i, result)| {
            let done = result.as_ref().ok()?;
            let item = items.get(*i)?;
            Some((
                item.clone(),
                TargetState {
                    target: t.name.clone(),
                    resource_type: item.resource_type,
                    resource_id: item.resource_id.clone(),
                    applied_version: done.version,
                    target_key: done.outcome.key.clone(),
                    extra: done.extra_to_store(),
                    updated_ms: now,
                },
            ))
        })
        .collect();
    // Before the settle: the next apply of a resource (claimed after it) writes its own
    // outcome after this one (`crate::health`).
    for (item, _) in &settles {
        rec.inner.health.applied(&t.name, &item.resource_id);
    }
    let mut settled = if settles.is_empty() {
        Vec::new()
    } else {
        store.settle_applied_many(settles, now).await
    }
    .into_iter();
    let mut out = Vec::with_capacity(group.len());
    for (i, result) in group {
        let Some(item) = items.get(i) else {
            continue;
        };
        let settle = result.is_ok().then(|| settled.next()).flatten();
        let prune = item.resource_type == ResourceType::Group
            && matches!(settle, Some(Ok(())))
            && result.is_ok();
        let processed = finish(rec, t, item, result, settle, now)
            .instrument(
                tracing::debug_span!("settle", resource_id = %item.resource_id, target = %t.name),
            )
            .await;
        if prune {
            members::prune(rec, t, &item.resource_id).await;
        }
        out.push((i, processed));
    }
    out
}

/// How often, and how many times, [`give_back`] tries a store that does not answer.
const GIVE_BACK_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
const GIVE_BACK_TRIES: u32 = 30;

/// Give a claimed row back to the outbox, due now, after the store failed under it (a
/// PostgreSQL restart or failover): tried every second while the store does not answer, so
/// the row runs again once it is back instead of waiting out its lease. The claim's epoch is
/// checked (`settle_failed`): a row another worker took meanwhile is left alone. After the
/// last try the lease expires on its own.
async fn give_back(rec: &Reconciler, t: &TargetRuntime, item: &OutboxItem, why: &str) {
    for _ in 0..GIVE_BACK_TRIES {
        let now = now_ms();
        match rec
            .inner
            .store
            .settle_failed(item, why, now, false, now)
            .await
        {
            Ok(()) => return,
            Err(StoreError::Unavailable(_)) => {
                tokio::time::sleep(GIVE_BACK_EVERY).await;
            }
            Err(e) => {
                tracing::error!(target = %t.name, resource_id = %item.resource_id, outbox_id = item.id, error = %e, "Cannot give the row back; it re-applies when the lease expires.");
                return;
            }
        }
    }
}

/// What follows one row's apply and settle: the failure recorded, or the success counted and
/// its dependants queued.
async fn finish(
    rec: &Reconciler,
    t: &TargetRuntime,
    item: &OutboxItem,
    result: Result<Applied, ApplyError>,
    settle: Option<Result<(), StoreError>>,
    now: i64,
) -> Processed {
    match result {
        Ok(done) => {
            let settled =
                settle.unwrap_or_else(|| Err(StoreError::Other("the row was not settled".into())));
            let settled = conflict_or(rec, t, &item.resource_id, settled).await;
            if let Err(ApplyError::Conflict(text)) = &settled {
                fail(rec, t, item, ErrorClass::Permanent, text, now).await;
                return Processed::Failed(ApplyError::Conflict(text.clone()));
            }
            if let Err(e) = settled {
                tracing::error!(target = %t.name, resource_id = %item.resource_id, outbox_id = item.id, error = %e, "Applied, but cannot record it in the store; the row goes back to the outbox once the store answers (it re-applies).");
                give_back(rec, t, item, &e.to_string()).await;
                return Processed::Failed(e);
            }
            count(&t.name, "applied");
            tracing::debug!(target = %t.name, resource_id = %item.resource_id, changes = done.outcome.changes.len(), "Applied.");
            enqueue_dependants(rec, t, item.resource_type, &item.resource_id, &done).await;
            Processed::Applied(Box::new(done))
        }
        Err(ApplyError::Store(e)) => {
            tracing::error!(target = %t.name, resource_id = %item.resource_id, outbox_id = item.id, error = %e, "Cannot read the resource from the store; the row goes back to the outbox once the store answers.");
            give_back(rec, t, item, &e.to_string()).await;
            Processed::Failed(ApplyError::Store(e))
        }
        Err(ApplyError::Target(e)) if e.code.as_deref() == Some("lease") => {
            // Not the target's fault: the claim ran short (a stalled process, a store that
            // could not renew it) or was lost. Give the row back, due now; a settle of a
            // lost claim changes nothing.
            tracing::warn!(target = %t.name, resource_id = %item.resource_id, outbox_id = item.id, "The claim's lease ran short during the apply; nothing more was written and the row goes back to the outbox.");
            if let Err(e) = rec
                .inner
                .store
                .settle_failed(item, &e.message, now, false, now)
                .await
            {
                tracing::error!(target = %t.name, resource_id = %item.resource_id, outbox_id = item.id, error = %e, "Cannot give the row back; it re-applies when the lease expires.");
            }
            Processed::Lost(e.message)
        }
        Err(e) => {
            let class = match &e {
                ApplyError::Target(te) => te.class,
                ApplyError::Map(_)
                | ApplyError::Store(_)
                | ApplyError::Conflict(_)
                | ApplyError::Refused(_) => ErrorClass::Permanent,
            };
            // A write that timed out on our side may still run in the server: the next
            // attempt waits at least the timeout, so it cannot be overtaken by it.
            let timed_out =
                matches!(&e, ApplyError::Target(te) if te.code.as_deref() == Some("timeout"));
            let not_before = if timed_out {
                now.saturating_add(
                    i64::try_from(t.target.timeout().as_millis()).unwrap_or(i64::MAX),
                )
            } else {
                now
            };
            fail_not_before(rec, t, item, class, &e.text(), now, not_before).await;
            Processed::Failed(e)
        }
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
    // Before the settle, as for a success (`crate::health`).
    match class {
        ErrorClass::Permanent => {
            rec.inner
                .health
                .refused(&t.name, &item.resource_id, text, now, item.claim_epoch);
        }
        ErrorClass::Transient => rec.inner.health.contact(&t.name, Err(text)),
    }
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
        // The store counts it from now on (`/readyz` adds its dead letters).
        rec.inner
            .health
            .dead(&t.name, &item.resource_id, item.claim_epoch);
        count(&t.name, "dead");
        metrics().dead_letters.get_or_create(&labels).inc();
        tracing::error!(target = %t.name, resource_type, resource_id = %item.resource_id, outbox_id = item.id, attempt, error = %text, "Apply failed permanently; the change is now a dead letter (see `scim-sync dead-letters list`).");
    } else {
        count(&t.name, "failed");
        metrics().retries.get_or_create(&labels).inc();
        if class == ErrorClass::Transient {
            tracing::warn!(target = %t.name, resource_type, resource_id = %item.resource_id, outbox_id = item.id, attempt, retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX), error = %text, "Apply failed; will retry.");
        } else {
            tracing::warn!(target = %t.name, resource_type, resource_id = %item.resource_id, outbox_id = item.id, attempt, max_attempts = settings.max_attempts, error = %text, "Apply refused by the target; will retry before making it a dead letter.");
        }
    }
}

/// Queue what depends on a resource just applied (see the module docs), after its settle
/// (which queued the same in its own transaction, as it read them), and wake this process's
/// workers when anything was queued (the settle notified the other instances' at its commit):
/// they would sleep up to `poll_interval` otherwise.
pub(crate) async fn enqueue_dependants(
    rec: &Reconciler,
    t: &TargetRuntime,
    resource_type: ResourceType,
    id: &str,
    done: &Applied,
) {
    let store = &rec.inner.store;
    let now = now_ms();
    let key_changed = done.prior.key != done.outcome.key;
    let uid_of = |e: Option<&Bookkeeping>| e.and_then(|e| e.uid.clone());
    let uid_changed = resource_type == ResourceType::User
        && done.outcome.key.is_some()
        && uid_of(done.prior.extra.as_ref()) != uid_of(done.outcome.extra.as_ref());
    // What the settle queued: wake for it (and for what is queued below).
    let mut wake = key_changed || uid_changed;
    // A flip of `active` is not looked at here: the mutation that flipped it queued the
    // user's groups in its own transaction (`store::resources::enqueue_groups_of`).
    // The groups holding this member's value (a user's key or `uid`, a nested group's key):
    // looked up again after the settle's commit, with the member marked dirty in each
    // (`Store::requeue_groups_of_member`): a membership committed between the settle's read
    // of them and its commit, whose group applied with the old value, is applied again.
    if t.map.groups.is_some() && (key_changed || uid_changed) {
        match store
            .requeue_groups_of_member(&t.name, resource_type, id, now)
            .await
        {
            Ok(n) => wake |= n > 0,
            Err(e) => {
                tracing::error!(target = %t.name, resource_id = %id, error = %e, "Cannot queue the groups this member is in; drift repair will fix their membership.");
            }
        }
    }
    // Whose references resolve (or resolved, at their last render) to this user: re-queued
    // when its key appeared (created), changed (renamed, moved) or vanished (deleted).
    if resource_type == ResourceType::User && key_changed && !t.map.reference_rules().is_empty() {
        match referencing_users(rec, t, id).await {
            Ok(holders) if !holders.is_empty() => {
                match store
                    .enqueue_many(&t.name, ResourceType::User, &holders, "reference", now)
                    .await
                {
                    Ok(n) => wake |= n > 0,
                    Err(e) => {
                        tracing::error!(target = %t.name, resource_id = %id, error = %e, "Cannot queue the users referencing this one; drift repair will fix their references.");
                    }
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!(target = %t.name, resource_id = %id, error = %e, "Cannot find the users referencing this one; drift repair will fix their references.");
            }
        }
    }
    if wake {
        rec.inner.wake.notify_waiters();
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
                let lookup = lookup_of(t, &holder, &json, false);
                let names = lookup.references.clone();
                let refs = match store.resolve_references(&t.name, vec![lookup]).await.pop() {
                    Some(r) => r?,
                    None => Vec::new(),
                };
                let index = names
                    .into_iter()
                    .zip(refs)
                    .map(|((by, value), r)| (by, value, r.id))
                    .collect();
                store.backfill_references(&t.name, &holder, index).await?;
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

/// Whether this instance's fence leaves room for a write to `t` (at least the target's
/// operation timeout, what its `Lease::check` asks before each write): an instance whose
/// heartbeat is late (or that was taken over and has not registered again) could write
/// nothing under new claims, and claiming would only take the rows from the instances that
/// can, every poll, for nothing. It claims again once a heartbeat moved the fence (issue 10,
/// second reader; test `faults::multi::an_instance_whose_heartbeat_is_late_claims_nothing`).
/// Drift repair checks it once per chunk (`drift`). Unregistered (SQLite, the CLI): always.
pub(crate) fn fence_allows_claims(rec: &Reconciler, t: &TargetRuntime) -> bool {
    let fence = rec.inner.store.fence();
    if fence.incarnation.load(Ordering::SeqCst) < 0 {
        return false;
    }
    let left = fence
        .alive_until_ms
        .load(Ordering::SeqCst)
        .saturating_sub(now_ms());
    left >= i64::try_from(t.target.timeout().as_millis()).unwrap_or(i64::MAX)
}

/// Claim one batch and process it; returns how many rows were claimed.
async fn turn(rec: &Reconciler, t: &TargetRuntime) -> usize {
    if !fence_allows_claims(rec, t) {
        return 0;
    }
    if !fill_key_norms(rec, t).await {
        return 0;
    }
    let lease = lease_ms(rec);
    let claimed_ms = now_ms();
    let items = match rec
        .inner
        .store
        .claim(&t.name, claimed_ms, lease, BATCH)
        .await
    {
        Ok(items) => items,
        Err(e) => {
            tracing::error!(target = %t.name, error = %e, "Cannot claim outbox rows; the store is unavailable.");
            return 0;
        }
    };
    if !items.is_empty() {
        process_batch(rec, t, &items, claimed_ms, true).await;
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
        if !fence_allows_claims(rec, &t) {
            break;
        }
        let claimed_ms = now_ms();
        let items = match store.claim(&t.name, claimed_ms, lease, BATCH).await {
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
        for (item, done) in items
            .iter()
            .zip(process_batch(rec, &t, &items, claimed_ms, true).await)
        {
            if matches!(done, Processed::Applied(_)) {
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
