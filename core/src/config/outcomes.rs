//! The `outcomes` list of the plugin configuration: raw JSON in, validated
//! [`OutcomeRules`] out (the rules themselves live in `crate::outcome`).
//!
//! The list is read into [`Json`], a small JSON value of its own, and checked key by
//! key, so every refusal names `outcomes[i].<key>`, wrong types and unknown keys
//! included (serde's messages for those name no position). `serde_json::Value` would
//! do the same but brings its map, printer and float formatting into the wasm module.

use super::{ConfigError, header_name};
use crate::outcome::{MAX_OUTCOMES, OutcomeMatch, OutcomeRule, OutcomeRules, is_valid_outcome_name};
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use std::fmt;

/// What an outcome name must look like, for error messages.
const NAME_RULE: &str = "a name from [a-z][a-z0-9_]{0,31} (it becomes the `outcome` label), e.g. \"cache_hit\"";

/// The keys of a rule, for the unknown-key error.
const KEYS: &str = "one of `name`, `response_header`, `equals`, `above`, `status`, `path_prefix`, `methods`";

/// Longest string quoted in an error: enough to recognise it, one short log line.
const SHOWN_CHARS: usize = 60;

/// Below 2^53 every whole f64 is an exact integer and prints as one.
const EXACT_INTEGER_LIMIT: f64 = 9_007_199_254_740_992.0;

/// A JSON value as the outcome rules read it. Objects keep their keys in order,
/// repeats included; numbers are f64 (JSON's own model; whole numbers below 2^53 exact).
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Json {
    Null,
    Bool(bool),
    Number(f64),
    Text(String),
    List(Vec<Json>),
    Object(Vec<(String, Json)>),
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Json, D::Error> {
        deserializer.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }

    fn visit_none<E>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }

    fn visit_bool<E>(self, b: bool) -> Result<Json, E> {
        Ok(Json::Bool(b))
    }

    fn visit_u64<E>(self, n: u64) -> Result<Json, E> {
        Ok(Json::Number(n as f64))
    }

    fn visit_i64<E>(self, n: i64) -> Result<Json, E> {
        Ok(Json::Number(n as f64))
    }

    fn visit_f64<E>(self, n: f64) -> Result<Json, E> {
        Ok(Json::Number(n))
    }

    fn visit_str<E>(self, s: &str) -> Result<Json, E> {
        Ok(Json::Text(s.to_string()))
    }

    fn visit_string<E>(self, s: String) -> Result<Json, E> {
        Ok(Json::Text(s))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::List(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            entries.push((key, map.next_value()?));
        }
        Ok(Json::Object(entries))
    }
}

impl Json {
    /// The value as an error shows it, on one line: strings quoted and cut at
    /// [`SHOWN_CHARS`], whole numbers as integers, lists and objects by their size.
    fn shown(&self) -> String {
        match self {
            Json::Null => "null".to_string(),
            Json::Bool(b) => b.to_string(),
            Json::Number(n) if n.fract() == 0.0 && n.abs() < EXACT_INTEGER_LIMIT => format!("{}", *n as i64),
            Json::Number(_) => "(a number with a fraction)".to_string(),
            Json::Text(s) => quoted(s),
            Json::List(items) => format!("(a list of {})", items.len()),
            Json::Object(entries) => format!("(an object of {} keys)", entries.len()),
        }
    }
}

/// A string as an error shows it: quoted and escaped, cut at [`SHOWN_CHARS`].
fn quoted(text: &str) -> String {
    if text.chars().count() <= SHOWN_CHARS {
        return format!("{text:?}");
    }
    format!("{:?}...", text.chars().take(SHOWN_CHARS).collect::<String>())
}

/// Validates the `outcomes` list into rules.
pub(super) fn validate(value: Json) -> Result<OutcomeRules, ConfigError> {
    let Json::List(items) = value else {
        return Err(ConfigError::new("outcomes", value.shown(), "a list of outcome rules"));
    };
    if items.len() > MAX_OUTCOMES {
        return Err(ConfigError::new(
            "outcomes",
            format!("{} rules", items.len()),
            format!("at most {MAX_OUTCOMES} rules (each adds 8 series per Envoy and work on every request)"),
        ));
    }
    let mut rules: Vec<OutcomeRule> = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let field = format!("outcomes[{i}]");
        let rule = RawOutcome::read(&field, item)?.validate(&field)?;
        if let Some(earlier) = rules.iter().position(|r| r.name == rule.name) {
            return Err(ConfigError::new(
                format!("{field}.name"),
                format!("{:?}", rule.name),
                format!("a name no other outcome has (outcomes[{earlier}] has it)"),
            ));
        }
        rules.push(rule);
    }
    Ok(OutcomeRules::new(rules))
}

/// One rule's keys, each value as written.
#[derive(Default)]
struct RawOutcome {
    name: Option<Json>,
    /// With `equals` (a string) or `above` (a number).
    response_header: Option<Json>,
    equals: Option<Json>,
    above: Option<Json>,
    /// The other match kind: a status code.
    status: Option<Json>,
    path_prefix: Option<Json>,
    methods: Option<Json>,
}

impl RawOutcome {
    /// Sorts an object's keys into the rule's fields; unknown or repeated keys are refused.
    fn read(field: &str, item: Json) -> Result<RawOutcome, ConfigError> {
        let Json::Object(entries) = item else {
            return Err(ConfigError::new(field, item.shown(), "an object with a `name` and a match"));
        };
        let mut raw = RawOutcome::default();
        for (key, value) in entries {
            let slot = match key.as_str() {
                "name" => &mut raw.name,
                "response_header" => &mut raw.response_header,
                "equals" => &mut raw.equals,
                "above" => &mut raw.above,
                "status" => &mut raw.status,
                "path_prefix" => &mut raw.path_prefix,
                "methods" => &mut raw.methods,
                _ => return Err(ConfigError::new(format!("{field}.{}", shown_key(&key)), "(unknown key)", KEYS)),
            };
            if slot.replace(value).is_some() {
                return Err(ConfigError::new(format!("{field}.{key}"), "(given twice)", "each key once"));
            }
        }
        Ok(raw)
    }

    fn validate(self, field: &str) -> Result<OutcomeRule, ConfigError> {
        let name = text(field, "name", self.name)?
            .ok_or_else(|| ConfigError::new(format!("{field}.name"), "(missing)", NAME_RULE))?;
        if !is_valid_outcome_name(&name) {
            return Err(ConfigError::new(format!("{field}.name"), quoted(&name), NAME_RULE));
        }
        let header = text(field, "response_header", self.response_header)?;
        let equals = text(field, "equals", self.equals)?;
        let one_kind = "exactly one match kind: `response_header` (with `equals` or `above`) or `status`";
        let one_comparison = "exactly one of `equals` or `above` with `response_header`";
        let matcher = match (header, self.status) {
            (Some(header), None) => {
                let header_field = format!("{field}.response_header");
                if header.is_empty() {
                    return Err(ConfigError::new(
                        header_field,
                        "\"\" (empty)",
                        "a response header name, e.g. \"x-cache\"",
                    ));
                }
                let header = header_name(&header_field, &header)?;
                match (equals, self.above) {
                    (Some(value), None) if value.is_empty() => {
                        return Err(ConfigError::new(
                            format!("{field}.equals"),
                            "\"\" (empty)",
                            "the header value that counts, e.g. \"HIT\"",
                        ));
                    }
                    (Some(value), None) => OutcomeMatch::HeaderEquals { header, value },
                    (None, Some(above)) => {
                        OutcomeMatch::HeaderAbove { header, threshold: threshold(&format!("{field}.above"), &above)? }
                    }
                    (Some(_), Some(_)) => {
                        return Err(ConfigError::new(field, "(both `equals` and `above`)", one_comparison));
                    }
                    (None, None) => {
                        return Err(ConfigError::new(field, "(neither `equals` nor `above`)", one_comparison));
                    }
                }
            }
            (None, Some(status)) => {
                if equals.is_some() || self.above.is_some() {
                    return Err(ConfigError::new(
                        field,
                        "(`status` with `equals` or `above`)",
                        "`equals` and `above` only with `response_header`; `status` alone",
                    ));
                }
                OutcomeMatch::Status(status_code(&format!("{field}.status"), &status)?)
            }
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(field, "(both `response_header` and `status`)", one_kind));
            }
            (None, None) => {
                return Err(ConfigError::new(field, "(neither `response_header` nor `status`)", one_kind));
            }
        };
        let path_prefix = text(field, "path_prefix", self.path_prefix)?;
        if let Some(prefix) = &path_prefix {
            if !prefix.starts_with('/') {
                return Err(ConfigError::new(
                    format!("{field}.path_prefix"),
                    quoted(prefix),
                    "a path prefix starting with '/', e.g. \"/checkout\"",
                ));
            }
        }
        let methods = self.methods.map(|m| methods(&format!("{field}.methods"), m)).transpose()?.unwrap_or_default();
        Ok(OutcomeRule { name, path_prefix, methods, matcher })
    }
}

/// An unknown key as a field name: as written, or quoted and escaped if it is empty
/// or holds control characters (one log line whatever the key).
fn shown_key(key: &str) -> String {
    if key.is_empty() || key.chars().count() > SHOWN_CHARS || key.chars().any(char::is_control) {
        quoted(key)
    } else {
        key.to_string()
    }
}

/// An optional string key.
fn text(field: &str, key: &str, value: Option<Json>) -> Result<Option<String>, ConfigError> {
    match value {
        None => Ok(None),
        Some(Json::Text(text)) => Ok(Some(text)),
        Some(other) => Err(ConfigError::new(format!("{field}.{key}"), other.shown(), "a string")),
    }
}

/// `above`: a JSON number (finite: JSON has no infinity).
fn threshold(field: &str, value: &Json) -> Result<f64, ConfigError> {
    match value {
        Json::Number(n) if n.is_finite() => Ok(*n),
        other => Err(ConfigError::new(field, other.shown(), "a finite number (not a string), e.g. 100")),
    }
}

/// The status codes a response can carry.
const STATUS_RANGE: std::ops::RangeInclusive<u32> = 100..=599;

/// `status`: a whole number from 100 to 599 (Istio's `pluginConfig` turns YAML
/// numbers into doubles, so `402.0` is 402).
fn status_code(field: &str, value: &Json) -> Result<u32, ConfigError> {
    match value {
        Json::Number(n) if n.fract() == 0.0 && (100.0..=599.0).contains(n) => Ok(*n as u32),
        other => Err(ConfigError::new(
            field,
            other.shown(),
            format!("a status code from {} to {}, e.g. 402", STATUS_RANGE.start(), STATUS_RANGE.end()),
        )),
    }
}

/// `methods`: a non-empty list of upper-case methods (`:method` is case-sensitive).
fn methods(field: &str, value: Json) -> Result<Vec<String>, ConfigError> {
    let Json::List(items) = value else {
        return Err(ConfigError::new(field, value.shown(), "a list of methods, e.g. [\"POST\"]"));
    };
    if items.is_empty() {
        return Err(ConfigError::new(field, "[]", "at least one method (leave `methods` out for any method)"));
    }
    let is_method = |m: &str| {
        m.bytes().next().is_some_and(|b| b.is_ascii_uppercase())
            && m.bytes().all(|b| b.is_ascii_uppercase() || b == b'-' || b == b'_')
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| match item {
            Json::Text(m) if is_method(&m) => Ok(m),
            other => Err(ConfigError::new(
                format!("{field}[{i}]"),
                other.shown(),
                "an upper-case HTTP method, e.g. \"POST\"",
            )),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use crate::config::tests::{error, one};

    /// `{"deployment":"a","outcomes":[<rules>]}`.
    fn with_outcomes(rules: &str) -> String {
        format!(r#"{{"deployment":"a","outcomes":[{rules}]}}"#)
    }

    #[test]
    fn outcome_rules_of_every_kind_are_validated_into_typed_rules() {
        use crate::outcome::{OutcomeMatch, OutcomeRule};
        let (c, _) = one(&with_outcomes(
            r#"{"name":"cache_hit","response_header":"X-Cache","equals":"HIT"},
               {"name":"declined","response_header":"x-payment-result","equals":"declined","path_prefix":"/pay"},
               {"name":"slow_db","response_header":"x-db-time-ms","above":100},
               {"name":"payment_required","status":402.0,"path_prefix":"/checkout","methods":["POST","PUT"]}"#,
        ));
        let header = |h: &str, v: &str| OutcomeMatch::HeaderEquals { header: h.into(), value: v.into() };
        let plain =
            |name: &str, matcher| OutcomeRule { name: name.into(), path_prefix: None, methods: vec![], matcher };
        assert_eq!(
            c.outcomes.rules(),
            [
                plain("cache_hit", header("x-cache", "HIT")),
                OutcomeRule {
                    path_prefix: Some("/pay".into()),
                    ..plain("declined", header("x-payment-result", "declined"))
                },
                plain("slow_db", OutcomeMatch::HeaderAbove { header: "x-db-time-ms".into(), threshold: 100.0 }),
                OutcomeRule {
                    path_prefix: Some("/checkout".into()),
                    methods: vec!["POST".into(), "PUT".into()],
                    ..plain("payment_required", OutcomeMatch::Status(402))
                },
            ]
        );
        assert!(one(r#"{"deployment":"a"}"#).0.outcomes.is_empty());
        assert!(one(r#"{"deployment":"a","outcomes":[]}"#).0.outcomes.is_empty());
        let sixteen: Vec<String> = (0..16).map(|i| format!(r#"{{"name":"r{i}","status":200}}"#)).collect();
        assert_eq!(one(&with_outcomes(&sixteen.join(","))).0.outcomes.len(), 16);
    }

    /// Every refusal of an outcome rule: (rules, field named, a word of what was expected).
    #[test]
    fn bad_outcome_rules_are_refused_naming_the_field() {
        let seventeen: Vec<String> = (0..17).map(|i| format!(r#"{{"name":"r{i}","status":200}}"#)).collect();
        let seventeen = with_outcomes(&seventeen.join(","));
        let ok = r#"{"name":"ok","status":200}"#;
        let cases: Vec<(String, &str, &str)> = vec![
            (r#"{"deployment":"a","outcomes":{"name":"x"}}"#.into(), "outcomes", "a list"),
            (seventeen, "outcomes", "at most 16"),
            (with_outcomes("7"), "outcomes[0]", "an object"),
            (with_outcomes(&format!(r#"{ok},{{"name":"b","status":200,"colour":1}}"#)), "outcomes[1].colour", "`name`"),
            (with_outcomes(r#"{"status":200}"#), "outcomes[0].name", "[a-z]"),
            (with_outcomes(r#"{"name":7,"status":200}"#), "outcomes[0].name", "a string"),
            (with_outcomes(r#"{"name":"Cache","status":200}"#), "outcomes[0].name", "[a-z]"),
            (with_outcomes(r#"{"name":"cache.hit","status":200}"#), "outcomes[0].name", "[a-z]"),
            (with_outcomes(&format!(r#"{{"name":"{}","status":200}}"#, "a".repeat(33))), "outcomes[0].name", "{0,31}"),
            (with_outcomes(&format!(r#"{ok},{ok}"#)), "outcomes[1].name", "outcomes[0] has it"),
            (with_outcomes(r#"{"name":"x"}"#), "outcomes[0]", "exactly one match kind"),
            (
                with_outcomes(r#"{"name":"x","response_header":"a","equals":"b","status":200}"#),
                "outcomes[0]",
                "exactly one match kind",
            ),
            (
                with_outcomes(&format!(
                    r#"{ok},{{"name":"b","status":201}},{{"name":"c","response_header":"","equals":"b"}}"#
                )),
                "outcomes[2].response_header",
                "header name",
            ),
            (
                with_outcomes(r#"{"name":"x","response_header":":status","equals":"200"}"#),
                "outcomes[0].response_header",
                "header name",
            ),
            (
                with_outcomes(r#"{"name":"x","response_header":"a b","equals":"1"}"#),
                "outcomes[0].response_header",
                "header name",
            ),
            (
                with_outcomes(r#"{"name":"x","response_header":["a"],"equals":"1"}"#),
                "outcomes[0].response_header",
                "a string",
            ),
            (with_outcomes(r#"{"name":"x","response_header":"a"}"#), "outcomes[0]", "`equals` or `above`"),
            (
                with_outcomes(r#"{"name":"x","response_header":"a","equals":"1","above":1}"#),
                "outcomes[0]",
                "`equals` or `above`",
            ),
            (with_outcomes(r#"{"name":"x","response_header":"a","equals":""}"#), "outcomes[0].equals", "header value"),
            (with_outcomes(r#"{"name":"x","response_header":"a","equals":1}"#), "outcomes[0].equals", "a string"),
            (
                with_outcomes(r#"{"name":"x","response_header":"a","above":"100"}"#),
                "outcomes[0].above",
                "finite number",
            ),
            (with_outcomes(r#"{"name":"x","response_header":"a","above":true}"#), "outcomes[0].above", "finite number"),
            (with_outcomes(r#"{"name":"x","status":402,"equals":"1"}"#), "outcomes[0]", "only with `response_header`"),
            (with_outcomes(r#"{"name":"x","status":99}"#), "outcomes[0].status", "100 to 599"),
            (with_outcomes(r#"{"name":"x","status":600}"#), "outcomes[0].status", "100 to 599"),
            (with_outcomes(r#"{"name":"x","status":402.5}"#), "outcomes[0].status", "100 to 599"),
            (with_outcomes(r#"{"name":"x","status":-402}"#), "outcomes[0].status", "100 to 599"),
            (with_outcomes(r#"{"name":"x","status":"402"}"#), "outcomes[0].status", "100 to 599"),
            (with_outcomes(r#"{"name":"x","status":4294967698}"#), "outcomes[0].status", "100 to 599"),
            (with_outcomes(r#"{"name":"x","status":402,"path_prefix":"checkout"}"#), "outcomes[0].path_prefix", "'/'"),
            (with_outcomes(r#"{"name":"x","status":402,"path_prefix":""}"#), "outcomes[0].path_prefix", "'/'"),
            (with_outcomes(r#"{"name":"x","status":402,"methods":[]}"#), "outcomes[0].methods", "at least one"),
            (with_outcomes(r#"{"name":"x","status":402,"methods":"POST"}"#), "outcomes[0].methods", "a list"),
            (
                with_outcomes(r#"{"name":"x","status":402,"methods":["POST","post"]}"#),
                "outcomes[0].methods[1]",
                "upper-case",
            ),
            (with_outcomes(r#"{"name":"x","status":402,"methods":[""]}"#), "outcomes[0].methods[0]", "upper-case"),
        ];
        for (json, field, expected) in &cases {
            let e = error(json);
            assert_eq!(&e.field, field, "for {json}: {e}");
            assert!(e.expected.contains(expected), "for {json}: {e}");
            assert!(!e.value.is_empty(), "for {json}: {e}");
            let line = e.to_string();
            assert!(line.contains(field) && !line.chars().any(char::is_control), "one line naming the field: {line}");
        }
    }

    #[test]
    fn repeated_keys_and_odd_unknown_keys_are_named_on_one_line() {
        let e = error(&with_outcomes(r#"{"name":"a","status":200,"status":201}"#));
        assert_eq!((e.field.as_str(), e.value.as_str()), ("outcomes[0].status", "(given twice)"));
        let e = error(&with_outcomes(r#"{"name":"a","status":200,"a\nb":1}"#));
        assert_eq!(e.field, r#"outcomes[0]."a\nb""#);
        assert!(!e.to_string().chars().any(char::is_control), "{e}");
        let long = error(&with_outcomes(&format!(r#"{{"name":"{}","status":200}}"#, "x".repeat(500))));
        assert!(long.value.len() < 80, "{long}");
    }
}
