//! CPU time used by a process, read from `/proc/PID/stat`.

use std::time::Duration;

/// Clock ticks per second of the `utime`/`stime` fields (`USER_HZ`), which
/// Linux fixes at 100 on every architecture it exposes to user space.
const USER_HZ: u64 = 100;

/// User plus system CPU time of this process (`pid` `None`) or of another
/// process; `None` when `/proc` cannot be read (not Linux, process gone).
/// The resolution is one tick, 10 ms.
pub(crate) fn cpu_time(pid: Option<u32>) -> Option<Duration> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    let stat = std::fs::read_to_string(path).ok()?;
    parse_stat(&stat)
}

/// Reads `utime` and `stime` (fields 14 and 15) from the text of a stat file.
fn parse_stat(stat: &str) -> Option<Duration> {
    // The command name (field 2) is in parentheses and may hold spaces or
    // parentheses itself, so fields are counted from the last `)`.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 1000 / USER_HZ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_utime_and_stime_after_an_awkward_name() {
        let stat =
            "4242 (lock bench) (x)) S 1 4242 4242 0 -1 4194560 500 0 0 0 250 130 0 0 20 0 3 0";
        assert_eq!(parse_stat(stat), Some(Duration::from_millis(3800)));
    }

    #[test]
    fn this_process_has_a_cpu_time() {
        assert!(cpu_time(None).is_some());
    }
}
