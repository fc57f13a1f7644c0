//! The audit table: one row per mutation and per apply outcome. Must never receive a password,
//! a password hash or a token (the callers pass ids, operations and error texts only).

use super::models::{AuditRow, NewAudit};
use super::schema::audit as audit_table;
use super::{has_nul, sanitize_text, AuditCtx, DbConnection, HistoryEntry, StoreError};
use crate::scim::resource::ResourceType;
use diesel::prelude::*;

fn non_empty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

/// Append an audit row for a client mutation.
pub(crate) fn audit(
    conn: &mut DbConnection,
    ctx: &AuditCtx,
    resource_type: ResourceType,
    resource_id: &str,
    operation: &str,
    version: i64,
    detail: Option<&str>,
) -> Result<(), StoreError> {
    let detail = detail.map(sanitize_text);
    diesel::insert_into(audit_table::table)
        .values(NewAudit {
            at_ms: ctx.now_ms,
            resource_type: resource_type.as_str(),
            resource_id,
            operation,
            token_name: non_empty(&ctx.token_name),
            request_id: non_empty(&ctx.request_id),
            version,
            detail: detail.as_deref(),
        })
        .execute(conn)?;
    Ok(())
}

/// History of one resource, oldest first.
pub(crate) fn of_resource(
    conn: &mut DbConnection,
    resource_id: &str,
) -> Result<Vec<HistoryEntry>, StoreError> {
    if has_nul(resource_id) {
        return Ok(Vec::new());
    }
    audit_table::table
        .filter(audit_table::resource_id.eq(resource_id))
        .order(audit_table::id)
        .select(AuditRow::as_select())
        .load(conn)?
        .into_iter()
        .map(AuditRow::into_entry)
        .collect()
}
