//! `verify`: is every target what the store says it should be? Built on drift repair's dry run
//! (`worker::apply` with `dry_run`: the same render, read and diff an apply uses, so
//! verify and repair can never disagree about what differs), plus two whole-target checks a
//! per-resource apply cannot make: a target key held (or intended) by two resources, and, for
//! LDAP, entries our bind DN created below a managed container that no resource holds.
//!
//! Everything is read in pages: the store's states and live ids by keyset pages, the LDAP
//! containers with the paged-results control. Only the keys of held entries are kept in
//! memory (for the "held twice" and "extra" checks), never whole entries.
//!
//! Writes nothing: no intent, no note, no settle, no outbox row. Must not repair.

use super::worker::{apply, desired_of};
use super::{Reconciler, TargetRuntime};
use crate::mapping::dn::{normalize_dn, split_rdn};
use crate::scim::resource::ResourceType;
use crate::targets::{AnyTarget, Desired, Kind, Lease};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

/// Store rows and LDAP entries per page.
const PAGE: i64 = 500;
/// Differences kept in the report (all are counted).
const KEEP: usize = 10_000;

/// What is wrong at one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// An attribute (or column) holds other values than the store renders.
    Attribute {
        /// The attribute name, lower-cased.
        attribute: String,
        /// What the store renders (only the differing values for per-value changes).
        want: Vec<String>,
        /// What the target holds (idem).
        have: Vec<String>,
    },
    /// The store says an entry should be here; the target has none.
    Missing,
    /// The target holds an entry the store says should not exist (a deleted resource's, or one
    /// our bind DN created that no resource holds).
    Extra,
    /// The entry is recorded at another key than where it should be (or where it is).
    Moved {
        /// The key recorded in the store.
        recorded: Option<String>,
    },
    /// An entry is at the resource's key but the store does not record it as this resource's
    /// (an interrupted create, or an entry drift repair would adopt).
    Unrecorded,
    /// Two or more resources hold or intend this key.
    HeldTwice {
        /// "User `<id>`" / "Group `<id>`" (with "(intent)" for a create intent).
        by: Vec<String>,
    },
    /// A change an apply would make, as the target describes it (SQL statements).
    Change(String),
    /// Member values (LDAP) or membership rows (SQL) of a managed group that scim-sync did
    /// not write, kept under `foreign_members = "keep"`. Not a difference: listed in
    /// [`VerifyReport::foreign`], the report stays clean.
    Foreign(Vec<String>),
    /// The resource could not be compared.
    Failed(String),
}

/// One difference between a target and the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    /// The target.
    pub target: String,
    /// The resource, when the difference belongs to one.
    pub resource: Option<(ResourceType, String)>,
    /// The DN or row key.
    pub key: String,
    /// What differs.
    pub problem: Problem,
}

/// The result of a verify run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Resources compared.
    pub checked: u64,
    /// How many differences were found (the first `KEEP` are in `differences`).
    pub found: u64,
    /// The differences, in the order found.
    pub differences: Vec<Difference>,
    /// Outbox rows still pending when the run started (their differences may be in flight).
    pub pending: u64,
    /// Groups holding member values we did not write (`Problem::Foreign`, kept by the
    /// `foreign_members = "keep"` policy), the first `KEEP` of them.
    pub foreign: Vec<Difference>,
}

impl VerifyReport {
    /// True when every target agrees with the store.
    #[must_use]
    pub fn clean(&self) -> bool {
        self.found == 0
    }

    fn push(&mut self, d: Difference) {
        self.found += 1;
        if self.differences.len() < KEEP {
            self.differences.push(d);
        }
    }
}

/// The key as the target compares it: DNs per RFC 4514/4518 for LDAP, row keys as they are
/// (users and groups live in different SQL tables, so the kind is part of the key there).
fn key_norm(t: &TargetRuntime, ty: ResourceType, key: &str) -> String {
    match &t.target {
        AnyTarget::Ldap(_) => normalize_dn(key),
        AnyTarget::Sql(_) => format!("{}:{key}", ty.as_str()),
    }
}

fn label(ty: ResourceType, id: &str) -> String {
    format!("{} {id}", ty.as_str())
}

/// See [`Reconciler::verify`].
pub(crate) async fn verify<F: Fn(u64, u64)>(
    rec: &Reconciler,
    target: Option<&str>,
    progress: &F,
) -> VerifyReport {
    let mut report = VerifyReport::default();
    let targets: Vec<Arc<TargetRuntime>> = rec
        .inner
        .targets
        .iter()
        .filter(|t| target.is_none_or(|n| n == t.name))
        .cloned()
        .collect();
    let names: Vec<String> = targets.iter().map(|t| t.name.clone()).collect();
    if let Ok(status) = rec.inner.store.status(&names).await {
        report.pending = status.iter().map(|s| s.pending).sum();
    }
    let mut seen_total = 0u64;
    for t in &targets {
        if let Err(e) = verify_target(rec, t, &mut report, &mut seen_total, progress).await {
            report.push(Difference {
                target: t.name.clone(),
                resource: None,
                key: String::new(),
                problem: Problem::Failed(e),
            });
        }
    }
    report
}

async fn verify_target<F: Fn(u64, u64)>(
    rec: &Reconciler,
    t: &TargetRuntime,
    report: &mut VerifyReport,
    seen_total: &mut u64,
    progress: &F,
) -> Result<(), String> {
    let store = &rec.inner.store;
    // Normalised key -> holders; keys intended by a create that has not recorded its entry.
    let mut held: HashMap<String, Vec<String>> = HashMap::new();
    let mut intended: HashMap<String, Vec<String>> = HashMap::new();
    // Keys reserved by a rename not settled yet (`extra.renaming`): the entry may be there.
    let mut reserved: HashMap<String, Vec<String>> = HashMap::new();
    let mut parents: BTreeSet<String> = BTreeSet::new();
    let mut with_state: HashSet<String> = HashSet::new();
    let mut after = String::new();
    loop {
        let page = store
            .target_states_page(&t.name, &after, PAGE)
            .await
            .map_err(|e| format!("cannot read the store: {e}"))?;
        let Some(last) = page.last() else { break };
        after.clone_from(&last.resource_id);
        *seen_total += u64::try_from(page.len()).unwrap_or(0);
        for s in page {
            with_state.insert(s.resource_id.clone());
            let who = label(s.resource_type, &s.resource_id);
            if let Some(k) = &s.target_key {
                let norm = key_norm(t, s.resource_type, k);
                let renaming = s
                    .extra
                    .as_ref()
                    .and_then(|e| e.renaming.as_deref())
                    .map(|r| (r, key_norm(t, s.resource_type, r)))
                    .filter(|(_, n)| *n != norm);
                if let Some((r, n)) = renaming {
                    parents.insert(split_rdn(r).1);
                    reserved
                        .entry(n)
                        .or_default()
                        .push(format!("{who} (rename)"));
                }
                held.entry(norm).or_default().push(who);
                parents.insert(split_rdn(k).1);
            } else if let Some(c) = s.extra.as_ref().and_then(|e| e.creating.as_deref()) {
                parents.insert(split_rdn(c).1);
                // The intent of a deleted resource holds nothing: an entry there is extra.
                if !live(rec, s.resource_type, &s.resource_id).await? {
                    compare(rec, t, s.resource_type, &s.resource_id, report).await;
                    progress(report.checked, *seen_total);
                    continue;
                }
                intended
                    .entry(key_norm(t, s.resource_type, c))
                    .or_default()
                    .push(format!("{who} (intent)"));
            }
            compare(rec, t, s.resource_type, &s.resource_id, report).await;
            progress(report.checked, *seen_total);
        }
    }
    for ty in [ResourceType::User, ResourceType::Group] {
        if ty == ResourceType::Group && t.map.groups.is_none() {
            continue;
        }
        let mut after = String::new();
        loop {
            let page = store
                .live_ids_page(ty, &after, PAGE)
                .await
                .map_err(|e| format!("cannot read the store: {e}"))?;
            let Some(last) = page.last() else { break };
            after.clone_from(last);
            let fresh: Vec<String> = page
                .into_iter()
                .filter(|id| !with_state.contains(id))
                .collect();
            *seen_total += u64::try_from(fresh.len()).unwrap_or(0);
            for id in fresh {
                compare(rec, t, ty, &id, report).await;
                progress(report.checked, *seen_total);
            }
        }
    }
    // Held twice: two states at one key, or a create intent or rename reservation at a key
    // another resource holds, intends or reserved.
    let mut keys: BTreeMap<&String, Vec<String>> = BTreeMap::new();
    for (k, by) in held.iter().chain(intended.iter()).chain(reserved.iter()) {
        keys.entry(k).or_default().extend(by.iter().cloned());
    }
    for (k, by) in keys {
        if by.len() > 1 {
            report.push(Difference {
                target: t.name.clone(),
                resource: None,
                key: k.clone(),
                problem: Problem::HeldTwice { by },
            });
        }
    }
    if let AnyTarget::Ldap(l) = &t.target {
        let s = l.settings();
        parents.extend(s.users.base.iter().cloned());
        if let Some(to) = s.users.deactivate.as_ref().and_then(|d| d.move_to.clone()) {
            parents.insert(to);
        }
        let mut bases: BTreeMap<String, String> = BTreeMap::new();
        for p in parents {
            bases.entry(normalize_dn(&p)).or_insert(p);
        }
        for base in bases.values() {
            let mut extra = Vec::new();
            l.created_by_us(base, i32::try_from(PAGE).unwrap_or(500), |dns| {
                for dn in dns {
                    let n = normalize_dn(&dn);
                    let known = held.contains_key(&n)
                        || intended.contains_key(&n)
                        || reserved.contains_key(&n);
                    if !known {
                        extra.push(dn);
                    }
                }
            })
            .await
            .map_err(|e| format!("cannot list the entries below {base}: {e}"))?;
            for dn in extra {
                report.push(Difference {
                    target: t.name.clone(),
                    resource: None,
                    key: dn,
                    problem: Problem::Extra,
                });
            }
        }
    }
    Ok(())
}

/// Whether the resource is live in the store (not deleted, not purged).
async fn live(rec: &Reconciler, ty: ResourceType, id: &str) -> Result<bool, String> {
    let store = &rec.inner.store;
    let found = match ty {
        ResourceType::User => store
            .get_user_any(id)
            .await
            .map(|u| u.is_some_and(|u| !u.deleted)),
        ResourceType::Group => store
            .get_group_any(id)
            .await
            .map(|g| g.is_some_and(|g| !g.deleted)),
    };
    found.map_err(|e| format!("cannot read the store: {e}"))
}

/// Dry-run one resource and turn what an apply would do into differences.
async fn compare(
    rec: &Reconciler,
    t: &TargetRuntime,
    ty: ResourceType,
    id: &str,
    report: &mut VerifyReport,
) {
    report.checked += 1;
    let diff = |key: String, problem: Problem| Difference {
        target: t.name.clone(),
        resource: Some((ty, id.to_owned())),
        key,
        problem,
    };
    let done = match apply(rec, t, ty, id, true, Lease::default()).await {
        Ok(done) => done,
        Err(e) => {
            report.push(diff(String::new(), Problem::Failed(e.text())));
            return;
        }
    };
    if !done.outcome.foreign.is_empty() && report.foreign.len() < KEEP {
        report.foreign.push(diff(
            done.outcome.key.clone().unwrap_or_default(),
            Problem::Foreign(done.outcome.foreign.clone()),
        ));
    }
    let recorded = done.prior.key.clone();
    let at = done.outcome.key.clone();
    if done.outcome.changes.is_empty() {
        if recorded != at {
            report.push(diff(at.unwrap_or_default(), Problem::Moved { recorded }));
        }
        return;
    }
    let desired = match desired_of(rec, t, ty, id).await {
        Ok(d) => d,
        Err(e) => {
            report.push(diff(String::new(), Problem::Failed(e.text())));
            return;
        }
    };
    let AnyTarget::Ldap(l) = &t.target else {
        for line in &done.outcome.changes {
            report.push(diff(
                at.clone().or(recorded.clone()).unwrap_or_default(),
                Problem::Change(line.clone()),
            ));
        }
        return;
    };
    for line in &done.outcome.changes {
        let mut parts = line.split(" / ");
        let head = parts.next().unwrap_or_default();
        let (op, rest) = head.split_once(": ").unwrap_or((head, ""));
        match op {
            "add" => report.push(diff(rest.to_owned(), Problem::Missing)),
            "delete" => {
                // A dry-run delete does not look first: only an entry that is there is extra.
                match l.read_entry(rest, &[]).await {
                    Ok(Some(_)) => report.push(diff(rest.to_owned(), Problem::Extra)),
                    Ok(None) => {}
                    Err(e) => report.push(diff(rest.to_owned(), Problem::Failed(e.to_string()))),
                }
            }
            "modrdn" => report.push(diff(
                at.clone().unwrap_or_default(),
                Problem::Moved {
                    recorded: Some(rest.to_owned()),
                },
            )),
            "modify" => {
                let mods: Vec<&str> = parts.collect();
                for p in attribute_problems(l, rest, &mods, desired.as_ref()).await {
                    report.push(diff(rest.to_owned(), p));
                }
            }
            _ if line.starts_with("resume: ") || line.starts_with("adopt: ") => {
                report.push(diff(at.clone().unwrap_or_default(), Problem::Unrecorded));
            }
            _ => report.push(diff(
                at.clone().unwrap_or_default(),
                Problem::Change(line.clone()),
            )),
        }
    }
}

/// The attribute differences behind one dry-run modify of `dn` (`mods` as the LDAP target
/// describes them: `op: attr` or, per value, `op: attr: value`). Per-value lines give want and
/// have directly; whole-attribute ones read the entry for "have" and take "want" from the
/// rendered entry (or the deactivation values the target sets).
async fn attribute_problems(
    l: &crate::targets::ldap::LdapTarget,
    dn: &str,
    mods: &[&str],
    desired: Option<&Desired>,
) -> Vec<Problem> {
    let mut per_value: BTreeMap<String, (Vec<String>, Vec<String>)> = BTreeMap::new();
    let mut whole: Vec<(String, String)> = Vec::new();
    for m in mods {
        let mut it = m.splitn(3, ": ");
        let (op, attr, value) = (it.next(), it.next(), it.next());
        let (Some(op), Some(attr)) = (op, attr) else {
            continue;
        };
        let attr = attr.to_ascii_lowercase();
        match (op, value) {
            ("add", Some(v)) => per_value.entry(attr).or_default().0.push(v.to_owned()),
            ("delete", Some(v)) => per_value.entry(attr).or_default().1.push(v.to_owned()),
            (op, _) => {
                if !whole.iter().any(|(_, a)| a == &attr) {
                    whole.push((op.to_owned(), attr));
                }
            }
        }
    }
    let mut out: Vec<Problem> = per_value
        .into_iter()
        .map(|(attribute, (want, have))| Problem::Attribute {
            attribute,
            want,
            have,
        })
        .collect();
    if whole.is_empty() {
        return out;
    }
    let names: Vec<String> = whole.iter().map(|(_, a)| a.clone()).collect();
    let current = match l.read_entry(dn, &names).await {
        Ok(c) => c,
        Err(e) => {
            out.push(Problem::Failed(e.to_string()));
            return out;
        }
    };
    let settings = l.settings();
    let disable = settings
        .users
        .deactivate
        .as_ref()
        .filter(|_| desired.is_some_and(|d| d.kind == Kind::User && !d.active))
        .map(|d| &d.set);
    for (op, attr) in whole {
        let hidden = attr == "userpassword";
        let have = match (&current, attr.as_str()) {
            (Some(c), "objectclass") => c.object_classes.clone(),
            (Some(c), a) => c.attrs.get(a).cloned().unwrap_or_default(),
            (None, _) => Vec::new(),
        };
        let want = if op == "delete" {
            Vec::new()
        } else if attr == "objectclass" {
            desired
                .map(|d| d.entry.object_classes.clone())
                .unwrap_or_default()
        } else {
            desired
                .and_then(|d| {
                    d.entry
                        .attrs
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case(&attr))
                        .map(|(_, v)| v.clone())
                })
                .or_else(|| {
                    disable.and_then(|set| {
                        set.iter()
                            .find(|(k, _)| k.eq_ignore_ascii_case(&attr))
                            .map(|(_, v)| v.clone())
                    })
                })
                .unwrap_or_default()
        };
        let (want, have) = if hidden {
            (vec!["(hidden)".to_owned()], vec!["(hidden)".to_owned()])
        } else {
            (want, have)
        };
        out.push(Problem::Attribute {
            attribute: attr,
            want,
            have,
        });
    }
    out
}
