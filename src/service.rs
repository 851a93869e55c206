//! The host's service manager (systemd's `sd_notify` protocol, through the `sd-notify` crate):
//! readiness, a one-line status, reload and stop notices, and the watchdog keep-alive.
//!
//! Owns what a node tells its service manager and when the watchdog may be fed. Every call is a
//! no-op when `NOTIFY_SOCKET` is unset (a node started by hand, a test, a container) and for an
//! embedded node (the socket belongs to the host program). A failed send is logged once per kind
//! at `debug` and never fails the node: the service manager is an observer, not a dependency.
//!
//! When the node reports (see `actors::supervisor`):
//! - `READY=1` once it is connected, has migrated or checked the schema, registered, holds its
//!   liveness lock and its actors have started claiming;
//! - `STATUS=…` whenever the one-line summary changes (running/limit, fenced, draining);
//! - `RELOADING=1` + `MONOTONIC_USEC` on SIGHUP, then `READY=1` when the reload is done;
//! - `STOPPING=1` when shutdown begins;
//! - `WATCHDOG=1` every half `WATCHDOG_USEC`, but only while `Liveness::alive` holds.

use std::time::{Duration, Instant};

use sd_notify::NotifyState;

/// A node's line to its service manager (inactive for an embedded node).
#[derive(Debug)]
pub struct ServiceManager {
    active: bool,
    last_status: Option<String>,
}

impl ServiceManager {
    /// `active`: whether this process may speak for the service (false for an embedded node).
    pub fn new(active: bool) -> ServiceManager {
        ServiceManager {
            active: active && std::env::var_os("NOTIFY_SOCKET").is_some(),
            last_status: None,
        }
    }

    /// Whether a service manager listens (`NOTIFY_SOCKET` set and this is not an embedded node).
    pub fn active(&self) -> bool {
        self.active
    }

    /// The interval to feed the watchdog at: half of `WATCHDOG_USEC` (None: no watchdog asked).
    pub fn watchdog_interval(&self) -> Option<Duration> {
        if !self.active {
            return None;
        }
        sd_notify::watchdog_enabled()
            .filter(|d| !d.is_zero())
            .map(|d| d / 2)
    }

    /// `READY=1` with a status line.
    pub fn ready(&mut self, status: &str) {
        self.last_status = Some(status.to_owned());
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// `STATUS=…`, only when it differs from the last one sent.
    pub fn status(&mut self, status: &str) {
        if self.last_status.as_deref() == Some(status) {
            return;
        }
        self.last_status = Some(status.to_owned());
        self.send(&[NotifyState::Status(status)]);
    }

    /// `RELOADING=1` with the monotonic time systemd ≥ 253 requires alongside it.
    pub fn reloading(&mut self) {
        if !self.active {
            return;
        }
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.send(&[
                NotifyState::Reloading,
                now,
                NotifyState::Status("reloading the configuration"),
            ]),
            Err(e) => tracing::debug!(error = %e, "no monotonic clock for RELOADING=1"),
        }
        self.last_status = None;
    }

    /// `STOPPING=1` with a status line.
    pub fn stopping(&mut self, status: &str) {
        self.last_status = Some(status.to_owned());
        self.send(&[NotifyState::Stopping, NotifyState::Status(status)]);
    }

    /// `WATCHDOG=1`.
    pub fn watchdog(&mut self) {
        self.send(&[NotifyState::Watchdog]);
    }

    fn send(&self, states: &[NotifyState]) {
        if !self.active {
            return;
        }
        if let Err(e) = sd_notify::notify(states) {
            tracing::debug!(error = %e, "cannot notify the service manager");
        }
    }
}

/// What proves a node alive to the watchdog: the actor thread turns (the Supervisor's timer that
/// asks fires on it), every long-lived actor's mailbox is open, and Membership's heartbeat loop
/// completes rounds — a round that reached the database or one that failed and said so. A failed
/// heartbeat still counts: the node handles a database outage itself (it fences, then recovers),
/// and a restart by the service manager would not bring the database back. A loop that no longer
/// completes (a hung connect, a wedged actor) stops the keep-alive and the manager restarts us.
#[derive(Debug, Clone, Copy)]
pub struct Liveness {
    /// When Membership last finished a heartbeat round (success or failure).
    pub last_round: Instant,
    /// Whether every long-lived actor's mailbox is open.
    pub actors_connected: bool,
}

impl Liveness {
    /// How long a heartbeat round may take before the node counts as hung: the query's own
    /// bound (half the timeout) plus a reconnect's (5 s connect timeout) plus an interval, with
    /// room to spare.
    pub fn round_limit(heartbeat_interval: Duration, heartbeat_timeout: Duration) -> Duration {
        heartbeat_interval + heartbeat_timeout.max(Duration::from_secs(5)) * 2
    }

    /// Whether the watchdog may be fed now.
    pub fn alive(&self, limit: Duration) -> bool {
        self.actors_connected && self.last_round.elapsed() <= limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stale_round_or_a_dead_actor_withholds_the_keep_alive() {
        let limit = Liveness::round_limit(Duration::from_secs(2), Duration::from_secs(5));
        assert_eq!(limit, Duration::from_secs(12));
        let now = Liveness {
            last_round: Instant::now(),
            actors_connected: true,
        };
        assert!(now.alive(limit));
        assert!(!Liveness {
            actors_connected: false,
            ..now
        }
        .alive(limit));
        // (a host up for less than 13 s cannot go back that far: nothing to check then)
        if let Some(then) = Instant::now().checked_sub(Duration::from_secs(13)) {
            let stale = Liveness {
                last_round: then,
                actors_connected: true,
            };
            assert!(!stale.alive(limit));
        }
    }

    #[test]
    fn inactive_without_a_socket_or_when_embedded() {
        assert!(!ServiceManager::new(false).active());
        assert_eq!(ServiceManager::new(false).watchdog_interval(), None);
    }
}
