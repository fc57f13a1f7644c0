//! Target keys: the normalised key each resource holds (`target_key`) or intends to create (an
//! intent's `"creating"` key) in a target, kept in `target_state.key_norm`. No two resources
//! may hold or intend the same key in one target: the unique index `target_state_key_norm`
//! decides it (a check beforehand only finds the holder for the error message), so a second
//! resource whose DN renders the same cannot even record its intent. How a key is normalised
//! is the target's business (LDAP: `mapping::dn::normalize_dn`; SQL: table and key as the
//! database compares them); the reconciler registers it per target with
//! [`super::Store::set_key_norm`]. Must not decide what a conflict does to the outbox row.
//!
//! A rename reserves its new key in `target_key_reservations` (at most one per resource and
//! target) while the state keeps holding the old key, where the entry still is, until the
//! settle records where the entry ended up and drops the reservation. A key is held or
//! reserved by at most one resource per target: the two unique indexes decide among holders
//! and among reservers; held against reserved is checked under a per-key lock ([`lock_key`])
//! by every writer of either.

use super::schema::{target_key_reservations, target_state};
use super::{decode_text, encode_text, write_tx, DbConnection, StoreError};
use crate::bookkeeping::{Bookkeeping, INTENT_MARKER};
use crate::scim::resource::ResourceType;
use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use std::sync::Arc;

/// How one target normalises a key of a user or group for the uniqueness index.
pub type KeyNormFn = Arc<dyn Fn(ResourceType, &str) -> String + Send + Sync>;

/// Name of the unique index (PostgreSQL reports it; SQLite names its columns).
const INDEX: &str = "target_state_key_norm";

/// Name of the reservations' primary key (PostgreSQL's default name).
const RESERVED_INDEX: &str = "target_key_reservations_pkey";

/// The key an intent names (`extra.creating`), if the state is an intent.
pub(crate) fn intent_key(extra: Option<&Bookkeeping>) -> Option<&str> {
    extra.and_then(|e| e.creating.as_deref())
}

/// The resource other than `except` that holds (or intends) `key_norm` in `target`, or else
/// the one that reserved it for a rename.
pub(crate) fn holder(
    conn: &mut DbConnection,
    target: &str,
    key_norm: &str,
    except: &str,
) -> Result<Option<String>, StoreError> {
    let held = target_state::table
        .filter(target_state::target.eq(target))
        .filter(target_state::key_norm.eq(encode_text(key_norm)))
        .filter(target_state::resource_id.ne(except))
        .select(target_state::resource_id)
        .first(conn)
        .optional()?;
    if held.is_some() {
        return Ok(held);
    }
    Ok(target_key_reservations::table
        .filter(target_key_reservations::target.eq(target))
        .filter(target_key_reservations::key_norm.eq(encode_text(key_norm)))
        .filter(target_key_reservations::resource_id.ne(except))
        .select(target_key_reservations::resource_id)
        .first(conn)
        .optional()?)
}

/// Serialise, until the transaction ends, the writers that check one key of `target` as held
/// against reserved (the two live in different indexes, so neither index decides between
/// them). PostgreSQL: a transaction advisory lock on the key's hash (a collision only
/// serialises more); SQLite: its write lock (`BEGIN IMMEDIATE`) serialises every writer.
/// Lock order: a transaction that locks a `target_state` row does so before this.
fn lock_key(conn: &mut DbConnection, target: &str, key_norm: &str) -> Result<(), StoreError> {
    if let DbConnection::Pg(c) = conn {
        use diesel::sql_types::Text;
        diesel::sql_query("SELECT pg_advisory_xact_lock(hashtext($1), hashtext($2))")
            .bind::<Text, _>(target)
            .bind::<Text, _>(encode_text(key_norm))
            .execute(c)?;
    }
    Ok(())
}

/// `KeyConflict` when another resource holds or reserved `key_norm`, checked under the key's
/// lock ([`lock_key`]); the unique indexes decide races among holders and among reservers
/// (see [`unique_violation`]). Call it inside the transaction that writes the key.
pub(crate) fn check_free(
    conn: &mut DbConnection,
    target: &str,
    resource_id: &str,
    key: &str,
    key_norm: Option<&str>,
) -> Result<(), StoreError> {
    let Some(norm) = key_norm else {
        return Ok(());
    };
    lock_key(conn, target, norm)?;
    match holder(conn, target, norm, resource_id)? {
        Some(h) => Err(StoreError::KeyConflict {
            target: target.to_owned(),
            key: key.to_owned(),
            holder: Some(h),
        }),
        None => Ok(()),
    }
}

/// A write to `target_state` failed: a violation of the key index (a concurrent writer took
/// the key between the check and the write) is a `KeyConflict`, anything else the usual error.
pub(crate) fn unique_violation(e: DieselError, target: &str, key: &str) -> StoreError {
    if let DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, info) = &e {
        let ours = matches!(info.constraint_name(), Some(INDEX | RESERVED_INDEX))
            || info.message().contains("key_norm");
        if ours {
            return StoreError::KeyConflict {
                target: target.to_owned(),
                key: key.to_owned(),
                holder: None,
            };
        }
    }
    e.into()
}

/// The normalised key a resource's state holds now.
pub(crate) fn key_norm_of(
    conn: &mut DbConnection,
    target: &str,
    resource_id: &str,
) -> Result<Option<String>, StoreError> {
    Ok(target_state::table
        .find((target, resource_id))
        .select(target_state::key_norm)
        .first::<Option<String>>(conn)
        .optional()?
        .flatten()
        .map(decode_text))
}

/// Reserve `key` for an existing state before the target renames its entry there: a rename
/// to a key another resource holds, intends or reserved is refused before the target is
/// touched. The state keeps its held key (the entry is still there until the rename
/// happened); the reservation replaces the resource's earlier one, and the key is noted in
/// `extra` as [`Bookkeeping::renaming`] (dropped by the settle, which replaces `extra`: a
/// later apply, another rename or a delete, of a resource whose rename was interrupted after
/// the target moved the entry finds it there). Does nothing when the resource has no state
/// in `target`.
pub(crate) fn reserve(
    conn: &mut DbConnection,
    target: &str,
    resource_id: &str,
    key: &str,
    key_norm: &str,
) -> Result<(), StoreError> {
    write_tx(conn, |conn| {
        // The state row first (lock order, see `lock_key`).
        let row = target_state::table.find((target, resource_id));
        let extra: Option<Option<String>> = match conn {
            DbConnection::Pg(c) => row
                .select(target_state::extra)
                .for_update()
                .first(c)
                .optional()?,
            DbConnection::Sqlite(c) => row.select(target_state::extra).first(c).optional()?,
        };
        let Some(extra) = extra else {
            return Ok(());
        };
        check_free(conn, target, resource_id, key, Some(key_norm))?;
        release(conn, target, resource_id)?;
        diesel::insert_into(target_key_reservations::table)
            .values((
                target_key_reservations::target.eq(target),
                target_key_reservations::key_norm.eq(encode_text(key_norm)),
                target_key_reservations::resource_id.eq(resource_id),
            ))
            .execute(conn)
            .map_err(|e| unique_violation(e, target, key))?;
        let mut book = extra
            .and_then(|e| Bookkeeping::from_text(&e).ok())
            .unwrap_or_default();
        book.renaming = Some(key.to_owned());
        diesel::update(row)
            .set(target_state::extra.eq(Some(book.to_text())))
            .execute(conn)?;
        Ok(())
    })
}

/// Drop the resource's rename reservation in `target`, if any: its settle recorded where the
/// entry is (the held key), inside the settle's transaction.
pub(crate) fn release(
    conn: &mut DbConnection,
    target: &str,
    resource_id: &str,
) -> Result<(), StoreError> {
    diesel::delete(
        target_key_reservations::table
            .filter(target_key_reservations::target.eq(target))
            .filter(target_key_reservations::resource_id.eq(resource_id)),
    )
    .execute(conn)?;
    Ok(())
}

/// Fill `key_norm` where it is missing (rows written before the index existed), one row per
/// transaction. A row whose key another resource already holds is left without one and
/// returned as `(resource, holder, key)`: two resources already share an entry, which an
/// operator must sort out (the next apply of that resource fails as a conflict).
pub(crate) fn fill(
    conn: &mut DbConnection,
    target: &str,
    norm: &KeyNormFn,
) -> Result<Vec<(String, String, String)>, StoreError> {
    let rows: Vec<(String, String, Option<String>, Option<String>)> = target_state::table
        .filter(target_state::target.eq(target))
        .filter(target_state::key_norm.is_null())
        .filter(
            target_state::target_key
                .is_not_null()
                .or(target_state::extra.like(format!("%{INTENT_MARKER}%"))),
        )
        .order(target_state::resource_id)
        .select((
            target_state::resource_id,
            target_state::resource_type,
            target_state::target_key,
            target_state::extra,
        ))
        .load(conn)?;
    let mut duplicates = Vec::new();
    for (id, ty, stored_key, stored_extra) in rows {
        let Some(ty) = ResourceType::parse(&ty) else {
            continue;
        };
        let key = match &stored_key {
            Some(k) => decode_text(k.clone()),
            None => {
                let extra = stored_extra
                    .as_deref()
                    .and_then(|e| Bookkeeping::from_text(e).ok());
                match intent_key(extra.as_ref()) {
                    Some(k) => k.to_owned(),
                    None => continue,
                }
            }
        };
        let key_norm = norm(ty, &key);
        let read = Read {
            target_key: stored_key.as_deref(),
            extra: stored_extra.as_deref(),
        };
        match fill_one(conn, target, &id, &key, &key_norm, &read) {
            Ok(()) => {}
            Err(StoreError::KeyConflict { holder, .. }) => {
                duplicates.push((id, holder.unwrap_or_default(), key));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(duplicates)
}

/// What [`fill`] read of a row, outside any transaction.
struct Read<'a> {
    target_key: Option<&'a str>,
    extra: Option<&'a str>,
}

/// Set one row's missing `key_norm`, only while the row still has none and still holds (or
/// intends) the key read: a settle that recorded a newer key in between wins (on PostgreSQL
/// the conditions are re-checked once its row lock is released).
fn fill_one(
    conn: &mut DbConnection,
    target: &str,
    resource_id: &str,
    key: &str,
    key_norm: &str,
    read: &Read<'_>,
) -> Result<(), StoreError> {
    write_tx(conn, |conn| {
        // The state row first (lock order, see `lock_key`).
        if let DbConnection::Pg(c) = conn {
            target_state::table
                .find((target, resource_id))
                .select(target_state::resource_id)
                .for_update()
                .first::<String>(c)
                .optional()?;
        }
        check_free(conn, target, resource_id, key, Some(key_norm))?;
        let row = target_state::table
            .filter(target_state::target.eq(target))
            .filter(target_state::resource_id.eq(resource_id))
            .filter(target_state::key_norm.is_null());
        let set = target_state::key_norm.eq(Some(encode_text(key_norm)));
        // One conditional statement: PostgreSQL re-checks it after a concurrent writer's lock.
        match (read.target_key, read.extra) {
            (Some(k), _) => diesel::update(row.filter(target_state::target_key.eq(k)))
                .set(set)
                .execute(conn),
            (None, Some(e)) => diesel::update(
                row.filter(target_state::target_key.is_null())
                    .filter(target_state::extra.eq(e)),
            )
            .set(set)
            .execute(conn),
            (None, None) => return Ok(()),
        }
        .map_err(|e| unique_violation(e, target, key))?;
        Ok(())
    })
}
