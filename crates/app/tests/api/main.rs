//! Integration tests of the service against the real local stack (`scripts/stack up`).

mod activity;
mod cache_coherence;
mod cli;
mod degraded;
mod dlq;
mod events;
mod health;
mod helpers;
mod metrics;
mod migrations;
mod outbox;
mod server_limits;
mod sessions;
mod shutdown;
mod telemetry;
mod users;
