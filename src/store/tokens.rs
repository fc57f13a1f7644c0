//! API tokens: only the hex SHA-256 digest is stored (never the token); names are unique among
//! live tokens. Must not compare tokens (the HTTP layer does, in constant time).

use super::models::{NewToken, TokenRow};
use super::schema::tokens;
use super::{check_text, has_nul, write_tx, write_tx_client, DbConnection, StoreError, TokenInfo};
use crate::scim::ScimError;
use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use std::fmt::Write as _;

fn to_hex(bytes: &[u8; 32]) -> String {
    let mut out = String::with_capacity(64);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

fn from_hex(text: &str) -> Option<[u8; 32]> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (slot, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        let hi = char::from(*pair.first()?).to_digit(16)?;
        let lo = char::from(*pair.get(1)?).to_digit(16)?;
        *slot = u8::try_from(hi * 16 + lo).ok()?;
    }
    Some(out)
}

/// Insert a token digest under a name unique among live tokens.
pub(crate) fn create(
    conn: &mut DbConnection,
    name: &str,
    sha256: &[u8; 32],
    now_ms: i64,
) -> Result<TokenInfo, StoreError> {
    check_text("token name", name)?;
    let digest = to_hex(sha256);
    write_tx(conn, |conn| {
        diesel::insert_into(tokens::table)
            .values(NewToken {
                name,
                sha256: &digest,
                created_ms: now_ms,
                last_used_ms: None,
                revoked_ms: None,
            })
            .execute(conn)
            .map_err(|e| match e {
                DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _) => {
                    StoreError::Scim(ScimError::uniqueness(
                        "a live token with this name already exists",
                    ))
                }
                other => other.into(),
            })?;
        let row: TokenRow = tokens::table
            .filter(tokens::name.eq(name))
            .filter(tokens::revoked_ms.is_null())
            .select(TokenRow::as_select())
            .first(conn)?;
        Ok(row.info())
    })
}

/// Every token, by id.
pub(crate) fn list(conn: &mut DbConnection) -> Result<Vec<TokenInfo>, StoreError> {
    Ok(tokens::table
        .order(tokens::id)
        .select(TokenRow::as_select())
        .load(conn)?
        .into_iter()
        .map(TokenRow::info)
        .collect())
}

/// Revoke live tokens by name, or by id when `key` is a number.
pub(crate) fn revoke(conn: &mut DbConnection, key: &str, now_ms: i64) -> Result<bool, StoreError> {
    if has_nul(key) {
        return Ok(false);
    }
    write_tx(conn, |conn| {
        let by_name = diesel::update(
            tokens::table
                .filter(tokens::revoked_ms.is_null())
                .filter(tokens::name.eq(key)),
        )
        .set(tokens::revoked_ms.eq(Some(now_ms)))
        .execute(conn)?;
        let by_id = match key.parse::<i64>() {
            Ok(id) if by_name == 0 => {
                diesel::update(tokens::table.filter(tokens::revoked_ms.is_null()).find(id))
                    .set(tokens::revoked_ms.eq(Some(now_ms)))
                    .execute(conn)?
            }
            _ => 0,
        };
        Ok(by_name + by_id > 0)
    })
}

/// Record that the live token `name` was used at `now_ms`, unless a use within the last
/// `min_gap_ms` is already recorded (callers also throttle in memory; this keeps several
/// instances from writing more often).
pub(crate) fn touch(
    conn: &mut DbConnection,
    name: &str,
    now_ms: i64,
    min_gap_ms: i64,
) -> Result<(), StoreError> {
    if has_nul(name) {
        return Ok(());
    }
    // The request that used the token waits for this: it queues as a client's write.
    write_tx_client(conn, |conn| {
        diesel::update(
            tokens::table
                .filter(tokens::revoked_ms.is_null())
                .filter(tokens::name.eq(name))
                .filter(
                    tokens::last_used_ms
                        .is_null()
                        .or(tokens::last_used_ms.lt(now_ms - min_gap_ms)),
                ),
        )
        .set(tokens::last_used_ms.eq(Some(now_ms)))
        .execute(conn)?;
        Ok(())
    })
}

/// (name, digest) of live tokens; a malformed digest (a hand-edited row) is skipped.
pub(crate) fn live_digests(conn: &mut DbConnection) -> Result<Vec<(String, [u8; 32])>, StoreError> {
    let rows: Vec<(String, String)> = tokens::table
        .filter(tokens::revoked_ms.is_null())
        .order(tokens::id)
        .select((tokens::name, tokens::sha256))
        .load(conn)?;
    Ok(rows
        .into_iter()
        .filter_map(|(name, hex)| from_hex(&hex).map(|d| (name, d)))
        .collect())
}

#[cfg(test)]
mod hex_tests {
    use super::{from_hex, to_hex};

    #[test]
    fn hex_round_trip_and_rejects_garbage() {
        let digest = [0xabu8; 32];
        assert_eq!(from_hex(&to_hex(&digest)), Some(digest));
        assert_eq!(from_hex("zz"), None);
        assert_eq!(from_hex(&"g".repeat(64)), None);
        assert_eq!(from_hex(&"é".repeat(32)), None);
    }
}
