//! Property tests of the Prometheus query API's JSON (`api`): what a
//! Prometheus server, or a proxy in front of it, answers. Kept apart from
//! `api.rs` (crate-private functions, so inside the crate) so the two
//! files change independently. No panic, an error naming the query or the status on
//! one line, and the numbers read back as written.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use canary_core::Cohort;
use canary_core::metrics::StatusClass;
use proptest::prelude::*;
use serde_json::{Value, json};

use super::api::{decode_answer, latency_from_answer, requests_from_answer, single_value};
use crate::source::error::SourceError;

const URL: &str = "http://127.0.0.1:9090/api/v1/query";
const QUERY: &str = "sum by (cohort, class) (increase(canary_requests_total[60000ms]))";

/// Cases per property unless `PROPTEST_CASES` says otherwise: ~1 s each in debug.
fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(128);
    ProptestConfig { cases, ..ProptestConfig::default() }
}

/// A hang detector: answers here are at most a few KiB and decode in well under 10 ms.
const CASE_CPU_BOUND: Duration = Duration::from_secs(2);

fn bounded<T>(what: &str, work: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let out = work();
    assert!(started.elapsed() < CASE_CPU_BOUND, "{what} took {:?}", started.elapsed());
    out
}

fn is_one_line(text: &str) -> bool {
    !text.chars().any(char::is_control)
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![any::<String>(), "[a-z`\"\\\\;=,:. \n\r\t\x1b{}<>/-]{0,16}"]
}

/// A sample value as Prometheus writes it (a string), valid or not.
fn sample_value() -> BoxedStrategy<Value> {
    prop_oneof![
        6 => (0u64..1_000_000).prop_map(|v| Value::from(v.to_string())),
        3 => (0.0f64..1e6).prop_map(|v| Value::from(v.to_string())),
        1 => prop::sample::select(vec!["NaN", "+Inf", "-Inf", "-5", "1e400", "1e300", "-0", "0x10", "", " 1"])
            .prop_map(Value::from),
        1 => text().prop_map(Value::from),
        1 => Just(json!(5)),
    ]
    .boxed()
}

fn label(values: Vec<&'static str>) -> BoxedStrategy<Option<String>> {
    proptest::option::weighted(
        0.95,
        prop_oneof![6 => prop::sample::select(values).prop_map(str::to_string), 1 => text()],
    )
    .boxed()
}

fn sample() -> BoxedStrategy<Value> {
    let le = prop_oneof![
        6 => prop::sample::select(vec!["1000", "2000", "5000", "+Inf", "25000"]).prop_map(str::to_string),
        1 => prop::sample::select(vec!["0.5", "-1", "NaN", "-Inf", "1e20", "18446744073709551616", "1e400"])
            .prop_map(str::to_string),
        1 => text(),
    ];
    (
        label(vec!["canary", "control", "forced", "excluded", "mirror"]),
        label(vec!["1xx", "2xx", "3xx", "4xx", "5xx", "reset", "6xx"]),
        proptest::option::weighted(0.8, le),
        any::<f64>().prop_filter("JSON numbers are finite", |t| t.is_finite()),
        sample_value(),
    )
        .prop_map(|(cohort, class, le, time, value)| {
            let mut metric = serde_json::Map::new();
            for (key, value) in [("cohort", cohort), ("class", class), ("le", le)] {
                if let Some(value) = value {
                    metric.insert(key.into(), Value::from(value));
                }
            }
            json!({ "metric": metric, "value": [time, value] })
        })
        .boxed()
}

/// An answer as Prometheus (or a proxy, or another server) might send it.
fn answer() -> BoxedStrategy<Value> {
    prop_oneof![
        6 => prop::collection::vec(sample(), 0..12)
            .prop_map(|result| json!({"status": "success", "data": {"resultType": "vector", "result": result}})),
        1 => sample_value().prop_map(|v| json!({"status": "success", "data": {"resultType": "scalar", "result": [1, v]}})),
        1 => Just(json!({"status": "success", "data": {"resultType": "matrix", "result": [{"metric": {}, "values": []}]}})),
        1 => Just(json!({"status": "success", "data": {"resultType": "string", "result": [1, "x"]}})),
        1 => Just(json!({"status": "success"})),
        1 => (text(), text()).prop_map(|(t, e)| json!({"status": "error", "errorType": t, "error": e})),
        1 => text().prop_map(|s| json!({"status": s, "data": {"resultType": "vector", "result": []}})),
    ]
    .boxed()
}

fn check_error(error: &SourceError) -> Result<(), TestCaseError> {
    let line = crate::source::describe(error);
    prop_assert!(is_one_line(&line), "error is not one line: {line:?}");
    prop_assert!(line.contains(URL) || line.contains(QUERY), "names neither the server nor the query: {line}");
    Ok(())
}

/// Every reading of a decoded answer: no panic, errors name the query, values are sane.
fn read_every_way(body: &str, status: u16) -> Result<(), TestCaseError> {
    let data = match bounded("decode_answer", || decode_answer(URL, QUERY, status, body)) {
        Ok(data) => data,
        Err(error) => return check_error(&error),
    };
    match requests_from_answer(QUERY, &data) {
        Ok(_) => {}
        Err(error) => check_error(&error)?,
    }
    match latency_from_answer(QUERY, &data) {
        Ok(histograms) => {
            for (_, histogram) in histograms.iter() {
                if let Some(histogram) = histogram {
                    prop_assert!(histogram.upper_bounds_us().windows(2).all(|w| w[0] < w[1]));
                    prop_assert_eq!(histogram.bucket_counts().len(), histogram.upper_bounds_us().len() + 1);
                }
            }
        }
        Err(error) => check_error(&error)?,
    }
    match single_value(QUERY, &data) {
        Ok(value) => prop_assert!(value.is_none_or(f64::is_finite)),
        Err(error) => check_error(&error)?,
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn generated_answers_are_read_or_refused_by_query(answer in answer(), status in prop_oneof![Just(200u16), 100u16..600]) {
        read_every_way(&serde_json::to_string(&answer).unwrap(), status)?;
    }

    /// Well-formed request counts come back rounded, per cohort and class, last one winning.
    #[test]
    fn request_counts_are_read_back(
        counts in prop::collection::btree_map((0..Cohort::ALL.len(), 0..StatusClass::ALL.len()), 0.0f64..1e12, 0..24),
    ) {
        let result: Vec<Value> = counts
            .iter()
            .map(|(&(cohort, class), value)| {
                let metric = json!({"cohort": Cohort::ALL[cohort].label(), "class": StatusClass::ALL[class].label()});
                json!({"metric": metric, "value": [1_700_000_000.5, value.to_string()]})
            })
            .collect();
        let body = json!({"status": "success", "data": {"resultType": "vector", "result": result}}).to_string();
        let requests = requests_from_answer(QUERY, &decode_answer(URL, QUERY, 200, &body).unwrap()).unwrap();
        let read: BTreeMap<(usize, usize), u64> = counts
            .keys()
            .map(|&(cohort, class)| ((cohort, class), requests.get(Cohort::ALL[cohort]).get(StatusClass::ALL[class])))
            .collect();
        let expected: BTreeMap<(usize, usize), u64> = counts.iter().map(|(k, v)| (*k, v.round() as u64)).collect();
        prop_assert_eq!(read, expected);
    }

    #[test]
    fn mutated_answers_and_arbitrary_bodies_never_panic(
        answer in answer(),
        cut in any::<prop::sample::Index>(),
        noise in text(),
        status in prop_oneof![Just(200u16), Just(502u16), 100u16..600],
    ) {
        let body = serde_json::to_string(&answer).unwrap();
        let at = body.char_indices().map(|(i, _)| i).nth(cut.index(body.chars().count().max(1))).unwrap_or(0);
        read_every_way(&format!("{}{noise}", &body[..at]), status)?;
        read_every_way(&noise, status)?;
    }
}

/// Found by `mutated_answers_and_arbitrary_bodies_never_panic`: a proxy's error page
/// (`502`, an HTML body over several lines) was quoted raw in the error, splitting the
/// failure reason the log, the status API and the dashboard show.
#[test]
fn regression_a_proxy_error_page_is_reported_on_one_line() {
    let page = "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\x1b[31mbad</body>\r\n</html>\n";
    let error = decode_answer(URL, QUERY, 502, page).unwrap_err();
    let line = crate::source::describe(&error);
    assert!(is_one_line(&line) && is_one_line(&error.to_string()), "{line:?}");
    assert!(line.contains(r"502 Bad Gateway</title></head>\r\n<body>"), "{line}");
}

/// Found by `generated_answers_are_read_or_refused_by_query`: Prometheus' `errorType` and
/// `error` (and serde's message for an unknown `resultType`) were quoted raw.
#[test]
fn regression_prometheus_errors_are_reported_on_one_line() {
    let refused = r#"{"status":"error","errorType":"\u001b[2J","error":"1:5: parse error\nunexpected"}"#;
    let odd = r#"{"status":"success","data":{"resultType":"vec\ntor","result":[]}}"#;
    for body in [refused, odd] {
        let error = decode_answer(URL, QUERY, 200, body).unwrap_err();
        let line = crate::source::describe(&error);
        assert!(is_one_line(&line) && is_one_line(&error.to_string()), "{line:?}");
    }
}
