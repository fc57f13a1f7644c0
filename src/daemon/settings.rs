//! Validation: the raw config becomes the runtime settings with a pure function (no I/O but
//! reading secret files). Every problem is reported, each naming its key. Sections with a
//! module of their own are validated there (`reconcile::settings`, each target's
//! `from_raw` and the mapping's `compile`); this file assembles them and checks the HTTP,
//! store and log sections.

use crate::config::load::ConfigError;
use crate::config::raw::RawConfig;
use crate::config::secret::read_secret;
use crate::http::password::PasswordSync;
use crate::http::server::ConnLimits;
use crate::http::HttpSettings;
use crate::reconcile::settings::write_secs;
pub use crate::reconcile::settings::ReconcileSettings;
use crate::scim::filter::FilterLimits;
use crate::store::StoreSettings;
use std::net::SocketAddr;
use std::time::Duration;

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
    errors.extend(extension_attribute_errors(&raw.scim));
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
    let reconcile = crate::reconcile::settings::from_raw(&raw.reconcile, &raw.targets)
        .map_err(|e| errors.extend(e))
        .ok();
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
    let schemas = crate::mapping::Schemas::from_set(&schema_set(&raw.scim));
    for (i, t) in raw.targets.iter().enumerate() {
        if let Err(errs) = crate::targets::build_with(t, i, &schemas) {
            errors.extend(
                errs.into_iter()
                    .map(|e| ConfigError::invalid(e.key, e.message)),
            );
        }
    }
    let (Some(listen), Some(reconcile), true) = (listen, reconcile, errors.is_empty()) else {
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
            bulk_max_operations: raw.scim.bulk_max_operations,
            bulk_max_payload_bytes: raw.scim.bulk_max_payload_bytes,
            password_sync,
            schemas: schema_set(&raw.scim),
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
        reconcile,
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

/// `[scim.extension_attributes]`: each URN one of `user_extensions` (not the enterprise one,
/// whose attributes RFC 7643 defines), each attribute a valid, unique name with RFC 7643 §7
/// characteristics.
fn extension_attribute_errors(scim: &crate::config::raw::RawScim) -> Vec<ConfigError> {
    use crate::scim::schema::{ENTERPRISE_USER, EXTENSION_TYPES, MUTABILITIES, RETURNED};
    let mut errors = Vec::new();
    for (urn, attrs) in &scim.extension_attributes {
        let key = format!("scim.extension_attributes.\"{urn}\"");
        if urn.eq_ignore_ascii_case(ENTERPRISE_USER) {
            errors.push(ConfigError::invalid(
                key.clone(),
                "the enterprise extension's attributes are defined by RFC 7643 and cannot be redeclared",
            ));
            continue;
        }
        if !scim
            .user_extensions
            .iter()
            .any(|u| u.eq_ignore_ascii_case(urn))
        {
            errors.push(ConfigError::invalid(
                key.clone(),
                "names a URN that is not in [scim] user_extensions; declare it there too",
            ));
        }
        let mut seen: Vec<String> = Vec::new();
        for (i, a) in attrs.iter().enumerate() {
            let at = |field: &str| format!("{key}[{i}].{field}");
            let mut chars = a.name.chars();
            let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                && a.name.len() <= 128;
            if !valid {
                errors.push(ConfigError::invalid(
                    at("name"),
                    "must be an attribute name (a letter, then letters, digits, - or _)",
                ));
            } else if seen.iter().any(|n| n.eq_ignore_ascii_case(&a.name)) {
                errors.push(ConfigError::invalid(
                    at("name"),
                    "is declared twice (attribute names are case-insensitive)",
                ));
            }
            seen.push(a.name.clone());
            let one_of =
                |field: &str, value: &str, allowed: &[&str], errors: &mut Vec<ConfigError>| {
                    if !allowed.contains(&value) {
                        errors.push(ConfigError::invalid(
                            at(field),
                            format!("must be one of {}", allowed.join(", ")),
                        ));
                    }
                };
            one_of("type", &a.ty, EXTENSION_TYPES, &mut errors);
            one_of("mutability", &a.mutability, MUTABILITIES, &mut errors);
            one_of("returned", &a.returned, RETURNED, &mut errors);
        }
    }
    errors
}

/// The schemas `[scim]` declares (URNs and attribute definitions), as served.
pub fn schema_set(scim: &crate::config::raw::RawScim) -> crate::scim::schema::SchemaSet {
    let attributes = scim
        .extension_attributes
        .iter()
        .map(|(urn, attrs)| {
            let canonical = scim
                .user_extensions
                .iter()
                .find(|u| u.eq_ignore_ascii_case(urn))
                .cloned()
                .unwrap_or_else(|| urn.clone());
            let defs = attrs
                .iter()
                .map(|a| crate::scim::schema::ExtensionAttr {
                    name: a.name.clone(),
                    ty: a.ty.clone(),
                    multi_valued: a.multi_valued,
                    case_exact: a.case_exact,
                    mutability: a.mutability.clone(),
                    returned: a.returned.clone(),
                })
                .collect();
            (canonical, defs)
        })
        .collect();
    crate::scim::schema::SchemaSet::with_attributes(scim.user_extensions.clone(), attributes)
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

    #[test]
    fn a_typo_in_a_scim_path_is_refused_at_load_naming_key_line_and_suggestion() {
        // Issue 13: these passed check-config and blanked the columns for every user.
        let text = r#"[[targets]]
name = "app"
type = "sql"
url = "sqlite:///x.db"
[targets.users]
table = "users"
key_column = "login"
key = "userName"
[targets.users.columns]
job_title = "tittle"
first_name = "name.givenNam"
dept_code = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:departement"
"#;
        let raw = parse("c.toml", text, &[]).unwrap();
        let errs: Vec<String> = from_raw(&raw)
            .unwrap_err()
            .into_iter()
            .map(|e| e.in_file("c.toml", text).to_string())
            .collect();
        assert_eq!(
            errs,
            [
                "c.toml:12: targets[0].users.columns.dept_code: unknown SCIM attribute `urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:departement` (enterprise User extension); did you mean `urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department`?",
                "c.toml:11: targets[0].users.columns.first_name: unknown SCIM attribute `name.givenNam` (User schema); did you mean `name.givenName`?",
                "c.toml:10: targets[0].users.columns.job_title: unknown SCIM attribute `tittle` (User schema); did you mean `title`?",
            ]
        );
        // The same paths spelled right load.
        let fixed = text
            .replace("\"tittle\"", "\"title\"")
            .replace("givenNam\"", "givenName\"")
            .replace("departement", "department");
        from_raw(&parse("c.toml", &fixed, &[]).unwrap()).unwrap();
    }

    #[test]
    fn a_custom_extension_is_mappable_once_declared() {
        let target = "[[targets]]\nname = \"app\"\ntype = \"sql\"\nurl = \"sqlite:///x.db\"\n[targets.users]\ntable = \"users\"\nkey_column = \"login\"\nkey = \"userName\"\n[targets.users.columns]\nlevel = \"urn:ietf:params:scim:schemas:extension:ironclad:2.0:User:managementLevel\"\n";
        let errs = from_raw(&parse("c.toml", target, &[]).unwrap()).unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].key, "targets[0].users.columns.level");
        assert!(
            errs[0].message.contains("[scim] user_extensions"),
            "{errs:?}"
        );
        let declared = format!("[scim]\nuser_extensions = [\"urn:ietf:params:scim:schemas:extension:ironclad:2.0:User\"]\n{target}");
        from_raw(&parse("c.toml", &declared, &[]).unwrap()).unwrap();
    }

    #[test]
    fn declared_extension_attributes_are_validated_and_mapped() {
        let urn = "urn:ietf:params:scim:schemas:extension:ironclad:2.0:User";
        let target = format!("[[targets]]\nname = \"app\"\ntype = \"sql\"\nurl = \"sqlite:///x.db\"\n[targets.users]\ntable = \"users\"\nkey_column = \"login\"\nkey = \"userName\"\n[targets.users.columns]\nlevel = \"{urn}:managementLevl\"\n");
        let scim = format!("[scim]\nuser_extensions = [\"{urn}\"]\n[[scim.extension_attributes.\"{urn}\"]]\nname = \"managementLevel\"\n[[scim.extension_attributes.\"{urn}\"]]\nname = \"1bad\"\ntype = \"text\"\nmutability = \"sometimes\"\nreturned = \"maybe\"\n[[scim.extension_attributes.\"{urn}\"]]\nname = \"MANAGEMENTLEVEL\"\n[[scim.extension_attributes.\"urn:x:y:2.0:User\"]]\nname = \"a\"\n");
        let errs =
            from_raw(&parse("c.toml", &format!("{scim}{target}"), &[]).unwrap()).unwrap_err();
        let keys: Vec<&str> = errs.iter().map(|e| e.key.as_str()).collect();
        let ext = format!("scim.extension_attributes.\"{urn}\"");
        assert_eq!(
            keys,
            [
                format!("{ext}[1].name"),
                format!("{ext}[1].type"),
                format!("{ext}[1].mutability"),
                format!("{ext}[1].returned"),
                format!("{ext}[2].name"),
                "scim.extension_attributes.\"urn:x:y:2.0:User\"".to_string(),
                "targets[0].users.columns.level".to_string(),
            ],
            "{errs:?}"
        );
        assert!(errs[6].message.contains("did you mean"), "{errs:?}");
        let good = format!("[scim]\nuser_extensions = [\"{urn}\"]\n[[scim.extension_attributes.\"{urn}\"]]\nname = \"managementLevel\"\n{}", target.replace("managementLevl", "managementLevel"));
        let settings = from_raw(&parse("c.toml", &good, &[]).unwrap()).unwrap();
        assert_eq!(
            settings.http.schemas.extension_defs(urn).map(|d| d.len()),
            Some(1)
        );
    }

    /// Every config shipped in the repo loads with the strict parser and every path of its
    /// mappings is served: `etc/` (the demo's config is `etc/scim-sync.toml`) and the TOML
    /// examples in `docs/` that hold a whole `[[targets]]` entry.
    #[test]
    fn every_config_in_the_repo_loads_and_maps_only_served_attributes() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut files: Vec<(String, String)> = Vec::new();
        let mut dirs = vec![root.join("etc")];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "toml") {
                    files.push((
                        path.display().to_string(),
                        std::fs::read_to_string(&path).unwrap(),
                    ));
                }
            }
        }
        for entry in std::fs::read_dir(root.join("docs")).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            for (n, block) in text.split("```toml\n").skip(1).enumerate() {
                let block = block.split("```").next().unwrap_or("");
                if block.contains("[[targets]]") {
                    files.push((format!("{} block {n}", path.display()), block.to_owned()));
                }
            }
        }
        assert!(files.len() >= 5, "{files:?}");
        for (name, text) in &files {
            let raw = parse(name, text, &[]).unwrap_or_else(|e| panic!("{name}: {e:?}"));
            let schemas = crate::mapping::Schemas::new(&raw.scim.user_extensions);
            for (i, t) in raw.targets.iter().enumerate() {
                crate::mapping::CompiledTarget::compile_with(t, i, &schemas)
                    .unwrap_or_else(|e| panic!("{name}: {e:?}"));
            }
        }
    }
}
