//! Fencing of claims against drift repair, dead letters, startup release and lost owners
//! (the concurrency review of issue 8's merge: findings 4, 5 and 9).

use super::*;

/// A live claim of `resource_id`'s row: (claimed_until_ms, claimed_by, claim_epoch).
async fn claim_of(store: &Store, resource_id: &str) -> (Option<i64>, Option<String>, i64) {
    let id = resource_id.to_owned();
    store
        .run(move |conn| {
            Ok(outbox::table
                .filter(outbox::resource_id.eq(id))
                .select((
                    outbox::claimed_until_ms,
                    outbox::claimed_by,
                    outbox::claim_epoch,
                ))
                .first::<(Option<i64>, Option<String>, i64)>(conn)?)
        })
        .await
        .unwrap()
}

/// Review finding 4: drift repair claims a dead letter's row, then a change (the upsert) or
/// `dead-letters retry` lands. Before: both cleared drift's live claim without moving the
/// epoch, a worker claimed the row while drift still held a valid lease, and two applies of
/// one resource ran at once (drift's stale write landing after the worker's newer one).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fencing_a_drift_claim_on_a_dead_letter_survives_a_change_and_a_retry() {
    on_both(|store, backend| async move {
        let u = store
            .create_user(user("deadclaim"), None, &ctx(100))
            .await
            .unwrap();
        let first = store.claim(TARGET, 100, 1000, 10).await.unwrap().remove(0);
        store
            .settle_failed(&first, "schema violation", 0, true, 200)
            .await
            .unwrap();
        assert_eq!(
            store.dead_letters(None).await.unwrap().len(),
            1,
            "{backend}"
        );
        let drift = store
            .claim_resource(TARGET, ResourceType::User, &u.id, 1000, 60_000)
            .await
            .unwrap()
            .expect("drift repair claims the row");
        // The IdP changes the user; an operator retries dead letters.
        store
            .update_user(&u.id, "patch", &ctx(1100), |u| {
                Ok(UserUpdate {
                    input: user(&u.user_name),
                    password_hash: None,
                })
            })
            .await
            .unwrap();
        store.retry_dead(None, None, 1150).await.unwrap();
        assert_eq!(
            claim_of(&store, &u.id).await,
            (
                Some(61_000),
                Some("test-instance".to_owned()),
                drift.claim_epoch
            ),
            "{backend}: drift repair's live claim was cleared"
        );
        assert!(
            store
                .claim(TARGET, 1200, 1000, 10)
                .await
                .unwrap()
                .is_empty(),
            "{backend}: a worker claimed a row drift repair holds"
        );
        // Drift settles as the owner; the newer change runs again.
        store
            .settle_applied(&drift, applied(&drift, 1, 1300), 1300)
            .await
            .unwrap();
        let again = store.claim(TARGET, 1400, 1000, 10).await.unwrap();
        assert_eq!(again.len(), 1, "{backend}: the change was lost");
        assert_eq!(again[0].version, 2, "{backend}");
    })
    .await;
}

/// Review finding 9: a worker whose claim was lost (another took the row after its lease ran
/// out) settles a higher version. Before: it still wrote target_state, key included, over
/// what the current owner holds or reserved.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fencing_a_worker_that_lost_its_claim_writes_no_target_state() {
    on_both(|store, backend| async move {
        let u = store
            .create_user(user("lost"), None, &ctx(100))
            .await
            .unwrap();
        let first = store.claim(TARGET, 100, 1000, 10).await.unwrap().remove(0);
        store
            .settle_applied(&first, applied(&first, 1, 200), 200)
            .await
            .unwrap();
        store
            .update_user(&u.id, "patch", &ctx(300), |u| {
                Ok(UserUpdate {
                    input: user(&u.user_name),
                    password_hash: None,
                })
            })
            .await
            .unwrap();
        let stale = store.claim(TARGET, 300, 1000, 10).await.unwrap().remove(0);
        let owner = store.claim(TARGET, 1400, 1000, 10).await.unwrap().remove(0);
        assert!(owner.claim_epoch > stale.claim_epoch);
        let mut late = applied(&stale, 2, 1500);
        late.target_key = Some("uid=elsewhere,ou=people".into());
        store.settle_applied(&stale, late, 1500).await.unwrap();
        let state = store.target_state(TARGET, &u.id).await.unwrap().unwrap();
        assert_eq!(
            (state.applied_version, state.target_key.as_deref()),
            (1, Some(format!("uid={},ou=people", u.id).as_str())),
            "{backend}: the worker that lost its claim wrote target_state"
        );
        // The owner settles.
        store
            .settle_applied(&owner, applied(&owner, 2, 1600), 1600)
            .await
            .unwrap();
        let state = store.target_state(TARGET, &u.id).await.unwrap().unwrap();
        assert_eq!(state.applied_version, 2, "{backend}");
        assert!(outbox_rows(&store).await.is_empty(), "{backend}");
    })
    .await;
}

/// Review finding 5 (SQLite): the daemon holding the instance lock releases its own claims
/// at startup, not those of a CLI `reconcile --full` (`<host>/cli-<pid>`, no instance lock)
/// applying at that moment. Before: every claim was released.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fencing_startup_release_on_sqlite_keeps_a_cli_claim() {
    let db = sqlite_db().await;
    let daemon = db.store.clone();
    let mine = daemon
        .create_user(user("daemon-row"), None, &ctx(100))
        .await
        .unwrap()
        .id;
    assert_eq!(
        daemon.claim(TARGET, 100, 600_000, 10).await.unwrap().len(),
        1
    );
    let cli = {
        let mut s = settings(format!(
            "sqlite://{}",
            db._dir.as_ref().unwrap().path().join("store.db").display()
        ));
        s.instance_lock = false;
        s.instance_id = "test-instance/cli-4242".into();
        Store::open(&s, vec![TARGET.to_owned()]).await.unwrap()
    };
    let theirs = cli
        .create_user(user("cli-row"), None, &ctx(100))
        .await
        .unwrap()
        .id;
    let held = cli
        .claim_resource(TARGET, ResourceType::User, &theirs, 100, 600_000)
        .await
        .unwrap()
        .expect("the CLI claims its row");
    assert_eq!(daemon.release_stale_claims(5000).await.unwrap(), 1);
    assert_eq!(claim_of(&daemon, &mine).await.0, None);
    assert_eq!(
        claim_of(&daemon, &theirs).await,
        (
            Some(600_100),
            Some("test-instance/cli-4242".to_owned()),
            held.claim_epoch
        ),
        "the startup release freed a live CLI claim"
    );
    drop(cli);
    db.finish().await;
}

/// Review finding 7: a row released at startup waits until `due_ms` (now plus the longest
/// connect and operation timeout): a write the killed process sent may still be on its way
/// to the directory, or queued in it, and must not land after the retry's newer write.
/// Before: released rows were due at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fencing_rows_released_at_startup_wait_for_writes_still_in_flight() {
    let db = sqlite_db().await;
    released_rows_wait(&db.store, &db.store, "sqlite").await;
    db.finish().await;
    let db = pg_db().await;
    // The PostgreSQL test store holds no instance lock; a restarted daemon does.
    let url = format!(
        "postgres://postgres@127.0.0.1/{}",
        db.pg_name.as_deref().unwrap()
    );
    let restarted = Store::open(&settings(url), vec![TARGET.to_owned()])
        .await
        .unwrap();
    released_rows_wait(&db.store, &restarted, "postgres").await;
    drop(restarted);
    db.finish().await;
}

async fn released_rows_wait(store: &Store, restarted: &Store, backend: &str) {
    store
        .create_user(user("in-flight"), None, &ctx(100))
        .await
        .unwrap();
    store
        .create_user(user("backed-off"), None, &ctx(100))
        .await
        .unwrap();
    let claimed = store.claim(TARGET, 100, 600_000, 10).await.unwrap();
    assert_eq!(claimed.len(), 2, "{backend}");
    // The second was failing with a backoff past the release's delay: it keeps it.
    store
        .settle_failed(&claimed[1], "busy", 50_000, false, 150)
        .await
        .unwrap();
    let again = store.claim(TARGET, 50_000, 600_000, 10).await.unwrap();
    assert_eq!(again.len(), 1, "{backend}");
    assert_eq!(
        restarted.release_stale_claims(12_000).await.unwrap(),
        2,
        "{backend}"
    );
    assert!(
        store
            .claim(TARGET, 11_999, 600_000, 10)
            .await
            .unwrap()
            .is_empty(),
        "{backend}: a released row was due before the killed process's writes ended"
    );
    let due = store.claim(TARGET, 12_000, 600_000, 10).await.unwrap();
    assert_eq!(due.len(), 1, "{backend}");
    assert_eq!(due[0].id, claimed[0].id, "{backend}");
    assert_eq!(
        store
            .claim(TARGET, 50_000, 600_000, 10)
            .await
            .unwrap()
            .len(),
        1,
        "{backend}"
    );
}

/// Review finding 5 (PostgreSQL): a second daemon with the same instance id would release the
/// first's live claims at startup; it now refuses to open the store. Before: it opened.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fencing_a_second_daemon_with_the_same_instance_id_on_postgres_refuses_to_start() {
    let db = pg_db().await;
    let url = format!(
        "postgres://postgres@127.0.0.1/{}",
        db.pg_name.as_deref().unwrap()
    );
    let first = Store::open(&settings(url.clone()), vec![TARGET.to_owned()])
        .await
        .expect("the first daemon opens");
    let second = Store::open(&settings(url.clone()), vec![TARGET.to_owned()]).await;
    let err = second
        .err()
        .expect("a second daemon under the same id refused");
    assert!(err.to_string().contains("reconcile.instance_id"), "{err}");
    // Another id, or a CLI (no instance lock), opens; the lock goes with its holder.
    let mut other = settings(url.clone());
    other.instance_id = "other-host".into();
    let other = Store::open(&other, vec![TARGET.to_owned()]).await.unwrap();
    let mut cli = settings(url.clone());
    cli.instance_lock = false;
    let cli = Store::open(&cli, vec![TARGET.to_owned()]).await.unwrap();
    drop(first);
    let again = Store::open(&settings(url), vec![TARGET.to_owned()]).await;
    assert!(again.is_ok(), "{:?}", again.err());
    drop((other, cli, again));
    db.finish().await;
}

/// Review finding 3: while a rename of A from X to Y is reserved but not yet settled (pending,
/// failed, or the process killed between the modrdn and the settle), A's entry may still sit
/// at X (or already at Y), so both must stay A's until a settle records where it is. Before:
/// the reservation moved A's `key_norm` from X to Y and another resource could record an
/// intent for X (then adopt or conflict with A's live entry).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fencing_a_reserved_rename_keeps_the_held_key_until_the_settle() {
    on_both(|store, backend| async move {
        let a = store
            .create_user(user("renamer"), None, &ctx(100))
            .await
            .unwrap();
        let b = store
            .create_user(user("newcomer"), None, &ctx(100))
            .await
            .unwrap();
        let items = store.claim(TARGET, 100, 1000, 10).await.unwrap();
        let item_a = items.iter().find(|i| i.resource_id == a.id).unwrap();
        let mut held = applied(item_a, 1, 200);
        held.target_key = Some("uid=x,ou=people".into());
        store.settle_applied(item_a, held, 200).await.unwrap();
        store
            .reserve_key(TARGET, ResourceType::User, &a.id, "uid=y,ou=people")
            .await
            .unwrap();
        let refused = |key: &'static str, at: i64| {
            let (store, b) = (store.clone(), b.id.clone());
            async move {
                match store.record_intent(intent(&b, key, at)).await {
                    Err(e) => holder_of(e),
                    Ok(()) => None,
                }
            }
        };
        assert_eq!(
            refused("uid=x,ou=people", 300).await,
            Some(a.id.clone()),
            "{backend}: another resource intends the key A's entry still sits at"
        );
        assert_eq!(
            refused("uid=y,ou=people", 300).await,
            Some(a.id.clone()),
            "{backend}: another resource intends the key A reserved"
        );
        // The rename fails (target down): both keys stay A's.
        store
            .enqueue(TARGET, ResourceType::User, &a.id, "rename", 400)
            .await
            .unwrap();
        let item = store.claim(TARGET, 400, 1000, 10).await.unwrap();
        let item = item.iter().find(|i| i.resource_id == a.id).unwrap().clone();
        store
            .settle_failed(&item, "ldap down", 0, false, 450)
            .await
            .unwrap();
        assert_eq!(
            refused("uid=x,ou=people", 500).await,
            Some(a.id.clone()),
            "{backend}"
        );
        assert_eq!(
            refused("uid=y,ou=people", 500).await,
            Some(a.id.clone()),
            "{backend}"
        );
        // A later reservation of another key replaces the earlier one (Y is free again) ...
        store
            .reserve_key(TARGET, ResourceType::User, &a.id, "uid=z,ou=people")
            .await
            .unwrap();
        assert_eq!(refused("uid=y,ou=people", 600).await, None, "{backend}");
        // ... and the settle of the done rename makes Z A's held key and frees X.
        let item = store.claim(TARGET, 700, 1000, 10).await.unwrap();
        let item = item.iter().find(|i| i.resource_id == a.id).unwrap().clone();
        let mut moved = applied(&item, item.version, 700);
        moved.target_key = Some("uid=z,ou=people".into());
        store.settle_applied(&item, moved, 700).await.unwrap();
        let c = store
            .create_user(user("third"), None, &ctx(800))
            .await
            .unwrap();
        assert_eq!(
            holder_of(
                store
                    .record_intent(intent(&c.id, "uid=z,ou=people", 800))
                    .await
                    .unwrap_err()
            ),
            Some(a.id.clone()),
            "{backend}"
        );
        store
            .record_intent(intent(&c.id, "uid=x,ou=people", 800))
            .await
            .expect("the settle freed the old key");
    })
    .await;
}

/// Review finding 3, for a database upgraded while a rename was reserved: the old reservation
/// had moved the state's `key_norm` to the reserved key. The migration keeps that key as the
/// reservation and clears `key_norm`, which the start's fill takes again from `target_key`:
/// both keys stay the resource's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fencing_a_reservation_made_before_the_upgrade_keeps_both_keys() {
    use diesel_migrations::MigrationHarness;
    on_both(|store, backend| async move {
        let a = store
            .create_user(user("oldrenamer"), None, &ctx(100))
            .await
            .unwrap();
        let b = store
            .create_user(user("oldnewcomer"), None, &ctx(100))
            .await
            .unwrap();
        let items = store.claim(TARGET, 100, 1000, 10).await.unwrap();
        let item_a = items.iter().find(|i| i.resource_id == a.id).unwrap();
        let mut held = applied(item_a, 1, 200);
        held.target_key = Some("uid=x,ou=people".into());
        store.settle_applied(item_a, held, 200).await.unwrap();
        let id = a.id.clone();
        store
            .run(move |conn| {
                let failed =
                    |e: Box<dyn std::error::Error + Send + Sync>| StoreError::Other(e.to_string());
                // Back to before `key_reservations` (later migrations first).
                loop {
                    let reverted = match conn {
                        DbConnection::Sqlite(c) => c
                            .revert_last_migration(super::super::SQLITE_MIGRATIONS)
                            .map_err(failed)?
                            .to_string(),
                        DbConnection::Pg(c) => c
                            .revert_last_migration(super::super::POSTGRES_MIGRATIONS)
                            .map_err(failed)?
                            .to_string(),
                    };
                    if reverted.contains("060000") {
                        break;
                    }
                }
                // What the old `reserve_key` wrote.
                diesel::sql_query(format!(
                    "UPDATE target_state SET key_norm = 'uid=y,ou=people', \
                     extra = '{{\"renaming\":\"uid=y,ou=people\"}}' WHERE resource_id = '{id}'"
                ))
                .execute(conn)?;
                match conn {
                    DbConnection::Sqlite(c) => {
                        c.run_pending_migrations(super::super::SQLITE_MIGRATIONS)
                            .map_err(failed)?;
                    }
                    DbConnection::Pg(c) => {
                        c.run_pending_migrations(super::super::POSTGRES_MIGRATIONS)
                            .map_err(failed)?;
                    }
                }
                Ok(())
            })
            .await
            .unwrap();
        assert!(store.fill_key_norms(TARGET).await.unwrap().is_empty());
        for key in ["uid=x,ou=people", "uid=y,ou=people"] {
            let e = store
                .record_intent(intent(&b.id, key, 300))
                .await
                .expect_err("a key of the upgraded rename taken");
            assert_eq!(holder_of(e), Some(a.id.clone()), "{backend}: {key}");
        }
    })
    .await;
}
