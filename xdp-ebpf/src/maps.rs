//! The maps. Names are the ABI (see `common::map_names`). They are declared unpinned: `xdp-ctl`
//! decides where they are pinned (one directory per layout version), and tests can load the
//! object without touching bpffs.
use aya_ebpf::{
    macros::map,
    maps::{lpm_trie::LpmTrie, Array, DevMapHash, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use common::{
    monitor::{MonitorConfig, MONITOR_RING_BYTES, MONITOR_STATS_LEN},
    Attachment, ControllerState, Counter, Endpoint, Flow, FlowKey, Ipv4Key, Ipv6Key, Remote,
    SocketKey, Uplink, MAX_ENDPOINTS, MAX_FLOWS, MAX_KERNEL_SOCKETS, MAX_PORTS,
    MAX_REMOTE_PREFIXES, MAX_UPLINKS, REASON_COUNT,
};

#[map]
pub static ENDPOINTS_V4: LpmTrie<Ipv4Key, Endpoint> = LpmTrie::with_max_entries(MAX_ENDPOINTS, 0);

#[map]
pub static ENDPOINTS_V6: LpmTrie<Ipv6Key, Endpoint> = LpmTrie::with_max_entries(MAX_ENDPOINTS, 0);

/// XDP redirect targets: only interfaces whose pod side is prepared to receive native XDP
/// redirects (GRO on, tx checksum off; DESIGN.md section 3).
#[map]
pub static TX_PORTS: DevMapHash = DevMapHash::with_max_entries(MAX_PORTS, 0);

#[map]
pub static COUNTERS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(REASON_COUNT, 0);

/// The record of what `xdp-ctl` attached (see `common::Attachment`). The TC program reads only
/// membership: a `bpf_redirect_peer` target must be an interface we attached.
#[map]
pub static ATTACHMENTS: HashMap<u32, Attachment> = HashMap::with_max_entries(MAX_PORTS, 0);

/// Not read by the datapath: the controller's self-report (see `common::ControllerState`).
#[map]
pub static CONTROLLER: Array<ControllerState> = Array::with_max_entries(1, 0);

/// Flows the datapath saw start (TCP SYN, ICMP echo request) between two meshed local pods,
/// untranslated: the only flows it fast-paths. Shared by both hooks, so a flow survives a switch
/// between them. LRU: a full table evicts the least recently used flow, whose next packets then
/// go to the kernel.
#[map]
pub static FLOWS: LruHashMap<FlowKey, Flow> = LruHashMap::with_max_entries(MAX_FLOWS, 0);

/// Local pod UDP sockets that sent a datagram the datapath left to the kernel (see
/// `common::SocketKey`). The value is unused.
#[map]
pub static KERNEL_SOCKETS: LruHashMap<SocketKey, u32> =
    LruHashMap::with_max_entries(MAX_KERNEL_SOCKETS, 0);

/// `xdp-ctl monitor`'s filters and sampling; `enabled` is 0 when no monitor runs (see
/// `common::monitor`).
#[map]
pub static MONITOR_CONFIG: Array<MonitorConfig> = Array::with_max_entries(1, 0);

/// Sampled events for `xdp-ctl monitor` (`common::monitor::MonitorEvent`).
#[map]
pub static MONITOR_EVENTS: RingBuf = RingBuf::with_byte_size(MONITOR_RING_BYTES, 0);

/// Per-CPU monitor counters (`common::monitor::STAT_*`), touched only while a monitor runs.
#[map]
pub static MONITOR_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(MONITOR_STATS_LEN, 0);

/// Pod prefixes on other nodes (see `common::Remote`).
#[map]
pub static REMOTE_V4: LpmTrie<Ipv4Key, Remote> = LpmTrie::with_max_entries(MAX_REMOTE_PREFIXES, 0);

#[map]
pub static REMOTE_V6: LpmTrie<Ipv6Key, Remote> = LpmTrie::with_max_entries(MAX_REMOTE_PREFIXES, 0);

/// The node's attached uplinks (see `common::Uplink`).
#[map]
pub static UPLINKS: HashMap<u32, Uplink> = HashMap::with_max_entries(MAX_UPLINKS, 0);

/// Per-CPU scratch space for `bpf_fib_lookup`'s 64-byte parameter block: on the stack it would
/// push the pod programs over the 512-byte BPF stack limit. Not pinned: every loaded program
/// may have its own (a program runs to completion on its CPU before the next one starts there).
#[map]
pub static FIB_SCRATCH: PerCpuArray<aya_ebpf::bindings::bpf_fib_lookup> =
    PerCpuArray::with_max_entries(1, 0);
