//! Which version each sidecar of a service should run: the stable version,
//! or during a gray release the canary version for the selected subset.
//! At most two versions of a service are live at once.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    /// The version every sidecar outside the canary runs.
    pub stable: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<Canary>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Canary {
    pub version: String,
    pub selector: Selector,
    /// For a percentage: the sidecars chosen when the canary started. Fixed so
    /// that sidecars joining later don't reshuffle who runs what.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub nodes: BTreeSet<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Selector {
    /// Sidecars whose labels include all of these.
    Labels(BTreeMap<String, String>),
    /// This percentage of the service's connected sidecars, by node id hash.
    Percent(u32),
}

impl Selector {
    /// Parses `10%` / `10` (percentage) for `--canary`.
    pub fn percent(text: &str) -> Result<Selector, String> {
        let n: u32 = text
            .trim()
            .trim_end_matches('%')
            .parse()
            .map_err(|_| format!("{text:?} is not a percentage like 10%"))?;
        if n == 0 || n > 100 {
            return Err(format!("canary percentage must be 1..=100, got {n}"));
        }
        Ok(Selector::Percent(n))
    }

    /// Parses `k=v,k2=v2` for `--labels`.
    pub fn labels(text: &str) -> Result<Selector, String> {
        let mut labels = BTreeMap::new();
        for pair in text.split(',').filter(|p| !p.trim().is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| format!("label {pair:?} is not key=value"))?;
            labels.insert(k.trim().to_string(), v.trim().to_string());
        }
        if labels.is_empty() {
            return Err("label selector is empty".into());
        }
        Ok(Selector::Labels(labels))
    }
}

impl Canary {
    pub fn selects(&self, node_id: &str, labels: &BTreeMap<String, String>) -> bool {
        match &self.selector {
            Selector::Labels(want) => want.iter().all(|(k, v)| labels.get(k) == Some(v)),
            Selector::Percent(_) => self.nodes.contains(node_id),
        }
    }
}

impl Rollout {
    /// The version `node_id` should run, if any.
    pub fn desired(&self, node_id: &str, labels: &BTreeMap<String, String>) -> Option<&str> {
        match &self.canary {
            Some(c) if c.selects(node_id, labels) => Some(c.version.as_str()),
            _ => self.stable.as_deref(),
        }
    }
}

/// FNV-1a: a fixed, platform-independent hash so the canary choice is the
/// same on every control plane restart (not a security boundary).
pub fn node_hash(node_id: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in node_id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Chooses `percent`% (rounded up, at least one when any are connected) of
/// `node_ids`: those with the smallest hashes.
pub fn pick_percent<'a>(
    node_ids: impl IntoIterator<Item = &'a str>,
    percent: u32,
) -> BTreeSet<String> {
    let mut ids: Vec<&str> = node_ids.into_iter().collect();
    ids.sort_unstable();
    ids.dedup();
    ids.sort_by_key(|id| (node_hash(id), *id));
    let want = (ids.len() * percent.min(100) as usize).div_ceil(100);
    ids.into_iter().take(want).map(str::to_string).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn percent_picks_are_deterministic_rounded_up_and_order_independent() {
        let ids: Vec<String> = (0..20).map(|i| format!("node-{i}")).collect();
        let a = pick_percent(ids.iter().map(String::as_str), 10);
        let b = pick_percent(ids.iter().rev().map(String::as_str), 10);
        assert_eq!(a.len(), 2);
        assert_eq!(a, b);
        assert_eq!(pick_percent(["x", "y", "z"], 10).len(), 1);
        assert_eq!(pick_percent(["x", "y", "z"], 100).len(), 3);
        assert!(pick_percent(std::iter::empty(), 50).is_empty());
        // Growing the percentage only adds nodes.
        let c = pick_percent(ids.iter().map(String::as_str), 30);
        assert!(a.is_subset(&c));
    }

    #[test]
    fn fnv_matches_reference_vector() {
        // FNV-1a 64 of "a" from the reference test suite.
        assert_eq!(node_hash("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(node_hash(""), 0xcbf2_9ce4_8422_2325);
    }

    #[test]
    fn desired_version_follows_selector() {
        let mut r = Rollout {
            stable: Some("v1".into()),
            canary: Some(Canary {
                version: "v2".into(),
                selector: Selector::labels("zone=a").expect("valid"),
                nodes: BTreeSet::new(),
            }),
        };
        assert_eq!(
            r.desired("n1", &labels(&[("zone", "a"), ("x", "y")])),
            Some("v2")
        );
        assert_eq!(r.desired("n2", &labels(&[("zone", "b")])), Some("v1"));
        assert_eq!(r.desired("n3", &labels(&[])), Some("v1"));
        r.canary = Some(Canary {
            version: "v2".into(),
            selector: Selector::Percent(10),
            nodes: ["n2".to_string()].into_iter().collect(),
        });
        assert_eq!(r.desired("n2", &labels(&[])), Some("v2"));
        assert_eq!(r.desired("n1", &labels(&[])), Some("v1"));
        r.stable = None;
        assert_eq!(r.desired("n1", &labels(&[])), None);
    }

    #[test]
    fn selector_parsing() {
        assert_eq!(Selector::percent("10%"), Ok(Selector::Percent(10)));
        assert_eq!(Selector::percent("100"), Ok(Selector::Percent(100)));
        assert!(Selector::percent("0%").is_err());
        assert!(Selector::percent("101%").is_err());
        assert!(Selector::percent("ten").is_err());
        assert!(Selector::labels("a=1,b=2").is_ok());
        assert!(Selector::labels("a").is_err());
        assert!(Selector::labels("").is_err());
    }
}
