//! Reading a bench node's `/metrics`: a free port for its `--http`, and the (sum, count) of one
//! histogram series, so a bench can say what part of a phase a node's own step took.

/// A port free on 127.0.0.1 now (for a node's `--http`).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// (sum, count) of the histogram series `series` (name and labels, e.g.
/// `pgtaskd_db_write_seconds{write="claim"}`) on the node serving `/metrics` at `port`; zeros
/// when the node does not answer or has no such series.
pub async fn histogram(port: u16, series: &str) -> (f64, f64) {
    let (name, labels) = match series.split_once('{') {
        Some((name, labels)) => (name, format!("{{{labels}")),
        None => (series, String::new()),
    };
    let sum_key = format!("{name}_sum{labels}");
    let count_key = format!("{name}_count{labels}");
    tokio::task::spawn_blocking(move || {
        let text = ureq::get(&format!("http://127.0.0.1:{port}/metrics"))
            .call()
            .ok()
            .and_then(|r| r.into_string().ok())
            .unwrap_or_default();
        let pick = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        (pick(&sum_key), pick(&count_key))
    })
    .await
    .unwrap_or((0.0, 0.0))
}
