//! Store behaviour tests, each run against SQLite (a temp file) and PostgreSQL (a fresh
//! database per test on 127.0.0.1:5432, dropped at the end).

use super::models::NewResource;
use super::schema::{audit, group_members, outbox, resources};
use super::*;
use crate::scim::resource::Password;
use diesel::prelude::*;
use futures_util::future::join_all;
use serde_json::json;
use std::time::Instant;

mod fencing;
mod instances;
mod members;
mod nested;
mod races;

const PG_ADMIN_URL: &str = "postgres://postgres@127.0.0.1/postgres";
const TARGET: &str = "ldap";

struct TestDb {
    store: Store,
    backend: &'static str,
    _dir: Option<tempfile::TempDir>,
    pg_name: Option<String>,
}

impl TestDb {
    async fn finish(self) {
        let TestDb {
            store,
            pg_name,
            _dir,
            ..
        } = self;
        drop(store);
        if let Some(name) = pg_name {
            tokio::task::spawn_blocking(move || {
                let mut admin =
                    diesel::PgConnection::establish(PG_ADMIN_URL).expect("connect to postgres");
                diesel::sql_query(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut admin)
                    .expect("drop test database");
            })
            .await
            .expect("join");
        }
    }
}

fn settings(url: String) -> StoreSettings {
    StoreSettings {
        url,
        password: None,
        pool_size: 8,
        busy_timeout_ms: 10_000,
        instance_lock: true,
        instance_id: "test-instance".into(),
    }
}

async fn sqlite_db() -> TestDb {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("store.db").display());
    let store = Store::open(&settings(url), vec![TARGET.to_owned()])
        .await
        .expect("open sqlite");
    store.migrate().await.expect("migrate sqlite");
    TestDb {
        store,
        backend: "sqlite",
        _dir: Some(dir),
        pg_name: None,
    }
}

async fn pg_db() -> TestDb {
    let name = format!("scim_store_{:016x}", rand::random::<u64>());
    let create = name.clone();
    tokio::task::spawn_blocking(move || {
        let mut admin = diesel::PgConnection::establish(PG_ADMIN_URL)
            .expect("PostgreSQL must run on 127.0.0.1:5432 (pg_ctlcluster --skip-systemctl-redirect 15 main start)");
        diesel::sql_query(format!("CREATE DATABASE {create}")).execute(&mut admin).expect("create test database");
    })
    .await
    .expect("join");
    // Not the instance lock: tests open more stores under the same id on one database.
    let mut pg_settings = settings(format!("postgres://postgres@127.0.0.1/{name}"));
    pg_settings.instance_lock = false;
    let store = Store::open(&pg_settings, vec![TARGET.to_owned()])
        .await
        .expect("open pg");
    store.migrate().await.expect("migrate pg");
    TestDb {
        store,
        backend: "postgres",
        _dir: None,
        pg_name: Some(name),
    }
}

/// Run `test` on both backends.
async fn on_both<F, Fut>(test: F)
where
    F: Fn(Store, &'static str) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for db in [sqlite_db().await, pg_db().await] {
        test(db.store.clone(), db.backend).await;
        db.finish().await;
    }
}

fn ctx(now_ms: i64) -> AuditCtx {
    AuditCtx {
        token_name: "okta".into(),
        request_id: format!("req-{now_ms}"),
        now_ms,
        deadline: None,
    }
}

fn user(name: &str) -> UserInput {
    UserInput {
        data: json!({"userName": name}).as_object().cloned().unwrap(),
        user_name: name.to_owned(),
        external_id: None,
        active: None,
        emails: Vec::new(),
        password: None,
    }
}

fn group(name: &str, members: Option<Vec<String>>) -> GroupInput {
    GroupInput {
        data: json!({"displayName": name}).as_object().cloned().unwrap(),
        display_name: name.to_owned(),
        external_id: None,
        members: members.map(|ids| ids.into_iter().map(member).collect()),
    }
}

fn member(id: String) -> MemberRef {
    MemberRef {
        value: id,
        display: None,
        kind: None,
    }
}

fn is_uniqueness(e: &StoreError) -> bool {
    matches!(e, StoreError::Scim(s) if s.status == 409)
}

fn scim_status(e: &StoreError) -> Option<u16> {
    match e {
        StoreError::Scim(s) => Some(s.status),
        _ => None,
    }
}

/// A group update that keeps the body and applies `ops`.
fn members_update(
    ops: Vec<MemberOp>,
) -> impl FnOnce(&StoredGroup) -> Result<GroupUpdate, ScimError> + Send + 'static {
    move |g: &StoredGroup| {
        Ok(GroupUpdate {
            data: g.data.clone(),
            display_name: g.display_name.clone(),
            external_id: g.external_id.clone(),
            members: ops,
        })
    }
}

async fn member_ids(store: &Store, group_id: &str) -> Vec<String> {
    store
        .group_members(group_id)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.value)
        .collect()
}

async fn outbox_rows(store: &Store) -> Vec<(String, i64, String)> {
    store
        .run(|conn| {
            Ok(outbox::table
                .order(outbox::id)
                .select((outbox::resource_id, outbox::version, outbox::operation))
                .load::<(String, i64, String)>(conn)?)
        })
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn user_create_get_update_delete() {
    on_both(|store, backend| async move {
        let mut input = user("Alice");
        input.external_id = Some("ext-1".into());
        input.emails = vec!["Alice@Example.COM".into()];
        let created = store.create_user(input, None, &ctx(1000)).await.unwrap();
        assert_eq!(created.meta.version, 1, "{backend}");
        assert!(created.active);
        let got = store.get_user(&created.id).await.unwrap().unwrap();
        assert_eq!(got.user_name, "Alice");
        assert_eq!(got.external_id.as_deref(), Some("ext-1"));
        assert_eq!(
            got.meta,
            Meta {
                created_ms: 1000,
                last_modified_ms: 1000,
                version: 1
            }
        );
        assert!(
            store.get_group(&created.id).await.unwrap().is_none(),
            "a user is not a group"
        );
        assert_eq!(
            store
                .find_user("userName", "ALICE")
                .await
                .unwrap()
                .unwrap()
                .id,
            created.id
        );
        assert_eq!(
            store
                .find_user("externalId", "ext-1")
                .await
                .unwrap()
                .unwrap()
                .id,
            created.id
        );
        assert!(
            store
                .find_user("externalId", "EXT-1")
                .await
                .unwrap()
                .is_none(),
            "externalId is case-exact"
        );
        assert!(store
            .find_user("nickName", "Alice")
            .await
            .unwrap()
            .is_none());

        let updated = store
            .update_user(&created.id, "replace", &ctx(2000), |u| {
                assert_eq!(u.meta.version, 1);
                let mut input = user("alice.smith");
                input.active = Some(false);
                input.data.insert("title".into(), json!("Engineer"));
                Ok(UserUpdate {
                    input,
                    password_hash: None,
                })
            })
            .await
            .unwrap();
        assert_eq!(updated.meta.version, 2);
        assert!(!updated.active);
        let got = store.get_user(&created.id).await.unwrap().unwrap();
        assert_eq!(got.user_name, "alice.smith");
        assert_eq!(got.data.get("title"), Some(&json!("Engineer")));
        assert_eq!(got.meta.last_modified_ms, 2000);
        assert!(!got.active);

        // PUT without `active` keeps the current value (R-30).
        store
            .update_user(&created.id, "replace", &ctx(2500), |_| {
                Ok(UserUpdate {
                    input: user("alice.smith"),
                    password_hash: None,
                })
            })
            .await
            .unwrap();
        assert!(!store.get_user(&created.id).await.unwrap().unwrap().active);

        // The closure's error propagates and nothing changes.
        let err = store
            .update_user(&created.id, "patch", &ctx(3000), |_| {
                Err(ScimError::precondition_failed("etag"))
            })
            .await
            .unwrap_err();
        assert_eq!(scim_status(&err), Some(412));
        assert_eq!(
            store
                .get_user(&created.id)
                .await
                .unwrap()
                .unwrap()
                .meta
                .version,
            3
        );

        let err = store
            .delete_user(&created.id, Some(1), &ctx(4000))
            .await
            .unwrap_err();
        assert_eq!(scim_status(&err), Some(412));
        store
            .delete_user(&created.id, Some(3), &ctx(4000))
            .await
            .unwrap();
        assert!(store.get_user(&created.id).await.unwrap().is_none());
        let tomb = store.get_user_any(&created.id).await.unwrap().unwrap();
        assert!(tomb.deleted);
        assert_eq!(tomb.meta.version, 4);
        let err = store
            .delete_user(&created.id, None, &ctx(5000))
            .await
            .unwrap_err();
        assert_eq!(scim_status(&err), Some(404));
        let err = store
            .update_user(&created.id, "patch", &ctx(5000), |_| {
                Ok(UserUpdate {
                    input: user("x"),
                    password_hash: None,
                })
            })
            .await
            .unwrap_err();
        assert_eq!(scim_status(&err), Some(404));
        assert!(store.get_user("not-an-id").await.unwrap().is_none());

        let ops: Vec<String> = store
            .history(&created.id)
            .await
            .unwrap()
            .into_iter()
            .map(|h| h.operation)
            .collect();
        assert_eq!(ops, ["create", "replace", "replace", "delete"]);
        let history = store.history(&created.id).await.unwrap();
        assert_eq!(history[0].token_name.as_deref(), Some("okta"));
        assert_eq!(history[0].request_id.as_deref(), Some("req-1000"));
        assert_eq!(
            store.resolve_name("ALICE.SMITH").await.unwrap(),
            Some((ResourceType::User, created.id.clone()))
        );
        assert_eq!(
            store
                .all_resource_ids(ResourceType::User, false)
                .await
                .unwrap()
                .len(),
            0
        );
        assert_eq!(
            store
                .all_resource_ids(ResourceType::User, true)
                .await
                .unwrap(),
            std::slice::from_ref(&created.id)
        );
        store.ping().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn duplicate_names_conflict_case_and_unicode_insensitively() {
    on_both(|store, backend| async move {
        store
            .create_user(user("Alice"), None, &ctx(1))
            .await
            .unwrap();
        let err = store
            .create_user(user("ALICE"), None, &ctx(2))
            .await
            .unwrap_err();
        assert!(is_uniqueness(&err), "{backend}: {err:?}");
        // NFC (U+00E9) and NFD (e + U+0301) spellings are one userName.
        store
            .create_user(user("Jos\u{e9}"), None, &ctx(3))
            .await
            .unwrap();
        let err = store
            .create_user(user("JOSE\u{301}"), None, &ctx(4))
            .await
            .unwrap_err();
        assert!(is_uniqueness(&err), "{backend}: {err:?}");
        // A rename onto a taken name is a 409 too, and leaves the user unchanged.
        let bob = store.create_user(user("bob"), None, &ctx(5)).await.unwrap();
        let err = store
            .update_user(&bob.id, "replace", &ctx(6), |_| {
                Ok(UserUpdate {
                    input: user("alice"),
                    password_hash: None,
                })
            })
            .await
            .unwrap_err();
        assert!(is_uniqueness(&err), "{backend}: {err:?}");
        assert_eq!(
            store.get_user(&bob.id).await.unwrap().unwrap().meta.version,
            1
        );
        // Users and groups have separate namespaces; groups conflict among themselves.
        store
            .create_group(group("alice", None), &ctx(7))
            .await
            .unwrap();
        let err = store
            .create_group(group("Alice", None), &ctx(8))
            .await
            .unwrap_err();
        assert!(is_uniqueness(&err), "{backend}: {err:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_creates_of_one_name_give_one_winner() {
    on_both(|store, backend| async move {
        let names = ["Alice", "ALICE", "alice", "Alic\u{e9}", "ALICE\u{301}"];
        for round in 0..2 {
            let calls = (0..50).map(|i| {
                let store = store.clone();
                let name = names[i % 3].to_owned();
                async move {
                    store
                        .create_user(user(&format!("{name}{round}")), None, &ctx(i as i64))
                        .await
                }
            });
            let results = join_all(calls).await;
            let ok = results.iter().filter(|r| r.is_ok()).count();
            let conflicts = results
                .iter()
                .filter(|r| r.as_ref().is_err_and(is_uniqueness))
                .count();
            assert_eq!(
                (ok, conflicts),
                (1, 49),
                "{backend} round {round}: {:?}",
                results
                    .iter()
                    .find(|r| r.as_ref().is_err_and(|e| !is_uniqueness(e)))
            );
        }
        // And the accented pair: NFC and NFD race on one key.
        let calls = (0..50).map(|i| {
            let store = store.clone();
            let name = names[3 + i % 2].to_owned();
            async move { store.create_user(user(&name), None, &ctx(i as i64)).await }
        });
        let results = join_all(calls).await;
        let ok = results.iter().filter(|r| r.is_ok()).count();
        let conflicts = results
            .iter()
            .filter(|r| r.as_ref().is_err_and(is_uniqueness))
            .count();
        assert_eq!((ok, conflicts), (1, 49), "{backend} NFC/NFD");
        assert_eq!(
            store
                .list_users(None, 1, 100, String::new())
                .await
                .unwrap()
                .total,
            3
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tombstone_then_recreate_same_user_name() {
    on_both(|store, backend| async move {
        let first = store
            .create_user(user("carol"), None, &ctx(1))
            .await
            .unwrap();
        store.delete_user(&first.id, None, &ctx(2)).await.unwrap();
        let second = store
            .create_user(user("Carol"), None, &ctx(3))
            .await
            .unwrap();
        assert_ne!(first.id, second.id, "{backend}");
        assert!(
            store
                .get_user_any(&first.id)
                .await
                .unwrap()
                .unwrap()
                .deleted
        );
        assert_eq!(
            store
                .find_user("username", "carol")
                .await
                .unwrap()
                .unwrap()
                .id,
            second.id
        );
        let err = store
            .create_user(user("CAROL"), None, &ctx(4))
            .await
            .unwrap_err();
        assert!(is_uniqueness(&err));
        assert_eq!(
            store.resolve_name("carol").await.unwrap(),
            Some((ResourceType::User, second.id))
        );
        // A group too.
        let g = store
            .create_group(group("admins", None), &ctx(5))
            .await
            .unwrap();
        store.delete_group(&g.id, Some(1), &ctx(6)).await.unwrap();
        assert!(store.get_group(&g.id).await.unwrap().is_none());
        assert!(store.get_group_any(&g.id).await.unwrap().unwrap().deleted);
        store
            .create_group(group("Admins", None), &ctx(7))
            .await
            .unwrap();
    })
    .await;
}

/// Insert `n` live users in one transaction (test seeding; the API's one-at-a-time path is
/// covered elsewhere). Returns their ids in order.
async fn seed_users(store: &Store, prefix: &str, n: usize) -> Vec<String> {
    let prefix = prefix.to_owned();
    store
        .run(move |conn| {
            let ids: Vec<String> = (0..n).map(|_| uuid::Uuid::new_v4().to_string()).collect();
            let names: Vec<String> = (0..n).map(|i| format!("{prefix}{i}")).collect();
            let bodies: Vec<String> = names
                .iter()
                .map(|n| json!({ "userName": n }).to_string())
                .collect();
            write_tx(conn, |conn| {
                for ((ids, names), bodies) in ids
                    .chunks(1000)
                    .zip(names.chunks(1000))
                    .zip(bodies.chunks(1000))
                {
                    let rows: Vec<NewResource<'_>> = ids
                        .iter()
                        .zip(names)
                        .zip(bodies)
                        .map(|((id, name), body)| NewResource {
                            id,
                            resource_type: "User",
                            version: 1,
                            created_ms: 1,
                            modified_ms: 1,
                            data: body,
                            name,
                            name_norm: name,
                            external_id: None,
                            active: true,
                            password_hash: None,
                            deleted: false,
                            deleted_ms: None,
                        })
                        .collect();
                    let insert = diesel::insert_into(resources::table).values(&rows);
                    match conn {
                        DbConnection::Pg(c) => insert.execute(c)?,
                        DbConnection::Sqlite(c) => insert.execute(c)?,
                    };
                }
                Ok(())
            })?;
            Ok(ids)
        })
        .await
        .unwrap()
}

async fn member_count(store: &Store) -> i64 {
    store
        .run(|conn| Ok(group_members::table.count().get_result::<i64>(conn)?))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn group_with_fifty_thousand_members_adds_and_removes_one() {
    on_both(|store, backend| async move {
        let ids = seed_users(&store, "bulk", 50_001).await;
        let (extra, ids) = ids.split_last().unwrap();
        let g = store
            .create_group(group("everyone", Some(ids[..5_000].to_vec())), &ctx(1))
            .await
            .unwrap();
        let started = Instant::now();
        for batch in ids[5_000..].chunks(5_000) {
            let ops = vec![MemberOp::Add(batch.iter().cloned().map(member).collect())];
            store
                .update_group(&g.id, "patch", &ctx(2), members_update(ops))
                .await
                .unwrap();
        }
        println!(
            "{backend}: built a 50,000-member group in batches in {:?}",
            started.elapsed()
        );
        assert_eq!(member_count(&store).await, 50_000);

        let started = Instant::now();
        let ops = vec![MemberOp::Add(vec![member(extra.clone())])];
        let after_add = store
            .update_group(&g.id, "patch", &ctx(3), members_update(ops))
            .await
            .unwrap();
        println!("{backend}: add 1 member to 50,000: {:?}", started.elapsed());
        let started = Instant::now();
        let ops = vec![MemberOp::Remove(vec![ids[123].clone()])];
        store
            .update_group(&g.id, "patch", &ctx(4), members_update(ops))
            .await
            .unwrap();
        println!(
            "{backend}: remove 1 member of 50,001: {:?}",
            started.elapsed()
        );
        assert_eq!(after_add.meta.version, 11, "create + 9 batches + 1");

        let members = member_ids(&store, &g.id).await;
        assert_eq!(members.len(), 50_000);
        assert_eq!(members.first(), Some(&ids[0]), "insertion order");
        assert_eq!(members.last(), Some(extra), "the new member comes last");
        assert!(!members.contains(&ids[123]));
        let started = Instant::now();
        let page = store.list_groups(None, 1, 10, String::new()).await.unwrap();
        println!(
            "{backend}: list groups (no members loaded): {:?}",
            started.elapsed()
        );
        assert_eq!(page.total, 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_concurrent_member_adds_all_land() {
    on_both(|store, backend| async move {
        let mut users = Vec::new();
        for i in 0..20 {
            users.push(
                store
                    .create_user(user(&format!("u{i}")), None, &ctx(1))
                    .await
                    .unwrap()
                    .id,
            );
        }
        let g = store
            .create_group(group("g", Some(Vec::new())), &ctx(1))
            .await
            .unwrap();
        let calls = users.iter().map(|id| {
            let store = store.clone();
            let (gid, ops) = (g.id.clone(), vec![MemberOp::Add(vec![member(id.clone())])]);
            async move {
                store
                    .update_group(&gid, "patch", &ctx(2), members_update(ops))
                    .await
            }
        });
        for result in join_all(calls).await {
            result.unwrap_or_else(|e| panic!("{backend}: {e:?}"));
        }
        let mut members = member_ids(&store, &g.id).await;
        members.sort();
        users.sort();
        assert_eq!(members, users, "{backend}");
        assert_eq!(
            store.get_group(&g.id).await.unwrap().unwrap().meta.version,
            21
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn member_operations_follow_their_contract() {
    on_both(|store, backend| async move {
        let mut u = Vec::new();
        for i in 0..5 {
            u.push(
                store
                    .create_user(user(&format!("m{i}")), None, &ctx(1))
                    .await
                    .unwrap()
                    .id,
            );
        }
        let g = store
            .create_group(
                group("team", Some(vec![u[0].clone(), u[1].clone(), u[0].clone()])),
                &ctx(1),
            )
            .await
            .unwrap();
        assert_eq!(
            member_ids(&store, &g.id).await,
            [u[0].clone(), u[1].clone()],
            "{backend}"
        );
        let members = store.group_members(&g.id).await.unwrap();
        assert_eq!(members[0].display.as_deref(), Some("m0"));

        // Add skips existing members; Remove ignores non-members; applied in order.
        let ops = vec![
            MemberOp::Add(vec![member(u[1].clone()), member(u[2].clone())]),
            MemberOp::Remove(vec![u[3].clone(), u[0].clone(), "nobody".into()]),
        ];
        store
            .update_group(&g.id, "patch", &ctx(2), members_update(ops))
            .await
            .unwrap();
        assert_eq!(
            member_ids(&store, &g.id).await,
            [u[1].clone(), u[2].clone()]
        );

        // Replace writes the difference and keeps the survivors' order.
        let ops = vec![MemberOp::Replace(vec![
            member(u[4].clone()),
            member(u[2].clone()),
        ])];
        store
            .update_group(&g.id, "replace", &ctx(3), members_update(ops))
            .await
            .unwrap();
        assert_eq!(
            member_ids(&store, &g.id).await,
            [u[2].clone(), u[4].clone()]
        );

        // Unknown and deleted users are refused with 400 and nothing changes.
        store.delete_user(&u[3], None, &ctx(4)).await.unwrap();
        for bad in [
            u[3].clone(),
            uuid::Uuid::new_v4().to_string(),
            "<script>".to_owned(),
            g.id.clone(),
        ] {
            let ops = vec![
                MemberOp::RemoveAll,
                MemberOp::Add(vec![member(bad.clone())]),
            ];
            let err = store
                .update_group(&g.id, "patch", &ctx(5), members_update(ops))
                .await
                .unwrap_err();
            match &err {
                StoreError::Scim(s) => {
                    assert_eq!(
                        (s.status, s.scim_type),
                        (400, Some(crate::scim::ScimType::InvalidValue))
                    );
                    assert!(!s.detail.contains("<script>"), "no raw input echoed");
                }
                other => panic!("{backend}: {other:?}"),
            }
        }
        assert_eq!(
            member_ids(&store, &g.id).await,
            [u[2].clone(), u[4].clone()]
        );
        let err = store
            .create_group(group("bad", Some(vec!["nope".into()])), &ctx(6))
            .await
            .unwrap_err();
        assert_eq!(scim_status(&err), Some(400));
        assert!(
            store.resolve_name("bad").await.unwrap().is_none(),
            "the failed create left nothing"
        );

        let ops = vec![MemberOp::RemoveAll];
        store
            .update_group(&g.id, "patch", &ctx(7), members_update(ops))
            .await
            .unwrap();
        assert!(member_ids(&store, &g.id).await.is_empty());

        // A PATCH that sends no member ops leaves membership alone.
        let ops = vec![MemberOp::Add(vec![member(u[0].clone())])];
        store
            .update_group(&g.id, "patch", &ctx(8), members_update(ops))
            .await
            .unwrap();
        store
            .update_group(&g.id, "patch", &ctx(9), members_update(Vec::new()))
            .await
            .unwrap();
        assert_eq!(member_ids(&store, &g.id).await, [u[0].clone()]);
        assert_eq!(
            store.groups_of_user(&u[0]).await.unwrap(),
            [GroupRef {
                value: g.id.clone(),
                display: "team".into(),
                direct: true,
            }]
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deleting_a_user_removes_memberships_and_queues_groups() {
    on_both(|store, backend| async move {
        let a = store
            .create_user(user("a"), None, &ctx(1))
            .await
            .unwrap()
            .id;
        let b = store
            .create_user(user("b"), None, &ctx(1))
            .await
            .unwrap()
            .id;
        let g1 = store
            .create_group(group("g1", Some(vec![a.clone(), b.clone()])), &ctx(1))
            .await
            .unwrap()
            .id;
        let g2 = store
            .create_group(group("g2", Some(vec![a.clone()])), &ctx(1))
            .await
            .unwrap()
            .id;
        let g3 = store
            .create_group(group("g3", Some(vec![b.clone()])), &ctx(1))
            .await
            .unwrap()
            .id;
        assert_eq!(
            store.group_ids_of_user(&a).await.unwrap(),
            [g1.clone(), g2.clone()],
            "{backend}"
        );
        store.delete_user(&a, None, &ctx(2)).await.unwrap();
        assert_eq!(member_ids(&store, &g1).await, std::slice::from_ref(&b));
        assert!(member_ids(&store, &g2).await.is_empty());
        assert!(store.groups_of_user(&a).await.unwrap().is_empty());
        assert_eq!(store.get_group(&g1).await.unwrap().unwrap().meta.version, 2);
        assert_eq!(store.get_group(&g2).await.unwrap().unwrap().meta.version, 2);
        assert_eq!(store.get_group(&g3).await.unwrap().unwrap().meta.version, 1);
        let rows = outbox_rows(&store).await;
        assert!(rows.contains(&(g1.clone(), 2, "membership".into())));
        assert!(rows.contains(&(g2.clone(), 2, "membership".into())));
        assert!(rows.contains(&(a.clone(), 2, "delete".into())));
        assert!(store
            .history(&g1)
            .await
            .unwrap()
            .iter()
            .any(|h| h.operation == "membership"));

        // Deleting a group never touches its users.
        store.delete_group(&g1, None, &ctx(3)).await.unwrap();
        assert!(member_ids(&store, &g1).await.is_empty());
        assert_eq!(store.get_user(&b).await.unwrap().unwrap().meta.version, 1);
        assert_eq!(
            store.group_ids_of_user(&b).await.unwrap(),
            std::slice::from_ref(&g3)
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn outbox_coalesces_changes_per_target_and_resource() {
    on_both(|store, backend| async move {
        store.set_targets(vec!["t1".into(), "t2".into()]);
        let id = store
            .create_user(user("dora"), None, &ctx(100))
            .await
            .unwrap()
            .id;
        for now in [200, 300] {
            store
                .update_user(&id, "patch", &ctx(now), |u| {
                    Ok(UserUpdate {
                        input: user(&u.user_name),
                        password_hash: None,
                    })
                })
                .await
                .unwrap();
        }
        let rows = outbox_rows(&store).await;
        assert_eq!(
            rows,
            [
                (id.clone(), 3, "update".into()),
                (id.clone(), 3, "update".into())
            ],
            "{backend}"
        );
        let status = store
            .status(&["t1".into(), "t2".into(), "t3".into()])
            .await
            .unwrap();
        assert_eq!(
            (status[0].pending, status[0].oldest_pending_ms),
            (1, Some(100)),
            "enqueued_ms kept"
        );
        assert_eq!((status[2].pending, status[2].oldest_pending_ms), (0, None));
        let items = store.claim("t1", 1000, 30_000, 10).await.unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].version, 3);
        assert_eq!(items[0].request_id.as_deref(), Some("req-300"));
        assert_eq!(items[0].resource_type, ResourceType::User);

        // No targets: no outbox rows.
        store.set_targets(Vec::new());
        store
            .create_user(user("eve"), None, &ctx(400))
            .await
            .unwrap();
        assert_eq!(outbox_rows(&store).await.len(), 2);

        // enqueue coalesces too, and refuses unknown ids.
        store
            .enqueue("t1", ResourceType::User, &id, "resync", 2000)
            .await
            .unwrap();
        assert_eq!(outbox_rows(&store).await.len(), 2);
        let err = store
            .enqueue("t1", ResourceType::User, "missing", "resync", 2000)
            .await
            .unwrap_err();
        assert_eq!(scim_status(&err), Some(404));
        let err = store
            .enqueue("t1", ResourceType::Group, &id, "resync", 2000)
            .await
            .unwrap_err();
        assert_eq!(scim_status(&err), Some(404), "wrong type");
    })
    .await;
}

fn applied(item: &OutboxItem, version: i64, now: i64) -> TargetState {
    TargetState {
        target: item.target.clone(),
        resource_type: item.resource_type,
        resource_id: item.resource_id.clone(),
        applied_version: version,
        target_key: Some(format!("uid={},ou=people", item.resource_id)),
        extra: Some(json!({"deactivated": false}).into()),
        updated_ms: now,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn claims_are_exclusive_and_fenced() {
    on_both(|store, backend| async move {
        let id = store
            .create_user(user("fay"), None, &ctx(100))
            .await
            .unwrap()
            .id;
        assert!(
            store.claim(TARGET, 50, 1000, 10).await.unwrap().is_empty(),
            "{backend}: not due yet"
        );
        assert!(
            store.claim(TARGET, 100, 1000, 0).await.unwrap().is_empty(),
            "limit 0"
        );
        let first = store.claim(TARGET, 100, 1000, 10).await.unwrap();
        assert_eq!(first.len(), 1);
        assert!(
            store.claim(TARGET, 500, 1000, 10).await.unwrap().is_empty(),
            "leased"
        );
        // Concurrent claimers never get the same row.
        let id2 = store
            .create_user(user("gil"), None, &ctx(100))
            .await
            .unwrap()
            .id;
        let claims = join_all((0..8).map(|_| store.claim(TARGET, 600, 1000, 10))).await;
        let got: Vec<String> = claims
            .into_iter()
            .flat_map(|c| c.unwrap())
            .map(|i| i.resource_id)
            .collect();
        assert_eq!(got, std::slice::from_ref(&id2));

        // The lease expires: another worker takes over with a new epoch.
        let second = store.claim(TARGET, 1200, 1000, 10).await.unwrap();
        assert_eq!(second.len(), 1);
        assert!(second[0].claim_epoch > first[0].claim_epoch);
        // The stale worker settles: its state is recorded only if newer, the row stays.
        store
            .settle_applied(&first[0], applied(&first[0], 1, 1300), 1300)
            .await
            .unwrap();
        assert_eq!(
            outbox_rows(&store).await.len(),
            2,
            "stale settle keeps the row"
        );
        store
            .settle_failed(&first[0], "late failure", 9999, true, 1300)
            .await
            .unwrap();
        assert!(
            store.dead_letters(None).await.unwrap().is_empty(),
            "stale failure ignored"
        );
        // The current worker settles it.
        store
            .settle_applied(&second[0], applied(&second[0], 1, 1400), 1400)
            .await
            .unwrap();
        assert_eq!(outbox_rows(&store).await.len(), 1);
        let state = store.target_state(TARGET, &id).await.unwrap().unwrap();
        assert_eq!(
            (state.applied_version, state.updated_ms),
            (1, 1400),
            "equal version rewritten by the owner"
        );
        assert_eq!(state.extra, Some(json!({"deactivated": false}).into()));
        assert!(store
            .history(&id)
            .await
            .unwrap()
            .iter()
            .any(|h| h.operation == "applied:ldap"));
        assert_eq!(store.target_states(TARGET).await.unwrap().len(), 1);
        // applied_version never goes down.
        let old = TargetState {
            applied_version: 0,
            ..state.clone()
        };
        store.settle_applied(&second[0], old, 1500).await.unwrap();
        assert_eq!(
            store
                .target_state(TARGET, &id)
                .await
                .unwrap()
                .unwrap()
                .applied_version,
            1
        );
        assert!(store.target_state(TARGET, "nope").await.unwrap().is_none());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn settle_with_a_moved_version_keeps_the_row_pending() {
    on_both(|store, backend| async move {
        let id = store
            .create_user(user("hal"), None, &ctx(100))
            .await
            .unwrap()
            .id;
        let item = store
            .claim(TARGET, 100, 10_000, 10)
            .await
            .unwrap()
            .remove(0);
        assert_eq!(item.version, 1);
        store
            .update_user(&id, "patch", &ctx(200), |u| {
                Ok(UserUpdate {
                    input: user(&u.user_name),
                    password_hash: None,
                })
            })
            .await
            .unwrap();
        assert!(
            store
                .claim(TARGET, 300, 10_000, 10)
                .await
                .unwrap()
                .is_empty(),
            "{backend}: still leased"
        );
        store
            .settle_applied(&item, applied(&item, 1, 300), 300)
            .await
            .unwrap();
        assert_eq!(
            store
                .target_state(TARGET, &id)
                .await
                .unwrap()
                .unwrap()
                .applied_version,
            1
        );
        let again = store.claim(TARGET, 300, 10_000, 10).await.unwrap();
        assert_eq!(again.len(), 1, "released for another round");
        assert_eq!(again[0].version, 2);
        store
            .settle_applied(&again[0], applied(&again[0], 2, 400), 400)
            .await
            .unwrap();
        let status = store.status(&[TARGET.into()]).await.unwrap();
        assert_eq!(
            (status[0].pending, status[0].applied, status[0].dead),
            (0, 1, 0)
        );
    })
    .await;
}

/// A dependant re-queued at the same version while its row is claimed (a group whose member
/// just got its entry, queued by the member's apply while the group's apply is in flight)
/// must run again: the settle of the stale apply may not delete the row. Same millisecond as
/// the claim on purpose.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn settle_after_a_same_version_requeue_keeps_the_row_pending() {
    on_both(|store, backend| async move {
        let id = store
            .create_user(user("ivy"), None, &ctx(100))
            .await
            .unwrap()
            .id;
        let item = store
            .claim(TARGET, 100, 10_000, 10)
            .await
            .unwrap()
            .remove(0);
        let queued = store
            .enqueue_many(
                TARGET,
                ResourceType::User,
                std::slice::from_ref(&id),
                "membership",
                100,
            )
            .await
            .unwrap();
        assert_eq!(queued, 1);
        store
            .settle_applied(&item, applied(&item, 1, 100), 100)
            .await
            .unwrap();
        let again = store.claim(TARGET, 200, 10_000, 10).await.unwrap();
        assert_eq!(again.len(), 1, "{backend}: the re-queue was lost");
        assert_eq!(again[0].version, 1);
        // The same for a failed apply: released, due at once, not a dead letter.
        store
            .enqueue_many(
                TARGET,
                ResourceType::User,
                std::slice::from_ref(&id),
                "membership",
                150,
            )
            .await
            .unwrap();
        store
            .settle_failed(&again[0], "boom", 999_999, true, 210)
            .await
            .unwrap();
        assert!(store.dead_letters(Some(TARGET)).await.unwrap().is_empty());
        let third = store.claim(TARGET, 220, 10_000, 10).await.unwrap();
        assert_eq!(third.len(), 1, "{backend}: released for another round");
        store
            .settle_applied(&third[0], applied(&third[0], 1, 230), 230)
            .await
            .unwrap();
        let status = store.status(&[TARGET.into()]).await.unwrap();
        assert_eq!((status[0].pending, status[0].dead), (0, 0), "{backend}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dead_letters_can_be_listed_retried_and_discarded() {
    on_both(|store, backend| async move {
        let id = store
            .create_user(user("ivy"), None, &ctx(100))
            .await
            .unwrap()
            .id;
        let item = store.claim(TARGET, 100, 1000, 10).await.unwrap().remove(0);
        store
            .settle_failed(&item, "busy", 5000, false, 150)
            .await
            .unwrap();
        assert!(
            store
                .claim(TARGET, 4000, 1000, 10)
                .await
                .unwrap()
                .is_empty(),
            "{backend}: backoff respected"
        );
        let item = store.claim(TARGET, 5000, 1000, 10).await.unwrap().remove(0);
        assert_eq!(item.attempts, 1);
        assert_eq!(item.last_error.as_deref(), Some("busy"));
        let long_error = "é".repeat(5000);
        store
            .settle_failed(&item, &long_error, 6000, true, 5100)
            .await
            .unwrap();
        let dead = store.dead_letters(Some(TARGET)).await.unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!((dead[0].state.as_str(), dead[0].attempts), ("dead", 2));
        assert!(dead[0].last_error.as_ref().unwrap().len() <= 2000);
        assert!(store.dead_letters(Some("other")).await.unwrap().is_empty());
        assert!(
            store
                .claim(TARGET, 99_999, 1000, 10)
                .await
                .unwrap()
                .is_empty(),
            "dead rows are not claimed"
        );
        let status = store.status(&[TARGET.into()]).await.unwrap();
        assert_eq!((status[0].pending, status[0].dead), (0, 1));
        assert!(store
            .history(&id)
            .await
            .unwrap()
            .iter()
            .any(|h| h.operation == "dead:ldap"));

        assert_eq!(
            store.retry_dead(None, Some("other"), 7000).await.unwrap(),
            0
        );
        assert_eq!(
            store
                .retry_dead(Some(dead[0].id), None, 7000)
                .await
                .unwrap(),
            1
        );
        let item = store.claim(TARGET, 7000, 1000, 10).await.unwrap().remove(0);
        assert_eq!(item.attempts, 0);
        store
            .settle_failed(&item, "schema violation", 0, true, 7100)
            .await
            .unwrap();
        // A new change to a dead resource makes it pending again, with a fresh enqueue time.
        store
            .update_user(&id, "patch", &ctx(8000), |u| {
                Ok(UserUpdate {
                    input: user(&u.user_name),
                    password_hash: None,
                })
            })
            .await
            .unwrap();
        let status = store.status(&[TARGET.into()]).await.unwrap();
        assert_eq!(
            (
                status[0].pending,
                status[0].dead,
                status[0].oldest_pending_ms
            ),
            (1, 0, Some(8000))
        );
        let item = store.claim(TARGET, 8000, 1000, 10).await.unwrap().remove(0);
        store
            .settle_failed(&item, "schema violation", 0, true, 8100)
            .await
            .unwrap();
        assert_eq!(
            store
                .discard_dead(Some(item.id + 1000), None)
                .await
                .unwrap(),
            0
        );
        assert_eq!(store.discard_dead(None, Some(TARGET)).await.unwrap(), 1);
        assert!(store.dead_letters(None).await.unwrap().is_empty());
        assert!(outbox_rows(&store).await.is_empty());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tokens_are_created_listed_revoked_and_digested() {
    on_both(|store, backend| async move {
        let a = store.create_token("okta", [1u8; 32], 10).await.unwrap();
        let err = store.create_token("okta", [2u8; 32], 11).await.unwrap_err();
        assert!(is_uniqueness(&err), "{backend}");
        let b = store.create_token("entra", [2u8; 32], 12).await.unwrap();
        assert_eq!(
            store.live_token_digests().await.unwrap(),
            [("okta".into(), [1u8; 32]), ("entra".into(), [2u8; 32])]
        );
        assert!(store.revoke_token("okta", 20).await.unwrap());
        assert!(!store.revoke_token("okta", 21).await.unwrap());
        assert!(!store.revoke_token("nobody", 21).await.unwrap());
        assert!(store.revoke_token(&b.id.to_string(), 22).await.unwrap());
        assert!(store.live_token_digests().await.unwrap().is_empty());
        // The name is free again once revoked.
        store.create_token("okta", [3u8; 32], 30).await.unwrap();
        let list = store.list_tokens().await.unwrap();
        assert_eq!(list.len(), 3);
        assert_eq!((list[0].id, list[0].revoked_ms), (a.id, Some(20)));
        assert_eq!(list[2].revoked_ms, None);
        assert_eq!(
            store.live_token_digests().await.unwrap(),
            [("okta".into(), [3u8; 32])]
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_password_or_hash_leaks_into_tables() {
    const SENTINEL: &str = "S3ntinel-Pa55word";
    on_both(|store, backend| async move {
        let mut input = user("jan");
        input.password = Some(Password(SENTINEL.into()));
        input.data.insert("password".into(), json!(SENTINEL));
        let hash = "{SSHA512}c2VjcmV0aGFzaA==".to_owned();
        let created = store
            .create_user(input, Some(hash.clone()), &ctx(1))
            .await
            .unwrap();
        assert_eq!(created.password_hash.as_deref(), Some(hash.as_str()));
        let got = store.get_user(&created.id).await.unwrap().unwrap();
        assert_eq!(
            got.password_hash.as_deref(),
            Some(hash.as_str()),
            "{backend}"
        );
        assert!(!got.data.contains_key("password"));
        // An update without a new hash keeps it.
        store
            .update_user(&created.id, "patch", &ctx(2), |_| {
                Ok(UserUpdate {
                    input: user("jan"),
                    password_hash: None,
                })
            })
            .await
            .unwrap();
        assert_eq!(
            store
                .get_user(&created.id)
                .await
                .unwrap()
                .unwrap()
                .password_hash
                .as_deref(),
            Some(hash.as_str())
        );
        let texts: Vec<String> = store
            .run(|conn| {
                let mut all: Vec<String> = resources::table.select(resources::data).load(conn)?;
                let rows: Vec<(String, Option<String>)> = audit::table
                    .select((audit::operation, audit::detail))
                    .load(conn)?;
                all.extend(
                    rows.into_iter()
                        .flat_map(|(op, detail)| [op, detail.unwrap_or_default()]),
                );
                Ok(all)
            })
            .await
            .unwrap();
        for text in texts {
            assert!(
                !text.contains(SENTINEL) && !text.contains("SSHA512"),
                "{backend}: leaked into {text}"
            );
        }
    })
    .await;
    // SQLite: not in the file or its WAL at all.
    let db = sqlite_db().await;
    let mut input = user("kim");
    input.password = Some(Password(SENTINEL.into()));
    input.data.insert("password".into(), json!(SENTINEL));
    db.store.create_user(input, None, &ctx(1)).await.unwrap();
    let dir = db._dir.as_ref().unwrap().path().to_owned();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        assert!(!bytes
            .windows(SENTINEL.len())
            .any(|w| w == SENTINEL.as_bytes()));
    }
    db.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unfiltered_lists_page_in_creation_order() {
    on_both(|store, backend| async move {
        let mut ids = Vec::new();
        for i in 0..7 {
            ids.push(
                store
                    .create_user(user(&format!("p{i}")), None, &ctx(i))
                    .await
                    .unwrap()
                    .id,
            );
        }
        store.delete_user(&ids[2], None, &ctx(10)).await.unwrap();
        ids.remove(2);
        let page = store.list_users(None, 1, 100, String::new()).await.unwrap();
        assert_eq!(page.total, 6, "{backend}");
        assert_eq!(
            page.items.iter().map(|u| u.id.clone()).collect::<Vec<_>>(),
            ids
        );
        let page = store.list_users(None, 3, 2, String::new()).await.unwrap();
        assert_eq!((page.total, page.items.len()), (6, 2));
        assert_eq!(page.items[0].id, ids[2]);
        let page = store.list_users(None, 0, 1, String::new()).await.unwrap();
        assert_eq!(page.items[0].id, ids[0], "startIndex below 1 means 1");
        let page = store.list_users(None, 1, 0, String::new()).await.unwrap();
        assert_eq!(
            (page.total, page.items.len()),
            (6, 0),
            "count 0: total only"
        );
        let page = store
            .list_users(None, 100, 10, String::new())
            .await
            .unwrap();
        assert_eq!((page.total, page.items.len()), (6, 0));
        let page = store
            .list_users(None, u64::MAX, u64::MAX, String::new())
            .await
            .unwrap();
        assert_eq!((page.total, page.items.len()), (6, 0));
        assert_eq!(
            store
                .list_groups(None, 1, 10, String::new())
                .await
                .unwrap()
                .total,
            0
        );
    })
    .await;
}

#[tokio::test]
async fn a_second_store_on_the_same_file_is_refused() {
    let db = sqlite_db().await;
    let path = db._dir.as_ref().unwrap().path().join("store.db");
    let err = Store::open(
        &settings(format!("sqlite://{}", path.display())),
        vec![TARGET.to_owned()],
    )
    .await
    .err()
    .unwrap();
    match err {
        StoreError::Other(msg) => {
            assert!(msg.contains("store.db") && msg.contains("in use"), "{msg}")
        }
        other => panic!("{other:?}"),
    }
    let store = db.store.clone();
    db.finish().await;
    drop(store);
}

#[tokio::test]
async fn memory_database_keeps_its_data_in_one_connection() {
    let store = Store::open(&settings("sqlite::memory:".into()), vec![TARGET.to_owned()])
        .await
        .unwrap();
    let applied = store.migrate().await.unwrap();
    assert_eq!(applied.len(), migration_count("sqlite"));
    assert!(store.migrate().await.unwrap().is_empty(), "idempotent");
    let id = store
        .create_user(user("mem"), None, &ctx(1))
        .await
        .unwrap()
        .id;
    assert!(store.get_user(&id).await.unwrap().is_some());
}

#[tokio::test]
async fn bad_urls_are_refused_without_echoing_passwords() {
    for url in ["mysql://x", "", "sqlite://", "http://a", "postgres"] {
        let err = Store::open(&settings(url.into()), vec![TARGET.to_owned()])
            .await
            .err()
            .unwrap();
        assert!(matches!(err, StoreError::Other(_)), "{url}: {err:?}");
    }
    let err = Store::open(
        &settings("redis://u:hunter2@h/".into()),
        vec![TARGET.to_owned()],
    )
    .await
    .err()
    .unwrap();
    assert!(!err.to_string().contains("hunter2"));
    let mut s = settings("postgres://app@127.0.0.1:1/db".into());
    s.password = Some("hunter2".into());
    assert!(!format!("{s:?}").contains("hunter2"));
    let err = Store::open(&s, vec![TARGET.to_owned()])
        .await
        .err()
        .unwrap();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(!err.to_string().contains("hunter2"));
}

#[test]
fn passwords_are_percent_encoded_into_postgres_urls() {
    assert_eq!(
        with_password("postgres://", "app@db:5432/scim", Some("p@ss/w:rd")),
        "postgres://app:p%40ss%2Fw%3Ard@db:5432/scim"
    );
    assert_eq!(
        with_password("postgres://", "app:old@db/scim?sslmode=require", Some("n")),
        "postgres://app:n@db/scim?sslmode=require"
    );
    assert_eq!(
        with_password("postgres://", "db/scim", Some("n")),
        "postgres://:n@db/scim"
    );
    assert_eq!(
        with_password("postgres://", "app@db/scim", None),
        "postgres://app@db/scim"
    );
    assert_eq!(
        redact_url("postgres://app:secret@db/x"),
        "postgres://app:[redacted]@db/x"
    );
    assert_eq!(normalise("JOSE\u{301}"), normalise("jos\u{e9}"));
    for text in [
        "",
        "plain",
        "\0",
        "a\0b",
        "\u{10FFFF}",
        "\u{10FFFF}0",
        "\u{10FFFF}\0\u{10FFFF}\u{10FFFF}",
    ] {
        assert!(!encode_text(text).contains('\0'));
        assert_eq!(decode_text(encode_text(text)), text);
    }
    assert_ne!(encode_text("\0"), encode_text("\u{10FFFF}0"));
    assert_eq!(
        decode_text("dangling\u{10FFFF}".into()),
        "dangling\u{10FFFF}"
    );
}

/// Throughput figure for the report: creates/second at concurrency 8 on a SQLite file.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn measure_sqlite_creates_per_second_at_concurrency_8() {
    let db = sqlite_db().await;
    let total = 800;
    let started = Instant::now();
    let workers = (0..8).map(|w| {
        let store = db.store.clone();
        async move {
            for i in 0..total / 8 {
                store
                    .create_user(user(&format!("perf-{w}-{i}")), None, &ctx(i as i64))
                    .await
                    .unwrap();
            }
        }
    });
    join_all(workers).await;
    let elapsed = started.elapsed();
    println!(
        "sqlite: {total} creates at concurrency 8 in {elapsed:?} = {:.0}/s",
        total as f64 / elapsed.as_secs_f64()
    );
    assert_eq!(
        db.store
            .list_users(None, 1, 0, String::new())
            .await
            .unwrap()
            .total,
        total as u64
    );
    db.finish().await;
}

/// R-25: writers queue on `BEGIN IMMEDIATE` + busy timeout; none surfaces SQLITE_BUSY, and
/// readers keep working meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_and_readers_see_no_busy_errors() {
    on_both(|store, backend| async move {
        let mut ids = Vec::new();
        for i in 0..32 {
            ids.push(
                store
                    .create_user(user(&format!("w{i}")), None, &ctx(1))
                    .await
                    .unwrap()
                    .id,
            );
        }
        let writers = ids.iter().map(|id| {
            let (store, id) = (store.clone(), id.clone());
            async move {
                for n in 0..10 {
                    store
                        .update_user(&id, "patch", &ctx(10 + n), |u| {
                            let mut input = user(&u.user_name);
                            input.data.insert("n".into(), json!(u.meta.version));
                            Ok(UserUpdate {
                                input,
                                password_hash: None,
                            })
                        })
                        .await?;
                }
                Ok::<_, StoreError>(())
            }
        });
        let readers = (0..8).map(|_| {
            let store = store.clone();
            async move {
                for _ in 0..10 {
                    store.list_users(None, 1, 50, String::new()).await?;
                }
                Ok::<_, StoreError>(())
            }
        });
        let (w, r) = futures_util::future::join(join_all(writers), join_all(readers)).await;
        for result in w.into_iter().chain(r) {
            result.unwrap_or_else(|e| panic!("{backend}: {e:?}"));
        }
        for id in &ids {
            assert_eq!(store.get_user(id).await.unwrap().unwrap().meta.version, 11);
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_ids_and_names_find_nothing() {
    on_both(|store, backend| async move {
        store
            .create_user(user("real"), None, &ctx(1))
            .await
            .unwrap();
        for id in [
            "",
            "' OR 1=1 --",
            "%",
            "_",
            "\0",
            &"x".repeat(10_000),
            "real",
        ] {
            assert!(
                store.get_user(id).await.unwrap().is_none(),
                "{backend}: {id:?}"
            );
            assert!(store.get_group_any(id).await.unwrap().is_none());
            assert!(store.group_members(id).await.unwrap().is_empty());
            assert!(store.groups_of_user(id).await.unwrap().is_empty());
            assert!(store.history(id).await.unwrap().is_empty());
            assert!(store.find_user("externalId", id).await.unwrap().is_none());
            assert_eq!(
                scim_status(&store.delete_group(id, None, &ctx(2)).await.unwrap_err()),
                Some(404)
            );
        }
        assert!(store.resolve_name("%").await.unwrap().is_none());
        assert!(store.resolve_name("a\0").await.unwrap().is_none());
        assert!(store.target_state(TARGET, "a\0").await.unwrap().is_none());
        let err = store
            .enqueue(TARGET, ResourceType::User, "a\0", "resync", 1)
            .await
            .unwrap_err();
        assert_eq!(scim_status(&err), Some(404));
        // NUL in indexed text is stored faithfully on both backends (escaped in its column).
        let mut input = user("nul\0name");
        input.external_id = Some("e\0x\u{10FFFF}".into());
        input.emails = vec!["a\0@x".into()];
        let nul = store.create_user(input, None, &ctx(3)).await.unwrap();
        let got = store.get_user(&nul.id).await.unwrap().unwrap();
        assert_eq!(
            (got.user_name.as_str(), got.external_id.as_deref()),
            ("nul\0name", Some("e\0x\u{10FFFF}")),
            "{backend}"
        );
        assert_eq!(
            store
                .find_user("userName", "NUL\0NAME")
                .await
                .unwrap()
                .unwrap()
                .id,
            nul.id
        );
        assert_eq!(
            store
                .find_user("externalId", "e\0x\u{10FFFF}")
                .await
                .unwrap()
                .unwrap()
                .id,
            nul.id
        );
        assert!(
            store
                .find_user("userName", "nul\u{10FFFF}0name")
                .await
                .unwrap()
                .is_none(),
            "escape is injective"
        );
        assert!(is_uniqueness(
            &store
                .create_user(user("Nul\0Name"), None, &ctx(3))
                .await
                .unwrap_err()
        ));
        store
            .create_user(user("nul\u{10FFFF}0name"), None, &ctx(3))
            .await
            .unwrap();
        let g = store
            .create_group(group("g\0", Some(vec![nul.id.clone()])), &ctx(3))
            .await
            .unwrap()
            .id;
        assert_eq!(
            store.group_members(&g).await.unwrap()[0].display.as_deref(),
            Some("nul\0name")
        );
        assert_eq!(
            store.groups_of_user(&nul.id).await.unwrap()[0].display,
            "g\0"
        );
        let ops = vec![MemberOp::Add(vec![member("x\0".into())])];
        let err = store
            .update_group(&g, "patch", &ctx(4), members_update(ops))
            .await
            .unwrap_err();
        assert_eq!(scim_status(&err), Some(400));
        let ops = vec![MemberOp::Remove(vec!["x\0".into()])];
        store
            .update_group(&g, "patch", &ctx(4), members_update(ops))
            .await
            .unwrap();
        let item = store
            .claim(TARGET, 10, 1000, 100)
            .await
            .unwrap()
            .into_iter()
            .find(|i| i.resource_id == nul.id)
            .unwrap();
        let mut state = applied(&item, 1, 10);
        state.target_key = Some("uid=nul\0name".into());
        store
            .settle_applied(&item, state.clone(), 10)
            .await
            .unwrap();
        assert_eq!(
            store.target_state(TARGET, &nul.id).await.unwrap(),
            Some(state)
        );
        store
            .enqueue(TARGET, ResourceType::User, &nul.id, "resync", 20)
            .await
            .unwrap();
        let item = store
            .claim(TARGET, 20, 1000, 100)
            .await
            .unwrap()
            .into_iter()
            .find(|i| i.resource_id == nul.id)
            .unwrap();
        store
            .settle_failed(&item, "bad\0error", 30, true, 20)
            .await
            .unwrap();
        assert_eq!(
            store.dead_letters(None).await.unwrap()[0]
                .last_error
                .as_deref(),
            Some("bad\u{FFFD}error")
        );
        assert_eq!(
            scim_status(&store.create_token("t\0", [0; 32], 1).await.unwrap_err()),
            Some(400)
        );
        // JSON bodies may carry a NUL (escaped in the stored text).
        let mut input = user("jsonnul");
        input.data.insert("nickName".into(), json!("a\0b"));
        let id = store.create_user(input, None, &ctx(5)).await.unwrap().id;
        assert_eq!(
            store
                .get_user(&id)
                .await
                .unwrap()
                .unwrap()
                .data
                .get("nickName"),
            Some(&json!("a\0b"))
        );
        assert!(!store.revoke_token("' OR 1=1 --", 3).await.unwrap());
    })
    .await;
}

fn filter(text: &str) -> Option<crate::scim::filter::Filter> {
    Some(
        crate::scim::filter::parse_filter(text, crate::scim::filter::FilterLimits::default())
            .unwrap(),
    )
}

async fn user_names(store: &Store, text: &str, start: u64, count: u64) -> (u64, Vec<String>) {
    let page = store
        .list_users(filter(text), start, count, "https://scim.test/v2".into())
        .await
        .unwrap();
    (
        page.total,
        page.items.into_iter().map(|u| u.user_name).collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn filtered_lists_use_indexes_and_evaluate_the_filter() {
    on_both(|store, backend| async move {
        for (i, name) in ["Alice", "bob", "Carol", "dave", "Erin"].iter().enumerate() {
            let mut input = user(name);
            input.external_id = Some(format!("EXT-{i}"));
            input
                .data
                .insert("externalId".into(), json!(format!("EXT-{i}")));
            input.emails = vec![format!("{name}@Example.com")];
            input.data.insert(
                "emails".into(),
                json!([{"value": format!("{name}@Example.com"), "type": "work"}]),
            );
            input.data.insert(
                "title".into(),
                json!(if i % 2 == 0 { "eng" } else { "ops" }),
            );
            store
                .create_user(input, None, &ctx(i as i64))
                .await
                .unwrap();
        }
        let carol = store.find_user("userName", "carol").await.unwrap().unwrap();
        // Index lookups (userName, externalId, id, emails.value), then the filter decides.
        assert_eq!(
            user_names(&store, "userName eq \"ALICE\"", 1, 10).await,
            (1, vec!["Alice".into()]),
            "{backend}"
        );
        assert_eq!(
            user_names(&store, "externalId eq \"EXT-1\"", 1, 10).await,
            (1, vec!["bob".into()])
        );
        assert_eq!(
            user_names(&store, "externalId eq \"ext-1\"", 1, 10).await,
            (0, vec![]),
            "externalId is case-exact"
        );
        assert_eq!(
            user_names(&store, &format!("id eq \"{}\"", carol.id), 1, 10).await,
            (1, vec!["Carol".into()])
        );
        assert_eq!(
            user_names(&store, "emails.value eq \"DAVE@example.COM\"", 1, 10).await,
            (1, vec!["dave".into()])
        );
        assert_eq!(
            user_names(
                &store,
                "emails[type eq \"work\" and value eq \"erin@example.com\"]",
                1,
                10
            )
            .await,
            (1, vec!["Erin".into()])
        );
        assert_eq!(
            user_names(&store, "userName eq \"alice\" and title eq \"ops\"", 1, 10).await,
            (0, vec![])
        );
        assert_eq!(
            user_names(&store, "userName eq \"nobody\"", 1, 10).await,
            (0, vec![])
        );
        // Scans: paging runs over the matching sequence.
        assert_eq!(
            user_names(&store, "title eq \"eng\"", 1, 10).await,
            (3, vec!["Alice".into(), "Carol".into(), "Erin".into()])
        );
        assert_eq!(
            user_names(&store, "title eq \"eng\"", 2, 1).await,
            (3, vec!["Carol".into()])
        );
        assert_eq!(
            user_names(&store, "title eq \"eng\"", 1, 0).await,
            (3, vec![])
        );
        assert_eq!(
            user_names(&store, "userName sw \"a\" or userName sw \"E\"", 1, 10).await,
            (2, vec!["Alice".into(), "Erin".into()])
        );
        // Tombstones never match.
        store.delete_user(&carol.id, None, &ctx(10)).await.unwrap();
        assert_eq!(
            user_names(&store, "title eq \"eng\"", 1, 10).await,
            (2, vec!["Alice".into(), "Erin".into()])
        );
        assert_eq!(
            user_names(&store, "userName eq \"carol\"", 1, 10).await,
            (0, vec![])
        );

        // Groups: displayName lookup, and a members filter loads members.
        let alice = store
            .find_user("userName", "alice")
            .await
            .unwrap()
            .unwrap()
            .id;
        store
            .create_group(group("Admins", Some(vec![alice.clone()])), &ctx(11))
            .await
            .unwrap();
        store
            .create_group(group("Staff", None), &ctx(12))
            .await
            .unwrap();
        let groups = |text: &str| {
            let store = store.clone();
            let f = filter(text);
            async move {
                let page = store
                    .list_groups(f, 1, 10, "https://scim.test/v2".into())
                    .await
                    .unwrap();
                (
                    page.total,
                    page.items
                        .into_iter()
                        .map(|g| g.display_name)
                        .collect::<Vec<_>>(),
                )
            }
        };
        assert_eq!(
            groups("displayName eq \"admins\"").await,
            (1, vec!["Admins".into()])
        );
        assert_eq!(
            groups(&format!("members[value eq \"{alice}\"]")).await,
            (1, vec!["Admins".into()])
        );
        assert_eq!(
            groups(&format!("members.value eq \"{alice}\"")).await,
            (1, vec!["Admins".into()])
        );
        assert_eq!(
            groups("displayName sw \"S\"").await,
            (1, vec!["Staff".into()])
        );
        // A user's groups are visible to a users filter.
        let admins = store.resolve_name("admins").await.unwrap().unwrap().1;
        assert_eq!(
            user_names(&store, &format!("groups[value eq \"{admins}\"]"), 1, 10).await,
            (1, vec!["Alice".into()])
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn remove_matching_members_by_filter() {
    on_both(|store, backend| async move {
        let a = store
            .create_user(user("ann"), None, &ctx(1))
            .await
            .unwrap()
            .id;
        let b = store
            .create_user(user("ben"), None, &ctx(1))
            .await
            .unwrap()
            .id;
        let g = store
            .create_group(group("grp", Some(vec![a.clone(), b.clone()])), &ctx(1))
            .await
            .unwrap()
            .id;
        let f = filter("display eq \"BEN\"").unwrap();
        store
            .update_group(
                &g,
                "patch",
                &ctx(2),
                members_update(vec![MemberOp::RemoveMatching(f)]),
            )
            .await
            .unwrap();
        assert_eq!(
            member_ids(&store, &g).await,
            std::slice::from_ref(&a),
            "{backend}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn filtered_scans_page_across_chunks() {
    on_both(|store, backend| async move {
        seed_users(&store, "bulk", 1_200).await;
        // No index serves `ew`: the store scans 500 rows at a time.
        let (total, names) = user_names(&store, "userName ew \"7\"", 100, 50).await;
        assert_eq!(total, 120, "{backend}");
        assert_eq!(names.len(), 21);
        assert_eq!(names.first().map(String::as_str), Some("bulk997"));
        assert_eq!(names.last().map(String::as_str), Some("bulk1197"));
        let (total, names) = user_names(&store, "userName eq \"BULK1199\"", 1, 10).await;
        assert_eq!((total, names), (1, vec!["bulk1199".to_owned()]));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_migrations_on_postgres_apply_once() {
    let db = pg_db().await;
    let name = db.pg_name.clone().unwrap();
    // A second database, migrated by two stores at once.
    let second = format!("{name}_b");
    let create = second.clone();
    tokio::task::spawn_blocking(move || {
        let mut admin = diesel::PgConnection::establish(PG_ADMIN_URL).unwrap();
        diesel::sql_query(format!("CREATE DATABASE {create}"))
            .execute(&mut admin)
            .unwrap();
    })
    .await
    .unwrap();
    let url = format!("postgres://postgres@127.0.0.1/{second}");
    let a = Store::open(&settings(url.clone()), vec![TARGET.to_owned()])
        .await
        .unwrap();
    // Two instances: each its own id (one id per daemon on a database).
    let mut other = settings(url);
    other.instance_id = "other-instance".into();
    let b = Store::open(&other, vec![TARGET.to_owned()]).await.unwrap();
    let (ra, rb) = futures_util::future::join(a.migrate(), b.migrate()).await;
    let mut applied = [ra.unwrap().len(), rb.unwrap().len()];
    applied.sort_unstable();
    assert_eq!(applied, [0, migration_count("postgres")]);
    drop((a, b));
    tokio::task::spawn_blocking(move || {
        let mut admin = diesel::PgConnection::establish(PG_ADMIN_URL).unwrap();
        diesel::sql_query(format!("DROP DATABASE IF EXISTS {second} WITH (FORCE)"))
            .execute(&mut admin)
            .unwrap();
    })
    .await
    .unwrap();
    db.finish().await;
}

/// A dependant re-queue (same version, e.g. a group whose member was just created) that lands
/// while the row is claimed must survive the settle of the claim: found by the SQL fan-out
/// test, where a group ended with no members.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requeue_during_a_claim_survives_the_settle() {
    on_both(|store, backend| async move {
        let id = store
            .create_user(user("ivy"), None, &ctx(100))
            .await
            .unwrap()
            .id;
        let item = store
            .claim(TARGET, 100, 10_000, 10)
            .await
            .unwrap()
            .remove(0);
        store
            .enqueue(TARGET, ResourceType::User, &id, "membership", 150)
            .await
            .unwrap();
        store
            .settle_applied(&item, applied(&item, 1, 200), 200)
            .await
            .unwrap();
        let again = store.claim(TARGET, 200, 10_000, 10).await.unwrap();
        assert_eq!(again.len(), 1, "{backend}: the re-queue was lost");
        assert_eq!(again[0].version, 1);
        store
            .settle_applied(&again[0], applied(&again[0], 1, 300), 300)
            .await
            .unwrap();
        assert!(store
            .claim(TARGET, 300, 10_000, 10)
            .await
            .unwrap()
            .is_empty());
    })
    .await;
}

/// How many migrations ship for a backend (the directories under `migrations/<backend>/`).
fn migration_count(backend: &str) -> usize {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("migrations")
        .join(backend);
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().join("up.sql").exists())
        .count()
}

/// A user update with `active` set as given (everything else kept).
fn set_active(
    active: bool,
) -> impl FnOnce(&StoredUser) -> Result<UserUpdate, ScimError> + Send + 'static {
    move |u: &StoredUser| {
        Ok(UserUpdate {
            input: UserInput {
                data: u.data.clone(),
                user_name: u.user_name.clone(),
                external_id: u.external_id.clone(),
                active: Some(active),
                emails: Vec::new(),
                password: None,
            },
            password_hash: None,
        })
    }
}

/// Issue 8 items 3 and 7: the mutation that flips `active` queues the user's groups itself
/// (at their own version), so revocation does not depend on the user's own apply; an update
/// that keeps `active` does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flip_of_active_queues_the_users_groups_in_its_transaction() {
    on_both(|store, backend| async move {
        let u = store
            .create_user(user("flipper"), None, &ctx(1))
            .await
            .unwrap();
        let g = store
            .create_group(group("flippers", Some(vec![u.id.clone()])), &ctx(2))
            .await
            .unwrap();
        store
            .run(|conn| Ok(diesel::delete(outbox::table).execute(conn)?))
            .await
            .unwrap();
        store
            .update_user(&u.id, "patch", &ctx(3), set_active(true))
            .await
            .unwrap();
        assert_eq!(
            outbox_rows(&store).await,
            [(u.id.clone(), 2, "update".to_owned())],
            "{backend}"
        );
        store
            .update_user(&u.id, "patch", &ctx(4), set_active(false))
            .await
            .unwrap();
        assert_eq!(
            outbox_rows(&store).await,
            [
                (u.id.clone(), 3, "update".to_owned()),
                (g.id.clone(), 1, "membership".to_owned())
            ],
            "{backend}"
        );
    })
    .await;
}

/// Issue 8 item 2: the reference index answers "who references this user" from the
/// holders' recorded references: those that resolved to it at their last render, and those
/// that name it now by id, userName (case-insensitively) or externalId.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_reference_index_finds_holders_by_resolution_and_by_name() {
    on_both(|store, backend| async move {
        let mut boss_input = user("Boss");
        boss_input.external_id = Some("ext-boss".into());
        let boss = store.create_user(boss_input, None, &ctx(1)).await.unwrap();
        let by_id = store
            .create_user(user("by-id"), None, &ctx(2))
            .await
            .unwrap();
        let by_name = store
            .create_user(user("by-name"), None, &ctx(3))
            .await
            .unwrap();
        let by_ext = store
            .create_user(user("by-ext"), None, &ctx(4))
            .await
            .unwrap();
        let stale = store
            .create_user(user("stale"), None, &ctx(5))
            .await
            .unwrap();
        let other = store
            .create_user(user("other"), None, &ctx(6))
            .await
            .unwrap();
        let record = |holder: &str, by: &str, value: &str, resolved: Option<&str>| {
            let (store, holder) = (store.clone(), holder.to_owned());
            let refs = vec![(by.to_owned(), value.to_owned(), resolved.map(str::to_owned))];
            async move {
                store
                    .record_references(TARGET, &holder, refs)
                    .await
                    .unwrap()
            }
        };
        record(&by_id.id, "id", &boss.id, Some(&boss.id)).await;
        // Unresolved when rendered (e.g. before the boss existed): found by its name.
        record(&by_name.id, "userName", "BOSS", None).await;
        record(&by_ext.id, "externalId", "ext-boss", None).await;
        // Resolved to the boss under a name it no longer has: found by the resolution.
        record(&stale.id, "userName", "old-boss-name", Some(&boss.id)).await;
        record(&other.id, "id", &other.id, Some(&other.id)).await;
        let mut want = vec![
            by_id.id.clone(),
            by_name.id.clone(),
            by_ext.id.clone(),
            stale.id.clone(),
        ];
        want.sort();
        assert_eq!(
            store.users_referencing(TARGET, &boss.id).await.unwrap(),
            want,
            "{backend}"
        );
        assert!(store
            .users_referencing("elsewhere", &boss.id)
            .await
            .unwrap()
            .is_empty());
        // A holder's next render replaces its references; the same ones again change nothing.
        store
            .record_references(TARGET, &by_id.id, Vec::new())
            .await
            .unwrap();
        record(&by_name.id, "userName", "BOSS", None).await;
        want.retain(|id| id != &by_id.id);
        assert_eq!(
            store.users_referencing(TARGET, &boss.id).await.unwrap(),
            want,
            "{backend}"
        );
        // Deleted: only the resolutions still lead to it.
        store.delete_user(&boss.id, None, &ctx(7)).await.unwrap();
        assert_eq!(
            store.users_referencing(TARGET, &boss.id).await.unwrap(),
            vec![stale.id],
            "{backend}"
        );
    })
    .await;
}

fn intent(id: &str, key: &str, since: i64) -> TargetState {
    TargetState {
        target: TARGET.to_owned(),
        resource_type: ResourceType::User,
        resource_id: id.to_owned(),
        applied_version: 0,
        target_key: None,
        extra: Some(json!({"creating": key, "since_ms": since, "attempt_ms": since}).into()),
        updated_ms: since,
    }
}

fn lowercase_keys(store: &Store) {
    store.set_key_norm(TARGET, Arc::new(|_, k: &str| k.to_lowercase()));
}

fn holder_of(e: StoreError) -> Option<String> {
    match e {
        StoreError::KeyConflict { holder, .. } => holder,
        other => panic!("not a key conflict: {other}"),
    }
}

/// Issue 8 item 1: the unique index on the normalised key covers applied states, intents and
/// rename reservations, per target; a deleted entry frees its key.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_two_resources_hold_or_intend_one_target_key() {
    on_both(|store, backend| async move {
        lowercase_keys(&store);
        let a = store
            .create_user(user("ka"), None, &ctx(100))
            .await
            .unwrap()
            .id;
        let b = store
            .create_user(user("kb"), None, &ctx(100))
            .await
            .unwrap()
            .id;
        store.record_intent(intent(&a, "cn=X", 100)).await.unwrap();
        // A second intent for the same key, spelled differently: refused, naming the holder.
        let e = store
            .record_intent(intent(&b, "CN=x", 110))
            .await
            .unwrap_err();
        assert_eq!(holder_of(e), Some(a.clone()), "{backend}");
        // The holder's own later attempt keeps the first intent's time.
        store.record_intent(intent(&a, "cn=X", 120)).await.unwrap();
        let kept = store.target_state(TARGET, &a).await.unwrap().unwrap();
        let extra = kept.extra.unwrap();
        assert_eq!(
            (extra.since_ms, extra.prev_attempt_ms, extra.attempt_ms),
            (Some(100), Some(100), Some(120))
        );
        // Settling: a takes the key; b cannot record it either.
        let items = store.claim(TARGET, 200, 10_000, 10).await.unwrap();
        let item_a = items.iter().find(|i| i.resource_id == a).unwrap().clone();
        let item_b = items.iter().find(|i| i.resource_id == b).unwrap().clone();
        let mut sa = applied(&item_a, 1, 200);
        sa.target_key = Some("cn=X".into());
        store
            .settle_applied(&item_a, sa.clone(), 200)
            .await
            .unwrap();
        let mut sb = applied(&item_b, 1, 200);
        sb.target_key = Some("cn=x".into());
        let e = store
            .settle_applied(&item_b, sb.clone(), 200)
            .await
            .unwrap_err();
        assert_eq!(holder_of(e), Some(a.clone()), "{backend}");
        assert!(store.target_state(TARGET, &b).await.unwrap().is_none());
        // b gets another key; a rename reservation onto a's key is refused, another is fine.
        sb.target_key = Some("cn=Y".into());
        store.settle_applied(&item_b, sb, 200).await.unwrap();
        let e = store
            .reserve_key(TARGET, ResourceType::User, &b, "CN=X")
            .await
            .unwrap_err();
        assert_eq!(holder_of(e), Some(a.clone()), "{backend}");
        store
            .reserve_key(TARGET, ResourceType::User, &b, "cn=Z")
            .await
            .unwrap();
        // ... and the reservation holds the new key against a's intent or rename.
        let e = store
            .reserve_key(TARGET, ResourceType::User, &a, "cn=z")
            .await
            .unwrap_err();
        assert_eq!(holder_of(e), Some(b.clone()), "{backend}");
        // Another target has its own keys.
        store
            .record_intent(TargetState {
                target: "other".into(),
                ..intent(&b, "cn=X", 300)
            })
            .await
            .unwrap();
        // a's entry deleted (no key): its key is free again.
        store
            .enqueue(TARGET, ResourceType::User, &a, "test", 300)
            .await
            .unwrap();
        let item = store
            .claim(TARGET, 300, 10_000, 10)
            .await
            .unwrap()
            .remove(0);
        let gone = TargetState {
            target_key: None,
            extra: None,
            applied_version: 2,
            ..sa
        };
        store.settle_applied(&item, gone, 300).await.unwrap();
        store
            .reserve_key(TARGET, ResourceType::User, &b, "cn=x")
            .await
            .unwrap();
    })
    .await;
}

/// Two resources racing for one key: exactly one intent is recorded, whatever the timing (the
/// index decides, not the check before it), and the loser's error names the winner.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_intents_for_one_key_record_exactly_one() {
    on_both(|store, backend| async move {
        lowercase_keys(&store);
        for round in 0..10 {
            let a = store
                .create_user(user(&format!("ra{round}")), None, &ctx(100))
                .await
                .unwrap()
                .id;
            let b = store
                .create_user(user(&format!("rb{round}")), None, &ctx(100))
                .await
                .unwrap()
                .id;
            let key = format!("cn=race{round}");
            let (ra, rb) = tokio::join!(
                store.record_intent(intent(&a, &key, 100)),
                store.record_intent(intent(&b, &key.to_uppercase(), 100)),
            );
            match (ra, rb) {
                (Ok(()), Err(e)) => assert_eq!(holder_of(e), Some(a.clone()), "{backend}"),
                (Err(e), Ok(())) => assert_eq!(holder_of(e), Some(b.clone()), "{backend}"),
                (x, y) => panic!("{backend}: round {round}: {x:?} / {y:?}"),
            }
        }
    })
    .await;
}

/// A rename reservation racing another resource's intent for the same key: exactly one wins,
/// whatever the timing (held and reserved keys live in two indexes, so the per-key lock under
/// which both writers check the other decides), and the loser's error names the winner.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_a_reservation_and_an_intent_for_one_key_record_exactly_one() {
    on_both(|store, backend| async move {
        lowercase_keys(&store);
        let a = store
            .create_user(user("resa"), None, &ctx(100))
            .await
            .unwrap()
            .id;
        let b = store
            .create_user(user("resb"), None, &ctx(100))
            .await
            .unwrap()
            .id;
        let items = store.claim(TARGET, 100, 10_000, 10).await.unwrap();
        let item_a = items.iter().find(|i| i.resource_id == a).unwrap();
        let mut held = applied(item_a, 1, 100);
        held.target_key = Some("cn=resa".into());
        store.settle_applied(item_a, held, 100).await.unwrap();
        for round in 0..20 {
            let key = format!("cn=race{round}");
            let (ra, rb) = tokio::join!(
                store.reserve_key(TARGET, ResourceType::User, &a, &key),
                store.record_intent(intent(&b, &key.to_uppercase(), 100 + round)),
            );
            match (ra, rb) {
                (Ok(()), Err(e)) => assert_eq!(holder_of(e), Some(a.clone()), "{backend}"),
                (Err(e), Ok(())) => assert_eq!(holder_of(e), Some(b.clone()), "{backend}"),
                (x, y) => panic!("{backend}: round {round}: {x:?} / {y:?}"),
            }
        }
    })
    .await;
}

/// States recorded before the key index existed get their key at start; two that already
/// share one are reported, and the second is left without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn legacy_states_get_their_key_and_shared_ones_are_reported() {
    on_both(|store, backend| async move {
        let a = store
            .create_user(user("la"), None, &ctx(100))
            .await
            .unwrap()
            .id;
        let b = store
            .create_user(user("lb"), None, &ctx(100))
            .await
            .unwrap()
            .id;
        let items = store.claim(TARGET, 200, 10_000, 10).await.unwrap();
        for item in &items {
            let key = if item.resource_id == a {
                "cn=One"
            } else {
                "cn=Two"
            };
            let mut s = applied(item, 1, 200);
            s.target_key = Some(key.into());
            store.settle_applied(item, s, 200).await.unwrap();
        }
        // What an older daemon left: no key_norm, and b on a's entry (another spelling).
        let b_id = b.clone();
        store
            .run(move |conn| {
                diesel::update(super::schema::target_state::table)
                    .set(super::schema::target_state::key_norm.eq(None::<String>))
                    .execute(conn)?;
                diesel::update(super::schema::target_state::table.find((TARGET, b_id.as_str())))
                    .set(super::schema::target_state::target_key.eq(Some("CN=one")))
                    .execute(conn)?;
                Ok(())
            })
            .await
            .unwrap();
        lowercase_keys(&store);
        let shared = store.fill_key_norms(TARGET).await.unwrap();
        assert_eq!(shared.len(), 1, "{backend}: {shared:?}");
        let (loser, holder, key) = shared[0].clone();
        let mut pair = [loser, holder];
        pair.sort();
        let mut want = [a.clone(), b.clone()];
        want.sort();
        assert_eq!(pair, want, "{backend}");
        assert_eq!(key.to_lowercase(), "cn=one", "{backend}");
        // Reported again at the next start until an operator resolves it.
        assert_eq!(store.fill_key_norms(TARGET).await.unwrap().len(), 1);
    })
    .await;
}

/// The HTTP path never waits behind a queue of background writes (the workers' claims,
/// heartbeats and settles during an outage kept SQLite's write lock busy back to back, and a
/// push polling for it under SQLite's busy handler waited over a second:
/// `faults::ldap_outage_during_pushes_converges`). Three background writers hold the write
/// lock 20 ms each, back to back; a client's create must get it after at most the write in
/// progress and one more, counted, not timed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[allow(clippy::disallowed_methods)] // the test's own tasks; the sleep runs on the blocking pool
async fn a_client_write_goes_ahead_of_queued_background_writes() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let db = sqlite_db().await;
    let store = db.store.clone();
    let commits = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let background: Vec<_> = (0..3)
        .map(|_| {
            let (store, commits, stop) = (store.clone(), commits.clone(), stop.clone());
            tokio::spawn(async move {
                // At most 150 writes (3 s) in all: before the fix the client got through
                // only once they stopped.
                while !stop.load(Ordering::SeqCst) && commits.load(Ordering::SeqCst) < 150 {
                    let commits = commits.clone();
                    store
                        .run(move |conn| {
                            write_tx(conn, |_| {
                                std::thread::sleep(Duration::from_millis(20));
                                commits.fetch_add(1, Ordering::SeqCst);
                                Ok(())
                            })
                        })
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    // Let the background writers queue up.
    while commits.load(Ordering::SeqCst) < 5 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let before = commits.load(Ordering::SeqCst);
    store
        .create_user(user("pusher"), None, &ctx(1))
        .await
        .unwrap();
    let waited_behind = commits.load(Ordering::SeqCst) - before;
    stop.store(true, Ordering::SeqCst);
    for task in background {
        task.await.unwrap();
    }
    assert!(
        waited_behind <= 2,
        "the client's write waited behind {waited_behind} background writes"
    );
    db.finish().await;
}

/// `status` reads the applied count from a counter the triggers keep (O(1) at any size); it
/// must equal a recount of the states holding an entry through creates, repeated settles,
/// deletes and intents, and not count deleted resources (issue 13 item 6).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn status_counts_the_entries_held_as_a_recount_does() {
    on_both(|store, backend| async move {
        let recount = |store: Store| async move {
            store
                .run(|conn| {
                    Ok(super::schema::target_state::table
                        .filter(super::schema::target_state::target.eq(TARGET))
                        .filter(super::schema::target_state::applied_version.gt(0))
                        .filter(super::schema::target_state::target_key.is_not_null())
                        .count()
                        .get_result::<i64>(conn)?)
                })
                .await
                .unwrap()
        };
        let held =
            |store: Store| async move { store.status(&[TARGET.into()]).await.unwrap()[0].applied };
        let mut ids = Vec::new();
        for i in 0..5 {
            ids.push(
                store
                    .create_user(user(&format!("count{i}")), None, &ctx(100))
                    .await
                    .unwrap()
                    .id,
            );
        }
        assert_eq!(held(store.clone()).await, 0, "{backend}");
        for item in store.claim(TARGET, 100, 10_000, 10).await.unwrap() {
            let state = applied(&item, item.version, 200);
            store.settle_applied(&item, state, 200).await.unwrap();
        }
        assert_eq!(held(store.clone()).await, 5, "{backend}");
        // A modify settles again: no double count.
        store
            .update_user(&ids[0], "patch", &ctx(300), |u| {
                Ok(UserUpdate {
                    input: user(&u.user_name),
                    password_hash: None,
                })
            })
            .await
            .unwrap();
        for id in &ids[1..3] {
            store.delete_user(id, None, &ctx(300)).await.unwrap();
        }
        for item in store.claim(TARGET, 400, 10_000, 10).await.unwrap() {
            let mut state = applied(&item, item.version, 400);
            if item.resource_id != ids[0] {
                state.target_key = None;
            }
            store.settle_applied(&item, state, 400).await.unwrap();
        }
        assert_eq!(held(store.clone()).await, 3, "{backend}");
        assert_eq!(recount(store.clone()).await, 3, "{backend}");
        // An intent (version 0) holds no entry yet.
        let fresh = store
            .create_user(user("count-new"), None, &ctx(500))
            .await
            .unwrap()
            .id;
        store
            .record_intent(TargetState {
                target: TARGET.into(),
                resource_type: ResourceType::User,
                resource_id: fresh,
                applied_version: 0,
                target_key: None,
                extra: Some(json!({"creating": "uid=count-new,ou=people", "since_ms": 500}).into()),
                updated_ms: 500,
            })
            .await
            .unwrap();
        assert_eq!(held(store.clone()).await, 3, "{backend}");
        assert_eq!(recount(store.clone()).await, 3, "{backend}");
    })
    .await;
}

/// Clients' mutations that wait for the write lock together commit together (`commit`: one
/// transaction, one sync), and each is still its own change with its own answer: a duplicate
/// among them gets its 409, the others commit with their outbox rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[allow(clippy::disallowed_methods)] // test tasks, joined below
async fn waiting_mutations_commit_as_one_group_each_with_its_own_answer() {
    use std::sync::atomic::Ordering;
    let db = sqlite_db().await;
    let store = db.store.clone();
    store
        .create_user(user("taken"), None, &ctx(1))
        .await
        .unwrap();
    let counts = || {
        let c = store
            .inner
            .committer
            .as_ref()
            .expect("a SQLite file groups");
        (
            c.counts.submitted.load(Ordering::SeqCst),
            c.counts.groups.load(Ordering::SeqCst),
        )
    };
    let (submitted0, groups0) = counts();
    // A background write holds the write turn (and SQLite's lock) until released.
    let (release, released) = std::sync::mpsc::channel::<()>();
    let (holding, held) = tokio::sync::oneshot::channel::<()>();
    let holder = {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .run(move |conn| {
                    write_tx(conn, |_| {
                        let _ = holding.send(());
                        let _ = released.recv();
                        Ok(())
                    })
                })
                .await
                .unwrap();
        })
    };
    held.await.unwrap();
    let names = ["g0", "g1", "g2", "taken", "g4", "g5", "g6", "g7"];
    let pushes: Vec<_> = names
        .iter()
        .map(|n| {
            let (store, n) = (store.clone(), (*n).to_owned());
            tokio::spawn(async move { store.create_user(user(&n), None, &ctx(2)).await })
        })
        .collect();
    // Every push is queued or taken by the leader, which waits for the turn.
    while counts().0 < submitted0 + 8 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    release.send(()).unwrap();
    holder.await.unwrap();
    let mut ok = 0;
    for (name, push) in names.iter().zip(pushes) {
        match push.await.unwrap() {
            Ok(u) => {
                ok += 1;
                assert_eq!(&u.user_name, name);
                assert!(store.get_user(&u.id).await.unwrap().is_some());
            }
            Err(e) => {
                assert_eq!(*name, "taken", "{name}: {e}");
                assert!(is_uniqueness(&e), "{e}");
            }
        }
    }
    assert_eq!(ok, 7);
    let groups = counts().1 - groups0;
    assert!(
        (1..=2).contains(&groups),
        "8 waiting mutations took {groups} commits"
    );
    // Each committed create queued its own outbox row; the refused one none.
    let rows = outbox_rows(&store).await;
    assert_eq!(rows.len(), 8, "{rows:?}");
    db.finish().await;
}

/// A background write holding the write turn (and SQLite's lock) until the sender is used or
/// dropped; returned once it holds it.
async fn hold_the_write_lock(
    store: &Store,
) -> (
    std::sync::mpsc::Sender<()>,
    impl std::future::Future<Output = ()>,
) {
    let (release, released) = std::sync::mpsc::channel::<()>();
    let (holding, held) = tokio::sync::oneshot::channel::<()>();
    let store = store.clone();
    let holder = tokio::task::spawn_blocking(move || {
        let _gate = gate::install(store.inner.write_gate.clone());
        let mut conn = store.inner.pool.get().unwrap();
        write_tx(&mut conn, |_| {
            let _ = holding.send(());
            let _ = released.recv();
            Ok(())
        })
        .unwrap();
    });
    held.await.unwrap();
    (release, async move { holder.await.unwrap() })
}

/// Wait until `n` mutations were submitted to the group commit and `queued` of them wait to be
/// taken (the others are the leader's, which waits for the write turn).
async fn wait_for_the_queue(store: &Store, n: u64, queued: usize) {
    use std::sync::atomic::Ordering;
    let c = store
        .inner
        .committer
        .as_ref()
        .expect("a SQLite file groups");
    while c.counts.submitted.load(Ordering::SeqCst) < n || c.queued() != queued {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// A group whose commit fails answers every one of its mutations 503, also one that had
/// failed alone (a 409 caused by a mutation that is not committed either): nothing of the
/// group is written. The commit is made to fail by a foreign key checked only at commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[allow(clippy::disallowed_methods)] // test tasks, joined below
async fn a_failed_group_commit_answers_every_mutation_503() {
    let db = sqlite_db().await;
    let store = db.store.clone();
    let (release, holder) = hold_the_write_lock(&store).await;
    // The first job is the leader's own group (taken before it waits for the turn).
    let first = {
        let store = store.clone();
        tokio::spawn(async move { store.create_user(user("first"), None, &ctx(1)).await })
    };
    wait_for_the_queue(&store, 1, 0).await;
    let a = {
        let store = store.clone();
        tokio::spawn(async move { store.create_user(user("alice"), None, &ctx(2)).await })
    };
    wait_for_the_queue(&store, 2, 1).await;
    let b = {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .run_mutation(None, |conn| {
                    diesel::sql_query("PRAGMA defer_foreign_keys = ON").execute(conn)?;
                    diesel::sql_query(
                        "INSERT INTO resource_emails (resource_seq, value_norm) VALUES (987654, 'x')",
                    )
                    .execute(conn)?;
                    Ok(())
                })
                .await
        })
    };
    wait_for_the_queue(&store, 3, 2).await;
    let c = {
        let store = store.clone();
        tokio::spawn(async move { store.create_user(user("alice"), None, &ctx(3)).await })
    };
    wait_for_the_queue(&store, 4, 3).await;
    release.send(()).unwrap();
    holder.await;
    first.await.unwrap().unwrap();
    let a = a.await.unwrap();
    assert!(matches!(a, Err(StoreError::Unavailable(_))), "{a:?}");
    let b = b.await.unwrap();
    assert!(matches!(b, Err(StoreError::Unavailable(_))), "{b:?}");
    let c = c.await.unwrap();
    assert!(
        matches!(c, Err(StoreError::Unavailable(_))),
        "a 409 of an uncommitted group: {c:?}"
    );
    let names: Vec<String> = store
        .list_users(None, 1, 10, String::new())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|u| u.user_name)
        .collect();
    assert_eq!(names, ["first"]);
    // The queue goes on: the next push commits.
    store
        .create_user(user("alice"), None, &ctx(4))
        .await
        .unwrap();
    db.finish().await;
}

/// A mutation of a group whose request's deadline passes while later mutations of its group
/// run is not committed: the group is rolled back to it before the commit, and it and every
/// mutation after it answer 503 (they may have seen its writes); one past its deadline when
/// its turn comes is not run at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[allow(clippy::disallowed_methods)] // test tasks, joined below
async fn a_grouped_mutation_past_its_deadline_is_not_committed() {
    let db = sqlite_db().await;
    let store = db.store.clone();
    let (release, holder) = hold_the_write_lock(&store).await;
    let first = {
        let store = store.clone();
        tokio::spawn(async move { store.create_user(user("first"), None, &ctx(1)).await })
    };
    wait_for_the_queue(&store, 1, 0).await;
    let with_deadline = |ms: u64, now: i64| {
        let mut c = ctx(now);
        c.deadline = Some(Deadline::new(Instant::now() + Duration::from_millis(ms)));
        c
    };
    // Already past its deadline when its turn comes.
    let stale = {
        let (store, c) = (store.clone(), with_deadline(1, 2));
        tokio::spawn(async move { store.create_user(user("stale"), None, &c).await })
    };
    wait_for_the_queue(&store, 2, 1).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    // Its own savepoint ends well before its deadline; the next job outlasts it.
    let late = {
        let (store, c) = (store.clone(), with_deadline(300, 3));
        tokio::spawn(async move { store.create_user(user("late"), None, &c).await })
    };
    wait_for_the_queue(&store, 3, 2).await;
    let slow = {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .run_mutation(None, |_| {
                    std::thread::sleep(Duration::from_millis(500));
                    Ok(())
                })
                .await
        })
    };
    wait_for_the_queue(&store, 4, 3).await;
    let after = {
        let store = store.clone();
        tokio::spawn(async move { store.create_user(user("after"), None, &ctx(4)).await })
    };
    wait_for_the_queue(&store, 5, 4).await;
    release.send(()).unwrap();
    holder.await;
    first.await.unwrap().unwrap();
    for (what, r) in [
        ("stale", stale.await.unwrap().map(|_| ())),
        ("late", late.await.unwrap().map(|_| ())),
        ("slow", slow.await.unwrap()),
        ("after", after.await.unwrap().map(|_| ())),
    ] {
        assert!(
            matches!(r, Err(StoreError::Unavailable(_))),
            "{what}: {r:?}"
        );
    }
    let names: Vec<String> = store
        .list_users(None, 1, 10, String::new())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|u| u.user_name)
        .collect();
    assert_eq!(names, ["first"]);
    db.finish().await;
}
