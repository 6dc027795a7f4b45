//! The plugin configuration's tests: the single form, errors by field.

use super::*;
use crate::user_id::StickyCookie;

/// The one deployment of a single-form configuration, and its analyzer section.
pub(crate) fn one(json: &str) -> (DeploymentConfig, Option<AnalyzerConfig>) {
    let mut config = parse(json).unwrap();
    assert_eq!(config.deployments.len(), 1, "{json}");
    (config.deployments.remove(0), config.analyzer)
}

/// Also the outcome rules' tests' (`config::outcomes`).
pub(crate) fn parse(json: &str) -> Result<FilterConfig, ConfigError> {
    FilterConfig::parse(json.as_bytes())
}

pub(crate) fn error(json: &str) -> ConfigError {
    match parse(json) {
        Ok(c) => panic!("expected an error for {json}, got {c:?}"),
        Err(e) => e,
    }
}

#[test]
fn minimal_config_gets_the_documented_defaults() {
    let (c, analyzer) = one(r#"{"deployment":"checkout"}"#);
    assert_eq!(c.routing_header, "x-canary-cohort");
    assert_eq!(c.initial_share, Share::ZERO);
    assert!(c.sources.is_empty());
    assert_eq!(c.anonymous, AnonymousPolicy::Sticky(StickyCookie { name: "canary_uid".into(), max_age_s: 31_536_000 }));
    assert!(analyzer.is_none());
}

#[test]
fn full_config_is_validated_into_typed_values() {
    let (c, analyzer) = one(r#"{"deployment":"checkout","routing_header":"X-Cohort",
            "user_id":{"sources":[{"header":"X-User-Id"},{"cookie":"session"}],"anonymous":"control"},
            "population":{"all":[{"header":"x-internal","equals":"true"}],"any":[{"cookie":"beta","present":true}],
                          "allow":["qa-1"],"deny":["vip-1"]},
            "initial_share_bp":100,
            "analyzer":{"cluster":"analyzer","poll_interval_ms":500,"timeout_ms":200,"when_stale":"control"}}"#);
    assert_eq!(c.routing_header, "x-cohort");
    assert_eq!(c.sources, vec![IdSource::Header("x-user-id".into()), IdSource::Cookie("session".into())]);
    assert_eq!(c.anonymous, AnonymousPolicy::Control);
    assert_eq!(c.eligibility.all.len(), 1);
    assert_eq!(c.eligibility.any.len(), 1);
    assert!(c.allow.contains("qa-1") && c.deny.contains("vip-1"));
    let a = analyzer.unwrap();
    assert_eq!(a.path, "/v1/rollouts/checkout/config");
    assert_eq!(a.authority, "analyzer");
    assert_eq!(a.stale_after_ms, 60_000);
    assert_eq!(a.when_stale, WhenStale::Control);
}

/// Found by `mutated_configurations_never_panic_and_refusals_name_a_field`
/// (tests/parser_properties): `2 * poll_interval_ms` overflowed u32 above 2^31 - 1,
/// a panic in debug builds and, wrapped in the filter's release build, a stale bound
/// far below the interval. The interval is now capped at two intervals fitting a u32.
#[test]
fn regression_a_poll_interval_whose_double_overflows_is_refused() {
    for poll in [2_147_483_648u32, 3_000_000_000, u32::MAX] {
        let e = error(&format!(r#"{{"deployment":"a","analyzer":{{"cluster":"c","poll_interval_ms":{poll}}}}}"#));
        assert_eq!((e.field.as_str(), e.value.as_str()), ("analyzer.poll_interval_ms", poll.to_string().as_str()));
        assert!(e.expected.contains("at most 2147483647"), "{e}");
    }
    let most = parse(r#"{"deployment":"a","analyzer":{"cluster":"c","poll_interval_ms":2147483647}}"#).unwrap();
    let analyzer = most.analyzer.unwrap();
    assert_eq!((analyzer.poll_interval_ms, analyzer.stale_after_ms), (2_147_483_647, 4_294_967_294));
}

/// Found by `generated_configurations_are_accepted_consistently_or_refused_by_field`
/// (tests/parser_properties): the unknown key was cut at its first backtick, so
/// `` {"`":1} `` and `{"":1}` named the empty field, and serde's message quotes the
/// key raw, so `{"a\nb":1}` split the error over two log lines.
#[test]
fn regression_unknown_keys_are_named_on_one_line_whatever_they_hold() {
    for (json, field) in [
        (r#"{"deployment":"a","`":1}"#, "`"),
        (r#"{"deployment":"a","x`, y":1}"#, "x`, y"),
        (r#"{"deployment":"a","":1}"#, r#""""#),
        (r#"{"deployment":"a","a\nb":1}"#, r#""a\nb""#),
        (r#"{"deployment":"a","user_id":{"\u001b[31m":1}}"#, r#""\u{1b}[31m""#),
    ] {
        let e = error(json);
        assert_eq!(e.field, field, "for {json}: {e}");
        assert!(!e.to_string().chars().any(char::is_control), "for {json}: {e}");
    }
}

/// Every error path: (configuration, field named, a word of what was expected).
#[test]
fn every_error_names_field_value_and_expectation() {
    let cases: &[(&str, &str, &str)] = &[
        ("not json", "(document)", "JSON"),
        (r#"{"deployment":"a","colour":1}"#, "colour", "JSON"),
        (r#"{"deployment":"a","user_id":{"sorces":[]}}"#, "sorces", "JSON"),
        (r#"{}"#, "deployment", "deployment id"),
        (r#"{"deployment":""}"#, "deployment", "1 to 63"),
        (r#"{"deployment":"check.out"}"#, "deployment", "[A-Za-z0-9_-]"),
        (&format!(r#"{{"deployment":"{}"}}"#, "a".repeat(64)), "deployment", "1 to 63"),
        (r#"{"deployment":"a","routing_header":":path"}"#, "routing_header", "header name"),
        (r#"{"deployment":"a","routing_header":""}"#, "routing_header", "header name"),
        (r#"{"deployment":"a","user_id":{"sources":[{}]}}"#, "user_id.sources[0]", "exactly one"),
        (
            r#"{"deployment":"a","user_id":{"sources":[{"header":"a","cookie":"b"}]}}"#,
            "user_id.sources[0]",
            "exactly one",
        ),
        (r#"{"deployment":"a","user_id":{"sources":[{"header":"x y"}]}}"#, "user_id.sources[0].header", "header name"),
        (r#"{"deployment":"a","user_id":{"sources":[{"cookie":"a;b"}]}}"#, "user_id.sources[0].cookie", "cookie name"),
        (r#"{"deployment":"a","user_id":{"anonymous":"random"}}"#, "user_id.anonymous", "sticky_cookie"),
        (r#"{"deployment":"a","user_id":{"anonymous":"control"}}"#, "user_id.sources", "at least one"),
        (r#"{"deployment":"a","user_id":{"sticky_cookie":"a=b"}}"#, "user_id.sticky_cookie", "cookie name"),
        (r#"{"deployment":"a","population":{"all":[{"equals":"x"}]}}"#, "population.all[0]", "exactly one of `header`"),
        (r#"{"deployment":"a","population":{"any":[{"header":"h"}]}}"#, "population.any[0]", "exactly one of `equals`"),
        (
            r#"{"deployment":"a","population":{"any":[{"header":"h","equals":"a","suffix":"b"}]}}"#,
            "population.any[0]",
            "exactly one of `equals`",
        ),
        (
            r#"{"deployment":"a","population":{"all":[{"header":"h h","present":true}]}}"#,
            "population.all[0].header",
            "header name",
        ),
        (r#"{"deployment":"a","population":{"allow":["x",""]}}"#, "population.allow[1]", "non-empty"),
        (r#"{"deployment":"a","population":{"deny":[""]}}"#, "population.deny[0]", "non-empty"),
        (r#"{"deployment":"a","initial_share_bp":10001}"#, "initial_share_bp", "0 to 10000"),
        (r#"{"deployment":"a","initial_share_bp":-1}"#, "(document)", "JSON"),
        (r#"{"deployment":"a","analyzer":{}}"#, "analyzer.cluster", "Envoy cluster"),
        (r#"{"deployment":"a","analyzer":{"cluster":""}}"#, "analyzer.cluster", "Envoy cluster"),
        (r#"{"deployment":"a","analyzer":{"cluster":"c","path":"config"}}"#, "analyzer.path", "'/'"),
        (
            r#"{"deployment":"a","analyzer":{"cluster":"c","poll_interval_ms":10}}"#,
            "analyzer.poll_interval_ms",
            "at least 100",
        ),
        (r#"{"deployment":"a","analyzer":{"cluster":"c","timeout_ms":0}}"#, "analyzer.timeout_ms", "between 1"),
        (
            r#"{"deployment":"a","analyzer":{"cluster":"c","poll_interval_ms":500,"timeout_ms":501}}"#,
            "analyzer.timeout_ms",
            "between 1",
        ),
        (
            r#"{"deployment":"a","analyzer":{"cluster":"c","poll_interval_ms":500,"stale_after_ms":999}}"#,
            "analyzer.stale_after_ms",
            "two poll intervals",
        ),
        (r#"{"deployment":"a","analyzer":{"cluster":"c","when_stale":"panic"}}"#, "analyzer.when_stale", "\"keep\""),
    ];
    for (json, field, expected) in cases {
        let e = error(json);
        assert_eq!(&e.field, field, "for {json}: {e}");
        assert!(e.expected.contains(expected), "for {json}: {e}");
        assert!(!e.value.is_empty(), "for {json}: {e}");
        let line = e.to_string();
        assert!(line.contains(field) && !line.contains('\n'), "one line naming the field: {line}");
    }
}

mod list_form {
    use super::*;

    const TWO: &str = r#"{
        "routing_header": "x-cohort",
        "defaults": {"user_id": {"sources": [{"header": "x-user-id"}], "anonymous": "control"}, "initial_share_bp": 100},
        "deployments": [
            {"id": "checkout", "match": {"hosts": ["shop.example", "*.shop.example:8443"], "paths": ["/checkout"]}},
            {"id": "orders", "match": {"hosts": ["orders"]}, "initial_share_bp": 0, "protocol": "grpc",
             "user_id": {"sources": [{"cookie": "uid"}]}, "routing_header": "x-orders-cohort"}
        ],
        "analyzer": {"cluster": "analyzer"}
    }"#;

    fn find(config: &FilterConfig, authority: &str, path: &str) -> Option<usize> {
        config.deployment_for(|| Some(authority.as_bytes().to_vec()), || Some(path.as_bytes().to_vec()))
    }

    #[test]
    fn deployments_take_the_defaults_they_do_not_replace_and_match_by_host_and_path() {
        let c = parse(TWO).unwrap();
        assert_eq!(c.deployment_ids(), ["checkout", "orders"]);
        let (checkout, orders) = (&c.deployments[0], &c.deployments[1]);
        assert_eq!(checkout.sources, vec![IdSource::Header("x-user-id".into())]);
        assert_eq!(checkout.anonymous, AnonymousPolicy::Control);
        assert_eq!((checkout.initial_share.basis_points(), checkout.protocol), (100, Protocol::Http));
        assert_eq!(checkout.routing_header, "x-cohort");
        assert_eq!(orders.sources, vec![IdSource::Cookie("uid".into())], "a setting given replaces the default whole");
        assert!(matches!(orders.anonymous, AnonymousPolicy::Sticky(_)));
        assert_eq!((orders.initial_share.basis_points(), orders.protocol), (0, Protocol::Grpc));
        assert_eq!(orders.routing_header, "x-orders-cohort");
        assert_eq!(find(&c, "shop.example", "/checkout/pay"), Some(0));
        assert_eq!(find(&c, "www.shop.example:8443", "/checkout"), Some(0));
        assert_eq!(find(&c, "www.shop.example", "/checkout"), None, "the wildcard names a port");
        assert_eq!(find(&c, "shop.example", "/"), None);
        assert_eq!(find(&c, "orders:50051", "/orders.Orders/Get"), Some(1));
        let a = c.analyzer.unwrap();
        assert_eq!(a.poll, PollKind::Batch);
        assert_eq!(a.path, "/v1/config?deployments=checkout,orders");
        assert!(a.scope.starts_with("batch-") && a.scope.len() == 22, "{}", a.scope);
    }

    #[test]
    fn the_single_form_matches_every_request_without_reading_a_header() {
        let c = parse(r#"{"deployment":"checkout","protocol":"grpc","analyzer":{"cluster":"a"}}"#).unwrap();
        let found = c.deployment_for(|| panic!("no :authority read"), || panic!("no :path read"));
        assert_eq!(found, Some(0));
        assert_eq!(c.deployments[0].protocol, Protocol::Grpc);
        let a = c.analyzer.unwrap();
        assert_eq!(
            (a.poll, a.scope.as_str(), a.path.as_str()),
            (PollKind::One, "checkout", "/v1/rollouts/checkout/config")
        );
    }

    #[test]
    fn a_deployment_without_a_match_takes_what_no_other_matches() {
        let c = parse(r#"{"deployments":[{"id":"web"},{"id":"api","match":{"hosts":["api.example"]}}]}"#).unwrap();
        assert_eq!(find(&c, "api.example", "/"), Some(1));
        assert_eq!(find(&c, "other.example", "/"), Some(0));
    }

    #[test]
    fn list_form_errors_name_the_deployment_field_and_what_was_expected() {
        let many = format!(
            r#"{{"deployments":[{}]}}"#,
            (0..501).map(|i| format!(r#"{{"id":"d{i}","match":{{"hosts":["h{i}"]}}}}"#)).collect::<Vec<_>>().join(",")
        );
        let cases: &[(&str, &str, &str)] = &[
            (r#"{"deployment":"a","deployments":[{"id":"b"}]}"#, "deployments", "either `deployment`"),
            (r#"{"deployment":"a","defaults":{}}"#, "defaults", "only with a `deployments` list"),
            (r#"{"deployments":[]}"#, "deployments", "1 to 500"),
            (&many, "deployments", "1 to 500"),
            (r#"{"deployments":[{"id":"a"}],"user_id":{}}"#, "user_id", "`defaults.user_id`"),
            (r#"{"deployments":[{"id":"a"}],"initial_share_bp":5}"#, "initial_share_bp", "`defaults.initial_share_bp`"),
            (r#"{"deployments":[{}]}"#, "deployments[0].id", "deployment id"),
            (r#"{"deployments":[{"id":"a.b"}]}"#, "deployments[0].id", "[A-Za-z0-9_-]"),
            (
                r#"{"deployments":[{"id":"a"},{"id":"a","match":{"hosts":["x"]}}]}"#,
                "deployments[1].id",
                "`deployments[0]` has it",
            ),
            (r#"{"deployments":[{"id":"a","match":{"hosts":["a b"]}}]}"#, "deployments[0].match.hosts[0]", "host name"),
            (r#"{"deployments":[{"id":"a","match":{"hosts":["a:0"]}}]}"#, "deployments[0].match.hosts[0]", ":port"),
            (r#"{"deployments":[{"id":"a","match":{"paths":["api"]}}]}"#, "deployments[0].match.paths[0]", "'/'"),
            (r#"{"deployments":[{"id":"a","match":{"host":["x"]}}]}"#, "host", "JSON"),
            (r#"{"deployments":[{"id":"a","colour":1}]}"#, "colour", "JSON"),
            (
                r#"{"deployments":[{"id":"a","match":{"hosts":["x"]}},{"id":"b","match":{"hosts":["X"]}}]}"#,
                "deployments[1].match",
                r#"`deployments[0]` ("a")"#,
            ),
            (r#"{"deployments":[{"id":"a"},{"id":"b"}]}"#, "deployments[1].match", "matches them already"),
            (r#"{"deployments":[{"id":"a","protocol":"h3"}]}"#, "deployments[0].protocol", "\"grpc\""),
            (r#"{"deployment":"a","protocol":"h3"}"#, "protocol", "\"grpc\""),
            (
                r#"{"deployments":[{"id":"a","initial_share_bp":10001}]}"#,
                "deployments[0].initial_share_bp",
                "0 to 10000",
            ),
            (
                r#"{"defaults":{"user_id":{"anonymous":"random"}},"deployments":[{"id":"a"}]}"#,
                "defaults.user_id.anonymous",
                "sticky_cookie",
            ),
            (
                r#"{"deployments":[{"id":"a","population":{"deny":[""]}}]}"#,
                "deployments[0].population.deny[0]",
                "non-empty",
            ),
            (r#"{"deployments":[{"id":"a","outcomes":[{"name":"X"}]}]}"#, "deployments[0].outcomes[0].name", "[a-z]"),
            (
                r#"{"deployments":[{"id":"a"}],"analyzer":{"cluster":"c","path":"/v1/config?x=1"}}"#,
                "analyzer.path",
                "without a query",
            ),
            (r#"{"deployments":[{"id":"a","routing_header":":x"}]}"#, "deployments[0].routing_header", "header name"),
        ];
        for (json, field, expected) in cases {
            let e = error(json);
            assert_eq!(&e.field, field, "for {json}: {e}");
            assert!(e.expected.contains(expected), "for {json}: {e}");
        }
    }
}

#[test]
fn routing_only_is_chosen_per_deployment_or_for_all_and_refuses_outcomes() {
    let (c, _) = one(r#"{"deployment":"checkout","metrics":"none"}"#);
    assert_eq!(c.metrics, DeploymentMetrics::None);
    assert!(!c.metrics.counts_requests());
    assert_eq!(one(r#"{"deployment":"checkout"}"#).0.metrics, DeploymentMetrics::PerCohort);
    let list = parse(
        r#"{"defaults":{"metrics":"none"},"deployments":[
            {"id":"orders","match":{"hosts":["orders"]}},
            {"id":"payments","match":{"hosts":["payments"]},"metrics":"per_cohort"}]}"#,
    )
    .unwrap();
    let modes: Vec<DeploymentMetrics> = list.deployments.iter().map(|d| d.metrics).collect();
    assert_eq!(modes, [DeploymentMetrics::None, DeploymentMetrics::PerCohort]);

    let e = error(r#"{"deployment":"checkout","metrics":"off"}"#);
    assert_eq!((e.field.as_str(), e.value.as_str()), ("metrics", "\"off\""));
    assert!(e.expected.contains("\"none\" (route only)"), "{e}");
    let e = error(r#"{"deployments":[{"id":"a","match":{"hosts":["a"]},"metrics":"all"}]}"#);
    assert_eq!(e.field, "deployments[0].metrics");
    let e = error(r#"{"deployment":"checkout","metrics":"none","outcomes":[{"name":"hit","status":402}]}"#);
    assert_eq!((e.field.as_str(), e.value.as_str()), ("outcomes", "(1 rules)"));
    let e = error(r#"{"metrics":"none","deployments":[{"id":"a","match":{"hosts":["a"]}}]}"#);
    assert_eq!(e.field, "metrics");
    assert!(e.expected.contains("`defaults.metrics`"), "{e}");
}
