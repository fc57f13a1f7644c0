//! The SQL dialects of the three supported backends: identifier validation and quoting
//! (checked once, at config load), placeholders, casts, and the one-column JSON read trick.
//! Owns every piece of SQL text that differs between PostgreSQL, MariaDB/MySQL and SQLite.
//! Must not format a value into SQL: values are always bound parameters.

use crate::config::target::SqlColumnType;

/// Which database server a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `postgres://` or `postgresql://`.
    Postgres,
    /// `mysql://` or `mariadb://` (MariaDB or MySQL).
    Mysql,
    /// `sqlite://<path>`.
    Sqlite,
}

impl Backend {
    /// The backend named by a URL's scheme, or `None` for any other scheme.
    #[must_use]
    pub fn from_url(url: &str) -> Option<Backend> {
        let (scheme, rest) = url.split_once("://")?;
        if rest.is_empty() {
            return None;
        }
        match scheme.to_ascii_lowercase().as_str() {
            "postgres" | "postgresql" => Some(Backend::Postgres),
            "mysql" | "mariadb" => Some(Backend::Mysql),
            "sqlite" => Some(Backend::Sqlite),
            _ => None,
        }
    }

    /// Quote a validated identifier (`name` or `schema.name`): `"x"` on PostgreSQL, `` `x` ``
    /// on MariaDB/MySQL and SQLite. SQLite reads a double-quoted name that matches no column
    /// as a string literal (its "DQS" compatibility quirk), so a misspelt column would
    /// silently read as text; a backquoted name is always an identifier there.
    #[must_use]
    pub fn quote(self, ident: &Ident) -> String {
        let q = match self {
            Backend::Mysql | Backend::Sqlite => '`',
            Backend::Postgres => '"',
        };
        ident
            .0
            .split('.')
            .map(|p| format!("{q}{p}{q}"))
            .collect::<Vec<_>>()
            .join(".")
    }

    /// The placeholder for the `n`th (1-based) bound value of a column of type `ty`.
    /// Timestamps are bound as UTC text `YYYY-MM-DD HH:MM:SS` and cast by the server.
    #[must_use]
    pub fn placeholder(self, n: usize, ty: SqlColumnType) -> String {
        let p = match self {
            Backend::Postgres => format!("${n}"),
            Backend::Mysql | Backend::Sqlite => "?".to_owned(),
        };
        match (self, ty) {
            (Backend::Postgres, SqlColumnType::Timestamp) => format!("CAST({p} AS TIMESTAMPTZ)"),
            (Backend::Mysql, SqlColumnType::Timestamp) => format!("CAST({p} AS DATETIME)"),
            _ => p,
        }
    }

    /// An expression turning a column into text (NULL stays NULL).
    #[must_use]
    pub fn as_text(self, column: &str) -> String {
        match self {
            Backend::Mysql => format!("CAST({column} AS CHAR)"),
            Backend::Postgres | Backend::Sqlite => format!("CAST({column} AS TEXT)"),
        }
    }

    /// One text expression holding a JSON array of the given text expressions (a NULL
    /// element is JSON `null`), so a row of any width reads as one text column.
    #[must_use]
    pub fn json_array(self, exprs: &[String]) -> String {
        let list = exprs.join(", ");
        match self {
            Backend::Postgres => format!("CAST(array_to_json(ARRAY[{list}]::text[]) AS TEXT)"),
            Backend::Mysql => format!("CAST(JSON_ARRAY({list}) AS CHAR)"),
            Backend::Sqlite => format!("json_array({list})"),
        }
    }
}

/// A validated identifier: `^[A-Za-z_][A-Za-z0-9_]{0,62}$`, optionally `schema.` prefixed.
/// Quoting it is then safe on every backend (no quote character can appear in it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ident(String);

impl Ident {
    /// Validate `text`.
    ///
    /// # Errors
    /// A description of what is wrong (the caller adds the key).
    pub fn parse(text: &str) -> Result<Ident, String> {
        let parts: Vec<&str> = text.split('.').collect();
        if parts.len() > 2 || !parts.iter().all(|p| valid_part(p)) {
            return Err(format!(
                "{text:?} is not a valid identifier (letters, digits and _, not starting with a \
                 digit, at most 63 characters, optionally schema.name)"
            ));
        }
        Ok(Ident(text.to_owned()))
    }

    /// The identifier as written in the config.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn valid_part(p: &str) -> bool {
    let mut chars = p.chars();
    p.len() <= 63
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_validated_and_quoted_per_backend() {
        let t = Ident::parse("legacy.app_users").unwrap();
        assert_eq!(Backend::Postgres.quote(&t), "\"legacy\".\"app_users\"");
        assert_eq!(Backend::Mysql.quote(&t), "`legacy`.`app_users`");
        assert_eq!(
            Backend::Sqlite.quote(&Ident::parse("_x9").unwrap()),
            "`_x9`"
        );
        assert!(Ident::parse(&"a".repeat(63)).is_ok());
        for bad in [
            "",
            "1abc",
            "a-b",
            "a b",
            "a\"b",
            "a`b",
            "a;drop table x",
            "a.b.c",
            ".a",
            "a.",
            "ä",
            "a\0",
            &"a".repeat(64),
        ] {
            assert!(Ident::parse(bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn urls_and_placeholders() {
        assert_eq!(
            Backend::from_url("postgres://u@h/db"),
            Some(Backend::Postgres)
        );
        assert_eq!(Backend::from_url("MySQL://u@h/db"), Some(Backend::Mysql));
        assert_eq!(
            Backend::from_url("sqlite:///var/x.db"),
            Some(Backend::Sqlite)
        );
        assert_eq!(Backend::from_url("sqlite://"), None);
        assert_eq!(Backend::from_url("ldap://x"), None);
        assert_eq!(Backend::from_url("/var/x.db"), None);
        assert_eq!(
            Backend::Postgres.placeholder(3, SqlColumnType::Timestamp),
            "CAST($3 AS TIMESTAMPTZ)"
        );
        assert_eq!(Backend::Mysql.placeholder(3, SqlColumnType::Text), "?");
    }
}
