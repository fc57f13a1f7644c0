//! The reconciler: workers that claim outbox rows, read the desired state from the store, read
//! the target, diff and apply, then settle the row. Level-triggered and idempotent.
//!
//! - [`worker`]: the per-target loops and the per-row apply (render, resolve references,
//!   `Target::sync`, settle, enqueue dependants).
//! - [`drift`]: full reconciliation (drift repair), also behind `scim-sync reconcile --full`.
//! - [`verify`]: compare every target with the store, changing nothing (`scim-sync verify`).
//! - [`backoff`]: the retry schedule (pure).
//! - [`settings`]: `[reconcile]`, validated.
//!
//! A [`Reconciler`] is built from validated settings and built targets; it never reads the
//! config file and never spawns outside the tracker it is given. Must not answer HTTP.

pub mod backoff;
pub mod drift;
mod members;
pub mod settings;
pub mod verify;
pub mod worker;

pub use drift::{FullItem, FullReport};
pub use verify::{Difference, Problem, VerifyReport};

use crate::health::Health;
use crate::mapping::CompiledTarget;
use crate::scim::resource::ResourceType;
use crate::store::{Store, StoreError};
use crate::targets::{AnyTarget, Target, TargetError};
pub use settings::ReconcileSettings;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The shared per-target health map (`/readyz`, `STATUS=`): see [`crate::health`].
pub type HealthMap = Health;

/// One target with its compiled mapping.
pub struct TargetRuntime {
    /// The target's name (outbox rows and `target_state` are keyed by it).
    pub name: String,
    /// The compiled attribute mapping.
    pub map: CompiledTarget,
    /// The target itself.
    pub target: AnyTarget,
    /// Whether this process made sure the store's reference index is filled for this
    /// target's reference rules (see `worker::referencing_users`); held while filling it, so
    /// two workers never rebuild it at once.
    pub(crate) references_indexed: tokio::sync::Mutex<bool>,
    /// Whether the store's keys of this target were normalised (`worker::fill_key_norms`).
    pub(crate) keys_filled: tokio::sync::Mutex<bool>,
}

impl TargetRuntime {
    /// Wrap a built target.
    #[must_use]
    pub fn new(map: CompiledTarget, target: AnyTarget) -> TargetRuntime {
        TargetRuntime {
            name: map.name.clone(),
            map,
            target,
            references_indexed: tokio::sync::Mutex::new(false),
            keys_filled: tokio::sync::Mutex::new(false),
        }
    }
}

pub(crate) struct Inner {
    pub(crate) store: Store,
    pub(crate) settings: ReconcileSettings,
    pub(crate) targets: Vec<Arc<TargetRuntime>>,
    pub(crate) wake: Arc<Notify>,
    pub(crate) health: HealthMap,
    /// Background workers hold it shared while they claim and apply a batch; `run_pending`
    /// takes it exclusively, so it never returns while a background apply is in flight.
    pub(crate) gate: Arc<tokio::sync::RwLock<()>>,
    /// The armed pause point, if any ([`Reconciler::arm_pause`]). Std mutex, never held
    /// across `.await`.
    pub(crate) pause: Mutex<Option<(&'static str, Arc<PausePoint>)>>,
}

/// A named point where the next apply stops until released: a deterministic stand-in for a
/// process stopped mid-apply (SIGSTOP). While it holds, every lease heartbeat of this
/// reconciler stops too, as they would in a stopped process.
/// For tests and fault drills; nothing arms one in normal operation.
#[derive(Debug, Default)]
pub struct PausePoint {
    reached: Notify,
    release: Notify,
    holding: std::sync::atomic::AtomicBool,
}

impl PausePoint {
    /// Wait until an apply stopped here.
    pub async fn reached(&self) {
        self.reached.notified().await;
    }

    /// Let the stopped apply go on.
    pub fn release(&self) {
        self.release.notify_one();
    }
}

fn kind_of(ty: ResourceType) -> crate::targets::Kind {
    match ty {
        ResourceType::User => crate::targets::Kind::User,
        ResourceType::Group => crate::targets::Kind::Group,
    }
}

/// The reconciler for one set of targets (rebuilt when the targets section is reloaded).
#[derive(Clone)]
pub struct Reconciler {
    pub(crate) inner: Arc<Inner>,
}

impl Reconciler {
    /// A reconciler over these targets. Starts nothing.
    #[must_use]
    pub fn new(
        store: Store,
        settings: ReconcileSettings,
        targets: Vec<TargetRuntime>,
        wake: Arc<Notify>,
        health: HealthMap,
    ) -> Reconciler {
        let targets: Vec<Arc<TargetRuntime>> = targets.into_iter().map(Arc::new).collect();
        for t in &targets {
            // The store's uniqueness index on target keys compares them as the target does.
            let rt = Arc::clone(t);
            store.set_key_norm(
                &t.name,
                Arc::new(move |ty, key| rt.target.key_norm(kind_of(ty), key)),
            );
        }
        Reconciler {
            inner: Arc::new(Inner {
                store,
                settings,
                targets,
                wake,
                health,
                gate: Arc::new(tokio::sync::RwLock::new(())),
                pause: Mutex::new(None),
            }),
        }
    }

    /// Arm the pause point `name` (e.g. [`worker::PAUSE_BEFORE_SYNC`]): the next apply that
    /// reaches it stops there (and this reconciler's heartbeats with it) until
    /// [`PausePoint::release`].
    #[must_use]
    pub fn arm_pause(&self, name: &'static str) -> Arc<PausePoint> {
        let point = Arc::new(PausePoint::default());
        let mut guard = match self.inner.pause.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        *guard = Some((name, point.clone()));
        point
    }

    /// Stop here when `name` is armed (once), until released.
    pub(crate) async fn pause_point(&self, name: &'static str) {
        let point = {
            let mut guard = match self.inner.pause.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            match guard.as_ref() {
                Some((armed, _)) if *armed == name => guard.take().map(|(_, p)| p),
                _ => None,
            }
        };
        let Some(point) = point else {
            return;
        };
        point
            .holding
            .store(true, std::sync::atomic::Ordering::SeqCst);
        {
            let mut guard = match self.inner.pause.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            // Visible to the heartbeat while it holds.
            *guard = Some(("", point.clone()));
        }
        point.reached.notify_one();
        point.release.notified().await;
        point
            .holding
            .store(false, std::sync::atomic::Ordering::SeqCst);
        let mut guard = match self.inner.pause.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        *guard = None;
    }

    /// Whether an apply is stopped at a pause point (its heartbeat then stops too).
    pub(crate) fn pause_holding(&self) -> bool {
        let guard = match self.inner.pause.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        guard
            .as_ref()
            .is_some_and(|(_, p)| p.holding.load(std::sync::atomic::Ordering::SeqCst))
    }

    /// The target names, in config order.
    #[must_use]
    pub fn target_names(&self) -> Vec<String> {
        self.inner.targets.iter().map(|t| t.name.clone()).collect()
    }

    /// Run every target's healthcheck once and record the results in the health map. Never
    /// fails: the results are returned for logs and `STATUS=`.
    pub async fn healthcheck_all(&self) -> Vec<(String, Result<(), TargetError>)> {
        let mut out = Vec::new();
        for t in &self.inner.targets {
            let result = t.target.healthcheck().await;
            match &result {
                Ok(()) => {
                    tracing::info!(target = %t.name, "Target healthcheck passed.");
                    self.inner.health.contact(&t.name, Ok(()));
                }
                Err(e) => {
                    if e.class == crate::targets::ErrorClass::Permanent {
                        tracing::error!(target = %t.name, error = %e, "Target check failed: the config does not match the target; changes it refuses become dead letters until the config or the target is fixed.");
                    } else {
                        tracing::warn!(target = %t.name, error = %e, "Target healthcheck failed; changes stay queued until it recovers.");
                    }
                    self.inner.health.contact(&t.name, Err(&e.to_string()));
                }
            }
            out.push((t.name.clone(), result));
        }
        out
    }

    /// The shared health map this reconciler writes.
    #[must_use]
    pub fn health(&self) -> &HealthMap {
        &self.inner.health
    }

    /// Spawn `reconcile.workers` loops per target through `tracker`; they stop when `cancel`
    /// fires. Returns one progress counter per loop (bumped every turn, for the watchdog).
    pub fn spawn_workers(
        &self,
        tracker: &TaskTracker,
        cancel: &CancellationToken,
    ) -> Vec<Arc<AtomicU64>> {
        let mut counters = Vec::new();
        for index in 0..self.inner.targets.len() {
            for _ in 0..self.inner.settings.workers.max(1) {
                let progress = Arc::new(AtomicU64::new(0));
                counters.push(progress.clone());
                tracker.spawn(worker::run(self.clone(), index, progress, cancel.clone()));
            }
        }
        counters
    }

    /// Apply everything pending for every target now, synchronously, and return how many rows
    /// were applied. Rows waiting out a backoff are made due first, so one call retries each
    /// failed row once; a row that fails again is rescheduled with its backoff and left for the
    /// next call (the call always ends). Dependants queued by the applies (a user's groups, the
    /// users waiting for a manager) are applied in the same call. Background workers are held
    /// off meanwhile, so nothing of this reconciler is in flight when this returns (another reconciler or process over the same store may still hold a claim). Tests use it instead of sleeping.
    pub async fn run_pending(&self) -> usize {
        let _exclusive = self.inner.gate.write().await;
        let mut applied = 0;
        for index in 0..self.inner.targets.len() {
            applied += worker::drain(self, index).await;
        }
        applied
    }

    /// Hold the background workers off until the guard is dropped: batches in flight finish
    /// first, then no worker claims anything (pushes are still stored). For maintenance and
    /// for tests that must see several pushes coalesce; do not call
    /// [`Reconciler::run_pending`] while holding it (it would wait for the guard).
    pub async fn pause(&self) -> tokio::sync::OwnedRwLockWriteGuard<()> {
        self.inner.gate.clone().write_owned().await
    }

    /// Full reconciliation (drift repair) of one target or all: see [`drift`].
    pub async fn reconcile_full(
        &self,
        target: Option<&str>,
        dry_run: bool,
        progress: impl Fn(u64, u64),
    ) -> FullReport {
        drift::reconcile_full(self, target, dry_run, &progress).await
    }

    /// Compare one target or all with what the store says they should hold, changing
    /// nothing: see [`verify`]. `progress(done, seen)` is called after each resource.
    pub async fn verify(&self, target: Option<&str>, progress: impl Fn(u64, u64)) -> VerifyReport {
        verify::verify(self, target, &progress).await
    }

    /// Queue every live user, then every live group, for every target (a changed attribute
    /// map re-applies to every managed entry). Returns how many rows were queued.
    ///
    /// # Errors
    /// The store failing.
    pub async fn enqueue_all_live(&self, operation: &str) -> Result<u64, StoreError> {
        let store = &self.inner.store;
        let users = store.all_resource_ids(ResourceType::User, false).await?;
        let groups = store.all_resource_ids(ResourceType::Group, false).await?;
        let now = crate::clock::now_ms();
        let mut queued = 0;
        for t in &self.inner.targets {
            queued += store
                .enqueue_many(&t.name, ResourceType::User, &users, operation, now)
                .await?;
            if t.map.groups.is_some() {
                queued += store
                    .enqueue_many(&t.name, ResourceType::Group, &groups, operation, now)
                    .await?;
            }
        }
        self.inner.wake.notify_waiters();
        Ok(queued)
    }
}
