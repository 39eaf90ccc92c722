//! The two pod-side offload settings XDP on veth needs, through the legacy ethtool ioctls
//! (`SIOCETHTOOL`): GRO and tx checksumming. See DESIGN.md section 3 for why.
use std::{ffi::CStr, io, os::fd::AsRawFd};

/// `libc::Ioctl`: the request type differs between glibc (unsigned long) and musl (int).
const SIOCETHTOOL: libc::Ioctl = 0x8946;
const ETHTOOL_GTXCSUM: u32 = 0x16;
const ETHTOOL_STXCSUM: u32 = 0x17;
const ETHTOOL_GGRO: u32 = 0x2b;
const ETHTOOL_SGRO: u32 = 0x2c;

#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    data: *mut libc::c_void,
    _pad: [u8; 16],
}

/// An `AF_INET` datagram socket for ioctls, in the calling thread's namespace.
struct CtlSocket(std::os::fd::OwnedFd);

impl CtlSocket {
    fn new() -> io::Result<Self> {
        use std::os::fd::FromRawFd;
        // SAFETY: plain syscall; the fd is owned below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh, valid descriptor.
        Ok(Self(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }))
    }

    fn ethtool(&self, ifname: &str, cmd: u32, data: u32) -> io::Result<u32> {
        let mut val = EthtoolValue { cmd, data };
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            data: (&raw mut val).cast(),
            _pad: [0; 16],
        };
        let bytes = ifname.as_bytes();
        if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "bad interface name",
            ));
        }
        for (d, s) in req.name.iter_mut().zip(bytes) {
            *d = s.cast_signed();
        }
        // SAFETY: req and val outlive the call; the kernel reads/writes only these structs.
        if unsafe { libc::ioctl(self.0.as_raw_fd(), SIOCETHTOOL, &raw mut req) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(val.data)
    }
}

/// The pod-side settings we change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offloads {
    pub gro: bool,
    pub tx_csum: bool,
}

/// Reads GRO and tx checksumming of `ifindex` in the calling thread's namespace; returns the
/// interface name too.
pub fn get(ifindex: u32) -> io::Result<(String, Offloads)> {
    let name = index_to_name(ifindex)?;
    let s = CtlSocket::new()?;
    let gro = s.ethtool(&name, ETHTOOL_GGRO, 0)? != 0;
    let tx_csum = s.ethtool(&name, ETHTOOL_GTXCSUM, 0)? != 0;
    Ok((name, Offloads { gro, tx_csum }))
}

/// Sets GRO and tx checksumming of `ifindex` in the calling thread's namespace.
pub fn set(ifindex: u32, want: Offloads) -> io::Result<()> {
    let name = index_to_name(ifindex)?;
    let s = CtlSocket::new()?;
    s.ethtool(&name, ETHTOOL_SGRO, u32::from(want.gro))?;
    s.ethtool(&name, ETHTOOL_STXCSUM, u32::from(want.tx_csum))?;
    let (_, got) = get(ifindex)?;
    if got != want {
        return Err(io::Error::other(format!(
            "{name}: asked for gro={} tx-checksumming={}, the driver kept gro={} tx-checksumming={}",
            want.gro, want.tx_csum, got.gro, got.tx_csum
        )));
    }
    Ok(())
}

fn index_to_name(ifindex: u32) -> io::Result<String> {
    let mut buf = [0 as libc::c_char; libc::IFNAMSIZ];
    // SAFETY: buf is IFNAMSIZ bytes as required.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: if_indextoname wrote a NUL-terminated string into buf.
    Ok(unsafe { CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned())
}
