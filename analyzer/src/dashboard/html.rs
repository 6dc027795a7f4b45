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

/// Basis points as a percentage: `500` → `5 %`, `1250` → `12.5 %`.
pub fn share(bp: u32) -> String {
    let whole = bp / 100;
    match bp % 100 {
        0 => format!("{whole} %"),
        rest if rest % 10 == 0 => format!("{whole}.{} %", rest / 10),
        rest => format!("{whole}.{rest:02} %"),
    }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, u32::try_from(month).unwrap_or(0), u32::try_from(day).unwrap_or(0))
}

/// `2026-11-21 21:46:45 UTC` for a Unix-millisecond time.
pub fn timestamp(at_ms: u64) -> String {
    let seconds = at_ms / 1_000;
    let (year, month, day) = civil_from_days(i64::try_from(seconds / 86_400).unwrap_or(0));
    let s = seconds % 86_400;
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC", s / 3_600, s / 60 % 60, s % 60)
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

    #[test]
    fn shares_print_without_trailing_zeros() {
        assert_eq!(share(0), "0 %");
        assert_eq!(share(100), "1 %");
        assert_eq!(share(1_250), "12.5 %");
        assert_eq!(share(1), "0.01 %");
        assert_eq!(share(10_000), "100 %");
    }

    #[test]
    fn timestamps_are_utc_calendar_dates() {
        assert_eq!(timestamp(0), "1970-01-01 00:00:00 UTC");
        // 2024-02-29 12:34:56 UTC (a leap day).
        assert_eq!(timestamp(1_709_210_096_000), "2024-02-29 12:34:56 UTC");
        assert_eq!(timestamp(1_798_761_599_000), "2026-12-31 23:59:59 UTC");
    }
}
