//! Full reconciliation (drift repair): every managed resource of a target — every resource with
//! a `target_state`, plus every live resource without one — is rendered and synced against the
//! live target, users first (so group members and references resolve). With `dry_run` nothing
//! changes and the report carries each resource's planned changes.
//!
//! Runs outside the outbox (it may run in the CLI while the daemon's workers run): a repaired
//! resource's state is recorded through `settle_applied` with a synthetic row that matches no
//! outbox row, which records it only when the rendered version is newer than the recorded one
//! (or there was none). Must not touch outbox rows.

use super::worker::{apply, enqueue_dependants};
use super::{Reconciler, TargetRuntime};
use crate::http::server::now_ms;
use crate::scim::resource::ResourceType;
use crate::store::{OutboxItem, StoreError, TargetState};
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
        // A worker may be applying the same resource at this moment (its entry already made,
        // its state not yet recorded): one more try reads the state it recorded.
        let result = match apply(rec, &t, ty, &id, dry_run).await {
            Err(_) => apply(rec, &t, ty, &id, dry_run).await,
            ok => ok,
        };
        match result {
            Ok(done) => {
                report.checked += 1;
                let moved = done.prior.key != done.outcome.key;
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
                        record(rec, &t, ty, &id, &done).await;
                        enqueue_dependants(rec, &t, ty, &id, &done).await;
                    }
                }
            }
            Err(e) => {
                report.failed += 1;
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

async fn record(
    rec: &Reconciler,
    t: &TargetRuntime,
    ty: ResourceType,
    id: &str,
    done: &super::worker::Applied,
) {
    let now = now_ms();
    // Matches no outbox row (ids start at 1): only the state is recorded, when newer.
    let item = OutboxItem {
        id: -1,
        target: t.name.clone(),
        resource_type: ty,
        resource_id: id.to_owned(),
        version: done.version,
        operation: "resync".into(),
        request_id: None,
        attempts: 0,
        next_attempt_ms: now,
        last_error: None,
        state: "pending".into(),
        enqueued_ms: now,
        claim_epoch: -1,
        generation: -1,
    };
    let state = TargetState {
        target: t.name.clone(),
        resource_type: ty,
        resource_id: id.to_owned(),
        applied_version: done.version,
        target_key: done.outcome.key.clone(),
        extra: done.extra_to_store(),
        updated_ms: now,
    };
    if let Err(e) = rec.inner.store.settle_applied(&item, state, now).await {
        tracing::error!(target = %t.name, resource_id = %id, error = %e, "Repaired, but cannot record it in the store.");
    }
}
