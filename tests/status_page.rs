//! The plain status page (`/status`) in a real headless browser (Debian's `chromium`): it loads,
//! shows a running task, and shows a node disappearing after it is killed; and the console's
//! token shell at `/` (the console itself: tests/console.rs). Skipped (with a message) only when no
//! chromium is installed and `PGTASKD_REQUIRE_BROWSER` is unset; CI sets it.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::http::{node_with_http, token_file};
use common::migrated_db;
use common::node::{queue, wait_node_ready, wait_state, NodeProcess};
use nix::sys::signal::Signal;

const LONG: Duration = Duration::from_secs(30);

fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .flat_map(|name| {
            std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
                .map(move |dir| dir.join(name))
                .collect::<Vec<_>>()
        })
        .find(|p| p.is_file())
}

/// The page's DOM after load, as the browser built it.
fn dump_dom(browser: &PathBuf, url: &str) -> String {
    dump_dom_after(browser, url, None)
}

/// The DOM once the page's scripts had `budget_ms` of (virtual) time to fetch and render.
fn dump_dom_after(browser: &PathBuf, url: &str, budget_ms: Option<u32>) -> String {
    let profile = tempfile::tempdir().expect("profile dir");
    let out = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(budget_ms.map(|ms| format!("--virtual-time-budget={ms}")))
        .arg("--dump-dom")
        .arg(url)
        .output()
        .expect("run chromium");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn browser_or_skip() -> Option<PathBuf> {
    let browser = chromium();
    if browser.is_none() {
        assert!(
            std::env::var_os("PGTASKD_REQUIRE_BROWSER").is_none(),
            "PGTASKD_REQUIRE_BROWSER is set but no chromium is installed"
        );
        eprintln!("skipping: no chromium installed (apt-get install chromium)");
    }
    browser
}

#[tokio::test]
async fn the_console_asks_for_a_token_when_the_api_has_tokens() {
    let Some(browser) = browser_or_skip() else {
        return;
    };
    let (db, client) = migrated_db().await;
    let dir = tempfile::tempdir().expect("dir");
    let token = "page-read-token-0123456789";
    let file = token_file(dir.path(), &format!("read {token}\n"));
    let (_node, base) = node_with_http(
        &db.url,
        13,
        &["--node-name", "token-node", "--http-token-file", &file],
    )
    .await;
    wait_node_ready(&client, 13).await;

    // without a token the page shows no data, only a field that asks for one
    let (b, page) = (browser.clone(), format!("{base}/"));
    let dom = tokio::task::spawn_blocking(move || dump_dom_after(&b, &page, Some(3000)))
        .await
        .expect("join");
    assert!(!dom.contains("token-node"), "data without a token: {dom}");
    assert!(dom.contains("id=\"token-form\""), "{dom}");

    // with one (a link carrying it in the fragment, which never reaches the server)
    let (b, page) = (browser.clone(), format!("{base}/#token={token}"));
    let dom = tokio::task::spawn_blocking(move || dump_dom_after(&b, &page, Some(5000)))
        .await
        .expect("join");
    assert!(
        dom.contains("token-node"),
        "the page did not load with the token: {dom}"
    );
    assert!(
        !dom.contains(token),
        "the token stays out of the page: {dom}"
    );

    // a wrong token is refused and said so
    let (b, page) = (browser, format!("{base}/#token=wrong-token-0123456789"));
    let dom = tokio::task::spawn_blocking(move || dump_dom_after(&b, &page, Some(3000)))
        .await
        .expect("join");
    assert!(dom.contains("the token was refused"), "{dom}");
}

#[tokio::test]
async fn status_page_in_a_headless_browser() {
    let Some(browser) = browser_or_skip() else {
        return;
    };
    let (db, client) = migrated_db().await;
    let (_watcher, base) = node_with_http(&db.url, 11, &["--node-name", "watcher-node"]).await;
    let mut victim = NodeProcess::start(
        &db.url,
        12,
        &["--node-name", "victim-node", "--max-tasks", "0"],
    );
    wait_node_ready(&client, 11).await;
    wait_node_ready(&client, 12).await;
    let running = queue(&client, &["sleep", "60"]).await;
    wait_state(&client, running, "AE", LONG).await;

    let page = format!("{base}/status");
    let b = browser.clone();
    let p = page.clone();
    let dom = tokio::task::spawn_blocking(move || dump_dom(&b, &p))
        .await
        .expect("join");
    assert!(
        dom.contains("<h1>pgtaskd cluster</h1>"),
        "page did not load: {dom}"
    );
    assert!(
        dom.contains("http-equiv=\"refresh\""),
        "the page refreshes itself"
    );
    assert!(
        !dom.contains("http://") || !dom.contains("<script src"),
        "self-contained"
    );
    assert!(
        dom.contains(&format!("data-task-id=\"{running}\"")) && dom.contains("sleep 60"),
        "running task missing: {dom}"
    );
    assert!(
        dom.contains("watcher-node") && dom.contains("victim-node"),
        "both nodes shown: {dom}"
    );

    victim.signal(Signal::SIGKILL);
    victim.wait_exit(LONG);
    // The killed node's session ends, its liveness lock is free: it leaves the page.
    let deadline = std::time::Instant::now() + LONG;
    let last = loop {
        let (b, p) = (browser.clone(), page.clone());
        let dom = tokio::task::spawn_blocking(move || dump_dom(&b, &p))
            .await
            .expect("join");
        if dom.contains("watcher-node") && !dom.contains("victim-node") {
            break dom;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the killed node is still shown: {dom}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert!(
        last.contains("1 stopped or dead node(s) not shown"),
        "{last}"
    );

    client
        .execute(
            "UPDATE long_task.task SET state_id = 'AC' WHERE id = $1",
            &[&running],
        )
        .await
        .expect("cancel");
    wait_state(&client, running, "CC", LONG).await;
}
