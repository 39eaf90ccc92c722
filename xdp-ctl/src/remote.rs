//! Pod prefixes on other nodes (`REMOTE_V4` / `REMOTE_V6`): which remote addresses are meshed
//! pods, reached through the node's uplinks. `xdp-ctl remote` and `run --remote-meshed-cidr`
//! write them; the datapath reads them on both sides of a cross-node flow.
use std::net::IpAddr;

use anyhow::{Context as _, Result};
use aya::maps::{lpm_trie::Key, MapError};
use common::{Remote, REMOTE_F_MESHED};
use serde::Serialize;

use crate::maps::{Maps, Prefix};

/// One remote prefix as `remote list` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RemoteEntry {
    pub prefix: String,
    /// False for an exception carved out of a shorter meshed prefix.
    pub meshed: bool,
    /// The uplink ifindex these addresses must be reached through; 0: any attached uplink.
    pub uplink: u32,
}

/// The map value for a remote prefix (pure, for tests and the controller's diff).
pub const fn remote_value(meshed: bool, uplink: u32) -> Remote {
    Remote {
        flags: if meshed { REMOTE_F_MESHED } else { 0 },
        uplink,
    }
}

fn not_found(e: &MapError) -> bool {
    match e {
        MapError::KeyNotFound => true,
        MapError::SyscallError(s) => s.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

impl Maps {
    pub fn insert_remote(&mut self, p: Prefix, value: &Remote) -> Result<()> {
        match p.addr {
            IpAddr::V4(a) => {
                self.remote_v4
                    .insert(&Key::new(u32::from(p.len), a.octets()), value, 0)
            }
            IpAddr::V6(a) => {
                self.remote_v6
                    .insert(&Key::new(u32::from(p.len), a.octets()), value, 0)
            }
        }
        .with_context(|| format!("writing remote prefix {p} (is the map full?)"))
    }

    /// Removes a remote prefix; false if it was not there.
    pub fn remove_remote(&mut self, p: Prefix) -> Result<bool> {
        let r = match p.addr {
            IpAddr::V4(a) => self
                .remote_v4
                .remove(&Key::new(u32::from(p.len), a.octets())),
            IpAddr::V6(a) => self
                .remote_v6
                .remove(&Key::new(u32::from(p.len), a.octets())),
        };
        match r {
            Ok(()) => Ok(true),
            Err(e) if not_found(&e) => Ok(false),
            Err(e) => Err(e).with_context(|| format!("removing remote prefix {p}")),
        }
    }

    /// Every remote prefix, sorted.
    pub fn remotes(&self) -> Result<Vec<(Prefix, Remote)>> {
        let mut out = Vec::new();
        for kv in &self.remote_v4 {
            let (k, v) = kv.context("reading REMOTE_V4")?;
            #[expect(clippy::cast_possible_truncation, reason = "prefix length <= 32")]
            out.push((
                Prefix {
                    addr: IpAddr::V4(k.data().into()),
                    len: k.prefix_len() as u8,
                },
                v,
            ));
        }
        for kv in &self.remote_v6 {
            let (k, v) = kv.context("reading REMOTE_V6")?;
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

    /// Makes the remote prefixes equal to `want` with the fewest writes (adds and changes
    /// first, then removals); returns how many writes it made.
    pub fn sync_remotes(&mut self, want: &[(Prefix, Remote)]) -> Result<usize> {
        let have = self.remotes()?;
        let mut writes = 0;
        for (p, v) in want {
            if !have.iter().any(|(hp, hv)| hp == p && hv == v) {
                self.insert_remote(*p, v)?;
                writes += 1;
            }
        }
        for (p, _) in &have {
            if !want.iter().any(|(wp, _)| wp == p) {
                self.remove_remote(*p)?;
                writes += 1;
            }
        }
        Ok(writes)
    }
}

pub fn entry(p: Prefix, r: &Remote) -> RemoteEntry {
    RemoteEntry {
        prefix: p.to_string(),
        meshed: r.is_meshed(),
        uplink: r.uplink,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values() {
        assert!(remote_value(true, 0).is_meshed());
        assert!(!remote_value(false, 7).is_meshed());
        assert_eq!(remote_value(false, 7).uplink, 7);
        let p: Prefix = "10.244.2.0/24".parse().unwrap();
        let e = entry(p, &remote_value(true, 3));
        assert_eq!(e.prefix, "10.244.2.0/24");
        assert!(e.meshed);
        assert_eq!(e.uplink, 3);
    }
}
