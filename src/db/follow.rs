//! Following tasks from outside a node (`pgtaskd wait`, `logs -f`, the HTTP output stream): what
//! a follower reads (a task's state and exit, its live output), the listening connection that
//! tells it when to read again (`DONE_CHANNEL`, `OUTPUT_CHANNEL`), and the cursor that turns two
//! reads of a bounded tail into the text printed since.
//!
//! A follower outlives its connection: when a read or the listening connection fails because
//! the connection is gone (a PostgreSQL failover or restart, a terminated backend), it connects
//! again — LISTEN first, then the read again, so nothing is missed — for up to
//! `RECONNECT_BUDGET`, and only then gives up.
//!
//! Must never write anything: a follower only reads and listens.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_postgres::{Client, GenericClient};
use uuid::Uuid;

use super::codes::{TaskIds, TaskState};
use super::{connect_listening, listen, DbError, Notice};

/// Where a task stands, for a waiter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskStatus {
    pub id: i64,
    pub state: TaskState,
    pub exit_code: Option<i32>,
    pub exit_signal: Option<i32>,
    pub error: Option<String>,
}

fn state_of(code: &str) -> Result<TaskState, DbError> {
    TaskState::from_code(code).ok_or(DbError::Unexpected("unknown task state"))
}

/// The tasks of `ids` that exist, in no particular order.
pub async fn statuses(
    client: &impl GenericClient,
    ids: &[i64],
) -> Result<Vec<TaskStatus>, DbError> {
    let rows = client
        .query(
            "SELECT id, state_id::text, exit_code, exit_signal, error
               FROM long_task.task WHERE id = ANY ($1)",
            &[&ids],
        )
        .await
        .map_err(DbError::query("reading task states"))?;
    rows.iter()
        .map(|r| {
            Ok(TaskStatus {
                id: r.get(0),
                state: state_of(r.get(1))?,
                exit_code: r.get(2),
                exit_signal: r.get(3),
                error: r.get(4),
            })
        })
        .collect()
}

/// A task's output as it is now: its current (or last) attempt's tails, and how it stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputView {
    pub status: TaskStatus,
    pub run_id: Option<Uuid>,
    pub attempt: i32,
    pub stdout_tail: Option<String>,
    pub stderr_tail: Option<String>,
}

/// One task's output; None when there is no such task.
pub async fn output(client: &impl GenericClient, id: i64) -> Result<Option<OutputView>, DbError> {
    let row = client
        .query_opt(
            "SELECT id, state_id::text, exit_code, exit_signal, error, run_id, attempt,
                    stdout_tail, stderr_tail
               FROM long_task.task WHERE id = $1",
            &[&id],
        )
        .await
        .map_err(DbError::query("reading a task's output"))?;
    let Some(r) = row else { return Ok(None) };
    Ok(Some(OutputView {
        status: TaskStatus {
            id: r.get(0),
            state: state_of(r.get(1))?,
            exit_code: r.get(2),
            exit_signal: r.get(3),
            error: r.get(4),
        },
        run_id: r.get(5),
        attempt: r.get(6),
        stdout_tail: r.get(7),
        stderr_tail: r.get(8),
    }))
}

/// The tails an ended attempt left in `task_run` (None when it has no history row).
async fn attempt_tails(
    client: &impl GenericClient,
    id: i64,
    run_id: Uuid,
) -> Result<Option<(Option<String>, Option<String>)>, DbError> {
    let row = client
        .query_opt(
            "SELECT stdout_tail, stderr_tail FROM long_task.task_run
              WHERE task_id = $1 AND run_id = $2",
            &[&id, &run_id],
        )
        .await
        .map_err(DbError::query("reading an attempt's output"))?;
    Ok(row.map(|r| (r.get(0), r.get(1))))
}

/// Reads task `id` and what its output added since `cursor` last saw it, in order: when a new
/// attempt began meanwhile, first the end of the one the cursor followed (from `task_run`: a
/// retry can be claimed again before a follower reads the row), then the new one's. None when
/// there is no such task.
pub async fn read_output(
    client: &impl GenericClient,
    id: i64,
    cursor: &mut OutputCursor,
) -> Result<Option<(OutputView, Vec<Advance>)>, DbError> {
    let Some(view) = output(client, id).await? else {
        return Ok(None);
    };
    let mut advances = Vec::new();
    if let Some(old) = cursor
        .run_id
        .filter(|old| view.run_id.is_some_and(|r| r != *old))
    {
        if let Some((stdout_tail, stderr_tail)) = attempt_tails(client, id, old).await? {
            let ended = OutputView {
                run_id: Some(old),
                stdout_tail,
                stderr_tail,
                ..view.clone()
            };
            advances.push(cursor.advance(&ended));
        }
    }
    advances.push(cursor.advance(&view));
    advances.retain(|a| !a.is_empty());
    Ok(Some((view, advances)))
}

/// What arrived since the last read of a task's output.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Advance {
    /// A new attempt began (its number): what follows is its output.
    pub new_attempt: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// Output went by between two reads that the tails no longer hold (more than `tail_lines`
    /// lines, or `tail_bytes` bytes, between two flushes).
    pub gap: bool,
}

impl Advance {
    pub fn is_empty(&self) -> bool {
        self.new_attempt.is_none() && self.stdout.is_empty() && self.stderr.is_empty() && !self.gap
    }
}

/// Turns successive reads of a task's tails into the text each added. The tails are a sliding
/// window over the stream: what is new is what follows the longest end of the last read that
/// the new one starts with. Best effort by construction: when the window slid past everything
/// read before, `gap` says so; when a full window repeats itself exactly (the same lines again
/// and again), the repetition cannot be seen and is not printed.
#[derive(Debug, Clone, Default)]
pub struct OutputCursor {
    run_id: Option<Uuid>,
    stdout: String,
    stderr: String,
}

impl OutputCursor {
    pub fn advance(&mut self, view: &OutputView) -> Advance {
        let mut advance = Advance::default();
        // a task queued again keeps its last attempt's tails (and no run) until a claim
        if let Some(run_id) = view.run_id.filter(|r| Some(*r) != self.run_id) {
            if self.run_id.is_some() {
                advance.new_attempt = Some(view.attempt);
            }
            self.run_id = Some(run_id);
            self.stdout.clear();
            self.stderr.clear();
        }
        let stdout = view.stdout_tail.as_deref().unwrap_or("");
        let stderr = view.stderr_tail.as_deref().unwrap_or("");
        let (out, out_gap) = new_text(&self.stdout, stdout);
        let (err, err_gap) = new_text(&self.stderr, stderr);
        advance.stdout = out.to_owned();
        advance.stderr = err.to_owned();
        advance.gap = out_gap || err_gap;
        self.stdout = stdout.to_owned();
        self.stderr = stderr.to_owned();
        advance
    }
}

/// The part of `new` that follows what `old` showed (see `OutputCursor`), and whether some
/// output between the two was lost. Linear in the lengths (a KMP scan of `old` for `new`'s
/// prefixes).
pub fn new_text<'a>(old: &str, new: &'a str) -> (&'a str, bool) {
    if old.is_empty() || new.is_empty() {
        return (new, false);
    }
    let (o, n) = (old.as_bytes(), new.as_bytes());
    // failure function of `new`
    let mut fail = vec![0usize; n.len()];
    let mut k = 0;
    for i in 1..n.len() {
        while k > 0 && n[i] != n[k] {
            k = fail[k - 1];
        }
        if n[i] == n[k] {
            k += 1;
        }
        fail[i] = k;
    }
    // the longest prefix of `new` that `old` ends with
    let mut q = 0;
    for &c in o {
        if q == n.len() {
            q = fail[q - 1];
        }
        while q > 0 && n[q] != c {
            q = fail[q - 1];
        }
        if n[q] == c {
            q += 1;
        }
    }
    match new.get(q..) {
        Some(rest) => (rest, q == 0),
        None => (new, true), // not at a char boundary: cannot happen for valid text
    }
}

/// A connection that listens on the followers' channels and reads.
pub struct Follower {
    url: String,
    purpose: String,
    channels: Vec<String>,
    client: Client,
    notices: mpsc::UnboundedReceiver<Notice>,
    _ended: oneshot::Receiver<String>,
}

/// What a follower woke up for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Woke {
    /// A notification concerning the followed tasks (read again).
    Notified,
    /// The deadline passed first.
    Deadline,
}

impl Follower {
    /// Connects and listens on `channels` (LISTEN before the first read: nothing is missed).
    /// A server that cannot be reached is an error at once; a connection lost after it was
    /// made (before its LISTEN was through) is taken again like any later loss.
    pub async fn connect(url: &str, purpose: &str, channels: &[&str]) -> Result<Follower, DbError> {
        let mut follower = Follower::unlistened(url, purpose, channels).await?;
        match follower.listen().await {
            Err(_) if follower.client.is_closed() => follower.reconnect().await?,
            listened => listened?,
        }
        Ok(follower)
    }

    /// A connection for a follower that does not listen yet.
    async fn unlistened(url: &str, purpose: &str, channels: &[&str]) -> Result<Follower, DbError> {
        let (tx, notices) = mpsc::unbounded_channel();
        let (client, ended) = connect_listening(url, purpose, tx).await?;
        Ok(Follower {
            url: url.to_owned(),
            purpose: purpose.to_owned(),
            channels: channels.iter().map(|c| (*c).to_owned()).collect(),
            client,
            notices,
            _ended: ended,
        })
    }

    /// A connection that listens, or the first error (no retry: `reconnect` retries).
    async fn listening(url: &str, purpose: &str, channels: &[&str]) -> Result<Follower, DbError> {
        let follower = Follower::unlistened(url, purpose, channels).await?;
        follower.listen().await?;
        Ok(follower)
    }

    async fn listen(&self) -> Result<(), DbError> {
        listen(&self.client, &self.channels, "listening for task changes").await
    }

    /// The connection, for reads (its own `statuses` and `read_output` reconnect when it is
    /// lost).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// `statuses` on this connection, connecting again when it was lost.
    pub async fn statuses(&mut self, ids: &[i64]) -> Result<Vec<TaskStatus>, DbError> {
        loop {
            match statuses(&self.client, ids).await {
                Err(_) if self.client.is_closed() => self.reconnect().await?,
                done => return done,
            }
        }
    }

    /// `read_output` on this connection, connecting again when it was lost (the cursor moves
    /// only once every query of a read succeeded).
    pub async fn read_output(
        &mut self,
        id: i64,
        cursor: &mut OutputCursor,
    ) -> Result<Option<(OutputView, Vec<Advance>)>, DbError> {
        loop {
            match read_output(&self.client, id, cursor).await {
                Err(_) if self.client.is_closed() => self.reconnect().await?,
                done => return done,
            }
        }
    }

    /// Connects again (LISTEN before anything is read), retrying with back-off for up to
    /// `RECONNECT_BUDGET`: a promoted standby or a restarted server takes seconds to accept.
    pub async fn reconnect(&mut self) -> Result<(), DbError> {
        let give_up = Instant::now() + RECONNECT_BUDGET;
        let mut pause = Duration::from_millis(100);
        let channels: Vec<&str> = self.channels.iter().map(String::as_str).collect();
        loop {
            match Follower::listening(&self.url, &self.purpose, &channels).await {
                Ok(again) => {
                    tracing::info!(purpose = %self.purpose, "follower reconnected");
                    *self = again;
                    return Ok(());
                }
                Err(e) if Instant::now() + pause >= give_up => return Err(e),
                Err(e) => {
                    tracing::debug!(error = %e, "follower reconnecting");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// Waits until a notification names one of the tasks `follows` accepts (or says `*`), or
    /// `deadline`; the notifications already queued are taken too (one read serves them all).
    pub async fn next(
        &mut self,
        follows: impl Fn(i64) -> bool,
        deadline: Option<Instant>,
    ) -> Result<Woke, DbError> {
        let concerns = |n: &Notice| match TaskIds::from_payload(&n.payload) {
            Some(TaskIds::Listed(ids)) => ids.into_iter().any(&follows),
            Some(TaskIds::Many) | None => true,
        };
        loop {
            let notice = match deadline {
                Some(at) => match tokio::time::timeout_at(at, self.notices.recv()).await {
                    Ok(n) => n,
                    Err(_) => return Ok(Woke::Deadline),
                },
                None => self.notices.recv().await,
            };
            let Some(notice) = notice else {
                // the connection is gone: back, anything may have changed meanwhile
                self.reconnect().await?;
                return Ok(Woke::Notified);
            };
            if concerns(&notice) {
                while self.notices.try_recv().is_ok() {}
                return Ok(Woke::Notified);
            }
        }
    }
}

/// How long a follower without a deadline waits at most between two reads (notifications are
/// hints: a read now and then costs little and bounds what a lost one could delay).
pub const REREAD: Duration = Duration::from_secs(5);

/// How long a follower tries to connect again after losing its connection before it gives up
/// (a failover to a standby takes about a second, a restart a few).
pub const RECONNECT_BUDGET: Duration = Duration::from_secs(60);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_text_follows_a_sliding_window() {
        assert_eq!(new_text("", "a\nb"), ("a\nb", false));
        assert_eq!(new_text("a", "a\nb"), ("\nb", false));
        assert_eq!(new_text("a\nab", "a\nabc\nd"), ("c\nd", false));
        // the window slid: the first line dropped out
        assert_eq!(new_text("1\n2\n3", "2\n3\n4"), ("\n4", false));
        // nothing new
        assert_eq!(new_text("1\n2", "1\n2"), ("", false));
        // slid past everything read before
        assert_eq!(new_text("1\n2", "7\n8"), ("7\n8", true));
        // the longest overlap wins
        assert_eq!(new_text("x\nab\nab", "ab\nab\nc"), ("\nc", false));
        assert_eq!(new_text("é", "é\nü"), ("\nü", false));
    }

    fn view(run: Option<Uuid>, attempt: i32, out: &str) -> OutputView {
        OutputView {
            status: TaskStatus {
                id: 1,
                state: TaskState::Executing,
                exit_code: None,
                exit_signal: None,
                error: None,
            },
            run_id: run,
            attempt,
            stdout_tail: Some(out.to_owned()),
            stderr_tail: None,
        }
    }

    #[test]
    fn a_cursor_prints_each_attempt_once() {
        let (r1, r2) = (Uuid::new_v4(), Uuid::new_v4());
        let mut c = OutputCursor::default();
        assert_eq!(c.advance(&view(Some(r1), 1, "one")).stdout, "one");
        assert!(c.advance(&view(Some(r1), 1, "one")).is_empty());
        assert_eq!(c.advance(&view(Some(r1), 1, "one\ntwo")).stdout, "\ntwo");
        // queued again: no run, the last attempt's tails stay
        assert!(c.advance(&view(None, 1, "one\ntwo")).is_empty());
        let next = c.advance(&view(Some(r2), 2, ""));
        assert_eq!(next.new_attempt, Some(2));
        assert_eq!(c.advance(&view(Some(r2), 2, "one")).stdout, "one");
    }
}
