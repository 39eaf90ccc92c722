//! A small synchronous rtnetlink client: links, host routes, neighbours and namespace ids. The
//! one request/response client of xdp-ctl: the one-shot CLI commands use it, and so does the
//! controller, for its dumps and lookups, on a blocking worker (see `crate::controller`). Only
//! the controller's multicast event stream uses the async `rtnetlink` crate.
//!
//! The socket belongs to the network namespace of the thread that creates it.
use std::{
    io,
    net::IpAddr,
    os::fd::{AsRawFd, BorrowedFd},
};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_route::{
    link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage, LinkXdp},
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState},
    nsid::{NsidAttribute, NsidMessage},
    route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteType},
    AddressFamily, RouteNetlinkMessage,
};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// What we need to know about a link.
#[derive(Clone, Debug, Default)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Option<[u8; 6]>,
    /// `IFLA_INFO_KIND`, e.g. "veth".
    pub kind: Option<String>,
    /// `IFLA_LINK`: for a veth, the peer's ifindex (in the peer's namespace).
    pub peer_index: Option<u32>,
    /// `IFLA_LINK_NETNSID`: the peer's namespace, as an id relative to ours.
    pub link_netnsid: Option<i32>,
    pub mtu: Option<u32>,
    /// `IFF_LOWER_UP`: for a veth, both ends are up.
    pub carrier: bool,
    /// Attached XDP program id, if any (`IFLA_XDP_PROG_ID`).
    pub xdp_prog_id: Option<u32>,
}

impl Link {
    pub fn is_veth(&self) -> bool {
        self.kind.as_deref() == Some("veth")
    }
}

/// A host route (/32 or /128) in the main table out of one interface, as CNIs install for
/// each pod: `10.244.0.5/32 dev caliXXX scope link`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostRoute {
    pub addr: IpAddr,
    pub oif: u32,
}

/// A usable neighbour entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Neigh {
    pub ifindex: u32,
    pub addr: IpAddr,
    /// `None` when the entry is not usable (incomplete, failed, no address).
    pub mac: Option<[u8; 6]>,
}

pub struct Rtnl {
    sock: Socket,
    seq: u32,
}

impl Rtnl {
    pub fn new() -> io::Result<Self> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        // Ask for extended acks; harmless where unsupported.
        let _ = sock.set_ext_ack(true);
        Ok(Self { sock, seq: 0 })
    }

    /// Sends one request and collects every reply message until `NLMSG_DONE` (dumps) or the
    /// ack/single reply.
    fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.seq;
        let mut nl = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        nl.finalize();
        let mut buf = vec![0u8; nl.buffer_len()];
        nl.serialize(&mut buf);
        self.sock.send(&buf, 0)?;

        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut out = Vec::new();
        loop {
            let (data, _) = self.sock.recv_from_full()?;
            let mut off = 0;
            while off < data.len() {
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[off..])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let len = reply.header.length as usize;
                if len == 0 {
                    break;
                }
                off += len;
                if reply.header.sequence_number != self.seq {
                    continue;
                }
                match reply.payload {
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(out),
                            Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
                        }
                    }
                    NetlinkPayload::InnerMessage(m) => {
                        out.push(m);
                        if !dump && flags & NLM_F_ACK == 0 {
                            return Ok(out);
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// A dump: every reply `pick` understands.
    fn dump<T>(
        &mut self,
        req: RouteNetlinkMessage,
        pick: impl Fn(&RouteNetlinkMessage) -> Option<T>,
    ) -> io::Result<Vec<T>> {
        Ok(self
            .request(req, NLM_F_DUMP)?
            .iter()
            .filter_map(pick)
            .collect())
    }

    /// One link; `None` when the kernel says there is none (`ENODEV`, or `EINVAL` for a
    /// namespace id that no longer exists).
    fn get_link(&mut self, req: LinkMessage) -> io::Result<Option<Link>> {
        match self.request(RouteNetlinkMessage::GetLink(req), 0) {
            Ok(msgs) => Ok(msgs.iter().find_map(new_link)),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENODEV | libc::EINVAL)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn links(&mut self) -> io::Result<Vec<Link>> {
        self.dump(
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            new_link,
        )
    }

    pub fn link_by_index(&mut self, index: u32) -> io::Result<Option<Link>> {
        let mut req = LinkMessage::default();
        req.header.index = index;
        self.get_link(req)
    }

    pub fn link_by_name(&mut self, name: &str) -> io::Result<Option<Link>> {
        let mut req = LinkMessage::default();
        req.attributes.push(LinkAttribute::IfName(name.to_string()));
        self.get_link(req)
    }

    /// The link `index` of the namespace our namespace calls `nsid` (`IFLA_TARGET_NETNSID`):
    /// a veth peer, read without entering the pod's namespace.
    pub fn link_in_netns(&mut self, index: u32, nsid: i32) -> io::Result<Option<Link>> {
        let mut req = LinkMessage::default();
        req.header.index = index;
        req.attributes.push(LinkAttribute::IfNetnsId(nsid));
        self.get_link(req)
    }

    /// Every host route of one family in the main table.
    pub fn host_routes(&mut self, family: AddressFamily) -> io::Result<Vec<HostRoute>> {
        let mut req = RouteMessage::default();
        req.header.address_family = family;
        self.dump(RouteNetlinkMessage::GetRoute(req), |m| match m {
            RouteNetlinkMessage::NewRoute(r) => parse_host_route(r),
            _ => None,
        })
    }

    /// Every neighbour entry (both families).
    pub fn neighbours(&mut self) -> io::Result<Vec<Neigh>> {
        self.dump(
            RouteNetlinkMessage::GetNeighbour(NeighbourMessage::default()),
            |m| match m {
                RouteNetlinkMessage::NewNeighbour(n) => parse_neigh(n),
                _ => None,
            },
        )
    }

    /// The link-layer address of neighbour `ip` on `ifindex`, if the entry is usable.
    pub fn neighbour_mac(&mut self, ifindex: u32, ip: IpAddr) -> io::Result<Option<[u8; 6]>> {
        Ok(self
            .neighbours()?
            .into_iter()
            .find(|n| n.ifindex == ifindex && n.addr == ip)
            .and_then(|n| n.mac))
    }

    /// The id our namespace uses for the namespace of `ns_fd` (`RTM_GETNSID`), if one is
    /// assigned.
    pub fn nsid_of(&mut self, ns_fd: BorrowedFd<'_>) -> io::Result<Option<i32>> {
        let mut req = NsidMessage::default();
        req.attributes.push(NsidAttribute::Fd(
            u32::try_from(ns_fd.as_raw_fd())
                .map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?,
        ));
        let msgs = self.request(RouteNetlinkMessage::GetNsId(req), 0)?;
        Ok(msgs.iter().find_map(|m| match m {
            RouteNetlinkMessage::NewNsId(n) => n.attributes.iter().find_map(|a| match a {
                NsidAttribute::Id(id) if *id >= 0 => Some(*id),
                _ => None,
            }),
            _ => None,
        }))
    }
}

/// A host route of the main table with an output interface and no gateway, else `None`.
pub fn parse_host_route(r: &RouteMessage) -> Option<HostRoute> {
    let full = match r.header.address_family {
        AddressFamily::Inet => 32,
        AddressFamily::Inet6 => 128,
        _ => return None,
    };
    if r.header.destination_prefix_length != full || r.header.kind != RouteType::Unicast {
        return None;
    }
    let mut table = u32::from(r.header.table);
    let (mut addr, mut oif, mut gateway) = (None, None, false);
    for a in &r.attributes {
        match a {
            RouteAttribute::Destination(RouteAddress::Inet(v4)) => addr = Some(IpAddr::V4(*v4)),
            RouteAttribute::Destination(RouteAddress::Inet6(v6)) => addr = Some(IpAddr::V6(*v6)),
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Gateway(_) | RouteAttribute::Via(_) | RouteAttribute::MultiPath(_) => {
                gateway = true;
            }
            RouteAttribute::Table(t) => table = *t,
            _ => {}
        }
    }
    if table != u32::from(RouteHeader::RT_TABLE_MAIN) || gateway {
        return None;
    }
    Some(HostRoute {
        addr: addr?,
        oif: oif?,
    })
}

/// A neighbour entry of an IP address; `mac` is `None` when it is not usable.
pub fn parse_neigh(n: &NeighbourMessage) -> Option<Neigh> {
    let mut addr = None;
    let mut mac = None;
    for a in &n.attributes {
        match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => {
                addr = Some(IpAddr::V4(*v4));
            }
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => {
                addr = Some(IpAddr::V6(*v6));
            }
            NeighbourAttribute::LinkLayerAddress(l) => mac = <[u8; 6]>::try_from(l.as_slice()).ok(),
            _ => {}
        }
    }
    let usable = !matches!(
        n.header.state,
        NeighbourState::Incomplete | NeighbourState::Failed | NeighbourState::None
    );
    Some(Neigh {
        ifindex: n.header.ifindex,
        addr: addr?,
        mac: mac.filter(|_| usable),
    })
}

fn new_link(m: &RouteNetlinkMessage) -> Option<Link> {
    match m {
        RouteNetlinkMessage::NewLink(l) => Some(parse_link(l)),
        _ => None,
    }
}

pub fn parse_link(l: &LinkMessage) -> Link {
    let mut link = Link {
        index: l.header.index,
        carrier: l.header.flags.contains(LinkFlags::LowerUp),
        ..Link::default()
    };
    for a in &l.attributes {
        match a {
            LinkAttribute::IfName(n) => link.name.clone_from(n),
            LinkAttribute::Address(m) => link.mac = m.as_slice().try_into().ok(),
            LinkAttribute::Link(p) => link.peer_index = Some(*p),
            LinkAttribute::LinkNetNsId(id) => link.link_netnsid = Some(*id),
            LinkAttribute::Mtu(m) => link.mtu = Some(*m),
            LinkAttribute::Xdp(xdp) => {
                link.xdp_prog_id = xdp.iter().find_map(|x| match x {
                    LinkXdp::ProgId(id) if *id != 0 => Some(*id),
                    _ => None,
                });
            }
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let LinkInfo::Kind(k) = i {
                        link.kind = Some(match k {
                            InfoKind::Veth => "veth".to_string(),
                            other => other.to_string().to_lowercase(),
                        });
                    }
                }
            }
            _ => {}
        }
    }
    link
}

/// Formats a MAC as `aa:bb:cc:dd:ee:ff`.
pub fn fmt_mac(m: &[u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

/// Parses `aa:bb:cc:dd:ee:ff` (or with `-`).
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<&str> = s.split([':', '-']).collect();
    if parts.len() != 6 {
        return None;
    }
    let mut mac = [0u8; 6];
    for (b, p) in mac.iter_mut().zip(parts) {
        if p.is_empty() || p.len() > 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    Some(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trip_and_rejects() {
        let m = parse_mac("02:00:0A:ff:00:01").unwrap();
        assert_eq!(m, [2, 0, 0x0a, 0xff, 0, 1]);
        assert_eq!(fmt_mac(&m), "02:00:0a:ff:00:01");
        for bad in [
            "",
            "02:00:0a:ff:00",
            "02:00:0a:ff:00:01:02",
            "zz:00:0a:ff:00:01",
            "002:0:0:0:0:1",
        ] {
            assert!(parse_mac(bad).is_none(), "{bad}");
        }
    }
}
