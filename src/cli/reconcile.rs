//! `scim-sync reconcile --full [--dry-run] [--target T]`: drift repair from the command line.
//! Builds and connects to the targets itself (the daemon may keep running: applies are
//! idempotent), walks every managed resource, and prints a summary; with `--dry-run` it changes
//! nothing and prints the planned changes like a plan. A progress bar is drawn only when
//! stderr is a terminal.

use crate::reconcile::{FullReport, Reconciler};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

/// Print the plan (dry run) or the changes made, then the summary line.
pub(crate) fn render_report(report: &FullReport, dry_run: bool) -> String {
    let mut out = String::new();
    for item in &report.items {
        let what = if item.resource_id.is_empty() {
            // A target whose resources could not be listed.
            item.target.clone()
        } else {
            format!(
                "{} {} {}",
                item.target,
                item.resource_type.as_str(),
                item.resource_id
            )
        };
        match &item.error {
            Some(e) => out.push_str(&format!("! {what}: {e}\n")),
            None => {
                let key = item.key.as_deref().unwrap_or("(deleted)");
                out.push_str(&format!("~ {what} ({key})\n"));
                for c in &item.changes {
                    out.push_str(&format!("    {c}\n"));
                }
            }
        }
    }
    let verb = if dry_run { "would change" } else { "changed" };
    out.push_str(&format!(
        "Checked {} resource(s): {} {verb}, {} failed.\n",
        report.checked, report.changed, report.failed
    ));
    out
}

/// Run `reconcile`.
pub fn run(config: &Path, full: bool, dry_run: bool, target: Option<String>) -> ExitCode {
    if !full {
        eprintln!("only full reconciliation is available: pass --full (the daemon applies pending changes itself)");
        return ExitCode::from(2);
    }
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
            Arc::new(tokio::sync::Notify::new()),
            crate::health::Health::default(),
        );
        let bar = super::progress_bar("{bar:40} {pos}/{len} resources ({eta} left)");
        let report = rec
            .reconcile_full(target.as_deref(), dry_run, |done, total| {
                if let Some(bar) = &bar {
                    bar.set_length(total);
                    bar.set_position(done);
                }
            })
            .await;
        if let Some(bar) = &bar {
            bar.finish_and_clear();
        }
        print!("{}", render_report(&report, dry_run));
        if report.failed > 0 || report.items.iter().any(|i| i.error.is_some()) {
            ExitCode::from(1)
        } else {
            ExitCode::SUCCESS
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::FullItem;
    use crate::scim::resource::ResourceType;

    #[test]
    fn plan_lists_changes_failures_and_summary() {
        let report = FullReport {
            checked: 3,
            changed: 1,
            failed: 1,
            items: vec![
                FullItem {
                    target: "corp".into(),
                    resource_type: ResourceType::User,
                    resource_id: "u1".into(),
                    key: Some("uid=a,ou=People,dc=example,dc=com".into()),
                    changes: vec!["replace title: Boss".into()],
                    error: None,
                },
                FullItem {
                    target: "corp".into(),
                    resource_type: ResourceType::Group,
                    resource_id: "g1".into(),
                    key: None,
                    changes: Vec::new(),
                    error: Some("53: unwilling".into()),
                },
            ],
            ..FullReport::default()
        };
        let text = render_report(&report, true);
        assert!(text.contains(
            "~ corp User u1 (uid=a,ou=People,dc=example,dc=com)\n    replace title: Boss\n"
        ));
        assert!(text.contains("! corp Group g1: 53: unwilling\n"));
        assert!(text.ends_with("Checked 3 resource(s): 1 would change, 1 failed.\n"));
        assert!(render_report(&FullReport::default(), false).contains("0 changed"));
        // A target whose resources could not be listed: named alone, not a failed resource.
        let listing = FullReport {
            items: vec![FullItem {
                target: "corp".into(),
                resource_type: ResourceType::User,
                resource_id: String::new(),
                key: None,
                changes: Vec::new(),
                error: Some("cannot list managed resources: down".into()),
            }],
            ..FullReport::default()
        };
        assert_eq!(
            render_report(&listing, false),
            "! corp: cannot list managed resources: down\nChecked 0 resource(s): 0 changed, 0 failed.\n"
        );
    }
}
