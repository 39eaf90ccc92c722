//! The Kubernetes source (`--kube`): watches this node's pods (`spec.nodeName`) and all
//! namespaces with kube-runtime's watcher and reflector, and sends the Istio verdict of every
//! pod address (`istio.rs`) whenever it changes.
//!
//! It runs on a thread of its own with its own runtime, so that the controller's loop never
//! waits for the API. The watcher relists on 410 Gone and resumes after disconnects; errors are
//! retried with back-off while the stores keep the last known state (nothing is sent until a
//! new list completes), so an API outage changes nothing on the node. The controller is not
//! ready until the first list of both has been sent.
use std::{path::PathBuf, time::Duration};

use anyhow::{Context as _, Result};
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::{
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{
        reflector::{self, reflector, Store},
        utils::Backoff,
        watcher, WatchStreamExt as _,
    },
    Api, Client, Config,
};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::{istio, Update};

#[derive(Clone, Debug)]
pub struct KubeOptions {
    /// `None`: in-cluster configuration (or `$KUBECONFIG`, `~/.kube/config`).
    pub kubeconfig: Option<PathBuf>,
    pub node_name: String,
}

/// Recomputing the snapshot waits this long after the last watch event (bursts of pods).
const DEBOUNCE: Duration = Duration::from_millis(50);
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Loads the configuration and builds the client now (a bad kubeconfig is a start-up error),
/// then runs the watches on that thread, with a runtime of its own.
pub fn spawn(opts: KubeOptions, tx: mpsc::UnboundedSender<Update>) -> Result<()> {
    let (started_tx, started_rx) = std::sync::mpsc::channel::<Result<()>>();
    std::thread::Builder::new()
        .name("kube-source".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the kube source's runtime")
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = started_tx.send(Err(e));
                    return;
                }
            };
            rt.block_on(async move {
                match client(&opts).await {
                    Ok(c) => {
                        let _ = started_tx.send(Ok(()));
                        run(c, opts.node_name, tx).await;
                    }
                    Err(e) => {
                        let _ = started_tx.send(Err(e));
                    }
                }
            });
        })
        .context("starting the kube source thread")?;
    started_rx
        .recv()
        .context("the kube source thread ended during start-up")?
}

async fn client(opts: &KubeOptions) -> Result<Client> {
    let config = match &opts.kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path).map_err(|e| {
                anyhow::anyhow!("reading kubeconfig {}: {}", path.display(), one_line(&e))
            })?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|e| {
                    anyhow::anyhow!("using kubeconfig {}: {}", path.display(), one_line(&e))
                })?
        }
        None => Config::infer().await.context(
            "no Kubernetes configuration: not running in a cluster (no service account) and no \
             kubeconfig found; pass --kubeconfig FILE",
        )?,
    };
    info!(api = %config.cluster_url, "kube source: Kubernetes API");
    Client::try_from(config).context("building the Kubernetes client")
}

/// An error and its causes on one line (YAML errors come with a multi-line excerpt).
fn one_line(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s = format!("{s}: {c}");
        cause = c.source();
    }
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Exponential back-off between `BACKOFF_MIN` and `BACKOFF_MAX`, reset after a success.
struct Capped(Duration);

impl Iterator for Capped {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        let d = self.0;
        self.0 = (self.0 * 2).min(BACKOFF_MAX);
        Some(d)
    }
}

impl Backoff for Capped {
    fn reset(&mut self) {
        self.0 = BACKOFF_MIN;
    }
}

/// Waits until the API knows node `name`; logs why not, retrying with back-off. A client that
/// may not read nodes goes on (the pod watch still tells the truth).
async fn wait_for_node(client: &Client, name: &str, tx: &mpsc::UnboundedSender<Update>) -> bool {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut backoff = Capped(BACKOFF_MIN);
    loop {
        match nodes.get_opt(name).await {
            Ok(Some(_)) => return true,
            Ok(None) => warn!(
                node = name,
                "kube source: not ready: the API has no node {name:?} (check --node-name / \
                 NODE_NAME); retrying"
            ),
            Err(kube::Error::Api(e)) if e.code == 403 => {
                warn!(
                    "kube source: may not read node {name:?} ({}); going on",
                    e.message
                );
                return true;
            }
            Err(e) => warn!("kube source: not ready: Kubernetes API unreachable ({e}); retrying"),
        }
        tokio::select! {
            () = tokio::time::sleep(backoff.next().unwrap_or(BACKOFF_MAX)) => {}
            () = tx.closed() => return false,
        }
    }
}

async fn run(client: Client, node: String, tx: mpsc::UnboundedSender<Update>) {
    if !wait_for_node(&client, &node, &tx).await {
        return;
    }
    let (pods, pod_writer) = reflector::store::<Pod>();
    let (namespaces, ns_writer) = reflector::store::<Namespace>();
    let pod_cfg = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let pod_events = reflector(
        pod_writer,
        watcher(Api::<Pod>::all(client.clone()), pod_cfg),
    )
    .backoff(Capped(BACKOFF_MIN))
    .map_ok(|e| matches!(e, watcher::Event::InitDone));
    let ns_events = reflector(
        ns_writer,
        watcher(Api::<Namespace>::all(client), watcher::Config::default()),
    )
    .backoff(Capped(BACKOFF_MIN))
    .map_ok(|e| matches!(e, watcher::Event::InitDone));
    let mut pod_events = std::pin::pin!(pod_events);
    let mut ns_events = std::pin::pin!(ns_events);

    let (mut pods_listed, mut ns_listed) = (false, false);
    let mut dirty = false;
    let mut last = None;
    let mut failing = false;
    loop {
        let flush = async {
            if dirty && pods_listed && ns_listed {
                tokio::time::sleep(DEBOUNCE).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            ev = pod_events.next() => match ev {
                Some(Ok(init_done)) => {
                    pods_listed |= init_done;
                    dirty = true;
                    failing = false;
                }
                Some(Err(e)) => report(&mut failing, "pods", pods_listed, &e),
                None => return,
            },
            ev = ns_events.next() => match ev {
                Some(Ok(init_done)) => {
                    ns_listed |= init_done;
                    dirty = true;
                    failing = false;
                }
                Some(Err(e)) => report(&mut failing, "namespaces", ns_listed, &e),
                None => return,
            },
            () = flush => {
                dirty = false;
                let snap = snapshot(&pods, &namespaces);
                if last.as_ref() != Some(&snap) {
                    info!(
                        pods = pods.len(),
                        meshed_addresses = snap.values().filter(|b| super::Sources(**b).meshed()).count(),
                        "kube source: pods listed/changed"
                    );
                    if tx.send(Update::Kube(snap.clone())).is_err() {
                        return;
                    }
                    last = Some(snap);
                }
            }
            () = tx.closed() => return,
        }
    }
}

fn snapshot(
    pods: &Store<Pod>,
    namespaces: &Store<Namespace>,
) -> std::collections::HashMap<std::net::IpAddr, u32> {
    let pods = pods.state();
    let nss = namespaces.state();
    istio::snapshot(
        pods.iter().map(AsRef::as_ref),
        nss.iter().map(AsRef::as_ref),
    )
}

/// Logs a watch error: the first of a run of errors at warn, the rest at debug (the back-off
/// retries them).
fn report(failing: &mut bool, what: &str, listed: bool, e: &watcher::Error) {
    let state = if listed {
        "keeping the last known state"
    } else {
        "not ready"
    };
    if *failing {
        debug!("kube source: watching {what}: {e}");
    } else {
        warn!("kube source: watching {what} failed, retrying with back-off ({state}): {e}");
    }
    *failing = true;
}
