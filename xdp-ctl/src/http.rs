//! `xdp-ctl run --listen ADDR`: `/metrics`, `/healthz` and `/readyz` over plain HTTP/1.1.
//!
//! Deliberately small: one request per connection (`Connection: close`), GET and HEAD only,
//! headers bounded in size and time. It runs on a thread of its own (see `spawn`) and only
//! reads shared state (`metrics::Telemetry`), so a slow or hostile client never holds up the
//! controller loop.
use std::{net::SocketAddr, str::FromStr, sync::Arc, time::Duration};

use anyhow::{Context as _, Result};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};
use tracing::{debug, info, warn};

use crate::metrics::{Telemetry, HEALTHY_WITHIN};

/// The default `--listen` address: loopback only (with hostNetwork, the node's loopback), and a
/// fixed port, so probes and scrapers know where to look.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9465";
/// Longest request head accepted.
const MAX_HEAD: usize = 8 * 1024;
/// Time a client gets to send its request and read the answer.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 32;

/// `--listen`: an address, or `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Listen(pub Option<SocketAddr>);

impl FromStr for Listen {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "off" | "none" => Ok(Listen(None)),
            a => a.parse().map(|a| Listen(Some(a))).map_err(|_| {
                format!("invalid listen address {s:?} (IP:PORT, e.g. {DEFAULT_LISTEN}, or off)")
            }),
        }
    }
}

/// Binds `addr` (failing with what to do) and serves it from a thread of its own, with its
/// own small runtime: the controller loop does blocking work (netlink dumps, map walks, the pin
/// directory's lock), and the probes must answer meanwhile, `/healthz` from the heartbeat.
/// The thread inherits the caller's network namespace (`--netns`).
pub fn spawn(addr: SocketAddr, telemetry: Arc<Telemetry>) -> Result<()> {
    // std sets SO_REUSEADDR: a restarted controller does not wait for TIME_WAIT connections.
    let listener = std::net::TcpListener::bind(addr).with_context(|| {
        format!(
            "cannot listen on {addr} for /metrics and the probes (is another `xdp-ctl run` \
             using it? pick another with --listen, or --listen off)"
        )
    })?;
    listener
        .set_nonblocking(true)
        .context("making the HTTP socket non-blocking")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the HTTP runtime")?;
    std::thread::Builder::new()
        .name("http".into())
        .spawn(move || {
            rt.block_on(async move {
                match TcpListener::from_std(listener) {
                    Ok(l) => serve(l, telemetry).await,
                    Err(e) => warn!("HTTP listener: {e}"),
                }
            });
        })
        .context("starting the HTTP thread")?;
    Ok(())
}

/// Serves until the runtime stops.
pub async fn serve(listener: TcpListener, telemetry: Arc<Telemetry>) {
    if let Ok(a) = listener.local_addr() {
        info!(listen = %a, "serving /metrics, /healthz, /readyz");
    }
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                warn!("HTTP accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let t = telemetry.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = tokio::time::timeout(IO_TIMEOUT, handle(stream, &t)).await {
                debug!(%peer, "HTTP client too slow: {e}");
            }
        });
    }
}

/// A response: status line, content type, body.
struct Answer {
    status: &'static str,
    content_type: &'static str,
    body: String,
}

fn text(status: &'static str, body: impl Into<String>) -> Answer {
    Answer {
        status,
        content_type: "text/plain; charset=utf-8",
        body: body.into(),
    }
}

/// What `method path` gets.
fn route(method: &str, path: &str, t: &Telemetry) -> Answer {
    if method != "GET" && method != "HEAD" {
        return text("405 Method Not Allowed", "only GET and HEAD\n");
    }
    // Query strings are ignored (Prometheus may add some).
    let path = path.split('?').next().unwrap_or(path);
    match path {
        "/metrics" => match t.encode() {
            Ok(body) => Answer {
                status: "200 OK",
                content_type: prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
                body,
            },
            Err(e) => text(
                "500 Internal Server Error",
                format!("encoding metrics: {e}\n"),
            ),
        },
        "/healthz" => {
            let age = t.heartbeat_age();
            if age <= HEALTHY_WITHIN {
                text("200 OK", "ok\n")
            } else {
                text(
                    "503 Service Unavailable",
                    format!(
                        "controller loop stalled: last tick {}s ago\n",
                        age.as_secs()
                    ),
                )
            }
        }
        "/readyz" => {
            if t.ready() {
                text("200 OK", "ready\n")
            } else {
                text(
                    "503 Service Unavailable",
                    "not ready: the first full reconcile (or a membership source's first \
                     answer) is not applied yet\n",
                )
            }
        }
        "/" => text(
            "200 OK",
            "xdp-fastpath controller: /metrics, /healthz, /readyz\n",
        ),
        _ => text(
            "404 Not Found",
            "not found (try /metrics, /healthz, /readyz)\n",
        ),
    }
}

/// Parses the request line of `head`: method and path.
fn request_line(head: &[u8]) -> Option<(&str, &str)> {
    let line = head.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?.trim_end_matches('\r');
    let mut parts = line.split(' ');
    let method = parts.next()?;
    let path = parts.next()?;
    let version = parts.next()?;
    (version.starts_with("HTTP/1.") && path.starts_with('/')).then_some((method, path))
}

fn head_complete(buf: &[u8]) -> bool {
    buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.windows(2).any(|w| w == b"\n\n")
}

async fn handle(mut stream: TcpStream, t: &Telemetry) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !head_complete(&buf) {
        if buf.len() >= MAX_HEAD {
            return respond(
                &mut stream,
                &text("431 Request Header Fields Too Large", ""),
                false,
            )
            .await;
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let Some((method, path)) = request_line(&buf) else {
        return respond(
            &mut stream,
            &text("400 Bad Request", "bad request\n"),
            false,
        )
        .await;
    };
    let answer = route(method, path, t);
    respond(&mut stream, &answer, method == "HEAD").await
}

async fn respond(stream: &mut TcpStream, a: &Answer, head_only: bool) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        a.status,
        a.content_type,
        a.body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    if !head_only {
        stream.write_all(a.body.as_bytes()).await?;
    }
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_parses_addresses_and_off() {
        assert_eq!(
            "127.0.0.1:9465".parse::<Listen>().unwrap(),
            Listen(Some("127.0.0.1:9465".parse().unwrap()))
        );
        assert_eq!("[::1]:80".parse::<Listen>().unwrap().0.unwrap().port(), 80);
        assert_eq!("off".parse::<Listen>().unwrap(), Listen(None));
        let e = "9465".parse::<Listen>().unwrap_err();
        assert!(e.contains("IP:PORT"), "{e}");
        assert!(DEFAULT_LISTEN.parse::<Listen>().unwrap().0.is_some());
    }

    #[test]
    fn request_lines() {
        assert_eq!(
            request_line(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some(("GET", "/metrics"))
        );
        assert_eq!(request_line(b"GET /x HTTP/1.0\n\n"), Some(("GET", "/x")));
        assert_eq!(request_line(b"GET metrics HTTP/1.1\r\n\r\n"), None);
        assert_eq!(request_line(b"\xff\xfe\r\n\r\n"), None);
        assert_eq!(request_line(b"GET\r\n\r\n"), None);
        assert!(head_complete(b"GET / HTTP/1.1\r\n\r\n"));
        assert!(!head_complete(b"GET / HTTP/1.1\r\n"));
    }

    #[test]
    fn routes_and_metric_names() {
        let t = Telemetry::new(&crate::pin::PinDir::new("/nonexistent/xdp-fastpath-test"));
        assert!(route("GET", "/readyz", &t).status.starts_with("503"));
        t.set_ready(true);
        assert!(route("GET", "/readyz", &t).status.starts_with("200"));
        t.heartbeat();
        assert!(route("GET", "/healthz", &t).status.starts_with("200"));
        assert!(route("POST", "/healthz", &t).status.starts_with("405"));
        assert!(route("GET", "/nope", &t).status.starts_with("404"));
        t.reconciled(Duration::from_millis(3), true);
        t.drift_repaired(2);
        t.set_endpoints([1, 2, 3, 4]);
        t.set_attached(5, 6);
        t.set_uplinks(1, 0);
        let m = route("GET", "/metrics?x=1", &t);
        assert!(m.status.starts_with("200"));
        for want in [
            "xdp_fastpath_reconcile_total{result=\"ok\"} 1",
            "xdp_fastpath_reconcile_total{result=\"error\"} 0",
            "xdp_fastpath_drift_repaired_total 2",
            "xdp_fastpath_endpoints{family=\"ipv6\",meshed=\"false\"} 4",
            "xdp_fastpath_attached_interfaces{datapath=\"tc\"} 6",
            "xdp_fastpath_attached_uplinks{datapath=\"xdp\"} 1",
            "xdp_fastpath_attached_uplinks{datapath=\"tc\"} 0",
            "xdp_fastpath_reconcile_duration_seconds_count 1",
            "xdp_fastpath_build_info{version=\"",
        ] {
            assert!(m.body.contains(want), "no {want:?} in\n{}", m.body);
        }
    }
}
