//! `xdp-ctl run`: the controller that keeps the fast path equal to the node's pods.
//!
//! One owner of the netlink view (an actor on a single-threaded runtime): it subscribes to
//! link, IPv4/IPv6 route and neighbour events *before* its initial dump, folds events into
//! `state::Node`, and reconciles the dirty keys into the maps after a short debounce:
//! attach new pod veths, write endpoint adds and changes, then deletes, then forget gone
//! interfaces. A periodic dump-and-diff resync repairs and counts drift; a netlink overrun
//! triggers one at once. Everything it creates is pinned, so `kill -9` leaves forwarding
//! running and a new controller adopts it without a gap.
pub mod membership;
pub mod state;

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{anyhow, Context as _, Result};
use common::{ControllerState, Endpoint};
use futures::StreamExt as _;
use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::AsyncSocket as _;
use tokio::{
    signal::unix::{signal, SignalKind},
    time::{sleep_until, Instant},
};
use tracing::{debug, info, warn};

use self::{
    membership::{Membership, MembershipMap, Update},
    state::{plan, plan_members, Config, LinkFacts, Node},
};
use crate::{
    attach::{self, AttachResult, Attacher, Datapath, Mode},
    maps::Prefix,
    nl::{self, Link, Rtnl},
    pin::{PinDir, PinLock},
};

pub struct RunOptions {
    pub config: Config,
    pub datapath: Datapath,
    pub mode: Mode,
    pub resync_interval: Duration,
    pub detach_on_exit: bool,
    pub membership: membership::Options,
}

/// Quiet time after the last event before a reconcile...
const DEBOUNCE: Duration = Duration::from_millis(20);
/// ...but never later than this after the first pending event.
const MAX_DELAY: Duration = Duration::from_millis(100);
const HEARTBEAT: Duration = Duration::from_secs(1);
/// rtnetlink multicast groups (linux/rtnetlink.h `RTNLGRP_*`).
const GROUPS: [u32; 4] = [
    1,  /* LINK */
    3,  /* NEIGH */
    7,  /* IPV4_ROUTE */
    11, /* IPV6_ROUTE */
];
/// Room for event bursts (thousands of pods changing at once) before the kernel overruns us.
const RCVBUF: usize = 8 << 20;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Runs the controller until SIGTERM or SIGINT.
pub fn run(pins: &PinDir, opts: RunOptions) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(run_async(pins, opts))
}

async fn run_async(pins: &PinDir, opts: RunOptions) -> Result<()> {
    pins.check_bpffs()?;
    // Subscribe before the initial dump, so nothing is missed between the two.
    let (mut conn, _handle, mut events) =
        rtnetlink::new_connection().context("opening the rtnetlink event socket")?;
    {
        let sock = conn.socket_mut().socket_mut();
        // An unbound netlink socket has port id 0, and the kernel delivers no multicast to it.
        sock.bind_auto()
            .context("binding the rtnetlink event socket")?;
        for g in GROUPS {
            sock.add_membership(g)
                .with_context(|| format!("subscribing to rtnetlink group {g}"))?;
        }
        if let Err(e) = sock.set_rx_buf_sz(RCVBUF) {
            warn!("could not enlarge the netlink receive buffer: {e}");
        }
    }
    tokio::spawn(conn);

    let (mut c, mut updates) = Controller::start(pins, opts)?;
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;

    // The first full reconcile; not ready before it is applied.
    tokio::select! {
        r = async { c.full_sync(false) } => r?,
        _ = term.recv() => return c.shutdown(),
        _ = int.recv() => return c.shutdown(),
    }
    c.log_ready();

    let mut resync = tokio::time::interval_at(
        Instant::now() + c.opts.resync_interval,
        c.opts.resync_interval,
    );
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    let mut deadline: Option<Instant> = None;
    let mut first_pending: Option<Instant> = None;
    loop {
        let debounce = async {
            match deadline {
                Some(d) => sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            ev = events.next() => {
                let Some((msg, _)) = ev else {
                    return Err(anyhow!("the rtnetlink event socket closed"));
                };
                if c.apply_event(msg) {
                    warn!("netlink overrun: events were lost, resyncing now");
                    c.resync_logged();
                    deadline = None;
                    first_pending = None;
                } else if c.node.has_dirty() {
                    let now = Instant::now();
                    let first = *first_pending.get_or_insert(now);
                    deadline = Some((now + DEBOUNCE).min(first + MAX_DELAY));
                }
            }
            () = debounce => {
                deadline = None;
                first_pending = None;
                if let Err(e) = c.reconcile_dirty() {
                    warn!("reconcile failed (the next resync retries): {e:#}");
                }
            }
            u = updates.next() => {
                c.apply_membership(u);
                if c.node.has_dirty() {
                    let now = Instant::now();
                    let first = *first_pending.get_or_insert(now);
                    deadline = Some((now + DEBOUNCE).min(first + MAX_DELAY));
                }
            }
            _ = resync.tick() => c.resync_logged(),
            _ = heartbeat.tick() => c.publish(),
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    c.shutdown()
}

struct Controller {
    pins: PinDir,
    opts: RunOptions,
    attacher: Attacher,
    rtnl: Rtnl,
    node: Node,
    /// What the maps hold, as far as we know (checked against the maps at each resync).
    realized: HashMap<Prefix, Endpoint>,
    pending: HashSet<Prefix>,
    /// Veth peer MACs by host ifindex, with the peer identity they were read for.
    peer_macs: HashMap<u32, ((u32, i32), [u8; 6])>,
    /// Pod veths whose pod side just came up (carrier off -> on): their XDP preparation is
    /// re-applied (see `attach::refresh_peer`).
    carrier_up: HashSet<u32>,
    state: ControllerState,
    membership: Membership,
    /// Why each programmed endpoint is (not) meshed, as `MEMBERSHIP` holds it.
    members_map: MembershipMap,
    realized_members: HashMap<Prefix, u32>,
    /// The first full reconcile has been applied (ready once the sources synced too).
    synced: bool,
    /// Tells `status` we run, for as long as this process lives (`PinDir::hold_controller`).
    _alive: PinLock,
}

impl Controller {
    fn start(pins: &PinDir, opts: RunOptions) -> Result<(Self, membership::Updates)> {
        // Loading reuses pinned maps; only creating them needs the lock.
        let attacher = if pins.has_maps() {
            Attacher::new(pins, opts.datapath, opts.mode)?
        } else {
            let _lock = pins.create_and_lock()?;
            Attacher::new(pins, opts.datapath, opts.mode)?
        };
        let members_map = MembershipMap::open_or_create(pins)?;
        let (membership, updates) =
            Membership::start(&opts.membership, !opts.config.meshed.is_empty())?;
        let alive = pins.hold_controller()?;
        let now = now_ms();
        let mut c = Controller {
            pins: pins.clone(),
            opts,
            attacher,
            rtnl: Rtnl::new().context("opening rtnetlink")?,
            node: Node::default(),
            realized: HashMap::new(),
            pending: HashSet::new(),
            peer_macs: HashMap::new(),
            carrier_up: HashSet::new(),
            state: ControllerState {
                pid: std::process::id(),
                started_unix_ms: now,
                heartbeat_unix_ms: now,
                ..ControllerState::default()
            },
            membership,
            members_map,
            realized_members: HashMap::new(),
            synced: false,
            _alive: alive,
        };
        c.publish();
        Ok((c, updates))
    }

    fn log_ready(&self) {
        let fields = (
            self.state.interfaces,
            self.realized.len(),
            self.realized.values().filter(|e| e.is_meshed()).count(),
            self.pending.len(),
        );
        if self.state.ready != 0 {
            info!(
                interfaces = fields.0,
                endpoints = fields.1,
                meshed = fields.2,
                pending = fields.3,
                "ready"
            );
        } else {
            info!(
                interfaces = fields.0,
                endpoints = fields.1,
                pending = fields.3,
                "first reconcile applied; not ready until the membership sources answered"
            );
        }
    }

    /// Folds a membership source's answer into the model; readiness may follow.
    fn apply_membership(&mut self, u: Update) {
        let was_synced = self.membership.synced();
        self.membership.answered(&u);
        match u {
            Update::Sidecar(found) => self.node.set_sidecar_links(&found),
            Update::Kube(members) => self.node.set_addr_sources(members),
        }
        if !was_synced && self.membership.synced() && self.synced {
            // Apply the sources' first answer before saying ready.
            if let Err(e) = self.reconcile_dirty() {
                warn!("reconcile failed (the next resync retries): {e:#}");
            }
            self.state.ready = 1;
            self.publish();
            self.log_ready();
        }
    }

    fn publish(&mut self) {
        self.state.heartbeat_unix_ms = now_ms();
        let (mut v4, mut v6) = (0u32, 0u32);
        for p in self.realized.keys() {
            match p.addr {
                IpAddr::V4(_) => v4 += 1,
                IpAddr::V6(_) => v6 += 1,
            }
        }
        self.state.endpoints_v4 = v4;
        self.state.endpoints_v6 = v6;
        self.state.pending = u32::try_from(self.pending.len()).unwrap_or(u32::MAX);
        if let Err(e) = self.attacher.maps.set_controller_state(&self.state) {
            warn!("publishing controller state: {e:#}");
        }
        let bits = self.membership.config_bits();
        if self.members_map.config() != Some(bits) {
            if let Err(e) = self.members_map.set_config(bits) {
                warn!("publishing membership sources: {e:#}");
            }
        }
    }

    /// What we keep of a link: for a veth, its peer's MAC read through the namespace id
    /// (cached per peer identity; pod-side changes are picked up by the resync, which drops
    /// the cache).
    fn facts(&mut self, l: &Link) -> LinkFacts {
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
    fn apply_event(&mut self, msg: NetlinkMessage<RouteNetlinkMessage>) -> bool {
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

    fn resync_logged(&mut self) {
        if let Err(e) = self.full_sync(true) {
            warn!("resync failed (retrying at the next one): {e:#}");
        }
    }

    /// Dumps links, routes and neighbours into a fresh model and the maps into `realized`,
    /// then reconciles everything. With `count_drift`, every write it needs is drift: with
    /// no lost event and no foreign write, a resync writes nothing.
    fn full_sync(&mut self, count_drift: bool) -> Result<()> {
        let started = std::time::Instant::now();
        self.peer_macs.clear();
        let mut node = Node::default();
        let links = self.rtnl.links().context("dumping links")?;
        for l in &links {
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
        let writes = self.reconcile_locked(&keys, &link_keys)?;
        drop(lock);

        self.state.resyncs += 1;
        self.state.last_resync_unix_ms = now_ms();
        if count_drift {
            self.state.drift_repaired += writes;
            if writes > 0 {
                warn!(writes, "resync repaired drift");
            }
        }
        self.synced = true;
        self.state.ready = u32::from(self.membership.synced());
        self.publish();
        debug!(?dumped, total = ?started.elapsed(), writes, "full sync");
        Ok(())
    }

    fn reconcile_dirty(&mut self) -> Result<()> {
        if !self.node.has_dirty() {
            return Ok(());
        }
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
    fn reconcile_locked(&mut self, keys: &[Prefix], links: &[u32]) -> Result<u64> {
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
        for &i in links {
            if self.node.wants_link(cfg, i) {
                if let Some(l) = self.rtnl.link_by_index(i)? {
                    to_attach.push(l);
                }
            }
        }
        writes += self.attach_batch(&to_attach);
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
            if self.node.wants_link(cfg, i) {
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
        self.state.interfaces = u32::try_from(self.attacher.maps.attachments()?.len()).unwrap_or(0);
        self.state.reconciles += 1;
        self.state.map_writes += writes;
        Ok(writes)
    }

    /// Records why the endpoints of `keys` are (not) meshed (`status`, `endpoint list`). Not
    /// counted as map writes: the datapath never reads it.
    fn write_members(&mut self, keys: &[Prefix]) {
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
    fn refresh_carrier_up(&mut self, links: &[u32]) {
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

    /// Attaches a batch in one go; if the batch fails (all-or-nothing), one by one, so that a
    /// single bad interface (e.g. one that vanished meanwhile) does not hold up the others.
    fn attach_batch(&mut self, links: &[Link]) -> u64 {
        if links.is_empty() {
            return 0;
        }
        let reports = match self.attacher.attach(&mut self.rtnl, links) {
            Ok(r) => r,
            Err(e) => {
                debug!("batch attach failed, retrying one by one: {}", e.chain());
                let mut all = Vec::new();
                for l in links {
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

    fn shutdown(mut self) -> Result<()> {
        if self.opts.detach_on_exit {
            let _lock = self.pins.lock()?;
            let all = self.attacher.maps.attachments()?;
            attach::detach_records(&self.pins, &mut self.attacher.maps, &mut self.rtnl, &all)?;
            self.pins.remove_all()?;
            info!(
                interfaces = all.len(),
                "detached everything (--detach-on-exit)"
            );
            return Ok(());
        }
        self.state.pid = 0;
        self.state.ready = 0;
        self.publish();
        info!("stopped; the datapath stays attached");
        Ok(())
    }
}
