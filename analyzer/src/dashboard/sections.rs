//! The parts of a rollout's page, each a pure function of the API's data: the
//! ladder with the current step and time left, the per-cohort charts from the
//! check history, the comparison table, the decision log and the override form.

use super::html::{escape, path_segment};
use super::svg::{Chart, Marker, Series};
use crate::audit::AuditRecord;
use crate::engine::{HistoryPoint, RolloutStatus};
use crate::present::{
    action_text, duration_text, format_cohort_value, format_interval, format_p, format_relative, format_value,
    phase_name, share, timestamp, verdict_name,
};
use crate::row_rule::RowRule;
use crate::stats::{ComparisonRow, Verdict};
use canary_core::RolloutPhase;
use std::fmt::Write as _;

/// Line colours: canary warm, control cool, references grey (distinguishable in greyscale too).
const CANARY: &str = "#d9480f";
const CONTROL: &str = "#1c7ed6";
const REFERENCE: &str = "#868e96";
/// Audit records shown in the decision log, newest first; the API has them all.
pub const LOG_LIMIT: usize = 50;

/// CSS class of a phase (no spaces).
fn phase_class(phase: RolloutPhase) -> &'static str {
    match phase {
        RolloutPhase::Pending => "pending",
        RolloutPhase::Progressing => "progressing",
        RolloutPhase::Paused => "paused",
        RolloutPhase::Promoted => "promoted",
        RolloutPhase::RolledBack => "rolled-back",
    }
}

/// The headline: phase, share, step, generation, last check, failed scrape targets.
pub fn summary(status: &RolloutStatus) -> String {
    let phase = status.state.phase;
    let mut out = format!(
        "<p class=\"summary\"><span class=\"phase {}\">{}</span> at <b class=\"share\">{}</b> \
         · step {} of {} · generation {} · policy {}",
        phase_class(phase),
        phase_name(phase),
        share(status.state.share_bp),
        status.state.step.saturating_add(1),
        status.ladder_bp.len(),
        status.state.generation,
        escape(&status.policy)
    );
    match status.last_check_ms {
        Some(at) => {
            let _ = write!(out, " · last check {}", timestamp(at));
        }
        None => out.push_str(" · no check yet"),
    }
    out.push_str("</p>");
    if let Some(fleet) = &status.fleet {
        let class = if fleet.all_applied() { "fleet" } else { "fleet warning" };
        let _ = write!(out, "<p class=\"{class}\" id=\"fleet\">fleet: {}</p>", escape(&fleet.summary()));
    }
    if let Some(stalled) = &status.stalled {
        let _ = write!(out, "<p class=\"warning\" id=\"stalled\">{}</p>", escape(stalled));
    }
    for reason in &status.holds {
        let _ = write!(out, "<p class=\"warning hold\">held: {}</p>", escape(&crate::present::hold_text(reason)));
    }
    if let Some(problem) = &status.problem {
        let _ = write!(out, "<p class=\"warning\" id=\"problem\">{}</p>", escape(problem));
    }
    if !status.failed_targets.is_empty() {
        let targets: Vec<String> = status.failed_targets.iter().map(|t| escape(t)).collect();
        let _ = write!(out, "<p class=\"warning\">failed scrape targets: {}</p>", targets.join("; "));
    }
    out
}

/// The ladder, one item per step: done, current (with the time left) or to come.
pub fn ladder(status: &RolloutStatus) -> String {
    let state = &status.state;
    let mut out =
        format!("<ol class=\"ladder\" data-step=\"{}\" data-phase=\"{}\">", state.step, phase_class(state.phase));
    for (i, bp) in (0u32..).zip(&status.ladder_bp) {
        let class = match (i.cmp(&state.step), state.phase) {
            (_, RolloutPhase::Promoted) => "step done",
            (std::cmp::Ordering::Less, _) => "step done",
            (std::cmp::Ordering::Equal, RolloutPhase::RolledBack) => "step current rolled-back",
            (std::cmp::Ordering::Equal, _) => "step current",
            (std::cmp::Ordering::Greater, _) => "step",
        };
        let current = i == state.step;
        let _ = write!(
            out,
            "<li class=\"{class}\" data-share-bp=\"{bp}\"{}><span>{}</span>",
            if current { " aria-current=\"step\"" } else { "" },
            share(*bp)
        );
        if current {
            let note = match (state.phase, status.window_remaining_s) {
                (RolloutPhase::Progressing, Some(0)) => "window passed: promotes on a clean check".to_string(),
                (RolloutPhase::Progressing, Some(s)) => format!("next step in {}", duration_text(s)),
                (RolloutPhase::RolledBack, _) => "rolled back to 0 %".to_string(),
                (phase, _) => phase_name(phase).to_string(),
            };
            let _ = write!(out, "<small class=\"window\">{}</small>", escape(&note));
        }
        out.push_str("</li>");
    }
    out.push_str("</ol>");
    out
}

/// Errors per request in percent; `None` without requests.
fn error_percent(errors: u64, requests: u64) -> Option<f64> {
    (requests > 0).then(|| 100.0 * errors as f64 / requests as f64)
}

fn format_percent(v: f64) -> String {
    if v >= 10.0 { format!("{v:.0} %") } else { format!("{v:.2} %") }
}

fn format_ms(v: f64) -> String {
    match v {
        v if v >= 10.0 => format!("{v:.0} ms"),
        v if v >= 1.0 || v == 0.0 => format!("{v:.1} ms"),
        v => format!("{v:.2} ms"),
    }
}

fn cohort_series(
    name: &str,
    colour: &'static str,
    history: &[HistoryPoint],
    value: impl Fn(&HistoryPoint) -> Option<f64>,
) -> Series {
    Series { name: name.into(), colour, dashed: false, points: history.iter().map(|p| (p.at_ms, value(p))).collect() }
}

/// A marker wherever the share changed between two checks: the new step's share, or the
/// decision (`rolled back` to 0, `promoted` to 100 %).
pub fn step_markers(history: &[HistoryPoint]) -> Vec<Marker> {
    history
        .windows(2)
        .filter_map(|pair| match pair {
            [before, after] if before.share_bp != after.share_bp => Some(Marker {
                at_ms: after.at_ms,
                label: match after.share_bp {
                    0 => "rolled back".to_string(),
                    10_000 => "promoted".to_string(),
                    bp => crate::present::percent(bp),
                },
            }),
            _ => None,
        })
        .collect()
}

/// Four charts over the check history: error rate, p50 and p99 latency per cohort, and
/// the canary's share of requests against the share it was given; each marks the step
/// changes and the decision.
pub fn charts(history: &[HistoryPoint]) -> String {
    let markers = step_markers(history);
    let ms = |us: Option<f64>| us.map(|us| us / 1_000.0);
    let error_rate = [
        cohort_series("canary", CANARY, history, |p| error_percent(p.canary_errors, p.canary_requests)),
        cohort_series("control", CONTROL, history, |p| error_percent(p.control_errors, p.control_requests)),
    ];
    let p50 = [
        cohort_series("canary", CANARY, history, |p| ms(p.canary_p50_us)),
        cohort_series("control", CONTROL, history, |p| ms(p.control_p50_us)),
    ];
    let p99 = [
        cohort_series("canary", CANARY, history, |p| ms(p.canary_p99_us)),
        cohort_series("control", CONTROL, history, |p| ms(p.control_p99_us)),
    ];
    let mut target = cohort_series("target share", REFERENCE, history, |p| Some(f64::from(p.share_bp) / 100.0));
    target.dashed = true;
    let request_share = [
        cohort_series("canary", CANARY, history, |p| {
            let total = p.canary_requests.saturating_add(p.control_requests);
            (total > 0).then(|| 100.0 * p.canary_requests as f64 / total as f64)
        }),
        target,
    ];
    let charts = [
        Chart {
            id: "chart-error-rate",
            title: "error rate per check",
            series: &error_rate,
            markers: &markers,
            format_y: format_percent,
        },
        Chart { id: "chart-p50", title: "p50 latency", series: &p50, markers: &markers, format_y: format_ms },
        Chart { id: "chart-p99", title: "p99 latency", series: &p99, markers: &markers, format_y: format_ms },
        Chart {
            id: "chart-share",
            title: "canary share of requests",
            series: &request_share,
            markers: &markers,
            format_y: format_percent,
        },
    ];
    let mut out = String::from("<div class=\"charts\">");
    for chart in &charts {
        let _ = write!(
            out,
            "<figure><figcaption>{}</figcaption>{}{}</figure>",
            chart.title,
            chart.render(),
            chart.legend()
        );
    }
    out.push_str("</div>");
    out
}

/// Requests per cohort over the kept history and in the latest check.
pub fn requests(history: &[HistoryPoint]) -> String {
    let total = |f: fn(&HistoryPoint) -> u64| history.iter().map(f).fold(0u64, u64::saturating_add);
    let (canary, control) = (total(|p| p.canary_requests), total(|p| p.control_requests));
    let mut out = format!(
        "<p class=\"requests\">requests seen: canary <b data-cohort=\"canary\">{canary}</b>, \
         control <b data-cohort=\"control\">{control}</b> over {} checks",
        history.len()
    );
    if let Some(last) = history.last() {
        let _ = write!(
            out,
            " · latest check: canary {}, control {} (errors {} / {})",
            last.canary_requests, last.control_requests, last.canary_errors, last.control_errors
        );
    }
    out.push_str("</p>");
    out
}

fn verdict_class(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Worse => "worse",
        Verdict::Better => "better",
        Verdict::NoDifference => "no-difference",
        Verdict::NotEnoughData => "not-enough-data",
    }
}

/// The latest comparison, worst first as the engine sorted it.
/// `rules` give each row's tolerance and criticality (rows without one, built-in rows
/// the policy does not name, show `-`).
pub fn comparison_table(rows: &[ComparisonRow], rules: &[RowRule]) -> String {
    if rows.is_empty() {
        return "<p class=\"empty\" id=\"comparison-empty\">no comparison yet: the first check has not run</p>"
            .to_string();
    }
    let mut out = String::from(
        "<table class=\"comparison\" id=\"comparison\"><thead><tr><th>metric</th><th>canary</th><th>control</th>\
         <th>difference</th><th>relative</th><th>interval</th><th>p</th><th>tolerance</th><th>critical</th>\
         <th>verdict</th></tr></thead><tbody>",
    );
    for row in rows {
        let metric = &row.metric;
        let rule = rules.iter().find(|rule| &rule.metric == metric);
        let _ = write!(
            out,
            "<tr class=\"{}\" data-metric=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td class=\"tolerance\">{}</td><td class=\"critical\">{}</td>\
             <td class=\"verdict\">{}</td></tr>",
            verdict_class(row.verdict),
            escape(metric),
            escape(metric),
            escape(&format_cohort_value(row.canary, row, canary_core::Cohort::Canary)),
            escape(&format_cohort_value(row.control, row, canary_core::Cohort::Control)),
            escape(&format_value(row.absolute_difference, row)),
            escape(&format_relative(row)),
            escape(&format_interval(row)),
            escape(&format_p(row)),
            escape(rule.map_or("-", |r| r.tolerance.as_str())),
            match rule.map(|r| r.critical) {
                Some(true) => "critical",
                Some(false) => "no",
                None => "-",
            },
            verdict_name(row.verdict)
        );
    }
    out.push_str("</tbody></table>");
    out
}

/// The decision log, newest first (at most [`LOG_LIMIT`] records).
pub fn decision_log(records: &[AuditRecord]) -> String {
    if records.is_empty() {
        return "<p class=\"empty\">no decisions yet</p>".to_string();
    }
    let mut out = String::from(
        "<table class=\"log\" id=\"decision-log\"><thead><tr><th>#</th><th>time</th><th>actor</th><th>decision</th>\
         <th>share</th><th>reason</th></tr></thead><tbody>",
    );
    for record in records.iter().rev().take(LOG_LIMIT) {
        let before = record.before.as_ref().map_or("-".to_string(), |s| share(s.share_bp));
        let _ = write!(
            out,
            "<tr data-sequence=\"{}\"><td>{}</td><td>{}</td><td class=\"actor\">{}</td><td>{}</td><td>{} → {}</td>\
             <td class=\"reason\">{}</td></tr>",
            record.sequence,
            record.sequence,
            timestamp(record.at_ms),
            escape(&record.decision.actor_text()),
            escape(&action_text(&record.decision.action)),
            before,
            share(record.after.share_bp),
            escape(&record.decision.reason)
        );
    }
    out.push_str("</tbody></table>");
    out
}

/// The override form. Lives outside the live-updated part so a refresh never
/// clears what is being typed; its script posts JSON to the override endpoint.
pub fn override_form(deployment: &str) -> String {
    format!(
        "<form id=\"override\" class=\"override\" data-url=\"/v1/rollouts/{}/override\">\
         <label>action <select name=\"action\" id=\"override-action\">\
         <option value=\"hold\">hold (pause)</option><option value=\"resume\">resume</option>\
         <option value=\"promote\">promote one step</option><option value=\"rollback\">roll back</option>\
         <option value=\"set_share\">set share</option><option value=\"approve\">approve this step</option>\
         </select></label>\
         <label>share % <input name=\"share_percent\" id=\"override-share\" type=\"number\" min=\"0\" max=\"100\" \
         step=\"0.01\" placeholder=\"set share only\"></label>\
         <label class=\"wide\">reason <input name=\"reason\" id=\"override-reason\" required minlength=\"1\" \
         placeholder=\"why (recorded in the audit log)\"></label>\
         <label>note <input name=\"actor\" id=\"override-actor\" maxlength=\"100\" \
         placeholder=\"optional; the token names who acts\"></label>\
         <label>token <input name=\"token\" id=\"override-token\" type=\"password\" autocomplete=\"off\" \
         required placeholder=\"operator or admin token\"></label>\
         <button type=\"submit\" id=\"override-submit\">apply</button>\
         <output id=\"override-result\" role=\"status\"></output></form>",
        escape(&path_segment(deployment))
    )
}
