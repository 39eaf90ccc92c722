//! Sampled datapath events for `xdp-ctl monitor` (see `common::monitor`).
//!
//! The hooks call `enabled` once per packet, after the verdict: one lookup in a one-entry array,
//! which is all a packet pays while nobody listens. Only then `emit` (a BPF subprogram of its
//! own, so its state never grows the hook's stack frame) applies the filters and the sampling,
//! reads the addresses and ports again and writes one `MonitorEvent` into the ring buffer.
use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::generated::{bpf_get_prandom_u32, bpf_ktime_get_ns},
};
use common::{
    monitor::{MonitorEvent, MONITOR_ANY_REASON, STAT_EMITTED, STAT_LOST, STAT_SEEN},
    pkt::{IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP},
    FAMILY_V4, FAMILY_V6,
};

use crate::maps::{MONITOR_CONFIG, MONITOR_EVENTS, MONITOR_STATS};

const ETH_HLEN: usize = 14;
/// The reader is woken only once this much waits in the ring buffer (it also polls every 50 ms).
/// By default a submit wakes a reader that keeps up, i.e. at every event: measured, that made
/// each emitting packet cost about a microsecond more under a TCP ping-pong.
const WAKEUP_BYTES: u64 = 64 * 1024;
/// One event in the ring: the record plus the ring buffer's 8-byte header.
const RECORD_BYTES: u64 = core::mem::size_of::<MonitorEvent>() as u64 + 8;

/// True while a monitor listens: the one lookup every packet pays.
#[inline(always)]
pub fn enabled() -> bool {
    MONITOR_CONFIG.get(0).is_some_and(|c| c.enabled != 0)
}

/// Packs what `emit` needs besides the packet into one argument (a BPF call takes five).
#[inline(always)]
pub fn meta(reason: u8, action: u8, hook: u8, len: usize) -> u64 {
    u64::from(reason) | u64::from(action) << 8 | u64::from(hook) << 16 | (len as u64) << 24
}

#[inline(always)]
fn stat(slot: u32) {
    if let Some(c) = MONITOR_STATS.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot.
        unsafe { *c += 1 };
    }
}

#[inline(always)]
fn ptr_at<T>(start: usize, end: usize, offset: usize) -> Option<*const T> {
    let p = start + offset;
    if p + core::mem::size_of::<T>() > end {
        return None;
    }
    Some(p as *const T)
}

/// The network header of `[start, end)`: (family, protocol, transport header offset or 0 when
/// the network header is not a plain one). Family 0: not IP (or truncated).
#[inline(always)]
fn l3(start: usize, end: usize) -> (u8, u8, usize) {
    let Some(eth) = ptr_at::<[u8; ETH_HLEN]>(start, end, 0) else {
        return (0, 0, 0);
    };
    // SAFETY: bounds checked by ptr_at.
    let ethertype = unsafe { u16::from_be_bytes([(*eth)[12], (*eth)[13]]) };
    match ethertype {
        0x0800 => match ptr_at::<[u8; 20]>(start, end, ETH_HLEN) {
            // SAFETY: bounds checked by ptr_at.
            Some(ip) => unsafe {
                let plain =
                    (*ip)[0] == 0x45 && u16::from_be_bytes([(*ip)[6], (*ip)[7]]) & 0x3fff == 0;
                (FAMILY_V4, (*ip)[9], if plain { ETH_HLEN + 20 } else { 0 })
            },
            None => (0, 0, 0),
        },
        0x86dd => match ptr_at::<[u8; 40]>(start, end, ETH_HLEN) {
            // SAFETY: bounds checked by ptr_at.
            Some(ip) => (FAMILY_V6, unsafe { (*ip)[6] }, ETH_HLEN + 40),
            None => (0, 0, 0),
        },
        _ => (0, 0, 0),
    }
}

/// Offsets of the source address in the frame (the destination follows it directly).
const V4_SRC: usize = ETH_HLEN + 12;
const V6_SRC: usize = ETH_HLEN + 8;

/// Reads a `T` (an integer, in memory order) from the packet at `off`, bounds checked.
#[inline(always)]
fn load<T: Copy>(start: usize, end: usize, off: usize) -> Option<T> {
    // SAFETY: bounds checked by ptr_at; packet data has no alignment guarantee.
    ptr_at::<T>(start, end, off).map(|p| unsafe { p.read_unaligned() })
}

/// Whether the packet's source or destination is `addr` (the monitor's `--ip`). Everything
/// here and in `emit` moves whole words between packet, map value and ring buffer: the hook's
/// frame leaves `emit` only a few dozen bytes of the verifier's 512.
#[inline(always)]
fn addr_matches(start: usize, end: usize, family: u8, addr: &[u8; 16]) -> bool {
    let want = addr.as_ptr().cast::<u64>();
    // SAFETY: `addr` is 16 bytes; unaligned reads.
    let (hi, lo) = unsafe { (want.read_unaligned(), want.add(1).read_unaligned()) };
    if family == FAMILY_V4 {
        let want = hi as u32;
        return load::<u32>(start, end, V4_SRC) == Some(want)
            || load::<u32>(start, end, V4_SRC + 4) == Some(want);
    }
    let at = |off: usize| {
        load::<u64>(start, end, off) == Some(hi) && load::<u64>(start, end, off + 8) == Some(lo)
    };
    at(V6_SRC) || at(V6_SRC + 16)
}

/// Writes one event for the packet `[start, end)` (its linear part) if it passes the monitor's
/// filters and sampling. `ifaces` is `ingress | egress << 32`, `meta` comes from `meta`.
///
/// Inlined: as a BPF subprogram its own 64-byte frame, added to the hook's, went over the
/// verifier's 512 bytes once the hooks learnt cross-node forwarding; inlined, it reuses stack
/// slots the decision no longer needs (measured: the hook's frame did not grow). BPF has four
/// callee-saved registers: so few values are live across helper calls, the event is written
/// straight into the reserved ring-buffer record field by field as soon as each is known, and
/// packet, map value and record move in whole words (no arrays on the stack).
#[inline(always)]
pub fn emit(start: usize, end: usize, ifaces: u64, meta: u64) {
    let Some(cfg) = MONITOR_CONFIG.get(0) else {
        return;
    };
    let reason = (meta & 0xff) as u8;
    if cfg.reason != MONITOR_ANY_REASON && cfg.reason != u32::from(reason) {
        return;
    }
    stat(STAT_SEEN);
    let (family, proto, l4) = l3(start, end);
    if cfg.family != 0
        && (cfg.family != u32::from(family) || !addr_matches(start, end, family, &cfg.addr))
    {
        return;
    }
    // SAFETY: plain helper call.
    if cfg.sample > 1 && unsafe { bpf_get_prandom_u32() } % cfg.sample != 0 {
        return;
    }
    let Some(mut entry) = MONITOR_EVENTS.reserve::<MonitorEvent>(0) else {
        stat(STAT_LOST);
        return;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` points at a reserved, writable record of the right size and 8-byte
    // alignment (`src` and `dst` at 8 and 24, `sport` at 52); every field is written before
    // submit, so no uninitialized kernel memory reaches userspace.
    unsafe {
        (*ev).ingress = ifaces as u32;
        (*ev).egress = (ifaces >> 32) as u32;
        (*ev).len = (meta >> 24) as u32;
        (*ev).reason = reason;
        (*ev).action = ((meta >> 8) & 0xff) as u8;
        (*ev).hook = ((meta >> 16) & 0xff) as u8;
        (*ev).family = family;
        (*ev).proto = proto;
        (*ev).pad = [0; 2];
        // Addresses as two words each (IPv4: the first 4 bytes, the rest zero).
        let src = (&raw mut (*ev).src).cast::<u64>();
        let dst = (&raw mut (*ev).dst).cast::<u64>();
        if family == FAMILY_V6 {
            src.write(load::<u64>(start, end, V6_SRC).unwrap_or(0));
            src.add(1)
                .write(load::<u64>(start, end, V6_SRC + 8).unwrap_or(0));
            dst.write(load::<u64>(start, end, V6_SRC + 16).unwrap_or(0));
            dst.add(1)
                .write(load::<u64>(start, end, V6_SRC + 24).unwrap_or(0));
        } else {
            src.write(u64::from(load::<u32>(start, end, V4_SRC).unwrap_or(0)));
            src.add(1).write(0);
            dst.write(u64::from(load::<u32>(start, end, V4_SRC + 4).unwrap_or(0)));
            dst.add(1).write(0);
        }
        // Ports in memory order (TCP and UDP: source then destination; ICMP echo: the
        // identifier twice), and the TCP flags.
        let ports = (&raw mut (*ev).sport).cast::<u32>();
        ports.write(0);
        (*ev).tcp_flags = 0;
        if l4 != 0 {
            if proto == IPPROTO_TCP || proto == IPPROTO_UDP {
                ports.write(load::<u32>(start, end, l4).unwrap_or(0));
            }
            if proto == IPPROTO_TCP {
                (*ev).tcp_flags = load::<u8>(start, end, l4 + 13).unwrap_or(0);
            }
            if proto == IPPROTO_ICMP || proto == IPPROTO_ICMPV6 {
                let id = u32::from(load::<u16>(start, end, l4 + 4).unwrap_or(0));
                ports.write(id | id << 16);
            }
        }
        (*ev).time_ns = bpf_ktime_get_ns();
    }
    // Wake the reader once, when this record makes the waiting data cross WAKEUP_BYTES (the
    // data counts from the reader's position to the producer's, which includes this reserved
    // record); not at every event beyond it, which costs as much as waking at every event
    // when the reader falls behind.
    let avail = MONITOR_EVENTS.query(u64::from(BPF_RB_AVAIL_DATA));
    let flags = if avail >= WAKEUP_BYTES && avail < WAKEUP_BYTES + RECORD_BYTES {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    entry.submit(u64::from(flags));
    stat(STAT_EMITTED);
}
