//! The reconciler end to end: SCIM pushes into the real daemon, `run_pending_reconciles()`
//! (no sleeps), and a real slapd. Okta lifecycle, coalescing, dependants (group members and
//! manager references waiting for their user), outages, dead letters, drift repair, status.

mod batches;
mod claims;
mod members;
mod nested;

use crate::harness::daemon::{Backend, TestDaemon, BACKENDS};
use crate::harness::slapd::Slapd;
use serde_json::{json, Value};

const CORE: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
const ENT: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
const IRON: &str = "urn:ietf:params:scim:schemas:extension:ironclad:2.0:User";
const PATCH: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";
const PEOPLE: &str = "ou=People,dc=example,dc=com";
const GROUPS: &str = "ou=Groups,dc=example,dc=com";

/// A daemon with one LDAP target `corp` over a fresh slapd.
struct Env {
    t: TestDaemon,
    slapd: Slapd,
    _secrets: tempfile::TempDir,
}

fn target_toml(slapd: &Slapd, password_file: &std::path::Path, groups_parent: &str) -> String {
    format!(
        r#"
[scim]
user_extensions = ["{IRON}"]
password_sync = "ssha512"
[reconcile]
workers = 2
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
dn = "uid={{userName}},{PEOPLE}"
object_classes = ["top", "person", "organizationalPerson", "inetOrgPerson"]
password = "sync"
[targets.users.attributes]
cn = "{{name.givenName}} {{name.familyName}}"
sn = "name.familyName"
givenName = "name.givenName"
mail = {{ from = "emails[primary eq true].value", transform = ["lower"] }}
title = "title"
departmentNumber = "{ENT}:department"
employeeType = "{IRON}:managementLevel"
manager = {{ reference = "{ENT}:manager.value", by = "id" }}
[targets.users.deactivate]
policy = "disable"
set = {{ pwdAccountLockedTime = "000001010000Z" }}
remove_from_groups = true
[targets.groups]
dn = "cn={{displayName}},{groups_parent}"
object_classes = ["groupOfNames"]
placeholder_member = "cn=nobody,dc=example,dc=com"
"#,
        url = slapd.uri(),
        bind = slapd.bind_dn(),
        pw = password_file.display(),
    )
}

impl Env {
    async fn start() -> Env {
        Self::start_with_groups_in(GROUPS).await
    }

    async fn start_with_groups_in(groups_parent: &str) -> Env {
        Self::start_on(Backend::Sqlite, groups_parent).await
    }

    async fn start_on(backend: Backend, groups_parent: &str) -> Env {
        Self::start_edited(backend, groups_parent, |toml| toml).await
    }

    /// Like `start_on`, with the target's TOML edited first.
    async fn start_edited(
        backend: Backend,
        groups_parent: &str,
        edit: impl FnOnce(String) -> String,
    ) -> Env {
        let slapd = Slapd::start().await;
        let secrets = tempfile::tempdir().unwrap();
        let pw = secrets.path().join("ldap.pw");
        std::fs::write(&pw, format!("{}\n", slapd.password())).unwrap();
        let toml = edit(target_toml(&slapd, &pw, groups_parent));
        let t = TestDaemon::start_with(backend, &toml).await;
        Env {
            t,
            slapd,
            _secrets: secrets,
        }
    }

    async fn run(&self) -> usize {
        self.t.d().run_pending_reconciles().await
    }

    async fn create_user(&self, body: &Value) -> String {
        let r = self.t.post("/Users", body).await;
        assert_eq!(r.status.as_u16(), 201, "{}", r.body);
        r.body["id"].as_str().unwrap().to_owned()
    }

    async fn create_group(&self, name: &str, members: &[&str]) -> String {
        let members: Vec<Value> = members.iter().map(|m| json!({"value": m})).collect();
        let r = self
            .t
            .post(
                "/Groups",
                &json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
                        "displayName": name, "members": members}),
            )
            .await;
        assert_eq!(r.status.as_u16(), 201, "{}", r.body);
        r.body["id"].as_str().unwrap().to_owned()
    }

    async fn patch(&self, path: &str, ops: Value) {
        let r = self
            .t
            .patch(path, &json!({"schemas": [PATCH], "Operations": ops}))
            .await;
        assert!(r.status.is_success(), "{path}: {} {}", r.status, r.body);
    }

    async fn attr(&self, dn: &str, name: &str) -> Option<Vec<String>> {
        let e = self.slapd.entry(dn, &["*", "pwdAccountLockedTime"]).await?;
        Some(
            e.into_iter()
                .find(|(k, _)| k == &name.to_ascii_lowercase())
                .map(|(_, v)| v)
                .unwrap_or_default(),
        )
    }

    async fn exists(&self, dn: &str) -> bool {
        self.slapd.entry(dn, &["objectClass"]).await.is_some()
    }

    async fn dead(&self) -> Vec<scim_sync::store::OutboxItem> {
        self.t.d().store.dead_letters(Some("corp")).await.unwrap()
    }

    async fn status(&self) -> scim_sync::store::TargetStatus {
        self.t
            .d()
            .store
            .status(&["corp".to_owned()])
            .await
            .unwrap()
            .remove(0)
    }
}

/// A second reconciler over the daemon's store and config: "another worker" (claims, leases
/// and the O(change) tests).
fn another_worker(env: &Env) -> scim_sync::reconcile::Reconciler {
    let settings = scim_sync::daemon::load_settings(&env.t.config_path).unwrap();
    let schemas = scim_sync::mapping::Schemas::new(&settings.raw.scim.user_extensions);
    let targets = settings
        .raw
        .targets
        .iter()
        .enumerate()
        .map(|(i, raw)| {
            let (map, target) = scim_sync::targets::build_with(raw, i, &schemas).unwrap();
            scim_sync::reconcile::TargetRuntime::new(map, target)
        })
        .collect();
    scim_sync::reconcile::Reconciler::new(
        env.t.d().store.clone(),
        settings.reconcile.clone(),
        targets,
        std::sync::Arc::new(tokio::sync::Notify::new()),
        scim_sync::health::Health::default(),
    )
}

fn user_dn(user_name: &str) -> String {
    format!("uid={user_name},{PEOPLE}")
}

fn group_dn(name: &str) -> String {
    format!("cn={name},{GROUPS}")
}

fn okta_user(name: &str, title: &str) -> Value {
    json!({
        "schemas": [CORE, ENT, IRON],
        "userName": name,
        "name": {"givenName": "Given", "familyName": format!("Family-{name}")},
        "emails": [{"primary": true, "value": format!("{name}@Example.com"), "type": "work"}],
        "displayName": format!("Given {name}"),
        "externalId": format!("00u-{name}"),
        "active": true,
        "title": title,
        ENT: {"department": "R&D"},
        IRON: {"managementLevel": "L2"},
    })
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[tokio::test]
async fn okta_lifecycle_end_to_end_into_slapd() {
    let env = Env::start().await;
    let names = ["ann", "bob", "cat", "dan", "eve"];
    let mut ids = Vec::new();
    for n in names {
        let mut body = okta_user(n, "Engineer");
        body["password"] = json!(format!("Pw-{n}-secret1"));
        ids.push(env.create_user(&body).await);
    }
    // Background workers may apply some of these first: the count is not asserted.
    env.run().await;
    let ann = user_dn("ann");
    assert_eq!(env.attr(&ann, "cn").await.unwrap(), ["Given Family-ann"]);
    assert_eq!(env.attr(&ann, "mail").await.unwrap(), ["ann@example.com"]);
    assert_eq!(env.attr(&ann, "title").await.unwrap(), ["Engineer"]);
    assert_eq!(env.attr(&ann, "departmentNumber").await.unwrap(), ["R&D"]);
    assert_eq!(env.attr(&ann, "employeeType").await.unwrap(), ["L2"]);

    // PUT with a new title: only that attribute changes.
    let before = env.slapd.dump(PEOPLE).await;
    let r = env
        .t
        .put(&format!("/Users/{}", ids[0]), &okta_user("ann", "Manager"))
        .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    env.run().await;
    let after = env.slapd.dump(PEOPLE).await;
    let blocks = |d: &str| -> Vec<String> { d.split("\n\n").map(str::to_owned).collect() };
    let (before, after) = (blocks(&before), blocks(&after));
    assert_eq!(before.len(), after.len());
    let changed: Vec<(&String, &String)> =
        before.iter().zip(&after).filter(|(b, a)| b != a).collect();
    assert_eq!(changed.len(), 1, "{changed:?}");
    let (b, a) = changed[0];
    assert_eq!(b.replace("title: Engineer", "title: Manager"), *a);

    // Group push with members, then membership add/remove via PATCH.
    let gid = env
        .create_group("Engineering", &[&ids[1], &ids[2], &ids[3]])
        .await;
    env.run().await;
    let eng = group_dn("Engineering");
    assert_eq!(
        sorted(env.attr(&eng, "member").await.unwrap()),
        sorted(vec![user_dn("bob"), user_dn("cat"), user_dn("dan")])
    );
    env.patch(
        &format!("/Groups/{gid}"),
        json!([
            {"op": "add", "path": "members", "value": [{"value": ids[4]}]},
            {"op": "remove", "path": format!("members[value eq \"{}\"]", ids[1])}
        ]),
    )
    .await;
    env.run().await;
    assert_eq!(
        sorted(env.attr(&eng, "member").await.unwrap()),
        sorted(vec![user_dn("cat"), user_dn("dan"), user_dn("eve")])
    );

    // userName change: modrdn, and the group's member value follows.
    env.patch(
        &format!("/Users/{}", ids[2]),
        json!([{"op": "replace", "value": {"userName": "catherine"}}]),
    )
    .await;
    env.run().await;
    assert!(!env.exists(&user_dn("cat")).await);
    assert_eq!(
        env.attr(&user_dn("catherine"), "title").await.unwrap(),
        ["Engineer"]
    );
    assert_eq!(
        sorted(env.attr(&eng, "member").await.unwrap()),
        sorted(vec![user_dn("catherine"), user_dn("dan"), user_dn("eve")])
    );

    // Deactivate (disable policy): locked and out of its groups; reactivate restores both.
    assert!(env.slapd.can_bind(&user_dn("dan"), "Pw-dan-secret1").await);
    env.patch(
        &format!("/Users/{}", ids[3]),
        json!([{"op": "replace", "value": {"active": false}}]),
    )
    .await;
    env.run().await;
    let dan = user_dn("dan");
    assert_eq!(
        env.attr(&dan, "pwdAccountLockedTime").await.unwrap(),
        ["000001010000Z"]
    );
    assert!(
        !env.slapd.can_bind(&dan, "Pw-dan-secret1").await,
        "a deactivated user can still bind"
    );
    assert_eq!(
        sorted(env.attr(&eng, "member").await.unwrap()),
        sorted(vec![user_dn("catherine"), user_dn("eve")])
    );
    env.patch(
        &format!("/Users/{}", ids[3]),
        json!([{"op": "replace", "value": {"active": true}}]),
    )
    .await;
    env.run().await;
    assert!(env
        .attr(&dan, "pwdAccountLockedTime")
        .await
        .unwrap()
        .is_empty());
    assert!(env.attr(&eng, "member").await.unwrap().contains(&dan));
    assert!(env.slapd.can_bind(&dan, "Pw-dan-secret1").await);

    // Group rename: the entry moves, members kept.
    env.patch(
        &format!("/Groups/{gid}"),
        json!([{"op": "replace", "value": {"id": gid, "displayName": "Platform"}}]),
    )
    .await;
    env.run().await;
    assert!(!env.exists(&eng).await);
    let platform = group_dn("Platform");
    assert_eq!(env.attr(&platform, "member").await.unwrap().len(), 3);

    // Group delete leaves its users; user delete removes the entry.
    assert_eq!(env.t.delete(&format!("/Groups/{gid}")).await.status, 204);
    env.run().await;
    assert!(!env.exists(&platform).await);
    assert!(env.exists(&user_dn("eve")).await);
    assert_eq!(
        env.t.delete(&format!("/Users/{}", ids[0])).await.status,
        204
    );
    env.run().await;
    assert!(!env.exists(&ann).await);
    assert!(env.exists(&user_dn("bob")).await);
    assert!(env.dead().await.is_empty());
    let st = env.status().await;
    assert_eq!((st.pending, st.dead), (0, 0));
}

#[tokio::test]
async fn three_quick_puts_coalesce_into_one_apply_of_the_last_state() {
    let env = Env::start().await;
    let id = env.create_user(&okta_user("quick", "One")).await;
    env.run().await;
    let history_before = env.t.d().store.history(&id).await.unwrap().len();
    {
        let _paused = env.t.d().pause_reconcilers().await.unwrap();
        for title in ["Two", "Three", "Four"] {
            let r = env
                .t
                .put(&format!("/Users/{id}"), &okta_user("quick", title))
                .await;
            assert_eq!(r.status.as_u16(), 200, "{}", r.body);
        }
    }
    // Released workers may take the row before `run_pending` does; either way it is one apply.
    env.run().await;
    assert_eq!(
        env.attr(&user_dn("quick"), "title").await.unwrap(),
        ["Four"]
    );
    let history = env.t.d().store.history(&id).await.unwrap();
    let applied: Vec<_> = history[history_before..]
        .iter()
        .filter(|h| h.operation == "applied:corp")
        .collect();
    assert_eq!(applied.len(), 1, "{history:?}");
    assert_eq!(applied[0].version, 4);
}

#[tokio::test]
async fn group_member_waits_for_its_user_then_completes() {
    let env = Env::start().await;
    let ok = env.create_user(&okta_user("ready", "X")).await;
    // No familyName: `sn` is absent and inetOrgPerson refuses the entry (permanent, retried).
    let mut body = okta_user("late", "X");
    body["name"] = json!({"givenName": "Late"});
    let late = env.create_user(&body).await;
    let gid = env.create_group("Team", &[&ok, &late]).await;
    env.run().await;
    assert!(!env.exists(&user_dn("late")).await);
    assert_eq!(
        env.attr(&group_dn("Team"), "member").await.unwrap(),
        [user_dn("ready")]
    );
    // The user is fixed: it is created, and its group is queued and follows.
    env.patch(
        &format!("/Users/{late}"),
        json!([{"op": "replace", "path": "name.familyName", "value": "Comer"}]),
    )
    .await;
    env.run().await;
    assert!(env.exists(&user_dn("late")).await);
    assert_eq!(
        sorted(env.attr(&group_dn("Team"), "member").await.unwrap()),
        sorted(vec![user_dn("late"), user_dn("ready")])
    );
    assert!(env.dead().await.is_empty());
    let _ = gid;
}

#[tokio::test]
async fn manager_reference_is_filled_in_once_the_manager_exists() {
    let env = Env::start().await;
    let mut boss = okta_user("boss", "CEO");
    boss["name"] = json!({"givenName": "Big"});
    let boss_id = env.create_user(&boss).await;
    let mut worker = okta_user("worker", "Dev");
    worker[ENT]["manager"] = json!({"value": boss_id});
    env.create_user(&worker).await;
    env.run().await;
    assert!(!env.exists(&user_dn("boss")).await);
    assert!(env
        .attr(&user_dn("worker"), "manager")
        .await
        .unwrap()
        .is_empty());
    env.patch(
        &format!("/Users/{boss_id}"),
        json!([{"op": "replace", "path": "name.familyName", "value": "Boss"}]),
    )
    .await;
    env.run().await;
    assert_eq!(
        env.attr(&user_dn("worker"), "manager").await.unwrap(),
        [user_dn("boss")]
    );
}

#[tokio::test]
async fn outage_keeps_changes_pending_and_converges_after_restart() {
    let mut env = Env::start().await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            env.create_user(&okta_user(&format!("o{i}"), "Before"))
                .await,
        );
    }
    env.run().await;
    env.slapd.stop().await;
    for i in 0..10 {
        let id = &ids[i % 3];
        let r = env
            .t
            .put(
                &format!("/Users/{id}"),
                &okta_user(&format!("o{}", i % 3), &format!("During {i}")),
            )
            .await;
        assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    }
    let extra = env.create_user(&okta_user("newcomer", "New")).await;
    assert_eq!(env.run().await, 0);
    let st = env.status().await;
    assert_eq!((st.pending, st.dead), (4, 0));
    assert!(env.dead().await.is_empty());
    env.slapd.start_again().await;
    assert_eq!(env.run().await, 4);
    assert_eq!(
        env.attr(&user_dn("o0"), "title").await.unwrap(),
        ["During 9"]
    );
    assert_eq!(
        env.attr(&user_dn("o1"), "title").await.unwrap(),
        ["During 7"]
    );
    assert_eq!(
        env.attr(&user_dn("o2"), "title").await.unwrap(),
        ["During 8"]
    );
    assert!(env.exists(&user_dn("newcomer")).await);
    let st = env.status().await;
    assert_eq!((st.pending, st.dead), (0, 0));
    let _ = extra;
}

#[tokio::test]
async fn permanent_failure_becomes_a_dead_letter_then_retry_and_discard() {
    // Groups go below ou=Teams, which does not exist yet: noSuchObject, permanent.
    let env = Env::start_with_groups_in("ou=Teams,dc=example,dc=com").await;
    let uid = env.create_user(&okta_user("member", "X")).await;
    let gid = env.create_group("Blue", &[&uid]).await;
    for _ in 0..3 {
        env.run().await;
        if !env.dead().await.is_empty() {
            break;
        }
    }
    let dead = env.dead().await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].resource_id, gid);
    assert_eq!(dead[0].attempts, 3);
    assert!(
        dead[0]
            .last_error
            .as_deref()
            .unwrap()
            .contains("noSuchObject")
            || dead[0].last_error.as_deref().unwrap().contains("32"),
        "{:?}",
        dead[0].last_error
    );
    assert_eq!(env.status().await.dead, 1);
    // A dead letter is not retried on its own.
    env.run().await;
    assert_eq!(env.dead().await.len(), 1);

    // Fix the cause, retry: applied.
    let mut ldap = env.slapd.admin().await;
    ldap.add(
        "ou=Teams,dc=example,dc=com",
        vec![
            ("objectClass", ["organizationalUnit"].into()),
            ("ou", ["Teams"].into()),
        ],
    )
    .await
    .unwrap()
    .success()
    .unwrap();
    let store = &env.t.d().store;
    assert_eq!(
        store
            .retry_dead(Some(dead[0].id), Some("corp"), 0)
            .await
            .unwrap(),
        1
    );
    env.run().await;
    assert!(env.dead().await.is_empty());
    assert_eq!(
        env.attr("cn=Blue,ou=Teams,dc=example,dc=com", "member")
            .await
            .unwrap(),
        [user_dn("member")]
    );

    // Another permanent failure (no familyName: objectClass violation), discarded.
    let mut body = okta_user("broken", "X");
    body["name"] = json!({"givenName": "Broken"});
    env.create_user(&body).await;
    for _ in 0..3 {
        env.run().await;
    }
    assert_eq!(env.dead().await.len(), 1);
    assert_eq!(store.discard_dead(None, Some("corp")).await.unwrap(), 1);
    assert!(env.dead().await.is_empty());
    assert_eq!(env.status().await.dead, 0);
    assert!(!env.exists(&user_dn("broken")).await);
}

#[tokio::test]
async fn drift_repair_reports_in_dry_run_and_repairs_for_real() {
    let env = Env::start().await;
    let id = env.create_user(&okta_user("drifty", "Original")).await;
    env.create_user(&okta_user("steady", "Original")).await;
    env.run().await;
    let dn = user_dn("drifty");
    let mut ldap = env.slapd.admin().await;
    ldap.modify(
        &dn,
        vec![ldap3::Mod::Replace("title", ["Edited by hand"].into())],
    )
    .await
    .unwrap()
    .success()
    .unwrap();

    let calls = std::sync::Mutex::new(Vec::new());
    let report = env
        .t
        .d()
        .reconcile_full(Some("corp"), true, |done, total| {
            calls.lock().unwrap().push((done, total));
        })
        .await;
    assert_eq!((report.checked, report.changed, report.failed), (2, 1, 0));
    assert_eq!(report.items[0].resource_id, id);
    assert!(
        report.items[0].changes.iter().any(|c| c.contains("title")),
        "{:?}",
        report.items[0].changes
    );
    assert_eq!(calls.lock().unwrap().last(), Some(&(2, 2)));
    assert_eq!(env.attr(&dn, "title").await.unwrap(), ["Edited by hand"]);

    let report = env.t.d().reconcile_full(None, false, |_, _| {}).await;
    assert_eq!((report.checked, report.changed, report.failed), (2, 1, 0));
    assert_eq!(env.attr(&dn, "title").await.unwrap(), ["Original"]);
    let report = env.t.d().reconcile_full(None, true, |_, _| {}).await;
    assert_eq!((report.checked, report.changed), (2, 0));
}

#[tokio::test]
async fn status_counts_pending_applied_and_dead() {
    let env = Env::start().await;
    let st = env.status().await;
    assert_eq!((st.pending, st.applied, st.dead), (0, 0, 0));
    let paused = env.t.d().pause_reconcilers().await.unwrap();
    env.create_user(&okta_user("s1", "X")).await;
    env.create_user(&okta_user("s2", "X")).await;
    let st = env.status().await;
    assert_eq!((st.pending, st.applied), (2, 0));
    assert!(st.oldest_pending_ms.is_some());
    drop(paused);
    env.run().await;
    let st = env.status().await;
    assert_eq!((st.pending, st.applied, st.dead), (0, 2, 0));
    assert_eq!(st.oldest_pending_ms, None);
}

#[tokio::test]
async fn reload_with_a_changed_map_reapplies_every_managed_entry() {
    let env = Env::start().await;
    env.create_user(&okta_user("r1", "X")).await;
    env.create_user(&okta_user("r2", "X")).await;
    env.run().await;
    assert!(env
        .attr(&user_dn("r1"), "description")
        .await
        .unwrap()
        .is_empty());
    let path = &env.t.config_path;
    let text = std::fs::read_to_string(path).unwrap().replace(
        "[targets.users.attributes]\n",
        "[targets.users.attributes]\ndescription = { constant = \"Managed\" }\n",
    );
    std::fs::write(path, text).unwrap();
    env.t.d().reload().await.unwrap();
    env.run().await;
    for n in ["r1", "r2"] {
        assert_eq!(
            env.attr(&user_dn(n), "description").await.unwrap(),
            ["Managed"]
        );
    }
    // A broken map is refused and the old one stays in force.
    let text = std::fs::read_to_string(path)
        .unwrap()
        .replace("title = \"title\"", "title = \"{unclosed\"");
    std::fs::write(path, text).unwrap();
    let errors = env.t.d().reload().await.unwrap_err();
    assert!(
        errors
            .iter()
            .any(|e| e.key.starts_with("targets[0].users.attributes.title")),
        "{errors:?}"
    );
    env.create_user(&okta_user("r3", "Still")).await;
    env.run().await;
    assert_eq!(env.attr(&user_dn("r3"), "title").await.unwrap(), ["Still"]);
}

#[tokio::test]
async fn groups_and_batch_queries_on_both_backends() {
    for backend in BACKENDS {
        let env = Env::start_on(backend, GROUPS).await;
        let a = env.create_user(&okta_user("ba", "X")).await;
        let b = env.create_user(&okta_user("bb", "X")).await;
        let c = env.create_user(&okta_user("bc", "X")).await;
        env.create_group("Batch", &[&a, &b, &c]).await;
        env.patch(
            &format!("/Users/{b}"),
            json!([{"op": "replace", "value": {"active": false}}]),
        )
        .await;
        env.run().await;
        assert_eq!(
            sorted(env.attr(&group_dn("Batch"), "member").await.unwrap()),
            sorted(vec![user_dn("ba"), user_dn("bc")]),
            "{backend:?}"
        );
        // More ids than one query chunk, most unknown.
        let mut ids: Vec<String> = (0..1200).map(|i| format!("nope-{i}")).collect();
        ids.extend([a.clone(), b.clone(), c.clone()]);
        let store = &env.t.d().store;
        let states = store.target_states_of("corp", &ids).await.unwrap();
        assert_eq!(states.len(), 3, "{backend:?}");
        assert_eq!(
            states[&a].target_key.as_deref(),
            Some(user_dn("ba").as_str())
        );
        let active = store.active_flags(&ids).await.unwrap();
        assert_eq!(active.len(), 3);
        assert_eq!((active[&a], active[&b], active[&c]), (true, false, true));
        assert_eq!(store.expedite("corp", 0).await.unwrap(), 0);
        assert_eq!(
            store
                .enqueue_many(
                    "corp",
                    scim_sync::scim::resource::ResourceType::User,
                    &ids,
                    "resync",
                    1
                )
                .await
                .unwrap(),
            3
        );
        assert_eq!(env.status().await.pending, 3);
        env.run().await;
        assert_eq!(env.status().await.pending, 0);
    }
}

/// Run the real binary with the test's config; (exit code, stdout, stderr).
fn cli(config: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_scim-sync"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn cli_status_history_dead_letters_and_full_reconcile() {
    let mut env = Env::start().await;
    let id = env.create_user(&okta_user("clio", "Original")).await;
    let mut broken = okta_user("nosn", "X");
    broken["name"] = json!({"givenName": "No"});
    env.create_user(&broken).await;
    for _ in 0..3 {
        env.run().await;
    }
    let mut ldap = env.slapd.admin().await;
    ldap.modify(
        &user_dn("clio"),
        vec![ldap3::Mod::Replace("title", ["Hand edit"].into())],
    )
    .await
    .unwrap()
    .success()
    .unwrap();
    // SQLite: the CLI takes the store's instance lock, so the daemon stops first.
    env.t.stop().await;
    let config = env.t.config_path.clone();

    let (code, out, err) = cli(&config, &["status"]);
    assert_eq!(code, 0, "{out}{err}");
    let line = out.lines().find(|l| l.starts_with("corp")).unwrap();
    let cols: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        (cols[1], cols[2], cols[3], cols[4]),
        ("0", "-", "1", "1"),
        "{out}"
    );

    let (code, out, err) = cli(&config, &["dead-letters", "list"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("objectClassViolation"), "{out}");
    let dead_id = out
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    let (code, _, _) = cli(&config, &["dead-letters", "retry"]);
    assert_eq!(code, 2, "neither an id nor --all");

    let (code, out, err) = cli(&config, &["history", "CLIO"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("User {id}")), "{out}");
    assert!(
        out.contains("create") && out.contains("applied:corp") && out.contains("test"),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "target corp: version 1 applied {}",
            user_dn("clio")
        )),
        "{out}"
    );
    let (code, _, err) = cli(&config, &["history", "nobody-at-all"]);
    assert_eq!(code, 1, "{err}");

    let (code, out, err) = cli(&config, &["reconcile", "--full", "--dry-run"]);
    // A dry run plans the broken user's add too (only the server refuses it).
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("~ corp User {id} ({})", user_dn("clio"))),
        "{out}"
    );
    assert!(out.contains("title"), "{out}");
    assert!(
        out.contains("Checked 2 resource(s): 2 would change, 0 failed."),
        "{out}"
    );
    assert_eq!(
        env.attr(&user_dn("clio"), "title").await.unwrap(),
        ["Hand edit"]
    );

    let (code, out, err) = cli(&config, &["dead-letters", "discard", &dead_id]);
    assert_eq!(
        (code, out.trim()),
        (0, "1 dead letter(s) discarded."),
        "{err}"
    );
    let (code, out, err) = cli(&config, &["reconcile", "--full", "--target", "corp"]);
    assert_eq!(code, 1, "the broken user fails: {out}{err}");
    assert!(
        // The failed user is checked too (issue 13: this printed "Checked 1 ... 1 failed").
        out.contains("Checked 2 resource(s): 1 changed, 1 failed."),
        "{out}"
    );
    assert_eq!(
        env.attr(&user_dn("clio"), "title").await.unwrap(),
        ["Original"]
    );
    let (code, _, err) = cli(&config, &["reconcile", "--full", "--target", "nope"]);
    assert_eq!(code, 2, "{err}");
}

#[tokio::test]
async fn drift_repair_recreates_an_entry_deleted_by_hand_and_provisions_unmanaged_users() {
    let env = Env::start().await;
    env.create_user(&okta_user("gone", "Kept")).await;
    env.run().await;
    let dn = user_dn("gone");
    let mut ldap = env.slapd.admin().await;
    ldap.delete(&dn).await.unwrap().success().unwrap();
    // A user whose row was dropped (discarded) is live but has no state: still managed.
    let mut broken = okta_user("later", "X");
    broken["name"] = json!({"givenName": "Later"});
    let later = env.create_user(&broken).await;
    for _ in 0..3 {
        env.run().await;
    }
    let store = &env.t.d().store;
    assert_eq!(store.discard_dead(None, None).await.unwrap(), 1);
    // Fix the user while the workers are held off, so only drift repair can apply it.
    let paused = env.t.d().pause_reconcilers().await.unwrap();
    env.patch(
        &format!("/Users/{later}"),
        json!([{"op": "replace", "path": "name.familyName", "value": "Fixed"}]),
    )
    .await;
    assert_eq!(env.status().await.pending, 1);
    let report = env.t.d().reconcile_full(None, true, |_, _| {}).await;
    assert_eq!(
        (report.checked, report.changed, report.failed),
        (2, 2, 0),
        "{report:?}"
    );
    assert!(!env.exists(&dn).await);
    let report = env.t.d().reconcile_full(None, false, |_, _| {}).await;
    assert_eq!(
        (report.checked, report.changed, report.failed),
        (2, 2, 0),
        "{report:?}"
    );
    assert_eq!(env.attr(&dn, "title").await.unwrap(), ["Kept"]);
    assert!(env.exists(&user_dn("later")).await);
    drop(paused);
    // The queued row then applies as a no-op.
    env.run().await;
    assert_eq!(env.status().await.pending, 0);
}

#[tokio::test]
async fn hostile_user_names_round_trip_through_dns_and_renames() {
    let env = Env::start().await;
    let name = "o'brien+x, \"q\"=z;<a>#\\@okta.local";
    let id = env.create_user(&okta_user(name, "Odd")).await;
    let gid = env.create_group("Odd, Group+1", &[&id]).await;
    env.run().await;
    let dn = format!("uid={},{PEOPLE}", ldap3::dn_escape(name));
    assert_eq!(env.attr(&dn, "uid").await.unwrap(), [name]);
    let gdn = format!("cn={},{GROUPS}", ldap3::dn_escape("Odd, Group+1"));
    let members = env.attr(&gdn, "member").await.unwrap();
    assert_eq!(members.len(), 1, "{members:?}");
    let renamed = "plain";
    env.patch(
        &format!("/Users/{id}"),
        json!([{"op": "replace", "value": {"userName": renamed}}]),
    )
    .await;
    env.run().await;
    assert!(!env.exists(&dn).await);
    assert_eq!(env.attr(&gdn, "member").await.unwrap(), [user_dn(renamed)]);
    assert!(env.dead().await.is_empty());
    let _ = gid;
}

#[tokio::test]
async fn an_entry_left_by_an_interrupted_create_is_resumed_not_refused() {
    let mut env = Env::start().await;
    // A first attempt records the intent and fails (the directory is down) ...
    env.slapd.stop().await;
    let id = env.create_user(&okta_user("crashy", "Resumed")).await;
    assert_eq!(env.run().await, 0);
    let intent = env
        .t
        .d()
        .store
        .target_state("corp", &id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(intent.target_key, None);
    assert_eq!(
        intent.extra.as_ref().unwrap().creating,
        Some(user_dn("crashy"))
    );
    env.slapd.start_again().await;
    // ... then an attempt's add reached the directory (as our bind DN) but its settle never
    // did: the entry exists, created after the intent, and the store has no key for it.
    let dn = user_dn("crashy");
    let mut ldap = env.slapd.admin().await;
    ldap.add(
        &dn,
        vec![
            ("objectClass", ["inetOrgPerson"].into()),
            ("uid", ["crashy"].into()),
            ("cn", ["Given Family-crashy"].into()),
            ("sn", ["Family-crashy"].into()),
        ],
    )
    .await
    .unwrap()
    .success()
    .unwrap();
    env.run().await;
    assert!(env.dead().await.is_empty());
    assert_eq!(env.status().await.pending, 0);
    assert_eq!(env.attr(&dn, "title").await.unwrap(), ["Resumed"]);
    let state = env
        .t
        .d()
        .store
        .target_state("corp", &id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(state.target_key.as_deref(), Some(dn.as_str()));
}

/// An entry our bind DN made at the DN before this resource's intent (for a resource that held
/// the DN earlier, or by hand) is not this resource's interrupted create: it stays a conflict.
#[tokio::test]
async fn an_entry_our_bind_dn_made_before_the_intent_is_refused_not_resumed() {
    let env = Env::start().await;
    let dn = user_dn("early");
    let mut ldap = env.slapd.admin().await;
    ldap.add(
        &dn,
        vec![
            ("objectClass", ["inetOrgPerson"].into()),
            ("uid", ["early"].into()),
            ("cn", ["Someone Else"].into()),
            ("sn", ["Else"].into()),
        ],
    )
    .await
    .unwrap()
    .success()
    .unwrap();
    // createTimestamp has whole seconds: make the intent's second a later one.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let id = env.create_user(&okta_user("early", "Intruder")).await;
    for _ in 0..3 {
        env.run().await;
    }
    let dead = env.dead().await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].resource_id, id);
    assert!(
        dead[0]
            .last_error
            .as_deref()
            .unwrap()
            .contains("not managed"),
        "{:?}",
        dead[0].last_error
    );
    assert_eq!(env.attr(&dn, "sn").await.unwrap(), ["Else"]);
    assert_eq!(env.attr(&dn, "title").await.unwrap(), Vec::<String>::new());
}

/// Users named by `cn={displayName}`: two people called John Smith.
fn cn_people(toml: String) -> String {
    toml.replace(
        "dn = \"uid={userName},ou=People",
        "dn = \"cn={displayName},ou=People",
    )
    .replace(
        "cn = \"{name.givenName} {name.familyName}\"",
        "cn = \"displayName\"",
    )
}

fn person(user_name: &str, display: &str, family: &str) -> Value {
    json!({
        "schemas": [CORE],
        "userName": user_name,
        "name": {"givenName": "John", "familyName": family},
        "emails": [{"primary": true, "value": format!("{user_name}@example.com")}],
        "displayName": display,
        "active": true,
    })
}

fn assert_conflict_names(dead: &scim_sync::store::OutboxItem, ids: [(&str, &str); 2]) {
    let text = dead.last_error.as_deref().unwrap_or("");
    for (id, name) in ids {
        assert!(text.contains(id), "{id} not in {text:?}");
        assert!(text.contains(name), "{name} not in {text:?}");
    }
}

/// Issue 8 item 1, as reported: the second John Smith overwrote the first one's `mail` and
/// `sn` and `status` said 2 applied.
#[tokio::test]
async fn two_users_whose_dn_renders_the_same_never_share_one_entry() {
    for backend in BACKENDS {
        two_john_smiths(backend).await;
    }
}

async fn two_john_smiths(backend: Backend) {
    let env = Env::start_edited(backend, GROUPS, cn_people).await;
    let js1 = env.create_user(&person("js1", "John Smith", "Smith")).await;
    env.run().await;
    let dn = format!("cn=John Smith,{PEOPLE}");
    assert_eq!(env.attr(&dn, "mail").await.unwrap(), ["js1@example.com"]);
    // Spelled differently, the same DN for the server (case, insignificant spaces).
    let js2 = env
        .create_user(&person("js2", "john  SMITH", "Smith-Two"))
        .await;
    for _ in 0..3 {
        env.run().await;
    }
    assert_eq!(env.attr(&dn, "mail").await.unwrap(), ["js1@example.com"]);
    assert_eq!(env.attr(&dn, "sn").await.unwrap(), ["Smith"]);
    let dead = env.dead().await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].resource_id, js2);
    assert_conflict_names(&dead[0], [(&js1, "js1"), (&js2, "js2")]);
    let st = env.status().await;
    assert_eq!((st.pending, st.applied, st.dead), (0, 1, 1));
    let store = &env.t.d().store;
    let state = store.target_state("corp", &js2).await.unwrap();
    assert!(
        state.is_none_or(|s| s.target_key.is_none()),
        "js2 holds a key"
    );

    // Once js1 is gone, an operator's retry gives js2 the DN.
    let r = env.t.delete(&format!("/Users/{js1}")).await;
    assert_eq!(r.status.as_u16(), 204);
    env.run().await;
    assert_eq!(store.retry_dead(None, Some("corp"), 0).await.unwrap(), 1);
    env.run().await;
    assert!(env.dead().await.is_empty());
    assert_eq!(env.attr(&dn, "mail").await.unwrap(), ["js2@example.com"]);
}

/// A rename onto a DN another user intends (its create is failing) is a conflict before the
/// directory is touched; the other user's create later does not take over the renamed entry.
#[tokio::test]
async fn a_rename_onto_a_dn_another_user_intends_is_a_conflict() {
    let env = Env::start_edited(Backend::Sqlite, GROUPS, cn_people).await;
    let jane = env
        .create_user(&person("jane", "Jane Smith", "Smith"))
        .await;
    env.run().await;
    // John's create fails on the directory's schema (no sn): his intent holds the DN.
    let mut john_body = person("john", "John Smith", "x");
    john_body["name"] = json!({"givenName": "John"});
    let john = env.create_user(&john_body).await;
    env.run().await;
    env.patch(
        &format!("/Users/{jane}"),
        json!([{"op": "replace", "path": "displayName", "value": "John Smith"}]),
    )
    .await;
    for _ in 0..3 {
        env.run().await;
    }
    let john_dn = format!("cn=John Smith,{PEOPLE}");
    let jane_dn = format!("cn=Jane Smith,{PEOPLE}");
    assert!(
        !env.exists(&john_dn).await,
        "Jane was renamed onto John's DN"
    );
    assert_eq!(
        env.attr(&jane_dn, "mail").await.unwrap(),
        ["jane@example.com"]
    );
    let dead = env.dead().await;
    let jane_dead = dead
        .iter()
        .find(|d| d.resource_id == jane)
        .expect("jane dead");
    assert_conflict_names(jane_dead, [(&jane, "jane"), (&john, "john")]);
}

/// Groups share the DN namespace rules: `"Finance  Team"` and `"Finance Team"` are one DN.
#[tokio::test]
async fn two_groups_whose_dn_renders_the_same_never_share_one_entry() {
    let env = Env::start().await;
    let a = env.create_user(&okta_user("fa", "X")).await;
    let b = env.create_user(&okta_user("fb", "X")).await;
    let g1 = env.create_group("Finance Team", &[&a]).await;
    env.run().await;
    let g2 = env.create_group("Finance  Team", &[&b]).await;
    for _ in 0..3 {
        env.run().await;
    }
    let dn = group_dn("Finance Team");
    assert_eq!(env.attr(&dn, "member").await.unwrap(), [user_dn("fa")]);
    let dead = env.dead().await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].resource_id, g2);
    assert_conflict_names(&dead[0], [(&g1, "Finance Team"), (&g2, "Finance  Team")]);
}

/// After an add the server's `entryUUID` is kept in the bookkeeping (for renames and drift),
/// and it follows the entry through a rename. A user's first create is one LDAP operation:
/// the add, answered with the new entry's `entryUUID` (Post-Read, RFC 4527), no search before
/// or after it (issue 9).
#[tokio::test]
async fn an_add_records_the_servers_entry_uuid() {
    use scim_sync::targets::ldap::ops::sent_to;
    let env = Env::start().await;
    // The start's healthcheck (a read of the users' base) is not the create's.
    let rec = env.t.d().current_reconciler().unwrap();
    while !rec.health().snapshot().values().all(|h| h.reachable) {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let before = sent_to(&env.slapd.uri());
    let uid = env.create_user(&okta_user("uuid", "X")).await;
    env.run().await;
    let ops = sent_to(&env.slapd.uri()) - before;
    assert_eq!((ops.adds, ops.searches), (1, 0), "{ops:?}");
    let gid = env.create_group("Uuid Team", &[&uid]).await;
    env.run().await;
    let store = &env.t.d().store;
    for (id, dn) in [(&uid, user_dn("uuid")), (&gid, group_dn("Uuid Team"))] {
        let e = env.slapd.entry(&dn, &["entryUUID"]).await.unwrap();
        let want = e.into_iter().find(|(k, _)| k == "entryuuid").unwrap().1;
        let state = store.target_state("corp", id).await.unwrap().unwrap();
        assert_eq!(
            state.extra.unwrap().entry_uuid,
            Some(want[0].clone()),
            "{dn}"
        );
    }
    let before = store.target_state("corp", &gid).await.unwrap().unwrap();
    env.patch(
        &format!("/Groups/{gid}"),
        json!([{"op": "replace", "path": "displayName", "value": "Uuid Crew"}]),
    )
    .await;
    env.run().await;
    let after = store.target_state("corp", &gid).await.unwrap().unwrap();
    assert_eq!(
        after.target_key.as_deref(),
        Some(group_dn("Uuid Crew").as_str())
    );
    assert_eq!(
        after.extra.unwrap().entry_uuid,
        before.extra.unwrap().entry_uuid
    );
}

/// Issue 8 item 7: revocation must not depend on the user's own apply. Every deactivation
/// modify is refused by the schema here (`dc` is not allowed on inetOrgPerson), so the user's
/// row retries and becomes a dead letter; its groups, queued by the deactivating PATCH itself,
/// drop it all the same.
#[tokio::test]
async fn a_deactivated_user_leaves_its_groups_even_when_its_own_modify_fails() {
    let env = Env::start_edited(Backend::Sqlite, GROUPS, |toml| {
        let locked = "set = { pwdAccountLockedTime = \"000001010000Z\" }";
        assert!(toml.contains(locked));
        toml.replace(locked, "set = { dc = \"refused\" }")
    })
    .await;
    let stuck = env.create_user(&okta_user("stuck", "Dev")).await;
    let other = env.create_user(&okta_user("other", "Dev")).await;
    env.create_group("Team", &[&stuck, &other]).await;
    env.run().await;
    assert_eq!(
        sorted(env.attr(&group_dn("Team"), "member").await.unwrap()),
        sorted(vec![user_dn("other"), user_dn("stuck")])
    );
    env.patch(
        &format!("/Users/{stuck}"),
        json!([{"op": "replace", "value": {"active": false}}]),
    )
    .await;
    // One drain: the user's modify fails once (it will retry after its backoff).
    env.run().await;
    assert_eq!(
        env.attr(&group_dn("Team"), "member").await.unwrap(),
        [user_dn("other")],
        "the deactivated user is still a member while its own modify retries"
    );
    // Until it is a dead letter: the group stays without it.
    env.run().await;
    env.run().await;
    let dead = env.dead().await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].resource_id, stuck);
    assert_eq!(
        env.attr(&group_dn("Team"), "member").await.unwrap(),
        [user_dn("other")]
    );
}

/// Issue 8 item 2: a manager whose DN changes (a rename of its DN-forming attribute) takes
/// its reports' `manager` values along.
#[tokio::test]
async fn a_managers_rename_moves_the_manager_dn_of_its_reports() {
    let env = Env::start().await;
    let boss = env.create_user(&okta_user("boss", "CEO")).await;
    let mut report = okta_user("report", "Dev");
    report[ENT]["manager"] = json!({"value": boss});
    env.create_user(&report).await;
    env.run().await;
    assert_eq!(
        env.attr(&user_dn("report"), "manager").await.unwrap(),
        [user_dn("boss")]
    );
    env.patch(
        &format!("/Users/{boss}"),
        json!([{"op": "replace", "path": "userName", "value": "bigboss"}]),
    )
    .await;
    env.run().await;
    assert!(env.exists(&user_dn("bigboss")).await);
    assert!(!env.exists(&user_dn("boss")).await);
    assert_eq!(
        env.attr(&user_dn("report"), "manager").await.unwrap(),
        [user_dn("bigboss")],
        "the report kept its manager's old DN"
    );
    assert!(env.dead().await.is_empty());
    assert_eq!(env.status().await.pending, 0);
}

/// Window K1 for references: the manager's rename is applied and its settle commits, and the
/// daemon dies before anything after the settle runs (a report that applied before the
/// settle read the old DN and has nothing pending). The settle itself queues the reports.
#[tokio::test]
async fn a_managers_rename_settled_right_before_a_crash_still_moves_the_reports_manager_dn() {
    let env = Env::start().await;
    let boss = env.create_user(&okta_user("boss", "CEO")).await;
    let mut report = okta_user("report", "Dev");
    report[ENT]["manager"] = json!({"value": boss});
    env.create_user(&report).await;
    env.run().await;
    let d = env.t.d();
    let paused = d.pause_reconcilers().await.unwrap();
    env.patch(
        &format!("/Users/{boss}"),
        json!([{"op": "replace", "path": "userName", "value": "bigboss"}]),
    )
    .await;
    // The manager's apply: claimed, renamed in the directory, settled; then the crash.
    let now = scim_sync::http::server::now_ms();
    let claimed = d.store.claim("corp", now, 600_000, 1).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].resource_id, boss);
    let mut ldap = env.slapd.admin().await;
    ldap.modifydn(&user_dn("boss"), "uid=bigboss", true, None)
        .await
        .unwrap()
        .success()
        .unwrap();
    let mut state = d.store.target_state("corp", &boss).await.unwrap().unwrap();
    state.applied_version = claimed[0].version;
    state.target_key = Some(user_dn("bigboss"));
    state.updated_ms = now;
    d.store
        .settle_applied(&claimed[0], state, now)
        .await
        .unwrap();
    drop(paused);
    env.run().await;
    assert_eq!(
        env.attr(&user_dn("report"), "manager").await.unwrap(),
        [user_dn("bigboss")],
        "the report kept its manager's old DN with nothing pending"
    );
    assert!(env.dead().await.is_empty());
    assert_eq!(env.status().await.pending, 0);
}

/// Issue 8 item 2: a manager moved by its deactivation (`policy = "move"`) and then deleted:
/// the report follows each time (the moved DN, then no manager).
#[tokio::test]
async fn a_managers_move_and_delete_update_the_manager_dn_of_its_reports() {
    const DISABLED: &str = "ou=Disabled,dc=example,dc=com";
    let env = Env::start_edited(Backend::Sqlite, GROUPS, |toml| {
        let disable = "policy = \"disable\"\nset = { pwdAccountLockedTime = \"000001010000Z\" }";
        assert!(toml.contains(disable));
        toml.replace(
            disable,
            &format!("policy = \"move\"\nmove_to = \"{DISABLED}\""),
        )
    })
    .await;
    let boss = env.create_user(&okta_user("boss", "CEO")).await;
    let mut report = okta_user("report", "Dev");
    report[ENT]["manager"] = json!({"value": boss});
    env.create_user(&report).await;
    env.run().await;
    assert_eq!(
        env.attr(&user_dn("report"), "manager").await.unwrap(),
        [user_dn("boss")]
    );
    env.patch(
        &format!("/Users/{boss}"),
        json!([{"op": "replace", "value": {"active": false}}]),
    )
    .await;
    env.run().await;
    let moved = format!("uid=boss,{DISABLED}");
    assert!(env.exists(&moved).await);
    assert_eq!(
        env.attr(&user_dn("report"), "manager").await.unwrap(),
        [moved],
        "the report kept its manager's DN from before the move"
    );
    let r = env.t.delete(&format!("/Users/{boss}")).await;
    assert_eq!(r.status.as_u16(), 204, "{}", r.body);
    env.run().await;
    assert_eq!(
        env.attr(&user_dn("report"), "manager").await.unwrap(),
        Vec::<String>::new(),
        "the report still names its deleted manager"
    );
    assert!(env.dead().await.is_empty());
    assert_eq!(env.status().await.pending, 0);
}
