//! `/Users`: list, create, get, replace, patch, delete. Handlers parse with the pure SCIM core,
//! hash or drop passwords at once, and commit through the store before answering.

use crate::http::body::read_json;
use crate::http::error::{json, no_content, Resp};
use crate::http::password::PasswordSync;
use crate::http::router::{check_if_match, created, selection, store_error, with_etag, Call};
use crate::scim::list::{apply_returned, project, AttrSelection};
use crate::scim::patch::{apply_user_patch, parse_patch};
use crate::scim::resource::{
    check_immutable, check_patch_value_sizes, check_value_sizes, parse_user, render_user, Password,
    ResourceType, UserInput,
};
use crate::scim::ScimError;
use crate::store::{StoredUser, UserUpdate};
use hyper::body::Incoming;
use hyper::Request;
use serde_json::Value;

/// Render a stored user with its groups (when wanted) and apply the attribute selection.
pub(crate) async fn render(
    call: &Call,
    user: &StoredUser,
    sel: &AttrSelection,
) -> Result<Value, ScimError> {
    let groups = if sel.wants("groups") {
        Some(
            call.ctx
                .store
                .groups_of_user(&user.id)
                .await
                .map_err(store_error)?,
        )
    } else {
        None
    };
    let value = render_user(
        &user.id,
        &user.data,
        &user.meta,
        groups.as_deref(),
        &call.base_url,
    );
    let schemas = &call.settings.schemas;
    if schemas.extension_attributes.is_empty() {
        return Ok(project(value, sel));
    }
    let mut out = project(value.clone(), sel);
    apply_returned(&value, &mut out, schemas, sel);
    Ok(out)
}

/// Fix `active` (default `fallback`) into the body and take the password out, hashed on the
/// blocking pool before the store is called.
async fn settle_input(
    call: &Call,
    mut input: UserInput,
    fallback: bool,
) -> (UserInput, Option<String>) {
    let active = input.active.unwrap_or(fallback);
    input.active = Some(active);
    input.data.insert("active".into(), Value::Bool(active));
    let hash = call
        .settings
        .password_sync
        .hash_off_thread(input.password.as_ref())
        .await;
    input.password = None;
    (input, hash)
}

/// `GET /Users` and `POST /Users/.search`.
pub async fn list(call: &Call, pairs: Vec<(String, String)>) -> Result<Resp, ScimError> {
    crate::http::search::list(call, Some(ResourceType::User), pairs).await
}

/// `POST /Users`.
pub async fn create(call: &Call, req: Request<Incoming>) -> Result<Resp, ScimError> {
    let query = req.uri().query().map(str::to_owned);
    let body = read_json(
        req,
        call.settings.max_body_users,
        call.settings.body_timeout,
    )
    .await?;
    create_body(call, body, query).await
}

/// `POST /Users` with its body read (also one operation of a Bulk request).
pub(crate) async fn create_body(
    call: &Call,
    body: Value,
    query: Option<String>,
) -> Result<Resp, ScimError> {
    check_value_sizes("", &body, call.settings.max_value_bytes)?;
    let input = parse_user(body, &call.settings.schemas)?;
    let (input, hash) = settle_input(call, input, true).await;
    let user = call
        .ctx
        .store
        .create_user(input, hash, &call.audit)
        .await
        .map_err(store_error)?;
    call.ctx.wake.notify_waiters();
    let sel = selection(call, query.as_deref())?;
    let value = render(call, &user, &sel).await?;
    Ok(created(
        call,
        "Users",
        &user.id,
        json(201, &value),
        user.meta.version,
    ))
}

/// `GET /Users/{id}`.
pub async fn get(call: &Call, id: &str, query: Option<&str>) -> Result<Resp, ScimError> {
    let sel = selection(call, query)?;
    let user = call
        .ctx
        .store
        .get_user(id)
        .await
        .map_err(store_error)?
        .ok_or_else(not_found)?;
    let value = render(call, &user, &sel).await?;
    Ok(with_etag(json(200, &value), user.meta.version))
}

/// `PUT /Users/{id}`: replace; read-only attributes are ignored; no `active` keeps the current
/// value (a PUT never reactivates by omission).
pub async fn replace(
    call: &Call,
    id: &str,
    req: Request<Incoming>,
    if_match: Option<String>,
) -> Result<Resp, ScimError> {
    let query = req.uri().query().map(str::to_owned);
    let body = read_json(
        req,
        call.settings.max_body_users,
        call.settings.body_timeout,
    )
    .await?;
    replace_body(call, id, body, query, if_match).await
}

/// `PUT /Users/{id}` with its body read (also one operation of a Bulk request).
pub(crate) async fn replace_body(
    call: &Call,
    id: &str,
    body: Value,
    query: Option<String>,
    if_match: Option<String>,
) -> Result<Resp, ScimError> {
    check_value_sizes("", &body, call.settings.max_value_bytes)?;
    let mut input = parse_user(body, &call.settings.schemas)?;
    let schemas = call.settings.schemas.clone();
    let password_hash = call
        .settings
        .password_sync
        .hash_off_thread(input.password.take().as_ref())
        .await;
    let user = call
        .ctx
        .store
        .update_user(id, "replace", &call.audit, move |current| {
            check_if_match(if_match.as_deref(), current.meta.version)?;
            let mut input = input;
            check_immutable(&current.data, &input.data, &schemas)?;
            keep_active(&mut input, current);
            Ok(UserUpdate {
                input,
                password_hash,
            })
        })
        .await
        .map_err(store_error)?;
    call.ctx.wake.notify_waiters();
    let sel = selection(call, query.as_deref())?;
    let value = render(call, &user, &sel).await?;
    Ok(with_etag(json(200, &value), user.meta.version))
}

/// A PUT without `active` keeps the current value (never reactivates by omission); one the
/// user does not have (removed by a PATCH) stays unassigned, the store's flag false.
fn keep_active(input: &mut UserInput, current: &StoredUser) {
    if input.active.is_some() {
        return;
    }
    if current.data.contains_key("active") {
        input.active = Some(current.active);
        input
            .data
            .insert("active".into(), Value::Bool(current.active));
    } else {
        input.active = Some(false);
    }
}

/// `PATCH /Users/{id}`: RFC 7644 §3.5.2 in the Okta and Entra dialects; answers 200 with the user.
pub async fn patch(
    call: &Call,
    id: &str,
    req: Request<Incoming>,
    if_match: Option<String>,
) -> Result<Resp, ScimError> {
    let query = req.uri().query().map(str::to_owned);
    let body = read_json(
        req,
        call.settings.max_body_users,
        call.settings.body_timeout,
    )
    .await?;
    patch_body(call, id, body, query, if_match).await
}

/// `PATCH /Users/{id}` with its body read (also one operation of a Bulk request).
pub(crate) async fn patch_body(
    call: &Call,
    id: &str,
    body: Value,
    query: Option<String>,
    if_match: Option<String>,
) -> Result<Resp, ScimError> {
    check_patch_value_sizes(&body, call.settings.max_value_bytes)?;
    let ops = parse_patch(body, call.settings.max_patch_operations)?;
    let schemas = call.settings.schemas.clone();
    let sync = call.settings.password_sync;
    let prehashed = prehash_patch_password(call, id, &ops).await?;
    let user = call
        .ctx
        .store
        .update_user(id, "patch", &call.audit, move |current| {
            check_if_match(if_match.as_deref(), current.meta.version)?;
            let mut data = current.data.clone();
            let password = apply_user_patch(&mut data, &ops, &schemas)?;
            let mut input = parse_user(Value::Object(data), &schemas)?;
            check_immutable(&current.data, &input.data, &schemas)?;
            // A PATCH that removed `active` leaves it unassigned: inactive (fail closed).
            input.active = Some(input.active.unwrap_or(false));
            let password = password.or(input.password.take());
            let password_hash = match (password, prehashed) {
                (None, _) => None,
                (Some(p), Some((clear, hash))) if p == clear => hash,
                // The user changed between the dry run and the transaction in a way that
                // changed the patch's password (practically never): hash here after all.
                (Some(p), _) => sync.hash(Some(&p)),
            };
            Ok(UserUpdate {
                input,
                password_hash,
            })
        })
        .await
        .map_err(store_error)?;
    call.ctx.wake.notify_waiters();
    let sel = selection(call, query.as_deref())?;
    let value = render(call, &user, &sel).await?;
    Ok(with_etag(json(200, &value), user.meta.version))
}

/// The password a PATCH sets, hashed on the blocking pool before the store transaction: the
/// patch is dry-run on the current user (the password it yields depends on the operations,
/// not on the stored data). `None` when sync is off or the patch sets no password.
async fn prehash_patch_password(
    call: &Call,
    id: &str,
    ops: &[crate::scim::patch::PatchOp],
) -> Result<Option<(Password, Option<String>)>, ScimError> {
    let sync = call.settings.password_sync;
    if sync == PasswordSync::Off {
        return Ok(None);
    }
    let Some(current) = call.ctx.store.get_user(id).await.map_err(store_error)? else {
        return Ok(None);
    };
    let mut data = current.data;
    let Ok(Some(clear)) = apply_user_patch(&mut data, ops, &call.settings.schemas) else {
        return Ok(None);
    };
    let hash = sync.hash_off_thread(Some(&clear)).await;
    Ok(Some((clear, hash)))
}

/// `DELETE /Users/{id}`: 204; the user is removed from every group in the same transaction.
pub async fn delete(call: &Call, id: &str, if_match: Option<String>) -> Result<Resp, ScimError> {
    let version = crate::http::router::if_match_version(if_match.as_deref())?;
    call.ctx
        .store
        .delete_user(id, version, &call.audit)
        .await
        .map_err(store_error)?;
    call.ctx.wake.notify_waiters();
    Ok(no_content())
}

fn not_found() -> ScimError {
    ScimError::not_found("No user with that id.")
}
