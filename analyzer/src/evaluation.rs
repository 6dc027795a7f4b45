//! One rollout's running comparison: the statistical tests a policy asks for, fed
//! one interval at a time, turned into the report rows the ladder decides on.
//!
//! Error rate, sample ratio and the latency verdicts (tail exceedances) condition
//! on each interval's own split, so their evidence carries across ladder steps and
//! stays valid when load moves latency (see `docs/statistics.md`, "Pooled or per
//! step"). Only the quantile estimates the latency rows show pool histograms, and
//! those restart whenever the share changes (see [`RolloutEvaluation::restart_latency`]).

use crate::policy::{CustomMetric, Metric, RolloutPolicy};
use crate::source::{CohortValues, IntervalMetrics};
use crate::stats::{
    CohortCounts, ComparisonRow, DifferenceScale, ErrorRateSettings, ErrorRateTest, IntervalCounts, LatencyComparison,
    LatencySettings, QuantileTolerance, REPORTED_QUANTILES, SampleRatioSettings, SampleRatioTest, StatsError,
    TailExceedanceSettings, TailExceedanceTest, Verdict, latency_metric_name, sort_worst_first,
};
use canary_core::Cohort;
use canary_core::metrics::LATENCY_BUCKETS_US;

/// Row name of the share of requests that are not 2xx (1 − success rate).
pub const NON_SUCCESS_RATE: &str = "non_success_rate";

/// The row of a policy's custom PromQL metric: a guardrail, not a statistical test.
/// PromQL gives one number per cohort with no sample size, so there is no p-value
/// or interval: the canary is `Worse` when it exceeds control by more than the
/// policy's tolerances (higher is worse), `NotEnoughData` when either value is missing.
pub fn custom_row(metric: &CustomMetric, values: CohortValues) -> ComparisonRow {
    let (absolute_difference, relative_difference) = ComparisonRow::differences(values.canary, values.control);
    let verdict = match (values.canary, values.control) {
        (Some(canary), Some(control)) => {
            let allowed = control
                + metric.max_absolute_increase.unwrap_or(0.0)
                + metric.max_relative_increase.unwrap_or(0.0) * control.abs();
            if canary > allowed { Verdict::Worse } else { Verdict::NoDifference }
        }
        _ => Verdict::NotEnoughData,
    };
    ComparisonRow {
        metric: metric.name.clone(),
        canary: values.canary,
        control: values.control,
        absolute_difference,
        relative_difference,
        interval: None,
        interval_scale: DifferenceScale::Absolute,
        p_value: None,
        verdict,
    }
}

/// The tests of one rollout and the policy values they need. Serializable, so the
/// evidence gathered so far survives a restart of the analyzer (see `engine`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RolloutEvaluation {
    error_rate: ErrorRateTest,
    /// The same sequential test on every request that is not a 2xx (4xx, 5xx, resets):
    /// the success-rate comparison, read as its complement. Reported, never critical.
    non_success: ErrorRateTest,
    sample_ratio: SampleRatioTest,
    /// This step's pooled histograms: the quantile estimates the latency rows show.
    latency: LatencyComparison,
    latency_settings: LatencySettings,
    /// One tail-exceedance test per reported quantile, over the whole rollout:
    /// the latency rows' verdicts, p-values and intervals.
    latency_verdicts: Vec<TailExceedanceTest>,
    alpha: f64,
    min_requests: u64,
}

fn latency_settings(policy: &RolloutPolicy) -> LatencySettings {
    // Every reported quantile gets a row; those the policy names get its tolerance
    // (absolute; a relative-only tolerance applies to the control value and is
    // approximated by 0 here, so name an absolute one for latency you gate on).
    let quantiles = REPORTED_QUANTILES
        .iter()
        .map(|&quantile| {
            let tolerance_us = policy
                .metrics
                .iter()
                .find_map(|m| match &m.metric {
                    Metric::Latency { quantile: q, tolerance } if (q.fraction() - quantile).abs() < 1e-9 => {
                        tolerance.allowed_increase_us(None)
                    }
                    _ => None,
                })
                .unwrap_or(0.0);
            QuantileTolerance { quantile, tolerance_us }
        })
        .collect();
    LatencySettings { quantiles, ..LatencySettings::with_tolerance_us(0.0) }
}

impl RolloutEvaluation {
    pub fn new(policy: &RolloutPolicy) -> Result<RolloutEvaluation, StatsError> {
        let mut error_settings = ErrorRateSettings::default();
        let mut ratio_settings = SampleRatioSettings::default();
        for metric in &policy.metrics {
            match metric.metric {
                Metric::ErrorRate { max_relative_increase } => {
                    error_settings.relative_tolerance = max_relative_increase
                }
                Metric::SampleRatio { max_relative_deviation } => {
                    ratio_settings.relative_tolerance = max_relative_deviation
                }
                _ => {}
            }
        }
        let latency_settings = latency_settings(policy);
        let latency_verdicts = latency_settings
            .quantiles
            .iter()
            .map(|q| TailExceedanceTest::new(TailExceedanceSettings::new(q.quantile, q.tolerance_us)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RolloutEvaluation {
            error_rate: ErrorRateTest::new(error_settings)?,
            non_success: ErrorRateTest::new(ErrorRateSettings::default())?,
            sample_ratio: SampleRatioTest::new(ratio_settings)?,
            latency: LatencyComparison::new(&LATENCY_BUCKETS_US, latency_settings.clone())?,
            latency_settings,
            latency_verdicts,
            alpha: policy.alpha,
            min_requests: policy.min_requests_per_cohort,
        })
    }

    /// Adds one interval measured while `share_bp` was in force.
    pub fn observe(&mut self, interval: &IntervalMetrics, share_bp: u32) -> Result<(), StatsError> {
        self.error_rate.observe(interval.interval_counts())?;
        let non_success = |cohort| {
            let requests = &interval.cohorts.get(cohort).requests;
            CohortCounts { requests: requests.total(), errors: requests.total() - requests.success }
        };
        self.non_success
            .observe(IntervalCounts { canary: non_success(Cohort::Canary), control: non_success(Cohort::Control) })?;
        let expected_share = f64::from(share_bp) / 10_000.0;
        self.sample_ratio.observe(
            interval.requests(Cohort::Canary),
            interval.requests(Cohort::Control),
            expected_share,
        )?;
        if let (Some(canary), Some(control)) = (interval.latency(Cohort::Canary), interval.latency(Cohort::Control)) {
            self.latency.observe(canary, control)?;
            for test in &mut self.latency_verdicts {
                test.observe(canary, control)?;
            }
        }
        Ok(())
    }

    /// A new share changes who is in each cohort: the pooled quantile estimates
    /// start over. The latency verdicts' evidence is kept: it compares the cohorts
    /// within each interval, which a new share does not bias.
    pub fn restart_latency(&mut self) -> Result<(), StatsError> {
        self.latency = LatencyComparison::new(&LATENCY_BUCKETS_US, self.latency_settings.clone())?;
        Ok(())
    }

    /// The report, worst first; `extra` rows (custom metrics) are sorted in.
    pub fn rows(&self, extra: Vec<ComparisonRow>) -> Result<Vec<ComparisonRow>, StatsError> {
        let mut non_success = self.non_success.row(self.alpha, self.min_requests)?;
        non_success.metric = NON_SUCCESS_RATE.to_string();
        let mut rows = vec![
            self.error_rate.row(self.alpha, self.min_requests)?,
            non_success,
            self.sample_ratio.row(self.alpha, self.min_requests)?,
        ];
        for test in &self.latency_verdicts {
            let (canary, control) = self.latency.estimates_us(test.quantile());
            let metric = latency_metric_name(test.quantile());
            rows.push(test.row(metric, canary, control, self.alpha, self.min_requests)?);
        }
        rows.extend(extra);
        sort_worst_first(&mut rows);
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{CohortInterval, IntervalMetrics};
    use crate::stats::{LatencyHistogram, Verdict};

    fn policy() -> RolloutPolicy {
        RolloutPolicy::from_yaml(
            "apiVersion: canary.wasm.dev/v1alpha1\nkind: RolloutPolicy\nmetadata: {name: t}\n\
             spec: {deployment: checkout, min_requests_per_cohort: 500}\n",
        )
        .unwrap()
    }

    /// One interval at a 50 % share: `n` requests per cohort, error counts as given,
    /// latency all in the 10 ms bucket.
    fn interval(n: u64, canary_errors: u64, control_errors: u64) -> IntervalMetrics {
        let mut metrics = IntervalMetrics::default();
        for (cohort, errors) in [(Cohort::Canary, canary_errors), (Cohort::Control, control_errors)] {
            let mut counts = vec![0u64; LATENCY_BUCKETS_US.len() + 1];
            counts[11] = n; // the 10 000 µs bucket
            let latency = LatencyHistogram::from_bucket_counts(&LATENCY_BUCKETS_US, &counts).unwrap();
            let c: &mut CohortInterval = metrics.cohorts.get_mut(cohort);
            c.requests.success = n - errors;
            c.requests.server_error = errors;
            c.latency = Some(latency);
        }
        metrics
    }

    fn verdict(rows: &[ComparisonRow], metric: &str) -> Verdict {
        rows.iter().find(|r| r.metric == metric).unwrap().verdict
    }

    #[test]
    fn too_little_traffic_is_not_enough_data() {
        let mut eval = RolloutEvaluation::new(&policy()).unwrap();
        eval.observe(&interval(100, 50, 0), 5_000).unwrap();
        let rows = eval.rows(Vec::new()).unwrap();
        assert_eq!(verdict(&rows, "error_rate"), Verdict::NotEnoughData);
        assert!(rows.iter().any(|r| r.metric == "latency_p99_us"));
        assert!(rows.iter().any(|r| r.metric == NON_SUCCESS_RATE));
    }

    #[test]
    fn custom_metrics_compare_against_their_tolerance() {
        let metric = CustomMetric {
            name: "declines".into(),
            query: "x{cohort=\"{{cohort}}\"}".into(),
            max_relative_increase: Some(0.1),
            max_absolute_increase: None,
        };
        let row = |canary, control| custom_row(&metric, CohortValues { canary, control }).verdict;
        assert_eq!(row(Some(10.9), Some(10.0)), Verdict::NoDifference, "within 10 %");
        assert_eq!(row(Some(11.5), Some(10.0)), Verdict::Worse);
        assert_eq!(row(None, Some(10.0)), Verdict::NotEnoughData);
    }

    #[test]
    fn a_clear_error_regression_is_worse_and_sorted_first() {
        let mut eval = RolloutEvaluation::new(&policy()).unwrap();
        for _ in 0..10 {
            eval.observe(&interval(1_000, 50, 5), 5_000).unwrap();
        }
        let rows = eval.rows(Vec::new()).unwrap();
        assert_eq!(rows[0].metric, "error_rate");
        assert_eq!(rows[0].verdict, Verdict::Worse);
        assert_ne!(verdict(&rows, "latency_p99_us"), Verdict::Worse, "identical latency");
        assert_ne!(verdict(&rows, "sample_ratio"), Verdict::Worse, "a 50/50 split at 50 %");
    }

    /// One interval at a 50 % share with `n` requests per cohort, no errors:
    /// control 96 % at 10 ms, 2 % in (20, 25] ms, 2 % in (45, 50] ms; the canary
    /// the same but 4 % in (60, 70] ms instead of the last two (p99 ~20 ms slower).
    fn slow_tail_interval(n: u64) -> IntervalMetrics {
        let mut metrics = IntervalMetrics::default();
        let index = |bound: u64| LATENCY_BUCKETS_US.iter().position(|b| *b == bound).unwrap();
        for cohort in [Cohort::Canary, Cohort::Control] {
            let mut counts = vec![0u64; LATENCY_BUCKETS_US.len() + 1];
            counts[index(10_000)] = n * 96 / 100;
            if cohort == Cohort::Canary {
                counts[index(70_000)] = n * 4 / 100;
            } else {
                counts[index(25_000)] = n * 2 / 100;
                counts[index(50_000)] = n * 2 / 100;
            }
            let c: &mut CohortInterval = metrics.cohorts.get_mut(cohort);
            c.requests.success = counts.iter().sum();
            c.latency = Some(LatencyHistogram::from_bucket_counts(&LATENCY_BUCKETS_US, &counts).unwrap());
        }
        metrics
    }

    #[test]
    fn latency_evidence_survives_a_new_share_and_the_row_shows_this_steps_estimates() {
        let policy = RolloutPolicy::from_yaml(
            "apiVersion: canary.wasm.dev/v1alpha1\nkind: RolloutPolicy\nmetadata: {name: t}\n\
             spec:\n  deployment: checkout\n  min_requests_per_cohort: 500\n  metrics:\n    \
             - {name: error_rate}\n    - {name: latency_p99, max_increase_ms: 5}\n",
        )
        .unwrap();
        let mut eval = RolloutEvaluation::new(&policy).unwrap();
        for _ in 0..3 {
            eval.observe(&slow_tail_interval(2_000), 5_000).unwrap();
        }
        let p99 = |eval: &RolloutEvaluation| {
            eval.rows(Vec::new()).unwrap().into_iter().find(|r| r.metric == "latency_p99_us").unwrap()
        };
        let before = p99(&eval);
        eval.restart_latency().unwrap();
        assert_eq!(p99(&eval).canary, None, "the estimates are this step's");
        assert_eq!(p99(&eval).p_value, before.p_value, "the evidence is the rollout's");
        eval.observe(&slow_tail_interval(2_000), 5_000).unwrap();
        let after = p99(&eval);
        assert_eq!(after.verdict, Verdict::Worse, "{after:?}");
        assert!(after.p_value.unwrap() < before.p_value.unwrap());
        // Worse means the shift is shown beyond the 5 ms tolerance, and the interval says so.
        assert!(after.interval.unwrap().lo.unwrap() >= 5_000.0, "{after:?}");
    }

    #[test]
    fn a_lopsided_split_is_a_sample_ratio_mismatch() {
        let mut eval = RolloutEvaluation::new(&policy()).unwrap();
        for _ in 0..10 {
            eval.observe(&interval(1_000, 5, 5), 500).unwrap(); // 50/50 traffic where 5 % was expected
        }
        assert_eq!(verdict(&eval.rows(Vec::new()).unwrap(), "sample_ratio"), Verdict::Worse);
    }
}
