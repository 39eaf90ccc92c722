//! Typed access to the datapath's maps, from a freshly loaded object or from the pins.
use std::net::IpAddr;

use anyhow::{anyhow, Context as _, Result};
use aya::{
    maps::{
        lpm_trie::{Key, LpmTrie},
        xdp::DevMapHash,
        Array, HashMap, Map, MapData, PerCpuArray,
    },
    Ebpf,
};
use common::{
    map_names, Attachment, ControllerState, Counter, Endpoint, Flow, FlowKey, Ipv4Key, Ipv6Key,
    Reason, Remote, SocketKey, Uplink, MAX_FLOWS, MAX_KERNEL_SOCKETS,
};
use serde::Serialize;

use crate::pin::PinDir;

pub const ALL_MAPS: [&str; 14] = [
    map_names::ENDPOINTS_V4,
    map_names::ENDPOINTS_V6,
    map_names::TX_PORTS,
    map_names::COUNTERS,
    map_names::ATTACHMENTS,
    map_names::CONTROLLER,
    map_names::FLOWS,
    map_names::KERNEL_SOCKETS,
    map_names::MONITOR_CONFIG,
    map_names::MONITOR_EVENTS,
    map_names::MONITOR_STATS,
    map_names::UPLINKS,
    map_names::REMOTE_V4,
    map_names::REMOTE_V6,
];

pub struct Maps {
    pub v4: LpmTrie<MapData, Ipv4Key, Endpoint>,
    pub v6: LpmTrie<MapData, Ipv6Key, Endpoint>,
    pub tx_ports: DevMapHash<MapData>,
    pub counters: PerCpuArray<MapData, Counter>,
    pub attachments: HashMap<MapData, u32, Attachment>,
    pub controller: Array<MapData, ControllerState>,
    pub flows: HashMap<MapData, FlowKey, Flow>,
    pub kernel_sockets: HashMap<MapData, SocketKey, u32>,
    pub uplinks: HashMap<MapData, u32, Uplink>,
    pub remote_v4: LpmTrie<MapData, Ipv4Key, Remote>,
    pub remote_v6: LpmTrie<MapData, Ipv6Key, Remote>,
}

/// How full the datapath's flow state is (a walk over the keys: cheap at the table sizes a
/// node sees, bounded by the capacities).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FlowTable {
    /// Flows the datapath saw start (TCP connections, ICMP echo exchanges) still in `FLOWS`.
    pub flows: u32,
    pub flows_capacity: u32,
    /// Local pod UDP sockets marked as talking through the kernel path.
    pub kernel_sockets: u32,
    pub kernel_sockets_capacity: u32,
}

/// An endpoint key: an address prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix {
    pub addr: IpAddr,
    pub len: u8,
}

impl std::fmt::Display for Prefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl std::str::FromStr for Prefix {
    type Err = String;

    /// `IP` (a host: /32 or /128) or `IP/LEN`; host bits must be zero.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (ip, len) = match s.split_once('/') {
            Some((ip, len)) => (ip, Some(len)),
            None => (s, None),
        };
        let addr: IpAddr = ip
            .parse()
            .map_err(|_| format!("invalid IP address {ip:?} in {s:?}"))?;
        let max: u8 = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len {
            None => max,
            Some(l) => l
                .parse::<u8>()
                .ok()
                .filter(|l| *l <= max)
                .ok_or_else(|| format!("invalid prefix length {l:?} in {s:?} (0..={max})"))?,
        };
        let p = Prefix { addr, len };
        let net = p.network();
        if net != addr {
            return Err(format!("{s} has host bits set; did you mean {net}/{len}?"));
        }
        Ok(p)
    }
}

impl Prefix {
    /// The address with the host bits cleared.
    pub fn network(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                IpAddr::V4((u32::from(a) & mask).into())
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.len))
                    .unwrap_or(0);
                IpAddr::V6((u128::from(a) & mask).into())
            }
        }
    }

    /// The host prefix of one address.
    pub fn host(addr: IpAddr) -> Self {
        Prefix {
            addr,
            len: if addr.is_ipv4() { 32 } else { 128 },
        }
    }

    /// True if `addr` is inside this prefix.
    pub fn contains(&self, addr: IpAddr) -> bool {
        addr.is_ipv4() == self.addr.is_ipv4()
            && Prefix {
                addr,
                len: self.len,
            }
            .network()
                == self.addr
    }

    pub fn is_host(&self) -> bool {
        self.len == if self.addr.is_ipv4() { 32 } else { 128 }
    }
}

/// The error for commands that need an existing datapath.
/// A pair of LPM tries keyed by address (IPv4, IPv6), holding `V`: the endpoint tries and the
/// remote-prefix tries.
pub(crate) struct Tries<'m, V: aya::Pod> {
    pub(crate) v4: &'m mut LpmTrie<MapData, Ipv4Key, V>,
    pub(crate) v6: &'m mut LpmTrie<MapData, Ipv6Key, V>,
}

impl<V: aya::Pod> Tries<'_, V> {
    pub(crate) fn insert(&mut self, p: Prefix, value: &V) -> Result<(), aya::maps::MapError> {
        match p.addr {
            IpAddr::V4(a) => self
                .v4
                .insert(&Key::new(u32::from(p.len), a.octets()), value, 0),
            IpAddr::V6(a) => self
                .v6
                .insert(&Key::new(u32::from(p.len), a.octets()), value, 0),
        }
    }

    /// `Ok(false)` if `p` was not there.
    pub(crate) fn remove(&mut self, p: Prefix) -> Result<bool, aya::maps::MapError> {
        let r = match p.addr {
            IpAddr::V4(a) => self.v4.remove(&Key::new(u32::from(p.len), a.octets())),
            IpAddr::V6(a) => self.v6.remove(&Key::new(u32::from(p.len), a.octets())),
        };
        match r {
            Ok(()) => Ok(true),
            Err(aya::maps::MapError::KeyNotFound) => Ok(false),
            Err(aya::maps::MapError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::ENOENT) =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }
}

/// Every entry of a pair of tries, sorted by prefix.
pub(crate) fn entries<V: aya::Pod>(
    v4: &LpmTrie<MapData, Ipv4Key, V>,
    v6: &LpmTrie<MapData, Ipv6Key, V>,
    v4_name: &str,
    v6_name: &str,
) -> Result<Vec<(Prefix, V)>> {
    let mut out = Vec::new();
    for kv in v4 {
        let (k, v) = kv.with_context(|| format!("reading {v4_name}"))?;
        #[expect(clippy::cast_possible_truncation, reason = "prefix length <= 32")]
        out.push((
            Prefix {
                addr: IpAddr::V4(k.data().into()),
                len: k.prefix_len() as u8,
            },
            v,
        ));
    }
    for kv in v6 {
        let (k, v) = kv.with_context(|| format!("reading {v6_name}"))?;
        #[expect(clippy::cast_possible_truncation, reason = "prefix length <= 128")]
        out.push((
            Prefix {
                addr: IpAddr::V6(k.data().into()),
                len: k.prefix_len() as u8,
            },
            v,
        ));
    }
    out.sort_by_key(|(p, _)| *p);
    Ok(out)
}

pub fn nothing_attached(pins: &PinDir) -> anyhow::Error {
    anyhow!(
        "nothing is attached under {} (no pinned maps); run `xdp-ctl attach IFACE` first",
        pins.root().display()
    )
}

fn take<T: TryFrom<Map, Error = aya::maps::MapError>>(ebpf: &mut Ebpf, name: &str) -> Result<T> {
    let map = ebpf
        .take_map(name)
        .ok_or_else(|| anyhow!("map {name} missing from the eBPF object"))?;
    T::try_from(map).with_context(|| format!("map {name} has an unexpected type"))
}

pub(crate) fn open<T: TryFrom<Map, Error = aya::maps::MapError>>(
    pins: &PinDir,
    name: &str,
) -> Result<T> {
    let path = pins.map_path(name);
    let data = MapData::from_pin(&path)
        .with_context(|| format!("opening pinned map {}", path.display()))?;
    let map = Map::from_map_data(data).with_context(|| format!("map {name}"))?;
    T::try_from(map).with_context(|| format!("map {name} has an unexpected type"))
}

impl Maps {
    pub fn from_ebpf(ebpf: &mut Ebpf) -> Result<Self> {
        Ok(Self {
            v4: take(ebpf, map_names::ENDPOINTS_V4)?,
            v6: take(ebpf, map_names::ENDPOINTS_V6)?,
            tx_ports: take(ebpf, map_names::TX_PORTS)?,
            counters: take(ebpf, map_names::COUNTERS)?,
            attachments: take(ebpf, map_names::ATTACHMENTS)?,
            controller: take(ebpf, map_names::CONTROLLER)?,
            flows: take(ebpf, map_names::FLOWS)?,
            kernel_sockets: take(ebpf, map_names::KERNEL_SOCKETS)?,
            uplinks: take(ebpf, map_names::UPLINKS)?,
            remote_v4: take(ebpf, map_names::REMOTE_V4)?,
            remote_v6: take(ebpf, map_names::REMOTE_V6)?,
        })
    }

    /// Opens the pinned maps; a clear error if there are none.
    pub fn open_pinned(pins: &PinDir) -> Result<Self> {
        if !pins.has_maps() {
            return Err(nothing_attached(pins));
        }
        Ok(Self {
            v4: open(pins, map_names::ENDPOINTS_V4)?,
            v6: open(pins, map_names::ENDPOINTS_V6)?,
            tx_ports: open(pins, map_names::TX_PORTS)?,
            counters: open(pins, map_names::COUNTERS)?,
            attachments: open(pins, map_names::ATTACHMENTS)?,
            controller: open(pins, map_names::CONTROLLER)?,
            flows: open(pins, map_names::FLOWS)?,
            kernel_sockets: open(pins, map_names::KERNEL_SOCKETS)?,
            uplinks: open(pins, map_names::UPLINKS)?,
            remote_v4: open(pins, map_names::REMOTE_V4)?,
            remote_v6: open(pins, map_names::REMOTE_V6)?,
        })
    }

    pub fn insert_endpoint(&mut self, p: Prefix, ep: &Endpoint) -> Result<()> {
        Tries {
            v4: &mut self.v4,
            v6: &mut self.v6,
        }
        .insert(p, ep)
        .with_context(|| format!("writing endpoint {p} (is the map full?)"))
    }

    /// Removes an endpoint; `Ok(false)` if it was not there.
    pub fn remove_endpoint(&mut self, p: Prefix) -> Result<bool> {
        Tries {
            v4: &mut self.v4,
            v6: &mut self.v6,
        }
        .remove(p)
        .with_context(|| format!("removing endpoint {p}"))
    }

    pub fn endpoints(&self) -> Result<Vec<(Prefix, Endpoint)>> {
        entries(
            &self.v4,
            &self.v6,
            map_names::ENDPOINTS_V4,
            map_names::ENDPOINTS_V6,
        )
    }

    /// Per-reason totals over all CPUs.
    pub fn counters(&self) -> Result<Vec<(Reason, Counter)>> {
        Reason::ALL
            .iter()
            .map(|r| {
                let per_cpu = self
                    .counters
                    .get(&u32::from(*r as u8), 0)
                    .with_context(|| format!("reading counter {}", r.name()))?;
                let mut total = Counter::default();
                for c in per_cpu.iter() {
                    total.packets += c.packets;
                    total.bytes += c.bytes;
                }
                Ok((*r, total))
            })
            .collect()
    }

    pub fn flow_table(&self) -> Result<FlowTable> {
        fn count<K>(
            mut keys: impl Iterator<Item = Result<K, aya::maps::MapError>>,
            name: &str,
        ) -> Result<u32> {
            keys.try_fold(0u32, |n, k| k.map(|_| n + 1))
                .with_context(|| format!("reading {name}"))
        }
        Ok(FlowTable {
            flows: count(self.flows.keys(), map_names::FLOWS)?,
            flows_capacity: MAX_FLOWS,
            kernel_sockets: count(self.kernel_sockets.keys(), map_names::KERNEL_SOCKETS)?,
            kernel_sockets_capacity: MAX_KERNEL_SOCKETS,
        })
    }

    pub fn attachments(&self) -> Result<Vec<Attachment>> {
        let mut v: Vec<Attachment> = self
            .attachments
            .iter()
            .map(|kv| kv.map(|(_, a)| a).context("reading ATTACHMENTS"))
            .collect::<Result<_>>()?;
        v.sort_by_key(|a| a.ifindex);
        Ok(v)
    }

    pub fn controller_state(&self) -> ControllerState {
        self.controller.get(&0, 0).unwrap_or_default()
    }

    pub fn set_controller_state(&mut self, st: &ControllerState) -> Result<()> {
        self.controller.set(0, st, 0).context("writing CONTROLLER")
    }

    pub fn attachment(&self, ifindex: u32) -> Option<Attachment> {
        self.attachments.get(&ifindex, 0).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_parsing() {
        let p: Prefix = "10.244.0.1".parse().unwrap();
        assert_eq!(p.to_string(), "10.244.0.1/32");
        assert!(p.is_host());
        let p: Prefix = "fd00::1".parse().unwrap();
        assert_eq!(p.to_string(), "fd00::1/128");
        let p: Prefix = "10.244.0.0/16".parse().unwrap();
        assert_eq!(p.len, 16);
        assert!(!p.is_host());
        assert_eq!("0.0.0.0/0".parse::<Prefix>().unwrap().len, 0);
        for bad in [
            "10.244.0.300",
            "10.244.0.1/33",
            "fd00::1/129",
            "10.244.0.1/24",
            "x",
            "",
            "10.0.0.0/-1",
        ] {
            assert!(bad.parse::<Prefix>().is_err(), "{bad}");
        }
        let e = "10.244.0.1/24".parse::<Prefix>().unwrap_err();
        assert!(e.contains("10.244.0.0/24"), "{e}");
    }
}
