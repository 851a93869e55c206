//! What the pgtaskd schema of a database is, as sorted lines of text (a catalog query, so it works
//! on a `DATABASE_URL` server without `pg_dump`): tables and their columns, constraints, indexes,
//! storage options, types, sequences, functions, triggers and views of `long_task`. Two
//! databases have the same schema when their lines are equal.
#![allow(dead_code)]

use tokio_postgres::Client;

const CATALOG_SQL: &str = "
WITH ns AS (SELECT oid FROM pg_namespace WHERE nspname = 'long_task')
SELECT 'relation ' || c.relname || ' ' || c.relkind::text || ' ' || coalesce(array_to_string(c.reloptions, ','), '')
  FROM pg_class c WHERE c.relnamespace = (SELECT oid FROM ns)
UNION ALL
SELECT 'column ' || c.relname || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
       || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
       || coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), '')
       || CASE WHEN a.attidentity <> '' THEN ' identity ' || a.attidentity::text ELSE '' END
  FROM pg_attribute a
  JOIN pg_class c ON c.oid = a.attrelid
  LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
 WHERE c.relnamespace = (SELECT oid FROM ns) AND a.attnum > 0 AND NOT a.attisdropped
UNION ALL
SELECT 'constraint ' || c.relname || '.' || k.conname || ' ' || pg_get_constraintdef(k.oid)
  FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
 WHERE c.relnamespace = (SELECT oid FROM ns)
UNION ALL
SELECT 'index ' || pg_get_indexdef(i.indexrelid)
  FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
 WHERE c.relnamespace = (SELECT oid FROM ns)
UNION ALL
SELECT 'function ' || p.oid::regprocedure || ' ' || md5(pg_get_functiondef(p.oid))
  FROM pg_proc p WHERE p.pronamespace = (SELECT oid FROM ns)
UNION ALL
SELECT 'trigger ' || pg_get_triggerdef(t.oid)
  FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
 WHERE c.relnamespace = (SELECT oid FROM ns) AND NOT t.tgisinternal
UNION ALL
SELECT 'view ' || c.relname || ' ' || md5(pg_get_viewdef(c.oid))
  FROM pg_class c WHERE c.relnamespace = (SELECT oid FROM ns) AND c.relkind IN ('v', 'm')
UNION ALL
SELECT 'type ' || t.typname || ' ' || t.typtype::text
  FROM pg_type t WHERE t.typnamespace = (SELECT oid FROM ns) AND t.typtype IN ('c', 'e', 'd')
";

/// The schema of `long_task`, one sorted line per object.
pub async fn catalog(client: &Client) -> Vec<String> {
    let mut lines: Vec<String> = client
        .query(CATALOG_SQL, &[])
        .await
        .expect("catalog query")
        .iter()
        .map(|r| r.get(0))
        .collect();
    lines.sort();
    lines
}

/// Lines in one list and not the other, for an assertion message.
pub fn difference(a: &[String], b: &[String]) -> String {
    let only_a: Vec<&String> = a.iter().filter(|l| !b.contains(l)).collect();
    let only_b: Vec<&String> = b.iter().filter(|l| !a.contains(l)).collect();
    format!("only in the first: {only_a:#?}\nonly in the second: {only_b:#?}")
}
