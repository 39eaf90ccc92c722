//! The membership sources' answers (kube, sidecar probe) folded into the node model: only
//! what an answer changes is marked dirty.
use std::{collections::HashMap, net::IpAddr};

use super::{Config, Node};
use crate::{
    controller::membership::{Sources, Target},
    maps::Prefix,
};

impl Node {
    /// Carries the membership sources' answers over from `old` (a full resync rebuilds the
    /// netlink view, not what the sources said).
    pub fn take_membership(&mut self, old: &mut Node) {
        self.addr_sources = std::mem::take(&mut old.addr_sources);
        self.sidecar_links = std::mem::take(&mut old.sidecar_links);
    }

    /// The kube source's whole answer: addresses -> `Sources` bits. Marks what changed dirty.
    pub fn set_addr_sources(&mut self, new: HashMap<IpAddr, u32>) {
        for (a, bits) in &new {
            if self.addr_sources.get(a) != Some(bits) {
                self.dirty_prefixes.insert(Prefix::host(*a));
            }
        }
        for a in self.addr_sources.keys() {
            if !new.contains_key(a) {
                self.dirty_prefixes.insert(Prefix::host(*a));
            }
        }
        self.addr_sources = new;
    }

    /// The sidecar source's whole answer: the probed pod interfaces that have a listener.
    pub fn set_sidecar_links(&mut self, found: &[Target]) {
        let new: HashMap<u32, (u32, i32)> = found.iter().map(|t| (t.ifindex, t.peer)).collect();
        let mut changed: Vec<u32> = new
            .iter()
            .filter(|(i, p)| self.sidecar_links.get(i) != Some(p))
            .map(|(i, _)| *i)
            .collect();
        changed.extend(self.sidecar_links.keys().filter(|i| !new.contains_key(i)));
        self.sidecar_links = new;
        for i in changed {
            self.dirty_routes_of(i);
        }
    }

    /// The pod interfaces the sidecar source should probe.
    pub fn sidecar_targets(&self, cfg: &Config) -> Vec<Target> {
        self.links
            .values()
            .filter(|l| l.is_veth && cfg.matches_iface(&l.name))
            .filter_map(|l| {
                l.peer.map(|peer| Target {
                    ifindex: l.index,
                    peer,
                })
            })
            .collect()
    }

    /// Why the pod address `addr` behind `oif` is (not) meshed.
    pub fn sources(&self, cfg: &Config, addr: IpAddr, oif: u32) -> Sources {
        let mut bits = self.addr_sources.get(&addr).copied().unwrap_or(0);
        if cfg.cidr_meshed(addr) {
            bits |= Sources::CIDR;
        }
        // The probe counts only for the very peer it went through (an ifindex may be reused).
        let peer = self.links.get(&oif).and_then(|l| l.peer);
        if peer.is_some() && self.sidecar_links.get(&oif).copied() == peer {
            bits |= Sources::SIDECAR_PORT;
        }
        Sources(bits)
    }
}
