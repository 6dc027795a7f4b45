//! The plugin configuration (`FilterConfig::parse`): Envoy's `configuration` string or
//! Istio's `pluginConfig`, written by an operator.

use crate::support::{self, bounded, is_one_line, text};
use canary_core::config::is_valid_deployment_id;
use canary_core::outcome::{MAX_OUTCOMES, OutcomeMatch, is_valid_outcome_name};
use canary_core::user_id::AnonymousPolicy;
use canary_core::{ConfigError, DeploymentConfig, FilterConfig};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

/// Field paths an error may name (a path, a prefix of one, or the whole document).
const KNOWN_FIELDS: [&str; 8] =
    ["(document)", "deployment", "routing_header", "user_id", "population", "initial_share_bp", "analyzer", "outcomes"];

/// A deployment id: mostly valid, sometimes one of the refused shapes.
fn deployment() -> BoxedStrategy<Value> {
    prop_oneof![
        6 => "[A-Za-z0-9_-]{1,63}".prop_map(Value::from),
        1 => Just(json!("")),
        1 => Just(Value::from("a".repeat(64))),
        1 => "[a-z]{1,8}[.:/ ][a-z]{1,8}".prop_map(Value::from),
        1 => text().prop_map(Value::from),
        1 => Just(json!(7)),
        1 => Just(Value::Null),
    ]
    .boxed()
}

/// A header or cookie name: a token, an upper-case token, or something refused.
fn name() -> BoxedStrategy<Value> {
    prop_oneof![
        6 => "[A-Za-z0-9!#$%&'*+.^_`|~-]{1,20}".prop_map(Value::from),
        1 => Just(json!(":path")),
        1 => Just(json!("")),
        1 => "[a-z]{1,5}[ ;=,\"\n][a-z]{1,5}".prop_map(Value::from),
        1 => text().prop_map(Value::from),
        1 => Just(json!(["x"])),
    ]
    .boxed()
}

/// A u32 field: ordinary values, the edges, and values JSON allows but a u32 does not.
fn u32_field(ordinary: std::ops::RangeInclusive<u32>) -> BoxedStrategy<Value> {
    prop_oneof![
        4 => ordinary.prop_map(Value::from),
        2 => any::<u32>().prop_map(Value::from),
        2 => prop::sample::select(vec![0u32, 1, 99, 100, 10_000, 10_001, 1 << 31, u32::MAX - 1, u32::MAX])
            .prop_map(Value::from),
        1 => prop::sample::select(vec![json!(-1), json!(4_294_967_296u64), json!(1.5), json!("5"), json!(null)]),
    ]
    .boxed()
}

/// `{"header": ...}`, `{"cookie": ...}`, both, or neither.
fn source() -> BoxedStrategy<Value> {
    prop_oneof![
        3 => name().prop_map(|n| json!({ "header": n })),
        3 => name().prop_map(|n| json!({ "cookie": n })),
        1 => (name(), name()).prop_map(|(h, c)| json!({ "header": h, "cookie": c })),
        1 => Just(json!({})),
    ]
    .boxed()
}

fn rule() -> BoxedStrategy<Value> {
    let subject = prop_oneof![
        4 => name().prop_map(|n| ("header", n)),
        4 => name().prop_map(|n| ("cookie", n)),
        1 => Just(("neither", Value::Null)),
    ];
    let op = prop_oneof![
        text().prop_map(|v| vec![("equals", Value::from(v))]),
        text().prop_map(|v| vec![("prefix", Value::from(v))]),
        text().prop_map(|v| vec![("suffix", Value::from(v))]),
        any::<bool>().prop_map(|v| vec![("present", Value::from(v))]),
        Just(vec![]),
        Just(vec![("equals", json!("a")), ("suffix", json!("b"))]),
    ];
    (subject, op)
        .prop_map(|((key, name), op)| {
            let mut rule = Map::new();
            if key != "neither" {
                rule.insert(key.to_string(), name);
            }
            for (k, v) in op {
                rule.insert(k.to_string(), v);
            }
            Value::Object(rule)
        })
        .boxed()
}

fn user_ids() -> BoxedStrategy<Value> {
    prop::collection::vec(prop_oneof![4 => "[a-z0-9-]{1,12}", 1 => Just(String::new()), 1 => text()], 0..4)
        .prop_map(Value::from)
        .boxed()
}

/// Inserts `value` under `key` when present.
fn put(object: &mut Map<String, Value>, key: &str, value: Option<Value>) {
    if let Some(value) = value {
        object.insert(key.to_string(), value);
    }
}

fn user_id() -> BoxedStrategy<Value> {
    (
        proptest::option::of(prop::collection::vec(source(), 0..4)),
        proptest::option::of(prop_oneof![
            Just(json!("control")),
            Just(json!("sticky_cookie")),
            text().prop_map(Value::from)
        ]),
        proptest::option::of(name()),
        proptest::option::of(u32_field(0..=31_536_000)),
    )
        .prop_map(|(sources, anonymous, sticky_cookie, max_age)| {
            let mut object = Map::new();
            put(&mut object, "sources", sources.map(Value::from));
            put(&mut object, "anonymous", anonymous);
            put(&mut object, "sticky_cookie", sticky_cookie);
            put(&mut object, "sticky_max_age_s", max_age);
            Value::Object(object)
        })
        .boxed()
}

fn population() -> BoxedStrategy<Value> {
    (
        proptest::option::of(prop::collection::vec(rule(), 0..3)),
        proptest::option::of(prop::collection::vec(rule(), 0..3)),
        proptest::option::of(user_ids()),
        proptest::option::of(user_ids()),
    )
        .prop_map(|(all, any, allow, deny)| {
            let mut object = Map::new();
            put(&mut object, "all", all.map(Value::from));
            put(&mut object, "any", any.map(Value::from));
            put(&mut object, "allow", allow);
            put(&mut object, "deny", deny);
            Value::Object(object)
        })
        .boxed()
}

fn analyzer() -> BoxedStrategy<Value> {
    (
        proptest::option::of(prop_oneof![4 => "[a-z_]{1,12}".prop_map(Value::from), 1 => Just(json!(""))]),
        proptest::option::of("[a-z.:0-9]{0,16}".prop_map(Value::from)),
        proptest::option::of(prop_oneof!["/[a-z/]{0,16}".prop_map(Value::from), "[a-z]{1,8}".prop_map(Value::from)]),
        proptest::option::of(u32_field(100..=60_000)),
        proptest::option::of(u32_field(1..=5_000)),
        proptest::option::of(u32_field(200..=600_000)),
        proptest::option::of(prop_oneof![Just(json!("keep")), Just(json!("control")), text().prop_map(Value::from)]),
    )
        .prop_map(|(cluster, authority, path, poll, timeout, stale, when_stale)| {
            let mut object = Map::new();
            put(&mut object, "cluster", cluster);
            put(&mut object, "authority", authority);
            put(&mut object, "path", path);
            put(&mut object, "poll_interval_ms", poll);
            put(&mut object, "timeout_ms", timeout);
            put(&mut object, "stale_after_ms", stale);
            put(&mut object, "when_stale", when_stale);
            Value::Object(object)
        })
        .boxed()
}

/// An outcome name: mostly valid (from a small set, so duplicates happen), or refused.
fn outcome_name() -> BoxedStrategy<Value> {
    prop_oneof![
        6 => "[a-z][a-z0-9_]{0,5}".prop_map(Value::from),
        2 => prop::sample::select(vec!["cache_hit", "declined", "slow_db"]).prop_map(Value::from),
        1 => Just(Value::from("a".repeat(33))),
        1 => "[A-Z0-9._ -][a-z]{0,4}".prop_map(Value::from),
        1 => text().prop_map(Value::from),
        1 => Just(json!(7)),
    ]
    .boxed()
}

/// A status code: mostly in range, sometimes the edges, fractions or a string.
fn status() -> BoxedStrategy<Value> {
    prop_oneof![
        4 => (100u32..=599).prop_map(Value::from),
        2 => prop::sample::select(vec![json!(0), json!(99), json!(600), json!(402.0), json!(402.5), json!(-402), json!("402"), json!(4_294_967_698u64)]),
    ]
    .boxed()
}

/// One outcome rule: a header rule (`equals` or `above`) or a status rule, with or
/// without a path prefix and methods; each part valid or one of the refused shapes,
/// sometimes both match kinds, neither, or an unknown key.
fn outcome() -> BoxedStrategy<Value> {
    let threshold = prop_oneof![
        4 => (-1e6f64..1e6).prop_map(Value::from),
        1 => prop::sample::select(vec![json!("100"), json!(true), json!(null), json!(1e308)]),
    ];
    let header_match = prop_oneof![
        3 => text().prop_map(|v| vec![("equals", Value::from(v))]),
        3 => threshold.prop_map(|t| vec![("above", t)]),
        1 => Just(vec![]),
        1 => Just(vec![("equals", json!("HIT")), ("above", json!(1))]),
    ];
    let kind = prop_oneof![
        4 => (name(), header_match).prop_map(|(h, m)| {
            let mut parts = vec![("response_header", h)];
            parts.extend(m);
            parts
        }),
        3 => status().prop_map(|s| vec![("status", s)]),
        1 => (name(), status()).prop_map(|(h, s)| vec![("response_header", h), ("equals", json!("x")), ("status", s)]),
        1 => Just(vec![]),
    ];
    let path_prefix = prop_oneof![4 => "/[a-z/]{0,8}".prop_map(Value::from), 1 => "[a-z]{0,4}".prop_map(Value::from)];
    let method = prop_oneof![
        4 => prop::sample::select(vec!["GET", "POST", "PUT", "DELETE"]).prop_map(Value::from),
        1 => prop_oneof![Just(json!("post")), Just(json!("")), text().prop_map(Value::from)],
    ];
    (
        proptest::option::weighted(0.95, outcome_name()),
        kind,
        proptest::option::of(path_prefix),
        proptest::option::of(prop::collection::vec(method, 0..3)),
        proptest::option::weighted(0.05, Just(("colour", json!(1)))),
    )
        .prop_map(|(name, kind, path_prefix, methods, unknown)| {
            let mut rule = Map::new();
            put(&mut rule, "name", name);
            for (key, value) in kind {
                rule.insert(key.to_string(), value);
            }
            put(&mut rule, "path_prefix", path_prefix);
            put(&mut rule, "methods", methods.map(Value::from));
            if let Some((key, value)) = unknown {
                rule.insert(key.to_string(), value);
            }
            Value::Object(rule)
        })
        .boxed()
}

/// The `outcomes` list: usually a few rules, sometimes more than the 16 allowed, or not a list.
fn outcomes() -> BoxedStrategy<Value> {
    prop_oneof![
        8 => prop::collection::vec(outcome(), 0..5).prop_map(Value::from),
        1 => prop::collection::vec(outcome(), 15..19).prop_map(Value::from),
        1 => prop_oneof![Just(json!({})), Just(json!("cache_hit")), Just(json!([7]))],
    ]
    .boxed()
}

/// A near-valid configuration: every field present or not, each value valid or one of the refused shapes,
/// and sometimes a key the schema does not have (returned too, as an error may name it).
fn document() -> BoxedStrategy<(Value, Option<String>)> {
    (
        proptest::option::weighted(0.95, deployment()),
        proptest::option::of(name()),
        proptest::option::of(user_id()),
        proptest::option::of(population()),
        proptest::option::of(u32_field(0..=10_000)),
        proptest::option::of(analyzer()),
        proptest::option::of(outcomes()),
        proptest::option::weighted(0.1, prop_oneof![Just("colour".to_string()), text()]),
    )
        .prop_map(|(deployment, routing_header, user_id, population, share, analyzer, outcomes, unknown)| {
            let mut object = Map::new();
            put(&mut object, "deployment", deployment);
            put(&mut object, "routing_header", routing_header);
            put(&mut object, "user_id", user_id);
            put(&mut object, "population", population);
            put(&mut object, "initial_share_bp", share);
            put(&mut object, "analyzer", analyzer);
            put(&mut object, "outcomes", outcomes);
            let unknown = unknown.filter(|key| !object.contains_key(key));
            if let Some(key) = &unknown {
                object.insert(key.clone(), json!(1));
            }
            (Value::Object(object), unknown)
        })
        .boxed()
}

/// What every refusal must carry: the field, the value and the expectation, on one line.
fn check_error(error: &ConfigError, unknown_key: Option<&str>) -> Result<(), TestCaseError> {
    let line = error.to_string();
    prop_assert!(is_one_line(&line), "error is not one line: {line:?}");
    prop_assert!(!error.field.is_empty() && !error.value.is_empty() && !error.expected.is_empty(), "{error:?}");
    let known = KNOWN_FIELDS.iter().any(|root| error.field.starts_with(root));
    let unknown = unknown_key.is_some_and(|key| error.field == key || error.field == format!("{key:?}"));
    prop_assert!(known || unknown, "field {:?} is no field of the configuration: {line}", error.field);
    Ok(())
}

/// What every accepted configuration must satisfy.
fn check_accepted(whole: &FilterConfig) -> Result<(), TestCaseError> {
    prop_assert!(!whole.deployments.is_empty(), "{whole:?}");
    for config in &whole.deployments {
        check_deployment(config)?;
    }
    if let Some(analyzer) = &whole.analyzer {
        prop_assert!(analyzer.path.starts_with('/') && !analyzer.cluster.is_empty(), "{analyzer:?}");
        prop_assert!(analyzer.poll_interval_ms >= 100, "{analyzer:?}");
        prop_assert!(analyzer.timeout_ms >= 1 && analyzer.timeout_ms <= analyzer.poll_interval_ms, "{analyzer:?}");
        prop_assert!(
            u64::from(analyzer.stale_after_ms) >= 2 * u64::from(analyzer.poll_interval_ms),
            "stale_after_ms below two poll intervals: {analyzer:?}"
        );
    }
    Ok(())
}

/// What every accepted deployment must satisfy.
fn check_deployment(config: &DeploymentConfig) -> Result<(), TestCaseError> {
    prop_assert!(is_valid_deployment_id(&config.deployment), "{config:?}");
    prop_assert!(!config.routing_header.is_empty(), "{config:?}");
    prop_assert_eq!(config.routing_header.to_ascii_lowercase(), config.routing_header.clone());
    prop_assert!(config.initial_share.basis_points() <= 10_000);
    prop_assert!(!config.sources.is_empty() || config.anonymous != AnonymousPolicy::Control, "{config:?}");
    prop_assert!(config.allow.iter().chain(&config.deny).all(|id| !id.is_empty()), "{config:?}");
    let rules = config.outcomes.rules();
    prop_assert!(rules.len() <= MAX_OUTCOMES, "{} rules", rules.len());
    for (i, rule) in rules.iter().enumerate() {
        prop_assert!(is_valid_outcome_name(&rule.name), "{rule:?}");
        prop_assert!(rules[..i].iter().all(|earlier| earlier.name != rule.name), "duplicate {rule:?}");
        prop_assert!(rule.path_prefix.as_ref().is_none_or(|p| p.starts_with('/')), "{rule:?}");
        prop_assert!(
            rule.methods.iter().all(|m| !m.is_empty() && m.bytes().all(|b| !b.is_ascii_lowercase())),
            "{rule:?}"
        );
        match &rule.matcher {
            OutcomeMatch::Status(code) => prop_assert!((100..=599).contains(code), "{rule:?}"),
            OutcomeMatch::HeaderAbove { header, threshold } => {
                prop_assert!(threshold.is_finite(), "{rule:?}");
                prop_assert!(!header.is_empty() && header.to_ascii_lowercase() == *header, "{rule:?}");
            }
            OutcomeMatch::HeaderEquals { header, value } => {
                prop_assert!(!value.is_empty(), "{rule:?}");
                prop_assert!(!header.is_empty() && header.to_ascii_lowercase() == *header, "{rule:?}");
            }
        }
    }
    Ok(())
}

fn parse(bytes: &[u8]) -> Result<FilterConfig, ConfigError> {
    bounded("FilterConfig::parse", || FilterConfig::parse(bytes))
}

/// Only the documents the generator made valid.
fn valid_document() -> BoxedStrategy<Vec<u8>> {
    document()
        .prop_map(|(doc, _)| serde_json::to_vec(&doc).unwrap_or_default())
        .prop_filter("a configuration the parser accepts", |bytes| FilterConfig::parse(bytes).is_ok())
        .boxed()
}

proptest! {
    #![proptest_config(support::config(support::CASES))]

    #[test]
    fn generated_configurations_are_accepted_consistently_or_refused_by_field((doc, unknown) in document()) {
        let bytes = serde_json::to_vec(&doc).unwrap();
        match parse(&bytes) {
            Ok(config) => check_accepted(&config)?,
            Err(error) => check_error(&error, unknown.as_deref())?,
        }
    }

    #[test]
    fn mutated_configurations_never_panic_and_refusals_name_a_field(
        bytes in valid_document(),
        edits in support::edits(6),
    ) {
        let mutated = support::mutate(bytes, &edits);
        match parse(&mutated) {
            Ok(config) => check_accepted(&config)?,
            // A mutation can create any key; only the shape of the error is checked.
            Err(error) => {
                let line = error.to_string();
                prop_assert!(is_one_line(&line), "error is not one line: {line:?}");
                prop_assert!(!error.field.is_empty() && !error.expected.is_empty(), "{error:?}");
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Err(error) = parse(&bytes) {
            prop_assert!(is_one_line(&error.to_string()), "{error}");
        }
    }
}

/// A 1 MiB document, and one nested far deeper than serde_json's 128-level limit (a
/// stack overflow on wasm32, whose stack is 1 MiB, would trap): refused, in bounded time.
#[test]
fn huge_and_deeply_nested_documents_are_refused_in_bounded_time() {
    let long_id = format!(r#"{{"deployment":"{}"}}"#, "a".repeat(1 << 20));
    assert_eq!(parse(long_id.as_bytes()).unwrap_err().field, "deployment");
    let deep = format!(r#"{{"deployment":"d","population":{}{}}}"#, "[".repeat(100_000), "]".repeat(100_000));
    let error = parse(deep.as_bytes()).unwrap_err();
    assert!(is_one_line(&error.to_string()), "{error}");
    let many_sources: Vec<Value> = (0..20_000).map(|i| json!({ "header": format!("x-id-{i}") })).collect();
    let wide = json!({ "deployment": "d", "user_id": { "sources": many_sources } });
    assert_eq!(parse(&serde_json::to_vec(&wide).unwrap()).unwrap().deployments[0].sources.len(), 20_000);
}
