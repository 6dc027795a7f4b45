//! A stand-in for `hashicorp/http-echo` in the container tests, where no image can be
//! pulled: it takes the same two flags the compose file gives (`-listen=:PORT`,
//! `-text=TEXT`) and answers every HTTP/1.1 request with TEXT and a newline, on
//! persistent connections as Envoy's upstream pool uses them. Standard library only,
//! built as one static binary (`rustc --target x86_64-unknown-linux-musl`, see the
//! Makefile's `test-images`), so its image is `FROM scratch`.
//!
//! It runs as PID 1 of its container, and PID 1 ignores every signal it has no handler
//! for: one `signal(2)` call installs a SIGTERM handler that exits at once, so
//! `compose down` stops it without waiting for the 10 s kill.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};

/// SIGTERM on Linux.
const SIGTERM: i32 = 15;
/// Requests larger than this are answered and the connection closed: test traffic
/// sends small GETs.
const MAX_BODY_BYTES: u64 = 1 << 20;

unsafe extern "C" {
    fn signal(signum: i32, handler: extern "C" fn(i32)) -> usize;
    fn _exit(status: i32) -> !;
}

extern "C" fn exit_now(_signum: i32) {
    // SAFETY: _exit is async-signal-safe.
    unsafe { _exit(0) }
}

fn main() {
    let mut listen = ":5678".to_string();
    let mut text = "hello-world".to_string();
    for arg in std::env::args().skip(1) {
        if let Some(value) = arg.strip_prefix("-listen=") {
            listen = value.to_string();
        } else if let Some(value) = arg.strip_prefix("-text=") {
            text = value.to_string();
        } else {
            eprintln!("http-echo: unknown argument {arg:?}: expected -listen=[HOST]:PORT or -text=TEXT");
            std::process::exit(2);
        }
    }
    // SAFETY: installs a handler that only calls _exit.
    unsafe { signal(SIGTERM, exit_now) };
    let address = if listen.starts_with(':') { format!("0.0.0.0{listen}") } else { listen };
    let listener = TcpListener::bind(&address).unwrap_or_else(|e| {
        eprintln!("http-echo: -listen={address}: {e}");
        std::process::exit(1)
    });
    eprintln!("http-echo: serving {text:?} on {address}");
    let answer = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{text}\n",
        text.len() + 1
    );
    for stream in listener.incoming().flatten() {
        let answer = answer.clone();
        std::thread::spawn(move || serve(stream, &answer));
    }
}

/// Answers each request of one connection until the client closes it or asks to.
fn serve(stream: TcpStream, answer: &str) {
    let Ok(mut writer) = stream.try_clone() else { return };
    let mut reader = BufReader::new(stream);
    loop {
        let mut body_bytes = 0u64;
        let mut close = false;
        let mut line = String::new();
        let mut first = true;
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let header = line.trim_end().to_ascii_lowercase();
            if header.is_empty() {
                if first {
                    continue;
                }
                break;
            }
            first = false;
            if let Some(value) = header.strip_prefix("content-length:") {
                body_bytes = value.trim().parse().unwrap_or(0);
            } else if header == "connection: close" {
                close = true;
            }
        }
        if body_bytes > MAX_BODY_BYTES {
            close = true;
        } else if std::io::copy(&mut (&mut reader).take(body_bytes), &mut std::io::sink()).is_err() {
            return;
        }
        if writer.write_all(answer.as_bytes()).is_err() || close {
            return;
        }
    }
}
