//! Issue 11: SCIM 2.0 for clients other than Okta and Entra, as a generic client or a
//! compliance checker exercises it: filters on unknown attributes, PATCH of extension objects
//! and of every optional attribute, declared extension attributes, root search, sort, Bulk,
//! and a round trip generated from `/Schemas`.

use super::{filter_path, url_encode};
use crate::harness::daemon::{assert_scim_error, Backend, Resp, TestDaemon};
use reqwest::StatusCode;
use serde_json::{json, Map, Value};
use std::collections::BTreeSet;

const CORE: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
const GROUP: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
const ENTERPRISE: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
const IRONCLAD: &str = "urn:ietf:params:scim:schemas:extension:ironclad:2.0:User";
const FREE: &str = "urn:ietf:params:scim:schemas:extension:free:2.0:User";
const PATCH: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";
const SEARCH: &str = "urn:ietf:params:scim:api:messages:2.0:SearchRequest";
const BULK: &str = "urn:ietf:params:scim:api:messages:2.0:BulkRequest";

/// A declared extension with one attribute of every characteristic the config offers, and a
/// declared extension without definitions.
const DECLARED: &str = r#"[scim]
user_extensions = ["urn:ietf:params:scim:schemas:extension:ironclad:2.0:User", "urn:ietf:params:scim:schemas:extension:free:2.0:User"]
[[scim.extension_attributes."urn:ietf:params:scim:schemas:extension:ironclad:2.0:User"]]
name = "managementLevel"
[[scim.extension_attributes."urn:ietf:params:scim:schemas:extension:ironclad:2.0:User"]]
name = "badge"
caseExact = true
[[scim.extension_attributes."urn:ietf:params:scim:schemas:extension:ironclad:2.0:User"]]
name = "clearance"
type = "integer"
[[scim.extension_attributes."urn:ietf:params:scim:schemas:extension:ironclad:2.0:User"]]
name = "remote"
type = "boolean"
[[scim.extension_attributes."urn:ietf:params:scim:schemas:extension:ironclad:2.0:User"]]
name = "sites"
multiValued = true
[[scim.extension_attributes."urn:ietf:params:scim:schemas:extension:ironclad:2.0:User"]]
name = "hiredOn"
type = "dateTime"
[[scim.extension_attributes."urn:ietf:params:scim:schemas:extension:ironclad:2.0:User"]]
name = "pin"
returned = "never"
mutability = "writeOnly"
[[scim.extension_attributes."urn:ietf:params:scim:schemas:extension:ironclad:2.0:User"]]
name = "notes"
returned = "request"
[[scim.extension_attributes."urn:ietf:params:scim:schemas:extension:ironclad:2.0:User"]]
name = "employeeKey"
mutability = "immutable"
"#;

async fn declared() -> TestDaemon {
    declared_on(Backend::Sqlite).await
}

async fn declared_on(backend: Backend) -> TestDaemon {
    TestDaemon::start_full(backend, "request_timeout_secs = 120", DECLARED).await
}

fn patch(ops: Value) -> Value {
    json!({"schemas": [PATCH], "Operations": ops})
}

async fn create_user(t: &TestDaemon, body: Value) -> String {
    let r = t.post("/Users", &body).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    r.body["id"].as_str().unwrap().to_owned()
}

fn ids(r: &Resp) -> Vec<String> {
    r.body["Resources"]
        .as_array()
        .unwrap_or_else(|| panic!("no Resources: {}", r.body))
        .iter()
        .map(|x| x["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn filters_on_unknown_attributes_answer_invalid_filter_naming_the_attribute() {
    let t = declared().await;
    let uid = create_user(&t, json!({"userName": "filt@x", IRONCLAD: {"badge": "AB"}})).await;
    t.post("/Groups", &json!({"displayName": "G"})).await;
    let bad = |f: &str, named: &str| (f.to_owned(), named.to_owned());
    let user_cases = [
        bad("noSuchAttribute eq \"x\"", "noSuchAttribute"),
        bad("noSuchAttribute ne \"x\"", "noSuchAttribute"),
        bad("noSuchAttribute co \"x\"", "noSuchAttribute"),
        bad("noSuchAttribute sw \"x\"", "noSuchAttribute"),
        bad("noSuchAttribute ew \"x\"", "noSuchAttribute"),
        bad("noSuchAttribute gt 1", "noSuchAttribute"),
        bad("noSuchAttribute ge 1", "noSuchAttribute"),
        bad("noSuchAttribute lt 1", "noSuchAttribute"),
        bad("noSuchAttribute le 1", "noSuchAttribute"),
        bad("noSuchAttribute pr", "noSuchAttribute"),
        bad("not (noSuchAttribute pr)", "noSuchAttribute"),
        bad("userName eq \"filt@x\" and nope eq \"y\"", "nope"),
        bad("emails[nope eq \"work\"]", "emails.nope"),
        bad("emails[type eq \"work\"].nope eq \"a\"", "emails.nope"),
        bad("name.nope eq \"a\"", "name.nope"),
        bad(
            &format!("{IRONCLAD}:undeclared eq \"x\""),
            &format!("{IRONCLAD}:undeclared"),
        ),
        bad(
            "urn:ietf:params:scim:schemas:extension:other:2.0:User:x pr",
            "urn:ietf:params:scim:schemas:extension:other:2.0:User:x",
        ),
        bad(
            &format!("{IRONCLAD}:pin eq \"1\""),
            &format!("{IRONCLAD}:pin"),
        ),
    ];
    for (f, named) in &user_cases {
        let check = |r: Resp, how: &str| {
            assert_scim_error(&r, 400, Some("invalidFilter"));
            let detail = r.body["detail"].as_str().unwrap();
            assert!(detail.contains(named.as_str()), "{how} {f}: {detail}");
        };
        check(t.get(&filter_path("Users", f, "")).await, "GET");
        let body = json!({"schemas": [SEARCH], "filter": f});
        check(t.post("/Users/.search", &body).await, ".search");
        check(t.post("/.search", &body).await, "root .search");
    }
    for (f, named) in [
        ("userName eq \"x\"", "userName"),
        ("members[nope eq \"x\"]", "members.nope"),
        ("not (title pr)", "title"),
    ] {
        let r = t.get(&filter_path("Groups", f, "")).await;
        assert_scim_error(&r, 400, Some("invalidFilter"));
        assert!(r.body["detail"].as_str().unwrap().contains(named), "{f}");
        let body = json!({"schemas": [SEARCH], "filter": f});
        assert_scim_error(
            &t.post("/Groups/.search", &body).await,
            400,
            Some("invalidFilter"),
        );
    }
    // Served attributes keep working, declared ones compare as /Schemas says.
    for (f, want) in [
        ("userName eq \"FILT@X\"", 1),
        ("emails[type eq \"work\"].value eq \"a\"", 0),
        (&format!("{IRONCLAD}:badge eq \"AB\"") as &str, 1),
        (&format!("{IRONCLAD}:badge eq \"ab\"") as &str, 0),
        (&format!("{FREE}:anything pr") as &str, 0),
        ("not (title pr)", 1),
    ] {
        let r = t.get(&filter_path("Users", f, "")).await;
        assert_eq!(r.status, StatusCode::OK, "{f}: {}", r.body);
        assert_eq!(r.body["totalResults"], want, "{f}");
    }
    assert_eq!(ids(&t.get(&filter_path("Users", "id pr", "")).await), [uid]);
}

#[tokio::test]
async fn patch_with_an_extension_urn_path_sets_and_merges_the_extension_object() {
    let t = declared().await;
    let id = create_user(
        &t,
        json!({"userName": "ext@x", ENTERPRISE: {"department": "D", "costCenter": "C"}}),
    )
    .await;
    for op in ["add", "replace"] {
        let r = t
            .patch(
                &format!("/Users/{id}"),
                &patch(json!([{"op": op, "path": ENTERPRISE,
                    "value": {"employeeNumber": format!("E-{op}"), "manager": {"value": "m-1"}}},
                    {"op": op, "path": IRONCLAD, "value": {"managementLevel": op, "clearance": 3}}])),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{op}: {}", r.body);
        let u = t.get(&format!("/Users/{id}")).await.body;
        assert_eq!(
            u[ENTERPRISE],
            json!({"department": "D", "costCenter": "C", "employeeNumber": format!("E-{op}"),
                "manager": {"value": "m-1"}}),
            "{op} merges: the attributes not named stay"
        );
        assert_eq!(
            u[IRONCLAD],
            json!({"managementLevel": op, "clearance": 3}),
            "{op}"
        );
        let schemas: BTreeSet<&str> = u["schemas"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap())
            .collect();
        assert!(schemas.contains(IRONCLAD) && schemas.contains(ENTERPRISE));
    }
    // An attribute the declared extension does not define is refused, not stored.
    let r = t
        .patch(
            &format!("/Users/{id}"),
            &patch(json!([{"op": "add", "path": IRONCLAD, "value": {"undeclared": 1}}])),
        )
        .await;
    assert_scim_error(&r, 400, Some("invalidPath"));
    let r = t
        .patch(
            &format!("/Users/{id}"),
            &patch(json!([{"op": "remove", "path": ENTERPRISE}])),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(r.body.get(ENTERPRISE).is_none(), "{}", r.body);
}

#[tokio::test]
async fn removing_active_leaves_it_unassigned_and_the_user_inactive() {
    let t = TestDaemon::start().await;
    let id = create_user(
        &t,
        json!({"userName": "act@x", "active": true, "title": "T"}),
    )
    .await;
    let r = t
        .patch(
            &format!("/Users/{id}"),
            &patch(json!([{"op": "remove", "path": "active"}])),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(r.body.get("active").is_none(), "{}", r.body);
    let got = t.get(&format!("/Users/{id}")).await.body;
    assert!(got.get("active").is_none(), "{got}");
    // Fail closed: what targets get is an inactive user.
    let stored = t.d().store.get_user(&id).await.unwrap().unwrap();
    assert!(!stored.active);
    // Unassigned matches neither `active eq true` nor `active pr`.
    for f in ["active eq true", "active pr"] {
        assert_eq!(
            t.get(&filter_path("Users", f, "")).await.body["totalResults"],
            0,
            "{f}"
        );
    }
    // Another PATCH or a PUT without `active` leaves it unassigned; a PUT with it sets it.
    t.patch(
        &format!("/Users/{id}"),
        &patch(json!([{"op": "replace", "path": "title", "value": "U"}])),
    )
    .await;
    let r = t
        .put(&format!("/Users/{id}"), &json!({"userName": "act@x"}))
        .await;
    assert!(r.body.get("active").is_none(), "{}", r.body);
    assert!(!t.d().store.get_user(&id).await.unwrap().unwrap().active);
    let r = t
        .put(
            &format!("/Users/{id}"),
            &json!({"userName": "act@x", "active": true}),
        )
        .await;
    assert_eq!(r.body["active"], true);
    assert!(t.d().store.get_user(&id).await.unwrap().unwrap().active);
}

/// A value of a schema type, distinct per `n` (and an uppercase twin for caseExact checks).
fn sample(ty: &str, n: usize) -> Value {
    match ty {
        "boolean" => json!(n.is_multiple_of(2)),
        "integer" => json!(n as i64 + 7),
        "decimal" => json!(n as f64 + 0.5),
        "dateTime" => json!(format!("2026-0{}-01T00:00:00Z", n % 9 + 1)),
        "reference" => json!(format!("https://example.com/r{n}")),
        "binary" => json!(format!("QUJD{n}")),
        _ => json!(format!("v{n}-abc")),
    }
}

fn attr_defs(schema: &Value) -> Vec<Value> {
    schema["attributes"].as_array().cloned().unwrap_or_default()
}

fn writable(def: &Value) -> bool {
    !matches!(def["mutability"].as_str(), Some("readOnly"))
}

fn returned(def: &Value) -> bool {
    !matches!(def["returned"].as_str(), Some("never" | "request"))
}

/// A value for a whole attribute: complex ones get every writable sub-attribute.
fn whole_value(def: &Value, n: usize) -> Value {
    let multi = def["multiValued"] == true;
    let one = if def["type"] == "complex" {
        let mut o = Map::new();
        for sub in def["subAttributes"].as_array().unwrap() {
            if writable(sub) {
                let name = sub["name"].as_str().unwrap();
                let v = if name == "primary" {
                    json!(true)
                } else {
                    sample(sub["type"].as_str().unwrap(), n)
                };
                o.insert(name.to_owned(), v);
            }
        }
        Value::Object(o)
    } else {
        sample(def["type"].as_str().unwrap(), n)
    };
    if multi {
        json!([one])
    } else {
        one
    }
}

/// Every attribute `/Schemas` lists for users (core, enterprise, declared extensions, each
/// complex one's sub-attributes, multi-valued ones): PATCH add, replace and remove round-trip
/// on the next GET and a PUT of the GET keeps them; what GET returns is exactly what
/// `/Schemas` describes (names, `returned`, `caseExact` as the filters behave, `uniqueness`).
#[tokio::test]
async fn every_attribute_of_schemas_round_trips_through_patch_put_and_get() {
    let t = declared().await;
    let docs = t.get("/Schemas").await.body;
    let types = t.get("/ResourceTypes").await.body;
    let user_type = &types["Resources"][0];
    assert_eq!(user_type["schema"], CORE);
    let mut schema_urns = vec![CORE.to_owned()];
    for e in user_type["schemaExtensions"].as_array().unwrap() {
        schema_urns.push(e["schema"].as_str().unwrap().to_owned());
    }
    let schema_of = |urn: &str| -> Value {
        docs["Resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["id"] == urn)
            .cloned()
            .unwrap_or_else(|| panic!("/Schemas lacks {urn}"))
    };
    let id = create_user(&t, json!({"userName": "rt@x"})).await;
    let url = format!("/Users/{id}");
    let mut n = 0;
    let mut covered = 0;
    for urn in &schema_urns {
        let schema = schema_of(urn);
        for def in attr_defs(&schema) {
            let name = def["name"].as_str().unwrap().to_owned();
            if !writable(&def) || name == "userName" || name == "password" {
                continue;
            }
            let path = if urn == CORE {
                name.clone()
            } else {
                format!("{urn}:{name}")
            };
            let read = |u: &Value| -> Value {
                if urn == CORE {
                    u[&name].clone()
                } else {
                    u[urn.as_str()][&name].clone()
                }
            };
            n += 1;
            let first = whole_value(&def, n);
            n += 1;
            let second = whole_value(&def, n);
            let visible = returned(&def);
            let immutable = def["mutability"] == "immutable";
            let steps: &[(&str, &Value)] = if immutable {
                &[("add", &first)]
            } else {
                &[("add", &first), ("replace", &second)]
            };
            for &(op, value) in steps {
                let r = t
                    .patch(
                        &url,
                        &patch(json!([{"op": op, "path": path, "value": value}])),
                    )
                    .await;
                assert_eq!(r.status, StatusCode::OK, "{op} {path}: {}", r.body);
                let got = read(&t.get(&url).await.body);
                let want = if visible { value.clone() } else { Value::Null };
                assert_eq!(got, want, "{op} {path}");
            }
            // Sub-attributes one by one (replace, then remove).
            if def["type"] == "complex" && visible {
                for sub in def["subAttributes"].as_array().unwrap() {
                    let sname = sub["name"].as_str().unwrap();
                    if !writable(sub) || sname == "value" || sname == "primary" {
                        continue;
                    }
                    n += 1;
                    let v = sample(sub["type"].as_str().unwrap(), n);
                    let spath = format!("{path}.{sname}");
                    let r = t
                        .patch(
                            &url,
                            &patch(json!([{"op": "replace", "path": spath, "value": v}])),
                        )
                        .await;
                    assert_eq!(r.status, StatusCode::OK, "replace {spath}: {}", r.body);
                    let got = read(&t.get(&url).await.body);
                    let el = if def["multiValued"] == true {
                        &got[0]
                    } else {
                        &got
                    };
                    assert_eq!(el[sname], v, "replace {spath}: {got}");
                    let r = t
                        .patch(&url, &patch(json!([{"op": "remove", "path": spath}])))
                        .await;
                    assert_eq!(r.status, StatusCode::OK, "remove {spath}: {}", r.body);
                    let got = read(&t.get(&url).await.body);
                    let el = if def["multiValued"] == true {
                        &got[0]
                    } else {
                        &got
                    };
                    assert!(el.get(sname).is_none(), "remove {spath}: {got}");
                }
            }
            // PUT of what GET returned keeps it (a writeOnly one is not returned, so the PUT
            // that omits it may drop it: RFC 7644 §3.5.1 replaces the resource).
            if visible {
                let before = t.get(&url).await.body;
                let r = t.put(&url, &before).await;
                assert_eq!(r.status, StatusCode::OK, "PUT with {path}: {}", r.body);
                let after = t.get(&url).await.body;
                assert_eq!(read(&after), read(&before), "PUT keeps {path}");
            }
            let r = t
                .patch(&url, &patch(json!([{"op": "remove", "path": path}])))
                .await;
            if immutable {
                // Once assigned, an immutable attribute stays (RFC 7643 §7).
                assert_scim_error(&r, 400, Some("mutability"));
                assert_eq!(read(&t.get(&url).await.body), first, "{path} stays");
            } else {
                assert_eq!(r.status, StatusCode::OK, "remove {path}: {}", r.body);
                assert_eq!(read(&t.get(&url).await.body), Value::Null, "remove {path}");
            }
            covered += 1;
        }
    }
    assert!(covered >= 30, "only {covered} attributes covered");

    // Everything GET returns is described by /Schemas, at every level.
    let mut full = json!({"schemas": [CORE], "userName": "full@x", "password": "pw-1"});
    for urn in &schema_urns {
        for def in attr_defs(&schema_of(urn)) {
            let name = def["name"].as_str().unwrap();
            if !writable(&def) || name == "userName" || name == "password" {
                continue;
            }
            let v = whole_value(&def, 1);
            if urn == CORE {
                full[name] = v;
            } else {
                if full.get(urn.as_str()).is_none() {
                    full[urn.as_str()] = json!({});
                }
                full[urn.as_str()][name] = v;
            }
        }
    }
    // Sub-attributes no schema defines are not stored (so not returned either).
    full["emails"][0]["notInTheSchema"] = json!("x");
    full["name"]["nickName"] = json!("x");
    full[ENTERPRISE]["manager"]["extra"] = json!("x");
    let fid = create_user(&t, full.clone()).await;
    let got = t
        .get(&format!(
            "/Users/{fid}?attributes={}",
            url_encode(&format!("{IRONCLAD}:notes,userName"))
        ))
        .await
        .body;
    assert_eq!(
        got[IRONCLAD]["notes"], full[IRONCLAD]["notes"],
        "returned request, asked for"
    );
    let got = t.get(&format!("/Users/{fid}")).await.body;
    let common = ["id", "schemas", "meta"];
    for (k, v) in got.as_object().unwrap() {
        if common.contains(&k.as_str()) {
            continue;
        }
        let (schema, attrs): (String, Vec<(String, Value)>) = if k.starts_with("urn:") {
            let ext = v.as_object().unwrap();
            (
                k.clone(),
                ext.iter().map(|(a, b)| (a.clone(), b.clone())).collect(),
            )
        } else {
            (CORE.to_owned(), vec![(k.clone(), v.clone())])
        };
        let doc = schema_of(&schema);
        for (a, value) in attrs {
            let def = attr_defs(&doc)
                .into_iter()
                .find(|d| d["name"] == a.as_str())
                .unwrap_or_else(|| panic!("GET returns {schema}:{a}, /Schemas does not list it"));
            assert!(
                !matches!(def["returned"].as_str(), Some("never" | "request")),
                "{a} is returned though /Schemas says {}",
                def["returned"]
            );
            let subs: Vec<String> = def["subAttributes"]
                .as_array()
                .map(|s| {
                    s.iter()
                        .map(|x| x["name"].as_str().unwrap().to_owned())
                        .collect()
                })
                .unwrap_or_default();
            let elements: Vec<Value> = match value {
                Value::Array(a) => a,
                other => vec![other],
            };
            for el in elements {
                if let Value::Object(o) = el {
                    for sk in o.keys() {
                        assert!(
                            subs.contains(sk),
                            "{schema}:{a}.{sk} is returned but not described"
                        );
                    }
                }
            }
        }
    }
    assert!(got.get("password").is_none());
    assert!(got[IRONCLAD].get("pin").is_none() && got[IRONCLAD].get("notes").is_none());
    // caseExact as the filters really compare: a string attribute's value in upper case
    // finds the user exactly when /Schemas says caseExact false.
    for urn in &schema_urns {
        for def in attr_defs(&schema_of(urn)) {
            let name = def["name"].as_str().unwrap();
            if def["type"] != "string"
                || def["multiValued"] == true
                || !returned(&def)
                || !writable(&def)
            {
                continue;
            }
            let value = if urn == CORE {
                &got[name]
            } else {
                &got[urn.as_str()][name]
            };
            let Some(s) = value.as_str() else { continue };
            let path = if urn == CORE {
                name.to_owned()
            } else {
                format!("{urn}:{name}")
            };
            let f = format!("{path} eq \"{}\" and id eq \"{fid}\"", s.to_uppercase());
            let r = t.get(&filter_path("Users", &f, "")).await;
            assert_eq!(r.status, StatusCode::OK, "{f}: {}", r.body);
            let want = if def["caseExact"] == true { 0 } else { 1 };
            assert_eq!(
                r.body["totalResults"], want,
                "{path}: caseExact {}",
                def["caseExact"]
            );
        }
    }
    // uniqueness: userName is unique (server), case-insensitively as caseExact false says.
    assert_scim_error(
        &t.post("/Users", &json!({"userName": "FULL@X"})).await,
        409,
        Some("uniqueness"),
    );
    // readOnly `groups` cannot be patched; immutable declared attributes cannot change.
    assert_scim_error(
        &t.patch(
            &format!("/Users/{fid}"),
            &patch(json!([{"op": "add", "path": "groups", "value": [{"value": "g"}]}])),
        )
        .await,
        400,
        Some("mutability"),
    );
    assert_scim_error(
        &t.patch(&format!("/Users/{fid}"), &patch(json!([{"op": "replace", "path": format!("{IRONCLAD}:employeeKey"), "value": "other"}]))).await,
        400,
        Some("mutability"),
    );
    // Types are checked.
    assert_scim_error(
        &t.patch(&format!("/Users/{fid}"), &patch(json!([{"op": "replace", "path": format!("{IRONCLAD}:clearance"), "value": "high"}]))).await,
        400,
        Some("invalidValue"),
    );

    // Groups: displayName, externalId and members round-trip; PATCH answers 204.
    let g = t
        .post("/Groups", &json!({"schemas": [GROUP], "displayName": "RT"}))
        .await;
    let gid = g.body["id"].as_str().unwrap().to_owned();
    let gurl = format!("/Groups/{gid}");
    for (op, path, value) in [
        ("add", "externalId", json!("ext-1")),
        ("replace", "displayName", json!("RT2")),
        ("add", "members", json!([{"value": fid}])),
    ] {
        let r = t
            .patch(
                &gurl,
                &patch(json!([{"op": op, "path": path, "value": value}])),
            )
            .await;
        assert_eq!(r.status, StatusCode::NO_CONTENT, "{op} {path}: {}", r.body);
    }
    let got = t.get(&gurl).await.body;
    assert_eq!(
        (got["externalId"].clone(), got["displayName"].clone()),
        (json!("ext-1"), json!("RT2"))
    );
    assert_eq!(got["members"][0]["value"], fid.as_str());
    let r = t.put(&gurl, &got).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(t.get(&gurl).await.body["members"], got["members"]);
    for path in ["externalId", "members"] {
        let r = t
            .patch(&gurl, &patch(json!([{"op": "remove", "path": path}])))
            .await;
        assert_eq!(
            r.status,
            StatusCode::NO_CONTENT,
            "remove {path}: {}",
            r.body
        );
    }
    let got = t.get(&gurl).await.body;
    assert!(got.get("externalId").is_none(), "{got}");
    assert!(got["members"].as_array().is_none_or(Vec::is_empty), "{got}");
}

#[tokio::test]
async fn declared_extension_attributes_are_described_typed_and_returned_as_declared() {
    let t = declared().await;
    let doc = t.get(&format!("/Schemas/{IRONCLAD}")).await.body;
    let names: Vec<&str> = doc["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "managementLevel",
            "badge",
            "clearance",
            "remote",
            "sites",
            "hiredOn",
            "pin",
            "notes",
            "employeeKey"
        ]
    );
    let find = |n: &str| {
        doc["attributes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["name"] == n)
            .unwrap()
            .clone()
    };
    assert_eq!(find("badge")["caseExact"], true);
    assert_eq!(find("clearance")["type"], "integer");
    assert_eq!(find("sites")["multiValued"], true);
    assert_eq!(find("pin")["returned"], "never");
    assert_eq!(find("pin")["mutability"], "writeOnly");
    assert_eq!(find("employeeKey")["mutability"], "immutable");
    // The free extension has no definitions: anything is kept under it.
    assert_eq!(
        t.get(&format!("/Schemas/{FREE}")).await.body["attributes"],
        json!([])
    );
    let id = create_user(
        &t,
        json!({"userName": "typed@x", IRONCLAD: {"CLEARANCE": 2, "remote": "True", "sites": "Oslo",
            "pin": "1234", "employeeKey": "K1"}, FREE: {"x": {"y": 1}}}),
    )
    .await;
    let u = t.get(&format!("/Users/{id}")).await.body;
    assert_eq!(
        u[IRONCLAD],
        json!({"clearance": 2, "remote": true, "sites": ["Oslo"], "employeeKey": "K1"})
    );
    assert_eq!(u[FREE], json!({"x": {"y": 1}}));
    // Stored although never returned (a target mapping may not read it either).
    let stored = t.d().store.get_user(&id).await.unwrap().unwrap();
    assert_eq!(stored.data[IRONCLAD]["pin"], "1234");
    for body in [
        json!({"userName": "bad1@x", IRONCLAD: {"nope": 1}}),
        json!({"userName": "bad2@x", IRONCLAD: {"clearance": 1.5}}),
        json!({"userName": "bad3@x", IRONCLAD: {"hiredOn": "yesterday"}}),
        json!({"userName": "bad4@x", IRONCLAD: {"badge": ["a", "b"]}}),
    ] {
        assert_scim_error(&t.post("/Users", &body).await, 400, Some("invalidValue"));
    }
    // An immutable attribute may be repeated, not changed or dropped.
    let r = t
        .put(
            &format!("/Users/{id}"),
            &json!({"userName": "typed@x", IRONCLAD: {"employeeKey": "K1"}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_scim_error(
        &t.put(&format!("/Users/{id}"), &json!({"userName": "typed@x"}))
            .await,
        400,
        Some("mutability"),
    );
}

#[tokio::test]
async fn sort_by_every_sortable_attribute_is_stable_and_paged() {
    let t = TestDaemon::start().await;
    let spc = t.get("/ServiceProviderConfig").await.body;
    assert_eq!(spc["sort"]["supported"], true);
    // Names out of creation order, two equal given names (ties keep creation order), one
    // user without a given name or email (unassigned: last ascending, first descending).
    let people = [
        ("carol", "Bea", "c@x"),
        ("Alice", "Dan", "B@x"),
        ("bob", "Bea", "a@x"),
        ("dave", "", ""),
    ];
    let mut created = Vec::new();
    for (user, given, email) in people {
        let mut body = json!({"userName": user, "displayName": user.to_uppercase()});
        if !given.is_empty() {
            body["name"] = json!({"givenName": given, "familyName": "F"});
            body["emails"] = json!([{"value": "z@x"}, {"value": email, "primary": true}]);
        }
        created.push(create_user(&t, body).await);
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let (carol, alice, bob, dave) = (
        created[0].as_str(),
        created[1].as_str(),
        created[2].as_str(),
        created[3].as_str(),
    );
    let order = |by: &str, desc: bool, extra: &str| {
        let t = &t;
        let by = by.to_owned();
        let extra = extra.to_owned();
        async move {
            let order = if desc { "descending" } else { "ascending" };
            let r = t
                .get(&format!("/Users?sortBy={by}&sortOrder={order}{extra}"))
                .await;
            assert_eq!(r.status, StatusCode::OK, "{by}: {}", r.body);
            ids(&r)
        }
    };
    assert_eq!(
        order("userName", false, "").await,
        [alice, bob, carol, dave]
    );
    assert_eq!(order("userName", true, "").await, [dave, carol, bob, alice]);
    assert_eq!(
        order("displayName", false, "").await,
        [alice, bob, carol, dave]
    );
    assert_eq!(
        order("name.givenName", false, "").await,
        [carol, bob, alice, dave]
    );
    assert_eq!(
        order("name.givenName", true, "").await,
        [dave, alice, carol, bob]
    );
    assert_eq!(
        order("name.familyName", false, "").await,
        [carol, alice, bob, dave]
    );
    // The primary email sorts, not the first.
    assert_eq!(
        order("emails.value", false, "").await,
        [bob, alice, carol, dave]
    );
    assert_eq!(
        order("meta.created", false, "").await,
        [carol, alice, bob, dave]
    );
    assert_eq!(
        order("meta.lastModified", true, "").await,
        [dave, bob, alice, carol]
    );
    // Paged: startIndex and count apply to the sorted list, totalResults to all of it.
    let r = t.get("/Users?sortBy=userName&startIndex=2&count=2").await;
    assert_eq!(ids(&r), [bob, carol]);
    assert_eq!(r.body["totalResults"], 4);
    // With a filter, through .search, and at the root.
    let body = json!({"schemas": [SEARCH], "filter": "name.familyName eq \"F\"", "sortBy": "userName", "sortOrder": "descending"});
    assert_eq!(
        ids(&t.post("/Users/.search", &body).await),
        [carol, bob, alice]
    );
    // Unsupported sort attributes are refused, not ignored.
    assert_scim_error(
        &t.get("/Users?sortBy=title").await,
        400,
        Some("invalidValue"),
    );
    assert_scim_error(
        &t.get("/Users?sortBy=userName&sortOrder=up").await,
        400,
        Some("invalidValue"),
    );
}

#[tokio::test]
async fn root_search_spans_users_and_groups_paged() {
    let t = TestDaemon::start().await;
    let u1 = create_user(&t, json!({"userName": "r1", "displayName": "Same"})).await;
    let u2 = create_user(&t, json!({"userName": "r2", "displayName": "Other"})).await;
    let g = t
        .post("/Groups", &json!({"displayName": "Same"}))
        .await
        .body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (u1, u2, g) = (u1.as_str(), u2.as_str(), g.as_str());
    let search = |body: Value| {
        let t = &t;
        async move {
            let mut b = body;
            b["schemas"] = json!([SEARCH]);
            let r = t.post("/.search", &b).await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.body);
            r
        }
    };
    let r = search(json!({"filter": "displayName eq \"same\""})).await;
    assert_eq!(ids(&r), [u1, g]);
    assert_eq!(r.body["Resources"][0]["meta"]["resourceType"], "User");
    assert_eq!(r.body["Resources"][1]["meta"]["resourceType"], "Group");
    let r = search(json!({})).await;
    assert_eq!(ids(&r), [u1, u2, g]);
    assert_eq!(r.body["totalResults"], 3);
    let r = search(json!({"startIndex": 2, "count": 1})).await;
    assert_eq!(
        (ids(&r), r.body["totalResults"].clone()),
        (vec![u2.to_owned()], json!(3))
    );
    let r = search(json!({"startIndex": 3, "count": 5})).await;
    assert_eq!(ids(&r), [g]);
    let r = search(
        json!({"sortBy": "displayName", "sortOrder": "descending", "attributes": ["displayName"]}),
    )
    .await;
    assert_eq!(ids(&r), [u1, g, u2]);
    assert!(r.body["Resources"][0].get("userName").is_none());
    // An attribute of either type is accepted; a group has no userName.
    let r = search(json!({"filter": "userName pr or members pr"})).await;
    assert_eq!(ids(&r), [u1, u2]);
    assert_eq!(
        t.get("/.search").await.status,
        StatusCode::METHOD_NOT_ALLOWED
    );
}

fn user_op(i: usize) -> Value {
    json!({"method": "POST", "path": "/Users", "bulkId": format!("u{i}"),
        "data": {"schemas": [CORE], "userName": format!("bulk{i}@x"), "title": format!("T{i}"),
            "name": {"givenName": format!("G{i}"), "familyName": format!("F{i}")}}})
}

async fn bulk(t: &TestDaemon, body: &Value) -> Resp {
    t.post("/Bulk", body).await
}

#[tokio::test]
async fn bulk_of_1000_operations_with_cross_references_sqlite() {
    bulk_of_1000_operations_with_cross_references(Backend::Sqlite).await;
}

#[tokio::test]
async fn bulk_of_1000_operations_with_cross_references_postgres() {
    bulk_of_1000_operations_with_cross_references(Backend::Postgres).await;
}

async fn bulk_of_1000_operations_with_cross_references(backend: Backend) {
    let t = declared_on(backend).await;
    let spc = t.get("/ServiceProviderConfig").await.body;
    assert_eq!(
        spc["bulk"],
        json!({"supported": true, "maxOperations": 1000, "maxPayloadSize": 1_048_576})
    );
    // 1,000 operations: groups first naming users created later (forward references), 600
    // users, then PATCHes and PUTs of resources by bulkId, and deletes.
    let mut ops = Vec::new();
    for g in 0..100 {
        ops.push(json!({"method": "POST", "path": "/Groups", "bulkId": format!("g{g}"),
            "data": {"schemas": [GROUP], "displayName": format!("BG{g}"),
                "members": [{"value": format!("bulkId:u{}", g * 5)}, {"value": format!("bulkId:u{}", g * 5 + 1)}]}}));
    }
    for i in 0..600 {
        ops.push(user_op(i));
    }
    for g in 0..100 {
        ops.push(
            json!({"method": "PATCH", "path": format!("/Groups/bulkId:g{g}"),
            "data": {"schemas": [PATCH], "Operations": [{"op": "add", "path": "members",
                "value": [{"value": format!("bulkId:u{}", g * 5 + 2)}]}]}}),
        );
    }
    for i in 0..100 {
        ops.push(json!({"method": "PATCH", "path": format!("/Users/bulkId:u{i}"),
            "data": {"schemas": [PATCH], "Operations": [{"op": "replace", "path": format!("{ENTERPRISE}:manager"),
                "value": {"value": format!("bulkId:u{}", i + 1)}}]}}));
    }
    for i in 100..150 {
        ops.push(
            json!({"method": "PUT", "path": format!("/Users/bulkId:u{i}"),
            "data": {"schemas": [CORE], "userName": format!("bulk{i}@x"), "title": "put"}}),
        );
    }
    for i in 550..600 {
        ops.push(json!({"method": "DELETE", "path": format!("/Users/bulkId:u{i}")}));
    }
    assert_eq!(ops.len(), 1000);
    let r = bulk(&t, &json!({"schemas": [BULK], "Operations": ops})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        r.body["schemas"][0],
        "urn:ietf:params:scim:api:messages:2.0:BulkResponse"
    );
    let results = r.body["Operations"].as_array().unwrap();
    assert_eq!(results.len(), 1000);
    let mut user_ids = std::collections::HashMap::new();
    for (i, res) in results.iter().enumerate() {
        let status = res["status"].as_str().unwrap();
        let want = match res["method"].as_str().unwrap() {
            "POST" => "201",
            "DELETE" => "204",
            "PATCH" if res["location"].as_str().unwrap().contains("/Groups/") => "204",
            _ => "200",
        };
        assert_eq!(status, want, "operation {i}: {res}");
        if res["method"] == "POST" && res["bulkId"].as_str().unwrap().starts_with('u') {
            let loc = res["location"].as_str().unwrap();
            assert!(res["version"].as_str().unwrap().starts_with("W/"), "{res}");
            user_ids.insert(
                res["bulkId"].as_str().unwrap().to_owned(),
                loc.rsplit('/').next().unwrap().to_owned(),
            );
        }
    }
    // Every reference landed on the id its POST created.
    for g in 0..100 {
        let f = format!("displayName eq \"BG{g}\"");
        let group = &t.get(&filter_path("Groups", &f, "")).await.body["Resources"][0];
        let members: BTreeSet<String> = group["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["value"].as_str().unwrap().to_owned())
            .collect();
        let want: BTreeSet<String> = (0..3)
            .map(|k| user_ids[&format!("u{}", g * 5 + k)].clone())
            .collect();
        assert_eq!(members, want, "group {g}");
    }
    let u0 = t.get(&format!("/Users/{}", user_ids["u0"])).await.body;
    assert_eq!(u0[ENTERPRISE]["manager"]["value"], user_ids["u1"].as_str());
    let u100 = t.get(&format!("/Users/{}", user_ids["u100"])).await.body;
    assert_eq!(u100["title"], "put");
    assert!(u100.get("name").is_none());
    assert_eq!(
        t.get(&format!("/Users/{}", user_ids["u599"])).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(t.get("/Users?count=0").await.body["totalResults"], 550);
}

#[tokio::test]
async fn bulk_errors_per_operation_with_and_without_fail_on_errors() {
    let t = declared().await;
    let existing = create_user(&t, json!({"userName": "taken@x"})).await;
    let ops = json!([
        user_op(0),
        {"method": "POST", "path": "/Users", "bulkId": "dup", "data": {"userName": "TAKEN@x"}},
        {"method": "POST", "path": "/Groups", "bulkId": "g", "data": {"displayName": "BG",
            "members": [{"value": "bulkId:dup"}]}},
        {"method": "PATCH", "path": "/Users/bulkId:nowhere", "data": {"Operations": [{"op": "remove", "path": "title"}]}},
        {"method": "PUT", "path": format!("/Users/{existing}"), "version": "W/\"9\"", "data": {"userName": "taken@x"}},
        {"method": "DELETE", "path": "/Nope/1"},
        {"method": "POST", "path": "/Users", "bulkId": "a", "data": {"userName": "cyc-a",
            ENTERPRISE: {"manager": {"value": "bulkId:b"}}}},
        {"method": "POST", "path": "/Users", "bulkId": "b", "data": {"userName": "cyc-b",
            ENTERPRISE: {"manager": {"value": "bulkId:a"}}}},
        user_op(1),
    ]);
    let r = bulk(&t, &json!({"schemas": [BULK], "Operations": ops})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let statuses: Vec<&str> = r.body["Operations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        ["201", "409", "409", "400", "412", "400", "409", "409", "201"],
        "{}",
        r.body
    );
    let dup = &r.body["Operations"][1];
    assert_eq!(dup["bulkId"], "dup");
    assert_eq!(dup["response"]["scimType"], "uniqueness");
    assert_eq!(
        r.body["Operations"][3]["response"]["scimType"],
        "invalidValue"
    );
    assert_eq!(t.get("/Users?count=0").await.body["totalResults"], 3);
    // failOnErrors 2: the second failure stops the job; later operations are not run.
    let ops = json!([
        user_op(10),
        {"method": "POST", "path": "/Users", "bulkId": "x1", "data": {"userName": "taken@x"}},
        user_op(11),
        {"method": "POST", "path": "/Users", "bulkId": "x2", "data": {"userName": "taken@x"}},
        user_op(12),
    ]);
    let r = bulk(
        &t,
        &json!({"schemas": [BULK], "failOnErrors": 2, "Operations": ops}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let statuses: Vec<&str> = r.body["Operations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["201", "409", "201", "409"]);
    let f = "userName eq \"bulk12@x\"";
    assert_eq!(
        t.get(&filter_path("Users", f, "")).await.body["totalResults"],
        0
    );
    assert_eq!(
        t.get(&filter_path("Users", "userName eq \"bulk11@x\"", ""))
            .await
            .body["totalResults"],
        1
    );
}

#[tokio::test]
async fn bulk_limits_are_advertised_and_enforced_with_413() {
    let t = TestDaemon::start_with(
        Backend::Sqlite,
        "[scim]\nbulk_max_operations = 3\nbulk_max_payload_bytes = 2000\n",
    )
    .await;
    let spc = t.get("/ServiceProviderConfig").await.body;
    assert_eq!(
        spc["bulk"],
        json!({"supported": true, "maxOperations": 3, "maxPayloadSize": 2000})
    );
    let four: Vec<Value> = (0..4).map(user_op).collect();
    let r = bulk(&t, &json!({"schemas": [BULK], "Operations": four})).await;
    assert_scim_error(&r, 413, None);
    assert!(
        r.body["detail"].as_str().unwrap().contains("maxOperations"),
        "{}",
        r.body
    );
    let big = json!({"schemas": [BULK], "Operations": [{"method": "POST", "path": "/Users", "bulkId": "b",
        "data": {"userName": "big", "title": "x".repeat(3000)}}]});
    let r = bulk(&t, &big).await;
    assert_scim_error(&r, 413, None);
    assert!(
        r.body["detail"]
            .as_str()
            .unwrap()
            .contains("maxPayloadSize"),
        "{}",
        r.body
    );
    assert_eq!(t.get("/Users?count=0").await.body["totalResults"], 0);
    let off = TestDaemon::start_with(Backend::Sqlite, "[scim]\nbulk_max_operations = 0\n").await;
    assert_eq!(
        off.get("/ServiceProviderConfig").await.body["bulk"]["supported"],
        false
    );
    assert_scim_error(&bulk(&off, &json!({"Operations": []})).await, 501, None);
}

/// What `/ServiceProviderConfig` advertises, each feature proven by the test named here.
#[tokio::test]
async fn service_provider_config_advertises_what_is_tested() {
    let t = TestDaemon::start().await;
    let spc = t.get("/ServiceProviderConfig").await.body;
    assert_eq!(spc["patch"]["supported"], true); // every_attribute_of_schemas_round_trips...
    assert_eq!(spc["bulk"]["supported"], true); // bulk_* tests
    assert_eq!(spc["filter"]["supported"], true); // filters_on_unknown_attributes_...
    assert_eq!(spc["sort"]["supported"], true); // sort_by_every_sortable_attribute_...
    assert_eq!(spc["etag"]["supported"], true); // bulk_errors_... (412), okta/entra lifecycles
    assert_eq!(spc["changePassword"]["supported"], false);
}
