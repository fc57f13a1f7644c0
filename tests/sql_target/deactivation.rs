//! `users.deactivate.remove_from_groups` in a SQL target, through the real daemon (issue 13,
//! item 6): an inactive user's membership rows are removed from every group and put back on
//! reactivation; without the option an inactive user stays a member.

use super::{Flavor, LegacyDb, IRON, MAPPING};
use crate::harness::daemon::{Backend, TestDaemon};
use serde_json::json;

const PATCH: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";

fn config(legacy: &LegacyDb, remove_from_groups: bool) -> String {
    let sql = MAPPING
        .replace("[users", "[targets.users")
        .replace("[groups", "[targets.groups")
        .replacen(
            "active_value = \"Y\"",
            &format!("active_value = \"Y\"\nremove_from_groups = {remove_from_groups}"),
            1,
        );
    assert!(sql.contains("remove_from_groups"), "{sql}");
    format!(
        "[scim]\nuser_extensions = [\"{IRON}\"]\n[[targets]]\nname = \"legacy\"\ntype = \"sql\"\nurl = \"{}\"\n{sql}",
        legacy.url
    )
}

async fn set_active(t: &TestDaemon, id: &str, active: bool) {
    let r = t
        .patch(
            &format!("/Users/{id}"),
            &json!({"schemas": [PATCH], "Operations": [
                {"op": "replace", "path": "active", "value": active}]}),
        )
        .await;
    assert!(r.status.is_success(), "{}", r.body);
    t.d().run_pending_reconciles().await;
}

async fn membership_across_a_deactivation(remove_from_groups: bool) -> Vec<Vec<String>> {
    let legacy = LegacyDb::new(Flavor::Sqlite);
    let t = TestDaemon::start_with(Backend::Sqlite, &config(&legacy, remove_from_groups)).await;
    let mut ids = Vec::new();
    for name in ["ann", "bob"] {
        let r = t
            .post(
                "/Users",
                &json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                        "userName": name, "active": true,
                        "name": {"givenName": name, "familyName": "Ng"}}),
            )
            .await;
        assert_eq!(r.status.as_u16(), 201, "{}", r.body);
        ids.push(r.body["id"].as_str().unwrap().to_owned());
    }
    let g = t
        .post(
            "/Groups",
            &json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
                    "displayName": "crew",
                    "members": [{"value": ids[0]}, {"value": ids[1]}]}),
        )
        .await;
    assert_eq!(g.status.as_u16(), 201, "{}", g.body);
    t.d().run_pending_reconciles().await;
    let mut seen = vec![legacy.members("crew")];
    set_active(&t, &ids[0], false).await;
    assert_eq!(legacy.user("ann", "enabled").as_deref(), Some("N"));
    seen.push(legacy.members("crew"));
    set_active(&t, &ids[0], true).await;
    assert_eq!(legacy.user("ann", "enabled").as_deref(), Some("Y"));
    seen.push(legacy.members("crew"));
    assert!(t.d().store.dead_letters(None).await.unwrap().is_empty());
    seen
}

#[tokio::test]
async fn remove_from_groups_drops_an_inactive_users_membership_rows_and_restores_them() {
    assert_eq!(
        membership_across_a_deactivation(true).await,
        [vec!["ann", "bob"], vec!["bob"], vec!["ann", "bob"]]
    );
}

#[tokio::test]
async fn without_remove_from_groups_an_inactive_user_stays_a_member() {
    assert_eq!(
        membership_across_a_deactivation(false).await,
        [vec!["ann", "bob"], vec!["ann", "bob"], vec!["ann", "bob"]]
    );
}
