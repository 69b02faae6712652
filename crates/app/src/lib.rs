//! rust-app: a service built on the `infra` crate.

pub mod cli;
pub mod events;
pub mod http;
pub mod metric_catalog;
pub mod migrations;
pub mod outbox;
pub mod port;
pub mod serve;
pub mod settings;
pub mod shutdown;
pub mod startup;
pub mod users;
