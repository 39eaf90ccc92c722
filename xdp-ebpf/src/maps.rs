//! The maps. Names are the ABI (see `common::map_names`). They are declared unpinned: `xdp-ctl`
//! decides where they are pinned (one directory per layout version), and tests can load the
//! object without touching bpffs.
use aya_ebpf::{
    macros::map,
    maps::{lpm_trie::LpmTrie, Array, DevMapHash, HashMap, PerCpuArray},
};
use common::{
    Attachment, ControllerState, Counter, Endpoint, Ipv4Key, Ipv6Key, MAX_ENDPOINTS, MAX_PORTS,
    REASON_COUNT,
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
