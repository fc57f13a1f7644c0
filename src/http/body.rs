//! Request bodies: content type check, size limit (413 before reading past the limit), JSON
//! parse (400 invalidSyntax), and query-string decoding (`+` and `%20` both mean a space).

use crate::scim::ScimError;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE};
use hyper::Request;
use serde_json::Value;
use std::time::Duration;

/// Accept `application/scim+json` and `application/json` (with parameters such as charset); a
/// request without a content type is read as JSON.
///
/// # Errors
/// 415 for any other media type.
pub fn check_content_type(req: &Request<Incoming>) -> Result<(), ScimError> {
    let Some(ct) = req.headers().get(CONTENT_TYPE) else {
        return Ok(());
    };
    let ct = ct.to_str().unwrap_or("").to_ascii_lowercase();
    let media = ct.split(';').next().unwrap_or("").trim();
    if media == "application/scim+json" || media == "application/json" {
        Ok(())
    } else {
        Err(ScimError::status(
            415,
            "Unsupported media type: send application/scim+json or application/json.",
        ))
    }
}

/// Read the whole body, at most `limit` bytes within `timeout`, and parse it as JSON.
///
/// # Errors
/// 413 over the limit (by Content-Length at once, else while reading), 408 when the body is not
/// complete within `timeout` (a stalled upload must not hold the request until its deadline),
/// 400 invalidSyntax for anything that is not JSON.
pub async fn read_json(
    req: Request<Incoming>,
    limit: u64,
    timeout: Duration,
) -> Result<Value, ScimError> {
    check_content_type(&req)?;
    let too_large = || {
        ScimError::status(
            413,
            format!("The request body is larger than the limit of {limit} bytes."),
        )
    };
    if let Some(len) = req.headers().get(CONTENT_LENGTH) {
        let len: u64 = len
            .to_str()
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(u64::MAX);
        if len > limit {
            return Err(too_large());
        }
    }
    let limit_usize = usize::try_from(limit).unwrap_or(usize::MAX);
    let collected = tokio::time::timeout(
        timeout,
        Limited::new(req.into_body(), limit_usize).collect(),
    )
    .await
    .map_err(|_elapsed| {
        ScimError::status(
            408,
            "The request body did not arrive in time; the connection is closed.",
        )
    })?
    .map_err(|e| {
        if e.downcast_ref::<http_body_util::LengthLimitError>()
            .is_some()
        {
            too_large()
        } else {
            ScimError::invalid_syntax("The request body could not be read.")
        }
    })?;
    let bytes = collected.to_bytes();
    if bytes.is_empty() {
        return Err(ScimError::invalid_syntax(
            "The request body is empty; a JSON object is required.",
        ));
    }
    // serde_json caps nesting at 128 levels, so hostile depth cannot exhaust the stack; the
    // SCIM parsers apply the tighter resource limits.
    serde_json::from_slice(&bytes).map_err(|e| {
        ScimError::invalid_syntax(format!(
            "The request body is not valid JSON (line {}, column {}).",
            e.line(),
            e.column()
        ))
    })
}

/// Decode a query string into pairs (`+` is a space, as Entra sends it).
pub fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    query
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_plus_and_percent_decoding() {
        let pairs = query_pairs(Some("filter=externalId+eq+%22john%22&count=2"));
        assert_eq!(pairs[0], ("filter".into(), "externalId eq \"john\"".into()));
        let pairs = query_pairs(Some("filter=userName%20eq%20%22a%40b%22"));
        assert_eq!(pairs[0].1, "userName eq \"a@b\"");
    }
}
