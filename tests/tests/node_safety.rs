//! Safe on a real node: with the fast path on, Services, DNS, hostPorts, ICMP errors and
//! conntrack keep working, and no flow breaks when the fast path comes or goes (README, "What
//! the fast path skips and what it never touches"). Both datapaths, through
//! [`for_each_datapath!`].
//!
//! The bench's node namespace gets what kube-proxy and the portmap plugin install (see
//! [`kube_proxy`]): nat PREROUTING DNAT for a TCP ClusterIP, a UDP DNS-like ClusterIP, a UDP
//! ClusterIP whose backend port is closed and a hostPort, each to pod 1 (a meshed pod);
//! `KUBE-FORWARD` first in FORWARD with `--ctstate INVALID -j DROP` and
//! `--ctstate RELATED,ESTABLISHED -j ACCEPT`; `nf_conntrack_tcp_be_liberal=0` (the default).
//! Everything is real: the kernel's NAT, conntrack and ICMP, in namespaces the tests create.
//! Needs root: `#[ignore]`d, failing without root.

use std::{
    io::{self, ErrorKind, Read, Write},
    net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use integration_tests::{for_each_datapath, in_netns, pattern, Bench, Datapath, TcpFlow};

for_each_datapath!(
    services_dns_and_host_ports_work_and_pods_are_fast_pathed,
    udp_to_a_closed_service_port_is_refused,
    kernel_born_flow_survives_attach_then_detach,
    fast_path_born_flow_survives_detach_then_attach,
    flow_survives_a_controller_restart_with_detach_on_exit,
    flow_survives_its_pod_leaving_the_mesh,
    flow_survives_leaving_and_rejoining_the_mesh_then_detach,
    udp_to_a_pod_with_a_smaller_mtu_is_not_blackholed,
);

/// The TCP ClusterIP (port 80 -> pod 1:8080).
const WEB_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 80);
/// The DNS-like UDP ClusterIP (port 53 -> pod 1:5353).
const DNS_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// A UDP ClusterIP (port 53) whose backend port (pod 1:5354) has no socket.
const CLOSED_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 11);
/// The node's own address (on its loopback), for the hostPort (30080 -> pod 1:8080).
const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
const WEB_PORT: u16 = 8080;
const DNS_PORT: u16 = 5353;
const CLOSED_PORT: u16 = 5354;
const HOST_PORT: u16 = 30080;

/// Bound for exchanges that must succeed.
const T_OK: Duration = Duration::from_secs(5);
/// How long a long-lived flow must keep moving after each change.
const T_FLOW: Duration = Duration::from_secs(10);

/// Installs kube-proxy's and portmap's rule shapes in the node namespace (see the module doc),
/// all pointing at pod `backend`.
fn kube_proxy(b: &Bench, backend: u32) {
    let be = b.pod_v4(backend);
    let node = |args: &[&str]| {
        b.node_exec(args);
    };
    b.kube_proxy_forward();
    node(&["ip", "addr", "add", &format!("{NODE_IP}/32"), "dev", "lo"]);

    let nat = |args: &[&str]| {
        let mut v = vec!["iptables", "-t", "nat"];
        v.extend_from_slice(args);
        node(&v);
    };
    nat(&["-N", "KUBE-SERVICES"]);
    nat(&["-A", "PREROUTING", "-j", "KUBE-SERVICES"]);
    for (chain, vip, proto, port, target) in [
        ("WEB", WEB_VIP, "tcp", "80", WEB_PORT),
        ("DNS", DNS_VIP, "udp", "53", DNS_PORT),
        ("CLOSED", CLOSED_VIP, "udp", "53", CLOSED_PORT),
    ] {
        let (svc, sep) = (format!("KUBE-SVC-{chain}"), format!("KUBE-SEP-{chain}"));
        nat(&["-N", &svc]);
        nat(&["-N", &sep]);
        nat(&[
            "-A",
            "KUBE-SERVICES",
            "-d",
            &format!("{vip}/32"),
            "-p",
            proto,
            "--dport",
            port,
            "-j",
            &svc,
        ]);
        // One endpoint: kube-proxy's `-m statistic` split reduces to a plain jump.
        nat(&["-A", &svc, "-j", &sep]);
        nat(&[
            "-A",
            &sep,
            "-p",
            proto,
            "-j",
            "DNAT",
            "--to-destination",
            &format!("{be}:{target}"),
        ]);
    }
    // portmap (hostPort): DNAT what is addressed to one of the node's own addresses.
    nat(&["-N", "CNI-HOSTPORT-DNAT"]);
    nat(&[
        "-A",
        "PREROUTING",
        "-m",
        "addrtype",
        "--dst-type",
        "LOCAL",
        "-j",
        "CNI-HOSTPORT-DNAT",
    ]);
    nat(&[
        "-A",
        "CNI-HOSTPORT-DNAT",
        "-p",
        "tcp",
        "--dport",
        &HOST_PORT.to_string(),
        "-j",
        "DNAT",
        "--to-destination",
        &format!("{be}:{WEB_PORT}"),
    ]);
}

/// A FORWARD DROP (after KUBE-FORWARD) for pod-to-pod traffic that was not DNAT'd: the kernel
/// path can deliver Service traffic but no direct pod-to-pod flow; only the fast path can.
fn drop_direct_pod_traffic(b: &Bench) {
    b.node_exec(&[
        "iptables",
        "-A",
        "FORWARD",
        "-s",
        "10.244.0.0/16",
        "-d",
        "10.244.0.0/16",
        "-m",
        "conntrack",
        "!",
        "--ctstate",
        "DNAT",
        "-j",
        "DROP",
    ]);
}

/// Packets that hit [`drop_direct_pod_traffic`]'s rule.
fn direct_drops(b: &Bench) -> u64 {
    b.node_exec(&["iptables-save", "-c", "-t", "filter"])
        .lines()
        .filter(|l| l.contains("-A FORWARD") && l.contains("DNAT") && l.contains("-j DROP"))
        .filter_map(|l| l.strip_prefix('[')?.split(':').next()?.parse::<u64>().ok())
        .sum()
}

/// Echo servers in a pod: TCP on `addr`:8080 (any number of connections, one after another:
/// read to EOF, echo, close) and UDP on `addr`:5353 (each datagram back to its sender).
struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Result<(), String>>>,
}

impl Servers {
    fn start(ns: &str, addr: Ipv4Addr) -> Servers {
        let stop = Arc::new(AtomicBool::new(false));
        let (tcp_ready, tcp_up) = std::sync::mpsc::channel();
        let s = stop.clone();
        let tcp = in_netns(ns, move || {
            let l = TcpListener::bind((addr, WEB_PORT)).map_err(|e| format!("bind tcp: {e}"))?;
            l.set_nonblocking(true).map_err(|e| e.to_string())?;
            let _ = tcp_ready.send(());
            while !s.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut c, _)) => {
                        c.set_nonblocking(false).map_err(|e| e.to_string())?;
                        c.set_read_timeout(Some(T_OK)).map_err(|e| e.to_string())?;
                        let mut buf = Vec::new();
                        // A client that fails mid-way is the client's failure to report.
                        if c.read_to_end(&mut buf).is_ok() {
                            let _ = c.write_all(&buf);
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(e) => return Err(format!("accept: {e}")),
                }
            }
            Ok(())
        });
        let (udp_ready, udp_up) = std::sync::mpsc::channel();
        let s = stop.clone();
        let udp = in_netns(ns, move || {
            let u = UdpSocket::bind((addr, DNS_PORT)).map_err(|e| format!("bind udp: {e}"))?;
            u.set_read_timeout(Some(Duration::from_millis(50)))
                .map_err(|e| e.to_string())?;
            let _ = udp_ready.send(());
            let mut buf = [0u8; 2048];
            while !s.load(Ordering::Relaxed) {
                match u.recv_from(&mut buf) {
                    Ok((n, from)) => {
                        u.send_to(&buf[..n], from)
                            .map_err(|e| format!("udp reply: {e}"))?;
                    }
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                    Err(e) => return Err(format!("udp recv: {e}")),
                }
            }
            Ok(())
        });
        for (what, up) in [("tcp", tcp_up), ("udp", udp_up)] {
            up.recv_timeout(T_OK)
                .unwrap_or_else(|_| panic!("the {what} server in {ns} did not start"));
        }
        Servers {
            stop,
            threads: vec![tcp, udp],
        }
    }

    fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            match t.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => panic!("server: {e}"),
                Err(p) => std::panic::resume_unwind(p),
            }
        }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Runs `f` in namespace `ns` and returns its result (a panic becomes an error).
fn in_ns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    in_netns(ns, f)
        .join()
        .unwrap_or_else(|_| Err("the client thread panicked".into()))
}

/// TCP from pod namespace `ns` to `to`: sends a payload, half-closes, and checks the echo.
fn tcp_exchange(ns: &str, to: SocketAddr, seed: u64) -> Result<(), String> {
    in_ns(ns, move || {
        let payload = pattern(20_000, seed);
        let mut s =
            TcpStream::connect_timeout(&to, T_OK).map_err(|e| format!("connect {to}: {e}"))?;
        s.set_read_timeout(Some(T_OK)).map_err(|e| e.to_string())?;
        s.write_all(&payload)
            .map_err(|e| format!("write to {to}: {e}"))?;
        s.shutdown(Shutdown::Write).map_err(|e| e.to_string())?;
        let mut back = Vec::new();
        s.read_to_end(&mut back)
            .map_err(|e| format!("read from {to}: {e}"))?;
        if back != payload {
            return Err(format!(
                "{to}: echo differs ({} of {} bytes back)",
                back.len(),
                payload.len()
            ));
        }
        Ok(())
    })
}

/// UDP as a resolver does it: a connected socket (so a reply from any other source than `to`
/// is dropped by the socket), one query, one checked answer.
fn udp_query(ns: &str, to: SocketAddr, seed: u64) -> Result<io::Result<()>, String> {
    in_ns(ns, move || {
        let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).map_err(|e| e.to_string())?;
        s.connect(to).map_err(|e| format!("connect {to}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))
            .map_err(|e| e.to_string())?;
        let query = pattern(200, seed);
        s.send(&query).map_err(|e| format!("send to {to}: {e}"))?;
        let mut buf = [0u8; 2048];
        Ok(match s.recv(&mut buf) {
            Ok(n) if buf[..n] == query[..] => Ok(()),
            Ok(n) => Err(io::Error::other(format!(
                "{to}: a different answer of {n} bytes"
            ))),
            Err(e) => Err(e),
        })
    })
}

fn counter(b: &Bench, reason: &str) -> u64 {
    b.stats(reason).0
}

fn services_dns_and_host_ports_work_and_pods_are_fast_pathed(dp: Datapath) {
    let b = Bench::up(3);
    kube_proxy(&b, 1);
    b.attach_and_mesh(dp, &[1, 2, 3]);
    drop_direct_pod_traffic(&b);
    let servers = Servers::start(&b.pod_ns(1), b.pod_v4(1));
    let before = b.all_stats();
    let backend = IpAddr::V4(b.pod_v4(1));
    let mut seed = 1;
    for client in [2, 3] {
        let ns = b.pod_ns(client);
        for round in 0..3 {
            seed += 1;
            let what = |s: &str| format!("{dp}: pod {client}, round {round}: {s}");
            tcp_exchange(&ns, (WEB_VIP, 80).into(), seed)
                .unwrap_or_else(|e| panic!("{}", what(&format!("TCP ClusterIP: {e}"))));
            udp_query(&ns, (DNS_VIP, 53).into(), seed)
                .unwrap_or_else(|e| panic!("{}", what(&e)))
                .unwrap_or_else(|e| panic!("{}", what(&format!("DNS ClusterIP: {e}"))));
            tcp_exchange(&ns, (NODE_IP, HOST_PORT).into(), seed)
                .unwrap_or_else(|e| panic!("{}", what(&format!("hostPort: {e}"))));
            // The same backend, addressed directly: fast-pathed (the DROP stops the kernel
            // path), while the Service exchanges above keep working.
            tcp_exchange(&ns, (backend, WEB_PORT).into(), seed)
                .unwrap_or_else(|e| panic!("{}", what(&format!("direct TCP: {e}"))));
            udp_query(&ns, (backend, DNS_PORT).into(), seed)
                .unwrap_or_else(|e| panic!("{}", what(&e)))
                .unwrap_or_else(|e| panic!("{}", what(&format!("direct UDP: {e}"))));
        }
    }
    servers.stop();
    let after = b.all_stats();
    let grew = |r: &str| after[r].0 - before[r].0;
    eprintln!(
        "{dp}: redirected +{}, flow_not_seen +{}, udp_kernel_socket +{}, no_endpoint +{}",
        grew("redirected"),
        grew("flow_not_seen"),
        grew("udp_kernel_socket"),
        grew("no_endpoint")
    );
    assert_eq!(
        direct_drops(&b),
        0,
        "{dp}: a direct pod-to-pod packet met the FORWARD DROP"
    );
    // 6 direct TCP connections (each at least SYN, ACK, data, FIN both ways) and 6 UDP
    // exchanges (2 datagrams each).
    assert!(
        grew("redirected") >= 6 * 8 + 6 * 2,
        "{dp}: too few redirected: {after:?}"
    );
    // Each translated TCP connection's SYN-ACK (12 of them) met the flow rule; each DNS answer
    // (6) went to a socket on the kernel path.
    assert!(
        grew("flow_not_seen") >= 12,
        "{dp}: translated replies not held back: {after:?}"
    );
    assert!(
        grew("udp_kernel_socket") >= 6,
        "{dp}: DNS answers not held back: {after:?}"
    );
}

fn udp_to_a_closed_service_port_is_refused(dp: Datapath) {
    let b = Bench::up(2);
    kube_proxy(&b, 1);
    b.attach_and_mesh(dp, &[1, 2]);
    let before = counter(&b, "icmp_error");
    // The query is DNAT'd to pod 1's closed port; pod 1 answers with an ICMP port unreachable,
    // which needs the kernel's reverse NAT (conntrack RELATED) to reach the client's socket.
    let got =
        udp_query(&b.pod_ns(2), (CLOSED_VIP, 53).into(), 7).unwrap_or_else(|e| panic!("{dp}: {e}"));
    match got {
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => {}
        other => panic!("{dp}: expected ECONNREFUSED from the closed service port, got {other:?}"),
    }
    assert!(
        counter(&b, "icmp_error") > before,
        "{dp}: the ICMP error did not meet the datapath"
    );
}

// ---------------------------------------------------------------------------------------------
// Hitless: a long TCP flow, every byte checked, through changes of path, with kube-proxy's
// INVALID drop and nf_conntrack_tcp_be_liberal=0 in place. Each phase carries far more than a
// TCP window, so a conntrack entry that missed a phase's segments would see the next one out of
// window.

/// 32 KiB every 2 ms: about 16 MB/s each way.
const CHUNK: usize = 32 * 1024;
const INTERVAL: Duration = Duration::from_millis(2);

/// A flow from pod 2 to pod 1.
fn start_flow(b: &Bench) -> TcpFlow {
    TcpFlow::start(
        &b.pod_ns(2),
        &b.pod_ns(1),
        b.pod_v4(1).into(),
        CHUNK,
        INTERVAL,
        T_FLOW,
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

fn detach(b: &Bench) {
    b.xdp_ctl().run_ok(&["detach", "--all"]);
}

fn kernel_born_flow_survives_attach_then_detach(dp: Datapath) {
    let b = Bench::up(2);
    kube_proxy(&b, 1);
    let flow = start_flow(&b);
    flow.phase(T_FLOW, "on the kernel path");
    b.attach_and_mesh(dp, &[1, 2]);
    let (redirected, not_seen) = (counter(&b, "redirected"), counter(&b, "flow_not_seen"));
    flow.phase(T_FLOW, "once the fast path was attached");
    let attached = (counter(&b, "redirected"), counter(&b, "flow_not_seen"));
    // Had the fast path carried the flow, its conntrack entry would now be stale, and kube-
    // proxy's INVALID drop would stop the flow here.
    detach(&b);
    flow.phase(T_FLOW, "after the detach");
    flow.finish_complete(&dp.to_string());
    assert!(
        attached.1 > not_seen,
        "{dp}: the kernel-born flow's segments did not meet the flow rule"
    );
    assert_eq!(
        attached.0, redirected,
        "{dp}: a kernel-born flow took the fast path"
    );
}

fn fast_path_born_flow_survives_detach_then_attach(dp: Datapath) {
    let b = Bench::up(2);
    kube_proxy(&b, 1);
    b.attach_and_mesh(dp, &[1, 2]);
    let flow = start_flow(&b);
    flow.phase(T_FLOW, "on the fast path");
    assert!(
        counter(&b, "redirected") > 0,
        "{dp}: the flow was not fast-pathed"
    );
    detach(&b);
    flow.phase(T_FLOW, "after the detach");
    b.attach_and_mesh(dp, &[1, 2]);
    flow.phase(T_FLOW, "after attaching again");
    detach(&b);
    flow.phase(T_FLOW, "after the second detach");
    flow.finish_complete(&dp.to_string());
}

fn flow_survives_a_controller_restart_with_detach_on_exit(dp: Datapath) {
    let b = Bench::up(2);
    kube_proxy(&b, 1);
    // Bench::controller meshes every pod (by CIDR).
    let args = ["--datapath", dp.name(), "--detach-on-exit"];
    let mut first = b.controller(&args);
    first.wait_ready(T_FLOW);
    let flow = start_flow(&b);
    flow.phase(T_FLOW, "on the fast path");
    assert!(
        counter(&b, "redirected") > 0,
        "{dp}: the flow was not fast-pathed"
    );
    let exited = first.terminate(T_FLOW);
    assert!(
        exited.is_some(),
        "{dp}: the controller did not stop on SIGTERM"
    );
    flow.phase(T_FLOW, "after the controller detached on exit");
    let mut second = b.controller(&args);
    second.wait_ready(T_FLOW);
    flow.phase(T_FLOW, "under the restarted controller");
    flow.finish_complete(&dp.to_string());
    second.assert_log_clean();
}

/// A flow born on the fast path between meshed pods 2 -> 1; then pod 1 leaves the mesh, and the
/// flow must go on through the kernel path. Returns the bench and the running flow.
fn fast_path_flow_whose_pod_leaves_the_mesh(dp: Datapath) -> (Bench, TcpFlow) {
    let b = Bench::up(2);
    kube_proxy(&b, 1);
    b.attach_and_mesh(dp, &[1, 2]);
    let flow = start_flow(&b);
    flow.phase(T_FLOW, "on the fast path");
    b.add_endpoint(1, false);
    let not_meshed = counter(&b, "not_meshed");
    flow.phase(T_FLOW, "after pod 1 left the mesh");
    assert!(
        counter(&b, "not_meshed") > not_meshed,
        "{dp}: the flow kept the fast path"
    );
    (b, flow)
}

fn flow_survives_its_pod_leaving_the_mesh(dp: Datapath) {
    let (_b, flow) = fast_path_flow_whose_pod_leaves_the_mesh(dp);
    flow.finish_complete(&dp.to_string());
}

fn flow_survives_leaving_and_rejoining_the_mesh_then_detach(dp: Datapath) {
    let (b, flow) = fast_path_flow_whose_pod_leaves_the_mesh(dp);
    b.add_endpoint(1, true);
    let redirected = counter(&b, "redirected");
    flow.phase(T_FLOW, "after pod 1 rejoined the mesh");
    assert!(
        counter(&b, "redirected") > redirected,
        "{dp}: the flow, born on the fast path, did not take it again"
    );
    detach(&b);
    flow.phase(T_FLOW, "after the detach");
    flow.finish_complete(&dp.to_string());
}

// ---------------------------------------------------------------------------------------------
// MTU: pods of one node can differ in MTU.

/// Pod 2's veth (both ends) gets MTU 1280 while pod 1 keeps 1500; pod 1 sends 1400-byte UDP
/// datagrams (DF set, as Linux sends UDP by default) to pod 2's echo server. Redirected, the
/// first would be dropped by veth (XDP) or handed over oversize (TC), and no ICMP error would
/// ever teach pod 1 the path MTU: a black hole for XDP. Passed to the kernel (`mtu_exceeded`),
/// it answers "fragmentation needed", pod 1 learns the MTU and fragments, and the fragments and
/// the echoes get through.
fn udp_to_a_pod_with_a_smaller_mtu_is_not_blackholed(dp: Datapath) {
    let b = Bench::up(2);
    b.attach_and_mesh(dp, &[1, 2]);
    b.node_exec(&["ip", "link", "set", &b.host_veth(2), "mtu", "1280"]);
    b.pod_exec(2, &["ip", "link", "set", "eth0", "mtu", "1280"]);
    let servers = Servers::start(&b.pod_ns(2), b.pod_v4(2));
    let before = counter(&b, "mtu_exceeded");
    let to: SocketAddr = (b.pod_v4(2), DNS_PORT).into();
    let echoed = in_ns(&b.pod_ns(1), move || {
        let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).map_err(|e| e.to_string())?;
        s.connect(to).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .map_err(|e| e.to_string())?;
        let datagram = pattern(1400, 99);
        let mut buf = [0u8; 2048];
        for attempt in 1..=20 {
            // An error here is the ICMP "fragmentation needed" reported on the socket.
            if s.send(&datagram).is_err() {
                continue;
            }
            if let Ok(n) = s.recv(&mut buf) {
                if buf[..n] == datagram[..] {
                    return Ok(attempt);
                }
            }
        }
        Err("no 1400-byte datagram came back in 20 attempts".to_string())
    });
    servers.stop();
    let attempts = echoed.unwrap_or_else(|e| panic!("{dp}: {e}"));
    eprintln!("{dp}: echoed after {attempts} attempt(s)");
    assert!(
        counter(&b, "mtu_exceeded") > before,
        "{dp}: the oversize datagram was not passed to the kernel as mtu_exceeded"
    );
}
