//! Re-running the current test binary as a separate process, to kill or freeze a lock holder
//! that really is another process.

use std::env;
use std::io::{self, BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::signal;

/// The environment variable that carries the role of a child process.
const ROLE_VAR: &str = "SOLOIST_CHILD";
/// Marks the stdout lines meant for the parent, among libtest's own output.
const PREFIX: &str = "soloist-child:";
/// How long [`ChildProcess::read_line`] waits, so a stuck child fails the test instead of
/// hanging it.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Re-runs the current test binary to execute one test fn as a child process, with the
/// environment variable `SOLOIST_CHILD=<role>`.
///
/// The test fn checks [`child_role`] first: in the child it plays its role, talking to the
/// parent with [`send_to_parent`] and [`read_from_parent`]; in the parent it spawns the child
/// and drives it. The child is killed with `SIGKILL` on `Drop`.
///
/// ```no_run
/// use soloist_testkit::{ChildProcess, child_role, read_from_parent, send_to_parent};
///
/// #[test]
/// fn holder_is_killed() {
///     if child_role().as_deref() == Some("holder") {
///         // ... acquire the lock ...
///         send_to_parent("locked");
///         let _ = read_from_parent(); // wait to be killed
///         return;
///     }
///     let mut holder = ChildProcess::spawn("holder_is_killed", "holder", &[]);
///     assert_eq!(holder.read_line(), "locked");
///     holder.kill(); // the holder dies while holding the lock
///     // ... assert the lock becomes free within its ttl ...
/// }
/// ```
#[derive(Debug)]
pub struct ChildProcess {
    role: String,
    child: Child,
    stdin: Option<ChildStdin>,
    /// Stdout lines, read by a thread so that `read_line` can time out.
    lines: Receiver<String>,
    /// Every stdout line received so far, quoted when the child misbehaves.
    transcript: Vec<String>,
    killed: bool,
}

impl ChildProcess {
    /// Runs the current executable with `[test_name, "--exact", "--nocapture",
    /// "--test-threads=1"]`, `SOLOIST_CHILD=role` and the extra `envs`, with piped stdin and
    /// stdout (stderr is inherited, so the child's panics show up in the test output).
    ///
    /// `test_name` is the test's path inside its binary, e.g. `"holder_is_killed"` for a
    /// top-level fn of an integration test.
    ///
    /// # Panics
    ///
    /// If the current executable cannot be found or run.
    pub fn spawn(test_name: &str, role: &str, envs: &[(&str, &str)]) -> ChildProcess {
        let exe = env::current_exe().expect("locate the current test executable");
        let mut child = Command::new(&exe)
            .args([test_name, "--exact", "--nocapture", "--test-threads=1"])
            .env(ROLE_VAR, role)
            .envs(envs.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {} as child `{role}`: {e}", exe.display()));
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("child stdout is piped");
        let (tx, lines) = mpsc::channel();
        thread::Builder::new()
            .name(format!("child-{role}-stdout"))
            .spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            })
            .expect("spawn the child stdout reader thread");
        ChildProcess {
            role: role.to_owned(),
            child,
            stdin,
            lines,
            transcript: Vec::new(),
            killed: false,
        }
    }

    /// The next message the child sent with [`send_to_parent`], trimmed: the rest of the next
    /// stdout line containing `soloist-child:`, after that prefix. Other output (libtest's) is
    /// skipped.
    ///
    /// # Panics
    ///
    /// If the child closes its stdout (exits) first, or sends nothing for 60 seconds; the
    /// message quotes everything it printed.
    pub fn read_line(&mut self) -> String {
        self.try_read_line(READ_TIMEOUT).unwrap_or_else(|| {
            panic!(
                "child `{}` sent no `{PREFIX}` line within {READ_TIMEOUT:?}; its stdout so \
                 far:\n{}",
                self.role,
                self.transcript.join("\n"),
            )
        })
    }

    /// Like [`read_line`](Self::read_line), but returns `None` if no message arrives within
    /// `timeout`: to check that a paused or blocked child says nothing.
    ///
    /// # Panics
    ///
    /// If the child closes its stdout (exits) first; the message quotes everything it printed.
    pub fn try_read_line(&mut self, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let wait = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(wait) {
                Ok(line) => {
                    // libtest may print `test name ... ` on the same line before the message.
                    let message = line
                        .find(PREFIX)
                        .map(|at| line[at + PREFIX.len()..].trim().to_owned());
                    self.transcript.push(line);
                    if message.is_some() {
                        return message;
                    }
                }
                Err(RecvTimeoutError::Timeout) => return None,
                Err(RecvTimeoutError::Disconnected) => {
                    let status = match self.child.wait() {
                        Ok(status) => status.to_string(),
                        Err(e) => format!("status unknown: {e}"),
                    };
                    panic!(
                        "child `{}` closed its stdout ({status}) before sending a `{PREFIX}` \
                         line; its stdout:\n{}",
                        self.role,
                        self.transcript.join("\n"),
                    );
                }
            }
        }
    }

    /// Sends one line to the child's stdin, where [`read_from_parent`] reads it.
    ///
    /// # Panics
    ///
    /// If the child has exited or been killed.
    pub fn write_line(&mut self, line: &str) {
        let role = &self.role;
        let stdin = self
            .stdin
            .as_mut()
            .unwrap_or_else(|| panic!("write_line: child `{role}` was killed"));
        if let Err(e) = writeln!(stdin, "{line}").and_then(|()| stdin.flush()) {
            panic!("write_line: cannot write to child `{role}` (has it exited?): {e}");
        }
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the child with `SIGKILL` and reaps it. Does nothing the second time.
    pub fn kill(&mut self) {
        if self.killed {
            return;
        }
        self.killed = true;
        // The only error is "already exited", which is what we want anyway.
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Only now: closing stdin first would let the child see EOF and react before dying.
        self.stdin = None;
    }

    /// Freezes the child with `SIGSTOP` until [`resume`](Self::resume): its threads, timers
    /// and lock renewals all stop, like a process in a long GC pause.
    ///
    /// # Panics
    ///
    /// If the child was killed.
    pub fn pause(&self) {
        self.signal(Signal::SIGSTOP, "pause");
    }

    /// Continues a child frozen by [`pause`](Self::pause) with `SIGCONT`.
    ///
    /// # Panics
    ///
    /// If the child was killed.
    pub fn resume(&self) {
        self.signal(Signal::SIGCONT, "resume");
    }

    fn signal(&self, sig: Signal, action: &str) {
        assert!(!self.killed, "{action}: child `{}` was killed", self.role);
        signal::send(self.pid(), sig, &format!("child `{}`", self.role));
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The role this process plays when it was started by [`ChildProcess::spawn`] (the value of
/// `SOLOIST_CHILD`), or `None` in the parent.
pub fn child_role() -> Option<String> {
    env::var(ROLE_VAR).ok()
}

/// In a child process: sends `message` to the parent, which receives it from
/// [`ChildProcess::read_line`]. Prints `soloist-child:<message>` on stdout.
pub fn send_to_parent(message: &str) {
    println!("{PREFIX}{message}");
}

/// In a child process: the next line the parent sent with [`ChildProcess::write_line`], without
/// its line ending. Blocks until it arrives.
///
/// # Panics
///
/// If stdin is closed (the parent is gone) or unreadable.
pub fn read_from_parent() -> String {
    let mut line = String::new();
    match io::stdin().lock().read_line(&mut line) {
        Ok(0) => panic!("read_from_parent: stdin closed, the parent is gone"),
        Ok(_) => line.trim_end_matches(['\r', '\n']).to_owned(),
        Err(e) => panic!("read_from_parent: cannot read stdin: {e}"),
    }
}
