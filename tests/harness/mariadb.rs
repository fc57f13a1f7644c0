//! Throwaway MariaDB databases in the server at 127.0.0.1:3306 (root, empty password, as on
//! these machines and in CI, where `scripts/install-deps` starts it). Started here with
//! `start-stop-daemon` when it is not running; a database per test, dropped on `Drop`.

use diesel::{Connection, MysqlConnection, RunQueryDsl};

const ADMIN_URL: &str = "mysql://root@127.0.0.1:3306/mysql";

/// A database that exists for one test.
pub struct MariaDb {
    pub name: String,
    pub url: String,
}

fn admin() -> MysqlConnection {
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

impl MariaDb {
    /// Create `scim_test_<random>` (utf8mb4 with MariaDB's usual case-insensitive collation,
    /// as legacy schemas have it). Fails loudly when MariaDB is not reachable.
    pub fn create() -> MariaDb {
        let name = format!("scim_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = admin();
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
        if let Ok(mut conn) = MysqlConnection::establish(ADMIN_URL) {
            let _ = diesel::sql_query(format!("DROP DATABASE IF EXISTS {}", self.name))
                .execute(&mut conn);
        }
    }
}
