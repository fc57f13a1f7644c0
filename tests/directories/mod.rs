//! The same lifecycle against each real directory: OpenLDAP (a slapd per test, with the refint
//! overlay), 389 Directory Server (MemberOf and referential integrity on) and a Samba AD DC (one each per test binary, `harness::ds389` / `harness::samba`;
//! every test works below an OU of its own). Create / update / rename / a move found again by
//! the stable id / disable / reactivate / delete, a group lifecycle, a 5,000-member group with a
//! removal, a password set, the result codes of value operations as each server answers them,
//! and the flavour detected from the root DSE. One `async fn` per case, one `#[tokio::test]`
//! per case and directory (`openldap_*`, `ds389_*`, `ad_*`).

use crate::harness::server::Endpoint;
use crate::harness::slapd::{Attrs, Slapd};
use ldap3::{Ldap, Mod, Scope, SearchEntry};
use scim_sync::config::target::RawTarget;
use scim_sync::mapping::{CompiledTarget, Schemas};
use scim_sync::targets::ldap::flavour::{self, Flavour, ValueOp};
use scim_sync::targets::ldap::{LdapTarget, Settings};
use scim_sync::targets::secret::PasswordSource;
use scim_sync::targets::{Change, Desired, Kind, Outcome, Prior, Target};
use serde_json::{json, Value};
use std::collections::HashSet;

/// One directory under test, with an OU of this test's own.
struct Dir {
    flavour: Flavour,
    endpoint: Endpoint,
    /// `ou=t-…,<base>`, holding `ou=People` and `ou=Groups`.
    ou: String,
    _slapd: Option<Slapd>,
}

impl Dir {
    async fn new(flavour: Flavour) -> Dir {
        let (endpoint, slapd) = match flavour {
            Flavour::OpenLdap => {
                // With refint, as 389-DS runs with its plugins: their writes and ours meet.
                let s = Slapd::start_with_refint().await;
                let e = Endpoint {
                    uri: s.uri(),
                    ldaps_uri: None,
                    ca_file: None,
                    bind_dn: s.bind_dn().to_owned(),
                    password: s.password().to_owned(),
                    base: s.base().to_owned(),
                };
                (e, Some(s))
            }
            Flavour::Ds389 => (
                tokio::task::spawn_blocking(|| crate::harness::ds389::shared().endpoint.clone())
                    .await
                    .unwrap(),
                None,
            ),
            Flavour::Ad => (
                tokio::task::spawn_blocking(|| crate::harness::samba::shared().endpoint.clone())
                    .await
                    .unwrap(),
                None,
            ),
        };
        let tag = &uuid::Uuid::new_v4().simple().to_string()[..12];
        let (ou_attr, ou) = if flavour == Flavour::Ad {
            ("OU", format!("OU=t{tag},{}", endpoint.base))
        } else {
            ("ou", format!("ou=t{tag},{}", endpoint.base))
        };
        let dir = Dir {
            flavour,
            endpoint,
            ou,
            _slapd: slapd,
        };
        let mut admin = dir.admin().await;
        for dn in [
            dir.ou.clone(),
            format!("{ou_attr}=People,{}", dir.ou),
            format!("{ou_attr}=Groups,{}", dir.ou),
        ] {
            let name = dn.split(',').next().unwrap().split('=').nth(1).unwrap();
            admin
                .add(
                    &dn,
                    vec![
                        ("objectClass", ["top", "organizationalUnit"].into()),
                        ("ou", [name].into()),
                    ],
                )
                .await
                .unwrap()
                .success()
                .unwrap_or_else(|e| panic!("add {dn}: {e}"));
        }
        dir
    }

    async fn admin(&self) -> Ldap {
        self.endpoint.admin().await
    }

    fn people(&self) -> String {
        let a = if self.flavour == Flavour::Ad {
            "OU"
        } else {
            "ou"
        };
        format!("{a}=People,{}", self.ou)
    }

    fn groups(&self) -> String {
        let a = if self.flavour == Flavour::Ad {
            "OU"
        } else {
            "ou"
        };
        format!("{a}=Groups,{}", self.ou)
    }

    /// The DN our mapping gives the user `name`.
    fn user_dn(&self, name: &str) -> String {
        match self.flavour {
            Flavour::Ad => format!("CN={name},{}", self.people()),
            _ => format!("uid={name},{}", self.people()),
        }
    }

    fn group_dn(&self, name: &str) -> String {
        let a = if self.flavour == Flavour::Ad {
            "CN"
        } else {
            "cn"
        };
        format!("{a}={name},{}", self.groups())
    }

    /// The target TOML for this directory: `head` adds top-level keys, `users_extra` keys of
    /// `[users]`.
    fn toml(&self, flavour_line: bool, users_extra: &str) -> String {
        let flavour = if flavour_line {
            format!("flavour = \"{}\"\n", self.flavour.name())
        } else {
            String::new()
        };
        let e = &self.endpoint;
        match self.flavour {
            Flavour::Ad => format!(
                r#"name = "dir"
type = "ldap"
url = "{url}"
ca_file = "{ca}"
{flavour}bind_dn = "{bind}"
bind_password_env = "UNUSED"
[users]
dn = "CN={{userName}},{people}"
object_classes = ["top", "person", "organizationalPerson", "user"]
{users_extra}
[users.attributes]
sAMAccountName = "userName"
userPrincipalName = "{{userName}}@example.com"
givenName = "name.givenName"
sn = "name.familyName"
displayName = "{{name.givenName}} {{name.familyName}}"
title = "title"
[users.deactivate]
policy = "disable"
[groups]
dn = "CN={{displayName}},{groups}"
object_classes = ["top", "group"]
member_attribute = "member"
[groups.attributes]
description = "externalId"
"#,
                url = e.ldaps_uri.as_deref().unwrap(),
                ca = e.ca_file.as_deref().unwrap().display(),
                bind = e.bind_dn,
                people = self.people(),
                groups = self.groups(),
            ),
            _ => format!(
                r#"name = "dir"
type = "ldap"
url = "{url}"
{flavour}bind_dn = "{bind}"
bind_password_env = "UNUSED"
[users]
dn = "uid={{userName}},{people}"
object_classes = ["top", "person", "organizationalPerson", "inetOrgPerson"]
{users_extra}
[users.attributes]
cn = "{{name.givenName}} {{name.familyName}}"
givenName = "name.givenName"
sn = "name.familyName"
displayName = "{{name.givenName}} {{name.familyName}}"
title = "title"
[users.deactivate]
policy = "disable"
[groups]
dn = "cn={{displayName}},{groups}"
object_classes = ["top", "groupOfNames"]
member_attribute = "member"
placeholder_member = "cn=nobody,{base}"
[groups.attributes]
description = "externalId"
"#,
                url = e.uri,
                bind = e.bind_dn,
                people = self.people(),
                groups = self.groups(),
                base = e.base,
            ),
        }
    }

    fn target(&self, users_extra: &str) -> (CompiledTarget, LdapTarget) {
        self.target_from(&self.toml(true, users_extra))
    }

    fn target_from(&self, text: &str) -> (CompiledTarget, LdapTarget) {
        let raw: RawTarget = toml::from_str(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let map = CompiledTarget::compile_with(&raw, 0, &Schemas::new(&[])).unwrap();
        let RawTarget::Ldap(l) = &raw else {
            panic!("ldap")
        };
        let mut settings = Settings::from_raw(l, 0).unwrap();
        settings.bind_password = PasswordSource::Value(self.endpoint.password.clone());
        (map, LdapTarget::new(settings).unwrap())
    }

    async fn entry(&self, dn: &str, attrs: &[&str]) -> Option<Attrs> {
        self.endpoint.entry(dn, attrs).await
    }

    /// The stable id as the server shows it (AD: `objectGUID` bytes as hex).
    async fn id_of(&self, dn: &str) -> Option<String> {
        let mut admin = self.admin().await;
        let attr = self.flavour.id_attribute();
        let (rs, _) = admin
            .search(dn, Scope::Base, "(objectClass=*)", vec![attr])
            .await
            .unwrap()
            .success()
            .ok()?;
        let e = SearchEntry::construct(rs.into_iter().next()?);
        if self.flavour == Flavour::Ad {
            let bytes = e
                .bin_attrs
                .values()
                .next()
                .and_then(|v| v.first().cloned())
                .or_else(|| {
                    e.attrs
                        .values()
                        .next()
                        .and_then(|v| v.first().map(|s| s.clone().into_bytes()))
                });
            return bytes.map(|b| flavour::id_from_binary(&b));
        }
        e.attrs.values().next().and_then(|v| v.first().cloned())
    }

    /// `n` users `m0..` added by the admin (for large groups), in parallel batches.
    async fn bulk_users(&self, prefix: &str, n: usize) -> Vec<String> {
        let dns: Vec<String> = (0..n)
            .map(|i| self.user_dn(&format!("{prefix}{i}")))
            .collect();
        let admin = self.admin().await;
        for chunk in dns.chunks(50) {
            let futs = chunk.iter().map(|dn| {
                let mut l = admin.clone();
                let flavour = self.flavour;
                async move {
                    let name = dn.split(',').next().unwrap().split('=').nth(1).unwrap();
                    let attrs: Vec<(&str, HashSet<&str>)> = if flavour == Flavour::Ad {
                        vec![
                            (
                                "objectClass",
                                ["top", "person", "organizationalPerson", "user"].into(),
                            ),
                            ("sAMAccountName", [name].into()),
                        ]
                    } else {
                        vec![
                            ("objectClass", ["top", "person", "inetOrgPerson"].into()),
                            ("cn", [name].into()),
                            ("sn", [name].into()),
                            ("uid", [name].into()),
                        ]
                    };
                    l.add(dn, attrs)
                        .await
                        .unwrap()
                        .success()
                        .unwrap_or_else(|e| panic!("add {dn}: {e}"));
                }
            });
            futures_util::future::join_all(futs).await;
        }
        dns
    }

    /// Every value of `attr` of `dn`, read as the admin; ranged on AD, through the same merge
    /// as the target (`flavour::merge_ranged`).
    async fn values(&self, dn: &str, attr: &str) -> Vec<String> {
        let mut admin = self.admin().await;
        let ranged = self.flavour == Flavour::Ad;
        let mut out = std::collections::BTreeMap::new();
        let mut expected = std::collections::BTreeMap::new();
        let mut ask = if ranged {
            flavour::range_request(attr, 0)
        } else {
            attr.to_owned()
        };
        loop {
            let (rs, _) = admin
                .search(dn, Scope::Base, "(objectClass=*)", vec![ask.as_str()])
                .await
                .unwrap()
                .success()
                .unwrap();
            let e = SearchEntry::construct(rs.into_iter().next().unwrap());
            let got = e
                .attrs
                .into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v))
                .collect();
            let next = flavour::merge_ranged(&mut out, got, &expected).unwrap();
            match next.first() {
                Some((a, start)) => {
                    expected.insert(a.clone(), *start);
                    ask = flavour::range_request(a, *start);
                }
                None => break,
            }
        }
        out.remove(&attr.to_ascii_lowercase()).unwrap_or_default()
    }

    /// Whether the account at `dn` is disabled the flavour's way, read from the entry.
    async fn disabled(&self, dn: &str) -> bool {
        let e = self
            .entry(
                dn,
                &[
                    "pwdAccountLockedTime",
                    "nsAccountLock",
                    "userAccountControl",
                ],
            )
            .await
            .unwrap();
        let a = |name: &str| attr(&e, name);
        match self.flavour {
            Flavour::OpenLdap => a("pwdaccountlockedtime") == ["000001010000Z"],
            Flavour::Ds389 => a("nsaccountlock")
                .first()
                .is_some_and(|v| v.eq_ignore_ascii_case("true")),
            Flavour::Ad => flavour::account_disabled(&a("useraccountcontrol")[0]).unwrap(),
        }
    }

    async fn uac(&self, dn: &str) -> String {
        let e = self.entry(dn, &["userAccountControl"]).await.unwrap();
        attr(&e, "useraccountcontrol")[0].clone()
    }
}

fn attr(e: &[(String, Vec<String>)], name: &str) -> Vec<String> {
    e.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

fn user(name: &str) -> Value {
    json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
        "id": format!("id-{name}"),
        "userName": name,
        "name": {"givenName": "Barbara", "familyName": "Jensen"},
        "title": "engineer",
        "active": true
    })
}

fn desired(map: &CompiledTarget, u: &Value) -> Desired {
    Desired {
        kind: Kind::User,
        entry: map.render_user(u, &|_, _| None).unwrap(),
        active: u["active"].as_bool().unwrap_or(true),
        members: vec![],
        password_hash: u["password_hash"].as_str().map(str::to_owned),
        role_groups: map.role_groups(u),
        member_changes: None,
    }
}

fn group(map: &CompiledTarget, g: &Value, members: Vec<String>) -> Desired {
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

fn prior(o: &Outcome) -> Prior {
    Prior {
        key: o.key.clone(),
        extra: o.extra.clone(),
        ..Prior::default()
    }
}

async fn sync(t: &LdapTarget, d: &Desired, p: &Prior) -> Outcome {
    t.sync(Change::Upsert(d), p, false)
        .await
        .unwrap_or_else(|e| panic!("sync {}: {e:?}", d.entry.key))
}

fn norm(dn: &str) -> String {
    scim_sync::mapping::dn::normalize_dn(dn)
}

async fn user_lifecycle(flavour: Flavour) {
    let dir = Dir::new(flavour).await;
    let (map, t) = dir.target("");
    t.healthcheck().await.unwrap();
    let mut u = user("bjensen");

    // Create: mapped attributes, the stable id recorded.
    let o1 = sync(&t, &desired(&map, &u), &Prior::default()).await;
    let dn = dir.user_dn("bjensen");
    assert_eq!(o1.key.as_deref().map(norm), Some(norm(&dn)));
    let e = dir.entry(&dn, &["*"]).await.unwrap();
    assert_eq!(attr(&e, "title"), ["engineer"]);
    assert_eq!(attr(&e, "displayname"), ["Barbara Jensen"]);
    let id = dir.id_of(&dn).await.expect("the server has an id");
    assert_eq!(
        o1.extra.as_ref().unwrap().entry_uuid.as_deref(),
        Some(id.as_str())
    );
    assert!(!dir.disabled(&dn).await, "a created active user is enabled");
    let enabled_uac = if flavour == Flavour::Ad {
        Some(dir.uac(&dn).await)
    } else {
        None
    };

    // Update: only what changed; twice changes nothing.
    u["title"] = json!("manager");
    let o2 = sync(&t, &desired(&map, &u), &prior(&o1)).await;
    assert_eq!(o2.changes.len(), 1, "{:?}", o2.changes);
    assert!(o2.changes[0].contains("replace: title"), "{:?}", o2.changes);
    assert_eq!(
        attr(&dir.entry(&dn, &["title"]).await.unwrap(), "title"),
        ["manager"]
    );
    let again = sync(&t, &desired(&map, &u), &prior(&o2)).await;
    assert!(again.changes.is_empty(), "{:?}", again.changes);

    // Rename: the entry moves, its id stays.
    u["userName"] = json!("babs");
    let o3 = sync(&t, &desired(&map, &u), &prior(&o2)).await;
    let renamed = dir.user_dn("babs");
    assert_eq!(o3.key.as_deref().map(norm), Some(norm(&renamed)));
    assert!(dir.entry(&dn, &["*"]).await.is_none());
    assert_eq!(dir.id_of(&renamed).await.as_deref(), Some(id.as_str()));
    if flavour == Flavour::Ad {
        let e = dir.entry(&renamed, &["sAMAccountName"]).await.unwrap();
        assert_eq!(attr(&e, "samaccountname"), ["babs"]);
    }

    // Moved by hand (into an OU below the users' base): found again by the stable id and put
    // back.
    let mut admin = dir.admin().await;
    let sub = format!("ou=Sub,{}", dir.people());
    admin
        .add(
            &sub,
            vec![
                ("objectClass", ["top", "organizationalUnit"].into()),
                ("ou", ["Sub"].into()),
            ],
        )
        .await
        .unwrap()
        .success()
        .unwrap();
    let rdn = renamed.split(',').next().unwrap().to_owned();
    admin
        .modifydn(&renamed, &rdn, true, Some(sub.as_str()))
        .await
        .unwrap()
        .success()
        .unwrap();
    assert!(dir.entry(&renamed, &["*"]).await.is_none());
    let o4 = sync(&t, &desired(&map, &u), &prior(&o3)).await;
    assert_eq!(o4.key.as_deref().map(norm), Some(norm(&renamed)));
    assert!(
        o4.changes.iter().any(|c| c.starts_with("modrdn: ")),
        "{:?}",
        o4.changes
    );
    assert_eq!(dir.id_of(&renamed).await.as_deref(), Some(id.as_str()));

    // Disable and reactivate, the flavour's way.
    u["active"] = json!(false);
    let o5 = sync(&t, &desired(&map, &u), &prior(&o4)).await;
    assert!(dir.disabled(&renamed).await, "{:?}", o5.changes);
    if let Some(before) = &enabled_uac {
        // Only ACCOUNTDISABLE changed.
        let now: i64 = dir.uac(&renamed).await.parse().unwrap();
        assert_eq!(
            now,
            before.parse::<i64>().unwrap() | flavour::UF_ACCOUNTDISABLE
        );
    }
    let same = sync(&t, &desired(&map, &u), &prior(&o5)).await;
    assert!(same.changes.is_empty(), "{:?}", same.changes);
    u["active"] = json!(true);
    let o6 = sync(&t, &desired(&map, &u), &prior(&same)).await;
    assert!(!dir.disabled(&renamed).await, "{:?}", o6.changes);
    if let Some(before) = &enabled_uac {
        assert_eq!(&dir.uac(&renamed).await, before, "other bits untouched");
    }
    let e = dir
        .entry(&renamed, &["pwdAccountLockedTime", "nsAccountLock"])
        .await
        .unwrap();
    assert!(attr(&e, "pwdaccountlockedtime").is_empty());
    assert!(attr(&e, "nsaccountlock").is_empty());

    // Delete.
    let gone = t
        .sync(Change::Remove { kind: Kind::User }, &prior(&o6), false)
        .await
        .unwrap();
    assert_eq!(gone.key, None);
    assert!(dir.entry(&renamed, &["*"]).await.is_none());
}

async fn group_lifecycle(flavour: Flavour) {
    let dir = Dir::new(flavour).await;
    let (map, t) = dir.target("");
    let mut members = Vec::new();
    let mut outcomes = Vec::new();
    for name in ["ga", "gb", "gc"] {
        let o = sync(&t, &desired(&map, &user(name)), &Prior::default()).await;
        members.push(o.key.clone().unwrap());
        outcomes.push(o);
    }
    let (a, b, c) = (members[0].clone(), members[1].clone(), members[2].clone());
    let mut g = json!({"displayName": "Team A", "externalId": "x1"});
    let g1 = sync(
        &t,
        &group(&map, &g, vec![a.clone(), b.clone()]),
        &Prior::default(),
    )
    .await;
    let gdn = dir.group_dn("Team A");
    assert_eq!(g1.key.as_deref().map(norm), Some(norm(&gdn)));
    let have: HashSet<String> = dir
        .values(&gdn, "member")
        .await
        .iter()
        .map(|m| norm(m))
        .collect();
    assert_eq!(have, [norm(&a), norm(&b)].into());
    if flavour == Flavour::Ds389 {
        // The MemberOf plugin writes the users' side.
        let e = dir.entry(&a, &["memberOf"]).await.unwrap();
        assert_eq!(
            attr(&e, "memberof")
                .iter()
                .map(|m| norm(m))
                .collect::<Vec<_>>(),
            [norm(&gdn)]
        );
    }
    // Change members: one in, one out; twice changes nothing.
    let g2 = sync(
        &t,
        &group(&map, &g, vec![a.clone(), c.clone()]),
        &prior(&g1),
    )
    .await;
    let have: HashSet<String> = dir
        .values(&gdn, "member")
        .await
        .iter()
        .map(|m| norm(m))
        .collect();
    assert_eq!(have, [norm(&a), norm(&c)].into(), "{:?}", g2.changes);
    let g3 = sync(
        &t,
        &group(&map, &g, vec![a.clone(), c.clone()]),
        &prior(&g2),
    )
    .await;
    assert!(g3.changes.is_empty(), "{:?}", g3.changes);
    // A member value already there (added by someone else) or already gone is "already so".
    let mut admin = dir.admin().await;
    admin
        .modify(&gdn, vec![Mod::Delete("member", [c.as_str()].into())])
        .await
        .unwrap()
        .success()
        .unwrap();
    let g4 = sync(
        &t,
        &group(&map, &g, vec![a.clone(), c.clone()]),
        &prior(&g3),
    )
    .await;
    let have: HashSet<String> = dir
        .values(&gdn, "member")
        .await
        .iter()
        .map(|m| norm(m))
        .collect();
    assert_eq!(have, [norm(&a), norm(&c)].into(), "{:?}", g4.changes);
    // Rename the group.
    g["displayName"] = json!("Team B");
    let g5 = sync(
        &t,
        &group(&map, &g, vec![a.clone(), c.clone()]),
        &prior(&g4),
    )
    .await;
    let gdn2 = dir.group_dn("Team B");
    assert_eq!(g5.key.as_deref().map(norm), Some(norm(&gdn2)));
    assert!(dir.entry(&gdn, &["*"]).await.is_none());
    assert_eq!(dir.values(&gdn2, "member").await.len(), 2);
    // A member deleted: the directory's own referential integrity (OpenLDAP refint, 389-DS
    // referint, AD's linked attributes) drops the value first; our next apply agrees with it.
    t.sync(
        Change::Remove { kind: Kind::User },
        &prior(&outcomes[2]),
        false,
    )
    .await
    .unwrap();
    let g6 = sync(&t, &group(&map, &g, vec![a.clone()]), &prior(&g5)).await;
    let have: Vec<String> = dir
        .values(&gdn2, "member")
        .await
        .iter()
        .map(|m| norm(m))
        .collect();
    assert_eq!(have, [norm(&a)], "{:?}", g6.changes);
    // Delete the group.
    t.sync(Change::Remove { kind: Kind::Group }, &prior(&g6), false)
        .await
        .unwrap();
    assert!(dir.entry(&gdn2, &["*"]).await.is_none());
}

async fn large_group(flavour: Flavour) {
    let dir = Dir::new(flavour).await;
    let (map, t) = dir.target("");
    let members = dir.bulk_users("m", 5000).await;
    let g = json!({"displayName": "Everyone", "externalId": "big"});
    let g1 = sync(&t, &group(&map, &g, members.clone()), &Prior::default()).await;
    let gdn = dir.group_dn("Everyone");
    assert_eq!(dir.values(&gdn, "member").await.len(), 5000);
    // One removal: the target reads all 5,000 (ranged on AD) and deletes exactly one value.
    let removed = members[1234].clone();
    let rest: Vec<String> = members.iter().filter(|m| **m != removed).cloned().collect();
    let g2 = sync(&t, &group(&map, &g, rest.clone()), &prior(&g1)).await;
    assert_eq!(g2.changes.len(), 1, "{:?}", g2.changes);
    assert!(
        g2.changes[0].contains("delete: member: ") && !g2.changes[0].contains("add:"),
        "{:?}",
        g2.changes
    );
    let have: HashSet<String> = dir
        .values(&gdn, "member")
        .await
        .iter()
        .map(|m| norm(m))
        .collect();
    assert_eq!(have.len(), 4999);
    assert!(!have.contains(&norm(&removed)));
    let g3 = sync(&t, &group(&map, &g, rest), &prior(&g2)).await;
    assert!(g3.changes.is_empty(), "{:?}", g3.changes);
}

fn ssha512(clear: &str, salt: &[u8]) -> String {
    use base64::Engine;
    use sha2::{Digest, Sha512};
    let mut h = Sha512::new();
    h.update(clear.as_bytes());
    h.update(salt);
    let mut bytes = h.finalize().to_vec();
    bytes.extend_from_slice(salt);
    format!(
        "{{SSHA512}}{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

async fn password_set(flavour: Flavour) {
    let dir = Dir::new(flavour).await;
    if flavour == Flavour::Ad {
        // AD takes only the clear text (unicodePwd, over LDAPS), which scim-sync never keeps:
        // password sync is refused with the reason, at config load.
        let text = dir.toml(true, "password = \"sync\"");
        let raw: RawTarget = toml::from_str(&text).unwrap();
        let RawTarget::Ldap(l) = &raw else { panic!() };
        let e = Settings::from_raw(l, 0).expect_err("refused");
        assert!(
            e.iter().any(|e| e.to_string().contains("unicodePwd")),
            "{e:?}"
        );
        // What the refusal keeps out: the server does take a password set over LDAPS.
        let (map, t) = dir.target("");
        let o = sync(&t, &desired(&map, &user("pw")), &Prior::default()).await;
        let dn = o.key.unwrap();
        let quoted: Vec<u8> = "\"Secret-pw-42\""
            .encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect();
        let settings = ldap3::LdapConnSettings::new().set_config(std::sync::Arc::new(
            crate::harness::server::client_config(dir.endpoint.ca_file.as_deref().unwrap()),
        ));
        let (conn, mut ldaps) = ldap3::LdapConnAsync::with_settings(
            settings,
            dir.endpoint.ldaps_uri.as_deref().unwrap(),
        )
        .await
        .unwrap();
        crate::harness::slapd::spawn_conn(conn);
        ldaps
            .simple_bind(&dir.endpoint.bind_dn, &dir.endpoint.password)
            .await
            .unwrap()
            .success()
            .unwrap();
        ldaps
            .modify(
                &dn,
                vec![Mod::Replace(b"unicodePwd".to_vec(), [quoted].into())],
            )
            .await
            .unwrap()
            .success()
            .unwrap();
        assert_eq!(dir.endpoint.ldaps_bind(&dn, "Secret-pw-42").await, 0);
        assert_eq!(dir.endpoint.ldaps_bind(&dn, "wrong").await, 49);
        return;
    }
    let (map, t) = dir.target("password = \"sync\"");
    let mut u = user("pw");
    u["password_hash"] = json!(ssha512("first-secret", b"0123456789abcdef"));
    let o1 = sync(&t, &desired(&map, &u), &Prior::default()).await;
    let dn = o1.key.clone().unwrap();
    assert!(dir.endpoint.can_bind(&dn, "first-secret").await);
    u["password_hash"] = json!(ssha512("second-secret", b"fedcba9876543210"));
    let o2 = sync(&t, &desired(&map, &u), &prior(&o1)).await;
    assert!(
        o2.changes
            .iter()
            .any(|c| c.contains("replace: userPassword")),
        "{:?}",
        o2.changes
    );
    assert!(dir.endpoint.can_bind(&dn, "second-secret").await);
    assert!(!dir.endpoint.can_bind(&dn, "first-secret").await);
    // Disabled: the password no longer binds.
    u["active"] = json!(false);
    sync(&t, &desired(&map, &u), &prior(&o2)).await;
    assert!(!dir.endpoint.can_bind(&dn, "second-secret").await);
}

/// The facts of `flavour.rs` as this server answers: adding a present value and deleting an
/// absent one inside a modify.
async fn value_codes(flavour: Flavour) {
    let dir = Dir::new(flavour).await;
    let (map, t) = dir.target("");
    let a = sync(&t, &desired(&map, &user("ca")), &Prior::default())
        .await
        .key
        .unwrap();
    let b = sync(&t, &desired(&map, &user("cb")), &Prior::default())
        .await
        .key
        .unwrap();
    let g = sync(
        &t,
        &group(&map, &json!({"displayName": "Codes"}), vec![a.clone()]),
        &Prior::default(),
    )
    .await
    .key
    .unwrap();
    let mut admin = dir.admin().await;
    let add = admin
        .modify(&g, vec![Mod::Add("member", [a.as_str()].into())])
        .await
        .unwrap()
        .rc;
    let del = admin
        .modify(&g, vec![Mod::Delete("member", [b.as_str()].into())])
        .await
        .unwrap()
        .rc;
    let del_attr = admin
        .modify(&a, vec![Mod::Delete("description", ["none"].into())])
        .await
        .unwrap()
        .rc;
    eprintln!("{}: add present member {add}, delete absent member {del}, delete absent description {del_attr}", flavour.name());
    let (want_add, want_del) = match flavour {
        Flavour::Ad => (68, 53),
        _ => (20, 16),
    };
    assert_eq!((add, del, del_attr), (want_add, want_del, 16));
    assert!(flavour.already_so(ValueOp::Add).contains(&add));
    assert!(flavour.already_so(ValueOp::Delete).contains(&del));
    assert_eq!(
        flavour.needs_confirmation(ValueOp::Add, add),
        flavour == Flavour::Ad
    );

    // Through the target: a role group (changed value by value, never read first) that already
    // has the member, then already lacks it. Both are "already so", on every directory.
    let role_group = g.clone();
    let extra = format!("[[users.role_groups]]\nvalue = \"admin\"\ngroup = \"{role_group}\"\n");
    let (map, t) = dir.target(&extra);
    let mut u = user("cr");
    let o1 = sync(&t, &desired(&map, &u), &Prior::default()).await;
    let dn = o1.key.clone().unwrap();
    admin
        .modify(&role_group, vec![Mod::Add("member", [dn.as_str()].into())])
        .await
        .unwrap()
        .success()
        .unwrap();
    u["roles"] = json!([{"value": "admin"}]);
    let o2 = sync(&t, &desired(&map, &u), &prior(&o1)).await;
    assert!(
        o2.changes.iter().any(|c| c.contains("add: member: ")),
        "{:?}",
        o2.changes
    );
    assert!(dir
        .values(&role_group, "member")
        .await
        .iter()
        .any(|m| norm(m) == norm(&dn)));
    admin
        .modify(
            &role_group,
            vec![Mod::Delete("member", [dn.as_str()].into())],
        )
        .await
        .unwrap()
        .success()
        .unwrap();
    u["roles"] = json!([]);
    let o3 = sync(&t, &desired(&map, &u), &prior(&o2)).await;
    assert!(
        o3.changes.iter().any(|c| c.contains("delete: member: ")),
        "{:?}",
        o3.changes
    );
    assert!(!dir
        .values(&role_group, "member")
        .await
        .iter()
        .any(|m| norm(m) == norm(&dn)));
}

async fn detected(flavour: Flavour) {
    let dir = Dir::new(flavour).await;
    // Without a flavour, `policy = "disable"` needs its `set`: left out here.
    let text = dir
        .toml(false, "")
        .replace("[users.deactivate]\npolicy = \"disable\"\n", "");
    let (_, t) = dir.target_from(&text);
    assert_eq!(
        t.flavour(),
        Flavour::OpenLdap,
        "before connecting: the default"
    );
    t.healthcheck().await.unwrap();
    assert_eq!(t.flavour(), flavour);
}

macro_rules! per_directory {
    ($($case:ident),*) => {
        mod openldap { $( #[tokio::test] async fn $case() { super::$case(super::Flavour::OpenLdap).await } )* }
        mod ds389 { $( #[tokio::test] async fn $case() { super::$case(super::Flavour::Ds389).await } )* }
        mod ad { $( #[tokio::test] async fn $case() { super::$case(super::Flavour::Ad).await } )* }
    };
}

per_directory!(
    user_lifecycle,
    group_lifecycle,
    large_group,
    password_set,
    value_codes,
    detected
);

#[tokio::test]
async fn ad_refuses_a_sam_account_name_over_its_limits() {
    let dir = Dir::new(Flavour::Ad).await;
    let (map, t) = dir.target("");
    let long = user("twenty-one-characters");
    let e = t
        .sync(
            Change::Upsert(&desired(&map, &long)),
            &Prior::default(),
            false,
        )
        .await
        .unwrap_err();
    assert_eq!(e.class, scim_sync::targets::ErrorClass::Permanent);
    assert!(e.message.contains("at most 20"), "{}", e.message);
    assert!(dir
        .entry(&dir.user_dn("twenty-one-characters"), &["*"])
        .await
        .is_none());
}

#[test]
fn the_directory_examples_are_valid_and_name_their_flavour() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("etc/examples");
    for (file, flavour) in [
        ("openldap.toml", Flavour::OpenLdap),
        ("389ds.toml", Flavour::Ds389),
        ("ad.toml", Flavour::Ad),
    ] {
        let path = dir.join(file);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{file}: {e}"));
        let raw: scim_sync::config::raw::RawConfig =
            toml::from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
        let schemas = Schemas::new(&raw.scim.user_extensions);
        let mut ldap = 0;
        for (i, t) in raw.targets.iter().enumerate() {
            CompiledTarget::compile_with(t, i, &schemas)
                .unwrap_or_else(|e| panic!("{file}: {e:?}"));
            if let RawTarget::Ldap(l) = t {
                let s = Settings::from_raw(l, i).unwrap_or_else(|e| panic!("{file}: {e:?}"));
                assert_eq!(s.flavour, Some(flavour), "{file}");
                assert!(
                    s.users.deactivate.is_some(),
                    "{file}: shows the flavour's disable"
                );
                ldap += 1;
            }
        }
        assert_eq!(ldap, 1, "{file}");
    }
}

#[tokio::test]
async fn ad_a_sam_account_name_held_elsewhere_is_a_conflict_naming_the_holder() {
    let dir = Dir::new(Flavour::Ad).await;
    let (map, t) = dir.target("");
    // An account made by hand in another OU holds the sAMAccountName our user would get.
    let tag = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let name = format!("c{tag}");
    let other = format!("CN=hand{tag},{}", dir.groups());
    let mut admin = dir.admin().await;
    admin
        .add(
            &other,
            vec![
                (
                    "objectClass",
                    ["top", "person", "organizationalPerson", "user"].into(),
                ),
                ("sAMAccountName", [name.as_str()].into()),
            ],
        )
        .await
        .unwrap()
        .success()
        .unwrap();
    let e = t
        .sync(
            Change::Upsert(&desired(&map, &user(&name))),
            &Prior::default(),
            false,
        )
        .await
        .unwrap_err();
    assert_eq!(e.class, scim_sync::targets::ErrorClass::Permanent);
    assert!(
        e.message.contains("duplicate") && e.message.contains(&format!("hand{tag}")),
        "{}",
        e.message
    );
    assert!(dir.entry(&dir.user_dn(&name), &["*"]).await.is_none());
}
