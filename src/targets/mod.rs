//! Targets: the systems we provision into (LDAP directories, legacy SQL databases), behind one
//! trait. Targets never see SCIM types or the store: the reconciler hands them a [`Change`]
//! (a rendered [`Desired`] state, or a removal) and the [`Prior`] bookkeeping, and records
//! the [`Outcome`].

pub mod ldap;
pub mod plan;
pub mod secret;
pub mod sql;

pub use crate::bookkeeping::{Bookkeeping, Kind};
use crate::config::target::RawTarget;
use crate::mapping::{CompiledTarget, ConfigError, Entry, Schemas};
pub use secret::PasswordSource;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The desired state of one resource in one target.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    pub kind: Kind,
    /// The fully rendered entry at its desired key (DN).
    pub entry: Entry,
    /// Users: the SCIM `active` flag (false applies the deactivation policy). Groups: true.
    pub active: bool,
    /// Groups: the target keys (DNs / key values) of the members that exist in the target.
    pub members: Vec<String>,
    /// Users: a password hash to write when password sync is on.
    pub password_hash: Option<String>,
    /// Users: DNs of the role groups the user must be a member of
    /// (`mapping::CompiledTarget::role_groups`). Groups: empty.
    pub role_groups: Vec<String>,
    /// Groups: when set, apply only these member value changes (the O(change) path: the
    /// target neither reads nor writes any other member value, and `members` is empty);
    /// `None`: make the member values match `members`.
    pub member_changes: Option<MemberChanges>,
}

/// The member values one O(change) apply of a group adds and deletes (the reconciler's net
/// of what changed since the applied version). Adding a value already there or deleting one
/// already gone is done, not an error. A target that cannot apply them alone (no entry at the
/// recorded key, a placeholder member to keep right) fails with [`MEMBERS_FULL`] and the
/// reconciler applies the whole membership instead.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MemberChanges {
    pub add: Vec<String>,
    pub delete: Vec<String>,
}

/// The [`TargetError::code`] of a group apply that needs the whole membership (see
/// [`MemberChanges`]).
pub const MEMBERS_FULL: &str = "members_full";

impl TargetError {
    /// See [`MEMBERS_FULL`].
    #[must_use]
    pub fn members_full(why: &str) -> TargetError {
        TargetError {
            class: ErrorClass::Transient,
            code: Some(MEMBERS_FULL.into()),
            message: format!("the membership must be applied whole: {why}"),
        }
    }
}

/// What one sync makes of a resource's entry.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Change<'a> {
    /// Make the entry match the desired state.
    Upsert(&'a Desired),
    /// The resource was deleted in the store: remove its entry (or what `on_delete` says).
    Remove { kind: Kind },
}

impl<'a> Change<'a> {
    /// Users or groups.
    #[must_use]
    pub fn kind(&self) -> Kind {
        match self {
            Change::Upsert(d) => d.kind,
            Change::Remove { kind } => *kind,
        }
    }

    /// The desired state of an upsert.
    #[must_use]
    pub fn desired(&self) -> Option<&'a Desired> {
        match self {
            Change::Upsert(d) => Some(d),
            Change::Remove { .. } => None,
        }
    }
}

/// What the store remembers of a resource in this target (from `target_state`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Prior {
    /// The key the entry had after the last successful apply; `None` if never applied.
    pub key: Option<String>,
    /// The bookkeeping recorded by the last apply (and the reconciler's and store's notes).
    pub extra: Option<Bookkeeping>,
    /// How long the reconciler's claim on this resource lasts (not bookkeeping: never stored).
    pub lease: Lease,
    /// Groups, full applies: the member values we wrote (the store's record). `None`: every
    /// value the desired state does not hold is removed (`foreign_members = "remove"`, or no
    /// record yet); `Some`: only those of them in this list are, the others are foreign and
    /// kept (reported in [`Outcome::foreign`]).
    pub members_ours: Option<Vec<String>>,
}

/// The lease of the reconciler's claim on the resource being synced, as the target sees it:
/// the wall-clock time (ms since the epoch) until which the claim is exclusive, moved forward
/// by the reconciler's heartbeat and set to the past when the claim is lost. A target starts a
/// write only while at least that write's timeout remains ([`Lease::check`]), so an apply that
/// lost its claim (its process stopped past the lease while another worker took over) cannot
/// write after the other worker started: LDAP has no fencing token, this bounds it in time.
/// The default is unlimited (dry runs, tests of a target alone). An instance sharing the
/// store with others also bounds it by its instance fence ([`Lease::fenced`]).
#[derive(Debug, Clone, Default)]
pub struct Lease {
    until_ms: Option<Arc<AtomicI64>>,
    fence: Option<InstanceFence>,
}

/// The process's own bound on its claims (the store's instance registry): its claims are its
/// own until `alive_until_ms` (after which the other instances may take them over), and only
/// while `incarnation` still reads `held` (a takeover that happened moves it).
#[derive(Debug, Clone)]
struct InstanceFence {
    alive_until_ms: Arc<AtomicI64>,
    incarnation: Arc<AtomicI64>,
    held: i64,
}

impl PartialEq for Lease {
    /// Not part of what a [`Prior`] compares: every lease is equal.
    fn eq(&self, _: &Lease) -> bool {
        true
    }
}

impl Lease {
    /// A lease ending at the time held in `until_ms` (shared with whoever renews it).
    #[must_use]
    pub fn until(until_ms: Arc<AtomicI64>) -> Lease {
        Lease {
            until_ms: Some(until_ms),
            fence: None,
        }
    }

    /// This lease, also ending at the instance fence: at `alive_until_ms`, or once
    /// `incarnation` no longer reads `held` (read before the claim).
    #[must_use]
    pub fn fenced(
        mut self,
        alive_until_ms: Arc<AtomicI64>,
        incarnation: Arc<AtomicI64>,
        held: i64,
    ) -> Lease {
        self.fence = Some(InstanceFence {
            alive_until_ms,
            incarnation,
            held,
        });
        self
    }

    /// Before a write that may take up to `timeout`: fine while at least `timeout` remains.
    ///
    /// # Errors
    /// A transient `lease` error otherwise (the row goes back to the outbox; if the claim was
    /// lost, the worker that holds it now applies the current state).
    pub fn check(&self, timeout: Duration) -> Result<(), TargetError> {
        let Some(until) = &self.until_ms else {
            return Ok(());
        };
        let now = crate::clock::now_ms();
        let needed = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX);
        let mut end = until.load(Ordering::SeqCst);
        if let Some(f) = &self.fence {
            // A negative incarnation is the store's "taken over, not registered again yet":
            // a claim made under it is never this instance's (second reader's finding).
            end = if f.held >= 0 && f.incarnation.load(Ordering::SeqCst) == f.held {
                end.min(f.alive_until_ms.load(Ordering::SeqCst))
            } else {
                i64::MIN
            };
        }
        if now.saturating_add(needed) <= end {
            return Ok(());
        }
        Err(TargetError {
            class: ErrorClass::Transient,
            code: Some("lease".into()),
            message: "the claim's lease has less time left than the operation may take (or \
                      the claim was lost); nothing more is written in this apply"
                .into(),
        })
    }
}

/// The result of one sync.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    /// The entry's key now (`None` once deleted).
    pub key: Option<String>,
    /// Bookkeeping to remember for the next sync.
    pub extra: Option<Bookkeeping>,
    /// Human-readable changes made (or, in a dry run, that would be made), LDIF-like, one per line.
    pub changes: Vec<String>,
    /// Groups: member values found that we did not write and kept (`foreign_members =
    /// "keep"`).
    pub foreign: Vec<String>,
}

/// How a failure should be handled by the reconciler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Connection refused or lost, busy, unavailable, timeout: retry with backoff, forever.
    Transient,
    /// Schema violation, constraint, invalid DN, no such parent, unmanaged entry in the way:
    /// retried a few times, then a dead letter.
    Permanent,
}

/// A target failure, with the target's own code (LDAP result code, SQLSTATE) when there is one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct TargetError {
    pub class: ErrorClass,
    pub code: Option<String>,
    pub message: String,
}

/// A permanent configuration failure found while building a target (unreadable secret or CA
/// file, bad URL).
pub(crate) fn config_error(message: String) -> TargetError {
    TargetError {
        class: ErrorClass::Permanent,
        code: Some("config".into()),
        message,
    }
}

/// A target. `async fn` in a trait over a closed set of implementations (see [`AnyTarget`]).
#[allow(async_fn_in_trait)]
pub trait Target {
    /// A real connection, bind and read; run at boot, by `check-config --connect` and `/readyz`.
    ///
    /// # Errors
    /// The failure, classified.
    async fn healthcheck(&self) -> Result<(), TargetError>;

    /// Make the target match `change` (an upsert of the desired state, or the removal of a
    /// resource deleted in the store). Reads the live entry first and applies only the
    /// difference; safe to repeat. With `dry_run`, changes nothing and reports what it would
    /// do.
    ///
    /// # Errors
    /// The failure, classified.
    async fn sync(
        &self,
        change: Change<'_>,
        prior: &Prior,
        dry_run: bool,
    ) -> Result<Outcome, TargetError>;

    /// The key `sync` gives the entry of `desired` (the rendered key, or where a deactivation
    /// moves it); `None` when the entry will not exist (a user deleted on deactivation) or
    /// the key is unusable (`sync` then fails with the reason).
    fn planned_key(&self, desired: &Desired) -> Option<String>;

    /// The normal form of a key for the store's uniqueness index: two keys with one normal
    /// form name the same entry in this target, as the target itself compares them.
    fn key_norm(&self, kind: Kind, key: &str) -> String;
}

/// Every target implementation, dispatched by `match` (a closed set, no `dyn`).
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // built once per target, lives as long as the daemon
pub enum AnyTarget {
    /// An LDAP directory.
    Ldap(ldap::LdapTarget),
    /// A legacy application database.
    Sql(sql::SqlTarget),
}

impl AnyTarget {
    /// The configured name of the target.
    #[must_use]
    pub fn name(&self) -> &str {
        match self {
            AnyTarget::Ldap(t) => &t.settings().name,
            AnyTarget::Sql(t) => &t.settings().name,
        }
    }

    /// The operation timeout (`timeout_secs`): a write that timed out on our side may still
    /// be executed by the server for about that long.
    #[must_use]
    pub fn timeout(&self) -> Duration {
        match self {
            AnyTarget::Ldap(t) => t.settings().timeout,
            AnyTarget::Sql(t) => t.settings().timeout,
        }
    }
}

impl Target for AnyTarget {
    async fn healthcheck(&self) -> Result<(), TargetError> {
        match self {
            AnyTarget::Ldap(t) => t.healthcheck().await,
            AnyTarget::Sql(t) => t.healthcheck().await,
        }
    }

    async fn sync(
        &self,
        change: Change<'_>,
        prior: &Prior,
        dry_run: bool,
    ) -> Result<Outcome, TargetError> {
        match self {
            AnyTarget::Ldap(t) => t.sync(change, prior, dry_run).await,
            AnyTarget::Sql(t) => t.sync(change, prior, dry_run).await,
        }
    }

    fn planned_key(&self, desired: &Desired) -> Option<String> {
        match self {
            AnyTarget::Ldap(t) => t.planned_key(desired),
            AnyTarget::Sql(t) => t.planned_key(desired),
        }
    }

    fn key_norm(&self, kind: Kind, key: &str) -> String {
        match self {
            AnyTarget::Ldap(t) => t.key_norm(kind, key),
            AnyTarget::Sql(t) => t.key_norm(kind, key),
        }
    }
}

/// What `check-config --connect`, a reload and nothing else check against a live target
/// before its config is used: the healthcheck (a real connection, bind and read; SQL: every
/// mapped table and column exists and takes what its rule writes, `sql::types`), and for LDAP
/// that every object class and attribute the mapping writes is in the server's schema
/// (`ldap::schema`). Every problem is in the one error (permanent for a config problem,
/// transient for a target that cannot be reached).
///
/// # Errors
/// The first failure of the healthcheck, or every schema problem.
pub async fn check_live(
    map: &CompiledTarget,
    target: &AnyTarget,
    index: usize,
) -> Result<(), TargetError> {
    target.healthcheck().await?;
    let AnyTarget::Ldap(l) = target else {
        return Ok(());
    };
    let base = format!("targets[{index}]");
    let mut wanted = ldap::schema::Wanted::default();
    let mut kinds = vec![("users", &map.users)];
    if let Some(g) = &map.groups {
        kinds.push(("groups", g));
    }
    for (kind, m) in kinds {
        for class in m.object_classes() {
            wanted
                .object_classes
                .push((format!("{base}.{kind}.object_classes"), class.clone()));
        }
        for attr in m.attribute_names() {
            wanted
                .attributes
                .push((format!("{base}.{kind}.attributes.{attr}"), attr));
        }
    }
    let problems = l.schema_problems(&wanted).await?;
    if problems.is_empty() {
        Ok(())
    } else {
        Err(config_error(problems.join("; ")))
    }
}

/// Validate the `index`th `[[targets]]` entry and build its mapping and target, its paths
/// checked against the core and enterprise schemas only (see [`build_with`]). Does not
/// connect (the healthcheck does); the bind password file or variable is resolved here, so a
/// missing one is reported as a config error naming its key.
///
/// # Errors
/// Every problem found (mapping and target settings together), each naming its full key.
pub fn build(
    raw: &RawTarget,
    index: usize,
) -> Result<(CompiledTarget, AnyTarget), Vec<ConfigError>> {
    build_with(raw, index, &Schemas::default())
}

/// [`build`] with the SCIM schemas the daemon serves (the declared `[scim] user_extensions`),
/// against which every path of the mapping is checked.
///
/// # Errors
/// As [`build`].
pub fn build_with(
    raw: &RawTarget,
    index: usize,
    schemas: &Schemas,
) -> Result<(CompiledTarget, AnyTarget), Vec<ConfigError>> {
    match raw {
        RawTarget::Ldap(t) => {
            let map = CompiledTarget::compile_with(raw, index, schemas);
            let settings = ldap::Settings::from_raw(t, index);
            match (map, settings) {
                (Ok(map), Ok(settings)) => {
                    let password_key = match &settings.bind_password {
                        PasswordSource::Env(_) => "bind_password_env",
                        _ => "bind_password_file",
                    };
                    let target = ldap::LdapTarget::new(settings).map_err(|e| {
                        let key = if e.message.contains("ca_file") {
                            "ca_file"
                        } else {
                            password_key
                        };
                        vec![ConfigError {
                            key: format!("targets[{index}].{key}"),
                            message: e.message,
                        }]
                    })?;
                    Ok((map, AnyTarget::Ldap(target)))
                }
                (map, settings) => {
                    let mut errors = map.err().unwrap_or_default();
                    errors.extend(settings.err().unwrap_or_default());
                    Err(errors)
                }
            }
        }
        RawTarget::Sql(t) => {
            let map = CompiledTarget::compile_with(raw, index, schemas);
            let settings = sql::Settings::from_raw(t, index);
            match (map, settings) {
                (Ok(map), Ok(settings)) => {
                    let key = match &settings.password {
                        PasswordSource::Env(_) => "password_env",
                        _ => "password_file",
                    };
                    let target = sql::SqlTarget::new(settings).map_err(|e| {
                        vec![ConfigError {
                            key: format!("targets[{index}].{key}"),
                            message: e.message,
                        }]
                    })?;
                    Ok((map, AnyTarget::Sql(target)))
                }
                (map, settings) => {
                    let mut errors = map.err().unwrap_or_default();
                    errors.extend(settings.err().unwrap_or_default());
                    Err(errors)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The instance fence bounds a lease: a write starts only while its timeout remains before
    /// the fence, and never once the incarnation the claim was taken under moved (a takeover
    /// happened), even after a later heartbeat moved the fence forward again.
    #[test]
    fn a_fenced_lease_ends_at_the_fence_or_with_the_incarnation() {
        let now = crate::clock::now_ms();
        let until = Arc::new(AtomicI64::new(now + 600_000));
        let alive = Arc::new(AtomicI64::new(now + 60_000));
        let incarnation = Arc::new(AtomicI64::new(3));
        let lease = Lease::until(until).fenced(alive.clone(), incarnation.clone(), 3);
        assert!(lease.check(Duration::from_secs(30)).is_ok());
        assert!(
            lease.check(Duration::from_secs(90)).is_err(),
            "past the fence"
        );
        alive.store(now - 1, Ordering::SeqCst);
        assert!(
            lease.check(Duration::from_millis(1)).is_err(),
            "the fence ran out"
        );
        incarnation.store(4, Ordering::SeqCst);
        alive.store(now + 60_000, Ordering::SeqCst);
        let err = lease.check(Duration::from_millis(1)).unwrap_err();
        assert_eq!(err.code.as_deref(), Some("lease"), "taken over meanwhile");
        // Claimed while the instance was taken over and not registered again (the -1
        // sentinel): refused even with a fence in the future. Before: accepted.
        let sentinel = Arc::new(AtomicI64::new(-1));
        let until = Arc::new(AtomicI64::new(now + 600_000));
        let lease = Lease::until(until).fenced(alive, sentinel, -1);
        assert!(lease.check(Duration::from_millis(1)).is_err());
    }

    fn raw(extra: &str, url: &str, dn: &str) -> RawTarget {
        toml::from_str(&format!(
            "name = \"corp\"\ntype = \"ldap\"\nurl = \"{url}\"\n{extra}\n[users]\ndn = \"{dn}\"\nobject_classes = [\"inetOrgPerson\"]\n"
        ))
        .unwrap()
    }

    #[test]
    fn build_reports_mapping_and_settings_errors_together() {
        let errors = build(&raw("", "http://nope", "uid={userName"), 3).unwrap_err();
        let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        assert!(keys.contains(&"targets[3].url"), "{keys:?}");
        assert!(
            keys.iter().any(|k| k.starts_with("targets[3].users.dn")),
            "{keys:?}"
        );
    }

    #[test]
    fn build_names_an_unreadable_password_file() {
        let r = raw(
            "bind_dn = \"cn=admin\"\nbind_password_file = \"/nonexistent/scim-sync/pw\"",
            "ldap://127.0.0.1:1",
            "uid={userName},ou=People,dc=example,dc=com",
        );
        let errors = build(&r, 0).unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].key, "targets[0].bind_password_file");
    }

    #[test]
    fn build_does_not_connect() {
        let r = raw(
            "",
            "ldap://127.0.0.1:1",
            "uid={userName},ou=People,dc=example,dc=com",
        );
        let (map, target) = build(&r, 0).unwrap();
        assert_eq!(map.name, "corp");
        assert_eq!(target.name(), "corp");
    }

    #[test]
    fn build_sql_target_and_name_its_password_key() {
        let text = |extra: &str| {
            format!(
                "name = \"app\"\ntype = \"sql\"\nurl = \"postgres://app@127.0.0.1:1/app\"\n{extra}\n[users]\ntable = \"u\"\nkey_column = \"login\"\nkey = \"userName\"\n[users.columns]\nname = \"displayName\"\n"
            )
        };
        let raw: RawTarget = toml::from_str(&text("")).unwrap();
        let (map, target) = build(&raw, 0).unwrap();
        assert_eq!((map.name.as_str(), target.name()), ("app", "app"));
        let raw: RawTarget = toml::from_str(&text(
            "password_env = \"SCIM_SYNC_TEST_SURELY_UNSET_VARIABLE\"",
        ))
        .unwrap();
        let errors = build(&raw, 2).unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].key, "targets[2].password_env");
        let raw: RawTarget =
            toml::from_str(&text("").replace("key_column = \"login\"", "key_column = \"lo gin\""))
                .unwrap();
        let errors = build(&raw, 1).unwrap_err();
        assert_eq!(errors[0].key, "targets[1].users.key_column");
    }
}
