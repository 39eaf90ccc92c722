//! The controller's model of the node, kept from rtnetlink dumps and events, and the desired
//! map contents derived from it. Pure: no I/O, so it is unit-tested directly.
//!
//! Events only mark what they touch as dirty (a prefix, an interface); a reconcile looks at the
//! dirty keys alone, so its work is linear in the number of changes, not in the node's size.
use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
};

use common::{Endpoint, EP_F_MESHED};

use super::membership::{Sources, Target};
use crate::maps::Prefix;

/// What the operator told the controller.
#[derive(Clone, Debug, Default)]
pub struct Config {
    /// Host veths whose name starts with one of these are pod interfaces.
    pub iface_prefixes: Vec<String>,
    /// Meshed pod addresses (one membership source among others; none by default).
    pub meshed: Vec<Prefix>,
    /// Pod addresses left entirely to the kernel (not programmed at all).
    pub exclude: Vec<Prefix>,
}

impl Config {
    pub fn matches_iface(&self, name: &str) -> bool {
        self.iface_prefixes
            .iter()
            .any(|p| name.starts_with(p.as_str()))
    }

    /// Left to the kernel entirely (`--exclude-cidr`).
    pub fn excluded(&self, addr: IpAddr) -> bool {
        self.exclude.iter().any(|p| p.contains(addr))
    }

    /// Inside a `--meshed-cidr`.
    pub fn cidr_meshed(&self, addr: IpAddr) -> bool {
        self.meshed.iter().any(|p| p.contains(addr))
    }
}

/// What we know of a link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkFacts {
    pub index: u32,
    pub name: String,
    pub mac: Option<[u8; 6]>,
    pub is_veth: bool,
    /// `IFF_LOWER_UP` (for a veth: the pod side is up too).
    pub carrier: bool,
    /// The veth peer's MAC (the pod's eth0), read through its namespace id.
    pub peer_mac: Option<[u8; 6]>,
    /// The veth peer: its ifindex in the pod's namespace and that namespace's id in ours.
    pub peer: Option<(u32, i32)>,
}

/// The desired state of one endpoint key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Desired {
    Absent,
    /// A pod route on a pod interface, but no pod MAC known yet.
    Pending,
    Present(Endpoint),
}

#[derive(Default)]
pub struct Node {
    links: HashMap<u32, LinkFacts>,
    /// Host routes (/32, /128) of the main table -> output interface.
    routes: HashMap<Prefix, u32>,
    routes_by_if: HashMap<u32, HashSet<Prefix>>,
    neigh: HashMap<(u32, IpAddr), [u8; 6]>,
    /// Pod addresses the kube source reports: `Sources` bits.
    addr_sources: HashMap<IpAddr, u32>,
    /// Pod interfaces with a sidecar listener, and the peer they were probed through.
    sidecar_links: HashMap<u32, (u32, i32)>,
    dirty_prefixes: HashSet<Prefix>,
    dirty_links: HashSet<u32>,
}

impl Node {
    /// Carries the membership sources' answers over from `old` (a full resync rebuilds the
    /// netlink view, not what the sources said).
    pub fn take_membership(&mut self, old: &mut Node) {
        self.addr_sources = std::mem::take(&mut old.addr_sources);
        self.sidecar_links = std::mem::take(&mut old.sidecar_links);
    }

    pub fn link(&self, index: u32) -> Option<&LinkFacts> {
        self.links.get(&index)
    }

    fn dirty_routes_of(&mut self, index: u32) {
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

    /// Is `index` an interface the controller should attach to?
    pub fn wants_link(&self, cfg: &Config, index: u32) -> bool {
        self.links
            .get(&index)
            .is_some_and(|l| l.is_veth && cfg.matches_iface(&l.name))
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    const HOST_MAC: [u8; 6] = [2, 0, 0, 1, 0, 1];
    const POD_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];

    fn cfg() -> Config {
        Config {
            iface_prefixes: vec!["cali".into()],
            meshed: vec![
                "10.244.0.0/16".parse().unwrap(),
                "fd00::/64".parse().unwrap(),
            ],
            exclude: vec![],
        }
    }

    fn veth(index: u32, name: &str, peer_mac: Option<[u8; 6]>) -> LinkFacts {
        LinkFacts {
            index,
            name: name.into(),
            mac: Some(HOST_MAC),
            is_veth: true,
            carrier: true,
            peer_mac,
            peer: Some((2, index.cast_signed())),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn all(node: &mut Node, cfg: &Config, realized: &HashMap<Prefix, Endpoint>) -> Plan {
        let (keys, _) = node.take_dirty();
        plan(node, cfg, realized, keys)
    }

    #[test]
    fn pod_route_on_matching_veth_becomes_a_meshed_endpoint() {
        let mut n = Node::default();
        n.upsert_link(veth(5, "cali1", Some(POD_MAC)));
        n.upsert_route(ip("10.244.0.1"), 5);
        n.upsert_route(ip("fd00::1"), 5);
        let p = all(&mut n, &cfg(), &HashMap::new());
        assert_eq!(p.upserts.len(), 2);
        let (_, ep) = p.upserts[0];
        assert_eq!(
            (ep.ifindex, ep.pod_mac, ep.host_mac),
            (5, POD_MAC, HOST_MAC)
        );
        assert!(ep.is_meshed());
        assert!(p.deletes.is_empty());
    }

    #[test]
    fn non_matching_or_non_veth_links_are_ignored() {
        let mut n = Node::default();
        n.upsert_link(veth(5, "eth0", Some(POD_MAC)));
        let mut dummy = veth(6, "cali-dummy", Some(POD_MAC));
        dummy.is_veth = false;
        n.upsert_link(dummy);
        n.upsert_route(ip("10.244.0.1"), 5);
        n.upsert_route(ip("10.244.0.2"), 6);
        let p = all(&mut n, &cfg(), &HashMap::new());
        assert_eq!(p, Plan::default());
        assert!(!n.wants_link(&cfg(), 5) && !n.wants_link(&cfg(), 6));
    }

    #[test]
    fn neighbour_is_the_fallback_and_pending_without_mac() {
        let mut n = Node::default();
        n.upsert_link(veth(5, "cali1", None));
        n.upsert_route(ip("10.244.0.1"), 5);
        let p = all(&mut n, &cfg(), &HashMap::new());
        assert_eq!((p.upserts.len(), p.pending.len()), (0, 1));
        n.set_neigh(5, ip("10.244.0.1"), Some([2, 9, 9, 9, 9, 9]));
        let p = all(&mut n, &cfg(), &HashMap::new());
        assert_eq!(p.upserts[0].1.pod_mac, [2, 9, 9, 9, 9, 9]);
    }

    #[test]
    fn meshed_and_excluded_cidrs() {
        let mut c = cfg();
        c.meshed = vec!["10.244.0.0/24".parse().unwrap()];
        // 10.244.1.1 is programmed, not meshed: no source says so.
        c.exclude = vec!["10.244.0.7/32".parse().unwrap()];
        let mut n = Node::default();
        n.upsert_link(veth(5, "cali1", Some(POD_MAC)));
        for a in ["10.244.0.1", "10.244.1.1", "10.244.0.7"] {
            n.upsert_route(ip(a), 5);
        }
        let p = all(&mut n, &c, &HashMap::new());
        let got: Vec<(String, bool)> = p
            .upserts
            .iter()
            .map(|(p, e)| (p.to_string(), e.is_meshed()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("10.244.0.1/32".into(), true),
                ("10.244.1.1/32".into(), false)
            ]
        );
    }

    #[test]
    fn no_write_when_nothing_changed_and_only_dirty_keys_are_planned() {
        let mut n = Node::default();
        n.upsert_link(veth(5, "cali1", Some(POD_MAC)));
        n.upsert_route(ip("10.244.0.1"), 5);
        n.upsert_route(ip("10.244.0.2"), 5);
        let p = all(&mut n, &cfg(), &HashMap::new());
        let realized: HashMap<_, _> = p.upserts.into_iter().collect();
        // The same facts again: nothing dirty, nothing to write.
        n.upsert_link(veth(5, "cali1", Some(POD_MAC)));
        n.upsert_route(ip("10.244.0.1"), 5);
        assert!(!n.has_dirty());
        // One change touches one key.
        n.remove_route(ip("10.244.0.2"), 5);
        let (keys, _) = n.take_dirty();
        assert_eq!(keys.len(), 1);
        let p = plan(&n, &cfg(), &realized, keys);
        assert_eq!(p.deletes, vec!["10.244.0.2".parse().unwrap()]);
        assert!(p.upserts.is_empty());
    }

    #[test]
    fn link_removal_drops_its_endpoints_and_reuse_inherits_nothing() {
        let mut n = Node::default();
        n.upsert_link(veth(5, "cali1", Some(POD_MAC)));
        n.upsert_route(ip("10.244.0.1"), 5);
        let p = all(&mut n, &cfg(), &HashMap::new());
        let realized: HashMap<_, _> = p.upserts.into_iter().collect();
        // The delete was missed; a new veth shows up with the same index.
        n.upsert_link(LinkFacts {
            mac: Some([2, 0, 0, 1, 0, 0x99]),
            ..veth(5, "cali2", Some([2, 0, 0, 0, 0, 0x99]))
        });
        let p = all(&mut n, &cfg(), &realized);
        assert_eq!(p.deletes, vec!["10.244.0.1".parse().unwrap()]);
        assert!(p.upserts.is_empty(), "{p:?}");
        // An explicit removal does the same.
        let mut n = Node::default();
        n.upsert_link(veth(5, "cali1", Some(POD_MAC)));
        n.upsert_route(ip("10.244.0.1"), 5);
        let _ = n.take_dirty();
        n.remove_link(5);
        let (keys, links) = n.take_dirty();
        assert_eq!(links, vec![5]);
        assert_eq!(plan(&n, &cfg(), &realized, keys).deletes.len(), 1);
    }

    #[test]
    fn route_moving_between_links_updates_the_endpoint() {
        let mut n = Node::default();
        n.upsert_link(veth(5, "cali1", Some(POD_MAC)));
        n.upsert_link(veth(6, "cali2", Some([2, 0, 0, 0, 0, 2])));
        n.upsert_route(ip("10.244.0.1"), 5);
        let realized: HashMap<_, _> = all(&mut n, &cfg(), &HashMap::new())
            .upserts
            .into_iter()
            .collect();
        n.upsert_route(ip("10.244.0.1"), 6);
        let p = all(&mut n, &cfg(), &realized);
        assert_eq!(p.upserts[0].1.ifindex, 6);
        // A delete naming the old interface does not remove the moved route.
        n.remove_route(ip("10.244.0.1"), 5);
        assert!(!n.has_dirty());
    }

    #[test]
    fn nobody_is_meshed_without_a_source() {
        let c = Config {
            iface_prefixes: vec!["cali".into()],
            ..Config::default()
        };
        let mut n = Node::default();
        n.upsert_link(veth(5, "cali1", Some(POD_MAC)));
        n.upsert_route(ip("10.244.0.1"), 5);
        n.upsert_route(ip("fd00::1"), 5);
        let p = all(&mut n, &c, &HashMap::new());
        assert_eq!(p.upserts.len(), 2);
        assert!(p.upserts.iter().all(|(_, e)| !e.is_meshed()), "{p:?}");
    }

    #[test]
    fn sidecar_and_kube_sources_mark_only_what_changed() {
        let c = Config {
            iface_prefixes: vec!["cali".into()],
            ..Config::default()
        };
        let mut n = Node::default();
        n.upsert_link(veth(5, "cali1", Some(POD_MAC)));
        n.upsert_link(veth(6, "cali2", Some(POD_MAC)));
        n.upsert_route(ip("10.244.0.1"), 5);
        n.upsert_route(ip("fd00::1"), 5);
        n.upsert_route(ip("10.244.0.2"), 6);
        let realized: HashMap<_, _> = all(&mut n, &c, &HashMap::new())
            .upserts
            .into_iter()
            .collect();
        let targets = n.sidecar_targets(&c);
        assert_eq!(targets.len(), 2);
        let t5 = *targets.iter().find(|t| t.ifindex == 5).unwrap();

        // A listener in pod 1: both its addresses, and nothing else, become meshed.
        n.set_sidecar_links(&[t5]);
        let (keys, _) = n.take_dirty();
        assert_eq!(keys.len(), 2);
        let p = plan(&n, &c, &realized, keys.clone());
        assert!(p
            .upserts
            .iter()
            .all(|(_, e)| e.is_meshed() && e.ifindex == 5));
        assert_eq!(p.upserts.len(), 2);
        let (set, remove) = plan_members(&n, &c, &HashMap::new(), keys);
        assert_eq!(set.len(), 2);
        assert!(set.iter().all(|(_, b)| *b == Sources::SIDECAR_PORT));
        assert!(remove.is_empty());
        // The same answer again: nothing dirty.
        n.set_sidecar_links(&[t5]);
        assert!(!n.has_dirty());
        // A probe through another peer (the ifindex was reused) does not count.
        n.set_sidecar_links(&[Target {
            ifindex: 5,
            peer: (2, 99),
        }]);
        let (keys, _) = n.take_dirty();
        assert!(!n.sources(&c, ip("10.244.0.1"), 5).meshed());
        assert_eq!(keys.len(), 2);

        // Kube: pod 2 meshed by annotation; pod 1 opted out (wins over its listener).
        n.set_sidecar_links(&[t5]);
        n.set_addr_sources(HashMap::from([
            (ip("10.244.0.2"), Sources::KUBE_ANNOTATION),
            (ip("10.244.0.1"), Sources::OPTED_OUT),
            (ip("fd00::1"), Sources::OPTED_OUT),
        ]));
        let (keys, _) = n.take_dirty();
        let p = plan(&n, &c, &realized, keys);
        let meshed: Vec<(String, bool)> = p
            .upserts
            .iter()
            .map(|(p, e)| (p.to_string(), e.is_meshed()))
            .collect();
        assert_eq!(meshed, vec![("10.244.0.2/32".into(), true)]);
        assert!(!n.sources(&c, ip("10.244.0.1"), 5).meshed());
        // An excluded address is not programmed, whatever the sources say.
        let mut cx = c.clone();
        cx.exclude = vec!["10.244.0.2/32".parse().unwrap()];
        assert_eq!(
            n.desired(&cx, "10.244.0.2".parse().unwrap()),
            Desired::Absent
        );
    }
}
