//! The wall clock: milliseconds since the Unix epoch, the one reading every layer shares (the
//! HTTP edge stamps requests with it, the reconciler its leases and backoff, the CLI its
//! outputs). Plain: uses no other module of the crate.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 before it, `i64::MAX` past the year 292 million).
#[must_use]
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
