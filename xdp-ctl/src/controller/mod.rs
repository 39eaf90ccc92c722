//! `xdp-ctl run`: the controller that keeps the fast path equal to the node's pods.
//!
//! One owner of the netlink view (an actor on a single-threaded runtime): it subscribes to
//! link, IPv4/IPv6 route and neighbour events *before* its initial dump, folds events into
//! `state::Node`, and reconciles the dirty keys into the maps after a short debounce:
//! attach new pod veths, write endpoint adds and changes, then deletes, then forget gone
//! interfaces. A periodic dump-and-diff resync repairs and counts drift; a netlink overrun
//! triggers one at once. Everything it creates is pinned, so `kill -9` leaves forwarding
//! running and a new controller adopts it without a gap.
//!
//! This module holds the actor loop and the controller's start and stop; the rest, one concern
//! each: `events` (netlink events and membership answers into the model), `reconcile` (dirty
//! keys to maps and interfaces), `resync` (dump-and-diff, drift), `report` (the published
//! `ControllerState` and readiness), `state` (the pure model and diff), `membership` (sources).
mod events;
pub mod membership;
mod reconcile;
mod report;
mod resync;
pub mod state;

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use anyhow::{anyhow, Context as _, Result};
use common::{ControllerState, Endpoint};
use futures::StreamExt as _;
use netlink_sys::AsyncSocket as _;
use tokio::{
    signal::unix::{signal, SignalKind},
    time::{sleep_until, Instant},
};
use tracing::{info, warn};

use self::{
    membership::{Membership, MembershipMap},
    report::now_ms,
    state::{Config, Node},
};
use crate::{
    attach::{self, Attacher, Datapath, Mode},
    maps::Prefix,
    nl::Rtnl,
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
    pub(super) fn start(pins: &PinDir, opts: RunOptions) -> Result<(Self, membership::Updates)> {
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

    pub(super) fn shutdown(mut self) -> Result<()> {
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
