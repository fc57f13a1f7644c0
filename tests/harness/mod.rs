//! Test harness shared by the integration-test modules: real servers on loopback ports, in
//! temporary directories, killed on `Drop`. Must not be used by production code.

pub mod slapd;
