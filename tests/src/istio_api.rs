//! The fields Istio's API defines for the kinds shipped in istio/, and a checker that
//! walks a document against them and names every field Istio does not know.
//!
//! Follows **Istio 1.24**: `networking.istio.io/v1` (VirtualService, DestinationRule,
//! Gateway), `networking.istio.io/v1alpha3` (EnvoyFilter) and
//! `extensions.istio.io/v1alpha1` (WasmPlugin), written from Istio's API reference
//! (istio.io/v1.24/docs/reference/config and the protos of istio/api release-1.24).
//! Field names are the protos' JSON names (camelCase), as `kubectl` and Istio accept them.
//!
//! Every message the shipped manifests use is spelled out, and so are their neighbours
//! a user is likely to add (retries, fault injection, TLS settings). Free-form values
//! are not walked: `pluginConfig` (a `Struct`, checked by the filter's own parser
//! instead) and an EnvoyFilter patch's `value` (an Envoy proto, validated by Envoy in
//! the tests). The same holds for the few deep messages listed as [`Shape::Opaque`]
//! below with the reason. Enum values are checked too, so `phase: AUTHZZ` fails.
//!
//! The Kubernetes kinds (Deployment, Service, ...) get a minimal check only: apiVersion,
//! kind and metadata.name present, and only ObjectMeta's fields in `metadata`.

use serde_yaml_ng::Value as Yaml;

/// What a value must look like.
#[derive(Debug)]
pub enum Shape {
    /// A string, number or bool.
    Scalar,
    /// One of these strings.
    Enum(&'static [&'static str]),
    /// A list of values of this shape.
    List(&'static Shape),
    /// A map from any string key to values of this shape (labels, header matches).
    Map(&'static Shape),
    /// An object with exactly these fields (each optional).
    Message(&'static [(&'static str, Shape)]),
    /// Anything: not walked (the module doc says which and why).
    Opaque,
}

use Shape::{Enum, List, Map, Message, Opaque, Scalar};

// Field lists are `const` slices, so messages can nest them: `Message(FIELDS)`,
// `List(&Message(FIELDS))`.
type Fields = &'static [(&'static str, Shape)];

// ---- shared messages -----------------------------------------------------------

const OBJECT_META: Fields =
    &[("name", Scalar), ("namespace", Scalar), ("labels", Map(&Scalar)), ("annotations", Map(&Scalar))];
const POLICY_TARGET_REFERENCE: Fields = &[("group", Scalar), ("kind", Scalar), ("name", Scalar), ("namespace", Scalar)];
const PORT_SELECTOR: Fields = &[("number", Scalar)];
const PERCENT: Fields = &[("value", Scalar)];
const STRING_MATCH: Fields = &[("exact", Scalar), ("prefix", Scalar), ("regex", Scalar)];
const STRINGS: Shape = List(&Scalar);
const LABELS: Shape = Map(&Scalar);

// ---- networking.istio.io/v1 VirtualService ---------------------------------------

const DESTINATION: Fields = &[("host", Scalar), ("subset", Scalar), ("port", Message(PORT_SELECTOR))];
const HEADER_OPERATIONS: Fields = &[("set", LABELS), ("add", LABELS), ("remove", STRINGS)];
const HEADERS: Fields = &[("request", Message(HEADER_OPERATIONS)), ("response", Message(HEADER_OPERATIONS))];
const HTTP_MATCH_REQUEST: Fields = &[
    ("name", Scalar),
    ("uri", Message(STRING_MATCH)),
    ("scheme", Message(STRING_MATCH)),
    ("method", Message(STRING_MATCH)),
    ("authority", Message(STRING_MATCH)),
    ("headers", Map(&Message(STRING_MATCH))),
    ("port", Scalar),
    ("sourceLabels", LABELS),
    ("gateways", STRINGS),
    ("queryParams", Map(&Message(STRING_MATCH))),
    ("ignoreUriCase", Scalar),
    ("withoutHeaders", Map(&Message(STRING_MATCH))),
    ("sourceNamespace", Scalar),
    ("statPrefix", Scalar),
];
const HTTP_ROUTE_DESTINATION: Fields =
    &[("destination", Message(DESTINATION)), ("weight", Scalar), ("headers", Message(HEADERS))];
const HTTP_RETRY: Fields =
    &[("attempts", Scalar), ("perTryTimeout", Scalar), ("retryOn", Scalar), ("retryRemoteLocalities", Scalar)];
const HTTP_FAULT_INJECTION: Fields = &[
    ("delay", Message(&[("fixedDelay", Scalar), ("percentage", Message(PERCENT)), ("percent", Scalar)])),
    (
        "abort",
        Message(&[
            ("httpStatus", Scalar),
            ("grpcStatus", Scalar),
            ("http2Error", Scalar),
            ("percentage", Message(PERCENT)),
        ]),
    ),
];
const HTTP_MIRROR_POLICY: Fields = &[("destination", Message(DESTINATION)), ("percentage", Message(PERCENT))];
const CORS_POLICY: Fields = &[
    ("allowOrigins", List(&Message(STRING_MATCH))),
    ("allowOrigin", STRINGS),
    ("allowMethods", STRINGS),
    ("allowHeaders", STRINGS),
    ("exposeHeaders", STRINGS),
    ("maxAge", Scalar),
    ("allowCredentials", Scalar),
    ("unmatchedPreflights", Enum(&["UNSPECIFIED", "FORWARD", "IGNORE"])),
];
const HTTP_REDIRECT: Fields = &[
    ("uri", Scalar),
    ("authority", Scalar),
    ("port", Scalar),
    ("derivePort", Enum(&["FROM_PROTOCOL_DEFAULT", "FROM_REQUEST_PORT"])),
    ("scheme", Scalar),
    ("redirectCode", Scalar),
];
const HTTP_REWRITE: Fields =
    &[("uri", Scalar), ("authority", Scalar), ("uriRegexRewrite", Message(&[("match", Scalar), ("rewrite", Scalar)]))];
const HTTP_ROUTE: Fields = &[
    ("name", Scalar),
    ("match", List(&Message(HTTP_MATCH_REQUEST))),
    ("route", List(&Message(HTTP_ROUTE_DESTINATION))),
    ("redirect", Message(HTTP_REDIRECT)),
    ("directResponse", Message(&[("status", Scalar), ("body", Message(&[("string", Scalar), ("bytes", Scalar)]))])),
    ("delegate", Message(&[("name", Scalar), ("namespace", Scalar)])),
    ("rewrite", Message(HTTP_REWRITE)),
    ("timeout", Scalar),
    ("retries", Message(HTTP_RETRY)),
    ("fault", Message(HTTP_FAULT_INJECTION)),
    ("mirror", Message(DESTINATION)),
    ("mirrors", List(&Message(HTTP_MIRROR_POLICY))),
    ("mirrorPercentage", Message(PERCENT)),
    ("mirrorPercent", Scalar),
    ("corsPolicy", Message(CORS_POLICY)),
    ("headers", Message(HEADERS)),
];
const ROUTE_DESTINATION: Fields = &[("destination", Message(DESTINATION)), ("weight", Scalar)];
const L4_MATCH: Fields = &[
    ("destinationSubnets", STRINGS),
    ("port", Scalar),
    ("sourceLabels", LABELS),
    ("gateways", STRINGS),
    ("sourceNamespace", Scalar),
];
const TLS_MATCH: Fields = &[
    ("sniHosts", STRINGS),
    ("destinationSubnets", STRINGS),
    ("port", Scalar),
    ("sourceLabels", LABELS),
    ("gateways", STRINGS),
    ("sourceNamespace", Scalar),
];
const VIRTUAL_SERVICE: Fields = &[
    ("hosts", STRINGS),
    ("gateways", STRINGS),
    ("http", List(&Message(HTTP_ROUTE))),
    ("tls", List(&Message(&[("match", List(&Message(TLS_MATCH))), ("route", List(&Message(ROUTE_DESTINATION)))]))),
    ("tcp", List(&Message(&[("match", List(&Message(L4_MATCH))), ("route", List(&Message(ROUTE_DESTINATION)))]))),
    ("exportTo", STRINGS),
];

// ---- networking.istio.io/v1 DestinationRule --------------------------------------

const CLIENT_TLS_SETTINGS: Fields = &[
    ("mode", Enum(&["DISABLE", "SIMPLE", "MUTUAL", "ISTIO_MUTUAL"])),
    ("clientCertificate", Scalar),
    ("privateKey", Scalar),
    ("caCertificates", Scalar),
    ("credentialName", Scalar),
    ("subjectAltNames", STRINGS),
    ("sni", Scalar),
    ("insecureSkipVerify", Scalar),
    ("caCrl", Scalar),
];
/// Load balancer, connection pool, outlier detection and per-port settings have deep,
/// version-dependent sub-messages the shipped manifests do not use: the traffic
/// policy's own fields are checked, those values are not walked.
const TRAFFIC_POLICY: Fields = &[
    ("loadBalancer", Opaque),
    ("connectionPool", Message(&[("tcp", Opaque), ("http", Opaque)])),
    ("outlierDetection", Opaque),
    ("tls", Message(CLIENT_TLS_SETTINGS)),
    ("portLevelSettings", Opaque),
    ("tunnel", Message(&[("protocol", Scalar), ("targetHost", Scalar), ("targetPort", Scalar)])),
    ("proxyProtocol", Message(&[("version", Enum(&["V1", "V2"]))])),
];
const SUBSET: Fields = &[("name", Scalar), ("labels", LABELS), ("trafficPolicy", Message(TRAFFIC_POLICY))];
const DESTINATION_RULE: Fields = &[
    ("host", Scalar),
    ("trafficPolicy", Message(TRAFFIC_POLICY)),
    ("subsets", List(&Message(SUBSET))),
    ("exportTo", STRINGS),
    ("workloadSelector", Message(&[("matchLabels", LABELS)])),
];

// ---- networking.istio.io/v1 Gateway -----------------------------------------------

const TLS_VERSIONS: &[&str] = &["TLS_AUTO", "TLSV1_0", "TLSV1_1", "TLSV1_2", "TLSV1_3"];
const SERVER_TLS_SETTINGS: Fields = &[
    ("httpsRedirect", Scalar),
    ("mode", Enum(&["PASSTHROUGH", "SIMPLE", "MUTUAL", "AUTO_PASSTHROUGH", "ISTIO_MUTUAL", "OPTIONAL_MUTUAL"])),
    ("serverCertificate", Scalar),
    ("privateKey", Scalar),
    ("caCertificates", Scalar),
    ("caCrl", Scalar),
    ("credentialName", Scalar),
    ("subjectAltNames", STRINGS),
    ("verifyCertificateSpki", STRINGS),
    ("verifyCertificateHash", STRINGS),
    ("minProtocolVersion", Enum(TLS_VERSIONS)),
    ("maxProtocolVersion", Enum(TLS_VERSIONS)),
    ("cipherSuites", STRINGS),
];
const SERVER: Fields = &[
    ("port", Message(&[("number", Scalar), ("protocol", Scalar), ("name", Scalar), ("targetPort", Scalar)])),
    ("bind", Scalar),
    ("hosts", STRINGS),
    ("tls", Message(SERVER_TLS_SETTINGS)),
    ("defaultEndpoint", Scalar),
    ("name", Scalar),
];
const GATEWAY: Fields = &[("selector", LABELS), ("servers", List(&Message(SERVER)))];

// ---- extensions.istio.io/v1alpha1 WasmPlugin --------------------------------------

const WASM_PLUGIN: Fields = &[
    ("selector", Message(&[("matchLabels", LABELS)])),
    ("targetRef", Message(POLICY_TARGET_REFERENCE)),
    ("targetRefs", List(&Message(POLICY_TARGET_REFERENCE))),
    ("url", Scalar),
    ("sha256", Scalar),
    ("imagePullPolicy", Enum(&["UNSPECIFIED_POLICY", "IfNotPresent", "Always"])),
    ("imagePullSecret", Scalar),
    ("verificationKey", Scalar),
    // A protobuf Struct: the filter's own parser checks it (tests/tests/manifests.rs).
    ("pluginConfig", Opaque),
    ("pluginName", Scalar),
    ("phase", Enum(&["UNSPECIFIED_PHASE", "AUTHN", "AUTHZ", "STATS"])),
    ("priority", Scalar),
    // What Istio 1.24 knows; FAIL_RELOAD came later.
    ("failStrategy", Enum(&["FAIL_CLOSE", "FAIL_OPEN"])),
    (
        "vmConfig",
        Message(&[(
            "env",
            List(&Message(&[("name", Scalar), ("valueFrom", Enum(&["INLINE", "HOST"])), ("value", Scalar)])),
        )]),
    ),
    (
        "match",
        List(&Message(&[
            ("mode", Enum(&["UNDEFINED", "CLIENT", "SERVER", "CLIENT_AND_SERVER"])),
            ("ports", List(&Message(PORT_SELECTOR))),
        ])),
    ),
    ("type", Enum(&["UNSPECIFIED_PLUGIN_TYPE", "HTTP", "NETWORK"])),
];

// ---- networking.istio.io/v1alpha3 EnvoyFilter -------------------------------------

const ENVOY_FILTER_LISTENER_MATCH: Fields = &[
    ("portNumber", Scalar),
    (
        "filterChain",
        Message(&[
            ("name", Scalar),
            ("sni", Scalar),
            ("transportProtocol", Scalar),
            ("applicationProtocols", Scalar),
            ("filter", Message(&[("name", Scalar), ("subFilter", Message(&[("name", Scalar)]))])),
            ("destinationPort", Scalar),
        ]),
    ),
    ("listenerFilter", Scalar),
    ("name", Scalar),
];
const ENVOY_FILTER_APPLY_TO: &[&str] = &[
    "INVALID",
    "LISTENER",
    "FILTER_CHAIN",
    "NETWORK_FILTER",
    "HTTP_FILTER",
    "ROUTE_CONFIGURATION",
    "VIRTUAL_HOST",
    "HTTP_ROUTE",
    "CLUSTER",
    "EXTENSION_CONFIG",
    "BOOTSTRAP",
    "LISTENER_FILTER",
];
const ENVOY_FILTER_OPERATIONS: &[&str] =
    &["INVALID", "MERGE", "ADD", "REMOVE", "INSERT_BEFORE", "INSERT_AFTER", "INSERT_FIRST", "REPLACE"];
const ENVOY_CONFIG_OBJECT_PATCH: Fields = &[
    ("applyTo", Enum(ENVOY_FILTER_APPLY_TO)),
    (
        "match",
        Message(&[
            ("context", Enum(&["ANY", "SIDECAR_INBOUND", "SIDECAR_OUTBOUND", "GATEWAY"])),
            ("proxy", Message(&[("proxyVersion", Scalar), ("metadata", LABELS)])),
            ("listener", Message(ENVOY_FILTER_LISTENER_MATCH)),
            // Route configuration and cluster matches: not used here, not walked.
            ("routeConfiguration", Opaque),
            ("cluster", Opaque),
        ]),
    ),
    (
        "patch",
        Message(&[
            ("operation", Enum(ENVOY_FILTER_OPERATIONS)),
            // An Envoy proto: Envoy itself validates it (tests/tests/manifests.rs).
            ("value", Opaque),
            ("filterClass", Enum(&["UNSPECIFIED", "AUTHN", "AUTHZ", "STATS"])),
        ]),
    ),
];
const ENVOY_FILTER: Fields = &[
    ("workloadSelector", Message(&[("labels", LABELS)])),
    ("targetRefs", List(&Message(POLICY_TARGET_REFERENCE))),
    ("configPatches", List(&Message(ENVOY_CONFIG_OBJECT_PATCH))),
    ("priority", Scalar),
];

/// The Istio kinds this checker knows: (apiVersion, kind, fields of `spec`).
pub const ISTIO_KINDS: [(&str, &str, Fields); 5] = [
    ("networking.istio.io/v1", "VirtualService", VIRTUAL_SERVICE),
    ("networking.istio.io/v1", "DestinationRule", DESTINATION_RULE),
    ("networking.istio.io/v1", "Gateway", GATEWAY),
    ("networking.istio.io/v1alpha3", "EnvoyFilter", ENVOY_FILTER),
    ("extensions.istio.io/v1alpha1", "WasmPlugin", WASM_PLUGIN),
];

/// Whether a document claims an Istio API group.
pub fn is_istio(document: &Yaml) -> bool {
    document["apiVersion"].as_str().is_some_and(|v| v.split('/').next().is_some_and(|g| g.ends_with(".istio.io")))
}

/// Every problem of an Istio document, each naming its path (e.g.
/// `spec.http[0].route[0].destination.subsett: unknown field`). Empty when it conforms.
pub fn check_istio_document(document: &Yaml) -> Vec<String> {
    let api_version = document["apiVersion"].as_str().unwrap_or("");
    let kind = document["kind"].as_str().unwrap_or("");
    let Some((_, _, spec)) = ISTIO_KINDS.iter().find(|(v, k, _)| *v == api_version && *k == kind) else {
        return vec![format!("{api_version} {kind}: not a kind of Istio 1.24's API that this checker knows")];
    };
    const TOP: Fields = &[("apiVersion", Scalar), ("kind", Scalar), ("metadata", Opaque), ("spec", Opaque)];
    let mut errors = Vec::new();
    walk(document, &Message(TOP), "", &mut errors);
    walk(&document["metadata"], &Message(OBJECT_META), "metadata", &mut errors);
    walk(&document["spec"], &Message(spec), "spec", &mut errors);
    if document["metadata"]["name"].as_str().is_none_or(str::is_empty) {
        errors.push("metadata.name: missing".to_string());
    }
    errors
}

/// The minimal check of a Kubernetes (non-Istio) document.
pub fn check_kubernetes_document(document: &Yaml) -> Vec<String> {
    let mut errors = Vec::new();
    for field in ["apiVersion", "kind"] {
        if document[field].as_str().is_none_or(str::is_empty) {
            errors.push(format!("{field}: missing"));
        }
    }
    if document["metadata"]["name"].as_str().is_none_or(str::is_empty) {
        errors.push("metadata.name: missing".to_string());
    }
    walk(&document["metadata"], &Message(OBJECT_META), "metadata", &mut errors);
    errors
}

fn join(path: &str, field: &str) -> String {
    if path.is_empty() { field.to_string() } else { format!("{path}.{field}") }
}

fn walk(value: &Yaml, shape: &Shape, path: &str, errors: &mut Vec<String>) {
    match (shape, value) {
        (Opaque, _) | (_, Yaml::Null) => {}
        (Scalar, Yaml::Bool(_) | Yaml::Number(_) | Yaml::String(_)) => {}
        (Enum(allowed), Yaml::String(s)) if allowed.contains(&s.as_str()) => {}
        (Enum(allowed), other) => errors.push(format!("{path}: {} is not one of {allowed:?}", describe(other))),
        (List(item), Yaml::Sequence(items)) => {
            for (i, v) in items.iter().enumerate() {
                walk(v, item, &format!("{path}[{i}]"), errors);
            }
        }
        (Map(item), Yaml::Mapping(map)) => {
            for (k, v) in map {
                walk(v, item, &join(path, &key_text(k)), errors);
            }
        }
        (Message(fields), Yaml::Mapping(map)) => {
            for (k, v) in map {
                let key = k.as_str().unwrap_or("");
                match fields.iter().find(|(name, _)| *name == key) {
                    Some((_, field_shape)) => walk(v, field_shape, &join(path, key), errors),
                    None => errors.push(format!("{}: unknown field", join(path, &key_text(k)))),
                }
            }
        }
        (expected, other) => {
            errors.push(format!("{path}: expected {}, found {}", expected_name(expected), describe(other)))
        }
    }
}

fn key_text(key: &Yaml) -> String {
    key.as_str().map_or_else(|| describe(key), str::to_string)
}

fn expected_name(shape: &Shape) -> &'static str {
    match shape {
        Scalar | Enum(_) => "a scalar",
        List(_) => "a list",
        Map(_) | Message(_) => "a mapping",
        Opaque => "anything",
    }
}

fn describe(value: &Yaml) -> String {
    match value {
        Yaml::Sequence(_) => "a list".to_string(),
        Yaml::Mapping(_) => "a mapping".to_string(),
        other => serde_yaml_ng::to_string(other).map_or_else(|_| "a value".to_string(), |s| s.trim().to_string()),
    }
}
