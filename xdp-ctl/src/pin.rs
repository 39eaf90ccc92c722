//! The pin directory: where maps and links live on bpffs, and its lock.
//!
//! Layout (one directory per ABI layout version, so an upgrade never misreads old maps):
//! `<root>/v<LAYOUT_VERSION>/maps/<MAP_NAME>` and `<root>/v<N>/links/{xdp,tcx}-<ifindex>`.
use std::{
    fs::{self, File},
    io,
    os::{fd::AsRawFd, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _, Result};
use common::LAYOUT_VERSION;

pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/xdp-fastpath";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

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
            bail!(
                "pin directory {} must be an absolute path",
                self.root.display()
            );
        }
        let mut probe = self.root.as_path();
        while !probe.exists() {
            probe = probe.parent().unwrap_or(Path::new("/"));
        }
        let fs_type = statfs_type(probe)
            .with_context(|| format!("checking the file system of {}", probe.display()))?;
        if fs_type != BPF_FS_MAGIC {
            bail!(
                "pin directory {} is not on a bpffs (its file system type is {fs_type:#x}); \
                 use a directory under a bpffs mount such as /sys/fs/bpf \
                 (mount one with `mount -t bpf bpffs /sys/fs/bpf`)",
                self.root.display()
            );
        }
        Ok(())
    }

    /// Creates the directories and takes the exclusive lock that serialises every command that
    /// changes this pin directory (libxdp's protocol: lock, populate and pin, attach last).
    pub fn create_and_lock(&self) -> Result<PinLock> {
        self.check_bpffs()?;
        for d in [self.maps_dir(), self.links_dir()] {
            fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        }
        self.lock()
    }

    /// Takes the lock on an existing pin directory.
    pub fn lock(&self) -> Result<PinLock> {
        let dir = File::open(&self.root)
            .with_context(|| format!("opening pin directory {}", self.root.display()))?;
        flock(&dir, libc::LOCK_EX).with_context(|| format!("locking {}", self.root.display()))?;
        Ok(PinLock { _dir: dir })
    }

    /// Marks a controller as running on this pin directory for as long as the returned lock
    /// lives: a shared `flock` on `<layout>/controller`, which the kernel releases when the
    /// process exits, however it exits. Unlike a PID, this holds across PID namespaces (a
    /// DaemonSet pod and the host see the same bpffs inode), and unlike the heartbeat alone it
    /// says "gone" at once after `kill -9`.
    pub fn hold_controller(&self) -> Result<PinLock> {
        let dir = self.controller_dir();
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let f = File::open(&dir).with_context(|| format!("opening {}", dir.display()))?;
        flock(&f, libc::LOCK_SH).with_context(|| format!("locking {}", dir.display()))?;
        Ok(PinLock { _dir: f })
    }

    /// Whether a process holds the lock of [`PinDir::hold_controller`].
    pub fn controller_running(&self) -> Result<bool> {
        let dir = self.controller_dir();
        let f = match File::open(&dir) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e).with_context(|| format!("opening {}", dir.display())),
        };
        // Taken (and released on drop) only if nobody holds it.
        match flock(&f, libc::LOCK_EX | libc::LOCK_NB) {
            Ok(()) => Ok(false),
            Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => Ok(true),
            Err(e) => Err(e).with_context(|| format!("probing the lock of {}", dir.display())),
        }
    }

    /// Removes the layout directory and the root if they are empty of links and maps; used once
    /// nothing is attached any more. A root that is a mount point (`mount -t bpf bpf /run/pins`
    /// with `--pin-dir /run/pins`) stays: it is the user's, and removing it would fail (EBUSY).
    pub fn remove_all(&self) -> Result<()> {
        if let Ok(rd) = fs::read_dir(self.maps_dir()) {
            for e in rd.flatten() {
                fs::remove_file(e.path())
                    .with_context(|| format!("unpinning {}", e.path().display()))?;
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
                Err(e) => return Err(e).with_context(|| format!("removing {}", d.display())),
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

fn flock(f: &File, op: libc::c_int) -> io::Result<()> {
    // SAFETY: flock on a valid fd.
    if unsafe { libc::flock(f.as_raw_fd(), op) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Held while a command changes the pin directory; released on drop (or process exit).
pub struct PinLock {
    _dir: File,
}

fn statfs_type(path: &Path) -> io::Result<i64> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    // SAFETY: zeroed statfs is a valid out-parameter.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is NUL-terminated, st is writable.
    if unsafe { libc::statfs(c.as_ptr(), &raw mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_type as i64)
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
