//! Bulk requests (RFC 7644 §3.7): parsing a `BulkRequest` within the advertised limits and
//! resolving `bulkId:` references. Executing the operations is the HTTP layer's (each one goes
//! through the handler it would reach alone). No I/O.

use crate::scim::error::ScimError;
use crate::scim::schema::BULK_REQUEST;
use serde_json::{Map, Value};
use std::collections::{HashMap, HashSet};

/// The methods a bulk operation may have (RFC 7644 §3.7: no GET).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BulkMethod {
    Post,
    Put,
    Patch,
    Delete,
}

impl BulkMethod {
    /// As in the response.
    pub fn as_str(self) -> &'static str {
        match self {
            BulkMethod::Post => "POST",
            BulkMethod::Put => "PUT",
            BulkMethod::Patch => "PATCH",
            BulkMethod::Delete => "DELETE",
        }
    }
}

/// One operation of a bulk request.
#[derive(Debug, Clone, PartialEq)]
pub struct BulkOp {
    pub method: BulkMethod,
    /// `/Users`, `/Groups/<id>`, `/Groups/bulkId:<bulkId>` ...
    pub path: String,
    /// Required on POST: how later operations name the resource it creates.
    pub bulk_id: Option<String>,
    /// An ETag the resource must still have (`If-Match`).
    pub version: Option<String>,
    /// The body (POST, PUT, PATCH).
    pub data: Option<Value>,
}

/// A parsed bulk request.
#[derive(Debug, Clone, PartialEq)]
pub struct BulkRequest {
    /// Stop after this many failed operations (`None`: run them all).
    pub fail_on_errors: Option<usize>,
    pub ops: Vec<BulkOp>,
}

fn member<'a>(obj: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    obj.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
        .filter(|v| !v.is_null())
}

/// Parse a BulkRequest of at most `max_ops` operations.
///
/// # Errors
/// 413 over `max_ops` (RFC 7644 §3.7.4); 400 `invalidSyntax` for a body that is not a
/// BulkRequest (no `Operations` array, an operation without a valid `method`, a POST without
/// `bulkId`, a missing `path` or `data`), 400 `invalidValue` for a duplicate `bulkId` or a
/// `failOnErrors` that is not a positive integer.
pub fn parse_bulk(body: &Value, max_ops: usize) -> Result<BulkRequest, ScimError> {
    let obj = body
        .as_object()
        .ok_or_else(|| ScimError::invalid_syntax("A BulkRequest object is required."))?;
    match member(obj, "schemas") {
        None => {}
        Some(Value::Array(a))
            if a.iter().all(Value::is_string)
                && (a.is_empty() || a.iter().any(|s| s.as_str() == Some(BULK_REQUEST))) => {}
        Some(_) => {
            return Err(ScimError::invalid_syntax(format!(
                "schemas must be [\"{BULK_REQUEST}\"]."
            )))
        }
    }
    let fail_on_errors = match member(obj, "failOnErrors") {
        None => None,
        Some(v) => match v.as_u64() {
            Some(n) if n > 0 => Some(usize::try_from(n).unwrap_or(usize::MAX)),
            _ => {
                return Err(ScimError::invalid_value(
                    "failOnErrors must be a positive integer.",
                ))
            }
        },
    };
    let Some(Value::Array(ops)) = member(obj, "Operations") else {
        return Err(ScimError::invalid_syntax("Operations must be an array."));
    };
    if ops.len() > max_ops {
        return Err(ScimError::status(
            413,
            format!(
                "The bulk request has {} operations, more than maxOperations ({max_ops}).",
                ops.len()
            ),
        ));
    }
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(ops.len());
    for (i, op) in ops.iter().enumerate() {
        let bad = |what: &str| ScimError::invalid_syntax(format!("Operations[{i}]: {what}."));
        let op = op.as_object().ok_or_else(|| bad("must be an object"))?;
        let method = match member(op, "method").and_then(Value::as_str) {
            Some(m) if m.eq_ignore_ascii_case("POST") => BulkMethod::Post,
            Some(m) if m.eq_ignore_ascii_case("PUT") => BulkMethod::Put,
            Some(m) if m.eq_ignore_ascii_case("PATCH") => BulkMethod::Patch,
            Some(m) if m.eq_ignore_ascii_case("DELETE") => BulkMethod::Delete,
            _ => return Err(bad("method must be POST, PUT, PATCH or DELETE")),
        };
        let path = member(op, "path")
            .and_then(Value::as_str)
            .filter(|p| !p.trim().is_empty())
            .ok_or_else(|| bad("path must be a string"))?
            .to_string();
        let bulk_id = match member(op, "bulkId") {
            None => None,
            Some(Value::String(s)) if !s.is_empty() && s.len() <= 256 => Some(s.clone()),
            Some(_) => return Err(bad("bulkId must be a non-empty string")),
        };
        if method == BulkMethod::Post && bulk_id.is_none() {
            return Err(bad("a POST needs a bulkId"));
        }
        if let Some(id) = &bulk_id {
            if !seen.insert(id.clone()) {
                return Err(ScimError::invalid_value(format!(
                    "Operations[{i}]: bulkId is used by an earlier operation."
                )));
            }
        }
        let version = match member(op, "version") {
            None => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(bad("version must be a string")),
        };
        let data = member(op, "data").cloned();
        if method != BulkMethod::Delete && data.is_none() {
            return Err(bad("data is required"));
        }
        out.push(BulkOp {
            method,
            path,
            bulk_id,
            version,
            data,
        });
    }
    Ok(BulkRequest {
        fail_on_errors,
        ops: out,
    })
}

const PREFIX: &str = "bulkId:";

fn reference(s: &str) -> Option<&str> {
    s.strip_prefix(PREFIX).filter(|r| !r.is_empty())
}

impl BulkOp {
    /// The bulkIds this operation names: a path segment `bulkId:<id>` or a string value
    /// `"bulkId:<id>"` anywhere in `data` (RFC 7644 §3.7.2).
    pub fn references(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .path
            .split('/')
            .filter_map(reference)
            .map(str::to_string)
            .collect();
        if let Some(data) = &self.data {
            let mut stack = vec![data];
            while let Some(v) = stack.pop() {
                match v {
                    Value::String(s) => out.extend(reference(s).map(str::to_string)),
                    Value::Array(a) => stack.extend(a),
                    Value::Object(o) => stack.extend(o.values()),
                    _ => {}
                }
            }
        }
        out.sort();
        out.dedup();
        out
    }

    /// Path and data with every reference replaced by the id its operation created
    /// (references not in `ids` stay as they are).
    pub fn resolved(&self, ids: &HashMap<String, String>) -> (String, Option<Value>) {
        let sub = |s: &str| reference(s).and_then(|r| ids.get(r)).cloned();
        let path = self
            .path
            .split('/')
            .map(|seg| sub(seg).unwrap_or_else(|| seg.to_string()))
            .collect::<Vec<_>>()
            .join("/");
        let mut data = self.data.clone();
        if let Some(d) = data.as_mut() {
            let mut stack = vec![d];
            while let Some(v) = stack.pop() {
                match v {
                    Value::String(s) => {
                        if let Some(id) = sub(s.as_str()) {
                            *s = id;
                        }
                    }
                    Value::Array(a) => stack.extend(a.iter_mut()),
                    Value::Object(o) => stack.extend(o.values_mut()),
                    _ => {}
                }
            }
        }
        (path, data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scim::error::ScimType;
    use serde_json::json;

    fn req(ops: Value) -> Value {
        json!({"schemas": [BULK_REQUEST], "Operations": ops})
    }

    #[test]
    fn parses_the_rfc_example_shape() {
        let body = json!({"schemas": [BULK_REQUEST], "failOnErrors": 1, "Operations": [
            {"method": "POST", "path": "/Users", "bulkId": "qwerty", "data": {"userName": "a"}},
            {"method": "post", "path": "/Groups", "bulkId": "ytrewq",
             "data": {"displayName": "G", "members": [{"type": "User", "value": "bulkId:qwerty"}]}},
            {"method": "PATCH", "path": "/Groups/bulkId:ytrewq", "version": "W/\"1\"",
             "data": {"Operations": [{"op": "add", "path": "members", "value": [{"value": "bulkId:qwerty"}]}]}},
            {"method": "DELETE", "path": "/Users/b7c14771"}]});
        let r = parse_bulk(&body, 10).unwrap();
        assert_eq!(r.fail_on_errors, Some(1));
        assert_eq!(r.ops.len(), 4);
        assert_eq!(r.ops[1].method, BulkMethod::Post);
        assert_eq!(r.ops[1].references(), ["qwerty"]);
        assert_eq!(r.ops[2].references(), ["qwerty", "ytrewq"]);
        assert!(r.ops[3].references().is_empty());
        let ids = HashMap::from([
            ("qwerty".to_string(), "u-1".to_string()),
            ("ytrewq".to_string(), "g-1".to_string()),
        ]);
        let (path, data) = r.ops[2].resolved(&ids);
        assert_eq!(path, "/Groups/g-1");
        assert_eq!(data.unwrap()["Operations"][0]["value"][0]["value"], "u-1");
        let (_, data) = r.ops[1].resolved(&HashMap::new());
        assert_eq!(data.unwrap()["members"][0]["value"], "bulkId:qwerty");
    }

    #[test]
    fn limits_and_malformed_requests() {
        let op = json!({"method": "DELETE", "path": "/Users/x"});
        let err = parse_bulk(&req(json!([op, op, op])), 2).unwrap_err();
        assert_eq!((err.status, err.scim_type), (413, None));
        assert!(parse_bulk(&req(json!([op, op])), 2).is_ok());
        for (body, want) in [
            (json!([]), ScimType::InvalidSyntax),
            (json!({"Operations": {}}), ScimType::InvalidSyntax),
            (
                req(json!([{"method": "GET", "path": "/Users"}])),
                ScimType::InvalidSyntax,
            ),
            (
                req(json!([{"method": "POST", "path": "/Users", "data": {}}])),
                ScimType::InvalidSyntax,
            ),
            (
                req(json!([{"method": "PUT", "path": "/Users/x"}])),
                ScimType::InvalidSyntax,
            ),
            (req(json!([{"method": "DELETE"}])), ScimType::InvalidSyntax),
            (
                req(
                    json!([{"method": "POST", "path": "/Users", "bulkId": "a", "data": {}},
                           {"method": "POST", "path": "/Users", "bulkId": "a", "data": {}}]),
                ),
                ScimType::InvalidValue,
            ),
            (
                json!({"failOnErrors": 0, "Operations": []}),
                ScimType::InvalidValue,
            ),
            (
                json!({"schemas": ["urn:x"], "Operations": []}),
                ScimType::InvalidSyntax,
            ),
        ] {
            let err = parse_bulk(&body, 10).unwrap_err();
            assert_eq!((err.status, err.scim_type), (400, Some(want)), "{body}");
        }
    }
}
