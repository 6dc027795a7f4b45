//! The filter's plugin configuration: raw JSON in, a validated [`FilterConfig`] out.
//!
//! The same JSON is Envoy's `configuration` string and Istio's `pluginConfig`.
//! Unknown fields are refused so a typo never silently changes behaviour, and
//! every error names the field, the value and what was expected.

use crate::cohort::Share;
use crate::outcome::{MAX_OUTCOMES, OutcomeMatch, OutcomeRule, OutcomeRules, is_valid_outcome_name};
use crate::population::{Eligibility, MatchOp, Rule, RuleSubject};
use crate::user_id::{AnonymousPolicy, IdSource, StickyCookie};
use serde::Deserialize;
use std::collections::HashSet;

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
    /// Outcome rules, kept raw here so each rule's errors can name `outcomes[i]`.
    outcomes: Option<serde_json::Value>,
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
/// key or value as serde wrote it stays one log line.
pub(crate) fn one_line(text: &str) -> String {
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
        let outcomes = self.outcomes.map(outcome_rules).transpose()?.unwrap_or_default();
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

/// What an outcome name must look like, for error messages.
const OUTCOME_NAME_RULE: &str = "a name from [a-z][a-z0-9_]{0,31} (it becomes the `outcome` label), e.g. \"cache_hit\"";

/// The keys of an outcome rule, for the unknown-field error.
const OUTCOME_KEYS: &str = "one of `name`, `response_header`, `equals`, `above`, `status`, `path_prefix`, `methods`";

/// Longest JSON value quoted in an outcome error: enough to recognise it, one log line.
const SHOWN_VALUE_CHARS: usize = 60;

/// One outcome rule as written. Every value is kept raw so that a wrong type is
/// refused naming `outcomes[i].<key>` (serde's own message names no field).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOutcome {
    name: Option<serde_json::Value>,
    /// With `equals` (a string) or `above` (a number).
    response_header: Option<serde_json::Value>,
    equals: Option<serde_json::Value>,
    above: Option<serde_json::Value>,
    /// The other match kind: a status code.
    status: Option<serde_json::Value>,
    path_prefix: Option<serde_json::Value>,
    methods: Option<serde_json::Value>,
}

/// A JSON value as an error shows it: compact, on one line, cut at [`SHOWN_VALUE_CHARS`].
fn shown(value: &serde_json::Value) -> String {
    let text = one_line(&value.to_string());
    if text.chars().count() <= SHOWN_VALUE_CHARS {
        return text;
    }
    let cut: String = text.chars().take(SHOWN_VALUE_CHARS).collect();
    format!("{cut}...")
}

/// An optional string field of an outcome rule.
fn outcome_text(field: &str, key: &str, value: Option<serde_json::Value>) -> Result<Option<String>, ConfigError> {
    match value {
        None => Ok(None),
        Some(serde_json::Value::String(text)) => Ok(Some(text)),
        Some(other) => Err(ConfigError::new(format!("{field}.{key}"), shown(&other), "a string")),
    }
}

/// Validates the `outcomes` list into rules.
fn outcome_rules(value: serde_json::Value) -> Result<OutcomeRules, ConfigError> {
    let serde_json::Value::Array(items) = value else {
        return Err(ConfigError::new("outcomes", shown(&value), "a list of outcome rules"));
    };
    if items.len() > MAX_OUTCOMES {
        return Err(ConfigError::new(
            "outcomes",
            format!("{} rules", items.len()),
            format!("at most {MAX_OUTCOMES} rules (each adds 8 series per Envoy and work on every request)"),
        ));
    }
    let mut rules: Vec<OutcomeRule> = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let field = format!("outcomes[{i}]");
        if !item.is_object() {
            return Err(ConfigError::new(field, shown(&item), "an object with a `name` and a match"));
        }
        let raw: RawOutcome = serde_json::from_value(item).map_err(|e| match json_error_field(&e).as_str() {
            "(document)" => {
                ConfigError::new(&field, "(unreadable)", format!("an outcome rule ({})", one_line(&e.to_string())))
            }
            key => ConfigError::new(format!("{field}.{key}"), "(unknown field)", OUTCOME_KEYS),
        })?;
        let rule = raw.validate(&field)?;
        if let Some(earlier) = rules.iter().position(|r| r.name == rule.name) {
            return Err(ConfigError::new(
                format!("{field}.name"),
                format!("{:?}", rule.name),
                format!("a name no other outcome has (outcomes[{earlier}] has it)"),
            ));
        }
        rules.push(rule);
    }
    Ok(OutcomeRules::new(rules))
}

impl RawOutcome {
    fn validate(self, field: &str) -> Result<OutcomeRule, ConfigError> {
        let name = outcome_text(field, "name", self.name)?
            .ok_or_else(|| ConfigError::new(format!("{field}.name"), "(missing)", OUTCOME_NAME_RULE))?;
        if !is_valid_outcome_name(&name) {
            return Err(ConfigError::new(format!("{field}.name"), format!("{name:?}"), OUTCOME_NAME_RULE));
        }
        let header = outcome_text(field, "response_header", self.response_header)?;
        let equals = outcome_text(field, "equals", self.equals)?;
        let matcher = match (header, self.status) {
            (Some(header), None) => {
                let header_field = format!("{field}.response_header");
                if header.is_empty() {
                    return Err(ConfigError::new(
                        header_field,
                        "\"\" (empty)",
                        "a response header name, e.g. \"x-cache\"",
                    ));
                }
                let header = header_name(&header_field, &header)?;
                match (equals, self.above) {
                    (Some(value), None) if value.is_empty() => {
                        return Err(ConfigError::new(
                            format!("{field}.equals"),
                            "\"\" (empty)",
                            "the header value that counts, e.g. \"HIT\"",
                        ));
                    }
                    (Some(value), None) => OutcomeMatch::HeaderEquals { header, value },
                    (None, Some(above)) => {
                        OutcomeMatch::HeaderAbove { header, threshold: threshold(&format!("{field}.above"), &above)? }
                    }
                    (Some(_), Some(_)) => {
                        return Err(ConfigError::new(
                            field,
                            "(both `equals` and `above`)",
                            "exactly one of `equals` or `above` with `response_header`",
                        ));
                    }
                    (None, None) => {
                        return Err(ConfigError::new(
                            field,
                            "(neither `equals` nor `above`)",
                            "exactly one of `equals` or `above` with `response_header`",
                        ));
                    }
                }
            }
            (None, Some(status)) => {
                if equals.is_some() || self.above.is_some() {
                    return Err(ConfigError::new(
                        field,
                        "(`status` with `equals` or `above`)",
                        "`equals` and `above` only with `response_header`; `status` alone",
                    ));
                }
                OutcomeMatch::Status(status_code(&format!("{field}.status"), &status)?)
            }
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    field,
                    "(both `response_header` and `status`)",
                    "exactly one match kind: `response_header` (with `equals` or `above`) or `status`",
                ));
            }
            (None, None) => {
                return Err(ConfigError::new(
                    field,
                    "(neither `response_header` nor `status`)",
                    "exactly one match kind: `response_header` (with `equals` or `above`) or `status`",
                ));
            }
        };
        let path_prefix = outcome_text(field, "path_prefix", self.path_prefix)?;
        if let Some(prefix) = &path_prefix {
            if !prefix.starts_with('/') {
                return Err(ConfigError::new(
                    format!("{field}.path_prefix"),
                    format!("{prefix:?}"),
                    "a path prefix starting with '/', e.g. \"/checkout\"",
                ));
            }
        }
        let methods = self.methods.map(|m| methods(&format!("{field}.methods"), m)).transpose()?.unwrap_or_default();
        Ok(OutcomeRule { name, path_prefix, methods, matcher })
    }
}

/// `above`: a JSON number, finite (JSON has no infinity, a YAML `.inf` might).
fn threshold(field: &str, value: &serde_json::Value) -> Result<f64, ConfigError> {
    value
        .as_f64()
        .filter(|t| t.is_finite())
        .ok_or_else(|| ConfigError::new(field, shown(value), "a finite number (not a string), e.g. 100"))
}

/// The status codes a response can carry.
const STATUS_RANGE: std::ops::RangeInclusive<u32> = 100..=599;

/// `status`: a whole number from 100 to 599 (Istio's `pluginConfig` turns YAML
/// numbers into doubles, so `402.0` is 402).
fn status_code(field: &str, value: &serde_json::Value) -> Result<u32, ConfigError> {
    let whole = value.as_u64().or_else(|| value.as_f64().filter(|f| f.fract() == 0.0 && *f >= 0.0).map(|f| f as u64));
    whole
        .and_then(|code| u32::try_from(code).ok())
        .filter(|code| STATUS_RANGE.contains(code))
        .ok_or_else(|| ConfigError::new(field, shown(value), "a status code from 100 to 599, e.g. 402"))
}

/// `methods`: a non-empty list of upper-case methods (`:method` is case-sensitive).
fn methods(field: &str, value: serde_json::Value) -> Result<Vec<String>, ConfigError> {
    let serde_json::Value::Array(items) = value else {
        return Err(ConfigError::new(field, shown(&value), "a list of methods, e.g. [\"POST\"]"));
    };
    if items.is_empty() {
        return Err(ConfigError::new(field, "[]", "at least one method (leave `methods` out for any method)"));
    }
    let is_method = |m: &str| {
        m.bytes().next().is_some_and(|b| b.is_ascii_uppercase())
            && m.bytes().all(|b| b.is_ascii_uppercase() || b == b'-' || b == b'_')
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| match item {
            serde_json::Value::String(m) if is_method(&m) => Ok(m),
            other => Err(ConfigError::new(
                format!("{field}[{i}]"),
                shown(&other),
                "an upper-case HTTP method, e.g. \"POST\"",
            )),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<FilterConfig, ConfigError> {
        FilterConfig::parse(json.as_bytes())
    }

    fn error(json: &str) -> ConfigError {
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

    /// `{"deployment":"a","outcomes":[<rules>]}`.
    fn with_outcomes(rules: &str) -> String {
        format!(r#"{{"deployment":"a","outcomes":[{rules}]}}"#)
    }

    #[test]
    fn outcome_rules_of_every_kind_are_validated_into_typed_rules() {
        use crate::outcome::{OutcomeMatch, OutcomeRule};
        let c = parse(&with_outcomes(
            r#"{"name":"cache_hit","response_header":"X-Cache","equals":"HIT"},
               {"name":"declined","response_header":"x-payment-result","equals":"declined","path_prefix":"/pay"},
               {"name":"slow_db","response_header":"x-db-time-ms","above":100},
               {"name":"payment_required","status":402.0,"path_prefix":"/checkout","methods":["POST","PUT"]}"#,
        ))
        .unwrap();
        let header = |h: &str, v: &str| OutcomeMatch::HeaderEquals { header: h.into(), value: v.into() };
        let plain =
            |name: &str, matcher| OutcomeRule { name: name.into(), path_prefix: None, methods: vec![], matcher };
        assert_eq!(
            c.outcomes.rules(),
            [
                plain("cache_hit", header("x-cache", "HIT")),
                OutcomeRule {
                    path_prefix: Some("/pay".into()),
                    ..plain("declined", header("x-payment-result", "declined"))
                },
                plain("slow_db", OutcomeMatch::HeaderAbove { header: "x-db-time-ms".into(), threshold: 100.0 }),
                OutcomeRule {
                    path_prefix: Some("/checkout".into()),
                    methods: vec!["POST".into(), "PUT".into()],
                    ..plain("payment_required", OutcomeMatch::Status(402))
                },
            ]
        );
        assert!(parse(r#"{"deployment":"a"}"#).unwrap().outcomes.is_empty());
        assert!(parse(r#"{"deployment":"a","outcomes":[]}"#).unwrap().outcomes.is_empty());
        let sixteen: Vec<String> = (0..16).map(|i| format!(r#"{{"name":"r{i}","status":200}}"#)).collect();
        assert_eq!(parse(&with_outcomes(&sixteen.join(","))).unwrap().outcomes.len(), 16);
    }

    /// Every refusal of an outcome rule: (rules, field named, a word of what was expected).
    #[test]
    fn bad_outcome_rules_are_refused_naming_the_field() {
        let seventeen: Vec<String> = (0..17).map(|i| format!(r#"{{"name":"r{i}","status":200}}"#)).collect();
        let seventeen = with_outcomes(&seventeen.join(","));
        let ok = r#"{"name":"ok","status":200}"#;
        let cases: Vec<(String, &str, &str)> = vec![
            (r#"{"deployment":"a","outcomes":{"name":"x"}}"#.into(), "outcomes", "a list"),
            (seventeen, "outcomes", "at most 16"),
            (with_outcomes("7"), "outcomes[0]", "an object"),
            (with_outcomes(&format!(r#"{ok},{{"name":"b","status":200,"colour":1}}"#)), "outcomes[1].colour", "`name`"),
            (with_outcomes(r#"{"status":200}"#), "outcomes[0].name", "[a-z]"),
            (with_outcomes(r#"{"name":7,"status":200}"#), "outcomes[0].name", "a string"),
            (with_outcomes(r#"{"name":"Cache","status":200}"#), "outcomes[0].name", "[a-z]"),
            (with_outcomes(r#"{"name":"cache.hit","status":200}"#), "outcomes[0].name", "[a-z]"),
            (with_outcomes(&format!(r#"{{"name":"{}","status":200}}"#, "a".repeat(33))), "outcomes[0].name", "{0,31}"),
            (with_outcomes(&format!(r#"{ok},{ok}"#)), "outcomes[1].name", "outcomes[0] has it"),
            (with_outcomes(r#"{"name":"x"}"#), "outcomes[0]", "exactly one match kind"),
            (
                with_outcomes(r#"{"name":"x","response_header":"a","equals":"b","status":200}"#),
                "outcomes[0]",
                "exactly one match kind",
            ),
            (
                with_outcomes(&format!(
                    r#"{ok},{{"name":"b","status":201}},{{"name":"c","response_header":"","equals":"b"}}"#
                )),
                "outcomes[2].response_header",
                "header name",
            ),
            (
                with_outcomes(r#"{"name":"x","response_header":":status","equals":"200"}"#),
                "outcomes[0].response_header",
                "header name",
            ),
            (
                with_outcomes(r#"{"name":"x","response_header":"a b","equals":"1"}"#),
                "outcomes[0].response_header",
                "header name",
            ),
            (
                with_outcomes(r#"{"name":"x","response_header":["a"],"equals":"1"}"#),
                "outcomes[0].response_header",
                "a string",
            ),
            (with_outcomes(r#"{"name":"x","response_header":"a"}"#), "outcomes[0]", "`equals` or `above`"),
            (
                with_outcomes(r#"{"name":"x","response_header":"a","equals":"1","above":1}"#),
                "outcomes[0]",
                "`equals` or `above`",
            ),
            (with_outcomes(r#"{"name":"x","response_header":"a","equals":""}"#), "outcomes[0].equals", "header value"),
            (with_outcomes(r#"{"name":"x","response_header":"a","equals":1}"#), "outcomes[0].equals", "a string"),
            (
                with_outcomes(r#"{"name":"x","response_header":"a","above":"100"}"#),
                "outcomes[0].above",
                "finite number",
            ),
            (with_outcomes(r#"{"name":"x","response_header":"a","above":true}"#), "outcomes[0].above", "finite number"),
            (with_outcomes(r#"{"name":"x","status":402,"equals":"1"}"#), "outcomes[0]", "only with `response_header`"),
            (with_outcomes(r#"{"name":"x","status":99}"#), "outcomes[0].status", "100 to 599"),
            (with_outcomes(r#"{"name":"x","status":600}"#), "outcomes[0].status", "100 to 599"),
            (with_outcomes(r#"{"name":"x","status":402.5}"#), "outcomes[0].status", "100 to 599"),
            (with_outcomes(r#"{"name":"x","status":-402}"#), "outcomes[0].status", "100 to 599"),
            (with_outcomes(r#"{"name":"x","status":"402"}"#), "outcomes[0].status", "100 to 599"),
            (with_outcomes(r#"{"name":"x","status":4294967698}"#), "outcomes[0].status", "100 to 599"),
            (with_outcomes(r#"{"name":"x","status":402,"path_prefix":"checkout"}"#), "outcomes[0].path_prefix", "'/'"),
            (with_outcomes(r#"{"name":"x","status":402,"path_prefix":""}"#), "outcomes[0].path_prefix", "'/'"),
            (with_outcomes(r#"{"name":"x","status":402,"methods":[]}"#), "outcomes[0].methods", "at least one"),
            (with_outcomes(r#"{"name":"x","status":402,"methods":"POST"}"#), "outcomes[0].methods", "a list"),
            (
                with_outcomes(r#"{"name":"x","status":402,"methods":["POST","post"]}"#),
                "outcomes[0].methods[1]",
                "upper-case",
            ),
            (with_outcomes(r#"{"name":"x","status":402,"methods":[""]}"#), "outcomes[0].methods[0]", "upper-case"),
        ];
        for (json, field, expected) in &cases {
            let e = error(json);
            assert_eq!(&e.field, field, "for {json}: {e}");
            assert!(e.expected.contains(expected), "for {json}: {e}");
            assert!(!e.value.is_empty(), "for {json}: {e}");
            let line = e.to_string();
            assert!(line.contains(field) && !line.chars().any(char::is_control), "one line naming the field: {line}");
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
