//! Process tests: the real `scim-sync` binary as systemd runs it. `READY=1`, `STATUS=`,
//! `STOPPING=1` and `WATCHDOG=1` on a `NOTIFY_SOCKET` the test owns; SIGTERM during a burst of
//! pushes (exit 0, nothing answered 201 is lost); SIGHUP reloads without dropping a keep-alive
//! connection and keeps the old config when the new one is bad; `/metrics`, `/healthz`,
//! `/readyz`; exit code 2 for a bad config; `token create` / `token revoke` against a running
//! daemon. The bound ports are read from the daemon's "Started." log line (stderr), as hickory's
//! `server_harness.rs` does.

use crate::harness::pg::PgDb;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UnixDatagram};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

const BIN: &str = env!("CARGO_BIN_EXE_scim-sync");
/// Upper bound for anything the daemon should do "at once" (start, stop, reload) on a busy CI
/// machine; a test fails, never hangs, past it.
const PATIENCE: Duration = Duration::from_secs(60);

/// A config on SQLite in `dir`, both listeners on free loopback ports, plus `extra` TOML.
fn sqlite_config(dir: &Path, extra: &str) -> PathBuf {
    let url = format!("sqlite://{}/state/scim-sync.db", dir.display());
    std::fs::create_dir_all(dir.join("state")).unwrap();
    write_config(dir, &url, extra)
}

fn write_config(dir: &Path, store_url: &str, extra: &str) -> PathBuf {
    let path = dir.join("scim-sync.toml");
    std::fs::write(&path, config_text(store_url, extra)).unwrap();
    path
}

fn config_text(store_url: &str, extra: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nshutdown_grace_secs = 10\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\
         [store]\nurl = \"{store_url}\"\n\
         [log]\nlevel = \"info\"\n{extra}\n"
    )
}

/// Run a one-shot CLI command; returns (exit code, stdout, stderr).
async fn cli(config: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("NOTIFY_SOCKET")
        .output()
        .await
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `token create --name NAME`: the token is the last line of stdout.
async fn create_token(config: &Path, name: &str) -> String {
    let (code, stdout, stderr) = cli(config, &["token", "create", "--name", name]).await;
    assert_eq!(code, 0, "token create failed: {stderr}");
    let token = stdout.lines().last().unwrap().trim().to_owned();
    assert!(
        token.starts_with("scim_"),
        "unexpected token line {token:?}"
    );
    token
}

/// A running `scim-sync serve` child with its stderr collected line by line.
struct Proc {
    child: Child,
    scim: SocketAddr,
    admin: SocketAddr,
    /// Every stderr line so far.
    log: Arc<Mutex<Vec<String>>>,
    /// Stderr lines as they come.
    lines: mpsc::UnboundedReceiver<String>,
    /// The task reading stderr into `log`; [`Proc::wait`] awaits it after the exit, so `log`
    /// holds every line the daemon wrote (the exit can be seen before the last lines are read).
    reader: Option<tokio::task::JoinHandle<()>>,
}

impl Proc {
    /// Start `serve` and wait for the "Started." line; `env` is added to the child's environment.
    async fn start(config: &Path, env: &[(&str, &str)]) -> Proc {
        // systemd sets WATCHDOG_PID to the service's pid and sd_notify ignores WATCHDOG_USEC
        // without it: a shell that exports its own pid and execs the daemon keeps that pid.
        let mut cmd = if env.iter().any(|(k, _)| *k == "WATCHDOG_USEC") {
            let mut sh = Command::new("sh");
            sh.arg("-c")
                .arg("WATCHDOG_PID=$$ exec \"$0\" \"$@\"")
                .arg(BIN);
            sh
        } else {
            Command::new(BIN)
        };
        cmd.arg("--config")
            .arg(config)
            .arg("serve")
            .env_remove("RUST_LOG")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, lines) = mpsc::unbounded_channel();
        let reader = {
            let log = log.clone();
            tokio::spawn(async move {
                let mut reader = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = reader.next_line().await {
                    log.lock().unwrap().push(line.clone());
                    let _ = tx.send(line);
                }
            })
        };
        let mut proc = Proc {
            child,
            scim: "0.0.0.0:0".parse().unwrap(),
            admin: "0.0.0.0:0".parse().unwrap(),
            log,
            lines,
            reader: Some(reader),
        };
        let started = proc.wait_for_line("Started.").await;
        proc.scim = field(&started, "listen=").parse().unwrap();
        proc.admin = field(&started, "admin=Some(")
            .trim_end_matches(')')
            .parse()
            .unwrap();
        proc
    }

    fn pid(&self) -> u32 {
        self.child.id().unwrap()
    }

    /// Send a signal with kill(1) (no libc/nix in the dependencies).
    fn signal(&self, sig: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{sig} failed");
    }

    /// The next stderr line containing `needle` (earlier lines are skipped).
    async fn wait_for_line(&mut self, needle: &str) -> String {
        let found = tokio::time::timeout(PATIENCE, async {
            while let Some(line) = self.lines.recv().await {
                if line.contains(needle) {
                    return Some(line);
                }
            }
            None
        })
        .await;
        match found {
            Ok(Some(line)) => line,
            _ => panic!(
                "no log line with {needle:?}; stderr so far:\n{}",
                self.log.lock().unwrap().join("\n")
            ),
        }
    }

    async fn wait(&mut self) -> ExitStatus {
        let status = match tokio::time::timeout(PATIENCE, self.child.wait()).await {
            Ok(status) => status.unwrap(),
            Err(_) => panic!(
                "the daemon did not exit; stderr:\n{}",
                self.log.lock().unwrap().join("\n")
            ),
        };
        // The pipe closed with the exit: read it to its end before anyone looks at `log`.
        if let Some(reader) = self.reader.take() {
            tokio::time::timeout(PATIENCE, reader)
                .await
                .expect("stderr reaches its end after the exit")
                .unwrap();
        }
        status
    }

    /// SIGTERM and wait: the exit status.
    async fn stop(&mut self) -> ExitStatus {
        self.signal("TERM");
        self.wait().await
    }

    fn base(&self) -> String {
        format!("http://{}/scim/v2", self.scim)
    }

    fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
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

fn user(name: &str) -> Value {
    json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
        "userName": name,
        "name": {"givenName": "Given", "familyName": "Family"},
        "emails": [{"primary": true, "value": name, "type": "work"}],
        "active": true,
    })
}

async fn post_user(client: &reqwest::Client, base: &str, token: &str, name: &str) -> u16 {
    client
        .post(format!("{base}/Users"))
        .bearer_auth(token)
        .header("content-type", "application/scim+json")
        .body(serde_json::to_vec(&user(name)).unwrap())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Every userName the daemon holds (one page is enough for these tests).
async fn user_names(base: &str, token: &str) -> BTreeSet<String> {
    let body: Value = reqwest::Client::new()
        .get(format!("{base}/Users?count=1000"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["Resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["userName"].as_str().unwrap().to_owned())
        .collect()
}

/// The NOTIFY_SOCKET the test owns: a datagram socket bound in a temp dir.
struct Notify {
    socket: UnixDatagram,
    path: PathBuf,
    /// Every datagram so far, in order.
    seen: Vec<String>,
}

impl Notify {
    fn bind(dir: &Path) -> Notify {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        Notify {
            socket,
            path,
            seen: Vec::new(),
        }
    }

    /// The next datagram whose lines include `line` (earlier ones are kept in `seen`).
    async fn wait_for(&mut self, line: &str) -> String {
        let mut buf = vec![0u8; 4096];
        loop {
            let n = match tokio::time::timeout(PATIENCE, self.socket.recv(&mut buf)).await {
                Ok(n) => n.unwrap(),
                Err(_) => panic!("no {line:?} on NOTIFY_SOCKET; got {:?}", self.seen),
            };
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            self.seen.push(msg.clone());
            if msg.lines().any(|l| l == line) {
                return msg;
            }
        }
    }
}

/// (a) READY=1 comes once the SCIM listener accepts (the test connects the moment it arrives),
/// with a STATUS= line naming the address; WATCHDOG=1 pings when systemd asks for them; and
/// STOPPING=1 on SIGTERM, before a clean exit.
#[tokio::test]
async fn notify_ready_status_watchdog_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let config = sqlite_config(dir.path(), "");
    let mut notify = Notify::bind(dir.path());
    let socket = notify.path.to_str().unwrap().to_owned();
    // WATCHDOG_USEC=2 s: the daemon pings every second while it makes progress.
    let mut proc = Proc::start(
        &config,
        &[("NOTIFY_SOCKET", &socket), ("WATCHDOG_USEC", "2000000")],
    )
    .await;
    let ready = notify.wait_for("READY=1").await;
    // The listener accepts at once: a connection and a request succeed right after READY=1.
    let resp = reqwest::get(format!("{}/ServiceProviderConfig", proc.base()))
        .await
        .unwrap();
    assert!(
        resp.status().as_u16() == 200 || resp.status().as_u16() == 401,
        "{}",
        resp.status()
    );
    let status = ready
        .lines()
        .find_map(|l| l.strip_prefix("STATUS="))
        .unwrap_or_else(|| panic!("no STATUS= with READY=1: {ready:?}"));
    assert!(
        status.contains(&proc.scim.to_string()),
        "STATUS={status} does not name {}",
        proc.scim
    );
    assert!(
        !notify.seen[..notify.seen.len() - 1]
            .iter()
            .any(|m| m.contains("STOPPING=1")),
        "{:?}",
        notify.seen
    );
    notify.wait_for("WATCHDOG=1").await;

    proc.signal("TERM");
    notify.wait_for("STOPPING=1").await;
    let status = proc.wait().await;
    assert_eq!(status.code(), Some(0), "{status}");
    let log = proc.log.lock().unwrap().join("\n");
    assert!(log.contains("Stopped."), "{log}");
    // Human format off a terminal: no colour codes for journald.
    assert!(!log.contains('\u{1b}'), "ANSI escapes in the log:\n{log}");
}

/// (b) SIGTERM during a burst of concurrent pushes: exit 0, and every user that was answered
/// 201 is there after a restart on the same SQLite database.
#[tokio::test]
async fn sigterm_during_a_burst_loses_no_acknowledged_push() {
    let dir = tempfile::tempdir().unwrap();
    let config = sqlite_config(dir.path(), "");
    let token = create_token(&config, "burst").await;
    let mut proc = Proc::start(&config, &[]).await;
    let base = proc.base();

    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let (first_tx, mut first_rx) = mpsc::channel::<()>(64);
    let mut clients = Vec::new();
    for c in 0..6 {
        let (base, token, acked, first_tx) =
            (base.clone(), token.clone(), acked.clone(), first_tx.clone());
        clients.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            for i in 0..10_000 {
                let name = format!("burst-{c}-{i}@example.com");
                let resp = client
                    .post(format!("{base}/Users"))
                    .bearer_auth(&token)
                    .header("content-type", "application/scim+json")
                    .body(serde_json::to_vec(&user(&name)).unwrap())
                    .send()
                    .await;
                match resp {
                    Ok(r) if r.status().as_u16() == 201 => {
                        acked.lock().unwrap().insert(name);
                        let _ = first_tx.try_send(());
                    }
                    // 503 while draining is allowed; nothing else is.
                    Ok(r) => assert_eq!(r.status().as_u16(), 503, "{name}"),
                    // The listener closed: the daemon is stopping.
                    Err(_) => return,
                }
            }
        }));
    }
    drop(first_tx);
    // Let the burst get going (a few acknowledged pushes), then stop mid-stream.
    for _ in 0..12 {
        first_rx.recv().await.unwrap();
    }
    let status = proc.stop().await;
    assert_eq!(
        status.code(),
        Some(0),
        "stderr:\n{}",
        proc.log.lock().unwrap().join("\n")
    );
    for c in clients {
        tokio::time::timeout(PATIENCE, c).await.unwrap().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 12);

    let mut again = Proc::start(&config, &[]).await;
    let stored = user_names(&again.base(), &token).await;
    let lost: Vec<_> = acked.difference(&stored).collect();
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
    assert_eq!(again.stop().await.code(), Some(0));
}

/// A minimal HTTP/1.1 client on one TCP connection, so the test can prove the very same
/// connection survives a reload (reqwest's pool hides which connection it uses).
struct KeepAlive {
    stream: TcpStream,
    host: String,
    token: String,
}

impl KeepAlive {
    async fn connect(addr: SocketAddr, token: &str) -> KeepAlive {
        KeepAlive {
            stream: TcpStream::connect(addr).await.unwrap(),
            host: addr.to_string(),
            token: token.to_owned(),
        }
    }

    /// GET `path`; the status and the JSON body. Panics when the server closed the connection.
    async fn get(&mut self, path: &str) -> (u16, Value) {
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nAccept: application/scim+json\r\n\r\n",
            self.host, self.token
        );
        self.stream.write_all(req.as_bytes()).await.unwrap();
        // Headers, byte by byte up to the blank line (small responses; fine for a test).
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            let n = self.stream.read(&mut byte).await.unwrap();
            assert_eq!(n, 1, "the server closed the keep-alive connection");
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).unwrap();
        let status: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().unwrap())
            })
            .unwrap_or_else(|| panic!("no content-length in {head}"));
        assert!(
            !head.to_ascii_lowercase().contains("connection: close"),
            "{head}"
        );
        let mut body = vec![0u8; len];
        self.stream.read_exact(&mut body).await.unwrap();
        (status, serde_json::from_slice(&body).unwrap())
    }
}

/// (c) SIGHUP with a good changed config takes effect (`[scim] max_page_size` caps
/// `itemsPerPage`) on a keep-alive connection opened before the reload; a bad config (unknown
/// key) is rejected with its file, line and key logged, the old one stays and the daemon serves.
#[tokio::test]
async fn sighup_reloads_without_dropping_a_connection_and_rejects_a_bad_config() {
    let dir = tempfile::tempdir().unwrap();
    let config = sqlite_config(dir.path(), "[scim]\nmax_page_size = 3\n");
    let token = create_token(&config, "reload").await;
    let mut proc = Proc::start(&config, &[]).await;
    let client = reqwest::Client::new();
    for i in 0..4 {
        let name = format!("reload-{i}@example.com");
        assert_eq!(post_user(&client, &proc.base(), &token, &name).await, 201);
    }
    let mut conn = KeepAlive::connect(proc.scim, &token).await;
    let (status, body) = conn.get("/scim/v2/Users?count=100").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["itemsPerPage"], 3, "{body}");
    assert_eq!(body["totalResults"], 4, "{body}");

    let store_url = format!("sqlite://{}/state/scim-sync.db", dir.path().display());
    std::fs::write(
        &config,
        config_text(&store_url, "[scim]\nmax_page_size = 2\n"),
    )
    .unwrap();
    proc.signal("HUP");
    proc.wait_for_line("Reloaded the configuration.").await;
    let (status, body) = conn.get("/scim/v2/Users?count=100").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["itemsPerPage"], 2, "{body}");

    // A bad config: an unknown key. Rejected naming file, line and key; the old settings stay.
    let bad = config_text(&store_url, "[scim]\nmax_page_size = 1\nmax_page_sise = 1\n");
    let line = 1 + bad
        .lines()
        .position(|l| l.starts_with("max_page_sise"))
        .unwrap();
    std::fs::write(&config, bad).unwrap();
    proc.signal("HUP");
    let rejected = proc.wait_for_line("Reload rejected").await;
    assert!(
        rejected.contains(&format!("{}:{line}:", config.display()))
            && rejected.contains("scim.max_page_sise"),
        "{rejected}"
    );
    let (status, body) = conn.get("/scim/v2/Users?count=100").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["itemsPerPage"], 2, "{body}");
    // New connections are served too.
    let body: Value = reqwest::Client::new()
        .get(format!("{}/Users?count=100", proc.base()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["totalResults"], 4, "{body}");
    assert_eq!(body["itemsPerPage"], 2, "{body}");
    assert_eq!(proc.stop().await.code(), Some(0));
}

/// Sum of the samples of one metric in Prometheus/OpenMetrics text, checking every line's shape.
fn parse_metrics(text: &str) -> Vec<(String, String, f64)> {
    assert!(text.ends_with("# EOF\n"), "no # EOF terminator");
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(comment) = line.strip_prefix('#') {
            let mut parts = comment.split_whitespace();
            let kind = parts.next().unwrap();
            assert!(
                matches!(kind, "TYPE" | "HELP" | "UNIT" | "EOF"),
                "bad comment {line:?}"
            );
            if kind == "TYPE" {
                let name = parts.next().unwrap();
                assert!(name.starts_with("scim_sync_"), "{line}");
                let t = parts.next().unwrap();
                assert!(matches!(t, "counter" | "gauge" | "histogram"), "{line}");
            }
            continue;
        }
        // name{labels} value
        let (series, value) = line.rsplit_once(' ').unwrap();
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => {
                assert!(l.ends_with('}'), "{line}");
                (n, l.trim_end_matches('}'))
            }
            None => (series, ""),
        };
        assert!(
            name.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':'),
            "bad metric name in {line:?}"
        );
        samples.push((name.to_owned(), labels.to_owned(), value));
    }
    samples
}

fn sum(samples: &[(String, String, f64)], name: &str) -> f64 {
    samples
        .iter()
        .filter(|(n, _, _)| n == name)
        .map(|(_, _, v)| v)
        .sum()
}

/// (d) `/metrics` is Prometheus text with `# TYPE` lines, and the request counter moves.
/// (e, first half) `/healthz` and `/readyz` answer 200 on a healthy daemon.
#[tokio::test]
async fn metrics_parse_and_count_requests_health_and_readiness() {
    let dir = tempfile::tempdir().unwrap();
    let config = sqlite_config(dir.path(), "");
    let token = create_token(&config, "metrics").await;
    let mut proc = Proc::start(&config, &[]).await;
    let client = reqwest::Client::new();

    let health = client.get(proc.admin_url("/healthz")).send().await.unwrap();
    assert_eq!(health.status().as_u16(), 200);
    let ready = client.get(proc.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status().as_u16(), 200);
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready["ready"], true, "{ready}");

    let before = client.get(proc.admin_url("/metrics")).send().await.unwrap();
    assert_eq!(before.status().as_u16(), 200);
    let before = parse_metrics(&before.text().await.unwrap());
    for i in 0..3 {
        let name = format!("metrics-{i}@example.com");
        assert_eq!(post_user(&client, &proc.base(), &token, &name).await, 201);
    }
    let unauthorised = client
        .get(format!("{}/Users", proc.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorised.status().as_u16(), 401);

    let text = client
        .get(proc.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for t in [
        "# TYPE scim_sync_http_requests counter",
        "# TYPE scim_sync_http_request_duration_seconds histogram",
    ] {
        assert!(text.contains(t), "{t} missing:\n{text}");
    }
    let after = parse_metrics(&text);
    let total = "scim_sync_http_requests_total";
    assert_eq!(sum(&after, total) - sum(&before, total), 4.0, "{text}");
    let created = after
        .iter()
        .find(|(n, l, _)| {
            n == total && l.contains("method=\"POST\"") && l.contains("status=\"201\"")
        })
        .unwrap_or_else(|| panic!("no POST 201 series:\n{text}"));
    assert!(created.2 >= 3.0);
    assert!(after
        .iter()
        .any(|(n, l, _)| n == total && l.contains("status=\"401\"")));
    assert_eq!(proc.stop().await.code(), Some(0));
}

/// (e, second half) `/readyz` turns 503 once the store is gone, and the daemon keeps running.
///
/// This runs on PostgreSQL: dropping the database (`WITH (FORCE)` ends the pool's sessions)
/// makes every new connection fail, so `Store::ping` fails. On SQLite nothing short of a broken
/// disk does: the pool keeps its connections open and `SELECT 1` (the ping) never reads the
/// file. Checked by hand against the binary while writing this test: moving the state directory
/// away, `chmod 000` on it (root, as CI runs, ignores modes anyway) and deleting the database
/// file each left `/readyz` at 200.
#[tokio::test]
async fn readyz_is_503_once_the_store_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let pg = PgDb::create();
    let config = write_config(dir.path(), &pg.url, "");
    let mut proc = Proc::start(&config, &[]).await;
    let client = reqwest::Client::new();
    let ready = client.get(proc.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status().as_u16(), 200);

    drop(pg); // DROP DATABASE ... WITH (FORCE)
              // The pool notices on checkout; a new connection fails after its connect timeout.
    let ready = tokio::time::timeout(PATIENCE, client.get(proc.admin_url("/readyz")).send())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ready.status().as_u16(), 503);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["ready"], false, "{body}");
    assert_eq!(body["store"], "unreachable", "{body}");
    let health = client.get(proc.admin_url("/healthz")).send().await.unwrap();
    assert_eq!(health.status().as_u16(), 200);
    assert_eq!(proc.stop().await.code(), Some(0));
}

/// (f) A bad config: exit code 2 and a message naming the file, the line and the key, for
/// `serve` and `check-config` alike; nothing listens.
#[tokio::test]
async fn bad_config_exits_2_naming_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("scim-sync.toml");
    std::fs::write(
        &path,
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[scim]\nmax_page_size = 10\nmax_pagesize = 5\n",
    )
    .unwrap();
    for args in [&["serve"][..], &["check-config"][..]] {
        let (code, _stdout, stderr) = cli(&path, args).await;
        assert_eq!(code, 2, "{args:?}: {stderr}");
        let expected = format!("{}:6: scim.max_pagesize", path.display());
        assert!(stderr.contains(&expected), "{args:?}: {stderr}");
    }
    // A value that parses but fails validation names its key too.
    std::fs::write(&path, "[server]\nlisten = \"not an address\"\n").unwrap();
    let (code, _stdout, stderr) = cli(&path, &["serve"]).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains(&format!("{}:2: server.listen", path.display())),
        "{stderr}"
    );
    // A missing file.
    let missing = dir.path().join("missing.toml");
    let (code, _stdout, stderr) = cli(&missing, &["serve"]).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains(&missing.display().to_string()), "{stderr}");
}

/// Issue 13: `check-config` on a file with a typo in three SCIM paths refuses it (exit 2),
/// naming each key with its line and a suggestion; a file whose target has two structural
/// errors gets both, each at its own key path and line (not the `[[targets]]` header's).
#[tokio::test]
async fn check_config_refuses_unknown_scim_paths_and_reports_every_error_at_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let target = "[[targets]]\nname = \"app\"\ntype = \"sql\"\nurl = \"sqlite:///x.db\"\n\
                  [targets.users]\ntable = \"users\"\nkey_column = \"login\"\nkey = \"userName\"\n\
                  [targets.users.columns]\njob_title = \"tittle\"\nfirst_name = \"name.givenNam\"\n\
                  dept_code = \"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:departement\"\n";
    let path = sqlite_config(dir.path(), target);
    let text = std::fs::read_to_string(&path).unwrap();
    let line_of = |needle: &str| text.lines().position(|l| l.starts_with(needle)).unwrap() + 1;
    let (code, stdout, stderr) = cli(&path, &["check-config"]).await;
    assert_eq!(code, 2, "{stdout}{stderr}");
    let file = path.display();
    for (column, want) in [
        (
            "job_title",
            "unknown SCIM attribute `tittle` (User schema); did you mean `title`?",
        ),
        (
            "first_name",
            "unknown SCIM attribute `name.givenNam` (User schema); did you mean `name.givenName`?",
        ),
        (
            "dept_code",
            "did you mean `urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department`?",
        ),
    ] {
        let line = format!(
            "config error: {file}:{}: targets[0].users.columns.{column}: ",
            line_of(column)
        );
        assert!(
            stderr
                .lines()
                .any(|l| l.starts_with(&line) && l.ends_with(want)),
            "{line}...{want} in\n{stderr}"
        );
    }
    assert!(!stdout.contains("is valid"), "{stdout}");
    // Two errors inside one target, in a sub-table and in a rule table: both, in file order.
    let broken = target
        .replace("[targets.users.columns]", "[targets.users.colums]")
        .replace(
            "url = \"sqlite:///x.db\"",
            "url = \"sqlite:///x.db\"\ntimeout_secs = \"10\"",
        );
    let path = sqlite_config(dir.path(), &broken);
    let text = std::fs::read_to_string(&path).unwrap();
    let line_of = |needle: &str| text.lines().position(|l| l.starts_with(needle)).unwrap() + 1;
    let (code, _stdout, stderr) = cli(&path, &["check-config"]).await;
    assert_eq!(code, 2, "{stderr}");
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("config error:"))
        .collect();
    assert_eq!(
        errors,
        [
            format!(
                "config error: {file}:{}: targets[0].timeout_secs: invalid type: string \"10\", expected u64",
                line_of("timeout_secs")
            ),
            format!(
                "config error: {file}:{}: targets[0].users.colums: unknown field `colums`, expected one of `table`, `key_column`, `key`, `columns`, `deactivate`, `on_delete`",
                line_of("[targets.users.colums]")
            ),
        ],
        "{stderr}"
    );
}

/// (g) `token create` against the store of a running daemon gives a token that works at once;
/// `token revoke` makes it fail on the next request. PostgreSQL (SQLite:
/// `token_commands_on_sqlite_while_the_daemon_runs`).
#[tokio::test]
async fn token_create_and_revoke_against_a_running_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let pg = PgDb::create();
    let config = write_config(dir.path(), &pg.url, "");
    let mut proc = Proc::start(&config, &[]).await;
    let base = proc.base();

    let token = create_token(&config, "x").await;
    let client = reqwest::Client::new();
    let get = |t: String| {
        let (client, base) = (client.clone(), base.clone());
        async move {
            client
                .get(format!("{base}/Users"))
                .bearer_auth(t)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(get(token.clone()).await, 200);
    let (code, stdout, stderr) = cli(&config, &["token", "list"]).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains(" x "), "{stdout}");
    assert!(
        !stdout.contains(&token),
        "token list must never print a token"
    );

    let (code, _stdout, stderr) = cli(&config, &["token", "revoke", "x"]).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(get(token.clone()).await, 401);
    // Revoking again: nothing live by that name.
    let (code, _stdout, _stderr) = cli(&config, &["token", "revoke", "x"]).await;
    assert_eq!(code, 1);
    assert_eq!(proc.stop().await.code(), Some(0));
}

/// On SQLite the CLI works beside the running daemon (token create and revoke take effect at
/// once), while a second daemon on the same database refuses to start, naming the lock.
#[tokio::test]
async fn token_commands_on_sqlite_while_the_daemon_runs() {
    let dir = tempfile::tempdir().unwrap();
    let config = sqlite_config(dir.path(), "");
    let token = create_token(&config, "before").await;
    let mut proc = Proc::start(&config, &[]).await;
    assert_eq!(user_names(&proc.base(), &token).await.len(), 0);
    let during = create_token(&config, "during").await;
    let status = |t: String, base: String| async move {
        reqwest::Client::new()
            .get(format!("{base}/Users"))
            .bearer_auth(t)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    // Misses refresh the token cache at most once a second (a bad-token flood must not become
    // a query flood), so a token made while the daemon runs works within a second.
    let mut code = 0;
    for _ in 0..30 {
        code = status(during.clone(), proc.base()).await;
        if code == 200 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(code, 200);
    let (code, _stdout, stderr) = cli(&config, &["token", "revoke", "before"]).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(status(token.clone(), proc.base()).await, 401);
    let second = tokio::time::timeout(std::time::Duration::from_secs(20), cli(&config, &["serve"]))
        .await
        .expect("a second daemon on the same SQLite file must exit, not run");
    assert_eq!(second.0, 1, "{}", second.2);
    assert!(
        second.2.contains("in use by another scim-sync process"),
        "{}",
        second.2
    );
    assert_eq!(proc.stop().await.code(), Some(0));
}

/// The README's "Try the demo" runs as written: `scripts/demo` (given this build's binary and
/// an env file of the test's own), its last line `source <file>`, then the README's block in
/// a fresh shell: the `source`, the `curl` (201) and the `ldapsearch` finding the user. The
/// ldapsearch is repeated (bounded) until the entry is there: the reconciler applies a few
/// milliseconds after the SCIM answer. Stopping the demo removes its env file. Before: the
/// README's `eval "$(scripts/demo | ...)" &` waited for the demo to exit and exported into a
/// background subshell, so nothing after it had the variables.
#[tokio::test]
async fn the_readme_demo_runs_as_written() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let block = readme
        .split("Try the demo")
        .nth(1)
        .and_then(|rest| rest.split("```sh\n").nth(1))
        .and_then(|b| b.split("```").next())
        .expect("the README has a Try the demo sh block")
        .to_owned();
    assert!(
        block.starts_with("source /tmp/scim-sync-demo.env\n"),
        "{block}"
    );
    let dir = tempfile::tempdir().unwrap();
    let env_file = dir.path().join("demo.env");
    let block = block.replace("/tmp/scim-sync-demo.env", &env_file.display().to_string());
    let (before_search, search) = block
        .split_once("ldapsearch")
        .map(|(a, b)| (a.to_owned(), format!("ldapsearch{b}")))
        .expect("the block ends with an ldapsearch");

    let mut demo = Command::new(root.join("scripts/demo"))
        .env("SCIM_SYNC_BIN", BIN)
        .env("SCIM_SYNC_DEMO_ENV", &env_file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(demo.stdout.take().unwrap()).lines();
    let want = format!("source {}", env_file.display());
    let mut printed = Vec::new();
    let ready = tokio::time::timeout(PATIENCE, async {
        while let Some(line) = stdout.next_line().await.unwrap() {
            let last = line == want;
            printed.push(line);
            if last {
                return true;
            }
        }
        false
    })
    .await;
    if ready != Ok(true) {
        let mut err = String::new();
        let _ = demo.stderr.take().unwrap().read_to_string(&mut err).await;
        panic!("the demo did not print `{want}`: {printed:?}\n{err}");
    }
    assert!(
        printed.iter().any(|l| l.starts_with("SCIM_TOKEN=scim_")),
        "{printed:?}"
    );

    let run = |script: String| async move {
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!("set -e\n{script}"))
            .env_remove("SCIM_BASE_URL")
            .env_remove("SCIM_TOKEN")
            .output()
            .await
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, out, err) = run(before_search.clone()).await;
    assert!(ok, "{out}\n{err}");
    let answer: Value = serde_json::from_str(&out).unwrap_or_else(|_| panic!("{out}\n{err}"));
    assert_eq!(answer["userName"], "ada@example.com", "{answer}");
    let source = before_search.lines().next().unwrap().to_owned();
    let mut found = String::new();
    for _ in 0..100 {
        let (ok, out, err) = run(format!("{source}\n{search}")).await;
        assert!(ok, "{out}\n{err}");
        if out.contains("givenName: Ada") {
            found = out;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(found.contains("sn: Lovelace"), "{found}");

    let pid = demo.id().unwrap();
    let status = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::time::timeout(PATIENCE, demo.wait())
        .await
        .expect("the demo stops on SIGTERM")
        .unwrap();
    assert!(exit.success(), "{exit:?}");
    assert!(!env_file.exists(), "the demo leaves no env file behind");
}

/// Poll (bounded) until `f` holds; panics with `what` past [`PATIENCE`].
async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !f() {
        assert!(start.elapsed() < PATIENCE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Issue 13 item 3: a SIGHUP whose config the SQL target cannot take is rejected, the log
/// saying why, and the old config stays in force: first a column the table lacks (`nickname`,
/// beside a remapped `first_name`), then a conversion the column cannot take (text into the
/// `hired_at` timestamp). Each time a change made afterwards is written with the old mapping
/// (`first_name` from `name.givenName`), never with the new one (`first_name` from `title`).
/// Before: the reload was taken and every later change became a dead letter.
#[tokio::test]
async fn sighup_with_a_config_the_target_cannot_take_keeps_the_old_one() {
    use crate::sql_target::{Flavor, LegacyDb};
    let dir = tempfile::tempdir().unwrap();
    let legacy = LegacyDb::new(Flavor::Sqlite);
    let target = |columns: &str| {
        format!(
            "[[targets]]\nname = \"legacy\"\ntype = \"sql\"\nurl = \"{}\"\n[targets.users]\ntable = \"app_users\"\nkey_column = \"login\"\nkey = \"userName\"\n[targets.users.columns]\n{columns}",
            legacy.url
        )
    };
    let config = sqlite_config(dir.path(), &target("first_name = \"name.givenName\"\n"));
    let store_url = format!("sqlite://{}/state/scim-sync.db", dir.path().display());
    let token = create_token(&config, "reload").await;
    let mut proc = Proc::start(&config, &[]).await;
    let client = reqwest::Client::new();
    let r = client
        .post(format!("{}/Users", proc.base()))
        .bearer_auth(&token)
        .json(&user("ann"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    until("ann's row", || {
        legacy.has_user("ann") && legacy.user("ann", "first_name").as_deref() == Some("Given")
    })
    .await;

    for (n, (columns, why)) in [
        (
            "first_name = \"title\"\nnickname = \"nickName\"\n",
            "nickname",
        ),
        (
            "first_name = \"title\"\nhired_at = \"title\"\n",
            "targets[0].users.columns.hired_at",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let text = config_text(&store_url, &target(columns));
        std::fs::write(&config, &text).unwrap();
        proc.signal("HUP");
        let rejected = proc.wait_for_line("Reload rejected").await;
        assert!(rejected.contains(why), "{rejected}");
        if n == 1 {
            // At the line of the key the problem names.
            let line = 1 + text
                .lines()
                .position(|l| l.starts_with("hired_at"))
                .unwrap();
            assert!(
                rejected.contains(&format!("{}:{line}:", config.display())),
                "{rejected}"
            );
        }
        // A change after the rejected reload: written with the old mapping.
        let given = format!("Given{n}");
        let r = client
            .patch(format!("{}/Users/{id}", proc.base()))
            .bearer_auth(&token)
            .json(
                &json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                "Operations": [{"op": "replace", "path": "name.givenName", "value": given},
                               {"op": "replace", "path": "title", "value": "Boss"}]}),
            )
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.text().await.unwrap());
        until("the change under the old mapping", || {
            legacy.user("ann", "first_name").as_deref() == Some(given.as_str())
        })
        .await;
    }
    assert!(
        !proc
            .log
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("Reloaded the configuration.")),
        "a reload was taken"
    );
    assert_eq!(proc.stop().await.code(), Some(0));
}

/// Issue 13 item 6: `dead-letters list` names the resource beside its id, and `reconcile
/// --full` counts a failed resource among the checked ones ("Checked 2 resource(s): 0
/// changed, 1 failed.", where it printed "Checked 1 ... 1 failed").
#[tokio::test]
async fn dead_letters_list_names_the_resource_and_reconcile_counts_failures_as_checked() {
    use crate::sql_target::{Flavor, LegacyDb};
    let dir = tempfile::tempdir().unwrap();
    let legacy = LegacyDb::new(Flavor::Sqlite);
    let extra = format!(
        "[reconcile]\nmax_attempts = 1\n[[targets]]\nname = \"legacy\"\ntype = \"sql\"\nurl = \"{}\"\n[targets.users]\ntable = \"app_users\"\nkey_column = \"login\"\nkey = \"userName\"\n[targets.users.columns]\nemp_no = {{ from = \"externalId\", type = \"integer\" }}\n",
        legacy.url
    );
    let config = sqlite_config(dir.path(), &extra);
    let token = create_token(&config, "dl").await;
    let mut proc = Proc::start(&config, &[]).await;
    let client = reqwest::Client::new();
    for (name, ext) in [("grace@example.com", "L2"), ("alan@example.com", "7")] {
        let mut body = user(name);
        body["externalId"] = json!(ext);
        let r = client
            .post(format!("{}/Users", proc.base()))
            .bearer_auth(&token)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 201);
    }
    until("alan's row", || legacy.has_user("alan@example.com")).await;
    let mut listed = String::new();
    for _ in 0..200 {
        let (code, stdout, stderr) = cli(&config, &["dead-letters", "list"]).await;
        assert_eq!(code, 0, "{stderr}");
        if stdout.contains("grace@example.com") {
            listed = stdout;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let header = listed.lines().next().unwrap_or_default();
    assert!(header.contains(" NAME "), "{listed}");
    let row = listed
        .lines()
        .find(|l| l.contains("grace@example.com"))
        .unwrap_or_else(|| panic!("no dead letter names grace: {listed}"));
    assert!(row.contains("emp_no"), "{row}");
    let (code, stdout, _stderr) = cli(&config, &["reconcile", "--full"]).await;
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stdout.ends_with("Checked 2 resource(s): 0 changed, 1 failed.\n"),
        "{stdout}"
    );
    assert_eq!(proc.stop().await.code(), Some(0));
}
