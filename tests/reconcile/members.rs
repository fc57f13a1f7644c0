//! O(change) memberships (issue 9 step 3) and foreign members (issue 13 item 5), against a real
//! slapd on both store backends: a one-member change to a group is one modify with one value
//! (counted by the target's own write counters, `targets::ldap::ops`), a burst or a PUT of a
//! few changes is one modify with those values, and every fallback converges: a crash between
//! the LDAP write and the settle, PATCHes landing while an apply is under way, a member whose
//! entry is created after the group applied. Foreign member values are kept or removed as
//! `foreign_members` says, never a value we wrote and no longer want.

use super::*;
use scim_sync::reconcile::worker::PAUSE_BEFORE_SYNC;
use scim_sync::targets::ldap::ops::{sent_to, Ops};

/// The suite's target without a placeholder member (groups here are never empty), with
/// `foreign` as the policy.
async fn start(backend: Backend, foreign: &str) -> Env {
    Env::start_edited(backend, GROUPS, |toml| {
        let toml = toml.replace(
            "type = \"ldap\"\n",
            &format!("type = \"ldap\"\nforeign_members = \"{foreign}\"\n"),
        );
        assert!(toml.contains("foreign_members"), "{toml}");
        toml
    })
    .await
}

/// The placeholder member the suite's target configures.
const PLACEHOLDER: &str = "cn=nobody,dc=example,dc=com";

impl Env {
    fn ops(&self) -> Ops {
        sent_to(&self.slapd.uri())
    }

    async fn members_of(&self, group: &str) -> Vec<String> {
        sorted(
            self.attr(&group_dn(group), "member")
                .await
                .unwrap_or_default()
                .into_iter()
                .map(|m| m.to_ascii_lowercase())
                .collect(),
        )
    }

    async fn users(&self, names: &[&str]) -> Vec<String> {
        let mut ids = Vec::new();
        for n in names {
            ids.push(self.create_user(&okta_user(n, "T")).await);
        }
        ids
    }

    async fn add_by_hand(&self, group: &str, value: &str) {
        let mut ldap = self.slapd.admin().await;
        ldap.modify(
            &group_dn(group),
            vec![ldap3::Mod::Add("member", [value].into())],
        )
        .await
        .unwrap()
        .success()
        .unwrap();
    }

    async fn delete_by_hand(&self, group: &str, value: &str) {
        let mut ldap = self.slapd.admin().await;
        ldap.modify(
            &group_dn(group),
            vec![ldap3::Mod::Delete("member", [value].into())],
        )
        .await
        .unwrap()
        .success()
        .unwrap();
    }
}

fn dns(names: &[&str]) -> Vec<String> {
    sorted(
        names
            .iter()
            .map(|n| user_dn(n).to_ascii_lowercase())
            .collect(),
    )
}

fn add_member(id: &str) -> Value {
    json!([{"op": "add", "path": "members", "value": [{"value": id}]}])
}

fn remove_member(id: &str) -> Value {
    json!([{"op": "remove", "path": format!("members[value eq \"{id}\"]")}])
}

/// Exactly one modify carrying `values` values, no other write, and no read of the group's
/// members (what an apply reads of the group: its object classes and own attributes, a few
/// values, against dozens of members).
fn one_modify(got: Ops, values: u64) {
    let want = Ops {
        modifies: 1,
        modify_values: values,
        read_values: got.read_values,
        searches: got.searches,
        ..Ops::default()
    };
    assert_eq!(got, want, "LDAP writes sent");
    assert!(
        got.read_values < 10,
        "the group's members were read: {got:?}"
    );
}

#[tokio::test]
async fn a_one_member_change_is_one_modify_with_one_value() {
    for backend in BACKENDS {
        let env = start(backend, "keep").await;
        let names: Vec<String> = (0..40).map(|i| format!("m{i:02}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let ids = env.users(&refs).await;
        let firsts: Vec<&str> = ids[..30].iter().map(String::as_str).collect();
        let g = env.create_group("big", &firsts).await;
        env.run().await;
        assert_eq!(env.members_of("big").await, dns(&refs[..30]));

        // One member added: one modify, one value.
        let before = env.ops();
        env.patch(&format!("/Groups/{g}"), add_member(&ids[30]))
            .await;
        env.run().await;
        one_modify(env.ops() - before, 1);
        assert_eq!(env.members_of("big").await, dns(&refs[..31]));

        // One member removed: the same.
        let before = env.ops();
        env.patch(&format!("/Groups/{g}"), remove_member(&ids[0]))
            .await;
        env.run().await;
        one_modify(env.ops() - before, 1);
        assert_eq!(env.members_of("big").await, dns(&refs[1..31]));

        // A burst of five changes to one group, applied together: one modify, five values.
        let before = env.ops();
        {
            let _paused = env.t.d().pause_reconcilers().await.unwrap();
            env.patch(&format!("/Groups/{g}"), add_member(&ids[31]))
                .await;
            env.patch(&format!("/Groups/{g}"), add_member(&ids[32]))
                .await;
            env.patch(&format!("/Groups/{g}"), remove_member(&ids[1]))
                .await;
            env.patch(&format!("/Groups/{g}"), add_member(&ids[33]))
                .await;
            env.patch(&format!("/Groups/{g}"), remove_member(&ids[2]))
                .await;
            // Added and removed again inside the burst: nothing to write for it.
            env.patch(&format!("/Groups/{g}"), add_member(&ids[34]))
                .await;
            env.patch(&format!("/Groups/{g}"), remove_member(&ids[34]))
                .await;
        }
        env.run().await;
        one_modify(env.ops() - before, 5);
        let mut want: Vec<&str> = refs[3..34].to_vec();
        want.sort_unstable();
        assert_eq!(env.members_of("big").await, dns(&want));

        // A PUT of the whole group changing ten members: one modify with ten values.
        let mut put: Vec<&str> = ids[8..34].iter().map(String::as_str).collect();
        put.extend(ids[35..40].iter().map(String::as_str));
        let members: Vec<Value> = put.iter().map(|m| json!({"value": m})).collect();
        let before = env.ops();
        let r = env
            .t
            .put(
                &format!("/Groups/{g}"),
                &json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
                        "displayName": "big", "members": members}),
            )
            .await;
        assert!(r.status.is_success(), "{}", r.body);
        env.run().await;
        one_modify(env.ops() - before, 10);
        let mut want: Vec<&str> = refs[8..34].to_vec();
        want.extend(&refs[35..40]);
        want.sort_unstable();
        assert_eq!(env.members_of("big").await, dns(&want));

        let report = env.t.d().verify(None, |_, _| {}).await;
        assert!(report.clean(), "{report:#?}");
        assert!(report.foreign.is_empty(), "{report:#?}");
    }
}

/// The suite's own target keeps its placeholder member: the O(change) path drops it with the
/// first real member (asked with a filter, not by reading the members) and puts it back when
/// the last one goes.
#[tokio::test]
async fn changes_to_a_group_with_a_placeholder_keep_it_right_without_reading_members() {
    let env = Env::start().await;
    let ids = env.users(&["pa", "pb"]).await;
    let g = env.create_group("ph", &[]).await;
    env.run().await;
    assert_eq!(env.members_of("ph").await, [PLACEHOLDER]);
    let before = env.ops();
    env.patch(&format!("/Groups/{g}"), add_member(&ids[0]))
        .await;
    env.run().await;
    // The member added and the placeholder deleted in one modify.
    one_modify(env.ops() - before, 2);
    assert_eq!(env.members_of("ph").await, dns(&["pa"]));
    let before = env.ops();
    env.patch(&format!("/Groups/{g}"), add_member(&ids[1]))
        .await;
    env.run().await;
    one_modify(env.ops() - before, 1);
    env.patch(&format!("/Groups/{g}"), remove_member(&ids[0]))
        .await;
    env.run().await;
    assert_eq!(env.members_of("ph").await, dns(&["pb"]));
    // The last member goes: groupOfNames refuses an empty member list, the placeholder
    // stands in within the same modify.
    env.patch(&format!("/Groups/{g}"), remove_member(&ids[1]))
        .await;
    env.run().await;
    assert_eq!(env.members_of("ph").await, [PLACEHOLDER]);
    assert!(env.dead().await.is_empty());
    let report = env.t.d().verify(None, |_, _| {}).await;
    assert!(report.clean(), "{report:#?}");
}

/// A member whose entry is created after the group applied: the user's settle marks it in
/// the group (same version, a dependant re-queue), and the group gets it with one modify.
#[tokio::test]
async fn a_member_created_after_the_group_applied_gets_in_with_one_modify() {
    for backend in BACKENDS {
        let env = start(backend, "keep").await;
        let ids = env.users(&["early1", "early2"]).await;
        env.run().await;
        let late;
        let held;
        let g;
        {
            let _paused = env.t.d().pause_reconcilers().await.unwrap();
            late = env.create_user(&okta_user("late", "T")).await;
            g = env.create_group("later", &[&ids[0], &ids[1], &late]).await;
            // The late user's row is held by "another worker" while the group applies.
            let now = scim_sync::http::server::now_ms();
            let claimed = env
                .t
                .d()
                .store
                .claim("corp", now, 600_000, 1)
                .await
                .unwrap();
            assert_eq!(claimed.len(), 1, "{claimed:?}");
            assert_eq!(claimed[0].resource_id, late);
            held = claimed.into_iter().next().unwrap();
        }
        env.run().await;
        assert_eq!(env.members_of("later").await, dns(&["early1", "early2"]));
        // The holder gives the row back; the user is created, and the group follows.
        let now = scim_sync::http::server::now_ms();
        env.t
            .d()
            .store
            .settle_failed(&held, "given back", now, false, now)
            .await
            .unwrap();
        let before = env.ops();
        env.run().await;
        let sent = env.ops() - before;
        assert_eq!(
            (sent.adds, sent.modifies, sent.modify_values),
            (1, 1, 1),
            "the user's add, then one modify of the group: {sent:?}"
        );
        assert_eq!(
            env.members_of("later").await,
            dns(&["early1", "early2", "late"])
        );
        let _ = g;
        let report = env.t.d().verify(None, |_, _| {}).await;
        assert!(report.clean(), "{report:#?}");
    }
}

/// Killed between the LDAP write and the settle of an O(change) apply (the values recorded,
/// the modify done, nothing settled), then more changes: the recovery converges, and a value
/// deleted before the crash and wanted again after it is put back.
#[tokio::test]
async fn a_crash_between_the_member_write_and_the_settle_converges() {
    for backend in BACKENDS {
        let env = start(backend, "keep").await;
        let ids = env.users(&["c1", "c2", "c3", "c4"]).await;
        let g = env
            .create_group("crashed", &[&ids[0], &ids[1], &ids[2]])
            .await;
        env.run().await;
        let store = env.t.d().store.clone();
        {
            let _paused = env.t.d().pause_reconcilers().await.unwrap();
            // c4 added, c2 removed, in one apply that dies after its modify.
            env.patch(&format!("/Groups/{g}"), add_member(&ids[3]))
                .await;
            env.patch(&format!("/Groups/{g}"), remove_member(&ids[1]))
                .await;
            // The dead apply's claim (its 1 ms lease over long before anything claims again).
            let now = scim_sync::http::server::now_ms();
            let claimed = store.claim("corp", now, 1, 1).await.unwrap();
            assert_eq!(claimed.len(), 1);
            // What it did before dying: the record first, then the modify.
            store
                .record_members(
                    "corp",
                    &g,
                    vec![(user_dn("c4"), ids[3].clone())],
                    vec![user_dn("c2")],
                )
                .await
                .unwrap();
            env.add_by_hand("crashed", &user_dn("c4")).await;
            env.delete_by_hand("crashed", &user_dn("c2")).await;
            // c2 comes back before anything applies again.
            env.patch(&format!("/Groups/{g}"), add_member(&ids[1]))
                .await;
        }
        env.run().await;
        assert_eq!(
            env.members_of("crashed").await,
            dns(&["c1", "c2", "c3", "c4"])
        );
        let report = env.t.d().verify(None, |_, _| {}).await;
        assert!(report.clean(), "{report:#?}");
        // And from then on one change is one modify again.
        let before = env.ops();
        env.patch(&format!("/Groups/{g}"), remove_member(&ids[3]))
            .await;
        env.run().await;
        one_modify(env.ops() - before, 1);
        assert_eq!(env.members_of("crashed").await, dns(&["c1", "c2", "c3"]));
    }
}

/// PATCHes that land while an O(change) apply is under way (read, not yet written): the
/// apply writes what it read, its settle sees the row moved, and the next apply takes the
/// rest. Nothing is lost or written twice wrongly.
#[tokio::test]
async fn patches_during_an_apply_are_applied_after_it() {
    for backend in BACKENDS {
        let env = start(backend, "keep").await;
        let ids = env.users(&["d1", "d2", "d3", "d4", "d5"]).await;
        let g = env
            .create_group("during", &[&ids[0], &ids[1], &ids[2]])
            .await;
        env.run().await;
        let paused = env.t.d().pause_reconcilers().await.unwrap();
        env.patch(&format!("/Groups/{g}"), add_member(&ids[3]))
            .await;
        let other = another_worker(&env);
        let point = other.arm_pause(PAUSE_BEFORE_SYNC);
        let worker = {
            let other = other.clone();
            tokio::spawn(async move { other.run_pending().await })
        };
        point.reached().await;
        // Read (d4 to add), not yet written: the IdP removes d4 again, adds d5, removes d1.
        env.patch(&format!("/Groups/{g}"), remove_member(&ids[3]))
            .await;
        env.patch(&format!("/Groups/{g}"), add_member(&ids[4]))
            .await;
        env.patch(&format!("/Groups/{g}"), remove_member(&ids[0]))
            .await;
        point.release();
        worker.await.unwrap();
        drop(paused);
        env.run().await;
        assert_eq!(env.members_of("during").await, dns(&["d2", "d3", "d5"]));
        let report = env.t.d().verify(None, |_, _| {}).await;
        assert!(report.clean(), "{report:#?}");
        assert!(env.dead().await.is_empty());
    }
}

/// A renamed member: its settle marks it in its groups, which swap the old value for the new
/// one in one modify (no whole-membership read), and a deleted member's value goes.
#[tokio::test]
async fn a_renamed_or_deleted_member_is_changed_in_its_groups_with_one_modify() {
    let env = start(Backend::Sqlite, "keep").await;
    let ids = env.users(&["r1", "r2", "r3"]).await;
    let g = env
        .create_group("renames", &[&ids[0], &ids[1], &ids[2]])
        .await;
    env.run().await;
    env.patch(
        &format!("/Users/{}", ids[1]),
        json!([{"op": "replace", "path": "userName", "value": "r2new"}]),
    )
    .await;
    let before = env.ops();
    env.run().await;
    let sent = env.ops() - before;
    assert_eq!(
        (sent.modrdns, sent.modifies, sent.modify_values),
        (1, 1, 2),
        "the user's modrdn, then one modify of the group: {sent:?}"
    );
    assert_eq!(env.members_of("renames").await, dns(&["r1", "r2new", "r3"]));
    let r = env.t.delete(&format!("/Users/{}", ids[2])).await;
    assert_eq!(r.status.as_u16(), 204, "{}", r.body);
    env.run().await;
    assert_eq!(env.members_of("renames").await, dns(&["r1", "r2new"]));
    let _ = g;
    let report = env.t.d().verify(None, |_, _| {}).await;
    assert!(report.clean(), "{report:#?}");
}

/// `foreign_members = "keep"`: a value added by hand stays through O(change) applies, PUTs
/// and drift repair, and `verify` lists it; values we wrote and no longer want go.
#[tokio::test]
async fn foreign_member_values_are_kept_under_keep_and_listed_by_verify() {
    for backend in BACKENDS {
        let env = start(backend, "keep").await;
        let ids = env.users(&["k1", "k2", "k3"]).await;
        let g = env.create_group("kept", &[&ids[0], &ids[1]]).await;
        env.run().await;
        let stranger = "uid=stranger,ou=people,dc=example,dc=com";
        env.add_by_hand("kept", stranger).await;
        env.patch(&format!("/Groups/{g}"), remove_member(&ids[1]))
            .await;
        env.patch(&format!("/Groups/{g}"), add_member(&ids[2]))
            .await;
        env.run().await;
        let mut want = dns(&["k1", "k3"]);
        want.push(stranger.to_owned());
        want.sort();
        assert_eq!(env.members_of("kept").await, want);
        // Drift repair reads the whole membership: the stranger stays, k2 stays out.
        let report = env.t.d().reconcile_full(None, false, |_, _| {}).await;
        assert_eq!(report.failed, 0, "{report:#?}");
        assert_eq!(env.members_of("kept").await, want);
        let r = env
            .t
            .put(
                &format!("/Groups/{g}"),
                &json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
                        "displayName": "kept", "members": [{"value": ids[0]}]}),
            )
            .await;
        assert!(r.status.is_success(), "{}", r.body);
        env.run().await;
        let mut want = dns(&["k1"]);
        want.push(stranger.to_owned());
        want.sort();
        assert_eq!(env.members_of("kept").await, want);
        let report = env.t.d().verify(None, |_, _| {}).await;
        assert!(report.clean(), "{report:#?}");
        assert_eq!(report.foreign.len(), 1, "{report:#?}");
        assert_eq!(
            report.foreign[0].problem,
            scim_sync::reconcile::Problem::Foreign(vec![stranger.to_owned()])
        );
    }
}

/// `foreign_members = "remove"`: drift repair removes a value added by hand (as every release
/// before the policy did).
#[tokio::test]
async fn foreign_member_values_are_removed_under_remove() {
    for backend in BACKENDS {
        let env = start(backend, "remove").await;
        let ids = env.users(&["x1", "x2"]).await;
        let _g = env.create_group("removed", &[&ids[0], &ids[1]]).await;
        env.run().await;
        let stranger = "uid=stranger,ou=people,dc=example,dc=com";
        env.add_by_hand("removed", stranger).await;
        let report = env.t.d().reconcile_full(None, false, |_, _| {}).await;
        assert_eq!(report.failed, 0, "{report:#?}");
        assert_eq!(env.members_of("removed").await, dns(&["x1", "x2"]));
        let report = env.t.d().verify(None, |_, _| {}).await;
        assert!(report.clean() && report.foreign.is_empty(), "{report:#?}");
    }
}

/// A `memberUid` group holds the user's `uid`, which can change while its DN stays (a DN made
/// of something else): the user's settle queues its groups and marks it in them, so the value
/// follows. Before, only a key change queued the groups, and the group kept the old uid with
/// nothing pending.
#[tokio::test]
async fn a_member_uid_that_changes_under_the_same_dn_follows_in_its_groups() {
    let slapd = Slapd::start().await;
    let secrets = tempfile::tempdir().unwrap();
    let pw = secrets.path().join("ldap.pw");
    std::fs::write(&pw, format!("{}\n", slapd.password())).unwrap();
    let toml = format!(
        r#"
[reconcile]
workers = 2
[[targets]]
name = "corp"
type = "ldap"
url = "{url}"
bind_dn = "{bind}"
bind_password_file = "{pw}"
[targets.users]
dn = "cn={{externalId}},{PEOPLE}"
object_classes = ["top", "person", "organizationalPerson", "inetOrgPerson"]
[targets.users.attributes]
sn = "name.familyName"
uid = "userName"
[targets.groups]
dn = "cn={{displayName}},{GROUPS}"
object_classes = ["posixGroup"]
member_attribute = "memberUid"
member_value = "uid"
[targets.groups.attributes]
gidNumber = {{ constant = "5000" }}
"#,
        url = slapd.uri(),
        bind = slapd.bind_dn(),
        pw = pw.display(),
    );
    let t = TestDaemon::start_with(Backend::Sqlite, &toml).await;
    let env = Env {
        t,
        slapd,
        _secrets: secrets,
    };
    let body = |user_name: &str| {
        json!({"schemas": [CORE], "userName": user_name, "externalId": "e1",
               "name": {"givenName": "G", "familyName": "F"}, "active": true})
    };
    let u = env.create_user(&body("uold")).await;
    let other = env
        .create_user(&json!({"schemas": [CORE], "userName": "keeps",
        "externalId": "e2", "name": {"givenName": "G", "familyName": "F"}}))
        .await;
    let _g = env.create_group("posix", &[&u, &other]).await;
    env.run().await;
    assert_eq!(
        sorted(env.attr(&group_dn("posix"), "memberUid").await.unwrap()),
        ["keeps", "uold"]
    );
    let r = env.t.put(&format!("/Users/{u}"), &body("unew")).await;
    assert!(r.status.is_success(), "{}", r.body);
    env.run().await;
    assert!(env.exists(&format!("cn=e1,{PEOPLE}")).await);
    assert_eq!(
        sorted(env.attr(&group_dn("posix"), "memberUid").await.unwrap()),
        ["keeps", "unew"]
    );
    let report = env.t.d().verify(None, |_, _| {}).await;
    assert!(report.clean(), "{report:#?}");
}
