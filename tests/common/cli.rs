//! Test support for the CLI: run the `pgtaskd` binary against a test database.
#![allow(dead_code)]

use std::process::{Command, Output};

/// `pgtaskd ARGS…` with `DATABASE_URL` set and no `RUST_LOG`; waits for it to exit.
pub fn pgtaskd(url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pgtaskd"))
        .args(args)
        .env("DATABASE_URL", url)
        .env_remove("RUST_LOG")
        .output()
        .expect("run pgtaskd")
}

/// `pgtaskd` off the test's runtime (for verbs that block until tasks end).
pub async fn pgtaskd_async(url: &str, args: &[&str]) -> Output {
    let url = url.to_owned();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        pgtaskd(&url, &args)
    })
    .await
    .expect("pgtaskd ran")
}

/// Its exit code (it must have exited, not died of a signal).
pub fn code(out: &Output) -> i32 {
    out.status.code().expect("exited normally")
}
