//! LDAP target against a real slapd: every mapping feature, create/modify/rename, each
//! deactivation policy, each membership style, ownership, hostile names, idempotency, dry
//! run and outages; plus the golden mapping cases in `tests/mapping/`.

mod golden;
mod schema;

use crate::harness::slapd::Slapd;
use scim_sync::config::target::{RawTarget, RefBy};
use scim_sync::mapping::{CompiledTarget, Schemas};
use scim_sync::targets::ldap::{LdapTarget, Settings};
use scim_sync::targets::PasswordSource;
use scim_sync::targets::{Change, Desired, ErrorClass, Kind, Outcome, Prior, Target};
use serde_json::{json, Value};
use std::collections::HashMap;

const USERS: &str = r#"
[users]
dn = "uid={userName},ou=People,dc=example,dc=com"
object_classes = ["top", "person", "organizationalPerson", "inetOrgPerson"]
password = "sync"
[users.attributes]
cn = "{name.givenName} {name.familyName}"
sn = { from = "name.familyName", default = "-" }
givenName = "name.givenName"
displayName = { from = "displayName", default = "(none)" }
mail = { from = "emails.value", transform = ["lower"] }
title = { from = "title", transform = ["trim", "upper"] }
o = { constant = "Example Corp" }
departmentNumber = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department"
employeeType = "urn:ietf:params:scim:schemas:extension:ironclad:2.0:User:managementLevel"
employeeNumber = 'emails[type eq "work"].value'
manager = { reference = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager.value", by = "id" }
"#;

/// A target over `slapd` from TOML fragments (`head` = top-level keys, `tail` = extra tables).
fn build(slapd: &Slapd, head: &str, users: &str, tail: &str) -> (CompiledTarget, LdapTarget) {
    let head = if head.contains("url =") {
        head.to_owned()
    } else {
        format!("url = \"{}\"\n{head}", slapd.uri())
    };
    let text = format!(
        "name = \"test\"\ntype = \"ldap\"\nbind_dn = \"{}\"\nbind_password_env = \"UNUSED\"\n{head}\n{users}\n{tail}\n",
        slapd.bind_dn()
    );
    let raw: RawTarget = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    // USERS maps the ironclad extension, which the daemon would declare in [scim].
    let schemas =
        Schemas::new(&["urn:ietf:params:scim:schemas:extension:ironclad:2.0:User".to_owned()]);
    let map = CompiledTarget::compile_with(&raw, 0, &schemas).unwrap();
    let RawTarget::Ldap(l) = &raw else {
        panic!("ldap")
    };
    let mut settings = Settings::from_raw(l, 0).unwrap();
    settings.bind_password = PasswordSource::Value(slapd.password().to_owned());
    (map, LdapTarget::new(settings).unwrap())
}

fn user(name: &str) -> Value {
    json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
        "id": format!("id-{name}"),
        "userName": name,
        "name": {"givenName": "Barbara", "familyName": "Jensen"},
        "emails": [{"value": "B.Jensen@Example.com", "type": "work", "primary": true},
                   {"value": "babs@home.example", "type": "home"}],
        "title": "  engineer ",
        "active": true,
        "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {"department": "R&D"},
        "urn:ietf:params:scim:schemas:extension:ironclad:2.0:User": {"managementLevel": 3}
    })
}

/// Resolves references against users synced so far (id -> DN).
#[derive(Default)]
struct Dir {
    dns: HashMap<String, String>,
}

impl Dir {
    fn desired(&self, map: &CompiledTarget, u: &Value) -> Desired {
        let entry = map
            .render_user(u, &|by, v| {
                assert_eq!(by, RefBy::Id);
                self.dns.get(v).cloned()
            })
            .unwrap();
        Desired {
            kind: Kind::User,
            entry,
            active: u["active"].as_bool().unwrap_or(true),
            members: vec![],
            password_hash: u["password"].as_str().map(str::to_owned),
            role_groups: map.role_groups(u),
            member_changes: None,
        }
    }

    async fn sync(
        &mut self,
        map: &CompiledTarget,
        t: &LdapTarget,
        u: &Value,
        prior: &Prior,
    ) -> Outcome {
        let d = self.desired(map, u);
        let out = t.sync(Change::Upsert(&d), prior, false).await.unwrap();
        if let (Some(id), Some(k)) = (u["id"].as_str(), &out.key) {
            self.dns.insert(id.to_owned(), k.clone());
        }
        out
    }
}

fn prior(o: &Outcome) -> Prior {
    Prior {
        key: o.key.clone(),
        extra: o.extra.clone(),
        ..Prior::default()
    }
}

fn attr(e: &[(String, Vec<String>)], name: &str) -> Vec<String> {
    e.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

fn group_desired(map: &CompiledTarget, g: &Value, members: Vec<String>) -> Desired {
    Desired {
        kind: Kind::Group,
        entry: map.render_group(g).unwrap(),
        active: true,
        members,
        password_hash: None,
        role_groups: vec![],
        member_changes: None,
    }
}

#[tokio::test]
async fn user_create_maps_every_feature() {
    let slapd = Slapd::start().await;
    let (map, t) = build(&slapd, "", USERS, "");
    t.healthcheck().await.unwrap();
    let mut dir = Dir::default();
    let boss = dir.sync(&map, &t, &user("boss"), &Prior::default()).await;
    assert_eq!(
        boss.key.as_deref(),
        Some("uid=boss,ou=People,dc=example,dc=com")
    );
    let mut u = user("bjensen");
    u["urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"]["manager"] =
        json!({"value": "id-boss"});
    assert_eq!(map.references(&u), vec![(RefBy::Id, "id-boss".to_owned())]);
    let out = dir.sync(&map, &t, &u, &Prior::default()).await;
    assert_eq!(
        out.changes,
        vec!["add: uid=bjensen,ou=People,dc=example,dc=com".to_owned()]
    );
    let e = slapd
        .entry("uid=bjensen,ou=People,dc=example,dc=com", &["*"])
        .await
        .unwrap();
    assert_eq!(attr(&e, "cn"), ["Barbara Jensen"]);
    assert_eq!(attr(&e, "sn"), ["Jensen"]);
    assert_eq!(attr(&e, "displayname"), ["(none)"]);
    assert_eq!(
        attr(&e, "mail"),
        ["b.jensen@example.com", "babs@home.example"]
    );
    assert_eq!(attr(&e, "title"), ["ENGINEER"]);
    assert_eq!(attr(&e, "o"), ["Example Corp"]);
    assert_eq!(attr(&e, "departmentnumber"), ["R&D"]);
    assert_eq!(attr(&e, "employeetype"), ["3"]);
    assert_eq!(attr(&e, "employeenumber"), ["B.Jensen@Example.com"]);
    assert_eq!(
        attr(&e, "manager"),
        ["uid=boss,ou=People,dc=example,dc=com"]
    );
    assert_eq!(attr(&e, "uid"), ["bjensen"]);
    assert_eq!(out.extra.as_ref().unwrap().uid.as_deref(), Some("bjensen"));
}

#[tokio::test]
async fn modify_touches_only_mapped_attributes_and_is_idempotent() {
    let slapd = Slapd::start().await;
    let (map, t) = build(&slapd, "", USERS, "");
    let mut dir = Dir::default();
    let mut u = user("mod");
    let o1 = dir.sync(&map, &t, &u, &Prior::default()).await;
    let dn = o1.key.clone().unwrap();
    let mut admin = slapd.admin().await;
    admin
        .modify(
            &dn,
            vec![ldap3::Mod::Add("description", ["set by hand"].into())],
        )
        .await
        .unwrap()
        .success()
        .unwrap();
    u["title"] = json!("manager");
    u["displayName"] = json!("Babs");
    u["emails"] =
        json!([{"value": "new@example.com", "type": "work"}, {"value": "babs@home.example"}]);
    let o2 = dir.sync(&map, &t, &u, &prior(&o1)).await;
    assert_eq!(o2.changes.len(), 1, "{:?}", o2.changes);
    assert!(
        o2.changes[0].starts_with(&format!("modify: {dn} / ")),
        "{:?}",
        o2.changes
    );
    assert!(o2.changes[0].contains("replace: title"), "{:?}", o2.changes);
    let e = slapd.entry(&dn, &["*"]).await.unwrap();
    assert_eq!(attr(&e, "description"), ["set by hand"]);
    assert_eq!(attr(&e, "title"), ["MANAGER"]);
    assert_eq!(attr(&e, "displayname"), ["Babs"]);
    assert_eq!(attr(&e, "mail"), ["babs@home.example", "new@example.com"]);
    // Removing a source value deletes the attribute.
    u.as_object_mut().unwrap().remove("title");
    let o3 = dir.sync(&map, &t, &u, &prior(&o2)).await;
    assert!(o3.changes[0].contains("delete: title"), "{:?}", o3.changes);
    assert!(attr(&slapd.entry(&dn, &["*"]).await.unwrap(), "title").is_empty());
    // Twice: nothing left to do.
    let o4 = dir.sync(&map, &t, &u, &prior(&o3)).await;
    assert!(o4.changes.is_empty(), "{:?}", o4.changes);
    assert_eq!(o4.key, o3.key);
}

#[tokio::test]
async fn rename_user_and_group() {
    let slapd = Slapd::start().await;
    let groups = r#"
[groups]
dn = "cn={displayName},ou=Groups,dc=example,dc=com"
object_classes = ["groupOfNames"]
placeholder_member = "cn=nobody,dc=example,dc=com"
[groups.attributes]
description = "externalId"
"#;
    let (map, t) = build(&slapd, "", USERS, groups);
    let mut dir = Dir::default();
    let mut u = user("old");
    let o1 = dir.sync(&map, &t, &u, &Prior::default()).await;
    u["userName"] = json!("new");
    let o2 = dir.sync(&map, &t, &u, &prior(&o1)).await;
    assert_eq!(
        o2.key.as_deref(),
        Some("uid=new,ou=People,dc=example,dc=com")
    );
    assert!(
        o2.changes[0].starts_with("modrdn: uid=old,"),
        "{:?}",
        o2.changes
    );
    assert!(slapd
        .entry("uid=old,ou=People,dc=example,dc=com", &["*"])
        .await
        .is_none());
    let e = slapd
        .entry("uid=new,ou=People,dc=example,dc=com", &["*"])
        .await
        .unwrap();
    assert_eq!(attr(&e, "uid"), ["new"]);
    let o3 = dir.sync(&map, &t, &u, &prior(&o2)).await;
    assert!(o3.changes.is_empty(), "{:?}", o3.changes);

    let mut g = json!({"displayName": "Team A", "externalId": "x1"});
    let member = o2.key.clone().unwrap();
    let g1 = t
        .sync(
            Change::Upsert(&group_desired(&map, &g, vec![member.clone()])),
            &Prior::default(),
            false,
        )
        .await
        .unwrap();
    g["displayName"] = json!("Team B");
    let g2 = t
        .sync(
            Change::Upsert(&group_desired(&map, &g, vec![member.clone()])),
            &prior(&g1),
            false,
        )
        .await
        .unwrap();
    assert_eq!(
        g2.key.as_deref(),
        Some("cn=Team B,ou=Groups,dc=example,dc=com")
    );
    assert!(slapd
        .entry("cn=Team A,ou=Groups,dc=example,dc=com", &["*"])
        .await
        .is_none());
    let e = slapd
        .entry("cn=Team B,ou=Groups,dc=example,dc=com", &["*"])
        .await
        .unwrap();
    assert_eq!(attr(&e, "cn"), ["Team B"]);
    assert_eq!(attr(&e, "member"), [member]);
    assert_eq!(attr(&e, "description"), ["x1"]);
}

const DISABLE: &str = r#"
[users.deactivate]
policy = "disable"
set = { pwdAccountLockedTime = "000001010000Z" }
"#;

#[tokio::test]
async fn disable_locks_the_account_and_reactivation_unlocks_it() {
    let slapd = Slapd::start().await;
    let (map, t) = build(&slapd, "", USERS, DISABLE);
    let mut dir = Dir::default();
    let mut u = user("locky");
    u["password"] = json!("pw-Locky-1");
    let o1 = dir.sync(&map, &t, &u, &Prior::default()).await;
    let dn = o1.key.clone().unwrap();
    assert!(slapd.can_bind(&dn, "pw-Locky-1").await);
    u["active"] = json!(false);
    let o2 = dir.sync(&map, &t, &u, &prior(&o1)).await;
    assert!(
        o2.changes[0].contains("replace: pwdaccountlockedtime"),
        "{:?}",
        o2.changes
    );
    assert!(
        !slapd.can_bind(&dn, "pw-Locky-1").await,
        "a disabled user can still bind"
    );
    let e = slapd.entry(&dn, &["pwdAccountLockedTime"]).await.unwrap();
    assert_eq!(attr(&e, "pwdaccountlockedtime"), ["000001010000Z"]);
    let o3 = dir.sync(&map, &t, &u, &prior(&o2)).await;
    assert!(o3.changes.is_empty(), "{:?}", o3.changes);
    u["active"] = json!(true);
    let o4 = dir.sync(&map, &t, &u, &prior(&o3)).await;
    assert!(
        o4.changes[0].contains("delete: pwdaccountlockedtime"),
        "{:?}",
        o4.changes
    );
    assert!(
        slapd.can_bind(&dn, "pw-Locky-1").await,
        "reactivated user cannot bind"
    );
    let e = slapd.entry(&dn, &["pwdAccountLockedTime"]).await.unwrap();
    assert!(attr(&e, "pwdaccountlockedtime").is_empty());
    // A new user created inactive is created locked.
    let mut v = user("born-locked");
    v["active"] = json!(false);
    v["password"] = json!("pw-2");
    let o = dir.sync(&map, &t, &v, &Prior::default()).await;
    assert!(!slapd.can_bind(o.key.as_deref().unwrap(), "pw-2").await);
}

#[tokio::test]
async fn move_policy_moves_and_reactivation_moves_back() {
    let slapd = Slapd::start().await;
    let deact =
        "[users.deactivate]\npolicy = \"move\"\nmove_to = \"ou=Disabled,dc=example,dc=com\"\n";
    let (map, t) = build(&slapd, "", USERS, deact);
    let mut dir = Dir::default();
    let mut u = user("mover");
    let o1 = dir.sync(&map, &t, &u, &Prior::default()).await;
    u["active"] = json!(false);
    let o2 = dir.sync(&map, &t, &u, &prior(&o1)).await;
    assert_eq!(
        o2.key.as_deref(),
        Some("uid=mover,ou=Disabled,dc=example,dc=com")
    );
    assert!(
        o2.changes[0].contains("newsuperior: ou=Disabled,dc=example,dc=com"),
        "{:?}",
        o2.changes
    );
    assert!(slapd
        .entry("uid=mover,ou=People,dc=example,dc=com", &["*"])
        .await
        .is_none());
    assert!(dir.sync(&map, &t, &u, &prior(&o2)).await.changes.is_empty());
    u["active"] = json!(true);
    let o3 = dir.sync(&map, &t, &u, &prior(&o2)).await;
    assert_eq!(
        o3.key.as_deref(),
        Some("uid=mover,ou=People,dc=example,dc=com")
    );
    assert!(slapd
        .entry("uid=mover,ou=Disabled,dc=example,dc=com", &["*"])
        .await
        .is_none());
    assert!(slapd
        .entry("uid=mover,ou=People,dc=example,dc=com", &["*"])
        .await
        .is_some());
}

#[tokio::test]
async fn delete_policy_deletes_and_reactivation_recreates() {
    let slapd = Slapd::start().await;
    let (map, t) = build(
        &slapd,
        "",
        USERS,
        "[users.deactivate]\npolicy = \"delete\"\n",
    );
    let mut dir = Dir::default();
    let mut u = user("gone");
    let o1 = dir.sync(&map, &t, &u, &Prior::default()).await;
    u["active"] = json!(false);
    let o2 = dir.sync(&map, &t, &u, &prior(&o1)).await;
    assert_eq!(o2.key, None);
    assert_eq!(
        o2.changes,
        vec!["delete: uid=gone,ou=People,dc=example,dc=com".to_owned()]
    );
    assert!(slapd
        .entry("uid=gone,ou=People,dc=example,dc=com", &["*"])
        .await
        .is_none());
    u["active"] = json!(true);
    let o3 = dir.sync(&map, &t, &u, &prior(&o2)).await;
    assert_eq!(
        o3.changes,
        vec!["add: uid=gone,ou=People,dc=example,dc=com".to_owned()]
    );
}

#[tokio::test]
async fn scim_delete_removes_the_entry_and_repeats_safely() {
    let slapd = Slapd::start().await;
    let (map, t) = build(&slapd, "", USERS, "");
    let mut dir = Dir::default();
    let o1 = dir.sync(&map, &t, &user("del"), &Prior::default()).await;
    let o2 = t
        .sync(Change::Remove { kind: Kind::User }, &prior(&o1), false)
        .await
        .unwrap();
    assert_eq!(o2.key, None);
    assert!(slapd
        .entry("uid=del,ou=People,dc=example,dc=com", &["*"])
        .await
        .is_none());
    // Repeating (no such object) is done, not an error.
    let o3 = t
        .sync(Change::Remove { kind: Kind::User }, &prior(&o1), false)
        .await
        .unwrap();
    assert_eq!(o3.key, None);
    // on_delete = "disable" keeps the entry, locked.
    let users = USERS.replace(
        "password = \"sync\"",
        "password = \"sync\"\non_delete = \"disable\"",
    );
    let (map, t) = build(&slapd, "", &users, DISABLE);
    let mut u = user("keep");
    u["password"] = json!("pw-keep");
    let o1 = dir.sync(&map, &t, &u, &Prior::default()).await;
    let o2 = t
        .sync(Change::Remove { kind: Kind::User }, &prior(&o1), false)
        .await
        .unwrap();
    assert_eq!(o2.key, o1.key);
    assert!(!slapd.can_bind(o1.key.as_deref().unwrap(), "pw-keep").await);
}

async fn membership(style: &str, member_attr: &str, oc: &str, value: &str, extra_attrs: &str) {
    let slapd = Slapd::start().await;
    let groups = format!(
        r#"
[groups]
dn = "cn={{displayName}},ou=Groups,dc=example,dc=com"
object_classes = ["{oc}"]
member_attribute = "{member_attr}"
member_value = "{value}"
{placeholder}
[groups.attributes]
{extra_attrs}
"#,
        placeholder = if style == "placeholder" {
            "placeholder_member = \"cn=nobody,dc=example,dc=com\""
        } else {
            ""
        }
    );
    let (map, t) = build(&slapd, "", USERS, &groups);
    let mut dir = Dir::default();
    let mut keys = Vec::new();
    for n in ["m1", "m2", "m3"] {
        let o = dir.sync(&map, &t, &user(n), &Prior::default()).await;
        keys.push(
            map.member_key(o.key.as_deref().unwrap(), o.extra.as_ref())
                .unwrap(),
        );
    }
    let g = json!({"displayName": "Crew"});
    let dn = "cn=Crew,ou=Groups,dc=example,dc=com";
    let g1 = t
        .sync(
            Change::Upsert(&group_desired(&map, &g, keys[..2].to_vec())),
            &Prior::default(),
            false,
        )
        .await
        .unwrap();
    let lower = member_attr.to_ascii_lowercase();
    let mut have = attr(&slapd.entry(dn, &["*"]).await.unwrap(), &lower);
    have.sort();
    assert_eq!(have, keys[..2].to_vec());
    let g2 = t
        .sync(
            Change::Upsert(&group_desired(&map, &g, keys[1..].to_vec())),
            &prior(&g1),
            false,
        )
        .await
        .unwrap();
    assert!(
        g2.changes
            .iter()
            .any(|c| c.contains(&format!("add: {lower}: {}", keys[2]))),
        "{:?}",
        g2.changes
    );
    assert!(
        g2.changes
            .iter()
            .any(|c| c.contains(&format!("delete: {lower}: {}", keys[0]))),
        "{:?}",
        g2.changes
    );
    assert!(
        g2.changes.iter().all(|c| !c.contains("replace")),
        "{:?}",
        g2.changes
    );
    let mut have = attr(&slapd.entry(dn, &["*"]).await.unwrap(), &lower);
    have.sort();
    assert_eq!(have, keys[1..].to_vec());
    let g3 = t
        .sync(
            Change::Upsert(&group_desired(&map, &g, keys[1..].to_vec())),
            &prior(&g2),
            false,
        )
        .await
        .unwrap();
    assert!(g3.changes.is_empty(), "{:?}", g3.changes);
    let g4 = t
        .sync(
            Change::Upsert(&group_desired(&map, &g, vec![])),
            &prior(&g3),
            false,
        )
        .await
        .unwrap();
    let have = attr(&slapd.entry(dn, &["*"]).await.unwrap(), &lower);
    if style == "placeholder" {
        assert_eq!(have, ["cn=nobody,dc=example,dc=com"], "{:?}", g4.changes);
        let g5 = t
            .sync(
                Change::Upsert(&group_desired(&map, &g, vec![keys[0].clone()])),
                &prior(&g4),
                false,
            )
            .await
            .unwrap();
        assert_eq!(
            attr(&slapd.entry(dn, &["*"]).await.unwrap(), &lower),
            [keys[0].clone()],
            "{:?}",
            g5.changes
        );
    } else {
        assert!(have.is_empty(), "{have:?}");
    }
}

#[tokio::test]
async fn group_of_names_with_placeholder() {
    membership("placeholder", "member", "groupOfNames", "dn", "").await;
}

#[tokio::test]
async fn group_of_unique_names_placeholder() {
    membership(
        "placeholder",
        "uniqueMember",
        "groupOfUniqueNames",
        "dn",
        "",
    )
    .await;
}

#[tokio::test]
async fn posix_group_member_uid() {
    membership(
        "plain",
        "memberUid",
        "posixGroup",
        "uid",
        "gidNumber = { constant = \"5000\" }",
    )
    .await;
}

#[tokio::test]
async fn role_groups_follow_roles() {
    let slapd = Slapd::start().await;
    let roles = r#"
[[users.role_groups]]
value = "admin"
group = "cn=app-admins,ou=Groups,dc=example,dc=com"
"#;
    let (map, t) = build(&slapd, "", USERS, roles);
    let mut admin = slapd.admin().await;
    admin
        .add(
            "cn=app-admins,ou=Groups,dc=example,dc=com",
            vec![
                ("objectClass", ["groupOfNames"].into()),
                ("cn", ["app-admins"].into()),
                ("member", ["cn=nobody,dc=example,dc=com"].into()),
            ],
        )
        .await
        .unwrap()
        .success()
        .unwrap();
    let mut dir = Dir::default();
    let mut u = user("roley");
    u["roles"] = json!([{"value": "admin"}]);
    let o1 = dir.sync(&map, &t, &u, &Prior::default()).await;
    let g = || async {
        attr(
            &slapd
                .entry("cn=app-admins,ou=Groups,dc=example,dc=com", &["member"])
                .await
                .unwrap(),
            "member",
        )
    };
    assert!(g().await.contains(&o1.key.clone().unwrap()));
    u["roles"] = json!([]);
    let o2 = dir.sync(&map, &t, &u, &prior(&o1)).await;
    assert_eq!(
        g().await,
        ["cn=nobody,dc=example,dc=com"],
        "{:?}",
        o2.changes
    );

    // remove_from_groups: deactivation leaves role groups, reactivation rejoins.
    let deact = format!("{roles}\n[users.deactivate]\npolicy = \"disable\"\nset = {{ description = \"disabled\" }}\nremove_from_groups = true\n");
    let (map, t) = build(&slapd, "", USERS, &deact);
    assert!(map.remove_inactive_from_groups());
    u["roles"] = json!([{"value": "admin"}]);
    let o3 = dir.sync(&map, &t, &u, &prior(&o2)).await;
    assert_eq!(g().await.len(), 2);
    u["active"] = json!(false);
    let o4 = dir.sync(&map, &t, &u, &prior(&o3)).await;
    assert_eq!(
        g().await,
        ["cn=nobody,dc=example,dc=com"],
        "{:?}",
        o4.changes
    );
    u["active"] = json!(true);
    let o5 = dir.sync(&map, &t, &u, &prior(&o4)).await;
    assert!(
        g().await.contains(&o5.key.clone().unwrap()),
        "{:?}",
        o5.changes
    );
    // A SCIM delete removes the user from its role groups too.
    t.sync(Change::Remove { kind: Kind::User }, &prior(&o5), false)
        .await
        .unwrap();
    assert_eq!(g().await, ["cn=nobody,dc=example,dc=com"]);
}

/// A first create sends the add at once (no read first); when the server refuses it for
/// another reason before it looks at the DN (slapd checks the schema first: here the mapping
/// leaves out `sn`, which the adopted entry has), an entry at the DN is still decided as the
/// read-first path decided: adopted, and modified (second reader of issue 9's optimistic add).
#[tokio::test]
async fn an_add_refused_for_its_schema_still_adopts_the_entry_at_the_dn() {
    let slapd = Slapd::start().await;
    let mut admin = slapd.admin().await;
    admin
        .add(
            "uid=taken,ou=People,dc=example,dc=com",
            vec![
                ("objectClass", ["inetOrgPerson"].into()),
                ("uid", ["taken"].into()),
                ("cn", ["Someone Else"].into()),
                ("sn", ["Else"].into()),
            ],
        )
        .await
        .unwrap()
        .success()
        .unwrap();
    let users = USERS.replace("sn = { from = \"name.familyName\", default = \"-\" }\n", "");
    assert!(!users.contains("sn ="), "{users}");
    let (map, t) = build(&slapd, "on_existing = \"adopt\"", &users, "");
    let d = Dir::default().desired(&map, &user("taken"));
    let o = t
        .sync(Change::Upsert(&d), &Prior::default(), false)
        .await
        .unwrap();
    assert_eq!(o.changes[0], "adopt: uid=taken,ou=People,dc=example,dc=com");
    let e = slapd
        .entry("uid=taken,ou=People,dc=example,dc=com", &["*"])
        .await
        .unwrap();
    assert_eq!(attr(&e, "cn"), ["Barbara Jensen"]);
    assert_eq!(attr(&e, "sn"), ["Else"]);
}

#[tokio::test]
async fn ownership_conflict_and_adopt() {
    let slapd = Slapd::start().await;
    let mut admin = slapd.admin().await;
    admin
        .add(
            "uid=taken,ou=People,dc=example,dc=com",
            vec![
                ("objectClass", ["inetOrgPerson"].into()),
                ("uid", ["taken"].into()),
                ("cn", ["Someone Else"].into()),
                ("sn", ["Else"].into()),
                ("description", ["local"].into()),
            ],
        )
        .await
        .unwrap()
        .success()
        .unwrap();
    let before = slapd.dump("ou=People,dc=example,dc=com").await;
    let (map, t) = build(&slapd, "", USERS, "");
    let dir = Dir::default();
    let d = dir.desired(&map, &user("taken"));
    let err = t
        .sync(Change::Upsert(&d), &Prior::default(), false)
        .await
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::Permanent);
    assert!(
        err.message
            .contains("entry exists and is not managed by scim-sync"),
        "{}",
        err.message
    );
    assert_eq!(slapd.dump("ou=People,dc=example,dc=com").await, before);
    let (_, t) = build(&slapd, "on_existing = \"adopt\"", USERS, "");
    let o = t
        .sync(Change::Upsert(&d), &Prior::default(), false)
        .await
        .unwrap();
    assert_eq!(o.changes[0], "adopt: uid=taken,ou=People,dc=example,dc=com");
    let e = slapd
        .entry("uid=taken,ou=People,dc=example,dc=com", &["*"])
        .await
        .unwrap();
    assert_eq!(attr(&e, "cn"), ["Barbara Jensen"]);
    assert_eq!(attr(&e, "description"), ["local"]);
}

#[tokio::test]
async fn hostile_names_round_trip_exactly() {
    let slapd = Slapd::start().await;
    let (map, t) = build(&slapd, "", USERS, "");
    let mut dir = Dir::default();
    let mut previous: Option<String> = None;
    for name in [
        r#",+="\<>;#"#,
        " lead and trail ",
        "#hash",
        "Jürgen Öß 名前",
        r"back\slash",
        "a,b=c+d",
    ] {
        let mut u = user(name);
        u["id"] = json!(format!("hostile-{name}"));
        u["name"]["givenName"] = json!(name);
        // Each hostile user's manager is the previous hostile user (a DN-valued attribute).
        if let Some(prev) = &previous {
            u["urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"]["manager"] =
                json!({ "value": prev });
        }
        previous = Some(format!("hostile-{name}"));
        let o1 = dir.sync(&map, &t, &u, &Prior::default()).await;
        let dn = o1.key.clone().unwrap();
        let e = slapd
            .entry(&dn, &["*"])
            .await
            .unwrap_or_else(|| panic!("no entry at {dn}"));
        assert_eq!(attr(&e, "uid"), [name.to_owned()], "{dn}");
        assert_eq!(attr(&e, "givenname"), [name.to_owned()], "{dn}");
        let o2 = dir.sync(&map, &t, &u, &prior(&o1)).await;
        assert!(o2.changes.is_empty(), "{name:?}: {:?}", o2.changes);
        // Rename to another hostile name and back.
        let mut v = u.clone();
        v["userName"] = json!(format!("{name}+2"));
        let o3 = dir.sync(&map, &t, &v, &prior(&o2)).await;
        assert!(slapd.entry(&dn, &["*"]).await.is_none());
        let e = slapd
            .entry(o3.key.as_deref().unwrap(), &["*"])
            .await
            .unwrap();
        assert_eq!(attr(&e, "uid"), [format!("{name}+2")]);
        let o4 = dir.sync(&map, &t, &u, &prior(&o3)).await;
        assert_eq!(o4.key.as_deref(), Some(dn.as_str()));
    }
}

#[tokio::test]
async fn dry_run_changes_nothing_and_reports_the_plan() {
    let slapd = Slapd::start().await;
    let (map, t) = build(&slapd, "", USERS, DISABLE);
    let dir = Dir::default();
    let before = slapd.dump(slapd.base()).await;
    let mut u = user("dry");
    let d = dir.desired(&map, &u);
    let plan = t
        .sync(Change::Upsert(&d), &Prior::default(), true)
        .await
        .unwrap();
    assert_eq!(
        plan.changes,
        vec!["add: uid=dry,ou=People,dc=example,dc=com".to_owned()]
    );
    assert_eq!(slapd.dump("dc=example,dc=com").await, before);
    let o1 = t
        .sync(Change::Upsert(&d), &Prior::default(), false)
        .await
        .unwrap();
    let before = slapd.dump("dc=example,dc=com").await;
    u["userName"] = json!("dry2");
    u["title"] = json!("boss");
    u["active"] = json!(false);
    let d = dir.desired(&map, &u);
    let plan = t.sync(Change::Upsert(&d), &prior(&o1), true).await.unwrap();
    assert!(
        plan.changes[0].starts_with("modrdn: uid=dry,ou=People"),
        "{:?}",
        plan.changes
    );
    assert!(
        plan.changes[1].contains("replace: title"),
        "{:?}",
        plan.changes
    );
    assert!(
        plan.changes[1].contains("replace: pwdaccountlockedtime"),
        "{:?}",
        plan.changes
    );
    let del = t
        .sync(Change::Remove { kind: Kind::User }, &prior(&o1), true)
        .await
        .unwrap();
    assert_eq!(
        del.changes,
        vec!["delete: uid=dry,ou=People,dc=example,dc=com".to_owned()]
    );
    assert_eq!(slapd.dump("dc=example,dc=com").await, before);
}

#[tokio::test]
async fn outage_is_transient_and_the_target_reconnects() {
    let mut slapd = Slapd::start().await;
    let (map, t) = build(
        &slapd,
        "connect_timeout_secs = 2\ntimeout_secs = 5",
        USERS,
        "",
    );
    let mut dir = Dir::default();
    let o1 = dir.sync(&map, &t, &user("before"), &Prior::default()).await;
    slapd.stop().await;
    let d = dir.desired(&map, &user("during"));
    let err = t
        .sync(Change::Upsert(&d), &Prior::default(), false)
        .await
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::Transient, "{err:?}");
    let err = t.healthcheck().await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Transient, "{err:?}");
    slapd.start_again().await;
    let o2 = t
        .sync(Change::Upsert(&d), &Prior::default(), false)
        .await
        .unwrap();
    assert_eq!(o2.changes.len(), 1);
    assert!(dir
        .sync(&map, &t, &user("before"), &prior(&o1))
        .await
        .changes
        .is_empty());
}

#[tokio::test]
async fn wrong_password_is_transient_with_an_operator_message() {
    let slapd = Slapd::start().await;
    let (_, t) = build(&slapd, "", USERS, "");
    let mut s = t.settings().clone();
    s.bind_password = PasswordSource::Value("wrong".into());
    let t = LdapTarget::new(s).unwrap();
    let err = t.healthcheck().await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Transient);
    assert_eq!(err.code.as_deref(), Some("49"));
    assert!(err.message.contains("operator must act"), "{}", err.message);
}

#[tokio::test]
async fn missing_parent_is_permanent() {
    let slapd = Slapd::start().await;
    let users = USERS.replace("ou=People,dc=example", "ou=Nowhere,dc=example");
    let (map, t) = build(&slapd, "", &users, "");
    let d = Dir::default().desired(&map, &user("orphan"));
    let err = t
        .sync(Change::Upsert(&d), &Prior::default(), false)
        .await
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::Permanent, "{err:?}");
    assert_eq!(err.code.as_deref(), Some("32"));
}

#[tokio::test]
async fn starttls_and_ldaps_verify_the_server_certificate() {
    let slapd = Slapd::start_tls().await;
    let ca = slapd.ca_file();
    let head = format!("starttls = true\nca_file = \"{}\"", ca.display());
    let (map, t) = build(&slapd, &head, USERS, "");
    t.healthcheck().await.unwrap();
    let mut dir = Dir::default();
    let o = dir.sync(&map, &t, &user("tls"), &Prior::default()).await;
    assert_eq!(o.changes.len(), 1);
    let head = format!(
        "url = \"{}\"\nca_file = \"{}\"",
        slapd.ldaps_uri(),
        ca.display()
    );
    let (_, t) = build(&slapd, &head, USERS, "");
    t.healthcheck().await.unwrap();
    // A server certificate from another CA is refused, for StartTLS and ldaps alike.
    let other = slapd.other_ca_file();
    for head in [
        format!("starttls = true\nca_file = \"{}\"", other.display()),
        format!(
            "url = \"{}\"\nca_file = \"{}\"",
            slapd.ldaps_uri(),
            other.display()
        ),
    ] {
        let (map, t) = build(&slapd, &head, USERS, "");
        let err = t.healthcheck().await.unwrap_err();
        assert_eq!(err.class, ErrorClass::Transient, "{err:?}");
        let d = Dir::default().desired(&map, &user("never"));
        assert!(t
            .sync(Change::Upsert(&d), &Prior::default(), false)
            .await
            .is_err());
    }
    assert!(slapd
        .entry("uid=never,ou=People,dc=example,dc=com", &["*"])
        .await
        .is_none());
}

#[tokio::test]
async fn large_groups_change_in_chunks() {
    let slapd = Slapd::start().await;
    let groups = r#"
[groups]
dn = "cn={displayName},ou=Groups,dc=example,dc=com"
object_classes = ["groupOfNames"]
"#;
    let (map, t) = build(&slapd, "", USERS, groups);
    let members: Vec<String> = (0..1201)
        .map(|i| format!("uid=u{i},ou=People,dc=example,dc=com"))
        .collect();
    let g = json!({"displayName": "Big"});
    let g1 = t
        .sync(
            Change::Upsert(&group_desired(&map, &g, members.clone())),
            &Prior::default(),
            false,
        )
        .await
        .unwrap();
    // add (500) + 2 modifies (500, 201)
    assert_eq!(
        g1.changes.len(),
        3,
        "{:?}",
        g1.changes.iter().map(|c| c.len()).collect::<Vec<_>>()
    );
    let e = slapd
        .entry("cn=Big,ou=Groups,dc=example,dc=com", &["member"])
        .await
        .unwrap();
    assert_eq!(attr(&e, "member").len(), 1201);
    let g2 = t
        .sync(
            Change::Upsert(&group_desired(&map, &g, members[600..].to_vec())),
            &prior(&g1),
            false,
        )
        .await
        .unwrap();
    assert_eq!(g2.changes.len(), 2, "600 deletions in two chunks");
    let e = slapd
        .entry("cn=Big,ou=Groups,dc=example,dc=com", &["member"])
        .await
        .unwrap();
    assert_eq!(attr(&e, "member").len(), 601);
    let g3 = t
        .sync(
            Change::Upsert(&group_desired(&map, &g, members[600..].to_vec())),
            &prior(&g2),
            false,
        )
        .await
        .unwrap();
    assert!(g3.changes.is_empty());
}

#[tokio::test]
async fn hung_server_times_out_as_transient_and_recovers() {
    let slapd = Slapd::start().await;
    let (map, t) = build(
        &slapd,
        "connect_timeout_secs = 1\ntimeout_secs = 1",
        USERS,
        "",
    );
    let mut dir = Dir::default();
    dir.sync(&map, &t, &user("first"), &Prior::default()).await;
    slapd.pause();
    let d = dir.desired(&map, &user("second"));
    let now_ms = || {
        i64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis(),
        )
        .unwrap()
    };
    // The intent the reconciler records before the first attempt.
    let intent_ms = now_ms();
    let started = std::time::Instant::now();
    let err = t
        .sync(Change::Upsert(&d), &Prior::default(), false)
        .await
        .unwrap_err();
    let waited = started.elapsed();
    slapd.resume();
    assert_eq!(err.class, ErrorClass::Transient, "{err:?}");
    assert_eq!(err.code.as_deref(), Some("timeout"), "{err:?}");
    assert!(
        waited < std::time::Duration::from_secs(10),
        "waited {waited:?}"
    );
    // The timed-out add may still have been carried out once slapd resumed: with the intent the
    // reconciler records before a first create, the retry resumes that entry instead of
    // refusing it as unmanaged (and otherwise creates it). One change either way.
    // The retry's intent as the reconciler records it: first and previous attempt at
    // `intent_ms`, this attempt now (an entry of ours created in between is the timed-out add).
    let intent = Prior {
        key: None,
        extra: Some(
            serde_json::json!({"creating": d.entry.key, "since_ms": intent_ms,
                                       "prev_attempt_ms": intent_ms, "attempt_ms": now_ms()})
            .into(),
        ),
        ..Prior::default()
    };
    // The recovery runs with a generous operation timeout: slapd, just resumed, first carries out
    // the queued add (an fsync), and on a loaded machine that alone took over the 1 s this
    // test gives the hung phase (a flake: "add uid=second: timed out" on the retry).
    let (_, recovering) = build(
        &slapd,
        "connect_timeout_secs = 1\ntimeout_secs = 10",
        USERS,
        "",
    );
    let o = recovering
        .sync(Change::Upsert(&d), &intent, false)
        .await
        .unwrap();
    assert_eq!(o.changes.len(), 1, "{:?}", o.changes);
}

/// Issue 8 item 7, role groups: with `remove_from_groups`, a deactivated user leaves its role
/// groups before its own entry is modified, so an entry modify the server refuses (here every
/// deactivation: `dc` is not allowed on inetOrgPerson) does not keep it a member.
#[tokio::test]
async fn a_deactivation_leaves_role_groups_even_when_the_entry_modify_fails() {
    let slapd = Slapd::start().await;
    let config = r#"
[[users.role_groups]]
value = "admin"
group = "cn=app-admins,ou=Groups,dc=example,dc=com"

[users.deactivate]
policy = "disable"
set = { dc = "refused" }
remove_from_groups = true
"#;
    let (map, t) = build(&slapd, "", USERS, config);
    let mut admin = slapd.admin().await;
    admin
        .add(
            "cn=app-admins,ou=Groups,dc=example,dc=com",
            vec![
                ("objectClass", ["groupOfNames"].into()),
                ("cn", ["app-admins"].into()),
                ("member", ["cn=nobody,dc=example,dc=com"].into()),
            ],
        )
        .await
        .unwrap()
        .success()
        .unwrap();
    let members = || async {
        attr(
            &slapd
                .entry("cn=app-admins,ou=Groups,dc=example,dc=com", &["member"])
                .await
                .unwrap(),
            "member",
        )
    };
    let mut dir = Dir::default();
    let mut u = user("revoked");
    u["roles"] = json!([{"value": "admin"}]);
    let o1 = dir.sync(&map, &t, &u, &Prior::default()).await;
    assert!(members().await.contains(&o1.key.clone().unwrap()));
    u["active"] = json!(false);
    let err = t
        .sync(Change::Upsert(&dir.desired(&map, &u)), &prior(&o1), false)
        .await
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::Permanent, "{err:?}");
    assert_eq!(
        members().await,
        ["cn=nobody,dc=example,dc=com"],
        "the deactivated user is still in its role group: {err:?}"
    );
    // Retried (the same failure): still out, nothing else changes.
    let again = t
        .sync(Change::Upsert(&dir.desired(&map, &u)), &prior(&o1), false)
        .await
        .unwrap_err();
    assert_eq!(again.class, ErrorClass::Permanent, "{again:?}");
    assert_eq!(members().await, ["cn=nobody,dc=example,dc=com"]);
}

/// slapd killed and restarted (issue 10, second reader): the reconnected connection is the
/// live one again (writes go out on it), and the instance fence is checked after the
/// reconnect: a write whose fence ran out during the outage is refused (`lease`) and sent on
/// no connection, and one under a live fence goes out.
#[tokio::test]
async fn after_a_restart_the_reconnected_connection_writes_under_a_fence_checked_after_it() {
    use scim_sync::targets::Lease;
    use std::sync::atomic::{AtomicI64, Ordering};
    use std::sync::Arc;
    let mut slapd = Slapd::start().await;
    let (map, t) = build(
        &slapd,
        "connect_timeout_secs = 2\ntimeout_secs = 5",
        USERS,
        "",
    );
    let mut dir = Dir::default();
    dir.sync(&map, &t, &user("before"), &Prior::default()).await;
    slapd.stop().await;
    slapd.start_again().await;
    let now = scim_sync::clock::now_ms();
    let until = Arc::new(AtomicI64::new(now + 600_000));
    // 4 s left on the fence: less than the 5 s operation timeout.
    let alive = Arc::new(AtomicI64::new(now + 4_000));
    let lease = Lease::until(until).fenced(alive.clone(), Arc::new(AtomicI64::new(1)), 1);
    let prior = Prior {
        lease,
        ..Prior::default()
    };
    let d = dir.desired(&map, &user("fenced"));
    let dn = "uid=fenced,ou=People,dc=example,dc=com";
    let err = t.sync(Change::Upsert(&d), &prior, false).await.unwrap_err();
    assert_eq!(err.code.as_deref(), Some("lease"), "{err:?}");
    assert!(slapd.entry(dn, &["uid"]).await.is_none());
    // The fence moved (a heartbeat): the write goes out on the reconnected connection (the
    // first attempt may still meet the old connection closing: a transient error).
    alive.store(scim_sync::clock::now_ms() + 600_000, Ordering::SeqCst);
    let first = t.sync(Change::Upsert(&d), &prior, false).await;
    let out = match first {
        Ok(out) => out,
        Err(e) => {
            assert_eq!(e.class, ErrorClass::Transient, "{e:?}");
            t.sync(Change::Upsert(&d), &prior, false).await.unwrap()
        }
    };
    assert_eq!(out.changes.len(), 1, "{:?}", out.changes);
    assert!(slapd.entry(dn, &["uid"]).await.is_some());
}
