//! Task processes: spawning with bounded output tails, signalling process
//! groups, the per-node guardian that kills task groups when the node dies,
//! the start-up sweep of leftovers from a previous incarnation, and the node's policy of
//! what a task may run with which environment.
//!
//! Owns: everything that touches OS processes for tasks.
//! Must never: talk to the database, know about task states, or run a
//! command through a shell.

pub mod capture;
mod clone_spawn;
mod guardian;
pub mod identity;
mod kill;
mod leftovers;
pub mod policy;
mod spawn;
mod tail;
#[cfg(test)]
mod testutil;

pub use guardian::{guardian_main, run_guardian, Guardian, GuardianError, GUARDIAN_ARG};
pub use kill::{group_alive, signal_group, terminate_group, KillError, Termination};
pub use leftovers::{kill_leftovers, processes_with_env};
pub use spawn::{
    spawn, ExitOutcome, LiveTails, OutputAlarm, RunningProcess, SpawnError, SpawnSpec, TailSnapshot,
};
