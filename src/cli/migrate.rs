//! `scim-sync migrate`: apply pending migrations and list them.

use std::path::Path;
use std::process::ExitCode;

/// Apply pending migrations.
pub fn run(config: &Path) -> ExitCode {
    let settings = match super::settings_or_exit(config) {
        Ok(s) => s,
        Err(code) => return code,
    };
    super::block_on(async move {
        let store = match crate::store::Store::open(&settings.store, settings.target_names()).await
        {
            Ok(s) => s,
            Err(e) => {
                eprintln!("store: {e}");
                return ExitCode::from(1);
            }
        };
        match store.migrate().await {
            Ok(applied) if applied.is_empty() => {
                println!("The database is up to date.");
                ExitCode::SUCCESS
            }
            Ok(applied) => {
                for name in applied {
                    println!("applied {name}");
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("migration failed: {e}");
                ExitCode::from(1)
            }
        }
    })
}
