//! Logging and metrics: the tracing subscriber (human without timestamps for journald, or JSON),
//! a reloadable level, the shared log field names, and every Prometheus metric with its name.
//!
//! Never log tokens, passwords, bind credentials, query strings or bodies; redaction lives in
//! types (`config::Secret`, `scim::resource::Password`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::io::IsTerminal;
use std::sync::atomic::AtomicU64;
use std::sync::OnceLock;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry as TracingRegistry};

/// Log field names (one vocabulary everywhere).
pub mod fields {
    pub const REQUEST_ID: &str = "request_id";
    pub const TOKEN_NAME: &str = "token_name";
    pub const RESOURCE_TYPE: &str = "resource_type";
    pub const RESOURCE_ID: &str = "resource_id";
    pub const TARGET: &str = "target";
    pub const OUTBOX_ID: &str = "outbox_id";
    pub const ATTEMPT: &str = "attempt";
    pub const DN: &str = "dn";
    pub const ERROR: &str = "error";
}

static FILTER_HANDLE: OnceLock<reload::Handle<EnvFilter, TracingRegistry>> = OnceLock::new();

/// Install the global subscriber once. `format` is `human` or `json`; `level` an `EnvFilter`
/// directive (`RUST_LOG` wins when set). A second call is a no-op (tests start several daemons).
pub fn init_logging(format: &str, level: &str) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .or_else(|| EnvFilter::try_new(level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let (filter_layer, handle) = reload::Layer::new(filter);
    let result = if format == "json" {
        tracing_subscriber::registry()
            .with(filter_layer)
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_writer(std::io::stderr),
            )
            .try_init()
    } else {
        tracing_subscriber::registry()
            .with(filter_layer)
            .with(
                tracing_subscriber::fmt::layer()
                    .without_time()
                    .with_target(false)
                    // No colour codes in the journal or a log file: only on a terminal.
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_writer(std::io::stderr),
            )
            .try_init()
    };
    if result.is_ok() {
        let _ = FILTER_HANDLE.set(handle);
    }
}

/// Change the log level at run time (SIGHUP). Returns false when the directive is invalid.
pub fn set_log_level(level: &str) -> bool {
    if std::env::var("RUST_LOG").is_ok() {
        return true;
    }
    match (EnvFilter::try_new(level), FILTER_HANDLE.get()) {
        (Ok(filter), Some(handle)) => handle.reload(filter).is_ok(),
        (Ok(_), None) => true,
        (Err(_), _) => false,
    }
}

/// Labels of an HTTP request counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: String,
    pub method: String,
    pub status: String,
}

/// Labels naming a route.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
}

/// Labels naming a target.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabels {
    pub target: String,
}

/// Labels naming a target and an outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetResultLabels {
    pub target: String,
    pub result: String,
}

/// Every metric the daemon exports.
pub struct Metrics {
    pub registry: Registry,
    pub http_requests: Family<RequestLabels, Counter>,
    pub http_request_duration: Family<RouteLabels, Histogram>,
    pub applies: Family<TargetResultLabels, Counter>,
    pub retries: Family<TargetLabels, Counter>,
    pub dead_letters: Family<TargetLabels, Counter>,
    pub target_op_duration: Family<TargetLabels, Histogram>,
    pub outbox_pending: Family<TargetLabels, Gauge>,
    pub outbox_oldest_age: Family<TargetLabels, Gauge<f64, AtomicU64>>,
    pub dead_letters_current: Family<TargetLabels, Gauge>,
    pub password_hashes: Counter,
    /// The store's claim and settle work since start (`store::OutboxCounts`), set at scrape.
    pub outbox_claims: Gauge,
    pub outbox_claimed_rows: Gauge,
    pub outbox_settles: Gauge,
    pub outbox_renewals: Gauge,
}

fn latency_histogram() -> Histogram {
    Histogram::new([
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ])
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("scim_sync");
        let http_requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "SCIM requests by route, method and status",
            http_requests.clone(),
        );
        let http_request_duration = Family::<RouteLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register_with_unit(
            "http_request_duration",
            "SCIM request latency",
            prometheus_client::registry::Unit::Seconds,
            http_request_duration.clone(),
        );
        let applies = Family::<TargetResultLabels, Counter>::default();
        registry.register(
            "applies",
            "Reconcile applies by target and result",
            applies.clone(),
        );
        let retries = Family::<TargetLabels, Counter>::default();
        registry.register(
            "retries",
            "Failed applies scheduled for a retry",
            retries.clone(),
        );
        let dead_letters = Family::<TargetLabels, Counter>::default();
        registry.register(
            "dead_letters",
            "Outbox rows that became dead letters",
            dead_letters.clone(),
        );
        let target_op_duration = Family::<TargetLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register_with_unit(
            "target_operation_duration",
            "Duration of one sync of one resource against a target",
            prometheus_client::registry::Unit::Seconds,
            target_op_duration.clone(),
        );
        let outbox_pending = Family::<TargetLabels, Gauge>::default();
        registry.register(
            "outbox_pending",
            "Pending outbox rows per target",
            outbox_pending.clone(),
        );
        let outbox_oldest_age = Family::<TargetLabels, Gauge<f64, AtomicU64>>::default();
        registry.register_with_unit(
            "outbox_oldest_pending_age",
            "Age of the oldest pending outbox row per target",
            prometheus_client::registry::Unit::Seconds,
            outbox_oldest_age.clone(),
        );
        let dead_letters_current = Family::<TargetLabels, Gauge>::default();
        registry.register(
            "dead_letters_current",
            "Dead letters waiting for an operator",
            dead_letters_current.clone(),
        );
        let password_hashes = Counter::default();
        registry.register(
            "password_hashes",
            "Passwords hashed for [scim] password_sync (on the blocking pool)",
            password_hashes.clone(),
        );
        let outbox_claims = Gauge::default();
        registry.register(
            "outbox_claim_transactions",
            "Outbox claim transactions of this process since start (empty ones included)",
            outbox_claims.clone(),
        );
        let outbox_claimed_rows = Gauge::default();
        registry.register(
            "outbox_claimed_rows",
            "Outbox rows claimed by this process since start",
            outbox_claimed_rows.clone(),
        );
        let outbox_settles = Gauge::default();
        registry.register(
            "outbox_settled_rows",
            "Outbox rows settled (applied or failed) by this process since start",
            outbox_settles.clone(),
        );
        let outbox_renewals = Gauge::default();
        registry.register(
            "outbox_lease_renewals",
            "Claim lease renewals of this process since start",
            outbox_renewals.clone(),
        );
        Self {
            registry,
            http_requests,
            http_request_duration,
            applies,
            retries,
            dead_letters,
            target_op_duration,
            outbox_pending,
            outbox_oldest_age,
            dead_letters_current,
            password_hashes,
            outbox_claims,
            outbox_claimed_rows,
            outbox_settles,
            outbox_renewals,
        }
    }

    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

static METRICS: OnceLock<Metrics> = OnceLock::new();

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    METRICS.get_or_init(Metrics::new)
}
