//! Nested groups over real HTTP (issue 11): a group's member may be a group (`type: "Group"`
//! or just its id); cycles (self, direct, through any depth) are refused with 400
//! `invalidValue` on POST, PUT and PATCH, decided in the store's write transaction (on
//! PostgreSQL two PATCHes that together would close a cycle never both succeed); a user's
//! `groups` lists direct and indirect groups; projections and rendering of group members.

use super::*;
use crate::harness::daemon::Resp;

const GROUP: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
const PATCH_OP: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";

async fn user(t: &TestDaemon, name: &str) -> String {
    let r = t
        .post(
            "/Users",
            &json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": name}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    r.body["id"].as_str().unwrap().to_owned()
}

async fn group(t: &TestDaemon, name: &str, members: Value) -> String {
    let r = t
        .post(
            "/Groups",
            &json!({"schemas": [GROUP], "displayName": name, "members": members}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    r.body["id"].as_str().unwrap().to_owned()
}

async fn add(t: &TestDaemon, parent: &str, child: &str) -> Resp {
    t.patch(
        &format!("/Groups/{parent}"),
        &json!({"schemas": [PATCH_OP], "Operations": [
            {"op": "add", "path": "members", "value": [{"value": child, "type": "Group"}]}]}),
    )
    .await
}

fn member_values(body: &Value) -> BTreeSet<String> {
    body["members"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|m| m["value"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn nested_members_render_as_groups_and_projections_see_them() {
    let t = TestDaemon::start().await;
    let u = user(&t, "ann").await;
    let child = group(&t, "child", json!([{"value": u}])).await;
    // Type given, and type left out (the id decides).
    let parent = group(
        &t,
        "parent",
        json!([{"value": child, "type": "Group"}, {"value": u}]),
    )
    .await;
    let r = t.get(&format!("/Groups/{parent}")).await;
    assert_eq!(r.status, StatusCode::OK);
    let members = r.body["members"].as_array().unwrap();
    let of = |id: &str| members.iter().find(|m| m["value"] == id).unwrap().clone();
    assert_eq!(of(&child)["type"], "Group");
    assert_eq!(of(&child)["display"], "child");
    assert!(of(&child)["$ref"]
        .as_str()
        .unwrap()
        .ends_with(&format!("/Groups/{child}")));
    assert_eq!(of(&u)["type"], "User");
    assert!(of(&u)["$ref"]
        .as_str()
        .unwrap()
        .ends_with(&format!("/Users/{u}")));

    // Projections: members.value / members.type keep only those sub-attributes.
    let r = t
        .get(&format!(
            "/Groups/{parent}?attributes=members.value,members.type"
        ))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let mut got: Vec<(String, String)> = r.body["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            assert!(m.get("display").is_none() && m.get("$ref").is_none(), "{m}");
            (
                m["value"].as_str().unwrap().to_owned(),
                m["type"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    got.sort();
    let mut want = vec![
        (child.clone(), "Group".to_owned()),
        (u.clone(), "User".to_owned()),
    ];
    want.sort();
    assert_eq!(got, want);
    assert!(r.body.get("displayName").is_none());
    let r = t
        .get(&format!("/Groups/{parent}?excludedAttributes=members.type"))
        .await;
    assert!(r.body["members"]
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m.get("type").is_none() && m.get("value").is_some()));
    // A filter on the member type finds the parent.
    let r = t
        .get("/Groups?filter=members%5Btype%20eq%20%22Group%22%5D&attributes=displayName")
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["totalResults"], 1, "{}", r.body);
    assert_eq!(r.body["Resources"][0]["displayName"], "parent");

    // PATCH removing the child by a filter on its type leaves the user.
    let r = t
        .patch(
            &format!("/Groups/{parent}"),
            &json!({"schemas": [PATCH_OP], "Operations": [
                {"op": "remove", "path": "members[type eq \"Group\"]"}]}),
        )
        .await;
    assert!(r.status.is_success(), "{}", r.body);
    let r = t.get(&format!("/Groups/{parent}")).await;
    assert_eq!(member_values(&r.body), BTreeSet::from([u.clone()]));
}

#[tokio::test]
async fn a_member_whose_type_contradicts_its_id_is_refused() {
    let t = TestDaemon::start().await;
    let u = user(&t, "bob").await;
    let g = group(&t, "g", json!([])).await;
    let r = t
        .post(
            "/Groups",
            &json!({"schemas": [GROUP], "displayName": "x", "members": [{"value": u, "type": "Group"}]}),
        )
        .await;
    assert_scim_error(&r, 400, Some("invalidValue"));
    let r = t
        .post(
            "/Groups",
            &json!({"schemas": [GROUP], "displayName": "y", "members": [{"value": g, "type": "User"}]}),
        )
        .await;
    assert_scim_error(&r, 400, Some("invalidValue"));
    let r = t
        .post(
            "/Groups",
            &json!({"schemas": [GROUP], "displayName": "z", "members": [{"value": g, "type": "Team"}]}),
        )
        .await;
    assert_scim_error(&r, 400, Some("invalidValue"));
}

#[tokio::test]
async fn cycles_are_refused_on_patch_and_put_at_any_depth() {
    for backend in BACKENDS {
        let t = TestDaemon::start_with(backend, "").await;
        let a = group(&t, "a", json!([])).await;
        let b = group(&t, "b", json!([{"value": a}])).await;
        let c = group(&t, "c", json!([{"value": b}])).await;
        // Self.
        let r = add(&t, &a, &a).await;
        assert_scim_error(&r, 400, Some("invalidValue"));
        assert!(
            r.body["detail"].as_str().unwrap().contains("itself"),
            "{}",
            r.body
        );
        // Direct: b contains a, a must not contain b.
        let r = add(&t, &a, &b).await;
        assert_scim_error(&r, 400, Some("invalidValue"));
        assert!(
            r.body["detail"].as_str().unwrap().contains("cycle"),
            "{}",
            r.body
        );
        // Three deep: c > b > a, a must not contain c (PATCH and PUT).
        let r = add(&t, &a, &c).await;
        assert_scim_error(&r, 400, Some("invalidValue"));
        let r = t
            .put(
                &format!("/Groups/{a}"),
                &json!({"schemas": [GROUP], "displayName": "a", "members": [{"value": c}]}),
            )
            .await;
        assert_scim_error(&r, 400, Some("invalidValue"));
        let r = t
            .put(
                &format!("/Groups/{a}"),
                &json!({"schemas": [GROUP], "displayName": "a", "members": [{"value": a}]}),
            )
            .await;
        assert_scim_error(&r, 400, Some("invalidValue"));
        // Nothing of the refused changes was stored; a refused PATCH left `a` at version 1.
        let r = t.get(&format!("/Groups/{a}")).await;
        assert!(member_values(&r.body).is_empty(), "{}", r.body);
        assert_eq!(r.body["meta"]["version"], "W/\"1\"");
        // A diamond is no cycle: d contains b and c (c contains b too).
        let d = group(&t, "d", json!([{"value": b}, {"value": c}])).await;
        let r = add(&t, &d, &a).await;
        assert!(r.status.is_success(), "{}", r.body);
        // Once b no longer contains a, a may contain c.
        let r = t
            .patch(
                &format!("/Groups/{b}"),
                &json!({"schemas": [PATCH_OP], "Operations": [
                    {"op": "remove", "path": format!("members[value eq \"{a}\"]")}]}),
            )
            .await;
        assert!(r.status.is_success(), "{}", r.body);
        let r = add(&t, &a, &c).await;
        assert!(r.status.is_success(), "{backend:?}: {}", r.body);
    }
}

#[tokio::test]
async fn a_users_groups_list_direct_and_indirect_groups() {
    let t = TestDaemon::start().await;
    let u = user(&t, "cat").await;
    let inner = group(&t, "inner", json!([{"value": u}])).await;
    let middle = group(&t, "middle", json!([{"value": inner}])).await;
    let outer = group(&t, "outer", json!([{"value": middle}, {"value": u}])).await;
    let r = t.get(&format!("/Users/{u}")).await;
    let mut got: Vec<(String, String)> = r.body["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["value"].as_str().unwrap().to_owned(),
                g["type"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    got.sort();
    let mut want = vec![
        (inner.clone(), "direct".to_owned()),
        (middle.clone(), "indirect".to_owned()),
        (outer.clone(), "direct".to_owned()),
    ];
    want.sort();
    assert_eq!(got, want, "{}", r.body);
    // Deleting the middle group: outer loses it (its membership changes), the user keeps
    // inner and outer, both direct.
    assert_eq!(
        t.delete(&format!("/Groups/{middle}")).await.status,
        StatusCode::NO_CONTENT
    );
    let r = t.get(&format!("/Groups/{outer}")).await;
    assert_eq!(member_values(&r.body), BTreeSet::from([u.clone()]));
    assert_eq!(r.body["meta"]["version"], "W/\"2\"");
    let r = t.get(&format!("/Users/{u}")).await;
    let types: BTreeSet<String> = r.body["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(types, BTreeSet::from(["direct".to_owned()]));
    assert_eq!(r.body["groups"].as_array().unwrap().len(), 2);
}

/// Two PATCHes that each add one edge, on groups no row lock connects, that together would
/// close a cycle (b > c and d > a are there; one adds a > b, the other c > d): both reach the
/// nesting lock (held here by the test), and once it is released exactly one succeeds and the
/// other is refused 400. Without the lock both checks read the edges committed before either
/// and both succeed (the cycle a > b > c > d > a).
#[tokio::test]
async fn two_concurrent_patches_closing_a_cycle_together_never_both_succeed_on_postgres() {
    use diesel::connection::SimpleConnection;
    use diesel::Connection;
    for round in 0..3 {
        let t = TestDaemon::start_with(Backend::Postgres, "").await;
        let a = group(&t, "a", json!([])).await;
        let d = group(&t, "d", json!([{"value": a}])).await;
        let c = group(&t, "c", json!([])).await;
        let b = group(&t, "b", json!([{"value": c}])).await;
        let url = t.store_url.clone();
        let (locked_tx, locked_rx) = std::sync::mpsc::channel::<()>();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let locker = std::thread::spawn(move || {
            let mut conn = diesel::PgConnection::establish(&url).unwrap();
            conn.batch_execute(
                "BEGIN; SELECT pg_advisory_xact_lock(hashtext('scim-sync/nesting'))",
            )
            .unwrap();
            locked_tx.send(()).unwrap();
            release_rx.recv().unwrap();
            conn.batch_execute("COMMIT").unwrap();
        });
        locked_rx.recv().unwrap();
        let first = add(&t, &a, &b);
        let second = add(&t, &c, &d);
        let both = async { tokio::join!(first, second) };
        let mut both = std::pin::pin!(both);
        // Both wait on the lock (neither may answer while it is held).
        let early = tokio::time::timeout(std::time::Duration::from_millis(700), &mut both).await;
        release_tx.send(()).unwrap();
        let answered_early = early.is_ok();
        let (r1, r2) = match early {
            Ok(pair) => pair,
            Err(_) => both.await,
        };
        locker.join().unwrap();
        let ok = [&r1, &r2].iter().filter(|r| r.status.is_success()).count();
        assert_eq!(
            ok, 1,
            "round {round}: {} {} / {} {}",
            r1.status, r1.body, r2.status, r2.body
        );
        let refused = if r1.status.is_success() { &r2 } else { &r1 };
        assert_scim_error(refused, 400, Some("invalidValue"));
        assert!(
            !answered_early,
            "a PATCH adding a nested group answered without the nesting lock"
        );
    }
}
