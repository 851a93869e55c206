//! Log output of the binary: `tracing` to stderr in `pretty`, `logfmt` or `json` form, filtered by
//! `RUST_LOG` (directives like `info,pgtaskd::actors=debug`). Span fields (node, worker, group,
//! task and run ids) appear on every line in all three forms. Must never write to stdout (the
//! client verbs print their results there).

use tracing_subscriber::EnvFilter;

use pgtaskd::config::LogFormat;

/// For nodes and `dev`: `info` unless RUST_LOG says otherwise.
pub fn init_logging(format: LogFormat) {
    init(format, "info,tokio_postgres=warn,actix_server=warn");
}

/// For client verbs: warnings only unless RUST_LOG says otherwise.
pub fn init_client_logging(format: LogFormat) {
    init(format, "warn");
}

fn init(format: LogFormat, default: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // A lost log reader (stderr piped into a process that exited) must not take the node down:
    // by default a failed write is reported with eprintln!, which panics on a broken stderr, and
    // a panic in the Supervisor's handler would leave the node deaf to SIGTERM.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .log_internal_errors(false);
    let result = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Logfmt => builder
            .event_format(tracing_logfmt::EventsFormatter::default())
            .fmt_fields(tracing_logfmt::FieldsFormatter::default())
            .try_init(),
    };
    if let Err(e) = result {
        eprintln!("pgtaskd: cannot set up logging: {e}");
    }
}
