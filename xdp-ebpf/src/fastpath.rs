//! Hook-independent datapath logic: parse, decide, commit (flow table, rewrite), count.
//!
//! Works on a `[start, end)` view of a linear packet, which both XDP (`xdp_md->data`) and TC
//! (`__sk_buff->data` after `bpf_skb_pull_data`) provide.
//!
//! The flow rule (README, "What the fast path skips and what it never touches"): only flows the
//! program saw start, between two meshed pods' own addresses, untranslated, are fast-pathed.
//! - TCP: a SYN (no ACK) that passes every other check starts a flow in `FLOWS`; a SYN-ACK is
//!   fast-pathed only if it answers that SYN (from the other end, acknowledging its ISN + 1);
//!   any other segment only if its flow is in `FLOWS`. A RST ends the flow. A FIN does not: the
//!   close must stay on the path the flow lived on (without a conntrack entry the kernel calls
//!   a FIN INVALID).
//! - ICMP echo: a request starts a flow, a reply needs it. ICMP errors: always the kernel.
//! - UDP has no handshake. A UDP socket of a local pod that sent a datagram to an address that is
//!   no local pod (a Service VIP, say) is remembered in `KERNEL_SOCKETS`; datagrams *to* such a
//!   socket go to the kernel, which holds the reverse NAT of a translated exchange.
use core::mem::size_of;

use aya_ebpf::{
    bindings::{
        bpf_fib_lookup as FibParams, BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH,
        BPF_FIB_LKUP_RET_SUCCESS,
    },
    cty::c_void,
    helpers::generated::bpf_fib_lookup,
    maps::lpm_trie::Key,
};
use common::{
    pkt::{
        addr_bytes, csum_after_ttl_decrement, icmpv4_kind, icmpv6_is_ndp, icmpv6_kind,
        ipv4_is_forwardable_unicast, ipv6_is_extension_header, ipv6_words_are_forwardable_unicast,
        udp_port_is_overlay, IcmpKind, IPPROTO_GRE, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_IPIP,
        IPPROTO_IPV6, IPPROTO_TCP, IPPROTO_UDP, IPV6_NEXT_FRAGMENT, TCP_ACK, TCP_FIN, TCP_RST,
        TCP_SYN,
    },
    AddrWords, Endpoint, Flow, FlowKey, Reason, Remote, SocketKey, EP_F_MESHED, FAMILY_V4,
    FAMILY_V6, FLOW_INITIATOR_HI, FLOW_INITIATOR_LO,
};

use crate::maps::{
    COUNTERS, ENDPOINTS_V4, ENDPOINTS_V6, FIB_SCRATCH, FLOWS, KERNEL_SOCKETS, REMOTE_V4, REMOTE_V6,
    UPLINKS,
};

const ETH_HLEN: usize = 14;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPV4_HLEN: usize = 20;
const IPV6_HLEN: usize = 40;
/// What the flow rule reads of a TCP header: ports, sequence and acknowledgment numbers, data
/// offset and flags.
const TCP_READ: usize = 14;
const UDP_HLEN: usize = 8;
const ICMP_HLEN: usize = 8;

pub struct Packet {
    /// The directly accessible (linear) part: `[start, end)`.
    start: usize,
    end: usize,
    /// The whole packet's length: the linear part can be shorter than the packet (XDP
    /// multi-buffer frames, an skb's paged TCP data or GSO), so XDP passes
    /// `bpf_xdp_get_buff_len` and TC `skb->len`. IP length fields are checked against this,
    /// never against the linear part.
    len: usize,
}

impl Packet {
    #[inline(always)]
    pub const fn new(start: usize, end: usize, len: usize) -> Self {
        Self { start, end, len }
    }

    #[inline(always)]
    pub const fn len(&self) -> usize {
        self.len
    }

    /// The one bounds-checked accessor: a pointer to a `T` at `offset`, if it fits the packet.
    /// The verifier needs the comparison against `end` on the same register it then uses.
    #[inline(always)]
    fn ptr_at<T>(&self, offset: usize) -> Option<*mut T> {
        let p = self.start + offset;
        if p + size_of::<T>() > self.end {
            return None;
        }
        Some(p as *mut T)
    }
}

/// IP-version specific part of a forwarding decision.
#[derive(Clone, Copy)]
pub enum L3 {
    V4,
    V6,
}

/// What the flow rule needs of the transport header. A struct whose fields are always all set,
/// not an enum with per-variant payloads: copying an enum copies the bytes its variant leaves
/// undefined too, and LLVM may fill them from a stack slot that held a packet pointer, as a
/// 32-bit store the verifier refuses ("invalid size of register spill").
#[derive(Clone, Copy)]
struct L4 {
    /// `IPPROTO_TCP`, `IPPROTO_UDP`, or for an ICMP / ICMPv6 echo message its protocol.
    proto: u8,
    /// TCP: the flags byte. Echo: 1 for a request, 0 for a reply.
    flags: u8,
    /// TCP / UDP ports (as read from the packet: network order in memory); for echo, the
    /// identifier in both.
    sport: u16,
    dport: u16,
    /// TCP sequence and acknowledgment numbers (0 otherwise).
    seq: u32,
    ack: u32,
}

/// A packet's addresses, widened to 16 bytes (an IPv4 address fills the first 4), as the flow
/// and socket keys store them.
struct Addrs {
    family: u8,
    src: AddrWords,
    dst: AddrWords,
}

/// A 32-bit word of packet data from two 16-bit reads (IP headers sit at 2-byte alignment
/// after the 14-byte Ethernet header), in the machine's order, as `AddrWords` keep it.
#[inline(always)]
const fn word(h: [u16; 2]) -> u32 {
    let (a, b) = (h[0].to_ne_bytes(), h[1].to_ne_bytes());
    u32::from_ne_bytes([a[0], a[1], b[0], b[1]])
}

/// Where a hook runs: on a pod's host veth (local and outgoing cross-node traffic) or on an
/// uplink (incoming cross-node traffic). A constant at each entry point, so each program
/// carries only its own side's code.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Pod,
    Uplink,
}

pub struct Forward {
    /// Where the frame goes and the MACs it gets. For a remote destination, `ifindex` is the
    /// uplink, `pod_mac` the next hop's MAC and `host_mac` the uplink's (from the FIB).
    pub endpoint: Endpoint,
    /// Out of an uplink (transmit), rather than into a local pod (the peer of its veth).
    pub to_uplink: bool,
    l3: L3,
}

pub enum Verdict {
    /// Forward to `endpoint` after `rewrite`.
    Forward(Forward),
    /// Leave the packet to the kernel, counted under this reason.
    Pass(Reason),
}

#[inline(always)]
fn be16(b: [u8; 2]) -> u16 {
    u16::from_be_bytes(b)
}

/// What a hook gives `decide` besides the packet.
pub struct Hook {
    /// The program's context (`xdp_md` / `__sk_buff`), for `bpf_fib_lookup`.
    pub ctx: *mut c_void,
    /// The interface the frame arrived on.
    pub ingress: u32,
    pub side: Side,
    /// `bpf_fib_lookup`'s `tot_len`: the IP length to check against the route's MTU, or 0 for
    /// a GSO skb (TC), which the helper then lets through.
    pub fib_tot_len: u16,
}

/// Decides what to do with a frame that arrived on `hook.ingress`. `target_check(ifindex,
/// to_uplink)` is the hook's own test that the target interface can take this packet (it is a
/// redirect target of the hook, and the packet fits its MTU): `Redirected` if so, else the
/// reason why not. It is asked before the flow rule, so that the flow table records a flow
/// start only when its packet is really redirected (a SYN that went to the kernel must leave no
/// entry). The frame itself is only read; `rewrite` writes it once the hook has committed to
/// the redirect.
#[inline(always)]
pub fn decide(pkt: &Packet, hook: &Hook, target_check: impl Fn(u32, bool) -> Reason) -> Verdict {
    match try_decide(pkt, hook, target_check) {
        Ok(fwd) => Verdict::Forward(fwd),
        Err(reason) => Verdict::Pass(reason),
    }
}

#[inline(always)]
fn try_decide(
    pkt: &Packet,
    hook: &Hook,
    target_check: impl Fn(u32, bool) -> Reason,
) -> Result<Forward, Reason> {
    let eth: *const [u8; ETH_HLEN] = pkt.ptr_at(0).ok_or(Reason::Malformed)?;
    // SAFETY: bounds checked by ptr_at.
    let eth = unsafe { &*eth };
    // One flow-rule path for both families (inlining it twice overflows the BPF stack).
    let parsed = match be16([eth[12], eth[13]]) {
        ETH_P_IP => decide_v4(pkt, eth)?,
        ETH_P_IPV6 => decide_v6(pkt, eth)?,
        ETH_P_8021Q | ETH_P_8021AD => return Err(Reason::Vlan),
        _ => return Err(Reason::NotIp),
    };
    let target = match hook.side {
        Side::Pod => pod_target(hook, eth, &parsed),
        Side::Uplink => uplink_target(hook.ingress, eth, &parsed),
    };
    apply_flow_rule(parsed, target, hook.side, target_check)
}

/// Where a packet may go, and how.
struct Target {
    endpoint: Endpoint,
    to_uplink: bool,
}

/// A packet that passed the IP-level checks (rules 1, 2): its addresses, transport header and
/// TTL / hop limit, for the endpoint checks (rules 3 to 5) and the flow rule (rule 6).
struct Parsed {
    l3: L3,
    addrs: Addrs,
    l4: L4,
    ttl: u8,
}

#[inline(always)]
fn decide_v4(pkt: &Packet, eth: &[u8; ETH_HLEN]) -> Result<Parsed, Reason> {
    let ip: *const [u8; IPV4_HLEN] = pkt.ptr_at(ETH_HLEN).ok_or(Reason::Malformed)?;
    // SAFETY: bounds checked by ptr_at.
    let ip = unsafe { &*ip };
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ip[0] >> 4 != 4 || ihl < IPV4_HLEN {
        return Err(Reason::Malformed);
    }
    // The header (with any options) must fit in the total length, which must fit the frame.
    let total = usize::from(be16([ip[2], ip[3]]));
    if total < ihl || ETH_HLEN + total > pkt.len() {
        return Err(Reason::Malformed);
    }
    if ihl != IPV4_HLEN {
        return Err(Reason::Ipv4Options);
    }
    // MF set or a non-zero offset: a fragment (DF, 0x4000, is fine).
    if be16([ip[6], ip[7]]) & 0x3fff != 0 {
        return Err(Reason::Fragment);
    }
    let dst = [ip[16], ip[17], ip[18], ip[19]];
    if eth[0] & 1 != 0 || !ipv4_is_forwardable_unicast(dst) {
        return Err(Reason::NotUnicast);
    }
    let a: *const [u16; 4] = pkt.ptr_at(ETH_HLEN + 12).ok_or(Reason::Malformed)?;
    // SAFETY: bounds checked by ptr_at.
    let a = unsafe { &*a };
    let l4 = parse_l4(
        pkt,
        ETH_HLEN + IPV4_HLEN,
        total - IPV4_HLEN,
        ip[9],
        FAMILY_V4,
    )?;
    let addrs = Addrs {
        family: FAMILY_V4,
        src: [word([a[0], a[1]]), 0, 0, 0],
        dst: [word([a[2], a[3]]), 0, 0, 0],
    };
    Ok(Parsed {
        l3: L3::V4,
        addrs,
        l4,
        ttl: ip[8],
    })
}

#[inline(always)]
fn decide_v6(pkt: &Packet, eth: &[u8; ETH_HLEN]) -> Result<Parsed, Reason> {
    let ip: *const [u8; IPV6_HLEN] = pkt.ptr_at(ETH_HLEN).ok_or(Reason::Malformed)?;
    // SAFETY: bounds checked by ptr_at.
    let ip = unsafe { &*ip };
    if ip[0] >> 4 != 6 {
        return Err(Reason::Malformed);
    }
    let payload = usize::from(be16([ip[4], ip[5]]));
    if ETH_HLEN + IPV6_HLEN + payload > pkt.len() {
        return Err(Reason::Malformed);
    }
    let next = ip[6];
    if next == IPV6_NEXT_FRAGMENT {
        return Err(Reason::Fragment);
    }
    if ipv6_is_extension_header(next) {
        return Err(Reason::Ipv6ExtHeader);
    }
    let a: *const [u16; 16] = pkt.ptr_at(ETH_HLEN + 8).ok_or(Reason::Malformed)?;
    // SAFETY: bounds checked by ptr_at.
    let a = unsafe { &*a };
    let src = [
        word([a[0], a[1]]),
        word([a[2], a[3]]),
        word([a[4], a[5]]),
        word([a[6], a[7]]),
    ];
    let dst = [
        word([a[8], a[9]]),
        word([a[10], a[11]]),
        word([a[12], a[13]]),
        word([a[14], a[15]]),
    ];
    if eth[0] & 1 != 0 || !ipv6_words_are_forwardable_unicast(&dst) {
        return Err(Reason::NotUnicast);
    }
    let l4 = parse_l4(pkt, ETH_HLEN + IPV6_HLEN, payload, next, FAMILY_V6)?;
    Ok(Parsed {
        l3: L3::V6,
        ttl: ip[7],
        addrs: Addrs {
            family: FAMILY_V6,
            src,
            dst,
        },
        l4,
    })
}

/// The local endpoint of an address.
#[inline(always)]
fn local(addrs: &Addrs, dst: bool) -> Option<&'static Endpoint> {
    let a = if dst { &addrs.dst } else { &addrs.src };
    if addrs.family == FAMILY_V4 {
        ENDPOINTS_V4.get(Key::new(32, a[0].to_ne_bytes()))
    } else {
        ENDPOINTS_V6.get(Key::new(128, addr_bytes(a)))
    }
}

/// The remote prefix an address falls in.
#[inline(always)]
fn remote(addrs: &Addrs, dst: bool) -> Option<&'static Remote> {
    let a = if dst { &addrs.dst } else { &addrs.src };
    if addrs.family == FAMILY_V4 {
        REMOTE_V4.get(Key::new(32, a[0].to_ne_bytes()))
    } else {
        REMOTE_V6.get(Key::new(128, addr_bytes(a)))
    }
}

/// Rules 3 to 5 on a pod's host veth: the destination is a meshed local pod behind another veth,
/// or a meshed remote pod reached through an uplink (`fib_target`); the source is the meshed pod
/// behind the ingress veth. Shared by both families (one copy of it and of the flow rule in the
/// program: inlined once per family, the two overflowed the BPF stack).
#[inline(always)]
fn pod_target(hook: &Hook, eth: &[u8; ETH_HLEN], p: &Parsed) -> Result<Target, Reason> {
    let ingress = hook.ingress;
    let dst_ep = local(&p.addrs, true);
    let via = match dst_ep {
        Some(dst) => {
            if dst.ifindex == ingress {
                return Err(Reason::SameInterface);
            }
            if !dst.is_meshed() {
                return Err(Reason::NotMeshed);
            }
            0
        }
        None => {
            let r = remote(&p.addrs, true).ok_or(Reason::NoEndpoint)?;
            if !r.is_meshed() {
                return Err(Reason::NotMeshed);
            }
            // Any uplink (0), or the one the prefix names: never 0 below, so the remote case
            // is told apart without an `Option` (whose undefined bytes the verifier rejects
            // when spilled).
            if r.uplink == 0 {
                u32::MAX
            } else {
                r.uplink
            }
        }
    };
    check_source(ingress, eth, local(&p.addrs, false))?;
    if p.ttl <= 1 {
        return Err(Reason::TtlExpired);
    }
    match dst_ep {
        Some(dst) => Ok(Target {
            endpoint: *dst,
            to_uplink: false,
        }),
        None => fib_target(hook, p, via),
    }
}

/// The next hop towards a meshed remote pod, from the kernel's FIB (routes, policy rules,
/// neighbours, the egress MTU), as if the packet arrived on `hook.ingress`. Only a route out of
/// an attached uplink (`want`, or any if `u32::MAX`) with a resolved neighbour is taken; the
/// kernel path handles the rest (it resolves a missing neighbour).
///
/// The helper's 64-byte parameter block lives in a per-CPU scratch map, not on the stack: the
/// pod programs use all but 32 of the verifier's 512 bytes (rounded per frame to 32), and the
/// fields are written straight from the parsed packet.
#[inline(always)]
fn fib_target(hook: &Hook, p: &Parsed, want: u32) -> Result<Target, Reason> {
    let fib = FIB_SCRATCH.get_ptr_mut(0).ok_or(Reason::NoRoute)?;
    // SAFETY: this CPU's slot of a per-CPU array, used only within this program run (a program
    // runs to completion on its CPU).
    let fib = unsafe { &mut *fib };
    // SAFETY: a plain C struct; all-zero is its "nothing set" value.
    *fib = unsafe { core::mem::zeroed() };
    fib.family = if p.addrs.family == FAMILY_V4 {
        AF_INET
    } else {
        AF_INET6
    };
    fib.l4_protocol = p.l4.proto;
    fib.sport = p.l4.sport;
    fib.dport = p.l4.dport;
    fib.__bindgen_anon_1.tot_len = hook.fib_tot_len;
    fib.ifindex = hook.ingress;
    // Addresses in network order, as `AddrWords` hold them: an IPv4 one is word 0.
    fib.__bindgen_anon_3.ipv6_src = p.addrs.src;
    fib.__bindgen_anon_4.ipv6_dst = p.addrs.dst;
    // SAFETY: helper call with the program's context and a map value of the size given.
    let rc = unsafe {
        bpf_fib_lookup(
            hook.ctx,
            core::ptr::from_mut(fib),
            size_of::<FibParams>() as i32,
            0,
        )
    };
    match rc as u32 {
        BPF_FIB_LKUP_RET_SUCCESS => {}
        BPF_FIB_LKUP_RET_NO_NEIGH => return Err(Reason::NoNeighbour),
        BPF_FIB_LKUP_RET_FRAG_NEEDED => return Err(Reason::MtuExceeded),
        _ => return Err(Reason::NoRoute),
    }
    let out = fib.ifindex;
    if want != u32::MAX && out != want {
        return Err(Reason::NotUplink);
    }
    // SAFETY: only tests for presence.
    if unsafe { UPLINKS.get(&out) }.is_none() {
        return Err(Reason::NotUplink);
    }
    Ok(Target {
        endpoint: Endpoint {
            ifindex: out,
            flags: EP_F_MESHED,
            pod_mac: fib.dmac,
            host_mac: fib.smac,
        },
        to_uplink: true,
    })
}

/// Rules 3 to 5 on an uplink: the destination is a meshed local pod; the source is a meshed
/// remote pod (in a remote prefix, arriving on the uplink that prefix names, never a local
/// address: a frame from the wire claiming a local pod's address is a spoof); the frame is
/// addressed to the uplink's MAC.
#[inline(always)]
fn uplink_target(ingress: u32, eth: &[u8; ETH_HLEN], p: &Parsed) -> Result<Target, Reason> {
    let Some(dst) = local(&p.addrs, true) else {
        if p.l4.proto == IPPROTO_UDP && udp_port_is_overlay(p.l4.dport) {
            return Err(Reason::Encapsulated);
        }
        return Err(Reason::NoEndpoint);
    };
    if !dst.is_meshed() {
        return Err(Reason::NotMeshed);
    }
    if local(&p.addrs, false).is_some() {
        return Err(Reason::SrcMismatch);
    }
    let src = remote(&p.addrs, false).ok_or(Reason::NotMeshed)?;
    if !src.is_meshed() {
        return Err(Reason::NotMeshed);
    }
    if src.uplink != 0 && src.uplink != ingress {
        return Err(Reason::SrcMismatch);
    }
    // SAFETY: the value is copied out at once.
    let up = unsafe { UPLINKS.get(&ingress) }.ok_or(Reason::NotUplink)?;
    if eth[0..6] != up.mac {
        return Err(Reason::NotToHost);
    }
    if p.ttl <= 1 {
        return Err(Reason::TtlExpired);
    }
    Ok(Target {
        endpoint: *dst,
        to_uplink: false,
    })
}

/// Reads the transport header at `off`; `room` is what the IP header says follows it.
/// ICMP errors, NDP and protocols the flow rule does not know are decided here.
#[inline(always)]
fn parse_l4(pkt: &Packet, off: usize, room: usize, proto: u8, family: u8) -> Result<L4, Reason> {
    match proto {
        IPPROTO_TCP => {
            let h: *const [u16; TCP_READ / 2] = pkt.ptr_at(off).ok_or(Reason::Malformed)?;
            if room < TCP_READ {
                return Err(Reason::Malformed);
            }
            // SAFETY: bounds checked by ptr_at.
            let h = unsafe { &*h };
            Ok(L4 {
                proto,
                flags: h[6].to_ne_bytes()[1],
                sport: h[0],
                dport: h[1],
                seq: u32::from_be(word([h[2], h[3]])),
                ack: u32::from_be(word([h[4], h[5]])),
            })
        }
        IPPROTO_UDP => {
            let h: *const [u16; 2] = pkt.ptr_at(off).ok_or(Reason::Malformed)?;
            if room < UDP_HLEN {
                return Err(Reason::Malformed);
            }
            // SAFETY: bounds checked by ptr_at.
            let h = unsafe { &*h };
            Ok(L4 {
                proto,
                flags: 0,
                sport: h[0],
                dport: h[1],
                seq: 0,
                ack: 0,
            })
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            let icmp_type: *const u8 = pkt.ptr_at(off).ok_or(Reason::Malformed)?;
            if room < 1 {
                return Err(Reason::Malformed);
            }
            // SAFETY: bounds checked by ptr_at.
            let icmp_type = unsafe { *icmp_type };
            let kind = if family == FAMILY_V4 && proto == IPPROTO_ICMP {
                icmpv4_kind(icmp_type)
            } else if family == FAMILY_V6 && proto == IPPROTO_ICMPV6 {
                if icmpv6_is_ndp(icmp_type) {
                    return Err(Reason::Ndp);
                }
                icmpv6_kind(icmp_type)
            } else {
                // ICMP in IPv6 or ICMPv6 in IPv4: nothing we forward.
                IcmpKind::Other
            };
            let request = match kind {
                IcmpKind::EchoRequest => true,
                IcmpKind::EchoReply => false,
                IcmpKind::Error => return Err(Reason::IcmpError),
                IcmpKind::Other => return Err(Reason::OtherProtocol),
            };
            let h: *const [u16; ICMP_HLEN / 2] = pkt.ptr_at(off).ok_or(Reason::Malformed)?;
            if room < ICMP_HLEN {
                return Err(Reason::Malformed);
            }
            // SAFETY: bounds checked by ptr_at.
            let h = unsafe { &*h };
            Ok(L4 {
                proto,
                flags: u8::from(request),
                sport: h[2],
                dport: h[2],
                seq: 0,
                ack: 0,
            })
        }
        IPPROTO_IPIP | IPPROTO_IPV6 | IPPROTO_GRE => Err(Reason::Encapsulated),
        _ => Err(Reason::OtherProtocol),
    }
}

/// Rule 6 on top of rules 3 to 5 (`pod_target`, `uplink_target`): the flow rule. A UDP
/// datagram to an address that is no pod marks its source socket (`KERNEL_SOCKETS`).
#[inline(always)]
fn apply_flow_rule(
    p: Parsed,
    target: Result<Target, Reason>,
    side: Side,
    target_check: impl Fn(u32, bool) -> Reason,
) -> Result<Forward, Reason> {
    let verdict = match target {
        Ok(t) => match target_check(t.endpoint.ifindex, t.to_uplink) {
            Reason::Redirected => flow_rule(&p.addrs, &p.l4).map(|()| Forward {
                endpoint: t.endpoint,
                to_uplink: t.to_uplink,
                l3: p.l3,
            }),
            reason => Err(reason),
        },
        Err(reason) => Err(reason),
    };
    if matches!(verdict, Err(Reason::NoEndpoint)) && p.l4.proto == IPPROTO_UDP {
        // Sent to an address that is no pod: a Service VIP, a node port, an external address.
        // Only such a destination can be translated on the way (kube-proxy never rewrites a
        // pod's own address), so only such a datagram marks its socket. A transient pass (a
        // redirect target missing for a moment during a switch) must not move a socket to the
        // kernel path for good. On an uplink the sender is a remote pod (a node port here):
        // its socket is marked so that the local pod's answers meet this node's reverse NAT.
        remember_kernel_socket(&p.addrs, p.l4.sport, side);
    }
    verdict
}

#[inline(always)]
const fn initiator(src_is_lo: bool) -> u8 {
    if src_is_lo {
        FLOW_INITIATOR_LO
    } else {
        FLOW_INITIATOR_HI
    }
}

/// Rule 6 for a packet that may otherwise be redirected (and will be, if this says yes): checks
/// and updates `FLOWS`.
#[inline(always)]
fn flow_rule(addrs: &Addrs, l4: &L4) -> Result<(), Reason> {
    if l4.proto == IPPROTO_UDP {
        let socket = SocketKey {
            addr: addrs.dst,
            port: l4.dport,
            family: addrs.family,
            pad: 0,
        };
        // SAFETY: only tests for presence; the value is never read.
        if unsafe { KERNEL_SOCKETS.get(&socket) }.is_some() {
            return Err(Reason::UdpKernelSocket);
        }
        return Ok(());
    }
    let (key, src_is_lo) = FlowKey::new(
        addrs.family,
        l4.proto,
        &addrs.src,
        l4.sport,
        &addrs.dst,
        l4.dport,
    );
    if l4.proto != IPPROTO_TCP {
        // ICMP echo: a request starts an exchange, a reply needs one.
        if l4.flags != 0 {
            return start_flow(
                &key,
                &Flow {
                    syn_seq: 0,
                    initiator: initiator(src_is_lo),
                    pad: [0; 3],
                },
            );
        }
        // SAFETY: only tests for presence.
        if unsafe { FLOWS.get(&key) }.is_none() {
            return Err(Reason::FlowNotSeen);
        }
        return Ok(());
    }
    let flags = l4.flags & (TCP_SYN | TCP_ACK | TCP_RST | TCP_FIN);
    if flags == TCP_SYN {
        // A new connection (or its retransmitted SYN, or a new connection reusing the ports:
        // the entry is replaced).
        return start_flow(
            &key,
            &Flow {
                syn_seq: l4.seq,
                initiator: initiator(src_is_lo),
                pad: [0; 3],
            },
        );
    }
    // SAFETY: the value is copied out at once; a concurrent update of an 8-byte value can at
    // worst give a mix of two valid entries, which the checks below reject.
    let flow = unsafe { FLOWS.get(&key) }
        .copied()
        .ok_or(Reason::FlowNotSeen)?;
    if flags & TCP_SYN != 0
        && (flags != TCP_SYN | TCP_ACK
            || flow.initiator == initiator(src_is_lo)
            || l4.ack != flow.syn_seq.wrapping_add(1))
    {
        // Not the answer to the SYN we saw: these ports now carry a connection the program did
        // not see start (a DNAT'd one reusing them, typically). It belongs to the kernel, and
        // so do the rest of its packets.
        let _ = FLOWS.remove(&key);
        return Err(Reason::FlowNotSeen);
    }
    if flags & TCP_RST != 0 {
        // The connection is over (this RST still takes the fast path).
        let _ = FLOWS.remove(&key);
    }
    Ok(())
}

/// Records a flow start. If that fails, the packet goes to the kernel, and so the flow lives
/// there (conntrack sees its start).
#[inline(always)]
fn start_flow(key: &FlowKey, flow: &Flow) -> Result<(), Reason> {
    FLOWS
        .insert(key, flow, 0)
        .map_err(|_| Reason::FlowTableFull)
}

/// Marks a local pod's UDP socket as talking through the kernel path (see `flow_rule`).
/// Looks first: most datagrams of an exchange find the mark already there, and a lookup is
/// cheaper than an update (it also refreshes the entry's LRU age). Only on the kernel path, so
/// a BPF subprogram: it adds nothing to the fast path's stack frame.
#[inline(never)]
fn remember_kernel_socket(addrs: &Addrs, port: u16, side: Side) {
    // On an uplink, only meshed remote pods: everything else arriving for the node (the
    // node's own DNS answers, external clients) would only churn the table.
    if side == Side::Uplink && !remote(addrs, false).is_some_and(Remote::is_meshed) {
        return;
    }
    let socket = SocketKey {
        addr: addrs.src,
        port,
        family: addrs.family,
        pad: 0,
    };
    // SAFETY: only tests for presence.
    if unsafe { KERNEL_SOCKETS.get(&socket) }.is_none() {
        // An LRU insert evicts rather than fails; should it fail all the same, this datagram
        // still goes to the kernel, and the replies of an exchange that stays unmarked are
        // the one risk, as with an evicted mark (README).
        let _ = KERNEL_SOCKETS.insert(&socket, &0, 0);
    }
}

/// Rule 4 on a pod's host veth: the source really is the meshed pod behind the ingress veth
/// (its endpoint names that veth: anti-spoofing), and the frame is addressed to that veth's
/// MAC, as the kernel would require.
#[inline(always)]
fn check_source(ingress: u32, eth: &[u8; ETH_HLEN], src: Option<&Endpoint>) -> Result<(), Reason> {
    let src = src.ok_or(Reason::SrcMismatch)?;
    if src.ifindex != ingress {
        return Err(Reason::SrcMismatch);
    }
    if !src.is_meshed() {
        return Err(Reason::NotMeshed);
    }
    if eth[0..6] != src.host_mac {
        return Err(Reason::NotToHost);
    }
    Ok(())
}

/// Rewrites the frame for delivery to `fwd.endpoint` (a local pod, or the next hop out of an
/// uplink): MACs, then TTL (with the IPv4 header
/// checksum fixed incrementally) or hop limit. `decide` has already bounds-checked these
/// headers, but the verifier needs its own check in this function.
#[inline(always)]
pub fn rewrite(pkt: &Packet, fwd: &Forward) {
    let Some(eth) = pkt.ptr_at::<[u8; ETH_HLEN]>(0) else {
        return;
    };
    // SAFETY: bounds checked by ptr_at; the program owns the frame.
    let eth = unsafe { &mut *eth };
    eth[0..6].copy_from_slice(&fwd.endpoint.pod_mac);
    eth[6..12].copy_from_slice(&fwd.endpoint.host_mac);
    match fwd.l3 {
        L3::V4 => {
            if let Some(ip) = pkt.ptr_at::<[u8; IPV4_HLEN]>(ETH_HLEN) {
                // SAFETY: as above.
                let ip = unsafe { &mut *ip };
                ip[8] -= 1;
                let check = csum_after_ttl_decrement(be16([ip[10], ip[11]])).to_be_bytes();
                ip[10] = check[0];
                ip[11] = check[1];
            }
        }
        L3::V6 => {
            if let Some(ip) = pkt.ptr_at::<[u8; IPV6_HLEN]>(ETH_HLEN) {
                // SAFETY: as above.
                unsafe { (*ip)[7] -= 1 };
            }
        }
    }
}

/// Counts one packet of `len` bytes under `reason` (per-CPU, no atomics needed).
#[inline(always)]
pub fn count(reason: Reason, len: usize) {
    if let Some(c) = COUNTERS.get_ptr_mut(u32::from(reason as u8)) {
        // SAFETY: per-CPU slot, not shared with another CPU; the program is not reentrant on
        // one CPU for this hook.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += len as u64;
        }
    }
}
