//! Test harness shared by the integration-test modules: the daemon started in-process on free
//! loopback ports (SQLite in a temp dir or a throwaway PostgreSQL database), slapd on a loopback
//! port, throwaway MariaDB databases, and a real HTTP client. Servers are killed on `Drop`.
//! Never used by production code.

pub mod daemon;
pub mod mariadb;
pub mod pg;
pub mod slapd;
pub mod throwaway;
