//! Claims, leases and fencing (issue 8, items 5 and 6): an apply stopped past its lease while
//! another worker takes over writes nothing stale when it resumes; drift repair takes the
//! workers' claims and records a same-version move.

use super::*;
use scim_sync::reconcile::worker::PAUSE_BEFORE_SYNC;

const LEASE_SECS: u64 = 8;

/// The suite's config with a short lease (and an LDAP connect and timeout that fit in it
/// twice) and one worker: the stopped process stands for all of the daemon, so no second
/// worker of it may take the row over mid-check (it did on a loaded machine: its apply was
/// still running when the check read the group). The 3 s operation timeout keeps the
/// takeover's fresh connection clear of a 1 s timeout under load.
async fn start_with_short_lease() -> Env {
    let slapd = Slapd::start().await;
    let secrets = tempfile::tempdir().unwrap();
    let pw = secrets.path().join("ldap.pw");
    std::fs::write(&pw, format!("{}\n", slapd.password())).unwrap();
    let toml = target_toml(&slapd, &pw, GROUPS)
        .replace(
            "[reconcile]\n",
            &format!("[reconcile]\nlease_secs = {LEASE_SECS}\n"),
        )
        .replace("workers = 2\n", "workers = 1\n")
        .replace(
            "type = \"ldap\"\n",
            "type = \"ldap\"\nconnect_timeout_secs = 1\ntimeout_secs = 3\n",
        );
    assert!(
        toml.contains("workers = 1\n") && toml.contains("timeout_secs = 3\n"),
        "{toml}"
    );
    let t = TestDaemon::start_with(Backend::Sqlite, &toml).await;
    Env {
        t,
        slapd,
        _secrets: secrets,
    }
}

/// A worker renders a group (members u1, u2, u3), then stops (a named pause point standing for
/// SIGSTOP: its heartbeat stops too) past its lease; the IdP removes u2; another worker takes
/// the expired claim and applies that. When the first resumes, its target writes are refused
/// (less than the operation timeout left on its lease), so u2 is not put back. Before: the
/// resumed apply wrote its stale member list and u2 was a member again, with nothing pending.
#[tokio::test]
async fn a_worker_stopped_past_its_lease_does_not_put_back_a_removed_member() {
    let env = start_with_short_lease().await;
    let u1 = env.create_user(&okta_user("lease1", "T")).await;
    let u2 = env.create_user(&okta_user("lease2", "T")).await;
    let u3 = env.create_user(&okta_user("lease3", "T")).await;
    let g = env.create_group("leased", &[&u1, &u2]).await;
    env.run().await;
    let members = |names: &[&str]| sorted(names.iter().map(|n| user_dn(n)).collect());
    assert_eq!(
        sorted(env.attr(&group_dn("leased"), "member").await.unwrap()),
        members(&["lease1", "lease2"])
    );

    let daemon_worker = env.t.d().current_reconciler().unwrap();
    let stopped = daemon_worker.arm_pause(PAUSE_BEFORE_SYNC);
    // A background worker of the daemon picks this up (woken by the push) and stops.
    env.patch(
        &format!("/Groups/{g}"),
        json!([{"op": "add", "path": "members", "value": [{"value": u3}]}]),
    )
    .await;
    tokio::time::timeout(std::time::Duration::from_secs(20), stopped.reached())
        .await
        .expect("a worker reached the pause point");
    env.patch(
        &format!("/Groups/{g}"),
        json!([{"op": "remove", "path": format!("members[value eq \"{u2}\"]")}]),
    )
    .await;
    // Past the stopped worker's lease (wall-clock: leases are), then another one takes over.
    tokio::time::sleep(std::time::Duration::from_millis(LEASE_SECS * 1000 + 500)).await;
    another_worker(&env).run_pending().await;
    assert_eq!(
        sorted(env.attr(&group_dn("leased"), "member").await.unwrap()),
        members(&["lease1", "lease3"])
    );

    stopped.release();
    env.run().await;
    assert_eq!(
        sorted(env.attr(&group_dn("leased"), "member").await.unwrap()),
        members(&["lease1", "lease3"]),
        "the resumed worker put back a member the IdP removed"
    );
    assert_eq!(env.status().await.pending, 0);
}

/// Item 6: a DN template change and `reconcile --full` (the CLI, daemon stopped) move every
/// user at an unchanged SCIM version. The settle records the new keys (the claim is drift
/// repair's own), so groups get the new DNs and a second run finds nothing to do. Before: the
/// old keys stayed, groups were rewritten with the old DNs and every run reported the users.
#[tokio::test]
async fn a_dn_template_change_and_full_reconcile_move_users_and_groups_follow_once() {
    let mut env = Env::start().await;
    let u = env.create_user(&okta_user("mover", "T")).await;
    env.create_group("movers", &[&u]).await;
    env.run().await;
    env.t.stop().await;
    let config = env.t.config_path.clone();
    let text = std::fs::read_to_string(&config).unwrap();
    let moved_parent = "ou=Disabled,dc=example,dc=com";
    std::fs::write(
        &config,
        text.replace(
            &format!("dn = \"uid={{userName}},{PEOPLE}\""),
            &format!("dn = \"uid={{userName}},{moved_parent}\""),
        ),
    )
    .unwrap();
    let new_dn = format!("uid=mover,{moved_parent}");

    let (code, out, err) = cli(&config, &["reconcile", "--full"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(env.exists(&new_dn).await, "{out}");
    assert!(!env.exists(&user_dn("mover")).await, "{out}");
    assert_eq!(
        env.attr(&group_dn("movers"), "member").await.unwrap(),
        [new_dn],
        "{out}"
    );

    let (code, out, err) = cli(&config, &["reconcile", "--full"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("Checked 2 resource(s): 0 changed, 0 failed."),
        "the second run found the same changes again: {out}"
    );
}
