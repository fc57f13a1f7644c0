//! Golden mapping cases: every `tests/mapping/<case>/` holds `map.toml` (one target),
//! `user.json` (the SCIM user as GET renders it), optionally `refs.json` (id -> DN of
//! referenced users) and `expected.ldif` (the rendered entry; empty attributes omitted).
//! Pure: no LDAP server involved.

use scim_sync::config::target::RawTarget;
use scim_sync::mapping::{CompiledTarget, Entry, Schemas};
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;

fn to_ldif(e: &Entry) -> String {
    let mut out = format!("dn: {}\n", e.key);
    for oc in &e.object_classes {
        out.push_str(&format!("objectClass: {oc}\n"));
    }
    for (k, vs) in &e.attrs {
        for v in vs {
            out.push_str(&format!("{k}: {v}\n"));
        }
    }
    out
}

#[test]
fn mapping_golden_cases() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mapping");
    let mut cases: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|d| d.unwrap().path())
        .collect();
    cases.sort();
    assert!(
        cases.len() >= 3,
        "golden cases missing in {}",
        root.display()
    );
    let mut failures = Vec::new();
    for case in &cases {
        let raw: RawTarget =
            toml::from_str(&std::fs::read_to_string(case.join("map.toml")).unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", case.display()));
        // The cases map the ironclad extension, declared as `[scim] user_extensions` would.
        let schemas =
            Schemas::new(&["urn:ietf:params:scim:schemas:extension:ironclad:2.0:User".to_owned()]);
        let map = CompiledTarget::compile_with(&raw, 0, &schemas)
            .unwrap_or_else(|e| panic!("{}: {e:?}", case.display()));
        let user: Value =
            serde_json::from_str(&std::fs::read_to_string(case.join("user.json")).unwrap())
                .unwrap();
        let refs: HashMap<String, String> = std::fs::read_to_string(case.join("refs.json"))
            .map(|t| serde_json::from_str(&t).unwrap())
            .unwrap_or_default();
        let entry = map
            .render_user(&user, &|_, v| refs.get(v).cloned())
            .unwrap();
        let got = to_ldif(&entry);
        let want = std::fs::read_to_string(case.join("expected.ldif")).unwrap();
        if got != want {
            failures.push(format!(
                "{}:\n--- expected\n{want}--- got\n{got}",
                case.display()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
