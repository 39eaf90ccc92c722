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
//! Netlink, one design: requests and dumps go through the synchronous client of `crate::nl`,
//! the same one the one-shot CLI commands use; only the multicast event subscription uses the
//! async `rtnetlink` crate, because it is the one socket that must be read while the loop waits
//! on timers, signals and the membership sources. Everything the controller does to the node
//! (those requests, ethtool in pod namespaces, map writes, attach) blocks, so each step runs on
//! tokio's blocking pool (`Controller::off_runtime`) while the runtime keeps draining events and
//! watching for SIGTERM/SIGINT; a signal during a long step (the first sync with many pods)
//! makes it stop at the next interface, and the controller shuts down at once.
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
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use anyhow::{anyhow, Context as _, Result};
use common::{ControllerState, Endpoint};
use futures::StreamExt as _;
use netlink_sys::AsyncSocket as _;
use tokio::{
    signal::unix::{signal, Signal, SignalKind},
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
    metrics::Telemetry,
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
    /// Where to serve /metrics, /healthz and /readyz (`None`: nowhere).
    pub listen: Option<std::net::SocketAddr>,
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
    // First: from the moment `status` can see us, SIGTERM must stop us cleanly.
    let mut signals = Signals::new()?;
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

    let telemetry = Telemetry::new(pins);
    telemetry.heartbeat();
    let listen = opts.listen;
    let (mut c, mut updates) = Controller::start(pins, opts, telemetry.clone())?;
    // Listen once the options proved valid (an error at start stays the one line on stderr),
    // before the first reconcile: /readyz answers 503 until it is applied. HTTP has a thread of
    // its own (`http::spawn`): it only reads `Telemetry`.
    if let Some(addr) = listen {
        crate::http::spawn(addr, telemetry)?;
    }

    // The first full reconcile; not ready before it is applied. A SIGTERM meanwhile stops it
    // at the next interface (with many pods it takes a while).
    let r;
    (c, r) = c.off_runtime(&mut signals, |c| c.full_sync(false)).await;
    if c.stopping() {
        return c.shutdown_off_runtime().await;
    }
    r?;
    c.log_ready();

    let mut resync = tokio::time::interval_at(
        Instant::now() + c.opts.resync_interval,
        c.opts.resync_interval,
    );
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    let mut deadline: Option<Instant> = None;
    let mut first_pending: Option<Instant> = None;
    while !c.stopping() {
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
                let overrun;
                (c, overrun) = c.off_runtime(&mut signals, |c| c.apply_event(msg)).await;
                if overrun {
                    warn!("netlink overrun: events were lost, resyncing now");
                    (c, ()) = c.off_runtime(&mut signals, Controller::resync_logged).await;
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
                (c, ()) = c.off_runtime(&mut signals, Controller::reconcile_logged).await;
            }
            u = updates.next() => {
                (c, ()) = c.off_runtime(&mut signals, |c| c.apply_membership(u)).await;
                if c.node.has_dirty() {
                    let now = Instant::now();
                    let first = *first_pending.get_or_insert(now);
                    deadline = Some((now + DEBOUNCE).min(first + MAX_DELAY));
                }
            }
            _ = resync.tick() => {
                (c, ()) = c.off_runtime(&mut signals, Controller::resync_logged).await;
            }
            _ = heartbeat.tick() => c.publish(),
            () = signals.recv() => c.stop(),
        }
    }
    c.shutdown_off_runtime().await
}

/// A step left early because the controller is stopping.
#[derive(Debug, thiserror::Error)]
#[error("stopped by a signal")]
struct Stopped;

/// SIGTERM and SIGINT, either of which stops the controller.
struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    fn new() -> Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate()).context("SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("SIGINT handler")?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
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
    /// Set on SIGTERM or SIGINT; long steps (a full sync, an attach batch) stop at the next
    /// interface (`Attacher::attach_until`).
    stop: Arc<AtomicBool>,
    /// What /metrics, /healthz and /readyz show (`metrics`, `http`).
    telemetry: Arc<Telemetry>,
}

impl Controller {
    pub(super) fn start(
        pins: &PinDir,
        opts: RunOptions,
        telemetry: Arc<Telemetry>,
    ) -> Result<(Self, membership::Updates)> {
        // Loading reuses pinned maps; only creating them needs the lock.
        let attacher = if pins.has_maps() {
            Attacher::new(pins, opts.datapath, opts.mode)?
        } else {
            let _lock = pins.create_and_lock()?;
            Attacher::new(pins, opts.datapath, opts.mode)?
        };
        for r in &opts.config.remote_meshed {
            for m in opts
                .config
                .meshed
                .iter()
                .filter(|m| r.contains(m.addr) || m.contains(r.addr))
            {
                warn!(
                    "--remote-meshed-cidr {r} overlaps this node's --meshed-cidr {m}: list the other \
                     nodes' pod CIDRs as remote (README, \"Across nodes\")"
                );
            }
        }
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
            stop: Arc::new(AtomicBool::new(false)),
            telemetry,
        };
        c.publish();
        Ok((c, updates))
    }

    /// Runs one step of the controller (netlink, ethtool in pod namespaces, map and link
    /// calls: all blocking) on tokio's blocking pool, so that the runtime never blocks: the
    /// event connection keeps draining its socket meanwhile, and a SIGTERM or SIGINT is seen at
    /// once. It sets `stop`, which the step checks at each interface, and the step's result
    /// comes back with the controller; the caller checks `stopping()`.
    async fn off_runtime<T: Send + 'static>(
        mut self,
        signals: &mut Signals,
        f: impl FnOnce(&mut Self) -> T + Send + 'static,
    ) -> (Self, T) {
        let stop = Arc::clone(&self.stop);
        let mut task = tokio::task::spawn_blocking(move || {
            let r = f(&mut self);
            (self, r)
        });
        let done = tokio::select! {
            done = &mut task => done,
            () = signals.recv() => {
                stop.store(true, Ordering::Relaxed);
                task.await
            }
        };
        done.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }

    fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    pub(super) fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// `shutdown`, off the runtime too (`--detach-on-exit` restores every pod).
    async fn shutdown_off_runtime(self) -> Result<()> {
        tokio::task::spawn_blocking(move || self.shutdown())
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
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
