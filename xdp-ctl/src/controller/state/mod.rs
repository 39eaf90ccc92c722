//! The controller's model of the node, kept from rtnetlink dumps and events, and the desired
//! map contents derived from it. Pure: no I/O, so it is unit-tested directly.
//!
//! - `node`: the netlink view (links, host routes, neighbours) and its dirty keys;
//! - `sources`: the membership sources' answers folded into it;
//! - `plan`: the desired endpoint of a key and the map writes that realize it.
//!
//! Events only mark what they touch as dirty (a prefix, an interface); a reconcile looks at the
//! dirty keys alone, so its work is linear in the number of changes, not in the node's size.
mod node;
mod plan;
mod sources;

use std::net::IpAddr;

pub use self::{
    node::Node,
    plan::{plan, plan_members, Desired, Plan},
};
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
    /// Uplinks (interface names) that carry the uplink program (`--uplink`).
    pub uplinks: Vec<String>,
    /// Meshed pod prefixes on other nodes (`--remote-meshed-cidr`): `REMOTE_V4` / `REMOTE_V6`
    /// hold exactly these.
    pub remote_meshed: Vec<Prefix>,
}

impl Config {
    pub fn matches_iface(&self, name: &str) -> bool {
        !self.is_uplink(name)
            && self
                .iface_prefixes
                .iter()
                .any(|p| name.starts_with(p.as_str()))
    }

    pub fn is_uplink(&self, name: &str) -> bool {
        self.uplinks.iter().any(|u| u == name)
    }

    /// What `REMOTE_V4` / `REMOTE_V6` must hold.
    pub fn remote_prefixes(&self) -> Vec<(Prefix, common::Remote)> {
        self.remote_meshed
            .iter()
            .map(|p| (*p, crate::remote::remote_value(true, 0)))
            .collect()
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use common::Endpoint;

    use super::*;
    use crate::controller::membership::{Sources, Target};

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
            uplinks: vec!["eth0".into()],
            remote_meshed: vec!["10.244.2.0/24".parse().unwrap()],
        }
    }

    #[test]
    fn uplinks_are_no_pod_interfaces() {
        let c = cfg();
        assert!(c.is_uplink("eth0"));
        assert!(!c.matches_iface("eth0"));
        assert!(c.matches_iface("cali1"));
        let c = Config {
            iface_prefixes: vec!["eth".into()],
            ..cfg()
        };
        assert!(!c.matches_iface("eth0"), "an uplink is never a pod veth");
        assert!(c.matches_iface("eth1"));
        let r = cfg().remote_prefixes();
        assert_eq!(r.len(), 1);
        assert!(r[0].1.is_meshed());
        assert_eq!(r[0].1.uplink, 0);
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
