//! `MEMBERSHIP`: why each endpoint is (not) meshed, as the controller decided, pinned next to
//! the datapath's maps so that `status` and `endpoint list` can show it from any process.
//!
//! The datapath never reads it and it is not in the eBPF object: xdp-ctl creates it with
//! `BPF_MAP_CREATE` (a plain hash, no preallocation) and pins it in the maps directory, so it
//! lives and dies with the other pins (`detach` removes every file there). Key `family = 0` is
//! the controller's own entry: the configured sources (`CFG_*`).
use std::{
    collections::HashMap,
    io,
    net::IpAddr,
    os::fd::{FromRawFd as _, OwnedFd},
};

use anyhow::{Context as _, Result};
use aya::maps::{HashMap as BpfHashMap, Map, MapData};

use crate::{maps::Prefix, pin::PinDir};

pub const MAP_NAME: &str = "MEMBERSHIP";
/// Two addresses per pod, for up to `MAX_ENDPOINTS` pods of each family, and the config entry.
const MAX_ENTRIES: u32 = 2 * common::MAX_ENDPOINTS + 1;

/// Key: an endpoint prefix (`family` 4 or 6, address in network byte order), or the config
/// entry (all zero).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MemberKey {
    pub family: u8,
    pub prefix_len: u8,
    /// Explicit padding; always zero.
    pub pad: [u8; 2],
    pub addr: [u8; 16],
}

/// Value: `Sources` bits for an endpoint, `CFG_*` bits for the config entry (host byte order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemberValue {
    pub bits: u32,
    /// Explicit padding; always zero.
    pub pad: u32,
}

// SAFETY: repr(C), no implicit padding, every bit pattern valid.
unsafe impl aya::Pod for MemberKey {}
// SAFETY: as above.
unsafe impl aya::Pod for MemberValue {}

impl MemberKey {
    const CONFIG: MemberKey = MemberKey {
        family: 0,
        prefix_len: 0,
        pad: [0; 2],
        addr: [0; 16],
    };

    pub fn of(p: Prefix) -> Self {
        let (family, addr) = match p.addr {
            IpAddr::V4(a) => {
                let mut addr = [0; 16];
                addr[..4].copy_from_slice(&a.octets());
                (4, addr)
            }
            IpAddr::V6(a) => (6, a.octets()),
        };
        MemberKey {
            family,
            prefix_len: p.len,
            pad: [0; 2],
            addr,
        }
    }

    pub fn prefix(&self) -> Option<Prefix> {
        let addr = match self.family {
            4 => IpAddr::V4(<[u8; 4]>::try_from(&self.addr[..4]).ok()?.into()),
            6 => IpAddr::V6(self.addr.into()),
            _ => return None,
        };
        Some(Prefix {
            addr,
            len: self.prefix_len,
        })
    }
}

pub struct MembershipMap {
    map: BpfHashMap<MapData, MemberKey, MemberValue>,
}

#[repr(C)]
#[derive(Default)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
    map_ifindex: u32,
    btf_fd: u32,
    btf_key_type_id: u32,
    btf_value_type_id: u32,
    btf_vmlinux_value_type_id: u32,
    map_extra: u64,
}

#[repr(C)]
struct ObjPinAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_MAP_TYPE_HASH: u32 = 1;
const BPF_F_NO_PREALLOC: u32 = 1;

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: attr is a valid, initialised bpf_attr prefix of the given size.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr).cast::<libc::c_void>(),
            std::mem::size_of::<T>(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r)
}

fn create_and_pin(path: &std::path::Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt as _;
    let mut name = [0u8; 16];
    name[..MAP_NAME.len()].copy_from_slice(MAP_NAME.as_bytes());
    #[expect(clippy::cast_possible_truncation, reason = "20 and 8 bytes")]
    let mut attr = MapCreateAttr {
        map_type: BPF_MAP_TYPE_HASH,
        key_size: std::mem::size_of::<MemberKey>() as u32,
        value_size: std::mem::size_of::<MemberValue>() as u32,
        max_entries: MAX_ENTRIES,
        map_flags: BPF_F_NO_PREALLOC,
        map_name: name,
        ..MapCreateAttr::default()
    };
    let fd = bpf(BPF_MAP_CREATE, &mut attr)?;
    // SAFETY: a new fd the kernel just gave us.
    let fd = unsafe { OwnedFd::from_raw_fd(i32::try_from(fd).map_err(io::Error::other)?) };
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    let mut pin = ObjPinAttr {
        pathname: c.as_ptr() as u64,
        bpf_fd: u32::try_from(std::os::fd::AsRawFd::as_raw_fd(&fd)).map_err(io::Error::other)?,
        file_flags: 0,
    };
    bpf(BPF_OBJ_PIN, &mut pin)?;
    Ok(())
}

impl MembershipMap {
    /// Opens the pinned map, creating and pinning it first if needed (the maps directory must
    /// exist). No lock needed: of two racing creators, the second one's pin fails with EEXIST
    /// and it opens the first one's map.
    pub fn open_or_create(pins: &PinDir) -> Result<Self> {
        let path = pins.map_path(MAP_NAME);
        if !path.exists() {
            match create_and_pin(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("creating and pinning {}", path.display()))
                }
            }
        }
        Self::open(pins)?.with_context(|| format!("{} vanished", path.display()))
    }

    /// Opens the pinned map; `None` if there is none (no controller ever ran here).
    pub fn open(pins: &PinDir) -> Result<Option<Self>> {
        let path = pins.map_path(MAP_NAME);
        if !path.exists() {
            return Ok(None);
        }
        let data = MapData::from_pin(&path)
            .with_context(|| format!("opening pinned map {}", path.display()))?;
        let map = Map::from_map_data(data).with_context(|| format!("map {MAP_NAME}"))?;
        let map = BpfHashMap::try_from(map)
            .with_context(|| format!("map {MAP_NAME} has an unexpected type"))?;
        Ok(Some(Self { map }))
    }

    /// Every endpoint's bits.
    pub fn entries(&self) -> Result<HashMap<Prefix, u32>> {
        let mut out = HashMap::new();
        for kv in &self.map {
            let (k, v) = kv.context("reading MEMBERSHIP")?;
            if let Some(p) = k.prefix() {
                out.insert(p, v.bits);
            }
        }
        Ok(out)
    }

    pub fn set(&mut self, p: Prefix, bits: u32) -> Result<()> {
        self.map
            .insert(MemberKey::of(p), MemberValue { bits, pad: 0 }, 0)
            .with_context(|| format!("writing MEMBERSHIP entry {p}"))
    }

    pub fn remove(&mut self, p: Prefix) -> Result<()> {
        match self.map.remove(&MemberKey::of(p)) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(aya::maps::MapError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::ENOENT) =>
            {
                Ok(())
            }
            Err(e) => Err(e).with_context(|| format!("removing MEMBERSHIP entry {p}")),
        }
    }

    /// The controller's `CFG_*` bits; `None` if it never wrote them.
    pub fn config(&self) -> Option<u32> {
        self.map.get(&MemberKey::CONFIG, 0).ok().map(|v| v.bits)
    }

    pub fn set_config(&mut self, bits: u32) -> Result<()> {
        self.map
            .insert(MemberKey::CONFIG, MemberValue { bits, pad: 0 }, 0)
            .context("writing the MEMBERSHIP config entry")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_round_trip_and_layout() {
        assert_eq!(std::mem::size_of::<MemberKey>(), 20);
        assert_eq!(std::mem::size_of::<MemberValue>(), 8);
        for s in ["10.244.0.7/32", "fd00::7/128", "10.244.0.0/16"] {
            let p: Prefix = s.parse().unwrap();
            assert_eq!(MemberKey::of(p).prefix(), Some(p));
        }
        assert_eq!(MemberKey::CONFIG.prefix(), None);
    }
}
