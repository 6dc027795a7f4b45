//! Request headers: the `cookie` header (`user_id::cookie_value`) and the user-id sources
//! and population rules that read headers and cookies (`decide`), all sent by clients.

use crate::support::{self, bounded, text};
use canary_core::cohort::{Cohort, Share, bucket};
use canary_core::user_id::{cookie_value, cookie_value_in_joined_lines, is_plausible_sticky_id, sticky_id_from_bytes};
use canary_core::{ConfigError, DeploymentConfig, FilterConfig, RequestView, decide};

/// The one deployment of a single-form configuration.
fn first(parsed: Result<FilterConfig, ConfigError>) -> DeploymentConfig {
    parsed.unwrap().deployments.remove(0)
}
use proptest::prelude::*;
use std::collections::HashMap;

/// A cookie name (RFC 6265: a token).
fn cookie_name() -> impl Strategy<Value = String> {
    "[A-Za-z0-9!#$%&'*+.^_`|~-]{1,12}"
}

/// A cookie value as browsers send it: no `;`, maybe quoted, maybe padded with spaces.
fn cookie_value_text() -> impl Strategy<Value = String> {
    prop_oneof!["[A-Za-z0-9_.=/+-]{0,24}", "[A-Za-z0-9_-]{1,24}".prop_map(|v| format!("\"{v}\"")), "[^;]{0,24}",]
}

/// The value `cookie_value` should give for `raw`: trimmed of ASCII whitespace, then one
/// pair of quotes removed.
fn expected_value(raw: &str) -> &[u8] {
    let trimmed = raw.trim_ascii().as_bytes();
    trimmed.strip_prefix(b"\"").and_then(|v| v.strip_suffix(b"\"")).unwrap_or(trimmed)
}

struct Headers(HashMap<String, String>);

impl RequestView for Headers {
    fn header(&mut self, name: &str) -> Option<Vec<u8>> {
        self.0.get(name).map(|v| v.as_bytes().to_vec())
    }

    fn all_cookie_lines(&mut self) -> Option<Vec<u8>> {
        self.0.get("cookie").map(|v| v.as_bytes().to_vec())
    }
}

/// A configuration reading the user id from `x-user-id`, then cookie `uid`, with rules
/// on a header and a cookie: every path of `decide` that reads client input.
fn rules_config() -> DeploymentConfig {
    first(FilterConfig::parse(
        br#"{"deployment":"checkout","user_id":{"sources":[{"header":"x-user-id"},{"cookie":"uid"}]},
            "population":{"all":[{"cookie":"beta","present":true}],"any":[{"header":"x-tier","prefix":"gold"},
            {"cookie":"region","suffix":"-eu"}],"allow":["qa"],"deny":["vip"]}}"#,
    ))
}

fn sticky_config() -> DeploymentConfig {
    first(FilterConfig::parse(br#"{"deployment":"checkout"}"#))
}

proptest! {
    #![proptest_config(support::config(support::CASES))]

    #[test]
    fn arbitrary_cookie_headers_never_panic_and_values_come_from_the_header(
        header in text(),
        name in prop_oneof![cookie_name(), text()],
    ) {
        if let Some(value) = bounded("cookie_value", || cookie_value(header.as_bytes(), &name)) {
            let part = value.is_empty() || header.as_bytes().windows(value.len()).any(|w| w == value);
            prop_assert!(part, "{value:?} is not part of {header:?}");
        }
    }

    /// Whatever surrounds it, a cookie is found by its exact name, first occurrence first.
    #[test]
    fn the_first_cookie_of_a_name_is_found_among_any_others(
        pairs in prop::collection::vec((cookie_name(), cookie_value_text()), 0..8),
        wanted in cookie_name(),
        separator in prop_oneof![Just("; "), Just(";"), Just(" ;  ")],
    ) {
        let header = pairs.iter().map(|(n, v)| format!("{n}={v}")).collect::<Vec<_>>().join(separator);
        let expected = pairs.iter().find(|(n, _)| *n == wanted).map(|(_, v)| expected_value(v));
        prop_assert_eq!(cookie_value(header.as_bytes(), &wanted), expected, "in {:?}", header);
    }

    /// A user id reaches the hash the same way from a header or a cookie, and the
    /// decision never panics on arbitrary header and cookie values.
    #[test]
    fn decisions_on_arbitrary_headers_never_panic_and_follow_the_id(
        user in text(),
        tier in proptest::option::of(text()),
        cookie_tail in proptest::option::of(text()),
        share in 0u32..=10_000,
    ) {
        let config = rules_config();
        let share = Share::from_basis_points(share).unwrap();
        let mut headers = HashMap::from([("x-user-id".to_string(), user.clone())]);
        if let Some(tier) = &tier {
            headers.insert("x-tier".into(), tier.clone());
        }
        let cookie = format!("beta=1; region=x-eu{}", cookie_tail.as_deref().unwrap_or(""));
        headers.insert("cookie".into(), cookie);
        let decision = bounded("decide", || decide(&config, share, &mut Headers(headers.clone()), || None));
        prop_assert!(decision.set_cookie.is_none(), "no sticky cookie when ids come from sources");
        let id = user.trim();
        if id == "vip" {
            prop_assert_eq!(decision.cohort, Cohort::Excluded);
        } else if id == "qa" {
            prop_assert_eq!(decision.cohort, Cohort::Forced);
        } else if matches!(decision.cohort, Cohort::Canary | Cohort::Control) && !id.is_empty() {
            prop_assert_eq!(decision.cohort == Cohort::Canary, share.includes(bucket("checkout", id)));
        }
        // The same id through the cookie source (when it can be a cookie value) decides the same.
        // (Not with `,`: Envoy joins cookie lines with commas, so a comma ends a cookie value.)
        if !id.is_empty() && !id.contains(';') && !id.contains(',') && !id.starts_with('"') {
            let mut via_cookie = headers.clone();
            via_cookie.remove("x-user-id");
            let cookie = format!("{}; uid={id}", headers["cookie"]);
            via_cookie.insert("cookie".into(), cookie);
            let again = decide(&config, share, &mut Headers(via_cookie), || None);
            prop_assert_eq!(again.cohort, decision.cohort);
        }
    }

    /// A client-sent sticky id is honoured only if it could be one of ours; otherwise it is replaced.
    #[test]
    fn sticky_cookies_from_clients_are_checked(sent in text(), fresh in any::<[u8; 16]>()) {
        let fresh = sticky_id_from_bytes(fresh);
        prop_assert!(is_plausible_sticky_id(&fresh));
        let cookie = format!("canary_uid={sent}");
        let mut headers = Headers(HashMap::from([("cookie".to_string(), cookie.clone())]));
        let decision = bounded("decide", || decide(&sticky_config(), Share::FULL, &mut headers, || Some(fresh.clone())));
        let honoured = cookie_value_in_joined_lines(cookie.as_bytes(), "canary_uid")
            .and_then(|v| std::str::from_utf8(v).ok())
            .is_some_and(is_plausible_sticky_id);
        prop_assert_eq!(decision.set_cookie.is_none(), honoured, "sent {:?}", sent);
        if let Some(set_cookie) = decision.set_cookie {
            prop_assert!(set_cookie.starts_with(&format!("canary_uid={fresh};")), "{}", set_cookie);
        }
    }
}

/// A 1 MiB cookie header and a 1 MiB user id: looked up and hashed in bounded time.
#[test]
fn huge_headers_are_read_in_bounded_time() {
    let many = (0..60_000).map(|i| format!("c{i}=v{i}")).collect::<Vec<_>>().join("; ");
    assert!(many.len() > 1 << 19);
    let header = format!("{many}; uid=last");
    assert_eq!(bounded("cookie_value", || cookie_value(header.as_bytes(), "uid")), Some(&b"last"[..]));
    let long_id = "u".repeat(1 << 20);
    let mut headers = Headers(HashMap::from([("x-user-id".to_string(), long_id), ("cookie".to_string(), header)]));
    let decision = bounded("decide", || decide(&rules_config(), Share::FULL, &mut headers, || None));
    assert_eq!(decision.cohort, Cohort::Excluded, "no beta cookie: not eligible");
}
