//! Batch queries for the reconciler: the target states of many resources, the `active` flags of
//! many users, enqueueing many resources, and expediting rows waiting out a backoff. A group of
//! 50,000 members costs a handful of queries instead of one per member. Chunked so a query never
//! exceeds SQLite's bound-parameter limit. Must not decide retry policy or what to apply.

use super::models::TargetStateRow;
use super::schema::{outbox, resources, target_state};
use super::{outbox as outbox_queries, read_tx, DbConnection, Store, StoreError, TargetState};
use crate::scim::resource::ResourceType;
use diesel::prelude::*;
use std::collections::HashMap;

/// Ids per query: well under SQLite's default limit of 32,766 bound parameters.
const CHUNK: usize = 500;

fn states_of(
    conn: &mut DbConnection,
    target: &str,
    ids: &[String],
) -> Result<HashMap<String, TargetState>, StoreError> {
    read_tx(conn, |conn| {
        let mut out = HashMap::with_capacity(ids.len());
        for chunk in ids.chunks(CHUNK) {
            let rows: Vec<TargetStateRow> = target_state::table
                .filter(target_state::target.eq(target))
                .filter(target_state::resource_id.eq_any(chunk))
                .select(TargetStateRow::as_select())
                .load(conn)?;
            for row in rows {
                let state = row.into_state()?;
                out.insert(state.resource_id.clone(), state);
            }
        }
        Ok(out)
    })
}

fn active_of(conn: &mut DbConnection, ids: &[String]) -> Result<HashMap<String, bool>, StoreError> {
    read_tx(conn, |conn| {
        let mut out = HashMap::with_capacity(ids.len());
        for chunk in ids.chunks(CHUNK) {
            // Groups too (nested groups): a group's row is always active.
            let rows: Vec<(String, bool)> = resources::table
                .filter(resources::deleted.eq(false))
                .filter(resources::id.eq_any(chunk))
                .select((resources::id, resources::active))
                .load(conn)?;
            out.extend(rows);
        }
        Ok(out)
    })
}

impl Store {
    /// The recorded states in `target` of the given resources, by resource id (resources
    /// without a state are absent from the map).
    ///
    /// # Errors
    /// `Unavailable`.
    pub async fn target_states_of(
        &self,
        target: &str,
        resource_ids: &[String],
    ) -> Result<HashMap<String, TargetState>, StoreError> {
        let (target, ids) = (target.to_owned(), resource_ids.to_vec());
        self.run(move |conn| states_of(conn, &target, &ids)).await
    }

    /// The `active` flag of the given live users, by id (unknown or deleted ids are absent; a
    /// live group, a nested member, is active).
    ///
    /// # Errors
    /// `Unavailable`.
    pub async fn active_flags(
        &self,
        user_ids: &[String],
    ) -> Result<HashMap<String, bool>, StoreError> {
        let ids = user_ids.to_vec();
        self.run(move |conn| active_of(conn, &ids)).await
    }

    /// After the settle of a member (a user or a group) whose key (or `uid`) appeared, changed
    /// or vanished: queue again, for `target`, the live groups it is a direct member of, each
    /// in a transaction of its own with the member marked dirty in it (`store::members`: an
    /// O(change) apply of the group looks at the member, even at a group version it applied
    /// already), and for a user the groups it is in through nesting (flattening targets apply
    /// their whole membership: queued, not marked). The settle queued them already, in its own
    /// transaction, as they were when it read them; this look after its commit finds a
    /// membership committed meanwhile whose group applied before the settle committed (it read
    /// the old key, or none). Returns how many rows were queued.
    ///
    /// # Errors
    /// `Unavailable`.
    pub async fn requeue_groups_of_member(
        &self,
        target: &str,
        member_type: ResourceType,
        member_id: &str,
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        let (target, member) = (target.to_owned(), member_id.to_owned());
        self.run(move |conn| {
            use super::schema::group_members;
            let Some(seq) = resources::table
                .filter(resources::id.eq(&member))
                .filter(resources::resource_type.eq(member_type.as_str()))
                .select(resources::seq)
                .first::<i64>(conn)
                .optional()?
            else {
                return Ok(0);
            };
            let direct: Vec<(i64, String)> = group_members::table
                .inner_join(resources::table.on(resources::seq.eq(group_members::group_seq)))
                .filter(group_members::member_seq.eq(seq))
                .filter(resources::deleted.eq(false))
                .order(group_members::group_seq)
                .select((resources::seq, resources::id))
                .load(conn)?;
            let mut indirect: Vec<String> = Vec::new();
            if member_type == ResourceType::User && !direct.is_empty() {
                let seqs: Vec<i64> = direct.iter().map(|(s, _)| *s).collect();
                for chunk in super::nested::ancestors(conn, &seqs)?.chunks(CHUNK) {
                    let rows: Vec<String> = resources::table
                        .filter(resources::seq.eq_any(chunk))
                        .filter(resources::deleted.eq(false))
                        .order(resources::seq)
                        .select(resources::id)
                        .load(conn)?;
                    indirect.extend(rows);
                }
            }
            let mut queued = 0u64;
            let marked = direct.into_iter().map(|(_, id)| (id, true));
            for (group, mark) in marked.chain(indirect.into_iter().map(|id| (id, false))) {
                let done = super::write_tx(conn, |conn| {
                    outbox_queries::enqueue(
                        conn,
                        &target,
                        ResourceType::Group,
                        &group,
                        "membership",
                        now_ms,
                    )?;
                    if mark {
                        // After the outbox row (the lock order of a settle's marks).
                        super::members::mark_dirty(
                            conn,
                            &target,
                            std::slice::from_ref(&group),
                            &member,
                        )?;
                    }
                    Ok(())
                });
                match done {
                    Ok(()) => queued += 1,
                    // The group is gone meanwhile.
                    Err(StoreError::Scim(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(queued)
        })
        .await
    }

    /// Queue many resources of one type for one target (each coalescing like
    /// [`Store::enqueue`]; resources that vanished meanwhile are skipped). Returns how many
    /// were queued.
    ///
    /// # Errors
    /// `Unavailable`.
    pub async fn enqueue_many(
        &self,
        target: &str,
        resource_type: ResourceType,
        resource_ids: &[String],
        operation: &str,
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        let (target, ids, operation) = (
            target.to_owned(),
            resource_ids.to_vec(),
            operation.to_owned(),
        );
        self.run(move |conn| {
            let mut queued = 0u64;
            for id in &ids {
                match outbox_queries::enqueue(conn, &target, resource_type, id, &operation, now_ms)
                {
                    Ok(()) => queued += 1,
                    Err(StoreError::Scim(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(queued)
        })
        .await
    }

    /// One page of `target`'s recorded states: those whose resource id sorts after `after`
    /// (keyset paging, `""` for the first page), at most `limit`, in resource id order.
    /// `verify` walks a large target in these pages.
    ///
    /// # Errors
    /// `Unavailable`.
    pub async fn target_states_page(
        &self,
        target: &str,
        after: &str,
        limit: i64,
    ) -> Result<Vec<TargetState>, StoreError> {
        let (target, after) = (target.to_owned(), after.to_owned());
        self.run(move |conn| {
            target_state::table
                .filter(target_state::target.eq(&target))
                .filter(target_state::resource_id.gt(&after))
                .order(target_state::resource_id)
                .limit(limit)
                .select(TargetStateRow::as_select())
                .load(conn)?
                .into_iter()
                .map(TargetStateRow::into_state)
                .collect()
        })
        .await
    }

    /// One page of the ids of the live resources of a type whose id sorts after `after`
    /// (keyset paging, `""` for the first page), at most `limit`, in id order.
    ///
    /// # Errors
    /// `Unavailable`.
    pub async fn live_ids_page(
        &self,
        resource_type: ResourceType,
        after: &str,
        limit: i64,
    ) -> Result<Vec<String>, StoreError> {
        let after = after.to_owned();
        self.run(move |conn| {
            Ok(resources::table
                .filter(resources::resource_type.eq(resource_type.as_str()))
                .filter(resources::deleted.eq(false))
                .filter(resources::id.gt(&after))
                .order(resources::id)
                .limit(limit)
                .select(resources::id)
                .load(conn)?)
        })
        .await
    }

    /// Make every pending row of `target` that waits out a backoff due at `now_ms` (claimed
    /// rows are left alone). Returns how many rows moved. Used by `run_pending` and the
    /// operator's "retry now".
    ///
    /// # Errors
    /// `Unavailable`.
    pub async fn expedite(&self, target: &str, now_ms: i64) -> Result<u64, StoreError> {
        let target = target.to_owned();
        self.run(move |conn| {
            // Due times and leases are database time (`dbclock`).
            let now_ms = super::dbclock::db_ms(now_ms);
            let n = diesel::update(
                outbox::table
                    .filter(outbox::target.eq(&target))
                    .filter(outbox::state.eq("pending"))
                    .filter(outbox::next_attempt_ms.gt(now_ms))
                    .filter(
                        outbox::claimed_until_ms
                            .is_null()
                            .or(outbox::claimed_until_ms.lt(now_ms)),
                    ),
            )
            .set(outbox::next_attempt_ms.eq(now_ms))
            .execute(conn)?;
            Ok(u64::try_from(n).unwrap_or(0))
        })
        .await
    }
}
