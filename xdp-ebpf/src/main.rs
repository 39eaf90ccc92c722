//! The xdp-fastpath datapath: two hooks over one piece of logic and one set of maps.
//!
//! - `xdp_fastpath`: XDP on the host-side veth, redirecting through the `TX_PORTS` devmap.
//! - `tc_fastpath`: TCX ingress on the host-side veth, redirecting with `bpf_redirect_peer`
//!   straight into the target pod's namespace; the skb keeps its checksum state and GSO.
//!   Both also send a meshed pod's packets for a meshed remote pod out of the uplink the FIB
//!   names (devmap / `bpf_redirect`).
//! - `xdp_uplink`, `tc_uplink`: the same on an uplink, for packets from other nodes.
//!
//! Parsing, lookups, anti-spoofing, rewrite and counters live in `fastpath`; the hooks only
//! commit the redirect in their own way.
#![no_std]
#![no_main]

mod fastpath;
mod maps;
mod monitor;

use aya_ebpf::{
    bindings::{__sk_buff, bpf_check_mtu_flags::BPF_MTU_CHK_SEGS},
    bindings::{xdp_action, TC_ACT_OK},
    helpers::generated::{bpf_check_mtu, bpf_redirect, bpf_redirect_peer, bpf_xdp_get_buff_len},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use common::{
    monitor::{ACTION_PASS, ACTION_REDIRECT, HOOK_TC, HOOK_TC_UPLINK, HOOK_XDP, HOOK_XDP_UPLINK},
    Reason, ATT_ROLE_POD,
};
use fastpath::{Hook, Packet, Side, Verdict};

const ETH_HLEN: usize = 14;
/// IP packets up to this length skip the target MTU check (a helper call): it is IPv6's
/// minimum MTU, and no pod veth is expected below it. Request/response traffic is small, so
/// its packets pay nothing for the check.
const MTU_ALWAYS_FITS: u32 = 1280;

/// Declared multi-buffer capable (`xdp.frags`): without it the kernel refuses to attach to a
/// veth whose peer MTU exceeds one page (ERANGE, "Peer MTU is too large"), so pods with jumbo
/// MTU could not have the fast path. Headers are always in the first buffer; only length
/// checks need the whole frame, which `bpf_xdp_get_buff_len` gives.
#[xdp(frags)]
pub fn xdp_fastpath(ctx: XdpContext) -> u32 {
    xdp_run(&ctx, Side::Pod, HOOK_XDP)
}

/// The uplink program: frames from other nodes for a meshed local pod go straight into its
/// veth (which must be attached with XDP: a `TX_PORTS` member).
#[xdp(frags)]
pub fn xdp_uplink(ctx: XdpContext) -> u32 {
    xdp_run(&ctx, Side::Uplink, HOOK_XDP_UPLINK)
}

#[inline(always)]
fn xdp_run(ctx: &XdpContext, side: Side, hook_id: u8) -> u32 {
    // SAFETY: plain helper call on the program's own context.
    let len = unsafe { bpf_xdp_get_buff_len(ctx.ctx) } as usize;
    let pkt = Packet::new(ctx.data(), ctx.data_end(), len);
    let ingress = ctx.ingress_ifindex() as u32;
    let hook = Hook {
        ctx: ctx.ctx.cast(),
        ingress,
        side,
        // The FIB checks this IP length against the route's MTU.
        fib_tot_len: core::cmp::min(len.saturating_sub(ETH_HLEN), usize::from(u16::MAX)) as u16,
    };
    // bpf_redirect_map only records the target; the frame moves after we return, and only on
    // XDP_REDIRECT. So the redirect is set up while deciding (the flow rule must know that the
    // packet will really go), and rewrite happens only once it is certain: a rewritten frame
    // passed to the kernel would carry the wrong MACs and TTL. The fallback action (low bits of
    // flags) is XDP_PASS when the port is missing. TX_PORTS holds only interfaces whose other
    // side takes native redirects: XDP-attached pod veths, and uplinks attached with XDP.
    let target_check = |ifindex: u32, to_uplink: bool| {
        if maps::TX_PORTS
            .redirect(ifindex, u64::from(xdp_action::XDP_PASS))
            .is_err()
        {
            return Reason::TxPortMissing;
        }
        // Out of an uplink, the FIB lookup has checked the MTU.
        if to_uplink {
            return Reason::Redirected;
        }
        // veth's XDP transmit drops a frame longer than the target's MTU (after it was counted
        // as redirected): the kernel path fragments it or sends the ICMP error instead. The L3
        // length (the whole frame, frags included, minus Ethernet) is passed explicitly: the
        // helper would otherwise measure the first buffer only.
        let mut l3_len = len.saturating_sub(ETH_HLEN) as u32;
        if l3_len <= MTU_ALWAYS_FITS {
            return Reason::Redirected;
        }
        // SAFETY: plain helper call on the program's own context and a stack variable.
        match unsafe { bpf_check_mtu(ctx.ctx.cast(), ifindex, &raw mut l3_len, 0, 0) } {
            0 => Reason::Redirected,
            _ => Reason::MtuExceeded,
        }
    };
    match fastpath::decide(&pkt, &hook, target_check) {
        Verdict::Pass(reason) => {
            let (start, end) = (ctx.data(), ctx.data_end());
            account(
                hook_id,
                reason,
                ACTION_PASS,
                start,
                end,
                pkt.len(),
                ingress,
                0,
            );
            xdp_action::XDP_PASS
        }
        Verdict::Forward(fwd) => {
            fastpath::rewrite(&pkt, &fwd);
            let (start, end, egress) = (ctx.data(), ctx.data_end(), fwd.endpoint.ifindex);
            let reason = Reason::Redirected;
            account(
                hook_id,
                reason,
                ACTION_REDIRECT,
                start,
                end,
                pkt.len(),
                ingress,
                egress,
            );
            xdp_action::XDP_REDIRECT
        }
    }
}

/// Ethernet + IPv4 / IPv6 header + the first 14 bytes of TCP (ports, sequence and ack numbers,
/// flags): the most `decide` reads of an IPv4 / IPv6 packet.
const PULL_LEN_V4: u32 = 14 + 20 + 14;
const PULL_LEN_V6: u32 = 14 + 40 + 14;
const ETH_P_IPV6: u16 = 0x86dd;

#[classifier]
pub fn tc_fastpath(ctx: TcContext) -> i32 {
    tc_run(&ctx, Side::Pod, HOOK_TC)
}

/// The uplink program: packets from other nodes for a meshed local pod go straight into the
/// pod's namespace (`bpf_redirect_peer` into its veth).
#[classifier]
pub fn tc_uplink(ctx: TcContext) -> i32 {
    tc_run(&ctx, Side::Uplink, HOOK_TC_UPLINK)
}

#[inline(always)]
fn tc_run(ctx: &TcContext, side: Side, hook_id: u8) -> i32 {
    // An skb's linear part may hold only the Ethernet header (DESIGN.md section 3): pull what
    // `decide` reads, or such packets would silently take the slow path. Pulling invalidates
    // packet pointers, so the view is taken after it. Only what this packet's family needs:
    // a TCP skb from a pod's stack carries its headers linear and its payload in page frags,
    // so asking for one byte more than the headers (the IPv6 length for an IPv4 packet)
    // would copy payload into the head on every packet (measured: +290 ns a packet).
    // SAFETY: reading a field of the program's own context.
    let proto = u16::from_be(unsafe { (*ctx.skb.skb).protocol } as u16);
    let need = if proto == ETH_P_IPV6 {
        PULL_LEN_V6
    } else {
        PULL_LEN_V4
    };
    let want = core::cmp::min(ctx.len(), need);
    if ctx.data_end() - ctx.data() < want as usize {
        let _ = ctx.pull_data(want);
    }
    let len = ctx.len() as usize;
    let pkt = Packet::new(ctx.data(), ctx.data_end(), len);
    // SAFETY: reading fields of the program's own context.
    let (ingress, gso) = unsafe { ((*ctx.skb.skb).ingress_ifindex, (*ctx.skb.skb).gso_size != 0) };
    let hook = Hook {
        ctx: ctx.skb.skb.cast(),
        ingress,
        side,
        // The IP length, checked by the FIB against the route's MTU (a locked route MTU or a
        // learned path MTU, else the device's), as for XDP. With 0 the helper would only ask
        // `is_skb_forwardable`, which ignores the route and lets 4 bytes more through (room for
        // a VLAN tag). A GSO skb's length is its whole burst: 0 for it, which the helper lets
        // through; `target_check` then checks its segments against the uplink's MTU.
        fib_tot_len: if gso {
            0
        } else {
            core::cmp::min(len.saturating_sub(ETH_HLEN), usize::from(u16::MAX)) as u16
        },
    };
    let target_check = |ifindex: u32, to_uplink: bool| {
        // Out of an uplink: `UPLINKS` has been checked, and the FIB lookup checked the MTU,
        // except for GSO skbs, which it lets through whatever their segment size: they are
        // checked per segment below.
        if !to_uplink {
            // A redirect into an interface we did not attach as a pod veth (an endpoint
            // left behind by a gone pod, an ifindex now used by something else, an uplink)
            // would be dropped: bpf_redirect_peer only reaches the peer of a veth.
            // SAFETY: the value is read at once.
            match unsafe { maps::ATTACHMENTS.get(&ifindex) } {
                Some(att) if att.role == ATT_ROLE_POD => {}
                _ => return Reason::TxPortMissing,
            }
        }
        if len <= ETH_HLEN + MTU_ALWAYS_FITS as usize {
            return Reason::Redirected;
        }
        tc_fits_mtu(ctx.skb.skb, ifindex)
    };
    match fastpath::decide(&pkt, &hook, target_check) {
        Verdict::Pass(reason) => {
            let (start, end) = (ctx.data(), ctx.data_end());
            account(hook_id, reason, ACTION_PASS, start, end, len, ingress, 0);
            TC_ACT_OK as i32
        }
        Verdict::Forward(fwd) => {
            fastpath::rewrite(&pkt, &fwd);
            let (start, end, egress) = (ctx.data(), ctx.data_end(), fwd.endpoint.ifindex);
            let reason = Reason::Redirected;
            account(
                hook_id,
                reason,
                ACTION_REDIRECT,
                start,
                end,
                len,
                ingress,
                egress,
            );
            if fwd.to_uplink {
                // Out of the uplink (its transmit path: qdisc, then the driver, which fills
                // a partial checksum or segments GSO as the device can).
                // SAFETY: plain helper call; returns TC_ACT_REDIRECT for flags 0.
                unsafe { bpf_redirect(egress, 0) as i32 }
            } else {
                // SAFETY: plain helper call; flags must be 0. It cannot fail for flags 0: it
                // returns TC_ACT_REDIRECT and the skb moves to the peer of the target veth (the
                // target pod's eth0), in the pod's namespace, after we return.
                unsafe { bpf_redirect_peer(egress, 0) as i32 }
            }
        }
    }
}

/// bpf_redirect_peer hands the skb to the pod whatever its length: check the target's MTU (the
/// host veth's; a CNI gives both ends of a pod's veth the same one). A GSO skb is checked per
/// segment (BPF_MTU_CHK_SEGS), as the kernel's forwarding would.
#[inline(always)]
fn tc_fits_mtu(skb: *mut __sk_buff, ifindex: u32) -> Reason {
    let mut mtu_len = 0u32;
    // SAFETY: plain helper call on the program's own context and a stack variable.
    match unsafe {
        bpf_check_mtu(
            skb.cast(),
            ifindex,
            &raw mut mtu_len,
            0,
            u64::from(BPF_MTU_CHK_SEGS),
        )
    } {
        0 => Reason::Redirected,
        _ => Reason::MtuExceeded,
    }
}

/// The bookkeeping both hooks do for every packet: its counter and, only when a monitor
/// listens, a sampled event (`egress` 0 for a pass).
#[inline(always)]
#[expect(
    clippy::too_many_arguments,
    reason = "inlined into both hooks; scalars only"
)]
fn account(
    hook: u8,
    reason: Reason,
    action: u8,
    start: usize,
    end: usize,
    len: usize,
    ingress: u32,
    egress: u32,
) {
    fastpath::count(reason, len);
    if monitor::enabled() {
        let meta = monitor::meta(reason as u8, action, hook, len);
        let ifaces = u64::from(ingress) | u64::from(egress) << 32;
        monitor::emit(start, end, ifaces, meta);
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
