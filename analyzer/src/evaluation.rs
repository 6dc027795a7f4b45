//! One rollout's running comparison: the statistical tests a policy asks for, fed
//! one interval at a time, turned into the report rows the ladder decides on.
//!
//! Error rate, sample ratio and the latency verdicts (tail exceedances) condition
//! on each interval's own split, so their evidence carries across ladder steps and
//! stays valid when load moves latency (see `docs/statistics.md`, "Pooled or per
//! step"). Only the quantile estimates the latency rows show pool histograms, and
//! those restart whenever the share changes (see [`RolloutEvaluation::restart_latency`]).

use crate::outcome_metric::{CounterPairCounts, RateMetricTests};
use crate::policy::{CustomMetric, Metric, RolloutPolicy};
use crate::source::{CohortValues, IntervalMetrics};
use crate::stats::{
    CohortCounts, ComparisonRow, DifferenceScale, ErrorRateSettings, ErrorRateTest, IntervalCounts, LatencyHistogram,
    NON_SUCCESS_RATE_ROW, QuantileTolerance, REPORTED_QUANTILES, RowOrigin, SampleRatioSettings, SampleRatioTest,
    StatsError, TailExceedanceSettings, TailExceedanceTest, ValueUnit, Verdict, latency_metric_name, sort_worst_first,
};
use canary_core::Cohort;

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
        unit: ValueUnit::Number,
        origin: RowOrigin::Policy,
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
    /// This step's pooled histograms (canary, control): the quantile estimates
    /// the latency rows show. `None` before the step's first histograms.
    step_latency: Option<(LatencyHistogram, LatencyHistogram)>,
    /// One tail-exceedance test per reported quantile, over the whole rollout:
    /// the latency rows' verdicts, p-values and intervals.
    latency_verdicts: Vec<TailExceedanceTest>,
    alpha: f64,
    min_requests: u64,
    /// Outcome and counter-pair metrics (absent from evidence saved before they existed).
    #[serde(default)]
    rates: RateMetricTests,
}

fn latency_tolerances(policy: &RolloutPolicy) -> Vec<QuantileTolerance> {
    // Every reported quantile gets a row; those the policy names get its tolerance
    // (absolute; a relative-only tolerance applies to the control value and is
    // approximated by 0 here, so name an absolute one for latency you gate on).
    REPORTED_QUANTILES
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
        .collect()
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
        let latency_verdicts = latency_tolerances(policy)
            .iter()
            .map(|q| TailExceedanceTest::new(TailExceedanceSettings::new(q.quantile, q.tolerance_us)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RolloutEvaluation {
            error_rate: ErrorRateTest::new(error_settings)?,
            non_success: ErrorRateTest::new(ErrorRateSettings::default())?,
            sample_ratio: SampleRatioTest::new(ratio_settings)?,
            step_latency: None,
            latency_verdicts,
            alpha: policy.alpha,
            min_requests: policy.min_requests_per_cohort,
            rates: RateMetricTests::new(policy)?,
        })
    }

    /// Adds one interval. `applied_share_bp` is the share the proxies applied over it
    /// (see [`crate::fleet::applied_share_bp`]); `None` when a proxy changed share during
    /// the interval, which then says nothing about the split and skips the sample-ratio test.
    pub fn observe(&mut self, interval: &IntervalMetrics, applied_share_bp: Option<u32>) -> Result<(), StatsError> {
        self.error_rate.observe(interval.interval_counts())?;
        let non_success = |cohort| {
            let requests = &interval.cohorts.get(cohort).requests;
            CohortCounts { requests: requests.total(), errors: requests.total() - requests.success }
        };
        self.non_success
            .observe(IntervalCounts { canary: non_success(Cohort::Canary), control: non_success(Cohort::Control) })?;
        if let Some(share_bp) = applied_share_bp {
            let expected_share = f64::from(share_bp) / 10_000.0;
            self.sample_ratio.observe(
                interval.requests(Cohort::Canary),
                interval.requests(Cohort::Control),
                expected_share,
            )?;
        }
        if let (Some(canary), Some(control)) = (interval.latency(Cohort::Canary), interval.latency(Cohort::Control)) {
            for test in &mut self.latency_verdicts {
                test.observe(canary, control)?;
            }
            self.step_latency = Some(match self.step_latency.take() {
                Some((mut canary_sum, mut control_sum)) if canary_sum.upper_bounds_us() == canary.upper_bounds_us() => {
                    canary_sum.add(canary)?;
                    control_sum.add(control)?;
                    (canary_sum, control_sum)
                }
                // The first histograms of the step, or a new bucket layout: start from these.
                _ => (canary.clone(), control.clone()),
            });
        }
        self.rates.observe_outcomes(interval);
        Ok(())
    }

    /// A new share changes who is in each cohort: the pooled quantile estimates
    /// start over. The latency verdicts' evidence is kept: it compares the cohorts
    /// within each interval, which a new share does not bias.
    pub fn restart_latency(&mut self) -> Result<(), StatsError> {
        self.step_latency = None;
        Ok(())
    }

    /// The report, worst first; `extra` rows (custom metrics) are sorted in.
    pub fn rows(&self, extra: Vec<ComparisonRow>) -> Result<Vec<ComparisonRow>, StatsError> {
        let mut non_success = self.non_success.row(self.alpha, self.min_requests)?;
        non_success.metric = NON_SUCCESS_RATE_ROW.to_string();
        let mut rows = vec![
            self.error_rate.row(self.alpha, self.min_requests)?,
            non_success,
            self.sample_ratio.row(self.alpha, self.min_requests)?,
        ];
        for test in &self.latency_verdicts {
            let estimate = |cohort: fn(&(LatencyHistogram, LatencyHistogram)) -> &LatencyHistogram| {
                self.step_latency.as_ref().and_then(|step| cohort(step).quantile_estimate_us(test.quantile()))
            };
            let (canary, control) = (estimate(|step| &step.0), estimate(|step| &step.1));
            let metric = latency_metric_name(test.quantile());
            rows.push(test.row(metric, canary, control, self.alpha, self.min_requests)?);
        }
        rows.extend(extra);
        rows.extend(self.rates.rows(self.alpha, self.min_requests)?);
        sort_worst_first(&mut rows);
        Ok(rows)
    }

    /// Adds one check's PromQL counter-pair counts (see [`RateMetricTests`]).
    pub fn observe_counter_pairs(&mut self, pairs: &[CounterPairCounts]) {
        self.rates.observe_counter_pairs(pairs);
    }

    /// Outcomes the policy names that no proxy has exported yet.
    pub fn missing_outcomes(&self) -> Vec<&str> {
        self.rates.missing_outcomes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{CohortInterval, IntervalMetrics};
    use crate::stats::Verdict;
    use canary_core::metrics::LATENCY_BUCKETS_US;

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
            counts[LATENCY_BUCKETS_US.iter().position(|b| *b == 10_000).unwrap()] = n;
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
        eval.observe(&interval(100, 50, 0), Some(5_000)).unwrap();
        let rows = eval.rows(Vec::new()).unwrap();
        assert_eq!(verdict(&rows, "error_rate"), Verdict::NotEnoughData);
        assert!(rows.iter().any(|r| r.metric == "latency_p99_us"));
        assert!(rows.iter().any(|r| r.metric == NON_SUCCESS_RATE_ROW));
    }

    /// The rows the analyzer reports on its own, whatever the policy lists, are exactly the
    /// reserved names (so a policy cannot take one), and only they are built-in rows.
    #[test]
    fn the_built_in_rows_are_the_reserved_ones_and_the_policys_rows_are_its_own() {
        let policy = RolloutPolicy::from_yaml(
            "apiVersion: canary.wasm.dev/v1alpha1\nkind: RolloutPolicy\nmetadata: {name: t}\nspec:\n  \
             deployment: checkout\n  metrics:\n    - {name: error_rate}\n    \
             - {name: cache_hit, outcome: cache_hit, direction: lower_is_worse}\n",
        )
        .unwrap();
        let mut eval = RolloutEvaluation::new(&policy).unwrap();
        eval.observe(&interval(100, 1, 1), Some(5_000)).unwrap();
        let metric = CustomMetric {
            name: "declines".into(),
            query: "x{cohort=\"{{cohort}}\"}".into(),
            max_relative_increase: Some(0.1),
            max_absolute_increase: None,
        };
        let custom = custom_row(&metric, CohortValues { canary: Some(1.0), control: Some(1.0) });
        let rows = eval.rows(vec![custom]).unwrap();
        let mut built_in: Vec<&str> =
            rows.iter().filter(|r| r.origin == RowOrigin::BuiltIn).map(|r| r.metric.as_str()).collect();
        built_in.sort_unstable();
        let mut reserved = crate::stats::BUILT_IN_ROWS.to_vec();
        reserved.sort_unstable();
        assert_eq!(built_in, reserved);
        let mut own: Vec<&str> =
            rows.iter().filter(|r| r.origin == RowOrigin::Policy).map(|r| r.metric.as_str()).collect();
        own.sort_unstable();
        assert_eq!(own, ["cache_hit", "declines"]);
        assert_eq!(rows.len(), reserved.len() + 2, "every row has a known origin");
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
            eval.observe(&interval(1_000, 50, 5), Some(5_000)).unwrap();
        }
        let rows = eval.rows(Vec::new()).unwrap();
        assert_eq!(rows[0].metric, "error_rate");
        assert_eq!(rows[0].verdict, Verdict::Worse);
        assert_ne!(verdict(&rows, "latency_p99_us"), Verdict::Worse, "identical latency");
        assert_ne!(verdict(&rows, "sample_ratio"), Verdict::Worse, "a 50/50 split at 50 %");
    }

    /// One interval at a 50 % share with `n` requests per cohort, no errors:
    /// control 96 % at 10 ms, 2 % in (22, 24] ms, 2 % in (46, 50] ms; the canary
    /// the same but 4 % in (66, 72] ms instead of the last two (p99 ~22 ms slower).
    fn slow_tail_interval(n: u64) -> IntervalMetrics {
        let mut metrics = IntervalMetrics::default();
        let index = |bound: u64| LATENCY_BUCKETS_US.iter().position(|b| *b == bound).unwrap();
        for cohort in [Cohort::Canary, Cohort::Control] {
            let mut counts = vec![0u64; LATENCY_BUCKETS_US.len() + 1];
            counts[index(10_000)] = n * 96 / 100;
            if cohort == Cohort::Canary {
                counts[index(72_000)] = n * 4 / 100;
            } else {
                counts[index(24_000)] = n * 2 / 100;
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
            eval.observe(&slow_tail_interval(2_000), Some(5_000)).unwrap();
        }
        let p99 = |eval: &RolloutEvaluation| {
            eval.rows(Vec::new()).unwrap().into_iter().find(|r| r.metric == "latency_p99_us").unwrap()
        };
        let before = p99(&eval);
        eval.restart_latency().unwrap();
        assert_eq!(p99(&eval).canary, None, "the estimates are this step's");
        assert_eq!(p99(&eval).p_value, before.p_value, "the evidence is the rollout's");
        eval.observe(&slow_tail_interval(2_000), Some(5_000)).unwrap();
        let after = p99(&eval);
        assert_eq!(after.verdict, Verdict::Worse, "{after:?}");
        assert!(after.p_value.unwrap() < before.p_value.unwrap());
        // Worse means the shift is shown beyond the 5 ms tolerance, and the interval says so.
        assert!(after.interval.unwrap().lo.unwrap() >= 5_000.0, "{after:?}");
    }

    /// Checks that a row's interval says what its verdict says: "worse" only
    /// with a lower end at or past the tolerance (an exclusive bound: the
    /// difference is shown to be more than it), "better" only with an upper end
    /// at or below minus the tolerance, "no difference" with neither, and the
    /// ends in order. `tolerance` is on the row's own scale.
    fn check_interval_agrees(row: &ComparisonRow, tolerance: f64) {
        let Some(interval) = row.interval else { panic!("{row:?} has no interval") };
        let (lo, hi) = (interval.lo, interval.hi);
        assert!(lo.zip(hi).is_none_or(|(lo, hi)| lo <= hi), "{row:?}");
        match row.verdict {
            Verdict::Worse => assert!(lo.is_some_and(|lo| lo >= tolerance), "{row:?}"),
            Verdict::Better => assert!(hi.is_some_and(|hi| hi <= -tolerance), "{row:?}"),
            Verdict::NoDifference => {
                assert!(lo.is_none_or(|lo| lo < tolerance) && hi.is_none_or(|hi| hi > -tolerance), "{row:?}")
            }
            Verdict::NotEnoughData => {}
        }
    }

    /// Property (rows users can trust): over many seeded reports with effects
    /// near every decision boundary, no row's interval contradicts its verdict.
    #[test]
    fn every_rows_interval_agrees_with_its_verdict() {
        use crate::simulation::latency::{LatencyModel, draw_histogram};
        use crate::simulation::random::SeededRng;
        let policy = RolloutPolicy::from_yaml(
            "apiVersion: canary.wasm.dev/v1alpha1\nkind: RolloutPolicy\nmetadata: {name: t}\n\
             spec:\n  deployment: checkout\n  min_requests_per_cohort: 200\n  metrics:\n    \
             - {name: error_rate}\n    - {name: latency_p99, max_increase_ms: 5}\n    \
             - {name: latency_p50, max_increase_ms: 2, critical: false}\n    \
             - {name: sample_ratio, critical: false}\n",
        )
        .unwrap();
        // Tolerances on each row's scale: relative for rates, µs for latency. The split's
        // band is ±10 % in odds; on the share scale it lies strictly around 0.
        let tolerance = |metric: &str| match metric {
            "latency_p99_us" => 5_000.0,
            "latency_p50_us" => 2_000.0,
            _ => 0.0,
        };
        let mut seen = std::collections::HashSet::new();
        for seed in 0..60u64 {
            let mut rng = SeededRng::new(seed + 90_000);
            let error_factor = 0.4 + 2.2 * rng.uniform();
            let latency_factor = 0.85 + 0.3 * rng.uniform();
            let split_factor = 0.8 + 0.4 * rng.uniform();
            let share = [0.05, 0.25, 0.5][(seed % 3) as usize];
            let mut eval = RolloutEvaluation::new(&policy).unwrap();
            for _ in 0..20 {
                let mut metrics = IntervalMetrics::default();
                let cohorts = [
                    (Cohort::Canary, 4_000.0 * share * split_factor, 0.005 * error_factor, latency_factor),
                    (Cohort::Control, 4_000.0 * (1.0 - share), 0.005, 1.0),
                ];
                for (cohort, requests, error_rate, factor) in cohorts {
                    let model = LatencyModel::log_normal(20_000.0 * factor, 0.5);
                    let latency = draw_histogram(&mut rng, &LATENCY_BUCKETS_US, requests, model).unwrap();
                    let total = latency.total();
                    let errors = rng.poisson(requests * error_rate).min(total);
                    let c: &mut CohortInterval = metrics.cohorts.get_mut(cohort);
                    c.requests.success = total - errors;
                    c.requests.server_error = errors;
                    c.latency = Some(latency);
                }
                eval.observe(&metrics, Some((share * 10_000.0) as u32)).unwrap();
                for row in eval.rows(Vec::new()).unwrap() {
                    if row.metric == "sample_ratio" {
                        // Worse: the interval lies outside the band, so it excludes "no change".
                        let interval = row.interval.unwrap();
                        let outside = interval.lo.is_some_and(|lo| lo > 0.0) || interval.hi.is_some_and(|hi| hi < 0.0);
                        assert!(row.verdict != Verdict::Worse || outside, "{row:?}");
                        assert!(interval.lo.zip(interval.hi).is_none_or(|(lo, hi)| lo <= hi), "{row:?}");
                    } else {
                        check_interval_agrees(&row, tolerance(&row.metric));
                    }
                    seen.insert((row.metric.clone(), row.verdict));
                }
            }
        }
        // The seeds reach every verdict the tests can give on the rows that gate rollouts.
        for metric in ["error_rate", "latency_p99_us", "sample_ratio"] {
            for verdict in [Verdict::Worse, Verdict::NoDifference] {
                assert!(seen.contains(&(metric.to_string(), verdict)), "{metric} never {verdict:?}");
            }
        }
        assert!(seen.contains(&("error_rate".to_string(), Verdict::Better)));
        assert!(seen.contains(&("latency_p99_us".to_string(), Verdict::Better)));
    }

    #[test]
    fn a_lopsided_split_is_a_sample_ratio_mismatch() {
        let mut eval = RolloutEvaluation::new(&policy()).unwrap();
        for _ in 0..10 {
            eval.observe(&interval(1_000, 5, 5), Some(500)).unwrap(); // 50/50 traffic where 5 % was expected
        }
        assert_eq!(verdict(&eval.rows(Vec::new()).unwrap(), "sample_ratio"), Verdict::Worse);
    }
}
