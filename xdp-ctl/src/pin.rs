//! The pin directory: where maps and links live on bpffs, and its lock.
//!
//! Layout (one directory per ABI layout version, so an upgrade never misreads old maps):
//! `<root>/v<LAYOUT_VERSION>/maps/<MAP_NAME>` and `<root>/v<N>/links/{xdp,tcx}-<ifindex>`.
use std::{
    fs::{self, File},
    io,
    os::fd::AsRawFd,
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
        // SAFETY: flock on a valid fd.
        if unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io::Error::last_os_error())
                .with_context(|| format!("locking {}", self.root.display()));
        }
        Ok(PinLock { _dir: dir })
    }

    /// Removes the layout directory and the root if they are empty of links and maps; used once
    /// nothing is attached any more.
    pub fn remove_all(&self) -> Result<()> {
        if let Ok(rd) = fs::read_dir(self.maps_dir()) {
            for e in rd.flatten() {
                fs::remove_file(e.path())
                    .with_context(|| format!("unpinning {}", e.path().display()))?;
            }
        }
        for d in [
            self.links_dir(),
            self.maps_dir(),
            self.layout(),
            self.root.clone(),
        ] {
            match fs::remove_dir(&d) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("removing {}", d.display())),
            }
        }
        Ok(())
    }
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
