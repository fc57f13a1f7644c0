//! Throwaway PostgreSQL databases in the server running at 127.0.0.1:5432 (trust auth, as on
//! these machines; `scripts/test` starts it where it is not running). Dropped on `Drop`, also
//! when the test panics; the first database a process makes also drops leftovers of earlier
//! runs that were killed before their `Drop` ran (by name and age, `throwaway.rs`).

use super::throwaway;
use diesel::{Connection, RunQueryDsl};

pub const ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A database that exists for one test.
pub struct PgDb {
    pub name: String,
    pub url: String,
}

fn drop_database(conn: &mut diesel::PgConnection, name: &str) -> Result<(), String> {
    // FORCE terminates the daemon's pooled connections; a pool reconnecting at that moment
    // can make one attempt fail, so try a few times.
    let mut last = String::new();
    for _ in 0..5 {
        match diesel::sql_query(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(conn)
        {
            Ok(_) => return Ok(()),
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Err(last)
}

/// Drop `scim_test_*` databases left by runs that died before their `Drop` (once a process).
fn sweep_leftovers(conn: &mut diesel::PgConnection) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| sweep(conn));
}

/// Drop every stale `scim_test_*` database now.
pub fn sweep(conn: &mut diesel::PgConnection) {
    {
        #[derive(diesel::QueryableByName)]
        struct Name {
            #[diesel(sql_type = diesel::sql_types::Text)]
            datname: String,
        }
        let names: Vec<Name> = diesel::sql_query(
            "SELECT datname FROM pg_database WHERE datname LIKE 'scim\\_test\\_%'",
        )
        .load(conn)
        .unwrap_or_default();
        for n in names
            .into_iter()
            .filter(|n| throwaway::is_stale(&n.datname))
        {
            if let Err(e) = drop_database(conn, &n.datname) {
                eprintln!("could not drop leftover test database {}: {e}", n.datname);
            }
        }
    }
}

impl PgDb {
    /// Create `scim_test_<secs>_<random>`. Fails loudly when PostgreSQL is not reachable.
    pub fn create() -> PgDb {
        let name = throwaway::new_name();
        let mut conn = diesel::PgConnection::establish(ADMIN_URL).unwrap_or_else(|e| {
            panic!(
                "PostgreSQL is required at 127.0.0.1:5432 (run scripts/test, which starts it): {e}"
            )
        });
        sweep_leftovers(&mut conn);
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
        let result = diesel::PgConnection::establish(ADMIN_URL)
            .map_err(|e| e.to_string())
            .and_then(|mut conn| drop_database(&mut conn, &self.name));
        if let Err(e) = result {
            // Not silent: a later run drops it by age, but say so now.
            eprintln!("could not drop test database {}: {e}", self.name);
        }
    }
}
