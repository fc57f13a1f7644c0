//! The pure SCIM 2.0 core (RFC 7643 / RFC 7644): schemas, resources, filters, attribute paths,
//! PATCH, list queries and errors.
//!
//! Must not do I/O: no tokio, diesel, hyper or ldap3 here (the tidy test enforces it). This is the
//! code that reads the most hostile input, so every parser is bounded while it parses.

pub mod bulk;
pub mod error;
pub mod filter;
pub mod list;
pub mod patch;
pub mod path;
pub mod resource;
pub mod schema;

pub use error::{ScimError, ScimType};
