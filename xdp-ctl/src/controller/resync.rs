//! The periodic dump-and-diff resync: a fresh model from rtnetlink dumps, the maps read back
//! as `realized`, and one reconcile of everything; what it has to write is drift, counted and
//! logged. The first sync at start-up is the same without counting drift.
use anyhow::{Context as _, Result};
use netlink_packet_route::AddressFamily;
use tracing::{debug, warn};

use super::{report::now_ms, state::Node, Controller, Stopped};

impl Controller {
    pub(super) fn resync_logged(&mut self) {
        if let Err(e) = self.full_sync(true) {
            if self.stopping() {
                return;
            }
            warn!("resync failed (retrying at the next one): {e:#}");
        }
    }

    /// Dumps links, routes and neighbours into a fresh model and the maps into `realized`,
    /// then reconciles everything. With `count_drift`, every write it needs is drift: with
    /// no lost event and no foreign write, a resync writes nothing.
    pub(super) fn full_sync(&mut self, count_drift: bool) -> Result<()> {
        let started = std::time::Instant::now();
        let r = self.full_sync_inner(count_drift);
        self.telemetry.reconciled(started.elapsed(), r.is_ok());
        r
    }

    fn full_sync_inner(&mut self, count_drift: bool) -> Result<()> {
        let started = std::time::Instant::now();
        self.peer_macs.clear();
        let mut node = Node::default();
        let links = self.rtnl.links().context("dumping links")?;
        for l in &links {
            if self.stopping() {
                return Err(Stopped.into());
            }
            let f = self.facts(l);
            node.upsert_link(f);
        }
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            for r in self.rtnl.host_routes(family).context("dumping routes")? {
                node.upsert_route(r.addr, r.oif);
            }
        }
        for n in self.rtnl.neighbours().context("dumping neighbours")? {
            node.set_neigh(n.ifindex, n.addr, n.mac);
        }
        let dumped = started.elapsed();
        node.take_membership(&mut self.node);
        self.node = node;
        self.node.mark_all_dirty();
        let (mut keys, mut link_keys) = self.node.take_dirty();

        let lock = self.pins.lock()?;
        self.realized = self.attacher.maps.endpoints()?.into_iter().collect();
        self.realized_members = self.members_map.entries()?;
        keys.extend(self.realized.keys().copied());
        keys.extend(self.realized_members.keys().copied());
        keys.sort();
        keys.dedup();
        // Records of interfaces that no longer exist must be forgotten too.
        link_keys.extend(self.attacher.maps.attachments()?.iter().map(|a| a.ifindex));
        link_keys.sort_unstable();
        link_keys.dedup();
        let writes = self.reconcile_locked(&keys, &link_keys)? + self.sync_remotes();
        drop(lock);

        self.state.resyncs += 1;
        self.state.last_resync_unix_ms = now_ms();
        if count_drift {
            self.state.drift_repaired += writes;
            self.telemetry.drift_repaired(writes);
            if writes > 0 {
                warn!(writes, "resync repaired drift");
            }
        }
        if let Ok(true) = crate::monitor::reset_stale(&self.pins) {
            warn!("reset the configuration of a monitor that died without resetting it");
        }
        self.synced = true;
        self.state.ready = u32::from(self.membership.synced());
        self.publish();
        debug!(?dumped, total = ?started.elapsed(), writes, "full sync");
        Ok(())
    }
}
