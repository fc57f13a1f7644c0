//! The admin listener (loopback by default): `/metrics` (Prometheus text), `/healthz` (alive),
//! `/readyz` (store reachable, per-target status in the body). No authentication: keep it on
//! loopback or behind a firewall.

use crate::http::error::{text, Resp};
use crate::store::Store;
use crate::telemetry::{metrics, TargetLabels};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use serde_json::json;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The last known health of each target, written by the reconciler.
#[derive(Debug, Clone, Default)]
pub struct TargetHealth {
    pub healthy: bool,
    pub detail: String,
}

/// Shared state of the admin endpoints.
#[derive(Clone)]
pub struct AdminContext {
    pub store: Store,
    pub targets: Arc<Mutex<BTreeMap<String, TargetHealth>>>,
}

impl AdminContext {
    fn target_names(&self) -> Vec<String> {
        match self.targets.lock() {
            Ok(t) => t.keys().cloned().collect(),
            Err(p) => p.into_inner().keys().cloned().collect(),
        }
    }
    fn snapshot(&self) -> BTreeMap<String, TargetHealth> {
        match self.targets.lock() {
            Ok(t) => t.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }
}

async fn handle(ctx: AdminContext, req: Request<Incoming>) -> Resp {
    match req.uri().path() {
        "/healthz" => text(200, "text/plain; charset=utf-8", "ok\n".into()),
        "/readyz" => readyz(&ctx).await,
        "/metrics" => {
            refresh_gauges(&ctx).await;
            text(
                200,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                metrics().encode(),
            )
        }
        _ => text(404, "text/plain; charset=utf-8", "not found\n".into()),
    }
}

async fn readyz(ctx: &AdminContext) -> Resp {
    let store_ok = ctx.store.ping().await.is_ok();
    let names = ctx.target_names();
    let status = ctx.store.status(&names).await.unwrap_or_default();
    let health = ctx.snapshot();
    let targets: Vec<_> = names
        .iter()
        .map(|name| {
            let h = health.get(name).cloned().unwrap_or_default();
            let s = status
                .iter()
                .find(|s| &s.target == name)
                .cloned()
                .unwrap_or_default();
            json!({
                "name": name,
                "healthy": h.healthy,
                "detail": h.detail,
                "pending": s.pending,
                "dead_letters": s.dead,
                "applied": s.applied,
            })
        })
        .collect();
    // Readiness is the store: pushes are accepted and kept while a target is down.
    let body = json!({ "ready": store_ok, "store": if store_ok { "ok" } else { "unreachable" }, "targets": targets });
    text(
        if store_ok { 200 } else { 503 },
        "application/json",
        format!("{body}\n"),
    )
}

async fn refresh_gauges(ctx: &AdminContext) {
    let names = ctx.target_names();
    let Ok(status) = ctx.store.status(&names).await else {
        return;
    };
    let now = crate::http::server::now_ms();
    let m = metrics();
    for s in status {
        let labels = TargetLabels {
            target: s.target.clone(),
        };
        m.outbox_pending
            .get_or_create(&labels)
            .set(i64::try_from(s.pending).unwrap_or(i64::MAX));
        m.dead_letters_current
            .get_or_create(&labels)
            .set(i64::try_from(s.dead).unwrap_or(i64::MAX));
        let age = s
            .oldest_pending_ms
            .map_or(0.0, |t| (now - t).max(0) as f64 / 1000.0);
        m.outbox_oldest_age.get_or_create(&labels).set(age);
    }
}

/// Serve the admin endpoints until `cancel` fires.
pub async fn serve_admin(
    listener: TcpListener,
    ctx: AdminContext,
    tracker: TaskTracker,
    cancel: CancellationToken,
) {
    let builder = Arc::new(Builder::new(TokioExecutor::new()));
    loop {
        let accepted = tokio::select! {
            () = cancel.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, _)) = accepted else { continue };
        let ctx = ctx.clone();
        let builder = builder.clone();
        let cancel = cancel.clone();
        tracker.spawn(async move {
            let svc = service_fn(move |req| {
                let ctx = ctx.clone();
                async move { Ok::<_, Infallible>(handle(ctx, req).await) }
            });
            let conn = builder.serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                _ = conn => {}
                () = cancel.cancelled() => {}
            }
        });
    }
}
