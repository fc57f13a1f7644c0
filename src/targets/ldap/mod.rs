//! The LDAP target: `settings` (validated config, pure), `conn` (connection, bind, timeouts,
//! reconnect), `apply` (make one entry match), `codes` (result-code classification), `schema`
//! (the server's schema against the mapping).
//! reconnect, flavour detection, ranged reads), `apply` (make one entry match), `codes`
//! (result-code classification), `flavour` (pure facts per directory: OpenLDAP, 389-DS, AD).
//! Never sees SCIM types or the store: it gets a [`Change`] and a [`Prior`].
//!
//! Bookkeeping kept in `Outcome.extra` ([`crate::bookkeeping::Bookkeeping`]) for the next
//! sync: `kind` (`"user"`/`"group"`, so a delete knows what it removes), `uid` (the user's `uid`,
//! what `memberUid` groups hold; see `mapping::CompiledTarget::member_key`), `disabled`
//! (attributes set by deactivation, removed exactly on reactivation), `member` and
//! `role_groups` (role-group memberships written), `password_sha256` (of the last written
//! password hash, to write only changes), `deleted_inactive`, `entry_uuid` (the entry's stable
//! id, read back after the add: it survives renames and moves; the flavour's attribute:
//! `entryUUID`, 389-DS `nsUniqueId`, AD `objectGUID` as 32 hex digits).

pub mod apply;
pub mod codes;
pub mod conn;
pub mod flavour;
pub mod ops;
pub mod schema;
pub mod settings;

pub use conn::LdapTarget;
pub use settings::Settings;

use crate::targets::{Change, Desired, Kind, Outcome, Prior, Target, TargetError};

impl Target for LdapTarget {
    async fn healthcheck(&self) -> Result<(), TargetError> {
        self.check().await
    }

    async fn sync(
        &self,
        change: Change<'_>,
        prior: &Prior,
        dry_run: bool,
    ) -> Result<Outcome, TargetError> {
        apply::sync(self, change, prior, dry_run).await
    }

    fn planned_key(&self, desired: &Desired) -> Option<String> {
        apply::planned_dn(&self.settings, desired)
    }

    /// DNs as the server compares them, users and groups alike (one namespace).
    fn key_norm(&self, _kind: Kind, key: &str) -> String {
        crate::mapping::dn::normalize_dn(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>(_: &T) {}

    #[test]
    fn futures_are_send_so_workers_can_spawn_them() {
        let raw: crate::config::target::RawTarget = toml::from_str(
            "name = \"t\"\ntype = \"ldap\"\nurl = \"ldap://127.0.0.1:1\"\n[users]\ndn = \"uid={userName},dc=x\"\nobject_classes = [\"person\"]\n",
        )
        .unwrap();
        let crate::config::target::RawTarget::Ldap(l) = &raw else {
            panic!("ldap")
        };
        let t = LdapTarget::new(Settings::from_raw(l, 0).unwrap()).unwrap();
        let prior = Prior::default();
        let remove = Change::Remove { kind: Kind::User };
        {
            let fut = t.sync(remove, &prior, true);
            assert_send(&fut);
            assert_send(&t.healthcheck());
        }
        let any = crate::targets::AnyTarget::Ldap(t);
        assert_send(&any.sync(remove, &prior, true));
    }
}
