//! Sending job-control signals to processes we started.

use std::fs;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

/// How long a stopped process may take to have all its threads actually stopped.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
const STOP_POLL: Duration = Duration::from_millis(1);

/// Sends `sig` to `pid`, panicking with a message that names `what` on failure.
///
/// For `SIGSTOP`, returns only once every thread of the process is stopped: `kill(2)` returns
/// as soon as the signal is queued, waking one thread to start the group stop while the others
/// keep running until it gets scheduled. A test that pauses a process and then checks that it
/// does nothing would race with those threads.
pub(crate) fn send(pid: u32, sig: Signal, what: &str) {
    let raw = i32::try_from(pid).expect("process id fits in an i32");
    if let Err(errno) = signal::kill(Pid::from_raw(raw), sig) {
        panic!("cannot send {sig} to {what} (pid {pid}): {errno}");
    }
    if sig == Signal::SIGSTOP {
        wait_stopped(pid, what);
    }
}

fn wait_stopped(pid: u32, what: &str) {
    if !Path::new("/proc/self/task").is_dir() {
        // No procfs to watch the threads with: give the group stop time to complete.
        thread::sleep(Duration::from_millis(50));
        return;
    }
    let deadline = Instant::now() + STOP_TIMEOUT;
    // `None`: the process is gone (killed meanwhile), so nothing is left that could run.
    while all_threads_stopped(pid) == Some(false) {
        assert!(
            Instant::now() < deadline,
            "sent SIGSTOP to {what} (pid {pid}) but its threads did not all stop within \
             {STOP_TIMEOUT:?}"
        );
        thread::sleep(STOP_POLL);
    }
}

/// Whether every thread of `pid` is stopped (or exiting), from `/proc/PID/task/*/stat`;
/// `None` if the process does not exist.
fn all_threads_stopped(pid: u32) -> Option<bool> {
    let tasks = fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let stopped = tasks.flatten().all(|task| {
        // A thread that exited between read_dir and here cannot run either.
        let Ok(stat) = fs::read_to_string(task.path().join("stat")) else {
            return true;
        };
        // `TID (COMM) STATE ...`, where COMM may itself contain spaces and parentheses.
        let state = stat
            .rfind(')')
            .and_then(|end| stat[end + 1..].split_whitespace().next());
        matches!(state, Some("T" | "t" | "Z" | "X" | "x"))
    });
    Some(stopped)
}
