//! Interleavings on real PostgreSQL that READ COMMITTED makes possible: a second connection
//! holds a row lock (or a whole transaction) open at the exact step, and the test waits until
//! the store's statement is queued behind it (`pg_stat_activity`), then lets it go. No sleeps.

#![allow(clippy::disallowed_methods)] // a test's tasks end with it; no tracker needed

use super::*;
use diesel::connection::TransactionManager;
use std::sync::mpsc;

fn url_of(db: &TestDb) -> String {
    format!(
        "postgres://postgres@127.0.0.1/{}",
        db.pg_name.as_deref().expect("a PostgreSQL test database")
    )
}

/// Wait until `n` backends of this database wait on a lock.
async fn lock_waiters(url: &str, n: i64) {
    let url = url.to_owned();
    tokio::task::spawn_blocking(move || {
        #[derive(QueryableByName)]
        struct Count {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        let mut c = diesel::PgConnection::establish(&url).unwrap();
        let started = Instant::now();
        loop {
            let waiting = diesel::sql_query(
                "SELECT count(*) AS n FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .get_result::<Count>(&mut c)
            .unwrap()
            .n;
            if waiting >= n {
                return;
            }
            assert!(
                started.elapsed() < std::time::Duration::from_secs(20),
                "{waiting} of {n} backends ever waited on a lock"
            );
            std::thread::park_timeout(std::time::Duration::from_millis(5));
        }
    })
    .await
    .unwrap();
}

/// Run `f` in a transaction on a connection of its own; it stays open (locks held) until the
/// returned sender is used, then commits. Returns once `f` ran.
async fn open_transaction(
    url: &str,
    f: impl FnOnce(&mut DbConnection) + Send + 'static,
) -> (mpsc::Sender<()>, std::thread::JoinHandle<()>) {
    let url = url.to_owned();
    let (ready_tx, ready_rx) = mpsc::channel();
    let (commit_tx, commit_rx) = mpsc::channel::<()>();
    let handle = std::thread::spawn(move || {
        let mut conn = DbConnection::Pg(diesel::PgConnection::establish(&url).unwrap());
        type Tm = <DbConnection as diesel::Connection>::TransactionManager;
        Tm::begin_transaction(&mut conn).unwrap();
        f(&mut conn);
        ready_tx.send(()).unwrap();
        commit_rx.recv().unwrap();
        Tm::commit_transaction(&mut conn).unwrap();
    });
    tokio::task::spawn_blocking(move || ready_rx.recv().unwrap())
        .await
        .unwrap();
    (commit_tx, handle)
}

/// What a settle of the row does: lock it and delete it.
fn settle_deletes(resource_id: String) -> impl FnOnce(&mut DbConnection) + Send + 'static {
    move |conn| {
        diesel::sql_query(format!(
            "SELECT id FROM outbox WHERE resource_id = '{resource_id}' FOR UPDATE"
        ))
        .execute(conn)
        .unwrap();
        diesel::sql_query(format!(
            "DELETE FROM outbox WHERE resource_id = '{resource_id}'"
        ))
        .execute(conn)
        .unwrap();
    }
}

async fn rows_of(store: &Store, id: &str) -> Vec<(i64, String)> {
    let id = id.to_owned();
    store
        .run(move |conn| {
            Ok(outbox::table
                .filter(outbox::resource_id.eq(&id))
                .select((outbox::version, outbox::state))
                .load::<(i64, String)>(conn)?)
        })
        .await
        .unwrap()
}

fn same_user() -> impl FnOnce(&StoredUser) -> Result<UserUpdate, ScimError> + Send + 'static {
    |u: &StoredUser| {
        Ok(UserUpdate {
            input: user(&u.user_name),
            password_hash: None,
        })
    }
}

/// Item 4 of issue 8: a mutation whose outbox upsert meets a settle that locked and deleted
/// the row. Before: the upsert's UPDATE by id hit 0 rows after the settle committed, the
/// mutation was acknowledged and nothing was ever queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn races_a_change_landing_while_a_settle_deletes_its_row_stays_queued() {
    let db = pg_db().await;
    let (store, url) = (db.store.clone(), url_of(&db));
    let id = store
        .create_user(user("racer"), None, &ctx(100))
        .await
        .unwrap()
        .id;
    let (commit, settle) = open_transaction(&url, settle_deletes(id.clone())).await;
    let mutation = {
        let (store, id) = (store.clone(), id.clone());
        tokio::spawn(async move {
            store
                .update_user(&id, "patch", &ctx(200), same_user())
                .await
        })
    };
    lock_waiters(&url, 1).await;
    commit.send(()).unwrap();
    settle.join().unwrap();
    assert_eq!(mutation.await.unwrap().unwrap().meta.version, 2);
    assert_eq!(rows_of(&store, &id).await, [(2, "pending".to_owned())]);
    db.finish().await;
}

/// The same for a dependant re-queue (`enqueue_many`, e.g. a group whose member got its entry).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn races_a_dependant_requeue_landing_while_a_settle_deletes_its_row_stays_queued() {
    let db = pg_db().await;
    let (store, url) = (db.store.clone(), url_of(&db));
    let id = store
        .create_group(group("racers", None), &ctx(100))
        .await
        .unwrap()
        .id;
    let (commit, settle) = open_transaction(&url, settle_deletes(id.clone())).await;
    let requeue = {
        let (store, id) = (store.clone(), id.clone());
        tokio::spawn(async move {
            store
                .enqueue_many(TARGET, ResourceType::Group, &[id], "membership", 200)
                .await
        })
    };
    lock_waiters(&url, 1).await;
    commit.send(()).unwrap();
    settle.join().unwrap();
    assert_eq!(requeue.await.unwrap().unwrap(), 1);
    assert_eq!(rows_of(&store, &id).await, [(1, "pending".to_owned())]);
    db.finish().await;
}

/// A change re-queues a dead letter while `dead-letters discard` runs: the discard selected
/// the row as dead, the change made it pending and committed; the discard's delete must not
/// take the new change with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn races_a_change_landing_during_a_dead_letter_discard_stays_queued() {
    let db = pg_db().await;
    let (store, url) = (db.store.clone(), url_of(&db));
    let id = store
        .create_user(user("doomed"), None, &ctx(100))
        .await
        .unwrap()
        .id;
    let item = store
        .claim(TARGET, 100, 10_000, 10)
        .await
        .unwrap()
        .remove(0);
    store
        .settle_failed(&item, "refused", 200, true, 200)
        .await
        .unwrap();
    assert_eq!(rows_of(&store, &id).await, [(1, "dead".to_owned())]);
    let (commit, mutation) = open_transaction(&url, {
        let id = id.clone();
        move |conn| {
            crate::store::resources::update_user(
                conn,
                &[TARGET.to_owned()],
                &id,
                "patch",
                &ctx(300),
                same_user(),
            )
            .unwrap();
        }
    })
    .await;
    let discard = {
        let store = store.clone();
        tokio::spawn(async move { store.discard_dead(None, None).await })
    };
    lock_waiters(&url, 1).await;
    commit.send(()).unwrap();
    mutation.join().unwrap();
    assert_eq!(discard.await.unwrap().unwrap(), 0, "nothing dead was left");
    assert_eq!(rows_of(&store, &id).await, [(2, "pending".to_owned())]);
    db.finish().await;
}

/// Item 9 of issue 8: a group PATCH (group, then its members) and the delete of a member
/// (before: the user, then its groups) queued behind one lock on the group, the PATCH first.
/// Before: PostgreSQL found the cycle and aborted one (40P01, a 503 to the IdP).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn races_deleting_a_user_and_patching_its_group_do_not_deadlock() {
    let db = pg_db().await;
    let (store, url) = (db.store.clone(), url_of(&db));
    let x = store
        .create_user(user("x"), None, &ctx(1))
        .await
        .unwrap()
        .id;
    let y = store
        .create_user(user("y"), None, &ctx(1))
        .await
        .unwrap()
        .id;
    let g = store
        .create_group(group("g", Some(vec![x.clone()])), &ctx(1))
        .await
        .unwrap()
        .id;
    let (g_seq, _) = {
        let g = g.clone();
        store
            .run(move |conn| {
                Ok(resources::table
                    .filter(resources::id.eq(&g))
                    .select((resources::seq, resources::version))
                    .first::<(i64, i64)>(conn)?)
            })
            .await
            .unwrap()
    };
    let (commit, holder) = open_transaction(&url, move |conn| {
        diesel::sql_query(format!(
            "SELECT seq FROM resources WHERE seq = {g_seq} FOR UPDATE"
        ))
        .execute(conn)
        .unwrap();
    })
    .await;
    let patch = {
        let (store, g, x, y) = (store.clone(), g.clone(), x.clone(), y.clone());
        tokio::spawn(async move {
            store
                .update_group(
                    &g,
                    "patch",
                    &ctx(2),
                    members_update(vec![MemberOp::Add(vec![member(x), member(y)])]),
                )
                .await
        })
    };
    lock_waiters(&url, 1).await;
    let delete = {
        let (store, x) = (store.clone(), x.clone());
        tokio::spawn(async move { store.delete_user(&x, None, &ctx(3)).await })
    };
    lock_waiters(&url, 2).await;
    commit.send(()).unwrap();
    holder.join().unwrap();
    let patched = patch.await.unwrap();
    let deleted = delete.await.unwrap();
    assert!(patched.is_ok(), "patch: {:?}", patched.err());
    assert!(deleted.is_ok(), "delete: {:?}", deleted.err());
    assert_eq!(member_ids(&store, &g).await, [y]);
    db.finish().await;
}

/// Two instances share one PostgreSQL store; one restarts. It releases the claims recorded
/// under its own instance id at once and leaves the other's live claims alone. Before: on
/// PostgreSQL nothing was released and a restarted daemon's rows waited out their lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn claims_a_restarted_instance_releases_its_own_claims_only() {
    let db = pg_db().await;
    let url = url_of(&db);
    let other = {
        let mut s = settings(url.clone());
        s.instance_id = "other-host".into();
        Store::open(&s, vec![TARGET.to_owned()]).await.unwrap()
    };
    let me = db.store.clone();
    let a = me
        .create_user(user("mine"), None, &ctx(100))
        .await
        .unwrap()
        .id;
    assert_eq!(me.claim(TARGET, 100, 600_000, 10).await.unwrap().len(), 1);
    let b = me
        .create_user(user("theirs"), None, &ctx(100))
        .await
        .unwrap()
        .id;
    assert_eq!(
        other.claim(TARGET, 100, 600_000, 10).await.unwrap().len(),
        1
    );

    // "Restart": a new store under the same instance id (with the instance lock).
    let restarted = Store::open(&settings(url), vec![TARGET.to_owned()])
        .await
        .unwrap();
    assert_eq!(restarted.release_stale_claims(200).await.unwrap(), 1);
    let again = restarted.claim(TARGET, 200, 600_000, 10).await.unwrap();
    assert_eq!(
        again
            .iter()
            .map(|i| i.resource_id.as_str())
            .collect::<Vec<_>>(),
        [a.as_str()],
        "only the restarted instance's own claim was released; {b} is still held"
    );
    drop((other, restarted));
    db.finish().await;
}

/// A PostgreSQL read transaction is one snapshot: REPEATABLE READ, read only.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn claims_postgres_read_transactions_are_repeatable_read_and_read_only() {
    let db = pg_db().await;
    let (isolation, read_only) = db
        .store
        .run(|conn| {
            read_tx(conn, |conn| {
                #[derive(QueryableByName)]
                struct Setting {
                    #[diesel(sql_type = diesel::sql_types::Text)]
                    v: String,
                }
                let show = |conn: &mut DbConnection, what: &str| -> Result<String, StoreError> {
                    Ok(
                        diesel::sql_query(format!("SELECT current_setting('{what}') AS v"))
                            .get_result::<Setting>(conn)?
                            .v,
                    )
                };
                Ok((
                    show(conn, "transaction_isolation")?,
                    show(conn, "transaction_read_only")?,
                ))
            })
        })
        .await
        .unwrap();
    assert_eq!(
        (isolation.as_str(), read_only.as_str()),
        ("repeatable read", "on")
    );
    db.finish().await;
}

/// A claim renews only while its epoch is ours: once another worker took the row (after the
/// lease ran out), the first one's renewal (start of apply, heartbeat) reports the claim lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn claims_renewal_fails_once_another_worker_took_the_row() {
    on_both(|store, backend| async move {
        store
            .create_user(user("renewed"), None, &ctx(100))
            .await
            .unwrap();
        let first = store.claim(TARGET, 100, 1000, 10).await.unwrap().remove(0);
        assert!(
            store.renew_claim(&first, 900, 1000).await.unwrap(),
            "{backend}"
        );
        assert!(
            store
                .claim(TARGET, 1500, 1000, 10)
                .await
                .unwrap()
                .is_empty(),
            "{backend}: renewed until 1900"
        );
        // Expired but not taken: still ours (taking it would have moved the epoch).
        assert!(
            store.renew_claim(&first, 2500, 1000).await.unwrap(),
            "{backend}"
        );
        let second = store.claim(TARGET, 4000, 1000, 10).await.unwrap().remove(0);
        assert!(second.claim_epoch > first.claim_epoch);
        assert!(
            !store.renew_claim(&first, 4100, 1000).await.unwrap(),
            "{backend}"
        );
        assert!(
            store.renew_claim(&second, 4100, 1000).await.unwrap(),
            "{backend}"
        );
    })
    .await;
}

/// A settle that released a re-queued row (`claimed_until` cleared, same epoch) is not undone
/// by a heartbeat's renewal still on its way: the row stays unclaimed and due. Before: the
/// late renewal claimed it again for a whole lease, for nobody.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn claims_a_late_renewal_does_not_claim_a_released_row_again() {
    on_both(|store, backend| async move {
        let id = store
            .create_user(user("released"), None, &ctx(100))
            .await
            .unwrap()
            .id;
        let item = store.claim(TARGET, 100, 1000, 10).await.unwrap().remove(0);
        // A re-queue while applying: the settle keeps the row and releases it.
        let queued = store
            .enqueue_many(
                TARGET,
                ResourceType::User,
                std::slice::from_ref(&id),
                "membership",
                150,
            )
            .await
            .unwrap();
        assert_eq!(queued, 1);
        store
            .settle_applied(&item, applied(&item, item.version, 200), 200)
            .await
            .unwrap();
        assert!(
            !store.renew_claim(&item, 250, 1000).await.unwrap(),
            "{backend}: a released row is no longer the claim's"
        );
        let again = store.claim(TARGET, 300, 1000, 10).await.unwrap();
        assert_eq!(again.len(), 1, "{backend}: the released row is due at once");
    })
    .await;
}

/// The writes before a sync are made only under the claim: once another worker took the row
/// (its lease ran out), a stalled apply's intent is not recorded. Before: the batch wrote it
/// on the strength of its claim time alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn claims_writes_before_a_sync_need_the_claim_still_held() {
    on_both(|store, backend| async move {
        let id = store
            .create_user(user("stalled"), None, &ctx(100))
            .await
            .unwrap()
            .id;
        let first = store.claim(TARGET, 100, 1000, 10).await.unwrap().remove(0);
        let second = store.claim(TARGET, 2000, 1000, 10).await.unwrap().remove(0);
        assert!(second.claim_epoch > first.claim_epoch);
        let intent = |item: &OutboxItem| {
            let extra = Bookkeeping {
                creating: Some("uid=stalled,ou=People,dc=example,dc=com".into()),
                since_ms: Some(2100),
                attempt_ms: Some(2100),
                ..Bookkeeping::default()
            };
            BeforeSync {
                claim: Some(item.clone()),
                resource_type: ResourceType::User,
                resource_id: id.clone(),
                intent: Some(TargetState {
                    target: TARGET.into(),
                    resource_type: ResourceType::User,
                    resource_id: id.clone(),
                    applied_version: 0,
                    target_key: None,
                    extra: Some(extra),
                    updated_ms: 2100,
                }),
                reserve: None,
                deactivating: false,
                orphans: Vec::new(),
            }
        };
        let stale = store.before_sync(TARGET, vec![intent(&first)]).await;
        assert!(
            matches!(stale.as_slice(), [Ok(done)] if done.lost),
            "{backend}: {stale:?}"
        );
        assert_eq!(
            store.target_state(TARGET, &id).await.unwrap(),
            None,
            "{backend}"
        );
        let held = store.before_sync(TARGET, vec![intent(&second)]).await;
        assert!(
            matches!(held.as_slice(), [Ok(done)] if !done.lost),
            "{backend}: {held:?}"
        );
        assert!(
            store.target_state(TARGET, &id).await.unwrap().is_some(),
            "{backend}: the claim's owner records its intent"
        );
    })
    .await;
}

/// Review finding 11: filling a missing `key_norm` (rows from before the index) reads the row,
/// then writes; a settle that recorded a new key in between must win. Before: the fill's
/// UPDATE by key overwrote the new key's `key_norm` with the old key's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn races_filling_a_missing_key_norm_never_overwrites_a_newer_key() {
    let db = pg_db().await;
    let (store, url) = (db.store.clone(), url_of(&db));
    let id = store
        .create_user(user("filler"), None, &ctx(100))
        .await
        .unwrap()
        .id;
    let item = store.claim(TARGET, 100, 1000, 10).await.unwrap().remove(0);
    store
        .settle_applied(&item, applied(&item, 1, 200), 200)
        .await
        .unwrap();
    // A state from before the index: no key_norm.
    let clear = id.clone();
    store
        .run(move |conn| {
            diesel::sql_query(format!(
                "UPDATE target_state SET key_norm = NULL WHERE resource_id = '{clear}'"
            ))
            .execute(conn)?;
            Ok(())
        })
        .await
        .unwrap();
    // A settle records a new key (and its key_norm) and holds the row until told.
    let moved = id.clone();
    let (commit, settle) = open_transaction(&url, move |conn| {
        diesel::sql_query(format!(
            "UPDATE target_state SET target_key = 'uid=moved,ou=people', \
             key_norm = 'uid=moved,ou=people' WHERE resource_id = '{moved}'"
        ))
        .execute(conn)
        .unwrap();
    })
    .await;
    let fill = {
        let store = store.clone();
        tokio::spawn(async move { store.fill_key_norms(TARGET).await })
    };
    lock_waiters(&url, 1).await;
    commit.send(()).unwrap();
    settle.join().unwrap();
    fill.await.unwrap().unwrap();
    let key = id.clone();
    let stored = store
        .run(move |conn| {
            Ok(diesel::sql_query(format!(
                "SELECT key_norm AS k FROM target_state WHERE resource_id = '{key}'"
            ))
            .get_result::<KeyNorm>(conn)?
            .k)
        })
        .await
        .unwrap();
    assert_eq!(
        stored.as_deref(),
        Some("uid=moved,ou=people"),
        "the fill overwrote the newer key's key_norm"
    );
    db.finish().await;
}

#[derive(QueryableByName)]
struct KeyNorm {
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    k: Option<String>,
}

/// Review finding 8: a reference-index rebuild's backfill and a holder's own render record the
/// same rows at once. Before: the second insert waited for the first, then failed on the
/// primary key (the backfill, or the render's apply, errored).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn races_a_backfill_and_a_render_recording_the_same_references_both_succeed() {
    let db = pg_db().await;
    let (store, url) = (db.store.clone(), url_of(&db));
    for (holder, concurrent_render_resolves) in [("h-backfill", None), ("h-render", Some("b"))] {
        // One side inserted the row and has not committed yet.
        let insert = holder.to_owned();
        let (commit, first) = open_transaction(&url, move |conn| {
            diesel::sql_query(format!(
                "INSERT INTO user_references (target, holder_id, ref_by, ref_value, \
                 resolved_id) VALUES ('{TARGET}', '{insert}', 'id', 'boss', 'a')"
            ))
            .execute(conn)
            .unwrap();
        })
        .await;
        let second = {
            let (store, holder) = (store.clone(), holder.to_owned());
            let refs = vec![(
                "id".to_owned(),
                "boss".to_owned(),
                concurrent_render_resolves.map(str::to_owned),
            )];
            tokio::spawn(async move {
                if concurrent_render_resolves.is_some() {
                    store.record_references(TARGET, &holder, refs).await
                } else {
                    store.backfill_references(TARGET, &holder, refs).await
                }
            })
        };
        lock_waiters(&url, 1).await;
        commit.send(()).unwrap();
        first.join().unwrap();
        let done = second.await.unwrap();
        assert!(done.is_ok(), "{holder}: {:?}", done.err());
    }
    // The render is newer than what it met: its resolution stands; the backfill yields.
    let resolved = |h: &'static str| {
        let store = store.clone();
        async move {
            store
                .run(move |conn| {
                    Ok(diesel::sql_query(format!(
                        "SELECT resolved_id AS k FROM user_references WHERE holder_id = '{h}'"
                    ))
                    .get_result::<KeyNorm>(conn)?
                    .k)
                })
                .await
                .unwrap()
        }
    };
    assert_eq!(resolved("h-backfill").await.as_deref(), Some("a"));
    assert_eq!(resolved("h-render").await.as_deref(), Some("b"));
    db.finish().await;
}

/// Pruning a group's membership changes meets a PATCH of the group (which holds the group's
/// `member_log` row and then writes its change rows): pruning takes the log's row first, as
/// the PATCH does, and waits. Before: it deleted the change rows first, then waited on the
/// log's row while the PATCH waited on a change row: a deadlock, one of them aborted (40P01),
/// the PATCH answered 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn races_pruning_membership_changes_waits_for_a_patch_of_the_group_never_deadlocks() {
    let db = pg_db().await;
    let (store, url) = (db.store.clone(), url_of(&db));
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
    let g = store
        .create_group(group("g", Some(vec![a])), &ctx(2))
        .await
        .unwrap();
    let add = members_update(vec![MemberOp::Add(vec![member(b)])]);
    store
        .update_group(&g.id, "patch", &ctx(3), add)
        .await
        .unwrap();
    let claimed = store.claim(TARGET, 100, 600_000, 10).await.unwrap();
    let item = claimed.iter().find(|i| i.resource_id == g.id).unwrap();
    let state = TargetState {
        target: TARGET.into(),
        resource_type: ResourceType::Group,
        resource_id: g.id.clone(),
        applied_version: 2,
        target_key: Some("cn=g".into()),
        extra: None,
        updated_ms: 100,
    };
    store.settle_applied(item, state, 100).await.unwrap();
    // The PATCH: its version bump holds the log's row; its change rows come next.
    let (ready_tx, ready_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let patch = {
        let (url, id) = (url.clone(), g.id.clone());
        std::thread::spawn(move || -> Result<(), String> {
            let mut conn = DbConnection::Pg(diesel::PgConnection::establish(&url).unwrap());
            type Tm = <DbConnection as diesel::Connection>::TransactionManager;
            Tm::begin_transaction(&mut conn).unwrap();
            let seq = format!("(SELECT seq FROM resources WHERE id = '{id}')");
            diesel::sql_query(format!(
                "UPDATE member_log SET logged_version = logged_version WHERE group_seq = {seq}"
            ))
            .execute(&mut conn)
            .unwrap();
            ready_tx.send(()).unwrap();
            go_rx.recv().unwrap();
            let touched = diesel::sql_query(format!(
                "UPDATE member_changes SET version = version WHERE group_seq = {seq}"
            ))
            .execute(&mut conn)
            .map_err(|e| e.to_string());
            match touched {
                Ok(_) => Tm::commit_transaction(&mut conn).map_err(|e| e.to_string()),
                Err(e) => {
                    let _ = Tm::rollback_transaction(&mut conn);
                    Err(e)
                }
            }
        })
    };
    tokio::task::spawn_blocking(move || ready_rx.recv().unwrap())
        .await
        .unwrap();
    let prune = {
        let (store, id) = (store.clone(), g.id.clone());
        tokio::spawn(async move { store.prune_member_changes(&id, &[TARGET.to_owned()]).await })
    };
    // Pruning waits on the log's row (the PATCH holds it); then the PATCH writes its rows.
    lock_waiters(&url, 1).await;
    go_tx.send(()).unwrap();
    let patched = tokio::task::spawn_blocking(move || patch.join().unwrap())
        .await
        .unwrap();
    assert_eq!(patched, Ok(()), "the PATCH");
    prune.await.unwrap().expect("the prune");
    let d = store.member_delta(TARGET, &g.id, 2).await.unwrap().unwrap();
    assert!(d.trusted, "{d:?}");
    db.finish().await;
}

async fn seq_of(store: &Store, id: &str) -> i64 {
    let id = id.to_owned();
    store
        .run(move |conn| {
            Ok(resources::table
                .filter(resources::id.eq(&id))
                .select(resources::seq)
                .first::<i64>(conn)?)
        })
        .await
        .unwrap()
}

/// Nested groups, the outbox row lock order (second reader, item 1): a (oldest, lowest seq)
/// contains b contains c. A member PATCH of c queues c, a, b; one of b queues b, a. Before,
/// each took its own row first and its ancestors after, ascending by seq: with a's row held,
/// the PATCH of c held c and waited for a, the PATCH of b held b and waited for a; once a was
/// free the first took it and waited for b: PostgreSQL aborted one (40P01, a 503). Now every
/// transaction takes group outbox rows in one ascending-seq order, its own among them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn races_member_patches_of_a_child_and_of_its_parent_do_not_deadlock() {
    let db = pg_db().await;
    let (store, url) = (db.store.clone(), url_of(&db));
    let mut ids = Vec::new();
    for name in ["u", "v"] {
        ids.push(
            store
                .create_user(user(name), None, &ctx(1))
                .await
                .unwrap()
                .id,
        );
    }
    let (u, v) = (ids[0].clone(), ids[1].clone());
    let a = store
        .create_group(group("a", None), &ctx(1))
        .await
        .unwrap()
        .id;
    let b = store
        .create_group(group("b", None), &ctx(1))
        .await
        .unwrap()
        .id;
    let c = store
        .create_group(group("c", None), &ctx(1))
        .await
        .unwrap()
        .id;
    for (parent, child) in [(&a, &b), (&b, &c)] {
        store
            .update_group(
                parent,
                "patch",
                &ctx(2),
                members_update(vec![MemberOp::Add(vec![member(child.clone())])]),
            )
            .await
            .unwrap();
    }
    assert!(seq_of(&store, &a).await < seq_of(&store, &b).await);
    assert!(seq_of(&store, &b).await < seq_of(&store, &c).await);
    let (commit, holder) = open_transaction(&url, {
        let a = a.clone();
        move |conn| {
            diesel::sql_query(format!(
                "SELECT id FROM outbox WHERE resource_id = '{a}' FOR UPDATE"
            ))
            .execute(conn)
            .unwrap();
        }
    })
    .await;
    let patch = |g: String, m: String, at: i64| {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .update_group(
                    &g,
                    "patch",
                    &ctx(at),
                    members_update(vec![MemberOp::Add(vec![member(m)])]),
                )
                .await
        })
    };
    let of_c = patch(c.clone(), u.clone(), 3);
    lock_waiters(&url, 1).await;
    let of_b = patch(b.clone(), v.clone(), 4);
    lock_waiters(&url, 2).await;
    commit.send(()).unwrap();
    holder.join().unwrap();
    let (of_c, of_b) = (of_c.await.unwrap(), of_b.await.unwrap());
    assert!(of_c.is_ok(), "PATCH of c: {:?}", of_c.err());
    assert!(of_b.is_ok(), "PATCH of b: {:?}", of_b.err());
    assert_eq!(member_ids(&store, &c).await, [u]);
    let rows = outbox_rows(&store).await;
    for g in [&a, &b, &c] {
        assert!(rows.iter().any(|(id, _, _)| id == g), "{g}: {rows:?}");
    }
    db.finish().await;
}

/// Nested groups, resource row locks (second reader, item 2): u in b and d, d in b, d older
/// (seq(d) < seq(b)). Deleting u locks u's groups by seq (d, then b); a PUT of b holds b and
/// locks its listed members, d among them. With b's change log row held, the PUT holds b and
/// waits, the delete holds d and waits for b; once free the PUT locked d: before, both locks
/// on d were exclusive-ish (FOR UPDATE against FOR SHARE) and PostgreSQL aborted one (40P01).
/// Now the delete locks the groups `FOR NO KEY UPDATE` and the PUT its members `FOR KEY
/// SHARE`, which do not conflict (a member's own delete still takes `FOR UPDATE`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn races_deleting_a_member_and_putting_a_group_with_its_other_group_do_not_deadlock() {
    let db = pg_db().await;
    let (store, url) = (db.store.clone(), url_of(&db));
    let u = store
        .create_user(user("u"), None, &ctx(1))
        .await
        .unwrap()
        .id;
    let d = store
        .create_group(group("d", Some(vec![u.clone()])), &ctx(1))
        .await
        .unwrap()
        .id;
    let b = store
        .create_group(group("b", Some(vec![u.clone(), d.clone()])), &ctx(1))
        .await
        .unwrap()
        .id;
    let b_seq = seq_of(&store, &b).await;
    assert!(seq_of(&store, &d).await < b_seq);
    let (commit, holder) = open_transaction(&url, move |conn| {
        diesel::sql_query(format!(
            "SELECT group_seq FROM member_log WHERE group_seq = {b_seq} FOR UPDATE"
        ))
        .execute(conn)
        .unwrap();
    })
    .await;
    let put = {
        let (store, b, u, d) = (store.clone(), b.clone(), u.clone(), d.clone());
        tokio::spawn(async move {
            store
                .update_group(
                    &b,
                    "put",
                    &ctx(2),
                    members_update(vec![MemberOp::Replace(vec![member(u), member(d)])]),
                )
                .await
        })
    };
    lock_waiters(&url, 1).await;
    let delete = {
        let (store, u) = (store.clone(), u.clone());
        tokio::spawn(async move { store.delete_user(&u, None, &ctx(3)).await })
    };
    lock_waiters(&url, 2).await;
    commit.send(()).unwrap();
    holder.join().unwrap();
    let (put, delete) = (put.await.unwrap(), delete.await.unwrap());
    assert!(put.is_ok(), "PUT of b: {:?}", put.err());
    assert!(delete.is_ok(), "delete of u: {:?}", delete.err());
    assert!(member_ids(&store, &d).await.is_empty());
    assert_eq!(member_ids(&store, &b).await, [d]);
    db.finish().await;
}
