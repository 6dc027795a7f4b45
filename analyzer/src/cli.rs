//! The client side of the binary: `status`, `report`, `override`, `register` and
//! `wait` talk to a running analyzer over its API and print for people (tables)
//! or for pipelines (exit codes, `--json`).

use crate::engine::RolloutStatus;
use crate::stats::ComparisonRow;
use anyhow::{Context, bail};
use canary_core::RolloutPhase;
use serde_json::json;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

/// How the analyzer is reached.
#[derive(Debug, Clone)]
pub struct Client {
    pub server: String,
    pub token: Option<String>,
    http: reqwest::Client,
}

/// `wait`'s exit codes: pipelines branch on them.
pub mod exit {
    pub const PROMOTED: i32 = 0;
    pub const ROLLED_BACK: i32 = 1;
    /// Timed out, or the analyzer could not be asked.
    pub const UNKNOWN: i32 = 2;
}

impl Client {
    pub fn new(server: &str, token: Option<String>) -> Client {
        Client { server: server.trim_end_matches('/').to_string(), token, http: reqwest::Client::new() }
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<String> {
        let request = match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        let response = request.send().await.with_context(|| format!("cannot reach the analyzer at {}", self.server))?;
        let status = response.status();
        let body = response.text().await.context("reading the analyzer's answer")?;
        if !status.is_success() {
            let message = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
                .unwrap_or(body);
            bail!("analyzer answered {status}: {message}");
        }
        Ok(body)
    }

    pub async fn status(&self, deployment: &str) -> anyhow::Result<RolloutStatus> {
        let body = self.send(self.http.get(format!("{}/v1/rollouts/{deployment}", self.server))).await?;
        serde_json::from_str(&body).context("the analyzer's status is not what this client expects")
    }

    pub async fn list(&self) -> anyhow::Result<Vec<RolloutStatus>> {
        let body = self.send(self.http.get(format!("{}/v1/rollouts", self.server))).await?;
        serde_json::from_str(&body).context("the analyzer's list is not what this client expects")
    }

    pub async fn register(&self, policy_text: String, actor: &str) -> anyhow::Result<RolloutStatus> {
        let request = self.http.post(format!("{}/v1/rollouts", self.server)).header("x-actor", actor).body(policy_text);
        serde_json::from_str(&self.send(request).await?).context("unexpected answer to register")
    }

    pub async fn override_rollout(
        &self,
        deployment: &str,
        action: &str,
        reason: &str,
        actor: &str,
        share_percent: Option<f64>,
    ) -> anyhow::Result<RolloutStatus> {
        let body = json!({ "action": action, "reason": reason, "actor": actor, "share_percent": share_percent });
        let request = self.http.post(format!("{}/v1/rollouts/{deployment}/override", self.server)).json(&body);
        serde_json::from_str(&self.send(request).await?).context("unexpected answer to override")
    }

    /// Polls until the rollout ends; returns the exit code for pipelines.
    pub async fn wait(&self, deployment: &str, timeout: Duration, every: Duration) -> i32 {
        let start = Instant::now();
        let mut last_line = String::new();
        loop {
            match self.status(deployment).await {
                Ok(status) => {
                    let line = progress_line(&status);
                    if line != last_line {
                        println!("{line}");
                        last_line = line;
                    }
                    match status.state.phase {
                        RolloutPhase::Promoted => return exit::PROMOTED,
                        RolloutPhase::RolledBack => return exit::ROLLED_BACK,
                        _ => {}
                    }
                }
                Err(e) => eprintln!("{e:#}"),
            }
            if start.elapsed() >= timeout {
                eprintln!("gave up after {} s without a verdict", timeout.as_secs());
                return exit::UNKNOWN;
            }
            tokio::time::sleep(every).await;
        }
    }
}

fn percent(bp: u32) -> String {
    format!("{}.{:02} %", bp / 100, bp % 100)
}

/// One line of progress: `checkout: progressing at 5.00 % (step 2/5), next step in 120 s`.
pub fn progress_line(status: &RolloutStatus) -> String {
    let phase = format!("{:?}", status.state.phase).to_lowercase();
    let mut line = format!(
        "{}: {phase} at {} (step {}/{})",
        status.deployment,
        percent(status.state.share_bp),
        status.state.step + 1,
        status.ladder_bp.len()
    );
    if let Some(s) = status.window_remaining_s {
        let _ = write!(line, ", window ends in {s} s");
    }
    line
}

fn number(v: Option<f64>, metric: &str) -> String {
    match v {
        None => "-".into(),
        Some(v) if metric.ends_with("_us") => format!("{:.1} ms", v / 1_000.0),
        Some(v) if metric.ends_with("_rate") || metric == "sample_ratio" => format!("{:.3} %", v * 100.0),
        Some(v) => format!("{v:.4}"),
    }
}

/// The comparison table, worst first, as the API returns it.
pub fn report_table(rows: &[ComparisonRow]) -> String {
    let mut out = format!(
        "{:<16} {:>12} {:>12} {:>12} {:>9} {:>25} {:>8}  {}\n",
        "metric", "canary", "control", "difference", "relative", "interval", "p", "verdict"
    );
    for row in rows {
        let relative = row.relative_difference.map_or("-".into(), |r| format!("{:+.1} %", r * 100.0));
        let interval = match &row.interval {
            Some(i) if i.lo.is_some() || i.hi.is_some() => {
                let end = |v: Option<f64>| v.map_or("∞".to_string(), |v| format!("{v:.3}"));
                format!("[{}, {}] {:?}", end(i.lo), end(i.hi), row.interval_scale).to_lowercase()
            }
            _ => "-".into(),
        };
        let p = row.p_value.map_or("-".into(), |p| format!("{p:.3}"));
        let verdict = format!("{:?}", row.verdict).to_lowercase();
        let _ = writeln!(
            out,
            "{:<16} {:>12} {:>12} {:>12} {:>9} {:>25} {:>8}  {verdict}",
            row.metric,
            number(row.canary, &row.metric),
            number(row.control, &row.metric),
            number(row.absolute_difference, &row.metric),
            relative,
            interval,
            p
        );
    }
    out
}

/// The status of one rollout for people.
pub fn status_text(status: &RolloutStatus) -> String {
    let mut out = progress_line(status);
    let ladder: Vec<String> = status
        .ladder_bp
        .iter()
        .enumerate()
        .map(|(i, bp)| if i as u32 == status.state.step { format!("[{}]", percent(*bp)) } else { percent(*bp) })
        .collect();
    let _ = write!(out, "\nladder: {}\ngeneration {}", ladder.join(" → "), status.state.generation);
    if !status.failed_targets.is_empty() {
        let _ = write!(out, "\nfailed scrape targets: {}", status.failed_targets.join("; "));
    }
    let _ = write!(out, "\n\n{}", report_table(&status.rows));
    out
}
