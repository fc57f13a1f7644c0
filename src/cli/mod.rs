//! The command line: one file per subcommand over library calls. `main` calls [`run`].

mod check_config;
mod dead_letters;
mod history;
mod migrate;
mod reconcile;
mod serve;
mod status;
mod token;
mod verify;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// scim-sync: provision users and groups from Okta / Entra ID (SCIM 2.0) into LDAP and SQL.
#[derive(Debug, Parser)]
#[command(name = "scim-sync", version, about)]
pub struct Cli {
    /// The config file.
    #[arg(
        long,
        short,
        global = true,
        env = "SCIM_SYNC_CONFIG",
        default_value = "/etc/scim-sync/scim-sync.toml"
    )]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon (SCIM listener, reconciler, admin endpoints).
    Serve,
    /// Validate the config file and exit (0 when valid, 2 otherwise).
    CheckConfig {
        /// Also connect to the store and every target (a real bind and read).
        #[arg(long)]
        connect: bool,
    },
    /// Apply pending database migrations.
    Migrate,
    /// Manage SCIM bearer tokens (shown once, stored as SHA-256 digests).
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Per target: pending changes, age of the oldest, applied resources, dead letters.
    Status,
    /// List, retry or discard changes a target refused permanently.
    #[command(subcommand)]
    DeadLetters(dead_letters::DeadLettersCommand),
    /// Drift repair: re-sync every managed resource against the live targets.
    Reconcile {
        /// Walk every managed resource (required).
        #[arg(long)]
        full: bool,
        /// Change nothing; print the planned changes.
        #[arg(long)]
        dry_run: bool,
        /// Only this target.
        #[arg(long)]
        target: Option<String>,
    },
    /// Compare every target with the store (changing nothing); exit 0 only when they agree.
    Verify {
        /// Only this target.
        #[arg(long)]
        target: Option<String>,
    },
    /// What the IdP pushed for a user or group and what each target applied.
    History {
        /// An id, userName or group displayName.
        name: String,
    },
}

/// Parse the command line and run the subcommand.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve => serve::run(&cli.config),
        Command::CheckConfig { connect } => check_config::run(&cli.config, connect),
        Command::Migrate => migrate::run(&cli.config),
        Command::Token(cmd) => token::run(&cli.config, cmd),
        Command::Status => status::run(&cli.config),
        Command::DeadLetters(cmd) => dead_letters::run(&cli.config, cmd),
        Command::Reconcile {
            full,
            dry_run,
            target,
        } => reconcile::run(&cli.config, full, dry_run, target),
        Command::Verify { target } => verify::run(&cli.config, target),
        Command::History { name } => history::run(&cli.config, &name),
    }
}

/// Load settings or print every error (exit 2).
pub(crate) fn settings_or_exit(
    config: &std::path::Path,
) -> Result<crate::daemon::settings::Settings, ExitCode> {
    crate::daemon::load_settings(config).map_err(|errors| {
        for e in &errors {
            eprintln!("config error: {e}");
        }
        ExitCode::from(2)
    })
}

/// A current-thread runtime for one-shot commands.
pub(crate) fn block_on<F: std::future::Future<Output = ExitCode>>(f: F) -> ExitCode {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(f),
        Err(error) => {
            eprintln!("cannot start the runtime: {error}");
            ExitCode::from(1)
        }
    }
}

/// Build the configured targets (only `only`, when given), printing every error (exit 2).
pub(crate) fn build_targets(
    settings: &crate::daemon::settings::Settings,
    config: &std::path::Path,
    only: Option<&str>,
) -> Result<Vec<crate::reconcile::TargetRuntime>, ExitCode> {
    if let Some(t) = only {
        if !settings.raw.targets.iter().any(|r| r.name() == t) {
            eprintln!("no target named `{t}` in {}", config.display());
            return Err(ExitCode::from(2));
        }
    }
    let mut targets = Vec::new();
    let schemas = crate::mapping::Schemas::new(&settings.raw.scim.user_extensions);
    for (i, raw) in settings.raw.targets.iter().enumerate() {
        if only.is_some_and(|t| t != raw.name()) {
            continue;
        }
        match crate::targets::build_with(raw, i, &schemas) {
            Ok((map, t)) => targets.push(crate::reconcile::TargetRuntime::new(map, t)),
            Err(errors) => {
                for e in errors {
                    eprintln!("config error: {e}");
                }
                return Err(ExitCode::from(2));
            }
        }
    }
    Ok(targets)
}

/// A progress bar on stderr with this template, only when stderr is a terminal.
pub(crate) fn progress_bar(template: &str) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(0);
        if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
            bar.set_style(style);
        }
        bar
    })
}

/// Open the store of a config and migrate it (every store command does).
pub(crate) async fn open_store(
    settings: &crate::daemon::settings::Settings,
) -> Result<crate::store::Store, ExitCode> {
    // One-shot commands take claims only for drift repair (`reconcile --full`): under an id
    // of their own, so a daemon restarting meanwhile leaves them alone.
    let mut store_settings = settings.store.clone();
    let base = if store_settings.instance_id.is_empty() {
        crate::daemon::default_instance_id()
    } else {
        store_settings.instance_id.clone()
    };
    store_settings.instance_id = format!("{base}/cli-{}", std::process::id());
    let store = crate::store::Store::open(&store_settings, settings.target_names())
        .await
        .map_err(|e| {
            eprintln!("store: {e}");
            ExitCode::from(1)
        })?;
    store.migrate().await.map_err(|e| {
        eprintln!("store: {e}");
        ExitCode::from(1)
    })?;
    Ok(store)
}

/// Milliseconds since the epoch as RFC 3339 UTC, for listings.
pub(crate) fn format_ms(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}
