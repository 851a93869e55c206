//! Starting a task process as another user or under rlimits without `fork`: the way glibc's
//! `posix_spawn` starts a child (`clone(CLONE_VM | CLONE_VFORK)` on a stack of its own, the
//! parent suspended until the child has called `execve`), plus the identity and limit steps
//! `posix_spawn` cannot take.
//!
//! Why: std falls back to `fork` as soon as a `pre_exec` hook is set, and `fork` copies the
//! node's page tables and makes every page the node touches afterwards fault once — measured at
//! 10 × the cost of a `posix_spawn` for a 50 MiB process, a quarter to a third of a node's task
//! throughput with `run_as`. Here the child shares the parent's memory until `execve`, so its
//! cost does not grow with the node.
//!
//! Owns: preparing every byte the child needs before the `clone` (C strings, pointer arrays,
//! pipes, `/dev/null`), the child's steps in order — signal dispositions back to default and an
//! empty mask, its own process group, stdin/stdout/stderr, the working directory,
//! `setgroups`/`setresgid`/`setresuid` (raw system calls: glibc's wrappers would signal every
//! thread of the node), `setrlimit`, `execve` — and reporting the first failing step's `errno`
//! through the shared memory. Waiting is through a pidfd, readable once the child has exited.
//! Must never: allocate, lock or touch anything but the prepared data and its own stack in the
//! child; leave a failed child unreaped.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;

use tokio::io::unix::AsyncFd;
use tokio::net::unix::pipe;

use super::identity::ChildSetup;

/// The step of the child that failed (for the error message).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    ProcessGroup = 1,
    Stdio = 2,
    WorkingDirectory = 3,
    Identity = 4,
    Limits = 5,
    Exec = 6,
}

impl Step {
    fn from_code(code: i32) -> Step {
        match code {
            1 => Step::ProcessGroup,
            2 => Step::Stdio,
            3 => Step::WorkingDirectory,
            4 => Step::Identity,
            5 => Step::Limits,
            _ => Step::Exec,
        }
    }
}

/// A child that failed before its program ran.
#[derive(Debug)]
pub struct StartError {
    pub step: Step,
    pub source: io::Error,
}

/// A started child: its pid (also its process group), a pidfd to wait on, its output pipes.
pub struct ClonedChild {
    pub pid: i32,
    pidfd: AsyncFd<OwnedFd>,
    status: Option<ExitStatus>,
}

/// What `spawn` returns: the child and the read ends of its stdout and stderr.
pub struct Spawned {
    pub child: ClonedChild,
    pub stdout: pipe::Receiver,
    pub stderr: pipe::Receiver,
}

/// Everything the child reads, prepared in the parent.
struct ChildPlan {
    path: CString,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    cwd: Option<CString>,
    stdin: RawFd,
    stdout: RawFd,
    stderr: RawFd,
    /// `(uid, gid, groups)` to switch to.
    identity: Option<(libc::uid_t, libc::gid_t, Vec<libc::gid_t>)>,
    limits: Vec<(libc::__rlimit_resource_t, libc::rlimit)>,
    /// Written by the child when a step fails: the step, then its errno.
    failed_step: i32,
    failed_errno: i32,
}

fn c_string(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "holds a NUL byte"))
}

fn pipe_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: a valid array of two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 returned two new descriptors we own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The child: runs on its own stack in the parent's memory until `execve`.
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the parent's `ChildPlan`, alive and unchanged while the parent is
    // suspended (CLONE_VFORK); only system calls follow.
    unsafe {
        let plan = &mut *(arg as *mut ChildPlan);
        let fail = |plan: &mut ChildPlan, step: Step| -> libc::c_int {
            std::ptr::write_volatile(&mut plan.failed_errno, *libc::__errno_location());
            std::ptr::write_volatile(&mut plan.failed_step, step as i32);
            libc::_exit(127)
        };
        // No parent handler may run on this stack, and a task starts with no signal ignored
        // (the node ignores SIGPIPE; glibc's own signals included): every disposition back to
        // its default through the raw system call (glibc's wrapper refuses its own signals),
        // then an empty mask. The kernel's struct: handler, flags, restorer, mask; all zero is
        // SIG_DFL.
        let default_action = [0u64; 4];
        for sig in 1..=64 {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                continue;
            }
            libc::syscall(
                libc::SYS_rt_sigaction,
                sig,
                default_action.as_ptr(),
                std::ptr::null_mut::<u64>(),
                8usize,
            );
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());

        if libc::setpgid(0, 0) != 0 {
            return fail(plan, Step::ProcessGroup);
        }
        for (from, to) in [(plan.stdin, 0), (plan.stdout, 1), (plan.stderr, 2)] {
            if libc::dup2(from, to) < 0 {
                return fail(plan, Step::Stdio);
            }
        }
        if let Some(cwd) = &plan.cwd {
            if libc::chdir(cwd.as_ptr()) != 0 {
                return fail(plan, Step::WorkingDirectory);
            }
        }
        if let Some((uid, gid, groups)) = &plan.identity {
            if libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) != 0
                || libc::syscall(libc::SYS_setresgid, *gid, *gid, *gid) != 0
                || libc::syscall(libc::SYS_setresuid, *uid, *uid, *uid) != 0
            {
                return fail(plan, Step::Identity);
            }
        }
        for (resource, limit) in &plan.limits {
            if libc::setrlimit(*resource, limit) != 0 {
                return fail(plan, Step::Limits);
            }
        }
        libc::execve(plan.path.as_ptr(), plan.argv.as_ptr(), plan.envp.as_ptr());
        fail(plan, Step::Exec)
    }
}

/// Starts `program` (an absolute path) with `argv` (`argv[0]` as the task wrote it) and
/// exactly `env`, in `cwd`, as `setup` says, in a process group of its own; stdin is
/// `/dev/null`, stdout and stderr are pipes. Needs a tokio runtime (the pidfd and the pipes are
/// registered with it).
pub fn spawn(
    program: &Path,
    argv: &[String],
    env: &[(String, String)],
    cwd: Option<&Path>,
    setup: &ChildSetup,
) -> Result<Spawned, StartError> {
    let early = |source| StartError {
        step: Step::Exec,
        source,
    };
    let path = c_string(program.as_os_str().as_bytes()).map_err(early)?;
    let argv_c: Vec<CString> = argv
        .iter()
        .map(|a| c_string(a.as_bytes()))
        .collect::<Result<_, _>>()
        .map_err(early)?;
    let envp_c: Vec<CString> = env
        .iter()
        .map(|(k, v)| c_string(format!("{k}={v}").as_bytes()))
        .collect::<Result<_, _>>()
        .map_err(early)?;
    let cwd = cwd
        .map(|c| c_string(OsStr::as_bytes(c.as_os_str())))
        .transpose()
        .map_err(early)?;
    let (out_r, out_w) = pipe_pair().map_err(early)?;
    let (err_r, err_w) = pipe_pair().map_err(early)?;
    let devnull = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(early)?;

    let mut plan = ChildPlan {
        path,
        argv: argv_c
            .iter()
            .map(|a| a.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect(),
        envp: envp_c
            .iter()
            .map(|e| e.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect(),
        cwd,
        stdin: devnull.as_raw_fd(),
        stdout: out_w.as_raw_fd(),
        stderr: err_w.as_raw_fd(),
        identity: setup
            .run_as
            .as_ref()
            .map(|who| (who.uid, who.gid, who.groups.clone())),
        limits: setup
            .limits
            .iter()
            .map(|&(resource, soft, hard)| {
                (
                    resource,
                    libc::rlimit {
                        rlim_cur: soft,
                        rlim_max: hard,
                    },
                )
            })
            .collect(),
        failed_step: 0,
        failed_errno: 0,
    };

    const STACK: usize = 256 * 1024;
    // SAFETY: an anonymous private mapping, unmapped below; the child runs on it while the
    // parent is suspended, all signals of this thread blocked around the clone.
    let pid = unsafe {
        let stack = libc::mmap(
            std::ptr::null_mut(),
            STACK,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
            -1,
            0,
        );
        if stack == libc::MAP_FAILED {
            return Err(early(io::Error::last_os_error()));
        }
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut saved: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut saved);
        let top = (stack as usize + STACK) & !15;
        let pid = libc::clone(
            child_main,
            top as *mut libc::c_void,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            &mut plan as *mut ChildPlan as *mut libc::c_void,
        );
        let clone_error = io::Error::last_os_error();
        libc::pthread_sigmask(libc::SIG_SETMASK, &saved, std::ptr::null_mut());
        libc::munmap(stack, STACK);
        if pid < 0 {
            return Err(early(clone_error));
        }
        pid
    };
    drop((out_w, err_w, devnull));
    // SAFETY: reads of fields the (now exec'd or exited) child may have written.
    let (step, errno) = unsafe {
        (
            std::ptr::read_volatile(&plan.failed_step),
            std::ptr::read_volatile(&plan.failed_errno),
        )
    };
    if step != 0 {
        let mut status = 0;
        // SAFETY: reaping our own child, which has exited.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        return Err(StartError {
            step: Step::from_code(step),
            source: io::Error::from_raw_os_error(errno),
        });
    }
    let started = (|| {
        // SAFETY: pidfd_open of our own unreaped child.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new descriptor we own.
        let pidfd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
        set_nonblocking(&out_r)?;
        set_nonblocking(&err_r)?;
        // SAFETY: the AsyncFd owns the OwnedFd, which stays open and unchanged until dropped.
        let pidfd =
            unsafe { AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE) }
                .map_err(io::Error::from)?;
        Ok(Spawned {
            child: ClonedChild {
                pid,
                pidfd,
                status: None,
            },
            stdout: pipe::Receiver::from_owned_fd(out_r)?,
            stderr: pipe::Receiver::from_owned_fd(err_r)?,
        })
    })();
    started.map_err(|source| {
        // the program runs but cannot be watched: stop it rather than lose it
        // SAFETY: signalling and reaping our own child.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
        StartError {
            step: Step::Exec,
            source,
        }
    })
}

impl ClonedChild {
    /// Waits until the child has exited and reaps it.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        loop {
            let mut guard = self.pidfd.readable().await?;
            let mut status = 0;
            // SAFETY: reaping our own child; WNOHANG: the pidfd may be readable spuriously.
            let reaped = unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) };
            if reaped == self.pid {
                let status = ExitStatus::from_raw(status);
                self.status = Some(status);
                return Ok(status);
            }
            if reaped < 0 {
                return Err(io::Error::last_os_error());
            }
            guard.clear_ready();
        }
    }
}

impl Drop for ClonedChild {
    fn drop(&mut self) {
        if self.status.is_none() {
            // never leave a zombie: reap it once it ends, off the runtime
            let pid = self.pid;
            std::thread::spawn(move || {
                // SAFETY: reaping our own child.
                unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
            });
        }
    }
}
