//! The rollout policy (`RolloutPolicy::from_yaml`, and serde for the JSON the audit log
//! and state files keep): YAML or JSON that an operator or a pipeline writes.

use crate::support::{self, bounded, is_one_line, text};
use canary_analyzer::policy::{PolicyError, RolloutPolicy, format_duration, parse_duration};
use proptest::prelude::*;
use serde_json::{Map, Value, json};
use std::time::Duration;

/// Field paths a policy error may name.
const KNOWN_FIELDS: [&str; 5] = ["(document)", "apiVersion", "kind", "metadata", "spec"];

/// The secret part of every generated webhook URL: it must never appear in an error,
/// a `Debug` or a redacted policy.
const SECRET: &str = "S3CR3T-T0K3N";

/// A duration as written in a policy: mostly valid, sometimes zero, huge or garbage.
fn duration() -> BoxedStrategy<Value> {
    prop_oneof![
        6 => (1u64..100_000, prop::sample::select(vec!["ms", "s", "m", "h"]))
            .prop_map(|(n, unit)| Value::from(format!("{n}{unit}"))),
        2 => (1u64..48, 1u64..60).prop_map(|(h, m)| Value::from(format!("{h}h{m}m"))),
        1 => prop::sample::select(vec![
            "0s", "", "5", "5x", "1.5s", "-5s", " 5m ", "1h1h", "18446744073709551615s", "18446744073709551615ms",
            "5124095576030431h", "99999999999999999999h", "1s1", "m5",
        ])
        .prop_map(Value::from),
        1 => text().prop_map(Value::from),
        1 => Just(json!(30)),
    ]
    .boxed()
}

/// A share in percent: basis-point multiples mostly, sometimes out of range or too fine.
fn percent() -> BoxedStrategy<Value> {
    prop_oneof![
        6 => (1u32..=10_000).prop_map(|bp| Value::from(f64::from(bp) / 100.0)),
        1 => prop::sample::select(vec![0.0, -1.0, 100.5, 0.001, 1e308, 12.345]).prop_map(Value::from),
        1 => Just(json!("5")),
    ]
    .boxed()
}

fn step(share: Value) -> BoxedStrategy<Value> {
    proptest::option::weighted(0.4, duration())
        .prop_map(move |window| {
            let mut step = Map::new();
            step.insert("share".into(), share.clone());
            if let Some(window) = window {
                step.insert("window".into(), window);
            }
            Value::Object(step)
        })
        .boxed()
}

/// A ladder: increasing shares ending at 100 % (valid), or arbitrary steps.
fn ladder() -> BoxedStrategy<Value> {
    let increasing = prop::collection::btree_set(1u32..10_000, 0..5).prop_flat_map(|shares| {
        let steps: Vec<BoxedStrategy<Value>> =
            shares.into_iter().chain([10_000]).map(|bp| step(Value::from(f64::from(bp) / 100.0))).collect();
        steps.prop_map(Value::from)
    });
    let arbitrary = prop::collection::vec(percent().prop_flat_map(step), 0..5).prop_map(Value::from);
    prop_oneof![3 => increasing, 1 => arbitrary].boxed()
}

/// A tolerance: finite and non-negative mostly.
fn tolerance() -> BoxedStrategy<Value> {
    prop_oneof![
        6 => (0.0f64..10.0).prop_map(Value::from),
        1 => prop::sample::select(vec![0.0, -0.5, 1e308, 5e-324]).prop_map(Value::from),
        1 => Just(json!("x")),
    ]
    .boxed()
}

/// A custom metric's PromQL template, valid or not.
fn query() -> BoxedStrategy<Value> {
    prop_oneof![
        4 => Just(json!(r#"sum(rate(app_errors{deployment="{{deployment}}",cohort="{{cohort}}"}[{{window}}]))"#)),
        1 => Just(json!("sum(rate(app_errors[5m]))")),
        1 => Just(json!("x{cohort=\"{{ cohort }}\"} {{pod}}")),
        1 => Just(json!("{{cohort")),
        1 => Just(json!("")),
        1 => text().prop_map(Value::from),
    ]
    .boxed()
}

fn metric() -> BoxedStrategy<Value> {
    let name = prop_oneof![
        4 => prop::sample::select(vec![
            "error_rate", "latency_p50", "latency_p90", "latency_p99", "latency_p99_9", "sample_ratio",
        ])
        .prop_map(str::to_string),
        2 => "[a-z_][a-z0-9_]{0,12}",
        1 => text(),
    ];
    (
        proptest::option::weighted(0.95, name),
        proptest::option::of(any::<bool>()),
        proptest::option::of(tolerance()),
        proptest::option::of(tolerance()),
        proptest::option::weighted(0.2, tolerance()),
        proptest::option::weighted(0.2, tolerance()),
        proptest::option::of(query()),
    )
        .prop_map(|(name, critical, relative, increase_ms, absolute, deviation, query)| {
            let mut metric = Map::new();
            let mut put = |key: &str, value: Option<Value>| {
                if let Some(value) = value {
                    metric.insert(key.to_string(), value);
                }
            };
            let builtin = name.as_deref().is_some_and(|n| n.starts_with("latency_p") || n == "error_rate");
            put("name", name.map(Value::from));
            put("critical", critical.map(Value::from));
            put("max_relative_increase", relative);
            put("max_increase_ms", increase_ms);
            put("max_absolute_increase", absolute);
            put("max_relative_deviation", deviation);
            // Built-ins refuse a query; custom metrics need one: mostly give each what it needs.
            put("query", if builtin { None } else { query });
            Value::Object(metric)
        })
        .boxed()
}

/// A webhook URL on loopback (nothing is posted by parsing, but no generated URL names a real host).
fn webhook_url() -> BoxedStrategy<Value> {
    prop_oneof![
        4 => Just(Value::from(format!("https://127.0.0.1:9/services/T0/B0/{SECRET}"))),
        1 => Just(Value::from(format!("http://user:{SECRET}@127.0.0.1/hook"))),
        1 => Just(Value::from(format!("ftp://127.0.0.1/{SECRET}"))),
        1 => Just(Value::from(format!("https:///{SECRET}"))),
        1 => Just(Value::from(format!("https://127.0.0.1/{SECRET} x"))),
        1 => Just(json!("https://127.0.0.1/…#xxh3:0123456789abcdef")),
    ]
    .boxed()
}

fn labels() -> BoxedStrategy<Value> {
    prop::collection::btree_map(text(), prop_oneof![4 => text().prop_map(Value::from), 1 => Just(json!(1))], 0..3)
        .prop_map(|m| Value::Object(m.into_iter().collect()))
        .boxed()
}

fn spec() -> BoxedStrategy<Value> {
    (
        proptest::option::weighted(
            0.95,
            prop_oneof![6 => "[A-Za-z0-9_-]{1,20}".prop_map(Value::from), 1 => text().prop_map(Value::from)],
        ),
        proptest::option::of(ladder()),
        proptest::option::weighted(0.3, duration()),
        proptest::option::weighted(0.5, duration()),
        proptest::option::weighted(
            0.3,
            prop_oneof![(0.001f64..0.5).prop_map(Value::from), Just(json!(0.0)), Just(json!(0.75)), Just(json!(-1))],
        ),
        proptest::option::weighted(
            0.3,
            prop_oneof![any::<u64>().prop_map(Value::from), Just(json!(0)), Just(json!(-3))],
        ),
        proptest::option::weighted(0.6, prop::collection::vec(metric(), 0..4)),
        proptest::option::weighted(0.3, webhook_url()),
    )
        .prop_map(|(deployment, ladder, default_window, check_interval, alpha, min_requests, metrics, webhook)| {
            let mut spec = Map::new();
            let mut put = |key: &str, value: Option<Value>| {
                if let Some(value) = value {
                    spec.insert(key.to_string(), value);
                }
            };
            put("deployment", deployment);
            put("ladder", ladder);
            put("default_window", default_window);
            put("check_interval", check_interval);
            put("alpha", alpha);
            put("min_requests_per_cohort", min_requests);
            put("metrics", metrics.map(Value::from));
            put("notify", webhook.map(|url| json!({ "webhook_url": url })));
            Value::Object(spec)
        })
        .boxed()
}

/// A near-valid policy document and, sometimes, a key the schema does not have.
pub fn document() -> BoxedStrategy<Value> {
    (
        proptest::option::weighted(
            0.97,
            prop_oneof![8 => Just(json!("canary.wasm.dev/v1alpha1")), 1 => text().prop_map(Value::from)],
        ),
        proptest::option::weighted(0.97, prop_oneof![8 => Just(json!("RolloutPolicy")), 1 => Just(json!("Rollout"))]),
        proptest::option::weighted(
            0.97,
            prop_oneof![
                6 => "[a-z0-9]([a-z0-9.-]{0,20}[a-z0-9])?".prop_map(Value::from),
                1 => text().prop_map(Value::from),
            ],
        ),
        proptest::option::weighted(0.2, labels()),
        proptest::option::weighted(0.97, spec()),
        proptest::option::weighted(0.05, text()),
    )
        .prop_map(|(api_version, kind, name, labels, spec, unknown)| {
            let mut metadata = Map::new();
            if let Some(name) = name {
                metadata.insert("name".into(), name);
            }
            if let Some(labels) = labels {
                metadata.insert("labels".into(), labels);
            }
            let mut document = Map::new();
            let mut put = |key: &str, value: Option<Value>| {
                if let Some(value) = value {
                    document.insert(key.to_string(), value);
                }
            };
            put("apiVersion", api_version);
            put("kind", kind);
            put("metadata", Some(Value::Object(metadata)));
            put("spec", spec);
            if let Some(key) = unknown.filter(|key| !document.contains_key(key)) {
                document.insert(key, json!(1));
            }
            Value::Object(document)
        })
        .boxed()
}

/// The document as YAML (as operators write it) or JSON (as pipelines send it).
pub fn as_text(document: &Value, yaml: bool) -> String {
    if yaml { serde_yaml_ng::to_string(document).unwrap() } else { serde_json::to_string(document).unwrap() }
}

fn parse(text: &str) -> Result<RolloutPolicy, PolicyError> {
    bounded("RolloutPolicy::from_yaml", || RolloutPolicy::from_yaml(text))
}

fn check_error(error: &PolicyError) -> Result<(), TestCaseError> {
    let line = error.to_string();
    prop_assert!(is_one_line(&line), "error is not one line: {line:?}");
    prop_assert!(!error.field.is_empty() && !error.value.is_empty() && !error.expected.is_empty(), "{error:?}");
    prop_assert!(KNOWN_FIELDS.iter().any(|root| error.field.starts_with(root)), "unknown field path: {line}");
    Ok(())
}

/// What every accepted policy satisfies, and that it survives its own serialisations.
fn check_accepted(policy: &RolloutPolicy) -> Result<(), TestCaseError> {
    prop_assert!(!policy.ladder.is_empty());
    prop_assert!(policy.ladder.windows(2).all(|w| w[0].share_bp < w[1].share_bp), "{:?}", policy.ladder);
    prop_assert_eq!(policy.ladder.last().map(|s| s.share_bp), Some(10_000));
    prop_assert!(policy.ladder.iter().all(|s| s.share_bp >= 1 && !s.window.is_zero()));
    prop_assert!(policy.check_interval >= Duration::from_secs(1));
    prop_assert!(policy.alpha > 0.0 && policy.alpha <= 0.5);
    prop_assert!(policy.min_requests_per_cohort >= 1);
    prop_assert!(policy.critical_metrics().count() >= 1);
    let yaml = policy.to_yaml().unwrap();
    prop_assert_eq!(&parse(&yaml).unwrap(), policy, "YAML round trip of {}", yaml);
    let json = serde_json::to_string(policy).unwrap();
    prop_assert_eq!(&serde_json::from_str::<RolloutPolicy>(&json).unwrap(), policy, "JSON round trip");
    for shown in [format!("{policy:?}"), serde_json::to_string(&policy.redacted()).unwrap(), policy.fingerprint()] {
        prop_assert!(!shown.contains(SECRET), "the webhook secret is shown: {}", shown);
    }
    Ok(())
}

proptest! {
    #![proptest_config(support::config(192))]

    #[test]
    fn generated_policies_are_accepted_consistently_or_refused_by_field(document in document(), yaml in any::<bool>()) {
        let text = as_text(&document, yaml);
        match parse(&text) {
            Ok(policy) => check_accepted(&policy)?,
            Err(error) => {
                check_error(&error)?;
                prop_assert!(!error.to_string().contains(SECRET), "the webhook secret is shown: {}", error);
            }
        }
        // YAML and JSON of one document are one policy (JSON is what the API and the audit log carry).
        let other = parse(&as_text(&document, !yaml));
        prop_assert_eq!(parse(&text).ok(), other.ok());
    }

    #[test]
    fn mutated_policies_never_panic_and_refusals_name_a_field(
        document in document(),
        yaml in any::<bool>(),
        edits in support::edits(6),
    ) {
        let mutated = support::mutate(as_text(&document, yaml).into_bytes(), &edits);
        let text = String::from_utf8_lossy(&mutated);
        match parse(&text) {
            Ok(policy) => check_accepted(&policy)?,
            Err(error) => check_error(&error)?,
        }
    }

    #[test]
    fn arbitrary_text_never_panics(text in prop_oneof![any::<String>(), "[ -~\n]{0,300}"]) {
        if let Err(error) = parse(&text) {
            check_error(&error)?;
        }
    }

    #[test]
    fn durations_round_trip_and_any_text_is_read_without_panic(millis in any::<u64>(), text in text()) {
        let duration = Duration::from_millis(millis);
        prop_assert_eq!(parse_duration(&format_duration(duration)), Some(duration));
        let seconds = Duration::from_secs(millis);
        prop_assert_eq!(parse_duration(&format_duration(seconds)), Some(seconds));
        let _ = bounded("parse_duration", || parse_duration(&text));
    }
}

/// YAML's aliases can expand a small document exponentially ("billion laughs"): every
/// policy field is typed, so the first expanded node is refused before any blow-up.
#[test]
fn alias_bombs_are_refused_in_bounded_time() {
    let mut anchors = String::from("  l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for level in 1..=9 {
        let refs = vec![format!("*l{}", level - 1); 9].join(", ");
        anchors.push_str(&format!("  l{level}: &l{level} [{refs}]\n"));
    }
    for place in ["metadata:\n  labels:\n", "spec:\n", "x:\n"] {
        let text = format!("apiVersion: canary.wasm.dev/v1alpha1\nkind: RolloutPolicy\n{place}{anchors}");
        let error = parse(&text).unwrap_err();
        assert!(is_one_line(&error.to_string()), "{error}");
    }
    let referenced = format!("metadata:\n  annotations:\n{anchors}  name: *l9\n");
    assert!(parse(&referenced).is_err());
}

/// Deep nesting: block collections cost indentation bytes, so their depth is bounded by
/// the text's size; flow collections (`[[[...`) are the ones to bound (see the
/// regression test in `policy.rs`).
#[test]
fn deep_nesting_is_refused_in_bounded_time() {
    for depth in [200, 5_000, 100_000] {
        for (open, close) in [("[", "]"), ("{a: ", "}")] {
            let deep = format!("spec: {}{}", open.repeat(depth), close.repeat(depth));
            assert!(is_one_line(&parse(&deep).unwrap_err().to_string()), "depth {depth}");
        }
    }
    let block = format!("spec:\n{}", (0..1_000).map(|i| format!("{}k:\n", " ".repeat(i + 1))).collect::<String>());
    assert!(parse(&block).is_err());
}
