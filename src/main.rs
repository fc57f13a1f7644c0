//! The `scim-sync` binary: parse the command line and hand over to [`scim_sync::cli::run`].

fn main() -> std::process::ExitCode {
    scim_sync::cli::run()
}
