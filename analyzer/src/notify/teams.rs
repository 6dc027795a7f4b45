//! The Microsoft Teams body: an Adaptive Card (schema 1.4) in the shape the Teams
//! Workflows webhook ("when a Teams webhook request is received") posts to a
//! channel: `{"type": "message", "attachments": [{"contentType":
//! "application/vnd.microsoft.card.adaptive", "content": <card>}]}`. Office 365
//! connectors' incoming webhooks take the same envelope.

use serde_json::{Value, json};

use super::{NotifyEvent, StatusUpdate};

/// Teams refuses messages above about 28 KB; kept under with room for the envelope.
pub const MAX_BODY_BYTES: usize = 27_000;
/// The attachment type Teams renders as an Adaptive Card.
pub const ADAPTIVE_CARD: &str = "application/vnd.microsoft.card.adaptive";
/// The card schema version: 1.4 is the newest every Teams client renders.
const CARD_VERSION: &str = "1.4";

/// The headline's colour: `attention` (red) for a rollback, `good` (green) for a
/// promotion, `warning` for what needs a person, `default` otherwise.
fn colour(event: NotifyEvent) -> &'static str {
    match event {
        NotifyEvent::Rollback => "attention",
        NotifyEvent::Promotion => "good",
        NotifyEvent::Approval | NotifyEvent::Stall | NotifyEvent::Hold => "warning",
        NotifyEvent::Step => "default",
    }
}

pub fn body(update: &StatusUpdate) -> Value {
    let mut facts = vec![
        json!({"title": "Share", "value": crate::present::percent(update.share_bp)}),
        json!({"title": "Step", "value": update.step_text()}),
        json!({"title": "Next", "value": update.next_text()}),
        json!({"title": "By", "value": update.actor}),
    ];
    if let Some(fleet) = &update.fleet {
        facts.push(json!({"title": "Fleet", "value": fleet}));
    }
    let mut card_body = vec![
        json!({"type": "TextBlock", "text": update.headline(), "weight": "Bolder", "size": "Medium",
               "color": colour(update.event), "wrap": true}),
        json!({"type": "TextBlock", "text": update.reason, "wrap": true}),
        json!({"type": "FactSet", "facts": facts}),
    ];
    if let Some(held) = update.held_text() {
        card_body.push(json!({"type": "TextBlock", "text": format!("Held:\n{held}"), "wrap": true}));
    }
    card_body.push(json!({"type": "TextBlock", "text": update.metrics_text(), "fontType": "Monospace",
                          "wrap": true, "isSubtle": true}));
    let mut card = json!({
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": CARD_VERSION,
        "body": card_body,
    });
    if let (Some(url), Some(card)) = (&update.dashboard_url, card.as_object_mut()) {
        card.insert("actions".into(), json!([{"type": "Action.OpenUrl", "title": "Open the dashboard", "url": url}]));
    }
    json!({
        "type": "message",
        "attachments": [{"contentType": ADAPTIVE_CARD, "contentUrl": null, "content": card}],
    })
}
