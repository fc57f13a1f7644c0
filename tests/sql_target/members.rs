//! Foreign membership rows (issue 13 item 5) and O(change) membership (issue 9) on a legacy
//! database, through the real daemon, on PostgreSQL and SQLite: a row scim-sync did not write
//! (an unmanaged user's, added by hand) stays under `foreign_members = "keep"` through
//! membership changes and drift repair and is listed by `verify`; `remove` deletes it at drift
//! repair; rows we wrote and no longer want go under both.

use super::{Flavor, LegacyDb, MAPPING};
use crate::harness::daemon::{Backend, TestDaemon};
use serde_json::{json, Value};

const PATCH: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";

fn config(legacy: &LegacyDb, policy: &str) -> String {
    let sql = MAPPING
        .replace("[users", "[targets.users")
        .replace("[groups", "[targets.groups");
    format!(
        r#"
[scim]
user_extensions = ["{iron}"]
[reconcile]
workers = 2
max_attempts = 3
backoff_base_ms = 60000
backoff_max_ms = 600000
[[targets]]
name = "legacy"
type = "sql"
url = "{url}"
foreign_members = "{policy}"
{sql}
"#,
        url = legacy.url,
        iron = super::IRON,
    )
}

async fn user(t: &TestDaemon, login: &str, emp: u32) -> String {
    let r = t
        .post(
            "/Users",
            &json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                    "userName": login, "externalId": emp.to_string(), "active": true,
                    "name": {"givenName": "G", "familyName": "F"},
                    "emails": [{"value": format!("{login}@example.com"), "primary": true}]}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 201, "{}", r.body);
    r.body["id"].as_str().unwrap().to_owned()
}

async fn patch(t: &TestDaemon, path: &str, ops: Value) {
    let r = t
        .patch(path, &json!({"schemas": [PATCH], "Operations": ops}))
        .await;
    assert!(r.status.is_success(), "{path}: {} {}", r.status, r.body);
}

async fn foreign_rows(flavor: Flavor, policy: &str) {
    let legacy = LegacyDb::new(flavor);
    let t = TestDaemon::start_with(Backend::Sqlite, &config(&legacy, policy)).await;
    let a = user(&t, "sa", 1).await;
    let b = user(&t, "sb", 2).await;
    let c = user(&t, "sc", 3).await;
    let g = t
        .post(
            "/Groups",
            &json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
                    "displayName": "team", "externalId": "t",
                    "members": [{"value": a}, {"value": b}]}),
        )
        .await;
    assert_eq!(g.status.as_u16(), 201, "{}", g.body);
    let g = g.body["id"].as_str().unwrap().to_owned();
    t.d().run_pending_reconciles().await;
    assert_eq!(legacy.members("team"), ["sa", "sb"]);

    // A row for a user scim-sync does not manage, added by hand.
    legacy.exec("INSERT INTO app_user_groups (group_name, login) VALUES ('team', 'stranger')");
    // Membership changes touch only the changed members' rows, under both policies.
    patch(
        &t,
        &format!("/Groups/{g}"),
        json!([{"op": "remove", "path": format!("members[value eq \"{b}\"]")},
               {"op": "add", "path": "members", "value": [{"value": c}]}]),
    )
    .await;
    t.d().run_pending_reconciles().await;
    assert_eq!(
        legacy.members("team"),
        ["sa", "sc", "stranger"],
        "{flavor:?} {policy}"
    );

    // Drift repair reads every row: `keep` keeps the stranger, `remove` deletes it.
    let report = t.d().reconcile_full(None, false, |_, _| {}).await;
    assert_eq!(report.failed, 0, "{report:#?}");
    let report = t.d().verify(None, |_, _| {}).await;
    assert!(report.clean(), "{report:#?}");
    if policy == "keep" {
        assert_eq!(
            legacy.members("team"),
            ["sa", "sc", "stranger"],
            "{flavor:?}"
        );
        assert_eq!(report.foreign.len(), 1, "{report:#?}");
        assert_eq!(
            report.foreign[0].problem,
            scim_sync::reconcile::Problem::Foreign(vec!["stranger".to_owned()])
        );
    } else {
        assert_eq!(legacy.members("team"), ["sa", "sc"], "{flavor:?}");
        assert!(report.foreign.is_empty(), "{report:#?}");
    }

    // A PUT replacing the membership: our rows follow, the stranger's as the policy says.
    let r = t
        .put(
            &format!("/Groups/{g}"),
            &json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
                    "displayName": "team", "externalId": "t",
                    "members": [{"value": b}]}),
        )
        .await;
    assert!(r.status.is_success(), "{}", r.body);
    t.d().run_pending_reconciles().await;
    let mut want = vec!["sb"];
    if policy == "keep" {
        want.push("stranger");
    }
    assert_eq!(legacy.members("team"), want, "{flavor:?} {policy}");
    // A user deleted in the IdP leaves the group, whatever the policy.
    let r = t.delete(&format!("/Users/{b}")).await;
    assert_eq!(r.status.as_u16(), 204, "{}", r.body);
    t.d().run_pending_reconciles().await;
    want.retain(|m| *m != "sb");
    assert_eq!(legacy.members("team"), want, "{flavor:?} {policy}");
    assert!(t.d().store.dead_letters(None).await.unwrap().is_empty());
}

#[tokio::test]
async fn postgres_foreign_membership_rows_are_kept_under_keep() {
    foreign_rows(Flavor::Postgres, "keep").await;
}

#[tokio::test]
async fn postgres_foreign_membership_rows_are_removed_under_remove() {
    foreign_rows(Flavor::Postgres, "remove").await;
}

#[tokio::test]
async fn sqlite_foreign_membership_rows_are_kept_under_keep() {
    foreign_rows(Flavor::Sqlite, "keep").await;
}

#[tokio::test]
async fn sqlite_foreign_membership_rows_are_removed_under_remove() {
    foreign_rows(Flavor::Sqlite, "remove").await;
}

/// Nested groups (issue 11) into a SQL join table, flattened (the default): the parent's rows
/// are the users reached through its child group, and follow a change of the child and its
/// deletion; the child group's own key never becomes a member row.
async fn nested_flatten(flavor: Flavor) {
    let legacy = LegacyDb::new(flavor);
    let t = TestDaemon::start_with(Backend::Sqlite, &config(&legacy, "keep")).await;
    let a = user(&t, "na", 1).await;
    let b = user(&t, "nb", 2).await;
    let c = user(&t, "nc", 3).await;
    let group = |name: &'static str, members: Value| {
        let t = &t;
        async move {
            let r = t
                .post(
                    "/Groups",
                    &json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
                            "displayName": name, "members": members}),
                )
                .await;
            assert_eq!(r.status.as_u16(), 201, "{}", r.body);
            r.body["id"].as_str().unwrap().to_owned()
        }
    };
    let child = group("kids", json!([{"value": a}])).await;
    let _parent = group(
        "all",
        json!([{"value": b}, {"value": child, "type": "Group"}]),
    )
    .await;
    t.d().run_pending_reconciles().await;
    assert_eq!(legacy.members("kids"), ["na"]);
    assert_eq!(legacy.members("all"), ["na", "nb"], "{flavor:?}");
    patch(
        &t,
        &format!("/Groups/{child}"),
        json!([{"op": "add", "path": "members", "value": [{"value": c}]}]),
    )
    .await;
    t.d().run_pending_reconciles().await;
    assert_eq!(legacy.members("all"), ["na", "nb", "nc"], "{flavor:?}");
    let r = t.delete(&format!("/Groups/{child}")).await;
    assert_eq!(r.status.as_u16(), 204, "{}", r.body);
    t.d().run_pending_reconciles().await;
    assert_eq!(legacy.members("all"), ["nb"], "{flavor:?}");
    let report = t.d().verify(None, |_, _| {}).await;
    assert!(report.clean(), "{report:#?}");
    assert!(t.d().store.dead_letters(None).await.unwrap().is_empty());
}

#[tokio::test]
async fn sqlite_nested_groups_flatten_into_the_join_table() {
    nested_flatten(Flavor::Sqlite).await;
}

#[tokio::test]
async fn postgres_nested_groups_flatten_into_the_join_table() {
    nested_flatten(Flavor::Postgres).await;
}
