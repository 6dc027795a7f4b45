//! The root context of one VM: validates the configuration, defines metrics, and
//! on every tick (a) reads the published rollout configs, derives the share this
//! VM routes each deployment with and exports it in the applied-rollout gauges, (b)
//! if the poll lease is due and it wins the compare-and-swap, polls the analyzer
//! (one poll for every deployment of this filter) and publishes an accepted answer
//! for every VM, (c) ticks at the 25 ms floor while it has no published rollout, so
//! a VM starting without one polls at once.

use crate::http::CanaryHttp;
use crate::runtime::Runtime;
use canary_core::FilterConfig;
use canary_core::config::PollKind;
use canary_core::metrics::Applied;
use canary_core::poll::{
    Applying, Published, current_tick_period_ms, lease_is_due, lease_key, published_key, renewed_lease,
};
use canary_core::rollout::{AnswerError, Merge, RolloutConfig, merge, parse_answer};
use canary_core::rollout_batch::parse_batch_answer;
use log::{error, info, warn};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Default)]
pub struct CanaryRoot {
    runtime: Option<Rc<Runtime>>,
    /// CAS of the published record last read, to skip re-parsing an unchanged record.
    seen_cas: Option<u32>,
    published: Option<Published>,
    /// Per deployment (configuration order), its position in `published.rollouts`.
    applying: Vec<Option<usize>>,
    /// The token of this VM's poll in flight, if any.
    in_flight: Option<u32>,
    /// The last attempt to set the applied-rollout gauges failed (and was logged).
    gauges_failed: bool,
    /// When `on_configure` last ran (ms since the epoch).
    configured_ms: u64,
    /// The tick period last set, in ms (0: none yet).
    tick_ms: u32,
}

fn millis(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// How the filter names itself in logs: its deployment, or its first and how many.
fn log_name(config: &FilterConfig) -> String {
    match config.deployments.as_slice() {
        [one] => one.deployment.clone(),
        [first, rest @ ..] => format!("{} (+{} deployments)", first.deployment, rest.len()),
        [] => String::new(),
    }
}

impl CanaryRoot {
    fn now_ms(&self) -> u64 {
        millis(self.get_current_time())
    }

    /// Takes a newly read or written record and finds each deployment's rollout in it.
    fn adopt(&mut self, runtime: &Runtime, record: Published) {
        self.applying = runtime
            .config
            .deployments
            .iter()
            .map(|d| record.rollouts.iter().position(|r| r.deployment == d.deployment))
            .collect();
        self.published = Some(record);
    }

    /// Reads the published record (if it changed), updates the shares in force and
    /// exports what this VM applies in each deployment's applied-rollout gauges.
    fn refresh_shares(&mut self, runtime: &Runtime, now_ms: u64) {
        let analyzer = runtime.config.analyzer.as_ref();
        if let Some(a) = analyzer {
            if let (Some(bytes), cas) = self.get_shared_data(&published_key(&a.scope)) {
                if cas != self.seen_cas || self.published.is_none() {
                    self.seen_cas = cas;
                    if let Some(record) = Published::decode(&bytes) {
                        self.adopt(runtime, record);
                    } // unreadable: keep what this VM had
                }
            }
        }
        let mut failed = None;
        for (i, (config, state)) in runtime.config.deployments.iter().zip(&runtime.deployments).enumerate() {
            let applying = match (self.published.as_ref(), self.applying.get(i).copied().flatten()) {
                (Some(record), Some(at)) => record.rollouts.get(at).map(|rollout| Applying { record, rollout }),
                _ => None,
            };
            let applied = Applied::derive(applying, analyzer, config.initial_share, now_ms);
            state.share.set(applied.share);
            if let Err(status) = state.metrics.record_applied(&applied) {
                failed.get_or_insert((config.deployment.as_str(), status));
            }
        }
        match failed {
            None => self.gauges_failed = false,
            // The host refused an id it handed out: say so once, not on every tick, and route on.
            Some((deployment, status)) if !self.gauges_failed => {
                self.gauges_failed = true;
                warn!("wasm canary {deployment}: cannot set the applied-rollout gauges: {status:?}");
            }
            Some(_) => {}
        }
    }

    /// Sets the tick period `current_tick_period_ms` asks for, if it changed: the floor
    /// until this VM has a published rollout (for at most one interval), then a quarter
    /// interval.
    fn retune_tick(&mut self, runtime: &Runtime, now_ms: u64) {
        let Some(analyzer) = runtime.config.analyzer.as_ref() else { return };
        let configured_for_ms = now_ms.saturating_sub(self.configured_ms);
        let period = current_tick_period_ms(analyzer, self.published.is_some(), configured_for_ms);
        if period != self.tick_ms {
            self.tick_ms = period;
            self.set_tick_period(Duration::from_millis(u64::from(period)));
        }
    }

    /// Takes the poll lease if it is due and this VM wins the compare-and-swap.
    fn try_poll(&mut self, runtime: &Runtime, now_ms: u64) {
        let Some(analyzer) = runtime.config.analyzer.as_ref() else { return };
        if self.in_flight.is_some() {
            return;
        }
        let key = lease_key(&analyzer.scope);
        let (stored, cas) = self.get_shared_data(&key);
        if !lease_is_due(stored.as_deref(), analyzer, now_ms) {
            return;
        }
        if self.set_shared_data(&key, Some(&renewed_lease(analyzer, now_ms)), cas).is_err() {
            return; // another VM took it
        }
        // The batch answer's revision, quoted as its `ETag`: an unchanged fleet answers 304.
        let if_none_match = match (analyzer.poll, self.published.as_ref().and_then(|p| p.revision.as_ref())) {
            (PollKind::Batch, Some(revision)) => Some(format!("\"{revision}\"")),
            _ => None,
        };
        let mut headers = vec![
            (":method", "GET"),
            (":path", analyzer.path.as_str()),
            (":authority", analyzer.authority.as_str()),
            ("accept", "application/json"),
        ];
        if let Some(tag) = if_none_match.as_deref() {
            headers.push(("if-none-match", tag));
        }
        let timeout = Duration::from_millis(u64::from(analyzer.timeout_ms));
        match self.dispatch_http_call(&analyzer.cluster, headers, None, vec![], timeout) {
            Ok(token) => self.in_flight = Some(token),
            Err(status) => warn!(
                "wasm canary {}: cannot call analyzer cluster {:?}: {status:?}; keeping the shares in force",
                log_name(&runtime.config),
                analyzer.cluster,
            ),
        }
    }

    /// Merges one answered rollout into `next`: newer generations win, equal ones
    /// renew freshness, older ones are ignored (and logged).
    fn merge_one(runtime: &Runtime, next: &mut Vec<RolloutConfig>, answer: RolloutConfig) {
        let deployment = answer.deployment.clone();
        let at = next.iter().position(|r| r.deployment == deployment);
        match merge(at.and_then(|i| next.get(i)), &answer) {
            Merge::Ignored { have, got } => {
                warn!("wasm canary {deployment}: ignoring analyzer answer of generation {got}, already at {have}");
            }
            Merge::Applied => {
                let initial = runtime.config.deployments.iter().find(|d| d.deployment == deployment);
                let before =
                    at.and_then(|i| next.get(i)).map(RolloutConfig::share).or(initial.map(|d| d.initial_share));
                info!(
                    "wasm canary {deployment}: share {} -> {} (generation {}, state {:?})",
                    before.map_or_else(|| "?".to_string(), |s| s.to_string()),
                    answer.share(),
                    answer.generation,
                    answer.state
                );
                match at.and_then(|i| next.get_mut(i)) {
                    Some(slot) => *slot = answer,
                    None => next.push(answer),
                }
            }
            Merge::Refreshed => {}
        }
    }

    /// Applies one analyzer answer (a `200` body, or `None` for a `304`) and publishes
    /// the result with a renewed confirmation time.
    fn accept(&mut self, runtime: &Runtime, body: Option<Vec<u8>>, now_ms: u64) -> Result<(), AnswerError> {
        let Some(analyzer) = runtime.config.analyzer.as_ref() else { return Ok(()) };
        self.refresh_shares(runtime, now_ms);
        let previous = self.published.as_ref();
        let mut next = previous.map(|p| p.rollouts.clone()).unwrap_or_default();
        let revision = match (analyzer.poll, body) {
            (PollKind::One, Some(body)) => {
                let deployment = runtime.config.deployments.first().map_or("", |d| d.deployment.as_str());
                Self::merge_one(runtime, &mut next, parse_answer(&body, deployment)?);
                None
            }
            (PollKind::Batch, Some(body)) => {
                let ids = runtime.config.deployment_ids();
                let batch = parse_batch_answer(&body, &ids)?;
                for problem in &batch.problems {
                    warn!("wasm canary: {problem}");
                }
                for unknown in &batch.unknown {
                    if next.iter().any(|r| &r.deployment == unknown) {
                        warn!(
                            "wasm canary {unknown}: the analyzer no longer has a rollout for it; keeping its last config"
                        );
                    } else if previous.and_then(|p| p.revision.as_ref()).is_none_or(|r| *r != batch.revision) {
                        info!(
                            "wasm canary {unknown}: the analyzer has no rollout for it; routing with its initial share"
                        );
                    }
                }
                for answer in batch.rollouts {
                    Self::merge_one(runtime, &mut next, answer);
                }
                Some(batch.revision)
            }
            // 304: what this proxy has is current.
            (_, None) => previous.and_then(|p| p.revision.clone()),
        };
        let record = Published { rollouts: next, confirmed_ms: now_ms, revision };
        if let Err(status) = self.set_shared_data(&published_key(&analyzer.scope), Some(&record.encode()), None) {
            warn!("wasm canary {}: cannot publish rollout config: {status:?}", log_name(&runtime.config));
        }
        self.refresh_shares(runtime, now_ms);
        Ok(())
    }
}

impl Context for CanaryRoot {
    fn on_http_call_response(&mut self, token: u32, _: usize, body_size: usize, _: usize) {
        if self.in_flight != Some(token) {
            return;
        }
        self.in_flight = None;
        let Some(runtime) = self.runtime.clone() else { return };
        let Some(analyzer) = runtime.config.analyzer.as_ref() else { return };
        let now_ms = self.now_ms();
        let has_revision = self.published.as_ref().is_some_and(|p| p.revision.is_some());
        // Bytes: the SDK's `String` reader would abort the VM on a status that is not UTF-8.
        let body = match self.get_http_call_response_header_bytes(":status") {
            None => Err(AnswerError::Status("none (timeout or reset)".into())),
            Some(status) if status == b"200" => {
                Ok(Some(self.get_http_call_response_body(0, body_size).unwrap_or_default()))
            }
            // Only an answer to our `If-None-Match` may be 304.
            Some(status) if status == b"304" && analyzer.poll == PollKind::Batch && has_revision => Ok(None),
            Some(status) => Err(AnswerError::Status(String::from_utf8_lossy(&status).into_owned())),
        };
        if let Err(e) = body.and_then(|body| self.accept(&runtime, body, now_ms)) {
            let last_good = match self.published.as_ref() {
                Some(p) => p.age_ms(analyzer, now_ms).map_or_else(
                    || "of unknown age: the wall clock stepped back since".to_string(),
                    |age| format!("{} s ago", age / 1000),
                ),
                None => "never".to_string(),
            };
            warn!(
                "wasm canary {}: {e}; keeping the shares in force (last good answer {last_good})",
                log_name(&runtime.config)
            );
        }
    }
}

impl RootContext for CanaryRoot {
    fn on_configure(&mut self, _: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        let config = match FilterConfig::parse(&bytes) {
            Ok(config) => config,
            Err(e) => {
                error!("wasm canary: {e}");
                return false;
            }
        };
        let runtime = match Runtime::new(config) {
            Ok(runtime) => Rc::new(runtime),
            Err((deployment, status)) => {
                error!("wasm canary {deployment}: cannot define metrics: {status:?}");
                return false;
            }
        };
        self.published = None;
        self.applying.clear();
        self.seen_cas = None;
        let now_ms = self.now_ms();
        self.configured_ms = now_ms;
        self.tick_ms = 0;
        self.refresh_shares(&runtime, now_ms);
        self.retune_tick(&runtime, now_ms);
        self.runtime = Some(runtime);
        true
    }

    fn on_tick(&mut self) {
        let Some(runtime) = self.runtime.clone() else { return };
        let now_ms = self.now_ms();
        self.refresh_shares(&runtime, now_ms);
        self.try_poll(&runtime, now_ms);
        self.retune_tick(&runtime, now_ms);
    }

    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        // Without a valid configuration Envoy refuses the plugin, so this is always Some.
        self.runtime.as_ref().map(|r| Box::new(CanaryHttp::new(Rc::clone(r))) as Box<dyn HttpContext>)
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
