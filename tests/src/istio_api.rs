//! Istio's own schemas for the Istio kinds shipped in istio/, and a validator that
//! applies them as the Kubernetes API server applies a CRD's structural schema.
//!
//! The schemas are the OpenAPI v3 schemas of **Istio 1.30.3**'s CRDs, every served
//! version, vendored in `tests/schemas/` (origin and licence in its README). A document
//! is checked against the entry for the `apiVersion` and `kind` it names.
//!
//! Checked, with the API server's semantics: types (`nullable`,
//! `x-kubernetes-int-or-string`; a null is pruned like an absent field), unknown fields
//! (an error, as `kubectl apply`'s default strict field validation reports them, except
//! under `x-kubernetes-preserve-unknown-fields`), `required`, `enum`, `minimum` /
//! `maximum`, lengths, item and property counts, `pattern`, `format: int32`, list
//! uniqueness (`x-kubernetes-list-type: set | map`) and `oneOf` / `anyOf` / `allOf` /
//! `not`.
//!
//! Not checked here, and reported instead so a test can account for each:
//! - the CEL rules (`x-kubernetes-validations`): there is no CEL interpreter here;
//!   [`Validation::unevaluated_rules`] lists the rules attached to paths the document has;
//! - values the schema leaves free-form (`x-kubernetes-preserve-unknown-fields`, e.g. a
//!   WasmPlugin's `pluginConfig`, an EnvoyFilter patch's `value`):
//!   [`Validation::free_form`] lists their paths;
//! - `metadata`: Kubernetes' ObjectMeta, not part of a CRD's schema; checked with
//!   Kubernetes' own schema by [`crate::kubernetes_api`].

use crate::repo_root;
use serde_json::Value as Json;
use serde_yaml_ng::Value as Yaml;
use std::collections::HashSet;

/// The vendored schema file, relative to the repository root.
pub const ISTIO_SCHEMAS: &str = "tests/schemas/istio-1.30.3-schemas.json";

/// The largest value of `format: int32`.
const INT32_RANGE: std::ops::RangeInclusive<i64> = (i32::MIN as i64)..=(i32::MAX as i64);

/// Whether a document claims an Istio API group.
pub fn is_istio(document: &Yaml) -> bool {
    document["apiVersion"].as_str().is_some_and(|v| v.split('/').next().is_some_and(|g| g.ends_with(".istio.io")))
}

/// What checking one document found.
#[derive(Debug, Default, Clone)]
pub struct Validation {
    /// Each a path and what is wrong there, e.g.
    /// `spec.http[0].route[0].destination.subsett: unknown field`. Empty when it conforms.
    pub errors: Vec<String>,
    /// Paths whose values the schema leaves free-form (not walked).
    pub free_form: Vec<String>,
    /// `path: rule` of each CEL rule the schema attaches to a path the document has.
    pub unevaluated_rules: Vec<String>,
}

/// The vendored schemas, keyed `group/version/Kind`.
#[derive(Debug)]
pub struct IstioSchemas {
    by_kind: serde_json::Map<String, Json>,
}

impl IstioSchemas {
    /// Loads `tests/schemas/istio-1.30.3-schemas.json`.
    pub fn load() -> IstioSchemas {
        let path = repo_root().join(ISTIO_SCHEMAS);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        match serde_json::from_str(&text) {
            Ok(Json::Object(by_kind)) => IstioSchemas { by_kind },
            other => panic!("{ISTIO_SCHEMAS}: expected an object keyed group/version/Kind, got {other:?}"),
        }
    }

    /// Every `group/version/Kind` the schemas cover.
    pub fn kinds(&self) -> Vec<&str> {
        self.by_kind.keys().map(String::as_str).collect()
    }

    /// Checks an Istio document (`apiVersion`, `kind`, `metadata`, `spec`) against the
    /// schema of the kind and version it names.
    pub fn validate(&self, document: &Yaml) -> Validation {
        let mut found = Validation::default();
        let json = match serde_json::to_value(document) {
            Ok(json) => json,
            Err(e) => {
                found.errors.push(format!("not representable as JSON: {e}"));
                return found;
            }
        };
        let api_version = json["apiVersion"].as_str().unwrap_or("");
        let kind = json["kind"].as_str().unwrap_or("");
        let key = format!("{api_version}/{kind}");
        let Some(schema) = self.by_kind.get(&key) else {
            let served: Vec<&str> = self.kinds().into_iter().filter(|k| k.ends_with(&format!("/{kind}"))).collect();
            found.errors.push(format!(
                "apiVersion/kind: {key:?} is not a kind of Istio 1.30.3's API; {kind} is served as {served:?}"
            ));
            return found;
        };
        let Json::Object(fields) = json else {
            found.errors.push("expected a mapping".to_string());
            return found;
        };
        // apiVersion, kind and metadata are the API server's, not the CRD schema's.
        let mut body = serde_json::Map::new();
        for (field, value) in fields {
            match field.as_str() {
                "apiVersion" | "kind" => {}
                "metadata" if value.is_object() => {}
                "metadata" => found.errors.push(format!("metadata: expected object, found {}", describe(&value))),
                _ => {
                    body.insert(field, value);
                }
            }
        }
        Walk { strict_fields: true, found: &mut found }.check(&Json::Object(body), schema, "");
        found
    }
}

fn join(path: &str, field: &str) -> String {
    if path.is_empty() { field.to_string() } else { format!("{path}.{field}") }
}

/// One walk of a value against a schema, collecting into `found`.
struct Walk<'a> {
    /// Unknown fields are errors; off inside `oneOf` and friends, whose alternatives
    /// only constrain values (a structural schema declares fields outside them).
    strict_fields: bool,
    found: &'a mut Validation,
}

impl Walk<'_> {
    fn error(&mut self, path: &str, message: String) {
        let path = if path.is_empty() { "(document)" } else { path };
        self.found.errors.push(format!("{path}: {message}"));
    }

    /// Whether `value` satisfies `schema` (for the combinators): no errors in a scratch walk.
    fn satisfies(value: &Json, schema: &Json, path: &str) -> bool {
        let mut scratch = Validation::default();
        Walk { strict_fields: false, found: &mut scratch }.check(value, schema, path);
        scratch.errors.is_empty()
    }

    fn check(&mut self, value: &Json, schema: &Json, path: &str) {
        if value.is_null() {
            // A null is pruned unless the schema is nullable; either way nothing to walk.
            return;
        }
        if self.strict_fields
            && let Some(rules) = schema["x-kubernetes-validations"].as_array()
        {
            for rule in rules {
                let text = rule["rule"].as_str().unwrap_or("?");
                self.found.unevaluated_rules.push(format!("{}: {text}", if path.is_empty() { "." } else { path }));
            }
        }
        if !self.type_matches(value, schema, path) {
            return;
        }
        self.check_value(value, schema, path);
        self.check_combinators(value, schema, path);
        match value {
            Json::Object(fields) => self.check_fields(fields, schema, path),
            Json::Array(items) => {
                if let Some(item_schema) = schema.get("items") {
                    for (i, item) in items.iter().enumerate() {
                        self.check(item, item_schema, &format!("{path}[{i}]"));
                    }
                }
            }
            _ => {}
        }
    }

    fn type_matches(&mut self, value: &Json, schema: &Json, path: &str) -> bool {
        let integer = value.as_i64().is_some() || value.as_u64().is_some();
        if schema["x-kubernetes-int-or-string"] == Json::Bool(true) {
            if integer || value.is_string() {
                return true;
            }
            self.error(path, format!("expected integer or string, found {}", describe(value)));
            return false;
        }
        let Some(expected) = schema["type"].as_str() else { return true };
        let matches = match expected {
            "object" => value.is_object(),
            "array" => value.is_array(),
            "string" => value.is_string(),
            "integer" => integer,
            "number" => value.is_number(),
            "boolean" => value.is_boolean(),
            _ => true,
        };
        if !matches {
            self.error(path, format!("expected {expected}, found {}", describe(value)));
        }
        matches
    }

    /// enum, bounds, lengths, counts, pattern, format, required, list uniqueness.
    fn check_value(&mut self, value: &Json, schema: &Json, path: &str) {
        if let Some(allowed) = schema["enum"].as_array()
            && !allowed.contains(value)
        {
            let allowed: Vec<String> = allowed.iter().map(Json::to_string).collect();
            self.error(path, format!("{value} is not one of [{}]", allowed.join(", ")));
        }
        if let Some(number) = value.as_f64() {
            if let Some(minimum) = schema["minimum"].as_f64()
                && number < minimum
            {
                self.error(path, format!("{value} is below the minimum {minimum}"));
            }
            if let Some(maximum) = schema["maximum"].as_f64()
                && number > maximum
            {
                self.error(path, format!("{value} is above the maximum {maximum}"));
            }
            if schema["format"] == "int32" && value.as_i64().is_none_or(|n| !INT32_RANGE.contains(&n)) {
                self.error(path, format!("{value} is not an int32"));
            }
        }
        let length = match value {
            Json::String(s) => Some((s.chars().count(), "Length", "characters")),
            Json::Array(a) => Some((a.len(), "Items", "items")),
            Json::Object(o) => Some((o.len(), "Properties", "fields")),
            _ => None,
        };
        if let Some((length, keyword, unit)) = length {
            if let Some(min) = schema[format!("min{keyword}")].as_u64()
                && (length as u64) < min
            {
                self.error(path, format!("{length} {unit}, fewer than the minimum {min}"));
            }
            if let Some(max) = schema[format!("max{keyword}")].as_u64()
                && (length as u64) > max
            {
                self.error(path, format!("{length} {unit}, more than the maximum {max}"));
            }
        }
        if let (Some(text), Some(pattern)) = (value.as_str(), schema["pattern"].as_str()) {
            match regex::Regex::new(pattern) {
                Ok(re) if re.is_match(text) => {}
                Ok(_) => self.error(path, format!("{value} does not match the pattern {pattern:?}")),
                Err(e) => self.error(path, format!("the schema's pattern {pattern:?} does not compile here: {e}")),
            }
        }
        if let (Some(fields), Some(required)) = (value.as_object(), schema["required"].as_array()) {
            for name in required.iter().filter_map(Json::as_str) {
                if fields.get(name).is_none_or(Json::is_null) {
                    self.error(&join(path, name), "required field missing".to_string());
                }
            }
        }
        if let Some(items) = value.as_array() {
            let keys: Option<Vec<&str>> = match schema["x-kubernetes-list-type"].as_str() {
                Some("map") => {
                    schema["x-kubernetes-list-map-keys"].as_array().map(|k| k.iter().filter_map(Json::as_str).collect())
                }
                Some("set") => Some(Vec::new()),
                _ => None,
            };
            if let Some(keys) = keys {
                let mut seen = HashSet::new();
                for (i, item) in items.iter().enumerate() {
                    let identity = if keys.is_empty() {
                        item.to_string()
                    } else {
                        keys.iter().map(|k| item[*k].to_string()).collect::<Vec<_>>().join("/")
                    };
                    if !seen.insert(identity.clone()) {
                        self.error(
                            &format!("{path}[{i}]"),
                            format!("duplicate entry {identity} in a list of unique entries"),
                        );
                    }
                }
            }
        }
    }

    fn check_combinators(&mut self, value: &Json, schema: &Json, path: &str) {
        if let Some(alternatives) = schema["oneOf"].as_array() {
            let matched = alternatives.iter().filter(|s| Self::satisfies(value, s, path)).count();
            if matched != 1 {
                self.error(
                    path,
                    format!(
                        "matches {matched} of oneOf's {} alternatives, expected exactly 1{}",
                        alternatives.len(),
                        exclusive_fields_hint(alternatives)
                    ),
                );
            }
        }
        if let Some(alternatives) = schema["anyOf"].as_array()
            && !alternatives.iter().any(|s| Self::satisfies(value, s, path))
        {
            self.error(path, format!("matches none of anyOf's {} alternatives", alternatives.len()));
        }
        if let Some(all) = schema["allOf"].as_array() {
            for (i, part) in all.iter().enumerate() {
                if !Self::satisfies(value, part, path) {
                    self.error(path, format!("does not satisfy allOf[{i}]"));
                }
            }
        }
        if let Some(forbidden) = schema.get("not")
            && Self::satisfies(value, forbidden, path)
        {
            self.error(path, "matches a schema under `not`".to_string());
        }
    }

    fn check_fields(&mut self, fields: &serde_json::Map<String, Json>, schema: &Json, path: &str) {
        let preserve_unknown = schema["x-kubernetes-preserve-unknown-fields"] == Json::Bool(true);
        let properties = schema["properties"].as_object();
        if preserve_unknown && properties.is_none() {
            if self.strict_fields {
                self.found.free_form.push(if path.is_empty() { ".".to_string() } else { path.to_string() });
            }
            return;
        }
        for (name, value) in fields {
            let field_path = join(path, name);
            if let Some(field_schema) = properties.and_then(|p| p.get(name)) {
                self.check(value, field_schema, &field_path);
            } else if let Some(value_schema) = schema.get("additionalProperties").filter(|s| s.is_object()) {
                self.check(value, value_schema, &field_path);
            } else if preserve_unknown {
                if self.strict_fields {
                    self.found.free_form.push(field_path);
                }
            } else if self.strict_fields && (properties.is_some() || schema["type"] == "object") {
                self.error(&field_path, "unknown field".to_string());
            }
        }
    }
}

/// Istio writes "at most one of these fields" as `oneOf: [not anyOf required..., required a,
/// required b, ...]`: name the fields, which says more than the alternative count.
fn exclusive_fields_hint(alternatives: &[Json]) -> String {
    let fields: Vec<&str> =
        alternatives.iter().filter_map(|a| a["required"].as_array()).flatten().filter_map(Json::as_str).collect();
    if fields.is_empty() { String::new() } else { format!(" (at most one of {})", fields.join(", ")) }
}

fn describe(value: &Json) -> String {
    match value {
        Json::Null => "null".to_string(),
        Json::Bool(_) => format!("boolean {value}"),
        Json::Number(_) => format!("number {value}"),
        Json::String(_) => format!("string {value}"),
        Json::Array(_) => "array".to_string(),
        Json::Object(_) => "object".to_string(),
    }
}
