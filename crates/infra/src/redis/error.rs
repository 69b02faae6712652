//! Errors of the Redis layer, classified so callers can degrade (cache bypass), retry or answer 503 without
//! parsing messages. Messages never contain the password or any value.

use std::time::Duration;

/// What went wrong talking to Redis.
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    /// REDIS_ADDR could not be turned into connection settings.
    #[error("REDIS_ADDR {addr} is not a valid Redis address: {reason}")]
    InvalidAddress {
        /// The address, password masked.
        addr: String,
        /// Why.
        reason: String,
    },
    /// Redis cannot be reached (refused, dropped connection, timeout, no pooled connection in time).
    #[error("Redis is unavailable: {cause}")]
    Unavailable {
        /// The connection-level error.
        cause: String,
    },
    /// The circuit breaker is open after repeated failures: the call was not attempted.
    #[error("Redis is unavailable (circuit breaker open; next attempt in {}ms)", retry_in.as_millis())]
    CircuitOpen {
        /// Until the breaker lets a probe through.
        retry_in: Duration,
    },
    /// The server answered with an error (wrong type, script error, ...).
    #[error("Redis command {command} failed: {message}")]
    Command {
        /// The command name.
        command: &'static str,
        /// The server's error.
        message: String,
    },
    /// A script sent by its SHA-1 is not in the server's script cache (`NOSCRIPT`: first use, restart, failover).
    /// The client answers it by sending the script's source; callers never see it.
    #[error("Redis does not know the script of {command} (NOSCRIPT)")]
    UnknownScript {
        /// The script's command label.
        command: &'static str,
    },
    /// A value could not be encoded or decoded (JSON, or a reply of an unexpected type).
    #[error("cannot convert a Redis value: {0}")]
    Conversion(String),
}

impl RedisError {
    /// Redis cannot serve now (network, timeout or open breaker): degrade or answer 503.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, RedisError::Unavailable { .. } | RedisError::CircuitOpen { .. })
    }

    /// A low-cardinality label for metrics.
    pub fn metric_class(&self) -> &'static str {
        match self {
            RedisError::InvalidAddress { .. } => "config",
            RedisError::Unavailable { .. } => "unavailable",
            RedisError::CircuitOpen { .. } => "circuit_open",
            RedisError::Command { .. } | RedisError::UnknownScript { .. } => "command",
            RedisError::Conversion(_) => "conversion",
        }
    }

    /// Classifies a redis-rs error from `command`.
    pub(crate) fn from_redis(command: &'static str, err: &redis::RedisError) -> Self {
        if is_connection_level(err) {
            RedisError::Unavailable { cause: err.to_string() }
        } else if err.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) {
            RedisError::UnknownScript { command }
        } else if err.kind() == redis::ErrorKind::UnexpectedReturnType {
            RedisError::Conversion(err.to_string())
        } else {
            RedisError::Command { command, message: err.to_string() }
        }
    }
}

/// Errors that say the connection or the server is unusable, as opposed to an error reply.
pub(crate) fn is_connection_level(err: &redis::RedisError) -> bool {
    err.is_io_error()
        || err.is_timeout()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
        || err.is_unrecoverable_error()
}
