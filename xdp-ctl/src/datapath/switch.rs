//! Switching an interface between the hooks (phase 2 of an attach).
use common::Attachment;
use tracing::warn;

use super::{
    error::{Result, ResultExt as _},
    link::unpin,
    link_pin, Datapath,
};
use crate::{
    maps::Maps,
    nl::{Link, Rtnl},
    pin::PinDir,
    pod::restore_peer,
};

/// What phase 2 still has to do for an interface that changed datapath.
pub(super) struct Switch {
    pub(super) link: Link,
    pub(super) old: Attachment,
    pub(super) new: Attachment,
}

/// Phase 2 of a datapath switch: the new program already runs (XDP runs before TCX on the
/// same interface, so during phase 1 of tc -> xdp the XDP program takes over at once, and
/// during xdp -> tc the TCX program waits behind XDP). Now drop the old attachment:
/// - xdp -> tc: detach XDP (TC takes over), stop other XDP programs redirecting here (they
///   pass such frames to the kernel, counted `tx_port_missing`), then give the pod its
///   settings back. The order matters: a native redirect into an unprepared pod is dropped.
/// - tc -> xdp: record the new attachment, detach TC.
pub(super) fn commit_switch(
    pins: &PinDir,
    rtnl: &mut Rtnl,
    maps: &mut Maps,
    s: &Switch,
) -> Result<()> {
    let old_dp = Datapath::from_att(s.old.datapath).unwrap_or(Datapath::Xdp);
    let mut new = s.new;
    if old_dp == Datapath::Xdp {
        unpin(&link_pin(pins, Datapath::Xdp, s.link.index))?;
        let _ = maps.tx_ports.remove(s.link.index);
        if let Err(e) = restore_peer(rtnl, &s.old) {
            // Keep what detach needs to retry.
            warn!("{}: {}", s.link.name, e.chain());
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
