//! The pod side of a host veth: finding the peer's namespace and the two offload settings XDP
//! on veth needs there (DESIGN.md section 3), set on attach and given back on detach.
use std::{collections::HashMap, io};

use common::{Attachment, ATT_F_ORIG_GRO_ON, ATT_F_ORIG_TX_CSUM_ON, ATT_F_PREPARED};
use tracing::{debug, warn};

use crate::{
    datapath::{Error, Result, ResultExt as _},
    ethtool::{self, Offloads},
    netns::{self, Namespace},
    nl::{Link, Rtnl},
};

/// Where a host veth's peer lives.
struct Peer {
    /// `None`: the peer is in our own namespace.
    ns: Option<Namespace>,
    index: u32,
}

impl Peer {
    fn locate(rtnl: &mut Rtnl, link: &Link, index: Option<&mut NsIndex>) -> Result<Peer> {
        if !link.is_veth() {
            return Err(Error::NotVeth {
                iface: link.name.clone(),
                kind: link.kind.clone().unwrap_or_else(|| "none".into()),
            });
        }
        let peer_index = link
            .peer_index
            .filter(|i| *i != 0)
            .ok_or_else(|| Error::NoPeer(link.name.clone()))?;
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
        .ok_or_else(|| Error::PeerNamespaceNotFound {
            iface: link.name.clone(),
            nsid,
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
pub(crate) struct NsIndex {
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

pub(crate) fn prepare_peer(rtnl: &mut Rtnl, link: &Link, index: &mut NsIndex) -> Result<u8> {
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
pub(crate) fn restore_peer(rtnl: &mut Rtnl, att: &Attachment) -> Result<()> {
    if att.prep_flags & ATT_F_PREPARED == 0 {
        return Ok(());
    }
    let Some(link) = rtnl
        .link_by_index(att.ifindex)
        .with_context(|| format!("looking up ifindex {}", att.ifindex))?
    else {
        return Ok(());
    };
    let peer = match Peer::locate(rtnl, &link, None) {
        Ok(p) => p,
        Err(e) => {
            warn!(
                "{}: not restoring pod-side offloads: {}",
                link.name,
                e.chain()
            );
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
