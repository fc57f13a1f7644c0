//! `scim-sync token create|list|revoke`: bearer tokens. A new token is printed once, alone on
//! the last line of stdout; only its SHA-256 digest is stored.

use clap::Subcommand;
use std::path::Path;
use std::process::ExitCode;

/// Token subcommands.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a new token and print it once (last line of stdout).
    Create {
        /// A unique name (e.g. okta-prod); several tokens may be live for rotation.
        #[arg(long)]
        name: String,
    },
    /// List tokens (names and dates, never the tokens).
    List,
    /// Revoke a token by name or id; it fails at once.
    Revoke {
        /// Name or numeric id.
        name_or_id: String,
    },
}

fn fmt_ms(ms: Option<i64>) -> String {
    ms.map_or_else(|| "-".into(), super::format_ms)
}

/// Run a token subcommand.
pub fn run(config: &Path, cmd: TokenCommand) -> ExitCode {
    let settings = match super::settings_or_exit(config) {
        Ok(s) => s,
        Err(code) => return code,
    };
    super::block_on(async move {
        let store = match super::open_store(&settings).await {
            Ok(s) => s,
            Err(code) => return code,
        };
        let now = crate::clock::now_ms();
        match cmd {
            TokenCommand::Create { name } => {
                if name.is_empty() || name.len() > 100 || name.chars().any(char::is_control) {
                    eprintln!("token name must be 1 to 100 printable characters");
                    return ExitCode::from(2);
                }
                let token = crate::http::auth::generate_token();
                match store
                    .create_token(&name, crate::http::auth::digest(&token), now)
                    .await
                {
                    Ok(info) => {
                        eprintln!(
                            "Created token `{}` (id {}). It is shown once; store it now.",
                            info.name, info.id
                        );
                        println!("{token}");
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("cannot create token: {e}");
                        ExitCode::from(1)
                    }
                }
            }
            TokenCommand::List => match store.list_tokens().await {
                Ok(tokens) => {
                    println!(
                        "{:<6} {:<24} {:<26} {:<26} {:<26}",
                        "ID", "NAME", "CREATED", "LAST USED", "REVOKED"
                    );
                    for t in tokens {
                        println!(
                            "{:<6} {:<24} {:<26} {:<26} {:<26}",
                            t.id,
                            t.name,
                            fmt_ms(Some(t.created_ms)),
                            fmt_ms(t.last_used_ms),
                            fmt_ms(t.revoked_ms)
                        );
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("cannot list tokens: {e}");
                    ExitCode::from(1)
                }
            },
            TokenCommand::Revoke { name_or_id } => match store.revoke_token(&name_or_id, now).await
            {
                Ok(true) => {
                    println!("Revoked {name_or_id}.");
                    ExitCode::SUCCESS
                }
                Ok(false) => {
                    eprintln!("no live token named or numbered {name_or_id}");
                    ExitCode::from(1)
                }
                Err(e) => {
                    eprintln!("cannot revoke: {e}");
                    ExitCode::from(1)
                }
            },
        }
    })
}
