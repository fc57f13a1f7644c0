//! Fan-out: one SCIM lifecycle through the real daemon feeds slapd and a legacy PostgreSQL
//! database together. An LDAP outage delays only LDAP: SQL converges, LDAP rows stay pending
//! (no dead letters), and both converge once slapd is back.

use super::{Flavor, LegacyDb, MAPPING};
use crate::harness::daemon::{Backend, TestDaemon};
use crate::harness::slapd::Slapd;
use serde_json::json;

const PATCH: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";

fn config(slapd: &Slapd, pw: &std::path::Path, legacy: &LegacyDb) -> String {
    let sql = MAPPING
        .replace("[users", "[targets.users")
        .replace("[groups", "[targets.groups");
    format!(
        r#"
[scim]
# MAPPING reads the ironclad extension.
user_extensions = ["{iron}"]
[reconcile]
# Several workers per target: a group applied while its member's create is in flight must
# not lose the member's "membership" re-queue (the outbox generation column guards it).
workers = 4
max_attempts = 3
backoff_base_ms = 60000
backoff_max_ms = 600000
[[targets]]
name = "corp"
type = "ldap"
url = "{url}"
bind_dn = "{bind}"
bind_password_file = "{pw}"
[targets.users]
dn = "uid={{userName}},ou=People,dc=example,dc=com"
object_classes = ["top", "person", "organizationalPerson", "inetOrgPerson"]
[targets.users.attributes]
cn = "{{name.givenName}} {{name.familyName}}"
sn = "name.familyName"
givenName = "name.givenName"
[targets.groups]
dn = "cn={{displayName}},ou=Groups,dc=example,dc=com"
object_classes = ["groupOfNames"]
placeholder_member = "cn=nobody,dc=example,dc=com"
[[targets]]
name = "legacy"
type = "sql"
url = "{legacy_url}"
{sql}
"#,
        url = slapd.uri(),
        bind = slapd.bind_dn(),
        pw = pw.display(),
        legacy_url = legacy.url,
        iron = super::IRON,
    )
}

#[tokio::test]
async fn one_lifecycle_feeds_ldap_and_sql_and_an_ldap_outage_delays_only_ldap() {
    let mut slapd = Slapd::start().await;
    let legacy = LegacyDb::new(Flavor::Postgres);
    let secrets = tempfile::tempdir().unwrap();
    let pw = secrets.path().join("ldap.pw");
    std::fs::write(&pw, slapd.password()).unwrap();
    let t = TestDaemon::start_with(Backend::Sqlite, &config(&slapd, &pw, &legacy)).await;
    let status = |t: &TestDaemon| {
        let store = t.d().store.clone();
        async move {
            store
                .status(&["corp".to_owned(), "legacy".to_owned()])
                .await
                .unwrap()
                .into_iter()
                .map(|s| (s.pending, s.dead))
                .collect::<Vec<_>>()
        }
    };
    let dn = "uid=fan,ou=People,dc=example,dc=com";

    let r = t
        .post(
            "/Users",
            &json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                    "userName": "fan", "externalId": "77", "active": true,
                    "name": {"givenName": "Fay", "familyName": "Ng"},
                    "emails": [{"value": "fan@example.com", "primary": true}]}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 201, "{}", r.body);
    let id = r.body["id"].as_str().unwrap().to_owned();
    let g = t
        .post(
            "/Groups",
            &json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
                    "displayName": "crew", "members": [{"value": id}]}),
        )
        .await;
    assert_eq!(g.status.as_u16(), 201, "{}", g.body);
    t.d().run_pending_reconciles().await;
    assert!(slapd.entry(dn, &["cn"]).await.is_some());
    assert_eq!(legacy.user("fan", "emp_no").as_deref(), Some("77"));
    assert_eq!(legacy.members("crew"), ["fan"]);
    assert_eq!(status(&t).await, [(0, 0), (0, 0)]);

    // LDAP down: SQL converges, LDAP stays pending, nothing is a dead letter.
    slapd.stop().await;
    let r = t
        .patch(
            &format!("/Users/{id}"),
            &json!({"schemas": [PATCH], "Operations": [
                {"op": "replace", "path": "name.givenName", "value": "Faye"}]}),
        )
        .await;
    assert!(r.status.is_success(), "{}", r.body);
    t.d().run_pending_reconciles().await;
    assert_eq!(legacy.user("fan", "first_name").as_deref(), Some("Faye"));
    let st = status(&t).await;
    assert!(st[0].0 > 0 && st[0].1 == 0, "{st:?}");
    assert_eq!(st[1], (0, 0));
    assert!(t.d().store.dead_letters(None).await.unwrap().is_empty());

    // Back up: LDAP converges too.
    slapd.start_again().await;
    t.d().run_pending_reconciles().await;
    let e = slapd.entry(dn, &["givenName"]).await.unwrap();
    assert!(format!("{e:?}").contains("Faye"), "{e:?}");
    assert_eq!(status(&t).await, [(0, 0), (0, 0)]);

    // Deactivate, then delete: both targets follow.
    let r = t
        .patch(
            &format!("/Users/{id}"),
            &json!({"schemas": [PATCH], "Operations": [
                {"op": "replace", "path": "active", "value": false}]}),
        )
        .await;
    assert!(r.status.is_success(), "{}", r.body);
    t.d().run_pending_reconciles().await;
    assert_eq!(legacy.user("fan", "enabled").as_deref(), Some("N"));
    let r = t.delete(&format!("/Users/{id}")).await;
    assert_eq!(r.status.as_u16(), 204, "{}", r.body);
    t.d().run_pending_reconciles().await;
    assert!(!legacy.has_user("fan"));
    assert!(slapd.entry(dn, &["cn"]).await.is_none());
    assert_eq!(status(&t).await, [(0, 0), (0, 0)]);
}
