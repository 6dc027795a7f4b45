//! A loopback TCP forwarder that a test can close and open again: a network partition
//! between two real processes, one link at a time. Closed, it accepts and drops every new
//! connection at once and cuts the ones in flight (so pooled keep-alive connections break
//! too, as they would across a real partition); open, it forwards bytes both ways.
//!
//! The fleet test puts one in front of the analyzer for each Envoy (only that Envoy loses
//! the analyzer) and one in front of each Envoy's admin port for Prometheus (only that
//! scrape target goes down).

use std::net::SocketAddr;
use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A running gate; stops forwarding (and cuts its connections) when dropped.
pub struct TcpGate {
    /// Where clients connect.
    pub addr: SocketAddr,
    /// `true` while open.
    open: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Drop for TcpGate {
    fn drop(&mut self) {
        // Cuts the forwarding tasks too: they watch this channel.
        let _ = self.open.send(false);
        self.task.abort();
    }
}

impl TcpGate {
    /// An open gate on a free loopback port, forwarding to `target`.
    pub async fn start(target: SocketAddr) -> TcpGate {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind gate");
        let addr = listener.local_addr().expect("gate address");
        let (open, watching) = watch::channel(true);
        let task = tokio::spawn(accept(listener, target, watching));
        TcpGate { addr, open, task }
    }

    /// Refuses new connections and cuts the open ones.
    pub fn close(&self) {
        self.open.send_replace(false);
    }

    /// Forwards again.
    pub fn open(&self) {
        self.open.send_replace(true);
    }

    pub fn is_open(&self) -> bool {
        *self.open.borrow()
    }
}

async fn accept(listener: TcpListener, target: SocketAddr, open: watch::Receiver<bool>) {
    loop {
        let Ok((client, _)) = listener.accept().await else { continue };
        if !*open.borrow() {
            // Dropped: the client sees its connection closed before any answer.
            continue;
        }
        tokio::spawn(forward(client, target, open.clone()));
    }
}

/// Forwards one connection until either side closes it or the gate closes.
async fn forward(mut client: TcpStream, target: SocketAddr, mut open: watch::Receiver<bool>) {
    let Ok(mut upstream) = TcpStream::connect(target).await else { return };
    tokio::select! {
        _ = copy_bidirectional(&mut client, &mut upstream) => {}
        _ = open.wait_for(|open| !*open) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An echo server: what it reads it writes back.
    async fn echo() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut read, mut write) = stream.split();
                    let _ = tokio::io::copy(&mut read, &mut write).await;
                });
            }
        });
        addr
    }

    async fn round_trip(stream: &mut TcpStream) -> std::io::Result<[u8; 4]> {
        stream.write_all(b"ping").await?;
        let mut answer = [0u8; 4];
        stream.read_exact(&mut answer).await?;
        Ok(answer)
    }

    #[tokio::test]
    async fn forwards_while_open_cuts_and_refuses_while_closed() {
        let gate = TcpGate::start(echo().await).await;
        let mut kept = TcpStream::connect(gate.addr).await.unwrap();
        assert_eq!(&round_trip(&mut kept).await.unwrap(), b"ping");
        gate.close();
        assert!(round_trip(&mut kept).await.is_err(), "an open connection is cut");
        let mut refused = TcpStream::connect(gate.addr).await.unwrap();
        assert!(round_trip(&mut refused).await.is_err(), "a new connection gets no answer");
        gate.open();
        let mut again = TcpStream::connect(gate.addr).await.unwrap();
        assert_eq!(&round_trip(&mut again).await.unwrap(), b"ping");
    }
}
