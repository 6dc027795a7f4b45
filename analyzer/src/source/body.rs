//! Reading a scrape or query body with a size cap. A target that answers with
//! more than the cap (a 1.5 GB exposition took 4.3 GB of RSS when read whole)
//! fails for the interval instead of being held in memory: a `Content-Length`
//! over the cap is refused before the body is read, and a streamed body is
//! dropped, closing the connection, as soon as it passes the cap.

use super::error::SourceError;

/// Default cap on one body: 64 MiB. Envoy 1.40's exposition takes ~76 bytes per
/// series (`testdata/envoy_1_40.prom`: 15,863 bytes, 208 series), so this holds
/// ~880,000 series; our Prometheus queries answer with one series per cohort
/// and class or bucket. The body that made this necessary was 1.5 GB.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 64 * MIB;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// The body of `response` (from `url`) as text, or [`SourceError::BodyTooLarge`]
/// once it exceeds `max_bytes`. Invalid UTF-8 is replaced, as `Response::text` does.
pub(crate) async fn read_capped(
    mut response: reqwest::Response,
    url: &str,
    max_bytes: u64,
) -> Result<String, SourceError> {
    let too_large = || SourceError::BodyTooLarge { url: url.to_string(), limit: max_bytes };
    if response.content_length().is_some_and(|declared| declared > max_bytes) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) =
        response.chunk().await.map_err(|source| SourceError::Request { url: url.to_string(), source })?
    {
        let read = u64::try_from(body.len().saturating_add(chunk.len())).unwrap_or(u64::MAX);
        if read > max_bytes {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(match String::from_utf8(body) {
        Ok(text) => text,
        Err(invalid) => String::from_utf8_lossy(invalid.as_bytes()).into_owned(),
    })
}

/// A byte count as an operator writes it: `64 MiB`, `512 KiB`, else `1000 bytes`.
pub(crate) fn byte_size(bytes: u64) -> String {
    if bytes >= MIB && bytes % MIB == 0 {
        format!("{} MiB", bytes / MIB)
    } else if bytes >= KIB && bytes % KIB == 0 {
        format!("{} KiB", bytes / KIB)
    } else {
        format!("{bytes} bytes")
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::sync::oneshot;

    /// Size of each write of the oversized server.
    const CHUNK_BYTES: usize = 64 * 1024;

    /// How [`serve_oversized`] declares its body.
    #[derive(Clone, Copy, Debug)]
    pub(crate) enum Framing {
        /// `transfer-encoding: chunked`: the size shows only while reading.
        Chunked,
        /// `content-length` set to the full size.
        ContentLength,
    }

    /// A one-connection HTTP server answering 200 with `total` bytes of `#` lines.
    /// Reports how many body bytes it got written before the client hung up
    /// (`total` if it never did).
    pub(crate) async fn serve_oversized(total: usize, framing: Framing) -> (SocketAddr, oneshot::Receiver<usize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (report, written) = oneshot::channel();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = vec![0u8; 4096];
            let _ = socket.read(&mut request).await;
            let head = match framing {
                Framing::Chunked => "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_string(),
                Framing::ContentLength => format!("HTTP/1.1 200 OK\r\ncontent-length: {total}\r\n\r\n"),
            };
            socket.write_all(head.as_bytes()).await.unwrap();
            let mut line = vec![b'#'; CHUNK_BYTES];
            line[CHUNK_BYTES - 1] = b'\n';
            let mut sent = 0;
            while sent < total {
                let framed = match framing {
                    Framing::Chunked => {
                        [format!("{CHUNK_BYTES:x}\r\n").into_bytes(), line.clone(), b"\r\n".to_vec()].concat()
                    }
                    Framing::ContentLength => line.clone(),
                };
                if socket.write_all(&framed).await.is_err() {
                    break;
                }
                sent += CHUNK_BYTES;
            }
            if sent >= total && matches!(framing, Framing::Chunked) {
                let _ = socket.write_all(b"0\r\n\r\n").await;
            }
            let _ = report.send(sent);
        });
        (addr, written)
    }

    #[test]
    fn sizes_read_as_an_operator_writes_them() {
        assert_eq!(byte_size(DEFAULT_MAX_BODY_BYTES), "64 MiB");
        assert_eq!(byte_size(512 * KIB), "512 KiB");
        assert_eq!(byte_size(1_000), "1000 bytes");
        assert_eq!(byte_size(MIB + 1), format!("{} bytes", MIB + 1));
    }

    #[tokio::test]
    async fn a_body_within_the_cap_is_read_whole() {
        let total = 4 * CHUNK_BYTES;
        for framing in [Framing::Chunked, Framing::ContentLength] {
            let (addr, written) = serve_oversized(total, framing).await;
            let url = format!("http://{addr}/");
            let response = reqwest::get(&url).await.unwrap();
            let body = read_capped(response, &url, u64::try_from(total).unwrap()).await.unwrap();
            assert_eq!(body.len(), total, "{framing:?}");
            assert_eq!(written.await.unwrap(), total);
        }
    }
}
