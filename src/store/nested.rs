//! Nested groups (issue 11): the group-in-group edges of `group_members` (rows with
//! `member_is_group`, migration `2026-12-01-100000_nested_groups`), walked down (a group's
//! child groups: the cycle check, a flattening apply's closure) and up (a group's ancestors:
//! whom a membership change reaches). Every walk reads only group-in-group edges (two partial
//! indexes), never a group's user members, so a change to a large flat group costs what it
//! cost before. The design, with its locks, is in docs/ARCHITECTURE.md ("Nested groups").
//!
//! Must not decide what a target does with nested members (flatten, refuse, the child's DN:
//! the reconciler does).

use super::outbox::enqueue_all;
use super::schema::{group_members, resources};
use super::{AuditCtx, DbConnection, StoreError};
use crate::scim::resource::ResourceType;
use crate::scim::ScimError;
use diesel::prelude::*;
use std::collections::{BTreeSet, HashSet};

/// Ids per `IN (...)` list.
const CHUNK: usize = 500;
/// Most groups one walk visits: a bound on the work one request can cause (a nesting this
/// wide or deep is refused as a cycle check that cannot finish, 400).
pub(crate) const MAX_WALK: usize = 100_000;

/// Breadth-first walk from `start` over `next` (a batch of nodes -> their neighbours),
/// visiting each node once: every node reached (without `start` itself unless it is reached
/// again through an edge), in the order first reached. Stops early, returning `Err(true)`,
/// when `goal` is reached, and `Err(false)` past `limit` nodes. Pure apart from `next`.
pub(crate) fn walk<E>(
    start: &[i64],
    goal: Option<i64>,
    limit: usize,
    mut next: impl FnMut(&[i64]) -> Result<Vec<i64>, E>,
) -> Result<Result<Vec<i64>, bool>, E> {
    let mut seen: HashSet<i64> = HashSet::new();
    let mut out = Vec::new();
    let mut frontier: Vec<i64> = start.to_vec();
    frontier.sort_unstable();
    frontier.dedup();
    while !frontier.is_empty() {
        let mut found = Vec::new();
        for chunk in frontier.chunks(CHUNK) {
            found.extend(next(chunk)?);
        }
        frontier.clear();
        for n in found {
            if Some(n) == goal {
                return Ok(Err(true));
            }
            if seen.insert(n) {
                out.push(n);
                frontier.push(n);
                if out.len() > limit {
                    return Ok(Err(false));
                }
            }
        }
    }
    Ok(Ok(out))
}

/// The query of the child groups of `parents` (an `IN` list). The filter is the bare column
/// `member_is_group`, not `member_is_group = true`: only the bare column implies the partial
/// indexes' `WHERE member_is_group` to SQLite's planner (and to PostgreSQL's generic plan, where
/// `= $1` is unknown), so the walk reads the index of group-in-group edges, never a group's
/// user members (test: `store::tests::nested::nested_walk_queries_use_the_partial_indexes`).
macro_rules! child_groups_query {
    ($parents:expr) => {
        $crate::store::schema::group_members::table
            .filter($crate::store::schema::group_members::member_is_group)
            .filter($crate::store::schema::group_members::group_seq.eq_any($parents))
            .select($crate::store::schema::group_members::member_seq)
    };
}
/// The query of the parent groups of `groups` (see [`child_groups_query`]).
macro_rules! parent_groups_query {
    ($groups:expr) => {
        $crate::store::schema::group_members::table
            .filter($crate::store::schema::group_members::member_is_group)
            .filter($crate::store::schema::group_members::member_seq.eq_any($groups))
            .select($crate::store::schema::group_members::group_seq)
    };
}
/// The query of the child groups of one group `group_seq` (`has_child_groups` takes the
/// first; see [`child_groups_query`]).
macro_rules! one_child_group_query {
    ($group_seq:expr) => {
        $crate::store::schema::group_members::table
            .filter($crate::store::schema::group_members::member_is_group)
            .filter($crate::store::schema::group_members::group_seq.eq($group_seq))
            .select($crate::store::schema::group_members::member_seq)
    };
}
#[cfg(test)]
pub(crate) use {child_groups_query, one_child_group_query, parent_groups_query};

/// The child groups of `parents` (one statement per chunk, over the partial index).
fn children(conn: &mut DbConnection, parents: &[i64]) -> Result<Vec<i64>, StoreError> {
    Ok(child_groups_query!(parents).load(conn)?)
}

/// The parent groups of groups (group-in-group edges only).
fn parent_groups(conn: &mut DbConnection, groups: &[i64]) -> Result<Vec<i64>, StoreError> {
    Ok(parent_groups_query!(groups).load(conn)?)
}

/// The ancestors of `groups` (parents, their parents, ...), without `groups` themselves,
/// ascending by `seq` (the lock order of group rows).
pub(crate) fn ancestors(conn: &mut DbConnection, groups: &[i64]) -> Result<Vec<i64>, StoreError> {
    if groups.is_empty() {
        return Ok(Vec::new());
    }
    let mut found = match walk(groups, None, MAX_WALK, |g| parent_groups(conn, g))? {
        Ok(found) => found,
        // Wider than any real directory: queue nothing more than the walk bound allows.
        Err(_) => {
            return Err(StoreError::Other(
                "nested groups: too many ancestors".into(),
            ))
        }
    };
    let own: HashSet<i64> = groups.iter().copied().collect();
    found.retain(|g| !own.contains(g));
    found.sort_unstable();
    Ok(found)
}

/// The groups `user_seq` is in through nesting only (ancestors of its direct groups that are
/// not direct groups), ascending by `seq`.
pub(crate) fn indirect_groups_of(
    conn: &mut DbConnection,
    direct: &[i64],
) -> Result<Vec<i64>, StoreError> {
    ancestors(conn, direct)
}

/// Whether making `child` a member of `parent` would close a cycle (`parent` is `child`
/// or is reached from `child` through group-in-group edges); `None` when the walk gave up
/// (more than [`MAX_WALK`] groups below `child`).
fn closes_cycle(
    conn: &mut DbConnection,
    parent: i64,
    child: i64,
) -> Result<Option<bool>, StoreError> {
    if parent == child {
        return Ok(Some(true));
    }
    match walk(&[child], Some(parent), MAX_WALK, |g| children(conn, g))? {
        Ok(_) => Ok(Some(false)),
        Err(true) => Ok(Some(true)),
        Err(false) => Ok(None),
    }
}

/// Serialise the transactions that add group-in-group edges (PostgreSQL: a transaction
/// advisory lock, held to the commit; SQLite: the write lock already does). Taken after the
/// row locks of the parent group and of the member rows (share), and nothing waits for a row
/// lock while holding it, so it adds no deadlock (docs/ARCHITECTURE.md, "Nested groups").
pub(crate) fn lock_nesting(conn: &mut DbConnection) -> Result<(), StoreError> {
    use diesel::connection::SimpleConnection;
    if let DbConnection::Pg(c) = conn {
        c.batch_execute("SELECT pg_advisory_xact_lock(hashtext('scim-sync/nesting'))")?;
    }
    Ok(())
}

/// The shared side of the nesting lock (PostgreSQL; SQLite's write lock already serialises):
/// taken by every transaction that reads a group's ancestors to queue them, before its first
/// outbox upsert, so that an edge committed by a concurrent [`lock_nesting`] holder is either
/// seen by the ancestor read (it committed first) or committed after this transaction (then
/// the new ancestor, queued by that edge's own transaction, applies after this change). Shared
/// holders do not wait for each other; a transaction holding the exclusive side is granted the
/// shared side at once.
pub(crate) fn lock_nesting_shared(conn: &mut DbConnection) -> Result<(), StoreError> {
    use diesel::connection::SimpleConnection;
    if let DbConnection::Pg(c) = conn {
        c.batch_execute("SELECT pg_advisory_xact_lock_shared(hashtext('scim-sync/nesting'))")?;
    }
    Ok(())
}

/// Refuse (400 `invalidValue`) new edges `parent -> child` for `children` that would close a
/// cycle. Call with [`lock_nesting`] held, after the edges were inserted or before: the
/// walk reads committed edges of every earlier nesting transaction (PostgreSQL's READ
/// COMMITTED reads anew per statement, after the lock).
pub(crate) fn refuse_cycles(
    conn: &mut DbConnection,
    parent: i64,
    new_children: &[i64],
) -> Result<(), StoreError> {
    for &child in new_children {
        let Some(cycle) = closes_cycle(conn, parent, child)? else {
            return Err(StoreError::Scim(ScimError::invalid_value(
                "members: the nested groups below a member are too many to check for a cycle",
            )));
        };
        if cycle {
            let detail = if child == parent {
                "members: a group cannot be a member of itself".to_owned()
            } else {
                let id: String = resources::table
                    .find(child)
                    .select(resources::id)
                    .first(conn)?;
                format!("members: group {id} contains this group (directly or through nesting): the membership would make a cycle")
            };
            return Err(StoreError::Scim(ScimError::invalid_value(detail)));
        }
    }
    Ok(())
}

/// One group's outbox upsert among those one transaction queues (see [`with_ancestors`]).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct GroupQueue {
    pub(crate) seq: i64,
    pub(crate) id: String,
    pub(crate) version: i64,
    pub(crate) operation: &'static str,
    /// Whether the transaction's member is marked dirty in this group after its outbox row
    /// (its rendered value there may have changed: `store::members`).
    pub(crate) dirty: bool,
}

/// The group outbox rows a transaction queues: `own` (the groups it changed, at their new
/// versions) and every live ancestor of `below` not among them, at its current version
/// (`"nested"`: its own `members` did not change, what a flattening target derives from it
/// did; read without a lock on its row: the upsert never lowers a version and bumps
/// `generation`, so a claimed row runs again), all in ascending `seq`.
///
/// Ascending `seq` over all of them together is the one lock order of group outbox rows on
/// PostgreSQL (docs/ARCHITECTURE.md, "Outbox row lock order"): `seq` is not child before
/// parent (parents are usually created first), so a group's own row first and its ancestors
/// after deadlocked against a change of a group between (test:
/// `store::tests::races::races_member_patches_of_a_child_and_of_its_parent_do_not_deadlock`).
/// Takes the shared nesting lock before the ancestor read when `below` is not empty (normally
/// held by the caller already, then granted at once; see [`lock_nesting_shared`]).
pub(crate) fn with_ancestors(
    conn: &mut DbConnection,
    own: Vec<GroupQueue>,
    below: &[i64],
) -> Result<Vec<GroupQueue>, StoreError> {
    let mut out = own;
    if !below.is_empty() {
        lock_nesting_shared(conn)?;
        let mut found = ancestors(conn, below)?;
        let queued: HashSet<i64> = out.iter().map(|q| q.seq).collect();
        found.retain(|g| !queued.contains(g));
        for chunk in found.chunks(CHUNK) {
            let rows: Vec<(i64, String, i64)> = resources::table
                .filter(resources::seq.eq_any(chunk))
                .filter(resources::deleted.eq(false))
                .select((resources::seq, resources::id, resources::version))
                .load(conn)?;
            out.extend(rows.into_iter().map(|(seq, id, version)| GroupQueue {
                seq,
                id,
                version,
                operation: "nested",
                dirty: false,
            }));
        }
    }
    out.sort_by_key(|q| q.seq);
    Ok(out)
}

/// Queue `rows` (from [`with_ancestors`], in their order) for every target, marking
/// `member_id` dirty in those that say so, each after its outbox row.
pub(crate) fn enqueue_groups(
    conn: &mut DbConnection,
    targets: &[String],
    rows: &[GroupQueue],
    member_id: &str,
    ctx: &AuditCtx,
) -> Result<(), StoreError> {
    if targets.is_empty() {
        return Ok(());
    }
    for q in rows {
        enqueue_all(
            conn,
            targets,
            ResourceType::Group,
            &q.id,
            q.version,
            q.operation,
            ctx,
        )?;
        if q.dirty {
            for target in targets {
                super::members::mark_dirty(conn, target, std::slice::from_ref(&q.id), member_id)?;
            }
        }
    }
    Ok(())
}

/// The transitive user members of group `group_seq` (through every nested group), as
/// `(id, seq)`, each once, ascending by `seq`: what a flattening target writes.
pub(crate) fn flattened_users(
    conn: &mut DbConnection,
    group_seq: i64,
) -> Result<Vec<(String, i64)>, StoreError> {
    let groups = match walk(&[group_seq], None, MAX_WALK, |g| children(conn, g))? {
        Ok(mut g) => {
            g.push(group_seq);
            g
        }
        Err(_) => {
            return Err(StoreError::Other(
                "nested groups: too many to flatten".into(),
            ))
        }
    };
    let mut users: BTreeSet<(i64, String)> = BTreeSet::new();
    for chunk in groups.chunks(CHUNK) {
        let rows: Vec<(i64, String)> = group_members::table
            .inner_join(resources::table.on(resources::seq.eq(group_members::member_seq)))
            .filter(group_members::group_seq.eq_any(chunk))
            .filter(group_members::member_is_group.eq(false))
            .select((resources::seq, resources::id))
            .load(conn)?;
        users.extend(rows);
    }
    Ok(users.into_iter().map(|(s, id)| (id, s)).collect())
}

/// Whether group `group_seq` has a group among its members now.
pub(crate) fn has_child_groups(
    conn: &mut DbConnection,
    group_seq: i64,
) -> Result<bool, StoreError> {
    let one: Option<i64> = one_child_group_query!(group_seq).first(conn).optional()?;
    Ok(one.is_some())
}

#[cfg(test)]
mod tests {
    use super::walk;
    use std::collections::HashMap;

    fn graph(edges: &[(i64, i64)]) -> HashMap<i64, Vec<i64>> {
        let mut g: HashMap<i64, Vec<i64>> = HashMap::new();
        for &(a, b) in edges {
            g.entry(a).or_default().push(b);
        }
        g
    }

    fn run(edges: &[(i64, i64)], start: i64, goal: Option<i64>) -> Result<Vec<i64>, bool> {
        let g = graph(edges);
        walk::<()>(&[start], goal, 1000, |nodes| {
            Ok(nodes
                .iter()
                .flat_map(|n| g.get(n).cloned().unwrap_or_default())
                .collect())
        })
        .unwrap()
    }

    #[test]
    fn a_walk_reaches_every_descendant_once_through_a_diamond() {
        let edges = [(1, 2), (1, 3), (2, 4), (3, 4), (4, 5)];
        let mut got = run(&edges, 1, None).unwrap();
        got.sort_unstable();
        assert_eq!(got, vec![2, 3, 4, 5]);
    }

    #[test]
    fn a_walk_stops_at_its_goal_at_any_depth() {
        let edges = [(1, 2), (2, 3), (3, 4)];
        assert_eq!(run(&edges, 2, Some(4)), Err(true));
        assert_eq!(run(&edges, 2, Some(1)).map(|v| v.len()), Ok(2));
        // A cycle already there (never in the store) still ends.
        assert_eq!(run(&[(1, 2), (2, 1)], 1, None).map(|v| v.len()), Ok(2));
    }

    #[test]
    fn a_walk_past_its_limit_gives_up() {
        let edges: Vec<(i64, i64)> = (0..2000).map(|i| (0, i + 1)).collect();
        assert_eq!(run(&edges, 0, None), Err(false));
    }
}
