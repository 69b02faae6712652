//! infra::kafka versus raw rdkafka 0.39 with identical librdkafka settings: produce and consume throughput of
//! 1 KiB records.
//!
//! Run: `scripts/stack up && cargo bench -p infra --bench kafka` (BENCH_MESSAGES per side and round, default
//! 50000; BENCH_ROUNDS, default 4; BENCH_WINDOW sends in flight, default 256; BENCH_CASES, default
//! `produce,consume`; BENCH_CONSUME_SIDES, default `raw,raw+read,infra` (one side alone, e.g. under `perf record`);
//! BENCH_TELEMETRY as in benches/postgres.rs; BENCH_METRICS=off: no Prometheus recorder; KAFKA_LINGER_MS,
//! KAFKA_BATCH_SIZE and KAFKA_COMPRESSION are passed to both sides).
//!
//! Method: Kafka throughput cannot be measured paired operation by operation (a batch mixes both sides), so
//! the sides take turns — raw, infra, infra, raw, raw, infra... — and each side's figure is its total records
//! over its total time across the rounds, which cancels most of the ±20 % drift of this 2-core machine.
//! - Produce: one long-lived producer per side (`KafkaProducer::connect_lazy` / a `FutureProducer` configured with the
//!   settings infra's `base_client_config` and `KafkaProducer::connect_lazy` set: acks=all, idempotence, batch size,
//!   linger, compression, delivery timeout). Every round writes to a fresh 3-partition topic; one acknowledged
//!   record first (metadata), then the clock runs while BENCH_WINDOW sends are kept in flight (each awaiting its
//!   delivery report), same keys, value and header on both sides.
//! - Consume: every side and round gets a fresh 3-partition topic holding BENCH_MESSAGES records and a fresh
//!   group. infra: `KafkaConsumer::consume` with a handler that counts and cancels the token at the
//!   last record; raw: a `StreamConsumer` with the consumer's settings (manual offset store, auto commit every
//!   second, statistics every second, earliest) that counts and stores each offset the same way
//!   (`store_offset`), in a task of its own as infra's loop; raw+read: the same, plus copying each record out
//!   of librdkafka as infra does before calling its handler (topic, key, value, parsed headers), to tell the cost
//!   of detaching records from infra's own per-record work (span, metrics, lag state). The three take turns as
//!   above. The clock runs from the first record received to the last, so the group join (half the session
//!   timeout on tansu) is left out.
//!
//! Both sides run in one process with the service's JSON log layer at INFO (output discarded) and its Prometheus
//! recorder (`infra::telemetry::prometheus::install`) installed, so infra's spans and metrics are what is
//! measured (no OpenTelemetry layer: its spans have no trace context, so no `traceparent` is added).

mod common;

use std::future::Future;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use infra::config::Sources;
use infra::kafka::{Handler, HandlerError, KafkaClient, KafkaConfig, KafkaConsumer, KafkaProducer, Record};
use infra::settings::Config;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use test_support::unique;
use tokio_util::sync::CancellationToken;

const BROKER: &str = "127.0.0.1:9092";
const VALUE_SIZE: usize = 1024;
const PARTITIONS: i32 = 3;
const KEYS: usize = 64;
const HEADER: (&str, &[u8]) = ("source", b"bench");
/// The longest a side may take to consume its records (a broker problem, not a slow side).
const CONSUME_DEADLINE: Duration = Duration::from_secs(120);

#[derive(Clone, Copy, PartialEq)]
enum Side {
    Raw,
    /// Consume only: raw, plus detaching each record (topic, key, value, headers) as infra does.
    RawRead,
    Infra,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Raw => "raw",
            Side::RawRead => "raw+read",
            Side::Infra => "infra",
        }
    }
}

/// `sides` in even rounds, reversed in odd ones.
fn order<const N: usize>(round: usize, mut sides: [Side; N]) -> [Side; N] {
    if !round.is_multiple_of(2) {
        sides.reverse();
    }
    sides
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The service's Kafka settings for `topic` and `group`, as the tests build them (6 s session timeout: tansu
/// makes a join wait half of it).
fn config(topic: &str, group: &str) -> KafkaConfig {
    let mut env: Vec<(String, String)> = vec![
        ("KAFKA_BROKERS".into(), BROKER.into()),
        ("KAFKA_TOPIC".into(), topic.into()),
        ("KAFKA_CONSUMER_GROUP".into(), group.into()),
        ("KAFKA_SESSION_TIMEOUT".into(), "6".into()),
    ];
    for name in ["KAFKA_LINGER_MS", "KAFKA_BATCH_SIZE", "KAFKA_COMPRESSION"] {
        if let Ok(value) = std::env::var(name) {
            env.push((name.into(), value));
        }
    }
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Config::from_sources(&Sources::from_env_pairs(&pairs)).expect("valid configuration").kafka
}

/// What infra's `base_client_config` sets (plaintext: no SASL, no CA).
fn raw_base(config: &KafkaConfig) -> ClientConfig {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", config.bootstrap_servers())
        .set("security.protocol", config.security_protocol.to_ascii_lowercase())
        .set("socket.connection.setup.timeout.ms", config.dial_timeout.as_millis().to_string())
        .set("connections.max.idle.ms", config.conn_idle_time.as_millis().to_string())
        .set("log_level", "4");
    client
}

/// What `KafkaProducer::connect_lazy` sets.
fn raw_producer(config: &KafkaConfig) -> FutureProducer {
    raw_base(config)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("batch.num.messages", config.batch_size.to_string())
        .set("linger.ms", config.linger.as_millis().to_string())
        .set("compression.codec", config.compression)
        .set("delivery.timeout.ms", config.delivery_timeout.as_millis().to_string())
        .create()
        .expect("raw producer")
}

/// What `KafkaConsumer::connect_lazy` sets (its context only feeds the statistics into its state; the default context
/// parses them too).
fn raw_consumer(config: &KafkaConfig) -> StreamConsumer {
    let every_second = Duration::from_secs(1).as_millis().to_string();
    let consumer: StreamConsumer = raw_base(config)
        .set("group.id", &config.consumer_group)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", &every_second)
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", config.session_timeout.as_millis().to_string())
        .set("statistics.interval.ms", &every_second)
        .set("allow.auto.create.topics", "false")
        .create()
        .expect("raw consumer");
    consumer.subscribe(&[&config.topic]).expect("raw subscribe");
    consumer
}

/// The records' keys and value: text-like bytes, the same for both sides.
struct Data {
    keys: Vec<Vec<u8>>,
    value: Vec<u8>,
}

impl Data {
    fn new() -> Self {
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 {}\":,";
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let value = (0..VALUE_SIZE)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                ALPHABET[(state % ALPHABET.len() as u64) as usize]
            })
            .collect();
        Data { keys: (0..KEYS).map(|k| format!("key-{k:02}").into_bytes()).collect(), value }
    }

    fn key(&self, n: usize) -> &[u8] {
        &self.keys[n % KEYS]
    }
}

/// Sends `n` records through `send`, `window` of them in flight at a time; returns when all are acknowledged.
async fn drive<F, Fut>(n: usize, window: usize, mut send: F)
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut in_flight = FuturesUnordered::new();
    for i in 0..n {
        if in_flight.len() >= window {
            in_flight.next().await;
        }
        in_flight.push(send(i));
    }
    while in_flight.next().await.is_some() {}
}

struct Producers {
    infra: KafkaProducer,
    raw: FutureProducer,
    delivery_timeout: Duration,
}

impl Producers {
    async fn send_raw(&self, topic: &str, key: &[u8], value: &[u8]) {
        let headers = OwnedHeaders::new_with_capacity(1).insert(Header { key: HEADER.0, value: Some(HEADER.1) });
        let record = FutureRecord::to(topic).payload(value).key(key).headers(headers);
        self.raw.send(record, self.delivery_timeout).await.map_err(|(err, _)| err).expect("raw delivery");
    }

    async fn send_infra(&self, topic: &str, key: &[u8], value: &[u8]) {
        self.infra.produce(topic, Some(key), value, &[HEADER]).await.expect("infra delivery");
    }

    /// Writes `n` records to `topic` through `side`; the elapsed time.
    async fn produce(&self, side: Side, topic: &str, data: &Data, n: usize, window: usize) -> Duration {
        let started = Instant::now();
        match side {
            Side::Raw | Side::RawRead => drive(n, window, |i| self.send_raw(topic, data.key(i), &data.value)).await,
            Side::Infra => drive(n, window, |i| self.send_infra(topic, data.key(i), &data.value)).await,
        }
        started.elapsed()
    }
}

/// Counts records; notes the first and the last (the `target`-th) and then cancels `done`.
struct Counter {
    target: usize,
    seen: AtomicUsize,
    first: OnceLock<Instant>,
    last: OnceLock<Instant>,
    done: CancellationToken,
}

impl Counter {
    fn new(target: usize) -> Self {
        Counter {
            target,
            seen: AtomicUsize::new(0),
            first: OnceLock::new(),
            last: OnceLock::new(),
            done: CancellationToken::new(),
        }
    }

    fn count(&self) {
        let seen = self.seen.fetch_add(1, Ordering::Relaxed) + 1;
        if seen == 1 {
            let _ = self.first.set(Instant::now());
        }
        if seen == self.target {
            let _ = self.last.set(Instant::now());
            self.done.cancel();
        }
    }

    /// From the first record to the last.
    fn elapsed(&self) -> Duration {
        match (self.first.get(), self.last.get()) {
            (Some(first), Some(last)) => *last - *first,
            _ => panic!("consumed {} of {} records", self.seen.load(Ordering::Relaxed), self.target),
        }
    }
}

#[async_trait]
impl Handler for Counter {
    async fn handle(&self, _record: &Record) -> Result<(), HandlerError> {
        self.count();
        Ok(())
    }
}

/// Reads `n` records of `config.topic` as a new member of `config.consumer_group`; the time from the first to
/// the last.
async fn consume(side: Side, config: &KafkaConfig, n: usize) -> Duration {
    let counter = std::sync::Arc::new(Counter::new(n));
    match side {
        Side::Infra => {
            let dead_letters = KafkaProducer::connect_lazy(config).expect("dead-letter producer");
            let consumer = KafkaConsumer::connect_lazy(config, dead_letters).expect("infra consumer");
            let (handler, token) = (counter.clone(), counter.done.clone());
            let task = tokio::spawn(async move {
                consumer.consume(handler.as_ref(), token, Duration::from_secs(10)).await;
            });
            if tokio::time::timeout(CONSUME_DEADLINE, counter.done.cancelled()).await.is_err() {
                counter.done.cancel();
            }
            task.await.expect("infra consumer task");
        }
        Side::Raw | Side::RawRead => {
            let read = side == Side::RawRead;
            let consumer = raw_consumer(config);
            let counter = counter.clone();
            // A task of its own, as the infra consumer runs in.
            let task = tokio::spawn(async move {
                let deadline = tokio::time::sleep(CONSUME_DEADLINE);
                tokio::pin!(deadline);
                while !counter.done.is_cancelled() {
                    let message = tokio::select! {
                        biased;
                        () = &mut deadline => break,
                        message = consumer.recv() => message,
                    };
                    match message {
                        Ok(message) => {
                            if read {
                                std::hint::black_box(Record::from_message(&message));
                            }
                            counter.count();
                            let (topic, partition, offset) = (message.topic(), message.partition(), message.offset());
                            if let Err(err) = consumer.store_offset(topic, partition, offset) {
                                eprintln!("raw store_offset: {err}");
                            }
                        }
                        Err(err) => eprintln!("raw consumer error: {err}"),
                    }
                }
                consumer
            });
            let consumer = task.await.expect("raw consumer task");
            // As infra's close: commit, leave, bounded (rust-rdkafka #453).
            let closing = tokio::task::spawn_blocking(move || {
                let _ = consumer.commit_consumer_state(CommitMode::Sync);
                consumer.unsubscribe();
            });
            let _ = tokio::time::timeout(Duration::from_secs(10), closing).await;
        }
    }
    counter.elapsed()
}

/// A side's records and time over the rounds.
#[derive(Default)]
struct Total {
    records: usize,
    time: Duration,
}

impl Total {
    fn add(&mut self, records: usize, time: Duration) -> f64 {
        self.records += records;
        self.time += time;
        records as f64 / time.as_secs_f64()
    }

    fn rate(&self) -> f64 {
        self.records as f64 / self.time.as_secs_f64()
    }
}

fn main() {
    let messages = env_usize("BENCH_MESSAGES", 50_000);
    let rounds = env_usize("BENCH_ROUNDS", 4).max(1);
    let window = env_usize("BENCH_WINDOW", 256).max(1);
    let telemetry = common::install_subscriber();
    let metrics = std::env::var("BENCH_METRICS").unwrap_or_else(|_| "prometheus".into());
    if metrics != "off" {
        common::install_recorder();
    }
    let cases = std::env::var("BENCH_CASES").unwrap_or_else(|_| "produce,consume".into());
    let consume_sides = std::env::var("BENCH_CONSUME_SIDES").unwrap_or_else(|_| "raw,raw+read,infra".into());

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let base = config(&unique("bench"), &unique("bench"));
        let admin = KafkaClient::connect_lazy(&base).expect("admin client");
        let producers = Producers {
            infra: KafkaProducer::connect_lazy(&base).expect("infra producer"),
            raw: raw_producer(&base),
            delivery_timeout: base.delivery_timeout,
        };
        let data = Data::new();
        let mut topics = Vec::new();
        let mut new_topic = async |prefix: &str| {
            let topic = unique(prefix);
            admin.ensure_topic(&topic, PARTITIONS, Duration::from_secs(10)).await.expect("topic");
            topics.push(topic.clone());
            topic
        };
        println!(
            "Kafka: infra::kafka vs raw rdkafka, {VALUE_SIZE}-byte records, {messages} per side and round, {rounds} \
             rounds, {PARTITIONS} partitions, {window} sends in flight, linger {:?}, batch {}, {}, telemetry {telemetry}, \
             metrics {metrics}",
            base.linger, base.batch_size, base.compression
        );

        let (mut raw_produce, mut infra_produce) = (Total::default(), Total::default());
        for round in (0..rounds).filter(|_| cases.contains("produce")) {
            for side in order(round, [Side::Raw, Side::Infra]) {
                let topic = new_topic("bench-produce").await;
                producers.produce(side, &topic, &data, 1, 1).await; // metadata, connection
                let elapsed = producers.produce(side, &topic, &data, messages, window).await;
                let total = if side == Side::Raw { &mut raw_produce } else { &mut infra_produce };
                let rate = total.add(messages, elapsed);
                println!("produce round {} {:<8} {rate:>9.0} msg/s", round + 1, side.name());
            }
        }

        let (mut raw_consume, mut read_consume, mut infra_consume) =
            (Total::default(), Total::default(), Total::default());
        for round in (0..rounds).filter(|_| cases.contains("consume")) {
            for side in order(round, [Side::Raw, Side::RawRead, Side::Infra]) {
                if !consume_sides.split(',').any(|name| name.trim() == side.name()) {
                    continue;
                }
                let topic = new_topic("bench-consume").await;
                producers.produce(Side::Raw, &topic, &data, messages, window).await;
                let elapsed = consume(side, &config(&topic, &unique("bench-group")), messages).await;
                let total = match side {
                    Side::Raw => &mut raw_consume,
                    Side::RawRead => &mut read_consume,
                    Side::Infra => &mut infra_consume,
                };
                let rate = total.add(messages - 1, elapsed);
                println!("consume round {} {:<8} {rate:>9.0} msg/s", round + 1, side.name());
            }
        }

        println!("{:<24} {:>12} {:>14} {:>7}", "case", "raw msg/s", "infra msg/s", "ratio");
        for (name, raw, infra) in [
            ("produce", &raw_produce, &infra_produce),
            ("consume", &raw_consume, &infra_consume),
            ("consume, raw+read", &read_consume, &infra_consume),
        ] {
            if raw.records == 0 || infra.records == 0 {
                continue;
            }
            println!("{name:<24} {:>12.0} {:>14.0} {:>7.3}", raw.rate(), infra.rate(), infra.rate() / raw.rate());
        }

        // The broker keeps topics in memory: give it back.
        let cleaner: AdminClient<DefaultClientContext> = raw_base(&base).create().expect("admin");
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        if let Err(err) = cleaner.delete_topics(&names, &AdminOptions::new()).await {
            eprintln!("cannot delete the bench topics: {err}");
        }
    });
}
