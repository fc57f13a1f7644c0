//! Secrets (database and bind passwords, TLS keys) come from a file or an environment variable,
//! never inline in the config. [`Secret`] never prints its value.

use crate::config::load::ConfigError;

/// A secret value; `Debug` and `Display` print `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wrap a value.
    pub fn new(value: String) -> Self {
        Self(value)
    }
    /// The value, for the one place that must use it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// Read a secret from `file` (trailing newline removed) or from the environment variable `env`;
/// `key` names the config key in errors. Both empty: `Ok(None)`.
///
/// # Errors
/// When both are set, the file cannot be read, the variable is unset, or the value is empty.
pub fn read_secret(key: &str, file: &str, env: &str) -> Result<Option<Secret>, ConfigError> {
    match (file.is_empty(), env.is_empty()) {
        (true, true) => Ok(None),
        (false, false) => Err(ConfigError::invalid(
            key,
            "set either the _file or the _env form, not both",
        )),
        (false, true) => {
            let text = std::fs::read_to_string(file).map_err(|error| {
                ConfigError::invalid(key, format!("cannot read secret file {file}: {error}"))
            })?;
            let value = text.trim_end_matches(['\n', '\r']).to_string();
            if value.is_empty() {
                return Err(ConfigError::invalid(
                    key,
                    format!("secret file {file} is empty"),
                ));
            }
            Ok(Some(Secret(value)))
        }
        (true, false) => match std::env::var(env) {
            Ok(value) if !value.is_empty() => Ok(Some(Secret(value))),
            _ => Err(ConfigError::invalid(
                key,
                format!("environment variable {env} is unset or empty"),
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_never_prints() {
        let s = Secret::new("hunter2".into());
        assert_eq!(format!("{s:?} {s}"), "*** ***");
    }

    #[test]
    fn reads_file_without_newline_and_rejects_both_forms() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "s3cret\n").unwrap();
        let got = read_secret("x_file", path.to_str().unwrap(), "")
            .unwrap()
            .unwrap();
        assert_eq!(got.expose(), "s3cret");
        assert!(read_secret("x", "a", "b").is_err());
        assert!(read_secret("x", "/nonexistent/file", "").is_err());
        assert!(read_secret("x", "", "").unwrap().is_none());
    }
}
