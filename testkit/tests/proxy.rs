//! `Proxy` between a raw client and a real `redis-server`: forward, cut, stall, restore.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::time::Duration;

use soloist_testkit::{Proxy, RedisServer};

const ANSWER: Duration = Duration::from_secs(2);
const SILENCE: Duration = Duration::from_millis(300);

fn connect(port: u16) -> TcpStream {
    TcpStream::connect((Ipv4Addr::LOCALHOST, port)).expect("connect to the proxy")
}

/// Sends an inline `PING` and reads one reply line, waiting at most `timeout`.
fn ping(stream: &TcpStream, timeout: Duration) -> io::Result<String> {
    (&*stream).write_all(b"PING\r\n")?;
    read_reply(stream, timeout)
}

fn read_reply(stream: &TcpStream, timeout: Duration) -> io::Result<String> {
    stream.set_read_timeout(Some(timeout))?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    Ok(line.trim_end().to_owned())
}

/// EOF or a reset (never a timeout): the connection was closed on us.
fn is_closed(reply: &io::Result<String>) -> bool {
    match reply {
        Ok(line) => line.is_empty(),
        Err(e) => matches!(
            e.kind(),
            io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
        ),
    }
}

fn is_timeout(reply: &io::Result<String>) -> bool {
    matches!(reply, Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut))
}

#[test]
fn proxy_forwards_both_ways() {
    let server = RedisServer::start();
    let proxy = Proxy::start(server.port());
    assert_eq!(proxy.url(), format!("redis://127.0.0.1:{}", proxy.port()));
    assert_ne!(proxy.port(), server.port());
    let stream = connect(proxy.port());
    for _ in 0..3 {
        assert_eq!(ping(&stream, ANSWER).unwrap(), "+PONG");
    }
}

#[test]
fn cut_closes_connections_until_restore() {
    let server = RedisServer::start();
    let proxy = Proxy::start(server.port());
    let stream = connect(proxy.port());
    assert_eq!(ping(&stream, ANSWER).unwrap(), "+PONG");

    proxy.cut();
    let reply = read_reply(&stream, ANSWER);
    assert!(
        is_closed(&reply),
        "open connection survived cut(): {reply:?}"
    );
    let during = connect(proxy.port());
    let reply = ping(&during, ANSWER);
    assert!(
        is_closed(&reply),
        "new connection survived cut(): {reply:?}"
    );

    proxy.restore();
    let after = connect(proxy.port());
    assert_eq!(ping(&after, ANSWER).unwrap(), "+PONG");
}

#[test]
fn stall_holds_bytes_until_restore() {
    let server = RedisServer::start();
    let proxy = Proxy::start(server.port());
    let stream = connect(proxy.port());
    assert_eq!(ping(&stream, ANSWER).unwrap(), "+PONG");

    proxy.stall();
    let reply = ping(&stream, SILENCE);
    assert!(is_timeout(&reply), "a stalled proxy forwarded: {reply:?}");
    let during = connect(proxy.port());
    let reply = ping(&during, SILENCE);
    assert!(
        is_timeout(&reply),
        "a new connection was not stalled: {reply:?}"
    );

    proxy.restore();
    assert_eq!(read_reply(&stream, ANSWER).unwrap(), "+PONG");
    assert_eq!(read_reply(&during, ANSWER).unwrap(), "+PONG");
    assert_eq!(ping(&stream, ANSWER).unwrap(), "+PONG");
}

#[test]
fn cut_ends_a_stall() {
    let server = RedisServer::start();
    let proxy = Proxy::start(server.port());
    let stream = connect(proxy.port());
    proxy.stall();
    let reply = ping(&stream, SILENCE);
    assert!(is_timeout(&reply), "a stalled proxy forwarded: {reply:?}");
    proxy.cut();
    let reply = read_reply(&stream, ANSWER);
    assert!(
        is_closed(&reply),
        "stalled connection survived cut(): {reply:?}"
    );
}

#[test]
fn dead_target_closes_connections() {
    let mut server = RedisServer::start();
    let proxy = Proxy::start(server.port());
    server.kill();
    let stream = connect(proxy.port());
    let reply = ping(&stream, ANSWER);
    assert!(
        is_closed(&reply),
        "connection to a dead target stayed open: {reply:?}"
    );

    server.start_again();
    let stream = connect(proxy.port());
    assert_eq!(ping(&stream, ANSWER).unwrap(), "+PONG");
}

#[test]
fn drop_closes_everything() {
    let server = RedisServer::start();
    let proxy = Proxy::start(server.port());
    let port = proxy.port();
    let stream = connect(port);
    assert_eq!(ping(&stream, ANSWER).unwrap(), "+PONG");

    drop(proxy);
    let reply = read_reply(&stream, ANSWER);
    assert!(
        is_closed(&reply),
        "connection survived dropping the proxy: {reply:?}"
    );
    let err =
        TcpStream::connect((Ipv4Addr::LOCALHOST, port)).expect_err("a dropped proxy accepted");
    assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
}

/// Sends an inline command and reads one reply line.
fn ask(stream: &TcpStream, command: &str) -> String {
    (&*stream)
        .write_all(format!("{command}\r\n").as_bytes())
        .expect("send");
    read_reply(stream, ANSWER).expect("reply")
}

#[test]
fn retarget_sends_new_connections_elsewhere_and_leaves_open_ones() {
    let first = RedisServer::start();
    let second = RedisServer::start();
    second.cli(&["SET", "on", "second"]);
    let proxy = Proxy::start(first.port());
    let old = connect(proxy.port());
    assert_eq!(ask(&old, "DBSIZE"), ":0");
    proxy.retarget(second.port());
    let new = connect(proxy.port());
    assert_eq!(
        ask(&new, "DBSIZE"),
        ":1",
        "a new connection reaches the second server"
    );
    assert_eq!(
        ask(&old, "DBSIZE"),
        ":0",
        "an open one stays with the first"
    );
}
