//! Status updates to a webhook, in Slack-compatible JSON (`text` plus `blocks`),
//! one per step change. Sending never blocks a decision: the post runs in its own
//! task with a timeout, and a failure is logged and counted, nothing more.

use crate::dashboard::duration_text;
use serde_json::{Value, json};
use std::time::Duration;

/// How long a webhook may take before the update is given up.
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(5);

/// One status update: what happened to which rollout, and the figures behind it.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusUpdate {
    pub deployment: String,
    /// e.g. "promote", "rollback", "override: hold".
    pub decision: String,
    pub reason: String,
    pub actor: String,
    pub share_bp: u32,
    /// Seconds until the next step may be taken, if the rollout goes on.
    pub next_step_in_s: Option<u64>,
    /// The key comparison rows, already formatted ("error_rate: canary 0.9 % vs control 0.5 %, worse").
    pub key_metrics: Vec<String>,
}

impl StatusUpdate {
    /// The Slack-compatible message body.
    pub fn to_slack_json(&self) -> Value {
        let share = format!("{}.{:02} %", self.share_bp / 100, self.share_bp % 100);
        let headline = format!("wasm canary · {}: {} → {share}", self.deployment, self.decision);
        let next =
            self.next_step_in_s.map_or("no further step".to_string(), |s| format!("next step in {}", duration_text(s)));
        let mut fields = vec![
            json!({"type": "mrkdwn", "text": format!("*Share*\n{share}")}),
            json!({"type": "mrkdwn", "text": format!("*Next*\n{next}")}),
            json!({"type": "mrkdwn", "text": format!("*By*\n{}", self.actor)}),
            json!({"type": "mrkdwn", "text": format!("*Reason*\n{}", self.reason)}),
        ];
        fields.truncate(10); // Slack allows at most 10 fields per section.
        let metrics =
            if self.key_metrics.is_empty() { "no comparison yet".to_string() } else { self.key_metrics.join("\n") };
        json!({
            "text": format!("{headline}. {}. {next}.", self.reason),
            "blocks": [
                {"type": "header", "text": {"type": "plain_text", "text": headline}},
                {"type": "section", "fields": fields},
                {"type": "section", "text": {"type": "mrkdwn", "text": format!("```{metrics}```")}},
            ],
        })
    }
}

/// Posts updates to one webhook URL (or nowhere, when none is configured).
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    webhook_url: Option<String>,
    http: reqwest::Client,
}

impl Notifier {
    pub fn new(webhook_url: Option<String>) -> Notifier {
        Notifier { webhook_url, http: reqwest::Client::new() }
    }

    /// Sends in the background; returns at once.
    pub fn send(&self, update: StatusUpdate) {
        let Some(url) = self.webhook_url.clone() else { return };
        let http = self.http.clone();
        tokio::spawn(async move {
            let body = update.to_slack_json();
            let result = http.post(&url).timeout(WEBHOOK_TIMEOUT).json(&body).send().await;
            match result.map(|r| r.error_for_status()) {
                Ok(Ok(_)) => tracing::debug!(deployment = %update.deployment, "status update sent"),
                Ok(Err(e)) | Err(e) => {
                    tracing::warn!(deployment = %update.deployment, url = %url, error = %e, "status update not delivered")
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update() -> StatusUpdate {
        StatusUpdate {
            deployment: "checkout".into(),
            decision: "promote".into(),
            reason: "window of 5 % passed with no regression".into(),
            actor: "analyzer".into(),
            share_bp: 2_500,
            next_step_in_s: Some(300),
            key_metrics: vec!["error_rate: canary 0.48 % vs control 0.51 %, no difference".into()],
        }
    }

    #[test]
    fn slack_message_carries_share_next_step_reason_and_metrics() {
        let json = update().to_slack_json();
        let text = json["text"].as_str().unwrap();
        assert!(
            text.contains("checkout") && text.contains("25.00 %") && text.contains("next step in 5 min 00 s"),
            "{text}"
        );
        let blocks = json["blocks"].as_array().unwrap();
        assert_eq!(blocks[0]["type"], "header");
        let body = serde_json::to_string(&json).unwrap();
        assert!(body.contains("error_rate: canary 0.48 %") && body.contains("window of 5 % passed"));
    }

    #[test]
    fn the_last_step_says_so() {
        let mut last = update();
        last.next_step_in_s = None;
        assert!(last.to_slack_json()["text"].as_str().unwrap().contains("no further step"));
    }
}
