//! Property tests (proptest) over the pure cores: DN escape-then-parse, filter literal
//! escape-then-parse, PATCH add-then-remove identity, and filter evaluation against a small
//! reference evaluator written here from RFC 7644 §3.4.2.2 (issue 14).

use proptest::prelude::*;
use scim_sync::mapping::dn::{dn_eq, normalize_dn, parse_dn, split_rdn};
use scim_sync::scim::filter::{parse_filter, FilterLimits};
use scim_sync::scim::patch::{apply_user_patch, parse_patch};
use scim_sync::scim::resource::parse_user;
use scim_sync::scim::schema::SchemaSet;
use serde_json::{json, Map, Value};

const PATCH_OP: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";
const ENTERPRISE: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";

/// A fixed seed in the normal suite, so a run never fails by luck (a flaky test is a defect);
/// `PROPTEST_SEED=<u64>` explores other inputs (`PROPTEST_CASES` more of them).
fn config() -> ProptestConfig {
    let seed = std::env::var("PROPTEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5c13_5eed);
    ProptestConfig {
        cases: 512,
        failure_persistence: None,
        rng_seed: proptest::test_runner::RngSeed::Fixed(seed),
        ..ProptestConfig::default()
    }
}

/// Strings with every DN and filter metacharacter well represented.
fn tricky_string() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[ ,+\"\\\\<>;=#*()a\u{e9}\u{0}\u{1F600}]{1,12}",
    ]
}

proptest! {
    #![proptest_config(config())]

    /// `dn_escape` then `parse_dn` gives the value back, for any non-empty value, and the DN
    /// splits at the escaped RDN and equals itself under normalisation.
    #[test]
    fn dn_escape_then_parse_round_trips(value in tricky_string().prop_filter("non-empty", |s| !s.is_empty())) {
        let escaped = ldap3::dn_escape(value.as_str());
        let dn = format!("uid={escaped},ou=People,dc=example,dc=com");
        let rdns = parse_dn(&dn).map_err(|e| TestCaseError::fail(format!("{dn:?}: {e}")))?;
        prop_assert_eq!(rdns.len(), 4);
        prop_assert_eq!(&rdns[0], &vec![("uid".to_string(), value.clone())]);
        let (rdn, parent) = split_rdn(&dn);
        prop_assert_eq!(rdn, format!("uid={escaped}"));
        prop_assert_eq!(parent, "ou=People,dc=example,dc=com");
        prop_assert!(dn_eq(&dn, &dn));
        let normal = normalize_dn(&dn);
        prop_assert_eq!(normalize_dn(&normal), normal.clone(), "normal form is stable");
    }

    /// A value written as a filter string literal (a JSON string, RFC 7644 §3.4.2.2) parses to a
    /// filter that matches a resource holding exactly that value and nothing else.
    #[test]
    fn filter_literal_escape_then_parse_round_trips(value in tricky_string(), other in tricky_string()) {
        let literal = serde_json::to_string(&value).unwrap();
        let text = format!("userName eq {literal}");
        prop_assume!(text.len() <= FilterLimits::default().max_len);
        let f = parse_filter(&text, FilterLimits::default())
            .map_err(|e| TestCaseError::fail(format!("{text:?}: {e}")))?;
        let holding = json!({"userName": value});
        prop_assert!(f.matches(&holding));
        prop_assert_eq!(f.matches(&json!({"userName": other})), other.to_lowercase() == value.to_lowercase());
        prop_assert_eq!(f.equality_lookups(), vec![("username".to_string(), value.clone())]);
        // The same literal inside a value path.
        let text = format!("emails[value eq {literal}]");
        let f = parse_filter(&text, FilterLimits::default())
            .map_err(|e| TestCaseError::fail(format!("{text:?}: {e}")))?;
        let holding = json!({"emails": [{"value": "x@y"}, {"value": value}]});
        prop_assert!(f.matches(&holding));
    }

    /// Adding a value (not already present, not primary) to a multi-valued attribute, or an
    /// absent simple or extension attribute, then removing it gives the user back unchanged.
    #[test]
    fn patch_add_then_remove_is_the_identity(
        existing in prop::collection::btree_set("[a-d]{1,3}@x", 0..4),
        attr in prop::sample::select(vec!["emails", "phoneNumbers", "ims", "photos", "roles", "entitlements", "x509Certificates"]),
        value in "[a-dA-D0-9@._+-]{1,10}",
        kind in prop::sample::select(vec!["work", "home", "other"]),
        simple in prop::sample::select(vec!["nickName", "title", "profileUrl", "userType", "locale"]),
        department in "[a-zA-Z ]{1,10}",
    ) {
        let lower: Vec<String> = existing.iter().map(|e| e.to_lowercase()).collect();
        prop_assume!(!lower.contains(&value.to_lowercase()));
        let emails: Vec<Value> = existing.iter().enumerate()
            .map(|(i, e)| json!({"value": e, "type": "work", "primary": i == 0}))
            .collect();
        let mut body = json!({"userName": "bob@x", "active": true, ENTERPRISE: {"employeeNumber": "7"}});
        if !emails.is_empty() {
            body["emails"] = Value::Array(emails);
        }
        let base = parse_user(body, &SchemaSet::default()).unwrap().data;
        let literal = serde_json::to_string(&value).unwrap();
        let ops = [
            (json!({"op": "add", "path": attr, "value": [{"value": value, "type": kind}]}),
             json!({"op": "remove", "path": format!("{attr}[value eq {literal}]")})),
            (json!({"op": "add", "path": simple, "value": value}),
             json!({"op": "remove", "path": simple})),
            (json!({"op": "add", "path": format!("{ENTERPRISE}:department"), "value": department}),
             json!({"op": "remove", "path": format!("{ENTERPRISE}:department")})),
            // Path-less add of an object, then remove.
            (json!({"op": "add", "value": {simple: value}}),
             json!({"op": "remove", "path": simple})),
        ];
        for (add, remove) in ops {
            let mut data: Map<String, Value> = base.clone();
            let parsed = parse_patch(json!({"schemas": [PATCH_OP], "Operations": [add.clone()]}), 10).unwrap();
            apply_user_patch(&mut data, &parsed, &SchemaSet::default())
                .map_err(|e| TestCaseError::fail(format!("{add}: {e}")))?;
            prop_assert_ne!(&data, &base, "{} changed nothing", add);
            let parsed = parse_patch(json!({"schemas": [PATCH_OP], "Operations": [remove.clone()]}), 10).unwrap();
            apply_user_patch(&mut data, &parsed, &SchemaSet::default())
                .map_err(|e| TestCaseError::fail(format!("{remove}: {e}")))?;
            prop_assert_eq!(&data, &base, "{} then {}", add, remove);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Filter evaluation against a reference evaluator.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Email {
    value: String,
    kind: Option<String>,
}

#[derive(Debug, Clone)]
struct User {
    user_name: Option<String>,
    title: Option<String>,
    active: Option<bool>,
    emails: Vec<Email>,
}

impl User {
    fn render(&self) -> Value {
        let mut v = json!({});
        if let Some(u) = &self.user_name {
            v["userName"] = json!(u);
        }
        if let Some(t) = &self.title {
            v["title"] = json!(t);
        }
        if let Some(a) = self.active {
            v["active"] = json!(a);
        }
        if !self.emails.is_empty() {
            v["emails"] = self
                .emails
                .iter()
                .map(|e| match &e.kind {
                    Some(k) => json!({"value": e.value, "type": k}),
                    None => json!({"value": e.value}),
                })
                .collect();
        }
        v
    }
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Eq,
    Ne,
    Co,
    Sw,
    Ew,
    Gt,
    Ge,
    Lt,
    Le,
}

impl Op {
    fn word(self) -> &'static str {
        match self {
            Op::Eq => "eq",
            Op::Ne => "ne",
            Op::Co => "co",
            Op::Sw => "sw",
            Op::Ew => "ew",
            Op::Gt => "gt",
            Op::Ge => "ge",
            Op::Lt => "lt",
            Op::Le => "le",
        }
    }
    /// One value against the literal, both case-folded (all attributes here are caseExact
    /// false, RFC 7643 §4.1).
    fn holds(self, v: &str, lit: &str) -> bool {
        let (v, lit) = (v.to_lowercase(), lit.to_lowercase());
        match self {
            Op::Eq => v == lit,
            Op::Ne => v != lit,
            Op::Co => v.contains(&lit),
            Op::Sw => v.starts_with(&lit),
            Op::Ew => v.ends_with(&lit),
            Op::Gt => v > lit,
            Op::Ge => v >= lit,
            Op::Lt => v < lit,
            Op::Le => v <= lit,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Attr {
    UserName,
    Title,
    EmailsValue,
    EmailsType,
}

/// Attributes inside `emails[...]`.
#[derive(Debug, Clone, Copy)]
enum Sub {
    Value,
    Type,
}

#[derive(Debug, Clone)]
enum F {
    Cmp(Attr, Op, String),
    Pr(Attr),
    Active(bool),
    And(Box<F>, Box<F>),
    Or(Box<F>, Box<F>),
    Not(Box<F>),
    Emails(Box<G>),
}

/// A value filter over one email.
#[derive(Debug, Clone)]
enum G {
    Cmp(Sub, Op, String),
    Pr(Sub),
    And(Box<G>, Box<G>),
    Or(Box<G>, Box<G>),
    Not(Box<G>),
}

fn attr_name(a: Attr) -> &'static str {
    match a {
        Attr::UserName => "userName",
        Attr::Title => "title",
        Attr::EmailsValue => "emails.value",
        Attr::EmailsType => "emails.type",
    }
}

fn render_f(f: &F) -> String {
    match f {
        F::Cmp(a, op, lit) => format!("{} {} {}", attr_name(*a), op.word(), json!(lit)),
        F::Pr(a) => format!("{} pr", attr_name(*a)),
        F::Active(b) => format!("active eq {b}"),
        F::And(a, b) => format!("({} and {})", render_f(a), render_f(b)),
        F::Or(a, b) => format!("({} or {})", render_f(a), render_f(b)),
        F::Not(a) => format!("not ({})", render_f(a)),
        F::Emails(g) => format!("emails[{}]", render_g(g)),
    }
}

fn render_g(g: &G) -> String {
    let sub = |s: &Sub| match s {
        Sub::Value => "value",
        Sub::Type => "type",
    };
    match g {
        G::Cmp(s, op, lit) => format!("{} {} {}", sub(s), op.word(), json!(lit)),
        G::Pr(s) => format!("{} pr", sub(s)),
        G::And(a, b) => format!("({} and {})", render_g(a), render_g(b)),
        G::Or(a, b) => format!("({} or {})", render_g(a), render_g(b)),
        G::Not(a) => format!("not ({})", render_g(a)),
    }
}

/// The values an attribute holds (multi-valued flattened; absent: none).
fn values(u: &User, a: Attr) -> Vec<String> {
    match a {
        Attr::UserName => u.user_name.iter().cloned().collect(),
        Attr::Title => u.title.iter().cloned().collect(),
        Attr::EmailsValue => u.emails.iter().map(|e| e.value.clone()).collect(),
        Attr::EmailsType => u.emails.iter().filter_map(|e| e.kind.clone()).collect(),
    }
}

/// RFC 7644 §3.4.2.2 over several values: a comparison holds when any value satisfies it;
/// `ne` holds when no value equals the literal (so also when the attribute is absent); `pr`
/// needs a non-empty value.
fn compare(vals: &[String], op: Op, lit: &str) -> bool {
    match op {
        Op::Ne => !vals.iter().any(|v| Op::Eq.holds(v, lit)),
        _ => vals.iter().any(|v| op.holds(v, lit)),
    }
}

fn eval_f(f: &F, u: &User) -> bool {
    match f {
        F::Cmp(a, op, lit) => compare(&values(u, *a), *op, lit),
        F::Pr(a) => values(u, *a).iter().any(|v| !v.is_empty()),
        F::Active(b) => u.active == Some(*b),
        F::And(a, b) => eval_f(a, u) && eval_f(b, u),
        F::Or(a, b) => eval_f(a, u) || eval_f(b, u),
        F::Not(a) => !eval_f(a, u),
        F::Emails(g) => u.emails.iter().any(|e| eval_g(g, e)),
    }
}

fn eval_g(g: &G, e: &Email) -> bool {
    let vals = |s: &Sub| -> Vec<String> {
        match s {
            Sub::Value => vec![e.value.clone()],
            Sub::Type => e.kind.iter().cloned().collect(),
        }
    };
    match g {
        G::Cmp(s, op, lit) => compare(&vals(s), *op, lit),
        G::Pr(s) => vals(s).iter().any(|v| !v.is_empty()),
        G::And(a, b) => eval_g(a, e) && eval_g(b, e),
        G::Or(a, b) => eval_g(a, e) || eval_g(b, e),
        G::Not(a) => !eval_g(a, e),
    }
}

/// A small alphabet, so that values and literals often meet (and differ only in case).
fn word() -> impl Strategy<Value = String> {
    "[aAbB]{0,3}"
}

fn op() -> impl Strategy<Value = Op> {
    prop::sample::select(vec![
        Op::Eq,
        Op::Ne,
        Op::Co,
        Op::Sw,
        Op::Ew,
        Op::Gt,
        Op::Ge,
        Op::Lt,
        Op::Le,
    ])
}

fn filter_g() -> impl Strategy<Value = G> {
    let sub = prop::sample::select(vec![Sub::Value, Sub::Type]);
    let leaf = prop_oneof![
        (sub.clone(), op(), word()).prop_map(|(s, o, w)| G::Cmp(s, o, w)),
        sub.prop_map(G::Pr),
    ];
    leaf.prop_recursive(3, 12, 2, |inner| {
        prop_oneof![
            (inner.clone(), inner.clone()).prop_map(|(a, b)| G::And(Box::new(a), Box::new(b))),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| G::Or(Box::new(a), Box::new(b))),
            inner.prop_map(|a| G::Not(Box::new(a))),
        ]
    })
}

fn filter_f() -> impl Strategy<Value = F> {
    let attr = prop::sample::select(vec![
        Attr::UserName,
        Attr::Title,
        Attr::EmailsValue,
        Attr::EmailsType,
    ]);
    let leaf = prop_oneof![
        (attr.clone(), op(), word()).prop_map(|(a, o, w)| F::Cmp(a, o, w)),
        attr.prop_map(F::Pr),
        any::<bool>().prop_map(F::Active),
        filter_g().prop_map(|g| F::Emails(Box::new(g))),
    ];
    leaf.prop_recursive(4, 24, 2, |inner| {
        prop_oneof![
            (inner.clone(), inner.clone()).prop_map(|(a, b)| F::And(Box::new(a), Box::new(b))),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| F::Or(Box::new(a), Box::new(b))),
            inner.prop_map(|a| F::Not(Box::new(a))),
        ]
    })
}

fn user_strategy() -> impl Strategy<Value = User> {
    let email = (word(), prop::option::of(word())).prop_map(|(value, kind)| Email { value, kind });
    (
        prop::option::of(word()),
        prop::option::of(word()),
        prop::option::of(any::<bool>()),
        prop::collection::vec(email, 0..3),
    )
        .prop_map(|(user_name, title, active, emails)| User {
            user_name,
            title,
            active,
            emails,
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..config() })]

    /// `Filter::matches` agrees with the reference evaluator on random filters and users.
    #[test]
    fn filter_evaluation_agrees_with_a_reference_evaluator(f in filter_f(), users in prop::collection::vec(user_strategy(), 1..6)) {
        let text = render_f(&f);
        let parsed = parse_filter(&text, FilterLimits::default())
            .map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
        for u in &users {
            let resource = u.render();
            prop_assert_eq!(parsed.matches(&resource), eval_f(&f, u), "{} on {}", text, resource);
        }
    }
}
