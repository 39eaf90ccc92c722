//! The desired endpoint of a key, and the diff against what the maps hold.
use std::collections::HashMap;

use common::{Endpoint, EP_F_MESHED};

use super::{Config, Node};
use crate::maps::Prefix;

/// The desired state of one endpoint key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Desired {
    Absent,
    /// A pod route on a pod interface, but no pod MAC known yet.
    Pending,
    Present(Endpoint),
}

impl Node {
    /// The endpoint `p` should map to.
    pub fn desired(&self, cfg: &Config, p: Prefix) -> Desired {
        let Some(&oif) = self.routes.get(&p) else {
            return Desired::Absent;
        };
        let Some(link) = self.links.get(&oif) else {
            return Desired::Absent;
        };
        if !self.wants_link(cfg, oif) {
            return Desired::Absent;
        }
        if cfg.excluded(p.addr) {
            return Desired::Absent;
        }
        let meshed = self.sources(cfg, p.addr, oif).meshed();
        // The veth peer's MAC is the pod's; a neighbour entry is the fallback.
        let pod_mac = link
            .peer_mac
            .or_else(|| self.neigh.get(&(oif, p.addr)).copied());
        match (pod_mac, link.mac) {
            (Some(pod_mac), Some(host_mac)) => Desired::Present(Endpoint {
                ifindex: oif,
                flags: if meshed { EP_F_MESHED } else { 0 },
                pod_mac,
                host_mac,
            }),
            _ => Desired::Pending,
        }
    }
}

/// The map writes that take `realized` to the desired state for `keys`: upserts (adds and
/// changes) to apply first, deletes after, and how many keys are still pending.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub upserts: Vec<(Prefix, Endpoint)>,
    pub deletes: Vec<Prefix>,
    /// Keys with a pod route but no pod MAC yet.
    pub pending: Vec<Prefix>,
}

pub fn plan<S: std::hash::BuildHasher>(
    node: &Node,
    cfg: &Config,
    realized: &HashMap<Prefix, Endpoint, S>,
    keys: impl IntoIterator<Item = Prefix>,
) -> Plan {
    let mut plan = Plan::default();
    for p in keys {
        let want = node.desired(cfg, p);
        let have = realized.get(&p);
        match want {
            Desired::Present(ep) if have != Some(&ep) => plan.upserts.push((p, ep)),
            Desired::Present(_) => {}
            // A pending endpoint keeps no stale entry: better the kernel path than a wrong MAC.
            Desired::Pending | Desired::Absent => {
                if matches!(want, Desired::Pending) {
                    plan.pending.push(p);
                }
                if have.is_some() {
                    plan.deletes.push(p);
                }
            }
        }
    }
    plan.upserts.sort_by_key(|(p, _)| *p);
    plan.deletes.sort();
    plan
}

/// The `MEMBERSHIP` writes that take `realized` to the desired sources of `keys`: one entry per
/// programmed endpoint (set), none for the others (remove).
pub fn plan_members<S: std::hash::BuildHasher>(
    node: &Node,
    cfg: &Config,
    realized: &HashMap<Prefix, u32, S>,
    keys: impl IntoIterator<Item = Prefix>,
) -> (Vec<(Prefix, u32)>, Vec<Prefix>) {
    let (mut set, mut remove) = (Vec::new(), Vec::new());
    for p in keys {
        let want = match node.desired(cfg, p) {
            Desired::Present(ep) => Some(node.sources(cfg, p.addr, ep.ifindex).0),
            Desired::Pending | Desired::Absent => None,
        };
        match (want, realized.get(&p)) {
            (Some(w), h) if h != Some(&w) => set.push((p, w)),
            (None, Some(_)) => remove.push(p),
            _ => {}
        }
    }
    (set, remove)
}
