//! The validated runtime settings of an LDAP target, built from `config::target` by a pure
//! function that reports every problem with its key. Must not read files or the environment
//! (the password and CA file are read when the target is built, in `conn.rs`).

use super::flavour::Flavour;
use crate::config::target::{
    DeactivatePolicy, MemberValue, OnDelete, OnExisting, PasswordMode, RawLdapTarget,
};
use crate::mapping::dn::{parse_dn, split_rdn};
use crate::mapping::ConfigError;
use crate::targets::PasswordSource;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// Deactivation settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deactivate {
    /// What `active = false` does.
    pub policy: DeactivatePolicy,
    /// Lower-cased attribute -> values set while disabled.
    pub set: BTreeMap<String, Vec<String>>,
    /// Parent DN for the `move` policy.
    pub move_to: Option<String>,
    /// AD (`flavour = "ad"`, policy `disable` without `set`): disable by the
    /// `userAccountControl` bit `ACCOUNTDISABLE`, every other bit kept.
    pub account_control: bool,
    /// Inactive users leave their role groups (SCIM groups: the reconciler leaves them out).
    pub remove_from_groups: bool,
}

/// User settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserSettings {
    /// Lower-cased mapped attribute names (the only ones read and written).
    pub attributes: Vec<String>,
    /// `None`: inactive users only get their attributes updated.
    pub deactivate: Option<Deactivate>,
    /// What a SCIM DELETE does.
    pub on_delete: OnDelete,
    /// Password sync.
    pub password: PasswordMode,
    /// The static parent of the DN template, if it has no variables (healthcheck reads it).
    pub base: Option<String>,
}

/// Group settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSettings {
    /// Lower-cased mapped attribute names.
    pub attributes: Vec<String>,
    /// Lower-cased member attribute.
    pub member_attribute: String,
    /// How members are identified.
    pub member_value: MemberValue,
    /// Written when the group would be empty.
    pub placeholder_member: Option<String>,
}

/// Validated LDAP target settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Target name.
    pub name: String,
    /// `ldap://` or `ldaps://` URL.
    pub url: String,
    /// The configured directory flavour (`None`: detected from the root DSE at connect).
    pub flavour: Option<Flavour>,
    /// StartTLS on an `ldap://` URL.
    pub starttls: bool,
    /// CA certificates (PEM) to trust.
    pub ca_file: Option<PathBuf>,
    /// Bind DN.
    pub bind_dn: Option<String>,
    /// Bind password source.
    pub bind_password: PasswordSource,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Per-operation timeout.
    pub timeout: Duration,
    /// Unmanaged entry at the desired DN.
    pub on_existing: OnExisting,
    /// Users.
    pub users: UserSettings,
    /// Groups (`None`: not provisioned).
    pub groups: Option<GroupSettings>,
}

impl Settings {
    /// Validate the `index`th `[[targets]]` entry. Pure; returns every problem at once.
    ///
    /// # Errors
    /// Every problem, each naming its full key.
    pub fn from_raw(raw: &RawLdapTarget, index: usize) -> Result<Settings, Vec<ConfigError>> {
        let base = format!("targets[{index}]");
        let mut errors = Vec::new();
        let mut err = |k: &str, m: String| errors.push(ConfigError::new(format!("{base}.{k}"), m));
        let lower_url = raw.url.to_ascii_lowercase();
        let ldaps = lower_url.starts_with("ldaps://");
        if !(ldaps || lower_url.starts_with("ldap://")) || raw.url.len() <= "ldaps://".len() {
            err(
                "url",
                format!(
                    "{:?} must be ldap://host[:port] or ldaps://host[:port]",
                    raw.url
                ),
            );
        }
        if ldaps && raw.starttls {
            err("starttls", "StartTLS cannot be used with ldaps://".into());
        }
        if raw.ca_file.is_some() && !ldaps && !raw.starttls {
            err(
                "ca_file",
                "is only used with ldaps:// or starttls = true".into(),
            );
        }
        if raw.connect_timeout_secs == 0 || raw.connect_timeout_secs > 600 {
            err("connect_timeout_secs", "must be between 1 and 600".into());
        }
        if raw.timeout_secs == 0 || raw.timeout_secs > 3600 {
            err("timeout_secs", "must be between 1 and 3600".into());
        }
        if let Some(dn) = &raw.bind_dn {
            if let Err(e) = parse_dn(dn) {
                err("bind_dn", e);
            }
        }
        let bind_password = match (&raw.bind_password_file, &raw.bind_password_env) {
            (Some(_), Some(_)) => {
                err(
                    "bind_password_env",
                    "set only one of bind_password_file and bind_password_env".into(),
                );
                PasswordSource::None
            }
            (Some(f), None) => PasswordSource::File(f.clone()),
            (None, Some(v)) => PasswordSource::Env(v.clone()),
            (None, None) => PasswordSource::None,
        };
        if bind_password != PasswordSource::None && raw.bind_dn.is_none() {
            err(
                "bind_dn",
                "a bind password is configured but no bind_dn".into(),
            );
        }
        let secrets = bind_password != PasswordSource::None
            || raw.users.password == crate::config::target::PasswordMode::Sync;
        if !ldaps && !raw.starttls && secrets && !raw.allow_plaintext && !is_loopback(&raw.url) {
            err(
                "url",
                format!(
                    "{:?} is plain LDAP to a non-loopback host, and this target sends the bind \
                     password or password hashes over it in clear: use ldaps:// or \
                     starttls = true, or set allow_plaintext = true to accept it",
                    raw.url
                ),
            );
        }
        if raw.bind_dn.is_some() && bind_password == PasswordSource::None {
            err(
                "bind_password_file",
                "bind_dn needs bind_password_file or bind_password_env".into(),
            );
        }
        if raw.flavour == Some(Flavour::Ad) && raw.users.password == PasswordMode::Sync {
            err(
                "users.password",
                "\"sync\" is refused for flavour = \"ad\": AD takes a password only as clear \
                 text (unicodePwd) and scim-sync never keeps one (it stores only a hash); \
                 set passwords in AD itself (docs/ad.md)"
                    .into(),
            );
        }
        let deactivate = raw.users.deactivate.as_ref().map(|d| {
            let mut set: BTreeMap<String, Vec<String>> = d
                .set
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.to_vec()))
                .collect();
            // `policy = "disable"` without `set`: the flavour's own way, when it is configured.
            let mut account_control = false;
            if d.policy == DeactivatePolicy::Disable && set.is_empty() {
                match raw.flavour {
                    Some(Flavour::Ad) => account_control = true,
                    Some(f) => set = f.default_disable_set().unwrap_or_default(),
                    None => {}
                }
            }
            for (k, v) in &set {
                if v.is_empty() || v.iter().any(String::is_empty) {
                    err(
                        &format!("users.deactivate.set.{k}"),
                        "needs non-empty values".into(),
                    );
                }
                if raw
                    .users
                    .attributes
                    .keys()
                    .any(|a| a.eq_ignore_ascii_case(k))
                {
                    err(
                        &format!("users.deactivate.set.{k}"),
                        "is also a mapped attribute".into(),
                    );
                }
            }
            match d.policy {
                DeactivatePolicy::Disable if set.is_empty() && !account_control => {
                    err(
                        "users.deactivate.set",
                        "policy \"disable\" needs attributes to set (or a flavour, whose \
                         own disable is used)"
                            .into(),
                    );
                }
                DeactivatePolicy::Move => match &d.move_to {
                    None => err(
                        "users.deactivate.move_to",
                        "policy \"move\" needs move_to".into(),
                    ),
                    Some(m) => match parse_dn(m) {
                        Ok(r) if !r.is_empty() => {}
                        Ok(_) => err("users.deactivate.move_to", "must not be empty".into()),
                        Err(e) => err("users.deactivate.move_to", e),
                    },
                },
                _ => {}
            }
            Deactivate {
                policy: d.policy,
                set,
                move_to: d.move_to.clone(),
                remove_from_groups: d.remove_from_groups,
                account_control,
            }
        });
        if raw.users.on_delete == OnDelete::Disable
            && deactivate.as_ref().is_none_or(|d| d.set.is_empty())
        {
            err(
                "users.on_delete",
                "\"disable\" needs users.deactivate.set".into(),
            );
        }
        let users_base = {
            let (_, parent) = split_rdn(&raw.users.dn);
            (!parent.contains('{') && parse_dn(&parent).is_ok()).then_some(parent)
        };
        let groups = raw.groups.as_ref().map(|g| {
            let member_attribute = g.member_attribute.to_ascii_lowercase();
            if !["member", "uniquemember", "memberuid"].contains(&member_attribute.as_str()) {
                err(
                    "groups.member_attribute",
                    "must be member, uniqueMember or memberUid".into(),
                );
            }
            if (member_attribute == "memberuid") != (g.member_value == MemberValue::Uid) {
                err(
                    "groups.member_value",
                    "memberUid takes \"uid\"; member and uniqueMember take \"dn\"".into(),
                );
            }
            if g.attributes
                .keys()
                .any(|a| a.eq_ignore_ascii_case(&member_attribute))
            {
                err(
                    "groups.attributes",
                    format!("{} is the member attribute", g.member_attribute),
                );
            }
            if let Some(p) = &g.placeholder_member {
                if g.member_value == MemberValue::Dn {
                    if let Err(e) = parse_dn(p) {
                        err("groups.placeholder_member", e);
                    }
                }
            }
            GroupSettings {
                attributes: g
                    .attributes
                    .keys()
                    .map(|k| k.to_ascii_lowercase())
                    .collect(),
                member_attribute,
                member_value: g.member_value,
                placeholder_member: g.placeholder_member.clone(),
            }
        });
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Settings {
            name: raw.name.clone(),
            url: raw.url.clone(),
            flavour: raw.flavour,
            starttls: raw.starttls,
            ca_file: raw.ca_file.clone(),
            bind_dn: raw.bind_dn.clone(),
            bind_password,
            connect_timeout: Duration::from_secs(raw.connect_timeout_secs),
            timeout: Duration::from_secs(raw.timeout_secs),
            on_existing: raw.on_existing,
            users: UserSettings {
                attributes: raw
                    .users
                    .attributes
                    .keys()
                    .map(|k| k.to_ascii_lowercase())
                    .collect(),
                deactivate,
                on_delete: raw.users.on_delete,
                password: raw.users.password,
                base: users_base,
            },
            groups,
        })
    }

    /// The member attribute used for role groups and groups (`member` by default).
    #[must_use]
    pub fn member_attribute(&self) -> &str {
        self.groups
            .as_ref()
            .map_or("member", |g| g.member_attribute.as_str())
    }
}

/// Whether an `ldap://` URL names the loopback interface (`localhost`, `127.0.0.0/8`, `::1`),
/// where clear text never leaves the machine.
fn is_loopback(url: &str) -> bool {
    let rest = url.get("ldap://".len()..).unwrap_or("");
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => authority.split(':').next().unwrap_or(""),
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::target::RawTarget;

    fn raw(extra: &str, users_extra: &str) -> RawLdapTarget {
        let text = format!(
            r#"
name = "corp"
type = "ldap"
url = "ldap://127.0.0.1:389"
{extra}
[users]
dn = "uid={{userName}},ou=People,dc=example,dc=com"
object_classes = ["inetOrgPerson"]
{users_extra}
"#
        );
        let RawTarget::Ldap(t) = toml::from_str::<RawTarget>(&text).unwrap() else {
            panic!("ldap")
        };
        t
    }

    fn errs(extra: &str, users_extra: &str) -> Vec<String> {
        Settings::from_raw(&raw(extra, users_extra), 1)
            .err()
            .unwrap_or_default()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn minimal_is_valid_and_has_defaults() {
        let s = Settings::from_raw(&raw("", ""), 0).unwrap();
        assert_eq!(s.timeout, Duration::from_secs(30));
        assert_eq!(s.users.base.as_deref(), Some("ou=People,dc=example,dc=com"));
        assert_eq!(s.member_attribute(), "member");
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let e = errs(
            "starttls = true\ntimeout_secs = 0\nbind_dn = \"cn=admin\"\nbind_password_file = \"/x\"\nbind_password_env = \"Y\"",
            "on_delete = \"disable\"\n[users.deactivate]\npolicy = \"move\"",
        );
        let want = [
            "targets[1].timeout_secs",
            "targets[1].bind_password_env",
            "targets[1].users.deactivate.move_to",
            "targets[1].users.on_delete",
        ];
        for w in want {
            assert!(e.iter().any(|m| m.starts_with(w)), "{w} missing in {e:?}");
        }
        let e = errs("", "").len();
        assert_eq!(e, 0);
        let bad_url = Settings::from_raw(
            &RawLdapTarget {
                url: "http://x".into(),
                ..raw("", "")
            },
            0,
        );
        assert!(bad_url.is_err());
    }

    #[test]
    fn plaintext_ldap_carrying_a_password_to_a_remote_host_is_refused() {
        let bind = "bind_dn = \"cn=admin,dc=example,dc=com\"\nbind_password_file = \"/x\"";
        let with_url = |url: &str, extra: &str, users: &str| {
            let t = RawLdapTarget {
                url: url.into(),
                ..raw(extra, users)
            };
            Settings::from_raw(&t, 1)
                .err()
                .unwrap_or_default()
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
        };
        for (url, extra, users) in [
            ("ldap://ldap.example.com", bind, ""),
            ("LDAP://10.0.0.5:389", bind, ""),
            ("ldap://ldap.example.com:389", "", "password = \"sync\""),
            ("ldap://[2001:db8::1]:389", bind, ""),
        ] {
            let e = with_url(url, extra, users);
            assert!(
                e.iter()
                    .any(|m| m.starts_with("targets[1].url:") && m.contains("allow_plaintext")),
                "{url} {extra} {users}: {e:?}"
            );
        }
        for (url, extra, users) in [
            // Loopback: the demo and the tests.
            ("ldap://127.0.0.1:389", bind, "password = \"sync\""),
            ("ldap://localhost", bind, ""),
            ("ldap://[::1]:1389", bind, ""),
            // Encrypted.
            ("ldaps://ldap.example.com", bind, "password = \"sync\""),
            (
                "ldap://ldap.example.com",
                &format!("{bind}\nstarttls = true"),
                "",
            ),
            // Said so.
            (
                "ldap://ldap.example.com",
                &format!("{bind}\nallow_plaintext = true"),
                "password = \"sync\"",
            ),
            // Nothing secret on the wire.
            ("ldap://ldap.example.com", "", ""),
        ] {
            assert_eq!(
                with_url(url, extra, users),
                Vec::<String>::new(),
                "{url} {extra} {users}"
            );
        }
    }

    #[test]
    fn a_flavour_brings_its_own_disable_and_ad_refuses_password_sync() {
        let disable = "[users.deactivate]\npolicy = \"disable\"";
        // Without a flavour, `disable` needs `set`.
        assert!(errs("", disable)
            .iter()
            .any(|e| e.starts_with("targets[1].users.deactivate.set")));
        let with = |flavour: &str, users: &str| {
            Settings::from_raw(&raw(&format!("flavour = \"{flavour}\""), users), 0)
        };
        let ol = with("openldap", disable).unwrap();
        let d = ol.users.deactivate.unwrap();
        assert_eq!(d.set["pwdaccountlockedtime"], ["000001010000Z"]);
        assert!(!d.account_control);
        assert_eq!(ol.flavour, Some(Flavour::OpenLdap));
        let ds = with("389ds", disable).unwrap().users.deactivate.unwrap();
        assert_eq!(ds.set["nsaccountlock"], ["TRUE"]);
        let ad = with("ad", disable).unwrap().users.deactivate.unwrap();
        assert!(ad.account_control && ad.set.is_empty());
        // A configured `set` wins over the flavour's.
        let own = with(
            "389ds",
            &format!("{disable}\nset = {{ description = \"off\" }}"),
        )
        .unwrap()
        .users
        .deactivate
        .unwrap();
        assert_eq!(own.set.keys().collect::<Vec<_>>(), ["description"]);
        assert!(!own.account_control);
        // AD needs clear text; scim-sync keeps none: refused, with the reason.
        let e: Vec<String> = with("ad", "password = \"sync\"")
            .err()
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert!(
            e.iter()
                .any(|m| m.starts_with("targets[0].users.password") && m.contains("unicodePwd")),
            "{e:?}"
        );
        assert!(with("389ds", "password = \"sync\"").is_ok());
        let unknown = toml::from_str::<RawTarget>(
            "name = \"x\"\ntype = \"ldap\"\nurl = \"ldap://h\"\nflavour = \"novell\"\n[users]\ndn = \"uid={u},dc=x\"\nobject_classes = [\"person\"]\n",
        );
        assert!(unknown.is_err());
    }

    #[test]
    fn password_debug_is_redacted() {
        assert_eq!(
            format!("{:?}", PasswordSource::Value("s3cret".into())),
            "Value([redacted])"
        );
    }
}
