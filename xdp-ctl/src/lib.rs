//! xdp-ctl as a library: loading, pinning, attaching and map access for the xdp-fastpath
//! datapath. The `xdp-ctl` binary is a thin CLI over it; integration tests use it directly.

/// The eBPF object built from `xdp-ebpf` by `build.rs`, embedded in the binary.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdp-ebpf"));

/// Name of the XDP program in `EBPF_OBJECT`.
pub const XDP_PROGRAM: &str = "xdp_fastpath";
/// Name of the TC (TCX ingress) program in `EBPF_OBJECT`.
pub const TC_PROGRAM: &str = "tc_fastpath";
/// Names of the uplink programs (incoming cross-node traffic).
pub const XDP_UPLINK_PROGRAM: &str = "xdp_uplink";
pub const TC_UPLINK_PROGRAM: &str = "tc_uplink";

pub mod attach;
pub mod bpffs;
pub mod controller;
pub mod datapath;
pub mod ethtool;
pub mod http;
pub mod maps;
pub mod metrics;
pub mod monitor;
pub mod netns;
pub mod nl;
pub mod ops;
pub mod pin;
pub mod pod;
pub mod probe;
pub mod remote;
