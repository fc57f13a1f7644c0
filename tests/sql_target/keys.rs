//! Target keys in a SQL target, through the real daemon: two users whose row key renders the
//! same never share one row (even under `on_existing = "adopt"`, and with MariaDB's
//! case-insensitive collation), and a row we did not write stays a conflict.

use super::{Flavor, LegacyDb, MAPPING};
use crate::harness::daemon::{Backend, TestDaemon};
use serde_json::{json, Value};

/// The users' row key is their `displayName` (not unique in SCIM).
fn config(legacy: &LegacyDb, on_existing: &str) -> String {
    let sql = MAPPING
        .replacen("key = \"userName\"", "key = \"displayName\"", 1)
        .replace("[users", "[targets.users")
        .replace("[groups", "[targets.groups");
    format!(
        r#"
[scim]
# MAPPING reads the ironclad extension.
user_extensions = ["{iron}"]
[reconcile]
max_attempts = 3
backoff_base_ms = 60000
backoff_max_ms = 600000
[[targets]]
name = "legacy"
type = "sql"
url = "{url}"
on_existing = "{on_existing}"
{sql}
"#,
        url = legacy.url,
        iron = super::IRON,
    )
}

fn body(user_name: &str, display: &str) -> Value {
    json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
        "userName": user_name,
        "name": {"givenName": "Babs", "familyName": user_name},
        "displayName": display,
        "emails": [{"value": format!("{user_name}@example.com"), "primary": true}],
        "active": true,
    })
}

async fn create(t: &TestDaemon, body: &Value) -> String {
    let r = t.post("/Users", body).await;
    assert_eq!(r.status.as_u16(), 201, "{}", r.body);
    r.body["id"].as_str().unwrap().to_owned()
}

async fn drain(t: &TestDaemon) {
    for _ in 0..3 {
        t.d().run_pending_reconciles().await;
    }
}

async fn shared_key(flavor: Flavor, second_display: &str) {
    let legacy = LegacyDb::new(flavor);
    let t = TestDaemon::start_with(Backend::Sqlite, &config(&legacy, "adopt")).await;
    let first = create(&t, &body("babs1", "Babs Jensen")).await;
    t.d().run_pending_reconciles().await;
    assert_eq!(
        legacy.user("Babs Jensen", "email").as_deref(),
        Some("babs1@example.com")
    );
    let second = create(&t, &body("babs2", second_display)).await;
    drain(&t).await;
    // The first row is untouched; the second user is a conflict naming both.
    assert_eq!(
        legacy.user("Babs Jensen", "email").as_deref(),
        Some("babs1@example.com")
    );
    assert_eq!(
        legacy.user("Babs Jensen", "last_name").as_deref(),
        Some("babs1")
    );
    let dead = t.d().store.dead_letters(Some("legacy")).await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].resource_id, second);
    let text = dead[0].last_error.as_deref().unwrap_or("");
    for word in [first.as_str(), "babs1", second.as_str(), "babs2"] {
        assert!(text.contains(word), "{word} not in {text:?}");
    }
}

#[tokio::test]
async fn sqlite_users_whose_row_key_renders_the_same_never_share_a_row() {
    shared_key(Flavor::Sqlite, "Babs Jensen").await;
}

/// MariaDB's default collation compares `babs JENSEN` and `Babs Jensen` as one key.
#[tokio::test]
async fn mariadb_users_whose_row_key_compares_the_same_never_share_a_row() {
    shared_key(Flavor::Mariadb, "babs JENSEN").await;
}

#[tokio::test]
async fn a_row_we_did_not_write_stays_a_conflict() {
    let legacy = LegacyDb::new(Flavor::Sqlite);
    legacy.exec(
        "INSERT INTO app_users (login, email, enabled) VALUES ('Legacy Person', 'old@example.com', 'Y')",
    );
    let t = TestDaemon::start_with(Backend::Sqlite, &config(&legacy, "conflict")).await;
    let id = create(&t, &body("legacy1", "Legacy Person")).await;
    drain(&t).await;
    let dead = t.d().store.dead_letters(Some("legacy")).await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].resource_id, id);
    assert!(
        dead[0]
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("not managed"),
        "{:?}",
        dead[0].last_error
    );
    assert_eq!(
        legacy.user("Legacy Person", "email").as_deref(),
        Some("old@example.com")
    );
}
