//! Reading a bench node's `/metrics`: a free port for its `--http`, and one scrape of the page
//! from which a bench picks the (sum, count) of histogram series, so it can say what part of a
//! phase a node's own step took.

/// A port free on 127.0.0.1 now (for a node's `--http`).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The text of one `GET /metrics` (empty when the node did not answer).
pub struct Scrape(String);

/// Scrapes the node serving `/metrics` at `port`.
pub async fn scrape(port: u16) -> Scrape {
    let text = tokio::task::spawn_blocking(move || {
        ureq::get(&format!("http://127.0.0.1:{port}/metrics"))
            .call()
            .ok()
            .and_then(|r| r.into_string().ok())
            .unwrap_or_default()
    })
    .await
    .unwrap_or_default();
    Scrape(text)
}

impl Scrape {
    /// (sum, count) of the histogram series `series` (name and labels, e.g.
    /// `pgtaskd_db_write_seconds{write="claim"}`); zeros when the scrape has no such series.
    pub fn histogram(&self, series: &str) -> (f64, f64) {
        let (name, labels) = match series.split_once('{') {
            Some((name, labels)) => (name, format!("{{{labels}")),
            None => (series, String::new()),
        };
        let pick = |key: String| {
            self.0
                .lines()
                .find_map(|l| l.strip_prefix(&key))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        (
            pick(format!("{name}_sum{labels}")),
            pick(format!("{name}_count{labels}")),
        )
    }
}
