//! The per-request decision: which user, which cohort, which route.
//!
//! Order: find the user id (sources, then sticky cookie); deny list -> excluded;
//! allow list -> forced canary; eligibility rules -> excluded; otherwise the hash
//! decides canary or control. The request's own routing header is never read.

use crate::cohort::{Cohort, Share, bucket};
use crate::config::FilterConfig;
use crate::population::RuleSubject;
use crate::user_id::{AnonymousPolicy, IdSource, cookie_value, is_plausible_sticky_id};
use std::collections::HashSet;

/// Read access to the request being decided. The filter implements it with host
/// calls; tests with a map. Header names are lower-case.
pub trait RequestView {
    fn header(&mut self, name: &str) -> Option<String>;
}

/// The outcome for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub cohort: Cohort,
    /// A `Set-Cookie` value to add to the response (a newly generated sticky id).
    pub set_cookie: Option<String>,
}

/// Caches the `cookie` header so several cookie lookups cost one host call.
struct Lookup<'v, V: RequestView> {
    view: &'v mut V,
    cookies: Option<Option<String>>,
}

impl<V: RequestView> Lookup<'_, V> {
    fn cookie(&mut self, name: &str) -> Option<String> {
        let view = &mut *self.view;
        let header = self.cookies.get_or_insert_with(|| view.header("cookie"));
        header.as_deref().and_then(|h| cookie_value(h, name)).map(str::to_string)
    }

    fn subject(&mut self, subject: &RuleSubject) -> Option<String> {
        match subject {
            RuleSubject::Header(h) => self.view.header(h),
            RuleSubject::Cookie(c) => self.cookie(c),
        }
    }

    fn source(&mut self, source: &IdSource) -> Option<String> {
        let value = match source {
            IdSource::Header(h) => self.view.header(h),
            IdSource::Cookie(c) => self.cookie(c),
        }?;
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
    config: &FilterConfig,
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
        (None, AnonymousPolicy::Sticky(cookie)) => match lookup.cookie(&cookie.name) {
            Some(id) if is_plausible_sticky_id(&id) => id,
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
    use std::collections::HashMap;

    #[derive(Default)]
    struct Headers(HashMap<String, String>, usize);

    impl RequestView for Headers {
        fn header(&mut self, name: &str) -> Option<String> {
            self.1 += 1;
            self.0.get(name).cloned()
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> Headers {
        Headers(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(), 0)
    }

    fn config(json: &str) -> FilterConfig {
        FilterConfig::parse(json.as_bytes()).unwrap()
    }

    const HALF: Share = match Share::from_basis_points(5000) {
        Some(s) => s,
        None => Share::ZERO,
    };

    /// Finds a user id whose bucket is inside (or outside) the 50 % slice of `checkout`.
    fn user(canary: bool) -> String {
        (0..).map(|i| format!("user-{i}")).find(|id| HALF.includes(bucket("checkout", id)) == canary).unwrap()
    }

    fn cohort(cfg: &FilterConfig, pairs: &[(&str, &str)]) -> Cohort {
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
        assert_eq!(view.1, 1, "one host lookup for two cookies");
        assert_eq!(cohort(&cfg, &[("x-user-id", &s), ("cookie", "beta=1")]), Cohort::Control);
        assert_eq!(cohort(&cfg, &[("x-user-id", "")]), Cohort::Excluded, "empty id is no id");
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
