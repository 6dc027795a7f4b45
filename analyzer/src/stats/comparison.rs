//! The comparison row every test produces and the analyzer serialises: one
//! metric, both cohorts' values, the difference with an anytime-valid interval
//! and p-value, and a verdict. Also the worst-first ordering of a report.
//!
//! Rows share one shape so that the report, the audit log and the webhook can
//! show error rates, the traffic split and latency quantiles side by side, and
//! so a decision can be traced to the exact numbers behind it.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};

/// What a comparison concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The canary is significantly worse than control beyond the tolerance.
    Worse,
    /// The canary is significantly better than control beyond the tolerance.
    Better,
    /// Enough data and no significant difference beyond the tolerance (yet).
    NoDifference,
    /// Below the minimum sample count: nothing is decided, whatever the test says.
    NotEnoughData,
}

impl Verdict {
    /// Rank in a worst-first report. Worse comes first because it can trigger a
    /// rollback; improvements and missing data are shown after the rest.
    fn severity_rank(self) -> u8 {
        match self {
            Verdict::Worse => 0,
            Verdict::NoDifference => 1,
            Verdict::Better => 2,
            Verdict::NotEnoughData => 3,
        }
    }

    /// The verdict of a pair of one-sided anytime-valid tests at level `alpha`,
    /// gated by the minimum sample count. Both tests cannot reject together under
    /// any single truth except with probability <= alpha, so "worse" wins a tie.
    pub fn from_tests(p_worse: f64, p_better: f64, alpha: f64, enough_data: bool) -> Verdict {
        if !enough_data {
            Verdict::NotEnoughData
        } else if p_worse <= alpha {
            Verdict::Worse
        } else if p_better <= alpha {
            Verdict::Better
        } else {
            Verdict::NoDifference
        }
    }
}

/// On which scale a row's difference interval is expressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DifferenceScale {
    /// `canary − control`, in the metric's unit (e.g. microseconds).
    Absolute,
    /// `canary / control − 1` (e.g. 0.3 means the canary is 30 % higher); for
    /// error rates the ratio is of per-request error rates.
    Relative,
    /// `odds ratio − 1` of the canary's traffic share against the expected share
    /// (for small shares close to `realised / expected − 1`).
    RelativeOdds,
}

/// A confidence interval; a missing bound means unbounded on that side.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    pub lo: Option<f64>,
    pub hi: Option<f64>,
}

impl Interval {
    /// The interval a row shows from two one-sided ends, each read at level
    /// alpha from the verdict's own e-processes. Under a constant truth the ends
    /// cross only with probability <= 2·alpha; when a changing truth makes them
    /// cross, the interval keeps the side the verdict stands on (a point at that
    /// end) or, without a verdict, spans the gap between the two ends.
    pub(crate) fn from_one_sided_ends(lo: Option<f64>, hi: Option<f64>, verdict: Verdict) -> Interval {
        match (lo, hi) {
            (Some(l), Some(h)) if l > h => match verdict {
                Verdict::Worse => Interval { lo, hi: lo },
                Verdict::Better => Interval { lo: hi, hi },
                Verdict::NoDifference | Verdict::NotEnoughData => Interval { lo: hi, hi: lo },
            },
            _ => Interval { lo, hi },
        }
    }

    /// Whether `value` lies in the interval (bounds included).
    pub fn contains(&self, value: f64) -> bool {
        self.lo.is_none_or(|lo| lo <= value) && self.hi.is_none_or(|hi| value <= hi)
    }
}

/// What a row's values measure, which decides how they read for people.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ValueUnit {
    /// Inferred from the metric's name (`_us` → microseconds, `_rate` and
    /// `sample_ratio` → fraction): rows recorded before rows carried a unit.
    #[default]
    ByName,
    /// Latency in microseconds, shown in ms.
    Microseconds,
    /// A share of requests (0..1), shown in percent: error, outcome and counter-pair rates.
    Fraction,
    /// A plain number: custom PromQL metrics.
    Number,
}

impl ValueUnit {
    /// `value` for people: `279.8 ms`, `0.512 %`, `12.3400`.
    pub fn text(self, value: f64) -> String {
        match self {
            ValueUnit::Microseconds => format!("{:.1} ms", value / 1_000.0),
            ValueUnit::Fraction => format!("{:.3} %", value * 100.0),
            ValueUnit::Number | ValueUnit::ByName => format!("{value:.4}"),
        }
    }
}

/// One line of a canary report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComparisonRow {
    /// Metric name, e.g. `error_rate`, `sample_ratio`, `latency_p99_us`.
    pub metric: String,
    /// The canary's value; `None` without data.
    pub canary: Option<f64>,
    /// Control's value (for `sample_ratio`, the expected canary share); `None` without data.
    pub control: Option<f64>,
    /// `canary − control`.
    pub absolute_difference: Option<f64>,
    /// `canary / control − 1`; `None` when control is 0 or missing.
    pub relative_difference: Option<f64>,
    /// Anytime-valid confidence interval for the difference, on `interval_scale`.
    pub interval: Option<Interval>,
    pub interval_scale: DifferenceScale,
    /// Anytime-valid p-value: of the "worse" test for a Worse verdict, of the
    /// "better" test for Better, otherwise twice the smaller one (two-sided).
    pub p_value: Option<f64>,
    pub verdict: Verdict,
    /// What `canary`, `control` and `absolute_difference` measure.
    #[serde(default)]
    pub unit: ValueUnit,
    /// Whether `metric` is one of the analyzer's own rows or a metric the policy names
    /// (see [`super::RowKey`]); rows recorded before rows carried it read as `by_name`.
    #[serde(default)]
    pub origin: super::RowOrigin,
}

impl ComparisonRow {
    /// The row's unit, with [`ValueUnit::ByName`] resolved from the metric's name.
    pub fn value_unit(&self) -> ValueUnit {
        match self.unit {
            ValueUnit::ByName if self.metric.ends_with("_us") => ValueUnit::Microseconds,
            ValueUnit::ByName if self.metric.ends_with("_rate") || self.metric == "sample_ratio" => ValueUnit::Fraction,
            ValueUnit::ByName => ValueUnit::Number,
            unit => unit,
        }
    }

    /// A value of this row for people; `-` without one.
    pub fn value_text(&self, value: Option<f64>) -> String {
        value.map_or_else(|| "-".to_string(), |v| self.value_unit().text(v))
    }

    /// Fills the difference fields from the two values.
    pub(crate) fn differences(canary: Option<f64>, control: Option<f64>) -> (Option<f64>, Option<f64>) {
        match (canary, control) {
            (Some(canary), Some(control)) => {
                let relative = (control != 0.0).then(|| canary / control - 1.0);
                (Some(canary - control), relative)
            }
            _ => (None, None),
        }
    }
}

/// The p-value a row reports for its verdict (see [`ComparisonRow::p_value`]).
pub(crate) fn reported_p_value(verdict: Verdict, p_worse: f64, p_better: f64) -> f64 {
    match verdict {
        Verdict::Worse => p_worse,
        Verdict::Better => p_better,
        Verdict::NoDifference | Verdict::NotEnoughData => (2.0 * p_worse.min(p_better)).min(1.0),
    }
}

/// Sorts rows worst first: by verdict (Worse, NoDifference, Better,
/// NotEnoughData), then by p-value ascending (missing last), then by metric
/// name so equal rows keep a stable, reproducible order.
pub fn sort_worst_first(rows: &mut [ComparisonRow]) {
    rows.sort_by(compare_severity);
}

fn compare_severity(a: &ComparisonRow, b: &ComparisonRow) -> Ordering {
    let p_key = |row: &ComparisonRow| row.p_value.unwrap_or(f64::INFINITY);
    a.verdict
        .severity_rank()
        .cmp(&b.verdict.severity_rank())
        .then_with(|| p_key(a).total_cmp(&p_key(b)))
        .then_with(|| a.metric.cmp(&b.metric))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)] // tests fail loudly by design
mod tests {
    use super::*;

    fn row(metric: &str, verdict: Verdict, p_value: Option<f64>) -> ComparisonRow {
        ComparisonRow {
            metric: metric.to_string(),
            canary: Some(1.0),
            control: Some(1.0),
            absolute_difference: Some(0.0),
            relative_difference: Some(0.0),
            interval: None,
            interval_scale: DifferenceScale::Absolute,
            p_value,
            verdict,
            unit: ValueUnit::Number,
            origin: super::super::RowOrigin::ByName,
        }
    }

    #[test]
    fn worst_rows_come_first_then_by_p_value() {
        let mut rows = vec![
            row("d", Verdict::NotEnoughData, None),
            row("c", Verdict::Better, Some(0.001)),
            row("b", Verdict::NoDifference, Some(0.4)),
            row("a2", Verdict::Worse, Some(0.03)),
            row("a1", Verdict::Worse, Some(0.001)),
            row("b0", Verdict::NoDifference, None),
        ];
        sort_worst_first(&mut rows);
        let order: Vec<&str> = rows.iter().map(|r| r.metric.as_str()).collect();
        assert_eq!(order, ["a1", "a2", "b", "b0", "c", "d"]);
    }

    #[test]
    fn verdicts_follow_the_tests_and_the_sample_gate() {
        assert_eq!(Verdict::from_tests(0.01, 1.0, 0.05, true), Verdict::Worse);
        assert_eq!(Verdict::from_tests(1.0, 0.01, 0.05, true), Verdict::Better);
        assert_eq!(Verdict::from_tests(0.2, 0.3, 0.05, true), Verdict::NoDifference);
        assert_eq!(Verdict::from_tests(0.0001, 1.0, 0.05, false), Verdict::NotEnoughData);
        assert_eq!(reported_p_value(Verdict::NoDifference, 0.2, 0.7), 0.4);
        assert_eq!(reported_p_value(Verdict::NoDifference, 0.6, 0.7), 1.0);
    }

    #[test]
    fn rows_serialise_in_snake_case() {
        let mut example = row("latency_p99_us", Verdict::NotEnoughData, Some(0.5));
        example.interval = Some(Interval { lo: Some(-1.0), hi: None });
        let json = serde_json::to_value(&example).unwrap();
        assert_eq!(json["verdict"], "not_enough_data");
        assert_eq!(json["interval_scale"], "absolute");
        assert_eq!(json["interval"]["hi"], serde_json::Value::Null);
        let back: ComparisonRow = serde_json::from_value(json).unwrap();
        assert_eq!(back, example);
        assert_eq!(ComparisonRow::differences(Some(3.0), Some(2.0)), (Some(1.0), Some(0.5)));
        assert_eq!(ComparisonRow::differences(Some(3.0), Some(0.0)), (Some(3.0), None));
        assert!(Interval { lo: Some(0.0), hi: None }.contains(1e9));
    }
}
