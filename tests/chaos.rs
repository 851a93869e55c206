//! The short chaos run of CI: the `chaos` harness (chaos-tests/) for 40 seconds against its own
//! PostgreSQL and three real nodes, with every kind of fault and concurrency limits that bind;
//! it must report no violation.
//! The long soak is a separate command (docs/clustering.md).

use std::process::Command;

#[test]
fn a_short_chaos_run_keeps_every_invariant() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("pgtaskd-chaos-ci-{}", std::process::id()));
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
}
