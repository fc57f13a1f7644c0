//! How many write operations and searches the daemon sent to each LDAP server (by URL), how many
//! values its modifies carried, and how many attribute values its entry reads returned: what the
//! O(change) membership tests count ("one member added to a large group: exactly one modify
//! with one value, and the group's members are not read"), against a real slapd, without a
//! mock. A few atomic additions per operation; never reset.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};

/// The counters of one server URL.
#[derive(Debug, Default)]
pub struct OpCounts {
    adds: AtomicU64,
    modifies: AtomicU64,
    modify_values: AtomicU64,
    modrdns: AtomicU64,
    deletes: AtomicU64,
    read_values: AtomicU64,
    searches: AtomicU64,
}

/// A reading of [`OpCounts`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ops {
    pub adds: u64,
    pub modifies: u64,
    /// Values in every modify's changes together (a replace with no values counts none).
    pub modify_values: u64,
    pub modrdns: u64,
    pub deletes: u64,
    /// Attribute values returned by entry reads (base searches for one entry's attributes).
    pub read_values: u64,
    /// Searches sent (entry reads, filter checks, lookups by id; not the root DSE read at
    /// connect).
    pub searches: u64,
}

impl std::ops::Sub for Ops {
    type Output = Ops;
    fn sub(self, o: Ops) -> Ops {
        Ops {
            adds: self.adds - o.adds,
            modifies: self.modifies - o.modifies,
            modify_values: self.modify_values - o.modify_values,
            modrdns: self.modrdns - o.modrdns,
            deletes: self.deletes - o.deletes,
            read_values: self.read_values - o.read_values,
            searches: self.searches - o.searches,
        }
    }
}

static REGISTRY: LazyLock<Mutex<HashMap<String, Arc<OpCounts>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// The counters of `url` (shared by every target built for it).
pub(super) fn for_url(url: &str) -> Arc<OpCounts> {
    let mut map = REGISTRY
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    Arc::clone(map.entry(url.to_owned()).or_default())
}

/// What was sent to `url` so far (all zero for a URL no target was built for).
#[must_use]
pub fn sent_to(url: &str) -> Ops {
    let map = REGISTRY
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    map.get(url).map_or_else(Ops::default, |c| c.snapshot())
}

impl OpCounts {
    fn snapshot(&self) -> Ops {
        Ops {
            adds: self.adds.load(Ordering::Relaxed),
            modifies: self.modifies.load(Ordering::Relaxed),
            modify_values: self.modify_values.load(Ordering::Relaxed),
            modrdns: self.modrdns.load(Ordering::Relaxed),
            deletes: self.deletes.load(Ordering::Relaxed),
            read_values: self.read_values.load(Ordering::Relaxed),
            searches: self.searches.load(Ordering::Relaxed),
        }
    }

    pub(super) fn add(&self) {
        self.adds.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn modify(&self, values: usize) {
        self.modifies.fetch_add(1, Ordering::Relaxed);
        self.modify_values
            .fetch_add(u64::try_from(values).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    pub(super) fn modrdn(&self) {
        self.modrdns.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn delete(&self) {
        self.deletes.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn search(&self) {
        self.searches.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn read(&self, values: usize) {
        self.read_values
            .fetch_add(u64::try_from(values).unwrap_or(u64::MAX), Ordering::Relaxed);
    }
}
