//! The reconciler's batch reads and writes: a worker applies the rows it claimed together, so
//! the store gives it one snapshot per apply (the rows' target states, their resources and a
//! user's groups, for the whole batch in one read transaction), the references of many users
//! (recorded and resolved), the writes an apply makes before the target is touched (intents,
//! key reservations, a deactivation's note) and the settles, each as one batch ([`write_each`]:
//! one transaction per batch on SQLite, per row on PostgreSQL). Every row's writes are exactly
//! the ones its own apply made before batching (`outbox`, `keys`, `references`); only their
//! transactions are shared. Must not decide what to apply.

use super::models::ResourceRow;
use super::{
    keys, outbox, read_tx, references, resources, write_each, DbConnection, OutboxItem, Store,
    StoreError, StoredGroup, StoredUser, TargetState,
};
use crate::scim::resource::{GroupRef, ResourceType};
use std::collections::HashSet;

/// What one apply reads from the store before it renders, in one snapshot with the batch's
/// other rows (`REPEATABLE READ` on PostgreSQL).
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The row's state in the target.
    pub state: Option<TargetState>,
    /// A user row's user, tombstones included.
    pub user: Option<StoredUser>,
    /// A live user's groups (the derived `groups` attribute).
    pub groups: Vec<GroupRef>,
    /// A group row's group, tombstones included.
    pub group: Option<StoredGroup>,
}

/// The references one user's render needs, `(by, value)` as [`Store::find_user`] takes them;
/// `record`: write them to the reference index (see [`Store::record_references`]).
#[derive(Debug, Clone)]
pub struct ReferenceLookup {
    pub holder: String,
    pub references: Vec<(String, String)>,
    pub record: bool,
}

/// One reference resolved: the live user it names and that user's key in the target.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resolved {
    pub id: Option<String>,
    pub key: Option<String>,
}

/// The writes one apply makes before the target is touched (each as its own store method
/// made it: [`Store::record_intent`], [`Store::reserve_key`], [`Store::note_target_extra`]
/// with `deactivating`), and the earlier intents whose keys to check (`orphans`, ignored
/// when `intent` is set: the intent's own state names them then).
#[derive(Debug, Clone)]
pub struct BeforeSync {
    /// The claim the apply runs under (`None`: a dry run): its writes are made only while it
    /// is still held, checked in the same transaction.
    pub claim: Option<OutboxItem>,
    pub resource_type: ResourceType,
    pub resource_id: String,
    pub intent: Option<TargetState>,
    pub reserve: Option<String>,
    pub deactivating: bool,
    pub orphans: Vec<String>,
}

/// What [`Store::before_sync`] leaves: the state as recorded after an intent (`None` when
/// there was none), and which of the earlier intents' keys another resource holds or intends.
#[derive(Debug, Clone, Default)]
pub struct BeforeSynced {
    pub state: Option<TargetState>,
    pub held: HashSet<String>,
    /// The claim was lost (another worker took the row): nothing was written.
    pub lost: bool,
}

impl BeforeSync {
    fn writes(&self) -> bool {
        self.intent.is_some() || self.reserve.is_some() || self.deactivating
    }
}

fn snapshot(
    conn: &mut DbConnection,
    target: &str,
    resource_type: ResourceType,
    id: &str,
) -> Result<Snapshot, StoreError> {
    let state = outbox::target_state(conn, target, id)?;
    let row = resources::get(conn, resource_type, id, true)?;
    let mut out = Snapshot {
        state,
        ..Snapshot::default()
    };
    match resource_type {
        ResourceType::User => {
            let user = row.map(ResourceRow::into_user).transpose()?;
            if let Some(u) = user.as_ref().filter(|u| !u.deleted) {
                // The mapping sees the user's direct groups only: a change of nesting above
                // them re-renders no user (docs/mapping.md, "Nested groups").
                out.groups = resources::groups_of_user(conn, &u.id)?
                    .into_iter()
                    .filter(|g| g.direct)
                    .collect();
            }
            out.user = user;
        }
        ResourceType::Group => out.group = row.map(ResourceRow::into_group).transpose()?,
    }
    Ok(out)
}

/// The live users `lookup`'s references name, as the index records them.
fn index_of(
    conn: &mut DbConnection,
    lookup: &ReferenceLookup,
) -> Result<Vec<references::Reference>, StoreError> {
    let mut index = Vec::with_capacity(lookup.references.len());
    for (by, value) in &lookup.references {
        let found = resources::find_user(conn, &by.to_ascii_lowercase(), value)?;
        let id = found.map(|r| r.into_user().map(|u| u.id)).transpose()?;
        index.push((by.clone(), value.clone(), id));
    }
    Ok(index)
}

/// Whether recording `lookup`'s references would change the index.
fn record_changes(
    conn: &mut DbConnection,
    target: &str,
    lookup: &ReferenceLookup,
) -> Result<bool, StoreError> {
    let index = index_of(conn, lookup)?;
    references::differs(conn, target, &lookup.holder, &index)
}

/// The users `lookup`'s references name and their keys in `target`.
fn resolve(
    conn: &mut DbConnection,
    target: &str,
    lookup: &ReferenceLookup,
) -> Result<Vec<Resolved>, StoreError> {
    let ids: Vec<Option<String>> = index_of(conn, lookup)?
        .into_iter()
        .map(|(_, _, id)| id)
        .collect();
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let key = match &id {
            Some(id) => outbox::target_state(conn, target, id)?.and_then(|s| s.target_key),
            None => None,
        };
        out.push(Resolved { id, key });
    }
    Ok(out)
}

impl Store {
    /// One snapshot for the applies of a batch: each row's state in `target`, its resource
    /// (tombstones included) and a live user's groups, in one read transaction. A row whose
    /// resource is gone reads as `Snapshot { user: None, group: None, .. }`; a row that
    /// cannot be decoded is an error of its own.
    ///
    /// # Errors
    /// `Unavailable` when the snapshot cannot be read at all.
    pub async fn load_for_apply(
        &self,
        target: &str,
        rows: Vec<(ResourceType, String)>,
    ) -> Result<Vec<Result<Snapshot, StoreError>>, StoreError> {
        let target = target.to_owned();
        self.run(move |conn| {
            read_tx(conn, |conn| {
                // One result per row: a row that cannot be decoded fails alone.
                Ok(rows
                    .iter()
                    .map(|(ty, id)| snapshot(conn, &target, *ty, id))
                    .collect())
            })
        })
        .await
    }

    /// Resolve the references of many users (each to the live user it names and that user's
    /// key in `target`), recording those with `record` in the reference index first: the
    /// records commit before the keys are read (the order `reconcile::worker::apply_many`
    /// relies on). A holder whose recorded references are already those is only read (no
    /// write lock): its record committed at an earlier render. One result per lookup.
    pub async fn resolve_references(
        &self,
        target: &str,
        lookups: Vec<ReferenceLookup>,
    ) -> Vec<Result<Vec<Resolved>, StoreError>> {
        let n = lookups.len();
        let target = target.to_owned();
        let done = self
            .run(move |conn| {
                // First a read of every lookup; the ones whose record changes go again in a
                // write (record, then keys).
                let first: Vec<Result<Option<Vec<Resolved>>, StoreError>> =
                    read_tx(conn, |conn| {
                        Ok(lookups
                            .iter()
                            .map(|l| {
                                if l.record && record_changes(conn, &target, l)? {
                                    return Ok(None);
                                }
                                resolve(conn, &target, l).map(Some)
                            })
                            .collect())
                    })?;
                let again: Vec<&ReferenceLookup> = lookups
                    .iter()
                    .zip(&first)
                    .filter(|(_, r)| matches!(r, Ok(None)))
                    .map(|(l, _)| l)
                    .collect();
                // Recorded and committed before the referenced users' keys are read (in a
                // new snapshot): on PostgreSQL the record's share lock covers only users that
                // have a state already, so a key read in the record's own transaction could
                // miss the settle of a referenced user's first create, and that settle the
                // uncommitted record.
                let recorded = write_each(conn, again.clone(), |conn, l| {
                    let index = index_of(conn, l)?;
                    references::record(conn, &target, &l.holder, &index)
                });
                let reads: Vec<(&ReferenceLookup, Result<(), StoreError>)> =
                    again.into_iter().zip(recorded).collect();
                let mut written = read_tx(conn, |conn| {
                    Ok(reads
                        .into_iter()
                        .map(|(l, recorded)| recorded.and_then(|()| resolve(conn, &target, l)))
                        .collect::<Vec<_>>())
                })?
                .into_iter();
                let out: Vec<Result<Vec<Resolved>, StoreError>> = first
                    .into_iter()
                    .map(|r| match r {
                        Ok(Some(v)) => Ok(v),
                        Ok(None) => written.next().unwrap_or_else(|| {
                            Err(StoreError::Other("a reference write gave no result".into()))
                        }),
                        Err(e) => Err(e),
                    })
                    .collect();
                Ok(out)
            })
            .await;
        match done {
            Ok(out) => out,
            Err(e) => {
                let text = e.to_string();
                (0..n)
                    .map(|_| Err(StoreError::Unavailable(text.clone())))
                    .collect()
            }
        }
    }

    /// The writes of many applies before their targets are touched (see [`BeforeSync`]), as one
    /// batch; one result per row: `KeyConflict` (naming the holder) when another resource
    /// holds or intends a key an intent or a reservation names.
    pub async fn before_sync(
        &self,
        target: &str,
        rows: Vec<BeforeSync>,
    ) -> Vec<Result<BeforeSynced, StoreError>> {
        let n = rows.len();
        let target_name = target.to_owned();
        let norm = {
            let store = self.clone();
            let target = target.to_owned();
            move |ty: ResourceType, key: &str| store.norm_key(&target, ty, key)
        };
        let rows: Vec<(BeforeSync, Option<String>, Option<String>)> = rows
            .into_iter()
            .map(|r| {
                let intent_norm = r
                    .intent
                    .as_ref()
                    .and_then(|s| keys::intent_key(s.extra.as_ref()))
                    .map(|k| norm(r.resource_type, k));
                let reserve_norm = r.reserve.as_deref().map(|k| norm(r.resource_type, k));
                (r, intent_norm, reserve_norm)
            })
            .collect();
        let writes = rows.iter().any(|(r, _, _)| r.writes());
        let done = self
            .run(move |conn| {
                let each =
                    |conn: &mut DbConnection, row: (BeforeSync, Option<String>, Option<String>)| {
                        let (row, intent_norm, reserve_norm) = row;
                        let target = target_name.as_str();
                        let mut out = BeforeSynced::default();
                        if let (Some(item), true) = (&row.claim, row.writes()) {
                            if !outbox::claim_held(conn, item)? {
                                out.lost = true;
                                return Ok(out);
                            }
                        }
                        let mut orphans = row.orphans.clone();
                        if let Some(state) = &row.intent {
                            let Some(key_norm) = intent_norm.as_deref() else {
                                return Err(StoreError::Other(format!(
                                    "intent for {} in target {target} names no key",
                                    row.resource_id
                                )));
                            };
                            outbox::record_intent(conn, state, key_norm)?;
                            out.state = outbox::target_state(conn, target, &row.resource_id)?;
                            orphans = out
                                .state
                                .as_ref()
                                .and_then(|s| s.extra.as_ref())
                                .map(|e| {
                                    e.orphans
                                        .iter()
                                        .filter_map(|o| o.creating.clone())
                                        .collect()
                                })
                                .unwrap_or_default();
                        }
                        if let (Some(key), Some(key_norm)) = (&row.reserve, &reserve_norm) {
                            keys::reserve(conn, target, &row.resource_id, key, key_norm)?;
                        }
                        for key in orphans {
                            let key_norm = norm(row.resource_type, &key);
                            if keys::holder(conn, target, &key_norm, &row.resource_id)?.is_some() {
                                out.held.insert(key);
                            }
                        }
                        if row.deactivating {
                            outbox::note_extra(conn, target, &row.resource_id, |e| {
                                e.deactivating = Some(true);
                            })?;
                        }
                        Ok(out)
                    };
                if writes {
                    Ok(write_each(conn, rows, each))
                } else {
                    // Only earlier intents to look up (a dry run, or nothing to record): a
                    // read, no turn for the write lock.
                    read_tx(conn, |conn| {
                        Ok(rows.into_iter().map(|row| each(conn, row)).collect())
                    })
                }
            })
            .await;
        let results = match done {
            Ok(out) => out,
            Err(e) => {
                let text = e.to_string();
                return (0..n)
                    .map(|_| Err(StoreError::Unavailable(text.clone())))
                    .collect();
            }
        };
        let mut out = Vec::with_capacity(results.len());
        for r in results {
            out.push(match r {
                Ok(v) => Ok(v),
                Err(e) => Err(self.named(e).await),
            });
        }
        out
    }

    /// `e`, a `KeyConflict` naming its holder (see `Store::name_holder`).
    async fn named(&self, e: StoreError) -> StoreError {
        match self.name_holder(Err(e)).await {
            Err(e) => e,
            Ok(()) => StoreError::Other("a conflict without its error".into()),
        }
    }

    /// Record the success of many applies, each exactly as [`Store::settle_applied`] does, as
    /// one batch; one result per row.
    pub async fn settle_applied_many(
        &self,
        rows: Vec<(OutboxItem, TargetState)>,
        now_ms: i64,
    ) -> Vec<Result<(), StoreError>> {
        let n = rows.len();
        self.count(|c| &c.settles, n);
        let rows: Vec<(OutboxItem, TargetState, Option<String>)> = rows
            .into_iter()
            .map(|(item, state)| {
                let key_norm = state
                    .target_key
                    .as_deref()
                    .map(|k| self.norm_key(&state.target, state.resource_type, k));
                (item, state, key_norm)
            })
            .collect();
        let done = self
            .run(move |conn| {
                Ok(write_each(conn, rows, |conn, (item, state, key_norm)| {
                    outbox::settle_applied(conn, &item, &state, key_norm.as_deref(), now_ms)
                }))
            })
            .await;
        let results = match done {
            Ok(out) => out,
            Err(e) => {
                let text = e.to_string();
                return (0..n)
                    .map(|_| Err(StoreError::Unavailable(text.clone())))
                    .collect();
            }
        };
        let mut out = Vec::with_capacity(results.len());
        for r in results {
            out.push(self.name_holder(r).await);
        }
        out
    }

    /// Renew the leases of many claims to `now_ms + lease_ms` (each as
    /// [`Store::renew_claim`]), as one batch; false for a claim that was lost.
    pub async fn renew_claims(
        &self,
        items: Vec<OutboxItem>,
        now_ms: i64,
        lease_ms: i64,
    ) -> Vec<Result<bool, StoreError>> {
        let n = items.len();
        self.count(|c| &c.renewals, n);
        let instance = self.inner.instance_id.clone();
        let done = self
            .run(move |conn| {
                Ok(write_each(conn, items, |conn, item| {
                    outbox::renew_claim(conn, &instance, &item, now_ms, lease_ms)
                }))
            })
            .await;
        match done {
            Ok(out) => out,
            Err(e) => {
                let text = e.to_string();
                (0..n)
                    .map(|_| Err(StoreError::Unavailable(text.clone())))
                    .collect()
            }
        }
    }
}
