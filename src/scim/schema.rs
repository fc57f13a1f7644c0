//! Schema knowledge: the core User and Group schemas (RFC 7643 §4), the enterprise extension
//! (§4.3), extension URNs declared in the config, attribute case rules and mutability, and the
//! discovery documents (`/ServiceProviderConfig`, `/ResourceTypes`, `/Schemas`).
//!
//! Owns schema facts and the discovery JSON; validation lives in `resource.rs`. No I/O.

use crate::scim::list::list_response;
use serde_json::{json, Value};

pub const USER_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
pub const GROUP_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
pub const ENTERPRISE_USER: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
pub const PATCH_OP: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";
pub const LIST_RESPONSE: &str = "urn:ietf:params:scim:api:messages:2.0:ListResponse";
pub const SEARCH_REQUEST: &str = "urn:ietf:params:scim:api:messages:2.0:SearchRequest";
pub const ERROR: &str = "urn:ietf:params:scim:api:messages:2.0:Error";
pub const SERVICE_PROVIDER_CONFIG: &str =
    "urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig";
pub const RESOURCE_TYPE: &str = "urn:ietf:params:scim:schemas:core:2.0:ResourceType";
pub const SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:Schema";

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
pub fn service_provider_config(base_url: &str, max_results: u64) -> Value {
    let base = base_url.trim_end_matches('/');
    json!({
        "schemas": [SERVICE_PROVIDER_CONFIG],
        "patch": {"supported": true},
        "bulk": {"supported": false, "maxOperations": 0, "maxPayloadSize": 0},
        "filter": {"supported": true, "maxResults": max_results},
        "changePassword": {"supported": false},
        "sort": {"supported": false},
        "etag": {"supported": true},
        "authenticationSchemes": [{
            "type": "oauthbearertoken",
            "name": "OAuth Bearer Token",
            "description": "Authentication with a bearer token (RFC 6750)",
            "specUri": "https://www.rfc-editor.org/info/rfc6750",
            "primary": true,
        }],
        "meta": {
            "resourceType": "ServiceProviderConfig",
            "location": format!("{base}/ServiceProviderConfig"),
        },
    })
}

/// Discovery: `/ResourceTypes` as a ListResponse (User with the enterprise and declared
/// extensions, Group).
pub fn resource_types(base_url: &str, schemas: &SchemaSet) -> Value {
    let base = base_url.trim_end_matches('/');
    let mut extensions = vec![json!({"schema": ENTERPRISE_USER, "required": false})];
    for urn in extension_urns(schemas) {
        extensions.push(json!({"schema": urn, "required": false}));
    }
    let resource_type = |id: &str, schema: &str, ext: Vec<Value>| {
        json!({
            "schemas": [RESOURCE_TYPE],
            "id": id,
            "name": id,
            "endpoint": format!("/{id}s"),
            "description": format!("{id} accounts"),
            "schema": schema,
            "schemaExtensions": ext,
            "meta": {"resourceType": "ResourceType", "location": format!("{base}/ResourceTypes/{id}")},
        })
    };
    let list = vec![
        resource_type("User", USER_SCHEMA, extensions),
        resource_type("Group", GROUP_SCHEMA, Vec::new()),
    ];
    list_response(list, 2, 1)
}

/// Declared extensions other than the enterprise one (which is always there), deduplicated.
fn extension_urns(schemas: &SchemaSet) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    for urn in &schemas.user_extensions {
        let dup = urn.eq_ignore_ascii_case(ENTERPRISE_USER)
            || out.iter().any(|u| u.eq_ignore_ascii_case(urn));
        if !dup {
            out.push(urn);
        }
    }
    out
}

/// Discovery: `/Schemas` as a ListResponse of schema definitions.
pub fn schemas(base_url: &str, schemas: &SchemaSet) -> Value {
    let base = base_url.trim_end_matches('/');
    let mut list = vec![
        schema_doc(base, USER_SCHEMA, "User", "User Account", user_attributes()),
        schema_doc(base, GROUP_SCHEMA, "Group", "Group", group_attributes()),
        schema_doc(
            base,
            ENTERPRISE_USER,
            "EnterpriseUser",
            "Enterprise User",
            enterprise_attributes(),
        ),
    ];
    for urn in extension_urns(schemas) {
        // Declared extensions are stored verbatim; their attributes are not described here.
        list.push(schema_doc(
            base,
            urn,
            "Extension",
            "Extension declared in the configuration",
            Vec::new(),
        ));
    }
    let total = u64::try_from(list.len()).unwrap_or(u64::MAX);
    list_response(list, total, 1)
}

fn schema_doc(
    base: &str,
    id: &str,
    name: &str,
    description: &str,
    attributes: Vec<Value>,
) -> Value {
    json!({
        "schemas": [SCHEMA],
        "id": id,
        "name": name,
        "description": description,
        "attributes": attributes,
        "meta": {"resourceType": "Schema", "location": format!("{base}/Schemas/{id}")},
    })
}

/// One attribute definition (RFC 7643 §7). `flags`, space-separated: `required`, `multi`,
/// `exact` (caseExact), `unique` (server), `readOnly`, `writeOnly`, `immutable`, `always`,
/// `never`, `request` (returned).
fn attr(name: &str, ty: &str, flags: &str) -> Value {
    let has = |f: &str| flags.split_whitespace().any(|x| x == f);
    let mutability = ["readOnly", "writeOnly", "immutable"]
        .into_iter()
        .find(|m| has(m))
        .unwrap_or("readWrite");
    let returned = ["always", "never", "request"]
        .into_iter()
        .find(|r| has(r))
        .unwrap_or("default");
    let mut a = json!({
        "name": name,
        "type": ty,
        "multiValued": has("multi"),
        "description": name,
        "required": has("required"),
        "caseExact": has("exact"),
        "mutability": mutability,
        "returned": returned,
        "uniqueness": if has("unique") { "server" } else { "none" },
    });
    if ty == "reference" {
        if let Some(o) = a.as_object_mut() {
            o.insert(
                "referenceTypes".into(),
                json!(["external", "uri", "User", "Group"]),
            );
        }
    }
    a
}

fn complex(name: &str, flags: &str, subs: Vec<Value>) -> Value {
    let mut a = attr(name, "complex", flags);
    if let Some(o) = a.as_object_mut() {
        o.insert("subAttributes".into(), Value::Array(subs));
        o.remove("caseExact");
        o.remove("uniqueness");
    }
    a
}

/// Sub-attributes shared by most multi-valued attributes (RFC 7643 §2.4).
fn multi_subs(value_type: &str) -> Vec<Value> {
    vec![
        attr("value", value_type, ""),
        attr("display", "string", ""),
        attr("type", "string", ""),
        attr("primary", "boolean", ""),
    ]
}

fn user_attributes() -> Vec<Value> {
    let s = |n: &str| attr(n, "string", "");
    vec![
        attr("userName", "string", "required unique"),
        complex(
            "name",
            "",
            [
                "formatted",
                "familyName",
                "givenName",
                "middleName",
                "honorificPrefix",
                "honorificSuffix",
            ]
            .into_iter()
            .map(s)
            .collect(),
        ),
        s("displayName"),
        s("nickName"),
        attr("profileUrl", "reference", ""),
        s("title"),
        s("userType"),
        s("preferredLanguage"),
        s("locale"),
        s("timezone"),
        attr("active", "boolean", ""),
        attr("password", "string", "writeOnly never"),
        complex("emails", "multi", multi_subs("string")),
        complex("phoneNumbers", "multi", multi_subs("string")),
        complex("ims", "multi", multi_subs("string")),
        complex("photos", "multi", multi_subs("reference")),
        complex(
            "addresses",
            "multi",
            [
                "formatted",
                "streetAddress",
                "locality",
                "region",
                "postalCode",
                "country",
                "type",
            ]
            .into_iter()
            .map(s)
            .chain([attr("primary", "boolean", "")])
            .collect(),
        ),
        complex(
            "groups",
            "multi readOnly",
            vec![
                attr("value", "string", "exact readOnly"),
                attr("$ref", "reference", "exact readOnly"),
                attr("display", "string", "readOnly"),
                attr("type", "string", "readOnly"),
            ],
        ),
        complex("entitlements", "multi", multi_subs("string")),
        complex("roles", "multi", multi_subs("string")),
        complex("x509Certificates", "multi", multi_subs("binary")),
        attr("externalId", "string", "exact"),
    ]
}

fn group_attributes() -> Vec<Value> {
    vec![
        attr("displayName", "string", "required unique"),
        complex(
            "members",
            "multi",
            vec![
                attr("value", "string", "exact immutable"),
                attr("$ref", "reference", "exact immutable"),
                attr("display", "string", "readOnly"),
                attr("type", "string", "immutable"),
            ],
        ),
        attr("externalId", "string", "exact"),
    ]
}

fn enterprise_attributes() -> Vec<Value> {
    let s = |n: &str| attr(n, "string", "");
    vec![
        s("employeeNumber"),
        s("costCenter"),
        s("organization"),
        s("division"),
        s("department"),
        complex(
            "manager",
            "",
            vec![
                attr("value", "string", "exact"),
                attr("$ref", "reference", "exact"),
                attr("displayName", "string", "readOnly"),
            ],
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_provider_config_shape() {
        let spc = service_provider_config("https://h/scim/v2/", 100);
        assert_eq!(spc["patch"]["supported"], true);
        assert_eq!(spc["bulk"]["supported"], false);
        assert_eq!(spc["filter"], json!({"supported": true, "maxResults": 100}));
        assert_eq!(spc["sort"]["supported"], false);
        assert_eq!(spc["changePassword"]["supported"], false);
        assert_eq!(spc["etag"]["supported"], true);
        assert_eq!(spc["authenticationSchemes"][0]["type"], "oauthbearertoken");
        assert_eq!(
            spc["meta"]["location"],
            "https://h/scim/v2/ServiceProviderConfig"
        );
    }

    #[test]
    fn resource_types_list_extensions() {
        let set = SchemaSet::new(vec![
            "urn:ietf:params:scim:schemas:extension:ironclad:2.0:User".into(),
            ENTERPRISE_USER.into(),
        ]);
        let rt = resource_types("https://h", &set);
        assert_eq!(rt["totalResults"], 2);
        let user = &rt["Resources"][0];
        assert_eq!(user["endpoint"], "/Users");
        assert_eq!(user["schemaExtensions"].as_array().unwrap().len(), 2);
        assert_eq!(rt["Resources"][1]["endpoint"], "/Groups");
        assert_eq!(user["meta"]["location"], "https://h/ResourceTypes/User");
    }

    #[test]
    fn schema_documents() {
        let set = SchemaSet::new(vec![
            "urn:ietf:params:scim:schemas:extension:ironclad:2.0:User".into(),
        ]);
        let doc = schemas("https://h", &set);
        assert_eq!(doc["totalResults"], 4);
        let user = &doc["Resources"][0];
        assert_eq!(user["id"], USER_SCHEMA);
        let attrs = user["attributes"].as_array().unwrap();
        let find = |n: &str| attrs.iter().find(|a| a["name"] == n).unwrap();
        assert_eq!(find("userName")["uniqueness"], "server");
        assert_eq!(find("userName")["caseExact"], false);
        assert_eq!(find("externalId")["caseExact"], true);
        assert_eq!(find("password")["returned"], "never");
        assert_eq!(find("groups")["mutability"], "readOnly");
        assert_eq!(find("emails")["multiValued"], true);
        let group = &doc["Resources"][1];
        assert_eq!(group["attributes"][0]["name"], "displayName");
        assert_eq!(doc["Resources"][2]["id"], ENTERPRISE_USER);
    }
}
