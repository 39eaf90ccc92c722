//! Loading the eBPF object (its maps reused from, or pinned to, the pin directory) and
//! verifying the program of one datapath.
use aya::programs::{SchedClassifier, Xdp};

use super::{
    error::{Error, Result, ResultExt as _},
    Datapath, Role,
};
use crate::{
    maps::ALL_MAPS, pin::PinDir, EBPF_OBJECT, TC_PROGRAM, TC_UPLINK_PROGRAM, XDP_PROGRAM,
    XDP_UPLINK_PROGRAM,
};

/// Loads the eBPF object; with `pins`, its maps are reused from (or pinned to) the pin
/// directory.
pub fn load(pins: Option<&PinDir>) -> Result<aya::Ebpf> {
    let mut loader = aya::EbpfLoader::new();
    if let Some(pins) = pins {
        for name in ALL_MAPS {
            loader.map_pin_path(name, pins.map_path(name));
        }
    }
    loader.load(EBPF_OBJECT).map_err(Error::Load)
}

/// The loaded program of the requested datapath and role.
pub(super) enum Prog<'a> {
    Xdp(&'a mut Xdp),
    Tc(&'a mut SchedClassifier),
}

impl<'a> Prog<'a> {
    pub(super) fn get(ebpf: &'a mut aya::Ebpf, datapath: Datapath, role: Role) -> Result<Self> {
        let name = match (datapath, role) {
            (Datapath::Xdp, Role::Pod) => XDP_PROGRAM,
            (Datapath::Tc, Role::Pod) => TC_PROGRAM,
            (Datapath::Xdp, Role::Uplink) => XDP_UPLINK_PROGRAM,
            (Datapath::Tc, Role::Uplink) => TC_UPLINK_PROGRAM,
        };
        let program = ebpf.program_mut(name).ok_or(Error::MissingProgram(name))?;
        Ok(match datapath {
            Datapath::Xdp => Prog::Xdp(program.try_into().context("program type")?),
            Datapath::Tc => Prog::Tc(program.try_into().context("program type")?),
        })
    }

    pub(super) fn load(self) -> Result<()> {
        match self {
            Prog::Xdp(p) => p.load().context("loading the XDP program (verifier)"),
            Prog::Tc(p) => p.load().context("loading the TC program (verifier)"),
        }
    }
}
