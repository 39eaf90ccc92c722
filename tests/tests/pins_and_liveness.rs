//! The pin directory's edges and how `status` judges the controller alive, on real namespaces:
//! - `--pin-dir` at the root of a bpffs mount of its own: `detach` removes everything it made
//!   but never the mount point, and exits 0;
//! - a controller in another PID namespace (as in a DaemonSet pod): `status` says running while
//!   it runs and not running as soon as it is gone, whatever PID it reported.
//!
//! Needs root: the tests are `#[ignore]`d and fail when run without root (`scripts/test.sh`).

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use integration_tests::{poll_until, require_root, run_args, Bench, Datapath, XdpCtl};
use serde_json::Value;

/// A bpffs mounted on a directory this test creates; unmounted (which also frees anything still
/// pinned on it) and removed on drop, even when the test fails.
struct BpffsMount {
    dir: PathBuf,
}

impl BpffsMount {
    #[track_caller]
    fn new(name: &str) -> BpffsMount {
        let dir = PathBuf::from(format!("/tmp/xfp-bpffs-{name}"));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let m = BpffsMount { dir };
        let _ = run_args(&["mount", "-t", "bpf", "bpf", &m.dir.display().to_string()]).ok();
        m
    }
}

impl Drop for BpffsMount {
    fn drop(&mut self) {
        let d = self.dir.display().to_string();
        if is_mount_point(&self.dir) {
            let out = run_args(&["umount", &d]);
            if !out.success() {
                eprintln!("teardown: umount {d}: {out}");
            }
        }
        if let Err(e) = std::fs::remove_dir(&self.dir) {
            eprintln!("teardown: removing {d}: {e}");
        }
    }
}

fn is_mount_point(dir: &Path) -> bool {
    let want = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(want.as_str()))
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
#[ignore = "needs root: run scripts/test.sh"]
fn detach_at_the_root_of_a_bpffs_mount_keeps_the_mount_and_exits_0() {
    require_root!();
    let b = Bench::up(2);
    // Dropped before the bench: unmounting frees whatever a failure left pinned.
    let mount = BpffsMount::new(b.prefix());
    let ctl = XdpCtl::new(mount.dir.clone(), Some(b.node_ns()));
    let (hv1, hv2) = (b.host_veth(1), b.host_veth(2));
    // A fresh bpffs is not empty (the kernel's maps.debug and progs.debug iterators).
    let fresh = entries(&mount.dir);

    for (dp, how) in [
        (Datapath::Xdp, vec!["detach", "--all"]),
        (Datapath::Tc, vec!["detach", hv1.as_str(), hv2.as_str()]),
    ] {
        ctl.attach_ok(dp, &[&hv1, &hv2]);
        assert!(
            entries(&mount.dir) != fresh,
            "{dp}: nothing pinned in {}",
            mount.dir.display()
        );
        let out = ctl.run(&how);
        assert_eq!(out.code(), Some(0), "{dp}: `{}`: {out}", how.join(" "));
        assert!(
            is_mount_point(&mount.dir),
            "{dp}: {} is no longer a mount point",
            mount.dir.display()
        );
        let left = entries(&mount.dir);
        assert_eq!(left, fresh, "{dp}: the mount after the detach");
        assert!(
            b.programs_on_links().is_empty(),
            "{dp}: programs left on links"
        );
    }
    // Nothing attached: detach --all is a no-op, still 0.
    let out = ctl.run(&["detach", "--all"]);
    assert_eq!(
        out.code(),
        Some(0),
        "detach --all with nothing attached: {out}"
    );
}

/// `unshare --pid --fork xdp-ctl run ...`: the controller is PID 1 of a PID namespace of its
/// own, a PID that on the host belongs to init. SIGKILLed (with its namespace) on drop.
struct PidNsController {
    child: Child,
    log: PathBuf,
}

impl PidNsController {
    fn spawn(b: &Bench) -> PidNsController {
        let ctl = b.xdp_ctl();
        ctl.check_bin().unwrap_or_else(|e| panic!("{e}"));
        let log = PathBuf::from(format!("/tmp/xdp-ctl-pidns-{}.log", b.prefix()));
        let file = File::create(&log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
        let child = Command::new("unshare")
            .args(["--pid", "--fork", "--kill-child", "--"])
            .arg(&ctl.bin)
            .arg("--pin-dir")
            .arg(&ctl.pin_dir)
            .args(["--netns", &b.node_ns(), "run", "--iface-prefix"])
            .arg(b.iface_prefix())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(file))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start unshare: {e}"));
        PidNsController { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The host PID of the controller (the child of `unshare`).
    fn controller_host_pid(&self) -> Option<u32> {
        let pid = self.child.id();
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .ok()?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }

    /// SIGKILL to `unshare`, whose death SIGKILLs the controller (`--kill-child`); reaps it.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PidNsController {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("--- controller log ---\n{}--- end ---", self.log());
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Gone, or a zombie: either way its files (and its lock) are closed.
fn exited(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| {
        s.rsplit(')')
            .next()
            .is_some_and(|r| r.trim_start().starts_with('Z'))
    })
}

#[test]
#[ignore = "needs root: run scripts/test.sh"]
fn status_judges_a_controller_in_another_pid_namespace_by_its_lock() {
    require_root!();
    let b = Bench::up(1);
    let ctl = b.xdp_ctl();
    let mut c = PidNsController::spawn(&b);
    let mut last = None;
    let st = poll_until(Duration::from_secs(10), || {
        let s = ctl.controller_status();
        last.clone_from(&s);
        s.filter(|s| s["running"] == true && s["ready"] == true)
    })
    .unwrap_or_else(|| panic!("not running and ready: {last:?}; log:\n{}", c.log()));
    assert_eq!(
        st["pid"], 1,
        "the controller should be PID 1 of its namespace: {st}"
    );
    let host_pid = c
        .controller_host_pid()
        .unwrap_or_else(|| panic!("no child of unshare; log:\n{}", c.log()));
    assert_ne!(host_pid, 1);

    c.kill();
    assert!(
        poll_until(Duration::from_secs(10), || exited(host_pid).then_some(())).is_some(),
        "the controller (host pid {host_pid}) outlived unshare --kill-child"
    );
    // PID 1 exists on the host and the heartbeat is a second old at most: only the lock can
    // tell that the controller is gone.
    let st: Value = ctl
        .controller_status()
        .unwrap_or_else(|| panic!("no controller state after the kill"));
    assert!(
        st["running"] == false && st["ready"] == false,
        "status after the controller died: {st}"
    );
    eprintln!(
        "after the kill: running {}, heartbeat {} ms old",
        st["running"], st["heartbeat_age_ms"]
    );
}
