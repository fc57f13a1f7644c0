//! Schema knowledge: the core User and Group schemas (RFC 7643 §4), the enterprise extension
//! (§4.3), extension URNs declared in the config, attribute case rules and mutability, and the
//! discovery documents (`/ServiceProviderConfig`, `/ResourceTypes`, `/Schemas`).
//!
//! Owns schema facts and the discovery JSON; validation lives in `resource.rs`. No I/O.

use crate::scim::error::ScimError;
use crate::scim::filter::Filter;
use crate::scim::list::list_response;
use crate::scim::path::AttrPath;
use crate::scim::resource::ResourceType;
use serde_json::{json, Value};

pub const USER_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
pub const GROUP_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
pub const ENTERPRISE_USER: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
pub const PATCH_OP: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";
pub const LIST_RESPONSE: &str = "urn:ietf:params:scim:api:messages:2.0:ListResponse";
pub const SEARCH_REQUEST: &str = "urn:ietf:params:scim:api:messages:2.0:SearchRequest";
pub const BULK_REQUEST: &str = "urn:ietf:params:scim:api:messages:2.0:BulkRequest";
pub const BULK_RESPONSE: &str = "urn:ietf:params:scim:api:messages:2.0:BulkResponse";
pub const ERROR: &str = "urn:ietf:params:scim:api:messages:2.0:Error";
pub const SERVICE_PROVIDER_CONFIG: &str =
    "urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig";
pub const RESOURCE_TYPE: &str = "urn:ietf:params:scim:schemas:core:2.0:ResourceType";
pub const SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:Schema";

/// The schemas this server knows: core, enterprise, and the user extensions the config declares.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SchemaSet {
    /// Extension URNs declared in the config (`[scim] user_extensions`), as written there.
    pub user_extensions: Vec<String>,
    /// Attribute definitions of declared extensions (`[scim.extension_attributes]`), by URN
    /// (each URN is one of `user_extensions`). An extension listed here accepts, stores,
    /// returns and filters on exactly these attributes; one not listed accepts any.
    pub extension_attributes: Vec<(String, Vec<ExtensionAttr>)>,
}

impl SchemaSet {
    /// Core + enterprise + the given user extension URNs (no attribute definitions).
    pub fn new(user_extensions: Vec<String>) -> Self {
        Self {
            user_extensions,
            extension_attributes: Vec::new(),
        }
    }

    /// With attribute definitions for some of the declared extensions.
    pub fn with_attributes(
        user_extensions: Vec<String>,
        extension_attributes: Vec<(String, Vec<ExtensionAttr>)>,
    ) -> Self {
        Self {
            user_extensions,
            extension_attributes,
        }
    }

    /// The attribute definitions of a declared extension, `None` when it has none (any
    /// attribute is accepted under it).
    pub fn extension_defs(&self, urn: &str) -> Option<&[ExtensionAttr]> {
        self.extension_attributes
            .iter()
            .find(|(u, _)| u.eq_ignore_ascii_case(urn))
            .map(|(_, a)| a.as_slice())
    }
}

/// The types an extension attribute may be declared with (RFC 7643 §2.3; `complex` is not
/// offered for declared attributes).
pub const EXTENSION_TYPES: &[&str] = &[
    "string",
    "boolean",
    "decimal",
    "integer",
    "dateTime",
    "reference",
    "binary",
];
/// RFC 7643 §7 `mutability` values.
pub const MUTABILITIES: &[&str] = &["readWrite", "readOnly", "writeOnly", "immutable"];
/// RFC 7643 §7 `returned` values.
pub const RETURNED: &[&str] = &["default", "always", "never", "request"];

/// One attribute of a declared extension, as `/Schemas` describes it (RFC 7643 §7). The
/// values are checked at config load (`daemon::settings`): `ty` one of [`EXTENSION_TYPES`],
/// `mutability` of [`MUTABILITIES`], `returned` of [`RETURNED`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtensionAttr {
    /// Attribute name (RFC 7643 §2.1 ATTRNAME).
    pub name: String,
    /// `string`, `boolean`, `decimal`, `integer`, `dateTime`, `reference` or `binary`.
    pub ty: String,
    /// Multi-valued: a JSON array of values of `ty`.
    pub multi_valued: bool,
    /// Filters compare case-exactly (strings).
    pub case_exact: bool,
    /// `readWrite`, `readOnly`, `writeOnly` or `immutable`.
    pub mutability: String,
    /// `default`, `always`, `never` or `request`.
    pub returned: String,
}

impl ExtensionAttr {
    /// The RFC 7643 §7 attribute definition.
    pub fn to_json(&self) -> Value {
        json!({
            "name": self.name,
            "type": self.ty,
            "multiValued": self.multi_valued,
            "description": self.name,
            "required": false,
            "caseExact": self.case_exact,
            "mutability": self.mutability,
            "returned": self.returned,
            "uniqueness": "none",
        })
    }
}

/// Discovery: `/ServiceProviderConfig` (patch, filter with `max_results`, sort and etag
/// supported; bulk with its limits unless `bulk_max_operations` is 0; changePassword not
/// supported; one `oauthbearertoken` authentication scheme).
pub fn service_provider_config(
    base_url: &str,
    max_results: u64,
    bulk_max_operations: usize,
    bulk_max_payload: u64,
) -> Value {
    let base = base_url.trim_end_matches('/');
    let bulk_on = bulk_max_operations > 0;
    json!({
        "schemas": [SERVICE_PROVIDER_CONFIG],
        "patch": {"supported": true},
        "bulk": {
            "supported": bulk_on,
            "maxOperations": bulk_max_operations,
            "maxPayloadSize": if bulk_on { bulk_max_payload } else { 0 },
        },
        "filter": {"supported": true, "maxResults": max_results},
        "changePassword": {"supported": false},
        "sort": {"supported": true},
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
        // A declared extension without attribute definitions is stored verbatim and its
        // attributes are not described; one with definitions lists exactly them.
        let attrs = schemas
            .extension_defs(urn)
            .map(|defs| defs.iter().map(ExtensionAttr::to_json).collect())
            .unwrap_or_default();
        list.push(schema_doc(
            base,
            urn,
            "Extension",
            "Extension declared in the configuration",
            attrs,
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
                // Kept as the client sent it and returned (not authoritative).
                attr("display", "string", ""),
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
                // RFC 7643 says readOnly; the value a client sends (Okta does) is kept and
                // returned, and /Schemas says what the server does.
                attr("displayName", "string", ""),
            ],
        ),
    ]
}

/// The attribute definitions (RFC 7643 §7 JSON) a path of one resource type can start in: the
/// core schema with the common attributes (`id`, `schemas`, `meta`), then each extension by
/// URN (`None`: a declared extension without definitions, any attribute).
struct Known {
    core_urn: &'static str,
    core: Vec<Value>,
    extensions: Vec<(String, Option<Vec<Value>>)>,
}

fn known(rt: ResourceType, set: &SchemaSet) -> Known {
    let meta = complex(
        "meta",
        "readOnly",
        [
            "resourceType",
            "created",
            "lastModified",
            "location",
            "version",
        ]
        .into_iter()
        .map(|n| attr(n, "string", "readOnly"))
        .collect(),
    );
    let common = [
        attr("id", "string", "exact readOnly always"),
        attr("schemas", "reference", "multi exact readOnly always"),
        meta,
    ];
    match rt {
        ResourceType::User => {
            let mut extensions = vec![(ENTERPRISE_USER.to_string(), Some(enterprise_attributes()))];
            for urn in extension_urns(set) {
                let defs = set
                    .extension_defs(urn)
                    .map(|d| d.iter().map(ExtensionAttr::to_json).collect());
                extensions.push((urn.to_string(), defs));
            }
            Known {
                core_urn: USER_SCHEMA,
                core: user_attributes().into_iter().chain(common).collect(),
                extensions,
            }
        }
        ResourceType::Group => Known {
            core_urn: GROUP_SCHEMA,
            core: group_attributes().into_iter().chain(common).collect(),
            extensions: Vec::new(),
        },
    }
}

fn find_def<'a>(attrs: &'a [Value], name: &str) -> Option<&'a Value> {
    attrs.iter().find(|a| {
        a.get("name")
            .and_then(Value::as_str)
            .is_some_and(|n| n.eq_ignore_ascii_case(name))
    })
}

fn subs_of(def: &Value) -> &[Value] {
    def.get("subAttributes")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// How an error names a filter path (its parts are filter words: letters, digits, `-_:.$+`).
fn path_label(path: &AttrPath, parent: Option<&str>) -> String {
    let mut out = String::new();
    if let Some(p) = parent {
        out.push_str(p);
        out.push('.');
    }
    if let Some(u) = &path.urn {
        out.push_str(u);
        out.push(':');
    }
    out.push_str(&path.attr);
    if let Some(s) = &path.sub_attr {
        out.push('.');
        out.push_str(s);
    }
    out.chars().take(300).collect()
}

/// Does a top-level filter path name an attribute of `rt`? `Ok` carries the caseExact of a
/// declared extension attribute (`None` for the others: `filter::case_exact` knows them),
/// `Err` the attribute's name. A `returned: never` attribute (password) names nothing a
/// filter could see.
fn check_path(path: &AttrPath, k: &Known) -> Result<Option<bool>, String> {
    let label = || path_label(path, None);
    let mut declared = false;
    let attrs: &[Value] = match path.urn.as_deref() {
        None => &k.core,
        Some(u) if u.eq_ignore_ascii_case(k.core_urn) => &k.core,
        Some(u) => match k.extensions.iter().find(|(e, _)| e.eq_ignore_ascii_case(u)) {
            Some((_, None)) => return Ok(None),
            Some((e, Some(a))) => {
                declared = e != ENTERPRISE_USER;
                a
            }
            None => {
                // `urn:...:enterprise:2.0:User pr`: the extension object itself.
                let whole = format!("{u}:{}", path.attr);
                let is_ext = k
                    .extensions
                    .iter()
                    .any(|(e, _)| e.eq_ignore_ascii_case(&whole));
                return if is_ext && path.sub_attr.is_none() && path.value_filter.is_none() {
                    Ok(None)
                } else {
                    Err(label())
                };
            }
        },
    };
    let mut def = find_def(attrs, &path.attr).ok_or_else(label)?;
    if let Some(vf) = &path.value_filter {
        check_value_filter(vf, def, &path.attr)?;
    }
    if let Some(sub) = &path.sub_attr {
        def = find_def(subs_of(def), sub).ok_or_else(label)?;
    }
    if def.get("returned").and_then(Value::as_str) == Some("never") {
        return Err(label());
    }
    Ok(declared.then(|| def.get("caseExact").and_then(Value::as_bool) == Some(true)))
}

/// The terms inside `attr[...]` name sub-attributes of `attr`.
fn check_value_filter(f: &Filter, parent: &Value, parent_name: &str) -> Result<(), String> {
    let mut stack = vec![f];
    while let Some(f) = stack.pop() {
        match f {
            Filter::And(a, b) | Filter::Or(a, b) => {
                stack.push(a);
                stack.push(b);
            }
            Filter::Not(inner) => stack.push(inner),
            Filter::Compare { path, .. } | Filter::Present(path) => {
                let ok = path.urn.is_none()
                    && path.sub_attr.is_none()
                    && path.value_filter.is_none()
                    && find_def(subs_of(parent), &path.attr).is_some();
                if !ok {
                    return Err(path_label(path, Some(parent_name)));
                }
            }
            Filter::ValuePath { path, .. } => return Err(path_label(path, Some(parent_name))),
        }
    }
    Ok(())
}

/// Check that every attribute a filter names is one `/Schemas` describes for `rt` (`None`:
/// the service root, where an attribute of either resource type is accepted): an unknown
/// attribute can never match, so a filter naming one is a client error rather than an empty
/// (or, under `ne` and `not`, a full) answer. Attributes under a declared extension without
/// attribute definitions are accepted. A declared extension attribute's `caseExact` is noted
/// on its path, so the filter compares as `/Schemas` says.
///
/// # Errors
/// 400 `invalidFilter` naming the first unknown attribute.
pub fn check_filter(
    filter: &mut Filter,
    rt: Option<ResourceType>,
    set: &SchemaSet,
) -> Result<(), ScimError> {
    let kinds: Vec<Known> = match rt {
        Some(rt) => vec![known(rt, set)],
        None => vec![
            known(ResourceType::User, set),
            known(ResourceType::Group, set),
        ],
    };
    let check = |path: &AttrPath| -> Result<Option<bool>, ScimError> {
        let mut first_err = None;
        for k in &kinds {
            match check_path(path, k) {
                Ok(exact) => return Ok(exact),
                Err(label) => first_err = first_err.or(Some(label)),
            }
        }
        Err(ScimError::invalid_filter(format!(
            "The filter names an attribute the schema does not define: {} (GET /Schemas lists them).",
            first_err.unwrap_or_default()
        )))
    };
    let mut stack = vec![filter];
    while let Some(f) = stack.pop() {
        match f {
            Filter::And(a, b) | Filter::Or(a, b) => {
                stack.push(a);
                stack.push(b);
            }
            Filter::Not(inner) => stack.push(inner),
            Filter::Compare { path, .. } | Filter::Present(path) => {
                path.case_exact = check(path)?;
            }
            Filter::ValuePath { path, filter } => {
                let mut whole = path.clone();
                whole.value_filter = Some(filter.clone());
                check(&whole)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_provider_config_shape() {
        let spc = service_provider_config("https://h/scim/v2/", 100, 1000, 1 << 20);
        assert_eq!(spc["patch"]["supported"], true);
        assert_eq!(
            spc["bulk"],
            json!({"supported": true, "maxOperations": 1000, "maxPayloadSize": 1 << 20})
        );
        let off = service_provider_config("https://h/scim/v2/", 100, 0, 1 << 20);
        assert_eq!(
            off["bulk"],
            json!({"supported": false, "maxOperations": 0, "maxPayloadSize": 0})
        );
        assert_eq!(spc["filter"], json!({"supported": true, "maxResults": 100}));
        assert_eq!(spc["sort"]["supported"], true);
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

    fn ironclad() -> SchemaSet {
        SchemaSet::with_attributes(
            vec![
                "urn:ietf:params:scim:schemas:extension:ironclad:2.0:User".into(),
                "urn:ietf:params:scim:schemas:extension:free:2.0:User".into(),
            ],
            vec![(
                "urn:ietf:params:scim:schemas:extension:ironclad:2.0:User".into(),
                vec![ExtensionAttr {
                    name: "managementLevel".into(),
                    ty: "string".into(),
                    multi_valued: false,
                    case_exact: false,
                    mutability: "readWrite".into(),
                    returned: "default".into(),
                }],
            )],
        )
    }

    fn check(text: &str, rt: Option<ResourceType>) -> Result<(), ScimError> {
        let mut f = crate::scim::filter::parse_filter(text, Default::default()).unwrap();
        check_filter(&mut f, rt, &ironclad())
    }

    #[test]
    fn filters_on_served_attributes_pass() {
        let user = Some(ResourceType::User);
        for text in [
            "userName eq \"a\"",
            "USERNAME sw \"a\"",
            "externalId eq \"e\" and id eq \"i\"",
            "emails[type eq \"work\"].value eq \"a@x\"",
            "emails[type eq \"work\" and value co \"@x\"]",
            "emails.value ew \"x\"",
            "name.givenName pr",
            "meta.lastModified gt \"2026-01-01T00:00:00Z\"",
            "not (active eq false)",
            "groups[value eq \"g\"]",
            "urn:ietf:params:scim:schemas:core:2.0:User:userName eq \"a\"",
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager.value eq \"m\"",
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department eq \"d\"",
            "urn:ietf:params:scim:schemas:extension:ironclad:2.0:User:managementLevel eq \"1\"",
            // A declared extension without definitions accepts any attribute.
            "urn:ietf:params:scim:schemas:extension:free:2.0:User:anything pr",
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User pr",
        ] {
            assert_eq!(check(text, user), Ok(()), "{text}");
        }
        for text in [
            "displayName eq \"G\"",
            "members[value eq \"u\"]",
            "members.value eq \"u\"",
            "externalId pr",
        ] {
            assert_eq!(check(text, Some(ResourceType::Group)), Ok(()), "{text}");
        }
        // The root accepts an attribute of either type.
        assert_eq!(check("userName eq \"a\" or members pr", None), Ok(()));
    }

    #[test]
    fn filters_on_unknown_attributes_are_invalid_filters_naming_them() {
        let user = Some(ResourceType::User);
        for (text, rt, named) in [
            ("noSuchAttribute eq \"x\"", user, "noSuchAttribute"),
            ("noSuchAttribute ne \"x\"", user, "noSuchAttribute"),
            ("not (noSuchAttribute pr)", user, "noSuchAttribute"),
            ("userName eq \"a\" or loginCount gt 3", user, "loginCount"),
            (
                "title co \"a\" and nickName sw \"b\" and zz ew \"c\"",
                user,
                "zz",
            ),
            ("emails[nope eq \"work\"]", user, "emails.nope"),
            (
                "emails[type eq \"work\"].nope eq \"x\"",
                user,
                "emails.nope",
            ),
            ("name.nickName lt \"x\"", user, "name.nickName"),
            ("userName.sub eq \"x\"", user, "userName.sub"),
            (
                "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:level ge 1",
                user,
                "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:level",
            ),
            (
                "urn:ietf:params:scim:schemas:extension:ironclad:2.0:User:other le 1",
                user,
                "urn:ietf:params:scim:schemas:extension:ironclad:2.0:User:other",
            ),
            (
                "urn:ietf:params:scim:schemas:extension:undeclared:2.0:User:x eq 1",
                user,
                "urn:ietf:params:scim:schemas:extension:undeclared:2.0:User:x",
            ),
            ("userName eq \"a\"", Some(ResourceType::Group), "userName"),
            (
                "members[nope pr]",
                Some(ResourceType::Group),
                "members.nope",
            ),
            ("nothing pr", None, "nothing"),
        ] {
            let err = check(text, rt).unwrap_err();
            assert_eq!(
                (err.status, err.scim_type),
                (400, Some(crate::scim::ScimType::InvalidFilter)),
                "{text}"
            );
            assert!(
                err.detail.contains(&format!("{named} (")),
                "{text}: {}",
                err.detail
            );
        }
    }

    #[test]
    fn declared_extension_attributes_are_described() {
        let doc = schemas("https://h", &ironclad());
        let ext = doc["Resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == "urn:ietf:params:scim:schemas:extension:ironclad:2.0:User")
            .unwrap();
        assert_eq!(
            ext["attributes"],
            json!([{"name": "managementLevel", "type": "string", "multiValued": false,
                "description": "managementLevel", "required": false, "caseExact": false,
                "mutability": "readWrite", "returned": "default", "uniqueness": "none"}])
        );
    }
}
