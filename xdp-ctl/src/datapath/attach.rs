//! Attaching interfaces, all-or-nothing, in two phases (see the module docs of `datapath`).
use std::{
    path::PathBuf,
    sync::atomic::{AtomicBool, Ordering},
};

use common::{Attachment, Uplink, ATT_MODE_SKB, ATT_MODE_TCX};
use serde::Serialize;
use tracing::warn;

use super::{
    dp_name,
    error::{Error, Result, ResultExt as _},
    forget,
    link::{live_program, unpin},
    link_pin,
    load::{load, Prog},
    mode_name, name_bytes,
    switch::{commit_switch, Switch},
    Datapath, Mode, Role,
};
use crate::{
    maps::Maps,
    nl::{Link, Rtnl},
    pin::PinDir,
    pod::{prepare_peer, restore_peer, NsIndex},
};

/// What an attach did to one interface (`attached`, `already-attached`, `switched` or
/// `replaced-stale` in JSON).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttachResult {
    /// Newly attached.
    Attached,
    /// Already attached with this datapath and mode: nothing done.
    AlreadyAttached,
    /// Moved from the other datapath.
    Switched,
    /// The ifindex belonged to a gone interface, whose entries were dropped first.
    ReplacedStale,
}

impl AttachResult {
    pub const fn name(self) -> &'static str {
        match self {
            AttachResult::Attached => "attached",
            AttachResult::AlreadyAttached => "already-attached",
            AttachResult::Switched => "switched",
            AttachResult::ReplacedStale => "replaced-stale",
        }
    }
}

#[derive(Debug, Serialize)]
pub struct AttachReport {
    pub iface: String,
    pub ifindex: u32,
    pub role: Role,
    pub datapath: Datapath,
    /// `native`, `skb` or `tcx`.
    pub mode: &'static str,
    pub result: AttachResult,
    pub pin_path: PathBuf,
}

/// One undo step of phase 1.
enum Undo {
    Peer(Attachment),
    TxPort(u32),
    Uplink(u32),
    Record(u32),
    Link(PathBuf),
}

/// Attaches `ifaces` (pod host veths) and `uplinks` (names in the current network namespace)
/// with `datapath`; the CLI's `attach`. All-or-nothing.
pub fn attach(
    pins: &PinDir,
    ifaces: &[String],
    uplinks: &[String],
    datapath: Datapath,
    mode: Mode,
) -> Result<Vec<AttachReport>> {
    if ifaces.is_empty() && uplinks.is_empty() {
        return Err(Error::NoInterface);
    }
    let mut rtnl = Rtnl::new().context("opening rtnetlink")?;
    // Resolve everything before changing anything.
    let all: Vec<String> = ifaces.iter().chain(uplinks).cloned().collect();
    let links = resolve(&mut rtnl, &all)?;
    let targets: Vec<(Link, Role)> = links
        .into_iter()
        .enumerate()
        .map(|(i, l)| {
            (
                l,
                if i < ifaces.len() {
                    Role::Pod
                } else {
                    Role::Uplink
                },
            )
        })
        .collect();
    let _lock = pins.create_and_lock()?;
    let mut attacher = Attacher::new(pins, datapath, mode)?;
    attacher.attach_roles(&mut rtnl, &targets, &AtomicBool::new(false))
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
    /// The uplink program is loaded (verified) on first use only.
    uplink_loaded: bool,
}

impl Attacher {
    pub fn new(pins: &PinDir, datapath: Datapath, mode: Mode) -> Result<Self> {
        let mut ebpf = load(Some(pins))?;
        let maps = Maps::from_ebpf(&mut ebpf)?;
        Prog::get(&mut ebpf, datapath, Role::Pod)?.load()?;
        Ok(Self {
            ebpf,
            maps,
            pins: pins.clone(),
            datapath,
            mode,
            uplink_loaded: false,
        })
    }

    /// Attaches `links` in two phases (see the module docs). All-or-nothing.
    pub fn attach(&mut self, rtnl: &mut Rtnl, links: &[Link]) -> Result<Vec<AttachReport>> {
        self.attach_until(rtnl, links, &AtomicBool::new(false))
    }

    /// `attach`, stopping before the next interface once `stop` is set (the controller on
    /// SIGTERM, during a large batch): what is attached by then is kept, complete and
    /// reported (a new controller adopts it); the rest is left untouched. All-or-nothing
    /// otherwise.
    pub fn attach_until(
        &mut self,
        rtnl: &mut Rtnl,
        links: &[Link],
        stop: &AtomicBool,
    ) -> Result<Vec<AttachReport>> {
        let targets: Vec<(Link, Role)> = links.iter().map(|l| (l.clone(), Role::Pod)).collect();
        self.attach_roles(rtnl, &targets, stop)
    }

    /// `attach_until` for interfaces of either role.
    pub fn attach_roles(
        &mut self,
        rtnl: &mut Rtnl,
        links: &[(Link, Role)],
        stop: &AtomicBool,
    ) -> Result<Vec<AttachReport>> {
        if !self.uplink_loaded && links.iter().any(|(_, r)| *r == Role::Uplink) {
            Prog::get(&mut self.ebpf, self.datapath, Role::Uplink)?.load()?;
            self.uplink_loaded = true;
        }
        let Self {
            ebpf,
            maps,
            pins,
            datapath,
            mode,
            ..
        } = self;
        let (datapath, mode) = (*datapath, *mode);
        let mut index = NsIndex::default();
        let mut reports = Vec::new();
        let mut undo: Vec<Undo> = Vec::new();
        let mut switches: Vec<Switch> = Vec::new();
        let phase1 = (|| -> Result<()> {
            for (link, role) in links {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let mut prog = Prog::get(ebpf, datapath, *role)?;
                let new = new_attachment(link, *role, datapath, mode);
                let mut ctx = Step {
                    pins,
                    rtnl: &mut *rtnl,
                    maps: &mut *maps,
                    prog: &mut prog,
                    index: &mut index,
                    undo: &mut undo,
                };
                let mut result = AttachResult::Attached;
                match ctx.maps.attachment(link.index) {
                    Some(old) if live_old(pins, link, &old) => {
                        if already_attached(link, &old, &new)? {
                            reports.push(report(pins, link, &new, AttachResult::AlreadyAttached));
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
                        result = AttachResult::Switched;
                    }
                    Some(_) => {
                        // A stale record (interface gone, ifindex reused): forget it, never
                        // inherit its endpoints.
                        forget(pins, ctx.maps, link.index)?;
                        ctx.add(link, new, None)
                            .with_context(|| format!("attaching to {}", link.name))?;
                        result = AttachResult::ReplacedStale;
                    }
                    None => {
                        if let (Datapath::Xdp, Some(id)) = (datapath, link.xdp_prog_id) {
                            return Err(Error::ForeignXdp {
                                iface: link.name.clone(),
                                id,
                            });
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
            return Err(Error::Context {
                context: "nothing was changed (all-or-nothing)".into(),
                source: Box::new(e),
            });
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
            .ok_or_else(|| Error::UnknownInterface(name.clone()))?;
        if links.iter().any(|l| l.index == link.index) {
            return Err(Error::GivenTwice(name.clone()));
        }
        links.push(link);
    }
    Ok(links)
}

fn new_attachment(link: &Link, role: Role, datapath: Datapath, mode: Mode) -> Attachment {
    Attachment {
        ifindex: link.index,
        datapath: datapath.to_att(),
        mode: match datapath {
            Datapath::Xdp => mode.to_att(),
            Datapath::Tc => ATT_MODE_TCX,
        },
        prep_flags: 0,
        role: role.to_att(),
        name: name_bytes(&link.name),
    }
}

/// For a live attachment `old`: true if it already is `new`, false if it is to be switched to
/// the other datapath; an error if the role or the XDP mode differ.
fn already_attached(link: &Link, old: &Attachment, new: &Attachment) -> Result<bool> {
    if old.role != new.role {
        return Err(Error::OtherRole {
            iface: link.name.clone(),
            attached: Role::of(old).name(),
            asked: Role::of(new).name(),
        });
    }
    if old.datapath != new.datapath {
        return Ok(false);
    }
    if old.mode != new.mode {
        return Err(Error::OtherMode {
            iface: link.name.clone(),
            mode: mode_name(old),
        });
    }
    Ok(true)
}

fn live_old(pins: &PinDir, link: &Link, old: &Attachment) -> bool {
    Datapath::from_att(old.datapath).is_some_and(|d| live_program(pins, link, d).is_some())
}

fn report(pins: &PinDir, link: &Link, att: &Attachment, result: AttachResult) -> AttachReport {
    let datapath = Datapath::from_att(att.datapath).unwrap_or(Datapath::Xdp);
    AttachReport {
        iface: link.name.clone(),
        ifindex: link.index,
        role: Role::of(att),
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
        // An uplink: no pod side to prepare. Its MAC goes into `UPLINKS` (the programs accept
        // frames addressed to it, and redirect out of it only when the FIB names it); with XDP
        // it also becomes a devmap target of the pod programs (a NIC's driver transmits
        // redirected frames; a veth's peer needs NAPI, as for pods).
        let uplink_mac = match Role::of(&att) {
            Role::Uplink => Some(
                link.mac
                    .filter(|m| *m != [0; 6])
                    .ok_or_else(|| Error::UplinkNotEthernet(link.name.clone()))?,
            ),
            Role::Pod => {
                // Both hooks forward into the peer of a veth: bpf_redirect_peer only works
                // towards a veth (or netkit), and the XDP path prepares the peer.
                if !link.is_veth() {
                    return Err(Error::NotVeth {
                        iface: link.name.clone(),
                        kind: link.kind.clone().unwrap_or_else(|| "none".into()),
                    });
                }
                None
            }
        };
        if datapath == Datapath::Xdp && uplink_mac.is_none() {
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
        if let Some(mac) = uplink_mac {
            self.maps
                .uplinks
                .insert(link.index, Uplink { mac, pad: [0; 2] }, 0)
                .context("adding the uplink to UPLINKS (map full?)")?;
            self.undo.push(Undo::Uplink(link.index));
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

/// Undoes phase 1 in reverse; removes the pins if that leaves nothing attached.
fn undo_all(pins: &PinDir, rtnl: &mut Rtnl, maps: &mut Maps, undo: Vec<Undo>) -> Result<()> {
    for step in undo.into_iter().rev() {
        if let Err(u) = run_undo(rtnl, maps, step) {
            warn!("while undoing a failed attach: {}", u.chain());
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
        Undo::Uplink(i) => maps.uplinks.remove(&i).context("UPLINKS"),
        Undo::Record(i) => maps.attachments.remove(&i).context("ATTACHMENTS"),
        Undo::Link(path) => unpin(&path),
    }
}
