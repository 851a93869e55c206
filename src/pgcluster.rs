//! Owns creating, starting, stopping and restarting a local throw-away or embedded PostgreSQL
//! cluster from the system binaries (`initdb`, `pg_ctl`): one cluster per directory, its data in
//! `dir/data`, its log in `dir/postgres.log`, its port remembered in `dir/port`.
//!
//! It must never be used for a user-provided `DATABASE_URL`: it only manages servers it created.
//! It is not safe to call `open_or_init`/`start` on the same directory from two processes at once;
//! callers that share a cluster across processes must hold a file lock around them.

use std::ffi::OsStr;
use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::unistd::{geteuid, Gid, Uid, User};

mod binaries;
use binaries::{check_traversable, find_bin_dir, is_executable};

/// How long `pg_ctl -w` may wait for the server to start or stop, in seconds.
const PG_CTL_WAIT_SECS: u32 = 60;
/// How long to keep retrying a start that failed because a killed server's processes or
/// shared memory were still around.
const STALE_RETRY_WINDOW: Duration = Duration::from_secs(15);
/// Bytes of the server log quoted in an error.
const LOG_TAIL_BYTES: u64 = 4096;
/// Marker written once initdb and the configuration are complete.
const INIT_MARKER: &str = "initialized";

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(
        "PostgreSQL server binaries (initdb, pg_ctl) not found on PATH or under \
         /usr/lib/postgresql/*/bin; install them with `apt-get install postgresql`"
    )]
    BinariesNotFound,
    #[error("running as root but there is no `postgres` user to run the server as")]
    NoPostgresUser,
    #[error("{path} is not traversable by the postgres user; the cluster directory must be")]
    NotTraversable { path: PathBuf },
    #[error("`{command}` failed ({status}):\n{output}")]
    CommandFailed {
        command: String,
        status: String,
        /// The command's stderr/stdout and, for server starts, the tail of the server log.
        output: String,
    },
    #[error("timed out waiting for the server to {action}:\n{output}")]
    Timeout {
        action: &'static str,
        output: String,
    },
    #[error("invalid cluster state in {path}: {reason}")]
    InvalidState { path: PathBuf, reason: String },
    #[error("i/o error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("database error: {0}")]
    Postgres(#[from] tokio_postgres::Error),
}

fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> ClusterError {
    let path = path.into();
    move |source| ClusterError::Io { path, source }
}

/// A local PostgreSQL cluster living under one directory.
#[derive(Debug, Clone)]
pub struct PgCluster {
    dir: PathBuf,
    data_dir: PathBuf,
    socket_dir: PathBuf,
    port: u16,
    bin_dir: PathBuf,
    /// `Some((uid, gid))` of `postgres` when we run as root and must drop to that user.
    as_postgres_user: Option<(Uid, Gid)>,
}

impl PgCluster {
    /// Creates (initdb, first time) or reuses the cluster under `dir` (`dir/data`). The port is
    /// chosen free the first time and remembered in `dir/port`.
    pub fn open_or_init(dir: &Path) -> Result<PgCluster, ClusterError> {
        let bin_dir = find_bin_dir()?;
        let as_postgres_user = if geteuid().is_root() {
            let user = User::from_name("postgres")
                .ok()
                .flatten()
                .ok_or(ClusterError::NoPostgresUser)?;
            Some((user.uid, user.gid))
        } else {
            None
        };
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let dir = fs::canonicalize(dir).map_err(io_err(dir))?;
        if let Some((uid, gid)) = as_postgres_user {
            check_traversable(&dir, uid, gid)?;
            std::os::unix::fs::chown(&dir, Some(uid.as_raw()), Some(gid.as_raw()))
                .map_err(io_err(&dir))?;
        }
        let data_dir = dir.join("data");
        let port_file = dir.join("port");
        let marker = dir.join(INIT_MARKER);

        let port = if marker.exists() {
            read_port(&port_file)?
        } else {
            // A previous init was interrupted (or never ran): start over.
            if data_dir.exists() {
                fs::remove_dir_all(&data_dir).map_err(io_err(&data_dir))?;
            }
            pick_free_port().map_err(io_err(&dir))?
        };
        let cluster = PgCluster {
            socket_dir: PathBuf::from(format!("/tmp/pgtaskd-{port}")),
            dir,
            data_dir,
            port,
            bin_dir,
            as_postgres_user,
        };
        if !marker.exists() {
            cluster.init(&port_file, &marker)?;
        }
        Ok(cluster)
    }

    fn init(&self, port_file: &Path, marker: &Path) -> Result<(), ClusterError> {
        let data = self.data_dir.as_os_str();
        self.run(
            "initdb",
            [
                OsStr::new("-D"),
                data,
                OsStr::new("-A"),
                OsStr::new("trust"),
                OsStr::new("-U"),
                OsStr::new("postgres"),
                OsStr::new("-E"),
                OsStr::new("UTF8"),
                OsStr::new("--locale=C"),
            ],
        )?;
        let conf_path = self.data_dir.join("postgresql.conf");
        // autovacuum_naptime 15s (default 1min): at thousands of tasks a second the task table
        // gathers ~10,000 dead rows a second, and a pass a minute has 650,000 of them to remove
        // at once; four smaller passes keep the worst 5-s window of a handler soak at 22 ms
        // against 32 (README, "Steady state").
        let settings = format!(
            "\n# Added by pgtaskd (pgcluster)\n\
             listen_addresses = '127.0.0.1'\n\
             port = {port}\n\
             unix_socket_directories = '{socket}'\n\
             max_connections = 500\n\
             shared_buffers = 128MB\n\
             log_min_messages = warning\n\
             logging_collector = off\n\
             autovacuum_naptime = 15s\n\
             {wal_compression}",
            port = self.port,
            socket = self.socket_dir.display(),
            wal_compression = self.wal_compression_setting(),
        );
        let mut conf = OpenOptions::new()
            .append(true)
            .open(&conf_path)
            .map_err(io_err(&conf_path))?;
        conf.write_all(settings.as_bytes())
            .map_err(io_err(&conf_path))?;
        fs::write(port_file, format!("{}\n", self.port)).map_err(io_err(port_file))?;
        fs::write(marker, b"").map_err(io_err(marker))?;
        Ok(())
    }

    /// `wal_compression = lz4` when this server was built with lz4, else nothing (the default,
    /// off). Vacuum's first pass over a page after a checkpoint writes the whole page to the WAL;
    /// compressed, those bursts are a third of their size (README, "Steady state": 13 against
    /// 34 MiB/s at the peak of a handler soak). `postgres -C` validates the value without
    /// starting a server.
    fn wal_compression_setting(&self) -> &'static str {
        let probe = self.output(
            "postgres",
            [
                OsStr::new("-D"),
                self.data_dir.as_os_str(),
                OsStr::new("-C"),
                OsStr::new("wal_compression"),
                OsStr::new("-c"),
                OsStr::new("wal_compression=lz4"),
            ],
        );
        match probe {
            Ok(out) if out.status.success() => "wal_compression = lz4\n",
            _ => "",
        }
    }

    /// Starts the server and waits until it accepts connections. No-op if already running.
    /// A stale `postmaster.pid` left by a killed server does not prevent the start.
    pub fn start(&self) -> Result<(), ClusterError> {
        if self.is_running() {
            return Ok(());
        }
        self.ensure_socket_dir()?;
        let deadline = Instant::now() + STALE_RETRY_WINDOW;
        loop {
            let log_offset = fs::metadata(self.log_file()).map(|m| m.len()).unwrap_or(0);
            let wait = PG_CTL_WAIT_SECS.to_string();
            let log = self.log_file();
            let out = self.output(
                "pg_ctl",
                [
                    OsStr::new("start"),
                    OsStr::new("-w"),
                    OsStr::new("-t"),
                    OsStr::new(&wait),
                    OsStr::new("-D"),
                    self.data_dir.as_os_str(),
                    OsStr::new("-l"),
                    log.as_os_str(),
                ],
            )?;
            if out.status.success() {
                return Ok(());
            }
            let text = format!(
                "{}\n--- server log tail ({}) ---\n{}",
                command_text(&out),
                log.display(),
                self.log_tail_since(log_offset)
            );
            if text.contains("did not start in time") {
                return Err(ClusterError::Timeout {
                    action: "start",
                    output: text,
                });
            }
            // After a SIGKILL the old backends may still hold the shared memory or the lock
            // file for a moment; the server refuses to start until they are gone.
            // (Only that case: a busy port also hints "Is another postmaster ... running", and
            // waiting would not help it.)
            let stale = text.contains("pre-existing shared memory block");
            if stale && Instant::now() < deadline && !self.is_running() {
                std::thread::sleep(Duration::from_millis(500));
                continue;
            }
            return Err(ClusterError::CommandFailed {
                command: "pg_ctl start".into(),
                status: out.status.to_string(),
                output: text,
            });
        }
    }

    /// Stops the server (fast shutdown) and waits for it. No-op if it is not running.
    pub fn stop(&self) -> Result<(), ClusterError> {
        if !self.is_running() {
            return Ok(());
        }
        let wait = PG_CTL_WAIT_SECS.to_string();
        let out = self.output(
            "pg_ctl",
            [
                OsStr::new("stop"),
                OsStr::new("-m"),
                OsStr::new("fast"),
                OsStr::new("-w"),
                OsStr::new("-t"),
                OsStr::new(&wait),
                OsStr::new("-D"),
                self.data_dir.as_os_str(),
            ],
        )?;
        if out.status.success() || !self.is_running() {
            return Ok(());
        }
        let text = command_text(&out);
        if text.contains("did not shut down") {
            return Err(ClusterError::Timeout {
                action: "stop",
                output: text,
            });
        }
        Err(ClusterError::CommandFailed {
            command: "pg_ctl stop".into(),
            status: out.status.to_string(),
            output: text,
        })
    }

    /// Stops and starts the server again, on the same port.
    pub fn restart(&self) -> Result<(), ClusterError> {
        self.stop()?;
        self.start()
    }

    /// Kills the server as a crash would (`pg_ctl stop -m immediate`: no checkpoint, every
    /// session cut). No-op if it is not running.
    pub fn stop_immediate(&self) -> Result<(), ClusterError> {
        if !self.is_running() {
            return Ok(());
        }
        let wait = PG_CTL_WAIT_SECS.to_string();
        let data = self.data_dir.as_os_str();
        let args = ["stop", "-m", "immediate", "-w", "-t", &wait, "-D"];
        let out = self.output("pg_ctl", args.iter().map(OsStr::new).chain([data]))?;
        if out.status.success() || !self.is_running() {
            return Ok(());
        }
        Err(ClusterError::CommandFailed {
            command: "pg_ctl stop -m immediate".into(),
            status: out.status.to_string(),
            output: command_text(&out),
        })
    }

    /// Makes a standby (see `base_backup`) a primary (`pg_ctl promote -w`): it leaves recovery
    /// and accepts writes once this returns.
    pub fn promote(&self) -> Result<(), ClusterError> {
        let wait = PG_CTL_WAIT_SECS.to_string();
        let data = self.data_dir.as_os_str();
        let args = ["promote", "-w", "-t", &wait, "-D"];
        self.run("pg_ctl", args.iter().map(OsStr::new).chain([data]))
    }

    /// A streaming standby of this (running) server under `dir`: `pg_basebackup -R` into
    /// `dir/data` (whatever was there is removed), its own port (the one remembered in
    /// `dir/port`, else a free one) and socket directory, `synchronous_standby_names` cleared
    /// (a promoted standby must not wait for a standby it does not have). Not started.
    pub fn base_backup(&self, dir: &Path) -> Result<PgCluster, ClusterError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let dir = fs::canonicalize(dir).map_err(io_err(dir))?;
        if let Some((uid, gid)) = self.as_postgres_user {
            check_traversable(&dir, uid, gid)?;
            std::os::unix::fs::chown(&dir, Some(uid.as_raw()), Some(gid.as_raw()))
                .map_err(io_err(&dir))?;
        }
        let port_file = dir.join("port");
        let marker = dir.join(INIT_MARKER);
        let _ = fs::remove_file(&marker);
        let port = match read_port(&port_file) {
            Ok(port) if port != self.port => port,
            _ => pick_free_port().map_err(io_err(&dir))?,
        };
        let standby = PgCluster {
            socket_dir: PathBuf::from(format!("/tmp/pgtaskd-{port}")),
            data_dir: dir.join("data"),
            dir,
            port,
            bin_dir: self.bin_dir.clone(),
            as_postgres_user: self.as_postgres_user,
        };
        if standby.data_dir.exists() {
            fs::remove_dir_all(&standby.data_dir).map_err(io_err(&standby.data_dir))?;
        }
        let primary_port = self.port.to_string();
        let args = [
            "-D",
            &standby.data_dir.to_string_lossy(),
            "-R",
            "-X",
            "stream",
            "-c",
            "fast",
            "-h",
            "127.0.0.1",
            "-p",
            &primary_port,
            "-U",
            "postgres",
        ]
        .map(|a| a.to_owned());
        self.run("pg_basebackup", &args)?;
        standby.append_conf(&format!(
            "port = {port}\nunix_socket_directories = '{socket}'\nsynchronous_standby_names = ''\n",
            socket = standby.socket_dir.display(),
        ))?;
        fs::write(&port_file, format!("{port}\n")).map_err(io_err(&port_file))?;
        fs::write(&marker, b"").map_err(io_err(&marker))?;
        Ok(standby)
    }

    /// Makes every commit wait for a standby (`synchronous_standby_names = '*'`, with the
    /// default `synchronous_commit = on`: a commit is acknowledged once a standby has flushed
    /// it), or stops waiting (`''`); applied by a reload when the server runs.
    pub fn set_synchronous(&self, on: bool) -> Result<(), ClusterError> {
        let names = if on { "*" } else { "" };
        self.append_conf(&format!("synchronous_standby_names = '{names}'\n"))?;
        if self.is_running() {
            let data = self.data_dir.as_os_str();
            self.run("pg_ctl", [OsStr::new("reload"), OsStr::new("-D"), data])?;
        }
        Ok(())
    }

    /// Appends settings to `postgresql.conf` (a later line wins).
    fn append_conf(&self, settings: &str) -> Result<(), ClusterError> {
        let conf_path = self.data_dir.join("postgresql.conf");
        let mut conf = OpenOptions::new()
            .append(true)
            .open(&conf_path)
            .map_err(io_err(&conf_path))?;
        conf.write_all(format!("\n# Added by pgtaskd (pgcluster)\n{settings}").as_bytes())
            .map_err(io_err(&conf_path))
    }

    /// Whether a postmaster for this data directory is alive (`pg_ctl status`).
    pub fn is_running(&self) -> bool {
        self.output(
            "pg_ctl",
            [
                OsStr::new("status"),
                OsStr::new("-D"),
                self.data_dir.as_os_str(),
            ],
        )
        .map(|out| out.status.success())
        .unwrap_or(false)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgresql://postgres@127.0.0.1:PORT/dbname` (trust authentication, TCP).
    pub fn url(&self, dbname: &str) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/{dbname}", self.port)
    }

    pub fn log_file(&self) -> PathBuf {
        self.dir.join("postgres.log")
    }

    /// The cluster directory given to `open_or_init` (canonicalized).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The PostgreSQL data directory (`dir/data`).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The unix socket directory (`/tmp/pgtaskd-PORT`).
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    fn ensure_socket_dir(&self) -> Result<(), ClusterError> {
        let dir = &self.socket_dir;
        match fs::DirBuilder::new().mode(0o755).create(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err(dir)(e)),
        }
        if let Some((uid, gid)) = self.as_postgres_user {
            std::os::unix::fs::chown(dir, Some(uid.as_raw()), Some(gid.as_raw()))
                .map_err(io_err(dir))?;
        }
        Ok(())
    }

    /// A server tool: from the directory `initdb` and `pg_ctl` were found in, else from the one
    /// `pg_ctl` really lives in (a PATH of symlinks may hold only some of the tools).
    fn tool(&self, program: &str) -> PathBuf {
        let exe = self.bin_dir.join(program);
        if is_executable(&exe) {
            return exe;
        }
        fs::canonicalize(self.bin_dir.join("pg_ctl"))
            .ok()
            .and_then(|ctl| ctl.parent().map(|dir| dir.join(program)))
            .filter(|real| is_executable(real))
            .unwrap_or(exe)
    }

    fn command(&self, program: &str) -> Command {
        let exe = self.tool(program);
        let mut cmd = if self.as_postgres_user.is_some() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        };
        // Own process group: a Ctrl-C aimed at our caller must not take the server down with it.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        cmd.current_dir(&self.dir)
            .env_remove("PGDATA")
            .env_remove("PGPORT")
            .env_remove("PGHOST")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    fn output<I, S>(&self, program: &str, args: I) -> Result<Output, ClusterError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.command(program)
            .args(args)
            .output()
            .map_err(io_err(self.tool(program)))
    }

    fn run<I, S>(&self, program: &str, args: I) -> Result<(), ClusterError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let out = self.output(program, args)?;
        if out.status.success() {
            Ok(())
        } else {
            Err(ClusterError::CommandFailed {
                command: program.to_string(),
                status: out.status.to_string(),
                output: command_text(&out),
            })
        }
    }

    /// The server log written since `offset`, at most the last `LOG_TAIL_BYTES`.
    fn log_tail_since(&self, offset: u64) -> String {
        let path = self.log_file();
        let Ok(mut f) = fs::File::open(&path) else {
            return String::from("(no server log)");
        };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let start = offset.max(len.saturating_sub(LOG_TAIL_BYTES)).min(len);
        let mut buf = Vec::new();
        if f.seek(SeekFrom::Start(start)).is_err() || f.read_to_end(&mut buf).is_err() {
            return String::from("(server log unreadable)");
        }
        String::from_utf8_lossy(&buf).into_owned()
    }
}

fn command_text(out: &Output) -> String {
    let mut s = String::from_utf8_lossy(&out.stderr).trim_end().to_string();
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !stdout.trim().is_empty() {
        if !s.is_empty() {
            s.push('\n');
        }
        s.push_str(stdout.trim_end());
    }
    s
}

fn read_port(path: &Path) -> Result<u16, ClusterError> {
    let text = fs::read_to_string(path).map_err(io_err(path))?;
    text.trim()
        .parse::<u16>()
        .map_err(|e| ClusterError::InvalidState {
            path: path.to_path_buf(),
            reason: format!("bad port {:?}: {e}", text.trim()),
        })
}

fn pick_free_port() -> std::io::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let port = listener.local_addr()?.port();
    drop(listener);
    Ok(port)
}

/// `CREATE DATABASE name` through `admin_url`; succeeds if it already exists.
pub async fn create_database(admin_url: &str, name: &str) -> Result<(), ClusterError> {
    let (client, connection) = tokio_postgres::connect(admin_url, tokio_postgres::NoTls).await?;
    let driver = tokio::spawn(connection);
    let sql = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
    let result = match client.batch_execute(&sql).await {
        Ok(()) => Ok(()),
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_DATABASE) => Ok(()),
        Err(e) => Err(e.into()),
    };
    drop(client);
    // The driver ends once the client is gone; its error (if any) no longer matters.
    let _ = driver.await;
    result
}
