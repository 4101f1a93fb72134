//! What a job is: its trigger and the settings of the lock it runs under.

use std::time::Duration;

use crate::error::{Result, WorkerError};
use soloist_parse::{
    CronSchedule, KeyTemplate, MAX_PERMITS, MAX_RETRIES, MAX_SETTING, Rate, ScheduleError,
};

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
    /// Starts per period, checked by `validate`.
    pub(crate) rate: Option<(u32, Duration)>,
    pub(crate) over_rate: OverRate,
}

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
                ScheduleError::TimeZone(_) => "tz",
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
    /// [`MAX_PERMITS`](MAX_PERMITS); default: no limit for
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
    /// [`Rate::new`](crate::Rate::new) checks them; [`parse_rate`](crate::parse_rate) reads them from a string.
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
        self.rate = Some((count, period));
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
            && !(1..=MAX_PERMITS).contains(&permits)
        {
            return Err(WorkerError::invalid(
                &self.name,
                "concurrency",
                format!("must be between 1 and {}", MAX_PERMITS),
            ));
        }
        if let Some((count, period)) = self.rate {
            if let Err(err) = Rate::new(count, period) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
