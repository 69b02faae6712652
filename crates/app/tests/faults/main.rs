//! The fault suite: the service (the real `rust-app` binary) against private dependencies that are killed,
//! restarted, stopped or cut while it works. Each scenario uses instances of its own; the shared stack is
//! never touched.

mod broker_restarts;
