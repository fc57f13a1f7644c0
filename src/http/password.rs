//! Hashing of passwords Okta sends (Sync Password, the random password on create): hashed the
//! moment the request is parsed, in the scheme the config names, or dropped (`off`, the
//! default). The clear text never reaches the store, the outbox or a log.

use crate::scim::resource::Password;
use argon2::password_hash::{PasswordHasher, SaltString};
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha512};

/// The configured password handling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasswordSync {
    /// Drop passwords (SSO deployments).
    Off,
    /// `{SSHA512}` (OpenLDAP `pw-sha2` module, 389-DS).
    Ssha512,
    /// `{ARGON2}` argon2id (OpenLDAP `argon2` module).
    Argon2,
}

impl PasswordSync {
    /// Parse the `[scim] password_sync` value.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "off" => Some(Self::Off),
            "ssha512" => Some(Self::Ssha512),
            "argon2" => Some(Self::Argon2),
            _ => None,
        }
    }

    /// [`PasswordSync::hash`] on the blocking pool: argon2 takes tens of milliseconds of CPU
    /// and must neither stall an async worker thread nor run inside the store's write
    /// transaction (it held the SQLite write lock for the whole hash). Handlers call this
    /// before they call the store (test:
    /// `scim_api::passwords_are_hashed_before_the_store_transaction`).
    ///
    /// At most one hash per core runs at once: argon2's default takes 19 MiB
    /// of memory per hash, and a burst of creates with passwords would otherwise start as many
    /// hashes as requests on the blocking pool (measured: 5 GiB of RSS after a 200/s burst on
    /// 2 cores, every request slower). The others wait here, holding no thread, within their
    /// request's deadline.
    pub async fn hash_off_thread(self, password: Option<&Password>) -> Option<String> {
        if self == Self::Off {
            return None;
        }
        let password = password?.clone();
        let _slot = HASHING.acquire().await.ok()?;
        tokio::task::spawn_blocking(move || {
            let _running = Running::start();
            self.hash(Some(&password))
        })
        .await
        .ok()
        .flatten()
    }

    /// Hash (or drop) a password. `None` when sync is off or no password was sent.
    pub fn hash(self, password: Option<&Password>) -> Option<String> {
        let password = password?;
        if self != Self::Off {
            crate::telemetry::metrics().password_hashes.inc();
        }
        match self {
            Self::Off => None,
            Self::Ssha512 => Some(ssha512(&password.0)),
            Self::Argon2 => argon2_hash(&password.0),
        }
    }
}

/// How many hashes may run at once: the cores this process may use.
fn hash_slots() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

static HASHING: std::sync::LazyLock<tokio::sync::Semaphore> =
    std::sync::LazyLock::new(|| tokio::sync::Semaphore::new(hash_slots()));

/// Hashes running now and the most seen at once (what the limit is tested by).
static RUNNING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static MOST_RUNNING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

struct Running;

impl Running {
    fn start() -> Running {
        use std::sync::atomic::Ordering;
        let now = RUNNING.fetch_add(1, Ordering::SeqCst) + 1;
        MOST_RUNNING.fetch_max(now, Ordering::SeqCst);
        Running
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        RUNNING.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The most hashes that ran at once in this process so far.
#[cfg(test)]
fn most_hashes_at_once() -> usize {
    MOST_RUNNING.load(std::sync::atomic::Ordering::SeqCst)
}

fn ssha512(clear: &str) -> String {
    let mut salt = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut salt);
    let mut h = Sha512::new();
    h.update(clear.as_bytes());
    h.update(salt);
    let mut bytes = h.finalize().to_vec();
    bytes.extend_from_slice(&salt);
    format!(
        "{{SSHA512}}{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

fn argon2_hash(clear: &str) -> Option<String> {
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    argon2::Argon2::default()
        .hash_password(clear.as_bytes(), &salt)
        .ok()
        .map(|h| format!("{{ARGON2}}{h}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A burst of password hashes runs at most one per core at a time (the others wait
    /// without a thread); before the limit every request started its own 19 MiB argon2 hash.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_burst_of_hashes_runs_at_most_one_per_core() {
        let hashes: Vec<_> = (0..24)
            .map(|i| {
                let pw = Password(format!("burst-{i}"));
                async move { PasswordSync::Argon2.hash_off_thread(Some(&pw)).await }
            })
            .collect();
        let done = futures_util::future::join_all(hashes).await;
        assert!(done
            .iter()
            .all(|h| h.as_deref().is_some_and(|h| h.starts_with("{ARGON2}"))));
        let most = most_hashes_at_once();
        assert!(
            (1..=hash_slots()).contains(&most),
            "{most} hashes ran at once, over {} slots",
            hash_slots()
        );
    }

    #[test]
    fn ssha512_is_salted_and_verifiable() {
        let pw = Password("1mz050nq".into());
        let a = PasswordSync::Ssha512.hash(Some(&pw)).unwrap();
        let b = PasswordSync::Ssha512.hash(Some(&pw)).unwrap();
        assert_ne!(a, b);
        let raw = base64::engine::general_purpose::STANDARD
            .decode(a.strip_prefix("{SSHA512}").unwrap())
            .unwrap();
        let (digest, salt) = raw.split_at(64);
        let mut h = Sha512::new();
        h.update(b"1mz050nq");
        h.update(salt);
        assert_eq!(h.finalize().as_slice(), digest);
        assert!(!a.contains("1mz050nq"));
    }

    #[test]
    fn off_drops_and_argon2_hashes() {
        let pw = Password("x".into());
        assert_eq!(PasswordSync::Off.hash(Some(&pw)), None);
        assert!(PasswordSync::Argon2
            .hash(Some(&pw))
            .unwrap()
            .starts_with("{ARGON2}$argon2id$"));
        assert_eq!(PasswordSync::Ssha512.hash(None), None);
    }
}
