//! Outcome rules: named per-cohort rates the filter counts in the data path (cache
//! hits, payment declines, slow database calls, a status code on a route).
//!
//! A rule's denominator is the requests it applies to (an optional path prefix and
//! method list, known once the request headers are in); its numerator is those among
//! them whose response matched (a response header equal to a value or above a
//! number, or a status code). This module owns the validated rules and their pure
//! evaluation; `config.rs` parses them. The filter hands in its values through
//! closures that this module calls only when a rule needs them, at most once per
//! request each, so a rule costs no host call for a request it cannot match and no
//! rules cost no host calls at all.

/// Most rules one configuration may declare. Each rule defines two counters per
/// cohort (8 stats per Envoy, 4 cohorts), and every applicable rule adds one or two
/// counter increments per request (4 105 Envoy instructions for a counter and a
/// histogram update in `make bench`): 16 rules keep that under 130 series per
/// deployment and a few µs per request, and fit the [`RuleSet`] bit mask.
pub const MAX_OUTCOMES: usize = 16;

/// Longest outcome name: 32 characters keep the stat name and the `outcome` label short.
pub const MAX_NAME_LEN: usize = 32;

/// Most digits a header value read as a number may have: 18 decimal digits always
/// fit a u64 exactly (10^18 < 2^63), so the digits are summed without overflow.
const MAX_NUMBER_DIGITS: usize = 18;

/// Powers of ten up to 10^18, each exact in an f64 (every power up to 10^22 is).
const POWERS_OF_TEN: [f64; MAX_NUMBER_DIGITS + 1] =
    [1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18];

/// Whether `name` is an outcome name, `[a-z][a-z0-9_]{0,31}`: a stat-name segment
/// (no dots) and a Prometheus label value that needs no escaping.
pub fn is_valid_outcome_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_lowercase())
        && name.len() <= MAX_NAME_LEN
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// What makes a response count in a rule's numerator.
#[derive(Debug, Clone, PartialEq)]
pub enum OutcomeMatch {
    /// The response header (lower-case name) equals the value, byte for byte.
    HeaderEquals { header: String, value: String },
    /// The response header, read as a decimal number, is strictly above the threshold.
    HeaderAbove { header: String, threshold: f64 },
    /// The response's status code is this one (100-599).
    Status(u32),
}

impl OutcomeMatch {
    /// The response header the match reads, if any.
    pub fn header(&self) -> Option<&str> {
        match self {
            OutcomeMatch::HeaderEquals { header, .. } | OutcomeMatch::HeaderAbove { header, .. } => Some(header),
            OutcomeMatch::Status(_) => None,
        }
    }

    /// Whether a response header value matches (`None`: the header is absent).
    fn matches_header(&self, value: Option<&[u8]>) -> bool {
        match (self, value) {
            (OutcomeMatch::HeaderEquals { value: wanted, .. }, Some(v)) => v == wanted.as_bytes(),
            (OutcomeMatch::HeaderAbove { threshold, .. }, Some(v)) => header_number(v).is_some_and(|n| n > *threshold),
            _ => false,
        }
    }
}

/// One validated rule.
#[derive(Debug, Clone, PartialEq)]
pub struct OutcomeRule {
    /// `[a-z][a-z0-9_]{0,31}`, unique in the configuration: the `outcome` label.
    pub name: String,
    /// The rule applies only to requests whose `:path` starts with this (query
    /// included, as Envoy's route `prefix` match does).
    pub path_prefix: Option<String>,
    /// The rule applies only to these `:method`s (exact, upper case); empty: any.
    pub methods: Vec<String>,
    pub matcher: OutcomeMatch,
}

impl OutcomeRule {
    fn applies(
        &self,
        path: &mut Lazy<impl FnOnce() -> Option<Vec<u8>>>,
        method: &mut Lazy<impl FnOnce() -> Option<Vec<u8>>>,
    ) -> bool {
        if let Some(prefix) = &self.path_prefix {
            if !path.get().is_some_and(|p| p.starts_with(prefix.as_bytes())) {
                return false;
            }
        }
        self.methods.is_empty()
            || method.get().is_some_and(|m| self.methods.iter().any(|wanted| m == wanted.as_bytes()))
    }
}

/// A set of rules by position: bit `i` is rule `i`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RuleSet(u32);

// Every rule position must have a bit.
const _: () = assert!(MAX_OUTCOMES <= u32::BITS as usize);

impl RuleSet {
    pub const EMPTY: RuleSet = RuleSet(0);

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn contains(self, index: usize) -> bool {
        index < MAX_OUTCOMES && self.0 & (1 << index) != 0
    }

    /// Adds rule `index`; positions at or past [`MAX_OUTCOMES`] are ignored.
    fn insert(&mut self, index: usize) {
        if index < MAX_OUTCOMES {
            self.0 |= 1 << index;
        }
    }

    fn intersection(self, other: RuleSet) -> RuleSet {
        RuleSet(self.0 & other.0)
    }

    /// The positions in the set, ascending.
    pub fn iter(self) -> impl Iterator<Item = usize> {
        let mut bits = self.0;
        std::iter::from_fn(move || {
            if bits == 0 {
                return None;
            }
            let index = bits.trailing_zeros() as usize;
            bits &= bits - 1; // clears the lowest set bit
            Some(index)
        })
    }

    pub fn len(self) -> u32 {
        self.0.count_ones()
    }
}

/// A value read through the host on first use, then kept for the request.
struct Lazy<F> {
    read: Option<F>,
    value: Option<Vec<u8>>,
}

impl<F: FnOnce() -> Option<Vec<u8>>> Lazy<F> {
    fn new(read: F) -> Self {
        Lazy { read: Some(read), value: None }
    }

    fn get(&mut self) -> Option<&[u8]> {
        if let Some(read) = self.read.take() {
            self.value = read();
        }
        self.value.as_deref()
    }
}

/// The configured rules, with what the filter needs to evaluate them cheaply.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct OutcomeRules {
    rules: Vec<OutcomeRule>,
    /// Each distinct response header the rules read, with the rules that read it,
    /// so a header is read once per request however many rules use it.
    headers: Vec<(String, RuleSet)>,
    /// Rules matching on the status code.
    status_rules: RuleSet,
}

impl OutcomeRules {
    /// The rules in order; past [`MAX_OUTCOMES`] (which the configuration refuses) they are dropped.
    pub fn new(rules: Vec<OutcomeRule>) -> OutcomeRules {
        let rules: Vec<OutcomeRule> = rules.into_iter().take(MAX_OUTCOMES).collect();
        let mut headers: Vec<(String, RuleSet)> = Vec::new();
        let mut status_rules = RuleSet::EMPTY;
        for (i, rule) in rules.iter().enumerate() {
            match rule.matcher.header() {
                Some(name) => match headers.iter_mut().find(|(h, _)| h == name) {
                    Some((_, users)) => users.insert(i),
                    None => {
                        let mut users = RuleSet::EMPTY;
                        users.insert(i);
                        headers.push((name.to_string(), users));
                    }
                },
                None => status_rules.insert(i),
            }
        }
        OutcomeRules { rules, headers, status_rules }
    }

    pub fn rules(&self) -> &[OutcomeRule] {
        &self.rules
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// The rules that apply to a request. `path` and `method` read `:path` and
    /// `:method`; each is called at most once, and only when a rule restricts by it
    /// and the rule's other restrictions have not already ruled it out.
    pub fn applicable(
        &self,
        path: impl FnOnce() -> Option<Vec<u8>>,
        method: impl FnOnce() -> Option<Vec<u8>>,
    ) -> RuleSet {
        let (mut path, mut method) = (Lazy::new(path), Lazy::new(method));
        let mut set = RuleSet::EMPTY;
        for (i, rule) in self.rules.iter().enumerate() {
            if rule.applies(&mut path, &mut method) {
                set.insert(i);
            }
        }
        set
    }

    /// Which of the `applicable` rules the response matched. `status` is its
    /// `:status` (`None` without response headers); `header` reads a response header
    /// and is called once per distinct header that an applicable rule reads, never
    /// for the others. A value that is absent, not UTF-8 or not a number matches nothing.
    pub fn matched(
        &self,
        applicable: RuleSet,
        status: Option<u32>,
        mut header: impl FnMut(&str) -> Option<Vec<u8>>,
    ) -> RuleSet {
        let mut set = RuleSet::EMPTY;
        for (name, users) in &self.headers {
            let readers = users.intersection(applicable);
            if readers.is_empty() {
                continue;
            }
            let value = header(name);
            for i in readers.iter() {
                if self.rules.get(i).is_some_and(|r| r.matcher.matches_header(value.as_deref())) {
                    set.insert(i);
                }
            }
        }
        for i in self.status_rules.intersection(applicable).iter() {
            if let (Some(OutcomeMatch::Status(code)), Some(status)) = (self.rules.get(i).map(|r| &r.matcher), status) {
                if *code == status {
                    set.insert(i);
                }
            }
        }
        set
    }
}

/// A response header value as a number: an optional sign, decimal digits and at most
/// one `.` (`120`, `-3`, `12.5`, `.5`), at most 18 digits. No exponent, no `inf` or
/// `NaN`, no spaces: a timing or a size is written so. Parsed by hand rather than by
/// `str::parse::<f64>`, which would add ~20 KB of tables and code to the wasm module.
pub fn header_number(value: &[u8]) -> Option<f64> {
    let (negative, unsigned) = match value.split_first() {
        Some((b'-', rest)) => (true, rest),
        Some((b'+', rest)) => (false, rest),
        _ => (false, value),
    };
    let (whole, fraction) = match unsigned.iter().position(|&b| b == b'.') {
        Some(dot) => {
            let (whole, dot_and_fraction) = unsigned.split_at(dot);
            (whole, dot_and_fraction.get(1..).unwrap_or_default())
        }
        None => (unsigned, &[][..]),
    };
    let digits = whole.len() + fraction.len();
    if digits == 0 || digits > MAX_NUMBER_DIGITS {
        return None;
    }
    let mut mantissa: u64 = 0;
    for &b in whole.iter().chain(fraction) {
        let digit = char::from(b).to_digit(10)?;
        // At most 18 digits: below 10^18, no overflow.
        mantissa = mantissa * 10 + u64::from(digit);
    }
    // u64 below 10^18 to f64: rounded to 53 bits, exact up to 2^53 (~9e15).
    let magnitude = mantissa as f64 / POWERS_OF_TEN.get(fraction.len())?;
    Some(if negative { -magnitude } else { magnitude })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    fn rule(name: &str, matcher: OutcomeMatch) -> OutcomeRule {
        OutcomeRule { name: name.into(), path_prefix: None, methods: vec![], matcher }
    }

    fn equals(header: &str, value: &str) -> OutcomeMatch {
        OutcomeMatch::HeaderEquals { header: header.into(), value: value.into() }
    }

    /// The four examples, in this order.
    fn examples() -> OutcomeRules {
        OutcomeRules::new(vec![
            rule("cache_hit", equals("x-cache", "HIT")),
            OutcomeRule {
                path_prefix: Some("/pay".into()),
                ..rule("declined", equals("x-payment-result", "declined"))
            },
            rule("slow_db", OutcomeMatch::HeaderAbove { header: "x-db-time-ms".into(), threshold: 100.0 }),
            OutcomeRule {
                path_prefix: Some("/checkout".into()),
                methods: vec!["POST".into()],
                ..rule("payment_required", OutcomeMatch::Status(402))
            },
        ])
    }

    fn set(indices: &[usize]) -> RuleSet {
        let mut set = RuleSet::EMPTY;
        indices.iter().for_each(|&i| set.insert(i));
        set
    }

    /// `applicable` for a request, and how many times path and method were read.
    fn applicable(rules: &OutcomeRules, path: &str, method: &str) -> (RuleSet, usize, usize) {
        let reads = RefCell::new((0, 0));
        let set = rules.applicable(
            || {
                reads.borrow_mut().0 += 1;
                Some(path.as_bytes().to_vec())
            },
            || {
                reads.borrow_mut().1 += 1;
                Some(method.as_bytes().to_vec())
            },
        );
        let (p, m) = reads.into_inner();
        (set, p, m)
    }

    #[test]
    fn names_follow_the_label_rule() {
        for good in ["a", "cache_hit", "slow_db2", &"a".repeat(32)] {
            assert!(is_valid_outcome_name(good), "{good}");
        }
        for bad in ["", "1a", "_a", "Cache", "cache-hit", "cache.hit", "a b", &"a".repeat(33), "é"] {
            assert!(!is_valid_outcome_name(bad), "{bad}");
        }
    }

    #[test]
    fn path_and_method_restrict_the_denominator_and_are_read_once() {
        let rules = examples();
        assert_eq!(applicable(&rules, "/", "GET"), (set(&[0, 2]), 1, 0), "/ GET: method never needed");
        assert_eq!(applicable(&rules, "/pay?card=1", "GET"), (set(&[0, 1, 2]), 1, 0));
        assert_eq!(applicable(&rules, "/checkout/cart", "GET"), (set(&[0, 2]), 1, 1));
        assert_eq!(applicable(&rules, "/checkout", "POST"), (set(&[0, 2, 3]), 1, 1));
        assert_eq!(applicable(&rules, "/Checkout", "POST"), (set(&[0, 2]), 1, 0), "case-sensitive, as Envoy's prefix");
    }

    #[test]
    fn no_rules_read_nothing() {
        let rules = OutcomeRules::default();
        assert_eq!(applicable(&rules, "/checkout", "POST"), (RuleSet::EMPTY, 0, 0));
        let unrestricted = OutcomeRules::new(vec![rule("cache_hit", equals("x-cache", "HIT"))]);
        assert_eq!(applicable(&unrestricted, "/", "GET"), (set(&[0]), 0, 0));
    }

    #[test]
    fn a_request_without_path_or_method_gets_only_unrestricted_rules() {
        let rules = examples();
        assert_eq!(rules.applicable(|| None, || None), set(&[0, 2]));
    }

    /// `matched` for a response with these headers; also the names read, in order.
    fn matched(
        rules: &OutcomeRules,
        applicable: RuleSet,
        status: Option<u32>,
        headers: &[(&str, &[u8])],
    ) -> (RuleSet, Vec<String>) {
        let mut read = Vec::new();
        let set = rules.matched(applicable, status, |name| {
            read.push(name.to_string());
            headers.iter().find(|(h, _)| *h == name).map(|(_, v)| v.to_vec())
        });
        (set, read)
    }

    #[test]
    fn each_kind_matches_its_response() {
        let rules = examples();
        let all = set(&[0, 1, 2, 3]);
        let headers: &[(&str, &[u8])] =
            &[("x-cache", b"HIT"), ("x-payment-result", b"declined"), ("x-db-time-ms", b"101")];
        assert_eq!(matched(&rules, all, Some(402), headers).0, all);
        let (none, _) = matched(
            &rules,
            all,
            Some(200),
            &[("x-cache", b"hit"), ("x-payment-result", b"ok"), ("x-db-time-ms", b"100")],
        );
        assert_eq!(none, RuleSet::EMPTY, "case-sensitive equality, strictly above");
    }

    #[test]
    fn only_applicable_rules_read_headers_and_each_header_once() {
        let rules = OutcomeRules::new(vec![
            rule("hit", equals("x-cache", "HIT")),
            rule("miss", equals("x-cache", "MISS")),
            OutcomeRule {
                path_prefix: Some("/pay".into()),
                ..rule("declined", equals("x-payment-result", "declined"))
            },
            rule("teapot", OutcomeMatch::Status(418)),
        ]);
        let (m, read) = matched(&rules, set(&[0, 1, 3]), Some(418), &[("x-cache", b"MISS")]);
        assert_eq!((m, read), (set(&[1, 3]), vec!["x-cache".to_string()]));
        let (m, read) = matched(&rules, set(&[3]), Some(418), &[]);
        assert_eq!((m, read.len()), (set(&[3]), 0), "a status rule reads no header");
        assert_eq!(matched(&rules, RuleSet::EMPTY, Some(418), &[("x-cache", b"HIT")]), (RuleSet::EMPTY, vec![]));
    }

    #[test]
    fn absent_headers_and_missing_responses_match_nothing() {
        let rules = examples();
        let all = set(&[0, 1, 2, 3]);
        assert_eq!(matched(&rules, all, None, &[]).0, RuleSet::EMPTY);
    }

    #[test]
    fn thresholds_need_a_finite_decimal_number() {
        let slow =
            OutcomeRules::new(vec![rule("slow", OutcomeMatch::HeaderAbove { header: "t".into(), threshold: 100.0 })]);
        let is_slow = |v: &[u8]| !matched(&slow, set(&[0]), Some(200), &[("t", v)]).0.is_empty();
        for yes in [&b"101"[..], b"100.5", b"100.000001", b"+250", b"000101", b"999999999999999999"] {
            assert!(is_slow(yes), "{:?}", String::from_utf8_lossy(yes));
        }
        for no in [
            &b"100"[..],
            b"100.0",
            b"1e3",
            b"1.2.3",
            b".",
            b"-",
            b"9999999999999999999",
            b"-500",
            b"",
            b"abc",
            b"inf",
            b"NaN",
            b"infinity",
            b"1e400",
            b"12ms",
            b" 200",
            b"\xff\xfe",
            b"1,5",
            &[b'9'; 33][..],
        ] {
            assert!(!is_slow(no), "{:?}", String::from_utf8_lossy(no));
        }
        assert_eq!(header_number(b"12.5"), Some(12.5));
        assert_eq!(header_number(b"-0.25"), Some(-0.25));
        assert_eq!(header_number(b".5"), Some(0.5));
        assert_eq!(header_number(b"7."), Some(7.0));
    }

    #[test]
    fn rules_past_the_maximum_are_dropped_not_wrapped() {
        let many = (0..MAX_OUTCOMES + 4).map(|i| rule(&format!("r{i}"), OutcomeMatch::Status(200))).collect();
        let rules = OutcomeRules::new(many);
        assert_eq!(rules.len(), MAX_OUTCOMES);
        let all = rules.applicable(|| None, || None);
        assert_eq!(all.len(), 16);
        assert_eq!(rules.matched(all, Some(200), |_| None).iter().count(), MAX_OUTCOMES);
    }
}
