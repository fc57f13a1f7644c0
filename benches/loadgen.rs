//! The load generator behind `scripts/bench` (docs/benchmarks.md, "scripts/bench"): it drives a
//! running release daemon over keep-alive HTTP/1.1 connections with Okta-shaped requests
//! (creates, PUTs of the server's own representation, deactivation PATCHes, group member PATCH
//! add/remove, a group PUT), watches the directory side with ldap3 searches on slapd to time
//! visibility, runs a raw `ldapadd` as the baseline, and prints one table: each figure with the
//! issue-9 target it is held to and PASS/MISS.
//!
//! A bench target (`harness = false`), not a binary: the daemon does not carry it, `cargo test`
//! does not build it, and it may use the dev-dependencies (reqwest). It uses nothing from the
//! library: it speaks SCIM and LDAP like any client. Run without the environment scripts/bench
//! sets (`BENCH_SCIM_URL`, ...), e.g. by a plain `cargo bench`, it says so and exits 0.

use ldap3::{dn_escape, ldap_escape, Ldap, LdapConnAsync, Scope, SearchEntry};
use reqwest::Method;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

const USER: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
const ENTERPRISE: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
const IRONCLAD: &str = "urn:ietf:params:scim:schemas:extension:ironclad:2.0:User";
const GROUP: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
const PATCH: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";
/// Most values one SCIM PATCH value array may carry (`scim::resource::MAX_VALUES`).
const CHUNK: usize = 10_000;
/// The demo config's deactivation (`targets.users.deactivate.set`).
const LOCKED: &str = "(pwdAccountLockedTime=000001010000Z)";
/// Below this many missing entries, visibility is checked entry by entry (base searches).
const TAIL: usize = 200;

type R<T> = Result<T, String>;

/// Adds context to an error.
trait Ctx<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> R<T>;
}

impl<T, E: std::fmt::Display> Ctx<T> for Result<T, E> {
    fn ctx(self, what: impl FnOnce() -> String) -> R<T> {
        self.map_err(|e| format!("{}: {e}", what()))
    }
}

/// Where the daemon and slapd are (set by scripts/bench). With several instances
/// (`BENCH_INSTANCES`), `BENCH_SCIM_URL` and `BENCH_ADMIN_URL` list each one's, comma
/// separated: the requests go round-robin over the SCIM URLs, `/readyz` is asked of the
/// first, and the claim overhead is summed over every admin URL's `/metrics`.
struct Env {
    scim: Vec<String>,
    token: String,
    admin: String,
    admins: Vec<String>,
    ldap_uri: String,
    bind_dn: String,
    password_file: PathBuf,
    password: String,
    base: String,
    pid: u32,
    work: PathBuf,
}

impl Env {
    fn from_env() -> R<Option<Env>> {
        let Ok(scim) = std::env::var("BENCH_SCIM_URL") else {
            return Ok(None);
        };
        let var = |k: &str| std::env::var(k).ctx(|| format!("{k} (set by scripts/bench)"));
        let password_file = PathBuf::from(var("BENCH_LDAP_PASSWORD_FILE")?);
        let password = std::fs::read_to_string(&password_file)
            .ctx(|| format!("read {}", password_file.display()))?;
        let list = |v: String| -> Vec<String> {
            v.split(',')
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .map(str::to_owned)
                .collect()
        };
        let admins = list(var("BENCH_ADMIN_URL")?);
        Ok(Some(Env {
            scim: list(scim),
            token: var("BENCH_TOKEN")?,
            admin: admins
                .first()
                .cloned()
                .ok_or_else(|| "BENCH_ADMIN_URL is empty".to_owned())?,
            admins,
            ldap_uri: var("BENCH_LDAP_URI")?,
            bind_dn: var("BENCH_LDAP_BIND_DN")?,
            password: password.trim_end_matches('\n').to_owned(),
            password_file,
            base: var("BENCH_LDAP_BASE")?,
            pid: var("BENCH_DAEMON_PID")?
                .parse()
                .ctx(|| "BENCH_DAEMON_PID".into())?,
            work: PathBuf::from(var("BENCH_WORK")?),
        }))
    }

    fn people(&self) -> String {
        format!("ou=People,{}", self.base)
    }

    fn user_dn(&self, user_name: &str) -> String {
        format!("uid={},ou=People,{}", dn_escape(user_name), self.base)
    }
}

/// Sizes, from the environment (`BENCH_QUICK=1`: small defaults for a smoke run).
struct Sizes {
    quick: bool,
    users: usize,
    puts: usize,
    rate: usize,
    steady_secs: usize,
    group: usize,
    changes: usize,
    concurrency: usize,
    status_samples: usize,
}

fn env_usize(name: &str, default: usize) -> R<usize> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .ctx(|| format!("{name}={v}: not a non-negative integer")),
        Err(_) => Ok(default),
    }
}

impl Sizes {
    fn from_env() -> R<Sizes> {
        let quick = std::env::var("BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
        let q = |full: usize, small: usize| if quick { small } else { full };
        let s = Sizes {
            quick,
            users: env_usize("BENCH_USERS", q(10_000, 500))?,
            puts: env_usize("BENCH_PUTS", q(2_000, 200))?,
            rate: env_usize("BENCH_RATE", 200)?,
            steady_secs: env_usize("BENCH_STEADY_SECS", q(10, 2))?,
            group: env_usize("BENCH_GROUP_SIZE", q(50_000, 1_000))?,
            changes: env_usize("BENCH_GROUP_CHANGES", 10)?,
            concurrency: env_usize("BENCH_CONCURRENCY", 8)?,
            status_samples: env_usize("BENCH_STATUS_SAMPLES", q(50, 20))?,
        };
        if s.users == 0 || s.concurrency == 0 || s.rate == 0 || (s.group > 0 && s.group < 5) {
            return Err(
                "BENCH_USERS, BENCH_CONCURRENCY and BENCH_RATE must be > 0, BENCH_GROUP_SIZE 0 (no group) or >= 5"
                    .into(),
            );
        }
        if s.puts > s.users {
            return Err(format!(
                "BENCH_PUTS ({}) must not exceed BENCH_USERS ({})",
                s.puts, s.users
            ));
        }
        Ok(s)
    }
}

// ---------------------------------------------------------------------------------------------
// The table.

enum Verdict {
    Pass,
    Miss,
    Info,
}

struct Row {
    figure: String,
    value: String,
    target: String,
    verdict: Verdict,
}

#[derive(Default)]
struct Table {
    rows: Vec<Row>,
}

impl Table {
    fn info(&mut self, figure: impl Into<String>, value: impl Into<String>) {
        self.push(figure, value, "-", Verdict::Info);
    }

    fn check(
        &mut self,
        figure: impl Into<String>,
        value: impl Into<String>,
        target: impl Into<String>,
        pass: bool,
    ) {
        let verdict = if pass { Verdict::Pass } else { Verdict::Miss };
        self.push(figure, value, target, verdict);
    }

    fn push(
        &mut self,
        figure: impl Into<String>,
        value: impl Into<String>,
        target: impl Into<String>,
        verdict: Verdict,
    ) {
        let row = Row {
            figure: figure.into(),
            value: value.into(),
            target: target.into(),
            verdict,
        };
        let v = match row.verdict {
            Verdict::Pass => "PASS",
            Verdict::Miss => "MISS",
            Verdict::Info => "",
        };
        eprintln!("bench: {}: {} {} {v}", row.figure, row.value, row.target);
        self.rows.push(row);
    }

    fn print(&self) {
        let head = ["figure", "value", "target", "verdict"];
        let cells: Vec<[&str; 4]> = self
            .rows
            .iter()
            .map(|r| {
                let v = match r.verdict {
                    Verdict::Pass => "PASS",
                    Verdict::Miss => "MISS",
                    Verdict::Info => "",
                };
                [r.figure.as_str(), r.value.as_str(), r.target.as_str(), v]
            })
            .collect();
        let mut width = head.map(str::len);
        for row in &cells {
            for (w, c) in width.iter_mut().zip(row) {
                *w = (*w).max(c.chars().count());
            }
        }
        let line = |row: &[&str; 4]| {
            let mut out = String::from("|");
            for (c, w) in row.iter().zip(width) {
                let pad = w.saturating_sub(c.chars().count());
                let _ = write!(out, " {c}{} |", " ".repeat(pad));
            }
            out
        };
        println!("{}", line(&head));
        let mut sep = String::from("|");
        for w in width {
            let _ = write!(sep, "{}|", "-".repeat(w + 2));
        }
        println!("{sep}");
        for row in &cells {
            println!("{}", line(row));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Small helpers.

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted
        .get(idx.min(sorted.len() - 1))
        .copied()
        .unwrap_or_default()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

struct Lat {
    p50: Duration,
    p99: Duration,
    max: Duration,
    n: usize,
}

fn lat(mut v: Vec<Duration>) -> Lat {
    v.sort();
    Lat {
        p50: percentile(&v, 0.50),
        p99: percentile(&v, 0.99),
        max: v.last().copied().unwrap_or_default(),
        n: v.len(),
    }
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn rss_mib(pid: u32) -> R<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ctx(|| format!("read /proc/{pid}/status (has the daemon exited?)"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("no VmRSS in /proc/{pid}/status"))?;
    Ok(kib / 1024.0)
}

fn str_of(v: &Value, key: &str) -> R<String> {
    v.get(key)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| format!("no string {key:?} in {v}"))
}

// ---------------------------------------------------------------------------------------------
// SCIM over HTTP.

/// A user the bench created: SCIM id and userName.
#[derive(Clone)]
struct User {
    id: String,
    name: String,
}

#[derive(Clone)]
struct Scim {
    /// One SCIM base URL per instance, taken in turn by each request.
    bases: Arc<[String]>,
    next: Arc<AtomicUsize>,
    token: Arc<str>,
}

/// One keep-alive HTTP/1.1 connection per client (each concurrent sender has its own).
fn client() -> R<reqwest::Client> {
    reqwest::Client::builder()
        .http1_only()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(1)
        .timeout(Duration::from_secs(120))
        .build()
        .ctx(|| "build the HTTP client".into())
}

/// One answer: status, body (JSON or null), latency (send to last byte).
struct Answer {
    status: u16,
    body: Value,
    latency: Duration,
}

impl Scim {
    async fn send(
        &self,
        client: &reqwest::Client,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> R<Answer> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        let base = self
            .bases
            .get(i % self.bases.len().max(1))
            .ok_or_else(|| "no SCIM URL".to_owned())?;
        let mut req = client
            .request(method.clone(), format!("{base}{path}"))
            .bearer_auth(&*self.token);
        if let Some(body) = body {
            req = req
                .header("content-type", "application/scim+json")
                .body(body.to_string());
        }
        let t = Instant::now();
        let resp = req
            .send()
            .await
            .ctx(|| format!("{method} {path} (is the daemon running?)"))?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.ctx(|| format!("{method} {path} body"))?;
        let latency = t.elapsed();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok(Answer {
            status,
            body,
            latency,
        })
    }

    /// Send and insist on `want`.
    async fn expect(
        &self,
        client: &reqwest::Client,
        method: Method,
        path: &str,
        body: Option<&Value>,
        want: &[u16],
    ) -> R<Answer> {
        let a = self.send(client, method.clone(), path, body).await?;
        if !want.contains(&a.status) {
            return Err(format!(
                "{method} {path}: HTTP {} (wanted {want:?}): {}",
                a.status, a.body
            ));
        }
        Ok(a)
    }
}

/// What the pushes of one phase gave back.
struct Pushed {
    latencies: Vec<Duration>,
    /// The answer bodies of requests `0..keep`.
    kept: Vec<Value>,
    /// `id` from each answer body (empty when the answer had none).
    ids: Vec<String>,
    elapsed: Duration,
}

/// `count` requests from `concurrency` senders, each on its own keep-alive connection;
/// `make(i)` gives method, path, body and the accepted statuses.
async fn push<F>(scim: &Scim, concurrency: usize, count: usize, keep: usize, make: F) -> R<Pushed>
where
    F: Fn(usize) -> (Method, String, Value, &'static [u16]) + Send + Sync + 'static,
{
    let make = Arc::new(make);
    let next = Arc::new(AtomicUsize::new(0));
    let mut set = JoinSet::new();
    let start = Instant::now();
    for _ in 0..concurrency {
        let (make, next, scim) = (make.clone(), next.clone(), scim.clone());
        let client = client()?;
        set.spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return Ok::<_, String>(out);
                }
                let (method, path, body, want) = make(i);
                let a = scim
                    .expect(&client, method, &path, Some(&body), want)
                    .await?;
                let id = a
                    .body
                    .get("id")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                out.push((i, a.latency, id, (i < keep).then_some(a.body)));
            }
        });
    }
    let mut all = Vec::with_capacity(count);
    while let Some(done) = set.join_next().await {
        match done {
            Ok(Ok(part)) => all.extend(part),
            Ok(Err(e)) => return Err(e),
            Err(e) => return Err(format!("a sender failed: {e}")),
        }
    }
    let elapsed = start.elapsed();
    all.sort_by_key(|(i, ..)| *i);
    let mut p = Pushed {
        latencies: Vec::with_capacity(count),
        kept: Vec::new(),
        ids: Vec::with_capacity(count),
        elapsed,
    };
    for (_, latency, id, body) in all {
        p.latencies.push(latency);
        p.ids.push(id);
        if let Some(b) = body {
            p.kept.push(b);
        }
    }
    Ok(p)
}

/// An Okta create (Okta sends `groups: []` and a password; this load carries none, see
/// docs/benchmarks.md).
/// `BENCH_PASSWORDS` (scripts/bench turns password sync on in the daemon's config): each
/// create carries a password, as Okta's "Sync Password" or its random password on create.
static PASSWORDS: std::sync::LazyLock<Option<String>> = std::sync::LazyLock::new(|| {
    std::env::var("BENCH_PASSWORDS")
        .ok()
        .filter(|v| !v.is_empty())
});

fn user_body(name: &str, i: usize) -> Value {
    let mut body = user_body_without_password(name, i);
    if PASSWORDS.is_some() {
        if let Some(o) = body.as_object_mut() {
            o.insert("password".into(), json!(format!("Bench-{i}-pw!x")));
        }
    }
    body
}

fn user_body_without_password(name: &str, i: usize) -> Value {
    json!({
        "schemas": [USER, ENTERPRISE, IRONCLAD],
        "userName": name,
        "name": {"givenName": "Bench", "familyName": format!("User{i}")},
        "emails": [{"primary": true, "value": name, "type": "work"}],
        "displayName": format!("Bench User{i}"),
        "locale": "en-US",
        "externalId": format!("00u{}", name.split('@').next().unwrap_or(name)),
        "title": "Engineer",
        "groups": [],
        "active": true,
        ENTERPRISE: {"department": "R&D"},
        IRONCLAD: {"managementLevel": "IC"},
    })
}

/// Create `count` users named `{prefix}{i}@example.com`.
async fn create_users(
    scim: &Scim,
    concurrency: usize,
    prefix: &'static str,
    count: usize,
    keep: usize,
) -> R<(Pushed, Vec<User>)> {
    let name = move |i: usize| format!("{prefix}{i}@example.com");
    let p = push(scim, concurrency, count, keep, move |i| {
        (
            Method::POST,
            "/Users".to_owned(),
            user_body(&name(i), i),
            &[201],
        )
    })
    .await?;
    let users = p
        .ids
        .iter()
        .enumerate()
        .map(|(i, id)| User {
            id: id.clone(),
            name: name(i),
        })
        .collect();
    Ok((p, users))
}

// ---------------------------------------------------------------------------------------------
// The directory side.

#[allow(clippy::disallowed_methods)] // a client program, not the daemon: no TaskTracker here
async fn ldap_connect(env: &Env) -> R<Ldap> {
    let (conn, mut ldap) = LdapConnAsync::new(&env.ldap_uri)
        .await
        .ctx(|| format!("connect to slapd at {}", env.ldap_uri))?;
    tokio::spawn(async move {
        let _ = conn.drive().await;
    });
    ldap.simple_bind(&env.bind_dn, &env.password)
        .await
        .and_then(|r| r.success())
        .ctx(|| format!("bind to slapd as {}", env.bind_dn))?;
    Ok(ldap)
}

/// Whether the entry at `dn` exists and matches `filter`.
async fn matches(mut ldap: Ldap, dn: String, filter: &str) -> R<bool> {
    let res = ldap
        .search(&dn, Scope::Base, filter, vec!["1.1"])
        .await
        .ctx(|| format!("search {dn}"))?;
    if res.1.rc == 32 {
        return Ok(false);
    }
    let (entries, _) = res.success().ctx(|| format!("search {dn}"))?;
    Ok(!entries.is_empty())
}

/// The `uid` values of the entries below ou=People matching `filter`.
async fn people_uids(ldap: &mut Ldap, env: &Env, filter: &str) -> R<HashSet<String>> {
    let (entries, _) = ldap
        .search(&env.people(), Scope::OneLevel, filter, vec!["uid"])
        .await
        .and_then(|r| r.success())
        .ctx(|| format!("search {} for {filter}", env.people()))?;
    Ok(entries
        .into_iter()
        .flat_map(|e| {
            SearchEntry::construct(e)
                .attrs
                .into_iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case("uid"))
                .flat_map(|(_, v)| v)
        })
        .map(|v| v.to_lowercase())
        .collect())
}

/// Wait until every user in `want` is in slapd and matches `filter`: one-level scans every
/// `scan_every` until at most [`TAIL`] are missing, then base searches on just those every
/// 2 ms. Returns the elapsed time since `start` when the last one was seen, or the number still
/// missing at `timeout`.
async fn wait_people(
    ldap: &mut Ldap,
    env: &Env,
    filter: &str,
    want: &[String],
    start: Instant,
    timeout: Duration,
) -> R<Result<Duration, usize>> {
    let scan_every = Duration::from_millis(100);
    let mut missing: Vec<String> = want.iter().map(|n| n.to_lowercase()).collect();
    while missing.len() > TAIL {
        let seen = people_uids(ldap, env, filter).await?;
        missing.retain(|n| !seen.contains(n));
        if missing.is_empty() {
            return Ok(Ok(start.elapsed()));
        }
        if start.elapsed() > timeout {
            return Ok(Err(missing.len()));
        }
        if missing.len() > TAIL {
            tokio::time::sleep(scan_every).await;
        }
    }
    loop {
        let checks = missing
            .iter()
            .map(|n| matches(ldap.clone(), env.user_dn(n), filter));
        let found = futures_util::future::join_all(checks).await;
        let mut keep = Vec::new();
        for (n, f) in missing.into_iter().zip(found) {
            if !f? {
                keep.push(n);
            }
        }
        missing = keep;
        if missing.is_empty() {
            return Ok(Ok(start.elapsed()));
        }
        if start.elapsed() > timeout {
            return Ok(Err(missing.len()));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Poll `dn` with `filter` every millisecond until it matches (`want = true`) or stops
/// matching (`want = false`); the time from `from`, or `None` after `timeout`.
async fn until(
    ldap: &Ldap,
    dn: &str,
    filter: &str,
    want: bool,
    from: Instant,
    timeout: Duration,
) -> R<Option<Duration>> {
    loop {
        if matches(ldap.clone(), dn.to_owned(), filter).await? == want {
            return Ok(Some(from.elapsed()));
        }
        if from.elapsed() > timeout {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// How many `member` values the group entry at `dn` has (0 when it is not there).
async fn member_count(ldap: &mut Ldap, dn: &str) -> R<usize> {
    let res = ldap
        .search(dn, Scope::Base, "(objectClass=*)", vec!["member"])
        .await
        .ctx(|| format!("search {dn}"))?;
    if res.1.rc == 32 {
        return Ok(0);
    }
    let (entries, _) = res.success().ctx(|| format!("search {dn}"))?;
    Ok(entries
        .into_iter()
        .next()
        .map(|e| {
            SearchEntry::construct(e)
                .attrs
                .into_iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case("member"))
                .map(|(_, v)| v.len())
                .sum()
        })
        .unwrap_or(0))
}

/// `ldapadd` of `n` inetOrgPerson entries (shaped like the daemon's) into a fresh
/// `ou=Baseline` over one connection; the elapsed time.
async fn ldapadd_baseline(env: &Env, n: usize) -> R<Duration> {
    let ou = format!("ou=Baseline,{}", env.base);
    let mut ldif = format!("dn: {ou}\nobjectClass: organizationalUnit\nou: Baseline\n\n");
    for i in 0..n {
        let name = format!("raw{i}@example.com");
        let _ = write!(
            ldif,
            "dn: uid={name},{ou}\nobjectClass: top\nobjectClass: person\n\
             objectClass: organizationalPerson\nobjectClass: inetOrgPerson\nuid: {name}\n\
             cn: Bench User{i}\nsn: User{i}\ngivenName: Bench\ndisplayName: Bench User{i}\n\
             mail: {name}\ntitle: Engineer\ndepartmentNumber: R&D\nemployeeType: IC\n\n"
        );
    }
    let file = env.work.join("baseline.ldif");
    std::fs::write(&file, ldif).ctx(|| format!("write {}", file.display()))?;
    let t = Instant::now();
    let out = tokio::process::Command::new("ldapadd")
        .arg("-x")
        .arg("-H")
        .arg(&env.ldap_uri)
        .arg("-D")
        .arg(&env.bind_dn)
        .arg("-y")
        .arg(&env.password_file)
        .arg("-f")
        .arg(&file)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .output()
        .await
        .ctx(|| "run ldapadd (apt-get install ldap-utils)".into())?;
    let took = t.elapsed();
    if !out.status.success() {
        return Err(format!(
            "ldapadd failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(took)
}

/// GET /readyz on the admin listener: latency and (pending, dead letters, applied) of the
/// first target.
async fn readyz(client: &reqwest::Client, env: &Env) -> R<(Duration, u64, u64, u64)> {
    let t = Instant::now();
    let resp = client
        .get(format!("{}/readyz", env.admin))
        .send()
        .await
        .ctx(|| format!("GET {}/readyz", env.admin))?;
    let body: Value = resp.json().await.ctx(|| "readyz body".into())?;
    let took = t.elapsed();
    let target = body
        .get("targets")
        .and_then(|t| t.get(0))
        .ok_or_else(|| format!("readyz without targets: {body}"))?;
    let n = |k: &str| target.get(k).and_then(Value::as_u64).unwrap_or(0);
    Ok((took, n("pending"), n("dead_letters"), n("applied")))
}

/// Wait (at most 30 s) until /readyz says ready with a healthy first target.
async fn wait_healthy(env: &Env) -> R<()> {
    let client = client()?;
    let url = format!("{}/readyz", env.admin);
    let start = Instant::now();
    loop {
        let body: Value = match client.get(&url).send().await {
            Ok(resp) => resp.json().await.unwrap_or(Value::Null),
            Err(_) => Value::Null,
        };
        let target = body.get("targets").and_then(|t| t.get(0));
        let healthy = target
            .and_then(|t| t.get("healthy"))
            .and_then(Value::as_bool);
        if body.get("ready").and_then(Value::as_bool) == Some(true) && healthy == Some(true) {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(30) {
            return Err(format!(
                "the daemon is not ready with a healthy target after 30 s: {body}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// The run.

#[tokio::main]
async fn main() -> ExitCode {
    let env = match Env::from_env() {
        Ok(Some(env)) => env,
        Ok(None) => {
            eprintln!(
                "loadgen: nothing to do: it is driven by scripts/bench (which starts slapd and \
                 the release daemon and sets BENCH_SCIM_URL and friends)"
            );
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("loadgen: {e}");
            return ExitCode::from(2);
        }
    };
    let sizes = match Sizes::from_env() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("loadgen: {e}");
            return ExitCode::from(2);
        }
    };
    let mut table = Table::default();
    let result = run(&env, &sizes, &mut table).await;
    println!();
    table.print();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen: stopped: {e}");
            ExitCode::from(1)
        }
    }
}

async fn run(env: &Env, s: &Sizes, t: &mut Table) -> R<()> {
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    t.info(
        "machine",
        format!(
            "{cores} cores, load average {} at start{}{}",
            loadavg(),
            if s.quick { " (BENCH_QUICK)" } else { "" },
            PASSWORDS.as_ref().map_or(String::new(), |p| format!(
                "; password sync on ({p}): every create carries a password"
            ))
        ),
    );
    let scim = Scim {
        bases: env.scim.clone().into(),
        next: Arc::new(AtomicUsize::new(0)),
        token: env.token.as_str().into(),
    };
    if env.scim.len() > 1 {
        t.info(
            "instances",
            format!(
                "{} daemons on one PostgreSQL database, requests round-robin",
                env.scim.len()
            ),
        );
    }
    wait_healthy(env).await?;
    let mut ldap = ldap_connect(env).await?;
    let c = s.concurrency;
    let wait_for = |n: usize| Duration::from_secs(60 + (n / 100) as u64);

    // 1. N creates at concurrency c, then until all are in slapd.
    let n = s.users;
    let start = Instant::now();
    let (p, users) = create_users(&scim, c, "user", n, s.puts).await?;
    let push_time = p.elapsed;
    let l = lat(p.latencies);
    let rps = rate(n, push_time);
    t.check(
        format!("POST /Users x{n}, concurrency {c}: req/s"),
        format!("{rps:.0}/s ({:.2} s)", push_time.as_secs_f64()),
        ">= 3,500/s",
        rps >= 3500.0,
    );
    t.check(
        "  its latency p50 / p99 / max",
        format!("{:.1} / {:.1} / {:.1} ms", ms(l.p50), ms(l.p99), ms(l.max)),
        "p99 < 10 ms, max < 50 ms",
        l.p99 < Duration::from_millis(10) && l.max < Duration::from_millis(50),
    );
    let names: Vec<String> = users.iter().map(|u| u.name.clone()).collect();
    let visible = wait_people(
        &mut ldap,
        env,
        "(objectClass=inetOrgPerson)",
        &names,
        start,
        wait_for(n),
    )
    .await?;
    let allowed = (push_time.mul_f64(1.3)).max(Duration::from_secs_f64(n as f64 / 1400.0));
    let applied_users = match visible {
        Ok(d) => {
            t.check(
                format!("  all {n} visible in slapd (from the first POST)"),
                format!("{:.2} s", d.as_secs_f64()),
                format!(
                    "<= max(1.3 x push, N/1400) = {:.2} s",
                    allowed.as_secs_f64()
                ),
                d <= allowed,
            );
            Some(rate(n, d))
        }
        Err(missing) => {
            t.check(
                format!("  all {n} visible in slapd (from the first POST)"),
                format!(
                    "{missing} still missing after {:.0} s",
                    wait_for(n).as_secs_f64()
                ),
                format!("<= {:.2} s", allowed.as_secs_f64()),
                false,
            );
            None
        }
    };
    let rss = rss_mib(env.pid)?;
    t.check(
        "daemon RSS after the users load",
        format!("{rss:.1} MiB"),
        "< 60 MiB (at 100,000 users)",
        rss < 60.0,
    );

    // 2. The baseline: raw ldapadd of N entries over one connection.
    let raw = ldapadd_baseline(env, n).await?;
    let raw_rate = rate(n, raw);
    t.info(
        format!("raw ldapadd of {n} entries, one connection"),
        format!("{raw_rate:.0} entries/s ({:.2} s)", raw.as_secs_f64()),
    );
    if let Some(a) = applied_users {
        let share = a / raw_rate * 100.0;
        t.check(
            "  applied users/s (N / visible time)",
            format!("{a:.0}/s ({share:.0} % of raw ldapadd)"),
            ">= 1,400/s and >= 80 % of raw",
            a >= 1400.0 && share >= 80.0,
        );
    }

    // 3. M one-attribute PUTs (the server's representation with `title` changed, as Okta
    // sends after its GET).
    let m = s.puts;
    if m > 0 {
        let bodies: Arc<Vec<Value>> = Arc::new(
            p.kept
                .into_iter()
                .map(|mut b| {
                    if let Some(o) = b.as_object_mut() {
                        o.insert("title".into(), json!("Principal Engineer"));
                    }
                    b
                })
                .collect(),
        );
        let ids: Arc<Vec<String>> = Arc::new(users.iter().take(m).map(|u| u.id.clone()).collect());
        let start = Instant::now();
        let p = push(&scim, c, m, 0, move |i| {
            let id = ids.get(i).cloned().unwrap_or_default();
            let body = bodies.get(i).cloned().unwrap_or(Value::Null);
            (Method::PUT, format!("/Users/{id}"), body, &[200])
        })
        .await?;
        let l = lat(p.latencies);
        t.info(
            format!("PUT /Users x{m} (one attribute), concurrency {c}"),
            format!(
                "{:.0} req/s; p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                rate(m, p.elapsed),
                ms(l.p50),
                ms(l.p99),
                ms(l.max)
            ),
        );
        let names: Vec<String> = users.iter().take(m).map(|u| u.name.clone()).collect();
        match wait_people(
            &mut ldap,
            env,
            "(title=Principal Engineer)",
            &names,
            start,
            wait_for(m),
        )
        .await?
        {
            Ok(d) => {
                let r = rate(m, d);
                t.check(
                    "  applied modifies/s (M / visible time)",
                    format!("{r:.0}/s ({:.2} s)", d.as_secs_f64()),
                    ">= 2,500/s",
                    r >= 2500.0,
                );
            }
            Err(missing) => t.check(
                "  applied modifies/s (M / visible time)",
                format!(
                    "{missing} still missing after {:.0} s",
                    wait_for(m).as_secs_f64()
                ),
                ">= 2,500/s",
                false,
            ),
        }
    }

    // 4. A steady rate: 3 creates and 1 deactivation PATCH (of a user from step 1) in every 4
    // pushes; each timed from its answer to its visibility in slapd.
    let total = s.rate * s.steady_secs;
    let deactivations = (total / 4).min(n.saturating_sub(m));
    let mut deactivated = HashSet::new();
    let steady = {
        let period = Duration::from_secs_f64(1.0 / s.rate as f64);
        let shared = client()?;
        let mut set = JoinSet::new();
        let start = Instant::now();
        let mut next_deactivate = m; // the PUT users keep their titles; others may go
        let mut created = 0usize;
        for i in 0..total {
            tokio::time::sleep_until((start + period.mul_f64(i as f64)).into()).await;
            let (method, path, body, dn, filter, want, new_name) =
                if i % 4 == 3 && next_deactivate < m + deactivations {
                    let u = users
                        .get(next_deactivate)
                        .ok_or("internal: no user to deactivate")?;
                    next_deactivate += 1;
                    deactivated.insert(u.id.clone());
                    (
                        Method::PATCH,
                        format!("/Users/{}", u.id),
                        json!({"schemas": [PATCH],
                            "Operations": [{"op": "replace", "value": {"active": false}}]}),
                        env.user_dn(&u.name),
                        LOCKED,
                        &[200u16, 204][..],
                        None,
                    )
                } else {
                    let name = format!("steady{created}@example.com");
                    created += 1;
                    (
                        Method::POST,
                        "/Users".to_owned(),
                        user_body(&name, created),
                        env.user_dn(&name),
                        "(objectClass=*)",
                        &[201u16][..],
                        Some(name),
                    )
                };
            let (scim, client, ldap) = (scim.clone(), shared.clone(), ldap.clone());
            set.spawn(async move {
                let a = scim
                    .expect(&client, method, &path, Some(&body), want)
                    .await?;
                let answered = Instant::now();
                let created = match new_name {
                    Some(name) => Some(User {
                        id: str_of(&a.body, "id")?,
                        name,
                    }),
                    None => None,
                };
                let seen =
                    until(&ldap, &dn, filter, true, answered, Duration::from_secs(30)).await?;
                Ok::<_, String>((a.latency, seen, created))
            });
        }
        let sent = start.elapsed();
        let mut answers = Vec::new();
        let mut seen = Vec::new();
        let mut lost = 0usize;
        let mut new_users = Vec::new();
        while let Some(done) = set.join_next().await {
            let (answer, visible, created) =
                done.map_err(|e| format!("a steady push failed: {e}"))??;
            answers.push(answer);
            match visible {
                Some(d) => seen.push(d),
                None => lost += 1,
            }
            new_users.extend(created);
        }
        let a = lat(answers);
        let v = lat(seen);
        t.check(
            format!(
                "steady {}/s for {} s ({} pushes: {} creates, {} deactivations): answer -> visible p50 / p99",
                s.rate,
                s.steady_secs,
                total,
                total - deactivated.len(),
                deactivated.len()
            ),
            format!(
                "{:.1} / {:.1} ms (max {:.1} ms{}); sent at {:.0}/s, answer p99 {:.1} ms",
                ms(v.p50),
                ms(v.p99),
                ms(v.max),
                if lost > 0 {
                    format!(", {lost} not visible within 30 s")
                } else {
                    String::new()
                },
                rate(total, sent),
                ms(a.p99)
            ),
            "p99 < 50 ms",
            lost == 0 && v.n > 0 && v.p99 < Duration::from_millis(50),
        );
        new_users
    };

    // 5. A group of G members; one-member PATCH adds and removes; a PUT changing 10 members
    // (skipped with BENCH_GROUP_SIZE=0).
    let g = s.group;
    if g > 0 {
        let k = s.changes;
        let mut pool: Vec<User> = users
            .iter()
            .filter(|u| !deactivated.contains(&u.id))
            .cloned()
            .chain(steady)
            .collect();
        let need = g + k + 5;
        if pool.len() < need {
            let more = need - pool.len();
            let start = Instant::now();
            let (_, extra) = create_users(&scim, c, "member", more, 0).await?;
            let names: Vec<String> = extra.iter().map(|u| u.name.clone()).collect();
            let visible = wait_people(
                &mut ldap,
                env,
                "(objectClass=inetOrgPerson)",
                &names,
                start,
                wait_for(more),
            )
            .await?;
            if let Err(missing) = visible {
                return Err(format!(
                    "group setup: {missing} of {more} users not applied in time"
                ));
            }
            t.info(
                format!("setup: {more} more users for the group, created and applied"),
                format!("{:.1} s", start.elapsed().as_secs_f64()),
            );
            pool.extend(extra);
        }
        let (members, spare) = pool.split_at(g);
        let spare = spare.get(..k + 5).ok_or("internal: too few spare users")?;
        let member = |u: &User| json!({"value": u.id, "display": u.name});
        let conn = client()?;
        let name = "bench-group";
        let group_dn = format!("cn={name},ou=Groups,{}", env.base);
        let start = Instant::now();
        let mut chunks = members.chunks(CHUNK);
        let first: Vec<Value> = chunks
            .next()
            .unwrap_or_default()
            .iter()
            .map(member)
            .collect();
        let created = scim
            .expect(
                &conn,
                Method::POST,
                "/Groups",
                Some(&json!({"schemas": [GROUP], "displayName": name, "members": first})),
                &[201],
            )
            .await?;
        let gid = str_of(&created.body, "id")?;
        let mut requests = 1;
        for chunk in chunks {
            let value: Vec<Value> = chunk.iter().map(member).collect();
            scim.expect(
                &conn,
                Method::PATCH,
                &format!("/Groups/{gid}"),
                Some(&json!({"schemas": [PATCH],
                "Operations": [{"op": "add", "path": "members", "value": value}]})),
                &[200, 204],
            )
            .await?;
            requests += 1;
        }
        let pushed = start.elapsed();
        let deadline = wait_for(g);
        loop {
            if member_count(&mut ldap, &group_dn).await? >= g {
                break;
            }
            if start.elapsed() > deadline {
                return Err(format!(
                    "group of {g} not applied in {:.0} s",
                    deadline.as_secs_f64()
                ));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        t.info(
            format!("setup: group of {g} members ({requests} request(s) of <= {CHUNK} members)"),
            format!(
                "pushed in {:.1} s, all in slapd after {:.1} s",
                pushed.as_secs_f64(),
                start.elapsed().as_secs_f64()
            ),
        );
        let path = format!("/Groups/{gid}");
        let dn_filter = |u: &User| format!("(member={})", ldap_escape(env.user_dn(&u.name)));
        let (mut patch_lat, mut add_vis, mut remove_vis) = (Vec::new(), Vec::new(), Vec::new());
        let limit = Duration::from_secs(60);
        for u in spare.iter().take(k) {
            let body = json!({"schemas": [PATCH],
            "Operations": [{"op": "add", "path": "members", "value": [member(u)]}]});
            let a = scim
                .expect(&conn, Method::PATCH, &path, Some(&body), &[200, 204])
                .await?;
            let answered = Instant::now();
            patch_lat.push(a.latency);
            let seen = until(&ldap, &group_dn, &dn_filter(u), true, answered, limit)
                .await?
                .ok_or_else(|| format!("added member {} not in slapd after 60 s", u.name))?;
            add_vis.push(seen);
        }
        for u in spare.iter().take(k) {
            let body = json!({"schemas": [PATCH],
            "Operations": [{"op": "remove", "path": format!("members[value eq \"{}\"]", u.id)}]});
            let a = scim
                .expect(&conn, Method::PATCH, &path, Some(&body), &[200, 204])
                .await?;
            let answered = Instant::now();
            patch_lat.push(a.latency);
            let seen = until(&ldap, &group_dn, &dn_filter(u), false, answered, limit)
                .await?
                .ok_or_else(|| format!("removed member {} still in slapd after 60 s", u.name))?;
            remove_vis.push(seen);
        }
        let pl = lat(patch_lat);
        t.check(
            format!("group of {g}: PATCH add/remove of one member ({k} + {k}), p50 / p99"),
            format!("{:.1} / {:.1} ms", ms(pl.p50), ms(pl.p99)),
            "p50 < 2 ms",
            pl.p50 < Duration::from_millis(2),
        );
        let (av, rv) = (lat(add_vis), lat(remove_vis));
        t.check(
            "  answer -> visible in slapd, p50 add / p50 remove",
            format!(
                "{:.1} / {:.1} ms (max {:.1} / {:.1} ms)",
                ms(av.p50),
                ms(rv.p50),
                ms(av.max),
                ms(rv.max)
            ),
            "reconcile p50 < 10 ms",
            av.p50 < Duration::from_millis(10) && rv.p50 < Duration::from_millis(10),
        );
        // The PUT an Okta wizard app sends: the whole membership, here 5 members out, 5 in.
        let dropped = members.get(..5).ok_or("internal: group too small")?;
        let added = spare.get(k..k + 5).ok_or("internal: too few spare users")?;
        let list: Vec<Value> = members.iter().skip(5).chain(added).map(member).collect();
        let body = json!({"schemas": [GROUP], "id": gid, "displayName": name, "members": list});
        let a = scim
            .expect(&conn, Method::PUT, &path, Some(&body), &[200])
            .await?;
        let answered = Instant::now();
        let mut filter = String::from("(&");
        for u in added {
            filter.push_str(&dn_filter(u));
        }
        for u in dropped {
            let _ = write!(filter, "(!{})", dn_filter(u));
        }
        filter.push(')');
        let seen = until(&ldap, &group_dn, &filter, true, answered, limit).await?;
        t.check(
            format!("group of {g}: PUT changing 10 members: answer -> visible"),
            match seen {
                Some(d) => format!("{:.1} ms (PUT answered in {:.1} ms)", ms(d), ms(a.latency)),
                None => "not visible after 60 s".into(),
            },
            "reconcile < 200 ms",
            seen.is_some_and(|d| d < Duration::from_millis(200)),
        );
        let rss = rss_mib(env.pid)?;
        t.check(
            "daemon RSS after the group work",
            format!("{rss:.1} MiB"),
            "< 60 MiB (at 100,000 users, 500,000 memberships)",
            rss < 60.0,
        );
    }

    // 6. Store::status as /readyz pays it, at the size reached.
    let admin = client()?;
    let mut samples = Vec::new();
    let mut last = (0, 0, 0);
    for _ in 0..s.status_samples.max(1) {
        let (d, pending, dead, applied) = readyz(&admin, env).await?;
        samples.push(d);
        last = (pending, dead, applied);
    }
    let st = lat(samples);
    let (pending, dead, applied) = last;
    t.check(
        format!("GET /readyz (Store::status) at {applied} applied resources, p50"),
        format!(
            "{:.2} ms (p99 {:.2} ms, n={})",
            ms(st.p50),
            ms(st.p99),
            st.n
        ),
        "< 1 ms (at 100,000 users)",
        st.p50 < Duration::from_millis(1),
    );
    t.check(
        "dead letters / pending at the end",
        format!("{dead} / {pending}"),
        "0 / 0",
        dead == 0 && pending == 0,
    );
    claim_overhead(&admin, env, t).await?;

    // 7. Full drift repair of everything stored, as an operator runs it beside the daemon
    // (`scim-sync reconcile --full`: paged reads of the directory, every resource compared).
    if let (Ok(bin), Ok(config)) = (
        std::env::var("BENCH_DAEMON_BIN"),
        std::env::var("BENCH_CONFIG"),
    ) {
        let start = Instant::now();
        let out = tokio::process::Command::new(&bin)
            .args(["reconcile", "--full", "--config", &config])
            .output()
            .await
            .ctx(|| format!("run {bin} reconcile --full"))?;
        let took = start.elapsed();
        if !out.status.success() {
            return Err(format!(
                "reconcile --full failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        t.check(
            format!("full drift repair (reconcile --full) of {applied} applied resources"),
            format!("{:.1} s", took.as_secs_f64()),
            "< 60 s (at 100,000 users, 1,000 groups)",
            took < Duration::from_secs(60),
        );
    }
    t.info("machine", format!("load average {} at the end", loadavg()));
    Ok(())
}

/// One gauge of a Prometheus text exposition (0 when absent).
fn gauge(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once(' '))
        .find(|(k, _)| *k == name)
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The claim overhead per applied row, over every instance: claim transactions and lease
/// renewals per settled row (each a transaction of its own on PostgreSQL), and rows per claim.
async fn claim_overhead(client: &reqwest::Client, env: &Env, t: &mut Table) -> R<()> {
    let (mut claims, mut rows, mut settled, mut renewals) = (0.0, 0.0, 0.0, 0.0);
    for admin in &env.admins {
        let text = client
            .get(format!("{admin}/metrics"))
            .send()
            .await
            .ctx(|| format!("GET {admin}/metrics"))?
            .text()
            .await
            .ctx(|| format!("GET {admin}/metrics body"))?;
        claims += gauge(&text, "scim_sync_outbox_claim_transactions");
        rows += gauge(&text, "scim_sync_outbox_claimed_rows");
        settled += gauge(&text, "scim_sync_outbox_settled_rows");
        renewals += gauge(&text, "scim_sync_outbox_lease_renewals");
    }
    let per = |x: f64| if settled > 0.0 { x / settled } else { 0.0 };
    t.info(
        "claim overhead per settled row",
        format!(
            "{:.3} claim transactions, {:.3} renewals ({:.0} claims, {:.1} rows per claim, \
             {:.0} settled, over {} instance(s))",
            per(claims),
            per(renewals),
            claims,
            if claims > 0.0 { rows / claims } else { 0.0 },
            settled,
            env.admins.len()
        ),
    );
    Ok(())
}
