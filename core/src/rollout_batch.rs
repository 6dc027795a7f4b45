//! The batch rollout config: one conditional poll answers every deployment a proxy
//! serves. The analyzer serves [`BatchAnswer`] at `GET /v1/config?deployments=a,b`
//! with the revision as a strong `ETag` (and `304` to a matching `If-None-Match`);
//! the filter reads it with [`parse_batch_answer`].
//!
//! Each entry of `rollouts` is exactly what `GET /v1/rollouts/{deployment}/config`
//! serves for that deployment, and is checked the same way ([`crate::rollout`]). The
//! entries are independent: one that fails its checks, or names a deployment that was
//! not asked for, is reported and skipped while the others apply. A deployment the
//! analyzer does not know is listed under `unknown`; the filter keeps its initial
//! share for it.

use crate::rollout::{AnswerError, RolloutConfig, check_share};
use serde::{Deserialize, Serialize};

/// The query parameter that lists the deployments: ids separated by commas.
pub const DEPLOYMENTS_PARAMETER: &str = "deployments";

/// Most deployments one batch request may name. The longest list (500 ids of 63
/// characters and their commas, about 32 KiB) stays within Envoy's default 60 KiB
/// request-header limit, so a poll through an Envoy in front of the analyzer is not
/// refused; it is five times the 100 services of the largest gateway we size for.
pub const MAX_BATCH_DEPLOYMENTS: usize = 500;

/// Longest revision accepted from an analyzer: ours are 32 hex digits; the rest is
/// room for another implementation's tag without letting an answer grow a header.
pub const MAX_REVISION_LEN: usize = 128;

/// The batch answer as served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchAnswer {
    /// Changes whenever this answer would change; the `ETag` is this, quoted.
    pub revision: String,
    /// The known deployments' configs, in the order they were asked for.
    pub rollouts: Vec<RolloutConfig>,
    /// The deployments asked for that the analyzer has no rollout for, in order.
    pub unknown: Vec<String>,
}

/// The filter's view of a batch answer: what applies, and what was skipped and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedBatch {
    pub revision: String,
    /// Entries that passed every check, one per requested deployment at most.
    pub rollouts: Vec<RolloutConfig>,
    /// Requested deployments the analyzer does not know: they keep the initial share.
    pub unknown: Vec<String>,
    /// Entries skipped, and requested deployments the answer did not mention.
    pub problems: Vec<BatchEntryError>,
}

/// Why one part of a batch answer was skipped. The rest of the answer still applies.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchEntryError {
    #[error("batch answer `rollouts[{index}]`: {error}")]
    Invalid { index: usize, error: AnswerError },
    #[error("batch answer `{list}[{index}]` is for deployment {deployment:?}, which was not requested")]
    NotRequested { list: &'static str, index: usize, deployment: String },
    #[error("batch answer `{list}[{index}]` names deployment {deployment:?} again; the first mention stands")]
    Duplicate { list: &'static str, index: usize, deployment: String },
    #[error("batch answer `unknown[{index}]` = {value}: expected a deployment id")]
    NotAnId { index: usize, value: String },
    #[error("batch answer does not mention requested deployment {deployment:?}: its config stays as it was")]
    Missing { deployment: String },
}

/// The part of the answer read before the entries, each of which is checked alone.
#[derive(Deserialize)]
struct RawBatch {
    revision: String,
    rollouts: Vec<serde_json::Value>,
    #[serde(default)]
    unknown: Vec<serde_json::Value>,
}

/// Parses a batch answer for the deployments in `requested`. The answer as a whole
/// fails only when it is not a batch answer (not JSON, no `revision` or `rollouts`, a
/// revision that cannot be sent back in `If-None-Match`); each entry is checked on
/// its own and, if it fails, reported in [`ParsedBatch::problems`] and skipped.
pub fn parse_batch_answer(body: &[u8], requested: &[&str]) -> Result<ParsedBatch, AnswerError> {
    let raw: RawBatch = serde_json::from_slice(body)
        .map_err(|e| AnswerError::Malformed(crate::config::one_line(&format!("batch answer: {e}"))))?;
    if !is_valid_revision(&raw.revision) {
        return Err(AnswerError::Malformed(format!(
            "batch answer `revision` = {:?}: expected 1 to {MAX_REVISION_LEN} visible ASCII characters other than '\"'",
            crate::config::one_line(&raw.revision)
        )));
    }
    let mut parsed =
        ParsedBatch { revision: raw.revision, rollouts: Vec::new(), unknown: Vec::new(), problems: Vec::new() };
    // Which requested deployment an earlier entry already answered.
    let mut answered = vec![false; requested.len()];
    for (index, value) in raw.rollouts.iter().enumerate() {
        let config = match RolloutConfig::deserialize(value) {
            Ok(config) => config,
            Err(e) => {
                let error = AnswerError::Malformed(crate::config::one_line(&e.to_string()));
                parsed.problems.push(BatchEntryError::Invalid { index, error });
                continue;
            }
        };
        if let Err(error) = check_share(&config) {
            parsed.problems.push(BatchEntryError::Invalid { index, error });
            continue;
        }
        match claim(&mut answered, requested, &config.deployment) {
            Claim::First => parsed.rollouts.push(config),
            Claim::Again => parsed.problems.push(BatchEntryError::Duplicate {
                list: "rollouts",
                index,
                deployment: config.deployment,
            }),
            Claim::NotRequested => parsed.problems.push(BatchEntryError::NotRequested {
                list: "rollouts",
                index,
                deployment: config.deployment,
            }),
        }
    }
    for (index, value) in raw.unknown.iter().enumerate() {
        let Some(deployment) = value.as_str() else {
            let value = crate::config::one_line(&value.to_string());
            parsed.problems.push(BatchEntryError::NotAnId { index, value });
            continue;
        };
        let deployment = deployment.to_string();
        match claim(&mut answered, requested, &deployment) {
            Claim::First => parsed.unknown.push(deployment),
            Claim::Again => {
                parsed.problems.push(BatchEntryError::Duplicate { list: "unknown", index, deployment });
            }
            Claim::NotRequested => {
                parsed.problems.push(BatchEntryError::NotRequested { list: "unknown", index, deployment });
            }
        }
    }
    for (deployment, answered) in requested.iter().zip(&answered) {
        if !answered {
            parsed.problems.push(BatchEntryError::Missing { deployment: (*deployment).to_string() });
        }
    }
    Ok(parsed)
}

enum Claim {
    First,
    Again,
    NotRequested,
}

/// Marks `deployment` answered; says whether it was requested and not answered before.
fn claim(answered: &mut [bool], requested: &[&str], deployment: &str) -> Claim {
    match requested.iter().zip(answered.iter_mut()).find(|(r, _)| **r == deployment) {
        Some((_, seen)) if *seen => Claim::Again,
        Some((_, seen)) => {
            *seen = true;
            Claim::First
        }
        None => Claim::NotRequested,
    }
}

/// A revision the filter can send back quoted in `If-None-Match`: an RFC 9110
/// `etagc` string (visible ASCII other than `"`), of bounded length.
pub fn is_valid_revision(revision: &str) -> bool {
    !revision.is_empty()
        && revision.len() <= MAX_REVISION_LEN
        && revision.bytes().all(|b| b.is_ascii_graphic() && b != b'"')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::RolloutPhase;

    fn config(deployment: &str, generation: u64, share_bp: u32) -> RolloutConfig {
        RolloutConfig { deployment: deployment.into(), generation, share_bp, state: RolloutPhase::Progressing }
    }

    const REQUESTED: [&str; 3] = ["checkout", "orders", "search"];

    #[test]
    fn a_served_answer_parses_back_to_what_was_served() {
        let answer = BatchAnswer {
            revision: "0123abcd".into(),
            rollouts: vec![config("checkout", 3, 500), config("search", 1, 100)],
            unknown: vec!["orders".into()],
        };
        let parsed = parse_batch_answer(&serde_json::to_vec(&answer).unwrap(), &REQUESTED).unwrap();
        assert_eq!(parsed.revision, "0123abcd");
        assert_eq!(parsed.rollouts, answer.rollouts);
        assert_eq!(parsed.unknown, ["orders"]);
        assert_eq!(parsed.problems, []);
    }

    #[test]
    fn a_bad_entry_is_reported_and_the_others_apply() {
        let body = br#"{"revision":"r1","extra":true,"rollouts":[
            {"deployment":"checkout","generation":3,"share_bp":10001,"state":"progressing"},
            {"deployment":"orders","generation":2,"share_bp":2500,"state":"paused","new_field":1},
            {"deployment":"search","generation":-1,"share_bp":5,"state":"paused"},
            {"deployment":"billing","generation":1,"share_bp":5,"state":"paused"},
            {"deployment":"orders","generation":9,"share_bp":0,"state":"rolled_back"},
            "not an object"
        ],"unknown":["search",7,"payments"]}"#;
        let parsed = parse_batch_answer(body, &REQUESTED).unwrap();
        let mut orders = config("orders", 2, 2500);
        orders.state = RolloutPhase::Paused;
        assert_eq!(parsed.rollouts, [orders]);
        assert_eq!(parsed.unknown, ["search"], "search's broken entry did not claim it");
        let problems: Vec<String> = parsed.problems.iter().map(ToString::to_string).collect();
        assert_eq!(problems.len(), 8, "{problems:#?}");
        assert_eq!(
            parsed.problems[0],
            BatchEntryError::Invalid { index: 0, error: AnswerError::ShareOutOfRange(10_001) }
        );
        assert!(matches!(parsed.problems[1], BatchEntryError::Invalid { index: 2, error: AnswerError::Malformed(_) }));
        assert!(problems[2].contains("`rollouts[3]`") && problems[2].contains("\"billing\", which was not requested"));
        assert!(problems[3].contains("`rollouts[4]` names deployment \"orders\" again"), "{}", problems[3]);
        assert!(problems[4].starts_with("batch answer `rollouts[5]`: analyzer answer is not a rollout config"));
        assert_eq!(problems[5], "batch answer `unknown[1]` = 7: expected a deployment id");
        assert!(problems[6].contains("`unknown[2]`") && problems[6].contains("\"payments\""), "{}", problems[6]);
        // checkout's only entry was refused: it is not answered, and keeps what it had.
        assert_eq!(parsed.problems[7], BatchEntryError::Missing { deployment: "checkout".into() });
    }

    #[test]
    fn a_requested_deployment_the_answer_leaves_out_is_reported_missing() {
        let body =
            br#"{"revision":"r","rollouts":[{"deployment":"orders","generation":1,"share_bp":5,"state":"paused"}]}"#;
        let parsed = parse_batch_answer(body, &REQUESTED).unwrap();
        assert_eq!(parsed.rollouts.len(), 1);
        assert_eq!(
            parsed.problems,
            [
                BatchEntryError::Missing { deployment: "checkout".into() },
                BatchEntryError::Missing { deployment: "search".into() }
            ]
        );
    }

    #[test]
    fn an_answer_that_is_not_a_batch_is_refused_whole() {
        for body in [
            &b"<html>"[..],
            br#"{"rollouts":[]}"#,
            br#"{"revision":"r"}"#,
            br#"{"revision":"r","rollouts":{}}"#,
            br#"{"deployment":"checkout","generation":1,"share_bp":1,"state":"paused"}"#,
        ] {
            let error = parse_batch_answer(body, &REQUESTED).unwrap_err();
            assert!(matches!(error, AnswerError::Malformed(_)), "{error:?}");
        }
        let long = format!(r#"{{"revision":"{}","rollouts":[]}}"#, "a".repeat(MAX_REVISION_LEN + 1));
        for body in [r#"{"revision":"","rollouts":[]}"#, r#"{"revision":"a\"b","rollouts":[]}"#, &long] {
            let error = parse_batch_answer(body.as_bytes(), &REQUESTED).unwrap_err().to_string();
            assert!(error.contains("`revision`") && error.contains("expected 1 to 128 visible ASCII"), "{error}");
        }
        let forged = br#"{"revision":"a\nforged","rollouts":[]}"#;
        let error = parse_batch_answer(forged, &REQUESTED).unwrap_err().to_string();
        assert!(!error.chars().any(char::is_control), "one log line: {error}");
    }

    #[test]
    fn revisions_are_what_if_none_match_can_carry() {
        assert!(is_valid_revision("0123456789abcdef0123456789abcdef"));
        assert!(is_valid_revision(&"x".repeat(MAX_REVISION_LEN)));
        for bad in ["", "a b", "a\"b", "é", "a\tb"] {
            assert!(!is_valid_revision(bad), "{bad:?}");
        }
    }
}
