//! Across nodes (issue 12), on the two-node bench ([`TwoNodes`]): two node namespaces joined by
//! a veth wire, native routing, real traffic with payload checks.
//!
//! - `kernel::*`: what the kernel does across nodes with no fast path at all: echoes both
//!   ways in both families, FORWARD DROP obeyed on either node, kube-proxy's `KUBE-FORWARD`,
//!   Services DNAT'd to a pod on the other node, crafted frames on the wire. They pin the bench
//!   down and are the baseline the fast-path tests compare with.
//! - `xdp::*`, `tc::*` ([`for_each_datapath!`]): the cross-node fast path, driven by the CLI
//!   (`attach --uplink`, `remote add`, `run --uplink --remote-meshed-cidr`).
//! - `cli::*`: bad input to that CLI fails cleanly.
//!
//! Needs root: `#[ignore]`d, failing without root; `scripts/test.sh` runs them.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use integration_tests::{
    assert_clean_failure, for_each_datapath, frame, require_root,
    twonode::{
        encap, kernel_path_packets, stats_growth, Node, Pod, Proto, Service, TwoNodes, T_OK,
    },
    Datapath, TcpFlow, UdpSink,
};

/// Bound for exchanges that must fail (the path is blocked): long enough for a retransmission.
const T_BLOCKED: Duration = Duration::from_millis(1500);
/// How long to wait for a datagram that must not arrive.
const T_ABSENT: Duration = Duration::from_millis(800);

const N1: Node = Node::One;
const N2: Node = Node::Two;

fn fam(v6: bool) -> &'static str {
    if v6 {
        "IPv6"
    } else {
        "IPv4"
    }
}

/// The pairs every cross-node echo test uses: node 1 pod 1 -> node 2 pod 1, and node 2 pod 2
/// -> node 1 pod 2 (the other way, other pods).
fn cross_pairs() -> [(Pod, Pod); 2] {
    [
        (Pod::new(N1, 1), Pod::new(N2, 1)),
        (Pod::new(N2, 2), Pod::new(N1, 2)),
    ]
}

/// Echoes that must fail (TCP and UDP, one family): both are blocked somewhere.
#[track_caller]
fn assert_blocked(b: &TwoNodes, from: Pod, to: Pod, v6: bool, why: &str) {
    let f = fam(v6);
    if let Ok(t) = b.tcp_echo_within(from, to, v6, 4096, T_BLOCKED) {
        panic!("{why}: {f} TCP {from} -> {to} got through: {t:?}");
    }
    if let Ok(t) = b.udp_echo_within(from, to, v6, 3, 200, T_BLOCKED) {
        panic!("{why}: {f} UDP {from} -> {to} got through: {t:?}");
    }
}

// =============================================================================================
// The kernel path (no fast path anywhere): passes today.
// =============================================================================================

mod kernel {
    use super::*;

    #[test]
    #[ignore = "needs root: run scripts/test.sh"]
    fn carries_tcp_and_udp_across_nodes_both_ways() {
        require_root!();
        let b = TwoNodes::up(2);
        check_names_and_addresses(&b);
        for (from, to) in cross_pairs() {
            b.echo_all(from, to).unwrap_or_else(|e| panic!("{e}"));
        }
        assert_eq!(b.forward_drops(N1), (0, 0), "no DROP rule installed yet");
    }

    #[test]
    #[ignore = "needs root: run scripts/test.sh"]
    fn obeys_forward_drop_on_either_node() {
        require_root!();
        let b = TwoNodes::up(2);
        for node in Node::BOTH {
            b.drop_pod_forwarding(node);
            for v6 in [false, true] {
                for (from, to) in cross_pairs() {
                    let before = b.forward_drops(node);
                    assert_blocked(&b, from, to, v6, &format!("DROP on {node}"));
                    let after = b.forward_drops(node);
                    let (was, now) = if v6 {
                        (before.1, after.1)
                    } else {
                        (before.0, after.0)
                    };
                    assert!(
                        now > was,
                        "{} {from} -> {to}: blocked, but {node}'s DROP rules did not count it \
                         ({before:?} -> {after:?})",
                        fam(v6)
                    );
                }
            }
            assert_eq!(
                b.forward_drops(node.other()),
                (0, 0),
                "{}: has no DROP rule",
                node.other()
            );
            b.allow_pod_forwarding(node);
            for (from, to) in cross_pairs() {
                b.echo_all(from, to)
                    .unwrap_or_else(|e| panic!("after removing the DROP on {node}: {e}"));
            }
        }
    }

    /// kube-proxy's KUBE-FORWARD (INVALID drop, ESTABLISHED accept, be_liberal=0) on both nodes:
    /// echoes work, and a long flow carries every byte through two 16 MiB phases (the measure the
    /// fast-path attach/detach tests use).
    #[test]
    #[ignore = "needs root: run scripts/test.sh"]
    fn works_with_kube_proxy_forward_on_both_nodes() {
        require_root!();
        let b = TwoNodes::up(2);
        for node in Node::BOTH {
            b.kube_proxy_forward(node);
        }
        for (from, to) in cross_pairs() {
            b.echo_all(from, to).unwrap_or_else(|e| panic!("{e}"));
        }
        let flow = start_flow(&b, false);
        flow.phase(T_FLOW, "on the kernel path");
        flow.phase(T_FLOW, "still on the kernel path");
        flow.finish_complete("kernel path");
    }

    /// A Service on each node, kube-proxy shape, to a pod on the other node: node 1's clients reach
    /// node 2 pod 1 through it, node 2's reach node 1 pod 1. TCP and UDP (connected socket: an
    /// answer from the wrong source would be dropped), both families, client address preserved.
    #[test]
    #[ignore = "needs root: run scripts/test.sh"]
    fn service_dnat_to_a_pod_on_the_other_node() {
        require_root!();
        let b = TwoNodes::up(2);
        // Without the Services, the addresses lead nowhere: what works below is the DNAT.
        for svc in services() {
            let client = client_of(&svc);
            let got = match svc.proto {
                Proto::Tcp => b.service_tcp_echo(client, &svc, 1000, T_BLOCKED),
                Proto::Udp => b.service_udp_echo(client, &svc, 2, T_BLOCKED),
            };
            assert!(got.is_err(), "{} reachable without its DNAT", svc.name);
        }
        install_services(&b);
        check_services(&b, "kernel path");
    }

    /// Crafted frames written onto the wire at node 1's end, received by node 2: the kernel
    /// forwards a well-formed UDP datagram from a node-1 pod address (also from a spoofed source,
    /// rp_filter being 0) to a node-2 pod; not with TTL 1; not through a FORWARD DROP (counted).
    #[test]
    #[ignore = "needs root: run scripts/test.sh"]
    fn delivers_crafted_frames_as_the_kernel_decides() {
        require_root!();
        let b = TwoNodes::up(2);
        let dst = Pod::new(N2, 1);
        for v6 in [false, true] {
            let sink = UdpSink::bind(&b.pod_ns(dst), dst.addr(v6), 0);
            let from_pod = Pod::new(N1, 1).addr(v6);
            let spoofed = Pod::new(N2, 2).addr(v6);
            let ok = |ttl: u8, src: IpAddr, tag: &str| {
                wire_udp(N1, src, dst.addr(v6), ttl, sink.port, tag)
            };
            let f = fam(v6);

            send(&b, N1, &ok(64, from_pod, "good"));
            assert!(
                sink.expect(&payload("good"), T_OK).is_some(),
                "{f}: a well-formed datagram from {from_pod} was not delivered"
            );
            send(&b, N1, &ok(2, from_pod, "ttl2"));
            assert!(
                sink.expect(&payload("ttl2"), T_OK).is_some(),
                "{f}: TTL 2 (1 after node 2) was not delivered"
            );
            send(&b, N1, &ok(1, from_pod, "ttl1"));
            assert!(
                sink.expect(&payload("ttl1"), T_ABSENT).is_none(),
                "{f}: TTL 1 was forwarded"
            );
            send(&b, N1, &ok(64, spoofed, "spoof"));
            assert!(
                sink.expect(&payload("spoof"), T_OK).is_some(),
                "{f}: with rp_filter=0 the kernel forwards a spoofed source ({spoofed})"
            );

            b.drop_pod_forwarding(N2);
            let before = b.forward_drops(N2);
            send(&b, N1, &ok(64, from_pod, "dropped"));
            assert!(
                sink.expect(&payload("dropped"), T_ABSENT).is_none(),
                "{f}: delivered through FORWARD DROP"
            );
            let after = b.forward_drops(N2);
            assert_eq!(
                family_delta(before, after, v6),
                1,
                "{f}: node 2's DROP rules did not count the frame once"
            );
            b.allow_pod_forwarding(N2);
        }
    }

    /// The checks of the fast-path tests on spoofed sources, TTL, overlays and a missing
    /// neighbour, on the kernel path: they pin down what "as the kernel decides" is.
    #[test]
    #[ignore = "needs root: run scripts/test.sh"]
    fn spoofed_sources_meet_forward_drop() {
        require_root!();
        check_spoofed_sources(&TwoNodes::up(2), None);
    }

    #[test]
    #[ignore = "needs root: run scripts/test.sh"]
    fn ttl_on_the_wire_and_from_a_pod() {
        require_root!();
        check_ttl(&TwoNodes::up(1), None);
    }

    #[test]
    #[ignore = "needs root: run scripts/test.sh"]
    fn overlay_frames_reach_the_kernel() {
        require_root!();
        check_overlay_frames(&TwoNodes::up(1), None);
    }

    #[test]
    #[ignore = "needs root: run scripts/test.sh"]
    fn missing_wire_neighbour_is_resolved() {
        require_root!();
        check_missing_neighbour(&TwoNodes::up(1), None);
    }
}
// =============================================================================================
// The fast path across nodes: waits for issue 12's CLI.
// =============================================================================================

for_each_datapath!(
    fast_path_carries_cross_node_traffic_past_forward_drop,
    a_narrower_wire_is_not_a_black_hole,
    controllers_carry_cross_node_traffic_past_forward_drop,
    non_meshed_remote_source_takes_the_kernel_path,
    spoofed_sources_on_the_wire_take_the_kernel_path,
    ttl_1_takes_the_kernel_path,
    overlay_frames_take_the_kernel_path,
    service_dnat_on_either_node_takes_the_kernel_path,
    missing_wire_neighbour_takes_the_kernel_path,
    kernel_born_flow_survives_attach_and_detach_on_either_node,
    fast_path_born_flow_survives_detach_and_attach_on_either_node,
);

/// A bench of `pods` pods per node with the fast path attached on both nodes (each node's pods
/// meshed, the other node's pod CIDRs remote).
fn meshed(dp: Datapath, pods: u32) -> TwoNodes {
    let b = TwoNodes::up(pods);
    for node in Node::BOTH {
        b.attach_fast_path(node, dp);
    }
    b
}

fn redirected(b: &TwoNodes, node: Node) -> u64 {
    b.stats(node, "redirected").0
}

/// FORWARD DROP on both nodes: only the fast path can carry pod traffic between them, and does,
/// both ways, both families, TCP and UDP, every byte checked; the DROP rules see nothing.
fn fast_path_carries_cross_node_traffic_past_forward_drop(dp: Datapath) {
    let b = meshed(dp, 2);
    for node in Node::BOTH {
        let other = node.other();
        let mut want = vec![
            other.pod_cidr_v4().to_string(),
            other.pod_cidr_v6().to_string(),
        ];
        want.sort();
        assert_eq!(
            b.remote_cidrs(node),
            want,
            "{dp}: {node}'s remote meshed CIDRs"
        );
        b.drop_pod_forwarding(node);
    }
    let before = [redirected(&b, N1), redirected(&b, N2)];
    for (from, to) in cross_pairs() {
        b.echo_all(from, to).unwrap_or_else(|e| {
            panic!(
                "{dp}: {e}\nnode 1 stats: {:?}\nnode 2 stats: {:?}",
                b.all_stats(N1),
                b.all_stats(N2)
            )
        });
    }
    for (k, node) in Node::BOTH.into_iter().enumerate() {
        assert_eq!(
            b.forward_drops(node),
            (0, 0),
            "{dp}: a packet met {node}'s FORWARD DROP"
        );
        let grew = redirected(&b, node) - before[k];
        // Per pair and family: a 256 KiB TCP echo and 20 UDP echoes, each way through each node.
        assert!(
            grew >= 2 * 2 * (2 * 20),
            "{dp}: {node} redirected only {grew} packets: {:?}",
            b.all_stats(node)
        );
    }
}

/// The wire's MTU (1400) below the pods' (1500), FORWARD DROP on both nodes: packets too big
/// for the uplink go to the kernel (`mtu_exceeded`: the FIB's MTU check, and for TC's GSO
/// bursts a per-segment check), which answers "fragmentation needed" / "packet too big" to the
/// pod (ip_forward checks the MTU before the FORWARD hook); the pod's TCP lowers its segment
/// size and the rest of the stream takes the fast path. Every byte checked, both ways, both
/// families. Without the checks, oversize frames are dropped at the wire (a black hole).
fn a_narrower_wire_is_not_a_black_hole(dp: Datapath) {
    let b = meshed(dp, 1);
    for node in Node::BOTH {
        let ns = b.node_ns(node);
        integration_tests::exec_in_ok(&ns, &["ip", "link", "set", node.wire(), "mtu", "1400"]);
        b.drop_pod_forwarding(node);
    }
    let before = [b.stats(N1, "mtu_exceeded").0, b.stats(N2, "mtu_exceeded").0];
    let drops_before = [wire_drops(&b, N1), wire_drops(&b, N2)];
    let (p1, p2) = (Pod::new(N1, 1), Pod::new(N2, 1));
    for v6 in [false, true] {
        for (from, to) in [(p1, p2), (p2, p1)] {
            b.tcp_echo(from, to, v6, 1 << 20).unwrap_or_else(|e| {
                panic!(
                    "{dp}: {} TCP {from} -> {to} over a 1400-byte wire: {e}\nnode 1: {:?}\nnode 2: {:?}",
                    fam(v6),
                    b.all_stats(N1),
                    b.all_stats(N2)
                )
            });
        }
    }
    for (k, node) in Node::BOTH.into_iter().enumerate() {
        let grew = b.stats(node, "mtu_exceeded").0 - before[k];
        assert!(
            grew > 0,
            "{dp}: no packet was too big for {node}'s uplink: the test did not test: {:?}",
            b.all_stats(node)
        );
        assert!(
            redirected(&b, node) > 0,
            "{dp}: nothing took {node}'s fast path"
        );
        // A frame too big for the wire is dropped by it and counted there (TCP would recover
        // after a retransmission timeout, so the echo alone cannot tell).
        assert_eq!(
            wire_drops(&b, node),
            drops_before[k],
            "{dp}: frames too big for {node}'s wire were sent into it"
        );
    }
}

/// Frames a wire end dropped: sent into it too big (its tx_dropped; veth counts the peer's
/// refusal there) or refused on receive.
fn wire_drops(b: &TwoNodes, node: Node) -> u64 {
    let ns = b.node_ns(node);
    ["tx_dropped", "rx_dropped"]
        .iter()
        .map(|c| {
            let path = format!("/sys/class/net/{}/statistics/{c}", node.wire());
            integration_tests::exec_in_ok(&ns, &["cat", &path])
                .trim()
                .parse::<u64>()
                .unwrap_or_else(|e| panic!("{path}: {e}"))
        })
        .sum()
}

/// The same with `xdp-ctl run --uplink --remote-meshed-cidr` on each node instead of one-shot
/// commands.
fn controllers_carry_cross_node_traffic_past_forward_drop(dp: Datapath) {
    let b = TwoNodes::up(2);
    let mut controllers: Vec<_> = Node::BOTH
        .into_iter()
        .map(|node| b.controller(node, dp, &[]))
        .collect();
    for c in &mut controllers {
        c.wait_ready(Duration::from_secs(15));
    }
    for node in Node::BOTH {
        b.drop_pod_forwarding(node);
    }
    for (from, to) in cross_pairs() {
        b.echo_all(from, to).unwrap_or_else(|e| panic!("{dp}: {e}"));
    }
    for node in Node::BOTH {
        assert_eq!(
            b.forward_drops(node),
            (0, 0),
            "{dp}: a packet met {node}'s FORWARD DROP"
        );
        assert!(redirected(&b, node) > 0, "{dp}: {node} redirected nothing");
    }
    for c in &controllers {
        c.assert_log_clean();
    }
}

/// Node 1 takes only part of node 2's pod CIDRs as remote meshed (10.244.2.2/31,
/// fd00::2:2/127): node 2 pod 2 is meshed for node 1, node 2 pod 1 is not. With a FORWARD DROP
/// on node 1, pod 2's traffic with node 1 pod 1 is fast-pathed past it, both ways; pod 1's
/// takes node 1's kernel path, both ways, and meets the DROP; without the DROP it works.
fn non_meshed_remote_source_takes_the_kernel_path(dp: Datapath) {
    let b = TwoNodes::up(2);
    b.attach_fast_path_with_remote(N1, dp, &["10.244.2.2/31", "fd00::2:2/127"]);
    b.attach_fast_path(N2, dp);
    b.drop_pod_forwarding(N1);
    let local = Pod::new(N1, 1);
    let (meshed, not_meshed) = (Pod::new(N2, 2), Pod::new(N2, 1));
    let before = redirected(&b, N1);
    for (from, to) in [(meshed, local), (local, meshed)] {
        b.echo_all(from, to)
            .unwrap_or_else(|e| panic!("{dp}: meshed for node 1, past its DROP: {e}"));
    }
    assert!(
        redirected(&b, N1) > before,
        "{dp}: node 1 redirected nothing"
    );
    assert_eq!(
        b.forward_drops(N1),
        (0, 0),
        "{dp}: meshed traffic met node 1's DROP"
    );
    for v6 in [false, true] {
        for (from, to) in [(not_meshed, local), (local, not_meshed)] {
            let before = b.forward_drops(N1);
            assert_blocked(&b, from, to, v6, &format!("{dp}: not meshed for node 1"));
            assert!(
                family_delta(before, b.forward_drops(N1), v6) > 0,
                "{dp}: {} {from} -> {to} did not meet node 1's FORWARD DROP",
                fam(v6)
            );
        }
    }
    b.allow_pod_forwarding(N1);
    for (from, to) in [(not_meshed, local), (local, not_meshed)] {
        b.echo_all(from, to)
            .unwrap_or_else(|e| panic!("{dp}: on node 1's kernel path without the DROP: {e}"));
    }
}

fn spoofed_sources_on_the_wire_take_the_kernel_path(dp: Datapath) {
    check_spoofed_sources(&meshed(dp, 2), Some(dp));
}

fn ttl_1_takes_the_kernel_path(dp: Datapath) {
    check_ttl(&meshed(dp, 1), Some(dp));
}

fn overlay_frames_take_the_kernel_path(dp: Datapath) {
    check_overlay_frames(&meshed(dp, 1), Some(dp));
}

/// The Services of [`kernel::service_dnat_to_a_pod_on_the_other_node`] with the fast path
/// on both nodes: the reply halves must go back through the translating node's conntrack.
/// Meanwhile the same clients reach the same backends directly, and that traffic is
/// fast-pathed (so the fast path is live while the Services work).
fn service_dnat_on_either_node_takes_the_kernel_path(dp: Datapath) {
    let b = meshed(dp, 2);
    install_services(&b);
    let before = [b.all_stats(N1), b.all_stats(N2)];
    check_services(&b, &format!("{dp}"));
    for (k, node) in Node::BOTH.into_iter().enumerate() {
        let after = b.all_stats(node);
        assert!(
            kernel_path_packets(&after) > kernel_path_packets(&before[k]),
            "{dp}: {node} sent none of the Service traffic to the kernel ({})",
            stats_growth(&before[k], &after)
        );
    }
    let before = [redirected(&b, N1), redirected(&b, N2)];
    // The two (client, backend) pairs of the Services: node 1 pod 2 -> node 2 pod 1, and
    // node 2 pod 2 -> node 1 pod 1.
    for backend in [Pod::new(N2, 1), Pod::new(N1, 1)] {
        let client = Pod::new(backend.node.other(), 2);
        b.echo_all(client, backend)
            .unwrap_or_else(|e| panic!("{dp}: {client} directly to {backend}: {e}"));
    }
    check_services(&b, &format!("{dp}, after direct traffic"));
    for (k, node) in Node::BOTH.into_iter().enumerate() {
        assert!(
            redirected(&b, node) > before[k],
            "{dp}: {node} redirected none of the direct traffic"
        );
    }
}

fn missing_wire_neighbour_takes_the_kernel_path(dp: Datapath) {
    check_missing_neighbour(&meshed(dp, 1), Some(dp));
}

/// A flow born on the kernel path (IPv4) with kube-proxy's INVALID drop on both nodes: attach
/// on node 1, then node 2, detach node 1, then node 2, each under 16 MiB of checked bytes. The
/// flow rule keeps it on the kernel path all along (nothing redirected).
fn kernel_born_flow_survives_attach_and_detach_on_either_node(dp: Datapath) {
    let b = TwoNodes::up(1);
    for node in Node::BOTH {
        b.kube_proxy_forward(node);
    }
    let flow = start_flow(&b, false);
    flow.phase(T_FLOW, "on the kernel path");
    b.attach_fast_path(N1, dp);
    let n1_attached = redirected(&b, N1);
    flow.phase(T_FLOW, "after attaching on node 1");
    b.attach_fast_path(N2, dp);
    let n2_attached = redirected(&b, N2);
    flow.phase(T_FLOW, "after attaching on node 2");
    // Nothing else runs on the bench: whatever either node redirected was this flow's.
    let redirected_while_attached = [
        redirected(&b, N1) - n1_attached,
        redirected(&b, N2) - n2_attached,
    ];
    let kernel_path = [b.all_stats(N1), b.all_stats(N2)].map(|s| kernel_path_packets(&s));
    b.detach_fast_path(N1);
    flow.phase(T_FLOW, "after detaching on node 1");
    b.detach_fast_path(N2);
    flow.phase(T_FLOW, "after detaching on node 2");
    flow.finish_complete(&dp.to_string());
    assert_eq!(
        redirected_while_attached,
        [0, 0],
        "{dp}: a kernel-born flow took the fast path (packets redirected on node 1, node 2)"
    );
    assert!(
        kernel_path.iter().all(|&k| k > 0),
        "{dp}: the flow's segments did not meet the datapath on both nodes: {kernel_path:?}"
    );
}

/// A flow born on the fast path (IPv6) with kube-proxy's INVALID drop on both nodes: detach on
/// node 2, then node 1 (conntrack picks the flow up mid-stream), attach again on node 1, then
/// node 2, detach both; each step under 16 MiB of checked bytes.
fn fast_path_born_flow_survives_detach_and_attach_on_either_node(dp: Datapath) {
    let b = TwoNodes::up(1);
    for node in Node::BOTH {
        b.kube_proxy_forward(node);
        b.attach_fast_path(node, dp);
    }
    let flow = start_flow(&b, true);
    flow.phase(T_FLOW, "on the fast path");
    for node in Node::BOTH {
        assert!(
            redirected(&b, node) > 0,
            "{dp}: the flow was not fast-pathed on {node}"
        );
    }
    b.detach_fast_path(N2);
    flow.phase(T_FLOW, "after detaching on node 2");
    b.detach_fast_path(N1);
    flow.phase(T_FLOW, "after detaching on node 1");
    b.attach_fast_path(N1, dp);
    flow.phase(T_FLOW, "after attaching again on node 1");
    b.attach_fast_path(N2, dp);
    flow.phase(T_FLOW, "after attaching again on node 2");
    for node in Node::BOTH {
        b.detach_fast_path(node);
    }
    flow.phase(T_FLOW, "after detaching both");
    flow.finish_complete(&dp.to_string());
}

// =============================================================================================
// Shared pieces
// =============================================================================================

/// `node`'s counters while a datapath is attached (`dp` given), else nothing to read.
fn snapshot(b: &TwoNodes, dp: Option<Datapath>, node: Node) -> Option<Stats> {
    dp.map(|_| b.all_stats(node))
}

type Stats = std::collections::BTreeMap<String, (u64, u64)>;

/// With a datapath: between the two snapshots nothing was redirected and something was counted
/// as going to the kernel.
#[track_caller]
fn assert_kernel_path(before: Option<Stats>, after: Option<Stats>, what: &str) {
    if let (Some(before), Some(after)) = (before, after) {
        assert_eq!(
            after.get("redirected"),
            before.get("redirected"),
            "{what}: redirected ({})",
            stats_growth(&before, &after)
        );
        assert!(
            kernel_path_packets(&after) > kernel_path_packets(&before),
            "{what}: not counted as going to the kernel ({})",
            stats_growth(&before, &after)
        );
    }
}

fn label(dp: Option<Datapath>) -> String {
    dp.map_or_else(|| "kernel path".to_string(), |d| d.to_string())
}

/// Frames written onto the wire at node 2's end, received by node 1, whose FORWARD drops pod
/// traffic and sources in 10.244.3.0/24 and fd00::3:0/112. A datagram from a remote meshed pod
/// address is delivered past the DROP by the fast path (so the injection reaches it), and meets
/// the DROP on the kernel path. One whose source is node 1's own pod 2, or an address in no
/// remote CIDR, goes to the kernel either way: not delivered, counted once by the DROP.
fn check_spoofed_sources(b: &TwoNodes, dp: Option<Datapath>) {
    let what = label(dp);
    b.drop_pod_forwarding(N1);
    b.drop_forwarding_from(N1, "10.244.3.0/24");
    b.drop_forwarding_from(N1, "fd00::3:0/112");
    let dst = Pod::new(N1, 1);
    for v6 in [false, true] {
        let f = fam(v6);
        let sink = UdpSink::bind(&b.pod_ns(dst), dst.addr(v6), 0);
        let frame = |src: IpAddr, tag: &str| wire_udp(N2, src, dst.addr(v6), 64, sink.port, tag);
        let outside_rule = if v6 { "fd00::3:0/112" } else { "10.244.3.0/24" };
        let drops = || (b.forward_drops(N1), b.forward_drops_from(N1, outside_rule));

        let meshed = Pod::new(N2, 1).addr(v6);
        let (before, stats) = (drops(), snapshot(b, dp, N1));
        send(b, N2, &frame(meshed, "meshed"));
        let delivered = sink.expect(&payload("meshed"), T_OK).is_some();
        if let Some(stats) = stats {
            assert!(
                delivered,
                "{what}: {f}: a datagram from a remote meshed pod ({meshed}) was not delivered \
                 past node 1's DROP: {}",
                stats_growth(&stats, &b.all_stats(N1))
            );
            assert!(
                b.all_stats(N1)["redirected"].0 > stats["redirected"].0,
                "{what}: {f}: ... nor redirected"
            );
        } else {
            assert!(!delivered, "{what}: {f}: delivered through node 1's DROP");
            assert_eq!(
                family_delta(before.0, drops().0, v6),
                1,
                "{what}: {f}: the DROP did not count {meshed} once"
            );
        }

        let local = Pod::new(N1, 2).addr(v6);
        let outside: IpAddr = if v6 {
            "fd00::3:9".parse::<Ipv6Addr>().expect("address").into()
        } else {
            Ipv4Addr::new(10, 244, 3, 9).into()
        };
        for (src, tag) in [(local, "local"), (outside, "outside")] {
            let (before, stats) = (drops(), snapshot(b, dp, N1));
            send(b, N2, &frame(src, tag));
            assert!(
                sink.expect(&payload(tag), T_ABSENT).is_none(),
                "{what}: {f}: a spoofed source {src} was delivered"
            );
            let after = drops();
            let met_drop = if tag == "local" {
                family_delta(before.0, after.0, v6)
            } else {
                after.1 - before.1
            };
            assert_eq!(
                met_drop, 1,
                "{what}: {f}: source {src} did not meet node 1's FORWARD DROP once"
            );
            assert_kernel_path(
                stats,
                snapshot(b, dp, N1),
                &format!("{what}: {f}: spoofed source {src}"),
            );
        }
    }
}

/// A datagram from node 2 pod 1 arriving from the wire with TTL (hop limit) 64 is delivered to
/// node 1 pod 1, with TTL 1 it goes to node 1's kernel, which drops it; node 1 pod 1's own
/// datagrams to node 2 pod 1 with TTL 1, 2, 3: only 3 arrives.
fn check_ttl(b: &TwoNodes, dp: Option<Datapath>) {
    let what = label(dp);
    let dst = Pod::new(N1, 1);
    for v6 in [false, true] {
        let f = fam(v6);
        let sink = UdpSink::bind(&b.pod_ns(dst), dst.addr(v6), 0);
        let src = Pod::new(N2, 1).addr(v6);
        send(
            b,
            N2,
            &wire_udp(N2, src, dst.addr(v6), 64, sink.port, "ttl64"),
        );
        assert!(
            sink.expect(&payload("ttl64"), T_OK).is_some(),
            "{what}: {f}: TTL 64 not delivered"
        );
        let stats = snapshot(b, dp, N1);
        send(
            b,
            N2,
            &wire_udp(N2, src, dst.addr(v6), 1, sink.port, "ttl1"),
        );
        assert!(
            sink.expect(&payload("ttl1"), T_ABSENT).is_none(),
            "{what}: {f}: TTL 1 was delivered"
        );
        assert_kernel_path(stats, snapshot(b, dp, N1), &format!("{what}: {f}: TTL 1"));
    }
    check_pod_ttls(b, &what);
}

/// Overlay frames go to the kernel: VXLAN to node 2's wire address reaches a socket in node 2
/// unchanged; IPv4-in-IPv4 and IPv6-in-IPv6 between two pods' addresses meet node 2's FORWARD
/// DROP once.
fn check_overlay_frames(b: &TwoNodes, dp: Option<Datapath>) {
    let what = label(dp);
    for v6 in [false, true] {
        let (sink, frame, inner) = vxlan_to_node(b, v6);
        let stats = snapshot(b, dp, N2);
        send(b, N1, &frame);
        assert_eq!(
            sink.expect(&inner, T_OK).map(|s| s.ip()),
            Some(N1.wire_addr(v6)),
            "{what}: {}: the VXLAN datagram did not reach node 2's socket unchanged",
            fam(v6)
        );
        assert_kernel_path(
            stats,
            snapshot(b, dp, N2),
            &format!("{what}: {} VXLAN", fam(v6)),
        );
    }
    b.drop_pod_forwarding(N2);
    for v6 in [false, true] {
        let (before, stats) = (b.forward_drops(N2), snapshot(b, dp, N2));
        send(b, N1, &tunnel_to_pod(v6));
        assert_eq!(
            family_delta(before, b.forward_drops(N2), v6),
            1,
            "{what}: {}: IP-in-IP to a pod did not meet node 2's FORWARD DROP once",
            fam(v6)
        );
        assert_kernel_path(
            stats,
            snapshot(b, dp, N2),
            &format!("{what}: {} IP-in-IP", fam(v6)),
        );
    }
    b.allow_pod_forwarding(N2);
}

/// Node 1 forgets its neighbour entries on the wire: the first packets to node 2 go to node 1's
/// kernel, which resolves node 2's wire address again; UDP and TCP work.
fn check_missing_neighbour(b: &TwoNodes, dp: Option<Datapath>) {
    let what = label(dp);
    let (from, to) = (Pod::new(N1, 1), Pod::new(N2, 1));
    for v6 in [false, true] {
        let f = fam(v6);
        b.flush_wire_neighbours(N1);
        assert!(
            !b.wire_neighbour_resolved(N1, v6),
            "{what}: {f}: still resolved after the flush: {:?}",
            b.wire_neighbour_state(N1, v6)
        );
        let stats = snapshot(b, dp, N1);
        b.udp_echo(from, to, v6, 5, 200)
            .unwrap_or_else(|e| panic!("{what}: {f}: with no neighbour: {e}"));
        assert!(
            b.wire_neighbour_resolved(N1, v6),
            "{what}: {f}: the neighbour was not resolved again: {:?}",
            b.wire_neighbour_state(N1, v6)
        );
        if let (Some(before), Some(after)) = (stats, snapshot(b, dp, N1)) {
            assert!(
                kernel_path_packets(&after) > kernel_path_packets(&before),
                "{what}: {f}: nothing went to the kernel ({})",
                stats_growth(&before, &after)
            );
        }
        b.tcp_echo(from, to, v6, 64 * 1024)
            .unwrap_or_else(|e| panic!("{what}: {f}: after resolving: {e}"));
    }
}

/// The harness's names, addresses and MACs are the script's: each host veth exists in its node
/// with its MAC, each pod's eth0 has its addresses and MAC, each wire end its own.
fn check_names_and_addresses(b: &TwoNodes) {
    let link = |ns: &str, dev: &str| {
        integration_tests::exec_in_ok(ns, &["ip", "-br", "link", "show", "dev", dev])
    };
    let addrs = |ns: &str, dev: &str| {
        integration_tests::exec_in_ok(ns, &["ip", "-br", "addr", "show", "dev", dev])
    };
    for node in Node::BOTH {
        let ns = b.node_ns(node);
        let wire = link(&ns, node.wire());
        assert!(
            wire.contains(&integration_tests::mac_str(node.wire_mac())),
            "{node}: {wire}"
        );
        let wire_addrs = addrs(&ns, node.wire());
        for a in [node.wire_addr(false), node.wire_addr(true)] {
            assert!(wire_addrs.contains(&a.to_string()), "{node}: {wire_addrs}");
        }
        for pod in b.pods(node) {
            let hv = link(&ns, &b.host_veth(pod));
            assert!(
                hv.contains(&integration_tests::mac_str(pod.host_mac())),
                "{pod}: {hv}"
            );
            let eth0 = link(&b.pod_ns(pod), "eth0");
            assert!(
                eth0.contains(&integration_tests::mac_str(pod.mac())),
                "{pod}: {eth0}"
            );
            let pod_addrs = addrs(&b.pod_ns(pod), "eth0");
            for a in [pod.addr(false), pod.addr(true)] {
                assert!(pod_addrs.contains(&a.to_string()), "{pod}: {pod_addrs}");
            }
        }
    }
}

/// Marker payload of a crafted datagram.
fn payload(tag: &str) -> Vec<u8> {
    format!("xdp-fastpath cross-node {tag}").into_bytes()
}

#[track_caller]
fn send(b: &TwoNodes, from: Node, frame: &[u8]) {
    b.send_on_wire(from, frame)
        .unwrap_or_else(|e| panic!("writing a frame on {from}'s wire end: {e}"));
}

/// An Ethernet frame from `from`'s wire end to the other's, carrying a UDP datagram (checksums
/// right) from `src`:40000 to `dst`:`port` with TTL / hop limit `ttl` and [`payload`]`(tag)`.
fn wire_udp(from: Node, src: IpAddr, dst: IpAddr, ttl: u8, port: u16, tag: &str) -> Vec<u8> {
    let (dmac, smac) = (from.other().wire_mac(), from.wire_mac());
    let data = payload(tag);
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            frame::udp4_frame(dmac, smac, s, d, ttl, 40000, port, &data)
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            frame::udp6_frame(dmac, smac, s, d, ttl, 40000, port, &data)
        }
        _ => panic!("{src} and {dst} are of different families"),
    }
}

/// The growth of one family's counter between two `(IPv4, IPv6)` readings.
fn family_delta(before: (u64, u64), after: (u64, u64), v6: bool) -> u64 {
    if v6 {
        after.1 - before.1
    } else {
        after.0 - before.0
    }
}

/// A UDP sink on node 2's wire address, port 4789, and a frame from node 1's wire end carrying
/// a VXLAN datagram (node 1's wire address to node 2's) whose inner frame is a UDP datagram
/// from node 1 pod 1 to node 2 pod 1; returns the sink, the frame and the VXLAN payload the sink
/// must receive unchanged.
fn vxlan_to_node(b: &TwoNodes, v6: bool) -> (UdpSink, Vec<u8>, Vec<u8>) {
    let sink = UdpSink::bind(&b.node_ns(N2), N2.wire_addr(v6), encap::VXLAN_PORT);
    let (src_pod, dst_pod) = (Pod::new(N1, 1), Pod::new(N2, 1));
    let inner_frame = wire_udp(N1, src_pod.addr(v6), dst_pod.addr(v6), 64, 7, "vxlan inner");
    let inner = encap::vxlan_payload(42, &inner_frame);
    let (dmac, smac) = (N2.wire_mac(), N1.wire_mac());
    let frame = match (N1.wire_addr(v6), N2.wire_addr(v6)) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            frame::udp4_frame(dmac, smac, s, d, 64, 40001, encap::VXLAN_PORT, &inner)
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            frame::udp6_frame(dmac, smac, s, d, 64, 40001, encap::VXLAN_PORT, &inner)
        }
        _ => unreachable!("one family"),
    };
    (sink, frame, inner)
}

/// A frame from node 1's wire end: IP-in-IP (IPv4 protocol 4, or IPv6 next header 41) from node
/// 1 pod 1's address to node 2 pod 1's, around a UDP datagram between the same two.
fn tunnel_to_pod(v6: bool) -> Vec<u8> {
    let (s, d) = (Pod::new(N1, 1), Pod::new(N2, 1));
    let (dmac, smac) = (N2.wire_mac(), N1.wire_mac());
    let data = payload("tunnelled");
    if v6 {
        let inner = frame::ipv6(
            s.v6(),
            d.v6(),
            64,
            frame::IPPROTO_UDP,
            &frame::udp6(s.v6(), d.v6(), 40002, 9, &data),
        );
        encap::ip6ip6_frame(dmac, smac, s.v6(), d.v6(), &inner)
    } else {
        let inner = frame::ipv4(
            s.v4(),
            d.v4(),
            64,
            frame::IPPROTO_UDP,
            &frame::udp4(s.v4(), d.v4(), 40002, 9, &data),
        );
        encap::ipip4_frame(dmac, smac, s.v4(), d.v4(), &inner)
    }
}

/// Node 1 pod 1 sends UDP datagrams to node 2 pod 1 with TTL (hop limit) 1, 2 and 3: 1 dies at
/// node 1, 2 at node 2, 3 arrives.
#[track_caller]
fn check_pod_ttls(b: &TwoNodes, what: &str) {
    let (from, to) = (Pod::new(N1, 1), Pod::new(N2, 1));
    for v6 in [false, true] {
        let sink = UdpSink::bind(&b.pod_ns(to), to.addr(v6), 0);
        let dst = SocketAddr::new(to.addr(v6), sink.port);
        for ttl in 1..=3u32 {
            let tag = format!("pod ttl {ttl}");
            b.send_udp_with_ttl(from, dst, ttl, &payload(&tag))
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            let wait = if ttl == 3 { T_OK } else { T_ABSENT };
            let arrived = sink.expect(&payload(&tag), wait).is_some();
            assert_eq!(
                arrived,
                ttl == 3,
                "{what}: {} TTL {ttl} from {from} to {to}: arrived = {arrived}",
                fam(v6)
            );
        }
    }
}

/// The Services of the DNAT tests: on both nodes (as kube-proxy installs every Service
/// everywhere), `A` to node 2 pod 1 and `B` to node 1 pod 1, TCP 80 -> 8080 and UDP 53 ->
/// 5353, in both families. The addresses stay inside the test ranges (10.244.96.0/24,
/// fd00::96:0/112: no pod CIDR, routed nowhere).
fn services() -> Vec<Service> {
    let mut out = Vec::new();
    for v6 in [false, true] {
        for (name, backend, host) in [("A", Pod::new(N2, 1), 0x80u8), ("B", Pod::new(N1, 1), 0x81)]
        {
            for (proto, port, target_port, offset) in
                [(Proto::Tcp, 80, 8080, 0u8), (Proto::Udp, 53, 5353, 0x10)]
            {
                let vip: IpAddr = if v6 {
                    Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0x96, u16::from(host + offset)).into()
                } else {
                    Ipv4Addr::new(10, 244, 96, host + offset).into()
                };
                out.push(Service {
                    name: format!("{name}-{}", proto.name().to_uppercase()),
                    vip,
                    port,
                    proto,
                    backend,
                    target_port,
                });
            }
        }
    }
    out
}

/// The client of a Service in these tests: pod 2 of the node that does not host the backend,
/// so that the DNAT happens on the client's node and the backend is across the wire.
fn client_of(svc: &Service) -> Pod {
    Pod::new(svc.backend.node.other(), 2)
}

fn install_services(b: &TwoNodes) {
    for node in Node::BOTH {
        for svc in services() {
            b.add_service(node, &svc);
        }
    }
}

/// Every Service from its client, three times each: TCP echo (20,000 bytes), UDP exchange
/// (connected socket), the client's own address seen by the backend.
#[track_caller]
fn check_services(b: &TwoNodes, what: &str) {
    for round in 0..3 {
        for svc in services() {
            let client = client_of(&svc);
            let r = match svc.proto {
                Proto::Tcp => b.service_tcp_echo(client, &svc, 20_000, T_OK),
                Proto::Udp => b.service_udp_echo(client, &svc, 3, T_OK),
            };
            r.unwrap_or_else(|e| {
                panic!(
                    "{what}, round {round}: Service {} ({}) from {client} to {} via DNAT on {}: {e}",
                    svc.name,
                    svc.dial(),
                    svc.backend,
                    client.node
                )
            });
        }
    }
}

// Hitless: a long TCP flow, every byte checked (as in node_safety.rs).

/// 32 KiB every 2 ms: about 16 MB/s each way.
const CHUNK: usize = 32 * 1024;
const INTERVAL: Duration = Duration::from_millis(2);
const T_FLOW: Duration = Duration::from_secs(10);

/// A flow from node 1 pod 1 to node 2 pod 1.
fn start_flow(b: &TwoNodes, v6: bool) -> TcpFlow {
    let (from, to) = (Pod::new(N1, 1), Pod::new(N2, 1));
    TcpFlow::start(
        &b.pod_ns(from),
        &b.pod_ns(to),
        to.addr(v6),
        CHUNK,
        INTERVAL,
        T_FLOW,
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

// =============================================================================================
// Bad input to the cross-node CLI.
// =============================================================================================

mod cli {
    use super::*;

    /// Every misuse of `attach --uplink` and `remote` is one clean error line naming the
    /// problem, and changes nothing.
    #[test]
    #[ignore = "needs root: run scripts/test.sh"]
    fn uplink_and_remote_bad_input_fails_cleanly() {
        require_root!();
        let b = TwoNodes::up(1);
        let ctl = b.xdp_ctl(N1);
        let veth = b.host_veth(Pod::new(N1, 1));
        let fails = |args: &[&str], code: i32, mentions: &str| {
            let out = ctl.run(args);
            assert_eq!(out.code(), Some(code), "{args:?}: {out}");
            assert_clean_failure(&out, Some(mentions));
        };
        // Nothing attached yet.
        fails(
            &["remote", "add", "10.244.2.0/24"],
            1,
            "nothing is attached",
        );
        fails(
            &["remote", "del", "10.244.2.0/24"],
            1,
            "nothing is attached",
        );
        assert!(
            ctl.run_ok(&["remote", "list"]).stdout.contains("PREFIX"),
            "remote list with nothing attached is an empty table"
        );
        // Usage errors.
        fails(&["remote", "add", "10.244.2.1/24"], 2, "host bits");
        fails(&["remote", "add", "not-an-address"], 2, "not-an-address");
        fails(&["attach", "--uplink"], 2, "--uplink");
        // An uplink needs an Ethernet address; an unknown one is named.
        fails(
            &["attach", "--datapath", "tc", "--uplink", "lo"],
            1,
            "Ethernet",
        );
        fails(&["attach", "--uplink", "nosuchif0"], 1, "nosuchif0");
        // A pod veth is not an uplink, and an uplink is not a pod veth.
        ctl.run_ok(&["attach", "--datapath", "tc", &veth, "--uplink", "up1"]);
        fails(
            &["attach", "--datapath", "tc", "--uplink", &veth],
            1,
            "detach it first",
        );
        fails(&["attach", "--datapath", "tc", "up1"], 1, "detach it first");
        fails(
            &["remote", "add", "10.244.2.0/24", "--via", &veth],
            1,
            "not an attached uplink",
        );
        fails(&["remote", "del", "10.244.2.0/24"], 1, "no remote prefix");
        // What the failures left: the two attachments, no remote prefix.
        let status = ctl.json(&["status"]);
        let roles: Vec<String> = status["interfaces"]
            .as_array()
            .expect("interfaces")
            .iter()
            .map(|i| {
                format!(
                    "{}:{}",
                    i["name"].as_str().unwrap_or("?"),
                    i["role"].as_str().unwrap_or("?")
                )
            })
            .collect();
        assert_eq!(
            roles,
            [format!("{veth}:pod"), "up1:uplink".to_string()],
            "{status}"
        );
        assert_eq!(status["remote_prefixes"], 0, "{status}");
        // And the good path: a prefix bound to the uplink, listed, removed.
        ctl.run_ok(&["remote", "add", "10.244.2.0/24", "--via", "up1"]);
        ctl.run_ok(&["remote", "add", "10.244.2.128/25", "--not-meshed"]);
        let list = ctl.json(&["remote", "list"]);
        let remotes = list["remotes"].as_array().expect("remotes");
        assert_eq!(remotes.len(), 2, "{list}");
        assert_eq!(remotes[0]["prefix"], "10.244.2.0/24", "{list}");
        assert_eq!(remotes[0]["meshed"], true, "{list}");
        assert_ne!(remotes[0]["uplink"], 0, "{list}");
        assert_eq!(remotes[1]["meshed"], false, "{list}");
        ctl.run_ok(&["remote", "del", "10.244.2.128/25"]);
        assert_eq!(
            ctl.json(&["remote", "list"])["remotes"]
                .as_array()
                .map(Vec::len),
            Some(1)
        );
        let out = ctl.run_ok(&["detach", "up1"]);
        assert!(out.stdout.contains("up1"), "{out}");
    }
}
