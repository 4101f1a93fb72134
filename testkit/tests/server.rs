//! `RedisServer` against a real `redis-server`: start, pause, kill, restart, arguments.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::thread;
use std::time::Duration;

use soloist_testkit::RedisServer;

fn connect(port: u16) -> io::Result<TcpStream> {
    TcpStream::connect((Ipv4Addr::LOCALHOST, port))
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

/// EOF or a reset: what a client sees when the server process dies.
fn closed(reply: &io::Result<String>) -> bool {
    match reply {
        Ok(line) => line.is_empty(),
        Err(e) => e.kind() == io::ErrorKind::ConnectionReset,
    }
}

#[test]
fn started_server_answers_on_its_url() {
    let server = RedisServer::start();
    assert_eq!(server.url(), format!("redis://127.0.0.1:{}", server.port()));
    assert!(server.is_running());
    assert!(server.pid().is_some());
    assert_eq!(server.cli(&["PING"]), "PONG");
    let stream = connect(server.port()).expect("connect to the server");
    assert_eq!(ping(&stream, Duration::from_secs(2)).unwrap(), "+PONG");
}

#[test]
fn paused_server_answers_only_after_resume() {
    let server = RedisServer::start();
    let stream = connect(server.port()).expect("connect to the server");
    assert_eq!(ping(&stream, Duration::from_secs(2)).unwrap(), "+PONG");

    server.pause();
    assert!(server.is_running(), "a paused server is still running");
    let err = ping(&stream, Duration::from_millis(300)).expect_err("a paused server answered");
    assert!(
        matches!(
            err.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ),
        "{err}"
    );

    server.resume();
    assert_eq!(
        read_reply(&stream, Duration::from_secs(2)).unwrap(),
        "+PONG"
    );
    assert_eq!(ping(&stream, Duration::from_secs(2)).unwrap(), "+PONG");
}

#[test]
fn killed_server_refuses_connections() {
    let mut server = RedisServer::start();
    let stream = connect(server.port()).expect("connect to the server");
    server.kill();
    assert!(!server.is_running());
    assert_eq!(server.pid(), None);
    let reply = read_reply(&stream, Duration::from_secs(2));
    assert!(
        closed(&reply),
        "the connection to a killed server is not closed: {reply:?}"
    );
    let err = connect(server.port()).expect_err("a killed server accepted a connection");
    assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
    server.kill(); // idempotent
}

#[test]
fn paused_server_can_be_killed() {
    let mut server = RedisServer::start();
    server.pause();
    server.kill();
    assert!(!server.is_running());
}

#[test]
fn restart_comes_back_empty_on_the_same_port() {
    let mut server = RedisServer::start();
    let port = server.port();
    assert_eq!(server.cli(&["SET", "k", "v"]), "OK");
    let old_pid = server.pid();

    server.restart();
    assert_eq!(server.port(), port);
    assert_ne!(server.pid(), old_pid);
    assert_eq!(
        server.cli(&["GET", "k"]),
        "",
        "no persistence: the key is gone"
    );
    let stream = connect(port).expect("connect to the restarted server");
    assert_eq!(ping(&stream, Duration::from_secs(2)).unwrap(), "+PONG");

    server.kill();
    server.start_again();
    assert_eq!(server.port(), port);
    assert_eq!(server.cli(&["PING"]), "PONG");
}

#[test]
fn restart_after_pause_works() {
    let mut server = RedisServer::start();
    server.pause();
    server.restart();
    assert_eq!(server.cli(&["PING"]), "PONG");
}

#[test]
fn builder_args_reach_the_server() {
    let server = RedisServer::builder()
        .arg("--maxmemory-policy")
        .arg("allkeys-lru")
        .start();
    assert_eq!(
        server.cli(&["CONFIG", "GET", "maxmemory-policy"]),
        "maxmemory-policy\nallkeys-lru"
    );
}

#[test]
fn builder_args_survive_a_restart() {
    let mut server = RedisServer::builder()
        .arg("--maxmemory-policy")
        .arg("allkeys-lru")
        .start();
    server.restart();
    assert_eq!(
        server.cli(&["CONFIG", "GET", "maxmemory-policy"]),
        "maxmemory-policy\nallkeys-lru"
    );
}

#[test]
fn servers_started_together_get_different_ports() {
    let starters: Vec<_> = (0..4).map(|_| thread::spawn(RedisServer::start)).collect();
    let servers: Vec<RedisServer> = starters.into_iter().map(|h| h.join().unwrap()).collect();
    let mut ports: Vec<u16> = servers.iter().map(RedisServer::port).collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), servers.len());
    for server in &servers {
        assert_eq!(server.cli(&["PING"]), "PONG");
    }
}

#[test]
#[should_panic(expected = "is not running")]
fn pause_after_kill_panics() {
    let mut server = RedisServer::start();
    server.kill();
    server.pause();
}

#[test]
#[should_panic(expected = "still running")]
fn start_again_while_running_panics() {
    let mut server = RedisServer::start();
    server.start_again();
}

#[test]
fn tls_server_listens_with_its_certificates_across_restarts() {
    let mut server = RedisServer::builder().tls_auth_clients(true).start();
    let url = server.tls_url();
    let tls_port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
    assert_ne!(tls_port, server.port());
    assert_eq!(
        server.cli(&["CONFIG", "GET", "tls-auth-clients"]),
        "tls-auth-clients\nyes"
    );
    let ca = server.certificates().ca_pem().to_owned();
    assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"));
    // A TLS port answers a plain-text command with nothing (it waits for a handshake) or
    // by closing, never with a RESP reply.
    let stream = connect(tls_port).expect("the TLS port accepts connections");
    let reply = ping(&stream, Duration::from_millis(300));
    assert!(
        !matches!(reply, Ok(ref r) if r.starts_with('+')),
        "{reply:?}"
    );
    server.restart();
    assert_eq!(server.tls_url(), url);
    assert_eq!(server.certificates().ca_pem(), ca);
    connect(tls_port).expect("the TLS port is back after restart");
}

#[test]
#[should_panic(expected = "no TLS port")]
fn plain_server_has_no_tls_url() {
    let _ = RedisServer::start().tls_url();
}

#[test]
fn get_tells_a_missing_key_an_empty_value_and_an_error_apart() {
    let server = RedisServer::start();
    assert_eq!(server.get("missing"), None);
    assert_eq!(server.cli(&["SET", "empty", ""]), "OK");
    assert_eq!(server.get("empty").as_deref(), Some(""));
    // redis-cli prints both as nothing.
    assert_eq!(
        server.cli(&["GET", "missing"]),
        server.cli(&["GET", "empty"])
    );
    assert_eq!(server.cli(&["SET", "k", "v"]), "OK");
    assert_eq!(server.get("k").as_deref(), Some("v"));

    assert_eq!(server.cli(&["RPUSH", "list", "a"]), "1");
    let failed = std::panic::catch_unwind(|| server.get("list")).expect_err("GET of a list");
    let message = failed
        .downcast_ref::<String>()
        .expect("a formatted panic message");
    assert!(message.contains("WRONGTYPE"), "{message}");
}
