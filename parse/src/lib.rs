//! The parsers soloist's `#[exclusive_job]` attribute shares with its
//! worker: cron schedules in a time zone (feature `schedule`), durations
//! and the bounds of the settings that take them, rates (`"100/1m"`), and
//! key templates with the escaping that keeps rendered keys apart.
//!
//! The attribute checks its literals with these at compile time and the
//! worker checks the same settings with them at run time, so what compiles
//! is exactly what the worker accepts. This crate depends on no runtime:
//! the proc macro links neither tokio nor redis. Use it through
//! [`soloist`](https://docs.rs/soloist), which re-exports its items.
//!
//! ```
//! use std::time::Duration;
//! use soloist::{KeyTemplate, parse_duration};
//! assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
//! assert_eq!(KeyTemplate::parse("invoice:{id}").unwrap().placeholders(), ["id"]);
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]

mod duration;
mod key;
mod rate;
#[cfg(feature = "schedule")]
mod schedule;

pub use duration::{
    DurationError, MAX_PERMITS, MAX_RETRIES, MAX_SETTING, MAX_TTL, MIN_TTL, parse_duration,
};
pub use key::{KeyPart, KeyTemplate, KeyTemplateError, escaped, is_plain};
pub use rate::{MAX_RATE_COUNT, MAX_RATE_PERIOD, Rate, RateError, parse_rate};
#[cfg(feature = "schedule")]
#[cfg_attr(docsrs, doc(cfg(feature = "schedule")))]
pub use schedule::{CronSchedule, ScheduleError};
