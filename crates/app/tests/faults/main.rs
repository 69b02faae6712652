//! The fault suite: the service as deployed (two `rust-app serve` processes on one database) under load while its
//! dependencies fail. Every test uses private servers (test_support) behind TCP proxies it controls; the shared
//! stack is never touched.

mod broker_restarts;
mod checks;
mod connection_flood;
mod deployment;
mod load;
mod matrix;
mod redis_partition;

/// Held by each test of this binary while it runs: the tests load two shared cores; one at a time keeps their
/// timings meaningful.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
