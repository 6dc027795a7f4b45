//! The Discord body: `content` (what a notification shows) and one embed with the
//! figures. Discord's limits, kept here by cutting rather than by refusal: `content`
//! 2 000 characters; an embed's title 256, description 4 096, at most 25 fields of
//! name 256 and value 1 024, and 6 000 characters over the whole embed.
//! `allowed_mentions` is empty: a reason that quotes `@everyone` pings nobody.

use serde_json::{Value, json};

use super::{NotifyEvent, StatusUpdate, truncate_chars};

/// Longest `content`.
const CONTENT_CHARS: usize = 2_000;
/// Longest embed title.
const TITLE_CHARS: usize = 256;
/// Longest embed description.
const DESCRIPTION_CHARS: usize = 4_096;
/// Longest field value.
const FIELD_VALUE_CHARS: usize = 1_024;
/// Most characters over an embed's title, description and fields together.
pub const EMBED_TOTAL_CHARS: usize = 6_000;
/// The code fence around the metrics field.
const FENCE_CHARS: usize = 6;

/// The embed's side colour, as Discord's integer RGB.
fn colour(event: NotifyEvent) -> u32 {
    match event {
        NotifyEvent::Rollback => 0xd32f2f,
        NotifyEvent::Promotion => 0x2e7d32,
        NotifyEvent::Approval | NotifyEvent::Stall | NotifyEvent::Hold => 0xf9a825,
        NotifyEvent::Step => 0x1976d2,
    }
}

pub fn body(update: &StatusUpdate) -> Value {
    let title = truncate_chars(&update.headline(), TITLE_CHARS);
    let mut fields: Vec<(String, String, bool)> = vec![
        ("Share".into(), crate::present::percent(update.share_bp), true),
        ("Step".into(), update.step_text(), true),
        ("Next".into(), update.next_text(), true),
        ("By".into(), update.actor.clone(), true),
    ];
    if let Some(fleet) = &update.fleet {
        fields.push(("Fleet".into(), fleet.clone(), false));
    }
    if let Some(held) = update.held_text() {
        fields.push(("Held".into(), held, false));
    }
    let metrics = truncate_chars(&update.metrics_text(), FIELD_VALUE_CHARS - FENCE_CHARS);
    fields.push(("Metrics".into(), format!("```{metrics}```"), false));
    let fields: Vec<(String, String, bool)> = fields
        .into_iter()
        .map(|(name, value, inline)| (name, truncate_chars(&value, FIELD_VALUE_CHARS), inline))
        .collect();
    let fixed: usize =
        title.chars().count() + fields.iter().map(|(n, v, _)| n.chars().count() + v.chars().count()).sum::<usize>();
    // The description takes what the embed's total leaves, and is the one cut further.
    let description_room = EMBED_TOTAL_CHARS.saturating_sub(fixed).min(DESCRIPTION_CHARS);
    let description = truncate_chars(&update.reason, description_room);
    let mut embed = json!({
        "title": title,
        "description": description,
        "color": colour(update.event),
        "fields": fields.iter().map(|(name, value, inline)| json!({"name": name, "value": value, "inline": inline}))
            .collect::<Vec<_>>(),
    });
    if let (Some(url), Some(embed)) = (&update.dashboard_url, embed.as_object_mut()) {
        embed.insert("url".into(), json!(url));
    }
    json!({
        "content": truncate_chars(&format!("{}: {}", update.headline(), update.reason), CONTENT_CHARS),
        "embeds": [embed],
        "allowed_mentions": {"parse": []},
    })
}

/// Characters Discord counts against [`EMBED_TOTAL_CHARS`] in `embed`.
pub fn embed_chars(embed: &Value) -> usize {
    let chars = |v: &Value| v.as_str().map_or(0, |s| s.chars().count());
    let fields = embed["fields"]
        .as_array()
        .map_or(0, |fields| fields.iter().map(|field| chars(&field["name"]) + chars(&field["value"])).sum());
    chars(&embed["title"]) + chars(&embed["description"]) + fields
}
