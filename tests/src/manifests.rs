//! The shipped YAML (istio/, istio-gateway-many/, envoy/, examples/ci/): every file, every document in
//! it, and the two ways the filter's configuration is written there — Envoy's
//! `configuration` string and Istio's `pluginConfig` — turned into the JSON the
//! filter receives, so tests can hand it to `canary_core::FilterConfig::parse`.

use crate::repo_root;
use serde::Deserialize;
use serde_json::Value as Json;
use serde_yaml_ng::Value as Yaml;
use std::path::{Path, PathBuf};

/// The directories whose YAML is shipped and checked.
pub const SHIPPED_DIRS: [&str; 4] = ["istio", "istio-gateway-many", "envoy", "examples/ci"];

/// One YAML document of a shipped file.
#[derive(Debug, Clone)]
pub struct Document {
    /// Relative to the repository root, e.g. `istio/routing.yaml`.
    pub file: String,
    /// Position in the file, from 0.
    pub index: usize,
    pub value: Yaml,
}

impl Document {
    /// `file#index`, for messages.
    pub fn origin(&self) -> String {
        format!("{}#{}", self.file, self.index)
    }

    /// `kind` of a Kubernetes-style document, "" when absent.
    pub fn kind(&self) -> &str {
        self.value["kind"].as_str().unwrap_or("")
    }

    pub fn name(&self) -> &str {
        self.value["metadata"]["name"].as_str().unwrap_or("")
    }
}

/// Every `.yaml`/`.yml` file under `dir` (relative to the repository root), sorted.
pub fn yaml_files(dir: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![repo_root().join(dir)];
    while let Some(dir) = pending.pop() {
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// The documents of a (possibly multi-document) YAML text; empty documents are skipped.
pub fn parse_documents(text: &str) -> Result<Vec<Yaml>, serde_yaml_ng::Error> {
    let mut documents = Vec::new();
    for document in serde_yaml_ng::Deserializer::from_str(text) {
        let value = Yaml::deserialize(document)?;
        if !value.is_null() {
            documents.push(value);
        }
    }
    Ok(documents)
}

fn relative(path: &Path) -> String {
    let root = repo_root().canonicalize().expect("repository root");
    let path = path.canonicalize().expect("shipped file");
    path.strip_prefix(&root).expect("under the repository").to_string_lossy().into_owned()
}

/// Every document of every shipped YAML file; panics naming the file that does not parse.
pub fn shipped_documents() -> Vec<Document> {
    let mut documents = Vec::new();
    for dir in SHIPPED_DIRS {
        for path in yaml_files(dir) {
            let file = relative(&path);
            let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {file}: {e}"));
            let values = parse_documents(&text).unwrap_or_else(|e| panic!("{file} is not valid YAML: {e}"));
            documents.extend(values.into_iter().enumerate().map(|(index, value)| Document {
                file: file.clone(),
                index,
                value,
            }));
        }
    }
    documents
}

/// An Envoy bootstrap: a document with `static_resources`.
pub fn is_envoy_config(document: &Document) -> bool {
    !document.value["static_resources"].is_null()
}

/// Every wasm HTTP filter config (`typed_config.config`) anywhere in an Envoy document.
pub fn wasm_filter_configs(value: &Yaml) -> Vec<&Yaml> {
    let mut found = Vec::new();
    collect_wasm_filters(value, &mut found);
    found
}

fn collect_wasm_filters<'a>(value: &'a Yaml, found: &mut Vec<&'a Yaml>) {
    match value {
        Yaml::Mapping(map) => {
            if value["name"].as_str() == Some("envoy.filters.http.wasm") {
                found.push(&value["typed_config"]["config"]);
            }
            map.values().for_each(|v| collect_wasm_filters(v, found));
        }
        Yaml::Sequence(items) => items.iter().for_each(|v| collect_wasm_filters(v, found)),
        _ => {}
    }
}

/// YAML → JSON as Istio hands `pluginConfig` to the filter: it is a protobuf `Struct`,
/// whose numbers are doubles, written back to JSON with whole numbers printed without
/// a fraction (protobuf's JSON encoding, like Go's, prints 5000.0 as `5000`). A value
/// that does not survive that trip (a fraction where the filter wants an integer, a
/// number too large for a double) fails the filter's parser here as it would in Istio.
pub fn istio_struct_json(value: &Yaml) -> Json {
    match value {
        Yaml::Null => Json::Null,
        Yaml::Bool(b) => Json::Bool(*b),
        Yaml::Number(n) => {
            let double = n.as_f64().expect("a YAML number is a double");
            // Below 2^53 every whole double is printed as an integer.
            const EXACT_INTEGER_LIMIT: f64 = 9_007_199_254_740_992.0;
            if double.fract() == 0.0 && double.abs() < EXACT_INTEGER_LIMIT {
                #[allow(clippy::cast_possible_truncation)]
                Json::from(double as i64)
            } else {
                serde_json::Number::from_f64(double).map_or(Json::Null, Json::Number)
            }
        }
        Yaml::String(s) => Json::String(s.clone()),
        Yaml::Sequence(items) => Json::Array(items.iter().map(istio_struct_json).collect()),
        Yaml::Mapping(map) => Json::Object(
            map.iter()
                .map(|(k, v)| (k.as_str().expect("pluginConfig keys are strings").to_string(), istio_struct_json(v)))
                .collect(),
        ),
        Yaml::Tagged(tagged) => istio_struct_json(&tagged.value),
    }
}

/// Asserts that an Envoy `stats_config` (as JSON) carries exactly the code's stats tags
/// and latency buckets, so labelled per-cohort metrics come out wherever it ships.
pub fn assert_stats_config_matches_the_code(stats_config: &Json) {
    use canary_core::metrics::{LATENCY_BUCKETS_US, STATS_TAGS};
    let tags: Vec<(String, String)> = stats_config["stats_tags"]
        .as_array()
        .expect("stats_tags is a list")
        .iter()
        .map(|t| (t["tag_name"].as_str().unwrap_or("").to_string(), t["regex"].as_str().unwrap_or("").to_string()))
        .collect();
    let expected: Vec<(String, String)> = STATS_TAGS.iter().map(|(n, r)| (n.to_string(), r.to_string())).collect();
    assert_eq!(tags, expected, "stats_tags");
    let buckets: Vec<u64> = stats_config["histogram_bucket_settings"][0]["buckets"]
        .as_array()
        .expect("histogram buckets are a list")
        .iter()
        .map(|b| b.as_u64().expect("bucket bounds are whole microseconds"))
        .collect();
    assert_eq!(buckets, LATENCY_BUCKETS_US, "latency buckets");
}
