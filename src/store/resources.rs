//! Users, groups and membership rows: every mutation is one write transaction that writes the
//! resource (version + 1), its outbox rows and its audit row. Must not decide SCIM semantics
//! (the closures and `MemberOp`s come from the SCIM layer) and must not load a group's members
//! unless the operation needs them.

use super::history::audit;
use super::models::{NewEmail, NewMember, NewResource, ResourceRow};
use super::outbox::enqueue_all;
use super::schema::{group_members, resource_emails, resources};
use super::{
    decode_text, encode_text, has_nul, normalise, read_tx, write_tx_for, AuditCtx, DbConnection,
    GroupUpdate, StoreError, StoredGroup, StoredUser, UserUpdate,
};
use crate::scim::filter::Filter;
use crate::scim::patch::MemberOp;
use crate::scim::resource::{
    render_group, render_user, GroupInput, GroupRef, MemberRef, Meta, ResourceType, UserInput,
};
use crate::scim::ScimError;
use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use serde_json::{json, Map, Value};
use std::collections::{BTreeSet, HashMap, HashSet};

/// Rows read per step when a list has to scan (never every row in memory at once).
const SCAN_CHUNK: i64 = 500;
/// Ids per `IN (...)` list.
const ID_CHUNK: usize = 500;

/// A page of rows, before conversion into public types.
#[derive(Default)]
pub(crate) struct RowPage {
    pub items: Vec<ResourceRow>,
    pub total: u64,
}

fn not_found(resource_type: ResourceType) -> StoreError {
    StoreError::Scim(ScimError::not_found(format!(
        "{} not found",
        resource_type.as_str()
    )))
}

/// A unique violation on a resource write is the 409; anything else is the database's.
fn map_unique(e: DieselError, resource_type: ResourceType) -> StoreError {
    match e {
        DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _) => {
            let what = match resource_type {
                ResourceType::User => "a User with this userName already exists",
                ResourceType::Group => "a Group with this displayName already exists",
            };
            StoreError::Scim(ScimError::uniqueness(what))
        }
        other => other.into(),
    }
}

fn body_text(data: &Map<String, Value>) -> Result<String, StoreError> {
    serde_json::to_string(data)
        .map_err(|e| StoreError::Other(format!("cannot serialise resource body: {e}")))
}

/// A resource by id, live only unless `include_deleted`.
pub(crate) fn get(
    conn: &mut DbConnection,
    resource_type: ResourceType,
    id: &str,
    include_deleted: bool,
) -> Result<Option<ResourceRow>, StoreError> {
    if has_nul(id) {
        return Ok(None);
    }
    let mut query = resources::table
        .filter(resources::id.eq(id))
        .filter(resources::resource_type.eq(resource_type.as_str()))
        .select(ResourceRow::as_select())
        .into_boxed();
    if !include_deleted {
        query = query.filter(resources::deleted.eq(false));
    }
    Ok(query.first(conn).optional()?)
}

/// A live resource by id, row-locked on PostgreSQL for a read-modify-write (R-28; SQLite's
/// `BEGIN IMMEDIATE` already serialises writers).
fn get_for_update(
    conn: &mut DbConnection,
    resource_type: ResourceType,
    id: &str,
) -> Result<Option<ResourceRow>, StoreError> {
    if has_nul(id) {
        return Ok(None);
    }
    if let DbConnection::Pg(c) = conn {
        resources::table
            .filter(resources::id.eq(id))
            .select(resources::seq)
            .for_update()
            .first::<i64>(c)
            .optional()?;
    }
    get(conn, resource_type, id, false)
}

/// Lock a resource row by id (any state) on PostgreSQL; returns its type, sequence and version.
pub(crate) fn lock_by_id(
    conn: &mut DbConnection,
    id: &str,
) -> Result<Option<(String, i64, i64)>, StoreError> {
    if has_nul(id) {
        return Ok(None);
    }
    let query = resources::table.filter(resources::id.eq(id)).select((
        resources::resource_type,
        resources::seq,
        resources::version,
    ));
    let row = match conn {
        DbConnection::Pg(c) => query.for_update().first(c).optional()?,
        DbConnection::Sqlite(c) => query.first(c).optional()?,
    };
    Ok(row)
}

fn lock_seq(conn: &mut DbConnection, seq: i64) -> Result<(), StoreError> {
    if let DbConnection::Pg(c) = conn {
        resources::table
            .find(seq)
            .select(resources::seq)
            .for_update()
            .first::<i64>(c)
            .optional()?;
    }
    Ok(())
}

/// Lock a group's row (PostgreSQL) to change its membership without touching its own
/// attributes: `FOR NO KEY UPDATE`, which does not conflict with the `FOR KEY SHARE` a PATCH
/// making the group a member takes (`live_member_seqs`). So deleting a member of a group
/// (which locks its groups in ascending `seq`) and a PUT of another of those groups (which
/// holds its own row and key-share-locks its member groups) never wait for each other on the
/// member group's row: with both locks exclusive they deadlocked (u in b and d, d in b,
/// seq(d) < seq(b); test:
/// `store::tests::races::races_deleting_a_member_and_putting_a_group_with_its_other_group_do_not_deadlock`).
fn lock_group_seq(conn: &mut DbConnection, seq: i64) -> Result<(), StoreError> {
    if let DbConnection::Pg(c) = conn {
        resources::table
            .find(seq)
            .select(resources::seq)
            .for_no_key_update()
            .first::<i64>(c)
            .optional()?;
    }
    Ok(())
}

/// Lock order on PostgreSQL: a group before its members (users, and nested groups), everywhere.
/// A group PATCH locks the group and then (share) its members; deleting a user or a group must
/// lock the groups it is a member of, so it locks them first, in ascending `seq`, and itself
/// after (the other order deadlocked against a concurrent PATCH of one of the groups, 40P01
/// and a 503; test: `store::tests::races::deleting_a_user_and_patching_its_group_do_not_deadlock`).
/// A membership added between the read of the groups and the member's lock (it needs the
/// member's share lock, so none can be added after) shows in the re-read: then the locks taken
/// since the savepoint are given back and the round starts over.
fn lock_groups_before_member(
    conn: &mut DbConnection,
    resource_type: ResourceType,
    id: &str,
) -> Result<(), StoreError> {
    use diesel::connection::SimpleConnection;
    if !matches!(conn, DbConnection::Pg(_)) || has_nul(id) {
        return Ok(());
    }
    let Some(member_seq) = resources::table
        .filter(resources::id.eq(id))
        .filter(resources::resource_type.eq(resource_type.as_str()))
        .select(resources::seq)
        .first::<i64>(conn)
        .optional()?
    else {
        return Ok(());
    };
    let groups_of = |conn: &mut DbConnection| -> Result<Vec<i64>, StoreError> {
        Ok(group_members::table
            .filter(group_members::member_seq.eq(member_seq))
            .select(group_members::group_seq)
            .order(group_members::group_seq)
            .load(conn)?)
    };
    for _ in 0..8 {
        let groups = groups_of(conn)?;
        conn.batch_execute("SAVEPOINT scim_lock_order")?;
        for &g in &groups {
            lock_group_seq(conn, g)?;
        }
        lock_seq(conn, member_seq)?;
        let now: HashSet<i64> = groups_of(conn)?.into_iter().collect();
        if now.iter().all(|g| groups.binary_search(g).is_ok()) {
            conn.batch_execute("RELEASE SAVEPOINT scim_lock_order")?;
            return Ok(());
        }
        conn.batch_execute("ROLLBACK TO SAVEPOINT scim_lock_order")?;
    }
    // Memberships kept changing under us: go on in the old order (a deadlock here is answered
    // 503 and retried by the IdP).
    Ok(())
}

fn seq_of(conn: &mut DbConnection, id: &str) -> Result<i64, StoreError> {
    Ok(resources::table
        .filter(resources::id.eq(id))
        .select(resources::seq)
        .first(conn)?)
}

/// Replace the `emails.value` lookup rows of a resource.
fn write_emails(conn: &mut DbConnection, seq: i64, emails: &[String]) -> Result<(), StoreError> {
    diesel::delete(resource_emails::table.filter(resource_emails::resource_seq.eq(seq)))
        .execute(conn)?;
    let values: BTreeSet<String> = emails
        .iter()
        .filter(|e| !e.is_empty())
        .map(|e| normalise(e))
        .collect();
    for value in &values {
        diesel::insert_into(resource_emails::table)
            .values(NewEmail {
                resource_seq: seq,
                value_norm: value,
            })
            .execute(conn)?;
    }
    Ok(())
}

/// Insert a user; see [`super::Store::create_user`].
pub(crate) fn create_user(
    conn: &mut DbConnection,
    targets: &[String],
    input: UserInput,
    password_hash: Option<String>,
    ctx: &AuditCtx,
) -> Result<StoredUser, StoreError> {
    let UserInput {
        mut data,
        user_name,
        external_id,
        active,
        emails,
        password: _,
    } = input;
    // Defence in depth: a clear password never reaches a table.
    data.remove("password");
    let id = uuid::Uuid::new_v4().to_string();
    let body = body_text(&data)?;
    let name_norm = normalise(&user_name);
    let active = active.unwrap_or(true);
    write_tx_for(conn, ctx, |conn| {
        diesel::insert_into(resources::table)
            .values(NewResource {
                id: &id,
                resource_type: ResourceType::User.as_str(),
                version: 1,
                created_ms: ctx.now_ms,
                modified_ms: ctx.now_ms,
                data: &body,
                name: &encode_text(&user_name),
                name_norm: &name_norm,
                external_id: external_id.as_deref().map(encode_text).as_deref(),
                active,
                password_hash: password_hash.as_deref(),
                deleted: false,
                deleted_ms: None,
            })
            .execute(conn)
            .map_err(|e| map_unique(e, ResourceType::User))?;
        let seq = seq_of(conn, &id)?;
        write_emails(conn, seq, &emails)?;
        enqueue_all(conn, targets, ResourceType::User, &id, 1, "create", ctx)?;
        audit(conn, ctx, ResourceType::User, &id, "create", 1, None)
    })?;
    Ok(StoredUser {
        id,
        meta: Meta {
            created_ms: ctx.now_ms,
            last_modified_ms: ctx.now_ms,
            version: 1,
        },
        data,
        user_name,
        external_id,
        active,
        password_hash,
        deleted: false,
    })
}

/// Read-modify-write of a user; see [`super::Store::update_user`].
pub(crate) fn update_user<F>(
    conn: &mut DbConnection,
    targets: &[String],
    id: &str,
    operation: &str,
    ctx: &AuditCtx,
    f: F,
) -> Result<StoredUser, StoreError>
where
    F: FnOnce(&StoredUser) -> Result<UserUpdate, ScimError>,
{
    write_tx_for(conn, ctx, |conn| {
        let row = get_for_update(conn, ResourceType::User, id)?
            .ok_or_else(|| not_found(ResourceType::User))?;
        let (seq, created_ms, version) = (row.seq, row.created_ms, row.version + 1);
        let current = row.into_user()?;
        let UserUpdate {
            input,
            password_hash,
        } = f(&current)?;
        let UserInput {
            mut data,
            user_name,
            external_id,
            active,
            emails,
            password: _,
        } = input;
        data.remove("password");
        let active = active.unwrap_or(current.active);
        let password_hash = password_hash.or(current.password_hash);
        let body = body_text(&data)?;
        diesel::update(resources::table.find(seq))
            .set((
                resources::data.eq(&body),
                resources::name.eq(encode_text(&user_name)),
                resources::name_norm.eq(normalise(&user_name)),
                resources::external_id.eq(external_id.as_deref().map(encode_text)),
                resources::active.eq(active),
                resources::password_hash.eq(password_hash.as_deref()),
                resources::version.eq(version),
                resources::modified_ms.eq(ctx.now_ms),
            ))
            .execute(conn)
            .map_err(|e| map_unique(e, ResourceType::User))?;
        write_emails(conn, seq, &emails)?;
        // Outbox rows like resource rows: groups before users (a settle queues a user's
        // groups before it locks the user's row, `outbox::settle_applied`).
        if active != current.active {
            enqueue_groups_of(conn, targets, seq, id, ctx)?;
        }
        enqueue_all(
            conn,
            targets,
            ResourceType::User,
            id,
            version,
            "update",
            ctx,
        )?;
        audit(conn, ctx, ResourceType::User, id, operation, version, None)?;
        Ok(StoredUser {
            id: id.to_owned(),
            meta: Meta {
                created_ms,
                last_modified_ms: ctx.now_ms,
                version,
            },
            data,
            user_name,
            external_id,
            active,
            password_hash,
            deleted: false,
        })
    })
}

/// Queue every live group of user `seq` for every target, at the group's current version,
/// in the caller's transaction: a flip of the user's `active` changes what its groups render
/// where inactive users leave groups (`remove_from_groups`, read from the store's live flag).
///
/// Queued here, with the flip, and not only by the user's own apply (which queued them when
/// the `active` it rendered differed from the one it last applied):
/// - that apply may fail for good, and the user stayed in every group (revocation must not
///   fail open, issue 8 item 7; test
///   `reconcile::a_deactivated_user_leaves_its_groups_even_when_its_own_modify_fails`);
/// - it renders the user's latest version only, while a group renders the live flag. The
///   window the kill test hit (issue 8 item 3): the user's deactivation v2 applied and
///   settled; v3 (active) and v4 (inactive) committed while the user's row waited (every
///   worker busy with a batch of 16, e.g. the backlog after a restart), and a group in one of
///   those batches, read between v3 and v4, put the user back; the user's apply then rendered
///   v4, inactive as its last apply (v2): no flip, nothing queued the group, and it kept the
///   user with nothing pending (test
///   `faults::a_group_applied_between_two_activity_flips_of_a_member_drops_it_in_the_end`).
///   Queued in the commit of every flip, a group applied after v4 always follows.
///
/// Takes no group lock (the caller holds the user; groups are locked before users).
fn enqueue_groups_of(
    conn: &mut DbConnection,
    targets: &[String],
    user_seq: i64,
    user_id: &str,
    ctx: &AuditCtx,
) -> Result<(), StoreError> {
    let groups: Vec<i64> = group_members::table
        .filter(group_members::member_seq.eq(user_seq))
        .select(group_members::group_seq)
        .order(group_members::group_seq)
        .load(conn)?;
    // The groups are not locked: this runs with the user locked, and the lock order is groups
    // before users (see `lock_groups_before_member`). An unlocked read of a group's version is
    // enough: the upsert never lowers a row's version, and the worker renders the group as
    // stored when it applies (level-triggered), so a group changed or deleted meanwhile is
    // applied as it is then.
    let mut own = Vec::with_capacity(groups.len());
    for &group_seq in &groups {
        let (group_id, group_version, group_deleted): (String, i64, bool) = resources::table
            .find(group_seq)
            .select((resources::id, resources::version, resources::deleted))
            .first(conn)?;
        if group_deleted {
            continue;
        }
        // The member's rendered value in this group may change (`remove_from_groups`): an
        // O(change) apply looks at it (`store::members`), marked after the outbox row.
        own.push(super::nested::GroupQueue {
            seq: group_seq,
            id: group_id,
            version: group_version,
            operation: "membership",
            dirty: true,
        });
    }
    // Where nested groups are flattened, the user's groups' ancestors render it too (they
    // apply their whole flattened membership, no dirty mark needed). One order for all of
    // them, ascending `seq` (the shared nesting lock before the ancestor read, before any
    // outbox upsert: `with_ancestors`).
    let rows = super::nested::with_ancestors(conn, own, &groups)?;
    super::nested::enqueue_groups(conn, targets, &rows, user_id, ctx)
}

/// Tombstone a user or group; see [`super::Store::delete_user`] / [`super::Store::delete_group`].
pub(crate) fn delete(
    conn: &mut DbConnection,
    targets: &[String],
    resource_type: ResourceType,
    id: &str,
    if_match: Option<i64>,
    ctx: &AuditCtx,
) -> Result<(), StoreError> {
    write_tx_for(conn, ctx, |conn| {
        lock_groups_before_member(conn, resource_type, id)?;
        let row =
            get_for_update(conn, resource_type, id)?.ok_or_else(|| not_found(resource_type))?;
        if let Some(expected) = if_match {
            if expected != row.version {
                return Err(StoreError::Scim(ScimError::precondition_failed(
                    "version mismatch (If-Match)",
                )));
            }
        }
        let (seq, version) = (row.seq, row.version + 1);
        diesel::update(resources::table.find(seq))
            .set((
                resources::deleted.eq(true),
                resources::deleted_ms.eq(Some(ctx.now_ms)),
                resources::version.eq(version),
                resources::modified_ms.eq(ctx.now_ms),
            ))
            .execute(conn)?;
        diesel::delete(resource_emails::table.filter(resource_emails::resource_seq.eq(seq)))
            .execute(conn)?;
        // the user (or group: nested groups) leaves every group it is a member of in
        // this transaction; each group is queued, and their ancestors (flattening targets).
        let groups: Vec<i64> = group_members::table
            .filter(group_members::member_seq.eq(seq))
            .select(group_members::group_seq)
            .order(group_members::group_seq)
            .load(conn)?;
        diesel::delete(group_members::table.filter(group_members::member_seq.eq(seq)))
            .execute(conn)?;
        if !groups.is_empty() {
            // Their ancestors are read below: the shared nesting lock before any outbox upsert.
            super::nested::lock_nesting_shared(conn)?;
        }
        let detail = format!(
            "member {id} removed: {} deleted",
            match resource_type {
                ResourceType::User => "user",
                ResourceType::Group => "group",
            }
        );
        let mut own = Vec::with_capacity(groups.len() + 1);
        for &group_seq in &groups {
            lock_group_seq(conn, group_seq)?;
            let (group_id, group_version, group_deleted): (String, i64, bool) = resources::table
                .find(group_seq)
                .select((resources::id, resources::version, resources::deleted))
                .first(conn)?;
            if group_deleted {
                continue;
            }
            let group_version = group_version + 1;
            diesel::update(resources::table.find(group_seq))
                .set((
                    resources::version.eq(group_version),
                    resources::modified_ms.eq(ctx.now_ms),
                ))
                .execute(conn)?;
            super::members::bumped(conn, group_seq, group_version)?;
            super::members::touched(conn, group_seq, &[seq])?;
            audit(
                conn,
                ctx,
                ResourceType::Group,
                &group_id,
                "membership",
                group_version,
                Some(&detail),
            )?;
            own.push(super::nested::GroupQueue {
                seq: group_seq,
                id: group_id,
                version: group_version,
                operation: "membership",
                dirty: false,
            });
        }
        // Outbox rows (PostgreSQL lock order): every group's in ascending `seq`, a deleted
        // group's own among its parents' and their ancestors'; a deleted user's after its
        // groups' (groups before users). See `nested::with_ancestors`.
        if resource_type == ResourceType::Group {
            own.push(super::nested::GroupQueue {
                seq,
                id: id.to_owned(),
                version,
                operation: "delete",
                dirty: false,
            });
        }
        let rows = super::nested::with_ancestors(conn, own, &groups)?;
        super::nested::enqueue_groups(conn, targets, &rows, id, ctx)?;
        if resource_type == ResourceType::Group {
            super::members::bumped(conn, seq, version)?;
            diesel::delete(group_members::table.filter(group_members::group_seq.eq(seq)))
                .execute(conn)?;
        } else {
            enqueue_all(conn, targets, resource_type, id, version, "delete", ctx)?;
        }
        audit(conn, ctx, resource_type, id, "delete", version, None)
    })
}

/// Insert a group with its members; see [`super::Store::create_group`].
pub(crate) fn create_group(
    conn: &mut DbConnection,
    targets: &[String],
    input: GroupInput,
    ctx: &AuditCtx,
) -> Result<StoredGroup, StoreError> {
    let GroupInput {
        mut data,
        display_name,
        external_id,
        members,
    } = input;
    data.remove("members");
    let id = uuid::Uuid::new_v4().to_string();
    let body = body_text(&data)?;
    let name_norm = normalise(&display_name);
    write_tx_for(conn, ctx, |conn| {
        diesel::insert_into(resources::table)
            .values(NewResource {
                id: &id,
                resource_type: ResourceType::Group.as_str(),
                version: 1,
                created_ms: ctx.now_ms,
                modified_ms: ctx.now_ms,
                data: &body,
                name: &encode_text(&display_name),
                name_norm: &name_norm,
                external_id: external_id.as_deref().map(encode_text).as_deref(),
                active: true,
                password_hash: None,
                deleted: false,
                deleted_ms: None,
            })
            .execute(conn)
            .map_err(|e| map_unique(e, ResourceType::Group))?;
        let seq = seq_of(conn, &id)?;
        super::members::bumped(conn, seq, 1)?;
        if let Some(members) = &members {
            // A new group has no parents yet: its member groups close no cycle. But a new edge
            // to a member group must still be ordered against a concurrent change of that
            // group's own membership (a user deleted from it reads its ancestors under the
            // shared nesting lock; the member group is only locked FOR KEY SHARE here, which
            // that delete does not wait for): without the exclusive lock a flattening target
            // could apply this group with the deleted user, and nothing would queue it again.
            add_members(conn, seq, members)?;
            if super::nested::has_child_groups(conn, seq)? {
                super::nested::lock_nesting(conn)?;
            }
        }
        enqueue_all(conn, targets, ResourceType::Group, &id, 1, "create", ctx)?;
        audit(conn, ctx, ResourceType::Group, &id, "create", 1, None)
    })?;
    Ok(StoredGroup {
        id,
        meta: Meta {
            created_ms: ctx.now_ms,
            last_modified_ms: ctx.now_ms,
            version: 1,
        },
        data,
        display_name,
        external_id,
        deleted: false,
    })
}

/// Read-modify-write of a group; see [`super::Store::update_group`].
pub(crate) fn update_group<F>(
    conn: &mut DbConnection,
    targets: &[String],
    id: &str,
    operation: &str,
    ctx: &AuditCtx,
    f: F,
) -> Result<StoredGroup, StoreError>
where
    F: FnOnce(&StoredGroup) -> Result<GroupUpdate, ScimError>,
{
    write_tx_for(conn, ctx, |conn| {
        let row = get_for_update(conn, ResourceType::Group, id)?
            .ok_or_else(|| not_found(ResourceType::Group))?;
        let (seq, created_ms, version) = (row.seq, row.created_ms, row.version + 1);
        let current = row.into_group()?;
        let GroupUpdate {
            mut data,
            display_name,
            external_id,
            members,
        } = f(&current)?;
        data.remove("members");
        let body = body_text(&data)?;
        diesel::update(resources::table.find(seq))
            .set((
                resources::data.eq(&body),
                resources::name.eq(encode_text(&display_name)),
                resources::name_norm.eq(normalise(&display_name)),
                resources::external_id.eq(external_id.as_deref().map(encode_text)),
                resources::version.eq(version),
                resources::modified_ms.eq(ctx.now_ms),
            ))
            .execute(conn)
            .map_err(|e| map_unique(e, ResourceType::Group))?;
        super::members::bumped(conn, seq, version)?;
        let mut new_groups = Vec::new();
        for op in &members {
            new_groups.extend(apply_member_op(conn, seq, op)?);
        }
        if !new_groups.is_empty() {
            // Nested groups: every transaction adding a group-in-group edge takes the nesting
            // lock after its row locks, then walks the committed edges (ARCHITECTURE.md,
            // "Nested groups"). A group created by POST has no parents: it closes no cycle.
            super::nested::lock_nesting(conn)?;
            super::nested::refuse_cycles(conn, seq, &new_groups)?;
        } else if !members.is_empty() {
            // The ancestors are read below: the shared side, before any outbox upsert.
            super::nested::lock_nesting_shared(conn)?;
        }
        // Outbox rows: the group's own and its ancestors' in one order, ascending `seq`
        // (`nested::with_ancestors`; parents are usually older than their children).
        let own = vec![super::nested::GroupQueue {
            seq,
            id: id.to_owned(),
            version,
            operation: "update",
            dirty: false,
        }];
        let this = [seq];
        let below = if members.is_empty() {
            &this[..0]
        } else {
            &this[..]
        };
        let rows = super::nested::with_ancestors(conn, own, below)?;
        super::nested::enqueue_groups(conn, targets, &rows, id, ctx)?;
        audit(conn, ctx, ResourceType::Group, id, operation, version, None)?;
        Ok(StoredGroup {
            id: id.to_owned(),
            meta: Meta {
                created_ms,
                last_modified_ms: ctx.now_ms,
                version,
            },
            data,
            display_name,
            external_id,
            deleted: false,
        })
    })
}

/// One membership change as row inserts/deletes (RFC 7644 §3.5.2; R-29: the table of forms
/// lives in `scim::patch`, this only executes it).
/// Returns the groups it made members (nested groups: the caller checks them for cycles).
fn apply_member_op(
    conn: &mut DbConnection,
    group_seq: i64,
    op: &MemberOp,
) -> Result<Vec<i64>, StoreError> {
    match op {
        MemberOp::Add(members) => add_members(conn, group_seq, members),
        MemberOp::Remove(ids) => {
            let seqs: Vec<i64> = resolve_seqs(conn, ids)?.into_values().collect();
            delete_members(conn, group_seq, &seqs)?;
            Ok(Vec::new())
        }
        MemberOp::RemoveMatching(filter) => {
            let current: Vec<(i64, String, String, bool)> = group_members::table
                .inner_join(resources::table.on(resources::seq.eq(group_members::member_seq)))
                .filter(group_members::group_seq.eq(group_seq))
                .select((
                    resources::seq,
                    resources::id,
                    resources::name,
                    group_members::member_is_group,
                ))
                .load(conn)?;
            let matching: Vec<i64> = current
                .into_iter()
                .filter(|(_, id, name, is_group)| {
                    let display = decode_text(name.clone());
                    let ty = if *is_group { "Group" } else { "User" };
                    filter.matches(&json!({"value": id, "display": display, "type": ty}))
                })
                .map(|(seq, _, _, _)| seq)
                .collect();
            delete_members(conn, group_seq, &matching)?;
            Ok(Vec::new())
        }
        MemberOp::RemoveAll => {
            let all: Vec<i64> = group_members::table
                .filter(group_members::group_seq.eq(group_seq))
                .select(group_members::member_seq)
                .load(conn)?;
            delete_members(conn, group_seq, &all)?;
            Ok(Vec::new())
        }
        MemberOp::Replace(members) => {
            let wanted = live_member_seqs(conn, members)?;
            let current: HashSet<i64> = group_members::table
                .filter(group_members::group_seq.eq(group_seq))
                .select(group_members::member_seq)
                .load::<i64>(conn)?
                .into_iter()
                .collect();
            let wanted_set: HashSet<i64> = wanted.iter().map(|(s, _)| *s).collect();
            let gone: Vec<i64> = current
                .iter()
                .filter(|s| !wanted_set.contains(s))
                .copied()
                .collect();
            delete_members(conn, group_seq, &gone)?;
            let new: Vec<(i64, bool)> = wanted
                .into_iter()
                .filter(|(s, _)| !current.contains(s))
                .collect();
            insert_members(conn, group_seq, &new)
        }
    }
}

/// The id is shown back only when it looks like one of ours (never arbitrary client text).
fn unknown_member(id: &str) -> StoreError {
    let ours = id.len() == 36 && id.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
    let detail = if ours {
        format!("member {id} is not an existing User or Group")
    } else {
        "a member value is not the id of an existing User or Group".to_owned()
    };
    StoreError::Scim(ScimError::invalid_value(detail))
}

/// The sequences of `members` (deduplicated, in request order), each with whether it is a
/// group; every one must be a live user or group, of the `type` the client gave if it
/// gave one (400 `invalidValue` otherwise). On PostgreSQL the member rows are share-locked so a
/// concurrent delete cannot slip in (and a concurrent membership change of a member group
/// commits first: its ancestors, read after it, include this group).
fn live_member_seqs(
    conn: &mut DbConnection,
    members: &[MemberRef],
) -> Result<Vec<(i64, bool)>, StoreError> {
    let mut seen = HashSet::new();
    let wanted: Vec<&MemberRef> = members
        .iter()
        .filter(|m| seen.insert(m.value.as_str()))
        .collect();
    let ids: Vec<String> = wanted.iter().map(|m| m.value.clone()).collect();
    let mut live: HashMap<String, (i64, bool)> = HashMap::with_capacity(ids.len());
    if let Some(bad) = ids.iter().find(|id| has_nul(id)) {
        return Err(unknown_member(bad));
    }
    for chunk in ids.chunks(ID_CHUNK) {
        let query = resources::table
            .filter(resources::deleted.eq(false))
            .filter(resources::id.eq_any(chunk))
            .select((resources::id, resources::seq, resources::resource_type));
        let rows: Vec<(String, i64, String)> = match conn {
            DbConnection::Pg(c) => query.for_key_share().load(c)?,
            DbConnection::Sqlite(c) => query.load(c)?,
        };
        live.extend(rows.into_iter().map(|(id, seq, ty)| {
            let group = ty == ResourceType::Group.as_str();
            (id, (seq, group))
        }));
    }
    wanted
        .iter()
        .map(|m| {
            let (seq, group) = live
                .get(&m.value)
                .copied()
                .ok_or_else(|| unknown_member(&m.value))?;
            match m.kind {
                Some(ResourceType::Group) if !group => {
                    Err(StoreError::Scim(ScimError::invalid_value(format!(
                        "member {} has type \"Group\" but is a User",
                        m.value
                    ))))
                }
                Some(ResourceType::User) if group => {
                    Err(StoreError::Scim(ScimError::invalid_value(format!(
                        "member {} has type \"User\" but is a Group",
                        m.value
                    ))))
                }
                _ => Ok((seq, group)),
            }
        })
        .collect()
}

/// Sequences of any resources with these ids (unknown ids are skipped).
fn resolve_seqs(
    conn: &mut DbConnection,
    ids: &[String],
) -> Result<HashMap<String, i64>, StoreError> {
    let mut out = HashMap::with_capacity(ids.len());
    let ids: Vec<&String> = ids.iter().filter(|id| !has_nul(id)).collect();
    for chunk in ids.chunks(ID_CHUNK) {
        let rows: Vec<(String, i64)> = resources::table
            .filter(resources::id.eq_any(chunk))
            .select((resources::id, resources::seq))
            .load(conn)?;
        out.extend(rows);
    }
    Ok(out)
}

/// Add members, skipping existing ones: reads and writes O(added) rows whatever the group
/// size. Returns the groups it made members.
fn add_members(
    conn: &mut DbConnection,
    group_seq: i64,
    members: &[MemberRef],
) -> Result<Vec<i64>, StoreError> {
    let seqs = live_member_seqs(conn, members)?;
    let mut existing = HashSet::new();
    let plain: Vec<i64> = seqs.iter().map(|(s, _)| *s).collect();
    for chunk in plain.chunks(ID_CHUNK) {
        let rows: Vec<i64> = group_members::table
            .filter(group_members::group_seq.eq(group_seq))
            .filter(group_members::member_seq.eq_any(chunk))
            .select(group_members::member_seq)
            .load(conn)?;
        existing.extend(rows);
    }
    let new: Vec<(i64, bool)> = seqs
        .into_iter()
        .filter(|(s, _)| !existing.contains(s))
        .collect();
    insert_members(conn, group_seq, &new)
}

/// Insert membership rows (none of them present yet; `(member, is a group)`), numbered after
/// the group's last member. Returns the groups among them.
fn insert_members(
    conn: &mut DbConnection,
    group_seq: i64,
    members: &[(i64, bool)],
) -> Result<Vec<i64>, StoreError> {
    if members.is_empty() {
        return Ok(Vec::new());
    }
    let last: Option<i64> = group_members::table
        .filter(group_members::group_seq.eq(group_seq))
        .select(diesel::dsl::max(group_members::added_seq))
        .first(conn)?;
    let mut next = last.unwrap_or(0);
    for chunk in members.chunks(ID_CHUNK) {
        let rows: Vec<NewMember> = chunk
            .iter()
            .map(|&(member_seq, member_is_group)| {
                next += 1;
                NewMember {
                    group_seq,
                    member_seq,
                    added_seq: next,
                    member_is_group,
                }
            })
            .collect();
        let insert = diesel::insert_into(group_members::table).values(&rows);
        match conn {
            DbConnection::Pg(c) => insert.execute(c)?,
            DbConnection::Sqlite(c) => insert.execute(c)?,
        };
    }
    let seqs: Vec<i64> = members.iter().map(|(s, _)| *s).collect();
    super::members::touched(conn, group_seq, &seqs)?;
    Ok(members
        .iter()
        .filter(|(_, g)| *g)
        .map(|(s, _)| *s)
        .collect())
}

/// Delete membership rows, logged as changes (`store::members`).
fn delete_members(
    conn: &mut DbConnection,
    group_seq: i64,
    member_seqs: &[i64],
) -> Result<(), StoreError> {
    for chunk in member_seqs.chunks(ID_CHUNK) {
        diesel::delete(
            group_members::table
                .filter(group_members::group_seq.eq(group_seq))
                .filter(group_members::member_seq.eq_any(chunk)),
        )
        .execute(conn)?;
    }
    super::members::touched(conn, group_seq, member_seqs)
}

/// Members of a group in insertion order, `display` = current userName.
pub(crate) fn group_members(
    conn: &mut DbConnection,
    group_id: &str,
) -> Result<Vec<MemberRef>, StoreError> {
    if has_nul(group_id) {
        return Ok(Vec::new());
    }
    read_tx(conn, |conn| {
        let Some(group_seq) = resources::table
            .filter(resources::id.eq(group_id))
            .filter(resources::resource_type.eq(ResourceType::Group.as_str()))
            .select(resources::seq)
            .first::<i64>(conn)
            .optional()?
        else {
            return Ok(Vec::new());
        };
        members_of_seq(conn, group_seq)
    })
}

fn members_of_seq(conn: &mut DbConnection, group_seq: i64) -> Result<Vec<MemberRef>, StoreError> {
    let rows: Vec<(String, String, bool)> = group_members::table
        .inner_join(resources::table.on(resources::seq.eq(group_members::member_seq)))
        .filter(group_members::group_seq.eq(group_seq))
        .order(group_members::added_seq)
        .select((
            resources::id,
            resources::name,
            group_members::member_is_group,
        ))
        .load(conn)?;
    Ok(rows
        .into_iter()
        .map(|(value, display, group)| MemberRef {
            value,
            display: Some(decode_text(display)),
            kind: Some(if group {
                ResourceType::Group
            } else {
                ResourceType::User
            }),
        })
        .collect())
}

/// Live groups of a user, in group creation order.
pub(crate) fn groups_of_user(
    conn: &mut DbConnection,
    user_id: &str,
) -> Result<Vec<GroupRef>, StoreError> {
    if has_nul(user_id) {
        return Ok(Vec::new());
    }
    read_tx(conn, |conn| {
        let Some(user_seq) = resources::table
            .filter(resources::id.eq(user_id))
            .filter(resources::resource_type.eq(ResourceType::User.as_str()))
            .select(resources::seq)
            .first::<i64>(conn)
            .optional()?
        else {
            return Ok(Vec::new());
        };
        groups_of_seq(conn, user_seq)
    })
}

/// A user's groups: direct ones, then those it is in through nested groups only
/// (`direct: false`), each part in group creation order.
fn groups_of_seq(conn: &mut DbConnection, user_seq: i64) -> Result<Vec<GroupRef>, StoreError> {
    let rows: Vec<(i64, String, String)> = group_members::table
        .inner_join(resources::table.on(resources::seq.eq(group_members::group_seq)))
        .filter(group_members::member_seq.eq(user_seq))
        .filter(resources::deleted.eq(false))
        .order(resources::seq)
        .select((resources::seq, resources::id, resources::name))
        .load(conn)?;
    let direct: Vec<i64> = rows.iter().map(|(s, _, _)| *s).collect();
    let mut out: Vec<GroupRef> = rows
        .into_iter()
        .map(|(_, value, display)| GroupRef {
            value,
            display: decode_text(display),
            direct: true,
        })
        .collect();
    let indirect = super::nested::indirect_groups_of(conn, &direct)?;
    for chunk in indirect.chunks(ID_CHUNK) {
        let rows: Vec<(String, String)> = resources::table
            .filter(resources::seq.eq_any(chunk))
            .filter(resources::deleted.eq(false))
            .order(resources::seq)
            .select((resources::id, resources::name))
            .load(conn)?;
        out.extend(rows.into_iter().map(|(value, display)| GroupRef {
            value,
            display: decode_text(display),
            direct: false,
        }));
    }
    Ok(out)
}

/// A live user by `id`, `username` or `externalid` (`by` already lower-cased).
pub(crate) fn find_user(
    conn: &mut DbConnection,
    by: &str,
    value: &str,
) -> Result<Option<ResourceRow>, StoreError> {
    let query = resources::table
        .filter(resources::resource_type.eq(ResourceType::User.as_str()))
        .filter(resources::deleted.eq(false))
        .order(resources::seq)
        .select(ResourceRow::as_select())
        .into_boxed();
    let query = match by {
        "id" => query.filter(resources::id.eq(value.to_owned())),
        "username" => query.filter(resources::name_norm.eq(normalise(value))),
        "externalid" => query.filter(resources::external_id.eq(encode_text(value))),
        _ => return Ok(None),
    };
    Ok(query.first(conn).optional()?)
}

/// Ids of one type in creation order.
pub(crate) fn all_ids(
    conn: &mut DbConnection,
    resource_type: ResourceType,
    include_deleted: bool,
) -> Result<Vec<String>, StoreError> {
    let mut query = resources::table
        .filter(resources::resource_type.eq(resource_type.as_str()))
        .order(resources::seq)
        .select(resources::id)
        .into_boxed();
    if !include_deleted {
        query = query.filter(resources::deleted.eq(false));
    }
    Ok(query.load(conn)?)
}

/// A resource by normalised name: live users, then live groups, then the latest tombstone.
pub(crate) fn resolve_name(
    conn: &mut DbConnection,
    name: &str,
) -> Result<Option<(ResourceType, String)>, StoreError> {
    let norm = normalise(name);
    let row: Option<(String, String)> = resources::table
        .filter(resources::name_norm.eq(&norm))
        .order((
            resources::deleted.asc(),
            resources::resource_type.desc(),
            resources::seq.desc(),
        ))
        .select((resources::resource_type, resources::id))
        .first(conn)
        .optional()?;
    row.map(|(t, id)| Ok((super::models::parse_type(&t)?, id)))
        .transpose()
}

/// Does the filter name `attr` anywhere (so the list must load it before matching)?
fn mentions(filter: &Filter, attr: &str) -> bool {
    let path_is = |p: &crate::scim::path::AttrPath| p.attr.eq_ignore_ascii_case(attr);
    match filter {
        Filter::Compare { path, .. } | Filter::Present(path) => path_is(path),
        Filter::ValuePath { path, filter } => path_is(path) || mentions(filter, attr),
        Filter::And(a, b) | Filter::Or(a, b) => mentions(a, attr) || mentions(b, attr),
        Filter::Not(inner) => mentions(inner, attr),
    }
}

/// Candidates from an index for the first usable equality lookup, or `None` to scan.
fn lookup_candidates(
    conn: &mut DbConnection,
    resource_type: ResourceType,
    filter: &Filter,
) -> Result<Option<Vec<ResourceRow>>, StoreError> {
    for (attr, value) in filter.equality_lookups() {
        let query = resources::table
            .filter(resources::resource_type.eq(resource_type.as_str()))
            .filter(resources::deleted.eq(false))
            .order(resources::seq)
            .select(ResourceRow::as_select())
            .into_boxed();
        let query = match (resource_type, attr.as_str()) {
            (_, "id") => query.filter(resources::id.eq(value)),
            (ResourceType::User, "username") | (ResourceType::Group, "displayname") => {
                query.filter(resources::name_norm.eq(normalise(&value)))
            }
            (_, "externalid") => query.filter(resources::external_id.eq(encode_text(&value))),
            (ResourceType::User, "emails.value") => query.filter(
                resources::seq.eq_any(
                    resource_emails::table
                        .filter(resource_emails::value_norm.eq(normalise(&value)))
                        .select(resource_emails::resource_seq),
                ),
            ),
            _ => continue,
        };
        return Ok(Some(query.load(conn)?));
    }
    Ok(None)
}

/// Render a row as GET would and evaluate the filter on it.
fn row_matches(
    conn: &mut DbConnection,
    resource_type: ResourceType,
    filter: &Filter,
    row: &ResourceRow,
    base_url: &str,
) -> Result<bool, StoreError> {
    let data = row.data_map()?;
    let meta = row.meta();
    let rendered = match resource_type {
        ResourceType::User => {
            let groups = if mentions(filter, "groups") {
                Some(groups_of_seq(conn, row.seq)?)
            } else {
                None
            };
            render_user(&row.id, &data, &meta, groups.as_deref(), base_url)
        }
        ResourceType::Group => {
            let members = if mentions(filter, "members") {
                Some(members_of_seq(conn, row.seq)?)
            } else {
                None
            };
            render_group(&row.id, &data, &meta, members.as_deref(), base_url)
        }
    };
    Ok(filter.matches(&rendered))
}

/// A page of live resources in creation order; see [`super::Store::list_users`].
pub(crate) fn list(
    conn: &mut DbConnection,
    resource_type: ResourceType,
    filter: Option<&Filter>,
    start_index: u64,
    count: u64,
    base_url: &str,
) -> Result<RowPage, StoreError> {
    // RFC 7644 §3.4.2.4: startIndex is 1-based; values below 1 mean 1.
    let skip = start_index.max(1) - 1;
    read_tx(conn, |conn| {
        let Some(filter) = filter else {
            let total: i64 = resources::table
                .filter(resources::resource_type.eq(resource_type.as_str()))
                .filter(resources::deleted.eq(false))
                .count()
                .get_result(conn)?;
            let items = if count == 0 {
                Vec::new()
            } else {
                resources::table
                    .filter(resources::resource_type.eq(resource_type.as_str()))
                    .filter(resources::deleted.eq(false))
                    .order(resources::seq)
                    .offset(i64::try_from(skip).unwrap_or(i64::MAX))
                    .limit(i64::try_from(count).unwrap_or(i64::MAX))
                    .select(ResourceRow::as_select())
                    .load(conn)?
            };
            return Ok(RowPage {
                items,
                total: u64::try_from(total).unwrap_or(0),
            });
        };
        let mut page = RowPage::default();
        let take = |conn: &mut DbConnection,
                    row: ResourceRow,
                    page: &mut RowPage|
         -> Result<(), StoreError> {
            if row_matches(conn, resource_type, filter, &row, base_url)? {
                page.total += 1;
                if page.total > skip && (page.items.len() as u64) < count {
                    page.items.push(row);
                }
            }
            Ok(())
        };
        if let Some(candidates) = lookup_candidates(conn, resource_type, filter)? {
            for row in candidates {
                take(conn, row, &mut page)?;
            }
            return Ok(page);
        }
        let mut after = i64::MIN;
        loop {
            let chunk: Vec<ResourceRow> = resources::table
                .filter(resources::resource_type.eq(resource_type.as_str()))
                .filter(resources::deleted.eq(false))
                .filter(resources::seq.gt(after))
                .order(resources::seq)
                .limit(SCAN_CHUNK)
                .select(ResourceRow::as_select())
                .load(conn)?;
            let full = chunk.len() as i64 == SCAN_CHUNK;
            for row in chunk {
                after = row.seq;
                take(conn, row, &mut page)?;
            }
            if !full {
                break;
            }
        }
        Ok(page)
    })
}
