//! The SQL this binary carries, in the order it is applied: the numbered migrations of
//! `migrations/NNNN_*.sql` (immutable once released: tables, columns, constraints, indexes, data
//! changes and the `DROP` of retired objects), then the re-creatable schema files of
//! `migrations/schema/` (functions, triggers, views; one file per function, overloads together),
//! listed here in dependency order: a SQL-language function is checked against the functions it
//! calls when it is created.
//!
//! Owns the lists and their checksums. A test checks that every file under `migrations/` is
//! listed here, so none is silently skipped.

/// One numbered migration file.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// One re-creatable schema file (`CREATE OR REPLACE` statements only).
#[derive(Debug, Clone, Copy)]
pub struct SchemaFile {
    /// Its path under `migrations/schema/`.
    pub path: &'static str,
    pub sql: &'static str,
}

macro_rules! migrations {
    ($($version:literal $name:literal $file:literal),* $(,)?) => {
        &[$(Migration {
            version: $version,
            name: $name,
            sql: include_str!(concat!("../../../migrations/", $file)),
        }),*]
    };
}

macro_rules! schema_files {
    ($($path:literal),* $(,)?) => {
        &[$(SchemaFile {
            path: $path,
            sql: include_str!(concat!("../../../migrations/schema/", $path)),
        }),*]
    };
}

/// Every numbered migration, in order.
pub const MIGRATIONS: &[Migration] = migrations![
    1 "init" "0001_init.sql",
    2 "queue" "0002_queue.sql",
    3 "cluster" "0003_cluster.sql",
    4 "observability" "0004_observability.sql",
    5 "write_path" "0005_write_path.sql",
    6 "consumer_path" "0006_consumer_path.sql",
    7 "one_write_path" "0007_one_write_path.sql",
    8 "ready_ring" "0008_ready_ring.sql",
    9 "program_allow_list" "0009_program_allow_list.sql",
    10 "who_did_it" "0010_who_did_it.sql",
    11 "roles_and_isolation" "0011_roles_and_isolation.sql",
    13 "console" "0013_console.sql",
    14 "pause" "0014_pause.sql",
    15 "cron" "0015_cron.sql",
    16 "hand_over" "0016_hand_over.sql",
    17 "limits" "0017_limits.sql",
    18 "fair_share" "0018_fair_share.sql",
    19 "key_rates" "0019_key_rates.sql",
];

/// Every schema file, in the order applied (after the numbered migrations).
pub const SCHEMA_FILES: &[SchemaFile] = schema_files![
    // advisory lock namespaces and the session helpers built on them
    "cluster/ns_node.sql",
    "cluster/ns_group.sql",
    "cluster/advisory_holders.sql",
    "cluster/holds_group_lock.sql",
    "cluster/terminate_node_sessions.sql",
    // the ready ring: entries of claimable tasks, in slots emptied by TRUNCATE
    "ready/ns_ring.sql",
    "ready/ns_claim.sql",
    "ready/ready_insert_slot.sql",
    "ready/ready_live_slots.sql",
    "ready/delete_ready_entries.sql",
    "ready/ring_read_again.sql",
    "ready/take_ready.sql",
    "ready/rotate_ready.sql",
    "ready/turn_ready.sql",
    // the state machine and the notifications of every write
    "notify/channel.sql",
    "client_api/default_max_attempts.sql",
    "state_machine/legal_next_states.sql",
    "state_machine/reject_task_state.sql",
    "state_machine/check_period.sql",
    "state_machine/check_cron.sql",
    "state_machine/program_matches.sql",
    "state_machine/program_refusal.sql",
    "state_machine/check_program.sql",
    "state_machine/check_env.sql",
    // who may use which group (long_task.group_access)
    "access/accessible_groups.sql",
    "access/check_group_access.sql",
    "state_machine/task_before_write.sql",
    "state_machine/task_reset_lost.sql",
    "state_machine/task_deps_before_insert.sql",
    "notify/task_after_write.sql",
    "notify/worker_notify.sql",
    "control/ns_pause.sql",
    "notify/group_settings_notify.sql",
    "notify/key_limit_notify.sql",
    // concurrency and rate limits: what a limited claim may take
    "limits/ns_limit.sql",
    "limits/ns_limit_slot.sql",
    "limits/limit_slots.sql",
    "limits/lock_limit_group.sql",
    "limits/limit_change_lock.sql",
    "limits/limits_configured.sql",
    "limits/group_limited.sql",
    "limits/key_limits.sql",
    "limits/key_limit_of.sql",
    "limits/key_rate_of.sql",
    "limits/put_back_ready.sql",
    "limits/take_fair.sql",
    "limits/take_limited.sql",
    "limits/rate_wake.sql",
    // a task's life on a node: claim, outcome
    "outcomes/retry_delay.sql",
    "outcomes/complete_runs.sql",
    "outcomes/finish_runs.sql",
    "outcomes/record_output.sql",
    "claim/claim.sql",
    "claim/running_state.sql",
    // the one write path of every client: submit, cancel, re-queue (recording who asked)
    "console/record_change.sql",
    "client_api/submit.sql",
    "client_api/cancel.sql",
    "client_api/requeue.sql",
    // the SQL consumer API
    "consumer_api/lease_seconds.sql",
    "consumer_api/publish.sql",
    "consumer_api/publish_bulk.sql",
    "consumer_api/consume_topic.sql",
    "consumer_api/consume.sql",
    "consumer_api/ack.sql",
    "consumer_api/ack_many.sql",
    "consumer_api/nack.sql",
    // lost runs and the coordinator
    "handback/hand_back.sql",
    "cluster/become_coordinator.sql",
    "cluster/depose_stale_coordinator.sql",
    "cluster/coordinate.sql",
    // time-driven work of a group (the coordinator's Scheduler)
    "scheduler/next_planned.sql",
    "scheduler/fire_schedule.sql",
    "scheduler/fire_schedules.sql",
    "scheduler/due_crons.sql",
    "scheduler/fire_crons.sql",
    "scheduler/expire_leases.sql",
    "scheduler/purge_finished.sql",
    "scheduler/promote_due.sql",
    "scheduler/scheduler_tick.sql",
    "scheduler/scheduler_tick_as.sql",
    // read-only views for people and dashboards
    "views/running.sql",
    "views/expired.sql",
    "views/queue_stats.sql",
    "views/limits.sql",
    // the web console: queue-depth samples for its charts
    "console/sample_queue.sql",
    // the control plane: pausing a group, handing a node's tasks over
    "control/pause_group.sql",
    "control/resume_group.sql",
    "control/ns_hand_over.sql",
    "control/hand_over_node.sql",
    // which function runs on which write
    "triggers.sql",
    // roles, grants, row-level security, SECURITY DEFINER: after every function exists
    "access/privileges.sql",
];

/// FNV-1a, 64 bit, folded into one running hash.
fn fnv(mut hash: u64, bytes: &[u8]) -> u64 {
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// The checksum of one migration's text: detects an applied file that was edited afterwards.
pub fn checksum(sql: &str) -> i64 {
    fnv(FNV_OFFSET, sql.as_bytes()) as i64
}

/// The combined checksum of the schema files: their paths, order and texts.
pub fn schema_checksum() -> i64 {
    SCHEMA_FILES.iter().fold(FNV_OFFSET, |hash, file| {
        let hash = fnv(hash, file.path.as_bytes());
        let hash = fnv(hash, &[0]);
        let hash = fnv(hash, file.sql.as_bytes());
        fnv(hash, &[0])
    }) as i64
}

/// The schema version this binary expects (its newest numbered migration).
pub fn latest_version() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::path::{Path, PathBuf};

    fn sql_files_under(dir: &Path, base: &Path, out: &mut BTreeSet<String>) {
        let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                sql_files_under(&path, base, out);
            } else {
                let rel = path.strip_prefix(base).expect("under base");
                out.insert(rel.to_string_lossy().into_owned());
            }
        }
    }

    fn migrations_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations")
    }

    #[test]
    fn versions_start_at_one_and_increase() {
        // Strictly increasing, not consecutive: versions are handed out to parallel branches.
        assert_eq!(MIGRATIONS.first().map(|m| m.version), Some(1));
        for pair in MIGRATIONS.windows(2) {
            assert!(
                pair[0].version < pair[1].version,
                "migration {} ({}) must come after {} ({})",
                pair[1].name,
                pair[1].version,
                pair[0].name,
                pair[0].version
            );
        }
    }

    #[test]
    fn every_file_under_migrations_is_listed_once() {
        let dir = migrations_dir();
        let mut on_disk = BTreeSet::new();
        sql_files_under(&dir, &dir, &mut on_disk);
        let mut listed = BTreeSet::new();
        for m in MIGRATIONS {
            let file = format!("{:04}_{}.sql", m.version, m.name);
            assert!(listed.insert(file.clone()), "{file} listed twice");
        }
        for f in SCHEMA_FILES {
            let file = format!("schema/{}", f.path);
            assert!(listed.insert(file.clone()), "{file} listed twice");
        }
        let unlisted: Vec<_> = on_disk.difference(&listed).collect();
        let missing: Vec<_> = listed.difference(&on_disk).collect();
        assert!(
            unlisted.is_empty(),
            "files under migrations/ that src/db/migrate/files.rs does not list: {unlisted:?}"
        );
        assert!(missing.is_empty(), "listed but not on disk: {missing:?}");
    }

    #[test]
    fn schema_files_hold_only_re_creatable_statements() {
        for f in SCHEMA_FILES {
            // top-level statements start a line; function bodies are indented
            for line in f.sql.lines() {
                let upper = line.to_ascii_uppercase();
                if upper.starts_with("CREATE ") {
                    assert!(
                        upper.starts_with("CREATE OR REPLACE "),
                        "{}: `{line}` cannot be re-run; tables, indexes and types belong in a numbered migration",
                        f.path
                    );
                }
                for word in ["ALTER TABLE", "DROP ", "INSERT INTO", "CREATE INDEX"] {
                    assert!(
                        !upper.starts_with(word),
                        "{}: `{line}` belongs in a numbered migration",
                        f.path
                    );
                }
            }
        }
    }

    #[test]
    fn migrations_after_version_6_hold_no_function_bodies() {
        for m in MIGRATIONS.iter().filter(|m| m.version > 6) {
            let upper = m.sql.to_ascii_uppercase();
            for word in ["FUNCTION", "TRIGGER", "VIEW"] {
                let creates = upper
                    .lines()
                    .filter(|l| l.starts_with("CREATE") && l.contains(word))
                    .count();
                assert_eq!(
                    creates, 0,
                    "migration {} ({}) creates a {word}: it belongs in migrations/schema/",
                    m.version, m.name
                );
            }
        }
    }

    #[test]
    fn checksums_see_a_change() {
        assert_ne!(checksum("SELECT 1"), checksum("SELECT 2"));
        assert_eq!(checksum("SELECT 1"), checksum("SELECT 1"));
        assert_eq!(schema_checksum(), schema_checksum());
    }
}
