//! Making one LDAP entry match its desired state: locate (with rename/move), ownership check,
//! add or modify (mapped attributes only, via `mapping::diff`), deactivation and reactivation,
//! per-value membership changes, role groups, delete; dry runs report the plan as LDIF-like
//! lines and write nothing. Idempotent: safe to repeat after any failure. Must not know SCIM.

use super::codes;
use super::conn::LdapTarget;
use super::flavour::{self, Flavour, ValueOp};
use super::settings::Settings;
use crate::bookkeeping::{Bookkeeping, Disabled, Intent};
use crate::config::target::{DeactivatePolicy, MemberValue, OnDelete, OnExisting, PasswordMode};
use crate::mapping::dn::{dn_eq, normalize_dn, split_rdn};
use crate::mapping::{diff, Entry, Mod};
use crate::targets::plan::{self, Found};
use crate::targets::{
    Change, Desired, ErrorClass, Kind, Lease, MemberChanges, Outcome, Prior, TargetError,
};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashSet};

/// How `locate` reports an entry left by an interrupted create of ours (a dry-run line).
const RESUME: &str = "resume: ";

/// Values per membership modify (large groups are changed in chunks).
const MEMBER_CHUNK: usize = 500;

/// Executes (or, in a dry run, only records) the changes.
struct Exec<'a> {
    t: &'a LdapTarget,
    dry_run: bool,
    changes: Vec<String>,
    /// Checked before every write: none starts unless its timeout remains on the claim.
    lease: &'a Lease,
    /// Member values found that we did not write and kept (see [`Outcome::foreign`]).
    foreign: Vec<String>,
    /// The DN and stable id of the entry this apply added, when the add's answer carried the
    /// id (Post-Read): [`entry_uuid`] then needs no search.
    added_id: Option<(String, String)>,
}

fn permanent(message: String) -> TargetError {
    TargetError {
        class: ErrorClass::Permanent,
        code: None,
        message,
    }
}

fn to_ldap(m: &Mod) -> ldap3::Mod<String> {
    match m {
        Mod::Add(a, v) => ldap3::Mod::Add(a.clone(), v.iter().cloned().collect()),
        Mod::Delete(a, v) => ldap3::Mod::Delete(a.clone(), v.iter().cloned().collect()),
        Mod::Replace(a, v) => ldap3::Mod::Replace(a.clone(), v.iter().cloned().collect()),
    }
}

fn describe(m: &Mod, show_values: bool) -> String {
    let (op, a, v) = match m {
        Mod::Add(a, v) => ("add", a, v),
        Mod::Delete(a, v) => ("delete", a, v),
        Mod::Replace(a, v) => ("replace", a, v),
    };
    if show_values && !v.is_empty() {
        v.iter()
            .map(|x| format!("{op}: {a}: {x}"))
            .collect::<Vec<_>>()
            .join(" / ")
    } else {
        format!("{op}: {a}")
    }
}

impl Exec<'_> {
    /// Right before a write: the connection is up (a reconnect takes up to connect_timeout,
    /// not counted after the check), then at least the operation's timeout remains on the
    /// lease.
    async fn fence(&self) -> Result<(), TargetError> {
        self.t.connected().await?;
        self.lease.check(self.t.settings().timeout)
    }

    async fn add(
        &mut self,
        dn: &str,
        attrs: Vec<(String, Vec<String>)>,
    ) -> Result<u32, TargetError> {
        if self.dry_run {
            self.changes.push(format!("add: {dn}"));
            return Ok(0);
        }
        self.fence().await?;
        let (rc, id) = self.t.add(dn, attrs).await?;
        // An add answered "already exists" changed nothing: the caller decides what the entry
        // there is (and logs that instead).
        if rc == 0 {
            self.changes.push(format!("add: {dn}"));
        }
        if let Some(id) = id {
            self.added_id = Some((dn.to_owned(), id));
        }
        Ok(rc)
    }

    /// One modify with all `mods`. If it fails only because a value already exists (20) or
    /// is already gone (16), retry value by value, treating those codes as done.
    async fn modify(
        &mut self,
        dn: &str,
        mods: Vec<Mod>,
        show_values: bool,
    ) -> Result<(), TargetError> {
        if mods.is_empty() {
            return Ok(());
        }
        let line = std::iter::once(format!("modify: {dn}"))
            .chain(mods.iter().map(|m| describe(m, show_values)))
            .collect::<Vec<_>>()
            .join(" / ");
        self.changes.push(line);
        if self.dry_run {
            return Ok(());
        }
        let lmods: Vec<ldap3::Mod<String>> = mods.iter().map(to_ldap).collect();
        let flavour = self.t.flavour();
        let ok = flavour.any_already_so();
        self.fence().await?;
        let rc = self.t.modify(dn, lmods, &ok).await?;
        if rc == 0 {
            return Ok(());
        }
        for m in &mods {
            let singles: Vec<Mod> = match m {
                Mod::Add(a, v) => v
                    .iter()
                    .map(|x| Mod::Add(a.clone(), vec![x.clone()]))
                    .collect(),
                Mod::Delete(a, v) if !v.is_empty() => v
                    .iter()
                    .map(|x| Mod::Delete(a.clone(), vec![x.clone()]))
                    .collect(),
                other => vec![other.clone()],
            };
            for s in singles {
                self.fence().await?;
                self.single_value_change(dn, s).await?;
            }
        }
        Ok(())
    }

    /// One value change of the value-by-value retry: the flavour's "already so" codes
    /// (`flavour.rs`) are done; those that mean other things too (AD's 68 and 53) only once a
    /// read shows the value is there (add) or gone (delete).
    async fn single_value_change(&mut self, dn: &str, m: Mod) -> Result<(), TargetError> {
        let flavour = self.t.flavour();
        let op = match &m {
            Mod::Add(..) => Some(ValueOp::Add),
            Mod::Delete(_, v) if !v.is_empty() => Some(ValueOp::Delete),
            _ => None,
        };
        let tolerated: &[u32] = op.map_or(&[], |op| flavour.already_so(op));
        let rc = self.t.modify(dn, vec![to_ldap(&m)], tolerated).await?;
        let (Some(op), Mod::Add(a, v) | Mod::Delete(a, v)) = (op, &m) else {
            return Ok(());
        };
        if rc == 0 || !flavour.needs_confirmation(op, rc) {
            return Ok(());
        }
        let value = v.first().map(String::as_str).unwrap_or_default();
        let present = self.t.has_value(dn, a, value).await?;
        if present == (op == ValueOp::Add) {
            return Ok(());
        }
        Err(codes::from_result(
            rc,
            &format!(
                "{} {a}: {value} is not so after all",
                if op == ValueOp::Add { "add" } else { "delete" }
            ),
            &format!("modify {dn}"),
        ))
    }

    /// Rename `old` to `new`; returns false when `old` no longer exists.
    async fn modrdn(&mut self, old: &str, new: &str) -> Result<bool, TargetError> {
        let (_, old_parent) = split_rdn(old);
        let (new_rdn, new_parent) = split_rdn(new);
        let sup = (!dn_eq(&old_parent, &new_parent)).then_some(new_parent.as_str());
        self.changes.push(match sup {
            Some(s) => format!("modrdn: {old} / newrdn: {new_rdn} / newsuperior: {s}"),
            None => format!("modrdn: {old} / newrdn: {new_rdn}"),
        });
        if self.dry_run {
            return Ok(true);
        }
        self.fence().await?;
        match self.t.modrdn(old, &new_rdn, sup).await {
            Ok(rc) => Ok(rc == 0),
            Err(e) if e.code.as_deref() == Some("68") => Err(permanent(format!(
                "cannot rename {old} to {new}: an entry already exists there"
            ))),
            Err(e) => Err(e),
        }
    }

    async fn delete(&mut self, dn: &str) -> Result<(), TargetError> {
        self.changes.push(format!("delete: {dn}"));
        if self.dry_run {
            return Ok(());
        }
        self.fence().await?;
        self.t.delete(dn).await.map(|_| ())
    }
}

/// Entry point of `Target::sync` for LDAP.
pub(super) async fn sync(
    t: &LdapTarget,
    change: Change<'_>,
    prior: &Prior,
    dry_run: bool,
) -> Result<Outcome, TargetError> {
    let mut ex = Exec {
        t,
        dry_run,
        changes: Vec::new(),
        lease: &prior.lease,
        foreign: Vec::new(),
        added_id: None,
    };
    let (key, extra) = match change {
        Change::Remove { kind } => remove(&mut ex, prior, kind).await?,
        Change::Upsert(d) if d.kind == Kind::User => sync_user(&mut ex, d, prior).await?,
        Change::Upsert(d) => sync_group(&mut ex, d, prior).await?,
    };
    Ok(Outcome {
        key,
        extra,
        changes: ex.changes,
        foreign: ex.foreign,
    })
}

/// The DN `sync` gives the entry of `d`: the rendered DN, or for an inactive user under
/// `policy = "move"` the same RDN below `move_to`; `None` for an inactive user under
/// `policy = "delete"` (see `Target::planned_key`).
pub(super) fn planned_dn(settings: &Settings, d: &Desired) -> Option<String> {
    if d.kind == Kind::Group || d.active {
        return Some(d.entry.key.clone());
    }
    let deactivate = settings.users.deactivate.as_ref();
    match deactivate.map(|x| (x.policy, x.move_to.as_ref())) {
        Some((DeactivatePolicy::Delete, _)) => None,
        Some((DeactivatePolicy::Move, Some(to))) => {
            Some(format!("{},{to}", split_rdn(&d.entry.key).0))
        }
        _ => Some(d.entry.key.clone()),
    }
}

fn prior_extra(prior: &Prior) -> Bookkeeping {
    prior.extra.clone().unwrap_or_default()
}

fn same_set(a: &[String], b: &[String]) -> bool {
    a.len() == b.len() && a.iter().all(|x| b.contains(x))
}

/// Find the live entry for `desired_dn`: renames/moves it from `prior.key` when that differs,
/// applies the ownership rule when we never applied it. Returns the entry (as read) or `None`.
async fn locate(
    ex: &mut Exec<'_>,
    prior: &Prior,
    desired_dn: &str,
    attrs: &[String],
) -> Result<Option<Entry>, TargetError> {
    let t = ex.t;
    match &prior.key {
        Some(old) if !dn_eq(old, desired_dn) => {
            if let Some(cur) = t.read(old, attrs).await? {
                if t.read(desired_dn, &[]).await?.is_some() {
                    return Err(permanent(format!(
                        "cannot rename {old} to {desired_dn}: an entry already exists there"
                    )));
                }
                if ex.modrdn(old, desired_dn).await? {
                    if ex.dry_run {
                        return Ok(Some(cur));
                    }
                    return t.read(desired_dn, attrs).await;
                }
            }
            // The old entry is gone (renamed before a crash, or deleted by hand).
            let cur = t.read(desired_dn, attrs).await?;
            if cur.is_some() {
                return Ok(cur);
            }
            take_moved(ex, prior, old, desired_dn, attrs).await
        }
        Some(old) => {
            let cur = t.read(desired_dn, attrs).await?;
            if cur.is_some() {
                return Ok(cur);
            }
            take_moved(ex, prior, old, desired_dn, attrs).await
        }
        None => {
            let cur = t.read(desired_dn, attrs).await?;
            if cur.is_none() {
                // An interrupted create under an earlier intent (the resource was renamed
                // or moved before it settled) may have left its entry at the old DN.
                for dn in interrupted_entries(t, prior, false).await? {
                    if dn_eq(&dn, desired_dn) {
                        continue;
                    }
                    let found = t.read(&dn, attrs).await?;
                    if ex.modrdn(&dn, desired_dn).await? {
                        ex.changes
                            .push(format!("{RESUME}{dn} (created by an interrupted apply)"));
                        if ex.dry_run {
                            return Ok(found);
                        }
                        return t.read(desired_dn, attrs).await;
                    }
                }
                return Ok(None);
            }
            let ours = created_by_interrupted_apply(t, prior, desired_dn).await?
                || taken_from_an_orphan(t, prior, desired_dn).await?;
            match plan::unrecorded_entry(true, ours, t.settings.on_existing) {
                Found::Create => {}
                Found::Resume => ex.changes.push(format!(
                    "{RESUME}{desired_dn} (created by an interrupted apply)"
                )),
                Found::Adopt => ex.changes.push(format!("adopt: {desired_dn}")),
                Found::Refuse => {
                    return Err(TargetError {
                        class: ErrorClass::Permanent,
                        code: Some(codes::ENTRY_ALREADY_EXISTS.to_string()),
                        message: format!(
                            "{desired_dn}: entry exists and is not managed by scim-sync \
                             (set on_existing = \"adopt\" to take it over)"
                        ),
                    })
                }
            }
            Ok(cur)
        }
    }
}

/// Whether the entry at `dn` was created by an apply of ours for *this* resource that was
/// interrupted before its outcome was recorded (a crash between the LDAP add and the store's
/// commit). The reconciler records the intent first, and the store refuses an intent for a
/// key another resource holds or intends (its unique index on the normalised DN); a later
/// attempt for the same DN finds in `prior.extra` `creating` = dn, `since_ms` = the first
/// attempt, `prev_attempt_ms` = the attempt before this one, `attempt_ms` = this one. The entry is ours
/// only when this resource's intent names this DN, our bind DN created it, and its
/// `createTimestamp` lies between the intent and the start of this attempt (the fence: an
/// earlier attempt's add was done before the lease it ran under ended, and this attempt's
/// claim came after): an add of this attempt has not happened yet, and an entry we created
/// earlier, for a resource that held the DN before, is older than the intent. Anything else at that DN stays unmanaged. `createTimestamp` has whole
/// seconds, so the lower bound is the intent's second.
async fn created_by_interrupted_apply(
    t: &LdapTarget,
    prior: &Prior,
    dn: &str,
) -> Result<bool, TargetError> {
    let Some(window) = intent_window(prior, dn) else {
        return Ok(false);
    };
    created_in(t, dn, window).await
}

/// After an add found an entry already at `dn` (a race with another writer): whether it must
/// be refused ([`plan::unrecorded_entry`]); a resource with a recorded entry converges.
async fn raced_and_refused(t: &LdapTarget, prior: &Prior, dn: &str) -> Result<bool, TargetError> {
    if prior.key.is_some() {
        return Ok(false);
    }
    // Whether the entry is ours decides only under `on_existing = "conflict"` (no read else).
    let policy = t.settings.on_existing;
    let ours = policy == OnExisting::Conflict && created_by_interrupted_apply(t, prior, dn).await?;
    Ok(plan::unrecorded_entry(true, ours, policy) == Found::Refuse)
}

/// Whether our bind DN created the entry at `dn` inside `window` (ms; see
/// [`created_by_interrupted_apply`]).
async fn created_in(t: &LdapTarget, dn: &str, window: (i64, i64)) -> Result<bool, TargetError> {
    created_in_any(t, dn, &[window]).await
}

/// Whether our bind DN created the entry at `dn` inside one of `windows`.
async fn created_in_any(
    t: &LdapTarget,
    dn: &str,
    windows: &[(i64, i64)],
) -> Result<bool, TargetError> {
    if windows.is_empty() {
        return Ok(false);
    }
    let Some(bind) = t.settings.bind_dn.as_deref() else {
        return Ok(false);
    };
    let wanted = ["creatorsName".to_string(), "createTimestamp".to_string()];
    let Some(entry) = t.read(dn, &wanted).await? else {
        return Ok(false);
    };
    let first = |name: &str| entry.attrs.get(name).and_then(|v| v.first()).cloned();
    let by_us = first("creatorsname").is_some_and(|c| dn_eq(&c, bind));
    let created_ms = first("createtimestamp").and_then(|ts| generalized_time_ms(&ts));
    Ok(by_us && created_ms.is_some_and(|c| windows.iter().any(|w| w.0 <= c && c <= w.1)))
}

/// The time window (ms) in which an add of ours for this resource at `dn` can have happened,
/// from its recorded intent; `None` when the intent does not name `dn`.
fn intent_window(prior: &Prior, dn: &str) -> Option<(i64, i64)> {
    let extra = prior.extra.as_ref()?;
    let creating = extra.creating.as_deref()?;
    if !dn_eq(creating, dn) {
        return None;
    }
    let since_ms = extra.since_ms?;
    // The first attempt has no earlier add of ours to find.
    extra.prev_attempt_ms?;
    // Up to this attempt's start: every earlier attempt's writes were done by then (a write
    // starts only while its timeout remains on the lease, and this attempt's claim came
    // after that lease), and this attempt has added nothing yet.
    let attempt_ms = extra.attempt_ms?;
    Some((
        since_ms - since_ms.rem_euclid(1000),
        attempt_ms.max(since_ms),
    ))
}

/// How long after its start one attempt's add can be done: a connect, a bind, a read and the
/// add, each bounded.
fn attempt_budget_ms(settings: &Settings) -> i64 {
    let budget = settings
        .connect_timeout
        .saturating_add(settings.timeout.saturating_mul(4));
    i64::try_from(budget.as_millis()).unwrap_or(i64::MAX)
}

/// The window of an intent no attempt of this apply will add under (the resource is being
/// deleted, or the intent was replaced by one for another DN: `released_ms`): from the
/// intent's second to the end of its last recorded attempt's add, and never after it was
/// released (another resource may intend that DN from then on).
fn recorded_window(settings: &Settings, intent: &Intent) -> Option<(String, (i64, i64))> {
    let dn = intent.creating.as_deref()?;
    let since_ms = intent.since_ms?;
    let last = intent.attempt_ms.unwrap_or(since_ms).max(since_ms);
    let mut upper = last.saturating_add(attempt_budget_ms(settings));
    if let Some(released) = intent.released_ms {
        upper = upper.min(released);
    }
    Some((dn.to_owned(), (since_ms - since_ms.rem_euclid(1000), upper)))
}

/// The DNs of entries that interrupted creates of this resource left and that no settle
/// recorded: under the earlier intents an intent replaced (`orphans`, newest first; the worker
/// drops those whose DN another resource now holds or intends) and, with `with_intent`, under
/// the current intent (a delete: no attempt of this apply adds there). An entry counts only
/// when our bind DN created it inside that intent's window.
async fn interrupted_entries(
    t: &LdapTarget,
    prior: &Prior,
    with_intent: bool,
) -> Result<Vec<String>, TargetError> {
    if prior.key.is_some() {
        return Ok(Vec::new());
    }
    let Some(extra) = prior.extra.as_ref() else {
        return Ok(Vec::new());
    };
    let mut intents: Vec<Intent> = Vec::new();
    if with_intent {
        intents.extend(extra.intent());
    }
    intents.extend(extra.orphans.iter().rev().cloned());
    let recorded: Vec<(String, (i64, i64))> = intents
        .iter()
        .filter_map(|i| recorded_window(&t.settings, i))
        .collect();
    // An entry an earlier attempt added under one intent may since have been renamed to
    // another intent's DN (by an attempt interrupted after taking it along): any window
    // counts at any of these DNs.
    let windows: Vec<(i64, i64)> = recorded.iter().map(|(_, w)| *w).collect();
    let mut out: Vec<String> = Vec::new();
    for (dn, _) in recorded {
        if out.iter().any(|o| dn_eq(o, &dn)) {
            continue;
        }
        if created_in_any(t, &dn, &windows).await? {
            out.push(dn);
        }
    }
    Ok(out)
}

/// Whether the entry at `dn` is one an interrupted create made under an earlier intent
/// (`orphans`) and a later attempt, interrupted too, already renamed to `dn`.
async fn taken_from_an_orphan(
    t: &LdapTarget,
    prior: &Prior,
    dn: &str,
) -> Result<bool, TargetError> {
    let windows: Vec<(i64, i64)> = prior
        .extra
        .iter()
        .flat_map(|e| &e.orphans)
        .filter_map(|o| recorded_window(&t.settings, o))
        .map(|(_, w)| w)
        .collect();
    created_in_any(t, dn, &windows).await
}

/// The entry recorded at `key`, when it is no longer there: an interrupted rename moved it
/// before its settle (to the DN its reservation noted, `renaming`), or it moved otherwise.
/// Found by its recorded stable id (`entryUUID`, `nsUniqueId` or `objectGUID`) only: at the noted DN, else in the subtrees of the old
/// parent, the users' base and the deactivation `move_to`. `None` without a recorded id.
async fn moved_entry(
    t: &LdapTarget,
    prior: &Prior,
    key: &str,
) -> Result<Option<String>, TargetError> {
    let prev = prior_extra(prior);
    let Some(uuid) = prev.entry_uuid.as_deref() else {
        return Ok(None);
    };
    if let Some(renaming) = prev.renaming.as_deref() {
        let same = t
            .read_id(renaming)
            .await?
            .is_some_and(|u| u.eq_ignore_ascii_case(uuid));
        if same {
            return Ok(Some(renaming.to_owned()));
        }
    }
    let mut bases: Vec<String> = vec![split_rdn(key).1];
    bases.extend(t.settings.users.base.clone());
    bases.extend(
        t.settings
            .users
            .deactivate
            .as_ref()
            .and_then(|d| d.move_to.clone()),
    );
    let mut searched: Vec<String> = Vec::new();
    for base in bases {
        if base.is_empty() || searched.iter().any(|b| dn_eq(b, &base)) {
            continue;
        }
        if let Some(dn) = t.find_by_uuid(&base, uuid).await? {
            return Ok(Some(dn));
        }
        searched.push(base);
    }
    Ok(None)
}

/// The recorded entry is at neither `old` nor `desired_dn`: if it moved (see
/// [`moved_entry`]), rename it to `desired_dn` and return it.
async fn take_moved(
    ex: &mut Exec<'_>,
    prior: &Prior,
    old: &str,
    desired_dn: &str,
    attrs: &[String],
) -> Result<Option<Entry>, TargetError> {
    let t = ex.t;
    let Some(dn) = moved_entry(t, prior, old).await? else {
        return Ok(None);
    };
    if dn_eq(&dn, desired_dn) {
        return t.read(desired_dn, attrs).await;
    }
    let found = t.read(&dn, attrs).await?;
    if ex.modrdn(&dn, desired_dn).await? {
        if ex.dry_run {
            return Ok(found);
        }
        return t.read(desired_dn, attrs).await;
    }
    Ok(None)
}

/// `20261122224512Z` (or with fractional seconds) as milliseconds since the epoch.
fn generalized_time_ms(ts: &str) -> Option<i64> {
    let digits = ts.get(..14)?;
    let format = time::macros::format_description!("[year][month][day][hour][minute][second]");
    let t = time::PrimitiveDateTime::parse(digits, format)
        .ok()?
        .assume_utc();
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

/// The server's id of the entry at `dn` (the flavour's: `entryUUID`, RFC 4530; 389-DS
/// `nsUniqueId`; AD `objectGUID`; it survives renames and
/// moves), for the bookkeeping: read back after an add (`fresh`) or when none is recorded yet,
/// else the recorded one. `None` when the server has none (or in a dry run).
async fn entry_uuid(
    ex: &Exec<'_>,
    prev: &Bookkeeping,
    dn: &str,
    fresh: bool,
) -> Result<Option<String>, TargetError> {
    let known = prev.entry_uuid.as_deref();
    if let (Some(u), false) = (known, fresh) {
        return Ok(Some(u.to_owned()));
    }
    if ex.dry_run {
        return Ok(known.map(str::to_owned));
    }
    if let Some((added, id)) = &ex.added_id {
        if dn_eq(added, dn) {
            return Ok(Some(id.clone()));
        }
    }
    ex.t.read_id(dn).await
}

fn missing_object_classes(desired: &[String], current: &[String]) -> Option<Mod> {
    let missing: Vec<String> = desired
        .iter()
        .filter(|d| !current.iter().any(|c| c.eq_ignore_ascii_case(d)))
        .cloned()
        .collect();
    (!missing.is_empty()).then(|| Mod::Add("objectClass".into(), missing))
}

fn add_attrs(entry: &Entry, extra: &BTreeMap<String, Vec<String>>) -> Vec<(String, Vec<String>)> {
    let mut attrs: Vec<(String, Vec<String>)> =
        vec![("objectClass".into(), entry.object_classes.clone())];
    for (k, v) in entry.attrs.iter().chain(extra.iter()) {
        if !v.is_empty() {
            attrs.push((k.clone(), v.clone()));
        }
    }
    attrs
}

/// The server returns DN-valued attributes (`manager`, `secretary`, ...) in its own spelling
/// (`\,` for `\2c`, type case). Before diffing, a current value that names the same DN as a
/// desired value is replaced by the desired spelling, so equal DNs never look changed.
fn align_dn_values(desired: &Entry, current: &Entry) -> Entry {
    let mut out = current.clone();
    for (name, want) in &desired.attrs {
        let dn_like: Vec<&String> = want.iter().filter(|w| looks_like_dn(w)).collect();
        if dn_like.is_empty() {
            continue;
        }
        if let Some(have) = out.attrs.get_mut(name) {
            for v in have.iter_mut() {
                if want.contains(v) || !looks_like_dn(v) {
                    continue;
                }
                if let Some(w) = dn_like.iter().find(|w| dn_eq(w, v)) {
                    v.clone_from(w);
                }
            }
        }
    }
    out
}

fn looks_like_dn(v: &str) -> bool {
    v.contains('=') && crate::mapping::dn::parse_dn(v).is_ok_and(|r| !r.is_empty())
}

fn sha256_hex(s: &str) -> String {
    Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

async fn sync_user(
    ex: &mut Exec<'_>,
    d: &Desired,
    prior: &Prior,
) -> Result<(Option<String>, Option<Bookkeeping>), TargetError> {
    let t = ex.t;
    let us = &t.settings.users;
    let prev = prior_extra(prior);
    let policy = if d.active {
        None
    } else {
        us.deactivate.as_ref().map(|x| x.policy)
    };
    let member_attr = t.settings.member_attribute().to_owned();
    let uid = d.entry.attrs.get("uid").and_then(|v| v.first()).cloned();
    let member_uid = t
        .settings
        .groups
        .as_ref()
        .is_some_and(|g| g.member_value == MemberValue::Uid);

    if policy == Some(DeactivatePolicy::Delete) {
        if let Some(k) = &prior.key {
            remove_role_memberships(ex, &prev, &member_attr).await?;
            let k = where_now(t, prior, k).await?;
            ex.delete(&k).await?;
        } else {
            for dn in interrupted_entries(t, prior, true).await? {
                ex.delete(&dn).await?;
            }
        }
        let extra = Bookkeeping {
            kind: Some(Kind::User),
            deleted_inactive: Some(true),
            ..Bookkeeping::default()
        };
        return Ok((None, Some(extra)));
    }

    if t.flavour() == Flavour::Ad {
        if let Some(problem) = d
            .entry
            .attrs
            .get("samaccountname")
            .and_then(|v| v.first())
            .and_then(|n| flavour::sam_account_name_problem(n))
        {
            return Err(permanent(format!("{}: {problem}", d.entry.key)));
        }
    }
    let desired_dn = planned_dn(&t.settings, d).unwrap_or_else(|| d.entry.key.clone());
    let disable_set: BTreeMap<String, Vec<String>> = match (policy, us.deactivate.as_ref()) {
        (Some(DeactivatePolicy::Disable), Some(x)) => x.set.clone(),
        _ => BTreeMap::new(),
    };
    let mut prev_disabled = prev.disabled_attrs();
    // A deactivation was started but its outcome never recorded (interrupted before the
    // settle): the configured values may be ours, and are removed below only if they still
    // are exactly what the configuration sets.
    if prev_disabled.is_empty() && prev.deactivating == Some(true) {
        if let Some(x) = us.deactivate.as_ref() {
            prev_disabled.clone_from(&x.set);
        }
    }
    let mut read_attrs: Vec<String> = us.attributes.clone();
    read_attrs.extend(d.entry.attrs.keys().cloned());
    read_attrs.extend(disable_set.keys().cloned());
    read_attrs.extend(prev_disabled.keys().cloned());
    if let Some(x) = us.deactivate.as_ref() {
        read_attrs.extend(x.set.keys().cloned());
    }
    if !read_attrs.iter().any(|a| a == "uid") {
        read_attrs.push("uid".into());
    }

    let mut entry = d.entry.clone();
    entry.key.clone_from(&desired_dn);
    let password = match (us.password, &d.password_hash) {
        (PasswordMode::Sync, Some(h)) => Some(h.clone()),
        _ => None,
    };
    let pw_sha = password.as_deref().map(sha256_hex);

    let mut extra_attrs = disable_set.clone();
    if let Some(p) = &password {
        extra_attrs.insert("userPassword".into(), vec![p.clone()]);
    }
    // A first create that no earlier attempt can have left anywhere else (no DN recorded, no
    // orphaned intent): add at once instead of reading first. An entry already there (68)
    // then goes through `locate` exactly as if it had been read before the add: the ownership
    // rule decides, and no entry there at all is a unique value held elsewhere.
    let optimistic = !ex.dry_run
        && prior.key.is_none()
        && prior.extra.as_ref().is_none_or(|e| e.orphans.is_empty());
    let mut added = false;
    let current = if optimistic {
        match ex.add(&desired_dn, add_attrs(&entry, &extra_attrs)).await {
            Ok(0) => {
                added = true;
                None
            }
            Ok(_) => {
                let found = locate(ex, prior, &desired_dn, &read_attrs).await?;
                if found.is_none() {
                    return Err(unique_value_conflict(t, &desired_dn, &entry).await?);
                }
                found
            }
            // The server may refuse an add for another reason before it looks for an entry at
            // the DN (slapd checks the schema first; an overlay may answer): an entry there
            // is decided as if it had been read first (adopted, say, and then modified);
            // without one the add's own refusal stands.
            Err(e) if e.code.as_deref().is_some_and(|c| c.parse::<u32>().is_ok()) => {
                match locate(ex, prior, &desired_dn, &read_attrs).await? {
                    Some(found) => Some(found),
                    None => return Err(e),
                }
            }
            Err(e) => return Err(e),
        }
    } else {
        locate(ex, prior, &desired_dn, &read_attrs).await?
    };
    // An entry our interrupted create left may carry the disable values it was added with
    // (the user was inactive then): like an interrupted deactivation, they may be ours.
    if prev_disabled.is_empty() && ex.changes.iter().any(|c| c.starts_with(RESUME)) {
        if let Some(x) = us.deactivate.as_ref() {
            prev_disabled.clone_from(&x.set);
        }
    }
    let mut current = current;
    let resumed = ex.changes.iter().any(|c| c.starts_with(RESUME));
    // Read the entry's id afresh after an add, a resume or an adoption.
    let mut fresh = added || (current.is_some() && prior.key.is_none());
    if current.is_none() && !added {
        let rc = ex.add(&desired_dn, add_attrs(&entry, &extra_attrs)).await?;
        fresh = true;
        added = rc == 0;
        if rc == codes::ENTRY_ALREADY_EXISTS && t.read(&desired_dn, &[]).await?.is_none() {
            return Err(unique_value_conflict(t, &desired_dn, &entry).await?);
        }
        if rc == codes::ENTRY_ALREADY_EXISTS {
            // Lost a race with another writer: converge only if we may own it.
            if raced_and_refused(t, prior, &desired_dn).await? {
                return Err(permanent(format!(
                    "{desired_dn}: entry exists and is not managed by scim-sync"
                )));
            }
            current = t.read(&desired_dn, &read_attrs).await?;
        }
    }
    // Inactive users leave their role groups when remove_from_groups is on: before their own
    // entry is modified, so a modify the server refuses cannot keep them members (revocation
    // fails closed; test `ldap_target::a_deactivation_leaves_role_groups_even_when_the_entry_modify_fails`).
    let leave = !d.active && us.deactivate.as_ref().is_some_and(|x| x.remove_from_groups);
    let mut entry_mods = Vec::new();
    if let Some(cur) = &current {
        let mods = &mut entry_mods;
        mods.extend(missing_object_classes(
            &entry.object_classes,
            &cur.object_classes,
        ));
        mods.extend(diff(&entry, &align_dn_values(&entry, cur)));
        for (attr, vals) in &disable_set {
            let have = cur.attrs.get(attr).cloned().unwrap_or_default();
            if !same_set(&have, vals) {
                mods.push(Mod::Replace(attr.clone(), vals.clone()));
            }
        }
        // Reactivation removes exactly what we set, if it is still what we set.
        for (attr, vals) in &prev_disabled {
            if disable_set.contains_key(attr) || attr == UAC {
                continue;
            }
            let have = cur.attrs.get(attr).cloned().unwrap_or_default();
            if !have.is_empty() && same_set(&have, vals) {
                mods.push(Mod::Delete(attr.clone(), Vec::new()));
            }
        }
        if let (Some(p), Some(sha)) = (&password, &pw_sha) {
            if prev.password_sha256.as_deref() != Some(sha.as_str()) {
                mods.push(Mod::Replace("userPassword".into(), vec![p.clone()]));
            }
        }
    }
    if !leave {
        ex.modify(&desired_dn, std::mem::take(&mut entry_mods), false)
            .await?;
    }
    // AD: the account's disable bit. Set while inactive (policy "disable" without `set`);
    // cleared on reactivation when we set it, and after our add (AD creates an account
    // without a password disabled). Any bit we did not set stays as it is.
    let mut ad_disabled = false;
    if t.flavour() == Flavour::Ad {
        let disable = policy == Some(DeactivatePolicy::Disable)
            && us.deactivate.as_ref().is_some_and(|x| x.account_control);
        let ours = prev.disabled_attrs().contains_key(UAC)
            || prev.deactivating == Some(true)
            || added
            || resumed;
        if disable || ours {
            account_disable_bit(ex, &desired_dn, disable).await?;
        }
        ad_disabled = disable;
    }

    // Role groups.
    let member = if member_uid {
        uid.clone()
    } else {
        Some(desired_dn.clone())
    };
    let want_groups: Vec<String> = if leave {
        Vec::new()
    } else {
        d.role_groups.clone()
    };
    let prev_groups = prev.role_groups.clone();
    let prev_member = prev.member.clone();
    let member_changed =
        prev_member.as_deref().map(normalize_dn) != member.as_deref().map(normalize_dn);
    for g in &prev_groups {
        if member_changed || !want_groups.iter().any(|w| dn_eq(w, g)) {
            if let Some(pm) = &prev_member {
                member_value_change(ex, g, Mod::Delete(member_attr.clone(), vec![pm.clone()]))
                    .await?;
            }
        }
    }
    let mut applied_groups = Vec::new();
    if let Some(m) = &member {
        for g in &want_groups {
            if member_changed || !prev_groups.iter().any(|p| dn_eq(p, g)) {
                member_value_change(ex, g, Mod::Add(member_attr.clone(), vec![m.clone()])).await?;
            }
            applied_groups.push(g.clone());
        }
    }
    if leave {
        ex.modify(&desired_dn, entry_mods, false).await?;
    }

    let mut extra = Bookkeeping {
        kind: Some(Kind::User),
        uid,
        ..Bookkeeping::default()
    };
    let mut disabled_now = disable_set;
    if ad_disabled {
        disabled_now.insert(UAC.to_owned(), vec!["ACCOUNTDISABLE".to_owned()]);
    }
    if !disabled_now.is_empty() {
        extra.disabled = Some(Disabled::Attrs(disabled_now));
    }
    if let Some(m) = &member {
        if !applied_groups.is_empty() {
            extra.member = Some(m.clone());
            extra.role_groups = applied_groups;
        }
    }
    extra.password_sha256 = pw_sha.or_else(|| prev.password_sha256.clone());
    extra.entry_uuid = entry_uuid(ex, &prev, &desired_dn, fresh).await?;
    Ok((Some(desired_dn), Some(extra)))
}

/// An add answered "already exists" (68) although no entry is at `dn`: another entry holds a
/// value the directory keeps unique (AD: `sAMAccountName`, `userPrincipalName`). A conflict
/// for the operator, naming the entry that holds it when it can be found.
async fn unique_value_conflict(
    t: &LdapTarget,
    dn: &str,
    entry: &Entry,
) -> Result<TargetError, TargetError> {
    let mut suffix: Vec<String> = Vec::new();
    let mut rest = dn.to_owned();
    while !rest.is_empty() {
        let (rdn, parent) = split_rdn(&rest);
        if rdn.to_ascii_lowercase().starts_with("dc=") {
            suffix.push(rdn);
        }
        if parent == rest {
            break;
        }
        rest = parent;
    }
    let mut holder = None;
    if !suffix.is_empty() {
        for attr in ["samaccountname", "userprincipalname"] {
            let Some(v) = entry.attrs.get(attr).and_then(|v| v.first()) else {
                continue;
            };
            let filter = format!("({attr}={})", ldap3::ldap_escape(v));
            if let Some(other) = t.find_dn(&suffix.join(","), &filter).await? {
                holder = Some(format!("{attr} {v:?} is held by {other}"));
                break;
            }
        }
    }
    let why = holder.unwrap_or_else(|| "another entry holds one of its unique values".into());
    Ok(TargetError {
        class: ErrorClass::Permanent,
        code: Some(codes::ENTRY_ALREADY_EXISTS.to_string()),
        message: format!("{dn}: the directory refused the add as a duplicate: {why}"),
    })
}

/// AD's `userAccountControl`, lower-cased as read; in `disabled` it marks "we set
/// `ACCOUNTDISABLE`".
const UAC: &str = "useraccountcontrol";

/// Set or clear AD's `ACCOUNTDISABLE` bit of the entry at `dn`, every other bit as read.
async fn account_disable_bit(
    ex: &mut Exec<'_>,
    dn: &str,
    disabled: bool,
) -> Result<(), TargetError> {
    let Some(cur) = ex.t.read(dn, &["userAccountControl".to_owned()]).await? else {
        return Ok(());
    };
    let Some(have) = cur.attrs.get(UAC).and_then(|v| v.first()).cloned() else {
        return Ok(());
    };
    let Some(want) = flavour::with_account_disabled(&have, disabled) else {
        return Err(permanent(format!(
            "{dn}: userAccountControl {have:?} is not a number"
        )));
    };
    if want != have {
        ex.modify(
            dn,
            vec![Mod::Replace("userAccountControl".to_owned(), vec![want])],
            true,
        )
        .await?;
    }
    Ok(())
}

/// Where the entry recorded at `key` is: there, or where it moved (see [`moved_entry`]).
async fn where_now(t: &LdapTarget, prior: &Prior, key: &str) -> Result<String, TargetError> {
    if t.read(key, &[]).await?.is_some() {
        return Ok(key.to_owned());
    }
    Ok(moved_entry(t, prior, key)
        .await?
        .unwrap_or_else(|| key.to_owned()))
}

/// A membership value change on a group we do not manage (role groups): value-level only;
/// an existing (add) or missing (delete) value is done, a missing group is a permanent error.
async fn member_value_change(ex: &mut Exec<'_>, group: &str, m: Mod) -> Result<(), TargetError> {
    ex.modify(group, vec![m], true).await
}

async fn remove_role_memberships(
    ex: &mut Exec<'_>,
    prev: &Bookkeeping,
    member_attr: &str,
) -> Result<(), TargetError> {
    if let Some(pm) = &prev.member {
        for g in &prev.role_groups {
            member_value_change(
                ex,
                g,
                Mod::Delete(member_attr.to_owned(), vec![pm.to_owned()]),
            )
            .await?;
        }
    }
    Ok(())
}

async fn sync_group(
    ex: &mut Exec<'_>,
    d: &Desired,
    prior: &Prior,
) -> Result<(Option<String>, Option<Bookkeeping>), TargetError> {
    let t = ex.t;
    let gs = t
        .settings
        .groups
        .as_ref()
        .ok_or_else(|| permanent(format!("target {} does not map groups", t.settings.name)))?;
    let dn_mode = gs.member_value == MemberValue::Dn;
    let norm = |v: &str| {
        if dn_mode {
            normalize_dn(v)
        } else {
            v.to_owned()
        }
    };
    let attr = gs.member_attribute.clone();
    let desired_dn = d.entry.key.clone();
    if let Some(changes) = &d.member_changes {
        let placeholder = gs.placeholder_member.as_deref();
        return sync_group_changes(
            ex,
            d,
            prior,
            &gs.attributes,
            &attr,
            placeholder,
            norm,
            changes,
        )
        .await;
    }

    // Desired members, deduplicated; the placeholder only when otherwise empty.
    let mut seen = HashSet::new();
    let mut want: Vec<String> = d
        .members
        .iter()
        .filter(|m| seen.insert(norm(m)))
        .cloned()
        .collect();
    if want.is_empty() {
        if let Some(p) = &gs.placeholder_member {
            want.push(p.clone());
        }
    }
    let mut read_attrs = gs.attributes.clone();
    read_attrs.extend(d.entry.attrs.keys().cloned());
    read_attrs.push(attr.clone());

    let prev = prior_extra(prior);
    let mut current = locate(ex, prior, &desired_dn, &read_attrs).await?;
    let fresh = current.is_none() || prior.key.is_none();
    if current.is_none() {
        let (first, _) = want.split_at(want.len().min(MEMBER_CHUNK));
        let mut extra = BTreeMap::new();
        if !first.is_empty() {
            extra.insert(attr.clone(), first.to_vec());
        }
        let rc = ex.add(&desired_dn, add_attrs(&d.entry, &extra)).await?;
        if rc == codes::ENTRY_ALREADY_EXISTS {
            if raced_and_refused(t, prior, &desired_dn).await? {
                return Err(permanent(format!(
                    "{desired_dn}: entry exists and is not managed by scim-sync"
                )));
            }
            current = t.read(&desired_dn, &read_attrs).await?;
        } else {
            // The rest of a large group is added below, against what we just wrote.
            current = Some(Entry {
                key: desired_dn.clone(),
                object_classes: d.entry.object_classes.clone(),
                attrs: d
                    .entry
                    .attrs
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .chain([(attr.clone(), first.to_vec())])
                    .collect(),
            });
            let rest: Vec<String> = want.iter().skip(first.len()).cloned().collect();
            if rest.is_empty() {
                let extra = group_extra(entry_uuid(ex, &prev, &desired_dn, fresh).await?);
                return Ok((Some(desired_dn), Some(extra)));
            }
        }
    }
    if let Some(cur) = &current {
        let mut mods = Vec::new();
        mods.extend(missing_object_classes(
            &d.entry.object_classes,
            &cur.object_classes,
        ));
        mods.extend(diff(&d.entry, &align_dn_values(&d.entry, cur)));
        ex.modify(&desired_dn, mods, false).await?;

        let have: Vec<String> = cur.attrs.get(&attr).cloned().unwrap_or_default();
        let have_norm: HashSet<String> = have.iter().map(|h| norm(h)).collect();
        let want_norm: HashSet<String> = want.iter().map(|w| norm(w)).collect();
        // The values we wrote (the placeholder is always ours); `None`: every value is.
        let ours: Option<HashSet<String>> = prior.members_ours.as_ref().map(|o| {
            o.iter()
                .chain(gs.placeholder_member.iter())
                .map(|v| norm(v))
                .collect()
        });
        let to_add: Vec<String> = want
            .iter()
            .filter(|w| !have_norm.contains(&norm(w)))
            .cloned()
            .collect();
        let (to_del, foreign): (Vec<String>, Vec<String>) = have
            .iter()
            .filter(|h| !want_norm.contains(&norm(h)))
            .cloned()
            .partition(|h| ours.as_ref().is_none_or(|o| o.contains(&norm(h))));
        ex.foreign = foreign;
        // Adds before deletes, so a group never passes through "empty" (groupOfNames).
        for chunk in to_add.chunks(MEMBER_CHUNK) {
            ex.modify(
                &desired_dn,
                vec![Mod::Add(attr.clone(), chunk.to_vec())],
                true,
            )
            .await?;
        }
        for chunk in to_del.chunks(MEMBER_CHUNK) {
            ex.modify(
                &desired_dn,
                vec![Mod::Delete(attr.clone(), chunk.to_vec())],
                true,
            )
            .await?;
        }
    }
    let extra = group_extra(entry_uuid(ex, &prev, &desired_dn, fresh).await?);
    Ok((Some(desired_dn), Some(extra)))
}

/// The O(change) path of a group: the entry's own attributes as usual (read without the
/// member attribute), then only `changes` to the member values, in one modify when they fit
/// one chunk (a value already there, or already gone, is done). No entry at the recorded key
/// (nor where it moved): [`TargetError::members_full`], the reconciler applies it whole.
///
/// With a `placeholder`, asked without reading the members: adds also delete it when the
/// entry holds it (`(member=<placeholder>)`, in the same modify); after deletes, an entry
/// left without any value (`(member=*)` no longer matches) gets it back, and a schema that
/// refuses the delete alone (objectClassViolation, 65: `groupOfNames` must keep a member)
/// gets the placeholder added in the same modify.
#[allow(clippy::too_many_arguments)]
async fn sync_group_changes(
    ex: &mut Exec<'_>,
    d: &Desired,
    prior: &Prior,
    attributes: &[String],
    attr: &str,
    placeholder: Option<&str>,
    norm: impl Fn(&str) -> String,
    changes: &MemberChanges,
) -> Result<(Option<String>, Option<Bookkeeping>), TargetError> {
    let desired_dn = d.entry.key.clone();
    let mut read_attrs: Vec<String> = attributes.to_vec();
    read_attrs.extend(d.entry.attrs.keys().cloned());
    // Never the member attribute: reading every member is what this path avoids.
    read_attrs.retain(|a| !a.eq_ignore_ascii_case(attr));
    if prior.key.is_none() {
        return Err(TargetError::members_full("the group was never applied"));
    }
    let Some(cur) = locate(ex, prior, &desired_dn, &read_attrs).await? else {
        return Err(TargetError::members_full("no entry at the recorded key"));
    };
    let mut mods = Vec::new();
    mods.extend(missing_object_classes(
        &d.entry.object_classes,
        &cur.object_classes,
    ));
    mods.extend(diff(&d.entry, &align_dn_values(&d.entry, &cur)));
    ex.modify(&desired_dn, mods, false).await?;

    let mut seen = HashSet::new();
    let add: Vec<String> = changes
        .add
        .iter()
        .filter(|v| seen.insert(norm(v)))
        .cloned()
        .collect();
    // A value both wanted (for one member) and unwanted (recorded for another) stays.
    let delete: Vec<String> = changes
        .delete
        .iter()
        .filter(|v| seen.insert(norm(v)))
        .cloned()
        .collect();
    let t = ex.t;
    let has = |value: &str| format!("({attr}={})", ldap3::ldap_escape(value));
    // The placeholder goes once a real member is added (never one of ours to delete else).
    let mut delete = delete;
    if let Some(p) = placeholder {
        let p_norm = norm(p);
        delete.retain(|v| norm(v) != p_norm);
        if !add.is_empty() && !add.iter().any(|v| norm(v) == p_norm) {
            let present = if ex.dry_run {
                false
            } else {
                t.matches(&desired_dn, &has(p)).await?
            };
            if present {
                delete.push(p.to_owned());
            }
        }
    }
    let deletes_only = add.is_empty() && !delete.is_empty();
    if add.len() + delete.len() <= MEMBER_CHUNK {
        let mut member_mods = Vec::new();
        if !add.is_empty() {
            member_mods.push(Mod::Add(attr.to_owned(), add));
        }
        if !delete.is_empty() {
            member_mods.push(Mod::Delete(attr.to_owned(), delete.clone()));
        }
        match ex.modify(&desired_dn, member_mods, true).await {
            Err(e) if deletes_only && placeholder.is_some() && e.code.as_deref() == Some("65") => {
                // The last member went: the placeholder stands in, in the same modify.
                let p = placeholder.unwrap_or_default().to_owned();
                let mods = vec![
                    Mod::Add(attr.to_owned(), vec![p]),
                    Mod::Delete(attr.to_owned(), delete),
                ];
                ex.modify(&desired_dn, mods, true).await?;
                let prev = prior_extra(prior);
                let extra = group_extra(entry_uuid(ex, &prev, &desired_dn, false).await?);
                return Ok((Some(desired_dn), Some(extra)));
            }
            other => other?,
        }
    } else {
        for chunk in add.chunks(MEMBER_CHUNK) {
            ex.modify(
                &desired_dn,
                vec![Mod::Add(attr.to_owned(), chunk.to_vec())],
                true,
            )
            .await?;
        }
        for chunk in delete.chunks(MEMBER_CHUNK) {
            ex.modify(
                &desired_dn,
                vec![Mod::Delete(attr.to_owned(), chunk.to_vec())],
                true,
            )
            .await?;
        }
    }
    if let (Some(p), true, false) = (placeholder, deletes_only, ex.dry_run) {
        // A schema that lets the attribute go empty (posixGroup): the placeholder stands in.
        if !t.matches(&desired_dn, &format!("({attr}=*)")).await? {
            ex.modify(
                &desired_dn,
                vec![Mod::Add(attr.to_owned(), vec![p.to_owned()])],
                true,
            )
            .await?;
        }
    }
    let prev = prior_extra(prior);
    let extra = group_extra(entry_uuid(ex, &prev, &desired_dn, false).await?);
    Ok((Some(desired_dn), Some(extra)))
}

fn group_extra(entry_uuid: Option<String>) -> Bookkeeping {
    Bookkeeping {
        kind: Some(Kind::Group),
        entry_uuid,
        ..Bookkeeping::default()
    }
}

/// The resource was deleted in the store.
async fn remove(
    ex: &mut Exec<'_>,
    prior: &Prior,
    kind: Kind,
) -> Result<(Option<String>, Option<Bookkeeping>), TargetError> {
    let t = ex.t;
    let Some(key) = &prior.key else {
        // Never settled; an interrupted create (under the intent or one it replaced) may
        // have added the entry all the same.
        let found = interrupted_entries(t, prior, true).await?;
        if found.is_empty() {
            return Ok((None, prior.extra.clone()));
        }
        for dn in found {
            ex.delete(&dn).await?;
        }
        return Ok((None, None));
    };
    let key = &where_now(t, prior, key).await?;
    let prev = prior_extra(prior);
    let is_user = kind == Kind::User;
    let member_attr = t.settings.member_attribute().to_owned();
    let disable = is_user && t.settings.users.on_delete == OnDelete::Disable;
    if let (true, Some(deact)) = (disable, t.settings.users.deactivate.as_ref()) {
        let Some(cur) = t
            .read(key, &deact.set.keys().cloned().collect::<Vec<_>>())
            .await?
        else {
            return Ok((None, None));
        };
        let mods: Vec<Mod> = deact
            .set
            .iter()
            .filter(|(a, v)| !same_set(&cur.attrs.get(*a).cloned().unwrap_or_default(), v))
            .map(|(a, v)| Mod::Replace(a.clone(), v.clone()))
            .collect();
        ex.modify(key, mods, false).await?;
        remove_role_memberships(ex, &prev, &member_attr).await?;
        let mut extra = prev.clone();
        extra.disabled = Some(Disabled::Attrs(deact.set.clone()));
        extra.role_groups.clear();
        extra.member = None;
        return Ok((Some(key.clone()), Some(extra)));
    }
    if is_user {
        remove_role_memberships(ex, &prev, &member_attr).await?;
    }
    ex.delete(key).await?;
    Ok((None, None))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    /// A recorded intent as stored.
    fn stored(v: Value) -> Intent {
        serde_json::from_value(v).unwrap()
    }

    fn settings(users_extra: &str) -> Settings {
        let text = format!(
            "name = \"t\"\ntype = \"ldap\"\nurl = \"ldap://127.0.0.1:1\"\ntimeout_secs = 5\n\
             connect_timeout_secs = 2\n[users]\ndn = \"uid={{userName}},ou=People,dc=x\"\n\
             object_classes = [\"person\"]\n{users_extra}"
        );
        let raw: crate::config::target::RawTarget = toml::from_str(&text).unwrap();
        let crate::config::target::RawTarget::Ldap(l) = &raw else {
            panic!("ldap")
        };
        Settings::from_raw(l, 0).unwrap()
    }

    fn intent(dn: &str, since: i64, prev: i64) -> Prior {
        Prior {
            key: None,
            extra: Some(
                json!({"creating": dn, "since_ms": since, "prev_attempt_ms": prev,
                               "attempt_ms": prev + 100_000})
                .into(),
            ),
            ..Prior::default()
        }
    }

    #[test]
    fn an_interrupted_create_counts_only_inside_its_intents_window() {
        let dn = "uid=a,ou=People,dc=x";
        // From the intent's whole second to the start of this attempt (an earlier attempt's
        // add, however slow, was done before its lease ended; this one added nothing yet).
        assert_eq!(
            intent_window(&intent(dn, 10_500, 60_000), dn),
            Some((10_000, 160_000))
        );
        // Another spelling of the same DN is the same intent.
        assert!(intent_window(&intent("UID=A,ou=people,dc=x", 1, 1), dn).is_some());
        // An intent naming another DN, or none at all, never recognises an entry.
        assert_eq!(
            intent_window(&intent("uid=b,ou=People,dc=x", 1, 1), dn),
            None
        );
        assert_eq!(intent_window(&Prior::default(), dn), None);
        // The first attempt (no previous one) has no add of ours to find.
        let first = Prior {
            key: None,
            extra: Some(json!({"creating": dn, "since_ms": 5_000, "attempt_ms": 5_000}).into()),
            ..Prior::default()
        };
        assert_eq!(intent_window(&first, dn), None);
    }

    #[test]
    fn a_recorded_intent_counts_to_its_last_attempt_and_never_past_its_release() {
        let s = settings("");
        let dn = "uid=a,ou=People,dc=x";
        let budget = 2_000 + 4 * 5_000;
        // A delete: no attempt of its own, so up to the end of the last recorded one.
        let standing = stored(json!({"creating": dn, "since_ms": 10_500, "attempt_ms": 20_000}));
        assert_eq!(
            recorded_window(&s, &standing),
            Some((dn.to_owned(), (10_000, 20_000 + budget)))
        );
        // Only the first attempt recorded.
        let first = stored(json!({"creating": dn, "since_ms": 10_500}));
        assert_eq!(
            recorded_window(&s, &first),
            Some((dn.to_owned(), (10_000, 10_500 + budget)))
        );
        // An orphan: another resource may intend the DN from its release on.
        let orphan = stored(
            json!({"creating": dn, "since_ms": 10_500, "attempt_ms": 20_000,
                            "released_ms": 25_000}),
        );
        assert_eq!(
            recorded_window(&s, &orphan),
            Some((dn.to_owned(), (10_000, 25_000)))
        );
        assert_eq!(recorded_window(&s, &stored(json!({"since_ms": 1}))), None);
    }

    #[test]
    fn the_planned_dn_follows_the_deactivation_policy() {
        let entry = Entry {
            key: "uid=a,ou=People,dc=x".into(),
            object_classes: vec![],
            attrs: BTreeMap::new(),
        };
        let d = |active: bool| Desired {
            kind: Kind::User,
            entry: entry.clone(),
            active,
            members: vec![],
            password_hash: None,
            role_groups: vec![],
            member_changes: None,
        };
        let plain = settings("");
        assert_eq!(
            planned_dn(&plain, &d(false)).as_deref(),
            Some("uid=a,ou=People,dc=x")
        );
        let moving =
            settings("[users.deactivate]\npolicy = \"move\"\nmove_to = \"ou=Disabled,dc=x\"\n");
        assert_eq!(
            planned_dn(&moving, &d(true)).as_deref(),
            Some("uid=a,ou=People,dc=x")
        );
        assert_eq!(
            planned_dn(&moving, &d(false)).as_deref(),
            Some("uid=a,ou=Disabled,dc=x")
        );
        let deleting = settings("[users.deactivate]\npolicy = \"delete\"\n");
        assert_eq!(planned_dn(&deleting, &d(false)), None);
    }

    #[test]
    fn generalized_time_parses_to_epoch_ms() {
        assert_eq!(generalized_time_ms("19700101000001Z"), Some(1000));
        assert_eq!(
            generalized_time_ms("20261122224512.123456Z"),
            Some(1_795_387_512_000)
        );
        assert_eq!(generalized_time_ms("garbage"), None);
    }

    #[test]
    fn dn_values_in_server_spelling_are_not_changes() {
        let mk = |v: &str| Entry {
            key: "uid=x".into(),
            object_classes: vec![],
            attrs: [("manager".to_owned(), vec![v.to_owned()])]
                .into_iter()
                .collect(),
        };
        let desired = mk(r"uid=a\2cb,ou=People,dc=x");
        let current = mk(r"UID=a\,b,ou=people,dc=x");
        assert!(diff(&desired, &align_dn_values(&desired, &current)).is_empty());
        let other = mk(r"uid=c,ou=People,dc=x");
        assert_eq!(diff(&desired, &align_dn_values(&desired, &other)).len(), 1);
        let plain = mk("not a dn");
        assert_eq!(align_dn_values(&desired, &plain), plain);
    }
}
