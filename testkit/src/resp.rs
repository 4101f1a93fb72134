//! A minimal blocking RESP2 client for the testkit's own polling, slot migration and typed
//! queries: one fresh connection per call, no pooling, every read bounded by a timeout.
//!
//! [`RedisServer::cli`](crate::RedisServer::cli) runs `redis-cli`, one process per command;
//! cluster waits poll six servers several times a second, which on a small loaded machine is
//! better done over a plain socket.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

/// How long connecting to a loopback server may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// One RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reply {
    Status(String),
    Error(String),
    Integer(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

impl Reply {
    /// The text of a status or bulk reply.
    pub(crate) fn text(&self) -> Option<String> {
        match self {
            Reply::Status(text) => Some(text.clone()),
            Reply::Bulk(Some(bytes)) => Some(String::from_utf8_lossy(bytes).into_owned()),
            _ => None,
        }
    }
}

/// Sends `args` as one command to `127.0.0.1:port` on a fresh connection and reads the reply,
/// waiting at most `timeout` for any read or write. Redis error replies are `Ok(Reply::Error)`.
pub(crate) fn command<A: AsRef<[u8]>>(
    port: u16,
    args: &[A],
    timeout: Duration,
) -> io::Result<Reply> {
    let mut replies = pipeline(port, &[args], timeout)?;
    Ok(replies.remove(0))
}

/// Sends `commands` one after another on **one** fresh connection to `127.0.0.1:port` and
/// reads one reply for each, waiting at most `timeout` for any read or write. Redis error
/// replies are `Ok(Reply::Error)`.
///
/// One connection matters for commands whose meaning depends on the connection's history:
/// `WAIT` counts the replicas that acknowledged this connection's last write.
pub(crate) fn pipeline<A: AsRef<[u8]>>(
    port: u16,
    commands: &[&[A]],
    timeout: Duration,
) -> io::Result<Vec<Reply>> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.set_nodelay(true)?;
    let mut request = Vec::new();
    for args in commands {
        request.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for arg in *args {
            let arg = arg.as_ref();
            request.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            request.extend_from_slice(arg);
            request.extend_from_slice(b"\r\n");
        }
    }
    (&stream).write_all(&request)?;
    let mut reader = BufReader::new(stream);
    commands.iter().map(|_| read_reply(&mut reader)).collect()
}

fn read_reply(reader: &mut impl BufRead) -> io::Result<Reply> {
    let mut line = Vec::new();
    reader.read_until(b'\n', &mut line)?;
    if line.len() < 3 || !line.ends_with(b"\r\n") {
        return Err(invalid(format!(
            "truncated reply line {:?}",
            String::from_utf8_lossy(&line)
        )));
    }
    let body = String::from_utf8_lossy(&line[1..line.len() - 2]).into_owned();
    let length = || -> io::Result<i64> {
        body.parse()
            .map_err(|_| invalid(format!("bad length {body:?}")))
    };
    Ok(match line[0] {
        b'+' => Reply::Status(body),
        b'-' => Reply::Error(body),
        b':' => Reply::Integer(length()?),
        b'$' => match usize::try_from(length()?) {
            Err(_) => Reply::Bulk(None),
            Ok(len) => {
                let mut bytes = vec![0; len + 2];
                reader.read_exact(&mut bytes)?;
                bytes.truncate(len);
                Reply::Bulk(Some(bytes))
            }
        },
        b'*' => match usize::try_from(length()?) {
            Err(_) => Reply::Array(None),
            Ok(len) => Reply::Array(Some(
                (0..len)
                    .map(|_| read_reply(reader))
                    .collect::<io::Result<_>>()?,
            )),
        },
        other => return Err(invalid(format!("unknown reply type {:?}", other as char))),
    })
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

#[cfg(test)]
mod tests {
    use super::{Reply, read_reply};

    #[test]
    fn parses_nested_replies() {
        let mut input: &[u8] = b"*4\r\n+OK\r\n$3\r\na\r\n\r\n:-7\r\n*-1\r\n";
        assert_eq!(
            read_reply(&mut input).unwrap(),
            Reply::Array(Some(vec![
                Reply::Status("OK".into()),
                Reply::Bulk(Some(b"a\r\n".to_vec())),
                Reply::Integer(-7),
                Reply::Array(None),
            ]))
        );
        let mut input: &[u8] = b"-MOVED 3999 127.0.0.1:7002\r\n$-1\r\n";
        assert_eq!(
            read_reply(&mut input).unwrap(),
            Reply::Error("MOVED 3999 127.0.0.1:7002".into())
        );
        assert_eq!(read_reply(&mut input).unwrap(), Reply::Bulk(None));
        assert!(read_reply(&mut &b"$5\r\nab"[..]).is_err());
    }
}
