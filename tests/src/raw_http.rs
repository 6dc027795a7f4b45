//! An HTTP/1.1 client that writes header lines byte for byte as given, repeated names
//! included, for the data-path fuzz test and the cookie tests. hyper and reqwest refuse
//! values that are not visible ASCII, so they cannot send what a hostile client sends
//! (obs-text, control bytes). One request per connection.

use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longer than any answer through Envoy on loopback takes; a stuck answer fails the request.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// A response as read off the wire.
#[derive(Debug, Clone)]
pub struct RawReply {
    pub status: u16,
    /// Header lines in order, names lower-cased.
    pub headers: Vec<(String, Vec<u8>)>,
}

impl RawReply {
    /// The first value of header `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_slice())
    }
}

/// The bytes of `GET target HTTP/1.1` with `Host`, the given header lines in order and
/// `Connection: close` (one request per connection: the reply ends at EOF).
pub fn get_request(target: &str, headers: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut bytes = format!("GET {target} HTTP/1.1\r\nhost: fuzz\r\n").into_bytes();
    for (name, value) in headers {
        bytes.extend_from_slice(name);
        bytes.extend_from_slice(b": ");
        bytes.extend_from_slice(value);
        bytes.extend_from_slice(b"\r\n");
    }
    bytes.extend_from_slice(b"connection: close\r\n\r\n");
    bytes
}

/// Sends `request` on a new connection to `addr` and reads the reply's head.
pub async fn send(addr: SocketAddr, request: &[u8]) -> std::io::Result<RawReply> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.write_all(request).await?;
        let mut reply = Vec::new();
        stream.read_to_end(&mut reply).await?;
        parse_head(&reply)
    };
    tokio::time::timeout(REPLY_TIMEOUT, exchange).await.map_err(|_| std::io::Error::other("no reply in time"))?
}

fn parse_head(reply: &[u8]) -> std::io::Result<RawReply> {
    let malformed = || std::io::Error::other(format!("malformed reply: {:?}", String::from_utf8_lossy(reply)));
    let end = reply.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(malformed)?;
    let mut lines = reply[..end].split(|&b| b == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let status_line = lines.next().ok_or_else(malformed)?;
    let status = std::str::from_utf8(status_line)
        .ok()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(malformed)?;
    let headers = lines
        .filter_map(|line| {
            let colon = line.iter().position(|&b| b == b':')?;
            let name = String::from_utf8_lossy(&line[..colon]).to_ascii_lowercase();
            Some((name, line[colon + 1..].trim_ascii().to_vec()))
        })
        .collect();
    Ok(RawReply { status, headers })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_parse() {
        let reply =
            parse_head(b"HTTP/1.1 503 Service Unavailable\r\nX-Version: stable\r\nx-cache:  \xffHIT \r\n\r\nbody")
                .unwrap();
        assert_eq!(reply.status, 503);
        assert_eq!(reply.header("x-version"), Some(&b"stable"[..]));
        assert_eq!(reply.header("x-cache"), Some(&b"\xffHIT"[..]));
    }
}
