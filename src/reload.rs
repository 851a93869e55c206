//! Reloading a running node's configuration (SIGHUP): reads the configuration again the way the
//! node was started (the binary's flags and environment over the file), compares it with the one
//! in force, applies what can change live and names what needs a restart.
//!
//! Owns which settings are live and how each is applied:
//!
//! | key | applied by |
//! |---|---|
//! | `log_level` | the log filter of the process (`set_log_control`, registered by the binary) |
//! | `max_tasks` | `worker.max_task_count`, the row the Dispatcher's limit already follows |
//! | `allowed_programs`, `env_passthrough` | a new `TaskPolicy` for runs that start from now on |
//!
//! Every other changed key is reported as needing a restart and keeps its running value. A file
//! that does not parse or validate is refused whole: nothing changes. Must never apply part of
//! a configuration that failed validation, and never log a secret (only key names are printed
//! for settings that are not live).

use std::collections::BTreeSet;
use std::sync::{Arc, OnceLock};

use crate::config::NodeConfig;
use crate::db::queries;
use crate::node::NodeContext;
use crate::process::policy::TaskPolicy;

/// The settings SIGHUP applies without a restart (TOML keys).
pub const LIVE_KEYS: &[&str] = &[
    "log_level",
    "max_tasks",
    "allowed_programs",
    "env_passthrough",
];

/// Reads the node's configuration again (the binary layers flags and environment over the file
/// exactly as at start-up, and validates).
#[derive(Clone)]
pub struct ConfigSource(Arc<dyn Fn() -> Result<NodeConfig, String> + Send + Sync>);

impl ConfigSource {
    pub fn new(load: impl Fn() -> Result<NodeConfig, String> + Send + Sync + 'static) -> Self {
        ConfigSource(Arc::new(load))
    }

    fn load(&self) -> Result<NodeConfig, String> {
        (self.0)()
    }
}

impl std::fmt::Debug for ConfigSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConfigSource")
    }
}

type LogControl = Box<dyn Fn(Option<&str>) -> Result<(), String> + Send + Sync>;

static LOG_CONTROL: OnceLock<LogControl> = OnceLock::new();

/// Registers how `log_level` is applied in this process (the binary's logging set-up does; the
/// first registration stays). `None` asks for the default filter.
pub fn set_log_control(
    control: impl Fn(Option<&str>) -> Result<(), String> + Send + Sync + 'static,
) {
    let _ = LOG_CONTROL.set(Box::new(control));
}

fn set_log_level(level: Option<&str>) -> Result<(), String> {
    match LOG_CONTROL.get() {
        Some(control) => control(level),
        None => Err("this process's log filter cannot be changed while it runs".to_owned()),
    }
}

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("this node has no configuration to read again (embedded)")]
    NoSource,
    #[error("{0}")]
    Invalid(String),
}

/// What a reload did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReloadReport {
    /// Live settings applied, as `key: old → new`.
    pub applied: Vec<String>,
    /// Changed settings that take effect only after a restart (key names).
    pub need_restart: Vec<String>,
    /// Live settings that could not be applied (`key: why`); they keep their running value and
    /// are tried again by the next reload.
    pub failed: Vec<String>,
}

/// The keys whose values differ, split into live ones and ones that need a restart.
pub fn diff(
    old: &NodeConfig,
    new: &NodeConfig,
) -> Result<(Vec<&'static str>, Vec<String>), String> {
    let old = toml::Table::try_from(old).map_err(|e| e.to_string())?;
    let new = toml::Table::try_from(new).map_err(|e| e.to_string())?;
    let keys: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    let mut live = Vec::new();
    let mut restart = Vec::new();
    for key in keys {
        if old.get(key) == new.get(key) {
            continue;
        }
        match LIVE_KEYS.iter().find(|k| **k == key.as_str()) {
            Some(k) => live.push(*k),
            None => restart.push(key.clone()),
        }
    }
    Ok((live, restart))
}

fn show_programs(list: &Option<Vec<String>>) -> String {
    match list {
        None => "unset (every program)".to_owned(),
        Some(list) => format!("{list:?}"),
    }
}

/// Reads the configuration again and applies it (see the module doc). Runs on the node's
/// runtime; the file is read on a blocking thread.
pub async fn reload(node: &NodeContext) -> Result<ReloadReport, ReloadError> {
    let source = node.options.reload.clone().ok_or(ReloadError::NoSource)?;
    let new = tokio::task::spawn_blocking(move || source.load())
        .await
        .map_err(|e| ReloadError::Invalid(e.to_string()))?
        .map_err(ReloadError::Invalid)?;
    let old = node.live().config.clone();
    let (live, need_restart) = diff(&old, &new).map_err(ReloadError::Invalid)?;
    let mut report = ReloadReport {
        need_restart,
        ..ReloadReport::default()
    };
    // Everything that can fail on its own is built before anything is applied.
    let policy_changed = live
        .iter()
        .any(|k| *k == "allowed_programs" || *k == "env_passthrough");
    let policy = if policy_changed {
        let run_as = node.run_as.default.as_ref().map(|(_, who)| who);
        let policy = TaskPolicy::from_config(
            new.allowed_programs.as_deref(),
            &new.env_passthrough,
            run_as,
        )
        .map_err(|(key, e)| ReloadError::Invalid(format!("invalid value for `{key}`: {e}")))?;
        Some(Arc::new(policy))
    } else {
        None
    };

    let mut accepted = old.clone();
    if live.contains(&"max_tasks") {
        let limit = i32::try_from(new.max_tasks).unwrap_or(i32::MAX);
        let written = async {
            let conn = node.pool.get().await?;
            queries::set_max_task_count(&**conn, node.worker_id, limit).await
        }
        .await;
        match written {
            Ok(()) => {
                report
                    .applied
                    .push(format!("max_tasks: {} → {}", old.max_tasks, new.max_tasks));
                accepted.max_tasks = new.max_tasks;
                if let Some(m) = node.membership() {
                    m.do_send(crate::actors::membership::MembershipMsg::Refresh);
                }
            }
            Err(e) => report.failed.push(format!("max_tasks: {e}")),
        }
    }
    if live.contains(&"log_level") {
        match set_log_level(new.log_level.as_deref()) {
            Ok(()) => {
                let show = |l: &Option<String>| l.clone().unwrap_or_else(|| "default".to_owned());
                report.applied.push(format!(
                    "log_level: {} → {}",
                    show(&old.log_level),
                    show(&new.log_level)
                ));
                accepted.log_level = new.log_level.clone();
            }
            Err(e) => report.failed.push(format!("log_level: {e}")),
        }
    }
    if live.contains(&"allowed_programs") {
        report.applied.push(format!(
            "allowed_programs: {} → {}",
            show_programs(&old.allowed_programs),
            show_programs(&new.allowed_programs)
        ));
        accepted.allowed_programs = new.allowed_programs.clone();
    }
    if live.contains(&"env_passthrough") {
        report.applied.push(format!(
            "env_passthrough: {:?} → {:?}",
            old.env_passthrough, new.env_passthrough
        ));
        accepted.env_passthrough = new.env_passthrough.clone();
    }
    let mut settings = node.live();
    settings.config = accepted;
    if let Some(policy) = policy {
        settings.policy = policy;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_and_restart_keys_are_told_apart() {
        let old = NodeConfig::default();
        let new = NodeConfig {
            max_tasks: old.max_tasks + 1,
            allowed_programs: Some(vec!["/usr/bin/*".into()]),
            heartbeat_interval: old.heartbeat_interval * 2,
            database_url: Some("postgresql://u:secret@h/db".into()),
            ..old.clone()
        };
        let (live, restart) = diff(&old, &new).expect("diff");
        assert_eq!(live, vec!["allowed_programs", "max_tasks"]);
        assert_eq!(restart, vec!["database_url", "heartbeat_interval"]);
        let (live, restart) = diff(&old, &old.clone()).expect("diff");
        assert!(live.is_empty() && restart.is_empty());
    }

    #[test]
    fn every_live_key_is_a_config_key() {
        let mut cfg = NodeConfig {
            log_level: Some("debug".into()),
            allowed_programs: Some(Vec::new()),
            ..NodeConfig::default()
        };
        cfg.env_passthrough.push("TZ".into());
        let table = toml::Table::try_from(&cfg).expect("table");
        for key in LIVE_KEYS {
            assert!(table.contains_key(*key), "{key} is not a NodeConfig key");
        }
    }
}
