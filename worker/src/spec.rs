//! What a job is: its trigger and the settings of the lock it runs under.

use std::time::Duration;

use crate::error::{Result, WorkerError};
use crate::schedule::CronSchedule;

/// When a job runs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Trigger {
    /// On a cron schedule; each tick runs once across the fleet.
    Cron(CronSchedule),
    /// On request ([`WorkerHandle::run`](crate::WorkerHandle::run)), at most
    /// one execution at a time per key rendered from this template.
    Keyed(KeyTemplate),
}

/// A key template such as `invoice:{invoice_id}`: literal text with
/// `{name}` placeholders for the job's arguments (`{{` and `}}` for braces).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyTemplate {
    template: String,
    placeholders: Vec<String>,
}

impl KeyTemplate {
    /// Parses `template`; an empty template, an empty or unclosed
    /// placeholder, a stray `}`, or a placeholder followed by anything but
    /// the end of the key or a separator (a character other than a letter,
    /// digit, `_`, `-`, `.` or `%`) is an error.
    ///
    /// Each placeholder is rendered escaped ([`KeyPart`](crate::KeyPart)),
    /// so that keys rendered from different arguments always differ: with
    /// `{a}:{b}`, the arguments `("x:y", "z")` render `x%3Ay:z` and
    /// `("x", "y:z")` render `x:y%3Az`.
    ///
    /// ```
    /// use soloist::KeyTemplate;
    /// let template = KeyTemplate::parse("invoice:{invoice_id}").unwrap();
    /// assert_eq!(template.placeholders(), ["invoice_id"]);
    /// assert!(KeyTemplate::parse("invoice:{").is_err());
    /// ```
    pub fn parse(template: &str) -> std::result::Result<Self, KeyTemplateError> {
        if template.is_empty() {
            return Err(KeyTemplateError::Empty);
        }
        let mut placeholders = Vec::new();
        let mut chars = template.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                }
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(c) => name.push(c),
                            None => {
                                return Err(KeyTemplateError::Unclosed {
                                    template: template.to_owned(),
                                });
                            }
                        }
                    }
                    let valid = name
                        .chars()
                        .next()
                        .is_some_and(|c| c.is_alphabetic() || c == '_')
                        && name.chars().all(|c| c.is_alphanumeric() || c == '_');
                    if !valid {
                        return Err(KeyTemplateError::NotAnArgument {
                            template: template.to_owned(),
                            name,
                        });
                    }
                    // An argument is rendered escaped (see `KeyPart`): it
                    // ends where a character it never contains begins, so
                    // different arguments never render the same key.
                    let mut after = chars.clone();
                    let next = after.next();
                    let separated = match next {
                        None => true,
                        Some('{') => after.next() == Some('{'),
                        Some(c) => !crate::key::is_plain(c) && c != '%',
                    };
                    if !separated {
                        return Err(KeyTemplateError::NotSeparated {
                            template: template.to_owned(),
                            name,
                        });
                    }
                    placeholders.push(name);
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                }
                '}' => {
                    return Err(KeyTemplateError::Stray {
                        template: template.to_owned(),
                    });
                }
                _ => {}
            }
        }
        Ok(KeyTemplate {
            template: template.to_owned(),
            placeholders,
        })
    }

    /// The template as given.
    pub fn as_str(&self) -> &str {
        &self.template
    }

    /// The argument names the template uses, in order.
    pub fn placeholders(&self) -> &[String] {
        &self.placeholders
    }
}

/// What a cron job does about ticks that passed while no replica was up
/// to claim them (a fleet-wide outage, a long deploy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MissedTicks {
    /// Forget them; run from the next tick on.
    Skip,
    /// Run the latest missed tick once, standing for all of them; or, when
    /// a tick is due at start (inside its misfire grace), let that tick
    /// stand for them, so the fleet does not run two ticks back to back.
    RunOnce,
    /// Run each missed tick, oldest first, at most this many (the most
    /// recent ones); the rest are skipped.
    CatchUp(u32),
}

/// What happens to a running job whose lease is lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OnLost {
    /// Cancel the job at once (drop its future): the default.
    Cancel,
    /// Let it run; it sees [`JobContext::lost`](crate::JobContext::lost).
    Signal,
}

/// A job's trigger and the settings it runs under; what
/// `#[exclusive_job(...)]` fills in, and what registering a job at run
/// time starts from.
///
/// ```
/// use std::time::Duration;
/// use soloist::{JobSpec, MissedTicks};
/// let spec = JobSpec::cron("rollup", "0 */5 * * * *", "Europe/Berlin")
///     .unwrap()
///     .ttl(Duration::from_secs(30))
///     .retries(2)
///     .missed(MissedTicks::CatchUp(3));
/// assert_eq!(spec.name(), "rollup");
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct JobSpec {
    pub(crate) name: String,
    pub(crate) trigger: Trigger,
    pub(crate) ttl: Duration,
    pub(crate) misfire: Duration,
    pub(crate) retries: u32,
    pub(crate) backoff: Duration,
    pub(crate) max_hold: Option<Duration>,
    pub(crate) dedupe: Option<Duration>,
    pub(crate) on_lost: OnLost,
    pub(crate) missed: MissedTicks,
    pub(crate) wait: Duration,
    pub(crate) concurrency: Option<u32>,
    pub(crate) rate: Option<Rate>,
    pub(crate) over_rate: OverRate,
}

/// The longest any duration setting of a job (or a worker) may be.
pub(crate) const MAX_SETTING: Duration = Duration::from_secs(365 * 86_400);
/// The most retries a job may ask for.
const MAX_RETRIES: u32 = 1000;

/// The lease length unless set.
pub const DEFAULT_JOB_TTL: Duration = Duration::from_secs(30);
/// How late a cron tick may still start, unless set.
pub const DEFAULT_MISFIRE: Duration = Duration::from_secs(60);

impl JobSpec {
    fn new(name: &str, trigger: Trigger) -> Result<Self> {
        if name.is_empty() {
            return Err(WorkerError::invalid(name, "name", "must not be empty"));
        }
        Ok(JobSpec {
            name: name.to_owned(),
            trigger,
            ttl: DEFAULT_JOB_TTL,
            misfire: DEFAULT_MISFIRE,
            retries: 0,
            backoff: Duration::from_secs(1),
            max_hold: None,
            dedupe: None,
            on_lost: OnLost::Cancel,
            missed: MissedTicks::RunOnce,
            wait: Duration::ZERO,
            concurrency: None,
            rate: None,
            over_rate: OverRate::Wait,
        })
    }

    /// A job that runs on the cron `expression` in the IANA time zone `tz`.
    pub fn cron(name: &str, expression: &str, tz: &str) -> Result<Self> {
        let schedule = CronSchedule::new(expression, tz).map_err(|err| {
            let setting = match err {
                crate::schedule::ScheduleError::TimeZone(_) => "tz",
                _ => "cron",
            };
            WorkerError::invalid(name, setting, err.to_string())
        })?;
        Self::new(name, Trigger::Cron(schedule))
    }

    /// A job run on request, once at a time per key rendered from `template`.
    pub fn keyed(name: &str, template: &str) -> Result<Self> {
        let template = KeyTemplate::parse(template)
            .map_err(|reason| WorkerError::invalid(name, "key", reason.to_string()))?;
        Self::new(name, Trigger::Keyed(template))
    }

    /// The job's name, unique within a worker.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The job's trigger.
    pub fn trigger(&self) -> &Trigger {
        &self.trigger
    }

    /// The lease length, renewed by the watchdog while the job runs;
    /// default 30 s.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Cron: how late after its scheduled time a tick may still start,
    /// including a takeover after the first runner died; default 60 s.
    pub fn misfire(mut self, misfire: Duration) -> Self {
        self.misfire = misfire;
        self
    }

    /// How many times a failed run is retried, under the same lease;
    /// default 0, at most 1000.
    pub fn retries(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }

    /// The delay before the first retry, doubling for each further one;
    /// default 1 s.
    pub fn backoff(mut self, backoff: Duration) -> Self {
        self.backoff = backoff;
        self
    }

    /// An upper bound on how long a run may hold its lease; past it the
    /// run is cancelled and recorded as timed out.
    pub fn max_hold(mut self, max_hold: Duration) -> Self {
        self.max_hold = Some(max_hold);
        self
    }

    /// Keyed: after a successful run, the same key is not run again for
    /// this long; callers get the recorded result as a duplicate.
    pub fn dedupe(mut self, window: Duration) -> Self {
        self.dedupe = Some(window);
        self
    }

    /// What happens when the lease is lost mid-run; default
    /// [`OnLost::Cancel`].
    pub fn on_lost(mut self, on_lost: OnLost) -> Self {
        self.on_lost = on_lost;
        self
    }

    /// Cron: what to do about ticks missed while the whole fleet was down;
    /// default [`MissedTicks::RunOnce`].
    pub fn missed(mut self, missed: MissedTicks) -> Self {
        self.missed = missed;
        self
    }

    /// Keyed: how long a request waits while the key runs elsewhere;
    /// default zero (it gets [`RunOutcome::Busy`](crate::RunOutcome::Busy)).
    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// At most `permits` runs at once across the fleet: of the job (cron),
    /// or of each rendered key (keyed), from 1 to
    /// [`MAX_PERMITS`](soloist_core::MAX_PERMITS); default: no limit for
    /// cron (ticks may overlap), one per key for keyed jobs.
    ///
    /// Each run holds a permit of a leased semaphore (see
    /// [`LockClient::semaphore`](soloist_core::LockClient::semaphore)):
    /// renewed while it runs, back within one ttl if its replica dies, and
    /// a lost permit stops the run as a lost lock does. A cron tick waits
    /// for a permit while its misfire grace lasts, and is skipped (counted
    /// `busy`) if none comes. A keyed request waits up to
    /// [`wait`](Self::wait). With `permits` above 1 a key may run that many
    /// times at once; dedupe still holds per key (a success recorded in the
    /// window makes later requests duplicates), and `on_success` effects
    /// are refused, since they need a run that holds its key alone.
    /// Semaphores need a backend other than a Redlock.
    ///
    /// ```
    /// use soloist::JobSpec;
    /// let spec = JobSpec::keyed("charge", "{merchant}").unwrap().concurrency(3);
    /// # let _ = spec;
    /// ```
    pub fn concurrency(mut self, permits: u32) -> Self {
        self.concurrency = Some(permits);
        self
    }

    /// Keyed: at most `rate.count` runs start per `rate.period` across the
    /// fleet (every worker on the same Redis); default no limit. A run over
    /// the limit waits for its turn or is handed back, per
    /// [`over_rate`](Self::over_rate). The limit is counted once the run
    /// holds its key and before its body starts, so a duplicate or busy
    /// request does not use it up.
    ///
    /// The algorithm is GCRA on the Redis server's clock with no burst
    /// tolerance: starts are admitted at least `period / count` apart, so
    /// any window of one period holds at most `count` starts; see
    /// [`RateLimit`](soloist_core::RateLimit). Needs a backend other than a
    /// Redlock.
    ///
    /// `count` and `period` are checked when the job is registered, as
    /// [`Rate::new`] checks them; [`parse_rate`] reads them from a string.
    ///
    /// ```
    /// use std::time::Duration;
    /// use soloist::{JobSpec, parse_rate};
    /// let spec = JobSpec::keyed("call-partner", "{order}")
    ///     .unwrap()
    ///     .rate(100, Duration::from_secs(60));
    /// let rate = parse_rate("100/1m").unwrap();
    /// let same = JobSpec::keyed("call-partner", "{order}")
    ///     .unwrap()
    ///     .rate(rate.count, rate.period);
    /// # let _ = (spec, same);
    /// ```
    pub fn rate(mut self, count: u32, period: Duration) -> Self {
        self.rate = Some(Rate { count, period });
        self
    }

    /// What a run over its [`rate`](Self::rate) does; default
    /// [`OverRate::Wait`].
    pub fn over_rate(mut self, over_rate: OverRate) -> Self {
        self.over_rate = over_rate;
        self
    }

    /// Checks the settings together; called when the job is registered.
    pub(crate) fn validate(&self) -> Result<()> {
        let invalid = |name, reason: &str| Err(WorkerError::invalid(&self.name, name, reason));
        if !(soloist_core::MIN_TTL..=soloist_core::MAX_TTL).contains(&self.ttl) {
            return invalid("ttl", "must be between 10 ms and 24 h");
        }
        for (name, value) in [
            ("max_hold", self.max_hold),
            ("dedupe", self.dedupe),
            ("misfire", Some(self.misfire)),
            ("backoff", Some(self.backoff)),
            ("wait", Some(self.wait)),
        ] {
            if value.is_some_and(|value| value > MAX_SETTING) {
                return invalid(name, "must be at most a year");
            }
        }
        if let Some(permits) = self.concurrency
            && !(1..=soloist_core::MAX_PERMITS).contains(&permits)
        {
            return Err(WorkerError::invalid(
                &self.name,
                "concurrency",
                format!("must be between 1 and {}", soloist_core::MAX_PERMITS),
            ));
        }
        if let Some(rate) = self.rate {
            if let Err(err) = check_rate(rate.count, rate.period) {
                return invalid("rate", &err.to_string());
            }
            if matches!(self.trigger, Trigger::Cron(_)) {
                return invalid(
                    "rate",
                    "applies to keyed jobs; a cron job's starts are its schedule",
                );
            }
        }
        if self.retries > MAX_RETRIES {
            return invalid("retries", "must be at most 1000");
        }
        if self.max_hold.is_some_and(|max_hold| max_hold.is_zero()) {
            return invalid("max_hold", "must not be zero");
        }
        if self.dedupe.is_some_and(|window| window.is_zero()) {
            return invalid("dedupe", "must not be zero");
        }
        match &self.trigger {
            Trigger::Cron(_) if self.dedupe.is_some() => invalid(
                "dedupe",
                "applies to keyed jobs; a cron tick runs once anyway",
            ),
            Trigger::Cron(_) if self.misfire.is_zero() => invalid("misfire", "must not be zero"),
            _ => Ok(()),
        }
    }
}

/// What a keyed run over its job's rate limit does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OverRate {
    /// Wait, holding the key, until the limit admits the start.
    Wait,
    /// Start nothing: give the key back and return
    /// [`RunOutcome::RateLimited`](crate::RunOutcome::RateLimited) with
    /// when to ask again (a queue consumer sees the message again later).
    Reschedule,
}

/// A rate: at most `count` starts per `period`, as [`parse_rate`] reads it
/// from `"100/1m"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Rate {
    /// How many starts per period, from 1 to 1 000 000.
    pub count: u32,
    /// The period, more than zero and at most 7 days.
    pub period: Duration,
}

impl Rate {
    /// At most `count` starts per `period`; checked as [`parse_rate`] does.
    ///
    /// ```
    /// use std::time::Duration;
    /// use soloist::Rate;
    /// assert!(Rate::new(50, Duration::from_secs(1)).is_ok());
    /// assert!(Rate::new(0, Duration::from_secs(1)).is_err());
    /// ```
    pub fn new(count: u32, period: Duration) -> std::result::Result<Self, RateError> {
        check_rate(count, period)?;
        Ok(Rate { count, period })
    }
}

/// Why a rate was refused by [`parse_rate`] or [`Rate::new`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RateError {
    /// Not of the form `count/period`.
    #[error("`{text}`: expected `count/period`, e.g. `100/1m` or `50/1s`")]
    NotARate {
        /// The rate as given.
        text: String,
    },
    /// The count is not a whole number from 1 to 1 000 000.
    #[error("the count must be a whole number from 1 to 1000000, got `{count}`")]
    Count {
        /// The count as given.
        count: String,
    },
    /// The period is not a duration.
    #[error("invalid period: {0}")]
    Period(DurationError),
    /// The period is zero or longer than 7 days.
    #[error("the period must be more than zero and at most 7 days, got {period:?}")]
    PeriodOutOfRange {
        /// The period given.
        period: Duration,
    },
    /// More than one start per microsecond.
    #[error("{count} per {period:?} is more than one start per microsecond")]
    TooFine {
        /// The count given.
        count: u32,
        /// The period given.
        period: Duration,
    },
}

/// The most starts per period a rate allows (`soloist::MAX_RATE_COUNT`).
const MAX_RATE_COUNT: u32 = 1_000_000;
/// The longest period a rate counts over (`soloist::MAX_RATE_PERIOD`).
const MAX_RATE_PERIOD: Duration = Duration::from_secs(7 * 86_400);

fn check_rate(count: u32, period: Duration) -> std::result::Result<(), RateError> {
    if !(1..=MAX_RATE_COUNT).contains(&count) {
        return Err(RateError::Count {
            count: count.to_string(),
        });
    }
    if period.is_zero() || period > MAX_RATE_PERIOD {
        return Err(RateError::PeriodOutOfRange { period });
    }
    if period / count < Duration::from_micros(1) {
        return Err(RateError::TooFine { count, period });
    }
    Ok(())
}

/// Parses a rate such as `"100/1m"`, `"50/1s"` or `"10 / 1h 30m"`: a whole
/// count, a `/`, and a period as [`parse_duration`] reads it. What the
/// macro's `rate` setting accepts.
///
/// ```
/// use std::time::Duration;
/// use soloist::{RateError, parse_rate};
/// let rate = parse_rate("100/1m").unwrap();
/// assert_eq!((rate.count, rate.period), (100, Duration::from_secs(60)));
/// assert!(matches!(parse_rate("100"), Err(RateError::NotARate { .. })));
/// assert!(matches!(parse_rate("0/1s"), Err(RateError::Count { .. })));
/// ```
pub fn parse_rate(text: &str) -> std::result::Result<Rate, RateError> {
    let Some((count, period)) = text.split_once('/') else {
        return Err(RateError::NotARate {
            text: text.to_owned(),
        });
    };
    let count_text = count.trim();
    let count = count_text
        .parse::<u32>()
        .ok()
        .filter(|_| count_text.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| RateError::Count {
            count: count_text.to_owned(),
        })?;
    let period = parse_duration(period.trim()).map_err(RateError::Period)?;
    Rate::new(count, period)
}

/// Why a key template was refused by [`KeyTemplate::parse`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyTemplateError {
    /// The template is empty.
    #[error("a key template must not be empty")]
    Empty,
    /// A `{` has no `}` after it.
    #[error("unclosed `{{` in `{template}`")]
    Unclosed {
        /// The template as given.
        template: String,
    },
    /// A `}` closes nothing (write `}}` for a literal one).
    #[error("stray `}}` in `{template}`")]
    Stray {
        /// The template as given.
        template: String,
    },
    /// A placeholder's name is not an argument name.
    #[error("`{{{name}}}` in `{template}` is not an argument name")]
    NotAnArgument {
        /// The template as given.
        template: String,
        /// What the braces hold.
        name: String,
    },
    /// A placeholder runs into text an argument could contain.
    #[error(
        "`{{{name}}}` in `{template}` must be followed by the end of the key or a separator such as `:` or `/` (not a letter, digit, `_`, `-`, `.`, `%` or another placeholder), so that different arguments never render the same key"
    )]
    NotSeparated {
        /// The template as given.
        template: String,
        /// The placeholder's name.
        name: String,
    },
}

/// Why a duration string was refused by [`parse_duration`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DurationError {
    /// Nothing but whitespace.
    #[error("empty duration; expected e.g. `30s`, `1m`, `1h 30m`")]
    Empty,
    /// A unit, or something else, where a number should be.
    #[error("`{text}`: expected a number before `{rest}`")]
    MissingNumber {
        /// The duration as given.
        text: String,
        /// Where the number is missing.
        rest: String,
    },
    /// A number without a unit.
    #[error("`{text}`: missing unit (ms, s, m, h or d)")]
    MissingUnit {
        /// The duration as given.
        text: String,
    },
    /// A unit that is not one of `ms`, `s`, `m`, `h`, `d` (or their longer
    /// names).
    #[error("`{text}`: unknown unit `{unit}` (ms, s, m, h or d)")]
    UnknownUnit {
        /// The duration as given.
        text: String,
        /// The unit found.
        unit: String,
    },
    /// Longer than a `Duration` holds.
    #[error("`{text}`: too long")]
    TooLong {
        /// The duration as given.
        text: String,
    },
}

/// Parses a duration such as `"30s"`, `"1m"`, `"24h"`, `"500ms"`, `"1h30m"`,
/// `"1h 30m"`, `"5 minutes"` or `"2d"`: numbers with a unit, summed, with
/// optional spaces between the parts and before a unit. Units: `ms`
/// (`msec`, `millis`), `s` (`sec`, `secs`, `second`, `seconds`), `m`
/// (`min`, `mins`, `minute`, `minutes`), `h` (`hr`, `hrs`, `hour`, `hours`)
/// and `d` (`day`, `days`). What the macro's duration settings accept.
///
/// ```
/// use std::time::Duration;
/// use soloist::{DurationError, parse_duration};
/// assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
/// assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
/// assert_eq!(parse_duration("5 minutes"), Ok(Duration::from_secs(300)));
/// assert!(matches!(parse_duration("soon"), Err(DurationError::MissingNumber { .. })));
/// ```
pub fn parse_duration(text: &str) -> std::result::Result<Duration, DurationError> {
    let original = text;
    let text = text.trim();
    if text.is_empty() {
        return Err(DurationError::Empty);
    }
    let too_long = || DurationError::TooLong {
        text: original.to_owned(),
    };
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(DurationError::MissingNumber {
                text: original.to_owned(),
                rest: rest.to_owned(),
            });
        }
        let number: u64 = rest[..digits].parse().map_err(|_| too_long())?;
        rest = rest[digits..].trim_start();
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c.is_whitespace())
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" | "msec" | "millis" => Duration::from_millis(1),
            "s" | "sec" | "secs" | "second" | "seconds" => Duration::from_secs(1),
            "m" | "min" | "mins" | "minute" | "minutes" => Duration::from_secs(60),
            "h" | "hr" | "hrs" | "hour" | "hours" => Duration::from_secs(3600),
            "d" | "day" | "days" => Duration::from_secs(86_400),
            "" => {
                return Err(DurationError::MissingUnit {
                    text: original.to_owned(),
                });
            }
            other => {
                return Err(DurationError::UnknownUnit {
                    text: original.to_owned(),
                    unit: other.to_owned(),
                });
            }
        };
        rest = rest[unit_len..].trim_start();
        let part = u32::try_from(number)
            .ok()
            .and_then(|n| unit.checked_mul(n))
            .ok_or_else(too_long)?;
        total = total.checked_add(part).ok_or_else(too_long)?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_and_bad_ones_say_why() {
        let ok = |text: &str| parse_rate(text).map(|rate| (rate.count, rate.period));
        assert_eq!(ok("100/1m"), Ok((100, Duration::from_secs(60))));
        assert_eq!(ok("50/1s"), Ok((50, Duration::from_secs(1))));
        assert_eq!(ok(" 10 / 1h 30m "), Ok((10, Duration::from_secs(5400))));
        assert_eq!(ok("1000000/1s"), Ok((1_000_000, Duration::from_secs(1))));
        assert!(matches!(parse_rate("100"), Err(RateError::NotARate { .. })));
        assert!(matches!(parse_rate("/1s"), Err(RateError::Count { .. })));
        assert!(matches!(parse_rate("0/1s"), Err(RateError::Count { .. })));
        assert!(matches!(parse_rate("-1/1s"), Err(RateError::Count { .. })));
        assert!(matches!(parse_rate("+1/1s"), Err(RateError::Count { .. })));
        assert!(matches!(parse_rate("1.5/1s"), Err(RateError::Count { .. })));
        assert!(matches!(
            parse_rate("99999999999/1s"),
            Err(RateError::Count { .. })
        ));
        assert!(matches!(
            parse_rate("1000001/1s"),
            Err(RateError::Count { .. })
        ));
        assert!(matches!(parse_rate("5/soon"), Err(RateError::Period(_))));
        assert!(matches!(
            parse_rate("5/0s"),
            Err(RateError::PeriodOutOfRange { .. })
        ));
        assert!(matches!(
            parse_rate("5/8d"),
            Err(RateError::PeriodOutOfRange { .. })
        ));
        assert!(matches!(
            parse_rate("1000000/1ms"),
            Err(RateError::TooFine { .. })
        ));
        assert!(matches!(parse_rate("5/1s/2"), Err(RateError::Period(_))));
    }

    #[test]
    fn rate_bounds_are_the_limiters() {
        assert_eq!(MAX_RATE_COUNT, soloist_core::MAX_RATE_COUNT);
        assert_eq!(MAX_RATE_PERIOD, soloist_core::MAX_RATE_PERIOD);
    }

    #[test]
    fn durations_parse() {
        for (text, millis) in [
            ("500ms", 500),
            ("30s", 30_000),
            ("1m", 60_000),
            ("24h", 86_400_000),
            ("1h30m", 5_400_000),
            ("2d", 172_800_000),
            ("0s", 0),
            ("1h 30m", 5_400_000),
            (" 30 s ", 30_000),
            ("1d 2h 3m 4s 5ms", 93_784_005),
            ("2 hours 1 min", 7_260_000),
            ("1 day", 86_400_000),
        ] {
            assert_eq!(
                parse_duration(text),
                Ok(Duration::from_millis(millis)),
                "{text}"
            );
        }
        let owned = |text: &str| text.to_owned();
        for (bad, expected) in [
            ("", DurationError::Empty),
            (" ", DurationError::Empty),
            (
                "s",
                DurationError::MissingNumber {
                    text: owned("s"),
                    rest: owned("s"),
                },
            ),
            ("30", DurationError::MissingUnit { text: owned("30") }),
            (
                "30x",
                DurationError::UnknownUnit {
                    text: owned("30x"),
                    unit: owned("x"),
                },
            ),
            (
                "1.5h",
                DurationError::UnknownUnit {
                    text: owned("1.5h"),
                    unit: owned("."),
                },
            ),
            (
                "-1s",
                DurationError::MissingNumber {
                    text: owned("-1s"),
                    rest: owned("-1s"),
                },
            ),
            (
                "99999999999999999999s",
                DurationError::TooLong {
                    text: owned("99999999999999999999s"),
                },
            ),
        ] {
            assert_eq!(parse_duration(bad), Err(expected), "{bad:?}");
        }
    }

    #[test]
    fn key_templates_parse() {
        let template = KeyTemplate::parse("invoice:{invoice_id}:{region}").unwrap();
        assert_eq!(template.placeholders(), ["invoice_id", "region"]);
        assert_eq!(
            KeyTemplate::parse("{{literal}}")
                .unwrap()
                .placeholders()
                .len(),
            0
        );
        for good in ["{a}:{b}", "{a}/{b}", "{a}{{x}}", "x{a}"] {
            assert!(KeyTemplate::parse(good).is_ok(), "{good:?} refused");
        }
        for bad in [
            "", "a:{", "a:{}", "a:}", "a:{1x}", "a:{b-c}", "{a}{b}", "{a}x{b}", "{a}-{b}", "{a}%",
        ] {
            assert!(KeyTemplate::parse(bad).is_err(), "{bad:?} parsed");
        }
        assert_eq!(KeyTemplate::parse(""), Err(KeyTemplateError::Empty));
        assert!(matches!(
            KeyTemplate::parse("a:{b}x"),
            Err(KeyTemplateError::NotSeparated { name, .. }) if name == "b"
        ));
        assert!(matches!(
            KeyTemplate::parse("a:}"),
            Err(KeyTemplateError::Stray { .. })
        ));
    }

    #[test]
    fn specs_validate_their_settings() {
        let cron = || JobSpec::cron("j", "* * * * * *", "UTC").unwrap();
        assert!(cron().validate().is_ok());
        assert!(cron().ttl(Duration::ZERO).validate().is_err());
        assert!(cron().dedupe(Duration::from_secs(1)).validate().is_err());
        assert!(cron().misfire(Duration::ZERO).validate().is_err());
        assert!(cron().max_hold(Duration::ZERO).validate().is_err());
        assert!(cron().misfire(Duration::MAX).validate().is_err());
        assert!(cron().max_hold(Duration::MAX).validate().is_err());
        assert!(cron().backoff(Duration::MAX).validate().is_err());
        assert!(cron().retries(u32::MAX).validate().is_err());
        assert!(cron().retries(1000).validate().is_ok());
        assert!(matches!(
            JobSpec::cron("j", "* * * * * *", "Nowhere/Land"),
            Err(WorkerError::InvalidJob { name: "tz", .. })
        ));
        assert!(matches!(
            JobSpec::cron("j", "every minute", "UTC"),
            Err(WorkerError::InvalidJob { name: "cron", .. })
        ));
        assert!(JobSpec::cron("", "* * * * * *", "UTC").is_err());
        let keyed = JobSpec::keyed("k", "order:{id}").unwrap();
        assert!(keyed.dedupe(Duration::from_secs(60)).validate().is_ok());
        assert!(JobSpec::keyed("k", "order:{").is_err());
    }
}
