//! `scim-sync check-config [--connect]`: validate the config; with `--connect`, also open the
//! store and check every target live (`targets::check_live`: a real bind and read; SQL:
//! tables, columns and their types; LDAP: object classes and attributes in the server's
//! schema), the same checks a reload runs before it takes a changed config.

use std::path::Path;
use std::process::ExitCode;

/// Validate (and optionally connect).
pub fn run(config: &Path, connect: bool) -> ExitCode {
    let settings = match super::settings_or_exit(config) {
        Ok(s) => s,
        Err(code) => return code,
    };
    println!(
        "{}: configuration is valid ({} target(s)).",
        config.display(),
        settings.raw.targets.len()
    );
    if !connect {
        return ExitCode::SUCCESS;
    }
    super::block_on(async move {
        match crate::store::Store::open(&settings.store, settings.target_names()).await {
            Ok(store) => match store.ping().await {
                Ok(()) => println!("store: ok"),
                Err(e) => {
                    eprintln!("store: {e}");
                    return ExitCode::from(1);
                }
            },
            Err(e) => {
                eprintln!("store: {e}");
                return ExitCode::from(1);
            }
        }
        let mut failed = false;
        let schemas = crate::mapping::Schemas::new(&settings.raw.scim.user_extensions);
        for (i, raw) in settings.raw.targets.iter().enumerate() {
            let (map, target) = match crate::targets::build_with(raw, i, &schemas) {
                Ok(built) => built,
                Err(errors) => {
                    for e in errors {
                        eprintln!("config error: {e}");
                    }
                    return ExitCode::from(2);
                }
            };
            match crate::targets::check_live(&map, &target, i).await {
                Ok(()) => println!("target {}: ok", raw.name()),
                Err(e) => {
                    // One line per problem (the live check joins them with "; target T: ").
                    let prefix = format!("target {}: ", raw.name());
                    let text = e.message.strip_prefix(&prefix).unwrap_or(&e.message);
                    for problem in text.split(&format!("; {prefix}")) {
                        eprintln!("{prefix}{problem}");
                    }
                    failed = true;
                }
            }
        }
        if failed {
            ExitCode::from(1)
        } else {
            ExitCode::SUCCESS
        }
    })
}
