//! The config file as strict serde types: every struct denies unknown keys, every default sits
//! beside its field. Plain data, no I/O; each module validates its own section.

use serde::Deserialize;

/// The whole file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub admin: RawAdmin,
    #[serde(default)]
    pub store: RawStore,
    #[serde(default)]
    pub scim: RawScim,
    #[serde(default)]
    pub reconcile: RawReconcile,
    #[serde(default)]
    pub log: RawLog,
    #[serde(default)]
    pub targets: Vec<crate::config::target::RawTarget>,
}

/// `[server]`: the SCIM listener.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    #[serde(default = "default_listen")]
    pub listen: String,
    #[serde(default = "default_base_path")]
    pub base_path: String,
    /// Public base URL used in `meta.location` (e.g. `https://scim.example.com/scim/v2`);
    /// empty: derived from the request's Host header.
    #[serde(default)]
    pub public_url: String,
    #[serde(default)]
    pub tls_cert_file: String,
    #[serde(default)]
    pub tls_key_file: String,
    #[serde(default = "default_max_body_users")]
    pub max_body_users: u64,
    #[serde(default = "default_max_body_groups")]
    pub max_body_groups: u64,
    #[serde(default = "default_header_timeout")]
    pub header_timeout_secs: u64,
    #[serde(default = "default_request_timeout")]
    pub request_timeout_secs: u64,
    /// How long a request body may take to arrive once its headers are in (408 after).
    #[serde(default = "default_body_timeout")]
    pub body_timeout_secs: u64,
    /// How long a connection may sit with no request in flight once it has sent one (HTTP/2;
    /// an idle HTTP/1 connection is closed after `header_timeout_secs`).
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_secs: u64,
    #[serde(default = "default_max_connections")]
    pub max_connections: u64,
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace_secs: u64,
}

fn default_listen() -> String {
    "127.0.0.1:8443".into()
}
fn default_base_path() -> String {
    "/scim/v2".into()
}
fn default_max_body_users() -> u64 {
    1024 * 1024
}
fn default_max_body_groups() -> u64 {
    16 * 1024 * 1024
}
fn default_header_timeout() -> u64 {
    10
}
fn default_request_timeout() -> u64 {
    30
}
fn default_body_timeout() -> u64 {
    10
}
fn default_idle_timeout() -> u64 {
    60
}
fn default_max_connections() -> u64 {
    1024
}
fn default_shutdown_grace() -> u64 {
    10
}

impl Default for RawServer {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            base_path: default_base_path(),
            public_url: String::new(),
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
            max_body_users: default_max_body_users(),
            max_body_groups: default_max_body_groups(),
            header_timeout_secs: default_header_timeout(),
            request_timeout_secs: default_request_timeout(),
            body_timeout_secs: default_body_timeout(),
            idle_timeout_secs: default_idle_timeout(),
            max_connections: default_max_connections(),
            shutdown_grace_secs: default_shutdown_grace(),
        }
    }
}

/// `[admin]`: metrics and health listener.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// Empty disables the admin listener.
    #[serde(default = "default_admin_listen")]
    pub listen: String,
    /// Connections served at once; more are refused. Timeouts are the `[server]` ones.
    #[serde(default = "default_admin_max_connections")]
    pub max_connections: u64,
}

fn default_admin_max_connections() -> u64 {
    64
}

fn default_admin_listen() -> String {
    "127.0.0.1:9464".into()
}

impl Default for RawAdmin {
    fn default() -> Self {
        Self {
            listen: default_admin_listen(),
            max_connections: default_admin_max_connections(),
        }
    }
}

/// `[store]`: the database.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    #[serde(default = "default_store_url")]
    pub url: String,
    /// File holding the PostgreSQL password (never inline).
    #[serde(default)]
    pub password_file: String,
    /// Environment variable holding the PostgreSQL password.
    #[serde(default)]
    pub password_env: String,
    #[serde(default = "default_pool_size")]
    pub pool_size: u32,
    #[serde(default = "default_busy_timeout")]
    pub busy_timeout_ms: u64,
}

fn default_store_url() -> String {
    "sqlite:///var/lib/scim-sync/scim-sync.db".into()
}
fn default_pool_size() -> u32 {
    8
}
fn default_busy_timeout() -> u64 {
    5000
}

impl Default for RawStore {
    fn default() -> Self {
        Self {
            url: default_store_url(),
            password_file: String::new(),
            password_env: String::new(),
            pool_size: default_pool_size(),
            busy_timeout_ms: default_busy_timeout(),
        }
    }
}

/// `[scim]`: protocol settings.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawScim {
    /// User extension schema URNs besides the enterprise one.
    #[serde(default)]
    pub user_extensions: Vec<String>,
    /// Attribute definitions of declared user extensions, by URN (each one of
    /// `user_extensions`): `/Schemas` describes them and only they are accepted under it.
    #[serde(default)]
    pub extension_attributes: std::collections::BTreeMap<String, Vec<RawExtensionAttr>>,
    #[serde(default = "default_max_filter_len")]
    pub max_filter_length: usize,
    #[serde(default = "default_max_filter_depth")]
    pub max_filter_depth: usize,
    #[serde(default = "default_max_page")]
    pub max_page_size: u64,
    #[serde(default = "default_max_ops")]
    pub max_patch_operations: usize,
    /// Operations per `POST /Bulk` (413 above; 0 turns Bulk off).
    #[serde(default = "default_bulk_ops")]
    pub bulk_max_operations: usize,
    /// Largest `POST /Bulk` body in bytes (413 above).
    #[serde(default = "default_bulk_payload")]
    pub bulk_max_payload_bytes: u64,
    /// Longest string value (and attribute name) in a User or Group, in bytes (400 naming the
    /// attribute above it).
    #[serde(default = "default_max_value_bytes")]
    pub max_value_bytes: usize,
    /// `off` (drop passwords), `ssha512` or `argon2` (hash at once, for LDAP `userPassword`).
    #[serde(default = "default_password_sync")]
    pub password_sync: String,
}

/// One attribute of a declared extension (`[[scim.extension_attributes."<urn>"]]`), spelt as
/// RFC 7643 §7 spells its characteristics.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawExtensionAttr {
    pub name: String,
    /// `string` (default), `boolean`, `decimal`, `integer`, `dateTime`, `reference`, `binary`.
    #[serde(rename = "type", default = "default_attr_type")]
    pub ty: String,
    #[serde(rename = "multiValued", default)]
    pub multi_valued: bool,
    #[serde(rename = "caseExact", default)]
    pub case_exact: bool,
    /// `readWrite` (default), `readOnly`, `writeOnly`, `immutable`.
    #[serde(default = "default_mutability")]
    pub mutability: String,
    /// `default` (default), `always`, `never`, `request`.
    #[serde(default = "default_returned")]
    pub returned: String,
}

fn default_attr_type() -> String {
    "string".into()
}
fn default_mutability() -> String {
    "readWrite".into()
}
fn default_returned() -> String {
    "default".into()
}

fn default_max_filter_len() -> usize {
    4096
}
fn default_max_filter_depth() -> usize {
    32
}
fn default_max_page() -> u64 {
    1000
}
fn default_max_ops() -> usize {
    1000
}
fn default_bulk_ops() -> usize {
    1000
}
fn default_bulk_payload() -> u64 {
    1_048_576
}
fn default_max_value_bytes() -> usize {
    8192
}
fn default_password_sync() -> String {
    "off".into()
}

impl Default for RawScim {
    fn default() -> Self {
        Self {
            user_extensions: Vec::new(),
            extension_attributes: std::collections::BTreeMap::new(),
            max_filter_length: default_max_filter_len(),
            max_filter_depth: default_max_filter_depth(),
            max_page_size: default_max_page(),
            max_patch_operations: default_max_ops(),
            bulk_max_operations: default_bulk_ops(),
            bulk_max_payload_bytes: default_bulk_payload(),
            max_value_bytes: default_max_value_bytes(),
            password_sync: default_password_sync(),
        }
    }
}

/// `[reconcile]`: the workers.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawReconcile {
    /// Concurrent applies per target.
    #[serde(default = "default_workers")]
    pub workers: u32,
    #[serde(default = "default_poll_ms")]
    pub poll_interval_ms: u64,
    /// Attempts before a permanent failure becomes a dead letter.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    #[serde(default = "default_backoff_base")]
    pub backoff_base_ms: u64,
    #[serde(default = "default_backoff_max")]
    pub backoff_max_ms: u64,
    /// How long a claimed row stays exclusive before another worker may take it.
    #[serde(default = "default_lease")]
    pub lease_secs: u64,
    /// Run a full drift repair every N seconds; 0 = only on demand.
    #[serde(default)]
    pub full_interval_secs: u64,
    /// Recorded on this instance's outbox claims, so a restart releases its own at once;
    /// unset: the host name. Must differ between instances sharing a PostgreSQL store.
    #[serde(default)]
    pub instance_id: Option<String>,
    /// How often this instance renews its heartbeat in the store's instance registry.
    #[serde(default = "default_heartbeat")]
    pub heartbeat_secs: u64,
    /// How long after an instance's last heartbeat the other instances take its claims over
    /// (and it writes nothing more under them); unset: the larger of 15 and the longest
    /// target write (`connect_timeout_secs + timeout_secs`) plus twice `heartbeat_secs`.
    #[serde(default)]
    pub takeover_secs: Option<u64>,
}

fn default_heartbeat() -> u64 {
    2
}

fn default_workers() -> u32 {
    4
}
fn default_poll_ms() -> u64 {
    1000
}
fn default_max_attempts() -> u32 {
    5
}
fn default_backoff_base() -> u64 {
    500
}
fn default_backoff_max() -> u64 {
    300_000
}
fn default_lease() -> u64 {
    120
}

impl Default for RawReconcile {
    fn default() -> Self {
        Self {
            workers: default_workers(),
            poll_interval_ms: default_poll_ms(),
            max_attempts: default_max_attempts(),
            backoff_base_ms: default_backoff_base(),
            backoff_max_ms: default_backoff_max(),
            lease_secs: default_lease(),
            full_interval_secs: 0,
            instance_id: None,
            heartbeat_secs: default_heartbeat(),
            takeover_secs: None,
        }
    }
}

/// `[log]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    /// `human` (no timestamps: journald adds them) or `json`.
    #[serde(default = "default_log_format")]
    pub format: String,
    /// An `EnvFilter` directive, e.g. `info` or `scim_sync=debug`. `RUST_LOG` wins when set.
    #[serde(default = "default_log_level")]
    pub level: String,
}

fn default_log_format() -> String {
    "human".into()
}
fn default_log_level() -> String {
    "info".into()
}

impl Default for RawLog {
    fn default() -> Self {
        Self {
            format: default_log_format(),
            level: default_log_level(),
        }
    }
}
