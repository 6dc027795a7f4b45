//! The rollout answer (`rollout::parse_answer`): the body of the analyzer's HTTP answer to a poll.

use crate::support::{self, bounded, is_one_line, text};
use canary_core::rollout::{AnswerError, RolloutConfig, RolloutPhase, parse_answer};
use proptest::prelude::*;
use serde_json::{Value, json};

const DEPLOYMENT: &str = "checkout";

fn phase() -> impl Strategy<Value = RolloutPhase> {
    prop::sample::select(vec![
        RolloutPhase::Pending,
        RolloutPhase::Progressing,
        RolloutPhase::Paused,
        RolloutPhase::Promoted,
        RolloutPhase::RolledBack,
    ])
}

fn answer() -> impl Strategy<Value = RolloutConfig> {
    (any::<u64>(), 0u32..=10_000, phase()).prop_map(|(generation, share_bp, state)| RolloutConfig {
        deployment: DEPLOYMENT.to_string(),
        generation,
        share_bp,
        state,
    })
}

/// A field value of any JSON shape, for fields a newer analyzer might add.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_filter("JSON numbers are finite", |f| f.is_finite()).prop_map(Value::from),
        text().prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn parse(body: &[u8]) -> Result<RolloutConfig, AnswerError> {
    bounded("parse_answer", || parse_answer(body, DEPLOYMENT))
}

proptest! {
    #![proptest_config(support::config(support::CASES))]

    /// What the analyzer serves is accepted as is, with or without fields this filter does not know.
    #[test]
    fn served_answers_round_trip_and_unknown_fields_are_ignored(
        answer in answer(),
        extra in prop::collection::btree_map("x_[a-z_]{1,8}", any_json(), 0..3),
    ) {
        let mut document = serde_json::to_value(&answer).unwrap();
        if let Value::Object(object) = &mut document {
            object.extend(extra);
        }
        prop_assert_eq!(parse(&serde_json::to_vec(&document).unwrap()), Ok(answer));
    }

    /// Each field out of its range gives its own error, on one line.
    #[test]
    fn out_of_range_fields_are_refused_by_name(
        deployment in prop_oneof![Just(DEPLOYMENT.to_string()), text()],
        generation in prop_oneof![any::<u64>().prop_map(Value::from), Just(json!(-1)), Just(json!(1.5)), Just(json!("1"))],
        share_bp in prop_oneof![any::<u32>().prop_map(Value::from), Just(json!(-5)), Just(json!(1e10))],
        state in prop_oneof![Just(json!("paused")), text().prop_map(Value::from), Just(json!(3))],
    ) {
        let body = json!({ "deployment": deployment, "generation": generation, "share_bp": share_bp, "state": state });
        match parse(&serde_json::to_vec(&body).unwrap()) {
            Ok(config) => {
                prop_assert_eq!(config.deployment.as_str(), DEPLOYMENT);
                prop_assert!(config.share_bp <= 10_000);
            }
            Err(error) => {
                let line = error.to_string();
                prop_assert!(is_one_line(&line), "error is not one line: {line:?}");
                match error {
                    AnswerError::WrongDeployment { got, .. } => prop_assert_eq!(got, deployment),
                    AnswerError::ShareOutOfRange(bp) => prop_assert!(bp > 10_000),
                    AnswerError::Malformed(detail) => prop_assert!(
                        ["generation", "share_bp", "state", "variant", "line"].iter().any(|w| detail.contains(w)),
                        "names neither the field nor the place: {detail}"
                    ),
                    AnswerError::Status(_) => prop_assert!(false, "a body parse never yields a status error"),
                }
            }
        }
    }

    #[test]
    fn mutated_answers_never_panic(answer in answer(), edits in support::edits(6)) {
        let mutated = support::mutate(serde_json::to_vec(&answer).unwrap(), &edits);
        match parse(&mutated) {
            Ok(config) => prop_assert!(config.share_bp <= 10_000 && config.deployment == DEPLOYMENT),
            Err(error) => prop_assert!(is_one_line(&error.to_string()), "{error}"),
        }
    }

    #[test]
    fn arbitrary_bodies_never_panic(body in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Err(error) = parse(&body) {
            prop_assert!(is_one_line(&error.to_string()), "{error}");
        }
    }
}

/// An analyzer (or whatever answers in its place) sending a huge or deeply nested body:
/// no stack overflow (a trap on wasm32, whose stack is 1 MiB) and bounded time.
#[test]
fn huge_and_deeply_nested_answers_are_read_in_bounded_time() {
    let nested = format!(
        r#"{{"deployment":"checkout","generation":1,"share_bp":1,"state":"paused","x":{}{}}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    // serde_json skips unknown fields without recursing: accepted, no stack used per level.
    assert_eq!(parse(nested.as_bytes()).map(|c| c.share_bp), Ok(1));
    let long = format!(r#"{{"deployment":"{}","generation":1,"share_bp":1,"state":"paused"}}"#, "c".repeat(1 << 20));
    assert!(matches!(parse(long.as_bytes()), Err(AnswerError::WrongDeployment { .. })));
}
