//! The admin source's text answer with bucket layouts other than the shipped one: a
//! coarse configured layout and Envoy's default buckets are compared as exported, and
//! cohorts whose layouts differ are named, not reported as "no data".

use super::*;

/// The 36 bounds (µs) `histogram_bucket_settings` once had: 12 500 µs, 17 500 µs and
/// others are no edge of the shipped layout, so they cannot be folded onto it.
const COARSE_BUCKETS: [&str; 36] = [
    "250", "500", "1000", "2000", "3000", "4000", "5000", "6000", "7000", "8000", "9000", "10000", "12500", "15000",
    "17500", "20000", "25000", "30000", "35000", "40000", "45000", "50000", "55000", "60000", "70000", "80000",
    "100000", "150000", "250000", "500000", "1000000", "2500000", "5000000", "10000000", "30000000", "60000000",
];

/// Envoy's default buckets (no `histogram_bucket_settings`), as `/stats/prometheus`
/// writes them for the filter's histogram of microseconds.
const ENVOY_DEFAULT_BUCKETS: [&str; 19] = [
    "0.5", "1", "5", "10", "25", "50", "100", "250", "500", "1000", "2500", "5000", "10000", "30000", "60000",
    "300000", "600000", "1800000", "3600000",
];

/// One cohort's cumulative requests: `n` in total, `tail_percent` % at `tail_us`, the rest at 3 ms.
struct CohortTraffic<'a> {
    cohort: &'a str,
    n: u64,
    tail: Tail<'a>,
}

/// A cohort's layout and slow tail: `(buckets, tail_us, tail_percent)`.
type Tail<'a> = (&'a [&'a str], f64, u64);

impl CohortTraffic<'_> {
    fn exposition(&self) -> String {
        let (buckets, tail_us, tail_percent) = self.tail;
        let (cohort, tail) = (self.cohort, self.n * tail_percent / 100);
        let mut text =
            format!("canary_requests_total{{deployment=\"checkout\",cohort=\"{cohort}\",class=\"2xx\"}} {}\n", self.n);
        for le in buckets {
            let bound: f64 = le.parse().unwrap();
            let below = u64::from(3_000.0 <= bound) * (self.n - tail) + u64::from(tail_us <= bound) * tail;
            text.push_str(&format!(
                "canary_latency_us_bucket{{deployment=\"checkout\",cohort=\"{cohort}\",le=\"{le}\"}} {below}\n"
            ));
        }
        text.push_str(&format!(
            "canary_latency_us_bucket{{deployment=\"checkout\",cohort=\"{cohort}\",le=\"+Inf\"}} {}\n\
             canary_latency_us_count{{deployment=\"checkout\",cohort=\"{cohort}\"}} {}\n",
            self.n, self.n
        ));
        text
    }
}

/// Serves `second` seconds of 10 000 requests a second at a 1 % share.
fn serve(envoy: &StubEnvoy, second: u64, canary: Tail, control: Tail) {
    let mut body = String::from("# TYPE canary_requests_total counter\n# TYPE canary_latency_us histogram\n");
    let cohorts = [("canary", 100 * second, canary), ("control", 9_900 * second, control)];
    for (cohort, n, tail) in cohorts {
        body.push_str(&CohortTraffic { cohort, n, tail }.exposition());
    }
    *envoy.answer.lock().unwrap() = (200, body);
}

fn latency_policy() -> RolloutPolicy {
    policy("checkout", "    - {name: latency_p99, max_increase_ms: 5, critical: true}\n")
}

fn p99(status: &RolloutStatus) -> ComparisonRow {
    status.rows.iter().find(|r| r.metric == "latency_p99_us").cloned().expect("a p99 row")
}

/// Runs checks a second apart until the share leaves 1 % or `seconds` have passed.
async fn run(engine: &Engine, wall: &AtomicU64, seconds: u64, mut serve_second: impl FnMut(u64)) -> RolloutStatus {
    for second in 1..=seconds {
        serve_second(second);
        wall.store(T0 + second * 1_000, Ordering::SeqCst);
        engine.check_now("checkout").await.unwrap();
        if engine.config("checkout").unwrap().share_bp != 100 {
            break;
        }
    }
    engine.status("checkout", wall.load(Ordering::SeqCst)).await.unwrap()
}

#[tokio::test]
async fn a_coarse_text_layout_gives_latency_verdicts_and_an_a_a_rollout_is_promoted() {
    let (dir, envoy) = (TempDir::new(), StubEnvoy::start().await);
    let (clock, wall) = stepped_clock(T0);
    let engine = engine(&dir, vec![envoy.url()], clock);
    engine.register(latency_policy(), Actor::human("ci").unwrap(), T0).await.unwrap();
    let same = (&COARSE_BUCKETS[..], 20_000.0, 2);
    let status = run(&engine, &wall, 30, |second| serve(&envoy, second, same, same)).await;
    let row = p99(&status);
    assert_ne!(row.verdict, Verdict::NotEnoughData, "{row:?}");
    assert!(row.p_value.is_some(), "{row:?}");
    assert_eq!(status.config.share_bp, 500, "promoted to 5 %: {:?} {:?}", status.state, status.failed_targets);
}

#[tokio::test]
async fn a_p99_regression_on_envoys_default_buckets_is_rolled_back() {
    let (dir, envoy) = (TempDir::new(), StubEnvoy::start().await);
    let (clock, wall) = stepped_clock(T0);
    let engine = engine(&dir, vec![envoy.url()], clock);
    engine.register(latency_policy(), Actor::human("ci").unwrap(), T0).await.unwrap();
    // Control's slowest 2 % at 20 ms, in (10, 30] ms; the canary's slowest 4 % at 200 ms, in (60, 300] ms.
    let (canary, control) = ((&ENVOY_DEFAULT_BUCKETS[..], 200_000.0, 4), (&ENVOY_DEFAULT_BUCKETS[..], 20_000.0, 2));
    let status = run(&engine, &wall, 30, |second| serve(&envoy, second, canary, control)).await;
    assert_eq!(status.state.phase, canary_core::RolloutPhase::RolledBack, "{:?}", status.failed_targets);
    let row = p99(&status);
    assert_eq!(row.verdict, Verdict::Worse, "{row:?}");
    let rollback = engine.audit("checkout").unwrap().pop().unwrap();
    assert!(rollback.decision.reason.contains("latency_p99_us"), "{}", rollback.decision.reason);
}

#[tokio::test]
async fn cohorts_on_different_layouts_are_named_not_reported_as_no_data() {
    let (dir, envoy) = (TempDir::new(), StubEnvoy::start().await);
    let (clock, wall) = stepped_clock(T0);
    let engine = engine(&dir, vec![envoy.url()], clock);
    engine.register(latency_policy(), Actor::human("ci").unwrap(), T0).await.unwrap();
    let (canary, control) = ((&ENVOY_DEFAULT_BUCKETS[..], 20_000.0, 2), (&COARSE_BUCKETS[..], 20_000.0, 2));
    let status = run(&engine, &wall, 30, |second| serve(&envoy, second, canary, control)).await;
    assert_eq!(status.config.share_bp, 100, "held: latency cannot be compared");
    let named = "canary's and control's latency histograms use different bucket bounds: \
                 19 bounds 0…3600000 µs and 36 bounds 250…60000000 µs";
    assert!(status.failed_targets.iter().any(|f| f.contains(named)), "{:?}", status.failed_targets);
    assert_eq!(p99(&status).verdict, Verdict::NotEnoughData);
    // The counts still count: the error rate has its data.
    let errors = status.rows.iter().find(|r| r.metric == "error_rate").unwrap();
    assert_ne!(errors.verdict, Verdict::NotEnoughData, "{errors:?}");
    let held = engine.audit("checkout").unwrap();
    assert_eq!(held.len(), 1, "no decision but the start");
    let reason = engine.status("checkout", T0 + 30_000).await.unwrap();
    let stalled_or_reason = format!("{:?} {:?}", reason.stalled, reason.failed_targets);
    assert!(!stalled_or_reason.contains("found no data"), "{stalled_or_reason}");
}
