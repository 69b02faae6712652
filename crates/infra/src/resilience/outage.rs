//! Logging an outage once: one WARN when a dependency goes away, one INFO when it is back, and nothing in
//! between — the failures are counted by the client's error counter (`postgres_errors_total`,
//! `redis_errors_total`) instead of logged one by one, so an outage under load does not flood the logs.

use std::fmt::Display;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

/// The outage state of one dependency. Cheap to ask when nothing is wrong (one atomic load per success).
#[derive(Debug)]
pub struct OutageLog {
    dependency: &'static str,
    down: AtomicBool,
    outage: Mutex<Option<Outage>>,
}

#[derive(Debug)]
struct Outage {
    since: Instant,
    failures: u64,
}

impl OutageLog {
    /// The log of `dependency` (`PostgreSQL`, `Redis`), as named in the log lines.
    pub fn new(dependency: &'static str) -> Self {
        OutageLog { dependency, down: AtomicBool::new(false), outage: Mutex::new(None) }
    }

    /// A failure saying the dependency is unreachable: the first of an outage is logged at WARN with its
    /// `cause` (and `address`); the next ones only counted. Returns whether this one started the outage.
    pub fn failed(&self, address: &str, cause: &dyn Display) -> bool {
        let mut outage = self.lock();
        match outage.as_mut() {
            Some(outage) => {
                outage.failures += 1;
                false
            }
            None => {
                *outage = Some(Outage { since: Instant::now(), failures: 1 });
                self.down.store(true, Ordering::Release);
                tracing::warn!(
                    target_address = %address, cause = %cause,
                    "{} unavailable; further failures are counted, not logged, until it is back", self.dependency
                );
                true
            }
        }
    }

    /// A success: ends an outage with one INFO line (how long it lasted, how many failures it saw).
    pub fn succeeded(&self, address: &str) {
        if !self.down.load(Ordering::Acquire) {
            return;
        }
        let Some(outage) = self.lock().take() else { return };
        self.down.store(false, Ordering::Release);
        tracing::info!(
            target_address = %address, after = ?outage.since.elapsed(), failures = outage.failures,
            "{} reachable again", self.dependency
        );
    }

    /// Whether an outage is in progress.
    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Acquire)
    }

    fn lock(&self) -> MutexGuard<'_, Option<Outage>> {
        self.outage.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_is_logged_when_it_starts_and_when_it_ends_and_only_then() {
        let log = OutageLog::new("Test");
        log.succeeded("here");
        assert!(!log.is_down());
        assert!(log.failed("here", &"connection refused"), "the first failure starts the outage");
        assert!(!log.failed("here", &"connection refused"));
        assert!(!log.failed("here", &"connection refused"));
        assert!(log.is_down());
        assert_eq!(log.lock().as_ref().map(|o| o.failures), Some(3));
        log.succeeded("here");
        assert!(!log.is_down());
        assert!(log.failed("here", &"timed out"), "a new outage");
    }
}
