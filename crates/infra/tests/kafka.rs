//! The Kafka layer against the shared broker (tansu): a topic and a group of its own per test.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use infra::config::Sources;
use infra::kafka::{
    Handler, HandlerError, KafkaClient, KafkaConfig, KafkaConsumer, KafkaProducer, ProduceError, Record, dlq,
};
use infra::settings::Config;
use test_support::{eventually, unique};
use tokio_util::sync::CancellationToken;

/// TLS against a private broker behind a TLS terminator (tests/kafka/tls.rs).
#[path = "kafka/tls.rs"]
mod tls;

const BROKER: &str = "127.0.0.1:9092";

fn config(topic: &str, group: &str, overrides: &[(&str, &str)]) -> KafkaConfig {
    let mut env = vec![
        ("KAFKA_BROKERS", BROKER),
        ("KAFKA_TOPIC", topic),
        ("KAFKA_CONSUMER_GROUP", group),
        // tansu makes a join wait half the session timeout.
        ("KAFKA_SESSION_TIMEOUT", "6"),
        ("KAFKA_RETRY_BACKOFF", "10ms"),
    ];
    env.extend_from_slice(overrides);
    Config::from_sources(&Sources::from_env_pairs(&env)).expect("valid configuration").kafka
}

/// A fresh topic with `partitions` partitions and its dead-letter topic.
async fn topic(partitions: i32, overrides: &[(&str, &str)]) -> KafkaConfig {
    let name = unique("events");
    let config = config(&name, &unique("group"), overrides);
    let admin = KafkaClient::connect_lazy(&config).expect("admin client");
    admin.ensure_topic(&config.topic, partitions, Duration::from_secs(10)).await.expect("topic");
    admin.ensure_topic(&config.dlq_topic, 1, Duration::from_secs(10)).await.expect("dead-letter topic");
    config
}

/// Records every record it sees; fails (transiently or permanently) on the values it is told to.
#[derive(Clone, Default)]
struct Recorder {
    seen: Arc<Mutex<Vec<Record>>>,
    fail_transiently: Option<&'static [u8]>,
    fail_permanently: Option<&'static [u8]>,
    delay: Duration,
}

#[async_trait]
impl Handler for Recorder {
    async fn handle(&self, record: &Record) -> Result<(), HandlerError> {
        tokio::time::sleep(self.delay).await;
        self.seen.lock().expect("lock").push(record.clone());
        match record.value.as_deref() {
            Some(v) if Some(v) == self.fail_transiently => Err(HandlerError::transient("database unavailable")),
            Some(v) if Some(v) == self.fail_permanently => Err(HandlerError::permanent("malformed event")),
            _ => Ok(()),
        }
    }
}

impl Recorder {
    fn values(&self) -> Vec<String> {
        let seen = self.seen.lock().expect("lock");
        seen.iter().map(|r| String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned()).collect()
    }

    fn count(&self) -> usize {
        self.seen.lock().expect("lock").len()
    }
}

/// Runs a consumer in the background until the returned token is cancelled.
fn spawn_consumer(
    config: &KafkaConfig,
    handler: Recorder,
) -> (CancellationToken, tokio::task::JoinHandle<()>, infra::kafka::ConsumerState) {
    let producer = KafkaProducer::connect_lazy(config).expect("producer");
    let consumer = KafkaConsumer::connect_lazy(config, producer).expect("consumer");
    let state = consumer.state();
    let stop = CancellationToken::new();
    let token = stop.clone();
    let task = tokio::spawn(async move { consumer.consume(&handler, token, Duration::from_secs(10)).await });
    (stop, task, state)
}

async fn produce(producer: &KafkaProducer, topic: &str, key: &str, value: &str) -> infra::kafka::Delivered {
    producer.produce(topic, Some(key.as_bytes()), value.as_bytes(), &[("source", b"test")]).await.expect("delivered")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_delivered_in_key_order_and_committed_offsets_survive_a_restart() {
    let config = topic(3, &[]).await;
    let producer = KafkaProducer::connect_lazy(&config).expect("producer");
    let mut partitions = BTreeMap::new();
    for n in 0..30 {
        let key = format!("user-{}", n % 5);
        let delivered = produce(&producer, &config.topic, &key, &format!("{key}:{n}")).await;
        assert!(delivered.offset >= 0);
        partitions.entry(key).or_insert(delivered.partition);
    }
    let recorder = Recorder::default();
    let (stop, task, _) = spawn_consumer(&config, recorder.clone());
    assert!(eventually(Duration::from_secs(30), async || recorder.count() >= 30).await, "got {}", recorder.count());
    for key in partitions.keys() {
        let ns: Vec<u32> = recorder
            .values()
            .iter()
            .filter_map(|v| v.strip_prefix(&format!("{key}:")).and_then(|n| n.parse().ok()))
            .collect();
        assert!(ns.windows(2).all(|w| w[0] < w[1]), "{key} handled out of order: {ns:?}");
        assert_eq!(ns.len(), 6);
    }
    let seen = recorder.seen.lock().expect("lock").clone();
    assert!(seen.iter().all(|r| r.header("source") == Some(b"test".as_slice())), "headers arrive");
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(15), task).await.expect("closed in time").expect("task");

    produce(&producer, &config.topic, "user-0", "after-restart").await;
    let again = Recorder::default();
    let (stop, task, state) = spawn_consumer(&config, again.clone());
    assert!(eventually(Duration::from_secs(30), async || again.count() >= 1).await, "{:?}", state.snapshot());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(again.values(), ["after-restart"], "only the new record: the 30 handled ones were committed");
    stop.cancel();
    task.await.expect("task");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_record_is_retried_then_dead_lettered_and_does_not_block_the_partition() {
    let config = topic(1, &[("KAFKA_MAX_RETRIES", "2")]).await;
    let producer = KafkaProducer::connect_lazy(&config).expect("producer");
    produce(&producer, &config.topic, "k", "before").await;
    let poison = produce(&producer, &config.topic, "k", "poison").await;
    produce(&producer, &config.topic, "k", "malformed").await;
    produce(&producer, &config.topic, "k", "after").await;

    let recorder =
        Recorder { fail_transiently: Some(b"poison"), fail_permanently: Some(b"malformed"), ..Recorder::default() };
    let (stop, task, _) = spawn_consumer(&config, recorder.clone());
    assert!(eventually(Duration::from_secs(30), async || recorder.values().contains(&"after".into())).await);
    assert_eq!(recorder.values(), ["before", "poison", "poison", "poison", "malformed", "after"]);
    stop.cancel();
    task.await.expect("task");

    // Read the dead-letter topic back with a consumer of its own.
    let dlq = config.dlq_topic.clone();
    let dlq_config = self::config(&dlq, &unique("dlq-reader"), &[]);
    let reader = Recorder::default();
    let (stop, task, _) = spawn_consumer(&dlq_config, reader.clone());
    assert!(eventually(Duration::from_secs(30), async || reader.count() >= 2).await);
    stop.cancel();
    task.await.expect("task");
    let dead = reader.seen.lock().expect("lock").clone();
    assert_eq!(dead.len(), 2);
    let first = &dead[0];
    assert_eq!((first.key.as_deref(), first.value.as_deref()), (Some(b"k".as_slice()), Some(b"poison".as_slice())));
    assert_eq!(first.header("source"), Some(b"test".as_slice()), "original headers kept");
    let text = |name: &str| String::from_utf8(first.header(name).expect(name).to_vec()).expect("utf-8");
    assert_eq!(text(dlq::ORIGINAL_TOPIC), config.topic);
    assert_eq!(text(dlq::ORIGINAL_PARTITION), poison.partition.to_string());
    assert_eq!(text(dlq::ORIGINAL_OFFSET), poison.offset.to_string());
    assert_eq!(text(dlq::ERROR), "database unavailable");
    assert_eq!(text(dlq::ATTEMPTS), "3", "1 attempt + KAFKA_MAX_RETRIES");
    assert!(first.header(dlq::ORIGINAL_TIMESTAMP).is_some());
    let second = &dead[1];
    assert_eq!(second.value.as_deref(), Some(b"malformed".as_slice()));
    assert_eq!(second.header(dlq::ATTEMPTS), Some(b"1".as_slice()), "permanent: no retries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_is_right_for_every_assigned_partition_and_falls_as_records_are_handled() {
    let config = topic(3, &[]).await;
    let producer = KafkaProducer::connect_lazy(&config).expect("producer");
    let mut produced: BTreeMap<i32, i64> = BTreeMap::new();
    for n in 0..24 {
        let delivered = produce(&producer, &config.topic, &format!("key-{n}"), "x").await;
        *produced.entry(delivered.partition).or_default() += 1;
    }
    assert!(produced.len() >= 2, "keys spread over several partitions: {produced:?}");

    // A slow handler: statistics (every second) catch the consumer part-way through the backlog.
    let slow = Recorder { delay: Duration::from_millis(150), ..Recorder::default() };
    let (stop, task, state) = spawn_consumer(&config, slow.clone());
    let mut consistent_midway = 0;
    let deadline = Instant::now() + Duration::from_secs(40);
    while slow.count() < 24 && Instant::now() < deadline {
        let snapshot = state.snapshot();
        let handled: BTreeMap<i32, i64> = slow.seen.lock().expect("lock").iter().fold(BTreeMap::new(), |mut m, r| {
            *m.entry(r.partition).or_default() += 1;
            m
        });
        if snapshot.lag.len() == 3 && snapshot.total_lag > 0 {
            // Every assigned partition has a lag; each equals produced minus handled, give or take the record in
            // hand and one statistics interval of progress.
            let close = (0..3).all(|p| {
                let expected = produced.get(&p).copied().unwrap_or(0) - handled.get(&p).copied().unwrap_or(0);
                (snapshot.lag[&p] - expected).abs() <= 8
            });
            assert!(close, "lag {:?} vs produced {produced:?} handled {handled:?}", snapshot.lag);
            let lagging = snapshot.lag.values().filter(|lag| **lag > 0).count();
            if lagging >= 2 {
                consistent_midway += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(consistent_midway > 0, "never saw lag on several partitions at once: {:?}", state.snapshot());
    let drained = eventually(Duration::from_secs(10), async || state.snapshot().total_lag == 0).await;
    assert!(drained, "{:?}", state.snapshot());
    let snapshot = state.snapshot();
    assert_eq!(snapshot.assigned_partitions, [0, 1, 2]);
    assert_eq!(snapshot.lag, BTreeMap::from([(0, 0), (1, 0), (2, 0)]));
    assert!(snapshot.member);
    stop.cancel();
    task.await.expect("task");
    assert!(state.snapshot().closed && !state.snapshot().member, "left the group");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_the_record_in_hand_commits_it_and_returns_in_time() {
    let config = topic(1, &[]).await;
    let producer = KafkaProducer::connect_lazy(&config).expect("producer");
    for n in 0..5 {
        produce(&producer, &config.topic, "k", &format!("r{n}")).await;
    }
    let slow = Recorder { delay: Duration::from_millis(700), ..Recorder::default() };
    let (stop, task, _) = spawn_consumer(&config, slow.clone());
    assert!(eventually(Duration::from_secs(30), async || slow.count() >= 1).await);
    let handled_before_stop = slow.count();
    stop.cancel();
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(15), task).await.expect("stopped within the bound").expect("task");
    assert!(started.elapsed() < Duration::from_secs(15));
    let handled = slow.count();
    assert!(handled <= handled_before_stop + 1, "stopped fetching: {handled} handled");

    let rest = Recorder::default();
    let (stop, task, _) = spawn_consumer(&config, rest.clone());
    let expected: Vec<String> = (handled..5).map(|n| format!("r{n}")).collect();
    assert!(eventually(Duration::from_secs(30), async || rest.count() >= expected.len()).await);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(rest.values(), expected, "resumes right after the last handled record: nothing lost, nothing twice");
    stop.cancel();
    task.await.expect("task");
}

#[tokio::test]
async fn a_send_to_an_unreachable_broker_fails_with_a_timeout_within_the_delivery_timeout() {
    let closed = format!("127.0.0.1:{}", test_support::free_port());
    let env = [("KAFKA_BROKERS", closed.as_str()), ("KAFKA_DELIVERY_TIMEOUT", "1"), ("KAFKA_DIAL_TIMEOUT", "1")];
    let config = Config::from_sources(&Sources::from_env_pairs(&env)).expect("valid").kafka;
    let producer = KafkaProducer::connect_lazy(&config).expect("producer");
    let started = Instant::now();
    let err = producer.produce("events", None, b"v", &[]).await.expect_err("no broker");
    assert!(matches!(err, ProduceError::TimedOut { .. }), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(10), "bounded by KAFKA_DELIVERY_TIMEOUT: {:?}", started.elapsed());
    producer.flush(Duration::from_millis(100)).await.expect("nothing left to flush");
}

/// Holds the record whose value is `block` until released; records everything it handles.
#[derive(Clone)]
struct Gated {
    recorder: Recorder,
    gate: Arc<tokio::sync::Semaphore>,
    entered: Arc<std::sync::atomic::AtomicBool>,
}

#[async_trait]
impl Handler for Gated {
    async fn handle(&self, record: &Record) -> Result<(), HandlerError> {
        if record.value.as_deref() == Some(b"block".as_slice()) {
            self.entered.store(true, std::sync::atomic::Ordering::SeqCst);
            let _permit = self.gate.acquire().await.map_err(HandlerError::transient)?;
        }
        self.recorder.handle(record).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_stays_current_while_a_handler_call_hangs_and_nothing_is_skipped_or_reordered() {
    let config = topic(3, &[]).await;
    let producer = KafkaProducer::connect_lazy(&config).expect("producer");
    produce(&producer, &config.topic, "key-0", "block").await;
    let handler = Gated {
        recorder: Recorder::default(),
        gate: Arc::new(tokio::sync::Semaphore::new(0)),
        entered: Arc::new(std::sync::atomic::AtomicBool::new(false)),
    };
    let consumer = KafkaConsumer::connect_lazy(&config, producer.clone()).expect("consumer");
    let state = consumer.state();
    let stop = CancellationToken::new();
    let (running, token) = (handler.clone(), stop.clone());
    let task = tokio::spawn(async move { consumer.consume(&running, token, Duration::from_secs(10)).await });
    let entered =
        eventually(Duration::from_secs(30), async || handler.entered.load(std::sync::atomic::Ordering::SeqCst)).await;
    assert!(entered, "the blocking record reached the handler");

    // While the handler hangs, 20 more records arrive, some behind the blocked one on its partition.
    for n in 0..20 {
        produce(&producer, &config.topic, &format!("key-{}", n % 4), &format!("key-{}:{n}", n % 4)).await;
    }
    let current = eventually(Duration::from_secs(20), async || state.snapshot().total_lag == 21).await;
    assert!(current, "lag follows the backlog while the handler hangs: {:?}", state.snapshot());
    assert_eq!(handler.recorder.count(), 0, "nothing handled while the first record is in hand");

    handler.gate.add_permits(1);
    let drained = eventually(Duration::from_secs(30), async || handler.recorder.count() == 21).await;
    assert!(drained, "handled {}", handler.recorder.count());
    let values = handler.recorder.values();
    assert_eq!(values[0], "block", "the record in hand finishes first");
    for key in 0..4 {
        let ns: Vec<u32> =
            values.iter().filter_map(|v| v.strip_prefix(&format!("key-{key}:")).and_then(|n| n.parse().ok())).collect();
        assert_eq!(ns.len(), 5, "key-{key}: {values:?}");
        assert!(ns.windows(2).all(|w| w[0] < w[1]), "key-{key} reordered: {ns:?}");
    }
    assert!(
        eventually(Duration::from_secs(10), async || state.snapshot().total_lag == 0).await,
        "{:?}",
        state.snapshot()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(handler.recorder.count(), 21, "no record handled twice");
    stop.cancel();
    task.await.expect("task");
}

/// Reports its dependency down for the first `outage` calls, then handles records.
#[derive(Clone)]
struct DuringOutage {
    recorder: Recorder,
    calls: Arc<std::sync::atomic::AtomicU32>,
    outage: u32,
}

#[async_trait]
impl Handler for DuringOutage {
    async fn handle(&self, record: &Record) -> Result<(), HandlerError> {
        if self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < self.outage {
            return Err(HandlerError::unavailable("database unavailable"));
        }
        self.recorder.handle(record).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dependency_outage_outlasting_the_retries_dead_letters_nothing() {
    // One retry allowed; the outage lasts six calls.
    let config = topic(1, &[("KAFKA_MAX_RETRIES", "1"), ("KAFKA_RETRY_BACKOFF", "10ms")]).await;
    let producer = KafkaProducer::connect_lazy(&config).expect("producer");
    produce(&producer, &config.topic, "k", "first").await;
    produce(&producer, &config.topic, "k", "second").await;
    let handler = DuringOutage { recorder: Recorder::default(), calls: Arc::default(), outage: 6 };
    let consumer = KafkaConsumer::connect_lazy(&config, producer.clone()).expect("consumer");
    let stop = CancellationToken::new();
    let (running, token) = (handler.clone(), stop.clone());
    let task = tokio::spawn(async move { consumer.consume(&running, token, Duration::from_secs(10)).await });
    let handled = eventually(Duration::from_secs(60), async || handler.recorder.count() == 2).await;
    assert!(handled, "both records handled once the dependency is back: {:?}", handler.recorder.values());
    assert_eq!(handler.recorder.values(), ["first", "second"], "in order, the first one not skipped");
    assert_eq!(handler.calls.load(std::sync::atomic::Ordering::SeqCst), 8, "6 failed calls, then 2 successes");
    stop.cancel();
    task.await.expect("task");
    let letters = infra::kafka::dlq::read_dead_letters(&config, Duration::from_secs(20)).await.expect("read the DLQ");
    assert!(letters.is_empty(), "nothing dead-lettered during an outage: {} letters", letters.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_created_after_the_consumer_subscribed_is_consumed_within_a_metadata_refresh() {
    // The consumer subscribes first (as the service's does at start, racing its own topic creation).
    let config = config(&unique("late-topic"), &unique("group"), &[]);
    let recorder = Recorder::default();
    let (stop, task, state) = spawn_consumer(&config, recorder.clone());
    // Joined with nothing to consume: the topic does not exist yet.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let admin = KafkaClient::connect_lazy(&config).expect("admin client");
    admin.ensure_topic(&config.topic, 1, Duration::from_secs(10)).await.expect("topic");
    let producer = KafkaProducer::connect_lazy(&config).expect("producer");
    produce(&producer, &config.topic, "k", "late").await;
    // librdkafka's default refresh (5 minutes) would leave it unconsumed far past this bound.
    let consumed = eventually(Duration::from_secs(40), async || recorder.count() >= 1).await;
    assert!(consumed, "not consumed: {:?}", state.snapshot());
    assert_eq!(recorder.values(), ["late"]);
    stop.cancel();
    task.await.expect("task");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committed_offset_past_the_end_of_a_recreated_log_is_consumed_from_the_beginning() {
    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
    use rdkafka::{ClientConfig, Offset, TopicPartitionList};

    // What a broker that lost its data leaves behind: the group's committed offset (10) past the end of a
    // topic holding two records, written after it was re-created.
    let config = topic(1, &[]).await;
    let producer = KafkaProducer::connect_lazy(&config).expect("producer");
    produce(&producer, &config.topic, "k", "first").await;
    produce(&producer, &config.topic, "k", "second").await;
    let committer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", BROKER)
        .set("group.id", &config.consumer_group)
        .create()
        .expect("committing client");
    let mut offsets = TopicPartitionList::new();
    offsets.add_partition_offset(&config.topic, 0, Offset::Offset(10)).expect("offset");
    committer.commit(&offsets, CommitMode::Sync).expect("commit offset 10");
    drop(committer);

    let recorder = Recorder::default();
    let (stop, task, state) = spawn_consumer(&config, recorder.clone());
    // Kafka answers a fetch at 10 with OFFSET_OUT_OF_RANGE and the consumer resets to the earliest offset; the
    // local broker answers with no records, and the consumer must notice by itself.
    let consumed = eventually(Duration::from_secs(30), async || recorder.count() >= 2).await;
    assert!(consumed, "records before the stale position were skipped: {:?}", state.snapshot());
    assert_eq!(recorder.values(), ["first", "second"]);
    stop.cancel();
    task.await.expect("task");
}
