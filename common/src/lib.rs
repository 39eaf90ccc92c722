//! The ABI shared by the xdp-fastpath eBPF programs and `xdp-ctl`.
//!
//! Every type here is `#[repr(C)]`, `Copy`, and has no implicit padding: padding is written out
//! as named fields so that the kernel and userspace agree byte for byte. Addresses and MACs are
//! kept in network byte order, i.e. in the order they appear in (and are written into) a packet,
//! so the datapath copies them without swapping. Integers that the datapath only compares
//! (ifindexes, flags) are in host byte order.
#![no_std]

/// Layout version of the pinned objects. Bump it when a map's key or value layout changes, so an
/// upgraded `xdp-ctl` never reinterprets maps pinned by an older one.
///
/// 2: `COUNTERS` grew (flow and MTU reasons), `FLOWS` and `KERNEL_SOCKETS` added.
/// 3: across nodes: `COUNTERS` grew, `UPLINKS`, `REMOTE_V4`, `REMOTE_V6` added, `Attachment`
///    carries a role.
pub const LAYOUT_VERSION: u32 = 3;

pub mod monitor;

/// Names of the pinned maps (also the map symbols in the eBPF object).
pub mod map_names {
    pub const ENDPOINTS_V4: &str = "ENDPOINTS_V4";
    pub const ENDPOINTS_V6: &str = "ENDPOINTS_V6";
    pub const TX_PORTS: &str = "TX_PORTS";
    pub const COUNTERS: &str = "COUNTERS";
    pub const ATTACHMENTS: &str = "ATTACHMENTS";
    pub const CONTROLLER: &str = "CONTROLLER";
    pub const FLOWS: &str = "FLOWS";
    pub const KERNEL_SOCKETS: &str = "KERNEL_SOCKETS";
    pub const MONITOR_CONFIG: &str = "MONITOR_CONFIG";
    pub const MONITOR_EVENTS: &str = "MONITOR_EVENTS";
    pub const MONITOR_STATS: &str = "MONITOR_STATS";
    pub const UPLINKS: &str = "UPLINKS";
    pub const REMOTE_V4: &str = "REMOTE_V4";
    pub const REMOTE_V6: &str = "REMOTE_V6";
}

/// Capacity of each endpoint trie (pod addresses or prefixes per address family).
pub const MAX_ENDPOINTS: u32 = 65_536;
/// Capacity of the device map and of the attachment registry (pod veths on one node).
pub const MAX_PORTS: u32 = 4_096;

/// Capacity of the flow table (`FLOWS`): TCP connections and ICMP echo exchanges between local
/// meshed pods that the datapath saw start. An LRU: when full, the least recently used entry is
/// evicted and that flow's later packets go to the kernel (where conntrack picks them up).
/// 28 MiB of kernel memory, preallocated (112 bytes an entry, measured): see the README.
pub const MAX_FLOWS: u32 = 262_144;
/// Capacity of `KERNEL_SOCKETS` (local pod UDP sockets seen talking through the kernel path).
pub const MAX_KERNEL_SOCKETS: u32 = 65_536;

/// The endpoint is a meshed pod: traffic between two meshed local pods may bypass netfilter.
pub const EP_F_MESHED: u32 = 1 << 0;

/// Capacity of each remote-prefix trie (`REMOTE_V4`, `REMOTE_V6`).
pub const MAX_REMOTE_PREFIXES: u32 = 4_096;
/// Capacity of `UPLINKS` (a node's uplink interfaces).
pub const MAX_UPLINKS: u32 = 64;

/// Value of `REMOTE_V4` / `REMOTE_V6` (LPM tries keyed like the endpoint tries): pod addresses on
/// other nodes. Meshed pods there are reached through an uplink: a local meshed pod's packets to
/// them leave through the uplink the FIB names, and theirs arriving on an uplink go straight into
/// the local pod. A longer prefix without `REMOTE_F_MESHED` carves an exception out of a shorter
/// one.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Remote {
    /// `REMOTE_F_*` bits (host byte order).
    pub flags: u32,
    /// The uplink ifindex these addresses must be reached through and arrive on (host byte
    /// order); 0: any attached uplink.
    pub uplink: u32,
}

impl Remote {
    pub const fn is_meshed(&self) -> bool {
        self.flags & REMOTE_F_MESHED != 0
    }
}

/// The remote prefix holds meshed pods.
pub const REMOTE_F_MESHED: u32 = 1 << 0;

/// Value of `UPLINKS` (keyed by ifindex): an interface towards other nodes that carries the
/// uplink program. The datapath reads it to accept frames arriving on the uplink (they must be
/// addressed to its MAC) and to redirect out of it only when the FIB names an uplink.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Uplink {
    /// The uplink's MAC (network order, as in a frame).
    pub mac: [u8; 6],
    /// Explicit padding; always zero.
    pub pad: [u8; 2],
}

/// LPM trie key data for IPv4: the address in network byte order. (The trie key is
/// `{ prefix_len: u32 (host order), data }`, provided by aya on both sides.)
pub type Ipv4Key = [u8; 4];
/// LPM trie key data for IPv6: the address in network byte order.
pub type Ipv6Key = [u8; 16];

/// Value of `ENDPOINTS_V4` / `ENDPOINTS_V6`: where a local pod address lives.
///
/// The same entry serves two lookups: by destination (where to redirect to, which MACs to
/// write) and by source (anti-spoofing: the source must be an endpoint behind the ingress veth).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// Host-side veth of the pod (host byte order).
    pub ifindex: u32,
    /// `EP_F_*` bits (host byte order).
    pub flags: u32,
    /// The pod's MAC (its eth0), written as the destination MAC of redirected frames.
    pub pod_mac: [u8; 6],
    /// The host veth's MAC, written as the source MAC of redirected frames, and expected as the
    /// destination MAC of frames the pod sends.
    pub host_mac: [u8; 6],
}

impl Endpoint {
    pub const fn is_meshed(&self) -> bool {
        self.flags & EP_F_MESHED != 0
    }
}

/// Address family of a [`FlowKey`] or [`SocketKey`].
pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

/// An IP address as it is kept in the flow state: four 32-bit words that hold its bytes in
/// packet (network) order, word `i` being bytes `4i..4i+4` read in the machine's order (so a
/// word copies in one instruction, where a byte array is copied byte by byte by the eBPF
/// backend). An IPv4 address fills word 0; the rest is zero. [`pkt::addr_words`] converts.
pub type AddrWords = [u32; 4];

/// Key of `FLOWS`: one entry per flow, whichever direction a packet travels.
///
/// The two ends are ordered: `lo` is the smaller of the two `(address, port)` pairs (addresses
/// compared as big-endian numbers, then ports), so both directions of a flow build the same key
/// and share one entry (one lookup per packet, one insert per flow, evicted together).
/// Addresses as [`AddrWords`]; ports are the two bytes of the packet read in the machine's order
/// (network byte order in memory). For ICMP echo both ports hold the echo identifier.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub lo_addr: AddrWords,
    pub hi_addr: AddrWords,
    pub lo_port: u16,
    pub hi_port: u16,
    /// IP protocol: 6 (TCP), 1 (ICMP) or 58 (ICMPv6).
    pub proto: u8,
    /// `FAMILY_V4` or `FAMILY_V6`.
    pub family: u8,
    /// Explicit padding; always zero.
    pub pad: [u8; 2],
}

impl FlowKey {
    /// The key of the flow a packet `src:sport -> dst:dport` belongs to, and whether the sender
    /// (`src`) is the key's `lo` end. Both directions of a flow give the same key.
    #[inline(always)]
    pub fn new(
        family: u8,
        proto: u8,
        src: &AddrWords,
        sport: u16,
        dst: &AddrWords,
        dport: u16,
    ) -> (FlowKey, bool) {
        let src_is_lo = pkt::end_lt(src, sport, dst, dport);
        let (lo_addr, lo_port, hi_addr, hi_port) = if src_is_lo {
            (*src, sport, *dst, dport)
        } else {
            (*dst, dport, *src, sport)
        };
        (
            FlowKey {
                lo_addr,
                hi_addr,
                lo_port,
                hi_port,
                proto,
                family,
                pad: [0; 2],
            },
            src_is_lo,
        )
    }
}

/// Value of `FLOWS`: what the datapath remembers of a flow it saw start.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flow {
    /// TCP: the initiator's initial sequence number, from its SYN (host byte order); a SYN-ACK
    /// must acknowledge exactly this plus one. 0 for ICMP echo.
    pub syn_seq: u32,
    /// `FLOW_INITIATOR_LO` or `FLOW_INITIATOR_HI`: which end of the key sent the SYN / echo
    /// request.
    pub initiator: u8,
    /// Explicit padding; always zero.
    pub pad: [u8; 3],
}

pub const FLOW_INITIATOR_LO: u8 = 0;
pub const FLOW_INITIATOR_HI: u8 = 1;

/// Key of `KERNEL_SOCKETS`: a local pod's UDP socket (address, port) that sent a datagram to an
/// address that is no local pod (a Service VIP, a node's hostPort, a remote or external
/// address), which the kernel may have translated. Such a socket may be the client of a
/// translated exchange, so datagrams *to* it must meet the kernel's reverse NAT and are never
/// fast-pathed. Byte order as in [`FlowKey`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SocketKey {
    pub addr: AddrWords,
    pub port: u16,
    /// `FAMILY_V4` or `FAMILY_V6`.
    pub family: u8,
    /// Explicit padding; always zero.
    pub pad: u8,
}

/// How an interface is attached (value of the `ATTACHMENTS` registry, keyed by ifindex).
///
/// The datapath never reads this map: it is the record `xdp-ctl` keeps on bpffs, next to the
/// maps and links, of what it attached and what it changed on the pod side, so that `detach`
/// can undo exactly that, from any later process.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attachment {
    /// Host-side veth ifindex (host byte order).
    pub ifindex: u32,
    /// `ATT_DATAPATH_*`.
    pub datapath: u8,
    /// `ATT_MODE_*`.
    pub mode: u8,
    /// `ATT_F_*` bits describing the pod-side settings before we changed them.
    pub prep_flags: u8,
    /// `ATT_ROLE_*`: a pod's host veth or an uplink.
    pub role: u8,
    /// Interface name at attach time, NUL padded (informational; the ifindex is the key).
    pub name: [u8; 16],
}

pub const ATT_DATAPATH_XDP: u8 = 1;
pub const ATT_DATAPATH_TC: u8 = 2;
pub const ATT_MODE_NATIVE: u8 = 1;
pub const ATT_MODE_SKB: u8 = 2;
pub const ATT_MODE_TCX: u8 = 3;
/// The pod side was prepared (GRO / tx checksum changed by us); the next two bits say what the
/// original values were.
pub const ATT_F_PREPARED: u8 = 1 << 0;
pub const ATT_F_ORIG_GRO_ON: u8 = 1 << 1;
pub const ATT_F_ORIG_TX_CSUM_ON: u8 = 1 << 2;
/// A pod's host-side veth (the pod program: local and outgoing cross-node traffic).
pub const ATT_ROLE_POD: u8 = 0;
/// An uplink towards other nodes (the uplink program: incoming cross-node traffic).
pub const ATT_ROLE_UPLINK: u8 = 1;

/// What the controller (`xdp-ctl run`) reports about itself: the single entry of the
/// `CONTROLLER` array. The datapath never reads it; it lives on bpffs so that `xdp-ctl status`
/// can show it from any process, and it survives a controller restart.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ControllerState {
    /// PID of the running controller; 0 after a clean exit.
    pub pid: u32,
    /// 1 once the first full reconcile has been applied.
    pub ready: u32,
    pub endpoints_v4: u32,
    pub endpoints_v6: u32,
    pub interfaces: u32,
    /// Pod routes seen on matching interfaces whose pod MAC is not known yet.
    pub pending: u32,
    pub started_unix_ms: u64,
    /// Updated on every loop tick (liveness).
    pub heartbeat_unix_ms: u64,
    pub last_resync_unix_ms: u64,
    pub resyncs: u64,
    /// Map entries found different from what the controller had written, and repaired.
    pub drift_repaired: u64,
    pub reconciles: u64,
    /// Map writes (inserts, updates, deletes) since start.
    pub map_writes: u64,
}

/// Per-reason counter (value of the per-CPU `COUNTERS` array).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

/// Why the datapath did what it did with a packet. One counter per reason.
///
/// The discriminants are stable: they index the `COUNTERS` map and appear in dashboards.
/// Never renumber or reuse one; add new reasons at the end and bump `REASON_COUNT`.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Fast-pathed: MACs rewritten, TTL decremented, redirected to the target veth.
    Redirected = 0,
    /// Ethertype is neither IPv4 nor IPv6 (ARP, LLDP, ...).
    NotIp = 1,
    /// 802.1Q / 802.1ad tagged frame.
    Vlan = 2,
    /// Truncated or inconsistent header: short frame, bad version, IHL < 5, IPv4 total length
    /// shorter than the header or beyond the frame, IPv6 payload length beyond the frame, an
    /// ICMPv6 header cut short. (An IPv6 jumbogram always carries a hop-by-hop header and is
    /// counted as `Ipv6ExtHeader`.)
    Malformed = 3,
    /// IPv4 header with options.
    Ipv4Options = 4,
    /// IPv6 with an extension header (other than a fragment header).
    Ipv6ExtHeader = 5,
    /// IPv4 fragment or IPv6 fragment header: reassembly and conntrack belong to the kernel.
    Fragment = 6,
    /// Destination is not a unicast address (L2 broadcast/multicast, IP broadcast, multicast,
    /// link-local, loopback, unspecified).
    NotUnicast = 7,
    /// Frame not addressed to the host veth's MAC (the kernel would not route it either).
    NotToHost = 8,
    /// Destination is not a known local endpoint.
    NoEndpoint = 9,
    /// Source or destination endpoint is not meshed.
    NotMeshed = 10,
    /// Destination is behind the ingress interface itself (hairpin).
    SameInterface = 11,
    /// Source address is not the meshed pod behind the ingress veth (anti-spoofing).
    SrcMismatch = 12,
    /// TTL / hop limit would expire: the kernel sends the ICMP error.
    TtlExpired = 13,
    /// The target interface is not in `TX_PORTS` (not attached / not prepared).
    TxPortMissing = 14,
    /// ICMPv6 neighbour discovery / router messages (must keep hop limit 255).
    Ndp = 15,
    /// A TCP segment or ICMP echo reply of a flow the datapath did not see start: older than
    /// the attach, born on the kernel path, translated (the SYN-ACK of a DNAT'd connection
    /// does not answer a SYN we saw), or evicted from the flow table. Such a flow stays on the
    /// kernel path for its whole life.
    FlowNotSeen = 16,
    /// ICMP / ICMPv6 error (v4 types 3, 4, 5, 11, 12; v6 types 1-4): it may refer to a
    /// translated flow and needs the kernel's NAT and conntrack.
    IcmpError = 17,
    /// UDP to a local pod socket that talks through the kernel path (see `SocketKey`): it may
    /// be the reply of a translated exchange (DNS to a ClusterIP).
    UdpKernelSocket = 18,
    /// Neither TCP, UDP nor ICMP echo (SCTP, GRE, other ICMP types, ...).
    OtherProtocol = 19,
    /// A flow start (TCP SYN, ICMP echo request) that could not be recorded in the flow table:
    /// it goes to the kernel, and the flow lives there.
    FlowTableFull = 20,
    /// Longer than the target interface's MTU (per segment for GSO): the kernel fragments it or
    /// sends the ICMP error. (Redirected, it would be dropped by veth or handed to the pod
    /// oversize.)
    MtuExceeded = 21,
    /// Towards a meshed remote pod, but the FIB has no neighbour entry for the next hop yet:
    /// the kernel path resolves it.
    NoNeighbour = 22,
    /// Towards a meshed remote pod, but the FIB gives no forwarding route (unreachable,
    /// blackhole, prohibit, local, forwarding disabled on the ingress interface).
    NoRoute = 23,
    /// Towards a meshed remote pod, but the route leaves through an interface that is no
    /// attached uplink (an overlay or tunnel device, another NIC, a local veth), or not the
    /// uplink the remote prefix names.
    NotUplink = 24,
    /// Encapsulated traffic: IP-in-IP, IPv6-in-IPv4, GRE, or on an uplink UDP to a VXLAN,
    /// Geneve or WireGuard port. Overlays stay on the kernel path.
    Encapsulated = 25,
}

/// Number of reasons; the size of the `COUNTERS` array.
pub const REASON_COUNT: u32 = 26;

impl Reason {
    /// Every reason, in discriminant order.
    pub const ALL: [Reason; REASON_COUNT as usize] = [
        Reason::Redirected,
        Reason::NotIp,
        Reason::Vlan,
        Reason::Malformed,
        Reason::Ipv4Options,
        Reason::Ipv6ExtHeader,
        Reason::Fragment,
        Reason::NotUnicast,
        Reason::NotToHost,
        Reason::NoEndpoint,
        Reason::NotMeshed,
        Reason::SameInterface,
        Reason::SrcMismatch,
        Reason::TtlExpired,
        Reason::TxPortMissing,
        Reason::Ndp,
        Reason::FlowNotSeen,
        Reason::IcmpError,
        Reason::UdpKernelSocket,
        Reason::OtherProtocol,
        Reason::FlowTableFull,
        Reason::MtuExceeded,
        Reason::NoNeighbour,
        Reason::NoRoute,
        Reason::NotUplink,
        Reason::Encapsulated,
    ];

    /// Stable snake-case name, used by `xdp-ctl stats` and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::Redirected => "redirected",
            Reason::NotIp => "not_ip",
            Reason::Vlan => "vlan",
            Reason::Malformed => "malformed",
            Reason::Ipv4Options => "ipv4_options",
            Reason::Ipv6ExtHeader => "ipv6_ext_header",
            Reason::Fragment => "fragment",
            Reason::NotUnicast => "not_unicast",
            Reason::NotToHost => "not_to_host",
            Reason::NoEndpoint => "no_endpoint",
            Reason::NotMeshed => "not_meshed",
            Reason::SameInterface => "same_interface",
            Reason::SrcMismatch => "src_mismatch",
            Reason::TtlExpired => "ttl_expired",
            Reason::TxPortMissing => "tx_port_missing",
            Reason::Ndp => "ndp",
            Reason::FlowNotSeen => "flow_not_seen",
            Reason::IcmpError => "icmp_error",
            Reason::UdpKernelSocket => "udp_kernel_socket",
            Reason::OtherProtocol => "other_protocol",
            Reason::FlowTableFull => "flow_table_full",
            Reason::MtuExceeded => "mtu_exceeded",
            Reason::NoNeighbour => "no_neighbour",
            Reason::NoRoute => "no_route",
            Reason::NotUplink => "not_uplink",
            Reason::Encapsulated => "encapsulated",
        }
    }

    pub fn from_name(name: &str) -> Option<Reason> {
        Reason::ALL.iter().copied().find(|r| r.name() == name)
    }
}

/// Pure packet helpers used by the datapath; here so that they are unit-tested on the host.
pub mod pkt {
    /// Incrementally updates an IPv4 header checksum (as read from the packet, big-endian
    /// value) for a TTL decremented by one (RFC 1624, eqn. 3: HC' = ~(~HC + ~m + m')).
    ///
    /// TTL is the high byte of the 16-bit word it shares with the protocol, so that word
    /// drops by 0x0100 and the checksum rises by 0x0100, with the end-around carry.
    #[inline(always)]
    pub const fn csum_after_ttl_decrement(check: u16) -> u16 {
        let sum = check as u32 + 0x0100;
        let folded = (sum & 0xffff) + (sum >> 16);
        #[expect(
            clippy::cast_possible_truncation,
            reason = "at most 0xffff after the fold"
        )]
        let folded = folded as u16;
        folded
    }

    /// Full IPv4 header checksum (for tests and for userspace checks).
    pub fn ipv4_header_checksum(header: &[u8]) -> u16 {
        let mut sum: u32 = 0;
        let mut i = 0;
        while i + 1 < header.len() {
            if i != 10 {
                sum += u32::from(u16::from_be_bytes([header[i], header[i + 1]]));
            }
            i += 2;
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        #[expect(clippy::cast_possible_truncation, reason = "folded to 16 bits above")]
        let folded = sum as u16;
        !folded
    }

    /// True for an IPv4 destination we may forward as unicast: not 0/8, loopback, link-local
    /// (169.254/16), multicast (224/4), reserved (240/4) or broadcast.
    #[inline(always)]
    pub const fn ipv4_is_forwardable_unicast(a: [u8; 4]) -> bool {
        !(a[0] == 0 || a[0] == 127 || (a[0] == 169 && a[1] == 254) || a[0] >= 224)
    }

    /// True for an IPv6 destination we may forward as unicast: not unspecified, loopback,
    /// link-local (fe80::/10) or multicast (ff00::/8).
    #[inline(always)]
    pub const fn ipv6_is_forwardable_unicast(a: [u8; 16]) -> bool {
        ipv6_words_are_forwardable_unicast(&addr_words(&a))
    }

    /// [`ipv6_is_forwardable_unicast`] on [`AddrWords`](super::AddrWords).
    #[inline(always)]
    pub const fn ipv6_words_are_forwardable_unicast(w: &super::AddrWords) -> bool {
        let w0 = u32::from_be(w[0]);
        if w0 >> 24 == 0xff || (w0 >> 22) == (0xfe80 >> 6) {
            return false;
        }
        // :: and ::1.
        !(w0 == 0 && w[1] == 0 && w[2] == 0 && u32::from_be(w[3]) <= 1)
    }

    /// An address's bytes (packet order; IPv4 in the first 4, the rest zero) as
    /// [`AddrWords`](super::AddrWords).
    #[inline(always)]
    pub const fn addr_words(b: &[u8; 16]) -> super::AddrWords {
        [
            u32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
            u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
            u32::from_ne_bytes([b[8], b[9], b[10], b[11]]),
            u32::from_ne_bytes([b[12], b[13], b[14], b[15]]),
        ]
    }

    /// The bytes of [`AddrWords`](super::AddrWords), in packet order.
    #[inline(always)]
    pub const fn addr_bytes(words: &super::AddrWords) -> [u8; 16] {
        let (w0, w1, w2, w3) = (
            words[0].to_ne_bytes(),
            words[1].to_ne_bytes(),
            words[2].to_ne_bytes(),
            words[3].to_ne_bytes(),
        );
        [
            w0[0], w0[1], w0[2], w0[3], w1[0], w1[1], w1[2], w1[3], w2[0], w2[1], w2[2], w2[3],
            w3[0], w3[1], w3[2], w3[3],
        ]
    }

    /// IPv6 next-header values that are extension headers (RFC 8200 and the IANA registry).
    /// Fragment (44) is reported separately.
    #[inline(always)]
    pub const fn ipv6_is_extension_header(next: u8) -> bool {
        matches!(next, 0 | 43 | 50 | 51 | 60 | 135 | 139 | 140 | 253 | 254)
    }

    pub const IPV6_NEXT_FRAGMENT: u8 = 44;
    pub const IPPROTO_ICMP: u8 = 1;
    pub const IPPROTO_TCP: u8 = 6;
    pub const IPPROTO_UDP: u8 = 17;
    pub const IPPROTO_ICMPV6: u8 = 58;
    /// IP-in-IP, IPv6-in-IP and GRE: encapsulations overlays use.
    pub const IPPROTO_IPIP: u8 = 4;
    pub const IPPROTO_IPV6: u8 = 41;
    pub const IPPROTO_GRE: u8 = 47;

    /// True for a UDP destination port that overlays use (VXLAN 4789, Linux/flannel VXLAN 8472,
    /// Geneve 6081, WireGuard 51820 and Cilium's 51871), in network order as read from the
    /// packet in the machine's order (`u16::from_ne_bytes` of the two bytes).
    #[inline(always)]
    pub const fn udp_port_is_overlay(port_as_read: u16) -> bool {
        matches!(
            u16::from_be(port_as_read),
            4789 | 8472 | 6081 | 51820 | 51871
        )
    }

    /// TCP header flags (byte 13 of the header).
    pub const TCP_FIN: u8 = 0x01;
    pub const TCP_SYN: u8 = 0x02;
    pub const TCP_RST: u8 = 0x04;
    pub const TCP_ACK: u8 = 0x10;

    /// What an ICMP or ICMPv6 message is to the flow rule.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum IcmpKind {
        /// Starts an echo exchange (like a SYN): may create a flow.
        EchoRequest,
        /// Needs the flow its request created.
        EchoReply,
        /// Refers to another packet's flow, which may be translated: always the kernel's.
        Error,
        /// Anything else (timestamps, router and multicast listener messages, ...): the kernel's.
        Other,
    }

    /// ICMP (v4) types: echo 8 / 0; errors 3 (unreachable), 4 (source quench), 5 (redirect),
    /// 11 (time exceeded), 12 (parameter problem).
    #[inline(always)]
    pub const fn icmpv4_kind(icmp_type: u8) -> IcmpKind {
        match icmp_type {
            8 => IcmpKind::EchoRequest,
            0 => IcmpKind::EchoReply,
            3 | 4 | 5 | 11 | 12 => IcmpKind::Error,
            _ => IcmpKind::Other,
        }
    }

    /// ICMPv6 types: echo 128 / 129; errors 1 (unreachable), 2 (packet too big), 3 (time
    /// exceeded), 4 (parameter problem). NDP (133-137) is sorted out before this.
    #[inline(always)]
    pub const fn icmpv6_kind(icmp_type: u8) -> IcmpKind {
        match icmp_type {
            128 => IcmpKind::EchoRequest,
            129 => IcmpKind::EchoReply,
            1..=4 => IcmpKind::Error,
            _ => IcmpKind::Other,
        }
    }

    /// `(a, ap) < (b, bp)`: addresses as big-endian 128-bit numbers, then ports (both as read
    /// from the packet, network order in memory).
    #[inline(always)]
    pub fn end_lt(a: &super::AddrWords, ap: u16, b: &super::AddrWords, bp: u16) -> bool {
        // Unrolled by hand: no loop in the eBPF program.
        let (x, y) = (u32::from_be(a[0]), u32::from_be(b[0]));
        if x != y {
            return x < y;
        }
        let (x, y) = (u32::from_be(a[1]), u32::from_be(b[1]));
        if x != y {
            return x < y;
        }
        let (x, y) = (u32::from_be(a[2]), u32::from_be(b[2]));
        if x != y {
            return x < y;
        }
        let (x, y) = (u32::from_be(a[3]), u32::from_be(b[3]));
        if x != y {
            return x < y;
        }
        u16::from_be(ap) < u16::from_be(bp)
    }

    /// ICMPv6 router/neighbour discovery and redirect (RFC 4861): hop limit must stay 255.
    #[inline(always)]
    pub const fn icmpv6_is_ndp(icmp_type: u8) -> bool {
        matches!(icmp_type, 133..=137)
    }
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain `#[repr(C)]` integers and byte arrays without implicit padding.
    unsafe impl aya::Pod for super::Endpoint {}
    unsafe impl aya::Pod for super::Attachment {}
    unsafe impl aya::Pod for super::Counter {}
    unsafe impl aya::Pod for super::ControllerState {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::Flow {}
    unsafe impl aya::Pod for super::SocketKey {}
    unsafe impl aya::Pod for super::Remote {}
    unsafe impl aya::Pod for super::Uplink {}
}

#[cfg(test)]
mod tests {
    use core::mem::{align_of, size_of};

    use super::*;

    #[test]
    fn abi_sizes_have_no_hidden_padding() {
        assert_eq!(size_of::<Endpoint>(), 4 + 4 + 6 + 6);
        assert_eq!(align_of::<Endpoint>(), 4);
        assert_eq!(size_of::<Attachment>(), 4 + 4 + 16);
        assert_eq!(size_of::<Counter>(), 16);
        assert_eq!(size_of::<ControllerState>(), 6 * 4 + 7 * 8);
        assert_eq!(size_of::<FlowKey>(), 16 + 16 + 2 + 2 + 1 + 1 + 2);
        assert_eq!(align_of::<FlowKey>(), 4);
        assert_eq!(size_of::<Flow>(), 4 + 1 + 3);
        assert_eq!(size_of::<SocketKey>(), 16 + 2 + 1 + 1);
    }

    #[test]
    fn reasons_are_dense_and_stable() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "{r:?} out of order");
            assert_eq!(Reason::from_name(r.name()), Some(*r));
        }
        assert_eq!(Reason::ALL.len(), REASON_COUNT as usize);
        // Discriminants are an external ABI: spot-check a few against their documented values.
        assert_eq!(Reason::Redirected as u8, 0);
        assert_eq!(Reason::SrcMismatch as u8, 12);
        assert_eq!(Reason::Ndp as u8, 15);
        assert_eq!(Reason::FlowNotSeen as u8, 16);
        assert_eq!(Reason::FlowTableFull as u8, 20);
    }

    #[test]
    fn ttl_decrement_checksum_matches_full_recompute() {
        // A real header (from RFC 1071 style examples) and a sweep of TTLs and protocols,
        // compared against a full recomputation after the decrement.
        let mut hdr: [u8; 20] = [
            0x45, 0x00, 0x00, 0x54, 0x1c, 0x46, 0x40, 0x00, 64, 1, 0, 0, 10, 244, 0, 1, 10, 244, 0,
            2,
        ];
        for ttl in 2..=255u8 {
            for proto in [1u8, 6, 17, 0xff] {
                for id in [0u16, 0x1c46, 0xffff, 0xfeff] {
                    hdr[8] = ttl;
                    hdr[9] = proto;
                    hdr[4..6].copy_from_slice(&id.to_be_bytes());
                    let before = pkt::ipv4_header_checksum(&hdr);
                    hdr[10..12].copy_from_slice(&before.to_be_bytes());
                    let incremental = pkt::csum_after_ttl_decrement(before);
                    hdr[8] = ttl - 1;
                    let full = pkt::ipv4_header_checksum(&hdr);
                    // 0x0000 and 0xffff are the same value in one's complement.
                    let norm = |c: u16| if c == 0xffff { 0 } else { c };
                    assert_eq!(
                        norm(incremental),
                        norm(full),
                        "ttl {ttl} proto {proto} id {id:#x}"
                    );
                }
            }
        }
    }

    #[test]
    fn flow_keys_are_direction_independent() {
        let v4 = |octets: [u8; 4]| {
            let mut bytes = [0u8; 16];
            bytes[..4].copy_from_slice(&octets);
            pkt::addr_words(&bytes)
        };
        let port = |p: u16| u16::from_ne_bytes(p.to_be_bytes());
        let (pod_a, pod_b) = (v4([10, 244, 0, 1]), v4([10, 244, 0, 2]));
        let (k1, a_lo) = FlowKey::new(FAMILY_V4, 6, &pod_a, port(40000), &pod_b, port(80));
        let (k2, b_lo) = FlowKey::new(FAMILY_V4, 6, &pod_b, port(80), &pod_a, port(40000));
        assert_eq!(k1, k2);
        assert!(a_lo && !b_lo);
        assert_eq!(k1.lo_addr, pod_a);
        assert_eq!(k1.lo_port, port(40000));
        // Same address (not a real pod pair, but the order must still be total): ports decide,
        // as numbers (81 > 80 although its low byte is larger in memory too; 256 > 255 is the
        // case where the memory order would disagree).
        let (k3, lo) = FlowKey::new(FAMILY_V4, 6, &pod_a, port(256), &pod_a, port(255));
        assert!(!lo);
        assert_eq!(k3.lo_port, port(255));
        // Addresses compare as big-endian numbers: 10.244.1.0 > 10.244.0.255.
        assert!(pkt::end_lt(
            &v4([10, 244, 0, 255]),
            0,
            &v4([10, 244, 1, 0]),
            0
        ));
        assert!(!pkt::end_lt(
            &v4([10, 244, 1, 0]),
            0,
            &v4([10, 244, 0, 255]),
            0
        ));
        // The low words of an IPv6 address decide when the high ones are equal.
        let mut x = [0u8; 16];
        let mut y = [0u8; 16];
        x[0] = 0xfd;
        y[0] = 0xfd;
        x[15] = 2;
        y[15] = 1;
        let (xw, yw) = (pkt::addr_words(&x), pkt::addr_words(&y));
        assert!(!pkt::end_lt(&xw, 1, &yw, 1));
        assert!(pkt::end_lt(&yw, 1, &xw, 1));
        assert_eq!(pkt::addr_bytes(&xw), x);
        // The first byte is the most significant.
        x[0] = 0x01;
        assert!(pkt::end_lt(&pkt::addr_words(&x), 1, &yw, 1));
    }

    #[test]
    fn icmp_kinds() {
        use pkt::{icmpv4_kind, icmpv6_kind, IcmpKind::*};
        assert_eq!(icmpv4_kind(8), EchoRequest);
        assert_eq!(icmpv4_kind(0), EchoReply);
        for t in [3, 4, 5, 11, 12] {
            assert_eq!(icmpv4_kind(t), Error, "{t}");
        }
        for t in [1, 2, 6, 9, 10, 13, 14, 255] {
            assert_eq!(icmpv4_kind(t), Other, "{t}");
        }
        assert_eq!(icmpv6_kind(128), EchoRequest);
        assert_eq!(icmpv6_kind(129), EchoReply);
        for t in 1..=4 {
            assert_eq!(icmpv6_kind(t), Error, "{t}");
        }
        for t in [0, 5, 100, 127, 130, 143, 255] {
            assert_eq!(icmpv6_kind(t), Other, "{t}");
        }
    }

    #[test]
    fn address_classes() {
        use pkt::*;
        assert!(ipv4_is_forwardable_unicast([10, 244, 0, 1]));
        for bad in [
            [0, 0, 0, 0],
            [127, 0, 0, 1],
            [169, 254, 1, 1],
            [224, 0, 0, 1],
            [255; 4],
        ] {
            assert!(!ipv4_is_forwardable_unicast(bad), "{bad:?}");
        }
        let mut a = [0u8; 16];
        assert!(!ipv6_is_forwardable_unicast(a));
        a[15] = 1;
        assert!(!ipv6_is_forwardable_unicast(a));
        a[15] = 2;
        assert!(ipv6_is_forwardable_unicast(a));
        let fd00 = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        assert!(ipv6_is_forwardable_unicast(fd00));
        let mut ll = fd00;
        ll[0] = 0xfe;
        ll[1] = 0x80;
        assert!(!ipv6_is_forwardable_unicast(ll));
        ll[1] = 0xc0; // fec0::/10 (deprecated site-local) is not link-local
        assert!(ipv6_is_forwardable_unicast(ll));
        let mut mc = fd00;
        mc[0] = 0xff;
        assert!(!ipv6_is_forwardable_unicast(mc));
        assert!(ipv6_is_extension_header(0) && !ipv6_is_extension_header(6));
        assert!(icmpv6_is_ndp(135) && !icmpv6_is_ndp(128));
    }
}
