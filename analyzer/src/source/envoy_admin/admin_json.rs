//! Envoy's JSON stats with its own histogram bins → [`DeploymentSnapshot`] (pure).
//!
//! `GET /stats?format=json&histogram_buckets=detailed` answers with every counter and
//! gauge as `{"name", "value"}` and every histogram's non-empty log-linear bins as
//! `{"lower_bound", "width", "count"}` (cumulative since start, under `totals`):
//! 1-10 % wide, where `/stats/prometheus` has only the configured buckets. No bucket
//! configuration is needed on this path. Names are the stats' full names, as the filter
//! defines them with Envoy's `wasmcustom.` prefix (`stats_tags` do not apply), so they
//! are matched against the names `canary_core::metrics` builds. Envoy's `filter`
//! parameter ([`stats_filter`]) keeps the answer to one deployment's stats and the
//! uptime: ~7.6 KB for one Envoy (`testdata/envoy_1_40_detailed.json`).

use std::borrow::Cow;
use std::collections::HashMap;

use canary_core::Cohort;
use canary_core::metrics::{
    StatusClass, applied_generation_stat, applied_share_stat, config_age_stat, latency_stat, requests_stat,
};
use serde::Deserialize;
use serde_json::Value;

use super::envoy_bins::{BinPlace, bin_place};
use super::exposition::share_bp;
use crate::source::error::ExpositionError;
use crate::source::latency::CumulativeLatency;
use crate::source::outcomes::parse_stat_name;
use crate::source::snapshot::DeploymentSnapshot;

/// Envoy's uptime gauge (seconds) in the JSON form: if it goes down, the Envoy restarted.
const UPTIME: &str = "server.uptime";
/// Envoy's hot restart epoch gauge in the JSON form: if it changes, the Envoy hot restarted.
const HOT_RESTART_EPOCH: &str = "server.hot_restart_epoch";

/// The prefix Envoy puts before the names a wasm filter defines.
const WASM_PREFIX: &str = "wasmcustom.";

/// Longest JSON value quoted in an error: one log line.
const QUOTED_VALUE_LIMIT: usize = 80;

/// The regex for Envoy's `filter` parameter: the uptime, the hot restart epoch and
/// `deployment`'s stats only (the trailing `\.` keeps `demo` from matching `demo-2`).
pub fn stats_filter(deployment: &str) -> String {
    format!(r"^(server\.(uptime|hot_restart_epoch)$|wasmcustom\.canary\.deployment\.{}\.)", regex_escape(deployment))
}

/// Deployment ids are `[A-Za-z0-9_-]`; anything else is escaped all the same.
fn regex_escape(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            let escape = c.is_ascii_punctuation() && c != '_';
            escape.then_some('\\').into_iter().chain(std::iter::once(c))
        })
        .collect()
}

/// What a stat name stands for.
#[derive(Debug, Clone, Copy)]
enum Stat {
    Requests(Cohort, StatusClass),
    Latency(Cohort),
    Generation,
    Share,
    ConfigAge,
    Uptime,
    HotRestartEpoch,
}

/// Every name read for `deployment`, with its meaning.
fn names(deployment: &str) -> HashMap<String, Stat> {
    let wasm = |name: String| format!("{WASM_PREFIX}{name}");
    let mut names = HashMap::new();
    for cohort in Cohort::ALL {
        for class in StatusClass::ALL {
            names.insert(wasm(requests_stat(deployment, cohort, class)), Stat::Requests(cohort, class));
        }
        names.insert(wasm(latency_stat(deployment, cohort)), Stat::Latency(cohort));
    }
    names.insert(wasm(applied_generation_stat(deployment)), Stat::Generation);
    names.insert(wasm(applied_share_stat(deployment)), Stat::Share);
    names.insert(wasm(config_age_stat(deployment)), Stat::ConfigAge);
    names.insert(UPTIME.to_string(), Stat::Uptime);
    names.insert(HOT_RESTART_EPOCH.to_string(), Stat::HotRestartEpoch);
    names
}

/// A JSON value for an error message, cut to one line.
fn quoted(value: Option<&Value>) -> String {
    let text = value.map_or_else(|| "missing".to_string(), Value::to_string);
    match text.char_indices().nth(QUOTED_VALUE_LIMIT) {
        Some((cut, _)) => format!("{}…", text.get(..cut).unwrap_or(&text)),
        None => text,
    }
}

fn field_error(field: impl Into<String>, value: Option<&Value>, expected: &'static str) -> ExpositionError {
    ExpositionError::JsonField { field: field.into(), value: quoted(value), expected }
}

/// A counter, gauge or bin count: Envoy writes them as whole numbers >= 0.
fn whole(field: &str, value: Option<&Value>) -> Result<u64, ExpositionError> {
    value.and_then(Value::as_u64).ok_or_else(|| field_error(field, value, "a whole number >= 0"))
}

/// Parses Envoy's JSON stats and keeps `deployment`'s series (other stats are skipped,
/// so an answer without the `filter` applied reads the same).
///
/// A well-formed answer is read in one pass into [`Answer`], borrowing names from the
/// text (a `Value` tree costs a map and a string per object: a busy deployment's ~760
/// bins took 2/3 of a thousand rollouts' CPU). Anything that reading refuses or finds
/// wrong is read again as a `Value`, which names the field, the value and what was
/// expected; both readings share [`read_stat`] and [`read_latency`].
pub fn parse_detailed_stats(text: &str, deployment: &str) -> Result<DeploymentSnapshot, ExpositionError> {
    let names = names(deployment);
    let typed =
        serde_json::from_str::<Answer<'_>>(text).ok().and_then(|answer| read_answer(&answer, &names, deployment).ok());
    match typed {
        Some(snapshot) => Ok(snapshot),
        None => read_value_answer(text, &names, deployment),
    }
}

/// Envoy's answer, as far as it is read: a failed read falls back to the `Value` reading.
#[derive(Deserialize)]
struct Answer<'a> {
    #[serde(borrow)]
    stats: Vec<Entry<'a>>,
}

/// A counter or gauge (`name`, `value`), or the entry holding every histogram.
#[derive(Deserialize)]
struct Entry<'a> {
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    /// A number (no allocation) for counters and gauges; text readouts hold a string.
    #[serde(default)]
    value: Option<Value>,
    #[serde(borrow, default)]
    histograms: Option<Histograms<'a>>,
}

#[derive(Deserialize)]
struct Histograms<'a> {
    #[serde(borrow)]
    details: Vec<Detail<'a>>,
}

/// One histogram; its `intervals` and `percentiles` are skipped unread.
#[derive(Deserialize)]
struct Detail<'a> {
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(default)]
    totals: Option<Vec<Bin>>,
}

#[derive(Deserialize)]
struct Bin {
    lower_bound: f64,
    width: f64,
    count: u64,
}

fn read_answer(
    answer: &Answer<'_>,
    names: &HashMap<String, Stat>,
    deployment: &str,
) -> Result<DeploymentSnapshot, ExpositionError> {
    let mut snapshot = DeploymentSnapshot::default();
    for entry in &answer.stats {
        if let Some(histograms) = &entry.histograms {
            for histogram in &histograms.details {
                let Some(name) = histogram.name.as_deref() else { continue };
                let Some(Stat::Latency(cohort)) = names.get(name) else { continue };
                let totals = histogram
                    .totals
                    .as_ref()
                    .ok_or_else(|| field_error(format!("{name}.totals"), None, "a list of bins"))?;
                let bins = totals.iter().map(|bin| Ok((bin.lower_bound, bin.width, bin.count)));
                read_latency(&mut snapshot, *cohort, name, bins)?;
            }
            continue;
        }
        let Some(name) = entry.name.as_deref() else { continue };
        read_stat(&mut snapshot, names, deployment, name, entry.value.as_ref())?;
    }
    Ok(snapshot)
}

/// The reading that names what is wrong: the answer as a `Value` tree.
fn read_value_answer(
    text: &str,
    names: &HashMap<String, Stat>,
    deployment: &str,
) -> Result<DeploymentSnapshot, ExpositionError> {
    let answer: Value = serde_json::from_str(text).map_err(ExpositionError::Json)?;
    let stats = answer.get("stats");
    let entries = stats.and_then(Value::as_array).ok_or_else(|| field_error("stats", stats, "a list"))?;
    let mut snapshot = DeploymentSnapshot::default();
    for entry in entries {
        if let Some(histograms) = entry.get("histograms") {
            read_histograms(&mut snapshot, names, histograms)?;
            continue;
        }
        let Some(name) = entry.get("name").and_then(Value::as_str) else { continue };
        read_stat(&mut snapshot, names, deployment, name, entry.get("value"))?;
    }
    Ok(snapshot)
}

/// One counter or gauge: ours go into the snapshot, the rest are skipped.
fn read_stat(
    snapshot: &mut DeploymentSnapshot,
    names: &HashMap<String, Stat>,
    deployment: &str,
    name: &str,
    value: Option<&Value>,
) -> Result<(), ExpositionError> {
    let Some(stat) = names.get(name) else {
        let outcome = name.strip_prefix(WASM_PREFIX).and_then(|n| parse_stat_name(n, deployment));
        if let Some((cohort, outcome, counter)) = outcome {
            counter.set(&mut snapshot.cohorts.get_mut(cohort).outcomes, &outcome, whole(name, value)?);
        }
        return Ok(());
    };
    let applied = &mut snapshot.applied;
    match *stat {
        Stat::Requests(cohort, class) => {
            *snapshot.cohorts.get_mut(cohort).requests.get_mut(class) = whole(name, value)?;
        }
        Stat::Generation => applied.generation = Some(whole(name, value)?),
        Stat::ConfigAge => applied.config_age_ms = Some(whole(name, value)?),
        // Exact as f64: the share is refused above 10 000 anyway.
        Stat::Share => applied.share_bp = Some(share_bp(name, whole(name, value)? as f64)?),
        Stat::Uptime => snapshot.server_uptime_seconds = Some(whole(name, value)? as f64),
        Stat::HotRestartEpoch => snapshot.hot_restart_epoch = Some(whole(name, value)?),
        Stat::Latency(_) => {}
    }
    Ok(())
}

/// Reads the `{"histograms": {"details": [...]}}` entry: our histograms' `totals` bins.
fn read_histograms(
    snapshot: &mut DeploymentSnapshot,
    names: &HashMap<String, Stat>,
    histograms: &Value,
) -> Result<(), ExpositionError> {
    let details = histograms.get("details");
    // Without `details` Envoy answered in another histogram form: the query was not honoured.
    let details = details
        .and_then(Value::as_array)
        .ok_or_else(|| field_error("histograms.details", details, "a list of detailed histograms"))?;
    for histogram in details {
        let Some(name) = histogram.get("name").and_then(Value::as_str) else { continue };
        let Some(Stat::Latency(cohort)) = names.get(name) else { continue };
        let totals = histogram.get("totals");
        let totals = totals
            .and_then(Value::as_array)
            .ok_or_else(|| field_error(format!("{name}.totals"), totals, "a list of bins"))?;
        let bins = totals.iter().map(|bin| {
            let number = |field: &str| {
                let value = bin.get(field);
                value
                    .and_then(Value::as_f64)
                    .ok_or_else(|| field_error(format!("{name} bin {field}"), value, "a number"))
            };
            let (lower_bound, width) = (number("lower_bound")?, number("width")?);
            Ok((lower_bound, width, whole(&format!("{name} bin count"), bin.get("count"))?))
        });
        read_latency(snapshot, *cohort, name, bins)?;
    }
    Ok(())
}

/// One of our histograms from its bins (`lower_bound`, `width`, `count`), in Envoy's order.
fn read_latency(
    snapshot: &mut DeploymentSnapshot,
    cohort: Cohort,
    name: &str,
    totals: impl ExactSizeIterator<Item = Result<(f64, f64, u64), ExpositionError>>,
) -> Result<(), ExpositionError> {
    let mut bins = Vec::with_capacity(totals.len());
    let mut overflow = 0u64;
    for bin in totals {
        let (lower_bound, width, count) = bin?;
        match bin_place(lower_bound, width) {
            Some(BinPlace::Bound(bound)) => bins.push((bound, count)),
            Some(BinPlace::Overflow) => overflow = overflow.saturating_add(count),
            None => {
                return Err(ExpositionError::NotAnEnvoyBin { histogram: name.to_string(), lower_bound, width });
            }
        }
    }
    snapshot.cohorts.get_mut(cohort).latency = Some(CumulativeLatency::from_envoy_bins(bins, overflow));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::envoy_bin_bounds_us;
    use crate::source::latency::BucketLayout;
    use crate::source::snapshot::AppliedRollout;

    /// Real answer of Envoy 1.40 with the filter (`envoy/envoy.yaml`, no analyzer, initial
    /// share 50 %) to `STATS_PATH` with [`stats_filter`]`("demo")`: 60 users served in
    /// 1-27 ms by a slow test upstream, one denied user.
    const ENVOY_1_40: &str = include_str!("../testdata/envoy_1_40_detailed.json");

    #[test]
    fn reads_the_counters_gauges_and_bins_envoy_answers() {
        let snapshot = parse_detailed_stats(ENVOY_1_40, "demo").unwrap();
        let (canary, control) = (&snapshot.cohorts.canary, &snapshot.cohorts.control);
        assert_eq!((canary.requests.success, canary.requests.total()), (29, 29));
        assert_eq!((control.requests.success, control.requests.total()), (31, 31));
        assert_eq!(snapshot.cohorts.excluded.requests.total(), 1);
        assert_eq!(snapshot.server_uptime_seconds, Some(6.0));
        let expected = AppliedRollout { generation: Some(0), share_bp: Some(5_000), config_age_ms: Some(u64::MAX) };
        assert_eq!(snapshot.applied, expected);

        let latency = canary.latency.as_ref().unwrap();
        assert_eq!(latency.layout, BucketLayout::EnvoyBins);
        assert_eq!(latency.count, 29, "every request is in a bin");
        assert_eq!(latency.upper_bounds_us.len(), 15, "15 non-empty bins");
        let grid = envoy_bin_bounds_us();
        assert!(latency.upper_bounds_us.iter().all(|b| grid.binary_search(b).is_ok()));
        assert_eq!(control.latency.as_ref().unwrap().count, 31);
        // Every cohort's histogram is listed, empty or not.
        assert_eq!(snapshot.cohorts.forced.latency.as_ref().unwrap().count, 0);
        // Our median of control's 31 requests is within its bin (1 ms wide at 13 ms) of the
        // P50 Envoy computed from the same bins (the answer's `percentiles`: 13 200 µs).
        let median = control.latency.as_ref().unwrap().to_histogram().unwrap().quantile_estimate_us(0.5).unwrap();
        assert!((median - 13_200.0).abs() <= 1_000.0, "{median}");
    }

    /// Both readings of `text` for `deployment`: the one-pass one (`None` when it refuses
    /// the answer) and the `Value` one.
    fn both_readings(
        text: &str,
        deployment: &str,
    ) -> (Option<Result<DeploymentSnapshot, String>>, Result<DeploymentSnapshot, String>) {
        let names = names(deployment);
        let typed = serde_json::from_str::<Answer<'_>>(text)
            .ok()
            .map(|answer| read_answer(&answer, &names, deployment).map_err(|e| e.to_string()));
        (typed, read_value_answer(text, &names, deployment).map_err(|e| e.to_string()))
    }

    #[test]
    fn a_well_formed_answer_reads_the_same_in_one_pass_as_through_values() {
        let (typed, values) = both_readings(ENVOY_1_40, "demo");
        assert_eq!(typed, Some(values.clone()), "Envoy's answer takes the one-pass reading");
        assert_eq!(parse_detailed_stats(ENVOY_1_40, "demo").map_err(|e| e.to_string()), values);
        // Escaped names, a text readout, fields and entries nobody reads, an unnamed histogram.
        let counter = r"wasmcustom.canary.deployment.d.cohort.canary.class.2xx.requests_total";
        let escaped = counter.replace(".2xx.", r".\u0032xx.");
        let histogram = "wasmcustom.canary.deployment.d.cohort.control.latency_us";
        let text = format!(
            r#"{{"stats": [{{"name": "{escaped}", "value": 7}}, {{"name": "version", "value": "1.40.0"}},
                {{"name": "server.uptime", "value": 12, "extra": [1, {{"a": null}}]}},
                {{"histograms": {{"supported_percentiles": [50], "details": [
                    {{"totals": [{{"lower_bound": 1, "width": 2, "count": 3}}]}},
                    {{"name": "{histogram}", "totals": [{{"lower_bound": 1200, "width": 100, "count": 3}}],
                      "intervals": [], "percentiles": [{{"cumulative": 1300}}]}}]}}}}], "more": {{}}}}"#
        );
        let (typed, values) = both_readings(&text, "d");
        let snapshot = values.clone().unwrap();
        assert_eq!(snapshot.cohorts.canary.requests.success, 7);
        assert_eq!(snapshot.cohorts.control.latency.as_ref().map(|l| l.count), Some(3));
        assert_eq!(snapshot.server_uptime_seconds, Some(12.0));
        assert_eq!(typed, Some(values), "{text}");
    }

    #[test]
    fn what_the_one_pass_reading_refuses_is_read_and_named_through_values() {
        let counter = "wasmcustom.canary.deployment.d.cohort.canary.class.2xx.requests_total";
        for (text, expected) in [
            // A duplicate key: the `Value` reading keeps the last.
            (format!(r#"{{"stats": [{{"name": "{counter}", "value": 1, "value": 2}}]}}"#), Ok(2)),
            (
                format!(r#"{{"stats": [{{"name": "{counter}", "value": null}}]}}"#),
                Err(format!("{counter} is null, expected a whole number >= 0")),
            ),
            (r#"{"stats": [{"name": 5, "value": 1}]}"#.to_string(), Ok(0)),
        ] {
            let read = parse_detailed_stats(&text, "d").map(|s| s.cohorts.canary.requests.success);
            assert_eq!(read.map_err(|e| e.to_string()), expected, "{text}");
        }
    }

    #[test]
    fn reads_the_hot_restart_epoch() {
        assert_eq!(parse_detailed_stats(ENVOY_1_40, "demo").unwrap().hot_restart_epoch, None);
        let text =
            r#"{"stats": [{"name": "server.hot_restart_epoch", "value": 1}, {"name": "server.uptime", "value": 9}]}"#;
        let snapshot = parse_detailed_stats(text, "demo").unwrap();
        assert_eq!((snapshot.hot_restart_epoch, snapshot.server_uptime_seconds), (Some(1), Some(9.0)));
    }

    #[test]
    fn other_deployments_are_skipped_and_the_filter_names_one() {
        let snapshot = parse_detailed_stats(ENVOY_1_40, "demo-2").unwrap();
        assert_eq!(snapshot.cohorts, Default::default());
        assert_eq!(snapshot.server_uptime_seconds, Some(6.0));
        let server = r"^(server\.(uptime|hot_restart_epoch)$|";
        assert_eq!(stats_filter("demo"), format!(r"{server}wasmcustom\.canary\.deployment\.demo\.)"));
        assert_eq!(stats_filter("check-out_2"), format!(r"{server}wasmcustom\.canary\.deployment\.check\-out_2\.)"));
    }

    #[test]
    fn bad_answers_name_the_field_the_value_and_what_was_expected() {
        let error = |text: &str| parse_detailed_stats(text, "d").unwrap_err().to_string();
        assert_eq!(error("<html>"), "the answer is not json");
        assert_eq!(error(r#"{"stats": 3}"#), "stats is 3, expected a list");
        let counter = "wasmcustom.canary.deployment.d.cohort.canary.class.5xx.requests_total";
        assert_eq!(
            error(&format!(r#"{{"stats":[{{"name":"{counter}","value":-1}}]}}"#)),
            format!("{counter} is -1, expected a whole number >= 0")
        );
        let share = "wasmcustom.canary.deployment.d.applied_share_bp";
        assert_eq!(
            error(&format!(r#"{{"stats":[{{"name":"{share}","value":10001}}]}}"#)),
            format!("{share} has value 10001, expected 0 to 10000 basis points")
        );
        let histogram = "wasmcustom.canary.deployment.d.cohort.control.latency_us";
        let with_bins = |bins: &str| {
            format!(r#"{{"stats":[{{"histograms":{{"details":[{{"name":"{histogram}","totals":[{bins}]}}]}}}}]}}"#)
        };
        assert_eq!(
            error(&with_bins(r#"{"lower_bound":12500,"width":1000,"count":3}"#)),
            format!(
                "{histogram} has a bin at lower_bound 12500 of width 1000, expected one of Envoy's log-linear bins \
                 (two significant digits)"
            )
        );
        assert_eq!(
            error(&with_bins(r#"{"lower_bound":1200,"width":100,"count":"3"}"#)),
            format!("{histogram} bin count is \"3\", expected a whole number >= 0")
        );
        // Summary histograms: Envoy did not answer with bins.
        let summary = r#"{"stats":[{"histograms":{"supported_quantiles":[50],"computed_quantiles":[]}}]}"#;
        assert_eq!(error(summary), "histograms.details is missing, expected a list of detailed histograms");
        // Bins of 100 s and slower count, past the grid.
        let slow = parse_detailed_stats(
            &with_bins(
                r#"{"lower_bound":1200,"width":100,"count":3},{"lower_bound":120000000,"width":10000000,"count":2}"#,
            ),
            "d",
        )
        .unwrap();
        let latency = slow.cohorts.control.latency.unwrap();
        assert_eq!((latency.upper_bounds_us, latency.count), (vec![1_300], 5));
    }
}
