//! Test harness shared by the integration-test modules: a daemon started in-process on free
//! loopback ports with a temp state dir (SQLite) or a throwaway PostgreSQL database, a real
//! HTTP client, and real servers (slapd) in temporary directories, killed on `Drop`. Must not
//! be used by production code.

pub mod daemon;
pub mod mariadb;
pub mod pg;
pub mod slapd;
