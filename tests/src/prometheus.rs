//! A real Prometheus (`/usr/bin/prometheus`, Debian package `prometheus`, or
//! `$PROMETHEUS`) scraping one or more Envoys' `/stats/prometheus` at a given interval, with its own
//! config and TSDB in a temp dir, and the few API reads the e2e tests need (instant
//! values per `instance`, raw samples of a range).

use crate::free_port;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long Prometheus may take to answer `/-/ready` (it replays an empty TSDB: well under
/// a second when idle, several on a busy two-core machine).
const READY_LIMIT: Duration = Duration::from_secs(60);

/// A running Prometheus; killed, reaped and its directory removed on drop.
pub struct Prometheus {
    child: Child,
    dir: PathBuf,
    pub url: String,
    http: reqwest::Client,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Prometheus {
    /// Starts Prometheus scraping every `target` (`host:port` of an Envoy admin, or a gate
    /// in front of one) every `scrape_interval`, and waits until it is ready.
    pub async fn start(targets: &[SocketAddr], scrape_interval: Duration) -> Prometheus {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("wasm-canary-prometheus-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("prometheus temp dir");
        let list: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let ms = scrape_interval.as_millis();
        let config = format!(
            "global:\n  scrape_interval: {ms}ms\n  scrape_timeout: {ms}ms\n  evaluation_interval: {ms}ms\n\
             scrape_configs:\n  - job_name: envoy\n    metrics_path: /stats/prometheus\n    \
             static_configs:\n      - targets: [{}]\n",
            list.join(", ")
        );
        std::fs::write(dir.join("prometheus.yml"), config).expect("write prometheus.yml");
        let log = std::fs::File::create(dir.join("prometheus.log")).expect("prometheus log");
        let binary = std::env::var("PROMETHEUS").unwrap_or_else(|_| "/usr/bin/prometheus".to_string());
        let child = Command::new(&binary)
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {binary} (install the `prometheus` package): {e}"));
        let mut prometheus =
            Prometheus { child, dir, url: format!("http://127.0.0.1:{port}"), http: reqwest::Client::new() };
        prometheus.wait_ready().await;
        prometheus
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_LIMIT;
        loop {
            if let Ok(response) = self.http.get(format!("{}/-/ready", self.url)).send().await {
                if response.status().is_success() {
                    return;
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("prometheus exited with {status}:\n{}", self.log());
            }
            assert!(Instant::now() < deadline, "prometheus not ready:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until Prometheus holds two scrapes of its targets (before that a window has no
    /// baseline and `increase()` answers nothing), at most `limit`.
    pub async fn wait_for_two_scrapes(&self, limit: Duration) {
        let start = Instant::now();
        loop {
            let samples = self.query("count_over_time(up[1m])").await;
            let scrapes = samples.first().and_then(|s| s["value"][1].as_str()?.parse::<f64>().ok()).unwrap_or(0.0);
            if scrapes >= 2.0 {
                return;
            }
            assert!(start.elapsed() < limit, "prometheus never scraped its targets twice:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The `result` array of an instant query evaluated now.
    pub async fn query(&self, promql: &str) -> Vec<serde_json::Value> {
        let answer: serde_json::Value = self
            .http
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", promql)])
            .send()
            .await
            .expect("prometheus reachable")
            .json()
            .await
            .expect("prometheus answers json");
        assert_eq!(answer["status"], "success", "{promql}: {answer}");
        answer["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// An instant vector as `instance -> value` (series without `instance` are left out).
    pub async fn by_instance(&self, promql: &str) -> BTreeMap<String, f64> {
        self.query(promql)
            .await
            .iter()
            .filter_map(|sample| {
                let instance = sample["metric"]["instance"].as_str()?.to_string();
                let value = sample["value"][1].as_str()?.parse().ok()?;
                Some((instance, value))
            })
            .collect()
    }

    /// A range vector's raw samples, one entry per series: its labels and its
    /// `(ms since the epoch, value)` samples in time order.
    pub async fn samples(&self, promql: &str) -> Vec<(BTreeMap<String, String>, Vec<(u64, f64)>)> {
        self.query(promql)
            .await
            .iter()
            .map(|series| {
                let labels = series["metric"]
                    .as_object()
                    .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect())
                    .unwrap_or_default();
                let values = series["values"]
                    .as_array()
                    .map(|values| {
                        values
                            .iter()
                            .map(|pair| {
                                let ms = (pair[0].as_f64().expect("sample time") * 1_000.0).round() as u64;
                                (ms, pair[1].as_str().and_then(|v| v.parse().ok()).expect("sample value"))
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                (labels, values)
            })
            .collect()
    }
}
