//! Batches (issue 9 step 2): a worker applies the rows it claimed together. A key passed from
//! one row of a batch to another (a user deleted and another created at its DN) is applied in
//! the batch, not refused as a conflict; a row stopped at its sync does not hold back the
//! settles of the rows claimed with it.

use super::*;
use scim_sync::reconcile::worker::PAUSE_BEFORE_SYNC;
use std::time::Duration;

/// Both rows are claimed in one batch (the workers are held off while they are pushed). The
/// delete's row frees the DN the create intends: the create waits for the delete's settle and
/// is applied in the same turn. Before: the create's intent was checked while the deleted user
/// still held the DN, a key conflict counted as a failed attempt (retried a backoff later,
/// after 60 s here; a dead letter after `max_attempts`).
#[tokio::test]
async fn a_user_deleted_and_another_created_at_its_dn_in_one_batch_both_apply() {
    let env = Env::start().await;
    let old = env.create_user(&okta_user("reused", "Old")).await;
    env.run().await;
    assert!(env.exists(&user_dn("reused")).await);

    let hold = env.t.d().pause_reconcilers().await;
    let r = env.t.delete(&format!("/Users/{old}")).await;
    assert_eq!(r.status.as_u16(), 204, "{}", r.body);
    let new = env.create_user(&okta_user("reused", "New")).await;
    drop(hold);
    env.run().await;

    let status = env.status().await;
    assert_eq!(
        (status.pending, status.dead),
        (0, 0),
        "{:?}",
        env.dead().await
    );
    assert_eq!(
        env.attr(&user_dn("reused"), "title").await,
        Some(vec!["New".to_owned()])
    );
    let store = &env.t.d().store;
    let held = store.target_state("corp", &new).await.unwrap().unwrap();
    assert_eq!(held.target_key.as_deref(), Some(user_dn("reused").as_str()));
    let gone = store.target_state("corp", &old).await.unwrap();
    assert!(
        gone.as_ref().is_none_or(|s| s.target_key.is_none()),
        "{gone:?}"
    );
}

/// One row of a batch stops at its sync (the named pause point); the other row of the batch
/// is applied and settled meanwhile. Before: every settle of a batch waited for its slowest
/// sync.
#[tokio::test]
async fn a_row_stopped_at_its_sync_does_not_hold_back_its_batch_mates() {
    let env = Env::start().await;
    let reconciler = env.t.d().current_reconciler().unwrap();
    let hold = env.t.d().pause_reconcilers().await;
    let a = env.create_user(&okta_user("mate-a", "T")).await;
    let b = env.create_user(&okta_user("mate-b", "T")).await;
    let stopped = reconciler.arm_pause(PAUSE_BEFORE_SYNC);
    drop(hold);
    // A background worker claims both rows in one batch (the pushes woke it; it waited for
    // the hold).
    tokio::time::timeout(Duration::from_secs(20), stopped.reached())
        .await
        .expect("a row reached the pause point");
    let store = &env.t.d().store;
    let settled = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            for id in [&a, &b] {
                let s = store.target_state("corp", id).await.unwrap();
                if s.is_some_and(|s| s.applied_version > 0) {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    stopped.release();
    env.run().await;
    assert!(
        settled.is_ok(),
        "no row of the batch was settled while one of them was stopped at its sync"
    );
    assert!(env.exists(&user_dn("mate-a")).await && env.exists(&user_dn("mate-b")).await);
    assert_eq!(env.status().await.pending, 0);
}
