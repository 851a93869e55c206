//! `pgtaskd dev` serves HTTP by default: the banner prints the URL, a taken port moves it to the
//! next free one, `--http off` serves nothing. Runs the real binary on a test database
//! (`DATABASE_URL`, so no embedded cluster is made).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::http::{free_port, request};
use common::migrated_db;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// A running `pgtaskd dev`; stopped (SIGTERM, then SIGKILL) on drop.
struct Dev {
    child: Child,
    banner: Vec<String>,
}

impl Dev {
    /// Starts `pgtaskd dev ARGS` on `url` and reads its banner (up to "Press Ctrl-C").
    fn start(url: &str, args: &[&str]) -> Dev {
        let mut child = Command::new(env!("CARGO_BIN_EXE_pgtaskd"))
            .arg("dev")
            .args(args)
            .env("DATABASE_URL", url)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn pgtaskd dev");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut banner = Vec::new();
        loop {
            match rx.recv_timeout(Duration::from_secs(60)) {
                Ok(line) => {
                    let done = line.starts_with("Press Ctrl-C");
                    banner.push(line);
                    if done {
                        break;
                    }
                }
                Err(e) => panic!("no banner from pgtaskd dev ({e}): {banner:?}"),
            }
        }
        Dev { child, banner }
    }

    /// The console URL the banner printed, if any.
    fn console(&self) -> Option<String> {
        self.banner.iter().find_map(|l| {
            l.trim()
                .strip_prefix("console:")
                .map(|u| u.trim().to_owned())
        })
    }

    /// The command lines of the node processes `dev` started.
    fn node_command_lines(&self) -> Vec<String> {
        let me = self.child.id().to_string();
        let mut lines = Vec::new();
        for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
            let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            // pid (comm) state ppid ...: the fields after the last ')'
            let ppid = stat
                .rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().nth(1));
            if ppid == Some(me.as_str()) {
                let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
                lines.push(String::from_utf8_lossy(&cmdline).replace('\0', " "));
            }
        }
        lines
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        for _ in 0..300 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn port_of(url: &str) -> u16 {
    url.trim_end_matches('/')
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {url}"))
}

#[tokio::test]
async fn dev_serves_http_and_moves_to_the_next_free_port() {
    let (first_db, _c1) = migrated_db().await;
    let (second_db, _c2) = migrated_db().await;
    let port = free_port();
    let asked = format!("127.0.0.1:{port}");

    let first = Dev::start(&first_db.url, &["--http", &asked]);
    let url = first
        .console()
        .unwrap_or_else(|| panic!("{:?}", first.banner));
    assert_eq!(url, format!("http://{asked}/"));
    // The banner comes once node 1 answers.
    assert_eq!(request("GET", &format!("{url}healthz"), None).0, 200);

    // The same address again: taken by the first, so the second moves up.
    let second = Dev::start(&second_db.url, &["--http", &asked]);
    let moved = second
        .console()
        .unwrap_or_else(|| panic!("{:?}", second.banner));
    let moved_port = port_of(&moved);
    assert!(
        moved_port > port && moved_port <= port + 20,
        "{moved} after {asked}"
    );
    assert_eq!(request("GET", &format!("{moved}healthz"), None).0, 200);
    // Each serves its own database: the second's node is not the first's.
    let (_, cluster) = request("GET", &format!("{moved}cluster"), None);
    assert!(cluster.contains("\"nodes\""), "{cluster}");
}

#[tokio::test]
async fn dev_http_off_serves_nothing() {
    let (db, client) = migrated_db().await;
    let dev = Dev::start(&db.url, &["--http", "off"]);
    assert_eq!(dev.console(), None, "{:?}", dev.banner);
    common::node::wait_node_ready(&client, 1).await;
    let nodes = dev.node_command_lines();
    assert_eq!(nodes.len(), 1, "{nodes:?}");
    assert!(
        nodes[0].contains(" node ") && !nodes[0].contains("--http"),
        "{nodes:?}"
    );
}

#[test]
fn dev_refuses_a_public_address() {
    let out = Command::new(env!("CARGO_BIN_EXE_pgtaskd"))
        .args(["dev", "--http", "0.0.0.0:8080"])
        .env("DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")
        .output()
        .expect("run pgtaskd");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a loopback address"), "{err}");
}
