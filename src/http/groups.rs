//! `/Groups`: list, create, get, replace, patch, delete. Membership changes travel as
//! [`MemberOp`]s to the store, which writes only the difference as rows.

use crate::http::body::{query_pairs, read_json};
use crate::http::error::{json, no_content, Resp};
use crate::http::router::{check_if_match, created, selection, store_error, with_etag, Call};
use crate::scim::list::{project, AttrSelection};
use crate::scim::patch::{apply_group_patch, parse_patch, MemberOp};
use crate::scim::resource::{
    check_patch_value_sizes, check_value_sizes, parse_group, render_group, ResourceType,
};
use crate::scim::ScimError;
use crate::store::{GroupUpdate, StoredGroup};
use hyper::body::Incoming;
use hyper::Request;
use serde_json::Value;

pub(crate) async fn render(
    call: &Call,
    group: &StoredGroup,
    sel: &AttrSelection,
) -> Result<Value, ScimError> {
    let members = if sel.wants("members") {
        Some(
            call.ctx
                .store
                .group_members(&group.id)
                .await
                .map_err(store_error)?,
        )
    } else {
        None
    };
    let value = render_group(
        &group.id,
        &group.data,
        &group.meta,
        members.as_deref(),
        &call.base_url,
    );
    Ok(project(value, sel))
}

/// `GET /Groups`: members only when asked for (Entra sends `excludedAttributes=members`).
pub async fn list(call: &Call, pairs: Vec<(String, String)>) -> Result<Resp, ScimError> {
    crate::http::search::list(call, Some(ResourceType::Group), pairs).await
}

/// `POST /Groups` (Okta Push Groups sends `members: []`, Entra no members).
pub async fn create(call: &Call, req: Request<Incoming>) -> Result<Resp, ScimError> {
    let query = req.uri().query().map(str::to_owned);
    let body = read_json(
        req,
        call.settings.max_body_groups,
        call.settings.body_timeout,
    )
    .await?;
    create_body(call, body, query).await
}

/// `POST /Groups` with its body read (also one operation of a Bulk request).
pub(crate) async fn create_body(
    call: &Call,
    body: Value,
    query: Option<String>,
) -> Result<Resp, ScimError> {
    check_value_sizes("", &body, call.settings.max_value_bytes)?;
    let input = parse_group(body, &call.settings.schemas)?;
    let group = call
        .ctx
        .store
        .create_group(input, &call.audit)
        .await
        .map_err(store_error)?;
    call.ctx.wake.notify_waiters();
    let sel = selection(call, query.as_deref())?;
    let value = render(call, &group, &sel).await?;
    Ok(created(
        call,
        "Groups",
        &group.id,
        json(201, &value),
        group.meta.version,
    ))
}

/// `GET /Groups/{id}`.
pub async fn get(call: &Call, id: &str, query: Option<&str>) -> Result<Resp, ScimError> {
    let sel = selection(call, query)?;
    let group = call
        .ctx
        .store
        .get_group(id)
        .await
        .map_err(store_error)?
        .ok_or_else(not_found)?;
    let value = render(call, &group, &sel).await?;
    Ok(with_etag(json(200, &value), group.meta.version))
}

/// `PUT /Groups/{id}`: the whole group; a `members` list replaces the membership (only the
/// difference is written); no `members` leaves membership as it is.
pub async fn replace(
    call: &Call,
    id: &str,
    req: Request<Incoming>,
    if_match: Option<String>,
) -> Result<Resp, ScimError> {
    let query = req.uri().query().map(str::to_owned);
    let body = read_json(
        req,
        call.settings.max_body_groups,
        call.settings.body_timeout,
    )
    .await?;
    replace_body(call, id, body, query, if_match).await
}

/// `PUT /Groups/{id}` with its body read (also one operation of a Bulk request).
pub(crate) async fn replace_body(
    call: &Call,
    id: &str,
    body: Value,
    query: Option<String>,
    if_match: Option<String>,
) -> Result<Resp, ScimError> {
    check_value_sizes("", &body, call.settings.max_value_bytes)?;
    let input = parse_group(body, &call.settings.schemas)?;
    let group = call
        .ctx
        .store
        .update_group(id, "replace", &call.audit, move |current| {
            check_if_match(if_match.as_deref(), current.meta.version)?;
            let members = input.members.map(MemberOp::Replace).into_iter().collect();
            Ok(GroupUpdate {
                data: input.data,
                display_name: input.display_name,
                external_id: input.external_id,
                members,
            })
        })
        .await
        .map_err(store_error)?;
    call.ctx.wake.notify_waiters();
    let sel = selection(call, query.as_deref())?;
    let value = render(call, &group, &sel).await?;
    Ok(with_etag(json(200, &value), group.meta.version))
}

/// `PATCH /Groups/{id}`: answers 204 (Entra advises against returning all members; Okta
/// accepts 204), unless `attributes` asks for a representation.
pub async fn patch(
    call: &Call,
    id: &str,
    req: Request<Incoming>,
    if_match: Option<String>,
) -> Result<Resp, ScimError> {
    let query = req.uri().query().map(str::to_owned);
    let body = read_json(
        req,
        call.settings.max_body_groups,
        call.settings.body_timeout,
    )
    .await?;
    patch_body(call, id, body, query, if_match).await
}

/// `PATCH /Groups/{id}` with its body read (also one operation of a Bulk request).
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
    let group = call
        .ctx
        .store
        .update_group(id, "patch", &call.audit, move |current| {
            check_if_match(if_match.as_deref(), current.meta.version)?;
            let mut data = current.data.clone();
            let members = apply_group_patch(&mut data, &ops)?;
            let input = parse_group(Value::Object(data), &schemas)?;
            Ok(GroupUpdate {
                data: input.data,
                display_name: input.display_name,
                external_id: input.external_id,
                members,
            })
        })
        .await
        .map_err(store_error)?;
    call.ctx.wake.notify_waiters();
    let wants_body = query_pairs(query.as_deref())
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("attributes"));
    if wants_body {
        let sel = selection(call, query.as_deref())?;
        let value = render(call, &group, &sel).await?;
        return Ok(with_etag(json(200, &value), group.meta.version));
    }
    Ok(with_etag(no_content(), group.meta.version))
}

/// `DELETE /Groups/{id}`: the group goes, its users stay.
pub async fn delete(call: &Call, id: &str, if_match: Option<String>) -> Result<Resp, ScimError> {
    let version = crate::http::router::if_match_version(if_match.as_deref())?;
    call.ctx
        .store
        .delete_group(id, version, &call.audit)
        .await
        .map_err(store_error)?;
    call.ctx.wake.notify_waiters();
    Ok(no_content())
}

fn not_found() -> ScimError {
    ScimError::not_found("No group with that id.")
}
