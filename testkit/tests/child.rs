//! `ChildProcess`: the test binary re-running one of its own tests as a separate process.

use std::panic;
use std::time::Duration;

use soloist_testkit::{ChildProcess, RedisServer, child_role, read_from_parent, send_to_parent};

#[test]
fn child_talks_both_ways() {
    if child_role().as_deref() == Some("echo") {
        send_to_parent(&format!(
            "ready {}",
            std::env::var("ECHO_GREETING").unwrap_or_default()
        ));
        loop {
            let line = read_from_parent();
            send_to_parent(&format!("echo {line}"));
        }
    }
    assert_eq!(child_role(), None);

    let mut child =
        ChildProcess::spawn("child_talks_both_ways", "echo", &[("ECHO_GREETING", "hi")]);
    assert_eq!(child.read_line(), "ready hi");
    child.write_line("one");
    assert_eq!(child.read_line(), "echo one");

    child.pause();
    child.write_line("two");
    assert_eq!(
        child.try_read_line(Duration::from_millis(300)),
        None,
        "a paused child answered"
    );
    child.resume();
    assert_eq!(child.read_line(), "echo two");

    let pid = child.pid();
    assert!(pid > 0);
    child.kill();
    child.kill(); // idempotent
}

#[test]
#[should_panic(expected = "closed its stdout")]
fn read_line_panics_when_the_child_exits() {
    if child_role().is_some() {
        return;
    }
    let mut child = ChildProcess::spawn("read_line_panics_when_the_child_exits", "quiet", &[]);
    child.read_line();
}

/// The rule from STYLE.md: without `redis-server` a test fails with install instructions.
#[test]
fn missing_redis_server_fails_with_install_hint() {
    if child_role().as_deref() == Some("no-redis") {
        panic::set_hook(Box::new(|_| {}));
        let outcome = panic::catch_unwind(RedisServer::start);
        let message = match outcome {
            Ok(_) => "started".to_owned(),
            Err(payload) => payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default(),
        };
        send_to_parent(&format!("panicked: {message}"));
        return;
    }
    let mut child = ChildProcess::spawn(
        "missing_redis_server_fails_with_install_hint",
        "no-redis",
        &[("PATH", "/nonexistent"), ("REDIS_SERVER_BIN", "")],
    );
    let message = child.read_line();
    assert!(
        message.starts_with("panicked: redis-server not found on PATH"),
        "{message}"
    );
    assert!(
        message.contains("apt-get install -y redis-server"),
        "{message}"
    );
    assert!(message.contains("bash .ci/test"), "{message}");
}
