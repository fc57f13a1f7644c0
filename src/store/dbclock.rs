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
//! A claim's lease end is the claimer's reading plus the lease, on PostgreSQL no earlier than
//! the database's clock at the statement plus the lease ([`lease_end`]; third reader's finding
//! 1), and the holder checks its writes against its own reading of the same end
//! ([`crate::targets::Lease`]), less [`FENCE_MARGIN_MS`] (`reconcile::worker`): the holder's
//! reading precedes the statement, so its own measurement error no longer moves the recorded
//! end before its local one. A heartbeat is capped at the database's clock plus
//! [`ALLOWANCE_MS`] (finding 2), so a writer's error ahead keeps no dead instance's claims.
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

/// PostgreSQL's clock at the start of the statement, ms since the epoch: one reading for every
/// expression of the statement (where two expressions must agree on it).
pub(crate) const PG_STATEMENT_MS: &str =
    "(extract(epoch from statement_timestamp()) * 1000)::bigint";

/// [`lease_end`]: a reading further behind the database's clock than this (ms) is a time a
/// caller passed, not a clock reading: kept as is.
pub(crate) const PASSED_TIME_MS: i64 = 60_000;

/// How a [`DbTime`] combines its reading with the database's clock on PostgreSQL (the
/// `KIND` of its type, so that each SQL text has its own type and prepared statement).
pub(crate) mod kind {
    /// `LEAST(reading, clock)`: [`super::no_later_than`].
    pub(crate) const LEAST: u8 = 0;
    /// `LEAST(GREATEST(reading, clock), clock + ALLOWANCE_MS)`: [`super::no_earlier_than`].
    pub(crate) const HEARTBEAT: u8 = 1;
    /// `GREATEST(reading, clock)` (a reading close to the clock): [`super::lease_end`].
    pub(crate) const GREATEST: u8 = 2;
}

/// A time in a statement: a bound reading (plus a bound number of ms), on PostgreSQL combined
/// with the database's clock as `KIND` says ([`kind`]). Its own expression type, so the
/// statements using it stay in diesel's prepared-statement cache (a `sql()` literal would take
/// them out: the workers' claim runs every poll). The combination is in the type, not a
/// field (third reader's finding 6): diesel caches a prepared statement by the query's type
/// (`QueryId`), so two statements of one type must have one SQL text per backend. The
/// backend is a field: a connection is one backend, and diesel's cache is per connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DbTime<const KIND: u8> {
    /// PostgreSQL (a connection is one backend: the text is fixed per connection).
    pg: bool,
    reading_ms: i64,
    plus_ms: i64,
}

impl<const KIND: u8> diesel::query_builder::QueryId for DbTime<KIND> {
    type QueryId = Self;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl<const KIND: u8> diesel::Expression for DbTime<KIND> {
    type SqlType = BigInt;
}

impl<GB, const KIND: u8> diesel::expression::ValidGrouping<GB> for DbTime<KIND> {
    type IsAggregate = diesel::expression::is_aggregate::Never;
}

impl<QS, const KIND: u8> diesel::AppearsOnTable<QS> for DbTime<KIND> {}

impl<QS, const KIND: u8> diesel::SelectableExpression<QS> for DbTime<KIND> {}

impl<DB, const KIND: u8> diesel::query_builder::QueryFragment<DB> for DbTime<KIND>
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
            match KIND {
                kind::LEAST => {
                    out.push_sql("LEAST(");
                    out.push_bind_param::<BigInt, _>(&self.reading_ms)?;
                    out.push_sql(", ");
                    out.push_sql(PG_CLOCK_MS);
                    out.push_sql(")");
                }
                kind::HEARTBEAT => {
                    // The second reading of the clock is no earlier than the first, so the
                    // result is between the first and the second plus ALLOWANCE_MS.
                    out.push_sql("LEAST(GREATEST(");
                    out.push_bind_param::<BigInt, _>(&self.reading_ms)?;
                    out.push_sql(", ");
                    out.push_sql(PG_CLOCK_MS);
                    out.push_sql("), ");
                    out.push_sql(PG_CLOCK_MS);
                    out.push_sql(&format!(" + {ALLOWANCE_MS})"));
                }
                _ => {
                    out.push_sql("CASE WHEN ");
                    out.push_bind_param::<BigInt, _>(&self.reading_ms)?;
                    out.push_sql(" < ");
                    out.push_sql(PG_CLOCK_MS);
                    out.push_sql(&format!(" - {PASSED_TIME_MS} THEN "));
                    out.push_bind_param::<BigInt, _>(&self.reading_ms)?;
                    out.push_sql(" ELSE GREATEST(");
                    out.push_bind_param::<BigInt, _>(&self.reading_ms)?;
                    out.push_sql(", ");
                    out.push_sql(PG_CLOCK_MS);
                    out.push_sql(") END");
                }
            }
        } else {
            out.push_bind_param::<BigInt, _>(&self.reading_ms)?;
        }
        out.push_sql(" + ");
        out.push_bind_param::<BigInt, _>(&self.plus_ms)?;
        out.push_sql(")");
        Ok(())
    }
}

fn combined<const KIND: u8>(conn: &DbConnection, reading_ms: i64, plus_ms: i64) -> DbTime<KIND> {
    DbTime {
        pg: matches!(conn, DbConnection::Pg(_)),
        reading_ms,
        plus_ms,
    }
}

/// The time to compare an expiry with: `reading_ms` (database time, [`db_ms`]), on PostgreSQL
/// no later than the database's clock (`LEAST`): a lease or heartbeat counts as run out only
/// when both say so, so a reading ahead (a clock stepped since its measurement) takes nothing
/// early.
pub(crate) fn no_later_than(conn: &DbConnection, reading_ms: i64) -> DbTime<{ kind::LEAST }> {
    combined(conn, reading_ms, 0)
}

/// The time to write as a heartbeat: `reading_ms` (database time), on PostgreSQL no earlier
/// than the database's clock (`GREATEST`): the statement runs after the local reading the
/// fence starts from, so the bound the peers compute is never before the fence's. And no
/// later than the database's clock plus [`ALLOWANCE_MS`] (third reader's finding 2): a
/// reading ahead by the writer's offset error (a clock stepped since its measurement, or a
/// slow sample) would keep a dead instance's claims past the takeover bound; capped, the
/// peers take them over at most `ALLOWANCE_MS` after it. The cap never cuts into the fence:
/// the fence starts from a local reading taken before the statement, so the database's
/// clock at the statement is after it.
pub(crate) fn no_earlier_than(conn: &DbConnection, reading_ms: i64) -> DbTime<{ kind::HEARTBEAT }> {
    no_earlier_than_plus(conn, reading_ms, 0)
}

/// [`no_earlier_than`] plus `plus_ms`.
pub(crate) fn no_earlier_than_plus(
    conn: &DbConnection,
    reading_ms: i64,
    plus_ms: i64,
) -> DbTime<{ kind::HEARTBEAT }> {
    combined(conn, reading_ms, plus_ms)
}

/// The lease end to write for a claim or renewal: `reading_ms` (database time) plus
/// `lease_ms`, on PostgreSQL no earlier than the database's clock at the statement plus
/// `lease_ms` (`GREATEST`; third reader's finding 1). The holder checks its writes against
/// its own reading plus the lease less [`FENCE_MARGIN_MS`]; its reading was taken before the
/// statement, so the recorded end is after the holder's local end whatever the holder's
/// measured offset (a slow-path install, a clock stepped since), and a peer (which counts a
/// lease as expired only when the database's clock says so too) claims no earlier than the
/// holder stops writing, but for the clocks' rates over one lease. Not capped: a reading too
/// far ahead only keeps the row longer (a dead holder's claims are taken over by its
/// heartbeat, which is capped).
///
/// A reading more than [`PASSED_TIME_MS`] behind the database's clock is kept as is: it is
/// no clock reading off by a measurement error (those are within a few hundred ms) but a time
/// a caller passed as such (the store tests pass their own times, e.g. a lease from 900 to
/// 1_900, and expect it to run out then).
pub(crate) fn lease_end(
    conn: &DbConnection,
    reading_ms: i64,
    lease_ms: i64,
) -> DbTime<{ kind::GREATEST }> {
    combined(conn, reading_ms, lease_ms)
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
        // Installed only when it shows the installed offset wrong by more than its error
        // (third reader: "never install from a slow sample" was considered). Not installing
        // would leave a stepped clock uncorrected while the database answers slowly; and the
        // offset's error no longer decides a peer's takeover early: lease ends and heartbeats
        // are written no earlier than the database's clock (`lease_end`, `no_earlier_than`),
        // and expiries are compared no later than it (`no_later_than`). Its error delays a
        // takeover at most (a reading behind), by up to half this round trip.
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
