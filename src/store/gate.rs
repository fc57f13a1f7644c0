//! The in-process queue for SQLite's one write lock.
//!
//! SQLite lets one connection write at a time, and a connection that finds the lock taken
//! waits in SQLite's busy handler: it sleeps (1 ms, then longer, up to 100 ms) and tries again.
//! Whoever tries at the right moment wins, so a writer that arrives while others write back to
//! back can lose for seconds. That happened to a push during an LDAP outage: the workers'
//! claims, heartbeats and failure settles kept the lock busy and a client's create waited over a
//! second (`faults::ldap_outage_during_pushes_converges`; unit test
//! `store::tests::a_client_write_goes_ahead_of_queued_background_writes`).
//!
//! So the daemon's own writers queue here first, and only the holder of the gate asks SQLite
//! for the lock (other processes, e.g. a CLI command beside the daemon, still meet the busy
//! handler). Each class is served in arrival order. A client's mutation ([`Priority::Client`], from `write_tx_for`) goes ahead of
//! waiting background writes (workers, drift repair, housekeeping), but after
//! [`CLIENT_BURST`] client writes in a row a waiting background write goes next: a push waits
//! at most for the write in progress and one background write, and the workers are never
//! starved by a steady stream of pushes. PostgreSQL has row locks and needs no gate.

use super::StoreError;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Client writes granted in a row while a background write waits.
pub(crate) const CLIENT_BURST: u32 = 4;

/// Who is writing: a client's mutation goes first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Priority {
    /// A SCIM client's mutation, or a write its request waits on (the token's last use).
    Client,
    /// Everything else: workers (claims, heartbeats, settles), drift repair, the CLI.
    Background,
}

#[derive(Default)]
struct State {
    held: bool,
    /// Tickets of the waiting writers of each class, oldest first: a class is served in the
    /// order it arrived, so no worker's settle loses to later ones until its timeout.
    clients: VecDeque<u64>,
    background: VecDeque<u64>,
    next_ticket: u64,
    /// Client grants since the last background grant.
    clients_in_row: u32,
}

impl State {
    fn queue(&mut self, priority: Priority) -> &mut VecDeque<u64> {
        match priority {
            Priority::Client => &mut self.clients,
            Priority::Background => &mut self.background,
        }
    }

    fn leave(&mut self, priority: Priority, ticket: u64) {
        self.queue(priority).retain(|t| *t != ticket);
    }
}

/// See the module docs.
pub(crate) struct WriteGate {
    state: Mutex<State>,
    turn: Condvar,
    /// How long a writer waits for the gate, as for the SQLite lock (`busy_timeout_ms`).
    timeout: Duration,
}

/// Holding it is the turn to write; dropping it gives the turn on.
pub(crate) struct Turn<'a> {
    gate: &'a WriteGate,
}

impl WriteGate {
    pub(crate) fn new(timeout: Duration) -> WriteGate {
        WriteGate {
            state: Mutex::new(State::default()),
            turn: Condvar::new(),
            timeout,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Wait for the turn to write, at most until `until` (and the gate's timeout).
    ///
    /// # Errors
    /// `Unavailable` when the turn did not come in time, like SQLITE_BUSY after the busy
    /// timeout.
    pub(crate) fn enter(
        &self,
        priority: Priority,
        until: Option<Instant>,
    ) -> Result<Turn<'_>, StoreError> {
        let limit = Instant::now() + self.timeout;
        let until = until.map_or(limit, |u| u.min(limit));
        let mut state = self.lock();
        let ticket = state.next_ticket;
        state.next_ticket = state.next_ticket.wrapping_add(1);
        state.queue(priority).push_back(ticket);
        loop {
            let first = state.queue(priority).front() == Some(&ticket);
            let may = !state.held
                && first
                && match priority {
                    Priority::Client => {
                        state.background.is_empty() || state.clients_in_row < CLIENT_BURST
                    }
                    Priority::Background => {
                        state.clients.is_empty() || state.clients_in_row >= CLIENT_BURST
                    }
                };
            if may {
                state.held = true;
                state.leave(priority, ticket);
                state.clients_in_row = match priority {
                    Priority::Client => state.clients_in_row.saturating_add(1),
                    Priority::Background => 0,
                };
                return Ok(Turn { gate: self });
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                state.leave(priority, ticket);
                // Who may go next can have changed with this writer gone.
                self.turn.notify_all();
                return Err(StoreError::Unavailable(
                    "the database stayed busy with other writes; try again".into(),
                ));
            }
            state = self
                .turn
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.gate.lock().held = false;
        // Few writers wait at once (workers, heartbeats, in-flight pushes); each rechecks.
        self.gate.turn.notify_all();
    }
}

thread_local! {
    /// The gate of the store whose closure runs on this thread (set by `Store::run`), so
    /// `write_tx` finds it without threading it through every store function.
    static CURRENT: RefCell<Option<Arc<WriteGate>>> = const { RefCell::new(None) };
}

/// Installs a store's gate for the closure running on this thread; restores on drop.
pub(crate) struct Installed {
    previous: Option<Arc<WriteGate>>,
}

/// Make `gate` the one `write_tx` uses on this thread until the result is dropped.
impl WriteGate {
    /// Whether a client's write waits for the turn (a batch of background writes then gives
    /// the turn up between rows: `store::write_each`).
    pub(crate) fn client_waiting(&self) -> bool {
        !self
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clients
            .is_empty()
    }
}

impl WriteGate {
    /// A group commit of `n` clients' mutations just had one turn (`store::commit`): it
    /// counts as `n` client writes in a row, so a waiting background write goes next once
    /// they reach [`CLIENT_BURST`], as after that many single pushes.
    pub(crate) fn note_client_writes(&self, n: u32) {
        let mut state = self.lock();
        state.clients_in_row = state.clients_in_row.saturating_add(n.saturating_sub(1));
    }
}

pub(crate) fn install(gate: Option<Arc<WriteGate>>) -> Installed {
    Installed {
        previous: CURRENT.with(|c| c.replace(gate)),
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        let previous = self.previous.take();
        CURRENT.with(|c| *c.borrow_mut() = previous);
    }
}

/// The gate installed on this thread, if any (none on PostgreSQL, an in-memory database, or
/// outside `Store::run`).
pub(crate) fn current() -> Option<Arc<WriteGate>> {
    CURRENT.with(|c| c.borrow().clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_waiting_client_goes_first_but_background_gets_every_fifth_turn() {
        let gate = Arc::new(WriteGate::new(Duration::from_secs(10)));
        let order = Arc::new(Mutex::new(Vec::new()));
        let first = gate.enter(Priority::Background, None).unwrap();
        let mut threads = Vec::new();
        for (i, p) in [Priority::Background, Priority::Background]
            .into_iter()
            .chain(std::iter::repeat_n(Priority::Client, 6))
            .enumerate()
        {
            let (writer, order) = (gate.clone(), order.clone());
            threads.push(std::thread::spawn(move || {
                let _turn = writer.enter(p, None).unwrap();
                order.lock().unwrap().push((i, p));
            }));
            // Each writer queued before the next one starts.
            while {
                let s = gate.lock();
                s.clients.len() + s.background.len()
            } <= i
            {
                std::thread::yield_now();
            }
        }
        drop(first);
        for t in threads {
            t.join().unwrap();
        }
        // Writers 0 and 1 are background, 2 to 7 clients: four clients, then the oldest
        // background write, the other clients, the other background write; each class in the
        // order it arrived.
        let served: Vec<usize> = order.lock().unwrap().iter().map(|(i, _)| *i).collect();
        assert_eq!(served, vec![2, 3, 4, 5, 0, 6, 7, 1]);
    }

    #[test]
    fn a_writer_that_waits_past_its_deadline_is_refused_and_leaves_the_queue() {
        let gate = WriteGate::new(Duration::from_secs(10));
        let held = gate.enter(Priority::Background, None).unwrap();
        let e = gate
            .enter(
                Priority::Client,
                Some(Instant::now() + Duration::from_millis(20)),
            )
            .err()
            .expect("refused");
        assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}");
        assert!(gate.lock().clients.is_empty());
        drop(held);
        // A background writer is not held back by the client that gave up.
        drop(gate.enter(Priority::Background, None).unwrap());
    }
}
