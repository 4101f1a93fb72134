//! Finding the primary through Redis Sentinel.
//!
//! redis-rs has a `sentinel` feature, but its lookups wait as long as the
//! socket lets them: one frozen sentinel (`SIGSTOP`, a hung VM) would hang
//! every connection made through it. Here every step is bounded by the
//! caller's timeouts (connecting to a sentinel, its answer, connecting to the
//! node it names, that node's `ROLE`), and a sentinel that fails a step is
//! passed over for the next one.
//!
//! A sentinel's answer is checked, not trusted: right after a failover a
//! sentinel can still name the demoted primary, so the node it names is used
//! only once it says `master` to `ROLE`. The sentinel that named a working
//! primary is asked first next time, so a dead or frozen sentinel costs its
//! timeout once rather than on every lookup.

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ConnectionAddr, FromRedisValue, Value};
use tokio::time::timeout;

use crate::error::{LockError, Result};
use crate::tls::{TlsOptions, open_client};

/// The sentinels watching one primary, and how to reach the primary they
/// name.
pub(crate) struct Sentinels {
    /// The sentinels, in the order given.
    nodes: Vec<Sentinel>,
    /// The name the sentinels monitor the primary under.
    master: String,
    /// For the sentinels and the primary alike.
    tls: TlsOptions,
    /// `(username, password)` for the primary; the sentinels' own
    /// credentials are in their URLs.
    master_auth: Option<(Option<String>, String)>,
    /// The database to select on the primary.
    db: i64,
    /// The index of the sentinel that last named a working primary: asked
    /// first next time.
    last: AtomicUsize,
}

/// One sentinel, parsed once.
struct Sentinel {
    client: redis::Client,
    /// `scheme://host:port`, without credentials, for messages.
    shown: String,
    /// Whether it is reached over TLS, and so the primary it names too.
    tls: bool,
}

impl fmt::Debug for Sentinels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // No passwords: the sentinels are shown without theirs, and of the
        // primary's credentials only the user name.
        let sentinels: Vec<&str> = self.nodes.iter().map(|node| node.shown.as_str()).collect();
        f.debug_struct("Sentinels")
            .field("sentinels", &sentinels)
            .field("master", &self.master)
            .field("tls", &self.tls)
            .field(
                "master_user",
                &self.master_auth.as_ref().map(|(user, _)| user),
            )
            .field("db", &self.db)
            .finish_non_exhaustive()
    }
}

/// The timeouts of one lookup, and the connection settings made of them.
struct Limits {
    connect: Duration,
    response: Duration,
    config: AsyncConnectionConfig,
}

/// Why a sentinel did not lead to a primary.
enum Miss {
    /// It answered that it does not monitor the master name.
    Unknown,
    /// Anything else: unreachable, silent, an error, or it named a node that
    /// is unreachable or not a primary.
    Failed(String),
}

impl Sentinels {
    /// The sentinels at `urls`, monitoring the primary as `master`, reached
    /// with `tls` (as is the primary). Every URL is parsed now; nothing is
    /// sent until [`primary`](Self::primary).
    ///
    /// A refusal is an [`LockError::InvalidArgument`] named `sentinels` (no
    /// URL, or one that does not parse; its password is not quoted) or
    /// `master` (an empty name); a TLS setting keeps its own name.
    pub(crate) fn new(urls: &[String], master: &str, tls: &TlsOptions) -> Result<Self> {
        if urls.is_empty() {
            return Err(LockError::invalid(
                "sentinels",
                "no sentinel URL given: at least one is needed",
            ));
        }
        if master.is_empty() {
            return Err(LockError::invalid(
                "master",
                "the master name the sentinels monitor is empty",
            ));
        }
        let nodes = urls
            .iter()
            .map(|url| Sentinel::open(url, tls))
            .collect::<Result<_>>()?;
        Ok(Sentinels {
            nodes,
            master: master.to_owned(),
            tls: tls.clone(),
            master_auth: None,
            db: 0,
            last: AtomicUsize::new(0),
        })
    }

    /// Authenticates to the primary as `username` (or the default user)
    /// with `password`. The sentinels' own credentials go in their URLs.
    pub(crate) fn master_auth(mut self, username: Option<&str>, password: &str) -> Self {
        self.master_auth = Some((username.map(str::to_owned), password.to_owned()));
        self
    }

    /// Selects database `db` on the primary (0 unless set).
    /// The name of the master the sentinels are asked for.
    pub(crate) fn master(&self) -> &str {
        &self.master
    }

    pub(crate) fn master_db(mut self, db: i64) -> Self {
        self.db = db;
        self
    }

    /// A client for the current primary: asks the sentinels in turn,
    /// starting with the one that answered last time, for the primary's
    /// address (`SENTINEL get-master-addr-by-name`), and returns a client
    /// for the first node named that answers `ROLE` with `master`.
    ///
    /// Every connection gets `connect_timeout` and every reply
    /// `response_timeout`, so the lookup takes at most twice their sum per
    /// sentinel. When no sentinel leads to a primary the error says what
    /// each one said: an [`LockError::InvalidArgument`] named `master` when
    /// every sentinel answered that it does not know the name, otherwise a
    /// [`LockError::Connection`].
    pub(crate) async fn primary(
        &self,
        connect_timeout: Duration,
        response_timeout: Duration,
    ) -> Result<redis::Client> {
        let limits = Limits {
            connect: connect_timeout,
            response: response_timeout,
            config: AsyncConnectionConfig::new()
                .set_connection_timeout(Some(connect_timeout))
                .set_response_timeout(Some(response_timeout)),
        };
        let count = self.nodes.len();
        let first = self.last.load(Ordering::Relaxed) % count;
        let mut said = Vec::with_capacity(count);
        let mut all_unknown = true;
        for index in (first..count).chain(0..first) {
            let node = &self.nodes[index];
            match self.ask(node, &limits).await {
                Ok(client) => {
                    self.last.store(index, Ordering::Relaxed);
                    return Ok(client);
                }
                Err(miss) => {
                    let what = match miss {
                        Miss::Unknown => "does not monitor that name".to_owned(),
                        Miss::Failed(what) => {
                            all_unknown = false;
                            what
                        }
                    };
                    tracing::debug!(sentinel = %node.shown, master = %self.master, "{what}");
                    said.push(format!("{} {what}", node.shown));
                }
            }
        }
        let said = said.join("; ");
        if all_unknown {
            return Err(LockError::invalid(
                "master",
                format!(
                    "no sentinel monitors a master named `{}`: {said}",
                    self.master
                ),
            ));
        }
        Err(LockError::Connection {
            server: format!("the primary of `{}`", self.master),
            error: redis::RedisError::from(io::Error::other(format!(
                "no sentinel named a reachable primary: {said}"
            ))),
        })
    }

    /// Asks `node` for the primary and checks the node it names.
    async fn ask(&self, node: &Sentinel, limits: &Limits) -> Result<redis::Client, Miss> {
        let mut conn = connect(&node.client, limits).await.map_err(Miss::Failed)?;
        let mut lookup = redis::cmd("SENTINEL");
        lookup.arg("GET-MASTER-ADDR-BY-NAME").arg(&self.master);
        let named: Option<(String, u16)> = query(
            "SENTINEL GET-MASTER-ADDR-BY-NAME",
            &lookup,
            &mut conn,
            limits,
        )
        .await
        .map_err(Miss::Failed)?;
        drop(conn);
        let (host, port) = named.ok_or(Miss::Unknown)?;
        let addr = host_port(&host, port);
        let named = |what: String| Miss::Failed(format!("named {addr}, {what}"));
        let url = master_url(
            node.tls,
            &host,
            port,
            self.master_auth
                .as_ref()
                .map(|(user, pass)| (user.as_deref(), pass.as_str())),
            self.db,
        )
        .map_err(named)?;
        let client = open_client(&url, &self.tls)
            .map_err(|err| named(format!("which makes no valid URL: {err}")))?;
        let mut conn = connect(&client, limits)
            .await
            .map_err(|what| named(format!("which {what}")))?;
        let role: Vec<Value> = query("ROLE", &redis::cmd("ROLE"), &mut conn, limits)
            .await
            .map_err(|what| named(format!("which {what}")))?;
        match role.first().map(redis::from_redis_value_ref::<String>) {
            Some(Ok(role)) if role == "master" => Ok(client),
            Some(Ok(role)) => Err(named(format!(
                "which says its role is `{role}`, not `master` (the sentinel may lag \
                 behind a failover)"
            ))),
            _ => Err(named(format!("which answered ROLE with {role:?}"))),
        }
    }
}

impl Sentinel {
    fn open(url: &str, tls: &TlsOptions) -> Result<Self> {
        let client = open_client(url, tls).map_err(|err| match err {
            LockError::InvalidArgument {
                name: "url",
                reason,
            } => LockError::invalid("sentinels", reason),
            other => other,
        })?;
        let (shown, tls) = match client.get_connection_info().addr() {
            ConnectionAddr::Tcp(host, port) => {
                (format!("redis://{}", host_port(host, *port)), false)
            }
            ConnectionAddr::TcpTls { host, port, .. } => {
                (format!("rediss://{}", host_port(host, *port)), true)
            }
            other => (other.to_string(), false),
        };
        Ok(Sentinel { client, shown, tls })
    }
}

/// Connects within the connect timeout; the error says what happened, as
/// the end of "the sentinel ..." or "the node ...".
async fn connect(client: &redis::Client, limits: &Limits) -> Result<MultiplexedConnection, String> {
    let silent = || format!("did not answer within {:?} of connecting", limits.connect);
    match timeout(
        limits.connect,
        client.get_multiplexed_async_connection_with_config(&limits.config),
    )
    .await
    {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(err)) if err.is_timeout() => Err(silent()),
        Ok(Err(err)) => Err(format!("cannot be connected to: {err}")),
        Err(_elapsed) => Err(silent()),
    }
}

/// Runs `cmd` within the response timeout; the error says what happened, as
/// the end of "the sentinel ..." or "the node ...".
async fn query<T: FromRedisValue>(
    name: &str,
    cmd: &redis::Cmd,
    conn: &mut MultiplexedConnection,
    limits: &Limits,
) -> Result<T, String> {
    let silent = || format!("did not answer {name} within {:?}", limits.response);
    match timeout(limits.response, cmd.query_async(conn)).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(err)) if err.is_timeout() => Err(silent()),
        Ok(Err(err)) => Err(format!("answered {name} with an error: {err}")),
        Err(_elapsed) => Err(silent()),
    }
}

/// `host:port`, with an IPv6 address in brackets.
fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The URL of the primary at `host:port` as a sentinel named it: `rediss`
/// when the sentinel was reached over TLS, with the primary's credentials
/// (percent-encoded) and database. Refuses a host that would change the
/// URL's meaning rather than name a host.
fn master_url(
    tls: bool,
    host: &str,
    port: u16,
    auth: Option<(Option<&str>, &str)>,
    db: i64,
) -> std::result::Result<String, String> {
    let valid = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'));
    if !valid || port == 0 {
        return Err("which is not a usable address".to_owned());
    }
    let scheme = if tls { "rediss" } else { "redis" };
    let userinfo = match auth {
        Some((user, password)) => format!(
            "{}:{}@",
            user.map(percent_encode).unwrap_or_default(),
            percent_encode(password)
        ),
        None => String::new(),
    };
    let db = if db == 0 {
        String::new()
    } else {
        format!("/{db}")
    };
    Ok(format!(
        "{scheme}://{userinfo}{}{db}",
        host_port(host, port)
    ))
}

/// Percent-encodes every byte of `text` but the URL's unreserved characters,
/// for a URL's user name or password (redis-rs decodes them).
fn percent_encode(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

#[cfg(test)]
mod live_tests;

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(url: &str) -> redis::ConnectionInfo {
        redis::Client::open(url)
            .unwrap_or_else(|err| panic!("{url}: {err}"))
            .get_connection_info()
            .clone()
    }

    #[test]
    fn a_plain_address() {
        assert_eq!(
            master_url(false, "127.0.0.1", 6380, None, 0).as_deref(),
            Ok("redis://127.0.0.1:6380")
        );
        assert_eq!(
            master_url(true, "redis-1.internal", 6380, None, 0).as_deref(),
            Ok("rediss://redis-1.internal:6380")
        );
    }

    #[test]
    fn ipv6_goes_in_brackets() {
        let url = master_url(false, "::1", 6379, None, 0).expect("url");
        assert_eq!(url, "redis://[::1]:6379");
        assert_eq!(
            parsed(&url).addr(),
            &ConnectionAddr::Tcp("::1".to_owned(), 6379)
        );
    }

    #[test]
    fn credentials_and_database_survive_parsing() {
        let password = "p@ss:w/rd%?#é";
        let url = master_url(
            false,
            "10.0.0.5",
            6379,
            Some((Some("lock user"), password)),
            3,
        )
        .expect("url");
        assert_eq!(
            url,
            "redis://lock%20user:p%40ss%3Aw%2Frd%25%3F%23%C3%A9@10.0.0.5:6379/3"
        );
        let info = parsed(&url);
        assert_eq!(
            info.addr(),
            &ConnectionAddr::Tcp("10.0.0.5".to_owned(), 6379)
        );
        assert_eq!(info.redis_settings().username(), Some("lock user"));
        assert_eq!(info.redis_settings().password(), Some(password));
        assert_eq!(info.redis_settings().db(), 3);
    }

    #[test]
    fn a_password_without_a_user_name() {
        let url = master_url(false, "h", 1, Some((None, "secret")), 0).expect("url");
        assert_eq!(url, "redis://:secret@h:1");
        let info = parsed(&url);
        assert_eq!(info.redis_settings().username(), None);
        assert_eq!(info.redis_settings().password(), Some("secret"));
    }

    #[test]
    fn a_host_that_is_not_a_host_is_refused() {
        for host in [
            "",
            "evil@10.0.0.1",
            "h/0",
            "h?x",
            "h#insecure",
            "h 1",
            "h\r\n",
        ] {
            assert!(
                master_url(false, host, 6379, None, 0).is_err(),
                "{host:?} accepted"
            );
        }
        assert!(master_url(false, "h", 0, None, 0).is_err());
    }

    fn refusal(result: Result<Sentinels>) -> (&'static str, String) {
        match result {
            Err(LockError::InvalidArgument { name, reason }) => (name, reason),
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn new_refuses_an_empty_list_a_bad_url_and_an_empty_name() {
        let tls = TlsOptions::default();
        let (name, _) = refusal(Sentinels::new(&[], "mymaster", &tls));
        assert_eq!(name, "sentinels");
        let urls = ["redis://127.0.0.1:26379".to_owned()];
        let (name, _) = refusal(Sentinels::new(&urls, "", &tls));
        assert_eq!(name, "master");
        let urls = [
            "redis://127.0.0.1:26379".to_owned(),
            "redis://admin:secret@127.0.0.1:notaport".to_owned(),
        ];
        let (name, reason) = refusal(Sentinels::new(&urls, "mymaster", &tls));
        assert_eq!(name, "sentinels");
        assert!(reason.contains("admin:***@127.0.0.1"), "{reason}");
        assert!(!reason.contains("secret"), "{reason}");
    }

    #[test]
    fn debug_shows_no_password() {
        let urls = [
            "redis://:sentinel-secret@127.0.0.1:26379".to_owned(),
            "redis://[::1]:26380".to_owned(),
        ];
        let sentinels = Sentinels::new(&urls, "mymaster", &TlsOptions::default())
            .expect("sentinels")
            .master_auth(Some("soloist"), "master-secret")
            .master_db(2);
        let shown = format!("{sentinels:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains("redis://127.0.0.1:26379"), "{shown}");
        assert!(shown.contains("redis://[::1]:26380"), "{shown}");
        assert!(shown.contains("soloist"), "{shown}");
    }
}
