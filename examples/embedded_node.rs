//! An embedded node: this program runs `email.send` tasks in-process, then stops on Enter.
//!
//! ```text
//! DATABASE_URL=postgresql://app@localhost/app cargo run --example embedded_node
//! psql "$DATABASE_URL" -c "SELECT long_task.publish('email.send', '{\"to\": \"a@example.com\"}')"
//! ```

use std::time::Duration;

use pgtaskd::config::NodeConfig;
use pgtaskd::embedded::Node;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_env_filter("info").init();
    let config = NodeConfig {
        database_url: Some(std::env::var("DATABASE_URL")?),
        max_tasks: 16,
        ..NodeConfig::default()
    };
    let mut node = Node::new(config);
    node.handler("email.send", |task| async move {
        let to = task.params["to"].as_str().unwrap_or("nobody").to_owned();
        tokio::select! {
            // cancelled (UPDATE ... SET state_id = 'AC'), timed out or shutting down
            _ = task.cancel.cancelled() => Err(format!("not sent to {to}: cancelled")),
            _ = tokio::time::sleep(Duration::from_millis(50)) => {
                Ok(serde_json::json!({ "sent_to": to, "attempt": task.attempt }))
            }
        }
    });
    let running = node.start()?;
    println!("node {} running; press Enter to stop", running.worker_id());
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    running.stop()?;
    Ok(())
}
