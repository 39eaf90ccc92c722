//! The datapath on the host veths: load the object and pin its maps (`load`), attach, pin and
//! unpin links (`link`), attach interfaces all-or-nothing (`attach`), switch an interface
//! between the hooks (`switch`), and detach or forget it (`detach`). The pod side of a veth is
//! `crate::pod`.
//!
//! Every command that changes state takes the pin directory's lock first. Attach follows
//! libxdp's order, in two phases:
//! 1. for every interface, add the new attachment: prepare the pod side (XDP), record it,
//!    open the interface as a redirect target, attach and pin the link. Any failure undoes all
//!    of phase 1, for every interface: all-or-nothing.
//! 2. only then remove what the new attachments replace (switching an interface between XDP
//!    and TC). The new program is running before the old one goes, so no traffic is
//!    blackholed; see `switch::commit_switch`.
mod attach;
mod detach;
mod error;
mod link;
mod load;
mod switch;

use std::path::PathBuf;

use aya::programs::XdpMode;
use common::{
    Attachment, ATT_DATAPATH_TC, ATT_DATAPATH_XDP, ATT_MODE_NATIVE, ATT_MODE_SKB, ATT_MODE_TCX,
    ATT_ROLE_POD, ATT_ROLE_UPLINK,
};
use serde::Serialize;

pub use self::{
    attach::{attach, AttachReport, AttachResult, Attacher},
    detach::{detach, detach_records, forget, DetachReport},
    error::{Error, IntoError, Result, ResultExt},
    link::live_program,
    load::load,
};
use crate::pin::PinDir;

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

    pub(crate) const fn to_att(self) -> u8 {
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

/// What an attached interface is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A pod's host-side veth: the pod program (pod to local pod, pod to remote pod).
    Pod,
    /// An uplink towards other nodes: the uplink program (remote pod to local pod).
    Uplink,
}

impl Role {
    pub const fn name(self) -> &'static str {
        match self {
            Role::Pod => "pod",
            Role::Uplink => "uplink",
        }
    }

    pub(crate) const fn to_att(self) -> u8 {
        match self {
            Role::Pod => ATT_ROLE_POD,
            Role::Uplink => ATT_ROLE_UPLINK,
        }
    }

    pub const fn of(att: &Attachment) -> Self {
        if att.role == ATT_ROLE_UPLINK {
            Role::Uplink
        } else {
            Role::Pod
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
    pub(crate) const fn to_att(self) -> u8 {
        match self {
            Mode::Native => ATT_MODE_NATIVE,
            Mode::Skb => ATT_MODE_SKB,
        }
    }

    pub(crate) const fn xdp_mode(self) -> XdpMode {
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

pub(crate) fn name_bytes(name: &str) -> [u8; 16] {
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

pub(crate) fn dp_name(att: &Attachment) -> &'static str {
    Datapath::from_att(att.datapath).map_or("unknown", Datapath::name)
}
