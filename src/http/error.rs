//! Responses: SCIM JSON bodies and RFC 7644 §3.12 error bodies, with the headers each status
//! needs (`WWW-Authenticate` on 401, `Retry-After` on 503 and 429).

use crate::scim::ScimError;
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use hyper::{Response, StatusCode};
use serde_json::Value;

/// The response type of every handler.
pub type Resp = Response<Full<Bytes>>;

/// The SCIM media type.
pub const SCIM_JSON: &str = "application/scim+json";

/// A JSON response with the SCIM media type.
pub fn json(status: u16, body: &Value) -> Resp {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut resp = Response::new(Full::new(Bytes::from(bytes)));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(SCIM_JSON));
    resp
}

/// An empty response (204).
pub fn no_content() -> Resp {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::NO_CONTENT;
    resp
}

/// The SCIM error body for `err`.
pub fn error(err: &ScimError) -> Resp {
    let mut resp = json(err.status, &err.to_json());
    match err.status {
        401 => {
            resp.headers_mut().insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"scim-sync\""),
            );
        }
        503 | 429 => {
            resp.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("5"));
        }
        _ => {}
    }
    resp
}

/// Plain text (admin endpoints).
pub fn text(status: u16, content_type: &'static str, body: String) -> Resp {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}
