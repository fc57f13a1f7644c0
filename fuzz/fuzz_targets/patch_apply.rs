//! PATCH parser and applier on a user and a group: any JSON body parses and applies, or is a
//! 400 with a scimType; a failed user patch leaves no panic behind and a successful one still
//! validates as a user or is refused with a 400.
#![no_main]

use libfuzzer_sys::fuzz_target;
use scim_sync::scim::patch::{apply_group_patch, apply_user_patch, parse_patch};
use scim_sync::scim::resource::{parse_user, check_value_sizes};
use scim_sync::scim::schema::SchemaSet;
use serde_json::{json, Map, Value};

fuzz_target!(|data: &[u8]| {
    let Ok(body) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let _ = check_value_sizes("", &body, 8192);
    let ops = match parse_patch(body, 100) {
        Ok(ops) => ops,
        Err(e) => {
            assert_eq!(e.status, 400);
            assert!(e.scim_type.is_some());
            return;
        }
    };
    let schemas = SchemaSet::default();
    let base = json!({"userName": "bob@x", "active": true, "name": {"givenName": "Bob"},
        "emails": [{"value": "bob@x", "type": "work", "primary": true}],
        "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {"employeeNumber": "1"}});
    let Ok(user) = parse_user(base, &schemas) else {
        return;
    };
    let mut data = user.data;
    match apply_user_patch(&mut data, &ops, &schemas) {
        Ok(_) => {
            if let Err(e) = parse_user(Value::Object(data), &schemas) {
                assert_eq!(e.status, 400);
            }
        }
        Err(e) => assert_eq!(e.status, 400, "{e}"),
    }
    let mut group = Map::new();
    group.insert("displayName".into(), json!("G"));
    if let Err(e) = apply_group_patch(&mut group, &ops) {
        assert_eq!(e.status, 400, "{e}");
    }
});
