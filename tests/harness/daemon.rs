//! `TestDaemon`: the real daemon (same `Daemon::start` as the binary) on port 0, with a fresh
//! token, and a reqwest client speaking to it over a real socket.

use super::pg::PgDb;
use reqwest::{Method, StatusCode};
use scim_sync::daemon::Daemon;
use serde_json::Value;

/// Which store backs the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Both backends, for tests that must pass on each.
pub const BACKENDS: [Backend; 2] = [Backend::Sqlite, Backend::Postgres];

/// A running daemon for one test.
pub struct TestDaemon {
    pub daemon: Option<Daemon>,
    pub base: String,
    pub token: String,
    pub client: reqwest::Client,
    pub dir: tempfile::TempDir,
    pub config_path: std::path::PathBuf,
    pub pg: Option<PgDb>,
    pub store_url: String,
}

/// A response: status, parsed JSON body (Null when empty), headers.
pub struct Resp {
    pub status: StatusCode,
    pub body: Value,
    pub headers: reqwest::header::HeaderMap,
}

impl TestDaemon {
    /// SQLite, default settings.
    pub async fn start() -> TestDaemon {
        Self::start_with(Backend::Sqlite, "").await
    }

    /// Start with extra TOML appended to the generated config (sections must not repeat the
    /// generated `[server]`, `[admin]`, `[store]` ones; use `[scim]`, `[reconcile]`, `[[targets]]`).
    pub async fn start_with(backend: Backend, extra_toml: &str) -> TestDaemon {
        Self::start_full(backend, "", extra_toml).await
    }

    /// As [`TestDaemon::start_with`], with extra keys for the generated `[server]` section.
    pub async fn start_full(backend: Backend, server_toml: &str, extra_toml: &str) -> TestDaemon {
        let dir = tempfile::tempdir().unwrap();
        let (pg, store_url) = match backend {
            Backend::Sqlite => (None, format!("sqlite://{}/state.db", dir.path().display())),
            Backend::Postgres => {
                let db = PgDb::create();
                let url = db.url.clone();
                (Some(db), url)
            }
        };
        let config = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nshutdown_grace_secs = 5\n{server_toml}\n[admin]\nlisten = \"127.0.0.1:0\"\n[store]\nurl = \"{store_url}\"\n{extra_toml}\n"
        );
        let config_path = dir.path().join("scim-sync.toml");
        std::fs::write(&config_path, &config).unwrap();
        let settings = scim_sync::daemon::load_settings(&config_path)
            .unwrap_or_else(|e| panic!("test config invalid: {e:?}\n{config}"));
        let daemon = Daemon::start(settings, Some(config_path.clone()))
            .await
            .unwrap();
        let token = scim_sync::http::auth::generate_token();
        daemon
            .store
            .create_token("test", scim_sync::http::auth::digest(&token), 0)
            .await
            .unwrap();
        let base = format!("http://{}/scim/v2", daemon.scim_addr);
        TestDaemon {
            daemon: Some(daemon),
            base,
            token,
            client: reqwest::Client::new(),
            dir,
            config_path,
            pg,
            store_url,
        }
    }

    pub fn d(&self) -> &Daemon {
        self.daemon.as_ref().unwrap()
    }

    /// An authenticated request with an optional JSON body (`application/scim+json`).
    pub async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> Resp {
        let mut req = self
            .client
            .request(method, format!("{}{}", self.base, path))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req
                .header("content-type", "application/scim+json; charset=utf-8")
                .body(serde_json::to_vec(b).unwrap());
        }
        Self::finish(req.send().await.unwrap()).await
    }

    /// Turn a reqwest response into a [`Resp`].
    pub async fn finish(resp: reqwest::Response) -> Resp {
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                panic!(
                    "non-JSON body with {status}: {}",
                    String::from_utf8_lossy(&bytes)
                )
            })
        };
        Resp {
            status,
            body,
            headers,
        }
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.call(Method::GET, path, None).await
    }
    pub async fn post(&self, path: &str, body: &Value) -> Resp {
        self.call(Method::POST, path, Some(body)).await
    }
    pub async fn put(&self, path: &str, body: &Value) -> Resp {
        self.call(Method::PUT, path, Some(body)).await
    }
    pub async fn patch(&self, path: &str, body: &Value) -> Resp {
        self.call(Method::PATCH, path, Some(body)).await
    }
    pub async fn delete(&self, path: &str) -> Resp {
        self.call(Method::DELETE, path, None).await
    }

    /// Stop the daemon cleanly.
    pub async fn stop(&mut self) {
        if let Some(d) = self.daemon.take() {
            d.shutdown().await;
        }
    }
}

/// Assert a SCIM error body with the given status (and scimType when given).
pub fn assert_scim_error(r: &Resp, status: u16, scim_type: Option<&str>) {
    assert_eq!(r.status.as_u16(), status, "body: {}", r.body);
    assert_eq!(
        r.body["schemas"][0], "urn:ietf:params:scim:api:messages:2.0:Error",
        "body: {}",
        r.body
    );
    assert_eq!(r.body["status"], status.to_string(), "body: {}", r.body);
    if let Some(t) = scim_type {
        assert_eq!(r.body["scimType"], t, "body: {}", r.body);
    }
    assert_eq!(
        r.headers.get("content-type").and_then(|v| v.to_str().ok()),
        Some("application/scim+json"),
    );
}
