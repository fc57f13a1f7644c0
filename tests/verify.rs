//! `scim-sync verify`: clean after convergence (exit 0, also as a library call), and a drift
//! made by hand (an attribute edited, an entry deleted, a member value added, a stray entry
//! under our bind DN) makes it exit non-zero naming each difference, without repairing any.
//! Then drift repair fixes what it may and verify agrees again.

use crate::harness::daemon::{Backend, TestDaemon};
use crate::harness::slapd::Slapd;
use serde_json::{json, Value};

const CORE: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
const GROUP: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
const PEOPLE: &str = "ou=People,dc=example,dc=com";
const GROUPS: &str = "ou=Groups,dc=example,dc=com";

fn target_toml(slapd: &Slapd, pw: &std::path::Path) -> String {
    format!(
        r#"
[reconcile]
workers = 1
[[targets]]
name = "corp"
type = "ldap"
url = "{url}"
bind_dn = "{bind}"
bind_password_file = "{pw}"
[targets.users]
dn = "uid={{userName}},{PEOPLE}"
object_classes = ["top", "person", "organizationalPerson", "inetOrgPerson"]
[targets.users.attributes]
cn = "{{name.givenName}} {{name.familyName}}"
sn = "name.familyName"
title = "title"
[targets.groups]
dn = "cn={{displayName}},{GROUPS}"
object_classes = ["groupOfNames"]
placeholder_member = "cn=nobody,dc=example,dc=com"
"#,
        url = slapd.uri(),
        bind = slapd.bind_dn(),
        pw = pw.display(),
    )
}

fn user(name: &str) -> Value {
    json!({"schemas": [CORE], "userName": name,
           "name": {"givenName": "G", "familyName": format!("F-{name}")}, "title": "Original"})
}

fn verify_cli(config: &std::path::Path) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_scim-sync"))
        .arg("--config")
        .arg(config)
        .arg("verify")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[tokio::test]
async fn verify_is_clean_after_convergence_and_names_each_hand_made_drift() {
    let slapd = Slapd::start().await;
    let secrets = tempfile::tempdir().unwrap();
    let pw = secrets.path().join("ldap.pw");
    std::fs::write(&pw, format!("{}\n", slapd.password())).unwrap();
    // `remove`: the member value added by hand below is drift to repair, not a foreign value
    // to keep (`reconcile::members::foreign_member_values_are_kept_under_keep_*`).
    let toml = target_toml(&slapd, &pw).replace(
        "type = \"ldap\"\n",
        "type = \"ldap\"\nforeign_members = \"remove\"\n",
    );
    assert!(toml.contains("foreign_members"), "{toml}");
    let t = TestDaemon::start_with(Backend::Sqlite, &toml).await;
    let mut ids = Vec::new();
    for name in ["ann", "bob", "cy"] {
        let r = t.post("/Users", &user(name)).await;
        assert_eq!(r.status.as_u16(), 201, "{}", r.body);
        ids.push(r.body["id"].as_str().unwrap().to_owned());
    }
    let r = t
        .post(
            "/Groups",
            &json!({"schemas": [GROUP], "displayName": "staff",
                    "members": [{"value": ids[0]}, {"value": ids[1]}]}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 201, "{}", r.body);
    t.d().run_pending_reconciles().await;

    let report = t.d().verify(None, |_, _| {}).await;
    assert!(report.clean(), "{report:?}");
    assert_eq!(report.checked, 4);
    let (code, out) = verify_cli(&t.config_path);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("Verified 4 resource(s): 0 difference(s); the targets agree"),
        "{out}"
    );

    // Drift by hand: an attribute, an entry, a member value, a stray entry of ours.
    let ann = format!("uid=ann,{PEOPLE}");
    let bob = format!("uid=bob,{PEOPLE}");
    let cy = format!("uid=cy,{PEOPLE}");
    let staff = format!("cn=staff,{GROUPS}");
    let stray = format!("uid=stray,{PEOPLE}");
    let mut ldap = slapd.admin().await;
    ldap.modify(
        &ann,
        vec![ldap3::Mod::Replace("title", ["Hand edit"].into())],
    )
    .await
    .unwrap()
    .success()
    .unwrap();
    ldap.delete(&bob).await.unwrap().success().unwrap();
    ldap.modify(
        &staff,
        vec![ldap3::Mod::Add("member", [cy.as_str()].into())],
    )
    .await
    .unwrap()
    .success()
    .unwrap();
    ldap.add(
        &stray,
        vec![
            ("objectClass", ["inetOrgPerson"].into()),
            ("uid", ["stray"].into()),
            ("cn", ["Stray"].into()),
            ("sn", ["Stray"].into()),
        ],
    )
    .await
    .unwrap()
    .success()
    .unwrap();

    let (code, out) = verify_cli(&t.config_path);
    assert_eq!(code, 1, "{out}");
    let must = [
        format!(
            "corp User {} {ann}: title: want [\"Original\"], have [\"Hand edit\"]",
            ids[0]
        ),
        format!("corp User {} {bob}: missing", ids[1]),
        // bob's entry is gone, so the group's wanted member is there (the store's spelling)
        // and cy's is the extra value.
        format!("{staff}: member: want [], have [\"{cy}\"]"),
        format!("corp {stray}: extra"),
    ];
    for line in &must {
        assert!(out.contains(line.as_str()), "no {line:?} in:\n{out}");
    }
    assert!(
        out.contains("Verified 4 resource(s): 4 difference(s); differences found."),
        "{out}"
    );
    // Verify changed nothing.
    let title = slapd.entry(&ann, &["title"]).await.unwrap();
    assert!(title.contains(&("title".to_owned(), vec!["Hand edit".to_owned()])));
    assert!(slapd.entry(&bob, &["uid"]).await.is_none());

    // Drift repair fixes the managed entries; the stray one is not ours to delete.
    let repaired = t.d().reconcile_full(None, false, |_, _| {}).await;
    assert_eq!(repaired.failed, 0, "{repaired:?}");
    let report = t.d().verify(None, |_, _| {}).await;
    assert_eq!(report.found, 1, "{report:?}");
    assert_eq!(report.differences[0].key, stray);
    ldap.delete(&stray).await.unwrap().success().unwrap();
    let (code, out) = verify_cli(&t.config_path);
    assert_eq!(code, 0, "{out}");
}

/// Issue 8's first reproduction: two users whose DN template (`cn={displayName}`) renders the
/// same DN. Whatever the daemon does with the second (today it merges both into one entry;
/// fixed, the second is a conflict), verify must not call the directory clean: two states at
/// one key are "held twice", a resource that cannot have its entry is "cannot compare".
#[tokio::test]
async fn verify_flags_two_users_whose_dn_renders_the_same() {
    let slapd = Slapd::start().await;
    let secrets = tempfile::tempdir().unwrap();
    let pw = secrets.path().join("ldap.pw");
    std::fs::write(&pw, format!("{}\n", slapd.password())).unwrap();
    let toml = target_toml(&slapd, &pw)
        .replace(
            &format!("dn = \"uid={{userName}},{PEOPLE}\""),
            &format!("dn = \"cn={{displayName}},{PEOPLE}\""),
        )
        .replace(
            "cn = \"{name.givenName} {name.familyName}\"",
            "cn = \"displayName\"",
        );
    assert!(toml.contains("cn={displayName}") && toml.contains("cn = \"displayName\""));
    let t = TestDaemon::start_with(Backend::Sqlite, &toml).await;
    let mut ids = Vec::new();
    for name in ["js1", "js2"] {
        let mut body = user(name);
        body["displayName"] = json!("John Smith");
        let r = t.post("/Users", &body).await;
        assert_eq!(r.status.as_u16(), 201, "{}", r.body);
        ids.push(r.body["id"].as_str().unwrap().to_owned());
        t.d().run_pending_reconciles().await;
    }
    let report = t.d().verify(None, |_, _| {}).await;
    assert!(!report.clean(), "{report:?}");
    let dn = format!("cn=john smith,{}", PEOPLE.to_ascii_lowercase());
    let named = report.differences.iter().any(|d| match &d.problem {
        scim_sync::reconcile::Problem::HeldTwice { by } => {
            d.key == dn
                && by.iter().any(|b| b.contains(&ids[0]))
                && by.iter().any(|b| b.contains(&ids[1]))
        }
        scim_sync::reconcile::Problem::Failed(e) => {
            d.resource.as_ref().is_some_and(|(_, id)| id == &ids[1])
                && e.to_ascii_lowercase().contains("cn=john smith")
        }
        _ => false,
    });
    assert!(named, "{report:#?}");
}

/// An SQL target: clean after convergence; a column edited by hand and a deleted row each
/// show as the statement an apply would run, naming the row key.
#[tokio::test]
async fn verify_names_the_rows_of_an_sql_target_that_differ() {
    use crate::sql_target::{Flavor, LegacyDb, MAPPING};
    let db = LegacyDb::new(Flavor::Sqlite);
    let target = format!(
        // MAPPING reads the ironclad extension, which must be declared to be mapped.
        "[scim]\nuser_extensions = [\"urn:ietf:params:scim:schemas:extension:ironclad:2.0:User\"]\n[[targets]]\nname = \"legacy\"\ntype = \"sql\"\nurl = \"{}\"\n{}",
        db.url,
        MAPPING
            .replace("[users", "[targets.users")
            .replace("[groups", "[targets.groups")
    );
    let t = TestDaemon::start_with(Backend::Sqlite, &target).await;
    for name in ["dora", "eve"] {
        let r = t.post("/Users", &user(name)).await;
        assert_eq!(r.status.as_u16(), 201, "{}", r.body);
    }
    t.d().run_pending_reconciles().await;
    let report = t.d().verify(None, |_, _| {}).await;
    assert!(report.clean(), "{report:#?}");

    db.exec(
        "UPDATE app_users SET last_name = 'Hand edit' WHERE login = 'dora';
         DELETE FROM app_users WHERE login = 'eve';",
    );
    let (code, out) = verify_cli(&t.config_path);
    assert_eq!(code, 1, "{out}");
    let line = |login: &str| {
        out.lines()
            .find(|l| l.contains(&format!(" {login}: differs: ")))
            .unwrap_or_else(|| panic!("no difference for {login} in:\n{out}"))
            .to_owned()
    };
    assert!(line("dora").contains("last_name"), "{out}");
    assert!(line("eve").to_ascii_uppercase().contains("INSERT"), "{out}");
}

/// A create intent holds its DN only while its resource is live: an entry our bind DN added at
/// the intended DN of a since-deleted user is reported extra, not excused as an interrupted
/// create. (Played with the workers held off, so the daemon's own handling does not matter.)
#[tokio::test]
async fn verify_reports_an_entry_at_a_deleted_users_create_intent_as_extra() {
    let slapd = Slapd::start().await;
    let secrets = tempfile::tempdir().unwrap();
    let pw = secrets.path().join("ldap.pw");
    std::fs::write(&pw, format!("{}\n", slapd.password())).unwrap();
    let t = TestDaemon::start_with(Backend::Sqlite, &target_toml(&slapd, &pw)).await;
    let _paused = t.d().pause_reconcilers().await.unwrap();
    let r = t.post("/Users", &user("ghost")).await;
    assert_eq!(r.status.as_u16(), 201, "{}", r.body);
    let id = r.body["id"].as_str().unwrap().to_owned();
    let dn = format!("uid=ghost,{PEOPLE}");
    let now = scim_sync::http::server::now_ms();
    t.d()
        .store
        .record_intent(scim_sync::store::TargetState {
            target: "corp".into(),
            resource_type: scim_sync::scim::resource::ResourceType::User,
            resource_id: id.clone(),
            applied_version: 0,
            target_key: None,
            extra: Some(json!({"creating": dn, "since_ms": now}).into()),
            updated_ms: now,
        })
        .await
        .unwrap();
    let mut ldap = slapd.admin().await;
    ldap.add(
        &dn,
        vec![
            ("objectClass", ["inetOrgPerson"].into()),
            ("uid", ["ghost"].into()),
            ("cn", ["G F"].into()),
            ("sn", ["F"].into()),
        ],
    )
    .await
    .unwrap()
    .success()
    .unwrap();
    // Live: the entry is its interrupted create (unrecorded), not a stray.
    let report = t.d().verify(None, |_, _| {}).await;
    assert!(
        report
            .differences
            .iter()
            .all(|d| d.problem != scim_sync::reconcile::Problem::Extra),
        "{report:#?}"
    );
    let r = t.delete(&format!("/Users/{id}")).await;
    assert_eq!(r.status.as_u16(), 204, "{}", r.body);
    let report = t.d().verify(None, |_, _| {}).await;
    assert!(
        report
            .differences
            .iter()
            .any(|d| d.key == dn && d.problem == scim_sync::reconcile::Problem::Extra),
        "{report:#?}"
    );
}
