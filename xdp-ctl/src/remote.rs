//! Pod prefixes on other nodes (`REMOTE_V4` / `REMOTE_V6`): which remote addresses are meshed
//! pods, reached through the node's uplinks. `xdp-ctl remote` and `run --remote-meshed-cidr`
//! write them; the datapath reads them on both sides of a cross-node flow.
use anyhow::{Context as _, Result};
use common::{map_names, Remote, REMOTE_F_MESHED};
use serde::Serialize;

use crate::maps::{entries, Maps, Prefix, Tries};

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

impl Maps {
    fn remote_tries(&mut self) -> Tries<'_, Remote> {
        Tries {
            v4: &mut self.remote_v4,
            v6: &mut self.remote_v6,
        }
    }

    pub fn insert_remote(&mut self, p: Prefix, value: &Remote) -> Result<()> {
        self.remote_tries()
            .insert(p, value)
            .with_context(|| format!("writing remote prefix {p} (is the map full?)"))
    }

    /// Removes a remote prefix; false if it was not there.
    pub fn remove_remote(&mut self, p: Prefix) -> Result<bool> {
        self.remote_tries()
            .remove(p)
            .with_context(|| format!("removing remote prefix {p}"))
    }

    /// Every remote prefix, sorted.
    pub fn remotes(&self) -> Result<Vec<(Prefix, Remote)>> {
        entries(
            &self.remote_v4,
            &self.remote_v6,
            map_names::REMOTE_V4,
            map_names::REMOTE_V6,
        )
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
