//! Population rules: who may be in the experiment at all.
//!
//! Eligibility is a pair of rule lists over request headers and cookies: every
//! rule in `all` must match and, if `any` is non-empty, at least one of it. An
//! empty configuration makes everybody eligible.

/// What a rule looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleSubject {
    /// A request header (lower-case name).
    Header(String),
    /// A cookie by name.
    Cookie(String),
}

/// How a rule compares. Comparisons are exact and case-sensitive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MatchOp {
    Equals(String),
    Prefix(String),
    Suffix(String),
    /// `true`: the subject must be there; `false`: it must be absent.
    Present(bool),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub subject: RuleSubject,
    pub op: MatchOp,
}

impl Rule {
    /// Whether the rule matches a subject value as the client sent it (`None` when
    /// absent). A value that is there but not UTF-8 is present, and matches no
    /// `equals`, `prefix` or `suffix`: stray bytes never make a user eligible.
    pub fn matches(&self, value: Option<&[u8]>) -> bool {
        let text = || value.and_then(|v| std::str::from_utf8(v).ok());
        match &self.op {
            MatchOp::Present(wanted) => value.is_some() == *wanted,
            MatchOp::Equals(s) => text().is_some_and(|v| v == s),
            MatchOp::Prefix(s) => text().is_some_and(|v| v.starts_with(s.as_str())),
            MatchOp::Suffix(s) => text().is_some_and(|v| v.ends_with(s.as_str())),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Eligibility {
    pub all: Vec<Rule>,
    pub any: Vec<Rule>,
}

impl Eligibility {
    pub fn is_unrestricted(&self) -> bool {
        self.all.is_empty() && self.any.is_empty()
    }

    /// Evaluates the rules; `lookup` returns a subject's value. Stops at the first decisive rule.
    pub fn admits(&self, mut lookup: impl FnMut(&RuleSubject) -> Option<Vec<u8>>) -> bool {
        let mut check = |rule: &Rule| rule.matches(lookup(&rule.subject).as_deref());
        self.all.iter().all(&mut check) && (self.any.is_empty() || self.any.iter().any(&mut check))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(name: &str, op: MatchOp) -> Rule {
        Rule { subject: RuleSubject::Header(name.into()), op }
    }

    #[test]
    fn operators_match_as_documented() {
        let eq = header("h", MatchOp::Equals("true".into()));
        assert!(eq.matches(Some(b"true")) && !eq.matches(Some(b"True")) && !eq.matches(None));
        let pre = header("h", MatchOp::Prefix("int-".into()));
        assert!(pre.matches(Some(b"int-7")) && !pre.matches(Some(b"ext-7")));
        let suf = header("h", MatchOp::Suffix("@example.com".into()));
        assert!(suf.matches(Some(b"ann@example.com")) && !suf.matches(Some(b"ann@example.org")));
        let present = header("h", MatchOp::Present(true));
        assert!(present.matches(Some(b"")) && !present.matches(None));
        let absent = header("h", MatchOp::Present(false));
        assert!(absent.matches(None) && !absent.matches(Some(b"x")));
    }

    #[test]
    fn values_that_are_not_utf8_are_present_and_match_no_comparison() {
        let stray = Some(&b"int-\xff@example.com"[..]);
        for op in [
            MatchOp::Equals("int-\u{ff}@example.com".into()),
            MatchOp::Prefix("int-".into()),
            MatchOp::Suffix(".com".into()),
        ] {
            assert!(!header("h", op.clone()).matches(stray), "{op:?}");
        }
        assert!(header("h", MatchOp::Present(true)).matches(stray));
        assert!(!header("h", MatchOp::Present(false)).matches(stray));
    }

    #[test]
    fn all_and_any_combine() {
        let rules = Eligibility {
            all: vec![header("x-internal", MatchOp::Equals("true".into()))],
            any: vec![header("x-a", MatchOp::Present(true)), header("x-b", MatchOp::Present(true))],
        };
        let with = |pairs: &[(&str, &str)]| {
            rules.admits(|s| match s {
                RuleSubject::Header(h) => pairs.iter().find(|(k, _)| k == h).map(|(_, v)| v.as_bytes().to_vec()),
                RuleSubject::Cookie(_) => None,
            })
        };
        assert!(with(&[("x-internal", "true"), ("x-b", "1")]));
        assert!(!with(&[("x-internal", "true")]), "needs one of `any`");
        assert!(!with(&[("x-a", "1")]), "needs all of `all`");
        assert!(Eligibility::default().admits(|_| None), "no rules admit everybody");
    }
}
