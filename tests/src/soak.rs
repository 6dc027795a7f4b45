//! `make soak`'s arithmetic and parsing, apart from the processes so each can be
//! unit-tested: the `SOAK_SECONDS` setting, wrk's totals as the soak's Lua script prints
//! them, share changes in a sampled gauge, the memory verdict on an RSS series and the
//! poll-count verdict. The binary (`tests/src/bin/soak.rs`) runs the processes and
//! applies these.

use std::collections::BTreeMap;

/// Load time of `make soak` when `SOAK_SECONDS` is not set: 10 minutes.
pub const DEFAULT_SECONDS: u64 = 600;
/// The shortest run that says anything: 30 s of warm-up and three 10 s RSS samples after it.
pub const MIN_SECONDS: u64 = 60;
/// The longest run allowed (a day): the soak is bounded, a typo must not run for weeks.
pub const MAX_SECONDS: u64 = 86_400;

/// `SOAK_SECONDS` (`None`: unset) as whole seconds of load, or what is wrong with it.
pub fn parse_seconds(value: Option<&str>) -> Result<u64, String> {
    let Some(text) = value else { return Ok(DEFAULT_SECONDS) };
    match text.trim().parse::<u64>() {
        Ok(seconds) if (MIN_SECONDS..=MAX_SECONDS).contains(&seconds) => Ok(seconds),
        _ => Err(format!("SOAK_SECONDS = {text:?}: expected whole seconds from {MIN_SECONDS} to {MAX_SECONDS}")),
    }
}

/// wrk's socket errors, by kind (its `summary.errors`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SocketErrors {
    pub connect: u64,
    pub read: u64,
    pub write: u64,
    /// Requests that got no answer within wrk's `--timeout`.
    pub timeout: u64,
}

/// What one or more wrk runs saw, from the `soak ...` lines the soak's Lua `done()` prints.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WrkTotals {
    /// Answered requests (any status).
    pub requests: u64,
    /// Wall time of the runs, µs.
    pub duration_us: u64,
    /// Answers by HTTP status.
    pub statuses: BTreeMap<u16, u64>,
    /// Answers by their `x-version` header (`none` when absent: an answer not from an upstream).
    pub versions: BTreeMap<String, u64>,
    pub errors: SocketErrors,
}

fn number(field: &str, value: Option<&str>, line: &str) -> Result<u64, String> {
    value
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("wrk output line {line:?}: field `{field}` = {value:?}: expected a whole number"))
}

impl WrkTotals {
    /// Reads the `soak ...` lines of one wrk run's output; other lines are wrk's own
    /// report and are skipped. Fails if the `soak requests` line is missing (the Lua
    /// `done()` did not run) or a `soak` line does not parse.
    pub fn parse(output: &str) -> Result<WrkTotals, String> {
        let mut totals = WrkTotals::default();
        let mut saw_requests = false;
        for line in output.lines().filter(|l| l.starts_with("soak ")) {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["soak", "requests", n] => {
                    totals.requests = number("requests", Some(n), line)?;
                    saw_requests = true;
                }
                ["soak", "duration_us", n] => totals.duration_us = number("duration_us", Some(n), line)?,
                ["soak", "status", code, n] => {
                    let code = u16::try_from(number("status", Some(code), line)?).map_err(|_| {
                        format!("wrk output line {line:?}: field `status` = {code}: expected an HTTP status")
                    })?;
                    *totals.statuses.entry(code).or_default() += number("count", Some(n), line)?;
                }
                ["soak", "version", version, n] => {
                    *totals.versions.entry((*version).to_string()).or_default() += number("count", Some(n), line)?;
                }
                ["soak", "errors", "connect", c, "read", r, "write", w, "timeout", t] => {
                    totals.errors = SocketErrors {
                        connect: number("connect", Some(c), line)?,
                        read: number("read", Some(r), line)?,
                        write: number("write", Some(w), line)?,
                        timeout: number("timeout", Some(t), line)?,
                    };
                }
                _ => return Err(format!("wrk output line {line:?}: not a line the soak's script prints")),
            }
        }
        if !saw_requests {
            return Err(format!("no `soak requests` line in wrk's output (did the Lua script run?):\n{output}"));
        }
        Ok(totals)
    }

    /// Adds another run's totals.
    pub fn add(&mut self, other: &WrkTotals) {
        self.requests += other.requests;
        self.duration_us += other.duration_us;
        for (code, n) in &other.statuses {
            *self.statuses.entry(*code).or_default() += n;
        }
        for (version, n) in &other.versions {
            *self.versions.entry(version.clone()).or_default() += n;
        }
        self.errors.connect += other.errors.connect;
        self.errors.read += other.errors.read;
        self.errors.write += other.errors.write;
        self.errors.timeout += other.errors.timeout;
    }

    /// Every answer that is not 2xx and every socket error, by kind (`HTTP 503`,
    /// `socket read error`, ...), with counts; empty when the run was clean.
    pub fn failures(&self) -> Vec<(String, u64)> {
        let mut failures: Vec<(String, u64)> = self
            .statuses
            .iter()
            .filter(|(code, n)| !(200..300).contains(*code) && **n > 0)
            .map(|(code, n)| (format!("HTTP {code}"), *n))
            .collect();
        let e = self.errors;
        for (kind, n) in [("connect", e.connect), ("read", e.read), ("write", e.write), ("timeout", e.timeout)] {
            if n > 0 {
                failures.push((format!("socket {kind} error"), n));
            }
        }
        failures
    }
}

/// How many consecutive samples a gauge value must hold to count as applied. Every VM of
/// an Envoy writes the one share gauge on its tick, and a VM that has not ticked since a
/// change may write the previous value for one tick (docs/metrics.md): a quarter of the
/// 5 s poll interval, 1.25 s. Two samples 1 s apart span more than one tick, so a value
/// seen twice in a row is the one every VM applies, not a straggler's.
pub const SETTLED_SAMPLES: usize = 2;

/// Changes in a sampled gauge, counting only values held for [`SETTLED_SAMPLES`] samples
/// in a row: `(settled changes, raw changes)`. A value that flickers back for one sample
/// is counted in the raw figure only.
pub fn share_changes(samples: &[u64]) -> (usize, usize) {
    let raw = samples.windows(2).filter(|w| w[0] != w[1]).count();
    let mut settled: Option<u64> = None;
    let mut changes = 0;
    let mut run_value = None;
    let mut run_length = 0;
    for &value in samples {
        if run_value == Some(value) {
            run_length += 1;
        } else {
            run_value = Some(value);
            run_length = 1;
        }
        if run_length == SETTLED_SAMPLES && settled != Some(value) {
            if settled.is_some() {
                changes += 1;
            }
            settled = Some(value);
        }
    }
    (changes, raw)
}

/// `VmRSS` of a `/proc/<pid>/status` text, in KiB.
pub fn vm_rss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// How much a process's RSS may grow from the start of the measured run (after warm-up)
/// to its end, as a fraction of the start: 20 %. On this machine Envoy settles at ~96 MiB
/// and the analyzer at ~11 MiB, both within ~2 minutes of load. 20 % of Envoy over a
/// 10-minute run of ~2.4 million requests (~4 000 req/s) is ~8 bytes per request, far
/// below any leaked request context (hundreds of bytes); 20 % of the analyzer is ~2 MiB
/// over 120 checks and 120 polls, ~17 KiB for each, more than a check allocates in all.
/// The same analyzer grew 8 % (10.6 -> 11.4 MiB) in its first two minutes after warm-up
/// and not at all after, so 20 % leaves room for that settling.
pub const RSS_GROWTH_LIMIT: f64 = 0.20;
/// Growth below this many KiB always passes, whatever the fraction: a small process's
/// allocator takes a new 1 MiB arena or mapping now and then (glibc gives each new
/// thread an arena), which is ~10 % of an 11 MiB analyzer and no leak.
pub const RSS_GROWTH_FLOOR_KIB: u64 = 2 * 1024;
/// Samples averaged (as a median) at each end of the series, so one sample taken during
/// a scrape or a config save does not decide the verdict.
pub const RSS_END_SAMPLES: usize = 3;

/// One process's RSS over the run and whether it stayed flat.
#[derive(Debug, Clone, PartialEq)]
pub struct RssVerdict {
    /// Median of the first [`RSS_END_SAMPLES`] samples after warm-up, KiB.
    pub start_kib: u64,
    /// Median of the last [`RSS_END_SAMPLES`] samples, KiB.
    pub end_kib: u64,
    pub max_kib: u64,
    /// `end / start - 1`.
    pub growth: f64,
    /// Least-squares slope over the later half of the samples, KiB per minute: near 0
    /// once the process has settled, steady and positive for a leak.
    pub slope_kib_per_minute: f64,
    /// Growth within [`RSS_GROWTH_LIMIT`] (or below [`RSS_GROWTH_FLOOR_KIB`]).
    pub flat: bool,
}

fn median(values: &[u64]) -> u64 {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    sorted.get(sorted.len() / 2).copied().unwrap_or(0)
}

/// The verdict on `(seconds since load start, KiB)` samples taken after warm-up;
/// `None` with fewer than two samples.
pub fn rss_verdict(samples: &[(f64, u64)]) -> Option<RssVerdict> {
    if samples.len() < 2 {
        return None;
    }
    let kib: Vec<u64> = samples.iter().map(|(_, k)| *k).collect();
    let ends = RSS_END_SAMPLES.min(kib.len());
    let start_kib = median(&kib[..ends]);
    let end_kib = median(&kib[kib.len() - ends..]);
    let max_kib = kib.iter().copied().max().unwrap_or(0);
    let growth = if start_kib == 0 { 0.0 } else { end_kib as f64 / start_kib as f64 - 1.0 };
    let later = &samples[samples.len() / 2..];
    let n = later.len() as f64;
    let mean_t = later.iter().map(|(t, _)| t).sum::<f64>() / n;
    let mean_k = later.iter().map(|(_, k)| *k as f64).sum::<f64>() / n;
    let covariance: f64 = later.iter().map(|(t, k)| (t - mean_t) * (*k as f64 - mean_k)).sum();
    let variance: f64 = later.iter().map(|(t, _)| (t - mean_t).powi(2)).sum();
    let slope_kib_per_minute = if variance > 0.0 { covariance / variance * 60.0 } else { 0.0 };
    let flat = growth <= RSS_GROWTH_LIMIT || end_kib.saturating_sub(start_kib) < RSS_GROWTH_FLOOR_KIB;
    Some(RssVerdict { start_kib, end_kib, max_kib, growth, slope_kib_per_minute, flat })
}

/// Polls above this multiple of the expected count fail the soak: "about one per
/// interval", with room for the poller's lease passing to another VM, whose first poll
/// need not wait a whole interval. One poller per VM would be 3x (2 workers + main).
pub const POLL_LIMIT_FACTOR: f64 = 1.5;
/// Polls below this fraction of the expected count fail too: the filter stopped
/// polling (or its polls stopped reaching the analyzer) and shares go stale.
pub const POLL_FLOOR_FACTOR: f64 = 0.5;

/// The filter's polls of the analyzer over a run against the one-per-interval design.
#[derive(Debug, Clone, PartialEq)]
pub struct PollVerdict {
    pub polls: u64,
    /// One poller per Envoy: `seconds / interval`.
    pub expected: f64,
    /// What one poller per VM would send (`seconds × (workers + 1) / interval`: each
    /// worker's VM and the main thread's), for comparison.
    pub per_vm: f64,
    pub within_bounds: bool,
}

pub fn poll_verdict(polls: u64, seconds: f64, interval_seconds: f64, workers: u32) -> PollVerdict {
    let expected = seconds / interval_seconds;
    let per_vm = expected * f64::from(workers + 1);
    let within_bounds =
        (polls as f64) <= expected * POLL_LIMIT_FACTOR && (polls as f64) >= expected * POLL_FLOOR_FACTOR;
    PollVerdict { polls, expected, per_vm, within_bounds }
}

/// The sum of one metric's samples (all label sets) in Prometheus exposition text.
pub fn prometheus_sum(text: &str, metric: &str) -> f64 {
    text.lines()
        .filter(|line| line.starts_with(metric) && line[metric.len()..].starts_with(['{', ' ']))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// One counter or gauge of Envoy's admin `/stats` text (`name: value` lines).
pub fn envoy_stat(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(": ")?.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn soak_seconds_default_bounds_and_errors_name_the_setting() {
        assert_eq!(parse_seconds(None), Ok(600));
        assert_eq!(parse_seconds(Some("60")), Ok(60));
        assert_eq!(parse_seconds(Some(" 900 ")), Ok(900));
        for bad in ["59", "0", "-5", "ten", "", "86401", "1.5"] {
            let error = parse_seconds(Some(bad)).expect_err(bad);
            assert!(error.contains("SOAK_SECONDS") && error.contains(&format!("{bad:?}")), "{error}");
            assert!(error.contains("from 60 to 86400"), "{error}");
        }
    }

    const OUTPUT: &str = "Running 30s test @ http://127.0.0.1:1/\n  2 threads and 32 connections\n\
        soak requests 1000\nsoak duration_us 30000000\nsoak status 200 990\nsoak status 503 10\n\
        soak version stable 950\nsoak version canary 40\nsoak version none 10\n\
        soak errors connect 0 read 2 write 0 timeout 1\n";

    #[test]
    fn wrk_totals_parse_add_and_classify_failures() {
        let one = WrkTotals::parse(OUTPUT).expect("parses");
        assert_eq!(one.requests, 1_000);
        assert_eq!(one.statuses[&503], 10);
        assert_eq!(one.versions["none"], 10);
        assert_eq!(one.errors, SocketErrors { connect: 0, read: 2, write: 0, timeout: 1 });
        let mut both = one.clone();
        both.add(&one);
        assert_eq!((both.requests, both.statuses[&200], both.duration_us), (2_000, 1_980, 60_000_000));
        assert_eq!(
            both.failures(),
            vec![
                ("HTTP 503".to_string(), 20),
                ("socket read error".to_string(), 4),
                ("socket timeout error".to_string(), 2)
            ]
        );
        let clean = WrkTotals::parse("soak requests 5\nsoak status 200 5\n").expect("parses");
        assert!(clean.failures().is_empty());
    }

    #[test]
    fn wrk_output_without_the_scripts_lines_or_with_garbage_is_refused() {
        let missing = WrkTotals::parse("Running 30s test\nRequests/sec: 10\n").expect_err("no soak lines");
        assert!(missing.contains("no `soak requests` line"), "{missing}");
        let garbage = WrkTotals::parse("soak requests many\n").expect_err("not a number");
        assert!(garbage.contains("field `requests`") && garbage.contains("many"), "{garbage}");
        let status = WrkTotals::parse("soak requests 1\nsoak status 99999 1\n").expect_err("not a status");
        assert!(status.contains("field `status` = 99999"), "{status}");
        assert!(WrkTotals::parse("soak requests 1\nsoak surprise\n").is_err());
    }

    #[test]
    fn share_changes_count_settled_values_not_one_sample_flickers() {
        assert_eq!(share_changes(&[]), (0, 0));
        assert_eq!(share_changes(&[100, 100, 100]), (0, 0));
        assert_eq!(share_changes(&[100, 100, 500, 500, 2_500, 2_500, 0, 0]), (3, 3));
        // A straggling VM writes the old value once after the change: one change, not three.
        assert_eq!(share_changes(&[100, 100, 500, 100, 500, 500, 500]), (1, 3));
        // Up and back to the same value is two changes.
        assert_eq!(share_changes(&[100, 100, 500, 500, 100, 100]), (2, 2));
        // A value seen once only, at the end, is not yet applied.
        assert_eq!(share_changes(&[100, 100, 500]), (0, 1));
    }

    #[test]
    fn rss_is_read_from_proc_status() {
        let status = "Name:\tenvoy\nVmPeak:\t  200000 kB\nVmRSS:\t   41234 kB\nThreads:\t12\n";
        assert_eq!(vm_rss_kib(status), Some(41_234));
        assert_eq!(vm_rss_kib("Name:\tzombie\n"), None);
    }

    #[test]
    fn rss_flat_noisy_or_leaking() {
        let series = |values: &[u64]| -> Vec<(f64, u64)> {
            values.iter().enumerate().map(|(i, v)| (30.0 + 10.0 * i as f64, *v)).collect()
        };
        assert_eq!(rss_verdict(&series(&[40_000])), None);
        let flat = rss_verdict(&series(&[40_000, 41_000, 40_500, 40_800, 60_000, 40_900, 41_000])).expect("verdict");
        assert!(flat.flat, "one spike is not growth: {flat:?}");
        assert_eq!((flat.start_kib, flat.end_kib, flat.max_kib), (40_500, 41_000, 60_000));
        // +50 % in steady steps: a leak.
        let leak: Vec<u64> = (0..10).map(|i| 40_000 + i * 2_500).collect();
        let leak = rss_verdict(&series(&leak)).expect("verdict");
        assert!(!leak.flat && leak.growth > 0.4, "{leak:?}");
        assert!((leak.slope_kib_per_minute - 15_000.0).abs() < 1.0, "{leak:?}");
        // Settling early, flat later: the slope is the later half's, 0.
        let settled = rss_verdict(&series(&[40_000, 42_000, 44_000, 45_000, 45_000, 45_000, 45_000, 45_000]));
        assert_eq!(settled.expect("verdict").slope_kib_per_minute, 0.0);
        // +30 % of a tiny process, but under the 2 MiB floor: an allocator arena, not a leak.
        let small = rss_verdict(&series(&[5_000, 5_000, 5_000, 6_500, 6_500, 6_500])).expect("verdict");
        assert!(small.flat && small.growth > 0.2, "{small:?}");
    }

    #[test]
    fn polls_about_one_per_interval_per_envoy() {
        let on_design = poll_verdict(121, 600.0, 5.0, 2);
        assert_eq!((on_design.expected, on_design.per_vm), (120.0, 360.0));
        assert!(on_design.within_bounds);
        assert!(!poll_verdict(360, 600.0, 5.0, 2).within_bounds, "one poller per VM is a defect");
        assert!(poll_verdict(180, 600.0, 5.0, 2).within_bounds);
        assert!(!poll_verdict(181, 600.0, 5.0, 2).within_bounds);
        assert!(!poll_verdict(59, 600.0, 5.0, 2).within_bounds, "stopped polling");
    }

    #[test]
    fn stats_are_read_from_both_admin_formats() {
        let prometheus = "# TYPE canary_applied_share_bp gauge\ncanary_applied_share_bp{deployment=\"demo\"} 2500\n\
                          canary_applied_share_bp_other 7\n";
        assert_eq!(prometheus_sum(prometheus, "canary_applied_share_bp"), 2_500.0);
        let stats = "cluster.canary_analyzer.upstream_rq_total: 17\ncluster.canary_analyzer.upstream_rq_total_x: 3\n";
        assert_eq!(envoy_stat(stats, "cluster.canary_analyzer.upstream_rq_total"), Some(17));
        assert_eq!(envoy_stat(stats, "cluster.stable.upstream_rq_total"), None);
    }
}
