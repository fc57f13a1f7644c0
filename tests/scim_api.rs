//! The SCIM API over a real socket, with the request bodies Okta and Entra document
//! (shared/reference/idp-requests.md), on SQLite and PostgreSQL, including hostile input.

use crate::harness::daemon::{assert_scim_error, Backend, TestDaemon, BACKENDS};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};

const ENTERPRISE: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
const IRONCLAD: &str = "urn:ietf:params:scim:schemas:extension:ironclad:2.0:User";
const EXTRA: &str =
    "[scim]\nuser_extensions = [\"urn:ietf:params:scim:schemas:extension:ironclad:2.0:User\"]\n";

fn okta_user(i: usize) -> Value {
    json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User", ENTERPRISE, IRONCLAD],
        "userName": format!("user{i}@okta.local"),
        "name": {"givenName": format!("Given{i}"), "familyName": format!("Family{i}")},
        "emails": [{"primary": true, "value": format!("user{i}@okta.local"), "type": "work"}],
        "displayName": format!("Given{i} Family{i}"),
        "locale": "en-US",
        "externalId": format!("00u{i:017}"),
        "groups": [],
        "password": format!("Sentinel-Pw-{i}-xyzzy"),
        "active": true,
        "title": format!("Engineer {i}"),
        ENTERPRISE: {"department": format!("Dept{}", i % 3), "manager": {"value": "1", "displayName": "Kate"}},
        IRONCLAD: {"managementLevel": format!("L{}", i % 4)},
    })
}

fn filter_path(endpoint: &str, filter: &str, extra: &str) -> String {
    let enc: String = url_encode(filter);
    format!("/{endpoint}?filter={enc}{extra}")
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn okta_test_api_credentials_and_integer_paging_fields() {
    let t = TestDaemon::start().await;
    let r = t.get("/Users?startIndex=1&count=2").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        r.body["schemas"][0],
        "urn:ietf:params:scim:api:messages:2.0:ListResponse"
    );
    assert!(
        r.body["totalResults"].is_u64()
            && r.body["startIndex"].is_u64()
            && r.body["itemsPerPage"].is_u64()
    );
    assert_eq!(r.headers["content-type"], "application/scim+json");
    let r = t.get("/Groups?startIndex=1&count=100").await;
    assert_eq!(r.status, StatusCode::OK);
    // Entra's connection test: a random GUID must give 200 and an empty list, never 404.
    let r = t
        .get(&filter_path(
            "Users",
            "userName eq \"5d0e3c6c-3b9b-4a57-9b8e-5ef4b1d1c0aa\"",
            "",
        ))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["totalResults"], 0);
}

/// Issue 10: a load balancer's health check on the SCIM listener (the admin listener is
/// loopback only) needs no token and reveals nothing but "this instance takes pushes now":
/// `200 ok` while its store answers, `503` once it does not; other methods 405. Before: no such
/// endpoint (404 outside the base path).
#[tokio::test]
async fn the_load_balancer_health_check_needs_no_token_and_reveals_nothing() {
    let t = TestDaemon::start().await;
    let origin = t.base.split("/scim").next().unwrap().to_owned();
    let url = format!("{origin}/healthz");
    let r = t.client.get(&url).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["content-type"], "text/plain");
    assert_eq!(r.text().await.unwrap(), "ok\n");
    let r = t.client.head(&url).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = t.client.post(&url).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 405);
    assert_eq!(r.headers()["allow"], "GET, HEAD");
    // The store gone (its file removed: `Store::ping` checks it): unavailable, still no detail.
    let db = t.store_url.trim_start_matches("sqlite://").to_owned();
    std::fs::remove_file(&db).unwrap();
    let r = t.client.get(&url).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 503);
    assert_eq!(r.text().await.unwrap(), "unavailable\n");
}

#[tokio::test]
async fn authentication_fails_closed_before_parsing_anything() {
    let t = TestDaemon::start().await;
    // 5,000 levels fit in a URL (an http URI holds at most 64 KiB); deeper ones go by POST below.
    let deep = format!("{}userName pr{}", "(".repeat(5_000), ")".repeat(5_000));
    let url = format!("{}/Users?filter={}", t.base, url_encode(&deep));
    let cases: Vec<(&str, Option<Vec<String>>)> = vec![
        ("no header", None),
        (
            "wrong token",
            Some(vec!["Bearer scim_wrongwrongwrong".into()]),
        ),
        ("empty bearer", Some(vec!["Bearer".into()])),
        ("bearer space", Some(vec!["Bearer ".into()])),
        ("basic", Some(vec![format!("Basic {}", t.token)])),
        (
            "duplicate headers",
            Some(vec![
                format!("Bearer {}", t.token),
                format!("Bearer {}", t.token),
            ]),
        ),
    ];
    for (name, headers) in cases {
        let mut req = t.client.get(&url);
        for h in headers.unwrap_or_default() {
            req = req.header("authorization", h);
        }
        let r = TestDaemon::finish(req.send().await.unwrap()).await;
        assert_scim_error(&r, 401, None);
        assert!(r.headers.contains_key("www-authenticate"), "{name}");
    }
    // A huge body without a token is refused before it is read: the request announces 10 MiB
    // and sends none of it, so only a server that answers before reading the body can answer
    // at all. (The old check sent the body and accepted a failed send as a pass.)
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = t.d().scim_addr;
        let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "POST /scim/v2/Users HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/scim+json\r\nContent-Length: {}\r\n\r\n",
            10 * 1024 * 1024
        );
        sock.write_all(head.as_bytes()).await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        let read = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = sock.read(&mut buf).await.unwrap();
                assert!(n > 0, "connection closed without an answer");
                got.extend_from_slice(&buf[..n]);
            }
        })
        .await;
        assert!(read.is_ok(), "no answer before the body was sent");
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 401"), "{text}");
    }
    // Lower-case scheme with the right token is accepted.
    let r = t
        .client
        .get(format!("{}/Users", t.base))
        .header("authorization", format!("bearer {}", t.token))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // A revoked token fails on its next request; a second live token keeps working (rotation).
    let second = scim_sync::http::auth::generate_token();
    t.d()
        .store
        .create_token("second", scim_sync::http::auth::digest(&second), 1)
        .await
        .unwrap();
    assert!(t.d().store.revoke_token("test", 2).await.unwrap());
    let r = t.get("/Users").await;
    assert_scim_error(&r, 401, None);
    let r = t
        .client
        .get(format!("{}/Users", t.base))
        .bearer_auth(&second)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

/// Okta's App Integration Wizard style: lookups, POST, GET + full PUT for every change, group
/// push by PUT. At the end the store holds exactly what Okta believes.
async fn okta_aiw_lifecycle(backend: Backend) {
    let t = TestDaemon::start_with(backend, EXTRA).await;
    let mut okta: BTreeMap<String, Value> = BTreeMap::new(); // id -> what Okta believes
    for i in 0..20 {
        let u = okta_user(i);
        let look = t
            .get(&filter_path(
                "Users",
                &format!("userName eq \"{}\"", u["userName"].as_str().unwrap()),
                "&startIndex=1&count=100",
            ))
            .await;
        assert_eq!(look.status, StatusCode::OK);
        assert_eq!(look.body["totalResults"], 0);
        let r = t.post("/Users", &u).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        assert!(
            r.body.get("password").is_none(),
            "password must never be returned"
        );
        assert_eq!(r.body[IRONCLAD]["managementLevel"], format!("L{}", i % 4));
        assert_eq!(r.body[ENTERPRISE]["department"], format!("Dept{}", i % 3));
        assert!(r.headers.contains_key("etag") && r.headers.contains_key("location"));
        okta.insert(r.body["id"].as_str().unwrap().to_string(), u);
    }
    // Okta retries a timed-out create: 409, never a second user; case-insensitive.
    let mut dup = okta_user(3);
    dup["userName"] = json!("USER3@OKTA.LOCAL");
    assert_scim_error(&t.post("/Users", &dup).await, 409, Some("uniqueness"));
    // Lookup is case-insensitive.
    let r = t
        .get(&filter_path(
            "Users",
            "userName eq \"User7@Okta.Local\"",
            "",
        ))
        .await;
    assert_eq!(r.body["totalResults"], 1);
    // Import: pages of 100 and of 7 give the same order.
    let all = t.get("/Users?startIndex=1&count=100").await;
    let ids_100: Vec<String> = all.body["Resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids_100.len(), 20);
    let mut ids_7 = Vec::new();
    let mut start = 1;
    while start <= 20 {
        let page = t.get(&format!("/Users?startIndex={start}&count=7")).await;
        assert_eq!(page.body["totalResults"], 20);
        ids_7.extend(
            page.body["Resources"]
                .as_array()
                .unwrap()
                .iter()
                .map(|u| u["id"].as_str().unwrap().to_string()),
        );
        start += 7;
    }
    assert_eq!(ids_100, ids_7);
    // Profile update: GET then PUT of the server's own representation with changes over it.
    let id = ids_100[0].clone();
    let mut body = t.get(&format!("/Users/{id}")).await.body;
    body["title"] = json!("Staff Engineer");
    body["userName"] = json!("renamed0@okta.local");
    body[IRONCLAD]["managementLevel"] = json!("L9");
    let r = t.put(&format!("/Users/{id}"), &body).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["title"], "Staff Engineer");
    assert_eq!(r.body["userName"], "renamed0@okta.local");
    assert_eq!(r.body["id"], id.as_str());
    okta.get_mut(&id).unwrap()["title"] = json!("Staff Engineer");
    okta.get_mut(&id).unwrap()["userName"] = json!("renamed0@okta.local");
    okta.get_mut(&id).unwrap()[IRONCLAD]["managementLevel"] = json!("L9");
    // Deactivate (GET + PUT active false): still readable and listed, active false.
    let id1 = ids_100[1].clone();
    let mut body = t.get(&format!("/Users/{id1}")).await.body;
    body["active"] = json!(false);
    assert_eq!(
        t.put(&format!("/Users/{id1}"), &body).await.body["active"],
        false
    );
    let r = t.get(&filter_path("Users", "active eq false", "")).await;
    assert_eq!(r.body["totalResults"], 1);
    // Reactivate.
    body["active"] = json!(true);
    assert_eq!(
        t.put(&format!("/Users/{id1}"), &body).await.body["active"],
        true
    );
    // Group push: lookup, POST with members [], GET, PUT with members, rename by PUT.
    let r = t
        .get(&filter_path(
            "Groups",
            "displayName eq \"Engineering\"",
            "&startIndex=1&count=100",
        ))
        .await;
    assert_eq!(r.body["totalResults"], 0);
    let g = t.post("/Groups", &json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": "Engineering", "members": []})).await;
    assert_eq!(g.status, StatusCode::CREATED, "{}", g.body);
    let gid = g.body["id"].as_str().unwrap().to_string();
    let members: Vec<Value> = ids_100[..5]
        .iter()
        .map(|id| json!({"value": id, "display": "x"}))
        .collect();
    let put = json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "id": gid, "displayName": "Engineering", "members": members});
    let r = t.put(&format!("/Groups/{gid}"), &put).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let members: Vec<Value> = ids_100[3..8]
        .iter()
        .map(|id| json!({"value": id}))
        .collect();
    let put = json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "id": gid, "displayName": "Engineering & Ops", "members": members});
    let r = t.put(&format!("/Groups/{gid}"), &put).await;
    assert_eq!(r.body["displayName"], "Engineering & Ops");
    let got: BTreeSet<String> = t.get(&format!("/Groups/{gid}")).await.body["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["value"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(got, ids_100[3..8].iter().cloned().collect::<BTreeSet<_>>());
    // The user's derived groups attribute.
    let u = t.get(&format!("/Users/{}", ids_100[4])).await;
    assert_eq!(u.body["groups"][0]["value"], gid.as_str());
    // A second group, then deleted: its users stay.
    let g2 = t.post("/Groups", &json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": "Temp", "members": [{"value": ids_100[9]}]})).await;
    let g2id = g2.body["id"].as_str().unwrap();
    assert_eq!(
        t.delete(&format!("/Groups/{g2id}")).await.status,
        StatusCode::NO_CONTENT
    );
    assert_scim_error(&t.get(&format!("/Groups/{g2id}")).await, 404, None);
    assert_eq!(
        t.get(&format!("/Users/{}", ids_100[9])).await.status,
        StatusCode::OK
    );
    // The store holds exactly what Okta believes.
    for (id, believed) in &okta {
        let got = t.get(&format!("/Users/{id}")).await.body;
        for key in [
            "userName",
            "displayName",
            "title",
            "externalId",
            "locale",
            "active",
        ] {
            assert_eq!(got[key], believed[key], "{id} {key}");
        }
        assert_eq!(got["name"], believed["name"]);
        assert_eq!(got["emails"], believed["emails"]);
        assert_eq!(got[IRONCLAD], believed[IRONCLAD]);
        assert_eq!(
            got[ENTERPRISE]["department"],
            believed[ENTERPRISE]["department"]
        );
    }
    assert_eq!(t.get("/Groups").await.body["totalResults"], 1);
}

#[tokio::test]
async fn okta_aiw_lifecycle_sqlite() {
    okta_aiw_lifecycle(Backend::Sqlite).await;
}

#[tokio::test]
async fn okta_aiw_lifecycle_postgres() {
    okta_aiw_lifecycle(Backend::Postgres).await;
}

#[tokio::test]
async fn okta_oin_patch_style() {
    let t = TestDaemon::start_with(Backend::Sqlite, EXTRA).await;
    let a = t.post("/Users", &okta_user(1)).await.body["id"]
        .as_str()
        .unwrap()
        .to_string();
    let b = t.post("/Users", &okta_user(2)).await.body["id"]
        .as_str()
        .unwrap()
        .to_string();
    let deactivate = json!({"schemas":["urn:ietf:params:scim:api:messages:2.0:PatchOp"],"Operations":[{"op":"replace","value":{"active":false}}]});
    let r = t.patch(&format!("/Users/{a}"), &deactivate).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["active"], false);
    // A path-less replace repeating the read-only id is accepted (Okta does this for groups).
    let g = t.post("/Groups", &json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": "Sales", "members": []})).await;
    let gid = g.body["id"].as_str().unwrap().to_string();
    let ops = json!({"schemas":["urn:ietf:params:scim:api:messages:2.0:PatchOp"],"Operations":[
        {"op":"replace","value":{"id": gid, "displayName":"Sales EMEA"}},
        {"op":"add","path":"members","value":[{"value": a, "display":"user1"},{"value": b, "display":"user2"}]}]});
    let r = t.patch(&format!("/Groups/{gid}"), &ops).await;
    assert!(
        r.status == StatusCode::NO_CONTENT || r.status == StatusCode::OK,
        "{}",
        r.body
    );
    let ops = json!({"schemas":["urn:ietf:params:scim:api:messages:2.0:PatchOp"],"Operations":[
        {"op":"remove","path": format!("members[value eq \"{a}\"]")}]});
    t.patch(&format!("/Groups/{gid}"), &ops).await;
    let g = t.get(&format!("/Groups/{gid}")).await.body;
    assert_eq!(g["displayName"], "Sales EMEA");
    assert_eq!(g["members"].as_array().unwrap().len(), 1);
    assert_eq!(g["members"][0]["value"], b.as_str());
    // "Push Now" on an empty group: replace members with [] empties it.
    let ops = json!({"schemas":["urn:ietf:params:scim:api:messages:2.0:PatchOp"],"Operations":[{"op":"replace","path":"members","value":[]}]});
    t.patch(&format!("/Groups/{gid}"), &ops).await;
    let g = t.get(&format!("/Groups/{gid}")).await.body;
    assert!(
        g.get("members")
            .is_none_or(|m| m.as_array().is_none_or(Vec::is_empty)),
        "{g}"
    );
}

#[tokio::test]
async fn entra_dialects() {
    for backend in BACKENDS {
        let t = TestDaemon::start_with(backend, "").await;
        let create = json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User", ENTERPRISE],
            "externalId": "0a21f0f2-8d2a-4f8e-bf98-7363c4aed4ef", "userName": "Test_User_ab6490ee@contoso.com", "active": true,
            "emails": [{"primary": true, "type": "work", "value": "Test_User_fd0ea19b@contoso.com"}],
            "meta": {"resourceType": "User"},
            "name": {"formatted": "givenName familyName", "familyName": "familyName", "givenName": "givenName"},
            "roles": [], "title": null, "addresses": null,
            "urn:ietf:params:scim:schemas:extension:custom:2.0:User": {"costCenter": "42"}});
        let r = t.post("/Users", &create).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        let id = r.body["id"].as_str().unwrap().to_string();
        assert_eq!(
            r.body["urn:ietf:params:scim:schemas:extension:custom:2.0:User"]["costCenter"],
            "42"
        );
        // Entra encodes spaces as '+'.
        let r = t
            .get("/Users?filter=externalId+eq+%220a21f0f2-8d2a-4f8e-bf98-7363c4aed4ef%22")
            .await;
        assert_eq!(r.body["totalResults"], 1, "{}", r.body);
        let r = t
            .get(&filter_path(
                "Users",
                "emails[type eq \"work\"].value eq \"test_user_fd0ea19b@contoso.com\"",
                "",
            ))
            .await;
        assert_eq!(r.body["totalResults"], 1, "{}", r.body);
        // Default dialect: capitalised ops, "False" as a string, Add for an email change.
        let ops = json!({"schemas":["urn:ietf:params:scim:api:messages:2.0:PatchOp"],"Operations":[
            {"op":"Replace","path":"active","value":"False"},
            {"op":"Add","path":"emails[type eq \"work\"].value","value":"new@contoso.com"},
            {"op":"Replace","path":"name.familyName","value":"Changed"},
            {"op":"Add","path": format!("{ENTERPRISE}:manager"),"value":"mgr-123"}]});
        let r = t.patch(&format!("/Users/{id}"), &ops).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        assert_eq!(r.body["active"], false);
        assert_eq!(r.body["name"]["familyName"], "Changed");
        assert_eq!(
            r.body[ENTERPRISE]["manager"]["value"], "mgr-123",
            "{}",
            r.body
        );
        let work: Vec<&Value> = r.body["emails"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == "work")
            .collect();
        assert_eq!(work.len(), 1);
        assert_eq!(work[0]["value"], "new@contoso.com");
        // aadOptscim062020: path-less replace with dotted and URN keys, booleans.
        let ops = json!({"schemas":["urn:ietf:params:scim:api:messages:2.0:PatchOp"],"Operations":[
            {"op":"replace","value":{"displayName":"New Name","name.givenName":"G2", format!("{ENTERPRISE}:employeeNumber"): "E-7", "active": true}}]});
        let r = t.patch(&format!("/Users/{id}"), &ops).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        assert_eq!(r.body["displayName"], "New Name");
        assert_eq!(r.body["name"]["givenName"], "G2");
        assert_eq!(r.body[ENTERPRISE]["employeeNumber"], "E-7");
        assert_eq!(r.body["active"], true);
        // Groups: a non-URN schema, no members; members added and removed as value lists.
        let g = t.post("/Groups", &json!({"schemas":["urn:ietf:params:scim:schemas:core:2.0:Group","http://schemas.microsoft.com/2006/11/ResourceManagement/ADSCIM/2.0/Group"],
            "externalId":"8aa1a0c0-c4c3-4bc0-b4a5-2ef676900159","displayName":"Group1DisplayName","meta":{"resourceType":"Group"}})).await;
        assert_eq!(g.status, StatusCode::CREATED, "{}", g.body);
        let gid = g.body["id"].as_str().unwrap().to_string();
        let r = t
            .get(&format!(
                "/Groups?excludedAttributes=members&filter={}",
                url_encode("displayName eq \"Group1DisplayName\"")
            ))
            .await;
        assert_eq!(r.body["totalResults"], 1);
        assert!(r.body["Resources"][0].get("members").is_none());
        let add = json!({"schemas":["urn:ietf:params:scim:api:messages:2.0:PatchOp"],"Operations":[{"op":"Add","path":"members","value":[{"$ref":null,"value": id}]}]});
        let r = t.patch(&format!("/Groups/{gid}"), &add).await;
        assert!(r.status.is_success(), "{}", r.body);
        assert_eq!(
            t.get(&format!("/Groups/{gid}")).await.body["members"][0]["value"],
            id.as_str()
        );
        let remove = json!({"schemas":["urn:ietf:params:scim:api:messages:2.0:PatchOp"],"Operations":[{"op":"Remove","path":"members","value":[{"value": id}]}]});
        t.patch(&format!("/Groups/{gid}"), &remove).await;
        let g = t.get(&format!("/Groups/{gid}")).await.body;
        assert!(
            g.get("members")
                .is_none_or(|m| m.as_array().is_none_or(Vec::is_empty)),
            "{g}"
        );
        // Hard delete after 30 days: 204, then 404 everywhere.
        t.patch(&format!("/Groups/{gid}"), &add).await;
        assert_eq!(
            t.delete(&format!("/Users/{id}")).await.status,
            StatusCode::NO_CONTENT
        );
        assert_scim_error(&t.get(&format!("/Users/{id}")).await, 404, None);
        let g = t.get(&format!("/Groups/{gid}")).await.body;
        assert!(
            g.get("members")
                .is_none_or(|m| m.as_array().is_none_or(Vec::is_empty)),
            "deleted user left in group: {g}"
        );
        // The userName is free again.
        assert_eq!(t.post("/Users", &create).await.status, StatusCode::CREATED);
    }
}

#[tokio::test]
async fn hostile_requests_get_scim_errors() {
    let t = TestDaemon::start().await;
    let url = format!("{}/Users", t.base);
    // Malformed JSON.
    let r = t
        .client
        .post(&url)
        .bearer_auth(&t.token)
        .header("content-type", "application/scim+json")
        .body("{\"userName\": ")
        .send()
        .await
        .unwrap();
    assert_scim_error(&TestDaemon::finish(r).await, 400, Some("invalidSyntax"));
    // Wrong content type.
    let r = t
        .client
        .post(&url)
        .bearer_auth(&t.token)
        .header("content-type", "text/xml")
        .body("<x/>")
        .send()
        .await
        .unwrap();
    assert_scim_error(&TestDaemon::finish(r).await, 415, None);
    // Oversized body (1 MiB + 1).
    let big = json!({"userName": "big", "displayName": "x".repeat(1024 * 1024)});
    assert_scim_error(&t.post("/Users", &big).await, 413, None);
    // Deep and long filters are refused while parsing; the daemon stays up.
    // 100,000 levels do not fit in a URL: they come as a POST /.search body.
    let deep = format!("{}userName pr{}", "(".repeat(100_000), ")".repeat(100_000));
    let search =
        json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:SearchRequest"], "filter": deep});
    let started = std::time::Instant::now();
    let r = t.post("/Users/.search", &search).await;
    assert_scim_error(&r, 400, Some("invalidFilter"));
    println!(
        "100,000 nested parentheses refused in {:?} (round trip)",
        started.elapsed()
    );
    for f in [
        format!("{}userName pr{}", "(".repeat(5_000), ")".repeat(5_000)),
        format!("{}userName pr{}", "not (".repeat(2_000), ")".repeat(2_000)),
        format!("userName eq \"{}\"", "a".repeat(10_000)),
        "TEST@EXAMPLE.COM".to_string(),
        "userName xx \"a\"".to_string(),
        "userName eq".to_string(),
    ] {
        let r = t.get(&format!("/Users?filter={}", url_encode(&f))).await;
        assert_scim_error(&r, 400, Some("invalidFilter"));
    }
    // Not a user body.
    assert_scim_error(&t.post("/Users", &json!([1, 2])).await, 400, None);
    assert_scim_error(
        &t.post("/Users", &json!({"displayName": "no userName"}))
            .await,
        400,
        None,
    );
    assert_scim_error(
        &t.post("/Users", &json!({"userName": "a", "active": "no"}))
            .await,
        400,
        Some("invalidValue"),
    );
    // Unknown ids.
    assert_scim_error(&t.get("/Users/does-not-exist").await, 404, None);
    assert_scim_error(
        &t.put("/Users/does-not-exist", &json!({"userName": "x"}))
            .await,
        404,
        None,
    );
    assert_scim_error(&t.delete("/Groups/does-not-exist").await, 404, None);
    assert_scim_error(&t.get("/Nope").await, 404, None);
    // Read-only attributes in PATCH.
    let id = t.post("/Users", &json!({"userName": "ro"})).await.body["id"]
        .as_str()
        .unwrap()
        .to_string();
    for path in ["id", "meta.created", "groups"] {
        let ops = json!({"schemas":["urn:ietf:params:scim:api:messages:2.0:PatchOp"],"Operations":[{"op":"replace","path": path,"value":"x"}]});
        assert_scim_error(
            &t.patch(&format!("/Users/{id}"), &ops).await,
            400,
            Some("mutability"),
        );
    }
    // Read-only attributes in POST are ignored: the server's id wins.
    let r = t
        .post(
            "/Users",
            &json!({"userName": "ro2", "id": "chosen-by-client", "meta": {"created": "1999"}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_ne!(r.body["id"], "chosen-by-client");
    // Methods not allowed.
    let r = t
        .call(Method::POST, "/ServiceProviderConfig", Some(&json!({})))
        .await;
    assert_scim_error(&r, 405, None);
    // If-Match mismatch.
    let r = t
        .client
        .put(format!("{}/Users/{id}", t.base))
        .bearer_auth(&t.token)
        .header("if-match", "W/\"999\"")
        .header("content-type", "application/scim+json")
        .body(json!({"userName": "ro"}).to_string())
        .send()
        .await
        .unwrap();
    assert_scim_error(&TestDaemon::finish(r).await, 412, None);
    // Discovery works anonymously.
    let r = t
        .client
        .get(format!("{}/ServiceProviderConfig", t.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    for p in ["/ResourceTypes", "/Schemas"] {
        assert_eq!(t.get(p).await.status, StatusCode::OK);
    }
}

#[tokio::test]
async fn injection_strings_are_stored_as_data() {
    let t = TestDaemon::start().await;
    let hostile = [
        "a'; DROP TABLE resources; --",
        "*)(uid=*))(|(uid=*",
        "cn=admin,dc=example,dc=com",
        "\u{0}nul",
        "ünïcödé 名前 \u{202e}rtl",
        "\\\"quoted\\\"",
        "<script>alert(1)</script>",
        "%s%n%x",
    ];
    for (i, h) in hostile.iter().enumerate() {
        let body = json!({"userName": format!("{h}{i}"), "displayName": h, "title": h, "externalId": h,
            "name": {"givenName": h, "familyName": h}, "emails": [{"value": h, "type": "work"}]});
        let r = t.post("/Users", &body).await;
        assert_eq!(r.status, StatusCode::CREATED, "{h}: {}", r.body);
        let id = r.body["id"].as_str().unwrap();
        let got = t.get(&format!("/Users/{id}")).await.body;
        assert_eq!(got["displayName"], *h);
        assert_eq!(got["userName"], format!("{h}{i}"));
        let found = t
            .get(&filter_path(
                "Users",
                &format!("userName eq {}", json!(format!("{h}{i}"))),
                "",
            ))
            .await;
        assert_eq!(found.body["totalResults"], 1, "{h}");
        let g = t
            .post(
                "/Groups",
                &json!({"displayName": format!("{h}{i}"), "members": [{"value": id}]}),
            )
            .await;
        assert_eq!(g.status, StatusCode::CREATED, "{h}: {}", g.body);
    }
    assert_eq!(t.get("/Users").await.body["totalResults"], hostile.len());
}

#[tokio::test]
async fn fifty_concurrent_creates_give_one_201() {
    for backend in BACKENDS {
        let t = std::sync::Arc::new(TestDaemon::start_with(backend, "").await);
        let mut handles = Vec::new();
        for i in 0..50 {
            let t = t.clone();
            handles.push(tokio::spawn(async move {
                let name = if i % 2 == 0 { "Alice" } else { "ALICE" };
                t.post("/Users", &json!({"userName": name})).await.status
            }));
        }
        let mut codes = BTreeMap::new();
        for h in handles {
            *codes.entry(h.await.unwrap().as_u16()).or_insert(0) += 1;
        }
        assert_eq!(codes, BTreeMap::from([(201, 1), (409, 49)]), "{backend:?}");
        let g1 = t.post("/Groups", &json!({"displayName": "Admins"})).await;
        assert_eq!(g1.status, StatusCode::CREATED);
        assert_scim_error(
            &t.post("/Groups", &json!({"displayName": "ADMINS"})).await,
            409,
            Some("uniqueness"),
        );
    }
}

#[tokio::test]
async fn parallel_membership_patches_all_stick() {
    for backend in BACKENDS {
        let t = std::sync::Arc::new(TestDaemon::start_with(backend, "").await);
        let gid = t.post("/Groups", &json!({"displayName": "G"})).await.body["id"]
            .as_str()
            .unwrap()
            .to_string();
        let mut ids = Vec::new();
        for i in 0..20 {
            ids.push(
                t.post("/Users", &json!({"userName": format!("m{i}")}))
                    .await
                    .body["id"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            );
        }
        let mut handles = Vec::new();
        for id in ids.clone() {
            let (t, gid) = (t.clone(), gid.clone());
            handles.push(tokio::spawn(async move {
                let ops = json!({"schemas":["urn:ietf:params:scim:api:messages:2.0:PatchOp"],"Operations":[{"op":"add","path":"members","value":[{"value": id}]}]});
                t.patch(&format!("/Groups/{gid}"), &ops).await.status
            }));
        }
        for h in handles {
            assert!(h.await.unwrap().is_success());
        }
        let got: BTreeSet<String> = t.get(&format!("/Groups/{gid}")).await.body["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["value"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(got, ids.into_iter().collect::<BTreeSet<_>>(), "{backend:?}");
        // A member that is not a user is refused, not silently dropped.
        let ops = json!({"schemas":["urn:ietf:params:scim:api:messages:2.0:PatchOp"],"Operations":[{"op":"add","path":"members","value":[{"value": "no-such-user"}]}]});
        assert_scim_error(
            &t.patch(&format!("/Groups/{gid}"), &ops).await,
            400,
            Some("invalidValue"),
        );
    }
}

#[tokio::test]
async fn passwords_never_reach_the_database_in_clear() {
    let t = TestDaemon::start_with(Backend::Sqlite, "[scim]\npassword_sync = \"ssha512\"\n").await;
    let mut u = okta_user(5);
    u["password"] = json!("Sentinel-Clear-Password-51");
    let r = t.post("/Users", &u).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let id = r.body["id"].as_str().unwrap();
    let ops = json!({"schemas":["urn:ietf:params:scim:api:messages:2.0:PatchOp"],"Operations":[{"op":"replace","value":{"password":"Sentinel-Clear-Password-52"}}]});
    assert_eq!(
        t.patch(&format!("/Users/{id}"), &ops).await.status,
        StatusCode::OK
    );
    let stored = t.d().store.get_user(id).await.unwrap().unwrap();
    assert!(stored
        .password_hash
        .as_deref()
        .unwrap()
        .starts_with("{SSHA512}"));
    for entry in std::fs::read_dir(t.dir.path()).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains("Sentinel-Clear-Password"),
            "clear password found on disk"
        );
    }
}

#[tokio::test]
async fn tls_listener_serves_scim_over_https() {
    let pki = tempfile::tempdir().unwrap();
    crate::harness::slapd::make_test_pki(pki.path());
    let server = format!(
        "tls_cert_file = \"{}\"\ntls_key_file = \"{}\"",
        pki.path().join("server.pem").display(),
        pki.path().join("server.key").display()
    );
    let t = TestDaemon::start_full(Backend::Sqlite, &server, "").await;
    let ca =
        reqwest::Certificate::from_pem(&std::fs::read(pki.path().join("ca.pem")).unwrap()).unwrap();
    let client = reqwest::Client::builder()
        .add_root_certificate(ca)
        .build()
        .unwrap();
    let base = format!("https://{}/scim/v2", t.d().scim_addr);
    let r = client
        .post(format!("{base}/Users"))
        .bearer_auth(&t.token)
        .header("content-type", "application/scim+json")
        .body(json!({"userName": "tls@example.com"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["meta"]["location"]
            .as_str()
            .unwrap()
            .starts_with("https://"),
        "{body}"
    );
    let r = client
        .get(format!("{base}/Users"))
        .bearer_auth(&t.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // No plain-HTTP fallback on the TLS port.
    let plain = reqwest::Client::new()
        .get(format!("http://{}/scim/v2/Users", t.d().scim_addr))
        .bearer_auth(&t.token)
        .send()
        .await;
    assert!(
        plain.is_err(),
        "plain HTTP must not be served on the TLS listener"
    );
    // A client that does not trust the CA is refused.
    let untrusting = reqwest::Client::new()
        .get(format!("{base}/Users"))
        .send()
        .await;
    assert!(untrusting.is_err());
}

/// Issue 8 item 8: a mutation still waiting on the store when the request deadline passes must
/// not answer 503 and then commit (the IdP's retry of a POST would get 409). A second
/// connection holds the SQLite write lock (PostgreSQL: the user's row lock) until the client
/// has an answer or well past the deadline; then the answer must match what the store holds.
async fn deadline_case(backend: Backend) {
    use diesel::connection::SimpleConnection;
    use diesel::Connection;
    let t = TestDaemon::start_full(backend, "request_timeout_secs = 1", "").await;
    let target = json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
        "userName": "late@example.com",
        "displayName": "After",
    });
    // PostgreSQL: a PUT of an existing user waits on its row lock. SQLite: a POST waits on the
    // database write lock.
    let existing = match backend {
        Backend::Sqlite => None,
        Backend::Postgres => {
            let mut before = target.clone();
            before["displayName"] = json!("Before");
            let r = t.post("/Users", &before).await;
            assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
            Some(r.body["id"].as_str().unwrap().to_owned())
        }
    };
    let url = t.store_url.clone();
    let id = existing.clone();
    let (locked_tx, locked_rx) = std::sync::mpsc::channel::<()>();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let locker = std::thread::spawn(move || match backend {
        Backend::Sqlite => {
            let path = url.strip_prefix("sqlite://").unwrap();
            let mut c = diesel::SqliteConnection::establish(path).unwrap();
            // The daemon writes on its own too (its instance heartbeat every 2 s): wait for the
            // lock as the daemon's connections do, instead of failing at once when it holds it.
            c.batch_execute("PRAGMA busy_timeout = 10000").unwrap();
            c.batch_execute("BEGIN IMMEDIATE").unwrap();
            locked_tx.send(()).unwrap();
            release_rx.recv().unwrap();
            c.batch_execute("COMMIT").unwrap();
        }
        Backend::Postgres => {
            let mut c = diesel::PgConnection::establish(&url).unwrap();
            c.batch_execute(&format!(
                "BEGIN; SELECT 1 FROM resources WHERE id = '{}' FOR UPDATE",
                id.unwrap()
            ))
            .unwrap();
            locked_tx.send(()).unwrap();
            release_rx.recv().unwrap();
            c.batch_execute("COMMIT").unwrap();
        }
    });
    locked_rx.recv().unwrap();
    let send = async {
        match &existing {
            None => t.post("/Users", &target).await,
            Some(id) => t.put(&format!("/Users/{id}"), &target).await,
        }
    };
    let mut send = std::pin::pin!(send);
    // Hold the lock until the client is answered, or 3 s (the deadline is 1 s, SQLite's busy
    // timeout 5 s): an answer given while the store still waits is the defect.
    let early = tokio::time::timeout(std::time::Duration::from_secs(3), &mut send).await;
    release_tx.send(()).unwrap();
    // PostgreSQL bounds the row-lock wait by the deadline (`lock_timeout`): the answer came
    // while the lock was still held.
    if backend == Backend::Postgres {
        assert!(
            early.is_ok(),
            "the request outlived its deadline on a row lock"
        );
    }
    let r = match early {
        Ok(r) => r,
        Err(_) => send.await,
    };
    locker.join().unwrap();
    // Whatever the answer, the store must agree with it once the lock is gone. A transaction
    // left running behind a 503 commits within SQLite's busy timeout (5 s from its start) or
    // at once on PostgreSQL, so a change that has not shown up 6 s after the release never will.
    let applied = || async {
        let found = t
            .get(&filter_path(
                "Users",
                "userName eq \"late@example.com\"",
                "",
            ))
            .await;
        found.body["Resources"]
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u["displayName"] == "After")
    };
    match r.status.as_u16() {
        200 | 201 => assert!(
            applied().await,
            "answered {} but nothing committed",
            r.status
        ),
        503 => {
            for _ in 0..30 {
                assert!(!applied().await, "answered 503 while the change committed");
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            // The IdP retries and succeeds (a POST does not meet its own ghost as a 409).
            let retry = match &existing {
                None => t.post("/Users", &target).await,
                Some(id) => t.put(&format!("/Users/{id}"), &target).await,
            };
            assert!(
                retry.status.is_success(),
                "retry: {} {}",
                retry.status,
                retry.body
            );
        }
        other => panic!("unexpected {other}: {}", r.body),
    }
}

#[tokio::test]
async fn a_request_past_its_deadline_answers_what_was_committed_sqlite() {
    deadline_case(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_request_past_its_deadline_answers_what_was_committed_postgres() {
    deadline_case(Backend::Postgres).await;
}

/// Issue 8 item 10: RFC 7643 §2.4 / RFC 7644 §3.5.2, `primary` true at most once, over the API.
#[tokio::test]
async fn a_second_primary_value_takes_the_flag_over_post_put_and_patch() {
    let t = TestDaemon::start().await;
    let primaries = |u: &Value| -> Vec<String> {
        u["emails"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["primary"] == true)
            .map(|e| e["value"].as_str().unwrap().to_owned())
            .collect()
    };
    let r = t
        .post(
            "/Users",
            &json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": "prim",
                "emails": [{"value": "a@x", "type": "work", "primary": true},
                           {"value": "b@x", "type": "home", "primary": true}]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(primaries(&r.body), ["b@x"], "{}", r.body);
    let id = r.body["id"].as_str().unwrap().to_owned();
    let r = t
        .patch(
            &format!("/Users/{id}"),
            &json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": [
                {"op": "add", "path": "emails", "value": [{"value": "c@x", "type": "other", "primary": true}]}]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        primaries(&t.get(&format!("/Users/{id}")).await.body),
        ["c@x"]
    );
    let r = t
        .patch(
            &format!("/Users/{id}"),
            &json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": [
                {"op": "replace", "path": "emails[type eq \"work\"].primary", "value": true}]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        primaries(&t.get(&format!("/Users/{id}")).await.body),
        ["a@x"]
    );
    let r = t
        .put(
            &format!("/Users/{id}"),
            &json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": "prim",
                "emails": [{"value": "a@x", "primary": true}, {"value": "d@x", "primary": true}]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        primaries(&t.get(&format!("/Users/{id}")).await.body),
        ["d@x"]
    );
}

/// Issue 8 item 10: argon2 must not run inside the store's write transaction (it held the
/// SQLite write lock for the whole hash) nor on the async threads. While a second connection
/// holds the write lock, a PUT with a password must get its hash computed (the
/// `password_hashes_total` counter moves) before the store can even begin.
#[tokio::test]
async fn passwords_are_hashed_before_the_store_transaction() {
    use diesel::connection::SimpleConnection;
    use diesel::Connection;
    let t = TestDaemon::start_with(Backend::Sqlite, "[scim]\npassword_sync = \"argon2\"\n").await;
    let body = json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
        "userName": "hashed", "password": "Sentinel-Pw-hash-1"});
    let r = t.post("/Users", &body).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let id = r.body["id"].as_str().unwrap().to_owned();
    let user_path = format!("/Users/{id}");
    let path = t.store_url.strip_prefix("sqlite://").unwrap().to_owned();
    let counter = || scim_sync::telemetry::metrics().password_hashes.get();
    let mut put_body = body.clone();
    put_body["password"] = json!("Sentinel-Pw-hash-2");
    let patch_body = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
        "Operations": [{"op": "replace", "value": {"password": "Sentinel-Pw-hash-3"}}]});
    for method in [Method::PUT, Method::PATCH] {
        let before_hash = t
            .d()
            .store
            .get_user(&id)
            .await
            .unwrap()
            .unwrap()
            .password_hash;
        let mut locker = diesel::SqliteConnection::establish(&path).unwrap();
        // The daemon's own writes (its instance heartbeat) may hold the lock for a moment.
        locker.batch_execute("PRAGMA busy_timeout = 10000").unwrap();
        locker.batch_execute("BEGIN IMMEDIATE").unwrap();
        let before = counter();
        let body = if method == Method::PUT {
            &put_body
        } else {
            &patch_body
        };
        let call = t.call(method.clone(), &user_path, Some(body));
        let mut call = std::pin::pin!(call);
        // Poll the counter for 3 s while the lock is held (the request cannot finish
        // meanwhile: SQLite's busy timeout is 5 s).
        let mut hashed_while_locked = false;
        for _ in 0..150 {
            if counter() > before {
                hashed_while_locked = true;
                break;
            }
            let _ = tokio::time::timeout(std::time::Duration::from_millis(20), &mut call).await;
        }
        locker.batch_execute("COMMIT").unwrap();
        let r = call.await;
        assert_eq!(r.status, StatusCode::OK, "{method}: {}", r.body);
        assert!(
            hashed_while_locked,
            "{method}: the password was hashed only once the store's write lock was free (inside the transaction)"
        );
        let after_hash = t
            .d()
            .store
            .get_user(&id)
            .await
            .unwrap()
            .unwrap()
            .password_hash;
        assert!(after_hash.as_deref().unwrap().starts_with("{ARGON2}"));
        assert_ne!(before_hash, after_hash, "{method}: the new hash was stored");
    }
}

/// Issue 8 item 10: `token list` showed no last use because nothing wrote `last_used_ms`. A
/// request records it; more requests within the minute do not write it again.
#[tokio::test]
async fn a_token_records_its_last_use_at_most_once_a_minute() {
    let t = TestDaemon::start().await;
    let last_used = || async {
        let tokens = t.d().store.list_tokens().await.unwrap();
        tokens
            .iter()
            .find(|k| k.name == "test")
            .unwrap()
            .last_used_ms
    };
    assert_eq!(last_used().await, None, "not used yet");
    let before = scim_sync::http::server::now_ms();
    assert_eq!(t.get("/Users").await.status, StatusCode::OK);
    let first = last_used()
        .await
        .expect("a request records the token's last use");
    assert!(first >= before - 1000, "{first} vs {before}");
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    for _ in 0..5 {
        assert_eq!(t.get("/Users").await.status, StatusCode::OK);
    }
    assert_eq!(last_used().await, Some(first), "no write per request");
}

mod conformance;
mod nested;
