//! The guardian: one helper process per node that SIGKILLs the node's task
//! process groups when the node dies, even by SIGKILL. On its node's death it
//! kills every registered group, then sweeps for any process still carrying
//! the node's environment marker (a task spawned in the instant before it was
//! registered, or a descendant that left its group).
//!
//! Owns: the node side (`Guardian`: spawns `<exe> __guardian`, writes
//! `+<pgid>` / `-<pgid>` lines to its stdin) and the guardian side
//! (`guardian_main` / `run_guardian`: tracks registered groups and kills
//! them all on EOF, which comes when the node exits or dies).
//! Must never: die before the EOF cleanup (it runs in its own process group,
//! ignores SIGINT/SIGTERM/SIGHUP), block the node's
//! async runtime (the pipe is non-blocking; a full or broken pipe is logged,
//! once), or kill a group that was unregistered.

use std::collections::HashSet;
use std::io::{self, BufRead, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, PoisonError};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::signal::{signal, SigHandler, Signal};

use super::kill::signal_group;

/// Writes a line to stderr, ignoring failure: `eprintln!` panics on a broken stderr, and the
/// guardian must reach its cleanup whatever happened to the node's log reader.
macro_rules! say {
    ($($arg:tt)*) => {{
        let _ = writeln!(io::stderr(), $($arg)*);
    }};
}

/// The hidden subcommand the node binary must route to `guardian_main`.
pub const GUARDIAN_ARG: &str = "__guardian";

#[derive(Debug, thiserror::Error)]
pub enum GuardianError {
    #[error("failed to start guardian '{exe}': {source}")]
    Spawn { exe: String, source: io::Error },
    #[error("guardian started without a stdin pipe")]
    NoPipe,
    #[error("failed to make the guardian pipe non-blocking: {0}")]
    Pipe(nix::errno::Errno),
}

struct Link {
    stdin: Option<ChildStdin>,
    warned: bool,
}

/// The node's handle on its guardian. Dropping it closes the pipe, so the
/// guardian kills every group still registered and exits.
pub struct Guardian {
    child: Child,
    link: Mutex<Link>,
}

impl std::fmt::Debug for Guardian {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guardian")
            .field("pid", &self.child.id())
            .finish_non_exhaustive()
    }
}

impl Guardian {
    /// Spawns `exe __guardian [KEY=VALUE]` in its own process group with a
    /// stdin pipe; `marker` is the environment entry every task of this node
    /// carries, swept when the node dies.
    pub fn start(exe: &Path, marker: Option<(&str, &str)>) -> Result<Guardian, GuardianError> {
        let mut command = Command::new(exe);
        command.arg(GUARDIAN_ARG);
        if let Some((key, value)) = marker {
            command.arg(format!("{key}={value}"));
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()
            .map_err(|source| GuardianError::Spawn {
                exe: exe.display().to_string(),
                source,
            })?;
        let Some(stdin) = child.stdin.take() else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(GuardianError::NoPipe);
        };
        // Non-blocking: a write of one short line (< PIPE_BUF, so atomic)
        // either goes through at once or fails with EAGAIN.
        if let Err(e) = fcntl(stdin.as_raw_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK)) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(GuardianError::Pipe(e));
        }
        Ok(Guardian {
            child,
            link: Mutex::new(Link {
                stdin: Some(stdin),
                warned: false,
            }),
        })
    }

    /// The guardian's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Tells the guardian that task group `pgid` started.
    pub fn register(&self, pgid: i32) {
        self.send(&format!("+{pgid}\n"));
    }

    /// Tells the guardian that task group `pgid` ended.
    pub fn unregister(&self, pgid: i32) {
        self.send(&format!("-{pgid}\n"));
    }

    fn send(&self, line: &str) {
        let mut link = self.link.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(stdin) = link.stdin.as_mut() else {
            return; // already reported dead
        };
        match stdin.write_all(line.as_bytes()) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // The guardian is alive but not reading; keep the pipe.
                if !link.warned {
                    link.warned = true;
                    tracing::warn!("guardian pipe full: task groups may outlive a node crash");
                }
            }
            Err(e) => {
                link.stdin = None;
                if !link.warned {
                    link.warned = true;
                    tracing::warn!(
                        error = %e,
                        "guardian is gone: task groups may outlive a node crash"
                    );
                }
            }
        }
    }
}

impl Drop for Guardian {
    fn drop(&mut self) {
        // Closing stdin is the guardian's signal to clean up and exit.
        self.link
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .stdin = None;
        // Reap it if it is already gone; never block here.
        let _ = self.child.try_wait();
    }
}

/// Entry point of `<exe> __guardian`: own process group, ignore the
/// terminal and termination signals, read stdin until EOF, then kill every
/// registered group. Returns the process exit code.
pub fn guardian_main() -> i32 {
    // Already done by `Guardian::start`, but be sure when started otherwise.
    let _ = nix::unistd::setpgid(nix::unistd::Pid::from_raw(0), nix::unistd::Pid::from_raw(0));
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: SIG_IGN installs no handler code; nothing else in this
        // process manages these signals.
        if let Err(e) = unsafe { signal(sig, SigHandler::SigIgn) } {
            say!("pgtaskd guardian: cannot ignore {sig}: {e}");
        }
    }
    let stdin = io::stdin();
    let mut killed = run_guardian(stdin.lock());
    // The marker sweep catches what was never registered.
    if let Some((key, value)) = std::env::args()
        .nth(2)
        .as_deref()
        .and_then(|m| m.split_once('='))
    {
        killed += super::leftovers::kill_leftovers(key, value);
    }
    if killed > 0 {
        say!("pgtaskd guardian: node gone, killed {killed} task process group(s)");
    }
    0
}

/// The guardian loop: applies `+pgid` / `-pgid` lines until EOF (or a read
/// error), then SIGKILLs every group still registered. Returns how many
/// groups it signalled.
pub fn run_guardian(mut reader: impl BufRead) -> usize {
    let mut groups: HashSet<i32> = HashSet::new();
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) => break,
            Ok(_) => apply(&mut groups, line.trim()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                say!("pgtaskd guardian: ignoring non-UTF-8 line");
            }
            Err(e) => {
                say!("pgtaskd guardian: stdin read failed ({e}), cleaning up");
                break;
            }
        }
    }
    let mut killed = 0;
    for pgid in groups {
        match signal_group(pgid, Signal::SIGKILL) {
            Ok(()) => killed += 1,
            Err(e) => say!("pgtaskd guardian: {e}"),
        }
    }
    killed
}

fn apply(groups: &mut HashSet<i32>, line: &str) {
    let parsed = match line.split_at_checked(1) {
        Some(("+", n)) => n.parse::<i32>().ok().map(|p| (true, p)),
        Some(("-", n)) => n.parse::<i32>().ok().map(|p| (false, p)),
        _ => None,
    };
    match parsed {
        Some((true, pgid)) if pgid > 1 => {
            groups.insert(pgid);
        }
        Some((false, pgid)) => {
            groups.remove(&pgid);
        }
        _ if line.is_empty() => {}
        _ => say!("pgtaskd guardian: ignoring bad line {line:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::spawn::{spawn, SpawnSpec};
    use crate::process::testutil::{live_members, wait_group_dead};
    use std::time::Duration;

    #[tokio::test]
    async fn eof_kills_registered_groups_only() {
        let a = spawn(&SpawnSpec::new(["sleep", "1000"])).expect("spawn a");
        let b = spawn(&SpawnSpec::new(["sleep", "1000"])).expect("spawn b");
        let c = spawn(&SpawnSpec::new(["sh", "-c", "sleep 1000 & wait"])).expect("spawn c");
        let (pa, pb, pc) = (a.pid, b.pid, c.pid);
        let wa = tokio::spawn(a.wait());
        let wc = tokio::spawn(c.wait());
        // Let c's shell start its child so the group has a grandchild.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let input = format!("+{pa}\n+{pb}\ngarbage\n+{pc}\n-{pb}\n+1\n");
        let killed = run_guardian(io::Cursor::new(input));
        assert_eq!(killed, 2);
        assert_eq!(wa.await.expect("join").signal, Some(9));
        assert_eq!(wc.await.expect("join").signal, Some(9));
        assert!(wait_group_dead(pc, Duration::from_secs(3)).await);
        assert_eq!(
            live_members(pb),
            vec![pb],
            "unregistered group must survive"
        );
        drop(b); // kills b
        assert!(wait_group_dead(pb, Duration::from_secs(3)).await);
    }

    /// Not a test of its own: when the test binary is started as
    /// `<test exe> __guardian` (libtest then runs only tests whose name
    /// contains `__guardian`), this becomes the guardian process.
    #[test]
    #[allow(non_snake_case)]
    fn as__guardian_child() {
        if std::env::args().nth(1).as_deref() == Some(GUARDIAN_ARG) {
            std::process::exit(guardian_main());
        }
    }

    #[tokio::test]
    async fn guardian_process_end_to_end() {
        let exe = std::env::current_exe().expect("current_exe");
        let g = Guardian::start(&exe, None).expect("start guardian");
        let gpid = i32::try_from(g.pid()).expect("pid");
        let kept = spawn(&SpawnSpec::new(["sleep", "1000"])).expect("spawn kept");
        let doomed = spawn(&SpawnSpec::new(["sh", "-c", "sleep 1000 & wait"])).expect("spawn");
        let (pk, pd) = (kept.pid, doomed.pid);
        let wd = tokio::spawn(doomed.wait());
        // `sh` has forked its `sleep` (a loaded machine may take a while)
        let forked = std::time::Instant::now() + Duration::from_secs(10);
        while live_members(pd).len() < 2 && std::time::Instant::now() < forked {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        g.register(pk);
        g.register(pd);
        g.unregister(pk);
        // SIGTERM must not stop it before its cleanup.
        tokio::time::sleep(Duration::from_millis(300)).await;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(gpid), Signal::SIGTERM)
            .expect("sigterm guardian");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!live_members(gpid).is_empty(), "guardian died of SIGTERM");
        assert_eq!(live_members(pd).len(), 2, "killed too early");
        drop(g); // EOF, as when the node dies
        assert_eq!(wd.await.expect("join").signal, Some(9));
        assert!(wait_group_dead(pd, Duration::from_secs(3)).await);
        assert!(wait_group_dead(gpid, Duration::from_secs(3)).await);
        assert_eq!(live_members(pk), vec![pk]);
        drop(kept);
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(gpid), None);
    }

    #[tokio::test]
    async fn guardian_sweeps_unregistered_tasks_by_marker() {
        let exe = std::env::current_exe().expect("current_exe");
        let value = format!("sweep-{}", std::process::id());
        let g = Guardian::start(&exe, Some(("PGTASKD_TEST_MARKER", &value))).expect("start");
        let gpid = i32::try_from(g.pid()).expect("pid");
        // Started with the marker but never registered (the node died in between).
        let mut spec = SpawnSpec::new(["sleep", "1000"]);
        spec.env = vec![("PGTASKD_TEST_MARKER".into(), value.clone())];
        let marked = spawn(&spec).expect("spawn marked");
        let other = spawn(&SpawnSpec::new(["sleep", "1000"])).expect("spawn unmarked");
        let (pm, po) = (marked.pid, other.pid);
        let wm = tokio::spawn(marked.wait());
        tokio::time::sleep(Duration::from_millis(200)).await;
        drop(g); // EOF, as when the node dies
        assert_eq!(
            wm.await.expect("join").signal,
            Some(9),
            "the marked task is swept"
        );
        assert!(wait_group_dead(pm, Duration::from_secs(3)).await);
        assert_eq!(
            live_members(po),
            vec![po],
            "an unmarked process is left alone"
        );
        drop(other);
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(gpid), None);
    }

    #[test]
    fn dead_guardian_is_tolerated() {
        // `true __guardian` exits at once: writes hit a closed pipe.
        let mut g = Guardian::start(Path::new("true"), None).expect("start");
        // wait until it has exited (a fixed sleep was too short on a loaded machine)
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while matches!(g.child.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        // Writes fail once no process holds the pipe's read end. A child another test forks at
        // this moment holds it until its exec (close-on-exec), so keep writing for a while.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut i = 0;
        loop {
            g.register(1000 + i);
            g.unregister(1000 + i);
            i += 1;
            let link = g.link.lock().expect("lock");
            if (link.stdin.is_none() && link.warned) || std::time::Instant::now() > deadline {
                break;
            }
            drop(link);
            std::thread::sleep(Duration::from_millis(10));
        }
        let link = g.link.lock().expect("lock");
        assert!(link.stdin.is_none() && link.warned);
    }

    #[test]
    fn start_reports_missing_exe() {
        let err = Guardian::start(Path::new("/no/such/pgtaskd"), None).expect_err("missing");
        assert!(err.to_string().contains("/no/such/pgtaskd"), "{err}");
    }
}
