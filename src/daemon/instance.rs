//! This daemon's entry in the store's instance registry: what it registers (host, version,
//! mapping fingerprint, takeover bound), the instance heartbeat, and the warning when a live
//! instance maps with a different configuration (they would fight over entries). See
//! docs/ARCHITECTURE.md, "Several instances".

use super::settings::Settings;
use crate::store::{InstanceInfo, Registration, Store};
use sha2::{Digest, Sha256};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The mapping fingerprint: a digest of what decides the entries each target gets (per
/// target: name, `on_existing`, the user and group mappings), not of how it is reached
/// (URLs, credentials' files, timeouts may differ between hosts).
#[must_use]
pub fn fingerprint(settings: &Settings) -> String {
    use crate::config::target::RawTarget;
    let mapping: Vec<String> = settings
        .raw
        .targets
        .iter()
        .map(|t| match t {
            RawTarget::Ldap(l) => {
                format!(
                    "ldap {:?} {:?} {:?} {:?}",
                    l.name, l.on_existing, l.users, l.groups
                )
            }
            RawTarget::Sql(s) => {
                format!(
                    "sql {:?} {:?} {:?} {:?}",
                    s.name, s.on_existing, s.users, s.groups
                )
            }
        })
        .collect();
    let digest = Sha256::digest(mapping.join("\n").as_bytes());
    digest.iter().take(8).fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// What this daemon registers.
#[must_use]
pub fn registration(settings: &Settings) -> Registration {
    Registration {
        host: super::default_instance_id(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        fingerprint: fingerprint(settings),
        takeover_ms: i64::try_from(settings.reconcile.takeover.as_millis()).unwrap_or(i64::MAX),
    }
}

/// The live instances whose fingerprint differs from `mine`.
#[must_use]
pub fn mismatched(instances: &[InstanceInfo], mine: &str, now_ms: i64) -> Vec<InstanceInfo> {
    instances
        .iter()
        .filter(|i| i.live(now_ms) && i.fingerprint != mine)
        .cloned()
        .collect()
}

/// Renew the heartbeat every `period` until cancelled (the fence runs out on its own when a
/// renewal fails), warning once per change when live instances map differently. While
/// `paused` is set (tests: a heartbeat that is late, `Daemon::pause_heartbeat`) nothing is
/// renewed.
pub async fn heartbeat(
    store: Store,
    reg: Arc<Mutex<Registration>>,
    period: Duration,
    cancel: CancellationToken,
    paused: Arc<std::sync::atomic::AtomicBool>,
) {
    let mut warned: Vec<(String, String)> = Vec::new();
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        if paused.load(std::sync::atomic::Ordering::SeqCst) {
            continue;
        }
        let now = crate::clock::now_ms();
        let current = match reg.lock() {
            Ok(r) => r.clone(),
            Err(p) => p.into_inner().clone(),
        };
        match store.instance_heartbeat(current.clone(), now).await {
            Ok(true) => {}
            Ok(false) => tracing::warn!(
                "This instance's heartbeat had run out and another instance took its claims over; registered again (nothing more is written under the old claims)."
            ),
            Err(error) => tracing::warn!(error = %error, "Cannot renew the instance heartbeat; target writes stop when the takeover bound runs out."),
        }
        if let Ok(all) = store.instances(now).await {
            let mut odd: Vec<(String, String)> = mismatched(&all, &current.fingerprint, now)
                .into_iter()
                .map(|i| (i.id, i.fingerprint))
                .collect();
            odd.sort();
            if odd != warned {
                for (id, fp) in &odd {
                    tracing::warn!(instance = %id, fingerprint = %fp, ours = %current.fingerprint, "A live instance maps with a different configuration: the instances would fight over entries; reload them all to one configuration (docs/deployment.md).");
                }
                warned = odd;
            }
        }
    }
}
