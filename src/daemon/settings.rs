//! Validation: the raw config becomes the runtime settings with a pure function (no I/O but
//! reading secret files). Every problem is reported, each naming its key.

use crate::config::load::ConfigError;
use crate::config::raw::RawConfig;
use crate::config::secret::read_secret;
use crate::http::password::PasswordSync;
use crate::http::server::ConnLimits;
use crate::http::HttpSettings;
use crate::scim::filter::FilterLimits;
use crate::scim::schema::SchemaSet;
use crate::store::StoreSettings;
use std::net::SocketAddr;
use std::time::Duration;

/// Reconciler settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ReconcileSettings {
    pub workers: u32,
    pub poll_interval: Duration,
    pub max_attempts: u32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub lease: Duration,
    pub full_interval: Option<Duration>,
}

/// Everything the daemon runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub admin_listen: Option<SocketAddr>,
    /// (cert file, key file) when TLS is on.
    pub tls: Option<(String, String)>,
    pub http: HttpSettings,
    pub limits: ConnLimits,
    pub store: StoreSettings,
    pub reconcile: ReconcileSettings,
    pub log_format: String,
    pub log_level: String,
    pub raw: RawConfig,
}

/// The longest one target write can take, in seconds: a connect (and bind) and then the
/// operation (`connect_timeout_secs + timeout_secs`).
fn write_secs(t: &crate::config::target::RawTarget) -> u64 {
    match t {
        crate::config::target::RawTarget::Ldap(l) => {
            l.connect_timeout_secs.saturating_add(l.timeout_secs)
        }
        crate::config::target::RawTarget::Sql(s) => {
            s.connect_timeout_secs.saturating_add(s.timeout_secs)
        }
    }
}

impl Settings {
    /// The longest one write of any target can take (`connect_timeout_secs + timeout_secs`):
    /// how long a write a killed process sent may still land, so rows released at startup
    /// wait that long.
    #[must_use]
    pub fn longest_write(&self) -> Duration {
        Duration::from_secs(self.raw.targets.iter().map(write_secs).max().unwrap_or(0))
    }
}

fn addr(key: &str, value: &str, errors: &mut Vec<ConfigError>) -> Option<SocketAddr> {
    match value.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            errors.push(ConfigError::invalid(
                key,
                format!("`{value}` is not an address:port (e.g. 127.0.0.1:8443)"),
            ));
            None
        }
    }
}

/// Validate a raw config.
///
/// # Errors
/// Every problem found, each naming its key.
pub fn from_raw(raw: &RawConfig) -> Result<Settings, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let listen = addr("server.listen", &raw.server.listen, &mut errors);
    let admin_listen = if raw.admin.listen.is_empty() {
        None
    } else {
        addr("admin.listen", &raw.admin.listen, &mut errors)
    };
    let base = raw.server.base_path.trim_end_matches('/').to_string();
    if !base.starts_with('/') || base.contains(['?', '#', ' ']) {
        errors.push(ConfigError::invalid(
            "server.base_path",
            "must start with / and be a plain path (e.g. /scim/v2)",
        ));
    }
    let public_url = raw.server.public_url.trim_end_matches('/').to_string();
    if !(public_url.is_empty()
        || public_url.starts_with("https://")
        || public_url.starts_with("http://"))
    {
        errors.push(ConfigError::invalid(
            "server.public_url",
            "must be an http:// or https:// URL",
        ));
    }
    let tls = match (
        raw.server.tls_cert_file.is_empty(),
        raw.server.tls_key_file.is_empty(),
    ) {
        (true, true) => None,
        (false, false) => Some((
            raw.server.tls_cert_file.clone(),
            raw.server.tls_key_file.clone(),
        )),
        _ => {
            errors.push(ConfigError::invalid(
                "server.tls_cert_file",
                "tls_cert_file and tls_key_file go together",
            ));
            None
        }
    };
    for (key, v) in [
        ("server.max_body_users", raw.server.max_body_users),
        ("server.max_body_groups", raw.server.max_body_groups),
        ("server.header_timeout_secs", raw.server.header_timeout_secs),
        (
            "server.request_timeout_secs",
            raw.server.request_timeout_secs,
        ),
        ("server.max_connections", raw.server.max_connections),
        ("server.body_timeout_secs", raw.server.body_timeout_secs),
        ("server.idle_timeout_secs", raw.server.idle_timeout_secs),
        ("admin.max_connections", raw.admin.max_connections),
        (
            "scim.max_value_bytes",
            u64::try_from(raw.scim.max_value_bytes).unwrap_or(u64::MAX),
        ),
    ] {
        if v == 0 {
            errors.push(ConfigError::invalid(key, "must be greater than 0"));
        }
    }
    let password_sync = PasswordSync::parse(&raw.scim.password_sync).unwrap_or_else(|| {
        errors.push(ConfigError::invalid(
            "scim.password_sync",
            "must be off, ssha512 or argon2",
        ));
        PasswordSync::Off
    });
    if raw.scim.max_filter_depth == 0 || raw.scim.max_filter_depth > 256 {
        errors.push(ConfigError::invalid(
            "scim.max_filter_depth",
            "must be between 1 and 256",
        ));
    }
    if raw.scim.max_page_size == 0 {
        errors.push(ConfigError::invalid(
            "scim.max_page_size",
            "must be greater than 0",
        ));
    }
    for (i, urn) in raw.scim.user_extensions.iter().enumerate() {
        if !urn.starts_with("urn:") {
            errors.push(ConfigError::invalid(
                format!("scim.user_extensions[{i}]"),
                "must be a URN (urn:...)",
            ));
        }
    }
    if !matches!(raw.log.format.as_str(), "human" | "json") {
        errors.push(ConfigError::invalid("log.format", "must be human or json"));
    }
    if tracing_subscriber::EnvFilter::try_new(&raw.log.level).is_err() {
        errors.push(ConfigError::invalid(
            "log.level",
            "is not a valid level directive (e.g. info, scim_sync=debug)",
        ));
    }
    if !(raw.store.url.starts_with("sqlite:")
        || raw.store.url.starts_with("postgres://")
        || raw.store.url.starts_with("postgresql://"))
    {
        errors.push(ConfigError::invalid(
            "store.url",
            "must start with sqlite: or postgres://",
        ));
    }
    let store_password = match read_secret(
        "store.password_file",
        &raw.store.password_file,
        &raw.store.password_env,
    ) {
        Ok(p) => p,
        Err(e) => {
            errors.push(e);
            None
        }
    };
    if raw.reconcile.workers == 0 {
        errors.push(ConfigError::invalid(
            "reconcile.workers",
            "must be at least 1",
        ));
    }
    // A target write starts only while its timeout remains on the claim's lease (checked once
    // the connection is up, which may take connect_timeout), and the heartbeat renews the
    // lease every lease/3: a lease under twice a connect and a write would leave too little.
    for t in &raw.targets {
        let write = write_secs(t);
        if raw.reconcile.lease_secs < write.saturating_mul(2) {
            errors.push(ConfigError::invalid(
                "reconcile.lease_secs",
                format!(
                    "must be at least twice the connect_timeout_secs + timeout_secs of target {} ({write}): a write starts only while its timeout remains on the lease",
                    t.name()
                ),
            ));
        }
    }
    if let Some(id) = &raw.reconcile.instance_id {
        if id.trim().is_empty() || id.len() > 200 || id.chars().any(char::is_control) {
            errors.push(ConfigError::invalid(
                "reconcile.instance_id",
                "must be 1 to 200 printable characters",
            ));
        }
    }
    if raw.reconcile.max_attempts == 0 {
        errors.push(ConfigError::invalid(
            "reconcile.max_attempts",
            "must be at least 1",
        ));
    }
    if raw.reconcile.backoff_base_ms == 0
        || raw.reconcile.backoff_max_ms < raw.reconcile.backoff_base_ms
    {
        errors.push(ConfigError::invalid(
            "reconcile.backoff_max_ms",
            "needs 0 < backoff_base_ms <= backoff_max_ms",
        ));
    }
    let mut names = std::collections::BTreeSet::new();
    for (i, t) in raw.targets.iter().enumerate() {
        if !names.insert(t.name().to_owned()) {
            errors.push(ConfigError::invalid(
                format!("targets[{i}].name"),
                format!("duplicate target name `{}`", t.name()),
            ));
        }
        if t.name().is_empty()
            || !t
                .name()
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            errors.push(ConfigError::invalid(
                format!("targets[{i}].name"),
                "use letters, digits, - and _ only",
            ));
        }
    }
    // The mapping and target settings are validated (and dropped) here so `check-config`
    // reports every mapping error; `Daemon::start` builds them again for use.
    for (i, t) in raw.targets.iter().enumerate() {
        if let Err(errs) = crate::targets::build(t, i) {
            errors.extend(
                errs.into_iter()
                    .map(|e| ConfigError::invalid(e.key, e.message)),
            );
        }
    }
    let (Some(listen), true) = (listen, errors.is_empty()) else {
        return Err(errors);
    };
    Ok(Settings {
        listen,
        admin_listen,
        tls,
        http: HttpSettings {
            base_path: base,
            public_url: (!public_url.is_empty()).then_some(public_url),
            max_body_users: raw.server.max_body_users,
            max_body_groups: raw.server.max_body_groups,
            request_timeout: Duration::from_secs(raw.server.request_timeout_secs),
            body_timeout: Duration::from_secs(raw.server.body_timeout_secs),
            max_value_bytes: raw.scim.max_value_bytes,
            filter_limits: FilterLimits {
                max_len: raw.scim.max_filter_length,
                max_depth: raw.scim.max_filter_depth,
            },
            max_page_size: raw.scim.max_page_size,
            max_patch_operations: raw.scim.max_patch_operations,
            password_sync,
            schemas: SchemaSet::new(raw.scim.user_extensions.clone()),
        },
        limits: ConnLimits {
            header_timeout: Duration::from_secs(raw.server.header_timeout_secs),
            max_connections: usize::try_from(raw.server.max_connections).unwrap_or(usize::MAX),
            admin_max_connections: usize::try_from(raw.admin.max_connections).unwrap_or(usize::MAX),
            idle_timeout: Duration::from_secs(raw.server.idle_timeout_secs),
            shutdown_grace: Duration::from_secs(raw.server.shutdown_grace_secs),
        },
        store: StoreSettings {
            url: raw.store.url.clone(),
            password: store_password.map(|s| s.expose().to_string()),
            pool_size: raw.store.pool_size.max(1),
            busy_timeout_ms: raw.store.busy_timeout_ms,
            instance_lock: false,
            // Empty: the daemon fills in the host name at start (`daemon::default_instance_id`).
            instance_id: raw.reconcile.instance_id.clone().unwrap_or_default(),
        },
        reconcile: ReconcileSettings {
            workers: raw.reconcile.workers,
            poll_interval: Duration::from_millis(raw.reconcile.poll_interval_ms.max(10)),
            max_attempts: raw.reconcile.max_attempts,
            backoff_base: Duration::from_millis(raw.reconcile.backoff_base_ms),
            backoff_max: Duration::from_millis(raw.reconcile.backoff_max_ms),
            lease: Duration::from_secs(raw.reconcile.lease_secs.max(1)),
            full_interval: (raw.reconcile.full_interval_secs > 0)
                .then(|| Duration::from_secs(raw.reconcile.full_interval_secs)),
        },
        log_format: raw.log.format.clone(),
        log_level: raw.log.level.clone(),
        raw: raw.clone(),
    })
}

impl Settings {
    /// The configured target names, in order (what every mutation queues for).
    #[must_use]
    pub fn target_names(&self) -> Vec<String> {
        self.raw
            .targets
            .iter()
            .map(|t| t.name().to_owned())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load::parse;

    #[test]
    fn defaults_validate() {
        let raw = parse("c.toml", "", &[]).unwrap();
        let s = from_raw(&raw).unwrap();
        assert_eq!(s.http.base_path, "/scim/v2");
        assert_eq!(s.http.password_sync, PasswordSync::Off);
    }

    #[test]
    fn target_mapping_and_settings_errors_are_reported_with_their_keys() {
        let raw = parse(
            "c.toml",
            "[[targets]]\nname = \"corp\"\ntype = \"ldap\"\nurl = \"http://x\"\n[targets.users]\ndn = \"uid={userName\"\nobject_classes = [\"inetOrgPerson\"]\n[targets.users.attributes]\ncn = { from = \"name\", transform = [\"lowr\"] }\n",
            &[],
        )
        .unwrap();
        let errs = from_raw(&raw).unwrap_err();
        let keys: Vec<&str> = errs.iter().map(|e| e.key.as_str()).collect();
        assert!(keys.contains(&"targets[0].url"), "{keys:?}");
        assert!(
            keys.iter().any(|k| k.starts_with("targets[0].users.dn")),
            "{keys:?}"
        );
        assert!(
            keys.iter()
                .any(|k| k.starts_with("targets[0].users.attributes.cn")),
            "{keys:?}"
        );
    }

    #[test]
    fn a_lease_shorter_than_twice_a_target_connect_and_write_and_a_blank_instance_id_are_refused() {
        let target = "[[targets]]\nname = \"corp\"\ntype = \"ldap\"\nurl = \"ldap://127.0.0.1:1\"\nconnect_timeout_secs = 5\ntimeout_secs = 25\n[targets.users]\ndn = \"uid={userName},dc=x\"\nobject_classes = [\"inetOrgPerson\"]\n";
        let raw = parse(
            "c.toml",
            &format!("[reconcile]\nlease_secs = 59\ninstance_id = \" \"\n{target}"),
            &[],
        )
        .unwrap();
        let errs = from_raw(&raw).unwrap_err();
        let keys: Vec<&str> = errs.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["reconcile.lease_secs", "reconcile.instance_id"]);
        let raw = parse(
            "c.toml",
            &format!("[reconcile]\nlease_secs = 60\ninstance_id = \"a\"\n{target}"),
            &[],
        )
        .unwrap();
        assert_eq!(from_raw(&raw).unwrap().store.instance_id, "a");
    }

    #[test]
    fn every_error_is_reported_with_its_key() {
        let raw = parse(
            "c.toml",
            "[server]\nlisten = \"nope\"\nbase_path = \"scim\"\n[scim]\npassword_sync = \"plain\"\n[log]\nformat = \"xml\"\n",
            &[],
        )
        .unwrap();
        let errs = from_raw(&raw).unwrap_err();
        let keys: Vec<&str> = errs.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "server.listen",
                "server.base_path",
                "scim.password_sync",
                "log.format"
            ]
        );
    }
}
