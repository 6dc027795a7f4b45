//! The dashboard in a real browser: headless Chromium (through chromedriver and
//! WebDriver) loads the analyzer's page while a rollout is in progress against the
//! real Envoy with the filter, checks the rendered DOM (ladder, both cohorts' series,
//! the comparison table), sees the page update itself, submits overrides through the
//! form (refused without the token and without a reason, applied with both) and sees
//! the applied one in the decision log. Saves `tests/artifacts/dashboard.png`.

use canary_analyzer::audit::AuditRecord;
use canary_analyzer::engine::RolloutStatus;
use canary_core::RolloutPhase;
use canary_e2e::analyzer::AnalyzerProcess;
use canary_e2e::analyzer_rig::AnalyzerRig;
use canary_e2e::browser::{ChromeDriver, processes_in_group};
use canary_e2e::load::{Load, LoadOptions};
use canary_e2e::repo_root;
use fantoccini::{Client, Locator};
use std::time::{Duration, Instant};

const TOKEN: &str = "dashboard-token";
const REASON: &str = "holding for the <b>dashboard</b> test";

/// First step 5 % with a window far longer than the test, so the rollout stays in progress.
const POLICY: &str = "apiVersion: canary.wasm.dev/v1alpha1\nkind: RolloutPolicy\nmetadata: {name: dashboard}\n\
spec:\n  deployment: demo\n  ladder:\n    - {share: 5, window: 600s}\n    - {share: 25, window: 600s}\n    \
- {share: 100, window: 1s}\n  check_interval: 1s\n  min_requests_per_cohort: 20\n";

async fn status(http: &reqwest::Client, analyzer: &AnalyzerProcess) -> RolloutStatus {
    http.get(format!("{}/v1/rollouts/demo", analyzer.url())).send().await.unwrap().json().await.unwrap()
}

/// Polls `check` (a DOM query) every 100 ms until it returns `Some`, or fails with `what`.
async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(start.elapsed() < limit, "{what} within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn text(browser: &Client, css: &str) -> Option<String> {
    browser.find(Locator::Css(css)).await.ok()?.text().await.ok()
}

async fn count(browser: &Client, css: &str) -> usize {
    browser.find_all(Locator::Css(css)).await.map_or(0, |v| v.len())
}

async fn fill(browser: &Client, css: &str, value: &str) {
    let input = browser.find(Locator::Css(css)).await.unwrap();
    input.clear().await.unwrap();
    if !value.is_empty() {
        input.send_keys(value).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_a_live_rollout_and_takes_an_override() {
    let rig = AnalyzerRig::start("dashboard", POLICY, TOKEN, 1).await;
    let envoy = &rig.envoy;
    let dir = rig.options.state_dir.parent().unwrap().to_path_buf();
    let analyzer = AnalyzerProcess::start(rig.options.clone()).await;
    let _load = Load::start(envoy.listener, LoadOptions { rps: 150, users: 3_000, ..LoadOptions::default() });

    // A rollout in progress with a few checks of history and a report, and what the
    // charts below draw: latency points for both cohorts (Envoy flushes histograms
    // every 5 s, so they come later than the request counts).
    let http = reqwest::Client::new();
    eventually(
        Duration::from_secs(60),
        "checks with canary traffic, latency for both cohorts and a report",
        || async {
            let s = status(&http, &analyzer).await;
            let canary_seen = s.history.iter().filter(|p| p.canary_requests > 0).count();
            let latency_seen = |quantile: fn(&canary_analyzer::engine::HistoryPoint) -> [Option<f64>; 2]| {
                s.history.iter().filter(|p| quantile(p).iter().all(Option::is_some)).count()
            };
            let p50 = latency_seen(|p| [p.canary_p50_us, p.control_p50_us]);
            let p99 = latency_seen(|p| [p.canary_p99_us, p.control_p99_us]);
            (canary_seen >= 3 && p50 >= 1 && p99 >= 1 && !s.rows.is_empty()).then_some(())
        },
    )
    .await;

    let driver = ChromeDriver::start(&dir).await;
    let browser = driver.session(&dir).await;
    browser.set_window_size(1280, 1900).await.unwrap();
    browser.goto(&format!("{}/rollouts/demo", analyzer.url())).await.unwrap();

    // The ladder: three steps, the first current with its time left.
    assert_eq!(count(&browser, "ol.ladder li.step").await, 3);
    let current = text(&browser, "ol.ladder li.current").await.unwrap();
    assert!(current.contains("5 %") && current.contains("next step in"), "{current:?}");
    assert_eq!(count(&browser, "ol.ladder li.current[data-share-bp='500']").await, 1);

    // Both cohorts' series in the charts, drawn from the history.
    for chart in ["chart-error-rate", "chart-p50", "chart-p99"] {
        for cohort in ["canary", "control"] {
            let css = format!("svg#{chart} polyline[data-cohort='{cohort}']");
            assert!(count(&browser, &css).await >= 1, "no {cohort} line in {chart}");
        }
    }
    assert!(count(&browser, "svg#chart-share polyline[data-cohort='canary']").await >= 1);
    let points = |browser: &Client| {
        let browser = browser.clone();
        async move {
            let group = browser.find(Locator::Css("svg#chart-share g[data-series='canary']")).await.ok()?;
            group.attr("data-points").await.ok()??.parse::<u32>().ok()
        }
    };
    let before = points(&browser).await.unwrap();
    assert!(before >= 3, "{before}");

    // The comparison table, worst first, with the error rate among its rows.
    let rows = count(&browser, "table#comparison tbody tr").await;
    assert!(rows >= 3, "{rows} rows");
    assert_eq!(count(&browser, "table#comparison tr[data-metric='error_rate']").await, 1);
    let header = text(&browser, "table#comparison thead").await.unwrap();
    for column in ["interval", "p", "tolerance", "critical", "verdict"] {
        assert!(header.contains(column), "{header:?}");
    }
    // Each row shows its tolerance and whether it is critical (the default error rate is).
    let error_rate = "table#comparison tr[data-metric='error_rate']";
    assert_eq!(text(&browser, &format!("{error_rate} td.critical")).await.as_deref(), Some("critical"));
    let tolerance = text(&browser, &format!("{error_rate} td.tolerance")).await.unwrap_or_default();
    assert!(tolerance.starts_with("increase up to ") || tolerance.starts_with("none"), "{tolerance:?}");

    // The page updates itself: more points appear without a reload.
    eventually(Duration::from_secs(10), "the charts grow without a reload", || async {
        points(&browser).await.filter(|&now| now > before)
    })
    .await;

    // A wrong token: refused, the error shown, nothing logged.
    browser.find(Locator::Css("#override-action")).await.unwrap().select_by_value("hold").await.unwrap();
    fill(&browser, "#override-reason", REASON).await;
    fill(&browser, "#override-actor", "dashboard-e2e").await;
    fill(&browser, "#override-token", "wrong").await;
    browser.find(Locator::Css("#override-submit")).await.unwrap().click().await.unwrap();
    let refused = eventually(Duration::from_secs(5), "the refusal shown", || async {
        text(&browser, "#override-result.error").await.filter(|t| !t.is_empty())
    })
    .await;
    assert!(refused.contains("401") && refused.contains("token"), "{refused:?}");

    // No reason: the browser does not send it (the field is required).
    fill(&browser, "#override-reason", "").await;
    fill(&browser, "#override-token", TOKEN).await;
    browser.find(Locator::Css("#override-submit")).await.unwrap().click().await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(text(&browser, "#override-result").await.unwrap().contains("401"), "the last answer stays");

    // Token and reason: applied, and the decision log on the page shows it.
    fill(&browser, "#override-reason", REASON).await;
    browser.find(Locator::Css("#override-submit")).await.unwrap().click().await.unwrap();
    let applied = eventually(Duration::from_secs(5), "the override applied", || async {
        text(&browser, "#override-result.ok").await.filter(|t| !t.is_empty())
    })
    .await;
    assert!(applied.contains("paused") && applied.contains("as token (admin)"), "{applied:?}");
    let logged = eventually(Duration::from_secs(6), "the override in the decision log", || async {
        let first = text(&browser, "#decision-log tbody tr:first-child").await?;
        first.contains(REASON).then_some(first)
    })
    .await;
    assert!(logged.contains("dashboard-e2e") && logged.contains("pause"), "{logged:?}");
    let phase = text(&browser, ".summary .phase").await.unwrap();
    assert_eq!(phase, "paused");

    let audit: Vec<AuditRecord> =
        http.get(format!("{}/v1/rollouts/demo/audit", analyzer.url())).send().await.unwrap().json().await.unwrap();
    // The token's identity (`--token`: `token`) acted; the form's note is kept beside it.
    let humans: Vec<&AuditRecord> =
        audit.iter().filter(|r| r.decision.actor_note.as_deref() == Some("dashboard-e2e")).collect();
    assert!(humans.iter().all(|r| r.decision.actor.name() == "token"), "{humans:#?}");
    assert_eq!(humans.len(), 1, "one override logged, the refused ones not: {audit:#?}");
    assert_eq!(humans[0].decision.reason, REASON, "the reason as typed");
    assert_eq!(status(&http, &analyzer).await.state.phase, RolloutPhase::Paused);

    // Let one refresh swap the live part in again, then keep a picture of the page.
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    let png = browser.screenshot().await.unwrap();
    let artifacts = repo_root().join("tests/artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    std::fs::write(artifacts.join("dashboard.png"), &png).unwrap();
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "a real screenshot");

    // The list page links to the rollout.
    browser.goto(&format!("{}/", analyzer.url())).await.unwrap();
    assert_eq!(count(&browser, "section.rollout a[href='/rollouts/demo']").await, 1);

    browser.close().await.unwrap();
    let group = driver.process_group();
    drop(driver);
    eventually(Duration::from_secs(5), "no chromedriver or Chromium process left", || async {
        processes_in_group(group).is_empty().then_some(())
    })
    .await;
}
