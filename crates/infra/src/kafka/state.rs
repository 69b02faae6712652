//! What a consumer knows about itself — group membership, assigned partitions, lag per partition — shared
//! with health checks and kept in the `kafka_consumer_lag` gauges.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::statistics::{Partition, Statistics};
use serde::Serialize;
use tokio::sync::Notify;

use super::metrics::StateMetrics;

/// A point-in-time view of the consumer, for /health/kafka.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ConsumerSnapshot {
    /// The topic consumed.
    pub topic: String,
    /// Whether the consumer is a settled member of its group (joined, assignment received).
    pub member: bool,
    /// librdkafka's group state (`init`, `wait-coord`, `up`...) and join state (`steady`...).
    pub group_state: String,
    /// The join state.
    pub join_state: String,
    /// The partitions assigned to this member.
    pub assigned_partitions: Vec<i32>,
    /// Records not yet processed, per assigned partition.
    pub lag: BTreeMap<i32, i64>,
    /// The sum of `lag`.
    pub total_lag: i64,
    /// The consumer has left the group (shutdown).
    pub closed: bool,
    /// The handler reported a dependency unavailable (the database down, read-only, timing out): the record in
    /// hand is retried until it answers, consumption is paused meanwhile and the lag grows.
    pub waiting_for_dependency: bool,
}

#[derive(Default)]
struct Inner {
    snapshot: ConsumerSnapshot,
    metrics: StateMetrics,
    /// The high watermark of each partition, from the latest statistics.
    high: BTreeMap<i32, i64>,
    /// Partitions whose fetch position was past the end of their log in the latest statistics, with that position.
    past_end: BTreeMap<i32, i64>,
    /// Partitions to consume again from the start of their log (see [`ConsumerState::take_rewinds`]).
    rewinds: Vec<i32>,
}

#[derive(Default)]
struct Shared {
    inner: Mutex<Inner>,
    /// Woken when a partition is added to `rewinds`.
    rewind: Notify,
}

/// Shared, cheap-to-clone consumer state.
#[derive(Clone, Default)]
pub struct ConsumerState(Arc<Shared>);

impl ConsumerState {
    pub(crate) fn new(topic: &str) -> Self {
        let state = ConsumerState::default();
        state.lock().snapshot.topic = topic.to_string();
        state
    }

    /// Back to the state of a consumer that has not joined yet (same topic), for a consumer replacing the one
    /// that reported here. Lag gauges of the old assignment drop to zero.
    pub(crate) fn reset(&self) {
        self.assigned(Vec::new());
        let mut inner = self.lock();
        let topic = std::mem::take(&mut inner.snapshot.topic);
        inner.metrics.waiting(&topic, false);
        inner.snapshot = ConsumerSnapshot { topic, ..ConsumerSnapshot::default() };
    }

    /// The current view.
    pub fn snapshot(&self) -> ConsumerSnapshot {
        self.lock().snapshot.clone()
    }

    /// A new assignment (or revocation): lag is tracked for exactly these partitions.
    pub(crate) fn assigned(&self, partitions: Vec<i32>) {
        let mut inner = self.lock();
        let topic = inner.snapshot.topic.clone();
        let gone: Vec<i32> = inner.snapshot.lag.keys().copied().filter(|p| !partitions.contains(p)).collect();
        for partition in gone {
            inner.metrics.lag(&topic, partition, 0);
        }
        inner.snapshot.lag.retain(|p, _| partitions.contains(p));
        inner.high.retain(|p, _| partitions.contains(p));
        inner.past_end.clear();
        inner.rewinds.clear();
        inner.metrics.assigned(partitions.len());
        inner.snapshot.member = !partitions.is_empty() || inner.snapshot.join_state == "steady";
        inner.snapshot.assigned_partitions = partitions;
        inner.total();
    }

    /// librdkafka's periodic statistics: group state, and lag of every assigned partition from the high
    /// watermark and the position (stored offset, else committed offset, else the start of the log).
    pub(crate) fn update_from(&self, statistics: &Statistics) {
        let mut inner = self.lock();
        if let Some(group) = &statistics.cgrp {
            inner.snapshot.group_state = group.state.clone();
            inner.snapshot.join_state = group.join_state.clone();
            inner.snapshot.member = group.state == "up" && group.join_state == "steady";
        }
        let topic = inner.snapshot.topic.clone();
        let Some(partitions) = statistics.topics.get(&topic).map(|t| &t.partitions) else { return };
        for id in inner.snapshot.assigned_partitions.clone() {
            let Some(p) = partitions.get(&id) else { continue };
            if p.hi_offset < 0 {
                continue;
            }
            let position = [p.stored_offset, p.committed_offset, p.lo_offset, 0].into_iter().find(|o| *o >= 0);
            let lag = (p.hi_offset - position.unwrap_or(0)).max(0);
            inner.high.insert(id, p.hi_offset);
            inner.snapshot.lag.insert(id, lag);
            inner.metrics.lag(&topic, id, lag);
            if inner.stuck_past_end(id, p) {
                inner.rewinds.push(id);
                self.0.rewind.notify_one();
            }
        }
        inner.total();
    }

    /// The partitions to consume again from the start of their log, taken: their fetch position stayed past
    /// the end of the log (the high watermark) for two statistics in a row. A partition's position cannot pass
    /// its high watermark unless the log was truncated or re-created under it: the topic deleted and created
    /// again, or a broker that keeps topics in memory restarted, and the consumer kept — or fetched as its
    /// group's committed offset — its old position. Kafka answers a fetch there with OFFSET_OUT_OF_RANGE and
    /// librdkafka applies `auto.offset.reset`; a broker that instead answers with no records (the local
    /// in-memory one does) would leave the consumer waiting until the new log grew past the old position,
    /// skipping everything before it. This applies `auto.offset.reset=earliest` for such a broker.
    pub(crate) fn take_rewinds(&self) -> Vec<i32> {
        std::mem::take(&mut self.lock().rewinds)
    }

    /// Waits until [`ConsumerState::take_rewinds`] has a partition to give (at once if one was added since the
    /// last wait).
    pub(crate) async fn rewind_requested(&self) {
        self.0.rewind.notified().await;
    }

    /// Records were processed, up to `offset` in each `(partition, offset)`: those partitions' lag drops at
    /// once instead of at the next statistics. Partitions no longer assigned (revoked since) are left out: lag
    /// is tracked for the assigned ones only.
    pub(crate) fn processed(&self, handled: &[(i32, i64)]) {
        let mut inner = self.lock();
        for &(partition, offset) in handled {
            if !inner.snapshot.assigned_partitions.contains(&partition) {
                continue;
            }
            let high = inner.high.get(&partition).copied().unwrap_or(0).max(offset + 1);
            inner.high.insert(partition, high);
            let lag = high - (offset + 1);
            inner.snapshot.lag.insert(partition, lag);
            let Inner { snapshot, metrics, .. } = &mut *inner;
            metrics.lag(&snapshot.topic, partition, lag);
        }
        inner.total();
    }

    /// The consumer started (`true`) or stopped waiting for an unavailable dependency.
    pub(crate) fn waiting(&self, waiting: bool) {
        let mut inner = self.lock();
        inner.snapshot.waiting_for_dependency = waiting;
        let Inner { snapshot, metrics, .. } = &*inner;
        metrics.waiting(&snapshot.topic, waiting);
    }

    /// The consumer left the group.
    pub(crate) fn left(&self) {
        let mut inner = self.lock();
        inner.snapshot.member = false;
        inner.snapshot.closed = true;
        inner.snapshot.assigned_partitions.clear();
        inner.metrics.assigned(0);
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.0.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The shortest time between two reports of handled records to the lag (the state and the `kafka_consumer_lag`
/// gauges) while the consumer is busy: reporting each record took a lock, map updates and a gauge per record, a
/// good part of the consumer's own per-record cost. Records handled less than this apart are reported together;
/// an idle consumer (nothing more to read) reports at once, and a record handled this long after the last report
/// is reported with it.
pub(crate) const LAG_REPORT_EVERY: Duration = Duration::from_millis(100);

/// The consumer's handled offsets not yet reported to its [`ConsumerState`] (the latest per partition).
pub(crate) struct LagReport {
    state: ConsumerState,
    handled: Vec<(i32, i64)>,
    last_report: Option<Instant>,
}

impl LagReport {
    pub(crate) fn new(state: ConsumerState) -> Self {
        LagReport { state, handled: Vec::new(), last_report: None }
    }

    /// The record at `offset` of `partition` was handled (its offset stored) at `now`: reported at once if the
    /// last report is [`LAG_REPORT_EVERY`] old, else with the next report.
    pub(crate) fn handled(&mut self, partition: i32, offset: i64, now: Instant) {
        match self.handled.iter_mut().find(|(p, _)| *p == partition) {
            Some(entry) => entry.1 = offset,
            None => self.handled.push((partition, offset)),
        }
        if self.last_report.is_none_or(|last| now.saturating_duration_since(last) >= LAG_REPORT_EVERY) {
            self.report_at(now);
        }
    }

    /// Reports what was handled since the last report, if anything: the consumer is idle or stopping.
    pub(crate) fn report(&mut self) {
        if !self.handled.is_empty() {
            self.report_at(Instant::now());
        }
    }

    fn report_at(&mut self, now: Instant) {
        self.state.processed(&self.handled);
        self.handled.clear();
        self.last_report = Some(now);
    }
}

impl std::fmt::Debug for ConsumerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ConsumerState").field(&self.snapshot()).finish()
    }
}

impl Inner {
    fn total(&mut self) {
        self.snapshot.total_lag = self.snapshot.lag.values().sum();
    }

    /// Whether `partition`'s fetch position is past the end of its log in this statistics report and was at the
    /// same position, past the end, in the last one: the position is not moving and no record can arrive there
    /// before the log grows past it. One report alone is not enough: its high watermark and position could come
    /// from different fetches.
    fn stuck_past_end(&mut self, partition: i32, stats: &Partition) -> bool {
        let position = stats.next_offset;
        if stats.fetch_state != "active" || stats.hi_offset < 0 || position <= stats.hi_offset {
            self.past_end.remove(&partition);
            return false;
        }
        let stuck = self.past_end.insert(partition, position) == Some(position);
        if stuck {
            self.past_end.remove(&partition);
        }
        stuck && !self.rewinds.contains(&partition)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::{Duration, Instant};

    use super::{ConsumerState, LAG_REPORT_EVERY, LagReport};

    fn state_with(partitions: Vec<i32>) -> ConsumerState {
        let state = ConsumerState::new("orders");
        state.assigned(partitions);
        state
    }

    #[test]
    fn records_handled_within_the_interval_are_reported_together_and_at_once_when_idle() {
        let state = state_with(vec![0, 1]);
        let mut lag = LagReport::new(state.clone());
        let start = Instant::now();
        lag.handled(0, 4, start);
        assert_eq!(state.snapshot().lag, BTreeMap::from([(0, 0)]), "the first record is reported at once");
        lag.handled(0, 5, start + Duration::from_millis(10));
        lag.handled(1, 7, start + Duration::from_millis(20));
        assert_eq!(state.snapshot().lag, BTreeMap::from([(0, 0)]), "held back within {LAG_REPORT_EVERY:?}");
        lag.report();
        let snapshot = state.snapshot();
        assert_eq!(snapshot.lag, BTreeMap::from([(0, 0), (1, 0)]));
        let after = Instant::now();
        lag.handled(1, 8, after + Duration::from_millis(30));
        lag.handled(1, 9, after + LAG_REPORT_EVERY + Duration::from_millis(30));
        assert_eq!(state.lock().high.get(&1), Some(&10), "reported once the interval passed");
    }

    /// Statistics for `orders` partition `partition`, fetching at `next` with the high watermark at `high`.
    fn statistics(partition: i32, next: i64, high: i64) -> rdkafka::statistics::Statistics {
        let stats = rdkafka::statistics::Partition {
            partition,
            fetch_state: "active".into(),
            next_offset: next,
            hi_offset: high,
            stored_offset: -1,
            committed_offset: -1,
            lo_offset: -1,
            ..Default::default()
        };
        let mut topic = rdkafka::statistics::Topic::default();
        topic.partitions.insert(partition, stats);
        let mut statistics = rdkafka::statistics::Statistics::default();
        statistics.topics.insert("orders".into(), topic);
        statistics
    }

    #[tokio::test]
    async fn a_position_past_the_end_of_the_log_in_two_reports_in_a_row_asks_for_a_rewind() {
        let state = state_with(vec![0, 1]);
        state.update_from(&statistics(0, 10, 2));
        assert!(state.take_rewinds().is_empty(), "one report could pair a new position with an old high watermark");
        state.update_from(&statistics(0, 10, 2));
        tokio::time::timeout(Duration::from_secs(1), state.rewind_requested()).await.expect("the consumer is woken");
        assert_eq!(state.take_rewinds(), [0]);
        assert!(state.take_rewinds().is_empty(), "taken once");

        state.update_from(&statistics(1, 7, 2));
        state.update_from(&statistics(1, 2, 2));
        state.update_from(&statistics(1, 7, 9));
        assert!(state.take_rewinds().is_empty(), "at or before the end of the log: nothing to do");
    }

    #[test]
    fn lag_is_the_high_watermark_minus_the_next_offset_and_revoked_partitions_are_left_out() {
        let state = state_with(vec![2]);
        state.lock().high.insert(2, 50);
        let mut lag = LagReport::new(state.clone());
        lag.handled(2, 19, Instant::now());
        lag.handled(3, 5, Instant::now());
        lag.report();
        let snapshot = state.snapshot();
        assert_eq!(snapshot.lag, BTreeMap::from([(2, 30)]));
        assert_eq!(snapshot.total_lag, 30);
    }
}
