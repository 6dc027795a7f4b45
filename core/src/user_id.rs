//! Where a request's user id comes from: configured headers and cookies, in order,
//! then (for anonymous users) a sticky generated id kept in a cookie.

/// One place to look for the user id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdSource {
    /// A request header (lower-case name), e.g. set by the auth layer in front.
    Header(String),
    /// A cookie by name.
    Cookie(String),
}

/// What happens to a request with no user id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnonymousPolicy {
    /// Give it a random id kept in this cookie, so its next requests land in the same cohort.
    Sticky(StickyCookie),
    /// Route it to stable and count it as excluded.
    Control,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StickyCookie {
    pub name: String,
    pub max_age_s: u32,
}

impl StickyCookie {
    /// The `Set-Cookie` value that stores a newly generated id.
    pub fn set_cookie_value(&self, id: &str) -> String {
        format!("{}={}; Path=/; Max-Age={}; HttpOnly; SameSite=Lax", self.name, id, self.max_age_s)
    }
}

/// Longest sticky id accepted back from a client; generated ids are 32 hex digits.
const MAX_STICKY_ID_LEN: usize = 128;

/// A sticky id returned by the client is only trusted if it looks like one we could
/// have generated; anything else is replaced (the user simply gets a new slice).
pub fn is_plausible_sticky_id(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= MAX_STICKY_ID_LEN
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Formats 16 random bytes as the 32-hex-digit sticky id.
pub fn sticky_id_from_bytes(bytes: [u8; 16]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The value of cookie `name` in a `Cookie` header (`a=1; b=2`), unquoted and trimmed.
pub fn cookie_value<'a>(cookie_header: &'a str, name: &str) -> Option<&'a str> {
    cookie_header.split(';').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key.trim() == name).then(|| {
            let value = value.trim();
            value.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(value)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_values_are_found_by_exact_name() {
        let header = "theme=dark; canary_uid=abc123;  session=\"q w\"; x_canary_uid=nope";
        assert_eq!(cookie_value(header, "canary_uid"), Some("abc123"));
        assert_eq!(cookie_value(header, "session"), Some("q w"));
        assert_eq!(cookie_value(header, "uid"), None);
        assert_eq!(cookie_value("", "a"), None);
        assert_eq!(cookie_value("novalue; a=", "a"), Some(""));
    }

    #[test]
    fn sticky_ids_round_trip_and_odd_values_are_refused() {
        let id = sticky_id_from_bytes([0xab; 16]);
        assert_eq!(id.len(), 32);
        assert!(is_plausible_sticky_id(&id));
        assert!(!is_plausible_sticky_id(""));
        assert!(!is_plausible_sticky_id("a b"));
        assert!(!is_plausible_sticky_id(&"a".repeat(129)));
        let cookie = StickyCookie { name: "canary_uid".into(), max_age_s: 60 };
        assert_eq!(
            cookie.set_cookie_value(&id),
            format!("canary_uid={id}; Path=/; Max-Age=60; HttpOnly; SameSite=Lax")
        );
    }
}
