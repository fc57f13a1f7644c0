//! Row types of the store tables (`Queryable + Selectable` reads, borrowed `New*` inserts) and
//! their conversion into the public store types. No queries live here.

use super::schema::{
    audit, group_members, outbox, resource_emails, resources, target_state, tokens,
};
use super::{
    decode_text, encode_text, HistoryEntry, OutboxItem, StoreError, StoredGroup, StoredUser,
    TargetState, TokenInfo,
};
use crate::bookkeeping::Bookkeeping;
use crate::scim::resource::{Meta, ResourceType};
use diesel::prelude::*;
use serde_json::{Map, Value};

/// One `resources` row.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = resources)]
#[diesel(check_for_backend(diesel::sqlite::Sqlite, diesel::pg::Pg))]
pub(crate) struct ResourceRow {
    pub seq: i64,
    pub id: String,
    #[allow(dead_code)] // the row mirrors the whole table
    pub resource_type: String,
    pub version: i64,
    pub created_ms: i64,
    pub modified_ms: i64,
    pub data: String,
    pub name: String,
    #[allow(dead_code)] // the row mirrors the whole table
    pub name_norm: String,
    pub external_id: Option<String>,
    pub active: bool,
    pub password_hash: Option<String>,
    pub deleted: bool,
    #[allow(dead_code)] // the row mirrors the whole table
    pub deleted_ms: Option<i64>,
}

impl ResourceRow {
    pub(crate) fn meta(&self) -> Meta {
        Meta {
            created_ms: self.created_ms,
            last_modified_ms: self.modified_ms,
            version: self.version,
        }
    }

    pub(crate) fn data_map(&self) -> Result<Map<String, Value>, StoreError> {
        match serde_json::from_str::<Value>(&self.data) {
            Ok(Value::Object(map)) => Ok(map),
            Ok(_) | Err(_) => Err(StoreError::Other(format!(
                "resource {}: stored body is not a JSON object",
                self.id
            ))),
        }
    }

    pub(crate) fn into_user(self) -> Result<StoredUser, StoreError> {
        let data = self.data_map()?;
        let meta = self.meta();
        Ok(StoredUser {
            id: self.id,
            meta,
            data,
            user_name: decode_text(self.name),
            external_id: self.external_id.map(decode_text),
            active: self.active,
            password_hash: self.password_hash,
            deleted: self.deleted,
        })
    }

    pub(crate) fn into_group(self) -> Result<StoredGroup, StoreError> {
        let data = self.data_map()?;
        let meta = self.meta();
        Ok(StoredGroup {
            id: self.id,
            meta,
            data,
            display_name: decode_text(self.name),
            external_id: self.external_id.map(decode_text),
            deleted: self.deleted,
        })
    }
}

/// A new `resources` row (the sequence is assigned by the database).
#[derive(Debug, Insertable)]
#[diesel(table_name = resources)]
pub(crate) struct NewResource<'a> {
    pub id: &'a str,
    pub resource_type: &'a str,
    pub version: i64,
    pub created_ms: i64,
    pub modified_ms: i64,
    pub data: &'a str,
    pub name: &'a str,
    pub name_norm: &'a str,
    pub external_id: Option<&'a str>,
    pub active: bool,
    pub password_hash: Option<&'a str>,
    pub deleted: bool,
    pub deleted_ms: Option<i64>,
}

/// A new `resource_emails` row.
#[derive(Debug, Insertable)]
#[diesel(table_name = resource_emails)]
pub(crate) struct NewEmail<'a> {
    pub resource_seq: i64,
    pub value_norm: &'a str,
}

/// A new `group_members` row.
#[derive(Debug, Insertable)]
#[diesel(table_name = group_members)]
pub(crate) struct NewMember {
    pub group_seq: i64,
    pub member_seq: i64,
    pub added_seq: i64,
    pub member_is_group: bool,
}

/// One `outbox` row.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = outbox)]
#[diesel(check_for_backend(diesel::sqlite::Sqlite, diesel::pg::Pg))]
pub(crate) struct OutboxRow {
    pub id: i64,
    pub target: String,
    pub resource_type: String,
    pub resource_id: String,
    pub version: i64,
    pub operation: String,
    pub request_id: Option<String>,
    pub attempts: i32,
    pub next_attempt_ms: i64,
    pub last_error: Option<String>,
    pub state: String,
    pub enqueued_ms: i64,
    #[allow(dead_code)] // the row mirrors the whole table
    pub claimed_until_ms: Option<i64>,
    pub claim_epoch: i64,
    pub generation: i64,
}

impl OutboxRow {
    pub(crate) fn into_item(self) -> Result<OutboxItem, StoreError> {
        Ok(OutboxItem {
            id: self.id,
            target: self.target,
            resource_type: parse_type(&self.resource_type)?,
            resource_id: self.resource_id,
            version: self.version,
            operation: self.operation,
            request_id: self.request_id,
            attempts: self.attempts,
            next_attempt_ms: self.next_attempt_ms,
            last_error: self.last_error,
            state: self.state,
            enqueued_ms: self.enqueued_ms,
            claim_epoch: self.claim_epoch,
            generation: self.generation,
            incarnation: 0,
        })
    }
}

/// One `target_state` row (also its insertable form).
#[derive(Debug, Clone, Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = target_state)]
#[diesel(check_for_backend(diesel::sqlite::Sqlite, diesel::pg::Pg))]
#[diesel(treat_none_as_null = true)]
pub(crate) struct TargetStateRow {
    pub target: String,
    pub resource_id: String,
    pub resource_type: String,
    pub applied_version: i64,
    pub target_key: Option<String>,
    pub extra: Option<String>,
    pub updated_ms: i64,
    /// The normalised key held or intended (unique per target); see `keys`.
    pub key_norm: Option<String>,
}

impl TargetStateRow {
    pub(crate) fn from_state(state: &TargetState) -> Self {
        TargetStateRow {
            target: state.target.clone(),
            resource_id: state.resource_id.clone(),
            resource_type: state.resource_type.as_str().to_owned(),
            applied_version: state.applied_version,
            target_key: state.target_key.as_deref().map(encode_text),
            extra: state.extra.as_ref().map(Bookkeeping::to_text),
            updated_ms: state.updated_ms,
            key_norm: None,
        }
    }

    pub(crate) fn into_state(self) -> Result<TargetState, StoreError> {
        let extra = match self.extra {
            None => None,
            Some(text) => Some(Bookkeeping::from_text(&text).map_err(|e| {
                StoreError::Other(format!(
                    "target_state {}/{}: bad extra JSON: {e}",
                    self.target, self.resource_id
                ))
            })?),
        };
        Ok(TargetState {
            resource_type: parse_type(&self.resource_type)?,
            target: self.target,
            resource_id: self.resource_id,
            applied_version: self.applied_version,
            target_key: self.target_key.map(decode_text),
            extra,
            updated_ms: self.updated_ms,
        })
    }
}

/// One `tokens` row.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = tokens)]
#[diesel(check_for_backend(diesel::sqlite::Sqlite, diesel::pg::Pg))]
pub(crate) struct TokenRow {
    pub id: i64,
    pub name: String,
    #[allow(dead_code)] // the row mirrors the whole table
    pub sha256: String,
    pub created_ms: i64,
    pub last_used_ms: Option<i64>,
    pub revoked_ms: Option<i64>,
}

impl TokenRow {
    pub(crate) fn info(self) -> TokenInfo {
        TokenInfo {
            id: self.id,
            name: self.name,
            created_ms: self.created_ms,
            last_used_ms: self.last_used_ms,
            revoked_ms: self.revoked_ms,
        }
    }
}

/// A new `tokens` row.
#[derive(Debug, Insertable)]
#[diesel(table_name = tokens)]
pub(crate) struct NewToken<'a> {
    pub name: &'a str,
    pub sha256: &'a str,
    pub created_ms: i64,
    pub last_used_ms: Option<i64>,
    pub revoked_ms: Option<i64>,
}

/// One `audit` row.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = audit)]
#[diesel(check_for_backend(diesel::sqlite::Sqlite, diesel::pg::Pg))]
pub(crate) struct AuditRow {
    #[allow(dead_code)] // the row mirrors the whole table
    pub id: i64,
    pub at_ms: i64,
    pub resource_type: String,
    pub resource_id: String,
    pub operation: String,
    pub token_name: Option<String>,
    pub request_id: Option<String>,
    pub version: i64,
    pub detail: Option<String>,
}

impl AuditRow {
    pub(crate) fn into_entry(self) -> Result<HistoryEntry, StoreError> {
        Ok(HistoryEntry {
            at_ms: self.at_ms,
            resource_type: parse_type(&self.resource_type)?,
            resource_id: self.resource_id,
            operation: self.operation,
            token_name: self.token_name,
            request_id: self.request_id,
            version: self.version,
            detail: self.detail,
        })
    }
}

/// A new `audit` row.
#[derive(Debug, Insertable)]
#[diesel(table_name = audit)]
pub(crate) struct NewAudit<'a> {
    pub at_ms: i64,
    pub resource_type: &'a str,
    pub resource_id: &'a str,
    pub operation: &'a str,
    pub token_name: Option<&'a str>,
    pub request_id: Option<&'a str>,
    pub version: i64,
    pub detail: Option<&'a str>,
}

/// `"User"`/`"Group"` from a row; anything else means the table was edited by hand.
pub(crate) fn parse_type(s: &str) -> Result<ResourceType, StoreError> {
    ResourceType::parse(s)
        .ok_or_else(|| StoreError::Other(format!("unknown resource_type {s:?} in the store")))
}
