//! The netlink view of the node: links, host routes of the main table and neighbours, kept
//! from dumps and events, with the keys each change makes dirty.
use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
};

use super::{Config, LinkFacts};
use crate::maps::Prefix;

#[derive(Default)]
pub struct Node {
    pub(super) links: HashMap<u32, LinkFacts>,
    /// Host routes (/32, /128) of the main table -> output interface.
    pub(super) routes: HashMap<Prefix, u32>,
    pub(super) routes_by_if: HashMap<u32, HashSet<Prefix>>,
    pub(super) neigh: HashMap<(u32, IpAddr), [u8; 6]>,
    /// Pod addresses the kube source reports: `Sources` bits.
    pub(super) addr_sources: HashMap<IpAddr, u32>,
    /// Pod interfaces with a sidecar listener, and the peer they were probed through.
    pub(super) sidecar_links: HashMap<u32, (u32, i32)>,
    pub(super) dirty_prefixes: HashSet<Prefix>,
    pub(super) dirty_links: HashSet<u32>,
}

impl Node {
    pub fn link(&self, index: u32) -> Option<&LinkFacts> {
        self.links.get(&index)
    }

    pub(super) fn dirty_routes_of(&mut self, index: u32) {
        if let Some(ps) = self.routes_by_if.get(&index) {
            self.dirty_prefixes.extend(ps.iter().copied());
        }
    }

    pub fn upsert_link(&mut self, l: LinkFacts) {
        if self.links.get(&l.index) == Some(&l) {
            return;
        }
        let index = l.index;
        // A new identity on a known index (missed delete, ifindex reuse) must not inherit
        // anything: drop what we knew of the old one.
        if let Some(old) = self.links.get(&index) {
            if old.name != l.name || old.mac != l.mac {
                self.drop_link_state(index);
            }
        }
        self.links.insert(index, l);
        self.dirty_links.insert(index);
        self.dirty_routes_of(index);
    }

    pub fn remove_link(&mut self, index: u32) {
        if self.links.remove(&index).is_some() {
            self.dirty_links.insert(index);
        }
        // IPv4 routes vanish with their device without RTM_DELROUTE; neighbours too.
        self.drop_link_state(index);
    }

    fn drop_link_state(&mut self, index: u32) {
        if let Some(ps) = self.routes_by_if.remove(&index) {
            for p in ps {
                self.routes.remove(&p);
                self.dirty_prefixes.insert(p);
            }
        }
        self.neigh.retain(|(i, _), _| *i != index);
        self.dirty_links.insert(index);
    }

    pub fn upsert_route(&mut self, addr: IpAddr, oif: u32) {
        let p = Prefix::host(addr);
        if let Some(old) = self.routes.insert(p, oif) {
            if old == oif {
                return;
            }
            if let Some(set) = self.routes_by_if.get_mut(&old) {
                set.remove(&p);
            }
        }
        self.routes_by_if.entry(oif).or_default().insert(p);
        self.dirty_prefixes.insert(p);
    }

    pub fn remove_route(&mut self, addr: IpAddr, oif: u32) {
        let p = Prefix::host(addr);
        if self.routes.get(&p) == Some(&oif) {
            self.routes.remove(&p);
            if let Some(set) = self.routes_by_if.get_mut(&oif) {
                set.remove(&p);
            }
            self.dirty_prefixes.insert(p);
        }
    }

    pub fn set_neigh(&mut self, ifindex: u32, addr: IpAddr, mac: Option<[u8; 6]>) {
        let changed = match mac {
            Some(m) => self.neigh.insert((ifindex, addr), m) != Some(m),
            None => self.neigh.remove(&(ifindex, addr)).is_some(),
        };
        let p = Prefix::host(addr);
        if changed && self.routes.get(&p) == Some(&ifindex) {
            self.dirty_prefixes.insert(p);
        }
    }

    /// Marks everything dirty (full resync).
    pub fn mark_all_dirty(&mut self) {
        self.dirty_prefixes.extend(self.routes.keys().copied());
        self.dirty_links.extend(self.links.keys().copied());
    }

    pub fn has_dirty(&self) -> bool {
        !self.dirty_prefixes.is_empty() || !self.dirty_links.is_empty()
    }

    /// The dirty keys, clearing them.
    pub fn take_dirty(&mut self) -> (Vec<Prefix>, Vec<u32>) {
        (
            self.dirty_prefixes.drain().collect(),
            self.dirty_links.drain().collect(),
        )
    }

    /// Is `index` a pod interface the controller should attach to?
    pub fn wants_link(&self, cfg: &Config, index: u32) -> bool {
        self.links
            .get(&index)
            .is_some_and(|l| l.is_veth && cfg.matches_iface(&l.name))
    }

    /// Is `index` an uplink the controller should attach to?
    pub fn wants_uplink(&self, cfg: &Config, index: u32) -> bool {
        self.links
            .get(&index)
            .is_some_and(|l| cfg.is_uplink(&l.name))
    }
}
