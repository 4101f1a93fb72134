//! Parsing `INFO commandstats`: how many commands the server has run.
//!
//! Redis counts the commands a Lua script runs (`redis.call`) in their own
//! `cmdstat_*` lines as well as the `EVALSHA` that ran the script, so the
//! total is the server's real work, and `EVALSHA` alone is the number of
//! round trips spent on scripts.

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
        for line in info.lines() {
            let Some((name, fields)) = line
                .trim()
                .strip_prefix("cmdstat_")
                .and_then(|rest| rest.split_once(':'))
            else {
                continue;
            };
            let Some(calls) = fields
                .split(',')
                .find_map(|field| field.strip_prefix("calls="))
                .and_then(|calls| calls.parse::<u64>().ok())
            else {
                continue;
            };
            if name.eq_ignore_ascii_case("info") {
                continue;
            }
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
    }
}
