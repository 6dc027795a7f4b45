//! The dashboard: plain HTML rendered on the server from the same data the JSON
//! API serves. `GET /` lists the rollouts, `GET /rollouts/{deployment}` shows one:
//! the ladder with the current step and time left, per-cohort charts over the
//! check history (inline SVG, [`svg`]), the latest comparison table, the decision
//! log and the override form.
//!
//! Live updates without a framework: each page has a `#live` element whose
//! `data-src` names a fragment URL (`/live`, `/rollouts/{deployment}/live`); a few
//! lines of inline script fetch it every 2 s and swap it in. The override form
//! sits outside that element so a refresh never clears it, and posts JSON to the
//! existing `POST /v1/rollouts/{deployment}/override` with the bearer token typed
//! into it (an operator's or admin's line of the tokens file); the answer names the
//! identity the override was recorded as, and the optional "note" field is kept
//! beside it, never as it.
//!
//! Everything here is a pure function from [`RolloutStatus`] and audit records to
//! a string (the handlers in [`crate::api`] do the I/O). Inline CSS and script,
//! no external asset: the machine running it may have no internet.

mod html;
mod sections;
mod svg;

pub use html::escape;
pub use sections::LOG_LIMIT;

use crate::audit::AuditRecord;
use crate::engine::RolloutStatus;
use crate::present::share;
use html::path_segment;
use sections::{charts, comparison_table, decision_log, ladder, override_form, requests, summary};
use std::fmt::Write as _;

/// How often the page re-fetches its live part, in milliseconds (the CLI's `--watch` uses the same).
pub const REFRESH_MS: u32 = 2_000;

const STYLE: &str = "\
*{box-sizing:border-box}body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#212529;background:#f8f9fa}\
header{background:#212529;color:#f8f9fa;padding:10px 20px;display:flex;gap:16px;align-items:baseline}\
header a{color:#f8f9fa}header h1{font-size:18px;margin:0}main{padding:12px 20px;max-width:1200px}\
section{background:#fff;border:1px solid #dee2e6;border-radius:6px;padding:10px 14px;margin:0 0 12px}\
h2{font-size:15px;margin:0 0 8px}.phase{padding:1px 8px;border-radius:10px;background:#e9ecef}\
.phase.progressing{background:#d0ebff}.phase.promoted{background:#d3f9d8}.phase.rolled-back{background:#ffe3e3}\
.phase.paused{background:#fff3bf}.warning{color:#c92a2a}.empty{color:#868e96}\
.ladder{display:flex;list-style:none;padding:0;margin:6px 0;gap:6px}\
.ladder li{flex:1;text-align:center;padding:6px;border:1px solid #ced4da;border-radius:4px;color:#868e96}\
.ladder li span{display:block;font-size:16px;font-weight:600}.ladder li.done{background:#e7f5ff;color:#1c7ed6}\
.ladder li.current{background:#1c7ed6;color:#fff;border-color:#1864ab}\
.ladder li.rolled-back{background:#e03131;border-color:#c92a2a}.ladder small{display:block}\
.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(340px,1fr));gap:10px}\
figure{margin:0}figcaption{font-weight:600;font-size:13px}svg.chart{width:100%;height:auto;background:#fff}\
svg .grid{stroke:#e9ecef}svg text{font-size:10px;fill:#495057}svg .empty{font-size:13px;fill:#868e96}\
.legend span{margin-right:12px;font-size:12px}.legend i{display:inline-block;width:18px;margin:0 4px 3px 0;\
border-top:2px solid}.legend i.dashed{border-top-style:dashed}\
table{border-collapse:collapse;width:100%;font-size:13px}th,td{text-align:left;padding:3px 8px;\
border-bottom:1px solid #e9ecef}td{font-variant-numeric:tabular-nums}tr.worse td{background:#fff5f5}\
tr.worse .verdict{color:#c92a2a;font-weight:600}tr.better .verdict{color:#2b8a3e}\
tr.not-enough-data td{color:#868e96}.override{display:flex;flex-wrap:wrap;gap:8px;align-items:end}\
.override label{display:flex;flex-direction:column;font-size:12px}.override .wide{flex:1;min-width:220px}\
.override input,.override select,.override button{font:inherit;padding:4px 6px}\
#override-result{flex-basis:100%}#override-result.ok{color:#2b8a3e}#override-result.error{color:#c92a2a}\
.rollouts a{font-weight:600}.updated{color:#adb5bd;font-size:12px}";

/// Re-fetches `#live` every [`REFRESH_MS`]; posts the override form and shows the answer.
const SCRIPT: &str = "\
const live=document.getElementById('live');\
async function refresh(){try{const r=await fetch(live.dataset.src,{cache:'no-store'});\
if(r.ok){live.innerHTML=await r.text();}}catch(e){}}\
setInterval(refresh,REFRESH);\
const form=document.getElementById('override');\
if(form){form.addEventListener('submit',async ev=>{ev.preventDefault();\
const out=document.getElementById('override-result');const f=new FormData(form);\
const body={action:f.get('action'),reason:f.get('reason'),actor:f.get('actor')};\
if(f.get('share_percent')!==''){body.share_percent=Number(f.get('share_percent'));}\
out.className='';out.textContent='sending…';\
try{const r=await fetch(form.dataset.url,{method:'POST',headers:{'content-type':'application/json',\
authorization:'Bearer '+f.get('token')},body:JSON.stringify(body)});\
const answer=await r.json().catch(()=>({}));\
const who=r.headers.get('x-canary-identity');\
if(r.ok){out.className='ok';out.textContent='applied'+(who?' as '+who:'')+': '+answer.state.phase+' at '+\
(answer.state.share_bp/100)+' %';\
form.reason.value='';}\
else{out.className='error';out.textContent=r.status+': '+(answer.error||r.statusText);}}\
catch(e){out.className='error';out.textContent='cannot reach the analyzer: '+e;}\
refresh();});}";

/// A whole page around `live` (the part that refreshes from `live_src`) and `fixed` (the part that does not).
fn page(title: &str, live_src: &str, live: &str, fixed: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><title>{}</title>\
         <style>{STYLE}</style></head><body><header><h1>{}</h1><a href=\"/\">all rollouts</a>\
         <span class=\"updated\">updates every {} s</span></header><main>\
         <div id=\"live\" data-src=\"{}\">{live}</div>{fixed}</main>\
         <script>const REFRESH={REFRESH_MS};{SCRIPT}</script></body></html>",
        escape(title),
        escape(title),
        REFRESH_MS / 1_000,
        escape(live_src)
    )
}

/// The live part of the list: one card per rollout with its ladder and worst row.
pub fn index_fragment(statuses: &[RolloutStatus]) -> String {
    if statuses.is_empty() {
        return "<section><p class=\"empty\">no rollouts: register one with <code>canary-analyzer register \
                POLICY.yaml</code></p></section>"
            .to_string();
    }
    let mut out = String::from("<div class=\"rollouts\">");
    for status in statuses {
        let worst = status.rows.first().map_or("no comparison yet".to_string(), |row| {
            format!("worst: {} ({})", row.metric, crate::present::verdict_name(row.verdict))
        });
        let _ = write!(
            out,
            "<section class=\"rollout\" data-deployment=\"{}\"><h2><a href=\"/rollouts/{}\">{}</a></h2>{}{}\
             <p>{}</p></section>",
            escape(&status.deployment),
            escape(&path_segment(&status.deployment)),
            escape(&status.deployment),
            summary(status),
            ladder(status),
            escape(&worst)
        );
    }
    out.push_str("</div>");
    out
}

/// `GET /`: every rollout.
pub fn index_page(statuses: &[RolloutStatus]) -> String {
    page("canary rollouts", "/live", &index_fragment(statuses), "")
}

/// The live part of one rollout's page.
pub fn rollout_fragment(status: &RolloutStatus, audit: &[AuditRecord]) -> String {
    format!(
        "<section><h2>ladder</h2>{}{}</section>\
         <section><h2>per cohort, per check</h2>{}{}</section>\
         <section><h2>latest comparison (worst first)</h2>{}</section>\
         <section><h2>decision log (newest first)</h2>{}</section>",
        summary(status),
        ladder(status),
        requests(&status.history),
        charts(&status.history),
        comparison_table(&status.rows, &status.row_rules),
        decision_log(audit)
    )
}

/// `GET /rollouts/{deployment}`: one rollout, live, with the override form.
pub fn rollout_page(status: &RolloutStatus, audit: &[AuditRecord]) -> String {
    let segment = path_segment(&status.deployment);
    let fixed = format!(
        "<section><h2>override</h2><p class=\"empty\">needs the analyzer's token and a reason; recorded in the \
         decision log. Current share {}.</p>{}</section>",
        share(status.state.share_bp),
        override_form(&status.deployment)
    );
    page(
        &format!("canary: {}", status.deployment),
        &format!("/rollouts/{segment}/live"),
        &rollout_fragment(status, audit),
        &fixed,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{point, row, state, status};
    use crate::ladder::{Action, Actor};
    use crate::stats::Verdict;
    use canary_core::RolloutPhase;

    fn record(sequence: u64, reason: &str, actor: &str, action: Action) -> AuditRecord {
        crate::fixtures::record(sequence, reason, Actor::human(actor).unwrap(), action)
    }

    #[test]
    fn the_ladder_marks_done_current_and_time_left() {
        let html = ladder(&status(Vec::new(), Vec::new()));
        assert!(html.contains("<li class=\"step done\" data-share-bp=\"100\"><span>1 %</span>"), "{html}");
        assert!(html.contains("<li class=\"step current\" data-share-bp=\"500\" aria-current=\"step\">"), "{html}");
        assert!(html.contains("next step in 1 min 15 s"), "{html}");
        assert!(html.contains("<li class=\"step\" data-share-bp=\"10000\"><span>100 %</span>"), "{html}");
        let mut rolled_back = status(Vec::new(), Vec::new());
        rolled_back.state = state(2, 0, RolloutPhase::RolledBack);
        rolled_back.window_remaining_s = None;
        let html = ladder(&rolled_back);
        assert!(html.contains("step current rolled-back") && html.contains("rolled back to 0 %"), "{html}");
    }

    #[test]
    fn an_empty_history_renders_placeholders_not_broken_charts() {
        let page = rollout_page(&status(Vec::new(), Vec::new()), &[]);
        assert_eq!(page.matches("no checks yet").count(), 4, "one per chart");
        assert!(!page.contains("<polyline"));
        assert!(
            page.contains("no comparison yet") && page.contains("no decisions yet") && page.contains("no check yet")
        );
        assert!(page.contains("over 0 checks"));
        assert!(page.starts_with("<!doctype html>") && page.ends_with("</html>"));
    }

    #[test]
    fn charts_mark_each_step_change_and_the_decision() {
        let at = |ms: u64, share_bp: u32| crate::engine::HistoryPoint { share_bp, ..point(ms, 0) };
        let history = [at(1_000, 500), at(2_000, 500), at(3_000, 2_500), at(4_000, 0)];
        let markers = sections::step_markers(&history);
        let labels: Vec<(u64, &str)> = markers.iter().map(|m| (m.at_ms, m.label.as_str())).collect();
        assert_eq!(labels, [(3_000, "25.00 %"), (4_000, "rolled back")]);
        let html = rollout_fragment(&status(history.to_vec(), Vec::new()), &[]);
        assert_eq!(html.matches("data-marker=\"rolled back\"").count(), 4, "on each of the four charts");
        let promoted = sections::step_markers(&[at(1_000, 5_000), at(2_000, 10_000)]);
        assert_eq!(promoted[0].label, "promoted");
    }

    #[test]
    fn charts_have_a_polyline_per_cohort() {
        let html = rollout_fragment(&status(vec![point(1_000, 0), point(3_000, 5), point(5_000, 1)], Vec::new()), &[]);
        for chart in ["chart-error-rate", "chart-p50", "chart-p99", "chart-share"] {
            assert!(html.contains(&format!("<svg id=\"{chart}\"")), "{chart}");
        }
        assert_eq!(html.matches("<polyline data-cohort=\"canary\"").count(), 4, "{html}");
        // control has no p99: 2 charts with control lines (error rate, p50), plus the target share line.
        assert_eq!(html.matches("<polyline data-cohort=\"control\"").count(), 2, "{html}");
        assert!(html.contains("data-series=\"control\" data-points=\"0\""), "p99 of control has no data");
        assert!(html.contains("data-cohort=\"target share\""));
        // canary error rate peaks at 5 / 50 = 10 %.
        assert!(html.contains(">10 %</text>"), "{html}");
        assert!(html.contains("canary <b data-cohort=\"canary\">150</b>") && html.contains("2850"), "{html}");
    }

    #[test]
    fn the_table_keeps_the_order_and_shows_intervals_p_values_and_verdicts() {
        let rows =
            vec![row("error_rate", Verdict::Worse, Some(0.001)), row("latency_p99_us", Verdict::NoDifference, None)];
        let rules = [crate::row_rule::RowRule {
            metric: "error_rate".into(),
            tolerance: "increase up to 10 %".into(),
            critical: true,
        }];
        let html = comparison_table(&rows, &rules);
        assert!(
            html.contains("<td class=\"tolerance\">increase up to 10 %</td><td class=\"critical\">critical</td>"),
            "{html}"
        );
        assert!(
            html.contains("<td class=\"tolerance\">-</td><td class=\"critical\">-</td>"),
            "a row without a rule: {html}"
        );
        let worse = html.find("data-metric=\"error_rate\"").unwrap();
        let same = html.find("data-metric=\"latency_p99_us\"").unwrap();
        assert!(worse < same, "worst first, as given");
        assert!(
            html.contains("<tr class=\"worse\" data-metric=\"error_rate\"><td>error_rate</td><td>2.000 %</td>"),
            "{html}"
        );
        assert!(html.contains("[+25.0 %, +∞] relative") && html.contains("<td>0.001</td>"), "{html}");
        assert!(html.contains("<td class=\"verdict\">worse</td>") && html.contains(">no difference</td>"), "{html}");
        assert!(html.contains("<td>+100.0 %</td>") && html.contains("<td>-</td>"), "{html}");
    }

    #[test]
    fn the_decision_log_is_newest_first() {
        let records = [
            record(1, "registered", "pipeline", Action::Start),
            record(2, "looks fine", "alice", Action::Promote { to_step: 1, share_bp: 500 }),
        ];
        let html = decision_log(&records);
        assert!(html.find("data-sequence=\"2\"").unwrap() < html.find("data-sequence=\"1\"").unwrap());
        assert!(html.contains("promote → 5 %") && html.contains("<td>1 % → 5 %</td>"), "{html}");
        assert!(html.contains("2023-11-14 22:13:22 UTC"), "{html}");
    }

    #[test]
    fn everything_from_outside_is_escaped() {
        let evil = "<script>alert(\"x\")</script>";
        let mut s = status(vec![point(1_000, 0)], vec![row(evil, Verdict::Worse, Some(0.01))]);
        s.policy = evil.into();
        s.failed_targets = vec![format!("http://x: {evil}")];
        s.deployment = "a\"b<c".into();
        let records = [record(1, evil, "<img src=x onerror=alert(1)>", Action::Pause)];
        let page = rollout_page(&s, &records) + &index_page(std::slice::from_ref(&s));
        // The only scripts are the page's own.
        assert_eq!(page.matches("<script>").count(), 2, "{page}");
        assert!(!page.contains("<img") && !page.contains("a\"b<c"), "{page}");
        assert!(page.contains("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;"));
        assert!(page.contains("&lt;img src=x onerror=alert(1)&gt;"));
        // URLs are percent-encoded, then attribute-escaped.
        assert!(page.contains("data-url=\"/v1/rollouts/a%22b%3Cc/override\""), "{page}");
        assert!(page.contains("data-src=\"/rollouts/a%22b%3Cc/live\""), "{page}");
        assert!(page.contains("<title>canary: a&quot;b&lt;c</title>"), "{page}");
    }

    #[test]
    fn the_index_lists_rollouts_with_links_and_refreshes() {
        let page = index_page(&[status(Vec::new(), vec![row("error_rate", Verdict::Worse, Some(0.01))])]);
        assert!(page.contains("<a href=\"/rollouts/checkout\">checkout</a>"), "{page}");
        assert!(page.contains("worst: error_rate (worse)") && page.contains("data-src=\"/live\""), "{page}");
        assert!(page.contains("const REFRESH=2000;") && page.contains("setInterval(refresh,REFRESH)"));
        assert!(index_fragment(&[]).contains("no rollouts"));
    }

    #[test]
    fn the_decision_log_shows_the_identity_with_the_callers_note() {
        let mut noted = record(7, "looks off", "alice", Action::Pause);
        noted.decision.actor_note = Some("<dana>".into());
        let html = sections::decision_log(&[record(6, "start", "ci-deploy", Action::Start), noted]);
        assert!(html.contains("<td class=\"actor\">alice (note: &lt;dana&gt;)</td>"), "{html}");
        assert!(html.contains("<td class=\"actor\">ci-deploy</td>"), "{html}");
    }

    #[test]
    fn the_override_form_needs_a_reason_and_sends_the_token() {
        let page = rollout_page(&status(Vec::new(), Vec::new()), &[]);
        assert!(page.contains("id=\"override-reason\" required"), "{page}");
        assert!(page.contains("authorization:'Bearer '+f.get('token')"));
        // The token is required; the actor field is an optional note; the answer names who acted.
        assert!(page.contains("id=\"override-token\" type=\"password\" autocomplete=\"off\" required"), "{page}");
        assert!(page.contains("<label>note <input name=\"actor\" id=\"override-actor\" maxlength=\"100\""));
        assert!(page.contains("r.headers.get('x-canary-identity')") && page.contains("'applied'+(who?' as '+who:'')"));
        assert!(page.contains("<option value=\"set_share\">") && page.contains("id=\"override-result\""));
        assert!(
            page.contains("<option value=\"approve\">approve this step</option>"),
            "an operator approves a gated step"
        );
        // The form is outside the live part, so a refresh does not clear it.
        let live_end = page.find("</div><section><h2>override</h2>").unwrap();
        assert!(page.find("<form id=\"override\"").unwrap() > live_end);
    }
}
