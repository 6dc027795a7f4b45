//! Requests through Envoy as a given user, one at a time or many in parallel.

use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Requests in flight at once for bulk traffic: enough to keep Envoy busy on two
/// cores without queueing in the client.
const PARALLEL: usize = 16;

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    /// The `Host` header every request carries (default: the listener's address).
    host: Option<String>,
}

/// What came back: which version answered and the response itself.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub version: Option<String>,
    pub set_cookie: Option<String>,
    pub seen_cohort_header: Option<String>,
}

impl Client {
    pub fn new(listener: SocketAddr) -> Client {
        Client { http: reqwest::Client::new(), base: format!("http://{listener}"), host: None }
    }

    /// A client whose requests carry `Host: host` (to reach one of Envoy's virtual hosts).
    pub fn for_host(listener: SocketAddr, host: &str) -> Client {
        Client { host: Some(host.to_string()), ..Client::new(listener) }
    }

    /// The same listener and host over new connections.
    pub fn fresh(&self) -> Client {
        Client { http: reqwest::Client::new(), base: self.base.clone(), host: self.host.clone() }
    }

    /// Sends `GET path` with extra headers.
    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        let mut request = self.http.get(format!("{}{path}", self.base));
        if let Some(host) = &self.host {
            request = request.header("host", host);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("request through envoy");
        let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
        Reply {
            status: response.status().as_u16(),
            version: header("x-version"),
            set_cookie: header("set-cookie"),
            seen_cohort_header: header("x-seen-cohort-header"),
        }
    }

    /// Which version answered user `id` (header `x-user-id`).
    pub async fn version_for(&self, id: &str) -> String {
        self.get("/", &[("x-user-id", id)]).await.version.unwrap_or_default()
    }

    /// Which version answered each user, in order, with up to 16 requests in flight.
    pub async fn versions_for(&self, ids: &[String]) -> Vec<String> {
        self.map_parallel(ids, |client, id| async move { client.version_for(&id).await }).await
    }

    /// The status each user got for `GET path`, in order, with up to 16 requests in flight.
    pub async fn statuses_for(&self, path: &'static str, ids: &[String]) -> Vec<u16> {
        self.map_parallel(ids, move |client, id| async move { client.get(path, &[("x-user-id", &id)]).await.status })
            .await
    }

    /// Runs `call` for every item with bounded parallelism, results in input order.
    pub async fn map_parallel<T, F, Fut>(&self, items: &[String], call: F) -> Vec<T>
    where
        T: Send + 'static,
        F: Fn(Client, String) -> Fut,
        Fut: std::future::Future<Output = T> + Send + 'static,
    {
        let permits = Arc::new(Semaphore::new(PARALLEL));
        let mut tasks = JoinSet::new();
        for (i, item) in items.iter().enumerate() {
            let permit = Arc::clone(&permits).acquire_owned().await.expect("semaphore open");
            let future = call(self.clone(), item.clone());
            tasks.spawn(async move {
                let out = future.await;
                drop(permit);
                (i, out)
            });
        }
        let mut results: Vec<Option<T>> = (0..items.len()).map(|_| None).collect();
        while let Some(joined) = tasks.join_next().await {
            let (i, out) = joined.expect("request task");
            results[i] = Some(out);
        }
        results.into_iter().map(|r| r.expect("every request answered")).collect()
    }
}

/// Distinct UUID-shaped (36-byte) user ids.
pub fn user_ids(prefix: u32, n: u32) -> Vec<String> {
    (0..n).map(|i| format!("{prefix:08x}-{:04x}-4000-8000-{:012x}", i >> 16, u64::from(i) * 7919)).collect()
}
