//! The operations behind the CLI: attach, detach, endpoints, status, stats.
//!
//! Every command that changes state takes the pin directory's lock first. Attach follows
//! libxdp's order: prepare the pod side, populate and pin, attach last, and undo everything
//! done so far if any interface fails.
use std::{io, net::IpAddr, path::PathBuf};

use anyhow::{anyhow, bail, Context as _, Result};
use aya::{
    programs::{links::FdLink, links::PinnedLink, ProgramError, Xdp, XdpMode},
    EbpfLoader,
};
use common::{
    Attachment, Counter, Endpoint, Reason, ATT_DATAPATH_XDP, ATT_F_ORIG_GRO_ON,
    ATT_F_ORIG_TX_CSUM_ON, ATT_F_PREPARED, ATT_MODE_NATIVE, ATT_MODE_SKB, EP_F_MESHED,
};
use serde::Serialize;
use tracing::{debug, warn};

use crate::{
    ethtool::{self, Offloads},
    maps::{Maps, Prefix, ALL_MAPS},
    netns::{self, Namespace},
    nl::{fmt_mac, Link, Rtnl},
    pin::PinDir,
    EBPF_OBJECT, XDP_PROGRAM,
};

/// XDP attach mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Driver mode (veth supports it): the fast one. Needs pod-side preparation.
    Native,
    /// Generic (skb) mode: slower, for testing or drivers without native XDP. The pod side is
    /// prepared all the same, since native programs on other veths may redirect into it.
    Skb,
}

impl Mode {
    const fn to_att(self) -> u8 {
        match self {
            Mode::Native => ATT_MODE_NATIVE,
            Mode::Skb => ATT_MODE_SKB,
        }
    }

    const fn from_att(m: u8) -> Option<Self> {
        match m {
            ATT_MODE_NATIVE => Some(Mode::Native),
            ATT_MODE_SKB => Some(Mode::Skb),
            _ => None,
        }
    }

    const fn xdp_mode(self) -> XdpMode {
        match self {
            Mode::Native => XdpMode::Driver,
            Mode::Skb => XdpMode::Skb,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Mode::Native => "native",
            Mode::Skb => "skb",
        }
    }
}

/// Loads the eBPF object; with `pins`, its maps are reused from (or pinned to) the pin
/// directory.
pub fn load(pins: Option<&PinDir>) -> Result<aya::Ebpf> {
    let mut loader = EbpfLoader::new();
    if let Some(pins) = pins {
        for name in ALL_MAPS {
            loader.map_pin_path(name, pins.map_path(name));
        }
    }
    loader.load(EBPF_OBJECT).context("loading the eBPF object")
}

// ---------------------------------------------------------------------------------------------
// The pod side of a veth.

/// Where a host veth's peer lives.
struct Peer {
    /// `None`: the peer is in our own namespace.
    ns: Option<Namespace>,
    index: u32,
}

impl Peer {
    fn locate(rtnl: &mut Rtnl, link: &Link) -> Result<Peer> {
        if !link.is_veth() {
            bail!(
                "{} is not a veth (kind: {}); xdp-fastpath attaches to the host side of pod veths",
                link.name,
                link.kind.as_deref().unwrap_or("none")
            );
        }
        let index = link
            .peer_index
            .filter(|i| *i != 0)
            .ok_or_else(|| anyhow!("{}: the kernel reports no veth peer", link.name))?;
        let Some(nsid) = link.link_netnsid else {
            return Ok(Peer { ns: None, index });
        };
        let ns = netns::find_by_nsid(rtnl, nsid)
            .context("searching network namespaces")?
            .ok_or_else(|| {
                anyhow!(
                    "cannot find the network namespace of {}'s peer (netns id {nsid}): it is not \
                     under /run/netns and no process runs in it; name it with \
                     `ip netns attach NAME PID` and retry",
                    link.name
                )
            })?;
        debug!(iface = %link.name, ns = %ns.path.display(), "found veth peer namespace");
        Ok(Peer {
            ns: Some(ns),
            index,
        })
    }

    fn run<T: Send>(&self, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
        match &self.ns {
            Some(ns) => netns::run_in(&ns.file, f),
            None => f(),
        }
    }

    fn get(&self) -> io::Result<(String, Offloads)> {
        let index = self.index;
        self.run(move || ethtool::get(index))
    }

    fn set(&self, want: Offloads) -> io::Result<()> {
        let index = self.index;
        self.run(move || ethtool::set(index, want))
    }
}

/// Frames redirected into a veth by XDP are only delivered if the peer has NAPI (GRO on), and
/// lose their partial checksum, so the peer must compute checksums itself (DESIGN.md section 3).
const PREPARED: Offloads = Offloads {
    gro: true,
    tx_csum: false,
};

fn prepare_peer(rtnl: &mut Rtnl, link: &Link) -> Result<u8> {
    let peer = Peer::locate(rtnl, link)?;
    let (peer_name, orig) = peer
        .get()
        .with_context(|| format!("reading offloads of {}'s peer", link.name))?;
    peer.set(PREPARED).with_context(|| {
        format!(
            "setting gro on, tx-checksumming off on {peer_name} (peer of {})",
            link.name
        )
    })?;
    let mut flags = ATT_F_PREPARED;
    if orig.gro {
        flags |= ATT_F_ORIG_GRO_ON;
    }
    if orig.tx_csum {
        flags |= ATT_F_ORIG_TX_CSUM_ON;
    }
    Ok(flags)
}

/// Gives the pod back the settings recorded in `att`. A peer that is gone needs nothing.
fn restore_peer(rtnl: &mut Rtnl, att: &Attachment) -> Result<()> {
    if att.prep_flags & ATT_F_PREPARED == 0 {
        return Ok(());
    }
    let Some(link) = rtnl.link_by_index(att.ifindex)? else {
        return Ok(());
    };
    let peer = match Peer::locate(rtnl, &link) {
        Ok(p) => p,
        Err(e) => {
            warn!("{}: not restoring pod-side offloads: {e:#}", link.name);
            return Ok(());
        }
    };
    let want = Offloads {
        gro: att.prep_flags & ATT_F_ORIG_GRO_ON != 0,
        tx_csum: att.prep_flags & ATT_F_ORIG_TX_CSUM_ON != 0,
    };
    peer.set(want)
        .with_context(|| format!("restoring offloads of {}'s peer", link.name))
}

// ---------------------------------------------------------------------------------------------
// attach

#[derive(Debug, Serialize)]
pub struct AttachReport {
    pub iface: String,
    pub ifindex: u32,
    pub mode: Mode,
    /// `attached` or `already-attached`.
    pub result: &'static str,
    pub pin_path: PathBuf,
}

fn name_bytes(name: &str) -> [u8; 16] {
    let mut b = [0u8; 16];
    for (d, s) in b.iter_mut().zip(name.bytes().take(15)) {
        *d = s;
    }
    b
}

fn att_name(att: &Attachment) -> String {
    let end = att
        .name
        .iter()
        .position(|b| *b == 0)
        .unwrap_or(att.name.len());
    String::from_utf8_lossy(&att.name[..end]).into_owned()
}

/// Is the attachment recorded for `link` live: its pinned link exists and the interface runs
/// that link's program? (A recorded ifindex may have been reused by a new interface.)
fn live_attachment(pins: &PinDir, link: &Link) -> Option<u32> {
    let pinned = PinnedLink::from_pin(pins.xdp_link_path(link.index)).ok()?;
    let info = FdLink::from(pinned).info().ok()?;
    (link.xdp_prog_id == Some(info.program_id())).then_some(info.program_id())
}

/// One undo step of a partial attach.
enum Undo {
    Peer(Attachment),
    TxPort(u32),
    Record(u32),
    Link(PathBuf),
}

pub fn attach(pins: &PinDir, ifaces: &[String], mode: Mode) -> Result<Vec<AttachReport>> {
    if ifaces.is_empty() {
        bail!("no interface given");
    }
    let mut rtnl = Rtnl::new().context("opening rtnetlink")?;
    // Resolve everything before changing anything.
    let mut links = Vec::new();
    for name in ifaces {
        let link = rtnl
            .link_by_name(name)
            .with_context(|| format!("looking up interface {name}"))?
            .ok_or_else(|| anyhow!("unknown interface {name}"))?;
        if links.iter().any(|l: &Link| l.index == link.index) {
            bail!("interface {name} given twice");
        }
        links.push(link);
    }

    let _lock = pins.create_and_lock()?;
    let mut ebpf = load(Some(pins))?;
    let mut maps = Maps::from_ebpf(&mut ebpf)?;
    let program: &mut Xdp = ebpf
        .program_mut(XDP_PROGRAM)
        .ok_or_else(|| anyhow!("program {XDP_PROGRAM} missing from the eBPF object"))?
        .try_into()
        .context("program type")?;
    program
        .load()
        .context("loading the XDP program (verifier)")?;

    let mut reports = Vec::new();
    let mut undo: Vec<Undo> = Vec::new();
    let result = (|| -> Result<()> {
        for link in &links {
            let pin_path = pins.xdp_link_path(link.index);
            if let Some(att) = maps.attachment(link.index) {
                if live_attachment(pins, link).is_some() {
                    reports.push(AttachReport {
                        iface: link.name.clone(),
                        ifindex: link.index,
                        mode: Mode::from_att(att.mode).unwrap_or(mode),
                        result: "already-attached",
                        pin_path,
                    });
                    continue;
                }
                // A stale record (interface gone, ifindex reused): forget it, never inherit.
                forget_stale(pins, &mut maps, link.index)?;
            } else if let Some(id) = link.xdp_prog_id {
                bail!(
                    "{} already runs another XDP program (id {id}) that xdp-ctl did not attach; \
                     detach it first (`ip link set dev {} xdp off`)",
                    link.name,
                    link.name
                );
            }
            attach_one(pins, &mut rtnl, &mut maps, program, link, mode, &mut undo)
                .with_context(|| format!("attaching to {}", link.name))?;
            reports.push(AttachReport {
                iface: link.name.clone(),
                ifindex: link.index,
                mode,
                result: "attached",
                pin_path,
            });
        }
        Ok(())
    })();

    if let Err(e) = result {
        for step in undo.into_iter().rev() {
            if let Err(u) = run_undo(&mut rtnl, &mut maps, step) {
                warn!("while undoing a failed attach: {u:#}");
            }
        }
        if maps.attachments()?.is_empty() {
            drop(maps);
            drop(ebpf);
            pins.remove_all()?;
        }
        return Err(e.context("nothing was attached (all-or-nothing)"));
    }
    Ok(reports)
}

fn attach_one(
    pins: &PinDir,
    rtnl: &mut Rtnl,
    maps: &mut Maps,
    program: &mut Xdp,
    link: &Link,
    mode: Mode,
    undo: &mut Vec<Undo>,
) -> Result<()> {
    let mut att = Attachment {
        ifindex: link.index,
        datapath: ATT_DATAPATH_XDP,
        mode: mode.to_att(),
        prep_flags: 0,
        pad: 0,
        name: name_bytes(&link.name),
    };
    // 1. The pod side must be able to take redirected frames before anyone redirects to it.
    //    Prepared in skb mode too: a generic-mode redirect would not need it, but a native
    //    program on another veth may redirect here, and a native redirect into a veth whose
    //    peer has no NAPI is dropped silently (DESIGN.md section 3).
    att.prep_flags = prepare_peer(rtnl, link)?;
    undo.push(Undo::Peer(att));
    // 2. Record, then open the interface as a redirect target.
    maps.attachments
        .insert(link.index, att, 0)
        .context("recording the attachment (ATTACHMENTS full?)")?;
    undo.push(Undo::Record(link.index));
    maps.tx_ports
        .insert(link.index, link.index, None, 0)
        .context("adding the interface to TX_PORTS (map full?)")?;
    undo.push(Undo::TxPort(link.index));
    // 3. Attach last, through a bpf_link pinned so that it outlives this process.
    let id = program
        .attach_to_if_index(link.index, mode.xdp_mode())
        .map_err(|e| explain_attach_error(e, link, mode))?;
    let xdp_link = program.take_link(id)?;
    let fd_link = FdLink::try_from(xdp_link).map_err(|_| {
        anyhow!("the kernel attached without a bpf_link (netlink fallback); bpf_link for XDP needs Linux 5.9+")
    })?;
    let path = pins.xdp_link_path(link.index);
    fd_link
        .pin(&path)
        .with_context(|| format!("pinning the link at {}", path.display()))?;
    undo.push(Undo::Link(path));
    Ok(())
}

fn explain_attach_error(e: ProgramError, link: &Link, mode: Mode) -> anyhow::Error {
    let errno = match &e {
        ProgramError::SyscallError(s) => s.io_error.raw_os_error(),
        _ => None,
    };
    let hint = match errno {
        Some(libc::ERANGE) => format!(
            "the veth peer's MTU is too large for XDP without multi-buffer support (kernel: \
             \"Peer MTU is too large to set XDP\"); lower the pod MTU (MTU now {}) below about 3,500 or use --mode skb",
            link.mtu.unwrap_or(0)
        ),
        Some(libc::EBUSY | libc::EEXIST) => {
            "another XDP program is already attached to this interface".to_string()
        }
        Some(libc::EOPNOTSUPP) if mode == Mode::Native => {
            "the driver has no native XDP; try --mode skb".to_string()
        }
        Some(libc::EPERM) => "permission denied: needs CAP_BPF and CAP_NET_ADMIN".to_string(),
        _ => return anyhow::Error::new(e).context("attaching the XDP program"),
    };
    anyhow::Error::new(e).context(format!("attaching the XDP program: {hint}"))
}

fn run_undo(rtnl: &mut Rtnl, maps: &mut Maps, step: Undo) -> Result<()> {
    match step {
        Undo::Peer(att) => restore_peer(rtnl, &att),
        Undo::TxPort(i) => maps.tx_ports.remove(i).context("TX_PORTS"),
        Undo::Record(i) => maps.attachments.remove(&i).context("ATTACHMENTS"),
        Undo::Link(path) => {
            PinnedLink::from_pin(&path)?.unpin()?;
            Ok(())
        }
    }
}

/// Drops every trace of an attachment whose interface is gone or was replaced.
fn forget_stale(pins: &PinDir, maps: &mut Maps, ifindex: u32) -> Result<()> {
    warn!(
        ifindex,
        "forgetting a stale attachment (interface gone or index reused)"
    );
    remove_endpoints_on(maps, ifindex)?;
    let _ = maps.tx_ports.remove(ifindex);
    if let Ok(l) = PinnedLink::from_pin(pins.xdp_link_path(ifindex)) {
        l.unpin().context("unpinning a stale link")?;
    }
    let _ = maps.attachments.remove(&ifindex);
    Ok(())
}

fn remove_endpoints_on(maps: &mut Maps, ifindex: u32) -> Result<usize> {
    let doomed: Vec<Prefix> = maps
        .endpoints()?
        .into_iter()
        .filter(|(_, ep)| ep.ifindex == ifindex)
        .map(|(p, _)| p)
        .collect();
    for p in &doomed {
        maps.remove_endpoint(*p)?;
    }
    Ok(doomed.len())
}

// ---------------------------------------------------------------------------------------------
// detach

#[derive(Debug, Serialize)]
pub struct DetachReport {
    pub iface: String,
    pub ifindex: u32,
    pub endpoints_removed: usize,
    pub pod_settings_restored: bool,
}

/// Detaches `ifaces` (or everything with `None`). When nothing stays attached, every pin is
/// removed too. Returns an empty list if there was nothing of ours to detach.
pub fn detach(pins: &PinDir, ifaces: Option<&[String]>) -> Result<Vec<DetachReport>> {
    pins.check_bpffs()?;
    if !pins.has_maps() {
        if let Some(names) = ifaces {
            bail!(
                "{} is not attached (nothing is attached under {})",
                names.join(", "),
                pins.root().display()
            );
        }
        return Ok(Vec::new());
    }
    let (_lock, mut maps) = lock_pinned(pins)?;
    let mut rtnl = Rtnl::new().context("opening rtnetlink")?;
    let atts = maps.attachments()?;
    let targets: Vec<Attachment> = match ifaces {
        None => atts,
        Some(names) => {
            let mut t = Vec::new();
            for name in names {
                let index = rtnl.link_by_name(name)?.map(|l| l.index);
                let att = atts
                    .iter()
                    .find(|a| Some(a.ifindex) == index || (index.is_none() && att_name(a) == *name))
                    .ok_or_else(|| anyhow!("{name} is not attached by xdp-ctl"))?;
                t.push(*att);
            }
            t
        }
    };

    let mut reports = Vec::new();
    for att in targets {
        let name = att_name(&att);
        // Stop redirecting into it first, then detach, then give the pod its settings back.
        let endpoints_removed = remove_endpoints_on(&mut maps, att.ifindex)?;
        let _ = maps.tx_ports.remove(att.ifindex);
        let path = pins.xdp_link_path(att.ifindex);
        match PinnedLink::from_pin(&path) {
            Ok(l) => drop(
                l.unpin()
                    .with_context(|| format!("unpinning {}", path.display()))?,
            ),
            Err(e) => warn!("{name}: no pinned link at {} ({e})", path.display()),
        }
        restore_peer(&mut rtnl, &att).with_context(|| format!("detaching {name}"))?;
        maps.attachments
            .remove(&att.ifindex)
            .context("ATTACHMENTS")?;
        reports.push(DetachReport {
            iface: name,
            ifindex: att.ifindex,
            endpoints_removed,
            pod_settings_restored: att.prep_flags & ATT_F_PREPARED != 0,
        });
    }
    if maps.attachments()?.is_empty() {
        drop(maps);
        pins.remove_all()?;
    }
    Ok(reports)
}

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
    let mut rtnl = Rtnl::new().context("opening rtnetlink")?;
    maps.endpoints()?
        .into_iter()
        .map(|(p, ep)| {
            let name = rtnl
                .link_by_index(ep.ifindex)?
                .map_or_else(|| format!("<gone:{}>", ep.ifindex), |l| l.name);
            Ok(view(p, &ep, name))
        })
        .collect()
}

fn view(p: Prefix, ep: &Endpoint, iface: String) -> EndpointView {
    EndpointView {
        prefix: p.to_string(),
        iface,
        ifindex: ep.ifindex,
        pod_mac: fmt_mac(&ep.pod_mac),
        host_mac: fmt_mac(&ep.host_mac),
        meshed: ep.is_meshed(),
    }
}

// ---------------------------------------------------------------------------------------------
// status and stats

#[derive(Debug, Serialize)]
pub struct InterfaceStatus {
    pub name: String,
    pub ifindex: u32,
    pub datapath: &'static str,
    pub mode: String,
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
}

pub fn status(pins: &PinDir) -> Result<Status> {
    pins.check_bpffs()?;
    let mut st = Status {
        pin_dir: pins.root().to_path_buf(),
        interfaces: Vec::new(),
        endpoints_v4: 0,
        endpoints_v6: 0,
    };
    if !pins.has_maps() {
        return Ok(st);
    }
    let maps = Maps::open_pinned(pins)?;
    let mut rtnl = Rtnl::new().context("opening rtnetlink")?;
    for att in maps.attachments()? {
        let path = pins.xdp_link_path(att.ifindex);
        let info = PinnedLink::from_pin(&path)
            .ok()
            .and_then(|l| FdLink::from(l).info().ok());
        let link = rtnl.link_by_index(att.ifindex)?;
        let live =
            matches!((&link, &info), (Some(l), Some(i)) if l.xdp_prog_id == Some(i.program_id()));
        st.interfaces.push(InterfaceStatus {
            name: link.map_or_else(|| att_name(&att), |l| l.name),
            ifindex: att.ifindex,
            datapath: "xdp",
            mode: Mode::from_att(att.mode)
                .map_or("unknown", Mode::name)
                .to_string(),
            program_id: info
                .as_ref()
                .map(aya::programs::links::LinkInfo::program_id),
            link_id: info.as_ref().map(aya::programs::links::LinkInfo::id),
            link_kind: "bpf_link",
            pin_path: path,
            live,
        });
    }
    for (p, _) in maps.endpoints()? {
        match p.addr {
            IpAddr::V4(_) => st.endpoints_v4 += 1,
            IpAddr::V6(_) => st.endpoints_v6 += 1,
        }
    }
    Ok(st)
}

pub fn stats(pins: &PinDir) -> Result<Vec<(Reason, Counter)>> {
    pins.check_bpffs()?;
    let maps = Maps::open_pinned(pins)?;
    maps.counters()
}
