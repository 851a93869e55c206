//! Who a task runs as, and within which limits: the node's `run_as` user and `task_limits`
//! (docs/security.md).
//!
//! Owns: resolving `run_as` (`user` or `user:group`) to ids and supplementary groups once at
//! start-up, in the parent (the child only makes system calls), the rlimits of `task_limits`,
//! and the child-side step applied between `fork` and `exec`: `setgroups`, `setgid`, `setuid`,
//! then `setrlimit` — in that order, so the task cannot regain what it gave up.
//! Must never: run in the child anything but async-signal-safe system calls, or let a task run
//! as root by accident when a user was asked for (a failed step fails the spawn).

use std::ffi::CString;

use nix::unistd::{Gid, Group, Uid, User};
use serde::{Deserialize, Serialize};

/// A resolved OS identity for task processes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (the user's, as `initgroups` would set them).
    pub groups: Vec<u32>,
    pub home: String,
}

/// A `run_as` that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct IdentityError(pub String);

/// A `run_as` spec, `user` or `user:group`, split into its user and group.
pub fn split_spec(spec: &str) -> (&str, Option<&str>) {
    match spec.split_once(':') {
        Some((user, group)) => (user, Some(group)),
        None => (spec, None),
    }
}

impl RunAs {
    /// Resolves `user` or `user:group` on this host. Switching user needs a node started as
    /// root (or already running as that user).
    pub fn resolve(spec: &str) -> Result<RunAs, IdentityError> {
        let (user_name, group_name) = split_spec(spec);
        let user = User::from_name(user_name)
            .map_err(|e| IdentityError(format!("cannot look up user '{user_name}': {e}")))?
            .ok_or_else(|| IdentityError(format!("no user '{user_name}' on this host")))?;
        let gid = match group_name {
            Some(name) => {
                Group::from_name(name)
                    .map_err(|e| IdentityError(format!("cannot look up group '{name}': {e}")))?
                    .ok_or_else(|| IdentityError(format!("no group '{name}' on this host")))?
                    .gid
            }
            None => user.gid,
        };
        let c_name = CString::new(user_name)
            .map_err(|_| IdentityError(format!("'{user_name}' holds a NUL byte")))?;
        let mut groups: Vec<u32> = nix::unistd::getgrouplist(&c_name, gid)
            .map_err(|e| IdentityError(format!("cannot list the groups of '{user_name}': {e}")))?
            .into_iter()
            .map(Gid::as_raw)
            .collect();
        groups.sort_unstable();
        groups.dedup();
        let me = Uid::effective();
        if !me.is_root() && me != user.uid {
            return Err(IdentityError(format!(
                "run_as = '{spec}' needs a node started as root (this node runs as uid {me})"
            )));
        }
        Ok(RunAs {
            name: user_name.to_owned(),
            uid: user.uid.as_raw(),
            gid: gid.as_raw(),
            groups,
            home: user.dir.display().to_string(),
        })
    }
}

/// Whom a node runs a task as: its default (`run_as`, resolved at start-up) unless the task's
/// group asks for another user (`group_settings.run_as`), which the node accepts only when its
/// `run_as_allowed` names that user — the database cannot make a node switch to anyone else.
#[derive(Debug, Clone, Default)]
pub struct RunAsPolicy {
    /// The node's `run_as` as written, and resolved.
    pub default: Option<(String, RunAs)>,
    /// The users (`run_as_allowed`) a group's `run_as` may name.
    pub allowed: Vec<String>,
}

impl RunAsPolicy {
    /// The identity for a task whose group asks for `asked` (`None`: the node's default). A
    /// user the node may not switch to, or one that does not exist here, is an error naming it.
    pub fn for_group(&self, asked: Option<&str>) -> Result<Option<RunAs>, IdentityError> {
        let Some(spec) = asked else {
            return Ok(self.default.as_ref().map(|(_, who)| who.clone()));
        };
        if let Some((default_spec, who)) = &self.default {
            if default_spec == spec {
                return Ok(Some(who.clone()));
            }
        }
        let (user, _) = split_spec(spec);
        if !self.allowed.iter().any(|a| a == user || a == spec) {
            return Err(IdentityError(format!(
                "the group's run_as '{spec}' is not in this node's run_as_allowed ({})",
                if self.allowed.is_empty() {
                    "empty: only the node's own run_as".to_owned()
                } else {
                    self.allowed.join(", ")
                }
            )));
        }
        RunAs::resolve(spec).map(Some)
    }
}

/// Limits applied to every task process of the node (`task_limits`); unset ones are not
/// changed. `memory` is the address space (`RLIMIT_AS`), `cpu_seconds` CPU time (`RLIMIT_CPU`:
/// SIGXCPU at the limit, SIGKILL a second later), `open_files` (`RLIMIT_NOFILE`), `processes`
/// (`RLIMIT_NPROC`, counted per user: meaningful with `run_as`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TaskLimits {
    #[serde(with = "crate::resources::opt_bytes_serde")]
    pub memory: Option<u64>,
    pub cpu_seconds: Option<u64>,
    pub open_files: Option<u64>,
    pub processes: Option<u64>,
}

impl TaskLimits {
    pub fn is_empty(&self) -> bool {
        *self == TaskLimits::default()
    }

    /// The limits of one task: what the database asks for (the task's, else its group's),
    /// bounded by the node's own `task_limits` — the lower of two set limits, else the one set.
    pub fn bounded_by(&self, node: &TaskLimits) -> TaskLimits {
        fn lower(a: Option<u64>, b: Option<u64>) -> Option<u64> {
            match (a, b) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
        }
        TaskLimits {
            memory: lower(self.memory, node.memory),
            cpu_seconds: lower(self.cpu_seconds, node.cpu_seconds),
            open_files: lower(self.open_files, node.open_files),
            processes: lower(self.processes, node.processes),
        }
    }

    /// `(resource, soft, hard)` for `setrlimit`. CPU gets one second of grace between the
    /// SIGXCPU of the soft limit and the SIGKILL of the hard one.
    pub fn rlimits(&self) -> Vec<(libc::__rlimit_resource_t, u64, u64)> {
        let mut out = Vec::new();
        if let Some(bytes) = self.memory {
            out.push((libc::RLIMIT_AS, bytes, bytes));
        }
        if let Some(secs) = self.cpu_seconds {
            out.push((libc::RLIMIT_CPU, secs, secs.saturating_add(1)));
        }
        if let Some(n) = self.open_files {
            out.push((libc::RLIMIT_NOFILE, n, n));
        }
        if let Some(n) = self.processes {
            out.push((libc::RLIMIT_NPROC, n, n));
        }
        out
    }

    /// Which limit most likely ended a run that failed this way (`None`: no limit explains it).
    pub fn explain(&self, exit_code: Option<i32>, signal: Option<i32>) -> Option<String> {
        if signal == Some(libc::SIGXCPU)
            || (signal == Some(libc::SIGKILL) && self.cpu_seconds.is_some())
        {
            if let Some(secs) = self.cpu_seconds {
                return Some(format!("limit cpu_seconds = {secs} reached"));
            }
        }
        let failed = exit_code.is_some_and(|c| c != 0) || signal.is_some();
        match self.memory {
            Some(bytes) if failed => Some(format!(
                "limit memory = {} was in force (an allocation past it fails)",
                crate::humanize::human_bytes(i64::try_from(bytes).unwrap_or(i64::MAX))
            )),
            _ => None,
        }
    }
}

/// What the child does between `fork` and `exec`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChildSetup {
    pub run_as: Option<RunAs>,
    pub limits: Vec<(libc::__rlimit_resource_t, u64, u64)>,
}

impl ChildSetup {
    pub fn is_empty(&self) -> bool {
        self.run_as.is_none() && self.limits.is_empty()
    }

    /// Runs in the forked child: system calls only (no allocation, no locks).
    pub fn apply(&self) -> std::io::Result<()> {
        if let Some(who) = &self.run_as {
            // SAFETY: plain system calls on data prepared by the parent.
            unsafe {
                if libc::setgroups(who.groups.len(), who.groups.as_ptr()) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::setgid(who.gid) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::setuid(who.uid) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
        }
        for &(resource, soft, hard) in &self.limits {
            let limit = libc::rlimit {
                rlim_cur: soft,
                rlim_max: hard,
            };
            // SAFETY: a system call with a valid pointer to a local value.
            if unsafe { libc::setrlimit(resource, &limit) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_resolve_and_unknown_ones_are_named() {
        let err = RunAs::resolve("no-such-user-pgtaskd").unwrap_err();
        assert!(err.0.contains("no-such-user-pgtaskd"), "{err}");
        if Uid::effective().is_root() {
            let nobody = RunAs::resolve("nobody").expect("nobody exists");
            assert_ne!(nobody.uid, 0);
            let err = RunAs::resolve("nobody:no-such-group-pgtaskd").unwrap_err();
            assert!(err.0.contains("no-such-group-pgtaskd"), "{err}");
        }
    }

    #[test]
    fn limits_become_rlimits_and_explain_a_failure() {
        let limits = TaskLimits {
            memory: Some(64 << 20),
            cpu_seconds: Some(2),
            ..TaskLimits::default()
        };
        assert_eq!(limits.rlimits().len(), 2);
        assert!(limits
            .explain(None, Some(libc::SIGXCPU))
            .expect("cpu")
            .contains("cpu_seconds = 2"));
        assert!(limits
            .explain(Some(1), None)
            .expect("memory")
            .contains("memory"));
        assert_eq!(limits.explain(Some(0), None), None);
        assert!(TaskLimits::default().explain(Some(1), None).is_none());
    }

    #[test]
    fn a_group_may_name_only_users_the_node_allows() {
        let policy = RunAsPolicy {
            default: None,
            allowed: vec!["nobody".to_owned()],
        };
        assert_eq!(policy.for_group(None).expect("default"), None);
        let err = policy.for_group(Some("root")).unwrap_err();
        assert!(
            err.0.contains("run_as_allowed") && err.0.contains("nobody"),
            "{err}"
        );
        if Uid::effective().is_root() {
            let who = policy
                .for_group(Some("nobody"))
                .expect("allowed")
                .expect("a user");
            assert_eq!(who.name, "nobody");
            let missing = RunAsPolicy {
                default: None,
                allowed: vec!["no-such-user-pgtaskd".to_owned()],
            };
            let err = missing.for_group(Some("no-such-user-pgtaskd")).unwrap_err();
            assert!(err.0.contains("no user"), "{err}");
        }
    }

    #[test]
    fn the_node_bounds_what_the_database_asks_for() {
        let node = TaskLimits {
            memory: Some(100),
            cpu_seconds: Some(10),
            ..TaskLimits::default()
        };
        let asked = TaskLimits {
            memory: Some(500),
            cpu_seconds: Some(2),
            open_files: Some(64),
            ..TaskLimits::default()
        };
        let effective = asked.bounded_by(&node);
        assert_eq!(effective.memory, Some(100), "the node's bound wins");
        assert_eq!(effective.cpu_seconds, Some(2), "a lower task limit wins");
        assert_eq!(effective.open_files, Some(64), "only the task sets it");
        assert_eq!(effective.processes, None);
        assert_eq!(TaskLimits::default().bounded_by(&node), node);
    }
}
