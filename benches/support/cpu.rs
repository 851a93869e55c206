//! CPU time by who spent it, from `/proc` (Linux): the machine as a whole (`/proc/stat`), one
//! process with the children it reaped (`/proc/<pid>/stat`), and every PostgreSQL process on
//! the machine. A bench takes a [`Snapshot`] before and after a phase and prints the
//! difference, so a throughput figure comes with where its CPU went.

use std::collections::HashSet;
use std::fs;

/// CPU seconds of one process: its own threads, and the children it waited for.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessCpu {
    pub own: f64,
    pub reaped_children: f64,
}

/// The fields after the command name in `/proc/<pid>/stat` (the name may hold spaces and
/// parentheses: everything up to the last `)` is skipped).
fn stat_fields(pid: &str) -> Option<(String, Vec<String>)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_owned();
    let rest = text.get(close + 1..)?;
    Some((comm, rest.split_whitespace().map(str::to_owned).collect()))
}

fn ticks_per_second() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map_or(100.0, |t| t as f64)
}

/// After the name: state(0) ppid(1) … utime(11) stime(12) cutime(13) cstime(14).
fn parse_cpu(fields: &[String], tick: f64) -> Option<(i64, ProcessCpu)> {
    let num = |i: usize| fields.get(i)?.parse::<f64>().ok();
    let ppid = fields.get(1)?.parse::<i64>().ok()?;
    Some((
        ppid,
        ProcessCpu {
            own: (num(11)? + num(12)?) / tick,
            reaped_children: (num(13)? + num(14)?) / tick,
        },
    ))
}

/// The CPU of process `pid` (`"self"` for the bench itself); None once it is gone.
pub fn process(pid: &str) -> Option<ProcessCpu> {
    let (_, fields) = stat_fields(pid)?;
    parse_cpu(&fields, ticks_per_second()).map(|(_, cpu)| cpu)
}

/// Every PostgreSQL process's own CPU, plus what the postmasters reaped (backends and
/// autovacuum workers that exited): the difference of two readings is what the servers spent
/// in between, whether a backend lived through it or not. Counts every server on the machine.
pub fn postgres() -> f64 {
    let tick = ticks_per_second();
    let Ok(dir) = fs::read_dir("/proc") else {
        return f64::NAN;
    };
    // (pid, ppid, cpu) of every process whose command name is postgres (a backend's title is
    // rewritten, its command name is not)
    let procs: Vec<(i64, i64, ProcessCpu)> = dir
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|name| {
            let pid = name.parse::<i64>().ok()?;
            let (comm, fields) = stat_fields(&name)?;
            let (ppid, cpu) = parse_cpu(&fields, tick)?;
            (comm == "postgres").then_some((pid, ppid, cpu))
        })
        .collect();
    let pids: HashSet<i64> = procs.iter().map(|(pid, _, _)| *pid).collect();
    procs
        .iter()
        .map(|(_, ppid, cpu)| {
            let postmaster = !pids.contains(ppid);
            cpu.own + if postmaster { cpu.reaped_children } else { 0.0 }
        })
        .sum()
}

/// Busy and idle CPU seconds of the whole machine (`/proc/stat`, all CPUs: idle and iowait are
/// idle, the rest busy).
#[derive(Debug, Clone, Copy, Default)]
pub struct MachineCpu {
    pub busy: f64,
    pub idle: f64,
}

pub fn machine() -> MachineCpu {
    let tick = ticks_per_second();
    let text = fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = text.lines().find(|l| l.starts_with("cpu ")) else {
        return MachineCpu {
            busy: f64::NAN,
            idle: f64::NAN,
        };
    };
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let at = |i: usize| v.get(i).copied().unwrap_or(0.0) / tick;
    // user nice system idle iowait irq softirq steal (guest time is inside user)
    MachineCpu {
        busy: at(0) + at(1) + at(2) + at(5) + at(6) + at(7),
        idle: at(3) + at(4),
    }
}

/// One reading of everything a phase is charged with.
#[derive(Debug, Clone, Copy)]
pub struct Snapshot {
    pub machine: MachineCpu,
    /// The process under test (the node, or the bench itself for the raw spawns).
    pub process: ProcessCpu,
    pub postgres: f64,
}

impl Snapshot {
    pub fn take(pid: &str) -> Snapshot {
        Snapshot {
            machine: machine(),
            process: process(pid).unwrap_or_default(),
            postgres: postgres(),
        }
    }
}

/// What a phase cost, per unit of work (a task, a spawn), in milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct PhaseCpu {
    /// The process's own threads.
    pub own_ms: f64,
    /// The children it reaped (the task processes, or the raw `/bin/true`s).
    pub children_ms: f64,
    pub postgres_ms: f64,
    /// Share of the machine's CPU time that was busy over the phase, any process.
    pub busy_share: f64,
}

impl PhaseCpu {
    pub fn between(before: &Snapshot, after: &Snapshot, units: usize) -> PhaseCpu {
        let per = |secs: f64| 1000.0 * secs / units.max(1) as f64;
        let busy = after.machine.busy - before.machine.busy;
        let idle = after.machine.idle - before.machine.idle;
        PhaseCpu {
            own_ms: per(after.process.own - before.process.own),
            children_ms: per(after.process.reaped_children - before.process.reaped_children),
            postgres_ms: per(after.postgres - before.postgres),
            busy_share: busy / (busy + idle),
        }
    }

    pub fn total_ms(&self) -> f64 {
        self.own_ms + self.children_ms + self.postgres_ms
    }
}
