//! The attribute-mapping engine (pure): compiles the `[[targets]]` attribute rules from the
//! config and renders a SCIM resource (as rendered JSON) into a target [`Entry`], and diffs
//! entries. Must not do I/O; the only ldap3 items allowed here are `dn_escape`/`ldap_escape`.
//!
//! # How the reconciler uses it
//!
//! At startup: [`CompiledTarget::compile_with`]`(&raw_target, index, &schemas)` for each
//! `[[targets]]` entry, `schemas` being [`Schemas::new`]`(&[scim] user_extensions)` (all errors
//! at once, each naming its key; every SCIM path must name an attribute the server serves). Per outbox row, for target `t`:
//!
//! 1. Render the resource as SCIM JSON exactly as GET returns it (core attributes, the
//!    enterprise extension object, custom extension objects, `active`, `groups`, `roles`).
//! 2. Users: resolve `t.references(&json)` — each `(by, value)` names another user by `id`,
//!    `userName` or `externalId`; look it up in the store and return its `target_state.key`
//!    in `t` (its DN), or `None` if it has none yet. Then
//!    `t.render_user(&json, &|by, v| lookup(by, v))` gives the [`Entry`] (key = DN, lower-cased
//!    attribute names, every mapped attribute present, empty = must be absent).
//!    `t.role_groups(&json)` gives the role-group DNs for `Desired::role_groups`.
//!    When a referenced user is created later, re-queue the referencing users (or let drift
//!    repair do it): the reference stays absent until then.
//! 3. Groups: `t.render_group(&json)`; `Desired::members` is, for each member user that has a
//!    `target_state` in `t`, `t.member_key(key, extra)` (the DN, or for `memberUid` the `uid`
//!    the LDAP target recorded in `extra`; a user without a `uid` attribute is then left out). When [`CompiledTarget::remove_inactive_from_groups`]
//!    is true, leave inactive users out, and re-sync a user's groups when `active` flips.
//!    When a user's key changes (rename, move), re-sync the groups it belongs to.
//! 4. `target.sync(Change::Upsert(&desired), &prior, dry_run)` and store `Outcome.key/extra`
//!    (a user deleted by the `delete` deactivation policy comes back with `key = None` and
//!    must be re-created on reactivation: keep its `extra`). A store DELETE is
//!    `sync(Change::Remove { kind }, &prior, ..)`.
//!
//! Validation: the daemon's settings step calls both `CompiledTarget::compile` (rules, DN
//! templates, role groups) and the target's own `Settings::from_raw` (URL, timeouts,
//! credentials, deactivation, membership options) and reports the union of their errors.
//!
//! Targets use [`diff()`] (over mapped attributes only) to compute the change.
//!
//! The rule language is documented in `docs/mapping.md`: paths (`name.familyName`,
//! `emails[type eq "work"].value`, URN-prefixed extension attributes), templates
//! (`"{name.givenName} {name.familyName}"`), and tables with `from`/`transform`/`default`,
//! `constant`, `reference`/`by`.

pub mod compile;
pub mod diff;
pub mod dn;
pub mod path;
pub mod render;
pub mod schema;

pub use compile::{CompiledTarget, ConfigError, KindMap, Template};
pub use diff::{diff, Mod};
pub use render::MapError;
pub use schema::Schemas;

use std::collections::BTreeMap;

/// A target entry as the mapping renders it or a target reads it: an LDAP entry (key = DN) or a
/// SQL row (key = the key column's value). Attribute names are lower-cased; values keep order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Entry {
    /// The entry's key in the target: a DN for LDAP, the key column value for SQL.
    pub key: String,
    /// Object classes (LDAP) — empty for SQL.
    pub object_classes: Vec<String>,
    /// Mapped attributes: lower-cased name -> values. An attribute mapped to nothing has an
    /// empty vector (meaning "must be absent").
    pub attrs: BTreeMap<String, Vec<String>>,
}
