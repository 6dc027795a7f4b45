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
    /// Whether the rule matches a subject value (`None` when absent).
    pub fn matches(&self, value: Option<&str>) -> bool {
        match (&self.op, value) {
            (MatchOp::Present(wanted), v) => v.is_some() == *wanted,
            (_, None) => false,
            (MatchOp::Equals(s), Some(v)) => v == s,
            (MatchOp::Prefix(s), Some(v)) => v.starts_with(s.as_str()),
            (MatchOp::Suffix(s), Some(v)) => v.ends_with(s.as_str()),
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
    pub fn admits(&self, mut lookup: impl FnMut(&RuleSubject) -> Option<String>) -> bool {
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
        assert!(eq.matches(Some("true")) && !eq.matches(Some("True")) && !eq.matches(None));
        let pre = header("h", MatchOp::Prefix("int-".into()));
        assert!(pre.matches(Some("int-7")) && !pre.matches(Some("ext-7")));
        let suf = header("h", MatchOp::Suffix("@example.com".into()));
        assert!(suf.matches(Some("ann@example.com")) && !suf.matches(Some("ann@example.org")));
        let present = header("h", MatchOp::Present(true));
        assert!(present.matches(Some("")) && !present.matches(None));
        let absent = header("h", MatchOp::Present(false));
        assert!(absent.matches(None) && !absent.matches(Some("x")));
    }

    #[test]
    fn all_and_any_combine() {
        let rules = Eligibility {
            all: vec![header("x-internal", MatchOp::Equals("true".into()))],
            any: vec![header("x-a", MatchOp::Present(true)), header("x-b", MatchOp::Present(true))],
        };
        let with = |pairs: &[(&str, &str)]| {
            rules.admits(|s| match s {
                RuleSubject::Header(h) => pairs.iter().find(|(k, _)| k == h).map(|(_, v)| v.to_string()),
                RuleSubject::Cookie(_) => None,
            })
        };
        assert!(with(&[("x-internal", "true"), ("x-b", "1")]));
        assert!(!with(&[("x-internal", "true")]), "needs one of `any`");
        assert!(!with(&[("x-a", "1")]), "needs all of `all`");
        assert!(Eligibility::default().admits(|_| None), "no rules admit everybody");
    }
}
