//! The Google Chat body: a plain `text` (what notifications and older clients show)
//! and one `cardsV2` card with the figures, as Google Chat's incoming webhooks take it.

use serde_json::{Value, json};

use super::StatusUpdate;

/// Google Chat refuses a message above 32 000 bytes; kept under with room to spare.
pub const MAX_BODY_BYTES: usize = 30_000;

pub fn body(update: &StatusUpdate) -> Value {
    let labelled =
        |label: &str, text: &str| json!({"decoratedText": {"topLabel": label, "text": text, "wrapText": true}});
    let mut widgets = vec![
        labelled("Share", &crate::present::percent(update.share_bp)),
        labelled("Step", &update.step_text()),
        labelled("Next", &update.next_text()),
        labelled("By", &update.actor),
        labelled("Reason", &update.reason),
    ];
    if let Some(fleet) = &update.fleet {
        widgets.push(labelled("Fleet", fleet));
    }
    if let Some(held) = update.held_text() {
        widgets.push(labelled("Held", &held));
    }
    // textParagraph reads a small HTML subset: the metrics are escaped and kept monospace.
    let metrics = crate::dashboard::escape(&update.metrics_text()).replace('\n', "<br>");
    widgets.push(json!({"textParagraph": {"text": format!("<font face=\"monospace\">{metrics}</font>")}}));
    if let Some(url) = &update.dashboard_url {
        widgets.push(
            json!({"buttonList": {"buttons": [{"text": "Open the dashboard", "onClick": {"openLink": {"url": url}}}]}}),
        );
    }
    json!({
        "text": format!("{}. {}. {}.", update.headline(), update.reason, update.next_text()),
        "cardsV2": [{
            "cardId": format!("canary-{}", update.deployment),
            "card": {
                "header": {"title": update.headline(), "subtitle": update.next_text()},
                "sections": [{"widgets": widgets}],
            },
        }],
    })
}
