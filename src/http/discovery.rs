//! Discovery endpoints (RFC 7644 §4): `/ServiceProviderConfig`, `/ResourceTypes`, `/Schemas`.
//! Anonymous (RFC 7644 §4 allows it) and free of any filter or body parsing.

use crate::http::error::{json, Resp};
use crate::http::router::Call;
use crate::scim::schema;
use crate::scim::ScimError;
use serde_json::Value;

/// Answer a GET on a discovery path (`rest` is what follows the endpoint name).
///
/// # Errors
/// 404 for an unknown resource type or schema.
pub fn get(call: &Call, endpoint: &str, rest: Option<&str>) -> Result<Resp, ScimError> {
    match (endpoint, rest) {
        ("ServiceProviderConfig", None) => Ok(json(
            200,
            &schema::service_provider_config(
                &call.base_url,
                call.settings.max_page_size,
                call.settings.bulk_max_operations,
                call.settings.bulk_max_payload_bytes,
            ),
        )),
        ("ResourceTypes", None) => Ok(json(
            200,
            &schema::resource_types(&call.base_url, &call.settings.schemas),
        )),
        ("Schemas", None) => Ok(json(
            200,
            &schema::schemas(&call.base_url, &call.settings.schemas),
        )),
        ("ResourceTypes", Some(name)) => {
            let all = schema::resource_types(&call.base_url, &call.settings.schemas);
            find(&all, "id", name)
                .map(|v| json(200, &v))
                .ok_or_else(|| ScimError::not_found("No such resource type."))
        }
        ("Schemas", Some(urn)) => {
            let all = schema::schemas(&call.base_url, &call.settings.schemas);
            find(&all, "id", urn)
                .map(|v| json(200, &v))
                .ok_or_else(|| ScimError::not_found("No such schema."))
        }
        _ => Err(ScimError::not_found("No such endpoint.")),
    }
}

fn find(list: &Value, key: &str, wanted: &str) -> Option<Value> {
    list.get("Resources")?
        .as_array()?
        .iter()
        .find(|r| {
            r.get(key)
                .and_then(Value::as_str)
                .is_some_and(|v| v.eq_ignore_ascii_case(wanted))
        })
        .cloned()
}
