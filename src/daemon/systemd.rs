//! systemd notification: `READY=1` once migrated and bound, `STATUS=` lines, `STOPPING=1`, and
//! an honest watchdog that pings only while the accept loop and every worker make progress.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Send `READY=1` and a status line (no-op outside systemd).
pub fn ready(status: &str) {
    let _ = sd_notify::notify(
        false,
        &[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status(status),
        ],
    );
}

/// Send a status line.
pub fn status(status: &str) {
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Status(status)]);
}

/// Send `STOPPING=1`.
pub fn stopping() {
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
}

/// The watchdog interval systemd asked for, if any (`WATCHDOG_USEC`).
pub fn watchdog_interval() -> Option<Duration> {
    let mut usec = 0u64;
    if sd_notify::watchdog_enabled(false, &mut usec) && usec > 0 {
        Some(Duration::from_micros(usec))
    } else {
        None
    }
}

/// The counters the watchdog watches: the accept loop's and every reconciler worker's. Shared,
/// because a reload replaces the workers (and their counters).
pub type WatchList = Arc<Mutex<Vec<Arc<AtomicU64>>>>;

fn snapshot(progress: &WatchList) -> Vec<(Arc<AtomicU64>, u64)> {
    let list = match progress.lock() {
        Ok(l) => l,
        Err(p) => p.into_inner(),
    };
    list.iter()
        .map(|p| (p.clone(), p.load(Ordering::Relaxed)))
        .collect()
}

/// Ping the watchdog every half interval, but only when every counter in `progress` moved since
/// the last ping: a wedged accept loop or worker stops the pings and systemd restarts us. A
/// counter added since the last tick (workers restarted by a reload) is not judged yet.
pub async fn watchdog(interval: Duration, progress: WatchList, cancel: CancellationToken) {
    let mut last = snapshot(&progress);
    let mut tick = tokio::time::interval(interval / 2);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = snapshot(&progress);
        let all_moved = now.iter().all(|(p, n)| {
            last.iter()
                .find(|(q, _)| Arc::ptr_eq(p, q))
                .is_none_or(|(_, l)| l != n)
        });
        if all_moved {
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
        } else {
            tracing::warn!("A task made no progress since the last watchdog ping; not pinging.");
        }
        last = now;
    }
}
