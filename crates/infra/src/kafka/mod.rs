//! Kafka: configuration, an admin client for metadata, and health check.

mod client;
mod config;
mod health;

pub use client::{KafkaClient, KafkaError, TopicMetadata};
pub use config::KafkaConfig;
pub use health::KafkaHealth;
