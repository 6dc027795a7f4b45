//! Why a rollout is held, as data: one [`HoldReason`] per condition that keeps the
//! current step from being promoted, computed from what the engine already knows
//! (the fleet at the latest check). The API's status answer carries them; the CLI, the
//! dashboard and the webhook all render them with [`crate::present::hold_text`], so the
//! wording is the same everywhere. Pure.

use serde::{Deserialize, Serialize};

use crate::fleet::FleetView;

/// One condition that holds the rollout, with what is needed to lift it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum HoldReason {
    /// Proxies were scraped and none exports the deployment: the policy's deployment id
    /// matches no filter's configuration. `other_deployments` are the ids they do export.
    NotServed { deployment: String, proxies: usize, other_deployments: Vec<String> },
}

/// Every reason the rollout of `deployment` is held at the latest check.
pub fn hold_reasons(deployment: &str, fleet: Option<&FleetView>) -> Vec<HoldReason> {
    let mut reasons = Vec::new();
    if let Some(fleet) = fleet.filter(|fleet| fleet.nobody_serves()) {
        reasons.push(HoldReason::NotServed {
            deployment: deployment.to_string(),
            proxies: fleet.not_exporting,
            other_deployments: fleet.other_deployments.clone(),
        });
    }
    reasons
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::ProxyApplied;

    fn exporting(others: Option<&[&str]>, generation: Option<u64>) -> ProxyApplied {
        ProxyApplied {
            proxy: "envoy".into(),
            generation,
            other_deployments: others.map(|ids| ids.iter().map(|id| id.to_string()).collect()),
            ..ProxyApplied::default()
        }
    }

    #[test]
    fn a_deployment_no_proxy_exports_is_held_naming_what_they_export() {
        let fleet = FleetView::new(1, &[exporting(Some(&["checkout"]), None)]);
        assert_eq!(
            hold_reasons("orders", Some(&fleet)),
            [HoldReason::NotServed {
                deployment: "orders".into(),
                proxies: 1,
                other_deployments: vec!["checkout".into()]
            }]
        );
        let served = FleetView::new(1, &[exporting(None, Some(1))]);
        assert_eq!(hold_reasons("orders", Some(&served)), []);
        assert_eq!(hold_reasons("orders", None), []);
    }
}
