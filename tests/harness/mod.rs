//! Test harness shared by the integration-test modules: a daemon started in-process on free
//! loopback ports with a temp state dir (SQLite) or a throwaway PostgreSQL database, real
//! servers (slapd) on loopback ports in temporary directories, killed on `Drop`. Must not be
//! used by production code.

pub mod daemon;
pub mod pg;
pub mod slapd;
