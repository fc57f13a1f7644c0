//! The reconciler: workers that claim outbox rows, read the desired state from the store, read
//! the target, diff and apply, then settle the row. Level-triggered and idempotent.
