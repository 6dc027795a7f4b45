//! The per-request decision: which user, which cohort, which route.
//!
//! Order: find the user id (sources, then sticky cookie); deny list -> excluded;
//! allow list -> forced canary; eligibility rules -> excluded; otherwise the hash
//! decides canary or control. The request's own routing header is never read.

use crate::cohort::{Cohort, Share, bucket};
use crate::config::DeploymentConfig;
use crate::population::RuleSubject;
use crate::user_id::{AnonymousPolicy, IdSource, cookie_value_in_joined_lines, is_plausible_sticky_id};
use std::collections::HashSet;

/// Read access to the request being decided. The filter implements it with host
/// calls; tests with a map. Header names are lower-case. Values are the bytes the
/// client sent: Envoy forwards bytes that are not UTF-8 in HTTP/1.1 header values.
pub trait RequestView {
    /// The first value of header `name`.
    fn header(&mut self, name: &str) -> Option<Vec<u8>>;
    /// Every `cookie` line joined with `,`, as Envoy's `request.headers` property joins a
    /// repeated header (HTTP/1.1 clients may send several lines), or `None` without any.
    fn all_cookie_lines(&mut self) -> Option<Vec<u8>>;
}

/// The outcome for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub cohort: Cohort,
    /// A `Set-Cookie` value to add to the response (a newly generated sticky id).
    pub set_cookie: Option<String>,
}

/// Reads what the decision needs, each at most once: every `cookie` line in one host
/// call, however many cookies the sources and rules look up.
struct Lookup<'v, V: RequestView> {
    view: &'v mut V,
    cookies: Option<Option<Vec<u8>>>,
}

impl<V: RequestView> Lookup<'_, V> {
    /// The value of cookie `name` as sent: the first occurrence over all lines.
    fn cookie(&mut self, name: &str) -> Option<Vec<u8>> {
        let view = &mut *self.view;
        let lines = self.cookies.get_or_insert_with(|| view.all_cookie_lines());
        lines.as_deref().and_then(|l| cookie_value_in_joined_lines(l, name)).map(<[u8]>::to_vec)
    }

    fn subject(&mut self, subject: &RuleSubject) -> Option<Vec<u8>> {
        match subject {
            RuleSubject::Header(h) => self.view.header(h),
            RuleSubject::Cookie(c) => self.cookie(c),
        }
    }

    /// A user id from one source. A value that is not UTF-8 is no id, so a client's
    /// stray bytes never pick a cohort: the next source is tried.
    fn source(&mut self, source: &IdSource) -> Option<String> {
        let bytes = match source {
            IdSource::Header(h) => self.view.header(h),
            IdSource::Cookie(c) => self.cookie(c),
        }?;
        let value = String::from_utf8(bytes).ok()?;
        let trimmed = value.trim();
        if trimmed.len() == value.len() {
            // The common case: no copy.
            return (!value.is_empty()).then_some(value);
        }
        (!trimmed.is_empty()).then(|| trimmed.to_string())
    }
}

/// Lists up to this many ids are scanned instead of hashed: a string compare that
/// stops at the length costs a few instructions, SipHash of a 36-byte id ~280
/// (callgrind, native), and deny/allow lists are usually a handful of test users.
const SCAN_UP_TO: usize = 8;

fn listed(ids: &HashSet<String>, user_id: &str) -> bool {
    if ids.len() <= SCAN_UP_TO { ids.iter().any(|id| id == user_id) } else { ids.contains(user_id) }
}

/// Decides a request. `new_sticky_id` is called only for an anonymous request under
/// the sticky policy; if it yields nothing (no randomness), the request is excluded.
pub fn decide(
    config: &DeploymentConfig,
    share: Share,
    view: &mut impl RequestView,
    new_sticky_id: impl FnOnce() -> Option<String>,
) -> Decision {
    let mut lookup = Lookup { view, cookies: None };
    let excluded = Decision { cohort: Cohort::Excluded, set_cookie: None };
    let mut set_cookie = None;

    let configured = config.sources.iter().find_map(|s| lookup.source(s));
    let user_id = match (configured, &config.anonymous) {
        (Some(id), _) => id,
        (None, AnonymousPolicy::Control) => return excluded,
        (None, AnonymousPolicy::Sticky(cookie)) => match lookup.cookie(&cookie.name).map(String::from_utf8) {
            Some(Ok(id)) if is_plausible_sticky_id(&id) => id,
            _ => match new_sticky_id() {
                Some(id) => {
                    set_cookie = Some(cookie.set_cookie_value(&id));
                    id
                }
                None => return excluded,
            },
        },
    };

    let cohort = if listed(&config.deny, &user_id) {
        Cohort::Excluded
    } else if listed(&config.allow, &user_id) {
        Cohort::Forced
    } else if !config.eligibility.is_unrestricted() && !config.eligibility.admits(|s| lookup.subject(s)) {
        Cohort::Excluded
    } else if share.includes(bucket(&config.deployment, &user_id)) {
        Cohort::Canary
    } else {
        Cohort::Control
    };
    Decision { cohort, set_cookie }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::user_id::join_header_lines;

    /// Header lines in order (a name may repeat) and the host calls made.
    #[derive(Default)]
    struct Headers {
        lines: Vec<(String, Vec<u8>)>,
        reads: usize,
        all_cookie_reads: usize,
    }

    impl RequestView for Headers {
        fn header(&mut self, name: &str) -> Option<Vec<u8>> {
            self.reads += 1;
            self.lines.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
        }

        fn all_cookie_lines(&mut self) -> Option<Vec<u8>> {
            self.all_cookie_reads += 1;
            join_header_lines(self.lines.iter().filter(|(k, _)| k == "cookie").map(|(_, v)| v.as_slice()))
        }
    }

    fn raw_headers(pairs: &[(&str, &[u8])]) -> Headers {
        Headers { lines: pairs.iter().map(|(k, v)| (k.to_string(), v.to_vec())).collect(), ..Headers::default() }
    }

    fn headers(pairs: &[(&str, &str)]) -> Headers {
        let raw: Vec<(&str, &[u8])> = pairs.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
        raw_headers(&raw)
    }

    fn config(json: &str) -> DeploymentConfig {
        let mut parsed = crate::config::FilterConfig::parse(json.as_bytes()).unwrap();
        parsed.deployments.remove(0)
    }

    const HALF: Share = match Share::from_basis_points(5000) {
        Some(s) => s,
        None => Share::ZERO,
    };

    /// Finds a user id whose bucket is inside (or outside) the 50 % slice of `checkout`.
    fn user(canary: bool) -> String {
        (0..).map(|i| format!("user-{i}")).find(|id| HALF.includes(bucket("checkout", id)) == canary).unwrap()
    }

    fn cohort(cfg: &DeploymentConfig, pairs: &[(&str, &str)]) -> Cohort {
        decide(cfg, HALF, &mut headers(pairs), || None).cohort
    }

    #[test]
    fn the_hash_decides_for_eligible_users_and_the_routing_header_is_ignored() {
        let cfg = config(r#"{"deployment":"checkout","user_id":{"sources":[{"header":"x-user-id"}]}}"#);
        let (c, s) = (user(true), user(false));
        assert_eq!(cohort(&cfg, &[("x-user-id", &c)]), Cohort::Canary);
        assert_eq!(cohort(&cfg, &[("x-user-id", &s)]), Cohort::Control);
        assert_eq!(cohort(&cfg, &[("x-user-id", &s), ("x-canary-cohort", "canary")]), Cohort::Control);
        assert_eq!(cohort(&cfg, &[("x-user-id", &format!("  {c} "))]), Cohort::Canary, "ids are trimmed");
    }

    #[test]
    fn sources_are_tried_in_order_and_cookies_are_read_once() {
        let cfg = config(
            r#"{"deployment":"checkout","user_id":{"sources":[{"cookie":"uid"},{"header":"x-user-id"}],"anonymous":"control"},
                "population":{"all":[{"cookie":"beta","present":true}]}}"#,
        );
        let (c, s) = (user(true), user(false));
        let cookie = format!("beta=1; uid={c}");
        let mut view = headers(&[("cookie", &cookie), ("x-user-id", &s)]);
        assert_eq!(decide(&cfg, HALF, &mut view, || None).cohort, Cohort::Canary);
        assert_eq!((view.reads, view.all_cookie_reads), (0, 1), "one host lookup for two cookies");
        assert_eq!(cohort(&cfg, &[("x-user-id", &s), ("cookie", "beta=1")]), Cohort::Control);
        assert_eq!(cohort(&cfg, &[("x-user-id", "")]), Cohort::Excluded, "empty id is no id");
    }

    #[test]
    fn values_that_are_not_utf8_are_no_id_and_match_no_rule() {
        let cfg = config(
            r#"{"deployment":"checkout","user_id":{"sources":[{"header":"x-user-id"},{"cookie":"session_user"}],
                "anonymous":"control"},"population":{"any":[{"header":"x-tier","prefix":"gold"},
                {"cookie":"region","present":false}]}}"#,
        );
        let c = user(true);
        let decide_raw = |pairs: &[(&str, &[u8])]| decide(&cfg, HALF, &mut raw_headers(pairs), || None).cohort;
        assert_eq!(decide_raw(&[("x-user-id", b"\xe9t\xe9")]), Cohort::Excluded, "no id");
        assert_eq!(decide_raw(&[("x-user-id", b"\xe9"), ("cookie", b"session_user=\xff\xfe")]), Cohort::Excluded);
        let cookie = [&b"junk=\xfe; session_user="[..], c.as_bytes()].concat();
        assert_eq!(decide_raw(&[("x-user-id", b"\xff"), ("cookie", &cookie)]), Cohort::Canary, "next source");
        // `region` is there, though not UTF-8: `present: false` fails, so only `x-tier` can admit.
        let cookie = [&b"region=\xff; session_user="[..], c.as_bytes()].concat();
        assert_eq!(decide_raw(&[("cookie", &cookie), ("x-tier", b"gold\xff")]), Cohort::Excluded, "no rule matches");
        assert_eq!(decide_raw(&[("cookie", &cookie), ("x-tier", b"gold")]), Cohort::Canary);
        let sticky = config(r#"{"deployment":"checkout"}"#);
        let fresh = decide(&sticky, HALF, &mut raw_headers(&[("cookie", b"canary_uid=\xe9t\xe9")]), || Some(c.clone()));
        assert!(fresh.set_cookie.is_some(), "a sticky id that is not UTF-8 is replaced");
    }

    #[test]
    fn cookies_on_every_line_count_and_all_lines_are_read_once() {
        let sticky = config(r#"{"deployment":"checkout","user_id":{"sources":[{"cookie":"session_user"}]}}"#);
        let c = user(true);
        let second = format!("canary_uid={c}");
        let mut view = headers(&[("cookie", "theme=dark"), ("x-other", "1"), ("cookie", &second)]);
        let d = decide(&sticky, HALF, &mut view, || Some("fresh".into()));
        assert_eq!(d, Decision { cohort: Cohort::Canary, set_cookie: None }, "the sticky id on the second line");
        assert_eq!((view.reads, view.all_cookie_reads), (0, 1), "two cookies looked up, one read");
        let mut view = headers(&[("cookie", &second), ("cookie", "canary_uid=other")]);
        assert_eq!(decide(&sticky, HALF, &mut view, || None).cohort, Cohort::Canary, "first occurrence wins");
        let mut view = headers(&[]);
        assert_eq!(decide(&sticky, HALF, &mut view, || Some(c.clone())).cohort, Cohort::Canary);
        assert_eq!((view.reads, view.all_cookie_reads), (0, 1), "no cookie at all: one read");
        let rules = config(
            r#"{"deployment":"checkout","user_id":{"sources":[{"cookie":"uid"}],"anonymous":"control"},
                "population":{"all":[{"cookie":"beta","equals":"1"}]}}"#,
        );
        let first = format!("uid={c}");
        let mut view = headers(&[("cookie", &first), ("cookie", "beta=1")]);
        assert_eq!(decide(&rules, HALF, &mut view, || None).cohort, Cohort::Canary, "rule cookie on line two");
        let mut view = headers(&[("cookie", "beta=1"), ("cookie", &first)]);
        assert_eq!(decide(&rules, HALF, &mut view, || None).cohort, Cohort::Canary, "id cookie on line two");
        // Envoy joins lines with `,`: a comma ends a value on any line.
        let mut view = headers(&[("cookie", &format!("beta=1,x; uid={c}"))]);
        assert_eq!(decide(&rules, HALF, &mut view, || None).cohort, Cohort::Canary);
    }

    #[test]
    fn anonymous_users_get_a_sticky_id_or_control() {
        let sticky = config(r#"{"deployment":"checkout"}"#);
        let c = user(true);
        let d = decide(&sticky, HALF, &mut headers(&[]), || Some(c.clone()));
        assert_eq!(d.cohort, Cohort::Canary);
        assert_eq!(
            d.set_cookie.as_deref(),
            Some(format!("canary_uid={c}; Path=/; Max-Age=31536000; HttpOnly; SameSite=Lax").as_str())
        );
        let cookie = format!("canary_uid={c}");
        let again = decide(&sticky, HALF, &mut headers(&[("cookie", &cookie)]), || None);
        assert_eq!(again, Decision { cohort: Cohort::Canary, set_cookie: None }, "the cookie is honoured");
        let forged = decide(&sticky, HALF, &mut headers(&[("cookie", "canary_uid=a b")]), || Some(c.clone()));
        assert!(forged.set_cookie.is_some(), "implausible sticky ids are replaced");
        assert_eq!(
            decide(&sticky, HALF, &mut headers(&[]), || None).cohort,
            Cohort::Excluded,
            "no randomness: excluded"
        );
        let control =
            config(r#"{"deployment":"checkout","user_id":{"sources":[{"header":"x-user-id"}],"anonymous":"control"}}"#);
        let d = decide(&control, Share::FULL, &mut headers(&[]), || Some(c.clone()));
        assert_eq!(d, Decision { cohort: Cohort::Excluded, set_cookie: None });
    }

    #[test]
    fn deny_beats_allow_beats_eligibility() {
        let cfg = config(
            r#"{"deployment":"checkout","user_id":{"sources":[{"header":"x-user-id"}]},
                "population":{"all":[{"header":"x-internal","equals":"true"}],"allow":["qa","both"],"deny":["vip","both"]}}"#,
        );
        let c = user(true);
        assert_eq!(cohort(&cfg, &[("x-user-id", "qa")]), Cohort::Forced, "allow list skips eligibility");
        assert_eq!(cohort(&cfg, &[("x-user-id", "vip"), ("x-internal", "true")]), Cohort::Excluded);
        assert_eq!(cohort(&cfg, &[("x-user-id", "both")]), Cohort::Excluded);
        assert_eq!(cohort(&cfg, &[("x-user-id", &c)]), Cohort::Excluded, "not internal");
        assert_eq!(cohort(&cfg, &[("x-user-id", &c), ("x-internal", "true")]), Cohort::Canary);
        assert!(Cohort::Forced.routes_to_canary() && !Cohort::Excluded.routes_to_canary());
    }

    #[test]
    fn deny_and_allow_lists_match_exactly_whether_scanned_or_hashed() {
        for size in [1, SCAN_UP_TO, SCAN_UP_TO + 1, 50] {
            let ids: Vec<String> = (0..size).map(|i| format!("\"user-{i}\"")).collect();
            let cfg = config(&format!(
                r#"{{"deployment":"checkout","user_id":{{"sources":[{{"header":"x-user-id"}}]}},
                    "population":{{"deny":[{}],"allow":["qa"]}}}}"#,
                ids.join(",")
            ));
            let last = format!("user-{}", size - 1);
            assert_eq!(cohort(&cfg, &[("x-user-id", &last)]), Cohort::Excluded, "{size} denied ids");
            assert_ne!(cohort(&cfg, &[("x-user-id", "user-")]), Cohort::Excluded, "{size}: a prefix is not listed");
            assert_eq!(cohort(&cfg, &[("x-user-id", "qa")]), Cohort::Forced, "{size}");
        }
    }

    #[test]
    fn share_zero_and_full() {
        let cfg = config(r#"{"deployment":"checkout","user_id":{"sources":[{"header":"x-user-id"}]}}"#);
        for i in 0..200 {
            let id = format!("u{i}");
            assert_eq!(decide(&cfg, Share::ZERO, &mut headers(&[("x-user-id", &id)]), || None).cohort, Cohort::Control);
            assert_eq!(decide(&cfg, Share::FULL, &mut headers(&[("x-user-id", &id)]), || None).cohort, Cohort::Canary);
        }
    }
}
