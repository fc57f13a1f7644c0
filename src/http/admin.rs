//! The admin listener (loopback by default): `/metrics` (Prometheus text), `/healthz` (alive),
//! `/readyz` (store reachable, per-target status in the body); GET and HEAD only (405 otherwise).
//! No authentication: keep it on loopback or behind a firewall. It has its own connection cap
//! (`admin.max_connections`) and the SCIM listener's timeouts (`http::server::serve_connection`).

use crate::health::Health;
use crate::http::error::{text, Resp};
use crate::http::server::{builder, drain, permits, serve_connection, ConnLimits, Refusals};
use crate::store::Store;
use crate::telemetry::{metrics, TargetLabels};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW};
use hyper::{Method, Request};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Shared state of the admin endpoints.
#[derive(Clone)]
pub struct AdminContext {
    pub store: Store,
    /// Written by the reconciler (`crate::health`).
    pub targets: Health,
}

async fn handle(ctx: AdminContext, req: Request<Incoming>) -> Resp {
    let known = matches!(req.uri().path(), "/healthz" | "/readyz" | "/metrics");
    if known && req.method() != Method::GET && req.method() != Method::HEAD {
        let mut resp = text(
            405,
            "text/plain; charset=utf-8",
            "method not allowed\n".into(),
        );
        resp.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
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
    let names = ctx.targets.names();
    let status = ctx.store.status(&names).await.unwrap_or_default();
    let health = ctx.targets.snapshot();
    let targets: Vec<_> = names
        .iter()
        .map(|name| {
            let h = health.get(name).cloned().unwrap_or_default();
            let s = status
                .iter()
                .find(|s| &s.target == name)
                .cloned()
                .unwrap_or_default();
            // Failing while unreachable, refusing a resource, or holding dead letters (see
            // `crate::health`); the status code stays the store's.
            let failing = h.failing(s.dead);
            let detail = if !failing {
                "ok".to_owned()
            } else if h.healthy() {
                format!(
                    "failing: {} dead letter(s) (scim-sync dead-letters list)",
                    s.dead
                )
            } else {
                h.summary()
            };
            let latest = h
                .latest_refusal()
                .map(|(id, r)| json!({ "resource_id": id, "error": r.error, "at_ms": r.at_ms }));
            json!({
                "name": name,
                "healthy": !failing,
                "reachable": h.reachable,
                "detail": detail,
                "refused": h.refused.len(),
                "latest_refusal": latest,
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
    let m = metrics();
    let counts = ctx.store.outbox_counts();
    let set = |g: &prometheus_client::metrics::gauge::Gauge, n: u64| {
        g.set(i64::try_from(n).unwrap_or(i64::MAX));
    };
    set(&m.outbox_claims, counts.claims);
    set(&m.outbox_claimed_rows, counts.claimed_rows);
    set(&m.outbox_settles, counts.settles);
    set(&m.outbox_renewals, counts.renewals);
    let names = ctx.targets.names();
    let Ok(status) = ctx.store.status(&names).await else {
        return;
    };
    let now = crate::clock::now_ms();
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

/// Serve the admin endpoints until `cancel` fires, then drain for at most the grace period.
pub async fn serve_admin(
    listener: TcpListener,
    ctx: AdminContext,
    limits: ConnLimits,
    tracker: TaskTracker,
    cancel: CancellationToken,
) {
    let drain_all = CancellationToken::new();
    let permits = permits(limits.admin_max_connections);
    let builder = Arc::new(builder(&limits));
    let mut refusals = Refusals::new("admin");
    loop {
        let accepted = tokio::select! {
            () = cancel.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::warn!(error = %error, "Admin accept failed.");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            refusals.note(Instant::now());
            drop(stream);
            continue;
        };
        let ctx = ctx.clone();
        let builder = builder.clone();
        let drain = drain_all.clone();
        tracker.spawn(async move {
            let _permit = permit;
            serve_connection(stream, &builder, limits, drain, move |req| {
                handle(ctx.clone(), req)
            })
            .await;
        });
    }
    drop(listener);
    drain_all.cancel();
    let _ = drain(
        &permits,
        limits.admin_max_connections,
        limits.shutdown_grace,
    )
    .await;
}
