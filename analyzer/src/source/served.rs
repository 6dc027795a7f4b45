//! Which deployments a proxy exports, asked only of a proxy that exports none of the
//! wanted deployment's series: the likeliest newcomer mistake is a deployment id in the
//! policy that differs from the one in the filter's configuration, and naming the ids
//! the proxy does export shows the typo. Pure: the filter regex and the two answer forms.
//!
//! The question reads one gauge per deployment (`applied_generation`, defined by the
//! filter for every deployment it serves), so it stays small on a gateway that serves
//! hundreds; it is never asked of a proxy that serves the deployment.

use std::collections::BTreeSet;

use canary_core::metrics::APPLIED_GENERATION;
use serde_json::Value;

use super::error::ExpositionError;

/// The full stat name around a deployment id: `wasmcustom.canary.deployment.<id>.applied_generation`.
const STAT_PREFIX: &str = "wasmcustom.canary.deployment.";
const STAT_SUFFIX: &str = ".applied_generation";

/// The regex for Envoy's `filter` parameter: every deployment's applied-generation gauge.
pub fn served_filter() -> &'static str {
    r"^wasmcustom\.canary\.deployment\.[^.]+\.applied_generation$"
}

/// The deployment ids in an answer to [`served_filter`], sorted, without duplicates:
/// Envoy's JSON (`{"stats": [{"name", "value"}]}`) or exposition text
/// (`canary_applied_generation{deployment="id"} 3`). Other stats are ignored, so an
/// answer without the filter applied reads the same.
pub fn served_deployments(body: &str) -> Result<Vec<String>, ExpositionError> {
    let mut ids = BTreeSet::new();
    if body.trim_start().starts_with('{') {
        let answer: Value = serde_json::from_str(body).map_err(ExpositionError::Json)?;
        let names = answer.get("stats").and_then(Value::as_array).into_iter().flatten();
        for name in names.filter_map(|entry| entry.get("name").and_then(Value::as_str)) {
            if let Some(id) = name.strip_prefix(STAT_PREFIX).and_then(|rest| rest.strip_suffix(STAT_SUFFIX)) {
                ids.insert(id.to_string());
            }
        }
    } else {
        for line in body.lines().filter(|line| line.starts_with(APPLIED_GENERATION)) {
            if let Some(id) = label_value(line, "deployment") {
                ids.insert(id.to_string());
            }
        }
    }
    Ok(ids.into_iter().collect())
}

/// The value of `label` in a sample line (`name{a="x",label="y"} 1`), unescaped ids only
/// (deployment ids are `[A-Za-z0-9_-]`).
fn label_value<'a>(line: &'a str, label: &str) -> Option<&'a str> {
    let labels = line.split_once('{')?.1.split_once('}')?.0;
    labels.split(',').find_map(|pair| pair.trim().strip_prefix(label)?.strip_prefix("=\"")?.strip_suffix('"'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_every_deployment_in_envoys_json() {
        let body = r#"{"stats":[{"name":"wasmcustom.canary.deployment.checkout.applied_generation","value":3},
            {"name":"wasmcustom.canary.deployment.cart-2.applied_generation","value":0},
            {"name":"wasmcustom.canary.deployment.checkout.applied_generation","value":3},
            {"name":"server.uptime","value":10}]}"#;
        assert_eq!(served_deployments(body).unwrap(), ["cart-2", "checkout"]);
        assert_eq!(served_deployments(r#"{"stats":[]}"#).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn names_every_deployment_in_exposition_text() {
        let body = "# TYPE canary_applied_generation gauge\n\
                    canary_applied_generation{deployment=\"checkout\"} 3\n\
                    canary_applied_generation{other=\"x\",deployment=\"cart\"} 1\n\
                    canary_requests_total{deployment=\"ignored\",cohort=\"canary\",class=\"2xx\"} 1\n";
        assert_eq!(served_deployments(body).unwrap(), ["cart", "checkout"]);
    }

    #[test]
    fn bad_json_is_an_error_not_an_empty_list() {
        assert!(served_deployments("{not json").is_err());
    }
}
