//! The generic JSON body, for receivers of one's own (an incident tool, a chat bot, a
//! pipeline): a documented, versioned schema, so that a receiver can rely on it. The
//! schema is named by `schema`; a field may be added within a version, never renamed,
//! removed or given another meaning. `docs/notifications.md` documents it (a test keeps the two equal).
//!
//! ```json
//! {"schema": "canary.wasm.dev/notification/v1", "event": "rollback",
//!  "deployment": "checkout", "decision": "rollback", "reason": "...", "actor": "analyzer",
//!  "phase": "rolled_back", "share_bp": 0, "share_percent": 0.0, "step": 2, "steps": 5,
//!  "next_step_in_s": null, "fleet": "3 of 3 proxies on generation 17",
//!  "holds": [{"kind": "requests_missing", "text": "...", ...}],
//!  "rows": [{"metric": "error_rate", "canary": "1.20 %", "control": "0.50 %",
//!            "verdict": "worse", "critical": true}],
//!  "links": {"dashboard": "https://canary.example.com/rollouts/checkout"},
//!  "at_ms": 1765000000000}
//! ```

use serde_json::{Value, json};

use super::StatusUpdate;

/// The schema's name and version.
pub const SCHEMA: &str = "canary.wasm.dev/notification/v1";
/// Bodies are kept under 256 KiB, what common HTTP receivers (API gateways, Lambda
/// function URLs) accept; rows are dropped first to stay under it.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

pub fn body(update: &StatusUpdate) -> Value {
    let holds: Vec<Value> = update
        .holds
        .iter()
        .map(|reason| {
            let mut hold = serde_json::to_value(reason).unwrap_or_else(|_| json!({}));
            if let Some(fields) = hold.as_object_mut() {
                fields.insert("text".into(), json!(crate::present::hold_text(reason)));
            }
            hold
        })
        .collect();
    let rows: Vec<Value> = update
        .rows
        .iter()
        .map(|row| {
            json!({"metric": row.metric, "canary": row.canary, "control": row.control,
                   "verdict": row.verdict, "critical": row.critical})
        })
        .collect();
    let mut links = serde_json::Map::new();
    if let Some(url) = &update.dashboard_url {
        links.insert("dashboard".into(), json!(url));
    }
    json!({
        "schema": SCHEMA,
        "event": update.event.name(),
        "deployment": update.deployment,
        "decision": update.decision,
        "reason": update.reason,
        "actor": update.actor,
        "phase": update.phase,
        "share_bp": update.share_bp,
        "share_percent": f64::from(update.share_bp) / 100.0,
        "step": update.step,
        "steps": update.steps,
        "next_step_in_s": update.next_step_in_s,
        "fleet": update.fleet,
        "holds": holds,
        "rows": rows,
        "links": links,
        "at_ms": update.at_ms,
    })
}
