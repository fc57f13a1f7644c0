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
//!   commit fails every mutation of the group answers 503, none a false 2xx; when SQLite rolled the
//!   whole transaction back (an I/O error, a full disk) the mutations after it are not run and
//!   answer 503 too;
//! - a request's deadline is checked at the end of its own savepoint as before
//!   ([`super::write_tx_for`]); the group waits for the write lock until the latest deadline
//!   among its mutations.
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
    /// result once the commit's outcome is known (`Some` error: the commit failed).
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
        Box::new(move |commit: Option<&StoreError>| {
            let result = match (result, commit) {
                (Ok(_), Some(e)) => Err(StoreError::Unavailable(format!(
                    "the commit failed; nothing was written: {e}"
                ))),
                (r, _) => r,
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
            run_group(c, jobs);
        }
    }
}

/// One group: one write transaction, a savepoint per job, one commit.
fn run_group(conn: &mut DbConnection, jobs: Vec<Box<dyn Job>>) {
    // The lock is waited for until the last client's deadline; each job checks its own.
    let until = jobs
        .iter()
        .map(|j| j.deadline())
        .try_fold(None::<Instant>, |latest, d| {
            d.map(|d| Some(latest.map_or(d, |l| l.max(d))))
        })
        .flatten();
    let mut finishes: Vec<Finish> = Vec::with_capacity(jobs.len());
    let mut jobs = jobs.into_iter();
    let committed = write_tx_as(conn, gate::Priority::Client, until, |conn| {
        for job in jobs.by_ref() {
            // The job's own `write_tx_for` is a savepoint inside this transaction.
            finishes.push(job.run(conn));
            if !in_transaction(conn)? {
                return Err(StoreError::Unavailable(
                    "the database rolled the transaction back".into(),
                ));
            }
        }
        Ok(())
    });
    let error = committed.err();
    for finish in finishes {
        finish(error.as_ref());
    }
    for job in jobs {
        let text = error.as_ref().map_or_else(String::new, ToString::to_string);
        job.fail(StoreError::Unavailable(text));
    }
}
