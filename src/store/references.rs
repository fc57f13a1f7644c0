//! The reference index: which users each user's reference rules (e.g. `manager`) name in each
//! target, and whom they resolved to at its last render, so that a user whose entry is created,
//! renamed, moved or deleted re-queues exactly the holders of references to it (O(holders)
//! through an index, never a scan of all users). The reconciler records a holder's references
//! before it reads the referenced users' keys (see `reconcile::worker::prepare` for why
//! that order makes a concurrent rename impossible to miss). Must not decide which attributes
//! are references: the mapping does, the reconciler passes the pairs.

use super::schema::{reference_index, resources, target_state, user_references};
use super::{encode_text, has_nul, normalise, read_tx, write_tx, DbConnection, Store, StoreError};
use crate::scim::resource::ResourceType;
use diesel::prelude::*;
use std::collections::BTreeSet;

/// One reference of a holder: `(by, value, resolved_id)`, `by` as [`Store::find_user`] takes
/// it (any case), `value` as the resource holds it.
pub type Reference = (String, String, Option<String>);

/// A row's `(ref_by, ref_value, resolved_id)`, compared as the store compares the value.
type Row = (String, String, Option<String>);

/// The stored form: `by` lower case, the value as its column in `resources` holds it.
fn stored(references: &[Reference]) -> BTreeSet<Row> {
    references
        .iter()
        .filter(|(by, value, _)| !has_nul(by) && !has_nul(value))
        .filter_map(|(by, value, resolved)| {
            let by = by.to_ascii_lowercase();
            let value = match by.as_str() {
                "id" => value.clone(),
                "username" => normalise(value),
                "externalid" => encode_text(value),
                _ => return None,
            };
            Some((by, value, resolved.clone()))
        })
        .collect()
}

fn rows_of(
    conn: &mut DbConnection,
    target: &str,
    holder_id: &str,
) -> Result<BTreeSet<Row>, StoreError> {
    Ok(user_references::table
        .filter(user_references::target.eq(target))
        .filter(user_references::holder_id.eq(holder_id))
        .select((
            user_references::ref_by,
            user_references::ref_value,
            user_references::resolved_id,
        ))
        .load::<Row>(conn)?
        .into_iter()
        .collect())
}

/// Replace a holder's rows. A concurrent writer of the same rows (a rebuild's backfill and
/// the holder's own render) is met with `ON CONFLICT` instead of a key violation: a render
/// (`newer`) sets its resolution, a backfill leaves the row it met.
fn replace_rows(
    conn: &mut DbConnection,
    target: &str,
    holder_id: &str,
    rows: &BTreeSet<Row>,
    newer: bool,
) -> Result<(), StoreError> {
    diesel::delete(
        user_references::table
            .filter(user_references::target.eq(target))
            .filter(user_references::holder_id.eq(holder_id)),
    )
    .execute(conn)?;
    for (by, value, resolved) in rows {
        use diesel::sql_types::{Nullable, Text};
        let on_conflict = if newer {
            "DO UPDATE SET resolved_id = excluded.resolved_id"
        } else {
            "DO NOTHING"
        };
        let columns = "INSERT INTO user_references (target, holder_id, ref_by, ref_value, \
                       resolved_id)";
        let conflict = "ON CONFLICT (target, holder_id, ref_by, ref_value)";
        macro_rules! run {
            ($c:expr, $values:expr) => {
                diesel::sql_query(format!(
                    "{columns} VALUES {} {conflict} {on_conflict}",
                    $values
                ))
                .bind::<Text, _>(target)
                .bind::<Text, _>(holder_id)
                .bind::<Text, _>(by)
                .bind::<Text, _>(value)
                .bind::<Nullable<Text>, _>(resolved.as_deref())
                .execute($c)?
            };
        }
        match &mut *conn {
            DbConnection::Pg(c) => run!(c, "($1, $2, $3, $4, $5)"),
            DbConnection::Sqlite(c) => run!(c, "(?, ?, ?, ?, ?)"),
        };
    }
    Ok(())
}

/// Whether recording `references` for `holder_id` would change its rows.
pub(crate) fn differs(
    conn: &mut DbConnection,
    target: &str,
    holder_id: &str,
    references: &[Reference],
) -> Result<bool, StoreError> {
    if has_nul(target) || has_nul(holder_id) {
        return Ok(false);
    }
    Ok(rows_of(conn, target, holder_id)? != stored(references))
}

/// See [`Store::record_references`].
pub(crate) fn record(
    conn: &mut DbConnection,
    target: &str,
    holder_id: &str,
    references: &[Reference],
) -> Result<(), StoreError> {
    if has_nul(target) || has_nul(holder_id) {
        return Ok(());
    }
    let want = stored(references);
    // Most renders name what the last one did: a read, and no write lock.
    if rows_of(conn, target, holder_id)? == want {
        return Ok(());
    }
    write_tx(conn, |conn| {
        lock_resolved_states(conn, target, &want)?;
        replace_rows(conn, target, holder_id, &want, true)
    })
}

/// PostgreSQL: share-lock the states of the users these references resolve to (by id), so a
/// settle changing one of their keys (which locks its state row first and looks its holders
/// up in the same transaction, `outbox::settle_applied`) either sees this record or commits
/// before it, and then this holder's render reads the new key.
fn lock_resolved_states(
    conn: &mut DbConnection,
    target: &str,
    rows: &BTreeSet<Row>,
) -> Result<(), StoreError> {
    let DbConnection::Pg(c) = conn else {
        return Ok(());
    };
    let mut ids: Vec<&str> = rows.iter().filter_map(|(_, _, r)| r.as_deref()).collect();
    ids.sort_unstable();
    ids.dedup();
    for id in ids {
        target_state::table
            .find((target, id))
            .select(target_state::applied_version)
            .for_share()
            .first::<i64>(c)
            .optional()?;
    }
    Ok(())
}

/// See [`Store::users_referencing`].
pub(crate) fn referencing(
    conn: &mut DbConnection,
    target: &str,
    user_id: &str,
) -> Result<Vec<String>, StoreError> {
    if has_nul(target) || has_nul(user_id) {
        return Ok(Vec::new());
    }
    read_tx(conn, |conn| {
        let mut holders: BTreeSet<String> = user_references::table
            .filter(user_references::target.eq(target))
            .filter(user_references::resolved_id.eq(user_id))
            .select(user_references::holder_id)
            .load::<String>(conn)?
            .into_iter()
            .collect();
        // Those that name it now (unresolved before, or resolved elsewhere): only while it is
        // live, since a reference never resolves to a tombstone.
        let user: Option<(String, Option<String>)> = resources::table
            .filter(resources::id.eq(user_id))
            .filter(resources::resource_type.eq(ResourceType::User.as_str()))
            .filter(resources::deleted.eq(false))
            .select((resources::name_norm, resources::external_id))
            .first(conn)
            .optional()?;
        if let Some((name_norm, external_id)) = user {
            let mut names = vec![("id", user_id.to_owned()), ("username", name_norm)];
            if let Some(e) = external_id {
                names.push(("externalid", e));
            }
            for (by, value) in names {
                holders.extend(
                    user_references::table
                        .filter(user_references::target.eq(target))
                        .filter(user_references::ref_by.eq(by))
                        .filter(user_references::ref_value.eq(value))
                        .select(user_references::holder_id)
                        .load::<String>(conn)?,
                );
            }
        }
        Ok(holders.into_iter().collect())
    })
}

impl Store {
    /// Record the references a user's render of `target` needs (`(by, value, resolved_id)`,
    /// `by` as [`Store::find_user`] takes it), replacing those of its previous render; an
    /// empty list clears them (a deleted user). Writes only when they changed.
    ///
    /// # Errors
    /// `Unavailable`.
    pub async fn record_references(
        &self,
        target: &str,
        holder_id: &str,
        references: Vec<Reference>,
    ) -> Result<(), StoreError> {
        let (target, holder) = (target.to_owned(), holder_id.to_owned());
        self.run(move |conn| record(conn, &target, &holder, &references))
            .await
    }

    /// The users whose recorded references in `target` resolved to `user_id` at their last
    /// render, or name it now (its id, userName or externalId, while it is live), in id order.
    ///
    /// # Errors
    /// `Unavailable`.
    pub async fn users_referencing(
        &self,
        target: &str,
        user_id: &str,
    ) -> Result<Vec<String>, StoreError> {
        let (target, id) = (target.to_owned(), user_id.to_owned());
        self.run(move |conn| referencing(conn, &target, &id)).await
    }

    /// The reference rules the index of `target` was last filled for (see
    /// [`Store::reset_reference_index`]); `None` when it never was.
    ///
    /// # Errors
    /// `Unavailable`.
    pub async fn reference_index_rules(&self, target: &str) -> Result<Option<String>, StoreError> {
        let target = target.to_owned();
        self.run(move |conn| {
            Ok(reference_index::table
                .find(&target)
                .select(reference_index::rules)
                .first(conn)
                .optional()?)
        })
        .await
    }

    /// Start rebuilding the index of `target` for `rules`: drop every row, so the holders'
    /// next renders (and the caller's pass over the live users) fill it again.
    ///
    /// # Errors
    /// `Unavailable`.
    pub async fn reset_reference_index(&self, target: &str) -> Result<(), StoreError> {
        let target = target.to_owned();
        self.run(move |conn| {
            write_tx(conn, |conn| {
                diesel::delete(user_references::table.filter(user_references::target.eq(&target)))
                    .execute(conn)?;
                diesel::delete(reference_index::table.find(&target)).execute(conn)?;
                Ok(())
            })
        })
        .await
    }

    /// During a rebuild: record a holder's references unless its own render already did (a
    /// render is newer than the rebuild's read of the holder).
    ///
    /// # Errors
    /// `Unavailable`.
    pub async fn backfill_references(
        &self,
        target: &str,
        holder_id: &str,
        references: Vec<Reference>,
    ) -> Result<(), StoreError> {
        let (target, holder) = (target.to_owned(), holder_id.to_owned());
        self.run(move |conn| {
            let want = stored(&references);
            if want.is_empty() || has_nul(&target) || has_nul(&holder) {
                return Ok(());
            }
            write_tx(conn, |conn| {
                if rows_of(conn, &target, &holder)?.is_empty() {
                    replace_rows(conn, &target, &holder, &want, false)?;
                }
                Ok(())
            })
        })
        .await
    }

    /// Mark the index of `target` as filled for `rules` (after a rebuild's pass).
    ///
    /// # Errors
    /// `Unavailable`.
    pub async fn finish_reference_index(
        &self,
        target: &str,
        rules: &str,
    ) -> Result<(), StoreError> {
        let (target, rules) = (target.to_owned(), rules.to_owned());
        self.run(move |conn| {
            write_tx(conn, |conn| {
                diesel::delete(reference_index::table.find(&target)).execute(conn)?;
                diesel::insert_into(reference_index::table)
                    .values((
                        reference_index::target.eq(&target),
                        reference_index::rules.eq(&rules),
                    ))
                    .execute(conn)?;
                Ok(())
            })
        })
        .await
    }
}
