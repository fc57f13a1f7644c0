//! Criterion micro-benchmarks of the pure code, through the library's public API:
//! `cargo bench --bench micro` (`-- filter` for one group, `-- --quick` for a short run).
//!
//! Groups (docs/benchmarks.md, "cargo bench --bench micro", says what each one measures):
//! - `filter`: parsing a SCIM filter, and evaluating it against a typical Okta user;
//! - `patch`: parsing and applying PATCH bodies (Okta, Entra, group member adds);
//! - `render`: a stored user or group -> its SCIM representation -> the demo config's LDAP
//!   entry (`etc/scim-sync.toml`);
//! - `plan`: the diff of a rendered entry against the current one, and the pure plan.
//!
//! No external service. Every benchmark checks its result once before it is measured (parsed,
//! matched, changed the attribute...), so none can measure a no-op; timings are never
//! asserted.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use scim_sync::config::target::{OnExisting, RefBy};
use scim_sync::mapping::{diff, CompiledTarget, Entry, Mod, Schemas};
use scim_sync::scim::filter::{fold, parse_filter, Filter, FilterLimits};
use scim_sync::scim::patch::{apply_group_patch, apply_user_patch, parse_patch, MemberOp};
use scim_sync::scim::resource::{
    parse_group, parse_user, render_group, render_user, MemberRef, Meta, ResourceType,
};
use scim_sync::scim::schema::SchemaSet;
use scim_sync::targets::plan::{unrecorded_entry, Found};
use serde_json::{json, Map, Value};
use std::hint::black_box;

const USER: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
const GROUP: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
const ENTERPRISE: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
const IRONCLAD: &str = "urn:ietf:params:scim:schemas:extension:ironclad:2.0:User";
const PATCH_OP: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";
/// The demo config (the one `scripts/demo` and `scripts/bench` run).
const DEMO_CONFIG: &str = include_str!("../etc/scim-sync.toml");
const USER_ID: &str = "7f1c2a44-5b9e-4c1d-9a57-0e8a3b2c6d10";
const MANAGER_ID: &str = "0b6e9d2f-3c41-4e8a-b7a5-92f1c0d4e6a3";
const MANAGER_DN: &str = "uid=carol.manager@example.com,ou=People,dc=example,dc=com";
const GROUP_ID: &str = "c3a9e1b0-6d24-4f7e-8b15-2a9d0c7e4f61";
const META: Meta = Meta {
    created_ms: 1_764_547_200_000,
    last_modified_ms: 1_764_633_600_000,
    version: 3,
};

/// The demo config's `[scim]` schemas and its one LDAP target, compiled as the daemon does.
struct Demo {
    schemas: SchemaSet,
    target: CompiledTarget,
}

fn demo() -> Demo {
    let raw = scim_sync::config::load::parse("etc/scim-sync.toml", DEMO_CONFIG, &[])
        .expect("the demo config parses");
    let schemas = scim_sync::daemon::settings::schema_set(&raw.scim);
    let target = CompiledTarget::compile_with(&raw.targets[0], 0, &Schemas::from_set(&schemas))
        .expect("the demo target compiles");
    Demo { schemas, target }
}

/// What Okta sends on create: core, enterprise (department, manager) and the demo's
/// `ironclad` extension.
fn okta_body() -> Value {
    json!({
        "schemas": [USER, ENTERPRISE, IRONCLAD],
        "userName": "alice.example@example.com",
        "name": {"givenName": "Alice", "familyName": "Example"},
        "emails": [{"primary": true, "value": "alice.example@example.com", "type": "work"}],
        "displayName": "Alice Example",
        "locale": "en-US",
        "externalId": "00u1a2b3c4d5e6f7g8h9",
        "title": "Engineer",
        "groups": [],
        "active": true,
        ENTERPRISE: {
            "department": "Engineering",
            "employeeNumber": "10042",
            "manager": {"value": MANAGER_ID, "displayName": "Carol Manager"}
        },
        IRONCLAD: {"managementLevel": "IC"},
    })
}

/// The user as the store holds it (`parse_user`'s canonical data).
fn stored_user(demo: &Demo) -> Map<String, Value> {
    parse_user(okta_body(), &demo.schemas)
        .expect("the Okta user is valid")
        .data
}

/// The user as GET returns it and the mapping reads it (`active` set, as the reconciler does).
fn user_json(data: &Map<String, Value>) -> Value {
    let mut json = render_user(USER_ID, data, &META, None, "");
    if let Some(o) = json.as_object_mut() {
        o.insert("active".into(), Value::Bool(true));
    }
    json
}

fn user_id(i: usize) -> String {
    format!("00000000-0000-4000-8000-{i:012}")
}

fn member_dn(i: usize) -> String {
    format!("uid=member{i}@example.com,ou=People,dc=example,dc=com")
}

fn bench_filter(c: &mut Criterion) {
    let demo = demo();
    let user = user_json(&stored_user(&demo));
    let limits = FilterLimits::default();
    let cases = [
        ("okta_lookup", r#"userName eq "alice.example@example.com""#),
        (
            "compound",
            r#"(userName eq "bob@example.com" or externalId eq "00u1a2b3c4d5e6f7g8h9") and emails[type eq "work" and value co "@example.com"] and active eq true"#,
        ),
    ];
    let mut g = c.benchmark_group("filter");
    for (name, text) in cases {
        let filter = parse_filter(text, limits).expect("the filter parses");
        assert!(filter.matches(&user), "{name} must match the Okta user");
        if name == "compound" {
            assert!(matches!(filter, Filter::And(..)), "compound is an `and`");
        }
        g.bench_function(format!("parse/{name}"), |b| {
            b.iter(|| parse_filter(black_box(text), limits))
        });
        g.bench_function(format!("match/{name}"), |b| {
            b.iter(|| black_box(&filter).matches(black_box(&user)))
        });
    }
    // The case fold a case-insensitive comparison applies to both sides (NFC, lower case,
    // NFC), for reading the `match` figures.
    let name = "Alice.Example@Example.com";
    assert_eq!(fold(name), "alice.example@example.com");
    g.bench_function("fold/user_name", |b| b.iter(|| fold(black_box(name))));
    g.finish();
}

/// One user PATCH body: parsed and applied to a copy of the stored user (the copy is made
/// outside the measurement); `check` sees the patched data once.
fn bench_user_patch(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    body: &Value,
    data: &Map<String, Value>,
    schemas: &SchemaSet,
    check: impl Fn(&Map<String, Value>),
) {
    let ops = parse_patch(body.clone(), 1000).expect("the PATCH parses");
    let mut once = data.clone();
    apply_user_patch(&mut once, &ops, schemas).expect("the PATCH applies");
    assert_ne!(&once, data, "{name} must change the user");
    check(&once);
    g.bench_function(name, |b| {
        b.iter_batched(
            || (body.clone(), data.clone()),
            |(body, mut data)| {
                let ops = parse_patch(body, 1000)?;
                apply_user_patch(&mut data, &ops, schemas)?;
                Ok::<_, scim_sync::scim::ScimError>(data)
            },
            BatchSize::SmallInput,
        )
    });
}

fn bench_patch(c: &mut Criterion) {
    let demo = demo();
    let data = stored_user(&demo);
    let mut g = c.benchmark_group("patch");

    // Okta: a path-less replace with a value object (it repeats `id`).
    let okta = json!({
        "schemas": [PATCH_OP],
        "Operations": [{
            "op": "replace",
            "value": {
                "id": USER_ID,
                "title": "Staff Engineer",
                "displayName": "Alice Q. Example",
                "active": true,
                "name": {"givenName": "Alice", "familyName": "Example-Smith"}
            }
        }]
    });
    bench_user_patch(&mut g, "okta_replace", &okta, &data, &demo.schemas, |d| {
        assert_eq!(d["title"], "Staff Engineer");
        assert_eq!(d["name"]["familyName"], "Example-Smith");
    });

    // Entra: one operation per attribute, with paths (capitalised op names, "False" strings,
    // a value-filter path, an enterprise URN path).
    let entra = json!({
        "schemas": [PATCH_OP],
        "Operations": [
            {"op": "Replace", "path": "displayName", "value": "Alice Q. Example"},
            {"op": "Replace", "path": "name.familyName", "value": "Example-Smith"},
            {"op": "Replace", "path": "emails[type eq \"work\"].value",
             "value": "alice.smith@example.com"},
            {"op": "Add", "path": format!("{ENTERPRISE}:department"), "value": "Platform"},
            {"op": "Replace", "path": "title", "value": "Staff Engineer"},
            {"op": "Replace", "path": "active", "value": "False"}
        ]
    });
    bench_user_patch(
        &mut g,
        "entra_path_ops",
        &entra,
        &data,
        &demo.schemas,
        |d| {
            assert_eq!(d["emails"][0]["value"], "alice.smith@example.com");
            assert_eq!(d[ENTERPRISE]["department"], "Platform");
            assert_eq!(d["active"], false);
        },
    );

    // A group member add (Okta's group push) of 1 and of 1,000 values.
    let group = parse_group(
        json!({"schemas": [GROUP], "displayName": "Engineering"}),
        &demo.schemas,
    )
    .expect("the group is valid")
    .data;
    for n in [1usize, 1000] {
        let value: Vec<Value> = (0..n)
            .map(|i| json!({"value": user_id(i), "display": format!("member{i}@example.com")}))
            .collect();
        let body = json!({
            "schemas": [PATCH_OP],
            "Operations": [{"op": "add", "path": "members", "value": value}]
        });
        let ops = parse_patch(body.clone(), 1000).expect("the PATCH parses");
        let out = apply_group_patch(&mut group.clone(), &ops).expect("the PATCH applies");
        assert!(
            matches!(out.as_slice(), [MemberOp::Add(m)] if m.len() == n),
            "one add of {n} members"
        );
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(format!("group_add_members/{n}"), |b| {
            b.iter_batched(
                || (body.clone(), group.clone()),
                |(body, mut data)| {
                    let ops = parse_patch(body, 1000)?;
                    apply_group_patch(&mut data, &ops)
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

fn bench_render(c: &mut Criterion) {
    let demo = demo();
    let t = &demo.target;
    let data = stored_user(&demo);
    let refs = |by: RefBy, v: &str| (by == RefBy::Id && v == MANAGER_ID).then(|| MANAGER_DN.into());
    let mut g = c.benchmark_group("render");

    let entry = t
        .render_user(&user_json(&data), &refs)
        .expect("the user renders");
    assert_eq!(
        entry.key,
        "uid=alice.example@example.com,ou=People,dc=example,dc=com"
    );
    assert_eq!(entry.attrs["cn"], ["Alice Example"]);
    assert_eq!(entry.attrs["departmentnumber"], ["Engineering"]);
    assert_eq!(entry.attrs["employeetype"], ["IC"]);
    assert_eq!(entry.attrs["manager"], [MANAGER_DN]);
    // The stored user -> its SCIM representation -> the LDAP entry (what an apply renders).
    g.bench_function("user", |b| {
        b.iter(|| t.render_user(&user_json(black_box(&data)), &refs))
    });
    // The mapping alone, on the SCIM representation.
    let json = user_json(&data);
    g.bench_function("user_mapping_only", |b| {
        b.iter(|| t.render_user(black_box(&json), &refs))
    });

    // A group with 1,000 members, as the whole-membership path renders it: the SCIM
    // representation with its members, the entry, and each member's value (its DN).
    let n = 1000;
    let gdata = parse_group(
        json!({"schemas": [GROUP], "displayName": "Engineering"}),
        &demo.schemas,
    )
    .expect("the group is valid")
    .data;
    let members: Vec<MemberRef> = (0..n)
        .map(|i| MemberRef {
            value: user_id(i),
            display: Some(format!("member{i}@example.com")),
            kind: Some(ResourceType::User),
        })
        .collect();
    let keys: Vec<String> = (0..n).map(member_dn).collect();
    let render_one = |gdata: &Map<String, Value>| {
        let json = render_group(GROUP_ID, gdata, &META, Some(&members), "");
        let entry = t.render_group(&json)?;
        let values: Vec<String> = keys.iter().filter_map(|k| t.member_key(k, None)).collect();
        Ok::<_, scim_sync::mapping::MapError>((entry, values))
    };
    let (entry, values) = render_one(&gdata).expect("the group renders");
    assert_eq!(entry.key, "cn=Engineering,ou=Groups,dc=example,dc=com");
    assert_eq!(values.len(), n);
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function("group_1000_members", |b| {
        b.iter(|| render_one(black_box(&gdata)))
    });
    g.finish();
}

fn bench_plan(c: &mut Criterion) {
    let demo = demo();
    let t = &demo.target;
    let refs = |_: RefBy, _: &str| Some(MANAGER_DN.to_owned());
    let desired = t
        .render_user(&user_json(&stored_user(&demo)), &refs)
        .expect("the user renders");
    // The entry as the directory has it: one attribute changed (a one-attribute PUT), and
    // attributes the mapping does not own (they must never appear in the diff).
    let mut current: Entry = desired.clone();
    current
        .attrs
        .insert("title".into(), vec!["Engineer I".into()]);
    current
        .attrs
        .insert("telephonenumber".into(), vec!["+1 555 0100".into()]);
    assert_eq!(
        diff(&desired, &current),
        [Mod::Replace("title".into(), vec!["Engineer".into()])]
    );
    let mut same = desired.clone();
    same.attrs
        .insert("telephonenumber".into(), vec!["+1 555 0100".into()]);
    assert!(diff(&desired, &same).is_empty());

    let mut g = c.benchmark_group("plan");
    g.bench_function("diff_user/one_change", |b| {
        b.iter(|| diff(black_box(&desired), black_box(&current)))
    });
    g.bench_function("diff_user/unchanged", |b| {
        b.iter(|| diff(black_box(&desired), black_box(&same)))
    });

    let cases = [
        (false, false, OnExisting::Conflict, Found::Create),
        (true, true, OnExisting::Conflict, Found::Resume),
        (true, false, OnExisting::Adopt, Found::Adopt),
        (true, false, OnExisting::Conflict, Found::Refuse),
    ];
    for (exists, ours, policy, want) in cases {
        assert_eq!(unrecorded_entry(exists, ours, policy), want);
    }
    g.bench_function("unrecorded_entry/4_cases", |b| {
        b.iter(|| {
            black_box(&cases)
                .iter()
                .map(|&(e, o, p, _)| unrecorded_entry(e, o, p))
                .fold(0u32, |n, f| n + u32::from(f == Found::Create))
        })
    });
    g.finish();
}

criterion_group!(micro, bench_filter, bench_patch, bench_render, bench_plan);
criterion_main!(micro);
