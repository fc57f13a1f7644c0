//! Throwaway MariaDB databases in the server at 127.0.0.1:3306 (root, empty password, as on
//! these machines and in CI, where `scripts/install-deps` starts it). Started here with
//! `start-stop-daemon` when it is not running; a database per test, dropped on `Drop` (also
//! when the test panics). The first database a process makes also drops leftovers of earlier
//! runs killed before their `Drop` ran (by name and age, `throwaway.rs`).

use super::throwaway;
use diesel::{Connection, MysqlConnection, RunQueryDsl};

const ADMIN_URL: &str = "mysql://root@127.0.0.1:3306/mysql";

/// A database that exists for one test.
pub struct MariaDb {
    pub name: String,
    pub url: String,
}

pub fn admin() -> MysqlConnection {
    if let Ok(c) = MysqlConnection::establish(ADMIN_URL) {
        return c;
    }
    let _ = std::process::Command::new("start-stop-daemon")
        .args([
            "--start",
            "--oknodo",
            "--background",
            "--exec",
            "/usr/sbin/mariadbd",
            "--",
            "--user=root",
        ])
        .status();
    let mut last = String::new();
    for _ in 0..100 {
        match MysqlConnection::establish(ADMIN_URL) {
            Ok(c) => return c,
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("MariaDB is required at 127.0.0.1:3306 (root, no password): {last}")
}

fn drop_database(conn: &mut MysqlConnection, name: &str) -> Result<(), String> {
    // A DROP waits for metadata locks; bound it so a connection left inside a transaction
    // cannot hang the test process (the database is then dropped by age later).
    diesel::sql_query("SET SESSION lock_wait_timeout = 10")
        .execute(conn)
        .map_err(|e| e.to_string())?;
    diesel::sql_query(format!("DROP DATABASE IF EXISTS {name}"))
        .execute(conn)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Drop `scim_test_*` databases left by runs that died before their `Drop` (once a process).
fn sweep_leftovers(conn: &mut MysqlConnection) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| sweep(conn));
}

/// Drop every stale `scim_test_*` database now.
pub fn sweep(conn: &mut MysqlConnection) {
    {
        #[derive(diesel::QueryableByName)]
        struct Name {
            #[diesel(sql_type = diesel::sql_types::Text)]
            name: String,
        }
        let names: Vec<Name> = diesel::sql_query(
            "SELECT SCHEMA_NAME AS name FROM information_schema.SCHEMATA \
             WHERE SCHEMA_NAME LIKE 'scim\\_test\\_%'",
        )
        .load(conn)
        .unwrap_or_default();
        for n in names.into_iter().filter(|n| throwaway::is_stale(&n.name)) {
            if let Err(e) = drop_database(conn, &n.name) {
                eprintln!("could not drop leftover test database {}: {e}", n.name);
            }
        }
    }
}

impl MariaDb {
    /// Create `scim_test_<secs>_<random>` (utf8mb4 with MariaDB's usual case-insensitive
    /// collation, as legacy schemas have it). Fails loudly when MariaDB is not reachable.
    pub fn create() -> MariaDb {
        let name = throwaway::new_name();
        let mut conn = admin();
        sweep_leftovers(&mut conn);
        diesel::sql_query(format!(
            "CREATE DATABASE {name} CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci"
        ))
        .execute(&mut conn)
        .unwrap();
        MariaDb {
            url: format!("mysql://root@127.0.0.1:3306/{name}"),
            name,
        }
    }

    /// A connection to this database.
    pub fn conn(&self) -> MysqlConnection {
        MysqlConnection::establish(&self.url).unwrap()
    }

    /// Kill every connection to this database except the caller's (a server-side drop).
    pub fn kill_connections(&self) {
        let mut c = admin();
        #[derive(diesel::QueryableByName)]
        struct Id {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            id: i64,
        }
        let ids: Vec<Id> = diesel::sql_query(format!(
            "SELECT CAST(ID AS SIGNED) AS id FROM information_schema.PROCESSLIST WHERE DB = '{}'",
            self.name
        ))
        .load(&mut c)
        .unwrap();
        for id in ids {
            let _ = diesel::sql_query(format!("KILL {}", id.id)).execute(&mut c);
        }
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        let result = MysqlConnection::establish(ADMIN_URL)
            .map_err(|e| e.to_string())
            .and_then(|mut conn| drop_database(&mut conn, &self.name));
        if let Err(e) = result {
            // Not silent: a later run drops it by age, but say so now.
            eprintln!("could not drop test database {}: {e}", self.name);
        }
    }
}
