//! The pool's prepared statements (`db::pool`): a statement is prepared once per connection and
//! reused, and one whose result type a schema change altered is prepared again instead of
//! failing every call until the node restarts.

mod common;

use common::TestDb;
use tokio_postgres::types::Type;

const CALL: &str = "SELECT * FROM public.shape($1)";

/// How many statements calling `public.shape` this session holds prepared (the pattern is split
/// so that this statement's own text does not match it).
const PREPARED: &str = "SELECT count(*) FROM pg_prepared_statements
                         WHERE statement LIKE '%public.' || 'shape(%'";

#[tokio::test]
async fn a_statement_is_prepared_once_and_again_after_its_result_type_changed() {
    let db = TestDb::new().await;
    let admin = db.client().await;
    admin
        .batch_execute(
            "CREATE FUNCTION public.shape(x int) RETURNS TABLE (a int) LANGUAGE sql AS 'SELECT x'",
        )
        .await
        .expect("create function");
    let pool = pgtaskd::db::create_pool(&db.url, "test", 1).expect("pool");
    let conn = pool.get().await.expect("connection");

    for x in 1..=3 {
        let rows = conn
            .query_prepared(CALL, &[(&x, Type::INT4)])
            .await
            .expect("call");
        assert_eq!(rows[0].get::<_, i32>(0), x);
    }
    let prepared: i64 = conn.query_one(PREPARED, &[]).await.expect("count").get(0);
    assert_eq!(prepared, 1, "three calls, one prepared statement");

    // a schema upgrade replaces the function with one returning another row type
    admin
        .batch_execute(
            "DROP FUNCTION public.shape(int);
             CREATE FUNCTION public.shape(x int) RETURNS TABLE (a int, b text) LANGUAGE sql AS 'SELECT x, ''new'''",
        )
        .await
        .expect("replace function");
    let rows = conn
        .query_prepared(CALL, &[(&7, Type::INT4)])
        .await
        .expect("the call after the upgrade is prepared again, not refused");
    assert_eq!(rows[0].get::<_, i32>(0), 7);
    assert_eq!(rows[0].get::<_, &str>(1), "new");
}
