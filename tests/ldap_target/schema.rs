//! Issue 13 item 3 against a real slapd: the live check a reload and `check-config --connect`
//! run (`targets::check_live`) refuses an object class or attribute the directory's schema
//! (its subschema subentry) does not define, naming each with its config key; the same
//! mapping spelt right passes.

use super::{build, USERS};
use crate::harness::slapd::Slapd;
use scim_sync::targets::{check_live, AnyTarget, ErrorClass};

#[tokio::test]
async fn the_live_check_refuses_object_classes_and_attributes_the_schema_lacks() {
    let slapd = Slapd::start().await;
    let bad = USERS
        .replace("\"inetOrgPerson\"]", "\"inetOrgPersn\"]")
        .replace(
            "givenName = \"name.givenName\"",
            "givenNme = \"name.givenName\"",
        );
    assert_ne!(bad, USERS);
    let (map, target) = build(&slapd, "", &bad, "");
    let e = check_live(&map, &AnyTarget::Ldap(target), 0)
        .await
        .expect_err("unknown schema names pass the live check");
    assert_eq!(e.class, ErrorClass::Permanent, "{e:?}");
    for part in [
        "object class `inetOrgPersn` (targets[0].users.object_classes)",
        "attribute `givennme` (targets[0].users.attributes.givennme)",
    ] {
        assert!(e.message.contains(part), "{part} not in {}", e.message);
    }
    assert!(!e.message.contains("`sn`"), "{}", e.message);
    let (map, target) = build(&slapd, "", USERS, "");
    check_live(&map, &AnyTarget::Ldap(target), 0)
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
}
