//! The network half of a check, run without the engine's lock: scrape the Envoys
//! or query Prometheus (and the policy's custom PromQL metrics), all in parallel
//! under one deadline. What it needs is copied out of the rollout under the lock
//! ([`CheckPlan`]); what it brings back ([`Fetched`]) is applied under the lock
//! again, against the rollout as it stands then (see `Engine::apply_check`).

use std::time::{Duration, SystemTime};

use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::evaluation::custom_row;
use crate::outcome_metric::CounterPairCounts;
use crate::policy::{CounterPairMetric, CustomMetric, Metric, RolloutPolicy};
use crate::source::{
    CohortValues, EnvoyAdminSource, IntervalMetrics, MeshMapping, PrometheusSource, SourceError, TargetScrape,
};
use crate::stats::ComparisonRow;

/// Where this check's interval comes from.
#[derive(Debug, Clone)]
pub(super) enum FetchPlan {
    /// Scrape these Envoys; the rollout's delta tracker turns the round into an interval.
    Envoy(EnvoyAdminSource),
    /// Ask Prometheus for the `window` ending at `end`: the exact span since the previous
    /// check's window ended, so consecutive windows tile (no request counted twice or lost).
    /// `mesh`: the policy's mapping of the mesh's own metrics, if it reads those.
    Prometheus { source: PrometheusSource, mesh: Option<MeshMapping>, window: Duration, end: SystemTime },
    /// Nothing can be measured this time (see the reason); the check counts as one without data.
    Skip(String),
}

/// Everything a check needs, copied out of the rollout under the lock.
#[derive(Debug, Clone)]
pub(super) struct CheckPlan {
    pub deployment: String,
    /// The state generation when the check started: if it moved by the time the
    /// answer is back, the interval straddles two shares and is not used.
    pub generation: u64,
    pub fetch: FetchPlan,
    /// Custom PromQL metrics and where to ask them (`None` without `--prometheus`).
    pub custom: Vec<CustomMetric>,
    /// Counter-pair PromQL metrics, asked over the same window.
    pub counter_pairs: Vec<CounterPairMetric>,
    pub prometheus: Option<PrometheusSource>,
}

/// What the policy's own PromQL brought back: the single-query guardrails' rows and
/// the counter pairs' counts (tested under the lock, with the rest of the evidence).
#[derive(Debug, Default)]
pub(super) struct CustomResults {
    pub rows: Vec<ComparisonRow>,
    pub pairs: Vec<CounterPairCounts>,
}

/// What came back.
#[derive(Debug)]
pub(super) enum Fetched {
    Envoy(Vec<TargetScrape>),
    Prometheus(Box<Result<IntervalMetrics, SourceError>>),
    Skipped(String),
    /// The check's deadline passed before every answer was in.
    DeadlineMissed(Duration),
}

impl CheckPlan {
    /// The custom PromQL metrics of a policy.
    pub fn custom_metrics(policy: &RolloutPolicy) -> Vec<CustomMetric> {
        policy
            .metrics
            .iter()
            .filter_map(|m| match &m.metric {
                Metric::Custom(custom) => Some(custom.clone()),
                _ => None,
            })
            .collect()
    }

    /// The counter-pair PromQL metrics of a policy.
    pub fn counter_pair_metrics(policy: &RolloutPolicy) -> Vec<CounterPairMetric> {
        policy
            .metrics
            .iter()
            .filter_map(|m| match &m.metric {
                Metric::CounterPair(pair) => Some(pair.clone()),
                _ => None,
            })
            .collect()
    }

    /// Runs every request of the check concurrently, abandoning all of them at `deadline`.
    pub async fn fetch(&self, deadline: Duration) -> (Fetched, CustomResults) {
        let started = Instant::now();
        let work = async { tokio::join!(self.fetch_interval(), self.custom_rows(), self.counter_pair_counts()) };
        match tokio::time::timeout_at(started + deadline, work).await {
            Ok((fetched, rows, pairs)) => (fetched, CustomResults { rows, pairs }),
            Err(_) => {
                let rows = self.custom.iter().map(|m| custom_row(m, CohortValues::default())).collect();
                (Fetched::DeadlineMissed(deadline), CustomResults { rows, pairs: Vec::new() })
            }
        }
    }

    /// Counter pairs, each four queries at once over the check's window; `None` counts
    /// without a Prometheus window or when a query fails (logged).
    async fn counter_pair_counts(&self) -> Vec<CounterPairCounts> {
        let FetchPlan::Prometheus { window, end, .. } = &self.fetch else {
            return self
                .counter_pairs
                .iter()
                .map(|m| CounterPairCounts { name: m.name.clone(), counts: None })
                .collect();
        };
        let (window, end) = (*window, *end);
        let mut queries = JoinSet::new();
        for (position, metric) in self.counter_pairs.iter().enumerate() {
            let (prometheus, metric, deployment) = (self.prometheus.clone(), metric.clone(), self.deployment.clone());
            queries.spawn(async move {
                let counts = match &prometheus {
                    Some(prometheus) => prometheus
                        .counter_pair(&metric.numerator, &metric.denominator, &deployment, window, Some(end))
                        .await
                        .unwrap_or_else(|e| {
                            tracing::warn!(%deployment, metric = %metric.name, error = %e, "counter-pair query failed");
                            None
                        }),
                    None => None,
                };
                (position, CounterPairCounts { name: metric.name, counts })
            });
        }
        let mut pairs: Vec<(usize, CounterPairCounts)> = Vec::with_capacity(self.counter_pairs.len());
        while let Some(joined) = queries.join_next().await {
            if let Ok(pair) = joined {
                pairs.push(pair);
            }
        }
        pairs.sort_by_key(|(position, _)| *position);
        pairs.into_iter().map(|(_, pair)| pair).collect()
    }

    async fn fetch_interval(&self) -> Fetched {
        match &self.fetch {
            FetchPlan::Envoy(source) => Fetched::Envoy(source.scrape().await),
            FetchPlan::Prometheus { source, mesh, window, end } => Fetched::Prometheus(Box::new(
                source.interval_from(mesh.as_ref(), &self.deployment, *window, Some(*end)).await,
            )),
            FetchPlan::Skip(reason) => Fetched::Skipped(reason.clone()),
        }
    }

    /// Custom PromQL metrics, all queried at once over the check's window. Without
    /// a Prometheus server (or when a query fails) they have no data, which holds
    /// promotion if they are critical.
    async fn custom_rows(&self) -> Vec<ComparisonRow> {
        let (window, end) = match &self.fetch {
            FetchPlan::Prometheus { window, end, .. } => (*window, Some(*end)),
            _ => (Duration::ZERO, None),
        };
        let mut queries = JoinSet::new();
        for (position, metric) in self.custom.iter().enumerate() {
            let (prometheus, metric, deployment) = (self.prometheus.clone(), metric.clone(), self.deployment.clone());
            queries.spawn(async move {
                let values = match (&prometheus, end) {
                    (Some(prometheus), Some(end)) => {
                        prometheus.custom_metric(&metric.query, &deployment, window, Some(end)).await.unwrap_or_else(
                            |e| {
                                tracing::warn!(%deployment, metric = %metric.name, error = %e, "custom metric query failed");
                                CohortValues::default()
                            },
                        )
                    }
                    _ => CohortValues::default(),
                };
                (position, custom_row(&metric, values))
            });
        }
        let mut rows: Vec<(usize, ComparisonRow)> = Vec::with_capacity(self.custom.len());
        while let Some(joined) = queries.join_next().await {
            if let Ok(row) = joined {
                rows.push(row);
            }
        }
        rows.sort_by_key(|(position, _)| *position);
        rows.into_iter().map(|(_, row)| row).collect()
    }
}

/// Tiles Prometheus windows: each check asks for the span since the previous window ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct PrometheusWindows {
    /// When the last window that was asked for ended (Prometheus' time axis is wall time).
    last_end: Option<SystemTime>,
    /// The end before that, to carry an empty window's span into the next one.
    previous_end: Option<SystemTime>,
}

/// How far behind the wall clock Prometheus windows end: one check interval, at most
/// Prometheus' default `scrape_timeout` (10 s). A sample is stamped when its scrape
/// starts and visible once the scrape ends; a window ending before a scrape that was in
/// flight when it was read would miss that sample, and the next window, whose start is
/// stamped before it, would never count it. Ending windows this far back lets every
/// scrape that started before the end finish first.
pub(super) fn prometheus_window_end(wall: SystemTime, check_interval: Duration) -> SystemTime {
    let lag = check_interval.min(Duration::from_secs(10));
    wall.checked_sub(lag).unwrap_or(wall)
}

/// Longest window asked for, in check intervals: after a longer gap (the analyzer was
/// stopped, say) the rollout has changed too much for one interval to stand for it;
/// the gap is left out and the next window is one check interval.
const MAX_WINDOW_INTERVALS: u32 = 10;

impl PrometheusWindows {
    /// The window ending at `end`, or why there is none this time. A clock that went
    /// back past the previous end would make windows overlap: that check is skipped
    /// and tiling starts again from `end`.
    pub fn next(&mut self, end: SystemTime, check_interval: Duration) -> Result<Duration, String> {
        let previous = self.last_end.replace(end);
        self.previous_end = previous;
        let Some(previous) = previous else { return Ok(check_interval) };
        match end.duration_since(previous) {
            Ok(span) if span.is_zero() => Err("no time passed since the previous window".to_string()),
            Ok(span) if span > check_interval * MAX_WINDOW_INTERVALS => {
                tracing::warn!(
                    gap_ms = span.as_millis(),
                    "{} ms since the previous window; counting only the last check interval",
                    span.as_millis()
                );
                Ok(check_interval)
            }
            Ok(span) => Ok(span),
            Err(back) => Err(format!(
                "the clock went back {} ms since the previous window; skipping this window so none overlap",
                back.duration().as_millis()
            )),
        }
    }

    /// The last window was not counted (no request in it: no scrape since its start; or
    /// its query failed or missed the deadline): the next window starts where that one
    /// started, so its requests are counted then (the source bridges scrape gaps, see
    /// `source::prometheus::api`). A span past [`MAX_WINDOW_INTERVALS`] starts over.
    pub fn carry_over(&mut self) {
        if self.previous_end.is_some() {
            self.last_end = self.previous_end;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTERVAL: Duration = Duration::from_secs(30);

    fn at(ms: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
    }

    #[test]
    fn consecutive_windows_tile_even_when_a_check_is_late() {
        let mut windows = PrometheusWindows::default();
        assert_eq!(windows.next(at(1_000_000), INTERVAL), Ok(INTERVAL));
        // The next check ran 4.2 s late: its window is 34.2 s, not 30 s (no gap).
        assert_eq!(windows.next(at(1_034_200), INTERVAL), Ok(Duration::from_millis(34_200)));
        // And the one after that ran on time again from the schedule: 25.8 s (no overlap).
        assert_eq!(windows.next(at(1_060_000), INTERVAL), Ok(Duration::from_millis(25_800)));
    }

    #[test]
    fn a_clock_step_back_skips_one_window_instead_of_overlapping() {
        let mut windows = PrometheusWindows::default();
        windows.next(at(10_000_000), INTERVAL).unwrap();
        let skipped = windows.next(at(10_000_000 - 3_600_000), INTERVAL).unwrap_err();
        assert!(skipped.contains("went back 3600000 ms"), "{skipped}");
        assert_eq!(windows.next(at(10_000_000 - 3_570_000), INTERVAL), Ok(INTERVAL));
    }

    #[test]
    fn an_empty_window_is_carried_into_the_next() {
        let mut windows = PrometheusWindows::default();
        windows.next(at(1_000_000), INTERVAL).unwrap();
        assert_eq!(windows.next(at(1_030_000), INTERVAL), Ok(INTERVAL));
        windows.carry_over();
        assert_eq!(windows.next(at(1_060_000), INTERVAL), Ok(Duration::from_secs(60)), "both spans, once");
        assert_eq!(windows.next(at(1_090_000), INTERVAL), Ok(INTERVAL));
    }

    #[test]
    fn windows_end_a_check_interval_back_at_most_ten_seconds() {
        assert_eq!(prometheus_window_end(at(100_000), Duration::from_secs(1)), at(99_000));
        assert_eq!(prometheus_window_end(at(100_000), INTERVAL), at(90_000));
    }

    #[test]
    fn a_long_gap_restarts_from_one_interval() {
        let mut windows = PrometheusWindows::default();
        windows.next(at(0), INTERVAL).unwrap();
        assert_eq!(windows.next(at(3_600_000), INTERVAL), Ok(INTERVAL));
        assert_eq!(windows.next(at(3_630_000), INTERVAL), Ok(INTERVAL));
    }

    /// Failed windows (Prometheus down, a missed deadline) are carried like empty ones: the
    /// window after them spans them, up to `MAX_WINDOW_INTERVALS`, then starts over.
    #[test]
    fn failed_windows_are_taken_by_the_next_until_the_span_is_too_long() {
        let mut windows = PrometheusWindows::default();
        windows.next(at(0), INTERVAL).unwrap();
        windows.next(at(30_000), INTERVAL).unwrap();
        assert_eq!(windows.next(at(60_000), INTERVAL), Ok(INTERVAL));
        windows.carry_over();
        assert_eq!(windows.next(at(90_000), INTERVAL), Ok(Duration::from_secs(60)), "from 30 s on, tiled");
        for check in 4..=13u64 {
            windows.next(at(check * 30_000), INTERVAL).unwrap();
            windows.carry_over();
        }
        assert_eq!(windows.next(at(14 * 30_000), INTERVAL), Ok(INTERVAL), "330 s since 90 s: past 300 s");
    }
}
