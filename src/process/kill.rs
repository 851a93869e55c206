//! Signalling task process groups.
//!
//! Owns: sending signals to a whole process group, checking whether a group
//! still has members, and the SIGTERM → grace → SIGKILL sequence.
//! Must never: signal pgid 0 or 1 (`kill(0)` is our own group, `kill(-1)` is
//! every process we may signal) or our own process group; wait for a group
//! to vanish after SIGKILL (zombies keep a killed group signalable for
//! seconds until they are reaped).

use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::{getpgrp, Pid};

/// How often `terminate_group` checks whether the group is gone.
const POLL: Duration = Duration::from_millis(20);

#[derive(Debug, thiserror::Error)]
pub enum KillError {
    #[error("refusing to signal invalid process group id {0}")]
    InvalidPgid(i32),
    #[error("refusing to signal our own process group {0}")]
    OwnGroup(i32),
    #[error("not permitted to signal process group {0}")]
    PermissionDenied(i32),
    #[error("failed to signal process group {pgid}: {source}")]
    Os { pgid: i32, source: Errno },
}

fn check_pgid(pgid: i32) -> Result<Pid, KillError> {
    if pgid <= 1 {
        return Err(KillError::InvalidPgid(pgid));
    }
    if pgid == getpgrp().as_raw() {
        return Err(KillError::OwnGroup(pgid));
    }
    Ok(Pid::from_raw(pgid))
}

/// Sends `sig` to every process of group `pgid`. A group that no longer
/// exists (ESRCH) is not an error.
pub fn signal_group(pgid: i32, sig: Signal) -> Result<(), KillError> {
    let pid = check_pgid(pgid)?;
    match killpg(pid, sig) {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(Errno::EPERM) => Err(KillError::PermissionDenied(pgid)),
        Err(source) => Err(KillError::Os { pgid, source }),
    }
}

/// Whether group `pgid` still has a member (zombies count: they keep the
/// group signalable until reaped).
pub fn group_alive(pgid: i32) -> bool {
    let Ok(pid) = check_pgid(pgid) else {
        return false;
    };
    match killpg(pid, None) {
        Ok(()) | Err(Errno::EPERM) => true,
        Err(_) => false,
    }
}

/// How `terminate_group` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Termination {
    /// The group was gone within the grace period after SIGTERM (or before).
    Exited,
    /// The grace period ran out and the group got SIGKILL.
    Killed,
}

/// SIGTERM to the group, then SIGKILL if it still has members after
/// `grace` (checked every ~20 ms). Does not wait after SIGKILL.
pub async fn terminate_group(pgid: i32, grace: Duration) -> Result<Termination, KillError> {
    signal_group(pgid, Signal::SIGTERM)?;
    let deadline = tokio::time::Instant::now() + grace;
    while group_alive(pgid) {
        if tokio::time::Instant::now() >= deadline {
            signal_group(pgid, Signal::SIGKILL)?;
            return Ok(Termination::Killed);
        }
        tokio::time::sleep(POLL).await;
    }
    Ok(Termination::Exited)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::spawn::{spawn, SpawnSpec};
    use crate::process::testutil::{live_members, wait_group_dead};

    #[test]
    fn refuses_dangerous_pgids() {
        assert!(matches!(
            signal_group(0, Signal::SIGTERM),
            Err(KillError::InvalidPgid(0))
        ));
        assert!(matches!(
            signal_group(1, Signal::SIGTERM),
            Err(KillError::InvalidPgid(1))
        ));
        assert!(matches!(
            signal_group(-5, Signal::SIGTERM),
            Err(KillError::InvalidPgid(-5))
        ));
        let own = getpgrp().as_raw();
        assert!(matches!(
            signal_group(own, Signal::SIGTERM),
            Err(KillError::OwnGroup(_))
        ));
        assert!(!group_alive(1));
    }

    #[tokio::test]
    async fn terminate_kills_group_that_ignores_sigterm() {
        let spec = SpawnSpec::new([
            "sh",
            "-c",
            "trap '' TERM; sleep 1000 & sleep 1000 & echo ready; wait",
        ]);
        let proc = spawn(&spec).expect("spawn");
        let pgid = proc.pid;
        // Let the shell start its children before we signal.
        let waiter = tokio::spawn(proc.wait());
        for _ in 0..100 {
            if live_members(pgid).len() >= 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(live_members(pgid).len(), 3, "shell + two sleeps");
        let how = terminate_group(pgid, Duration::from_millis(300))
            .await
            .expect("terminate");
        assert_eq!(how, Termination::Killed);
        assert!(
            wait_group_dead(pgid, Duration::from_secs(3)).await,
            "left: {:?}",
            live_members(pgid)
        );
        let out = waiter.await.expect("join");
        assert_eq!(out.signal, Some(9));
    }

    #[tokio::test]
    async fn terminate_of_polite_group_does_not_need_sigkill() {
        let proc = spawn(&SpawnSpec::new(["sleep", "1000"])).expect("spawn");
        let pgid = proc.pid;
        let waiter = tokio::spawn(proc.wait());
        let how = terminate_group(pgid, Duration::from_secs(5))
            .await
            .expect("terminate");
        assert_eq!(how, Termination::Exited);
        assert_eq!(waiter.await.expect("join").signal, Some(15));
    }
}
