//! Schema migrations: the numbered SQL files of `migrations/`, compiled into the binary and applied
//! in order, each in its own transaction, under a session advisory lock so that several nodes
//! starting at once apply each file exactly once.
//!
//! Owns the `long_task.schema_migrations` table. Refuses a database whose schema is newer than this
//! binary, or whose applied file differs from the one compiled in. Must never edit an applied file.

use tokio_postgres::Client;

use super::DbError;

/// One migration file.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every migration this binary knows, in order.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "init",
        sql: include_str!("../../migrations/0001_init.sql"),
    },
    Migration {
        version: 2,
        name: "queue",
        sql: include_str!("../../migrations/0002_queue.sql"),
    },
    Migration {
        version: 3,
        name: "cluster",
        sql: include_str!("../../migrations/0003_cluster.sql"),
    },
    Migration {
        version: 4,
        name: "observability",
        sql: include_str!("../../migrations/0004_observability.sql"),
    },
    Migration {
        version: 5,
        name: "write_path",
        sql: include_str!("../../migrations/0005_write_path.sql"),
    },
    Migration {
        version: 6,
        name: "consumer_path",
        sql: include_str!("../../migrations/0006_consumer_path.sql"),
    },
];

/// The schema version this binary expects.
pub fn latest_version() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// Advisory lock key (two-int form) serialising migrations across nodes.
const MIGRATION_LOCK: (i32, i32) = (0x7074_6b64, 0);

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("migration {version} ({name}) failed: {source}")]
    Failed {
        version: i32,
        name: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("the database schema is at version {found}, newer than this pgtaskd supports ({supported}); upgrade pgtaskd")]
    TooNew { found: i32, supported: i32 },
    #[error("the database schema is at version {found}, this pgtaskd needs {needed}; run `pgtaskd migrate`")]
    TooOld { found: i32, needed: i32 },
    #[error("migration {version} ({name}) applied to this database differs from the one in this binary (checksum {found:x} vs {expected:x})")]
    Changed {
        version: i32,
        name: &'static str,
        found: i64,
        expected: i64,
    },
}

/// What `migrate` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrateReport {
    pub from_version: i32,
    pub to_version: i32,
    pub applied: Vec<i32>,
}

/// FNV-1a of a migration's text: detects an applied file that was edited afterwards.
fn checksum(sql: &str) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in sql.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash as i64
}

/// Applies every pending migration. Safe to call from many nodes at once.
pub async fn migrate(client: &mut Client) -> Result<MigrateReport, MigrateError> {
    client
        .execute(
            "SELECT pg_advisory_lock($1, $2)",
            &[&MIGRATION_LOCK.0, &MIGRATION_LOCK.1],
        )
        .await
        .map_err(DbError::query("taking the migration lock"))?;
    let result = migrate_locked(client).await;
    let unlock = client
        .execute(
            "SELECT pg_advisory_unlock($1, $2)",
            &[&MIGRATION_LOCK.0, &MIGRATION_LOCK.1],
        )
        .await
        .map_err(DbError::query("releasing the migration lock"));
    let report = result?;
    unlock?;
    Ok(report)
}

async fn migrate_locked(client: &mut Client) -> Result<MigrateReport, MigrateError> {
    client
        .batch_execute(
            "CREATE SCHEMA IF NOT EXISTS long_task;
             CREATE TABLE IF NOT EXISTS long_task.schema_migrations (
                 version    integer PRIMARY KEY,
                 name       text NOT NULL,
                 checksum   bigint NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await
        .map_err(DbError::query("creating the migrations table"))?;
    let applied = applied_versions(client).await?;
    let from_version = applied.iter().map(|(v, _)| *v).max().unwrap_or(0);
    if from_version > latest_version() {
        return Err(MigrateError::TooNew {
            found: from_version,
            supported: latest_version(),
        });
    }
    verify_checksums(&applied)?;

    let mut newly = Vec::new();
    for migration in MIGRATIONS {
        if applied.iter().any(|(v, _)| *v == migration.version) {
            continue;
        }
        let failed = |source| MigrateError::Failed {
            version: migration.version,
            name: migration.name,
            source,
        };
        let tx = client.transaction().await.map_err(failed)?;
        tx.batch_execute(migration.sql).await.map_err(failed)?;
        tx.execute(
            "INSERT INTO long_task.schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
            &[
                &migration.version,
                &migration.name,
                &checksum(migration.sql),
            ],
        )
        .await
        .map_err(failed)?;
        tx.commit().await.map_err(failed)?;
        tracing::info!(
            version = migration.version,
            name = migration.name,
            "applied migration"
        );
        newly.push(migration.version);
    }
    Ok(MigrateReport {
        from_version,
        to_version: latest_version(),
        applied: newly,
    })
}

async fn applied_versions(client: &Client) -> Result<Vec<(i32, i64)>, MigrateError> {
    let rows = client
        .query(
            "SELECT version, checksum FROM long_task.schema_migrations ORDER BY version",
            &[],
        )
        .await
        .map_err(DbError::query("reading applied migrations"))?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

fn verify_checksums(applied: &[(i32, i64)]) -> Result<(), MigrateError> {
    for (version, found) in applied {
        if let Some(m) = MIGRATIONS.iter().find(|m| m.version == *version) {
            let expected = checksum(m.sql);
            if *found != expected {
                return Err(MigrateError::Changed {
                    version: *version,
                    name: m.name,
                    found: *found,
                    expected,
                });
            }
        }
    }
    Ok(())
}

/// Checks that the database schema is exactly the one this binary expects (for nodes that do not
/// migrate by themselves).
pub async fn check(client: &Client) -> Result<(), MigrateError> {
    let exists: bool = client
        .query_one(
            "SELECT to_regclass('long_task.schema_migrations') IS NOT NULL",
            &[],
        )
        .await
        .map_err(DbError::query("checking the schema"))?
        .get(0);
    let found = if exists {
        let applied = applied_versions(client).await?;
        verify_checksums(&applied)?;
        applied.iter().map(|(v, _)| *v).max().unwrap_or(0)
    } else {
        0
    };
    match found.cmp(&latest_version()) {
        std::cmp::Ordering::Greater => Err(MigrateError::TooNew {
            found,
            supported: latest_version(),
        }),
        std::cmp::Ordering::Less => Err(MigrateError::TooOld {
            found,
            needed: latest_version(),
        }),
        std::cmp::Ordering::Equal => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn checksum_sees_a_change() {
        assert_ne!(checksum("SELECT 1"), checksum("SELECT 2"));
        assert_eq!(checksum("SELECT 1"), checksum("SELECT 1"));
    }
}
