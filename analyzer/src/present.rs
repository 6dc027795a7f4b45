//! How values read for people, shared by the CLI, the dashboard, the webhook and the
//! engine's log lines: shares, durations, times, phases, actions, and a comparison
//! row's value, difference, interval, p-value and verdict. Depends on the data types
//! only, so none of those modules needs another for its wording.

use canary_core::RolloutPhase;

use crate::hold::HoldReason;
use crate::ladder::Action;
use crate::stats::{ComparisonRow, DifferenceScale, ValueUnit, Verdict};

pub fn percent(bp: u32) -> String {
    format!("{}.{:02} %", bp / 100, bp % 100)
}

/// A row's value for people in the row's unit (latencies in ms, rates and the
/// sample ratio in %), `-` without data.
pub fn format_value(v: Option<f64>, row: &ComparisonRow) -> String {
    row.value_text(v)
}

/// A cohort's cell of a row (`canary` or `control`): [`format_value`], except that the
/// sample-ratio row reads as a split: canary's share of requests against control's,
/// `observed` in the canary cell and `expected` in the control cell.
pub fn format_cohort_value(v: Option<f64>, row: &ComparisonRow, cohort: canary_core::Cohort) -> String {
    let is_split = row.key() == crate::stats::RowKey::built_in("sample_ratio");
    match v {
        Some(canary_share) if is_split && (0.0..=1.0).contains(&canary_share) => {
            let side = if cohort == canary_core::Cohort::Canary { "observed" } else { "expected" };
            let control_share = 1.0 - canary_share;
            format!("{:.2} % : {:.2} % {side}", canary_share * 100.0, control_share * 100.0)
        }
        _ => format_value(v, row),
    }
}

/// `canary / control − 1` in percent with a sign, `-` without it.
pub fn format_relative(row: &ComparisonRow) -> String {
    row.relative_difference.map_or("-".into(), |r| format!("{:+.1} %", r * 100.0))
}

/// The anytime-valid interval with its scale, e.g. `[-0.010, 0.230] relative`; `-` without one.
pub fn format_interval(row: &ComparisonRow) -> String {
    match &row.interval {
        Some(i) if i.lo.is_some() || i.hi.is_some() => {
            // Latency differences in ms like the values; relative scales in percent.
            let (unit, scale): (fn(f64) -> String, &str) = match row.interval_scale {
                DifferenceScale::Absolute if row.value_unit() == ValueUnit::Microseconds => {
                    (|v| format!("{:+.1} ms", v / 1_000.0), "")
                }
                DifferenceScale::Absolute => (|v| format!("{v:+.4}"), ""),
                DifferenceScale::Relative => (|v| format!("{:+.1} %", v * 100.0), " relative"),
                DifferenceScale::RelativeOdds => (|v| format!("{:+.1} %", v * 100.0), " odds"),
            };
            let (lo, hi) = (i.lo.map_or("-∞".to_string(), unit), i.hi.map_or("+∞".to_string(), unit));
            format!("[{lo}, {hi}]{scale}")
        }
        _ => "-".into(),
    }
}

/// The p-value to three places, `-` without one.
pub fn format_p(row: &ComparisonRow) -> String {
    row.p_value.map_or("-".into(), |p| format!("{p:.3}"))
}

/// `worse`, `better`, `no difference`, `not enough data`.
pub fn verdict_name(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Worse => "worse",
        Verdict::Better => "better",
        Verdict::NoDifference => "no difference",
        Verdict::NotEnoughData => "not enough data",
    }
}

/// `progressing`, `paused`, `promoted`, `rolled back`, `pending`.
pub fn phase_name(phase: RolloutPhase) -> &'static str {
    match phase {
        RolloutPhase::Pending => "pending",
        RolloutPhase::Progressing => "progressing",
        RolloutPhase::Paused => "paused",
        RolloutPhase::Promoted => "promoted",
        RolloutPhase::RolledBack => "rolled back",
    }
}

/// One hold reason for people: what holds the rollout and what would lift it.
pub fn hold_text(reason: &HoldReason) -> String {
    match reason {
        HoldReason::NotServed { deployment, proxies, other_deployments } => {
            let exported = if other_deployments.is_empty() {
                "no deployment at all".to_string()
            } else {
                format!("only {}", other_deployments.join(", "))
            };
            let scraped = if *proxies == 1 {
                "the 1 proxy scraped".to_string()
            } else {
                format!("the {proxies} proxies scraped")
            };
            format!(
                "no proxy serves deployment {deployment}: {scraped} export {exported}; \
                 check the deployment id in the filter's configuration against the policy's"
            )
        }
        HoldReason::AwaitingDeployment { deployment } => format!(
            "held at 0 % until the pipeline deploys the canary and marks it deployed \
             (`canary-analyzer deployed {deployment}`)"
        ),
        HoldReason::ApprovalNeeded { deployment, step, window_passed } => {
            let when = if *window_passed { "its window passed cleanly; " } else { "after its window, " };
            format!("step {step} needs an operator's approval: {when}`canary-analyzer approve {deployment}`")
        }
        HoldReason::Paused => "paused: nothing is promoted until a human resumes (rollback stays armed)".to_string(),
        HoldReason::WindowRunning { step, window_s, remaining_s } => {
            format!("step {step}'s {} window: {} to go", duration_text(*window_s), duration_text(*remaining_s))
        }
        HoldReason::RequestsMissing { cohort, served, needed, rate_per_s } => {
            let missing = needed.saturating_sub(*served);
            let when = match rate_per_s {
                Some(rate) if *rate > 0.0 => {
                    format!(", ~{} at {rate:.1} req/s", duration_text((missing as f64 / rate).ceil() as u64))
                }
                _ => format!("; no {cohort} request counted at this step yet"),
            };
            format!("{cohort} needs {missing} more requests (min_requests_per_cohort {needed}){when}")
        }
        HoldReason::ChecksWithoutData { with_data, needed, without_data, latest_had_data } => {
            let latest = if *latest_had_data { "" } else { "; the latest check found none" };
            format!("{with_data} checks with data of {needed} needed, {without_data} without data{latest}")
        }
        HoldReason::ProxiesLagging { summary } => format!("not every proxy applies this step: {summary}"),
        HoldReason::CriticalUndecided { metric } => {
            format!("critical metric {metric} has no verdict yet (not enough data)")
        }
    }
}

/// What `--watch` says once the window has passed: promotion at the next clean check,
/// or that the hold reasons listed below stand in the way.
pub fn window_passed_text(reasons: &[HoldReason]) -> String {
    let waiting = reasons.iter().filter(|r| !matches!(r, HoldReason::WindowRunning { .. })).count();
    match waiting {
        0 => "window passed: promotes on the next clean check".to_string(),
        1 => "window passed: held by the reason below".to_string(),
        n => format!("window passed: held by the {n} reasons below"),
    }
}

/// Each hold reason on its own line, `\nheld: ...`; empty without any.
pub fn hold_lines(reasons: &[HoldReason]) -> String {
    reasons.iter().map(|reason| format!("\nheld: {}", hold_text(reason))).collect()
}

/// `12 s`, `4 min 05 s`.
pub fn duration_text(seconds: u64) -> String {
    if seconds < 60 { format!("{seconds} s") } else { format!("{} min {:02} s", seconds / 60, seconds % 60) }
}

/// What a decision did, for the log: `promote → 25 %`.
pub fn action_text(action: &Action) -> String {
    match action {
        Action::Promote { share_bp, .. } | Action::SetShare { share_bp, .. } => {
            format!("{} → {}", action_name(action), share(*share_bp))
        }
        other => action_name(other).to_string(),
    }
}

/// Basis points as a percentage: `500` → `5 %`, `1250` → `12.5 %`.
pub fn share(bp: u32) -> String {
    let whole = bp / 100;
    match bp % 100 {
        0 => format!("{whole} %"),
        rest if rest % 10 == 0 => format!("{whole}.{} %", rest / 10),
        rest => format!("{whole}.{rest:02} %"),
    }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, u32::try_from(month).unwrap_or(0), u32::try_from(day).unwrap_or(0))
}

/// `2026-11-21 21:46:45 UTC` for a Unix-millisecond time.
pub fn timestamp(at_ms: u64) -> String {
    let seconds = at_ms / 1_000;
    let (year, month, day) = civil_from_days(i64::try_from(seconds / 86_400).unwrap_or(0));
    let s = seconds % 86_400;
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC", s / 3_600, s / 60 % 60, s % 60)
}

pub fn action_name(action: &Action) -> &'static str {
    match action {
        Action::Start => "start",
        Action::Hold => "hold",
        Action::Promote { .. } => "promote",
        Action::Rollback => "rollback",
        Action::Pause => "pause",
        Action::Resume => "resume",
        Action::SetShare { .. } => "set share",
        Action::Resync { .. } => "resync",
        Action::Deployed { .. } => "deployed",
        Action::AwaitApproval { .. } => "approval needed",
        Action::Approve { .. } => "approve",
    }
}

/// One line per row: `error_rate: canary 1.230 % vs control 0.510 % (Worse, p=0.001)`.
pub fn describe_row(row: &ComparisonRow) -> String {
    let p = row.p_value.map_or(String::new(), |p| format!(", p={p:.3}"));
    format!(
        "{}: canary {} vs control {} ({:?}{p})",
        row.metric,
        row.value_text(row.canary),
        row.value_text(row.control),
        row.verdict
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deployment_nobody_serves_names_the_ids_the_proxies_export() {
        let reason = |proxies, others: &[&str]| HoldReason::NotServed {
            deployment: "orders".into(),
            proxies,
            other_deployments: others.iter().map(|id| id.to_string()).collect(),
        };
        assert_eq!(
            hold_text(&reason(1, &["checkout"])),
            "no proxy serves deployment orders: the 1 proxy scraped export only checkout; \
             check the deployment id in the filter's configuration against the policy's"
        );
        assert!(hold_text(&reason(2, &[])).contains("the 2 proxies scraped export no deployment at all"));
        assert_eq!(hold_lines(&[reason(1, &["a", "b"])]).lines().count(), 2, "a leading line break, one line each");
        assert_eq!(hold_lines(&[]), "");
    }

    #[test]
    fn each_hold_says_what_is_needed_and_when() {
        let missing = |served, rate_per_s| HoldReason::RequestsMissing {
            cohort: "canary".into(),
            served,
            needed: 500,
            rate_per_s,
        };
        assert_eq!(
            hold_text(&missing(160, Some(8.5))),
            "canary needs 340 more requests (min_requests_per_cohort 500), ~40 s at 8.5 req/s"
        );
        assert_eq!(
            hold_text(&missing(0, None)),
            "canary needs 500 more requests (min_requests_per_cohort 500); no canary request counted at this step yet"
        );
        assert_eq!(
            hold_text(&HoldReason::WindowRunning { step: 2, window_s: 300, remaining_s: 200 }),
            "step 2's 5 min 00 s window: 3 min 20 s to go"
        );
        assert_eq!(
            hold_text(&HoldReason::ChecksWithoutData {
                with_data: 4,
                needed: 9,
                without_data: 2,
                latest_had_data: false
            }),
            "4 checks with data of 9 needed, 2 without data; the latest check found none"
        );
        assert_eq!(
            hold_text(&HoldReason::CriticalUndecided { metric: "latency_p99_us".into() }),
            "critical metric latency_p99_us has no verdict yet (not enough data)"
        );
        assert!(
            hold_text(&HoldReason::ProxiesLagging { summary: "1 of 2 proxies".into() }).ends_with("1 of 2 proxies")
        );
        assert!(hold_text(&HoldReason::Paused).starts_with("paused"));
    }

    #[test]
    fn a_passed_window_says_whether_something_still_holds_it() {
        assert_eq!(window_passed_text(&[]), "window passed: promotes on the next clean check");
        let undecided = HoldReason::CriticalUndecided { metric: "latency_p99_us".into() };
        assert_eq!(window_passed_text(std::slice::from_ref(&undecided)), "window passed: held by the reason below");
        assert_eq!(window_passed_text(&[undecided.clone(), undecided]), "window passed: held by the 2 reasons below");
    }

    #[test]
    fn shares_print_without_trailing_zeros() {
        assert_eq!(share(0), "0 %");
        assert_eq!(share(100), "1 %");
        assert_eq!(share(1_250), "12.5 %");
        assert_eq!(share(1), "0.01 %");
        assert_eq!(share(10_000), "100 %");
    }

    #[test]
    fn the_sample_ratio_reads_as_a_split() {
        use canary_core::Cohort;
        let split = ComparisonRow {
            canary: Some(0.098),
            control: Some(0.1),
            ..crate::fixtures::row("sample_ratio", Verdict::NoDifference, Some(0.5))
        };
        assert_eq!(format_cohort_value(split.canary, &split, Cohort::Canary), "9.80 % : 90.20 % observed");
        assert_eq!(format_cohort_value(split.control, &split, Cohort::Control), "10.00 % : 90.00 % expected");
        let rate = crate::fixtures::row("error_rate", Verdict::Worse, Some(0.01));
        assert_eq!(format_cohort_value(rate.canary, &rate, Cohort::Canary), format_value(rate.canary, &rate));
    }

    #[test]
    fn values_read_in_the_rows_unit_whatever_its_name() {
        let row =
            |metric: &str, unit| ComparisonRow { unit, ..crate::fixtures::row(metric, Verdict::Worse, Some(0.01)) };
        // A user-named outcome rate: 2 % against 1 %, not 0.0200.
        let hits = row("cache_hit", ValueUnit::Fraction);
        assert_eq!(format_value(hits.canary, &hits), "2.000 %");
        assert_eq!(describe_row(&hits), "cache_hit: canary 2.000 % vs control 1.000 % (Worse, p=0.010)");
        let latency = ComparisonRow { canary: Some(279_800.0), ..row("p99", ValueUnit::Microseconds) };
        assert_eq!(format_value(latency.canary, &latency), "279.8 ms");
        let custom = row("declines", ValueUnit::Number);
        assert_eq!(format_value(custom.canary, &custom), "0.0200");
        assert_eq!(format_value(None, &custom), "-");
        // Rows recorded before rows carried a unit read by their name, as they did.
        let json = serde_json::to_value(row("latency_p99_us", ValueUnit::ByName)).unwrap();
        let mut old = json.as_object().unwrap().clone();
        old.remove("unit");
        let old: ComparisonRow = serde_json::from_value(serde_json::Value::Object(old)).unwrap();
        assert_eq!(old.value_unit(), ValueUnit::Microseconds);
        assert_eq!(row("error_rate", ValueUnit::ByName).value_unit(), ValueUnit::Fraction);
        assert_eq!(row("sample_ratio", ValueUnit::ByName).value_unit(), ValueUnit::Fraction);
    }

    #[test]
    fn timestamps_are_utc_calendar_dates() {
        assert_eq!(timestamp(0), "1970-01-01 00:00:00 UTC");
        // 2024-02-29 12:34:56 UTC (a leap day).
        assert_eq!(timestamp(1_709_210_096_000), "2024-02-29 12:34:56 UTC");
        assert_eq!(timestamp(1_798_761_599_000), "2026-12-31 23:59:59 UTC");
    }
}
