//! The short chaos runs of CI: the `chaos` harness (chaos-tests/) for 40 seconds against its own
//! PostgreSQL (or a primary and a standby it fails over to) and three real nodes, with every kind
//! of fault and concurrency limits that bind; each must report no violation.
//! The long soak is a separate command (docs/clustering.md).

use std::process::Command;

/// Runs the harness with `extra` options for 40 s; returns its summary line (checked clean).
fn chaos_run(name: &str, extra: &[&str]) -> String {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("pgtaskd-chaos-{name}-{}", std::process::id()));
    let output = Command::new(env!("CARGO_BIN_EXE_chaos"))
        .args([
            "--duration",
            "40s",
            "--rate",
            "10",
            "--fault-every",
            "1500ms",
            // limits that bind at this rate (about 7 tasks run at once unlimited)
            "--max-running",
            "6",
            "--key-limit",
            "3",
        ])
        .args(extra)
        .arg("--dir")
        .arg(&dir)
        .output()
        .expect("run the chaos harness");
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "chaos run failed ({:?}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let summary = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with("chaos: seed="))
        .expect("a summary line");
    assert!(summary.contains("violations=0"), "{summary}");
    let faults: u32 = summary
        .split_whitespace()
        .find_map(|w| w.strip_prefix("total="))
        .and_then(|n| n.parse().ok())
        .expect("fault count");
    assert!(faults >= 10, "the run injected faults: {summary}");
    summary.to_owned()
}

#[test]
fn a_short_chaos_run_keeps_every_invariant() {
    chaos_run("ci", &[]);
}

/// The same faults on a primary with a synchronous standby, failing over to it every 12 s
/// (`pg_failover`: the primary killed, the standby promoted, the old primary rebuilt as its
/// standby): the nodes follow on their multi-host URL (through their partition proxies, a port
/// per server, so `partition` faults mix in) and every invariant still holds.
#[test]
fn a_short_chaos_run_with_postgresql_failovers_keeps_every_invariant() {
    let summary = chaos_run("failover", &["--pg-failover-every", "12s"]);
    let failovers: u32 = summary
        .split_whitespace()
        .find_map(|w| w.strip_prefix("pg_failover="))
        .and_then(|n| n.parse().ok())
        .expect("failover count");
    assert!(failovers >= 2, "the run failed over: {summary}");
}
