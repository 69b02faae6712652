//! Fault-tolerance building blocks shared by every client of this crate.

mod breaker;
mod clock;
mod outage;

pub use breaker::{BreakerConfig, BreakerState, BreakerVariables, CircuitBreaker, CircuitOpen, Permit, names};
pub use clock::{Clock, FakeClock, SystemClock};
pub use outage::OutageLog;
