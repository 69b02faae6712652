//! Kafka: configuration, an admin client for metadata, an idempotent producer, a consumer group member with
//! retries and a dead-letter topic, consumer state (membership, lag), metrics and a health check.
//!
//! Unlike PostgreSQL and Redis, Kafka has no circuit breaker: librdkafka queues records and reconnects to the
//! brokers by itself, and KAFKA_DELIVERY_TIMEOUT already bounds how long a send waits, so a breaker would only
//! add a second, less informed opinion on when the brokers are back.

mod client;
mod config;
mod connectivity;
mod consumer;
pub mod dlq;
mod error;
mod health;
pub mod metrics;
mod producer;
mod record;
mod spans;
mod state;

pub use client::{KafkaClient, TopicMetadata};
pub use config::KafkaConfig;
pub use consumer::{Handler, KafkaConsumer};
pub use error::{ConsumeError, HandlerError, KafkaError, ProduceError};
pub use health::KafkaHealth;
pub use producer::{Delivered, KafkaProducer};
pub use record::{Record, headers};
pub use state::{ConsumerSnapshot, ConsumerState};
