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
//! What a peer decides by (second reader's finding 1): whether an instance's heartbeat ran out
//! (its claims may be taken over) and whether a claim's lease expired are decided in the
//! statement against the database's own clock as well as the claimer's reading: expired only
//! when both say so ([`no_later_than`]: `LEAST(reading, clock_timestamp())`). And an instance
//! writes its heartbeat as no earlier than the database's clock at the statement
//! ([`no_earlier_than`]: `GREATEST(reading, clock_timestamp())`), which is after the local
//! reading its fence starts from. So a peer takes the claims over no earlier, in database
//! time, than the bound after this instance's fence start, whatever the offsets measured on
//! either host (a claimer whose clock was stepped ahead, a stalled measurement): the fence
//! needs a margin only for the rates of the two clocks over one takeover bound. A claimer's
//! wrong reading can only delay a takeover (its clock behind), never hasten it.
//!
//! A claim's lease end stays the claimer's reading plus the lease (tests and callers pass
//! their own times), and the holder checks its writes against its own reading of the same
//! end ([`crate::targets::Lease`]), less [`FENCE_MARGIN_MS`] (`reconcile::worker`): there the
//! holder's own measurement error counts, bounded by the measurement below.
//!
//! The measurement takes up to [`MAX_SAMPLES`] round trips and keeps the one with the lowest
//! round trip (its error is at most half of it: the database's reading lies between the two
//! local readings); samples over [`MAX_RTT_MS`] are rejected (a stalled thread between the
//! two readings shows as a long round trip). An offset under [`ALLOWANCE_MS`] is taken as
//! none (it keeps times passed by a caller exact), so one instance's error is at most
//! `ALLOWANCE_MS + MAX_RTT_MS / 2`; the fence and the local lease end end [`FENCE_MARGIN_MS`]
//! (twice that, plus [`SLACK_MS`] for the clocks' rates) before the bounds the others apply.
//! SQLite (one process, one clock) never measures: its offset stays 0, and its statements
//! compare the caller's readings only.
//!
//! The fence itself is local time (its start is this host's reading, its end compared with
//! this host's clock), which is right as long as the clock is not stepped between two
//! heartbeats: a step is corrected at the next heartbeat's measurement, within
//! `heartbeat_secs` (use NTP slewing on the hosts, not steps, as docs/deployment.md says).

use super::{DbConnection, StoreError};
use diesel::prelude::*;
use diesel::sql_types::BigInt;
use std::cell::Cell;

/// Offsets below this (ms) are not corrected.
pub(crate) const ALLOWANCE_MS: i64 = 10;

/// A sample of the database's clock whose round trip took longer than this (ms) is rejected.
pub(crate) const MAX_RTT_MS: i64 = 50;

/// Round trips one measurement takes at most (it stops at the first one of [`GOOD_RTT_MS`]
/// or less).
pub(crate) const MAX_SAMPLES: usize = 5;

/// A round trip this short (ms, the clock's resolution) ends the measurement at once.
const GOOD_RTT_MS: i64 = 2;

/// For the rates of the clocks over one takeover bound (ms).
pub(crate) const SLACK_MS: i64 = 20;

/// How much earlier than the peers' bounds this instance's fence and its local lease ends end
/// (ms): both instances' measurement error at most, plus the clocks' rates.
pub(crate) const FENCE_MARGIN_MS: i64 = 2 * (ALLOWANCE_MS + MAX_RTT_MS / 2) + SLACK_MS;

/// PostgreSQL's clock at the statement, ms since the epoch.
pub(crate) const PG_CLOCK_MS: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

/// A time in a statement: a bound reading (plus a bound number of ms), on PostgreSQL combined
/// with the database's clock (`LEAST` or `GREATEST` with `clock_timestamp()`). Its own
/// expression type, so the statements using it stay in diesel's prepared-statement cache (a
/// `sql()` literal would take them out: the workers' claim runs every poll).
#[derive(Debug, Clone, Copy, diesel::query_builder::QueryId)]
pub(crate) struct DbTime {
    /// PostgreSQL (a connection is one backend: the text is fixed per connection).
    pg: bool,
    greatest: bool,
    reading_ms: i64,
    plus_ms: i64,
}

impl diesel::Expression for DbTime {
    type SqlType = BigInt;
}

impl<GB> diesel::expression::ValidGrouping<GB> for DbTime {
    type IsAggregate = diesel::expression::is_aggregate::Never;
}

impl<QS> diesel::AppearsOnTable<QS> for DbTime {}

impl<QS> diesel::SelectableExpression<QS> for DbTime {}

impl<DB> diesel::query_builder::QueryFragment<DB> for DbTime
where
    DB: diesel::backend::Backend + diesel::sql_types::HasSqlType<BigInt>,
    i64: diesel::serialize::ToSql<BigInt, DB>,
{
    fn walk_ast<'b>(
        &'b self,
        mut out: diesel::query_builder::AstPass<'_, 'b, DB>,
    ) -> QueryResult<()> {
        out.push_sql("(");
        if self.pg {
            out.push_sql(if self.greatest { "GREATEST(" } else { "LEAST(" });
            out.push_bind_param::<BigInt, _>(&self.reading_ms)?;
            out.push_sql(", ");
            out.push_sql(PG_CLOCK_MS);
            out.push_sql(")");
        } else {
            out.push_bind_param::<BigInt, _>(&self.reading_ms)?;
        }
        out.push_sql(" + ");
        out.push_bind_param::<BigInt, _>(&self.plus_ms)?;
        out.push_sql(")");
        Ok(())
    }
}

fn combined(conn: &DbConnection, greatest: bool, reading_ms: i64, plus_ms: i64) -> DbTime {
    DbTime {
        pg: matches!(conn, DbConnection::Pg(_)),
        greatest,
        reading_ms,
        plus_ms,
    }
}

/// The time to compare an expiry with: `reading_ms` (database time, [`db_ms`]), on PostgreSQL
/// no later than the database's clock (`LEAST`): a lease or heartbeat counts as run out only
/// when both say so, so a reading ahead (a clock stepped since its measurement) takes nothing
/// early.
pub(crate) fn no_later_than(conn: &DbConnection, reading_ms: i64) -> DbTime {
    combined(conn, false, reading_ms, 0)
}

/// The time to write as a heartbeat: `reading_ms` (database time), on PostgreSQL no earlier
/// than the database's clock (`GREATEST`): the statement runs after the local reading the
/// fence starts from, so the bound the peers compute is never before the fence's.
pub(crate) fn no_earlier_than(conn: &DbConnection, reading_ms: i64) -> DbTime {
    no_earlier_than_plus(conn, reading_ms, 0)
}

/// [`no_earlier_than`] plus `plus_ms`.
pub(crate) fn no_earlier_than_plus(conn: &DbConnection, reading_ms: i64, plus_ms: i64) -> DbTime {
    combined(conn, true, reading_ms, plus_ms)
}

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

/// PostgreSQL: measure the offset of `local` (the store's clock) to the database's clock (up
/// to [`MAX_SAMPLES`] round trips, the shortest kept, each against the midpoint of the local
/// readings around it), install it on this thread and return it (0 when under
/// [`ALLOWANCE_MS`]). `None` on SQLite, and when every round trip took longer than
/// [`MAX_RTT_MS`] and the best of them does not show the installed offset wrong by more than
/// its own error: the installed offset is kept.
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
    // (round trip, offset) of the shortest round trip so far.
    let mut best: Option<(i64, i64)> = None;
    for _ in 0..MAX_SAMPLES {
        let before = local();
        let now: Now = diesel::sql_query(format!("SELECT {PG_CLOCK_MS} AS ms")).get_result(c)?;
        let after = local();
        let rtt = after.saturating_sub(before).max(0);
        let mid = before.saturating_add(rtt / 2);
        let offset = now.ms.saturating_sub(mid);
        if best.is_none_or(|(r, _)| rtt < r) {
            best = Some((rtt, offset));
        }
        if rtt <= GOOD_RTT_MS {
            break;
        }
    }
    let Some((rtt, mut offset)) = best else {
        return Ok(None);
    };
    if rtt > MAX_RTT_MS {
        // Its error (up to half the round trip) is more than the margins allow for: keep
        // the installed offset unless this one shows it wrong by more than that error.
        if offset.saturating_sub(current()).abs() <= rtt / 2 + ALLOWANCE_MS {
            tracing::debug!(
                rtt_ms = rtt,
                "Clock measurement rejected (slow round trips)."
            );
            return Ok(None);
        }
        tracing::warn!(
            rtt_ms = rtt,
            offset_ms = offset,
            "The database answers slowly: this host's clock offset is measured over a round trip longer than the fence margins allow for; keep the hosts' clocks in sync (NTP)."
        );
    }
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
