//! A group's desired state and how its member values are applied: the O(change) path (only
//! the members that changed since the applied version, as the store's change log and dirty
//! marks name them, turned into value adds and deletes) or the whole membership (read and
//! diffed: the first apply, drift repair, dry runs, and every case the log cannot be trusted
//! for), and the store's record of the member values we wrote (`foreign_members`). The
//! design, with its crash windows, is in docs/ARCHITECTURE.md ("The outbox, precisely").
//!
//! Nested groups (`groups.nested`): under `member` a member group is a member like a user,
//! its value the group's own key (DN) in this target, on both paths; under `flatten` a group
//! with member groups (now, or among the changed members) applies its whole membership with
//! every user reached through nesting as a member, each once; under `refuse` such a group is
//! not applied (a permanent failure naming the target's setting).
//!
//! Order of writes for one apply: the values about to be written are recorded first
//! (`Store::record_members`), then the target writes, then, fenced by the claim, the values
//! it removed are forgotten and the dirty marks it read are cleared
//! (`Store::settle_members`), then the usual settle, then the change log is pruned. A crash
//! between any two leaves the record a superset of what we wrote and the change (or mark)
//! still there, so the next apply looks at the same members again.

use super::{Reconciler, TargetRuntime};
use crate::config::target::{ForeignMembers, MemberValue, NestedGroups};
use crate::scim::resource::{render_group, ResourceType};
use crate::store::{MembersSettle, OutboxItem, StoreError, TargetState};
use crate::targets::{Desired, Kind, MemberChanges, Prior, Target};
use std::collections::{HashMap, HashSet};

use super::worker::ApplyError;

/// A group's desired state for one apply, with what the store records around it.
pub(crate) struct GroupPlan {
    /// The group's version this apply stands for (0 when gone).
    pub(crate) version: i64,
    /// `None`: the group is deleted (or gone).
    pub(crate) desired: Option<Desired>,
    /// `(value, member id)` to record as ours before the target writes.
    pub(crate) record: Vec<(String, String)>,
    /// Recorded values this apply may delete (no longer `written` before the write).
    pub(crate) deleting: Vec<String>,
    /// The record's values this apply lets the store forget once it succeeded, and the dirty
    /// marks it read.
    pub(crate) settle: MembersSettle,
    /// The values we wrote, for a whole-membership apply under `keep` ([`Prior::members_ours`]).
    pub(crate) ours: Option<Vec<String>>,
}

/// How member values compare when deciding which of them an apply adds and deletes: DNs as the
/// target compares keys, `memberUid` values as they are.
fn member_norm(t: &TargetRuntime, value: &str) -> String {
    match t.map.member_value {
        MemberValue::Dn => t.target.key_norm(Kind::User, value),
        MemberValue::Uid => value.to_owned(),
    }
}

/// The member value of each of `ids` that must be in the group now (member now, provisioned in
/// this target, and active where inactive users leave groups).
async fn wanted_values(
    rec: &Reconciler,
    t: &TargetRuntime,
    ids: &[String],
) -> Result<HashMap<String, String>, StoreError> {
    let store = &rec.inner.store;
    let states: HashMap<String, TargetState> = store.target_states_of(&t.name, ids).await?;
    let active = if t.map.remove_inactive_from_groups() {
        Some(store.active_flags(ids).await?)
    } else {
        None
    };
    let mut out = HashMap::with_capacity(ids.len());
    for id in ids {
        if let Some(active) = &active {
            if !active.get(id).copied().unwrap_or(false) {
                continue;
            }
        }
        let Some(state) = states.get(id) else {
            continue;
        };
        let Some(key) = &state.target_key else {
            continue;
        };
        if let Some(v) = t.map.member_key(key, state.extra.as_ref()) {
            out.insert(id.clone(), v);
        }
    }
    Ok(out)
}

/// The desired state of group `id` (see the module docs). `delta`: the O(change) path may be
/// taken (workers' applies; never drift repair or a dry run). `applied`: the version the
/// target state records.
pub(crate) async fn plan_group(
    rec: &Reconciler,
    t: &TargetRuntime,
    id: &str,
    prior: &Prior,
    applied: i64,
    delta: bool,
    dry_run: bool,
) -> Result<GroupPlan, ApplyError> {
    let store = &rec.inner.store;
    let recorded_for = prior
        .extra
        .as_ref()
        .and_then(|e| e.members_record.as_deref());
    let record_trusted = recorded_for == Some(t.map.members_fingerprint());
    // Read before the membership: a dirty mark set after this read stays for the next apply.
    let changes = store.member_delta(&t.name, id, applied).await?;
    let Some(changes) = changes else {
        let version = store.get_group_any(id).await?.map_or(0, |g| g.meta.version);
        return Ok(GroupPlan {
            version,
            desired: None,
            record: Vec::new(),
            deleting: Vec::new(),
            settle: MembersSettle {
                forget_all: true,
                ..MembersSettle::default()
            },
            ours: None,
        });
    };
    let nested = t.map.nested_groups();
    if changes.nested && nested == NestedGroups::Refuse {
        return Err(ApplyError::Refused(format!(
            "group {id} has a group among its members, and target {}'s groups.nested is \"refuse\"",
            t.name
        )));
    }
    let flatten = (changes.nested || changes.nested_changed) && nested == NestedGroups::Flatten;
    if delta
        && !dry_run
        && record_trusted
        && prior.key.is_some()
        && applied > 0
        && changes.trusted
        && !flatten
        && !t.map.group_renders_members()
    {
        if let Some(plan) = plan_changes(rec, t, id, changes.clone()).await? {
            return Ok(plan);
        }
    }
    plan_whole(rec, t, id, prior, record_trusted, changes.dirty).await
}

/// The O(change) plan; `None` when the group vanished meanwhile (the whole path decides).
async fn plan_changes(
    rec: &Reconciler,
    t: &TargetRuntime,
    id: &str,
    changes: crate::store::MemberDelta,
) -> Result<Option<GroupPlan>, ApplyError> {
    let store = &rec.inner.store;
    let Some(group) = store.get_group_any(id).await? else {
        return Ok(None);
    };
    if group.deleted {
        return Ok(None);
    }
    let ids: Vec<String> = changes.members.iter().map(|(m, _)| m.clone()).collect();
    let members: HashSet<&str> = changes
        .members
        .iter()
        .filter(|(_, member)| *member)
        .map(|(m, _)| m.as_str())
        .collect();
    let mut wanted = wanted_values(rec, t, &ids).await?;
    wanted.retain(|m, _| members.contains(m.as_str()));
    let recorded = if ids.is_empty() {
        Vec::new()
    } else {
        store.recorded_members(&t.name, id, Some(&ids)).await?
    };
    let mut add = Vec::new();
    let mut record = Vec::new();
    let mut written = Vec::new();
    let mut wanted_norm = HashSet::new();
    for m in &ids {
        let Some(v) = wanted.get(m) else {
            continue;
        };
        wanted_norm.insert(member_norm(t, v));
        let known = recorded.iter().find(|(rv, rm, _)| rv == v && rm == m);
        if known.is_none() {
            record.push((v.clone(), m.clone()));
        }
        // Recorded as written for this member: the entry holds it (an earlier apply wrote it
        // and none set out to remove it since); nothing to send.
        if !known.is_some_and(|(_, _, w)| *w) {
            add.push(v.clone());
            written.push(v.clone());
        }
    }
    let mut delete = Vec::new();
    let mut forget = Vec::new();
    for (value, member, _) in &recorded {
        if wanted.get(member) == Some(value) {
            continue;
        }
        // Recorded for this member but not wanted: ours to remove, unless a member wants the
        // same value now (then it stays, and the record names that member).
        if wanted_norm.contains(&member_norm(t, value)) {
            continue;
        }
        delete.push(value.clone());
        forget.push(value.clone());
    }
    // No members rendered: no group rule names them (`group_renders_members`).
    let json = render_group(&group.id, &group.data, &group.meta, None, "");
    let entry = t.map.render_group(&json)?;
    Ok(Some(GroupPlan {
        version: changes.version,
        desired: Some(Desired {
            kind: Kind::Group,
            entry,
            active: true,
            members: Vec::new(),
            password_hash: None,
            role_groups: Vec::new(),
            member_changes: Some(MemberChanges {
                add,
                delete: delete.clone(),
            }),
        }),
        record,
        deleting: delete.clone(),
        settle: MembersSettle {
            forget,
            forget_all: false,
            written,
            dirty: changes.dirty,
        },
        ours: None,
    }))
}

/// The whole-membership plan: members are the member values of the member users provisioned
/// in this target (batch queries, whatever the group size).
async fn plan_whole(
    rec: &Reconciler,
    t: &TargetRuntime,
    id: &str,
    prior: &Prior,
    record_trusted: bool,
    dirty: Vec<(String, i64)>,
) -> Result<GroupPlan, ApplyError> {
    let store = &rec.inner.store;
    let Some(group) = store.get_group_any(id).await? else {
        return Ok(GroupPlan {
            version: 0,
            desired: None,
            record: Vec::new(),
            deleting: Vec::new(),
            settle: MembersSettle {
                forget_all: true,
                ..MembersSettle::default()
            },
            ours: None,
        });
    };
    if group.deleted {
        return Ok(GroupPlan {
            version: group.meta.version,
            desired: None,
            record: Vec::new(),
            deleting: Vec::new(),
            settle: MembersSettle {
                forget_all: true,
                ..MembersSettle::default()
            },
            ours: None,
        });
    }
    let members = store.group_members(id).await?;
    let has_groups = members.iter().any(|m| m.kind == Some(ResourceType::Group));
    let ids: Vec<String> = match t.map.nested_groups() {
        NestedGroups::Refuse if has_groups => {
            return Err(ApplyError::Refused(format!(
                "group {id} has a group among its members, and target {}'s groups.nested is \"refuse\"",
                t.name
            )));
        }
        // The users reached through nesting, each once (one snapshot of the closure).
        NestedGroups::Flatten if has_groups => store.flattened_members(id).await?,
        _ => members.iter().map(|m| m.value.clone()).collect(),
    };
    let wanted = wanted_values(rec, t, &ids).await?;
    let mut keys = Vec::with_capacity(wanted.len());
    let mut want_pairs = Vec::with_capacity(wanted.len());
    for m in &ids {
        if let Some(v) = wanted.get(m) {
            keys.push(v.clone());
            want_pairs.push((v.clone(), m.clone()));
        }
    }
    let recorded = store.recorded_members(&t.name, id, None).await?;
    let have: HashSet<(&str, &str)> = recorded
        .iter()
        .map(|(v, m, _)| (v.as_str(), m.as_str()))
        .collect();
    let present: HashSet<&str> = recorded
        .iter()
        .filter(|(_, _, w)| *w)
        .map(|(v, _, _)| v.as_str())
        .collect();
    let record: Vec<(String, String)> = want_pairs
        .iter()
        .filter(|(v, m)| !have.contains(&(v.as_str(), m.as_str())))
        .cloned()
        .collect();
    let written: Vec<String> = keys
        .iter()
        .filter(|v| !present.contains(v.as_str()))
        .cloned()
        .collect();
    let want_values: HashSet<&str> = keys.iter().map(String::as_str).collect();
    let forget: Vec<String> = recorded
        .iter()
        .filter(|(v, _, _)| !want_values.contains(v.as_str()))
        .map(|(v, _, _)| v.clone())
        .collect();
    // Under `keep`, the values we wrote: the record and what this apply writes. A group
    // applied before the record existed (or under another member configuration) has none
    // to trust: every value it does not render is taken as ours once, as before.
    let ours = match t.map.foreign_members() {
        ForeignMembers::Remove => None,
        ForeignMembers::Keep if record_trusted || prior.key.is_none() => Some(
            recorded
                .iter()
                .map(|(v, _, _)| v.clone())
                .chain(keys.iter().cloned())
                .collect(),
        ),
        ForeignMembers::Keep => None,
    };
    let json = render_group(&group.id, &group.data, &group.meta, Some(&members), "");
    let entry = t.map.render_group(&json)?;
    Ok(GroupPlan {
        version: group.meta.version,
        desired: Some(Desired {
            kind: Kind::Group,
            entry,
            active: true,
            members: keys,
            password_hash: None,
            role_groups: Vec::new(),
            member_changes: None,
        }),
        record,
        deleting: forget.clone(),
        settle: MembersSettle {
            forget,
            forget_all: false,
            written,
            dirty,
        },
        ours,
    })
}

/// Before the target writes: record the values it may write (see the module docs).
pub(crate) async fn record(
    rec: &Reconciler,
    t: &TargetRuntime,
    id: &str,
    plan: &GroupPlan,
) -> Result<(), StoreError> {
    if plan.record.is_empty() && plan.deleting.is_empty() {
        return Ok(());
    }
    rec.inner
        .store
        .record_members(&t.name, id, plan.record.clone(), plan.deleting.clone())
        .await
}

/// After a successful apply of a group, before its settle: forget the values it removed and
/// clear the dirty marks it read, fenced by the claim. False when the claim was lost (the
/// owner settles; nothing was written) or the store failed (the row re-applies when its
/// lease expires).
pub(crate) async fn settle(
    rec: &Reconciler,
    t: &TargetRuntime,
    item: &OutboxItem,
    settle: Option<&MembersSettle>,
) -> bool {
    let Some(settle) = settle else {
        return true;
    };
    if settle.forget.is_empty()
        && !settle.forget_all
        && settle.written.is_empty()
        && settle.dirty.is_empty()
    {
        return true;
    }
    match rec.inner.store.settle_members(item, settle.clone()).await {
        Ok(true) => true,
        Ok(false) => {
            tracing::debug!(target = %t.name, resource_id = %item.resource_id, outbox_id = item.id, "Claim lost before the settle; another worker has the row.");
            false
        }
        Err(e) => {
            tracing::error!(target = %t.name, resource_id = %item.resource_id, outbox_id = item.id, error = %e, "Applied, but cannot record the group's member values in the store; it re-applies when the lease expires.");
            false
        }
    }
}

/// After a group's settle: drop the membership changes every configured target applied.
pub(crate) async fn prune(rec: &Reconciler, t: &TargetRuntime, group_id: &str) {
    let targets: Vec<String> = rec.inner.targets.iter().map(|t| t.name.clone()).collect();
    if let Err(e) = rec
        .inner
        .store
        .prune_member_changes(group_id, &targets)
        .await
    {
        tracing::warn!(target = %t.name, resource_id = %group_id, error = %e, "Cannot prune the group's membership changes; the next settle tries again.");
    }
}
