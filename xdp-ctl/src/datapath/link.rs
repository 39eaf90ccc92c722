//! The links that hold a program on an interface: attached through a bpf_link pinned on bpffs
//! (so they outlive the process), found again, and unpinned (which detaches).
use std::path::PathBuf;

use aya::programs::{
    links::{FdLink, LinkOrder, PinnedLink},
    tc::TcAttachOptions,
    ProgramError, SchedClassifier, TcAttachType,
};
use tracing::debug;

use super::{
    error::{Error, Result, ResultExt as _},
    link_pin,
    load::Prog,
    Datapath, Mode,
};
use crate::{nl::Link, pin::PinDir};

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

impl Prog<'_> {
    /// Attaches to `link` through a bpf_link pinned at `path`, so it outlives this process.
    pub(super) fn attach(&mut self, link: &Link, mode: Mode, path: &PathBuf) -> Result<()> {
        let fd_link = match self {
            Prog::Xdp(p) => {
                let id = p
                    .attach_to_if_index(link.index, mode.xdp_mode())
                    .map_err(|e| explain_attach_error(e, link, Datapath::Xdp, mode))?;
                FdLink::try_from(p.take_link(id).context("taking the XDP link")?)
                    .map_err(|_| Error::NoXdpLink)?
            }
            Prog::Tc(p) => {
                // Each TCX link costs the kernel an RCU grace period under RTNL (~13 ms on the
                // bench VM), so N links take N grace periods; attaching from several threads
                // does not overlap them (bench/README.md, "Controller start -> ready").
                let id = p
                    .attach_with_options(
                        &link.name,
                        TcAttachType::Ingress,
                        TcAttachOptions::TcxOrder(LinkOrder::default()),
                    )
                    .map_err(|e| explain_attach_error(e, link, Datapath::Tc, mode))?;
                FdLink::try_from(p.take_link(id).context("taking the TCX link")?)
                    .map_err(|_| Error::NoTcxLink)?
            }
        };
        fd_link.pin(path).map_err(|source| Error::LinkPin {
            what: "pinning the link at",
            path: path.clone(),
            source,
        })?;
        Ok(())
    }
}

pub(super) fn unpin(path: &PathBuf) -> Result<()> {
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

fn explain_attach_error(e: ProgramError, link: &Link, datapath: Datapath, mode: Mode) -> Error {
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
            return Error::Attach {
                datapath: datapath.name(),
                hint: None,
                source: e,
            }
        }
    };
    Error::Attach {
        datapath: datapath.name(),
        hint: Some(hint),
        source: e,
    }
}
