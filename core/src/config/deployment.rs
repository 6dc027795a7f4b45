//! One deployment's settings (user id, population, outcomes, initial share,
//! protocol) as written, and the list form's `deployments` with their matches.
//!
//! The single form writes the settings at the top level; the list form under
//! `defaults` (shared) and in each deployment, where a setting given replaces the
//! default as a whole. Errors name the field under its place: `user_id.anonymous`,
//! `defaults.user_id.anonymous` or `deployments[2].user_id.anonymous`.

use super::outcomes;
use super::{
    ConfigError, DeploymentConfig, DeploymentMetrics, Protocol, cookie_name, defaults, deployment_id, header_name,
};
use crate::cohort::Share;
use crate::matching::{HostPattern, RequestMatch, RouteTable, check_path_prefix};
use crate::outcome::OutcomeRules;
use crate::population::{Eligibility, MatchOp, Rule, RuleSubject};
use crate::rollout_batch::MAX_BATCH_DEPLOYMENTS;
use crate::user_id::{AnonymousPolicy, IdSource, StickyCookie};
use serde::Deserialize;
use std::collections::HashSet;

/// The per-deployment settings as written, every one optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSettings {
    pub(super) user_id: Option<RawUserId>,
    pub(super) population: Option<RawPopulation>,
    /// Share applied before the first answer from the analyzer (or forever, without one).
    pub(super) initial_share_bp: Option<u32>,
    /// Outcome rules, read loosely here so each rule's errors can name `outcomes[i].<key>`.
    pub(super) outcomes: Option<outcomes::Json>,
    /// `"http"` (the default) or `"grpc"`.
    pub(super) protocol: Option<String>,
    /// `"per_cohort"` (the default) or `"none"` (routing only).
    pub(super) metrics: Option<String>,
}

/// One entry of `deployments`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDeployment {
    id: Option<String>,
    #[serde(rename = "match")]
    request_match: Option<RawMatch>,
    routing_header: Option<String>,
    user_id: Option<RawUserId>,
    population: Option<RawPopulation>,
    initial_share_bp: Option<u32>,
    outcomes: Option<outcomes::Json>,
    protocol: Option<String>,
    metrics: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMatch {
    #[serde(default)]
    hosts: Vec<String>,
    #[serde(default)]
    paths: Vec<String>,
}

/// Validated settings, before they are given a deployment id.
#[derive(Debug, Clone)]
pub(super) struct Settings {
    sources: Vec<IdSource>,
    anonymous: AnonymousPolicy,
    routing_header: String,
    eligibility: Eligibility,
    allow: HashSet<String>,
    deny: HashSet<String>,
    initial_share: Share,
    outcomes: OutcomeRules,
    protocol: Protocol,
    metrics: DeploymentMetrics,
}

impl Settings {
    pub(super) fn into_deployment(self, deployment: String) -> DeploymentConfig {
        DeploymentConfig {
            deployment,
            sources: self.sources,
            anonymous: self.anonymous,
            routing_header: self.routing_header,
            eligibility: self.eligibility,
            allow: self.allow,
            deny: self.deny,
            initial_share: self.initial_share,
            outcomes: self.outcomes,
            protocol: self.protocol,
            metrics: self.metrics,
        }
    }
}

impl ConfigError {
    /// The same error, its field placed under `prefix` (`"deployments[2]."`).
    fn under(mut self, prefix: &str) -> ConfigError {
        if !prefix.is_empty() {
            self.field = format!("{prefix}{}", self.field);
        }
        self
    }
}

impl RawSettings {
    /// The first setting given, for the list form's "put it under `defaults`" error.
    pub(super) fn first_given(&self) -> Option<&'static str> {
        [
            (self.user_id.is_some(), "user_id"),
            (self.population.is_some(), "population"),
            (self.initial_share_bp.is_some(), "initial_share_bp"),
            (self.outcomes.is_some(), "outcomes"),
            (self.protocol.is_some(), "protocol"),
            (self.metrics.is_some(), "metrics"),
        ]
        .into_iter()
        .find_map(|(given, name)| given.then_some(name))
    }

    /// Validates the settings given and takes the others from `inherited` (the list
    /// form's defaults) or the documented defaults. `prefix` places error fields.
    pub(super) fn validate(
        self,
        prefix: &str,
        routing_header: String,
        inherited: Option<&Settings>,
    ) -> Result<Settings, ConfigError> {
        let (sources, anonymous) = match (self.user_id, inherited) {
            (Some(raw), _) => raw.validate().map_err(|e| e.under(prefix))?,
            (None, Some(s)) => (s.sources.clone(), s.anonymous.clone()),
            (None, None) => RawUserId::default().validate()?,
        };
        let (eligibility, allow, deny) = match (self.population, inherited) {
            (Some(raw), _) => raw.validate().map_err(|e| e.under(prefix))?,
            (None, Some(s)) => (s.eligibility.clone(), s.allow.clone(), s.deny.clone()),
            (None, None) => (Eligibility::default(), HashSet::new(), HashSet::new()),
        };
        let initial_share = match (self.initial_share_bp, inherited) {
            (Some(bp), _) => Share::from_basis_points(bp).ok_or_else(|| {
                ConfigError::new("initial_share_bp", bp, "basis points from 0 to 10000").under(prefix)
            })?,
            (None, Some(s)) => s.initial_share,
            (None, None) => Share::ZERO,
        };
        let outcomes = match (self.outcomes, inherited) {
            (Some(raw), _) => outcomes::validate(raw).map_err(|e| e.under(prefix))?,
            (None, Some(s)) => s.outcomes.clone(),
            (None, None) => OutcomeRules::default(),
        };
        let protocol = match (self.protocol.as_deref(), inherited) {
            (Some("http"), _) => Protocol::Http,
            (Some("grpc"), _) => Protocol::Grpc,
            (Some(other), _) => {
                return Err(ConfigError::new("protocol", format!("{other:?}"), "\"http\" or \"grpc\"").under(prefix));
            }
            (None, Some(s)) => s.protocol,
            (None, None) => Protocol::Http,
        };
        let metrics = match (self.metrics.as_deref(), inherited) {
            (Some("per_cohort"), _) => DeploymentMetrics::PerCohort,
            (Some("none"), _) => DeploymentMetrics::None,
            (Some(other), _) => {
                return Err(ConfigError::new(
                    "metrics",
                    format!("{other:?}"),
                    "\"per_cohort\" (count requests per cohort) or \"none\" (route only)",
                )
                .under(prefix));
            }
            (None, Some(s)) => s.metrics,
            (None, None) => DeploymentMetrics::PerCohort,
        };
        if metrics == DeploymentMetrics::None && !outcomes.is_empty() {
            return Err(ConfigError::new(
                "outcomes",
                format!("({} rules)", outcomes.len()),
                "no outcome rules with \"metrics\": \"none\" (outcomes are counted per cohort)",
            )
            .under(prefix));
        }
        Ok(Settings {
            sources,
            anonymous,
            routing_header,
            eligibility,
            allow,
            deny,
            initial_share,
            outcomes,
            protocol,
            metrics,
        })
    }
}

/// Validates the list form's deployments and compiles their matches.
pub(super) fn validate_list(
    list: Vec<RawDeployment>,
    routing_header: &str,
    defaults: &Settings,
) -> Result<(Vec<DeploymentConfig>, RouteTable), ConfigError> {
    if list.is_empty() || list.len() > MAX_BATCH_DEPLOYMENTS {
        return Err(ConfigError::new(
            "deployments",
            format!("({} entries)", list.len()),
            format!("1 to {MAX_BATCH_DEPLOYMENTS} deployments (one batch poll names them all)"),
        ));
    }
    let mut deployments: Vec<DeploymentConfig> = Vec::with_capacity(list.len());
    let mut matches = Vec::with_capacity(list.len());
    for (i, raw) in list.into_iter().enumerate() {
        let prefix = format!("deployments[{i}].");
        let id = raw.id.ok_or_else(|| ConfigError::new(format!("{prefix}id"), "(missing)", "a deployment id"))?;
        let id = deployment_id(&format!("{prefix}id"), id)?;
        if let Some(first) = deployments.iter().position(|d| d.deployment == id) {
            return Err(ConfigError::new(
                format!("{prefix}id"),
                format!("{id:?}"),
                format!("an id no other deployment has (`deployments[{first}]` has it)"),
            ));
        }
        let routing_header = match raw.routing_header {
            Some(h) => header_name(&format!("{prefix}routing_header"), &h)?,
            None => routing_header.to_string(),
        };
        matches.push(raw.request_match.unwrap_or_default().validate(&prefix)?);
        let settings = RawSettings {
            user_id: raw.user_id,
            population: raw.population,
            initial_share_bp: raw.initial_share_bp,
            outcomes: raw.outcomes,
            protocol: raw.protocol,
            metrics: raw.metrics,
        };
        deployments.push(settings.validate(&prefix, routing_header, Some(defaults))?.into_deployment(id));
    }
    let table = RouteTable::build(&matches).map_err(|conflict| {
        let first = deployments.get(conflict.first).map_or("", |d| d.deployment.as_str());
        ConfigError::new(
            format!("deployments[{}].match", conflict.second),
            conflict.what,
            format!(
                "requests no other deployment matches (`deployments[{}]` ({first:?}) matches them already)",
                conflict.first
            ),
        )
    })?;
    Ok((deployments, table))
}

impl RawMatch {
    fn validate(self, prefix: &str) -> Result<RequestMatch, ConfigError> {
        let mut hosts = Vec::with_capacity(self.hosts.len());
        for (i, host) in self.hosts.iter().enumerate() {
            let pattern = HostPattern::parse(host).map_err(|expected| {
                ConfigError::new(format!("{prefix}match.hosts[{i}]"), format!("{host:?}"), expected)
            })?;
            hosts.push(pattern);
        }
        for (i, path) in self.paths.iter().enumerate() {
            check_path_prefix(path).map_err(|expected| {
                ConfigError::new(format!("{prefix}match.paths[{i}]"), format!("{path:?}"), expected)
            })?;
        }
        Ok(RequestMatch { hosts, paths: self.paths })
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUserId {
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
pub(super) struct RawPopulation {
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
