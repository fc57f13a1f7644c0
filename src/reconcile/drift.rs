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
//! holds is skipped: the worker applies its current state. A dry run claims nothing, and
//! neither does a chunk while this instance's fence leaves no room for a write (its heartbeat
//! is late: `worker::fence_allows_claims`, checked once per chunk; the chunk is reported not
//! repaired).

use super::worker::{
    apply, apply_many, fence_allows_claims, process_batch, Applied, ApplyError, Job, Processed,
};
use super::{Reconciler, TargetRuntime};
use crate::clock::now_ms;
use crate::scim::resource::ResourceType;
use crate::store::{OutboxItem, StoreError};
use crate::targets::Lease;

/// Resources repaired together (one claim batch, one settle).
const REPAIR_BATCH: usize = 16;

fn dry_job(resource_type: ResourceType, id: &str) -> Job {
    Job {
        resource_type,
        id: id.to_owned(),
        lease: Lease::default(),
        claim: None,
        delta: false,
        span: tracing::Span::current(),
    }
}
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
    /// Resources checked (synced or compared), the failed ones included.
    pub checked: u64,
    /// Resources that changed (or, in a dry run, would change).
    pub changed: u64,
    /// Resources that could not be synced (a part of `checked`). A target whose managed
    /// resources could not be listed is an item with an error and an empty resource id.
    pub failed: u64,
    /// The changed and failed resources, in the order they were checked.
    pub items: Vec<FullItem>,
    /// Resources not repaired because this instance's fence did not allow a claim (a part of
    /// `failed`): a scheduled run that skipped any is not recorded as run, so the next turn
    /// repairs them (third reader's finding 5).
    pub fenced: u64,
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

/// The error of a resource not repaired because this instance's fence did not allow a claim.
const FENCED: &str = "not repaired: this instance's fence does not allow claims (its heartbeat \
                      is late or it was taken over); the next run repairs it";

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
                // Not a resource: an item with an error and no resource id (not in `failed`).
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
    let lease = i64::try_from(rec.inner.settings.lease.as_millis()).unwrap_or(i64::MAX);
    let mut done_count: u64 = 0;
    // Batches of one target and one type (users before groups, so members and references
    // resolve), applied together as the workers apply theirs.
    let mut rest = work.as_slice();
    while let Some((t0, ty0, _)) = rest.first() {
        let len = rest
            .iter()
            .take(REPAIR_BATCH)
            .take_while(|(t, ty, _)| Arc::ptr_eq(t, t0) && ty == ty0)
            .count();
        let (chunk, tail) = rest.split_at(len);
        rest = tail;
        let t = t0.clone();
        let ty = *ty0;
        let ids: Vec<String> = chunk.iter().map(|(_, _, id)| id.clone()).collect();
        let results: Vec<Option<Result<Applied, String>>> = if dry_run {
            let jobs = ids.iter().map(|id| dry_job(ty, id)).collect();
            let mut out = Vec::with_capacity(ids.len());
            for (id, r) in ids.iter().zip(apply_many(rec, &t, jobs, true).await) {
                // A worker may be applying the same resource at this moment (its entry
                // already made, its state not yet recorded): one more try reads the state
                // it recorded.
                let r = match r {
                    Err(_) => apply(rec, &t, ty, id, true, Lease::default()).await,
                    ok => ok,
                };
                out.push(Some(r.map_err(|e| e.text())));
            }
            out
        } else {
            let claimed_ms = now_ms();
            // Per resource: its claim, or `None` when a worker holds the row (it applies the
            // current state), or the store's error; `fenced` when this instance's fence left
            // no room for a write at its turn.
            let mut claims: Vec<Result<Option<OutboxItem>, StoreError>> = Vec::new();
            let mut fenced = Vec::with_capacity(ids.len());
            for id in &ids {
                // This instance's fence leaves no room for a write (its heartbeat is late, or
                // it was taken over): its claims would take the rows (and a dead instance's)
                // from the instances that can write, for nothing (second reader's finding 4).
                // Checked before each claim, as a worker checks before each of its claims
                // (third reader's finding 4: once per chunk, the fence could run out within
                // it).
                let allowed = fence_allows_claims(rec, &t);
                fenced.push(!allowed);
                if !allowed {
                    claims.push(Ok(None));
                    continue;
                }
                claims.push(
                    rec.inner
                        .store
                        .claim_resource(&t.name, ty, id, claimed_ms, lease)
                        .await,
                );
            }
            let skipped = fenced.iter().filter(|f| **f).count();
            report.fenced += u64::try_from(skipped).unwrap_or(u64::MAX);
            let claimed: Vec<OutboxItem> = claims
                .iter()
                .filter_map(|c| c.as_ref().ok().cloned().flatten())
                .collect();
            let mut processed = if claimed.is_empty() {
                Vec::new()
            } else {
                process_batch(rec, &t, &claimed, claimed_ms, false).await
            }
            .into_iter();
            claims
                .into_iter()
                .zip(fenced)
                .map(|(c, fenced)| match c {
                    Ok(None) if fenced => Some(Err(FENCED.to_owned())),
                    Ok(Some(_)) => match processed.next() {
                        Some(Processed::Applied(done)) => Some(Ok(*done)),
                        Some(Processed::Failed(e)) => Some(Err(e.text())),
                        // Not repaired: the claim was lost (a worker applies the current state)
                        // or its lease ran short; the row went back to the outbox.
                        Some(Processed::Lost(text)) => Some(Err(text)),
                        None => None,
                    },
                    Ok(None) => None,
                    Err(e) => Some(Err(ApplyError::Store(e).text())),
                })
                .collect()
        };
        for (id, result) in ids.into_iter().zip(results) {
            match result {
                // Skipped: a worker holds (or took) the claim and applies the current state.
                None => report.checked += 1,
                Some(Ok(done)) => {
                    report.checked += 1;
                    let moved = done.prior.key != done.outcome.key;
                    if !done.outcome.changes.is_empty() || moved {
                        report.changed += 1;
                        report.items.push(FullItem {
                            target: t.name.clone(),
                            resource_type: ty,
                            resource_id: id,
                            key: done.outcome.key.clone(),
                            changes: done.outcome.changes.clone(),
                            error: None,
                        });
                    }
                }
                Some(Err(text)) => {
                    // Checked, and failed: `failed` is a part of `checked`.
                    report.checked += 1;
                    report.failed += 1;
                    tracing::warn!(target = %t.name, resource_type = ty.as_str(), resource_id = %id, error = %text, "Drift repair could not sync a resource.");
                    report.items.push(FullItem {
                        target: t.name.clone(),
                        resource_type: ty,
                        resource_id: id,
                        key: None,
                        changes: Vec::new(),
                        error: Some(text),
                    });
                }
            }
            done_count = done_count.saturating_add(1);
            progress(done_count, total);
        }
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
