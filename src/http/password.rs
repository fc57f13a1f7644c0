//! Hashing of passwords Okta sends (Sync Password, the random password on create): hashed the
//! moment the request is parsed, in the scheme the config names, or dropped (`off`, the
//! default). The clear text never reaches the store, the outbox or a log.

use crate::scim::resource::Password;
use argon2::password_hash::SaltString;
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

/// Argon2's working memory, kept for the next hash: one buffer per hashing slot at most (19 MiB
/// each with the default parameters). A fresh buffer per hash left the allocator holding
/// freed ones in every blocking thread's arena: 371 MiB of RSS after 500 creates with
/// passwords on 2 cores (`BENCH_QUICK=1 BENCH_PASSWORDS=argon2 scripts/bench`).
static BUFFERS: std::sync::Mutex<Vec<Vec<argon2::Block>>> = std::sync::Mutex::new(Vec::new());

fn argon2_hash(clear: &str) -> Option<String> {
    use argon2::password_hash::{Output, ParamsString, PasswordHash};
    let argon = argon2::Argon2::default();
    let params = argon.params().clone();
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    let mut salt_buf = [0u8; 64];
    let salt_bytes = salt.as_salt().decode_b64(&mut salt_buf).ok()?;
    let len = params
        .output_len()
        .unwrap_or(argon2::Params::DEFAULT_OUTPUT_LEN);
    let mut blocks = BUFFERS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .pop()
        .filter(|b| b.len() == params.block_count())
        .unwrap_or_else(|| vec![argon2::Block::default(); params.block_count()]);
    let output = Output::init_with(len, |out| {
        argon
            .hash_password_into_with_memory(clear.as_bytes(), salt_bytes, out, &mut blocks)
            .map_err(Into::into)
    });
    {
        let mut pool = BUFFERS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if pool.len() < hash_slots() {
            pool.push(blocks);
        }
    }
    let hash = PasswordHash {
        algorithm: argon2::Algorithm::Argon2id.ident(),
        version: Some(argon2::Version::V0x13.into()),
        params: ParamsString::try_from(&params).ok()?,
        salt: Some(salt.as_salt()),
        hash: Some(output.ok()?),
    };
    Some(format!("{{ARGON2}}{hash}"))
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
        let h = PasswordSync::Argon2.hash(Some(&pw)).unwrap();
        assert!(
            h.starts_with("{ARGON2}$argon2id$v=19$m=19456,t=2,p=1$"),
            "{h}"
        );
        // The reused working memory gives hashes that verify, each with its own salt.
        use argon2::password_hash::{PasswordHash, PasswordVerifier};
        for _ in 0..2 {
            let h = PasswordSync::Argon2.hash(Some(&pw)).unwrap();
            let parsed = PasswordHash::new(h.strip_prefix("{ARGON2}").unwrap()).unwrap();
            assert!(argon2::Argon2::default()
                .verify_password(b"x", &parsed)
                .is_ok());
            assert!(argon2::Argon2::default()
                .verify_password(b"y", &parsed)
                .is_err());
        }
        assert_eq!(PasswordSync::Ssha512.hash(None), None);
    }
}
