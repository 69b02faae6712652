//! Kafka: configuration, an admin client for metadata, an idempotent producer, a consumer group member with
//! retries and a dead-letter topic, consumer state (membership, lag), metrics and a health check.

mod client;
mod config;
mod consumer;
pub mod dlq;
pub mod headers;
mod health;
pub mod metrics;
mod producer;
mod state;

pub use client::{KafkaClient, KafkaError, TopicMetadata};
pub use config::KafkaConfig;
pub use consumer::{ConsumeError, Handler, HandlerError, KafkaConsumer, Record};
pub use health::KafkaHealth;
pub use producer::{Delivered, KafkaProducer, ProduceError};
pub use state::{ConsumerSnapshot, ConsumerState};
