//! Log output of the binary: `tracing` to stderr in `pretty`, `logfmt` or `json` form, filtered by
//! `RUST_LOG` (directives like `info,pgtaskd::actors=debug`), else by the node's `log_level`.
//! Span fields (node, worker, group, task and run ids) appear on every line in all three forms.
//! The filter sits behind a reload layer so that a node's SIGHUP can change `log_level` live
//! (`pgtaskd::reload::set_log_control`). Must never write to stdout (the client verbs print their
//! results there).

use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{fmt, reload, EnvFilter, Layer as _, Registry};

use pgtaskd::config::LogFormat;

/// The filter of a node and of `dev` when neither RUST_LOG nor `log_level` says otherwise.
const NODE_DEFAULT: &str = "info,tokio_postgres=warn,actix_server=warn";

/// `log_level` goes after these: the libraries' chatter stays quiet unless named explicitly.
const NODE_QUIET: &str = "tokio_postgres=warn,actix_server=warn";

/// The node's filter for a `log_level` (None: the default).
fn node_filter(log_level: Option<&str>) -> String {
    match log_level {
        Some(level) => format!("{NODE_QUIET},{level}"),
        None => NODE_DEFAULT.to_owned(),
    }
}

/// For nodes and `dev`: RUST_LOG, else `log_level`, else `info`; a node's SIGHUP may change
/// `log_level` later (RUST_LOG, when set, keeps winning).
pub fn init_logging(format: LogFormat, log_level: Option<&str>) {
    let rust_log = std::env::var("RUST_LOG").ok().filter(|v| !v.is_empty());
    let handle = init(format, rust_log.as_deref(), &node_filter(log_level));
    let Some(handle) = handle else { return };
    pgtaskd::reload::set_log_control(move |level| {
        if rust_log.is_some() {
            return Err("RUST_LOG is set in the node's environment and wins over log_level".into());
        }
        let filter = EnvFilter::builder()
            .parse(node_filter(level))
            .map_err(|e| e.to_string())?;
        handle.reload(filter).map_err(|e| e.to_string())
    });
}

/// For client verbs: warnings only unless RUST_LOG says otherwise.
pub fn init_client_logging(format: LogFormat) {
    let rust_log = std::env::var("RUST_LOG").ok().filter(|v| !v.is_empty());
    init(format, rust_log.as_deref(), "warn");
}

/// Installs the subscriber; returns the handle of its filter (None when logging was set up
/// already or could not be).
fn init(
    format: LogFormat,
    rust_log: Option<&str>,
    default: &str,
) -> Option<reload::Handle<EnvFilter, Registry>> {
    let filter = rust_log
        .and_then(|directives| EnvFilter::builder().parse(directives).ok())
        .unwrap_or_else(|| EnvFilter::new(default));
    let (filter, handle) = reload::Layer::new(filter);
    // A lost log reader (stderr piped into a process that exited) must not take the node down:
    // by default a failed write is reported with eprintln!, which panics on a broken stderr, and
    // a panic in the Supervisor's handler would leave the node deaf to SIGTERM.
    let base = fmt::layer()
        .with_writer(std::io::stderr)
        .log_internal_errors(false);
    let output = match format {
        LogFormat::Json => base.json().boxed(),
        LogFormat::Pretty => base.boxed(),
        LogFormat::Logfmt => base
            .event_format(tracing_logfmt::EventsFormatter::default())
            .fmt_fields(tracing_logfmt::FieldsFormatter::default())
            .boxed(),
    };
    match tracing_subscriber::registry()
        .with(filter)
        .with(output)
        .try_init()
    {
        Ok(()) => Some(handle),
        Err(e) => {
            eprintln!("pgtaskd: cannot set up logging: {e}");
            None
        }
    }
}
