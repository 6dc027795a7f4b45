//! Which kind of metric source the engine reads, for the API's `GET /v1/source`
//! (`register --dry-run` warns about metrics that source cannot read).

use super::{Engine, SourceSettings};

impl Engine {
    /// Whether metrics come from a Prometheus server (`--prometheus`) rather than
    /// Envoy admin endpoints: only then can PromQL metrics be read.
    pub fn reads_prometheus(&self) -> bool {
        matches!(self.source, SourceSettings::Prometheus { .. })
    }
}
