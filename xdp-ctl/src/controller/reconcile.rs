//! Applying the desired state of the dirty keys to the maps and interfaces: attach, endpoint
//! upserts and deletes, membership records, then forget or detach what is no longer wanted.
use std::collections::HashMap;

use anyhow::Result;
use tracing::{debug, info, warn};

use super::{
    state::{plan, plan_members},
    Controller, Stopped,
};
use crate::{
    attach::{self, AttachResult, Datapath, Role},
    maps::Prefix,
    nl::Link,
};

impl Controller {
    pub(super) fn reconcile_logged(&mut self) {
        if let Err(e) = self.reconcile_dirty() {
            if !self.stopping() {
                warn!("reconcile failed (the next resync retries): {e:#}");
            }
        }
    }

    pub(super) fn reconcile_dirty(&mut self) -> Result<()> {
        if !self.node.has_dirty() {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let r = self.reconcile_dirty_inner();
        self.telemetry.reconciled(started.elapsed(), r.is_ok());
        r
    }

    fn reconcile_dirty_inner(&mut self) -> Result<()> {
        let started = std::time::Instant::now();
        let (keys, links) = self.node.take_dirty();
        let nkeys = keys.len();
        let lock = self.pins.lock()?;
        let writes = self.reconcile_locked(&keys, &links)?;
        drop(lock);
        self.publish();
        debug!(keys = nkeys, links = links.len(), writes, took = ?started.elapsed(), "reconciled");
        Ok(())
    }

    /// Applies the desired state of `keys` and `links` to the maps: attach new pod veths,
    /// endpoint adds and changes, endpoint deletes, then forget or detach interfaces that are
    /// gone or no longer wanted. Returns the number of map writes and attachment changes.
    pub(super) fn reconcile_locked(&mut self, keys: &[Prefix], links: &[u32]) -> Result<u64> {
        let cfg = self.opts.config.clone();
        let cfg = &cfg;
        let mut writes = 0u64;
        let records: HashMap<u32, common::Attachment> = if links.is_empty() {
            HashMap::new()
        } else {
            self.attacher
                .maps
                .attachments()?
                .into_iter()
                .map(|a| (a.ifindex, a))
                .collect()
        };

        // 1. Interfaces that should carry the datapath (the Attacher no-ops live ones).
        let mut to_attach = Vec::new();
        let mut uplinks = Vec::new();
        for &i in links {
            if self.node.wants_link(cfg, i) {
                if let Some(l) = self.rtnl.link_by_index(i)? {
                    to_attach.push(l);
                }
            } else if self.node.wants_uplink(cfg, i) {
                if let Some(l) = self.rtnl.link_by_index(i)? {
                    uplinks.push((l, Role::Uplink));
                }
            }
        }
        writes += self.attach_batch(&to_attach);
        writes += self.attach_uplinks(&uplinks);
        if self.stopping() {
            return Err(Stopped.into());
        }
        self.refresh_carrier_up(links);

        // 2. Endpoints: adds and changes first, then deletes.
        let p = plan(&self.node, cfg, &self.realized, keys.iter().copied());
        for k in keys {
            self.pending.remove(k);
        }
        self.pending.extend(p.pending.iter().copied());
        for (prefix, ep) in p.upserts {
            match self.attacher.maps.insert_endpoint(prefix, &ep) {
                Ok(()) => {
                    self.realized.insert(prefix, ep);
                    writes += 1;
                }
                Err(e) => warn!("{e:#}"),
            }
        }
        for prefix in p.deletes {
            match self.attacher.maps.remove_endpoint(prefix) {
                Ok(_) => {
                    self.realized.remove(&prefix);
                    writes += 1;
                }
                Err(e) => warn!("{e:#}"),
            }
        }
        self.write_members(keys);

        // 3. Interfaces no longer wanted: gone ones are forgotten; existing ones (renamed,
        //    or out of the configured prefixes) are detached and their pods restored.
        for &i in links {
            let Some(att) = records.get(&i) else { continue };
            let wanted = match Role::of(att) {
                Role::Pod => self.node.wants_link(cfg, i),
                Role::Uplink => self.node.wants_uplink(cfg, i),
            };
            if wanted {
                continue;
            }
            if self.node.link(i).is_some() {
                attach::detach_records(
                    &self.pins,
                    &mut self.attacher.maps,
                    &mut self.rtnl,
                    &[*att],
                )?;
            } else {
                attach::forget(&self.pins, &mut self.attacher.maps, i)?;
            }
            self.realized.retain(|_, ep| ep.ifindex != i);
            writes += 1;
            info!(ifindex = i, "interface forgotten");
        }
        if !links.is_empty() {
            self.membership.set_targets(self.node.sidecar_targets(cfg));
        }
        self.count_attached()?;
        self.state.reconciles += 1;
        self.state.map_writes += writes;
        Ok(writes)
    }

    /// The attachment counts of `status` and /metrics.
    fn count_attached(&mut self) -> Result<()> {
        let attached = self.attacher.maps.attachments()?;
        self.state.interfaces = u32::try_from(attached.len()).unwrap_or(0);
        let count = |role: Role, dp: Datapath| {
            attached
                .iter()
                .filter(|a| Role::of(a) == role && Datapath::from_att(a.datapath) == Some(dp))
                .count()
        };
        self.telemetry.set_attached(
            count(Role::Pod, Datapath::Xdp),
            count(Role::Pod, Datapath::Tc),
        );
        self.telemetry.set_uplinks(
            count(Role::Uplink, Datapath::Xdp),
            count(Role::Uplink, Datapath::Tc),
        );
        Ok(())
    }

    /// Records why the endpoints of `keys` are (not) meshed (`status`, `endpoint list`). Not
    /// counted as map writes: the datapath never reads it.
    pub(super) fn write_members(&mut self, keys: &[Prefix]) {
        let cfg = &self.opts.config;
        let (set, remove) = plan_members(
            &self.node,
            cfg,
            &self.realized_members,
            keys.iter().copied(),
        );
        for (p, bits) in set {
            match self.members_map.set(p, bits) {
                Ok(()) => {
                    self.realized_members.insert(p, bits);
                }
                Err(e) => warn!("{e:#}"),
            }
        }
        for p in remove {
            match self.members_map.remove(p) {
                Ok(()) => {
                    self.realized_members.remove(&p);
                }
                Err(e) => warn!("{e:#}"),
            }
        }
    }

    /// Re-applies the XDP pod-side preparation of pods whose side just came up, in one batch.
    pub(super) fn refresh_carrier_up(&mut self, links: &[u32]) {
        let mut batch = Vec::new();
        for &i in links {
            if !self.carrier_up.remove(&i) || !self.node.wants_link(&self.opts.config, i) {
                continue;
            }
            let xdp = self
                .attacher
                .maps
                .attachment(i)
                .is_some_and(|a| Datapath::from_att(a.datapath) == Some(Datapath::Xdp));
            if !xdp {
                continue;
            }
            match self.rtnl.link_by_index(i) {
                Ok(Some(l)) => batch.push(l),
                Ok(None) => {}
                Err(e) => warn!("{e:#}"),
            }
        }
        if batch.is_empty() {
            return;
        }
        for (l, r) in batch
            .iter()
            .zip(attach::refresh_peers(&mut self.rtnl, &batch))
        {
            match r {
                Ok(()) => debug!(iface = %l.name, "pod side up: GRO re-applied"),
                Err(e) => warn!("{}", e.chain()),
            }
        }
    }

    /// Attaches the uplinks of `links`; an uplink that fails is retried at the next resync.
    fn attach_uplinks(&mut self, links: &[(Link, Role)]) -> u64 {
        let mut changed = 0;
        for l in links {
            match self
                .attacher
                .attach_roles(&mut self.rtnl, std::slice::from_ref(l), &self.stop)
            {
                Ok(reports) => {
                    for r in reports {
                        if r.result != AttachResult::AlreadyAttached {
                            info!(iface = %r.iface, datapath = r.datapath.name(), result = r.result.name(), "uplink attached");
                            changed += 1;
                        }
                    }
                }
                Err(e) => warn!("uplink {}: {}", l.0.name, e.chain()),
            }
        }
        changed
    }

    /// Makes the remote prefixes equal to the configured ones; returns the writes.
    pub(super) fn sync_remotes(&mut self) -> u64 {
        let want = self.opts.config.remote_prefixes();
        match self.attacher.maps.sync_remotes(&want) {
            Ok(n) => n as u64,
            Err(e) => {
                warn!("remote prefixes: {e:#}");
                0
            }
        }
    }

    /// Attaches a batch in one go; if the batch fails (all-or-nothing), one by one, so that a
    /// single bad interface (e.g. one that vanished meanwhile) does not hold up the others.
    pub(super) fn attach_batch(&mut self, links: &[Link]) -> u64 {
        if links.is_empty() {
            return 0;
        }
        let reports = match self
            .attacher
            .attach_until(&mut self.rtnl, links, &self.stop)
        {
            Ok(r) => r,
            Err(e) => {
                debug!("batch attach failed, retrying one by one: {}", e.chain());
                let mut all = Vec::new();
                for l in links {
                    if self.stopping() {
                        break;
                    }
                    match self
                        .attacher
                        .attach(&mut self.rtnl, std::slice::from_ref(l))
                    {
                        Ok(r) => all.extend(r),
                        Err(e) => warn!("{}: {}", l.name, e.chain()),
                    }
                }
                all
            }
        };
        let mut changed = 0;
        for r in reports {
            match r.result {
                AttachResult::AlreadyAttached => {}
                AttachResult::ReplacedStale => {
                    // Attach dropped the old interface's entries from the maps.
                    self.realized.retain(|_, ep| ep.ifindex != r.ifindex);
                    changed += 1;
                }
                _ => {
                    info!(iface = %r.iface, datapath = r.datapath.name(), result = r.result.name(), "attached");
                    changed += 1;
                }
            }
        }
        changed
    }
}
