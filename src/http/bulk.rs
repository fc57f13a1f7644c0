//! `POST /Bulk` (RFC 7644 §3.7). Each operation goes through the handler it would reach as a
//! request of its own (`users::create_body`, `groups::patch_body` ...), so each is one store
//! transaction, committed and acknowledged on its own exactly as if it came alone: a crash
//! mid-bulk leaves the operations before it whole and none half-applied.
//!
//! Operations run in request order; one that names a `bulkId` whose POST has not run yet waits
//! until it has (forward references); one naming a bulkId no POST in the request defines is
//! 400 `invalidValue`, one whose referenced POST failed, or that is part of a reference cycle,
//! is 409. With `failOnErrors`, processing stops once that many operations failed; the
//! operations not run are left out of the response. Past the request deadline, operations not
//! yet started are answered 503 without running (they may be retried).

use crate::http::body::read_json;
use crate::http::error::{json, Resp};
use crate::http::router::Call;
use crate::http::{groups, users};
use crate::scim::bulk::{parse_bulk, BulkMethod, BulkOp};
use crate::scim::schema::BULK_RESPONSE;
use crate::scim::ScimError;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{ETAG, LOCATION};
use hyper::Request;
use serde_json::{json, Map, Value};
use std::collections::{HashMap, HashSet};

/// `POST /Bulk`.
///
/// # Errors
/// 501 when Bulk is off (`bulk_max_operations = 0`); 413 over `maxPayloadSize` or
/// `maxOperations`; 400 for a body that is not a BulkRequest. Each operation's own outcome is
/// in the 200 BulkResponse.
pub async fn bulk(call: &Call, req: Request<Incoming>) -> Result<Resp, ScimError> {
    let max_ops = call.settings.bulk_max_operations;
    if max_ops == 0 {
        return Err(ScimError::status(
            501,
            "Bulk is not enabled on this server.",
        ));
    }
    let max_payload = call.settings.bulk_max_payload_bytes;
    let body = read_json(req, max_payload, call.settings.body_timeout)
        .await
        .map_err(|e| match e.status {
            413 => ScimError::status(
                413,
                format!(
                    "The size of the bulk operation exceeds the maxPayloadSize ({max_payload})."
                ),
            ),
            _ => e,
        })?;
    let request = parse_bulk(&body, max_ops)?;
    drop(body);
    let ops = request.ops;
    let defined: HashSet<&str> = ops.iter().filter_map(|o| o.bulk_id.as_deref()).collect();
    let mut created: HashMap<String, String> = HashMap::new();
    let mut failed: HashSet<String> = HashSet::new();
    let mut results: Vec<Option<Value>> = vec![None; ops.len()];
    let mut errors = 0usize;
    let limit = request.fail_on_errors.unwrap_or(usize::MAX);
    let mut pending: Vec<usize> = (0..ops.len()).collect();
    'passes: while !pending.is_empty() {
        let mut waiting = Vec::new();
        let mut progress = false;
        for &i in &pending {
            if errors >= limit {
                break 'passes;
            }
            let Some(op) = ops.get(i) else {
                continue;
            };
            let refs = op.references();
            let outcome = if let Some(r) = refs.iter().find(|r| !defined.contains(r.as_str())) {
                Err(ScimError::invalid_value(format!(
                    "bulkId:{} names no POST operation of this request.",
                    label(r)
                )))
            } else if let Some(r) = refs.iter().find(|r| failed.contains(*r)) {
                Err(ScimError::status(
                    409,
                    format!("The operation with bulkId {} failed.", label(r)),
                ))
            } else if refs.iter().any(|r| !created.contains_key(r)) {
                waiting.push(i);
                continue;
            } else {
                run(call, op, &created).await
            };
            progress = true;
            if let Some(slot) = results.get_mut(i) {
                record(op, outcome, slot, &mut created, &mut failed, &mut errors);
            }
        }
        if !progress {
            // Every operation left waits on another one left: a reference cycle.
            for &i in &waiting {
                if errors >= limit {
                    break 'passes;
                }
                let err = ScimError::status(
                    409,
                    "The operation is part of a cycle of bulkId references.",
                );
                if let (Some(op), Some(slot)) = (ops.get(i), results.get_mut(i)) {
                    record(op, Err(err), slot, &mut created, &mut failed, &mut errors);
                }
            }
            break;
        }
        pending = waiting;
    }
    let operations: Vec<Value> = results.into_iter().flatten().collect();
    Ok(json(
        200,
        &json!({"schemas": [BULK_RESPONSE], "Operations": operations}),
    ))
}

/// A bulkId as errors name it (client text: kept short and printable).
fn label(id: &str) -> String {
    let plain = id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c));
    if plain && id.len() <= 64 {
        id.to_string()
    } else {
        "(not shown)".to_string()
    }
}

/// What one operation answered, as its BulkResponse entry.
struct Outcome {
    status: u16,
    version: Option<String>,
    location: Option<String>,
    /// The error body of a failed operation.
    response: Option<Value>,
}

fn record(
    op: &BulkOp,
    outcome: Result<Outcome, ScimError>,
    slot: &mut Option<Value>,
    created: &mut HashMap<String, String>,
    failed: &mut HashSet<String>,
    errors: &mut usize,
) {
    let outcome = outcome.unwrap_or_else(|e| Outcome {
        status: e.status,
        version: None,
        location: None,
        response: Some(e.to_json()),
    });
    let ok = (200..300).contains(&outcome.status);
    let mut entry = Map::new();
    entry.insert("method".into(), Value::String(op.method.as_str().into()));
    if let Some(b) = &op.bulk_id {
        entry.insert("bulkId".into(), Value::String(b.clone()));
        match (&outcome.location, ok) {
            (Some(loc), true) if op.method == BulkMethod::Post => {
                if let Some(id) = loc.rsplit('/').next() {
                    created.insert(b.clone(), id.to_string());
                }
            }
            _ if !ok => {
                failed.insert(b.clone());
            }
            _ => {}
        }
    }
    if let Some(v) = outcome.version {
        entry.insert("version".into(), Value::String(v));
    }
    if let Some(l) = outcome.location {
        entry.insert("location".into(), Value::String(l));
    }
    entry.insert("status".into(), Value::String(outcome.status.to_string()));
    if let Some(r) = outcome.response {
        entry.insert("response".into(), r);
    }
    if !ok {
        *errors += 1;
    }
    *slot = Some(Value::Object(entry));
}

/// Run one operation through its handler.
async fn run(
    call: &Call,
    op: &BulkOp,
    created: &HashMap<String, String>,
) -> Result<Outcome, ScimError> {
    if call
        .audit
        .deadline
        .as_ref()
        .is_some_and(|d| std::time::Instant::now() >= d.at())
    {
        return Err(ScimError::status(
            503,
            "The bulk request reached its deadline before this operation; it was not run.",
        ));
    }
    let (path, data) = op.resolved(created);
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let version = op.version.clone();
    let data = data.unwrap_or(Value::Null);
    let resp = match (op.method, segs.as_slice()) {
        (BulkMethod::Post, ["Users"]) => users::create_body(call, data, None).await,
        (BulkMethod::Put, ["Users", id]) => users::replace_body(call, id, data, None, version).await,
        (BulkMethod::Patch, ["Users", id]) => users::patch_body(call, id, data, None, version).await,
        (BulkMethod::Delete, ["Users", id]) => users::delete(call, id, version).await,
        (BulkMethod::Post, ["Groups"]) => groups::create_body(call, data, None).await,
        (BulkMethod::Put, ["Groups", id]) => {
            groups::replace_body(call, id, data, None, version).await
        }
        (BulkMethod::Patch, ["Groups", id]) => {
            groups::patch_body(call, id, data, None, version).await
        }
        (BulkMethod::Delete, ["Groups", id]) => groups::delete(call, id, version).await,
        _ => Err(ScimError::invalid_path(
            "A bulk operation's path must be /Users, /Groups, /Users/{id} or /Groups/{id}, as its method allows.",
        )),
    }?;
    let status = resp.status().as_u16();
    let header = |name| {
        resp.headers()
            .get(name)
            .and_then(|v: &hyper::header::HeaderValue| v.to_str().ok())
            .map(str::to_string)
    };
    let version = header(ETAG);
    let location = header(LOCATION).or_else(|| match segs.as_slice() {
        [endpoint, id] if (200..300).contains(&status) && op.method != BulkMethod::Delete => {
            Some(format!("{}/{endpoint}/{id}", call.base_url))
        }
        _ => None,
    });
    let response = if (200..300).contains(&status) {
        None
    } else {
        let bytes = resp.into_body().collect().await.map(|b| b.to_bytes()).ok();
        bytes.and_then(|b| serde_json::from_slice(&b).ok())
    };
    Ok(Outcome {
        status,
        version,
        location,
        response,
    })
}
