//! Rate metrics in a policy: "events among requests" compared with the error rate's
//! anytime-valid test, either counted by the filter in the data path (`outcome`) or
//! given as a PromQL counter pair (`numerator` / `denominator`).
//!
//! Kept apart from the other metrics because they share one shape — a direction
//! (`higher_is_worse` or `lower_is_worse`) and a relative tolerance on the side
//! that is worse — and one set of refusals: exactly one source, a direction, and
//! only the tolerance that belongs to that direction.

use crate::stats::WorseDirection;

use super::{PolicyError, RawMetric, validate_query};

/// Longest outcome name: the filter's limit (`[a-z][a-z0-9_]{0,31}`), which keeps
/// stat names and Prometheus label values short.
const MAX_OUTCOME_NAME_LEN: usize = 32;
/// `direction` values as written.
const HIGHER_IS_WORSE: &str = "higher_is_worse";
const LOWER_IS_WORSE: &str = "lower_is_worse";

/// Which way is worse and by how much the canary may move that way.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateTolerance {
    pub worse: WorseDirection,
    /// `max_relative_increase` when higher is worse (>= 0), `max_relative_decrease`
    /// when lower is worse (in [0, 1)); 0 when not written: no move beyond noise.
    pub max_relative_change: f64,
}

/// A rate the filter counts per cohort in the data path (`canary_outcome_*_total`).
#[derive(Debug, Clone, PartialEq)]
pub struct OutcomeMetric {
    /// The report row's name (defaults to the outcome's).
    pub name: String,
    /// The outcome as the filter's configuration names it.
    pub outcome: String,
    pub tolerance: RateTolerance,
}

/// A rate from two PromQL templates per cohort, each an `increase()`-like count.
#[derive(Debug, Clone, PartialEq)]
pub struct CounterPairMetric {
    pub name: String,
    /// Events among the denominator's requests, e.g. declined payments.
    pub numerator: String,
    /// The requests the events are counted among, e.g. payment attempts.
    pub denominator: String,
    pub tolerance: RateTolerance,
}

impl RateTolerance {
    /// The direction as written in a policy.
    pub fn direction_text(&self) -> &'static str {
        match self.worse {
            WorseDirection::Higher => HIGHER_IS_WORSE,
            WorseDirection::Lower => LOWER_IS_WORSE,
        }
    }

    /// Writes the direction and its tolerance back into a raw metric.
    pub(super) fn write(&self, raw: &mut RawMetric) {
        raw.direction = Some(self.direction_text().to_string());
        match self.worse {
            WorseDirection::Higher => raw.max_relative_increase = Some(self.max_relative_change),
            WorseDirection::Lower => raw.max_relative_decrease = Some(self.max_relative_change),
        }
    }
}

/// What a rate metric reads.
pub(super) enum RateSource {
    Outcome(String),
    CounterPair { numerator: String, denominator: String },
}

/// Whether `raw` is a rate metric (names an outcome, a numerator or a denominator).
pub(super) fn is_rate_metric(raw: &RawMetric) -> bool {
    raw.outcome.is_some() || raw.numerator.is_some() || raw.denominator.is_some()
}

/// Exactly one source: `outcome`, or `numerator` with `denominator`; never with `query`.
pub(super) fn rate_source(raw: &RawMetric, field: &str) -> Result<RateSource, PolicyError> {
    let one_source = "exactly one of `outcome`, `query`, or `numerator` with `denominator`";
    match (&raw.outcome, &raw.numerator, &raw.denominator, &raw.query) {
        (Some(_), _, _, Some(_)) | (_, Some(_), _, Some(_)) | (_, _, Some(_), Some(_)) => {
            Err(PolicyError::new(format!("{field}.query"), "(set)", format!("not set: {one_source}")))
        }
        (Some(_), Some(_), _, _) | (Some(_), _, Some(_), _) => Err(PolicyError::new(
            format!("{field}.outcome"),
            "(set with numerator/denominator)",
            format!("not set together with a counter pair: {one_source}"),
        )),
        (Some(outcome), None, None, None) => {
            validate_outcome_name(&format!("{field}.outcome"), outcome)?;
            Ok(RateSource::Outcome(outcome.clone()))
        }
        (None, Some(numerator), Some(denominator), None) => {
            validate_query(&format!("{field}.numerator"), numerator)?;
            validate_query(&format!("{field}.denominator"), denominator)?;
            Ok(RateSource::CounterPair { numerator: numerator.clone(), denominator: denominator.clone() })
        }
        (None, Some(_), None, None) => Err(PolicyError::missing(
            format!("{field}.denominator"),
            "a PromQL template counting the requests the numerator's events are among",
        )),
        (None, None, _, None) => Err(PolicyError::missing(
            format!("{field}.numerator"),
            "a PromQL template counting the events among the denominator's requests",
        )),
        (None, _, _, Some(_)) => Err(PolicyError::missing(format!("{field}.outcome"), one_source)),
    }
}

/// `[a-z][a-z0-9_]{0,31}`, as the filter names outcomes.
fn validate_outcome_name(field: &str, outcome: &str) -> Result<(), PolicyError> {
    let bytes = outcome.as_bytes();
    let starts_ok = bytes.first().is_some_and(u8::is_ascii_lowercase);
    let rest_ok = bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_');
    if !starts_ok || !rest_ok || bytes.len() > MAX_OUTCOME_NAME_LEN {
        return Err(PolicyError::new(
            field,
            format!("{outcome:?}"),
            "an outcome name as the filter's configuration gives it: [a-z][a-z0-9_]{0,31}",
        ));
    }
    Ok(())
}

/// The direction (required: no default could be right for both hits and errors) and
/// the one relative tolerance that belongs to it; the others are refused by field.
pub(super) fn rate_tolerance(raw: &RawMetric, field: &str) -> Result<RateTolerance, PolicyError> {
    let refuse = |option: &str, value: Option<f64>, why: &str| match value {
        Some(v) => Err(PolicyError::new(format!("{field}.{option}"), v, format!("not set: {why}"))),
        None => Ok(()),
    };
    refuse("max_increase_ms", raw.max_increase_ms, "it applies to latency metrics only")?;
    refuse("max_relative_deviation", raw.max_relative_deviation, "it applies to sample_ratio only")?;
    refuse(
        "max_absolute_increase",
        raw.max_absolute_increase,
        "a rate metric takes a relative tolerance (max_relative_increase or max_relative_decrease)",
    )?;
    let direction = raw.direction.as_deref().ok_or_else(|| {
        PolicyError::missing(format!("{field}.direction"), format!("`{HIGHER_IS_WORSE}` or `{LOWER_IS_WORSE}`"))
    })?;
    let finite_at_least_zero = |option: &str, value: f64| {
        if value.is_finite() && value >= 0.0 {
            Ok(value)
        } else {
            Err(PolicyError::new(format!("{field}.{option}"), value, "a finite number >= 0"))
        }
    };
    match direction {
        HIGHER_IS_WORSE => {
            refuse("max_relative_decrease", raw.max_relative_decrease, "it applies to `lower_is_worse` only")?;
            let change = finite_at_least_zero("max_relative_increase", raw.max_relative_increase.unwrap_or(0.0))?;
            Ok(RateTolerance { worse: WorseDirection::Higher, max_relative_change: change })
        }
        LOWER_IS_WORSE => {
            refuse("max_relative_increase", raw.max_relative_increase, "it applies to `higher_is_worse` only")?;
            let change = finite_at_least_zero("max_relative_decrease", raw.max_relative_decrease.unwrap_or(0.0))?;
            if change >= 1.0 {
                return Err(PolicyError::new(
                    format!("{field}.max_relative_decrease"),
                    change,
                    "a fraction in [0, 1): 1 would allow the rate to fall to nothing",
                ));
            }
            Ok(RateTolerance { worse: WorseDirection::Lower, max_relative_change: change })
        }
        other => Err(PolicyError::new(
            format!("{field}.direction"),
            format!("{other:?}"),
            format!("`{HIGHER_IS_WORSE}` or `{LOWER_IS_WORSE}`"),
        )),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)] // tests fail loudly by design
mod tests {
    use super::super::{Metric, RolloutPolicy};
    use super::*;

    const PAIR: &str = "numerator: 'sum(increase(declined_total{v=\"{{cohort}}\"}[{{window}}]))', \
                        denominator: 'sum(increase(payments_total{v=\"{{cohort}}\"}[{{window}}]))'";

    fn with_metric(metric: &str) -> Result<RolloutPolicy, PolicyError> {
        RolloutPolicy::from_yaml(&format!(
            "apiVersion: canary.wasm.dev/v1alpha1\nkind: RolloutPolicy\nmetadata: {{name: a}}\n\
             spec:\n  deployment: checkout\n  metrics:\n    - {{name: error_rate}}\n    - {{{metric}}}\n"
        ))
    }

    #[test]
    fn outcome_and_counter_pair_metrics_are_typed_and_written_back() {
        let policy = with_metric("outcome: cache_hit, direction: lower_is_worse, max_relative_decrease: 0.1").unwrap();
        let expected = OutcomeMetric {
            name: "cache_hit".into(),
            outcome: "cache_hit".into(),
            tolerance: RateTolerance { worse: WorseDirection::Lower, max_relative_change: 0.1 },
        };
        assert_eq!(policy.metrics[1].metric, Metric::Outcome(expected));
        assert!(policy.metrics[1].critical, "critical by default like every listed metric");
        assert_eq!(RolloutPolicy::from_yaml(&policy.to_yaml().unwrap()).unwrap(), policy);

        let policy =
            with_metric(&format!("name: declines, direction: higher_is_worse, critical: false, {PAIR}")).unwrap();
        let Metric::CounterPair(pair) = &policy.metrics[1].metric else { panic!("a counter pair") };
        assert_eq!(pair.tolerance, RateTolerance { worse: WorseDirection::Higher, max_relative_change: 0.0 });
        assert!(pair.numerator.contains("declined_total") && pair.denominator.contains("payments_total"));
        assert_eq!(policy.metrics[1].report_metric(), "declines");
        let yaml = policy.to_yaml().unwrap();
        assert!(yaml.contains("direction: higher_is_worse") && yaml.contains("max_relative_increase: 0.0"), "{yaml}");
        assert_eq!(RolloutPolicy::from_yaml(&yaml).unwrap(), policy);
    }

    /// Each bad rate metric is refused naming the field, and says what was expected.
    #[test]
    fn bad_rate_metrics_are_refused_by_field() {
        let cases: Vec<(String, &str, &str)> = vec![
            ("outcome: hit, direction: sideways".into(), "spec.metrics[1].direction", "lower_is_worse"),
            ("outcome: hit".into(), "spec.metrics[1].direction", "higher_is_worse"),
            (
                "outcome: hit, direction: lower_is_worse, max_relative_decrease: 1".into(),
                "spec.metrics[1].max_relative_decrease",
                "[0, 1)",
            ),
            (
                "outcome: hit, direction: lower_is_worse, max_relative_decrease: -0.1".into(),
                "spec.metrics[1].max_relative_decrease",
                ">= 0",
            ),
            (
                "outcome: hit, direction: higher_is_worse, max_relative_increase: .inf".into(),
                "spec.metrics[1].max_relative_increase",
                "finite",
            ),
            (
                "outcome: hit, direction: lower_is_worse, max_relative_increase: 0.1".into(),
                "spec.metrics[1].max_relative_increase",
                "higher_is_worse",
            ),
            (
                "outcome: hit, direction: higher_is_worse, max_relative_decrease: 0.1".into(),
                "spec.metrics[1].max_relative_decrease",
                "lower_is_worse",
            ),
            (
                "outcome: hit, direction: higher_is_worse, max_absolute_increase: 1".into(),
                "spec.metrics[1].max_absolute_increase",
                "relative tolerance",
            ),
            ("outcome: hit, direction: higher_is_worse, max_increase_ms: 1".into(), "spec.metrics[1].max_increase_ms", "latency"),
            ("outcome: Cache-Hit, direction: higher_is_worse".into(), "spec.metrics[1].outcome", "[a-z][a-z0-9_]{0,31}"),
            (format!("outcome: {}, direction: higher_is_worse", "a".repeat(33)), "spec.metrics[1].outcome", "{0,31}"),
            (
                "name: h, outcome: hit, query: 'x{c=\"{{cohort}}\"}', direction: higher_is_worse".into(),
                "spec.metrics[1].query",
                "exactly one of",
            ),
            (format!("name: h, outcome: hit, direction: higher_is_worse, {PAIR}"), "spec.metrics[1].outcome", "exactly one of"),
            (
                "name: d, numerator: 'x{c=\"{{cohort}}\"}', direction: higher_is_worse".into(),
                "spec.metrics[1].denominator",
                "requests",
            ),
            (
                "name: d, denominator: 'x{c=\"{{cohort}}\"}', direction: higher_is_worse".into(),
                "spec.metrics[1].numerator",
                "events",
            ),
            (
                "name: d, numerator: 'sum(x)', denominator: 'y{c=\"{{cohort}}\"}', direction: higher_is_worse".into(),
                "spec.metrics[1].numerator",
                "{{cohort}}",
            ),
            (
                "name: d, numerator: 'x{c=\"{{cohort}}\"}', denominator: '{{cohort}} {{pod}}', direction: higher_is_worse"
                    .into(),
                "spec.metrics[1].denominator",
                "{{pod}}",
            ),
            (format!("direction: higher_is_worse, {PAIR}"), "spec.metrics[1].name", "counter-pair"),
            ("name: error_rate, outcome: hit, direction: higher_is_worse".into(), "spec.metrics[1].name", "built-in"),
            ("name: Hit, outcome: hit, direction: higher_is_worse".into(), "spec.metrics[1].name", "[a-z_][a-z0-9_]*"),
            ("name: latency_p99, max_increase_ms: 5, direction: higher_is_worse".into(), "spec.metrics[1].direction", "not set"),
            (
                "name: error_rate, max_relative_decrease: 0.1".into(),
                "spec.metrics[1].max_relative_decrease",
                "lower_is_worse",
            ),
            ("name: orders, max_relative_increase: 1".into(), "spec.metrics[1].name", "outcome"),
        ];
        for (metric, field, expected) in cases {
            let error = with_metric(&metric).expect_err(&metric);
            assert_eq!(error.field, field, "{metric}\n{error}");
            assert!(error.to_string().contains(expected), "{metric}\n{error}");
        }
        // Two metrics may read one outcome (say, a critical and a strict report-only one).
        let twice = "name: hit_strict, outcome: hit, direction: lower_is_worse, critical: false}\n    - \
                     {outcome: hit, direction: lower_is_worse, max_relative_decrease: 0.2";
        assert_eq!(with_metric(twice).unwrap().metrics.len(), 3);
    }
}
