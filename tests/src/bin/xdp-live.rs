//! The XDP program's own ceiling for `scripts/bench.sh` (a benchmark helper, not a test):
//! `BPF_PROG_TEST_RUN` with `BPF_F_TEST_XDP_LIVE_FRAMES` on one CPU, so every frame the program
//! redirects really goes out through the devmap into the target veth and its pod.
//!
//! ```text
//! xdp-live [--drop-at NETNS2 IFACE] [--no-stats] NETNS PROG_ID IFINDEX SRC_MAC DST_MAC SRC_IP DST_IP SECONDS [CPU]
//! ```
//!
//! Runs the program (by id; `xdp-ctl status --json` shows it) on a 64-byte-payload UDP frame
//! SRC_IP:4000 -> DST_IP:9 from SRC_MAC to DST_MAC, as if received on IFINDEX (in NETNS: the
//! kernel resolves the ingress ifindex in the caller's namespace), pinned to CPU (default 0),
//! for SECONDS. Prints `{"frames", "seconds", "mpps", "kernel_mpps", "calls", "prog_runs",
//! "prog_ns_per_frame", "stats", ...}`.
//!
//! The program's own time comes from run-time statistics (`BPF_ENABLE_STATS`, on while this
//! process runs), which read the clock twice around every program run, the drop program's too;
//! on a VM each read is a paravirtual clock read, a visible part of a frame's cost here.
//! `--no-stats` leaves them off, for a ceiling without that overhead: `prog_ns_per_frame`,
//! `prog_runs` (and `drop_runs`) are then null, unless another holder had statistics on during
//! the run, which `"stats": true` says (the program's run count moved).
//!
//! `--drop-at NETNS2 IFACE` isolates the program and its devmap redirect from what the target
//! does with the frames: for the run, a two-instruction `XDP_DROP` program is attached (native
//! mode, through a BPF link) to IFACE in NETNS2, the pod side of the redirect target's veth, so
//! every redirected frame ends in that veth's NAPI poll before any skb is built. The program is
//! loaded here with `BPF_PROG_LOAD` (no object file, no toolchain) and goes away with this
//! process: the link is never pinned, so the kernel detaches it when the process exits, however
//! it exits. The output then also has `drop_runs` (how often the drop program ran: the frames
//! that really crossed the veth) and `drop_ns_per_frame`. IFACE must have no XDP program yet.
//!
//! Live frames come from a page pool that the kernel does *not* re-initialise between uses
//! (only the context is reset), so the program's TTL decrement accumulates on a recycled page.
//! The frame starts at TTL 255 and each call runs few enough frames (`REPEAT_PER_CALL`) that
//! no page is reused 254 times within it; every call gets a fresh pool. The caller checks the
//! program's counters (`ttl_expired` must stay 0, `redirected` must equal `frames`).
//!
//! aya 0.14 exposes the test-run flags, but only on a program it loaded itself; this program
//! was loaded by `xdp-ctl`, so the two `bpf(2)` commands are issued directly.

use std::{
    fs::File,
    net::Ipv4Addr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    process::ExitCode,
    time::{Duration, Instant},
};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_ENABLE_STATS: libc::c_long = 32;
const BPF_PROG_TYPE_XDP: u32 = 6;
/// `enum bpf_attach_type`: BPF_XDP.
const BPF_XDP: u32 = 37;
/// Native (driver) mode: veth runs the program in its NAPI poll, on the `xdp_frame`.
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
/// The drop program takes multi-buffer frames too, so any MTU of the target veth is fine.
const BPF_F_XDP_HAS_FRAGS: u32 = 1 << 5;
const XDP_DROP: i32 = 1;
const BPF_STATS_RUN_TIME: u32 = 0;
/// Offsets of `run_time_ns` and `run_cnt` in `struct bpf_prog_info`.
const INFO_RUN_TIME_NS: usize = 192;
const INFO_RUN_CNT: usize = 200;
const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;
/// Frames per `bpf_xdp_test_run` batch (the kernel's maximum is 256; NAPI's weight is 64).
const BATCH_SIZE: u32 = 256;
/// Frames per call: one batch, so every frame is on a fresh page (see above).
const REPEAT_PER_CALL: u32 = BATCH_SIZE;
const PAYLOAD: u16 = 64;

/// `union bpf_attr`, the `test` member (include/uapi/linux/bpf.h).
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

/// `struct xdp_md`.
#[repr(C)]
struct XdpMd {
    data: u32,
    data_end: u32,
    data_meta: u32,
    ingress_ifindex: u32,
    rx_queue_index: u32,
    egress_ifindex: u32,
}

/// `union bpf_attr`, the `BPF_PROG_LOAD` member up to `expected_attach_type` (the kernel
/// takes a shorter attr and treats the rest as zero).
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// `union bpf_attr`, the `BPF_LINK_CREATE` member without its type-specific tail.
#[repr(C)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<libc::c_long> {
    // SAFETY: attr is a live, correctly laid out bpf_attr member of the given size.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr),
            std::mem::size_of::<T>(),
        )
    };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// The program's (run_time_ns, run_cnt), counted while a BPF_ENABLE_STATS fd is open.
fn run_stats(fd: &OwnedFd) -> std::io::Result<(u64, u64)> {
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let mut info = [0u8; 256];
    let mut attr = InfoAttr {
        bpf_fd: u32::try_from(fd.as_raw_fd()).map_err(std::io::Error::other)?,
        info_len: 256,
        info: info.as_mut_ptr() as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    let at = |o: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&info[o..o + 8]);
        u64::from_ne_bytes(b)
    };
    Ok((at(INFO_RUN_TIME_NS), at(INFO_RUN_CNT)))
}

/// An fd the kernel just returned.
fn owned_fd(fd: libc::c_long) -> Result<OwnedFd, String> {
    let fd = i32::try_from(fd).map_err(|e| e.to_string())?;
    // SAFETY: the kernel just returned this fd to us and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn fd_u32(fd: &OwnedFd) -> Result<u32, String> {
    u32::try_from(fd.as_raw_fd()).map_err(|e| e.to_string())
}

/// One eBPF instruction (`struct bpf_insn`): opcode, dst_reg | src_reg << 4, offset, imm.
fn insn(code: u8, regs: u8, off: i16, imm: i32) -> [u8; 8] {
    let mut i = [0u8; 8];
    i[0] = code;
    i[1] = regs;
    i[2..4].copy_from_slice(&off.to_ne_bytes());
    i[4..8].copy_from_slice(&imm.to_ne_bytes());
    i
}

/// Loads `r0 = XDP_DROP; exit` as an XDP program and attaches it in native mode to IFACE of
/// the current network namespace through a BPF link. Returns (program fd, link fd): closing
/// the link fd (at the latest when the process exits) detaches it.
fn attach_drop(iface: &str) -> Result<(OwnedFd, OwnedFd), String> {
    // BPF_ALU64 | BPF_MOV | BPF_K, dst r0; BPF_JMP | BPF_EXIT.
    let prog: Vec<u8> = [insn(0xb7, 0, 0, XDP_DROP), insn(0x95, 0, 0, 0)].concat();
    let license = b"GPL\0";
    let mut name = [0u8; 16];
    name[..10].copy_from_slice(b"bench_drop");
    let mut log = vec![0u8; 4096];
    let mut load = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_XDP,
        insn_cnt: 2,
        insns: prog.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: 4096,
        log_buf: log.as_mut_ptr() as u64,
        prog_flags: BPF_F_XDP_HAS_FRAGS,
        prog_name: name,
        expected_attach_type: BPF_XDP,
        ..ProgLoadAttr::default()
    };
    let prog_fd = bpf(BPF_PROG_LOAD, &mut load).map_err(|e| {
        let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
        format!(
            "BPF_PROG_LOAD of the XDP_DROP program: {e} {}",
            String::from_utf8_lossy(&log[..end]).trim()
        )
    })?;
    let prog_fd = owned_fd(prog_fd)?;
    let c_iface = std::ffi::CString::new(iface).map_err(|e| e.to_string())?;
    // SAFETY: a valid NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(c_iface.as_ptr()) };
    if ifindex == 0 {
        return Err(format!(
            "interface {iface}: {}",
            std::io::Error::last_os_error()
        ));
    }
    let mut link = LinkCreateAttr {
        prog_fd: fd_u32(&prog_fd)?,
        target_ifindex: ifindex,
        attach_type: BPF_XDP,
        flags: XDP_FLAGS_DRV_MODE,
    };
    let link_fd = bpf(BPF_LINK_CREATE, &mut link).map_err(|e| {
        format!("attach the XDP_DROP program to {iface} (ifindex {ifindex}, native): {e}")
    })?;
    Ok((prog_fd, owned_fd(link_fd)?))
}

fn setns_file(ns: &File, name: &str) -> Result<(), String> {
    // SAFETY: ns is an open namespace file; this process is single-threaded.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(format!("setns {name}: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

fn checksum(words: &[u8]) -> u16 {
    let mut sum: u32 = words
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    #[expect(clippy::cast_possible_truncation, reason = "folded to 16 bits above")]
    !(sum as u16)
}

/// Ethernet + IPv4 (TTL 255, no options) + UDP 4000 -> 9 (checksum 0: none) + 64 bytes.
fn frame(src_mac: [u8; 6], dst_mac: [u8; 6], src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    const IP_LEN: u16 = 20 + 8 + PAYLOAD;
    let mut f = Vec::with_capacity(14 + usize::from(IP_LEN));
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&IP_LEN.to_be_bytes());
    ip[8] = 255;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&4000u16.to_be_bytes());
    f.extend_from_slice(&9u16.to_be_bytes());
    f.extend_from_slice(&(8 + PAYLOAD).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(&[0xa5; PAYLOAD as usize]);
    f
}

fn pin_to_cpu(cpu: usize) -> std::io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET and sched_setaffinity get valid pointers.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &raw const set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

const USAGE: &str = "usage: xdp-live [--drop-at NETNS2 IFACE] [--no-stats] NETNS PROG_ID IFINDEX SRC_MAC DST_MAC SRC_IP DST_IP SECONDS [CPU]";

#[expect(clippy::too_many_lines, reason = "one straight sequence of syscalls")]
fn run(args: &[String]) -> Result<String, String> {
    let (mut drop_at, mut no_stats, mut args) = (None, false, args);
    loop {
        match args {
            [flag, ns, iface, rest @ ..] if flag == "--drop-at" => {
                drop_at = Some((ns, iface));
                args = rest;
            }
            [flag, rest @ ..] if flag == "--no-stats" => {
                no_stats = true;
                args = rest;
            }
            [flag, ..] if flag.starts_with("--") => return Err(USAGE.into()),
            _ => break,
        }
    }
    let [netns, prog_id, ifindex, src_mac, dst_mac, src, dst, secs, rest @ ..] = args else {
        return Err(USAGE.into());
    };
    let num = |what: &str, s: &str| s.parse::<u32>().map_err(|_| format!("bad {what} '{s}'"));
    let prog_id = num("program id", prog_id)?;
    let ifindex = num("ifindex", ifindex)?;
    let mac = |s: &str| parse_mac(s).ok_or_else(|| format!("bad MAC '{s}'"));
    let ip = |s: &str| s.parse::<Ipv4Addr>().map_err(|_| format!("bad IPv4 '{s}'"));
    let secs: f64 = secs
        .parse()
        .ok()
        .filter(|s: &f64| *s > 0.0)
        .ok_or_else(|| format!("bad SECONDS '{secs}'"))?;
    let cpu = rest.first().map_or(Ok(0), |c| num("cpu", c))?;
    let data = frame(mac(src_mac)?, mac(dst_mac)?, ip(src)?, ip(dst)?);

    pin_to_cpu(usize::try_from(cpu).map_err(|e| e.to_string())?)
        .map_err(|e| format!("pin to CPU {cpu}: {e}"))?;
    let ns =
        File::open(format!("/run/netns/{netns}")).map_err(|e| format!("netns {netns}: {e}"))?;
    // The drop program first, in its own namespace (the link resolves IFACE there), then the
    // measured program's namespace.
    let drop = match drop_at {
        Some((ns2, iface)) => {
            let f =
                File::open(format!("/run/netns/{ns2}")).map_err(|e| format!("netns {ns2}: {e}"))?;
            setns_file(&f, ns2)?;
            Some((format!("{ns2}/{iface}"), attach_drop(iface)?))
        }
        None => None,
    };
    setns_file(&ns, netns)?;

    let mut get = [prog_id, 0, 0];
    let fd = bpf(BPF_PROG_GET_FD_BY_ID, &mut get).map_err(|e| format!("program {prog_id}: {e}"))?;
    let fd = owned_fd(fd)?;

    let len = u32::try_from(data.len()).map_err(|e| e.to_string())?;
    let ctx = XdpMd {
        data: 0,
        data_end: len,
        data_meta: 0,
        ingress_ifindex: ifindex,
        rx_queue_index: 0,
        egress_ifindex: 0,
    };
    // Run-time statistics for every program while this fd is open (closed on return).
    let _stats = if no_stats {
        None
    } else {
        let mut stats_type = [BPF_STATS_RUN_TIME];
        let stats =
            bpf(BPF_ENABLE_STATS, &mut stats_type).map_err(|e| format!("BPF_ENABLE_STATS: {e}"))?;
        Some(owned_fd(stats)?)
    };
    let (ns0, cnt0) = run_stats(&fd).map_err(|e| format!("program info: {e}"))?;
    let drop0 = match &drop {
        Some((_, (dfd, _))) => run_stats(dfd).map_err(|e| format!("drop program info: {e}"))?,
        None => (0, 0),
    };
    let (mut frames, mut calls, mut kernel_ns) = (0u64, 0u64, 0u64);
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    while Instant::now() < deadline {
        let mut attr = TestRunAttr {
            prog_fd: u32::try_from(fd.as_raw_fd()).map_err(|e| e.to_string())?,
            data_size_in: len,
            data_in: data.as_ptr() as u64,
            repeat: REPEAT_PER_CALL,
            ctx_size_in: u32::try_from(std::mem::size_of::<XdpMd>()).map_err(|e| e.to_string())?,
            ctx_in: std::ptr::from_ref(&ctx) as u64,
            flags: BPF_F_TEST_XDP_LIVE_FRAMES,
            batch_size: BATCH_SIZE,
            ..TestRunAttr::default()
        };
        bpf(BPF_PROG_TEST_RUN, &mut attr).map_err(|e| {
            format!("BPF_PROG_TEST_RUN (live frames) on program {prog_id}, ifindex {ifindex}: {e}")
        })?;
        frames += u64::from(REPEAT_PER_CALL);
        // `duration` is the kernel's mean time per frame, setup and teardown excluded.
        kernel_ns += u64::from(attr.duration) * u64::from(REPEAT_PER_CALL);
        calls += 1;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let (ns1, cnt1) = run_stats(&fd).map_err(|e| format!("program info: {e}"))?;
    let (prog_ns, prog_runs) = (ns1 - ns0, cnt1 - cnt0);
    // Statistics were on if the run count moved (ours, or another holder's with --no-stats).
    let stats_on = prog_runs > 0;
    // The drop program runs in the target veth's NAPI poll, which each call's flush schedules
    // on this CPU (normally before the call returns).
    let drop_json = match &drop {
        Some((at, (dfd, _link))) => {
            let (dns1, dcnt1) = run_stats(dfd).map_err(|e| format!("drop program info: {e}"))?;
            let (dns, dcnt) = (dns1 - drop0.0, dcnt1 - drop0.1);
            #[expect(
                clippy::cast_precision_loss,
                reason = "frame counts stay far below 2^52"
            )]
            let per = dns as f64 / dcnt.max(1) as f64;
            if stats_on {
                format!(",\"drop_at\":\"{at}\",\"drop_runs\":{dcnt},\"drop_ns_per_frame\":{per:.1}")
            } else {
                format!(",\"drop_at\":\"{at}\",\"drop_runs\":null,\"drop_ns_per_frame\":null")
            }
        }
        None => String::new(),
    };
    #[expect(
        clippy::cast_precision_loss,
        reason = "frame counts stay far below 2^52"
    )]
    let prog_ns_per_frame = prog_ns as f64 / prog_runs.max(1) as f64;
    let (prog_runs, prog_ns_per_frame) = if stats_on {
        (prog_runs.to_string(), format!("{prog_ns_per_frame:.1}"))
    } else {
        ("null".to_string(), "null".to_string())
    };
    #[expect(
        clippy::cast_precision_loss,
        reason = "frame counts stay far below 2^52"
    )]
    let (mpps, kernel_mpps) = (
        frames as f64 / elapsed / 1e6,
        frames as f64 / (kernel_ns.max(1) as f64 / 1e9) / 1e6,
    );
    Ok(format!(
        "{{\"frames\":{frames},\"seconds\":{elapsed:.3},\"mpps\":{mpps:.3},\"kernel_mpps\":{kernel_mpps:.3},\"calls\":{calls},\"prog_runs\":{prog_runs},\"prog_ns_per_frame\":{prog_ns_per_frame},\"stats\":{stats_on},\"batch_size\":{BATCH_SIZE},\"repeat_per_call\":{REPEAT_PER_CALL},\"cpu\":{cpu},\"frame_bytes\":{len}{drop_json}}}"
    ))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(json) => {
            println!("{json}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("xdp-live: {e}");
            ExitCode::FAILURE
        }
    }
}
