//! The actors of a node (docs/design.md §3), one file each, each with its own message enum.
//!
//! | actor | owns |
//! |---|---|
//! | `supervisor` | start-up order, shutdown (signals, stop codes), the watchdog that recreates a crashed actor |
//! | `membership` | the worker row, heartbeat and liveness lock on a dedicated connection |
//! | `listener` | the LISTEN connection: notifications to typed messages, reconnect and resync |
//! | `dispatcher` | claiming tasks up to the process limit, reconciling cancels, fencing |
//! | `outcomes` | every write that ends a run: batched outcomes, the spool and its replay, hand-back of fenced runs |
//! | `process` | one OS process (or in-process handler): spawn, tails, timeout, kill, its outcome |
//! | `scheduler` | the time-driven work of the group on time, under the coordinator's term: schedules, due retries, lease expiry, retention |
//! | `coordinator` | election per group, dead-node detection and reassignment under a term |

pub mod coordinator;
pub mod dispatcher;
pub mod listener;
pub mod membership;
pub mod outcomes;
pub mod process;
pub mod scheduler;
pub mod supervisor;

use std::time::Duration;

/// Exponential back-off for retrying a failed database call: 100 ms doubling to 5 s.
pub(crate) fn backoff(failures: u32) -> Duration {
    let ms = 100u64.saturating_mul(1u64 << failures.min(6));
    Duration::from_millis(ms.min(5_000))
}
