//! A TCP proxy that can cut or stall the traffic between a client and a server.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::server::bind_fresh_port;

/// How often idle threads look at the shared state (stop flag, mode).
const POLL: Duration = Duration::from_millis(5);
/// Read timeout of the pump threads, so a quiet connection still notices a mode change.
const READ_TIMEOUT: Duration = Duration::from_millis(20);
/// Connecting to the target is loopback-only, so this is only hit if something is badly off.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Forwards `127.0.0.1:proxy_port` to `127.0.0.1:target_port`; can cut or stall traffic.
///
/// Point the client under test at [`url`](Self::url) instead of the server's URL, then inject
/// network faults without touching the server:
///
/// - [`cut`](Self::cut): every open connection is closed now and new ones are closed right
///   after being accepted (a partition where the peer resets connections);
/// - [`stall`](Self::stall): connections stay open but no byte moves in either direction (a
///   partition where packets are silently dropped); bytes sent meanwhile are delivered after
///   [`restore`](Self::restore);
/// - [`restore`](Self::restore): normal forwarding again;
/// - [`retarget`](Self::retarget): new connections go to another port, open ones stay where
///   they are (a virtual IP or DNS name moved to a new primary after a failover).
///
/// Dropping the proxy stops accepting and closes every connection.
///
/// ```no_run
/// use soloist_testkit::{Proxy, RedisServer};
///
/// let server = RedisServer::start();
/// let proxy = Proxy::start(server.port());
/// let url = proxy.url(); // the client under test connects here
/// proxy.stall(); // requests hang
/// proxy.restore(); // ... and are answered now
/// proxy.cut(); // connections drop
/// # let _ = url;
/// ```
#[derive(Debug)]
pub struct Proxy {
    port: u16,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Normal,
    Cut,
    Stall,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    stop: AtomicBool,
}

/// The mode and the open connections live under one lock, so a connection is either
/// registered before `cut()` (and closed by it) or sees the `Cut` mode (and is refused).
#[derive(Debug)]
struct State {
    mode: Mode,
    /// Where new connections are forwarded.
    target: SocketAddr,
    /// Clones of both sockets of every open connection, to shut them down from outside the
    /// pump threads (which may be blocked in a read or write).
    conns: HashMap<u64, [TcpStream; 2]>,
    next_id: u64,
}

impl Proxy {
    /// Starts a proxy on a free loopback port, forwarding to `127.0.0.1:target_port`.
    ///
    /// The target does not have to be up: while it is not, accepted connections are closed.
    ///
    /// # Panics
    ///
    /// If no loopback port can be bound or the accept thread cannot be spawned.
    pub fn start(target_port: u16) -> Proxy {
        let (listener, port) = bind_fresh_port();
        listener
            .set_nonblocking(true)
            .expect("make the proxy listener nonblocking");
        let target = SocketAddr::from((Ipv4Addr::LOCALHOST, target_port));
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                mode: Mode::Normal,
                target,
                conns: HashMap::new(),
                next_id: 0,
            }),
            stop: AtomicBool::new(false),
        });
        let accept = thread::Builder::new()
            .name(format!("proxy-{port}-accept"))
            .spawn({
                let shared = Arc::clone(&shared);
                move || accept_loop(&listener, &shared)
            })
            .expect("spawn the proxy accept thread");
        Proxy {
            port,
            shared,
            accept: Some(accept),
        }
    }

    /// The URL clients should use, `redis://127.0.0.1:PROXY_PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The port the proxy listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Closes every open connection now, and closes new ones right after accepting them, until
    /// [`restore`](Self::restore).
    pub fn cut(&self) {
        let mut state = self.shared.lock();
        state.mode = Mode::Cut;
        for (_, conn) in state.conns.drain() {
            shut(&conn);
        }
    }

    /// Keeps connections open but stops forwarding bytes in both directions until
    /// [`restore`](Self::restore); new connections are accepted and stalled too.
    pub fn stall(&self) {
        self.shared.lock().mode = Mode::Stall;
    }

    /// Forwards normally again; bytes held back by [`stall`](Self::stall) are delivered.
    pub fn restore(&self) {
        self.shared.lock().mode = Mode::Normal;
    }

    /// Forwards connections accepted from now on to `127.0.0.1:target_port`; open ones keep
    /// talking to the old target.
    pub fn retarget(&self, target_port: u16) {
        self.shared.lock().target = SocketAddr::from((Ipv4Addr::LOCALHOST, target_port));
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
        for (_, conn) in self.shared.lock().conns.drain() {
            shut(&conn);
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is consistent after any panic, so poisoning carries no information.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn mode(&self) -> Mode {
        self.lock().mode
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    fn forget(&self, id: u64) {
        if let Some(conn) = self.lock().conns.remove(&id) {
            shut(&conn);
        }
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    while !shared.stopped() {
        match listener.accept() {
            Ok((client, _)) => {
                let target = shared.lock().target;
                connect(client, target, shared);
            }
            // WouldBlock, or a transient error such as running out of file descriptors.
            Err(_) => thread::sleep(POLL),
        }
    }
}

/// Connects an accepted client to the target and starts its two pump threads.
fn connect(client: TcpStream, target: SocketAddr, shared: &Arc<Shared>) {
    if shared.mode() == Mode::Cut {
        let _ = client.shutdown(Shutdown::Both);
        return;
    }
    let Ok(server) = TcpStream::connect_timeout(&target, CONNECT_TIMEOUT) else {
        // Target down: the client sees its connection closed, as with a dead server behind a
        // load balancer.
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    let Ok(pumps) = prepare(&client, &server) else {
        return;
    };
    let id = {
        let mut state = shared.lock();
        if state.mode == Mode::Cut {
            shut(&[client, server]);
            return;
        }
        let id = state.next_id;
        state.next_id += 1;
        state.conns.insert(id, [client, server]);
        id
    };
    let [(from_client, to_server), (from_server, to_client)] = pumps;
    for (direction, from, to) in [
        ("up", from_client, to_server),
        ("down", from_server, to_client),
    ] {
        let pump_shared = Arc::clone(shared);
        let spawned = thread::Builder::new()
            .name(format!("proxy-conn-{id}-{direction}"))
            .spawn(move || pump(from, to, id, &pump_shared));
        if spawned.is_err() {
            shared.forget(id);
        }
    }
}

/// Configures both sockets and clones them into the (reader, writer) pairs of the two pumps.
fn prepare(client: &TcpStream, server: &TcpStream) -> io::Result<[(TcpStream, TcpStream); 2]> {
    // Whether an accepted socket inherits the listener's nonblocking flag depends on the
    // platform; the pumps need blocking reads with a timeout.
    client.set_nonblocking(false)?;
    for stream in [client, server] {
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(READ_TIMEOUT))?;
    }
    Ok([
        (client.try_clone()?, server.try_clone()?),
        (server.try_clone()?, client.try_clone()?),
    ])
}

/// Copies bytes from `from` to `to` while the mode allows, until either side closes.
fn pump(mut from: TcpStream, mut to: TcpStream, id: u64, shared: &Shared) {
    let mut buf = [0_u8; 16 * 1024];
    'conn: while !shared.stopped() {
        match shared.mode() {
            Mode::Normal => {}
            Mode::Stall => {
                // Leave the bytes in the kernel buffers; they flow again after restore().
                thread::sleep(POLL);
                continue;
            }
            Mode::Cut => break,
        }
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if is_retryable(&e) => continue,
            Err(_) => break,
        };
        // stall() may have been called while we were blocked in read(): the bytes that just
        // arrived were possibly sent after it returned, so hold them until restore().
        loop {
            if shared.stopped() {
                break 'conn;
            }
            match shared.mode() {
                Mode::Normal => break,
                Mode::Stall => thread::sleep(POLL),
                Mode::Cut => break 'conn,
            }
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    // Closing both sockets also ends the pump of the other direction.
    shared.forget(id);
    shut(&[from, to]);
}

fn is_retryable(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// Shuts a connection down; a thread blocked on either socket wakes up with EOF or an error.
fn shut(conn: &[TcpStream; 2]) {
    for stream in conn {
        let _ = stream.shutdown(Shutdown::Both);
    }
}
