//! Shared harness for the xdp-fastpath integration tests: a network-namespace bench (built by
//! `scripts/bench-netns.sh`, torn down on drop), a driver for the `xdp-ctl` binary, traffic
//! generators that run inside pod namespaces, and a raw-frame sender for crafted frames.
//!
//! Everything happens in namespaces this harness creates; the host's own network settings are
//! never touched. Network-namespace switches are done with `setns(CLONE_NEWNET)` on dedicated
//! threads: that affects only the calling thread, and a socket belongs to the namespace that
//! was current when it was created.

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    fmt,
    fs::File,
    io::{self, Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::{
        fd::AsRawFd,
        unix::{
            fs::PermissionsExt,
            process::{CommandExt, ExitStatusExt},
        },
    },
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
        mpsc, Arc,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use serde_json::Value;

pub mod kube_api;
pub mod twonode;

/// `scripts/bench-netns.sh ARGS --name PREFIX`.
pub fn bench_netns(prefix: &str, args: &[&str]) -> io::Result<CmdOutput> {
    let mut cmd = Command::new(repo_root().join("scripts/bench-netns.sh"));
    cmd.args(args).args(["--name", prefix]);
    try_run(cmd, COMMAND_TIMEOUT)
}

/// `scripts/bench-netns.sh up PODS [--forward-rules RULES] EXTRA... --name PREFIX`, after a
/// `down` (a leftover of a killed earlier run with the same pid would make `up` refuse). Panics
/// with the script's output on failure; `up` cleans up after itself then, and the bench's Drop
/// runs `down` again regardless.
pub fn bench_netns_up(prefix: &str, pods: u32, rules: u32, extra: &[&str]) {
    let _ = bench_netns(prefix, &["down"]);
    let (pods, rules) = (pods.to_string(), rules.to_string());
    let mut args = vec!["up", pods.as_str()];
    if rules != "0" {
        args.extend(["--forward-rules", rules.as_str()]);
    }
    args.extend_from_slice(extra);
    let out = bench_netns(prefix, &args)
        .unwrap_or_else(|e| panic!("bench-netns.sh {}: {e}", args.join(" ")));
    assert!(out.success(), "bench set-up failed: {out}");
}

/// Timeout for helper commands (bench script, ip, iptables, ethtool, xdp-ctl).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(90);

/// True when running with an effective uid of 0.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// For each scenario `fn NAME(dp: Datapath)` listed, generates the tests `xdp::NAME` and
/// `tc::NAME`: one scenario, both datapaths, nothing copied. Like every root-only test they are
/// `#[ignore]`d (reported as ignored by a plain `cargo test`) and fail if run without root
/// (`scripts/test.sh` runs them as root with `--include-ignored`).
#[macro_export]
macro_rules! for_each_datapath {
    ($($scenario:ident),+ $(,)?) => {
        $crate::for_each_datapath!(@module xdp, Xdp, $($scenario),+);
        $crate::for_each_datapath!(@module tc, Tc, $($scenario),+);
    };
    (@module $module:ident, $datapath:ident, $($scenario:ident),+) => {
        mod $module {
            $(
                #[test]
                #[ignore = "needs root: run scripts/test.sh"]
                fn $scenario() {
                    $crate::require_root!();
                    super::$scenario($crate::Datapath::$datapath);
                }
            )+
        }
    };
}

/// Fails the test when not running as root. Root-only tests are also marked
/// `#[ignore = "needs root: run scripts/test.sh"]`, so that a plain `cargo test` reports them as
/// ignored; whoever runs them anyway (`--include-ignored`) without root gets a failure, never a
/// silent pass.
#[macro_export]
macro_rules! require_root {
    () => {
        assert!(
            $crate::is_root(),
            "{}: needs root (network namespaces, XDP, bpffs); run scripts/test.sh as root",
            module_path!()
        );
    };
}

/// Fails the test unless `tool` is on `PATH` (scripts/bootstrap.sh installs every tool the
/// tests use): a check that cannot run is a failure, not a silent pass.
#[track_caller]
pub fn require_tool(tool: &str) {
    assert!(
        run_args(&["sh", "-c", &format!("command -v {tool}")]).success(),
        "{tool} is not installed; run scripts/bootstrap.sh (scripts/test.sh does)"
    );
}

/// The workspace root (this crate lives in `<root>/tests`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests crate has a parent directory")
        .to_path_buf()
}

// ---------------------------------------------------------------------------------------------
// Running commands
// ---------------------------------------------------------------------------------------------

/// Result of a command run by the harness.
#[derive(Debug, Clone)]
pub struct CmdOutput {
    /// The command line, for messages.
    pub cmdline: String,
    /// `None` when the command did not finish within its timeout (it was killed).
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}

impl CmdOutput {
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    /// Exit code, `None` on timeout or death by signal.
    pub fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }

    /// Panics with the full output unless the command succeeded.
    #[track_caller]
    #[must_use]
    pub fn ok(self) -> Self {
        assert!(self.success(), "command failed: {self}");
        self
    }
}

impl fmt::Display for CmdOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = match self.status {
            None => "timed out (killed)".to_string(),
            Some(s) => match (s.code(), s.signal()) {
                (Some(c), _) => format!("exited with code {c}"),
                (None, Some(sig)) => format!("killed by signal {sig}"),
                _ => format!("{s}"),
            },
        };
        write!(
            f,
            "`{}` {status}\n--- stdout ---\n{}--- stderr ---\n{}--------------",
            self.cmdline,
            with_newline(&self.stdout),
            with_newline(&self.stderr)
        )
    }
}

fn with_newline(s: &str) -> String {
    if s.is_empty() || s.ends_with('\n') {
        s.to_string()
    } else {
        format!("{s}\n")
    }
}

fn cmdline_of(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `cmd` with captured output, killing it (and its process group, which it leads) when
/// it runs longer than `timeout`. Errors only when the program cannot be started.
pub fn try_run(mut cmd: Command, timeout: Duration) -> io::Result<CmdOutput> {
    let cmdline = cmdline_of(&cmd);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot run `{cmdline}`: {e}")))?;
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let out_t = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err_t = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let pgid = i32::try_from(child.id()).expect("pid fits i32");
            // SAFETY: signals the process group led by the child we spawned (process_group(0)).
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(5));
    };
    let stdout = String::from_utf8_lossy(&out_t.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&err_t.join().unwrap_or_default()).into_owned();
    Ok(CmdOutput {
        cmdline,
        status,
        stdout,
        stderr,
    })
}

/// Like [`try_run`] with [`COMMAND_TIMEOUT`]; panics when the program cannot be started.
#[track_caller]
pub fn run(cmd: Command) -> CmdOutput {
    match try_run(cmd, COMMAND_TIMEOUT) {
        Ok(o) => o,
        Err(e) => panic!("{e}"),
    }
}

/// Runs a program given as `[program, args...]`.
#[track_caller]
pub fn run_args(args: &[&str]) -> CmdOutput {
    let (prog, rest) = args.split_first().expect("a program to run");
    let mut cmd = Command::new(prog);
    cmd.args(rest);
    run(cmd)
}

/// `ip netns exec NS args...` (fine for ip/iptables/ethtool; never for xdp-ctl, whose pins must
/// live on the host mount namespace's bpffs).
#[track_caller]
pub fn exec_in(ns: &str, args: &[&str]) -> CmdOutput {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]).args(args);
    run(cmd)
}

/// [`exec_in`] that panics with the full output on failure and returns stdout.
#[track_caller]
pub fn exec_in_ok(ns: &str, args: &[&str]) -> String {
    exec_in(ns, args).ok().stdout
}

/// Parses `ethtool -k IFACE` output into feature -> "on"/"off" (the "[fixed]" note dropped).
pub fn parse_ethtool_features(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter(|l| !l.starts_with("Features for"))
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            let v = v.split_whitespace().next()?;
            Some((k.trim().to_string(), v.to_string()))
        })
        .collect()
}

/// Formats a MAC as `aa:bb:cc:dd:ee:ff`.
pub fn mac_str(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

// ---------------------------------------------------------------------------------------------
// The bench
// ---------------------------------------------------------------------------------------------

static BENCH_COUNTER: AtomicU32 = AtomicU32::new(0);

fn base36(mut v: u32, width: usize) -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut s = Vec::new();
    while v > 0 {
        s.push(DIGITS[(v % 36) as usize]);
        v /= 36;
    }
    while s.len() < width {
        s.push(b'0');
    }
    s.reverse();
    String::from_utf8(s).expect("ascii")
}

/// A routed pod bench of `n` pods (DESIGN.md section 1) in namespaces of its own, with its own
/// bpffs pin directory. Pods can be added and removed while it runs ([`Bench::add_pods`],
/// [`Bench::del_pods`]). Dropping it detaches everything and deletes the namespaces (added pods
/// included), also when the test panicked.
pub struct Bench {
    prefix: String,
    /// The pods that exist (1..=n at first).
    live: BTreeSet<u32>,
    pin_dir: PathBuf,
}

impl Bench {
    /// Builds a bench of `pods` pods (`scripts/bench-netns.sh up`).
    #[track_caller]
    pub fn up(pods: u32) -> Bench {
        Self::up_with_rules(pods, 0)
    }

    /// Like [`Bench::up`], with `rules` never-matching FORWARD rules in the node namespace.
    #[track_caller]
    pub fn up_with_rules(pods: u32, rules: u32) -> Bench {
        assert!((1..=9999).contains(&pods), "pods must be 1..9999");
        let n = BENCH_COUNTER.fetch_add(1, Ordering::Relaxed);
        // "xt" + 5 + 2 base36 chars = 9; + "h" + up to 4 digits = 14 <= IFNAMSIZ - 1.
        let prefix = format!("xt{}{}", base36(std::process::id(), 5), base36(n % 1296, 2));
        let bench = Bench {
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/xfp-test-{prefix}")),
            prefix,
            live: (1..=pods).collect(),
        };
        bench_netns_up(&bench.prefix, pods, rules, &[]);
        bench
    }

    fn script_cmd(&self, args: &[&str]) -> io::Result<CmdOutput> {
        bench_netns(&self.prefix, args)
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// How many pods exist now.
    pub fn pods(&self) -> u32 {
        u32::try_from(self.live.len()).expect("at most 9999 pods")
    }

    /// The pods that exist now, in order.
    pub fn live_pods(&self) -> Vec<u32> {
        self.live.iter().copied().collect()
    }

    /// `--iface-prefix` matching exactly this bench's host veths (`PREFIXh<i>`).
    pub fn iface_prefix(&self) -> String {
        format!("{}h", self.prefix)
    }

    /// Adds pods `from..=to` to the running bench (`bench-netns.sh add-pods`), built like the
    /// others; panics with the script's output on failure (the script removes what it made).
    #[track_caller]
    pub fn add_pods(&mut self, from: u32, to: u32) {
        assert!(
            (1..=9999).contains(&from) && from <= to && to <= 9999,
            "pods must be 1..9999 (got {from}..{to})"
        );
        let out = self
            .script_cmd(&["add-pods", &from.to_string(), &to.to_string()])
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(out.success(), "adding pods {from}..{to} failed: {out}");
        self.live.extend(from..=to);
    }

    /// Removes pods `from..=to` from the running bench (`bench-netns.sh del-pods`: each host
    /// veth, with its routes and neighbours, at once; then the pod namespace).
    #[track_caller]
    pub fn del_pods(&mut self, from: u32, to: u32) {
        let out = self
            .script_cmd(&["del-pods", &from.to_string(), &to.to_string()])
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(out.success(), "removing pods {from}..{to} failed: {out}");
        self.live.retain(|i| !(from..=to).contains(i));
    }

    /// Interface name -> ifindex of every link in the node namespace.
    #[track_caller]
    pub fn node_ifindexes(&self) -> BTreeMap<String, u32> {
        let out = run_args(&["ip", "-n", &self.node_ns(), "-j", "link", "show"]).ok();
        let v: Value = serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("`ip -j link show` is not JSON ({e}): {out}"));
        v.as_array()
            .unwrap_or_else(|| panic!("`ip -j link show` is not an array: {out}"))
            .iter()
            .filter_map(|l| {
                let name = l.get("ifname")?.as_str()?.to_string();
                let index = u32::try_from(l.get("ifindex")?.as_u64()?).ok()?;
                Some((name, index))
            })
            .collect()
    }

    pub fn node_ns(&self) -> String {
        format!("{}-node", self.prefix)
    }

    pub fn pod_ns(&self, i: u32) -> String {
        self.check_pod(i);
        format!("{}-pod{i}", self.prefix)
    }

    /// Host-side veth of pod `i`, in the node namespace.
    pub fn host_veth(&self, i: u32) -> String {
        self.check_pod(i);
        format!("{}h{i}", self.prefix)
    }

    pub fn pod_v4(&self, i: u32) -> Ipv4Addr {
        self.check_pod(i);
        Self::v4_of(i)
    }

    /// Address a pod `i` would have (without checking that the bench has it).
    pub fn v4_of(i: u32) -> Ipv4Addr {
        Ipv4Addr::new(10, 244, ((i >> 8) & 0xff) as u8, (i & 0xff) as u8)
    }

    /// Pod `i`'s IPv6 (`v6`) or IPv4 address.
    pub fn pod_addr(&self, i: u32, v6: bool) -> IpAddr {
        if v6 {
            self.pod_v6(i).into()
        } else {
            self.pod_v4(i).into()
        }
    }

    pub fn pod_v6(&self, i: u32) -> Ipv6Addr {
        self.check_pod(i);
        Self::v6_of(i)
    }

    /// IPv6 address a pod `i` would have (without checking that the bench has it).
    pub fn v6_of(i: u32) -> Ipv6Addr {
        Ipv6Addr::new(
            0xfd00,
            0,
            0,
            0,
            0,
            0,
            0,
            u16::try_from(i).expect("pod index fits 16 bits"),
        )
    }

    /// MAC of pod `i`'s eth0.
    pub fn pod_mac(&self, i: u32) -> [u8; 6] {
        self.check_pod(i);
        [2, 0, 0, 0, ((i >> 8) & 0xff) as u8, (i & 0xff) as u8]
    }

    /// MAC of pod `i`'s host-side veth.
    pub fn host_mac(&self, i: u32) -> [u8; 6] {
        self.check_pod(i);
        [2, 0, 0, 1, ((i >> 8) & 0xff) as u8, (i & 0xff) as u8]
    }

    /// The bench's own bpffs pin directory (not created by the harness).
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    fn check_pod(&self, i: u32) {
        assert!(
            self.live.contains(&i),
            "pod {i} does not exist (bench has pods {})",
            ranges(&self.live_pods())
        );
    }

    /// `ip netns exec NS ...`, panicking with the full output on failure.
    #[track_caller]
    pub fn exec_in(&self, ns: &str, args: &[&str]) -> String {
        exec_in_ok(ns, args)
    }

    /// Runs a command in the node namespace, panicking on failure; returns stdout.
    #[track_caller]
    pub fn node_exec(&self, args: &[&str]) -> String {
        exec_in_ok(&self.node_ns(), args)
    }

    /// Runs a command in pod `i`'s namespace, panicking on failure; returns stdout.
    #[track_caller]
    pub fn pod_exec(&self, i: u32, args: &[&str]) -> String {
        exec_in_ok(&self.pod_ns(i), args)
    }

    /// `ethtool -k eth0` of pod `i`, as feature -> "on"/"off".
    #[track_caller]
    pub fn pod_features(&self, i: u32) -> BTreeMap<String, String> {
        parse_ethtool_features(&self.pod_exec(i, &["ethtool", "-k", "eth0"]))
    }

    /// `ip -d link show` of the node namespace (shows `xdp`/`prog/xdp` when a program is on).
    #[track_caller]
    pub fn node_links_detail(&self) -> String {
        run_args(&["ip", "-n", &self.node_ns(), "-d", "link", "show"])
            .ok()
            .stdout
    }

    /// `ip -d link show dev IFACE` in the node namespace.
    #[track_caller]
    pub fn node_link_detail(&self, iface: &str) -> String {
        run_args(&[
            "ip",
            "-n",
            &self.node_ns(),
            "-d",
            "link",
            "show",
            "dev",
            iface,
        ])
        .ok()
        .stdout
    }

    /// `xdp-ctl` bound to this bench (`--pin-dir` and `--netns` always passed).
    pub fn xdp_ctl(&self) -> XdpCtl {
        XdpCtl::new(self.pin_dir.clone(), Some(self.node_ns()))
    }

    /// Inserts FORWARD DROP rules for pod-to-pod traffic (10.244.0.0/16 and fd00::/64) at the
    /// top of the node's iptables and ip6tables FORWARD chains: the kernel path can no longer
    /// deliver pod-to-pod packets, only the fast path can.
    #[track_caller]
    pub fn drop_pod_forwarding(&self) {
        self.pod_forwarding_drop(true);
    }

    /// Deletes the rules of [`Bench::drop_pod_forwarding`]: the kernel path delivers again.
    #[track_caller]
    pub fn allow_pod_forwarding(&self) {
        self.pod_forwarding_drop(false);
    }

    #[track_caller]
    fn pod_forwarding_drop(&self, on: bool) {
        for (tool, net) in [("iptables", "10.244.0.0/16"), ("ip6tables", "fd00::/64")] {
            let mut args = vec![tool];
            if on {
                args.extend(["-I", "FORWARD", "1"]);
            } else {
                args.extend(["-D", "FORWARD"]);
            }
            args.extend(["-s", net, "-d", net, "-j", "DROP"]);
            self.node_exec(&args);
        }
    }

    /// What kube-proxy puts first in the node's FORWARD chain (IPv4 and IPv6): a `KUBE-FORWARD`
    /// chain that DROPs `--ctstate INVALID` and ACCEPTs `RELATED,ESTABLISHED`, with
    /// `nf_conntrack_tcp_be_liberal=0` (the default) and loose pickup on: a flow whose
    /// conntrack entry went stale dies here, as on a real node.
    #[track_caller]
    pub fn kube_proxy_forward(&self) {
        kube_proxy_forward_in(&self.node_ns());
    }

    /// Packets that hit the DROP rules of [`Bench::drop_pod_forwarding`]: (IPv4, IPv6).
    #[track_caller]
    pub fn forward_drops(&self) -> (u64, u64) {
        (
            self.drop_hits("iptables-save", "10.244.0.0/16"),
            self.drop_hits("ip6tables-save", "fd00::/64"),
        )
    }

    /// Inserts (`on`) or deletes FORWARD DROP rules for packets from pod `from` to pod `to`
    /// (IPv4 and IPv6): the kernel path can no longer deliver that direction.
    #[track_caller]
    pub fn drop_forwarding_between(&self, from: u32, to: u32, on: bool) {
        for (tool, src, dst) in [
            (
                "iptables",
                self.pod_v4(from).to_string(),
                self.pod_v4(to).to_string(),
            ),
            (
                "ip6tables",
                self.pod_v6(from).to_string(),
                self.pod_v6(to).to_string(),
            ),
        ] {
            let mut args = vec![tool];
            if on {
                args.extend(["-I", "FORWARD", "1"]);
            } else {
                args.extend(["-D", "FORWARD"]);
            }
            args.extend(["-s", &src, "-d", &dst, "-j", "DROP"]);
            self.node_exec(&args);
        }
    }

    /// Packets that hit the rules of [`Bench::drop_forwarding_between`]: (IPv4, IPv6).
    #[track_caller]
    pub fn forward_drops_between(&self, from: u32, to: u32) -> (u64, u64) {
        (
            self.drop_hits(
                "iptables-save",
                &format!("-s {}/32 -d {}/32", self.pod_v4(from), self.pod_v4(to)),
            ),
            self.drop_hits(
                "ip6tables-save",
                &format!("-s {}/128 -d {}/128", self.pod_v6(from), self.pod_v6(to)),
            ),
        )
    }

    #[track_caller]
    fn drop_hits(&self, tool: &str, needle: &str) -> u64 {
        forward_drop_hits(&self.node_ns(), tool, needle)
    }

    /// `xdp-ctl attach --datapath DP` on the host veths of `pods` (default mode), panicking
    /// with the full output on failure.
    #[track_caller]
    pub fn attach(&self, datapath: Datapath, pods: &[u32]) {
        let veths: Vec<String> = pods.iter().map(|&i| self.host_veth(i)).collect();
        let veths: Vec<&str> = veths.iter().map(String::as_str).collect();
        self.xdp_ctl().attach_ok(datapath, &veths);
    }

    /// Attaches the fast path (`datapath`) to the host veths of `pods` and adds both addresses
    /// of each as meshed endpoints.
    #[track_caller]
    pub fn attach_and_mesh(&self, datapath: Datapath, pods: &[u32]) {
        self.attach(datapath, pods);
        for &i in pods {
            self.add_endpoint(i, true);
        }
    }

    /// Names of the node namespace's links.
    #[track_caller]
    pub fn node_link_names(&self) -> Vec<String> {
        let out = run_args(&["ip", "-n", &self.node_ns(), "-j", "link", "show"]).ok();
        let v: Value = serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("`ip -j link show` is not JSON ({e}): {out}"));
        v.as_array()
            .unwrap_or_else(|| panic!("`ip -j link show` is not an array: {out}"))
            .iter()
            .filter_map(|l| l.get("ifname").and_then(Value::as_str).map(str::to_string))
            .collect()
    }

    /// Programs attached through TCX (ingress and egress) to `iface` of the node namespace.
    #[track_caller]
    pub fn tcx_programs(&self, iface: &str) -> Vec<TcxProgram> {
        tcx_programs(&self.node_ns(), iface).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Every BPF program on a link of the node namespace, one description each: XDP ones (as
    /// `ip -d link` shows them) and TCX ones (`BPF_PROG_QUERY`, which also sees what
    /// `bpftool net` of older bpftool versions does not). Empty when nothing is attached.
    #[track_caller]
    pub fn programs_on_links(&self) -> Vec<String> {
        let mut found = Vec::new();
        for name in self.node_link_names() {
            let detail = self.node_link_detail(&name);
            if let Some(l) = detail.lines().find(|l| l.contains("xdp")) {
                found.push(format!("{name}: {}", l.trim()));
            }
            for p in self.tcx_programs(&name) {
                found.push(format!("{name}: {p}"));
            }
        }
        found
    }

    /// `xdp-ctl endpoint add` for both addresses of pod `i` (MAC from the neighbour entry).
    #[track_caller]
    pub fn add_endpoint(&self, i: u32, meshed: bool) {
        let ctl = self.xdp_ctl();
        let hv = self.host_veth(i);
        for addr in [self.pod_v4(i).to_string(), self.pod_v6(i).to_string()] {
            let mut args = vec!["endpoint", "add", addr.as_str(), "--iface", hv.as_str()];
            if !meshed {
                args.push("--not-meshed");
            }
            ctl.run_ok(&args);
        }
    }

    /// All counters from `xdp-ctl stats --json`: reason -> (packets, bytes).
    #[track_caller]
    pub fn all_stats(&self) -> BTreeMap<String, (u64, u64)> {
        self.xdp_ctl().stats()
    }

    /// One counter: (packets, bytes). Panics if `xdp-ctl` does not report that reason.
    #[track_caller]
    pub fn stats(&self, reason: &str) -> (u64, u64) {
        let all = self.all_stats();
        match all.get(reason) {
            Some(&v) => v,
            None => panic!(
                "xdp-ctl stats has no reason {reason:?}; it has {:?}",
                all.keys()
            ),
        }
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        if self.pin_dir.exists() {
            let ctl = self.xdp_ctl();
            match ctl.try_run(&["detach", "--all"]) {
                Ok(o) if o.success() => {}
                Ok(o) => eprintln!("bench teardown: detach --all failed (continuing): {o}"),
                Err(e) => eprintln!("bench teardown: {e} (continuing)"),
            }
            if self.pin_dir.exists() {
                if let Err(e) = std::fs::remove_dir_all(&self.pin_dir) {
                    eprintln!("bench teardown: removing {}: {e}", self.pin_dir.display());
                }
            }
        }
        match self.script_cmd(&["down"]) {
            Ok(o) if o.success() => {}
            Ok(o) => eprintln!("bench teardown: `down` failed: {o}"),
            Err(e) => eprintln!("bench teardown: {e}"),
        }
    }
}

/// [`Bench::kube_proxy_forward`] in namespace `ns`: a `KUBE-FORWARD` chain first in FORWARD
/// (IPv4 and IPv6) that DROPs `--ctstate INVALID` and ACCEPTs `RELATED,ESTABLISHED`, with
/// `nf_conntrack_tcp_be_liberal=0` and `nf_conntrack_tcp_loose=1`.
#[track_caller]
pub fn kube_proxy_forward_in(ns: &str) {
    for ipt in ["iptables", "ip6tables"] {
        exec_in_ok(ns, &[ipt, "-N", "KUBE-FORWARD"]);
        exec_in_ok(ns, &[ipt, "-I", "FORWARD", "1", "-j", "KUBE-FORWARD"]);
        for (state, verdict) in [("INVALID", "DROP"), ("RELATED,ESTABLISHED", "ACCEPT")] {
            exec_in_ok(
                ns,
                &[
                    ipt,
                    "-A",
                    "KUBE-FORWARD",
                    "-m",
                    "conntrack",
                    "--ctstate",
                    state,
                    "-j",
                    verdict,
                ],
            );
        }
    }
    // The conntrack module is loaded by the rules above; its TCP sysctls are per namespace.
    exec_in_ok(
        ns,
        &[
            "sysctl",
            "-qw",
            "net.netfilter.nf_conntrack_tcp_be_liberal=0",
        ],
    );
    exec_in_ok(
        ns,
        &["sysctl", "-qw", "net.netfilter.nf_conntrack_tcp_loose=1"],
    );
}

/// Packet count of the FORWARD DROP rules of namespace `ns` whose line in the output of
/// `save_tool -c` (`iptables-save` or `ip6tables-save`) contains `needle`.
#[track_caller]
pub fn forward_drop_hits(ns: &str, save_tool: &str, needle: &str) -> u64 {
    let text = exec_in_ok(ns, &[save_tool, "-c", "-t", "filter"]);
    text.lines()
        .filter(|l| l.contains("-A FORWARD") && l.contains(needle) && l.contains("-j DROP"))
        .filter_map(|l| {
            let inner = l.strip_prefix('[')?.split(']').next()?;
            inner.split(':').next()?.parse::<u64>().ok()
        })
        .sum()
}

// ---------------------------------------------------------------------------------------------
// xdp-ctl
// ---------------------------------------------------------------------------------------------

/// Which datapath `xdp-ctl attach --datapath` installs on a host veth.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Datapath {
    /// XDP (native by default) redirecting through the devmap; the pod side is prepared.
    Xdp,
    /// TCX ingress with `bpf_redirect_peer`; the pod side is left alone.
    Tc,
}

impl Datapath {
    pub const ALL: [Datapath; 2] = [Datapath::Xdp, Datapath::Tc];

    /// The value of `--datapath` and of `"datapath"` in `status --json`.
    pub fn name(self) -> &'static str {
        match self {
            Datapath::Xdp => "xdp",
            Datapath::Tc => "tc",
        }
    }

    /// `"mode"` in `status --json` after an attach without `--mode`.
    pub fn default_status_mode(self) -> &'static str {
        match self {
            Datapath::Xdp => "native",
            Datapath::Tc => "tcx",
        }
    }
}

impl fmt::Display for Datapath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A program attached through TCX, as `BPF_PROG_QUERY` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcxProgram {
    /// "ingress" or "egress".
    pub direction: &'static str,
    pub id: u32,
    pub name: String,
}

impl fmt::Display for TcxProgram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "tcx/{} prog id {} {}",
            self.direction, self.id, self.name
        )
    }
}

/// Programs attached through TCX (ingress, then egress) to `iface` of namespace `ns`.
pub fn tcx_programs(ns: &str, iface: &str) -> Result<Vec<TcxProgram>, String> {
    use aya::programs::{tc::TcAttachType, SchedClassifier};
    let name = iface.to_string();
    join(
        in_netns(ns, move || {
            let mut found = Vec::new();
            for (direction, at) in [
                ("ingress", TcAttachType::Ingress),
                ("egress", TcAttachType::Egress),
            ] {
                let (_revision, progs) = SchedClassifier::query_tcx(&name, at)
                    .map_err(|e| format!("TCX {direction} query on {name}: {e}"))?;
                found.extend(progs.iter().map(|p| TcxProgram {
                    direction,
                    id: p.id(),
                    name: p.name_as_str().unwrap_or("?").to_string(),
                }));
            }
            Ok(found)
        }),
        &format!("TCX query in {ns}"),
    )
}

/// Runs the `xdp-ctl` binary with `--pin-dir` (and `--netns`, if set) always passed.
#[derive(Debug, Clone)]
pub struct XdpCtl {
    pub bin: PathBuf,
    pub pin_dir: PathBuf,
    pub netns: Option<String>,
}

impl XdpCtl {
    pub fn new(pin_dir: PathBuf, netns: Option<String>) -> XdpCtl {
        XdpCtl {
            bin: Self::bin_path(),
            pin_dir,
            netns,
        }
    }

    /// `$XDP_CTL_BIN`, else `xdp-ctl` next to the directory of this test executable
    /// (`target/<profile>/deps/<test>` -> `target/<profile>/xdp-ctl`).
    pub fn bin_path() -> PathBuf {
        if let Some(p) = std::env::var_os("XDP_CTL_BIN") {
            return PathBuf::from(p);
        }
        let exe = std::env::current_exe().expect("current_exe");
        let mut dir = exe
            .parent()
            .expect("test exe has a directory")
            .to_path_buf();
        if dir.file_name().is_some_and(|n| n == "deps") {
            dir.pop();
        }
        dir.join("xdp-ctl")
    }

    fn global_args(&self) -> Vec<String> {
        let mut v = vec!["--pin-dir".to_string(), self.pin_dir.display().to_string()];
        if let Some(ns) = &self.netns {
            v.push("--netns".to_string());
            v.push(ns.clone());
        }
        v
    }

    /// Errors (saying how to build it) when the binary is missing.
    pub fn check_bin(&self) -> io::Result<()> {
        if self.bin.is_file() {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "xdp-ctl binary not found at {}: build it with `cargo build -p xdp-ctl` or set \
                     XDP_CTL_BIN",
                    self.bin.display()
                ),
            ))
        }
    }

    /// The command `xdp-ctl --pin-dir .. [--netns ..] args..`, not run.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.args(self.global_args()).args(args);
        cmd
    }

    /// Runs it; errors only when the binary is missing or cannot be started.
    pub fn try_run(&self, args: &[&str]) -> io::Result<CmdOutput> {
        self.check_bin()?;
        try_run(self.command(args), COMMAND_TIMEOUT)
    }

    /// Runs it, whatever the exit status; panics only when it cannot be started.
    #[track_caller]
    pub fn run(&self, args: &[&str]) -> CmdOutput {
        match self.try_run(args) {
            Ok(o) => o,
            Err(e) => panic!("{e}"),
        }
    }

    /// Runs it and panics with the full output unless it succeeded.
    #[track_caller]
    pub fn run_ok(&self, args: &[&str]) -> CmdOutput {
        self.run(args).ok()
    }

    /// Runs it with `--json` and parses stdout; panics on failure or invalid JSON.
    #[track_caller]
    pub fn json(&self, args: &[&str]) -> Value {
        let mut full = vec!["--json"];
        full.extend_from_slice(args);
        let out = self.run_ok(&full);
        match serde_json::from_str(&out.stdout) {
            Ok(v) => v,
            Err(e) => panic!("stdout of xdp-ctl is not JSON ({e}): {out}"),
        }
    }

    /// `stats --json`: reason -> (packets, bytes).
    #[track_caller]
    pub fn stats(&self) -> BTreeMap<String, (u64, u64)> {
        let v = self.json(&["stats"]);
        let Some(reasons) = v.get("reasons").and_then(Value::as_object) else {
            panic!("`stats --json` has no \"reasons\" object: {v}");
        };
        reasons
            .iter()
            .map(|(k, c)| {
                let get = |f: &str| {
                    c.get(f).and_then(Value::as_u64).unwrap_or_else(|| {
                        panic!("`stats --json`: reason {k} has no numeric {f:?}: {c}")
                    })
                };
                (k.clone(), (get("packets"), get("bytes")))
            })
            .collect()
    }

    /// `xdp-ctl attach --datapath DP IFACE...` (default mode), whatever the exit status.
    #[track_caller]
    pub fn attach(&self, datapath: Datapath, ifaces: &[&str]) -> CmdOutput {
        let mut args = vec!["attach", "--datapath", datapath.name()];
        args.extend_from_slice(ifaces);
        self.run(&args)
    }

    /// [`XdpCtl::attach`] that panics with the full output unless it succeeded.
    #[track_caller]
    pub fn attach_ok(&self, datapath: Datapath, ifaces: &[&str]) -> CmdOutput {
        self.attach(datapath, ifaces).ok()
    }

    /// `status --json`'s interfaces, as they are.
    #[track_caller]
    pub fn status_interfaces(&self) -> Vec<Value> {
        let v = self.json(&["status"]);
        match v.get("interfaces").and_then(Value::as_array) {
            Some(a) => a.clone(),
            None => panic!("`status --json` has no \"interfaces\" array: {v}"),
        }
    }

    /// `status --json`'s entry for interface `name`, if it is attached.
    #[track_caller]
    pub fn interface_status(&self, name: &str) -> Option<Value> {
        self.status_interfaces()
            .into_iter()
            .find(|i| i.get("name").and_then(Value::as_str) == Some(name))
    }

    /// `status --json`'s interface names.
    #[track_caller]
    pub fn attached(&self) -> Vec<String> {
        let v = self.json(&["status"]);
        let Some(ifaces) = v.get("interfaces").and_then(Value::as_array) else {
            panic!("`status --json` has no \"interfaces\" array: {v}");
        };
        ifaces
            .iter()
            .map(|i| {
                i.get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_else(|| panic!("interface without a name in `status --json`: {i}"))
                    .to_string()
            })
            .collect()
    }

    /// Runs it as user `nobody` (uid/gid 65534, no supplementary groups, no capabilities) via
    /// `setpriv`, from a world-readable copy of the binary.
    #[track_caller]
    pub fn run_as_nobody(&self, args: &[&str]) -> CmdOutput {
        self.check_bin().unwrap_or_else(|e| panic!("{e}"));
        let dir = PathBuf::from(format!(
            "/tmp/xdp-ctl-nobody-{}-{}",
            std::process::id(),
            BENCH_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let bin = dir.join("xdp-ctl");
        std::fs::copy(&self.bin, &bin).expect("copy xdp-ctl");
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        // `std::fs::copy` writes through an fd that another test thread's fork may hold for
        // a moment (until that child execs and O_CLOEXEC closes it); exec then fails with
        // ETXTBSY ("Text file busy", setpriv exits 126). That is the harness racing itself,
        // not xdp-ctl: try again.
        let mut out = None;
        for _ in 0..50 {
            let mut cmd = Command::new("setpriv");
            cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
                .arg(&bin)
                .args(self.global_args())
                .args(args);
            let o = run(cmd);
            let busy = o.code() == Some(126) && o.stderr.contains("Text file busy");
            out = Some(o);
            if !busy {
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_dir_all(&dir);
        out.expect("ran at least once")
    }
}

/// Asserts that a failed `xdp-ctl` run failed cleanly: non-zero exit, no panic or backtrace,
/// and a reason on stderr — `xdp-ctl: error: ...` on exactly one line (exit 1), or a clap
/// usage error whose first line starts with `error:` (exit 2). `mentions` must appear in the
/// reason when given.
#[track_caller]
pub fn assert_clean_failure(out: &CmdOutput, mentions: Option<&str>) {
    assert!(!out.success(), "expected failure, but it succeeded: {out}");
    assert!(out.status.is_some(), "timed out instead of failing: {out}");
    assert!(
        !out.stderr.contains("panicked") && !out.stderr.contains("RUST_BACKTRACE"),
        "it panicked instead of failing cleanly: {out}"
    );
    let text = out.stderr.trim();
    let first = text.lines().next().unwrap_or("");
    match out.code() {
        Some(1) => {
            assert!(
                first.starts_with("xdp-ctl: error: "),
                "no `xdp-ctl: error:` line: {out}"
            );
            assert_eq!(
                text.lines().count(),
                1,
                "error must be one line on stderr: {out}"
            );
        }
        Some(2) => assert!(
            first.starts_with("error:"),
            "usage error without reason: {out}"
        ),
        _ => panic!("expected exit code 1 (error) or 2 (usage): {out}"),
    }
    if let Some(m) = mentions {
        assert!(
            first.to_lowercase().contains(&m.to_lowercase()),
            "the reason does not mention {m:?}: {out}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The controller (`xdp-ctl run`)
// ---------------------------------------------------------------------------------------------

/// One row of `xdp-ctl endpoint list --json`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct EndpointEntry {
    /// `10.244.0.1/32`, `fd00::1/128`.
    pub prefix: String,
    pub iface: String,
    pub ifindex: u32,
    pub pod_mac: String,
    pub host_mac: String,
    pub meshed: bool,
}

impl fmt::Display for EndpointEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} -> {}#{} pod {} host {}{}",
            self.prefix,
            self.iface,
            self.ifindex,
            self.pod_mac,
            self.host_mac,
            if self.meshed { "" } else { " (not meshed)" }
        )
    }
}

/// The differences between two endpoint lists, for messages: what is missing from `got`, what
/// is there that should not be (the first few of each).
pub fn endpoint_diff(want: &[EndpointEntry], got: &[EndpointEntry]) -> String {
    const SHOWN: usize = 8;
    let list = |of: &[EndpointEntry], not_in: &[EndpointEntry]| {
        let all: Vec<String> = of
            .iter()
            .filter(|e| !not_in.contains(e))
            .map(ToString::to_string)
            .collect();
        let more = all.len().saturating_sub(SHOWN);
        let mut shown = all[..all.len() - more].join("; ");
        if more > 0 {
            shown = format!("{shown}; ... {more} more");
        }
        (all.len(), shown)
    };
    let (missing, missing_list) = list(want, got);
    let (extra, extra_list) = list(got, want);
    format!("{missing} missing [{missing_list}], {extra} unexpected [{extra_list}]")
}

impl XdpCtl {
    /// `status --json`, as it is.
    #[track_caller]
    pub fn status(&self) -> Value {
        self.json(&["status"])
    }

    /// `status --json`'s `"controller"` object; `None` when it is null (no controller ever ran
    /// on this pin dir).
    #[track_caller]
    pub fn controller_status(&self) -> Option<Value> {
        let v = self.status();
        match v.get("controller") {
            Some(Value::Null) => None,
            Some(c) if c.is_object() => Some(c.clone()),
            _ => panic!("`status --json` has no \"controller\" object or null: {v}"),
        }
    }

    /// `endpoint list --json`, sorted.
    #[track_caller]
    pub fn endpoints(&self) -> Vec<EndpointEntry> {
        let v = self.json(&["endpoint", "list"]);
        let Some(list) = v.get("endpoints").and_then(Value::as_array) else {
            panic!("`endpoint list --json` has no \"endpoints\" array: {v}");
        };
        let mut out: Vec<EndpointEntry> = list
            .iter()
            .map(|e| {
                let s = |k: &str| {
                    e.get(k)
                        .and_then(Value::as_str)
                        .unwrap_or_else(|| panic!("endpoint without a string {k:?}: {e}"))
                        .to_string()
                };
                EndpointEntry {
                    prefix: s("prefix"),
                    iface: s("iface"),
                    ifindex: e
                        .get("ifindex")
                        .and_then(Value::as_u64)
                        .and_then(|i| u32::try_from(i).ok())
                        .unwrap_or_else(|| panic!("endpoint without an ifindex: {e}")),
                    pod_mac: s("pod_mac"),
                    host_mac: s("host_mac"),
                    meshed: e
                        .get("meshed")
                        .and_then(Value::as_bool)
                        .unwrap_or_else(|| panic!("endpoint without \"meshed\": {e}")),
                }
            })
            .collect();
        out.sort();
        out
    }
}

impl Bench {
    /// The endpoints the controller must program for `pods` (both addresses of each, behind
    /// their host veths as they are now), sorted like [`XdpCtl::endpoints`].
    #[track_caller]
    pub fn expected_endpoints(&self, pods: &[u32], meshed: bool) -> Vec<EndpointEntry> {
        let index = self.node_ifindexes();
        let mut out = Vec::new();
        for &i in pods {
            let iface = self.host_veth(i);
            let ifindex = *index
                .get(&iface)
                .unwrap_or_else(|| panic!("{iface} is not in the node namespace"));
            for prefix in [
                format!("{}/32", self.pod_v4(i)),
                format!("{}/128", self.pod_v6(i)),
            ] {
                out.push(EndpointEntry {
                    prefix,
                    iface: iface.clone(),
                    ifindex,
                    pod_mac: mac_str(self.pod_mac(i)),
                    host_mac: mac_str(self.host_mac(i)),
                    meshed,
                });
            }
        }
        out.sort();
        out
    }

    /// Starts `xdp-ctl run --iface-prefix PREFIXh` with every bench pod meshed by CIDR
    /// ([`MESH_ALL`]) and EXTRA... on this bench. Create it after the bench, so that it is
    /// dropped (killed) before the bench tears down.
    #[track_caller]
    pub fn controller(&self, extra: &[&str]) -> Controller {
        let mut args = MESH_ALL.to_vec();
        args.extend_from_slice(extra);
        self.controller_bare(&args)
    }

    /// Starts `xdp-ctl run --iface-prefix PREFIXh EXTRA...`: no membership source unless EXTRA
    /// names one.
    #[track_caller]
    pub fn controller_bare(&self, extra: &[&str]) -> Controller {
        let prefix = self.iface_prefix();
        let mut args = vec!["--iface-prefix", prefix.as_str()];
        args.extend_from_slice(extra);
        Controller::spawn(&self.xdp_ctl(), &args)
    }
}

/// `run` options that mesh every pod the bench can make (by CIDR).
pub const MESH_ALL: [&str; 4] = [
    "--meshed-cidr",
    "10.244.0.0/16",
    "--meshed-cidr",
    "fd00::/64",
];

/// How often the polling helpers look again.
pub const POLL: Duration = Duration::from_millis(20);

/// Calls `f` every [`POLL`] until it returns `Some` (returned) or `timeout` passed (`None`).
pub fn poll_until<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(POLL);
    }
}

static CONTROLLER_COUNTER: AtomicU32 = AtomicU32::new(0);

/// `xdp-ctl run` in the background, with its stderr (the log) in a file of its own. Dropping
/// it kills the process (by its pid, SIGKILL) and reaps it, unless it already exited; the log
/// is printed when the test is panicking. The child also gets SIGKILL if the thread that
/// started it dies first (`PR_SET_PDEATHSIG`), so a crashed test leaves no controller behind.
pub struct Controller {
    child: Child,
    exit: Option<ExitStatus>,
    log: PathBuf,
    cmdline: String,
    ctl: XdpCtl,
}

impl Controller {
    /// Starts `xdp-ctl [--pin-dir, --netns of ctl] run ARGS...`.
    #[track_caller]
    pub fn spawn(ctl: &XdpCtl, args: &[&str]) -> Controller {
        Self::spawn_with_env(ctl, args, &[])
    }

    /// Like [`Controller::spawn`], with environment variables set for the process.
    #[track_caller]
    pub fn spawn_with_env(ctl: &XdpCtl, args: &[&str], env: &[(&str, String)]) -> Controller {
        ctl.check_bin().unwrap_or_else(|e| panic!("{e}"));
        let log = PathBuf::from(format!(
            "/tmp/xdp-ctl-run-{}-{}.log",
            std::process::id(),
            CONTROLLER_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let file = File::create(&log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
        let mut full = vec!["run"];
        full.extend_from_slice(args);
        let mut cmd = ctl.command(&full);
        let mut cmdline = cmdline_of(&cmd);
        for (k, v) in env {
            cmd.env(k, v);
            cmdline = format!("{k}={v} {cmdline}");
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(file));
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `{cmdline}`: {e}"));
        Controller {
            child,
            exit: None,
            log,
            cmdline,
            ctl: ctl.clone(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The command line, for messages.
    pub fn cmdline(&self) -> &str {
        &self.cmdline
    }

    /// Its stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its exit status, if it exited (reaping it).
    #[track_caller]
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self
                .child
                .try_wait()
                .unwrap_or_else(|e| panic!("waiting for `{}`: {e}", self.cmdline));
        }
        self.exit
    }

    /// Sends `sig` to the process (by pid), unless it already exited and was reaped.
    #[track_caller]
    pub fn signal(&mut self, sig: i32) {
        if self.exited().is_none() {
            let pid = i32::try_from(self.pid()).expect("pid fits i32");
            // SAFETY: our own child, not reaped yet, so the pid is still its.
            unsafe { libc::kill(pid, sig) };
        }
    }

    /// Waits up to `timeout` for it to exit.
    #[track_caller]
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        poll_until(timeout, || self.exited())
    }

    /// SIGTERM, then waits up to `timeout`: the exit status and how long it took.
    #[track_caller]
    pub fn terminate(&mut self, timeout: Duration) -> Option<(ExitStatus, Duration)> {
        let t0 = Instant::now();
        self.signal(libc::SIGTERM);
        self.wait_exit(timeout).map(|s| (s, t0.elapsed()))
    }

    /// SIGKILL, and reaps it (so that its pid is gone from /proc).
    #[track_caller]
    pub fn kill9(&mut self) -> ExitStatus {
        self.signal(libc::SIGKILL);
        if self.exit.is_none() {
            self.exit = Some(
                self.child
                    .wait()
                    .unwrap_or_else(|e| panic!("waiting for `{}`: {e}", self.cmdline)),
            );
        }
        self.exit.expect("reaped")
    }

    /// Its `status --json` controller object, if any.
    #[track_caller]
    pub fn status(&self) -> Option<Value> {
        self.ctl.controller_status()
    }

    /// Waits up to `timeout` until `status` reports this very process running and ready;
    /// returns the controller object. Panics (with the log) if it exits or does not get ready.
    #[track_caller]
    pub fn wait_ready(&mut self, timeout: Duration) -> Value {
        let pid = u64::from(self.pid());
        let mut last = None;
        let got = poll_until(timeout, || {
            if let Some(s) = self.exited() {
                panic!(
                    "`{}` exited ({s}) instead of getting ready; its log:\n{}",
                    self.cmdline,
                    self.log()
                );
            }
            let c = self.ctl.controller_status()?;
            let ok = c["pid"].as_u64() == Some(pid) && c["running"] == true && c["ready"] == true;
            last = Some(c.clone());
            ok.then_some(c)
        });
        got.unwrap_or_else(|| {
            panic!(
                "`{}` not ready within {timeout:?}; last status: {last:?}; its log:\n{}",
                self.cmdline,
                self.log()
            )
        })
    }

    /// Panics (with the log) if the log shows a panic.
    #[track_caller]
    pub fn assert_log_clean(&self) {
        let log = self.log();
        assert!(
            !log.contains("panicked") && !log.contains("RUST_BACKTRACE"),
            "`{}` panicked; its log:\n{log}",
            self.cmdline
        );
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        if self.exit.is_none() {
            let _ = self.child.try_wait().map(|s| self.exit = s);
        }
        if self.exit.is_none() {
            let pid = i32::try_from(self.child.id()).unwrap_or(0);
            if pid > 0 {
                // SAFETY: our own child, not reaped yet.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            let _ = self.child.wait();
        }
        if thread::panicking() {
            eprintln!(
                "--- log of `{}` ---\n{}--- end of log ---",
                self.cmdline,
                with_newline(&self.log())
            );
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

/// An exclusive `flock` on a pin directory (the lock every changing `xdp-ctl` command and each
/// controller reconcile takes), held until dropped.
pub struct PinDirLock {
    _dir: File,
}

impl PinDirLock {
    /// Takes the lock on `dir` (blocking until it is free).
    pub fn acquire(dir: &Path) -> io::Result<PinDirLock> {
        let f = File::open(dir)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.display())))?;
        // SAFETY: flock on a valid fd we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("flock {}: {e}", dir.display()),
            ));
        }
        Ok(PinDirLock { _dir: f })
    }
}

// ---------------------------------------------------------------------------------------------
// Threads in other network namespaces
// ---------------------------------------------------------------------------------------------

/// Moves the calling thread into network namespace `/run/netns/NS`.
pub fn enter_netns(ns: &str) -> io::Result<()> {
    let path = format!("/run/netns/{ns}");
    let f = File::open(&path).map_err(|e| io::Error::new(e.kind(), format!("{path}: {e}")))?;
    // SAFETY: a valid namespace fd; CLONE_NEWNET affects only this thread.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("setns({path}): {e}")));
    }
    Ok(())
}

/// Runs `f` on a new thread inside network namespace `ns`.
pub fn in_netns<T, F>(ns: &str, f: F) -> JoinHandle<Result<T, String>>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, String> + Send + 'static,
{
    let ns = ns.to_string();
    thread::Builder::new()
        .name(format!("netns-{ns}"))
        .spawn(move || {
            enter_netns(&ns).map_err(|e| e.to_string())?;
            f()
        })
        .expect("spawn thread")
}

fn join<T>(h: JoinHandle<Result<T, String>>, who: &str) -> Result<T, String> {
    match h.join() {
        Ok(r) => r.map_err(|e| format!("{who}: {e}")),
        Err(_) => Err(format!("{who}: thread panicked")),
    }
}

/// Deterministic pseudo-random payload (an xorshift stream), so corruption is detected.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[0]
        })
        .collect()
}

fn first_difference(a: &[u8], b: &[u8]) -> String {
    match a.iter().zip(b).position(|(x, y)| x != y) {
        Some(i) => format!("first difference at byte {i} of {}", a.len()),
        None => format!("lengths {} vs {}", a.len(), b.len()),
    }
}

fn read_full(s: &mut TcpStream, len: usize) -> Result<Vec<u8>, String> {
    let mut buf = vec![0u8; len];
    let mut got = 0;
    while got < len {
        match s.read(&mut buf[got..]) {
            Ok(0) => return Err(format!("connection closed after {got} of {len} bytes")),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("read failed after {got} of {len} bytes: {e}")),
        }
    }
    Ok(buf)
}

/// What a successful transfer saw.
#[derive(Debug, Clone)]
pub struct Transfer {
    /// The client's address as the server saw it (proves no NAT, right source).
    pub client_addr: SocketAddr,
    /// Payload bytes checked in each direction.
    pub bytes: usize,
    pub elapsed: Duration,
}

/// TCP: a client in `client_ns` connects to a listener on `server`:(ephemeral) in `server_ns`,
/// sends `len` pseudo-random bytes, which the server checks and echoes back, and the client
/// checks again. Every step is bounded by `timeout`: a blocked path fails fast.
pub fn tcp_echo(
    client_ns: &str,
    server_ns: &str,
    server: IpAddr,
    len: usize,
    timeout: Duration,
) -> Result<Transfer, String> {
    tcp_echo_via(
        client_ns,
        server_ns,
        SocketAddr::new(server, 0),
        None,
        len,
        timeout,
    )
}

/// [`tcp_echo`] with the server listening on `listen` (port 0: ephemeral) and the client
/// connecting to `dial` (default: the listening address), e.g. a Service address DNAT'd to it.
pub fn tcp_echo_via(
    client_ns: &str,
    server_ns: &str,
    listen: SocketAddr,
    dial: Option<SocketAddr>,
    len: usize,
    timeout: Duration,
) -> Result<Transfer, String> {
    let server = listen.ip();
    let payload = Arc::new(pattern(len, len as u64 ^ 0x7c9));
    let done = Arc::new(AtomicBool::new(false));
    let (port_tx, port_rx) = mpsc::channel();
    let start = Instant::now();

    let (expected, stop) = (payload.clone(), done.clone());
    let srv = in_netns(server_ns, move || {
        let l = TcpListener::bind(listen).map_err(|e| format!("bind {listen}: {e}"))?;
        let port = l.local_addr().map_err(|e| e.to_string())?.port();
        let _ = port_tx.send(port);
        l.set_nonblocking(true).map_err(|e| e.to_string())?;
        let deadline = Instant::now() + timeout;
        let (mut s, peer) = loop {
            match l.accept() {
                Ok(x) => break x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if stop.load(Ordering::Relaxed) || Instant::now() >= deadline {
                        return Err("no connection accepted".into());
                    }
                    thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(format!("accept: {e}")),
            }
        };
        s.set_nonblocking(false).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        s.set_write_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        let got = read_full(&mut s, expected.len())?;
        if got != *expected {
            return Err(format!(
                "payload corrupted: {}",
                first_difference(&got, &expected)
            ));
        }
        s.write_all(&got).map_err(|e| format!("echo: {e}"))?;
        let _ = s.shutdown(Shutdown::Write);
        // Wait for the client to close, so the echo is not cut short by a reset.
        let mut rest = [0u8; 64];
        let _ = s.read(&mut rest);
        Ok(peer)
    });
    let Ok(port) = port_rx.recv_timeout(timeout) else {
        return Err(join(srv, "server")
            .err()
            .unwrap_or_else(|| "server gave no port".into()));
    };

    let sent = payload.clone();
    let to = dial.unwrap_or(SocketAddr::new(server, port));
    let cli = in_netns(client_ns, move || {
        let mut s = TcpStream::connect_timeout(&to, timeout)
            .map_err(|e| format!("connect to {to}: {e}"))?;
        s.set_read_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        s.set_write_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        s.write_all(&sent).map_err(|e| format!("send: {e}"))?;
        let got = read_full(&mut s, sent.len())?;
        if got != *sent {
            return Err(format!("echo corrupted: {}", first_difference(&got, &sent)));
        }
        Ok(())
    });
    let client_result = join(cli, "client");
    done.store(true, Ordering::Relaxed);
    let server_result = join(srv, "server");
    match (client_result, server_result) {
        (Ok(()), Ok(peer)) => Ok(Transfer {
            client_addr: peer,
            bytes: len,
            elapsed: start.elapsed(),
        }),
        (c, s) => Err(format!(
            "TCP {client_ns} -> {to} ({server_ns} [{server}]:{port}) failed: {}; {}",
            c.err().unwrap_or_else(|| "client: ok".into()),
            s.err().unwrap_or_else(|| "server: ok".into())
        )),
    }
}

/// Datagram `seq` of a UDP echo run: sequence number, then pseudo-random bytes.
fn udp_datagram(seq: u32, size: usize) -> Vec<u8> {
    let mut d = seq.to_be_bytes().to_vec();
    d.extend(pattern(size - 4, u64::from(seq) + 1));
    d
}

fn udp_echo_server(
    s: &UdpSocket,
    count: u32,
    size: usize,
    stop: &AtomicBool,
    deadline: Instant,
) -> Result<SocketAddr, String> {
    s.set_read_timeout(Some(Duration::from_millis(20)))
        .map_err(|e| e.to_string())?;
    let mut seen = HashSet::new();
    let mut peer = None;
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let (n, from) = match s.recv_from(&mut buf) {
            Ok(x) => x,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) => return Err(format!("recv: {e}")),
        };
        let d = &buf[..n];
        if n < 4 {
            return Err(format!("runt datagram of {n} bytes from {from}"));
        }
        let seq = u32::from_be_bytes([d[0], d[1], d[2], d[3]]);
        let want = udp_datagram(seq, size);
        if d != want.as_slice() {
            return Err(format!(
                "datagram {seq} corrupted: {}",
                first_difference(d, &want)
            ));
        }
        seen.insert(seq);
        peer = Some(from);
        s.send_to(d, from).map_err(|e| format!("echo: {e}"))?;
    }
    if seen.len() == count as usize {
        peer.ok_or_else(|| "nothing received".into())
    } else {
        Err(format!("received {} of {count} datagrams", seen.len()))
    }
}

fn udp_echo_client(
    server: SocketAddr,
    count: u32,
    size: usize,
    deadline: Instant,
) -> Result<(), String> {
    let any: IpAddr = if server.is_ipv4() {
        Ipv4Addr::UNSPECIFIED.into()
    } else {
        Ipv6Addr::UNSPECIFIED.into()
    };
    let s = UdpSocket::bind((any, 0)).map_err(|e| format!("bind: {e}"))?;
    s.connect(server).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_millis(250)))
        .map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 65536];
    for seq in 0..count {
        let d = udp_datagram(seq, size);
        'attempt: loop {
            if Instant::now() >= deadline {
                return Err(format!("no echo of datagram {seq} (of {count})"));
            }
            // ECONNREFUSED from an earlier ICMP error is not fatal here; just retry.
            let _ = s.send(&d);
            let wait_until = Instant::now() + Duration::from_millis(250);
            while Instant::now() < wait_until {
                match s.recv(&mut buf) {
                    Ok(n) if buf[..n] == d[..] => break 'attempt,
                    Ok(n) if n >= 4 && buf[..4] != d[..4] => {} // late echo of a retry
                    Ok(n) => {
                        return Err(format!(
                            "echo of datagram {seq} corrupted: {}",
                            first_difference(&buf[..n], &d)
                        ))
                    }
                    Err(_) => break,
                }
            }
        }
    }
    Ok(())
}

/// UDP: a client in `client_ns` sends `count` datagrams of `size` bytes (sequence number +
/// pseudo-random bytes) to a server on `server`:(ephemeral) in `server_ns`, one at a time; the
/// server checks each and echoes it back, the client checks the echo. A lost datagram is
/// retried within the overall `timeout`; corruption fails at once.
pub fn udp_echo(
    client_ns: &str,
    server_ns: &str,
    server: IpAddr,
    count: u32,
    size: usize,
    timeout: Duration,
) -> Result<Transfer, String> {
    udp_echo_via(
        client_ns,
        server_ns,
        SocketAddr::new(server, 0),
        None,
        count,
        size,
        timeout,
    )
}

/// [`udp_echo`] with the server bound to `listen` (port 0: ephemeral) and the client's
/// connected socket sending to `dial` (default: the bound address), e.g. a Service address
/// DNAT'd to it; an echo from any other source than `dial` is dropped by that socket.
pub fn udp_echo_via(
    client_ns: &str,
    server_ns: &str,
    listen: SocketAddr,
    dial: Option<SocketAddr>,
    count: u32,
    size: usize,
    timeout: Duration,
) -> Result<Transfer, String> {
    let server = listen.ip();
    assert!(size >= 4, "datagrams carry a 4-byte sequence number");
    let done = Arc::new(AtomicBool::new(false));
    let (port_tx, port_rx) = mpsc::channel();
    let start = Instant::now();

    let stop = done.clone();
    let srv = in_netns(server_ns, move || {
        let s = UdpSocket::bind(listen).map_err(|e| format!("bind {listen}: {e}"))?;
        let port = s.local_addr().map_err(|e| e.to_string())?.port();
        let _ = port_tx.send(port);
        udp_echo_server(&s, count, size, &stop, Instant::now() + timeout)
    });
    let Ok(port) = port_rx.recv_timeout(timeout) else {
        return Err(join(srv, "server")
            .err()
            .unwrap_or_else(|| "server gave no port".into()));
    };
    let to = dial.unwrap_or(SocketAddr::new(server, port));
    let cli = in_netns(client_ns, move || {
        udp_echo_client(to, count, size, Instant::now() + timeout)
    });
    let client_result = join(cli, "client");
    done.store(true, Ordering::Relaxed);
    let server_result = join(srv, "server");
    match (client_result, server_result) {
        (Ok(()), Ok(peer)) => Ok(Transfer {
            client_addr: peer,
            bytes: count as usize * size,
            elapsed: start.elapsed(),
        }),
        (c, s) => Err(format!(
            "UDP {client_ns} -> {to} ({server_ns} [{server}]:{port}) failed: {}; {}",
            c.err().unwrap_or_else(|| "client: ok".into()),
            s.err().unwrap_or_else(|| "server: ok".into())
        )),
    }
}

/// A UDP socket bound inside a namespace that hands every datagram it receives to the test
/// (to check what arrived, e.g. after sending a crafted frame). Stops on drop.
pub struct UdpSink {
    pub port: u16,
    rx: mpsc::Receiver<(SocketAddr, Vec<u8>)>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Result<(), String>>>,
}

impl UdpSink {
    /// Binds `bind`:`port` (0 for ephemeral) in `ns`.
    #[track_caller]
    pub fn bind(ns: &str, bind: IpAddr, port: u16) -> UdpSink {
        let (tx, rx) = mpsc::channel();
        let (port_tx, port_rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let handle = in_netns(ns, move || {
            let s =
                UdpSocket::bind((bind, port)).map_err(|e| format!("bind {bind}:{port}: {e}"))?;
            let _ = port_tx.send(s.local_addr().map_err(|e| e.to_string())?.port());
            s.set_read_timeout(Some(Duration::from_millis(20)))
                .map_err(|e| e.to_string())?;
            let mut buf = vec![0u8; 65536];
            while !stop2.load(Ordering::Relaxed) {
                if let Ok((n, from)) = s.recv_from(&mut buf) {
                    if tx.send((from, buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
            }
            Ok(())
        });
        let Ok(port) = port_rx.recv_timeout(Duration::from_secs(10)) else {
            panic!(
                "UDP sink in {ns}: {}",
                join(handle, "sink").err().unwrap_or_default()
            );
        };
        UdpSink {
            port,
            rx,
            stop,
            handle: Some(handle),
        }
    }

    /// Waits up to `timeout` for a datagram with exactly `payload`; returns its source.
    pub fn expect(&self, payload: &[u8], timeout: Duration) -> Option<SocketAddr> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok((from, d)) if d == payload => return Some(from),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }
}

impl Drop for UdpSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Sequence numbers in `all` (sorted) as ranges: "3-7, 10".
fn ranges(all: &[u32]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < all.len() {
        let mut j = i;
        while j + 1 < all.len() && all[j + 1] == all[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            all[i].to_string()
        } else {
            format!("{}-{}", all[i], all[j])
        });
        i = j + 1;
    }
    out.join(", ")
}

/// What a [`UdpStream`] saw, on both sides.
#[derive(Debug, Clone)]
pub struct StreamReport {
    /// Datagrams the client sent (sequence numbers 0..sent).
    pub sent: u32,
    /// Sends that failed (their sequence numbers were used up, so they show as lost).
    pub send_errors: u32,
    /// Sequence numbers the server received.
    pub received: BTreeSet<u32>,
    /// Sequence numbers whose echo the client received.
    pub echoed: BTreeSet<u32>,
    /// Datagrams the server received more than once.
    pub duplicates: u32,
    /// Longest time between two datagrams arriving at the server.
    pub longest_gap: Duration,
    pub elapsed: Duration,
}

impl StreamReport {
    /// Sent but never received by the server.
    pub fn lost_forward(&self) -> Vec<u32> {
        (0..self.sent)
            .filter(|s| !self.received.contains(s))
            .collect()
    }

    /// Received by the server, but the echo never came back.
    pub fn lost_reverse(&self) -> Vec<u32> {
        self.received
            .iter()
            .copied()
            .filter(|s| !self.echoed.contains(s))
            .collect()
    }

    /// Nothing lost in either direction, nothing failed to send.
    pub fn lossless(&self) -> bool {
        self.send_errors == 0 && self.lost_forward().is_empty() && self.lost_reverse().is_empty()
    }
}

impl fmt::Display for StreamReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (fwd, rev) = (self.lost_forward(), self.lost_reverse());
        write!(
            f,
            "{} sent in {:?} ({} send errors), {} received (lost: {} [{}]), {} echoes back \
             (lost: {} [{}]), {} duplicates, longest gap at the server {:?}",
            self.sent,
            self.elapsed,
            self.send_errors,
            self.received.len(),
            fwd.len(),
            ranges(&fwd),
            self.echoed.len(),
            rev.len(),
            ranges(&rev),
            self.duplicates,
            self.longest_gap
        )
    }
}

/// A steady UDP flow that notices every lost packet: a client in one namespace sends a
/// datagram (sequence number + pseudo-random bytes) every `interval` to a server in another,
/// which checks and echoes each; both sides record what they got. Runs until
/// [`UdpStream::finish`]; stops on drop.
pub struct UdpStream {
    what: String,
    stop_client: Arc<AtomicBool>,
    stop_server: Arc<AtomicBool>,
    echoes: Arc<AtomicU32>,
    client: Option<JoinHandle<Result<StreamClientSide, String>>>,
    server: Option<JoinHandle<Result<StreamServerSide, String>>>,
    start: Instant,
}

/// What the client of a [`UdpStream`] saw.
struct StreamClientSide {
    sent: u32,
    send_errors: u32,
    echoed: BTreeSet<u32>,
}

/// What the server of a [`UdpStream`] saw.
struct StreamServerSide {
    received: BTreeSet<u32>,
    duplicates: u32,
    longest_gap: Duration,
}

/// How long the client keeps listening for echoes after it stopped sending.
const STREAM_DRAIN: Duration = Duration::from_millis(500);

impl UdpStream {
    /// Starts the flow from `client_ns` to `server`:(ephemeral) in `server_ns`.
    pub fn start(
        client_ns: &str,
        server_ns: &str,
        server: IpAddr,
        interval: Duration,
        size: usize,
    ) -> Result<UdpStream, String> {
        assert!(
            (4..=1400).contains(&size),
            "datagrams carry a 4-byte sequence number and fit one frame"
        );
        let what = format!("UDP stream {client_ns} -> {server_ns} [{server}]");
        let stop_client = Arc::new(AtomicBool::new(false));
        let stop_server = Arc::new(AtomicBool::new(false));
        let echoes = Arc::new(AtomicU32::new(0));
        let (port_tx, port_rx) = mpsc::channel();

        let stop = stop_server.clone();
        let srv = in_netns(server_ns, move || {
            let s = UdpSocket::bind((server, 0)).map_err(|e| format!("bind {server}: {e}"))?;
            let _ = port_tx.send(s.local_addr().map_err(|e| e.to_string())?.port());
            stream_server(&s, size, &stop)
        });
        let Ok(port) = port_rx.recv_timeout(Duration::from_secs(10)) else {
            stop_server.store(true, Ordering::Relaxed);
            return Err(join(srv, &format!("{what}: server"))
                .err()
                .unwrap_or_else(|| format!("{what}: server gave no port")));
        };
        let (stop, count) = (stop_client.clone(), echoes.clone());
        let cli = in_netns(client_ns, move || {
            stream_client(SocketAddr::new(server, port), interval, size, &stop, &count)
        });
        Ok(UdpStream {
            what,
            stop_client,
            stop_server,
            echoes,
            client: Some(cli),
            server: Some(srv),
            start: Instant::now(),
        })
    }

    /// Echoes the client has received so far.
    pub fn echoes(&self) -> u32 {
        self.echoes.load(Ordering::Relaxed)
    }

    /// Waits up to `timeout` until at least `n` echoes came back; false if they did not.
    pub fn wait_for_echoes(&self, n: u32, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.echoes() < n {
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(5));
        }
        true
    }

    /// Stops sending, collects the echoes still in flight, stops the server and reports.
    pub fn finish(mut self) -> Result<StreamReport, String> {
        self.stop_client.store(true, Ordering::Relaxed);
        let client = join(self.client.take().expect("running"), "client");
        self.stop_server.store(true, Ordering::Relaxed);
        let server = join(self.server.take().expect("running"), "server");
        match (client, server) {
            (Ok(c), Ok(s)) => Ok(StreamReport {
                sent: c.sent,
                send_errors: c.send_errors,
                received: s.received,
                echoed: c.echoed,
                duplicates: s.duplicates,
                longest_gap: s.longest_gap,
                elapsed: self.start.elapsed(),
            }),
            (c, s) => Err(format!(
                "{} failed: {}; {}",
                self.what,
                c.err().unwrap_or_else(|| "client: ok".into()),
                s.err().unwrap_or_else(|| "server: ok".into())
            )),
        }
    }
}

impl Drop for UdpStream {
    fn drop(&mut self) {
        self.stop_client.store(true, Ordering::Relaxed);
        if let Some(h) = self.client.take() {
            let _ = h.join();
        }
        self.stop_server.store(true, Ordering::Relaxed);
        if let Some(h) = self.server.take() {
            let _ = h.join();
        }
    }
}

/// What a [`TcpFlow`] saw.
#[derive(Debug, Clone)]
pub struct TcpFlowReport {
    /// Bytes the client wrote.
    pub sent: u64,
    /// Bytes the server read and echoed.
    pub server_echoed: u64,
    /// Bytes the client got back, each checked.
    pub echoed: u64,
    /// Longest time the client waited for more echoed bytes.
    pub longest_gap: Duration,
    pub elapsed: Duration,
}

impl TcpFlowReport {
    /// Every byte sent came back, checked, and the flow carried something.
    pub fn complete(&self) -> bool {
        self.sent > 0 && self.echoed == self.sent && self.server_echoed == self.sent
    }
}

impl fmt::Display for TcpFlowReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} bytes sent in {:?}, {} echoed by the server, {} back at the client; longest \
             wait for echoed bytes {:?}",
            self.sent, self.elapsed, self.server_echoed, self.echoed, self.longest_gap
        )
    }
}

/// One long-lived TCP connection carrying a steady flow: a client in one namespace writes a
/// chunk of pseudo-random bytes every `interval` to a server in another, which echoes every
/// byte; the client checks each echoed byte. Runs until [`TcpFlow::finish`]; stops on drop.
/// A path that stops carrying it shows as a long [`TcpFlowReport::longest_gap`], and as a
/// failure once nothing moves for `timeout`.
pub struct TcpFlow {
    what: String,
    stop: Arc<AtomicBool>,
    echoed: Arc<AtomicU64>,
    client: Option<JoinHandle<Result<FlowClientSide, String>>>,
    server: Option<JoinHandle<Result<u64, String>>>,
    start: Instant,
}

/// What the client of a [`TcpFlow`] saw: bytes sent, bytes echoed back, longest wait for
/// echoes.
type FlowClientSide = (u64, u64, Duration);

/// Byte `offset` of the flow's stream (chunk `offset / chunk` of [`pattern`]s).
struct FlowStream {
    chunk: usize,
    index: u64,
    bytes: Vec<u8>,
}

impl FlowStream {
    fn new(chunk: usize) -> FlowStream {
        FlowStream {
            chunk,
            index: 0,
            bytes: pattern(chunk, 0x51),
        }
    }

    fn chunk_at(&mut self, index: u64) -> &[u8] {
        if self.index != index {
            self.index = index;
            self.bytes = pattern(self.chunk, 0x51 ^ (index << 8));
        }
        &self.bytes
    }
}

impl TcpFlow {
    /// Connects from `client_ns` to `server`:(ephemeral) in `server_ns` and starts the flow.
    pub fn start(
        client_ns: &str,
        server_ns: &str,
        server: IpAddr,
        chunk: usize,
        interval: Duration,
        timeout: Duration,
    ) -> Result<TcpFlow, String> {
        assert!(chunk > 0, "chunks carry at least one byte");
        let what = format!("TCP flow {client_ns} -> {server_ns} [{server}]");
        let stop = Arc::new(AtomicBool::new(false));
        let echoed = Arc::new(AtomicU64::new(0));
        let (port_tx, port_rx) = mpsc::channel();

        let srv_stop = stop.clone();
        let srv = in_netns(server_ns, move || {
            let l = TcpListener::bind((server, 0)).map_err(|e| format!("bind {server}: {e}"))?;
            let _ = port_tx.send(l.local_addr().map_err(|e| e.to_string())?.port());
            l.set_nonblocking(true).map_err(|e| e.to_string())?;
            let deadline = Instant::now() + timeout;
            let mut s = loop {
                match l.accept() {
                    Ok((s, _)) => break s,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if srv_stop.load(Ordering::Relaxed) || Instant::now() >= deadline {
                            return Err("no connection accepted".into());
                        }
                        thread::sleep(Duration::from_millis(5));
                    }
                    Err(e) => return Err(format!("accept: {e}")),
                }
            };
            s.set_nonblocking(false).map_err(|e| e.to_string())?;
            s.set_read_timeout(Some(timeout))
                .map_err(|e| e.to_string())?;
            s.set_write_timeout(Some(timeout))
                .map_err(|e| e.to_string())?;
            let mut buf = vec![0u8; 64 * 1024];
            let mut total = 0u64;
            loop {
                let n = match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(format!("read after {total} bytes: {e}")),
                };
                s.write_all(&buf[..n])
                    .map_err(|e| format!("echo after {total} bytes: {e}"))?;
                total += n as u64;
            }
            let _ = s.shutdown(Shutdown::Write);
            Ok(total)
        });
        let Ok(port) = port_rx.recv_timeout(Duration::from_secs(10)) else {
            stop.store(true, Ordering::Relaxed);
            return Err(join(srv, &format!("{what}: server"))
                .err()
                .unwrap_or_else(|| format!("{what}: server gave no port")));
        };

        let (cli_stop, count) = (stop.clone(), echoed.clone());
        let cli = in_netns(client_ns, move || {
            let to = SocketAddr::new(server, port);
            let mut s = TcpStream::connect_timeout(&to, timeout)
                .map_err(|e| format!("connect to {to}: {e}"))?;
            s.set_read_timeout(Some(timeout))
                .map_err(|e| e.to_string())?;
            s.set_write_timeout(Some(timeout))
                .map_err(|e| e.to_string())?;
            let r = s.try_clone().map_err(|e| format!("clone socket: {e}"))?;
            thread::scope(|scope| {
                let reader = scope.spawn(|| flow_echoes(r, chunk, &count));
                let mut out = FlowStream::new(chunk);
                let mut sent = 0u64;
                let mut index = 0u64;
                let written = loop {
                    if cli_stop.load(Ordering::Relaxed) {
                        break Ok(());
                    }
                    if let Err(e) = s.write_all(out.chunk_at(index)) {
                        break Err(format!("send after {sent} bytes: {e}"));
                    }
                    sent += chunk as u64;
                    index += 1;
                    thread::sleep(interval);
                };
                // The server echoes the rest and closes: the reader sees the end.
                let _ = s.shutdown(Shutdown::Write);
                let read = reader
                    .join()
                    .map_err(|_| "echo reader panicked".to_string())?;
                written?;
                let (echoed, gap) = read?;
                Ok((sent, echoed, gap))
            })
        });
        Ok(TcpFlow {
            what,
            stop,
            echoed,
            client: Some(cli),
            server: Some(srv),
            start: Instant::now(),
        })
    }

    /// Bytes echoed back to the client so far.
    pub fn echoed(&self) -> u64 {
        self.echoed.load(Ordering::Relaxed)
    }

    /// Waits up to `timeout` until at least `n` bytes came back; false if they did not.
    pub fn wait_for_echoed(&self, n: u64, timeout: Duration) -> bool {
        poll_until(timeout, || (self.echoed() >= n).then_some(())).is_some()
    }

    /// Bytes a phase of a hitless-flow test carries ([`TcpFlow::phase`]): more than the largest
    /// default TCP receive window (tcp_rmem max, 6 MiB), so a conntrack entry that missed a
    /// phase would judge the next segment out of window.
    pub const PHASE_BYTES: u64 = 16 * 1024 * 1024;

    /// Waits until the flow carried another [`TcpFlow::PHASE_BYTES`], echoed and checked;
    /// panics naming `what` (when it stopped) if it did not within `timeout`.
    #[track_caller]
    pub fn phase(&self, timeout: Duration, what: &str) {
        let want = self.echoed() + Self::PHASE_BYTES;
        assert!(
            self.wait_for_echoed(want, timeout),
            "the flow stopped {what}: {} bytes echoed, wanted {want}",
            self.echoed()
        );
    }

    /// [`TcpFlow::finish`], asserting that every byte came back; `what` labels the report.
    #[track_caller]
    pub fn finish_complete(self, what: &str) {
        let r = self.finish().unwrap_or_else(|e| panic!("{what}: {e}"));
        eprintln!("{what}: {r}");
        assert!(r.complete(), "{what}: the flow lost bytes: {r}");
    }

    /// Stops writing, waits for the last echoes and the end of the connection, and reports.
    pub fn finish(mut self) -> Result<TcpFlowReport, String> {
        self.stop.store(true, Ordering::Relaxed);
        let client = join(self.client.take().expect("running"), "client");
        let server = join(self.server.take().expect("running"), "server");
        match (client, server) {
            (Ok((sent, echoed, longest_gap)), Ok(server_echoed)) => Ok(TcpFlowReport {
                sent,
                server_echoed,
                echoed,
                longest_gap,
                elapsed: self.start.elapsed(),
            }),
            (c, s) => Err(format!(
                "{} failed: {}; {}",
                self.what,
                c.err().unwrap_or_else(|| "client: ok".into()),
                s.err().unwrap_or_else(|| "server: ok".into())
            )),
        }
    }
}

impl Drop for TcpFlow {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.client.take() {
            let _ = h.join();
        }
        if let Some(h) = self.server.take() {
            let _ = h.join();
        }
    }
}

/// The reading half of a [`TcpFlow`] client: checks every echoed byte until the server closes;
/// returns the bytes checked and the longest wait between two reads.
fn flow_echoes(
    mut r: TcpStream,
    chunk: usize,
    count: &AtomicU64,
) -> Result<(u64, Duration), String> {
    let mut want = FlowStream::new(chunk);
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0u64;
    let mut last = Instant::now();
    let mut longest = Duration::ZERO;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("reading echoes after {got} bytes: {e}")),
        };
        let now = Instant::now();
        longest = longest.max(now - last);
        last = now;
        for (i, &b) in buf[..n].iter().enumerate() {
            let at = got + i as u64;
            let expected = want.chunk_at(at / chunk as u64)
                [usize::try_from(at % chunk as u64).expect("offset within a chunk")];
            if b != expected {
                return Err(format!("echoed byte {at} corrupted"));
            }
        }
        got += n as u64;
        count.store(got, Ordering::Relaxed);
    }
    if !got.is_multiple_of(chunk as u64) {
        return Err(format!("the echo ended mid-chunk, after {got} bytes"));
    }
    Ok((got, longest))
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Server side of [`UdpStream`].
fn stream_server(
    s: &UdpSocket,
    size: usize,
    stop: &AtomicBool,
) -> Result<StreamServerSide, String> {
    s.set_read_timeout(Some(Duration::from_millis(20)))
        .map_err(|e| e.to_string())?;
    let (mut received, mut duplicates) = (BTreeSet::new(), 0u32);
    let (mut last, mut longest_gap) = (None::<Instant>, Duration::ZERO);
    let mut buf = vec![0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        let (n, from) = match s.recv_from(&mut buf) {
            Ok(x) => x,
            Err(e) if is_timeout(&e) => continue,
            Err(e) => return Err(format!("recv: {e}")),
        };
        let now = Instant::now();
        if let Some(t) = last {
            longest_gap = longest_gap.max(now - t);
        }
        last = Some(now);
        let d = &buf[..n];
        if n < 4 {
            return Err(format!("runt datagram of {n} bytes from {from}"));
        }
        let seq = u32::from_be_bytes([d[0], d[1], d[2], d[3]]);
        let want = udp_datagram(seq, size);
        if d != want.as_slice() {
            return Err(format!(
                "datagram {seq} corrupted: {}",
                first_difference(d, &want)
            ));
        }
        if !received.insert(seq) {
            duplicates += 1;
        }
        s.send_to(d, from)
            .map_err(|e| format!("echo of {seq}: {e}"))?;
    }
    Ok(StreamServerSide {
        received,
        duplicates,
        longest_gap,
    })
}

/// Client side of [`UdpStream`].
fn stream_client(
    server: SocketAddr,
    interval: Duration,
    size: usize,
    stop: &AtomicBool,
    echo_count: &AtomicU32,
) -> Result<StreamClientSide, String> {
    let any: IpAddr = if server.is_ipv4() {
        Ipv4Addr::UNSPECIFIED.into()
    } else {
        Ipv6Addr::UNSPECIFIED.into()
    };
    let s = UdpSocket::bind((any, 0)).map_err(|e| format!("bind: {e}"))?;
    s.connect(server).map_err(|e| format!("connect: {e}"))?;
    // Echoes are taken by a thread of their own: socket timeouts have the granularity of a
    // jiffy (4 ms or more), far too coarse to interleave with a send every millisecond.
    let r = s.try_clone().map_err(|e| format!("clone socket: {e}"))?;
    r.set_read_timeout(Some(Duration::from_millis(20)))
        .map_err(|e| e.to_string())?;
    let receiving = AtomicBool::new(true);
    thread::scope(|scope| {
        let receiver = scope.spawn(|| stream_echoes(&r, size, &receiving, echo_count));
        let (mut sent, mut send_errors) = (0u32, 0u32);
        let mut next = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            // A failed send (an ICMP error reported on the connected socket, a full queue)
            // uses up its sequence number, so it shows up as a loss as well.
            if s.send(&udp_datagram(sent, size)).is_err() {
                send_errors += 1;
            }
            sent += 1;
            next += interval;
            let now = Instant::now();
            if next > now {
                thread::sleep(next - now);
            } else {
                // No catching up in bursts after a stall.
                next = now;
            }
        }
        thread::sleep(STREAM_DRAIN);
        receiving.store(false, Ordering::Relaxed);
        let echoed = receiver
            .join()
            .map_err(|_| "echo receiver panicked".to_string())??;
        Ok(StreamClientSide {
            sent,
            send_errors,
            echoed,
        })
    })
}

/// The echo-receiving half of [`stream_client`]: the sequence numbers echoed back.
fn stream_echoes(
    r: &UdpSocket,
    size: usize,
    receiving: &AtomicBool,
    echo_count: &AtomicU32,
) -> Result<BTreeSet<u32>, String> {
    let mut echoed = BTreeSet::new();
    let mut buf = vec![0u8; 2048];
    while receiving.load(Ordering::Relaxed) {
        match r.recv(&mut buf) {
            Ok(n) => {
                let d = &buf[..n];
                if n < 4 {
                    return Err(format!("runt echo of {n} bytes"));
                }
                let seq = u32::from_be_bytes([d[0], d[1], d[2], d[3]]);
                let want = udp_datagram(seq, size);
                if d != want.as_slice() {
                    return Err(format!(
                        "echo of {seq} corrupted: {}",
                        first_difference(d, &want)
                    ));
                }
                if echoed.insert(seq) {
                    echo_count.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(e) if is_timeout(&e) => {}
            // An ICMP error for an earlier datagram: that datagram shows as lost.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
            Err(e) => return Err(format!("recv: {e}")),
        }
    }
    Ok(echoed)
}

/// Sends one Ethernet frame out of interface `ifname` of namespace `ns` through an AF_PACKET
/// socket (the frame is sent as is: no ARP, no routing, any addresses).
pub fn send_frame(ns: &str, ifname: &str, frame: &[u8]) -> Result<(), String> {
    let ifname = ifname.to_string();
    let frame = frame.to_vec();
    join(
        in_netns(ns, move || send_frame_here(&ifname, &frame)),
        "raw sender",
    )
}

fn send_frame_here(ifname: &str, frame: &[u8]) -> Result<(), String> {
    let name = std::ffi::CString::new(ifname).map_err(|e| e.to_string())?;
    // SAFETY: valid NUL-terminated name; the lookup uses this thread's network namespace.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        return Err(format!(
            "no interface {ifname}: {}",
            io::Error::last_os_error()
        ));
    }
    // Protocol 0: send only, never receives.
    // SAFETY: plain socket(2) call.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(format!("socket(AF_PACKET): {}", io::Error::last_os_error()));
    }
    // SAFETY: fd is a fresh socket we own; OwnedFd closes it.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = u16::try_from(libc::AF_PACKET).expect("AF_PACKET fits u16");
    sll.sll_ifindex = i32::try_from(ifindex).map_err(|e| e.to_string())?;
    sll.sll_halen = 6;
    sll.sll_addr[..6].copy_from_slice(&frame[..6]);
    // SAFETY: buffer and address are valid for the given lengths.
    let n = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            std::ptr::addr_of!(sll).cast(),
            u32::try_from(std::mem::size_of::<libc::sockaddr_ll>()).expect("small"),
        )
    };
    if n < 0 {
        return Err(format!(
            "sendto on {ifname}: {}",
            io::Error::last_os_error()
        ));
    }
    if usize::try_from(n).ok() != Some(frame.len()) {
        return Err(format!("sent {n} of {} bytes", frame.len()));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Crafted frames
// ---------------------------------------------------------------------------------------------

/// Builders for crafted Ethernet frames (all checksums computed).
pub mod frame {
    use std::net::{Ipv4Addr, Ipv6Addr};

    pub const ETH_P_IP: u16 = 0x0800;
    pub const ETH_P_ARP: u16 = 0x0806;
    pub const ETH_P_IPV6: u16 = 0x86dd;
    pub const IPPROTO_UDP: u8 = 17;
    pub const IPPROTO_ICMPV6: u8 = 58;
    pub const BROADCAST_MAC: [u8; 6] = [0xff; 6];

    /// RFC 1071 Internet checksum over `data` (odd length padded with zero).
    pub fn checksum(data: &[u8]) -> u16 {
        let mut sum: u32 = data
            .chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
            .sum();
        while sum >> 16 != 0 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !u16::try_from(sum).expect("folded to 16 bits")
    }

    fn len16(n: usize) -> [u8; 2] {
        u16::try_from(n).expect("fits 16 bits").to_be_bytes()
    }

    pub fn ethernet(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::with_capacity(14 + payload.len());
        f.extend_from_slice(&dst);
        f.extend_from_slice(&src);
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// IPv4 header (no options, DF set, id 0) + payload.
    pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, ttl: u8, proto: u8, payload: &[u8]) -> Vec<u8> {
        let mut h = vec![0x45, 0];
        h.extend_from_slice(&len16(20 + payload.len()));
        h.extend_from_slice(&[0, 0, 0x40, 0, ttl, proto, 0, 0]);
        h.extend_from_slice(&src.octets());
        h.extend_from_slice(&dst.octets());
        let c = checksum(&h).to_be_bytes();
        h[10] = c[0];
        h[11] = c[1];
        h.extend_from_slice(payload);
        h
    }

    /// IPv6 header + payload.
    pub fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, hop_limit: u8, next: u8, payload: &[u8]) -> Vec<u8> {
        let mut h = vec![0x60, 0, 0, 0];
        h.extend_from_slice(&len16(payload.len()));
        h.extend_from_slice(&[next, hop_limit]);
        h.extend_from_slice(&src.octets());
        h.extend_from_slice(&dst.octets());
        h.extend_from_slice(payload);
        h
    }

    fn l4_checksum(pseudo: &[u8], segment: &[u8]) -> u16 {
        let mut all = pseudo.to_vec();
        all.extend_from_slice(segment);
        checksum(&all)
    }

    fn udp(sport: u16, dport: u16, data: &[u8]) -> Vec<u8> {
        let mut u = Vec::with_capacity(8 + data.len());
        u.extend_from_slice(&sport.to_be_bytes());
        u.extend_from_slice(&dport.to_be_bytes());
        u.extend_from_slice(&len16(8 + data.len()));
        u.extend_from_slice(&[0, 0]);
        u.extend_from_slice(data);
        u
    }

    fn set_udp_checksum(u: &mut [u8], c: u16) {
        let c = if c == 0 { 0xffff } else { c };
        u[6..8].copy_from_slice(&c.to_be_bytes());
    }

    /// UDP datagram over IPv4 (checksummed).
    pub fn udp4(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, data: &[u8]) -> Vec<u8> {
        let mut u = udp(sport, dport, data);
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&src.octets());
        pseudo.extend_from_slice(&dst.octets());
        pseudo.extend_from_slice(&[0, IPPROTO_UDP]);
        pseudo.extend_from_slice(&len16(u.len()));
        let c = l4_checksum(&pseudo, &u);
        set_udp_checksum(&mut u, c);
        u
    }

    fn pseudo6(src: Ipv6Addr, dst: Ipv6Addr, len: usize, next: u8) -> Vec<u8> {
        let mut p = Vec::new();
        p.extend_from_slice(&src.octets());
        p.extend_from_slice(&dst.octets());
        p.extend_from_slice(&u32::try_from(len).expect("fits").to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, next]);
        p
    }

    /// UDP datagram over IPv6 (checksummed, as IPv6 requires).
    pub fn udp6(src: Ipv6Addr, dst: Ipv6Addr, sport: u16, dport: u16, data: &[u8]) -> Vec<u8> {
        let mut u = udp(sport, dport, data);
        let c = l4_checksum(&pseudo6(src, dst, u.len(), IPPROTO_UDP), &u);
        set_udp_checksum(&mut u, c);
        u
    }

    /// Ethernet + IPv4 + UDP.
    #[allow(clippy::too_many_arguments)]
    pub fn udp4_frame(
        dst_mac: [u8; 6],
        src_mac: [u8; 6],
        src: Ipv4Addr,
        dst: Ipv4Addr,
        ttl: u8,
        sport: u16,
        dport: u16,
        data: &[u8],
    ) -> Vec<u8> {
        let ip = ipv4(
            src,
            dst,
            ttl,
            IPPROTO_UDP,
            &udp4(src, dst, sport, dport, data),
        );
        ethernet(dst_mac, src_mac, ETH_P_IP, &ip)
    }

    /// Ethernet + IPv6 + UDP.
    #[allow(clippy::too_many_arguments)]
    pub fn udp6_frame(
        dst_mac: [u8; 6],
        src_mac: [u8; 6],
        src: Ipv6Addr,
        dst: Ipv6Addr,
        hop_limit: u8,
        sport: u16,
        dport: u16,
        data: &[u8],
    ) -> Vec<u8> {
        let ip = ipv6(
            src,
            dst,
            hop_limit,
            IPPROTO_UDP,
            &udp6(src, dst, sport, dport, data),
        );
        ethernet(dst_mac, src_mac, ETH_P_IPV6, &ip)
    }

    /// Broadcast ARP request "who has `target`? tell `sender_ip`".
    pub fn arp_request(sender_mac: [u8; 6], sender_ip: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
        let mut a = vec![0, 1, 0x08, 0x00, 6, 4, 0, 1];
        a.extend_from_slice(&sender_mac);
        a.extend_from_slice(&sender_ip.octets());
        a.extend_from_slice(&[0; 6]);
        a.extend_from_slice(&target.octets());
        ethernet(BROADCAST_MAC, sender_mac, ETH_P_ARP, &a)
    }

    /// Solicited-node multicast address of `addr` (ff02::1:ffXX:XXXX).
    pub fn solicited_node(addr: Ipv6Addr) -> Ipv6Addr {
        let o = addr.octets();
        Ipv6Addr::new(
            0xff02,
            0,
            0,
            0,
            0,
            1,
            0xff00 | u16::from(o[13]),
            u16::from_be_bytes([o[14], o[15]]),
        )
    }

    /// Ethernet multicast MAC of an IPv6 multicast address (33:33 + low 32 bits).
    pub fn ipv6_multicast_mac(addr: Ipv6Addr) -> [u8; 6] {
        let o = addr.octets();
        [0x33, 0x33, o[12], o[13], o[14], o[15]]
    }

    /// Ethernet multicast MAC of an IPv4 multicast address (01:00:5e + low 23 bits).
    pub fn ipv4_multicast_mac(addr: Ipv4Addr) -> [u8; 6] {
        let o = addr.octets();
        [0x01, 0x00, 0x5e, o[1] & 0x7f, o[2], o[3]]
    }

    /// ICMPv6 neighbour solicitation for `target` (with a source link-layer address option),
    /// from `src` to `dst` (the solicited-node group for resolution, or the target itself for
    /// a unicast reachability probe), hop limit 255, in an Ethernet frame to `dst_mac`.
    pub fn neighbour_solicitation(
        dst_mac: [u8; 6],
        src_mac: [u8; 6],
        src: Ipv6Addr,
        dst: Ipv6Addr,
        target: Ipv6Addr,
    ) -> Vec<u8> {
        let mut m = vec![135, 0, 0, 0, 0, 0, 0, 0];
        m.extend_from_slice(&target.octets());
        m.extend_from_slice(&[1, 1]);
        m.extend_from_slice(&src_mac);
        let c = l4_checksum(&pseudo6(src, dst, m.len(), IPPROTO_ICMPV6), &m);
        m[2..4].copy_from_slice(&c.to_be_bytes());
        ethernet(
            dst_mac,
            src_mac,
            ETH_P_IPV6,
            &ipv6(src, dst, 255, IPPROTO_ICMPV6, &m),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_of_known_ipv4_header() {
        // Example header from RFC 1071 discussions / Wikipedia: checksum 0xb861.
        let h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(frame::checksum(&h), 0xb861);
        let mut with = h;
        with[10..12].copy_from_slice(&0xb861u16.to_be_bytes());
        assert_eq!(frame::checksum(&with), 0);
    }

    #[test]
    fn udp6_checksum_verifies() {
        let (s, d) = ("fd00::1".parse().unwrap(), "fd00::2".parse().unwrap());
        let f = frame::udp6_frame([0; 6], [0; 6], s, d, 64, 1, 2, b"hello");
        let udp = &f[54..];
        let mut p = Vec::new();
        p.extend_from_slice(&s.octets());
        p.extend_from_slice(&d.octets());
        p.extend_from_slice(&u32::try_from(udp.len()).unwrap().to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, 17]);
        p.extend_from_slice(udp);
        assert_eq!(frame::checksum(&p), 0);
    }

    #[test]
    fn addressing_matches_the_bench_script() {
        assert_eq!(Bench::v4_of(1), Ipv4Addr::new(10, 244, 0, 1));
        assert_eq!(Bench::v4_of(256), Ipv4Addr::new(10, 244, 1, 0));
        assert_eq!(Bench::v6_of(0x3e8).to_string(), "fd00::3e8");
        assert_eq!(
            frame::solicited_node("fd00::1:2".parse().unwrap()).to_string(),
            "ff02::1:ff01:2"
        );
        assert_eq!(base36(35, 2), "0z");
        assert_eq!(base36(4_194_304, 5), "2hwcg");
    }

    #[test]
    fn ethtool_features_parse() {
        let f = parse_ethtool_features(
            "Features for eth0:\nrx-checksumming: on\ntx-checksumming: off\n\
             \ttx-checksum-ip-generic: off [fixed]\ngeneric-receive-offload: on\n",
        );
        assert_eq!(f["tx-checksumming"], "off");
        assert_eq!(f["tx-checksum-ip-generic"], "off");
        assert_eq!(f["generic-receive-offload"], "on");
    }
}
