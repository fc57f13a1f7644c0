//! What the daemon remembers of one resource in one target besides its key
//! (`target_state.extra`): one serde struct, stored as the JSON object it always was, so rows
//! written by earlier versions read unchanged (no migration). Plain data shared by the store
//! (intents, rename reservations), the reconciler (`scim_active`, `deactivating`), the
//! mapping (`uid` for `memberUid` groups) and the targets (everything else); it uses no other
//! module of the crate (`tests/tidy.rs`).
//!
//! Reading is lenient per key: a known key whose value has another shape reads as absent
//! (the hand-written reader was lenient per element for `role_groups`, `orphans` and
//! `disabled`; only a hand-edited row can tell the difference, every writer writes the strict
//! shapes), a stored value that is not an object as empty. Keys this version does not know
//! are kept in [`Bookkeeping::other`] and written back wherever the whole bookkeeping is
//! carried over; not kept: a known key of another shape (it is dropped at the next write) and
//! unknown keys inside an orphan intent.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// Users or groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    User,
    Group,
}

/// What a deactivation wrote, so a reactivation (or a delete) undoes exactly that.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Disabled {
    /// SQL (`on_delete = "disable"`): the row was disabled.
    Flag(bool),
    /// LDAP: the attributes and values the deactivation set.
    Attrs(BTreeMap<String, Vec<String>>),
}

/// An intent to create the entry at `creating`, recorded before the first create (see
/// `store::Store::record_intent`); kept in [`Bookkeeping::orphans`] once replaced by an
/// intent for another key.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Intent {
    /// The key the create gives the entry.
    #[serde(deserialize_with = "lenient", skip_serializing_if = "Option::is_none")]
    pub creating: Option<String>,
    /// The first attempt's time (ms since the epoch).
    #[serde(deserialize_with = "lenient", skip_serializing_if = "Option::is_none")]
    pub since_ms: Option<i64>,
    /// The last attempt's time.
    #[serde(deserialize_with = "lenient", skip_serializing_if = "Option::is_none")]
    pub attempt_ms: Option<i64>,
    /// Orphans: when the intent was replaced (another resource may intend the key from then).
    #[serde(deserialize_with = "lenient", skip_serializing_if = "Option::is_none")]
    pub released_ms: Option<i64>,
}

/// The bookkeeping of one resource in one target. Every field is optional and written only
/// when set (the JSON keys are the field names).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Bookkeeping {
    // Written by the targets with their outcome.
    /// Whether the entry is a user's or a group's (a delete knows what it removes).
    #[serde(deserialize_with = "lenient", skip_serializing_if = "Option::is_none")]
    pub kind: Option<Kind>,
    /// LDAP users: the entry's `uid`, what `memberUid` groups hold.
    #[serde(deserialize_with = "lenient", skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// What the deactivation set (removed exactly on reactivation).
    #[serde(deserialize_with = "lenient", skip_serializing_if = "Option::is_none")]
    pub disabled: Option<Disabled>,
    /// LDAP users: the membership value written into [`Bookkeeping::role_groups`].
    #[serde(deserialize_with = "lenient", skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
    /// LDAP users: the role groups the user was made a member of.
    #[serde(deserialize_with = "lenient", skip_serializing_if = "Vec::is_empty")]
    pub role_groups: Vec<String>,
    /// LDAP users: SHA-256 (hex) of the last password hash written, to write only changes.
    #[serde(deserialize_with = "lenient", skip_serializing_if = "Option::is_none")]
    pub password_sha256: Option<String>,
    /// The user was deleted by the `delete` deactivation policy (re-created on reactivation).
    #[serde(deserialize_with = "lenient", skip_serializing_if = "Option::is_none")]
    pub deleted_inactive: Option<bool>,
    /// LDAP: the server's `entryUUID` of the entry (it survives renames and moves).
    #[serde(deserialize_with = "lenient", skip_serializing_if = "Option::is_none")]
    pub entry_uuid: Option<String>,

    // Written by the reconciler.
    /// Users: the SCIM `active` flag at the last apply (to notice a flip).
    #[serde(deserialize_with = "lenient", skip_serializing_if = "Option::is_none")]
    pub scim_active: Option<bool>,
    /// Noted before a deactivation is applied; the settle drops it.
    #[serde(deserialize_with = "lenient", skip_serializing_if = "Option::is_none")]
    pub deactivating: Option<bool>,
    /// Groups: the member configuration (`CompiledTarget::members_fingerprint`) the store's
    /// record of the member values we wrote (`target_members`) was kept for by the last
    /// apply. Absent (a group applied before the record existed) or another one: the record
    /// is not trusted, the next apply reads the whole membership (and, under `keep`, treats
    /// every value it does not render as ours that once).
    #[serde(deserialize_with = "lenient", skip_serializing_if = "Option::is_none")]
    pub members_record: Option<String>,

    // The create intent (see [`Intent`]), recorded by the reconciler and the store.
    /// The key the first create gives the entry (the state has no key yet).
    #[serde(deserialize_with = "lenient", skip_serializing_if = "Option::is_none")]
    pub creating: Option<String>,
    /// The first attempt's time (ms since the epoch).
    #[serde(deserialize_with = "lenient", skip_serializing_if = "Option::is_none")]
    pub since_ms: Option<i64>,
    /// The previous attempt's time (the latest an earlier add of ours can have started).
    #[serde(deserialize_with = "lenient", skip_serializing_if = "Option::is_none")]
    pub prev_attempt_ms: Option<i64>,
    /// This attempt's time.
    #[serde(deserialize_with = "lenient", skip_serializing_if = "Option::is_none")]
    pub attempt_ms: Option<i64>,
    /// Earlier intents for other keys this one replaced, oldest first.
    #[serde(deserialize_with = "lenient", skip_serializing_if = "Vec::is_empty")]
    pub orphans: Vec<Intent>,

    /// The store: the key a rename was reserved for, before the target renames anything.
    #[serde(deserialize_with = "lenient", skip_serializing_if = "Option::is_none")]
    pub renaming: Option<String>,

    /// Keys this version does not know, kept as they were.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// A substring of the stored JSON text of every bookkeeping that records an intent (for a
/// query over the column).
pub const INTENT_MARKER: &str = "\"creating\"";

/// A value of another shape than the field's reads as the field's default.
fn lenient<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned + Default,
{
    let v = Value::deserialize(d)?;
    Ok(serde_json::from_value(v).unwrap_or_default())
}

impl Bookkeeping {
    /// From stored JSON (leniently: see the module docs).
    #[must_use]
    pub fn from_json(v: Value) -> Bookkeeping {
        if !v.is_object() {
            return Bookkeeping::default();
        }
        serde_json::from_value(v).unwrap_or_default()
    }

    /// From stored JSON text; `Err` only when the text is not JSON.
    ///
    /// # Errors
    /// The parse error.
    pub fn from_text(text: &str) -> Result<Bookkeeping, serde_json::Error> {
        serde_json::from_str::<Value>(text).map(Bookkeeping::from_json)
    }

    /// The JSON object stored.
    #[must_use]
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or_else(|_| Value::Object(Map::new()))
    }

    /// The JSON text stored.
    #[must_use]
    pub fn to_text(&self) -> String {
        self.to_json().to_string()
    }

    /// The intent recorded (when [`Bookkeeping::creating`] is set).
    #[must_use]
    pub fn intent(&self) -> Option<Intent> {
        self.creating.as_ref()?;
        Some(Intent {
            creating: self.creating.clone(),
            since_ms: self.since_ms,
            attempt_ms: self.attempt_ms,
            released_ms: None,
        })
    }

    /// LDAP: the attributes and values the deactivation set (empty if none were recorded).
    #[must_use]
    pub fn disabled_attrs(&self) -> BTreeMap<String, Vec<String>> {
        match &self.disabled {
            Some(Disabled::Attrs(a)) => a.clone(),
            _ => BTreeMap::new(),
        }
    }
}

impl From<Value> for Bookkeeping {
    fn from(v: Value) -> Bookkeeping {
        Bookkeeping::from_json(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Every shape earlier versions wrote reads into the typed fields and writes back the
    /// same JSON object.
    #[test]
    fn the_stored_shapes_read_unchanged_and_round_trip() {
        let shapes = [
            // LDAP users (with the reconciler's `scim_active`), groups, a delete-policy user.
            r#"{"kind":"user","uid":"bjensen","disabled":{"nsAccountLock":["TRUE"]},"member":"uid=bjensen,ou=People,dc=x","role_groups":["cn=staff,dc=x"],"password_sha256":"ab12","entry_uuid":"5f8e-11","scim_active":false}"#,
            r#"{"kind":"group","entry_uuid":"7a2c-01"}"#,
            r#"{"kind":"group"}"#,
            r#"{"kind":"user","deleted_inactive":true,"scim_active":false}"#,
            // SQL.
            r#"{"kind":"user","disabled":true}"#,
            r#"{"kind":"user","scim_active":true}"#,
            // A deactivation noted, a rename reserved.
            r#"{"kind":"user","uid":"a","scim_active":true,"deactivating":true}"#,
            r#"{"kind":"user","entry_uuid":"u-1","renaming":"uid=y,ou=people"}"#,
            // Intents: first attempt, a later one, one that replaced earlier intents.
            r#"{"creating":"uid=a,ou=People,dc=x","since_ms":1700000000123,"attempt_ms":1700000000123}"#,
            r#"{"creating":"uid=a,ou=People,dc=x","since_ms":10500,"attempt_ms":20000,"prev_attempt_ms":15000}"#,
            r#"{"kind":"user","deleted_inactive":true,"creating":"uid=b,dc=x","since_ms":3,"attempt_ms":3,"orphans":[{"creating":"uid=a,dc=x","since_ms":1,"attempt_ms":2,"released_ms":3}]}"#,
            // A key this version does not know.
            r#"{"deactivated":false}"#,
        ];
        for text in shapes {
            let stored: Value = serde_json::from_str(text).unwrap();
            let b = Bookkeeping::from_text(text).unwrap();
            assert_eq!(b.to_json(), stored, "{text}");
            assert_eq!(Bookkeeping::from_text(&b.to_text()).unwrap(), b, "{text}");
        }
        let b = Bookkeeping::from_text(shapes[0]).unwrap();
        assert_eq!(b.kind, Some(Kind::User));
        assert_eq!(b.uid.as_deref(), Some("bjensen"));
        assert_eq!(
            b.disabled_attrs(),
            [("nsAccountLock".to_owned(), vec!["TRUE".to_owned()])]
                .into_iter()
                .collect()
        );
        assert_eq!(b.role_groups, vec!["cn=staff,dc=x".to_owned()]);
        assert_eq!(b.scim_active, Some(false));
        let sql = Bookkeeping::from_text(shapes[4]).unwrap();
        assert_eq!(sql.disabled, Some(Disabled::Flag(true)));
        assert!(sql.disabled_attrs().is_empty());
        let intent = Bookkeeping::from_text(shapes[9]).unwrap();
        assert_eq!(
            (
                intent.creating.as_deref(),
                intent.since_ms,
                intent.prev_attempt_ms,
                intent.attempt_ms
            ),
            (
                Some("uid=a,ou=People,dc=x"),
                Some(10_500),
                Some(15_000),
                Some(20_000)
            )
        );
        let replaced = Bookkeeping::from_text(shapes[10]).unwrap();
        assert_eq!(
            replaced.orphans,
            vec![Intent {
                creating: Some("uid=a,dc=x".into()),
                since_ms: Some(1),
                attempt_ms: Some(2),
                released_ms: Some(3),
            }]
        );
        assert_eq!(
            replaced.intent().unwrap().creating.as_deref(),
            Some("uid=b,dc=x")
        );
        let unknown = Bookkeeping::from_text(shapes[11]).unwrap();
        assert_eq!(unknown.other.get("deactivated"), Some(&json!(false)));
    }

    #[test]
    fn other_shapes_read_as_absent_never_fail() {
        // A known key with a value of another shape is absent; the rest still reads.
        let b = Bookkeeping::from_json(json!({"kind": "robot", "uid": 7, "since_ms": "x",
            "role_groups": "cn=a", "orphans": [{"creating": 1, "since_ms": 2}],
            "entry_uuid": "u"}));
        assert_eq!(b.kind, None);
        assert_eq!(b.uid, None);
        assert_eq!(b.since_ms, None);
        assert!(b.role_groups.is_empty());
        assert_eq!(
            b.orphans,
            vec![Intent {
                since_ms: Some(2),
                ..Intent::default()
            }]
        );
        assert_eq!(b.entry_uuid.as_deref(), Some("u"));
        // Null is absent; a stored value that is not an object reads as empty.
        assert_eq!(
            Bookkeeping::from_json(json!({"since_ms": null, "orphans": null})),
            Bookkeeping::default()
        );
        assert_eq!(
            Bookkeeping::from_json(json!([1, 2])),
            Bookkeeping::default()
        );
        assert_eq!(Bookkeeping::from_json(json!("x")), Bookkeeping::default());
        assert!(Bookkeeping::from_text("{not json").is_err());
        assert_eq!(Bookkeeping::default().to_text(), "{}");
    }
}
