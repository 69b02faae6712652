//! Integration tests of the service against the real local stack (`scripts/stack up`).

mod access;
mod activity;
mod cache_coherence;
mod cli;
mod client_cache;
mod consumer_faults;
mod degraded;
mod dlq;
mod events;
mod health;
mod helpers;
mod kafka_tls;
mod log_hygiene;
mod login_limits;
mod metrics;
mod migrations;
mod ops;
mod outbox;
mod secrets;
mod server_limits;
mod session_lifecycle;
mod sessions;
mod shutdown;
mod telemetry;
mod users;
