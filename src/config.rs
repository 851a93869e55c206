//! Node configuration: one documented struct, read from a TOML file, overridden by environment
//! variables and flags (flags beat env beat file beat defaults; the binary's edge does the layering).
//!
//! Owns validation of every value, so a bad setting is a clear error naming its key before the node
//! touches the database. Must never read the database or start anything.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::http::auth::{HttpToken, Scope, TokenError, Tokens};

/// Errors of reading or validating a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid value for `{key}`: {message}")]
    Invalid { key: &'static str, message: String },
    #[error("no database given: set DATABASE_URL, pass --database-url, or use `pgtaskd dev` for an embedded cluster")]
    NoDatabase,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable, multi-field lines (the default).
    #[default]
    Pretty,
    /// `key=value` pairs, one event per line (span fields included).
    Logfmt,
    /// One JSON object per line (span fields included).
    Json,
}

/// Everything a node needs to know. Field names are the TOML keys.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// PostgreSQL connection string (also `DATABASE_URL`).
    pub database_url: Option<String>,
    /// This node's id in `long_task.worker`; a free id is allocated when unset.
    pub worker_id: Option<i64>,
    /// The task group this node serves.
    pub group_id: i32,
    /// Process limit: at most this many tasks run at once (live-adjustable via `worker.max_task_count`).
    pub max_tasks: u32,
    /// Name shown in `worker.node_name` (default: the host name).
    pub node_name: Option<String>,
    /// How often the node proves it is alive.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// A node whose heartbeat is older than this counts as dead.
    #[serde(with = "humantime_serde")]
    pub heartbeat_timeout: Duration,
    /// Time between SIGTERM and SIGKILL when a task's process group is stopped.
    #[serde(with = "humantime_serde")]
    pub kill_grace: Duration,
    /// On SIGTERM/SIGINT, how long running tasks may finish before they are killed and re-queued.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// How often the listener checks its own connection (notifications are only hints).
    #[serde(with = "humantime_serde")]
    pub listener_check_interval: Duration,
    /// The least time between two rounds of the group's coordinator (a round is one cheap read of
    /// `pg_locks` and the group's worker rows, sent by the coordinator only, when a watched node's
    /// liveness lock comes free or a heartbeat deadline passes, else every `heartbeat_timeout`).
    #[serde(with = "humantime_serde")]
    pub coordinator_interval: Duration,
    /// At most this many dedicated watcher sessions on the coordinator, each parked in a request
    /// for one live node's liveness lock (a kill is noticed at once); the group's other live nodes
    /// are checked by one `pg_locks` read every `coordinator_interval` (docs/clustering.md,
    /// "Sessions"). 0: poll every node.
    pub watch_sessions: usize,
    /// Where the node keeps local state (the outcome spool), scoped by installation and worker id
    /// (default: `$XDG_STATE_HOME/pgtaskd`, else `~/.local/state/pgtaskd`, else `/var/tmp/pgtaskd`).
    pub state_dir: Option<PathBuf>,
    /// Lines of stdout and of stderr kept per run.
    pub tail_lines: usize,
    /// Bytes kept at most per output tail.
    pub tail_bytes: usize,
    /// Live output: a running process's tails are written to its task row this often (and
    /// sooner, at most every 100 ms, once a stream printed `tail_lines` new lines), only when they
    /// changed; `0s` turns it off (the tails then appear when the run ends).
    #[serde(with = "humantime_serde")]
    pub live_output_interval: Duration,
    /// Full output capture: every byte of a task's stdout and of its stderr, up to this many per
    /// stream and attempt, in files under the state directory (`output/`), served by this node's
    /// HTTP API; 0 (the default): off.
    #[serde(with = "crate::resources::bytes_serde")]
    pub output_capture_bytes: u64,
    /// Capture files older than this are deleted (at start-up and every hour).
    #[serde(with = "humantime_serde")]
    pub output_capture_keep: Duration,
    /// Base directory for relative task `cwd` values (default: the node's working directory).
    pub cwd_root: Option<PathBuf>,
    /// Size of the shared database pool; unset: from `max_tasks` (`pool_size()`).
    pub pool_size: Option<u32>,
    /// Apply pending migrations at start-up (several nodes may start at once: it is locked).
    pub auto_migrate: bool,
    /// Log output format: `pretty`, `logfmt` or `json`.
    pub log_format: LogFormat,
    /// Log filter, in `RUST_LOG` syntax (`info`, `warn,pgtaskd::actors=debug`); unset: `info`.
    /// `RUST_LOG`, when set, wins. Changes with SIGHUP.
    pub log_level: Option<String>,
    /// Address of the HTTP API, metrics and status page (e.g. `127.0.0.1:8080`); off when unset.
    pub http: Option<std::net::SocketAddr>,
    /// The node claims nothing while the host's available memory is under this many bytes
    /// (a number, or a string with a unit: `512MiB`, `2GB`); 0 disables the floor.
    #[serde(with = "crate::resources::bytes_serde")]
    pub min_free_memory: u64,
    /// The status page and `/cluster` warn when one transaction (or an inactive replication
    /// slot) has held the database's vacuum horizon back this long: dead rows of the queue's
    /// tables cannot be removed meanwhile.
    #[serde(with = "humantime_serde")]
    pub horizon_warning: Duration,
    /// The programs this node may start, as glob patterns of absolute paths (`/usr/bin/*`,
    /// `/opt/jobs/**`); a task whose program matches none ends `CF` without running. Unset (the
    /// default): every program may run; `[]`: none (a node for in-process handlers only).
    pub allowed_programs: Option<Vec<String>>,
    /// Variables of the node's environment passed on to its tasks, by name (tasks get only
    /// `PATH`, `HOME`, `LANG` and their `PGTASKD_*` values otherwise; `DATABASE_URL`,
    /// `PGPASSWORD` and `PGPASSFILE` are never passed).
    pub env_passthrough: Vec<String>,
    /// The OS user (`user` or `user:group`) tasks run as; needs a node started as root. Unset:
    /// tasks run as the node's own user (a root node warns at start-up).
    pub run_as: Option<String>,
    /// The users a group's `run_as` (`long_task.group_settings.run_as`) may name on this node
    /// (`user` or `user:group` entries). A group asking for anyone else gets `CF` runs. Empty
    /// (the default): only the node's own `run_as`.
    pub run_as_allowed: Vec<String>,
    /// Limits of every task process: `memory` (address space: a size), `cpu_seconds`,
    /// `open_files`, `processes` (per user); unset ones are not changed.
    pub task_limits: crate::process::identity::TaskLimits,
    /// Bearer tokens of the HTTP API (`[[http_tokens]]` with `scope = "read"|"write"` and
    /// `token`); with none (and no `http_token_file`) every route is open, which is allowed on a
    /// loopback address only.
    pub http_tokens: Vec<HttpToken>,
    /// A file of `read <token>` / `write <token>` lines (not readable by every user).
    pub http_token_file: Option<PathBuf>,
    /// `/metrics` answers without a token (for a scraper on a trusted network).
    pub http_metrics_open: bool,
    /// Serve HTTPS: the server's PEM certificate chain (with `http_tls_key`).
    pub http_tls_cert: Option<PathBuf>,
    /// The PEM private key of `http_tls_cert` (not readable by every user).
    pub http_tls_key: Option<PathBuf>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            database_url: None,
            worker_id: None,
            group_id: 0,
            max_tasks: default_max_tasks(),
            node_name: None,
            heartbeat_interval: Duration::from_secs(2),
            heartbeat_timeout: Duration::from_secs(5),
            kill_grace: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(30),
            listener_check_interval: Duration::from_secs(10),
            coordinator_interval: Duration::from_millis(250),
            watch_sessions: 8,
            state_dir: None,
            tail_lines: 20,
            tail_bytes: 8 * 1024,
            live_output_interval: Duration::from_secs(1),
            output_capture_bytes: 0,
            output_capture_keep: Duration::from_secs(7 * 86400),
            cwd_root: None,
            pool_size: None,
            auto_migrate: true,
            log_format: LogFormat::Pretty,
            log_level: None,
            http: None,
            min_free_memory: 0,
            horizon_warning: Duration::from_secs(60),
            allowed_programs: None,
            env_passthrough: Vec::new(),
            run_as: None,
            run_as_allowed: Vec::new(),
            task_limits: Default::default(),
            http_tokens: Vec::new(),
            http_token_file: None,
            http_metrics_open: false,
            http_tls_cert: None,
            http_tls_key: None,
        }
    }
}

fn default_max_tasks() -> u32 {
    std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(4)
}

impl NodeConfig {
    /// Reads a TOML file; missing keys take their defaults, unknown keys are an error.
    pub fn from_file(path: &Path) -> Result<NodeConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })
    }

    /// Parses TOML text (the `[node]` table when present, else the top level).
    pub fn from_toml(text: &str) -> Result<NodeConfig, String> {
        let value: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
        let (table, prefix) = match value.get("node") {
            Some(toml::Value::Table(node)) if value.len() == 1 => (node.clone(), "node."),
            _ => (value, ""),
        };
        // Values are checked one key at a time so that an error names its key.
        for (key, item) in &table {
            let mut single = toml::Table::new();
            single.insert(key.clone(), item.clone());
            if let Err(e) = single.try_into::<NodeConfig>() {
                return Err(format!("`{prefix}{key}`: {}", e.message()));
            }
        }
        table
            .try_into::<NodeConfig>()
            .map_err(|e| e.message().to_owned())
    }

    /// Checks every value; the first bad one is named.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
            ConfigError::Invalid {
                key,
                message: message.into(),
            }
        }
        if let Some(id) = self.worker_id {
            if !(1..=i64::from(i32::MAX)).contains(&id) {
                return Err(invalid(
                    "worker_id",
                    format!("{id} is out of range 1..={}", i32::MAX),
                ));
            }
        }
        if self.heartbeat_interval < Duration::from_millis(100) {
            return Err(invalid("heartbeat_interval", "must be at least 100ms"));
        }
        if self.heartbeat_timeout < self.heartbeat_interval * 2 {
            return Err(invalid(
                "heartbeat_timeout",
                "must be at least twice heartbeat_interval",
            ));
        }
        if self.listener_check_interval < Duration::from_millis(100) {
            return Err(invalid("listener_check_interval", "must be at least 100ms"));
        }
        if self.coordinator_interval < Duration::from_millis(50) {
            return Err(invalid("coordinator_interval", "must be at least 50ms"));
        }
        if self.coordinator_interval >= self.heartbeat_timeout {
            return Err(invalid(
                "coordinator_interval",
                "must be shorter than heartbeat_timeout",
            ));
        }
        if !self.live_output_interval.is_zero()
            && self.live_output_interval < Duration::from_millis(100)
        {
            return Err(invalid(
                "live_output_interval",
                "must be 0s (off) or at least 100ms",
            ));
        }
        if self.output_capture_bytes > 0 && self.output_capture_keep < Duration::from_secs(60) {
            return Err(invalid("output_capture_keep", "must be at least 1m"));
        }
        if self.tail_bytes == 0 && self.tail_lines > 0 {
            return Err(invalid("tail_bytes", "must be > 0 when tail_lines > 0"));
        }
        if self.pool_size.is_some_and(|n| n < 2) {
            return Err(invalid("pool_size", "must be at least 2"));
        }
        if let Some(level) = &self.log_level {
            tracing_subscriber::EnvFilter::builder()
                .parse(level)
                .map_err(|e| invalid("log_level", format!("'{level}': {e}")))?;
        }
        if let Some(root) = &self.cwd_root {
            if !root.is_absolute() {
                return Err(invalid("cwd_root", "must be an absolute path"));
            }
        }
        crate::process::policy::ProgramRules::new(self.allowed_programs.as_deref())
            .map_err(|e| invalid("allowed_programs", e.0))?;
        for name in &self.env_passthrough {
            crate::process::policy::check_variable_name(name)
                .map_err(|e| invalid("env_passthrough", e.0))?;
        }
        if let Some(spec) = &self.run_as {
            crate::process::identity::RunAs::resolve(spec).map_err(|e| invalid("run_as", e.0))?;
        }
        for entry in &self.run_as_allowed {
            if entry.is_empty() || entry.contains(char::is_whitespace) || entry.contains('*') {
                return Err(invalid(
                    "run_as_allowed",
                    format!("'{entry}' is not a user name (no patterns: name each user)"),
                ));
            }
        }
        if !self.run_as_allowed.is_empty() && !nix::unistd::Uid::effective().is_root() {
            return Err(invalid(
                "run_as_allowed",
                "switching users needs a node started as root",
            ));
        }
        if self.task_limits.memory == Some(0)
            || [
                self.task_limits.cpu_seconds,
                self.task_limits.open_files,
                self.task_limits.processes,
            ]
            .contains(&Some(0))
        {
            return Err(invalid("task_limits", "a limit of 0 would stop every task"));
        }
        match (&self.http_tls_cert, &self.http_tls_key) {
            (Some(cert), Some(key)) => {
                crate::http::tls::server_config(cert, key)
                    .map_err(|e| invalid(e.what, e.to_string()))?;
            }
            (None, None) => {}
            _ => {
                return Err(invalid(
                    "http_tls_cert",
                    "http_tls_cert and http_tls_key go together",
                ))
            }
        }
        let tokens = self
            .http_tokens()
            .map_err(|e| invalid("http_tokens", e.0))?;
        if let Some(addr) = self.http {
            if !addr.ip().is_loopback() && tokens.is_empty() {
                return Err(invalid(
                    "http",
                    format!("{addr} is not a loopback address and no HTTP token is configured: set http_token_file (docs/security.md)"),
                ));
            }
        }
        if let Some(url) = &self.database_url {
            crate::db::tls::prepare(url).map_err(|e| invalid("database_url", e.to_string()))?;
        }
        Ok(())
    }

    /// The effective configuration as TOML (what `pgtaskd config check` prints). The password of
    /// the database URL is masked.
    pub fn to_toml(&self) -> Result<String, String> {
        let mut shown = self.clone();
        shown.database_url = shown.database_url.map(|u| mask_password(&u));
        for t in &mut shown.http_tokens {
            t.token = "***".to_owned();
        }
        toml::to_string(&shown).map_err(|e| e.to_string())
    }

    /// The pool size: `pool_size` when set, else 8 plus one connection per 4 process slots
    /// past 16, at most 32 (outcomes are batched, so the pool grows far slower than the slots:
    /// 8 for up to 16 tasks, 20 for 64, 32 from 112).
    pub fn pool_size(&self) -> u32 {
        self.pool_size.unwrap_or_else(|| {
            let extra = self.max_tasks.saturating_sub(16) / 4;
            8u32.saturating_add(extra).min(32)
        })
    }

    /// The HTTP API's tokens (`http_tokens` and `http_token_file`).
    pub fn http_tokens(&self) -> Result<Tokens, TokenError> {
        Tokens::load(
            &self.http_tokens,
            self.http_token_file.as_deref(),
            self.http_metrics_open,
        )
    }

    /// The database URL, which a node cannot do without.
    pub fn require_database_url(&self) -> Result<&str, ConfigError> {
        self.database_url.as_deref().ok_or(ConfigError::NoDatabase)
    }

    /// The node's state directory (see `state_dir`).
    pub fn state_dir(&self) -> PathBuf {
        self.state_dir
            .clone()
            .unwrap_or_else(crate::cluster::spool::default_state_dir)
    }

    /// The node's display name.
    pub fn node_name(&self) -> String {
        self.node_name.clone().unwrap_or_else(host_name)
    }
}

/// A connection string with its password replaced by `***` (URL or key=value form).
pub fn mask_password(url: &str) -> String {
    if let Some(scheme_end) = url.find("://") {
        let rest = &url[scheme_end + 3..];
        let auth_end = rest.find(['/', '?']).unwrap_or(rest.len());
        if let Some(at) = rest[..auth_end].rfind('@') {
            if let Some(colon) = rest[..at].find(':') {
                return format!(
                    "{}{}:***{}",
                    &url[..scheme_end + 3],
                    &rest[..colon],
                    &rest[at..]
                );
            }
        }
        return url.to_owned();
    }
    url.split_whitespace()
        .map(|kv| match kv.split_once('=') {
            Some(("password", _)) => "password=***".to_owned(),
            _ => kv.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// This machine's host name (best effort).
pub fn host_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".to_owned())
}

#[cfg(test)]
mod tests {

    #[test]
    fn the_pool_grows_with_the_process_slots_unless_set() {
        let with = |max_tasks, pool_size| NodeConfig {
            max_tasks,
            pool_size,
            ..NodeConfig::default()
        };
        assert_eq!(with(4, None).pool_size(), 8);
        assert_eq!(with(16, None).pool_size(), 8);
        assert_eq!(with(64, None).pool_size(), 20);
        assert_eq!(with(1000, None).pool_size(), 32);
        assert_eq!(with(1000, Some(5)).pool_size(), 5);
        assert!(with(4, Some(1)).validate().is_err());
    }
    use super::*;

    #[test]
    fn defaults_are_valid() {
        NodeConfig::default().validate().expect("defaults valid");
    }

    #[test]
    fn unknown_key_is_named() {
        let err = NodeConfig::from_toml("max_taks = 3").unwrap_err();
        assert!(err.contains("max_taks"), "{err}");
    }

    #[test]
    fn bad_duration_is_rejected() {
        let err = NodeConfig::from_toml("heartbeat_interval = \"soon\"").unwrap_err();
        assert!(
            err.contains("heartbeat_interval") || err.contains("soon"),
            "{err}"
        );
    }

    #[test]
    fn node_table_and_durations_parse() {
        let cfg = NodeConfig::from_toml(
            "[node]\ngroup_id = 3\nmax_tasks = 16\nheartbeat_interval = \"500ms\"\nheartbeat_timeout = \"2s\"",
        )
        .expect("parses");
        assert_eq!(cfg.group_id, 3);
        assert_eq!(cfg.max_tasks, 16);
        assert_eq!(cfg.heartbeat_interval, Duration::from_millis(500));
        cfg.validate().expect("valid");
    }

    #[test]
    fn live_output_and_capture_settings_are_checked() {
        let cfg = NodeConfig::from_toml(
            "live_output_interval = \"250ms\"\noutput_capture_bytes = \"10MiB\"\noutput_capture_keep = \"2days\"",
        )
        .expect("parses");
        assert_eq!(cfg.live_output_interval, Duration::from_millis(250));
        assert_eq!(cfg.output_capture_bytes, 10 << 20);
        assert_eq!(cfg.output_capture_keep, Duration::from_secs(2 * 86400));
        cfg.validate().expect("valid");
        for (toml, key) in [
            ("live_output_interval = \"50ms\"", "live_output_interval"),
            (
                "output_capture_bytes = 1000\noutput_capture_keep = \"10s\"",
                "output_capture_keep",
            ),
        ] {
            let err = NodeConfig::from_toml(toml)
                .expect("parses")
                .validate()
                .expect_err(toml)
                .to_string();
            assert!(err.contains(key), "{err}");
        }
        let off = NodeConfig::from_toml("live_output_interval = \"0s\"").expect("parses");
        off.validate().expect("0s turns live output off");
    }

    #[test]
    fn http_and_memory_floor_parse() {
        let cfg = NodeConfig::from_toml(
            "http = \"127.0.0.1:9000\"\nmin_free_memory = \"1GiB\"\nlog_format = \"logfmt\"",
        )
        .expect("parses");
        assert_eq!(cfg.http, Some("127.0.0.1:9000".parse().expect("addr")));
        assert_eq!(cfg.min_free_memory, 1 << 30);
        assert_eq!(cfg.log_format, LogFormat::Logfmt);
        let err = NodeConfig::from_toml("http = \"localhost\"").unwrap_err();
        assert!(err.contains("http"), "{err}");
        let err = NodeConfig::from_toml("min_free_memory = \"lots\"").unwrap_err();
        assert!(err.contains("min_free_memory"), "{err}");
        let text = cfg.to_toml().expect("prints");
        assert!(text.contains("min_free_memory = 1073741824"), "{text}");
    }

    #[test]
    fn program_rules_and_passthrough_are_checked() {
        let cfg = NodeConfig::from_toml(
            "allowed_programs = [\"/usr/bin/*\"]\nenv_passthrough = [\"TZ\"]",
        )
        .expect("parses");
        cfg.validate().expect("valid");
        let cfg = NodeConfig::from_toml("allowed_programs = [\"true\"]").expect("parses");
        let err = cfg.validate().unwrap_err().to_string();
        assert!(
            err.contains("allowed_programs") && err.contains("absolute"),
            "{err}"
        );
        let cfg = NodeConfig::from_toml("env_passthrough = [\"A B\"]").expect("parses");
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("env_passthrough"), "{err}");
    }

    #[test]
    fn a_public_http_address_needs_a_token() {
        let cfg = NodeConfig::from_toml("http = \"0.0.0.0:8080\"").expect("parses");
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("`http`") && err.contains("token"), "{err}");
        let cfg = NodeConfig::from_toml(
            "http = \"0.0.0.0:8080\"\n[[http_tokens]]\nscope = \"write\"\ntoken = \"0123456789abcdef0123\"",
        )
        .expect("parses");
        cfg.validate().expect("valid with a token");
        let shown = cfg.to_toml().expect("prints");
        assert!(!shown.contains("0123456789abcdef0123"), "{shown}");
        NodeConfig::from_toml("http = \"127.0.0.1:8080\"")
            .expect("parses")
            .validate()
            .expect("loopback needs no token");
    }

    #[test]
    fn log_level_is_checked() {
        let cfg =
            NodeConfig::from_toml("log_level = \"warn,pgtaskd::actors=debug\"").expect("parses");
        cfg.validate().expect("valid");
        let cfg = NodeConfig::from_toml("log_level = \"pgtaskd=loud\"").expect("parses");
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("log_level"), "{err}");
    }

    #[test]
    fn validation_names_the_key() {
        let cfg = NodeConfig {
            heartbeat_timeout: Duration::from_millis(300),
            ..NodeConfig::default()
        };
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("heartbeat_timeout"), "{err}");
        let cfg = NodeConfig {
            worker_id: Some(0),
            ..NodeConfig::default()
        };
        assert!(cfg
            .validate()
            .unwrap_err()
            .to_string()
            .contains("worker_id"));
    }
}
