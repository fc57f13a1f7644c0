//! Bearer-token authentication, checked before any body or query is read. Tokens are
//! random 32-byte values shown once; only their SHA-256 digests are stored, and a presented token
//! is compared in constant time against every live digest.
//!
//! Live digests are cached; a match is re-checked against the store, so a revoked token fails
//! on its next request. A miss refreshes the cache at most once a second, so a flood of bad
//! tokens costs one SHA-256 each, not a database query each.

use crate::scim::ScimError;
use crate::store::Store;
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

/// How long the digest cache is trusted for misses.
const MISS_REFRESH: Duration = Duration::from_secs(1);

/// A new token: `scim_` + base64url of 32 bytes from the OS RNG (no modulo bias).
pub fn generate_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!(
        "scim_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// SHA-256 of a token.
pub fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Constant-time search: the name of the entry whose digest equals `presented`. Every entry is
/// compared, whatever matched.
fn find(entries: &[(String, [u8; 32])], presented: &[u8; 32]) -> Option<String> {
    let mut found = None;
    for (name, d) in entries {
        if bool::from(d.ct_eq(presented)) {
            found = Some(name.clone());
        }
    }
    found
}

/// Cached (name, digest) pairs and when they were read.
type Cache = (Option<Instant>, Vec<(String, [u8; 32])>);

/// How often a token's `last_used_ms` is written at most (not once per request).
const LAST_USE_EVERY: Duration = Duration::from_secs(60);

/// The authenticator shared by all requests.
pub struct Auth {
    store: Store,
    cache: Mutex<Cache>,
    /// When each token's last use was last written.
    touched: Mutex<std::collections::HashMap<String, Instant>>,
}

impl Auth {
    /// A new authenticator reading tokens from `store`.
    pub fn new(store: Store) -> Self {
        Self {
            store,
            cache: Mutex::new((None, Vec::new())),
            touched: Mutex::new(std::collections::HashMap::new()),
        }
    }

    fn cached(&self) -> Cache {
        match self.cache.lock() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn replace(&self, entries: Vec<(String, [u8; 32])>, now: Instant) {
        let mut c = match self.cache.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        *c = (Some(now), entries);
    }

    /// Drop the cache (SIGHUP).
    pub fn invalidate(&self) {
        self.replace(Vec::new(), Instant::now());
        if let Ok(mut c) = self.cache.lock() {
            c.0 = None;
        }
    }

    /// Check the `Authorization` header values of a request; returns the token's name. A
    /// successful check records the token's last use (`now_ms`) at most once a minute.
    ///
    /// # Errors
    /// 401 for a missing, duplicated, malformed, unknown or revoked token; 503 when the store
    /// cannot be read.
    pub async fn check(&self, headers: &[&[u8]], now_ms: i64) -> Result<String, ScimError> {
        let name = self.verify(headers).await?;
        self.note_use(&name, now_ms).await;
        Ok(name)
    }

    /// Write `last_used_ms` unless this process wrote it within [`LAST_USE_EVERY`]. A failed
    /// write only costs the bookkeeping, never the request.
    async fn note_use(&self, name: &str, now_ms: i64) {
        let now = Instant::now();
        {
            let mut touched = match self.touched.lock() {
                Ok(t) => t,
                Err(poisoned) => poisoned.into_inner(),
            };
            if touched
                .get(name)
                .is_some_and(|t| now.duration_since(*t) < LAST_USE_EVERY)
            {
                return;
            }
            touched.insert(name.to_owned(), now);
        }
        let gap = i64::try_from(LAST_USE_EVERY.as_millis()).unwrap_or(i64::MAX);
        if let Err(error) = self.store.touch_token(name, now_ms, gap).await {
            tracing::debug!(token_name = %name, error = %error, "Could not record the token's last use.");
        }
    }

    async fn verify(&self, headers: &[&[u8]]) -> Result<String, ScimError> {
        let presented = match headers {
            [one] => parse_bearer(one).ok_or_else(unauthorized)?,
            _ => return Err(unauthorized()),
        };
        let presented = digest(presented);
        let now = Instant::now();
        let (refreshed, entries) = self.cached();
        if find(&entries, &presented).is_some() {
            // Re-check against the store so a revocation takes effect at once.
            let live = self.load().await?;
            let name = find(&live, &presented);
            self.replace(live, now);
            return name.ok_or_else(unauthorized);
        }
        let stale = refreshed.is_none_or(|t| now.duration_since(t) >= MISS_REFRESH);
        if stale {
            let live = self.load().await?;
            let name = find(&live, &presented);
            self.replace(live, now);
            return name.ok_or_else(unauthorized);
        }
        Err(unauthorized())
    }

    async fn load(&self) -> Result<Vec<(String, [u8; 32])>, ScimError> {
        self.store
            .live_token_digests()
            .await
            .map_err(|_| ScimError::status(503, "The token store is unavailable; try again."))
    }
}

/// `Bearer <token>`: scheme case-insensitive, one token of visible ASCII.
fn parse_bearer(value: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(value).ok()?;
    let (scheme, rest) = text.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = rest.trim_matches(' ');
    if token.is_empty() || token.len() > 512 || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return None;
    }
    Some(token)
}

fn unauthorized() -> ScimError {
    ScimError::status(
        401,
        "Authentication is required: send Authorization: Bearer <token>.",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_parsing_table() {
        let cases: &[(&str, Option<&str>)] = &[
            ("Bearer abc", Some("abc")),
            ("bearer abc", Some("abc")),
            ("BEARER   abc  ", Some("abc")),
            ("Bearer", None),
            ("Bearer ", None),
            ("Bearer \t", None),
            ("Basic abc", None),
            ("Bearer a b", None),
            ("Bearer a\u{7f}", None),
        ];
        for (input, want) in cases {
            assert_eq!(parse_bearer(input.as_bytes()), *want, "{input:?}");
        }
    }

    #[test]
    fn tokens_are_random_and_long() {
        let a = generate_token();
        let b = generate_token();
        assert_ne!(a, b);
        assert!(a.starts_with("scim_") && a.len() == 5 + 43, "{a}");
    }

    #[test]
    fn find_checks_all_entries() {
        let entries = vec![
            ("a".to_string(), digest("x")),
            ("b".to_string(), digest("y")),
        ];
        assert_eq!(find(&entries, &digest("y")).as_deref(), Some("b"));
        assert_eq!(find(&entries, &digest("z")), None);
    }
}
