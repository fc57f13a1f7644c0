//! Fault tests on the real `scim-sync` binary with one LDAP target over a harness slapd:
//! SIGKILL during a burst of concurrent pushes (three kill/restart cycles on the same SQLite
//! database: every change answered 2xx reaches the directory, once, with no dead letter), and
//! slapd down while pushes keep coming (the IdP is answered at once; the directory converges
//! to the store after slapd is back). Waits are bounded polls of `/readyz`, never fixed sleeps.
//! In-process tests pin the windows the kill test found (two deactivation crash windows, and a
//! group applied between two flips of a member's `active`), deterministically.
//! Owns nothing outside this file; the harness is shared.

use crate::harness::daemon::{Backend, TestDaemon};
use crate::harness::slapd::Slapd;

mod multi;
use ldap3::{Scope, SearchEntry};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_scim-sync");
/// Upper bound for anything the daemon should do "at once" and for convergence; a test fails,
/// never hangs, past it.
pub(crate) const PATIENCE: Duration = Duration::from_secs(60);
pub(crate) const CORE: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
pub(crate) const GROUP: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
pub(crate) const PATCH: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";
const PEOPLE: &str = "ou=People,dc=example,dc=com";
const GROUPS: &str = "ou=Groups,dc=example,dc=com";
const PLACEHOLDER: &str = "cn=nobody,dc=example,dc=com";
const LOCKED: &str = "000001010000Z";

/// A config on SQLite in `dir` with one LDAP target `corp` over `slapd`. Short backoff (a
/// target back up is retried within a second) and a short lease: rows a killed daemon had
/// claimed are only claimable again once their lease expires (default 120 s).
fn write_config(dir: &Path, slapd: &Slapd) -> PathBuf {
    std::fs::create_dir_all(dir.join("state")).unwrap();
    let pw = dir.join("ldap.pw");
    std::fs::write(&pw, format!("{}\n", slapd.password())).unwrap();
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nshutdown_grace_secs = 10\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n[store]\nurl = \"sqlite://{db}\"\n\
         [log]\nlevel = \"info\"\n{target}",
        db = dir.join("state/scim-sync.db").display(),
        target = target_toml(slapd, &pw),
    );
    let path = dir.join("scim-sync.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// `[reconcile]` and the `corp` target over `slapd`, its bind password in `pw`.
pub(crate) fn target_toml(slapd: &Slapd, pw: &Path) -> String {
    format!(
        r#"[reconcile]
workers = 4
poll_interval_ms = 200
max_attempts = 3
backoff_base_ms = 100
backoff_max_ms = 1000
# The default lease: claims left by the killed process are released at startup (SQLite
# instance lock held), so recovery does not wait for them to expire.
lease_secs = 120
[[targets]]
name = "corp"
type = "ldap"
url = "{url}"
bind_dn = "{bind}"
bind_password_file = "{pw}"
connect_timeout_secs = 1
timeout_secs = 2
[targets.users]
dn = "uid={{userName}},{PEOPLE}"
object_classes = ["top", "person", "organizationalPerson", "inetOrgPerson"]
[targets.users.attributes]
cn = "{{name.givenName}} {{name.familyName}}"
sn = "name.familyName"
givenName = "name.givenName"
mail = {{ from = "emails[primary eq true].value", transform = ["lower"] }}
title = "title"
[targets.users.deactivate]
policy = "disable"
set = {{ pwdAccountLockedTime = "{LOCKED}" }}
remove_from_groups = true
[targets.groups]
dn = "cn={{displayName}},{GROUPS}"
object_classes = ["groupOfNames"]
placeholder_member = "{PLACEHOLDER}"
"#,
        url = slapd.uri(),
        bind = slapd.bind_dn(),
        pw = pw.display(),
    )
}

/// `token create --name NAME` (before the daemon runs): the token is the last line of stdout.
pub(crate) async fn create_token(config: &Path, name: &str) -> String {
    let out = Command::new(BIN)
        .arg("--config")
        .arg(config)
        .args(["token", "create", "--name", name])
        .env_remove("RUST_LOG")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "token create failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout.lines().last().unwrap().trim().to_owned()
}

/// A running `scim-sync serve` child with its stderr collected.
pub(crate) struct Proc {
    child: Child,
    scim: SocketAddr,
    admin: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
    config: PathBuf,
}

impl Proc {
    /// Start `serve` and wait for the "Started." line (it names both ports).
    pub(crate) async fn start(config: &Path) -> Proc {
        let mut child = Command::new(BIN)
            .arg("--config")
            .arg(config)
            .arg("serve")
            .env_remove("RUST_LOG")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, mut lines) = mpsc::unbounded_channel::<String>();
        {
            let log = log.clone();
            tokio::spawn(async move {
                let mut reader = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = reader.next_line().await {
                    log.lock().unwrap().push(line.clone());
                    let _ = tx.send(line);
                }
            });
        }
        let started = tokio::time::timeout(PATIENCE, async {
            while let Some(line) = lines.recv().await {
                if line.contains("Started.") {
                    return Some(line);
                }
            }
            None
        })
        .await;
        let Ok(Some(started)) = started else {
            panic!(
                "the daemon did not start; stderr:\n{}",
                log.lock().unwrap().join("\n")
            );
        };
        Proc {
            child,
            scim: field(&started, "listen=").parse().unwrap(),
            admin: field(&started, "admin=Some(")
                .trim_end_matches(')')
                .parse()
                .unwrap(),
            log,
            config: config.to_owned(),
        }
    }

    pub(crate) fn base(&self) -> String {
        format!("http://{}/scim/v2", self.scim)
    }

    pub(crate) fn signal(&self, sig: &str) {
        let pid = self.child.id().unwrap();
        let ok = std::process::Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} {pid} failed");
    }

    pub(crate) async fn wait(&mut self) -> ExitStatus {
        match tokio::time::timeout(PATIENCE, self.child.wait()).await {
            Ok(status) => status.unwrap(),
            Err(_) => panic!("the daemon did not exit; stderr:\n{}", self.log_text()),
        }
    }

    pub(crate) fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// The `corp` entry of `/readyz`: (HTTP status, pending, dead letters).
    pub(crate) async fn readyz(&self) -> (u16, u64, u64) {
        let resp = reqwest::get(format!("http://{}/readyz", self.admin))
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap();
        let corp = body["targets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == "corp")
            .unwrap_or_else(|| panic!("no target corp in {body}"))
            .clone();
        (
            status,
            corp["pending"].as_u64().unwrap(),
            corp["dead_letters"].as_u64().unwrap(),
        )
    }

    /// `scim_sync_retries_total{target="corp"}` from `/metrics` (0 before the first retry).
    async fn retries(&self) -> f64 {
        let text = reqwest::get(format!("http://{}/metrics", self.admin))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .filter(|l| l.starts_with("scim_sync_retries_total{") && l.contains("\"corp\""))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum()
    }
}

/// The value after `key` in a human log line, up to the next space.
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    let start = line
        .find(key)
        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
        + key.len();
    line[start..].split_whitespace().next().unwrap()
}

/// xorshift64: deterministic "random" choices from a fixed seed.
pub(crate) struct XorShift(pub(crate) u64);

impl XorShift {
    pub(crate) fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn user_body(name: &str, title: &str, active: bool) -> Value {
    json!({
        "schemas": [CORE],
        "userName": name,
        "name": {"givenName": "Given", "familyName": format!("Family-{name}")},
        "emails": [{"primary": true, "value": format!("{name}@Example.com"), "type": "work"}],
        "title": title,
        "active": active,
    })
}

fn user_dn(name: &str) -> String {
    format!("uid={name},{PEOPLE}")
}

fn group_dn(name: &str) -> String {
    format!("cn={name},{GROUPS}")
}

/// How a request ended, as the IdP saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seen {
    /// 2xx: the change is acknowledged and must reach the directory.
    Acked,
    /// The connection broke after the request may have been sent: maybe applied, maybe not.
    InDoubt,
    /// The connection was refused: the request never reached the daemon.
    NotSent,
}

/// (title, active) of a user.
type UserState = (String, bool);

/// What the IdP knows of one user it created.
#[derive(Debug)]
struct UserModel {
    name: String,
    id: String,
    /// The states the store may hold, given which requests were acknowledged.
    possible: BTreeSet<UserState>,
    /// The state after the last request sent (the next PUT keeps its `active`).
    intended: UserState,
}

#[derive(Debug, Default)]
struct GroupModel {
    name: String,
    id: String,
    acked_members: BTreeSet<String>,
    maybe_members: BTreeSet<String>,
}

/// One client's view of its own resources (no two clients touch the same resource, so each
/// resource's requests are totally ordered).
#[derive(Debug, Default)]
struct ClientModel {
    users: Vec<UserModel>,
    groups: Vec<GroupModel>,
    /// Creates that may or may not have been stored: name -> state at creation.
    doubtful_users: BTreeMap<String, UserState>,
    doubtful_groups: BTreeSet<String>,
    /// Creates answered 201 whose body was cut off (id unknown): they must exist.
    acked_user_names: BTreeMap<String, UserState>,
    next_user: u64,
    next_group: u64,
    next_title: u64,
    /// Counts over the whole test: acknowledged, in doubt, never sent.
    acked: u64,
    in_doubt: u64,
    not_sent: u64,
    /// Anything but 2xx or a broken connection (the daemon must not answer errors here).
    unexpected: Vec<String>,
}

/// Apply a change to every possible state: replace them (acknowledged) or add to them (in
/// doubt).
fn advance(possible: &mut BTreeSet<UserState>, seen: Seen, f: impl Fn(&UserState) -> UserState) {
    let next: BTreeSet<UserState> = possible.iter().map(f).collect();
    match seen {
        Seen::Acked => *possible = next,
        Seen::InDoubt => possible.extend(next),
        Seen::NotSent => {}
    }
}

/// Send one request; 2xx gives the body (Null when empty or cut off).
async fn send(req: reqwest::RequestBuilder, what: &str, m: &mut ClientModel) -> (Seen, Value) {
    match req.send().await {
        Ok(resp) if resp.status().is_success() => {
            m.acked += 1;
            let body = resp.json::<Value>().await.unwrap_or(Value::Null);
            (Seen::Acked, body)
        }
        Ok(resp) => {
            let status = resp.status();
            let body = resp.text().await.unwrap_or_default();
            m.unexpected.push(format!("{what}: {status} {body}"));
            // An error answer stores nothing.
            (Seen::NotSent, Value::Null)
        }
        Err(e) if e.is_connect() => {
            m.not_sent += 1;
            (Seen::NotSent, Value::Null)
        }
        Err(_) => {
            m.in_doubt += 1;
            (Seen::InDoubt, Value::Null)
        }
    }
}

/// One step of client `c`'s burst: how the request ended.
async fn step(
    c: usize,
    rng: &mut XorShift,
    client: &reqwest::Client,
    base: &str,
    token: &str,
    m: &mut ClientModel,
) -> Seen {
    let scim = |r: reqwest::RequestBuilder| {
        r.bearer_auth(token)
            .header("content-type", "application/scim+json")
    };
    let roll = if m.users.len() < 2 { 0 } else { rng.below(100) };
    let seen = if roll < 30 {
        m.next_user += 1;
        let name = format!("u{c}-{}", m.next_user);
        let state = ("New".to_owned(), true);
        let req = scim(client.post(format!("{base}/Users")))
            .body(serde_json::to_vec(&user_body(&name, &state.0, state.1)).unwrap());
        let (seen, body) = send(req, &format!("POST {name}"), m).await;
        match (seen, body["id"].as_str()) {
            (Seen::Acked, Some(id)) => m.users.push(UserModel {
                name,
                id: id.to_owned(),
                possible: BTreeSet::from([state.clone()]),
                intended: state,
            }),
            (Seen::Acked, None) => {
                m.acked_user_names.insert(name, state);
            }
            (Seen::InDoubt, _) => {
                m.doubtful_users.insert(name, state);
            }
            (Seen::NotSent, _) => {}
        }
        seen
    } else if roll < 55 {
        let u = rng.below(m.users.len() as u64) as usize;
        m.next_title += 1;
        let title = format!("T{c}-{}", m.next_title);
        let user = &m.users[u];
        let state = (title, user.intended.1);
        let req = scim(client.put(format!("{base}/Users/{}", user.id)))
            .body(serde_json::to_vec(&user_body(&user.name, &state.0, state.1)).unwrap());
        let what = format!("PUT {}", user.name);
        let (seen, _) = send(req, &what, m).await;
        let user = &mut m.users[u];
        advance(&mut user.possible, seen, |_| state.clone());
        if seen != Seen::NotSent {
            user.intended = state;
        }
        seen
    } else if roll < 75 {
        let u = rng.below(m.users.len() as u64) as usize;
        let user = &m.users[u];
        let active = !user.intended.1;
        let patch = json!({"schemas": [PATCH],
            "Operations": [{"op": "replace", "value": {"active": active}}]});
        let req = scim(client.patch(format!("{base}/Users/{}", user.id)))
            .body(serde_json::to_vec(&patch).unwrap());
        let what = format!("PATCH {} active={active}", user.name);
        let (seen, _) = send(req, &what, m).await;
        let user = &mut m.users[u];
        advance(&mut user.possible, seen, |(t, _)| (t.clone(), active));
        if seen != Seen::NotSent {
            user.intended.1 = active;
        }
        seen
    } else if roll < 85 || m.groups.is_empty() {
        m.next_group += 1;
        let name = format!("g{c}-{}", m.next_group);
        let body = json!({"schemas": [GROUP], "displayName": name, "members": []});
        let req =
            scim(client.post(format!("{base}/Groups"))).body(serde_json::to_vec(&body).unwrap());
        let (seen, body) = send(req, &format!("POST group {name}"), m).await;
        match (seen, body["id"].as_str()) {
            (Seen::Acked, Some(id)) => m.groups.push(GroupModel {
                name,
                id: id.to_owned(),
                ..GroupModel::default()
            }),
            // A group answered 201 without a readable body, or maybe stored: either way
            // it may exist, empty.
            (Seen::Acked | Seen::InDoubt, _) => {
                m.doubtful_groups.insert(name);
            }
            (Seen::NotSent, _) => {}
        }
        seen
    } else {
        let g = rng.below(m.groups.len() as u64) as usize;
        let u = rng.below(m.users.len() as u64) as usize;
        let (gid, uid) = (m.groups[g].id.clone(), m.users[u].id.clone());
        let patch = json!({"schemas": [PATCH],
            "Operations": [{"op": "add", "path": "members", "value": [{"value": uid}]}]});
        let req = scim(client.patch(format!("{base}/Groups/{gid}")))
            .body(serde_json::to_vec(&patch).unwrap());
        let what = format!("PATCH group {} add {}", m.groups[g].name, m.users[u].name);
        let (seen, _) = send(req, &what, m).await;
        let group = &mut m.groups[g];
        match seen {
            Seen::Acked => {
                group.maybe_members.remove(&uid);
                group.acked_members.insert(uid);
            }
            Seen::InDoubt if !group.acked_members.contains(&uid) => {
                group.maybe_members.insert(uid);
            }
            Seen::InDoubt | Seen::NotSent => {}
        }
        seen
    };
    seen
}

/// The store as the SCIM API shows it.
#[derive(Debug, Default)]
struct StoreView {
    /// id -> (userName, title, active).
    users: BTreeMap<String, (String, String, bool)>,
    /// id -> (displayName, member ids).
    groups: BTreeMap<String, (String, BTreeSet<String>)>,
}

async fn list(base: &str, token: &str, what: &str) -> Vec<Value> {
    let body: Value = reqwest::Client::new()
        .get(format!("{base}/{what}?count=1000"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let total = body["totalResults"].as_u64().unwrap();
    let items = body["Resources"].as_array().cloned().unwrap_or_default();
    assert_eq!(total, items.len() as u64, "one page must hold every {what}");
    items
}

async fn store_view(base: &str, token: &str) -> StoreView {
    let mut view = StoreView::default();
    for u in list(base, token, "Users").await {
        let id = u["id"].as_str().unwrap().to_owned();
        let name = u["userName"].as_str().unwrap().to_owned();
        let title = u["title"].as_str().unwrap_or("").to_owned();
        let active = u["active"].as_bool().unwrap_or(true);
        view.users.insert(id, (name, title, active));
    }
    for g in list(base, token, "Groups").await {
        let id = g["id"].as_str().unwrap().to_owned();
        let name = g["displayName"].as_str().unwrap().to_owned();
        let members = g["members"]
            .as_array()
            .map(|ms| {
                ms.iter()
                    .map(|m| m["value"].as_str().unwrap().to_owned())
                    .collect()
            })
            .unwrap_or_default();
        view.groups.insert(id, (name, members));
    }
    view
}

/// A directory entry as compared here: DN (lower case) -> attribute -> sorted values (lower
/// case for DN-valued `member`).
type Dir = BTreeMap<String, BTreeMap<String, Vec<String>>>;

/// What the directory must hold below ou=People and ou=Groups for this store.
fn expected_directory(view: &StoreView) -> Dir {
    let mut dir = Dir::new();
    for (name, title, active) in view.users.values() {
        let mut attrs = BTreeMap::new();
        attrs.insert("title".to_owned(), vec![title.clone()]);
        attrs.insert(
            "mail".to_owned(),
            vec![format!("{name}@example.com").to_ascii_lowercase()],
        );
        attrs.insert("sn".to_owned(), vec![format!("Family-{name}")]);
        if !active {
            attrs.insert("pwdaccountlockedtime".to_owned(), vec![LOCKED.to_owned()]);
        }
        dir.insert(user_dn(name).to_ascii_lowercase(), attrs);
    }
    for (name, members) in view.groups.values() {
        let mut dns: Vec<String> = members
            .iter()
            .filter_map(|id| view.users.get(id))
            .filter(|(_, _, active)| *active)
            .map(|(n, _, _)| user_dn(n).to_ascii_lowercase())
            .collect();
        if dns.is_empty() {
            dns.push(PLACEHOLDER.to_owned());
        }
        dns.sort();
        let mut attrs = BTreeMap::new();
        attrs.insert("member".to_owned(), dns);
        dir.insert(group_dn(name).to_ascii_lowercase(), attrs);
    }
    dir
}

/// The directory's users and groups, restricted to the compared attributes.
async fn directory(slapd: &Slapd) -> Dir {
    let mut ldap = slapd.admin().await;
    let mut dir = Dir::new();
    for (base, wanted) in [
        (PEOPLE, &["title", "mail", "sn", "pwdaccountlockedtime"][..]),
        (GROUPS, &["member"][..]),
    ] {
        let (entries, _) = ldap
            .search(
                base,
                Scope::OneLevel,
                "(objectClass=*)",
                vec!["*", "pwdAccountLockedTime"],
            )
            .await
            .unwrap()
            .success()
            .unwrap();
        for e in entries {
            let e = SearchEntry::construct(e);
            let mut attrs = BTreeMap::new();
            for (k, mut vs) in e.attrs {
                let k = k.to_ascii_lowercase();
                if !wanted.contains(&k.as_str()) {
                    continue;
                }
                if k == "member" {
                    vs = vs.iter().map(|v| v.to_ascii_lowercase()).collect();
                }
                vs.sort();
                attrs.insert(k, vs);
            }
            dir.insert(e.dn.to_ascii_lowercase(), attrs);
        }
    }
    let _ = ldap.unbind().await;
    dir
}

/// Lines describing how two directories differ (empty when equal).
fn dir_diff(want: &Dir, have: &Dir) -> Vec<String> {
    let mut out = Vec::new();
    for (dn, attrs) in want {
        match have.get(dn) {
            None => out.push(format!("missing {dn}")),
            Some(h) if h != attrs => out.push(format!("{dn}: want {attrs:?}, have {h:?}")),
            Some(_) => {}
        }
    }
    for dn in have.keys().filter(|dn| !want.contains_key(*dn)) {
        out.push(format!("leftover {dn}"));
    }
    out
}

/// `scim-sync verify` with the test's config (it runs beside the daemon): `Err` with its
/// output unless it exits 0 (every target agrees with the store).
pub(crate) fn verify(config: &Path) -> Result<(), String> {
    let out = std::process::Command::new(BIN)
        .arg("--config")
        .arg(config)
        .arg("verify")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "scim-sync verify exited {:?}:\n{}{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Poll until nothing is pending, the directory equals the store and `scim-sync verify`
/// agrees; no dead letter may appear. Returns the store and how long it took.
async fn converge(proc: &Proc, slapd: &Slapd, token: &str) -> (StoreView, Duration) {
    let started = Instant::now();
    let mut last = Vec::new();
    while started.elapsed() < PATIENCE {
        let (status, pending, dead) = proc.readyz().await;
        assert_eq!(status, 200);
        assert_eq!(dead, 0, "dead letters; stderr:\n{}", proc.log_text());
        if pending == 0 {
            let view = store_view(&proc.base(), token).await;
            last = dir_diff(&expected_directory(&view), &directory(slapd).await);
            if last.is_empty() {
                // And the daemon's own check agrees: `scim-sync verify` exits 0.
                match verify(&proc.config) {
                    Ok(()) => return (view, started.elapsed()),
                    Err(out) => last = vec![out],
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "no convergence within {PATIENCE:?}: readyz {:?}; directory vs store:\n{}\nstderr:\n{}",
        proc.readyz().await,
        last.join("\n"),
        proc.log_text()
    );
}

/// The store holds, for every resource, a state the acknowledgements allow: each acknowledged
/// change is there (or superseded by a later change), nothing exists that no request could
/// have created, and every userName is stored once.
fn check_store_against_acks(models: &[ClientModel], view: &StoreView) {
    let mut names = BTreeSet::new();
    for (name, _, _) in view.users.values() {
        assert!(names.insert(name.clone()), "userName {name} stored twice");
    }
    let mut explained = BTreeSet::new();
    for m in models {
        for u in &m.users {
            let (name, title, active) = view
                .users
                .get(&u.id)
                .unwrap_or_else(|| panic!("acknowledged user {} ({}) lost", u.name, u.id));
            assert_eq!(name, &u.name);
            let have = (title.clone(), *active);
            assert!(
                u.possible.contains(&have),
                "{}: stored {have:?}, acknowledgements allow only {:?}",
                u.name,
                u.possible
            );
            explained.insert(u.id.clone());
        }
        for g in &m.groups {
            let (name, members) = view
                .groups
                .get(&g.id)
                .unwrap_or_else(|| panic!("acknowledged group {} ({}) lost", g.name, g.id));
            assert_eq!(name, &g.name);
            let lost: Vec<_> = g.acked_members.difference(members).collect();
            assert!(
                lost.is_empty(),
                "{}: acknowledged adds lost: {lost:?}",
                g.name
            );
            let extra: Vec<_> = members
                .iter()
                .filter(|id| !g.acked_members.contains(*id) && !g.maybe_members.contains(*id))
                .collect();
            assert!(
                extra.is_empty(),
                "{}: members never sent: {extra:?}",
                g.name
            );
            explained.insert(g.id.clone());
        }
    }
    for (id, (name, title, active)) in &view.users {
        if explained.contains(id) {
            continue;
        }
        let state = models
            .iter()
            .find_map(|m| {
                m.doubtful_users
                    .get(name)
                    .or_else(|| m.acked_user_names.get(name))
            })
            .unwrap_or_else(|| panic!("user {name} ({id}) was never pushed"));
        assert_eq!(&(title.clone(), *active), state, "{name}");
    }
    for m in models {
        for name in m.acked_user_names.keys() {
            assert!(names.contains(name), "acknowledged user {name} lost");
        }
    }
    for (id, (name, members)) in &view.groups {
        if explained.contains(id) {
            continue;
        }
        assert!(
            models.iter().any(|m| m.doubtful_groups.contains(name)),
            "group {name} ({id}) was never pushed"
        );
        assert!(members.is_empty(), "{name}: members never sent");
    }
}

/// After a kill, from the store the daemon left: (create intents whose entry is already in
/// the directory, i.e. killed between the LDAP add and the store's commit; intents whose add
/// had not happened).
async fn interrupted_creates(config: &Path, slapd: &Slapd) -> (usize, usize) {
    let settings = scim_sync::daemon::load_settings(config).unwrap();
    let store = scim_sync::store::Store::open(&settings.store, settings.target_names())
        .await
        .unwrap();
    let states = store.target_states("corp").await.unwrap();
    drop(store);
    let (mut added, mut not_added) = (0, 0);
    for s in states.iter().filter(|s| s.target_key.is_none()) {
        let Some(dn) = s.extra.as_ref().and_then(|e| e.creating.as_deref()) else {
            continue;
        };
        if slapd.entry(dn, &["objectClass"]).await.is_some() {
            added += 1;
        } else {
            not_added += 1;
        }
    }
    (added, not_added)
}

/// SIGKILL three times during a burst of mixed pushes from 6 clients, each cycle continuing the
/// burst on the restarted daemon; then every acknowledged change is in the directory, once.
#[tokio::test]
async fn sigkill_during_a_burst_loses_no_acknowledged_change() {
    const CLIENTS: usize = 6;
    const CYCLES: usize = 3;
    let slapd = Slapd::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &slapd);
    let token = create_token(&config, "burst").await;
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let mut models: Vec<ClientModel> = (0..CLIENTS).map(|_| ClientModel::default()).collect();
    let mut rngs: Vec<XorShift> = (0..CLIENTS)
        .map(|c| XorShift(0x2545_F491_4F6C_DD1D ^ ((c as u64 + 1) << 32)))
        .collect();
    let mut figures = Vec::new();
    let mut logs = Vec::new();

    let mut proc = Proc::start(&config).await;
    for cycle in 0..CYCLES {
        // Kill once this many pushes were acknowledged in the cycle (seeded, 40..120).
        let kill_after = 40 + rng.below(80);
        let acked_now = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (hit_tx, mut hit_rx) = mpsc::channel::<()>(1);
        let before: u64 = models.iter().map(|m| m.acked).sum();
        let doubt_before: u64 = models.iter().map(|m| m.in_doubt).sum();
        let mut clients = Vec::new();
        for (c, (mut m, mut r)) in std::mem::take(&mut models)
            .into_iter()
            .zip(std::mem::take(&mut rngs))
            .enumerate()
        {
            let (base, token, acked_now, hit_tx) = (
                proc.base(),
                token.clone(),
                acked_now.clone(),
                hit_tx.clone(),
            );
            clients.push(tokio::spawn(async move {
                let client = reqwest::Client::builder()
                    .timeout(Duration::from_secs(20))
                    .build()
                    .unwrap();
                // Bounded: the daemon is killed long before. A broken or refused connection
                // means the daemon is gone: this client's part of the cycle ends.
                for _ in 0..100_000 {
                    if step(c, &mut r, &client, &base, &token, &mut m).await != Seen::Acked {
                        break;
                    }
                    let n = acked_now.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                    if n == kill_after {
                        let _ = hit_tx.try_send(());
                    }
                }
                (m, r)
            }));
        }
        drop(hit_tx);
        tokio::time::timeout(PATIENCE, hit_rx.recv())
            .await
            .unwrap_or_else(|_| panic!("cycle {cycle}: burst stalled:\n{}", proc.log_text()))
            .unwrap();
        proc.signal("KILL");
        let status = proc.wait().await;
        assert_eq!(status.code(), None, "killed by a signal: {status}");
        for c in clients {
            let (m, r) = tokio::time::timeout(PATIENCE, c).await.unwrap().unwrap();
            models.push(m);
            rngs.push(r);
        }
        let unexpected: Vec<&String> = models.iter().flat_map(|m| &m.unexpected).collect();
        assert!(unexpected.is_empty(), "non-2xx answers: {unexpected:?}");
        logs.push(proc.log_text());
        let (added, not_added) = interrupted_creates(&config, &slapd).await;
        let acked: u64 = models.iter().map(|m| m.acked).sum::<u64>() - before;
        let doubt: u64 = models.iter().map(|m| m.in_doubt).sum::<u64>() - doubt_before;
        figures.push(format!(
            "cycle {cycle}: {acked} acknowledged, {doubt} in doubt at the kill, \
             {added} entries added but not recorded, {not_added} create intents not yet added"
        ));
        proc = Proc::start(&config).await;
    }
    let (view, took) = converge(&proc, &slapd, &token).await;
    check_store_against_acks(&models, &view);
    let all_logs = format!("{}\n{}", logs.join("\n"), proc.log_text());
    assert!(
        !all_logs.contains("not managed") && !all_logs.contains("dead letter"),
        "{all_logs}"
    );
    let resumed = "converged after the last restart";
    eprintln!(
        "{}\n{resumed} in {took:?}: {} users, {} groups",
        figures.join("\n"),
        view.users.len(),
        view.groups.len()
    );
    proc.signal("TERM");
    assert_eq!(proc.wait().await.code(), Some(0));
}

/// slapd stopped while 50 pushes come in: each is answered 2xx within a second, `/readyz`
/// stays 200 with the changes pending and no dead letter after retries; slapd back (same port
/// and data): the directory converges to the store.
#[tokio::test]
async fn ldap_outage_during_pushes_converges() {
    let mut slapd = Slapd::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &slapd);
    let token = create_token(&config, "outage").await;
    let mut proc = Proc::start(&config).await;
    let base = proc.base();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let push = |method: reqwest::Method, path: String, body: Value| {
        let (client, base, token) = (client.clone(), base.clone(), token.clone());
        async move {
            let started = Instant::now();
            let resp = client
                .request(method.clone(), format!("{base}{path}"))
                .bearer_auth(&token)
                .header("content-type", "application/scim+json")
                .body(serde_json::to_vec(&body).unwrap())
                .send()
                .await
                .unwrap();
            let took = started.elapsed();
            let status = resp.status();
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            assert!(status.is_success(), "{method} {path}: {status} {body}");
            (body, took)
        }
    };
    // What the store must end with: id -> (userName, title, active).
    let mut want: BTreeMap<String, (String, String, bool)> = BTreeMap::new();
    let mut ids = Vec::new();
    for i in 0..10 {
        let name = format!("base{i}");
        let (body, _) = push(
            reqwest::Method::POST,
            "/Users".into(),
            user_body(&name, "Before", true),
        )
        .await;
        let id = body["id"].as_str().unwrap().to_owned();
        want.insert(id.clone(), (name, "Before".into(), true));
        ids.push(id);
    }
    let members: Vec<Value> = ids[..3].iter().map(|id| json!({"value": id})).collect();
    let (staff, _) = push(
        reqwest::Method::POST,
        "/Groups".into(),
        json!({"schemas": [GROUP], "displayName": "staff", "members": members}),
    )
    .await;
    let staff = staff["id"].as_str().unwrap().to_owned();
    converge(&proc, &slapd, &token).await;

    slapd.stop().await;
    let mut slowest = Duration::ZERO;
    let mut pushes = 0;
    // 15 creates, 15 title changes, 10 (de)activations, 5 new groups, 5 membership adds.
    for i in 0..15 {
        let name = format!("new{i}");
        let (body, took) = push(
            reqwest::Method::POST,
            "/Users".into(),
            user_body(&name, "Hired", true),
        )
        .await;
        slowest = slowest.max(took);
        pushes += 1;
        let id = body["id"].as_str().unwrap().to_owned();
        want.insert(id.clone(), (name, "Hired".into(), true));
        ids.push(id);
    }
    for i in 0..15 {
        let id = ids[(i * 7) % ids.len()].clone();
        let (name, _, active) = want[&id].clone();
        let title = format!("During {i}");
        let (_, took) = push(
            reqwest::Method::PUT,
            format!("/Users/{id}"),
            user_body(&name, &title, active),
        )
        .await;
        slowest = slowest.max(took);
        pushes += 1;
        want.insert(id, (name, title, active));
    }
    for i in 0..10 {
        // Some users twice: off, then on again.
        let id = ids[(i * 3) % 15].clone();
        let active = !want[&id].2;
        let (_, took) = push(
            reqwest::Method::PATCH,
            format!("/Users/{id}"),
            json!({"schemas": [PATCH], "Operations": [{"op": "replace", "value": {"active": active}}]}),
        )
        .await;
        slowest = slowest.max(took);
        pushes += 1;
        want.get_mut(&id).unwrap().2 = active;
    }
    let mut want_groups: BTreeMap<String, (String, BTreeSet<String>)> = BTreeMap::new();
    want_groups.insert(
        staff.clone(),
        ("staff".into(), ids[..3].iter().cloned().collect()),
    );
    for i in 0..5 {
        let name = format!("team{i}");
        let member = ids[10 + i].clone();
        let (body, took) = push(
            reqwest::Method::POST,
            "/Groups".into(),
            json!({"schemas": [GROUP], "displayName": name, "members": [{"value": member}]}),
        )
        .await;
        slowest = slowest.max(took);
        pushes += 1;
        let id = body["id"].as_str().unwrap().to_owned();
        want_groups.insert(id, (name, BTreeSet::from([member])));
    }
    for i in 0..5 {
        let member = ids[3 + i * 2].clone();
        let (_, took) = push(
            reqwest::Method::PATCH,
            format!("/Groups/{staff}"),
            json!({"schemas": [PATCH], "Operations": [{"op": "add", "path": "members", "value": [{"value": member}]}]}),
        )
        .await;
        slowest = slowest.max(took);
        pushes += 1;
        want_groups.get_mut(&staff).unwrap().1.insert(member);
    }
    assert_eq!(pushes, 50);
    assert!(
        slowest < Duration::from_secs(1),
        "a push waited for LDAP: {slowest:?}"
    );

    // The workers keep failing (transiently) and retrying: wait for a few rounds of retries
    // per pending row, then nothing may be dead and everything is still pending.
    let (status, pending, dead) = proc.readyz().await;
    assert_eq!((status, dead), (200, 0));
    assert!(pending > 0);
    let started = Instant::now();
    loop {
        let retries = proc.retries().await;
        if retries >= (pending * 4) as f64 {
            break;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "only {retries} retries; stderr:\n{}",
            proc.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, pending_after, dead) = proc.readyz().await;
    assert_eq!((status, dead), (200, 0), "stderr:\n{}", proc.log_text());
    assert_eq!(
        pending_after, pending,
        "nothing can apply while slapd is down"
    );

    slapd.start_again().await;
    let (view, took) = converge(&proc, &slapd, &token).await;
    assert_eq!(view.users, want);
    assert_eq!(view.groups, want_groups);
    eprintln!(
        "outage: 50 pushes, slowest answer {slowest:?}, {pending} pending during the outage, \
         converged {took:?} after slapd came back"
    );
    proc.signal("TERM");
    assert_eq!(proc.wait().await.code(), Some(0));
}

/// The crash window of a deactivation, made deterministic: the disable values reached the
/// directory but the settle that records them did not (the daemon died), and the user is
/// reactivated. The note taken before the deactivation's apply lets the reactivation remove
/// them; the same values on a user never noted as deactivating (an administrator's lock) stay.
#[tokio::test]
async fn reactivation_after_an_interrupted_deactivation_unlocks() {
    let slapd = Slapd::start().await;
    let secrets = tempfile::tempdir().unwrap();
    let pw = secrets.path().join("ldap.pw");
    std::fs::write(&pw, format!("{}\n", slapd.password())).unwrap();
    let t = TestDaemon::start_with(Backend::Sqlite, &target_toml(&slapd, &pw)).await;
    let mut ids = Vec::new();
    for name in ["crashed", "admin-locked"] {
        let r = t.post("/Users", &user_body(name, "X", true)).await;
        assert_eq!(r.status.as_u16(), 201, "{}", r.body);
        ids.push(r.body["id"].as_str().unwrap().to_owned());
    }
    t.d().run_pending_reconciles().await;
    let store = &t.d().store;
    let paused = t.d().pause_reconcilers().await.unwrap();
    // What an apply killed after its LDAP write leaves: the note, the values, no record.
    store
        .note_target_extra("corp", &ids[0], |e| e.deactivating = Some(true))
        .await
        .unwrap();
    let mut ldap = slapd.admin().await;
    for name in ["crashed", "admin-locked"] {
        ldap.modify(
            &user_dn(name),
            vec![ldap3::Mod::Replace("pwdAccountLockedTime", [LOCKED].into())],
        )
        .await
        .unwrap()
        .success()
        .unwrap();
    }
    for (i, name) in ["crashed", "admin-locked"].iter().enumerate() {
        let r = t
            .put(
                &format!("/Users/{}", ids[i]),
                &user_body(name, "Back", true),
            )
            .await;
        assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    }
    drop(paused);
    t.d().run_pending_reconciles().await;
    let locked = |name: &'static str| {
        let slapd = &slapd;
        async move {
            let e = slapd
                .entry(&user_dn(name), &["title", "pwdAccountLockedTime"])
                .await
                .unwrap();
            let get = |a: &str| e.iter().find(|(k, _)| k == a).map(|(_, v)| v.clone());
            assert_eq!(get("title"), Some(vec!["Back".to_owned()]), "{name}");
            get("pwdaccountlockedtime").is_some()
        }
    };
    assert!(
        !locked("crashed").await,
        "the interrupted deactivation stuck"
    );
    assert!(
        locked("admin-locked").await,
        "an administrator's lock was removed"
    );
    // verify agrees with the store (the administrator's lock is not a mapped difference).
    let report = t.d().verify(None, |_, _| {}).await;
    assert!(report.clean(), "{report:?}");
    let state = store.target_state("corp", &ids[0]).await.unwrap().unwrap();
    assert_eq!(
        state.extra.as_ref().and_then(|e| e.deactivating),
        None,
        "the settle drops the note"
    );
    assert!(store.dead_letters(None).await.unwrap().is_empty());
}

/// The crash window of a create of an inactive user: the entry was added with the disable
/// values, the settle never came, and the user is active again when the apply resumes the
/// entry. The values the interrupted create set are removed.
#[tokio::test]
async fn resuming_an_interrupted_inactive_create_unlocks_a_reactivated_user() {
    let mut slapd = Slapd::start().await;
    let secrets = tempfile::tempdir().unwrap();
    let pw = secrets.path().join("ldap.pw");
    std::fs::write(&pw, format!("{}\n", slapd.password())).unwrap();
    let t = TestDaemon::start_with(Backend::Sqlite, &target_toml(&slapd, &pw)).await;
    // A first attempt records the intent and fails (the directory is down).
    slapd.stop().await;
    let paused = t.d().pause_reconcilers().await.unwrap();
    let r = t.post("/Users", &user_body("phoenix", "Risen", true)).await;
    assert_eq!(r.status.as_u16(), 201, "{}", r.body);
    drop(paused);
    assert_eq!(t.d().run_pending_reconciles().await, 0);
    // Paused before the directory is back: a worker's retry must not create the entry before
    // the hand-made add below (it would answer 68 there).
    let paused = t.d().pause_reconcilers().await.unwrap();
    slapd.start_again().await;
    // The add of a later attempt, for the earlier inactive version, reached the directory as
    // our bind DN (after the intent), and its settle never did.
    let mut ldap = slapd.admin().await;
    ldap.add(
        &user_dn("phoenix"),
        vec![
            ("objectClass", ["inetOrgPerson"].into()),
            ("uid", ["phoenix"].into()),
            ("cn", ["Given Family-phoenix"].into()),
            ("sn", ["Family-phoenix"].into()),
            ("pwdAccountLockedTime", [LOCKED].into()),
        ],
    )
    .await
    .unwrap()
    .success()
    .unwrap();
    drop(paused);
    t.d().run_pending_reconciles().await;
    let e = slapd
        .entry(&user_dn("phoenix"), &["title", "pwdAccountLockedTime"])
        .await
        .unwrap();
    assert!(
        !e.iter().any(|(k, _)| k == "pwdaccountlockedtime"),
        "still locked: {e:?}"
    );
    assert!(
        e.contains(&("title".to_owned(), vec!["Risen".to_owned()])),
        "{e:?}"
    );
    assert!(t.d().store.dead_letters(None).await.unwrap().is_empty());
    let report = t.d().verify(None, |_, _| {}).await;
    assert!(report.clean(), "{report:?}");
}

/// Wall-clock ms, as the workers' clock reads it.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// The `member` values of a group entry, lower case and sorted.
async fn members_of(slapd: &Slapd, group: &str) -> Vec<String> {
    let e = slapd.entry(&group_dn(group), &["member"]).await.unwrap();
    let mut v: Vec<String> = e
        .into_iter()
        .find(|(k, _)| k == "member")
        .map(|(_, v)| v)
        .unwrap_or_default()
        .iter()
        .map(|m| m.to_ascii_lowercase())
        .collect();
    v.sort();
    v
}

/// Issue 8 item 3, the window behind the kill test's `want {"member": [nobody]}, have
/// {"member": [uid=u4-7]}` with nothing pending, made deterministic. A group renders its
/// members' `active` from the store as it is *now*, but was only re-queued when a member's
/// *applied* `active` flipped. Member u: applied inactive (v2); PATCHed active (v3) while its
/// row is held (a busy worker, or the backlog after a restart); the group is applied for any
/// reason and puts u back (u is active in the store); PATCHed inactive again (v4) before its
/// row runs; its apply then renders v4 with v3 never applied: inactive before, inactive now, no
/// flip, the group is never queued again and keeps u for good.
#[tokio::test]
async fn a_group_applied_between_two_activity_flips_of_a_member_drops_it_in_the_end() {
    let slapd = Slapd::start().await;
    let secrets = tempfile::tempdir().unwrap();
    let pw = secrets.path().join("ldap.pw");
    std::fs::write(&pw, format!("{}\n", slapd.password())).unwrap();
    let t = TestDaemon::start_with(Backend::Sqlite, &target_toml(&slapd, &pw)).await;
    let store = &t.d().store;
    let r = t.post("/Users", &user_body("flip", "X", true)).await;
    assert_eq!(r.status.as_u16(), 201, "{}", r.body);
    let user = r.body["id"].as_str().unwrap().to_owned();
    let group = json!({"schemas": [GROUP], "displayName": "flips", "members": [{"value": user}]});
    let r = t.post("/Groups", &group).await;
    assert_eq!(r.status.as_u16(), 201, "{}", r.body);
    let group = r.body["id"].as_str().unwrap().to_owned();
    let set_active = |active: bool| {
        let (t, user) = (&t, user.clone());
        async move {
            let patch = json!({"schemas": [PATCH],
                "Operations": [{"op": "replace", "value": {"active": active}}]});
            let r = t.patch(&format!("/Users/{user}"), &patch).await;
            assert_eq!(r.status.as_u16(), 200, "{}", r.body);
        }
    };
    t.d().run_pending_reconciles().await;
    assert_eq!(
        members_of(&slapd, "flips").await,
        [user_dn("flip").to_ascii_lowercase()]
    );
    // v2, applied: the user's apply sees the flip and the group drops it.
    set_active(false).await;
    t.d().run_pending_reconciles().await;
    assert_eq!(members_of(&slapd, "flips").await, [PLACEHOLDER]);

    // v3 while the user's row is held by a claim of ours (as a busy worker holds it).
    let paused = t.d().pause_reconcilers().await.unwrap();
    set_active(true).await;
    let mut held = store.claim("corp", now_ms(), 600_000, 16).await.unwrap();
    // Keep only the user's row (a fixed daemon also queued the group with the PATCH).
    for item in held.iter().filter(|i| i.resource_id != user) {
        store
            .settle_failed(item, "not held", now_ms(), false, now_ms())
            .await
            .unwrap();
    }
    held.retain(|i| i.resource_id == user);
    assert_eq!(held.len(), 1, "the user's row is due");
    // The group is applied meanwhile (any other reason to queue it would do): u is active.
    store
        .enqueue(
            "corp",
            scim_sync::scim::resource::ResourceType::Group,
            &group,
            "resync",
            now_ms(),
        )
        .await
        .unwrap();
    drop(paused);
    t.d().run_pending_reconciles().await;
    assert_eq!(
        members_of(&slapd, "flips").await,
        [user_dn("flip").to_ascii_lowercase()]
    );
    // v4 before the user's row runs; then it is released and runs (rendering v4).
    set_active(false).await;
    for item in &held {
        store
            .settle_failed(item, "held by the test", now_ms(), false, now_ms())
            .await
            .unwrap();
    }
    t.d().run_pending_reconciles().await;
    let status = store.status(&["corp".to_owned()]).await.unwrap().remove(0);
    assert_eq!((status.pending, status.dead), (0, 0));
    assert_eq!(
        members_of(&slapd, "flips").await,
        [PLACEHOLDER],
        "nothing is pending and the group keeps a member the store deactivated"
    );
}
