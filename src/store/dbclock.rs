//! The database's clock for the times other instances compare (issue 10, second reader).
//!
//! Several instances on one PostgreSQL compare each other's times: a claim's lease
//! (`outbox.claimed_until_ms`), a row's due time (`outbox.next_attempt_ms`) and an instance's
//! heartbeat (`instances.heartbeat_ms`) are written by one host and read against another's
//! clock. With a host 10 s ahead, a live instance's claims looked 10 s older and were taken
//! over early (two instances writing one entry); with a host 10 s behind, a dead instance's
//! claims stayed its own 10 s past the takeover bound. So these columns hold **database
//! time**: the store measures how far its own clock is from the database's (`clock_timestamp()`,
//! at open, at registration and at every instance heartbeat) and adds that offset to every
//! time it writes there or compares them with ([`db_ms`]). The callers keep passing their own
//! clock's readings; nothing else (SCIM `meta`, audit, history) changes clock.
//!
//! An offset under [`ALLOWANCE_MS`] is taken as none (it is within what one round trip can
//! measure, and keeps times passed by a caller exact); the instance fence ends
//! [`FENCE_MARGIN_MS`] (twice the allowance: both instances' uncorrected error) before the
//! takeover bound the others apply, so the offsets left uncorrected cannot let a peer take
//! over while this instance may still start a write. SQLite (one process, one clock) never
//! measures: its offset stays 0.
//!
//! The fence itself is local time (its start is this host's reading, its end compared with
//! this host's clock), which is right as long as the clock is not stepped between two
//! heartbeats: a step is corrected at the next heartbeat's measurement, within
//! `heartbeat_secs` (use NTP slewing on the hosts, not steps, as docs/deployment.md says).

use super::{DbConnection, StoreError};
use diesel::prelude::*;
use std::cell::Cell;

/// Offsets below this (ms) are not corrected.
pub(crate) const ALLOWANCE_MS: i64 = 100;

/// How much earlier than the peers' takeover bound this instance's fence ends (ms).
pub(crate) const FENCE_MARGIN_MS: i64 = 2 * ALLOWANCE_MS;

/// An offset above this (ms) is logged: the host's clock is wrong, even though the store
/// corrects it.
const WARN_MS: i64 = 1_000;

thread_local! {
    static OFFSET: Cell<i64> = const { Cell::new(0) };
}

/// The offset installed on this thread for the span of one `Store::run` (see [`install`]).
pub(crate) struct Installed {
    previous: i64,
}

/// Install `offset` (database minus local clock, ms) on this thread until the guard drops.
pub(crate) fn install(offset: i64) -> Installed {
    Installed {
        previous: OFFSET.with(|o| o.replace(offset)),
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        let previous = self.previous;
        OFFSET.with(|o| o.set(previous));
    }
}

/// A reading of the caller's clock as database time (the offset installed on this thread; 0
/// outside `Store::run` and on SQLite).
pub(crate) fn db_ms(local_ms: i64) -> i64 {
    local_ms.saturating_add(OFFSET.with(Cell::get))
}

/// The offset installed on this thread.
pub(crate) fn current() -> i64 {
    OFFSET.with(Cell::get)
}

/// PostgreSQL: measure the offset of `local` (the store's clock) to the database's clock, over
/// one round trip (against the midpoint of the local readings around it), install it on this
/// thread and return it (0 when under [`ALLOWANCE_MS`]). `None` on SQLite.
pub(crate) fn measure(
    conn: &mut DbConnection,
    local: &dyn Fn() -> i64,
) -> Result<Option<i64>, StoreError> {
    #[derive(diesel::QueryableByName)]
    struct Now {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        ms: i64,
    }
    let DbConnection::Pg(c) = conn else {
        return Ok(None);
    };
    let before = local();
    let now: Now =
        diesel::sql_query("SELECT (extract(epoch from clock_timestamp()) * 1000)::bigint AS ms")
            .get_result(c)?;
    let after = local();
    let mid = before.saturating_add(after.saturating_sub(before) / 2);
    let mut offset = now.ms.saturating_sub(mid);
    if offset.abs() < ALLOWANCE_MS {
        offset = 0;
    }
    // Once per change of a second or more (the previous offset is the one installed).
    if offset.abs() >= WARN_MS && offset.saturating_sub(current()).abs() >= WARN_MS {
        tracing::warn!(
            offset_ms = offset,
            "This host's clock is off the database's; the store corrects the times other instances compare, but keep the hosts' clocks in sync (NTP)."
        );
    }
    OFFSET.with(|o| o.set(offset));
    Ok(Some(offset))
}
