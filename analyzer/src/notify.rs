//! Status updates to a webhook, in Slack-compatible JSON (`text` plus `blocks`),
//! one per step change. Sending never blocks a decision: the post runs in its own
//! task with a timeout, and a failure is logged and counted, nothing more.
//!
//! The URL is a secret ([`WebhookUrl`]): a failure is logged with its redacted
//! form, and reqwest's error without the URL its `Display` would otherwise carry.

use crate::hold::HoldReason;
use crate::policy::{RolloutPolicy, WebhookUrl};
use crate::present::duration_text;
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
    /// "N of M proxies on generation G" (and who lags), when the proxies report it.
    pub fleet: Option<String>,
    /// What holds the rollout after this update ([`crate::hold`]); empty when nothing does.
    pub holds: Vec<HoldReason>,
}

impl StatusUpdate {
    /// The Slack-compatible message body.
    pub fn to_slack_json(&self) -> Value {
        let share = crate::present::percent(self.share_bp);
        let headline = format!("wasm canary · {}: {} → {share}", self.deployment, self.decision);
        let next =
            self.next_step_in_s.map_or("no further step".to_string(), |s| format!("next step in {}", duration_text(s)));
        let mut fields = vec![
            json!({"type": "mrkdwn", "text": format!("*Share*\n{share}")}),
            json!({"type": "mrkdwn", "text": format!("*Next*\n{next}")}),
            json!({"type": "mrkdwn", "text": format!("*By*\n{}", self.actor)}),
            json!({"type": "mrkdwn", "text": format!("*Reason*\n{}", self.reason)}),
        ];
        if let Some(fleet) = &self.fleet {
            fields.push(json!({"type": "mrkdwn", "text": format!("*Fleet*\n{fleet}")}));
        }
        if !self.holds.is_empty() {
            let held: Vec<String> = self.holds.iter().map(crate::present::hold_text).collect();
            fields.push(json!({"type": "mrkdwn", "text": format!("*Held*\n{}", held.join("\n"))}));
        }
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
    webhook_url: Option<WebhookUrl>,
    http: reqwest::Client,
}

impl Notifier {
    pub fn new(webhook_url: Option<WebhookUrl>) -> Notifier {
        Notifier { webhook_url, http: reqwest::Client::new() }
    }

    /// The notifier of a rollout: its policy's webhook, else `default` (`--webhook`).
    /// A policy URL known only redacted (recovered from the audit log without a
    /// state file that holds it) cannot be posted to: `default` takes over, and a log line says so.
    pub fn for_policy(policy: &RolloutPolicy, default: &Notifier) -> Notifier {
        match policy.notify.as_ref().map(|n| &n.webhook_url) {
            Some(url) if url.secret().is_some() => {
                Notifier { webhook_url: Some(url.clone()), http: default.http.clone() }
            }
            Some(url) => {
                tracing::warn!(
                    deployment = %policy.deployment, policy_webhook = %url,
                    default_webhook = %default.webhook_url.as_ref().map_or("(none)".to_string(), ToString::to_string),
                    "the policy's webhook URL is not known (redacted in the audit log); status updates go to --webhook"
                );
                default.clone()
            }
            None => default.clone(),
        }
    }

    /// Sends in the background; returns at once.
    pub fn send(&self, update: StatusUpdate) {
        let Some(url) = self.webhook_url.clone() else { return };
        tokio::spawn(deliver(self.http.clone(), url, update));
    }
}

/// Posts one update and logs the outcome, the URL redacted.
async fn deliver(http: reqwest::Client, url: WebhookUrl, update: StatusUpdate) {
    let Some(secret) = url.secret() else { return };
    let body = update.to_slack_json();
    let result = http.post(secret).timeout(WEBHOOK_TIMEOUT).json(&body).send().await;
    match result.and_then(reqwest::Response::error_for_status) {
        Ok(_) => tracing::debug!(deployment = %update.deployment, "status update sent"),
        Err(e) => {
            // reqwest's Display ends in "for url (<the whole URL>)": drop it, `url` is the redacted form.
            let error = e.without_url();
            tracing::warn!(deployment = %update.deployment, url = %url, error = %error, "status update not delivered")
        }
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
            fleet: Some("3 of 3 proxies on generation 17".into()),
            holds: Vec::new(),
        }
    }

    #[test]
    fn a_held_rollout_posts_its_hold_reasons_in_the_shared_wording() {
        let reason =
            HoldReason::RequestsMissing { cohort: "canary".into(), served: 160, needed: 500, rate_per_s: Some(8.5) };
        let body =
            serde_json::to_string(&StatusUpdate { holds: vec![reason.clone()], ..update() }.to_slack_json()).unwrap();
        assert!(body.contains(&format!("*Held*\\n{}", crate::present::hold_text(&reason))), "{body}");
        assert!(!serde_json::to_string(&update().to_slack_json()).unwrap().contains("*Held*"));
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
        assert!(body.contains("*Fleet*\\n3 of 3 proxies on generation 17"), "{body}");
    }

    /// Log lines written while `run` runs on this thread (the test runtime is single-threaded,
    /// so spawned tasks log here too).
    async fn captured_logs(run: impl std::future::Future<Output = ()>) -> String {
        use std::sync::{Arc, Mutex};
        #[derive(Clone, Default)]
        struct Buffer(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buffer {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt().with_writer(move || writer.clone()).with_ansi(false).finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        run.await;
        String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap()
    }

    #[tokio::test]
    async fn a_failed_delivery_is_logged_without_the_url() {
        // A port nothing listens on: the post fails at once with "connection refused".
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let url = WebhookUrl::parse(&format!("http://127.0.0.1:{port}/services/T000/B000/SECRETSECRET")).unwrap();
        let logs = captured_logs(deliver(reqwest::Client::new(), url.clone(), update())).await;
        assert!(logs.contains("status update not delivered"), "{logs}");
        assert!(logs.contains(url.redacted()), "the redacted form identifies the URL: {logs}");
        assert!(!logs.contains("SECRETSECRET") && !logs.contains("/services/"), "{logs}");
    }

    #[test]
    fn a_policy_url_known_only_redacted_falls_back_to_the_default() {
        let yaml = "apiVersion: canary.wasm.dev/v1alpha1\nkind: RolloutPolicy\nmetadata: {name: n}\nspec:\n  \
                    deployment: checkout\n  notify: {webhook_url: 'https://hooks.example.com/policy/SECRET'}\n";
        let policy = RolloutPolicy::from_yaml(yaml).unwrap();
        let default = Notifier::new(Some(WebhookUrl::parse("https://hooks.example.com/default/SECRET").unwrap()));
        let url = |n: Notifier| n.webhook_url.and_then(|u| u.secret().map(str::to_string));
        assert_eq!(
            url(Notifier::for_policy(&policy, &default)).as_deref(),
            Some("https://hooks.example.com/policy/SECRET")
        );
        let recovered = policy.redacted();
        assert_eq!(
            url(Notifier::for_policy(&recovered, &default)).as_deref(),
            Some("https://hooks.example.com/default/SECRET")
        );
        assert_eq!(url(Notifier::for_policy(&recovered, &Notifier::new(None))), None);
    }

    #[test]
    fn the_last_step_says_so() {
        let mut last = update();
        last.next_step_in_s = None;
        assert!(last.to_slack_json()["text"].as_str().unwrap().contains("no further step"));
    }
}
