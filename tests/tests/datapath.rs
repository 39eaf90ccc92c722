//! The fast path on real namespaces, veths and traffic (DESIGN.md section 6, item 3), for both
//! datapaths: every scenario is a function of [`Datapath`], and [`for_each_datapath!`] turns it
//! into the tests `xdp::NAME` and `tc::NAME`. Switching between the datapaths under traffic and
//! the CLI's input checks are tested once.
//!
//! Every test builds its own bench (`scripts/bench-netns.sh`, unique prefix and pin dir, torn
//! down on drop) and drives the `xdp-ctl` binary (`$XDP_CTL_BIN`, else `target/<profile>/xdp-ctl`:
//! build it first with `cargo build -p xdp-ctl`). Redirection is proven at the receiver: the
//! node's FORWARD chain DROPs pod-to-pod traffic, so only the fast path can deliver it, and
//! delivered payloads are checked byte for byte. Needs root: `#[ignore]`d, failing without root.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use integration_tests::{
    assert_clean_failure, for_each_datapath, frame, require_root, send_frame, tcp_echo, udp_echo,
    Bench, Datapath, UdpSink, UdpStream, XdpCtl,
};
use serde_json::Value;

for_each_datapath!(
    ipv4_tcp_udp_bypass_forward_drop_only_with_fast_path,
    ipv6_tcp_udp_bypass_forward_drop_only_with_fast_path,
    not_meshed_pods_meet_netfilter,
    spoofed_sources_meet_netfilter,
    ttl_one_goes_to_the_kernel,
    broadcast_arp_ndp_multicast_go_to_the_kernel,
    cli_attach_is_all_or_nothing,
    cli_detach_restores_pods_and_removes_everything,
    jumbo_mtu_pods_are_fast_pathed,
);

/// Bound for transfers that must succeed.
const T_OK: Duration = Duration::from_secs(5);
/// Bound for transfers that must fail (a blocked path fails within this).
const T_BLOCKED: Duration = Duration::from_secs(2);
/// How long to wait for a crafted frame that must not arrive.
const T_ABSENT: Duration = Duration::from_millis(700);
const TCP_BYTES: usize = 256 * 1024;
const UDP_COUNT: u32 = 20;
const UDP_SIZE: usize = 1000;

/// The DROP-rule hit count of one address family from `Bench::forward_drops`.
fn family_drops((v4, v6_hits): (u64, u64), v6: bool) -> u64 {
    if v6 {
        v6_hits
    } else {
        v4
    }
}

fn family(v6: bool) -> &'static str {
    if v6 {
        "IPv6"
    } else {
        "IPv4"
    }
}

/// Deltas of every counter between two `stats` snapshots (packets).
fn delta(before: &BTreeMap<String, (u64, u64)>, after: &BTreeMap<String, (u64, u64)>) -> String {
    after
        .iter()
        .filter_map(|(k, &(p, _))| {
            let d = p - before.get(k).map_or(0, |v| v.0);
            (d > 0).then(|| format!("{k}+{d}"))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn grew(
    before: &BTreeMap<String, (u64, u64)>,
    after: &BTreeMap<String, (u64, u64)>,
    reason: &str,
) -> u64 {
    let get = |m: &BTreeMap<String, (u64, u64)>| {
        m.get(reason)
            .unwrap_or_else(|| panic!("xdp-ctl stats has no reason {reason:?}"))
            .0
    };
    get(after) - get(before)
}

/// TCP and UDP between pod1 and pod2 must not get through (the DROP rule is in force and the
/// fast path is not there).
fn assert_blocked(b: &Bench, v6: bool, when: &str) {
    let (p1, p2) = (b.pod_ns(1), b.pod_ns(2));
    let dst = b.pod_addr(2, v6);
    // No wall-clock bound: the helpers give up after T_BLOCKED; how fast they do is not the point.
    let tcp = tcp_echo(&p1, &p2, dst, 1000, T_BLOCKED);
    assert!(
        tcp.is_err(),
        "{when}: {} TCP got through the FORWARD DROP rule: {tcp:?}",
        family(v6)
    );
    let udp = udp_echo(&p1, &p2, dst, 3, 100, T_BLOCKED);
    assert!(
        udp.is_err(),
        "{when}: {} UDP got through the FORWARD DROP rule: {udp:?}",
        family(v6)
    );
}

fn fast_path_bypasses_forward_drop(dp: Datapath, v6: bool) {
    let b = Bench::up(2);
    let fam = format!("{dp} {}", family(v6));
    let (p1, p2) = (b.pod_ns(1), b.pod_ns(2));
    let (src, dst) = (b.pod_addr(1, v6), b.pod_addr(2, v6));

    // The kernel path works, so the bench is sound...
    udp_echo(&p1, &p2, dst, 3, 100, T_OK)
        .unwrap_or_else(|e| panic!("{fam} kernel path broken before any DROP rule: {e}"));
    // ...until the node's FORWARD chain drops pod traffic.
    b.drop_pod_forwarding();
    assert_blocked(&b, v6, "before attach");
    let drops = b.forward_drops();
    assert!(
        if v6 { drops.1 } else { drops.0 } > 0,
        "{fam} traffic was blocked, but not by the DROP rule (counters {drops:?})"
    );

    b.attach_and_mesh(dp, &[1, 2]);
    let before = b.all_stats();
    let drops_before = b.forward_drops();

    // On failure, the counters say where the packets went instead.
    let failed = |what: &str, e: String| -> ! {
        panic!(
            "{fam} {what} over the fast path: {e} (counters: {})",
            delta(&before, &b.all_stats())
        )
    };
    let t = tcp_echo(&p1, &p2, dst, TCP_BYTES, T_OK).unwrap_or_else(|e| failed("TCP", e));
    assert_eq!(
        t.client_addr.ip(),
        src,
        "server saw a different client address"
    );
    eprintln!("{fam} TCP: {} bytes each way in {:?}", t.bytes, t.elapsed);
    let u = udp_echo(&p1, &p2, dst, UDP_COUNT, UDP_SIZE, T_OK).unwrap_or_else(|e| failed("UDP", e));
    assert_eq!(
        u.client_addr.ip(),
        src,
        "server saw a different client address"
    );
    // And the other direction, pod2 as the client.
    tcp_echo(&p2, &p1, src, 4096, T_OK).unwrap_or_else(|e| failed("TCP pod2 -> pod1", e));

    let after = b.all_stats();
    let redirected = grew(&before, &after, "redirected");
    // At least every UDP datagram and its echo, plus the TCP segments.
    assert!(
        redirected >= 2 * u64::from(UDP_COUNT) + 10,
        "{fam}: only {redirected} packets redirected (counters: {})",
        delta(&before, &after)
    );
    // Every payload byte each way went through the fast path (plus headers).
    let redirected_bytes = after["redirected"].1 - before["redirected"].1;
    let payload = 2 * (TCP_BYTES + 4096) + 2 * UDP_COUNT as usize * UDP_SIZE;
    assert!(
        redirected_bytes >= payload as u64,
        "{fam}: {redirected_bytes} bytes redirected, less than the {payload} payload bytes \
         (counters: {})",
        delta(&before, &after)
    );
    // With TC the skb keeps its GSO size: TCP may pass as segments larger than the MTU.
    eprintln!(
        "{fam}: {redirected} packets, {redirected_bytes} bytes redirected ({} bytes per packet)",
        redirected_bytes / redirected.max(1)
    );
    assert_eq!(
        b.forward_drops(),
        drops_before,
        "{fam}: pod traffic reached the FORWARD chain while fast-pathed (counters: {})",
        delta(&before, &after)
    );

    b.xdp_ctl().run_ok(&["detach", "--all"]);
    assert_blocked(&b, v6, "after detach");
}

fn ipv4_tcp_udp_bypass_forward_drop_only_with_fast_path(dp: Datapath) {
    fast_path_bypasses_forward_drop(dp, false);
}

fn ipv6_tcp_udp_bypass_forward_drop_only_with_fast_path(dp: Datapath) {
    fast_path_bypasses_forward_drop(dp, true);
}

/// Sends a UDP frame from pod `from` (out of its eth0, to its host veth's MAC) with the given
/// source address, to pod `to`'s sink; returns whether it arrived (and from where).
/// Pods with MTU 9000. XDP only attaches to such a veth because the program is multi-buffer
/// capable (`xdp.frags`): without it the kernel refuses with ERANGE. 8000-byte datagrams are
/// single frames larger than a page, i.e. multi-buffer XDP frames.
fn jumbo_mtu_pods_are_fast_pathed(dp: Datapath) {
    const MTU: &str = "9000";
    const JUMBO: usize = 8000;
    let b = Bench::up(2);
    for i in 1..=2 {
        b.pod_exec(i, &["ip", "link", "set", "eth0", "mtu", MTU]);
        b.node_exec(&["ip", "link", "set", &b.host_veth(i), "mtu", MTU]);
    }
    b.drop_pod_forwarding();
    b.attach_and_mesh(dp, &[1, 2]);
    let (p1, p2) = (b.pod_ns(1), b.pod_ns(2));
    for v6 in [false, true] {
        let fam = format!("{dp} {} MTU {MTU}", family(v6));
        let before = b.all_stats();
        let drops_before = b.forward_drops();
        let dst = b.pod_addr(2, v6);
        let fail = |what: &str, e: String| -> ! {
            panic!(
                "{fam} {what}: {e} (counters: {})",
                delta(&before, &b.all_stats())
            )
        };
        udp_echo(&p1, &p2, dst, 5, JUMBO, T_OK).unwrap_or_else(|e| fail("8000-byte UDP", e));
        tcp_echo(&p1, &p2, dst, TCP_BYTES, T_OK).unwrap_or_else(|e| fail("TCP", e));
        let after = b.all_stats();
        let bytes = after["redirected"].1 - before["redirected"].1;
        let payload = (2 * 5 * JUMBO + 2 * TCP_BYTES) as u64;
        assert!(
            bytes >= payload,
            "{fam}: {bytes} bytes redirected, less than the {payload} payload bytes (counters: {})",
            delta(&before, &after)
        );
        assert_eq!(
            b.forward_drops(),
            drops_before,
            "{fam}: traffic reached the FORWARD chain"
        );
    }
}

fn send_udp_from(
    b: &Bench,
    from: u32,
    (src, dst): (IpAddr, IpAddr),
    ttl: u8,
    sink: &UdpSink,
    payload: &[u8],
    wait: Duration,
) -> Option<IpAddr> {
    let f = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => frame::udp4_frame(
            b.host_mac(from),
            b.pod_mac(from),
            s,
            d,
            ttl,
            40_000,
            sink.port,
            payload,
        ),
        (IpAddr::V6(s), IpAddr::V6(d)) => frame::udp6_frame(
            b.host_mac(from),
            b.pod_mac(from),
            s,
            d,
            ttl,
            40_000,
            sink.port,
            payload,
        ),
        _ => panic!("mixed address families"),
    };
    send_frame(&b.pod_ns(from), "eth0", &f).unwrap_or_else(|e| panic!("send frame: {e}"));
    sink.expect(payload, wait).map(|a| a.ip())
}

fn not_meshed_pods_meet_netfilter(dp: Datapath) {
    // Pods 1-2 meshed, pod 3 attached but not meshed.
    let b = Bench::up(3);
    b.drop_pod_forwarding();
    b.attach_and_mesh(dp, &[1, 2]);
    b.attach(dp, &[3]);
    b.add_endpoint(3, false);
    let (p1, p2, p3) = (b.pod_ns(1), b.pod_ns(2), b.pod_ns(3));

    for v6 in [false, true] {
        let fam = format!("{dp} {}", family(v6));
        // Control: meshed to meshed is fast-pathed through the DROP rule.
        udp_echo(&p1, &p2, b.pod_addr(2, v6), 3, 100, T_OK)
            .unwrap_or_else(|e| panic!("{fam} control (meshed pod1 -> pod2) failed: {e}"));

        let before = b.all_stats();
        let drops_before = b.forward_drops();
        let to_unmeshed = udp_echo(&p1, &p3, b.pod_addr(3, v6), 2, 100, T_BLOCKED);
        assert!(
            to_unmeshed.is_err(),
            "{fam} UDP to a not-meshed pod bypassed netfilter"
        );
        let tcp = tcp_echo(&p1, &p3, b.pod_addr(3, v6), 1000, T_BLOCKED);
        assert!(
            tcp.is_err(),
            "{fam} TCP to a not-meshed pod bypassed netfilter"
        );
        let from_unmeshed = udp_echo(&p3, &p1, b.pod_addr(1, v6), 2, 100, T_BLOCKED);
        assert!(
            from_unmeshed.is_err(),
            "{fam} UDP from a not-meshed pod bypassed netfilter"
        );

        let after = b.all_stats();
        let counters = delta(&before, &after);
        assert!(
            grew(&before, &after, "not_meshed") >= 3,
            "{fam}: not_meshed: {counters}"
        );
        assert_eq!(
            grew(&before, &after, "redirected"),
            0,
            "{fam}: redirected: {counters}"
        );
        let (d0, d1) = (
            family_drops(drops_before, v6),
            family_drops(b.forward_drops(), v6),
        );
        assert!(
            d1 >= d0 + 3,
            "{fam}: not-meshed traffic did not meet the DROP rule"
        );
    }
}

fn spoofed_sources_meet_netfilter(dp: Datapath) {
    let b = Bench::up(3);
    b.drop_pod_forwarding();
    b.attach_and_mesh(dp, &[1, 2, 3]);

    for v6 in [false, true] {
        let fam = format!("{dp} {}", family(v6));
        let any: IpAddr = if v6 {
            Ipv6Addr::UNSPECIFIED.into()
        } else {
            Ipv4Addr::UNSPECIFIED.into()
        };
        let sink = UdpSink::bind(&b.pod_ns(2), any, 0);
        let (own, dst) = (b.pod_addr(1, v6), b.pod_addr(2, v6));

        // Control: the same crafted frame with pod1's own address is fast-pathed and delivered.
        let before = b.all_stats();
        let got = send_udp_from(&b, 1, (own, dst), 64, &sink, b"own-source", T_OK);
        assert_eq!(
            got,
            Some(own),
            "{fam}: crafted frame with pod1's own source not delivered"
        );
        let after = b.all_stats();
        let counters = delta(&before, &after);
        assert_eq!(grew(&before, &after, "redirected"), 1, "{fam}: {counters}");

        // Pod1 sends with pod3's (meshed) address, and with an address that is nobody's.
        let nobody: IpAddr = if v6 {
            "fd00::fee".parse().unwrap()
        } else {
            "10.244.15.238".parse().unwrap()
        };
        for (what, src) in [
            ("pod3's address", b.pod_addr(3, v6)),
            ("an unknown address", nobody),
        ] {
            let before = b.all_stats();
            let drops_before = b.forward_drops();
            let payload = format!("spoofed {what}");
            let got = send_udp_from(&b, 1, (src, dst), 64, &sink, payload.as_bytes(), T_ABSENT);
            assert_eq!(
                got, None,
                "{fam}: pod1 spoofing {what} ({src}) got through the DROP rule"
            );
            let after = b.all_stats();
            let counters = delta(&before, &after);
            assert!(
                grew(&before, &after, "src_mismatch") >= 1,
                "{fam} {what}: src_mismatch: {counters}"
            );
            assert_eq!(
                grew(&before, &after, "redirected"),
                0,
                "{fam} {what}: {counters}"
            );
            let (d0, d1) = (
                family_drops(drops_before, v6),
                family_drops(b.forward_drops(), v6),
            );
            assert!(
                d1 > d0,
                "{fam} {what}: the spoofed packet did not reach the DROP rule"
            );
        }
    }
}

fn ttl_one_goes_to_the_kernel(dp: Datapath) {
    let b = Bench::up(2);
    b.attach_and_mesh(dp, &[1, 2]);
    let sink4 = UdpSink::bind(&b.pod_ns(2), Ipv4Addr::UNSPECIFIED.into(), 0);
    let sink6 = UdpSink::bind(&b.pod_ns(2), Ipv6Addr::UNSPECIFIED.into(), 0);
    let v4 = (b.pod_v4(1).into(), b.pod_v4(2).into());
    let v6 = (b.pod_v6(1).into(), b.pod_v6(2).into());

    // Control: TTL / hop limit 2 is forwarded (and arrives with 1).
    let before = b.all_stats();
    let got = send_udp_from(&b, 1, v4, 2, &sink4, b"ttl2", T_OK);
    assert!(got.is_some(), "{dp}: IPv4 TTL 2 frame not delivered");
    let got = send_udp_from(&b, 1, v6, 2, &sink6, b"hl2", T_OK);
    assert!(got.is_some(), "{dp}: IPv6 hop limit 2 frame not delivered");
    let after = b.all_stats();
    let counters = delta(&before, &after);
    assert_eq!(grew(&before, &after, "redirected"), 2, "{dp}: {counters}");

    // TTL 1 / hop limit 1: the kernel must see them (to send Time Exceeded): never delivered.
    let before = b.all_stats();
    let got = send_udp_from(&b, 1, v4, 1, &sink4, b"ttl1", T_ABSENT);
    assert_eq!(got, None, "{dp}: IPv4 TTL 1 frame was delivered");
    let got = send_udp_from(&b, 1, v6, 1, &sink6, b"hl1", T_ABSENT);
    assert_eq!(got, None, "{dp}: IPv6 hop limit 1 frame was delivered");
    let after = b.all_stats();
    let counters = delta(&before, &after);
    assert!(
        grew(&before, &after, "ttl_expired") >= 2,
        "{dp}: ttl_expired: {counters}"
    );
    assert_eq!(
        grew(&before, &after, "redirected"),
        0,
        "{dp}: redirected: {counters}"
    );
}

fn broadcast_arp_ndp_multicast_go_to_the_kernel(dp: Datapath) {
    let b = Bench::up(2);
    b.attach_and_mesh(dp, &[1, 2]);
    let (m1, h1) = (b.pod_mac(1), b.host_mac(1));
    let (v4_1, v4_2, v6_1, v6_2) = (b.pod_v4(1), b.pod_v4(2), b.pod_v6(1), b.pod_v6(2));
    let sink4 = UdpSink::bind(&b.pod_ns(2), Ipv4Addr::UNSPECIFIED.into(), 0);
    let port = sink4.port;
    let bcast = frame::BROADCAST_MAC;
    let mdns4 = Ipv4Addr::new(224, 0, 0, 251);
    let mdns6: Ipv6Addr = "ff02::fb".parse().unwrap();
    let snm = frame::solicited_node(v6_2);
    let frames: Vec<(&str, Vec<u8>)> = vec![
        (
            "IPv4 limited broadcast",
            frame::udp4_frame(
                bcast,
                m1,
                v4_1,
                Ipv4Addr::BROADCAST,
                64,
                40_000,
                port,
                b"bc",
            ),
        ),
        (
            "L2 broadcast to a pod's address",
            frame::udp4_frame(bcast, m1, v4_1, v4_2, 64, 40_000, port, b"bc2"),
        ),
        (
            "ARP request",
            frame::arp_request(m1, v4_1, Ipv4Addr::new(169, 254, 1, 1)),
        ),
        (
            "IPv4 multicast",
            frame::udp4_frame(
                frame::ipv4_multicast_mac(mdns4),
                m1,
                v4_1,
                mdns4,
                64,
                5353,
                5353,
                b"m4",
            ),
        ),
        (
            "IPv6 multicast",
            frame::udp6_frame(
                frame::ipv6_multicast_mac(mdns6),
                m1,
                v6_1,
                mdns6,
                64,
                5353,
                5353,
                b"m6",
            ),
        ),
        (
            "multicast NS",
            frame::neighbour_solicitation(frame::ipv6_multicast_mac(snm), m1, v6_1, snm, v6_2),
        ),
        (
            "unicast NS",
            frame::neighbour_solicitation(h1, m1, v6_1, v6_2, v6_2),
        ),
    ];

    let before = b.all_stats();
    for (what, f) in &frames {
        send_frame(&b.pod_ns(1), "eth0", f).unwrap_or_else(|e| panic!("sending {what}: {e}"));
    }
    // The L2 broadcast must not reach pod2 (the kernel does not forward it; nor may we).
    assert_eq!(
        sink4.expect(b"bc2", T_ABSENT),
        None,
        "{dp}: an L2 broadcast was delivered to pod2"
    );

    let after = b.all_stats();
    let counters = delta(&before, &after);
    eprintln!("{dp}: counter deltas: {counters}");
    assert!(
        grew(&before, &after, "not_ip") >= 1,
        "{dp}: not_ip (ARP): {counters}"
    );
    assert!(
        grew(&before, &after, "not_unicast") >= 5,
        "{dp}: not_unicast: {counters}"
    );
    assert!(
        grew(&before, &after, "ndp") >= 1,
        "{dp}: ndp (unicast NS): {counters}"
    );
    assert_eq!(
        grew(&before, &after, "redirected"),
        0,
        "{dp}: redirected: {counters}"
    );
}

/// Pod eth0 features a datapath may affect: XDP prepares GRO and tx checksumming (and the kernel
/// takes TSO away from a veth whose peer has a non-frags XDP program); TC must leave all of them
/// alone. Detach must give back what there was.
const POD_FEATURES: [&str; 3] = [
    "tcp-segmentation-offload",
    "tx-checksumming",
    "generic-receive-offload",
];

fn pod_settings(b: &Bench, i: u32) -> BTreeMap<String, String> {
    let all = b.pod_features(i);
    POD_FEATURES
        .iter()
        .map(|k| {
            let v = all
                .get(*k)
                .unwrap_or_else(|| panic!("ethtool -k eth0 in pod {i} has no {k}: {all:?}"));
            ((*k).to_string(), v.clone())
        })
        .collect()
}

/// Pod `i`'s eth0 while `dp` is attached to its host veth; `orig` is what it had before.
#[track_caller]
fn assert_pod_side_attached(
    b: &Bench,
    dp: Datapath,
    i: u32,
    orig: &BTreeMap<String, String>,
    when: &str,
) {
    let s = pod_settings(b, i);
    match dp {
        Datapath::Xdp => {
            assert_eq!(
                s["generic-receive-offload"], "on",
                "{when}: XDP attach did not turn GRO on in pod {i}: {s:?}"
            );
            assert_eq!(
                s["tx-checksumming"], "off",
                "{when}: XDP attach did not turn tx checksumming off in pod {i}: {s:?}"
            );
        }
        Datapath::Tc => {
            assert_eq!(
                &s, orig,
                "{when}: pod {i}'s eth0 is not as it was before any attach (TC must not touch \
                 the pod side)"
            );
            for k in ["tcp-segmentation-offload", "tx-checksumming"] {
                assert_eq!(s[k], "on", "{when}: pod {i} has {k} off under TC: {s:?}");
            }
        }
    }
}

/// `status --json` shows `iface` attached with `dp` (default mode) through a BPF link;
/// returns (program id, link id).
#[track_caller]
fn assert_status(ctl: &XdpCtl, iface: &str, dp: Datapath, when: &str) -> (u64, u64) {
    let Some(i) = ctl.interface_status(iface) else {
        panic!(
            "{when}: {iface} is not in `status`: {:?}",
            ctl.status_interfaces()
        );
    };
    assert_eq!(i["datapath"], dp.name(), "{when}: status of {iface}: {i}");
    assert_eq!(
        i["mode"],
        dp.default_status_mode(),
        "{when}: status of {iface}: {i}"
    );
    assert_eq!(i["link_kind"], "bpf_link", "{when}: status of {iface}: {i}");
    let id = |k: &str| {
        i[k].as_u64()
            .unwrap_or_else(|| panic!("{when}: status of {iface} has no {k}: {i}"))
    };
    (id("program_id"), id("link_id"))
}

/// Program `prog` is on `iface` in `dp`'s hook, and it is the only program on that link.
#[track_caller]
fn assert_program_on_link(b: &Bench, iface: &str, dp: Datapath, prog: u64, when: &str) {
    let detail = b.node_link_detail(iface);
    let tcx = b.tcx_programs(iface);
    match dp {
        Datapath::Xdp => {
            assert!(
                detail.contains("xdp") && detail.contains(&format!("id {prog} ")),
                "{when}: XDP program {prog} is not on {iface}:\n{detail}"
            );
            assert!(
                tcx.is_empty(),
                "{when}: {iface} is on XDP but has TCX programs: {tcx:?}"
            );
        }
        Datapath::Tc => {
            assert!(
                tcx.len() == 1 && tcx[0].direction == "ingress" && u64::from(tcx[0].id) == prog,
                "{when}: {iface} should have exactly TCX ingress program {prog}: {tcx:?}"
            );
            assert!(
                !detail.contains("xdp"),
                "{when}: {iface} is on TC but has an XDP program:\n{detail}"
            );
        }
    }
}

/// No BPF program on any link of the node namespace: not in `ip -d link` (XDP), not in a TCX
/// query, not in `bpftool net show`.
#[track_caller]
fn assert_nothing_on_links(b: &Bench, when: &str) {
    let progs = b.programs_on_links();
    assert!(
        progs.is_empty(),
        "{when}: programs are still on links: {progs:?}"
    );
    {
        integration_tests::require_tool("bpftool");
        let out = b.node_exec(&["bpftool", "-j", "net", "show"]);
        let v: Value = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("bpftool -j net show is not JSON ({e}): {out}"));
        let left: Vec<&Value> = v
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_object)
            .flat_map(|o| o.values())
            .filter_map(Value::as_array)
            .flatten()
            .collect();
        assert!(
            left.is_empty(),
            "{when}: bpftool net show in the node namespace: {out}"
        );
    }
}

/// The pin dir is gone or empty (recursively: no pinned object left anywhere in it).
fn assert_no_pins(pin_dir: &Path, when: &str) {
    fn files(p: &std::path::Path, out: &mut Vec<String>) {
        if let Ok(rd) = std::fs::read_dir(p) {
            for e in rd.flatten() {
                let path = e.path();
                if path.is_dir() {
                    files(&path, out);
                } else {
                    out.push(path.display().to_string());
                }
            }
        }
    }
    let mut left = Vec::new();
    files(pin_dir, &mut left);
    assert!(
        left.is_empty(),
        "{when}: pins left in {}: {left:?}",
        pin_dir.display()
    );
}

/// Waits (briefly: objects are freed after an RCU grace period) until bpftool no longer finds
/// the object; returns false if it is still there.
fn bpf_object_gone(kind: &str, id: u64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let out = integration_tests::run_args(&["bpftool", kind, "show", "id", &id.to_string()]);
        if !out.success() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

fn cli_attach_is_all_or_nothing(dp: Datapath) {
    let b = Bench::up(1);
    let ctl = b.xdp_ctl();
    let settings = pod_settings(&b, 1);
    let hv1 = b.host_veth(1);

    let out = ctl.attach(dp, &[&hv1, "xfpnosuch0"]);
    assert_clean_failure(&out, Some("xfpnosuch0"));

    let attached = ctl.attached();
    assert!(
        attached.is_empty(),
        "{dp}: a failed attach left interfaces attached: {attached:?}"
    );
    assert_nothing_on_links(&b, &format!("{dp}: after a failed attach"));
    assert_eq!(
        pod_settings(&b, 1),
        settings,
        "{dp}: a failed attach changed pod1's settings"
    );
    assert_no_pins(b.pin_dir(), &format!("{dp}: after a failed attach"));

    // A failure after the first interface was fully attached (pod side prepared for XDP,
    // link pinned): `lo` resolves but is not a veth. Everything done for pod1 must be undone.
    let out = ctl.attach(dp, &[&hv1, "lo"]);
    assert_clean_failure(&out, Some("lo"));
    assert!(
        ["nothing was attached", "nothing was changed"]
            .iter()
            .any(|m| out.stderr.contains(m)),
        "{dp}: failure does not say that nothing stayed attached: {out}"
    );
    let attached = ctl.attached();
    assert!(
        attached.is_empty(),
        "{dp}: a failed attach left interfaces attached: {attached:?}"
    );
    assert_nothing_on_links(&b, &format!("{dp}: after a mid-way failed attach"));
    assert_eq!(
        pod_settings(&b, 1),
        settings,
        "{dp}: a mid-way failed attach did not give pod1 its settings back"
    );
    assert_no_pins(b.pin_dir(), &format!("{dp}: after a mid-way failed attach"));
}

fn cli_detach_restores_pods_and_removes_everything(dp: Datapath) {
    let b = Bench::up(2);
    let ctl = b.xdp_ctl();
    let (hv1, hv2) = (b.host_veth(1), b.host_veth(2));
    // Pod 2 starts with GRO already on: detach must leave it on (restore, not reset).
    b.pod_exec(2, &["ethtool", "-K", "eth0", "gro", "on"]);
    let orig = [pod_settings(&b, 1), pod_settings(&b, 2)];
    assert_eq!(orig[1]["generic-receive-offload"], "on");
    for (i, o) in (1..).zip(&orig) {
        for k in ["tcp-segmentation-offload", "tx-checksumming"] {
            assert_eq!(o[k], "on", "bench pod {i} starts with {k} off: {o:?}");
        }
    }

    ctl.attach_ok(dp, &[&hv1, &hv2]);
    let mut ids = Vec::new();
    for (i, hv) in [(1, &hv1), (2, &hv2)] {
        let when = format!("{dp}: after attach");
        assert_pod_side_attached(&b, dp, i, &orig[i as usize - 1], &when);
        let (prog, link) = assert_status(&ctl, hv, dp, &when);
        assert_program_on_link(&b, hv, dp, prog, &when);
        ids.extend([("prog", prog), ("link", link)]);
    }
    let status = ctl.status_interfaces();
    assert_eq!(status.len(), 2, "{dp}: status after attach: {status:?}");

    // Re-attach is a no-op.
    ctl.attach_ok(dp, &[&hv1]);
    assert_eq!(
        ctl.status_interfaces(),
        status,
        "{dp}: re-attach changed the status"
    );

    // Detach one: the other stays; pod 1 gets its settings back.
    ctl.run_ok(&["detach", &hv1]);
    assert_eq!(
        ctl.attached(),
        vec![hv2.clone()],
        "{dp}: after detach of {hv1}"
    );
    assert_eq!(
        pod_settings(&b, 1),
        orig[0],
        "{dp}: detach did not restore pod 1's settings"
    );
    let left = b.programs_on_links();
    assert!(
        left.len() == 1 && left[0].starts_with(&format!("{hv2}:")),
        "{dp}: after detach of {hv1}, only {hv2} should have a program: {left:?}"
    );

    ctl.run_ok(&["detach", "--all"]);
    for (i, o) in (1..).zip(&orig) {
        assert_eq!(
            &pod_settings(&b, i),
            o,
            "{dp}: pod {i}'s settings after detach --all"
        );
    }
    assert_no_pins(b.pin_dir(), &format!("{dp}: after detach --all"));
    assert_nothing_on_links(&b, &format!("{dp}: after detach --all"));
    integration_tests::require_tool("bpftool");
    for (kind, id) in ids {
        assert!(
            bpf_object_gone(kind, id),
            "{dp}: {kind} id {id} still exists after detach --all"
        );
    }
    // Detaching again is not an error... or at least not a crash.
    let out = ctl.run(&["detach", "--all"]);
    assert!(!out.stderr.contains("panicked"), "{out}");
}

#[test]
#[ignore = "needs root: run scripts/test.sh"]
fn cli_bad_input_fails_cleanly() {
    require_root!();
    let b = Bench::up(2);
    let ctl = b.xdp_ctl();
    let (hv1, hv2) = (b.host_veth(1), b.host_veth(2));
    // No --datapath: tc, since this kernel has TCX (6.6+; the tests need it anyway).
    ctl.run_ok(&["attach", &hv1]);
    let st = ctl
        .interface_status(&hv1)
        .unwrap_or_else(|| panic!("{hv1} not attached"));
    assert_eq!(st["datapath"], "tc", "the default datapath: {st}");

    let out = ctl.run(&["endpoint", "add", "10.244.0.300", "--iface", &hv1]);
    assert_clean_failure(&out, Some("10.244.0.300"));
    let out = ctl.run(&["endpoint", "add", "10.244.0.9", "--iface", "xfpnosuch0"]);
    assert_clean_failure(&out, Some("xfpnosuch0"));
    for dp in Datapath::ALL {
        let out = ctl.attach(dp, &["xfpnosuch0"]);
        assert_clean_failure(&out, Some("xfpnosuch0"));
    }
    let out = ctl.run(&["attach", "--datapath", "bogus", &hv2]);
    assert_clean_failure(&out, Some("bogus"));
    let out = ctl.run(&["detach", "xfpnosuch0"]);
    assert_clean_failure(&out, Some("xfpnosuch0"));

    // A namespace that does not exist.
    let other = XdpCtl::new(
        b.pin_dir().to_path_buf(),
        Some(format!("{}-nosuch", b.prefix())),
    );
    assert_clean_failure(&other.run(&["attach", &hv2]), None);

    // A pin dir that is not on bpffs: refused before anything is attached.
    let tmp_pins = PathBuf::from(format!("/tmp/xfp-notbpf-{}", b.prefix()));
    let not_bpffs = XdpCtl::new(tmp_pins.clone(), Some(b.node_ns()));
    let out = not_bpffs.attach(Datapath::Tc, &[&hv2]);
    let _ = std::fs::remove_dir_all(&tmp_pins);
    assert_clean_failure(&out, Some(&tmp_pins.display().to_string()));

    // No privileges.
    let out = ctl.run_as_nobody(&["attach", &hv2]);
    assert_clean_failure(&out, None);

    let on_links = b.programs_on_links();
    assert!(
        on_links.iter().all(|p| !p.starts_with(&format!("{hv2}:"))),
        "a failed attach left a program on {hv2}: {on_links:?}"
    );
    assert_eq!(
        ctl.attached(),
        vec![hv1.clone()],
        "status changed by failed commands"
    );
}

/// Interval of the steady flows that must not lose a datagram while the datapath is switched.
const STREAM_INTERVAL: Duration = Duration::from_millis(1);
const STREAM_SIZE: usize = 200;
/// How long each phase of the switching test lets the flows run.
const PHASE: Duration = Duration::from_millis(400);
/// Least number of packets a phase must count per direction under the reason it expects: two
/// flows at about one datagram per STREAM_INTERVAL run for PHASE (about 700 per direction),
/// so this leaves room for a slow machine while proving which way the packets went.
const PHASE_MIN: u64 = 100;

/// Status, hook and pod side after a switch: pod `i` is on `dps[i - 1]`.
#[track_caller]
fn assert_switched(
    b: &Bench,
    dps: [Datapath; 2],
    orig: &[BTreeMap<String, String>; 2],
    when: &str,
) {
    let ctl = b.xdp_ctl();
    for ((i, dp), o) in (1..).zip(dps).zip(orig) {
        let hv = b.host_veth(i);
        let (prog, _) = assert_status(&ctl, &hv, dp, when);
        assert_program_on_link(b, &hv, dp, prog, when);
        assert_pod_side_attached(b, dp, i, o, when);
    }
}

/// Switches `pods` to `to` under the running flows, checks status, hooks and pod side for
/// `[pod 1, pod 2]` being on `now`, lets the flows run a [`PHASE`] and checks where the
/// counters say their packets went: a packet from a pod on XDP to a pod on TC goes to the
/// kernel (`tx_port_missing`: the devmap holds only XDP ports); any other pair is redirected.
#[track_caller]
fn switch_phase(
    b: &Bench,
    pods: &[u32],
    to: Datapath,
    now: [Datapath; 2],
    orig: &[BTreeMap<String, String>; 2],
) {
    let what = format!(
        "pods {pods:?} switched to {to} (pod 1 on {}, pod 2 on {})",
        now[0], now[1]
    );
    if !pods.is_empty() {
        b.attach(to, pods);
    }
    assert_switched(b, now, orig, &what);

    let before = b.all_stats();
    thread::sleep(PHASE);
    let after = b.all_stats();
    let counters = delta(&before, &after);
    eprintln!("{what}: {counters}");
    // Directions pod1 -> pod2 (the flows) and pod2 -> pod1 (their echoes).
    let to_kernel = [(now[0], now[1]), (now[1], now[0])]
        .iter()
        .filter(|&&(src, dst)| src == Datapath::Xdp && dst == Datapath::Tc)
        .count() as u64;
    let redirected = grew(&before, &after, "redirected");
    let missing = grew(&before, &after, "tx_port_missing");
    assert!(
        redirected >= (2 - to_kernel) * PHASE_MIN,
        "{what}: too few redirected: {counters}"
    );
    if to_kernel == 0 {
        assert_eq!(missing, 0, "{what}: packets went to the kernel: {counters}");
    } else {
        assert!(
            missing >= to_kernel * PHASE_MIN,
            "{what}: XDP -> TC packets were not passed to the kernel: {counters}"
        );
    }
}

/// Steady IPv4 and IPv6 flows (pod1 -> pod2 and echoes back, a datagram per millisecond
/// each) while the interfaces go XDP -> TC and back, one at a time, then both at once: not one
/// datagram may be lost; status, hooks, pod side and counters follow each step. Then a refused
/// mode change, and detach gives the pods their original settings.
///
/// The kernel path is open (no DROP rule), as a pod on XDP sends to a pod on TC through it,
/// except pod1 -> pod2 during the one-at-a-time switches: in that order, that direction never
/// needs the kernel, so a moment without a program on a link would lose datagrams.
#[test]
#[ignore = "needs root: run scripts/test.sh"]
fn switching_datapaths_under_traffic_loses_nothing() {
    use Datapath::{Tc, Xdp};
    require_root!();
    let b = Bench::up(2);
    let (p1, p2) = (b.pod_ns(1), b.pod_ns(2));
    let orig = [pod_settings(&b, 1), pod_settings(&b, 2)];

    b.attach_and_mesh(Xdp, &[1, 2]);
    for v6 in [false, true] {
        udp_echo(&p1, &p2, b.pod_addr(2, v6), 3, 100, T_OK)
            .unwrap_or_else(|e| panic!("{} over XDP before the flows: {e}", family(v6)));
    }
    let at_start = b.all_stats();
    let streams: Vec<(&str, UdpStream)> = [false, true]
        .into_iter()
        .map(|v6| {
            let s = UdpStream::start(&p1, &p2, b.pod_addr(2, v6), STREAM_INTERVAL, STREAM_SIZE)
                .unwrap_or_else(|e| panic!("{e}"));
            (family(v6), s)
        })
        .collect();
    for (fam, s) in &streams {
        assert!(
            s.wait_for_echoes(20, T_OK),
            "the {fam} flow does not get through"
        );
    }

    switch_phase(&b, &[], Xdp, [Xdp, Xdp], &orig);
    b.drop_forwarding_between(1, 2, true);
    switch_phase(&b, &[1], Tc, [Tc, Xdp], &orig);
    switch_phase(&b, &[2], Tc, [Tc, Tc], &orig);
    switch_phase(&b, &[2], Xdp, [Tc, Xdp], &orig);
    switch_phase(&b, &[1], Xdp, [Xdp, Xdp], &orig);
    let hits = b.forward_drops_between(1, 2);
    b.drop_forwarding_between(1, 2, false);
    switch_phase(&b, &[1, 2], Tc, [Tc, Tc], &orig);
    switch_phase(&b, &[1, 2], Xdp, [Xdp, Xdp], &orig);

    let (mut failures, mut packets) = (Vec::new(), 0u64);
    for (fam, s) in streams {
        let r = s.finish().unwrap_or_else(|e| panic!("{e}"));
        eprintln!("{fam} flow: {r}");
        if !r.lossless() {
            failures.push(format!("{fam} flow: {r}"));
        }
        packets += u64::from(r.sent) + r.received.len() as u64 + u64::from(r.duplicates);
    }
    assert!(
        failures.is_empty(),
        "datagrams lost while switching datapaths (pod1 -> pod2 packets that met the kernel's \
         FORWARD DROP during the one-at-a-time switches: IPv4 {}, IPv6 {}):\n{}",
        hits.0,
        hits.1,
        failures.join("\n")
    );
    assert_eq!(
        hits,
        (0, 0),
        "pod1 -> pod2 packets took the kernel path during a switch"
    );
    let at_end = b.all_stats();
    // Both hooks on one link during a switch may count a packet twice (XDP passes it, then TC
    // sees it), never zero times.
    let counted =
        grew(&at_start, &at_end, "redirected") + grew(&at_start, &at_end, "tx_port_missing");
    eprintln!("flow packets {packets}, counted redirected + tx_port_missing {counted}");
    assert!(
        counted >= packets,
        "{packets} flow packets crossed the host veths, but only {counted} were counted \
         (redirected + tx_port_missing): some crossed a link with no program on it (counters: \
         {})",
        delta(&at_start, &at_end)
    );

    refused_mode_change_changes_nothing(&b, &orig);

    b.xdp_ctl().run_ok(&["detach", "--all"]);
    for (i, o) in (1..).zip(&orig) {
        assert_eq!(&pod_settings(&b, i), o, "pod {i}'s settings after detach");
    }
    assert_nothing_on_links(&b, "after detach");
    assert_no_pins(b.pin_dir(), "after detach");
}

/// With both pods on native XDP: changing the mode of an XDP attachment without detaching is
/// refused with a one-line error, and changes nothing (status, hooks, pod side, forwarding).
#[track_caller]
fn refused_mode_change_changes_nothing(b: &Bench, orig: &[BTreeMap<String, String>; 2]) {
    let ctl = b.xdp_ctl();
    let hv1 = b.host_veth(1);
    let status = ctl.status_interfaces();
    let settings = [pod_settings(b, 1), pod_settings(b, 2)];
    let out = ctl.run(&["attach", "--datapath", "xdp", "--mode", "skb", &hv1]);
    assert_clean_failure(&out, None);
    assert!(
        out.stderr.to_lowercase().contains("mode"),
        "the error does not say that the mode is the problem: {out}"
    );
    assert_eq!(
        ctl.status_interfaces(),
        status,
        "a refused mode change changed the status"
    );
    assert_eq!(
        [pod_settings(b, 1), pod_settings(b, 2)],
        settings,
        "a refused mode change changed the pod side"
    );
    let when = "after a refused mode change";
    assert_switched(b, [Datapath::Xdp, Datapath::Xdp], orig, when);
    b.drop_pod_forwarding();
    for v6 in [false, true] {
        udp_echo(&b.pod_ns(1), &b.pod_ns(2), b.pod_addr(2, v6), 3, 100, T_OK)
            .unwrap_or_else(|e| panic!("{} over the fast path {when}: {e}", family(v6)));
    }
}
