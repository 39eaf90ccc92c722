//! The two-node bench of issue 12: two node namespaces, each a routed pod node like the one of
//! [`Bench`](crate::Bench), joined by a veth pair as the wire, with native routing (each node
//! routes the other's pod CIDR via the other's wire address, as Calico BGP, flannel host-gw or
//! kindnet do). Built by `scripts/bench-netns.sh up N --nodes 2`, torn down on drop.
//!
//! ```text
//!  PREFIX-n1pod<i>                 PREFIX-node1                       PREFIX-node2                  PREFIX-n2pod<i>
//!  eth0 10.244.1.<i>/32  <-veth->  PREFIX1h<i>     up1 10.244.255.1/30 <-wire-> up2 .2/30   PREFIX2h<i>  <-veth->  eth0 10.244.2.<i>/32
//!       fd00::1:<i>/128            /32, /128 routes  fd00::ff:1/112            fd00::ff:2/112  routes       fd00::2:<i>/128
//!                                  10.244.2.0/24 via 10.244.255.2     10.244.1.0/24 via 10.244.255.1
//!                                  fd00::2:0/112 via fd00::ff:2       fd00::1:0/112 via fd00::ff:1
//! ```
//!
//! Both wire ends have tx checksumming off (the kernel completes checksums before the wire, as a
//! NIC that fills them in hardware delivers full ones) and GRO on (frames XDP redirects into a
//! veth need NAPI at the receiver). rp_filter is 0 in both nodes, so what reaches FORWARD is
//! decided by the rules a test installs. Each node has resolved the other's wire address when
//! [`TwoNodes::up`] returns, as on a real node.
//!
//! The fast path across nodes is driven through the `xdp-ctl` CLI of issue 12 (`attach
//! --uplink`, `remote add|del|list`, `run --uplink --remote-meshed-cidr`).

use std::{
    collections::BTreeMap,
    fmt, io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    os::fd::AsRawFd,
    path::PathBuf,
    sync::atomic::Ordering,
    time::Duration,
};

use serde_json::Value;

use crate::{
    base36, bench_netns, bench_netns_up, exec_in_ok, forward_drop_hits, in_netns, join,
    kube_proxy_forward_in, run_args, send_frame, tcp_echo_via, udp_echo_via, CmdOutput, Controller,
    Datapath, Transfer, XdpCtl, BENCH_COUNTER,
};

/// One of the two nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Node {
    One,
    Two,
}

impl Node {
    pub const BOTH: [Node; 2] = [Node::One, Node::Two];

    /// 1 or 2: the third octet of its pod CIDR, the digit in its names.
    pub fn number(self) -> u8 {
        match self {
            Node::One => 1,
            Node::Two => 2,
        }
    }

    #[must_use]
    pub fn other(self) -> Node {
        match self {
            Node::One => Node::Two,
            Node::Two => Node::One,
        }
    }

    /// Its pod CIDR, IPv4: `10.244.<n>.0/24`.
    pub fn pod_cidr_v4(self) -> &'static str {
        match self {
            Node::One => "10.244.1.0/24",
            Node::Two => "10.244.2.0/24",
        }
    }

    /// Its pod CIDR, IPv6: `fd00::<n>:0/112`.
    pub fn pod_cidr_v6(self) -> &'static str {
        match self {
            Node::One => "fd00::1:0/112",
            Node::Two => "fd00::2:0/112",
        }
    }

    /// Its pod CIDR of one family.
    pub fn pod_cidr(self, v6: bool) -> &'static str {
        if v6 {
            self.pod_cidr_v6()
        } else {
            self.pod_cidr_v4()
        }
    }

    /// Its end of the wire (`up1`, `up2`), in its namespace.
    pub fn wire(self) -> &'static str {
        match self {
            Node::One => "up1",
            Node::Two => "up2",
        }
    }

    /// The address of its wire end: 10.244.255.<n>/30.
    pub fn wire_v4(self) -> Ipv4Addr {
        Ipv4Addr::new(10, 244, 255, self.number())
    }

    /// The address of its wire end: fd00::ff:<n>/112.
    pub fn wire_v6(self) -> Ipv6Addr {
        Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0xff, u16::from(self.number()))
    }

    pub fn wire_addr(self, v6: bool) -> IpAddr {
        if v6 {
            self.wire_v6().into()
        } else {
            self.wire_v4().into()
        }
    }

    /// The MAC of its wire end: 02:00:00:ff:00:0<n>.
    pub fn wire_mac(self) -> [u8; 6] {
        [2, 0, 0, 0xff, 0, self.number()]
    }
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node {}", self.number())
    }
}

/// Pod `index` of `node`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pod {
    pub node: Node,
    pub index: u32,
}

impl Pod {
    pub const fn new(node: Node, index: u32) -> Pod {
        Pod { node, index }
    }

    /// 10.244.<node>.<index>.
    pub fn v4(self) -> Ipv4Addr {
        Ipv4Addr::new(
            10,
            244,
            self.node.number(),
            u8::try_from(self.index).expect("pod index fits a byte"),
        )
    }

    /// fd00::<node>:<index in hex>.
    pub fn v6(self) -> Ipv6Addr {
        Ipv6Addr::new(
            0xfd00,
            0,
            0,
            0,
            0,
            0,
            u16::from(self.node.number()),
            u16::try_from(self.index).expect("pod index fits 16 bits"),
        )
    }

    pub fn addr(self, v6: bool) -> IpAddr {
        if v6 {
            self.v6().into()
        } else {
            self.v4().into()
        }
    }

    /// MAC of its eth0: 02:00:0<node>:00:HH:LL.
    pub fn mac(self) -> [u8; 6] {
        let [_, _, hi, lo] = self.index.to_be_bytes();
        [2, 0, self.node.number(), 0, hi, lo]
    }

    /// MAC of its host-side veth: 02:00:0<node>:01:HH:LL.
    pub fn host_mac(self) -> [u8; 6] {
        let [_, _, hi, lo] = self.index.to_be_bytes();
        [2, 0, self.node.number(), 1, hi, lo]
    }
}

impl fmt::Display for Pod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} pod {}", self.node, self.index)
    }
}

/// Transport protocol of a [`Service`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// A Service as kube-proxy (iptables mode) renders it on a node: `KUBE-SERVICES` from nat
/// PREROUTING, `-d VIP -p PROTO --dport PORT -j KUBE-SVC-NAME`, `KUBE-SVC-NAME -j KUBE-SEP-NAME`
/// (one endpoint: the `-m statistic` split reduces to a jump), `KUBE-SEP-NAME -p PROTO -j DNAT
/// --to-destination BACKEND:TARGET_PORT`. No SNAT: the backend sees the client's own address.
#[derive(Debug, Clone)]
pub struct Service {
    /// Suffix of its chains (letters, digits, `-`), unique per node and family.
    pub name: String,
    pub vip: IpAddr,
    pub port: u16,
    pub proto: Proto,
    pub backend: Pod,
    pub target_port: u16,
}

impl Service {
    /// The address clients dial.
    pub fn dial(&self) -> SocketAddr {
        SocketAddr::new(self.vip, self.port)
    }

    /// The address the backend listens on.
    pub fn listen(&self) -> SocketAddr {
        SocketAddr::new(self.backend.addr(self.vip.is_ipv6()), self.target_port)
    }
}

/// The two-node bench (see the module doc). Dropping it detaches the fast path on both nodes,
/// removes both pin directories and deletes every namespace, also when the test panicked.
pub struct TwoNodes {
    prefix: String,
    pods: u32,
}

/// Bound for exchanges that must succeed.
pub const T_OK: Duration = Duration::from_secs(5);

impl TwoNodes {
    /// Builds the bench with `pods` pods per node (1..=254).
    #[track_caller]
    pub fn up(pods: u32) -> TwoNodes {
        Self::up_with_rules(pods, 0)
    }

    /// Like [`TwoNodes::up`], with `rules` never-matching FORWARD rules in each node.
    #[track_caller]
    pub fn up_with_rules(pods: u32, rules: u32) -> TwoNodes {
        assert!((1..=254).contains(&pods), "pods per node must be 1..254");
        let n = BENCH_COUNTER.fetch_add(1, Ordering::Relaxed);
        // "xw" + 5 + 2 base36 chars = 9; + node digit + "h" + up to 3 digits = 14 <= 15. "xw",
        // not the one-node bench's "xt": the two layouts never share a prefix.
        let prefix = format!("xw{}{}", base36(std::process::id(), 5), base36(n % 1296, 2));
        let bench = TwoNodes { prefix, pods };
        bench_netns_up(&bench.prefix, pods, rules, &["--nodes", "2"]);
        bench
    }

    fn script_cmd(&self, args: &[&str]) -> io::Result<CmdOutput> {
        bench_netns(&self.prefix, args)
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Pods per node.
    pub fn pods_per_node(&self) -> u32 {
        self.pods
    }

    /// Pod `index` of `node` (checked to exist).
    #[track_caller]
    pub fn pod(&self, node: Node, index: u32) -> Pod {
        assert!(
            (1..=self.pods).contains(&index),
            "{node} has pods 1..={}, not {index}",
            self.pods
        );
        Pod::new(node, index)
    }

    /// Every pod of `node`.
    pub fn pods(&self, node: Node) -> Vec<Pod> {
        (1..=self.pods).map(|i| Pod::new(node, i)).collect()
    }

    pub fn node_ns(&self, node: Node) -> String {
        format!("{}-node{}", self.prefix, node.number())
    }

    pub fn pod_ns(&self, pod: Pod) -> String {
        format!("{}-n{}pod{}", self.prefix, pod.node.number(), pod.index)
    }

    /// The pod's host-side veth, in its node's namespace: `PREFIX<node>h<i>`.
    pub fn host_veth(&self, pod: Pod) -> String {
        format!("{}{}", self.iface_prefix(pod.node), pod.index)
    }

    /// The host veths of every pod of `node`.
    pub fn host_veths(&self, node: Node) -> Vec<String> {
        self.pods(node)
            .into_iter()
            .map(|p| self.host_veth(p))
            .collect()
    }

    /// `--iface-prefix` matching exactly `node`'s host veths: `PREFIX<node>` + `h`.
    pub fn iface_prefix(&self, node: Node) -> String {
        format!("{}{}h", self.prefix, node.number())
    }

    /// `node`'s own bpffs pin directory (not created by the harness).
    pub fn pin_dir(&self, node: Node) -> PathBuf {
        PathBuf::from(format!(
            "/sys/fs/bpf/xfp-test-{}-n{}",
            self.prefix,
            node.number()
        ))
    }

    /// `xdp-ctl` bound to `node` (`--pin-dir` its pin dir, `--netns` its namespace).
    pub fn xdp_ctl(&self, node: Node) -> XdpCtl {
        XdpCtl::new(self.pin_dir(node), Some(self.node_ns(node)))
    }

    /// Runs a command in `node`'s namespace, panicking on failure; returns stdout.
    #[track_caller]
    pub fn node_exec(&self, node: Node, args: &[&str]) -> String {
        exec_in_ok(&self.node_ns(node), args)
    }

    /// Runs a command in the pod's namespace, panicking on failure; returns stdout.
    #[track_caller]
    pub fn pod_exec(&self, pod: Pod, args: &[&str]) -> String {
        exec_in_ok(&self.pod_ns(pod), args)
    }

    // -----------------------------------------------------------------------------------------
    // Netfilter

    /// kube-proxy's `KUBE-FORWARD` (INVALID drop, RELATED,ESTABLISHED accept, be_liberal=0)
    /// first in `node`'s FORWARD chains, as [`Bench::kube_proxy_forward`](crate::Bench).
    #[track_caller]
    pub fn kube_proxy_forward(&self, node: Node) {
        kube_proxy_forward_in(&self.node_ns(node));
    }

    /// Inserts FORWARD DROP rules at the top of `node`'s iptables and ip6tables FORWARD chains
    /// for traffic between the two pod CIDRs (either direction, and within one): the kernel
    /// path of that node can no longer forward pod traffic, only the fast path can.
    #[track_caller]
    pub fn drop_pod_forwarding(&self, node: Node) {
        self.pod_forwarding_drop(node, true);
    }

    /// Deletes the rules of [`TwoNodes::drop_pod_forwarding`].
    #[track_caller]
    pub fn allow_pod_forwarding(&self, node: Node) {
        self.pod_forwarding_drop(node, false);
    }

    #[track_caller]
    fn pod_forwarding_drop(&self, node: Node, on: bool) {
        for v6 in [false, true] {
            let both = format!("{},{}", Node::One.pod_cidr(v6), Node::Two.pod_cidr(v6));
            let tool = if v6 { "ip6tables" } else { "iptables" };
            let mut args = vec![tool];
            if on {
                args.extend(["-I", "FORWARD", "1"]);
            } else {
                args.extend(["-D", "FORWARD"]);
            }
            // iptables expands the lists into one rule per (source, destination) pair.
            args.extend(["-s", &both, "-d", &both, "-j", "DROP"]);
            self.node_exec(node, &args);
        }
    }

    /// Packets that hit `node`'s rules of [`TwoNodes::drop_pod_forwarding`]: (IPv4, IPv6).
    #[track_caller]
    pub fn forward_drops(&self, node: Node) -> (u64, u64) {
        let hits = |v6: bool| -> u64 {
            let tool = if v6 {
                "ip6tables-save"
            } else {
                "iptables-save"
            };
            let mut sum = 0;
            for s in Node::BOTH {
                for d in Node::BOTH {
                    let needle = format!("-s {} -d {} -j DROP", s.pod_cidr(v6), d.pod_cidr(v6));
                    sum += forward_drop_hits(&self.node_ns(node), tool, &needle);
                }
            }
            sum
        };
        (hits(false), hits(true))
    }

    /// Inserts a FORWARD DROP rule at the top of `node`'s chain (iptables or ip6tables, from
    /// the family of `src`) for packets from `src` (an address or CIDR) to anywhere.
    #[track_caller]
    pub fn drop_forwarding_from(&self, node: Node, src: &str) {
        let tool = if src.contains(':') {
            "ip6tables"
        } else {
            "iptables"
        };
        self.node_exec(node, &[tool, "-I", "FORWARD", "1", "-s", src, "-j", "DROP"]);
    }

    /// Packets that hit `node`'s rule of [`TwoNodes::drop_forwarding_from`] for `src`, which
    /// must be written as `-save` prints it (a CIDR, e.g. `10.244.3.0/24`).
    #[track_caller]
    pub fn forward_drops_from(&self, node: Node, src: &str) -> u64 {
        let tool = if src.contains(':') {
            "ip6tables-save"
        } else {
            "iptables-save"
        };
        let needle = format!("-A FORWARD -s {src} -j DROP");
        forward_drop_hits(&self.node_ns(node), tool, &needle)
    }

    /// Installs `svc` in `node`'s nat table in kube-proxy's shape (see [`Service`]); the
    /// `KUBE-SERVICES` chain and its PREROUTING jump are created with the first Service of a
    /// family.
    #[track_caller]
    pub fn add_service(&self, node: Node, svc: &Service) {
        let v6 = svc.vip.is_ipv6();
        assert_eq!(
            v6,
            svc.listen().is_ipv6(),
            "a Service and its backend share a family"
        );
        let ipt = if v6 { "ip6tables" } else { "iptables" };
        let ns = self.node_ns(node);
        let nat = |args: &[&str]| {
            let mut v = vec![ipt, "-t", "nat"];
            v.extend_from_slice(args);
            exec_in_ok(&ns, &v);
        };
        let exists = run_args(&[
            "ip",
            "netns",
            "exec",
            &ns,
            ipt,
            "-t",
            "nat",
            "-S",
            "KUBE-SERVICES",
        ])
        .success();
        if !exists {
            nat(&["-N", "KUBE-SERVICES"]);
            nat(&["-A", "PREROUTING", "-j", "KUBE-SERVICES"]);
        }
        let (chain_svc, chain_sep) = (
            format!("KUBE-SVC-{}", svc.name),
            format!("KUBE-SEP-{}", svc.name),
        );
        let plen = if v6 { 128 } else { 32 };
        let proto = svc.proto.name();
        nat(&["-N", &chain_svc]);
        nat(&["-N", &chain_sep]);
        nat(&[
            "-A",
            "KUBE-SERVICES",
            "-d",
            &format!("{}/{plen}", svc.vip),
            "-p",
            proto,
            "--dport",
            &svc.port.to_string(),
            "-j",
            &chain_svc,
        ]);
        nat(&["-A", &chain_svc, "-j", &chain_sep]);
        nat(&[
            "-A",
            &chain_sep,
            "-p",
            proto,
            "-j",
            "DNAT",
            "--to-destination",
            &svc.listen().to_string(),
        ]);
    }

    // -----------------------------------------------------------------------------------------
    // Traffic

    /// TCP echo of `len` checked bytes from pod `from` to a listener on pod `to` (address of
    /// the family `v6`), bounded by [`T_OK`] per step. Checks that the server saw `from`'s own
    /// address (no NAT on the way).
    pub fn tcp_echo(&self, from: Pod, to: Pod, v6: bool, len: usize) -> Result<Transfer, String> {
        self.tcp_echo_within(from, to, v6, len, T_OK)
    }

    /// [`TwoNodes::tcp_echo`] bounded by `timeout` (short, for paths expected to be blocked).
    pub fn tcp_echo_within(
        &self,
        from: Pod,
        to: Pod,
        v6: bool,
        len: usize,
        timeout: Duration,
    ) -> Result<Transfer, String> {
        let t = tcp_echo_via(
            &self.pod_ns(from),
            &self.pod_ns(to),
            SocketAddr::new(to.addr(v6), 0),
            None,
            len,
            timeout,
        )?;
        check_source(&t, from.addr(v6))?;
        Ok(t)
    }

    /// UDP echo of `count` checked datagrams of `size` bytes from pod `from` to pod `to` (the
    /// client's socket is connected), bounded by [`T_OK`]. Checks the source the server saw.
    pub fn udp_echo(
        &self,
        from: Pod,
        to: Pod,
        v6: bool,
        count: u32,
        size: usize,
    ) -> Result<Transfer, String> {
        self.udp_echo_within(from, to, v6, count, size, T_OK)
    }

    /// [`TwoNodes::udp_echo`] bounded by `timeout`.
    pub fn udp_echo_within(
        &self,
        from: Pod,
        to: Pod,
        v6: bool,
        count: u32,
        size: usize,
        timeout: Duration,
    ) -> Result<Transfer, String> {
        let t = udp_echo_via(
            &self.pod_ns(from),
            &self.pod_ns(to),
            SocketAddr::new(to.addr(v6), 0),
            None,
            count,
            size,
            timeout,
        )?;
        check_source(&t, from.addr(v6))?;
        Ok(t)
    }

    /// TCP and UDP echoes (payload checked, the client's own address seen by the server) from
    /// `from` to `to` in both families: 256 KiB over TCP, 20 datagrams of 1,200 bytes.
    pub fn echo_all(&self, from: Pod, to: Pod) -> Result<(), String> {
        for v6 in [false, true] {
            let fam = if v6 { "IPv6" } else { "IPv4" };
            self.tcp_echo(from, to, v6, 256 * 1024)
                .map_err(|e| format!("{fam} TCP {from} -> {to}: {e}"))?;
            self.udp_echo(from, to, v6, 20, 1200)
                .map_err(|e| format!("{fam} UDP {from} -> {to}: {e}"))?;
        }
        Ok(())
    }

    /// TCP echo from pod `client` to a Service (the backend listens on its target port).
    pub fn service_tcp_echo(
        &self,
        client: Pod,
        svc: &Service,
        len: usize,
        timeout: Duration,
    ) -> Result<Transfer, String> {
        let t = tcp_echo_via(
            &self.pod_ns(client),
            &self.pod_ns(svc.backend),
            svc.listen(),
            Some(svc.dial()),
            len,
            timeout,
        )?;
        check_source(&t, client.addr(svc.vip.is_ipv6()))?;
        Ok(t)
    }

    /// UDP echo from pod `client` to a Service, through a connected socket (a reply from any
    /// other source than the Service address is dropped by the socket, as a resolver's is).
    pub fn service_udp_echo(
        &self,
        client: Pod,
        svc: &Service,
        count: u32,
        timeout: Duration,
    ) -> Result<Transfer, String> {
        let t = udp_echo_via(
            &self.pod_ns(client),
            &self.pod_ns(svc.backend),
            svc.listen(),
            Some(svc.dial()),
            count,
            200,
            timeout,
        )?;
        check_source(&t, client.addr(svc.vip.is_ipv6()))?;
        Ok(t)
    }

    /// Sends one UDP datagram from pod `from` to `to` with IP TTL / hop limit `ttl`.
    pub fn send_udp_with_ttl(
        &self,
        from: Pod,
        to: SocketAddr,
        ttl: u32,
        payload: &[u8],
    ) -> Result<(), String> {
        let payload = payload.to_vec();
        join(
            in_netns(&self.pod_ns(from), move || {
                let any: IpAddr = if to.is_ipv4() {
                    Ipv4Addr::UNSPECIFIED.into()
                } else {
                    Ipv6Addr::UNSPECIFIED.into()
                };
                let s = UdpSocket::bind((any, 0)).map_err(|e| format!("bind: {e}"))?;
                if to.is_ipv4() {
                    s.set_ttl(ttl).map_err(|e| format!("IP_TTL: {e}"))?;
                } else {
                    set_hop_limit(&s, ttl).map_err(|e| format!("IPV6_UNICAST_HOPS: {e}"))?;
                }
                s.send_to(&payload, to)
                    .map_err(|e| format!("send to {to}: {e}"))?;
                Ok(())
            }),
            &format!("UDP sender in {from}"),
        )
    }

    /// Writes a raw Ethernet frame onto the wire at `from`'s end (an AF_PACKET socket in its
    /// namespace, on `up<n>`): the other node receives it as it is, any addresses.
    pub fn send_on_wire(&self, from: Node, frame: &[u8]) -> Result<(), String> {
        send_frame(&self.node_ns(from), from.wire(), frame)
    }

    // -----------------------------------------------------------------------------------------
    // Wire neighbours

    /// `node`'s neighbour entry for the other node's wire address: its state (`REACHABLE`,
    /// `STALE`, ...), `None` when there is none.
    #[track_caller]
    pub fn wire_neighbour_state(&self, node: Node, v6: bool) -> Option<String> {
        let peer = node.other().wire_addr(v6).to_string();
        let out = self.node_exec(node, &["ip", "-j", "neigh", "show", "dev", node.wire()]);
        let v: Value = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("`ip -j neigh show` is not JSON ({e}): {out}"));
        v.as_array()?
            .iter()
            .find(|n| n.get("dst").and_then(Value::as_str) == Some(peer.as_str()))
            .and_then(|n| n.get("state")?.as_array()?.first()?.as_str())
            .map(str::to_string)
    }

    /// Whether `node`'s neighbour entry for the other node's wire address is usable (REACHABLE,
    /// STALE, DELAY, PROBE or PERMANENT: what a FIB lookup takes as a next hop's MAC).
    #[track_caller]
    pub fn wire_neighbour_resolved(&self, node: Node, v6: bool) -> bool {
        self.wire_neighbour_state(node, v6).is_some_and(|s| {
            ["REACHABLE", "STALE", "DELAY", "PROBE", "PERMANENT"].contains(&s.as_str())
        })
    }

    /// Forgets `node`'s neighbour entries on its wire end (both families).
    #[track_caller]
    pub fn flush_wire_neighbours(&self, node: Node) {
        for fam in ["-4", "-6"] {
            self.node_exec(node, &["ip", fam, "neigh", "flush", "dev", node.wire()]);
        }
    }

    /// Has each node resolve the other's wire addresses (a ping each, both families).
    #[track_caller]
    pub fn resolve_wire_neighbours(&self) {
        for node in Node::BOTH {
            for v6 in [false, true] {
                let peer = node.other().wire_addr(v6).to_string();
                self.node_exec(node, &["ping", "-q", "-c1", "-W2", &peer]);
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // The fast path (issue 12's CLI)

    /// Attaches the fast path (`datapath`) on `node`: the uplink program on its wire end and
    /// the pod program on its pods' host veths (`xdp-ctl attach --datapath DP --uplink up<n>
    /// VETH...`), both addresses of each pod as meshed endpoints, and the other node's pod
    /// CIDRs as remote meshed CIDRs. Panics with the full output on failure.
    #[track_caller]
    pub fn attach_fast_path(&self, node: Node, datapath: Datapath) {
        let other = node.other();
        self.attach_fast_path_with_remote(
            node,
            datapath,
            &[other.pod_cidr_v4(), other.pod_cidr_v6()],
        );
    }

    /// [`TwoNodes::attach_fast_path`] with `remote` as the remote meshed CIDRs.
    #[track_caller]
    pub fn attach_fast_path_with_remote(&self, node: Node, datapath: Datapath, remote: &[&str]) {
        let ctl = self.xdp_ctl(node);
        let veths = self.host_veths(node);
        let mut args = vec![
            "attach",
            "--datapath",
            datapath.name(),
            "--uplink",
            node.wire(),
        ];
        args.extend(veths.iter().map(String::as_str));
        ctl.run_ok(&args);
        for pod in self.pods(node) {
            let hv = self.host_veth(pod);
            for addr in [pod.v4().to_string(), pod.v6().to_string()] {
                ctl.run_ok(&["endpoint", "add", &addr, "--iface", &hv]);
            }
        }
        for cidr in remote {
            ctl.run_ok(&["remote", "add", cidr]);
        }
    }

    /// `xdp-ctl detach --all` on `node`: uplink, pod veths, pins.
    #[track_caller]
    pub fn detach_fast_path(&self, node: Node) {
        self.xdp_ctl(node).run_ok(&["detach", "--all"]);
    }

    /// `xdp-ctl detach up<n>` on `node`: only the uplink program goes.
    #[track_caller]
    pub fn detach_uplink(&self, node: Node) {
        self.xdp_ctl(node).run_ok(&["detach", node.wire()]);
    }

    /// `xdp-ctl remote list --json` on `node`: the remote meshed CIDRs, sorted. Accepts a list
    /// of CIDR strings or of objects with a `"prefix"` (or `"cidr"`) string, either as the
    /// whole document or under a `"remotes"` (or `"remote"`) key.
    #[track_caller]
    pub fn remote_cidrs(&self, node: Node) -> Vec<String> {
        let v = self.xdp_ctl(node).json(&["remote", "list"]);
        let list = v
            .as_array()
            .or_else(|| v.get("remotes").and_then(Value::as_array))
            .or_else(|| v.get("remote").and_then(Value::as_array))
            .unwrap_or_else(|| panic!("`remote list --json` has no list of CIDRs: {v}"));
        let mut out: Vec<String> = list
            .iter()
            .map(|e| {
                e.as_str()
                    .or_else(|| e.get("prefix").and_then(Value::as_str))
                    .or_else(|| e.get("cidr").and_then(Value::as_str))
                    .unwrap_or_else(|| panic!("`remote list --json`: not a CIDR: {e}"))
                    .to_string()
            })
            .collect();
        out.sort();
        out
    }

    /// Starts `xdp-ctl run` on `node`: its host veths (`--iface-prefix`), its pod CIDRs meshed,
    /// the uplink `up<n>`, the other node's pod CIDRs as remote meshed, `--datapath DP`, then
    /// `extra`. Create it after the bench, so that it is killed before the bench tears down.
    #[track_caller]
    pub fn controller(&self, node: Node, datapath: Datapath, extra: &[&str]) -> Controller {
        let prefix = self.iface_prefix(node);
        let other = node.other();
        let mut args = vec![
            "--iface-prefix",
            prefix.as_str(),
            "--meshed-cidr",
            node.pod_cidr_v4(),
            "--meshed-cidr",
            node.pod_cidr_v6(),
            "--uplink",
            node.wire(),
            "--remote-meshed-cidr",
            other.pod_cidr_v4(),
            "--remote-meshed-cidr",
            other.pod_cidr_v6(),
            "--datapath",
            datapath.name(),
            // Two controllers run at once: no HTTP listener to fight over.
            "--listen",
            "off",
        ];
        args.extend_from_slice(extra);
        Controller::spawn(&self.xdp_ctl(node), &args)
    }

    /// `xdp-ctl stats --json` of `node`: reason -> (packets, bytes).
    #[track_caller]
    pub fn all_stats(&self, node: Node) -> BTreeMap<String, (u64, u64)> {
        self.xdp_ctl(node).stats()
    }

    /// One counter of `node`: (packets, bytes). Panics if `xdp-ctl` does not report it.
    #[track_caller]
    pub fn stats(&self, node: Node, reason: &str) -> (u64, u64) {
        let all = self.all_stats(node);
        match all.get(reason) {
            Some(&v) => v,
            None => panic!(
                "{node}: xdp-ctl stats has no reason {reason:?}; it has {:?}",
                all.keys()
            ),
        }
    }
}

impl Drop for TwoNodes {
    fn drop(&mut self) {
        for node in Node::BOTH {
            let pin_dir = self.pin_dir(node);
            if !pin_dir.exists() {
                continue;
            }
            match self.xdp_ctl(node).try_run(&["detach", "--all"]) {
                Ok(o) if o.success() => {}
                Ok(o) => {
                    eprintln!("two-node teardown: {node}: detach --all failed (continuing): {o}");
                }
                Err(e) => eprintln!("two-node teardown: {node}: {e} (continuing)"),
            }
            if pin_dir.exists() {
                if let Err(e) = std::fs::remove_dir_all(&pin_dir) {
                    eprintln!("two-node teardown: removing {}: {e}", pin_dir.display());
                }
            }
        }
        match self.script_cmd(&["down"]) {
            Ok(o) if o.success() => {}
            Ok(o) => eprintln!("two-node teardown: `down` failed: {o}"),
            Err(e) => eprintln!("two-node teardown: {e}"),
        }
    }
}

/// Packets of every reason but `redirected`: what `stats` counted as going to the kernel.
pub fn kernel_path_packets(stats: &BTreeMap<String, (u64, u64)>) -> u64 {
    stats
        .iter()
        .filter(|(reason, _)| reason.as_str() != "redirected")
        .map(|(_, &(packets, _))| packets)
        .sum()
}

/// The counters that grew from `before` to `after`, for messages: "reason +n, ...".
pub fn stats_growth(
    before: &BTreeMap<String, (u64, u64)>,
    after: &BTreeMap<String, (u64, u64)>,
) -> String {
    let grown: Vec<String> = after
        .iter()
        .filter_map(|(r, &(p, _))| {
            let was = before.get(r).map_or(0, |&(b, _)| b);
            (p > was).then(|| format!("{r} +{}", p - was))
        })
        .collect();
    if grown.is_empty() {
        "nothing grew".to_string()
    } else {
        grown.join(", ")
    }
}

fn check_source(t: &Transfer, want: IpAddr) -> Result<(), String> {
    if t.client_addr.ip() == want {
        Ok(())
    } else {
        Err(format!(
            "the server saw the client as {}, not as its own address {want}",
            t.client_addr
        ))
    }
}

fn set_hop_limit(s: &UdpSocket, hops: u32) -> io::Result<()> {
    let v = libc::c_int::try_from(hops).map_err(io::Error::other)?;
    // SAFETY: a valid socket and a c_int option value of the right size.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_UNICAST_HOPS,
            std::ptr::addr_of!(v).cast(),
            libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>()).expect("small"),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Builders for encapsulated frames (overlays), on top of [`crate::frame`].
pub mod encap {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use crate::frame;

    /// IP protocol numbers of the tunnels built here.
    pub const IPPROTO_IPIP: u8 = 4;
    pub const IPPROTO_IPV6: u8 = 41;
    /// IANA VXLAN port.
    pub const VXLAN_PORT: u16 = 4789;

    /// The VXLAN payload of a UDP datagram: flags (VNI valid), VNI, then the inner frame.
    pub fn vxlan_payload(vni: u32, inner_frame: &[u8]) -> Vec<u8> {
        assert!(vni < 1 << 24, "a VNI has 24 bits");
        let mut v = vec![0x08, 0, 0, 0];
        v.extend_from_slice(&(vni << 8).to_be_bytes());
        v.extend_from_slice(inner_frame);
        v
    }

    /// Ethernet + IPv4 (outer) + IPv4 (inner, `inner_packet` as built by [`frame::ipv4`]).
    pub fn ipip4_frame(
        dst_mac: [u8; 6],
        src_mac: [u8; 6],
        outer_src: Ipv4Addr,
        outer_dst: Ipv4Addr,
        inner_packet: &[u8],
    ) -> Vec<u8> {
        let ip = frame::ipv4(outer_src, outer_dst, 64, IPPROTO_IPIP, inner_packet);
        frame::ethernet(dst_mac, src_mac, frame::ETH_P_IP, &ip)
    }

    /// Ethernet + IPv6 (outer) + IPv6 (inner, `inner_packet` as built by [`frame::ipv6`]).
    pub fn ip6ip6_frame(
        dst_mac: [u8; 6],
        src_mac: [u8; 6],
        outer_src: Ipv6Addr,
        outer_dst: Ipv6Addr,
        inner_packet: &[u8],
    ) -> Vec<u8> {
        let ip = frame::ipv6(outer_src, outer_dst, 64, IPPROTO_IPV6, inner_packet);
        frame::ethernet(dst_mac, src_mac, frame::ETH_P_IPV6, &ip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addressing_matches_the_bench_script() {
        let p = Pod::new(Node::Two, 10);
        assert_eq!(p.v4(), Ipv4Addr::new(10, 244, 2, 10));
        assert_eq!(p.v6().to_string(), "fd00::2:a");
        assert_eq!(crate::mac_str(p.mac()), "02:00:02:00:00:0a");
        assert_eq!(crate::mac_str(p.host_mac()), "02:00:02:01:00:0a");
        assert_eq!(Node::One.wire_v6().to_string(), "fd00::ff:1");
        assert_eq!(Node::Two.wire_v4(), Ipv4Addr::new(10, 244, 255, 2));
        assert_eq!(crate::mac_str(Node::Two.wire_mac()), "02:00:00:ff:00:02");
        for node in Node::BOTH {
            assert_ne!(node, node.other());
            assert_eq!(node.other().other(), node);
        }
    }

    #[test]
    fn stats_helpers() {
        let before: BTreeMap<String, (u64, u64)> = [
            ("redirected".into(), (5, 500)),
            ("no_endpoint".into(), (1, 60)),
        ]
        .into();
        let after: BTreeMap<String, (u64, u64)> = [
            ("redirected".into(), (9, 900)),
            ("no_endpoint".into(), (3, 180)),
        ]
        .into();
        assert_eq!(kernel_path_packets(&after), 3);
        assert_eq!(
            stats_growth(&before, &after),
            "no_endpoint +2, redirected +4"
        );
        assert_eq!(stats_growth(&after, &after), "nothing grew");
    }

    #[test]
    fn vxlan_header() {
        let v = encap::vxlan_payload(0x0012_3456, &[0xaa]);
        assert_eq!(v, [0x08, 0, 0, 0, 0x12, 0x34, 0x56, 0, 0xaa]);
    }
}
