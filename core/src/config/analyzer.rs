//! The `analyzer` section: where and how often the filter polls its rollout config.

use super::{
    AnalyzerConfig, ConfigError, FilterConfig, MAX_POLL_INTERVAL_MS, MIN_POLL_INTERVAL_MS, PollKind, WhenStale,
    defaults,
};
use crate::rollout_batch::DEPLOYMENTS_PARAMETER;
use serde::Deserialize;

/// What the filter polls for: one deployment, or every deployment of the list form.
pub(super) enum PollTarget<'a> {
    One(&'a str),
    Batch(&'a [&'a str]),
}

/// The batch endpoint's path when `analyzer.path` is not given.
const DEFAULT_BATCH_PATH: &str = "/v1/config";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAnalyzer {
    cluster: Option<String>,
    authority: Option<String>,
    path: Option<String>,
    poll_interval_ms: Option<u32>,
    timeout_ms: Option<u32>,
    stale_after_ms: Option<u32>,
    when_stale: Option<String>,
}

impl RawAnalyzer {
    pub(super) fn validate(self, target: PollTarget) -> Result<AnalyzerConfig, ConfigError> {
        let cluster = self
            .cluster
            .filter(|c| !c.is_empty())
            .ok_or_else(|| ConfigError::new("analyzer.cluster", "(missing)", "the name of an Envoy cluster"))?;
        let authority = self.authority.unwrap_or_else(|| cluster.clone());
        let (path, poll, scope) = match target {
            PollTarget::One(deployment) => {
                let path = self.path.unwrap_or_else(|| FilterConfig::default_poll_path(deployment));
                if !path.starts_with('/') {
                    return Err(ConfigError::new("analyzer.path", format!("{path:?}"), "a path starting with '/'"));
                }
                (path, PollKind::One, deployment.to_string())
            }
            PollTarget::Batch(ids) => {
                let base = self.path.unwrap_or_else(|| DEFAULT_BATCH_PATH.to_string());
                if !base.starts_with('/') || base.contains(['?', '#']) {
                    return Err(ConfigError::new(
                        "analyzer.path",
                        format!("{base:?}"),
                        "the batch endpoint's path, starting with '/', without a query (the filter adds `?deployments=`)",
                    ));
                }
                let path = format!("{base}?{DEPLOYMENTS_PARAMETER}={}", ids.join(","));
                let scope = format!("batch-{:016x}", xxhash_rust::xxh3::xxh3_64(path.as_bytes()));
                (path, PollKind::Batch, scope)
            }
        };
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
        Ok(AnalyzerConfig {
            cluster,
            authority,
            path,
            poll,
            scope,
            poll_interval_ms,
            timeout_ms,
            stale_after_ms,
            when_stale,
        })
    }
}
