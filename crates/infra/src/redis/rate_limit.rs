//! A distributed rate limiter: GCRA (the generic cell rate algorithm) in one Lua script, so every instance
//! sharing Redis enforces one limit, atomically, in one round trip. The script goes by `EVALSHA` (its text
//! crosses the network once per server). Written here because redis-cell (the module that does this natively)
//! is not packaged for the servers we target. The script can also grant several tokens at once: the lease
//! [`super::LeasedRateLimiter`] spends locally.

use std::sync::LazyLock;
use std::time::Duration;

use super::client::RedisClient;
use super::config::RedisConfig;
use super::error::RedisError;
use super::metrics::DecisionCounters;
use super::script::LuaScript;

/// GCRA: the key holds the "theoretical arrival time" (TAT) of the next request, in microseconds of the
/// server clock (milliseconds would cap every limit at 1000 requests per second). `available` tokens are those
/// with TAT + n×interval - burst×interval <= now; a request for up to `want` of them is granted
/// `min(want, available)` and moves TAT that many intervals later (a lease: tokens consumed up front). Lua numbers
/// are doubles: microsecond timestamps (~2^51) stay exact. ARGV: interval (µs), burst, want.
/// Returns {granted (0: refused), remaining, reset_us, retry_after_us}.
static GCRA: LazyLock<LuaScript> = LazyLock::new(|| {
    LuaScript::new(
        "EVAL gcra",
        r"
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local tolerance = interval * burst
local available = math.floor((now - tat + tolerance) / interval)
if available < 1 then
  return {0, 0, tat - now, tat + interval - tolerance - now}
end
local granted = math.min(want, available)
local new_tat = tat + granted * interval
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000))
return {granted, available - granted, new_tat - now, 0}
",
    )
});

/// The limit: `rate` requests per `period`, with bursts of up to `burst` requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    /// Requests admitted per period at the steady rate.
    pub rate: u32,
    /// The period.
    pub period: Duration,
    /// Requests admitted at once from an idle start.
    pub burst: u32,
}

impl Limit {
    fn interval_us(&self) -> u64 {
        (self.period.as_micros() as u64 / u64::from(self.rate.max(1))).max(1)
    }
}

/// The decision, with what HTTP needs for RateLimit-* and Retry-After headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// The limit (RateLimit-Limit): the burst.
    pub limit: u32,
    /// Requests still admitted right now (RateLimit-Remaining).
    pub remaining: u32,
    /// Until the limiter is fully replenished (RateLimit-Reset).
    pub reset: Duration,
    /// When limited: how long to wait before retrying (Retry-After).
    pub retry_after: Duration,
    /// Redis could not answer: the decision is the [`WhenUnavailable`] policy's, not the limit's.
    pub unavailable: bool,
}

/// Redis' answer to a lease: how many tokens it granted (0: refused) and the decision for the request that
/// asked, whose `remaining` counts the tokens nobody has leased.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grant {
    /// Tokens consumed in Redis for the caller, at most the number asked for.
    pub granted: u32,
    /// The decision for one request; `allowed` when at least one token was granted.
    pub decision: Decision,
}

/// What to do when Redis cannot answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhenUnavailable {
    /// Let requests through (availability first; the default).
    Allow,
    /// Refuse requests (protection first).
    Deny,
}

impl WhenUnavailable {
    /// The policy REDIS_RATE_LIMIT_FAIL_OPEN chooses.
    pub fn from_config(config: &RedisConfig) -> Self {
        if config.rate_limit_fail_open { WhenUnavailable::Allow } else { WhenUnavailable::Deny }
    }
}

/// A rate limiter over Redis; instances sharing a Redis and a prefix share the limits.
#[derive(Clone, Debug)]
pub struct RateLimiter {
    redis: RedisClient,
    prefix: String,
    when_unavailable: WhenUnavailable,
    counters: DecisionCounters,
}

impl RateLimiter {
    /// A limiter storing its state under `{prefix}:{key}`.
    pub fn new(redis: RedisClient, prefix: impl Into<String>, when_unavailable: WhenUnavailable) -> Self {
        RateLimiter { redis, prefix: prefix.into(), when_unavailable, counters: DecisionCounters::new() }
    }

    /// Takes one request from `key`'s allowance, in one Redis round trip (exact). Never fails: when Redis is
    /// unavailable the configured policy decides, and the decision is counted.
    pub async fn check(&self, key: &str, limit: Limit) -> Decision {
        match self.take(&format!("{}:{key}", self.prefix), limit, 1).await {
            Ok(grant) => {
                self.counters.decided(grant.decision.allowed);
                grant.decision
            }
            Err(err) => self.unavailable(limit, &err),
        }
    }

    /// Takes up to `want` tokens of the allowance stored at `redis_key` (the whole key, prefix included). Not
    /// counted: the caller counts the decisions it makes with them.
    pub(crate) async fn take(&self, redis_key: &str, limit: Limit, want: u32) -> Result<Grant, RedisError> {
        let args = (limit.interval_us(), limit.burst, want.max(1));
        let (granted, remaining, reset_us, retry_us) =
            self.redis.eval::<(u64, u64, u64, u64), _>(&GCRA, &[redis_key], &args).await?;
        let granted = u32::try_from(granted).unwrap_or(u32::MAX);
        let decision = Decision {
            allowed: granted > 0,
            limit: limit.burst,
            remaining: u32::try_from(remaining).unwrap_or(u32::MAX).min(limit.burst),
            reset: Duration::from_micros(reset_us),
            retry_after: Duration::from_micros(retry_us),
            unavailable: false,
        };
        Ok(Grant { granted, decision })
    }

    /// The prefix of every key of this limiter.
    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The decision counters (`redis_rate_limit_decisions_total`), shared with a leasing wrapper.
    pub(crate) fn counters(&self) -> &DecisionCounters {
        &self.counters
    }

    /// The policy's decision without Redis, counted; `err` is why Redis could not answer.
    pub(crate) fn unavailable(&self, limit: Limit, err: &RedisError) -> Decision {
        // The Redis client logs the outage once; each decision taken without Redis is counted (`fail_open`,
        // `fail_closed`) rather than logged.
        tracing::debug!(error = %err, "rate limiter cannot reach Redis");
        self.unavailable_decision(limit)
    }

    /// The policy's decision without Redis, counted (`fail_open` / `fail_closed`).
    pub(crate) fn unavailable_decision(&self, limit: Limit) -> Decision {
        let allowed = self.when_unavailable == WhenUnavailable::Allow;
        self.counters.unavailable(allowed);
        let wait = Duration::from_micros(limit.interval_us());
        Decision {
            allowed,
            limit: limit.burst,
            remaining: if allowed { limit.burst } else { 0 },
            reset: wait,
            retry_after: if allowed { Duration::ZERO } else { wait },
            unavailable: true,
        }
    }
}
