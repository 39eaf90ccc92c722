//! Network namespaces: entering a named one, running a closure in another, and finding the
//! namespace that holds a veth's peer.
//!
//! `setns(CLONE_NEWNET)` changes only the calling thread, and a socket belongs to the namespace
//! current when it was created. We never change the mount namespace, so bpffs pins always land
//! on the host's bpffs (DESIGN.md section 4: the `ip netns exec` pitfall).
use std::{
    collections::{HashMap, HashSet},
    fs::{self, File},
    io,
    os::{fd::AsFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
};

use tracing::debug;

use crate::nl::Rtnl;

pub const NETNS_RUN_DIR: &str = "/run/netns";

/// Moves the calling thread into network namespace `file`.
pub fn setns(file: &File) -> io::Result<()> {
    nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(io::Error::from)
}

/// Opens the named namespace `/run/netns/NAME` (as created by `ip netns add`).
pub fn open_named(name: &str) -> io::Result<File> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid network namespace name {name:?}"),
        ));
    }
    let path = Path::new(NETNS_RUN_DIR).join(name);
    File::open(&path).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "network namespace {name:?} not found ({} does not exist)",
                    path.display()
                ),
            )
        } else {
            e
        }
    })
}

/// Runs `f` on a helper thread inside namespace `ns`, leaving the caller's namespace alone.
pub fn run_in<T: Send>(ns: &File, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            setns(ns)?;
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("namespace helper thread panicked")))
    })
}

/// A namespace found on the system.
pub struct Namespace {
    /// How we found it: `/run/netns/NAME` or `/proc/PID/ns/net`.
    pub path: PathBuf,
    pub file: File,
}

/// Every namespace we can open, as paths: named namespaces first, then those of running
/// processes (deduplicated by inode, our own left out).
fn candidates() -> io::Result<Vec<PathBuf>> {
    let own = fs::metadata("/proc/thread-self/ns/net")?;
    let mut seen = HashSet::from([(own.dev(), own.ino())]);
    let mut paths: Vec<PathBuf> = Vec::new();
    if let Ok(rd) = fs::read_dir(NETNS_RUN_DIR) {
        paths.extend(rd.flatten().map(|e| e.path()));
    }
    paths.sort();
    let mut procs: Vec<PathBuf> = fs::read_dir("/proc")?
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .map(|e| e.path().join("ns/net"))
        .collect();
    procs.sort();
    paths.extend(procs);
    // Processes come and go; unreadable candidates are skipped.
    paths.retain(|p| fs::metadata(p).is_ok_and(|m| seen.insert((m.dev(), m.ino()))));
    Ok(paths)
}

/// Finds the namespace that our namespace knows as `nsid` (e.g. a veth's `IFLA_LINK_NETNSID`),
/// by asking the kernel for the id of each candidate. Returns `None` if no candidate matches.
pub fn find_by_nsid(rtnl: &mut Rtnl, nsid: i32) -> io::Result<Option<Namespace>> {
    Ok(ids_of(rtnl, candidates()?)
        .find(|(id, _)| *id == nsid)
        .map(|(_, ns)| ns))
}

/// All namespaces that have an id in ours, by id: one pass over the candidates, so that
/// finding the peers of N veths costs O(N), not O(N * namespaces).
pub fn index_by_nsid(rtnl: &mut Rtnl) -> io::Result<HashMap<i32, Namespace>> {
    let mut index = HashMap::new();
    for (id, ns) in ids_of(rtnl, candidates()?) {
        index.entry(id).or_insert(ns);
    }
    Ok(index)
}

/// The candidates that are namespaces with an id in ours, lazily, with that id.
///
/// Candidates that cannot be opened or asked about are skipped, not errors: other programs
/// create and delete namespaces all the time. `ip netns add` creates `/run/netns/NAME` as a
/// plain file before it bind-mounts the namespace on it, and `ip netns del` unmounts before it
/// unlinks, so a listed entry can be a plain file for a moment; the kernel then answers
/// `EINVAL` ("Peer netns reference is invalid"). Letting that fail the whole search made
/// `detach` (and `run --detach-on-exit`) leave a pod's offloads unrestored whenever another
/// namespace came or went at the same moment.
fn ids_of(
    rtnl: &mut Rtnl,
    paths: Vec<PathBuf>,
) -> impl Iterator<Item = (i32, Namespace)> + use<'_> {
    paths.into_iter().filter_map(|path| {
        let file = File::open(&path).ok()?;
        match rtnl.nsid_of(file.as_fd()) {
            Ok(Some(id)) => Some((id, Namespace { path, file })),
            Ok(None) => None,
            Err(e) => {
                debug!(path = %path.display(), "not a namespace (any more?): {e}");
                None
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A candidate that is a plain file (a `/run/netns` entry between `ip netns add`'s create
    /// and its bind mount) is skipped, not an error that ends the search.
    #[test]
    fn a_plain_file_among_the_candidates_is_skipped() {
        let dir = std::env::temp_dir().join(format!("xfp-netns-unit-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let plain = dir.join("half-made");
        fs::write(&plain, b"").unwrap();
        let mut rtnl = Rtnl::new().unwrap();
        let file = File::open(&plain).unwrap();
        assert!(
            rtnl.nsid_of(file.as_fd()).is_err(),
            "the kernel accepted a plain file as a namespace"
        );
        let found: Vec<i32> = ids_of(&mut rtnl, vec![plain.clone(), dir.join("gone")])
            .map(|(id, _)| id)
            .collect();
        fs::remove_dir_all(&dir).unwrap();
        assert!(found.is_empty(), "{found:?}");
    }
}
