//! O(change) memberships (issue 9) and the member values we wrote (issue 13 item 5): the
//! store's side. Four tables (migration `2026-12-01-080000_member_changes`):
//!
//! - `member_changes`: per group, the members whose membership changed, with the last group
//!   version that changed it; written in the transaction of the membership change
//!   ([`touched`]), so a burst of changes to one group is one row per member.
//! - `member_log`: per group, which versions `member_changes` covers. Every group version
//!   bump by this release calls [`bumped`]: the log is contiguous while each bump finds the
//!   previous version logged; a bump that does not (the group was changed by an older
//!   release, or before the table existed) restarts the log at its own version. The worker
//!   trusts the log for (applied, current] only when it is contiguous over that range and
//!   nothing in it was pruned (`pruned_to`: pruning keeps the rows of every *configured*
//!   target; one configured again later applied below the floor) ([`MemberDelta::trusted`]);
//!   anything else is a gap and it reads the whole membership.
//! - `member_dirty`: per target, members whose rendered value may have changed without a
//!   membership change (their key appeared, changed or vanished: the settle marks them;
//!   their `active` flipped: the mutation marks them), marked in the transaction that queues
//!   the group. `mark` goes up with every marking; the worker clears only the marks it read,
//!   fenced by its claim ([`settle_members`]).
//! - `target_members`: per target and group, the member values we wrote or are about to
//!   write, and for which member: a superset of what we wrote (recorded before the write,
//!   forgotten, fenced by the claim, only after the value was removed). `foreign_members =
//!   "keep"` removes only these; O(change) deletes look a member's old value up here.
//!   `written` is set (fenced) after the write and cleared before a delete is sent: a value
//!   recorded `written` is in the target unless someone removed it by hand, so an O(change)
//!   apply of a member whose value did not change writes nothing.
//!
//! Must not decide what to apply (the reconciler does); every write here is O(change).

use super::schema::{
    group_members, member_changes, member_dirty, member_log, outbox, resources, target_members,
    target_state,
};
use super::{has_nul, read_tx, write_tx, DbConnection, OutboxItem, Store, StoreError};
use crate::scim::resource::ResourceType;
use diesel::prelude::*;
use diesel::upsert::excluded;
use std::collections::{HashMap, HashSet};

/// Rows per statement: well under SQLite's bound-parameter limit.
const CHUNK: usize = 500;

/// A group's version went to `version` (every bump by this release, in the bump's
/// transaction, the group locked): the log stays contiguous when it held `version - 1`,
/// else it restarts at `version` (see the module docs).
pub(crate) fn bumped(
    conn: &mut DbConnection,
    group_seq: i64,
    version: i64,
) -> Result<(), StoreError> {
    use diesel::sql_types::BigInt;
    const SQL: &str = "INSERT INTO member_log (group_seq, logged_version, complete_from) \
         VALUES (?, ?, ?) ON CONFLICT (group_seq) DO UPDATE SET \
         complete_from = CASE WHEN member_log.logged_version = excluded.logged_version - 1 \
                         THEN member_log.complete_from ELSE excluded.complete_from END, \
         logged_version = excluded.logged_version";
    macro_rules! run {
        ($c:expr, $sql:expr) => {
            diesel::sql_query($sql)
                .bind::<BigInt, _>(group_seq)
                .bind::<BigInt, _>(version)
                .bind::<BigInt, _>(version)
                .execute($c)?
        };
    }
    match conn {
        DbConnection::Pg(c) => run!(
            c,
            SQL.replacen('?', "$1", 1)
                .replacen('?', "$2", 1)
                .replacen('?', "$3", 1)
        ),
        DbConnection::Sqlite(c) => run!(c, SQL),
    };
    Ok(())
}

/// The membership of `member_seqs` in group `group_seq` changed in this transaction (after the
/// group's version bump): logged at the group's current version.
pub(crate) fn touched(
    conn: &mut DbConnection,
    group_seq: i64,
    member_seqs: &[i64],
) -> Result<(), StoreError> {
    if member_seqs.is_empty() {
        return Ok(());
    }
    let version: i64 = resources::table
        .find(group_seq)
        .select(resources::version)
        .first(conn)?;
    for chunk in member_seqs.chunks(CHUNK) {
        let rows: Vec<_> = chunk
            .iter()
            .map(|&m| {
                (
                    member_changes::group_seq.eq(group_seq),
                    member_changes::member_seq.eq(m),
                    member_changes::version.eq(version),
                )
            })
            .collect();
        let insert = diesel::insert_into(member_changes::table)
            .values(&rows)
            .on_conflict((member_changes::group_seq, member_changes::member_seq))
            .do_update()
            .set(member_changes::version.eq(excluded(member_changes::version)));
        match conn {
            DbConnection::Pg(c) => insert.execute(c)?,
            DbConnection::Sqlite(c) => insert.execute(c)?,
        };
    }
    Ok(())
}

/// Mark `member_id` dirty in `groups` for `target` (its rendered value may have changed: a
/// key change, an `active` flip), in the transaction that queues those groups.
pub(crate) fn mark_dirty(
    conn: &mut DbConnection,
    target: &str,
    group_ids: &[String],
    member_id: &str,
) -> Result<(), StoreError> {
    for chunk in group_ids.chunks(CHUNK) {
        let rows: Vec<_> = chunk
            .iter()
            .map(|g| {
                (
                    member_dirty::target.eq(target),
                    member_dirty::group_id.eq(g.as_str()),
                    member_dirty::member_id.eq(member_id),
                    member_dirty::mark.eq(1_i64),
                )
            })
            .collect();
        let insert = diesel::insert_into(member_dirty::table)
            .values(&rows)
            .on_conflict((
                member_dirty::target,
                member_dirty::group_id,
                member_dirty::member_id,
            ))
            .do_update()
            .set(member_dirty::mark.eq(member_dirty::mark + 1_i64));
        match conn {
            DbConnection::Pg(c) => insert.execute(c)?,
            DbConnection::Sqlite(c) => insert.execute(c)?,
        };
    }
    Ok(())
}

/// What changed in a group's membership since a target applied it, as the store read it in
/// one snapshot ([`Store::member_delta`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MemberDelta {
    /// The group's version in that snapshot.
    pub version: i64,
    /// Whether `member_changes` covers every version in (applied, version].
    pub trusted: bool,
    /// The members to look at (changed since the applied version, or marked dirty), each
    /// with whether it is a member now. Empty when not trusted.
    pub members: Vec<(String, bool)>,
    /// The dirty marks read, `(member id, mark)`, cleared by the settle (read whether trusted
    /// or not: a whole-membership apply after this read covers them too).
    pub dirty: Vec<(String, i64)>,
    /// Nested groups: the group has a group among its members now (read whether trusted or
    /// not). A target that flattens nested groups applies such a group's whole (flattened)
    /// membership; one that refuses them does not apply it.
    pub nested: bool,
    /// Nested groups: a group is among the members that changed (trusted only): a
    /// flattening target applies the whole membership then too (the users it brought).
    pub nested_changed: bool,
}

fn delta(
    conn: &mut DbConnection,
    target: &str,
    group_id: &str,
    applied: i64,
) -> Result<Option<MemberDelta>, StoreError> {
    if has_nul(target) || has_nul(group_id) {
        return Ok(None);
    }
    read_tx(conn, |conn| {
        let Some((seq, version, deleted)) = resources::table
            .filter(resources::id.eq(group_id))
            .filter(resources::resource_type.eq(ResourceType::Group.as_str()))
            .select((resources::seq, resources::version, resources::deleted))
            .first::<(i64, i64, bool)>(conn)
            .optional()?
        else {
            return Ok(None);
        };
        if deleted {
            return Ok(None);
        }
        let log: Option<(i64, i64, i64)> = member_log::table
            .find(seq)
            .select((
                member_log::logged_version,
                member_log::complete_from,
                member_log::pruned_to,
            ))
            .first(conn)
            .optional()?;
        // Nothing to cover at the applied version itself (a dependant re-queue); else the log
        // must hold every version after it up to this one, none of them pruned.
        let trusted = version == applied
            || (version > applied
                && log.is_some_and(|(logged, from, pruned)| {
                    logged == version && from <= applied + 1 && pruned <= applied
                }));
        let dirty: Vec<(String, i64)> = member_dirty::table
            .filter(member_dirty::target.eq(target))
            .filter(member_dirty::group_id.eq(group_id))
            .select((member_dirty::member_id, member_dirty::mark))
            .load(conn)?;
        let nested = super::nested::has_child_groups(conn, seq)?;
        if !trusted {
            return Ok(Some(MemberDelta {
                version,
                trusted,
                members: Vec::new(),
                dirty,
                nested,
                nested_changed: false,
            }));
        }
        let changed: Vec<(i64, String, String)> = member_changes::table
            .inner_join(resources::table.on(resources::seq.eq(member_changes::member_seq)))
            .filter(member_changes::group_seq.eq(seq))
            .filter(member_changes::version.gt(applied))
            .select((resources::seq, resources::id, resources::resource_type))
            .load(conn)?;
        let nested_changed = changed
            .iter()
            .any(|(_, _, ty)| ty == ResourceType::Group.as_str());
        let mut seqs: HashMap<String, i64> =
            changed.into_iter().map(|(s, id, _)| (id, s)).collect();
        let unknown: Vec<&String> = dirty
            .iter()
            .map(|(id, _)| id)
            .filter(|id| !seqs.contains_key(*id))
            .collect();
        for chunk in unknown.chunks(CHUNK) {
            let rows: Vec<(String, i64)> = resources::table
                .filter(resources::id.eq_any(chunk))
                .select((resources::id, resources::seq))
                .load(conn)?;
            seqs.extend(rows);
        }
        let all: Vec<i64> = seqs.values().copied().collect();
        let mut present: HashSet<i64> = HashSet::new();
        for chunk in all.chunks(CHUNK) {
            let rows: Vec<i64> = group_members::table
                .filter(group_members::group_seq.eq(seq))
                .filter(group_members::member_seq.eq_any(chunk))
                .select(group_members::member_seq)
                .load(conn)?;
            present.extend(rows);
        }
        let mut members: Vec<(String, bool)> = seqs
            .iter()
            .map(|(id, s)| (id.clone(), present.contains(s)))
            .collect();
        // A dirty mark for a resource the store no longer has: not a member.
        for (id, _) in &dirty {
            if !seqs.contains_key(id) {
                members.push((id.clone(), false));
            }
        }
        members.sort();
        Ok(Some(MemberDelta {
            version,
            trusted,
            members,
            dirty,
            nested,
            nested_changed,
        }))
    })
}

/// A recorded member value: `(value, member id, written)`.
pub type Recorded = (String, String, bool);

fn recorded(
    conn: &mut DbConnection,
    target: &str,
    group_id: &str,
    member_ids: Option<&[String]>,
) -> Result<Vec<Recorded>, StoreError> {
    if has_nul(target) || has_nul(group_id) {
        return Ok(Vec::new());
    }
    read_tx(conn, |conn| {
        let base = || {
            target_members::table
                .filter(target_members::target.eq(target))
                .filter(target_members::group_id.eq(group_id))
                .select((
                    target_members::member_value,
                    target_members::member_id,
                    target_members::written,
                ))
        };
        let Some(ids) = member_ids else {
            return Ok(base().load(conn)?);
        };
        let mut out = Vec::new();
        for chunk in ids.chunks(CHUNK) {
            let rows: Vec<Recorded> = base()
                .filter(target_members::member_id.eq_any(chunk))
                .load(conn)?;
            out.extend(rows);
        }
        Ok(out)
    })
}

fn record(
    conn: &mut DbConnection,
    target: &str,
    group_id: &str,
    values: &[(String, String)],
    deleting: &[String],
) -> Result<(), StoreError> {
    if (values.is_empty() && deleting.is_empty()) || has_nul(target) || has_nul(group_id) {
        return Ok(());
    }
    write_tx(conn, |conn| {
        for chunk in values.chunks(CHUNK) {
            let rows: Vec<_> = chunk
                .iter()
                .filter(|(v, m)| !has_nul(v) && !has_nul(m))
                .map(|(v, m)| {
                    (
                        target_members::target.eq(target),
                        target_members::group_id.eq(group_id),
                        target_members::member_value.eq(v.as_str()),
                        target_members::member_id.eq(m.as_str()),
                        target_members::written.eq(false),
                    )
                })
                .collect();
            // A value already recorded keeps its `written` (the entry holds it or not as
            // before) and names the member that wants it now.
            let insert = diesel::insert_into(target_members::table)
                .values(&rows)
                .on_conflict((
                    target_members::target,
                    target_members::group_id,
                    target_members::member_value,
                ))
                .do_update()
                .set(target_members::member_id.eq(excluded(target_members::member_id)));
            match conn {
                DbConnection::Pg(c) => insert.execute(c)?,
                DbConnection::Sqlite(c) => insert.execute(c)?,
            };
        }
        for chunk in deleting.chunks(CHUNK) {
            diesel::update(
                target_members::table
                    .filter(target_members::target.eq(target))
                    .filter(target_members::group_id.eq(group_id))
                    .filter(target_members::member_value.eq_any(chunk)),
            )
            .set(target_members::written.eq(false))
            .execute(conn)?;
        }
        Ok(())
    })
}

/// What a successful apply of a group lets the store forget ([`Store::settle_members`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MembersSettle {
    /// Recorded values that are no longer in the target (removed by this apply).
    pub forget: Vec<String>,
    /// Every recorded value (the group's entry or rows were removed).
    pub forget_all: bool,
    /// Recorded values this apply wrote (now `written`).
    pub written: Vec<String>,
    /// The dirty marks this apply read (`(member id, mark)`), cleared unless marked again.
    pub dirty: Vec<(String, i64)>,
}

fn settle_members(
    conn: &mut DbConnection,
    item: &OutboxItem,
    settle: &MembersSettle,
) -> Result<bool, StoreError> {
    let (target, group_id) = (item.target.as_str(), item.resource_id.as_str());
    if has_nul(target) || has_nul(group_id) {
        return Ok(true);
    }
    write_tx(conn, |conn| {
        // Fenced: only the claim's owner forgets (a stale apply forgetting a value the new
        // owner just recorded and wrote would leave a value of ours unrecorded). The row lock
        // orders this against a claim (which bumps the epoch) on PostgreSQL.
        let epoch = match conn {
            DbConnection::Pg(c) => outbox::table
                .find(item.id)
                .select(outbox::claim_epoch)
                .for_update()
                .first::<i64>(c)
                .optional()?,
            DbConnection::Sqlite(c) => outbox::table
                .find(item.id)
                .select(outbox::claim_epoch)
                .first::<i64>(c)
                .optional()?,
        };
        if epoch != Some(item.claim_epoch) {
            return Ok(false);
        }
        let mine = || {
            target_members::table
                .filter(target_members::target.eq(target))
                .filter(target_members::group_id.eq(group_id))
        };
        if settle.forget_all {
            diesel::delete(mine()).execute(conn)?;
        } else {
            for chunk in settle.forget.chunks(CHUNK) {
                diesel::delete(mine().filter(target_members::member_value.eq_any(chunk)))
                    .execute(conn)?;
            }
            for chunk in settle.written.chunks(CHUNK) {
                diesel::update(mine().filter(target_members::member_value.eq_any(chunk)))
                    .set(target_members::written.eq(true))
                    .execute(conn)?;
            }
        }
        for (member, mark) in &settle.dirty {
            diesel::delete(
                member_dirty::table
                    .filter(member_dirty::target.eq(target))
                    .filter(member_dirty::group_id.eq(group_id))
                    .filter(member_dirty::member_id.eq(member))
                    .filter(member_dirty::mark.eq(mark)),
            )
            .execute(conn)?;
        }
        Ok(true)
    })
}

fn prune(conn: &mut DbConnection, group_id: &str, targets: &[String]) -> Result<(), StoreError> {
    if has_nul(group_id) || targets.is_empty() {
        return Ok(());
    }
    write_tx(conn, |conn| {
        let Some(seq) = resources::table
            .filter(resources::id.eq(group_id))
            .filter(resources::resource_type.eq(ResourceType::Group.as_str()))
            .select(resources::seq)
            .first::<i64>(conn)
            .optional()?
        else {
            return Ok(());
        };
        let applied: Vec<(String, i64)> = target_state::table
            .filter(target_state::resource_id.eq(group_id))
            .filter(target_state::target.eq_any(targets))
            .select((target_state::target, target_state::applied_version))
            .load(conn)?;
        // A target that never applied the group keeps everything.
        if applied.len() < targets.len() {
            return Ok(());
        }
        let Some(floor) = applied.iter().map(|(_, v)| *v).min() else {
            return Ok(());
        };
        // Lock order as a membership change's (`bumped` before `touched`): the log's row
        // first, then the change rows (the other order deadlocked against a PATCH on
        // PostgreSQL). Whoever applied below the floor (a target not configured now) cannot
        // trust the log from here on.
        diesel::update(
            member_log::table
                .find(seq)
                .filter(member_log::pruned_to.lt(floor)),
        )
        .set(member_log::pruned_to.eq(floor))
        .execute(conn)?;
        // A row touched again after this read carries a newer version and stays (PostgreSQL
        // re-checks the condition on the updated row).
        diesel::delete(
            member_changes::table
                .filter(member_changes::group_seq.eq(seq))
                .filter(member_changes::version.le(floor)),
        )
        .execute(conn)?;
        Ok(())
    })
}

/// The transitive user members of group `group_id` (see [`Store::flattened_members`]).
fn flattened(conn: &mut DbConnection, group_id: &str) -> Result<Vec<String>, StoreError> {
    if has_nul(group_id) {
        return Ok(Vec::new());
    }
    read_tx(conn, |conn| {
        let Some(seq) = resources::table
            .filter(resources::id.eq(group_id))
            .filter(resources::resource_type.eq(ResourceType::Group.as_str()))
            .filter(resources::deleted.eq(false))
            .select(resources::seq)
            .first::<i64>(conn)
            .optional()?
        else {
            return Ok(Vec::new());
        };
        Ok(super::nested::flattened_users(conn, seq)?
            .into_iter()
            .map(|(id, _)| id)
            .collect())
    })
}

impl Store {
    /// Nested groups, flattened: the ids of the users that are members of group `group_id`
    /// directly or through any depth of nested groups, each once, in one snapshot (empty for
    /// a group that is gone or deleted).
    ///
    /// # Errors
    /// `Unavailable`.
    pub async fn flattened_members(&self, group_id: &str) -> Result<Vec<String>, StoreError> {
        let id = group_id.to_owned();
        self.run(move |conn| flattened(conn, &id)).await
    }

    /// What changed in group `group_id`'s membership since `target` applied version
    /// `applied` (see [`MemberDelta`]); `None` for a group that is gone or deleted.
    ///
    /// # Errors
    /// `Unavailable`.
    pub async fn member_delta(
        &self,
        target: &str,
        group_id: &str,
        applied: i64,
    ) -> Result<Option<MemberDelta>, StoreError> {
        let (target, id) = (target.to_owned(), group_id.to_owned());
        self.run(move |conn| delta(conn, &target, &id, applied))
            .await
    }

    /// The member values recorded as ours in group `group_id` of `target` (see
    /// [`Recorded`]): all of them, or those of `member_ids`.
    ///
    /// # Errors
    /// `Unavailable`.
    pub async fn recorded_members(
        &self,
        target: &str,
        group_id: &str,
        member_ids: Option<&[String]>,
    ) -> Result<Vec<Recorded>, StoreError> {
        let (target, id) = (target.to_owned(), group_id.to_owned());
        let ids = member_ids.map(<[String]>::to_vec);
        self.run(move |conn| recorded(conn, &target, &id, ids.as_deref()))
            .await
    }

    /// Before the target writes: record `(value, member id)` pairs as ours in group
    /// `group_id` of `target` (not yet `written`; a value recorded and never written is
    /// harmless: the next apply that looks at its member adds or removes it), and clear
    /// `written` of the values about to be deleted (a crash after the delete must not leave
    /// them looking present).
    ///
    /// # Errors
    /// `Unavailable`.
    pub async fn record_members(
        &self,
        target: &str,
        group_id: &str,
        values: Vec<(String, String)>,
        deleting: Vec<String>,
    ) -> Result<(), StoreError> {
        let (target, id) = (target.to_owned(), group_id.to_owned());
        self.run(move |conn| record(conn, &target, &id, &values, &deleting))
            .await
    }

    /// After a successful apply of the group `item` names, before its settle: forget the
    /// recorded values it removed, mark those it wrote `written`, and clear the dirty marks
    /// it read, only while `item`'s
    /// claim is still this worker's (false, and nothing written, otherwise).
    ///
    /// # Errors
    /// `Unavailable`.
    pub async fn settle_members(
        &self,
        item: &OutboxItem,
        settle: MembersSettle,
    ) -> Result<bool, StoreError> {
        let item = item.clone();
        self.run(move |conn| settle_members(conn, &item, &settle))
            .await
    }

    /// Drop the membership changes of `group_id` every one of `targets` applied.
    ///
    /// # Errors
    /// `Unavailable`.
    pub async fn prune_member_changes(
        &self,
        group_id: &str,
        targets: &[String],
    ) -> Result<(), StoreError> {
        let (id, targets) = (group_id.to_owned(), targets.to_vec());
        self.run(move |conn| prune(conn, &id, &targets)).await
    }
}
