//! The reconciler's settings, validated from `[reconcile]` here (its own rules: the lease
//! against every target's write time, the backoff bounds), every problem naming its key.

use crate::config::load::ConfigError;
use crate::config::raw::RawReconcile;
use crate::config::target::RawTarget;
use std::time::Duration;

/// Reconciler settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ReconcileSettings {
    pub workers: u32,
    pub poll_interval: Duration,
    pub max_attempts: u32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub lease: Duration,
    pub full_interval: Option<Duration>,
    /// The instance heartbeat's period (`reconcile.heartbeat_secs`).
    pub heartbeat: Duration,
    /// How long after its last heartbeat an instance's claims are taken over
    /// (`reconcile.takeover_secs`, see [`takeover_secs`]).
    pub takeover: Duration,
}

/// `reconcile.takeover_secs`, or its default: the larger of 15 and the longest target write
/// plus twice the heartbeat (a write starts only while its timeout remains on the instance
/// fence, which each heartbeat moves to its start plus the takeover bound).
#[must_use]
pub fn takeover_secs(raw: &RawReconcile, targets: &[RawTarget]) -> u64 {
    raw.takeover_secs.unwrap_or_else(|| {
        let longest = targets.iter().map(write_secs).max().unwrap_or(0);
        longest
            .saturating_add(raw.heartbeat_secs.max(1).saturating_mul(2))
            .max(15)
    })
}

/// The longest one target write can take, in seconds: a connect (and bind) and then the
/// operation (`connect_timeout_secs + timeout_secs`).
#[must_use]
pub fn write_secs(t: &RawTarget) -> u64 {
    match t {
        RawTarget::Ldap(l) => l.connect_timeout_secs.saturating_add(l.timeout_secs),
        RawTarget::Sql(s) => s.connect_timeout_secs.saturating_add(s.timeout_secs),
    }
}

/// Validate `[reconcile]` against the configured targets.
///
/// # Errors
/// Every problem found, each naming its key.
pub fn from_raw(
    raw: &RawReconcile,
    targets: &[RawTarget],
) -> Result<ReconcileSettings, Vec<ConfigError>> {
    let mut errors = Vec::new();
    if raw.workers == 0 {
        errors.push(ConfigError::invalid(
            "reconcile.workers",
            "must be at least 1",
        ));
    }
    // A target write starts only while its timeout remains on the claim's lease (checked once
    // the connection is up, which may take connect_timeout), and the heartbeat renews the
    // lease every lease/3: a lease under twice a connect and a write would leave too little.
    for t in targets {
        let write = write_secs(t);
        if raw.lease_secs < write.saturating_mul(2) {
            errors.push(ConfigError::invalid(
                "reconcile.lease_secs",
                format!(
                    "must be at least twice the connect_timeout_secs + timeout_secs of target {} ({write}): a write starts only while its timeout remains on the lease",
                    t.name()
                ),
            ));
        }
    }
    if raw.heartbeat_secs == 0 {
        errors.push(ConfigError::invalid(
            "reconcile.heartbeat_secs",
            "must be at least 1",
        ));
    }
    // The instance fence: each heartbeat moves it to its start plus the takeover bound, and a
    // write starts only while its timeout remains on it.
    if let Some(takeover) = raw.takeover_secs {
        for t in targets {
            let needed = write_secs(t).saturating_add(raw.heartbeat_secs.saturating_mul(2));
            if takeover < needed {
                errors.push(ConfigError::invalid(
                    "reconcile.takeover_secs",
                    format!(
                        "must be at least the connect_timeout_secs + timeout_secs of target {} plus twice reconcile.heartbeat_secs ({needed}): a write starts only while its timeout remains before the takeover",
                        t.name()
                    ),
                ));
            }
        }
    }
    if let Some(id) = &raw.instance_id {
        if id.trim().is_empty() || id.len() > 200 || id.chars().any(char::is_control) {
            errors.push(ConfigError::invalid(
                "reconcile.instance_id",
                "must be 1 to 200 printable characters",
            ));
        }
    }
    if raw.max_attempts == 0 {
        errors.push(ConfigError::invalid(
            "reconcile.max_attempts",
            "must be at least 1",
        ));
    }
    if raw.backoff_base_ms == 0 || raw.backoff_max_ms < raw.backoff_base_ms {
        errors.push(ConfigError::invalid(
            "reconcile.backoff_max_ms",
            "needs 0 < backoff_base_ms <= backoff_max_ms",
        ));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(ReconcileSettings {
        workers: raw.workers,
        poll_interval: Duration::from_millis(raw.poll_interval_ms.max(10)),
        max_attempts: raw.max_attempts,
        backoff_base: Duration::from_millis(raw.backoff_base_ms),
        backoff_max: Duration::from_millis(raw.backoff_max_ms),
        lease: Duration::from_secs(raw.lease_secs.max(1)),
        full_interval: (raw.full_interval_secs > 0)
            .then(|| Duration::from_secs(raw.full_interval_secs)),
        heartbeat: Duration::from_secs(raw.heartbeat_secs.max(1)),
        takeover: Duration::from_secs(takeover_secs(raw, targets)),
    })
}
