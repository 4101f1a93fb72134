//! Rates as the attribute writes them: `"100/1m"`.

use std::time::Duration;

use crate::duration::{DurationError, parse_duration};

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

/// The most starts per period a rate allows.
pub const MAX_RATE_COUNT: u32 = 1_000_000;
/// The longest period a rate counts over.
pub const MAX_RATE_PERIOD: Duration = Duration::from_secs(7 * 86_400);

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
}
