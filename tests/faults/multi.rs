//! Several daemons (`scim-sync serve` processes) on one throwaway PostgreSQL database and one
//! slapd: an Okta-shaped burst spread over all of them, one SIGKILLed mid-burst and a second
//! SIGTERMed later in it. The dead instance's claims are taken over within 15 s (its heartbeat
//! runs out; the lease stays the default 120 s, so only the takeover can explain
//! convergence), the stopped one's too, and every acknowledged change reaches the directory
//! exactly once, `verify` clean.

use super::*;
use crate::harness::pg::PgDb;

/// A config for instance `id` on `store_url`: heartbeat 1 s, takeover 5 s (the least the
/// target's 1 s connect + 2 s timeout allow: 3 + 2 heartbeats).
fn instance_config(dir: &Path, store_url: &str, id: &str, slapd: &Slapd) -> PathBuf {
    let pw = dir.join("ldap.pw");
    std::fs::write(&pw, format!("{}\n", slapd.password())).unwrap();
    let target = target_toml(slapd, &pw).replacen(
        "[reconcile]\n",
        &format!("[reconcile]\ninstance_id = \"{id}\"\nheartbeat_secs = 1\ntakeover_secs = 5\n"),
        1,
    );
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nshutdown_grace_secs = 10\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n[store]\nurl = \"{store_url}\"\n\
         [log]\nlevel = \"info\"\n{target}"
    );
    let path = dir.join("scim-sync.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test]
async fn three_instances_one_killed_and_one_stopped_mid_burst_take_over_within_15_s_and_lose_nothing(
) {
    const CLIENTS: usize = 6;
    const INSTANCES: usize = 3;
    let slapd = Slapd::start().await;
    let db = PgDb::create();
    let dirs: Vec<tempfile::TempDir> = (0..INSTANCES)
        .map(|_| tempfile::tempdir().unwrap())
        .collect();
    let ids = ["a", "b", "c"];
    let configs: Vec<PathBuf> = dirs
        .iter()
        .zip(ids)
        .map(|(d, id)| instance_config(d.path(), &db.url, id, &slapd))
        .collect();
    let token = create_token(&configs[0], "burst").await;
    let mut procs = Vec::new();
    for c in &configs {
        procs.push(Proc::start(c).await);
    }
    let settings = scim_sync::daemon::load_settings(&configs[1]).unwrap();
    let store = scim_sync::store::Store::open(&settings.store, settings.target_names())
        .await
        .unwrap();

    let mut models: Vec<ClientModel> = (0..CLIENTS).map(|_| ClientModel::default()).collect();
    let rngs: Vec<XorShift> = (0..CLIENTS)
        .map(|c| XorShift(0x2545_F491_4F6C_DD1D ^ ((c as u64 + 7) << 32)))
        .collect();
    let acked_now = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (hit_tx, mut hit_rx) = mpsc::channel::<u64>(4);
    let mut clients = Vec::new();
    for (c, (mut m, mut r)) in std::mem::take(&mut models)
        .into_iter()
        .zip(rngs)
        .enumerate()
    {
        let (base, token, acked_now, stop, hit_tx) = (
            procs[c % INSTANCES].base(),
            token.clone(),
            acked_now.clone(),
            stop.clone(),
            hit_tx.clone(),
        );
        clients.push(tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .unwrap();
            // A broken or refused connection: this client's instance is gone, it stops.
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                if step(c, &mut r, &client, &base, &token, &mut m).await != Seen::Acked {
                    break;
                }
                let n = acked_now.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                if n == 90 || n == 180 || n == 240 {
                    let _ = hit_tx.try_send(n);
                }
            }
            m
        }));
    }
    drop(hit_tx);
    tokio::time::timeout(PATIENCE, hit_rx.recv())
        .await
        .expect("the burst stalled")
        .unwrap();
    let held = store
        .instances(scim_sync::http::server::now_ms())
        .await
        .unwrap()
        .iter()
        .find(|i| i.id == "a")
        .map_or(0, |i| i.claims);
    procs[0].signal("KILL");
    let killed_at = Instant::now();
    assert_eq!(procs[0].wait().await.code(), None);
    // The dead instance's claims are taken over: none left under its id within 15 s (the
    // lease alone would hold them 120 s).
    let takeover = loop {
        let now = scim_sync::http::server::now_ms();
        let left = store
            .instances(now)
            .await
            .unwrap()
            .iter()
            .find(|i| i.id == "a")
            .map_or(0, |i| i.claims);
        if left == 0 {
            break killed_at.elapsed();
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(15),
            "instance a still holds {left} claims 15 s after its kill"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // The survivors keep taking the burst for a while; then b is stopped (SIGTERM) in the
    // middle of it: it drains, exits 0, and its claims are free once a write it abandoned can
    // no longer arrive (the target's 3 s), well within 15 s.
    tokio::time::timeout(PATIENCE, hit_rx.recv())
        .await
        .expect("the burst stalled")
        .unwrap();
    let held_b = store
        .instances(scim_sync::http::server::now_ms())
        .await
        .unwrap()
        .iter()
        .find(|i| i.id == "b")
        .map_or(0, |i| i.claims);
    procs[1].signal("TERM");
    let stopped_at = Instant::now();
    assert_eq!(
        procs[1].wait().await.code(),
        Some(0),
        "{}",
        procs[1].log_text()
    );
    let freed = loop {
        let now = scim_sync::http::server::now_ms();
        let left = store
            .instances(now)
            .await
            .unwrap()
            .iter()
            .find(|i| i.id == "b")
            .map_or(0, |i| i.claims);
        if left == 0 {
            break stopped_at.elapsed();
        }
        assert!(
            stopped_at.elapsed() < Duration::from_secs(15),
            "instance b still holds {left} claims 15 s after its stop"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // c alone takes the rest of the burst, then it ends.
    tokio::time::timeout(PATIENCE, hit_rx.recv())
        .await
        .expect("the burst stalled")
        .unwrap();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for c in clients {
        models.push(tokio::time::timeout(PATIENCE, c).await.unwrap().unwrap());
    }
    // b's clients may be answered 503 while it drains (nothing stored); nothing else.
    for (c, m) in models.iter_mut().enumerate() {
        if c % INSTANCES == 1 {
            m.unexpected.retain(|u| !u.contains(" 503 "));
        }
    }
    let unexpected: Vec<&String> = models.iter().flat_map(|m| &m.unexpected).collect();
    assert!(unexpected.is_empty(), "non-2xx answers: {unexpected:?}");
    let (view, took) = converge(&procs[2], &slapd, &token).await;
    check_store_against_acks(&models, &view);
    let logs: Vec<String> = procs.iter().map(Proc::log_text).collect();
    let all_logs = logs.join("\n");
    assert!(
        !all_logs.contains("not managed") && !all_logs.contains("dead letter"),
        "{all_logs}"
    );
    eprintln!(
        "instance a held {held} claims at its kill; taken over {takeover:?} after it; \
         instance b held {held_b} at its stop, free {freed:?} after it; \
         converged {:?} after the kill ({took:?} after the burst ended): {} users, {} groups, \
         {} acknowledged",
        killed_at.elapsed(),
        view.users.len(),
        view.groups.len(),
        models.iter().map(|m| m.acked).sum::<u64>()
    );
    // `status` lists the live instance (the killed one's heartbeat ran out, the stopped one
    // marked itself stopped).
    let out = std::process::Command::new(BIN)
        .arg("--config")
        .arg(&configs[2])
        .arg("status")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&out.stdout).into_owned();
    let ids_listed: Vec<&str> = listed
        .lines()
        .skip_while(|l| !l.starts_with("INSTANCE"))
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .filter(|id| *id != "*")
        .collect();
    assert_eq!(
        ids_listed,
        ["c"],
        "{listed}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !listed.contains("another configuration"),
        "one configuration: {listed}"
    );
    // The survivors log no fingerprint warning either.
    assert!(!logs
        .iter()
        .any(|l| l.contains("maps with a different configuration")));
    for p in &mut procs[2..] {
        p.signal("TERM");
        assert_eq!(p.wait().await.code(), Some(0));
    }
    drop(store);
}

/// A push to instance A wakes instance B's workers (PostgreSQL `LISTEN/NOTIFY`): A's workers
/// are paused, B polls only every 600 s and has one worker. The first user reaches the
/// directory through B (its first pass or the wake-up); after that B's worker is idle, so the
/// second can only arrive by A's commit waking it.
#[tokio::test]
async fn a_push_to_one_instance_wakes_the_workers_of_another() {
    let slapd = Slapd::start().await;
    let db = PgDb::create();
    let mut daemons = Vec::new();
    let mut dirs = Vec::new();
    for id in ["a", "b"] {
        let dir = tempfile::tempdir().unwrap();
        let config = instance_config(dir.path(), &db.url, id, &slapd);
        let text = std::fs::read_to_string(&config)
            .unwrap()
            .replacen("workers = 4", "workers = 1", 1)
            .replacen("poll_interval_ms = 200", "poll_interval_ms = 600000", 1);
        std::fs::write(&config, text).unwrap();
        let settings = scim_sync::daemon::load_settings(&config).unwrap();
        daemons.push(
            scim_sync::daemon::Daemon::start(settings, Some(config))
                .await
                .unwrap(),
        );
        dirs.push(dir);
    }
    let token = scim_sync::http::auth::generate_token();
    daemons[0]
        .store
        .create_token("t", scim_sync::http::auth::digest(&token), 0)
        .await
        .unwrap();
    let paused = daemons[0].pause_reconcilers().await;
    let base = format!("http://{}/scim/v2", daemons[0].scim_addr);
    let client = reqwest::Client::new();
    for name in ["woken1", "woken2"] {
        let resp = client
            .post(format!("{base}/Users"))
            .bearer_auth(&token)
            .header("content-type", "application/scim+json")
            .body(serde_json::to_vec(&user_body(name, "T", true)).unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 201);
        let started = Instant::now();
        while slapd.entry(&user_dn(name), &["uid"]).await.is_none() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{name} did not reach the directory through instance b"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    drop(paused);
    for d in daemons {
        assert!(d.shutdown().await);
    }
    drop(dirs);
}

/// A PostgreSQL server of this test's own (initdb in a temporary directory, a free port), so it
/// can be restarted without touching the shared one. Stopped and removed on drop.
struct OwnedPg {
    dir: tempfile::TempDir,
    port: u16,
}

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

impl OwnedPg {
    fn pg_ctl(&self, args: &[&str]) {
        let data = self.dir.path().join("data");
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.path().display()
        );
        let mut cmd = std::process::Command::new("runuser");
        cmd.args(["-u", "postgres", "--"])
            .arg(format!("{PG_BIN}/pg_ctl"))
            .arg("-D")
            .arg(&data)
            .arg("-o")
            .arg(&opts)
            .arg("-l")
            .arg(self.dir.path().join("log"))
            .args(args)
            .stdout(Stdio::null());
        let ok = cmd.status().unwrap().success();
        assert!(ok, "pg_ctl {args:?} failed");
    }

    fn start() -> OwnedPg {
        let dir = tempfile::tempdir().unwrap();
        let chown = std::process::Command::new("chown")
            .arg("postgres")
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(chown.success());
        let init = std::process::Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(format!("{PG_BIN}/initdb"))
            .arg("-D")
            .arg(dir.path().join("data"))
            .args(["-A", "trust", "-U", "postgres"])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(init.success(), "initdb failed");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let pg = OwnedPg { dir, port };
        pg.pg_ctl(&["-w", "start"]);
        pg
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for OwnedPg {
    fn drop(&mut self) {
        let _ = std::process::Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(format!("{PG_BIN}/pg_ctl"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// PostgreSQL restarted (fast shutdown, then started again) while two instances take pushes:
/// every push is answered 201 or 503 (never another answer), every one answered 201 is in the
/// store and the directory afterwards, and the daemons recover by themselves (pushes are
/// acknowledged again after the restart, `verify` clean).
#[tokio::test]
async fn a_postgresql_restart_mid_burst_loses_no_acknowledged_push_and_the_daemons_recover() {
    if !std::path::Path::new(PG_BIN).join("initdb").exists() {
        panic!("this test needs PostgreSQL 15's server binaries in {PG_BIN}");
    }
    let slapd = Slapd::start().await;
    let pg = OwnedPg::start();
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let configs: Vec<PathBuf> = dirs
        .iter()
        .zip(["a", "b"])
        .map(|(d, id)| instance_config(d.path(), &pg.url(), id, &slapd))
        .collect();
    let token = create_token(&configs[0], "restart").await;
    let mut procs = Vec::new();
    for c in &configs {
        procs.push(Proc::start(c).await);
    }
    let acked = Arc::new(Mutex::new(BTreeSet::<String>::new()));
    let odd = Arc::new(Mutex::new(Vec::<String>::new()));
    let count = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..4 {
        let (base, token, acked, odd, count, stop) = (
            procs[c % 2].base(),
            token.clone(),
            acked.clone(),
            odd.clone(),
            count.clone(),
            stop.clone(),
        );
        clients.push(tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .unwrap();
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                i += 1;
                let name = format!("r{c}-{i}");
                let resp = client
                    .post(format!("{base}/Users"))
                    .bearer_auth(&token)
                    .header("content-type", "application/scim+json")
                    .body(serde_json::to_vec(&user_body(&name, "T", true)).unwrap())
                    .send()
                    .await;
                match resp.map(|r| r.status().as_u16()) {
                    Ok(201) => {
                        acked.lock().unwrap().insert(name);
                        count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    Ok(503) => tokio::time::sleep(Duration::from_millis(20)).await,
                    other => odd.lock().unwrap().push(format!("{name}: {other:?}")),
                }
            }
        }));
    }
    let wait_for = |n: u64| {
        let count = count.clone();
        async move {
            let started = Instant::now();
            while count.load(std::sync::atomic::Ordering::SeqCst) < n {
                assert!(
                    started.elapsed() < PATIENCE,
                    "pushes stopped being acknowledged"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    wait_for(60).await;
    pg.pg_ctl(&["-m", "fast", "-w", "stop"]);
    let at_stop = count.load(std::sync::atomic::Ordering::SeqCst);
    pg.pg_ctl(&["-w", "start"]);
    // Recovered by themselves: pushes are acknowledged again, on both instances.
    wait_for(at_stop + 60).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for c in clients {
        tokio::time::timeout(PATIENCE, c).await.unwrap().unwrap();
    }
    let odd = odd.lock().unwrap().clone();
    assert!(odd.is_empty(), "answers other than 201 and 503: {odd:?}");
    let (view, _) = converge(&procs[0], &slapd, &token).await;
    let stored: BTreeSet<String> = view.users.values().map(|(n, _, _)| n.clone()).collect();
    let acked = acked.lock().unwrap().clone();
    let lost: Vec<_> = acked.difference(&stored).collect();
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
    eprintln!(
        "{} acknowledged ({at_stop} before the stop), {} stored",
        acked.len(),
        stored.len()
    );
    for p in &mut procs {
        p.signal("TERM");
        assert_eq!(p.wait().await.code(), Some(0), "{}", p.log_text());
    }
}

/// A worker whose own fence is low (its instance heartbeat is late: paused here, as a
/// process starved of CPU or a store round trip stuck would be) claims nothing it could not
/// write and does not spin: not one claim transaction while the fence leaves less than a
/// write's timeout, however many pushes and polls wake it. Once the heartbeat resumes, the
/// pushes reach the directory. Before: every wake-up and poll claimed the rows (each apply
/// then refused by its lease), taking them from the instances that could write them.
#[tokio::test]
async fn an_instance_whose_heartbeat_is_late_claims_nothing() {
    let slapd = Slapd::start().await;
    let db = PgDb::create();
    let dir = tempfile::tempdir().unwrap();
    let config = instance_config(dir.path(), &db.url, "late", &slapd);
    let settings = scim_sync::daemon::load_settings(&config).unwrap();
    let daemon = scim_sync::daemon::Daemon::start(settings, Some(config))
        .await
        .unwrap();
    let token = scim_sync::http::auth::generate_token();
    daemon
        .store
        .create_token("t", scim_sync::http::auth::digest(&token), 0)
        .await
        .unwrap();
    daemon.pause_heartbeat(true);
    // The fence runs down to less than the target's 2 s operation timeout (takeover 5 s).
    let fence = daemon.store.fence();
    let started = Instant::now();
    while fence
        .alive_until_ms
        .load(std::sync::atomic::Ordering::SeqCst)
        .saturating_sub(scim_sync::http::server::now_ms())
        >= 2_000
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the fence never ran low"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = daemon.store.outbox_counts();
    let base = format!("http://{}/scim/v2", daemon.scim_addr);
    let client = reqwest::Client::new();
    for i in 0..5 {
        let resp = client
            .post(format!("{base}/Users"))
            .bearer_auth(&token)
            .header("content-type", "application/scim+json")
            .body(serde_json::to_vec(&user_body(&format!("late{i}"), "T", true)).unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 201);
    }
    // Five wake-ups and, over a second, five polls (every 200 ms) of each of the 4 workers.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let during = daemon.store.outbox_counts();
    assert_eq!(
        (during.claims, during.claimed_rows),
        (before.claims, before.claimed_rows),
        "claims while the fence was low"
    );
    assert!(slapd.entry(&user_dn("late0"), &["uid"]).await.is_none());
    // Drift repair (it may hold the periodic job's turn) claims nothing either: every chunk
    // is reported not repaired for the fence (second reader's finding 4). Before, it claimed
    // each row (and would take a dead instance's over) and then failed its lease check.
    let report = daemon.reconcile_full(None, false, |_, _| {}).await;
    assert_eq!(report.failed, 5, "{report:?}");
    for item in &report.items {
        let error = item.error.as_deref().unwrap_or_default();
        assert!(
            error.contains("fence does not allow claims"),
            "drift repair claimed under a low fence: {error}"
        );
    }
    assert!(slapd.entry(&user_dn("late0"), &["uid"]).await.is_none());
    daemon.pause_heartbeat(false);
    let started = Instant::now();
    for i in 0..5 {
        while slapd
            .entry(&user_dn(&format!("late{i}")), &["uid"])
            .await
            .is_none()
        {
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "late{i} did not arrive after the heartbeat resumed"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert!(daemon.store.outbox_counts().claims > during.claims);
    assert!(daemon.shutdown().await);
    drop(dir);
}

/// A reload that needs a longer takeover bound (a target's `timeout_secs` raised, the bound
/// left to its default) re-registers it: the others use the new bound from the next heartbeat
/// on, and this instance's fence runs by it, so its writes (which need the longer timeout
/// left on the fence) can start at all. A reload that would lower it keeps the larger bound,
/// and one changing `heartbeat_secs` is refused naming the key. Before: the bound stayed the
/// one registered at start (15 s) while a write needed 17 s: every write was refused.
#[tokio::test]
async fn a_reload_needing_a_longer_takeover_bound_registers_it() {
    let slapd = Slapd::start().await;
    let db = PgDb::create();
    let dir = tempfile::tempdir().unwrap();
    let config = instance_config(dir.path(), &db.url, "reloaded", &slapd);
    // The default bound: the larger of 15 s and 1 + 2 + twice the 1 s heartbeat.
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replacen("takeover_secs = 5\n", "", 1);
    std::fs::write(&config, &text).unwrap();
    let settings = scim_sync::daemon::load_settings(&config).unwrap();
    let daemon = scim_sync::daemon::Daemon::start(settings, Some(config.clone()))
        .await
        .unwrap();
    let registered = |daemon: &scim_sync::daemon::Daemon| {
        let store = daemon.store.clone();
        async move {
            store
                .instances(scim_sync::http::server::now_ms())
                .await
                .unwrap()
                .into_iter()
                .find(|i| i.id == "reloaded")
                .unwrap()
        }
    };
    assert_eq!(registered(&daemon).await.takeover_ms, 15_000);
    // 1 + 14 + 2 = 17 s.
    std::fs::write(
        &config,
        text.replacen("timeout_secs = 2\n", "timeout_secs = 14\n", 1),
    )
    .unwrap();
    daemon.reload().await.unwrap();
    let started = Instant::now();
    while registered(&daemon).await.takeover_ms != 17_000 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the raised bound was not registered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The fence runs by it (less the clock allowance).
    let left = daemon
        .store
        .fence()
        .alive_until_ms
        .load(std::sync::atomic::Ordering::SeqCst)
        .saturating_sub(scim_sync::http::server::now_ms());
    assert!(left > 15_000, "the fence leaves {left} ms");
    // Lowering it back keeps the larger bound (a write under it may still be on its way).
    std::fs::write(&config, &text).unwrap();
    daemon.reload().await.unwrap();
    let hb = registered(&daemon).await.heartbeat_ms;
    let started = Instant::now();
    loop {
        let now = registered(&daemon).await;
        if now.heartbeat_ms > hb {
            assert_eq!(now.takeover_ms, 17_000);
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "no heartbeat");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The heartbeat's period needs a restart.
    std::fs::write(
        &config,
        text.replacen("heartbeat_secs = 1\n", "heartbeat_secs = 2\n", 1),
    )
    .unwrap();
    let errors = daemon.reload().await.unwrap_err();
    let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert!(
        shown.iter().any(|e| e.contains("reconcile.heartbeat_secs")),
        "{shown:?}"
    );
    assert!(daemon.shutdown().await);
    drop(dir);
}
