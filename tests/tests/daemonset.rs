//! DaemonSet mode (issue 9): the controller's HTTP endpoints (`/metrics`, `/healthz`,
//! `/readyz`), the packet monitor, and an upgrade (controller A stops, B takes over the pins)
//! under a paced UDP stream, on real namespaces, veths and traffic.
//!
//! The controller runs in the bench's node namespace (`--netns`) and listens on that
//! namespace's loopback (the default `--listen`), so the tests talk to it from a thread in the
//! node namespace. Needs root: `#[ignore]`d, and failing without root (`scripts/test.sh`).

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{IpAddr, TcpStream},
    process::{Child, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

use integration_tests::{
    exec_in, for_each_datapath, in_netns, poll_until, require_root, tcp_echo, Bench, Datapath,
    PinDirLock, UdpStream, XdpCtl,
};
use serde_json::Value;
use xdp_ctl::{monitor::datapath_stats, pin::PinDir};

for_each_datapath!(monitor_shows_a_redirected_flow);

const READY: Duration = Duration::from_secs(10);
const T_OK: Duration = Duration::from_secs(5);
/// The default `--listen` port (`xdp_ctl::http::DEFAULT_LISTEN`).
const PORT: u16 = 9465;

/// GET `path` from 127.0.0.1:`port` in network namespace `ns`: (status code, body).
fn http_get(ns: &str, port: u16, path: &str) -> Result<(u16, String), String> {
    let path = path.to_string();
    in_netns(ns, move || {
        let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").map_err(|e| e.to_string())?;
        let mut resp = String::new();
        s.read_to_string(&mut resp)
            .map_err(|e| format!("read: {e}"))?;
        let code = resp
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("no status line in {resp:?}"))?;
        let body = resp
            .split_once("\r\n\r\n")
            .map_or("", |(_, b)| b)
            .to_string();
        Ok((code, body))
    })
    .join()
    .map_err(|_| "HTTP thread panicked".to_string())?
}

#[track_caller]
fn get_ok(ns: &str, path: &str) -> (u16, String) {
    http_get(ns, PORT, path).unwrap_or_else(|e| panic!("GET {path} in {ns}: {e}"))
}

/// Samples of a Prometheus text exposition: "name{labels}" -> value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

fn metric(m: &BTreeMap<String, f64>, key: &str) -> u64 {
    let v = m
        .get(key)
        .unwrap_or_else(|| panic!("no sample {key} in {m:#?}"));
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "counters are whole, non-negative numbers"
    )]
    let n = *v as u64;
    n
}

#[test]
#[ignore = "needs root: run scripts/test.sh"]
#[expect(
    clippy::too_many_lines,
    reason = "one scenario: not ready, ready, traffic, scrape vs stats, growth"
)]
fn metrics_and_probes_follow_the_controller() {
    require_root!();
    let b = Bench::up(3);
    let ctl = b.xdp_ctl();
    let node = b.node_ns();
    // The pin dir exists before the controller (so its lock can be held).
    ctl.attach_ok(Datapath::Tc, &[&b.host_veth(1)]);

    // Not ready before the first full reconcile: hold the pin dir's lock so it cannot apply it.
    let lock = PinDirLock::acquire(b.pin_dir()).unwrap_or_else(|e| panic!("{e}"));
    let mut c = b.controller(&["--datapath", "tc"]);
    let got = poll_until(READY, || http_get(&node, PORT, "/readyz").ok());
    let (code, body) = got.unwrap_or_else(|| panic!("no answer on /readyz; log:\n{}", c.log()));
    assert_eq!(code, 503, "/readyz before the first reconcile: {body}");
    let (code, body) = get_ok(&node, "/healthz");
    assert_eq!(code, 200, "/healthz while waiting for the lock: {body}");
    let (code, body) = get_ok(&node, "/metrics");
    assert_eq!(code, 200, "/metrics before ready: {body}");
    drop(lock);
    c.wait_ready(READY);
    let ready = poll_until(READY, || (get_ok(&node, "/readyz").0 == 200).then_some(()));
    assert!(ready.is_some(), "/readyz not 200 after the first reconcile");
    assert_eq!(get_ok(&node, "/healthz").0, 200);

    // Real traffic; then the scrape equals `stats`, and grows with more traffic.
    for (from, to) in [(1, 2), (2, 3)] {
        tcp_echo(
            &b.pod_ns(from),
            &b.pod_ns(to),
            b.pod_v4(to).into(),
            64 * 1024,
            T_OK,
        )
        .unwrap_or_else(|e| panic!("pod{from} -> pod{to}: {e}"));
    }
    let stats = ctl.stats();
    let (code, text) = get_ok(&node, "/metrics");
    assert_eq!(code, 200);
    eprintln!("--- /metrics after traffic ---\n{text}--- end ---");
    let m = samples(&text);
    let redirected = stats["redirected"];
    assert!(redirected.0 > 0, "nothing redirected: {stats:?}");
    for (reason, (packets, bytes)) in &stats {
        assert_eq!(
            metric(
                &m,
                &format!("xdp_fastpath_packets_total{{reason=\"{reason}\"}}")
            ),
            *packets,
            "packets of {reason}: /metrics vs stats\n{text}"
        );
        assert_eq!(
            metric(
                &m,
                &format!("xdp_fastpath_bytes_total{{reason=\"{reason}\"}}")
            ),
            *bytes,
            "bytes of {reason}"
        );
    }
    assert_eq!(
        metric(
            &m,
            "xdp_fastpath_endpoints{family=\"ipv4\",meshed=\"true\"}"
        ),
        3
    );
    assert_eq!(
        metric(
            &m,
            "xdp_fastpath_endpoints{family=\"ipv6\",meshed=\"true\"}"
        ),
        3
    );
    assert_eq!(
        metric(
            &m,
            "xdp_fastpath_endpoints{family=\"ipv4\",meshed=\"false\"}"
        ),
        0
    );
    assert_eq!(
        metric(&m, "xdp_fastpath_attached_interfaces{datapath=\"tc\"}"),
        3
    );
    assert_eq!(
        metric(&m, "xdp_fastpath_attached_interfaces{datapath=\"xdp\"}"),
        0
    );
    assert!(metric(&m, "xdp_fastpath_flows") >= 1, "{text}");
    assert!(metric(&m, "xdp_fastpath_reconcile_total{result=\"ok\"}") >= 1);
    assert_eq!(
        metric(&m, "xdp_fastpath_reconcile_total{result=\"error\"}"),
        0
    );
    assert!(metric(&m, "xdp_fastpath_reconcile_duration_seconds_count") >= 1);
    assert_eq!(metric(&m, "xdp_fastpath_drift_repaired_total"), 0);
    let version = format!(
        "xdp_fastpath_build_info{{version=\"{}\"}}",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(metric(&m, &version), 1);
    // No label names a pod or an address.
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        assert!(
            !line.contains("10.244.") && !line.contains("fd00:") && !line.contains(b.prefix()),
            "a per-pod label: {line}"
        );
    }

    tcp_echo(
        &b.pod_ns(3),
        &b.pod_ns(1),
        b.pod_v4(1).into(),
        64 * 1024,
        T_OK,
    )
    .unwrap_or_else(|e| panic!("pod3 -> pod1: {e}"));
    let m2 = samples(&get_ok(&node, "/metrics").1);
    let key = "xdp_fastpath_packets_total{reason=\"redirected\"}";
    assert!(
        metric(&m2, key) > metric(&m, key),
        "redirected packets did not grow: {} then {}",
        metric(&m, key),
        metric(&m2, key)
    );
    assert_eq!(ctl.stats()["redirected"].0, metric(&m2, key));
    assert_eq!(get_ok(&node, "/nope").0, 404);
    c.assert_log_clean();
}

/// `xdp-ctl [--json] monitor ARGS` in the background; its stdout is collected when it ends.
struct Monitor {
    child: Child,
    what: String,
}

impl Monitor {
    #[track_caller]
    fn start(ctl: &XdpCtl, args: &[&str]) -> Monitor {
        let mut full = vec!["--json", "monitor"];
        full.extend_from_slice(args);
        let what = format!("xdp-ctl {}", full.join(" "));
        let mut child = ctl
            .command(&full)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        // Ready once it says it listens (its configuration is then in the map).
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let first = rx.recv_timeout(Duration::from_secs(10));
        match first {
            Ok(l) if l.contains("listening") => {}
            other => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{what} did not start: {other:?}");
            }
        }
        Monitor { child, what }
    }

    /// SIGTERM, then its events (JSON lines).
    #[track_caller]
    fn stop(mut self) -> Vec<Value> {
        let pid = i32::try_from(self.child.id()).expect("pid");
        // SAFETY: our own child, not reaped yet.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let status = self.child.wait().expect("wait");
        let mut out = String::new();
        self.child
            .stdout
            .take()
            .expect("stdout")
            .read_to_string(&mut out)
            .expect("read stdout");
        assert!(status.success(), "{} exited with {status}", self.what);
        out.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
            .collect()
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[expect(
    clippy::too_many_lines,
    reason = "one scenario: no monitor, --ip, --reason, --sample, reset"
)]
fn monitor_shows_a_redirected_flow(dp: Datapath) {
    let b = Bench::up(3);
    let ctl = b.xdp_ctl();
    let mut c = b.controller(&["--datapath", dp.name()]);
    c.wait_ready(READY);
    let pins = PinDir::new(b.pin_dir());
    let (p1, p2, p3) = (b.pod_v4(1), b.pod_v4(2), b.pod_v4(3));

    // No monitor: the datapath emits nothing (and does not even count).
    let before = datapath_stats(&pins).unwrap_or_else(|e| panic!("{e:#}"));
    tcp_echo(&b.pod_ns(2), &b.pod_ns(3), p3.into(), 32 * 1024, T_OK)
        .unwrap_or_else(|e| panic!("{e}"));
    let quiet = datapath_stats(&pins).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(quiet, before, "events with no monitor running");

    // --ip pod1: the pod1 <-> pod2 flow shows, pod2 <-> pod3 does not.
    let m = Monitor::start(&ctl, &["--ip", &p1.to_string()]);
    let t = tcp_echo(&b.pod_ns(1), &b.pod_ns(2), p2.into(), 32 * 1024, T_OK)
        .unwrap_or_else(|e| panic!("{e}"));
    tcp_echo(&b.pod_ns(2), &b.pod_ns(3), p3.into(), 32 * 1024, T_OK)
        .unwrap_or_else(|e| panic!("{e}"));
    thread::sleep(Duration::from_millis(200));
    let events = m.stop();
    let client_port = u64::from(t.client_addr.port());
    let (hv1, hv2) = (b.host_veth(1), b.host_veth(2));
    let forward: Vec<&Value> = events
        .iter()
        .filter(|e| e["proto"] == "tcp" && e["sport"] == client_port)
        .collect();
    let reverse: Vec<&Value> = events
        .iter()
        .filter(|e| e["proto"] == "tcp" && e["dport"] == client_port)
        .collect();
    assert!(
        forward.len() >= 3 && !reverse.is_empty(),
        "too few events of the flow: {events:#?}"
    );
    for e in &forward {
        assert_eq!(e["src"], p1.to_string(), "{e}");
        assert_eq!(e["dst"], p2.to_string(), "{e}");
        assert_eq!(e["hook"], dp.name(), "{e}");
        assert_eq!(e["ingress"]["name"], hv1.as_str(), "{e}");
    }
    assert!(
        forward
            .iter()
            .any(|e| e["tcp_flags"] == "S" && e["reason"] == "redirected"),
        "the SYN was not redirected: {forward:#?}"
    );
    let redirected: Vec<&&Value> = forward
        .iter()
        .filter(|e| e["action"] == "redirect")
        .collect();
    assert!(redirected.len() >= 3, "{forward:#?}");
    for e in redirected {
        assert_eq!(e["reason"], "redirected", "{e}");
        assert_eq!(e["egress"]["name"], hv2.as_str(), "{e}");
    }
    for e in &reverse {
        if e["action"] == "redirect" {
            assert_eq!(e["ingress"]["name"], hv2.as_str(), "{e}");
            assert_eq!(e["egress"]["name"], hv1.as_str(), "{e}");
        }
    }
    let addr = |v: &Value| v.as_str().map(str::to_string);
    for e in &events {
        let p1s = Some(p1.to_string());
        assert!(
            addr(&e["src"]) == p1s || addr(&e["dst"]) == p1s,
            "an event not about pod1 with --ip {p1}: {e}"
        );
    }

    // --reason: only that reason; a packet to an address that is no pod is `no_endpoint`.
    let m = Monitor::start(&ctl, &["--reason", "no_endpoint"]);
    let nowhere: IpAddr = "10.244.200.200".parse().expect("addr");
    let ping_args = [
        "ping",
        "-c",
        "2",
        "-i",
        "0.2",
        "-W",
        "1",
        &nowhere.to_string(),
    ];
    let _ = exec_in(&b.pod_ns(1), &ping_args);
    tcp_echo(&b.pod_ns(1), &b.pod_ns(2), p2.into(), 8 * 1024, T_OK)
        .unwrap_or_else(|e| panic!("{e}"));
    thread::sleep(Duration::from_millis(200));
    let events = m.stop();
    assert!(
        events
            .iter()
            .any(|e| e["dst"] == nowhere.to_string() && e["proto"] == "icmp"),
        "the ping to {nowhere} is not in {events:#?}"
    );
    assert!(
        events.iter().all(|e| e["reason"] == "no_endpoint"),
        "other reasons with --reason no_endpoint: {events:#?}"
    );

    // Sampling: one in a million shows (almost surely) nothing, yet the datapath saw packets.
    let s0 = datapath_stats(&pins).unwrap_or_else(|e| panic!("{e:#}"));
    let m = Monitor::start(&ctl, &["--sample", "1000000"]);
    tcp_echo(&b.pod_ns(1), &b.pod_ns(3), p3.into(), 64 * 1024, T_OK)
        .unwrap_or_else(|e| panic!("{e}"));
    let events = m.stop();
    let s1 = datapath_stats(&pins).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(s1.seen > s0.seen + 10, "{s0:?} -> {s1:?}");
    assert!(
        events.len() <= 1,
        "--sample 1000000 showed {}",
        events.len()
    );

    // The monitor reset its configuration: nothing is emitted after it.
    let after = datapath_stats(&pins).unwrap_or_else(|e| panic!("{e:#}"));
    tcp_echo(&b.pod_ns(1), &b.pod_ns(2), p2.into(), 32 * 1024, T_OK)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        datapath_stats(&pins).unwrap_or_else(|e| panic!("{e:#}")),
        after,
        "events after the monitor exited"
    );
    c.assert_log_clean();
}

#[test]
#[ignore = "needs root: run scripts/test.sh"]
fn upgrade_loses_nothing_and_writes_nothing() {
    require_root!();
    let b = Bench::up(2);
    b.drop_pod_forwarding();
    let ctl = b.xdp_ctl();
    let drops = b.forward_drops();
    let mut a = b.controller(&["--datapath", "tc"]);
    a.wait_ready(READY);
    // Warm the path (the flow rule needs nothing for UDP; neighbours are learnt).
    let stream = UdpStream::start(
        &b.pod_ns(1),
        &b.pod_ns(2),
        b.pod_v4(2).into(),
        Duration::from_millis(1),
        200,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        stream.wait_for_echoes(200, T_OK),
        "the stream does not flow"
    );

    // The rolling update: SIGTERM to A, then B on the same pins (and the same port).
    let (status, took) = a
        .terminate(Duration::from_secs(5))
        .unwrap_or_else(|| panic!("A did not stop on SIGTERM; log:\n{}", a.log()));
    assert!(
        status.success(),
        "A exited with {status}; log:\n{}",
        a.log()
    );
    eprintln!("A stopped in {took:?}");
    let mut second = b.controller(&["--datapath", "tc"]);
    let st = second.wait_ready(READY);
    let echoes = stream.echoes();
    assert!(
        stream.wait_for_echoes(echoes + 300, T_OK),
        "the stream stalled after the upgrade"
    );
    assert_eq!(get_ok(&b.node_ns(), "/readyz").0, 200);
    let report = stream.finish().unwrap_or_else(|e| panic!("{e}"));
    eprintln!("UDP stream across the upgrade: {report}");
    assert!(
        report.lossless(),
        "datagrams lost across the upgrade: {report}"
    );
    assert_eq!(
        st["map_writes"], 0,
        "B wrote to the maps although nothing had changed: {st}"
    );
    let st = ctl.controller_status().expect("controller status");
    assert_eq!(st["map_writes"], 0, "B's writes after a while: {st}");
    assert_eq!(b.forward_drops(), drops, "datagrams took the kernel path");
    second.assert_log_clean();
}
