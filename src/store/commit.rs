//! Group commit of clients' mutations on a SQLite file.
//!
//! SQLite has one writer, and every commit waits for the disk (`synchronous = FULL`: the WAL is
//! synced). One transaction per push made the pushes' rate the disk's sync rate shared with the
//! workers' writes, plus a thread hand-off, a pooled connection and a turn in the write queue per
//! push. So clients' mutations (create, replace, patch, delete of users and groups) queue here
//! instead: the first to arrive while no one leads becomes the leader, on the blocking pool; it
//! takes up to [`MAX_GROUP`] queued mutations, runs them in one write transaction
//! ([`super::write_tx`] with the client priority), each in its own savepoint, commits once and
//! hands each its result; then the next group, until the queue is empty.
//!
//! Each mutation stays exactly what it was alone:
//! - its writes (resource, outbox, audit) are one savepoint: a mutation that fails (409, 412, a
//!   passed deadline) rolls back its own writes only, and its client gets its own answer;
//! - it sees the mutations before it in the group as committed ones (the same order as one
//!   transaction each, in the order the leader took them);
//! - its client is answered only after the group's commit, with that commit's result: when the
//!   commit fails every mutation of the group answers 503 (whatever it answered alone: a 409
//!   may have come from an earlier mutation of the group that is not committed either), none a
//!   false 2xx; when SQLite rolled the whole transaction back (an I/O error, a full disk) the
//!   mutations after it are not run and answer 503 too;
//! - a request past its deadline is never committed: one already past it when its turn comes
//!   is not run; each checks its deadline at the end of its own savepoint as before
//!   ([`super::write_tx_for`]); and right before the commit the group is rolled back to the
//!   first mutation whose deadline passed meanwhile, which answers 503 with every one after it
//!   (they may have seen its writes); the group waits for the write lock until the latest
//!   deadline among its mutations;
//! - a group counts as one client write per mutation in the write gate's turn order
//!   ([`gate::WriteGate::note_client_writes`]): a waiting background write (a worker's settle,
//!   a heartbeat) goes after each full group, as it went after [`gate::CLIENT_BURST`] pushes;
//! - a mutation that panics answers 500 (its channel closes); its group answers 503 and the
//!   connection is discarded (the transaction manager's state is unknown after a panic); the
//!   queue goes on with a new connection.
//!
//! PostgreSQL commits concurrently (and groups commits itself): there each mutation keeps its
//! own transaction ([`super::Store::run_mutation`]).

use super::{gate, in_transaction, write_tx_as, DbConnection, Inner, StoreError};
use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

/// Mutations per commit at most: bounds how long one group holds the write lock (the workers'
/// writes wait behind it) and the latency the first of a group pays for the last.
pub(crate) const MAX_GROUP: usize = 32;

/// One queued mutation: runs in the leader's transaction, then learns the commit's outcome.
pub(crate) trait Job: Send {
    /// Until when its client waits (its request's deadline), if it has one.
    fn deadline(&self) -> Option<Instant>;
    /// Run the mutation (inside the group's transaction); the returned closure delivers its
    /// result once the commit's outcome is known (`Some` error: its writes were not committed,
    /// and it answers 503 whatever it returned).
    fn run(self: Box<Self>, conn: &mut DbConnection) -> Finish;
    /// Answer without running: the group could not be run (no connection, a rolled-back
    /// transaction).
    fn fail(self: Box<Self>, error: StoreError);
}

/// Delivers a mutation's result given the commit's outcome.
pub(crate) type Finish = Box<dyn FnOnce(Option<&StoreError>) + Send>;

/// A typed mutation and the channel its caller waits on.
pub(crate) struct JobOf<F, T> {
    pub(crate) f: F,
    pub(crate) deadline: Option<Instant>,
    pub(crate) tx: tokio::sync::oneshot::Sender<Result<T, StoreError>>,
}

impl<F, T> Job for JobOf<F, T>
where
    F: FnOnce(&mut DbConnection) -> Result<T, StoreError> + Send + 'static,
    T: Send + 'static,
{
    fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    fn run(self: Box<Self>, conn: &mut DbConnection) -> Finish {
        let JobOf { f, tx, .. } = *self;
        let result = f(conn);
        Box::new(move |not_committed: Option<&StoreError>| {
            let result = match not_committed {
                Some(e) => Err(StoreError::Unavailable(format!("nothing was written: {e}"))),
                None => result,
            };
            let _ = tx.send(result);
        })
    }

    fn fail(self: Box<Self>, error: StoreError) {
        let _ = self.tx.send(Err(error));
    }
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Box<dyn Job>>,
    /// A leader is running (or about to): it takes every job queued before it stops.
    leading: bool,
}

/// The queue of clients' mutations (see the module docs).
#[derive(Default)]
pub(crate) struct Committer {
    queue: Mutex<Queue>,
    /// Jobs submitted and groups run, for the tests.
    #[cfg(test)]
    pub(crate) counts: Counts,
}

/// See [`Committer::counts`].
#[cfg(test)]
#[derive(Default)]
pub(crate) struct Counts {
    pub(crate) submitted: std::sync::atomic::AtomicU64,
    pub(crate) groups: std::sync::atomic::AtomicU64,
}

impl Committer {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queue `job`; true when the caller must start a leader ([`lead`]).
    pub(crate) fn submit(&self, job: Box<dyn Job>) -> bool {
        let mut q = self.lock();
        q.jobs.push_back(job);
        #[cfg(test)]
        self.counts
            .submitted
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        !std::mem::replace(&mut q.leading, true)
    }

    /// Jobs waiting for a leader's group (not yet taken).
    #[cfg(test)]
    pub(crate) fn queued(&self) -> usize {
        self.lock().jobs.len()
    }

    /// The leader this caller started never ran (the runtime is shutting down): stop leading
    /// and answer every queued job 503, so none waits for nothing.
    pub(crate) fn abandon(&self) {
        let jobs: Vec<Box<dyn Job>> = {
            let mut q = self.lock();
            q.leading = false;
            q.jobs.drain(..).collect()
        };
        for job in jobs {
            job.fail(StoreError::Unavailable("the store is shutting down".into()));
        }
    }

    /// The next group, oldest first; empty (and no longer leading) when nothing waits. The
    /// check and the hand-over are one step under the lock, so a job queued after it finds
    /// `leading` false and starts a leader itself.
    fn take(&self) -> Vec<Box<dyn Job>> {
        let mut q = self.lock();
        let n = q.jobs.len().min(MAX_GROUP);
        if n == 0 {
            q.leading = false;
        }
        q.jobs.drain(..n).collect()
    }
}

/// Ends the leader's turn however it ends: on a panic the jobs still queued answer 503 (their
/// clients would wait for nothing) and the next job starts a new leader.
struct Leading<'a>(&'a Committer);

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let jobs: Vec<Box<dyn Job>> = {
            let mut q = self.0.lock();
            q.leading = false;
            q.jobs.drain(..).collect()
        };
        for job in jobs {
            job.fail(StoreError::Unavailable("the store's writer failed".into()));
        }
    }
}

/// The leader: run groups until the queue is empty (on the blocking pool).
pub(crate) fn lead(inner: &Inner, committer: &Committer) {
    let _leading = Leading(committer);
    let _gate = gate::install(inner.write_gate.clone());
    // As `Store::run` does (0 on SQLite, the only store that groups).
    let _clock = super::dbclock::install(
        inner
            .clock_offset_ms
            .load(std::sync::atomic::Ordering::SeqCst),
    );
    let mut conn = None;
    loop {
        let jobs = committer.take();
        if jobs.is_empty() {
            return;
        }
        if conn.is_none() {
            match inner.pool.get() {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    for job in jobs {
                        job.fail(StoreError::Unavailable(e.to_string()));
                    }
                    continue;
                }
            }
        }
        if let Some(c) = conn.as_mut() {
            #[cfg(test)]
            committer
                .counts
                .groups
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let weight = u32::try_from(jobs.len()).unwrap_or(u32::MAX);
            let clean = run_group(c, jobs);
            if let Some(g) = &inner.write_gate {
                g.note_client_writes(weight);
            }
            if !clean {
                // Whatever state a failed commit or a panic left: a fresh connection next.
                conn = None;
            }
        }
    }
}

/// The savepoint the leader sets before job `i` of a group.
fn savepoint(conn: &mut DbConnection, i: usize) -> Result<(), StoreError> {
    diesel::RunQueryDsl::execute(diesel::sql_query(format!("SAVEPOINT group_job_{i}")), conn)?;
    Ok(())
}

/// Undo job `i` of the group and every job after it.
fn rollback_to(conn: &mut DbConnection, i: usize) -> Result<(), StoreError> {
    diesel::RunQueryDsl::execute(
        diesel::sql_query(format!("ROLLBACK TO SAVEPOINT group_job_{i}")),
        conn,
    )?;
    Ok(())
}

fn passed(deadline: Option<Instant>) -> bool {
    deadline.is_some_and(|d| Instant::now() >= d)
}

/// One group: one write transaction, a savepoint per job, one commit. False when the
/// transaction failed (the connection is then not reused).
fn run_group(conn: &mut DbConnection, jobs: Vec<Box<dyn Job>>) -> bool {
    // The lock is waited for until the last client's deadline; each job checks its own.
    let until = jobs
        .iter()
        .map(|j| j.deadline())
        .try_fold(None::<Instant>, |latest, d| {
            d.map(|d| Some(latest.map_or(d, |l| l.max(d))))
        })
        .flatten();
    let mut ran: Vec<(Option<Instant>, Finish)> = Vec::with_capacity(jobs.len());
    let mut cut = None;
    let mut jobs = jobs.into_iter();
    let committed = write_tx_as(conn, gate::Priority::Client, until, |conn| {
        for job in jobs.by_ref() {
            let deadline = job.deadline();
            if passed(deadline) {
                job.fail(StoreError::Unavailable(
                    "the request's deadline passed before its turn to write".into(),
                ));
                continue;
            }
            savepoint(conn, ran.len())?;
            let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job.run(conn)));
            let Ok(finish) = run else {
                // The job's channel closed in the unwind: its client gets a 500.
                return Err(StoreError::Other("a mutation of the group panicked".into()));
            };
            ran.push((deadline, finish));
            if !in_transaction(conn)? {
                return Err(StoreError::Unavailable(
                    "the database rolled the transaction back".into(),
                ));
            }
        }
        // Never commit a mutation whose client was (or is about to be) told its deadline
        // passed: undo the first such and every one after it (they may have seen its writes).
        if let Some(i) = ran.iter().position(|(d, _)| passed(*d)) {
            rollback_to(conn, i)?;
            cut = Some(i);
        }
        Ok(())
    });
    let error = committed.as_ref().err();
    let late = StoreError::Unavailable("the request's deadline passed before commit".into());
    for (i, (_, finish)) in ran.into_iter().enumerate() {
        if error.is_none() && cut.is_some_and(|c| i >= c) {
            finish(Some(&late));
        } else {
            finish(error);
        }
    }
    for job in jobs {
        let text = error.map_or_else(String::new, ToString::to_string);
        job.fail(StoreError::Unavailable(text));
    }
    committed.is_ok()
}
