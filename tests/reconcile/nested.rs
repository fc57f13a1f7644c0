//! Nested groups end to end into a real slapd (issue 11): under `member`/`uniqueMember` a
//! nested group's member value is the child group's DN (the child provisioned first, a
//! parent applied before it gets it once the child settles; a rename of the child follows;
//! deleting the child removes it from its parents); `memberUid` groups flatten (the users
//! reached through any depth, following every change of a child) or refuse, as
//! `groups.nested` says.

use super::*;

fn lower(values: Option<Vec<String>>) -> Vec<String> {
    sorted(
        values
            .unwrap_or_default()
            .into_iter()
            .map(|v| v.to_ascii_lowercase())
            .collect(),
    )
}

async fn user(env: &Env, name: &str) -> String {
    env.create_user(&okta_user(name, "T")).await
}

#[tokio::test]
async fn a_nested_group_is_its_parents_member_by_dn_and_leaves_it_when_deleted() {
    for backend in BACKENDS {
        let env = Env::start_on(backend, GROUPS).await;
        let a = user(&env, "na").await;
        let b = user(&env, "nb").await;
        let child = env.create_group("child", &[&a]).await;
        // The child is not applied yet when the parent is recorded: whichever applies first,
        // the parent ends with the child's DN (the child's first settle queues its parents).
        let parent = env.create_group("parent", &[&b, &child]).await;
        let _top = env.create_group("top", &[&parent]).await;
        env.run().await;
        assert_eq!(
            lower(env.attr(&group_dn("parent"), "member").await),
            sorted(vec![
                group_dn("child").to_ascii_lowercase(),
                user_dn("nb").to_ascii_lowercase()
            ]),
            "{backend:?}"
        );
        assert_eq!(
            lower(env.attr(&group_dn("top"), "member").await),
            [group_dn("parent").to_ascii_lowercase()]
        );
        assert_eq!(
            lower(env.attr(&group_dn("child"), "member").await),
            [user_dn("na").to_ascii_lowercase()]
        );

        // The child renamed (a new DN): its parent's member value follows.
        env.patch(
            &format!("/Groups/{child}"),
            json!([{"op": "replace", "path": "displayName", "value": "kids"}]),
        )
        .await;
        env.run().await;
        assert!(env.exists(&group_dn("kids")).await);
        assert_eq!(
            lower(env.attr(&group_dn("parent"), "member").await),
            sorted(vec![
                group_dn("kids").to_ascii_lowercase(),
                user_dn("nb").to_ascii_lowercase()
            ]),
            "{backend:?}"
        );

        // The child deleted: gone from the directory and from its parent.
        let r = env.t.delete(&format!("/Groups/{child}")).await;
        assert_eq!(r.status.as_u16(), 204, "{}", r.body);
        env.run().await;
        assert!(!env.exists(&group_dn("kids")).await);
        assert_eq!(
            lower(env.attr(&group_dn("parent"), "member").await),
            [user_dn("nb").to_ascii_lowercase()],
            "{backend:?}"
        );
        let report = env.t.d().verify(None, |_, _| {}).await;
        assert!(report.clean(), "{report:#?}");
        assert!(env.dead().await.is_empty());
    }
}

/// A `memberUid` target over slapd, with `groups_extra` in `[targets.groups]`.
async fn posix(backend: Backend, groups_extra: &str) -> Env {
    let slapd = Slapd::start().await;
    let secrets = tempfile::tempdir().unwrap();
    let pw = secrets.path().join("ldap.pw");
    std::fs::write(&pw, format!("{}\n", slapd.password())).unwrap();
    let toml = format!(
        r#"
[reconcile]
workers = 2
max_attempts = 1
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
sn = "name.familyName"
cn = "userName"
[targets.groups]
dn = "cn={{displayName}},{GROUPS}"
object_classes = ["posixGroup"]
member_attribute = "memberUid"
member_value = "uid"
{groups_extra}
[targets.groups.attributes]
gidNumber = {{ constant = "5000" }}
"#,
        url = slapd.uri(),
        bind = slapd.bind_dn(),
        pw = pw.display(),
    );
    let t = TestDaemon::start_with(backend, &toml).await;
    Env {
        t,
        slapd,
        _secrets: secrets,
    }
}

async fn uids(env: &Env, group: &str) -> Vec<String> {
    sorted(
        env.attr(&group_dn(group), "memberUid")
            .await
            .unwrap_or_default(),
    )
}

#[tokio::test]
async fn member_uid_groups_flatten_nested_groups_and_follow_every_change_below() {
    for backend in BACKENDS {
        let env = posix(backend, "").await;
        let a = user(&env, "fa").await;
        let b = user(&env, "fb").await;
        let c = user(&env, "fc").await;
        let child = env.create_group("fchild", &[&a]).await;
        let parent = env.create_group("fparent", &[&b, &child]).await;
        let top = env.create_group("ftop", &[&parent]).await;
        env.run().await;
        assert_eq!(uids(&env, "fchild").await, ["fa"]);
        assert_eq!(uids(&env, "fparent").await, ["fa", "fb"], "{backend:?}");
        assert_eq!(uids(&env, "ftop").await, ["fa", "fb"]);

        // A change two levels down reaches every ancestor.
        env.patch(
            &format!("/Groups/{child}"),
            json!([{"op": "add", "path": "members", "value": [{"value": c}]}]),
        )
        .await;
        env.run().await;
        assert_eq!(
            uids(&env, "fparent").await,
            ["fa", "fb", "fc"],
            "{backend:?}"
        );
        assert_eq!(uids(&env, "ftop").await, ["fa", "fb", "fc"]);

        // A user reached two ways stays while one way is left.
        env.patch(
            &format!("/Groups/{top}"),
            json!([{"op": "add", "path": "members", "value": [{"value": a}]}]),
        )
        .await;
        env.patch(
            &format!("/Groups/{child}"),
            json!([{"op": "remove", "path": format!("members[value eq \"{a}\"]")}]),
        )
        .await;
        env.run().await;
        assert_eq!(uids(&env, "fchild").await, ["fc"]);
        assert_eq!(uids(&env, "fparent").await, ["fb", "fc"], "{backend:?}");
        assert_eq!(uids(&env, "ftop").await, ["fa", "fb", "fc"]);

        // The child deleted: its users leave every ancestor (a stays in top, directly).
        let r = env.t.delete(&format!("/Groups/{child}")).await;
        assert_eq!(r.status.as_u16(), 204, "{}", r.body);
        env.run().await;
        assert_eq!(uids(&env, "fparent").await, ["fb"], "{backend:?}");
        assert_eq!(uids(&env, "ftop").await, ["fa", "fb"]);
        let report = env.t.d().verify(None, |_, _| {}).await;
        assert!(report.clean(), "{report:#?}");
        assert!(env.dead().await.is_empty());
    }
}

#[tokio::test]
async fn a_target_that_refuses_nested_groups_fails_only_the_nesting_group() {
    let env = posix(Backend::Sqlite, "nested = \"refuse\"").await;
    let a = user(&env, "ra").await;
    let child = env.create_group("rchild", &[&a]).await;
    let parent = env.create_group("rparent", &[&child]).await;
    env.run().await;
    assert_eq!(uids(&env, "rchild").await, ["ra"]);
    assert!(!env.exists(&group_dn("rparent")).await);
    let dead = env.dead().await;
    assert_eq!(dead.len(), 1, "{dead:#?}");
    assert_eq!(dead[0].resource_id, parent);
    let text = dead[0].last_error.clone().unwrap_or_default();
    assert!(
        text.contains("groups.nested") && text.contains("refuse"),
        "{text}"
    );
    // Once the child is no longer a member, the group applies.
    env.patch(
        &format!("/Groups/{parent}"),
        json!([{"op": "remove", "path": "members"}]),
    )
    .await;
    env.run().await;
    assert!(
        env.exists(&group_dn("rparent")).await,
        "{:#?} {:#?}",
        env.dead().await,
        env.status().await
    );
    assert!(env.dead().await.is_empty());
}

/// The deferral, forced: the child group's row is held by "another worker" while its parent
/// applies (the child has no entry yet: the parent gets only its user); once the child is
/// created, its first settle queues the parent and marks the child in it, and the parent
/// gets the child's DN (one more modify).
#[tokio::test]
async fn a_parent_applied_before_its_child_exists_gets_the_childs_dn_once_it_is_created() {
    for backend in BACKENDS {
        let env = Env::start_on(backend, GROUPS).await;
        let a = user(&env, "da").await;
        let b = user(&env, "db").await;
        env.run().await;
        let held;
        {
            let _paused = env.t.d().pause_reconcilers().await.unwrap();
            let child = env.create_group("dchild", &[&a]).await;
            let now = scim_sync::http::server::now_ms();
            let claimed = env
                .t
                .d()
                .store
                .claim("corp", now, 600_000, 1)
                .await
                .unwrap();
            assert_eq!(claimed.len(), 1, "{claimed:?}");
            assert_eq!(claimed[0].resource_id, child);
            held = claimed.into_iter().next().unwrap();
            env.create_group("dparent", &[&b, &child]).await;
        }
        env.run().await;
        assert!(!env.exists(&group_dn("dchild")).await);
        assert_eq!(
            lower(env.attr(&group_dn("dparent"), "member").await),
            [user_dn("db").to_ascii_lowercase()],
            "{backend:?}"
        );
        let now = scim_sync::http::server::now_ms();
        env.t
            .d()
            .store
            .settle_failed(&held, "given back", now, false, now)
            .await
            .unwrap();
        env.run().await;
        assert_eq!(
            lower(env.attr(&group_dn("dparent"), "member").await),
            sorted(vec![
                group_dn("dchild").to_ascii_lowercase(),
                user_dn("db").to_ascii_lowercase()
            ]),
            "{backend:?}"
        );
        let report = env.t.d().verify(None, |_, _| {}).await;
        assert!(report.clean(), "{report:#?}");
    }
}

/// Second reader, item 5: a parent queued by its child's first settle is applied at once, not
/// after `poll_interval` (60 s here). The child's row is held while the parent applies
/// without it (as in the deferral test above), then given back and the workers woken once:
/// the child applies in the background and its settle queues the parent. Before, nothing
/// woke a worker for what a settle queued (the look after the settle returned at once for a
/// group): the parent waited out the poll.
#[tokio::test]
async fn a_parent_queued_by_its_childs_settle_applies_without_waiting_for_the_poll() {
    let env = Env::start_edited(Backend::Sqlite, GROUPS, |toml| {
        toml.replacen(
            "[reconcile]\n",
            "[reconcile]\npoll_interval_ms = 60000\n",
            1,
        )
    })
    .await;
    let a = user(&env, "wa").await;
    let b = user(&env, "wb").await;
    env.run().await;
    let held;
    {
        let _paused = env.t.d().pause_reconcilers().await.unwrap();
        let child = env.create_group("wchild", &[&a]).await;
        let now = scim_sync::http::server::now_ms();
        let claimed = env
            .t
            .d()
            .store
            .claim("corp", now, 600_000, 1)
            .await
            .unwrap();
        assert_eq!(claimed.len(), 1, "{claimed:?}");
        assert_eq!(claimed[0].resource_id, child);
        held = claimed.into_iter().next().unwrap();
        env.create_group("wparent", &[&b, &child]).await;
    }
    env.run().await;
    assert_eq!(
        lower(env.attr(&group_dn("wparent"), "member").await),
        [user_dn("wb").to_ascii_lowercase()]
    );
    let now = scim_sync::http::server::now_ms();
    env.t
        .d()
        .store
        .settle_failed(&held, "given back", now, false, now)
        .await
        .unwrap();
    env.t.d().wake();
    let want = sorted(vec![
        group_dn("wchild").to_ascii_lowercase(),
        user_dn("wb").to_ascii_lowercase(),
    ]);
    let started = std::time::Instant::now();
    loop {
        let got = lower(env.attr(&group_dn("wparent"), "member").await);
        if got == want {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "the parent still lacks the child's DN after {:?}: {got:?}",
            started.elapsed()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// How many backends of the database at `url` wait on a lock.
async fn lock_waiters(url: &str) -> i64 {
    let url = url.to_owned();
    tokio::task::spawn_blocking(move || {
        use diesel::prelude::*;
        #[derive(QueryableByName)]
        struct Count {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        let mut c = diesel::PgConnection::establish(&url).unwrap();
        diesel::sql_query(
            "SELECT count(*) AS n FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .get_result::<Count>(&mut c)
        .unwrap()
        .n
    })
    .await
    .unwrap()
}

/// Second reader, item 4: `PATCH`/POST of a parent naming a child group commits between the
/// child's first settle reading its parents (none) and that settle's commit, and the parent
/// applies in between (reading no key for the child). The child's settle is held there
/// deterministically: its apply stops before its sync, its outbox row is locked from another
/// connection, the apply goes on and the settle waits for the row after its read. Before, the
/// look after the settle ran for users only: the parent kept lacking the child's DN with
/// nothing pending. Now it queues the parent again with the child marked dirty in it.
#[tokio::test]
async fn a_parent_made_while_its_childs_first_settle_is_under_way_gets_the_childs_dn() {
    first_settle_race(true).await;
}

/// The same for a user member (the look after a user's settle queued its groups without a
/// dirty mark: a group applied at that version looked at nothing and kept lacking the user).
#[tokio::test]
async fn a_group_made_while_its_members_first_settle_is_under_way_gets_the_member() {
    first_settle_race(false).await;
}

/// The interleaving above, with a child group (`nested`) or a user as the new member.
async fn first_settle_race(nested: bool) {
    use scim_sync::reconcile::worker::PAUSE_BEFORE_SYNC;
    use std::time::Duration;
    let env = Env::start_on(Backend::Postgres, GROUPS).await;
    let a = user(&env, "ra").await;
    let b = user(&env, "rb").await;
    env.run().await;
    let reconciler = env.t.d().current_reconciler().unwrap();
    let stopped = reconciler.arm_pause(PAUSE_BEFORE_SYNC);
    let (child, child_dn) = if nested {
        (env.create_group("rchild", &[&a]).await, group_dn("rchild"))
    } else {
        (user(&env, "rchild").await, user_dn("rchild"))
    };
    tokio::time::timeout(Duration::from_secs(20), stopped.reached())
        .await
        .expect("the child's apply reached its sync");
    let url = env.t.store_url.clone();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn({
        let url = url.clone();
        move || {
            use diesel::connection::SimpleConnection;
            use diesel::Connection;
            let mut c = diesel::PgConnection::establish(&url).unwrap();
            c.batch_execute(
                "BEGIN; SELECT target FROM target_counts WHERE target = 'corp' FOR UPDATE",
            )
            .unwrap();
            ready_tx.send(()).unwrap();
            go_rx.recv().unwrap();
            c.batch_execute("COMMIT").unwrap();
        }
    });
    tokio::task::spawn_blocking(move || ready_rx.recv().unwrap())
        .await
        .unwrap();
    stopped.release();
    // The child's entry is added; its settle read its parents (none) and waits at its commit.
    tokio::time::timeout(Duration::from_secs(20), async {
        while !(env.exists(&child_dn).await && lock_waiters(&url).await >= 1) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the child's settle waits for its row");
    env.create_group("rparent", &[&b, &child]).await;
    // The other worker applies the parent now, reading no key for the child; its settle
    // waits at its commit too.
    tokio::time::timeout(Duration::from_secs(20), async {
        while !(env.exists(&group_dn("rparent")).await && lock_waiters(&url).await >= 2) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the parent applied while the child's settle waited");
    assert_eq!(
        lower(env.attr(&group_dn("rparent"), "member").await),
        [user_dn("rb").to_ascii_lowercase()]
    );
    go_tx.send(()).unwrap();
    tokio::task::spawn_blocking(move || holder.join().unwrap())
        .await
        .unwrap();
    let want = sorted(vec![
        child_dn.to_ascii_lowercase(),
        user_dn("rb").to_ascii_lowercase(),
    ]);
    let started = std::time::Instant::now();
    loop {
        let got = lower(env.attr(&group_dn("rparent"), "member").await);
        if got == want {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the parent still lacks the child's DN: {got:?}, status {:?}",
            env.status().await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let report = env.t.d().verify(None, |_, _| {}).await;
    assert!(report.clean(), "{report:#?}");
}
