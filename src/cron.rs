//! Cron schedules (`task.shed_cron`, `task.shed_timezone`): parsing an expression and a time zone,
//! and the one rule of a firing — what a due cron row does and where its `next_start` moves.
//! Pure: no database, no clock of its own (every instant comes from the caller, which takes it
//! from the database). PostgreSQL cannot compute cron times, so the Scheduler asks this module.
//!
//! Syntax and time zones are `croner`'s and `chrono-tz`'s: five fields (minute hour day-of-month
//! month day-of-week) or six (seconds first); `*`, `*/N`, ranges `a-b` (with `/N`), lists,
//! `L` (last day of the month, or `5L` the last Friday), `#` (`MON#2`), `W`, month and day names,
//! and the `@daily`-style nicknames. A day-of-month and a day-of-week both given match either
//! (Vixie cron). A year field is refused.
//!
//! Daylight-saving time (`croner`, following the Open Cron Pattern Specification): a fixed local
//! time the clock skips (02:30 on a spring-forward night) fires once, at the first valid time after
//! the gap; a fixed local time the clock passes twice (02:30 on a fall-back night) fires once, at
//! its first pass. An expression with `*` or a step in its second, minute or hour field keeps its
//! pace in real time instead: slots in a gap do not exist, slots in a repeated hour come in both
//! passes.

use std::str::FromStr;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;

/// Why a row's schedule was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CronError {
    #[error("cron expression {expr:?}: {reason}")]
    Expression { expr: String, reason: String },
    #[error("unknown time zone {0:?} (an IANA name such as Europe/Berlin)")]
    TimeZone(String),
    #[error("cron expression {expr:?} has no firing after {after}")]
    NoFiring { expr: String, after: DateTime<Utc> },
}

/// A parsed cron expression in its time zone.
#[derive(Debug, Clone)]
pub struct CronSchedule {
    expr: String,
    cron: Cron,
    tz: Tz,
}

impl CronSchedule {
    /// Parses `expr` (five or six fields) in `timezone` (an IANA name; None: UTC).
    pub fn parse(expr: &str, timezone: Option<&str>) -> Result<CronSchedule, CronError> {
        let tz = match timezone {
            None => Tz::UTC,
            Some(name) => Tz::from_str(name).map_err(|_| CronError::TimeZone(name.to_owned()))?,
        };
        let refused = |reason: String| CronError::Expression {
            expr: expr.to_owned(),
            reason,
        };
        let fields = expr.split_whitespace().count();
        if !expr.trim_start().starts_with('@') && !(5..=6).contains(&fields) {
            return Err(refused(format!(
                "{fields} field(s); five (minute hour day month weekday) or six (second first)"
            )));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build()
            .parse(expr)
            .map_err(|e| refused(e.to_string()))?;
        Ok(CronSchedule {
            expr: expr.to_owned(),
            cron,
            tz,
        })
    }

    /// The first slot at or after `t` (a slot is a whole second).
    pub fn first_from(&self, t: DateTime<Utc>) -> Result<DateTime<Utc>, CronError> {
        let whole = truncate(t);
        let start = if whole < t {
            whole + TimeDelta::seconds(1)
        } else {
            whole
        };
        self.search(start, true)
    }

    /// The first slot strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Result<DateTime<Utc>, CronError> {
        self.search(truncate(t), false)
    }

    fn search(&self, t: DateTime<Utc>, inclusive: bool) -> Result<DateTime<Utc>, CronError> {
        self.cron
            .find_next_occurrence(&t.with_timezone(&self.tz), inclusive)
            .map(|local| local.with_timezone(&Utc))
            .map_err(|_| CronError::NoFiring {
                expr: self.expr.clone(),
                after: t,
            })
    }
}

fn truncate(t: DateTime<Utc>) -> DateTime<Utc> {
    t.duration_trunc(TimeDelta::seconds(1)).unwrap_or(t)
}

/// What a due cron row does (its `next_start` has come).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// A slot came between `next_start` and now: fire once for the first of them (however many
    /// passed), then wait for the first slot after now.
    Fire {
        slot: DateTime<Utc>,
        next: DateTime<Utc>,
    },
    /// No slot yet (`next_start` was set off a slot, e.g. `now()` by an INSERT): fire nothing and
    /// wait for the first slot.
    Wait { next: DateTime<Utc> },
}

/// The rule of a due row: `planned` is its `next_start`, `now` the database's time. The schedule
/// runs from `planned` on: when its first slot at or after `planned` has come, the row fires once
/// and moves to the first slot after `now` (a late firing never bursts); otherwise it moves to
/// that first slot without firing.
pub fn step(
    schedule: &CronSchedule,
    planned: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<Step, CronError> {
    let first = schedule.first_from(planned)?;
    if first <= now {
        Ok(Step::Fire {
            slot: first,
            next: schedule.next_after(now)?,
        })
    } else {
        Ok(Step::Wait { next: first })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("rfc3339")
            .with_timezone(&Utc)
    }

    fn next(expr: &str, tz: Option<&str>, after: &str) -> String {
        CronSchedule::parse(expr, tz)
            .expect("parses")
            .next_after(utc(after))
            .expect("fires")
            .to_rfc3339()
    }

    fn series(expr: &str, tz: &str, from: &str, n: usize) -> Vec<String> {
        let s = CronSchedule::parse(expr, Some(tz)).expect("parses");
        let zone: Tz = tz.parse().expect("zone");
        let mut t = utc(from);
        (0..n)
            .map(|_| {
                t = s.next_after(t).expect("fires");
                t.with_timezone(&zone).to_rfc3339()
            })
            .collect()
    }

    #[test]
    fn five_fields_count_minutes_and_six_count_seconds() {
        assert_eq!(
            next("*/5 * * * *", None, "2026-01-01T10:02:30Z"),
            "2026-01-01T10:05:00+00:00"
        );
        assert_eq!(
            next("*/1 * * * * *", None, "2026-01-01T10:02:30.250Z"),
            "2026-01-01T10:02:31+00:00"
        );
        assert_eq!(
            next("15 */10 * * * *", None, "2026-01-01T10:02:30Z"),
            "2026-01-01T10:10:15+00:00"
        );
    }

    #[test]
    fn ranges_lists_steps_and_names() {
        // 09:00 on weekdays: Friday 2026-01-02 → Monday 2026-01-05
        assert_eq!(
            next("0 9 * * MON-FRI", None, "2026-01-02T09:00:00Z"),
            "2026-01-05T09:00:00+00:00"
        );
        assert_eq!(
            next("0 8,12,18 * * *", None, "2026-01-01T12:00:00Z"),
            "2026-01-01T18:00:00+00:00"
        );
        assert_eq!(
            next("0 0 1 jan,jul *", None, "2026-01-01T00:00:00Z"),
            "2026-07-01T00:00:00+00:00"
        );
        assert_eq!(
            next("0 10-16/3 * * *", None, "2026-01-01T13:00:00Z"),
            "2026-01-01T16:00:00+00:00"
        );
        assert_eq!(
            next("0 0 * * sun", None, "2026-01-01T00:00:00Z"),
            "2026-01-04T00:00:00+00:00"
        );
    }

    #[test]
    fn l_is_the_last_day_of_the_month_or_the_last_weekday() {
        assert_eq!(
            next("0 0 L * *", None, "2026-02-01T00:00:00Z"),
            "2026-02-28T00:00:00+00:00"
        );
        assert_eq!(
            next("0 0 L * *", None, "2028-02-01T00:00:00Z"),
            "2028-02-29T00:00:00+00:00"
        );
        // a leap day, two years ahead
        assert_eq!(
            next("0 0 29 2 *", None, "2026-03-01T00:00:00Z"),
            "2028-02-29T00:00:00+00:00"
        );
        // the last Friday of January 2026
        assert_eq!(
            next("0 0 * * 5L", None, "2026-01-01T00:00:00Z"),
            "2026-01-30T00:00:00+00:00"
        );
    }

    #[test]
    fn nicknames_question_marks_sunday_as_seven_and_day_or_weekday() {
        assert_eq!(
            next("@daily", None, "2026-01-01T10:00:00Z"),
            "2026-01-02T00:00:00+00:00"
        );
        assert_eq!(
            next("@hourly", None, "2026-01-01T10:00:00Z"),
            "2026-01-01T11:00:00+00:00"
        );
        assert_eq!(
            next("0 0 ? * *", None, "2026-01-01T10:00:00Z"),
            "2026-01-02T00:00:00+00:00"
        );
        // 2026-01-04 is a Sunday
        assert_eq!(
            next("0 0 * * 7", None, "2026-01-01T00:00:00Z"),
            "2026-01-04T00:00:00+00:00"
        );
        // the 15th or any Monday, whichever comes first (Vixie cron): Monday 2026-01-05
        assert_eq!(
            next("0 0 15 * MON", None, "2026-01-01T00:00:00Z"),
            "2026-01-05T00:00:00+00:00"
        );
        // the second Monday; the weekday nearest the 1st (Saturday 2026-08-01 → Monday 08-03)
        assert_eq!(
            next("0 0 * * MON#2", None, "2026-01-01T00:00:00Z"),
            "2026-01-12T00:00:00+00:00"
        );
        assert_eq!(
            next("0 0 1W * *", None, "2026-07-02T00:00:00Z"),
            "2026-08-03T00:00:00+00:00"
        );
    }

    #[test]
    fn bad_expressions_and_zones_are_refused_with_the_reason() {
        for bad in [
            "",
            "* * * *",
            "* * * * * * *",
            "61 * * * *",
            "* 24 * * *",
            "* * 32 * *",
            "* * * 13 *",
            "* * * * 8",
            "*/0 * * * *",
            "five past noon",
            "0 0 * * FOO",
        ] {
            let e = CronSchedule::parse(bad, None).expect_err(bad);
            assert!(matches!(e, CronError::Expression { .. }), "{bad:?}: {e:?}");
            assert!(e.to_string().contains("cron expression"), "{e}");
        }
        let e = CronSchedule::parse("* * * * *", Some("Europe/Berlinn")).expect_err("zone");
        assert_eq!(e, CronError::TimeZone("Europe/Berlinn".into()));
        // parses, but never fires: refused when its time is asked
        let never = CronSchedule::parse("0 0 30 2 *", None).expect("parses");
        assert!(matches!(
            never.next_after(utc("2026-01-01T00:00:00Z")),
            Err(CronError::NoFiring { .. })
        ));
    }

    #[test]
    fn the_time_zone_decides_the_wall_clock() {
        // 09:00 in Berlin is 08:00 UTC in winter, 07:00 in summer
        assert_eq!(
            next("0 9 * * *", Some("Europe/Berlin"), "2026-01-10T12:00:00Z"),
            "2026-01-11T08:00:00+00:00"
        );
        assert_eq!(
            next("0 9 * * *", Some("Europe/Berlin"), "2026-07-10T12:00:00Z"),
            "2026-07-11T07:00:00+00:00"
        );
        assert_eq!(
            next(
                "0 9 * * *",
                Some("America/New_York"),
                "2026-01-10T12:00:00Z"
            ),
            "2026-01-10T14:00:00+00:00"
        );
        // UTC when no zone is given
        assert_eq!(
            next("0 9 * * *", None, "2026-01-10T12:00:00Z"),
            "2026-01-11T09:00:00+00:00"
        );
    }

    #[test]
    fn a_skipped_local_time_fires_once_after_the_gap() {
        // Europe/Berlin 2026-03-29: 02:00 CET jumps to 03:00 CEST; 02:30 does not exist that night
        assert_eq!(
            series("30 2 * * *", "Europe/Berlin", "2026-03-27T12:00:00Z", 3),
            [
                "2026-03-28T02:30:00+01:00",
                "2026-03-29T03:00:00+02:00",
                "2026-03-30T02:30:00+02:00",
            ]
        );
        // an hourly expression has no slot in the gap and keeps its pace
        assert_eq!(
            series("30 * * * *", "Europe/Berlin", "2026-03-29T00:00:00Z", 2),
            ["2026-03-29T01:30:00+01:00", "2026-03-29T03:30:00+02:00"]
        );
    }

    #[test]
    fn a_repeated_local_time_fires_once() {
        // Europe/Berlin 2026-10-25: 03:00 CEST falls back to 02:00 CET; 02:30 comes twice
        assert_eq!(
            series("30 2 * * *", "Europe/Berlin", "2026-10-23T12:00:00Z", 3),
            [
                "2026-10-24T02:30:00+02:00",
                "2026-10-25T02:30:00+02:00",
                "2026-10-26T02:30:00+01:00",
            ]
        );
        // every 30 minutes keeps its pace in real time through the repeated hour
        assert_eq!(
            series("*/30 * * * *", "Europe/Berlin", "2026-10-24T23:45:00Z", 4),
            [
                "2026-10-25T02:00:00+02:00",
                "2026-10-25T02:30:00+02:00",
                "2026-10-25T02:00:00+01:00",
                "2026-10-25T02:30:00+01:00",
            ]
        );
    }

    #[test]
    fn a_due_row_fires_once_however_late_then_moves_to_the_next_future_slot() {
        let every_minute = CronSchedule::parse("* * * * *", None).expect("parses");
        // ten minutes late: one firing, then the first minute after now
        assert_eq!(
            step(
                &every_minute,
                utc("2026-01-01T10:00:00Z"),
                utc("2026-01-01T10:10:20Z")
            ),
            Ok(Step::Fire {
                slot: utc("2026-01-01T10:00:00Z"),
                next: utc("2026-01-01T10:11:00Z")
            })
        );
        // on time
        assert_eq!(
            step(
                &every_minute,
                utc("2026-01-01T10:00:00Z"),
                utc("2026-01-01T10:00:00.004Z")
            ),
            Ok(Step::Fire {
                slot: utc("2026-01-01T10:00:00Z"),
                next: utc("2026-01-01T10:01:00Z")
            })
        );
    }

    #[test]
    fn a_row_set_off_a_slot_waits_for_its_first_slot() {
        let daily = CronSchedule::parse("0 3 * * *", Some("Europe/Berlin")).expect("parses");
        // INSERT … next_start = now() at 10:00:00.5 UTC: nothing fires before 03:00 Berlin
        let now = Utc
            .with_ymd_and_hms(2026, 1, 1, 10, 0, 0)
            .single()
            .expect("time")
            + TimeDelta::milliseconds(500);
        assert_eq!(
            step(&daily, now, now + TimeDelta::milliseconds(3)),
            Ok(Step::Wait {
                next: utc("2026-01-02T02:00:00Z")
            })
        );
        // a seconds expression set at 10:00:00.5 does not fire for 10:00:00
        let secs = CronSchedule::parse("* * * * * *", None).expect("parses");
        assert_eq!(
            step(&secs, now, now + TimeDelta::milliseconds(3)),
            Ok(Step::Wait {
                next: utc("2026-01-01T10:00:01Z")
            })
        );
    }
}
