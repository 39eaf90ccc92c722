//! The xdp-fastpath datapath: an XDP program for the host-side veth of each pod.
//!
//! The hook-independent logic (parsing, lookups, anti-spoofing, rewrite, counters) lives in
//! `fastpath`; this file only binds it to a hook. A TC (TCX + `bpf_redirect_peer`) hook can
//! bind the same logic and the same maps.
#![no_std]
#![no_main]

mod fastpath;
mod maps;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use fastpath::{Packet, Verdict};

#[xdp]
pub fn xdp_fastpath(ctx: XdpContext) -> u32 {
    let pkt = Packet::new(ctx.data(), ctx.data_end());
    let ingress = ctx.ingress_ifindex() as u32;
    match fastpath::decide(&pkt, ingress) {
        Verdict::Pass(reason) => {
            fastpath::count(reason, pkt.len());
            xdp_action::XDP_PASS
        }
        Verdict::Forward(fwd) => {
            // bpf_redirect_map only records the target; the frame moves after we return. So
            // check membership first and rewrite only when the redirect is certain: a
            // rewritten frame passed to the kernel would carry the wrong MACs and TTL. The
            // fallback action (low bits of flags) is XDP_PASS when the port is missing.
            match maps::TX_PORTS.redirect(fwd.endpoint.ifindex, u64::from(xdp_action::XDP_PASS)) {
                Ok(action) => {
                    fastpath::rewrite(&pkt, &fwd);
                    fastpath::count(common::Reason::Redirected, pkt.len());
                    action
                }
                Err(_) => {
                    fastpath::count(common::Reason::TxPortMissing, pkt.len());
                    xdp_action::XDP_PASS
                }
            }
        }
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
