//! Cron schedules in a time zone, with daylight-saving transitions defined.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use chrono::offset::LocalResult;
use chrono::{DateTime, NaiveDateTime, TimeDelta, TimeZone, Timelike, Utc};
use chrono_tz::Tz;

/// A cron expression evaluated in a time zone. Accepted forms:
/// - five fields, the crontab form: `minute hour day-of-month month
///   day-of-week` (`*/5 * * * *`), firing at second 0;
/// - six fields, seconds first (`30 */5 * * * *`);
/// - seven fields, seconds first and a year last (`0 0 12 1 1 * 2027`);
/// - `@hourly`, `@daily`, `@weekly`, `@monthly`, `@yearly`.
///
/// Fields take numbers, ranges (`1-5`), lists (`1,15`), steps (`*/10`) and
/// names (`JAN`, `MON`), as the [`cron`](https://docs.rs/cron) crate reads
/// them. Any other number of fields is refused with
/// [`ScheduleError::Fields`], naming these forms.
///
/// Ticks are the wall-clock times the expression names, in that zone, as
/// instants. Daylight-saving transitions are defined so that ticks are
/// strictly increasing and none is silently lost:
/// - a wall-clock time the spring-forward gap skips (02:30 on the night
///   clocks jump from 02:00 to 03:00) fires once, at the end of the gap;
/// - a wall-clock time that occurs twice (fall back) fires once, at its
///   first occurrence.
///
/// ```
/// use soloist::{CronSchedule, ScheduleError};
/// let schedule = CronSchedule::new("0 30 2 * * *", "Europe/Berlin").unwrap();
/// assert_eq!(schedule.expression(), "0 30 2 * * *");
/// assert!(CronSchedule::new("*/5 * * * *", "UTC").is_ok()); // crontab
/// assert!(CronSchedule::new("@daily", "UTC").is_ok());
/// assert!(CronSchedule::new("0 30 2 * * *", "Mars/Olympus").is_err());
/// assert!(matches!(
///     CronSchedule::new("* * * *", "UTC"),
///     Err(ScheduleError::Fields { found: 4, .. })
/// ));
/// ```
#[derive(Clone)]
pub struct CronSchedule {
    expression: String,
    schedule: Arc<cron::Schedule>,
    tz: Tz,
}

impl fmt::Debug for CronSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CronSchedule")
            .field("expression", &self.expression)
            .field("tz", &self.tz.name())
            .finish()
    }
}

/// Why a schedule was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ScheduleError {
    /// The cron expression does not parse.
    #[error("bad cron expression `{expression}`: {reason}")]
    Cron {
        /// The expression as given.
        expression: String,
        /// The parser's complaint.
        reason: String,
    },
    /// The expression has a number of fields no form has.
    #[error(
        "cron expression `{expression}` has {found} fields; expected 5 (minute hour day-of-month month day-of-week), 6 (seconds first), 7 (seconds first, year last), or @hourly, @daily, @weekly, @monthly, @yearly"
    )]
    Fields {
        /// The expression as given.
        expression: String,
        /// How many whitespace-separated fields it has.
        found: usize,
    },
    /// The time zone is not an IANA name chrono-tz knows.
    #[error("unknown time zone `{0}` (expected an IANA name such as `Europe/Berlin` or `UTC`)")]
    TimeZone(String),
}

impl CronSchedule {
    /// Parses `expression` for the IANA time zone `tz` (`"UTC"` for none).
    pub fn new(expression: &str, tz: &str) -> Result<Self, ScheduleError> {
        let fields = expression.split_whitespace().count();
        let seconds_first = match fields {
            1 if expression.trim_start().starts_with('@') => expression.trim().to_owned(),
            // Crontab: the same fields after a seconds field of 0.
            5 => format!("0 {}", expression.trim()),
            6 | 7 => expression.to_owned(),
            found => {
                return Err(ScheduleError::Fields {
                    expression: expression.to_owned(),
                    found,
                });
            }
        };
        let schedule =
            cron::Schedule::from_str(&seconds_first).map_err(|err| ScheduleError::Cron {
                expression: expression.to_owned(),
                reason: err
                    .to_string()
                    .lines()
                    .last()
                    .unwrap_or_default()
                    .trim()
                    .to_owned(),
            })?;
        let tz = tz
            .parse::<Tz>()
            .map_err(|_| ScheduleError::TimeZone(tz.to_owned()))?;
        Ok(CronSchedule {
            expression: expression.to_owned(),
            schedule: Arc::new(schedule),
            tz,
        })
    }

    /// The expression as given.
    pub fn expression(&self) -> &str {
        &self.expression
    }

    /// The time zone's IANA name.
    pub fn time_zone(&self) -> &str {
        self.tz.name()
    }

    /// Ticks strictly after `instant`, in order.
    pub fn ticks_after(&self, instant: DateTime<Utc>) -> impl Iterator<Item = DateTime<Utc>> + '_ {
        // Walk the wall clock of the zone, which cron understands, with
        // naive times standing in as UTC, and map each back to an instant.
        // No wall-clock time before the instant's own can map to a later
        // instant: ambiguous times take their first occurrence, and a gap
        // ends before any wall-clock time that follows it.
        let start = instant.with_timezone(&self.tz).naive_local() - TimeDelta::seconds(1);
        let mut last = instant;
        self.schedule
            .after(&Utc.from_utc_datetime(&start))
            .map(move |wall| self.instant_of(wall.naive_utc()))
            .filter(move |tick| {
                let later = *tick > last;
                if later {
                    last = *tick;
                }
                later
            })
    }

    /// The instant a wall-clock time of the zone names, by the rules above.
    fn instant_of(&self, wall: NaiveDateTime) -> DateTime<Utc> {
        match self.tz.from_local_datetime(&wall) {
            LocalResult::Single(at) => at.with_timezone(&Utc),
            LocalResult::Ambiguous(first, _) => first.with_timezone(&Utc),
            LocalResult::None => {
                // In a gap. Transitions fall on whole minutes, and no gap
                // lasts a day: walk to the first minute that exists.
                let mut probe = wall
                    .with_second(0)
                    .and_then(|at| at.with_nanosecond(0))
                    .unwrap_or(wall);
                for _ in 0..24 * 60 {
                    probe += TimeDelta::minutes(1);
                    if let LocalResult::Single(at) | LocalResult::Ambiguous(at, _) =
                        self.tz.from_local_datetime(&probe)
                    {
                        return at.with_timezone(&Utc);
                    }
                }
                Utc.from_utc_datetime(&wall)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        text.parse().expect("an RFC 3339 instant")
    }

    fn ticks(schedule: &CronSchedule, from: &str, count: usize) -> Vec<String> {
        schedule
            .ticks_after(utc(from))
            .take(count)
            .map(|tick| tick.to_rfc3339())
            .collect()
    }

    #[test]
    fn utc_ticks_follow_the_expression() {
        let every_five = CronSchedule::new("0 */5 * * * *", "UTC").unwrap();
        assert_eq!(
            ticks(&every_five, "2026-01-01T10:02:00Z", 3),
            [
                "2026-01-01T10:05:00+00:00",
                "2026-01-01T10:10:00+00:00",
                "2026-01-01T10:15:00+00:00"
            ]
        );
        // Strictly after: a tick at the instant itself is not included.
        assert_eq!(
            ticks(&every_five, "2026-01-01T10:05:00Z", 1),
            ["2026-01-01T10:10:00+00:00"]
        );
    }

    #[test]
    fn spring_forward_gap_fires_once_at_its_end() {
        // Berlin, 2026-03-29: 02:00 CET jumps to 03:00 CEST (01:00 UTC).
        let daily = CronSchedule::new("0 30 2 * * *", "Europe/Berlin").unwrap();
        assert_eq!(
            ticks(&daily, "2026-03-27T12:00:00Z", 3),
            [
                "2026-03-28T01:30:00+00:00", // 02:30 CET
                "2026-03-29T01:00:00+00:00", // 02:30 does not exist: 03:00 CEST
                "2026-03-30T00:30:00+00:00", // 02:30 CEST
            ]
        );
        // Several ticks inside the gap collapse into one.
        let half_hourly = CronSchedule::new("0 */30 * * * *", "Europe/Berlin").unwrap();
        assert_eq!(
            ticks(&half_hourly, "2026-03-29T00:15:00Z", 3),
            [
                "2026-03-29T00:30:00+00:00",
                "2026-03-29T01:00:00+00:00",
                "2026-03-29T01:30:00+00:00"
            ]
        );
    }

    #[test]
    fn fall_back_fires_once_at_the_first_occurrence() {
        // Berlin, 2026-10-25: 03:00 CEST falls back to 02:00 CET (01:00 UTC).
        let daily = CronSchedule::new("0 30 2 * * *", "Europe/Berlin").unwrap();
        assert_eq!(
            ticks(&daily, "2026-10-23T12:00:00Z", 3),
            [
                "2026-10-24T00:30:00+00:00",
                "2026-10-25T00:30:00+00:00", // 02:30 CEST; 02:30 CET does not fire again
                "2026-10-26T01:30:00+00:00",
            ]
        );
        let half_hourly = CronSchedule::new("0 */30 * * * *", "Europe/Berlin").unwrap();
        assert_eq!(
            ticks(&half_hourly, "2026-10-24T23:45:00Z", 5),
            [
                "2026-10-25T00:00:00+00:00", // 02:00 CEST
                "2026-10-25T00:30:00+00:00", // 02:30 CEST
                "2026-10-25T02:00:00+00:00", // 03:00 CET: the repeated hour is skipped
                "2026-10-25T02:30:00+00:00",
                "2026-10-25T03:00:00+00:00",
            ]
        );
        // Starting inside the repeated hour, ticks still only move forward.
        assert_eq!(
            ticks(&half_hourly, "2026-10-25T01:10:00Z", 1),
            ["2026-10-25T02:00:00+00:00"]
        );
    }

    #[test]
    fn crontab_and_shorthands_fire_at_second_zero() {
        let crontab = CronSchedule::new("*/5 * * * *", "UTC").unwrap();
        assert_eq!(crontab.expression(), "*/5 * * * *");
        assert_eq!(
            ticks(&crontab, "2026-12-07T10:03:20Z", 2),
            ["2026-12-07T10:05:00+00:00", "2026-12-07T10:10:00+00:00"]
        );
        let daily = CronSchedule::new("@daily", "Europe/Berlin").unwrap();
        assert_eq!(
            ticks(&daily, "2026-12-07T10:03:20Z", 1),
            ["2026-12-07T23:00:00+00:00"]
        );
        for shorthand in ["@hourly", "@weekly", "@monthly", "@yearly"] {
            assert!(CronSchedule::new(shorthand, "UTC").is_ok(), "{shorthand}");
        }
    }

    #[test]
    fn bad_expressions_and_zones_are_errors() {
        for expression in [
            "@sometimes",
            "61 * * * * *",
            "* 24 * * *",
            "0 0 * * * * 1969",
        ] {
            assert!(
                matches!(
                    CronSchedule::new(expression, "UTC"),
                    Err(ScheduleError::Cron { .. })
                ),
                "{expression:?}"
            );
        }
        for (expression, found) in [("", 0), ("bad", 1), ("* * * *", 4), ("0 0 0 * * * * *", 8)] {
            let err = CronSchedule::new(expression, "UTC").unwrap_err();
            assert_eq!(
                err,
                ScheduleError::Fields {
                    expression: expression.to_owned(),
                    found
                }
            );
            assert!(err.to_string().contains("@daily"), "{err}");
        }
        assert_eq!(
            CronSchedule::new("* * * * * *", "Europe/Atlantis").unwrap_err(),
            ScheduleError::TimeZone("Europe/Atlantis".to_owned())
        );
    }
}
