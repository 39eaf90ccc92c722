//! Detaching interfaces (giving pods their settings back), and forgetting the attachments of
//! interfaces that are gone.
use common::{Attachment, ATT_F_PREPARED};
use serde::Serialize;
use tracing::{debug, warn};

use super::{
    att_name, dp_name,
    error::{Error, Result, ResultExt as _},
    link::unpin,
    live_program, Datapath, Role,
};
use crate::{
    maps::{Maps, Prefix},
    nl::Rtnl,
    pin::PinDir,
    pod::restore_peer,
};

/// Drops every trace of an attachment whose interface is gone or was replaced: its endpoints,
/// redirect-target entry, links and record. (The pod, if any, is gone with the interface.)
pub fn forget(pins: &PinDir, maps: &mut Maps, ifindex: u32) -> Result<()> {
    warn!(
        ifindex,
        "forgetting a stale attachment (interface gone or index reused)"
    );
    remove_endpoints_on(maps, ifindex)?;
    let _ = maps.tx_ports.remove(ifindex);
    let _ = maps.uplinks.remove(&ifindex);
    unpin(&pins.xdp_link_path(ifindex))?;
    unpin(&pins.tcx_link_path(ifindex))?;
    let _ = maps.attachments.remove(&ifindex);
    Ok(())
}

pub(super) fn remove_endpoints_on(maps: &mut Maps, ifindex: u32) -> Result<usize> {
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

#[derive(Debug, Serialize)]
pub struct DetachReport {
    pub iface: String,
    pub ifindex: u32,
    pub role: Role,
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
            return Err(Error::NothingAttached {
                ifaces: names.join(", "),
                pin_dir: pins.root().to_path_buf(),
            });
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
                let index = rtnl
                    .link_by_name(name)
                    .with_context(|| format!("looking up interface {name}"))?
                    .map(|l| l.index);
                let att = atts
                    .iter()
                    .find(|a| Some(a.ifindex) == index || (index.is_none() && att_name(a) == *name))
                    .ok_or_else(|| Error::NotAttached(name.clone()))?;
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
            rtnl.link_by_index(att.ifindex)
                .with_context(|| format!("looking up ifindex {}", att.ifindex))?,
            Datapath::from_att(att.datapath),
        ) {
            (Some(link), Some(dp)) => live_program(pins, &link, dp).is_some(),
            _ => false,
        };
        let endpoints_removed = remove_endpoints_on(maps, att.ifindex)?;
        let _ = maps.tx_ports.remove(att.ifindex);
        // An uplink: stop redirecting out of it first, then detach its program.
        let _ = maps.uplinks.remove(&att.ifindex);
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
            role: Role::of(att),
            datapath: dp_name(att),
            endpoints_removed,
            pod_settings_restored: restore,
        });
    }
    Ok(reports)
}
