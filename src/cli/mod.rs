//! The command line: one file per subcommand over library calls.

/// Parse the command line and run the subcommand.
pub fn run() -> std::process::ExitCode {
    std::process::ExitCode::SUCCESS
}
