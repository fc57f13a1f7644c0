//! Load benchmarks that print figures (never asserted): `cargo bench --bench load`.
//!
//! - SCIM: durable creates per second at concurrency 8 on SQLite, with p50/p99 latency.
//!
//! Sizes come from the environment: `BENCH_USERS` (default 2000).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::disallowed_methods
)]

use scim_sync::daemon::Daemon;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

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

struct Running {
    daemon: Daemon,
    base: String,
    token: String,
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
        _dir: dir,
    }
}

async fn scim_creates(users: usize, concurrency: usize) {
    let r = start("").await;
    let client = reqwest::Client::new();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..concurrency {
        let (client, next, base, token) = (
            client.clone(),
            next.clone(),
            r.base.clone(),
            r.token.clone(),
        );
        handles.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= users {
                    return lat;
                }
                let body = json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                    "userName": format!("bench{i}@example.com"),
                    "name": {"givenName": "Bench", "familyName": format!("User{i}")},
                    "emails": [{"primary": true, "type": "work", "value": format!("bench{i}@example.com")}],
                    "active": true});
                let t = Instant::now();
                let resp = client
                    .post(format!("{base}/Users"))
                    .bearer_auth(&token)
                    .header("content-type", "application/scim+json")
                    .body(body.to_string())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status().as_u16(), 201);
                let _ = resp.bytes().await;
                lat.push(t.elapsed());
            }
        }));
    }
    let mut lat: Vec<Duration> = Vec::new();
    for h in handles {
        lat.extend(h.await.unwrap());
    }
    let elapsed = started.elapsed();
    lat.sort();
    println!(
        "scim creates (SQLite, synchronous=FULL, concurrency {concurrency}): {users} in {:.2}s = {:.0}/s; p50 {:.1} ms, p99 {:.1} ms",
        elapsed.as_secs_f64(),
        users as f64 / elapsed.as_secs_f64(),
        percentile(&lat, 0.50).as_secs_f64() * 1000.0,
        percentile(&lat, 0.99).as_secs_f64() * 1000.0,
    );
    r.daemon.shutdown().await;
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        scim_creates(env_usize("BENCH_USERS", 2000), 8).await;
    });
}
