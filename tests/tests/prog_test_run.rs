//! The datapath under `BPF_PROG_TEST_RUN`, on crafted frames, through both of its hooks: XDP
//! (`xdp_fastpath` on pod veths, `xdp_uplink` on uplinks) and TC (`tc_fastpath`, `tc_uplink`):
//! same decisions, maps and counters.
//!
//! Each test runs its table once per [`Hook`]: it loads the object, loads that hook's two programs
//! (the pod one and the uplink one, sharing the maps) and fills the maps with a fixed set of
//! endpoints, uplinks and remote prefixes; then each case's frame is run once through the
//! program of its [`Side`] and checked for
//! - the returned action: the hook's redirect (`XDP_REDIRECT`, or `TC_ACT_REDIRECT` from
//!   `bpf_redirect_peer` / `bpf_redirect`) only for the redirected reason, its pass (`XDP_PASS`,
//!   `TC_ACT_OK`) otherwise,
//! - the `COUNTERS` deltas: exactly the expected reason grew, by one packet and the frame's length
//!   in bytes, and no other reason moved,
//! - the output frame (the XDP buffer, or the skb data from the MAC header, after the program):
//!   byte for byte unchanged for every pass, and for a redirect the input with the new MACs
//!   (the destination endpoint's, or out of an uplink the next hop's and the uplink's), TTL /
//!   hop limit minus one and a valid IPv4 header checksum, nothing else touched,
//! - where a case says so, whether its source UDP socket is marked in `KERNEL_SOCKETS`.
//!
//! Failures name `hook/case`.
//!
//! The kernel resolves the ingress ifindex of the run (`xdp_md.ingress_ifindex`; for TC the
//! `__sk_buff.ifindex` device) and the redirect targets (`TX_PORTS` entries) in the caller's
//! network namespace, and they must name existing devices. So each test runs each hook on its own
//! thread in a private network namespace (`unshare(CLONE_NEWNET)`), creates veth pairs there and
//! uses their ifindexes; the namespace and its devices disappear when the thread ends. Nothing is
//! pinned (the object's maps are unpinned), nothing is attached, the host is not touched.
//!
//! Towards remote pods the datapath asks the kernel's FIB (`bpf_fib_lookup`), which also answers
//! from the caller's namespace: the bench gives it a node's routing (see [`Bench::new`]): uplinks
//! with addresses, routes to the remote pod prefixes via gateways with permanent neighbour
//! entries, forwarding on (in the private namespace only), and the routes and devices the
//! failure cases need.
//!
//! Needs root: the tests are `#[ignore]`d, and fail when run without root (`scripts/test.sh`
//! runs them as root with `--include-ignored`).

use std::fmt::Write as _;
use std::mem::size_of;
use std::process::Command;

use anyhow::{anyhow, bail, ensure, Context as _, Result};
use aya::{
    maps::{
        lpm_trie::{Key, LpmTrie},
        xdp::DevMapHash,
        HashMap, MapData, PerCpuArray,
    },
    programs::{SchedClassifier, TestRun, TestRunOptions, TestRunResult, Xdp},
    Ebpf,
};
use common::{
    map_names, pkt::addr_words, Attachment, Counter, Endpoint, Flow, FlowKey, Reason, Remote,
    SocketKey, Uplink, ATT_DATAPATH_TC, ATT_MODE_TCX, ATT_ROLE_POD, ATT_ROLE_UPLINK, EP_F_MESHED,
    FAMILY_V4, FAMILY_V6, MAX_FLOWS, REMOTE_F_MESHED,
};
use integration_tests::frame::{
    self, checksum, BROADCAST_MAC, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, IPPROTO_ICMPV6, IPPROTO_UDP,
};
use xdp_ctl::{EBPF_OBJECT, TC_PROGRAM, TC_UPLINK_PROGRAM, XDP_PROGRAM, XDP_UPLINK_PROGRAM};

const XDP_PASS: u32 = 2;
const XDP_REDIRECT: u32 = 4;
const TC_ACT_OK: u32 = 0;
const TC_ACT_REDIRECT: u32 = 7;

const ETH_HLEN: usize = 14;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const ETH_P_LLDP: u16 = 0x88cc;

const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_DSTOPTS: u8 = 60;

/// An ifindex that no device has in a fresh network namespace.
const FAKE_IFINDEX: u32 = 1000;

/// The uplink "ua" (a veth whose peer "ub" stands for the wire): its MAC, and its gateway's (a
/// permanent neighbour entry), the next hop towards the remote pods.
const UP_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x75, 0x01];
const GW_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x67, 0x01];
/// The second uplink "wa" and its gateway: in `UPLINKS`, but for XDP no `TX_PORTS` member (an
/// uplink attached with TC), and for TC recorded in `ATTACHMENTS` with the uplink role.
const UP2_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x75, 0x02];
const GW2_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x67, 0x02];
/// "va", a routed device that is no uplink, and its gateway.
const PLAIN_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x76, 0x01];
const PLAIN_GW_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x68, 0x01];

// MACs. Pod A sits behind host veth "xa" (the ingress of almost every case), pod B behind "xb",
// pod C behind "ya"; xa, xb and ya are redirect targets of the hook under test (the targets of
// the expected redirects), "za" only of the other hook.
const POD_A_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x0a, 0x01];
const HOST_A_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xaa, 0x01];
const POD_B_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x0b, 0x01];
const HOST_B_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xbb, 0x01];
const POD_C_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x0c, 0x01];
const HOST_C_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xcc, 0x01];
const POD_F_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x0f, 0x02];
const HOST_F_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xff, 0x02];
const V4_MCAST_MAC: [u8; 6] = [0x01, 0x00, 0x5e, 0x00, 0x00, 0x01];
const V6_MCAST_MAC: [u8; 6] = [0x33, 0x33, 0x00, 0x00, 0x00, 0x01];

/// Where an endpoint lives (resolved to an ifindex inside the test's namespace).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Port {
    /// Loopback, ifindex 1: a real device that is no pod's veth.
    Lo,
    /// Host veth of pod A; the ingress of most cases; a redirect target (for b -> a).
    A,
    /// Host veth of pod B; a redirect target.
    B,
    /// Host veth of pod C; a redirect target.
    C,
    /// A real device registered only in the *other* hook's target map.
    D,
    /// No such device; in neither target map.
    Fake,
    /// The uplink "ua": the ingress of the uplink program's cases, the egress towards the
    /// remote pods; an XDP redirect target (`TX_PORTS`).
    Up,
    /// The second uplink "wa": no XDP redirect target; for TC an `ATTACHMENTS` record with the
    /// uplink role.
    Up2,
    /// "va": a device with a route to remote pods, not an uplink.
    Plain,
    /// "fa": host veth of a pod, with forwarding disabled on it.
    NoFwd,
}

/// One endpoint of the fixed map contents: host number `n` is `10.244.0.n` and `fd00::n`.
struct EndpointSpec {
    n: u8,
    port: Port,
    meshed: bool,
    pod_mac: [u8; 6],
    host_mac: [u8; 6],
}

/// Pod A (source of most cases).
const EP_A: u8 = 1;
/// Pod B (the usual destination).
const EP_B: u8 = 2;
/// Meshed, but its veth is no redirect target (in neither `TX_PORTS` nor `ATTACHMENTS`).
const EP_NO_TX: u8 = 3;
/// Not meshed, behind xb.
const EP_B_UNMESHED: u8 = 4;
/// Not meshed, behind xa (the ingress): an unmeshed source.
const EP_A_UNMESHED: u8 = 5;
/// Meshed, behind xb: used as a forged source on xa.
const EP_B2: u8 = 6;
/// Meshed, behind xa: a hairpin destination.
const EP_A2: u8 = 7;
/// Pod C, meshed, behind ya: checks the rewrite uses the destination's entry.
const EP_C: u8 = 8;
/// Meshed, behind za: a redirect target of the other hook only (XDP: in `ATTACHMENTS`, not in
/// `TX_PORTS`; TC: the reverse). Checks each hook consults its own map.
const EP_OTHER_HOOK: u8 = 9;
/// Meshed, behind fa, whose forwarding is off: the FIB refuses to route its packets.
const EP_NO_FWD: u8 = 10;
/// Meshed, but its "veth" is the uplink wa (a stale or bogus entry): no pod redirect target
/// (XDP: not in `TX_PORTS`; TC: its `ATTACHMENTS` record has the uplink role).
const EP_ON_UPLINK: u8 = 11;
/// Not an endpoint.
const NOT_EP: u8 = 99;

const ENDPOINTS: [EndpointSpec; 11] = [
    EndpointSpec {
        n: EP_A,
        port: Port::A,
        meshed: true,
        pod_mac: POD_A_MAC,
        host_mac: HOST_A_MAC,
    },
    EndpointSpec {
        n: EP_B,
        port: Port::B,
        meshed: true,
        pod_mac: POD_B_MAC,
        host_mac: HOST_B_MAC,
    },
    EndpointSpec {
        n: EP_NO_TX,
        port: Port::Fake,
        meshed: true,
        pod_mac: [0x02, 0, 0, 0, 0x0f, 0x01],
        host_mac: [0x02, 0, 0, 0, 0xff, 0x01],
    },
    EndpointSpec {
        n: EP_B_UNMESHED,
        port: Port::B,
        meshed: false,
        pod_mac: [0x02, 0, 0, 0, 0x0b, 0x04],
        host_mac: HOST_B_MAC,
    },
    EndpointSpec {
        n: EP_A_UNMESHED,
        port: Port::A,
        meshed: false,
        pod_mac: [0x02, 0, 0, 0, 0x0a, 0x05],
        host_mac: HOST_A_MAC,
    },
    EndpointSpec {
        n: EP_B2,
        port: Port::B,
        meshed: true,
        pod_mac: [0x02, 0, 0, 0, 0x0b, 0x06],
        host_mac: HOST_B_MAC,
    },
    EndpointSpec {
        n: EP_A2,
        port: Port::A,
        meshed: true,
        pod_mac: [0x02, 0, 0, 0, 0x0a, 0x07],
        host_mac: HOST_A_MAC,
    },
    EndpointSpec {
        n: EP_C,
        port: Port::C,
        meshed: true,
        pod_mac: POD_C_MAC,
        host_mac: HOST_C_MAC,
    },
    EndpointSpec {
        n: EP_OTHER_HOOK,
        port: Port::D,
        meshed: true,
        pod_mac: [0x02, 0, 0, 0, 0x0d, 0x01],
        host_mac: [0x02, 0, 0, 0, 0xdd, 0x01],
    },
    EndpointSpec {
        n: EP_NO_FWD,
        port: Port::NoFwd,
        meshed: true,
        pod_mac: POD_F_MAC,
        host_mac: HOST_F_MAC,
    },
    EndpointSpec {
        n: EP_ON_UPLINK,
        port: Port::Up2,
        meshed: true,
        pod_mac: [0x02, 0, 0, 0, 0x0e, 0x01],
        host_mac: UP2_MAC,
    },
];

fn endpoint_spec(n: u8) -> &'static EndpointSpec {
    ENDPOINTS
        .iter()
        .find(|e| e.n == n)
        .expect("endpoint in ENDPOINTS")
}

const fn v4(n: u8) -> [u8; 4] {
    [10, 244, 0, n]
}

const fn v6(n: u8) -> [u8; 16] {
    [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, n]
}

fn addr6(s: &str) -> [u8; 16] {
    s.parse::<std::net::Ipv6Addr>()
        .expect("IPv6 address")
        .octets()
}

// Remote pods (other nodes' pod CIDRs, `REMOTE_V4` / `REMOTE_V6`): 10.245.s.n and
// fd01:0:0:s::n, meshed as a whole (10.245.0.0/16, fd01::/48, any uplink); each sub-prefix `s`
// is reached through the route, or carries the flags, that one kind of case needs.

/// Routed via the gateway of ua: the usual remote pods.
const RS_MESHED: u8 = 0;
/// An exception: a longer prefix without `REMOTE_F_MESHED`.
const RS_EXCEPTION: u8 = 1;
/// Routed via a gateway on ua that has no neighbour entry.
const RS_NO_NEIGH: u8 = 2;
/// `ip route add unreachable`.
const RS_UNREACHABLE: u8 = 3;
/// `ip route add blackhole`.
const RS_BLACKHOLE: u8 = 4;
/// Routed via va, which is no uplink.
const RS_VIA_PLAIN: u8 = 5;
/// Routed via ua, but its prefix names the uplink wa.
const RS_NAMES_UP2: u8 = 6;
/// Routed via ua, and its prefix names ua.
const RS_NAMES_UP: u8 = 7;
/// Routed via the gateway of wa (no XDP redirect target).
const RS_VIA_UP2: u8 = 8;
/// Routed via the gateway of ua with a locked route MTU of [`ROUTE_MTU`].
const RS_ROUTE_MTU: u8 = 9;
const ROUTE_MTU: usize = 1400;
/// The uplinks' MTU (the veth default).
const UPLINK_MTU: usize = 1500;

/// A host's addresses in both families.
#[derive(Clone, Copy)]
struct At {
    v4: [u8; 4],
    v6: [u8; 16],
}

/// Local endpoint `n`.
const fn pod(n: u8) -> At {
    At {
        v4: v4(n),
        v6: v6(n),
    }
}

/// Remote pod `n` of sub-prefix `s`.
const fn remote(s: u8, n: u8) -> At {
    At {
        v4: [10, 245, s, n],
        v6: [0xfd, 0x01, 0, 0, 0, 0, 0, s, 0, 0, 0, 0, 0, 0, 0, n],
    }
}

/// This node's address on ua: a node port's address (no pod).
const NODE: At = At {
    v4: [192, 168, 50, 1],
    v6: [0xfd, 0x50, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
};
/// The other node behind ua (its gateway): the source of overlay traffic.
const PEER_NODE: At = At {
    v4: [192, 168, 50, 2],
    v6: [0xfd, 0x50, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
};
/// Neither a local nor a remote pod (documentation prefixes).
const EXTERNAL: At = At {
    v4: [192, 0, 2, 7],
    v6: [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7],
};

// ---------------------------------------------------------------------------------------------
// Frame builders.

/// A frame from pod A's MAC (the builders of `integration_tests::frame`).
fn ethernet(dst: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    frame::ethernet(dst, POD_A_MAC, ethertype, payload)
}

fn len16(n: usize) -> u16 {
    u16::try_from(n).expect("length fits 16 bits")
}

fn udp(payload: &[u8]) -> Vec<u8> {
    let mut u = Vec::new();
    u.extend_from_slice(&40_000u16.to_be_bytes());
    u.extend_from_slice(&5_201u16.to_be_bytes());
    u.extend_from_slice(&len16(8 + payload.len()).to_be_bytes());
    u.extend_from_slice(&[0x12, 0x34]); // not verified by the datapath
    u.extend_from_slice(payload);
    u
}

fn tcp(payload: &[u8]) -> Vec<u8> {
    let mut t = vec![
        0x9c, 0x40, 0x14, 0x51, // ports 40000 -> 5201
        0, 0, 0, 1, // seq
        0, 0, 0, 0, // ack
        0x50, 0x02, // data offset 5, SYN
        0xfa, 0xf0, // window
        0xab, 0xcd, // checksum (not verified by the datapath)
        0, 0, // urgent
    ];
    t.extend_from_slice(payload);
    t
}

const PAYLOAD: &[u8] = b"xdp-fastpath payload \x00\x01\x02\xff";

/// An IPv4 packet, header checksum computed over the header actually emitted.
#[derive(Clone)]
struct V4 {
    version: u8,
    /// IHL field; `None` = derived from the options.
    ihl: Option<u8>,
    /// Total length field; `None` = the real length.
    total_len: Option<u16>,
    frag: u16,
    ttl: u8,
    proto: u8,
    src: [u8; 4],
    dst: [u8; 4],
    options: Vec<u8>,
    payload: Vec<u8>,
}

impl V4 {
    fn udp(src: [u8; 4], dst: [u8; 4]) -> Self {
        Self {
            version: 4,
            ihl: None,
            total_len: None,
            frag: 0x4000, // DF, as Linux sends
            ttl: 64,
            proto: IPPROTO_UDP,
            src,
            dst,
            options: Vec::new(),
            payload: udp(PAYLOAD),
        }
    }

    fn bytes(&self) -> Vec<u8> {
        assert_eq!(self.options.len() % 4, 0);
        let hlen = 20 + self.options.len();
        let ihl = self
            .ihl
            .unwrap_or_else(|| u8::try_from(hlen / 4).expect("IHL fits"));
        let total = self
            .total_len
            .unwrap_or_else(|| len16(hlen + self.payload.len()));
        let mut h = vec![(self.version << 4) | (ihl & 0x0f), 0];
        h.extend_from_slice(&total.to_be_bytes());
        h.extend_from_slice(&0x1c46u16.to_be_bytes()); // id
        h.extend_from_slice(&self.frag.to_be_bytes());
        h.extend_from_slice(&[self.ttl, self.proto, 0, 0]);
        h.extend_from_slice(&self.src);
        h.extend_from_slice(&self.dst);
        h.extend_from_slice(&self.options);
        // The reference RFC 1071 sum of the test crate, not the datapath's own helper.
        let check = checksum(&h);
        h[10..12].copy_from_slice(&check.to_be_bytes());
        h.extend_from_slice(&self.payload);
        h
    }

    /// Sent by pod A to its host veth.
    fn frame(&self) -> Vec<u8> {
        self.frame_to(HOST_A_MAC)
    }

    fn frame_to(&self, mac: [u8; 6]) -> Vec<u8> {
        ethernet(mac, ETH_P_IP, &self.bytes())
    }
}

/// An IPv6 packet; `payload` starts with the first header after the fixed header.
#[derive(Clone)]
struct V6 {
    version: u8,
    /// Payload length field; `None` = the real length.
    payload_len: Option<u16>,
    next: u8,
    hop: u8,
    src: [u8; 16],
    dst: [u8; 16],
    payload: Vec<u8>,
}

impl V6 {
    fn new(next: u8, payload: Vec<u8>, src: [u8; 16], dst: [u8; 16]) -> Self {
        Self {
            version: 6,
            payload_len: None,
            next,
            hop: 64,
            src,
            dst,
            payload,
        }
    }

    fn udp(src: [u8; 16], dst: [u8; 16]) -> Self {
        Self::new(IPPROTO_UDP, udp(PAYLOAD), src, dst)
    }

    fn tcp(src: [u8; 16], dst: [u8; 16]) -> Self {
        Self::new(IPPROTO_TCP, tcp(PAYLOAD), src, dst)
    }

    fn icmp(icmp_type: u8, dst: [u8; 16]) -> Self {
        // type, code, checksum, 4 bytes of body, then a target address (NS/NA shape).
        let mut body = vec![icmp_type, 0, 0x5a, 0x5a, 0, 0, 0, 0];
        body.extend_from_slice(&dst);
        let mut p = Self::new(IPPROTO_ICMPV6, body, v6(EP_A), dst);
        p.hop = 255;
        p
    }

    /// `ext` (an extension header of 8 bytes with `next` = UDP) in front of a UDP datagram.
    fn with_ext(next: u8, ext: [u8; 8]) -> Self {
        let mut payload = ext.to_vec();
        payload.extend_from_slice(&udp(PAYLOAD));
        Self::new(next, payload, v6(EP_A), v6(EP_B))
    }

    fn bytes(&self) -> Vec<u8> {
        let plen = self
            .payload_len
            .unwrap_or_else(|| len16(self.payload.len()));
        let mut h = vec![self.version << 4, 0, 0x12, 0x34];
        h.extend_from_slice(&plen.to_be_bytes());
        h.extend_from_slice(&[self.next, self.hop]);
        h.extend_from_slice(&self.src);
        h.extend_from_slice(&self.dst);
        h.extend_from_slice(&self.payload);
        h
    }

    fn frame(&self) -> Vec<u8> {
        self.frame_to(HOST_A_MAC)
    }

    fn frame_to(&self, mac: [u8; 6]) -> Vec<u8> {
        ethernet(mac, ETH_P_IPV6, &self.bytes())
    }
}

/// An ARP request from pod A (who has 10.244.0.2).
fn arp() -> Vec<u8> {
    let mut a = vec![0, 1, 0x08, 0x00, 6, 4, 0, 1];
    a.extend_from_slice(&POD_A_MAC);
    a.extend_from_slice(&v4(EP_A));
    a.extend_from_slice(&[0; 6]);
    a.extend_from_slice(&v4(EP_B));
    ethernet(BROADCAST_MAC, ETH_P_ARP, &a)
}

/// A tagged frame (VLAN 100) carrying an otherwise fast-pathable IPv4 packet.
fn vlan(tpid: u16) -> Vec<u8> {
    let mut p = vec![0x00, 0x64];
    p.extend_from_slice(&ETH_P_IP.to_be_bytes());
    p.extend_from_slice(&V4::udp(v4(EP_A), v4(EP_B)).bytes());
    ethernet(HOST_A_MAC, tpid, &p)
}

// ---------------------------------------------------------------------------------------------
// Cases.

/// A frame's MACs: destination, source.
#[derive(Clone, Copy)]
struct Macs {
    dst: [u8; 6],
    src: [u8; 6],
}

/// Out of ua to its gateway, as the FIB names them.
const VIA_UP: Macs = Macs {
    dst: GW_MAC,
    src: UP_MAC,
};
/// Out of wa to its gateway.
const VIA_UP2: Macs = Macs {
    dst: GW2_MAC,
    src: UP2_MAC,
};
/// From the wire, as the gateway sends to ua.
const FROM_WIRE: Macs = Macs {
    dst: UP_MAC,
    src: GW_MAC,
};

/// As endpoint `n`'s pod sends to its host veth.
fn from_pod(n: u8) -> Macs {
    let ep = endpoint_spec(n);
    Macs {
        dst: ep.host_mac,
        src: ep.pod_mac,
    }
}

enum Expect {
    /// Redirected to the endpoint with this host number (its MACs written, TTL - 1).
    Redirect(u8),
    /// Redirected out of an uplink, with these MACs written (the next hop's, the uplink's),
    /// TTL - 1.
    Out(Macs),
    /// Passed to the kernel unchanged, counted under this reason.
    Pass(Reason),
}

/// Which program of the hook a case runs through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    /// `xdp_fastpath` / `tc_fastpath`, on a pod's host veth.
    Pod,
    /// `xdp_uplink` / `tc_uplink`, on an uplink.
    Uplink,
}

struct Case {
    name: String,
    frame: Vec<u8>,
    ingress: Port,
    side: Side,
    expect: Expect,
    /// `Some(marked)`: the frame's source UDP socket is not in `KERNEL_SOCKETS` before the run,
    /// and is in it afterwards exactly if `marked`.
    marks: Option<bool>,
}

fn pass(name: impl Into<String>, frame: Vec<u8>, reason: Reason) -> Case {
    Case {
        name: name.into(),
        frame,
        ingress: Port::A,
        side: Side::Pod,
        expect: Expect::Pass(reason),
        marks: None,
    }
}

fn redirect(name: impl Into<String>, frame: Vec<u8>, to: u8) -> Case {
    Case {
        name: name.into(),
        frame,
        ingress: Port::A,
        side: Side::Pod,
        expect: Expect::Redirect(to),
        marks: None,
    }
}

impl Case {
    fn on(mut self, ingress: Port) -> Self {
        self.ingress = ingress;
        self
    }

    /// Through the uplink program, received on `ingress`.
    fn uplink(mut self, ingress: Port) -> Self {
        self.side = Side::Uplink;
        self.ingress = ingress;
        self
    }

    fn marks(mut self, marked: bool) -> Self {
        self.marks = Some(marked);
        self
    }

    /// With TTL / hop limit `ttl` (the IPv4 header checksum recomputed).
    fn ttl(mut self, ttl: u8) -> Self {
        let f = &mut self.frame;
        match u16::from_be_bytes([f[12], f[13]]) {
            ETH_P_IP => {
                f[ETH_HLEN + 8] = ttl;
                let hlen = usize::from(f[ETH_HLEN] & 0x0f) * 4;
                f[ETH_HLEN + 10..ETH_HLEN + 12].fill(0);
                let check = checksum(&f[ETH_HLEN..ETH_HLEN + hlen]);
                f[ETH_HLEN + 10..ETH_HLEN + 12].copy_from_slice(&check.to_be_bytes());
            }
            ETH_P_IPV6 => f[ETH_HLEN + 7] = ttl,
            other => panic!("TTL of ethertype {other:#06x}"),
        }
        self
    }

    /// With destination MAC `mac`.
    fn addressed_to(mut self, mac: [u8; 6]) -> Self {
        self.frame[0..6].copy_from_slice(&mac);
        self
    }
}

/// The expected output of a redirect: the input with `macs` and TTL / hop limit - 1 (and, for
/// IPv4, the header checksum recomputed from scratch).
fn rewritten(frame: &[u8], macs: Macs) -> Vec<u8> {
    let mut f = frame.to_vec();
    f[0..6].copy_from_slice(&macs.dst);
    f[6..12].copy_from_slice(&macs.src);
    match u16::from_be_bytes([f[12], f[13]]) {
        ETH_P_IP => {
            f[ETH_HLEN + 8] -= 1;
            let hlen = usize::from(f[ETH_HLEN] & 0x0f) * 4;
            f[ETH_HLEN + 10..ETH_HLEN + 12].fill(0);
            let check = checksum(&f[ETH_HLEN..ETH_HLEN + hlen]);
            f[ETH_HLEN + 10..ETH_HLEN + 12].copy_from_slice(&check.to_be_bytes());
        }
        ETH_P_IPV6 => f[ETH_HLEN + 7] -= 1,
        other => panic!("redirect expected for ethertype {other:#06x}"),
    }
    f
}

/// The source UDP socket of an IPv4 / IPv6 frame without options or extension headers, as
/// `KERNEL_SOCKETS` keys it.
fn source_socket(frame: &[u8]) -> Result<SocketKey> {
    let ip = &frame[ETH_HLEN..];
    let (family, proto, src, l4): (u8, u8, &[u8], usize) =
        match u16::from_be_bytes([frame[12], frame[13]]) {
            ETH_P_IP => (FAMILY_V4, ip[9], &ip[12..16], 20),
            ETH_P_IPV6 => (FAMILY_V6, ip[6], &ip[8..24], 40),
            other => bail!("no IP frame (ethertype {other:#06x})"),
        };
    ensure!(proto == IPPROTO_UDP, "not UDP (protocol {proto})");
    let mut addr = [0u8; 16];
    addr[..src.len()].copy_from_slice(src);
    Ok(SocketKey {
        addr: addr_words(&addr),
        port: u16::from_ne_bytes([ip[l4], ip[l4 + 1]]),
        family,
        pad: 0,
    })
}

/// True when the IPv4 header's checksum is right: the sum over the header, checksum included,
/// is all ones (its complement 0).
fn ipv4_checksum_valid(header: &[u8]) -> bool {
    checksum(header) == 0
}

// ---------------------------------------------------------------------------------------------
// The hooks.

/// The datapath under test, with its two programs ([`Side`]). Both hooks share the decision
/// logic, the endpoint maps and `COUNTERS`; they differ in the context the kernel builds for a
/// test run, in their return codes and in the map that makes an ifindex a redirect target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hook {
    /// `xdp_fastpath`, `xdp_uplink`: `XDP_PASS` / `XDP_REDIRECT` (`bpf_redirect_map` on
    /// `TX_PORTS`, for a local pod and for an uplink alike).
    Xdp,
    /// `tc_fastpath`, `tc_uplink`: `TC_ACT_OK` / `TC_ACT_REDIRECT` (into a local pod:
    /// `bpf_redirect_peer`, after checking the target is in `ATTACHMENTS` as a pod veth; out of
    /// an uplink: `bpf_redirect`). Byte counters use `skb->len`, which for a test run is the
    /// frame's length, as for XDP.
    Tc,
}

/// `struct __sk_buff` (uapi `linux/bpf.h`): the context of an skb test run. The kernel copies at
/// most `sizeof(struct __sk_buff)` = 192 bytes (`bpf_ctx_init`; a longer `ctx_in` must be zero
/// past that, else `E2BIG`) and `convert___skb_to_skb` rejects (`EINVAL`) any non-zero byte
/// outside `mark`, `priority`, `ingress_ifindex`, `ifindex`, `cb`, `tstamp`, `wire_len`,
/// `gso_segs`, `gso_size` and `hwtstamp`. Checked by `tc_skb_ctx_rules`.
const SKB_CTX_LEN: usize = 192;
const SKB_LEN_OFF: usize = 0;
/// Copied to `skb->skb_iif`, which is what the program reads as `__sk_buff.ingress_ifindex`: a
/// test run does not derive it from the device.
const SKB_INGRESS_IFINDEX_OFF: usize = 36;
/// `bpf_prog_test_run_skb`: above 1 it must name a device of the caller's namespace (else
/// `ENODEV`), which becomes `skb->dev` (0 and 1: loopback).
const SKB_IFINDEX_OFF: usize = 40;

/// An skb test-run context: all zero but the two ifindexes.
fn skb_ctx(ifindex: u32, ingress_ifindex: u32) -> Vec<u8> {
    let mut ctx = vec![0u8; SKB_CTX_LEN];
    ctx[SKB_INGRESS_IFINDEX_OFF..SKB_INGRESS_IFINDEX_OFF + 4]
        .copy_from_slice(&ingress_ifindex.to_ne_bytes());
    ctx[SKB_IFINDEX_OFF..SKB_IFINDEX_OFF + 4].copy_from_slice(&ifindex.to_ne_bytes());
    ctx
}

fn ctx_u32(ctx: &[u8], off: usize) -> u32 {
    u32::from_ne_bytes(ctx[off..off + 4].try_into().expect("4 bytes"))
}

impl Hook {
    const ALL: [Self; 2] = [Self::Xdp, Self::Tc];

    const fn name(self) -> &'static str {
        match self {
            Self::Xdp => "xdp",
            Self::Tc => "tc",
        }
    }

    const fn program(self, side: Side) -> &'static str {
        match (self, side) {
            (Self::Xdp, Side::Pod) => XDP_PROGRAM,
            (Self::Tc, Side::Pod) => TC_PROGRAM,
            (Self::Xdp, Side::Uplink) => XDP_UPLINK_PROGRAM,
            (Self::Tc, Side::Uplink) => TC_UPLINK_PROGRAM,
        }
    }

    const fn pass_action(self) -> u32 {
        match self {
            Self::Xdp => XDP_PASS,
            Self::Tc => TC_ACT_OK,
        }
    }

    const fn redirect_action(self) -> u32 {
        match self {
            Self::Xdp => XDP_REDIRECT,
            Self::Tc => TC_ACT_REDIRECT,
        }
    }

    /// Loads (verifies) this hook's program of `side` of `ebpf`.
    fn load(self, ebpf: &mut Ebpf, side: Side) -> Result<()> {
        let name = self.program(side);
        let prog = ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("no program {name}"))?;
        match self {
            Self::Xdp => <&mut Xdp>::try_from(prog)?.load(),
            Self::Tc => <&mut SchedClassifier>::try_from(prog)?.load(),
        }
        .with_context(|| format!("loading {name} (verifier)"))
    }

    fn test_run(self, ebpf: &Ebpf, side: Side, opts: TestRunOptions<'_>) -> Result<TestRunResult> {
        let name = self.program(side);
        let prog = ebpf
            .program(name)
            .ok_or_else(|| anyhow!("no program {name}"))?;
        let result = match self {
            Self::Xdp => <&Xdp>::try_from(prog)?.test_run(opts),
            Self::Tc => <&SchedClassifier>::try_from(prog)?.test_run(opts),
        };
        result.context("BPF_PROG_TEST_RUN")
    }

    /// Whether the kernel may refuse to run this hook on `frame` at all (`EINVAL` before the
    /// program runs), for a reason of its own that has nothing to do with the datapath.
    ///
    /// TC: `bpf_prog_test_run_skb` rejects an IPv4 / IPv6 ethertype followed by less than a
    /// 20-byte IPv4 / 40-byte IPv6 header (upstream 12bec2bd4b76, "bpf: reject short IPv4/IPv6
    /// inputs in bpf_prog_test_run_skb", also in 6.18-stable; observed on 6.18: IPv4 frames of
    /// 14..=33 bytes and IPv6 frames of 14..=53 bytes are refused, every other ethertype runs
    /// from 14 bytes). A real runt frame can reach TC ingress (it runs before IP's own checks);
    /// only the test run refuses to build one. XDP: no such rule (anything from `ETH_HLEN` bytes
    /// runs).
    fn kernel_may_reject(self, frame: &[u8]) -> bool {
        match self {
            Self::Xdp => false,
            Self::Tc => {
                let Some(ethertype) = frame.get(12..14) else {
                    return false;
                };
                let l3 = frame.len() - ETH_HLEN;
                match u16::from_be_bytes([ethertype[0], ethertype[1]]) {
                    ETH_P_IP => l3 < 20,
                    ETH_P_IPV6 => l3 < 40,
                    _ => false,
                }
            }
        }
    }

    /// The test-run context for `frame` received on `ingress`.
    fn ctx_in(self, frame: &[u8], ingress: u32) -> Result<Vec<u8>> {
        Ok(match self {
            // struct xdp_md { data, data_end, data_meta, ingress_ifindex, rx_queue_index,
            // egress_ifindex }: the kernel wants data_end == the frame's length, data_meta 0.
            Self::Xdp => [0, u32::try_from(frame.len())?, 0, ingress, 0, 0]
                .iter()
                .flat_map(|w| w.to_ne_bytes())
                .collect(),
            // Received on the device `ingress`, as the TCX ingress hook sees it.
            Self::Tc => skb_ctx(ingress, ingress),
        })
    }

    /// Makes `ports` (ifindex, device name, `ATT_ROLE_*`) redirect targets of this hook:
    /// `TX_PORTS` entries for XDP, `ATTACHMENTS` records with that role for TC.
    fn register_targets(self, ebpf: &mut Ebpf, ports: &[(u32, &str, u8)]) -> Result<()> {
        match self {
            Self::Xdp => {
                let map = ebpf.map_mut(map_names::TX_PORTS).context("TX_PORTS")?;
                let mut tx: DevMapHash<&mut MapData> = DevMapHash::try_from(map)?;
                for &(port, _, _) in ports {
                    tx.insert(port, port, None, 0)?;
                }
            }
            Self::Tc => {
                let map = ebpf
                    .map_mut(map_names::ATTACHMENTS)
                    .context("ATTACHMENTS")?;
                let mut att: HashMap<&mut MapData, u32, Attachment> = HashMap::try_from(map)?;
                for &(port, dev, role) in ports {
                    let mut name = [0u8; 16];
                    name[..dev.len()].copy_from_slice(dev.as_bytes());
                    let record = Attachment {
                        ifindex: port,
                        datapath: ATT_DATAPATH_TC,
                        mode: ATT_MODE_TCX,
                        prep_flags: 0,
                        role,
                        name,
                    };
                    att.insert(port, record, 0)?;
                }
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The bench: a private network namespace, the loaded program, the filled maps.

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Runs `f` on a new thread inside a new, private network namespace (gone when the thread ends);
/// returns its error, and resumes its panic.
fn in_private_netns(name: &str, f: impl FnOnce() -> Result<()> + Send + 'static) -> Result<()> {
    let handle = std::thread::Builder::new()
        .name(format!("{name}-netns"))
        .spawn(move || -> Result<()> {
            // SAFETY: affects only this thread, which ends with the test.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                bail!("unshare(CLONE_NEWNET): {}", std::io::Error::last_os_error());
            }
            f()
        })
        .expect("spawn test thread");
    match handle.join() {
        Ok(result) => result,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip")?;
    ensure!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// Runs `commands` (one `ip` command each, without the `ip`) in one `ip -batch` process, which
/// stops at the first that fails.
fn ip_batch(commands: &[String]) -> Result<()> {
    use std::io::Write as _;
    let mut child = Command::new("ip")
        .args(["-batch", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("running ip -batch")?;
    child
        .stdin
        .take()
        .context("ip -batch stdin")?
        .write_all(commands.join("\n").as_bytes())?;
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "ip -batch: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// Writes a sysctl of the calling thread's network namespace (`/proc/sys/net` resolves in the
/// namespace of the task that opens it).
fn sysctl(path: &str, value: &str) -> Result<()> {
    std::fs::write(format!("/proc/sys/{path}"), value).with_context(|| format!("sysctl {path}"))
}

fn mac_str(mac: [u8; 6]) -> String {
    integration_tests::mac_str(mac)
}

fn ifindex(name: &str) -> Result<u32> {
    let c = std::ffi::CString::new(name)?;
    // SAFETY: valid NUL-terminated string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    ensure!(
        i != 0,
        "if_nametoindex({name}): {}",
        std::io::Error::last_os_error()
    );
    Ok(i)
}

/// The errno of a failed syscall somewhere in `e`'s chain.
fn errno(e: &anyhow::Error) -> Option<i32> {
    e.chain()
        .filter_map(|c| c.downcast_ref::<std::io::Error>())
        .find_map(std::io::Error::raw_os_error)
}

struct Bench {
    hook: Hook,
    ebpf: Ebpf,
    a: u32,
    b: u32,
    c: u32,
    d: u32,
    up: u32,
    up2: u32,
    plain: u32,
    no_fwd: u32,
}

/// One test run's outcome.
struct Outcome {
    action: u32,
    data_out: Vec<u8>,
    deltas: Vec<Counter>,
}

/// How one case went.
enum Checked {
    /// Everything matched.
    Passed,
    /// The kernel refused the run as `Hook::kernel_may_reject` describes (`EINVAL`, no counter
    /// moved): the program never saw the frame, so there is nothing more to check.
    RejectedByKernel,
    /// Everything that did not match.
    Failed(String),
}

impl Bench {
    /// Must be called inside the private namespace. Devices: the pod veths xa, xb, ya, za (pods
    /// A, B, C and the other hook's target) and fa (forwarding off); the uplinks ua and wa (their
    /// peers ub and wb stand for the wire); va, a routed device that is no uplink. Routes: the
    /// remote pod prefixes (see [`RS_MESHED`] and the other sub-prefixes) via gateways with
    /// permanent neighbour entries. Forwarding on but on fa.
    fn new(hook: Hook) -> Result<Self> {
        let mut cmds: Vec<String> = [
            "link add xa type veth peer name xb",
            "link add ya type veth peer name yb",
            "link add za type veth peer name zb",
        ]
        .map(String::from)
        .to_vec();
        for (dev, peer, mac) in [
            ("fa", "fb", HOST_F_MAC),
            ("ua", "ub", UP_MAC),
            ("wa", "wb", UP2_MAC),
            ("va", "vb", PLAIN_MAC),
        ] {
            cmds.push(format!(
                "link add {dev} address {} type veth peer name {peer}",
                mac_str(mac)
            ));
        }
        for dev in [
            "lo", "xa", "xb", "ya", "yb", "za", "zb", "fa", "fb", "ua", "ub", "wa", "wb", "va",
            "vb",
        ] {
            cmds.push(format!("link set {dev} up"));
        }
        // Each routed device: its address (192.168.x.1, fdx::1) and its gateway (.2, ::2).
        for (dev, x, gw) in [
            ("ua", 50, GW_MAC),
            ("va", 51, PLAIN_GW_MAC),
            ("wa", 52, GW2_MAC),
        ] {
            cmds.extend([
                format!("addr add 192.168.{x}.1/24 dev {dev}"),
                format!("addr add fd{x}::1/64 dev {dev} nodad"),
                format!(
                    "neigh add 192.168.{x}.2 lladdr {} dev {dev} nud permanent",
                    mac_str(gw)
                ),
                format!(
                    "neigh add fd{x}::2 lladdr {} dev {dev} nud permanent",
                    mac_str(gw)
                ),
            ]);
        }
        let prefix = |s: u8, v6: bool| {
            let a = remote(s, 0);
            if v6 {
                format!("{}/64", std::net::Ipv6Addr::from(a.v6))
            } else {
                format!("{}/24", std::net::Ipv4Addr::from(a.v4))
            }
        };
        for v6 in [false, true] {
            let (gw, via) = if v6 { ("fd", "::") } else { ("192.168.", ".") };
            let whole = if v6 { "fd01::/48" } else { "10.245.0.0/16" };
            cmds.extend([
                format!("route add {whole} via {gw}50{via}2 dev ua"),
                // No neighbour entry for .3 / ::3.
                format!(
                    "route add {} via {gw}50{via}3 dev ua",
                    prefix(RS_NO_NEIGH, v6)
                ),
                format!("route add unreachable {}", prefix(RS_UNREACHABLE, v6)),
                format!("route add blackhole {}", prefix(RS_BLACKHOLE, v6)),
                format!(
                    "route add {} via {gw}51{via}2 dev va",
                    prefix(RS_VIA_PLAIN, v6)
                ),
                format!(
                    "route add {} via {gw}52{via}2 dev wa",
                    prefix(RS_VIA_UP2, v6)
                ),
                format!(
                    "route add {} via {gw}50{via}2 dev ua mtu lock {ROUTE_MTU}",
                    prefix(RS_ROUTE_MTU, v6)
                ),
            ]);
        }
        ip_batch(&cmds)?;
        // After the devices exist: "all" is copied to every device, then fa is set apart.
        sysctl("net/ipv4/ip_forward", "1")?;
        sysctl("net/ipv6/conf/all/forwarding", "1")?;
        sysctl("net/ipv4/conf/fa/forwarding", "0")?;
        sysctl("net/ipv6/conf/fa/forwarding", "0")?;
        ensure!(ifindex("lo")? == 1, "loopback is not ifindex 1");

        let mut ebpf = Ebpf::load(EBPF_OBJECT).context("loading the eBPF object")?;
        hook.load(&mut ebpf, Side::Pod)?;
        hook.load(&mut ebpf, Side::Uplink)?;

        let mut bench = Self {
            hook,
            ebpf,
            a: ifindex("xa")?,
            b: ifindex("xb")?,
            c: ifindex("ya")?,
            d: ifindex("za")?,
            up: ifindex("ua")?,
            up2: ifindex("wa")?,
            plain: ifindex("va")?,
            no_fwd: ifindex("fa")?,
        };
        bench.fill_maps()?;
        Ok(bench)
    }

    fn ifindex(&self, port: Port) -> u32 {
        match port {
            Port::Lo => 1,
            Port::A => self.a,
            Port::B => self.b,
            Port::C => self.c,
            Port::D => self.d,
            Port::Fake => FAKE_IFINDEX,
            Port::Up => self.up,
            Port::Up2 => self.up2,
            Port::Plain => self.plain,
            Port::NoFwd => self.no_fwd,
        }
    }

    fn endpoint(&self, spec: &EndpointSpec) -> Endpoint {
        Endpoint {
            ifindex: self.ifindex(spec.port),
            flags: if spec.meshed { EP_F_MESHED } else { 0 },
            pod_mac: spec.pod_mac,
            host_mac: spec.host_mac,
        }
    }

    fn fill_maps(&mut self) -> Result<()> {
        let values: Vec<(u8, Endpoint)> =
            ENDPOINTS.iter().map(|s| (s.n, self.endpoint(s))).collect();
        {
            let map = self
                .ebpf
                .map_mut(map_names::ENDPOINTS_V4)
                .context("ENDPOINTS_V4")?;
            let mut trie: LpmTrie<&mut MapData, [u8; 4], Endpoint> = LpmTrie::try_from(map)?;
            for (n, ep) in &values {
                trie.insert(&Key::new(32, v4(*n)), ep, 0)?;
            }
        }
        {
            let map = self
                .ebpf
                .map_mut(map_names::ENDPOINTS_V6)
                .context("ENDPOINTS_V6")?;
            let mut trie: LpmTrie<&mut MapData, [u8; 16], Endpoint> = LpmTrie::try_from(map)?;
            for (n, ep) in &values {
                trie.insert(&Key::new(128, v6(*n)), ep, 0)?;
            }
        }
        // The pod veths, then the uplinks as `xdp-ctl attach --uplink` registers them: ua a
        // `TX_PORTS` member (XDP-attached), wa none (as if TC-attached); both in `ATTACHMENTS`
        // with the uplink role (TC).
        let mut own = vec![
            (self.a, "xa", ATT_ROLE_POD),
            (self.b, "xb", ATT_ROLE_POD),
            (self.c, "ya", ATT_ROLE_POD),
            (self.up, "ua", ATT_ROLE_UPLINK),
        ];
        if self.hook == Hook::Tc {
            own.push((self.up2, "wa", ATT_ROLE_UPLINK));
        }
        let other = [(self.d, "za", ATT_ROLE_POD)];
        for hook in Hook::ALL {
            let ports: &[(u32, &str, u8)] = if hook == self.hook { &own } else { &other };
            hook.register_targets(&mut self.ebpf, ports)?;
        }
        self.fill_cross_node_maps()
    }

    /// `UPLINKS` (ua, wa) and the remote prefixes (`REMOTE_V4`, `REMOTE_V6`).
    fn fill_cross_node_maps(&mut self) -> Result<()> {
        {
            let map = self.ebpf.map_mut(map_names::UPLINKS).context("UPLINKS")?;
            let mut uplinks: HashMap<&mut MapData, u32, Uplink> = HashMap::try_from(map)?;
            for (ifindex, mac) in [(self.up, UP_MAC), (self.up2, UP2_MAC)] {
                uplinks.insert(ifindex, Uplink { mac, pad: [0; 2] }, 0)?;
            }
        }
        let meshed = |uplink| Remote {
            flags: REMOTE_F_MESHED,
            uplink,
        };
        // (sub-prefix or the whole, value)
        let prefixes = [
            (None, meshed(0)),
            (
                Some(RS_EXCEPTION),
                Remote {
                    flags: 0,
                    uplink: 0,
                },
            ),
            (Some(RS_NAMES_UP2), meshed(self.up2)),
            (Some(RS_NAMES_UP), meshed(self.up)),
        ];
        {
            let map = self
                .ebpf
                .map_mut(map_names::REMOTE_V4)
                .context("REMOTE_V4")?;
            let mut trie: LpmTrie<&mut MapData, [u8; 4], Remote> = LpmTrie::try_from(map)?;
            for (s, value) in &prefixes {
                let key = match s {
                    None => Key::new(16, remote(0, 0).v4),
                    Some(s) => Key::new(24, remote(*s, 0).v4),
                };
                trie.insert(&key, value, 0)?;
            }
        }
        let map = self
            .ebpf
            .map_mut(map_names::REMOTE_V6)
            .context("REMOTE_V6")?;
        let mut trie: LpmTrie<&mut MapData, [u8; 16], Remote> = LpmTrie::try_from(map)?;
        for (s, value) in &prefixes {
            let key = match s {
                None => Key::new(48, remote(0, 0).v6),
                Some(s) => Key::new(64, remote(*s, 0).v6),
            };
            trie.insert(&key, value, 0)?;
        }
        Ok(())
    }

    /// Whether `socket` is in `KERNEL_SOCKETS`.
    fn kernel_socket(&self, socket: &SocketKey) -> Result<bool> {
        let map = self
            .ebpf
            .map(map_names::KERNEL_SOCKETS)
            .context("KERNEL_SOCKETS")?;
        let sockets: HashMap<&MapData, SocketKey, u32> = HashMap::try_from(map)?;
        match sockets.get(socket, 0) {
            Ok(_) => Ok(true),
            Err(aya::maps::MapError::KeyNotFound) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Per-reason totals, summed over CPUs.
    fn counters(&self) -> Result<Vec<Counter>> {
        let map = self.ebpf.map(map_names::COUNTERS).context("COUNTERS")?;
        let counters: PerCpuArray<&MapData, Counter> = PerCpuArray::try_from(map)?;
        Reason::ALL
            .iter()
            .map(|r| {
                let per_cpu = counters.get(&u32::from(*r as u8), 0)?;
                Ok(per_cpu.iter().fold(Counter::default(), |acc, c| Counter {
                    packets: acc.packets + c.packets,
                    bytes: acc.bytes + c.bytes,
                }))
            })
            .collect()
    }

    /// Runs `frame` once through the program of `side`, as if received on `ingress`.
    fn run(&self, side: Side, frame: &[u8], ingress: u32) -> Result<Outcome> {
        self.run_with_ctx(side, frame, &self.hook.ctx_in(frame, ingress)?)
    }

    /// Runs `frame` once through the program of `side` with the test-run context `ctx`.
    fn run_with_ctx(&self, side: Side, frame: &[u8], ctx: &[u8]) -> Result<Outcome> {
        let before = self.counters()?;
        let mut data_out = vec![0u8; frame.len() + 256];
        let result = self.hook.test_run(
            &self.ebpf,
            side,
            TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut data_out),
                ctx_in: Some(ctx),
                repeat: 1,
                ..TestRunOptions::default()
            },
        )?;
        data_out.truncate(usize::try_from(result.data_size_out)?);
        let after = self.counters()?;
        let deltas = before
            .iter()
            .zip(&after)
            .map(|(b, a)| Counter {
                packets: a.packets - b.packets,
                bytes: a.bytes - b.bytes,
            })
            .collect();
        Ok(Outcome {
            action: result.return_value,
            data_out,
            deltas,
        })
    }

    /// What `case` must give: its counter's reason, the action and the output frame.
    fn expected(&self, case: &Case) -> (Reason, u32, Vec<u8>) {
        let macs = match case.expect {
            Expect::Pass(r) => return (r, self.hook.pass_action(), case.frame.clone()),
            Expect::Redirect(n) => {
                let ep = endpoint_spec(n);
                Macs {
                    dst: ep.pod_mac,
                    src: ep.host_mac,
                }
            }
            Expect::Out(macs) => macs,
        };
        (
            Reason::Redirected,
            self.hook.redirect_action(),
            rewritten(&case.frame, macs),
        )
    }

    /// Runs one case and compares everything.
    fn check(&self, case: &Case) -> Result<Checked> {
        let failed = |problems: &str| {
            Checked::Failed(format!("{}/{}:{problems}", self.hook.name(), case.name))
        };
        let before = self.counters()?;
        let socket = match case.marks {
            Some(_) => {
                let socket = source_socket(&case.frame)?;
                if self.kernel_socket(&socket)? {
                    return Ok(failed(
                        "\n    its source socket is in KERNEL_SOCKETS before the run",
                    ));
                }
                Some(socket)
            }
            None => None,
        };
        let out = match self.run(case.side, &case.frame, self.ifindex(case.ingress)) {
            Ok(out) => out,
            // Only a refusal the kernel documents, and only if it is exactly that: EINVAL and
            // nothing counted. A kernel that accepts the frame gets the full check below.
            Err(e) if self.hook.kernel_may_reject(&case.frame) => {
                let mut problems = String::new();
                if errno(&e) != Some(libc::EINVAL) {
                    let _ = write!(
                        problems,
                        "\n    test run refused with {e:#}, expected EINVAL (short L3 header)"
                    );
                }
                if self.counters()? != before {
                    let _ = write!(problems, "\n    counters moved on a refused test run");
                }
                return Ok(if problems.is_empty() {
                    Checked::RejectedByKernel
                } else {
                    failed(&problems)
                });
            }
            Err(e) => return Err(e),
        };
        let (reason, action, expected_frame) = self.expected(case);
        let mut problems = String::new();
        if out.action != action {
            let _ = write!(
                problems,
                "\n    action: expected {action}, got {}",
                out.action
            );
        }
        if let Some(p) = counter_problem(reason, u64::try_from(case.frame.len())?, &out.deltas) {
            problems.push_str(&p);
        }
        if out.data_out != expected_frame {
            let _ = write!(
                problems,
                "\n    frame out differs ({}){}",
                if matches!(case.expect, Expect::Pass(_)) {
                    "a pass must leave the frame unchanged"
                } else {
                    "redirect rewrite"
                },
                frame_diff(&expected_frame, &out.data_out)
            );
        }
        if !matches!(case.expect, Expect::Pass(_))
            && u16::from_be_bytes([case.frame[12], case.frame[13]]) == ETH_P_IP
        {
            let hlen = usize::from(case.frame[ETH_HLEN] & 0x0f) * 4;
            let hdr = out
                .data_out
                .get(ETH_HLEN..ETH_HLEN + hlen)
                .unwrap_or_default();
            if !ipv4_checksum_valid(hdr) {
                let _ = write!(problems, "\n    IPv4 header checksum invalid after rewrite");
            }
        }
        if let (Some(want), Some(socket)) = (case.marks, socket) {
            if self.kernel_socket(&socket)? != want {
                let _ = write!(
                    problems,
                    "\n    KERNEL_SOCKETS: its source socket {}",
                    if want { "was not marked" } else { "was marked" }
                );
            }
        }
        Ok(if problems.is_empty() {
            Checked::Passed
        } else {
            failed(&problems)
        })
    }

    /// Runs every case (all of them, even after a failure) and fails listing each mismatch.
    fn check_all(&self, cases: &[Case]) -> Result<()> {
        let hook = self.hook.name();
        let mut names = std::collections::HashSet::new();
        let mut failures = Vec::new();
        let mut rejected = Vec::new();
        for case in cases {
            ensure!(
                names.insert(case.name.as_str()),
                "duplicate case name {}",
                case.name
            );
            match self
                .check(case)
                .with_context(|| format!("{hook}/{}", case.name))?
            {
                Checked::Passed => {}
                Checked::RejectedByKernel => rejected.push(format!("{hook}/{}", case.name)),
                Checked::Failed(f) => failures.push(f),
            }
        }
        ensure!(
            failures.is_empty(),
            "{hook}: {} of {} cases failed:\n  {}",
            failures.len(),
            cases.len(),
            failures.join("\n  ")
        );
        if rejected.is_empty() {
            eprintln!("{hook}: {} cases passed", cases.len());
        } else {
            eprintln!(
                "{hook}: {} cases passed, {} refused by the kernel before the program ran ({})",
                cases.len() - rejected.len(),
                rejected.len(),
                rejected.join(", ")
            );
        }
        Ok(())
    }
}

/// Unless exactly `reason` moved, by one packet of `len` bytes, and nothing else: what moved.
fn counter_problem(reason: Reason, len: u64, deltas: &[Counter]) -> Option<String> {
    let want = Counter {
        packets: 1,
        bytes: len,
    };
    let only_expected_moved = Reason::ALL.iter().zip(deltas).all(|(r, d)| {
        if *r == reason {
            *d == want
        } else {
            *d == Counter::default()
        }
    });
    if only_expected_moved {
        return None;
    }
    let moved: Vec<String> = Reason::ALL
        .iter()
        .zip(deltas)
        .filter(|(_, d)| d.packets != 0 || d.bytes != 0)
        .map(|(r, d)| format!("{} +{} pkts +{} bytes", r.name(), d.packets, d.bytes))
        .collect();
    Some(format!(
        "\n    counters: expected only {} +1 pkts +{len} bytes, got [{}]",
        reason.name(),
        moved.join(", ")
    ))
}

/// Where two frames differ: both whole if short, else their lengths and the 64 bytes from the
/// first difference on.
fn frame_diff(expected: &[u8], got: &[u8]) -> String {
    const WHOLE: usize = 128;
    if expected.len() <= WHOLE && got.len() <= WHOLE {
        return format!(
            ":\n      expected {}\n      got      {}",
            hex(expected),
            hex(got)
        );
    }
    let first = expected
        .iter()
        .zip(got)
        .position(|(e, g)| e != g)
        .unwrap_or_else(|| expected.len().min(got.len()));
    let window = |f: &[u8]| hex(&f[first.min(f.len())..(first + 64).min(f.len())]);
    format!(
        " at byte {first} (lengths {} and {}), from there:\n      expected {}\n      got      {}",
        expected.len(),
        got.len(),
        window(expected),
        window(got)
    )
}

fn hex(b: &[u8]) -> String {
    b.iter().fold(String::new(), |mut s, x| {
        let _ = write!(s, "{x:02x}");
        s
    })
}

/// Fails when not root; otherwise runs `f` once per hook, each on a fresh bench in its
/// own private namespace, and fails listing every hook's failures.
fn for_each_hook(test: &str, f: impl Fn(&Bench) -> Result<()> + Copy + Send + 'static) {
    assert!(
        is_root(),
        "{test}: BPF_PROG_TEST_RUN and network namespaces need root; run scripts/test.sh"
    );
    let failures: Vec<String> = Hook::ALL
        .into_iter()
        .filter_map(|hook| {
            in_private_netns(&format!("{test}/{}", hook.name()), move || {
                f(&Bench::new(hook)?)
            })
            .err()
            .map(|e| format!("{}: {e:#}", hook.name()))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{test} failed:\n{}",
        failures.join("\n")
    );
}

/// Runs the table `cases` through both hooks.
fn run_cases(test: &str, cases: fn() -> Vec<Case>) {
    for_each_hook(test, move |bench| bench.check_all(&cases()));
}

// ---------------------------------------------------------------------------------------------
// Tests.

fn redirect_cases() -> Vec<Case> {
    let (a, b, c) = (v4(EP_A), v4(EP_B), v4(EP_C));
    let mut padded = V4::udp(a, b);
    padded.payload = udp(b"hi");
    let padded = {
        // Ethernet minimum size: trailing padding after the IP packet is carried along.
        let mut f = padded.frame();
        f.resize(60, 0);
        f
    };
    let mut tcp4 = V4::udp(a, b);
    tcp4.proto = IPPROTO_TCP;
    tcp4.payload = tcp(PAYLOAD);
    vec![
        redirect("v4 udp a->b", V4::udp(a, b).frame(), EP_B),
        redirect("v4 tcp a->b", tcp4.frame(), EP_B),
        redirect(
            "v4 udp a->c (MACs from the destination entry)",
            V4::udp(a, c).frame(),
            EP_C,
        ),
        redirect(
            "v4 ttl 2",
            V4 {
                ttl: 2,
                ..V4::udp(a, b)
            }
            .frame(),
            EP_B,
        ),
        redirect(
            "v4 ttl 255",
            V4 {
                ttl: 255,
                ..V4::udp(a, b)
            }
            .frame(),
            EP_B,
        ),
        redirect(
            "v4 no DF",
            V4 {
                frag: 0,
                ..V4::udp(a, b)
            }
            .frame(),
            EP_B,
        ),
        redirect("v4 ethernet padding", padded, EP_B),
        redirect("v6 tcp a->b", V6::tcp(v6(EP_A), v6(EP_B)).frame(), EP_B),
        redirect("v6 udp a->c", V6::udp(v6(EP_A), v6(EP_C)).frame(), EP_C),
        redirect(
            "v6 hop limit 2",
            V6 {
                hop: 2,
                ..V6::udp(v6(EP_A), v6(EP_B))
            }
            .frame(),
            EP_B,
        ),
        redirect(
            "v6 icmpv6 echo request",
            V6::icmp(128, v6(EP_B)).frame(),
            EP_B,
        ),
    ]
}

#[test]
#[ignore = "needs root: run scripts/test.sh"]
fn redirects_rewrite_macs_and_ttl() {
    run_cases("redirects_rewrite_macs_and_ttl", redirect_cases);
}

/// Destinations that pass every check but whose veth is no redirect target of the hook (not in
/// `TX_PORTS` for XDP, not in `ATTACHMENTS` for TC): passed unchanged, counted as
/// `tx_port_missing`, never rewritten.
fn tx_port_cases() -> Vec<Case> {
    vec![
        pass(
            "v4 to endpoint not a redirect target",
            V4::udp(v4(EP_A), v4(EP_NO_TX)).frame(),
            Reason::TxPortMissing,
        ),
        pass(
            "v6 to endpoint not a redirect target",
            V6::tcp(v6(EP_A), v6(EP_NO_TX)).frame(),
            Reason::TxPortMissing,
        ),
        pass(
            "v4 to endpoint registered only in the other hook's map",
            V4::udp(v4(EP_A), v4(EP_OTHER_HOOK)).frame(),
            Reason::TxPortMissing,
        ),
        pass(
            "v6 to endpoint registered only in the other hook's map",
            V6::tcp(v6(EP_A), v6(EP_OTHER_HOOK)).frame(),
            Reason::TxPortMissing,
        ),
    ]
}

#[test]
#[ignore = "needs root: run scripts/test.sh"]
fn missing_tx_port_passes_unchanged() {
    run_cases("missing_tx_port_passes_unchanged", tx_port_cases);
}

#[allow(clippy::too_many_lines, reason = "one table")]
fn malformed_cases() -> Vec<Case> {
    let (a, b) = (v4(EP_A), v4(EP_B));
    let full4 = V4::udp(a, b).frame();
    let full6 = V6::udp(v6(EP_A), v6(EP_B)).frame();
    let mut ihl15 = V4::udp(a, b);
    ihl15.options = vec![1; 40]; // NOPs: a 60-byte header
    let mut ra = V4::udp(a, b);
    ra.options = vec![0x94, 0x04, 0x00, 0x00]; // router alert
    let hbh = [IPPROTO_UDP, 0, 1, 4, 0, 0, 0, 0]; // next UDP, PadN
    let mut no_icmp_type = V6::new(IPPROTO_ICMPV6, Vec::new(), v6(EP_A), v6(EP_B));
    no_icmp_type.hop = 255;
    vec![
        // Ethernet / L2.
        pass(
            "ethernet header only, ethertype IPv4",
            full4[..ETH_HLEN].to_vec(),
            Reason::Malformed,
        ),
        pass(
            "ethernet header only, ethertype IPv6",
            full6[..ETH_HLEN].to_vec(),
            Reason::Malformed,
        ),
        pass("ARP", arp(), Reason::NotIp),
        pass(
            "LLDP",
            ethernet([0x01, 0x80, 0xc2, 0, 0, 0x0e], ETH_P_LLDP, &[0; 46]),
            Reason::NotIp,
        ),
        pass("802.1Q tag", vlan(ETH_P_8021Q), Reason::Vlan),
        pass("802.1ad tag", vlan(ETH_P_8021AD), Reason::Vlan),
        // IPv4 header sanity.
        pass(
            "v4 header truncated (19 of 20 bytes)",
            full4[..ETH_HLEN + 19].to_vec(),
            Reason::Malformed,
        ),
        pass(
            "v4 IHL 4",
            V4 {
                ihl: Some(4),
                ..V4::udp(a, b)
            }
            .frame(),
            Reason::Malformed,
        ),
        pass(
            "v4 IHL 0",
            V4 {
                ihl: Some(0),
                ..V4::udp(a, b)
            }
            .frame(),
            Reason::Malformed,
        ),
        pass(
            "v4 version 6 in an IPv4 ethertype",
            V4 {
                version: 6,
                ..V4::udp(a, b)
            }
            .frame(),
            Reason::Malformed,
        ),
        pass(
            "v4 total length beyond the frame",
            V4 {
                total_len: Some(len16(full4.len() - ETH_HLEN + 1)),
                ..V4::udp(a, b)
            }
            .frame(),
            Reason::Malformed,
        ),
        pass(
            "v4 total length 19",
            V4 {
                total_len: Some(19),
                ..V4::udp(a, b)
            }
            .frame(),
            Reason::Malformed,
        ),
        pass(
            "v4 options (IHL 6, router alert)",
            ra.frame(),
            Reason::Ipv4Options,
        ),
        pass("v4 options (IHL 15)", ihl15.frame(), Reason::Ipv4Options),
        pass(
            "v4 fragment: MF",
            V4 {
                frag: 0x2000,
                ..V4::udp(a, b)
            }
            .frame(),
            Reason::Fragment,
        ),
        pass(
            "v4 fragment: offset 8",
            V4 {
                frag: 0x0001,
                ..V4::udp(a, b)
            }
            .frame(),
            Reason::Fragment,
        ),
        pass(
            "v4 fragment: last (offset, DF clear)",
            V4 {
                frag: 0x00b9,
                ..V4::udp(a, b)
            }
            .frame(),
            Reason::Fragment,
        ),
        // IPv6 header sanity.
        pass(
            "v6 header truncated (39 of 40 bytes)",
            full6[..ETH_HLEN + 39].to_vec(),
            Reason::Malformed,
        ),
        pass(
            "v6 version 4 in an IPv6 ethertype",
            V6 {
                version: 4,
                ..V6::udp(v6(EP_A), v6(EP_B))
            }
            .frame(),
            Reason::Malformed,
        ),
        pass(
            "v6 payload length beyond the frame",
            V6 {
                payload_len: Some(len16(full6.len() - ETH_HLEN - 40 + 1)),
                ..V6::udp(v6(EP_A), v6(EP_B))
            }
            .frame(),
            Reason::Malformed,
        ),
        pass(
            "v6 icmpv6 without its type byte",
            no_icmp_type.frame(),
            Reason::Malformed,
        ),
        pass(
            "v6 hop-by-hop header",
            V6::with_ext(IPPROTO_HOPOPTS, hbh).frame(),
            Reason::Ipv6ExtHeader,
        ),
        pass(
            "v6 routing header",
            V6::with_ext(IPPROTO_ROUTING, [IPPROTO_UDP, 0, 4, 0, 0, 0, 0, 0]).frame(),
            Reason::Ipv6ExtHeader,
        ),
        pass(
            "v6 destination options header",
            V6::with_ext(IPPROTO_DSTOPTS, hbh).frame(),
            Reason::Ipv6ExtHeader,
        ),
        pass(
            "v6 fragment header",
            V6::with_ext(
                IPPROTO_FRAGMENT,
                [IPPROTO_UDP, 0, 0, 1, 0xde, 0xad, 0xbe, 0xef],
            )
            .frame(),
            Reason::Fragment,
        ),
    ]
}

#[test]
#[ignore = "needs root: run scripts/test.sh"]
fn malformed_and_unsupported_headers_pass() {
    run_cases("malformed_and_unsupported_headers_pass", malformed_cases);
}

#[allow(clippy::too_many_lines, reason = "one table")]
fn not_unicast_cases() -> Vec<Case> {
    let (a, b) = (v4(EP_A), v4(EP_B));
    let (a6, b6) = (v6(EP_A), v6(EP_B));
    let all_nodes = addr6("ff02::1");
    let link_local = addr6("fe80::1");
    let loopback6 = addr6("::1");
    let solicited_node = addr6("ff02::1:ff00:2");
    vec![
        pass(
            "L2 broadcast",
            V4::udp(a, b).frame_to(BROADCAST_MAC),
            Reason::NotUnicast,
        ),
        pass(
            "L2 multicast (v4)",
            V4::udp(a, b).frame_to(V4_MCAST_MAC),
            Reason::NotUnicast,
        ),
        pass(
            "L2 multicast (v6)",
            V6::udp(a6, b6).frame_to(V6_MCAST_MAC),
            Reason::NotUnicast,
        ),
        pass(
            "v4 dst 255.255.255.255",
            V4::udp(a, [255; 4]).frame(),
            Reason::NotUnicast,
        ),
        pass(
            "v4 dst 224.0.0.1",
            V4::udp(a, [224, 0, 0, 1]).frame(),
            Reason::NotUnicast,
        ),
        pass(
            "v4 dst 239.1.2.3",
            V4::udp(a, [239, 1, 2, 3]).frame(),
            Reason::NotUnicast,
        ),
        pass(
            "v4 dst 169.254.1.1",
            V4::udp(a, [169, 254, 1, 1]).frame(),
            Reason::NotUnicast,
        ),
        pass(
            "v4 dst 169.254.169.254",
            V4::udp(a, [169, 254, 169, 254]).frame(),
            Reason::NotUnicast,
        ),
        pass(
            "v4 dst 127.0.0.1",
            V4::udp(a, [127, 0, 0, 1]).frame(),
            Reason::NotUnicast,
        ),
        pass(
            "v4 dst 0.0.0.0",
            V4::udp(a, [0; 4]).frame(),
            Reason::NotUnicast,
        ),
        pass(
            "v6 dst ff02::1",
            V6::udp(a6, all_nodes).frame(),
            Reason::NotUnicast,
        ),
        pass(
            "v6 dst fe80::1",
            V6::udp(a6, link_local).frame(),
            Reason::NotUnicast,
        ),
        pass(
            "v6 dst ::1",
            V6::udp(a6, loopback6).frame(),
            Reason::NotUnicast,
        ),
        pass(
            "v6 dst ::",
            V6::udp(a6, [0; 16]).frame(),
            Reason::NotUnicast,
        ),
        pass(
            "v6 NS to solicited-node multicast",
            V6::icmp(135, solicited_node).frame(),
            Reason::NotUnicast,
        ),
        pass(
            "v6 NS to a unicast endpoint",
            V6::icmp(135, b6).frame(),
            Reason::Ndp,
        ),
        pass(
            "v6 NA to a unicast endpoint",
            V6::icmp(136, b6).frame(),
            Reason::Ndp,
        ),
        pass(
            "v6 RS to a unicast endpoint",
            V6::icmp(133, b6).frame(),
            Reason::Ndp,
        ),
        pass(
            "v6 redirect to a unicast endpoint",
            V6::icmp(137, b6).frame(),
            Reason::Ndp,
        ),
    ]
}

#[test]
#[ignore = "needs root: run scripts/test.sh"]
fn non_unicast_and_ndp_pass() {
    run_cases("non_unicast_and_ndp_pass", not_unicast_cases);
}

#[allow(clippy::too_many_lines, reason = "one table")]
fn policy_cases() -> Vec<Case> {
    let v4p = |src: u8, dst: u8| V4::udp(v4(src), v4(dst));
    let v6p = |src: u8, dst: u8| V6::tcp(v6(src), v6(dst));
    vec![
        // TTL / hop limit.
        pass(
            "v4 ttl 1",
            V4 {
                ttl: 1,
                ..v4p(EP_A, EP_B)
            }
            .frame(),
            Reason::TtlExpired,
        ),
        pass(
            "v4 ttl 0",
            V4 {
                ttl: 0,
                ..v4p(EP_A, EP_B)
            }
            .frame(),
            Reason::TtlExpired,
        ),
        pass(
            "v6 hop limit 1",
            V6 {
                hop: 1,
                ..v6p(EP_A, EP_B)
            }
            .frame(),
            Reason::TtlExpired,
        ),
        pass(
            "v6 hop limit 0",
            V6 {
                hop: 0,
                ..v6p(EP_A, EP_B)
            }
            .frame(),
            Reason::TtlExpired,
        ),
        // Destination.
        pass(
            "v4 unknown destination",
            v4p(EP_A, NOT_EP).frame(),
            Reason::NoEndpoint,
        ),
        pass(
            "v4 off-node destination",
            V4::udp(v4(EP_A), [8, 8, 8, 8]).frame(),
            Reason::NoEndpoint,
        ),
        pass(
            "v6 unknown destination",
            v6p(EP_A, NOT_EP).frame(),
            Reason::NoEndpoint,
        ),
        pass(
            "v4 destination not meshed",
            v4p(EP_A, EP_B_UNMESHED).frame(),
            Reason::NotMeshed,
        ),
        pass(
            "v6 destination not meshed",
            v6p(EP_A, EP_B_UNMESHED).frame(),
            Reason::NotMeshed,
        ),
        pass(
            "v4 destination behind the ingress veth",
            v4p(EP_A, EP_A2).frame(),
            Reason::SameInterface,
        ),
        pass(
            "v6 destination behind the ingress veth",
            v6p(EP_A, EP_A2).frame(),
            Reason::SameInterface,
        ),
        // Source (anti-spoofing).
        pass(
            "v4 source not meshed",
            v4p(EP_A_UNMESHED, EP_B).frame(),
            Reason::NotMeshed,
        ),
        pass(
            "v6 source not meshed",
            v6p(EP_A_UNMESHED, EP_B).frame(),
            Reason::NotMeshed,
        ),
        pass(
            "v4 source not an endpoint",
            v4p(NOT_EP, EP_B).frame(),
            Reason::SrcMismatch,
        ),
        pass(
            "v4 source off-node",
            V4::udp([192, 0, 2, 1], v4(EP_B)).frame(),
            Reason::SrcMismatch,
        ),
        pass(
            "v6 source not an endpoint",
            v6p(NOT_EP, EP_B).frame(),
            Reason::SrcMismatch,
        ),
        pass(
            "v4 source behind another veth (spoofed)",
            v4p(EP_B2, EP_C).frame(),
            Reason::SrcMismatch,
        ),
        pass(
            "v6 source behind another veth (spoofed)",
            v6p(EP_B2, EP_C).frame(),
            Reason::SrcMismatch,
        ),
        pass(
            "v4 valid pair, wrong ingress (lo)",
            v4p(EP_A, EP_B).frame(),
            Reason::SrcMismatch,
        )
        .on(Port::Lo),
        pass(
            "v6 valid pair, wrong ingress (ya)",
            v6p(EP_A, EP_B).frame(),
            Reason::SrcMismatch,
        )
        .on(Port::C),
        pass(
            "v4 not to the host veth MAC",
            v4p(EP_A, EP_B).frame_to(HOST_B_MAC),
            Reason::NotToHost,
        ),
        pass(
            "v6 not to the host veth MAC",
            v6p(EP_A, EP_B).frame_to(POD_B_MAC),
            Reason::NotToHost,
        ),
        // The same valid pair, from the other side, is forwarded (the table is not one-way).
        redirect(
            "v4 b->a on xb",
            V4::udp(v4(EP_B), v4(EP_A)).frame_to(HOST_B_MAC),
            EP_A,
        )
        .on(Port::B),
        redirect(
            "v6 b->a on xb",
            V6::tcp(v6(EP_B), v6(EP_A)).frame_to(HOST_B_MAC),
            EP_A,
        )
        .on(Port::B),
    ]
}

#[test]
#[ignore = "needs root: run scripts/test.sh"]
fn endpoint_policy_and_ttl() {
    run_cases("endpoint_policy_and_ttl", policy_cases);
}

/// Frames shorter than an Ethernet header never reach either program under test run: the kernel
/// rejects them (`bpf_test_init`, shared by the XDP and the skb test run: size < `ETH_HLEN` ->
/// `EINVAL`). If a kernel ever accepts them, the program must count them as malformed and pass
/// them.
#[test]
#[ignore = "needs root: run scripts/test.sh"]
fn short_ethernet_frame() {
    for_each_hook("short_ethernet_frame", |bench| {
        let hook = bench.hook.name();
        let frame = V4::udp(v4(EP_A), v4(EP_B)).frame()[..10].to_vec();
        match bench.run(Side::Pod, &frame, bench.a) {
            Err(e) => {
                ensure!(
                    errno(&e) == Some(libc::EINVAL),
                    "expected EINVAL for a 10-byte frame, got {e:#}"
                );
                eprintln!("{hook}: kernel rejects a 10-byte frame as expected: {e:#}");
                Ok(())
            }
            Ok(_) => bench.check_all(&[pass("10-byte frame", frame, Reason::Malformed)]),
        }
    });
}

/// The `__sk_buff` rules of the skb test run that the TC bench relies on (see `SKB_CTX_LEN`),
/// checked on this kernel rather than assumed:
/// - the context is 192 bytes (`ctx_size_out`) and echoes `ifindex` (the device) and
///   `ingress_ifindex` back;
/// - the program's ingress is `ingress_ifindex` alone: the run does not derive it from
///   `ifindex`, so the bench sets both;
/// - `ifindex` must name an existing device, fields the kernel does not take must be zero, and
///   bytes past the struct must be zero.
#[test]
#[ignore = "needs root: run scripts/test.sh"]
fn tc_skb_ctx_rules() {
    assert!(
        is_root(),
        "tc_skb_ctx_rules: BPF_PROG_TEST_RUN and network namespaces need root; run scripts/test.sh"
    );
    let result = in_private_netns("tc_skb_ctx_rules", || {
        let bench = Bench::new(Hook::Tc)?;
        let frame = V4::udp(v4(EP_A), v4(EP_B)).frame();
        let only = |out: &Outcome, reason: Reason| {
            Reason::ALL.iter().zip(&out.deltas).all(|(r, d)| {
                *d == if *r == reason {
                    Counter {
                        packets: 1,
                        bytes: frame.len() as u64,
                    }
                } else {
                    Counter::default()
                }
            })
        };

        let mut data_out = vec![0u8; frame.len() + 256];
        let mut ctx_out = vec![0u8; SKB_CTX_LEN + 64];
        let ctx = skb_ctx(bench.a, bench.a);
        let result = bench.hook.test_run(
            &bench.ebpf,
            Side::Pod,
            TestRunOptions {
                data_in: Some(&frame),
                data_out: Some(&mut data_out),
                ctx_in: Some(&ctx),
                ctx_out: Some(&mut ctx_out),
                repeat: 1,
                ..TestRunOptions::default()
            },
        )?;
        ensure!(
            result.ctx_size_out as usize == SKB_CTX_LEN,
            "ctx_size_out {}, expected {SKB_CTX_LEN}",
            result.ctx_size_out
        );
        ensure!(
            ctx_u32(&ctx_out, SKB_IFINDEX_OFF) == bench.a
                && ctx_u32(&ctx_out, SKB_INGRESS_IFINDEX_OFF) == bench.a,
            "ctx out: ifindex {}, ingress_ifindex {}, expected {} for both",
            ctx_u32(&ctx_out, SKB_IFINDEX_OFF),
            ctx_u32(&ctx_out, SKB_INGRESS_IFINDEX_OFF),
            bench.a
        );
        ensure!(
            result.return_value == TC_ACT_REDIRECT,
            "a->b with ifindex = ingress_ifindex = xa: returned {}",
            result.return_value
        );

        // ingress_ifindex set, device left to the default (loopback): still redirected.
        let out = bench.run_with_ctx(Side::Pod, &frame, &skb_ctx(0, bench.a))?;
        ensure!(
            out.action == TC_ACT_REDIRECT && only(&out, Reason::Redirected),
            "ingress_ifindex = xa, ifindex 0: action {}, expected a redirect",
            out.action
        );
        // Device xa but ingress_ifindex 0: the program sees ingress 0, the source is spoofed.
        let out = bench.run_with_ctx(Side::Pod, &frame, &skb_ctx(bench.a, 0))?;
        ensure!(
            out.action == TC_ACT_OK && only(&out, Reason::SrcMismatch),
            "ifindex = xa, ingress_ifindex 0: action {}, expected a src_mismatch pass",
            out.action
        );

        let rejected =
            |ctx: &[u8], want: i32, what: &str| match bench.run_with_ctx(Side::Pod, &frame, ctx) {
                Ok(out) => bail!("{what}: accepted (action {})", out.action),
                Err(e) => {
                    ensure!(
                        errno(&e) == Some(want),
                        "{what}: {e:#}, expected errno {want}"
                    );
                    Ok(())
                }
            };
        rejected(
            &skb_ctx(FAKE_IFINDEX, bench.a),
            libc::ENODEV,
            "ifindex of no device",
        )?;
        let mut with_len = skb_ctx(bench.a, bench.a);
        with_len[SKB_LEN_OFF..SKB_LEN_OFF + 4]
            .copy_from_slice(&u32::try_from(frame.len())?.to_ne_bytes());
        rejected(&with_len, libc::EINVAL, "non-zero __sk_buff.len")?;
        let mut long = skb_ctx(bench.a, bench.a);
        long.extend_from_slice(&[0, 0, 0, 1]);
        rejected(&long, libc::E2BIG, "non-zero bytes past the struct")?;
        Ok(())
    });
    if let Err(e) = result {
        panic!("tc_skb_ctx_rules: {e:#}");
    }
}

/// Edge cases of `Reason`'s documentation ("Malformed: truncated or inconsistent header ...
/// lengths that do not fit the frame, IPv6 jumbogram"): the datapath must count them as
/// documented.
fn documented_malformed_cases() -> Vec<Case> {
    let (a, b) = (v4(EP_A), v4(EP_B));
    // IHL 6 (a 24-byte header) but the frame carries only 20 bytes of IP: a truncated header.
    let mut truncated_opts = V4 {
        ihl: Some(6),
        ..V4::udp(a, b)
    };
    truncated_opts.payload = Vec::new();
    // IHL 6 with its option present, but a total length (22) shorter than the header (24).
    let mut short_total = V4 {
        total_len: Some(22),
        ..V4::udp(a, b)
    };
    short_total.options = vec![0x94, 0x04, 0x00, 0x00];
    short_total.payload = Vec::new();
    // RFC 2675 jumbogram: payload length 0, hop-by-hop header with a jumbo payload option.
    let mut jumbo_payload = vec![IPPROTO_UDP, 0, 0xc2, 4];
    let udp = udp(PAYLOAD);
    jumbo_payload.extend_from_slice(&u32::try_from(8 + udp.len()).unwrap().to_be_bytes());
    jumbo_payload.extend_from_slice(&udp);
    let jumbo = V6 {
        payload_len: Some(0),
        ..V6::new(IPPROTO_HOPOPTS, jumbo_payload, v6(EP_A), v6(EP_B))
    };
    vec![
        pass(
            "v4 IHL 6 in a frame holding a 20-byte header",
            truncated_opts.frame(),
            Reason::Malformed,
        ),
        pass(
            "v4 total length 22 < header length 24",
            short_total.frame(),
            Reason::Malformed,
        ),
        // A jumbogram always carries a hop-by-hop header: documented as ipv6_ext_header.
        pass("v6 jumbogram", jumbo.frame(), Reason::Ipv6ExtHeader),
    ]
}

#[test]
#[ignore = "needs root: run scripts/test.sh"]
fn documented_malformed_edge_cases() {
    run_cases(
        "documented_malformed_edge_cases",
        documented_malformed_cases,
    );
}

// ---------------------------------------------------------------------------------------------
// The flow rule (rule 6): only flows the program saw start, untranslated, take the fast path.
// Cases run in order on one bench, so a case sees the flow table the cases before it left.

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_PSH: u8 = 0x08;
const TCP_ACK: u8 = 0x10;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_GRE: u8 = 47;
const IPPROTO_SCTP: u8 = 132;

/// A TCP segment `sport -> dport` with `flags`, sequence and acknowledgment numbers, and a
/// payload.
fn tcp_seg(sport: u16, dport: u16, flags: u8, seq: u32, ack: u32) -> Vec<u8> {
    let mut t = Vec::new();
    t.extend_from_slice(&sport.to_be_bytes());
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&seq.to_be_bytes());
    t.extend_from_slice(&ack.to_be_bytes());
    t.extend_from_slice(&[0x50, flags, 0xfa, 0xf0, 0xab, 0xcd, 0, 0]);
    t.extend_from_slice(PAYLOAD);
    t
}

fn udp_ports(sport: u16, dport: u16) -> Vec<u8> {
    let mut u = udp(PAYLOAD);
    u[0..2].copy_from_slice(&sport.to_be_bytes());
    u[2..4].copy_from_slice(&dport.to_be_bytes());
    u
}

/// An ICMP / ICMPv6 message: type, code 0, checksum (not verified), identifier, sequence.
fn icmp_msg(icmp_type: u8, id: u16) -> Vec<u8> {
    let mut m = vec![icmp_type, 0, 0x5a, 0x5a];
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&[0, 1]);
    m.extend_from_slice(PAYLOAD);
    m
}

fn v4_l4(src: u8, dst: u8, proto: u8, payload: Vec<u8>) -> V4 {
    V4 {
        proto,
        payload,
        ..V4::udp(v4(src), v4(dst))
    }
}

/// A frame from endpoint `src` to `dst` carrying `proto`/`payload`, as `src`'s pod sends it to
/// its host veth (A, B, or C's MAC), with `v6` choosing the family.
fn l4_frame(v6: bool, src: u8, dst: u8, proto: u8, payload: Vec<u8>) -> Vec<u8> {
    let host_mac = endpoint_spec(src).host_mac;
    if v6 {
        V6::new(proto, payload, addr_v6(src), addr_v6(dst)).frame_to(host_mac)
    } else {
        v4_l4(src, dst, proto, payload).frame_to(host_mac)
    }
}

/// `n` as an IPv6 endpoint address, or `NOT_EP`'s.
fn addr_v6(n: u8) -> [u8; 16] {
    v6(n)
}

/// The ingress port of endpoint `n`'s pod.
fn port_of(n: u8) -> Port {
    if n == NOT_EP {
        Port::A
    } else {
        endpoint_spec(n).port
    }
}

fn tcp_case(v6: bool, name: &str, src: u8, dst: u8, seg: Vec<u8>, expect: Expect) -> Case {
    let fam = if v6 { "v6" } else { "v4" };
    Case {
        name: format!("{fam} {name}"),
        frame: l4_frame(v6, src, dst, IPPROTO_TCP, seg),
        ingress: port_of(src),
        side: Side::Pod,
        expect,
        marks: None,
    }
}

/// A TCP connection's life, from A to B:8080, in one family.
#[expect(clippy::too_many_lines, reason = "a table of cases, one per line")]
fn tcp_flow_cases(v6: bool) -> Vec<Case> {
    use Expect::{Pass, Redirect};
    let (a, b) = (EP_A, EP_B);
    let t = |name: &str, src, dst, seg| tcp_case(v6, name, src, dst, seg, Redirect(dst));
    let k =
        |name: &str, src, dst, seg| tcp_case(v6, name, src, dst, seg, Pass(Reason::FlowNotSeen));
    vec![
        // Segments of flows the program never saw start: older than the attach, or born on the
        // kernel path (a DNAT'd connection's SYN-ACK, B -> A, answers a SYN to a VIP).
        k("ack, no flow", a, b, tcp_seg(41000, 8080, TCP_ACK, 1, 1)),
        k(
            "syn-ack, no flow",
            b,
            a,
            tcp_seg(8080, 41000, TCP_SYN | TCP_ACK, 1, 1),
        ),
        k("rst, no flow", a, b, tcp_seg(41000, 8080, TCP_RST, 1, 0)),
        k(
            "fin, no flow",
            a,
            b,
            tcp_seg(41000, 8080, TCP_FIN | TCP_ACK, 1, 1),
        ),
        // A connection born on the fast path, through its close.
        t(
            "syn starts a flow",
            a,
            b,
            tcp_seg(41000, 8080, TCP_SYN, 1000, 0),
        ),
        t(
            "retransmitted syn",
            a,
            b,
            tcp_seg(41000, 8080, TCP_SYN, 1000, 0),
        ),
        t(
            "syn-ack answering it",
            b,
            a,
            tcp_seg(8080, 41000, TCP_SYN | TCP_ACK, 5000, 1001),
        ),
        t("ack", a, b, tcp_seg(41000, 8080, TCP_ACK, 1001, 5001)),
        t(
            "data",
            a,
            b,
            tcp_seg(41000, 8080, TCP_ACK | TCP_PSH, 1001, 5001),
        ),
        t(
            "reply data",
            b,
            a,
            tcp_seg(8080, 41000, TCP_ACK | TCP_PSH, 5001, 1030),
        ),
        t(
            "retransmitted syn-ack",
            b,
            a,
            tcp_seg(8080, 41000, TCP_SYN | TCP_ACK, 5000, 1001),
        ),
        // A FIN keeps the flow: the close stays on the path the flow lived on (without a
        // conntrack entry the kernel would call a FIN INVALID).
        t(
            "fin",
            a,
            b,
            tcp_seg(41000, 8080, TCP_FIN | TCP_ACK, 1030, 5030),
        ),
        t(
            "ack after fin",
            b,
            a,
            tcp_seg(8080, 41000, TCP_ACK, 5030, 1031),
        ),
        t(
            "fin back",
            b,
            a,
            tcp_seg(8080, 41000, TCP_FIN | TCP_ACK, 5030, 1031),
        ),
        t("last ack", a, b, tcp_seg(41000, 8080, TCP_ACK, 1031, 5031)),
        // A RST ends it: it takes the fast path, later segments do not.
        t(
            "rst ends the flow",
            b,
            a,
            tcp_seg(8080, 41000, TCP_RST | TCP_ACK, 5031, 1031),
        ),
        k(
            "after the rst",
            a,
            b,
            tcp_seg(41000, 8080, TCP_ACK, 1031, 5031),
        ),
        // The ports reused by a connection the program did not see start (A's SYN went to a
        // Service VIP and was DNAT'd to B:8080): its SYN-ACK does not acknowledge the SYN that
        // created the entry, so it and the rest of that connection go to the kernel.
        t(
            "syn, port 42000",
            a,
            b,
            tcp_seg(42000, 8080, TCP_SYN, 7000, 0),
        ),
        k(
            "syn-ack to another syn",
            b,
            a,
            tcp_seg(8080, 42000, TCP_SYN | TCP_ACK, 9, 12345),
        ),
        k(
            "data after it",
            b,
            a,
            tcp_seg(8080, 42000, TCP_ACK, 10, 12345),
        ),
        k(
            "and the other way",
            a,
            b,
            tcp_seg(42000, 8080, TCP_ACK, 12345, 10),
        ),
        // A SYN-ACK from the initiator's own side answers nothing the program saw.
        t("syn, port 43000", a, b, tcp_seg(43000, 8080, TCP_SYN, 1, 0)),
        k(
            "syn-ack from the initiator",
            a,
            b,
            tcp_seg(43000, 8080, TCP_SYN | TCP_ACK, 1, 2),
        ),
        k("data after that", a, b, tcp_seg(43000, 8080, TCP_ACK, 2, 2)),
        // A new SYN on the same ports replaces the flow: the old ISN no longer answers.
        t(
            "syn, port 44000",
            a,
            b,
            tcp_seg(44000, 8080, TCP_SYN, 10, 0),
        ),
        t(
            "new syn, same ports",
            a,
            b,
            tcp_seg(44000, 8080, TCP_SYN, 20, 0),
        ),
        k(
            "syn-ack to the old syn",
            b,
            a,
            tcp_seg(8080, 44000, TCP_SYN | TCP_ACK, 1, 11),
        ),
        t("syn again", a, b, tcp_seg(44000, 8080, TCP_SYN, 30, 0)),
        t(
            "syn-ack to the new syn",
            b,
            a,
            tcp_seg(8080, 44000, TCP_SYN | TCP_ACK, 1, 31),
        ),
        // Odd flag combinations never start a flow.
        k(
            "syn+fin",
            a,
            b,
            tcp_seg(45000, 8080, TCP_SYN | TCP_FIN, 1, 0),
        ),
        k(
            "syn+rst",
            a,
            b,
            tcp_seg(45000, 8080, TCP_SYN | TCP_RST, 1, 0),
        ),
        // The flow of a SYN that did not pass (not meshed) was never recorded.
        tcp_case(
            v6,
            "syn to an unmeshed pod",
            a,
            EP_B_UNMESHED,
            tcp_seg(46000, 8080, TCP_SYN, 1, 0),
            Pass(Reason::NotMeshed),
        ),
        // TCP header cut short by the IP length: malformed.
        Case {
            name: format!("{} tcp header cut short", if v6 { "v6" } else { "v4" }),
            frame: l4_frame(
                v6,
                a,
                b,
                IPPROTO_TCP,
                tcp_seg(47000, 8080, TCP_SYN, 1, 0)[..10].to_vec(),
            ),
            ingress: Port::A,
            side: Side::Pod,
            expect: Pass(Reason::Malformed),
            marks: None,
        },
    ]
}

#[expect(clippy::too_many_lines, reason = "a table of cases, one per line")]
fn flow_cases() -> Vec<Case> {
    use Expect::{Pass, Redirect};
    let mut cases = tcp_flow_cases(false);
    cases.extend(tcp_flow_cases(true));
    for v6 in [false, true] {
        let fam = if v6 { "v6" } else { "v4" };
        let (icmp, errors, other): (u8, &[u8], u8) = if v6 {
            (IPPROTO_ICMPV6, &[1, 2, 3, 4], 130)
        } else {
            (IPPROTO_ICMP, &[3, 4, 5, 11, 12], 13)
        };
        let (echo_request, echo_reply) = if v6 { (128, 129) } else { (8, 0) };
        let case = |name: &str, src: u8, dst: u8, proto: u8, payload: Vec<u8>, expect| Case {
            name: format!("{fam} {name}"),
            frame: l4_frame(v6, src, dst, proto, payload),
            ingress: port_of(src),
            side: Side::Pod,
            expect,
            marks: None,
        };
        cases.extend([
            // UDP: A's socket 45000 asks a Service VIP (no endpoint; the kernel DNATs it), so
            // the reply B:53 -> A:45000 must meet the kernel's reverse NAT.
            case(
                "udp to a pod",
                EP_A,
                EP_B,
                IPPROTO_UDP,
                udp_ports(45000, 53),
                Redirect(EP_B),
            ),
            case(
                "udp to a vip",
                EP_A,
                NOT_EP,
                IPPROTO_UDP,
                udp_ports(45000, 53),
                Pass(Reason::NoEndpoint),
            ),
            case(
                "udp reply to a socket on the kernel path",
                EP_B,
                EP_A,
                IPPROTO_UDP,
                udp_ports(53, 45000),
                Pass(Reason::UdpKernelSocket),
            ),
            case(
                "udp from that socket to a pod",
                EP_A,
                EP_B,
                IPPROTO_UDP,
                udp_ports(45000, 53),
                Redirect(EP_B),
            ),
            case(
                "udp to another socket of that pod",
                EP_B,
                EP_A,
                IPPROTO_UDP,
                udp_ports(53, 45001),
                Redirect(EP_A),
            ),
            // A pass for another reason (a pod address: never translated) marks nothing.
            case(
                "udp to an unmeshed pod",
                EP_A,
                EP_B_UNMESHED,
                IPPROTO_UDP,
                udp_ports(46000, 53),
                Pass(Reason::NotMeshed),
            ),
            case(
                "udp reply to that socket",
                EP_B,
                EP_A,
                IPPROTO_UDP,
                udp_ports(53, 46000),
                Redirect(EP_A),
            ),
            case(
                "udp header cut short",
                EP_A,
                EP_B,
                IPPROTO_UDP,
                udp_ports(47000, 53)[..6].to_vec(),
                Pass(Reason::Malformed),
            ),
            // ICMP echo: a request starts an exchange, a reply needs one.
            case(
                "echo reply, no request",
                EP_B,
                EP_A,
                icmp,
                icmp_msg(echo_reply, 7),
                Pass(Reason::FlowNotSeen),
            ),
            case(
                "echo request",
                EP_A,
                EP_B,
                icmp,
                icmp_msg(echo_request, 7),
                Redirect(EP_B),
            ),
            case(
                "echo reply",
                EP_B,
                EP_A,
                icmp,
                icmp_msg(echo_reply, 7),
                Redirect(EP_A),
            ),
            case(
                "echo reply, other id",
                EP_B,
                EP_A,
                icmp,
                icmp_msg(echo_reply, 8),
                Pass(Reason::FlowNotSeen),
            ),
            case(
                "echo request cut short",
                EP_A,
                EP_B,
                icmp,
                icmp_msg(echo_request, 7)[..6].to_vec(),
                Pass(Reason::Malformed),
            ),
            case(
                "other icmp type",
                EP_A,
                EP_B,
                icmp,
                icmp_msg(other, 1),
                Pass(Reason::OtherProtocol),
            ),
            case(
                "sctp",
                EP_A,
                EP_B,
                IPPROTO_SCTP,
                udp_ports(1, 2),
                Pass(Reason::OtherProtocol),
            ),
            case(
                "gre",
                EP_A,
                EP_B,
                IPPROTO_GRE,
                udp_ports(1, 2),
                Pass(Reason::Encapsulated),
            ),
            case(
                "ip in ip",
                EP_A,
                EP_B,
                4,
                udp_ports(1, 2),
                Pass(Reason::Encapsulated),
            ),
            case(
                "the other family's icmp",
                EP_A,
                EP_B,
                if v6 { IPPROTO_ICMP } else { IPPROTO_ICMPV6 },
                icmp_msg(echo_request, 1),
                Pass(Reason::OtherProtocol),
            ),
        ]);
        // ICMP errors may be about a translated flow: always the kernel's, in both directions.
        for &t in errors {
            cases.push(case(
                &format!("icmp error type {t}"),
                EP_A,
                EP_B,
                icmp,
                icmp_msg(t, 0),
                Pass(Reason::IcmpError),
            ));
            cases.push(case(
                &format!("icmp error type {t} back"),
                EP_B,
                EP_A,
                icmp,
                icmp_msg(t, 0),
                Pass(Reason::IcmpError),
            ));
        }
    }
    cases
}

#[test]
#[ignore = "needs root: run scripts/test.sh"]
fn flow_rule_tcp_udp_icmp() {
    run_cases("flow_rule_tcp_udp_icmp", flow_cases);
}

/// Pins the calling thread to CPU 0: a test run executes on the caller's CPU, and the kernel's
/// LRU keeps recently allocated entries on per-CPU lists, so the program's inserts and the
/// test's own must share one CPU for eviction to reach the program's entry.
fn pin_to_cpu0() -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes inside it; 0 = this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        ensure!(
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set) == 0,
            "sched_setaffinity: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// A full flow table evicts its least recently used flow, and that flow's next packets go to
/// the kernel (where conntrack picks them up), counted as `flow_not_seen`: never dropped or
/// misdelivered. Fills `FLOWS` to capacity from user space after a SYN.
#[test]
#[ignore = "needs root: run scripts/test.sh"]
fn a_full_flow_table_sends_evicted_flows_to_the_kernel() {
    for_each_hook(
        "a_full_flow_table_sends_evicted_flows_to_the_kernel",
        |bench| {
            pin_to_cpu0()?;
            let syn = tcp_case(
                false,
                "syn",
                EP_A,
                EP_B,
                tcp_seg(41000, 8080, TCP_SYN, 1, 0),
                Expect::Redirect(EP_B),
            );
            bench.check_all(&[syn])?;
            {
                let map = bench.ebpf.map(map_names::FLOWS).context("FLOWS")?;
                let flows: HashMap<&MapData, FlowKey, Flow> = HashMap::try_from(map)?;
                ensure!(
                    flows.keys().count() == 1,
                    "the SYN left no single flow entry"
                );
            }
            let map = bench.ebpf.map(map_names::FLOWS).context("FLOWS")?;
            let fd = map_fd(map)?;
            let flow = Flow {
                syn_seq: 1,
                initiator: 0,
                pad: [0; 3],
            };
            for i in 0..MAX_FLOWS {
                let key = FlowKey {
                    lo_addr: [u32::from_ne_bytes([10, 250, 0, 1]), 0, 0, 0],
                    hi_addr: [u32::from_ne_bytes(i.to_be_bytes()), 0, 0, 0],
                    lo_port: 0,
                    hi_port: 0,
                    proto: IPPROTO_TCP,
                    family: common::FAMILY_V4,
                    pad: [0; 2],
                };
                update(fd, &key, &flow)?;
            }
            let after = tcp_case(
                false,
                "ack of the evicted flow",
                EP_A,
                EP_B,
                tcp_seg(41000, 8080, TCP_ACK, 2, 2),
                Expect::Pass(Reason::FlowNotSeen),
            );
            let syn_again = tcp_case(
                false,
                "a new syn still starts a flow",
                EP_A,
                EP_B,
                tcp_seg(41001, 8080, TCP_SYN, 1, 0),
                Expect::Redirect(EP_B),
            );
            bench.check_all(&[after, syn_again])
        },
    );
}

/// The raw fd of a map of the loaded object (aya's typed map would borrow it mutably, and the
/// fill loop needs nothing but BPF_MAP_UPDATE_ELEM).
fn map_fd(map: &aya::maps::Map) -> Result<std::os::fd::RawFd> {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    let aya::maps::Map::LruHashMap(data) = map else {
        bail!("FLOWS is not an LRU hash map");
    };
    Ok(data.fd().as_fd().as_raw_fd())
}

/// BPF_MAP_UPDATE_ELEM (BPF_ANY) straight through the syscall.
fn update<K, V>(fd: std::os::fd::RawFd, key: &K, value: &V) -> Result<()> {
    #[repr(C)]
    struct Attr {
        map_fd: u32,
        pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }
    const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
    let attr = Attr {
        map_fd: u32::try_from(fd)?,
        pad: 0,
        key: std::ptr::from_ref(key) as u64,
        value: std::ptr::from_ref(value) as u64,
        flags: 0,
    };
    // SAFETY: attr points at valid key and value buffers of the map's sizes for the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_UPDATE_ELEM,
            &raw const attr,
            size_of::<Attr>(),
        )
    };
    ensure!(
        r == 0,
        "BPF_MAP_UPDATE_ELEM: {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}

/// A frame longer than the target interface's MTU is passed to the kernel (which fragments it
/// or sends the ICMP error), counted as `mtu_exceeded`, never redirected: veth's XDP transmit
/// would drop it after it was counted, and `bpf_redirect_peer` would hand it to the pod
/// oversize. The boundary is exact: an L3 packet of exactly the MTU is redirected. (Packets up
/// to 1,280 bytes, IPv6's minimum MTU, skip the check: the target here has exactly that MTU.)
#[test]
#[ignore = "needs root: run scripts/test.sh"]
fn a_frame_over_the_target_mtu_goes_to_the_kernel() {
    for_each_hook("a_frame_over_the_target_mtu_goes_to_the_kernel", |bench| {
        ip(&["link", "set", "xb", "mtu", "1280"])?;
        let sized = |l3: usize, ipv6: bool| {
            let hdr = if ipv6 { 40 } else { 20 };
            let payload = vec![0x5a; l3 - hdr - 8];
            let mut u = udp(&payload);
            u[0..2].copy_from_slice(&48_000u16.to_be_bytes());
            if ipv6 {
                V6::new(IPPROTO_UDP, u, v6(EP_A), v6(EP_B)).frame()
            } else {
                V4 {
                    payload: u,
                    ..V4::udp(v4(EP_A), v4(EP_B))
                }
                .frame()
            }
        };
        let mut cases = Vec::new();
        for ipv6 in [false, true] {
            let fam = if ipv6 { "v6" } else { "v4" };
            cases.push(redirect(
                format!("{fam} l3 1280 = mtu"),
                sized(1280, ipv6),
                EP_B,
            ));
            cases.push(pass(
                format!("{fam} l3 1281 > mtu"),
                sized(1281, ipv6),
                Reason::MtuExceeded,
            ));
            cases.push(pass(
                format!("{fam} l3 1500 > mtu"),
                sized(1500, ipv6),
                Reason::MtuExceeded,
            ));
        }
        // The other direction (into xa, MTU 1500) is not limited.
        cases.push(
            redirect(
                "v4 1500 into a 1500 mtu",
                V4 {
                    payload: udp(&[0x11; 1500 - 28]),
                    ..V4::udp(v4(EP_B), v4(EP_A))
                }
                .frame_to(HOST_B_MAC),
                EP_A,
            )
            .on(Port::B),
        );
        bench.check_all(&cases)
    });
}

/// The monitor (`xdp-ctl monitor`) under test runs, through both hooks: with its configuration
/// off, nothing is emitted or even counted; on, a run writes one event that names the packet
/// (addresses, ports, protocol, reason, action, hook, ingress and egress ifindex); filters keep
/// others out. Also prints what the monitor costs per packet (BPF_PROG_TEST_RUN's own average
/// over many repeats of one frame: off, on with the packet filtered out, on and emitted).
#[test]
#[ignore = "needs root: run scripts/test.sh"]
#[expect(
    clippy::too_many_lines,
    reason = "one scenario: off, on, filters, cost"
)]
fn monitor_events_filters_and_cost() {
    for_each_hook("monitor_events_filters_and_cost", |bench| {
        use common::monitor::{MonitorConfig, MonitorEvent, ACTION_REDIRECT, MONITOR_ANY_REASON};
        // The ring holds about 14,500 events: the cost is measured in batches, draining.
        const BATCH: u32 = 2_000;
        const BATCHES: u32 = 50;
        let case = &redirect_cases()[0];
        let ingress = bench.ifindex(case.ingress);
        let Expect::Redirect(to) = case.expect else {
            bail!("the first redirect case does not redirect");
        };
        let egress = bench.ifindex(endpoint_spec(to).port);
        let cfg_fd = {
            use std::os::fd::{AsFd as _, AsRawFd as _};
            let map = bench
                .ebpf
                .map(map_names::MONITOR_CONFIG)
                .context("MONITOR_CONFIG")?;
            let aya::maps::Map::Array(data) = map else {
                bail!("MONITOR_CONFIG is not an array");
            };
            data.fd().as_fd().as_raw_fd()
        };
        let set = |cfg: &MonitorConfig| update(cfg_fd, &0u32, cfg);
        let stats = || -> Result<[u64; 3]> {
            let map = bench
                .ebpf
                .map(map_names::MONITOR_STATS)
                .context("MONITOR_STATS")?;
            let s: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(map)?;
            let mut out = [0u64; 3];
            for (slot, o) in out.iter_mut().enumerate() {
                *o = s.get(&u32::try_from(slot)?, 0)?.iter().sum();
            }
            Ok(out)
        };
        let events = || -> Result<Vec<MonitorEvent>> {
            let map = bench
                .ebpf
                .map(map_names::MONITOR_EVENTS)
                .context("MONITOR_EVENTS")?;
            let mut ring = aya::maps::RingBuf::try_from(map)?;
            let mut out = Vec::new();
            while let Some(item) = ring.next() {
                ensure!(item.len() >= size_of::<MonitorEvent>(), "short event");
                // SAFETY: plain old data, long enough; unaligned read.
                out.push(unsafe { item.as_ptr().cast::<MonitorEvent>().read_unaligned() });
            }
            Ok(out)
        };
        let ctx = bench.hook.ctx_in(&case.frame, ingress)?;
        let timed = |repeat: u32| -> Result<std::time::Duration> {
            let mut out = vec![0u8; case.frame.len() + 256];
            let r = bench.hook.test_run(
                &bench.ebpf,
                Side::Pod,
                TestRunOptions {
                    data_in: Some(&case.frame),
                    data_out: Some(&mut out),
                    ctx_in: Some(&ctx),
                    repeat,
                    ..TestRunOptions::default()
                },
            )?;
            Ok(r.duration)
        };

        // Off: nothing emitted, nothing counted.
        let out = bench.run(Side::Pod, &case.frame, ingress)?;
        ensure!(out.action == bench.hook.redirect_action(), "not redirected");
        ensure!(
            events()?.is_empty() && stats()? == [0; 3],
            "emitted with the monitor off"
        );

        // On: one event naming the packet.
        let on = MonitorConfig {
            enabled: 1,
            sample: 1,
            reason: MONITOR_ANY_REASON,
            pid: 1,
            ..MonitorConfig::default()
        };
        set(&on)?;
        bench.run(Side::Pod, &case.frame, ingress)?;
        let got = events()?;
        ensure!(got.len() == 1, "{} events for one packet", got.len());
        let e = got[0];
        ensure!(
            e.src[..4] == v4(EP_A) && e.dst[..4] == v4(EP_B),
            "addresses: {e:?}"
        );
        ensure!(
            e.family == common::FAMILY_V4 && e.proto == IPPROTO_UDP,
            "{e:?}"
        );
        ensure!(
            e.ingress == ingress && e.egress == egress,
            "interfaces: {e:?}"
        );
        ensure!(
            e.reason == Reason::Redirected as u8 && e.action == ACTION_REDIRECT,
            "{e:?}"
        );
        ensure!(u32::try_from(case.frame.len())? == e.len, "len: {e:?}");
        ensure!(stats()?[1] == 1, "emitted counter: {:?}", stats()?);

        // Filters: another address, another reason: nothing.
        let mut other_ip = on;
        other_ip.family = u32::from(common::FAMILY_V4);
        other_ip.addr[..4].copy_from_slice(&[192, 0, 2, 1]);
        set(&other_ip)?;
        bench.run(Side::Pod, &case.frame, ingress)?;
        let mut other_reason = on;
        other_reason.reason = u32::from(Reason::NoEndpoint as u8);
        set(&other_reason)?;
        bench.run(Side::Pod, &case.frame, ingress)?;
        ensure!(events()?.is_empty(), "filtered packets emitted");
        let mut same_ip = on;
        same_ip.family = u32::from(common::FAMILY_V4);
        same_ip.addr[..4].copy_from_slice(&v4(EP_B));
        set(&same_ip)?;
        bench.run(Side::Pod, &case.frame, ingress)?;
        ensure!(
            events()?.len() == 1,
            "--ip of the destination shows nothing"
        );

        // Cost per packet.
        let mean = |cfg: Option<&MonitorConfig>| -> Result<f64> {
            set(cfg.unwrap_or(&MonitorConfig::default()))?;
            let mut total = 0.0;
            for _ in 0..BATCHES {
                total += timed(BATCH)?.as_secs_f64() * 1e9;
                events()?;
            }
            Ok(total / f64::from(BATCHES))
        };
        let (mut off, mut filtered, mut emitting) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..5 {
            off.push(mean(None)?);
            filtered.push(mean(Some(&other_ip))?);
            emitting.push(mean(Some(&on))?);
        }
        set(&MonitorConfig::default())?;
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        eprintln!(
            "{}: per packet (test run, median of 5 x {BATCHES} x {BATCH}): monitor off {:.1} ns, \
             on but filtered out {:.1} ns, on and emitting {:.1} ns",
            bench.hook.name(),
            median(&mut off),
            median(&mut filtered),
            median(&mut emitting)
        );
        Ok(())
    });
}

// ---------------------------------------------------------------------------------------------
// Across nodes: a meshed local pod's packets for a meshed remote pod leave through the uplink the
// FIB names (pod programs), and a meshed remote pod's packets for a meshed local pod go from the
// uplink straight into the pod (uplink programs). The bench's routing: see `Bench::new`.

const IPPROTO_IPIP: u8 = 4;
const IPPROTO_IPV6_IN_IP: u8 = 41;

/// Builds the cross-node cases of one address family.
#[derive(Clone, Copy)]
struct Xnode {
    v6: bool,
}

impl Xnode {
    const BOTH: [Self; 2] = [Self { v6: false }, Self { v6: true }];

    fn name(self, name: &str) -> String {
        format!("{} {name}", if self.v6 { "v6" } else { "v4" })
    }

    /// A frame carrying `proto` / `payload` from `src` to `dst`, with `macs`, TTL / hop limit 64.
    fn frame(self, src: At, dst: At, proto: u8, payload: Vec<u8>, macs: Macs) -> Vec<u8> {
        let (ethertype, ip) = if self.v6 {
            (ETH_P_IPV6, V6::new(proto, payload, src.v6, dst.v6).bytes())
        } else {
            let p = V4 {
                proto,
                payload,
                ..V4::udp(src.v4, dst.v4)
            };
            (ETH_P_IP, p.bytes())
        };
        frame::ethernet(macs.dst, macs.src, ethertype, &ip)
    }

    /// Sent from address `src` by endpoint `on`'s pod (to its host veth's MAC), through the pod
    /// program on that veth.
    fn pod_as(
        self,
        name: &str,
        src: At,
        on: u8,
        dst: At,
        (proto, payload): (u8, Vec<u8>),
        expect: Expect,
    ) -> Case {
        Case {
            name: self.name(name),
            frame: self.frame(src, dst, proto, payload, from_pod(on)),
            ingress: port_of(on),
            side: Side::Pod,
            expect,
            marks: None,
        }
    }

    /// Sent by endpoint `src`'s pod, through the pod program on its host veth.
    fn pod(self, name: &str, src: u8, dst: At, l4: (u8, Vec<u8>), expect: Expect) -> Case {
        self.pod_as(name, pod(src), src, dst, l4, expect)
    }

    /// From the wire (ua's gateway to ua's MAC), through the uplink program on ua.
    fn wire(
        self,
        name: &str,
        src: At,
        dst: At,
        (proto, payload): (u8, Vec<u8>),
        expect: Expect,
    ) -> Case {
        Case {
            name: self.name(name),
            frame: self.frame(src, dst, proto, payload, FROM_WIRE),
            ingress: Port::Up,
            side: Side::Uplink,
            expect,
            marks: None,
        }
    }

    fn udp(sport: u16, dport: u16) -> (u8, Vec<u8>) {
        (IPPROTO_UDP, udp_ports(sport, dport))
    }

    fn tcp(sport: u16, dport: u16, flags: u8, seq: u32, ack: u32) -> (u8, Vec<u8>) {
        (IPPROTO_TCP, tcp_seg(sport, dport, flags, seq, ack))
    }

    /// An ICMP / ICMPv6 echo request or reply.
    fn echo(self, request: bool, id: u16) -> (u8, Vec<u8>) {
        let (proto, t) = match (self.v6, request) {
            (false, true) => (IPPROTO_ICMP, 8),
            (false, false) => (IPPROTO_ICMP, 0),
            (true, true) => (IPPROTO_ICMPV6, 128),
            (true, false) => (IPPROTO_ICMPV6, 129),
        };
        (proto, icmp_msg(t, id))
    }

    /// A UDP datagram making an IP packet of `l3` bytes.
    fn udp_l3(self, l3: usize) -> (u8, Vec<u8>) {
        let hdr = if self.v6 { 40 } else { 20 };
        let mut u = udp(&vec![0x5a; l3 - hdr - 8]);
        u[0..2].copy_from_slice(&48_000u16.to_be_bytes());
        (IPPROTO_UDP, u)
    }
}

/// The pod programs (ingress: a meshed local pod's veth) towards remote pods.
#[expect(clippy::too_many_lines, reason = "a table of cases, one per line")]
fn pod_to_remote_cases(hook: Hook) -> Vec<Case> {
    use Expect::{Out, Pass};
    let mut cases = Vec::new();
    for x in Xnode::BOTH {
        let r = remote(RS_MESHED, 5);
        let udp = || Xnode::udp(40_000, 5_201);
        cases.extend([
            x.pod("udp a->remote", EP_A, r, udp(), Out(VIA_UP)),
            x.pod("udp c->remote (another veth)", EP_C, r, udp(), Out(VIA_UP)),
            x.pod(
                "udp to a prefix naming this uplink",
                EP_A,
                remote(RS_NAMES_UP, 5),
                udp(),
                Out(VIA_UP),
            ),
            x.pod("ttl 2", EP_A, r, udp(), Out(VIA_UP)).ttl(2),
            x.pod("ttl 255", EP_A, r, udp(), Out(VIA_UP)).ttl(255),
            x.pod("echo request", EP_A, r, x.echo(true, 3), Out(VIA_UP)),
            // XDP redirects only to a TX_PORTS member: wa is none (an uplink attached with TC).
            x.pod(
                "via an uplink that is no XDP redirect target",
                EP_A,
                remote(RS_VIA_UP2, 5),
                udp(),
                match hook {
                    Hook::Xdp => Pass(Reason::TxPortMissing),
                    Hook::Tc => Out(VIA_UP2),
                },
            ),
            // The uplink's MTU, and a route's (locked) MTU below it: exact.
            x.pod(
                "l3 = uplink mtu",
                EP_A,
                r,
                x.udp_l3(UPLINK_MTU),
                Out(VIA_UP),
            ),
            x.pod(
                "l3 = uplink mtu + 1",
                EP_A,
                r,
                x.udp_l3(UPLINK_MTU + 1),
                Pass(Reason::MtuExceeded),
            ),
            x.pod(
                "l3 = uplink mtu + 4",
                EP_A,
                r,
                x.udp_l3(UPLINK_MTU + 4),
                Pass(Reason::MtuExceeded),
            ),
            x.pod(
                "l3 = route mtu",
                EP_A,
                remote(RS_ROUTE_MTU, 5),
                x.udp_l3(ROUTE_MTU),
                Out(VIA_UP),
            ),
            x.pod(
                "l3 = route mtu + 1",
                EP_A,
                remote(RS_ROUTE_MTU, 5),
                x.udp_l3(ROUTE_MTU + 1),
                Pass(Reason::MtuExceeded),
            ),
            // The remote prefixes.
            x.pod(
                "to a remote exception (not meshed)",
                EP_A,
                remote(RS_EXCEPTION, 5),
                udp(),
                Pass(Reason::NotMeshed),
            ),
            x.pod(
                "udp to neither a local nor a remote pod",
                EP_A,
                EXTERNAL,
                Xnode::udp(45_000, 53),
                Pass(Reason::NoEndpoint),
            )
            .marks(true),
            x.pod(
                "tcp to neither a local nor a remote pod",
                EP_A,
                EXTERNAL,
                Xnode::tcp(45_000, 443, TCP_SYN, 1, 0),
                Pass(Reason::NoEndpoint),
            ),
            // What the FIB says.
            x.pod(
                "gateway without a neighbour entry",
                EP_A,
                remote(RS_NO_NEIGH, 5),
                udp(),
                Pass(Reason::NoNeighbour),
            )
            .marks(false),
            x.pod(
                "unreachable route",
                EP_A,
                remote(RS_UNREACHABLE, 5),
                udp(),
                Pass(Reason::NoRoute),
            ),
            x.pod(
                "blackhole route",
                EP_A,
                remote(RS_BLACKHOLE, 5),
                udp(),
                Pass(Reason::NoRoute),
            ),
            x.pod(
                "forwarding disabled on the ingress",
                EP_NO_FWD,
                r,
                udp(),
                Pass(Reason::NoRoute),
            ),
            x.pod(
                "route through a device that is no uplink",
                EP_A,
                remote(RS_VIA_PLAIN, 5),
                udp(),
                Pass(Reason::NotUplink),
            ),
            x.pod(
                "prefix naming another uplink than the route's",
                EP_A,
                remote(RS_NAMES_UP2, 5),
                udp(),
                Pass(Reason::NotUplink),
            ),
            // The source, as for local traffic.
            x.pod(
                "unmeshed source",
                EP_A_UNMESHED,
                r,
                udp(),
                Pass(Reason::NotMeshed),
            ),
            x.pod_as(
                "source behind another veth (spoofed)",
                pod(EP_B2),
                EP_A,
                r,
                udp(),
                Pass(Reason::SrcMismatch),
            ),
            x.pod_as(
                "source not an endpoint",
                pod(NOT_EP),
                EP_A,
                r,
                udp(),
                Pass(Reason::SrcMismatch),
            ),
            x.pod_as(
                "source a remote pod (spoofed)",
                remote(RS_MESHED, 6),
                EP_A,
                r,
                udp(),
                Pass(Reason::SrcMismatch),
            ),
            x.pod(
                "not to the host veth MAC",
                EP_A,
                r,
                udp(),
                Pass(Reason::NotToHost),
            )
            .addressed_to(UP_MAC),
            x.pod("ttl 1", EP_A, r, udp(), Pass(Reason::TtlExpired))
                .ttl(1),
        ]);
    }
    cases
}

#[test]
#[ignore = "needs root: run scripts/test.sh"]
fn cross_node_pod_to_remote_pods() {
    for_each_hook("cross_node_pod_to_remote_pods", |bench| {
        bench.check_all(&pod_to_remote_cases(bench.hook))
    });
}

/// The uplink programs (ingress: the uplink ua, unless a case says otherwise).
#[expect(clippy::too_many_lines, reason = "a table of cases, one per line")]
fn from_the_uplink_cases() -> Vec<Case> {
    use Expect::{Pass, Redirect};
    let mut cases = Vec::new();
    for x in Xnode::BOTH {
        let r = remote(RS_MESHED, 5);
        let a = pod(EP_A);
        let udp = || Xnode::udp(5_201, 40_000);
        cases.extend([
            x.wire("udp remote->a", r, a, udp(), Redirect(EP_A)),
            x.wire(
                "udp remote->c (MACs from the destination entry)",
                r,
                pod(EP_C),
                udp(),
                Redirect(EP_C),
            ),
            x.wire(
                "from a prefix naming this uplink",
                remote(RS_NAMES_UP, 5),
                a,
                udp(),
                Redirect(EP_A),
            ),
            x.wire("ttl 2", r, a, udp(), Redirect(EP_A)).ttl(2),
            x.wire(
                "udp to a pod's port 4789 (not an overlay)",
                r,
                a,
                Xnode::udp(5_201, 4_789),
                Redirect(EP_A),
            ),
            x.wire(
                "on the other uplink, to its MAC",
                r,
                a,
                udp(),
                Redirect(EP_A),
            )
            .uplink(Port::Up2)
            .addressed_to(UP2_MAC),
            // The destination.
            x.wire(
                "to an unmeshed pod",
                r,
                pod(EP_B_UNMESHED),
                udp(),
                Pass(Reason::NotMeshed),
            ),
            x.wire(
                "to a pod whose veth is no redirect target",
                r,
                pod(EP_NO_TX),
                udp(),
                Pass(Reason::TxPortMissing),
            ),
            x.wire(
                "to a pod registered only in the other hook's map",
                r,
                pod(EP_OTHER_HOOK),
                udp(),
                Pass(Reason::TxPortMissing),
            ),
            x.wire(
                "to an endpoint whose interface is an uplink",
                r,
                pod(EP_ON_UPLINK),
                udp(),
                Pass(Reason::TxPortMissing),
            ),
            // Spoofed or unmeshed sources.
            x.wire(
                "source a local pod's address",
                pod(EP_B),
                a,
                udp(),
                Pass(Reason::SrcMismatch),
            ),
            x.wire(
                "source outside any remote prefix",
                EXTERNAL,
                a,
                udp(),
                Pass(Reason::NotMeshed),
            ),
            x.wire(
                "source in a remote exception",
                remote(RS_EXCEPTION, 5),
                a,
                udp(),
                Pass(Reason::NotMeshed),
            ),
            x.wire(
                "source in a prefix naming another uplink",
                remote(RS_NAMES_UP2, 5),
                a,
                udp(),
                Pass(Reason::SrcMismatch),
            ),
            x.wire(
                "source in a prefix naming ua, on wa",
                remote(RS_NAMES_UP, 5),
                a,
                udp(),
                Pass(Reason::SrcMismatch),
            )
            .uplink(Port::Up2)
            .addressed_to(UP2_MAC),
            x.wire(
                "on a device that is no uplink",
                r,
                a,
                udp(),
                Pass(Reason::NotUplink),
            )
            .uplink(Port::Plain)
            .addressed_to(PLAIN_MAC),
            x.wire(
                "not to the uplink's MAC (the other uplink's)",
                r,
                a,
                udp(),
                Pass(Reason::NotToHost),
            )
            .addressed_to(UP2_MAC),
            x.wire(
                "not to the uplink's MAC (the pod's)",
                r,
                a,
                udp(),
                Pass(Reason::NotToHost),
            )
            .addressed_to(POD_A_MAC),
            x.wire("ttl 1", r, a, udp(), Pass(Reason::TtlExpired))
                .ttl(1),
            x.wire("ttl 0", r, a, udp(), Pass(Reason::TtlExpired))
                .ttl(0),
            // Overlays stay on the kernel path.
            x.wire(
                "ip in ip between nodes",
                PEER_NODE,
                NODE,
                (IPPROTO_IPIP, vec![0x45; 40]),
                Pass(Reason::Encapsulated),
            ),
            x.wire(
                "ipv6 in ip between nodes",
                PEER_NODE,
                NODE,
                (IPPROTO_IPV6_IN_IP, vec![0x60; 60]),
                Pass(Reason::Encapsulated),
            ),
            x.wire(
                "gre between nodes",
                PEER_NODE,
                NODE,
                (IPPROTO_GRE, vec![0, 0, 0x08, 0, 0x45, 0]),
                Pass(Reason::Encapsulated),
            ),
            x.wire(
                "ip in ip from a remote pod to a local pod",
                r,
                a,
                (IPPROTO_IPIP, vec![0x45; 40]),
                Pass(Reason::Encapsulated),
            ),
        ]);
        for port in [4_789, 8_472, 6_081, 51_820, 51_871] {
            cases.push(x.wire(
                &format!("udp to port {port} of a node"),
                PEER_NODE,
                NODE,
                Xnode::udp(40_000, port),
                Pass(Reason::Encapsulated),
            ));
        }
        cases.extend([
            // The flow rule.
            x.wire(
                "tcp ack without a flow",
                r,
                a,
                Xnode::tcp(8_080, 41_000, TCP_ACK, 1, 1),
                Pass(Reason::FlowNotSeen),
            ),
            x.wire(
                "echo reply without a request",
                r,
                a,
                x.echo(false, 3),
                Pass(Reason::FlowNotSeen),
            ),
            // To a node port: the kernel's (it may DNAT it to a local pod, whose answers must
            // meet the reverse NAT: a meshed remote pod's socket is marked).
            x.wire(
                "udp from a meshed remote pod to a node port",
                r,
                NODE,
                Xnode::udp(5_353, 30_080),
                Pass(Reason::NoEndpoint),
            )
            .marks(true),
            x.wire(
                "udp from a remote exception to a node port",
                remote(RS_EXCEPTION, 5),
                NODE,
                Xnode::udp(5_353, 30_080),
                Pass(Reason::NoEndpoint),
            )
            .marks(false),
            x.wire(
                "udp from outside any remote prefix to a node port",
                EXTERNAL,
                NODE,
                Xnode::udp(5_353, 30_080),
                Pass(Reason::NoEndpoint),
            )
            .marks(false),
            x.wire(
                "tcp syn from a meshed remote pod to a node port",
                r,
                NODE,
                Xnode::tcp(41_000, 30_080, TCP_SYN, 1, 0),
                Pass(Reason::NoEndpoint),
            ),
        ]);
    }
    cases
}

#[test]
#[ignore = "needs root: run scripts/test.sh"]
fn cross_node_from_the_uplink() {
    run_cases("cross_node_from_the_uplink", from_the_uplink_cases);
}

/// Flows and UDP sockets across nodes, through both programs in turn: cases run in order on one
/// bench, so each sees the `FLOWS` and `KERNEL_SOCKETS` the cases before it left.
#[expect(clippy::too_many_lines, reason = "a table of cases, one per line")]
fn cross_node_flow_cases() -> Vec<Case> {
    use Expect::{Out, Pass, Redirect};
    let mut cases = Vec::new();
    for x in Xnode::BOTH {
        let r = remote(RS_MESHED, 5);
        let a = pod(EP_A);
        let out = |name: &str, l4, expect| x.pod(name, EP_A, r, l4, expect);
        let back = |name: &str, l4, expect| x.wire(name, r, a, l4, expect);
        let tcp = Xnode::tcp;
        let unseen = || Pass(Reason::FlowNotSeen);
        cases.extend([
            // A connection from the local pod, through its close.
            back("ack, no flow", tcp(8_080, 41_000, TCP_ACK, 1, 1), unseen()),
            out(
                "syn starts a flow",
                tcp(41_000, 8_080, TCP_SYN, 1_000, 0),
                Out(VIA_UP),
            ),
            back(
                "syn-ack answering it",
                tcp(8_080, 41_000, TCP_SYN | TCP_ACK, 5_000, 1_001),
                Redirect(EP_A),
            ),
            out(
                "ack",
                tcp(41_000, 8_080, TCP_ACK, 1_001, 5_001),
                Out(VIA_UP),
            ),
            out(
                "data",
                tcp(41_000, 8_080, TCP_ACK | TCP_PSH, 1_001, 5_001),
                Out(VIA_UP),
            ),
            back(
                "reply data",
                tcp(8_080, 41_000, TCP_ACK | TCP_PSH, 5_001, 1_030),
                Redirect(EP_A),
            ),
            back(
                "retransmitted syn-ack",
                tcp(8_080, 41_000, TCP_SYN | TCP_ACK, 5_000, 1_001),
                Redirect(EP_A),
            ),
            out(
                "fin",
                tcp(41_000, 8_080, TCP_FIN | TCP_ACK, 1_030, 5_030),
                Out(VIA_UP),
            ),
            back(
                "fin back",
                tcp(8_080, 41_000, TCP_FIN | TCP_ACK, 5_030, 1_031),
                Redirect(EP_A),
            ),
            back(
                "rst ends the flow",
                tcp(8_080, 41_000, TCP_RST | TCP_ACK, 5_031, 1_031),
                Redirect(EP_A),
            ),
            out(
                "after the rst",
                tcp(41_000, 8_080, TCP_ACK, 1_031, 5_031),
                unseen(),
            ),
            // A connection from the remote pod.
            back(
                "remote syn starts a flow",
                tcp(42_000, 8_080, TCP_SYN, 70, 0),
                Redirect(EP_A),
            ),
            out(
                "syn-ack to the remote syn",
                tcp(8_080, 42_000, TCP_SYN | TCP_ACK, 900, 71),
                Out(VIA_UP),
            ),
            back(
                "its ack",
                tcp(42_000, 8_080, TCP_ACK, 71, 901),
                Redirect(EP_A),
            ),
            // A SYN-ACK that answers another SYN (the ports reused by a connection the program
            // did not see start): that connection is the kernel's.
            out(
                "syn, port 43000",
                tcp(43_000, 8_080, TCP_SYN, 7_000, 0),
                Out(VIA_UP),
            ),
            back(
                "syn-ack to another syn",
                tcp(8_080, 43_000, TCP_SYN | TCP_ACK, 9, 12_345),
                unseen(),
            ),
            out(
                "data after it",
                tcp(43_000, 8_080, TCP_ACK, 12_345, 10),
                unseen(),
            ),
            // A SYN the kernel took (no neighbour yet) leaves no flow: its answer is the
            // kernel's too.
            x.pod(
                "syn via a gateway without a neighbour",
                EP_A,
                remote(RS_NO_NEIGH, 5),
                tcp(44_000, 8_080, TCP_SYN, 1, 0),
                Pass(Reason::NoNeighbour),
            ),
            x.wire(
                "its syn-ack",
                remote(RS_NO_NEIGH, 5),
                a,
                tcp(8_080, 44_000, TCP_SYN | TCP_ACK, 1, 2),
                unseen(),
            ),
            // A spoofed SYN from the wire starts nothing either.
            x.wire(
                "syn from a source naming another uplink",
                remote(RS_NAMES_UP2, 5),
                a,
                tcp(45_000, 8_080, TCP_SYN, 1, 0),
                Pass(Reason::SrcMismatch),
            ),
            // ICMP echo, both ways.
            back("echo reply, no request", x.echo(false, 7), unseen()),
            out("echo request", x.echo(true, 7), Out(VIA_UP)),
            back("echo reply", x.echo(false, 7), Redirect(EP_A)),
            back("echo reply, other id", x.echo(false, 8), unseen()),
            back("remote echo request", x.echo(true, 9), Redirect(EP_A)),
            out("echo reply to it", x.echo(false, 9), Out(VIA_UP)),
            // UDP: a meshed remote pod's socket that sent to a node port is the kernel's
            // (this node's reverse NAT): the local pod's datagrams to it are left to the kernel.
            x.wire(
                "udp from a remote socket to a node port",
                r,
                NODE,
                Xnode::udp(5_353, 30_080),
                Pass(Reason::NoEndpoint),
            )
            .marks(true),
            out(
                "udp to that remote socket",
                Xnode::udp(45_000, 5_353),
                Pass(Reason::UdpKernelSocket),
            ),
            out(
                "udp to another socket of that remote pod",
                Xnode::udp(45_000, 5_354),
                Out(VIA_UP),
            ),
            // A local pod's socket that sent to an address that is no pod: the remote pod's
            // datagrams to it go to the kernel.
            x.pod(
                "udp from a local socket to an external address",
                EP_A,
                EXTERNAL,
                Xnode::udp(46_000, 53),
                Pass(Reason::NoEndpoint),
            )
            .marks(true),
            back(
                "udp from a remote pod to that local socket",
                Xnode::udp(53, 46_000),
                Pass(Reason::UdpKernelSocket),
            ),
            back(
                "udp to another socket of that local pod",
                Xnode::udp(53, 46_001),
                Redirect(EP_A),
            ),
            // A pass for another reason (the FIB's) marks nothing.
            x.pod(
                "udp via a gateway without a neighbour",
                EP_A,
                remote(RS_NO_NEIGH, 5),
                Xnode::udp(47_000, 53),
                Pass(Reason::NoNeighbour),
            )
            .marks(false),
            x.wire(
                "udp back to that socket",
                remote(RS_NO_NEIGH, 5),
                a,
                Xnode::udp(53, 47_000),
                Redirect(EP_A),
            ),
        ]);
    }
    cases
}

#[test]
#[ignore = "needs root: run scripts/test.sh"]
fn cross_node_flows_and_kernel_sockets() {
    run_cases("cross_node_flows_and_kernel_sockets", cross_node_flow_cases);
}
