//! The Prometheus side, pure: the PromQL the analyzer asks and the query API's JSON
//! answers turned into [`IntervalMetrics`] or a value per cohort.
//!
//! Why [`tiled_increase`] and not `increase(...[window])`: a window's count is taken
//! per series (one per Envoy/pod) as the difference of the series' last sample at or
//! before the window's end and its last sample at or before the window's start, and
//! only then does `sum` add pods up — the same "delta per target, then sum" rule as
//! the Envoy admin source, done inside Prometheus, so the answer has one row per
//! cohort and class whatever the fleet size. Consecutive windows therefore tile each
//! counter's history exactly: the increase across a scrape gap (a target down, a slow
//! scrape) falls in the window that follows it, from the samples on both sides. Counts
//! are whole (no extrapolation), and a window with no new scrape counts 0, which the
//! engine carries into the next window.
//!
//! Rules, as for the admin source:
//! - **Gaps are bridged up to [`GAP_BRIDGE`]**: the "last sample" is looked for that far
//!   back (`last_over_time`, which skips Prometheus' staleness markers). A series with
//!   no sample in the `GAP_BRIDGE` before a window's start has no baseline there: it
//!   contributes from the next window on (a new pod, or one silent for longer).
//! - **Restart**: a series whose last value is below its baseline restarted (its counter
//!   went back to 0) and counts its current value, the `increase()` convention; what the
//!   old process counted after its last scrape is lost, never invented.
//! - Histogram buckets are separate series; they are made monotone again (a running
//!   maximum) before use, in case one bucket's series restarted and another's did not.

use std::collections::BTreeMap;
use std::time::Duration;

use canary_core::Cohort;
use canary_core::metrics::{LATENCY, REQUESTS, StatusClass};
use serde::Deserialize;

use crate::stats::LatencyHistogram;

use crate::source::error::SourceError;
use crate::source::interval::IntervalMetrics;
use crate::source::latency::LatencyUnit;
use crate::source::outcomes::{OUTCOME_EVENTS, OUTCOME_REQUESTS, OutcomeCounter, Outcomes, is_outcome_name};
use crate::source::snapshot::{ClassCounts, PerCohort};

/// A custom metric's value for each compared cohort; `None` is "no data"
/// (empty result, NaN or ±Inf, e.g. a ratio over zero requests).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CohortValues {
    pub canary: Option<f64>,
    pub control: Option<f64>,
}

/// `value` as a PromQL double-quoted string body (backslash, quote and newline escaped).
pub(super) fn escape_label_value(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// A window as a PromQL duration, in milliseconds so any window is exact (at least 1 ms).
pub fn promql_duration(window: Duration) -> String {
    format!("{}ms", window.as_millis().max(1))
}

/// How long a series may go without a sample and still be bridged: a window's
/// baseline (and its end) is the series' last sample up to this long before. Five
/// minutes, Prometheus' own lookback for instant queries: a scrape target down for
/// longer contributes from the window after its return on (as a new pod does).
pub const GAP_BRIDGE: Duration = Duration::from_secs(300);

/// `sum by (by)` of what the counters `selector` names counted in the `window` before
/// the evaluation time, series by series: their last sample at or before the end less
/// their last sample at or before the start (each looked for up to [`GAP_BRIDGE`]
/// back), or the last sample alone when it is below the baseline (a restart).
pub(super) fn tiled_increase(selector: &str, window: Duration, by: &str) -> String {
    format!("sum by ({by}) ({})", tiled_series(selector, window))
}

/// [`tiled_increase`] before the sum: one series per counter series, so its labels can
/// still be rewritten (see `mesh`).
pub(super) fn tiled_series(selector: &str, window: Duration) -> String {
    let bridge = promql_duration(GAP_BRIDGE);
    let end = format!("last_over_time({selector}[{bridge}])");
    let start = format!("last_over_time({selector}[{bridge}] offset {})", promql_duration(window));
    format!("({end} - {start}) >= 0 or {end} < {start}")
}

/// Requests per cohort and class in the `window` before the evaluation time.
pub fn requests_query(deployment: &str, window: Duration) -> String {
    let selector = format!("{REQUESTS}{{deployment=\"{}\"}}", escape_label_value(deployment));
    tiled_increase(&selector, window, "cohort, class")
}

/// Latency observations per cohort and `le` bucket in the `window` before the evaluation time.
pub fn latency_query(deployment: &str, window: Duration) -> String {
    let selector = format!("{LATENCY}_bucket{{deployment=\"{}\"}}", escape_label_value(deployment));
    tiled_increase(&selector, window, "cohort, le")
}

/// One of the outcome counters per cohort and outcome in the `window` before the
/// evaluation time; every outcome the fleet exports (the policy picks its own).
pub fn outcome_query(deployment: &str, window: Duration, events: bool) -> String {
    let counter = if events { OUTCOME_EVENTS } else { OUTCOME_REQUESTS };
    let selector = format!("{counter}{{deployment=\"{}\"}}", escape_label_value(deployment));
    tiled_increase(&selector, window, "cohort, outcome")
}

/// The two [`outcome_query`] answers → outcome counts per cohort. `increase()`
/// extrapolates the two counters separately, so rounded events can exceed rounded
/// requests by one or two when nearly every request is an event: events are capped
/// at requests (the test refuses more events than requests).
pub(crate) fn outcomes_from_answers(
    (requests_query, requests): (&str, &QueryData),
    (events_query, events): (&str, &QueryData),
) -> Result<PerCohort<Outcomes>, SourceError> {
    let mut outcomes = PerCohort::<Outcomes>::default();
    for (query, data, counter) in
        [(requests_query, requests, OutcomeCounter::Requests), (events_query, events, OutcomeCounter::Events)]
    {
        for sample in vector(query, data)? {
            let Some(cohort) = cohort_of(sample) else { continue };
            let Some(outcome) = sample.label("outcome").filter(|name| is_outcome_name(name)) else { continue };
            if let Some(count) = whole_count(query, &sample.value)? {
                counter.set(outcomes.get_mut(cohort), outcome, count);
            }
        }
    }
    for cohort in Cohort::ALL {
        for counts in outcomes.get_mut(cohort).values_mut() {
            counts.events = counts.events.min(counts.requests);
        }
    }
    Ok(outcomes)
}

/// A counter-pair template's answer → a whole count: `increase()` extrapolates to
/// the window's edges, so its values are rarely integers; they are rounded to the
/// nearest count. `None` for no data (empty, NaN, ±Inf); a negative value (not a
/// counter's increase) is refused.
pub(crate) fn pair_count(query: &str, data: &QueryData) -> Result<Option<u64>, SourceError> {
    match single_value(query, data)? {
        Some(value) if value < 0.0 => {
            Err(unexpected(query, format!("a count >= 0 (an increase of a counter), got {value}")))
        }
        // Finite and >= 0: the rounded value fits (saturating above u64::MAX).
        Some(value) => Ok(Some(value.round() as u64)),
        None => Ok(None),
    }
}

/// A policy's custom query for one cohort: `{{deployment}}` and `{{cohort}}` become the
/// (escaped) label values, `{{window}}` the PromQL duration of the check window.
pub fn expand_template(template: &str, deployment: &str, cohort: Cohort, window: Duration) -> String {
    template
        .replace("{{deployment}}", &escape_label_value(deployment))
        .replace("{{cohort}}", cohort.label())
        .replace("{{window}}", &promql_duration(window))
}

/// The query API's envelope (`/api/v1/query`).
#[derive(Debug, Deserialize)]
struct Envelope {
    status: String,
    data: Option<QueryData>,
    #[serde(rename = "errorType")]
    error_type: Option<String>,
    error: Option<String>,
}

/// `data` of an instant query.
#[derive(Debug, Deserialize)]
#[serde(tag = "resultType", content = "result", rename_all = "lowercase")]
pub(crate) enum QueryData {
    Vector(Vec<VectorSample>),
    Scalar(SampleValue),
    /// Never what the analyzer's queries should give; the content is skipped.
    Matrix(#[allow(dead_code)] serde::de::IgnoredAny),
    String(#[allow(dead_code)] serde::de::IgnoredAny),
}

/// `[unix seconds, "value"]`: Prometheus sends values as strings (NaN, +Inf included).
type SampleValue = (f64, String);

#[derive(Debug, Deserialize)]
pub(crate) struct VectorSample {
    #[serde(default)]
    metric: BTreeMap<String, String>,
    value: SampleValue,
}

impl VectorSample {
    pub(super) fn label(&self, name: &str) -> Option<&str> {
        self.metric.get(name).map(String::as_str)
    }

    /// The sample's number; `None` for NaN and ±Inf (no data).
    pub(super) fn finite_value(&self, query: &str) -> Result<Option<f64>, SourceError> {
        finite_value(query, &self.value)
    }
}

/// Decodes an answer; `http_status` is used only when the body is not the API's JSON.
pub(crate) fn decode_answer(url: &str, query: &str, http_status: u16, body: &str) -> Result<QueryData, SourceError> {
    let envelope: Envelope = match serde_json::from_str(body) {
        Ok(envelope) => envelope,
        Err(_) if !(200..300).contains(&http_status) => {
            return Err(SourceError::Status {
                url: url.to_string(),
                status: http_status,
                body: crate::source::envoy_admin::truncate(body),
            });
        }
        Err(source) => return Err(SourceError::Json { url: url.to_string(), source }),
    };
    if envelope.status != "success" {
        return Err(SourceError::Query {
            url: url.to_string(),
            query: query.to_string(),
            error_type: crate::policy::one_line(envelope.error_type.as_deref().unwrap_or("unknown")),
            message: crate::policy::one_line(envelope.error.as_deref().unwrap_or_default()),
        });
    }
    envelope.data.ok_or_else(|| unexpected(query, "a success without data"))
}

pub(super) fn unexpected(query: &str, detail: impl Into<String>) -> SourceError {
    SourceError::UnexpectedResult { query: query.to_string(), detail: detail.into() }
}

pub(super) fn vector<'a>(query: &str, data: &'a QueryData) -> Result<&'a [VectorSample], SourceError> {
    match data {
        QueryData::Vector(samples) => Ok(samples),
        _ => Err(unexpected(query, "expected an instant vector")),
    }
}

/// A sample's number; `None` for NaN and ±Inf (no data).
fn finite_value(query: &str, value: &SampleValue) -> Result<Option<f64>, SourceError> {
    let number: f64 = value.1.parse().map_err(|_| unexpected(query, format!("value {:?} is not a number", value.1)))?;
    Ok(number.is_finite().then_some(number))
}

/// An `increase()` result as a whole count (rounded; negative never happens for
/// counters, but is read as 0 rather than trusted).
fn whole_count(query: &str, value: &SampleValue) -> Result<Option<u64>, SourceError> {
    Ok(finite_value(query, value)?.map(|number| number.max(0.0).round() as u64))
}

fn cohort_of(sample: &VectorSample) -> Option<Cohort> {
    let label = sample.label("cohort")?;
    Cohort::ALL.into_iter().find(|cohort| cohort.label() == label)
}

/// [`requests_query`]'s answer → requests per cohort and class.
pub(crate) fn requests_from_answer(query: &str, data: &QueryData) -> Result<PerCohort<ClassCounts>, SourceError> {
    let mut requests = PerCohort::<ClassCounts>::default();
    for sample in vector(query, data)? {
        let Some(cohort) = cohort_of(sample) else { continue };
        let Some(class) = sample.label("class").and_then(|l| StatusClass::ALL.into_iter().find(|c| c.label() == l))
        else {
            continue;
        };
        if let Some(count) = whole_count(query, &sample.value)? {
            *requests.get_mut(cohort).get_mut(class) = count;
        }
    }
    Ok(requests)
}

/// [`latency_query`]'s answer → one histogram per cohort that has buckets.
pub(crate) fn latency_from_answer(
    query: &str,
    data: &QueryData,
) -> Result<PerCohort<Option<LatencyHistogram>>, SourceError> {
    latency_from_answer_in(query, data, LatencyUnit::Microseconds)
}

/// A latency answer whose `le` bounds are in `unit` → one histogram (in µs) per cohort
/// that has buckets; see [`LatencyUnit::whole_microseconds`] for the conversion.
pub(crate) fn latency_from_answer_in(
    query: &str,
    data: &QueryData,
    unit: LatencyUnit,
) -> Result<PerCohort<Option<LatencyHistogram>>, SourceError> {
    // Per cohort: finite bound (µs) → count, and the `+Inf` count.
    let mut buckets: PerCohort<(BTreeMap<u64, u64>, Option<u64>)> = PerCohort::default();
    for sample in vector(query, data)? {
        let Some(cohort) = cohort_of(sample) else { continue };
        let le = sample.label("le").ok_or_else(|| unexpected(query, "a bucket without an le label"))?;
        let bound: f64 = le.parse().map_err(|_| unexpected(query, format!("bucket bound le={le:?}")))?;
        let Some(count) = whole_count(query, &sample.value)? else { continue };
        let (finite, infinite) = buckets.get_mut(cohort);
        if bound == f64::INFINITY {
            *infinite = Some(count);
        } else if let Some(bound) = unit.whole_microseconds(bound) {
            // Two bounds in one whole microsecond (2.5 and 2) count the same requests.
            let kept = finite.entry(bound).or_insert(count);
            *kept = (*kept).max(count);
        } else {
            return Err(unexpected(query, format!("bucket bound le={le:?} is not {} >= 0", unit.name())));
        }
    }
    let mut histograms = PerCohort::<Option<LatencyHistogram>>::default();
    for cohort in Cohort::ALL {
        let (finite, infinite) = buckets.get(cohort);
        if finite.is_empty() {
            continue;
        }
        let bounds: Vec<u64> = finite.keys().copied().collect();
        // Extrapolation and rounding can leave a bucket a hair below the one before.
        let cumulative: Vec<u64> = finite
            .values()
            .scan(0u64, |running, &count| {
                *running = (*running).max(count);
                Some(*running)
            })
            .collect();
        let largest = cumulative.last().copied().unwrap_or(0);
        let total = infinite.unwrap_or(largest).max(largest);
        let histogram = LatencyHistogram::from_cumulative(&bounds, &cumulative, total)
            .map_err(|error| unexpected(query, error.to_string()))?;
        *histograms.get_mut(cohort) = Some(histogram);
    }
    Ok(histograms)
}

/// A [`latency_query`] answer body from `url` → one histogram per cohort, as the
/// Prometheus source reads it (public for `make bench`'s parse cost).
pub fn parse_latency_answer(
    url: &str,
    query: &str,
    body: &str,
) -> Result<PerCohort<Option<LatencyHistogram>>, SourceError> {
    latency_from_answer(query, &decode_answer(url, query, 200, body)?)
}

/// Both answers → the interval, with the Prometheus server as the one target.
pub(crate) fn interval_from_answers(
    server: &str,
    requests: PerCohort<ClassCounts>,
    latency: PerCohort<Option<LatencyHistogram>>,
) -> IntervalMetrics {
    let mut metrics = IntervalMetrics { contributing_targets: vec![server.to_string()], ..Default::default() };
    for cohort in Cohort::ALL {
        let interval = metrics.cohorts.get_mut(cohort);
        interval.requests = *requests.get(cohort);
        interval.latency = latency.get(cohort).clone();
    }
    metrics
}

/// A custom query's answer → one number: a scalar, or a vector of at most one sample.
pub(crate) fn single_value(query: &str, data: &QueryData) -> Result<Option<f64>, SourceError> {
    match data {
        QueryData::Scalar(value) => finite_value(query, value),
        QueryData::Vector(samples) => match samples.as_slice() {
            [] => Ok(None),
            [sample] => finite_value(query, &sample.value),
            more => Err(unexpected(query, format!("expected one series, got {}: aggregate it (e.g. sum)", more.len()))),
        },
        _ => Err(unexpected(query, "expected a scalar or an instant vector")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const URL: &str = "http://prometheus:9090/api/v1/query";
    const WINDOW: Duration = Duration::from_secs(60);

    fn decode(body: &str) -> QueryData {
        decode_answer(URL, "q", 200, body).unwrap()
    }

    #[test]
    fn queries_escape_the_deployment_and_state_the_window_exactly() {
        assert_eq!(
            requests_query("demo", WINDOW),
            "sum by (cohort, class) ((last_over_time(canary_requests_total{deployment=\"demo\"}[300000ms]) - \
             last_over_time(canary_requests_total{deployment=\"demo\"}[300000ms] offset 60000ms)) >= 0 or \
             last_over_time(canary_requests_total{deployment=\"demo\"}[300000ms]) < \
             last_over_time(canary_requests_total{deployment=\"demo\"}[300000ms] offset 60000ms))"
        );
        let latency = latency_query(r#"we"ird\"#, Duration::from_millis(1_500));
        assert!(latency.starts_with("sum by (cohort, le) ("), "{latency}");
        assert!(
            latency.contains(
                r#"last_over_time(canary_latency_us_bucket{deployment="we\"ird\\"}[300000ms] offset 1500ms)"#
            ),
            "{latency}"
        );
        assert_eq!(promql_duration(Duration::ZERO), "1ms");
        let template = r#"sum(rate(app_errors{deployment="{{deployment}}",cohort="{{cohort}}"}[{{window}}]))"#;
        assert_eq!(
            expand_template(template, "demo", Cohort::Canary, WINDOW),
            r#"sum(rate(app_errors{deployment="demo",cohort="canary"}[60000ms]))"#
        );
    }

    #[test]
    fn request_counts_are_rounded_per_cohort_and_class() {
        // Shape of a real Prometheus 2.42 answer: increase() extrapolates to fractions.
        let body = r#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"class":"2xx","cohort":"canary"},"value":[1700000000.5,"130.00000000000003"]},
            {"metric":{"class":"5xx","cohort":"canary"},"value":[1700000000.5,"20.4"]},
            {"metric":{"class":"reset","cohort":"canary"},"value":[1700000000.5,"4.6"]},
            {"metric":{"class":"2xx","cohort":"control"},"value":[1700000000.5,"1300"]},
            {"metric":{"class":"1xx","cohort":"control"},"value":[1700000000.5,"NaN"]},
            {"metric":{"class":"2xx","cohort":"mirror"},"value":[1700000000.5,"9"]},
            {"metric":{"class":"2xx","cohort":"excluded"},"value":[1700000000.5,"1"]}]}}"#;
        let requests = requests_from_answer("q", &decode(body)).unwrap();
        assert_eq!(requests.canary, ClassCounts { success: 130, server_error: 20, reset: 5, ..Default::default() });
        assert_eq!(requests.control, ClassCounts { success: 1_300, ..Default::default() });
        assert_eq!(requests.excluded.total(), 1);
    }

    #[test]
    fn buckets_become_histograms_and_are_made_monotone() {
        let body = r#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"cohort":"canary","le":"1000"},"value":[1,"10"]},
            {"metric":{"cohort":"canary","le":"+Inf"},"value":[1,"30.2"]},
            {"metric":{"cohort":"canary","le":"5000"},"value":[1,"25"]},
            {"metric":{"cohort":"canary","le":"2000"},"value":[1,"9.4"]},
            {"metric":{"cohort":"control","le":"1000"},"value":[1,"0"]},
            {"metric":{"cohort":"control","le":"2000"},"value":[1,"0"]},
            {"metric":{"cohort":"control","le":"5000"},"value":[1,"0"]},
            {"metric":{"cohort":"control","le":"+Inf"},"value":[1,"0"]}]}}"#;
        let histograms = latency_from_answer("q", &decode(body)).unwrap();
        let canary = histograms.canary.unwrap();
        assert_eq!(canary.upper_bounds_us(), &[1_000, 2_000, 5_000]);
        // le=2000 rounds to 9, below le=1000's 10: the running maximum keeps 10.
        assert_eq!(canary.bucket_counts(), &[10, 0, 15, 5]);
        assert_eq!(histograms.control.unwrap().total(), 0, "an empty histogram is data: zero observations");
        assert!(histograms.forced.is_none(), "no buckets is no data");
    }

    #[test]
    fn second_and_millisecond_buckets_become_microseconds_exactly() {
        // Istio's seconds histogram and Envoy's millisecond one, as Prometheus writes their bounds.
        let seconds = r#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"cohort":"canary","le":"0.005"},"value":[1,"3"]},
            {"metric":{"cohort":"canary","le":"0.025"},"value":[1,"7"]},
            {"metric":{"cohort":"canary","le":"2.5"},"value":[1,"9"]},
            {"metric":{"cohort":"canary","le":"+Inf"},"value":[1,"10"]}]}}"#;
        let histograms = latency_from_answer_in("q", &decode(seconds), LatencyUnit::Seconds).unwrap();
        let canary = histograms.canary.unwrap();
        assert_eq!(canary.upper_bounds_us(), &[5_000, 25_000, 2_500_000]);
        assert_eq!(canary.bucket_counts(), &[3, 4, 2, 1]);
        let milliseconds = r#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"cohort":"control","le":"0.5"},"value":[1,"1"]},
            {"metric":{"cohort":"control","le":"3.6e+06"},"value":[1,"4"]},
            {"metric":{"cohort":"control","le":"+Inf"},"value":[1,"4"]}]}}"#;
        let histograms = latency_from_answer_in("q", &decode(milliseconds), LatencyUnit::Milliseconds).unwrap();
        assert_eq!(histograms.control.unwrap().upper_bounds_us(), &[500, 3_600_000_000]);
        let negative = r#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"cohort":"control","le":"-1"},"value":[1,"1"]}]}}"#;
        let error = latency_from_answer_in("q", &decode(negative), LatencyUnit::Seconds).unwrap_err().to_string();
        assert!(error.contains(r#"le="-1" is not seconds >= 0"#), "{error}");
    }

    #[test]
    fn prometheus_errors_name_the_server_the_query_and_the_reason() {
        let body = r#"{"status":"error","errorType":"bad_data","error":"1:5: parse error: unexpected \"}\""}"#;
        let error = decode_answer(URL, "sum(}", 400, body).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(r#"prometheus at {URL} refused query "sum(}}": bad_data: 1:5: parse error: unexpected "}}""#)
        );
        let proxy = decode_answer(URL, "q", 502, "<html>bad gateway</html>").unwrap_err();
        assert_eq!(proxy.to_string(), format!("{URL} answered with status 502: <html>bad gateway</html>"));
        let garbage = decode_answer(URL, "q", 200, "not json").unwrap_err();
        assert!(matches!(garbage, SourceError::Json { .. }), "{garbage:?}");
        let matrix = decode(r#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#);
        let wrong = requests_from_answer("q", &matrix).unwrap_err();
        assert_eq!(wrong.to_string(), r#"unexpected prometheus result for query "q": expected an instant vector"#);
    }

    #[test]
    fn outcome_counts_are_read_per_cohort_and_outcome_and_events_capped_at_requests() {
        let query = outcome_query("demo", Duration::from_secs(30), true);
        assert!(query.starts_with("sum by (cohort, outcome) (("), "{query}");
        assert!(query.contains("canary_outcome_events_total{deployment=\"demo\"}[300000ms] offset 30000ms"), "{query}");
        // increase() extrapolates each counter on its own: 100 % hits can come back as 40.4 of 40.2.
        let requests = decode(
            r#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"cohort":"canary","outcome":"cache_hit"},"value":[1,"40.2"]},
            {"metric":{"cohort":"control","outcome":"cache_hit"},"value":[1,"119.6"]},
            {"metric":{"cohort":"control","outcome":"Bad-Name"},"value":[1,"5"]},
            {"metric":{"cohort":"canary"},"value":[1,"5"]}]}}"#,
        );
        let events = decode(
            r#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"cohort":"canary","outcome":"cache_hit"},"value":[1,"40.6"]},
            {"metric":{"cohort":"control","outcome":"cache_hit"},"value":[1,"107.5"]},
            {"metric":{"cohort":"control","outcome":"declined"},"value":[1,"NaN"]}]}}"#,
        );
        let outcomes = outcomes_from_answers(("r", &requests), ("e", &events)).unwrap();
        let hits = |cohort: Cohort| outcomes.get(cohort)["cache_hit"];
        assert_eq!((hits(Cohort::Canary).requests, hits(Cohort::Canary).events), (40, 40), "capped");
        assert_eq!((hits(Cohort::Control).requests, hits(Cohort::Control).events), (120, 108));
        assert_eq!(outcomes.control.len(), 1, "bad names and NaN are no data");
        let scalar = decode(r#"{"status":"success","data":{"resultType":"scalar","result":[1,"2"]}}"#);
        assert!(outcomes_from_answers(("r", &scalar), ("e", &events)).is_err());
    }

    #[test]
    fn counter_pair_counts_are_rounded_whole_and_never_negative() {
        let one = |value: &str| {
            decode(&format!(
                r#"{{"status":"success","data":{{"resultType":"vector","result":[{{"metric":{{}},"value":[1,"{value}"]}}]}}}}"#
            ))
        };
        assert_eq!(pair_count("q", &one("14.6")).unwrap(), Some(15));
        assert_eq!(pair_count("q", &one("0")).unwrap(), Some(0));
        assert_eq!(pair_count("q", &one("NaN")).unwrap(), None);
        let negative = pair_count("declines", &one("-3")).unwrap_err().to_string();
        assert!(negative.contains("declines") && negative.contains("a count >= 0"), "{negative}");
        let empty = decode(r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#);
        assert_eq!(pair_count("q", &empty).unwrap(), None);
    }

    #[test]
    fn custom_values_are_one_number_or_no_data() {
        let scalar = decode(r#"{"status":"success","data":{"resultType":"scalar","result":[1,"0.25"]}}"#);
        assert_eq!(single_value("q", &scalar).unwrap(), Some(0.25));
        let one = decode(
            r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"12.5"]}]}}"#,
        );
        assert_eq!(single_value("q", &one).unwrap(), Some(12.5));
        let empty = decode(r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#);
        assert_eq!(single_value("q", &empty).unwrap(), None);
        let nan =
            decode(r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"NaN"]}]}}"#);
        assert_eq!(single_value("q", &nan).unwrap(), None, "0/0 is no data, never NaN");
        let two = decode(
            r#"{"status":"success","data":{"resultType":"vector","result":[
                {"metric":{"pod":"a"},"value":[1,"1"]},{"metric":{"pod":"b"},"value":[1,"2"]}]}}"#,
        );
        assert!(single_value("q", &two).unwrap_err().to_string().contains("expected one series, got 2"));
    }

    #[test]
    fn the_interval_carries_the_server_as_its_one_target() {
        let mut requests = PerCohort::<ClassCounts>::default();
        requests.canary.success = 5;
        requests.canary.server_error = 1;
        let metrics = interval_from_answers("http://prom", requests, PerCohort::default());
        assert_eq!(metrics.interval_counts().canary.errors, 1);
        assert_eq!(metrics.contributing_targets, vec!["http://prom"]);
        assert!(metrics.latency(Cohort::Canary).is_none());
    }
}
