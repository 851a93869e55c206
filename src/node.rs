//! A node's start-up and its shared context: connect, migrate, register the worker row, take the
//! liveness lock, clean up what a previous run of this node left behind, then start the actors on
//! an actix `System` that owns a multi-thread tokio runtime.
//!
//! Owns `NodeContext`, the state every actor shares (configuration, pool, ids, the registry of
//! running processes, the current address of each actor). Must never run tasks itself.

use std::collections::HashMap;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio_postgres::Client;
use tracing::{info, warn};
use uuid::Uuid;

use crate::actors::coordinator::Coordinator;
use crate::actors::dispatcher::Dispatcher;
use crate::actors::membership::Membership;
use crate::actors::outcomes::{replay_spool, Outcomes};
use crate::actors::process::ProcessActor;
use crate::actors::scheduler::Scheduler;
use crate::actors::supervisor::Supervisor;
use crate::cluster::Spool;
use crate::config::{host_name, ConfigError, NodeConfig};
use crate::db::cluster::name_session;
use crate::db::queries::{self, WorkerControl};
use crate::db::{self, migrate, Pool};
use crate::error::Error;
use crate::handler::Handlers;
use crate::live_output::LiveOutputs;
use crate::process::identity::{RunAs, RunAsPolicy};
use crate::process::policy::TaskPolicy;
use crate::process::{kill_leftovers, Guardian};
use crate::reload::ConfigSource;

/// The capture directory of this node, created (mode 0700) and swept of expired files; None when
/// capture is off or the directory cannot be made (logged: tasks run without capture).
fn capture_dir(config: &NodeConfig, installation: Uuid, worker_id: i64) -> Option<PathBuf> {
    if config.output_capture_bytes == 0 {
        return None;
    }
    let dir = config
        .state_dir()
        .join(installation.to_string())
        .join(worker_id.to_string())
        .join("output");
    let made = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir);
    match made {
        Ok(()) => {
            let removed = crate::process::capture::sweep(&dir, config.output_capture_keep);
            info!(dir = %dir.display(), removed, "capturing task output");
            Some(dir)
        }
        Err(e) => {
            warn!(dir = %dir.display(), error = %e, "cannot make the output capture directory; not capturing");
            None
        }
    }
}

/// Environment variable carrying `<installation id>/<worker id>` into every task process, so a
/// restarted node finds what its previous run left behind, and nothing of another installation.
pub const NODE_MARKER: &str = "PGTASKD_NODE";

/// One running task as the node sees it.
#[derive(Debug, Clone)]
pub struct RunEntry {
    pub run_id: Uuid,
    pub actor: Addr<ProcessActor>,
    /// A hand-over took this run away (`Verdict::HandedOver`): logged and counted once, however
    /// many reconciles see it before its process is gone.
    pub handed_over: bool,
}

/// The current address of each long-lived actor (replaced when the supervisor recreates one).
#[derive(Default)]
pub struct Peers {
    pub dispatcher: Option<Addr<Dispatcher>>,
    pub outcomes: Option<Addr<Outcomes>>,
    pub scheduler: Option<Addr<Scheduler>>,
    pub membership: Option<Addr<Membership>>,
    pub supervisor: Option<Addr<Supervisor>>,
    pub coordinator: Option<Addr<Coordinator>>,
}

/// What this node knows of its own standing in the cluster.
#[derive(Debug, Clone, Copy)]
pub struct Standing {
    /// When the last heartbeat that succeeded was sent (node clock, monotonic; a conservative
    /// bound on the database's `heartbeat_at`).
    pub last_heartbeat: Instant,
    /// The node fenced itself (cut off past `heartbeat_timeout`) and has not heartbeaten since.
    pub fenced: bool,
    /// The coordinator term this node holds for its group, if it is the coordinator.
    pub term: Option<i64>,
    /// When Membership last finished a heartbeat round, successful or not (what feeds the
    /// service manager's watchdog, `crate::service::Liveness`).
    pub last_round: Instant,
}

/// The OS user tasks of a group without `run_as` run as: the node's `run_as` user, else the
/// node's own (shown by `status`, which warns about root).
fn default_task_user(config: &NodeConfig) -> String {
    match &config.run_as {
        Some(spec) => crate::process::identity::split_spec(spec).0.to_owned(),
        None => {
            let uid = nix::unistd::Uid::effective();
            nix::unistd::User::from_uid(uid)
                .ok()
                .flatten()
                .map_or_else(|| format!("uid {uid}"), |u| u.name)
        }
    }
}

/// What every actor of a node shares.
pub struct NodeContext {
    pub config: NodeConfig,
    pub database_url: String,
    pub pool: Pool,
    pub worker_id: i64,
    pub group_id: i32,
    /// The value of `NODE_MARKER` in this node's task processes.
    pub node_marker: String,
    pub guardian: Option<Guardian>,
    /// What this node runs besides/instead of processes (embedded nodes; empty for `pgtaskd node`).
    pub options: NodeOptions,
    /// Outcomes that could not be written wait here (None: the state directory is unusable).
    pub spool: Option<Spool>,
    /// Whom tasks run as (`run_as`, and the users `run_as_allowed` lets a group name).
    pub run_as: RunAsPolicy,
    /// The running processes' tails, flushed while they run (`live_output`).
    pub live_output: LiveOutputs,
    /// Where full output is captured (`output_capture_bytes`; None: off, or the directory is
    /// unusable).
    pub output_dir: Option<PathBuf>,
    running: Mutex<HashMap<i64, RunEntry>>,
    peers: Mutex<Peers>,
    standing: Mutex<Standing>,
    live: Mutex<LiveSettings>,
}

/// What a reload (SIGHUP) may replace while the node runs (`crate::reload`).
#[derive(Debug, Clone)]
pub struct LiveSettings {
    /// The configuration last accepted (at start-up or by a reload): what the next reload is
    /// compared against. `config` above stays the start-up one.
    pub config: NodeConfig,
    /// Which programs tasks may run and their base environment (`allowed_programs`,
    /// `env_passthrough`).
    pub policy: Arc<TaskPolicy>,
}

impl NodeContext {
    /// The running tasks (task id → run). Poisoning is survivable: the map stays consistent.
    pub fn running(&self) -> MutexGuard<'_, HashMap<i64, RunEntry>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn peers(&self) -> MutexGuard<'_, Peers> {
        self.peers.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn dispatcher(&self) -> Option<Addr<Dispatcher>> {
        self.peers().dispatcher.clone()
    }

    pub fn outcomes(&self) -> Option<Addr<Outcomes>> {
        self.peers().outcomes.clone()
    }

    pub fn scheduler(&self) -> Option<Addr<Scheduler>> {
        self.peers().scheduler.clone()
    }

    pub fn membership(&self) -> Option<Addr<Membership>> {
        self.peers().membership.clone()
    }

    pub fn supervisor(&self) -> Option<Addr<Supervisor>> {
        self.peers().supervisor.clone()
    }

    pub fn coordinator(&self) -> Option<Addr<Coordinator>> {
        self.peers().coordinator.clone()
    }

    /// The settings a reload may change (poisoning is survivable: they are replaced whole).
    pub fn live(&self) -> MutexGuard<'_, LiveSettings> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The task policy in force now (a run keeps the one it started with).
    pub fn task_policy(&self) -> Arc<TaskPolicy> {
        self.live().policy.clone()
    }

    pub fn standing(&self) -> MutexGuard<'_, Standing> {
        self.standing.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Time since the last successful heartbeat was sent.
    pub fn heartbeat_age(&self) -> Duration {
        self.standing().last_heartbeat.elapsed()
    }

    /// Whether this node may act as coordinator: its own heartbeat is comfortably within
    /// `heartbeat_timeout` (one interval of margin), so it steps down before others can see it
    /// dead.
    pub fn may_coordinate(&self) -> bool {
        let cfg = &self.config;
        let standing = *self.standing();
        !standing.fenced
            && standing.last_heartbeat.elapsed()
                < cfg.heartbeat_timeout.saturating_sub(cfg.heartbeat_interval)
    }

    /// The session name prefix of this node's connections (`pgtaskd w<id> <purpose>`).
    pub fn session_purpose(&self, purpose: &str) -> String {
        format!("w{} {purpose}", self.worker_id)
    }
}

/// What kind of node this is: the binary runs processes; an embedded node runs handlers (and
/// processes only when asked).
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// In-process handlers by topic.
    pub handlers: Handlers,
    /// The topics of `handlers` (sent with every claim).
    pub topics: Vec<String>,
    /// Claim process tasks (a command) too.
    pub run_commands: bool,
    /// Embedded in another program: no signal handlers, no guardian process, no service manager.
    pub embedded: bool,
    /// Where SIGHUP reads the configuration again (None: SIGHUP changes nothing).
    pub reload: Option<ConfigSource>,
}

impl Default for NodeOptions {
    fn default() -> Self {
        NodeOptions {
            handlers: Handlers::default(),
            topics: Vec::new(),
            run_commands: true,
            embedded: false,
            reload: None,
        }
    }
}

/// A node that is connected, registered and holds its liveness lock, ready to start its actors.
pub struct PreparedNode {
    pub context: Arc<NodeContext>,
    pub membership_client: Client,
    pub control: WorkerControl,
}

/// Connects, migrates (or checks the schema), registers and locks the worker row, and cleans up
/// what a previous run of this worker id left behind.
pub async fn prepare(config: NodeConfig, mut options: NodeOptions) -> Result<PreparedNode, Error> {
    options.topics = options.handlers.topics();
    config.validate()?;
    let database_url = config.require_database_url()?.to_owned();

    let mut admin = db::connect_dedicated(&database_url, "migrate").await?;
    if config.auto_migrate {
        let report = migrate::migrate(&mut admin).await?;
        if !report.applied.is_empty() {
            info!(applied = ?report.applied, "schema migrated");
        }
    } else {
        migrate::check(&admin).await?;
    }
    drop(admin);

    let membership_client = db::connect_dedicated(&database_url, "membership").await?;
    let max_tasks = i32::try_from(config.max_tasks).unwrap_or(i32::MAX);
    let node_name = config.node_name();
    // Lock first, register second: a refused duplicate must not touch the live node's row.
    let worker_id = match config.worker_id {
        Some(id) => id,
        None => queries::allocate_worker_id(&membership_client).await?,
    };
    if !queries::try_liveness_lock(&membership_client, worker_id).await? {
        return Err(Error::WorkerIdInUse(worker_id));
    }
    name_session(&membership_client, worker_id, "membership").await?;
    let control = queries::register_worker(
        &membership_client,
        worker_id,
        config.group_id,
        max_tasks,
        &node_name,
        &host_name(),
        &default_task_user(&config),
    )
    .await?;

    // A previous run of this worker id may have died with tasks in hand: their processes go, and
    // the tasks go back to the queue.
    let installation = queries::installation_id(&membership_client).await?;
    let node_marker = format!("{installation}/{worker_id}");
    let killed = kill_leftovers(NODE_MARKER, &node_marker);
    if killed > 0 {
        warn!(
            worker_id,
            killed, "killed processes left by a previous run of this node"
        );
    }
    // Outcomes spooled by a previous run go first: a task whose outcome is known is not re-run.
    let spool = match Spool::open(&config.state_dir(), installation, worker_id) {
        Ok(spool) => {
            let replayed = replay_spool(&membership_client, &spool)
                .await
                .map_err(|e| Error::Spool(e.to_string()))?;
            if replayed.spooled > 0 {
                info!(
                    spooled = replayed.spooled,
                    written = replayed.written,
                    "replayed the outcome spool of a previous run"
                );
            }
            Some(spool)
        }
        Err(e) => {
            warn!(error = %e, "no outcome spool: outcomes are kept in memory while the database is unreachable");
            None
        }
    };
    let recovered =
        queries::hand_back(&membership_client, worker_id, "node restarted", None).await?;
    if recovered.total() > 0 {
        warn!(
            worker_id,
            requeued = recovered.requeued,
            failed = recovered.failed,
            cancelled = recovered.cancelled,
            "handed back the runs a previous run of this node left"
        );
    }

    // An embedded node's executable is someone else's program (no `__guardian` verb).
    let guardian = match std::env::current_exe() {
        _ if options.embedded => None,
        Ok(exe) => Some(
            Guardian::start(&exe, Some((NODE_MARKER, &node_marker)))
                .map_err(|e| Error::Guardian(e.to_string()))?,
        ),
        Err(e) => {
            warn!(error = %e, "cannot find our own executable; task processes may outlive a killed node");
            None
        }
    };

    let pool = db::create_pool(
        &database_url,
        &format!("w{worker_id} pool"),
        config.pool_size(),
    )?;
    let group_id = config.group_id;
    let run_as = match &config.run_as {
        Some(spec) => Some(RunAs::resolve(spec).map_err(|e| ConfigError::Invalid {
            key: "run_as",
            message: e.0,
        })?),
        None => None,
    };
    if run_as.is_none() && nix::unistd::Uid::effective().is_root() && !options.embedded {
        warn!("this node runs as root and no run_as is configured: tasks run as root (see docs/security.md)");
    }
    let policy = TaskPolicy::from_config(
        config.allowed_programs.as_deref(),
        &config.env_passthrough,
        run_as.as_ref(),
    )
    .map_err(|(key, e)| ConfigError::Invalid { key, message: e.0 })?;
    if policy.programs.allows_everything() && !options.embedded {
        info!("no allowed_programs configured: tasks may run any program on this host (see docs/security.md)");
    }
    let run_as = RunAsPolicy {
        default: config.run_as.clone().zip(run_as),
        allowed: config.run_as_allowed.clone(),
    };
    let live = LiveSettings {
        config: config.clone(),
        policy: Arc::new(policy),
    };
    let live_output = LiveOutputs::new(config.live_output_interval, config.tail_lines);
    let output_dir = capture_dir(&config, installation, worker_id);
    let context = Arc::new(NodeContext {
        config,
        database_url,
        pool,
        worker_id,
        group_id,
        node_marker,
        guardian,
        options,
        spool,
        run_as,
        live_output,
        output_dir,
        running: Mutex::new(HashMap::new()),
        peers: Mutex::new(Peers::default()),
        standing: Mutex::new(Standing {
            last_heartbeat: Instant::now(),
            fenced: false,
            term: None,
            last_round: Instant::now(),
        }),
        live: Mutex::new(live),
    });
    Ok(PreparedNode {
        context,
        membership_client,
        control,
    })
}

/// A node whose actors run: what its host needs to know of it.
pub struct StartedNode {
    pub worker_id: i64,
    pub supervisor: Addr<Supervisor>,
}

/// Runs a node until it is told to stop (a signal, a stop code, or its embedder): builds its
/// multi-thread runtime (threads named `thread_name`) under an actix `System`, prepares the node,
/// serves HTTP when configured, starts the actors, calls `on_start` and runs until the System
/// stops. The one start-up of `pgtaskd node` and of the embedded `Node`; a start-up error is
/// returned before `on_start` is called.
///
/// Every actor lives on the system arbiter (this thread), so the node span entered here is the
/// parent of every log line the actors write.
pub fn run(
    config: NodeConfig,
    options: NodeOptions,
    thread_name: &str,
    on_start: impl FnOnce(StartedNode),
) -> Result<(), Error> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name(thread_name)
        .build()
        .map_err(|source| Error::Io {
            context: "building the node's runtime".into(),
            source,
        })?;
    let system = System::with_tokio_rt(move || runtime);
    // SIGHUP's default action ends the process: handled from the start (a reload asked for
    // during start-up runs once the actors are up). An embedded node leaves signals alone.
    let hangup = if options.embedded {
        None
    } else {
        system.block_on(async {
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                .map_err(|e| warn!(error = %e, "cannot handle SIGHUP: no live reload"))
                .ok()
        })
    };
    let prepared = system.block_on(prepare(config, options))?;
    let context = prepared.context.clone();
    let span = tracing::info_span!(
        "node",
        worker_id = context.worker_id,
        group_id = context.group_id
    );
    let _entered = span.enter();
    let max_tasks = prepared.control.max_task_count;
    let worker_id = context.worker_id;
    let supervisor = system.block_on(async move {
        // Bind before starting the actors: a taken port is a start-up error, not a silent gap.
        if let Some(addr) = context.config.http {
            crate::http::start(context.clone(), addr)?;
        }
        Ok::<_, Error>(Supervisor::new(prepared).with_hangup(hangup).start())
    })?;
    info!(max_tasks, "node started");
    on_start(StartedNode {
        worker_id,
        supervisor,
    });
    system.run().map_err(|source| Error::Io {
        context: "running the actor system".into(),
        source,
    })
}
