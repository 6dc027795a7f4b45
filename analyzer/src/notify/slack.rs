//! The Slack-compatible body (`text` plus Block Kit `blocks`), which Mattermost and
//! Rocket.Chat read too. Slack's limits: a header 150 characters, a section's text
//! 3 000, a field 2 000, at most 10 fields per section.

use serde_json::{Value, json};

use super::{StatusUpdate, truncate_chars};

/// Slack truncates a message's `text` beyond 40 000 characters; the blocks stay far below.
pub const MAX_BODY_BYTES: usize = 40_000;
/// Longest `plain_text` of a header block.
const HEADER_CHARS: usize = 150;
/// Longest text of a section.
const SECTION_CHARS: usize = 3_000;
/// Longest text of one section field.
const FIELD_CHARS: usize = 2_000;
/// Most fields one section may have.
const MAX_FIELDS: usize = 10;
/// The code fence around the metrics, which counts towards the section's text.
const FENCE_CHARS: usize = 6;

pub fn body(update: &StatusUpdate) -> Value {
    let share = crate::present::percent(update.share_bp);
    let headline = update.headline();
    let next = update.next_text();
    let field = |title: &str, text: &str| json!({"type": "mrkdwn", "text": truncate_chars(&format!("*{title}*\n{text}"), FIELD_CHARS)});
    let mut fields = vec![
        field("Share", &share),
        field("Next", &next),
        field("By", &update.actor),
        field("Reason", &update.reason),
        field("Step", &update.step_text()),
    ];
    if let Some(fleet) = &update.fleet {
        fields.push(field("Fleet", fleet));
    }
    if let Some(held) = update.held_text() {
        fields.push(field("Held", &held));
    }
    fields.truncate(MAX_FIELDS);
    let metrics = truncate_chars(&update.metrics_text(), SECTION_CHARS - FENCE_CHARS);
    let mut blocks = vec![
        json!({"type": "header", "text": {"type": "plain_text", "text": truncate_chars(&headline, HEADER_CHARS)}}),
        json!({"type": "section", "fields": fields}),
        json!({"type": "section", "text": {"type": "mrkdwn", "text": format!("```{metrics}```")}}),
    ];
    if let Some(url) = &update.dashboard_url {
        blocks.push(
            json!({"type": "section", "text": {"type": "mrkdwn", "text": format!("<{url}|Open the dashboard>")}}),
        );
    }
    json!({
        "text": format!("{headline}. {}. {next}.", update.reason),
        "blocks": blocks,
    })
}
