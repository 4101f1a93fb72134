//! A real `redis-server` child process on a free loopback port.

use std::env;
use std::ffi::OsStr;
use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tempfile::TempDir;

use crate::TestCertificates;
use crate::resp::{self, Reply};
use crate::signal;

/// How long a freshly spawned server may take to answer.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How many free ports [`RedisServerBuilder::start`] tries before giving up.
const START_ATTEMPTS: usize = 5;
/// Pause between readiness probes and between relaunches on the same port.
const RETRY_INTERVAL: Duration = Duration::from_millis(10);
/// How long [`RedisServer::get`] waits for an answer, and
/// [`RedisServer::write_and_wait`] beyond its `WAIT`'s own timeout.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// How many lines of `redis.log` a startup failure quotes.
const LOG_TAIL_LINES: usize = 25;

const NOT_FOUND: &str = "redis-server not found on PATH: install it (e.g. `sudo apt-get install -y \
                         redis-server`) or run `bash .ci/test`, which installs it";

/// The least privileges soloist needs, as `ACL SETUSER` rules: its own keys
/// (the default prefix `soloist:`) and those of the streams the tests use
/// (`orders*`), its own wake-up channels, and the command categories its
/// scripts, streams and wake-ups use, without the dangerous ones; `MULTI`
/// and `EXEC` let an acquisition take a free key without a script.
pub const SOLOIST_ACL_RULES: &[&str] = &[
    "resetkeys",
    "~soloist:*",
    "~orders",
    "~{orders}:*",
    "resetchannels",
    "&soloist:*",
    "-@all",
    "+@read",
    "+@write",
    "+@scripting",
    "+@pubsub",
    "+@stream",
    "+@connection",
    "+time",
    "+multi",
    "+exec",
    "-@dangerous",
];

/// A `redis-server` child process on a free loopback port, in its own temp dir, killed on
/// `Drop`.
///
/// The server runs without persistence (`--save "" --appendonly no`), bound to `127.0.0.1`,
/// with its log in `redis.log` inside its temp dir (quoted when it fails to start).
///
/// All methods panic with a descriptive message when the environment is broken (no
/// `redis-server`, no free port, a server that never becomes ready): this is test setup, and a
/// test that cannot set up must fail, never pass.
///
/// ```no_run
/// use soloist_testkit::RedisServer;
///
/// let mut server = RedisServer::start();
/// assert_eq!(server.cli(&["SET", "k", "v"]), "OK");
/// server.restart(); // same port, data gone
/// assert_eq!(server.cli(&["GET", "k"]), "");
/// ```
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    bin: PathBuf,
    args: Vec<String>,
    /// `None` once killed. A `Mutex` so `&self` methods can reap a server that died on its own.
    /// Shared with the thread of [`pause_for`](RedisServer::pause_for).
    child: Arc<Mutex<Option<Child>>>,
    dir: TempDir,
    /// Boxed: the certificates would more than double the size of every server.
    tls: Option<Box<TlsListener>>,
}

/// The TLS side of a server started with [`RedisServerBuilder::tls`].
#[derive(Debug)]
struct TlsListener {
    port: u16,
    certs: TestCertificates,
}

/// Configures a [`RedisServer`] before starting it; get one from [`RedisServer::builder`].
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct RedisServerBuilder {
    args: Vec<String>,
    /// `Some(auth_clients)` once TLS is asked for.
    tls: Option<bool>,
    /// Certificates to use instead of fresh ones ([`tls_certificates`](Self::tls_certificates)).
    certs: Option<TestCertificates>,
    /// A cluster node: `--cluster-enabled yes` with a bus port picked per start attempt.
    cluster: bool,
}

impl RedisServerBuilder {
    /// Appends one extra `redis-server` command-line argument, after the ones the testkit
    /// sets (so it can override them).
    ///
    /// Pass option and value as separate calls:
    /// `.arg("--maxmemory-policy").arg("allkeys-lru")`.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Also listens for TLS on a second free port, with a fresh private CA and a server
    /// certificate for `127.0.0.1` ([`TestCertificates`], written to the server's temp dir;
    /// [`tls_certificates`](Self::tls_certificates) passes a set instead).
    /// Clients need not present a certificate unless
    /// [`tls_auth_clients`](Self::tls_auth_clients) says so.
    ///
    /// The plain port stays open: the readiness probe, [`RedisServer::cli`] and
    /// [`RedisServer::url`] use it; the code under test uses [`RedisServer::tls_url`].
    ///
    /// ```no_run
    /// use soloist_testkit::RedisServer;
    ///
    /// let server = RedisServer::builder().tls().start();
    /// let ca = server.certificates().ca_pem();
    /// assert!(server.tls_url().starts_with("rediss://127.0.0.1:"));
    /// # let _ = ca;
    /// ```
    pub fn tls(mut self) -> Self {
        self.tls.get_or_insert(false);
        self
    }

    /// TLS ([`tls`](Self::tls)) where the server requires (`true`) or does not ask for
    /// (`false`) a client certificate signed by its CA: `--tls-auth-clients yes|no`.
    pub fn tls_auth_clients(mut self, required: bool) -> Self {
        self.tls = Some(required);
        self
    }

    /// TLS ([`tls`](Self::tls)) with `certs` instead of a fresh set, so that several servers
    /// share one CA and trust each other (a TLS replica, the nodes of a TLS
    /// [`RedisCluster`](crate::RedisCluster)).
    ///
    /// Every TLS server presents the client certificate of its set on the connections it opens
    /// itself (`--tls-client-cert-file`): to its primary, to other cluster nodes, for
    /// `MIGRATE`.
    pub fn tls_certificates(mut self, certs: TestCertificates) -> Self {
        self.tls.get_or_insert(false);
        self.certs = Some(certs);
        self
    }

    /// Makes the server a cluster node: `--cluster-enabled yes`, its `nodes.conf` in its temp
    /// dir, and a cluster bus port picked freely on every start attempt (`--cluster-port`;
    /// the default, port + 10000, overflows for ephemeral ports above 55535).
    pub(crate) fn cluster_node(mut self) -> Self {
        self.cluster = true;
        self
    }

    /// Starts the server and waits until it answers.
    ///
    /// If another process grabs the chosen port before the server binds it, a new free port is
    /// tried, up to five times.
    ///
    /// # Panics
    ///
    /// When `redis-server` cannot be found or never becomes ready; the message quotes the tail
    /// of its log.
    pub fn start(self) -> RedisServer {
        let bin = redis_server_bin();
        let dir = tempfile::Builder::new()
            .prefix("soloist-redis-")
            .tempdir()
            .expect("create a temp dir for redis-server");
        let certs = self
            .tls
            .map(|_| write_certificates(dir.path(), self.certs.clone()));
        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            let port = free_port();
            let tls_port = certs.as_ref().map(|_| free_port());
            let mut args = Vec::new();
            if let (Some(tls_port), Some(auth_clients)) = (tls_port, self.tls) {
                args.extend(tls_args(dir.path(), tls_port, auth_clients));
            }
            if self.cluster {
                args.extend(cluster_args(dir.path(), free_port()));
            }
            args.extend(self.args.iter().cloned());
            let deadline = Instant::now() + READY_TIMEOUT;
            match launch(&bin, port, dir.path(), &args, deadline) {
                Ok(child) => {
                    return RedisServer {
                        port,
                        bin,
                        args,
                        child: Arc::new(Mutex::new(Some(child))),
                        dir,
                        tls: tls_port
                            .zip(certs)
                            .map(|(port, certs)| Box::new(TlsListener { port, certs })),
                    };
                }
                Err(failure) => failures.push(format!("port {port}: {failure}")),
            }
        }
        panic!(
            "redis-server did not start after {START_ATTEMPTS} attempts ({}); extra args {:?}; \
             {}",
            failures.join("; "),
            self.args,
            log_tail(dir.path()),
        );
    }
}

impl RedisServer {
    /// Starts a server with the default configuration; same as `RedisServer::builder().start()`.
    ///
    /// # Panics
    ///
    /// See [`RedisServerBuilder::start`].
    pub fn start() -> RedisServer {
        Self::builder().start()
    }

    /// A builder to pass extra `redis-server` arguments.
    pub fn builder() -> RedisServerBuilder {
        RedisServerBuilder::default()
    }

    /// The connection URL, `redis://127.0.0.1:PORT`. It stays valid across
    /// [`restart`](Self::restart).
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The TLS URL, `rediss://127.0.0.1:TLS_PORT`; valid across [`restart`](Self::restart).
    ///
    /// # Panics
    ///
    /// If the server was not built with [`RedisServerBuilder::tls`].
    pub fn tls_url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.tls_listener().port)
    }

    /// The CA, server and client certificates of a TLS server.
    ///
    /// # Panics
    ///
    /// If the server was not built with [`RedisServerBuilder::tls`].
    pub fn certificates(&self) -> &TestCertificates {
        &self.tls_listener().certs
    }

    fn tls_listener(&self) -> &TlsListener {
        self.tls.as_ref().unwrap_or_else(|| {
            panic!(
                "redis-server on port {} has no TLS port: build it with RedisServer::builder().tls()",
                self.port
            )
        })
    }

    /// The TCP port the server listens on; the same for the server's whole life.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The TLS port; panics without TLS.
    pub(crate) fn tls_port(&self) -> u16 {
        self.tls_listener().port
    }

    /// A `redis-cli` command with no arguments yet and stdin closed; see [`cli`](Self::cli)
    /// for how the binary is found.
    pub(crate) fn cli_command(&self) -> Command {
        let mut command = Command::new(redis_cli_bin(&self.bin));
        command.stdin(Stdio::null());
        command
    }

    /// The process id, or `None` when the server is not running (killed, or exited on its own).
    /// A paused server is running.
    pub fn pid(&self) -> Option<u32> {
        running(&mut self.lock_child()).map(|child| child.id())
    }

    /// Whether the server process is alive (a paused server is).
    pub fn is_running(&self) -> bool {
        self.pid().is_some()
    }

    /// Kills the server with `SIGKILL` (no clean shutdown, like a crash) and reaps it.
    /// Does nothing if it is not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.lock_child().take() {
            // The only error is "already exited", which is what we want anyway.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the server with `SIGSTOP`: it keeps its port and accepts connections (the kernel
    /// completes the handshake) but answers nothing until [`resume`](Self::resume).
    ///
    /// # Panics
    ///
    /// If the server is not running.
    pub fn pause(&self) {
        self.signal(Signal::SIGSTOP, "pause");
    }

    /// Freezes the server now, as [`pause`](Self::pause) does, and continues it `frozen`
    /// later from a thread of its own: for freezing it from code the test does not drive (a
    /// job's body) or while the test awaits the request the freeze holds up. Nothing is
    /// continued if the server was killed meanwhile.
    ///
    /// # Panics
    ///
    /// If the server is not running.
    pub fn pause_for(&self, frozen: Duration) {
        self.pause();
        let (child, port) = (self.child.clone(), self.port);
        thread::spawn(move || {
            thread::sleep(frozen);
            let mut child = child.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(pid) = running(&mut child).map(|child| child.id()) {
                signal::send(
                    pid,
                    Signal::SIGCONT,
                    &format!("redis-server on port {port}"),
                );
            }
        });
    }

    /// Continues a server frozen by [`pause`](Self::pause) with `SIGCONT`; it then answers
    /// every request that arrived meanwhile.
    ///
    /// # Panics
    ///
    /// If the server is not running.
    pub fn resume(&self) {
        self.signal(Signal::SIGCONT, "resume");
    }

    /// Kills the server if it is running, then starts it again on the same port with the same
    /// arguments and waits until it answers. The data set is empty afterwards.
    ///
    /// # Panics
    ///
    /// See [`start_again`](Self::start_again).
    pub fn restart(&mut self) {
        self.kill();
        self.start_again();
    }

    /// Starts the server again on the same port after [`kill`](Self::kill), with the same
    /// arguments, and waits until it answers. Retries for a few seconds in case the port is
    /// briefly unavailable.
    ///
    /// # Panics
    ///
    /// If the server is still running (use [`restart`](Self::restart)), or it does not come
    /// back within ten seconds.
    pub fn start_again(&mut self) {
        assert!(
            !self.is_running(),
            "start_again: redis-server on port {} is still running; kill() it first or use \
             restart()",
            self.port,
        );
        let deadline = Instant::now() + READY_TIMEOUT;
        let child = loop {
            match launch(&self.bin, self.port, self.dir.path(), &self.args, deadline) {
                Ok(child) => break child,
                // Usually the port is still held by something that lets go of it shortly.
                Err(_) if Instant::now() < deadline => thread::sleep(RETRY_INTERVAL * 5),
                Err(failure) => panic!(
                    "redis-server did not start again on port {}: {failure}; {}",
                    self.port,
                    log_tail(self.dir.path()),
                ),
            }
        };
        *self.lock_child() = Some(child);
    }

    /// Runs `redis-cli -h 127.0.0.1 -p PORT args...` and returns its trimmed stdout.
    ///
    /// Redis error replies come back as text (`ERR ...`, `MOVED ...`), since `redis-cli`
    /// exits successfully for them, and a nil reply comes back as `""`, like an empty string:
    /// to check a value, use [`get`](Self::get), which tells nil, a value and an error
    /// apart. Every call is a new `redis-cli` process with a connection of its own, so
    /// `cli(&["WAIT", ..])` waits for no write at all: use
    /// [`write_and_wait`](Self::write_and_wait). Blocks while the server is paused.
    /// `redis-cli` is looked up through `REDIS_CLI_BIN`, next to `redis-server`, then on
    /// `PATH`.
    ///
    /// # Panics
    ///
    /// If `redis-cli` cannot be run or exits unsuccessfully (the message includes its stderr):
    /// the server refused the connection or closed it before answering.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut command = self.cli_command();
        let output = command
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {}: {e}",
                    command.get_program().to_string_lossy()
                )
            });
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "redis-cli -p {} {args:?} failed ({}): stderr: {} stdout: {}",
            self.port,
            output.status,
            String::from_utf8_lossy(&output.stderr).trim(),
            stdout.trim(),
        );
        stdout.trim().to_owned()
    }

    /// The value of the string `key` (`GET key`): `None` when the key does not exist.
    ///
    /// Unlike [`cli`](Self::cli), where a missing key, an empty value and a failed call can
    /// all look alike, an answer here is the server's own: any error reply (`MOVED`,
    /// `CLUSTERDOWN`, `LOADING`, `WRONGTYPE`, ...) or a connection the server closes panics
    /// with what happened.
    ///
    /// ```no_run
    /// use soloist_testkit::RedisServer;
    ///
    /// let server = RedisServer::start();
    /// assert_eq!(server.get("k"), None);
    /// server.cli(&["SET", "k", ""]);
    /// assert_eq!(server.get("k").as_deref(), Some(""));
    /// ```
    ///
    /// # Panics
    ///
    /// On an error reply, or when the server does not answer within 10 s (paused, killed).
    pub fn get(&self, key: &str) -> Option<String> {
        match self.call(&[&["GET", key]], REPLY_TIMEOUT).remove(0) {
            Reply::Bulk(value) => value.map(|bytes| String::from_utf8_lossy(&bytes).into_owned()),
            other => panic!(
                "redis-server on port {}: GET {key:?} answered {other:?}",
                self.port
            ),
        }
    }

    /// Runs the write `command`, then `WAIT replicas timeout`, on **one** connection, and
    /// returns how many replicas `WAIT` counted as having the write.
    ///
    /// `WAIT` waits for the last write of the connection it is sent on. A `WAIT` on a
    /// connection of its own, as [`cli`](Self::cli) sends it, has no write to wait for: it
    /// answers at once with every replica the primary counts as online, whether or not the
    /// write has reached it: a replica frozen with [`pause`](Self::pause), or one that has
    /// just finished its full synchronisation, to which the primary sends no writes until
    /// the replica's next `REPLCONF ACK` (up to a second later). A primary killed in between
    /// takes the write with it.
    ///
    /// `timeout` is rounded down to whole milliseconds, and up to one: Redis reads
    /// `WAIT n 0` as "wait forever".
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use soloist_testkit::ReplicaSet;
    ///
    /// let set = ReplicaSet::start();
    /// let acknowledged = set
    ///     .primary()
    ///     .write_and_wait(&["SET", "k", "v"], 1, Duration::from_secs(1));
    /// assert_eq!(acknowledged, 1); // the replica has `k`
    /// ```
    ///
    /// # Panics
    ///
    /// When `command` is empty, `command` or `WAIT` answers an error (a replica answers
    /// `READONLY`), or the server does not answer within `timeout` plus 10 s.
    pub fn write_and_wait(&self, command: &[&str], replicas: u32, timeout: Duration) -> u32 {
        assert!(
            !command.is_empty(),
            "write_and_wait: the command is empty; pass the write, e.g. [\"SET\", \"k\", \"v\"]"
        );
        let millis = timeout.as_millis().max(1).to_string();
        let count = replicas.to_string();
        let wait = ["WAIT", count.as_str(), millis.as_str()];
        let mut replies = self.call(&[command, &wait], timeout + REPLY_TIMEOUT);
        let (written, waited) = (replies.remove(0), replies.remove(0));
        if let Reply::Error(error) = written {
            panic!(
                "redis-server on port {}: {command:?} answered {error}",
                self.port
            );
        }
        match waited {
            Reply::Integer(acknowledged) => u32::try_from(acknowledged).unwrap_or_else(|_| {
                panic!(
                    "redis-server on port {}: WAIT answered {acknowledged}",
                    self.port
                )
            }),
            other => panic!(
                "redis-server on port {}: {wait:?} answered {other:?}",
                self.port
            ),
        }
    }

    /// Sends `commands` on one connection and returns their replies.
    fn call(&self, commands: &[&[&str]], timeout: Duration) -> Vec<Reply> {
        resp::pipeline(self.port, commands, timeout)
            .unwrap_or_else(|e| panic!("redis-server on port {}: {commands:?}: {e}", self.port))
    }

    /// Creates the ACL user `user` with `password` and the least privileges
    /// soloist needs ([`SOLOIST_ACL_RULES`], the README's recipe), then
    /// turns the default user off: from here on only `user` can talk to the
    /// server, and [`cli`](Self::cli) no longer can.
    ///
    /// # Panics
    ///
    /// If `redis-cli` refuses either command.
    pub fn only_user(&self, user: &str, password: &str) {
        let password = format!(">{password}");
        let mut args = vec!["ACL", "SETUSER", user, "on", password.as_str()];
        args.extend_from_slice(SOLOIST_ACL_RULES);
        assert_eq!(self.cli(&args), "OK", "ACL SETUSER {user}");
        assert_eq!(self.cli(&["ACL", "SETUSER", "default", "off"]), "OK");
    }

    fn lock_child(&self) -> MutexGuard<'_, Option<Child>> {
        // The guarded Option is valid whatever a panicking holder was doing.
        self.child.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn signal(&self, sig: Signal, action: &str) {
        // Hold the lock while signalling so the process cannot be reaped (and its pid reused)
        // in between.
        let mut child = self.lock_child();
        let Some(pid) = running(&mut child).map(|child| child.id()) else {
            panic!(
                "{action}: redis-server on port {} is not running (killed or exited)",
                self.port
            );
        };
        signal::send(pid, sig, &format!("redis-server on port {}", self.port));
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // SIGKILL works on a paused (SIGSTOPped) process too.
        self.kill();
    }
}

/// Writes the server's files to `dir`: those of `certs`, or of freshly generated ones.
fn write_certificates(dir: &Path, certs: Option<TestCertificates>) -> TestCertificates {
    let certs = certs.unwrap_or_else(TestCertificates::generate);
    for (name, pem) in [
        ("ca.pem", certs.ca_pem()),
        ("server.pem", certs.server_cert_pem()),
        ("server.key", certs.server_key_pem()),
        ("client.pem", certs.client_cert_pem()),
        ("client.key", certs.client_key_pem()),
    ] {
        fs::write(dir.join(name), pem)
            .unwrap_or_else(|e| panic!("write {name} to {}: {e}", dir.display()));
    }
    certs
}

/// The arguments that make the server listen for TLS on `port` with the files of
/// [`write_certificates`].
fn tls_args(dir: &Path, port: u16, auth_clients: bool) -> Vec<String> {
    let file = |name: &str| dir.join(name).display().to_string();
    vec![
        "--tls-port".to_owned(),
        port.to_string(),
        "--tls-cert-file".to_owned(),
        file("server.pem"),
        "--tls-key-file".to_owned(),
        file("server.key"),
        "--tls-ca-cert-file".to_owned(),
        file("ca.pem"),
        // Outgoing connections (replication, cluster bus, MIGRATE) present the client
        // certificate: the server certificate is for server authentication only, and the
        // cluster bus always asks for a client certificate.
        "--tls-client-cert-file".to_owned(),
        file("client.pem"),
        "--tls-client-key-file".to_owned(),
        file("client.key"),
        "--tls-auth-clients".to_owned(),
        if auth_clients { "yes" } else { "no" }.to_owned(),
    ]
}

/// The arguments of a cluster node keeping its configuration in `dir` and its bus on
/// `bus_port`.
fn cluster_args(dir: &Path, bus_port: u16) -> Vec<String> {
    vec![
        "--cluster-enabled".to_owned(),
        "yes".to_owned(),
        "--cluster-config-file".to_owned(),
        dir.join("nodes.conf").display().to_string(),
        "--cluster-port".to_owned(),
        bus_port.to_string(),
    ]
}

/// The child if it is still alive; reaps and forgets it if it has exited.
pub(crate) fn running(child: &mut Option<Child>) -> Option<&mut Child> {
    if let Some(process) = child
        && !matches!(process.try_wait(), Ok(None))
    {
        *child = None;
    }
    child.as_mut()
}

/// Spawns `redis-server` on `port` and waits until it answers, or kills it and says why not.
fn launch(
    bin: &Path,
    port: u16,
    dir: &Path,
    extra: &[String],
    deadline: Instant,
) -> Result<Child, String> {
    let mut child = Command::new(bin)
        .arg("--port")
        .arg(port.to_string())
        .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .args(["--daemonize", "no", "--protected-mode", "no"])
        .arg("--dir")
        .arg(dir)
        .arg("--logfile")
        .arg(dir.join("redis.log"))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Err(format!("redis-server exited with {status}")),
            Ok(None) => {}
            Err(e) => return Err(format!("cannot wait for redis-server: {e}")),
        }
        match probe(port) {
            Some(Probe::Pid(pid)) if pid == child.id() => return Ok(child),
            // Cannot check the pid without the password, but something asks for it: ours.
            Some(Probe::NoAuth) => return Ok(child),
            // Not up yet, still loading, or another process on this port (then ours exits).
            _ => {}
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "redis-server did not answer within {READY_TIMEOUT:?}"
            ));
        }
        thread::sleep(RETRY_INTERVAL);
    }
}

/// What a readiness probe learned about whoever listens on a port.
pub(crate) enum Probe {
    /// A Redis server with this process id.
    Pid(u32),
    /// A Redis server that requires a password.
    NoAuth,
    /// Any other answer (an error such as `-LOADING`, or not Redis).
    Other,
}

/// Sends `INFO server` over raw RESP. Asking for the process id rather than a `PING` tells our
/// server apart from one that won a race for the same port.
pub(crate) fn probe(port: u16) -> Option<Probe> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(100)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_millis(250)))
        .ok()?;
    stream.write_all(b"INFO server\r\n").ok()?;
    let mut reply = Vec::new();
    let mut chunk = [0_u8; 4096];
    loop {
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        reply.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&reply);
        if text.starts_with('-') && text.contains("\r\n") {
            return Some(if text.starts_with("-NOAUTH") {
                Probe::NoAuth
            } else {
                Probe::Other
            });
        }
        if let Some(pid) = process_id(&text) {
            return Some(Probe::Pid(pid));
        }
    }
}

/// The `process_id:` field of an `INFO server` reply, once its line is complete.
fn process_id(info: &str) -> Option<u32> {
    const FIELD: &str = "process_id:";
    let start = info.find(FIELD)? + FIELD.len();
    let rest = &info[start..];
    rest[..rest.find("\r\n")?].parse().ok()
}

/// A port that was free a moment ago (the listener is dropped before returning).
pub(crate) fn free_port() -> u16 {
    let (_listener, port) = bind_fresh_port();
    port
}

/// A loopback listener on a port this process has not been given before.
///
/// Tests run side by side in one process: a port freed by one test (a
/// dropped proxy, a stopped server) is never handed to another, so "nothing
/// listens there any more" stays checkable and no test reaches another's
/// server by accident.
pub(crate) fn bind_fresh_port() -> (TcpListener, u16) {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(PoisonError::into_inner);
    loop {
        let listener =
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a free port on 127.0.0.1");
        let port = listener
            .local_addr()
            .expect("read a bound listener's address")
            .port();
        if !given.contains(&port) {
            given.push(port);
            return (listener, port);
        }
    }
}

pub(crate) fn redis_server_bin() -> PathBuf {
    if let Some(path) = env::var_os("REDIS_SERVER_BIN").filter(|path| !path.is_empty()) {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "REDIS_SERVER_BIN={} is not a file; unset it to use redis-server from PATH",
            path.display(),
        );
        return path;
    }
    search_path(OsStr::new("redis-server")).unwrap_or_else(|| panic!("{NOT_FOUND}"))
}

pub(crate) fn redis_cli_bin(server_bin: &Path) -> PathBuf {
    if let Some(path) = env::var_os("REDIS_CLI_BIN").filter(|path| !path.is_empty()) {
        return PathBuf::from(path);
    }
    let sibling = server_bin.with_file_name("redis-cli");
    if sibling.is_file() {
        return sibling;
    }
    search_path(OsStr::new("redis-cli")).unwrap_or_else(|| {
        panic!(
            "redis-cli not found next to {} or on PATH: install it (e.g. `sudo apt-get install \
             -y redis-tools`) or set REDIS_CLI_BIN",
            server_bin.display(),
        )
    })
}

fn search_path(name: &OsStr) -> Option<PathBuf> {
    env::split_paths(&env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// The last lines of the server's log, for panic messages.
pub(crate) fn log_tail(dir: &Path) -> String {
    let path = dir.join("redis.log");
    match fs::read(&path) {
        Ok(bytes) => {
            let log = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
            format!("last lines of {}:\n{}", path.display(), tail.join("\n"))
        }
        Err(e) => format!("no log at {}: {e}", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::process_id;

    #[test]
    fn process_id_needs_a_complete_line() {
        let info = "$900\r\n# Server\r\nredis_version:7.0.15\r\nprocess_id:4242\r\nrun_id:x";
        assert_eq!(process_id(info), Some(4242));
        assert_eq!(process_id("$900\r\n# Server\r\nprocess_id:42"), None);
        assert_eq!(process_id("-LOADING Redis is loading\r\n"), None);
    }
}
