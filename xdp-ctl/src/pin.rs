//! The pin directory: where maps and links live on bpffs, and its lock.
//!
//! Layout (one directory per ABI layout version, so an upgrade never misreads old maps):
//! `<root>/v<LAYOUT_VERSION>/maps/<MAP_NAME>` and `<root>/v<N>/links/{xdp,tcx}-<ifindex>`.
use std::{
    fs::{self, File},
    io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use common::LAYOUT_VERSION;
use nix::{
    errno::Errno,
    fcntl::{Flock, FlockArg},
    sys::statfs::{statfs, BPF_FS_MAGIC},
};
use thiserror::Error;

pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/xdp-fastpath";

/// What can go wrong with the pin directory.
#[derive(Debug, Error)]
pub enum PinError {
    #[error("pin directory {} must be an absolute path", .0.display())]
    NotAbsolute(PathBuf),
    #[error(
        "pin directory {} is not on a bpffs (its file system type is {fs_type}); use a \
         directory under a bpffs mount such as /sys/fs/bpf (mount one with \
         `mount -t bpf bpffs /sys/fs/bpf`)",
        path.display()
    )]
    NotBpffs { path: PathBuf, fs_type: String },
    /// `what` names the operation, e.g. "locking".
    #[error("{what} {}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

type Result<T, E = PinError> = std::result::Result<T, E>;

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> PinError {
    let path = path.to_path_buf();
    move |source| PinError::Io { what, path, source }
}

#[derive(Clone, Debug)]
pub struct PinDir {
    root: PathBuf,
}

impl PinDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn layout(&self) -> PathBuf {
        self.root.join(format!("v{LAYOUT_VERSION}"))
    }

    pub fn maps_dir(&self) -> PathBuf {
        self.layout().join("maps")
    }

    pub fn links_dir(&self) -> PathBuf {
        self.layout().join("links")
    }

    pub fn map_path(&self, name: &str) -> PathBuf {
        self.maps_dir().join(name)
    }

    pub fn xdp_link_path(&self, ifindex: u32) -> PathBuf {
        self.links_dir().join(format!("xdp-{ifindex}"))
    }

    pub fn tcx_link_path(&self, ifindex: u32) -> PathBuf {
        self.links_dir().join(format!("tcx-{ifindex}"))
    }

    /// The directory a running controller holds a shared `flock` on (see
    /// [`PinDir::hold_controller`]).
    fn controller_dir(&self) -> PathBuf {
        self.layout().join("controller")
    }

    /// True if every map of this layout is pinned here. The loader pins them one by one (and
    /// creating the preallocated flow tables takes a moment), so a reader that checked one map
    /// only could find the rest missing while a first attach is under way.
    pub fn has_maps(&self) -> bool {
        crate::maps::ALL_MAPS
            .iter()
            .all(|name| self.map_path(name).exists())
    }

    /// Fails with a clear message unless the pin directory is (or would be created) on bpffs.
    pub fn check_bpffs(&self) -> Result<()> {
        if !self.root.is_absolute() {
            return Err(PinError::NotAbsolute(self.root.clone()));
        }
        let mut probe = self.root.as_path();
        while !probe.exists() {
            probe = probe.parent().unwrap_or(Path::new("/"));
        }
        let fs_type = statfs(probe)
            .map_err(|e| io_err("checking the file system of", probe)(e.into()))?
            .filesystem_type();
        if fs_type != BPF_FS_MAGIC {
            return Err(PinError::NotBpffs {
                path: self.root.clone(),
                fs_type: format!("{:#x}", fs_type.0),
            });
        }
        Ok(())
    }

    /// Creates the directories and takes the exclusive lock that serialises every command that
    /// changes this pin directory (libxdp's protocol: lock, populate and pin, attach last).
    pub fn create_and_lock(&self) -> Result<PinLock> {
        self.check_bpffs()?;
        for d in [self.maps_dir(), self.links_dir()] {
            fs::create_dir_all(&d).map_err(io_err("creating", &d))?;
        }
        self.lock()
    }

    /// Takes the lock on an existing pin directory.
    pub fn lock(&self) -> Result<PinLock> {
        let dir = File::open(&self.root).map_err(io_err("opening pin directory", &self.root))?;
        flock(dir, FlockArg::LockExclusive).map_err(io_err("locking", &self.root))
    }

    /// Marks a controller as running on this pin directory for as long as the returned lock
    /// lives: a shared `flock` on `<layout>/controller`, which the kernel releases when the
    /// process exits, however it exits. Unlike a PID, this holds across PID namespaces (a
    /// DaemonSet pod and the host see the same bpffs inode), and unlike the heartbeat alone it
    /// says "gone" at once after `kill -9`.
    pub fn hold_controller(&self) -> Result<PinLock> {
        let dir = self.controller_dir();
        fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
        let f = File::open(&dir).map_err(io_err("opening", &dir))?;
        flock(f, FlockArg::LockShared).map_err(io_err("locking", &dir))
    }

    /// Whether a process holds the lock of [`PinDir::hold_controller`].
    pub fn controller_running(&self) -> Result<bool> {
        let dir = self.controller_dir();
        let f = match File::open(&dir) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io_err("opening", &dir)(e)),
        };
        // Taken (and released on drop) only if nobody holds it.
        match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
            Ok(_) => Ok(false),
            Err((_, Errno::EWOULDBLOCK)) => Ok(true),
            Err((_, e)) => Err(io_err("probing the lock of", &dir)(e.into())),
        }
    }

    /// Removes the layout directory and the root if they are empty of links and maps; used once
    /// nothing is attached any more. A root that is a mount point (`mount -t bpf bpf /run/pins`
    /// with `--pin-dir /run/pins`) stays: it is the user's, and removing it would fail (EBUSY).
    pub fn remove_all(&self) -> Result<()> {
        if let Ok(rd) = fs::read_dir(self.maps_dir()) {
            for e in rd.flatten() {
                fs::remove_file(e.path()).map_err(io_err("unpinning", &e.path()))?;
            }
        }
        let root = (!is_mount_point(&self.root)).then(|| self.root.clone());
        for d in [
            self.links_dir(),
            self.maps_dir(),
            self.controller_dir(),
            self.layout(),
        ]
        .into_iter()
        .chain(root)
        {
            match fs::remove_dir(&d) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("removing", &d)(e)),
            }
        }
        Ok(())
    }
}

/// True if `path` is the root of a mount: on another device than its parent, or the root of a
/// bind mount of the same file system (`/proc/self/mountinfo` lists it).
fn is_mount_point(path: &Path) -> bool {
    let parent = path.parent().unwrap_or(Path::new("/"));
    match (fs::metadata(path), fs::metadata(parent)) {
        (Ok(m), Ok(p)) if m.dev() != p.dev() => return true,
        (Err(_), _) => return false,
        _ => {}
    }
    let Ok(canonical) = fs::canonicalize(path) else {
        return false;
    };
    fs::read_to_string("/proc/self/mountinfo").is_ok_and(|info| {
        info.lines()
            .filter_map(|l| l.split(' ').nth(4))
            .any(|mnt| Path::new(&unescape_mountinfo(mnt)) == canonical)
    })
}

/// Undoes mountinfo's octal escapes (`\040` for a space, etc.).
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let digits = std::str::from_utf8(&b[i + 1..i + 4]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(digits, 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn flock(f: File, how: FlockArg) -> io::Result<PinLock> {
    Flock::lock(f, how)
        .map(|lock| PinLock { _lock: lock })
        .map_err(|(_, e)| e.into())
}

/// Held while a command changes the pin directory (or, shared, while a controller runs);
/// released on drop, or by the kernel when the process exits.
pub struct PinLock {
    _lock: Flock<File>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo(r"/run/my\040pins"), "/run/my pins");
        assert_eq!(unescape_mountinfo(r"/a\\b"), r"/a\\b");
        assert_eq!(unescape_mountinfo(r"/x\0"), r"/x\0");
    }

    #[test]
    fn mount_points() {
        assert!(is_mount_point(Path::new("/")));
        assert!(is_mount_point(Path::new("/proc")));
        assert!(!is_mount_point(Path::new("/proc/self/fd")));
        assert!(!is_mount_point(Path::new("/nonexistent-xfp")));
    }
}
