//! Routing: a `match` on method and path segments below the base path, after authentication.
//! Also the shared pieces of handlers: the per-request [`Call`], ETag / If-Match handling and
//! the mapping of store errors to SCIM errors.

use crate::http::auth::Auth;
use crate::http::body::{query_pairs, read_json};
use crate::http::error::{self, Resp};
use crate::http::{bulk, discovery, groups, search, users, HttpSettings, ScimContext};
use crate::scim::list::{parse_list_query, AttrSelection};
use crate::scim::resource::etag;
use crate::scim::ScimError;
use crate::store::{AuditCtx, Deadline, StoreError};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, ETAG, HOST, IF_MATCH};
use hyper::{Method, Request};
use std::sync::Arc;

/// What one request's handler gets.
pub struct Call {
    pub ctx: ScimContext,
    pub settings: Arc<HttpSettings>,
    /// `https://host/scim/v2`, for `meta.location` and `$ref`.
    pub base_url: String,
    pub audit: AuditCtx,
}

/// Map a store failure to what the client sees (503 when the store is down: the IdP retries).
pub fn store_error(e: StoreError) -> ScimError {
    match e {
        StoreError::Scim(s) => s,
        StoreError::Unavailable(msg) => {
            tracing::error!(error = %msg, "Store unavailable; answering 503.");
            ScimError::status(503, "The service is temporarily unavailable; try again.")
        }
        StoreError::Other(msg) => {
            tracing::error!(error = %msg, "Store failure; answering 500.");
            ScimError::status(500, "Internal error.")
        }
        // Raised only by the reconciler's bookkeeping, never by a handler's mutation.
        e @ StoreError::KeyConflict { .. } => {
            tracing::error!(error = %e, "Store failure; answering 500.");
            ScimError::status(500, "Internal error.")
        }
    }
}

/// The `attributes` / `excludedAttributes` selection of a request's query string.
///
/// # Errors
/// 400 for malformed values.
pub fn selection(call: &Call, query: Option<&str>) -> Result<AttrSelection, ScimError> {
    let pairs: Vec<(String, String)> = query_pairs(query)
        .into_iter()
        .filter(|(k, _)| {
            k.eq_ignore_ascii_case("attributes") || k.eq_ignore_ascii_case("excludedAttributes")
        })
        .collect();
    Ok(parse_list_query(
        &pairs,
        call.settings.filter_limits,
        call.settings.max_page_size,
    )?
    .attributes)
}

/// A 201 answer: `ETag` and `Location` (`<base>/<endpoint>/<id>`) on `resp`.
pub fn created(call: &Call, endpoint: &str, id: &str, resp: Resp, version: i64) -> Resp {
    let mut resp = with_etag(resp, version);
    if let Ok(loc) = HeaderValue::from_str(&format!("{}/{endpoint}/{id}", call.base_url)) {
        resp.headers_mut().insert(hyper::header::LOCATION, loc);
    }
    resp
}

/// Add the `ETag` header.
pub fn with_etag(mut resp: Resp, version: i64) -> Resp {
    if let Ok(v) = HeaderValue::from_str(&etag(version)) {
        resp.headers_mut().insert(ETAG, v);
    }
    resp
}

/// The version an `If-Match` header names: `None` for absent or `*`. Several headers, or a list
/// (RFC 9110 §13.1.1), are read as one list; tags naming different versions are refused rather
/// than guessed at (no IdP sends a list).
///
/// # Errors
/// 412 when the header cannot name exactly one version of ours.
pub fn if_match_version(header: Option<&str>) -> Result<Option<i64>, ScimError> {
    let Some(h) = header.map(str::trim) else {
        return Ok(None);
    };
    let fail = || ScimError::precondition_failed("If-Match does not match the current version.");
    let mut version = None;
    for tag in h.split(',').map(str::trim) {
        if tag == "*" {
            return Ok(None);
        }
        let v = tag.strip_prefix("W/").unwrap_or(tag);
        let v = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(v);
        let v = v.parse::<i64>().map_err(|_| fail())?;
        if version.is_some_and(|seen| seen != v) {
            return Err(fail());
        }
        version = Some(v);
    }
    version.map(Some).ok_or_else(fail)
}

/// Every `If-Match` header of a request as one list; `None` when there is none.
///
/// # Errors
/// 412 when a value is not visible ASCII: an unreadable condition must never be treated as
/// absent (a conditional DELETE would delete).
pub fn if_match_header(headers: &hyper::HeaderMap) -> Result<Option<String>, ScimError> {
    let mut values = Vec::new();
    for v in headers.get_all(IF_MATCH) {
        let v = v.to_str().map_err(|_| {
            ScimError::precondition_failed("If-Match is not readable; nothing was changed.")
        })?;
        values.push(v);
    }
    Ok((!values.is_empty()).then(|| values.join(", ")))
}

/// 412 unless `header` is absent, `*`, or names `current`.
///
/// # Errors
/// 412 on a mismatch.
pub fn check_if_match(header: Option<&str>, current: i64) -> Result<(), ScimError> {
    match if_match_version(header)? {
        Some(v) if v != current => Err(ScimError::precondition_failed(
            "The resource was modified; If-Match does not match its current version.",
        )),
        _ => Ok(()),
    }
}

/// The route template, for metrics and logs (never the raw path: it holds ids).
pub fn route_template(base_path: &str, path: &str) -> &'static str {
    let Some(rest) = path.strip_prefix(base_path) else {
        return "other";
    };
    let segs: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    match segs.as_slice() {
        ["Users"] => "/Users",
        ["Users", ".search"] => "/Users/.search",
        ["Users", _] => "/Users/{id}",
        ["Groups"] => "/Groups",
        ["Groups", ".search"] => "/Groups/.search",
        ["Groups", _] => "/Groups/{id}",
        [".search"] => "/.search",
        ["Bulk"] => "/Bulk",
        ["ServiceProviderConfig"] => "/ServiceProviderConfig",
        ["ResourceTypes", ..] => "/ResourceTypes",
        ["Schemas", ..] => "/Schemas",
        _ => "other",
    }
}

fn is_discovery(segs: &[&str]) -> bool {
    matches!(
        segs.first(),
        Some(&"ServiceProviderConfig" | &"ResourceTypes" | &"Schemas")
    )
}

fn base_url(settings: &HttpSettings, req: &Request<Incoming>, tls: bool) -> String {
    if let Some(url) = &settings.public_url {
        return url.trim_end_matches('/').to_string();
    }
    let host = req
        .headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        })
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .unwrap_or("localhost");
    let scheme = if tls { "https" } else { "http" };
    format!("{scheme}://{host}{}", settings.base_path)
}

/// Handle one request (auth, route, handler). Errors become SCIM error bodies. `deadline` goes
/// to the store with every mutation (see [`Deadline`]).
/// The load balancer's health check on the SCIM listener (the admin listener is loopback
/// only): no token, and it reveals nothing but whether this instance can take pushes now (its
/// store answers): `200 ok` or `503 unavailable`, a plain-text body, no target or version
/// detail (docs/deployment.md). GET and HEAD; 405 otherwise.
pub const LB_HEALTH_PATH: &str = "/healthz";

async fn lb_health(ctx: &ScimContext, method: &hyper::Method) -> Resp {
    use http_body_util::Full;
    use hyper::body::Bytes;
    use hyper::header::{HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_TYPE};
    use hyper::{Method, Response, StatusCode};
    let text = |status: StatusCode, body: &'static str| {
        let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
        *resp.status_mut() = status;
        resp.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        resp.headers_mut()
            .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        resp
    };
    if method != Method::GET && method != Method::HEAD {
        let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        resp.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    match ctx.store.ping().await {
        Ok(()) => text(StatusCode::OK, "ok\n"),
        Err(_) => text(StatusCode::SERVICE_UNAVAILABLE, "unavailable\n"),
    }
}

pub async fn handle(
    ctx: ScimContext,
    auth: Arc<Auth>,
    req: Request<Incoming>,
    request_id: String,
    tls: bool,
    now_ms: i64,
    deadline: Deadline,
) -> (Resp, Option<String>) {
    let settings = ctx.settings.borrow().clone();
    // RFC 9112 §3.2: an HTTP/1.1 request without a Host header, or any request with more than
    // one, is answered 400 (a proxy and this daemon could disagree on which host was meant).
    let hosts = req.headers().get_all(HOST).iter().count();
    if hosts > 1 || (hosts == 0 && req.version() == hyper::Version::HTTP_11) {
        return (
            error::error(&ScimError::status(
                400,
                "An HTTP/1.1 request needs exactly one Host header.",
            )),
            None,
        );
    }
    let path = req.uri().path().to_string();
    if path == LB_HEALTH_PATH {
        return (lb_health(&ctx, req.method()).await, None);
    }
    let Some(rest) = path.strip_prefix(settings.base_path.as_str()) else {
        return (
            error::error(&ScimError::not_found("No such endpoint.")),
            None,
        );
    };
    let segs: Vec<String> = rest
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect();
    let seg_refs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let base = base_url(&settings, &req, tls);
    let mut token_name = None;
    if !is_discovery(&seg_refs) {
        let values: Vec<&[u8]> = req
            .headers()
            .get_all(AUTHORIZATION)
            .iter()
            .map(HeaderValue::as_bytes)
            .collect();
        match auth.check(&values, now_ms).await {
            Ok(name) => token_name = Some(name),
            Err(e) => return (error::error(&e), None),
        }
    }
    let call = Call {
        ctx,
        settings,
        base_url: base,
        audit: AuditCtx {
            token_name: token_name.clone().unwrap_or_default(),
            request_id,
            now_ms,
            deadline: Some(deadline),
        },
    };
    let result = dispatch(&call, req, &seg_refs).await;
    (result.unwrap_or_else(|e| error::error(&e)), token_name)
}

async fn dispatch(call: &Call, req: Request<Incoming>, segs: &[&str]) -> Result<Resp, ScimError> {
    let method = req.method().clone();
    let query = req.uri().query().map(str::to_owned);
    let if_match = if_match_header(req.headers());
    match (segs, &method) {
        (["Users"], &Method::GET) => users::list(call, query_pairs(query.as_deref())).await,
        (["Users"], &Method::POST) => users::create(call, req).await,
        (["Users", ".search"], &Method::POST) => {
            users::list(call, search_pairs(call, req).await?).await
        }
        (["Users", id], &Method::GET) => users::get(call, id, query.as_deref()).await,
        (["Users", id], &Method::PUT) => users::replace(call, id, req, if_match?).await,
        (["Users", id], &Method::PATCH) => users::patch(call, id, req, if_match?).await,
        (["Users", id], &Method::DELETE) => users::delete(call, id, if_match?).await,
        (["Groups"], &Method::GET) => groups::list(call, query_pairs(query.as_deref())).await,
        (["Groups"], &Method::POST) => groups::create(call, req).await,
        (["Groups", ".search"], &Method::POST) => {
            groups::list(call, search_pairs(call, req).await?).await
        }
        (["Groups", id], &Method::GET) => groups::get(call, id, query.as_deref()).await,
        (["Groups", id], &Method::PUT) => groups::replace(call, id, req, if_match?).await,
        (["Groups", id], &Method::PATCH) => groups::patch(call, id, req, if_match?).await,
        (["Groups", id], &Method::DELETE) => groups::delete(call, id, if_match?).await,
        ([".search"], &Method::POST) => {
            search::list(call, None, search_pairs(call, req).await?).await
        }
        ([".search"], _) => Err(method_not_allowed()),
        (["Bulk"], &Method::POST) => bulk::bulk(call, req).await,
        (["Bulk"], _) => Err(method_not_allowed()),
        ([endpoint], &Method::GET) if is_discovery(segs) => discovery::get(call, endpoint, None),
        ([endpoint, rest], &Method::GET) if is_discovery(segs) => {
            discovery::get(call, endpoint, Some(rest))
        }
        (["Users" | "Groups"] | ["Users" | "Groups", _], _) => Err(method_not_allowed()),
        ([_] | [_, _], _) if is_discovery(segs) => Err(method_not_allowed()),
        _ => Err(ScimError::not_found("No such endpoint.")),
    }
}

fn method_not_allowed() -> ScimError {
    ScimError::status(405, "Method not allowed on this endpoint.")
}

/// `POST /.search` bodies (RFC 7644 §3.4.3) as query pairs. Every member must be one the RFC
/// defines, with its type: strings, integers for `startIndex` and `count`, a list of strings
/// (or one comma-separated string) for `attributes` and `excludedAttributes`.
async fn search_pairs(
    call: &Call,
    req: Request<Incoming>,
) -> Result<Vec<(String, String)>, ScimError> {
    let body = read_json(
        req,
        call.settings.max_body_users,
        call.settings.body_timeout,
    )
    .await?;
    search_request_pairs(&body)
}

/// The members of a SearchRequest and the JSON type each must have.
#[derive(Clone, Copy)]
enum SearchMember {
    Strings,
    StringOrStrings,
    Text,
    Integer,
}

const SEARCH_MEMBERS: &[(&str, SearchMember)] = &[
    ("schemas", SearchMember::Strings),
    ("attributes", SearchMember::StringOrStrings),
    ("excludedAttributes", SearchMember::StringOrStrings),
    ("filter", SearchMember::Text),
    ("sortBy", SearchMember::Text),
    ("sortOrder", SearchMember::Text),
    ("startIndex", SearchMember::Integer),
    ("count", SearchMember::Integer),
];

/// A SearchRequest body as query pairs (names as the RFC spells them; `schemas` dropped).
///
/// # Errors
/// 400 `invalidSyntax` when the body is not an object; 400 `invalidValue` for an unknown member
/// or a member of the wrong type.
pub fn search_request_pairs(body: &serde_json::Value) -> Result<Vec<(String, String)>, ScimError> {
    use serde_json::Value;
    let obj = body
        .as_object()
        .ok_or_else(|| ScimError::invalid_syntax("A SearchRequest object is required."))?;
    let mut pairs = Vec::new();
    for (k, v) in obj {
        let Some(&(name, kind)) = SEARCH_MEMBERS
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(k))
        else {
            return Err(ScimError::invalid_value(
                "The SearchRequest has a member RFC 7644 §3.4.3 does not define.",
            ));
        };
        let wrong = |what: &str| ScimError::invalid_value(format!("{name} must be {what}."));
        let strings = |items: &Vec<Value>| {
            items
                .iter()
                .map(|i| i.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .map(|v| v.join(","))
                .ok_or_else(|| wrong("a list of strings"))
        };
        let value = match (kind, v) {
            (SearchMember::Strings, Value::Array(items)) => strings(items)?,
            (SearchMember::Strings, _) => return Err(wrong("a list of strings")),
            (SearchMember::StringOrStrings, Value::Array(items)) => strings(items)?,
            (SearchMember::StringOrStrings | SearchMember::Text, Value::String(s)) => s.clone(),
            (SearchMember::StringOrStrings, _) => return Err(wrong("a list of strings")),
            (SearchMember::Text, _) => return Err(wrong("a string")),
            (SearchMember::Integer, Value::Number(n)) if n.is_i64() || n.is_u64() => n.to_string(),
            (SearchMember::Integer, _) => return Err(wrong("an integer")),
        };
        if name != "schemas" {
            pairs.push((name.to_string(), value));
        }
    }
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_match_forms() {
        assert_eq!(if_match_version(None).unwrap(), None);
        assert_eq!(if_match_version(Some("*")).unwrap(), None);
        assert_eq!(if_match_version(Some("W/\"3\"")).unwrap(), Some(3));
        assert_eq!(if_match_version(Some("\"4\"")).unwrap(), Some(4));
        assert_eq!(if_match_version(Some("junk")).unwrap_err().status, 412);
        assert!(check_if_match(Some("W/\"2\""), 3).is_err());
        assert!(check_if_match(Some("W/\"3\""), 3).is_ok());
    }

    #[test]
    fn templates_hide_ids() {
        assert_eq!(
            route_template("/scim/v2", "/scim/v2/Users/abc"),
            "/Users/{id}"
        );
        assert_eq!(route_template("/scim/v2", "/scim/v2/Groups"), "/Groups");
        assert_eq!(route_template("/scim/v2", "/other"), "other");
    }
}
