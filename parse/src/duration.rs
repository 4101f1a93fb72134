//! Durations as the attribute writes them, and the bounds of the settings
//! that take one.

use std::time::Duration;

/// The shortest lease accepted: below it, clock drift and round trips eat it whole.
pub const MIN_TTL: Duration = Duration::from_millis(10);
/// The longest lease accepted; hold longer with the watchdog, not a long ttl.
pub const MAX_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// The longest duration a job setting other than `ttl` takes (`misfire`,
/// `max_hold`, `dedupe`, `backoff`, `wait`): a year.
pub const MAX_SETTING: Duration = Duration::from_secs(365 * 86_400);
/// The most permits one semaphore may have, and so the highest
/// `concurrency` of a job. Every holder is a member the acquire script
/// counts, so the bound keeps one acquisition cheap.
pub const MAX_PERMITS: u32 = 100_000;
/// The most `retries` a job takes.
pub const MAX_RETRIES: u32 = 1000;

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
}
