//! The webhook URL of a policy (`spec.notify.webhook_url`) or of `--webhook`: a secret.
//!
//! A Slack incoming-webhook URL carries its credential in the path
//! (`/services/T…/B…/<24 random characters>`): whoever reads it can post to the
//! channel. [`WebhookUrl`] therefore shows only `scheme://host/…#xxh3:<fingerprint>`
//! (its `Debug`, `Display`, error messages, the audit log and every API and dashboard
//! view); the real URL is read only to post ([`WebhookUrl::secret`]) and to write the
//! rollout's state file, which a restarted analyzer rebuilds its notifier from.
//!
//! The fingerprint is xxh3-64 of the whole URL: two URLs can be told apart, and a
//! redacted copy read back from the audit log can be matched with the real URL in a
//! state file. It is not keyed: a URL whose secret part is short enough to guess can
//! be confirmed by guessing (Slack's 24 random characters cannot).

use std::fmt;

/// Between the kept `scheme://host` and the fingerprint in the redacted form.
const REDACTED_MARK: &str = "/…#xxh3:";
/// Hex digits of the fingerprint: xxh3-64, as wide as the policy fingerprint.
const FINGERPRINT_HEX_DIGITS: usize = 16;
/// What a webhook URL must look like, for error messages.
const EXPECTED: &str = "an http:// or https:// URL with a host and no whitespace";
/// Why the redacted form is refused where a URL to post to is needed.
pub(super) const NOT_REDACTED: &str =
    "the real URL, not the redacted form (`…#xxh3:`) that the audit log and the API show";

/// A refused webhook URL; `shown` is its redacted form, never the URL itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{shown}: expected {expected}")]
pub struct WebhookUrlError {
    pub shown: String,
    pub expected: &'static str,
}

/// A webhook URL whose secret part never reaches a log, an error or an API answer.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookUrl {
    /// The real URL; `None` when only the redacted form is known (read back from an audit record).
    secret: Option<String>,
    /// `scheme://host/…#xxh3:<16 hex digits>`: what is shown.
    redacted: String,
}

impl WebhookUrl {
    /// A real URL, as an operator writes it (a policy, `--webhook`). The redacted
    /// form is refused: nothing can be posted to it.
    pub fn parse(url: &str) -> Result<WebhookUrl, WebhookUrlError> {
        let refuse = |expected| WebhookUrlError { shown: redact(url), expected };
        if Self::parse_redacted(url).is_some() {
            return Err(refuse(NOT_REDACTED));
        }
        let host = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://")).unwrap_or_default();
        if host.is_empty() || host.starts_with(['/', '?', '#']) || url.chars().any(char::is_whitespace) {
            return Err(refuse(EXPECTED));
        }
        Ok(WebhookUrl { secret: Some(url.to_string()), redacted: redact(url) })
    }

    /// A URL as stored by the analyzer: the real one (state files, older audit
    /// records) or its redacted form (audit records, API answers).
    pub(super) fn parse_stored(text: &str) -> Result<WebhookUrl, WebhookUrlError> {
        Self::parse_redacted(text).map_or_else(|| Self::parse(text), Ok)
    }

    fn parse_redacted(text: &str) -> Option<WebhookUrl> {
        let (kept, fingerprint) = text.rsplit_once(REDACTED_MARK)?;
        let fingerprint_ok = fingerprint.len() == FINGERPRINT_HEX_DIGITS
            && fingerprint.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        (fingerprint_ok && (kept.is_empty() || kept_host(kept).is_some()))
            .then(|| WebhookUrl { secret: None, redacted: text.to_string() })
    }

    /// The real URL, to post to; `None` when only the redacted form is known.
    pub fn secret(&self) -> Option<&str> {
        self.secret.as_deref()
    }

    /// `scheme://host/…#xxh3:<fingerprint>`.
    pub fn redacted(&self) -> &str {
        &self.redacted
    }

    /// The same URL with only its redacted form.
    pub fn without_secret(&self) -> WebhookUrl {
        WebhookUrl { secret: None, redacted: self.redacted.clone() }
    }

    /// Whether both name the same URL (same fingerprint), whichever forms they hold.
    pub fn same_url(&self, other: &WebhookUrl) -> bool {
        self.redacted == other.redacted
    }

    /// What a document stores: the real URL when known, else the redacted form.
    pub(super) fn stored_text(&self) -> String {
        self.secret.clone().unwrap_or_else(|| self.redacted.clone())
    }
}

impl fmt::Debug for WebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("WebhookUrl").field(&self.redacted).finish()
    }
}

impl fmt::Display for WebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted)
    }
}

/// `scheme://host` of an http(s) URL, without user info (a credential too) or port
/// oddities beyond `[A-Za-z0-9.:[]-]`; `None` when there is nothing safe to keep.
fn kept_host(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    if scheme != "http" && scheme != "https" {
        return None;
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    let host_ok = !host.is_empty()
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'));
    host_ok.then(|| format!("{scheme}://{host}"))
}

/// `scheme://host/…#xxh3:<fingerprint of the whole URL>` (`/…#xxh3:…` alone when no host can be kept).
fn redact(url: &str) -> String {
    let fingerprint = xxhash_rust::xxh3::xxh3_64(url.as_bytes());
    format!("{}{REDACTED_MARK}{fingerprint:016x}", kept_host(url).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SLACK: &str = "https://hooks.slack.com/services/T000/B000/SECRETSECRET";

    #[test]
    fn only_scheme_host_and_fingerprint_are_shown() {
        let url = WebhookUrl::parse(SLACK).unwrap();
        assert_eq!(url.secret(), Some(SLACK));
        let shown = url.to_string();
        assert!(shown.starts_with("https://hooks.slack.com/…#xxh3:") && shown.len() == 49, "{shown}");
        for text in [shown.clone(), format!("{url:?}"), url.redacted().to_string()] {
            assert!(!text.contains("SECRET") && !text.contains("services"), "{text}");
        }
        let other = WebhookUrl::parse("https://hooks.slack.com/services/T000/B000/OTHER").unwrap();
        assert!(!other.same_url(&url), "the fingerprint tells URLs apart");
        assert!(url.without_secret().same_url(&url) && url.without_secret().secret().is_none());
        let with_user = WebhookUrl::parse("https://bot:hunter2@example.com:8443/hook?key=k").unwrap();
        assert!(with_user.redacted().starts_with("https://example.com:8443/…#xxh3:"), "{with_user}");
    }

    #[test]
    fn the_redacted_form_reads_back_but_cannot_be_posted_to() {
        let url = WebhookUrl::parse(SLACK).unwrap();
        let back = WebhookUrl::parse_stored(url.redacted()).unwrap();
        assert!(back.same_url(&url) && back.secret().is_none());
        assert_eq!(back.stored_text(), url.redacted());
        assert_eq!(WebhookUrl::parse_stored(SLACK).unwrap(), url);
        let error = WebhookUrl::parse(url.redacted()).unwrap_err();
        assert!(error.expected.contains("not the redacted form"), "{error}");
    }

    #[test]
    fn a_refused_url_is_not_echoed() {
        for bad in ["ftp://hooks.example.com/SECRET", "https:///SECRET", "https://", "hooks.slack.com/SECRET", ""] {
            let error = WebhookUrl::parse(bad).unwrap_err();
            let message = error.to_string();
            assert!(!message.contains("SECRET") && message.contains("http:// or https://"), "{message}");
        }
        let spaced = WebhookUrl::parse("https://hooks.slack.com/services/SECRET X").unwrap_err();
        assert!(spaced.shown.starts_with("https://hooks.slack.com/…#xxh3:"), "{spaced}");
    }
}
