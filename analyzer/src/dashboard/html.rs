//! Escaping and small formatting helpers for the dashboard's HTML. Everything
//! that comes from a policy, a request or the audit log (deployment names,
//! reasons, actors, metric names) passes through [`escape`] before it reaches a
//! page, in text and in attribute values alike.

use std::fmt::Write as _;

/// Escapes `& < > " '` so the text is safe in element content and in quoted attributes.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Escapes a path segment for a URL inside an attribute: anything but unreserved
/// characters is percent-encoded (deployment ids are `[A-Za-z0-9_-]` anyway).
pub fn path_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(escape("<script>alert('x&y')</script>"), "&lt;script&gt;alert(&#39;x&amp;y&#39;)&lt;/script&gt;");
        assert_eq!(escape("a\"b"), "a&quot;b");
        assert_eq!(escape("plain — ünïcode"), "plain — ünïcode");
    }

    #[test]
    fn path_segments_are_percent_encoded() {
        assert_eq!(path_segment("checkout-v2_x"), "checkout-v2_x");
        assert_eq!(path_segment("a/b c\"<"), "a%2Fb%20c%22%3C");
    }
}
