//! `scim-sync serve`: run the daemon in the foreground (systemd `Type=notify`).

use std::path::Path;
use std::process::ExitCode;

/// Run until stopped.
pub fn run(config: &Path) -> ExitCode {
    crate::daemon::run(config)
}
