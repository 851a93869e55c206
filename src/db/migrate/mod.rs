//! Schema migrations: the SQL files of `migrations/` (listed in `files`), compiled into the binary.
//! `migrate` applies the pending numbered migrations and then, when they changed, the
//! re-creatable schema files, all in one transaction under a session advisory lock, so that
//! several nodes starting at once apply each file exactly once and nobody sees half a schema.
//!
//! Owns the bookkeeping tables `long_task.schema_migrations` (one row per numbered migration,
//! with its checksum) and `long_task.schema_files` (one row per application of the schema files:
//! their combined checksum, the schema version and the pgtaskd version that applied them).
//! Refuses a database whose schema is newer than this binary (a newer migration, or schema files
//! applied after this binary's), or whose applied migration differs from the one compiled in.
//! Must never edit an applied migration, and never replace newer schema files with older ones.

mod files;

use tokio_postgres::{Client, GenericClient};

pub use files::{
    checksum, latest_version, schema_checksum, Migration, SchemaFile, MIGRATIONS, SCHEMA_FILES,
};

use super::DbError;

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
    #[error("schema file {path} failed: {source}")]
    SchemaFileFailed {
        path: &'static str,
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
    #[error("the database's SQL functions are newer than this pgtaskd's: pgtaskd {applied_by} replaced them at {applied_at} (checksum {found:x}) after this binary's (checksum {ours:x}) were applied; upgrade pgtaskd")]
    SchemaFilesNewer {
        found: i64,
        ours: i64,
        applied_by: String,
        applied_at: String,
    },
    #[error("schema file {0} is not in this binary")]
    SchemaFileMissing(&'static str),
    #[error("the database's SQL functions (checksum {found}) are older than this pgtaskd's ({ours:x}); run `pgtaskd migrate`")]
    SchemaFilesOlder { found: String, ours: i64 },
}

/// What `migrate` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrateReport {
    pub from_version: i32,
    pub to_version: i32,
    /// The numbered migrations applied now.
    pub applied: Vec<i32>,
    /// Whether the schema files were (re)applied now.
    pub schema_files_applied: bool,
    /// pgtaskd's database roles that do not exist because the migrating role may not create
    /// them (docs/security.md): their grants were skipped; create them and migrate again.
    pub missing_roles: Vec<String>,
}

/// The group roles `migrations/schema/access/privileges.sql` creates and grants to.
pub const ROLES: [&str; 4] = [
    "pgtaskd_reader",
    "pgtaskd_submitter",
    "pgtaskd_operator",
    "pgtaskd_node",
];

/// The SQL a superuser runs to create the roles the migrating role could not, each a member of
/// the one it includes (privileges.sql's memberships).
pub fn create_roles_sql(missing: &[String]) -> String {
    ROLES
        .iter()
        .filter(|r| missing.iter().any(|m| m == *r))
        .map(|r| match *r {
            "pgtaskd_submitter" => format!("CREATE ROLE {r} NOLOGIN IN ROLE pgtaskd_reader;"),
            "pgtaskd_operator" | "pgtaskd_node" => {
                format!("CREATE ROLE {r} NOLOGIN IN ROLE pgtaskd_submitter;")
            }
            _ => format!("CREATE ROLE {r} NOLOGIN;"),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The schema files a database carries: the latest application, and whether this binary's
/// were ever applied to it.
#[derive(Debug, Clone)]
struct SchemaFilesState {
    latest: Option<AppliedFiles>,
    ours_applied_before: bool,
}

#[derive(Debug, Clone)]
struct AppliedFiles {
    checksum: i64,
    pgtaskd_version: String,
    applied_at: String,
}

impl SchemaFilesState {
    /// Ok when the database carries this binary's schema files; `SchemaFilesNewer` when they were
    /// replaced by others after ours; `SchemaFilesOlder` otherwise (never applied, or older).
    fn compare(&self) -> Result<(), MigrateError> {
        let ours = schema_checksum();
        match &self.latest {
            Some(latest) if latest.checksum == ours => Ok(()),
            Some(latest) if self.ours_applied_before => Err(MigrateError::SchemaFilesNewer {
                found: latest.checksum,
                ours,
                applied_by: latest.pgtaskd_version.clone(),
                applied_at: latest.applied_at.clone(),
            }),
            Some(latest) => Err(MigrateError::SchemaFilesOlder {
                found: format!("{:x}", latest.checksum),
                ours,
            }),
            None => Err(MigrateError::SchemaFilesOlder {
                found: "none: never applied".into(),
                ours,
            }),
        }
    }
}

/// Applies every pending migration and, when they differ from the database's, the schema files.
/// Safe to call from many nodes at once.
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

/// Applies the numbered migrations up to `version` only, without the schema files: a database as
/// a release that ended at `version` left it (for upgrade tests). Never use it on a database
/// that is newer.
pub async fn migrate_numbered_up_to(
    client: &mut Client,
    version: i32,
) -> Result<Vec<i32>, MigrateError> {
    let tx = client
        .transaction()
        .await
        .map_err(DbError::query("starting the migration"))?;
    ensure_bookkeeping(&tx).await?;
    let applied = applied_versions(&tx).await?;
    let mut newly = Vec::new();
    for migration in MIGRATIONS.iter().filter(|m| m.version <= version) {
        if !applied.iter().any(|(v, _)| *v == migration.version) {
            apply_migration(&tx, migration).await?;
            newly.push(migration.version);
        }
    }
    tx.commit()
        .await
        .map_err(DbError::query("committing the migration"))?;
    Ok(newly)
}

async fn migrate_locked(client: &mut Client) -> Result<MigrateReport, MigrateError> {
    let tx = client
        .transaction()
        .await
        .map_err(DbError::query("starting the migration"))?;
    ensure_bookkeeping(&tx).await?;
    let applied = applied_versions(&tx).await?;
    let from_version = applied.iter().map(|(v, _)| *v).max().unwrap_or(0);
    if from_version > latest_version() {
        return Err(MigrateError::TooNew {
            found: from_version,
            supported: latest_version(),
        });
    }
    verify_checksums(&applied)?;
    let files = schema_files_state(&tx).await?;
    if let Err(newer @ MigrateError::SchemaFilesNewer { .. }) = files.compare() {
        return Err(newer);
    }

    let mut newly = Vec::new();
    for migration in MIGRATIONS {
        if !applied.iter().any(|(v, _)| *v == migration.version) {
            apply_migration(&tx, migration).await?;
            newly.push(migration.version);
        }
    }
    // A migration may drop what a schema file creates: the files go again after any migration.
    let schema_files_applied = !newly.is_empty() || files.compare().is_err();
    if schema_files_applied {
        apply_schema_files(&tx).await?;
    } else if grants_pending(&tx).await? {
        // roles a DBA created after an earlier migrate could not: give them their grants now
        apply_privileges(&tx).await?;
    }
    let missing_roles = missing_roles(&tx).await?;
    tx.commit()
        .await
        .map_err(DbError::query("committing the migration"))?;
    for version in &newly {
        tracing::info!(version, "applied migration");
    }
    if schema_files_applied {
        tracing::info!(
            files = SCHEMA_FILES.len(),
            checksum = format!("{:x}", schema_checksum()),
            "applied the schema files"
        );
    }
    Ok(MigrateReport {
        from_version,
        to_version: latest_version(),
        applied: newly,
        schema_files_applied,
        missing_roles,
    })
}

/// The pgtaskd roles that do not exist on this server.
async fn missing_roles(client: &impl GenericClient) -> Result<Vec<String>, MigrateError> {
    let rows = client
        .query(
            "SELECT r FROM unnest($1::text[]) r WHERE NOT EXISTS (SELECT 1 FROM pg_roles a WHERE a.rolname = r)",
            &[&&ROLES[..]],
        )
        .await
        .map_err(DbError::query("looking up the pgtaskd roles"))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Every pgtaskd role exists but one lacks its grants in this database (they were created
/// after the schema files were applied).
async fn grants_pending(client: &impl GenericClient) -> Result<bool, MigrateError> {
    let row = client
        .query_one(
            "SELECT bool_and(EXISTS (SELECT 1 FROM pg_roles a WHERE a.rolname = r))
                    AND NOT bool_and(CASE WHEN EXISTS (SELECT 1 FROM pg_roles a WHERE a.rolname = r)
                                          THEN has_schema_privilege(r, 'long_task', 'USAGE') END)
               FROM unnest($1::text[]) r",
            &[&&ROLES[..]],
        )
        .await
        .map_err(DbError::query("checking the grants of the pgtaskd roles"))?;
    Ok(row.get::<_, Option<bool>>(0).unwrap_or(false))
}

async fn apply_privileges(client: &impl GenericClient) -> Result<(), MigrateError> {
    let file = SCHEMA_FILES
        .iter()
        .find(|f| f.path == PRIVILEGES_FILE)
        .ok_or(MigrateError::SchemaFileMissing(PRIVILEGES_FILE))?;
    apply_schema_file(client, file).await?;
    tracing::info!("granted the pgtaskd roles their privileges");
    Ok(())
}

/// The schema file of roles and grants (applied last).
const PRIVILEGES_FILE: &str = "access/privileges.sql";

async fn ensure_bookkeeping(client: &impl GenericClient) -> Result<(), MigrateError> {
    client
        .batch_execute(
            "CREATE SCHEMA IF NOT EXISTS long_task;
             CREATE TABLE IF NOT EXISTS long_task.schema_migrations (
                 version    integer PRIMARY KEY,
                 name       text NOT NULL,
                 checksum   bigint NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now());
             CREATE TABLE IF NOT EXISTS long_task.schema_files (
                 id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                 checksum          bigint NOT NULL,
                 migration_version integer NOT NULL,
                 pgtaskd_version   text NOT NULL,
                 applied_at        timestamptz NOT NULL DEFAULT now())",
        )
        .await
        .map_err(DbError::query("creating the migration bookkeeping tables"))?;
    Ok(())
}

async fn apply_migration(
    client: &impl GenericClient,
    migration: &'static Migration,
) -> Result<(), MigrateError> {
    let failed = |source| MigrateError::Failed {
        version: migration.version,
        name: migration.name,
        source,
    };
    client.batch_execute(migration.sql).await.map_err(failed)?;
    client
        .execute(
            "INSERT INTO long_task.schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
            &[
                &migration.version,
                &migration.name,
                &checksum(migration.sql),
            ],
        )
        .await
        .map_err(failed)?;
    Ok(())
}

async fn apply_schema_file(
    client: &impl GenericClient,
    file: &'static SchemaFile,
) -> Result<(), MigrateError> {
    client
        .batch_execute(file.sql)
        .await
        .map_err(|source| MigrateError::SchemaFileFailed {
            path: file.path,
            source,
        })
}

async fn apply_schema_files(client: &impl GenericClient) -> Result<(), MigrateError> {
    for file in SCHEMA_FILES {
        apply_schema_file(client, file).await?;
    }
    client
        .execute(
            "INSERT INTO long_task.schema_files (checksum, migration_version, pgtaskd_version)
             VALUES ($1, $2, $3)",
            &[
                &schema_checksum(),
                &latest_version(),
                &env!("CARGO_PKG_VERSION"),
            ],
        )
        .await
        .map_err(DbError::query("recording the schema files"))?;
    Ok(())
}

async fn applied_versions(client: &impl GenericClient) -> Result<Vec<(i32, i64)>, MigrateError> {
    let rows = client
        .query(
            "SELECT version, checksum FROM long_task.schema_migrations ORDER BY version",
            &[],
        )
        .await
        .map_err(DbError::query("reading applied migrations"))?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// What `long_task.schema_files` says (a database of version 6 or older has no such table).
async fn schema_files_state(client: &impl GenericClient) -> Result<SchemaFilesState, MigrateError> {
    let row = client
        .query_one(
            "SELECT to_regclass('long_task.schema_files') IS NOT NULL",
            &[],
        )
        .await
        .map_err(DbError::query("reading the schema files' state"))?;
    if !row.get::<_, bool>(0) {
        return Ok(SchemaFilesState {
            latest: None,
            ours_applied_before: false,
        });
    }
    let rows = client
        .query(
            "SELECT checksum, pgtaskd_version, applied_at::text,
                    EXISTS (SELECT 1 FROM long_task.schema_files o WHERE o.checksum = $1)
               FROM long_task.schema_files ORDER BY id DESC LIMIT 1",
            &[&schema_checksum()],
        )
        .await
        .map_err(DbError::query("reading the schema files' state"))?;
    Ok(match rows.first() {
        None => SchemaFilesState {
            latest: None,
            ours_applied_before: false,
        },
        Some(r) => SchemaFilesState {
            latest: Some(AppliedFiles {
                checksum: r.get(0),
                pgtaskd_version: r.get(1),
                applied_at: r.get(2),
            }),
            ours_applied_before: r.get(3),
        },
    })
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

/// Checks that the database schema is exactly the one this binary expects — its numbered
/// migrations and its schema files — for nodes that do not migrate by themselves.
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
        std::cmp::Ordering::Equal => schema_files_state(client).await?.compare(),
    }
}
