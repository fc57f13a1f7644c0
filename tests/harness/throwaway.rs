//! Names of throwaway test databases, shared by `pg.rs` and `mariadb.rs`:
//! `scim_test_<unix seconds>_<32 hex>`. The creation time in the name lets a later run drop the
//! leftovers of a run that could not clean up (killed, aborted, a hung `Drop`) by age alone,
//! without touching a database another test process is using right now.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Prefix of every throwaway database (`LIKE` pattern: `scim\_test\_%`).
pub const PREFIX: &str = "scim_test_";

/// Leftovers older than this are dropped; no test runs anywhere near this long.
pub const MAX_AGE: Duration = Duration::from_secs(3 * 3600);

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A fresh name.
pub fn new_name() -> String {
    format!("{PREFIX}{}_{}", now_secs(), uuid::Uuid::new_v4().simple())
}

/// Whether `name` is one of ours (exactly the `new_name` shape) and older than [`MAX_AGE`].
/// Names of any other shape (older harness versions, someone else's databases) are never
/// stale: their age is unknown.
pub fn is_stale(name: &str) -> bool {
    let Some(rest) = name.strip_prefix(PREFIX) else {
        return false;
    };
    let Some((secs, id)) = rest.split_once('_') else {
        return false;
    };
    let shaped = !secs.is_empty()
        && secs.bytes().all(|b| b.is_ascii_digit())
        && id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
    let Ok(secs) = secs.parse::<u64>() else {
        return false;
    };
    shaped && now_secs().saturating_sub(secs) > MAX_AGE.as_secs()
}

#[test]
fn only_our_old_names_are_stale() {
    let fresh = new_name();
    assert!(fresh.len() <= 63, "PostgreSQL identifiers stop at 63 bytes");
    assert!(!is_stale(&fresh));
    let old = format!("{PREFIX}1000_{}", uuid::Uuid::new_v4().simple());
    assert!(is_stale(&old));
    for other in [
        format!("scim_test_{}", uuid::Uuid::new_v4().simple()), // older harness: age unknown
        "scim_test_1000_abc".to_string(),
        "scim_test_1000_".to_string(),
        "production".to_string(),
        format!("scim_test_x1000_{}", uuid::Uuid::new_v4().simple()),
    ] {
        assert!(!is_stale(&other), "{other}");
    }
}

fn pg_exists(name: &str) -> bool {
    use diesel::{Connection, RunQueryDsl};
    #[derive(diesel::QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let mut c = diesel::PgConnection::establish(super::pg::ADMIN_URL).unwrap();
    let r: Vec<N> = diesel::sql_query(format!(
        "SELECT count(*) AS n FROM pg_database WHERE datname = '{name}'"
    ))
    .load(&mut c)
    .unwrap();
    r.first().is_some_and(|r| r.n > 0)
}

fn mariadb_exists(name: &str) -> bool {
    use diesel::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let mut c = super::mariadb::admin();
    let r: Vec<N> = diesel::sql_query(format!(
        "SELECT CAST(count(*) AS SIGNED) AS n FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = '{name}'"
    ))
    .load(&mut c)
    .unwrap();
    r.first().is_some_and(|r| r.n > 0)
}

#[test]
fn a_panicking_test_drops_its_databases() {
    let (tx, rx) = std::sync::mpsc::channel();
    let died = std::thread::spawn(move || {
        let pg = super::pg::PgDb::create();
        let my = super::mariadb::MariaDb::create();
        // A pooled connection still open in the database, as a daemon's would be.
        let _open = <diesel::PgConnection as diesel::Connection>::establish(&pg.url).unwrap();
        tx.send((pg.name.clone(), my.name.clone())).unwrap();
        panic!("deliberate test failure");
    })
    .join();
    assert!(died.is_err());
    let (pg, my) = rx.recv().unwrap();
    assert!(!pg_exists(&pg), "{pg} left behind");
    assert!(!mariadb_exists(&my), "{my} left behind");
}

#[test]
fn leftovers_of_a_killed_run_are_dropped_by_age_and_nothing_else() {
    use diesel::{Connection, RunQueryDsl};
    let stale = format!("{PREFIX}1000_{}", uuid::Uuid::new_v4().simple());
    let unknown_age = format!("{PREFIX}{}", uuid::Uuid::new_v4().simple());
    let fresh = new_name();
    let mut pg = diesel::PgConnection::establish(super::pg::ADMIN_URL).unwrap();
    let mut my = super::mariadb::admin();
    for name in [&stale, &unknown_age, &fresh] {
        diesel::sql_query(format!("CREATE DATABASE {name}"))
            .execute(&mut pg)
            .unwrap();
        diesel::sql_query(format!("CREATE DATABASE {name}"))
            .execute(&mut my)
            .unwrap();
    }
    super::pg::sweep(&mut pg);
    super::mariadb::sweep(&mut my);
    assert!(!pg_exists(&stale) && !mariadb_exists(&stale), "stale kept");
    for name in [&unknown_age, &fresh] {
        assert!(pg_exists(name) && mariadb_exists(name), "{name} dropped");
        diesel::sql_query(format!("DROP DATABASE {name}"))
            .execute(&mut pg)
            .unwrap();
        diesel::sql_query(format!("DROP DATABASE {name}"))
            .execute(&mut my)
            .unwrap();
    }
}
