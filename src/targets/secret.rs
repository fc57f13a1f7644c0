//! Where a target's password comes from (`*_password_file`, `*_password_env`, or a value a
//! caller resolved itself), read when the target connects, never printed. Shared by the LDAP
//! and SQL targets.

use std::path::PathBuf;

/// Where a target's password comes from (an LDAP bind password, a SQL database password).
#[derive(Clone, PartialEq, Eq)]
pub enum PasswordSource {
    /// No password (anonymous or no bind).
    None,
    /// Read from this file (trailing newline stripped).
    File(PathBuf),
    /// Read from this environment variable.
    Env(String),
    /// Given directly (tests, or a caller that resolved the secret itself).
    Value(String),
}

impl PasswordSource {
    /// The password itself: read the file (trailing newline stripped) or the environment
    /// variable. `target` and `key` name the target and the config key in errors.
    ///
    /// # Errors
    /// An unreadable file or an unset variable (permanent).
    pub fn resolve(
        &self,
        target: &str,
        key: &str,
    ) -> Result<Option<String>, crate::targets::TargetError> {
        match self {
            PasswordSource::None => Ok(None),
            PasswordSource::Value(v) => Ok(Some(v.clone())),
            PasswordSource::Env(var) => std::env::var(var).map(Some).map_err(|_| {
                crate::targets::config_error(format!(
                    "target {target}: environment variable {var} is not set"
                ))
            }),
            PasswordSource::File(path) => std::fs::read_to_string(path)
                .map(|text| Some(text.trim_end_matches(['\r', '\n']).to_owned()))
                .map_err(|e| {
                    crate::targets::config_error(format!(
                        "target {target}: cannot read {key} {}: {e}",
                        path.display()
                    ))
                }),
        }
    }
}

impl std::fmt::Debug for PasswordSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PasswordSource::None => f.write_str("None"),
            PasswordSource::File(p) => write!(f, "File({})", p.display()),
            PasswordSource::Env(v) => write!(f, "Env({v})"),
            PasswordSource::Value(_) => f.write_str("Value([redacted])"),
        }
    }
}
