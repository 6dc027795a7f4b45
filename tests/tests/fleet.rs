//! A fleet under faults, end to end (issue 11, item 1): three real Envoys at
//! `--concurrency 2` running the shipped filter, users spread over them, a real
//! Prometheus scraping all three, and the analyzer binary on the Prometheus source
//! walking one whole rollout. During its first step one Envoy restarts (its counters
//! reset), one loses the analyzer for 3 poll intervals (it keeps its share) and then
//! past `stale_after_ms` (it drops to control), and one scrape target is down for two
//! checks. Afterwards: no rollback, the audit log is intact, every Envoy is on the final
//! generation, and every request the clients saw answered is in Envoy's counters and in
//! Prometheus, and in the analyzer's evidence: the windows tile each counter's history,
//! so the requests served while a scrape target was down are counted in the window after
//! it; only what the restarted process counted after its last scrape is lost (measured
//! and bounded below). The same scenario without faults reaches
//! the same decision. `FLEET_DEBUG=1` prints each check's evidence against the clients'
//! count in its window.

use canary_analyzer::audit::AuditRecord;
use canary_analyzer::engine::RolloutStatus;
use canary_analyzer::fleet::FleetView;
use canary_analyzer::ladder::Action;
use canary_analyzer::source::PrometheusSource;
use canary_core::RolloutPhase;
use canary_e2e::analyzer::{AnalyzerOptions, AnalyzerProcess, fresh_dir};
use canary_e2e::envoy::{Envoy, EnvoyConfig};
use canary_e2e::free_port;
use canary_e2e::load::{Load, LoadOptions, LoadStats};
use canary_e2e::prometheus::Prometheus;
use canary_e2e::soak::prometheus_sum;
use canary_e2e::tcp_gate::TcpGate;
use canary_e2e::upstream::Upstream;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

/// Envoys in the fleet.
const ENVOYS: usize = 3;
/// The filter polls every 500 ms (as the other e2e tests do): 6 polls per stale limit.
const POLL_MS: u64 = 500;
/// An Envoy that has heard nothing for 3 s goes to control (`when_stale: control`).
const STALE_AFTER_MS: u64 = 3_000;
/// Prometheus scrapes every Envoy 4 times per 1 s check, so the samples bounding each
/// window lie within 250 ms of its edges.
const SCRAPE_INTERVAL: Duration = Duration::from_millis(250);
/// Requests per second per Envoy: 120 in all, enough for 20 per cohort per check at 10 %
/// within a few checks, light enough for a busy two-core machine.
const RPS_PER_ENVOY: u32 = 40;
/// First step: every fault happens inside it. They take 11-13 s from its start here
/// (load ~10 on 2 cores); 25 s leaves room for a machine twice as slow.
const FIRST_STEP: (f64, &str) = (10.0, "25s");
/// The ladder: 10 % for 25 s, 50 % for 5 s, then 100 % (promoted).
const LADDER: [(f64, &str); 3] = [FIRST_STEP, (50.0, "5s"), (100.0, "1s")];
/// Generous bound for any single event (a whole rollout takes ~40 s); only a guard against hanging.
const PATIENCE: Duration = Duration::from_secs(120);

/// The policy: error rate and p99 critical, and the sample ratio critical too, so a
/// split judged against the wrong shares (an Envoy at 0 % while the analyzer serves
/// 10 %) would roll the healthy canary back: a false verdict this test would see.
fn policy(dir: &Path) -> PathBuf {
    let steps: String =
        LADDER.iter().map(|(share, window)| format!("    - {{share: {share}, window: {window}}}\n")).collect();
    let text = format!(
        "apiVersion: canary.wasm.dev/v1alpha1\nkind: RolloutPolicy\nmetadata: {{name: fleet}}\nspec:\n  \
         deployment: demo\n  ladder:\n{steps}  check_interval: 1s\n  min_requests_per_cohort: 20\n  metrics:\n    \
         - {{name: error_rate, max_relative_increase: 0, critical: true}}\n    \
         - {{name: latency_p99, max_increase_ms: 50, critical: true}}\n    \
         - {{name: sample_ratio, critical: true}}\n"
    );
    let path = dir.join("policy.yaml");
    std::fs::write(&path, text).expect("write policy");
    path
}

/// The applied-rollout gauges of one Envoy: `(generation, share_bp, config_age_ms)`.
type Gauges = (u64, u64, u64);

async fn gauges(envoy: &Envoy) -> Gauges {
    let url = format!("http://{}/stats/prometheus", envoy.admin);
    let filter = "(applied_generation|applied_share_bp|config_age_ms)$";
    let text = reqwest::Client::new()
        .get(url)
        .query(&[("filter", filter)])
        .send()
        .await
        .expect("admin reachable")
        .text()
        .await
        .expect("stats text");
    (
        prometheus_sum(&text, "canary_applied_generation") as u64,
        prometheus_sum(&text, "canary_applied_share_bp") as u64,
        prometheus_sum(&text, "canary_config_age_ms") as u64,
    )
}

/// Every request the filter of this Envoy process counted, all cohorts and classes.
async fn counted(envoy: &Envoy) -> u64 {
    prometheus_sum(&envoy.prometheus().await, "canary_requests_total") as u64
}

/// One Envoy of the fleet with its gates and its load (one per process: a restart
/// finishes the old load and starts a new one on the same users).
struct Member {
    config: EnvoyConfig,
    envoy: Envoy,
    /// In front of the analyzer, for this Envoy only.
    to_analyzer: TcpGate,
    /// In front of this Envoy's admin, for Prometheus only: its `instance` label.
    scrape: TcpGate,
    load: Option<Load>,
    /// Loads of earlier processes of this Envoy, finished.
    finished: Vec<LoadStats>,
    /// What earlier processes counted when they were stopped.
    earlier_counts: Vec<u64>,
    user_prefix: u32,
}

impl Member {
    fn start_load(&mut self) {
        let options =
            LoadOptions { rps: RPS_PER_ENVOY, users: 1_000, user_prefix: self.user_prefix, ..LoadOptions::default() };
        self.load = Some(Load::start(self.envoy.listener, options));
    }

    async fn finish_load(&mut self) {
        if let Some(load) = self.load.take() {
            let stats = load.finish(Duration::from_secs(10)).await;
            assert_eq!(stats.sent, stats.completed, "requests still in flight: {stats:?}");
            self.finished.push(stats);
        }
    }

    /// Requests the clients of this Envoy got an answer to (any status), over all its processes.
    fn answered(&self) -> u64 {
        self.finished.iter().map(|s| s.completed - s.transport_errors).sum()
    }

    /// Like [`Member::answered`], the running load included.
    fn answered_so_far(&self) -> u64 {
        let running = self.load.as_ref().map(Load::stats).map_or(0, |s| s.completed - s.transport_errors);
        self.answered() + running
    }

    fn instance(&self) -> String {
        self.scrape.addr.to_string()
    }
}

/// The requests of one scrape target across every gap between two of its samples longer
/// than two scrape intervals (it was down, or restarting). A gap across a restart counts
/// the new process's first sample from 0 plus `lost_in_restart` (what the old one counted
/// after its last scrape).
async fn in_scrape_gaps(prometheus: &Prometheus, instance: &str, lost_in_restart: u64) -> (u64, Vec<u64>) {
    let range = format!("canary_requests_total{{instance=\"{instance}\",cohort=~\"canary|control\"}}[10m]");
    // Every series of one target shares its scrape times: the total per scrape.
    let mut per_scrape = std::collections::BTreeMap::<u64, f64>::new();
    for (_, samples) in prometheus.samples(&range).await {
        for (at, value) in samples {
            *per_scrape.entry(at).or_default() += value;
        }
    }
    let scrapes: Vec<(u64, f64)> = per_scrape.into_iter().collect();
    let (mut across, mut gaps_ms) = (0, Vec::new());
    for pair in scrapes.windows(2) {
        let ((before_at, before), (after_at, after)) = (pair[0], pair[1]);
        if after_at - before_at > 2 * SCRAPE_INTERVAL.as_millis() as u64 {
            gaps_ms.push(after_at - before_at);
            across += if after >= before { (after - before) as u64 } else { after as u64 + lost_in_restart };
        }
    }
    (across, gaps_ms)
}

struct Fleet {
    _upstreams: (Upstream, Upstream),
    members: Vec<Member>,
    prometheus: Prometheus,
    analyzer: AnalyzerProcess,
    http: reqwest::Client,
    /// `(ms since the epoch, requests answered so far over the fleet)`, sampled whenever
    /// the test polls: what the evidence of a span is compared with.
    answered_at: std::sync::Mutex<Vec<(u64, u64)>>,
}

impl Fleet {
    async fn start(name: &str) -> Fleet {
        let dir = fresh_dir(name);
        let (stable, canary) = (Upstream::start("stable").await, Upstream::start("canary").await);
        let analyzer_port = free_port();
        let analyzer_addr = SocketAddr::from(([127, 0, 0, 1], analyzer_port));
        let mut members = Vec::new();
        for index in 0..ENVOYS {
            let to_analyzer = TcpGate::start(analyzer_addr).await;
            let mut config = EnvoyConfig::shipped(stable.addr, canary.addr, to_analyzer.addr);
            config.edit_plugin_config(|json| {
                json["analyzer"]["poll_interval_ms"] = POLL_MS.into();
                json["analyzer"]["timeout_ms"] = 250.into();
                json["analyzer"]["stale_after_ms"] = STALE_AFTER_MS.into();
                json["analyzer"]["when_stale"] = "control".into();
            });
            let envoy = Envoy::start(&config, 2).await;
            let scrape = TcpGate::start(envoy.admin).await;
            let user_prefix = 0xf1ee_0000 + u32::try_from(index).expect("few envoys");
            members.push(Member {
                config,
                envoy,
                to_analyzer,
                scrape,
                load: None,
                finished: Vec::new(),
                earlier_counts: Vec::new(),
                user_prefix,
            });
        }
        let targets: Vec<SocketAddr> = members.iter().map(|m| m.scrape.addr).collect();
        let prometheus = Prometheus::start(&targets, SCRAPE_INTERVAL).await;
        for member in &mut members {
            member.start_load();
        }
        // Prometheus' discovery hands it its targets ~5 s after start; a window counts an
        // Envoy only from its first scrape before the window's start, so the analyzer starts
        // once Prometheus holds two scrapes of every Envoy.
        let start = Instant::now();
        loop {
            let samples = prometheus.by_instance("count_over_time(up[1m])").await;
            let ready = members.iter().all(|m| samples.get(&m.instance()).is_some_and(|n| *n >= 2.0));
            if ready {
                break;
            }
            assert!(start.elapsed() < PATIENCE, "prometheus never scraped every envoy twice: {samples:?}");
            tokio::time::sleep(SCRAPE_INTERVAL).await;
        }
        let mut options = AnalyzerOptions::new(dir.join("state"));
        options.policies = vec![policy(&dir)];
        options.extra_args = vec!["--prometheus".into(), prometheus.url.clone()];
        options.port = Some(analyzer_port);
        let analyzer = AnalyzerProcess::start(options).await;
        Fleet {
            _upstreams: (stable, canary),
            members,
            prometheus,
            analyzer,
            http: reqwest::Client::new(),
            answered_at: std::sync::Mutex::new(Vec::new()),
        }
    }

    fn record_answered(&self) {
        let total = self.members.iter().map(Member::answered_so_far).sum();
        self.answered_at.lock().expect("timeline").push((canary_analyzer::engine::now_ms(), total));
    }

    /// Requests answered between two times, from the samples nearest to them (and how far
    /// the samples were from the times asked for, in ms).
    fn answered_between(&self, from_ms: u64, to_ms: u64) -> (u64, u64) {
        let timeline = self.answered_at.lock().expect("timeline");
        let nearest = |at: u64| *timeline.iter().min_by_key(|(t, _)| t.abs_diff(at)).expect("samples");
        let (from, to) = (nearest(from_ms), nearest(to_ms));
        (to.1 - from.1, from.0.abs_diff(from_ms).max(to.0.abs_diff(to_ms)))
    }

    async fn status(&self) -> RolloutStatus {
        self.record_answered();
        let url = format!("{}/v1/rollouts/demo", self.analyzer.url());
        let body = self.http.get(url).send().await.expect("analyzer").text().await.expect("status body");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("status {body}: {e}"))
    }

    async fn audit(&self) -> Vec<AuditRecord> {
        let url = format!("{}/v1/rollouts/demo/audit", self.analyzer.url());
        self.http.get(url).send().await.expect("analyzer").json().await.expect("audit json")
    }

    fn fail(&self, what: &str) -> ! {
        panic!("{what}\nanalyzer log:\n{}", self.analyzer.log_text())
    }

    /// What Prometheus holds of every target, for a failure message: whether each is up,
    /// its latest scrape's duration, and the latency observations per cohort of the last
    /// 10 s (one run once got no latency data for 120 s; this is what would say why).
    async fn prometheus_view(&self) -> String {
        let mut view = String::new();
        for promql in [
            "up",
            "scrape_duration_seconds",
            "count by (instance) (canary_latency_us_bucket)",
            "sum by (instance, cohort) (increase(canary_latency_us_count[10s]))",
            "sum by (instance, cohort) (increase(canary_requests_total[10s]))",
        ] {
            view.push_str(&format!("{promql}:\n"));
            for sample in self.prometheus.query(promql).await {
                view.push_str(&format!("  {} = {}\n", sample["metric"], sample["value"][1]));
            }
        }
        view
    }

    /// Polls the status every 100 ms until `done`; a rollback on the way fails the test.
    async fn until(&self, what: &str, done: impl Fn(&RolloutStatus) -> bool) -> RolloutStatus {
        let start = Instant::now();
        loop {
            let status = self.status().await;
            if status.state.phase == RolloutPhase::RolledBack {
                self.fail(&format!("false verdict: rolled back while waiting for {what}: {status:#?}"));
            }
            if done(&status) {
                return status;
            }
            if start.elapsed() > PATIENCE {
                let prometheus = self.prometheus_view().await;
                self.fail(&format!(
                    "{what}: not within {PATIENCE:?}; last status {status:#?}\nprometheus:\n{prometheus}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the analyzer has finished `n` more checks.
    async fn checks(&self, n: usize) -> RolloutStatus {
        let from = self.status().await.last_check_ms;
        let mut seen = from;
        let mut count = 0;
        loop {
            let status = self.until("the next check", |s| s.last_check_ms != seen).await;
            seen = status.last_check_ms;
            count += 1;
            if count == n {
                return status;
            }
        }
    }

    /// Waits until Envoy `index`'s gauges satisfy `wanted`, sampling every 50 ms; every
    /// sample on the way must satisfy `meanwhile`. The last sample.
    async fn gauges_until(
        &self,
        index: usize,
        what: &str,
        wanted: impl Fn(Gauges) -> bool,
        meanwhile: impl Fn(Gauges) -> bool,
    ) -> Gauges {
        let start = Instant::now();
        loop {
            let seen = gauges(&self.members[index].envoy).await;
            if wanted(seen) {
                return seen;
            }
            assert!(meanwhile(seen), "envoy {index}, waiting for {what}: gauges {seen:?}");
            if start.elapsed() > PATIENCE {
                self.fail(&format!("envoy {index}: {what} not within {PATIENCE:?}; gauges {seen:?}"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until every Envoy applies the served generation and share (its gauges) and
    /// the analyzer's fleet view says so.
    async fn all_on_served(&self) -> RolloutStatus {
        let status = self.status().await;
        let (generation, share) = (status.state.generation, u64::from(status.state.share_bp));
        for index in 0..ENVOYS {
            self.gauges_until(index, "the served rollout", |g| (g.0, g.1) == (generation, share), |_| true).await;
        }
        self.until("the fleet view with every Envoy on the generation", |s| {
            s.fleet.as_ref().is_some_and(|f| f.generation == generation && f.on_generation == ENVOYS && f.all_applied())
        })
        .await
    }

    /// Every Envoy applies `generation` at 100 %: by its own gauges, and by the analyzer's
    /// fleet view computed (with the analyzer's own code) from the per-proxy gauges in
    /// Prometheus. Not from `RolloutStatus.fleet`: the analyzer stops checking once the
    /// rollout is promoted, so its last fleet view is the one of the check that promoted,
    /// taken while the proxies still applied the generation before (see the report).
    async fn final_generation_everywhere(&self, generation: u64) {
        for index in 0..ENVOYS {
            self.gauges_until(index, "the final generation", |g| (g.0, g.1) == (generation, 10_000), |_| true).await;
        }
        let source = PrometheusSource::new(self.prometheus.url.clone(), Duration::from_secs(5)).expect("source");
        let start = Instant::now();
        loop {
            let window = SCRAPE_INTERVAL * 4;
            let proxies = source.proxies("demo", window, SystemTime::now()).await.expect("per-proxy gauges");
            let view = FleetView::new(generation, &proxies);
            if view.on_generation == ENVOYS && view.all_applied() {
                assert!(proxies.iter().all(|p| p.share_bp == Some(10_000)), "{proxies:?}");
                eprintln!("final fleet view: {}", view.summary());
                return;
            }
            assert!(start.elapsed() < PATIENCE, "the fleet never reached generation {generation}: {proxies:?}");
            tokio::time::sleep(SCRAPE_INTERVAL).await;
        }
    }

    /// Restarts Envoy `index` on the same ports: its load is drained first so the clients'
    /// count and the filter's are exact, then SIGKILL, start, and a new load.
    async fn restart(&mut self, index: usize) {
        let member = &mut self.members[index];
        member.finish_load().await;
        member.earlier_counts.push(counted(&member.envoy).await);
        member.envoy.restart(&member.config, 2).await;
        member.start_load();
    }

    /// Waits until Prometheus holds a scrape of every Envoy showing what its filter counted.
    async fn prometheus_settled(&self) {
        let start = Instant::now();
        loop {
            let scraped = self.prometheus.by_instance("sum by (instance) (canary_requests_total)").await;
            let mut behind = Vec::new();
            for member in &self.members {
                let count = counted(&member.envoy).await;
                if scraped.get(&member.instance()).copied() != Some(count as f64) {
                    behind.push((member.instance(), count, scraped.get(&member.instance()).copied()));
                }
            }
            if behind.is_empty() {
                return;
            }
            assert!(start.elapsed() < PATIENCE, "prometheus never caught up: {behind:?}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// What one run of the scenario decided and measured.
#[derive(Debug)]
struct Outcome {
    /// The audit log's actions, in order.
    actions: Vec<String>,
    final_phase: RolloutPhase,
    /// Requests the clients got an answer to, over all Envoys and processes.
    answered: u64,
    /// Canary + control requests summed over the analyzer's per-check history.
    evidence: u64,
    /// Requests the clients got an answer to in the span the history covers.
    in_span: u64,
    /// Requests across scrape gaps (restart, target down): bridged, so in the evidence.
    in_gaps: u64,
    /// Allowed for rounding, extrapolation at the outer edges and the timeline's resolution.
    tolerance: u64,
    /// What the restart lost from Prometheus (old process's requests after its last scrape).
    lost_in_restart: u64,
    took: Duration,
}

/// The audit log is 1..n without gap or repeat, each record starts from the state the one
/// before ended in, the generation grows by one per decision, and the log ends promoted.
fn check_audit(audit: &[AuditRecord]) -> Vec<String> {
    let sequences: Vec<u64> = audit.iter().map(|r| r.sequence).collect();
    let expected: Vec<u64> = (1..=audit.len() as u64).collect();
    assert_eq!(sequences, expected, "audit sequences");
    assert!(audit[0].before.is_none() && matches!(audit[0].decision.action, Action::Start), "{:#?}", audit[0]);
    for pair in audit.windows(2) {
        assert_eq!(
            pair[1].before.as_ref(),
            Some(&pair[0].after),
            "record {} starts where {} ended",
            pair[1].sequence,
            pair[0].sequence
        );
        // A rollout starts at generation max(previous + 1, now_ms); each decision adds 1.
        assert_eq!(pair[1].after.generation, pair[0].after.generation + 1, "record {}", pair[1].sequence);
    }
    for record in audit {
        let after = &record.after;
        assert_eq!(after.deployment, "demo");
        match record.decision.action {
            Action::Start | Action::Promote { .. } => {
                let (share, _) = LADDER[after.step as usize];
                assert_eq!(after.share_bp, (share * 100.0).round() as u32, "record {}: {after:?}", record.sequence);
                if let Action::Promote { to_step, share_bp } = record.decision.action {
                    assert_eq!((to_step, share_bp), (after.step, after.share_bp), "record {}", record.sequence);
                }
            }
            ref other => panic!("record {}: unexpected action {other:?}", record.sequence),
        }
        let last_step = after.step as usize == LADDER.len() - 1;
        let phase = if last_step { RolloutPhase::Promoted } else { RolloutPhase::Progressing };
        assert_eq!(after.phase, phase, "record {}: {after:?}", record.sequence);
    }
    audit.iter().map(|r| format!("{:?}", r.decision.action)).collect()
}

async fn run(name: &str, faults: bool) -> Outcome {
    let started = Instant::now();
    let mut fleet = Fleet::start(name).await;
    fleet.until("the first check with data", |s| !s.history.is_empty()).await;
    let first = fleet.all_on_served().await;
    assert_eq!(first.state.share_bp, 1_000);
    let mut lost_in_restart = 0;

    if faults {
        // 1. Envoy 1 restarts mid-step: its counters start again from 0.
        let before = fleet.status().await.state;
        fleet.restart(1).await;
        let after_restart = fleet.all_on_served().await;
        eprintln!("restarted envoy 1 at step {} (generation {})", before.step, before.generation);
        assert_eq!(after_restart.state.generation, before.generation, "mid-step");

        // 2. Envoy 0 loses the analyzer for 3 poll intervals, under the stale limit: it keeps
        // its share all along (the age passing 1.5 s shows it really heard nothing).
        let kept = (before.generation, u64::from(before.share_bp));
        fleet.members[0].to_analyzer.close();
        let cut_off = fleet
            .gauges_until(0, "3 missed polls", |g| g.2 >= 3 * POLL_MS, |g| (g.0, g.1) == kept && g.2 < STALE_AFTER_MS)
            .await;
        fleet.members[0].to_analyzer.open();
        fleet.gauges_until(0, "polling again", |g| g.2 < POLL_MS * 2, |g| (g.0, g.1) == kept).await;
        eprintln!("envoy 0 cut off from the analyzer for {} ms, kept {kept:?}", cut_off.2);

        // 3. Then past the stale limit: under `when_stale: control` it routes nobody to the
        // canary (share gauge 0), and the analyzer checks twice while it does.
        fleet.members[0].to_analyzer.close();
        let stale = fleet.gauges_until(0, "stale, control", |g| g.1 == 0, |g| g.0 == kept.0).await;
        assert!(stale.2 > STALE_AFTER_MS, "{stale:?}");
        fleet.checks(2).await;
        fleet.members[0].to_analyzer.open();
        fleet.gauges_until(0, "back on the share", |g| (g.0, g.1) == kept, |g| g.0 == kept.0).await;

        // 4. Envoy 2's scrape target is down for two checks (Prometheus sees `up == 0`).
        fleet.members[2].scrape.close();
        let up = format!("up{{instance=\"{}\"}}", fleet.members[2].instance());
        let start = Instant::now();
        while fleet.prometheus.by_instance(&up).await.values().next() != Some(&0.0) {
            assert!(start.elapsed() < PATIENCE, "prometheus never saw envoy 2 down");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let during = fleet.checks(2).await;
        // The second check's window lies wholly in the outage: Prometheus has marked the
        // target's gauges stale, so the analyzer's fleet view holds the other two.
        let view = during.fleet.as_ref().expect("a fleet view");
        assert_eq!((view.proxies, view.on_generation), (ENVOYS - 1, ENVOYS - 1), "{view:?}");
        fleet.members[2].scrape.open();
        let into_step = canary_analyzer::engine::now_ms() - first.state.step_started_at_ms;
        assert_eq!(during.state.step, 0, "every fault inside the first step");
        eprintln!("faults done {into_step} ms into the first step ({} window)", FIRST_STEP.1);
    }

    let promoted = fleet.until("promoted", |s| s.state.phase == RolloutPhase::Promoted).await;
    assert_eq!(promoted.state.share_bp, 10_000);
    fleet.final_generation_everywhere(promoted.state.generation).await;

    for member in &mut fleet.members {
        member.finish_load().await;
    }
    fleet.prometheus_settled().await;
    // Exact: every request a client got an answer to was counted by its Envoy's filter,
    // and Prometheus' last scrape of every Envoy holds that count.
    for (index, member) in fleet.members.iter().enumerate() {
        let counted_now = counted(&member.envoy).await;
        let counted_all: u64 = member.earlier_counts.iter().sum::<u64>() + counted_now;
        assert_eq!(counted_all, member.answered(), "envoy {index}: {:?}", member.finished);
        let errors: u64 = member.finished.iter().map(|s| s.errors).sum();
        assert_eq!(errors, 0, "envoy {index}: {:?}", member.finished);
    }
    if faults {
        // What a restart loses from Prometheus: what the old process counted after its
        // last scrape. The raw samples of the restarted Envoy show the reset.
        let instance = fleet.members[1].instance();
        let range = format!("canary_requests_total{{instance=\"{instance}\"}}[5m]");
        let series = fleet.prometheus.samples(&range).await;
        // Per label set, the last sample before the counter went down.
        let mut last_before_reset = 0.0;
        for (_, samples) in &series {
            if let Some(pair) = samples.windows(2).find(|w| w[1].1 < w[0].1) {
                last_before_reset += pair[0].1;
            }
        }
        lost_in_restart = fleet.members[1].earlier_counts[0] - last_before_reset as u64;
        eprintln!(
            "restart: the old process counted {}, prometheus last saw {last_before_reset}: {lost_in_restart} lost",
            fleet.members[1].earlier_counts[0]
        );
    }

    let status = fleet.status().await;
    let evidence: u64 = status.history.iter().map(|p| p.canary_requests + p.control_requests).sum();
    let answered: u64 = fleet.members.iter().map(Member::answered).sum();
    if std::env::var_os("FLEET_DEBUG").is_some() {
        // Each check's window ends a check interval (1 s) before it.
        let mut previous = status.history.first().map_or(0, |p| p.at_ms) - 2_000;
        for point in &status.history {
            let end = point.at_ms - 1_000;
            let (truth, gap) = fleet.answered_between(previous, end);
            eprintln!(
                "check +{} ms: evidence {} truth {truth} (±{gap} ms)",
                end - previous,
                point.canary_requests + point.control_requests
            );
            previous = end;
        }
    }
    // The span the evidence covers: windows end one check interval (1 s) before their
    // check (so every scrape begun by then is in), and the first is one check interval long.
    let first_at = status.history.first().map_or(0, |p| p.at_ms);
    let last_at = status.history.last().map_or(0, |p| p.at_ms);
    let (in_span, sample_gap_ms) = fleet.answered_between(first_at - 2_000, last_at - 1_000);
    let mut in_gaps = 0;
    for (index, member) in fleet.members.iter().enumerate() {
        let lost = if index == 1 { lost_in_restart } else { 0 };
        let (across, gaps_ms) = in_scrape_gaps(&fleet.prometheus, &member.instance(), lost).await;
        eprintln!("{name}: envoy {index}: scrape gaps {gaps_ms:?} ms, {across} requests in them");
        in_gaps += across;
    }
    // Tolerances: counts are whole (no rounding); the evidence's outer edges are the last
    // samples at or before the first window's start and the last check, up to a scrape
    // interval before them, and the test's timeline is sampled up to `sample_gap_ms` from
    // the edges; both at the fleet's rate.
    let fleet_rps = u64::from(RPS_PER_ENVOY) * ENVOYS as u64;
    let tolerance = 2 * fleet_rps * SCRAPE_INTERVAL.as_millis() as u64 / 1_000 + 2 * fleet_rps * sample_gap_ms / 1_000;
    eprintln!(
        "{name}: evidence {evidence}, answered in its span {in_span} (timeline within {sample_gap_ms} ms), difference {}",
        evidence as i64 - in_span as i64
    );
    let actions = check_audit(&fleet.audit().await);
    eprintln!(
        "{name}: {} checks, evidence {evidence} requests of {answered} answered, lost in restart {lost_in_restart}; {:?}",
        status.history.len(),
        started.elapsed()
    );
    Outcome {
        actions,
        final_phase: status.state.phase,
        answered,
        evidence,
        in_span,
        in_gaps,
        tolerance,
        lost_in_restart,
        took: started.elapsed(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_under_restart_partition_and_scrape_faults_reaches_the_fault_free_decision() {
    let faulty = run("fleet-faults", true).await;
    let clean = run("fleet-clean", false).await;
    eprintln!("with faults: {faulty:?}\nwithout: {clean:?}");
    assert_eq!(faulty.final_phase, RolloutPhase::Promoted);
    for outcome in [&faulty, &clean] {
        // Nothing counted twice: the evidence's outer edges may sit up to a scrape interval
        // off the span's, at the fleet's rate.
        assert!(outcome.evidence <= outcome.in_span + outcome.tolerance, "counted twice: {outcome:?}");
        // Nothing lost but what a restart loses before Prometheus could see it: the
        // requests across the scrape gaps are in the evidence.
        assert!(outcome.evidence + outcome.lost_in_restart + outcome.tolerance >= outcome.in_span, "lost: {outcome:?}");
        assert!(outcome.answered >= outcome.in_span, "{outcome:?}");
        eprintln!(
            "{} of {} answered requests in {:?} ({} of them across scrape gaps)",
            outcome.evidence, outcome.in_span, outcome.took, outcome.in_gaps
        );
    }
    // A restart loses from Prometheus what the old process counted after its last scrape:
    // at most one scrape interval of its share of the load (40 rps x 250 ms = 10).
    let one_scrape = u64::from(RPS_PER_ENVOY) * SCRAPE_INTERVAL.as_millis() as u64 / 1_000;
    assert!(faulty.lost_in_restart <= one_scrape, "{faulty:?}");
    assert_eq!((faulty.final_phase, &faulty.actions), (clean.final_phase, &clean.actions), "the same decision");
}
