//! `xdp-ctl`: attach the xdp-fastpath datapath to pod veths and manage it. This file parses
//! and dispatches; `output` renders.
mod output;

use std::{path::PathBuf, process::ExitCode};

use anyhow::{bail, Context as _, Result};
use clap::{Args, Parser, Subcommand};
use output::Output;
use xdp_ctl::{
    attach::{self, Datapath, Mode},
    controller::membership,
    maps::Prefix,
    netns,
    nl::parse_mac,
    ops,
    pin::{PinDir, DEFAULT_PIN_DIR},
};

/// Pod-to-pod fast path for service-mesh traffic on one node: a program on each pod's
/// host-side veth (XDP, or TCX ingress with --datapath tc) redirects meshed pod-to-pod packets
/// straight to the target pod, skipping the host's netfilter rules. Everything else goes to
/// the kernel as before.
#[derive(Parser)]
#[command(name = "xdp-ctl", version, propagate_version = true)]
struct Cli {
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// Where maps and links are pinned (must be on bpffs).
    #[arg(long, global = true, value_name = "DIR", default_value = DEFAULT_PIN_DIR,
          env = "XDP_FASTPATH_PIN_DIR")]
    pin_dir: PathBuf,
    /// Act on the interfaces of the named network namespace (/run/netns/NAME). xdp-ctl stays in
    /// the host mount namespace, so pins land on the host's bpffs: use this instead of
    /// `ip netns exec`, whose private /sys would make the pins (and the datapath) vanish.
    #[arg(long, global = true, value_name = "NAME", env = "XDP_FASTPATH_NETNS")]
    netns: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Load the datapath, attach it to IFACEs (pod host-side veths), pin it, and exit; it keeps
    /// running. All-or-nothing: on any failure nothing changes. On an interface attached with
    /// the other datapath, switches it (the new program runs before the old one goes).
    Attach {
        /// Which hook carries the fast path [default: tc where the kernel has TCX (6.6+),
        /// else xdp].
        #[arg(long, value_enum)]
        datapath: Option<Datapath>,
        /// XDP attach mode (ignored with --datapath tc).
        #[arg(long, value_enum, default_value_t = Mode::Native)]
        mode: Mode,
        /// Pod host-side veths.
        #[arg(value_name = "IFACE", required_unless_present = "uplinks")]
        ifaces: Vec<String>,
        /// An uplink towards other nodes (repeatable): its program takes packets from meshed
        /// remote pods (`xdp-ctl remote`) straight into meshed local pods. With --datapath xdp
        /// it is also an XDP redirect target of the pods' programs (the driver must support
        /// XDP transmit).
        #[arg(long = "uplink", value_name = "IFACE")]
        uplinks: Vec<String>,
    },
    /// Detach from IFACEs (or all), restore the pods' interface settings, and remove the pins
    /// when nothing stays attached.
    Detach {
        #[arg(
            value_name = "IFACE",
            required_unless_present = "all",
            conflicts_with = "all"
        )]
        ifaces: Vec<String>,
        /// Detach from every interface.
        #[arg(long)]
        all: bool,
    },
    /// Manage the local pod endpoints the datapath forwards to.
    #[command(subcommand)]
    Endpoint(EndpointCmd),
    /// Manage the pod prefixes of other nodes: meshed local pods exchange traffic with meshed
    /// remote pods through the uplinks (`attach --uplink`), skipping the host's netfilter on
    /// this node.
    #[command(subcommand)]
    Remote(RemoteCmd),
    /// Run the controller: follow links, routes and neighbours over rtnetlink and keep the
    /// datapath equal to the node's pods (attach pod veths as they appear, program their
    /// endpoints, forget them when they go). Stops on SIGTERM/SIGINT; the datapath stays.
    Run(RunArgs),
    /// Show attached interfaces (and the controller, if one runs).
    Status,
    /// Show packet and byte counters per reason.
    Stats,
    /// Stream sampled datapath events (addresses, ports, protocol, action, reason, ingress and
    /// egress interface) until Ctrl-C: the fast path's tcpdump (which cannot see redirected
    /// packets). While no monitor runs, the datapath pays one array lookup per packet.
    Monitor(xdp_ctl::monitor::MonitorArgs),
    /// Mount bpffs on DIR unless one is mounted there (the DaemonSet's init step).
    MountBpffs {
        #[arg(value_name = "DIR", default_value = "/sys/fs/bpf")]
        dir: PathBuf,
    },
}

/// Every option also comes from the environment variable shown (repeatable ones as a
/// comma-separated list); the command line wins.
#[derive(Args)]
struct RunArgs {
    /// Host veths whose name starts with P are pod interfaces (repeatable), e.g. cali, lxc.
    #[arg(
        long = "iface-prefix",
        value_name = "P",
        required = true,
        env = "XDP_FASTPATH_IFACE_PREFIX",
        value_delimiter = ','
    )]
    iface_prefixes: Vec<String>,
    /// Membership: pod addresses in C are meshed (repeatable). With no membership source at
    /// all, no pod is meshed and nothing is fast-pathed.
    #[arg(
        long = "meshed-cidr",
        value_name = "C",
        env = "XDP_FASTPATH_MESHED_CIDR",
        value_delimiter = ','
    )]
    meshed: Vec<Prefix>,
    /// Membership: a pod is meshed while a TCP socket listens on port P in its network
    /// namespace (repeatable; Istio's inbound capture port is 15006). Polled every 500 ms.
    #[arg(long = "sidecar-port", value_name = "P", env = "XDP_FASTPATH_SIDECAR_PORT",
          value_delimiter = ',', value_parser = clap::value_parser!(u16).range(1..))]
    sidecar_ports: Vec<u16>,
    /// Membership: watch this node's pods and their namespaces in Kubernetes; a pod is meshed
    /// when Istio's markers say so (sidecar.istio.io/status, an istio-proxy container or
    /// native sidecar, ambient mode), unless annotated xdp-fastpath.io/enabled: "false".
    /// In-cluster configuration unless --kubeconfig is given.
    #[arg(long, env = "XDP_FASTPATH_KUBE")]
    kube: bool,
    /// Kubeconfig for --kube (default: in-cluster service account, or $KUBECONFIG).
    #[arg(
        long,
        value_name = "FILE",
        env = "XDP_FASTPATH_KUBECONFIG",
        requires = "kube"
    )]
    kubeconfig: Option<PathBuf>,
    /// This node's name, for --kube (pods with spec.nodeName = NAME).
    #[arg(long, value_name = "NAME", env = "NODE_NAME")]
    node_name: Option<String>,
    /// Pod addresses in C are left to the kernel entirely (repeatable).
    #[arg(
        long = "exclude-cidr",
        value_name = "C",
        env = "XDP_FASTPATH_EXCLUDE_CIDR",
        value_delimiter = ','
    )]
    exclude: Vec<Prefix>,
    /// Uplink towards other nodes (repeatable): attached with the uplink program, so meshed
    /// traffic between local pods and the pods of --remote-meshed-cidr crosses this node
    /// without its netfilter (see `xdp-ctl attach --uplink`). Attached when it appears.
    #[arg(
        long = "uplink",
        value_name = "IFACE",
        env = "XDP_FASTPATH_UPLINK",
        value_delimiter = ','
    )]
    uplinks: Vec<String>,
    /// Pod addresses on other nodes in C are meshed (repeatable), e.g. the other nodes' pod
    /// CIDRs; reached through the uplinks. Needs --uplink.
    #[arg(
        long = "remote-meshed-cidr",
        value_name = "C",
        env = "XDP_FASTPATH_REMOTE_MESHED_CIDR",
        value_delimiter = ',',
        requires = "uplinks"
    )]
    remote_meshed: Vec<Prefix>,
    /// Which hook carries the fast path [default: tc where the kernel has TCX (6.6+), else
    /// xdp].
    #[arg(long, value_enum, env = "XDP_FASTPATH_DATAPATH")]
    datapath: Option<Datapath>,
    /// XDP attach mode (ignored with --datapath tc).
    #[arg(long, value_enum, default_value_t = Mode::Native, env = "XDP_FASTPATH_MODE")]
    mode: Mode,
    /// Seconds between full dump-and-diff resyncs.
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0, value_parser = positive_secs,
          env = "XDP_FASTPATH_RESYNC_INTERVAL")]
    resync_interval: f64,
    /// Detach everything on SIGTERM/SIGINT (default: leave the datapath in place).
    #[arg(long, env = "XDP_FASTPATH_DETACH_ON_EXIT")]
    detach_on_exit: bool,
    /// Serve /metrics (Prometheus), /healthz and /readyz over HTTP on ADDR (IP:PORT), or `off`.
    #[arg(long, value_name = "ADDR", default_value = xdp_ctl::http::DEFAULT_LISTEN,
          env = "XDP_FASTPATH_LISTEN")]
    listen: xdp_ctl::http::Listen,
}

/// The asked-for datapath, else the kernel's default (`probe`), saying so on stderr when the
/// preferred `tc` is not available.
fn datapath_or_default(asked: Option<Datapath>) -> Datapath {
    asked.unwrap_or_else(|| {
        let d = xdp_ctl::probe::default_datapath();
        if let Some(why) = &d.fallback {
            eprintln!("xdp-ctl: note: {why}");
        }
        d.datapath
    })
}

fn positive_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.05..=86_400.0).contains(&v) => Ok(v),
        _ => Err(format!("invalid interval {s:?} (seconds, 0.05 to 86400)")),
    }
}

#[derive(Subcommand)]
enum EndpointCmd {
    /// Add or replace an endpoint: pod address (or prefix) behind a host veth.
    Add(EndpointAdd),
    /// Remove an endpoint.
    Del {
        /// Pod address or prefix, e.g. 10.244.0.5 or fd00::5/128.
        #[arg(value_name = "IP[/PREFIX]")]
        prefix: Prefix,
    },
    /// List endpoints.
    List,
}

#[derive(Subcommand)]
enum RemoteCmd {
    /// Add or replace a remote pod prefix, e.g. another node's pod CIDR.
    Add {
        #[arg(value_name = "IP[/PREFIX]")]
        prefix: Prefix,
        /// These addresses are reached through (and arrive on) this attached uplink only
        /// [default: any attached uplink].
        #[arg(long, value_name = "IFACE")]
        via: Option<String>,
        /// An exception inside a meshed prefix: these pods are not in the mesh.
        #[arg(long)]
        not_meshed: bool,
    },
    /// Remove a remote prefix.
    Del {
        #[arg(value_name = "IP[/PREFIX]")]
        prefix: Prefix,
    },
    /// List remote prefixes.
    List,
}

#[derive(Args)]
struct EndpointAdd {
    /// Pod address or prefix, e.g. 10.244.0.5 or fd00::5/128.
    #[arg(value_name = "IP[/PREFIX]")]
    prefix: Prefix,
    /// The pod's host-side veth (must be attached).
    #[arg(long, value_name = "IFACE")]
    iface: String,
    /// The pod's MAC; default: the node's neighbour entry for the address on IFACE.
    #[arg(long, value_name = "MAC", value_parser = mac_arg)]
    mac: Option<[u8; 6]>,
    /// The pod is not in the mesh: its traffic keeps going through netfilter.
    #[arg(long)]
    not_meshed: bool,
}

fn mac_arg(s: &str) -> Result<[u8; 6], String> {
    parse_mac(s).ok_or_else(|| format!("invalid MAC address {s:?} (expected aa:bb:cc:dd:ee:ff)"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                // The controller logs what it does; one-shot commands only warn.
                let default = if matches!(cli.cmd, Cmd::Run(_)) {
                    "info"
                } else {
                    "warn"
                };
                tracing_subscriber::EnvFilter::new(default)
            }),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the context chain, outermost first.
            eprintln!("xdp-ctl: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Fails early, with what to do, when we lack the capabilities every command needs.
fn check_privileges() -> Result<()> {
    use caps::{CapSet, Capability};
    let has = |c| caps::has_cap(None, CapSet::Effective, c).unwrap_or(false);
    if !(has(Capability::CAP_NET_ADMIN)
        && (has(Capability::CAP_BPF) || has(Capability::CAP_SYS_ADMIN)))
    {
        bail!("missing privileges: run as root, or with CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN");
    }
    Ok(())
}

fn run(cli: &Cli) -> Result<()> {
    check_privileges()?;
    if let Some(name) = &cli.netns {
        // Only this thread's network namespace changes; we are still single-threaded here.
        let ns = netns::open_named(name)?;
        netns::setns(&ns).with_context(|| format!("entering network namespace {name}"))?;
    }
    let pins = PinDir::new(&cli.pin_dir);
    let out = Output::new(cli.json);
    match &cli.cmd {
        Cmd::Attach {
            datapath,
            mode,
            ifaces,
            uplinks,
        } => out.attach(&attach::attach(
            &pins,
            ifaces,
            uplinks,
            datapath_or_default(*datapath),
            *mode,
        )?),
        Cmd::Detach { ifaces, all } => {
            let which = if *all { None } else { Some(ifaces.as_slice()) };
            out.detach(pins.root(), &attach::detach(&pins, which)?);
        }
        Cmd::Endpoint(EndpointCmd::Add(a)) => out.endpoint_added(&ops::endpoint_add(
            &pins,
            a.prefix,
            &a.iface,
            a.mac,
            !a.not_meshed,
        )?),
        Cmd::Endpoint(EndpointCmd::Del { prefix }) => {
            ops::endpoint_del(&pins, *prefix)?;
            out.endpoint_deleted(*prefix);
        }
        Cmd::Endpoint(EndpointCmd::List) => out.endpoints(&ops::endpoint_list(&pins)?),
        Cmd::Remote(RemoteCmd::Add {
            prefix,
            via,
            not_meshed,
        }) => out.remote_added(&ops::remote_add(
            &pins,
            *prefix,
            via.as_deref(),
            !not_meshed,
        )?),
        Cmd::Remote(RemoteCmd::Del { prefix }) => {
            ops::remote_del(&pins, *prefix)?;
            out.remote_deleted(*prefix);
        }
        Cmd::Remote(RemoteCmd::List) => out.remotes(&ops::remote_list(&pins)?),
        Cmd::Run(a) => xdp_ctl::controller::run(&pins, run_options(a)?)?,
        Cmd::Status => out.status(&ops::status(&pins)?),
        Cmd::Stats => out.stats(&ops::stats(&pins)?, &ops::flow_table(&pins)?),
        Cmd::Monitor(a) => {
            xdp_ctl::monitor::run(&pins, a, cli.json)?;
        }
        Cmd::MountBpffs { dir } => {
            let mounted = xdp_ctl::bpffs::ensure_mounted(dir)?;
            println!(
                "{}: {}",
                dir.display(),
                if mounted {
                    "bpffs mounted"
                } else {
                    "bpffs already mounted, nothing to do"
                }
            );
        }
    }
    Ok(())
}

fn run_options(a: &RunArgs) -> Result<xdp_ctl::controller::RunOptions> {
    let kube = if a.kube {
        let node_name = a
            .node_name
            .clone()
            .filter(|n| !n.trim().is_empty())
            .context(
                "--kube needs this node's name: pass --node-name NAME or set NODE_NAME \
             (in a DaemonSet, from the downward API: spec.nodeName)",
            )?;
        Some(membership::kube::KubeOptions {
            kubeconfig: a.kubeconfig.clone(),
            node_name,
        })
    } else {
        None
    };
    Ok(xdp_ctl::controller::RunOptions {
        config: xdp_ctl::controller::state::Config {
            iface_prefixes: a.iface_prefixes.clone(),
            meshed: a.meshed.clone(),
            exclude: a.exclude.clone(),
            uplinks: a.uplinks.clone(),
            remote_meshed: a.remote_meshed.clone(),
        },
        datapath: datapath_or_default(a.datapath),
        mode: a.mode,
        resync_interval: std::time::Duration::from_secs_f64(a.resync_interval),
        detach_on_exit: a.detach_on_exit,
        membership: membership::Options {
            sidecar_ports: a.sidecar_ports.clone(),
            sidecar_period: std::time::Duration::from_millis(500),
            kube,
        },
        listen: a.listen.0,
    })
}
