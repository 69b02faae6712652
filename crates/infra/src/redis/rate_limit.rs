//! A distributed rate limiter: GCRA (the generic cell rate algorithm) in one Lua script, so every instance
//! sharing Redis enforces one limit, atomically, in one round trip. Written here because redis-cell (the
//! module that does this natively) is not packaged for the servers we target.

use std::time::Duration;

use super::client::RedisClient;
use super::config::RedisConfig;
use super::error::RedisError;
use super::metrics::{LabelledCounter, rate_limit_decisions};

/// GCRA: the key holds the "theoretical arrival time" (TAT) of the next request, in microseconds of the
/// server clock (milliseconds would cap every limit at 1000 requests per second). A request is allowed when
/// TAT - burst×interval <= now; it then moves TAT one interval later. Lua numbers are doubles: microsecond
/// timestamps (~2^51) stay exact. Returns {allowed, remaining, reset_us, retry_after_us}.
const GCRA: &str = r"
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local tolerance = interval * burst
local new_tat = tat + interval
local allow_at = new_tat - tolerance
if allow_at > now then
  return {0, 0, tat - now, allow_at - now}
end
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000))
return {1, math.floor((now - allow_at) / interval), new_tat - now, 0}
";

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
    decisions: LabelledCounter,
}

impl RateLimiter {
    /// A limiter storing its state under `{prefix}:{key}`.
    pub fn new(redis: RedisClient, prefix: impl Into<String>, when_unavailable: WhenUnavailable) -> Self {
        RateLimiter { redis, prefix: prefix.into(), when_unavailable, decisions: rate_limit_decisions() }
    }

    /// Takes one request from `key`'s allowance. Never fails: when Redis is unavailable the configured
    /// policy decides, and the decision is counted.
    pub async fn check(&self, key: &str, limit: Limit) -> Decision {
        let redis_key = format!("{}:{key}", self.prefix);
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(GCRA).arg(1).arg(&redis_key).arg(limit.interval_us()).arg(limit.burst);
        match self.redis.script::<(u8, u64, u64, u64)>("EVAL gcra", &redis_key, cmd).await {
            Ok((allowed, remaining, reset_us, retry_us)) => {
                let allowed = allowed == 1;
                self.decisions.increment(if allowed { "allowed" } else { "limited" });
                Decision {
                    allowed,
                    limit: limit.burst,
                    remaining: u32::try_from(remaining).unwrap_or(u32::MAX).min(limit.burst),
                    reset: Duration::from_micros(reset_us),
                    retry_after: Duration::from_micros(retry_us),
                    unavailable: false,
                }
            }
            Err(err) => self.unavailable(limit, &err),
        }
    }

    fn unavailable(&self, limit: Limit, err: &RedisError) -> Decision {
        let allowed = self.when_unavailable == WhenUnavailable::Allow;
        // The Redis client logs the outage once; each decision taken without Redis is counted (`fail_open`,
        // `fail_closed`) rather than logged.
        tracing::debug!(error = %err, allowed, "rate limiter cannot reach Redis");
        self.decisions.increment(if allowed { "fail_open" } else { "fail_closed" });
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
