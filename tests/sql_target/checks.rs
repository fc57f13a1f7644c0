//! Issue 13, items 3, 4 and 6 on real databases: the live column types against the rules'
//! conversions (`targets::check_live`, what `check-config --connect` and a reload run) on
//! PostgreSQL, MariaDB and SQLite; apply-time conversion errors naming target, table, column
//! and config key; `/readyz` keeping a target failing while it has a dead letter, whatever
//! else applies; and docs/legacy-sql.md's flag-plus-timestamp deactivation run as written.

use super::{Flavor, LegacyDb};
use crate::harness::daemon::{Backend, TestDaemon};
use scim_sync::targets::{check_live, AnyTarget, ErrorClass};
use serde_json::{json, Value};

const TYPED: &str = "CREATE TABLE typed_users (
    n INTEGER NULL,
    login VARCHAR(200) NOT NULL,
    hired TIMESTAMP NULL,
    flag_text CHAR(1) NULL,
    title VARCHAR(100) NULL
)";

/// A mapping onto `typed_users`; `key_column`, `hired` and `flag_text` vary.
fn typed(key_column: &str, hired: &str, flag: &str) -> String {
    format!(
        "[users]\ntable = \"typed_users\"\nkey_column = \"{key_column}\"\nkey = \"userName\"\n[users.columns]\nhired = {hired}\nflag_text = {flag}\ntitle = \"title\"\n"
    )
}

async fn live_types_are_checked(flavor: Flavor) {
    let db = LegacyDb::new(flavor);
    db.exec(TYPED);
    // Three impossible conversions: a text key on an integer column, text into a timestamp,
    // TOML booleans into a CHAR(1) (they would land as 'true' / '1').
    let bad = typed(
        "n",
        "\"title\"",
        "{ from = \"active\", type = \"flag\", true = true, false = false }",
    );
    let (map, target) = super::build(&db.url, "", &bad);
    let e = check_live(&map, &AnyTarget::Sql(target), 0)
        .await
        .expect_err("impossible conversions pass the live check");
    assert_eq!(e.class, ErrorClass::Permanent, "{e:?}");
    for key in [
        "targets[0].users.key",
        "targets[0].users.columns.hired",
        "targets[0].users.columns.flag_text",
    ] {
        assert!(
            e.message.contains(key),
            "{flavor:?}: {key} not in {}",
            e.message
        );
    }
    assert!(
        e.message.contains("target legacy: typed_users.n is "),
        "{}",
        e.message
    );
    assert!(!e.message.contains("columns.title"), "{}", e.message);
    // The same columns with conversions they take pass.
    let good = typed(
        "login",
        "{ from = \"urn:ietf:params:scim:schemas:extension:ironclad:2.0:User:hireDate\", type = \"timestamp\" }",
        "{ from = \"active\", type = \"flag\", true = \"Y\", false = \"N\" }",
    );
    let (map, target) = super::build(&db.url, "", &good);
    check_live(&map, &AnyTarget::Sql(target), 0)
        .await
        .unwrap_or_else(|e| panic!("{flavor:?}: {e:?}"));
}

#[tokio::test]
async fn postgres_live_column_types_refuse_impossible_conversions() {
    live_types_are_checked(Flavor::Postgres).await;
}

#[tokio::test]
async fn mariadb_live_column_types_refuse_impossible_conversions() {
    live_types_are_checked(Flavor::Mariadb).await;
}

#[tokio::test]
async fn sqlite_live_column_types_refuse_impossible_conversions() {
    live_types_are_checked(Flavor::Sqlite).await;
}

/// An integer conversion of a template with literal text can never convert: refused at load.
#[test]
fn an_integer_conversion_of_literal_text_is_refused_at_load() {
    let text = "name = \"legacy\"\ntype = \"sql\"\nurl = \"sqlite:///x.db\"\n[users]\ntable = \"u\"\nkey_column = \"login\"\nkey = \"userName\"\n[users.columns]\nlevel = { from = \"L{title}\", type = \"integer\" }\nrank = { constant = \"high\", type = \"integer\" }\nemp = { from = \"externalId\", type = \"integer\" }\n";
    let raw: scim_sync::config::target::RawTarget = toml::from_str(text).unwrap();
    let scim_sync::config::target::RawTarget::Sql(s) = &raw else {
        panic!("sql")
    };
    let errs = scim_sync::targets::sql::Settings::from_raw(s, 0).unwrap_err();
    let keys: Vec<&str> = errs.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "targets[0].users.columns.level",
            "targets[0].users.columns.rank"
        ],
        "{errs:?}"
    );
}

/// `/readyz` for a SQL target: a user whose `emp_no` cannot convert becomes a dead letter
/// (`max_attempts = 1`) and the target is failing in the body, naming it; a later success of
/// another user does not make it healthy (before: the other apply overwrote the flag); the
/// status code stays the store's (200). Fixing the user makes it healthy again. The apply
/// error names the target, the table, the column and the config key.
#[tokio::test]
async fn readyz_keeps_a_target_failing_while_it_has_a_dead_letter() {
    let legacy = LegacyDb::new(Flavor::Sqlite);
    let config = format!(
        "[reconcile]\nmax_attempts = 1\n[[targets]]\nname = \"legacy\"\ntype = \"sql\"\nurl = \"{}\"\n[targets.users]\ntable = \"app_users\"\nkey_column = \"login\"\nkey = \"userName\"\n[targets.users.columns]\nemp_no = {{ from = \"externalId\", type = \"integer\" }}\nfirst_name = \"name.givenName\"\n",
        legacy.url
    );
    let t = TestDaemon::start_with(Backend::Sqlite, &config).await;
    let admin = t.d().admin_addr.unwrap();
    let readyz = || async move {
        let r = reqwest::get(format!("http://{admin}/readyz"))
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap();
        (status, body["targets"][0].clone())
    };
    let post = |name: &str, ext: &str| {
        json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": name,
               "externalId": ext, "name": {"givenName": name, "familyName": "X"}})
    };
    let bad = t.post("/Users", &post("bad", "L2")).await;
    assert_eq!(bad.status.as_u16(), 201, "{}", bad.body);
    t.d().run_pending_reconciles().await;
    let (status, target) = readyz().await;
    assert_eq!(status, 200);
    assert_eq!(target["healthy"], false, "{target}");
    assert_eq!(target["dead_letters"], 1, "{target}");
    let dead = t.d().store.dead_letters(Some("legacy")).await.unwrap();
    let error = dead[0].last_error.clone().unwrap_or_default();
    for part in [
        "target legacy",
        "app_users",
        "emp_no",
        "targets[0].users.columns.emp_no",
    ] {
        assert!(error.contains(part), "{part} not in {error}");
    }
    // Another user applies fine: the target stays failing.
    let good = t.post("/Users", &post("good", "7")).await;
    assert_eq!(good.status.as_u16(), 201, "{}", good.body);
    t.d().run_pending_reconciles().await;
    assert!(legacy.has_user("good"));
    let (status, target) = readyz().await;
    assert_eq!(status, 200);
    assert_eq!(target["healthy"], false, "{target}");
    assert_eq!(target["reachable"], true, "{target}");
    // Fixed: the dead letter becomes pending with the change, applies, and the target is healthy.
    let id = bad.body["id"].as_str().unwrap();
    let fixed = t.put(&format!("/Users/{id}"), &post("bad", "8")).await;
    assert!(fixed.status.is_success(), "{}", fixed.body);
    t.d().run_pending_reconciles().await;
    assert_eq!(legacy.user("bad", "emp_no").as_deref(), Some("8"));
    let (_, target) = readyz().await;
    assert_eq!(target["healthy"], true, "{target}");
    assert_eq!(target["dead_letters"], 0, "{target}");
}

/// docs/legacy-sql.md's "A flag and a timestamp together" block, as written (its URL and
/// password replaced by the test database's): deactivation sets `enabled = 'N'` and
/// `disabled_at`; reactivation `'Y'` and NULL.
async fn documented_flag_and_timestamp(flavor: Flavor) {
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/legacy-sql.md"),
    )
    .unwrap();
    let block = doc
        .split("**A flag and a timestamp together.**")
        .nth(1)
        .and_then(|rest| rest.split("```toml\n").nth(1))
        .and_then(|b| b.split("```").next())
        .expect("the documented block")
        .to_owned();
    let legacy = LegacyDb::new(flavor);
    let block = block
        .replace("postgres://scim_sync@127.0.0.1/app", &legacy.url)
        .replace("password_env = \"APP_DB_PASSWORD\"\n", "");
    assert!(block.contains(&legacy.url), "{block}");
    let t = TestDaemon::start_with(Backend::Sqlite, &block).await;
    let r = t
        .post(
            "/Users",
            &json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                    "userName": "ann", "active": true,
                    "name": {"givenName": "Ann", "familyName": "Ng"},
                    "emails": [{"value": "ann@example.com", "primary": true}]}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 201, "{}", r.body);
    let id = r.body["id"].as_str().unwrap().to_owned();
    t.d().run_pending_reconciles().await;
    assert_eq!(legacy.user("ann", "enabled").as_deref(), Some("Y"));
    assert_eq!(legacy.user("ann", "disabled_at"), None);
    for (active, enabled) in [(false, "N"), (true, "Y")] {
        let r = t
            .patch(
                &format!("/Users/{id}"),
                &json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                        "Operations": [{"op": "replace", "path": "active", "value": active}]}),
            )
            .await;
        assert!(r.status.is_success(), "{}", r.body);
        t.d().run_pending_reconciles().await;
        assert_eq!(legacy.user("ann", "enabled").as_deref(), Some(enabled));
        assert_eq!(
            legacy.user("ann", "disabled_at").is_some(),
            !active,
            "{flavor:?} active={active}"
        );
    }
    assert_eq!(t.d().store.dead_letters(None).await.unwrap().len(), 0);
}

#[tokio::test]
async fn the_documented_flag_and_timestamp_deactivation_works_on_postgres() {
    documented_flag_and_timestamp(Flavor::Postgres).await;
}

#[tokio::test]
async fn the_documented_flag_and_timestamp_deactivation_works_on_sqlite() {
    documented_flag_and_timestamp(Flavor::Sqlite).await;
}

/// A database error that names no column ("value too long for type character varying(100)")
/// comes with the statement (placeholders, no values), which names the table and column.
#[tokio::test]
async fn postgres_a_write_error_names_the_statements_table_and_columns() {
    use scim_sync::targets::{Change, Prior, Target};
    let db = LegacyDb::new(Flavor::Postgres);
    let mapping = "[users]\ntable = \"app_users\"\nkey_column = \"login\"\nkey = \"userName\"\n[users.columns]\nfirst_name = \"name.givenName\"\n";
    let (map, target) = super::build(&db.url, "", mapping);
    let mut u = super::user("long");
    u["name"]["givenName"] = json!("x".repeat(150));
    let d = super::desired_user(&map, &u);
    let e = target
        .sync(Change::Upsert(&d), &Prior::default(), false)
        .await
        .expect_err("a 150-character value went into a VARCHAR(100)");
    assert_eq!(e.class, ErrorClass::Permanent, "{e:?}");
    assert!(
        e.message.contains("target legacy") && e.message.contains("\"first_name\""),
        "{}",
        e.message
    );
    assert!(!e.message.contains(&"x".repeat(150)), "{}", e.message);
}

/// A flag written with TOML booleans into a VARCHAR column: PostgreSQL would store the text
/// 'true' (an assignment cast). The first sync runs the live type check itself (no
/// healthcheck ran: a target down at start) and writes nothing.
#[tokio::test]
async fn postgres_a_sync_through_a_column_that_cannot_take_its_value_writes_nothing() {
    use scim_sync::targets::{Change, Prior, Target};
    let db = LegacyDb::new(Flavor::Postgres);
    db.exec("CREATE TABLE flags (login VARCHAR(200) NOT NULL, active_text VARCHAR(10) NULL)");
    let mapping = "[users]\ntable = \"flags\"\nkey_column = \"login\"\nkey = \"userName\"\n[users.columns]\nactive_text = { from = \"active\", type = \"flag\", true = true, false = false }\n";
    let (map, target) = super::build(&db.url, "", mapping);
    let d = super::desired_user(&map, &super::user("tom"));
    for _ in 0..2 {
        let e = target
            .sync(Change::Upsert(&d), &Prior::default(), false)
            .await
            .expect_err("a boolean went into a VARCHAR");
        assert_eq!(e.class, ErrorClass::Permanent, "{e:?}");
        assert!(
            e.message.contains("targets[0].users.columns.active_text"),
            "{}",
            e.message
        );
    }
    assert!(db
        .rows("SELECT login AS v FROM flags WHERE login = ?", "tom")
        .is_empty());
}

/// A membership column of another kind than what it holds is refused by the live check: the
/// integer `app_role_members.user_id` told to hold the text key `app_users.login` (named by
/// `user_column`) or the text `app_users.email` (named by `user_holds`); the surrogate-id
/// mapping as documented passes. On each backend.
async fn membership_holds_are_checked(flavor: Flavor) {
    let db = LegacyDb::new(flavor);
    for (holds, key) in [
        ("login", "targets[0].groups.membership.user_column"),
        ("email", "targets[0].groups.membership.user_holds"),
    ] {
        let bad = super::SURROGATE.replace(
            "user_holds = \"user_id\"",
            &format!("user_holds = \"{holds}\""),
        );
        assert_ne!(bad, super::SURROGATE);
        let (map, target) = super::build(&db.url, "", &bad);
        let e = check_live(&map, &AnyTarget::Sql(target), 0)
            .await
            .expect_err("an integer join column holding text passed");
        assert!(
            e.message.contains(key) && e.message.contains("app_role_members.user_id"),
            "{flavor:?}: {}",
            e.message
        );
    }
    let (map, target) = super::build(&db.url, "", super::SURROGATE);
    check_live(&map, &AnyTarget::Sql(target), 0)
        .await
        .unwrap_or_else(|e| panic!("{flavor:?}: {e:?}"));
}

#[tokio::test]
async fn postgres_membership_holds_are_checked() {
    membership_holds_are_checked(Flavor::Postgres).await;
}

#[tokio::test]
async fn mariadb_membership_holds_are_checked() {
    membership_holds_are_checked(Flavor::Mariadb).await;
}

#[tokio::test]
async fn sqlite_membership_holds_are_checked() {
    membership_holds_are_checked(Flavor::Sqlite).await;
}
