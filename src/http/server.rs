//! The listeners' accept loops: TCP (and TLS with rustls when configured), connection limits,
//! header and request timeouts, a `request` span per request with a request id returned in
//! `X-Request-Id`, panics turned into logged 500 SCIM bodies, and graceful drain on shutdown.

use crate::http::error::{self, Resp};
use crate::http::router::{self, route_template};
use crate::http::ScimContext;
use crate::scim::ScimError;
use crate::store::Deadline;
use crate::telemetry::{metrics, RequestLabels, RouteLabels};
use futures_util::FutureExt;
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::service::service_fn;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// Connection-level limits.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    pub header_timeout: Duration,
    pub max_connections: usize,
    pub shutdown_grace: Duration,
}

/// Milliseconds since the Unix epoch (the one wall-clock read of the HTTP edge).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Load a rustls acceptor from PEM files.
///
/// # Errors
/// A readable message naming the file.
pub fn load_tls(cert_file: &str, key_file: &str) -> Result<TlsAcceptor, String> {
    let certs = rustls_pemfile::certs(&mut std::io::BufReader::new(
        std::fs::File::open(cert_file).map_err(|e| format!("{cert_file}: {e}"))?,
    ))
    .collect::<Result<Vec<_>, _>>()
    .map_err(|e| format!("{cert_file}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{cert_file}: no certificate found"));
    }
    let key = rustls_pemfile::private_key(&mut std::io::BufReader::new(
        std::fs::File::open(key_file).map_err(|e| format!("{key_file}: {e}"))?,
    ))
    .map_err(|e| format!("{key_file}: {e}"))?
    .ok_or_else(|| format!("{key_file}: no private key found"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("{cert_file}: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The request timed out before any store mutation began (nothing was changed).
struct Elapsed;

/// Run `fut` until the deadline. Past it, a request that has not handed a mutation to the store
/// is dropped (503, nothing changed); one that has is awaited, because only the store's outcome
/// (commit, or the rollback of a commit that came too late) may decide the answer: a 503 over a
/// committed create makes the IdP's retry a 409 (issue 8).
async fn answer_by<F: std::future::Future>(
    deadline: Deadline,
    fut: F,
) -> Result<F::Output, Elapsed> {
    let mut fut = std::pin::pin!(fut);
    tokio::select! {
        out = &mut fut => Ok(out),
        () = tokio::time::sleep_until(deadline.at().into()) => {
            if deadline.store_started() {
                Ok(fut.await)
            } else {
                Err(Elapsed)
            }
        }
    }
}

/// One SCIM request, wrapped: span, timeout, panic guard, metrics, `X-Request-Id`.
async fn handle_request(ctx: ScimContext, req: Request<Incoming>, tls: bool) -> Resp {
    let settings = ctx.settings.borrow().clone();
    let request_id = uuid::Uuid::new_v4().to_string();
    let method = req.method().to_string();
    let route = route_template(&settings.base_path, req.uri().path());
    let span = tracing::info_span!(
        "request",
        request_id = %request_id,
        method = %method,
        route,
        status = tracing::field::Empty,
        latency_ms = tracing::field::Empty,
        token_name = tracing::field::Empty,
    );
    let start = Instant::now();
    let auth = ctx.auth.clone();
    let deadline = Deadline::new(start + settings.request_timeout);
    let fut = router::handle(
        ctx,
        auth,
        req,
        request_id.clone(),
        tls,
        now_ms(),
        deadline.clone(),
    );
    let outcome = answer_by(deadline, AssertUnwindSafe(fut).catch_unwind())
        .instrument(span.clone())
        .await;
    let mut resp = match outcome {
        Ok(Ok((resp, token))) => {
            if let Some(t) = token {
                span.record("token_name", t.as_str());
            }
            resp
        }
        Ok(Err(_panic)) => {
            tracing::error!(parent: &span, "Request handler panicked; answered 500.");
            error::error(&ScimError::status(500, "Internal error."))
        }
        Err(_elapsed) => {
            tracing::warn!(parent: &span, "Request exceeded its deadline; answered 503.");
            error::error(&ScimError::status(
                503,
                "The request took too long; try again.",
            ))
        }
    };
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    let status = resp.status().as_u16();
    let elapsed = start.elapsed();
    span.record("status", status);
    span.record("latency_ms", elapsed.as_secs_f64() * 1000.0);
    tracing::debug!(parent: &span, "Request handled.");
    let m = metrics();
    m.http_requests
        .get_or_create(&RequestLabels {
            route: route.into(),
            method,
            status: status.to_string(),
        })
        .inc();
    m.http_request_duration
        .get_or_create(&RouteLabels {
            route: route.into(),
        })
        .observe(elapsed.as_secs_f64());
    resp
}

/// Accept SCIM connections until `cancel` fires, then drain in-flight requests for at most
/// `limits.shutdown_grace`. `progress` is bumped on every loop turn (watchdog evidence).
#[allow(clippy::too_many_arguments)]
pub async fn serve_scim(
    listener: TcpListener,
    tls: watch::Receiver<Option<TlsAcceptor>>,
    ctx: ScimContext,
    limits: ConnLimits,
    tracker: TaskTracker,
    cancel: CancellationToken,
    progress: Arc<AtomicU64>,
) {
    let graceful = GracefulShutdown::new();
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let accepted = tokio::select! {
            () = cancel.cancelled() => break,
            _ = tick.tick() => { progress.fetch_add(1, Ordering::Relaxed); continue; }
            accepted = listener.accept() => accepted,
        };
        progress.fetch_add(1, Ordering::Relaxed);
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(error) => {
                tracing::warn!(error = %error, "Accept failed.");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!(peer = %peer, "Connection limit reached; closing a new connection.");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let acceptor = tls.borrow().clone();
        let ctx = ctx.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let header_timeout = limits.header_timeout;
        tracker.spawn(async move {
            let _permit = permit;
            match acceptor {
                Some(acceptor) => {
                    let Ok(Ok(stream)) =
                        tokio::time::timeout(header_timeout, acceptor.accept(stream)).await
                    else {
                        tracing::debug!(peer = %peer, "TLS handshake failed.");
                        return;
                    };
                    let svc = service_fn(move |req| {
                        let ctx = ctx.clone();
                        async move { Ok::<_, Infallible>(handle_request(ctx, req, true).await) }
                    });
                    let conn = builder.serve_connection(TokioIo::new(stream), svc);
                    let _ = watcher.watch(conn.into_owned()).await;
                }
                None => {
                    let svc = service_fn(move |req| {
                        let ctx = ctx.clone();
                        async move { Ok::<_, Infallible>(handle_request(ctx, req, false).await) }
                    });
                    let conn = builder.serve_connection(TokioIo::new(stream), svc);
                    let _ = watcher.watch(conn.into_owned()).await;
                }
            }
        });
    }
    drop(listener);
    tracing::info!("SCIM listener closed; draining in-flight requests.");
    if tokio::time::timeout(limits.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("In-flight requests did not finish within the grace period.");
    }
}
