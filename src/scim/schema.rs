//! Schema knowledge: the core User and Group schemas (RFC 7643 §4), the enterprise extension
//! (§4.3), extension URNs declared in the config, attribute case rules and mutability, and the
//! discovery documents (`/ServiceProviderConfig`, `/ResourceTypes`, `/Schemas`).

use serde_json::Value;

pub const USER_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
pub const GROUP_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
pub const ENTERPRISE_USER: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
pub const PATCH_OP: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";
pub const LIST_RESPONSE: &str = "urn:ietf:params:scim:api:messages:2.0:ListResponse";
pub const SEARCH_REQUEST: &str = "urn:ietf:params:scim:api:messages:2.0:SearchRequest";
pub const ERROR: &str = "urn:ietf:params:scim:api:messages:2.0:Error";

/// The schemas this server knows: core, enterprise, and the user extensions the config declares.
#[derive(Debug, Clone, Default)]
pub struct SchemaSet {
    /// Extension URNs declared in the config (`[scim] user_extensions`), as written there.
    pub user_extensions: Vec<String>,
}

impl SchemaSet {
    /// Core + enterprise + the given user extension URNs.
    pub fn new(user_extensions: Vec<String>) -> Self {
        Self { user_extensions }
    }
}

/// Discovery: `/ServiceProviderConfig` (patch, filter with `max_results`, etag supported; bulk,
/// sort and changePassword not supported; one `oauthbearertoken` authentication scheme).
pub fn service_provider_config(_base_url: &str, _max_results: u64) -> Value {
    unimplemented!("scim::schema::service_provider_config")
}

/// Discovery: `/ResourceTypes` as a ListResponse (User with the enterprise and declared
/// extensions, Group).
pub fn resource_types(_base_url: &str, _schemas: &SchemaSet) -> Value {
    unimplemented!("scim::schema::resource_types")
}

/// Discovery: `/Schemas` as a ListResponse of schema definitions.
pub fn schemas(_base_url: &str, _schemas: &SchemaSet) -> Value {
    unimplemented!("scim::schema::schemas")
}
