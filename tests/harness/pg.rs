//! Throwaway PostgreSQL databases in the server running at 127.0.0.1:5432 (trust auth, as on
//! these machines; `scripts/test` starts it where it is not running). Dropped on `Drop`.

use diesel::{Connection, RunQueryDsl};

const ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A database that exists for one test.
pub struct PgDb {
    pub name: String,
    pub url: String,
}

impl PgDb {
    /// Create `scim_test_<random>`. Fails loudly when PostgreSQL is not reachable.
    pub fn create() -> PgDb {
        let name = format!("scim_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = diesel::PgConnection::establish(ADMIN_URL).unwrap_or_else(|e| {
            panic!(
                "PostgreSQL is required at 127.0.0.1:5432 (run scripts/test, which starts it): {e}"
            )
        });
        diesel::sql_query(format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .unwrap();
        PgDb {
            url: format!("postgres://postgres@127.0.0.1:5432/{name}"),
            name,
        }
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        if let Ok(mut conn) = diesel::PgConnection::establish(ADMIN_URL) {
            let _ = diesel::sql_query(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .execute(&mut conn);
        }
    }
}
