//! Tidy checks on the source tree (as rust-analyzer's `xtask/src/tidy.rs`): the pure modules
//! stay pure, targets stay apart from SCIM and the store, every file has a `//!` header, and
//! no code builds DNs or LDAP filters outside the mapping's escaping helpers.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "rs") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Code lines only (comments dropped), so docs may mention what code must not use.
fn code(text: &str) -> String {
    text.lines()
        .filter(|l| {
            let t = l.trim_start();
            !(t.starts_with("//") || t.starts_with("///") || t.starts_with("//!"))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn pure_modules_do_no_io() {
    let forbidden = [
        "tokio",
        "diesel",
        "hyper",
        "crate::store",
        "std::fs",
        "std::net",
        "reqwest",
        "crate::targets",
    ];
    for dir in ["scim", "mapping"] {
        for file in rust_files(&src().join(dir)) {
            let text = code(&std::fs::read_to_string(&file).unwrap());
            for word in forbidden {
                assert!(
                    !text.contains(word),
                    "{} uses `{word}`: {dir}/ must stay pure",
                    file.display()
                );
            }
            for line in text.lines().filter(|l| l.contains("ldap3::")) {
                assert!(
                    line.contains("dn_escape") || line.contains("ldap_escape"),
                    "{}: only ldap3's escaping helpers are allowed in {dir}/: {line}",
                    file.display()
                );
            }
        }
    }
    for file in rust_files(&src().join("scim")) {
        let text = code(&std::fs::read_to_string(&file).unwrap());
        assert!(
            !text.contains("crate::mapping"),
            "{}: scim/ must not use mapping/",
            file.display()
        );
    }
}

#[test]
fn targets_never_see_scim_or_the_store() {
    for file in rust_files(&src().join("targets")) {
        let text = code(&std::fs::read_to_string(&file).unwrap());
        for word in ["crate::scim", "crate::store", "crate::http"] {
            assert!(!text.contains(word), "{} uses `{word}`", file.display());
        }
    }
}

#[test]
fn http_never_calls_a_target() {
    for file in rust_files(&src().join("http")) {
        let text = code(&std::fs::read_to_string(&file).unwrap());
        for word in ["crate::targets", "crate::reconcile", "ldap3"] {
            assert!(!text.contains(word), "{} uses `{word}`", file.display());
        }
    }
}

#[test]
fn only_the_store_uses_diesel() {
    for file in rust_files(&src()) {
        if file.starts_with(src().join("store"))
            || file.starts_with(src().join("targets").join("sql"))
        {
            continue;
        }
        let text = code(&std::fs::read_to_string(&file).unwrap());
        assert!(
            !text.contains("diesel::"),
            "{} uses diesel outside store/ (and the SQL target)",
            file.display()
        );
    }
}

#[test]
fn every_file_opens_with_a_module_doc() {
    let mut files = rust_files(&src());
    files.extend(rust_files(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests"),
    ));
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
        assert!(
            first.starts_with("//!"),
            "{} does not open with a //! header",
            file.display()
        );
    }
}

#[test]
fn no_replace_of_membership_attributes() {
    // membership is written as value adds and deletes, never a Replace of member lists.
    for file in rust_files(&src().join("targets")) {
        let text = code(&std::fs::read_to_string(&file).unwrap());
        for (n, line) in text.lines().enumerate() {
            let l = line.to_ascii_lowercase();
            if l.contains("mod::replace") {
                assert!(
                    !(l.contains("member")
                        || l.contains("uniquemember")
                        || l.contains("memberuid")),
                    "{}:{}: Mod::Replace on a membership attribute",
                    file.display(),
                    n + 1
                );
            }
        }
    }
}

#[test]
fn bookkeeping_is_plain_data() {
    // Shared by the store, the mapping, the targets and the reconciler: it uses none of them.
    let file = src().join("bookkeeping.rs");
    let text = code(&std::fs::read_to_string(&file).unwrap());
    for word in [
        "crate::", "tokio", "diesel", "hyper", "ldap3", "std::fs", "std::net",
    ] {
        assert!(!text.contains(word), "{} uses `{word}`", file.display());
    }
}

#[test]
fn bookkeeping_keys_are_named_only_by_its_struct() {
    // `target_state.extra` is read and written through `bookkeeping::Bookkeeping` only: no
    // JSON key of it spelt as a string literal elsewhere (unit tests may build stored JSON).
    let keys = [
        "creating",
        "since_ms",
        "prev_attempt_ms",
        "attempt_ms",
        "released_ms",
        "orphans",
        "renaming",
        "entry_uuid",
        "scim_active",
        "deactivating",
        "deleted_inactive",
        "password_sha256",
        "role_groups",
        "members_record",
    ];
    for file in rust_files(&src()) {
        let under_tests = file
            .components()
            .any(|c| c.as_os_str() == "tests" || c.as_os_str() == "tests.rs");
        if file.ends_with("bookkeeping.rs") || under_tests {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let text = code(text.split("#[cfg(test)]").next().unwrap_or(""));
        for key in keys {
            assert!(
                !text.contains(&format!("\"{key}\"")),
                "{}: the bookkeeping key \"{key}\" outside `bookkeeping::Bookkeeping`",
                file.display()
            );
        }
    }
}

#[test]
fn the_plan_is_pure() {
    // `targets::plan` decides from what the targets read; it reads and writes nothing.
    let file = src().join("targets").join("plan.rs");
    let text = code(&std::fs::read_to_string(&file).unwrap());
    for word in [
        "tokio",
        "diesel",
        "ldap3",
        "std::fs",
        "std::net",
        "crate::store",
        "crate::scim",
        "crate::targets::ldap",
        "crate::targets::sql",
        "async ",
    ] {
        assert!(!text.contains(word), "{} uses `{word}`", file.display());
    }
}

/// The top-level modules a file names through `crate::`: every `crate::name` path (in a `use`
/// or inline) and the first segment of each item of a grouped import
/// (`use crate::{a, b::c, d::{e, f}}` names `a`, `b` and `d`). Comments are dropped first.
fn crate_modules(text: &str) -> std::collections::BTreeSet<String> {
    let text = code(text);
    let ident = |s: &str| -> String {
        s.trim_start()
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut out = std::collections::BTreeSet::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find("crate::") {
        // `scim_sync::crate::` does not occur; `$crate::` (macros) is not a module path.
        let before = rest[..at].chars().next_back();
        rest = &rest[at + "crate::".len()..];
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        let tail = rest.trim_start();
        if let Some(group) = tail.strip_prefix('{') {
            // The items at depth 0 of the group, up to its closing brace.
            let (mut depth, mut item) = (0usize, String::new());
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.insert(ident(&item));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                if depth == 0 {
                    item.push(c);
                }
            }
            out.insert(ident(&item));
        } else {
            out.insert(ident(tail));
        }
    }
    out.retain(|m| !m.is_empty() && m != "self");
    out
}

#[test]
fn crate_modules_reads_plain_grouped_and_inline_paths() {
    let text = "use crate::a::B;\nuse crate::{c, d::e, f::{g, h}};\npub use crate::{\n    i::J,\n    k,\n};\n// use crate::commented;\nfn x() { crate::l::m(); $crate::n::o(); }\n";
    let got: Vec<String> = crate_modules(text).into_iter().collect();
    assert_eq!(got, ["a", "c", "d", "f", "i", "k", "l"]);
}

/// The direction table of `docs/ARCHITECTURE.md` ("Module direction"): each top-level module
/// of `src/` and the modules it may use. Every module has a row; every `crate::` path in a
/// module's files (tests included) names itself or one it may use.
#[test]
fn modules_use_only_what_the_direction_table_allows() {
    use std::collections::{BTreeMap, BTreeSet};
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/ARCHITECTURE.md"))
            .unwrap();
    let section = doc
        .split("## Module direction")
        .nth(1)
        .expect("docs/ARCHITECTURE.md has a `## Module direction` section");
    let section = section.split("\n## ").next().unwrap_or("");
    let mut table: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in section.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let (Some(module), Some(uses)) = (cells.get(1), cells.get(2)) else {
            continue;
        };
        let names = |cell: &str| -> BTreeSet<String> {
            cell.split('`')
                .skip(1)
                .step_by(2)
                .map(|s| s.trim_end_matches('/').to_owned())
                .collect()
        };
        let module = names(module).into_iter().next().unwrap_or_default();
        table.insert(module, names(uses));
    }
    let mut modules = BTreeSet::new();
    for entry in std::fs::read_dir(src()).unwrap() {
        let p = entry.unwrap().path();
        let name = p.file_stem().unwrap().to_string_lossy().into_owned();
        if name != "lib" && name != "main" {
            modules.insert(name);
        }
    }
    let rows: BTreeSet<String> = table.keys().cloned().collect();
    assert_eq!(
        rows, modules,
        "docs/ARCHITECTURE.md's direction table must have one row per module of src/"
    );
    let mut wrong = Vec::new();
    for module in &modules {
        let dir = src().join(module);
        let files = if dir.is_dir() {
            rust_files(&dir)
        } else {
            vec![src().join(format!("{module}.rs"))]
        };
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            for used in crate_modules(&text) {
                if &used != module && !table[module].contains(&used) {
                    wrong.push(format!("{} uses crate::{used}", file.display()));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "against docs/ARCHITECTURE.md's direction table:\n{}",
        wrong.join("\n")
    );
}
