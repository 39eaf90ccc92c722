//! Who is in the mesh (DESIGN.md section 4a). Nobody, until a source says so:
//!
//! - `--meshed-cidr`: static prefixes (evaluated by `state::Config`);
//! - `--sidecar-port`: a TCP listener on the port inside the pod's own network namespace
//!   (`sidecar.rs`, sock_diag on a blocking thread);
//! - `--kube`: the pod's Kubernetes metadata, Istio's markers (`kube.rs`, `istio.rs`).
//!
//! The dynamic sources run off the controller's loop and send [`Update`]s: whole snapshots of
//! what they currently say, which `state::Node` folds in (marking only what changed dirty). Why
//! an endpoint is meshed is kept per endpoint as [`Sources`] bits, and published in a small
//! hash map pinned next to the datapath's (`MEMBERSHIP`, created by xdp-ctl, never read by the
//! datapath) so that `status` and `endpoint list` can show it from any process.
pub mod istio;
pub mod kube;
pub mod map;
pub mod sidecar;

use std::{collections::HashMap, net::IpAddr, time::Duration};

use tokio::sync::{mpsc, watch};
use tracing::info;

pub use self::map::MembershipMap;

/// Why an endpoint is (or is not) meshed: `SRC_*` bits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Sources(pub u32);

impl Sources {
    /// Inside a `--meshed-cidr`.
    pub const CIDR: u32 = 1 << 0;
    /// A listener on a `--sidecar-port` in the pod's namespace.
    pub const SIDECAR_PORT: u32 = 1 << 1;
    /// Kubernetes: annotation `sidecar.istio.io/status`.
    pub const KUBE_ANNOTATION: u32 = 1 << 2;
    /// Kubernetes: an `istio-proxy` container.
    pub const KUBE_CONTAINER: u32 = 1 << 3;
    /// Kubernetes: `istio-proxy` as a native sidecar (init container, `restartPolicy: Always`).
    pub const KUBE_NATIVE_SIDECAR: u32 = 1 << 4;
    /// Kubernetes: ambient mode (`istio.io/dataplane-mode: ambient` on the pod or namespace).
    pub const KUBE_AMBIENT: u32 = 1 << 5;
    /// Kubernetes: opted out (`xdp-fastpath.io/enabled: "false"`): never meshed.
    pub const OPTED_OUT: u32 = 1 << 16;

    const MESHING: u32 = Self::CIDR
        | Self::SIDECAR_PORT
        | Self::KUBE_ANNOTATION
        | Self::KUBE_CONTAINER
        | Self::KUBE_NATIVE_SIDECAR
        | Self::KUBE_AMBIENT;

    const NAMES: [(u32, &'static str); 7] = [
        (Self::CIDR, "cidr"),
        (Self::SIDECAR_PORT, "sidecar-port"),
        (Self::KUBE_ANNOTATION, "kube:sidecar-annotation"),
        (Self::KUBE_CONTAINER, "kube:istio-proxy-container"),
        (Self::KUBE_NATIVE_SIDECAR, "kube:native-sidecar"),
        (Self::KUBE_AMBIENT, "kube:ambient"),
        (Self::OPTED_OUT, "kube:opted-out"),
    ];

    /// Meshed: some source says so and the pod did not opt out.
    pub const fn meshed(self) -> bool {
        self.0 & Self::OPTED_OUT == 0 && self.0 & Self::MESHING != 0
    }

    /// The names of the set bits (stable: they appear in `--json`).
    pub fn names(self) -> Vec<&'static str> {
        Self::NAMES
            .iter()
            .filter(|(b, _)| self.0 & b != 0)
            .map(|(_, n)| *n)
            .collect()
    }
}

/// The configured sources, as published for `status`: `CFG_*` bits.
pub const CFG_CIDR: u32 = 1 << 0;
pub const CFG_SIDECAR_PORT: u32 = 1 << 1;
pub const CFG_KUBE: u32 = 1 << 2;
/// Every dynamic source delivered its first answer (the kube source: its first list).
pub const CFG_SYNCED: u32 = 1 << 8;

/// The names of the configured sources in `CFG_*` bits.
pub fn configured_names(bits: u32) -> Vec<&'static str> {
    [
        (CFG_CIDR, "cidr"),
        (CFG_SIDECAR_PORT, "sidecar-port"),
        (CFG_KUBE, "kube"),
    ]
    .iter()
    .filter(|(b, _)| bits & b != 0)
    .map(|(_, n)| *n)
    .collect()
}

/// A pod interface the sidecar source probes: the host veth and its peer (ifindex in the pod's
/// namespace, and that namespace's id in ours).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Target {
    pub ifindex: u32,
    pub peer: (u32, i32),
}

/// What a dynamic source says now (a whole snapshot, not a delta).
#[derive(Debug)]
pub enum Update {
    /// The targets whose namespace has a listener on a sidecar port.
    Sidecar(Vec<Target>),
    /// Pod addresses and their `KUBE_*` / `OPTED_OUT` bits, after the first full list.
    Kube(HashMap<IpAddr, u32>),
}

/// `run`'s membership options (besides the CIDRs, which live in `state::Config`).
#[derive(Clone, Debug, Default)]
pub struct Options {
    pub sidecar_ports: Vec<u16>,
    pub sidecar_period: Duration,
    pub kube: Option<kube::KubeOptions>,
}

/// The updates of the running dynamic sources (kept apart from [`Membership`] so that the
/// controller's loop can wait for them while it changes everything else).
pub struct Updates(mpsc::UnboundedReceiver<Update>);

impl Updates {
    /// The next update of a dynamic source; never resolves when there is none.
    pub async fn next(&mut self) -> Update {
        match self.0.recv().await {
            Some(u) => u,
            None => std::future::pending().await,
        }
    }
}

/// The running dynamic sources, as the controller sees them.
pub struct Membership {
    /// `None` until the controller's first reconcile tells the sidecar source what to probe.
    targets: Option<watch::Sender<Option<Vec<Target>>>>,
    sidecar_pending: bool,
    kube_pending: bool,
    configured: u32,
}

impl Membership {
    /// Starts the configured dynamic sources; `cidr`: whether `--meshed-cidr` was given.
    pub fn start(opts: &Options, cidr: bool) -> anyhow::Result<(Self, Updates)> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut configured = if cidr { CFG_CIDR } else { 0 };
        let mut targets = None;
        if !opts.sidecar_ports.is_empty() {
            configured |= CFG_SIDECAR_PORT;
            let (ttx, trx) = watch::channel(None);
            sidecar::spawn(
                opts.sidecar_ports.clone(),
                opts.sidecar_period,
                trx,
                tx.clone(),
            )?;
            targets = Some(ttx);
        }
        if let Some(k) = &opts.kube {
            configured |= CFG_KUBE;
            kube::spawn(k.clone(), tx)?;
        }
        if configured == 0 {
            tracing::warn!(
                "no membership source (--meshed-cidr, --sidecar-port, --kube): no pod is meshed, \
                 nothing is fast-pathed"
            );
        } else {
            info!(sources = ?configured_names(configured), "membership sources");
        }
        let m = Self {
            sidecar_pending: targets.is_some(),
            targets,
            kube_pending: opts.kube.is_some(),
            configured,
        };
        Ok((m, Updates(rx)))
    }

    /// Notes that a source answered (its first answer makes it synced).
    pub fn answered(&mut self, u: &Update) {
        match u {
            Update::Sidecar(_) => self.sidecar_pending = false,
            Update::Kube(_) => self.kube_pending = false,
        }
    }

    /// Every dynamic source has delivered its first answer.
    pub fn synced(&self) -> bool {
        !self.sidecar_pending && !self.kube_pending
    }

    /// `CFG_*` bits for `status`.
    pub fn config_bits(&self) -> u32 {
        self.configured | if self.synced() { CFG_SYNCED } else { 0 }
    }

    /// Tells the sidecar source which pod interfaces exist (no-op without it or when unchanged).
    pub fn set_targets(&self, mut t: Vec<Target>) {
        if let Some(tx) = &self.targets {
            t.sort_unstable();
            tx.send_if_modified(|cur| {
                if cur.as_ref() == Some(&t) {
                    false
                } else {
                    *cur = Some(t);
                    true
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_meshed_and_names() {
        assert!(!Sources(0).meshed());
        assert!(Sources(Sources::CIDR).meshed());
        assert!(!Sources(Sources::CIDR | Sources::OPTED_OUT).meshed());
        assert!(!Sources(Sources::OPTED_OUT).meshed());
        assert_eq!(
            Sources(Sources::SIDECAR_PORT | Sources::KUBE_AMBIENT).names(),
            vec!["sidecar-port", "kube:ambient"]
        );
        assert_eq!(configured_names(CFG_KUBE | CFG_SYNCED), vec!["kube"]);
    }
}
