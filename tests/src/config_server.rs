//! A rollout config server standing in for the analyzer: serves whatever answer
//! the test sets (a config, several deployments' configs on the batch endpoint,
//! garbage, an error status), counts the polls, and can be stopped (connections
//! refused) and restarted on the same port.

use crate::http_server::{self, HttpResult, response};
use canary_core::{BatchAnswer, RolloutConfig, RolloutPhase};
use hyper::Request;
use hyper::body::Incoming;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

#[derive(Clone, Debug)]
pub enum Answer {
    Config(RolloutConfig),
    /// The batch endpoint's answer (`GET /v1/config?deployments=...`) for these configs:
    /// a requested deployment without one is `unknown`; `If-None-Match` with the
    /// revision gets `304`.
    Batch(Vec<RolloutConfig>),
    /// A 200 with a body that is not a rollout config.
    Garbage(String),
    Status(u16),
}

impl Answer {
    pub fn share(deployment: &str, generation: u64, share_bp: u32) -> Answer {
        Answer::Config(RolloutConfig {
            deployment: deployment.to_string(),
            generation,
            share_bp,
            state: RolloutPhase::Progressing,
        })
    }
}

#[derive(Default)]
struct Inner {
    answer: Option<Answer>,
    polls: Vec<(Instant, String)>,
}

pub struct ConfigServer {
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
    task: Option<JoinHandle<()>>,
}

impl Drop for ConfigServer {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn serve_config(inner: Arc<Mutex<Inner>>, req: Request<Incoming>) -> HttpResult {
    let answer = {
        let mut inner = inner.lock().expect("config server lock");
        inner.polls.push((Instant::now(), req.uri().path().to_string()));
        inner.answer.clone()
    };
    match answer {
        Some(Answer::Batch(configs)) => batch_answer(&configs, &req),
        Some(Answer::Config(c)) => response(
            200,
            &[("content-type", "application/json")],
            serde_json::to_vec(&c).map_err(std::io::Error::other)?,
        ),
        Some(Answer::Garbage(body)) => response(200, &[], body),
        Some(Answer::Status(code)) => response(code, &[], ""),
        None => response(404, &[], ""),
    }
}

/// What the analyzer's batch endpoint answers for `configs`, as far as the filter reads it.
fn batch_answer(configs: &[RolloutConfig], req: &Request<Incoming>) -> HttpResult {
    let requested: Vec<&str> = req
        .uri()
        .query()
        .and_then(|q| q.strip_prefix("deployments="))
        .map(|ids| ids.split(',').collect())
        .unwrap_or_default();
    let rollouts: Vec<RolloutConfig> =
        requested.iter().filter_map(|id| configs.iter().find(|c| c.deployment == *id)).cloned().collect();
    let unknown: Vec<String> =
        requested.iter().filter(|id| !configs.iter().any(|c| c.deployment == **id)).map(|id| id.to_string()).collect();
    // Changes with every config served: deployment, generation and share of each.
    let revision: String =
        rollouts.iter().map(|c| format!("{}.{}.{}/", c.deployment, c.generation, c.share_bp)).collect();
    let tag = format!("\"{revision}\"");
    if req.headers().get("if-none-match").is_some_and(|v| v.as_bytes() == tag.as_bytes()) {
        return response(304, &[("etag", &tag)], "");
    }
    let body = BatchAnswer { revision, rollouts, unknown };
    let json = serde_json::to_vec(&body).map_err(std::io::Error::other)?;
    response(200, &[("content-type", "application/json"), ("etag", &tag)], json)
}

impl ConfigServer {
    pub async fn start(answer: Answer) -> ConfigServer {
        Self::start_on(answer, 0).await
    }

    /// Starts on a given loopback port (0: any free one).
    pub async fn start_on(answer: Answer, port: u16) -> ConfigServer {
        let listener =
            TcpListener::bind(("127.0.0.1", port)).await.unwrap_or_else(|e| panic!("bind 127.0.0.1:{port}: {e}"));
        let addr = listener.local_addr().expect("config server address");
        let inner = Arc::new(Mutex::new(Inner { answer: Some(answer), polls: Vec::new() }));
        let mut server = ConfigServer { addr, inner, task: None };
        server.serve(listener);
        server
    }

    fn serve(&mut self, listener: TcpListener) {
        let inner = Arc::clone(&self.inner);
        self.task = Some(http_server::spawn(listener, move |req| serve_config(Arc::clone(&inner), req)));
    }

    pub fn set(&self, answer: Answer) {
        self.inner.lock().expect("config server lock").answer = Some(answer);
    }

    /// Stops serving: open connections are dropped and new ones refused.
    pub fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }

    /// Serves again on the same port.
    pub async fn restart(&mut self) {
        self.stop();
        let listener = TcpListener::bind(self.addr).await.expect("rebind config server");
        self.serve(listener);
    }

    /// Polls received since `since`, and the paths they asked for.
    pub fn polls_since(&self, since: Instant) -> Vec<String> {
        let inner = self.inner.lock().expect("config server lock");
        inner.polls.iter().filter(|(t, _)| *t >= since).map(|(_, p)| p.clone()).collect()
    }
}
