//! The outcome spool: outcomes of runs that ended while the database could not be written, kept as
//! one MessagePack file per outcome (rmp-serde `to_vec_named`, so field order is not the format)
//! under `<state_dir>/<installation id>/<worker id>/spool/`. The Dispatcher replays them under the
//! run_id guard when the database answers again, and a restarted node replays them before it
//! re-queues what its previous run left, so nothing spooled is lost across a restart.
//!
//! Owns the directory layout and atomic writes (temp file, fsync, rename). Must never decide
//! whether an outcome is still valid: that is the database's run_id guard.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use uuid::Uuid;

use crate::db::queries::RunOutcome;

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot encode an outcome for the spool: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The spool directory of one node of one installation.
#[derive(Debug, Clone)]
pub struct Spool {
    dir: PathBuf,
}

/// The default state directory: `$XDG_STATE_HOME/pgtaskd`, `$HOME/.local/state/pgtaskd`, or
/// `/var/tmp/pgtaskd` (kept across reboots, unlike /tmp).
pub fn default_state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("pgtaskd");
    }
    if let Some(home) = std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(home).join(".local/state/pgtaskd");
    }
    PathBuf::from("/var/tmp/pgtaskd")
}

impl Spool {
    /// Opens (creating it) the spool of `worker_id` of `installation` under `state_dir`.
    pub fn open(state_dir: &Path, installation: Uuid, worker_id: i64) -> Result<Spool, SpoolError> {
        let dir = state_dir
            .join(installation.to_string())
            .join(worker_id.to_string())
            .join("spool");
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        Ok(Spool { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stores one outcome durably (replaces an earlier one of the same run).
    pub fn put(&self, outcome: &RunOutcome) -> Result<(), SpoolError> {
        let bytes = rmp_serde::to_vec_named(outcome)?;
        let name = format!("{}-{}.msgpack", outcome.task_id, outcome.run_id);
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let path = self.dir.join(name);
        let mut file = File::create(&tmp).map_err(io(&tmp))?;
        file.write_all(&bytes).map_err(io(&tmp))?;
        file.sync_all().map_err(io(&tmp))?;
        fs::rename(&tmp, &path).map_err(io(&path))?;
        if let Ok(dir) = File::open(&self.dir) {
            let _ = dir.sync_all();
        }
        Ok(())
    }

    /// Every spooled outcome with its file. A file that cannot be decoded is renamed `*.bad`
    /// (kept for a person to look at) and skipped.
    pub fn load(&self) -> Result<Vec<(PathBuf, RunOutcome)>, SpoolError> {
        let mut found = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io(&self.dir))? {
            let path = entry.map_err(io(&self.dir))?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("msgpack") {
                continue;
            }
            let bytes = fs::read(&path).map_err(io(&path))?;
            match rmp_serde::from_slice::<RunOutcome>(&bytes) {
                Ok(outcome) => found.push((path, outcome)),
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "unreadable spooled outcome set aside");
                    let _ = fs::rename(&path, path.with_extension("bad"));
                }
            }
        }
        found.sort_by_key(|(_, o)| o.task_id);
        Ok(found)
    }

    /// Whether anything is spooled.
    pub fn is_empty(&self) -> bool {
        self.load().map(|v| v.is_empty()).unwrap_or(true)
    }

    /// Deletes replayed files (the database has answered for them, written or fenced).
    pub fn remove(&self, paths: &[PathBuf]) {
        for path in paths {
            if let Err(e) = fs::remove_file(path) {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove a replayed spool file");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::queries::TaskState;

    fn outcome(task_id: i64) -> RunOutcome {
        RunOutcome {
            stdout_tail: Some("out".into()),
            stderr_tail: Some(String::new()),
            result: Some(serde_json::json!({"rows": [1, 2], "ok": true})),
            ..RunOutcome::success(task_id)
        }
    }

    #[test]
    fn outcomes_survive_a_reopen_and_bad_files_are_set_aside() {
        let root = tempfile::tempdir().expect("tempdir");
        let installation = Uuid::new_v4();
        let spool = Spool::open(root.path(), installation, 7).expect("open");
        assert!(spool.is_empty());
        let a = outcome(2);
        let b = outcome(1);
        spool.put(&a).expect("put a");
        spool.put(&b).expect("put b");
        std::fs::write(spool.dir().join("9-x.msgpack"), b"\xc1garbage").expect("write bad");

        let reopened = Spool::open(root.path(), installation, 7).expect("reopen");
        let loaded = reopened.load().expect("load");
        let ids: Vec<i64> = loaded.iter().map(|(_, o)| o.task_id).collect();
        assert_eq!(ids, vec![1, 2]);
        assert_eq!(loaded[1].1.run_id, a.run_id);
        assert_eq!(loaded[1].1.state, TaskState::Succeeded);
        assert!(reopened.dir().join("9-x.bad").exists());

        let paths: Vec<PathBuf> = loaded.into_iter().map(|(p, _)| p).collect();
        reopened.remove(&paths);
        assert!(reopened.is_empty());
        // another worker's spool is separate
        let other = Spool::open(root.path(), installation, 8).expect("other");
        other.put(&outcome(3)).expect("put");
        assert!(reopened.is_empty());
    }
}
