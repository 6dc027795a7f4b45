//! What each comparison row is judged against, from the policy: its tolerance in the
//! policy's own terms and whether it is critical (a critical row rolls back when worse
//! and holds promotion without a verdict). Carried in the status answer beside the rows,
//! so every view shows the same columns. Pure.

use serde::{Deserialize, Serialize};

use crate::policy::{Metric, MetricPolicy, RateTolerance, RolloutPolicy};
use crate::stats::WorseDirection;

/// The rule behind one comparison row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowRule {
    /// The row's `metric` (e.g. `latency_p99_us`).
    pub metric: String,
    /// The tolerance for people, e.g. `+50 ms`, `+10 % relative`, `none (any real increase)`.
    pub tolerance: String,
    pub critical: bool,
}

/// One rule per metric of the policy, in the policy's order.
pub fn row_rules(policy: &RolloutPolicy) -> Vec<RowRule> {
    policy
        .metrics
        .iter()
        .map(|metric| RowRule {
            metric: metric.report_metric(),
            tolerance: tolerance_text(metric),
            critical: metric.critical,
        })
        .collect()
}

/// A fraction as a percentage without trailing zeros: 0.1 → `10 %`, 0.025 → `2.5 %`.
fn percent(fraction: f64) -> String {
    let text = format!("{:.2}", fraction * 100.0);
    format!("{} %", text.trim_end_matches('0').trim_end_matches('.'))
}

/// A relative increase, or `none (any real increase)` for 0.
fn relative(fraction: f64, direction: &str) -> String {
    if fraction == 0.0 {
        format!("none (any real {direction})")
    } else {
        format!("{direction} up to {}", percent(fraction))
    }
}

fn tolerance_text(metric: &MetricPolicy) -> String {
    match &metric.metric {
        Metric::ErrorRate { max_relative_increase } => relative(*max_relative_increase, "increase"),
        Metric::Latency { tolerance, .. } => {
            let absolute = tolerance.max_increase_ms.map(|ms| format!("+{ms} ms"));
            let relative = tolerance.max_relative_increase.map(|r| format!("+{}", percent(r)));
            match (absolute, relative) {
                (Some(a), Some(r)) => format!("{a} or {r}"),
                (Some(one), None) | (None, Some(one)) => one,
                (None, None) => "none".to_string(),
            }
        }
        Metric::SampleRatio { max_relative_deviation } => {
            format!("split odds within ±{}", percent(*max_relative_deviation))
        }
        Metric::Custom(custom) => match (custom.max_absolute_increase, custom.max_relative_increase) {
            (Some(a), _) => format!("+{a}"),
            (None, Some(r)) => relative(r, "increase"),
            (None, None) => "none".to_string(),
        },
        Metric::Outcome(outcome) => rate(&outcome.tolerance),
        Metric::CounterPair(pair) => rate(&pair.tolerance),
    }
}

fn rate(tolerance: &RateTolerance) -> String {
    match tolerance.worse {
        WorseDirection::Higher => relative(tolerance.max_relative_change, "increase"),
        WorseDirection::Lower => relative(tolerance.max_relative_change, "decrease"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_row_carries_its_tolerance_and_whether_it_is_critical() {
        let policy = RolloutPolicy::from_yaml(
            "apiVersion: canary.wasm.dev/v1alpha1\nkind: RolloutPolicy\nmetadata: {name: p}\nspec:\n  \
             deployment: checkout\n  metrics:\n    - {name: error_rate, max_relative_increase: 0.1}\n    \
             - {name: latency_p99, max_increase_ms: 50}\n    \
             - {name: latency_p50, max_relative_increase: 0.025, critical: false}\n    \
             - {name: sample_ratio, max_relative_deviation: 0.05, critical: false}\n",
        )
        .unwrap();
        let rules = row_rules(&policy);
        let rule = |metric: &str| rules.iter().find(|r| r.metric == metric).cloned().unwrap();
        assert_eq!(rule("error_rate").tolerance, "increase up to 10 %");
        assert!(rule("error_rate").critical);
        assert_eq!(rule("latency_p99_us").tolerance, "+50 ms");
        assert_eq!((rule("latency_p50_us").tolerance.as_str(), rule("latency_p50_us").critical), ("+2.5 %", false));
        assert_eq!(rule("sample_ratio").tolerance, "split odds within ±5 %");
        assert_eq!(relative(0.0, "increase"), "none (any real increase)");
    }
}
