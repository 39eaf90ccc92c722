//! The fast path on real namespaces, veths and traffic (DESIGN.md section 6, item 3).
//!
//! Every test builds its own bench (`scripts/bench-netns.sh`, unique prefix and pin dir, torn
//! down on drop) and drives the `xdp-ctl` binary (`$XDP_CTL_BIN`, else `target/<profile>/xdp-ctl`:
//! build it first with `cargo build -p xdp-ctl`). Redirection is proven at the receiver: the
//! node's FORWARD chain DROPs pod-to-pod traffic, so only the fast path can deliver it, and
//! delivered payloads are checked byte for byte. Needs root; skipped (with a message) otherwise.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use integration_tests::{
    assert_clean_failure, frame, require_root, send_frame, tcp_echo, udp_echo, Bench, UdpSink,
    XdpCtl,
};

/// Bound for transfers that must succeed.
const T_OK: Duration = Duration::from_secs(5);
/// Bound for transfers that must fail (a blocked path fails within this).
const T_BLOCKED: Duration = Duration::from_secs(2);
/// How long to wait for a crafted frame that must not arrive.
const T_ABSENT: Duration = Duration::from_millis(700);
const TCP_BYTES: usize = 256 * 1024;
const UDP_COUNT: u32 = 20;
const UDP_SIZE: usize = 1000;

fn addr(b: &Bench, i: u32, v6: bool) -> IpAddr {
    if v6 {
        b.pod_v6(i).into()
    } else {
        b.pod_v4(i).into()
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
    let dst = addr(b, 2, v6);
    let t0 = Instant::now();
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
    assert!(
        t0.elapsed() < 4 * T_BLOCKED + Duration::from_secs(2),
        "blocked path did not fail fast"
    );
}

fn fast_path_bypasses_forward_drop(v6: bool) {
    let b = Bench::up(2);
    let fam = family(v6);
    let (p1, p2) = (b.pod_ns(1), b.pod_ns(2));
    let (src, dst) = (addr(&b, 1, v6), addr(&b, 2, v6));

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

    b.attach_and_mesh(&[1, 2]);
    let before = b.all_stats();
    let drops_before = b.forward_drops();

    let t = tcp_echo(&p1, &p2, dst, TCP_BYTES, T_OK)
        .unwrap_or_else(|e| panic!("{fam} TCP over the fast path: {e}"));
    assert_eq!(
        t.client_addr.ip(),
        src,
        "server saw a different client address"
    );
    eprintln!("{fam} TCP: {} bytes each way in {:?}", t.bytes, t.elapsed);
    let u = udp_echo(&p1, &p2, dst, UDP_COUNT, UDP_SIZE, T_OK)
        .unwrap_or_else(|e| panic!("{fam} UDP over the fast path: {e}"));
    assert_eq!(
        u.client_addr.ip(),
        src,
        "server saw a different client address"
    );
    // And the other direction, pod2 as the client.
    tcp_echo(&p2, &p1, src, 4096, T_OK)
        .unwrap_or_else(|e| panic!("{fam} TCP pod2 -> pod1 over the fast path: {e}"));

    let after = b.all_stats();
    let redirected = grew(&before, &after, "redirected");
    // At least every UDP datagram and its echo, plus the TCP segments.
    assert!(
        redirected >= 2 * u64::from(UDP_COUNT) + 10,
        "{fam}: only {redirected} packets redirected (counters: {})",
        delta(&before, &after)
    );
    assert!(
        after["redirected"].1 > before["redirected"].1,
        "redirected bytes did not grow"
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

#[test]
fn ipv4_tcp_udp_bypass_forward_drop_only_with_fast_path() {
    require_root!();
    fast_path_bypasses_forward_drop(false);
}

#[test]
fn ipv6_tcp_udp_bypass_forward_drop_only_with_fast_path() {
    require_root!();
    fast_path_bypasses_forward_drop(true);
}

/// Sends a UDP frame from pod `from` (out of its eth0, to its host veth's MAC) with the given
/// source address, to pod `to`'s sink; returns whether it arrived (and from where).
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

#[test]
fn not_meshed_pods_meet_netfilter() {
    require_root!();
    // Pods 1-2 meshed, pod 3 attached but not meshed.
    let b = Bench::up(3);
    b.drop_pod_forwarding();
    b.attach_and_mesh(&[1, 2]);
    b.xdp_ctl().run_ok(&["attach", &b.host_veth(3)]);
    b.add_endpoint(3, false);
    let (p1, p2, p3) = (b.pod_ns(1), b.pod_ns(2), b.pod_ns(3));

    for v6 in [false, true] {
        let fam = family(v6);
        // Control: meshed to meshed is fast-pathed through the DROP rule.
        udp_echo(&p1, &p2, addr(&b, 2, v6), 3, 100, T_OK)
            .unwrap_or_else(|e| panic!("{fam} control (meshed pod1 -> pod2) failed: {e}"));

        let before = b.all_stats();
        let drops_before = b.forward_drops();
        let to_unmeshed = udp_echo(&p1, &p3, addr(&b, 3, v6), 2, 100, T_BLOCKED);
        assert!(
            to_unmeshed.is_err(),
            "{fam} UDP to a not-meshed pod bypassed netfilter"
        );
        let tcp = tcp_echo(&p1, &p3, addr(&b, 3, v6), 1000, T_BLOCKED);
        assert!(
            tcp.is_err(),
            "{fam} TCP to a not-meshed pod bypassed netfilter"
        );
        let from_unmeshed = udp_echo(&p3, &p1, addr(&b, 1, v6), 2, 100, T_BLOCKED);
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
        let drops_after = b.forward_drops();
        let (d0, d1) = if v6 {
            (drops_before.1, drops_after.1)
        } else {
            (drops_before.0, drops_after.0)
        };
        assert!(
            d1 >= d0 + 3,
            "{fam}: not-meshed traffic did not meet the DROP rule"
        );
    }
}

#[test]
fn spoofed_sources_meet_netfilter() {
    require_root!();
    let b = Bench::up(3);
    b.drop_pod_forwarding();
    b.attach_and_mesh(&[1, 2, 3]);

    for v6 in [false, true] {
        let fam = family(v6);
        let any: IpAddr = if v6 {
            Ipv6Addr::UNSPECIFIED.into()
        } else {
            Ipv4Addr::UNSPECIFIED.into()
        };
        let sink = UdpSink::bind(&b.pod_ns(2), any, 0);
        let (own, dst) = (addr(&b, 1, v6), addr(&b, 2, v6));

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
            ("pod3's address", addr(&b, 3, v6)),
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
            let drops_after = b.forward_drops();
            let (d0, d1) = if v6 {
                (drops_before.1, drops_after.1)
            } else {
                (drops_before.0, drops_after.0)
            };
            assert!(
                d1 > d0,
                "{fam} {what}: the spoofed packet did not reach the DROP rule"
            );
        }
    }
}

#[test]
fn ttl_one_goes_to_the_kernel() {
    require_root!();
    let b = Bench::up(2);
    b.attach_and_mesh(&[1, 2]);
    let sink4 = UdpSink::bind(&b.pod_ns(2), Ipv4Addr::UNSPECIFIED.into(), 0);
    let sink6 = UdpSink::bind(&b.pod_ns(2), Ipv6Addr::UNSPECIFIED.into(), 0);
    let v4 = (b.pod_v4(1).into(), b.pod_v4(2).into());
    let v6 = (b.pod_v6(1).into(), b.pod_v6(2).into());

    // Control: TTL / hop limit 2 is forwarded (and arrives with 1).
    let before = b.all_stats();
    let got = send_udp_from(&b, 1, v4, 2, &sink4, b"ttl2", T_OK);
    assert!(got.is_some(), "IPv4 TTL 2 frame not delivered");
    let got = send_udp_from(&b, 1, v6, 2, &sink6, b"hl2", T_OK);
    assert!(got.is_some(), "IPv6 hop limit 2 frame not delivered");
    let after = b.all_stats();
    let counters = delta(&before, &after);
    assert_eq!(grew(&before, &after, "redirected"), 2, "{counters}");

    // TTL 1 / hop limit 1: the kernel must see them (to send Time Exceeded): never delivered.
    let before = b.all_stats();
    let got = send_udp_from(&b, 1, v4, 1, &sink4, b"ttl1", T_ABSENT);
    assert_eq!(got, None, "IPv4 TTL 1 frame was delivered");
    let got = send_udp_from(&b, 1, v6, 1, &sink6, b"hl1", T_ABSENT);
    assert_eq!(got, None, "IPv6 hop limit 1 frame was delivered");
    let after = b.all_stats();
    let counters = delta(&before, &after);
    assert!(
        grew(&before, &after, "ttl_expired") >= 2,
        "ttl_expired: {counters}"
    );
    assert_eq!(
        grew(&before, &after, "redirected"),
        0,
        "redirected: {counters}"
    );
}

#[test]
fn broadcast_arp_ndp_multicast_go_to_the_kernel() {
    require_root!();
    let b = Bench::up(2);
    b.attach_and_mesh(&[1, 2]);
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
        "an L2 broadcast was delivered to pod2"
    );

    let after = b.all_stats();
    let counters = delta(&before, &after);
    eprintln!("counter deltas: {counters}");
    assert!(
        grew(&before, &after, "not_ip") >= 1,
        "not_ip (ARP): {counters}"
    );
    assert!(
        grew(&before, &after, "not_unicast") >= 5,
        "not_unicast: {counters}"
    );
    assert!(
        grew(&before, &after, "ndp") >= 1,
        "ndp (unicast NS): {counters}"
    );
    assert_eq!(
        grew(&before, &after, "redirected"),
        0,
        "redirected: {counters}"
    );
}

/// The pod-side settings the fast path changes, and that detach must give back.
const PREPARED: [&str; 2] = ["generic-receive-offload", "tx-checksumming"];

fn prepared_settings(b: &Bench, i: u32) -> BTreeMap<String, String> {
    let all = b.pod_features(i);
    PREPARED
        .iter()
        .map(|k| {
            let v = all
                .get(*k)
                .unwrap_or_else(|| panic!("ethtool -k eth0 in pod {i} has no {k}: {all:?}"));
            ((*k).to_string(), v.clone())
        })
        .collect()
}

fn assert_no_xdp_on_links(b: &Bench, when: &str) {
    let links = b.node_links_detail();
    assert!(
        !links.contains("xdp"),
        "{when}: an XDP program is still on a link:\n{links}"
    );
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

#[test]
fn cli_attach_is_all_or_nothing() {
    require_root!();
    let b = Bench::up(1);
    let ctl = b.xdp_ctl();
    let settings = prepared_settings(&b, 1);

    let out = ctl.run(&["attach", &b.host_veth(1), "xfpnosuch0"]);
    assert_clean_failure(&out, Some("xfpnosuch0"));

    let attached = ctl.attached();
    assert!(
        attached.is_empty(),
        "a failed attach left interfaces attached: {attached:?}"
    );
    assert_no_xdp_on_links(&b, "after a failed attach");
    assert_eq!(
        prepared_settings(&b, 1),
        settings,
        "a failed attach changed pod1's settings"
    );
    assert_no_pins(b.pin_dir(), "after a failed attach");

    // A failure after the first interface was fully attached (pod side prepared, TX_PORTS,
    // link pinned): `lo` resolves but is not a veth. Everything done for pod1 must be undone.
    let out = ctl.run(&["attach", &b.host_veth(1), "lo"]);
    assert_clean_failure(&out, Some("lo"));
    assert!(
        out.stderr.contains("nothing was attached"),
        "failure does not say that nothing stayed attached: {out}"
    );
    let attached = ctl.attached();
    assert!(
        attached.is_empty(),
        "a failed attach left interfaces attached: {attached:?}"
    );
    assert_no_xdp_on_links(&b, "after a mid-way failed attach");
    assert_eq!(
        prepared_settings(&b, 1),
        settings,
        "a mid-way failed attach did not give pod1 its settings back"
    );
    assert_no_pins(b.pin_dir(), "after a mid-way failed attach");
}

#[test]
fn cli_detach_restores_pods_and_removes_everything() {
    require_root!();
    let b = Bench::up(2);
    let ctl = b.xdp_ctl();
    let (hv1, hv2) = (b.host_veth(1), b.host_veth(2));
    // Pod 2 starts with GRO already on: detach must leave it on (restore, not reset).
    b.pod_exec(2, &["ethtool", "-K", "eth0", "gro", "on"]);
    let orig1 = prepared_settings(&b, 1);
    let orig2 = prepared_settings(&b, 2);
    assert_eq!(orig2["generic-receive-offload"], "on");

    ctl.run_ok(&["attach", &hv1, &hv2]);
    for i in [1, 2] {
        let s = prepared_settings(&b, i);
        assert_eq!(
            s["generic-receive-offload"], "on",
            "attach did not turn GRO on in pod {i}"
        );
        assert_eq!(
            s["tx-checksumming"], "off",
            "attach did not turn tx checksumming off in pod {i}"
        );
    }
    let status = ctl.json(&["status"]);
    let ifaces = status["interfaces"].as_array().expect("interfaces array");
    assert_eq!(ifaces.len(), 2, "status after attach: {status}");
    let mut ids = Vec::new();
    for i in ifaces {
        assert_eq!(i["datapath"], "xdp", "{i}");
        let prog = i["program_id"]
            .as_u64()
            .unwrap_or_else(|| panic!("no program_id: {i}"));
        ids.push(("prog", prog));
        if let Some(link) = i["link_id"].as_u64() {
            ids.push(("link", link));
        }
    }
    assert!(
        b.node_links_detail().contains("xdp"),
        "no XDP program visible on the links"
    );

    // Re-attach is a no-op.
    ctl.run_ok(&["attach", &hv1]);
    let again = ctl.json(&["status"]);
    assert_eq!(
        again["interfaces"], status["interfaces"],
        "re-attach changed the status"
    );

    // Detach one: the other stays; pod 1 gets its settings back.
    ctl.run_ok(&["detach", &hv1]);
    assert_eq!(ctl.attached(), vec![hv2.clone()], "after detach of {hv1}");
    assert_eq!(
        prepared_settings(&b, 1),
        orig1,
        "detach did not restore pod 1's settings"
    );

    ctl.run_ok(&["detach", "--all"]);
    assert_eq!(
        prepared_settings(&b, 1),
        orig1,
        "pod 1's settings after detach --all"
    );
    assert_eq!(
        prepared_settings(&b, 2),
        orig2,
        "detach did not restore pod 2's settings"
    );
    assert_no_pins(b.pin_dir(), "after detach --all");
    assert_no_xdp_on_links(&b, "after detach --all");
    let bpftool = integration_tests::run_args(&["sh", "-c", "command -v bpftool"]).success();
    if bpftool {
        for (kind, id) in ids {
            assert!(
                bpf_object_gone(kind, id),
                "{kind} id {id} still exists after detach --all"
            );
        }
    } else {
        eprintln!("bpftool not installed: not checking that programs and links were freed");
    }
    // Detaching again is not an error... or at least not a crash.
    let out = ctl.run(&["detach", "--all"]);
    assert!(!out.stderr.contains("panicked"), "{out}");
}

#[test]
fn cli_bad_input_fails_cleanly() {
    require_root!();
    let b = Bench::up(2);
    let ctl = b.xdp_ctl();
    let (hv1, hv2) = (b.host_veth(1), b.host_veth(2));
    ctl.run_ok(&["attach", &hv1]);

    let out = ctl.run(&["endpoint", "add", "10.244.0.300", "--iface", &hv1]);
    assert_clean_failure(&out, Some("10.244.0.300"));
    let out = ctl.run(&["endpoint", "add", "10.244.0.9", "--iface", "xfpnosuch0"]);
    assert_clean_failure(&out, Some("xfpnosuch0"));
    let out = ctl.run(&["attach", "xfpnosuch0"]);
    assert_clean_failure(&out, Some("xfpnosuch0"));
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
    let out = not_bpffs.run(&["attach", &hv2]);
    let _ = std::fs::remove_dir_all(&tmp_pins);
    assert_clean_failure(&out, Some(&tmp_pins.display().to_string()));

    // No privileges.
    let out = ctl.run_as_nobody(&["attach", &hv2]);
    assert_clean_failure(&out, None);

    let hv2_detail = b.node_link_detail(&hv2);
    assert!(
        !hv2_detail.contains("xdp"),
        "a failed attach left a program on {hv2}:\n{hv2_detail}"
    );
    assert_eq!(
        ctl.attached(),
        vec![hv1.clone()],
        "status changed by failed commands"
    );
}
