//! Which deployment a request belongs to, from its `:authority` and `:path`.
//!
//! One filter instance may serve many deployments, each matched by hosts (exact or
//! `*.suffix`, with or without a port) and optional `:path` prefixes. The patterns are
//! compiled once, at configure time, into hash tables keyed by host and by path
//! prefix, so a request costs a few hash lookups however many deployments there are:
//! one per candidate host key (the authority with and without its port, and each of
//! its parent domains for wildcards) and one per distinct prefix length configured on
//! the host it lands on. A request that matches nothing is told so without reading
//! `:path` unless a candidate host has path prefixes.
//!
//! Precedence, most specific first: the exact host with the request's port, the exact
//! host on any port, the longest wildcard (with the port, then without), then the
//! deployments that name no host. Within one host key, the longest path prefix wins
//! over a deployment of that host without prefixes. If a host key's deployments do
//! not match the path, the next candidate is tried, so `api.example.com` with prefix
//! `/orders` and `*.example.com` send `api.example.com/other` to the wildcard's.

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Longest host pattern accepted: a DNS name (253) plus a port.
const MAX_HOST_LEN: usize = 261;

/// Longest path prefix accepted: routes' prefixes are short; this keeps the table's
/// keys (and a hostile `:path` sliced to them) small.
const MAX_PATH_PREFIX_LEN: usize = 1024;

/// The tables' hasher: xxh3 over the key in one call. std's SipHash guards a map that
/// clients can insert into against flooding; these tables are built from the operator's
/// configuration only, and a lookup of a client's authority probes at most the entries
/// configured, so the faster hash loses nothing (`make bench`, `BENCH=deployments`).
#[derive(Debug, Default, Clone, Copy)]
struct KeyHash;

impl BuildHasher for KeyHash {
    type Hasher = KeyHasher;

    fn build_hasher(&self) -> KeyHasher {
        KeyHasher(0)
    }
}

/// Chains each `write` (a slice's length prefix, then its bytes) through xxh3's seed.
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0 = xxh3_64_with_seed(bytes, self.0);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type Table<V> = HashMap<Box<[u8]>, V, KeyHash>;

/// A validated host pattern, lower-case, as it keys the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// `api.example.com` or `api.example.com:8443`.
    Exact(String),
    /// `*.example.com` (stored as `.example.com`), optionally with a port.
    Suffix(String),
    /// `*`: any host.
    Any,
}

impl HostPattern {
    /// Parses one `match.hosts` entry; `Err` says what was expected.
    pub fn parse(text: &str) -> Result<HostPattern, &'static str> {
        if text == "*" {
            return Ok(HostPattern::Any);
        }
        let lower = text.to_ascii_lowercase();
        let (wildcard, rest) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, lower.as_str()),
        };
        let (host, port) = split_port(rest.as_bytes());
        let host_ok = !host.is_empty()
            && lower.len() <= MAX_HOST_LEN
            && (host.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
                || (!wildcard && is_bracketed_ipv6(host)));
        let port_ok =
            port.is_none_or(|p| std::str::from_utf8(p).ok().and_then(|p| p.parse::<u16>().ok()).is_some_and(|p| p > 0));
        let port_shape_ok = rest.len() == host.len() + port.map_or(0, |p| p.len() + 1);
        if !(host_ok && port_ok && port_shape_ok) || host.starts_with(b".") || host.ends_with(b".") {
            return Err(
                "a host name (letters, digits, '.', '-'), `*.` and a domain, an IPv6 address in brackets, or `*`; each optionally with `:port` (1-65535)",
            );
        }
        Ok(if wildcard { HostPattern::Suffix(format!(".{rest}")) } else { HostPattern::Exact(lower) })
    }
}

fn is_bracketed_ipv6(host: &[u8]) -> bool {
    host.strip_prefix(b"[").and_then(|h| h.strip_suffix(b"]")).is_some_and(|inner| {
        !inner.is_empty() && inner.iter().all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'))
    })
}

/// Splits `host:port` at the port's colon; a bracketed IPv6 literal keeps its own
/// colons. The port is returned only if it is all digits (Envoy passes the authority
/// as sent, so anything else stays part of the host and simply matches nothing).
fn split_port(authority: &[u8]) -> (&[u8], Option<&[u8]>) {
    let host_end = if authority.first() == Some(&b'[') {
        match authority.iter().position(|&b| b == b']') {
            Some(end) => end,
            None => return (authority, None),
        }
    } else {
        0
    };
    let colon = authority.iter().rposition(|&b| b == b':').filter(|&c| c > host_end || host_end == 0);
    let Some((host, rest)) = colon.map(|c| authority.split_at(c)) else { return (authority, None) };
    match rest.strip_prefix(b":") {
        Some(port) if !port.is_empty() && port.iter().all(u8::is_ascii_digit) => (host, Some(port)),
        _ => (authority, None),
    }
}

/// A deployment's match: any of `hosts` (empty: any host) and any of `paths` (empty: any path).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RequestMatch {
    pub hosts: Vec<HostPattern>,
    pub paths: Vec<String>,
}

/// Checks one `match.paths` entry.
pub fn check_path_prefix(prefix: &str) -> Result<(), &'static str> {
    if prefix.starts_with('/') && prefix.len() <= MAX_PATH_PREFIX_LEN {
        Ok(())
    } else {
        Err("a path prefix starting with '/', at most 1024 bytes")
    }
}

/// Two deployments claim the same requests: which entries collide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The deployment (by position) that claimed the key first.
    pub first: usize,
    /// The deployment that claims it again.
    pub second: usize,
    /// The host and path, as a reader would write them.
    pub what: String,
}

/// The deployments of one host key, by path prefix.
#[derive(Debug, Default)]
struct PathTable {
    by_prefix: Table<usize>,
    /// The distinct prefix lengths, longest first: one lookup each.
    lengths: Vec<usize>,
    /// The deployment of this host that names no path.
    any_path: Option<usize>,
}

impl PathTable {
    fn needs_path(&self) -> bool {
        !self.lengths.is_empty()
    }

    fn find(&self, path: Option<&[u8]>) -> Option<usize> {
        if let Some(path) = path {
            for &len in &self.lengths {
                if let Some(&d) = path.get(..len).and_then(|p| self.by_prefix.get(p)) {
                    return Some(d);
                }
            }
        }
        self.any_path
    }

    fn insert(&mut self, prefix: Option<&str>, deployment: usize) -> Result<(), usize> {
        match prefix {
            None => match self.any_path {
                Some(first) => Err(first),
                None => {
                    self.any_path = Some(deployment);
                    Ok(())
                }
            },
            Some(prefix) => {
                let key: Box<[u8]> = prefix.as_bytes().into();
                if let Some(&first) = self.by_prefix.get(&key) {
                    return Err(first);
                }
                self.by_prefix.insert(key, deployment);
                if !self.lengths.contains(&prefix.len()) {
                    self.lengths.push(prefix.len());
                    self.lengths.sort_unstable_by(|a, b| b.cmp(a));
                }
                Ok(())
            }
        }
    }
}

/// The compiled match of every deployment of one filter instance.
#[derive(Debug, Default)]
pub struct RouteTable {
    /// `host` or `host:port`, lower-case.
    exact: Table<PathTable>,
    /// `.suffix` or `.suffix:port`, lower-case.
    suffix: Table<PathTable>,
    /// Deployments that name no host.
    any_host: PathTable,
    /// The lengths of the configured wildcard suffixes (`.example.com`: 12), without their
    /// ports, distinct: a parent domain of another length is not looked up, so a request
    /// costs no hashing for parents no wildcard can match (none at all without wildcards).
    suffix_lengths: Vec<usize>,
}

impl RouteTable {
    /// Compiles the matches, in deployment order; `Err` names the first collision.
    pub fn build(matches: &[RequestMatch]) -> Result<RouteTable, Conflict> {
        let mut table = RouteTable::default();
        for (deployment, m) in matches.iter().enumerate() {
            let any = [HostPattern::Any];
            let hosts = if m.hosts.is_empty() { &any[..] } else { &m.hosts[..] };
            let paths: Vec<Option<&str>> =
                if m.paths.is_empty() { vec![None] } else { m.paths.iter().map(|p| Some(p.as_str())).collect() };
            for host in hosts {
                let (paths_table, shown) = match host {
                    HostPattern::Exact(h) => (table.exact.entry(h.as_bytes().into()).or_default(), h.clone()),
                    HostPattern::Suffix(s) => {
                        let host_len = split_port(s.as_bytes()).0.len();
                        if !table.suffix_lengths.contains(&host_len) {
                            table.suffix_lengths.push(host_len);
                        }
                        (table.suffix.entry(s.as_bytes().into()).or_default(), format!("*{s}"))
                    }
                    HostPattern::Any => (&mut table.any_host, "any host".to_string()),
                };
                for path in &paths {
                    paths_table.insert(*path, deployment).map_err(|first| Conflict {
                        first,
                        second: deployment,
                        what: format!(
                            "{shown} with {}",
                            path.map_or("any path".to_string(), |p| format!("path prefix {p:?}"))
                        ),
                    })?;
                }
            }
        }
        Ok(table)
    }

    /// The deployment (by position) a request belongs to. `authority` is the request's
    /// `:authority` as sent (any bytes); `path` is called at most once, and only if a
    /// candidate host has path prefixes.
    pub fn find(&self, authority: Option<&[u8]>, path: impl FnOnce() -> Option<Vec<u8>>) -> Option<usize> {
        let mut path = LazyPath { read: Some(path), value: None };
        let authority = authority.unwrap_or_default();
        // Lower-cased only when it has upper case: most clients send it lower-case already.
        let lower: Cow<[u8]> = if authority.iter().any(u8::is_ascii_uppercase) {
            Cow::Owned(authority.to_ascii_lowercase())
        } else {
            Cow::Borrowed(authority)
        };
        let (host, port) = split_port(&lower);
        if !host.is_empty() {
            if port.is_some() {
                if let Some(d) = self.exact.get(&lower[..]).and_then(|t| path.find(t)) {
                    return Some(d);
                }
            }
            if let Some(d) = self.exact.get(host).and_then(|t| path.find(t)) {
                return Some(d);
            }
            if !self.suffix_lengths.is_empty() {
                // Each parent domain a wildcard could match, longest first: `.b.example.com`,
                // `.example.com`, `.com`.
                let mut key = Vec::with_capacity(lower.len());
                let parents = host
                    .iter()
                    .enumerate()
                    .filter(|(_, b)| **b == b'.')
                    .filter_map(|(i, _)| host.get(i..))
                    .filter(|parent| self.suffix_lengths.contains(&parent.len()));
                for parent in parents {
                    if let Some(port) = port {
                        key.clear();
                        key.extend_from_slice(parent);
                        key.push(b':');
                        key.extend_from_slice(port);
                        if let Some(d) = self.suffix.get(&key[..]).and_then(|t| path.find(t)) {
                            return Some(d);
                        }
                    }
                    if let Some(d) = self.suffix.get(parent).and_then(|t| path.find(t)) {
                        return Some(d);
                    }
                }
            }
        }
        path.find(&self.any_host)
    }
}

/// `:path`, read from the host only when a candidate table needs it, and then once.
struct LazyPath<F: FnOnce() -> Option<Vec<u8>>> {
    read: Option<F>,
    value: Option<Vec<u8>>,
}

impl<F: FnOnce() -> Option<Vec<u8>>> LazyPath<F> {
    fn find(&mut self, table: &PathTable) -> Option<usize> {
        if table.needs_path() {
            if let Some(read) = self.read.take() {
                self.value = read();
            }
        }
        table.find(self.value.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn m(hosts: &[&str], paths: &[&str]) -> RequestMatch {
        RequestMatch {
            hosts: hosts.iter().map(|h| HostPattern::parse(h).unwrap()).collect(),
            paths: paths.iter().map(|p| p.to_string()).collect(),
        }
    }

    fn find(table: &RouteTable, authority: &str, path: &str) -> Option<usize> {
        table.find(Some(authority.as_bytes()), || Some(path.as_bytes().to_vec()))
    }

    #[test]
    fn hosts_match_exactly_by_wildcard_and_with_or_without_a_port() {
        let table = RouteTable::build(&[
            m(&["checkout.example.com"], &[]),
            m(&["*.shop.example"], &[]),
            m(&["orders:8080"], &[]),
            m(&["Orders"], &[]),
        ])
        .unwrap();
        assert_eq!(find(&table, "checkout.example.com", "/"), Some(0));
        assert_eq!(find(&table, "CHECKOUT.example.com:443", "/"), Some(0));
        assert_eq!(find(&table, "a.shop.example", "/"), Some(1));
        assert_eq!(find(&table, "a.b.shop.example:9", "/"), Some(1));
        assert_eq!(find(&table, "shop.example", "/"), None, "a wildcard needs a label before its suffix");
        assert_eq!(find(&table, "orders:8080", "/"), Some(2));
        assert_eq!(find(&table, "orders:8081", "/"), Some(3), "the port-less pattern takes any other port");
        assert_eq!(find(&table, "orders", "/"), Some(3));
        assert_eq!(find(&table, "payments", "/"), None);
        assert_eq!(table.find(None, || None), None);
    }

    #[test]
    fn the_most_specific_host_then_the_longest_prefix_wins_and_misses_fall_through() {
        let table = RouteTable::build(&[
            m(&["api.example.com"], &["/orders", "/orders/v2"]),
            m(&["api.example.com"], &["/orders/v1"]),
            m(&["*.example.com"], &[]),
            m(&["*.api.example.com:8443"], &[]),
            m(&[], &["/static"]),
        ])
        .unwrap();
        assert_eq!(find(&table, "api.example.com", "/orders/v1/x"), Some(1));
        assert_eq!(find(&table, "api.example.com", "/orders/v2/x"), Some(0));
        assert_eq!(find(&table, "api.example.com", "/ordersx"), Some(0), "a prefix is bytes, as Envoy's route prefix");
        assert_eq!(find(&table, "api.example.com", "/other"), Some(2), "the exact host's paths miss: the wildcard's");
        assert_eq!(find(&table, "x.api.example.com:8443", "/"), Some(3));
        assert_eq!(find(&table, "x.api.example.com", "/"), Some(2));
        assert_eq!(find(&table, "elsewhere.org", "/static/a.css"), Some(4));
        assert_eq!(find(&table, "elsewhere.org", "/"), None);
    }

    #[test]
    fn path_is_read_only_when_a_candidate_needs_it() {
        let table = RouteTable::build(&[m(&["a.example"], &[]), m(&["b.example"], &["/x"])]).unwrap();
        let reads = Cell::new(0);
        let read = || {
            reads.set(reads.get() + 1);
            Some(b"/x".to_vec())
        };
        assert_eq!(table.find(Some(b"a.example"), read), Some(0));
        assert_eq!(reads.get(), 0);
        assert_eq!(table.find(Some(b"c.example"), read), None);
        assert_eq!(reads.get(), 0, "an unmatched host reads no path");
        assert_eq!(table.find(Some(b"b.example"), read), Some(1));
        assert_eq!(reads.get(), 1);
    }

    #[test]
    fn hostile_authorities_match_nothing_and_do_not_panic() {
        let table = RouteTable::build(&[m(&["a.example"], &["/"]), m(&["*.example"], &[])]).unwrap();
        for authority in [&b""[..], b":", b"::::", b"[", b"[::1", b"[::1]:", b"a.example:", b".", b"..", b"\xff\xfe:80"]
        {
            let found = table.find(Some(authority), || Some(b"\xff".to_vec()));
            assert_eq!(found, None, "{authority:?}");
        }
        assert_eq!(find(&table, "a.example:", "/"), None, "an empty port keeps the colon in the host");
        assert_eq!(table.find(Some(&vec![b'a'; 100_000]), || None), None);
    }

    #[test]
    fn a_key_claimed_twice_is_a_conflict_naming_both() {
        let conflict =
            RouteTable::build(&[m(&["a.example"], &["/x"]), m(&["b.example", "A.example"], &["/x"])]).unwrap_err();
        assert_eq!((conflict.first, conflict.second), (0, 1));
        assert_eq!(conflict.what, r#"a.example with path prefix "/x""#);
        let conflict = RouteTable::build(&[m(&[], &[]), m(&["*"], &[])]).unwrap_err();
        assert_eq!(conflict.what, "any host with any path");
        assert!(
            RouteTable::build(&[m(&["a.example"], &["/x"]), m(&["a.example"], &["/y"]), m(&["a.example"], &[])])
                .is_ok()
        );
    }

    #[test]
    fn host_patterns_are_validated() {
        for ok in
            ["a", "a.example.com", "A.EXAMPLE:80", "*.example.com", "*.example.com:8443", "[::1]:80", "[::1]", "*"]
        {
            assert!(HostPattern::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "a b",
            "a:0",
            "a:65536",
            "a:x",
            "*.",
            "*example.com",
            "a.*.com",
            ".a",
            "a.",
            "a:",
            "*.[::1]",
            "ü.example",
        ] {
            assert!(HostPattern::parse(bad).is_err(), "{bad}");
        }
        assert!(check_path_prefix("/").is_ok());
        assert!(check_path_prefix("api").is_err());
        assert!(check_path_prefix(&format!("/{}", "a".repeat(1024))).is_err());
    }
}
