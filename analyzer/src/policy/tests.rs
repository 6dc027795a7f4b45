//! The policy parser against written documents: defaults, every refusal by field,
//! round trips through YAML and JSON, and the regressions the property tests found.

use super::*;

const MINIMAL: &str = "apiVersion: canary.wasm.dev/v1alpha1\nkind: RolloutPolicy\nmetadata:\n  name: checkout\n\
                       spec:\n  deployment: checkout\n";

fn parse(spec_extra: &str) -> Result<RolloutPolicy, PolicyError> {
    RolloutPolicy::from_yaml(&format!("{MINIMAL}{spec_extra}"))
}

#[test]
fn the_shipped_example_parses() {
    let policy = RolloutPolicy::from_yaml(include_str!("../../examples/policy.yaml")).unwrap();
    assert_eq!(policy.name, "checkout-canary");
    assert_eq!(policy.deployment, "checkout");
    let shares: Vec<u32> = policy.ladder.iter().map(|s| s.share_bp).collect();
    assert_eq!(shares, [50, 500, 2_500, 5_000, 10_000]);
    assert_eq!(policy.ladder[0].window, Duration::from_secs(120));
    assert_eq!(policy.ladder[1].window, Duration::from_secs(600));
    assert_eq!(policy.check_interval, Duration::from_secs(30));
    assert!(policy.critical_metrics().count() == 3);
    assert!(policy.metrics.iter().any(|m| matches!(m.metric, Metric::Custom(_))));
    assert!(policy.metrics.iter().any(|m| matches!(m.metric, Metric::Outcome(_))));
    assert!(policy.metrics.iter().any(|m| matches!(m.metric, Metric::CounterPair(_))));
    assert!(policy.notify.is_some());
}

#[test]
fn defaults_fill_a_minimal_policy() {
    let policy = parse("").unwrap();
    let shares: Vec<u32> = policy.ladder.iter().map(|s| s.share_bp).collect();
    assert_eq!(shares, [100, 500, 2_500, 5_000, 10_000]);
    assert!(policy.ladder.iter().all(|s| s.window == defaults::STEP_WINDOW));
    assert_eq!(policy.check_interval, defaults::CHECK_INTERVAL);
    assert_eq!(policy.alpha, 0.05);
    assert_eq!(policy.min_requests_per_cohort, 1_000);
    let names: Vec<&str> = policy.metrics.iter().map(MetricPolicy::name).collect();
    assert_eq!(names, ["error_rate", "latency_p99", "sample_ratio"]);
    let critical: Vec<bool> = policy.metrics.iter().map(|m| m.critical).collect();
    assert_eq!(critical, [true, true, false], "the split is reported, not critical, by default");
    assert_eq!(policy.notify, None);
    let with_window = parse("  default_window: 90s\n").unwrap();
    assert!(with_window.ladder.iter().all(|s| s.window == Duration::from_secs(90)));
}

#[test]
fn report_metric_names_match_the_statistics_rows() {
    use crate::stats::{LatencyComparison, LatencySettings, REPORTED_QUANTILES};
    let bounds = canary_core::metrics::LATENCY_BUCKETS_US;
    let comparison = LatencyComparison::new(&bounds, LatencySettings::with_tolerance_us(1.0)).unwrap();
    let rows: Vec<String> = comparison.rows(0.05, 1).unwrap().into_iter().map(|r| r.metric).collect();
    let ours: Vec<String> = LatencyQuantile::ALL
        .iter()
        .map(|&quantile| {
            let tolerance = LatencyTolerance { max_increase_ms: Some(1.0), max_relative_increase: None };
            MetricPolicy { metric: Metric::Latency { quantile, tolerance }, critical: true }.report_metric()
        })
        .collect();
    assert_eq!(rows, ours);
    let fractions: Vec<f64> = LatencyQuantile::ALL.iter().map(|q| q.fraction()).collect();
    assert_eq!(fractions, REPORTED_QUANTILES);
}

#[test]
fn latency_tolerances_become_microseconds() {
    let both = LatencyTolerance { max_increase_ms: Some(50.0), max_relative_increase: Some(0.2) };
    assert_eq!(both.allowed_increase_us(Some(100_000.0)), Some(50_000.0));
    assert_eq!(both.allowed_increase_us(Some(400_000.0)), Some(80_000.0));
    assert_eq!(both.allowed_increase_us(None), Some(50_000.0));
    let relative = LatencyTolerance { max_increase_ms: None, max_relative_increase: Some(0.2) };
    assert_eq!(relative.allowed_increase_us(None), None);
    assert_eq!(relative.allowed_increase_us(Some(1_000.0)), Some(200.0));
}

#[test]
fn fractional_shares_and_durations_parse() {
    let policy =
        parse("  ladder:\n    - {share: 0.5, window: 1h30m}\n    - {share: 12.25}\n    - {share: 100}\n").unwrap();
    assert_eq!(
        policy.ladder[0],
        LadderStep { share_bp: 50, window: Duration::from_secs(5_400), approval_required: false }
    );
    assert_eq!(policy.ladder[1].share_bp, 1_225);
    assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
    assert_eq!(parse_duration("1m30s"), Some(Duration::from_secs(90)));
    for bad in ["", "5", "m", "5 m", "1.5s", "5d", "-5s", "99999999999999999999h"] {
        assert_eq!(parse_duration(bad), None, "{bad}");
    }
    for text in ["1h30m", "45s", "1500ms", "2h", "1h1s"] {
        assert_eq!(format_duration(parse_duration(text).unwrap()), text);
    }
}

#[test]
fn serialising_round_trips_with_defaults_explicit() {
    let policy = RolloutPolicy::from_yaml(include_str!("../../examples/policy.yaml")).unwrap();
    let yaml = policy.to_yaml().unwrap();
    assert_eq!(RolloutPolicy::from_yaml(&yaml).unwrap(), policy);
    let json = serde_json::to_string(&policy).unwrap();
    let back: RolloutPolicy = serde_json::from_str(&json).unwrap();
    assert_eq!(back, policy);
    assert_eq!(back.fingerprint(), policy.fingerprint());
    assert_eq!(policy.fingerprint().len(), 16);
    let minimal = parse("").unwrap();
    assert_ne!(minimal.fingerprint(), policy.fingerprint());
    let explicit = minimal.to_yaml().unwrap();
    assert!(explicit.contains("min_requests_per_cohort: 1000"), "{explicit}");
    assert!(explicit.contains("window: 5m"), "{explicit}");
    // Deserialising goes through validation too.
    let bad = json.replace("\"alpha\":0.05", "\"alpha\":2.0");
    assert!(serde_json::from_str::<RolloutPolicy>(&bad).unwrap_err().to_string().contains("spec.alpha"));
}

const SLACK: &str = "https://hooks.slack.com/services/T000/B000/SECRETSECRET";

fn with_webhook(url: &str) -> RolloutPolicy {
    parse(&format!("  notify: {{webhook_url: '{url}'}}\n")).unwrap()
}

#[test]
fn the_webhook_url_is_in_the_state_files_form_only() {
    let policy = with_webhook(SLACK);
    // The plain serialisation (state files) keeps the URL and reads back whole.
    let stored = serde_json::to_string(&policy).unwrap();
    assert!(stored.contains(SLACK));
    assert_eq!(serde_json::from_str::<RolloutPolicy>(&stored).unwrap(), policy);
    // The audit and API form does not, and reads back as a URL that cannot be posted to.
    let mut shown = Vec::new();
    RolloutPolicy::serialize_redacted(&policy, &mut serde_json::Serializer::new(&mut shown)).unwrap();
    let shown = String::from_utf8(shown).unwrap();
    assert!(!shown.contains("SECRETSECRET") && shown.contains("https://hooks.slack.com/…#xxh3:"), "{shown}");
    let back: RolloutPolicy = serde_json::from_str(&shown).unwrap();
    assert_eq!(back, policy.redacted());
    assert!(back.notify.as_ref().unwrap().webhook_url.secret().is_none());
    assert!(!format!("{policy:?}").contains("SECRETSECRET"), "Debug is redacted too");
    // The fingerprint covers the URL (by its hash) and is the same for both forms.
    assert_eq!(back.fingerprint(), policy.fingerprint());
    assert_ne!(with_webhook(&SLACK.replace("SECRET", "OTHER")).fingerprint(), policy.fingerprint());
    assert_ne!(parse("").unwrap().fingerprint(), policy.fingerprint());
    // Written by a person, the redacted form is refused: nothing could be posted to it.
    let error = parse(&format!("  notify: {{webhook_url: '{}'}}\n", back.notify.unwrap().webhook_url)).unwrap_err();
    assert_eq!(error.field, "spec.notify.webhook_url");
    assert!(error.expected.contains("not the redacted form"), "{error}");
}

#[test]
fn recovery_takes_the_webhook_url_from_a_policy_with_the_same_fingerprint() {
    let policy = with_webhook(SLACK);
    let redacted = policy.redacted();
    assert_eq!(redacted.clone().with_webhook_secret_from(Some(&policy)), policy);
    let other = with_webhook(&SLACK.replace("SECRET", "OTHER"));
    assert_eq!(redacted.clone().with_webhook_secret_from(Some(&other)), redacted, "another URL is not taken");
    assert_eq!(redacted.clone().with_webhook_secret_from(Some(&redacted)), redacted);
    assert_eq!(redacted.clone().with_webhook_secret_from(None), redacted);
    assert_eq!(policy.clone().with_webhook_secret_from(Some(&other)), policy, "a known URL stays");
}

#[test]
fn ladder_helpers_find_steps() {
    let policy = parse("").unwrap();
    assert_eq!(policy.next_step_above(0).map(|(i, s)| (i, s.share_bp)), Some((0, 100)));
    assert_eq!(policy.next_step_above(500).map(|(i, s)| (i, s.share_bp)), Some((2, 2_500)));
    assert_eq!(policy.next_step_above(10_000), None);
    assert_eq!(policy.step_at_share(0), 0);
    assert_eq!(policy.step_at_share(700), 1);
    assert_eq!(policy.step_at_share(10_000), 4);
    assert_eq!(policy.step(4).map(|s| s.share_bp), Some(10_000));
    assert_eq!(policy.step(5), None);
}

/// Each bad document is refused naming the field, and the message says what was expected.
#[test]
fn errors_name_the_field_the_value_and_what_was_expected() {
    let header = "apiVersion: canary.wasm.dev/v1alpha1\nkind: RolloutPolicy\nmetadata: {name: a}\n";
    let spec = |body: &str| format!("{header}spec:\n  deployment: checkout\n{body}");
    let metric = |body: &str| spec(&format!("  metrics:\n    - {{{body}}}\n"));
    let cases: Vec<(String, &str, &str)> = vec![
        ("kind: RolloutPolicy\nmetadata: {name: a}\nspec: {deployment: a}".into(), "apiVersion", "v1alpha1"),
        (header.replace("v1alpha1", "v2"), "apiVersion", "v1alpha1"),
        (header.replace("kind: RolloutPolicy", "kind: Rollout"), "kind", "RolloutPolicy"),
        (header.replace("{name: a}", "{}"), "metadata.name", "policy name"),
        (header.replace("{name: a}", "{name: Checkout}"), "metadata.name", "Kubernetes name"),
        (header.to_string(), "spec", "specification"),
        (format!("{header}spec: {{}}"), "spec.deployment", "deployment id"),
        (format!("{header}spec: {{deployment: check.out}}"), "spec.deployment", "[A-Za-z0-9_-]"),
        (format!("{header}spec: {{deployment: {}}}", "a".repeat(64)), "spec.deployment", "1 to 63"),
        (spec("  colour: blue\n"), "spec.colour", "one of deployment, ladder, default_window"),
        (
            spec("  ladder: [{shar: 5}]\n"),
            "spec.ladder[0].shar",
            "one of share, window, approval; did you mean `share`?",
        ),
        (spec("  ladder: []\n"), "spec.ladder", "at least one step"),
        (spec("  ladder: [{window: 5m}]\n"), "spec.ladder[0].share", "share in percent"),
        (spec("  ladder: [{share: 0}, {share: 100}]\n"), "spec.ladder[0].share", "above 0"),
        (spec("  ladder: [{share: 101}]\n"), "spec.ladder[0].share", "at most 100"),
        (spec("  ladder: [{share: 0.001}, {share: 100}]\n"), "spec.ladder[0].share", "steps of 0.01"),
        (spec("  ladder: [{share: 5}, {share: 5}, {share: 100}]\n"), "spec.ladder[1].share", "must increase"),
        (spec("  ladder: [{share: 5}, {share: 50}]\n"), "spec.ladder[1].share", "last step at 100"),
        (spec("  ladder: [{share: 5, window: 5}, {share: 100}]\n"), "spec.ladder[0].window", "duration"),
        (spec("  ladder: [{share: 5, window: 0s}, {share: 100}]\n"), "spec.ladder[0].window", "positive"),
        (spec("  default_window: soon\n"), "spec.default_window", "duration"),
        (spec("  check_interval: 500ms\n"), "spec.check_interval", "at least 1s"),
        (spec("  check_interval: 1 minute\n"), "spec.check_interval", "duration"),
        (spec("  alpha: 0\n"), "spec.alpha", "(0, 0.5]"),
        (spec("  alpha: 0.9\n"), "spec.alpha", "(0, 0.5]"),
        (spec("  alpha: .nan\n"), "spec.alpha", "(0, 0.5]"),
        (spec("  min_requests_per_cohort: 0\n"), "spec.min_requests_per_cohort", "at least 1"),
        (spec("  min_requests_per_cohort: -1\n"), "spec.min_requests_per_cohort", "a whole number of requests"),
        (spec("  metrics: []\n"), "spec.metrics", "critical: true"),
        (metric("name: error_rate, critical: false"), "spec.metrics", "critical: true"),
        (metric("critical: true"), "spec.metrics[0].name", "error_rate"),
        (metric("name: Error-Rate, query: x"), "spec.metrics[0].name", "[a-z_][a-z0-9_]*"),
        (metric("name: error_rate, max_relative_increase: -0.1"), "spec.metrics[0].max_relative_increase", ">= 0"),
        (metric("name: error_rate, max_increase_ms: 5"), "spec.metrics[0].max_increase_ms", "latency"),
        (metric("name: error_rate, query: 'up'"), "spec.metrics[0].query", "built-in"),
        (metric("name: latency_p99"), "spec.metrics[0].max_increase_ms", "max_increase_ms"),
        (metric("name: latency_p99, max_increase_ms: .inf"), "spec.metrics[0].max_increase_ms", "finite"),
        (metric("name: latency_p75, max_increase_ms: 5"), "spec.metrics[0].name", "latency_p99_9, sample_ratio; did"),
        (metric("name: sample_ratio, max_relative_increase: 1"), "spec.metrics[0].max_relative_increase", "not set"),
        (metric("name: latency_p99, max_relative_deviation: 1"), "spec.metrics[0].max_relative_deviation", "sample"),
        (metric("name: error_rate, tolerance: 1"), "spec.metrics[0].tolerance", "one of name, critical,"),
        (metric("name: orders, query: 'sum(x)', max_relative_increase: 0.1"), "spec.metrics[0].query", "{{cohort}}"),
        (metric("name: orders, query: 'x{c=\"{{cohort\"}'"), "spec.metrics[0].query", "closed by"),
        (metric("name: orders, query: '{{cohort}} {{pod}}'"), "spec.metrics[0].query", "{{pod}}"),
        (metric("name: orders, query: '   '"), "spec.metrics[0].query", "PromQL"),
        (metric("name: orders, query: 'x{c=\"{{cohort}}\"}'"), "spec.metrics[0].max_relative_increase", "custom"),
        (metric("name: orders, max_relative_increase: 1"), "spec.metrics[0].name", "a `query` (PromQL)"),
        (spec("  metrics: [{name: error_rate}, {name: error_rate}]\n"), "spec.metrics[1].name", "unique"),
        (spec("  notify: {}\n"), "spec.notify.webhook_url", "URL"),
        (spec("  notify: {webhook_url: 'ftp://x'}\n"), "spec.notify.webhook_url", "https://"),
        (spec("  notify: {webhook_url: 'https://'}\n"), "spec.notify.webhook_url", "with a host"),
        ("- not a mapping".into(), "(document)", "RolloutPolicy"),
    ];
    for (text, field, expected) in cases {
        let error = RolloutPolicy::from_yaml(&text).expect_err(&text);
        assert_eq!(error.field, field, "{text}\n{error}");
        let message = error.to_string();
        assert!(message.contains(expected), "{text}\n{message}");
        assert!(message.starts_with("invalid rollout policy: field `"), "{message}");
    }
}

#[test]
fn custom_metrics_and_latency_tolerances_are_typed() {
    let policy = parse(
        "  metrics:\n    - {name: error_rate, max_relative_increase: 0.2}\n    \
         - {name: latency_p99_9, max_relative_increase: 0.5, critical: false}\n    \
         - name: checkout_failures\n      \
         query: 'sum(rate(fail{cohort=\"{{ cohort }}\",d=\"{{deployment}}\"}[{{window}}]))'\n      \
         max_absolute_increase: 0.5\n",
    )
    .unwrap();
    assert_eq!(policy.metrics[0].metric, Metric::ErrorRate { max_relative_increase: 0.2 });
    assert_eq!(
        policy.metrics[1].metric,
        Metric::Latency {
            quantile: LatencyQuantile::P99_9,
            tolerance: LatencyTolerance { max_increase_ms: None, max_relative_increase: Some(0.5) }
        }
    );
    assert!(!policy.metrics[1].critical);
    assert_eq!(policy.metrics[1].report_metric(), "latency_p99_9_us");
    let Metric::Custom(custom) = &policy.metrics[2].metric else { panic!("custom expected") };
    assert_eq!(custom.name, "checkout_failures");
    assert_eq!(custom.max_absolute_increase, Some(0.5));
    assert_eq!(policy.metrics[2].report_metric(), "checkout_failures");
    assert!(policy.metrics[2].critical, "listed metrics are critical by default");
}

/// Found by `generated_policies_are_accepted_consistently_or_refused_by_field`
/// (tests/parser_properties): serde_yaml_ng quotes an unknown key as written, so a
/// key holding a line break, a tab or an escape character split the error over
/// lines (the analyzer's start-up error, the CLI's output) or coloured a terminal.
#[test]
fn regression_unknown_keys_with_control_characters_are_refused_on_one_line() {
    for text in [
        "{'\n\n'",
        "\"\\t\": 1\n",
        "apiVersion: canary.wasm.dev/v1alpha1\n\"\\r\\0\\e[31m\": 1\n",
        "metadata: {labels: {\"a\\nb\": [1]}}\n",
    ] {
        let error = RolloutPolicy::from_yaml(text).unwrap_err();
        let line = error.to_string();
        assert!(!line.chars().any(char::is_control), "for {text:?}: {line:?}");
    }
}

/// Found by `deep_nesting_is_refused_in_bounded_time` (tests/parser_properties): the
/// YAML parser's work per token grows with the nesting depth of `[`/`{`, so 100 000
/// levels (a 200 KB register body) kept a core busy for 352 s in a debug build. At
/// 20 000 levels this took ~17 s before the depth was bounded; now it is refused at once.
#[test]
fn regression_deep_flow_nesting_is_refused_in_linear_time() {
    for (open, close) in [("[", "]"), ("{a: ", "}")] {
        let deep =
            format!("apiVersion: canary.wasm.dev/v1alpha1\nspec: {}{}", open.repeat(20_000), close.repeat(20_000));
        let started = std::time::Instant::now();
        let error = RolloutPolicy::from_yaml(&deep).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
        assert_eq!(error.field, "(document)");
        assert!(error.value.starts_with("line 2: more than 64 nested"), "{error}");
    }
    // Brackets inside PromQL templates and flow-style ladders are far below the bound.
    let policy = parse(
        "  ladder: [{share: 1, window: 1m}, {share: 100}]\n  metrics:\n    - {name: error_rate}\n\
         \x20   - {name: c, query: 'sum(rate(x{cohort=\"{{cohort}}\"}[{{window}}]))', max_relative_increase: 0.1}\n",
    );
    assert_eq!(policy.unwrap().ladder.len(), 2);
}

/// Found by `generated_policies_are_accepted_consistently_or_refused_by_field`
/// (tests/parser_properties, 3 000 cases): serde_json's default float parser can miss
/// by one ULP, so a policy read back from its state file or audit record (JSON) was
/// not the policy written (2.120705760146268 came back as 2.1207057601462678) and
/// its fingerprint changed: a restarted analyzer threw the saved evidence away.
#[test]
fn regression_a_policy_read_back_from_json_keeps_its_floats_and_fingerprint() {
    let policy = parse(
        "  alpha: 0.049999999999999996\n  metrics:\n\
         \x20   - {name: latency_p50, max_increase_ms: 2.120705760146268}\n\
         \x20   - {name: error_rate, max_relative_increase: 0.30000000000000004}\n",
    )
    .unwrap();
    let back: RolloutPolicy = serde_json::from_str(&serde_json::to_string(&policy).unwrap()).unwrap();
    assert_eq!(back, policy);
    assert_eq!(back.fingerprint(), policy.fingerprint());
}

/// Found by `register_bodies_are_registered_exactly_when_the_policy_parses`
/// (tests/parser_properties, 1 500 cases): `max_increase_ms: 1e308` passed the policy's
/// checks, but is infinite in microseconds, so registering it failed with "statistics:
/// latency tolerance_us must be finite" naming no field (and a `--policy` file
/// stopped the analyzer at start). The policy now refuses it by field.
#[test]
fn regression_a_latency_tolerance_infinite_in_microseconds_is_refused_by_field() {
    let error = parse("  metrics:\n    - {name: latency_p99, max_increase_ms: 1.0e308}\n").unwrap_err();
    assert_eq!(error.field, "spec.metrics[0].max_increase_ms", "{error}");
    let largest = parse("  metrics:\n    - {name: latency_p99, max_increase_ms: 1.0e305}\n").unwrap();
    assert!(crate::evaluation::RolloutEvaluation::new(&largest).is_ok());
}

/// Found by `register_bodies_are_registered_exactly_when_the_policy_parses`
/// (tests/parser_properties, 1 500 cases): `check_interval: 5124095576030431h` parsed,
/// then registering it panicked ("overflow when adding duration to instant"); step
/// windows near `u64::MAX` seconds overflowed the checks-per-window arithmetic.
#[test]
fn regression_durations_beyond_a_year_are_refused_by_field() {
    for (extra, field) in [
        ("  check_interval: 5124095576030431h\n", "spec.check_interval"),
        ("  default_window: 8761h\n", "spec.ladder[0].window"),
        ("  ladder: [{share: 1, window: 18446744073709551615s}, {share: 100}]\n", "spec.ladder[0].window"),
    ] {
        let error = parse(extra).unwrap_err();
        assert_eq!(error.field, field, "{error}");
        assert!(error.expected.contains("at most a year"), "{error}");
    }
    let year = parse("  check_interval: 8760h\n  default_window: 8760h\n").unwrap();
    assert_eq!(year.check_interval, MAX_DURATION);
}

/// The limits above are for policies people write: an audit record or state file an
/// older analyzer wrote with such values still loads (a refused record would stop the
/// analyzer at start as a corrupt audit log); the engine then reports it as broken.
#[test]
fn limits_of_written_policies_do_not_apply_to_records_read_back() {
    let mut policy = parse("  metrics:\n    - {name: latency_p99, max_increase_ms: 1}\n").unwrap();
    policy.check_interval = MAX_DURATION * 2;
    policy.ladder[0].window = MAX_DURATION * 2;
    policy.metrics[0].metric = Metric::Latency {
        quantile: LatencyQuantile::P99,
        tolerance: LatencyTolerance { max_increase_ms: Some(1e306), max_relative_increase: None },
    };
    let back: RolloutPolicy = serde_json::from_str(&serde_json::to_string(&policy).unwrap()).unwrap();
    assert_eq!(back, policy);
    assert!(RolloutPolicy::from_yaml(&policy.to_yaml().unwrap()).is_err(), "written, it is refused");
}

/// A policy metric named like a row every report carries would read as that row in
/// every report; it is refused by field, naming the value and every reserved name.
#[test]
fn names_of_the_built_in_rows_are_reserved() {
    let reserved = ["non_success_rate", "latency_p50_us", "latency_p90_us", "latency_p99_us", "latency_p99_9_us"];
    for name in reserved {
        for form in [
            format!("{{name: {name}, query: 'x{{c=\"{{{{cohort}}}}\"}}', max_relative_increase: 0.1}}"),
            format!("{{name: {name}, outcome: cache_hit, direction: higher_is_worse}}"),
            format!("{{outcome: {name}, direction: lower_is_worse}}"),
            format!(
                "{{name: {name}, numerator: 'a{{c=\"{{{{cohort}}}}\"}}', denominator: 'b{{c=\"{{{{cohort}}}}\"}}', \
                 direction: higher_is_worse}}"
            ),
        ] {
            let error = parse(&format!("  metrics:\n    - {{name: error_rate}}\n    - {form}\n")).unwrap_err();
            assert_eq!(error.field, "spec.metrics[1].name", "{form}: {error}");
            assert_eq!(error.value, format!("{name:?}"), "{form}: {error}");
            for listed in ["error_rate", "sample_ratio"].iter().chain(&reserved) {
                assert!(error.expected.contains(listed), "{form}: {error}");
            }
        }
    }
    // The two built-in rows that are also policy metrics were refused already.
    for name in ["error_rate", "sample_ratio"] {
        let outcome = format!("  metrics:\n    - {{outcome: {name}, direction: lower_is_worse}}\n");
        assert_eq!(parse(&outcome).unwrap_err().field, "spec.metrics[0].name");
    }
    // Names that merely resemble them are a policy's own.
    let own = parse(
        "  metrics:\n    - {name: error_rate}\n    - {outcome: latency_p99_us_total, direction: higher_is_worse}\n\
         \x20   - {name: non_success, outcome: x, direction: higher_is_worse}\n",
    );
    assert_eq!(own.unwrap().metrics.len(), 3);
}

/// The refusal is for policies people write: one an older analyzer recorded with such a
/// name still reads back from its state file or audit record (its rows are told apart
/// by origin, see `MetricPolicy::row_key`).
#[test]
fn a_recorded_policy_with_a_reserved_name_still_reads_back() {
    let mut policy =
        parse("  metrics:\n    - {name: error_rate}\n    - {outcome: cache_hit, direction: higher_is_worse}\n")
            .unwrap();
    let Metric::Outcome(outcome) = &mut policy.metrics[1].metric else { panic!("an outcome") };
    outcome.name = "latency_p99_us".into();
    let back: RolloutPolicy = serde_json::from_str(&serde_json::to_string(&policy).unwrap()).unwrap();
    assert_eq!(back, policy);
    assert_eq!(back.metrics[1].row_key(), crate::stats::RowKey::policy("latency_p99_us"));
    assert_eq!(
        back.metrics.iter().map(MetricPolicy::row_key).next(),
        Some(crate::stats::RowKey::built_in("error_rate"))
    );
    assert!(RolloutPolicy::from_yaml(&policy.to_yaml().unwrap()).is_err(), "written, it is refused");
}

/// The refusals a newcomer meets first: a misspelt metric or field, a unit where a
/// plain number goes. Each names the field, lists or suggests the valid names and says
/// the unit.
#[test]
fn refusals_suggest_names_and_say_units() {
    let spec = |body: &str| {
        format!(
            "apiVersion: {API_VERSION}\nkind: RolloutPolicy\nmetadata: {{name: a}}\nspec:\n  deployment: checkout\n{body}"
        )
    };
    let refusal = |body: &str| RolloutPolicy::from_yaml(&spec(body)).unwrap_err().to_string();
    assert_eq!(
        refusal("  metrics: [{name: latency_p95, max_increase_ms: 50}]\n"),
        "invalid rollout policy: field `spec.metrics[0].name` = \"latency_p95\": expected a built-in metric \
         (error_rate, latency_p50, latency_p90, latency_p99, latency_p99_9, sample_ratio; did you mean `latency_p90` \
         or `latency_p99`?), or a custom metric with a `query` (PromQL), an `outcome`, or a `numerator` and \
         `denominator`"
    );
    assert_eq!(
        refusal("  metrics: [{name: latency_p99, max_increase_ms: 50ms}]\n"),
        "invalid rollout policy: field `spec.metrics[0].max_increase_ms` = string \"50ms\" (line 6 column 50): \
         expected milliseconds, a number without a unit: 50 for 50 ms"
    );
    assert_eq!(
        refusal("  metrics: [{name: error_rate, max_relative_increase: 10%}]\n"),
        "invalid rollout policy: field `spec.metrics[0].max_relative_increase` = string \"10%\" (line 6 column 55): \
         expected a fraction, without `%`: 0.1 for 10 %"
    );
    assert!(
        refusal("  ladder: [{share: 5%}, {share: 100}]\n")
            .contains("expected a share in percent, a number without `%`")
    );
    assert_eq!(
        refusal("  check_intervall: 30s\n"),
        "invalid rollout policy: field `spec.check_intervall` = (unknown field) (line 6 column 3): expected one of \
         deployment, ladder, default_window, check_interval, alpha, min_requests_per_cohort, fleet_deadline, \
         stall_after_windows, metrics, notify, source; did you mean `check_interval`?"
    );
    assert!(refusal("  metrics: [{name: error_rate, critcal: true}]\n").ends_with("did you mean `critical`?"));
    assert!(refusal("  alpha: -1\n").contains("e.g. 0.05"));
    assert!(
        refusal("  metrics: [{name: error_rate, max_relative_increase: -1}]\n").contains("0.1 for 10 %"),
        "a range error says the unit too"
    );
    let top = RolloutPolicy::from_yaml(&format!("{}spek: {{}}\n", spec(""))).unwrap_err().to_string();
    assert!(
        top.contains("field `(document)` = unknown field `spek`") && top.ends_with("did you mean `spec`?"),
        "{top}"
    );
}

#[test]
fn a_ladder_step_may_require_approval_but_not_the_last_one() {
    let document = |ladder: &str| {
        format!(
            "apiVersion: canary.wasm.dev/v1alpha1\nkind: RolloutPolicy\nmetadata: {{name: p}}\nspec:\n  \
             deployment: checkout\n  ladder: {ladder}\n"
        )
    };
    let policy =
        RolloutPolicy::from_yaml(&document("[{share: 10, approval: required}, {share: 100, approval: none}]")).unwrap();
    assert!(policy.ladder[0].approval_required && !policy.ladder[1].approval_required);
    let back = RolloutPolicy::from_yaml(&policy.to_yaml().unwrap()).unwrap();
    assert_eq!(back.ladder, policy.ladder, "written back and read again");
    let typo = RolloutPolicy::from_yaml(&document("[{share: 10, approval: yes}, {share: 100}]")).unwrap_err();
    assert_eq!(typo.field, "spec.ladder[0].approval");
    assert!(typo.to_string().contains("required") && typo.to_string().contains("\"yes\""), "{typo}");
    let last = RolloutPolicy::from_yaml(&document("[{share: 10}, {share: 100, approval: required}]")).unwrap_err();
    assert_eq!(last.field, "spec.ladder[1].approval");
}

#[test]
fn a_policy_webhook_names_its_format_and_events_and_keeps_them_written_back() {
    let document = |notify: &str| {
        format!(
            "apiVersion: canary.wasm.dev/v1alpha1\nkind: RolloutPolicy\nmetadata: {{name: p}}\nspec:\n  \
             deployment: checkout\n  notify: {{webhook_url: 'https://x.example/hook', {notify}}}\n"
        )
    };
    let policy = RolloutPolicy::from_yaml(&document("format: discord, events: [rollback, approval]")).unwrap();
    let notify = policy.notify.as_ref().unwrap();
    assert_eq!((notify.format.name(), notify.events.to_string()), ("discord", "rollback,approval".to_string()));
    let back = RolloutPolicy::from_yaml(&policy.to_yaml().unwrap()).unwrap();
    assert_eq!(back.notify, policy.notify);
    let plain = RolloutPolicy::from_yaml(&document("format: slack")).unwrap();
    let written = plain.to_yaml().unwrap();
    assert!(!written.contains("format") && !written.contains("events"), "defaults are not written: {written}");
    let format = RolloutPolicy::from_yaml(&document("format: msteams")).unwrap_err();
    assert_eq!(format.field, "spec.notify.format");
    assert!(format.to_string().contains("teams, discord, google-chat, json"), "{format}");
    let event = RolloutPolicy::from_yaml(&document("events: [rollbak]")).unwrap_err();
    assert_eq!(event.field, "spec.notify.events");
    assert!(event.to_string().contains("\"rollbak\"") && event.to_string().contains("rollback"), "{event}");
}
