//! The pure plan: decisions every target makes the same way, from what it read and the
//! recorded bookkeeping, written once and tested in microseconds. No I/O (`tests/tidy.rs`):
//! the targets read, call these, and execute the outcome in their own terms.
//!
//! So far: what an entry found at the key of a resource that never recorded one is
//! ([`unrecorded_entry`]: create, resume our own interrupted create, adopt, or refuse).

use crate::config::target::OnExisting;

/// What to do about the key of a resource that has no recorded entry in the target yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// Nothing is there: create the entry.
    Create,
    /// Our own create, interrupted before its outcome was recorded, left it: it is ours.
    Resume,
    /// Someone else's, and `on_existing = "adopt"`: take it over.
    Adopt,
    /// Someone else's, and `on_existing = "conflict"`: refuse (a permanent error; the entry
    /// is not touched).
    Refuse,
}

/// The entry at the key of a resource never applied to this target: `exists` whether one is
/// there, `ours` whether the target recognised it as left by an interrupted create of this
/// resource (its recorded intent; never for targets without a creator marker).
#[must_use]
pub fn unrecorded_entry(exists: bool, ours: bool, on_existing: OnExisting) -> Found {
    match (exists, ours, on_existing) {
        (false, _, _) => Found::Create,
        (true, true, _) => Found::Resume,
        (true, false, OnExisting::Adopt) => Found::Adopt,
        (true, false, OnExisting::Conflict) => Found::Refuse,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unrecorded_entry_is_created_resumed_adopted_or_refused() {
        use OnExisting::{Adopt, Conflict};
        for policy in [Adopt, Conflict] {
            assert_eq!(unrecorded_entry(false, false, policy), Found::Create);
            assert_eq!(unrecorded_entry(false, true, policy), Found::Create);
            // Our own interrupted create is ours under either policy.
            assert_eq!(unrecorded_entry(true, true, policy), Found::Resume);
        }
        assert_eq!(unrecorded_entry(true, false, Adopt), Found::Adopt);
        assert_eq!(unrecorded_entry(true, false, Conflict), Found::Refuse);
    }
}
