//! `store::members`: the membership change log and its gap detection, dirty marks cleared
//! only at the mark read and only by the claim's owner, and the record of our member values.

use super::*;

async fn users(store: &Store, names: &[&str]) -> Vec<String> {
    let mut ids = Vec::new();
    for n in names {
        ids.push(store.create_user(user(n), None, &ctx(1)).await.unwrap().id);
    }
    ids
}

fn touched(delta: &MemberDelta) -> Vec<(String, bool)> {
    let mut m = delta.members.clone();
    m.sort();
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn members_the_log_covers_each_change_since_the_applied_version_and_sees_a_gap() {
    on_both(|store, backend| async move {
        let ids = users(&store, &["a", "b", "c"]).await;
        let g = store
            .create_group(group("g", Some(vec![ids[0].clone()])), &ctx(2))
            .await
            .unwrap();
        let add = |id: &String| members_update(vec![MemberOp::Add(vec![member(id.clone())])]);
        store
            .update_group(&g.id, "patch", &ctx(3), add(&ids[1]))
            .await
            .unwrap();
        let d = store.member_delta(TARGET, &g.id, 1).await.unwrap().unwrap();
        assert_eq!((d.version, d.trusted), (2, true), "{backend}");
        assert_eq!(touched(&d), [(ids[1].clone(), true)], "{backend}");
        // From nothing applied: every change since the group was created.
        let d = store.member_delta(TARGET, &g.id, 0).await.unwrap().unwrap();
        assert!(d.trusted, "{backend}");
        assert_eq!(d.members.len(), 2, "{backend}");
        // At the applied version itself (a dependant re-queue): nothing changed.
        let d = store.member_delta(TARGET, &g.id, 2).await.unwrap().unwrap();
        assert!(d.trusted && d.members.is_empty(), "{backend}");
        // A burst: one row per member, its last state.
        let remove = |id: &String| members_update(vec![MemberOp::Remove(vec![id.clone()])]);
        store
            .update_group(&g.id, "patch", &ctx(4), add(&ids[2]))
            .await
            .unwrap();
        store
            .update_group(&g.id, "patch", &ctx(5), remove(&ids[2]))
            .await
            .unwrap();
        store
            .update_group(&g.id, "patch", &ctx(6), remove(&ids[0]))
            .await
            .unwrap();
        let d = store.member_delta(TARGET, &g.id, 2).await.unwrap().unwrap();
        assert_eq!(
            touched(&d),
            sorted_pairs(vec![(ids[2].clone(), false), (ids[0].clone(), false)]),
            "{backend}"
        );
        // An older release bumps the version without logging: a gap, never trusted across
        // it; the log restarts at the next logged version.
        let seq: i64 = store
            .run({
                let id = g.id.clone();
                move |conn| {
                    let seq = resources::table
                        .filter(resources::id.eq(&id))
                        .select(resources::seq)
                        .first::<i64>(conn)?;
                    diesel::update(resources::table.find(seq))
                        .set(resources::version.eq(resources::version + 1))
                        .execute(conn)?;
                    Ok(seq)
                }
            })
            .await
            .unwrap();
        assert!(seq > 0);
        let d = store.member_delta(TARGET, &g.id, 5).await.unwrap().unwrap();
        assert!(!d.trusted, "{backend}: version 6 was not logged");
        store
            .update_group(&g.id, "patch", &ctx(7), add(&ids[0]))
            .await
            .unwrap();
        let d = store.member_delta(TARGET, &g.id, 5).await.unwrap().unwrap();
        assert!(!d.trusted, "{backend}: the gap at 6 stays a gap");
        let d = store.member_delta(TARGET, &g.id, 6).await.unwrap().unwrap();
        assert_eq!(d.version, 7, "{backend}");
        assert!(d.trusted, "{backend}: everything after the gap is logged");
        assert_eq!(touched(&d), [(ids[0].clone(), true)], "{backend}");
        // A deleted user leaves the group in the log too.
        store.delete_user(&ids[1], None, &ctx(8)).await.unwrap();
        let d = store.member_delta(TARGET, &g.id, 7).await.unwrap().unwrap();
        assert_eq!(touched(&d), [(ids[1].clone(), false)], "{backend}");
    })
    .await;
}

fn sorted_pairs(mut v: Vec<(String, bool)>) -> Vec<(String, bool)> {
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn members_dirty_marks_and_forgotten_values_are_written_by_the_claims_owner_only() {
    on_both(|store, backend| async move {
        let ids = users(&store, &["a", "b"]).await;
        let g = store
            .create_group(group("g", Some(vec![ids[0].clone()])), &ctx(2))
            .await
            .unwrap();
        let mark = |store: &Store, member: String| {
            let (store, gid) = (store.clone(), g.id.clone());
            async move {
                store
                    .run(move |conn| {
                        super::super::members::mark_dirty(
                            conn,
                            TARGET,
                            std::slice::from_ref(&gid),
                            &member,
                        )
                    })
                    .await
                    .unwrap();
            }
        };
        mark(&store, ids[1].clone()).await;
        let d = store.member_delta(TARGET, &g.id, 1).await.unwrap().unwrap();
        assert_eq!(d.dirty, [(ids[1].clone(), 1)], "{backend}");
        assert_eq!(touched(&d), [(ids[1].clone(), false)], "{backend}");
        store
            .record_members(
                TARGET,
                &g.id,
                vec![
                    ("uid=a".into(), ids[0].clone()),
                    ("uid=b".into(), ids[1].clone()),
                ],
                Vec::new(),
            )
            .await
            .unwrap();
        let claimed = store.claim(TARGET, 100, 600_000, 10).await.unwrap();
        let item = claimed
            .iter()
            .find(|i| i.resource_id == g.id)
            .unwrap()
            .clone();
        // Marked again after the read: the clear leaves the newer mark.
        mark(&store, ids[1].clone()).await;
        let settle = MembersSettle {
            forget: vec!["uid=b".into()],
            written: vec!["uid=a".into()],
            dirty: d.dirty.clone(),
            forget_all: false,
        };
        assert!(store.settle_members(&item, settle.clone()).await.unwrap());
        let d = store.member_delta(TARGET, &g.id, 1).await.unwrap().unwrap();
        assert_eq!(d.dirty, [(ids[1].clone(), 2)], "{backend}");
        assert_eq!(
            store.recorded_members(TARGET, &g.id, None).await.unwrap(),
            [("uid=a".to_owned(), ids[0].clone(), true)],
            "{backend}"
        );
        // Recorded again (another member wants it now): still written, renamed.
        store
            .record_members(
                TARGET,
                &g.id,
                vec![("uid=a".into(), ids[1].clone())],
                Vec::new(),
            )
            .await
            .unwrap();
        assert_eq!(
            store.recorded_members(TARGET, &g.id, None).await.unwrap(),
            [("uid=a".to_owned(), ids[1].clone(), true)],
            "{backend}"
        );
        // About to be deleted: no longer counted as written.
        store
            .record_members(TARGET, &g.id, Vec::new(), vec!["uid=a".into()])
            .await
            .unwrap();
        assert_eq!(
            store.recorded_members(TARGET, &g.id, None).await.unwrap(),
            [("uid=a".to_owned(), ids[1].clone(), false)],
            "{backend}"
        );
        // Another worker took the row (the lease ran out): the first writes nothing.
        let taken = store.claim(TARGET, 700_000, 600_000, 10).await.unwrap();
        assert!(taken.iter().any(|i| i.resource_id == g.id), "{backend}");
        let stale = MembersSettle {
            forget_all: true,
            dirty: d.dirty.clone(),
            ..MembersSettle::default()
        };
        assert!(
            !store.settle_members(&item, stale).await.unwrap(),
            "{backend}"
        );
        assert_eq!(
            store
                .recorded_members(TARGET, &g.id, None)
                .await
                .unwrap()
                .len(),
            1,
            "{backend}"
        );
        let d2 = store.member_delta(TARGET, &g.id, 1).await.unwrap().unwrap();
        assert_eq!(d2.dirty, d.dirty, "{backend}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn members_pruned_changes_are_a_gap_for_a_target_applied_below_them() {
    on_both(|store, backend| async move {
        let ids = users(&store, &["a", "b"]).await;
        let g = store
            .create_group(group("g", Some(vec![ids[0].clone()])), &ctx(2))
            .await
            .unwrap();
        let add = members_update(vec![MemberOp::Add(vec![member(ids[1].clone())])]);
        store
            .update_group(&g.id, "patch", &ctx(3), add)
            .await
            .unwrap();
        // The configured target applied version 2.
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
        // Not pruned while a configured target never applied the group.
        store
            .prune_member_changes(&g.id, &[TARGET.to_owned(), "other".to_owned()])
            .await
            .unwrap();
        let d = store
            .member_delta("other", &g.id, 1)
            .await
            .unwrap()
            .unwrap();
        assert!(d.trusted && d.members.len() == 1, "{backend}: {d:?}");
        // Pruned to 2 for the configured target: a target applied at 1 (configured again
        // later) finds a gap, one applied at 2 does not.
        store
            .prune_member_changes(&g.id, &[TARGET.to_owned()])
            .await
            .unwrap();
        let d = store
            .member_delta("other", &g.id, 1)
            .await
            .unwrap()
            .unwrap();
        assert!(!d.trusted, "{backend}: {d:?}");
        let d = store.member_delta(TARGET, &g.id, 2).await.unwrap().unwrap();
        assert!(d.trusted && d.members.is_empty(), "{backend}: {d:?}");
    })
    .await;
}
