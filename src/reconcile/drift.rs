//! Full reconciliation (drift repair): every managed resource of a target — every resource with
//! a `target_state`, plus every live resource without one — is rendered and synced against the
//! live target, users first (so group members and references resolve). With `dry_run` nothing
//! changes and the report carries each resource's planned changes.
//!
//! Drift repair takes the same claims as the workers (it may run in the CLI while the daemon's
//! workers run): each resource's outbox row is claimed first (a `resync` row is made when
//! there is none), the apply runs under that claim's lease and heartbeat, and the result is
//! settled as the claim's owner. So a resource is never repaired while a worker applies it,
//! and the settle records the key and bookkeeping even at an equal version (a DN template
//! change moves entries without a new SCIM version; a settle that kept the old key rewrote
//! groups with the old DNs and reported the same users on every run). A resource a worker
//! holds is skipped: the worker applies its current state. A dry run claims nothing.

use super::worker::{apply, apply_claimed, enqueue_dependants, fail, ApplyError};
use super::{Reconciler, TargetRuntime};
use crate::http::server::now_ms;
use crate::scim::resource::ResourceType;
use crate::store::{OutboxItem, StoreError, TargetState};
use crate::targets::{ErrorClass, Lease};
use std::collections::HashSet;
use std::sync::Arc;

/// One resource that changed (or would change), or failed, in a full reconciliation.
#[derive(Debug, Clone, PartialEq)]
pub struct FullItem {
    /// The target.
    pub target: String,
    /// User or Group.
    pub resource_type: ResourceType,
    /// The SCIM id (empty for a failure to list the target's resources).
    pub resource_id: String,
    /// The entry's key after the sync (or the planned key in a dry run).
    pub key: Option<String>,
    /// The changes made or planned, LDIF-like, one per line.
    pub changes: Vec<String>,
    /// The failure, when the resource could not be synced.
    pub error: Option<String>,
}

/// The summary of a full reconciliation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FullReport {
    /// Resources checked (synced or compared).
    pub checked: u64,
    /// Resources that changed (or, in a dry run, would change).
    pub changed: u64,
    /// Resources that could not be synced.
    pub failed: u64,
    /// The changed and failed resources, in the order they were checked.
    pub items: Vec<FullItem>,
}

/// Every managed resource of one target: users then groups, each in id order of the
/// recorded states followed by the live resources without one.
async fn managed(
    rec: &Reconciler,
    t: &TargetRuntime,
) -> Result<Vec<(ResourceType, String)>, StoreError> {
    let store = &rec.inner.store;
    let states = store.target_states(&t.name).await?;
    let mut out = Vec::new();
    for ty in [ResourceType::User, ResourceType::Group] {
        if ty == ResourceType::Group && t.map.groups.is_none() {
            continue;
        }
        let mut seen = HashSet::new();
        for s in states.iter().filter(|s| s.resource_type == ty) {
            if seen.insert(s.resource_id.clone()) {
                out.push((ty, s.resource_id.clone()));
            }
        }
        for id in store.all_resource_ids(ty, false).await? {
            if seen.insert(id.clone()) {
                out.push((ty, id));
            }
        }
    }
    Ok(out)
}

/// See [`Reconciler::reconcile_full`].
pub(crate) async fn reconcile_full<F: Fn(u64, u64)>(
    rec: &Reconciler,
    target: Option<&str>,
    dry_run: bool,
    progress: &F,
) -> FullReport {
    let mut report = FullReport::default();
    let targets: Vec<Arc<TargetRuntime>> = rec
        .inner
        .targets
        .iter()
        .filter(|t| target.is_none_or(|n| n == t.name))
        .cloned()
        .collect();
    let mut work = Vec::new();
    for t in &targets {
        match managed(rec, t).await {
            Ok(list) => work.extend(list.into_iter().map(|(ty, id)| (t.clone(), ty, id))),
            Err(e) => {
                report.failed += 1;
                report.items.push(FullItem {
                    target: t.name.clone(),
                    resource_type: ResourceType::User,
                    resource_id: String::new(),
                    key: None,
                    changes: Vec::new(),
                    error: Some(format!("cannot list managed resources: {e}")),
                });
            }
        }
    }
    let total = u64::try_from(work.len()).unwrap_or(u64::MAX);
    progress(0, total);
    for (done_count, (t, ty, id)) in work.into_iter().enumerate() {
        let mut claimed = None;
        let result = if dry_run {
            // A worker may be applying the same resource at this moment (its entry already
            // made, its state not yet recorded): one more try reads the state it recorded.
            Some(
                match apply(rec, &t, ty, &id, true, Lease::default()).await {
                    Err(_) => apply(rec, &t, ty, &id, true, Lease::default()).await,
                    ok => ok,
                },
            )
        } else {
            let lease = i64::try_from(rec.inner.settings.lease.as_millis()).unwrap_or(i64::MAX);
            match rec
                .inner
                .store
                .claim_resource(&t.name, ty, &id, now_ms(), lease)
                .await
            {
                Ok(Some(item)) => {
                    // Drift repair reads and diffs the whole membership (never the change log).
                    let result = apply_claimed(rec, &t, &item, false).await;
                    claimed = Some(item);
                    result
                }
                // A worker holds the row: it applies the current state.
                Ok(None) => None,
                Err(e) => Some(Err(ApplyError::Store(e))),
            }
        };
        match result {
            // Skipped: a worker holds (or took) the claim and applies the current state.
            None => report.checked += 1,
            Some(Ok(done)) => {
                report.checked += 1;
                let moved = done.prior.key != done.outcome.key;
                if let Some(item) = &claimed {
                    settle(rec, &t, item, &done).await;
                }
                if !done.outcome.changes.is_empty() || moved {
                    report.changed += 1;
                    report.items.push(FullItem {
                        target: t.name.clone(),
                        resource_type: ty,
                        resource_id: id.clone(),
                        key: done.outcome.key.clone(),
                        changes: done.outcome.changes.clone(),
                        error: None,
                    });
                    if !dry_run {
                        enqueue_dependants(rec, &t, ty, &id, &done).await;
                    }
                }
            }
            Some(Err(e)) => {
                report.failed += 1;
                if let Some(item) = &claimed {
                    let class = match &e {
                        ApplyError::Target(te) => te.class,
                        ApplyError::Map(_) | ApplyError::Store(_) | ApplyError::Conflict(_) => {
                            ErrorClass::Permanent
                        }
                    };
                    if !matches!(e, ApplyError::Store(_)) {
                        fail(rec, &t, item, class, &e.text(), now_ms()).await;
                    }
                }
                tracing::warn!(target = %t.name, resource_type = ty.as_str(), resource_id = %id, error = %e.text(), "Drift repair could not sync a resource.");
                report.items.push(FullItem {
                    target: t.name.clone(),
                    resource_type: ty,
                    resource_id: id.clone(),
                    key: None,
                    changes: Vec::new(),
                    error: Some(e.text()),
                });
            }
        }
        progress(
            u64::try_from(done_count)
                .unwrap_or(u64::MAX)
                .saturating_add(1),
            total,
        );
    }
    if !dry_run {
        tracing::info!(
            checked = report.checked,
            changed = report.changed,
            failed = report.failed,
            "Full reconciliation finished."
        );
    }
    report
}

/// Settle a repaired resource as the owner of its claim (the worker's settle: records the key
/// and bookkeeping even at an equal version, keeps the row when it was queued again).
async fn settle(
    rec: &Reconciler,
    t: &TargetRuntime,
    item: &OutboxItem,
    done: &super::worker::Applied,
) {
    if !super::members::settle(rec, t, item, done.members.as_ref()).await {
        return;
    }
    let now = now_ms();
    let state = TargetState {
        target: t.name.clone(),
        resource_type: item.resource_type,
        resource_id: item.resource_id.clone(),
        applied_version: done.version,
        target_key: done.outcome.key.clone(),
        extra: done.extra_to_store(),
        updated_ms: now,
    };
    if let Err(e) = rec.inner.store.settle_applied(item, state, now).await {
        tracing::error!(target = %t.name, resource_id = %item.resource_id, error = %e, "Repaired, but cannot record it in the store; it re-applies when the lease expires.");
        return;
    }
    if item.resource_type == crate::scim::resource::ResourceType::Group {
        super::members::prune(rec, t, &item.resource_id).await;
    }
}
