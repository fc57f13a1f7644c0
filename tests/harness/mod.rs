//! Test harness: a daemon started in-process on free loopback ports with a temp state dir
//! (SQLite) or a throwaway PostgreSQL database, and a real HTTP client.

pub mod daemon;
pub mod pg;
