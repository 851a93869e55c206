//! The SQL layout (migrations/schema/): every function, trigger and view of a fresh database is
//! defined in exactly one schema file, and a database upgraded from version 6 (as released) ends
//! with exactly the schema of a fresh one.

mod common;

use std::collections::BTreeMap;

use common::schema::{catalog, difference};
use common::TestDb;
use pgtaskd::db::migrate::{self, SCHEMA_FILES};

/// `CREATE OR REPLACE <kind> long_task.<name>` statements of the schema files: name → files.
fn defined(kind: &str) -> BTreeMap<String, Vec<&'static str>> {
    let prefix = format!("CREATE OR REPLACE {kind} ");
    let mut map: BTreeMap<String, Vec<&'static str>> = BTreeMap::new();
    for file in SCHEMA_FILES {
        for line in file.sql.lines() {
            let Some(rest) = line.strip_prefix(&prefix) else {
                continue;
            };
            let name: String = rest
                .trim_start_matches("long_task.")
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            let files = map.entry(name).or_default();
            if !files.contains(&file.path) {
                files.push(file.path);
            }
        }
    }
    map
}

async fn names(client: &tokio_postgres::Client, sql: &str) -> Vec<String> {
    client
        .query(sql, &[])
        .await
        .expect("catalog")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test]
async fn every_function_trigger_and_view_is_defined_in_exactly_one_schema_file() {
    let (_db, client) = common::migrated_db().await;
    let checks = [
        (
            "FUNCTION",
            "SELECT DISTINCT p.proname::text FROM pg_proc p
               JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'long_task'",
        ),
        (
            "TRIGGER",
            "SELECT t.tgname::text FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
               JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = 'long_task' AND NOT t.tgisinternal",
        ),
        (
            "VIEW",
            "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = 'long_task' AND c.relkind = 'v'",
        ),
    ];
    for (kind, sql) in checks {
        let in_db = names(&client, sql).await;
        let in_files = defined(kind);
        for name in &in_db {
            match in_files.get(name).map(Vec::as_slice) {
                Some([_one]) => {}
                Some(many) => panic!("{kind} long_task.{name} is defined in several files: {many:?}"),
                None => panic!(
                    "{kind} long_task.{name} exists in a fresh database but no schema file defines it \
                     (a numbered migration must DROP it, or a schema file define it)"
                ),
            }
        }
        for name in in_files.keys() {
            assert!(
                in_db.contains(name),
                "a schema file defines {kind} long_task.{name}, but a fresh database lacks it"
            );
        }
        println!("{kind}: {} defined, each in one file", in_db.len());
    }
}

#[tokio::test]
async fn a_database_upgraded_from_version_6_has_the_schema_of_a_fresh_one() {
    let (_fresh_db, fresh) = common::migrated_db().await;

    let old_db = TestDb::new().await;
    let mut old = old_db.client().await;
    migrate::migrate_numbered_up_to(&mut old, 6)
        .await
        .expect("migrations 1-6 as released");
    // some history in every state, as a real version-6 database has
    old.batch_execute(
        "INSERT INTO long_task.task (state_id, command) VALUES ('DR', '{true}'), ('AW', '{true}');
         INSERT INTO long_task.task (state_id, topic) VALUES ('AW', 't');
         SELECT long_task.consume(1);
         UPDATE long_task.task SET state_id = 'AC' WHERE state_id = 'AW' AND command IS NOT NULL;",
    )
    .await
    .expect("history");
    let report = migrate::migrate(&mut old).await.expect("upgrade");
    assert!(report.schema_files_applied);

    let (a, b) = (catalog(&fresh).await, catalog(&old).await);
    assert!(
        a == b,
        "a fresh database and one upgraded from version 6 differ:\n{}",
        difference(&a, &b)
    );
}
