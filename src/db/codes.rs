//! Every value the Rust code and the SQL schema must agree on, in one place: task state and
//! schedule period codes, advisory lock namespaces, notification channels and payloads, and the
//! verdicts of `long_task.running_state`. `tests/sql_constants.rs` checks each one against a
//! migrated database, so a change on either side fails a test instead of a node.
//!
//! Must never hold SQL statements (they live in the other `db` modules).

/// Task states, as stored in `long_task.task.state_id` (rows of `long_task.task_state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum TaskState {
    Draft,
    Waiting,
    Executing,
    CancelRequested,
    Succeeded,
    Failed,
    Cancelled,
}

impl TaskState {
    pub const ALL: [TaskState; 7] = [
        TaskState::Draft,
        TaskState::Waiting,
        TaskState::Executing,
        TaskState::CancelRequested,
        TaskState::Succeeded,
        TaskState::Failed,
        TaskState::Cancelled,
    ];

    /// The two-letter code.
    pub fn code(self) -> &'static str {
        match self {
            TaskState::Draft => "DR",
            TaskState::Waiting => "AW",
            TaskState::Executing => "AE",
            TaskState::CancelRequested => "AC",
            TaskState::Succeeded => "CS",
            TaskState::Failed => "CF",
            TaskState::Cancelled => "CC",
        }
    }

    /// Parses a code (`char(2)` values may come padded).
    pub fn from_code(code: &str) -> Option<TaskState> {
        let code = code.trim();
        TaskState::ALL.into_iter().find(|s| s.code() == code)
    }

    /// CS, CF or CC.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            TaskState::Succeeded | TaskState::Failed | TaskState::Cancelled
        )
    }
}

/// Schedule periods, as stored in `long_task.task.shed_period_id` (rows of `long_task.period`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    Second,
    Minute,
    Hour,
    Day,
    Week,
    Month,
}

impl Period {
    pub const ALL: [Period; 6] = [
        Period::Second,
        Period::Minute,
        Period::Hour,
        Period::Day,
        Period::Week,
        Period::Month,
    ];

    /// The three-letter code.
    pub fn code(self) -> &'static str {
        match self {
            Period::Second => "SEC",
            Period::Minute => "MIN",
            Period::Hour => "HOU",
            Period::Day => "DAY",
            Period::Week => "WEE",
            Period::Month => "MON",
        }
    }

    pub fn from_code(code: &str) -> Option<Period> {
        let code = code.trim();
        Period::ALL.into_iter().find(|p| p.code() == code)
    }

    /// The period's length in seconds (`long_task.period.step`); None for months, which follow
    /// the calendar.
    pub fn seconds(self) -> Option<u64> {
        match self {
            Period::Second => Some(1),
            Period::Minute => Some(60),
            Period::Hour => Some(3_600),
            Period::Day => Some(86_400),
            Period::Week => Some(604_800),
            Period::Month => None,
        }
    }

    /// Every code, comma-separated (for error messages).
    pub fn known_codes() -> String {
        Period::ALL.map(Period::code).join(", ")
    }
}

/// Advisory lock namespace (first int of the two-int key) of node liveness locks
/// (`long_task.ns_node()`).
pub const NS_NODE: i32 = 0x7074_6e01;

/// Advisory lock namespace of group coordinator locks (`long_task.ns_group()`).
pub const NS_GROUP: i32 = 0x7074_6e02;

/// The notification channel of a group (`long_task.channel(group_id)`).
pub fn group_channel(group_id: i32) -> String {
    format!("long_task_g{group_id}")
}

/// The channel on which worker rows announce changes (payload: the worker id).
pub const WORKER_CHANNEL: &str = "long_task_worker";

/// The channel on which a statement that ended tasks (CS, CF, CC), or deleted unfinished ones,
/// names them (payload: `TaskIds`), whoever wrote it; for followers (`pgtaskd wait`), not nodes.
pub const DONE_CHANNEL: &str = "long_task_done";

/// The channel on which a node's live-output flush names the tasks whose tails it wrote
/// (payload: `TaskIds`); for followers (`pgtaskd logs -f`, the HTTP output stream).
pub const OUTPUT_CHANNEL: &str = "long_task_output";

/// The payload of `DONE_CHANNEL` and `OUTPUT_CHANNEL`: task ids separated by spaces, or `*` (too
/// many to list: every follower reads again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskIds {
    Listed(Vec<i64>),
    Many,
}

impl TaskIds {
    pub fn from_payload(payload: &str) -> Option<TaskIds> {
        if payload == "*" {
            return Some(TaskIds::Many);
        }
        payload
            .split(' ')
            .map(|id| id.parse().ok())
            .collect::<Option<Vec<i64>>>()
            .map(TaskIds::Listed)
    }

    /// Whether a follower of `id` must read again (an unreadable payload counts as yes).
    pub fn concerns(payload: &str, id: i64) -> bool {
        match TaskIds::from_payload(payload) {
            Some(TaskIds::Listed(ids)) => ids.contains(&id),
            Some(TaskIds::Many) | None => true,
        }
    }
}

/// What a notification on a group's channel says (its payload).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupEvent {
    /// Tasks became runnable.
    Wake,
    /// A running task was cancelled, deleted, reassigned or finished by someone else.
    Ctl,
    /// A schedule or a retry delay changed.
    Sched,
    /// A node joined the group.
    Peer,
    /// SQL consumers took leases; the earliest deadline among them, in milliseconds since the
    /// epoch by the database clock (payload `lease <ms>`).
    Lease { due_ms: i64 },
}

impl GroupEvent {
    /// One of each kind (a lease with deadline 0), for tests.
    pub const KINDS: [GroupEvent; 5] = [
        GroupEvent::Wake,
        GroupEvent::Ctl,
        GroupEvent::Sched,
        GroupEvent::Peer,
        GroupEvent::Lease { due_ms: 0 },
    ];

    pub fn payload(self) -> String {
        match self {
            GroupEvent::Wake => "wake".into(),
            GroupEvent::Ctl => "ctl".into(),
            GroupEvent::Sched => "sched".into(),
            GroupEvent::Peer => "peer".into(),
            GroupEvent::Lease { due_ms } => format!("lease {due_ms}"),
        }
    }

    pub fn from_payload(payload: &str) -> Option<GroupEvent> {
        Some(match payload {
            "wake" => GroupEvent::Wake,
            "ctl" => GroupEvent::Ctl,
            "sched" => GroupEvent::Sched,
            "peer" => GroupEvent::Peer,
            other => GroupEvent::Lease {
                due_ms: other.strip_prefix("lease ")?.parse().ok()?,
            },
        })
    }
}

/// Advisory lock namespace of the ready ring's rotation (`long_task.ns_ring()`).
pub const NS_RING: i32 = 0x7074_6e03;

/// Advisory lock namespace of taking a task's entry off the ready ring (`long_task.ns_claim()`).
pub const NS_CLAIM: i32 = 0x7074_6e04;

/// What the database says a node should do with a task it is running (`long_task.running_state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Keep running.
    Run,
    /// The task was cancelled: kill it and report CC.
    Cancel,
    /// The task is no longer this run's (re-queued, reassigned, finished by someone else): kill it, write nothing.
    Fenced,
    /// The row is gone: kill it, write nothing.
    Deleted,
    /// An operator handed the node's tasks over (`long_task.hand_over_node`) and this run was
    /// re-queued for another node: kill it, write nothing (as `Fenced`, told apart in logs and
    /// metrics).
    HandedOver,
}

impl Verdict {
    pub const ALL: [Verdict; 5] = [
        Verdict::Run,
        Verdict::Cancel,
        Verdict::Fenced,
        Verdict::Deleted,
        Verdict::HandedOver,
    ];

    pub fn code(self) -> &'static str {
        match self {
            Verdict::Run => "run",
            Verdict::Cancel => "cancel",
            Verdict::Fenced => "fenced",
            Verdict::Deleted => "deleted",
            Verdict::HandedOver => "handed_over",
        }
    }

    pub fn from_code(code: &str) -> Option<Verdict> {
        Verdict::ALL.into_iter().find(|v| v.code() == code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for s in TaskState::ALL {
            assert_eq!(TaskState::from_code(s.code()), Some(s));
        }
        assert_eq!(TaskState::from_code("XX"), None);
        assert_eq!(TaskState::from_code("CS "), Some(TaskState::Succeeded));
        for p in Period::ALL {
            assert_eq!(Period::from_code(p.code()), Some(p));
        }
        for e in GroupEvent::KINDS {
            assert_eq!(GroupEvent::from_payload(&e.payload()), Some(e));
        }
        assert_eq!(
            GroupEvent::from_payload("lease 1733051234500"),
            Some(GroupEvent::Lease {
                due_ms: 1_733_051_234_500
            })
        );
        assert_eq!(GroupEvent::from_payload("lease soon"), None);
        assert_eq!(GroupEvent::from_payload("leases"), None);
        for v in Verdict::ALL {
            assert_eq!(Verdict::from_code(v.code()), Some(v));
        }
        assert_eq!(Verdict::from_code("maybe"), None);
    }

    #[test]
    fn task_id_payloads() {
        assert_eq!(
            TaskIds::from_payload("3 14 15"),
            Some(TaskIds::Listed(vec![3, 14, 15]))
        );
        assert_eq!(TaskIds::from_payload("*"), Some(TaskIds::Many));
        assert_eq!(TaskIds::from_payload("3  4"), None);
        assert!(TaskIds::concerns("3 14", 14));
        assert!(!TaskIds::concerns("3 14", 1));
        assert!(TaskIds::concerns("*", 1));
        assert!(TaskIds::concerns("garbage", 1), "unreadable: read again");
    }
}
