//! `scim-sync dead-letters list|retry|discard`: changes a target refused permanently. Retry
//! makes them pending again (after fixing the cause); discard drops them.

use clap::Subcommand;
use std::path::Path;
use std::process::ExitCode;

/// Dead-letter subcommands.
#[derive(Debug, Subcommand)]
pub enum DeadLettersCommand {
    /// List dead letters (id, target, resource id and name, attempts, last error).
    List {
        /// Only this target.
        #[arg(long)]
        target: Option<String>,
    },
    /// Make dead letters pending again: one by id, or all (of a target) with --all.
    Retry {
        /// The dead letter's id (from `list`).
        id: Option<i64>,
        /// Every dead letter (of `--target` when given).
        #[arg(long, conflicts_with = "id")]
        all: bool,
        /// Only this target.
        #[arg(long)]
        target: Option<String>,
    },
    /// Drop dead letters: one by id, or all (of a target) with --all.
    Discard {
        /// The dead letter's id (from `list`).
        id: Option<i64>,
        /// Every dead letter (of `--target` when given).
        #[arg(long, conflicts_with = "id")]
        all: bool,
        /// Only this target.
        #[arg(long)]
        target: Option<String>,
    },
}

/// Which rows a retry or discard names; `None` when neither an id nor `--all` was given.
fn selection(id: Option<i64>, all: bool) -> Option<Option<i64>> {
    match (id, all) {
        (Some(id), false) => Some(Some(id)),
        (None, true) => Some(None),
        _ => None,
    }
}

/// Run a dead-letters subcommand.
pub fn run(config: &Path, cmd: DeadLettersCommand) -> ExitCode {
    let settings = match super::settings_or_exit(config) {
        Ok(s) => s,
        Err(code) => return code,
    };
    super::block_on(async move {
        let store = match super::open_store(&settings).await {
            Ok(s) => s,
            Err(code) => return code,
        };
        match cmd {
            DeadLettersCommand::List { target } => {
                match store.dead_letters(target.as_deref()).await {
                    Ok(rows) => {
                        if rows.is_empty() {
                            println!("No dead letters.");
                            return ExitCode::SUCCESS;
                        }
                        let mut names = Vec::with_capacity(rows.len());
                        for r in &rows {
                            names.push(resource_name(&store, r).await);
                        }
                        print!("{}", render_list(&rows, &names));
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("cannot list dead letters: {e}");
                        ExitCode::from(1)
                    }
                }
            }
            DeadLettersCommand::Retry { id, all, target } => {
                let Some(which) = selection(id, all) else {
                    eprintln!("name a dead letter by id, or pass --all");
                    return ExitCode::from(2);
                };
                let now = crate::clock::now_ms();
                match store.retry_dead(which, target.as_deref(), now).await {
                    Ok(n) => {
                        println!("{n} dead letter(s) queued again; the daemon applies them now.");
                        if n == 0 && which.is_some() {
                            return ExitCode::from(1);
                        }
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("cannot retry: {e}");
                        ExitCode::from(1)
                    }
                }
            }
            DeadLettersCommand::Discard { id, all, target } => {
                let Some(which) = selection(id, all) else {
                    eprintln!("name a dead letter by id, or pass --all");
                    return ExitCode::from(2);
                };
                match store.discard_dead(which, target.as_deref()).await {
                    Ok(n) => {
                        println!("{n} dead letter(s) discarded.");
                        if n == 0 && which.is_some() {
                            return ExitCode::from(1);
                        }
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("cannot discard: {e}");
                        ExitCode::from(1)
                    }
                }
            }
        }
    })
}

/// The resource's `userName` (users) or `displayName` (groups), "(deleted)" appended for a
/// deleted one; "-" when the store has no such resource.
async fn resource_name(store: &crate::store::Store, r: &crate::store::OutboxItem) -> String {
    use crate::scim::resource::ResourceType;
    let found = match r.resource_type {
        ResourceType::User => store
            .get_user_any(&r.resource_id)
            .await
            .ok()
            .flatten()
            .map(|u| (u.user_name, u.deleted)),
        ResourceType::Group => store
            .get_group_any(&r.resource_id)
            .await
            .ok()
            .flatten()
            .map(|g| (g.display_name, g.deleted)),
    };
    match found {
        Some((name, false)) => name,
        Some((name, true)) => format!("{name} (deleted)"),
        None => "-".to_owned(),
    }
}

/// The `list` table: one line per dead letter, the resource's name beside its id.
fn render_list(rows: &[crate::store::OutboxItem], names: &[String]) -> String {
    let mut out = format!(
        "{:<6} {:<16} {:<6} {:<38} {:<32} {:>8} {:<26} ERROR\n",
        "ID", "TARGET", "TYPE", "RESOURCE", "NAME", "ATTEMPTS", "QUEUED"
    );
    for (r, name) in rows.iter().zip(names) {
        out.push_str(&format!(
            "{:<6} {:<16} {:<6} {:<38} {:<32} {:>8} {:<26} {}\n",
            r.id,
            r.target,
            r.resource_type.as_str(),
            r.resource_id,
            name,
            r.attempts,
            super::format_ms(r.enqueued_ms),
            r.last_error.as_deref().unwrap_or("-")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::selection;

    #[test]
    fn an_id_or_all_but_not_neither() {
        assert_eq!(selection(Some(4), false), Some(Some(4)));
        assert_eq!(selection(None, true), Some(None));
        assert_eq!(selection(None, false), None);
        assert_eq!(selection(Some(4), true), None);
    }
}
