//! The legacy SQL database target: `settings` (validated config, pure), `dialect` (identifier
//! validation and quoting, per-backend SQL text), `conn` (diesel connections to PostgreSQL,
//! MariaDB/MySQL or SQLite, reconnect, blocking work off the runtime, error classification),
//! `types` (the live column types against the rules' conversions, at the healthcheck),
//! `apply` (one resource in one transaction). Never sees SCIM types or the store: it gets a
//! [`Change`] (an upsert of a rendered [`Desired`]: key = the key column's value, attrs =
//! column -> values; or a removal) and a [`Prior`].
//!
//! Bookkeeping kept in `Outcome.extra` ([`crate::bookkeeping::Bookkeeping`]): `kind` (`"user"`/`"group"`, so a
//! delete knows which table), `deleted_inactive` (policy `delete`), `disabled`
//! (`on_delete = "disable"`).

pub mod apply;
pub mod conn;
pub mod dialect;
pub mod settings;
pub mod types;

pub use conn::SqlTarget;
pub use settings::Settings;

use crate::targets::{Change, Desired, Kind, Outcome, Prior, Target, TargetError};

impl Target for SqlTarget {
    async fn healthcheck(&self) -> Result<(), TargetError> {
        let cache = std::sync::Arc::clone(&self.types_checked);
        self.with_conn("healthcheck", move |s, conn| {
            apply::healthcheck(s, conn)?;
            types::checked(s, conn, &cache)
        })
        .await
    }

    async fn sync(
        &self,
        change: Change<'_>,
        prior: &Prior,
        dry_run: bool,
    ) -> Result<Outcome, TargetError> {
        // Owned for the blocking thread.
        let (kind, desired) = (change.kind(), change.desired().cloned());
        let prior = prior.clone();
        let cache = std::sync::Arc::clone(&self.types_checked);
        self.with_conn("sync", move |s, conn| {
            // Nothing is written through a column that cannot take what its rule writes.
            types::checked(s, conn, &cache)?;
            let change = match &desired {
                Some(d) => Change::Upsert(d),
                None => Change::Remove { kind },
            };
            apply::sync(s, conn, change, &prior, dry_run)
        })
        .await
    }

    fn planned_key(&self, desired: &Desired) -> Option<String> {
        apply::planned_key(self.settings(), desired)
    }

    fn key_norm(&self, kind: Kind, key: &str) -> String {
        apply::key_norm(self.settings(), kind, key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>(_: &T) {}

    #[test]
    fn futures_are_send_so_workers_can_spawn_them() {
        let raw: crate::config::target::RawTarget = toml::from_str(
            "name = \"t\"\ntype = \"sql\"\nurl = \"sqlite:///nonexistent/x.db\"\n[users]\ntable = \"u\"\nkey_column = \"k\"\nkey = \"userName\"\n",
        )
        .unwrap();
        let crate::config::target::RawTarget::Sql(l) = &raw else {
            panic!("sql")
        };
        let t = SqlTarget::new(Settings::from_raw(l, 0).unwrap()).unwrap();
        let prior = Prior::default();
        let remove = Change::Remove { kind: Kind::User };
        assert_send(&t.sync(remove, &prior, true));
        assert_send(&t.healthcheck());
        let any = crate::targets::AnyTarget::Sql(t);
        assert_send(&any.sync(remove, &prior, true));
    }

    #[tokio::test]
    async fn missing_sqlite_file_is_transient_and_never_created() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("legacy.db");
        let raw: crate::config::target::RawTarget = toml::from_str(&format!(
            "name = \"t\"\ntype = \"sql\"\nurl = \"sqlite://{}\"\n[users]\ntable = \"u\"\nkey_column = \"k\"\nkey = \"userName\"\n",
            path.display()
        ))
        .unwrap();
        let crate::config::target::RawTarget::Sql(l) = &raw else {
            panic!("sql")
        };
        let t = SqlTarget::new(Settings::from_raw(l, 0).unwrap()).unwrap();
        let e = t.healthcheck().await.unwrap_err();
        assert_eq!(e.class, crate::targets::ErrorClass::Transient, "{e:?}");
        assert!(!path.exists());
    }
}
