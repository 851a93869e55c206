//! The client API: publish a task inside a transaction, a three-stage pipeline, and wait for it.
//!
//! ```text
//! DATABASE_URL=postgresql://app@localhost/app cargo run --example client
//! ```
//! (with a node handling `stage`, e.g. `cargo run --example embedded_node` adapted, or a SQL
//! consumer: `SELECT * FROM long_task.consume_topic('stage', 10)` then `long_task.ack(id)`).

use std::time::Duration;

use pgtaskd::client::{Client, NewTask};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("DATABASE_URL")?;
    let client = Client::connect(&url).await?;

    // Enqueue inside the caller's transaction: the task exists only if the transaction commits.
    let (mut pg, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    let tx = pg.transaction().await?;
    let id = client
        .submit_in(
            &tx,
            &NewTask::topic("stage").params(serde_json::json!({"step": "extract"})),
        )
        .await?;
    tx.commit().await?;

    // Two more stages, each runnable when the previous one succeeded, retried up to 3 times.
    let transform = client
        .submit(
            &NewTask::topic("stage")
                .params(serde_json::json!({"step": "transform"}))
                .depends_on([id])
                .max_attempts(3),
        )
        .await?;
    let load = client
        .submit(
            &NewTask::topic("stage")
                .params(serde_json::json!({"step": "load"}))
                .depends_on([transform])
                .max_attempts(3),
        )
        .await?;
    let done = client.wait(load, Duration::from_secs(60)).await?;
    println!(
        "pipeline ended {:?}: {:?} {:?}",
        done.state, done.result, done.error
    );
    Ok(())
}
