//! The health of each target as this process last saw it: written by the reconciler (its
//! healthchecks and applies), read by `/readyz` and systemd's `STATUS=` line. Plain data
//! behind one mutex; uses no other module of the crate.
//!
//! Two separate facts, so that one resource's success never hides another's failure:
//! - **reachable**: the last healthcheck or apply reached the target (a success, or a refusal
//!   the target answered with) or failed transiently (connection refused, timeout): the last
//!   one of these wins, whichever resource it was for.
//! - **refused**: the resources whose latest apply the target refused (a permanent failure:
//!   a missing column, a schema violation, a key conflict) and that are still being retried
//!   toward a dead letter. An entry is removed by a later successful apply of *that*
//!   resource, or when it becomes a dead letter (the store counts those: `/readyz` adds them,
//!   so the fact survives a restart and a `dead-letters discard` clears it).
//!
//! A target is *failing* while it is unreachable, has refused resources, or has dead letters
//! (newer, by construction, than the last success of their resource: a success deletes the
//! outbox row). The reconciler writes a resource's entry before it settles the apply, and a
//! resource is applied by one worker at a time, so a later apply of the same resource always
//! writes after an earlier one.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// How many refused resources one target remembers (the oldest beyond it are dropped from
/// memory; they still count once they are dead letters).
pub const MAX_REFUSED: usize = 1000;

/// One resource the target refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The target's error.
    pub error: String,
    /// When (ms since the epoch).
    pub at_ms: i64,
    /// The fencing epoch of the claim that was refused (so that only that apply's own
    /// follow-up removes the entry).
    pub epoch: i64,
}

/// The last known health of one target.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TargetHealth {
    /// The last contact reached the target (false until the first one).
    pub reachable: bool,
    /// What the last contact said ("ok", or the transient error); empty before the first.
    pub detail: String,
    /// Resources refused and still retried, by resource id.
    pub refused: BTreeMap<String, Refusal>,
}

impl TargetHealth {
    /// Reachable and nothing refused (dead letters are the store's: see [`Self::failing`]).
    #[must_use]
    pub fn healthy(&self) -> bool {
        self.reachable && self.refused.is_empty()
    }

    /// Unreachable, something refused, or dead letters (`dead`: the store's count).
    #[must_use]
    pub fn failing(&self, dead: u64) -> bool {
        !self.healthy() || dead > 0
    }

    /// The most recent refusal: (resource id, refusal).
    #[must_use]
    pub fn latest_refusal(&self) -> Option<(&String, &Refusal)> {
        self.refused.iter().max_by_key(|(_, r)| r.at_ms)
    }

    /// One line for `STATUS=` and `/readyz`'s `detail`.
    #[must_use]
    pub fn summary(&self) -> String {
        if !self.reachable {
            if self.detail.is_empty() {
                return "unchecked".into();
            }
            return format!("failing: {}", self.detail);
        }
        match self.latest_refusal() {
            None => "ok".into(),
            Some((id, r)) => format!(
                "failing: {} resource(s) refused; latest {id}: {}",
                self.refused.len(),
                r.error
            ),
        }
    }
}

/// The shared per-target health map.
#[derive(Debug, Clone, Default)]
pub struct Health {
    inner: Arc<Mutex<BTreeMap<String, TargetHealth>>>,
}

impl Health {
    /// A map holding `names`, each unchecked.
    #[must_use]
    pub fn new(names: &[String]) -> Health {
        let h = Health::default();
        h.retain(names);
        h
    }

    fn with<R>(&self, f: impl FnOnce(&mut BTreeMap<String, TargetHealth>) -> R) -> R {
        let mut map = match self.inner.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        f(&mut map)
    }

    /// Keep exactly the targets `names` (new ones unchecked, the others' state kept).
    pub fn retain(&self, names: &[String]) {
        self.with(|m| {
            m.retain(|k, _| names.contains(k));
            for n in names {
                m.entry(n.clone()).or_default();
            }
        });
    }

    /// A copy of every target's health.
    #[must_use]
    pub fn snapshot(&self) -> BTreeMap<String, TargetHealth> {
        self.with(|m| m.clone())
    }

    /// The target names, in order.
    #[must_use]
    pub fn names(&self) -> Vec<String> {
        self.with(|m| m.keys().cloned().collect())
    }

    /// A contact with the target: `Ok` ("ok") or a transient error.
    pub fn contact(&self, target: &str, result: Result<(), &str>) {
        self.with(|m| {
            let h = m.entry(target.to_owned()).or_default();
            h.reachable = result.is_ok();
            h.detail = result.err().unwrap_or("ok").to_owned();
        });
    }

    /// `resource` applied successfully: its refusal (if any) is over, the target reachable.
    pub fn applied(&self, target: &str, resource: &str) {
        self.with(|m| {
            let h = m.entry(target.to_owned()).or_default();
            h.reachable = true;
            "ok".clone_into(&mut h.detail);
            h.refused.remove(resource);
        });
    }

    /// The target refused `resource` (a permanent failure) in the claim `epoch`.
    pub fn refused(&self, target: &str, resource: &str, error: &str, at_ms: i64, epoch: i64) {
        self.with(|m| {
            let h = m.entry(target.to_owned()).or_default();
            h.reachable = true;
            "ok".clone_into(&mut h.detail);
            h.refused.insert(
                resource.to_owned(),
                Refusal {
                    error: error.to_owned(),
                    at_ms,
                    epoch,
                },
            );
            while h.refused.len() > MAX_REFUSED {
                let oldest = h
                    .refused
                    .iter()
                    .min_by_key(|(_, r)| r.at_ms)
                    .map(|(k, _)| k.clone());
                match oldest {
                    Some(k) => h.refused.remove(&k),
                    None => break,
                };
            }
        });
    }

    /// The refusal of `resource` in claim `epoch` became a dead letter (the store counts it
    /// from now on): forget it, unless a later apply already replaced the entry.
    pub fn dead(&self, target: &str, resource: &str, epoch: i64) {
        self.with(|m| {
            if let Some(h) = m.get_mut(target) {
                if h.refused.get(resource).is_some_and(|r| r.epoch == epoch) {
                    h.refused.remove(resource);
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_success_of_another_resource_does_not_clear_a_refusal() {
        let h = Health::new(&["t".to_owned()]);
        assert_eq!(h.snapshot()["t"].summary(), "unchecked");
        h.contact("t", Ok(()));
        h.refused("t", "a", "no such column", 10, 1);
        h.applied("t", "b");
        let t = &h.snapshot()["t"];
        assert!(!t.healthy());
        assert_eq!(
            t.summary(),
            "failing: 1 resource(s) refused; latest a: no such column"
        );
        h.applied("t", "a");
        assert!(h.snapshot()["t"].healthy());
        assert!(!h.snapshot()["t"].failing(0));
        assert!(h.snapshot()["t"].failing(1));
    }

    #[test]
    fn a_dead_letter_leaves_memory_only_for_its_own_claim() {
        let h = Health::new(&["t".to_owned()]);
        h.refused("t", "a", "refused", 10, 1);
        h.refused("t", "a", "refused again", 20, 2);
        h.dead("t", "a", 1);
        assert_eq!(h.snapshot()["t"].refused["a"].epoch, 2);
        h.dead("t", "a", 2);
        assert!(h.snapshot()["t"].healthy());
    }

    #[test]
    fn a_transient_failure_makes_it_unreachable_until_a_contact_succeeds() {
        let h = Health::new(&["t".to_owned()]);
        h.contact("t", Err("connection refused"));
        assert_eq!(h.snapshot()["t"].summary(), "failing: connection refused");
        h.applied("t", "x");
        assert!(h.snapshot()["t"].healthy());
        h.retain(&["u".to_owned()]);
        assert_eq!(h.names(), ["u"]);
    }
}
