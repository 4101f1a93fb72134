//! Parsing `INFO commandstats`: how many commands the server has run.
//!
//! Redis counts the commands a Lua script runs (`redis.call`) in their own
//! `cmdstat_*` lines as well as the `EVALSHA` that ran the script, so the
//! total is the server's real work, and `EVALSHA` alone is the number of
//! round trips spent on scripts.

use std::collections::BTreeMap;

/// Command counters read from one `INFO commandstats` reply.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct CommandCounts {
    /// Calls of every command except `INFO` itself (the probe's own reads).
    pub(crate) total: u64,
    /// Calls of `EVALSHA` (and `EVAL`, which clients fall back to rarely).
    pub(crate) scripts: u64,
}

impl CommandCounts {
    /// Parses the text of an `INFO commandstats` reply; lines it does not
    /// understand are skipped.
    pub(crate) fn parse(info: &str) -> CommandCounts {
        let mut counts = CommandCounts::default();
        for (name, calls) in command_calls(info) {
            counts.total += calls;
            if name.eq_ignore_ascii_case("evalsha") || name.eq_ignore_ascii_case("eval") {
                counts.scripts += calls;
            }
        }
        counts
    }

    /// The counts of two servers added up.
    pub(crate) fn plus(self, other: CommandCounts) -> CommandCounts {
        CommandCounts {
            total: self.total + other.total,
            scripts: self.scripts + other.scripts,
        }
    }

    /// The counts run between `earlier` and `self`.
    pub(crate) fn since(self, earlier: CommandCounts) -> CommandCounts {
        CommandCounts {
            total: self.total.saturating_sub(earlier.total),
            scripts: self.scripts.saturating_sub(earlier.scripts),
        }
    }
}

/// Calls per command name (lower case, as Redis reports it), `INFO` left
/// out, from the text of an `INFO commandstats` reply.
pub(crate) fn calls_by_command(info: &str) -> BTreeMap<String, u64> {
    let mut calls = BTreeMap::new();
    for (name, count) in command_calls(info) {
        *calls.entry(name.to_ascii_lowercase()).or_insert(0) += count;
    }
    calls
}

/// The counts of each command in `later` beyond those in `earlier`;
/// commands that did not run in between are left out.
pub(crate) fn calls_since(
    later: &BTreeMap<String, u64>,
    earlier: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    later
        .iter()
        .filter_map(|(name, &calls)| {
            let ran = calls.saturating_sub(earlier.get(name).copied().unwrap_or(0));
            (ran > 0).then(|| (name.clone(), ran))
        })
        .collect()
}

/// Each `cmdstat_NAME:calls=N,...` line as `(NAME, N)`, `INFO` itself
/// left out; lines it does not understand are skipped.
fn command_calls(info: &str) -> impl Iterator<Item = (&str, u64)> {
    info.lines().filter_map(|line| {
        let (name, fields) = line
            .trim()
            .strip_prefix("cmdstat_")
            .and_then(|rest| rest.split_once(':'))?;
        let calls = fields
            .split(',')
            .find_map(|field| field.strip_prefix("calls="))
            .and_then(|calls| calls.parse::<u64>().ok())?;
        (!name.eq_ignore_ascii_case("info")).then_some((name, calls))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_calls_and_leaves_out_info() {
        let info = "# Commandstats\r\n\
            cmdstat_set:calls=10,usec=20,usec_per_call=2.00,rejected_calls=0,failed_calls=0\r\n\
            cmdstat_evalsha:calls=4,usec=80,usec_per_call=20.00,rejected_calls=0,failed_calls=0\r\n\
            cmdstat_client|setinfo:calls=2,usec=1,usec_per_call=0.50,rejected_calls=0,failed_calls=0\r\n\
            cmdstat_info:calls=99,usec=999,usec_per_call=10.09,rejected_calls=0,failed_calls=0\r\n";
        assert_eq!(
            CommandCounts::parse(info),
            CommandCounts {
                total: 16,
                scripts: 4
            }
        );
        let by_command = calls_by_command(info);
        assert_eq!(by_command.get("set"), Some(&10));
        assert_eq!(by_command.get("client|setinfo"), Some(&2));
        assert!(!by_command.contains_key("info"));
        let mut earlier = by_command.clone();
        earlier.insert("set".to_owned(), 4);
        assert_eq!(
            calls_since(&by_command, &earlier),
            BTreeMap::from([("set".to_owned(), 6)])
        );
    }
}
