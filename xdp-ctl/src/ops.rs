//! Endpoints, status and stats: the commands that work on an attached datapath's maps.
use std::{net::IpAddr, path::PathBuf};

use anyhow::{anyhow, bail, Context as _, Result};
use aya::programs::links::{FdLink, LinkInfo, PinnedLink};
use common::{ControllerState, Counter, Endpoint, Reason, EP_F_MESHED};
use serde::Serialize;

use crate::{
    attach::{att_name, link_pin, live_program, mode_name, Datapath},
    controller::membership::{configured_names, MembershipMap, Sources, CFG_SYNCED},
    maps::{Maps, Prefix},
    nl::{fmt_mac, Rtnl},
    pin::PinDir,
    remote::{entry as remote_entry, remote_value, RemoteEntry},
};

// ---------------------------------------------------------------------------------------------
// endpoints

/// Takes the lock, then opens the pinned maps; "nothing attached" when there are none.
fn lock_pinned(pins: &PinDir) -> Result<(crate::pin::PinLock, Maps)> {
    if !pins.root().exists() {
        return Err(crate::maps::nothing_attached(pins));
    }
    let lock = pins.lock()?;
    Ok((lock, Maps::open_pinned(pins)?))
}

#[derive(Debug, Serialize)]
pub struct EndpointView {
    pub prefix: String,
    pub iface: String,
    pub ifindex: u32,
    pub pod_mac: String,
    pub host_mac: String,
    pub meshed: bool,
    /// Why it is (not) meshed: the membership sources that said so (`cidr`, `sidecar-port`,
    /// `kube:...`), `kube:opted-out`, or `manual` (`endpoint add`, not the controller).
    pub sources: Vec<&'static str>,
}

pub fn endpoint_add(
    pins: &PinDir,
    prefix: Prefix,
    iface: &str,
    mac: Option<[u8; 6]>,
    meshed: bool,
) -> Result<EndpointView> {
    pins.check_bpffs()?;
    let mut rtnl = Rtnl::new().context("opening rtnetlink")?;
    let link = rtnl
        .link_by_name(iface)?
        .ok_or_else(|| anyhow!("unknown interface {iface}"))?;
    let (_lock, mut maps) = lock_pinned(pins)?;
    if maps.attachment(link.index).is_none() {
        bail!(
            "{iface} is not attached; run `xdp-ctl attach {iface}` first (its pod side must be \
             prepared to receive redirected frames)"
        );
    }
    let host_mac = link
        .mac
        .ok_or_else(|| anyhow!("{iface} has no Ethernet address"))?;
    let pod_mac = match mac {
        Some(m) => m,
        None if prefix.is_host() => {
            rtnl.neighbour_mac(link.index, prefix.addr)?
                .ok_or_else(|| {
                    anyhow!(
                        "no neighbour entry for {} on {iface}; pass --mac, or let the node learn \
                     it first (e.g. ping the pod)",
                        prefix.addr
                    )
                })?
        }
        None => bail!("{prefix} is a prefix, not one pod: pass --mac"),
    };
    let ep = Endpoint {
        ifindex: link.index,
        flags: if meshed { EP_F_MESHED } else { 0 },
        pod_mac,
        host_mac,
    };
    maps.insert_endpoint(prefix, &ep)?;
    Ok(view(prefix, &ep, link.name))
}

pub fn endpoint_del(pins: &PinDir, prefix: Prefix) -> Result<()> {
    pins.check_bpffs()?;
    let (_lock, mut maps) = lock_pinned(pins)?;
    if !maps.remove_endpoint(prefix)? {
        bail!("no endpoint {prefix}");
    }
    Ok(())
}

pub fn endpoint_list(pins: &PinDir) -> Result<Vec<EndpointView>> {
    pins.check_bpffs()?;
    if !pins.has_maps() {
        return Ok(Vec::new());
    }
    let maps = Maps::open_pinned(pins)?;
    let members = match MembershipMap::open(pins)? {
        Some(m) => m.entries()?,
        None => std::collections::HashMap::new(),
    };
    let mut rtnl = Rtnl::new().context("opening rtnetlink")?;
    maps.endpoints()?
        .into_iter()
        .map(|(p, ep)| {
            let name = rtnl
                .link_by_index(ep.ifindex)?
                .map_or_else(|| format!("<gone:{}>", ep.ifindex), |l| l.name);
            let mut v = view(p, &ep, name);
            v.sources = sources_of(ep.is_meshed(), members.get(&p).copied());
            Ok(v)
        })
        .collect()
}

/// The controller's record of why, when it agrees with the endpoint's flag (a record that
/// disagrees is older than a hand-made change).
fn sources_of(meshed: bool, record: Option<u32>) -> Vec<&'static str> {
    match record.map(Sources) {
        Some(s) if s.meshed() == meshed => s.names(),
        _ if meshed => vec!["manual"],
        _ => Vec::new(),
    }
}

fn view(p: Prefix, ep: &Endpoint, iface: String) -> EndpointView {
    EndpointView {
        prefix: p.to_string(),
        iface,
        ifindex: ep.ifindex,
        pod_mac: fmt_mac(&ep.pod_mac),
        host_mac: fmt_mac(&ep.host_mac),
        meshed: ep.is_meshed(),
        sources: if ep.is_meshed() {
            vec!["manual"]
        } else {
            Vec::new()
        },
    }
}

// ---------------------------------------------------------------------------------------------
// status and stats

#[derive(Debug, Serialize)]
pub struct InterfaceStatus {
    pub name: String,
    pub ifindex: u32,
    /// `pod` (a pod's host veth) or `uplink`.
    pub role: &'static str,
    pub datapath: &'static str,
    /// `native`, `skb` or `tcx`.
    pub mode: &'static str,
    pub program_id: Option<u32>,
    pub link_id: Option<u32>,
    pub link_kind: &'static str,
    pub pin_path: PathBuf,
    /// False when the pinned link no longer drives the interface (interface gone or replaced).
    pub live: bool,
}

#[derive(Debug, Serialize)]
pub struct Status {
    pub pin_dir: PathBuf,
    pub interfaces: Vec<InterfaceStatus>,
    pub endpoints_v4: usize,
    pub endpoints_v6: usize,
    /// Remote pod prefixes (`xdp-ctl remote list`).
    pub remote_prefixes: usize,
    /// The controller's self-report; `None` if no controller ever ran on this pin dir.
    pub controller: Option<ControllerView>,
    /// The controller's membership sources; `None` if no controller ever ran here.
    pub membership: Option<MembershipStatus>,
}

/// Who is in the mesh, as the controller was told (DESIGN.md section 4a).
#[derive(Debug, Serialize)]
pub struct MembershipStatus {
    /// The configured sources (`cidr`, `sidecar-port`, `kube`); empty: no pod is meshed.
    pub sources: Vec<&'static str>,
    /// Every dynamic source has answered at least once (the kube source: its first list).
    pub synced: bool,
    pub meshed_endpoints: usize,
    /// Plain words for the operator when nothing can be meshed.
    pub note: Option<&'static str>,
}

/// `xdp-ctl run` as seen from outside.
#[derive(Debug, Serialize)]
pub struct ControllerView {
    /// A controller holds the pin directory's controller lock and its heartbeat is recent.
    /// Judged without its PID, which means nothing in another PID namespace.
    pub running: bool,
    /// As the controller sees itself (in its own PID namespace; 0 after a clean exit).
    pub pid: u32,
    /// The first full reconcile has been applied (and the controller is running).
    pub ready: bool,
    pub interfaces: u32,
    pub endpoints_v4: u32,
    pub endpoints_v6: u32,
    pub pending: u32,
    pub heartbeat_age_ms: u64,
    /// When it started, in ms since the Unix epoch.
    pub started_unix_ms: u64,
    /// When its last full sync ended (the first one made it ready), in ms since the Unix epoch;
    /// `None` before the first.
    pub last_resync_unix_ms: Option<u64>,
    /// `None` before the first resync.
    pub last_resync_age_ms: Option<u64>,
    pub resyncs: u64,
    pub drift_repaired: u64,
    pub reconciles: u64,
    pub map_writes: u64,
}

/// A heartbeat older than this means the controller is gone or stuck.
const HEARTBEAT_STALE_MS: u64 = 5_000;

/// `held`: some process holds the controller lock ([`PinDir::controller_running`]).
fn controller_view(st: &ControllerState, held: bool) -> Option<ControllerView> {
    if st.started_unix_ms == 0 {
        return None;
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let heartbeat_age_ms = now.saturating_sub(st.heartbeat_unix_ms);
    // The lock says a controller process lives (released by the kernel however it exits); the
    // heartbeat says its loop still ticks.
    let running = held && heartbeat_age_ms < HEARTBEAT_STALE_MS;
    Some(ControllerView {
        running,
        pid: st.pid,
        ready: running && st.ready != 0,
        interfaces: st.interfaces,
        endpoints_v4: st.endpoints_v4,
        endpoints_v6: st.endpoints_v6,
        pending: st.pending,
        heartbeat_age_ms,
        started_unix_ms: st.started_unix_ms,
        last_resync_unix_ms: (st.last_resync_unix_ms != 0).then_some(st.last_resync_unix_ms),
        last_resync_age_ms: (st.last_resync_unix_ms != 0)
            .then(|| now.saturating_sub(st.last_resync_unix_ms)),
        resyncs: st.resyncs,
        drift_repaired: st.drift_repaired,
        reconciles: st.reconciles,
        map_writes: st.map_writes,
    })
}

pub fn status(pins: &PinDir) -> Result<Status> {
    pins.check_bpffs()?;
    let mut st = Status {
        pin_dir: pins.root().to_path_buf(),
        interfaces: Vec::new(),
        endpoints_v4: 0,
        endpoints_v6: 0,
        remote_prefixes: 0,
        controller: None,
        membership: None,
    };
    if !pins.has_maps() {
        return Ok(st);
    }
    let maps = Maps::open_pinned(pins)?;
    st.controller = controller_view(&maps.controller_state(), pins.controller_running()?);
    let mut rtnl = Rtnl::new().context("opening rtnetlink")?;
    for att in maps.attachments()? {
        let datapath = Datapath::from_att(att.datapath).unwrap_or(Datapath::Xdp);
        let path = link_pin(pins, datapath, att.ifindex);
        let info = PinnedLink::from_pin(&path)
            .ok()
            .and_then(|l| FdLink::from(l).info().ok());
        let link = rtnl.link_by_index(att.ifindex)?;
        let live = link
            .as_ref()
            .is_some_and(|l| live_program(pins, l, datapath).is_some());
        st.interfaces.push(InterfaceStatus {
            name: link.map_or_else(|| att_name(&att), |l| l.name),
            ifindex: att.ifindex,
            role: crate::datapath::Role::of(&att).name(),
            datapath: datapath.name(),
            mode: mode_name(&att),
            program_id: info.as_ref().map(LinkInfo::program_id),
            link_id: info.as_ref().map(LinkInfo::id),
            link_kind: "bpf_link",
            pin_path: path,
            live,
        });
    }
    st.remote_prefixes = maps.remotes()?.len();
    let mut meshed_endpoints = 0;
    for (p, ep) in maps.endpoints()? {
        match p.addr {
            IpAddr::V4(_) => st.endpoints_v4 += 1,
            IpAddr::V6(_) => st.endpoints_v6 += 1,
        }
        meshed_endpoints += usize::from(ep.is_meshed());
    }
    if let Some(bits) = MembershipMap::open(pins)?.and_then(|m| m.config()) {
        let sources = configured_names(bits);
        st.membership = Some(MembershipStatus {
            note: sources.is_empty().then_some(
                "no membership source configured: no pod is meshed, nothing is fast-pathed",
            ),
            sources,
            synced: bits & CFG_SYNCED != 0,
            meshed_endpoints,
        });
    }
    Ok(st)
}

pub fn stats(pins: &PinDir) -> Result<Vec<(Reason, Counter)>> {
    pins.check_bpffs()?;
    let maps = Maps::open_pinned(pins)?;
    maps.counters()
}

/// How full the flow state is (`stats`).
pub fn flow_table(pins: &PinDir) -> Result<crate::maps::FlowTable> {
    pins.check_bpffs()?;
    Maps::open_pinned(pins)?.flow_table()
}

// remote prefixes

pub fn remote_add(
    pins: &PinDir,
    prefix: Prefix,
    via: Option<&str>,
    meshed: bool,
) -> Result<RemoteEntry> {
    pins.check_bpffs()?;
    let (_lock, mut maps) = lock_pinned(pins)?;
    let uplink = match via {
        None => 0,
        Some(name) => {
            let mut rtnl = Rtnl::new().context("opening rtnetlink")?;
            let link = rtnl
                .link_by_name(name)?
                .with_context(|| format!("unknown interface {name}"))?;
            if !maps
                .attachment(link.index)
                .is_some_and(|a| crate::datapath::Role::of(&a) == crate::datapath::Role::Uplink)
            {
                bail!(
                    "{name} is not an attached uplink; run `xdp-ctl attach --uplink {name}` first"
                );
            }
            link.index
        }
    };
    let value = remote_value(meshed, uplink);
    maps.insert_remote(prefix, &value)?;
    Ok(remote_entry(prefix, &value))
}

pub fn remote_del(pins: &PinDir, prefix: Prefix) -> Result<()> {
    pins.check_bpffs()?;
    let (_lock, mut maps) = lock_pinned(pins)?;
    if !maps.remove_remote(prefix)? {
        bail!("no remote prefix {prefix}");
    }
    Ok(())
}

pub fn remote_list(pins: &PinDir) -> Result<Vec<RemoteEntry>> {
    pins.check_bpffs()?;
    if !pins.has_maps() {
        return Ok(Vec::new());
    }
    let maps = Maps::open_pinned(pins)?;
    Ok(maps
        .remotes()?
        .iter()
        .map(|(p, r)| remote_entry(*p, r))
        .collect())
}
