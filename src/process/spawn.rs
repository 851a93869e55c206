//! Starting one task as an OS process and collecting its outcome.
//!
//! Owns: building the command (no shell, stdin null, stdout/stderr piped,
//! its own process group, exactly the environment in the spec), the bounded
//! stdout/stderr tails (readable while the process runs: `live_tails`, and the
//! spec's `output_alarm` rung by a reader that saw that many new lines; every byte, up to a cap,
//! into the spec's `capture` files), and `wait()`: exit status, then SIGKILL of the whole
//! group (leftover grandchildren die with the task), then the tails, waiting
//! at most ~500 ms for the pipes to close.
//! Must never: run through a shell, buffer unbounded output, block on a pipe
//! an escaped grandchild holds open, or leave a process running untracked
//! (dropping a `RunningProcess` or its `wait()` future before completion
//! SIGKILLs the group; cancel gracefully with `terminate_group(pid, ..)`
//! while `wait()` is polled elsewhere, e.g. in a spawned task).
//!
//! The program is started by its absolute path (resolved by `policy::resolve_program` in the
//! spec's own `PATH`): std gives up `posix_spawn` for a bare name once `PATH` is set.
//! Without another user or rlimits std starts the child with `posix_spawn` (vfork-like) instead
//! of `fork`, which halves the node's CPU per task (measured: 0.49 → 0.25 ms per `/bin/true`
//! task); with them, `clone_spawn` does the same plus the identity and limit steps (std would
//! fall back to `fork` for a `pre_exec` hook). Children die with a
//! killed node through the guardian (registered groups plus a sweep of the
//! node's environment marker), not through `PR_SET_PDEATHSIG`.
//!
//! Callers: `spawn` needs a tokio runtime context.

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use super::capture::{CaptureFile, CaptureTarget, Stream};
use super::clone_spawn::{self, ClonedChild, Step};
use super::identity::ChildSetup;
use super::kill::signal_group;
use super::policy::{resolve_program, BaseEnvironment, DEFAULT_PATH};
use super::tail::Tail;

/// How long `wait()` waits for the output readers after the process exited.
const READER_GRACE: Duration = Duration::from_millis(500);
const READ_CHUNK: usize = 8192;

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpawnSpec {
    /// `argv[0]` is the program (looked up in the spec's `PATH` unless it has a `/`).
    pub argv: Vec<String>,
    /// The program's resolved absolute path, when the caller resolved (and checked) it already.
    pub program: Option<PathBuf>,
    pub cwd: Option<PathBuf>,
    /// The child's whole environment: nothing of the node's is inherited.
    pub env: Vec<(String, String)>,
    /// Another user and rlimits for the child (applied between fork and exec; empty: none,
    /// and the child is started by `posix_spawn`).
    pub setup: ChildSetup,
    /// Keep the last N lines of stdout and of stderr...
    pub tail_lines: usize,
    /// ...and at most this many bytes per tail (cut at a char boundary).
    pub tail_bytes: usize,
    /// Rung (never waited on) when a stream ended this many lines since its last live snapshot.
    pub output_alarm: Option<OutputAlarm>,
    /// Also write every byte of each stream (up to a cap) to files (`capture`).
    pub capture: Option<CaptureTarget>,
}

/// A reader's way to ask for an early live flush: `notify_one` once a tail holds `lines`
/// unseen lines (the reader never blocks on it).
#[derive(Debug, Clone)]
pub struct OutputAlarm {
    pub notify: Arc<tokio::sync::Notify>,
    pub lines: usize,
}

impl PartialEq for OutputAlarm {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.notify, &other.notify) && self.lines == other.lines
    }
}

impl Eq for OutputAlarm {}

/// The tails of a running process, for live output: a snapshot of what changed since a version.
#[derive(Debug, Clone, Default)]
pub struct LiveTails {
    stdout: Option<Arc<Mutex<Tail>>>,
    stderr: Option<Arc<Mutex<Tail>>>,
}

/// One stream's tail, when it changed: its version and its text.
pub type TailSnapshot = Option<(u64, String)>;

impl LiveTails {
    /// The stdout and stderr tails whose version is not `seen` (`None`: unchanged). The lock is
    /// held for one render (bounded by `tail_bytes`), never across an await.
    pub fn changed_since(&self, seen: (u64, u64)) -> (TailSnapshot, TailSnapshot) {
        let take = |tail: &Option<Arc<Mutex<Tail>>>, seen: u64| {
            let tail = tail.as_ref()?;
            let mut tail = tail.lock().unwrap_or_else(PoisonError::into_inner);
            (tail.version() != seen).then(|| tail.snapshot())
        };
        (take(&self.stdout, seen.0), take(&self.stderr, seen.1))
    }
}

impl SpawnSpec {
    /// A spec with no cwd, the minimal environment (`PATH`, `HOME`, `LANG`), and tails of
    /// 100 lines / 64 KiB.
    pub fn new<I, S>(argv: I) -> SpawnSpec
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        SpawnSpec {
            argv: argv.into_iter().map(Into::into).collect(),
            program: None,
            cwd: None,
            env: BaseEnvironment::new(&[], None, |k| std::env::var(k).ok())
                .map(|base| base.with([]))
                .unwrap_or_default(),
            setup: ChildSetup::default(),
            tail_lines: 100,
            tail_bytes: 64 * 1024,
            output_alarm: None,
            capture: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("command is empty")]
    EmptyCommand,
    #[error("program '{0}' not found")]
    ProgramNotFound(String),
    #[error("program '{program}' is not executable: {reason}")]
    NotExecutable { program: String, reason: String },
    #[error("working directory '{0}' does not exist")]
    CwdNotFound(PathBuf),
    #[error("working directory '{0}' is not a directory")]
    CwdNotDirectory(PathBuf),
    #[error("failed to start '{program}': {source}")]
    Io { program: String, source: io::Error },
}

/// How a task process ended, with the last of its output.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ExitOutcome {
    /// Exit code when it exited normally.
    pub exit_code: Option<i32>,
    /// Signal number when a signal ended it.
    pub signal: Option<i32>,
    pub stdout_tail: String,
    pub stderr_tail: String,
}

struct Reader {
    handle: JoinHandle<()>,
    tail: Arc<Mutex<Tail>>,
}

/// The child of a `RunningProcess`: started by std (`posix_spawn`) or by `clone_spawn`.
enum TaskChild {
    Std(Child),
    Cloned(ClonedChild),
}

impl TaskChild {
    async fn wait(&mut self) -> io::Result<std::process::ExitStatus> {
        match self {
            TaskChild::Std(child) => child.wait().await,
            TaskChild::Cloned(child) => child.wait().await,
        }
    }
}

/// A started task process. `pid` is also its process group id.
pub struct RunningProcess {
    pub pid: i32,
    child: TaskChild,
    stdout: Option<Reader>,
    stderr: Option<Reader>,
    /// Set once `wait()` has reaped the child and killed the group.
    finished: bool,
}

impl std::fmt::Debug for RunningProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningProcess")
            .field("pid", &self.pid)
            .finish_non_exhaustive()
    }
}

/// Starts `spec` in its own process group. See the module header for the
/// threading requirement.
pub fn spawn(spec: &SpawnSpec) -> Result<RunningProcess, SpawnError> {
    let Some(program) = spec.argv.first() else {
        return Err(SpawnError::EmptyCommand);
    };
    if program.is_empty() {
        return Err(SpawnError::EmptyCommand);
    }
    if let Some(cwd) = &spec.cwd {
        check_cwd(cwd)?;
    }

    let resolved = match &spec.program {
        Some(path) => path.clone(),
        None => {
            let path_var = spec
                .env
                .iter()
                .find(|(k, _)| k == "PATH")
                .map_or(DEFAULT_PATH, |(_, v)| v.as_str());
            resolve_program(program, path_var, spec.cwd.as_deref())
                .map_err(|_| SpawnError::ProgramNotFound(program.clone()))?
        }
    };
    if !spec.setup.is_empty() {
        // another user or rlimits: started without fork (see clone_spawn)
        let spawned = clone_spawn::spawn(
            &resolved,
            &spec.argv,
            &spec.env,
            spec.cwd.as_deref(),
            &spec.setup,
        )
        .map_err(|e| match e.step {
            Step::WorkingDirectory | Step::Exec => classify(program, spec, e.source),
            step => SpawnError::Io {
                program: program.clone(),
                source: io::Error::new(
                    e.source.kind(),
                    format!("{step:?} step before exec failed: {}", e.source),
                ),
            },
        })?;
        return Ok(RunningProcess {
            pid: spawned.child.pid,
            child: TaskChild::Cloned(spawned.child),
            stdout: Some(start_reader(spawned.stdout, spec, Stream::Stdout)),
            stderr: Some(start_reader(spawned.stderr, spec, Stream::Stderr)),
            finished: false,
        });
    }
    let mut cmd = Command::new(&resolved);
    cmd.arg0(program)
        .args(&spec.argv[1..])
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(false);
    if let Some(cwd) = &spec.cwd {
        cmd.current_dir(cwd);
    }
    let mut child = cmd.spawn().map_err(|e| classify(program, spec, e))?;
    let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) else {
        // Cannot happen for a freshly spawned child; treat as an I/O error.
        return Err(SpawnError::Io {
            program: program.clone(),
            source: io::Error::other("spawned child has no pid"),
        });
    };
    let stdout = child
        .stdout
        .take()
        .map(|s| start_reader(s, spec, Stream::Stdout));
    let stderr = child
        .stderr
        .take()
        .map(|s| start_reader(s, spec, Stream::Stderr));
    Ok(RunningProcess {
        pid,
        child: TaskChild::Std(child),
        stdout,
        stderr,
        finished: false,
    })
}

fn check_cwd(cwd: &std::path::Path) -> Result<(), SpawnError> {
    match std::fs::metadata(cwd) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(SpawnError::CwdNotDirectory(cwd.to_path_buf())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            Err(SpawnError::CwdNotFound(cwd.to_path_buf()))
        }
        // Exists but unreadable metadata (e.g. EACCES on a parent): let the
        // spawn itself report the precise error.
        Err(_) => Ok(()),
    }
}

fn classify(program: &str, spec: &SpawnSpec, e: io::Error) -> SpawnError {
    let program = program.to_owned();
    match e.kind() {
        io::ErrorKind::NotFound => {
            // The cwd may have vanished since the check.
            if let Some(cwd) = &spec.cwd {
                if !cwd.exists() {
                    return SpawnError::CwdNotFound(cwd.clone());
                }
            }
            SpawnError::ProgramNotFound(program)
        }
        io::ErrorKind::PermissionDenied => SpawnError::NotExecutable {
            program,
            reason: "permission denied".into(),
        },
        _ if e.raw_os_error() == Some(libc::ENOEXEC) => SpawnError::NotExecutable {
            program,
            reason: "not an executable format".into(),
        },
        _ => SpawnError::Io { program, source: e },
    }
}

fn start_reader<R>(stream: R, spec: &SpawnSpec, which: Stream) -> Reader
where
    R: AsyncRead + Unpin + Send + 'static,
{
    let tail = Arc::new(Mutex::new(Tail::new(spec.tail_lines, spec.tail_bytes)));
    // a capture that cannot start is a capture that is not there; the task runs anyway
    let capture = spec.capture.as_ref().and_then(|target| {
        CaptureFile::create(target, which)
            .map_err(|e| {
                tracing::warn!(path = %target.path(which).display(), error = %e, "cannot capture the task's output")
            })
            .ok()
    });
    let handle = tokio::spawn(read_into(
        stream,
        Arc::clone(&tail),
        spec.output_alarm.clone(),
        capture,
    ));
    Reader { handle, tail }
}

async fn read_into<R: AsyncRead + Unpin>(
    mut stream: R,
    tail: Arc<Mutex<Tail>>,
    alarm: Option<OutputAlarm>,
    mut capture: Option<CaptureFile>,
) {
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                let unseen = {
                    let mut tail = tail.lock().unwrap_or_else(PoisonError::into_inner);
                    tail.push(&buf[..n]);
                    tail.unseen_lines()
                };
                // notify_one stores one permit: ringing again before the flush costs nothing
                if let Some(alarm) = alarm.as_ref().filter(|a| unseen >= a.lines.max(1)) {
                    alarm.notify.notify_one();
                }
                if let Some(capture) = capture.as_mut() {
                    capture.write(&buf[..n]);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::debug!(error = %e, "task output read failed");
                break;
            }
        }
    }
}

/// Waits for the reader up to `deadline`, then stops it; returns the tail
/// read so far.
async fn collect(reader: Option<Reader>, deadline: tokio::time::Instant) -> String {
    let Some(mut reader) = reader else {
        return String::new();
    };
    if tokio::time::timeout_at(deadline, &mut reader.handle)
        .await
        .is_err()
    {
        // An escaped grandchild holds the pipe open: use what we have.
        reader.handle.abort();
    }
    let text = reader
        .tail
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .render();
    text
}

impl RunningProcess {
    /// The tails as they grow, for live output while the process runs.
    pub fn live_tails(&self) -> LiveTails {
        LiveTails {
            stdout: self.stdout.as_ref().map(|r| Arc::clone(&r.tail)),
            stderr: self.stderr.as_ref().map(|r| Arc::clone(&r.tail)),
        }
    }

    /// Waits for the process to exit, SIGKILLs its whole group, and returns
    /// the exit status with the output tails (readers get at most ~500 ms
    /// after the exit).
    pub async fn wait(mut self) -> ExitOutcome {
        let status = self.child.wait().await;
        self.kill_group();
        self.finished = true;
        let deadline = tokio::time::Instant::now() + READER_GRACE;
        let stdout_tail = collect(self.stdout.take(), deadline).await;
        let mut stderr_tail = collect(self.stderr.take(), deadline).await;
        match status {
            Ok(status) => ExitOutcome {
                exit_code: status.code(),
                signal: status.signal(),
                stdout_tail,
                stderr_tail,
            },
            Err(e) => {
                tracing::warn!(pid = self.pid, error = %e, "waiting for task process failed");
                if !stderr_tail.is_empty() {
                    stderr_tail.push('\n');
                }
                stderr_tail.push_str(&format!("pgtaskd: waiting for the process failed: {e}"));
                ExitOutcome {
                    exit_code: None,
                    signal: None,
                    stdout_tail,
                    stderr_tail,
                }
            }
        }
    }

    fn kill_group(&self) {
        if let Err(e) = signal_group(self.pid, Signal::SIGKILL) {
            tracing::warn!(pgid = self.pid, error = %e, "could not kill task process group");
        }
    }
}

impl Drop for RunningProcess {
    fn drop(&mut self) {
        if !self.finished {
            // Never leave a task running untracked.
            self.kill_group();
        }
        for r in [&self.stdout, &self.stderr].into_iter().flatten() {
            r.handle.abort();
        }
    }
}

#[cfg(test)]
#[path = "spawn_tests.rs"]
mod tests;
