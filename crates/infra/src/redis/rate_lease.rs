//! A per-key rate limit that does not cost a Redis round trip per request: each instance leases a few of a
//! key's tokens from the shared GCRA and spends them in process.
//!
//! Why it stays distributed: a lease of `g` tokens moves the key's TAT in Redis exactly as `g` requests would
//! (the tokens are consumed up front), so the tokens leased by all instances together never exceed what one
//! GCRA admits. What leasing adds is timing: tokens leased before a window and spent in it. An instance holds at
//! most `size − 1` unspent tokens per key (the request that takes a lease spends one of its tokens at once, and
//! a refill tops the tokens held up to `size − 1`, no more), so over any window **N instances admit at most
//! what one GCRA admits plus N × (size − 1)** (see [`LeasePolicy`]). Tokens still unspent after
//! [`LeasePolicy::validity`] are dropped: undershoot, never overshoot.
//!
//! Refill ahead: with leases of [`REFILL_AHEAD_MIN_SIZE`] tokens or more, the request that leaves a quarter of a
//! lease or less starts a lease in the background (up to `size − 1` held), so a busy key's requests do not all stop and
//! wait for Redis each time a lease runs out — with one lease per 64 requests, that wait was every request's
//! cost (measured: the limiter layer alone at 0.72× the bare handler's throughput). A refill Redis refuses, or
//! that fails, is not retried ahead: the request that finds no token asks Redis itself, as without refills.
//!
//! In process, the state per key lives in a bounded, sharded map (at most the configured capacity of keys, so an
//! address-spraying client cannot grow memory): tokens left and their expiry, the last refusal (answered locally
//! until its `Retry-After` has passed: Redis would refuse too, TATs only move forward) and the last failure.
//! Concurrent requests of one key on one instance wait for a single lease (single flight), not one each.

use std::collections::HashMap;
use std::fmt::{self, Display};
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::rate_limit::{Decision, Grant, Limit, RateLimiter};

/// How many tokens an instance leases at once and how long it may hold them: the trade between Redis round
/// trips and overshoot across instances.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeasePolicy {
    /// Tokens taken from Redis per lease (1: every request asks Redis, as [`RateLimiter::check`] does).
    pub size: u32,
    /// How long leased tokens stay spendable; unspent ones are then dropped.
    pub validity: Duration,
}

impl LeasePolicy {
    /// The time a lease represents at most: a lease is at most the tokens the limit refills in this window, and
    /// is held at most this long.
    pub const WINDOW: Duration = Duration::from_millis(50);
    /// The largest lease, whatever the limit: bounds the absolute overshoot (N × 63 requests) of huge limits.
    pub const MAX_SIZE: u32 = 64;

    /// Exact: one token per lease, i.e. one Redis round trip per request. For security limits with small budgets.
    pub const EXACT: LeasePolicy = LeasePolicy { size: 1, validity: Duration::ZERO };

    /// The policy for `limit`: `size = clamp(rate × 50 ms, 1, min(64, max(1, burst / 8)))`, valid 50 ms.
    /// At most an eighth of the burst, so a client whose budget is spread over instances still gets its burst;
    /// 1 (exact) for limits below 40 requests per second. E.g. 100/s burst 200 → 5; 1 000 000/s → 64.
    pub fn for_limit(limit: Limit) -> Self {
        let period_us = limit.period.as_micros().max(1);
        let refilled_in_window = u128::from(limit.rate) * Self::WINDOW.as_micros() / period_us;
        let cap = (limit.burst / 8).clamp(1, Self::MAX_SIZE);
        let size = u32::try_from(refilled_in_window).unwrap_or(u32::MAX).clamp(1, cap);
        LeasePolicy { size, validity: Self::WINDOW }
    }

    /// The most a client can get above one GCRA's admissions over any window from `instances` instances.
    pub fn overshoot_bound(&self, instances: u32) -> u32 {
        instances.saturating_mul(self.size.saturating_sub(1))
    }
}

/// Keys whose state one instance keeps by default: about 3 MiB at most (the entries of idle keys are reclaimed
/// first; when every entry is live, arbitrary ones are dropped, which only loses their unspent tokens).
pub const DEFAULT_CAPACITY: usize = 16_384;

/// Shards of the map: requests of different keys rarely wait for each other's lock.
const SHARDS: usize = 64;

/// The smallest lease refilled ahead: smaller ones (the default limit's 5, exact security limits) keep one
/// lease at a time, taken by the request that finds no token, so their Redis traffic is unchanged.
pub const REFILL_AHEAD_MIN_SIZE: u32 = 8;

/// One lease at a time per key and instance: the requests that find no token wait for it.
type Flight = Arc<tokio::sync::Mutex<()>>;

/// What an instance knows of one key.
struct Entry {
    local: Local,
    flight: Flight,
}

impl Entry {
    /// Holds nothing worth keeping: no spendable token, no refusal to repeat, nobody leasing.
    fn idle(&self, now: Instant) -> bool {
        !self.local.has_tokens(now)
            && self.local.refused_until.is_none_or(|until| until <= now)
            && Arc::strong_count(&self.flight) == 1
    }
}

#[derive(Clone, Copy, Debug)]
struct Local {
    /// Leased tokens not spent yet, spendable until `tokens_until`.
    tokens: u32,
    tokens_until: Instant,
    /// Redis' remaining after the last lease: tokens nobody has leased.
    redis_remaining: u32,
    /// When the key is fully replenished in Redis, as of the last answer.
    reset_at: Instant,
    /// Redis refused until then: requests before it are refused here.
    refused_until: Option<Instant>,
    /// When the last lease failed (Redis unavailable): requests that were waiting for it take its outcome.
    failed_at: Option<Instant>,
    /// A refill is under way (spawned, waiting for the flight or for Redis).
    refilling: bool,
    /// The last refill was refused or failed: none is started ahead again until a request's own lease succeeds.
    refill_refused: bool,
}

impl Local {
    fn new(now: Instant) -> Self {
        Local {
            tokens: 0,
            tokens_until: now,
            redis_remaining: 0,
            reset_at: now,
            refused_until: None,
            failed_at: None,
            refilling: false,
            refill_refused: false,
        }
    }

    fn has_tokens(&self, now: Instant) -> bool {
        self.tokens > 0 && now < self.tokens_until
    }

    /// Answers from what this instance holds: a leased token, or the refusal Redis gave until its retry time.
    fn spend(&mut self, now: Instant, limit: Limit) -> Option<Decision> {
        let reset = self.reset_at.saturating_duration_since(now);
        // A request that arrived before a refusal's time was taken is not refused by it; nor by a refusal a later
        // lease ended (`None`): comparing arrival times with the lease's own time refused requests that merely
        // waited for the shard while a lease was recorded (seen as rare 429s at 1 000 000/s).
        if let Some(until) = self.refused_until.filter(|until| now < *until) {
            let retry_after = until - now;
            return Some(decision(false, limit, 0, reset, retry_after));
        }
        if !self.has_tokens(now) {
            return None;
        }
        self.tokens -= 1;
        Some(decision(true, limit, self.redis_remaining.saturating_add(self.tokens), reset, Duration::ZERO))
    }

    /// Keeps Redis' answer to a lease; the decision for the request that took it (which spends one token).
    fn record(&mut self, grant: Grant, now: Instant, validity: Duration, limit: Limit) -> Decision {
        let answer = grant.decision;
        self.reset_at = now + answer.reset;
        self.failed_at = None;
        if grant.granted == 0 {
            self.tokens = 0;
            self.refused_until = Some(now + answer.retry_after);
            return answer;
        }
        self.tokens = grant.granted - 1;
        self.tokens_until = now + validity;
        self.redis_remaining = answer.remaining;
        self.refused_until = None;
        self.refill_refused = false;
        decision(true, limit, answer.remaining.saturating_add(self.tokens), answer.reset, Duration::ZERO)
    }

    /// Whether the request that just spent a token should start a refill: leases large enough, a quarter of a
    /// lease or less left (late enough that a refill brings most of a lease, early enough that it lands before
    /// the tokens run out: a Redis round trip is well under the time a busy key spends a quarter lease), no refill under way or refused since the last lease. Marks the refill started.
    fn wants_refill(&mut self, size: u32) -> bool {
        let wanted = size >= REFILL_AHEAD_MIN_SIZE
            && !self.refilling
            && !self.refill_refused
            && self.refused_until.is_none()
            && self.tokens <= size / 4;
        self.refilling |= wanted;
        wanted
    }

    /// The tokens a refill should ask for now, topping what is held up to `size − 1`; 0 when no refill is needed
    /// any more (a request's own lease came first).
    fn refill_wanted(&self, now: Instant, size: u32) -> u32 {
        let held = if self.has_tokens(now) { self.tokens } else { 0 };
        if held > size / 4 { 0 } else { size - 1 - held }
    }

    /// Keeps a refill's answer: its tokens are added to those held, all spendable for a new validity. A refusal
    /// or a failure leaves the held tokens to be spent and stops refilling ahead until a request's own lease.
    fn refilled(&mut self, grant: Option<Grant>, now: Instant, validity: Duration) {
        self.refilling = false;
        let Some(grant) = grant.filter(|grant| grant.granted > 0) else {
            self.refill_refused = true;
            return;
        };
        let held = if self.has_tokens(now) { self.tokens } else { 0 };
        self.tokens = held.saturating_add(grant.granted);
        self.tokens_until = now + validity;
        self.redis_remaining = grant.decision.remaining;
        self.reset_at = now + grant.decision.reset;
    }
}

fn decision(allowed: bool, limit: Limit, remaining: u32, reset: Duration, retry_after: Duration) -> Decision {
    Decision {
        allowed,
        limit: limit.burst,
        remaining: remaining.min(limit.burst),
        reset,
        retry_after,
        unavailable: false,
    }
}

type Shard<K> = Mutex<HashMap<K, Entry>>;

struct Shared<K> {
    limiter: RateLimiter,
    namespace: &'static str,
    limit: Limit,
    lease: LeasePolicy,
    shards: Box<[Shard<K>]>,
    shard_capacity: usize,
    hasher: RandomState,
}

/// A [`RateLimiter`] for one limit that spends leased tokens locally (see the module's doc): one Redis round trip
/// per lease rather than per request, still one limit across every instance, within a bounded overshoot.
pub struct LeasedRateLimiter<K> {
    inner: Arc<Shared<K>>,
}

impl<K> Clone for LeasedRateLimiter<K> {
    fn clone(&self) -> Self {
        LeasedRateLimiter { inner: Arc::clone(&self.inner) }
    }
}

impl<K> fmt::Debug for LeasedRateLimiter<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeasedRateLimiter")
            .field("namespace", &self.inner.namespace)
            .field("limit", &self.inner.limit)
            .field("lease", &self.inner.lease)
            .finish_non_exhaustive()
    }
}

impl<K> LeasedRateLimiter<K>
where
    K: Hash + Eq + Clone + Display + Send + Sync + 'static,
{
    /// `limit` per key, leased as [`LeasePolicy::for_limit`] says, state kept under
    /// `{limiter's prefix}:{namespace}:{key}` in Redis and for at most [`DEFAULT_CAPACITY`] keys in process.
    pub fn new(limiter: RateLimiter, namespace: &'static str, limit: Limit) -> Self {
        Self::with_lease(limiter, namespace, limit, LeasePolicy::for_limit(limit), DEFAULT_CAPACITY)
    }

    /// As [`LeasedRateLimiter::new`] with a lease policy and a key capacity of the caller's choosing.
    pub fn with_lease(
        limiter: RateLimiter,
        namespace: &'static str,
        limit: Limit,
        lease: LeasePolicy,
        capacity: usize,
    ) -> Self {
        let shards = (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect();
        let shard_capacity = capacity.div_ceil(SHARDS).max(1);
        let lease = LeasePolicy { size: lease.size.max(1), ..lease };
        let shared = Shared { limiter, namespace, limit, lease, shards, shard_capacity, hasher: RandomState::new() };
        LeasedRateLimiter { inner: Arc::new(shared) }
    }

    /// The limit applied to every key.
    pub fn limit(&self) -> Limit {
        self.inner.limit
    }

    /// The lease size and validity in use, which bound the overshoot ([`LeasePolicy::overshoot_bound`]).
    pub fn lease_policy(&self) -> LeasePolicy {
        self.inner.lease
    }

    /// Keys whose state this instance holds now: never more than the capacity (rounded up to the shards).
    pub fn tracked_keys(&self) -> usize {
        self.inner.shards.iter().map(|shard| lock(shard).len()).sum()
    }

    /// Takes one request from `key`'s allowance if a local lease has it, without waiting: `None` when a new lease
    /// is needed (then [`check`](Self::check) takes it). Most requests are answered here, so a caller on a hot
    /// path can answer them without an `async` block (which a hand-written `tower` service would have to box).
    pub fn check_local(&self, key: &K) -> Option<Decision> {
        let inner = &*self.inner;
        let (decision, refill) = inner.spend_local(inner.shard(key), key, Instant::now()).ok()?;
        if refill {
            self.spawn_refill(key);
        }
        Some(inner.counted(decision))
    }

    /// Takes one request from `key`'s allowance: from a local lease when one is left, else from a new lease.
    /// Never fails: when Redis is unavailable the limiter's policy decides. Every decision is counted.
    pub async fn check(&self, key: &K) -> Decision {
        let inner = &*self.inner;
        let shard = inner.shard(key);
        let arrived = Instant::now();
        let flight = match inner.spend_local(shard, key, arrived) {
            Ok((decision, refill)) => {
                if refill {
                    self.spawn_refill(key);
                }
                return inner.counted(decision);
            }
            Err(flight) => flight,
        };
        let _turn = flight.lock().await;
        if let Some(decision) = inner.answered_meanwhile(shard, key, arrived) {
            return decision;
        }
        inner.lease(shard, key, &flight).await
    }

    /// Refills `key`'s tokens in a task of its own; outside a Tokio runtime there is none, and the request that
    /// finds no token takes the lease.
    fn spawn_refill(&self, key: &K) {
        let (inner, key) = (Arc::clone(&self.inner), key.clone());
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn(async move { inner.refill(key).await })),
            Err(_) => {
                if let Some(entry) = lock(inner.shard(&key)).get_mut(&key) {
                    entry.local.refilling = false;
                }
            }
        }
    }
}

impl<K> Shared<K>
where
    K: Hash + Eq + Clone + Display,
{
    fn shard(&self, key: &K) -> &Shard<K> {
        let index = self.hasher.hash_one(key) as usize % self.shards.len();
        &self.shards[index]
    }

    fn counted(&self, decision: Decision) -> Decision {
        self.limiter.counters().decided(decision.allowed);
        decision
    }

    /// The local answer (and whether to start a refill), or the key's flight to wait for when a lease is needed.
    fn spend_local(&self, shard: &Shard<K>, key: &K, now: Instant) -> Result<(Decision, bool), Flight> {
        let mut map = lock(shard);
        if let Some(entry) = map.get_mut(key) {
            let Some(decision) = entry.local.spend(now, self.limit) else { return Err(Arc::clone(&entry.flight)) };
            let refill = decision.allowed && entry.local.wants_refill(self.lease.size);
            return Ok((decision, refill));
        }
        make_room(&mut *map, self.shard_capacity, now);
        let flight = Flight::default();
        map.insert(key.clone(), Entry { local: Local::new(now), flight: Arc::clone(&flight) });
        Err(flight)
    }

    /// After waiting for the key's flight: the lease taken meanwhile may cover this request, its refusal or its
    /// failure answer it too.
    fn answered_meanwhile(&self, shard: &Shard<K>, key: &K, arrived: Instant) -> Option<Decision> {
        let mut map = lock(shard);
        let entry = map.get_mut(key)?;
        if entry.local.failed_at.is_some_and(|failed| failed >= arrived) {
            drop(map);
            return Some(self.limiter.unavailable_decision(self.limit));
        }
        entry.local.spend(Instant::now(), self.limit).map(|decision| self.counted(decision))
    }

    /// The key's state in Redis. One allocation per lease, not per request.
    fn redis_key(&self, key: &K) -> String {
        format!("{}:{}:{key}", self.limiter.prefix(), self.namespace)
    }

    /// Tops `key`'s tokens up to `size − 1` from Redis, in turn with the key's other leases (its flight), so
    /// requests do not wait for the lease when their tokens run out (see the module's doc).
    async fn refill(&self, key: K) {
        let shard = self.shard(&key);
        let Some(flight) = lock(shard).get(&key).map(|entry| Arc::clone(&entry.flight)) else { return };
        let _turn = flight.lock().await;
        let size = self.lease.size;
        let wanted = match lock(shard).get_mut(&key) {
            Some(entry) => {
                let wanted = entry.local.refill_wanted(Instant::now(), size);
                entry.local.refilling = wanted > 0;
                wanted
            }
            None => 0,
        };
        if wanted == 0 {
            return;
        }
        let grant = self.limiter.take(&self.redis_key(&key), self.limit, wanted).await.ok();
        let now = Instant::now();
        if let Some(entry) = lock(shard).get_mut(&key) {
            entry.local.refilled(grant, now, self.lease.validity);
        }
    }

    /// Takes a lease from Redis and keeps it; the decision for this request.
    async fn lease(&self, shard: &Shard<K>, key: &K, flight: &Flight) -> Decision {
        let redis_key = self.redis_key(key);
        let answer = self.limiter.take(&redis_key, self.limit, self.lease.size).await;
        let now = Instant::now();
        let mut map = lock(shard);
        if !map.contains_key(key) {
            // Dropped to make room while Redis answered: kept again, still within the capacity.
            make_room(&mut *map, self.shard_capacity, now);
            map.insert(key.clone(), Entry { local: Local::new(now), flight: Arc::clone(flight) });
        }
        let Some(entry) = map.get_mut(key) else {
            return self.limiter.unavailable_decision(self.limit);
        };
        match answer {
            Ok(grant) => {
                let decision = entry.local.record(grant, now, self.lease.validity, self.limit);
                drop(map);
                self.counted(decision)
            }
            Err(err) => {
                entry.local.failed_at = Some(now);
                drop(map);
                self.limiter.unavailable(self.limit, &err)
            }
        }
    }
}

/// Makes room for one more key in a shard holding at most `capacity`: drops idle entries, then, if that freed
/// less than an eighth, arbitrary ones down to 7/8 of the capacity (so a spray of new keys pays one sweep per
/// eighth of the capacity, not one per key). Dropping a live entry only loses its unspent tokens.
fn make_room<K: Hash + Eq + Clone>(map: &mut HashMap<K, Entry>, capacity: usize, now: Instant) {
    if map.len() < capacity {
        return;
    }
    map.retain(|_, entry| !entry.idle(now));
    let target = capacity - (capacity / 8).max(1);
    if map.len() > target {
        let excess: Vec<K> = map.keys().take(map.len() - target).cloned().collect();
        for key in excess {
            map.remove(&key);
        }
    }
}

/// The shard's map; a panic while it was held left it consistent (every update is a single assignment).
fn lock<K>(shard: &Shard<K>) -> MutexGuard<'_, HashMap<K, Entry>> {
    shard.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(rate: u32, period: Duration, burst: u32) -> Limit {
        Limit { rate, period, burst }
    }

    #[test]
    fn a_lease_is_fifty_milliseconds_of_the_rate_at_most_an_eighth_of_the_burst_and_64() {
        let second = Duration::from_secs(1);
        let size = |rate, burst| LeasePolicy::for_limit(limit(rate, second, burst)).size;
        assert_eq!(size(100, 200), 5, "the default RATE_LIMIT_RPS / RATE_LIMIT_BURST");
        assert_eq!(size(100, 100), 5);
        assert_eq!(size(1000, 2000), 50);
        assert_eq!(size(1000, 100), 12, "an eighth of the burst");
        assert_eq!(size(1_000_000, 1_000_000), LeasePolicy::MAX_SIZE, "capped");
        assert_eq!(size(39, 1000), 1, "below 40/s a lease is one token: exact");
        assert_eq!(size(40, 1000), 2);
        assert_eq!(size(1, 3), 1);
        assert_eq!(size(1000, 7), 1, "a burst below 16 leaves no room to lease");
        assert_eq!(size(u32::MAX, u32::MAX), LeasePolicy::MAX_SIZE, "no overflow");
        assert_eq!(size(0, 0), 1, "never zero");
        let login = LeasePolicy::for_limit(limit(5, Duration::from_secs(60), 5));
        assert_eq!(login.size, 1, "login limits stay exact");
        assert_eq!(LeasePolicy::for_limit(limit(100, second, 200)).validity, LeasePolicy::WINDOW);
    }

    #[test]
    fn the_overshoot_bound_is_the_tokens_each_instance_can_hold() {
        let lease = LeasePolicy::for_limit(limit(100, Duration::from_secs(1), 100));
        assert_eq!(lease.overshoot_bound(2), 8);
        assert_eq!(LeasePolicy::EXACT.overshoot_bound(10), 0, "exact leases never overshoot");
    }

    fn granted(granted: u32, remaining: u32, reset_ms: u64, retry_ms: u64) -> Grant {
        let limit = limit(100, Duration::from_secs(1), 100);
        Grant {
            granted,
            decision: Decision {
                allowed: granted > 0,
                limit: limit.burst,
                remaining,
                reset: Duration::from_millis(reset_ms),
                retry_after: Duration::from_millis(retry_ms),
                unavailable: false,
            },
        }
    }

    #[test]
    fn leased_tokens_are_spent_locally_until_they_run_out_or_expire() {
        let limit = limit(100, Duration::from_secs(1), 100);
        let now = Instant::now();
        let mut local = Local::new(now);
        assert!(local.spend(now, limit).is_none(), "nothing leased yet");
        let first = local.record(granted(5, 90, 100, 0), now, Duration::from_millis(50), limit);
        assert!(first.allowed);
        assert_eq!(first.remaining, 94, "Redis' remaining plus the 4 tokens held here");
        for left in (0..4).rev() {
            let decision = local.spend(now + Duration::from_millis(10), limit).expect("a leased token");
            assert!(decision.allowed);
            assert_eq!(decision.remaining, 90 + left);
            assert_eq!(decision.reset, Duration::from_millis(90), "counted down from the lease's answer");
        }
        assert!(local.spend(now, limit).is_none(), "the lease is spent");

        local.record(granted(5, 90, 100, 0), now, Duration::from_millis(50), limit);
        assert!(local.spend(now + Duration::from_millis(50), limit).is_none(), "expired tokens are dropped");
    }

    #[test]
    fn a_refill_starts_at_a_quarter_of_a_lease_and_tops_the_tokens_up_to_one_short_of_a_lease() {
        let limit = limit(100_000, Duration::from_secs(1), 100_000);
        let (now, validity) = (Instant::now(), Duration::from_millis(50));
        let mut local = Local::new(now);
        local.record(granted(16, 1000, 10, 0), now, validity, limit);
        assert_eq!(local.tokens, 15);
        let mut started = Vec::new();
        for _ in 0..12 {
            local.spend(now, limit).expect("a token");
            started.push(local.wants_refill(16));
        }
        let at_four_left_once = [false, false, false, false, false, false, false, false, false, false, true, false];
        assert_eq!(started, at_four_left_once);
        assert_eq!(local.refill_wanted(now, 16), 12, "3 held: 12 more make 15");
        local.refilled(Some(granted(12, 900, 10, 0)), now + Duration::from_millis(10), validity);
        assert_eq!(local.tokens, 15, "never more than a lease less the token its taker spent");
        assert!(!local.refilling);
        assert_eq!(local.refill_wanted(now, 16), 0, "more than a quarter of a lease held");

        assert!(!local.wants_refill(4), "small leases are not refilled ahead");
        local.tokens = 3;
        assert!(local.wants_refill(16));
        local.refilled(Some(granted(0, 0, 10, 5)), now, validity);
        assert_eq!(local.tokens, 3, "a refused refill leaves the tokens held");
        assert_eq!(local.refused_until, None, "and refuses nothing: the held tokens are still spendable");
        local.tokens = 2;
        assert!(!local.wants_refill(16), "no refill ahead after a refusal");
        local.record(granted(16, 800, 10, 0), now, validity, limit);
        local.tokens = 2;
        assert!(local.wants_refill(16), "until a request's own lease succeeds");
    }

    #[test]
    fn a_refusal_is_repeated_locally_until_its_retry_time() {
        let limit = limit(100, Duration::from_secs(1), 100);
        let now = Instant::now();
        let mut local = Local::new(now);
        let refused = local.record(granted(0, 0, 1000, 10), now, Duration::from_millis(50), limit);
        assert!(!refused.allowed);
        let again = local.spend(now + Duration::from_millis(4), limit).expect("answered locally");
        assert!(!again.allowed);
        assert_eq!(again.retry_after, Duration::from_millis(6));
        assert_eq!(again.remaining, 0);
        assert!(local.spend(now + Duration::from_millis(10), limit).is_none(), "then Redis is asked again");
    }

    fn entry(now: Instant, tokens: u32) -> Entry {
        let mut local = Local::new(now);
        local.tokens = tokens;
        local.tokens_until = now + Duration::from_secs(1);
        Entry { local, flight: Flight::default() }
    }

    #[test]
    fn a_full_shard_drops_idle_keys_first_then_arbitrary_ones() {
        let now = Instant::now();
        let mut map = HashMap::new();
        for key in 0..64u32 {
            map.insert(key, entry(now, key % 2));
        }
        make_room(&mut map, 64, now);
        assert_eq!(map.len(), 32, "the idle half is dropped");
        assert!(map.values().all(|entry| entry.local.tokens == 1), "the live half is kept");

        for key in 100..132u32 {
            map.insert(key, entry(now, 1));
        }
        make_room(&mut map, 64, now);
        assert_eq!(map.len(), 56, "every entry live: down to 7/8 of the capacity");
    }

    #[test]
    fn a_key_someone_is_leasing_for_is_not_idle() {
        let now = Instant::now();
        let leasing = entry(now, 0);
        assert!(leasing.idle(now));
        let _waiter = Arc::clone(&leasing.flight);
        assert!(!leasing.idle(now), "its flight has a waiter");
    }

    #[test]
    fn the_map_never_exceeds_its_capacity_under_a_spray_of_keys() {
        let now = Instant::now();
        let mut map = HashMap::new();
        for key in 0..10_000u32 {
            make_room(&mut map, 100, now);
            map.insert(key, entry(now, 1));
            assert!(map.len() <= 100);
        }
        let mut tiny = HashMap::new();
        for key in 0..10u32 {
            make_room(&mut tiny, 1, now);
            tiny.insert(key, entry(now, 1));
            assert_eq!(tiny.len(), 1);
        }
    }
}
