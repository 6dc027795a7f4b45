//! The rollout config the analyzer serves and the filter polls, and the rule for
//! accepting an answer: it must parse, belong to this deployment, carry a share
//! of at most 10 000 basis points and not be older than what the filter has.

use crate::cohort::Share;
use serde::{Deserialize, Serialize};

/// The polled document. Unknown fields are ignored on purpose: a newer analyzer
/// may add fields, and old filters must keep working during its rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutConfig {
    pub deployment: String,
    /// Only grows; every change of share gets a new generation.
    pub generation: u64,
    /// Canary share in basis points, 0..=10 000.
    pub share_bp: u32,
    pub state: RolloutPhase,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutPhase {
    Pending,
    Progressing,
    Paused,
    Promoted,
    RolledBack,
}

impl RolloutConfig {
    pub fn share(&self) -> Share {
        // Validated on parse; a share that somehow exceeds the range routes nobody.
        Share::from_basis_points(self.share_bp).unwrap_or(Share::ZERO)
    }
}

/// Why an answer from the analyzer was not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    #[error("analyzer answered HTTP {0}, expected 200")]
    Status(String),
    #[error("analyzer answer is not a rollout config: {0}")]
    Malformed(String),
    #[error("analyzer answer is for deployment {got:?}, expected {expected:?}")]
    WrongDeployment { got: String, expected: String },
    #[error("analyzer answer has share_bp = {0}, expected 0 to 10000")]
    ShareOutOfRange(u32),
}

/// Parses and checks one answer body for `deployment`.
pub fn parse_answer(body: &[u8], deployment: &str) -> Result<RolloutConfig, AnswerError> {
    let config: RolloutConfig =
        serde_json::from_slice(body).map_err(|e| AnswerError::Malformed(crate::config::one_line(&e.to_string())))?;
    if config.deployment != deployment {
        return Err(AnswerError::WrongDeployment { got: config.deployment, expected: deployment.to_string() });
    }
    check_share(&config)?;
    Ok(config)
}

/// The share check every served config passes: at most 10 000 basis points.
pub fn check_share(config: &RolloutConfig) -> Result<(), AnswerError> {
    match Share::from_basis_points(config.share_bp) {
        Some(_) => Ok(()),
        None => Err(AnswerError::ShareOutOfRange(config.share_bp)),
    }
}

/// What accepting an answer did, relative to the config in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Merge {
    /// A newer generation: publish it.
    Applied,
    /// The same generation and content: only the freshness is renewed.
    Refreshed,
    /// An older generation, or the same generation with other content: ignored.
    Ignored { have: u64, got: u64 },
}

/// The acceptance rule: newer generations win, equal ones only renew freshness.
pub fn merge(current: Option<&RolloutConfig>, answer: &RolloutConfig) -> Merge {
    match current {
        None => Merge::Applied,
        Some(have) if answer.generation > have.generation => Merge::Applied,
        Some(have) if answer == have => Merge::Refreshed,
        Some(have) => Merge::Ignored { have: have.generation, got: answer.generation },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(generation: u64, share_bp: u32) -> RolloutConfig {
        RolloutConfig { deployment: "checkout".into(), generation, share_bp, state: RolloutPhase::Progressing }
    }

    #[test]
    fn answers_are_parsed_and_checked() {
        let ok = br#"{"deployment":"checkout","generation":3,"share_bp":500,"state":"progressing","extra":1}"#;
        assert_eq!(parse_answer(ok, "checkout").unwrap(), config(3, 500));
        assert!(matches!(parse_answer(b"<html>", "checkout"), Err(AnswerError::Malformed(_))));
        assert!(matches!(parse_answer(br#"{"deployment":"checkout"}"#, "checkout"), Err(AnswerError::Malformed(_))));
        let negative = br#"{"deployment":"checkout","generation":-1,"share_bp":5,"state":"paused"}"#;
        assert!(matches!(parse_answer(negative, "checkout"), Err(AnswerError::Malformed(_))));
        let other = br#"{"deployment":"search","generation":1,"share_bp":5,"state":"paused"}"#;
        assert!(matches!(parse_answer(other, "checkout"), Err(AnswerError::WrongDeployment { .. })));
        let big = br#"{"deployment":"checkout","generation":1,"share_bp":10001,"state":"paused"}"#;
        assert_eq!(parse_answer(big, "checkout"), Err(AnswerError::ShareOutOfRange(10_001)));
        let state = br#"{"deployment":"checkout","generation":1,"share_bp":1,"state":"exploded"}"#;
        assert!(matches!(parse_answer(state, "checkout"), Err(AnswerError::Malformed(_))));
    }

    /// Found by `out_of_range_fields_are_refused_by_name` (tests/parser_properties): serde
    /// quotes an unknown variant raw, so a `state` holding a line break split the filter's log line.
    #[test]
    fn regression_a_state_with_a_line_break_is_refused_on_one_line() {
        let body = br#"{"deployment":"checkout","generation":1,"share_bp":1,"state":"paused\nforged log line"}"#;
        let error = parse_answer(body, "checkout").unwrap_err();
        assert!(matches!(error, AnswerError::Malformed(_)), "{error:?}");
        assert!(!error.to_string().chars().any(char::is_control), "{error}");
        assert!(error.to_string().contains(r"paused\nforged"), "{error}");
    }

    #[test]
    fn generations_only_move_forward() {
        assert_eq!(merge(None, &config(1, 100)), Merge::Applied);
        assert_eq!(merge(Some(&config(1, 100)), &config(2, 500)), Merge::Applied);
        assert_eq!(merge(Some(&config(2, 500)), &config(2, 500)), Merge::Refreshed);
        assert_eq!(merge(Some(&config(2, 500)), &config(1, 100)), Merge::Ignored { have: 2, got: 1 });
        assert_eq!(merge(Some(&config(2, 500)), &config(2, 900)), Merge::Ignored { have: 2, got: 2 });
    }
}
