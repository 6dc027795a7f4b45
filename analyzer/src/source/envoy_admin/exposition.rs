//! Prometheus exposition text (Envoy's `/stats/prometheus`) → [`DeploymentSnapshot`].
//!
//! Envoy exports a thousand or more series, almost all of them its own; only
//! `canary_requests_total`, `canary_latency_us`, the outcome counter pairs
//! (`canary_outcome_requests_total`, `canary_outcome_events_total`), the three applied-rollout gauges
//! (for the wanted deployment) and `envoy_server_uptime` (to detect restarts) matter here. Lines are filtered by
//! prefix before `prometheus-parse` sees them: its regex per line is the cost.
//! Label values the analyzer does not know (a newer filter's cohort or class) are
//! skipped rather than refused, so a filter upgrade cannot blind the analyzer.

use canary_core::Cohort;
use canary_core::metrics::{APPLIED_GENERATION, APPLIED_SHARE_BP, CONFIG_AGE_MS, LATENCY, REQUESTS, StatusClass};
use prometheus_parse::{HistogramCount, Scrape, Value};

use crate::source::error::ExpositionError;
use crate::source::latency::{CumulativeLatency, LatencyUnit};
use crate::source::outcomes::{OUTCOME_EVENTS, OUTCOME_REQUESTS, OutcomeCounter, is_outcome_name};
use crate::source::snapshot::DeploymentSnapshot;

/// Envoy's uptime gauge in `/stats/prometheus`.
const UPTIME: &str = "envoy_server_uptime";
/// Envoy's hot restart epoch gauge (`--restart-epoch`) in `/stats/prometheus`.
const HOT_RESTART_EPOCH: &str = "envoy_server_hot_restart_epoch";
/// The server gauges read whatever the deployment (they carry no labels).
const SERVER: [&str; 2] = [UPTIME, HOT_RESTART_EPOCH];

/// The filter's metrics read per deployment: their samples carry `deployment="id"`.
const PER_DEPLOYMENT: [&str; 7] =
    [REQUESTS, LATENCY, APPLIED_GENERATION, APPLIED_SHARE_BP, CONFIG_AGE_MS, OUTCOME_REQUESTS, OUTCOME_EVENTS];

/// Largest share in basis points (everybody on the canary).
const FULL_SHARE_BP: f64 = 10_000.0;

/// The `deployment="id"` needle [`is_relevant`] looks for.
pub fn deployment_label(deployment: &str) -> String {
    format!("deployment=\"{deployment}\"")
}

/// Whether a line can belong to a metric we read: comments of our metrics, the
/// uptime and hot restart epoch gauges, and our samples that carry `deployment_label` (`deployment="id"`).
/// Filtering samples by deployment before parsing keeps the cost proportional to
/// one deployment's series, not the whole mesh's (the parser's regex per line is
/// the cost: 75 ms -> 4 ms on a 100k-series exposition of 200 deployments).
pub fn is_relevant(line: &str, deployment_label: &str) -> bool {
    if let Some(comment) = line.strip_prefix("# TYPE ").or_else(|| line.strip_prefix("# HELP ")) {
        return SERVER.iter().chain(&PER_DEPLOYMENT).any(|name| comment.starts_with(name));
    }
    SERVER.iter().any(|name| line.starts_with(name))
        || (PER_DEPLOYMENT.iter().any(|name| line.starts_with(name)) && line.contains(deployment_label))
}

/// Envoy writes label-less series as `name{} value`, which `prometheus-parse` does
/// not recognise (it wants at least one label between braces): drop the braces.
fn without_empty_labels(line: &str) -> String {
    match line.split_once("{} ") {
        Some((name, value)) if !name.contains(' ') => format!("{name} {value}"),
        _ => line.to_string(),
    }
}

fn cohort_of(label: &str) -> Option<Cohort> {
    Cohort::ALL.into_iter().find(|cohort| cohort.label() == label)
}

fn class_of(label: &str) -> Option<StatusClass> {
    StatusClass::ALL.into_iter().find(|class| class.label() == label)
}

/// A counter value as a whole count; refuses negative, infinite and NaN values.
fn count(metric: &str, value: f64) -> Result<u64, ExpositionError> {
    if value.is_finite() && value >= 0.0 {
        Ok(value.round() as u64)
    } else {
        Err(ExpositionError::BadValue { metric: metric.to_string(), value })
    }
}

/// Parses exposition text and keeps `deployment`'s series.
pub fn parse_exposition(text: &str, deployment: &str) -> Result<DeploymentSnapshot, ExpositionError> {
    // Deployment ids are [A-Za-z0-9_-] and the closing quote is part of the needle,
    // so `svc-1` never matches `svc-10`; the label is checked again after parsing.
    let deployment_label = deployment_label(deployment);
    let lines =
        text.lines().filter(|line| is_relevant(line, &deployment_label)).map(|line| Ok(without_empty_labels(line)));
    let scrape = Scrape::parse(lines).map_err(ExpositionError::Read)?;
    let mut snapshot = DeploymentSnapshot::default();
    for sample in &scrape.samples {
        if sample.metric == UPTIME {
            snapshot.server_uptime_seconds = sample_number(&sample.value).filter(|v| v.is_finite());
            continue;
        }
        if sample.metric == HOT_RESTART_EPOCH {
            let epoch = sample_number(&sample.value).filter(|v| v.is_finite() && *v >= 0.0);
            snapshot.hot_restart_epoch = epoch.map(|v| v.round() as u64);
            continue;
        }
        if sample.labels.get("deployment") != Some(deployment) {
            continue;
        }
        if read_applied(&mut snapshot, &sample.metric, &sample.value)? {
            continue;
        }
        let Some(cohort) = sample.labels.get("cohort").and_then(cohort_of) else { continue };
        let cohort_snapshot = snapshot.cohorts.get_mut(cohort);
        match (sample.metric.as_str(), &sample.value) {
            (REQUESTS, value) => {
                let Some(class) = sample.labels.get("class").and_then(class_of) else { continue };
                let Some(value) = sample_number(value) else { continue };
                *cohort_snapshot.requests.get_mut(class) = count(REQUESTS, value)?;
            }
            (metric, value) if OutcomeCounter::from_metric(metric).is_some() => {
                let (Some(counter), Some(outcome), Some(number)) = (
                    OutcomeCounter::from_metric(metric),
                    sample.labels.get("outcome").filter(|name| is_outcome_name(name)),
                    sample_number(value),
                ) else {
                    continue;
                };
                counter.set(&mut cohort_snapshot.outcomes, outcome, count(metric, number)?);
            }
            (LATENCY, Value::Histogram(buckets)) => {
                let latency = cohort_snapshot.latency.get_or_insert_with(CumulativeLatency::default);
                fill_buckets(latency, buckets)?;
            }
            (metric, value) if metric.strip_prefix(LATENCY) == Some("_sum") => {
                let latency = cohort_snapshot.latency.get_or_insert_with(CumulativeLatency::default);
                latency.sum_us = sample_number(value).filter(|v| v.is_finite() && *v >= 0.0).unwrap_or(0.0);
            }
            (metric, value) if metric.strip_prefix(LATENCY) == Some("_count") => {
                let latency = cohort_snapshot.latency.get_or_insert_with(CumulativeLatency::default);
                let Some(value) = sample_number(value) else { continue };
                latency.count = latency.count.max(count(metric, value)?);
            }
            _ => {}
        }
    }
    Ok(snapshot)
}

/// Reads `metric` into `snapshot.applied` if it is one of the applied-rollout gauges;
/// whether it was. A negative, infinite or NaN value, or a share above 10 000 bp, is refused.
fn read_applied(snapshot: &mut DeploymentSnapshot, metric: &str, value: &Value) -> Result<bool, ExpositionError> {
    let applied = &mut snapshot.applied;
    let Some(number) = sample_number(value) else { return Ok(false) };
    match metric {
        APPLIED_GENERATION => applied.generation = Some(count(metric, number)?),
        CONFIG_AGE_MS => applied.config_age_ms = Some(count(metric, number)?),
        APPLIED_SHARE_BP => applied.share_bp = Some(share_bp(metric, number)?),
        _ => return Ok(false),
    }
    Ok(true)
}

/// The share gauge's value in basis points; a value outside 0..=10 000 is refused.
pub(super) fn share_bp(metric: &str, number: f64) -> Result<u32, ExpositionError> {
    if !(0.0..=FULL_SHARE_BP).contains(&number) {
        return Err(ExpositionError::OutOfRange {
            metric: metric.to_string(),
            value: number,
            expected: "0 to 10000 basis points",
        });
    }
    // In range, so the rounded value fits.
    Ok(number.round() as u32)
}

/// The number of a non-histogram sample.
fn sample_number(value: &Value) -> Option<f64> {
    match value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some(*v),
        Value::Histogram(_) | Value::Summary(_) => None,
    }
}

/// Sets the `le` buckets of a histogram (the `+Inf` bucket becomes the count).
fn fill_buckets(latency: &mut CumulativeLatency, buckets: &[HistogramCount]) -> Result<(), ExpositionError> {
    let bucket_metric = || format!("{LATENCY}_bucket");
    let mut finite: Vec<(u64, u64)> = Vec::with_capacity(buckets.len());
    for bucket in buckets {
        let observations = count(&bucket_metric(), bucket.count)?;
        if bucket.less_than == f64::INFINITY {
            latency.count = latency.count.max(observations);
            continue;
        }
        let bound = LatencyUnit::Microseconds
            .whole_microseconds(bucket.less_than)
            .ok_or(ExpositionError::BadBound { metric: bucket_metric(), bound: bucket.less_than })?;
        finite.push((bound, observations));
    }
    finite.sort_unstable();
    // Two bounds in one whole microsecond (2.5 and 2) count the same observations;
    // the larger count (sorted last) is kept.
    finite.dedup_by(|later, kept| {
        let same = later.0 == kept.0;
        if same {
            kept.1 = kept.1.max(later.1);
        }
        same
    });
    latency.upper_bounds_us = finite.iter().map(|(bound, _)| *bound).collect();
    latency.le_counts = finite.iter().map(|(_, observations)| *observations).collect();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::snapshot::AppliedRollout;

    /// The 36 bounds `histogram_bucket_settings` had when the testdata was captured.
    const CAPTURED_BUCKETS_US: [u64; 36] = [
        250, 500, 1_000, 2_000, 3_000, 4_000, 5_000, 6_000, 7_000, 8_000, 9_000, 10_000, 12_500, 15_000, 17_500,
        20_000, 25_000, 30_000, 35_000, 40_000, 45_000, 50_000, 55_000, 60_000, 70_000, 80_000, 100_000, 150_000,
        250_000, 500_000, 1_000_000, 2_500_000, 5_000_000, 10_000_000, 30_000_000, 60_000_000,
    ];

    /// Real `/stats/prometheus` output of Envoy 1.40 with the filter (`envoy/envoy.yaml`,
    /// share 50 %): 80 requests to `/`, 10 to a missing path (404), one denied user.
    /// Trimmed to a few of Envoy's own series around ours.
    const ENVOY_1_40: &str = include_str!("../testdata/envoy_1_40.prom");

    #[test]
    fn reads_the_hot_restart_epoch_as_envoy_writes_it() {
        assert_eq!(parse_exposition(ENVOY_1_40, "demo").unwrap().hot_restart_epoch, None, "not in the trimmed capture");
        let text =
            format!("# TYPE envoy_server_hot_restart_epoch gauge\nenvoy_server_hot_restart_epoch{{}} 2\n{ENVOY_1_40}");
        let snapshot = parse_exposition(&text, "demo").unwrap();
        assert_eq!((snapshot.hot_restart_epoch, snapshot.server_uptime_seconds), (Some(2), Some(11.0)));
    }

    #[test]
    fn reads_the_counters_and_histograms_envoy_exports() {
        let snapshot = parse_exposition(ENVOY_1_40, "demo").unwrap();
        let canary = &snapshot.cohorts.canary;
        assert_eq!((canary.requests.success, canary.requests.client_error, canary.requests.total()), (42, 2, 44));
        assert_eq!(canary.requests.errors(), 0);
        let control = &snapshot.cohorts.control;
        assert_eq!((control.requests.success, control.requests.client_error), (38, 8));
        assert_eq!(snapshot.cohorts.excluded.requests.total(), 1);
        assert_eq!(snapshot.cohorts.forced.requests.total(), 0);
        assert_eq!(snapshot.server_uptime_seconds, Some(11.0));

        let latency = canary.latency.as_ref().unwrap();
        assert_eq!(latency.upper_bounds_us, CAPTURED_BUCKETS_US.to_vec());
        assert_eq!(latency.count, 44);
        assert!((latency.sum_us - 130_379.636_924_678_7).abs() < 1e-6);
        assert!(latency.le_counts.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(*latency.le_counts.last().unwrap(), 44);
        assert_eq!(snapshot.cohorts.control.latency.as_ref().unwrap().count, 46);
        // Every cohort's histogram is exported, empty or not.
        assert_eq!(snapshot.cohorts.forced.latency.as_ref().unwrap().count, 0);
    }

    #[test]
    fn other_deployments_and_envoys_own_histograms_are_ignored() {
        let snapshot = parse_exposition(ENVOY_1_40, "checkout").unwrap();
        assert_eq!(snapshot.cohorts, Default::default());
        // Envoy's own histogram (`envoy_cluster_upstream_cx_connect_ms`, le="0.5") is filtered
        // out before parsing, so its fractional bound is no error.
        let scrape = Scrape::parse(ENVOY_1_40.lines().map(|l| Ok(l.to_string()))).unwrap();
        assert!(scrape.samples.iter().any(|s| s.metric == "envoy_cluster_upstream_cx_connect_ms"));
    }

    #[test]
    fn unknown_labels_are_skipped_and_bad_values_refused() {
        let text = "# TYPE canary_requests_total counter\n\
            canary_requests_total{deployment=\"d\",cohort=\"shadow\",class=\"2xx\"} 5\n\
            canary_requests_total{deployment=\"d\",cohort=\"canary\",class=\"6xx\"} 5\n\
            canary_requests_total{deployment=\"d\",cohort=\"canary\",class=\"5xx\"} 7\n";
        let snapshot = parse_exposition(text, "d").unwrap();
        assert_eq!(snapshot.cohorts.canary.requests.total(), 7);
        assert_eq!(snapshot.cohorts.canary.requests.errors(), 7);

        let negative = "# TYPE canary_requests_total counter\n\
            canary_requests_total{deployment=\"d\",cohort=\"canary\",class=\"5xx\"} -1\n";
        let error = parse_exposition(negative, "d").unwrap_err();
        assert_eq!(error.to_string(), "canary_requests_total has value -1, expected a finite count >= 0");

        let negative = "# TYPE canary_latency_us histogram\n\
            canary_latency_us_bucket{deployment=\"d\",cohort=\"canary\",le=\"-1\"} 1\n\
            canary_latency_us_bucket{deployment=\"d\",cohort=\"canary\",le=\"+Inf\"} 1\n";
        let error = parse_exposition(negative, "d").unwrap_err();
        assert_eq!(error.to_string(), "canary_latency_us_bucket has bucket bound le=-1, expected microseconds >= 0");
    }

    /// Envoy's default buckets (no `histogram_bucket_settings`) start at `le="0.5"`:
    /// read as the whole microseconds at or below it, the layout kept as exported.
    #[test]
    fn envoys_default_buckets_are_read_as_exported() {
        let bounds = ["0.5", "1", "5", "10", "25", "50", "100", "250", "500", "1000", "2500", "5000", "10000"];
        let mut text = String::from("# TYPE canary_latency_us histogram\n");
        for (position, bound) in bounds.iter().enumerate() {
            let labels = format!("deployment=\"d\",cohort=\"canary\",le=\"{bound}\"");
            text.push_str(&format!("canary_latency_us_bucket{{{labels}}} {}\n", position.saturating_sub(8)));
        }
        text.push_str("canary_latency_us_bucket{deployment=\"d\",cohort=\"canary\",le=\"+Inf\"} 7\n");
        let latency = parse_exposition(&text, "d").unwrap().cohorts.canary.latency.unwrap();
        assert_eq!(latency.upper_bounds_us, [0, 1, 5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000]);
        assert_eq!((latency.le_counts[8], latency.le_counts[12], latency.count), (0, 4, 7));
        // 2.5 and 2 are one whole microsecond: the larger count stands.
        let twice = "# TYPE canary_latency_us histogram\n\
            canary_latency_us_bucket{deployment=\"d\",cohort=\"canary\",le=\"2\"} 3\n\
            canary_latency_us_bucket{deployment=\"d\",cohort=\"canary\",le=\"2.5\"} 4\n\
            canary_latency_us_bucket{deployment=\"d\",cohort=\"canary\",le=\"+Inf\"} 4\n";
        let latency = parse_exposition(twice, "d").unwrap().cohorts.canary.latency.unwrap();
        assert_eq!((latency.upper_bounds_us, latency.le_counts), (vec![2], vec![4]));
    }

    /// The three gauges as Envoy writes them (gauge type, label-tagged, u64 values).
    fn gauges(deployment: &str, generation: u64, share_bp: u64, config_age_ms: u64) -> String {
        format!(
            "# TYPE canary_applied_generation gauge\n\
             canary_applied_generation{{deployment=\"{deployment}\"}} {generation}\n\
             # TYPE canary_applied_share_bp gauge\n\
             canary_applied_share_bp{{deployment=\"{deployment}\"}} {share_bp}\n\
             # TYPE canary_config_age_ms gauge\n\
             canary_config_age_ms{{deployment=\"{deployment}\"}} {config_age_ms}\n"
        )
    }

    #[test]
    fn the_applied_rollout_gauges_of_the_wanted_deployment_are_read() {
        let text = format!(
            "{}{}{ENVOY_1_40}",
            gauges("demo", 1_764_000_000_000, 2_500, 730),
            gauges("demo-2", 9, 10_000, u64::MAX)
        );
        let snapshot = parse_exposition(&text, "demo").unwrap();
        let expected =
            AppliedRollout { generation: Some(1_764_000_000_000), share_bp: Some(2_500), config_age_ms: Some(730) };
        assert_eq!(snapshot.applied, expected);
        assert_eq!(snapshot.cohorts.canary.requests.total(), 44, "the counters are read as before");
        // Unknown age as Envoy prints u64::MAX: read back as u64::MAX, not wrapped or refused.
        let other = parse_exposition(&text, "demo-2").unwrap().applied;
        assert_eq!(
            other,
            AppliedRollout { generation: Some(9), share_bp: Some(10_000), config_age_ms: Some(u64::MAX) }
        );
    }

    #[test]
    fn a_filter_without_the_gauges_reads_as_none() {
        assert_eq!(parse_exposition(ENVOY_1_40, "demo").unwrap().applied, AppliedRollout::default());
    }

    #[test]
    fn impossible_gauge_values_are_refused_with_the_metric_and_the_value() {
        let share = gauges("d", 3, 10_001, 0);
        assert_eq!(
            parse_exposition(&share, "d").unwrap_err().to_string(),
            "canary_applied_share_bp has value 10001, expected 0 to 10000 basis points"
        );
        let negative = gauges("d", 3, 500, 0).replace("} 3\n", "} -3\n");
        assert_eq!(
            parse_exposition(&negative, "d").unwrap_err().to_string(),
            "canary_applied_generation has value -3, expected a finite count >= 0"
        );
    }

    #[test]
    fn label_less_series_as_envoy_writes_them_parse() {
        assert_eq!(without_empty_labels("envoy_server_uptime{} 11"), "envoy_server_uptime 11");
        let labelled = r#"canary_requests_total{deployment="d",cohort="canary",class="2xx"} 3"#;
        assert_eq!(without_empty_labels(labelled), labelled);
    }

    #[test]
    fn empty_text_is_an_empty_snapshot() {
        let snapshot = parse_exposition("", "demo").unwrap();
        assert_eq!(snapshot, DeploymentSnapshot::default());
        assert!(snapshot.cohorts.canary.latency.is_none());
    }

    #[test]
    fn only_the_wanted_deployments_series_are_read() {
        let text = "# TYPE canary_requests_total counter\n\
            canary_requests_total{deployment=\"d\",cohort=\"canary\",class=\"2xx\"} 7\n\
            canary_requests_total{deployment=\"d2\",cohort=\"canary\",class=\"2xx\"} 1000\n\
            canary_requests_total{deployment=\"xd\",cohort=\"canary\",class=\"2xx\"} 1000\n";
        let snapshot = parse_exposition(text, "d").unwrap();
        assert_eq!(snapshot.cohorts.get(Cohort::Canary).requests.total(), 7);
        assert_eq!(parse_exposition(text, "d2").unwrap().cohorts.get(Cohort::Canary).requests.total(), 1000);
    }
}
