//! TLS to PostgreSQL (docs/security.md): a private cluster started with `ssl = on` and a
//! certificate made here by `openssl` (a test CA, a server certificate for `localhost`, and a
//! second CA that signed nothing); libpq's `sslmode` semantics checked connection by connection,
//! then a node running a task with every one of its sessions encrypted.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::node::{queue, wait_node_ready, wait_state, NodeProcess};
use common::PrivateCluster;

fn openssl(args: &[&str], dir: &Path) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A directory the server's OS user can read, with `ca.crt`, `server.crt`/`server.key` (signed by
/// the CA, for `DNS:localhost` only) and `other-ca.crt`; made once per test process (the tests
/// run in parallel).
fn certificates() -> PathBuf {
    static CERTS: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    CERTS.get_or_init(make_certificates).clone()
}

fn make_certificates() -> PathBuf {
    // under the target dir (kept for the process: both tests use it); a later run uses a new one
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("pgtaskd-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("cert dir");
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    for ca in ["ca", "other-ca"] {
        let mut args = vec!["req", "-x509"];
        args.extend(ec);
        let (key, crt, subject) = (
            format!("{ca}.key"),
            format!("{ca}.crt"),
            format!("/CN=pgtaskd test {ca}"),
        );
        args.extend([
            "-keyout", &key, "-out", &crt, "-days", "2", "-subj", &subject,
        ]);
        openssl(&args, &dir);
    }
    let mut args = vec!["req"];
    args.extend(ec);
    args.extend([
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    openssl(&args, &dir);
    std::fs::write(dir.join("san.ext"), "subjectAltName=DNS:localhost\n").expect("ext");
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ],
        &dir,
    );
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    for file in ["server.key", "server.crt"] {
        let path = dir.join(file);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        if nix::unistd::Uid::effective().is_root() {
            // the server runs as `postgres` and wants its key to itself
            let postgres = nix::unistd::User::from_name("postgres")
                .expect("users")
                .expect("a postgres user");
            nix::unistd::chown(&path, Some(postgres.uid), Some(postgres.gid)).expect("chown");
        }
    }
    dir
}

async fn ssl_on(cluster: &PrivateCluster, certs: &Path) {
    let admin = common::connect(&cluster.cluster.url("postgres")).await;
    // one statement at a time: ALTER SYSTEM refuses a multi-statement (implicit) transaction
    for statement in [
        format!(
            "ALTER SYSTEM SET ssl_cert_file = '{}'",
            certs.join("server.crt").display()
        ),
        format!(
            "ALTER SYSTEM SET ssl_key_file = '{}'",
            certs.join("server.key").display()
        ),
        "ALTER SYSTEM SET ssl = on".to_owned(),
        "SELECT pg_reload_conf()".to_owned(),
    ] {
        admin.batch_execute(&statement).await.expect("ssl on");
    }
    // the reload is asynchronous: wait until a new session sees it
    for _ in 0..50 {
        let c = common::connect(&cluster.cluster.url("postgres")).await;
        let on: String = c.query_one("SHOW ssl", &[]).await.expect("show").get(0);
        if on == "on" {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the server did not turn ssl on");
}

/// Connects through the node's own connection code; true when the session is encrypted.
async fn encrypted(url: &str) -> Result<bool, String> {
    let client = pgtaskd::db::connect_dedicated(url, "tls test")
        .await
        .map_err(|e| format!("{e}: {:?}", std::error::Error::source(&e)))?;
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(row.get(0))
}

#[tokio::test]
async fn sslmodes_behave_as_libpq_and_a_node_runs_over_tls() {
    let certs = certificates();
    let cluster = PrivateCluster::new();
    ssl_on(&cluster, &certs).await;
    let url = cluster.database("tls_test").await;
    let port = url
        .rsplit(':')
        .next()
        .and_then(|tail| tail.split('/').next())
        .expect("port")
        .to_owned();
    let ca = certs.join("ca.crt").display().to_string();
    let other = certs.join("other-ca.crt").display().to_string();
    let by_name = format!("postgresql://postgres@localhost:{port}/tls_test");
    let by_ip = format!("postgresql://postgres@127.0.0.1:{port}/tls_test");

    assert_eq!(
        encrypted(&format!("{by_ip}?sslmode=disable")).await,
        Ok(false)
    );
    assert_eq!(
        encrypted(&by_ip).await,
        Ok(true),
        "prefer (the default) takes TLS when offered"
    );
    assert_eq!(
        encrypted(&format!("{by_ip}?sslmode=require")).await,
        Ok(true),
        "require without a root certificate does not check it (libpq)"
    );
    assert_eq!(
        encrypted(&format!("{by_name}?sslmode=verify-full&sslrootcert={ca}")).await,
        Ok(true)
    );
    let refused = encrypted(&format!(
        "{by_name}?sslmode=verify-full&sslrootcert={other}"
    ))
    .await
    .expect_err("a wrong CA is refused");
    assert!(
        refused.to_lowercase().contains("certificate") || refused.contains("UnknownIssuer"),
        "{refused}"
    );
    // the certificate names localhost, not 127.0.0.1: verify-full refuses, verify-ca accepts
    assert!(
        encrypted(&format!("{by_ip}?sslmode=verify-full&sslrootcert={ca}"))
            .await
            .is_err()
    );
    assert_eq!(
        encrypted(&format!("{by_ip}?sslmode=verify-ca&sslrootcert={ca}")).await,
        Ok(true)
    );
    assert!(
        encrypted(&format!("{by_ip}?sslmode=verify-ca&sslrootcert={other}"))
            .await
            .is_err(),
        "verify-ca still checks the chain"
    );
    // the key=value form and the environment's names work too
    assert_eq!(
        encrypted(&format!(
            "host=localhost port={port} user=postgres dbname=tls_test sslmode=verify-full sslrootcert='{ca}'"
        ))
        .await,
        Ok(true)
    );

    // a node: migrations, pool, listener and lock sessions all over verify-full
    let node_url = format!("{by_name}?sslmode=verify-full&sslrootcert={ca}");
    let client = common::connect(&url).await;
    let _node = NodeProcess::start(&node_url, 51, &[]);
    wait_node_ready(&client, 51).await;
    let id = queue(&client, &["true"]).await;
    wait_state(&client, id, "CS", Duration::from_secs(30)).await;
    let row = client
        .query_one(
            "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl)
               FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
              WHERE a.application_name LIKE 'pgtaskd w51%'",
            &[],
        )
        .await
        .expect("sessions");
    let (tls, plain): (i64, i64) = (row.get(0), row.get(1));
    assert!(tls >= 2, "the node's sessions are encrypted ({tls})");
    assert_eq!(plain, 0, "no session of the node is in the clear");

    // a node given a wrong CA does not connect, and says why (stopped after 15 s if it retries)
    let mut refused_node = Command::new(env!("CARGO_BIN_EXE_pgtaskd"))
        .args(["node", "--worker-id", "52", "--database-url"])
        .arg(format!("{by_name}?sslmode=verify-full&sslrootcert={other}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while refused_node.try_wait().expect("poll").is_none() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = refused_node.kill();
    let out = refused_node.wait_with_output().expect("output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.to_lowercase().contains("certificate"), "{stderr}");
    let registered: i64 = client
        .query_one("SELECT count(*) FROM long_task.worker WHERE id = 52", &[])
        .await
        .expect("worker")
        .get(0);
    assert_eq!(registered, 0, "the refused node wrote nothing");
}

/// `curl` over HTTPS to the node, checking its certificate against `ca` for `localhost`;
/// returns the status (0 when the TLS handshake or the check failed) and the body.
fn https(port: u16, path: &str, ca: &Path) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-w", "\n%{http_code}"])
        .arg("--cacert")
        .arg(ca)
        .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
        .arg(format!("https://localhost:{port}{path}"))
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

#[tokio::test]
async fn the_http_api_serves_https_with_the_configured_certificate() {
    let certs = certificates();
    let (db, client) = common::migrated_db().await;
    // the node reads its own copy of the key (the server's belongs to `postgres`)
    let dir = tempfile::tempdir().expect("dir");
    let (cert, key) = (dir.path().join("http.crt"), dir.path().join("http.key"));
    std::fs::copy(certs.join("server.crt"), &cert).expect("cert");
    std::fs::copy(certs.join("server.key"), &key).expect("key");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        format!(
            "http_tls_cert = \"{}\"\nhttp_tls_key = \"{}\"\n",
            cert.display(),
            key.display()
        ),
    )
    .expect("config");
    let port = common::http::free_port();
    let addr = format!("127.0.0.1:{port}");
    let config_arg = config.display().to_string();

    // a key every user may read is refused, naming the key and the fix
    let refused = Command::new(env!("CARGO_BIN_EXE_pgtaskd"))
        .args([
            "node",
            "--database-url",
            &db.url,
            "--worker-id",
            "81",
            "--http",
            &addr,
        ])
        .args(["--config", &config_arg])
        .output()
        .expect("node");
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains("http_tls_key") && said.contains("chmod 600"),
        "{said}"
    );

    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let _node = NodeProcess::start(&db.url, 81, &["--http", &addr, "--config", &config_arg]);
    wait_node_ready(&client, 81).await;
    let mut answered = (0, String::new());
    for _ in 0..100 {
        answered = https(port, "/healthz", &certs.join("ca.crt"));
        if answered.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(answered.0, 200, "{answered:?}");
    let (code, body) = https(port, "/tasks?limit=1", &certs.join("ca.crt"));
    assert_eq!(code, 200, "{body}");
    // a client that trusts another CA refuses the node's certificate
    assert_eq!(https(port, "/healthz", &certs.join("other-ca.crt")).0, 0);
    // and plain HTTP gets no answer from the HTTPS port
    let (plain, _) = common::http::request("GET", &format!("http://{addr}/healthz"), None);
    assert_ne!(plain, 200);
}
