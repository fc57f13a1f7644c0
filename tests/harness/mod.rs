//! Test harness shared by the integration-test modules: the daemon started in-process on free
//! loopback ports (SQLite in a temp dir or a throwaway PostgreSQL database), slapd on a loopback
//! port, a 389 Directory Server and a Samba AD DC (once per test binary, stopped with the
//! process), throwaway MariaDB databases, and a real HTTP client. Servers are killed on `Drop`.
//! Never used by production code.

pub mod daemon;
pub mod ds389;
pub mod mariadb;
pub mod pg;
pub mod samba;
pub mod server;
pub mod slapd;
pub mod throwaway;
