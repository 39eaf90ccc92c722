//! Folding netlink events and membership answers into the model (`state::Node`).
use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::RouteNetlinkMessage;

use super::{membership::Update, state::LinkFacts, Controller};
use crate::nl::{self, Link};

impl Controller {
    /// Folds a membership source's answer into the model; readiness may follow.
    pub(super) fn apply_membership(&mut self, u: Update) {
        let was_synced = self.membership.synced();
        self.membership.answered(&u);
        match u {
            Update::Sidecar(found) => self.node.set_sidecar_links(&found),
            Update::Kube(members) => self.node.set_addr_sources(members),
        }
        if !was_synced && self.membership.synced() && self.synced {
            // Apply the sources' first answer before saying ready.
            self.reconcile_logged();
            if self.stopping() {
                return;
            }
            self.state.ready = 1;
            self.publish();
            self.log_ready();
        }
    }

    /// What we keep of a link: for a veth, its peer's MAC read through the namespace id
    /// (cached per peer identity; pod-side changes are picked up by the resync, which drops
    /// the cache).
    pub(super) fn facts(&mut self, l: &Link) -> LinkFacts {
        let peer = match (l.is_veth(), l.peer_index, l.link_netnsid) {
            (true, Some(i), Some(ns)) if self.opts.config.matches_iface(&l.name) => Some((i, ns)),
            _ => None,
        };
        let peer_mac = peer.and_then(|id| match self.peer_macs.get(&l.index) {
            Some((cached, mac)) if *cached == id => Some(*mac),
            _ => {
                let mac = self
                    .rtnl
                    .link_in_netns(id.0, id.1)
                    .ok()
                    .flatten()
                    .and_then(|p| p.mac)?;
                self.peer_macs.insert(l.index, (id, mac));
                Some(mac)
            }
        });
        LinkFacts {
            index: l.index,
            name: l.name.clone(),
            mac: l.mac,
            is_veth: l.is_veth(),
            carrier: l.carrier,
            peer_mac,
            peer,
        }
    }

    /// Folds one event into the model. Returns true on an overrun (events were lost).
    pub(super) fn apply_event(&mut self, msg: NetlinkMessage<RouteNetlinkMessage>) -> bool {
        let m = match msg.payload {
            NetlinkPayload::InnerMessage(m) => m,
            NetlinkPayload::Overrun(_) => return true,
            _ => return false,
        };
        match m {
            RouteNetlinkMessage::NewLink(l) => {
                let link = nl::parse_link(&l);
                let facts = self.facts(&link);
                if self.node.link(link.index).is_some_and(|old| !old.carrier) && facts.carrier {
                    self.carrier_up.insert(link.index);
                }
                self.node.upsert_link(facts);
            }
            RouteNetlinkMessage::DelLink(l) => {
                self.peer_macs.remove(&l.header.index);
                self.node.remove_link(l.header.index);
            }
            RouteNetlinkMessage::NewRoute(r) => {
                if let Some(r) = nl::parse_host_route(&r) {
                    self.node.upsert_route(r.addr, r.oif);
                }
            }
            RouteNetlinkMessage::DelRoute(r) => {
                if let Some(r) = nl::parse_host_route(&r) {
                    self.node.remove_route(r.addr, r.oif);
                }
            }
            RouteNetlinkMessage::NewNeighbour(n) => {
                if let Some(n) = nl::parse_neigh(&n) {
                    self.node.set_neigh(n.ifindex, n.addr, n.mac);
                }
            }
            RouteNetlinkMessage::DelNeighbour(n) => {
                if let Some(n) = nl::parse_neigh(&n) {
                    self.node.set_neigh(n.ifindex, n.addr, None);
                }
            }
            _ => {}
        }
        false
    }
}
