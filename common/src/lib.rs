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
pub const LAYOUT_VERSION: u32 = 1;

/// Names of the pinned maps (also the map symbols in the eBPF object).
pub mod map_names {
    pub const ENDPOINTS_V4: &str = "ENDPOINTS_V4";
    pub const ENDPOINTS_V6: &str = "ENDPOINTS_V6";
    pub const TX_PORTS: &str = "TX_PORTS";
    pub const COUNTERS: &str = "COUNTERS";
    pub const ATTACHMENTS: &str = "ATTACHMENTS";
    pub const CONTROLLER: &str = "CONTROLLER";
}

/// Capacity of each endpoint trie (pod addresses or prefixes per address family).
pub const MAX_ENDPOINTS: u32 = 65_536;
/// Capacity of the device map and of the attachment registry (pod veths on one node).
pub const MAX_PORTS: u32 = 4_096;

/// The endpoint is a meshed pod: traffic between two meshed local pods may bypass netfilter.
pub const EP_F_MESHED: u32 = 1 << 0;

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
    /// Explicit padding; always zero.
    pub pad: u8,
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
}

/// Number of reasons; the size of the `COUNTERS` array.
pub const REASON_COUNT: u32 = 16;

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
        if a[0] == 0xff || (a[0] == 0xfe && a[1] & 0xc0 == 0x80) {
            return false;
        }
        // :: and ::1 (checked as two halves to keep the loop out of the eBPF program).
        let hi = u64::from_be_bytes([a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]]);
        let lo = u64::from_be_bytes([a[8], a[9], a[10], a[11], a[12], a[13], a[14], a[15]]);
        !(hi == 0 && lo <= 1)
    }

    /// IPv6 next-header values that are extension headers (RFC 8200 and the IANA registry).
    /// Fragment (44) is reported separately.
    #[inline(always)]
    pub const fn ipv6_is_extension_header(next: u8) -> bool {
        matches!(next, 0 | 43 | 50 | 51 | 60 | 135 | 139 | 140 | 253 | 254)
    }

    pub const IPV6_NEXT_FRAGMENT: u8 = 44;
    pub const IPPROTO_ICMPV6: u8 = 58;

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
