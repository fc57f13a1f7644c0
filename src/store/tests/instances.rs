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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn instances_a_dead_instance_is_taken_over_after_its_bound_and_its_late_heartbeat_finds_it_gone(
) {
    let db = pg_db().await;
    let a = db.store.clone();
    let b = second(&db, "other").await;
    let t0 = crate::clock::now_ms();
    a.register_instance(reg(1_000), t0).await.unwrap();
    b.register_instance(reg(1_000), t0).await.unwrap();
    let u = a.create_user(user("held"), None, &ctx(t0)).await.unwrap();
    let held = a.claim(TARGET, t0, 600_000, 10).await.unwrap().remove(0);
    let first = a.fence().incarnation.load(Ordering::SeqCst);
    assert_eq!(held.incarnation, first);
    assert_eq!(a.fence().alive_until_ms.load(Ordering::SeqCst), t0 + 1_000);

    // Within the bound: a's claim is its own (the lease runs 600 s).
    assert!(b
        .claim(TARGET, t0 + 1_000, 600_000, 10)
        .await
        .unwrap()
        .is_empty());
    assert!(b
        .claim_resource(TARGET, ResourceType::User, &u.id, t0 + 1_000, 600_000)
        .await
        .unwrap()
        .is_none());
    // A heartbeat at t0 + 900 moves the bound: still a's at t0 + 1_500.
    assert!(a.instance_heartbeat(reg(1_000), t0 + 900).await.unwrap());
    assert_eq!(a.fence().alive_until_ms.load(Ordering::SeqCst), t0 + 1_900);
    assert!(b
        .claim(TARGET, t0 + 1_500, 600_000, 10)
        .await
        .unwrap()
        .is_empty());
    let live = b.instances(t0 + 1_500).await.unwrap();
    let mine = live.iter().find(|i| i.id == "test-instance").unwrap();
    assert_eq!((mine.claims, mine.live(t0 + 1_500)), (1, true));

    // Past it: b takes the row over (a new epoch), and a's incarnation moved in the store.
    let taken = b.claim(TARGET, t0 + 2_000, 600_000, 10).await.unwrap();
    assert_eq!(taken.len(), 1);
    assert!(taken[0].claim_epoch > held.claim_epoch);
    // a's late heartbeat: refused, a new incarnation (leases under the old one stay refused).
    assert!(!a.instance_heartbeat(reg(1_000), t0 + 2_100).await.unwrap());
    let now = a.fence().incarnation.load(Ordering::SeqCst);
    assert_ne!(now, first);
    assert!(a.instance_heartbeat(reg(1_000), t0 + 2_200).await.unwrap());
    // a's renewal and settle of the lost claim write nothing.
    assert!(!a.renew_claim(&held, t0 + 2_200, 600_000).await.unwrap());
    // A stopped instance's claims are free once a write it abandoned can no longer arrive
    // (here 500 ms after its stop), not at once: before, they were taken at the stop, with
    // a cancelled apply's LDAP request or SQL commit possibly still on its way.
    b.stop_instance(t0 + 2_250, 500).await.unwrap();
    let early = a
        .claim_resource(TARGET, ResourceType::User, &u.id, t0 + 2_700, 600_000)
        .await
        .unwrap();
    assert!(
        early.is_none(),
        "taken over while a write of the stopped instance may arrive"
    );
    let again = a
        .claim_resource(TARGET, ResourceType::User, &u.id, t0 + 2_800, 600_000)
        .await
        .unwrap();
    assert!(again.is_some(), "a stopped instance's claim is taken over");
    let gone = a.instances(t0 + 2_800).await.unwrap();
    assert!(!gone
        .iter()
        .find(|i| i.id == "other")
        .unwrap()
        .live(t0 + 2_800));
    drop(b);
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
