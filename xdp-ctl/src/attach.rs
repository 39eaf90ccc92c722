//! Attaching and detaching the datapath, and the pod side of each veth.
//!
//! Every command that changes state takes the pin directory's lock first. Attach follows
//! libxdp's order, in two phases:
//! 1. for every interface, add the new attachment: prepare the pod side (XDP), record it,
//!    open the interface as a redirect target, attach and pin the link. Any failure undoes all
//!    of phase 1, for every interface: all-or-nothing.
//! 2. only then remove what the new attachments replace (switching an interface between XDP
//!    and TC). The new program is running before the old one goes, so no traffic is
//!    blackholed; see `commit_switch`.
use std::{collections::HashMap, io, path::PathBuf};

use anyhow::{anyhow, bail, Context as _, Result};
use aya::programs::{
    links::{FdLink, LinkOrder, PinnedLink},
    tc::TcAttachOptions,
    ProgramError, SchedClassifier, TcAttachType, Xdp, XdpMode,
};
use common::{
    Attachment, ATT_DATAPATH_TC, ATT_DATAPATH_XDP, ATT_F_ORIG_GRO_ON, ATT_F_ORIG_TX_CSUM_ON,
    ATT_F_PREPARED, ATT_MODE_NATIVE, ATT_MODE_SKB, ATT_MODE_TCX,
};
use serde::Serialize;
use tracing::{debug, warn};

use crate::{
    ethtool::{self, Offloads},
    maps::{Maps, Prefix, ALL_MAPS},
    netns::{self, Namespace},
    nl::{Link, Rtnl},
    pin::PinDir,
    EBPF_OBJECT, TC_PROGRAM, XDP_PROGRAM,
};

/// Which hook carries the fast path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Datapath {
    /// XDP on the host veth, redirect through a devmap. Costs the pods TSO and checksum
    /// offload (their side is prepared: GRO on, tx checksumming off).
    Xdp,
    /// TCX ingress on the host veth, `bpf_redirect_peer` into the pod. Keeps the skb, its
    /// checksum state and GSO; needs no pod-side preparation. Linux 6.6+.
    Tc,
}

impl Datapath {
    pub const fn name(self) -> &'static str {
        match self {
            Datapath::Xdp => "xdp",
            Datapath::Tc => "tc",
        }
    }

    const fn to_att(self) -> u8 {
        match self {
            Datapath::Xdp => ATT_DATAPATH_XDP,
            Datapath::Tc => ATT_DATAPATH_TC,
        }
    }

    pub const fn from_att(d: u8) -> Option<Self> {
        match d {
            ATT_DATAPATH_XDP => Some(Datapath::Xdp),
            ATT_DATAPATH_TC => Some(Datapath::Tc),
            _ => None,
        }
    }
}

/// XDP attach mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Driver mode (veth supports it): the fast one.
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

    const fn xdp_mode(self) -> XdpMode {
        match self {
            Mode::Native => XdpMode::Driver,
            Mode::Skb => XdpMode::Skb,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Mode::Native => "native",
            Mode::Skb => "skb",
        }
    }
}

/// The attach-mode column of `status`: `native`, `skb` or `tcx`.
pub fn mode_name(att: &Attachment) -> &'static str {
    match att.mode {
        ATT_MODE_NATIVE => "native",
        ATT_MODE_SKB => "skb",
        ATT_MODE_TCX => "tcx",
        _ => "unknown",
    }
}

/// Where the link of an attachment of `datapath` on `ifindex` is pinned.
pub fn link_pin(pins: &PinDir, datapath: Datapath, ifindex: u32) -> PathBuf {
    match datapath {
        Datapath::Xdp => pins.xdp_link_path(ifindex),
        Datapath::Tc => pins.tcx_link_path(ifindex),
    }
}

/// Loads the eBPF object; with `pins`, its maps are reused from (or pinned to) the pin
/// directory.
pub fn load(pins: Option<&PinDir>) -> Result<aya::Ebpf> {
    let mut loader = aya::EbpfLoader::new();
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
    fn locate(rtnl: &mut Rtnl, link: &Link, index: Option<&mut NsIndex>) -> Result<Peer> {
        if !link.is_veth() {
            bail!(
                "{} is not a veth (kind: {}); xdp-fastpath attaches to the host side of pod veths",
                link.name,
                link.kind.as_deref().unwrap_or("none")
            );
        }
        let peer_index = link
            .peer_index
            .filter(|i| *i != 0)
            .ok_or_else(|| anyhow!("{}: the kernel reports no veth peer", link.name))?;
        let Some(nsid) = link.link_netnsid else {
            return Ok(Peer {
                ns: None,
                index: peer_index,
            });
        };
        let ns = match index {
            Some(index) => index.take(rtnl, nsid)?,
            None => netns::find_by_nsid(rtnl, nsid).context("searching network namespaces")?,
        }
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
            index: peer_index,
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

/// Namespaces by id, built once per attach batch (and rebuilt once on a miss, for namespaces
/// created since).
#[derive(Default)]
struct NsIndex {
    by_id: Option<HashMap<i32, Namespace>>,
    rebuilt: bool,
}

impl NsIndex {
    fn take(&mut self, rtnl: &mut Rtnl, nsid: i32) -> Result<Option<Namespace>> {
        if self.by_id.is_none() {
            self.by_id = Some(netns::index_by_nsid(rtnl).context("indexing network namespaces")?);
        }
        if let Some(ns) = self.by_id.as_mut().and_then(|m| m.remove(&nsid)) {
            return Ok(Some(ns));
        }
        if self.rebuilt {
            return Ok(None);
        }
        self.rebuilt = true;
        self.by_id = Some(netns::index_by_nsid(rtnl).context("indexing network namespaces")?);
        Ok(self.by_id.as_mut().and_then(|m| m.remove(&nsid)))
    }
}

/// Frames redirected into a veth by XDP are only delivered if the peer has NAPI (GRO on), and
/// lose their partial checksum, so the peer must compute checksums itself (DESIGN.md section 3).
const PREPARED: Offloads = Offloads {
    gro: true,
    tx_csum: false,
};

fn prepare_peer(rtnl: &mut Rtnl, link: &Link, index: &mut NsIndex) -> Result<u8> {
    let peer = Peer::locate(rtnl, link, Some(index))?;
    if !link.carrier {
        // veth derives "can take XDP redirects" (NDO_XMIT) for this interface from the
        // peer's GRO when GRO changes; a change made while the pod side is down does not
        // count once it comes up, and redirects into it then fail (-EOPNOTSUPP).
        warn!(
            "{}: the pod side is down; XDP redirects into this pod will be dropped until GRO \
             is re-applied after it comes up (`xdp-ctl run` does this; by hand: detach and \
             attach again once the pod is up)",
            link.name
        );
    }
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

/// Re-applies the pod-side preparation after the pod side came up (see `prepare_peer`):
/// GRO off and on again, so that veth re-derives that the host veth takes XDP redirects.
/// One namespace index for the whole batch: the cost is linear in the batch, not in the
/// node's namespaces. Returns one result per link.
pub fn refresh_peers(rtnl: &mut Rtnl, links: &[Link]) -> Vec<Result<()>> {
    let mut index = NsIndex::default();
    links
        .iter()
        .map(|link| {
            let peer = Peer::locate(rtnl, link, Some(&mut index))?;
            peer.set(Offloads {
                gro: false,
                tx_csum: false,
            })
            .and_then(|()| peer.set(PREPARED))
            .with_context(|| format!("re-applying GRO on {}'s peer", link.name))
        })
        .collect()
}

/// Gives the pod back the settings recorded in `att`. A peer that is gone needs nothing.
/// Callers make sure `att` still describes the interface at its index (see `detach_records`).
fn restore_peer(rtnl: &mut Rtnl, att: &Attachment) -> Result<()> {
    if att.prep_flags & ATT_F_PREPARED == 0 {
        return Ok(());
    }
    let Some(link) = rtnl.link_by_index(att.ifindex)? else {
        return Ok(());
    };
    let peer = match Peer::locate(rtnl, &link, None) {
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
    pub datapath: Datapath,
    /// `native`, `skb` or `tcx`.
    pub mode: &'static str,
    /// `attached`, `already-attached`, `switched` (from the other datapath), or
    /// `replaced-stale` (the ifindex belonged to a gone interface, whose entries were dropped).
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

pub fn att_name(att: &Attachment) -> String {
    let end = att
        .name
        .iter()
        .position(|b| *b == 0)
        .unwrap_or(att.name.len());
    String::from_utf8_lossy(&att.name[..end]).into_owned()
}

/// The program id of our pinned `datapath` link if it still drives `link` (a recorded ifindex
/// may belong to a new interface by now).
pub fn live_program(pins: &PinDir, link: &Link, datapath: Datapath) -> Option<u32> {
    let pinned = PinnedLink::from_pin(link_pin(pins, datapath, link.index)).ok()?;
    let prog = FdLink::from(pinned).info().ok()?.program_id();
    let live = match datapath {
        Datapath::Xdp => link.xdp_prog_id == Some(prog),
        Datapath::Tc => SchedClassifier::query_tcx(&link.name, TcAttachType::Ingress)
            .is_ok_and(|(_, progs)| progs.iter().any(|p| p.id() == prog)),
    };
    live.then_some(prog)
}

/// The loaded program of the requested datapath.
enum Prog<'a> {
    Xdp(&'a mut Xdp),
    Tc(&'a mut SchedClassifier),
}

impl<'a> Prog<'a> {
    fn get(ebpf: &'a mut aya::Ebpf, datapath: Datapath) -> Result<Self> {
        let name = match datapath {
            Datapath::Xdp => XDP_PROGRAM,
            Datapath::Tc => TC_PROGRAM,
        };
        let program = ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("program {name} missing from the eBPF object"))?;
        Ok(match datapath {
            Datapath::Xdp => Prog::Xdp(program.try_into().context("program type")?),
            Datapath::Tc => Prog::Tc(program.try_into().context("program type")?),
        })
    }

    fn load(self) -> Result<()> {
        match self {
            Prog::Xdp(p) => p.load().context("loading the XDP program (verifier)"),
            Prog::Tc(p) => p.load().context("loading the TC program (verifier)"),
        }
    }

    /// Attaches to `link` through a bpf_link pinned at `path`, so it outlives this process.
    fn attach(&mut self, link: &Link, mode: Mode, path: &PathBuf) -> Result<()> {
        let fd_link = match self {
            Prog::Xdp(p) => {
                let id = p
                    .attach_to_if_index(link.index, mode.xdp_mode())
                    .map_err(|e| explain_attach_error(e, link, Datapath::Xdp, mode))?;
                FdLink::try_from(p.take_link(id)?).map_err(|_| {
                    anyhow!(
                        "the kernel attached without a bpf_link (netlink fallback); \
                         XDP links need Linux 5.9+"
                    )
                })?
            }
            Prog::Tc(p) => {
                let id = p
                    .attach_with_options(
                        &link.name,
                        TcAttachType::Ingress,
                        TcAttachOptions::TcxOrder(LinkOrder::default()),
                    )
                    .map_err(|e| explain_attach_error(e, link, Datapath::Tc, mode))?;
                FdLink::try_from(p.take_link(id)?)
                    .map_err(|_| anyhow!("the kernel attached without a TCX link"))?
            }
        };
        fd_link
            .pin(path)
            .with_context(|| format!("pinning the link at {}", path.display()))?;
        Ok(())
    }
}

/// One undo step of phase 1.
enum Undo {
    Peer(Attachment),
    TxPort(u32),
    Record(u32),
    Link(PathBuf),
}

/// What phase 2 still has to do for an interface that changed datapath.
struct Switch {
    link: Link,
    old: Attachment,
    new: Attachment,
}

/// Attaches `ifaces` (names in the current network namespace) with `datapath`; the CLI's
/// `attach`. All-or-nothing.
pub fn attach(
    pins: &PinDir,
    ifaces: &[String],
    datapath: Datapath,
    mode: Mode,
) -> Result<Vec<AttachReport>> {
    if ifaces.is_empty() {
        bail!("no interface given");
    }
    let mut rtnl = Rtnl::new().context("opening rtnetlink")?;
    // Resolve everything before changing anything.
    let links = resolve(&mut rtnl, ifaces)?;
    let _lock = pins.create_and_lock()?;
    let mut attacher = Attacher::new(pins, datapath, mode)?;
    attacher.attach(&mut rtnl, &links)
}

/// A loaded datapath ready to attach interfaces: the object with its pinned maps and the
/// verified program of one datapath. The CLI makes one per command; the controller keeps one,
/// so the program is loaded (and verified) once however many interfaces come and go.
/// The caller holds the pin directory's lock around each call.
pub struct Attacher {
    ebpf: aya::Ebpf,
    pub maps: Maps,
    pins: PinDir,
    datapath: Datapath,
    mode: Mode,
}

impl Attacher {
    pub fn new(pins: &PinDir, datapath: Datapath, mode: Mode) -> Result<Self> {
        let mut ebpf = load(Some(pins))?;
        let maps = Maps::from_ebpf(&mut ebpf)?;
        Prog::get(&mut ebpf, datapath)?.load()?;
        Ok(Self {
            ebpf,
            maps,
            pins: pins.clone(),
            datapath,
            mode,
        })
    }

    /// Attaches `links` in two phases (see the module docs). All-or-nothing.
    pub fn attach(&mut self, rtnl: &mut Rtnl, links: &[Link]) -> Result<Vec<AttachReport>> {
        let Self {
            ebpf,
            maps,
            pins,
            datapath,
            mode,
        } = self;
        let (datapath, mode) = (*datapath, *mode);
        let mut prog = Prog::get(ebpf, datapath)?;
        let mut index = NsIndex::default();
        let mut reports = Vec::new();
        let mut undo: Vec<Undo> = Vec::new();
        let mut switches: Vec<Switch> = Vec::new();
        let phase1 = (|| -> Result<()> {
            for link in links {
                let new = Attachment {
                    ifindex: link.index,
                    datapath: datapath.to_att(),
                    mode: match datapath {
                        Datapath::Xdp => mode.to_att(),
                        Datapath::Tc => ATT_MODE_TCX,
                    },
                    prep_flags: 0,
                    pad: 0,
                    name: name_bytes(&link.name),
                };
                let mut ctx = Step {
                    pins,
                    rtnl: &mut *rtnl,
                    maps: &mut *maps,
                    prog: &mut prog,
                    index: &mut index,
                    undo: &mut undo,
                };
                let mut result = "attached";
                match ctx.maps.attachment(link.index) {
                    Some(old) if live_old(pins, link, &old) => {
                        if old.datapath == new.datapath {
                            if old.mode != new.mode {
                                bail!(
                                    "{} is attached in {} mode; detach it first to change the mode",
                                    link.name,
                                    mode_name(&old)
                                );
                            }
                            reports.push(report(pins, link, &new, "already-attached"));
                            continue;
                        }
                        let new = ctx.add(link, new, Some(&old)).with_context(|| {
                            format!("switching {} to {}", link.name, datapath.name())
                        })?;
                        switches.push(Switch {
                            link: link.clone(),
                            old,
                            new,
                        });
                        result = "switched";
                    }
                    Some(_) => {
                        // A stale record (interface gone, ifindex reused): forget it, never
                        // inherit its endpoints.
                        forget(pins, ctx.maps, link.index)?;
                        ctx.add(link, new, None)
                            .with_context(|| format!("attaching to {}", link.name))?;
                        result = "replaced-stale";
                    }
                    None => {
                        if let (Datapath::Xdp, Some(id)) = (datapath, link.xdp_prog_id) {
                            bail!(
                                "{} already runs another XDP program (id {id}) that xdp-ctl did \
                                 not attach; detach it first (`ip link set dev {} xdp off`)",
                                link.name,
                                link.name
                            );
                        }
                        ctx.add(link, new, None)
                            .with_context(|| format!("attaching to {}", link.name))?;
                    }
                }
                reports.push(report(pins, link, &new, result));
            }
            Ok(())
        })();

        if let Err(e) = phase1 {
            undo_all(pins, rtnl, maps, undo)?;
            return Err(e.context("nothing was changed (all-or-nothing)"));
        }
        for s in switches {
            commit_switch(pins, rtnl, maps, &s).with_context(|| {
                format!(
                    "{}: removing the old {} attachment",
                    s.link.name,
                    dp_name(&s.old)
                )
            })?;
        }
        Ok(reports)
    }
}

fn resolve(rtnl: &mut Rtnl, ifaces: &[String]) -> Result<Vec<Link>> {
    let mut links: Vec<Link> = Vec::new();
    for name in ifaces {
        let link = rtnl
            .link_by_name(name)
            .with_context(|| format!("looking up interface {name}"))?
            .ok_or_else(|| anyhow!("unknown interface {name}"))?;
        if links.iter().any(|l| l.index == link.index) {
            bail!("interface {name} given twice");
        }
        links.push(link);
    }
    Ok(links)
}

fn dp_name(att: &Attachment) -> &'static str {
    Datapath::from_att(att.datapath).map_or("unknown", Datapath::name)
}

fn live_old(pins: &PinDir, link: &Link, old: &Attachment) -> bool {
    Datapath::from_att(old.datapath).is_some_and(|d| live_program(pins, link, d).is_some())
}

fn report(pins: &PinDir, link: &Link, att: &Attachment, result: &'static str) -> AttachReport {
    let datapath = Datapath::from_att(att.datapath).unwrap_or(Datapath::Xdp);
    AttachReport {
        iface: link.name.clone(),
        ifindex: link.index,
        datapath,
        mode: mode_name(att),
        result,
        pin_path: link_pin(pins, datapath, link.index),
    }
}

/// What one phase-1 step works with.
struct Step<'s, 'p> {
    pins: &'s PinDir,
    rtnl: &'s mut Rtnl,
    maps: &'s mut Maps,
    prog: &'s mut Prog<'p>,
    index: &'s mut NsIndex,
    undo: &'s mut Vec<Undo>,
}

impl Step<'_, '_> {
    /// Phase 1 for one interface: everything the new attachment needs, undoable. With `old`
    /// (a live attachment of the other datapath), the record is left as it is until phase 2.
    fn add(
        &mut self,
        link: &Link,
        mut att: Attachment,
        old: Option<&Attachment>,
    ) -> Result<Attachment> {
        let datapath = Datapath::from_att(att.datapath).unwrap_or(Datapath::Xdp);
        // Both hooks forward into the peer of a veth: bpf_redirect_peer only works towards a
        // veth (or netkit), and the XDP path prepares the peer.
        if !link.is_veth() {
            bail!(
                "{} is not a veth (kind: {}); xdp-fastpath attaches to the host side of pod veths",
                link.name,
                link.kind.as_deref().unwrap_or("none")
            );
        }
        if datapath == Datapath::Xdp {
            // The pod side must take native redirects before anyone redirects to it. Done in
            // skb mode too: a generic redirect would not need it, but a native program on
            // another veth may redirect here, and a native redirect into a veth whose peer has
            // no NAPI is dropped silently (DESIGN.md section 3).
            att.prep_flags = prepare_peer(self.rtnl, link, self.index)?;
            self.undo.push(Undo::Peer(att));
        }
        if old.is_none() {
            self.maps
                .attachments
                .insert(link.index, att, 0)
                .context("recording the attachment (ATTACHMENTS full?)")?;
            self.undo.push(Undo::Record(link.index));
        }
        if datapath == Datapath::Xdp {
            self.maps
                .tx_ports
                .insert(link.index, link.index, None, 0)
                .context("adding the interface to TX_PORTS (map full?)")?;
            self.undo.push(Undo::TxPort(link.index));
        }
        // Attach last.
        let path = link_pin(self.pins, datapath, link.index);
        let mode = if att.mode == ATT_MODE_SKB {
            Mode::Skb
        } else {
            Mode::Native
        };
        self.prog.attach(link, mode, &path)?;
        self.undo.push(Undo::Link(path));
        Ok(att)
    }
}

/// Phase 2 of a datapath switch: the new program already runs (XDP runs before TCX on the
/// same interface, so during phase 1 of tc -> xdp the XDP program takes over at once, and
/// during xdp -> tc the TCX program waits behind XDP). Now drop the old attachment:
/// - xdp -> tc: detach XDP (TC takes over), stop other XDP programs redirecting here (they
///   pass such frames to the kernel, counted `tx_port_missing`), then give the pod its
///   settings back. The order matters: a native redirect into an unprepared pod is dropped.
/// - tc -> xdp: record the new attachment, detach TC.
fn commit_switch(pins: &PinDir, rtnl: &mut Rtnl, maps: &mut Maps, s: &Switch) -> Result<()> {
    let old_dp = Datapath::from_att(s.old.datapath).unwrap_or(Datapath::Xdp);
    let mut new = s.new;
    if old_dp == Datapath::Xdp {
        unpin(&link_pin(pins, Datapath::Xdp, s.link.index))?;
        let _ = maps.tx_ports.remove(s.link.index);
        if let Err(e) = restore_peer(rtnl, &s.old) {
            // Keep what detach needs to retry.
            warn!("{}: {e:#}", s.link.name);
            new.prep_flags = s.old.prep_flags;
        }
        maps.attachments
            .insert(s.link.index, new, 0)
            .context("ATTACHMENTS")?;
    } else {
        maps.attachments
            .insert(s.link.index, new, 0)
            .context("ATTACHMENTS")?;
        unpin(&link_pin(pins, Datapath::Tc, s.link.index))?;
    }
    Ok(())
}

fn unpin(path: &PathBuf) -> Result<()> {
    match PinnedLink::from_pin(path) {
        Ok(l) => {
            // Dropping the last reference detaches the program.
            drop(
                l.unpin()
                    .with_context(|| format!("unpinning {}", path.display()))?,
            );
            Ok(())
        }
        Err(e) => {
            debug!("no pinned link at {} ({e})", path.display());
            Ok(())
        }
    }
}

fn explain_attach_error(
    e: ProgramError,
    link: &Link,
    datapath: Datapath,
    mode: Mode,
) -> anyhow::Error {
    let errno = match &e {
        ProgramError::SyscallError(s) => s.io_error.raw_os_error(),
        _ => None,
    };
    let hint = match (datapath, errno) {
        (Datapath::Xdp, Some(libc::ERANGE)) => format!(
            "the kernel refused the veth's MTU for XDP (MTU now {}; the program is \
             multi-buffer capable, so this kernel may lack veth XDP multi-buffer support); \
             lower the pod MTU or use --datapath tc",
            link.mtu.unwrap_or(0)
        ),
        (Datapath::Xdp, Some(libc::EBUSY | libc::EEXIST)) => {
            "another XDP program is already attached to this interface".to_string()
        }
        (Datapath::Xdp, Some(libc::EOPNOTSUPP)) if mode == Mode::Native => {
            "the driver has no native XDP; try --mode skb".to_string()
        }
        (Datapath::Tc, Some(libc::EINVAL | libc::EOPNOTSUPP)) => {
            "TCX links need Linux 6.6 or newer; use --datapath xdp on older kernels".to_string()
        }
        (_, Some(libc::EPERM)) => "permission denied: needs CAP_BPF and CAP_NET_ADMIN".to_string(),
        _ => {
            return anyhow::Error::new(e)
                .context(format!("attaching the {} program", datapath.name()))
        }
    };
    anyhow::Error::new(e).context(format!("attaching the {} program: {hint}", datapath.name()))
}

/// Undoes phase 1 in reverse; removes the pins if that leaves nothing attached.
fn undo_all(pins: &PinDir, rtnl: &mut Rtnl, maps: &mut Maps, undo: Vec<Undo>) -> Result<()> {
    for step in undo.into_iter().rev() {
        if let Err(u) = run_undo(rtnl, maps, step) {
            warn!("while undoing a failed attach: {u:#}");
        }
    }
    if maps.attachments()?.is_empty() {
        // The loaded object still holds map fds; unpinning only removes the names.
        pins.remove_all()?;
    }
    Ok(())
}

fn run_undo(rtnl: &mut Rtnl, maps: &mut Maps, step: Undo) -> Result<()> {
    match step {
        Undo::Peer(att) => restore_peer(rtnl, &att),
        Undo::TxPort(i) => maps.tx_ports.remove(i).context("TX_PORTS"),
        Undo::Record(i) => maps.attachments.remove(&i).context("ATTACHMENTS"),
        Undo::Link(path) => unpin(&path),
    }
}

/// Drops every trace of an attachment whose interface is gone or was replaced: its endpoints,
/// redirect-target entry, links and record. (The pod, if any, is gone with the interface.)
pub fn forget(pins: &PinDir, maps: &mut Maps, ifindex: u32) -> Result<()> {
    warn!(
        ifindex,
        "forgetting a stale attachment (interface gone or index reused)"
    );
    remove_endpoints_on(maps, ifindex)?;
    let _ = maps.tx_ports.remove(ifindex);
    unpin(&pins.xdp_link_path(ifindex))?;
    unpin(&pins.tcx_link_path(ifindex))?;
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
    pub datapath: &'static str,
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
    let _lock = pins.lock()?;
    let mut maps = Maps::open_pinned(pins)?;
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

    let reports = detach_records(pins, &mut maps, &mut rtnl, &targets)?;
    if maps.attachments()?.is_empty() {
        drop(maps);
        pins.remove_all()?;
    }
    Ok(reports)
}

/// Detaches the interfaces of `targets`; the caller holds the lock. Stops redirecting into
/// each first, then detaches (both link kinds: a switch interrupted between its phases leaves
/// both), then gives the pod its settings back.
pub fn detach_records(
    pins: &PinDir,
    maps: &mut Maps,
    rtnl: &mut Rtnl,
    targets: &[Attachment],
) -> Result<Vec<DetachReport>> {
    let mut reports = Vec::new();
    for att in targets {
        let name = att_name(att);
        // A stale record (its interface gone, the index now someone else's) must not touch
        // whatever interface has the index now: only a live attachment gets its pod restored.
        let live = match (
            rtnl.link_by_index(att.ifindex)?,
            Datapath::from_att(att.datapath),
        ) {
            (Some(link), Some(dp)) => live_program(pins, &link, dp).is_some(),
            _ => false,
        };
        let endpoints_removed = remove_endpoints_on(maps, att.ifindex)?;
        let _ = maps.tx_ports.remove(att.ifindex);
        unpin(&pins.xdp_link_path(att.ifindex))?;
        unpin(&pins.tcx_link_path(att.ifindex))?;
        let restore = live && att.prep_flags & ATT_F_PREPARED != 0;
        if restore {
            restore_peer(rtnl, att).with_context(|| format!("detaching {name}"))?;
        } else if !live {
            debug!(
                ifindex = att.ifindex,
                "stale attachment: interface gone or replaced"
            );
        }
        maps.attachments
            .remove(&att.ifindex)
            .context("ATTACHMENTS")?;
        reports.push(DetachReport {
            iface: name,
            ifindex: att.ifindex,
            datapath: dp_name(att),
            endpoints_removed,
            pod_settings_restored: restore,
        });
    }
    Ok(reports)
}
