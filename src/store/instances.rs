//! The registry of daemons sharing the store (`instances`): registration, the instance
//! heartbeat, the takeover of a dead instance's claims and the listing `status` shows. The
//! fence an instance keeps on itself (how long its claims stay its own) is [`Fence`]: the
//! reconciler's target writes check it (see docs/ARCHITECTURE.md, "Several instances").

use super::dbclock::{self, db_ms};
use super::schema::{instances, outbox, periodic_jobs};
use super::{write_tx, DbConnection, Store, StoreError};
use diesel::prelude::*;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

/// What an instance registers.
#[derive(Debug, Clone)]
pub struct Registration {
    pub host: String,
    pub version: String,
    /// Digest of the mapping configuration (instances with different ones fight over entries).
    pub fingerprint: String,
    /// How long after its last heartbeat the others take over its claims.
    pub takeover_ms: i64,
}

/// One registered instance, as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceInfo {
    pub id: String,
    pub host: String,
    pub version: String,
    pub fingerprint: String,
    pub started_ms: i64,
    /// 0 once it stopped cleanly.
    pub heartbeat_ms: i64,
    pub takeover_ms: i64,
    /// Outbox rows it holds under a live lease.
    pub claims: i64,
}

impl InstanceInfo {
    /// Whether its claims are still its own at `now_ms` (its heartbeat is recent enough).
    #[must_use]
    pub fn live(&self, now_ms: i64) -> bool {
        self.heartbeat_ms > 0 && self.heartbeat_ms.saturating_add(self.takeover_ms) >= now_ms
    }
}

/// How long this process's claims stay its own: until `alive_until_ms` (its last successful
/// heartbeat's start plus its takeover bound, the time after which the others may take its
/// claims over), and only under the `incarnation` it held when it claimed (a takeover bumps
/// it in the store; the next heartbeat notices and takes a new one, so leases taken before
/// stay refused). Unregistered (a CLI, a test): no bound.
#[derive(Debug)]
pub struct Fence {
    pub alive_until_ms: Arc<AtomicI64>,
    pub incarnation: Arc<AtomicI64>,
}

impl Default for Fence {
    fn default() -> Fence {
        Fence {
            alive_until_ms: Arc::new(AtomicI64::new(i64::MAX)),
            incarnation: Arc::new(AtomicI64::new(0)),
        }
    }
}

/// Where a heartbeat started at `now_ms` (local) puts the fence: the takeover bound less
/// [`dbclock::FENCE_MARGIN_MS`]. The heartbeat the peers compare is written no earlier than
/// the database's clock after that reading, and they decide staleness against the database's
/// clock ([`dbclock`]), so the margin only has to cover the clocks' rates (and the local
/// lease ends use the same margin for the measurement's error).
fn fence_end(now_ms: i64, takeover_ms: i64) -> i64 {
    now_ms
        .saturating_add(takeover_ms)
        .saturating_sub(dbclock::FENCE_MARGIN_MS)
}

fn register(
    conn: &mut DbConnection,
    id: &str,
    reg: &Registration,
    now_ms: i64,
) -> Result<i64, StoreError> {
    write_tx(conn, |conn| {
        // One process per id (the instance lock): update, else insert.
        let n = diesel::update(instances::table.find(id))
            .set((
                instances::host.eq(&reg.host),
                instances::version.eq(&reg.version),
                instances::fingerprint.eq(&reg.fingerprint),
                instances::started_ms.eq(now_ms),
                instances::heartbeat_ms.eq(dbclock::no_earlier_than(conn, now_ms)),
                instances::takeover_ms.eq(reg.takeover_ms),
                instances::incarnation.eq(instances::incarnation + 1),
            ))
            .execute(conn)?;
        if n == 0 {
            diesel::insert_into(instances::table)
                .values((
                    instances::id.eq(id),
                    instances::host.eq(&reg.host),
                    instances::version.eq(&reg.version),
                    instances::fingerprint.eq(&reg.fingerprint),
                    instances::started_ms.eq(now_ms),
                    instances::heartbeat_ms.eq(dbclock::no_earlier_than(conn, now_ms)),
                    instances::takeover_ms.eq(reg.takeover_ms),
                    instances::incarnation.eq(1i64),
                ))
                .execute(conn)?;
        }
        Ok(instances::table
            .find(id)
            .select(instances::incarnation)
            .first(conn)?)
    })
}

/// Renew the heartbeat under `incarnation`: false when another instance took this one's
/// claims over since (the incarnation moved), or the row is gone. `now_ms` is database time.
/// The takeover bound is written with it: a reload that raised it (longer target timeouts)
/// takes effect for the others in the same commit that starts the fence it bounds (the
/// daemon never lowers it while running: a write started under the longer bound may still
/// be on its way).
fn heartbeat(
    conn: &mut DbConnection,
    id: &str,
    incarnation: i64,
    reg: &Registration,
    now_ms: i64,
) -> Result<bool, StoreError> {
    write_tx(conn, |conn| {
        let n = diesel::update(
            instances::table
                .filter(instances::id.eq(id))
                .filter(instances::incarnation.eq(incarnation)),
        )
        .set((
            // No earlier than the database's clock: after the reading the fence starts from
            // (`dbclock`), so the peers' bound is never before the fence's end.
            instances::heartbeat_ms.eq(dbclock::no_earlier_than(conn, now_ms)),
            instances::fingerprint.eq(&reg.fingerprint),
            instances::takeover_ms.eq(reg.takeover_ms),
        ))
        .execute(conn)?;
        Ok(n == 1)
    })
}

/// The instances whose claims on `target`'s rows `me` may take over at `now_ms`: registered,
/// not `me`, heartbeat older than their own takeover bound, holding a live lease there. Their
/// incarnation is bumped under the row's lock (PostgreSQL re-checks the heartbeat after
/// waiting for a concurrent heartbeat's commit: a heartbeat that committed first keeps its
/// instance alive), so the late heartbeat of a stopped instance finds it moved. Runs in the
/// claim's transaction; `now_ms` is database time ([`dbclock`]), as the heartbeats compared, and
/// staleness is decided against the database's clock too.
pub(crate) fn take_over(
    conn: &mut DbConnection,
    me: &str,
    target: Option<&str>,
    now_ms: i64,
) -> Result<Vec<String>, StoreError> {
    // Stale by the claimer's reading and, on PostgreSQL, by the database's clock at the
    // statement (`dbclock::no_later_than`): a claimer whose clock runs ahead of its measured
    // offset takes nothing early (second reader's finding 1).
    macro_rules! stale {
        () => {
            (instances::heartbeat_ms + instances::takeover_ms)
                .lt(dbclock::no_later_than(conn, now_ms))
        };
    }
    let dead: Vec<String> = instances::table
        .filter(instances::id.ne(me))
        .filter(stale!())
        .select(instances::id)
        .load(conn)?;
    if dead.is_empty() {
        return Ok(dead);
    }
    let mut holding = outbox::table
        .filter(outbox::claimed_by.eq_any(&dead))
        .filter(outbox::claimed_until_ms.ge(now_ms))
        .select(outbox::claimed_by)
        .distinct()
        .into_boxed();
    if let Some(target) = target {
        holding = holding.filter(outbox::target.eq(target.to_owned()));
    }
    let holding: Vec<String> = holding
        .load::<Option<String>>(conn)?
        .into_iter()
        .flatten()
        .collect();
    if holding.is_empty() {
        return Ok(holding);
    }
    diesel::update(
        instances::table
            .filter(instances::id.eq_any(&holding))
            .filter(stale!()),
    )
    .set(instances::incarnation.eq(instances::incarnation + 1))
    .execute(conn)?;
    // The rows just updated are locked by this transaction: their heartbeat cannot move
    // before the claim commits.
    Ok(instances::table
        .filter(instances::id.eq_any(&holding))
        .filter(stale!())
        .select(instances::id)
        .load(conn)?)
}

/// The registry, with the times in the caller's clock (database time minus the offset).
fn list(conn: &mut DbConnection, now_ms: i64) -> Result<Vec<InstanceInfo>, StoreError> {
    let offset = dbclock::current();
    let now_ms = db_ms(now_ms);
    let rows: Vec<(String, String, String, String, i64, i64, i64)> = instances::table
        .order(instances::id)
        .select((
            instances::id,
            instances::host,
            instances::version,
            instances::fingerprint,
            instances::started_ms,
            instances::heartbeat_ms,
            instances::takeover_ms,
        ))
        .load(conn)?;
    let held: Vec<(Option<String>, i64)> = outbox::table
        .filter(outbox::claimed_by.is_not_null())
        .filter(outbox::claimed_until_ms.ge(now_ms))
        .group_by(outbox::claimed_by)
        .select((outbox::claimed_by, diesel::dsl::count_star()))
        .load(conn)?;
    Ok(rows
        .into_iter()
        .map(
            |(id, host, version, fingerprint, started_ms, heartbeat_ms, takeover_ms)| {
                let claims = held
                    .iter()
                    .find(|(by, _)| by.as_deref() == Some(id.as_str()))
                    .map_or(0, |(_, n)| *n);
                InstanceInfo {
                    id,
                    host,
                    version,
                    fingerprint,
                    started_ms: started_ms.saturating_sub(offset),
                    // 0 (stopped) stays 0.
                    heartbeat_ms: if heartbeat_ms > 0 {
                        heartbeat_ms.saturating_sub(offset).max(1)
                    } else {
                        heartbeat_ms
                    },
                    takeover_ms,
                    claims,
                }
            },
        )
        .collect())
}

/// The channel a commit that queued outbox rows notifies (PostgreSQL), so every instance's
/// workers wake, not only the committing one's.
pub(crate) const CHANNEL: &str = "scim_sync_outbox";

thread_local! {
    /// Inside a PostgreSQL write transaction ([`NotifyScope`]): whether it queued rows.
    static QUEUED: std::cell::Cell<Option<bool>> = const { std::cell::Cell::new(None) };
    /// The store's count of `NOTIFY` statements sent (installed by `Store::run`).
    static SENT: std::cell::RefCell<Option<Arc<AtomicU64>>> = const { std::cell::RefCell::new(None) };
}

/// The span of one PostgreSQL write transaction (`write_tx`, at its start): rows queued in it
/// ([`notify_queued`], from every mutation step: each group of a user delete, each ancestor of
/// a nested group) send one `NOTIFY` at its end, before the commit ([`NotifyScope::finish`]),
/// instead of one statement per step (PostgreSQL delivers one per transaction anyway; second
/// reader's finding 8). A step rolled back to a savepoint after it queued leaves the flag set:
/// one spare wake-up at worst, never a lost one. SQLite has no `NOTIFY` (and its group commit
/// of several mutations in one transaction sends nothing either).
pub(crate) struct NotifyScope {
    previous: Option<bool>,
}

impl NotifyScope {
    pub(crate) fn begin() -> NotifyScope {
        NotifyScope {
            previous: QUEUED.with(|q| q.replace(Some(false))),
        }
    }

    /// Before the commit: the one `NOTIFY`, when rows were queued.
    pub(crate) fn finish(&self, conn: &mut DbConnection) -> Result<(), StoreError> {
        if QUEUED.with(|q| q.replace(Some(false))) == Some(true) {
            if let DbConnection::Pg(c) = conn {
                send_notify(c)?;
            }
        }
        Ok(())
    }
}

impl Drop for NotifyScope {
    fn drop(&mut self) {
        let previous = self.previous;
        QUEUED.with(|q| q.set(previous));
    }
}

/// Count `NOTIFY` statements in `counter` on this thread until the guard drops.
pub(crate) struct CountingNotifies {
    previous: Option<Arc<AtomicU64>>,
}

pub(crate) fn count_notifies(counter: Arc<AtomicU64>) -> CountingNotifies {
    CountingNotifies {
        previous: SENT.with(|s| s.replace(Some(counter))),
    }
}

impl Drop for CountingNotifies {
    fn drop(&mut self) {
        let previous = self.previous.take();
        SENT.with(|s| *s.borrow_mut() = previous);
    }
}

fn send_notify(c: &mut diesel::PgConnection) -> Result<(), StoreError> {
    diesel::sql_query(format!("NOTIFY {CHANNEL}")).execute(c)?;
    SENT.with(|s| {
        if let Some(n) = s.borrow().as_ref() {
            n.fetch_add(1, Ordering::Relaxed);
        }
    });
    Ok(())
}

/// In the transaction that queued rows (PostgreSQL): notify [`CHANNEL`] at its commit (one
/// `NOTIFY` statement per write transaction, whatever the rows and steps: [`NotifyScope`];
/// none when it rolls back). Outside a write transaction's scope, at once.
pub(crate) fn notify_queued(conn: &mut DbConnection) -> Result<(), StoreError> {
    if let DbConnection::Pg(c) = conn {
        if QUEUED.with(|q| q.get().is_some()) {
            QUEUED.with(|q| q.set(Some(true)));
        } else {
            send_notify(c)?;
        }
    }
    Ok(())
}

/// How often the change listener looks for notifications, and how long it waits before
/// connecting again after losing its connection.
const LISTEN_POLL: std::time::Duration = std::time::Duration::from_millis(50);
const LISTEN_RETRY: std::time::Duration = std::time::Duration::from_secs(1);
/// How often the listener asks its connection a question (`SELECT 1`): waiting for
/// notifications reads nothing from a connection that died without a word (a failover to
/// another host, a dropped route), so without it the listener would wait forever on a dead
/// socket and wake-ups would fall back to the poll interval for good.
const LISTEN_KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(5);
/// The listener's `application_name` (`pg_stat_activity`; tests terminate its backend).
pub(crate) const LISTENER_NAME: &str = "scim-sync-listen";

/// The listener's connection URL: `url` with TCP keepalives and a user timeout, so that the
/// keepalive query on a silently dead connection fails within seconds instead of waiting out
/// the kernel's retransmissions (libpq connection parameters, PostgreSQL 12 or later for
/// `tcp_user_timeout`).
fn listener_url(url: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!(
        "{url}{sep}application_name={LISTENER_NAME}&keepalives=1&keepalives_idle=5&\
         keepalives_interval=2&keepalives_count=3&tcp_user_timeout=10000"
    )
}

/// The listener's loop (a thread of its own): `LISTEN`, call `on_change` for every
/// notification (and once after each (re)connect: notifications sent while it was away are
/// lost), until `stop`. A connection that fails (the backend terminated, PostgreSQL
/// restarted) or stops answering the keepalive query is dropped and established again.
/// Sleeps on its own thread, never a runtime's.
#[allow(clippy::disallowed_methods)]
fn listen(url: &str, on_change: &(dyn Fn() + Send + Sync), ended: &dyn Fn() -> bool) {
    use diesel::Connection;
    let url = listener_url(url);
    let mut logged = false;
    while !ended() {
        let conn = diesel::PgConnection::establish(&url)
            .map_err(|e| e.to_string())
            .and_then(|mut c| {
                diesel::sql_query(format!("LISTEN {CHANNEL}"))
                    .execute(&mut c)
                    .map_err(|e| e.to_string())?;
                Ok(c)
            });
        let mut conn = match conn {
            Ok(c) => {
                logged = false;
                c
            }
            Err(e) => {
                if !logged {
                    tracing::warn!(error = %e, "Cannot listen for other instances' changes; retrying (their pushes wait for the poll interval meanwhile).");
                    logged = true;
                }
                std::thread::sleep(LISTEN_RETRY);
                continue;
            }
        };
        on_change();
        let mut asked = std::time::Instant::now();
        'connected: while !ended() {
            let mut woke = false;
            for n in conn.notifications_iter() {
                match n {
                    Ok(_) => woke = true,
                    Err(e) => {
                        tracing::info!(error = %e, "The change listener lost its connection; connecting again.");
                        break 'connected;
                    }
                }
            }
            if woke {
                on_change();
            }
            if asked.elapsed() >= LISTEN_KEEPALIVE {
                if let Err(e) = diesel::sql_query("SELECT 1").execute(&mut conn) {
                    tracing::info!(error = %e, "The change listener's connection does not answer; connecting again.");
                    break 'connected;
                }
                asked = std::time::Instant::now();
            }
            std::thread::sleep(LISTEN_POLL);
        }
    }
}

/// A periodic job's turn ([`Store::try_job`]): on PostgreSQL a connection of its own holding
/// the job's session advisory lock (released when the connection closes, a crash included).
pub struct JobTurn {
    name: String,
    _lock: Option<diesel::PgConnection>,
}

impl std::fmt::Debug for JobTurn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobTurn").field("name", &self.name).finish()
    }
}

fn last_run(conn: &mut DbConnection, name: &str) -> Result<Option<i64>, StoreError> {
    Ok(periodic_jobs::table
        .find(name)
        .select(periodic_jobs::last_run_ms)
        .first(conn)
        .optional()?)
}

/// `now_ms` is the caller's reading: written as database time ([`dbclock`]), as `try_job`
/// compares it, so instances whose clocks differ agree on when a job last ran.
fn record_run(conn: &mut DbConnection, name: &str, now_ms: i64) -> Result<(), StoreError> {
    let now_ms = db_ms(now_ms);
    write_tx(conn, |conn| {
        let n = diesel::update(periodic_jobs::table.find(name))
            .set(periodic_jobs::last_run_ms.eq(now_ms))
            .execute(conn)?;
        if n == 0 {
            diesel::insert_into(periodic_jobs::table)
                .values((
                    periodic_jobs::name.eq(name),
                    periodic_jobs::last_run_ms.eq(now_ms),
                ))
                .execute(conn)?;
        }
        Ok(())
    })
}

impl Store {
    /// The turn to run periodic job `name` at `now_ms`: `None` while another instance runs it
    /// (PostgreSQL: `pg_try_advisory_lock` on a connection of its own), or when it last ran
    /// less than `interval_ms` ago (any instance). The lock only keeps the instances from
    /// running a job twice at once; what the job writes is fenced as any write (drift repair
    /// takes claims). Finish with [`Store::job_done`].
    ///
    /// # Errors
    /// The store's errors.
    pub async fn try_job(
        &self,
        name: &str,
        interval_ms: i64,
        now_ms: i64,
    ) -> Result<Option<JobTurn>, StoreError> {
        let url = self.inner.pg_url.clone();
        let key = name.to_owned();
        let lock = tokio::task::spawn_blocking(
            move || -> Result<Option<Option<diesel::PgConnection>>, StoreError> {
                use diesel::sql_types::{Bool, Text};
                use diesel::Connection;
                let Some(url) = url else {
                    return Ok(Some(None));
                };
                let mut conn = diesel::PgConnection::establish(&url)
                    .map_err(|e| StoreError::Unavailable(e.to_string()))?;
                #[derive(diesel::QueryableByName)]
                struct Locked {
                    #[diesel(sql_type = Bool)]
                    locked: bool,
                }
                let got: Locked = diesel::sql_query(
                    "SELECT pg_try_advisory_lock(hashtext('scim-sync/job/' || $1)) AS locked",
                )
                .bind::<Text, _>(&key)
                .get_result(&mut conn)?;
                Ok(got.locked.then_some(Some(conn)))
            },
        )
        .await
        .map_err(|e| StoreError::Other(format!("store task failed: {e}")))??;
        let Some(lock) = lock else {
            return Ok(None);
        };
        let key = name.to_owned();
        // Database time on both sides (`record_run`).
        let (last, now_db) = self
            .run(move |conn| Ok((last_run(conn, &key)?, db_ms(now_ms))))
            .await?;
        if last.is_some_and(|l| l.saturating_add(interval_ms) > now_db) {
            return Ok(None);
        }
        Ok(Some(JobTurn {
            name: name.to_owned(),
            _lock: lock,
        }))
    }

    /// Record that the job of `turn` ran (at `now_ms`) and give the turn up.
    ///
    /// # Errors
    /// The store's errors.
    pub async fn job_done(&self, turn: JobTurn, now_ms: i64) -> Result<(), StoreError> {
        let name = turn.name.clone();
        let recorded = self.run(move |conn| record_run(conn, &name, now_ms)).await;
        // The lock goes with its connection, after the record.
        tokio::task::spawn_blocking(move || drop(turn))
            .await
            .map_err(|e| StoreError::Other(format!("store task failed: {e}")))?;
        recorded
    }

    /// PostgreSQL: call `on_change` whenever any instance committed queued outbox rows (a
    /// `LISTEN` on a connection of its own, on a thread of its own, reconnecting by itself),
    /// until `stop` is set or the store is dropped. Nothing on SQLite (one instance; its own
    /// wake-ups suffice).
    pub fn listen_for_changes(
        &self,
        on_change: Arc<dyn Fn() + Send + Sync>,
        stop: Arc<std::sync::atomic::AtomicBool>,
    ) {
        let Some(url) = self.inner.pg_url.clone() else {
            return;
        };
        // The listener also ends once the store is gone (a daemon dropped without its
        // shutdown, as tests do): a thread still connecting to PostgreSQL while the process
        // exits races libpq's and OpenSSL's exit handlers (an integration test binary ended in
        // SIGSEGV after all its tests passed).
        let store = Arc::downgrade(&self.inner);
        let spawned = std::thread::Builder::new()
            .name("scim-sync-listen".into())
            .spawn(move || {
                let ended = || stop.load(Ordering::SeqCst) || store.strong_count() == 0;
                listen(&url, on_change.as_ref(), &ended);
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "Cannot start the change listener.");
        }
    }

    /// This process's fence (see [`Fence`]); unbounded until [`Store::register_instance`].
    #[must_use]
    pub fn fence(&self) -> &Fence {
        &self.inner.fence
    }

    /// Register this store's instance id (a new incarnation; the heartbeat starts now) and
    /// bound its fence by `reg.takeover_ms`. Call once the instance lock is held and before
    /// any claim.
    ///
    /// # Errors
    /// The store's errors.
    pub async fn register_instance(
        &self,
        reg: Registration,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let id = self.inner.instance_id.clone();
        let takeover = reg.takeover_ms;
        let me = self.clone();
        let (offset, incarnation) = self
            .run(move |conn| {
                let offset = dbclock::measure(conn, &|| me.local_ms())?;
                Ok((offset, register(conn, &id, &reg, db_ms(now_ms))?))
            })
            .await?;
        self.keep_offset(offset);
        let fence = &self.inner.fence;
        fence.incarnation.store(incarnation, Ordering::SeqCst);
        if self.shares_claims() {
            fence
                .alive_until_ms
                .store(fence_end(now_ms, takeover), Ordering::SeqCst);
        }
        Ok(())
    }

    /// Keep a measured offset to the database's clock (`None`: SQLite, nothing measured).
    fn keep_offset(&self, offset: Option<i64>) {
        if let Some(offset) = offset {
            self.inner.clock_offset_ms.store(offset, Ordering::SeqCst);
        }
    }

    /// Whether other instances can take this one's claims over: PostgreSQL. A SQLite file is
    /// held by one process (its file lock), so its fence stays unbounded: a heartbeat stuck
    /// behind the write lock (a long drift repair, a CLI write) must not stop every target
    /// write when nobody could take over anyway.
    #[must_use]
    pub fn shares_claims(&self) -> bool {
        self.inner.pg_url.is_some()
    }

    /// Renew the instance heartbeat, started at `now_ms` (read before the call). When another
    /// instance took this one's claims over meanwhile, take a new incarnation: every lease
    /// taken under the old one stays refused. Returns false in that case.
    ///
    /// # Errors
    /// The store's errors (the fence then runs out on its own and writes stop).
    pub async fn instance_heartbeat(
        &self,
        reg: Registration,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let id = self.inner.instance_id.clone();
        let fence = &self.inner.fence;
        let incarnation = fence.incarnation.load(Ordering::SeqCst);
        let takeover = reg.takeover_ms;
        let (offset, kept) = {
            let reg = reg.clone();
            let me = self.clone();
            self.run(move |conn| {
                let offset = dbclock::measure(conn, &|| me.local_ms())?;
                let kept = heartbeat(conn, &id, incarnation, &reg, db_ms(now_ms))?;
                Ok((offset, kept))
            })
            .await?
        };
        self.keep_offset(offset);
        if kept {
            // Heartbeats are sequential (one task): each moves the fence to its own start.
            if self.shares_claims() {
                fence
                    .alive_until_ms
                    .store(fence_end(now_ms, takeover), Ordering::SeqCst);
            }
            return Ok(true);
        }
        // Taken over: the claims held under the old incarnation are another's now.
        fence.incarnation.store(-1, Ordering::SeqCst);
        self.register_instance(reg, now_ms).await?;
        Ok(false)
    }

    /// Mark this instance stopped at `now_ms`, after its workers finished: its claims are free
    /// for the others once `in_flight_ms` has passed (a write an abandoned apply handed to a
    /// target may still arrive until then: the longest write a target can take), not at once.
    /// Its heartbeat is set so that it counts as stale exactly then.
    ///
    /// # Errors
    /// The store's errors.
    pub async fn stop_instance(&self, now_ms: i64, in_flight_ms: i64) -> Result<(), StoreError> {
        let id = self.inner.instance_id.clone();
        let incarnation = self.inner.fence.incarnation.load(Ordering::SeqCst);
        self.inner
            .fence
            .alive_until_ms
            .store(i64::MIN, Ordering::SeqCst);
        self.run(move |conn| {
            write_tx(conn, |conn| {
                let mine = instances::table
                    .filter(instances::id.eq(&id))
                    .filter(instances::incarnation.eq(incarnation));
                let Some(takeover) = mine
                    .select(instances::takeover_ms)
                    .first::<i64>(conn)
                    .optional()?
                else {
                    return Ok(());
                };
                // Stale `in_flight_ms` after the stop, in database time no earlier than the
                // database's clock (`dbclock::no_earlier_than`).
                let stale_from = dbclock::no_earlier_than_plus(
                    conn,
                    db_ms(now_ms),
                    in_flight_ms.saturating_sub(takeover),
                );
                diesel::update(mine)
                    .set(instances::heartbeat_ms.eq(stale_from))
                    .execute(conn)?;
                Ok(())
            })
        })
        .await
    }

    /// Every registered instance, by id, with the claims it holds.
    ///
    /// # Errors
    /// The store's errors.
    pub async fn instances(&self, now_ms: i64) -> Result<Vec<InstanceInfo>, StoreError> {
        self.run(move |conn| list(conn, now_ms)).await
    }
}
