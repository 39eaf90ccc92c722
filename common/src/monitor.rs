//! The packet monitor's ABI (`xdp-ctl monitor`): a configuration the datapath reads once per
//! packet, and the sampled events it writes into a BPF ring buffer.
//!
//! When no monitor runs, `MonitorConfig::enabled` is 0 and the datapath pays one array lookup
//! per packet and nothing else.

/// Ring buffer size in bytes (a power of two, a multiple of the page size): about 14,500
/// events of 64 bytes (plus 8-byte record headers) when the reader falls behind. With 256 KiB,
/// a reader printing text at every packet of a TCP ping-pong lost about 0.6% of the events.
pub const MONITOR_RING_BYTES: u32 = 1024 * 1024;

/// `MonitorConfig::reason` for "every reason".
pub const MONITOR_ANY_REASON: u32 = u32::MAX;

/// `MonitorEvent::action`: the packet was left to the kernel.
pub const ACTION_PASS: u8 = 0;
/// `MonitorEvent::action`: the packet was redirected (fast-pathed).
pub const ACTION_REDIRECT: u8 = 1;

/// `MonitorEvent::hook`.
pub const HOOK_XDP: u8 = 1;
pub const HOOK_TC: u8 = 2;
/// The uplink programs (incoming cross-node traffic).
pub const HOOK_XDP_UPLINK: u8 = 3;
pub const HOOK_TC_UPLINK: u8 = 4;

/// Slots of the per-CPU `MONITOR_STATS` array (`u64` each). Touched only while a monitor is
/// enabled: with none, they stay where they are.
pub const STAT_SEEN: u32 = 0;
/// Events written into the ring buffer.
pub const STAT_EMITTED: u32 = 1;
/// Events lost: the ring buffer was full (the reader fell behind).
pub const STAT_LOST: u32 = 2;
pub const MONITOR_STATS_LEN: u32 = 3;

/// Value of the one-entry `MONITOR_CONFIG` array, written by `xdp-ctl monitor` when it starts
/// and zeroed when it exits.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MonitorConfig {
    /// Non-zero while a monitor reads the ring buffer.
    pub enabled: u32,
    /// Emit about one in `sample` of the packets that pass the filters (0 and 1: all of them).
    pub sample: u32,
    /// Only packets counted under this reason (`Reason as u32`), or `MONITOR_ANY_REASON`.
    pub reason: u32,
    /// Only packets from or to `addr`: `FAMILY_V4` or `FAMILY_V6`, or 0 for any address.
    pub family: u32,
    /// Network byte order; an IPv4 address fills the first 4 bytes, the rest is zero.
    pub addr: [u8; 16],
    /// The monitor's process id (so a stale configuration can be recognized and reset).
    pub pid: u32,
    pub pad: u32,
}

/// One sampled packet, as the datapath saw it after its verdict (`MONITOR_EVENTS`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MonitorEvent {
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC).
    pub time_ns: u64,
    /// Network byte order; IPv4 in the first 4 bytes. Zero when not IP.
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// Ingress interface (the pod's host veth), host byte order.
    pub ingress: u32,
    /// Redirect target (host veth of the destination pod); 0 when passed to the kernel.
    pub egress: u32,
    /// Packet length in bytes (the whole packet, as counted in `COUNTERS`).
    pub len: u32,
    /// Network byte order; for ICMP echo, the identifier in both; 0 otherwise.
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    /// `FAMILY_V4`, `FAMILY_V6`, or 0 (not IP).
    pub family: u8,
    /// IP protocol number (next header of the fixed IPv6 header).
    pub proto: u8,
    /// `Reason as u8`.
    pub reason: u8,
    /// `ACTION_PASS` or `ACTION_REDIRECT`.
    pub action: u8,
    /// TCP flags byte (0 for other protocols).
    pub tcp_flags: u8,
    /// `HOOK_XDP` or `HOOK_TC`.
    pub hook: u8,
    pub pad: [u8; 2],
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain `#[repr(C)]` integers and byte arrays without implicit padding.
    unsafe impl aya::Pod for super::MonitorConfig {}
    unsafe impl aya::Pod for super::MonitorEvent {}
}

#[cfg(test)]
mod tests {
    use core::mem::{align_of, size_of};

    use super::*;

    #[test]
    fn monitor_abi_has_no_hidden_padding() {
        assert_eq!(size_of::<MonitorConfig>(), 4 * 4 + 16 + 4 + 4);
        assert_eq!(size_of::<MonitorEvent>(), 8 + 16 + 16 + 4 * 3 + 2 + 2 + 8);
        assert_eq!(align_of::<MonitorEvent>(), 8);
        assert_eq!(size_of::<MonitorEvent>() % 8, 0);
    }
}
