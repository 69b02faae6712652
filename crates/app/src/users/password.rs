//! Password hashing with Argon2id (the `argon2` crate's defaults: OWASP's recommended parameters, 19 MiB and
//! two passes per hash).
//!
//! Hashing costs tens of milliseconds of CPU and 19 MiB of memory on purpose, which makes it the cheapest way
//! to hurt the service: 450 concurrent logins once took an unbounded version to 9.8 GB resident. So every
//! hash goes through a [`PasswordHasher`], which
//! - runs at most `concurrency` hashes at once, on the blocking pool (never on the async workers);
//! - lets at most `queue` more wait for a turn, and answers the rest at once with
//!   [`UserError::Overloaded`] (503 + Retry-After) instead of queueing them without bound;
//! - hashes into memory blocks it keeps and reuses (`hash_password_into_with_memory`), so the process holds
//!   `concurrency × 19 MiB` for hashing however many logins arrive, and the allocator never sees the churn.
//!
//! The PHC string is assembled here rather than by `argon2`'s `PasswordHasher` trait because that trait
//! allocates fresh blocks for every hash; the format is the standard one (`$argon2id$v=19$m=…`), so hashes
//! written before this module and by other Argon2 libraries verify the same way.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use argon2::password_hash::{Output, ParamsString, SaltString, rand_core::OsRng};
use argon2::{Algorithm, Argon2, Block, Params, PasswordHash as ParsedHash, Version};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{Password, UserError};

/// The largest Argon2 memory cost a stored hash may ask for (KiB). Hashes are written by this service with
/// the defaults (19 MiB); a stored hash asking for more is refused rather than allowed to allocate it.
const MAX_MEMORY_KIB: u32 = 64 * 1024;

/// Counter: hashes refused because the queue was full (each one a 503 `overloaded`).
pub const REJECTIONS: &str = "password_hash_rejections_total";

/// How long a client told the service is busy should wait before trying again, in seconds.
pub const OVERLOADED_RETRY_AFTER_SECS: u64 = 1;

/// A PHC-format Argon2id hash (`$argon2id$v=19$...`): safe to store, never shown (`Debug` hides it).
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordHash(String);

impl std::fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PasswordHash(***)")
    }
}

impl PasswordHash {
    /// A hash as stored.
    pub fn from_stored(phc: String) -> Self {
        PasswordHash(phc)
    }

    /// The PHC string, for storage.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// How many hashes may run and wait at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HashingLimits {
    /// Hashes running at once (each holds 19 MiB and one CPU).
    pub concurrency: usize,
    /// Hashes waiting for a turn; one more is refused with [`UserError::Overloaded`].
    pub queue: usize,
}

impl HashingLimits {
    /// One hash per CPU, and eight waiting per running hash (a wait of a few hundred milliseconds at most).
    pub fn from_cpu_count() -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        HashingLimits { concurrency: cpus, queue: cpus * 8 }
    }
}

/// Hashes and verifies passwords within [`HashingLimits`]. Cheap to clone (one shared state).
#[derive(Clone)]
pub struct PasswordHasher {
    shared: Arc<Shared>,
}

struct Shared {
    params: Params,
    permits: Arc<Semaphore>,
    queue: usize,
    waiting: AtomicUsize,
    /// Memory blocks of finished hashes, reused by the next: at most `concurrency` buffers exist.
    spare_memory: Mutex<Vec<Vec<Block>>>,
    decoy: tokio::sync::OnceCell<PasswordHash>,
}

impl std::fmt::Debug for PasswordHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordHasher").field("queue", &self.shared.queue).finish_non_exhaustive()
    }
}

impl PasswordHasher {
    /// A hasher with Argon2id's default parameters, bounded by `limits` (at least one hash at a time).
    pub fn new(limits: HashingLimits) -> Self {
        let concurrency = limits.concurrency.max(1);
        // Registered at zero: an alert on its rate needs the series before the first refusal.
        metrics::counter!(REJECTIONS).increment(0);
        PasswordHasher {
            shared: Arc::new(Shared {
                params: Params::default(),
                permits: Arc::new(Semaphore::new(concurrency)),
                queue: limits.queue,
                waiting: AtomicUsize::new(0),
                spare_memory: Mutex::new(Vec::with_capacity(concurrency)),
                decoy: tokio::sync::OnceCell::const_new(),
            }),
        }
    }

    /// Hashes `password` with a fresh random salt.
    pub async fn hash(&self, password: &Password) -> Result<PasswordHash, UserError> {
        let password = password.clone();
        let params = self.shared.params.clone();
        self.run(move |memory| hash_with(memory, &params, password.expose().as_bytes())).await?
    }

    /// Whether `password` matches `hash`. A hash that does not parse matches nothing.
    pub async fn verify(&self, hash: &PasswordHash, password: &Password) -> Result<bool, UserError> {
        let (hash, password) = (hash.0.clone(), password.clone());
        self.run(move |memory| match verify_with(memory, &hash, password.expose().as_bytes()) {
            Ok(matches) => matches,
            Err(reason) => {
                tracing::error!(reason, "a stored password hash cannot be verified; the user cannot log in");
                false
            }
        })
        .await
    }

    /// Verifies `password` against a hash of a random password, so that a login for an unknown account costs
    /// as much (in time and in the hashing budget) as one with a wrong password: no user enumeration by
    /// timing, and no way around the bound by guessing unknown emails.
    pub async fn verify_decoy(&self, password: &Password) -> Result<(), UserError> {
        let decoy = self
            .shared
            .decoy
            .get_or_try_init(|| async {
                let random = Password::candidate(uuid::Uuid::new_v4().to_string())
                    .map_err(|err| UserError::Internal(format!("decoy password refused: {err}")))?;
                self.hash(&random).await
            })
            .await?;
        self.verify(decoy, password).await.map(drop)
    }

    /// Runs `work` on the blocking pool with a permit and a memory buffer; the permit and the buffer go back
    /// when the work ends, even if the caller stopped waiting (a timed-out request cannot add a hash).
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Vec<Block>) -> T + Send + 'static,
    ) -> Result<T, UserError> {
        let permit = self.admit().await?;
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || {
            let mut memory = shared.take_memory();
            let result = work(&mut memory);
            shared.put_back_memory(memory);
            drop(permit);
            result
        })
        .await
        .map_err(|err| UserError::Internal(format!("hashing task failed: {err}")))
    }

    /// A permit to hash now, or after waiting in a bounded queue; [`UserError::Overloaded`] when it is full.
    async fn admit(&self) -> Result<OwnedSemaphorePermit, UserError> {
        if let Ok(permit) = self.shared.permits.clone().try_acquire_owned() {
            return Ok(permit);
        }
        let _waiting = WaitingSlot::take(&self.shared)?;
        self.shared
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| UserError::Internal("the password hasher was closed".into()))
    }
}

impl Shared {
    fn take_memory(&self) -> Vec<Block> {
        self.spare_memory.lock().map(|mut spare| spare.pop()).ok().flatten().unwrap_or_default()
    }

    /// Keeps `memory` for the next hash, shrunk back to the default size if a stored hash grew it.
    fn put_back_memory(&self, mut memory: Vec<Block>) {
        let default_blocks = self.params.block_count();
        if memory.len() > default_blocks {
            memory.truncate(default_blocks);
            memory.shrink_to_fit();
        }
        if let Ok(mut spare) = self.spare_memory.lock() {
            spare.push(memory);
        }
    }
}

/// A place in the queue of waiting hashes, given back on drop.
struct WaitingSlot<'a>(&'a AtomicUsize);

impl<'a> WaitingSlot<'a> {
    fn take(shared: &'a Shared) -> Result<Self, UserError> {
        let waiting = shared.waiting.fetch_add(1, Ordering::AcqRel);
        let slot = WaitingSlot(&shared.waiting);
        if waiting >= shared.queue {
            metrics::counter!(REJECTIONS).increment(1);
            return Err(UserError::Overloaded { retry_after_secs: OVERLOADED_RETRY_AFTER_SECS });
        }
        Ok(slot)
    }
}

impl Drop for WaitingSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Argon2id of `password` with a fresh salt into `memory`, as a PHC string.
fn hash_with(memory: &mut Vec<Block>, params: &Params, password: &[u8]) -> Result<PasswordHash, UserError> {
    let internal = |err: &dyn std::fmt::Display| UserError::Internal(format!("cannot hash the password: {err}"));
    let salt = SaltString::generate(&mut OsRng);
    let mut salt_bytes = [0u8; 64];
    let salt_bytes = salt.decode_b64(&mut salt_bytes).map_err(|e| internal(&e))?;
    let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
    fill(memory, params.block_count());
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
        .hash_password_into_with_memory(password, salt_bytes, &mut out, memory.as_mut_slice())
        .map_err(|e| internal(&e))?;
    let phc = ParsedHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(params).map_err(|e| internal(&e))?,
        salt: Some(salt.as_salt()),
        hash: Some(Output::new(&out).map_err(|e| internal(&e))?),
    };
    Ok(PasswordHash(phc.to_string()))
}

/// Whether `password` hashes to the PHC string `phc` (compared in constant time), using `memory`.
fn verify_with(memory: &mut Vec<Block>, phc: &str, password: &[u8]) -> Result<bool, &'static str> {
    let parsed = ParsedHash::new(phc).map_err(|_| "not a PHC string")?;
    let algorithm = Algorithm::try_from(parsed.algorithm).map_err(|_| "not an Argon2 hash")?;
    let version = parsed.version.map_or(Ok(Version::default()), Version::try_from).map_err(|_| "bad version")?;
    let params = Params::try_from(&parsed).map_err(|_| "bad parameters")?;
    if params.m_cost() > MAX_MEMORY_KIB {
        return Err("memory cost above the accepted maximum");
    }
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        return Err("salt or hash missing");
    };
    let mut salt_bytes = [0u8; 64];
    let salt_bytes = salt.decode_b64(&mut salt_bytes).map_err(|_| "bad salt")?;
    let mut out = vec![0u8; expected.len()];
    fill(memory, params.block_count());
    Argon2::new(algorithm, version, params)
        .hash_password_into_with_memory(password, salt_bytes, &mut out, memory.as_mut_slice())
        .map_err(|_| "cannot compute the hash")?;
    let computed = Output::new(&out).map_err(|_| "bad output length")?;
    Ok(computed == expected)
}

/// Makes `memory` hold at least `blocks` blocks (allocated once, then reused).
fn fill(memory: &mut Vec<Block>, blocks: usize) {
    if memory.len() < blocks {
        memory.resize(blocks, Block::default());
    }
}

#[cfg(test)]
mod tests {
    use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};

    use super::*;

    fn hasher(concurrency: usize, queue: usize) -> PasswordHasher {
        PasswordHasher::new(HashingLimits { concurrency, queue })
    }

    fn password(raw: &str) -> Password {
        Password::candidate(raw.into()).expect("valid")
    }

    #[tokio::test]
    async fn a_hash_verifies_its_password_only() {
        let hasher = hasher(1, 0);
        let hash = hasher.hash(&password("correct horse battery")).await.expect("hashes");
        assert!(hash.as_str().starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(hasher.verify(&hash, &password("correct horse battery")).await.expect("verifies"));
        assert!(!hasher.verify(&hash, &password("correct horse battery!")).await.expect("verifies"));
        assert!(!format!("{hash:?}").contains("argon2"));
    }

    #[tokio::test]
    async fn hashes_are_interchangeable_with_the_argon2_crates_own() {
        let hasher = hasher(1, 0);
        let salt = SaltString::generate(&mut OsRng);
        let theirs = Argon2::default().hash_password(b"interchangeable", &salt).expect("hashes").to_string();
        let stored = PasswordHash::from_stored(theirs);
        assert!(hasher.verify(&stored, &password("interchangeable")).await.expect("verifies"));
        let ours = hasher.hash(&password("interchangeable")).await.expect("hashes");
        let parsed = ParsedHash::new(ours.as_str()).expect("PHC");
        assert!(Argon2::default().verify_password(b"interchangeable", &parsed).is_ok());
    }

    #[tokio::test]
    async fn a_corrupt_or_oversized_hash_matches_nothing() {
        let hasher = hasher(1, 0);
        let candidate = password("correct horse battery");
        assert!(!hasher.verify(&PasswordHash::from_stored("garbage".into()), &candidate).await.expect("no error"));
        let greedy = "$argon2id$v=19$m=4194304,t=2,p=1$c2FsdHNhbHRzYWx0$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        assert!(!hasher.verify(&PasswordHash::from_stored(greedy.into()), &candidate).await.expect("no error"));
    }

    #[tokio::test]
    async fn memory_is_reused_not_reallocated() {
        let hasher = hasher(2, 8);
        let reused = password("reused memory");
        let hashes = futures::future::join_all((0..6).map(|_| hasher.hash(&reused))).await;
        assert!(hashes.iter().all(Result::is_ok));
        let spare = hasher.shared.spare_memory.lock().expect("lock").len();
        assert!(spare <= 2, "{spare} buffers kept for 2 concurrent hashes");
        assert!(spare >= 1);
    }

    #[tokio::test]
    async fn overflow_beyond_the_queue_is_refused_at_once() {
        let hasher = hasher(1, 2);
        let busy = hasher.shared.permits.clone().try_acquire_owned().expect("the only permit");
        let waiters: Vec<_> = (0..2)
            .map(|_| {
                let hasher = hasher.clone();
                tokio::spawn(async move { hasher.hash(&password("burst of logins")).await })
            })
            .collect();
        while hasher.shared.waiting.load(Ordering::Acquire) < 2 {
            tokio::task::yield_now().await;
        }
        let refused = hasher.hash(&password("one too many")).await;
        assert!(matches!(refused, Err(UserError::Overloaded { retry_after_secs: 1 })), "{refused:?}");
        drop(busy);
        for waiter in waiters {
            assert!(waiter.await.expect("joins").is_ok(), "a queued hash runs once a permit is free");
        }
        assert_eq!(hasher.shared.waiting.load(Ordering::Acquire), 0, "every waiting slot given back");
    }

    #[tokio::test]
    async fn the_decoy_never_matches_and_counts_as_a_hash() {
        let hasher = hasher(1, 0);
        hasher.verify_decoy(&password("anything at all")).await.expect("verifies");
        assert_eq!(hasher.shared.permits.available_permits(), 1);
    }
}
