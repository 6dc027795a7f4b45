//! The filter's plugin configuration: raw JSON in, a validated [`FilterConfig`] out.
//!
//! The same JSON is Envoy's `configuration` string and Istio's `pluginConfig`.
//! Unknown fields are refused so a typo never silently changes behaviour, and
//! every error names the field, the value and what was expected.

use crate::cohort::Share;
use crate::outcome::OutcomeRules;
use crate::population::{Eligibility, MatchOp, Rule, RuleSubject};
use crate::user_id::{AnonymousPolicy, IdSource, StickyCookie};
use serde::Deserialize;
use std::collections::HashSet;

mod outcomes;

/// A refused configuration: `field` is a dotted path into the JSON.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid plugin configuration: field `{field}` = {value}: expected {expected}")]
pub struct ConfigError {
    pub field: String,
    pub value: String,
    pub expected: String,
}

impl ConfigError {
    fn new(field: impl Into<String>, value: impl std::fmt::Display, expected: impl Into<String>) -> Self {
        Self { field: field.into(), value: value.to_string(), expected: expected.into() }
    }
}

/// Defaults, each with its reason.
pub mod defaults {
    /// The header Envoy/Istio routes match on.
    pub const ROUTING_HEADER: &str = "x-canary-cohort";
    /// Sticky cookie for anonymous users.
    pub const STICKY_COOKIE: &str = "canary_uid";
    /// One year: long enough that returning visitors keep their cohort for a whole rollout.
    pub const STICKY_MAX_AGE_S: u32 = 31_536_000;
    /// A rollout step lasts minutes; 5 s keeps a rollback visible in every Envoy within ~10 s.
    pub const POLL_INTERVAL_MS: u32 = 5_000;
    /// The analyzer answers from memory; 1 s means it is down, not slow.
    pub const POLL_TIMEOUT_MS: u32 = 1_000;
    /// Twelve missed polls at the default interval before the share counts as stale.
    pub const STALE_AFTER_MS: u32 = 60_000;
}

/// Longest accepted deployment id: a Kubernetes label value.
const MAX_DEPLOYMENT_LEN: usize = 63;

/// The deployment-id rule of the contract, shared by the filter's configuration and
/// the analyzer's policy: 1 to 63 characters of `[A-Za-z0-9_-]`. The id becomes a
/// metric label and a stat-name segment (no dots) and is hashed before `:`, so the
/// concatenation with the user id is unambiguous.
pub fn is_valid_deployment_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_DEPLOYMENT_LEN
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}
/// The poll interval floor: every VM ticks at a quarter of it, below 100 ms that is busy-work.
const MIN_POLL_INTERVAL_MS: u32 = 100;
/// The poll interval ceiling (~24.8 days): `stale_after_ms` must be at least two
/// intervals and is a u32, so two intervals must fit in one.
const MAX_POLL_INTERVAL_MS: u32 = u32::MAX / 2;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    deployment: Option<String>,
    #[serde(default)]
    user_id: RawUserId,
    routing_header: Option<String>,
    #[serde(default)]
    population: RawPopulation,
    /// Share applied before the first answer from the analyzer (or forever, without one).
    #[serde(default)]
    initial_share_bp: u32,
    analyzer: Option<RawAnalyzer>,
    /// Outcome rules, read loosely here so each rule's errors can name `outcomes[i].<key>`.
    outcomes: Option<outcomes::Json>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUserId {
    #[serde(default)]
    sources: Vec<RawSource>,
    anonymous: Option<String>,
    sticky_cookie: Option<String>,
    sticky_max_age_s: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    header: Option<String>,
    cookie: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPopulation {
    /// Eligible if every rule matches.
    #[serde(default)]
    all: Vec<RawRule>,
    /// Eligible if at least one rule matches (checked after `all`).
    #[serde(default)]
    any: Vec<RawRule>,
    #[serde(default)]
    allow: Vec<String>,
    #[serde(default)]
    deny: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    header: Option<String>,
    cookie: Option<String>,
    equals: Option<String>,
    prefix: Option<String>,
    suffix: Option<String>,
    present: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAnalyzer {
    cluster: Option<String>,
    authority: Option<String>,
    path: Option<String>,
    poll_interval_ms: Option<u32>,
    timeout_ms: Option<u32>,
    stale_after_ms: Option<u32>,
    when_stale: Option<String>,
}

/// The validated configuration; the rest of the filter never sees JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct FilterConfig {
    pub deployment: String,
    pub sources: Vec<IdSource>,
    pub anonymous: AnonymousPolicy,
    /// Lower-case header name.
    pub routing_header: String,
    pub eligibility: Eligibility,
    pub allow: HashSet<String>,
    pub deny: HashSet<String>,
    pub initial_share: Share,
    pub analyzer: Option<AnalyzerConfig>,
    /// Per-cohort rates counted in `on_log` (`outcomes`), empty by default.
    pub outcomes: OutcomeRules,
}

/// Where and how often the filter polls its rollout config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnalyzerConfig {
    pub cluster: String,
    pub authority: String,
    pub path: String,
    pub poll_interval_ms: u32,
    pub timeout_ms: u32,
    pub stale_after_ms: u32,
    pub when_stale: WhenStale,
}

/// What to do once the last good answer is older than `stale_after_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenStale {
    /// Keep routing at the last known share (availability first).
    Keep,
    /// Send everybody to stable until the analyzer answers again (safety first).
    Control,
}

impl FilterConfig {
    /// Parses and validates plugin configuration bytes.
    pub fn parse(bytes: &[u8]) -> Result<FilterConfig, ConfigError> {
        let raw: RawConfig = serde_json::from_slice(bytes).map_err(|e| {
            let text = String::from_utf8_lossy(bytes);
            let shown: String = text.chars().take(80).collect();
            ConfigError::new(
                json_error_field(&e),
                format!("{shown:?}"),
                format!("valid plugin configuration JSON ({})", one_line(&e.to_string())),
            )
        })?;
        raw.validate()
    }

    /// The default poll path for a deployment.
    pub fn default_poll_path(deployment: &str) -> String {
        format!("/v1/rollouts/{deployment}/config")
    }
}

/// serde_json reports unknown fields as "unknown field `x`, expected ...": name the field when it can.
/// The key is as written, so it may hold backticks (the last "`, expected" ends it) or
/// line breaks; an empty key or one with control characters is shown quoted and escaped.
fn json_error_field(e: &serde_json::Error) -> String {
    let message = e.to_string();
    let key = message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.rfind("`, expected").and_then(|end| rest.get(..end)));
    match key {
        Some(key) if key.is_empty() || key.chars().any(char::is_control) => format!("{key:?}"),
        Some(key) => key.to_string(),
        None => "(document)".to_string(),
    }
}

/// `text` with control characters escaped (`\n`, `\u{1b}`), so an error quoting a
/// key or value as serde wrote it stays one log line. The analyzer's errors use it too.
pub fn one_line(text: &str) -> String {
    let mut line = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            line.extend(c.escape_default());
        } else {
            line.push(c);
        }
    }
    line
}

impl RawConfig {
    fn validate(self) -> Result<FilterConfig, ConfigError> {
        let deployment =
            self.deployment.ok_or_else(|| ConfigError::new("deployment", "(missing)", "a deployment id"))?;
        if !is_valid_deployment_id(&deployment) {
            return Err(ConfigError::new(
                "deployment",
                format!("{deployment:?}"),
                "1 to 63 characters from [A-Za-z0-9_-] (it becomes a metric label and part of the hash)",
            ));
        }
        let routing_header =
            header_name("routing_header", self.routing_header.as_deref().unwrap_or(defaults::ROUTING_HEADER))?;
        let (sources, anonymous) = self.user_id.validate()?;
        let (eligibility, allow, deny) = self.population.validate()?;
        let initial_share = Share::from_basis_points(self.initial_share_bp).ok_or_else(|| {
            ConfigError::new("initial_share_bp", self.initial_share_bp, "basis points from 0 to 10000")
        })?;
        let analyzer = self.analyzer.map(|a| a.validate(&deployment)).transpose()?;
        let outcomes = self.outcomes.map(outcomes::validate).transpose()?.unwrap_or_default();
        Ok(FilterConfig {
            deployment,
            sources,
            anonymous,
            routing_header,
            eligibility,
            allow,
            deny,
            initial_share,
            analyzer,
            outcomes,
        })
    }
}

/// HTTP header names (RFC 9110 tokens), lower-cased as Envoy stores them; pseudo-headers refused.
fn header_name(field: &str, name: &str) -> Result<String, ConfigError> {
    let is_token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.is_empty() || !name.bytes().all(is_token) {
        return Err(ConfigError::new(field, format!("{name:?}"), "an HTTP header name (letters, digits, '-', no ':')"));
    }
    Ok(name.to_ascii_lowercase())
}

/// Cookie names are tokens too.
fn cookie_name(field: &str, name: &str) -> Result<String, ConfigError> {
    header_name(field, name)
        .map(|_| name.to_string())
        .map_err(|_| ConfigError::new(field, format!("{name:?}"), "a cookie name (letters, digits, '-', '_')"))
}

impl RawUserId {
    fn validate(self) -> Result<(Vec<IdSource>, AnonymousPolicy), ConfigError> {
        let mut sources = Vec::with_capacity(self.sources.len());
        for (i, s) in self.sources.into_iter().enumerate() {
            let field = format!("user_id.sources[{i}]");
            sources.push(match (s.header, s.cookie) {
                (Some(h), None) => IdSource::Header(header_name(&format!("{field}.header"), &h)?),
                (None, Some(c)) => IdSource::Cookie(cookie_name(&format!("{field}.cookie"), &c)?),
                _ => return Err(ConfigError::new(field, "(both or neither)", "exactly one of `header` or `cookie`")),
            });
        }
        let anonymous = match self.anonymous.as_deref().unwrap_or("sticky_cookie") {
            "control" => AnonymousPolicy::Control,
            "sticky_cookie" => AnonymousPolicy::Sticky(StickyCookie {
                name: cookie_name(
                    "user_id.sticky_cookie",
                    self.sticky_cookie.as_deref().unwrap_or(defaults::STICKY_COOKIE),
                )?,
                max_age_s: self.sticky_max_age_s.unwrap_or(defaults::STICKY_MAX_AGE_S),
            }),
            other => {
                return Err(ConfigError::new(
                    "user_id.anonymous",
                    format!("{other:?}"),
                    "\"sticky_cookie\" or \"control\"",
                ));
            }
        };
        if sources.is_empty() && anonymous == AnonymousPolicy::Control {
            return Err(ConfigError::new(
                "user_id.sources",
                "[]",
                "at least one header or cookie source when `anonymous` is \"control\" (otherwise nobody is ever canary)",
            ));
        }
        Ok((sources, anonymous))
    }
}

impl RawPopulation {
    fn validate(self) -> Result<(Eligibility, HashSet<String>, HashSet<String>), ConfigError> {
        let rules = |list: Vec<RawRule>, name: &str| -> Result<Vec<Rule>, ConfigError> {
            list.into_iter().enumerate().map(|(i, r)| r.validate(&format!("population.{name}[{i}]"))).collect()
        };
        let eligibility = Eligibility { all: rules(self.all, "all")?, any: rules(self.any, "any")? };
        let ids = |list: Vec<String>, name: &str| -> Result<HashSet<String>, ConfigError> {
            match list.iter().position(|id| id.is_empty()) {
                Some(i) => Err(ConfigError::new(format!("population.{name}[{i}]"), "\"\"", "a non-empty user id")),
                None => Ok(list.into_iter().collect()),
            }
        };
        Ok((eligibility, ids(self.allow, "allow")?, ids(self.deny, "deny")?))
    }
}

impl RawRule {
    fn validate(self, field: &str) -> Result<Rule, ConfigError> {
        let subject = match (self.header, self.cookie) {
            (Some(h), None) => RuleSubject::Header(header_name(&format!("{field}.header"), &h)?),
            (None, Some(c)) => RuleSubject::Cookie(cookie_name(&format!("{field}.cookie"), &c)?),
            _ => return Err(ConfigError::new(field, "(both or neither)", "exactly one of `header` or `cookie`")),
        };
        let op = match (self.equals, self.prefix, self.suffix, self.present) {
            (Some(v), None, None, None) => MatchOp::Equals(v),
            (None, Some(v), None, None) => MatchOp::Prefix(v),
            (None, None, Some(v), None) => MatchOp::Suffix(v),
            (None, None, None, Some(p)) => MatchOp::Present(p),
            _ => {
                return Err(ConfigError::new(
                    field,
                    "(zero or several operators)",
                    "exactly one of `equals`, `prefix`, `suffix` or `present`",
                ));
            }
        };
        Ok(Rule { subject, op })
    }
}

impl RawAnalyzer {
    fn validate(self, deployment: &str) -> Result<AnalyzerConfig, ConfigError> {
        let cluster = self
            .cluster
            .filter(|c| !c.is_empty())
            .ok_or_else(|| ConfigError::new("analyzer.cluster", "(missing)", "the name of an Envoy cluster"))?;
        let authority = self.authority.unwrap_or_else(|| cluster.clone());
        let path = self.path.unwrap_or_else(|| FilterConfig::default_poll_path(deployment));
        if !path.starts_with('/') {
            return Err(ConfigError::new("analyzer.path", format!("{path:?}"), "a path starting with '/'"));
        }
        let poll_interval_ms = self.poll_interval_ms.unwrap_or(defaults::POLL_INTERVAL_MS);
        if poll_interval_ms < MIN_POLL_INTERVAL_MS {
            return Err(ConfigError::new("analyzer.poll_interval_ms", poll_interval_ms, "at least 100"));
        }
        if poll_interval_ms > MAX_POLL_INTERVAL_MS {
            return Err(ConfigError::new(
                "analyzer.poll_interval_ms",
                poll_interval_ms,
                format!("at most {MAX_POLL_INTERVAL_MS} (two intervals must fit in `stale_after_ms`)"),
            ));
        }
        // Cannot overflow: at most MAX_POLL_INTERVAL_MS.
        let two_intervals_ms = 2 * poll_interval_ms;
        let timeout_ms = self.timeout_ms.unwrap_or(defaults::POLL_TIMEOUT_MS.min(poll_interval_ms));
        if timeout_ms == 0 || timeout_ms > poll_interval_ms {
            return Err(ConfigError::new(
                "analyzer.timeout_ms",
                timeout_ms,
                format!("between 1 and the poll interval ({poll_interval_ms})"),
            ));
        }
        let stale_after_ms = self.stale_after_ms.unwrap_or(defaults::STALE_AFTER_MS.max(two_intervals_ms));
        if stale_after_ms < two_intervals_ms {
            return Err(ConfigError::new(
                "analyzer.stale_after_ms",
                stale_after_ms,
                format!("at least two poll intervals ({two_intervals_ms})"),
            ));
        }
        let when_stale = match self.when_stale.as_deref().unwrap_or("keep") {
            "keep" => WhenStale::Keep,
            "control" => WhenStale::Control,
            other => {
                return Err(ConfigError::new("analyzer.when_stale", format!("{other:?}"), "\"keep\" or \"control\""));
            }
        };
        Ok(AnalyzerConfig { cluster, authority, path, poll_interval_ms, timeout_ms, stale_after_ms, when_stale })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Also the outcome rules' tests' (`config::outcomes`).
    pub(super) fn parse(json: &str) -> Result<FilterConfig, ConfigError> {
        FilterConfig::parse(json.as_bytes())
    }

    pub(super) fn error(json: &str) -> ConfigError {
        match parse(json) {
            Ok(c) => panic!("expected an error for {json}, got {c:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn minimal_config_gets_the_documented_defaults() {
        let c = parse(r#"{"deployment":"checkout"}"#).unwrap();
        assert_eq!(c.routing_header, "x-canary-cohort");
        assert_eq!(c.initial_share, Share::ZERO);
        assert!(c.sources.is_empty());
        assert_eq!(
            c.anonymous,
            AnonymousPolicy::Sticky(StickyCookie { name: "canary_uid".into(), max_age_s: 31_536_000 })
        );
        assert!(c.analyzer.is_none());
    }

    #[test]
    fn full_config_is_validated_into_typed_values() {
        let c = parse(
            r#"{"deployment":"checkout","routing_header":"X-Cohort",
                "user_id":{"sources":[{"header":"X-User-Id"},{"cookie":"session"}],"anonymous":"control"},
                "population":{"all":[{"header":"x-internal","equals":"true"}],"any":[{"cookie":"beta","present":true}],
                              "allow":["qa-1"],"deny":["vip-1"]},
                "initial_share_bp":100,
                "analyzer":{"cluster":"analyzer","poll_interval_ms":500,"timeout_ms":200,"when_stale":"control"}}"#,
        )
        .unwrap();
        assert_eq!(c.routing_header, "x-cohort");
        assert_eq!(c.sources, vec![IdSource::Header("x-user-id".into()), IdSource::Cookie("session".into())]);
        assert_eq!(c.anonymous, AnonymousPolicy::Control);
        assert_eq!(c.eligibility.all.len(), 1);
        assert_eq!(c.eligibility.any.len(), 1);
        assert!(c.allow.contains("qa-1") && c.deny.contains("vip-1"));
        let a = c.analyzer.unwrap();
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
            (
                r#"{"deployment":"a","user_id":{"sources":[{"header":"x y"}]}}"#,
                "user_id.sources[0].header",
                "header name",
            ),
            (
                r#"{"deployment":"a","user_id":{"sources":[{"cookie":"a;b"}]}}"#,
                "user_id.sources[0].cookie",
                "cookie name",
            ),
            (r#"{"deployment":"a","user_id":{"anonymous":"random"}}"#, "user_id.anonymous", "sticky_cookie"),
            (r#"{"deployment":"a","user_id":{"anonymous":"control"}}"#, "user_id.sources", "at least one"),
            (r#"{"deployment":"a","user_id":{"sticky_cookie":"a=b"}}"#, "user_id.sticky_cookie", "cookie name"),
            (
                r#"{"deployment":"a","population":{"all":[{"equals":"x"}]}}"#,
                "population.all[0]",
                "exactly one of `header`",
            ),
            (
                r#"{"deployment":"a","population":{"any":[{"header":"h"}]}}"#,
                "population.any[0]",
                "exactly one of `equals`",
            ),
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
            (
                r#"{"deployment":"a","analyzer":{"cluster":"c","when_stale":"panic"}}"#,
                "analyzer.when_stale",
                "\"keep\"",
            ),
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
}
