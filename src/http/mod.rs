//! The HTTP shell: the SCIM listener and the admin listener (metrics, health). Never calls a
//! target: a push is answered once it is durable in the store, then the reconciler is woken.

pub mod admin;
pub mod auth;
pub mod body;
pub mod bulk;
pub mod discovery;
pub mod error;
pub mod groups;
pub mod password;
pub mod router;
pub mod search;
pub mod server;
pub mod users;

use crate::scim::filter::FilterLimits;
use crate::scim::schema::SchemaSet;
use crate::store::Store;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// Settings of the SCIM listener that a reload may change.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// `/scim/v2`: no trailing slash.
    pub base_path: String,
    /// Public base URL for `meta.location`; `None`: from the Host header.
    pub public_url: Option<String>,
    pub max_body_users: u64,
    pub max_body_groups: u64,
    pub request_timeout: Duration,
    /// How long a request body may take to arrive (408 after).
    pub body_timeout: Duration,
    /// Longest string value (and attribute name) a resource may carry, in bytes.
    pub max_value_bytes: usize,
    pub filter_limits: FilterLimits,
    pub max_page_size: u64,
    pub max_patch_operations: usize,
    /// `POST /Bulk`: most operations (0: Bulk is off) and largest body.
    pub bulk_max_operations: usize,
    pub bulk_max_payload_bytes: u64,
    pub password_sync: password::PasswordSync,
    pub schemas: SchemaSet,
}

/// Everything a request handler needs.
#[derive(Clone)]
pub struct ScimContext {
    pub store: Store,
    pub auth: Arc<auth::Auth>,
    pub settings: tokio::sync::watch::Receiver<Arc<HttpSettings>>,
    /// Woken after every committed change so the reconciler picks it up at once.
    pub wake: Arc<Notify>,
}
