//! The infrastructure layer of rust-app: configuration, health checks, and clients for PostgreSQL, Redis and
//! Kafka. It knows nothing of the service built on it.
//!
//! Each dependency has one module with the same shape: its configuration (read from the environment), its
//! client, and its health check.

pub mod config;
pub mod health;
pub mod kafka;
mod outcome_histograms;
pub mod postgres;
pub mod redis;
pub mod resilience;
pub mod settings;
pub mod supervisor;
pub mod telemetry;
