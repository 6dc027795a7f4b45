//! Kubernetes' own schemas for its kinds (Deployment, Service, PersistentVolumeClaim,
//! ConfigMap, Secret, Namespace, ServiceAccount, and ObjectMeta for every kind):
//! the PyPI package `kubernetes-validate` (pinned in scripts/install-deps.sh) ships the
//! JSON schemas generated from Kubernetes' OpenAPI and, with `--strict`, rejects any
//! field they do not define, as `kubectl apply`'s strict field validation does.
//!
//! Each document is written to a file of its own, named after where it came from, and
//! one `kubernetes-validate --strict` run per Kubernetes version checks them all: a
//! run starts a Python interpreter and loads the schemas, ~1 s.

use serde_yaml_ng::Value as Yaml;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

/// The validator's command: `$KUBERNETES_VALIDATE`, or `kubernetes-validate` on PATH.
pub fn kubernetes_validate_command() -> String {
    std::env::var("KUBERNETES_VALIDATE").unwrap_or_else(|_| "kubernetes-validate".to_string())
}

/// The Kubernetes versions checked: 1.32, the oldest release Istio 1.30 is listed as
/// supporting, and 1.37, the newest whose schemas kubernetes-validate 1.37.0 ships.
/// A field added after 1.32 fails the first; one removed by 1.37 the second.
pub const KUBERNETES_VERSIONS: [&str; 2] = ["1.32.0", "1.37.0"];

/// One document to check, and what to call it in messages (e.g. `istio/app.yaml#1`).
#[derive(Debug, Clone)]
pub struct Named {
    pub origin: String,
    pub value: Yaml,
}

/// Validates every document strictly against Kubernetes `version`'s schemas. Returns,
/// per origin, `Ok(())` or the validator's complaint. A document the validator has no
/// schema for is an error too: it was not checked.
pub fn validate_strictly(documents: &[Named], version: &str) -> BTreeMap<String, Result<(), String>> {
    let dir = scratch_dir(version);
    let mut files = BTreeMap::new();
    for (i, document) in documents.iter().enumerate() {
        let file = dir.join(format!("{i:03}.yaml"));
        let text = serde_yaml_ng::to_string(&document.value).expect("a parsed document serializes");
        std::fs::write(&file, text).unwrap_or_else(|e| panic!("writing {}: {e}", file.display()));
        files.insert(file.to_string_lossy().into_owned(), document.origin.clone());
    }
    let out = Command::new(kubernetes_validate_command())
        .args(["--strict", "--kubernetes-version", version])
        .args(files.keys())
        .output()
        .unwrap_or_else(|e| {
            panic!("running {}: {e} (scripts/install-deps.sh installs it from PyPI)", kubernetes_validate_command())
        });
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let mut results: BTreeMap<String, Result<(), String>> = BTreeMap::new();
    for line in text.lines() {
        // `LEVEL FILE message`, one line per document.
        let mut parts = line.splitn(3, ' ');
        let (Some(level), Some(file), Some(message)) = (parts.next(), parts.next(), parts.next()) else { continue };
        let Some(origin) = files.get(file) else { continue };
        let result = if level == "INFO" && message.starts_with("passed") { Ok(()) } else { Err(message.to_string()) };
        // A file's first failure wins over a later line about it.
        let entry = results.entry(origin.clone()).or_insert(Ok(()));
        if entry.is_ok() {
            *entry = result;
        }
    }
    for origin in files.values() {
        results.entry(origin.clone()).or_insert_with(|| Err(format!("no verdict from the validator:\n{text}")));
    }
    let _ = std::fs::remove_dir_all(&dir);
    results
}

fn scratch_dir(version: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("wasm-canary-k8s-{}-{n}-{version}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}

/// A ConfigMap carrying `document`'s metadata, so ObjectMeta of a kind Kubernetes has no
/// schema for (an Istio CRD) is checked against Kubernetes' own ObjectMeta.
pub fn metadata_as_config_map(document: &Yaml) -> Yaml {
    let mut carrier = serde_yaml_ng::Mapping::new();
    carrier.insert("apiVersion".into(), "v1".into());
    carrier.insert("kind".into(), "ConfigMap".into());
    carrier.insert("metadata".into(), document["metadata"].clone());
    Yaml::Mapping(carrier)
}
