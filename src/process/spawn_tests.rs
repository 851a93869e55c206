//! Tests for `spawn.rs`: real processes, real pipes, real signals.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use super::*;
use crate::process::testutil::{live_members, wait_group_dead};

async fn run(argv: &[&str]) -> ExitOutcome {
    spawn(&SpawnSpec::new(argv.iter().copied()))
        .expect("spawn")
        .wait()
        .await
}

#[tokio::test]
async fn echo_exit_codes_and_signals() {
    let out = run(&["echo", "hello"]).await;
    assert_eq!(out.exit_code, Some(0));
    assert_eq!(out.signal, None);
    assert_eq!(out.stdout_tail, "hello");
    assert_eq!(out.stderr_tail, "");

    let out = run(&["sh", "-c", "exit 3"]).await;
    assert_eq!(out.exit_code, Some(3));

    let out = run(&["sh", "-c", "kill -9 $$"]).await;
    assert_eq!(out.exit_code, None);
    assert_eq!(out.signal, Some(9));

    let out = run(&["sh", "-c", "echo oops >&2; exit 1"]).await;
    assert_eq!(out.stderr_tail, "oops");
    assert_eq!(out.stdout_tail, "");
}

#[tokio::test]
async fn tail_keeps_exactly_last_lines() {
    let mut spec = SpawnSpec::new(["seq", "1", "100000"]);
    spec.tail_lines = 5;
    let out = spawn(&spec).expect("spawn").wait().await;
    assert_eq!(out.exit_code, Some(0));
    assert_eq!(out.stdout_tail, "99996\n99997\n99998\n99999\n100000");
}

#[tokio::test]
async fn long_line_without_newline_is_bounded() {
    let mut spec = SpawnSpec::new(["sh", "-c", "head -c 1000000 /dev/zero | tr '\\0' a"]);
    spec.tail_bytes = 1000;
    let out = spawn(&spec).expect("spawn").wait().await;
    assert_eq!(out.exit_code, Some(0));
    assert!(out.stdout_tail.len() <= 1000);
    assert_eq!(out.stdout_tail, "a".repeat(1000));
}

#[tokio::test]
async fn spawn_errors_have_clear_messages() {
    let err = spawn(&SpawnSpec::new(Vec::<String>::new())).expect_err("empty");
    assert!(matches!(err, SpawnError::EmptyCommand));
    assert_eq!(err.to_string(), "command is empty");

    let err = spawn(&SpawnSpec::new(["no-such-program-pgtaskd"])).expect_err("missing");
    assert!(matches!(err, SpawnError::ProgramNotFound(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        "program 'no-such-program-pgtaskd' not found"
    );

    let mut spec = SpawnSpec::new(["true"]);
    spec.cwd = Some("/no/such/dir-pgtaskd".into());
    let err = spawn(&spec).expect_err("bad cwd");
    assert!(matches!(err, SpawnError::CwdNotFound(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        "working directory '/no/such/dir-pgtaskd' does not exist"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("not-exec.sh");
    std::fs::write(&script, "#!/bin/sh\necho hi\n").expect("write");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let path = script.to_string_lossy().into_owned();
    let err = spawn(&SpawnSpec::new([path.clone()])).expect_err("not executable");
    assert!(matches!(err, SpawnError::NotExecutable { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("program '{path}' is not executable: permission denied")
    );

    let mut spec = SpawnSpec::new(["true"]);
    spec.cwd = Some(script.clone());
    let err = spawn(&spec).expect_err("cwd is a file");
    assert!(matches!(err, SpawnError::CwdNotDirectory(_)), "{err:?}");
}

#[tokio::test]
async fn cwd_and_env_are_applied() {
    let dir = tempfile::tempdir().expect("tempdir");
    let real = std::fs::canonicalize(dir.path()).expect("canonicalize");
    let mut spec = SpawnSpec::new(["pwd"]);
    spec.cwd = Some(real.clone());
    let out = spawn(&spec).expect("spawn").wait().await;
    assert_eq!(out.stdout_tail, real.to_string_lossy());

    let mut spec = SpawnSpec::new(["sh", "-c", "echo $X-$PGTASKD_TASK_ID"]);
    spec.env = vec![
        ("X".into(), "forty two".into()),
        ("PGTASKD_TASK_ID".into(), "17".into()),
    ];
    let out = spawn(&spec).expect("spawn").wait().await;
    assert_eq!(out.stdout_tail, "forty two-17");
}

#[tokio::test]
async fn wait_kills_background_grandchild() {
    let proc = spawn(&SpawnSpec::new(["sh", "-c", "sleep 1000 & echo started"])).expect("spawn");
    let pgid = proc.pid;
    let started = std::time::Instant::now();
    let out = proc.wait().await;
    assert_eq!(out.exit_code, Some(0));
    assert_eq!(out.stdout_tail, "started");
    // The sleep held stdout open; it was killed, so the pipe closed well
    // within the reader grace.
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        wait_group_dead(pgid, Duration::from_secs(3)).await,
        "left: {:?}",
        live_members(pgid)
    );
}

#[tokio::test]
async fn escaped_grandchild_holding_pipe_does_not_block_wait() {
    // setsid moves the sleep out of the task's group (the 0.3 s pause lets
    // it get there before the shell exits), so the group kill
    // misses it and it keeps stdout open.
    let proc = spawn(&SpawnSpec::new([
        "sh",
        "-c",
        "setsid sleep 5 & sleep 0.3; echo bye",
    ]))
    .expect("spawn");
    let started = std::time::Instant::now();
    let out = proc.wait().await;
    let took = started.elapsed();
    assert_eq!(out.exit_code, Some(0));
    assert_eq!(out.stdout_tail, "bye");
    // At least 0.3 s + the ~500 ms reader grace: the pipe really was held.
    assert!(
        took >= Duration::from_millis(700),
        "nothing escaped: {took:?}"
    );
    assert!(took < Duration::from_secs(2), "wait took {took:?}");
}

#[tokio::test]
async fn dropping_unwaited_process_kills_group() {
    let proc = spawn(&SpawnSpec::new(["sleep", "1000"])).expect("spawn");
    let pgid = proc.pid;
    assert_eq!(live_members(pgid), vec![pgid]);
    drop(proc);
    assert!(wait_group_dead(pgid, Duration::from_secs(3)).await);
}

/// A spec whose setup is not empty goes through `clone_spawn` (no fork).
fn limited(argv: &[&str]) -> SpawnSpec {
    let mut spec = SpawnSpec::new(argv.iter().copied());
    spec.setup = ChildSetup {
        run_as: None,
        limits: crate::process::identity::TaskLimits {
            open_files: Some(64),
            ..Default::default()
        }
        .rlimits(),
    };
    spec
}

#[tokio::test]
async fn a_child_with_limits_starts_like_any_other() {
    // output, exit code, its own process group, a clean signal state, the limit applied
    let out = spawn(&limited(&[
        "sh",
        "-c",
        "ulimit -n; echo err >&2; grep -E '^Sig(Ign|Blk)' /proc/self/status; \
         [ \"$(ps -o pgid= -p $$ | tr -d ' ')\" = \"$$\" ] && echo own-group; exit 3",
    ]))
    .expect("spawn")
    .wait()
    .await;
    assert_eq!(out.exit_code, Some(3));
    let lines: Vec<&str> = out.stdout_tail.lines().collect();
    assert_eq!(lines[0], "64", "{}", out.stdout_tail);
    assert!(
        out.stdout_tail.contains("SigIgn:\t0000000000000000"),
        "no signal ignored (SIGPIPE back to default): {}",
        out.stdout_tail
    );
    assert!(
        out.stdout_tail.contains("SigBlk:\t0000000000000000"),
        "nothing blocked: {}",
        out.stdout_tail
    );
    assert!(out.stdout_tail.contains("own-group"), "{}", out.stdout_tail);
    assert_eq!(out.stderr_tail, "err");

    // the working directory and exactly the given environment
    let dir = tempfile::tempdir().expect("tempdir");
    let real = std::fs::canonicalize(dir.path()).expect("canonicalize");
    let mut spec = limited(&["sh", "-c", "pwd; env | sort"]);
    spec.cwd = Some(real.clone());
    spec.env = vec![("ONLY".into(), "this".into())];
    let out = spawn(&spec).expect("spawn").wait().await;
    let lines: Vec<&str> = out.stdout_tail.lines().collect();
    assert_eq!(lines[0], real.to_string_lossy());
    assert!(lines.contains(&"ONLY=this"), "{}", out.stdout_tail);
    assert!(!out.stdout_tail.contains("CARGO"), "{}", out.stdout_tail);

    // errors are classified as for std's spawn
    let mut spec = limited(&["true"]);
    spec.cwd = Some("/no/such/dir-pgtaskd".into());
    assert!(matches!(
        spawn(&spec).expect_err("bad cwd"),
        SpawnError::CwdNotFound(_)
    ));
    let script = dir.path().join("not-exec.sh");
    std::fs::write(&script, "#!/bin/sh\necho hi\n").expect("write");
    let path = script.to_string_lossy().into_owned();
    let err = spawn(&limited(&[&path])).expect_err("not executable");
    assert!(matches!(err, SpawnError::NotExecutable { .. }), "{err:?}");

    // and a kill of the group reaches it
    let running = spawn(&limited(&["sleep", "30"])).expect("spawn");
    let pid = running.pid;
    signal_group(pid, Signal::SIGKILL).expect("kill");
    let out = running.wait().await;
    assert_eq!(out.signal, Some(9));
}

#[tokio::test]
async fn a_child_runs_as_another_user_without_fork() {
    if !nix::unistd::Uid::effective().is_root() {
        return; // switching users needs root
    }
    let nobody = crate::process::identity::RunAs::resolve("nobody").expect("nobody");
    let mut spec = SpawnSpec::new(["sh", "-c", "id -u; id -g; id -G"]);
    spec.setup = ChildSetup {
        run_as: Some(nobody.clone()),
        limits: Vec::new(),
    };
    let out = spawn(&spec).expect("spawn").wait().await;
    let lines: Vec<&str> = out.stdout_tail.lines().collect();
    assert_eq!(lines[0], nobody.uid.to_string(), "{}", out.stdout_tail);
    assert_eq!(lines[1], nobody.gid.to_string(), "{}", out.stdout_tail);
    assert!(
        !lines[2].split(' ').any(|g| g == "0"),
        "no root group: {}",
        out.stdout_tail
    );
}

#[tokio::test]
async fn live_tails_show_output_while_the_process_runs_and_ring_the_alarm() {
    let notify = Arc::new(tokio::sync::Notify::new());
    let mut spec = SpawnSpec::new(["sh", "-c", "echo one; echo two; sleep 30"]);
    spec.output_alarm = Some(OutputAlarm {
        notify: Arc::clone(&notify),
        lines: 2,
    });
    let running = spawn(&spec).expect("spawn");
    let live = running.live_tails();
    tokio::time::timeout(Duration::from_secs(5), notify.notified())
        .await
        .expect("two lines ring the alarm");
    let (stdout, stderr) = live.changed_since((0, 0));
    let (version, text) = stdout.expect("stdout changed");
    assert_eq!(text, "one\ntwo", "the tail while the process still runs");
    assert_eq!(stderr, None, "stderr never changed");
    assert_eq!(
        live.changed_since((version, 0)),
        (None, None),
        "nothing new since that version"
    );
    let pid = running.pid;
    drop(running); // kills the group
    assert!(wait_group_dead(pid, Duration::from_secs(3)).await);
}
