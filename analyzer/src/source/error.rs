//! Errors of the metric sources: each names what failed (the URL, the HTTP status,
//! the sample or JSON field that did not parse) so an operator can act on the log line.

use thiserror::Error;

/// Why a scrape target or a Prometheus query gave no usable answer.
#[derive(Debug, Error)]
pub enum SourceError {
    /// The HTTP client could not be built (e.g. TLS backend missing).
    #[error("cannot build the http client")]
    Client(#[source] reqwest::Error),
    /// The request did not complete: connection refused, timeout, broken body.
    #[error("request to {url} failed")]
    Request {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The body passed the cap (`--max-scrape-bytes`): declared or streamed.
    #[error("{url}: body exceeds {} limit (--max-scrape-bytes)", super::body::byte_size(*.limit))]
    BodyTooLarge { url: String, limit: u64 },
    /// The server answered with a non-success status.
    #[error("{url} answered with status {status}: {body}")]
    Status { url: String, status: u16, body: String },
    /// A target's answer (exposition text or Envoy's JSON stats) did not parse.
    #[error("cannot parse the stats from {url}")]
    Exposition {
        url: String,
        #[source]
        source: ExpositionError,
    },
    /// Prometheus answered with something that is not its query API's JSON.
    #[error("cannot decode the prometheus answer from {url}")]
    Json {
        url: String,
        #[source]
        source: serde_json::Error,
    },
    /// Prometheus refused the query (`"status": "error"`).
    #[error("prometheus at {url} refused query {query:?}: {error_type}: {message}")]
    Query { url: String, query: String, error_type: String, message: String },
    /// The query API answered, but not in the shape the query should produce.
    #[error("unexpected prometheus result for query {query:?}: {detail}")]
    UnexpectedResult { query: String, detail: String },
}

/// Why a target's answer (exposition text, or Envoy's JSON stats) could not be turned
/// into a snapshot.
#[derive(Debug, Error)]
pub enum ExpositionError {
    /// The text could not be read line by line.
    #[error("cannot read the exposition text")]
    Read(#[source] std::io::Error),
    /// A counter or bucket value is negative, infinite or NaN.
    #[error("{metric} has value {value}, expected a finite count >= 0")]
    BadValue { metric: String, value: f64 },
    /// A gauge's value lies outside what it can mean.
    #[error("{metric} has value {value}, expected {expected}")]
    OutOfRange { metric: String, value: f64, expected: &'static str },
    /// A latency bucket bound is not a finite, non-negative number of microseconds.
    #[error("{metric} has bucket bound le={bound}, expected microseconds >= 0")]
    BadBound { metric: String, bound: f64 },
    /// Envoy's JSON stats answer is not JSON.
    #[error("the answer is not json")]
    Json(#[source] serde_json::Error),
    /// A field of Envoy's JSON stats does not hold what Envoy writes there.
    #[error("{field} is {value}, expected {expected}")]
    JsonField { field: String, value: String, expected: &'static str },
    /// A histogram bin is not one of Envoy's log-linear bins (see `envoy_bins`).
    #[error(
        "{histogram} has a bin at lower_bound {lower_bound} of width {width}, expected one of Envoy's \
         log-linear bins (two significant digits)"
    )]
    NotAnEnvoyBin { histogram: String, lower_bound: f64, width: f64 },
}

/// An error and its chain of sources on one line (`outer: inner: innermost`), for
/// reports that must outlive the error value. Control characters a source quoted from
/// an answer (serde's unknown variants) are escaped.
pub(crate) fn describe(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    crate::policy::one_line(&text)
}
