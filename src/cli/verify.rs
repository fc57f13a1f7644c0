//! `scim-sync verify [--target T]`: compare every target with what the store says it should
//! hold and print each difference; exit 0 only when they agree (1 when they differ or could
//! not be compared, 2 on a config error). Thin: the comparison is
//! [`crate::reconcile::Reconciler::verify`], drift repair's dry run. Changes nothing, so it may
//! run beside the daemon; a progress bar is drawn only when stderr is a terminal.

use crate::reconcile::{Problem, Reconciler, VerifyReport};
use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;

/// One line per difference, then the summary line.
pub(crate) fn render_report(report: &VerifyReport) -> String {
    let mut out = String::new();
    for d in &report.differences {
        let who = d
            .resource
            .as_ref()
            .map(|(ty, id)| format!(" {} {id}", ty.as_str()))
            .unwrap_or_default();
        let what = match &d.problem {
            Problem::Attribute {
                attribute,
                want,
                have,
            } => format!("{attribute}: want {want:?}, have {have:?}"),
            Problem::Missing => "missing: the store says it exists".to_owned(),
            Problem::Extra => "extra: the store says it does not exist".to_owned(),
            Problem::Moved { recorded } => format!(
                "moved: recorded at {}",
                recorded.as_deref().unwrap_or("(nothing)")
            ),
            Problem::Unrecorded => {
                "unrecorded: an entry is there the store does not record as this resource's"
                    .to_owned()
            }
            Problem::HeldTwice { by } => format!("held twice: by {}", by.join(", ")),
            Problem::Change(line) => format!("differs: {line}"),
            Problem::Foreign(values) => {
                format!("foreign members (not written by scim-sync, kept): {values:?}")
            }
            Problem::Failed(e) => format!("cannot compare: {e}"),
        };
        let _ = writeln!(out, "{}{who} {}: {what}", d.target, d.key);
    }
    if report.found > u64::try_from(report.differences.len()).unwrap_or(u64::MAX) {
        let _ = writeln!(
            out,
            "... and {} more",
            report.found - u64::try_from(report.differences.len()).unwrap_or(0)
        );
    }
    for d in &report.foreign {
        let who = d
            .resource
            .as_ref()
            .map(|(ty, id)| format!(" {} {id}", ty.as_str()))
            .unwrap_or_default();
        if let Problem::Foreign(values) = &d.problem {
            let _ = writeln!(
                out,
                "{}{who} {}: foreign members (not written by scim-sync, kept by foreign_members = \"keep\"): {values:?}",
                d.target, d.key
            );
        }
    }
    if report.pending > 0 {
        let _ = writeln!(
            out,
            "Note: {} change(s) were pending; differences for them may be in flight.",
            report.pending
        );
    }
    let verdict = if report.clean() {
        "the targets agree with the store"
    } else {
        "differences found"
    };
    let _ = writeln!(
        out,
        "Verified {} resource(s): {} difference(s); {verdict}.",
        report.checked, report.found
    );
    out
}

/// Run `verify`.
pub fn run(config: &Path, target: Option<String>) -> ExitCode {
    let settings = match super::settings_or_exit(config) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let targets = match super::build_targets(&settings, config, target.as_deref()) {
        Ok(t) => t,
        Err(code) => return code,
    };
    super::block_on(async move {
        let store = match super::open_store(&settings).await {
            Ok(s) => s,
            Err(code) => return code,
        };
        let rec = Reconciler::new(
            store,
            settings.reconcile.clone(),
            targets,
            std::sync::Arc::new(tokio::sync::Notify::new()),
            crate::health::Health::default(),
        );
        let bar = super::progress_bar("{bar:40} {pos}/{len} resources compared");
        let report = rec
            .verify(target.as_deref(), |done, seen| {
                if let Some(bar) = &bar {
                    bar.set_length(seen);
                    bar.set_position(done);
                }
            })
            .await;
        if let Some(bar) = &bar {
            bar.finish_and_clear();
        }
        print!("{}", render_report(&report));
        if report.clean() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::Difference;
    use crate::scim::resource::ResourceType;

    #[test]
    fn each_difference_names_target_key_attribute_want_and_have() {
        let report = VerifyReport {
            checked: 4,
            found: 3,
            pending: 0,
            foreign: Vec::new(),
            differences: vec![
                Difference {
                    target: "corp".into(),
                    resource: Some((ResourceType::User, "u1".into())),
                    key: "uid=a,ou=People,dc=example,dc=com".into(),
                    problem: Problem::Attribute {
                        attribute: "title".into(),
                        want: vec!["Boss".into()],
                        have: vec!["Hacked".into()],
                    },
                },
                Difference {
                    target: "corp".into(),
                    resource: Some((ResourceType::User, "u2".into())),
                    key: "uid=b,ou=People,dc=example,dc=com".into(),
                    problem: Problem::Missing,
                },
                Difference {
                    target: "corp".into(),
                    resource: None,
                    key: "uid=c,ou=people,dc=example,dc=com".into(),
                    problem: Problem::HeldTwice {
                        by: vec!["User u3".into(), "User u4".into()],
                    },
                },
            ],
        };
        let text = render_report(&report);
        assert!(text.contains(
            "corp User u1 uid=a,ou=People,dc=example,dc=com: title: want [\"Boss\"], have [\"Hacked\"]\n"
        ), "{text}");
        assert!(text.contains("corp User u2 uid=b,ou=People,dc=example,dc=com: missing"));
        assert!(text.contains("held twice: by User u3, User u4"));
        assert!(text.ends_with("Verified 4 resource(s): 3 difference(s); differences found.\n"));
        let clean = render_report(&VerifyReport::default());
        assert!(clean.ends_with("0 difference(s); the targets agree with the store.\n"));
    }

    #[test]
    fn foreign_members_are_listed_and_leave_the_report_clean() {
        let report = VerifyReport {
            checked: 1,
            foreign: vec![Difference {
                target: "corp".into(),
                resource: Some((ResourceType::Group, "g1".into())),
                key: "cn=staff,ou=Groups,dc=example,dc=com".into(),
                problem: Problem::Foreign(vec!["uid=x,ou=People,dc=example,dc=com".into()]),
            }],
            ..VerifyReport::default()
        };
        let text = render_report(&report);
        assert!(
            text.contains(
                "corp Group g1 cn=staff,ou=Groups,dc=example,dc=com: foreign members (not written \
                 by scim-sync, kept by foreign_members = \"keep\"): [\"uid=x,ou=People,dc=example,dc=com\"]\n"
            ),
            "{text}"
        );
        assert!(
            text.ends_with("0 difference(s); the targets agree with the store.\n"),
            "{text}"
        );
    }
}
