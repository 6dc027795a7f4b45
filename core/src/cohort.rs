//! Cohort assignment: a stable hash of (deployment id, user id) into 10 000 buckets.
//!
//! `bucket = xxh3_64(deployment ++ ":" ++ user) mod 10_000`; a user is canary iff
//! `bucket < share` in basis points. Raising the share therefore only moves users
//! from control into canary, and each deployment gets an independent slice.
//! Only fixed-width integers are hashed or compared (never `usize`), so wasm32
//! and x86_64 agree bit for bit.

use std::fmt;
use xxhash_rust::xxh3::{Xxh3, xxh3_64};

/// Number of buckets: one basis point each, so shares down to 0.01 % are possible.
pub const BUCKETS: u16 = 10_000;

/// Separator between deployment id and user id. Deployment ids are validated to
/// `[A-Za-z0-9_-]`, so `:` cannot appear in them and the concatenation is unambiguous.
const SEPARATOR: u8 = b':';

/// Inputs up to this size (a 20-byte deployment id and a 36-byte UUID fit) are
/// hashed from a small stack buffer; zeroing it costs less than zeroing the large one.
const SMALL_INPUT: usize = 64;

/// Inputs up to this size are hashed from a stack buffer (one-shot xxh3, no
/// allocation); longer ones use the streaming hasher, which gives the same value.
const STACK_INPUT: usize = 256;

/// The bucket (0..10 000) of a user for a deployment.
pub fn bucket(deployment: &str, user_id: &str) -> u16 {
    let (d, u) = (deployment.as_bytes(), user_id.as_bytes());
    let hash = hash_joined::<SMALL_INPUT>(d, u).or_else(|| hash_joined::<STACK_INPUT>(d, u)).unwrap_or_else(|| {
        let mut hasher = Xxh3::new();
        hasher.update(d);
        hasher.update(&[SEPARATOR]);
        hasher.update(u);
        hasher.digest()
    });
    // u64 % 10_000 < 10_000 always fits in u16; modulo bias is below 1e-15.
    (hash % u64::from(BUCKETS)) as u16
}

/// xxh3 of `deployment ++ ":" ++ user`, joined in an `N`-byte stack buffer;
/// `None` if they do not fit.
fn hash_joined<const N: usize>(d: &[u8], u: &[u8]) -> Option<u64> {
    let mut buf = [0u8; N];
    let input = buf.get_mut(..d.len() + 1 + u.len())?;
    let (head, user) = input.split_at_mut(d.len() + 1);
    let (dep, sep) = head.split_at_mut(d.len());
    dep.copy_from_slice(d);
    sep.fill(SEPARATOR);
    user.copy_from_slice(u);
    Some(xxh3_64(input))
}

/// A canary share in basis points (0 = nobody, 10 000 = everybody).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Share(u16);

impl Share {
    pub const ZERO: Share = Share(0);
    pub const FULL: Share = Share(BUCKETS);

    /// `None` when above 10 000.
    pub const fn from_basis_points(bp: u32) -> Option<Share> {
        if bp <= BUCKETS as u32 { Some(Share(bp as u16)) } else { None }
    }

    pub fn basis_points(self) -> u16 {
        self.0
    }

    /// Whether a user in `bucket` is in the canary slice at this share.
    pub fn includes(self, bucket: u16) -> bool {
        bucket < self.0
    }
}

impl fmt::Display for Share {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:02}%", self.0 / 100, self.0 % 100)
    }
}

/// The cohort a request is counted in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Cohort {
    /// Eligible, hashed into the canary slice.
    Canary,
    /// Eligible, hashed outside the canary slice: the comparison baseline.
    Control,
    /// On the allow list: routed to canary, counted apart so it does not bias the comparison.
    Forced,
    /// Ineligible, denied or anonymous without a sticky id: routed to stable, counted apart.
    Excluded,
}

impl Cohort {
    pub const ALL: [Cohort; 4] = [Cohort::Canary, Cohort::Control, Cohort::Forced, Cohort::Excluded];

    /// The `cohort` label value in metrics.
    pub fn label(self) -> &'static str {
        match self {
            Cohort::Canary => "canary",
            Cohort::Control => "control",
            Cohort::Forced => "forced",
            Cohort::Excluded => "excluded",
        }
    }

    /// Whether the request goes to the canary version.
    pub fn routes_to_canary(self) -> bool {
        matches!(self, Cohort::Canary | Cohort::Forced)
    }

    /// Position in [`Cohort::ALL`], for metric tables.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Routing header values: what Envoy/Istio routes match on.
pub const ROUTE_CANARY: &str = "canary";
pub const ROUTE_STABLE: &str = "stable";

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic stream of distinct 36-byte UUID-shaped ids (no RNG crate needed).
    fn ids(seed: u64, n: usize) -> impl Iterator<Item = String> {
        (0..n as u64).map(move |i| {
            let a = xxh3_64(&(seed ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15)).to_le_bytes());
            let b = xxh3_64(&a.to_le_bytes());
            format!(
                "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
                a >> 32,
                (a >> 16) & 0xffff,
                a & 0xffff,
                b >> 48,
                b & 0xffff_ffff_ffff
            )
        })
    }

    fn canary_fraction(deployment: &str, share: Share, n: usize) -> f64 {
        let hits = ids(7, n).filter(|id| share.includes(bucket(deployment, id))).count();
        hits as f64 / n as f64
    }

    #[test]
    fn same_inputs_give_the_same_bucket() {
        for id in ids(1, 1000) {
            assert_eq!(bucket("checkout", &id), bucket("checkout", &id));
        }
    }

    #[test]
    fn known_values_are_pinned_across_targets_and_releases() {
        // Reference values from the Python `xxhash` package (an independent xxh3
        // implementation): xxhash.xxh3_64_intdigest(b"checkout:user-42") % 10000.
        // Pinned so a change of hash, separator or modulus fails on every target.
        assert_eq!(bucket("checkout", "user-42"), 6447);
        assert_eq!(bucket("search", "00000000-0000-4000-8000-000000000000"), 7427);
    }

    #[test]
    fn long_ids_hash_like_short_ones() {
        // "checkout:" is 9 bytes: ids of 55/56 and 247/248 bytes sit on the buffers' edges.
        for len in [0, 1, 36, 54, 55, 56, 100, 246, 247, 248, 1000] {
            let id = "u".repeat(len);
            let mut joined = b"checkout:".to_vec();
            joined.extend_from_slice(id.as_bytes());
            assert_eq!(bucket("checkout", &id), (xxh3_64(&joined) % 10_000) as u16, "{len}-byte id");
        }
    }

    #[test]
    fn raising_the_share_only_adds_users() {
        let users: Vec<String> = ids(2, 20_000).collect();
        let mut previous = vec![false; users.len()];
        for bp in (0..=10_000).step_by(50) {
            let share = Share::from_basis_points(bp).unwrap();
            for (i, id) in users.iter().enumerate() {
                let now = share.includes(bucket("checkout", id));
                assert!(now || !previous[i], "user {id} left canary when the share rose to {share}");
                previous[i] = now;
            }
        }
        assert!(previous.iter().all(|c| *c), "at 100 % everybody is canary");
    }

    #[test]
    fn canary_fraction_is_within_0_2_points_over_1m_ids() {
        for bp in [100u32, 500, 5000] {
            let share = Share::from_basis_points(bp).unwrap();
            let fraction = canary_fraction("checkout", share, 1_000_000);
            let expected = f64::from(bp) / 10_000.0;
            assert!((fraction - expected).abs() < 0.002, "share {share}: got {fraction}");
        }
    }

    #[test]
    fn sub_percent_steps_work() {
        let share = Share::from_basis_points(10).unwrap(); // 0.1 %
        let fraction = canary_fraction("checkout", share, 1_000_000);
        assert!((fraction - 0.001).abs() < 0.0003, "got {fraction}");
    }

    #[test]
    fn deployments_get_independent_slices() {
        // At 50 % each, independent slices overlap on ~25 % of users; the same
        // slice would overlap on 50 %. 200k ids give a standard error of ~0.1 point.
        let share = Share::from_basis_points(5000).unwrap();
        let n = 200_000;
        let both = ids(3, n)
            .filter(|id| share.includes(bucket("checkout", id)) && share.includes(bucket("search", id)))
            .count();
        let overlap = both as f64 / n as f64;
        assert!((overlap - 0.25).abs() < 0.005, "overlap {overlap}");
    }

    #[test]
    fn share_bounds_and_display() {
        assert_eq!(Share::from_basis_points(10_001), None);
        assert_eq!(Share::from_basis_points(10_000), Some(Share::FULL));
        assert_eq!(Share::from_basis_points(5).unwrap().to_string(), "0.05%");
        assert_eq!(Share::from_basis_points(2500).unwrap().to_string(), "25.00%");
        assert!(!Share::ZERO.includes(0));
        assert!(Share::FULL.includes(9_999));
    }
}
