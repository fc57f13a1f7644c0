//! The `[[targets]]` sections of the config file, as strict serde types (file-shaped, no I/O).
//!
//! Owns only the shape of the file: every struct denies unknown fields, defaults sit beside
//! their field. Templates, paths, DNs and URLs are plain strings here and are parsed by the
//! pure validators (`mapping::CompiledTarget::compile`, `targets::ldap::Settings::from_raw`),
//! which name the full key in their errors. Must not read files or the environment.
//!
//! ```toml
//! [[targets]]
//! name = "corp"
//! type = "ldap"
//! url = "ldap://ldap.example.com"
//! bind_dn = "cn=scim-sync,ou=Services,dc=example,dc=com"
//! bind_password_file = "/run/credentials/scim-sync.service/ldap"
//! [targets.users]
//! dn = "uid={userName},ou=People,dc=example,dc=com"
//! object_classes = ["top", "person", "organizationalPerson", "inetOrgPerson"]
//! [targets.users.attributes]
//! cn = "{name.givenName} {name.familyName}"
//! mail = 'emails[primary eq true].value'
//! ```

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

/// One `[[targets]]` entry, tagged by `type`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[allow(clippy::large_enum_variant)] // parsed once at load; boxing buys nothing
pub enum RawTarget {
    /// `type = "ldap"`.
    Ldap(RawLdapTarget),
    /// `type = "sql"`: a legacy application database (PostgreSQL, MariaDB/MySQL, SQLite).
    Sql(RawSqlTarget),
}

impl RawTarget {
    /// The target's configured name.
    #[must_use]
    pub fn name(&self) -> &str {
        match self {
            RawTarget::Ldap(t) => &t.name,
            RawTarget::Sql(t) => &t.name,
        }
    }
}

/// Which directory an LDAP target is (`targets::ldap::flavour`): its result codes, stable
/// ids, account disable and large-group reads differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
pub enum LdapFlavour {
    /// OpenLDAP (and any directory not recognised).
    #[serde(rename = "openldap")]
    OpenLdap,
    /// 389 Directory Server (FreeIPA, RHDS).
    #[serde(rename = "389ds")]
    Ds389,
    /// Active Directory (and Samba AD DC).
    #[serde(rename = "ad")]
    Ad,
}

/// What to do when an entry we never created already sits at the desired DN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnExisting {
    /// Refuse (a permanent error): the entry is not managed by scim-sync.
    #[default]
    Conflict,
    /// Take the entry over and manage its mapped attributes from now on.
    Adopt,
}

/// Member values in a managed group that scim-sync did not write (LDAP member values, SQL
/// membership rows): see `docs/mapping.md`, "Foreign members".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ForeignMembers {
    /// Leave them (a value we wrote ourselves and no longer want is still removed).
    #[default]
    Keep,
    /// Remove every value the store does not render (the behaviour before `foreign_members`).
    Remove,
}

/// What a target does with a group's nested groups (members that are groups): see
/// `docs/mapping.md`, "Nested groups". The default depends on how members are written:
/// `member` for DN-valued LDAP members (`member`, `uniqueMember`), `flatten` for `memberUid`
/// groups and SQL join tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NestedGroups {
    /// The child group's own entry is the member value (its DN): LDAP `member_value = "dn"`
    /// only.
    Member,
    /// The child group's users (through any depth) are members, each once.
    Flatten,
    /// A group with a group among its members is not applied (a permanent failure naming it).
    Refuse,
}

/// What a SCIM DELETE does to the entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnDelete {
    /// Delete the entry.
    #[default]
    Delete,
    /// Apply the deactivation `set` attributes and keep the entry (users only).
    Disable,
}

/// Whether passwords pushed by the IdP are written to the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PasswordMode {
    /// Never write passwords.
    #[default]
    Off,
    /// Write the stored password hash to `userPassword`.
    Sync,
}

/// What happens to a user whose SCIM `active` is false.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeactivatePolicy {
    /// Set the `set` attributes (e.g. `pwdAccountLockedTime`); reactivation removes them.
    #[default]
    Disable,
    /// Move the entry below `move_to`; reactivation moves it back.
    Move,
    /// Delete the entry; reactivation creates it again.
    Delete,
}

/// How group members are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberValue {
    /// The member's DN (`member`, `uniqueMember`).
    #[default]
    Dn,
    /// The member's `uid` attribute value (`memberUid`).
    Uid,
}

/// What a referenced value identifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RefBy {
    /// The referenced user's SCIM `id` (what `manager.value` holds).
    #[default]
    Id,
    /// The referenced user's `userName`.
    UserName,
    /// The referenced user's `externalId`.
    ExternalId,
}

/// One value or a list of values.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    /// `attr = "value"`.
    One(String),
    /// `attr = ["a", "b"]`.
    Many(Vec<String>),
}

impl OneOrMany {
    /// The values as a list.
    #[must_use]
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            OneOrMany::One(v) => vec![v.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// An LDAP target.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLdapTarget {
    /// The target's name (logs, metrics, `target_state`).
    pub name: String,
    /// `ldap://host[:port]` or `ldaps://host[:port]`.
    pub url: String,
    /// `openldap`, `389ds` or `ad`; detected from the root DSE at connect when absent.
    #[serde(default)]
    pub flavour: Option<LdapFlavour>,
    /// Upgrade an `ldap://` connection with StartTLS.
    #[serde(default)]
    pub starttls: bool,
    /// Accept a plain `ldap://` connection to a non-loopback host although it carries the bind
    /// password or synced password hashes in clear.
    #[serde(default)]
    pub allow_plaintext: bool,
    /// PEM file of CA certificates to trust (default: the system roots).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// DN to bind as (no bind when absent).
    #[serde(default)]
    pub bind_dn: Option<String>,
    /// File holding the bind password (systemd `LoadCredential=`).
    #[serde(default)]
    pub bind_password_file: Option<PathBuf>,
    /// Environment variable holding the bind password.
    #[serde(default)]
    pub bind_password_env: Option<String>,
    /// TCP connect (and TLS handshake) timeout.
    #[serde(default = "default_connect_timeout_secs")]
    pub connect_timeout_secs: u64,
    /// Per-operation timeout.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
    /// An unmanaged entry at the desired DN: `conflict` or `adopt`.
    #[serde(default)]
    pub on_existing: OnExisting,
    /// Member values (LDAP) or membership rows (SQL) of a managed group that scim-sync did not
    /// write: `keep` (the default) or `remove`.
    #[serde(default)]
    pub foreign_members: ForeignMembers,
    /// How users are mapped.
    pub users: RawUsers,
    /// How groups are mapped (groups are not provisioned when absent).
    #[serde(default)]
    pub groups: Option<RawGroups>,
}

fn default_connect_timeout_secs() -> u64 {
    5
}

fn default_timeout_secs() -> u64 {
    30
}

/// `[targets.users]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUsers {
    /// DN template, e.g. `uid={userName},ou=People,dc=example,dc=com`.
    pub dn: String,
    /// Object classes of created entries.
    pub object_classes: Vec<String>,
    /// Attribute name -> rule.
    #[serde(default)]
    pub attributes: BTreeMap<String, RawRule>,
    /// What `active = false` does (nothing but attribute updates when absent).
    #[serde(default)]
    pub deactivate: Option<RawDeactivate>,
    /// What a SCIM DELETE does.
    #[serde(default)]
    pub on_delete: OnDelete,
    /// Password sync.
    #[serde(default)]
    pub password: PasswordMode,
    /// Role value -> group DN memberships.
    #[serde(default)]
    pub role_groups: Vec<RawRoleGroup>,
}

/// `[targets.users.deactivate]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDeactivate {
    /// `disable`, `move` or `delete`.
    #[serde(default)]
    pub policy: DeactivatePolicy,
    /// Attributes set while disabled (policy `disable`, and `on_delete = "disable"`).
    #[serde(default)]
    pub set: BTreeMap<String, OneOrMany>,
    /// Parent DN inactive users are moved below (policy `move`).
    #[serde(default)]
    pub move_to: Option<String>,
    /// Inactive users are removed from all groups (the reconciler excludes them).
    #[serde(default)]
    pub remove_from_groups: bool,
}

/// `[[targets.users.role_groups]]`: a user with this role is a member of this group.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoleGroup {
    /// The SCIM `roles[].value`.
    pub value: String,
    /// The group's DN (an existing group, not managed by SCIM).
    pub group: String,
}

/// `[targets.groups]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGroups {
    /// DN template, e.g. `cn={displayName},ou=Groups,dc=example,dc=com`.
    pub dn: String,
    /// Object classes of created entries.
    pub object_classes: Vec<String>,
    /// Attribute name -> rule.
    #[serde(default)]
    pub attributes: BTreeMap<String, RawRule>,
    /// `member`, `uniqueMember` or `memberUid`.
    #[serde(default = "default_member_attribute")]
    pub member_attribute: String,
    /// `dn` or `uid`.
    #[serde(default)]
    pub member_value: MemberValue,
    /// DN written as the only member when the group would be empty (groupOfNames requires one).
    #[serde(default)]
    pub placeholder_member: Option<String>,
    /// Nested groups: `member` (default for `member_value = "dn"`), `flatten` (default for
    /// `"uid"`) or `refuse`.
    #[serde(default)]
    pub nested: Option<NestedGroups>,
}

fn default_member_attribute() -> String {
    "member".to_owned()
}

/// An attribute rule: a string (path or template) or a table.
#[derive(Debug, Clone, PartialEq)]
pub enum RawRule {
    /// `"userName"`, `"{name.givenName} {name.familyName}"`.
    Expr(String),
    /// `{ from = .., transform = [..], default = .. }`, `{ constant = .. }`, `{ reference = .. }`.
    Table(RawRuleTable),
}

/// The table form of a rule; which fields may be combined is checked by the compiler.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRuleTable {
    /// A path or template.
    #[serde(default)]
    pub from: Option<String>,
    /// Transforms applied in order to every value: `lower`, `upper`, `trim`, `first`.
    #[serde(default)]
    pub transform: Vec<String>,
    /// Value(s) used when the source yields none.
    #[serde(default)]
    pub default: Option<OneOrMany>,
    /// Fixed value(s).
    #[serde(default)]
    pub constant: Option<OneOrMany>,
    /// A path yielding identifiers of other users; renders their DNs.
    #[serde(default)]
    pub reference: Option<String>,
    /// What the reference identifies (`id`, `userName`, `externalId`).
    #[serde(default)]
    pub by: Option<RefBy>,
}

/// A SQL target (`type = "sql"`): one users table, optionally a groups table and a
/// membership join table. See `docs/legacy-sql.md`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSqlTarget {
    /// The target's name (logs, metrics, `target_state`).
    pub name: String,
    /// `postgres://user@host[:port]/db`, `mysql://user@host[:port]/db` (MariaDB or MySQL) or
    /// `sqlite:///path/to/file.db`. Never with a password in it.
    pub url: String,
    /// File holding the database password (systemd `LoadCredential=`).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Environment variable holding the database password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// Connect timeout.
    #[serde(default = "default_connect_timeout_secs")]
    pub connect_timeout_secs: u64,
    /// Per-statement and lock-wait timeout (and the bound on one whole sync).
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
    /// A row with our key that scim-sync did not create: `conflict` or `adopt`.
    #[serde(default)]
    pub on_existing: OnExisting,
    /// Member values (LDAP) or membership rows (SQL) of a managed group that scim-sync did not
    /// write: `keep` (the default) or `remove`.
    #[serde(default)]
    pub foreign_members: ForeignMembers,
    /// How users are mapped.
    pub users: RawSqlUsers,
    /// How groups are mapped (groups are not provisioned when absent).
    #[serde(default)]
    pub groups: Option<RawSqlGroups>,
}

/// `[targets.users]` of a SQL target.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSqlUsers {
    /// The table, `name` or `schema.name`.
    pub table: String,
    /// The column identifying a row.
    pub key_column: String,
    /// The rule giving the key value (`"userName"`, `"externalId"`, `"id"`, ...), optionally
    /// with a type: `{ from = "externalId", type = "integer" }`.
    pub key: RawSqlColumn,
    /// Column name -> rule (with an optional type conversion).
    #[serde(default)]
    pub columns: BTreeMap<String, RawSqlColumn>,
    /// What `active = false` does (nothing but column updates when absent).
    #[serde(default)]
    pub deactivate: Option<RawSqlDeactivate>,
    /// What a SCIM DELETE does.
    #[serde(default)]
    pub on_delete: OnDelete,
}

/// How a SQL target marks inactive users.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SqlDeactivatePolicy {
    /// Set `column` to `value`; reactivation sets `active_value`.
    Flag,
    /// Set `column` to the database's current time; reactivation sets it to NULL.
    Timestamp,
    /// Delete the row; reactivation inserts it again.
    Delete,
}

/// `[targets.users.deactivate]` of a SQL target.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSqlDeactivate {
    /// `flag`, `timestamp` or `delete`.
    pub policy: SqlDeactivatePolicy,
    /// The column set by `flag` and `timestamp` (must not be a mapped column).
    #[serde(default)]
    pub column: Option<String>,
    /// `flag`: the value while inactive (`"N"`, `0`, `false`).
    #[serde(default)]
    pub value: Option<RawSqlValue>,
    /// `flag`: the value while active (`"Y"`, `1`, `true`).
    #[serde(default)]
    pub active_value: Option<RawSqlValue>,
    /// Inactive users leave every group's membership rows (the reconciler excludes them).
    #[serde(default)]
    pub remove_from_groups: bool,
}

/// A literal column value in the config: its TOML type decides how it is bound.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum RawSqlValue {
    /// A boolean (bound as a boolean).
    Bool(bool),
    /// An integer (bound as a 64-bit integer).
    Integer(i64),
    /// A string (bound as text).
    Text(String),
}

/// How a column value is converted before it is bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SqlColumnType {
    /// Text, as rendered.
    #[default]
    Text,
    /// A 64-bit integer (a rendered value that is not an integer is a permanent error).
    Integer,
    /// A boolean (`true`/`false`, `TRUE`/`FALSE`, `1`/`0`).
    Boolean,
    /// An RFC 3339 timestamp, written as UTC.
    Timestamp,
    /// A legacy flag: a true value writes `true`, a false one `false` (`"Y"`/`"N"`, `1`/`0`).
    Flag,
}

/// A column rule: a string (path or template) or a table (the rule-table keys plus `type`,
/// `true`, `false`).
#[derive(Debug, Clone, PartialEq)]
pub enum RawSqlColumn {
    /// `"userName"`, `"{name.givenName} {name.familyName}"`.
    Expr(String),
    /// `{ from = .., type = .., true = .., false = .. }` and the other rule-table forms.
    Table(RawSqlColumnTable),
}

/// The table form of a column rule.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSqlColumnTable {
    /// A path or template.
    #[serde(default)]
    pub from: Option<String>,
    /// Transforms applied in order: `lower`, `upper`, `trim`, `first`.
    #[serde(default)]
    pub transform: Vec<String>,
    /// Value used when the source yields none.
    #[serde(default)]
    pub default: Option<OneOrMany>,
    /// A fixed value.
    #[serde(default)]
    pub constant: Option<OneOrMany>,
    /// A path yielding identifiers of other users; renders their key values.
    #[serde(default)]
    pub reference: Option<String>,
    /// What the reference identifies (`id`, `userName`, `externalId`).
    #[serde(default)]
    pub by: Option<RefBy>,
    /// The conversion (`text` by default).
    #[serde(default, rename = "type")]
    pub column_type: SqlColumnType,
    /// `type = "flag"`: the value written for true.
    #[serde(default, rename = "true")]
    pub true_value: Option<RawSqlValue>,
    /// `type = "flag"`: the value written for false.
    #[serde(default, rename = "false")]
    pub false_value: Option<RawSqlValue>,
}

impl RawSqlColumn {
    /// The mapping rule of this column (the type conversion left out).
    #[must_use]
    pub fn rule(&self) -> RawRule {
        match self {
            RawSqlColumn::Expr(e) => RawRule::Expr(e.clone()),
            RawSqlColumn::Table(t) => RawRule::Table(RawRuleTable {
                from: t.from.clone(),
                transform: t.transform.clone(),
                default: t.default.clone(),
                constant: t.constant.clone(),
                reference: t.reference.clone(),
                by: t.by,
            }),
        }
    }

    /// The column's type conversion.
    #[must_use]
    pub fn column_type(&self) -> SqlColumnType {
        match self {
            RawSqlColumn::Expr(_) => SqlColumnType::Text,
            RawSqlColumn::Table(t) => t.column_type,
        }
    }
}

impl<'de> Deserialize<'de> for RawSqlColumn {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ColumnVisitor;
        impl<'de> Visitor<'de> for ColumnVisitor {
            type Value = RawSqlColumn;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a path or template string, or a column rule table")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawSqlColumn, E> {
                Ok(RawSqlColumn::Expr(v.to_owned()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawSqlColumn, A::Error> {
                RawSqlColumnTable::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(RawSqlColumn::Table)
            }
        }
        deserializer.deserialize_any(ColumnVisitor)
    }
}

/// `[targets.groups]` of a SQL target.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSqlGroups {
    /// The table, `name` or `schema.name`.
    pub table: String,
    /// The column identifying a row.
    pub key_column: String,
    /// The rule giving the key value (`"displayName"`, `"id"`, ...).
    pub key: RawSqlColumn,
    /// Column name -> rule.
    #[serde(default)]
    pub columns: BTreeMap<String, RawSqlColumn>,
    /// The membership join table (membership is not written when absent).
    #[serde(default)]
    pub membership: Option<RawSqlMembership>,
    /// Nested groups in the join table: `flatten` (default) or `refuse` (`member` is an LDAP
    /// choice).
    #[serde(default)]
    pub nested: Option<NestedGroups>,
}

/// `[targets.groups.membership]`: one row per (group, member).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSqlMembership {
    /// The join table, `name` or `schema.name`.
    pub table: String,
    /// The join-table column identifying the group.
    pub group_column: String,
    /// Which column of the groups table `group_column` holds (default: `groups.key_column`;
    /// e.g. a surrogate `group_id`).
    #[serde(default)]
    pub group_holds: Option<String>,
    /// The join-table column identifying the member.
    pub user_column: String,
    /// Which column of the users table `user_column` holds (default: `users.key_column`;
    /// e.g. a surrogate `user_id`).
    #[serde(default)]
    pub user_holds: Option<String>,
}

impl<'de> Deserialize<'de> for RawRule {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RuleVisitor;
        impl<'de> Visitor<'de> for RuleVisitor {
            type Value = RawRule;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a path or template string, or a rule table")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawRule, E> {
                Ok(RawRule::Expr(v.to_owned()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawRule, A::Error> {
                RawRuleTable::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(RawRule::Table)
            }
        }
        deserializer.deserialize_any(RuleVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        targets: Vec<RawTarget>,
    }

    const MINIMAL: &str = r#"
[[targets]]
name = "corp"
type = "ldap"
url = "ldap://127.0.0.1:389"
[targets.users]
dn = "uid={userName},ou=People,dc=example,dc=com"
object_classes = ["inetOrgPerson"]
[targets.users.attributes]
cn = "{name.givenName} {name.familyName}"
mail = { from = "emails.value", transform = ["lower"], default = "none@example.com" }
o = { constant = "Example" }
manager = { reference = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager.value", by = "id" }
[targets.users.deactivate]
policy = "disable"
set = { pwdAccountLockedTime = "000001010000Z" }
[[targets.users.role_groups]]
value = "admin"
group = "cn=admins,ou=Groups,dc=example,dc=com"
[targets.groups]
dn = "cn={displayName},ou=Groups,dc=example,dc=com"
object_classes = ["groupOfNames"]
placeholder_member = "cn=nobody"
"#;

    #[test]
    fn parses_full_ldap_target_with_defaults() {
        let f: File = toml::from_str(MINIMAL).unwrap();
        let RawTarget::Ldap(t) = &f.targets[0] else {
            panic!("ldap")
        };
        assert_eq!(f.targets[0].name(), "corp");
        assert_eq!(t.connect_timeout_secs, 5);
        assert_eq!(t.timeout_secs, 30);
        assert_eq!(t.on_existing, OnExisting::Conflict);
        assert_eq!(t.users.attributes.len(), 4);
        assert!(matches!(t.users.attributes["cn"], RawRule::Expr(_)));
        let RawRule::Table(m) = &t.users.attributes["mail"] else {
            panic!("table expected")
        };
        assert_eq!(m.transform, vec!["lower".to_owned()]);
        let g = t.groups.as_ref().unwrap();
        assert_eq!(g.member_attribute, "member");
        assert_eq!(g.member_value, MemberValue::Dn);
    }

    #[test]
    fn misspelled_keys_are_rejected_everywhere() {
        for (from, to) in [
            ("starttls", "startls"),
            (
                "object_classes = [\"groupOfNames\"]",
                "objectclasses = [\"x\"]",
            ),
            ("transform = [\"lower\"]", "transfrom = [\"lower\"]"),
            ("policy = \"disable\"", "polcy = \"disable\""),
            ("value = \"admin\"", "valeu = \"admin\""),
            ("type = \"ldap\"", "type = \"ldapp\""),
        ] {
            let mut text = MINIMAL.to_owned();
            if from == "starttls" {
                text = text.replace("url =", "startls = true\nurl =");
            } else {
                assert!(text.contains(from), "{from}");
                text = text.replace(from, to);
            }
            let r: Result<File, _> = toml::from_str(&text);
            assert!(r.is_err(), "accepted misspelling {to}");
        }
    }

    #[test]
    fn inline_password_is_rejected() {
        let text = MINIMAL.replace("url =", "bind_password = \"secret\"\nurl =");
        assert!(toml::from_str::<File>(&text).is_err());
    }

    #[test]
    fn rule_of_wrong_type_is_rejected() {
        let text = MINIMAL.replace("o = { constant = \"Example\" }", "o = 5");
        assert!(toml::from_str::<File>(&text).is_err());
    }
}
