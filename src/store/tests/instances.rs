//! The instance registry: a dead instance's claims are taken over once its heartbeat is older
//! than its takeover bound (not before), the takeover moves its incarnation so its late
//! heartbeat finds it gone (and leases taken before stay refused), and a heartbeat that
//! committed first keeps its claims.

use super::*;
use std::sync::atomic::Ordering;

fn reg(takeover_ms: i64) -> Registration {
    Registration {
        host: "host".into(),
        version: "test".into(),
        fingerprint: "f".into(),
        takeover_ms,
    }
}

async fn second(db: &TestDb, id: &str) -> Store {
    let mut s = settings(format!(
        "postgres://postgres@127.0.0.1/{}",
        db.pg_name.as_ref().unwrap()
    ));
    s.instance_lock = false;
    s.instance_id = id.into();
    Store::open(&s, vec![TARGET.to_owned()]).await.unwrap()
}

/// Sleep until this store's clock reads `at_ms` or later.
async fn until(store: &Store, at_ms: i64) {
    let left = at_ms.saturating_sub(store.clock_ms());
    if left > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(left.unsigned_abs())).await;
    }
}

/// Takeover is decided against the database's clock (second reader's finding 1), so this
/// test waits real time: a reading passed ahead of it takes nothing early.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn instances_a_dead_instance_is_taken_over_after_its_bound_and_its_late_heartbeat_finds_it_gone(
) {
    let db = pg_db().await;
    let a = db.store.clone();
    let b = second(&db, "other").await;
    let t0 = a.clock_ms();
    a.register_instance(reg(1_000), t0).await.unwrap();
    b.register_instance(reg(1_000), t0).await.unwrap();
    let u = a.create_user(user("held"), None, &ctx(t0)).await.unwrap();
    let held = a.claim(TARGET, t0, 600_000, 10).await.unwrap().remove(0);
    let first = a.fence().incarnation.load(Ordering::SeqCst);
    assert_eq!(held.incarnation, first);
    // The fence ends a margin before the bound the others apply (`dbclock`).
    let margin = super::super::dbclock::FENCE_MARGIN_MS;
    assert_eq!(
        a.fence().alive_until_ms.load(Ordering::SeqCst),
        t0 + 1_000 - margin
    );

    // Within the bound: a's claim is its own (the lease runs 600 s), even for a reading
    // past the bound (the database's clock decides too).
    assert!(b
        .claim(TARGET, t0 + 1_500, 600_000, 10)
        .await
        .unwrap()
        .is_empty());
    assert!(b
        .claim_resource(TARGET, ResourceType::User, &u.id, t0 + 1_500, 600_000)
        .await
        .unwrap()
        .is_none());
    // A heartbeat at t0 + 600 moves the bound: still a's at t0 + 1_300.
    until(&a, t0 + 600).await;
    let t1 = a.clock_ms();
    assert!(a.instance_heartbeat(reg(1_000), t1).await.unwrap());
    assert_eq!(
        a.fence().alive_until_ms.load(Ordering::SeqCst),
        t1 + 1_000 - margin
    );
    until(&a, t0 + 1_300).await;
    assert!(b
        .claim(TARGET, b.clock_ms(), 600_000, 10)
        .await
        .unwrap()
        .is_empty());
    let live = b.instances(b.clock_ms()).await.unwrap();
    let mine = live.iter().find(|i| i.id == "test-instance").unwrap();
    assert_eq!((mine.claims, mine.live(b.clock_ms())), (1, true));

    // Past it: b takes the row over (a new epoch), and a's incarnation moved in the store.
    until(&a, t1 + 1_100).await;
    let taken = b.claim(TARGET, b.clock_ms(), 600_000, 10).await.unwrap();
    assert_eq!(taken.len(), 1);
    assert!(taken[0].claim_epoch > held.claim_epoch);
    // a's late heartbeat: refused, a new incarnation (leases under the old one stay refused).
    assert!(!a
        .instance_heartbeat(reg(1_000), a.clock_ms())
        .await
        .unwrap());
    let now = a.fence().incarnation.load(Ordering::SeqCst);
    assert_ne!(now, first);
    assert!(a
        .instance_heartbeat(reg(1_000), a.clock_ms())
        .await
        .unwrap());
    // a's renewal and settle of the lost claim write nothing.
    assert!(!a.renew_claim(&held, a.clock_ms(), 600_000).await.unwrap());
    // A stopped instance's claims are free once a write it abandoned can no longer arrive
    // (here 500 ms after its stop), not at once: before, they were taken at the stop, with
    // a cancelled apply's LDAP request or SQL commit possibly still on its way.
    let stopped = b.clock_ms();
    b.stop_instance(stopped, 500).await.unwrap();
    let early = a
        .claim_resource(TARGET, ResourceType::User, &u.id, stopped + 450, 600_000)
        .await
        .unwrap();
    assert!(
        early.is_none(),
        "taken over while a write of the stopped instance may arrive"
    );
    until(&a, stopped + 600).await;
    let again = a
        .claim_resource(TARGET, ResourceType::User, &u.id, a.clock_ms(), 600_000)
        .await
        .unwrap();
    assert!(again.is_some(), "a stopped instance's claim is taken over");
    let gone = a.instances(a.clock_ms()).await.unwrap();
    assert!(!gone
        .iter()
        .find(|i| i.id == "other")
        .unwrap()
        .live(a.clock_ms()));
    drop(b);
    db.finish().await;
}

/// Second reader's finding 1: a claimer whose clock runs ahead of the offset it measured (its
/// clock stepped 300 ms after its last measurement) takes a live instance's claims over no
/// earlier than the holder's fence ends. Before, it compared its own reading only and took
/// them 300 ms before the bound, 100 ms before the holder's fence (200 ms margin) ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn instances_a_claimer_whose_clock_jumped_ahead_takes_no_claim_before_the_holders_fence_ends()
{
    let db = pg_db().await;
    let a = db.store.clone();
    let b = second(&db, "ahead").await;
    let t0 = a.clock_ms();
    a.register_instance(reg(1_000), t0).await.unwrap();
    b.register_instance(reg(1_000), b.clock_ms()).await.unwrap();
    a.create_user(user("held"), None, &ctx(t0)).await.unwrap();
    assert_eq!(a.claim(TARGET, t0, 600_000, 10).await.unwrap().len(), 1);
    b.skew_clock_for_tests(300);
    let fence_end = a.fence().alive_until_ms.load(Ordering::SeqCst);
    loop {
        let taken = b.claim(TARGET, b.clock_ms(), 600_000, 10).await.unwrap();
        let after = a.clock_ms();
        if !taken.is_empty() {
            assert!(
                after >= fence_end,
                "taken over {} ms before the holder's fence ended",
                fence_end - after
            );
            break;
        }
        assert!(after < fence_end + 3_000, "never taken over");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    drop(b);
    db.finish().await;
}

/// Second reader's findings 1 and 2: a live instance's row whose lease runs out is claimed by
/// a claimer whose clock jumped 300 ms ahead no earlier than the holder's own (local) lease
/// end, which is `LEASE_MARGIN_MS` before the recorded one. Before, the claimer took it 300 ms
/// before the recorded end, and the holder's local end had no margin.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn instances_a_claimer_whose_clock_jumped_ahead_takes_no_row_before_the_holders_lease_ends() {
    let db = pg_db().await;
    let a = db.store.clone();
    let b = second(&db, "ahead").await;
    let t0 = a.clock_ms();
    a.register_instance(reg(600_000), t0).await.unwrap();
    b.register_instance(reg(600_000), b.clock_ms())
        .await
        .unwrap();
    a.create_user(user("held"), None, &ctx(t0)).await.unwrap();
    let claimed_ms = a.clock_ms();
    assert_eq!(
        a.claim(TARGET, claimed_ms, 1_000, 10).await.unwrap().len(),
        1
    );
    // What the worker's `targets::Lease` checks against (`reconcile::worker::process_batch`).
    let local_end = claimed_ms + 1_000 - super::super::LEASE_MARGIN_MS;
    b.skew_clock_for_tests(300);
    loop {
        let taken = b.claim(TARGET, b.clock_ms(), 600_000, 10).await.unwrap();
        let after = a.clock_ms();
        if !taken.is_empty() {
            assert!(
                after >= local_end,
                "claimed {} ms before the holder's lease ended",
                local_end - after
            );
            break;
        }
        assert!(after < local_end + 3_000, "never claimed");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    drop(b);
    db.finish().await;
}

/// Clock skew between hosts (issue 10, second reader): leases, due times and heartbeats are
/// database time, so an instance whose clock runs 10 s ahead neither takes a live instance's
/// claims over nor queues rows the others see due only 10 s later, and one whose clock runs
/// 10 s behind takes a dead instance's claims over at its bound, not 10 s after it. Before:
/// the instance ahead took the live claim at once (the heartbeat looked 10 s old), its row
/// was not due for the others, and the instance behind took nothing at the bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn instances_a_clock_10_s_off_neither_takes_live_claims_nor_keeps_dead_ones_past_the_bound() {
    let db = pg_db().await;
    let a = db.store.clone();
    let ahead = second(&db, "ahead").await;
    let behind = second(&db, "behind").await;
    ahead.skew_clock_for_tests(10_000);
    behind.skew_clock_for_tests(-10_000);
    let t0 = a.clock_ms();
    a.register_instance(reg(2_000), t0).await.unwrap();
    ahead
        .register_instance(reg(2_000), ahead.clock_ms())
        .await
        .unwrap();
    behind
        .register_instance(reg(2_000), behind.clock_ms())
        .await
        .unwrap();
    let off = ahead.measure_clock().await.unwrap();
    assert!((-10_500..=-9_500).contains(&off), "measured {off}");
    a.create_user(user("held"), None, &ctx(t0)).await.unwrap();
    assert_eq!(a.claim(TARGET, t0, 600_000, 10).await.unwrap().len(), 1);

    // a is live: the instance ahead takes nothing (its lease runs 600 s, its heartbeat is
    // fresh in database time).
    let stolen = ahead
        .claim(TARGET, ahead.clock_ms(), 600_000, 10)
        .await
        .unwrap();
    assert!(stolen.is_empty(), "a live instance's claim was taken over");
    // A row the instance ahead queues is due at once for a.
    let now = ahead.clock_ms();
    ahead
        .create_user(user("queued-ahead"), None, &ctx(now))
        .await
        .unwrap();
    let due = a.claim(TARGET, a.clock_ms(), 600_000, 10).await.unwrap();
    assert_eq!(
        due.len(),
        1,
        "the row queued by the instance ahead is not due"
    );

    // a stops heartbeating: once its 2 s bound ran out (real time), the instance behind
    // takes both rows over.
    let started = std::time::Instant::now();
    let taken = loop {
        let taken = behind
            .claim(TARGET, behind.clock_ms(), 600_000, 10)
            .await
            .unwrap();
        if !taken.is_empty() || started.elapsed() > std::time::Duration::from_secs(6) {
            break taken;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(
        taken.len(),
        2,
        "a dead instance's claims were kept past the bound"
    );
    let took = started.elapsed();
    assert!(
        took < std::time::Duration::from_millis(3_000),
        "taken over {took:?} after the bound"
    );
    drop((ahead, behind));
    db.finish().await;
}

/// A periodic job runs on one instance at a time (the advisory lock) and once per interval
/// across them (the recorded last run).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn instances_a_periodic_job_runs_on_one_instance_at_a_time_once_per_interval() {
    let db = pg_db().await;
    let a = db.store.clone();
    let b = second(&db, "other").await;
    let turn = a.try_job("drift-repair", 1_000, 10_000).await.unwrap();
    let turn = turn.expect("the first try runs");
    assert!(
        b.try_job("drift-repair", 1_000, 10_000)
            .await
            .unwrap()
            .is_none(),
        "held by a"
    );
    assert!(
        b.try_job("retention", 1_000, 10_000)
            .await
            .unwrap()
            .is_some(),
        "another job"
    );
    a.job_done(turn, 10_500).await.unwrap();
    assert!(
        b.try_job("drift-repair", 1_000, 11_499)
            .await
            .unwrap()
            .is_none(),
        "ran 999 ms ago"
    );
    let again = b.try_job("drift-repair", 1_000, 11_500).await.unwrap();
    assert!(again.is_some(), "an interval after the last run");
    // A turn given up without its record (a crash): the lock goes with the connection.
    drop(again);
    assert!(a
        .try_job("drift-repair", 1_000, 11_600)
        .await
        .unwrap()
        .is_some());
    drop(b);
    db.finish().await;
}

/// On SQLite (one process holds the file) the fence stays unbounded: a heartbeat that is late
/// (stuck behind the write lock) never stops the target writes, since no other instance could
/// take the claims over. Before: the fence ran out with the takeover bound there too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn instances_a_sqlite_store_never_fences_its_own_writes() {
    let db = sqlite_db().await;
    let store = db.store.clone();
    let t0 = crate::clock::now_ms();
    store.register_instance(reg(1_000), t0).await.unwrap();
    assert!(store
        .instance_heartbeat(reg(1_000), t0 + 500)
        .await
        .unwrap());
    assert_eq!(
        store.fence().alive_until_ms.load(Ordering::SeqCst),
        i64::MAX
    );
    db.finish().await;
}

/// The admin connection to a test database (blocking: run it on `spawn_blocking`).
fn admin_of(db: &TestDb) -> diesel::PgConnection {
    diesel::PgConnection::establish(&format!(
        "postgres://postgres@127.0.0.1/{}",
        db.pg_name.as_ref().unwrap()
    ))
    .unwrap()
}

#[derive(diesel::QueryableByName)]
struct Pid {
    #[diesel(sql_type = diesel::sql_types::Integer)]
    pid: i32,
}

/// The backend pids of the change listeners on this test's database.
async fn listener_pids(db: &TestDb) -> Vec<i32> {
    let mut admin = admin_of(db);
    tokio::task::spawn_blocking(move || {
        diesel::sql_query(format!(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() \
             AND (application_name = '{}' OR query LIKE 'LISTEN %') \
             AND pid <> pg_backend_pid()",
            super::super::instances::LISTENER_NAME
        ))
        .load::<Pid>(&mut admin)
        .unwrap()
        .into_iter()
        .map(|p| p.pid)
        .collect()
    })
    .await
    .unwrap()
}

/// Wait (at most `bound`) until `n` moved past `from`; the time it took.
async fn moved(
    n: &std::sync::atomic::AtomicU64,
    from: u64,
    bound: std::time::Duration,
) -> std::time::Duration {
    let started = std::time::Instant::now();
    while n.load(Ordering::SeqCst) <= from {
        assert!(started.elapsed() < bound, "no wake-up within {bound:?}");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    started.elapsed()
}

/// The change listener survives the loss of its connection (issue 10, second reader): its
/// backend terminated (`pg_terminate_backend`, as a failover or an operator would), it
/// connects again by itself, and the next push on another instance wakes it within a second
/// (the listener's own 50 ms poll; the workers' poll interval plays no part here: nothing
/// else calls `on_change`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn instances_the_change_listener_comes_back_after_its_backend_is_terminated() {
    use std::sync::atomic::{AtomicBool, AtomicU64};
    let db = pg_db().await;
    let a = db.store.clone();
    let b = second(&db, "other").await;
    let woke = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let counter = woke.clone();
    a.listen_for_changes(
        Arc::new(move || {
            counter.fetch_add(1, Ordering::SeqCst);
        }),
        stop.clone(),
    );
    let second_ = std::time::Duration::from_secs(1);
    // Connected (its first call), and a push on b wakes it.
    moved(&woke, 0, std::time::Duration::from_secs(10)).await;
    let n = woke.load(Ordering::SeqCst);
    b.create_user(user("first"), None, &ctx(1_000))
        .await
        .unwrap();
    moved(&woke, n, second_).await;
    let pids = listener_pids(&db).await;
    assert_eq!(pids.len(), 1, "one listener: {pids:?}");
    let mut admin = admin_of(&db);
    let old = pids[0];
    tokio::task::spawn_blocking(move || {
        diesel::sql_query(format!("SELECT pg_terminate_backend({old})"))
            .execute(&mut admin)
            .unwrap();
    })
    .await
    .unwrap();
    // It connects again (a new backend; its call after the reconnect).
    let started = std::time::Instant::now();
    loop {
        let now = listener_pids(&db).await;
        if now.len() == 1 && now[0] != old {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "the listener did not connect again: {now:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let n = woke.load(Ordering::SeqCst);
    b.create_user(user("second"), None, &ctx(2_000))
        .await
        .unwrap();
    let took = moved(&woke, n, second_).await;
    eprintln!("woken {took:?} after the push that followed the reconnect");
    stop.store(true, Ordering::SeqCst);
    drop(b);
    db.finish().await;
}

/// What a NOTIFY costs (issue 10, second reader): one notification per committed transaction
/// that queued rows, whatever the rows: 100 creates (each its own transaction, as the
/// operations of a 100-operation Bulk are) deliver 100; deleting a user who is in 20 groups
/// queues 21 rows in one transaction and delivers one; a batch of settles delivers none (the
/// settling instance's own workers take what a settle queues).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn instances_one_notification_per_transaction_that_queued_rows_not_per_row() {
    let db = pg_db().await;
    let a = db.store.clone();
    let mut listener = admin_of(&db);
    let listener = tokio::task::spawn_blocking(move || {
        diesel::sql_query(format!("LISTEN {}", super::super::instances::CHANNEL))
            .execute(&mut listener)
            .unwrap();
        listener
    })
    .await
    .unwrap();
    let listener = Arc::new(std::sync::Mutex::new(listener));
    // Notifications delivered so far (after they had 300 ms to arrive).
    let drain = |listener: Arc<std::sync::Mutex<diesel::PgConnection>>| async move {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        tokio::task::spawn_blocking(move || {
            let mut c = listener.lock().unwrap();
            c.notifications_iter().map(Result::unwrap).count()
        })
        .await
        .unwrap()
    };
    let mut ids = Vec::new();
    for i in 0..100 {
        let u = a
            .create_user(user(&format!("n{i}")), None, &ctx(1_000 + i))
            .await
            .unwrap();
        ids.push(u.id);
    }
    assert_eq!(drain(listener.clone()).await, 100, "one per create");
    for g in 0..20 {
        a.create_group(
            group(&format!("g{g}"), Some(vec![ids[0].clone()])),
            &ctx(2_000),
        )
        .await
        .unwrap();
    }
    assert_eq!(drain(listener.clone()).await, 20, "one per group create");
    // One NOTIFY statement too, not one per group (second reader's finding 8: before, 21).
    let sent = a.notify_statements();
    a.delete_user(&ids[0], None, &ctx(3_000)).await.unwrap();
    assert_eq!(
        a.notify_statements() - sent,
        1,
        "NOTIFY statements for the delete that queued 21 rows"
    );
    assert_eq!(
        drain(listener.clone()).await,
        1,
        "one for the delete that queued 21 rows"
    );
    let claimed = a.claim(TARGET, 4_000, 60_000, 200).await.unwrap();
    assert_eq!(claimed.len(), 120);
    let settles: Vec<_> = claimed
        .iter()
        .filter(|i| i.resource_type == ResourceType::User)
        .map(|i| (i.clone(), applied(i, i.version, 4_500)))
        .collect();
    for r in a.settle_applied_many(settles, 4_500).await {
        r.unwrap();
    }
    assert_eq!(drain(listener.clone()).await, 0, "settles notify nothing");
    db.finish().await;
}

#[derive(diesel::QueryableByName)]
struct Ms {
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
    ms: Option<i64>,
}

/// One bigint (or NULL) read over the admin connection.
async fn admin_ms(db: &TestDb, sql: String) -> Option<i64> {
    let mut admin = admin_of(db);
    tokio::task::spawn_blocking(move || {
        diesel::sql_query(sql)
            .get_result::<Ms>(&mut admin)
            .unwrap()
            .ms
    })
    .await
    .unwrap()
}

async fn lease_end_of(db: &TestDb, id: i64) -> i64 {
    admin_ms(
        db,
        format!("SELECT claimed_until_ms AS ms FROM outbox WHERE id = {id}"),
    )
    .await
    .expect("claimed")
}

/// Third reader's finding 1: a claim's lease end (claim, claim_resource, renewal) is no
/// earlier than the database's clock at the statement plus the lease, whatever the holder's
/// measured offset. Here the holder's clock falls 300 ms behind the offset it measured (as
/// after an offset installed from a slow sample): the holder's local end is its reading plus
/// the lease, and the database (same host: same clock) records at least the real time before
/// the call plus the lease. Before, each recorded 300 ms earlier: a peer claimed the row while
/// the holder still wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn instances_a_lease_end_is_no_earlier_than_the_database_clock_plus_the_lease() {
    let db = pg_db().await;
    let a = db.store.clone();
    let t0 = a.clock_ms();
    a.register_instance(reg(600_000), t0).await.unwrap();
    // Due before the readings 300 ms behind.
    a.create_user(user("one"), None, &ctx(t0 - 1_000))
        .await
        .unwrap();
    let two = a
        .create_user(user("two"), None, &ctx(t0 - 1_000))
        .await
        .unwrap();
    a.skew_clock_for_tests(-300);

    let before = crate::clock::now_ms();
    let held = a.claim(TARGET, a.clock_ms(), 1_000, 1).await.unwrap();
    assert_eq!(held.len(), 1);
    let end = lease_end_of(&db, held[0].id).await;
    assert!(
        end >= before + 1_000,
        "claim: {} ms early",
        before + 1_000 - end
    );

    let before = crate::clock::now_ms();
    assert!(a.renew_claim(&held[0], a.clock_ms(), 1_000).await.unwrap());
    let end = lease_end_of(&db, held[0].id).await;
    assert!(
        end >= before + 1_000,
        "renewal: {} ms early",
        before + 1_000 - end
    );

    let before = crate::clock::now_ms();
    let repair = a
        .claim_resource(TARGET, ResourceType::User, &two.id, a.clock_ms(), 1_000)
        .await
        .unwrap()
        .expect("claimed");
    let end = lease_end_of(&db, repair.id).await;
    assert!(
        end >= before + 1_000,
        "claim_resource: {} ms early",
        before + 1_000 - end
    );
    db.finish().await;
}

/// Third reader's finding 2: a heartbeat is written no later than the database's clock plus
/// `ALLOWANCE_MS`, however far ahead the writer's reading (its offset's error): a dead
/// instance's claims are not kept past the bound. Before, a reading 5 s ahead was written as
/// is (`GREATEST` only), and the instance's claims stayed its own 5 s past its bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn instances_a_heartbeat_ahead_of_the_database_clock_is_capped() {
    let db = pg_db().await;
    let a = db.store.clone();
    let t0 = a.clock_ms();
    a.register_instance(reg(1_000), t0 + 5_000).await.unwrap();
    let after = crate::clock::now_ms();
    let sql = "SELECT heartbeat_ms AS ms FROM instances WHERE id = 'test-instance'".to_owned();
    let beat = admin_ms(&db, sql.clone()).await.unwrap();
    let cap = after + super::super::dbclock::ALLOWANCE_MS;
    assert!(beat <= cap, "registration: {} ms ahead", beat - cap);
    assert!(a
        .instance_heartbeat(reg(1_000), a.clock_ms() + 5_000)
        .await
        .unwrap());
    let after = crate::clock::now_ms();
    let beat = admin_ms(&db, sql).await.unwrap();
    let cap = after + super::super::dbclock::ALLOWANCE_MS;
    assert!(beat <= cap, "heartbeat: {} ms ahead", beat - cap);
    db.finish().await;
}

/// Third reader's finding 3: a renewal requires the claim still recorded under this instance,
/// so a lease whose `claimed_by` was cleared (the upsert's two expressions once read the
/// clock apart) is not renewed into an ownerless live lease a starting peer's
/// `release_claims` would clear. Before, the epoch alone decided and the renewal succeeded.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn instances_a_renewal_of_a_lease_recorded_under_no_instance_is_refused() {
    let db = pg_db().await;
    let a = db.store.clone();
    let t0 = a.clock_ms();
    a.register_instance(reg(600_000), t0).await.unwrap();
    a.create_user(user("one"), None, &ctx(t0)).await.unwrap();
    let held = a
        .claim(TARGET, a.clock_ms(), 60_000, 1)
        .await
        .unwrap()
        .remove(0);
    let id = held.id;
    let mut admin = admin_of(&db);
    tokio::task::spawn_blocking(move || {
        diesel::sql_query(format!(
            "UPDATE outbox SET claimed_by = NULL WHERE id = {id}"
        ))
        .execute(&mut admin)
        .unwrap();
    })
    .await
    .unwrap();
    assert!(!a.renew_claim(&held, a.clock_ms(), 60_000).await.unwrap());
    assert!(!a
        .renew_claims(vec![held.clone()], a.clock_ms(), 60_000)
        .await
        .remove(0)
        .unwrap());
    db.finish().await;
}
