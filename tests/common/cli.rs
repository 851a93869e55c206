//! Test support for the CLI: run the `pgtaskd` binary against a test database.
#![allow(dead_code)]

use std::process::{Command, Output};

/// The `pgtaskd ARGS…` command, with `DATABASE_URL` set and no `RUST_LOG`.
fn command(url: &str, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_pgtaskd"));
    command
        .args(args)
        .env("DATABASE_URL", url)
        .env_remove("RUST_LOG");
    command
}

/// `pgtaskd ARGS…` (see `command`); waits for it to exit.
pub fn pgtaskd(url: &str, args: &[&str]) -> Output {
    command(url, args).output().expect("run pgtaskd")
}

/// How long a blocking verb may run in a test before the test fails (and the process is killed).
pub const CLI_LIMIT: std::time::Duration = std::time::Duration::from_secs(120);

/// `pgtaskd` off the test's runtime (for verbs that block until tasks end). The process is
/// killed when the future is dropped (a failing test must not wait on a follower forever) and
/// when it outlives `CLI_LIMIT`.
pub async fn pgtaskd_async(url: &str, args: &[&str]) -> Output {
    let child = tokio::process::Command::from(command(url, args))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run pgtaskd");
    tokio::time::timeout(CLI_LIMIT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("pgtaskd {args:?} still running after {CLI_LIMIT:?}"))
        .expect("pgtaskd ran")
}

/// Its exit code (it must have exited, not died of a signal).
pub fn code(out: &Output) -> i32 {
    out.status.code().expect("exited normally")
}
