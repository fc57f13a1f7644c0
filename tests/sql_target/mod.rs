//! The SQL target against real PostgreSQL, MariaDB and SQLite databases, each with a legacy
//! schema made by the test (varchar 'Y'/'N' flags, a login key next to a surrogate integer
//! id, a join table): create, update, rename, deactivation, membership, deletes, hostile
//! values, unmapped columns and unmanaged rows untouched, outages, drift repair and dry runs.

mod checks;
mod deactivation;
mod fanout;
mod keys;
mod members;

use crate::harness::mariadb::MariaDb;
use crate::harness::pg::PgDb;
use diesel::connection::SimpleConnection;
use diesel::sql_types::{Nullable, Text};
use diesel::{Connection, MysqlConnection, PgConnection, RunQueryDsl, SqliteConnection};
use scim_sync::config::target::RawTarget;
use scim_sync::mapping::{CompiledTarget, Schemas};
use scim_sync::targets::sql::{Settings, SqlTarget};
use scim_sync::targets::{Change, Desired, ErrorClass, Kind, Outcome, Prior, Target};
use serde_json::{json, Value};

const IRON: &str = "urn:ietf:params:scim:schemas:extension:ironclad:2.0:User";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    Postgres,
    Mariadb,
    Sqlite,
}

#[allow(dead_code)] // the variants hold what must live as long as the test
enum Server {
    Pg(PgDb),
    Maria(MariaDb),
    Lite(tempfile::TempDir),
}

/// A legacy database made for one test.
pub struct LegacyDb {
    server: Server,
    pub url: String,
    pub flavor: Flavor,
}

#[derive(diesel::QueryableByName)]
struct Row {
    #[diesel(sql_type = Nullable<Text>)]
    v: Option<String>,
}

impl LegacyDb {
    pub fn new(flavor: Flavor) -> LegacyDb {
        let (server, url) = match flavor {
            Flavor::Postgres => {
                let db = PgDb::create();
                let url = db.url.clone();
                (Server::Pg(db), url)
            }
            Flavor::Mariadb => {
                let db = MariaDb::create();
                let url = db.url.clone();
                (Server::Maria(db), url)
            }
            Flavor::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("legacy.db");
                SqliteConnection::establish(path.to_str().unwrap()).unwrap();
                (Server::Lite(dir), format!("sqlite://{}", path.display()))
            }
        };
        let db = LegacyDb {
            server,
            url,
            flavor,
        };
        let role_id = match flavor {
            Flavor::Postgres => "role_id SERIAL PRIMARY KEY",
            Flavor::Mariadb => "role_id INTEGER AUTO_INCREMENT PRIMARY KEY",
            Flavor::Sqlite => "role_id INTEGER PRIMARY KEY",
        };
        let (id, ts) = match flavor {
            Flavor::Postgres => ("user_id SERIAL PRIMARY KEY", "TIMESTAMP NULL"),
            Flavor::Mariadb => (
                "user_id INTEGER AUTO_INCREMENT PRIMARY KEY",
                "DATETIME NULL",
            ),
            Flavor::Sqlite => ("user_id INTEGER PRIMARY KEY", "TIMESTAMP NULL"),
        };
        db.exec(&format!(
            "CREATE TABLE app_users (
                {id},
                login VARCHAR(200) NOT NULL UNIQUE,
                emp_no INTEGER NULL,
                first_name VARCHAR(100) NULL,
                last_name VARCHAR(100) NULL,
                email VARCHAR(255) NULL,
                display TEXT NULL,
                vip INTEGER NULL,
                hired_at {ts},
                enabled CHAR(1) NOT NULL DEFAULT 'Y',
                disabled_at {ts},
                notes VARCHAR(200) NULL
            );
            CREATE TABLE app_groups (
                group_name VARCHAR(100) NOT NULL PRIMARY KEY,
                descr VARCHAR(200) NULL,
                notes VARCHAR(200) NULL
            );
            CREATE TABLE app_user_groups (
                group_name VARCHAR(100) NOT NULL,
                login VARCHAR(200) NOT NULL,
                PRIMARY KEY (group_name, login)
            );
            CREATE TABLE app_roles (
                {role_id},
                role_name VARCHAR(100) NOT NULL UNIQUE,
                label VARCHAR(200) NULL
            );
            CREATE TABLE app_role_members (
                role_id INTEGER NOT NULL,
                user_id INTEGER NOT NULL,
                PRIMARY KEY (role_id, user_id)
            );"
        ));
        db
    }

    fn sqlite_path(&self) -> String {
        self.url.trim_start_matches("sqlite://").to_owned()
    }

    /// Run statements (test-controlled SQL only).
    pub fn exec(&self, sql: &str) {
        match self.flavor {
            Flavor::Postgres => PgConnection::establish(&self.url)
                .unwrap()
                .batch_execute(sql)
                .unwrap(),
            Flavor::Mariadb => MysqlConnection::establish(&self.url)
                .unwrap()
                .batch_execute(sql)
                .unwrap(),
            Flavor::Sqlite => SqliteConnection::establish(&self.sqlite_path())
                .unwrap()
                .batch_execute(sql)
                .unwrap(),
        }
    }

    /// One text column (`v`) of a query with one bound text parameter.
    pub fn rows(&self, sql: &str, param: &str) -> Vec<Option<String>> {
        let sql = match self.flavor {
            Flavor::Postgres => sql.replace('?', "$1"),
            _ => sql.to_owned(),
        };
        let q = diesel::sql_query(sql).bind::<Text, _>(param.to_owned());
        let rows: Vec<Row> = match self.flavor {
            Flavor::Postgres => q.load(&mut PgConnection::establish(&self.url).unwrap()),
            Flavor::Mariadb => q.load(&mut MysqlConnection::establish(&self.url).unwrap()),
            Flavor::Sqlite => {
                // A daemon may be writing the file: wait for its lock instead of failing.
                let mut c = SqliteConnection::establish(&self.sqlite_path()).unwrap();
                c.batch_execute("PRAGMA busy_timeout = 10000").unwrap();
                q.load(&mut c)
            }
        }
        .unwrap();
        rows.into_iter().map(|r| r.v).collect()
    }

    fn cast(&self) -> &'static str {
        if self.flavor == Flavor::Mariadb {
            "CHAR"
        } else {
            "TEXT"
        }
    }

    /// A column of the user row with this login (`None`: NULL; panics when there is no row).
    pub fn user(&self, login: &str, column: &str) -> Option<String> {
        let r = self.rows(
            &format!(
                "SELECT CAST({column} AS {}) AS v FROM app_users WHERE login = ?",
                self.cast()
            ),
            login,
        );
        assert_eq!(r.len(), 1, "no single row for {login:?}");
        r.into_iter().next().unwrap()
    }

    pub fn has_user(&self, login: &str) -> bool {
        !self
            .rows("SELECT login AS v FROM app_users WHERE login = ?", login)
            .is_empty()
    }

    pub fn members(&self, group: &str) -> Vec<String> {
        let mut m: Vec<String> = self
            .rows(
                "SELECT login AS v FROM app_user_groups WHERE group_name = ?",
                group,
            )
            .into_iter()
            .flatten()
            .collect();
        m.sort();
        m
    }

    pub fn group(&self, name: &str) -> Option<Option<String>> {
        self.rows(
            "SELECT descr AS v FROM app_groups WHERE group_name = ?",
            name,
        )
        .into_iter()
        .next()
    }

    /// Kill the server-side connections of this database (PostgreSQL, MariaDB).
    pub fn kill_connections(&self) {
        match &self.server {
            Server::Pg(db) => {
                let mut c =
                    PgConnection::establish("postgres://postgres@127.0.0.1:5432/postgres").unwrap();
                c.batch_execute(&format!(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{}' AND pid <> pg_backend_pid()",
                    db.name
                ))
                .unwrap();
            }
            Server::Maria(db) => db.kill_connections(),
            Server::Lite(_) => {}
        }
    }

    /// The same database on a port where nothing listens.
    pub fn closed_port_url(&self) -> String {
        self.url.replace(":5432/", ":1/").replace(":3306/", ":1/")
    }
}

pub const MAPPING: &str = r#"
[users]
table = "app_users"
key_column = "login"
key = "userName"
[users.columns]
emp_no = { from = "externalId", type = "integer" }
first_name = "name.givenName"
last_name = "name.familyName"
email = 'emails[primary eq true].value'
display = "displayName"
vip = { from = "urn:ietf:params:scim:schemas:extension:ironclad:2.0:User:vip", type = "flag", true = 1, false = 0 }
hired_at = { from = "urn:ietf:params:scim:schemas:extension:ironclad:2.0:User:hireDate", type = "timestamp" }
[users.deactivate]
policy = "flag"
column = "enabled"
value = "N"
active_value = "Y"
[groups]
table = "app_groups"
key_column = "group_name"
key = "displayName"
[groups.columns]
descr = "externalId"
[groups.membership]
table = "app_user_groups"
group_column = "group_name"
user_column = "login"
"#;

pub fn build(url: &str, head: &str, mapping: &str) -> (CompiledTarget, SqlTarget) {
    let text = format!("name = \"legacy\"\ntype = \"sql\"\nurl = \"{url}\"\n{head}\n{mapping}");
    let raw: RawTarget = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    // MAPPING maps the ironclad extension, which the daemon would declare in [scim].
    let map = CompiledTarget::compile_with(&raw, 0, &Schemas::new(&[IRON.to_owned()])).unwrap();
    let RawTarget::Sql(s) = &raw else {
        panic!("sql")
    };
    let settings = Settings::from_raw(s, 0).unwrap();
    (map, SqlTarget::new(settings).unwrap())
}

pub fn user(login: &str) -> Value {
    json!({
        "id": format!("id-{login}"),
        "userName": login,
        "externalId": "1042",
        "name": {"givenName": "Barbara", "familyName": "Jensen"},
        "displayName": "Babs Jensen",
        "emails": [{"value": "bjensen@example.com", "primary": true}],
        "active": true,
        IRON: {"vip": true, "hireDate": "2021-03-04T05:06:07+02:00"}
    })
}

pub fn desired_user(map: &CompiledTarget, u: &Value) -> Desired {
    Desired {
        kind: Kind::User,
        entry: map.render_user(u, &|_, _| None).unwrap(),
        active: u["active"].as_bool().unwrap_or(true),
        members: vec![],
        password_hash: None,
        role_groups: vec![],
        member_changes: None,
    }
}

fn desired_group(map: &CompiledTarget, name: &str, members: &[&str]) -> Desired {
    Desired {
        kind: Kind::Group,
        entry: map
            .render_group(&json!({"id": format!("g-{name}"), "displayName": name, "externalId": format!("{name} team")}))
            .unwrap(),
        active: true,
        members: members.iter().map(|m| (*m).to_owned()).collect(),
        password_hash: None,
        role_groups: vec![],
        member_changes: None,
    }
}

fn prior(o: &Outcome) -> Prior {
    Prior {
        key: o.key.clone(),
        extra: o.extra.clone(),
        ..Prior::default()
    }
}

async fn lifecycle(flavor: Flavor) {
    let db = LegacyDb::new(flavor);
    db.exec(
        "INSERT INTO app_users (login, first_name, enabled, notes) VALUES ('legacy_admin', 'Root', 'Y', 'hands off');
         INSERT INTO app_users (login, first_name, enabled) VALUES ('taken', 'Someone', 'Y');",
    );
    let (map, t) = build(&db.url, "", MAPPING);
    t.healthcheck().await.unwrap();

    // Create, then a repeat is a no-op.
    let mut u = user("bjensen");
    let out = t
        .sync(
            Change::Upsert(&desired_user(&map, &u)),
            &Prior::default(),
            false,
        )
        .await
        .unwrap();
    assert_eq!(out.key.as_deref(), Some("bjensen"));
    assert_eq!(out.changes.len(), 1, "{:?}", out.changes);
    assert!(
        out.changes[0].starts_with("INSERT INTO"),
        "{:?}",
        out.changes
    );
    assert_eq!(db.user("bjensen", "emp_no").as_deref(), Some("1042"));
    assert_eq!(db.user("bjensen", "first_name").as_deref(), Some("Barbara"));
    assert_eq!(db.user("bjensen", "vip").as_deref(), Some("1"));
    assert_eq!(db.user("bjensen", "enabled").as_deref(), Some("Y"));
    assert!(db
        .user("bjensen", "hired_at")
        .unwrap()
        .starts_with("2021-03-04 03:06:07"));
    let mut p = prior(&out);
    let again = t
        .sync(Change::Upsert(&desired_user(&map, &u)), &p, false)
        .await
        .unwrap();
    assert!(again.changes.is_empty(), "{:?}", again.changes);

    // Update: only changed columns; an unmapped column set by hand survives.
    db.exec("UPDATE app_users SET notes = 'kept' WHERE login = 'bjensen'");
    u["name"]["givenName"] = json!("Babs");
    u[IRON]["vip"] = json!(false);
    u.as_object_mut().unwrap().remove("displayName");
    let out = t
        .sync(Change::Upsert(&desired_user(&map, &u)), &p, false)
        .await
        .unwrap();
    assert_eq!(out.changes.len(), 1, "{:?}", out.changes);
    assert!(out.changes[0].starts_with("UPDATE"), "{:?}", out.changes);
    assert!(!out.changes[0].contains("last_name"), "{:?}", out.changes);
    assert_eq!(db.user("bjensen", "first_name").as_deref(), Some("Babs"));
    assert_eq!(db.user("bjensen", "vip").as_deref(), Some("0"));
    assert_eq!(db.user("bjensen", "display"), None);
    assert_eq!(db.user("bjensen", "notes").as_deref(), Some("kept"));
    p = prior(&out);

    // Rename (key change) keeps the row (same surrogate id) and its unmapped columns.
    let id_before = db.user("bjensen", "user_id");
    u["userName"] = json!("babs");
    let out = t
        .sync(Change::Upsert(&desired_user(&map, &u)), &p, false)
        .await
        .unwrap();
    assert_eq!(out.key.as_deref(), Some("babs"));
    assert!(!db.has_user("bjensen"));
    assert_eq!(db.user("babs", "user_id"), id_before);
    assert_eq!(db.user("babs", "notes").as_deref(), Some("kept"));
    p = prior(&out);
    // A case-only key change (the same row under a case-insensitive collation) and back.
    u["userName"] = json!("Babs");
    let out = t
        .sync(Change::Upsert(&desired_user(&map, &u)), &p, false)
        .await
        .unwrap();
    assert_eq!(out.key.as_deref(), Some("Babs"));
    assert_eq!(db.user("Babs", "user_id"), id_before);
    u["userName"] = json!("babs");
    let out = t
        .sync(Change::Upsert(&desired_user(&map, &u)), &prior(&out), false)
        .await
        .unwrap();
    assert_eq!(out.key.as_deref(), Some("babs"));
    assert_eq!(db.user("babs", "user_id"), id_before);
    p = prior(&out);

    // Deactivate and reactivate.
    u["active"] = json!(false);
    let out = t
        .sync(Change::Upsert(&desired_user(&map, &u)), &p, false)
        .await
        .unwrap();
    assert_eq!(db.user("babs", "enabled").as_deref(), Some("N"));
    p = prior(&out);
    u["active"] = json!(true);
    let out = t
        .sync(Change::Upsert(&desired_user(&map, &u)), &p, false)
        .await
        .unwrap();
    assert_eq!(db.user("babs", "enabled").as_deref(), Some("Y"));
    p = prior(&out);

    // Unmanaged row with our key: conflict, untouched; adopt takes it over.
    let taken = desired_user(&map, &user("taken"));
    let e = t
        .sync(Change::Upsert(&taken), &Prior::default(), false)
        .await
        .unwrap_err();
    assert_eq!(e.class, ErrorClass::Permanent);
    assert!(e.message.contains("not managed"), "{}", e.message);
    assert_eq!(db.user("taken", "first_name").as_deref(), Some("Someone"));
    let (_, adopting) = build(&db.url, "on_existing = \"adopt\"", MAPPING);
    let out = adopting
        .sync(Change::Upsert(&taken), &Prior::default(), false)
        .await
        .unwrap();
    assert!(out.changes[0].starts_with("adopt:"), "{:?}", out.changes);
    assert_eq!(db.user("taken", "first_name").as_deref(), Some("Barbara"));
    let taken_prior = prior(&out);

    // Groups: create with members, add and remove a member, rename, delete.
    let g = t
        .sync(
            Change::Upsert(&desired_group(&map, "ops", &["babs"])),
            &Prior::default(),
            false,
        )
        .await
        .unwrap();
    assert_eq!(db.members("ops"), ["babs"]);
    assert_eq!(db.group("ops"), Some(Some("ops team".into())));
    let g = t
        .sync(
            Change::Upsert(&desired_group(&map, "ops", &["babs", "taken"])),
            &prior(&g),
            false,
        )
        .await
        .unwrap();
    assert_eq!(db.members("ops"), ["babs", "taken"]);
    let g = t
        .sync(
            Change::Upsert(&desired_group(&map, "ops", &["taken"])),
            &prior(&g),
            false,
        )
        .await
        .unwrap();
    assert_eq!(db.members("ops"), ["taken"]);
    let g = t
        .sync(
            Change::Upsert(&desired_group(&map, "operations", &["taken"])),
            &prior(&g),
            false,
        )
        .await
        .unwrap();
    assert_eq!(db.group("ops"), None);
    assert_eq!(db.members("operations"), ["taken"]);
    let gone = t
        .sync(Change::Remove { kind: Kind::Group }, &prior(&g), false)
        .await
        .unwrap();
    assert_eq!(gone.key, None);
    assert_eq!(db.group("operations"), None);
    assert!(db.members("operations").is_empty());

    // Hostile values are data.
    let hostile = "o'brien\"; DROP TABLE app_users; -- \\ \u{e9}\u{4e2d}\u{1f600}";
    let mut h = user(hostile);
    h["name"]["givenName"] = json!("a\0b'c");
    h["displayName"] = json!("x'y;--".repeat(1700));
    let out = t
        .sync(
            Change::Upsert(&desired_user(&map, &h)),
            &Prior::default(),
            false,
        )
        .await
        .unwrap();
    assert_eq!(out.key.as_deref(), Some(hostile));
    assert_eq!(db.user(hostile, "first_name").as_deref(), Some("ab'c"));
    assert_eq!(db.user(hostile, "display").unwrap().len(), 6 * 1700);
    let again = t
        .sync(Change::Upsert(&desired_user(&map, &h)), &prior(&out), false)
        .await
        .unwrap();
    assert!(again.changes.is_empty(), "{:?}", again.changes);
    let hg = t
        .sync(
            Change::Upsert(&desired_group(&map, "o'ps\"; --", &[hostile])),
            &Prior::default(),
            false,
        )
        .await
        .unwrap();
    assert_eq!(db.members("o'ps\"; --"), [hostile]);
    t.sync(Change::Remove { kind: Kind::Group }, &prior(&hg), false)
        .await
        .unwrap();
    assert!(db.members("o'ps\"; --").is_empty());
    let mut bad = user("numbers");
    bad["externalId"] = json!("12; DROP TABLE app_users");
    let e = t
        .sync(
            Change::Upsert(&desired_user(&map, &bad)),
            &Prior::default(),
            false,
        )
        .await
        .unwrap_err();
    assert_eq!(e.class, ErrorClass::Permanent);
    assert!(e.message.contains("emp_no"), "{}", e.message);

    // Drift: a manual edit is reported by a dry run (nothing written) and repaired.
    db.exec("UPDATE app_users SET first_name = 'Hacked', enabled = 'N' WHERE login = 'babs'");
    let dry = t
        .sync(Change::Upsert(&desired_user(&map, &u)), &p, true)
        .await
        .unwrap();
    assert_eq!(dry.changes.len(), 1, "{:?}", dry.changes);
    assert!(dry.changes[0].contains("first_name") && dry.changes[0].contains("enabled"));
    assert_eq!(db.user("babs", "first_name").as_deref(), Some("Hacked"));
    let fixed = t
        .sync(Change::Upsert(&desired_user(&map, &u)), &p, false)
        .await
        .unwrap();
    assert_eq!(fixed.changes, dry.changes);
    assert_eq!(db.user("babs", "first_name").as_deref(), Some("Babs"));
    assert_eq!(db.user("babs", "enabled").as_deref(), Some("Y"));

    // Delete users (membership rows first); an already deleted row is done.
    let out = t
        .sync(Change::Remove { kind: Kind::User }, &taken_prior, false)
        .await
        .unwrap();
    assert_eq!(out.key, None);
    assert!(!db.has_user("taken"));
    t.sync(Change::Remove { kind: Kind::User }, &taken_prior, false)
        .await
        .unwrap();
    t.sync(Change::Remove { kind: Kind::User }, &p, false)
        .await
        .unwrap();
    assert!(!db.has_user("babs"));

    // The unmanaged row was never touched.
    assert_eq!(
        db.user("legacy_admin", "first_name").as_deref(),
        Some("Root")
    );
    assert_eq!(
        db.user("legacy_admin", "notes").as_deref(),
        Some("hands off")
    );
}

async fn outage(flavor: Flavor) {
    let db = LegacyDb::new(flavor);
    let head = "timeout_secs = 1\nconnect_timeout_secs = 2";
    let (map, t) = build(&db.url, head, MAPPING);
    let mut u = user("carol");
    let out = t
        .sync(
            Change::Upsert(&desired_user(&map, &u)),
            &Prior::default(),
            false,
        )
        .await
        .unwrap();
    let p = prior(&out);
    u["name"]["givenName"] = json!("Caroline");
    let d = desired_user(&map, &u);
    match flavor {
        Flavor::Sqlite => {
            // Another writer holds the file locked: transient, then converges.
            let mut locker = SqliteConnection::establish(&db.sqlite_path()).unwrap();
            locker.batch_execute("BEGIN EXCLUSIVE").unwrap();
            let e = t.sync(Change::Upsert(&d), &p, false).await.unwrap_err();
            assert_eq!(e.class, ErrorClass::Transient, "{e:?}");
            locker.batch_execute("COMMIT").unwrap();
            // A writer holding only the write (reserved) lock does not stop a dry run's reads.
            locker.batch_execute("BEGIN IMMEDIATE").unwrap();
            let dry = t.sync(Change::Upsert(&d), &p, true).await.unwrap();
            assert_eq!(dry.changes.len(), 1, "{:?}", dry.changes);
            locker.batch_execute("COMMIT").unwrap();
        }
        _ => {
            // Unreachable server first, then connections killed under a live target.
            let (_, closed) = build(&db.closed_port_url(), head, MAPPING);
            let e = closed
                .sync(Change::Upsert(&d), &p, false)
                .await
                .unwrap_err();
            assert_eq!(e.class, ErrorClass::Transient, "{e:?}");
            assert_eq!(
                closed.healthcheck().await.unwrap_err().class,
                ErrorClass::Transient
            );
            // Connections killed under a live target: the sync either succeeds (a fresh
            // connection) and made the change, or fails transient having made none; either way
            // the next sync works. (The old check accepted any Ok, so a sync that reported
            // success on a dead connection without writing passed.)
            let mut killed = u.clone();
            killed["name"]["givenName"] = json!("Carrie");
            let dk = desired_user(&map, &killed);
            let before = db.user("carol", "first_name");
            db.kill_connections();
            match t.sync(Change::Upsert(&dk), &p, false).await {
                Ok(out) => {
                    assert!(!out.changes.is_empty(), "{:?}", out.changes);
                    assert_eq!(db.user("carol", "first_name").as_deref(), Some("Carrie"));
                }
                Err(e) => {
                    assert_eq!(e.class, ErrorClass::Transient, "{e:?}");
                    assert_eq!(
                        db.user("carol", "first_name"),
                        before,
                        "a failed sync wrote"
                    );
                    t.sync(Change::Upsert(&dk), &p, false).await.unwrap();
                    assert_eq!(db.user("carol", "first_name").as_deref(), Some("Carrie"));
                }
            }
            // Another writer holds the row lock: the lock-wait timeout is transient.
            let locker_sql = "BEGIN; UPDATE app_users SET notes = 'locked' WHERE login = 'carol'";
            let e = match flavor {
                Flavor::Postgres => {
                    let mut locker = PgConnection::establish(&db.url).unwrap();
                    locker.batch_execute(locker_sql).unwrap();
                    let e = t.sync(Change::Upsert(&d), &p, false).await.unwrap_err();
                    locker.batch_execute("ROLLBACK").unwrap();
                    e
                }
                _ => {
                    let mut locker = MysqlConnection::establish(&db.url).unwrap();
                    locker.batch_execute(locker_sql).unwrap();
                    let e = t.sync(Change::Upsert(&d), &p, false).await.unwrap_err();
                    locker.batch_execute("ROLLBACK").unwrap();
                    e
                }
            };
            assert_eq!(e.class, ErrorClass::Transient, "{e:?}");
        }
    }
    t.sync(Change::Upsert(&d), &p, false).await.unwrap();
    assert_eq!(db.user("carol", "first_name").as_deref(), Some("Caroline"));
    let again = t.sync(Change::Upsert(&d), &p, false).await.unwrap();
    assert!(again.changes.is_empty());
}

/// Timestamp deactivation, `on_delete = "disable"`, and the `delete` policy.
async fn deactivation_policies(flavor: Flavor) {
    let db = LegacyDb::new(flavor);
    let ts_mapping = MAPPING
        .replace(
            "key = \"userName\"\n",
            "key = \"userName\"\non_delete = \"disable\"\n",
        )
        .replace(
            "policy = \"flag\"\ncolumn = \"enabled\"\nvalue = \"N\"\nactive_value = \"Y\"",
            "policy = \"timestamp\"\ncolumn = \"disabled_at\"",
        );
    let (map, t) = build(&db.url, "", &ts_mapping);
    let mut u = user("dave");
    let p = prior(
        &t.sync(
            Change::Upsert(&desired_user(&map, &u)),
            &Prior::default(),
            false,
        )
        .await
        .unwrap(),
    );
    assert_eq!(db.user("dave", "disabled_at"), None);
    u["active"] = json!(false);
    let p = prior(
        &t.sync(Change::Upsert(&desired_user(&map, &u)), &p, false)
            .await
            .unwrap(),
    );
    let at = db.user("dave", "disabled_at");
    assert!(at.is_some());
    let again = t
        .sync(Change::Upsert(&desired_user(&map, &u)), &p, false)
        .await
        .unwrap();
    assert!(again.changes.is_empty(), "{:?}", again.changes);
    u["active"] = json!(true);
    let p = prior(
        &t.sync(Change::Upsert(&desired_user(&map, &u)), &p, false)
            .await
            .unwrap(),
    );
    assert_eq!(db.user("dave", "disabled_at"), None);
    let out = t
        .sync(Change::Remove { kind: Kind::User }, &p, false)
        .await
        .unwrap();
    assert_eq!(out.key.as_deref(), Some("dave"));
    assert!(db.user("dave", "disabled_at").is_some());

    let del_mapping = MAPPING.replace(
        "policy = \"flag\"\ncolumn = \"enabled\"\nvalue = \"N\"\nactive_value = \"Y\"",
        "policy = \"delete\"",
    );
    let (map, t) = build(&db.url, "", &del_mapping);
    let mut u = user("erin");
    let p = prior(
        &t.sync(
            Change::Upsert(&desired_user(&map, &u)),
            &Prior::default(),
            false,
        )
        .await
        .unwrap(),
    );
    u["active"] = json!(false);
    let out = t
        .sync(Change::Upsert(&desired_user(&map, &u)), &p, false)
        .await
        .unwrap();
    assert_eq!(out.key, None);
    assert!(!db.has_user("erin"));
    u["active"] = json!(true);
    let out = t
        .sync(Change::Upsert(&desired_user(&map, &u)), &prior(&out), false)
        .await
        .unwrap();
    assert_eq!(out.key.as_deref(), Some("erin"));
    assert!(db.has_user("erin"));
}

pub const SURROGATE: &str = r#"
[users]
table = "app_users"
key_column = "login"
key = "userName"
[users.columns]
first_name = "name.givenName"
[groups]
table = "app_roles"
key_column = "role_name"
key = "displayName"
[groups.columns]
label = "externalId"
[groups.membership]
table = "app_role_members"
group_column = "role_id"
group_holds = "role_id"
user_column = "user_id"
user_holds = "user_id"
"#;

/// A join table of surrogate integer ids (`role_id`, `user_id`): membership through
/// subqueries, key changes leave it alone, deletes clean it, large groups go in chunks.
async fn surrogate_membership(flavor: Flavor) {
    let db = LegacyDb::new(flavor);
    let (map, t) = build(&db.url, "", SURROGATE);
    let id_rows = |role: &str| -> Vec<String> {
        let mut v: Vec<String> = db
            .rows(
                &format!(
                    "SELECT CAST(m.user_id AS {c}) AS v FROM app_role_members m JOIN app_roles r ON r.role_id = m.role_id WHERE r.role_name = ?",
                    c = db.cast()
                ),
                role,
            )
            .into_iter()
            .flatten()
            .collect();
        v.sort();
        v
    };
    let mut users = Vec::new();
    for name in ["ann", "bob"] {
        let out = t
            .sync(
                Change::Upsert(&desired_user(&map, &user(name))),
                &Prior::default(),
                false,
            )
            .await
            .unwrap();
        users.push((name, prior(&out), db.user(name, "user_id").unwrap()));
    }
    let group = |name: &str, members: &[&str]| Desired {
        kind: Kind::Group,
        entry: map
            .render_group(&json!({"displayName": name, "externalId": "x"}))
            .unwrap(),
        active: true,
        members: members.iter().map(|m| (*m).to_owned()).collect(),
        password_hash: None,
        role_groups: vec![],
        member_changes: None,
    };
    let g = t
        .sync(
            Change::Upsert(&group("admins", &["ann", "bob"])),
            &Prior::default(),
            false,
        )
        .await
        .unwrap();
    let mut ids = vec![users[0].2.clone(), users[1].2.clone()];
    ids.sort();
    assert_eq!(id_rows("admins"), ids);
    let again = t
        .sync(
            Change::Upsert(&group("admins", &["ann", "bob"])),
            &prior(&g),
            false,
        )
        .await
        .unwrap();
    assert!(again.changes.is_empty(), "{:?}", again.changes);
    // Renames of the role and of a user leave the id rows alone.
    let g = t
        .sync(
            Change::Upsert(&group("root", &["ann", "bob"])),
            &prior(&g),
            false,
        )
        .await
        .unwrap();
    assert_eq!(id_rows("root"), ids);
    let mut ann = user("ann");
    ann["userName"] = json!("anne");
    let out = t
        .sync(
            Change::Upsert(&desired_user(&map, &ann)),
            &users[0].1,
            false,
        )
        .await
        .unwrap();
    let g = t
        .sync(
            Change::Upsert(&group("root", &["anne", "bob"])),
            &prior(&g),
            false,
        )
        .await
        .unwrap();
    assert!(g.changes.is_empty(), "{:?}", g.changes);
    // Removing a member, then deleting a user, clean the join table.
    let g = t
        .sync(Change::Upsert(&group("root", &["anne"])), &prior(&g), false)
        .await
        .unwrap();
    assert_eq!(id_rows("root"), [users[0].2.clone()]);
    t.sync(Change::Remove { kind: Kind::User }, &prior(&out), false)
        .await
        .unwrap();
    assert!(id_rows("root").is_empty());

    // A large group: 1,100 members in three INSERT statements; then emptied in three DELETEs.
    let values: Vec<String> = (0..1100).map(|i| format!("('m{i:04}')")).collect();
    db.exec(&format!(
        "INSERT INTO app_users (login) VALUES {}",
        values.join(", ")
    ));
    let names: Vec<String> = (0..1100).map(|i| format!("m{i:04}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let big = t
        .sync(Change::Upsert(&group("root", &refs)), &prior(&g), false)
        .await
        .unwrap();
    assert_eq!(big.changes.len(), 3, "{}", big.changes.len());
    assert_eq!(id_rows("root").len(), 1100);
    let empty = t
        .sync(Change::Upsert(&group("root", &[])), &prior(&big), false)
        .await
        .unwrap();
    assert_eq!(empty.changes.len(), 3);
    assert!(id_rows("root").is_empty());
    let gone = t
        .sync(Change::Remove { kind: Kind::Group }, &prior(&empty), false)
        .await
        .unwrap();
    assert_eq!(gone.key, None);
}

#[tokio::test]
async fn postgres_surrogate_id_membership() {
    surrogate_membership(Flavor::Postgres).await;
}

#[tokio::test]
async fn mariadb_surrogate_id_membership() {
    surrogate_membership(Flavor::Mariadb).await;
}

#[tokio::test]
async fn sqlite_surrogate_id_membership() {
    surrogate_membership(Flavor::Sqlite).await;
}

/// Misconfiguration and bad data are permanent, and leave nothing half-written.
async fn permanent_errors(flavor: Flavor) {
    let db = LegacyDb::new(flavor);
    let (map, t) = build(&db.url, "", MAPPING);
    let p = prior(
        &t.sync(
            Change::Upsert(&desired_user(&map, &user("frank"))),
            &Prior::default(),
            false,
        )
        .await
        .unwrap(),
    );
    t.sync(
        Change::Upsert(&desired_user(&map, &user("gina"))),
        &Prior::default(),
        false,
    )
    .await
    .unwrap();
    // A key change onto another row's key.
    let mut f = user("frank");
    f["userName"] = json!("gina");
    let e = t
        .sync(Change::Upsert(&desired_user(&map, &f)), &p, false)
        .await
        .unwrap_err();
    assert_eq!(e.class, ErrorClass::Permanent);
    assert!(e.message.contains("already exists"), "{}", e.message);
    assert!(db.has_user("frank"));
    // A value too long for VARCHAR(100) (SQLite does not enforce lengths).
    if flavor != Flavor::Sqlite {
        let mut f = user("frank");
        f["name"]["givenName"] = json!("x".repeat(200));
        f["name"]["familyName"] = json!("Changed");
        let e = t
            .sync(Change::Upsert(&desired_user(&map, &f)), &p, false)
            .await
            .unwrap_err();
        assert_eq!(e.class, ErrorClass::Permanent, "{e:?}");
        assert_eq!(db.user("frank", "last_name").as_deref(), Some("Jensen"));
    }
    // A mapped column the table does not have: the healthcheck says so, syncs are permanent.
    let bad = MAPPING.replace("display = ", "no_such_column = ");
    let (map2, t2) = build(&db.url, "", &bad);
    let e = t2.healthcheck().await.unwrap_err();
    assert_eq!(e.class, ErrorClass::Permanent, "{e:?}");
    let e = t2
        .sync(
            Change::Upsert(&desired_user(&map2, &user("frank"))),
            &p,
            false,
        )
        .await
        .unwrap_err();
    assert_eq!(e.class, ErrorClass::Permanent, "{e:?}");
    let bad_table = MAPPING.replace("table = \"app_users\"", "table = \"no_such_table\"");
    let (_, t3) = build(&db.url, "", &bad_table);
    assert_eq!(
        t3.healthcheck().await.unwrap_err().class,
        ErrorClass::Permanent
    );
}

#[tokio::test]
async fn postgres_permanent_errors() {
    permanent_errors(Flavor::Postgres).await;
}

#[tokio::test]
async fn mariadb_permanent_errors() {
    permanent_errors(Flavor::Mariadb).await;
}

#[tokio::test]
async fn sqlite_permanent_errors() {
    permanent_errors(Flavor::Sqlite).await;
}

/// Several workers syncing at once each get a connection; every row lands once.
async fn concurrent_syncs(flavor: Flavor) {
    let db = LegacyDb::new(flavor);
    let (map, t) = build(&db.url, "", MAPPING);
    let users: Vec<Value> = (0..24).map(|i| user(&format!("c{i:02}"))).collect();
    let desired: Vec<Desired> = users.iter().map(|u| desired_user(&map, u)).collect();
    let prior = Prior::default();
    let results = futures_util::future::join_all(
        desired
            .iter()
            .map(|d| t.sync(Change::Upsert(d), &prior, false)),
    )
    .await;
    for r in results {
        r.unwrap();
    }
    for i in 0..24 {
        assert_eq!(
            db.user(&format!("c{i:02}"), "first_name").as_deref(),
            Some("Barbara")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_concurrent_syncs() {
    concurrent_syncs(Flavor::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_concurrent_syncs() {
    concurrent_syncs(Flavor::Mariadb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_concurrent_syncs() {
    concurrent_syncs(Flavor::Sqlite).await;
}

#[tokio::test]
async fn postgres_lifecycle() {
    lifecycle(Flavor::Postgres).await;
}

#[tokio::test]
async fn mariadb_lifecycle() {
    lifecycle(Flavor::Mariadb).await;
}

#[tokio::test]
async fn sqlite_lifecycle() {
    lifecycle(Flavor::Sqlite).await;
}

/// A removal names what it removes (`Change::Remove { kind }`): a row whose recorded
/// bookkeeping lacks its kind (a state written without one) is deleted from the right table,
/// not refused.
#[tokio::test]
async fn sqlite_a_removal_names_its_kind_when_the_bookkeeping_does_not() {
    let db = LegacyDb::new(Flavor::Sqlite);
    let (map, t) = build(&db.url, "", MAPPING);
    let u = user("nokind");
    let out = t
        .sync(
            Change::Upsert(&desired_user(&map, &u)),
            &Prior::default(),
            false,
        )
        .await
        .unwrap();
    assert!(db.has_user("nokind"));
    let bare = Prior {
        key: out.key.clone(),
        ..Prior::default()
    };
    let gone = t
        .sync(Change::Remove { kind: Kind::User }, &bare, false)
        .await
        .unwrap();
    assert_eq!(gone.key, None);
    assert!(!db.has_user("nokind"));
}

#[tokio::test]
async fn postgres_outage_is_transient_and_converges() {
    outage(Flavor::Postgres).await;
}

#[tokio::test]
async fn mariadb_outage_is_transient_and_converges() {
    outage(Flavor::Mariadb).await;
}

#[tokio::test]
async fn sqlite_locked_file_is_transient_and_converges() {
    outage(Flavor::Sqlite).await;
}

#[tokio::test]
async fn postgres_deactivation_policies() {
    deactivation_policies(Flavor::Postgres).await;
}

#[tokio::test]
async fn mariadb_deactivation_policies() {
    deactivation_policies(Flavor::Mariadb).await;
}

#[tokio::test]
async fn sqlite_deactivation_policies() {
    deactivation_policies(Flavor::Sqlite).await;
}

#[test]
fn every_example_config_is_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("etc/examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let raw: scim_sync::config::raw::RawConfig =
            toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let schemas = Schemas::new(&raw.scim.user_extensions);
        for (i, t) in raw.targets.iter().enumerate() {
            CompiledTarget::compile_with(t, i, &schemas)
                .unwrap_or_else(|e| panic!("{}: {e:?}", path.display()));
            if let RawTarget::Sql(s) = t {
                Settings::from_raw(s, i).unwrap_or_else(|e| panic!("{}: {e:?}", path.display()));
                seen += 1;
            }
        }
    }
    assert!(seen >= 3, "expected the three SQL examples, saw {seen}");
}
