//! The root context of one VM: validates the configuration, defines metrics, and
//! on every tick (a) reads the published rollout config, derives the share this
//! VM routes with and exports it in the applied-rollout gauges, (b) if the poll
//! lease is due and it wins the compare-and-swap, polls the analyzer and publishes
//! an accepted answer for every VM, (c) ticks at the 25 ms floor while it has no
//! published rollout, so a VM starting without one polls at once.

use crate::http::CanaryHttp;
use crate::runtime::{MetricIds, Runtime};
use canary_core::FilterConfig;
use canary_core::metrics::Applied;
use canary_core::poll::{Published, current_tick_period_ms, lease_is_due, lease_key, published_key, renewed_lease};
use canary_core::rollout::{AnswerError, Merge, merge, parse_answer};
use log::{error, info, warn};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;
use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Default)]
pub struct CanaryRoot {
    runtime: Option<Rc<Runtime>>,
    /// CAS of the published record last read, to skip re-parsing an unchanged record.
    seen_cas: Option<u32>,
    published: Option<Published>,
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

impl CanaryRoot {
    fn now_ms(&self) -> u64 {
        millis(self.get_current_time())
    }

    /// Reads the published record (if it changed), updates the share in force and
    /// exports what this VM applies in the three applied-rollout gauges.
    fn refresh_share(&mut self, runtime: &Runtime, now_ms: u64) {
        let key = published_key(&runtime.config.deployment);
        if let (Some(bytes), cas) = self.get_shared_data(&key) {
            if cas != self.seen_cas || self.published.is_none() {
                self.seen_cas = cas;
                match Published::decode(&bytes) {
                    Some(p) if p.rollout.deployment == runtime.config.deployment => self.published = Some(p),
                    _ => {} // unreadable: keep what this VM had
                }
            }
        }
        let applied = Applied::derive(
            self.published.as_ref(),
            runtime.config.analyzer.as_ref(),
            runtime.config.initial_share,
            now_ms,
        );
        runtime.share.set(applied.share);
        match runtime.metrics.record_applied(&applied) {
            Ok(()) => self.gauges_failed = false,
            // The host refused an id it handed out: say so once, not on every tick, and route on.
            Err(status) if !self.gauges_failed => {
                self.gauges_failed = true;
                warn!("wasm canary {}: cannot set the applied-rollout gauges: {status:?}", runtime.config.deployment);
            }
            Err(_) => {}
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
        let key = lease_key(&runtime.config.deployment);
        let (stored, cas) = self.get_shared_data(&key);
        if !lease_is_due(stored.as_deref(), analyzer, now_ms) {
            return;
        }
        if self.set_shared_data(&key, Some(&renewed_lease(analyzer, now_ms)), cas).is_err() {
            return; // another VM took it
        }
        let headers = vec![
            (":method", "GET"),
            (":path", analyzer.path.as_str()),
            (":authority", analyzer.authority.as_str()),
            ("accept", "application/json"),
        ];
        let timeout = Duration::from_millis(u64::from(analyzer.timeout_ms));
        match self.dispatch_http_call(&analyzer.cluster, headers, None, vec![], timeout) {
            Ok(token) => self.in_flight = Some(token),
            Err(status) => warn!(
                "wasm canary {}: cannot call analyzer cluster {:?}: {status:?}; keeping share {}",
                runtime.config.deployment,
                analyzer.cluster,
                runtime.share.get()
            ),
        }
    }

    /// Applies one analyzer answer: publish if newer, renew freshness if the same.
    fn accept(
        &mut self,
        runtime: &Runtime,
        body: Result<Vec<u8>, AnswerError>,
        now_ms: u64,
    ) -> Result<(), AnswerError> {
        let deployment = &runtime.config.deployment;
        let answer = parse_answer(&body?, deployment)?;
        self.refresh_share(runtime, now_ms);
        let previous = self.published.as_ref().map(|p| &p.rollout);
        match merge(previous, &answer) {
            Merge::Ignored { have, got } => {
                warn!("wasm canary {deployment}: ignoring analyzer answer of generation {got}, already at {have}");
                return Ok(());
            }
            Merge::Applied => {
                let before = previous.map_or(runtime.config.initial_share, |p| p.share());
                info!(
                    "wasm canary {deployment}: share {before} -> {} (generation {}, state {:?})",
                    answer.share(),
                    answer.generation,
                    answer.state
                );
            }
            Merge::Refreshed => {}
        }
        let record = Published { rollout: answer, confirmed_ms: now_ms };
        let key = published_key(deployment);
        if let Err(status) = self.set_shared_data(&key, Some(&record.encode()), None) {
            warn!("wasm canary {deployment}: cannot publish rollout config: {status:?}");
        }
        self.refresh_share(runtime, now_ms);
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
        let now_ms = self.now_ms();
        // Bytes: the SDK's `String` reader would abort the VM on a status that is not UTF-8.
        let body = match self.get_http_call_response_header_bytes(":status") {
            None => Err(AnswerError::Status("none (timeout or reset)".into())),
            Some(status) if status != b"200" => Err(AnswerError::Status(String::from_utf8_lossy(&status).into_owned())),
            Some(_) => Ok(self.get_http_call_response_body(0, body_size).unwrap_or_default()),
        };
        if let Err(e) = self.accept(&runtime, body, now_ms) {
            let last_good = match (self.published.as_ref(), runtime.config.analyzer.as_ref()) {
                (Some(p), Some(a)) => p.age_ms(a, now_ms).map_or_else(
                    || "of unknown age: the wall clock stepped back since".to_string(),
                    |age| format!("{} s ago", age / 1000),
                ),
                _ => "never".to_string(),
            };
            warn!(
                "wasm canary {}: {e}; keeping share {} (last good answer {last_good})",
                runtime.config.deployment,
                runtime.share.get(),
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
        let metrics = match MetricIds::define(&config.deployment, &config.outcomes) {
            Ok(m) => m,
            Err(status) => {
                error!("wasm canary {}: cannot define metrics: {status:?}", config.deployment);
                return false;
            }
        };
        let runtime = Rc::new(Runtime { share: Cell::new(config.initial_share), config, metrics });
        self.published = None;
        self.seen_cas = None;
        let now_ms = self.now_ms();
        self.configured_ms = now_ms;
        self.tick_ms = 0;
        self.refresh_share(&runtime, now_ms);
        self.retune_tick(&runtime, now_ms);
        self.runtime = Some(runtime);
        true
    }

    fn on_tick(&mut self) {
        let Some(runtime) = self.runtime.clone() else { return };
        let now_ms = self.now_ms();
        self.refresh_share(&runtime, now_ms);
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
