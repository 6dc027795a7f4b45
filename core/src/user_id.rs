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
/// Bytes, not text: Envoy forwards header bytes that are not UTF-8 (obs-text), and one
/// such cookie must not hide the others; the caller decides what a value must be.
pub fn cookie_value<'a>(cookie_header: &'a [u8], name: &str) -> Option<&'a [u8]> {
    find_cookie(cookie_header, name, |b| b == b';')
}

/// The value of cookie `name` in `cookie` lines joined with `,`, as Envoy's
/// `request.headers` property joins a repeated header. A comma inside a value cannot be
/// told from the join, so it ends the value (RFC 6265 cookie values have none).
pub fn cookie_value_in_joined_lines<'a>(joined_lines: &'a [u8], name: &str) -> Option<&'a [u8]> {
    find_cookie(joined_lines, name, |b| b == b';' || b == b',')
}

fn find_cookie<'a>(header: &'a [u8], name: &str, is_separator: impl Fn(u8) -> bool) -> Option<&'a [u8]> {
    let name = name.as_bytes();
    header.split(|&b| is_separator(b)).find_map(|pair| {
        let at = pair.iter().position(|&b| b == b'=')?;
        let (key, value) = (pair.get(..at)?, pair.get(at + 1..)?);
        (key.trim_ascii() == name).then(|| {
            let value = value.trim_ascii();
            value.strip_prefix(b"\"").and_then(|v| v.strip_suffix(b"\"")).unwrap_or(value)
        })
    })
}

/// Lines joined as Envoy's `request.headers` property joins a repeated header: with `,`
/// (for test doubles of the host).
pub fn join_header_lines<'a>(lines: impl IntoIterator<Item = &'a [u8]>) -> Option<Vec<u8>> {
    let mut joined: Option<Vec<u8>> = None;
    for line in lines {
        match joined.as_mut() {
            None => joined = Some(line.to_vec()),
            Some(all) => {
                all.push(b',');
                all.extend_from_slice(line);
            }
        }
    }
    joined
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_values_are_found_by_exact_name() {
        let header = b"theme=dark; canary_uid=abc123;  session=\"q w\"; x_canary_uid=nope";
        assert_eq!(cookie_value(header, "canary_uid"), Some(&b"abc123"[..]));
        assert_eq!(cookie_value(header, "session"), Some(&b"q w"[..]));
        assert_eq!(cookie_value(header, "uid"), None);
        assert_eq!(cookie_value(b"", "a"), None);
        assert_eq!(cookie_value(b"novalue; a=", "a"), Some(&b""[..]));
    }

    #[test]
    fn a_cookie_that_is_not_utf8_hides_no_other() {
        let header = b"session_user=\xff\xfe; canary_uid=abc123";
        assert_eq!(cookie_value(header, "session_user"), Some(&b"\xff\xfe"[..]));
        assert_eq!(cookie_value(header, "canary_uid"), Some(&b"abc123"[..]));
    }

    #[test]
    fn cookies_are_found_in_lines_joined_as_envoy_joins_them() {
        assert_eq!(join_header_lines([]), None);
        let joined = join_header_lines([&b"theme=dark"[..], b"a=1, b; canary_uid=abc"]).unwrap();
        assert_eq!(joined, b"theme=dark,a=1, b; canary_uid=abc".to_vec());
        assert_eq!(cookie_value_in_joined_lines(&joined, "canary_uid"), Some(&b"abc"[..]));
        assert_eq!(cookie_value_in_joined_lines(&joined, "theme"), Some(&b"dark"[..]));
        assert_eq!(cookie_value_in_joined_lines(&joined, "a"), Some(&b"1"[..]), "a comma ends a value");
        assert_eq!(cookie_value(&joined, "theme"), Some(&b"dark,a=1, b"[..]), "one line: only `;` separates");
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
