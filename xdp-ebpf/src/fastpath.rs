//! Hook-independent datapath logic: parse, decide, rewrite, count.
//!
//! Works on a `[start, end)` view of a linear packet, which both XDP (`xdp_md->data`) and TC
//! (`__sk_buff->data` after `bpf_skb_pull_data`) provide.
use core::mem::size_of;

use aya_ebpf::maps::lpm_trie::Key;
use common::{
    pkt::{
        csum_after_ttl_decrement, icmpv6_is_ndp, ipv4_is_forwardable_unicast,
        ipv6_is_extension_header, ipv6_is_forwardable_unicast, IPPROTO_ICMPV6, IPV6_NEXT_FRAGMENT,
    },
    Endpoint, Reason,
};

use crate::maps::{COUNTERS, ENDPOINTS_V4, ENDPOINTS_V6};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPV4_HLEN: usize = 20;
const IPV6_HLEN: usize = 40;

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

pub struct Forward {
    pub endpoint: Endpoint,
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

/// Decides what to do with a frame that arrived on `ingress` (host-side veth ifindex).
/// Reads only; `rewrite` writes once the hook has committed to the redirect.
#[inline(always)]
pub fn decide(pkt: &Packet, ingress: u32) -> Verdict {
    match try_decide(pkt, ingress) {
        Ok(fwd) => Verdict::Forward(fwd),
        Err(reason) => Verdict::Pass(reason),
    }
}

#[inline(always)]
fn try_decide(pkt: &Packet, ingress: u32) -> Result<Forward, Reason> {
    let eth: *const [u8; ETH_HLEN] = pkt.ptr_at(0).ok_or(Reason::Malformed)?;
    // SAFETY: bounds checked by ptr_at.
    let eth = unsafe { *eth };
    match be16([eth[12], eth[13]]) {
        ETH_P_IP => decide_v4(pkt, ingress, &eth),
        ETH_P_IPV6 => decide_v6(pkt, ingress, &eth),
        ETH_P_8021Q | ETH_P_8021AD => Err(Reason::Vlan),
        _ => Err(Reason::NotIp),
    }
}

#[inline(always)]
fn decide_v4(pkt: &Packet, ingress: u32, eth: &[u8; ETH_HLEN]) -> Result<Forward, Reason> {
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
    let src = [ip[12], ip[13], ip[14], ip[15]];
    let dst = [ip[16], ip[17], ip[18], ip[19]];
    if eth[0] & 1 != 0 || !ipv4_is_forwardable_unicast(dst) {
        return Err(Reason::NotUnicast);
    }
    let dst_ep = ENDPOINTS_V4
        .get(Key::new(32, dst))
        .ok_or(Reason::NoEndpoint)?;
    let src_ep = ENDPOINTS_V4.get(Key::new(32, src));
    let endpoint = check_endpoints(ingress, eth, dst_ep, src_ep)?;
    if ip[8] <= 1 {
        return Err(Reason::TtlExpired);
    }
    Ok(Forward {
        endpoint,
        l3: L3::V4,
    })
}

#[inline(always)]
fn decide_v6(pkt: &Packet, ingress: u32, eth: &[u8; ETH_HLEN]) -> Result<Forward, Reason> {
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
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src.copy_from_slice(&ip[8..24]);
    dst.copy_from_slice(&ip[24..40]);
    if eth[0] & 1 != 0 || !ipv6_is_forwardable_unicast(dst) {
        return Err(Reason::NotUnicast);
    }
    if next == IPPROTO_ICMPV6 {
        let icmp_type: *const u8 = pkt.ptr_at(ETH_HLEN + IPV6_HLEN).ok_or(Reason::Malformed)?;
        // SAFETY: bounds checked by ptr_at.
        if icmpv6_is_ndp(unsafe { *icmp_type }) {
            return Err(Reason::Ndp);
        }
    }
    let dst_ep = ENDPOINTS_V6
        .get(Key::new(128, dst))
        .ok_or(Reason::NoEndpoint)?;
    let src_ep = ENDPOINTS_V6.get(Key::new(128, src));
    let endpoint = check_endpoints(ingress, eth, dst_ep, src_ep)?;
    if ip[7] <= 1 {
        return Err(Reason::TtlExpired);
    }
    Ok(Forward {
        endpoint,
        l3: L3::V6,
    })
}

/// Rules 3 and 4 of the design: both ends are meshed local pods, on different veths, and the
/// source really is the pod behind the ingress veth (its endpoint names that veth). The frame
/// must also be addressed to that veth's MAC, as the kernel would require.
#[inline(always)]
fn check_endpoints(
    ingress: u32,
    eth: &[u8; ETH_HLEN],
    dst: &Endpoint,
    src: Option<&Endpoint>,
) -> Result<Endpoint, Reason> {
    if dst.ifindex == ingress {
        return Err(Reason::SameInterface);
    }
    if !dst.is_meshed() {
        return Err(Reason::NotMeshed);
    }
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
    Ok(*dst)
}

/// Rewrites the frame for delivery to `fwd.endpoint`: MACs, then TTL (with the IPv4 header
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
