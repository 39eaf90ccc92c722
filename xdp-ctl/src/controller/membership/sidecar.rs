//! The sidecar source (`--sidecar-port P`): a pod is meshed while a TCP socket listens on P
//! inside its own network namespace (Istio's inbound capture port is 15006).
//!
//! One blocking thread polls: for each pod interface the controller gives it, it enters the
//! peer's namespace (`setns`, this thread only), asks NETLINK_SOCK_DIAG for the TCP sockets in
//! LISTEN state of both families (`inet_diag`, a dump filtered by state in the kernel), and
//! looks for the ports. No API access is needed and it follows the proxy's real state.
//!
//! Namespaces are found once by their id (`netns::index_by_nsid`) and remembered by path and
//! inode, never by an open fd: holding a namespace open would keep a deleted pod's namespace
//! (and its veth) alive. A path whose inode changed is looked up again.
use std::{
    collections::{HashMap, HashSet},
    fs::File,
    io,
    os::unix::fs::MetadataExt as _,
    path::PathBuf,
    time::{Duration, Instant},
};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_sock_diag::{
    constants::{AF_INET, AF_INET6, IPPROTO_TCP},
    inet::{ExtensionFlags, InetRequest, SocketId, StateFlags},
    SockDiagMessage,
};
use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket, SocketAddr};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use super::{Target, Update};
use crate::{netns, nl::Rtnl};

/// How long a namespace id that no path could be found for is left alone before the next
/// (costly: a walk over /proc) search.
const NEGATIVE_TTL: Duration = Duration::from_secs(5);

/// Starts the polling thread. It stops when the controller drops its ends of the channels.
pub fn spawn(
    ports: Vec<u16>,
    period: Duration,
    targets: watch::Receiver<Option<Vec<Target>>>,
    tx: mpsc::UnboundedSender<Update>,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let host = File::open("/proc/thread-self/ns/net").context("opening our network namespace")?;
    std::thread::Builder::new()
        .name("sidecar-probe".into())
        .spawn(move || {
            let mut p = match Prober::new(host, ports) {
                Ok(p) => p,
                Err(e) => {
                    warn!("sidecar source: cannot start: {e}");
                    return;
                }
            };
            p.run(period, &targets, &tx);
        })
        .context("starting the sidecar probe thread")?;
    Ok(())
}

struct Prober {
    /// The controller's namespace, to return to after each round.
    host: File,
    rtnl: Rtnl,
    ports: Vec<u16>,
    /// Namespace id -> where it is, with the inode it had.
    paths: HashMap<i32, (PathBuf, u64, u64)>,
    /// Namespace ids not found, and when we last looked.
    missing: HashMap<i32, Instant>,
}

impl Prober {
    fn new(host: File, ports: Vec<u16>) -> io::Result<Self> {
        Ok(Self {
            host,
            rtnl: Rtnl::new()?,
            ports,
            paths: HashMap::new(),
            missing: HashMap::new(),
        })
    }

    fn run(
        &mut self,
        period: Duration,
        targets: &watch::Receiver<Option<Vec<Target>>>,
        tx: &mpsc::UnboundedSender<Update>,
    ) {
        // Nothing to say before the controller's first reconcile named the pods.
        while targets.borrow().is_none() {
            if tx.is_closed() || targets.has_changed().is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let mut previous: Option<Vec<Target>> = None;
        let mut rounds = 0u64;
        loop {
            let started = Instant::now();
            let list = targets.borrow().clone().unwrap_or_default();
            let found = self.round(&list);
            if let Err(e) = netns::setns(&self.host) {
                warn!("sidecar source: cannot return to our namespace, stopping: {e}");
                return;
            }
            rounds += 1;
            if previous.as_ref() != Some(&found) {
                info!(
                    probed = list.len(),
                    with_listener = found.len(),
                    took = ?started.elapsed(),
                    "sidecar source: listeners changed"
                );
                if tx.send(Update::Sidecar(found.clone())).is_err() {
                    return;
                }
                previous = Some(found);
            } else if rounds.is_multiple_of(120) {
                debug!(probed = list.len(), took = ?started.elapsed(), "sidecar source: round");
            }
            if tx.is_closed() || targets.has_changed().is_err() {
                return;
            }
            std::thread::sleep(period.saturating_sub(started.elapsed()));
        }
    }

    /// Probes every target; returns those with a listener (sorted, as given).
    fn round(&mut self, targets: &[Target]) -> Vec<Target> {
        let live: HashSet<i32> = targets.iter().map(|t| t.peer.1).collect();
        self.paths.retain(|id, _| live.contains(id));
        self.missing.retain(|id, _| live.contains(id));
        let mut by_ns: HashMap<i32, bool> = HashMap::new();
        let mut out = Vec::new();
        for t in targets {
            let nsid = t.peer.1;
            let has = if let Some(h) = by_ns.get(&nsid) {
                *h
            } else {
                let h = self.probe_ns(nsid);
                by_ns.insert(nsid, h);
                h
            };
            if has {
                out.push(*t);
            }
        }
        out
    }

    /// True if namespace `nsid` has a listener on one of the ports. Errors count as "no" (the
    /// pod keeps the kernel path) and are logged at debug level: pods vanish all the time.
    fn probe_ns(&mut self, nsid: i32) -> bool {
        let Some(file) = self.open_ns(nsid) else {
            return false;
        };
        if let Err(e) = netns::setns(&file) {
            debug!(nsid, "sidecar source: entering namespace: {e}");
            return false;
        }
        match listening(&self.ports) {
            Ok(h) => h,
            Err(e) => {
                debug!(nsid, "sidecar source: sock_diag: {e}");
                false
            }
        }
    }

    /// Opens namespace `nsid` by its remembered path (checking its inode), looking it up when
    /// unknown. Must run in our own namespace when a lookup is needed: it returns there first.
    fn open_ns(&mut self, nsid: i32) -> Option<File> {
        if let Some((path, dev, ino)) = self.paths.get(&nsid) {
            if let Ok(f) = File::open(path) {
                if f.metadata()
                    .is_ok_and(|m| m.dev() == *dev && m.ino() == *ino)
                {
                    return Some(f);
                }
            }
            self.paths.remove(&nsid);
        }
        if self
            .missing
            .get(&nsid)
            .is_some_and(|t| t.elapsed() < NEGATIVE_TTL)
        {
            return None;
        }
        // Namespace ids are ours: look them up from our own namespace.
        if netns::setns(&self.host).is_err() {
            return None;
        }
        match netns::index_by_nsid(&mut self.rtnl) {
            Ok(index) => {
                for (id, ns) in index {
                    if let Ok(m) = ns.file.metadata() {
                        self.paths.insert(id, (ns.path, m.dev(), m.ino()));
                    }
                }
            }
            Err(e) => debug!("sidecar source: indexing namespaces: {e}"),
        }
        if let Some((path, _, _)) = self.paths.get(&nsid) {
            self.missing.remove(&nsid);
            return File::open(path).ok();
        }
        self.missing.insert(nsid, Instant::now());
        None
    }
}

/// Is a TCP socket listening on one of `ports` in the current namespace (IPv4 or IPv6)?
pub fn listening(ports: &[u16]) -> io::Result<bool> {
    let mut sock = Socket::new(NETLINK_SOCK_DIAG)?;
    sock.bind_auto()?;
    sock.connect(&SocketAddr::new(0, 0))?;
    for family in [AF_INET, AF_INET6] {
        let mut found = false;
        dump_listeners(&mut sock, family, |port| found |= ports.contains(&port))?;
        if found {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Dumps the TCP sockets in LISTEN state of `family`, calling `f` with each local port.
fn dump_listeners(sock: &mut Socket, family: u8, mut f: impl FnMut(u16)) -> io::Result<()> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let mut req = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::empty(),
            states: StateFlags::LISTEN,
            socket_id: if family == AF_INET {
                SocketId::new_v4()
            } else {
                SocketId::new_v6()
            },
        })
        .into(),
    );
    req.finalize();
    let mut buf = vec![0; req.buffer_len()];
    req.serialize(&mut buf);
    sock.send(&buf, 0)?;

    let mut rx = vec![0u8; 32 * 1024];
    loop {
        let n = sock.recv(&mut &mut rx[..], 0)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "sock_diag socket closed",
            ));
        }
        let mut off = 0;
        while off < n {
            let msg = NetlinkMessage::<SockDiagMessage>::deserialize(&rx[off..n])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            let len = msg.header.length as usize;
            match msg.payload {
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                    f(r.header.socket_id.source_port);
                }
                NetlinkPayload::Done(_) => return Ok(()),
                NetlinkPayload::Error(e) => {
                    return Err(e.to_io());
                }
                _ => {}
            }
            if len == 0 {
                break;
            }
            off += (len + 3) & !3;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    #[test]
    fn finds_listeners_of_both_families_and_nothing_else() {
        let v4 = TcpListener::bind("127.0.0.1:0").unwrap();
        let p4 = v4.local_addr().unwrap().port();
        assert!(listening(&[p4]).unwrap(), "IPv4 listener on {p4}");
        // A connected (not listening) socket on a port does not count.
        let client = std::net::TcpStream::connect(v4.local_addr().unwrap()).unwrap();
        let cport = client.local_addr().unwrap().port();
        assert!(!listening(&[cport]).unwrap(), "client port {cport}");
        if let Ok(v6) = TcpListener::bind("[::1]:0") {
            let p6 = v6.local_addr().unwrap().port();
            assert!(listening(&[1, p6]).unwrap(), "IPv6 listener on {p6}");
        }
        drop(v4);
        assert!(!listening(&[p4]).unwrap(), "closed listener on {p4}");
    }
}
