//! The daemon: startup order (config -> telemetry -> store + migrations -> bind -> workers ->
//! READY=1), the tasks (all spawned through one `TaskTracker`, each with the root cancellation
//! token), reload, and shutdown within the grace period.

pub mod instance;
pub mod settings;
pub mod signals;
pub mod systemd;

use crate::config::load::{load, ConfigError};
use crate::config::raw::RawConfig;
use crate::health::{Health, TargetHealth};
use crate::http::admin::{serve_admin, AdminContext};
use crate::http::auth::Auth;
use crate::http::server::{load_tls, serve_scim};
use crate::http::{HttpSettings, ScimContext};
use crate::reconcile::{FullReport, Reconciler, TargetRuntime};
use crate::store::{Registration, Store};
use settings::Settings;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A running daemon (in-process: the binary and the tests use the same type).
pub struct Daemon {
    /// The bound SCIM address (port 0 in the config gives a free port).
    pub scim_addr: SocketAddr,
    /// The bound admin address, when enabled.
    pub admin_addr: Option<SocketAddr>,
    pub store: Store,
    cancel: CancellationToken,
    tracker: TaskTracker,
    http_tx: watch::Sender<Arc<HttpSettings>>,
    tls_tx: watch::Sender<Option<TlsAcceptor>>,
    auth: Arc<Auth>,
    settings: Mutex<Settings>,
    wake: Arc<Notify>,
    /// The counters the watchdog watches (accept loop + every reconciler worker).
    progress: systemd::WatchList,
    /// The running reconciler and the token that stops its workers (replaced on reload).
    reconciler: Mutex<Option<Running>>,
    /// Set when a long-running task ended on its own: the daemon must stop, non-zero.
    failed: Arc<AtomicBool>,
    config_path: Option<PathBuf>,
    health: Health,
    /// What the instance heartbeat registers (the fingerprint follows reloads).
    registration: Arc<Mutex<Registration>>,
    /// Tests: the instance heartbeat renews nothing while set ([`Daemon::pause_heartbeat`]).
    heartbeat_paused: Arc<AtomicBool>,
}

/// One generation of reconciler workers.
struct Running {
    reconciler: Reconciler,
    cancel: CancellationToken,
    counters: Vec<Arc<AtomicU64>>,
    /// Becomes true (or its sender drops) once the boot tasks (healthchecks, requeue after a
    /// reload) are done, so `run_pending_reconciles` sees what a reload queued.
    booted: watch::Receiver<bool>,
}

/// Build every target of a config (pure validation, no connecting).
fn build_targets(raw: &RawConfig) -> Result<Vec<TargetRuntime>, Vec<ConfigError>> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    let schemas = crate::mapping::Schemas::from_set(&settings::schema_set(&raw.scim));
    for (i, t) in raw.targets.iter().enumerate() {
        match crate::targets::build_with(t, i, &schemas) {
            Ok((map, target)) => out.push(TargetRuntime::new(map, target)),
            Err(errs) => errors.extend(
                errs.into_iter()
                    .map(|e| ConfigError::invalid(e.key, e.message)),
            ),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// Startup failures, each with the message the operator sees.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Config(Vec<ConfigError>),
    #[error("store: {0}")]
    Store(String),
    #[error("cannot listen on {addr}: {error}")]
    Bind {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(String),
}

/// Load and validate a config file; errors carry the file and line.
///
/// # Errors
/// Every problem found.
pub fn load_settings(path: &Path) -> Result<Settings, Vec<ConfigError>> {
    let raw = load(path)?;
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let file = path.display().to_string();
    settings::from_raw(&raw).map_err(|errs| {
        let mut errs: Vec<ConfigError> =
            errs.into_iter().map(|e| e.in_file(&file, &text)).collect();
        // In file order (stable: errors of one line keep the validator's order).
        errs.sort_by_key(|e| e.line.unwrap_or(usize::MAX));
        errs
    })
}

/// The instance id used when `reconcile.instance_id` is unset: the host name (stable across
/// restarts; two instances on one host sharing a PostgreSQL store must set distinct ids).
#[must_use]
pub fn default_instance_id() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|p| {
            std::fs::read_to_string(p)
                .ok()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
        })
        .unwrap_or_else(|| "scim-sync".to_owned())
}

impl Daemon {
    /// Start everything and return once the listeners are bound and migrations ran.
    ///
    /// # Errors
    /// A store that cannot be opened or migrated, an address that cannot be bound, bad TLS files.
    pub async fn start(
        settings: Settings,
        config_path: Option<PathBuf>,
    ) -> Result<Daemon, StartError> {
        let mut store_settings = settings.store.clone();
        store_settings.instance_lock = true;
        if store_settings.instance_id.is_empty() {
            store_settings.instance_id = default_instance_id();
        }
        let target_names = settings.target_names();
        let store = Store::open(&store_settings, target_names.clone())
            .await
            .map_err(|e| StartError::Store(e.to_string()))?;
        let applied = store
            .migrate()
            .await
            .map_err(|e| StartError::Store(e.to_string()))?;
        for name in &applied {
            tracing::info!(migration = %name, "Applied migration.");
        }
        // A write the killed process sent may still land: its rows wait that long.
        let due_ms = crate::clock::now_ms().saturating_add(
            i64::try_from(settings.longest_write().as_millis()).unwrap_or(i64::MAX),
        );
        match store.release_stale_claims(due_ms).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                released = n,
                "Released outbox claims left by a previous process."
            ),
            Err(error) => tracing::warn!(error = %error, "Cannot release stale outbox claims."),
        }
        let registration = Arc::new(Mutex::new(instance::registration(&settings)));
        let reg = registration
            .lock()
            .map(|r| r.clone())
            .unwrap_or_else(|p| p.into_inner().clone());
        store
            .register_instance(reg, crate::clock::now_ms())
            .await
            .map_err(|e| StartError::Store(e.to_string()))?;
        let built = build_targets(&settings.raw).map_err(StartError::Config)?;
        match store.live_token_digests().await {
            Ok(t) if t.is_empty() => tracing::warn!(
                "No live SCIM token: every SCIM request is refused (401) until one is made with `scim-sync token create`."
            ),
            _ => {}
        }
        let tls = match &settings.tls {
            Some((cert, key)) => Some(load_tls(cert, key).map_err(StartError::Tls)?),
            None => None,
        };
        let listener =
            TcpListener::bind(settings.listen)
                .await
                .map_err(|error| StartError::Bind {
                    addr: settings.listen,
                    error,
                })?;
        let scim_addr = listener.local_addr().map_err(|error| StartError::Bind {
            addr: settings.listen,
            error,
        })?;
        let admin_listener = match settings.admin_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|error| StartError::Bind { addr, error })?,
            ),
            None => None,
        };
        let admin_addr = admin_listener.as_ref().and_then(|l| l.local_addr().ok());

        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        let failed = Arc::new(AtomicBool::new(false));
        let (http_tx, http_rx) = watch::channel(Arc::new(settings.http.clone()));
        let (tls_tx, tls_rx) = watch::channel(tls);
        let auth = Arc::new(Auth::new(store.clone()));
        let wake = Arc::new(Notify::new());
        let accept_progress = Arc::new(AtomicU64::new(0));
        let health = Health::new(&target_names);

        let ctx = ScimContext {
            store: store.clone(),
            auth: auth.clone(),
            settings: http_rx,
            wake: wake.clone(),
        };
        {
            let (cancel, tracker2, failed, progress) = (
                cancel.clone(),
                tracker.clone(),
                failed.clone(),
                accept_progress.clone(),
            );
            let limits = settings.limits;
            tracker.spawn(async move {
                serve_scim(
                    listener,
                    tls_rx,
                    ctx,
                    limits,
                    tracker2,
                    cancel.clone(),
                    progress,
                )
                .await;
                if !cancel.is_cancelled() {
                    failed.store(true, Ordering::SeqCst);
                    cancel.cancel();
                }
            });
        }
        if let Some(listener) = admin_listener {
            let admin = AdminContext {
                store: store.clone(),
                targets: health.clone(),
            };
            let (cancel, tracker2) = (cancel.clone(), tracker.clone());
            tracker.spawn(serve_admin(
                listener,
                admin,
                settings.limits,
                tracker2,
                cancel,
            ));
        }
        {
            // Commits on other instances wake this one's workers (PostgreSQL `LISTEN`).
            let stop = Arc::new(AtomicBool::new(false));
            let wake = wake.clone();
            store.listen_for_changes(Arc::new(move || wake.notify_waiters()), stop.clone());
            let cancel = cancel.clone();
            tracker.spawn(async move {
                cancel.cancelled().await;
                stop.store(true, Ordering::SeqCst);
            });
        }
        let heartbeat_paused = Arc::new(AtomicBool::new(false));
        tracker.spawn(instance::heartbeat(
            store.clone(),
            registration.clone(),
            settings.reconcile.heartbeat,
            cancel.clone(),
            heartbeat_paused.clone(),
        ));
        let progress: systemd::WatchList = Arc::new(Mutex::new(vec![accept_progress]));
        let reconciler = Reconciler::new(
            store.clone(),
            settings.reconcile.clone(),
            built,
            wake.clone(),
            health.clone(),
        );
        let running = start_workers(
            reconciler,
            &settings,
            &tracker,
            &cancel,
            &progress,
            Boot::Healthcheck,
            scim_addr,
        );
        if let Some(interval) = systemd::watchdog_interval() {
            tracker.spawn(systemd::watchdog(
                interval,
                progress.clone(),
                cancel.clone(),
            ));
        }
        tracing::info!(listen = %scim_addr, admin = ?admin_addr, targets = target_names.len(), "Started.");
        Ok(Daemon {
            scim_addr,
            admin_addr,
            store,
            cancel,
            tracker,
            http_tx,
            tls_tx,
            auth,
            settings: Mutex::new(settings),
            wake,
            progress,
            reconciler: Mutex::new(Some(running)),
            failed,
            config_path,
            health,
            registration,
            heartbeat_paused,
        })
    }

    /// Tests: stop (true) or resume (false) renewing the instance heartbeat, as a process
    /// whose heartbeat is late would (its fence runs out; the others take its claims over).
    #[doc(hidden)]
    pub fn pause_heartbeat(&self, paused: bool) {
        self.heartbeat_paused.store(paused, Ordering::SeqCst);
    }

    /// The current reconciler (cheap clone); tests arm its pause points.
    pub fn current_reconciler(&self) -> Option<Reconciler> {
        let guard = match self.reconciler.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        guard.as_ref().map(|r| r.reconciler.clone())
    }

    /// Apply everything pending in every target now and return how many rows were applied
    /// (see [`Reconciler::run_pending`]); tests call it instead of sleeping. Waits for the
    /// current workers' boot tasks first (a reload queues every resource in the background).
    pub async fn run_pending_reconciles(&self) -> usize {
        let current = {
            let guard = match self.reconciler.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            guard
                .as_ref()
                .map(|r| (r.reconciler.clone(), r.booted.clone()))
        };
        match current {
            Some((r, mut booted)) => {
                // An error means the boot task ended (or was cancelled): nothing to wait for.
                let _ = booted.wait_for(|done| *done).await;
                r.run_pending().await
            }
            None => 0,
        }
    }

    /// Hold the reconciler's background workers off while the guard lives (see
    /// [`Reconciler::pause`]); `None` when no reconciler runs.
    pub async fn pause_reconcilers(&self) -> Option<tokio::sync::OwnedRwLockWriteGuard<()>> {
        match self.current_reconciler() {
            Some(r) => Some(r.pause().await),
            None => None,
        }
    }

    /// Full reconciliation (drift repair) of one target or all, with the daemon's targets
    /// (see [`Reconciler::reconcile_full`]).
    pub async fn reconcile_full(
        &self,
        target: Option<&str>,
        dry_run: bool,
        progress: impl Fn(u64, u64),
    ) -> FullReport {
        match self.current_reconciler() {
            Some(r) => r.reconcile_full(target, dry_run, progress).await,
            None => FullReport::default(),
        }
    }

    /// Compare one target or all with the store, changing nothing, with the daemon's targets
    /// (see [`Reconciler::verify`]).
    pub async fn verify(
        &self,
        target: Option<&str>,
        progress: impl Fn(u64, u64),
    ) -> crate::reconcile::VerifyReport {
        match self.current_reconciler() {
            Some(r) => r.verify(target, progress).await,
            None => crate::reconcile::VerifyReport::default(),
        }
    }

    /// A one-line summary for systemd's `STATUS=` (the SCIM address and each target's health).
    pub fn status_line(&self) -> String {
        status_line(self.scim_addr, &self.health.snapshot())
    }

    /// Reload from the config file the daemon was started with: on any error, log them all and
    /// keep the old settings; else swap atomically.
    ///
    /// # Errors
    /// The problems found (the old settings stay in force).
    pub async fn reload(&self) -> Result<(), Vec<ConfigError>> {
        let Some(path) = &self.config_path else {
            return Ok(());
        };
        let new = load_settings(path)?;
        self.check_targets(&new, path).await?;
        self.apply(new)
    }

    /// When a reload changes the targets: check each of the new config's targets live, as
    /// `check-config --connect` does (`targets::check_live`). A problem in the config (a
    /// missing table or column, a type the rule cannot write, an object class or attribute
    /// the directory's schema lacks) refuses the reload; a target that cannot be reached
    /// right now does not (its changes wait, as for a target down at startup), with a
    /// warning.
    async fn check_targets(&self, new: &Settings, path: &Path) -> Result<(), Vec<ConfigError>> {
        let changed = {
            let current = match self.settings.lock() {
                Ok(s) => s,
                Err(p) => p.into_inner(),
            };
            new.raw.targets != current.raw.targets
        };
        if !changed {
            return Ok(());
        }
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let file = path.display().to_string();
        let schemas = crate::mapping::Schemas::new(&new.raw.scim.user_extensions);
        let mut errors = Vec::new();
        for (i, raw) in new.raw.targets.iter().enumerate() {
            let (map, target) = match crate::targets::build_with(raw, i, &schemas) {
                Ok(built) => built,
                Err(errs) => {
                    errors.extend(
                        errs.into_iter()
                            .map(|e| ConfigError::invalid(e.key, e.message).in_file(&file, &text)),
                    );
                    continue;
                }
            };
            match crate::targets::check_live(&map, &target, i).await {
                Ok(()) => {}
                Err(e) if e.class == crate::targets::ErrorClass::Transient => {
                    tracing::warn!(target = %raw.name(), error = %e, "Cannot check the reloaded target against its server (unreachable); the reload goes ahead and its changes wait until it is reachable.");
                }
                Err(e) => {
                    // One error per problem, at the config key it names (so at its line).
                    let prefix = format!("target {}: ", raw.name());
                    let all = e.message.strip_prefix(&prefix).unwrap_or(&e.message);
                    for problem in all.split(&format!("; {prefix}")) {
                        let key = problem_key(problem).unwrap_or_else(|| format!("targets[{i}]"));
                        errors.push(
                            ConfigError::invalid(key, format!("{prefix}{problem}"))
                                .in_file(&file, &text),
                        );
                    }
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// Swap in validated settings. Listen addresses and the store URL need a restart: a change
    /// there is reported as an error and nothing is swapped.
    ///
    /// # Errors
    /// Settings that cannot change without a restart, or a TLS file that does not load.
    pub fn apply(&self, new: Settings) -> Result<(), Vec<ConfigError>> {
        let mut current = match self.settings.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        let mut errors = Vec::new();
        if new.listen != current.listen {
            errors.push(ConfigError::invalid(
                "server.listen",
                "changing the listen address needs a restart",
            ));
        }
        if new.store.url != current.store.url {
            errors.push(ConfigError::invalid(
                "store.url",
                "changing the store needs a restart",
            ));
        }
        if new.reconcile.heartbeat != current.reconcile.heartbeat {
            // The takeover bound was checked against this period (twice it): the running
            // heartbeat keeps the period it started with.
            errors.push(ConfigError::invalid(
                "reconcile.heartbeat_secs",
                "changing the instance heartbeat needs a restart",
            ));
        }
        let tls = match &new.tls {
            Some((cert, key)) => match load_tls(cert, key) {
                Ok(t) => Some(t),
                Err(e) => {
                    errors.push(ConfigError::invalid("server.tls_cert_file", e));
                    None
                }
            },
            None => None,
        };
        let targets_changed = new.raw.targets != current.raw.targets;
        let restart_workers = targets_changed || new.reconcile != current.reconcile;
        let built = if restart_workers {
            match build_targets(&new.raw) {
                Ok(b) => Some(b),
                Err(errs) => {
                    errors.extend(errs);
                    None
                }
            }
        } else {
            None
        };
        if !errors.is_empty() {
            return Err(errors);
        }
        if let Some(built) = built {
            self.restart_reconciler(&new, built, targets_changed);
        }
        let _ = self.http_tx.send(Arc::new(new.http.clone()));
        let _ = self.tls_tx.send(tls);
        crate::telemetry::set_log_level(&new.log_level);
        self.auth.invalidate();
        // The takeover bound the others apply to this instance: raised by a reload that needs
        // more (longer target timeouts, a larger `reconcile.takeover_secs`), re-registered at
        // the next heartbeat with the fence it bounds; never lowered while running (a write
        // started under the longer bound may still be on its way), until a restart.
        {
            let mut r = match self.registration.lock() {
                Ok(r) => r,
                Err(p) => p.into_inner(),
            };
            r.fingerprint = instance::fingerprint(&new);
            let wanted = instance::registration(&new).takeover_ms;
            if wanted > r.takeover_ms {
                tracing::info!(
                    takeover_ms = wanted,
                    was_ms = r.takeover_ms,
                    "The reload raises this instance's takeover bound (reconcile.takeover_secs, or the targets' connect_timeout_secs + timeout_secs); the others use it from the next heartbeat."
                );
                r.takeover_ms = wanted;
            } else if wanted < r.takeover_ms {
                tracing::info!(
                    takeover_ms = r.takeover_ms,
                    wanted_ms = wanted,
                    "The reload would lower this instance's takeover bound (reconcile.takeover_secs); it keeps the larger one until a restart."
                );
            }
        }
        *current = new;
        tracing::info!("Reloaded the configuration.");
        Ok(())
    }

    /// Stop the current workers and start new ones over `built`; when the targets changed,
    /// queue every live resource for every target in the background (a changed attribute map
    /// re-applies to every managed entry).
    fn restart_reconciler(&self, new: &Settings, built: Vec<TargetRuntime>, targets_changed: bool) {
        let names: Vec<String> = built.iter().map(|t| t.name.clone()).collect();
        self.store.set_targets(names.clone());
        self.health.retain(&names);
        let mut slot = match self.reconciler.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if let Some(old) = slot.take() {
            old.cancel.cancel();
            let mut list = match self.progress.lock() {
                Ok(l) => l,
                Err(p) => p.into_inner(),
            };
            list.retain(|c| !old.counters.iter().any(|o| Arc::ptr_eq(o, c)));
        }
        let reconciler = Reconciler::new(
            self.store.clone(),
            new.reconcile.clone(),
            built,
            self.wake.clone(),
            self.health.clone(),
        );
        let boot = if targets_changed {
            Boot::HealthcheckAndRequeue
        } else {
            Boot::Plain
        };
        *slot = Some(start_workers(
            reconciler,
            new,
            &self.tracker,
            &self.cancel,
            &self.progress,
            boot,
            self.scim_addr,
        ));
    }

    /// A token that fires when the daemon must stop (shutdown requested or a task died).
    pub fn cancelled(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// True when a long-running task ended on its own.
    pub fn has_failed(&self) -> bool {
        self.failed.load(Ordering::SeqCst)
    }

    /// Wake the reconciler now.
    pub fn wake(&self) {
        self.wake.notify_waiters();
    }

    /// Stop accepting, drain in-flight requests, stop workers, wait for every task up to the
    /// grace period (plus a margin for the drain). Returns false when tasks had to be abandoned.
    pub async fn shutdown(self) -> bool {
        let (grace, in_flight) = match self.settings.lock() {
            Ok(s) => (s.limits.shutdown_grace, s.longest_write()),
            Err(p) => {
                let s = p.into_inner();
                (s.limits.shutdown_grace, s.longest_write())
            }
        };
        self.cancel.cancel();
        self.tracker.close();
        let done = tokio::time::timeout(
            grace + std::time::Duration::from_secs(1),
            self.tracker.wait(),
        )
        .await
        .is_ok();
        // Every task ended; a write the workers abandoned (a cancelled apply) may still be on
        // its way to a target (an LDAP request handed to its connection, a SQL commit on a
        // blocking thread): the claims are free for the others once the longest write a
        // target can take has passed, as at a restart's release.
        if done {
            let in_flight = i64::try_from(in_flight.as_millis()).unwrap_or(i64::MAX);
            if let Err(error) = self
                .store
                .stop_instance(crate::clock::now_ms(), in_flight)
                .await
            {
                tracing::warn!(error = %error, "Cannot mark this instance stopped; its claims are taken over when its heartbeat runs out.");
            }
        }
        done
    }
}

/// The config key a live-check problem names at its end: `(config key targets[0].users.x)`
/// or `(targets[0].users.object_classes)`.
fn problem_key(problem: &str) -> Option<String> {
    let inner = problem.strip_suffix(')')?.rsplit_once('(')?.1;
    let key = inner.strip_prefix("config key ").unwrap_or(inner);
    key.starts_with("targets[").then(|| key.to_owned())
}

/// What a new generation of workers does first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Boot {
    /// Nothing (reconcile settings changed, targets did not).
    Plain,
    /// Healthcheck every target once (startup).
    Healthcheck,
    /// Healthcheck, then queue every live resource for every target (targets reloaded).
    HealthcheckAndRequeue,
}

/// The systemd status line: the SCIM address and each target's health.
fn status_line(addr: SocketAddr, health: &BTreeMap<String, TargetHealth>) -> String {
    let mut line = format!("Serving SCIM on {addr}");
    if !health.is_empty() {
        let parts: Vec<String> = health
            .iter()
            .map(|(name, h)| format!("{name} {}", h.summary()))
            .collect();
        line.push_str("; targets: ");
        line.push_str(&parts.join(", "));
    }
    line
}

/// Spawn one generation of workers (with a child token of the daemon's), register their
/// progress counters with the watchdog, and run the boot tasks in the background so a target
/// that is down never delays startup.
fn start_workers(
    reconciler: Reconciler,
    settings: &Settings,
    tracker: &TaskTracker,
    cancel: &CancellationToken,
    progress: &systemd::WatchList,
    boot: Boot,
    scim_addr: SocketAddr,
) -> Running {
    let child = cancel.child_token();
    let counters = reconciler.spawn_workers(tracker, &child);
    {
        let mut list = match progress.lock() {
            Ok(l) => l,
            Err(p) => p.into_inner(),
        };
        list.extend(counters.iter().cloned());
    }
    let (booted_tx, booted) = watch::channel(boot == Boot::Plain);
    if boot != Boot::Plain {
        let (rec, token) = (reconciler.clone(), child.clone());
        tracker.spawn(async move {
            let checks = tokio::select! {
                () = token.cancelled() => return,
                c = rec.healthcheck_all() => c,
            };
            if !checks.is_empty() {
                systemd::status(&status_line(scim_addr, &rec.health().snapshot()));
            }
            if boot == Boot::HealthcheckAndRequeue {
                let queued = tokio::select! {
                    () = token.cancelled() => return,
                    q = rec.enqueue_all_live("resync") => q,
                };
                match queued {
                    Ok(n) => tracing::info!(queued = n, "Queued every resource for the reloaded targets."),
                    Err(e) => tracing::error!(error = %e, "Cannot queue resources for the reloaded targets; run `scim-sync reconcile --full`."),
                }
            }
            let _ = booted_tx.send(true);
        });
    }
    if let Some(interval) = settings.reconcile.full_interval {
        let (rec, token) = (reconciler.clone(), child.clone());
        tracker.spawn(async move {
            // One instance at a time, once per interval across the instances sharing the
            // store (`Store::try_job`): after the first interval, try every quarter of it.
            let store = rec.inner.store.clone();
            let interval_ms = i64::try_from(interval.as_millis()).unwrap_or(i64::MAX);
            let mut wait = interval;
            loop {
                tokio::select! {
                    () = token.cancelled() => return,
                    () = tokio::time::sleep(wait) => {}
                }
                wait = (interval / 4).max(std::time::Duration::from_secs(1));
                let turn = match store.try_job("drift-repair", interval_ms, crate::clock::now_ms()).await {
                    Ok(Some(turn)) => turn,
                    Ok(None) => continue,
                    Err(e) => {
                        tracing::warn!(error = %e, "Cannot take the turn for the scheduled drift repair; trying again later.");
                        continue;
                    }
                };
                let report = tokio::select! {
                    () = token.cancelled() => return,
                    report = rec.reconcile_full(None, false, |_, _| {}) => report,
                };
                // Resources skipped for this instance's fence (its heartbeat late): the run is
                // not recorded, so the next turn (on this instance or another) repairs them
                // (third reader's finding 5). The turn's advisory lock goes with `turn`.
                if report.fenced > 0 {
                    tracing::info!(skipped = report.fenced, "The scheduled drift repair skipped resources (this instance's fence does not allow claims); not recorded as run.");
                    continue;
                }
                if let Err(e) = store.job_done(turn, crate::clock::now_ms()).await {
                    tracing::warn!(error = %e, "Cannot record the scheduled drift repair's run.");
                }
            }
        });
    }
    Running {
        reconciler,
        cancel: child,
        counters,
        booted,
    }
}

/// `scim-sync serve`: run until SIGTERM/SIGINT; SIGHUP reloads. The exit code is 0 after a clean
/// shutdown, 1 when startup failed or a task died, 2 for a bad config.
pub fn run(config_path: &Path) -> ExitCode {
    let settings = match load_settings(config_path) {
        Ok(s) => s,
        Err(errors) => {
            for e in &errors {
                eprintln!("config error: {e}");
            }
            return ExitCode::from(2);
        }
    };
    crate::telemetry::init_logging(&settings.log_format, &settings.log_level);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(error) => {
            eprintln!("cannot start the runtime: {error}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async move {
        let (mut controls, signal_loop) = match signals::install() {
            Ok(pair) => pair,
            Err(error) => {
                tracing::error!(error = %error, "Cannot install signal handlers.");
                return ExitCode::from(1);
            }
        };
        let daemon = match Daemon::start(settings, Some(config_path.to_path_buf())).await {
            Ok(d) => d,
            Err(error) => {
                tracing::error!(error = %error, "Startup failed.");
                return ExitCode::from(1);
            }
        };
        // The signal loop is polled here, not spawned: it must outlive the tracker's drain so
        // a second SIGTERM can still exit at once.
        let mut signal_loop = Box::pin(signal_loop);
        systemd::ready(&daemon.status_line());
        let cancelled = daemon.cancelled();
        loop {
            tokio::select! {
                () = &mut signal_loop => {}
                () = cancelled.cancelled() => break,
                control = controls.recv() => match control {
                    Some(signals::Control::Reload) => match daemon.reload().await {
                        Ok(()) => systemd::status(&format!("{} (reloaded)", daemon.status_line())),
                        Err(errors) => {
                            for e in &errors {
                                tracing::error!(error = %e, "Reload rejected; the previous configuration stays in force.");
                            }
                        }
                    },
                    Some(signals::Control::Shutdown) | None => break,
                },
            }
        }
        systemd::stopping();
        tracing::info!("Stopping.");
        let failed = daemon.has_failed();
        let clean = tokio::select! {
            clean = daemon.shutdown() => clean,
            () = &mut signal_loop => false,
        };
        if failed {
            tracing::error!("A task stopped unexpectedly; exiting with an error.");
            return ExitCode::from(1);
        }
        if !clean {
            tracing::warn!("Some tasks did not finish within the grace period.");
        }
        tracing::info!("Stopped.");
        ExitCode::SUCCESS
    })
}

/// Parse a config for the tests and tools that build one in memory.
///
/// # Errors
/// As [`settings::from_raw`].
pub fn settings_from_raw(raw: &RawConfig) -> Result<Settings, Vec<ConfigError>> {
    settings::from_raw(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_ldap_with_a_bind_password_to_a_remote_host_is_refused_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scim-sync.toml");
        let text = "[store]\nurl = \"sqlite:///tmp/x.db\"\n\n[[targets]]\nname = \"corp\"\ntype = \"ldap\"\nurl = \"ldap://ldap.example.com:389\"\nbind_dn = \"cn=admin,dc=example,dc=com\"\nbind_password_env = \"PW\"\n[targets.users]\ndn = \"uid={userName},ou=People,dc=example,dc=com\"\nobject_classes = [\"inetOrgPerson\"]\n[targets.users.attributes]\ncn = \"userName\"\n";
        std::fs::write(&path, text).unwrap();
        let Err(errs) = load_settings(&path) else {
            panic!("a plain ldap:// target carrying a bind password to a remote host loaded");
        };
        let shown: Vec<String> = errs.iter().map(ToString::to_string).collect();
        let want = format!("{}:7: targets[0].url:", path.display());
        assert!(
            shown
                .iter()
                .any(|m| m.starts_with(&want) && m.contains("allow_plaintext")),
            "{shown:?}"
        );
        std::fs::write(
            &path,
            text.replace("bind_dn", "allow_plaintext = true\nbind_dn"),
        )
        .unwrap();
        if let Err(errs) = load_settings(&path) {
            assert!(!errs.iter().any(|e| e.key == "targets[0].url"), "{errs:?}");
        }
    }

    #[test]
    fn a_live_check_problem_is_reported_at_the_key_it_names() {
        assert_eq!(
            problem_key("t.c is INTEGER, ... (config key targets[0].users.columns.c)").as_deref(),
            Some("targets[0].users.columns.c")
        );
        assert_eq!(
            problem_key("no object class `x` (targets[1].users.object_classes)").as_deref(),
            Some("targets[1].users.object_classes")
        );
        assert_eq!(problem_key("healthcheck: no such column: x"), None);
    }

    #[test]
    fn status_line_names_each_targets_health() {
        let addr: SocketAddr = "127.0.0.1:8443".parse().unwrap();
        assert_eq!(
            status_line(addr, &BTreeMap::new()),
            "Serving SCIM on 127.0.0.1:8443"
        );
        let mut health = BTreeMap::new();
        health.insert(
            "a".to_owned(),
            TargetHealth {
                reachable: true,
                detail: "ok".into(),
                refused: BTreeMap::new(),
            },
        );
        health.insert("b".to_owned(), TargetHealth::default());
        health.insert(
            "c".to_owned(),
            TargetHealth {
                reachable: false,
                detail: "connection refused".into(),
                refused: BTreeMap::new(),
            },
        );
        assert_eq!(
            status_line(addr, &health),
            "Serving SCIM on 127.0.0.1:8443; targets: a ok, b unchecked, c failing: connection refused"
        );
    }
}
