//! What a node lets a task run, and with which environment: the node's side of least privilege
//! (docs/security.md). The database is not a trust boundary for the node's host, so whatever a
//! row asks for is checked here again before anything starts.
//!
//! Owns: resolving a task's program to the absolute path that will be executed (the `PATH` the
//! task gets, or its working directory), the node's program allow-list (`allowed_programs`,
//! glob patterns matched against that path), and the task's environment: a documented minimum
//! plus the variables the node's config passes through — never the node's whole environment.
//! Must never: start a process, read the database, or pass a variable nobody asked for.

use std::path::{Component, Path, PathBuf};

use glob::{MatchOptions, Pattern};

use super::identity::RunAs;

/// The `PATH` a task gets when the node has none.
pub const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Variables a node never passes to a task, even when `env_passthrough` names them: they carry
/// the node's own database credentials.
pub const NEVER_PASSED: &[&str] = &["DATABASE_URL", "PGPASSWORD", "PGPASSFILE"];

/// Why a program may not run on this node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("program '{program}' is not in this node's allowed_programs ({rules})")]
    NotAllowed { program: String, rules: String },
    #[error("program '{program}' is not found in the task's PATH ({path})")]
    NotFound { program: String, path: String },
}

/// An invalid pattern or variable name in the node's config.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PolicyError(pub String);

/// The node's program allow-list: `None` lets every program run (the embedded default);
/// a list lets only programs whose absolute path matches one of its glob patterns (`*` stays
/// within one directory, `**` crosses directories): `["/usr/bin/*", "/opt/jobs/**"]`.
#[derive(Debug, Clone, Default)]
pub struct ProgramRules {
    patterns: Option<Vec<Pattern>>,
}

const MATCH: MatchOptions = MatchOptions {
    case_sensitive: true,
    require_literal_separator: true,
    require_literal_leading_dot: false,
};

impl ProgramRules {
    /// Compiles the config's patterns; each must be an absolute path pattern.
    pub fn new(allowed: Option<&[String]>) -> Result<ProgramRules, PolicyError> {
        let Some(allowed) = allowed else {
            return Ok(ProgramRules { patterns: None });
        };
        let mut patterns = Vec::with_capacity(allowed.len());
        for text in allowed {
            if !text.starts_with('/') {
                return Err(PolicyError(format!(
                    "'{text}' is not an absolute path pattern (programs are matched by the absolute path that runs, e.g. '/usr/bin/*')"
                )));
            }
            let pattern = Pattern::new(text).map_err(|e| PolicyError(format!("'{text}': {e}")))?;
            patterns.push(pattern);
        }
        Ok(ProgramRules {
            patterns: Some(patterns),
        })
    }

    /// Whether every program may run (no allow-list configured).
    pub fn allows_everything(&self) -> bool {
        self.patterns.is_none()
    }

    /// Checks a resolved program path (see `resolve_program`).
    pub fn check(&self, program: &Path) -> Result<(), Refusal> {
        let Some(patterns) = &self.patterns else {
            return Ok(());
        };
        if patterns.iter().any(|p| p.matches_path_with(program, MATCH)) {
            return Ok(());
        }
        let rules = if patterns.is_empty() {
            "an empty list: no program may run".to_owned()
        } else {
            patterns
                .iter()
                .map(Pattern::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        };
        Err(Refusal::NotAllowed {
            program: program.display().to_string(),
            rules,
        })
    }
}

/// The absolute, lexically normalised path a task's `program` (its `argv[0]`) runs: a name
/// without `/` is looked up in `path_var` (the task's `PATH`) as `execvp` would; a relative
/// path is taken from `cwd` (else the node's working directory). `.` and `..` are resolved
/// without following symbolic links, so `/usr/bin/../../tmp/x` is checked as `/tmp/x`.
pub fn resolve_program(
    program: &str,
    path_var: &str,
    cwd: Option<&Path>,
) -> Result<PathBuf, Refusal> {
    if program.contains('/') {
        let path = Path::new(program);
        let absolute = if path.is_absolute() {
            path.to_path_buf()
        } else {
            let base = match cwd {
                Some(dir) if dir.is_absolute() => dir.to_path_buf(),
                Some(dir) => std::env::current_dir().unwrap_or_default().join(dir),
                None => std::env::current_dir().unwrap_or_default(),
            };
            base.join(path)
        };
        return Ok(normalise(&absolute));
    }
    for dir in path_var.split(':').filter(|d| !d.is_empty()) {
        let candidate = Path::new(dir).join(program);
        if is_executable_file(&candidate) {
            let candidate = if candidate.is_absolute() {
                candidate
            } else {
                std::env::current_dir().unwrap_or_default().join(candidate)
            };
            return Ok(normalise(&candidate));
        }
    }
    Err(Refusal::NotFound {
        program: program.to_owned(),
        path: path_var.to_owned(),
    })
}

fn is_executable_file(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn normalise(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for part in path.components() {
        match part {
            Component::Normal(name) => out.push(name),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

/// The part of every task's environment that is the same for all of a node's tasks: `PATH`,
/// `HOME` and `LANG` (the node's, or defaults; with `run_as`, `HOME`, `USER` and `LOGNAME` are
/// that user's), then the variables `env_passthrough` names that the node has. Computed once at
/// start-up.
#[derive(Debug, Clone, Default)]
pub struct BaseEnvironment {
    vars: Vec<(String, String)>,
}

impl BaseEnvironment {
    /// From the node's environment (`lookup`, `std::env::var` in production).
    pub fn new(
        passthrough: &[String],
        run_as: Option<&RunAs>,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<BaseEnvironment, PolicyError> {
        let mut vars = vec![
            (
                "PATH".to_owned(),
                lookup("PATH").unwrap_or_else(|| DEFAULT_PATH.to_owned()),
            ),
            (
                "HOME".to_owned(),
                lookup("HOME").unwrap_or_else(|| "/".to_owned()),
            ),
            (
                "LANG".to_owned(),
                lookup("LANG").unwrap_or_else(|| "C.UTF-8".to_owned()),
            ),
        ];
        if let Some(who) = run_as {
            vars[1].1 = who.home.clone();
            vars.push(("USER".to_owned(), who.name.clone()));
            vars.push(("LOGNAME".to_owned(), who.name.clone()));
        }
        for name in passthrough {
            check_variable_name(name)?;
            if ["HOME", "USER", "LOGNAME"].contains(&name.as_str()) && run_as.is_some() {
                continue; // the task's user decides these
            }
            if NEVER_PASSED.contains(&name.as_str()) {
                return Err(PolicyError(format!(
                    "'{name}' holds the node's database credentials and is never passed to tasks"
                )));
            }
            if let Some(value) = lookup(name) {
                match vars.iter_mut().find(|(k, _)| k == name) {
                    Some(slot) => slot.1 = value,
                    None => vars.push((name.clone(), value)),
                }
            }
        }
        Ok(BaseEnvironment { vars })
    }

    /// The task's `PATH` (used to resolve its program).
    pub fn path(&self) -> &str {
        self.vars
            .iter()
            .find(|(k, _)| k == "PATH")
            .map_or(DEFAULT_PATH, |(_, v)| v.as_str())
    }

    /// The base variables followed by `extra` (the task's own `PGTASKD_*` values).
    pub fn with(&self, extra: impl IntoIterator<Item = (String, String)>) -> Vec<(String, String)> {
        let mut vars = self.vars.clone();
        vars.extend(extra);
        vars
    }

    /// One task's environment: the base, with `HOME`, `USER` and `LOGNAME` of `user` when the
    /// task runs as another user than the node's default (its group's `run_as`), then the task's
    /// own variables (checked by [`task_env`]; they may replace a passed-through one), then
    /// `own` (the `PGTASKD_*` values, which a task cannot set).
    pub fn for_task(
        &self,
        user: Option<&RunAs>,
        task_vars: Vec<(String, String)>,
        own: impl IntoIterator<Item = (String, String)>,
    ) -> Vec<(String, String)> {
        let mut vars = self.vars.clone();
        let set = |vars: &mut Vec<(String, String)>, name: &str, value: String| match vars
            .iter_mut()
            .find(|(k, _)| k == name)
        {
            Some(slot) => slot.1 = value,
            None => vars.push((name.to_owned(), value)),
        };
        if let Some(who) = user {
            set(&mut vars, "HOME", who.home.clone());
            set(&mut vars, "USER", who.name.clone());
            set(&mut vars, "LOGNAME", who.name.clone());
        }
        for (name, value) in task_vars {
            set(&mut vars, &name, value);
        }
        vars.extend(own);
        vars
    }
}

/// Names a task's own `env` may not set: they change how an allowed program is loaded or
/// started (the same rule as the database's `long_task.check_env`), or are the node's.
fn reserved_for_the_node(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    upper.starts_with("LD_")
        || upper.starts_with("PGTASKD_")
        || ["PATH", "IFS", "BASH_ENV", "ENV", "GCONV_PATH"].contains(&upper.as_str())
}

/// A task's own environment (`task.env`, an object of names to strings), checked again on the
/// node: the database is not a trust boundary for the node's host. Same limits as the
/// database's: 64 variables, names of 128 bytes, values of 4096 bytes, 32 KiB in all.
pub fn task_env(env: Option<&serde_json::Value>) -> Result<Vec<(String, String)>, PolicyError> {
    let Some(env) = env.filter(|e| !e.is_null()) else {
        return Ok(Vec::new());
    };
    let object = env
        .as_object()
        .ok_or_else(|| PolicyError("the task's env is not a JSON object".to_owned()))?;
    if object.len() > 64 {
        return Err(PolicyError(
            "the task's env holds more than 64 variables".to_owned(),
        ));
    }
    let mut total = 0;
    let mut vars = Vec::with_capacity(object.len());
    for (name, value) in object {
        check_variable_name(name)?;
        if name.len() > 128 || reserved_for_the_node(name) {
            return Err(PolicyError(format!(
                "the task's env may not set '{name}' (LD_*, PGTASKD_*, PATH, IFS, BASH_ENV, ENV and GCONV_PATH are the node's)"
            )));
        }
        let value = value.as_str().ok_or_else(|| {
            PolicyError(format!("the task's env value of '{name}' is not a string"))
        })?;
        if value.len() > 4096 || value.contains('\0') {
            return Err(PolicyError(format!(
                "the task's env value of '{name}' is longer than 4096 bytes or holds a NUL"
            )));
        }
        total += name.len() + value.len();
        vars.push((name.clone(), value.to_owned()));
    }
    if total > 32768 {
        return Err(PolicyError(
            "the task's env holds more than 32 KiB".to_owned(),
        ));
    }
    Ok(vars)
}

/// A portable environment variable name: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn check_variable_name(name: &str) -> Result<(), PolicyError> {
    let mut chars = name.chars();
    let valid = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if valid {
        Ok(())
    } else {
        Err(PolicyError(format!(
            "'{name}' is not a valid environment variable name"
        )))
    }
}

/// The node's rules for every task it starts: which programs, and the base environment. Built
/// at start-up and again on a reload (SIGHUP) that changes `allowed_programs` or
/// `env_passthrough`; a run uses the policy in force when it starts.
#[derive(Debug, Clone, Default)]
pub struct TaskPolicy {
    pub programs: ProgramRules,
    pub environment: BaseEnvironment,
}

impl TaskPolicy {
    /// From the config's `allowed_programs` and `env_passthrough` (values from the node's own
    /// environment); errors name the config key.
    pub fn from_config(
        allowed_programs: Option<&[String]>,
        env_passthrough: &[String],
        run_as: Option<&RunAs>,
    ) -> Result<TaskPolicy, (&'static str, PolicyError)> {
        let programs = ProgramRules::new(allowed_programs).map_err(|e| ("allowed_programs", e))?;
        let environment =
            BaseEnvironment::new(env_passthrough, run_as, |name| std::env::var(name).ok())
                .map_err(|e| ("env_passthrough", e))?;
        Ok(TaskPolicy {
            programs,
            environment,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(list: &[&str]) -> ProgramRules {
        let list: Vec<String> = list.iter().map(|s| s.to_string()).collect();
        ProgramRules::new(Some(&list)).expect("patterns")
    }

    #[test]
    fn no_list_allows_everything_and_a_list_only_its_matches() {
        assert!(ProgramRules::new(None)
            .expect("none")
            .check(Path::new("/bin/rm"))
            .is_ok());
        let r = rules(&["/usr/bin/*", "/opt/jobs/**"]);
        assert!(r.check(Path::new("/usr/bin/true")).is_ok());
        assert!(r.check(Path::new("/opt/jobs/a/b/run")).is_ok());
        // `*` does not cross a directory
        let refused = r.check(Path::new("/usr/bin/x/evil")).unwrap_err();
        assert!(refused.to_string().contains("/usr/bin/x/evil"), "{refused}");
        assert!(refused.to_string().contains("/usr/bin/*"), "{refused}");
        assert!(r.check(Path::new("/bin/rm")).is_err());
        let none = rules(&[]);
        assert!(none
            .check(Path::new("/usr/bin/true"))
            .unwrap_err()
            .to_string()
            .contains("no program may run"));
    }

    #[test]
    fn patterns_must_be_absolute_and_valid() {
        let err = ProgramRules::new(Some(&["true".to_owned()])).unwrap_err();
        assert!(err.0.contains("absolute"), "{err}");
        assert!(ProgramRules::new(Some(&["/usr/bin/[".to_owned()])).is_err());
    }

    #[test]
    fn programs_resolve_through_path_and_dot_dot_is_resolved() {
        let sh = resolve_program("sh", "/nonexistent:/bin:/usr/bin", None).expect("sh");
        assert!(sh.is_absolute() && sh.ends_with("sh"), "{sh:?}");
        assert_eq!(
            resolve_program("/usr/bin/../../tmp/x", "", None).expect("path"),
            PathBuf::from("/tmp/x")
        );
        assert_eq!(
            resolve_program("./run.sh", "", Some(Path::new("/srv/jobs"))).expect("relative"),
            PathBuf::from("/srv/jobs/run.sh")
        );
        let err = resolve_program("no-such-program-xyz", "/bin", None).unwrap_err();
        assert!(err.to_string().contains("no-such-program-xyz"), "{err}");
        // `..` cannot escape an allow-listed directory
        let r = rules(&["/usr/bin/*"]);
        let escaped = resolve_program("/usr/bin/../../tmp/x", "", None).expect("path");
        assert!(r.check(&escaped).is_err());
    }

    #[test]
    fn the_environment_is_the_minimum_plus_what_is_named() {
        let node = |name: &str| match name {
            "PATH" => Some("/node/bin".to_owned()),
            "DATABASE_URL" => Some("postgres://u:secret@h/db".to_owned()),
            "SENTINEL" => Some("x".to_owned()),
            "TZ" => Some("UTC".to_owned()),
            _ => None,
        };
        let env = BaseEnvironment::new(&["TZ".to_owned(), "MISSING".to_owned()], None, node)
            .expect("env")
            .with([("PGTASKD_TASK_ID".to_owned(), "7".to_owned())]);
        let names: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["PATH", "HOME", "LANG", "TZ", "PGTASKD_TASK_ID"]);
        assert!(env.contains(&("PATH".to_owned(), "/node/bin".to_owned())));
        assert!(!env.iter().any(|(_, v)| v.contains("secret")));
        let err = BaseEnvironment::new(&["DATABASE_URL".to_owned()], None, node).unwrap_err();
        assert!(err.0.contains("never passed"), "{err}");
        assert!(BaseEnvironment::new(&["A-B".to_owned()], None, node).is_err());
    }

    #[test]
    fn a_task_env_is_checked_and_cannot_replace_what_the_node_sets() {
        let ok = task_env(Some(&serde_json::json!({"TZ": "UTC", "REPORT": "daily"}))).expect("ok");
        assert_eq!(ok.len(), 2);
        for bad in [
            serde_json::json!({"LD_PRELOAD": "/tmp/evil.so"}),
            serde_json::json!({"PATH": "/tmp"}),
            serde_json::json!({"PGTASKD_TASK_ID": "1"}),
            serde_json::json!({"A-B": "x"}),
            serde_json::json!({"N": 1}),
            serde_json::json!(["not", "an", "object"]),
        ] {
            assert!(task_env(Some(&bad)).is_err(), "{bad} must be refused");
        }
        assert!(task_env(None).expect("none").is_empty());
        let base = BaseEnvironment::new(&[], None, |_| None).expect("base");
        let who = RunAs {
            name: "alice".into(),
            uid: 1000,
            gid: 1000,
            groups: vec![],
            home: "/home/alice".into(),
        };
        let env = base.for_task(
            Some(&who),
            vec![("LANG".into(), "de_DE.UTF-8".into())],
            [("PGTASKD_TASK_ID".to_owned(), "7".to_owned())],
        );
        assert!(env.contains(&("HOME".to_owned(), "/home/alice".to_owned())));
        assert!(env.contains(&("USER".to_owned(), "alice".to_owned())));
        assert!(env.contains(&("LANG".to_owned(), "de_DE.UTF-8".to_owned())));
        assert_eq!(env.iter().filter(|(k, _)| k == "LANG").count(), 1);
        assert_eq!(env.last().map(|(k, _)| k.as_str()), Some("PGTASKD_TASK_ID"));
    }
}
