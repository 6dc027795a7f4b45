//! What the fleet actually routes with: every proxy's applied generation and share
//! (the filter's `canary_applied_*` gauges, read per proxy by both sources) against
//! what the analyzer serves. Pure: the engine hands in the latest interval's proxies.
//!
//! Three uses: people see "N of M proxies on generation G" and which ones lag; the
//! statistics judge the split against the share the proxies applied in each interval,
//! not the one the analyzer was serving (which they pick up a poll later); and a proxy
//! on a generation *above* the served one tells the engine its state is older than the
//! fleet's ([`FleetView::ahead`], [`crate::ladder::resync`]).

use serde::{Deserialize, Serialize};

use crate::source::ProxyApplied;

/// One proxy that does not apply the served generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaggingProxy {
    pub proxy: String,
    /// 0: it has accepted no answer yet.
    pub generation: u64,
    pub share_bp: Option<u32>,
}

/// The fleet at the latest check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetView {
    /// The generation the analyzer serves.
    pub generation: u64,
    /// Proxies that report what they apply.
    pub proxies: usize,
    pub on_generation: usize,
    pub lagging: Vec<LaggingProxy>,
    /// Proxies scraped that export no gauges (a filter older than them): unknown.
    pub without_gauges: usize,
    /// Proxies scraped that export no series of this deployment at all.
    #[serde(default)]
    pub not_exporting: usize,
    /// The deployment ids those proxies export instead, sorted, once each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub other_deployments: Vec<String>,
}

impl FleetView {
    pub fn new(served_generation: u64, proxies: &[ProxyApplied]) -> FleetView {
        let mut view = FleetView {
            generation: served_generation,
            proxies: 0,
            on_generation: 0,
            lagging: Vec::new(),
            without_gauges: 0,
            not_exporting: 0,
            other_deployments: Vec::new(),
        };
        for proxy in proxies {
            if let Some(others) = &proxy.other_deployments {
                view.not_exporting += 1;
                view.other_deployments.extend(others.iter().cloned());
                continue;
            }
            match proxy.generation {
                None => view.without_gauges += 1,
                Some(generation) => {
                    view.proxies += 1;
                    if generation == served_generation {
                        view.on_generation += 1;
                    } else {
                        view.lagging.push(LaggingProxy {
                            proxy: proxy.proxy.clone(),
                            generation,
                            share_bp: proxy.share_bp,
                        });
                    }
                }
            }
        }
        view.other_deployments.sort_unstable();
        view.other_deployments.dedup();
        view
    }

    /// Proxies were scraped and none of them exports this deployment: the policy's
    /// deployment id matches no filter's configuration (or the filter is not loaded).
    pub fn nobody_serves(&self) -> bool {
        self.not_exporting > 0 && self.proxies == 0 && self.without_gauges == 0
    }

    /// The highest generation a proxy applies, when it is above the served one: the
    /// analyzer's state is older than the fleet's (see [`crate::ladder::resync`]).
    pub fn ahead(&self) -> Option<u64> {
        self.lagging.iter().map(|proxy| proxy.generation).filter(|&g| g > self.generation).max()
    }

    /// Every proxy that reports applies the served generation (vacuously, when none reports).
    pub fn all_applied(&self) -> bool {
        self.lagging.is_empty()
    }

    /// `3 of 4 proxies on generation 17; lagging: pod-a (generation 16, 5.00 %)`.
    pub fn summary(&self) -> String {
        let mut text = format!("{} of {} proxies on generation {}", self.on_generation, self.proxies, self.generation);
        if !self.lagging.is_empty() {
            let names: Vec<String> = self
                .lagging
                .iter()
                .map(|l| {
                    let share = l.share_bp.map_or("share unknown".to_string(), crate::present::percent);
                    let generation = if l.generation == 0 {
                        "no answer yet".to_string()
                    } else {
                        format!("generation {}", l.generation)
                    };
                    format!("{} ({generation}, {share})", l.proxy)
                })
                .collect();
            text.push_str(&format!("; lagging: {}", names.join(", ")));
        }
        if self.not_exporting > 0 {
            let others =
                if self.other_deployments.is_empty() { "none".to_string() } else { self.other_deployments.join(", ") };
            text.push_str(&format!(
                "; {} not exporting this deployment (deployments they export: {others})",
                self.not_exporting
            ));
        }
        if self.without_gauges > 0 {
            text.push_str(&format!("; {} without gauges (older filter)", self.without_gauges));
        }
        text
    }
}

/// The share (basis points) the fleet applied over an interval: each proxy's share
/// weighted by the compared requests it served; proxies without gauges are taken to
/// apply `served_share_bp`. `None` when a proxy changed generation during the
/// interval: its requests were split under two shares and no one share describes them.
pub fn applied_share_bp(proxies: &[ProxyApplied], served_share_bp: u32) -> Option<u32> {
    if proxies.iter().any(|p| p.changed_during_interval) {
        return None;
    }
    let (mut weighted, mut requests) = (0u128, 0u128);
    for proxy in proxies {
        let served = u128::from(proxy.canary_requests) + u128::from(proxy.control_requests);
        weighted += served * u128::from(proxy.share_bp.unwrap_or(served_share_bp));
        requests += served;
    }
    if requests == 0 {
        return Some(served_share_bp);
    }
    // Rounded to the nearest basis point.
    u32::try_from((weighted + requests / 2) / requests).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxy(name: &str, generation: Option<u64>, share_bp: Option<u32>, requests: u64) -> ProxyApplied {
        ProxyApplied {
            proxy: name.into(),
            generation,
            share_bp,
            config_age_ms: Some(100),
            changed_during_interval: false,
            canary_requests: requests / 10,
            control_requests: requests - requests / 10,
            other_deployments: None,
        }
    }

    fn serving_others(name: &str, others: &[&str]) -> ProxyApplied {
        ProxyApplied {
            proxy: name.into(),
            other_deployments: Some(others.iter().map(|id| id.to_string()).collect()),
            ..ProxyApplied::default()
        }
    }

    #[test]
    fn proxies_that_export_only_other_deployments_are_named_with_those_ids() {
        let view = FleetView::new(1, &[serving_others("a", &["checkout", "cart"]), serving_others("b", &["checkout"])]);
        assert!(view.nobody_serves());
        assert_eq!((view.proxies, view.without_gauges, view.not_exporting), (0, 0, 2));
        assert_eq!(view.other_deployments, ["cart", "checkout"]);
        assert_eq!(
            view.summary(),
            "0 of 0 proxies on generation 1; 2 not exporting this deployment (deployments they export: cart, checkout)"
        );
        let empty = FleetView::new(1, &[serving_others("a", &[])]);
        assert!(empty.nobody_serves());
        assert!(empty.summary().ends_with("(deployments they export: none)"), "{}", empty.summary());
    }

    #[test]
    fn one_proxy_that_serves_it_is_enough() {
        let mixed = FleetView::new(1, &[serving_others("a", &["checkout"]), proxy("b", Some(1), Some(100), 10)]);
        assert!(!mixed.nobody_serves());
        let older = FleetView::new(1, &[serving_others("a", &["checkout"]), proxy("old", None, None, 10)]);
        assert!(!older.nobody_serves(), "an older filter without gauges may serve it");
        assert!(!FleetView::new(1, &[]).nobody_serves(), "no proxy scraped is another problem");
    }

    #[test]
    fn the_view_counts_who_is_on_the_served_generation_and_names_the_rest() {
        let proxies = [
            proxy("a", Some(17), Some(500), 100),
            proxy("b", Some(16), Some(100), 100),
            proxy("c", Some(0), Some(100), 0),
            proxy("old", None, None, 50),
        ];
        let view = FleetView::new(17, &proxies);
        assert_eq!((view.proxies, view.on_generation, view.without_gauges), (3, 1, 1));
        assert!(!view.all_applied());
        assert_eq!(
            view.summary(),
            "1 of 3 proxies on generation 17; lagging: b (generation 16, 1.00 %), c (no answer yet, 1.00 %); \
             1 without gauges (older filter)"
        );
        assert_eq!(FleetView::new(17, &proxies[..1]).summary(), "1 of 1 proxies on generation 17");
    }

    #[test]
    fn the_applied_share_weights_each_proxy_by_its_requests() {
        // 300 requests at 5 %, 100 at 1 %: (300·500 + 100·100) / 400 = 400 bp.
        let proxies = [proxy("a", Some(2), Some(500), 300), proxy("b", Some(1), Some(100), 100)];
        assert_eq!(applied_share_bp(&proxies, 500), Some(400));
        // No requests: what is served.
        assert_eq!(applied_share_bp(&[proxy("a", Some(2), Some(100), 0)], 500), Some(500));
        // A proxy without gauges counts at the served share.
        assert_eq!(
            applied_share_bp(&[proxy("a", None, None, 100), proxy("b", Some(1), Some(100), 100)], 500),
            Some(300)
        );
    }

    #[test]
    fn proxies_above_the_served_generation_are_ahead() {
        let lagging = [proxy("a", Some(17), Some(500), 100), proxy("b", Some(16), Some(100), 100)];
        assert_eq!(FleetView::new(17, &lagging).ahead(), None, "behind is not ahead");
        let restored =
            [proxy("a", Some(19), Some(2_500), 100), proxy("b", Some(21), Some(2_500), 0), lagging[1].clone()];
        let view = FleetView::new(17, &restored);
        assert_eq!(view.ahead(), Some(21));
        assert!(!view.all_applied());
        assert_eq!(FleetView::new(17, &[proxy("old", None, None, 10)]).ahead(), None);
    }

    #[test]
    fn a_proxy_that_changed_mid_interval_leaves_no_single_share() {
        let mut changed = proxy("a", Some(2), Some(500), 100);
        changed.changed_during_interval = true;
        assert_eq!(applied_share_bp(&[changed, proxy("b", Some(2), Some(500), 100)], 500), None);
    }
}
