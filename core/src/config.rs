//! The filter's plugin configuration: raw JSON in, a validated [`FilterConfig`] out.
//!
//! The same JSON is Envoy's `configuration` string and Istio's `pluginConfig`.
//! Unknown fields are refused so a typo never silently changes behaviour, and
//! every error names the field, the value and what was expected.

use crate::cohort::Share;
use crate::matching::RouteTable;
use crate::outcome::OutcomeRules;
use crate::population::Eligibility;
use crate::user_id::{AnonymousPolicy, IdSource};
use analyzer::{PollTarget, RawAnalyzer};
use deployment::{RawDeployment, RawSettings};
use serde::Deserialize;
use std::collections::HashSet;

mod analyzer;
mod deployment;
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

/// The configuration as written: the single form (`deployment` and its settings at the
/// top) or the list form (`deployments`, with shared `defaults`). The settings are
/// spelled out rather than flattened: serde cannot refuse unknown fields through a
/// flattened struct.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    deployment: Option<String>,
    deployments: Option<Vec<RawDeployment>>,
    defaults: Option<RawSettings>,
    routing_header: Option<String>,
    analyzer: Option<RawAnalyzer>,
    user_id: Option<deployment::RawUserId>,
    population: Option<deployment::RawPopulation>,
    initial_share_bp: Option<u32>,
    outcomes: Option<outcomes::Json>,
    protocol: Option<String>,
    metrics: Option<String>,
}

/// The validated configuration; the rest of the filter never sees JSON.
#[derive(Debug)]
pub struct FilterConfig {
    /// One or more, in the configuration's order; metrics and shared data are per deployment.
    pub deployments: Vec<DeploymentConfig>,
    /// Which deployment a request belongs to ([`Matcher::All`] in the single form).
    pub matcher: Matcher,
    pub analyzer: Option<AnalyzerConfig>,
}

/// How requests are matched to deployments.
#[derive(Debug)]
pub enum Matcher {
    /// The single form: every request belongs to the one deployment, no header is read.
    All,
    /// The list form: by `:authority` and `:path`; unmatched requests pass untouched.
    Routes(RouteTable),
}

/// One deployment's settings: who is in it and how its requests are counted.
#[derive(Debug, Clone, PartialEq)]
pub struct DeploymentConfig {
    pub deployment: String,
    pub sources: Vec<IdSource>,
    pub anonymous: AnonymousPolicy,
    /// Lower-case header name.
    pub routing_header: String,
    pub eligibility: Eligibility,
    pub allow: HashSet<String>,
    pub deny: HashSet<String>,
    pub initial_share: Share,
    /// Per-cohort rates counted in `on_log` (`outcomes`), empty by default.
    pub outcomes: OutcomeRules,
    /// How a response's outcome is classified.
    pub protocol: Protocol,
    /// Whether the filter counts the deployment's requests per cohort (`metrics`).
    pub metrics: DeploymentMetrics,
}

/// What the filter counts for a deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeploymentMetrics {
    /// Requests per cohort and status class, latency per cohort, outcomes (`"per_cohort"`).
    #[default]
    PerCohort,
    /// Routing only (`"none"`): no per-request metric, for rollouts whose analyzer reads
    /// the mesh's own metrics (`spec.source`). The applied-rollout gauges stay: they are
    /// set per tick, not per request, and the analyzer needs them for the share each
    /// proxy applies.
    None,
}

impl DeploymentMetrics {
    /// How the configuration writes it.
    pub fn label(self) -> &'static str {
        match self {
            DeploymentMetrics::PerCohort => "per_cohort",
            DeploymentMetrics::None => "none",
        }
    }

    /// Whether requests are counted (and so read for it) at all.
    pub fn counts_requests(self) -> bool {
        self == DeploymentMetrics::PerCohort
    }
}

/// What a deployment's service speaks, which decides how a response is classified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// By `:status` (and resets).
    #[default]
    Http,
    /// By `grpc-status` from the trailers or a trailers-only response: a failed call
    /// still answers HTTP 200.
    Grpc,
}

/// Where and how often the filter polls its rollout config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnalyzerConfig {
    pub cluster: String,
    pub authority: String,
    /// The whole request path, the batch query included.
    pub path: String,
    /// Which endpoint `path` is: one deployment's, or the batch for all of them.
    pub poll: PollKind,
    /// Names this filter's poll lease and published record in shared data: the
    /// deployment id, or `batch-` and a hash of the path. Istio sets no `vm_id`, so
    /// every plugin in a proxy shares one namespace and each needs its own keys.
    pub scope: String,
    pub poll_interval_ms: u32,
    pub timeout_ms: u32,
    pub stale_after_ms: u32,
    pub when_stale: WhenStale,
}

/// Which analyzer endpoint the filter polls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollKind {
    /// `GET /v1/rollouts/{deployment}/config`: the single form.
    One,
    /// `GET /v1/config?deployments=a,b` with `If-None-Match`: the list form, one poll for all.
    Batch,
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

    /// The deployment a request belongs to (its position), with `authority` the
    /// request's `:authority` read by `authority()` only in the list form, and `path`
    /// read only if a candidate host has path prefixes.
    pub fn deployment_for(
        &self,
        authority: impl FnOnce() -> Option<Vec<u8>>,
        path: impl FnOnce() -> Option<Vec<u8>>,
    ) -> Option<usize> {
        match &self.matcher {
            Matcher::All => Some(0),
            Matcher::Routes(table) => table.find(authority().as_deref(), path),
        }
    }

    /// The deployment ids, in order.
    pub fn deployment_ids(&self) -> Vec<&str> {
        self.deployments.iter().map(|d| d.deployment.as_str()).collect()
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
        let routing_header =
            header_name("routing_header", self.routing_header.as_deref().unwrap_or(defaults::ROUTING_HEADER))?;
        let settings = RawSettings {
            user_id: self.user_id,
            population: self.population,
            initial_share_bp: self.initial_share_bp,
            outcomes: self.outcomes,
            protocol: self.protocol,
            metrics: self.metrics,
        };
        match (self.deployment, self.deployments) {
            (Some(_), Some(_)) => Err(ConfigError::new(
                "deployments",
                "(given with `deployment`)",
                "either `deployment` (one deployment, every request) or `deployments` (a list matched by host and path)",
            )),
            (None, None) => Err(ConfigError::new(
                "deployment",
                "(missing)",
                "a deployment id, or a `deployments` list matched by host and path",
            )),
            (Some(id), None) => {
                if self.defaults.is_some() {
                    return Err(ConfigError::new(
                        "defaults",
                        "(given with `deployment`)",
                        "`defaults` only with a `deployments` list; one deployment's settings go at the top level",
                    ));
                }
                let deployment = deployment_id("deployment", id)?;
                let settings = settings.validate("", routing_header, None)?;
                let analyzer = self.analyzer.map(|a| a.validate(PollTarget::One(&deployment))).transpose()?;
                Ok(FilterConfig {
                    deployments: vec![settings.into_deployment(deployment)],
                    matcher: Matcher::All,
                    analyzer,
                })
            }
            (None, Some(list)) => {
                if let Some(field) = settings.first_given() {
                    return Err(ConfigError::new(
                        field,
                        "(at the top level with `deployments`)",
                        format!("`defaults.{field}` (shared by every deployment) or `deployments[i].{field}`"),
                    ));
                }
                let defaults = self.defaults.unwrap_or_default().validate("defaults.", routing_header.clone(), None)?;
                let (deployments, table) = deployment::validate_list(list, &routing_header, &defaults)?;
                let ids: Vec<&str> = deployments.iter().map(|d| d.deployment.as_str()).collect();
                let analyzer = self.analyzer.map(|a| a.validate(PollTarget::Batch(&ids))).transpose()?;
                Ok(FilterConfig { deployments, matcher: Matcher::Routes(table), analyzer })
            }
        }
    }
}

/// A validated deployment id, or the error naming `field`.
fn deployment_id(field: &str, id: String) -> Result<String, ConfigError> {
    if is_valid_deployment_id(&id) {
        Ok(id)
    } else {
        Err(ConfigError::new(
            field,
            format!("{id:?}"),
            "1 to 63 characters from [A-Za-z0-9_-] (it becomes a metric label and part of the hash)",
        ))
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

#[cfg(test)]
mod tests;
