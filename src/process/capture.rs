//! Full output capture: every byte a task process writes to stdout and stderr, up to a cap, in
//! files under the node's state directory (`<state_dir>/<installation>/<worker>/output/`), one per
//! attempt and stream: `<task id>-<attempt>-<run id>.stdout` / `.stderr`, mode 0600.
//!
//! Owns the file names, the capped writer the pipe readers use, finding an attempt's file again
//! and the retention sweep. Must never grow a file past its cap (plus one marker line saying the
//! capture stopped), fail a task because its capture failed (the capture stops, the task goes
//! on), or read or delete anything in the directory but its own files.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use uuid::Uuid;

/// The two streams of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }

    pub fn from_name(name: &str) -> Option<Stream> {
        match name {
            "stdout" => Some(Stream::Stdout),
            "stderr" => Some(Stream::Stderr),
            _ => None,
        }
    }
}

/// Where a run's output goes, and how much of each stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureTarget {
    pub dir: PathBuf,
    pub task_id: i64,
    pub attempt: i32,
    pub run_id: Uuid,
    /// Bytes kept at most per stream.
    pub max_bytes: u64,
}

impl CaptureTarget {
    pub fn path(&self, stream: Stream) -> PathBuf {
        self.dir.join(format!(
            "{}-{}-{}.{}",
            self.task_id,
            self.attempt,
            self.run_id,
            stream.name()
        ))
    }
}

/// A stream's capture file: writes stop at the cap, with one line saying so.
#[derive(Debug)]
pub(crate) struct CaptureFile {
    file: Option<File>,
    left: u64,
    max_bytes: u64,
}

impl CaptureFile {
    /// Creates the file (a new one: an existing name is refused, never appended to).
    pub(crate) fn create(target: &CaptureTarget, stream: Stream) -> io::Result<CaptureFile> {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(target.path(stream))?;
        Ok(CaptureFile {
            file: Some(file),
            left: target.max_bytes,
            max_bytes: target.max_bytes,
        })
    }

    /// Appends a chunk (a write to the page cache; the reader that calls it is the only
    /// writer). An I/O error ends the capture.
    pub(crate) fn write(&mut self, data: &[u8]) {
        let Some(file) = self.file.as_mut() else {
            return;
        };
        let keep = usize::try_from(self.left).map_or(data.len(), |left| data.len().min(left));
        let mut result = file.write_all(&data[..keep]);
        self.left -= keep as u64;
        let full = keep < data.len();
        if full && result.is_ok() {
            let marker = format!(
                "\n[pgtaskd: output capture stopped at {} bytes]\n",
                self.max_bytes
            );
            result = file.write_all(marker.as_bytes());
        }
        if let Err(e) = &result {
            tracing::debug!(error = %e, "task output capture failed; stopping it");
        }
        if full || result.is_err() {
            self.file = None;
        }
    }
}

/// The captured file of a task's attempt (its latest one under `dir` when `attempt` is None).
pub fn find(dir: &Path, task_id: i64, attempt: Option<i32>, stream: Stream) -> Option<PathBuf> {
    let prefix = format!("{task_id}-");
    let suffix = format!(".{}", stream.name());
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let rest = name.strip_prefix(&prefix)?.strip_suffix(&suffix)?;
            let (number, run) = rest.split_once('-')?;
            Uuid::parse_str(run).ok()?;
            let number: i32 = number.parse().ok()?;
            attempt
                .is_none_or(|a| a == number)
                .then(|| (number, entry.path()))
        })
        .max_by_key(|(number, _)| *number)
        .map(|(_, path)| path)
}

/// Whether a file name is one `CaptureTarget::path` makes.
fn is_capture_file(name: &str) -> bool {
    let Some(stem) = name
        .strip_suffix(".stdout")
        .or_else(|| name.strip_suffix(".stderr"))
    else {
        return false;
    };
    let mut parts = stem.splitn(3, '-');
    matches!(
        (parts.next(), parts.next(), parts.next()),
        (Some(id), Some(attempt), Some(run))
            if id.parse::<i64>().is_ok() && attempt.parse::<i32>().is_ok() && Uuid::parse_str(run).is_ok()
    )
}

/// Deletes the capture files under `dir` last written more than `keep` ago; returns how many.
pub fn sweep(dir: &Path, keep: Duration) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let Some(cutoff) = SystemTime::now().checked_sub(keep) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name();
        if !name.to_str().is_some_and(is_capture_file) {
            continue;
        }
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t < cutoff);
        if old && std::fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(dir: &Path, attempt: i32, max_bytes: u64) -> CaptureTarget {
        CaptureTarget {
            dir: dir.to_path_buf(),
            task_id: 42,
            attempt,
            run_id: Uuid::new_v4(),
            max_bytes,
        }
    }

    #[test]
    fn a_capture_stops_at_its_cap_with_a_marker() {
        let dir = tempfile::tempdir().expect("dir");
        let t = target(dir.path(), 1, 10);
        let mut f = CaptureFile::create(&t, Stream::Stdout).expect("create");
        f.write(b"0123456");
        f.write(b"789abc");
        f.write(b"more");
        let text = std::fs::read_to_string(t.path(Stream::Stdout)).expect("read");
        assert_eq!(
            text,
            "0123456789\n[pgtaskd: output capture stopped at 10 bytes]\n"
        );
        assert!(
            CaptureFile::create(&t, Stream::Stdout).is_err(),
            "never appends to an existing file"
        );
    }

    #[test]
    fn find_takes_the_attempt_asked_for_or_the_latest() {
        let dir = tempfile::tempdir().expect("dir");
        for attempt in [1, 2, 10] {
            let t = target(dir.path(), attempt, 100);
            CaptureFile::create(&t, Stream::Stdout).expect("create");
        }
        std::fs::write(dir.path().join("42-3-notauuid.stdout"), "x").expect("write");
        let name =
            |p: Option<PathBuf>| p.and_then(|p| p.file_name()?.to_str().map(|s| s[..5].to_owned()));
        assert_eq!(
            name(find(dir.path(), 42, None, Stream::Stdout)),
            Some("42-10".into())
        );
        assert_eq!(
            name(find(dir.path(), 42, Some(2), Stream::Stdout)),
            Some("42-2-".into())
        );
        assert_eq!(find(dir.path(), 42, Some(3), Stream::Stdout), None);
        assert_eq!(find(dir.path(), 42, None, Stream::Stderr), None);
        assert_eq!(find(dir.path(), 4, None, Stream::Stdout), None);
    }

    #[test]
    fn the_sweep_deletes_old_capture_files_only() {
        let dir = tempfile::tempdir().expect("dir");
        let old = target(dir.path(), 1, 100);
        let new = target(dir.path(), 2, 100);
        CaptureFile::create(&old, Stream::Stdout).expect("old");
        CaptureFile::create(&new, Stream::Stdout).expect("new");
        let other = dir.path().join("notes.txt");
        std::fs::write(&other, "keep me").expect("other");
        let past = SystemTime::now() - Duration::from_secs(3600);
        for path in [old.path(Stream::Stdout), other.clone()] {
            File::options()
                .write(true)
                .open(&path)
                .and_then(|f| f.set_modified(past))
                .expect("age it");
        }
        assert_eq!(sweep(dir.path(), Duration::from_secs(60)), 1);
        assert!(!old.path(Stream::Stdout).exists());
        assert!(new.path(Stream::Stdout).exists());
        assert!(other.exists(), "not a capture file: left alone");
    }
}
