//! `xdp-ctl mount-bpffs`: the DaemonSet's init step. The pins must live on the host's bpffs
//! (DESIGN.md section 4, bpffs pitfall); a node that boots without one mounted gets it here,
//! from a container whose `/sys/fs/bpf` is the host's (a hostPath with Bidirectional mount
//! propagation, so the mount is the host's too).
use std::path::Path;

use anyhow::{Context as _, Result};

use nix::sys::statfs::{statfs, BPF_FS_MAGIC};

/// Mounts bpffs on `dir` unless one is mounted there. Returns true if it mounted one.
pub fn ensure_mounted(dir: &Path) -> Result<bool> {
    if !dir.is_absolute() {
        anyhow::bail!("{} must be an absolute path", dir.display());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let fs_type = statfs(dir)
        .with_context(|| format!("checking {}", dir.display()))?
        .filesystem_type();
    if fs_type == BPF_FS_MAGIC {
        return Ok(false);
    }
    let c = |s: &str| std::ffi::CString::new(s).context("a path with a NUL byte");
    let target = c(&dir.to_string_lossy())?;
    let bpf = c("bpf")?;
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            bpf.as_ptr(),
            target.as_ptr(),
            bpf.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| {
            format!(
                "mounting bpffs on {} (needs CAP_SYS_ADMIN; in a pod, a privileged init \
                 container with mountPropagation: Bidirectional)",
                dir.display()
            )
        });
    }
    Ok(true)
}
