//! `xdp-ctl monitor`: a live stream of sampled datapath events.
//!
//! tcpdump on a host veth does not see redirected packets, so this is how an operator watches
//! the fast path. The monitor writes its filters and sampling into the pinned `MONITOR_CONFIG`
//! (enabling the datapath's emit path), reads `MONITOR_EVENTS`, and zeroes the configuration
//! when it exits (Ctrl-C, SIGTERM, `--count`, or a closed stdout). One monitor at a time: the
//! ring buffer has one reader. A monitor killed with SIGKILL leaves its configuration behind;
//! the next monitor (or a running controller, at its next heartbeat) resets it.
use std::{
    collections::HashMap,
    fmt::Write as _,
    io::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use anyhow::{bail, Context as _, Result};
use aya::maps::{Array, MapData, PerCpuArray, RingBuf};
use common::{
    map_names,
    monitor::{
        MonitorConfig, MonitorEvent, ACTION_REDIRECT, HOOK_TC, HOOK_TC_UPLINK, HOOK_XDP,
        HOOK_XDP_UPLINK, MONITOR_ANY_REASON, STAT_EMITTED, STAT_LOST, STAT_SEEN,
    },
    pkt::{IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP},
    Reason, FAMILY_V4, FAMILY_V6,
};
use serde::Serialize;
use serde_json::json;
use tokio::{
    io::{unix::AsyncFd, Interest},
    signal::unix::{signal, SignalKind},
};

use crate::{maps::open, nl::Rtnl, pin::PinDir};

#[derive(clap::Args, Debug, Clone)]
pub struct MonitorArgs {
    /// Show about one in N of the packets that pass the filters (1: every one).
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub sample: u32,
    /// Only packets from or to ADDR (IPv4 or IPv6).
    #[arg(long, value_name = "ADDR")]
    pub ip: Option<IpAddr>,
    /// Only packets counted under reason R, as `xdp-ctl stats` names them (redirected,
    /// no_endpoint, flow_not_seen, ...).
    #[arg(long, value_name = "R", value_parser = reason_arg)]
    pub reason: Option<Reason>,
    /// Exit after N events (default: until Ctrl-C or SIGTERM).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
}

fn reason_arg(s: &str) -> Result<Reason, String> {
    Reason::ALL
        .iter()
        .copied()
        .find(|r| r.name() == s)
        .ok_or_else(|| {
            let names: Vec<&str> = Reason::ALL.iter().map(|r| r.name()).collect();
            format!("unknown reason {s:?}; one of: {}", names.join(", "))
        })
}

/// The datapath's monitor counters, summed over CPUs (`common::monitor::STAT_*`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MonitorStats {
    /// Packets an enabled monitor's filters were applied to (after the reason filter).
    pub seen: u64,
    /// Events written into the ring buffer.
    pub emitted: u64,
    /// Events lost because the ring buffer was full.
    pub lost: u64,
}

/// Reads the monitor counters from the pins.
pub fn datapath_stats(pins: &PinDir) -> Result<MonitorStats> {
    let stats: PerCpuArray<MapData, u64> = open(pins, map_names::MONITOR_STATS)?;
    let sum = |slot: u32| -> Result<u64> {
        Ok(stats
            .get(&slot, 0)
            .with_context(|| format!("reading {}", map_names::MONITOR_STATS))?
            .iter()
            .sum())
    };
    Ok(MonitorStats {
        seen: sum(STAT_SEEN)?,
        emitted: sum(STAT_EMITTED)?,
        lost: sum(STAT_LOST)?,
    })
}

/// The configuration the datapath sees for `args`, for process `pid`.
pub fn config_for(args: &MonitorArgs, pid: u32) -> MonitorConfig {
    let (family, addr) = match args.ip {
        None => (0, [0; 16]),
        Some(IpAddr::V4(a)) => {
            let mut b = [0; 16];
            b[..4].copy_from_slice(&a.octets());
            (u32::from(FAMILY_V4), b)
        }
        Some(IpAddr::V6(a)) => (u32::from(FAMILY_V6), a.octets()),
    };
    MonitorConfig {
        enabled: 1,
        sample: args.sample.max(1),
        reason: args
            .reason
            .map_or(MONITOR_ANY_REASON, |r| u32::from(r as u8)),
        family,
        addr,
        pid,
        pad: 0,
    }
}

fn process_alive(pid: u32) -> bool {
    pid != 0 && std::path::Path::new(&format!("/proc/{pid}")).exists()
}

fn open_config(pins: &PinDir) -> Result<Array<MapData, MonitorConfig>> {
    if !pins.map_path(map_names::MONITOR_CONFIG).exists() {
        if pins.has_maps() || pins.map_path(map_names::COUNTERS).exists() {
            bail!(
                "the datapath pinned under {} predates the monitor; restart `xdp-ctl run` (or \
                 detach and attach again) to load a datapath that has it",
                pins.root().display()
            );
        }
        return Err(crate::maps::nothing_attached(pins));
    }
    open(pins, map_names::MONITOR_CONFIG)
}

/// Zeroes a monitor configuration left behind by a process that is gone (SIGKILL), so that the
/// datapath stops emitting into a ring buffer nobody reads. Returns true if it reset one.
pub fn reset_stale(pins: &PinDir) -> Result<bool> {
    let mut cfg = open_config(pins)?;
    let cur = cfg
        .get(&0, 0)
        .context("reading the monitor configuration")?;
    if cur.enabled == 0 || process_alive(cur.pid) {
        return Ok(false);
    }
    cfg.set(0, MonitorConfig::default(), 0)
        .context("resetting the monitor configuration")?;
    Ok(true)
}

/// Zeroes the configuration when the monitor ends, whatever the way (error paths included).
struct Enabled {
    cfg: Array<MapData, MonitorConfig>,
    pid: u32,
}

impl Drop for Enabled {
    fn drop(&mut self) {
        // Only our own: never disable a monitor that replaced a stale us.
        if self.cfg.get(&0, 0).is_ok_and(|c| c.pid == self.pid) {
            if let Err(e) = self.cfg.set(0, MonitorConfig::default(), 0) {
                eprintln!("xdp-ctl: error: resetting the monitor configuration: {e}");
            }
        }
    }
}

/// Runs the monitor until a signal, `--count` events, or a closed stdout. Returns the number
/// of events shown.
pub fn run(pins: &PinDir, args: &MonitorArgs, json: bool) -> Result<u64> {
    pins.check_bpffs()?;
    let mut cfg = open_config(pins)?;
    let pid = std::process::id();
    let lock = pins.lock()?;
    let cur = cfg
        .get(&0, 0)
        .context("reading the monitor configuration")?;
    if cur.enabled != 0 && cur.pid != pid && process_alive(cur.pid) {
        bail!(
            "another monitor (pid {}) is running; the ring buffer has one reader",
            cur.pid
        );
    }
    let mut ring: RingBuf<MapData> = open(pins, map_names::MONITOR_EVENTS)?;
    // Events a previous (killed) monitor left unread are not ours to show.
    while ring.next().is_some() {}
    let before = datapath_stats(pins)?;
    cfg.set(0, config_for(args, pid), 0)
        .context("enabling the monitor")?;
    let guard = Enabled { cfg, pid };
    drop(lock);
    let banner = format!(
        "xdp-ctl monitor: listening (one in {} packets{}{}); Ctrl-C to stop",
        args.sample,
        args.ip
            .map_or_else(String::new, |ip| format!(", from or to {ip}")),
        args.reason
            .map_or_else(String::new, |r| format!(", reason {}", r.name()))
    );

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let shown = rt.block_on(read_events(ring, args.count, json, &banner))?;
    drop(guard);
    let after = datapath_stats(pins).unwrap_or(before);
    eprintln!(
        "xdp-ctl monitor: {shown} events shown; datapath: {} emitted, {} lost (ring buffer full)",
        after.emitted.saturating_sub(before.emitted),
        after.lost.saturating_sub(before.lost)
    );
    Ok(shown)
}

/// How often the reader looks at the ring buffer without being woken: the datapath wakes it
/// only once `WAKEUP_BYTES` wait (see xdp-ebpf/src/monitor.rs), so a trickle of events is
/// shown within this delay.
const POLL: std::time::Duration = std::time::Duration::from_millis(50);

/// Writes events to stdout; counts them.
struct Printer {
    names: Names,
    shown: u64,
    count: Option<u64>,
    json: bool,
}

impl Printer {
    /// Prints every event waiting in `ring`. Returns true when the monitor should stop
    /// (`--count` reached, or stdout closed: its reader went away, a normal way to stop).
    fn drain(&mut self, ring: &mut RingBuf<MapData>) -> bool {
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        while let Some(item) = ring.next() {
            let Some(ev) = parse(&item) else { continue };
            drop(item);
            let line = if self.json {
                to_json(&ev, &mut self.names).to_string()
            } else {
                to_text(&ev, &mut self.names)
            };
            if writeln!(out, "{line}").is_err() {
                return true;
            }
            self.shown += 1;
            if self.count.is_some_and(|n| self.shown >= n) {
                let _ = out.flush();
                return true;
            }
        }
        out.flush().is_err()
    }
}

async fn read_events(
    ring: RingBuf<MapData>,
    count: Option<u64>,
    json: bool,
    banner: &str,
) -> Result<u64> {
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    // Said only once Ctrl-C and SIGTERM are handled: a signal right after it stops cleanly.
    eprintln!("{banner}");
    // SAFETY: the ring buffer's fd is owned by `ring`, which the AsyncFd owns: it stays open
    // for as long as it is registered.
    let mut fd = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("polling the ring buffer: {e}"))?;
    let mut p = Printer {
        names: Names::default(),
        shown: 0,
        count,
        json,
    };
    let mut tick = tokio::time::interval(POLL);
    loop {
        tokio::select! {
            r = fd.readable_mut() => {
                let mut guard = r.context("polling the ring buffer")?;
                if p.drain(guard.get_inner_mut()) {
                    break;
                }
                guard.clear_ready();
            }
            _ = tick.tick() => {
                if p.drain(fd.get_mut()) {
                    break;
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    // Whatever arrived before the stop is still shown (unless --count is reached).
    if p.count.is_none_or(|n| p.shown < n) {
        p.drain(fd.get_mut());
    }
    Ok(p.shown)
}

/// An event from ring-buffer bytes (`None` if the record is short, which a matching datapath
/// never writes).
pub fn parse(bytes: &[u8]) -> Option<MonitorEvent> {
    if bytes.len() < size_of::<MonitorEvent>() {
        return None;
    }
    // SAFETY: `MonitorEvent` is plain old data and the bytes are long enough; unaligned read.
    Some(unsafe { bytes.as_ptr().cast::<MonitorEvent>().read_unaligned() })
}

/// Interface names by index, asked once each.
#[derive(Default)]
pub struct Names {
    rtnl: Option<Rtnl>,
    cache: HashMap<u32, String>,
}

impl Names {
    fn name(&mut self, ifindex: u32) -> String {
        if ifindex == 0 {
            return "-".to_string();
        }
        if let Some(n) = self.cache.get(&ifindex) {
            return n.clone();
        }
        if self.rtnl.is_none() {
            self.rtnl = Rtnl::new().ok();
        }
        let name = self
            .rtnl
            .as_mut()
            .and_then(|r| r.link_by_index(ifindex).ok().flatten())
            .map_or_else(|| format!("if{ifindex}"), |l| l.name);
        self.cache.insert(ifindex, name.clone());
        name
    }
}

fn addr(family: u8, b: &[u8; 16]) -> Option<IpAddr> {
    match family {
        FAMILY_V4 => Some(IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))),
        FAMILY_V6 => Some(IpAddr::V6(Ipv6Addr::from(*b))),
        _ => None,
    }
}

fn proto_name(p: u8) -> String {
    match p {
        IPPROTO_TCP => "tcp".into(),
        IPPROTO_UDP => "udp".into(),
        IPPROTO_ICMP => "icmp".into(),
        IPPROTO_ICMPV6 => "icmpv6".into(),
        p => format!("proto-{p}"),
    }
}

fn reason_name(r: u8) -> String {
    Reason::ALL
        .get(usize::from(r))
        .map_or_else(|| format!("reason-{r}"), |r| r.name().to_string())
}

fn hook_name(h: u8) -> &'static str {
    match h {
        HOOK_XDP => "xdp",
        HOOK_TC => "tc",
        HOOK_XDP_UPLINK => "xdp-uplink",
        HOOK_TC_UPLINK => "tc-uplink",
        _ => "?",
    }
}

fn action_name(a: u8) -> &'static str {
    if a == ACTION_REDIRECT {
        "redirect"
    } else {
        "pass"
    }
}

/// TCP flags as tcpdump writes them: S, F, R, P, U, and "." for ACK (S., P., F., .).
fn tcp_flags(f: u8) -> String {
    let mut s = String::new();
    for (bit, c) in [
        (0x02, 'S'),
        (0x01, 'F'),
        (0x04, 'R'),
        (0x08, 'P'),
        (0x20, 'U'),
        (0x10, '.'),
    ] {
        if f & bit != 0 {
            s.push(c);
        }
    }
    s
}

fn endpoint_text(family: u8, a: &[u8; 16], port: [u8; 2], proto: u8) -> String {
    let Some(ip) = addr(family, a) else {
        return "-".to_string();
    };
    let port = u16::from_be_bytes(port);
    match (proto, ip) {
        (IPPROTO_TCP | IPPROTO_UDP, IpAddr::V4(_)) => format!("{ip}:{port}"),
        (IPPROTO_TCP | IPPROTO_UDP, IpAddr::V6(_)) => format!("[{ip}]:{port}"),
        _ => ip.to_string(),
    }
}

/// One line of text per event.
pub fn to_text(ev: &MonitorEvent, names: &mut Names) -> String {
    let mut line = format!(
        "{}.{:06} {:<3} {:<8} {:<18} {:<6} {} > {}",
        ev.time_ns / 1_000_000_000,
        ev.time_ns % 1_000_000_000 / 1000,
        hook_name(ev.hook),
        action_name(ev.action),
        reason_name(ev.reason),
        if ev.family == 0 {
            "-".to_string()
        } else {
            proto_name(ev.proto)
        },
        endpoint_text(ev.family, &ev.src, ev.sport, ev.proto),
        endpoint_text(ev.family, &ev.dst, ev.dport, ev.proto),
    );
    if ev.proto == IPPROTO_TCP && ev.family != 0 {
        let _ = write!(line, " [{}]", tcp_flags(ev.tcp_flags));
    }
    let _ = write!(line, " len {} in {}", ev.len, names.name(ev.ingress));
    if ev.egress != 0 {
        let _ = write!(line, " out {}", names.name(ev.egress));
    }
    line
}

/// One JSON object per event (`--json`).
pub fn to_json(ev: &MonitorEvent, names: &mut Names) -> serde_json::Value {
    let ip = |a: &[u8; 16]| addr(ev.family, a).map(|a| a.to_string());
    let iface = |names: &mut Names, i: u32| {
        (i != 0).then(|| json!({ "ifindex": i, "name": names.name(i) }))
    };
    json!({
        "time_ns": ev.time_ns,
        "hook": hook_name(ev.hook),
        "action": action_name(ev.action),
        "reason": reason_name(ev.reason),
        "family": match ev.family { FAMILY_V4 => Some(4), FAMILY_V6 => Some(6), _ => None },
        "proto": (ev.family != 0).then(|| proto_name(ev.proto)),
        "src": ip(&ev.src),
        "dst": ip(&ev.dst),
        "sport": u16::from_be_bytes(ev.sport),
        "dport": u16::from_be_bytes(ev.dport),
        "tcp_flags": (ev.proto == IPPROTO_TCP && ev.family != 0).then(|| tcp_flags(ev.tcp_flags)),
        "len": ev.len,
        "ingress": iface(names, ev.ingress),
        "egress": iface(names, ev.egress),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev() -> MonitorEvent {
        let mut e = MonitorEvent {
            time_ns: 1_500_000_000,
            ingress: 0,
            egress: 0,
            len: 74,
            sport: 40000u16.to_be_bytes(),
            dport: 80u16.to_be_bytes(),
            family: FAMILY_V4,
            proto: IPPROTO_TCP,
            reason: Reason::Redirected as u8,
            action: ACTION_REDIRECT,
            tcp_flags: 0x02,
            hook: HOOK_TC,
            ..MonitorEvent::default()
        };
        e.src[..4].copy_from_slice(&[10, 244, 0, 1]);
        e.dst[..4].copy_from_slice(&[10, 244, 0, 2]);
        e
    }

    #[test]
    fn text_and_json() {
        let mut names = Names::default();
        let t = to_text(&ev(), &mut names);
        assert!(t.contains("tc  redirect redirected"), "{t}");
        assert!(
            t.contains("tcp    10.244.0.1:40000 > 10.244.0.2:80 [S] len 74"),
            "{t}"
        );
        let j = to_json(&ev(), &mut names);
        assert_eq!(j["src"], "10.244.0.1");
        assert_eq!(j["dport"], 80);
        assert_eq!(j["reason"], "redirected");
        assert_eq!(j["action"], "redirect");
        assert_eq!(j["tcp_flags"], "S");
        assert!(j["egress"].is_null());
    }

    #[test]
    fn flags_like_tcpdump() {
        assert_eq!(tcp_flags(0x02), "S");
        assert_eq!(tcp_flags(0x12), "S.");
        assert_eq!(tcp_flags(0x10), ".");
        assert_eq!(tcp_flags(0x18), "P.");
        assert_eq!(tcp_flags(0x11), "F.");
        assert_eq!(tcp_flags(0x04), "R");
    }

    #[test]
    fn config_and_parse() {
        let args = MonitorArgs {
            sample: 10,
            ip: Some("fd00::2".parse().unwrap()),
            reason: Some(Reason::NoEndpoint),
            count: None,
        };
        let c = config_for(&args, 7);
        assert_eq!(c.enabled, 1);
        assert_eq!(c.sample, 10);
        assert_eq!(c.reason, Reason::NoEndpoint as u32);
        assert_eq!(c.family, u32::from(FAMILY_V6));
        assert_eq!(c.addr[15], 2);
        assert!(reason_arg("nope").unwrap_err().contains("redirected"));
        assert_eq!(reason_arg("flow_not_seen").unwrap(), Reason::FlowNotSeen);
        assert!(parse(&[0u8; 10]).is_none());
        // SAFETY: viewing a POD struct as bytes.
        let e = ev();
        let bytes = unsafe {
            std::slice::from_raw_parts((&raw const e).cast::<u8>(), size_of::<MonitorEvent>())
        };
        assert_eq!(parse(bytes), Some(ev()));
    }
}
