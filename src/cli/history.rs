//! `scim-sync history USER|GROUP`: what the IdP pushed for one resource (when, with which
//! token and request id) and what each target applied, oldest first, then each target's
//! current state. The argument is an id, a userName or a group displayName.

use std::path::Path;
use std::process::ExitCode;

/// Run `history`.
pub fn run(config: &Path, name: &str) -> ExitCode {
    let settings = match super::settings_or_exit(config) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let name = name.to_owned();
    super::block_on(async move {
        let store = match super::open_store(&settings).await {
            Ok(s) => s,
            Err(code) => return code,
        };
        let mut entries = match store.history(&name).await {
            Ok(e) => e,
            Err(e) => {
                eprintln!("cannot read the history: {e}");
                return ExitCode::from(1);
            }
        };
        let mut id = name.clone();
        if entries.is_empty() {
            match store.resolve_name(&name).await {
                Ok(Some((_, found))) => {
                    id = found;
                    entries = match store.history(&id).await {
                        Ok(e) => e,
                        Err(e) => {
                            eprintln!("cannot read the history: {e}");
                            return ExitCode::from(1);
                        }
                    };
                }
                Ok(None) => {
                    eprintln!("no user or group with id, userName or displayName `{name}`");
                    return ExitCode::from(1);
                }
                Err(e) => {
                    eprintln!("cannot look up `{name}`: {e}");
                    return ExitCode::from(1);
                }
            }
        }
        let kind = entries
            .first()
            .map_or("Resource", |e| e.resource_type.as_str());
        println!("{kind} {id}");
        println!(
            "{:<26} {:<20} {:>7} {:<16} {:<38} DETAIL",
            "WHEN", "OPERATION", "VERSION", "TOKEN", "REQUEST"
        );
        for e in &entries {
            println!(
                "{:<26} {:<20} {:>7} {:<16} {:<38} {}",
                super::format_ms(e.at_ms),
                e.operation,
                e.version,
                e.token_name.as_deref().unwrap_or("-"),
                e.request_id.as_deref().unwrap_or("-"),
                e.detail.as_deref().unwrap_or("")
            );
        }
        for t in &settings.raw.targets {
            match store.target_state(t.name(), &id).await {
                Ok(Some(s)) => println!(
                    "target {}: version {} applied {} at {}",
                    t.name(),
                    s.applied_version,
                    s.target_key.as_deref().unwrap_or("(no entry)"),
                    super::format_ms(s.updated_ms)
                ),
                Ok(None) => println!("target {}: never applied", t.name()),
                Err(e) => {
                    eprintln!("cannot read the state in {}: {e}", t.name());
                    return ExitCode::from(1);
                }
            }
        }
        ExitCode::SUCCESS
    })
}
