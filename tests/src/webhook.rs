//! A webhook receiver that keeps every JSON body posted to it, standing in for Slack,
//! Teams, Discord, Google Chat or a generic JSON receiver.

use crate::http_server::{self, response};
use http_body_util::BodyExt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub struct WebhookReceiver {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<serde_json::Value>>>,
    task: JoinHandle<()>,
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl WebhookReceiver {
    pub async fn start() -> WebhookReceiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind webhook receiver");
        let addr = listener.local_addr().expect("webhook address");
        let received = Arc::new(Mutex::new(Vec::new()));
        let store = Arc::clone(&received);
        let task = http_server::spawn(listener, move |req: hyper::Request<hyper::body::Incoming>| {
            let store = Arc::clone(&store);
            async move {
                let bytes = req.into_body().collect().await.map_err(std::io::Error::other)?.to_bytes();
                let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
                store.lock().expect("webhook lock").push(json);
                response(200, &[], "ok")
            }
        });
        WebhookReceiver { addr, received, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub fn received(&self) -> Vec<serde_json::Value> {
        self.received.lock().expect("webhook lock").clone()
    }
}
