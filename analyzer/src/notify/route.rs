//! Where a notification goes: a webhook target is a URL, the format its service reads
//! ([`WebhookFormat`]) and the events it wants ([`EventSet`]). Written on the command
//! line as `FORMAT:EVENTS:URL` (`teams:rollback,approval:https://…`), `FORMAT:URL`, or
//! a bare URL (Slack-compatible, the default events), and in a policy's `notify`.
//! Parsing only; the URL stays a secret ([`WebhookUrl`]) in every error.

use std::fmt;

use crate::policy::{WebhookUrl, WebhookUrlError};

/// The JSON a webhook's service reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WebhookFormat {
    /// Slack incoming webhooks (and Mattermost, Rocket.Chat): `text` plus `blocks`.
    Slack,
    /// Microsoft Teams Workflows ("post to a channel when a webhook request is received"): an Adaptive Card.
    Teams,
    /// Discord webhooks: `content` plus one embed.
    Discord,
    /// Google Chat incoming webhooks: `text` plus a `cardsV2` card.
    GoogleChat,
    /// This analyzer's own versioned schema ([`super::generic::SCHEMA`]), for any receiver.
    Json,
}

/// What happened, for routing: each target receives the kinds it lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NotifyEvent {
    /// The rollout was registered, moved a step, was paused, resumed, marked deployed or approved.
    Step,
    /// A reason of a new kind holds the rollout after its window passed (once per kind and step).
    Hold,
    /// A step went `stall_after_windows` windows without earning its promotion, or no
    /// proxy serves the deployment: the rollout cannot go on by itself.
    Stall,
    /// Rolled back: share 0.
    Rollback,
    /// Reached 100 %: the rollout is over.
    Promotion,
    /// A step with `approval: required` ran its window cleanly and waits for an operator.
    Approval,
}

impl NotifyEvent {
    pub const ALL: [NotifyEvent; 6] = [
        NotifyEvent::Step,
        NotifyEvent::Hold,
        NotifyEvent::Stall,
        NotifyEvent::Rollback,
        NotifyEvent::Promotion,
        NotifyEvent::Approval,
    ];

    /// The name in `--webhook`, a policy and the generic schema's `event`.
    pub fn name(self) -> &'static str {
        match self {
            NotifyEvent::Step => "step",
            NotifyEvent::Hold => "hold",
            NotifyEvent::Stall => "stall",
            NotifyEvent::Rollback => "rollback",
            NotifyEvent::Promotion => "promotion",
            NotifyEvent::Approval => "approval",
        }
    }

    fn parse(name: &str) -> Option<NotifyEvent> {
        NotifyEvent::ALL.into_iter().find(|event| event.name() == name)
    }
}

/// The events a target receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventSet(Vec<NotifyEvent>);

impl EventSet {
    /// Every event but `hold`: what a target that names no events receives, the
    /// posts a bare URL always got (steps, stalls, rollbacks, promotions) and approvals.
    pub fn default_events() -> EventSet {
        EventSet(NotifyEvent::ALL.into_iter().filter(|event| *event != NotifyEvent::Hold).collect())
    }

    pub fn contains(&self, event: NotifyEvent) -> bool {
        self.0.contains(&event)
    }

    pub fn is_default(&self) -> bool {
        *self == EventSet::default_events()
    }

    /// `step,rollback` or `all`; `field` names where it was written, for the error.
    pub fn parse(text: &str, field: &str) -> Result<EventSet, RouteError> {
        if text == ALL_EVENTS {
            return Ok(EventSet(NotifyEvent::ALL.to_vec()));
        }
        let mut events = Vec::new();
        for name in text.split(',').map(str::trim) {
            let event = NotifyEvent::parse(name).ok_or_else(|| RouteError {
                field: field.to_string(),
                value: name.to_string(),
                expected: format!("comma-separated events among {}, or {ALL_EVENTS}", event_names()),
            })?;
            if !events.contains(&event) {
                events.push(event);
            }
        }
        events.sort();
        Ok(EventSet(events))
    }
}

impl fmt::Display for EventSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.0.iter().map(|event| event.name()).collect();
        f.write_str(&names.join(","))
    }
}

/// The word for every event.
const ALL_EVENTS: &str = "all";

fn event_names() -> String {
    NotifyEvent::ALL.map(NotifyEvent::name).join(", ")
}

impl WebhookFormat {
    pub const ALL: [WebhookFormat; 5] = [
        WebhookFormat::Slack,
        WebhookFormat::Teams,
        WebhookFormat::Discord,
        WebhookFormat::GoogleChat,
        WebhookFormat::Json,
    ];

    pub fn name(self) -> &'static str {
        match self {
            WebhookFormat::Slack => "slack",
            WebhookFormat::Teams => "teams",
            WebhookFormat::Discord => "discord",
            WebhookFormat::GoogleChat => "google-chat",
            WebhookFormat::Json => "json",
        }
    }

    pub fn parse(name: &str, field: &str) -> Result<WebhookFormat, RouteError> {
        WebhookFormat::ALL.into_iter().find(|format| format.name() == name).ok_or_else(|| RouteError {
            field: field.to_string(),
            value: name.to_string(),
            expected: format!("one of {}", WebhookFormat::ALL.map(WebhookFormat::name).join(", ")),
        })
    }
}

/// A refused target; never carries the URL, only its redacted form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} = {value}: expected {expected}")]
pub struct RouteError {
    pub field: String,
    pub value: String,
    pub expected: String,
}

impl RouteError {
    fn url(field: &str, error: WebhookUrlError) -> RouteError {
        RouteError { field: field.to_string(), value: error.shown, expected: error.expected.to_string() }
    }
}

/// One webhook: where, in which format, for which events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookTarget {
    pub format: WebhookFormat,
    pub events: EventSet,
    pub url: WebhookUrl,
}

impl WebhookTarget {
    /// A Slack-compatible target for the default events.
    pub fn slack(url: WebhookUrl) -> WebhookTarget {
        WebhookTarget { format: WebhookFormat::Slack, events: EventSet::default_events(), url }
    }

    /// `FORMAT:EVENTS:URL`, `FORMAT:URL` or `URL`; `field` names the flag for errors.
    pub fn parse(text: &str, field: &str) -> Result<WebhookTarget, RouteError> {
        let text = text.trim();
        // `scheme://…` with no `FORMAT:` before it is meant as a bare URL (`ftp://…` is refused as a URL).
        let bare = text.split_once("://").is_some_and(|(scheme, _)| !scheme.contains(':'));
        if bare {
            return WebhookUrl::parse(text).map(WebhookTarget::slack).map_err(|e| RouteError::url(field, e));
        }
        let Some((format, rest)) = text.split_once(':') else {
            let shown = WebhookUrl::parse(text).map_or_else(|e| e.shown, |url| url.to_string());
            return Err(RouteError {
                field: field.to_string(),
                value: shown,
                expected: "FORMAT:EVENTS:URL, FORMAT:URL or an http(s) URL".to_string(),
            });
        };
        let format = WebhookFormat::parse(format, &format!("{field} format"))?;
        let (events, url) = if is_url(rest) {
            (EventSet::default_events(), rest)
        } else {
            let (events, url) = rest.split_once(':').unwrap_or((rest, ""));
            (EventSet::parse(events, &format!("{field} events"))?, url)
        };
        let url = WebhookUrl::parse(url).map_err(|e| RouteError::url(field, e))?;
        Ok(WebhookTarget { format, events, url })
    }
}

impl fmt::Display for WebhookTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.format.name(), self.events, self.url)
    }
}

fn is_url(text: &str) -> bool {
    text.starts_with("http://") || text.starts_with("https://")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_url_is_slack_for_the_default_events() {
        let target = WebhookTarget::parse("https://hooks.slack.com/services/T/B/SECRET", "--webhook").unwrap();
        assert_eq!(target.format, WebhookFormat::Slack);
        assert!(target.events.is_default() && !target.events.contains(NotifyEvent::Hold));
        assert!(target.events.contains(NotifyEvent::Approval) && target.events.contains(NotifyEvent::Rollback));
    }

    #[test]
    fn format_events_and_url_are_read_in_that_order() {
        let target = WebhookTarget::parse("teams:rollback,approval:https://x.example/hook?sig=SECRET", "--webhook");
        let target = target.unwrap();
        assert_eq!(target.format, WebhookFormat::Teams);
        assert_eq!(target.events.to_string(), "rollback,approval");
        assert_eq!(target.url.secret(), Some("https://x.example/hook?sig=SECRET"));
        assert!(!target.to_string().contains("SECRET"), "{target}");
        let all = WebhookTarget::parse("json:all:http://127.0.0.1:9/h", "--webhook").unwrap();
        assert!(NotifyEvent::ALL.iter().all(|event| all.events.contains(*event)));
        let no_events = WebhookTarget::parse("google-chat:https://chat.googleapis.com/v1/x", "--webhook").unwrap();
        assert_eq!((no_events.format, no_events.events.is_default()), (WebhookFormat::GoogleChat, true));
    }

    #[test]
    fn errors_name_the_part_and_never_the_url() {
        let format = WebhookTarget::parse("msteams:https://x.example/SECRET", "--webhook").unwrap_err();
        assert_eq!((format.field.as_str(), format.value.as_str()), ("--webhook format", "msteams"));
        assert!(format.expected.contains("teams, discord, google-chat, json"), "{format}");
        let event = WebhookTarget::parse("teams:rollbak:https://x.example/SECRET", "--webhook").unwrap_err();
        assert_eq!(event.value, "rollbak");
        assert!(event.expected.contains("rollback") && event.expected.contains("all"), "{event}");
        let scheme = WebhookTarget::parse("ftp://x.example/SECRET", "--webhook").unwrap_err();
        assert!(scheme.expected.contains("http:// or https://"), "refused as a URL: {scheme}");
        for bad in ["teams:step:ftp://x.example/SECRET", "x.example/SECRET", "teams:step:"] {
            let error = WebhookTarget::parse(bad, "--webhook").unwrap_err().to_string();
            assert!(!error.contains("SECRET"), "{error}");
        }
    }
}
