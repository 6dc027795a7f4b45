//! Notifications: one [`StatusUpdate`] per event of a rollout (a step, a hold that
//! changed, a stall, a rollback, a promotion, an approval needed), posted to every
//! webhook target that asked for that event ([`route`]), in the JSON its service reads:
//! Slack ([`slack`]), Microsoft Teams ([`teams`]), Discord ([`discord`]), Google Chat
//! ([`google_chat`]) or this analyzer's own versioned schema ([`generic`]).
//!
//! Sending never blocks a decision: each post runs in its own task with a timeout, is
//! tried again after a transport error, a 429 or a 5xx ([`DELIVERY_ATTEMPTS`]), and a
//! failure is logged, nothing more. Every body is cut to its service's size limit
//! ([`fit`]) rather than refused by it.
//!
//! The URL is a secret ([`WebhookUrl`]): a failure is logged with its redacted form,
//! and reqwest's error without the URL its `Display` would otherwise carry.

pub mod discord;
pub mod generic;
pub mod google_chat;
pub mod route;
pub mod slack;
pub mod teams;

pub use route::{EventSet, NotifyEvent, RouteError, WebhookFormat, WebhookTarget};

use crate::hold::HoldReason;
use crate::policy::RolloutPolicy;
use crate::present::duration_text;
use canary_core::RolloutPhase;
use serde_json::Value;
use std::time::Duration;

/// How long one post may take before it is given up.
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(5);
/// Posts per update at most: a chat service that is restarting or rate-limiting
/// usually answers within seconds; more tries would deliver news that is stale.
const DELIVERY_ATTEMPTS: u32 = 3;
/// The wait before the second try, doubled before each later one (1 s, 2 s).
const FIRST_RETRY_DELAY: Duration = Duration::from_secs(1);

/// One comparison row as notifications show it: values already in their unit.
#[derive(Debug, Clone, PartialEq)]
pub struct NotifiedRow {
    pub metric: String,
    pub canary: String,
    pub control: String,
    /// `worse`, `better`, `no difference`, `not enough data`.
    pub verdict: String,
    pub critical: bool,
}

/// One status update: what happened to which rollout, and the figures behind it.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusUpdate {
    /// What kind of event this is, for routing.
    pub event: NotifyEvent,
    pub deployment: String,
    /// e.g. "promote", "rollback", "stalled", "approval needed".
    pub decision: String,
    pub reason: String,
    pub actor: String,
    pub phase: RolloutPhase,
    pub share_bp: u32,
    /// The step, counted from 1, and the ladder's length.
    pub step: u32,
    pub steps: u32,
    /// Seconds until the next step may be taken, if the rollout goes on.
    pub next_step_in_s: Option<u64>,
    /// The key comparison rows, already formatted ("error_rate: canary 0.9 % vs control 0.5 %, worse").
    pub key_metrics: Vec<String>,
    /// Every comparison row, worst first (the generic schema carries them all).
    pub rows: Vec<NotifiedRow>,
    /// "N of M proxies on generation G" (and who lags), when the proxies report it.
    pub fleet: Option<String>,
    /// What holds the rollout after this update ([`crate::hold`]); empty when nothing does.
    pub holds: Vec<HoldReason>,
    /// The rollout's dashboard page, when the analyzer knows its public URL (`--public-url`).
    pub dashboard_url: Option<String>,
    /// When it happened (Unix ms).
    pub at_ms: u64,
}

impl StatusUpdate {
    /// `wasm canary · checkout: promote → 25.00 %`.
    pub fn headline(&self) -> String {
        format!("wasm canary · {}: {} → {}", self.deployment, self.decision, crate::present::percent(self.share_bp))
    }

    /// `next step in 5 min 00 s` or `no further step`.
    pub fn next_text(&self) -> String {
        self.next_step_in_s.map_or("no further step".to_string(), |s| format!("next step in {}", duration_text(s)))
    }

    /// The hold reasons in the shared wording, one per line.
    pub fn held_text(&self) -> Option<String> {
        (!self.holds.is_empty())
            .then(|| self.holds.iter().map(crate::present::hold_text).collect::<Vec<_>>().join("\n"))
    }

    /// The key metrics, one per line, or `no comparison yet`.
    pub fn metrics_text(&self) -> String {
        if self.key_metrics.is_empty() { "no comparison yet".to_string() } else { self.key_metrics.join("\n") }
    }

    /// `Step 2 of 5`.
    pub fn step_text(&self) -> String {
        format!("{} of {}", self.step, self.steps)
    }

    /// The body for `format`, within that service's size limit.
    pub fn body(&self, format: WebhookFormat) -> Value {
        match format {
            WebhookFormat::Slack => fit(self, slack::body, slack::MAX_BODY_BYTES),
            WebhookFormat::Teams => fit(self, teams::body, teams::MAX_BODY_BYTES),
            WebhookFormat::Discord => discord::body(self),
            WebhookFormat::GoogleChat => fit(self, google_chat::body, google_chat::MAX_BODY_BYTES),
            WebhookFormat::Json => fit(self, generic::body, generic::MAX_BODY_BYTES),
        }
    }

    /// The Slack-compatible message body.
    pub fn to_slack_json(&self) -> Value {
        self.body(WebhookFormat::Slack)
    }
}

/// `text` cut to at most `max_chars` characters, ending in `…` when cut.
pub fn truncate_chars(text: &str, max_chars: usize) -> String {
    if text.chars().count() <= max_chars {
        return text.to_string();
    }
    let kept: String = text.chars().take(max_chars.saturating_sub(1)).collect();
    format!("{kept}…")
}

/// `build(update)`, shrunk until its JSON is at most `max_bytes`: the rows go first
/// (from the least important), then the key metrics and the hold reasons, then the
/// reason is cut. A body that a service refuses for its size would tell nobody anything.
pub fn fit(update: &StatusUpdate, build: fn(&StatusUpdate) -> Value, max_bytes: usize) -> Value {
    let size = |body: &Value| serde_json::to_vec(body).map_or(usize::MAX, |bytes| bytes.len());
    let mut update = std::borrow::Cow::Borrowed(update);
    loop {
        let body = build(&update);
        if size(&body) <= max_bytes {
            return body;
        }
        let shrunk = update.to_mut();
        if !shrunk.rows.is_empty() {
            let keep = shrunk.rows.len() / 2;
            shrunk.rows.truncate(keep);
        } else if !shrunk.key_metrics.is_empty() {
            shrunk.key_metrics.pop();
        } else if !shrunk.holds.is_empty() {
            shrunk.holds.pop();
        } else if shrunk.reason.chars().count() > REASON_FLOOR_CHARS {
            let half = shrunk.reason.chars().count() / 2;
            shrunk.reason = truncate_chars(&shrunk.reason, half.max(REASON_FLOOR_CHARS));
        } else {
            // Nothing left to cut: the fixed parts alone exceed the limit (a deployment
            // id of kilobytes); send it and let the service say so in the log.
            return body;
        }
    }
}

/// Shortest the reason is cut to by [`fit`]: its first words still say what happened.
const REASON_FLOOR_CHARS: usize = 200;

/// Posts updates to the webhook targets that want them (or nowhere, without any).
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    targets: Vec<WebhookTarget>,
    /// The analyzer's URL as people reach it, for links (`--public-url`).
    public_url: Option<String>,
    http: reqwest::Client,
}

impl Notifier {
    pub fn new(targets: Vec<WebhookTarget>) -> Notifier {
        Notifier { targets, public_url: None, http: reqwest::Client::new() }
    }

    /// Links in notifications point below `url` (e.g. `https://canary.example.com`).
    pub fn with_public_url(mut self, url: Option<String>) -> Notifier {
        self.public_url = url.map(|u| u.trim_end_matches('/').to_string());
        self
    }

    /// The dashboard page of `deployment`, when the public URL is known.
    pub fn dashboard_url(&self, deployment: &str) -> Option<String> {
        self.public_url.as_ref().map(|base| format!("{base}/rollouts/{deployment}"))
    }

    pub fn targets(&self) -> &[WebhookTarget] {
        &self.targets
    }

    /// The notifier of a rollout: its policy's webhook, else `default`'s targets (`--webhook`).
    /// A policy URL known only redacted (recovered from the audit log without a
    /// state file that holds it) cannot be posted to: `default` takes over, and a log line says so.
    pub fn for_policy(policy: &RolloutPolicy, default: &Notifier) -> Notifier {
        match policy.notify.as_ref() {
            Some(notify) if notify.webhook_url.secret().is_some() => Notifier {
                targets: vec![WebhookTarget {
                    format: notify.format,
                    events: notify.events.clone(),
                    url: notify.webhook_url.clone(),
                }],
                ..default.clone()
            },
            Some(notify) => {
                let shown: Vec<String> = default.targets.iter().map(ToString::to_string).collect();
                tracing::warn!(
                    deployment = %policy.deployment, policy_webhook = %notify.webhook_url,
                    default_webhooks = %if shown.is_empty() { "(none)".to_string() } else { shown.join(" ") },
                    "the policy's webhook URL is not known (redacted in the audit log); status updates go to --webhook"
                );
                default.clone()
            }
            None => default.clone(),
        }
    }

    /// Sends in the background to every target that wants `update.event`; returns at once.
    pub fn send(&self, mut update: StatusUpdate) {
        if update.dashboard_url.is_none() {
            update.dashboard_url = self.dashboard_url(&update.deployment);
        }
        for target in self.targets.iter().filter(|target| target.events.contains(update.event)) {
            let body = update.body(target.format);
            let delivery =
                Delivery { url: target.url.clone(), deployment: update.deployment.clone(), event: update.event };
            tokio::spawn(deliver(self.http.clone(), delivery, body, FIRST_RETRY_DELAY));
        }
    }
}

/// What one post is for, to log it.
struct Delivery {
    url: crate::policy::WebhookUrl,
    deployment: String,
    event: NotifyEvent,
}

/// Posts one body, again after a failure that may pass, and logs the outcome, the URL redacted.
async fn deliver(http: reqwest::Client, delivery: Delivery, body: Value, first_delay: Duration) {
    let Delivery { url, deployment, event } = delivery;
    let Some(secret) = url.secret() else { return };
    let mut delay = first_delay;
    for attempt in 1..=DELIVERY_ATTEMPTS {
        let result = http.post(secret).timeout(WEBHOOK_TIMEOUT).json(&body).send().await;
        let error = match result.and_then(reqwest::Response::error_for_status) {
            Ok(_) => {
                tracing::debug!(%deployment, event = event.name(), url = %url, "status update sent");
                return;
            }
            // reqwest's Display ends in "for url (<the whole URL>)": drop it, `url` is the redacted form.
            Err(e) => e.without_url(),
        };
        let may_pass = error.status().is_none_or(crate::cli::worth_asking_again);
        if !may_pass || attempt == DELIVERY_ATTEMPTS {
            tracing::warn!(%deployment, event = event.name(), url = %url, attempts = attempt, error = %error,
                "status update not delivered");
            return;
        }
        tracing::debug!(%deployment, url = %url, attempt, error = %error, "status update failed; trying again");
        tokio::time::sleep(delay).await;
        delay = delay.saturating_mul(2);
    }
}

#[cfg(test)]
pub(crate) mod tests;
