//! What the CLI prints for people: the progress line, the comparison table, a
//! rollout's status, the `status --watch` view and frame. Pure functions of the API's
//! answers, so their wording is tested without a server.

use crate::audit::AuditRecord;
use crate::engine::RolloutStatus;
use crate::present::{
    action_text, duration_text, format_interval, format_p, format_relative, format_value, percent, phase_name,
    timestamp, verdict_name,
};
use crate::row_rule::RowRule;
use crate::stats::ComparisonRow;
use canary_core::RolloutPhase;
use std::fmt::Write as _;

/// Where the rollout stands, without the countdown: `checkout: progressing at 5.00 %
/// (step 2/5)`. It changes only when the rollout does, so `wait` prints it on change.
pub fn position_line(status: &RolloutStatus) -> String {
    format!(
        "{}: {} at {} (step {}/{})",
        status.deployment,
        phase_name(status.state.phase),
        percent(status.state.share_bp),
        status.state.step + 1,
        status.ladder_bp.len()
    )
}

/// The line `wait` prints when it changes: the position, and what a person must do
/// when the rollout waits for one (an approval, the pipeline's `deployed`).
pub fn waiting_line(status: &RolloutStatus) -> String {
    let position = position_line(status);
    if status.state.awaiting_approval {
        format!("{position}, waiting for an operator: canary-analyzer approve {}", status.deployment)
    } else if status.state.awaits_deployment() {
        format!("{position}, share 0 until: canary-analyzer deployed {}", status.deployment)
    } else {
        position
    }
}

/// One line of progress: `checkout: progressing at 5.00 % (step 2/5), window ends in 2 min 00 s`.
pub fn progress_line(status: &RolloutStatus) -> String {
    let mut line = position_line(status);
    if let Some(s) = status.window_remaining_s {
        let _ = write!(line, ", window ends in {}", duration_text(s));
    }
    line
}

/// The header of [`list_line`]'s columns.
pub const LIST_HEADER: &str = "DEPLOYMENT            PHASE         SHARE      STEP   NEXT";

/// One rollout on one line under [`LIST_HEADER`]: deployment, phase, share, step, and
/// what comes next (the window's end, or a problem or stall that needs a person).
pub fn list_line(status: &RolloutStatus) -> String {
    let next = if let Some(problem) = &status.problem {
        format!("PROBLEM: {problem}")
    } else if status.stalled.is_some() {
        "STALLED (see status)".to_string()
    } else {
        match (status.state.phase, status.window_remaining_s) {
            (RolloutPhase::Progressing, Some(0)) => "window passed".to_string(),
            (RolloutPhase::Progressing, Some(s)) => format!("window ends in {}", duration_text(s)),
            (RolloutPhase::Paused, _) => "resume to promote".to_string(),
            (RolloutPhase::Pending, _) => "mark deployed to start".to_string(),
            _ => "-".to_string(),
        }
    };
    let step = format!("{}/{}", status.state.step + 1, status.ladder_bp.len());
    format!(
        "{:<21} {:<13} {:>8}   {:<6} {next}",
        status.deployment,
        phase_name(status.state.phase),
        percent(status.state.share_bp),
        step
    )
}

/// `list`: a header and one line per rollout, or `no rollouts`.
pub fn list_table(statuses: &[RolloutStatus]) -> String {
    if statuses.is_empty() {
        return "no rollouts\n".to_string();
    }
    let mut out = format!("{LIST_HEADER}\n");
    for status in statuses {
        let _ = writeln!(out, "{}", list_line(status));
    }
    out
}

/// The comparison table, worst first, as the API returns it, with each row's tolerance
/// and whether it is critical (from `rules`, the status's `row_rules`; a row without a
/// rule, such as one of an older analyzer, shows `-`).
pub fn report_table(rows: &[ComparisonRow], rules: &[RowRule]) -> String {
    let mut out = format!(
        "{:<16} {:>12} {:>12} {:>12} {:>9} {:>25} {:>8}  {:<12} {:<26} {}\n",
        "metric", "canary", "control", "difference", "relative", "interval", "p", "verdict", "tolerance", "critical"
    );
    for row in rows {
        let rule = rules.iter().find(|r| r.metric == row.metric);
        let _ = writeln!(
            out,
            "{:<16} {:>12} {:>12} {:>12} {:>9} {:>25} {:>8}  {:<12} {:<26} {}",
            row.metric,
            crate::present::format_cohort_value(row.canary, row, canary_core::Cohort::Canary),
            crate::present::format_cohort_value(row.control, row, canary_core::Cohort::Control),
            format_value(row.absolute_difference, row),
            format_relative(row),
            format_interval(row),
            format_p(row),
            verdict_name(row.verdict),
            rule.map_or("-", |r| r.tolerance.as_str()),
            rule.map_or("-", |r| if r.critical { "yes" } else { "no" }),
        );
    }
    out
}

/// The status of one rollout for people.
pub fn status_text(status: &RolloutStatus) -> String {
    let mut out = progress_line(status);
    let ladder: Vec<String> = status
        .ladder_bp
        .iter()
        .enumerate()
        .map(|(i, bp)| if i as u32 == status.state.step { format!("[{}]", percent(*bp)) } else { percent(*bp) })
        .collect();
    let _ = write!(out, "\nladder: {}\ngeneration {}", ladder.join(" → "), status.state.generation);
    if let Some(problem) = &status.problem {
        let _ = write!(out, "\nPROBLEM: {problem}");
    }
    out.push_str(&fleet_and_stall_lines(status));
    if !status.failed_targets.is_empty() {
        let _ = write!(out, "\nfailed scrape targets: {}", status.failed_targets.join("; "));
    }
    let _ = write!(out, "\n\n{}", report_table(&status.rows, &status.row_rules));
    out
}

/// `fleet: 3 of 4 proxies on generation 17; lagging: ...` and `STALLED: ...`, each on
/// its own line, when the status has them.
fn fleet_and_stall_lines(status: &RolloutStatus) -> String {
    let mut out = String::new();
    if let Some(fleet) = &status.fleet {
        let _ = write!(out, "\nfleet: {}", fleet.summary());
    }
    if let Some(stalled) = &status.stalled {
        let _ = write!(out, "\nSTALLED: {stalled}");
    }
    out.push_str(&crate::present::hold_lines(&status.holds));
    out
}

/// ANSI: move the cursor home and clear the screen (every `--watch` frame starts with it).
pub const CLEAR_SCREEN: &str = "\x1b[H\x1b[2J";
/// Comparison rows the watch view shows (the worst ones; `report` has them all).
const WATCH_ROWS: usize = 6;
/// Decisions the watch view shows, newest first.
const WATCH_DECISIONS: usize = 5;

/// What `status --watch` shows of one rollout: the progress line, the ladder, what
/// comes next, requests per cohort, the worst comparison rows and the last decisions.
pub fn watch_view(status: &RolloutStatus, audit: &[AuditRecord]) -> String {
    let mut out = progress_line(status);
    let ladder: Vec<String> = (0u32..)
        .zip(&status.ladder_bp)
        .map(|(i, bp)| if i == status.state.step { format!("[{}]", percent(*bp)) } else { percent(*bp) })
        .collect();
    let _ = write!(out, "\nladder: {}", ladder.join(" → "));
    let next = match (status.state.phase, status.window_remaining_s) {
        (RolloutPhase::Progressing, Some(0)) => crate::present::window_passed_text(&status.holds),
        (RolloutPhase::Progressing, Some(s)) => format!("next step in {}", duration_text(s)),
        (RolloutPhase::Paused, _) => "paused: no automatic promotion (rollback stays armed)".to_string(),
        (RolloutPhase::Promoted, _) => "promoted: the rollout is over".to_string(),
        (RolloutPhase::RolledBack, _) => "rolled back: the rollout is over, everyone on stable".to_string(),
        (RolloutPhase::Pending, _) => {
            format!("held at 0 % until the canary is marked deployed: canary-analyzer deployed {}", status.deployment)
        }
        (_, _) => "waiting".to_string(),
    };
    let _ = write!(out, "\n{next}");
    let total =
        |f: fn(&crate::engine::HistoryPoint) -> u64| status.history.iter().map(f).fold(0u64, u64::saturating_add);
    let (canary, control) = (total(|p| p.canary_requests), total(|p| p.control_requests));
    let _ = write!(out, "\nrequests: canary {canary}, control {control} over {} checks", status.history.len());
    if let Some(last) = status.history.last() {
        let all = last.canary_requests.saturating_add(last.control_requests);
        let observed = if all == 0 {
            "-".to_string()
        } else {
            format!("{:.2} %", 100.0 * last.canary_requests as f64 / all as f64)
        };
        let _ = write!(
            out,
            "\nlatest check: canary {} (errors {}), control {} (errors {}); canary share {observed} of requests",
            last.canary_requests, last.canary_errors, last.control_requests, last.control_errors
        );
    }
    out.push_str(&fleet_and_stall_lines(status));
    if !status.failed_targets.is_empty() {
        let _ = write!(out, "\nfailed scrape targets: {}", status.failed_targets.join("; "));
    }
    let rows = status.rows.get(..WATCH_ROWS.min(status.rows.len())).unwrap_or_default();
    if rows.is_empty() {
        out.push_str("\n\nno comparison yet\n");
    } else {
        let _ = write!(out, "\n\n{}", report_table(rows, &status.row_rules));
        if status.rows.len() > rows.len() {
            let _ = writeln!(
                out,
                "({} more rows: canary-analyzer report {})",
                status.rows.len() - rows.len(),
                status.deployment
            );
        }
    }
    out.push_str("\nlast decisions:");
    if audit.is_empty() {
        out.push_str(" none");
    }
    for record in audit.iter().rev().take(WATCH_DECISIONS) {
        let _ = write!(
            out,
            "\n  #{} {}  {:<10} {:<16} {}",
            record.sequence,
            timestamp(record.at_ms),
            record.decision.actor_text(),
            action_text(&record.decision.action),
            record.decision.reason
        );
    }
    out
}

/// One full `--watch` frame: clear the screen, a title line, then each rollout's view.
pub fn watch_frame(views: &[String], now_ms: u64) -> String {
    let body = if views.is_empty() { "no rollouts".to_string() } else { views.join("\n\n") };
    format!("{CLEAR_SCREEN}canary-analyzer status --watch · {} · Ctrl-C stops\n\n{body}\n", timestamp(now_ms))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{point, row, state};
    use crate::ladder::{Action, Actor};
    use crate::stats::Verdict;

    /// The shared rollout after one check, with `rows` comparison rows.
    fn status(rows: usize) -> RolloutStatus {
        let rows = (0..rows).map(|i| row(&format!("metric_{i}"), Verdict::NoDifference, Some(0.4))).collect();
        crate::fixtures::status(vec![point(2_000, 2)], rows)
    }

    fn record(sequence: u64, reason: &str, action: Action) -> AuditRecord {
        crate::fixtures::record(sequence, reason, Actor::Analyzer, action)
    }

    #[test]
    fn the_watch_view_shows_the_essentials() {
        let audit: Vec<AuditRecord> =
            (1..=7).map(|i| record(i, &format!("reason {i}"), Action::Promote { to_step: 1, share_bp: 500 })).collect();
        let view = watch_view(&status(8), &audit);
        let lines: Vec<&str> = view.lines().collect();
        assert_eq!(lines[0], "checkout: progressing at 5.00 % (step 2/5), window ends in 1 min 15 s");
        assert_eq!(lines[1], "ladder: 1.00 % → [5.00 %] → 25.00 % → 50.00 % → 100.00 %");
        assert_eq!(lines[2], "next step in 1 min 15 s");
        assert_eq!(lines[3], "requests: canary 50, control 950 over 1 checks");
        assert_eq!(
            lines[4],
            "latest check: canary 50 (errors 2), control 950 (errors 1); canary share 5.00 % of requests"
        );
        assert!(view.contains("metric_5") && !view.contains("metric_6"), "six worst rows: {view}");
        assert!(view.contains("(2 more rows: canary-analyzer report checkout)"), "{view}");
        assert!(view.contains("[+25.0 %, +∞] relative") && view.contains("no difference"), "{view}");
        // Newest decision first, five of them.
        let decisions: Vec<&&str> = lines.iter().filter(|l| l.starts_with("  #")).collect();
        assert_eq!(decisions.len(), 5);
        assert!(
            decisions[0].starts_with("  #7 2023-11-14 22:13:27 UTC  analyzer   promote → 5 %")
                && decisions[0].ends_with("reason 7"),
            "{}",
            decisions[0]
        );
        assert!(decisions[4].starts_with("  #3 "));
    }

    #[test]
    fn the_report_shows_each_rows_tolerance_and_whether_it_is_critical() {
        let rows =
            vec![row("error_rate", Verdict::Worse, Some(0.4)), row("latency_p50_us", Verdict::NoDifference, None)];
        let rules = vec![RowRule { metric: "error_rate".into(), tolerance: "+10 % relative".into(), critical: true }];
        let table = report_table(&rows, &rules);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].ends_with("tolerance                  critical"), "{table}");
        assert!(lines[1].starts_with("error_rate") && lines[1].ends_with("+10 % relative             yes"), "{table}");
        assert!(
            lines[2].starts_with("latency_p50_us") && lines[2].ends_with("-                          -"),
            "{table}"
        );
    }

    #[test]
    fn the_watch_view_of_a_new_or_finished_rollout() {
        let mut fresh = status(0);
        fresh.history.clear();
        let view = watch_view(&fresh, &[]);
        assert!(
            view.contains("over 0 checks")
                && view.contains("no comparison yet")
                && view.contains("last decisions: none"),
            "{view}"
        );
        assert!(!view.contains("latest check"));
        let mut done = status(1);
        done.state = state(1, 0, RolloutPhase::RolledBack);
        done.window_remaining_s = None;
        let view = watch_view(&done, &[record(1, "error_rate worse", Action::Rollback)]);
        assert!(view.starts_with("checkout: rolled back at 0.00 %"), "{view}");
        assert!(
            view.contains("rolled back: the rollout is over")
                && view.contains("rollback")
                && view.contains("error_rate worse"),
            "{view}"
        );
    }

    /// A server that accepts connections and never answers: returns its URL; the

    #[test]
    fn the_list_shows_one_line_per_rollout() {
        assert_eq!(list_table(&[]), "no rollouts\n");
        let progressing = status(2);
        let mut paused = status(0);
        paused.deployment = "search".into();
        paused.state = state(0, 100, RolloutPhase::Paused);
        let mut done = status(0);
        done.deployment = "cart".into();
        done.state = state(1, 0, RolloutPhase::RolledBack);
        done.window_remaining_s = None;
        let table = list_table(&[progressing, paused, done]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4, "{table}");
        assert_eq!(lines[0], LIST_HEADER);
        assert_eq!(lines[1], "checkout              progressing     5.00 %   2/5    window ends in 1 min 15 s");
        assert_eq!(lines[2], "search                paused          1.00 %   1/5    resume to promote");
        assert_eq!(lines[3], "cart                  rolled back     0.00 %   2/5    -");
    }

    #[test]
    fn a_watch_frame_clears_the_screen_first() {
        let frame = watch_frame(&["a".into(), "b".into()], 3_600_000);
        assert!(
            frame.starts_with("\x1b[H\x1b[2Jcanary-analyzer status --watch · 1970-01-01 01:00:00 UTC"),
            "{frame:?}"
        );
        assert!(frame.ends_with("a\n\nb\n"));
        assert!(watch_frame(&[], 0).contains("no rollouts"));
    }

    #[test]
    fn wait_says_who_must_act_when_the_rollout_waits_for_a_person() {
        let mut waiting = status(0);
        waiting.state = state(1, 500, RolloutPhase::Progressing);
        let plain = waiting_line(&waiting);
        assert_eq!(plain, position_line(&waiting));
        waiting.state.awaiting_approval = true;
        let approval = waiting_line(&waiting);
        assert!(approval.starts_with(&plain) && approval.ends_with("canary-analyzer approve checkout"), "{approval}");
        waiting.state = state(0, 0, RolloutPhase::Pending);
        assert!(waiting_line(&waiting).ends_with("share 0 until: canary-analyzer deployed checkout"));
    }
}
