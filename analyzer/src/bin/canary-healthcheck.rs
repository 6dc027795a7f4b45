//! `canary-healthcheck`: the container image's health check. The analyzer's image is
//! `FROM scratch` (packaging/analyzer.Dockerfile): no shell, no curl. This asks the
//! analyzer in the same container for `GET /healthz` and exits 0 on `200`, 1 on
//! anything else (a 503 when the audit log cannot record, no answer, a timeout), the
//! exit codes Docker's and Podman's `HEALTHCHECK` read. Standard library only, so it
//! adds ~0.4 MB to the image instead of a TLS and HTTP stack.
//!
//! Where it asks: `CANARY_ANALYZER_LISTEN` (the address `serve` binds, default
//! `127.0.0.1:8080`), with an unspecified host (`0.0.0.0`, `[::]`) asked on loopback.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

/// `serve`'s default `--listen`.
const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Connect, write and read each get this long: a health check that hangs is a failed
/// one, and Docker's default check timeout is 30 s.
const TIMEOUT: Duration = Duration::from_secs(2);
/// The status line and a few headers; `/healthz` answers `ok` or a short reason.
const MAX_ANSWER_BYTES: u64 = 4096;

fn main() -> ExitCode {
    let listen = std::env::var("CANARY_ANALYZER_LISTEN").unwrap_or_else(|_| DEFAULT_LISTEN.to_string());
    match check(&listen) {
        Ok(()) => ExitCode::SUCCESS,
        Err(reason) => {
            eprintln!("canary-healthcheck: {reason}");
            ExitCode::FAILURE
        }
    }
}

/// The address to ask: the listen address, on loopback when it names every interface.
fn target(listen: &str) -> Result<SocketAddr, String> {
    let mut address = listen
        .to_socket_addrs()
        .map_err(|e| format!("CANARY_ANALYZER_LISTEN={listen:?}: expected HOST:PORT ({e})"))?
        .next()
        .ok_or_else(|| format!("CANARY_ANALYZER_LISTEN={listen:?}: resolves to no address"))?;
    if address.ip().is_unspecified() {
        let loopback =
            if address.is_ipv4() { std::net::Ipv4Addr::LOCALHOST.into() } else { std::net::Ipv6Addr::LOCALHOST.into() };
        address.set_ip(loopback);
    }
    Ok(address)
}

fn check(listen: &str) -> Result<(), String> {
    let address = target(listen)?;
    let mut stream =
        TcpStream::connect_timeout(&address, TIMEOUT).map_err(|e| format!("connecting to {address}: {e}"))?;
    stream.set_read_timeout(Some(TIMEOUT)).map_err(|e| e.to_string())?;
    stream.set_write_timeout(Some(TIMEOUT)).map_err(|e| e.to_string())?;
    stream
        .write_all(format!("GET /healthz HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n").as_bytes())
        .map_err(|e| format!("asking {address}: {e}"))?;
    let mut answer = String::new();
    stream
        .take(MAX_ANSWER_BYTES)
        .read_to_string(&mut answer)
        .map_err(|e| format!("reading the answer of {address}: {e}"))?;
    let status_line = answer.lines().next().unwrap_or("");
    if status_line.split_whitespace().nth(1) == Some("200") {
        Ok(())
    } else {
        let body = answer.split("\r\n\r\n").nth(1).unwrap_or("").trim();
        Err(format!("GET http://{address}/healthz answered {status_line:?}: {body}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_interface_is_asked_on_loopback() {
        assert_eq!(target("0.0.0.0:8080").unwrap(), "127.0.0.1:8080".parse().unwrap());
        assert_eq!(target("[::]:9000").unwrap(), "[::1]:9000".parse().unwrap());
        assert_eq!(target("127.0.0.1:81").unwrap(), "127.0.0.1:81".parse().unwrap());
    }

    #[test]
    fn a_listen_address_without_a_port_is_refused_naming_the_variable() {
        let error = target("0.0.0.0").unwrap_err();
        assert!(error.starts_with("CANARY_ANALYZER_LISTEN=\"0.0.0.0\": expected HOST:PORT"), "{error}");
    }

    #[test]
    fn a_200_passes_and_a_503_fails_with_its_body() {
        use std::net::TcpListener;
        for (answer, healthy) in [
            ("HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n", true),
            ("HTTP/1.1 503 Service Unavailable\r\ncontent-length: 12\r\n\r\naudit: full\n", false),
        ] {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let address = listener.local_addr().unwrap();
            let server = std::thread::spawn(move || {
                let (mut stream, _) = listener.accept().unwrap();
                let mut request = [0u8; 1024];
                let n = stream.read(&mut request).unwrap();
                assert!(String::from_utf8_lossy(&request[..n]).starts_with("GET /healthz HTTP/1.1\r\n"));
                stream.write_all(answer.as_bytes()).unwrap();
            });
            let result = check(&address.to_string());
            server.join().unwrap();
            assert_eq!(result.is_ok(), healthy, "{result:?}");
            if let Err(reason) = result {
                assert!(reason.contains("503") && reason.contains("audit: full"), "{reason}");
            }
        }
    }

    #[test]
    fn nobody_listening_fails() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        assert!(check(&format!("127.0.0.1:{port}")).unwrap_err().starts_with("connecting to"));
    }
}
