//! Killing what a previous incarnation of this node left running.
//!
//! Owns: scanning `/proc/*/environ` for processes whose environment holds an
//! exact `marker=value` entry (e.g. `PGTASKD_WORKER_ID=7`) and SIGKILLing
//! their process groups; the same scan for tests and the chaos checker.
//! Must never: kill our own process or process group, fail on processes it
//! cannot read (other users, processes exiting mid-scan: skipped), or match
//! a prefix (`PGTASKD_WORKER_ID=7` must not match `...=70`).
//! Blocking: reads /proc synchronously; call it at start-up before the
//! runtime, or through `spawn_blocking`.

use std::collections::BTreeSet;

use nix::sys::signal::Signal;
use nix::unistd::{getpgid, getpgrp, getpid, Pid};

use super::kill::signal_group;

/// Live (non-zombie) processes other than this one whose environment has an entry (`KEY=value`
/// bytes) for which `matches` is true. Processes that cannot be read are skipped.
pub fn processes_with_env(matches: impl Fn(&[u8]) -> bool) -> Vec<i32> {
    let own_pid = getpid().as_raw();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        tracing::warn!("cannot read /proc");
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == own_pid {
            continue;
        }
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        if !environ.split(|&b| b == 0).any(&matches) {
            continue;
        }
        let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .map(|(_, rest)| rest.trim_start().starts_with('Z'))
            })
            .unwrap_or(true);
        if !zombie {
            found.push(pid);
        }
    }
    found
}

/// SIGKILLs the process group of every process whose environment contains
/// `marker=value`. Returns how many process groups it killed.
pub fn kill_leftovers(marker: &str, value: &str) -> usize {
    let needle = format!("{marker}={value}").into_bytes();
    let own_pgid = getpgrp().as_raw();
    let mut groups = BTreeSet::new();
    for pid in processes_with_env(|kv| kv == needle.as_slice()) {
        match getpgid(Some(Pid::from_raw(pid))) {
            Ok(pgid) if pgid.as_raw() != own_pgid && pgid.as_raw() > 1 => {
                groups.insert(pgid.as_raw());
            }
            Ok(_) => tracing::warn!(pid, "leftover task process shares our group; skipped"),
            Err(_) => {} // exited meanwhile
        }
    }
    let mut killed = 0;
    for pgid in groups {
        match signal_group(pgid, Signal::SIGKILL) {
            Ok(()) => {
                tracing::info!(pgid, "killed leftover task process group");
                killed += 1;
            }
            Err(e) => tracing::warn!(pgid, error = %e, "could not kill leftover task group"),
        }
    }
    killed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::spawn::{spawn, SpawnSpec};
    use crate::process::testutil::{live_members, wait_group_dead};
    use std::time::Duration;

    #[tokio::test]
    async fn kills_marked_processes_only() {
        let value = format!("{}-{}", std::process::id(), rand::random::<u64>());
        let mut marked = SpawnSpec::new(["sleep", "1000"]);
        marked.env = vec![("PGTASKD_TEST_MARKER".into(), value.clone())];
        let mut other = SpawnSpec::new(["sleep", "1000"]);
        other.env = vec![("PGTASKD_TEST_MARKER".into(), format!("{value}0"))];
        let marked = spawn(&marked).expect("spawn marked");
        let other = spawn(&other).expect("spawn other");
        let (pm, po) = (marked.pid, other.pid);
        let wm = tokio::spawn(marked.wait());

        assert_eq!(kill_leftovers("PGTASKD_TEST_MARKER", &value), 1);
        assert_eq!(wm.await.expect("join").signal, Some(9));
        assert!(wait_group_dead(pm, Duration::from_secs(3)).await);
        assert_eq!(live_members(po), vec![po], "prefix must not match");
        assert_eq!(kill_leftovers("PGTASKD_TEST_MARKER", "no-such-value"), 0);
        drop(other);
    }
}
