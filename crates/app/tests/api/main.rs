//! Integration tests of the service against the real local stack (`scripts/stack up`).

mod activity;
mod cli;
mod dlq;
mod events;
mod health;
mod helpers;
mod metrics;
mod migrations;
mod shutdown;
mod telemetry;
