//! DN builder: a user whose `userName` is any string renders to a DN that parses back with
//! that value as its RDN value (every metacharacter escaped), or is refused; never a DN that
//! names another entry.
#![no_main]

use libfuzzer_sys::fuzz_target;
use scim_sync::config::target::RawTarget;
use scim_sync::mapping::dn::parse_dn;
use scim_sync::mapping::CompiledTarget;
use std::sync::OnceLock;

fn target() -> &'static CompiledTarget {
    static T: OnceLock<CompiledTarget> = OnceLock::new();
    T.get_or_init(|| {
        let raw: RawTarget = toml::from_str(
            "name = \"corp\"\ntype = \"ldap\"\nurl = \"ldap://127.0.0.1\"\n[users]\ndn = \"uid={userName},ou=People,dc=example,dc=com\"\nobject_classes = [\"inetOrgPerson\"]\n[users.attributes]\ncn = \"name.givenName\"\n",
        )
        .expect("fuzz target config");
        CompiledTarget::compile(&raw, 0).expect("fuzz target compiles")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(name) = std::str::from_utf8(data) else {
        return;
    };
    let user = serde_json::json!({"userName": name, "name": {"givenName": name}});
    let Ok(entry) = target().render_user(&user, &|_, _| None) else {
        return;
    };
    if name.is_empty() {
        return;
    }
    let rdns = parse_dn(&entry.key).unwrap_or_else(|e| panic!("{:?}: {e}", entry.key));
    assert_eq!(rdns.len(), 4, "{:?}", entry.key);
    assert_eq!(rdns[0], vec![("uid".to_string(), name.to_string())], "{:?}", entry.key);
});
