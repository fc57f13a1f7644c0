//! The listeners' accept loops: TCP (and TLS with rustls when configured), connection limits,
//! header and request timeouts, a `request` span per request with a request id returned in
//! `X-Request-Id`, panics turned into logged 500 SCIM bodies, and graceful drain on shutdown.
//!
//! Every connection is watched (`serve_connection`): one that has not delivered a request
//! within `header_timeout` (the HTTP version sniff, a TLS session or an HTTP/2 preface that goes
//! quiet) or sits without a request in flight for `idle_timeout` is shut down gracefully, then
//! dropped if it does not go. Idle sockets therefore cannot hold the connection permits (test:
//! `hostile::silent_and_preface_only_sockets_are_cut_and_an_authenticated_get_still_works`).

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
use std::convert::Infallible;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// Connection-level limits.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// Time for a new connection to deliver its first request's headers (and the TLS handshake).
    pub header_timeout: Duration,
    /// Time a connection may sit with no request in flight once it has served one.
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub admin_max_connections: usize,
    pub shutdown_grace: Duration,
}

/// The connection permits of one listener (clamped to what a semaphore can count).
pub(crate) fn permits(max: usize) -> Arc<Semaphore> {
    Arc::new(Semaphore::new(max.clamp(1, u32::MAX as usize)))
}

/// Wait (at most `grace`) until every connection holding one of `permits` has ended.
pub(crate) async fn drain(permits: &Semaphore, max: usize, grace: Duration) -> bool {
    let n = u32::try_from(max.clamp(1, u32::MAX as usize)).unwrap_or(u32::MAX);
    tokio::time::timeout(grace, permits.acquire_many(n))
        .await
        .is_ok()
}

/// Refused connections, logged at most once per interval with a count (a flood of refusals must
/// not become a flood of log lines).
pub(crate) struct Refusals {
    listener: &'static str,
    last_log: Option<Instant>,
    unlogged: u64,
}

impl Refusals {
    const INTERVAL: Duration = Duration::from_secs(10);

    pub(crate) fn new(listener: &'static str) -> Self {
        Self {
            listener,
            last_log: None,
            unlogged: 0,
        }
    }

    /// Count one refusal; `true` when this one was logged.
    pub(crate) fn note(&mut self, now: Instant) -> bool {
        self.unlogged += 1;
        if self
            .last_log
            .is_some_and(|t| now.duration_since(t) < Self::INTERVAL)
        {
            return false;
        }
        tracing::warn!(
            listener = self.listener,
            refused = self.unlogged,
            "Connection limit reached; refusing new connections (count since the last such line)."
        );
        self.last_log = Some(now);
        self.unlogged = 0;
        true
    }
}

/// Requests in flight on one connection and when the last one ended.
#[derive(Default)]
struct Activity {
    in_flight: AtomicUsize,
    served: AtomicU64,
    /// Milliseconds after the accept at which the last request ended.
    last_end_ms: AtomicU64,
}

struct InFlight {
    activity: Arc<Activity>,
    start: Instant,
}

impl InFlight {
    fn begin(activity: &Arc<Activity>, start: Instant) -> Self {
        activity.in_flight.fetch_add(1, Ordering::SeqCst);
        activity.served.fetch_add(1, Ordering::SeqCst);
        Self {
            activity: activity.clone(),
            start,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.activity.last_end_ms.store(ms, Ordering::SeqCst);
        self.activity.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Activity {
    /// When the connection is idle-expired if nothing happens meanwhile (re-checked then).
    fn deadline(&self, start: Instant, limits: &ConnLimits, now: Instant) -> Instant {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return now + limits.idle_timeout;
        }
        if self.served.load(Ordering::SeqCst) == 0 {
            return start + limits.header_timeout;
        }
        start + Duration::from_millis(self.last_end_ms.load(Ordering::SeqCst)) + limits.idle_timeout
    }
}

/// Serve one accepted connection (HTTP/1 or HTTP/2, told apart by hyper-util) with `handler`
/// until it ends, `drain` fires (graceful shutdown, dropped after `limits.shutdown_grace`), or it
/// is idle past its deadline (see the module docs).
pub(crate) async fn serve_connection<IO, H, F>(
    io: IO,
    builder: &Builder<TokioExecutor>,
    limits: ConnLimits,
    drain: CancellationToken,
    handler: H,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Resp> + Send + 'static,
{
    let start = Instant::now();
    let activity = Arc::new(Activity::default());
    let svc = {
        let activity = activity.clone();
        service_fn(move |req| {
            let guard = InFlight::begin(&activity, start);
            let fut = handler(req);
            async move {
                let resp = fut.await;
                drop(guard);
                Ok::<_, Infallible>(resp)
            }
        })
    };
    let conn = builder.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let mut closing: Option<Instant> = None;
    loop {
        let wake = closing.unwrap_or_else(|| activity.deadline(start, &limits, Instant::now()));
        tokio::select! {
            _ = conn.as_mut() => return,
            () = drain.cancelled(), if closing.is_none() => {
                conn.as_mut().graceful_shutdown();
                closing = Some(Instant::now() + limits.shutdown_grace);
            }
            () = tokio::time::sleep_until(wake.into()) => {
                if closing.is_some() {
                    tracing::debug!("Connection did not close after a graceful shutdown; dropped.");
                    return;
                }
                let now = Instant::now();
                if activity.in_flight.load(Ordering::SeqCst) == 0
                    && now >= activity.deadline(start, &limits, now)
                {
                    tracing::debug!("Idle connection closed.");
                    conn.as_mut().graceful_shutdown();
                    closing = Some(now + limits.header_timeout);
                }
            }
        }
    }
}

/// The connection builder both listeners use: HTTP/1 header timeout, HTTP/2 keep-alive pings.
pub(crate) fn builder(limits: &ConnLimits) -> Builder<TokioExecutor> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(limits.idle_timeout)
        .keep_alive_timeout(limits.header_timeout);
    builder
}

/// The wall clock (kept here for the handlers and the tests that name it; see [`crate::clock`]).
pub use crate::clock::now_ms;

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
    let drain_all = CancellationToken::new();
    let permits = permits(limits.max_connections);
    let builder = Arc::new(builder(&limits));
    let mut refusals = Refusals::new("scim");
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
            refusals.note(Instant::now());
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let acceptor = tls.borrow().clone();
        let ctx = ctx.clone();
        let builder = builder.clone();
        let drain = drain_all.clone();
        tracker.spawn(async move {
            let _permit = permit;
            match acceptor {
                Some(acceptor) => {
                    let Ok(Ok(stream)) =
                        tokio::time::timeout(limits.header_timeout, acceptor.accept(stream)).await
                    else {
                        tracing::debug!(peer = %peer, "TLS handshake failed.");
                        return;
                    };
                    serve_connection(stream, &builder, limits, drain, move |req| {
                        handle_request(ctx.clone(), req, true)
                    })
                    .await;
                }
                None => {
                    serve_connection(stream, &builder, limits, drain, move |req| {
                        handle_request(ctx.clone(), req, false)
                    })
                    .await;
                }
            }
        });
    }
    drop(listener);
    tracing::info!("SCIM listener closed; draining in-flight requests.");
    drain_all.cancel();
    if !drain(&permits, limits.max_connections, limits.shutdown_grace).await {
        tracing::warn!("In-flight requests did not finish within the grace period.");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_connections_are_logged_at_most_once_per_interval() {
        let mut r = Refusals::new("scim");
        let t0 = Instant::now();
        assert!(r.note(t0));
        for ms in 1..2_000 {
            assert!(!r.note(t0 + Duration::from_millis(ms)));
        }
        assert_eq!(r.unlogged, 1_999);
        assert!(r.note(t0 + Refusals::INTERVAL));
        assert_eq!(r.unlogged, 0);
    }

    #[test]
    fn a_connection_gets_header_timeout_before_its_first_request_then_idle_timeout() {
        let limits = ConnLimits {
            header_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(60),
            max_connections: 1,
            admin_max_connections: 1,
            shutdown_grace: Duration::from_secs(1),
        };
        let start = Instant::now();
        let a = Arc::new(Activity::default());
        assert_eq!(
            a.deadline(start, &limits, start),
            start + limits.header_timeout
        );
        let guard = InFlight::begin(&a, start);
        let now = start + Duration::from_secs(5);
        assert_eq!(a.deadline(start, &limits, now), now + limits.idle_timeout);
        drop(guard);
        let end = Duration::from_millis(a.last_end_ms.load(Ordering::SeqCst));
        assert_eq!(
            a.deadline(start, &limits, now),
            start + end + limits.idle_timeout
        );
    }
}
