//! Load benchmarks that print figures (never asserted): `cargo bench --bench load`.
//!
//! Parts, chosen with `BENCH=filter,scim,ldap,e2e,group` (or the same list as an argument after `--`;
//! default: all), each printing one line per figure with its units and sizes:
//! - `scim`: durable creates per second at concurrency 8 on SQLite, with p50/p99 latency.
//! - `ldap`: users applied to a local slapd per second (creates, then one-attribute PUTs),
//!   pushed while the reconcilers are paused, timed from release until nothing is pending.
//! - `e2e`: delay from a SCIM 201 to the entry being visible in slapd, workers running normally.
//! - `group`: one membership change in a large group: PATCH latency, reconcile time, LDAP read.
//!
//! Sizes come from the environment: `BENCH_USERS` (default 2000), `BENCH_LDAP_USERS` (2000),
//! `BENCH_E2E_USERS` (200), `BENCH_GROUP_SIZE` (50000), `BENCH_GROUP_CHANGES` (20).
//! It owns no product code and must not assert on timings: it reports, docs/benchmarks.md
//! interprets.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::disallowed_methods
)]

#[allow(dead_code)]
#[path = "../tests/harness/slapd.rs"]
mod slapd;

use ldap3::{Ldap, Scope, SearchEntry};
use scim_sync::daemon::Daemon;
use serde_json::{json, Value};
use slapd::Slapd;
use std::sync::Arc;
use std::time::{Duration, Instant};

const USER: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
const GROUP: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
const PATCH: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";
const PEOPLE: &str = "ou=People,dc=example,dc=com";
const GROUPS: &str = "ou=Groups,dc=example,dc=com";
/// Most members one SCIM request may carry (`scim::resource::MAX_VALUES`).
const MEMBERS_PER_REQUEST: usize = 10_000;
const CONCURRENCY: usize = 8;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `p50 X ms, p99 Y ms, max Z ms` of unsorted samples.
fn summary(mut lat: Vec<Duration>) -> String {
    lat.sort();
    format!(
        "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (n={})",
        ms(percentile(&lat, 0.50)),
        ms(percentile(&lat, 0.99)),
        ms(lat.last().copied().unwrap_or_default()),
        lat.len()
    )
}

struct Running {
    daemon: Daemon,
    base: String,
    token: String,
    client: reqwest::Client,
    _dir: tempfile::TempDir,
}

async fn start(extra: &str) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"\"\n[store]\nurl = \"sqlite://{}/bench.db\"\n[log]\nlevel = \"warn\"\n{extra}\n",
        dir.path().display()
    );
    let path = dir.path().join("bench.toml");
    std::fs::write(&path, config).unwrap();
    let settings = scim_sync::daemon::load_settings(&path).unwrap();
    let daemon = Daemon::start(settings, None).await.unwrap();
    let token = scim_sync::http::auth::generate_token();
    daemon
        .store
        .create_token("bench", scim_sync::http::auth::digest(&token), 0)
        .await
        .unwrap();
    let base = format!("http://{}/scim/v2", daemon.scim_addr);
    Running {
        daemon,
        base,
        token,
        client: reqwest::Client::new(),
        _dir: dir,
    }
}

/// A daemon with one LDAP target `corp` on `slapd`, default `[reconcile]` settings.
async fn start_ldap(slapd: &Slapd) -> Running {
    let secrets = tempfile::tempdir().unwrap();
    let pw = secrets.path().join("ldap.pw");
    std::fs::write(&pw, format!("{}\n", slapd.password())).unwrap();
    let target = format!(
        r#"
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
cn = "{{name.givenName}} {{name.familyName}}"
sn = "name.familyName"
givenName = "name.givenName"
mail = {{ from = "emails[primary eq true].value", transform = ["lower"] }}
title = "title"
[targets.groups]
dn = "cn={{displayName}},{GROUPS}"
object_classes = ["groupOfNames"]
placeholder_member = "cn=nobody,dc=example,dc=com"
"#,
        url = slapd.uri(),
        bind = slapd.bind_dn(),
        pw = pw.display(),
    );
    let r = start(&target).await;
    // The password is read at startup; the file may go.
    drop(secrets);
    r
}

fn user_body(name: &str, title: &str) -> Value {
    json!({"schemas": [USER],
        "userName": name,
        "name": {"givenName": "Bench", "familyName": format!("User-{name}")},
        "emails": [{"primary": true, "type": "work", "value": format!("{name}@example.com")}],
        "title": title,
        "active": true})
}

impl Running {
    async fn send(&self, method: reqwest::Method, path: &str, body: &Value) -> (u16, Value) {
        let resp = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .header("content-type", "application/scim+json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.unwrap();
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, value)
    }

    async fn pending(&self) -> (u64, u64) {
        let s = self
            .daemon
            .store
            .status(&["corp".to_owned()])
            .await
            .unwrap()
            .remove(0);
        (s.pending, s.dead)
    }

    /// Poll the store every `every` until target `corp` has nothing pending; returns the dead
    /// count. `Store::status` counts rows, so on a large store a tight poll competes with the
    /// workers it is timing: setup phases poll slowly.
    async fn wait_drained(&self, every: Duration) -> u64 {
        loop {
            let (pending, dead) = self.pending().await;
            if pending == 0 {
                return dead;
            }
            tokio::time::sleep(every).await;
        }
    }
}

/// `count` requests at concurrency 8; `make(i)` gives (method, path, body, expected status).
/// Returns the per-request latencies and the bodies of the answers in request order.
async fn push<F>(r: &Arc<Running>, count: usize, make: F) -> (Vec<Duration>, Vec<Value>)
where
    F: Fn(usize) -> (reqwest::Method, String, Value, u16) + Send + Sync + 'static,
{
    let make = Arc::new(make);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut handles = Vec::new();
    for _ in 0..CONCURRENCY {
        let (r, next, make) = (r.clone(), next.clone(), make.clone());
        handles.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= count {
                    return out;
                }
                let (method, path, body, want) = make(i);
                let t = Instant::now();
                let (status, answer) = r.send(method, &path, &body).await;
                assert_eq!(status, want, "{path}: {answer}");
                out.push((i, t.elapsed(), answer));
            }
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.unwrap());
    }
    all.sort_by_key(|(i, _, _)| *i);
    let lat = all.iter().map(|(_, d, _)| *d).collect();
    let bodies = all.into_iter().map(|(_, _, b)| b).collect();
    (lat, bodies)
}

async fn scim_creates(users: usize) {
    let r = Arc::new(start("").await);
    let started = Instant::now();
    let (lat, _) = push(&r, users, |i| {
        (
            reqwest::Method::POST,
            "/Users".to_owned(),
            json!({"schemas": [USER],
                "userName": format!("bench{i}@example.com"),
                "name": {"givenName": "Bench", "familyName": format!("User{i}")},
                "emails": [{"primary": true, "type": "work", "value": format!("bench{i}@example.com")}],
                "active": true}),
            201,
        )
    })
    .await;
    let elapsed = started.elapsed();
    let mut lat = lat;
    lat.sort();
    println!(
        "scim creates (SQLite, synchronous=FULL, concurrency {CONCURRENCY}): {users} in {:.2}s = {:.0}/s; p50 {:.1} ms, p99 {:.1} ms",
        elapsed.as_secs_f64(),
        users as f64 / elapsed.as_secs_f64(),
        ms(percentile(&lat, 0.50)),
        ms(percentile(&lat, 0.99)),
    );
    Arc::try_unwrap(r).ok().unwrap().daemon.shutdown().await;
}

/// Part 1: apply throughput for creates, then for one-attribute PUTs.
async fn ldap_throughput(users: usize) {
    let slapd = Slapd::start().await;
    let r = Arc::new(start_ldap(&slapd).await);

    let paused = r.daemon.pause_reconcilers().await.unwrap();
    let (_, bodies) = push(&r, users, |i| {
        (
            reqwest::Method::POST,
            "/Users".to_owned(),
            user_body(&format!("u{i}"), "Engineer"),
            201,
        )
    })
    .await;
    let ids: Arc<Vec<String>> = Arc::new(
        bodies
            .iter()
            .map(|b| b["id"].as_str().unwrap().to_owned())
            .collect(),
    );
    let (pending, _) = r.pending().await;
    let t = Instant::now();
    drop(paused);
    r.daemon.wake();
    let dead = r.wait_drained(Duration::from_millis(5)).await;
    let e = t.elapsed();
    println!(
        "ldap apply, creates (4 workers, {pending} pending, SQLite store, local slapd): {users} users in {:.2} s = {:.0} users/s ({dead} dead)",
        e.as_secs_f64(),
        users as f64 / e.as_secs_f64()
    );

    let paused = r.daemon.pause_reconcilers().await.unwrap();
    let ids2 = ids.clone();
    push(&r, users, move |i| {
        (
            reqwest::Method::PUT,
            format!("/Users/{}", ids2[i]),
            user_body(&format!("u{i}"), "Staff Engineer"),
            200,
        )
    })
    .await;
    let (pending, _) = r.pending().await;
    let t = Instant::now();
    drop(paused);
    r.daemon.wake();
    let dead = r.wait_drained(Duration::from_millis(5)).await;
    let e = t.elapsed();
    println!(
        "ldap apply, PUT changing one attribute (title; 4 workers, {pending} pending): {users} users in {:.2} s = {:.0} users/s ({dead} dead)",
        e.as_secs_f64(),
        users as f64 / e.as_secs_f64()
    );
    let t = Instant::now();
    r.pending().await;
    println!(
        "ldap apply: one Store::status call (the drain poll, every 5 ms) with {users} users applied twice: {:.2} ms",
        ms(t.elapsed())
    );
    let check = slapd
        .entry(&format!("uid=u0,{PEOPLE}"), &["title"])
        .await
        .unwrap();
    assert_eq!(
        check,
        vec![("title".to_owned(), vec!["Staff Engineer".to_owned()])]
    );
    Arc::try_unwrap(r).ok().unwrap().daemon.shutdown().await;
}

/// Whether `dn` exists (base-scope search, no attributes).
async fn exists(ldap: &mut Ldap, dn: &str) -> bool {
    let res = ldap
        .search(dn, Scope::Base, "(objectClass=*)", vec!["1.1"])
        .await
        .unwrap();
    match res.1.rc {
        0 => !res.0.is_empty(),
        32 => false,
        rc => panic!("search {dn}: rc {rc} {}", res.1.text),
    }
}

/// Part 2: SCIM 201 -> visible in slapd, sequential creates, workers running normally.
async fn end_to_end(users: usize) {
    let slapd = Slapd::start().await;
    let r = start_ldap(&slapd).await;
    let mut ldap = slapd.admin().await;
    let mut lat = Vec::new();
    let mut http = Vec::new();
    for i in 0..users {
        let name = format!("e{i}");
        let t = Instant::now();
        let (status, body) = r
            .send(
                reqwest::Method::POST,
                "/Users",
                &user_body(&name, "Engineer"),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        let answered = Instant::now();
        http.push(answered - t);
        let dn = format!("uid={name},{PEOPLE}");
        let deadline = answered + Duration::from_secs(60);
        while !exists(&mut ldap, &dn).await {
            assert!(Instant::now() < deadline, "{dn} never appeared");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        lat.push(answered.elapsed());
    }
    println!(
        "end to end, SCIM 201 -> entry visible in slapd ({users} sequential creates, 4 workers, 1 ms polling): {}",
        summary(lat)
    );
    println!(
        "end to end, the POST itself ({users} sequential creates): {}",
        summary(http)
    );
    r.daemon.shutdown().await;
}

/// The member values of `dn` and how long the base-scope read took.
async fn read_members(ldap: &mut Ldap, dn: &str) -> (usize, Duration) {
    let t = Instant::now();
    let (entries, _) = ldap
        .search(dn, Scope::Base, "(objectClass=*)", vec!["member"])
        .await
        .unwrap()
        .success()
        .unwrap();
    let e = t.elapsed();
    let entry = SearchEntry::construct(entries.into_iter().next().unwrap());
    let n = entry
        .attrs
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("member"))
        .map_or(0, |(_, v)| v.len());
    (n, e)
}

/// Part 3: one membership change in a group of `size` members.
async fn large_group(size: usize, changes: usize) {
    let slapd = Slapd::start().await;
    let r = Arc::new(start_ldap(&slapd).await);
    let total = size + changes;

    // Setup 1: users through the store API (concurrency 8), applied by the background workers
    // as they arrive.
    let t = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut handles = Vec::new();
    for _ in 0..CONCURRENCY {
        let (r, next) = (r.clone(), next.clone());
        handles.push(tokio::spawn(async move {
            let schemas = scim_sync::scim::schema::SchemaSet::default();
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= total {
                    return out;
                }
                let input = scim_sync::scim::resource::parse_user(
                    user_body(&format!("g{i}"), "Engineer"),
                    &schemas,
                )
                .unwrap();
                let ctx = scim_sync::store::AuditCtx {
                    token_name: "bench".into(),
                    request_id: format!("bench-{i}"),
                    now_ms: 0,
                    deadline: None,
                };
                let u = r.daemon.store.create_user(input, None, &ctx).await.unwrap();
                if i % 500 == 0 {
                    r.daemon.wake();
                }
                out.push((i, u.id));
            }
        }));
    }
    let mut ids = Vec::new();
    for h in handles {
        ids.extend(h.await.unwrap());
    }
    ids.sort();
    let ids: Vec<String> = ids.into_iter().map(|(_, id)| id).collect();
    let stored = t.elapsed();
    r.daemon.wake();
    let dead = r.wait_drained(Duration::from_millis(250)).await;
    let drained = t.elapsed();
    let t_status = Instant::now();
    r.pending().await;
    let status_cost = t_status.elapsed();
    println!(
        "group setup: {total} users stored through the store API (concurrency {CONCURRENCY}) in {:.1} s = {:.0}/s",
        stored.as_secs_f64(),
        total as f64 / stored.as_secs_f64()
    );
    println!(
        "group setup: {total} users applied to slapd {:.1} s after the first store write (workers running meanwhile, drain polled every 250 ms; {dead} dead)",
        drained.as_secs_f64()
    );
    println!(
        "group setup: one Store::status call with {total} users applied: {:.1} ms",
        ms(status_cost)
    );

    // Setup 2: the group over SCIM, POST with the first 10,000 members then PATCH adds of
    // 10,000 (the per-request cap), reconcilers paused so it is applied once.
    let member = |id: &String| json!({"value": id});
    let paused = r.daemon.pause_reconcilers().await.unwrap();
    let t = Instant::now();
    let first: Vec<Value> = ids[..size.min(MEMBERS_PER_REQUEST)]
        .iter()
        .map(member)
        .collect();
    let (status, body) = r
        .send(
            reqwest::Method::POST,
            "/Groups",
            &json!({"schemas": [GROUP], "displayName": "big", "members": first}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let gid = body["id"].as_str().unwrap().to_owned();
    let mut requests = 1;
    let mut from = MEMBERS_PER_REQUEST;
    while from < size {
        let to = (from + MEMBERS_PER_REQUEST).min(size);
        let batch: Vec<Value> = ids[from..to].iter().map(member).collect();
        let (status, body) = r
            .send(
                reqwest::Method::PATCH,
                &format!("/Groups/{gid}"),
                &json!({"schemas": [PATCH], "Operations": [{"op": "add", "path": "members", "value": batch}]}),
            )
            .await;
        assert!((200..300).contains(&status), "{status} {body}");
        requests += 1;
        from = to;
    }
    let pushed = t.elapsed();
    println!(
        "group setup: group of {size} members pushed over SCIM ({requests} requests of at most {MEMBERS_PER_REQUEST} members) in {:.1} s",
        pushed.as_secs_f64()
    );
    let t = Instant::now();
    drop(paused);
    // Whoever applies it (a released worker or this call), it is done when this returns.
    r.daemon.run_pending_reconciles().await;
    println!(
        "group setup: group of {size} members applied to slapd (one add of 500 values + modifies of 500) in {:.2} s",
        t.elapsed().as_secs_f64()
    );

    let group_dn = format!("cn=big,{GROUPS}");
    let mut ldap = slapd.admin().await;
    let (mut count, _) = read_members(&mut ldap, &group_dn).await;
    assert_eq!(count, size, "members in slapd after setup");

    let (mut patch_lat, mut apply_lat, mut read_lat) = (Vec::new(), Vec::new(), Vec::new());
    let (mut members_lat, mut states_lat) = (Vec::new(), Vec::new());
    for id in &ids[size..total] {
        let paused = r.daemon.pause_reconcilers().await.unwrap();
        let body = json!({"schemas": [PATCH],
            "Operations": [{"op": "add", "path": "members", "value": [{"value": id}]}]});
        let t = Instant::now();
        let (status, answer) = r
            .send(reqwest::Method::PATCH, &format!("/Groups/{gid}"), &body)
            .await;
        patch_lat.push(t.elapsed());
        assert!((200..300).contains(&status), "{status} {answer}");
        let t = Instant::now();
        drop(paused);
        r.daemon.run_pending_reconciles().await;
        apply_lat.push(t.elapsed());
        let (n, read) = read_members(&mut ldap, &group_dn).await;
        assert_eq!(n, count + 1, "one member added per change");
        count = n;
        read_lat.push(read);
        // The reconciler's two store queries for a group, timed on their own.
        let t = Instant::now();
        let stored = r.daemon.store.group_members(&gid).await.unwrap();
        members_lat.push(t.elapsed());
        let member_ids: Vec<String> = stored.into_iter().map(|m| m.value).collect();
        let t = Instant::now();
        let states = r
            .daemon
            .store
            .target_states_of("corp", &member_ids)
            .await
            .unwrap();
        states_lat.push(t.elapsed());
        assert_eq!(states.len(), member_ids.len(), "every member is applied");
    }
    let (_, dead) = r.pending().await;
    let p50 = |v: &[Duration]| {
        let mut a = v.to_vec();
        a.sort();
        percentile(&a, 0.5).as_secs_f64()
    };
    let apply_p50 = p50(&apply_lat).max(f64::MIN_POSITIVE);
    let read_share = p50(&read_lat) / apply_p50;
    let store_share = (p50(&members_lat) + p50(&states_lat)) / apply_p50;
    println!(
        "group of {size}: SCIM PATCH add of one member, HTTP latency (204, reconcilers paused): {}",
        summary(patch_lat)
    );
    println!(
        "group of {size}: reconcile of that change (run_pending_reconciles; {dead} dead): {}",
        summary(apply_lat)
    );
    println!(
        "group of {size}: base-scope read of the group's member attribute from slapd (~{size} values, the read the reconciler does first): {}",
        summary(read_lat)
    );
    println!(
        "group of {size}: store read of the group's members (Store::group_members, the reconciler's first query): {}",
        summary(members_lat)
    );
    println!(
        "group of {size}: store read of the members' target states (Store::target_states_of, its second query): {}",
        summary(states_lat)
    );
    println!(
        "group of {size}: slapd member count went +1 per change ({changes} changes, now {count}): the LDAP write added exactly one value each time"
    );
    println!(
        "group of {size}: share of the reconcile p50: LDAP member read {:.0}%, the two store queries {:.0}% ({})",
        read_share * 100.0,
        store_share * 100.0,
        if read_share >= 0.5 {
            "reading the large member attribute dominates the reconcile"
        } else if store_share >= 0.5 {
            "the store queries dominate, not the LDAP read"
        } else {
            "neither dominates; the rest (render, diff, modify, settle) is not broken down here"
        }
    );
    Arc::try_unwrap(r).ok().unwrap().daemon.shutdown().await;
}

/// Hostile filters refused while parsing: 100,000 nested parentheses, `not (` chains and a
/// 4 KiB filter of whitespace runs, each parsed 1,000 times; prints the time per parse.
fn filter_limits() {
    use scim_sync::scim::filter::{parse_filter, FilterLimits};
    let cases = [
        (
            "100,000 nested parentheses",
            format!("{}userName pr{}", "(".repeat(100_000), ")".repeat(100_000)),
        ),
        (
            "2,000 `not (`",
            format!("{}userName pr{}", "not (".repeat(2_000), ")".repeat(2_000)),
        ),
        (
            "4 KiB of spaces and quotes",
            format!("userName eq {}", " \"\\".repeat(1_360)),
        ),
        (
            "a valid Okta lookup",
            "userName eq \"ada@example.com\"".to_string(),
        ),
    ];
    let limits = [
        ("default limits", FilterLimits::default()),
        (
            "length limit 1 MiB, depth limit 32 decides",
            FilterLimits {
                max_len: 1 << 20,
                max_depth: 32,
            },
        ),
    ];
    for (limit_name, limit) in limits {
        for (name, filter) in &cases {
            let n = 1_000u32;
            let started = Instant::now();
            let mut refused = 0;
            for _ in 0..n {
                if parse_filter(std::hint::black_box(filter), limit).is_err() {
                    refused += 1;
                }
            }
            let per = started.elapsed() / n;
            println!(
                "filter parse, {name} ({} bytes, {limit_name}): {} ns per parse, refused {refused}/{n}",
                filter.len(),
                per.as_nanos()
            );
        }
    }
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this binary without it:
    // then there is nothing to measure (the suite must stay fast).
    if !std::env::args().any(|a| a == "--bench") {
        println!("load: benchmarks run with `cargo bench --bench load`; skipped under cargo test");
        return;
    }
    let arg = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .or_else(|| std::env::var("BENCH").ok())
        .unwrap_or_else(|| "filter,scim,ldap,e2e,group".to_owned());
    let parts: Vec<String> = arg.split(',').map(|s| s.trim().to_owned()).collect();
    for p in &parts {
        assert!(
            ["filter", "scim", "ldap", "e2e", "group"].contains(&p.as_str()),
            "unknown part {p:?}: choose from filter,scim,ldap,e2e,group"
        );
    }
    let want = |p: &str| parts.iter().any(|x| x == p);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    if want("filter") {
        filter_limits();
    }
    rt.block_on(async {
        if want("scim") {
            scim_creates(env_usize("BENCH_USERS", 2000)).await;
        }
        if want("ldap") {
            ldap_throughput(env_usize("BENCH_LDAP_USERS", 2000)).await;
        }
        if want("e2e") {
            end_to_end(env_usize("BENCH_E2E_USERS", 200)).await;
        }
        if want("group") {
            large_group(
                env_usize("BENCH_GROUP_SIZE", 50_000),
                env_usize("BENCH_GROUP_CHANGES", 20),
            )
            .await;
        }
    });
}
