//! What `xdp-ctl run` exposes on `/metrics`, `/healthz` and `/readyz` (served by `http`).
//!
//! Two kinds of metric: the controller's own (reconciles, drift, endpoints and interfaces it
//! programmed), updated as it works; and the datapath's (packets and bytes per reason, flow
//! table), read from the pinned maps at each scrape, so they always equal `xdp-ctl stats`.
//! No label names a pod or an address: cardinality is bounded by the reasons, two families and
//! two datapaths.
use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::{ConstGauge, Gauge},
        histogram::Histogram,
        MetricType,
    },
    registry::Registry,
};

use crate::{maps::Maps, pin::PinDir};

/// `/healthz` fails when the controller loop has not ticked for this long (it ticks every
/// second; a full resync of a large node blocks it for a while).
pub const HEALTHY_WITHIN: Duration = Duration::from_secs(30);

type Labels1 = [(&'static str, &'static str); 1];
type Labels2 = [(&'static str, &'static str); 2];

/// The controller's side of the telemetry, shared with the HTTP server.
#[derive(Debug)]
pub struct Telemetry {
    registry: Registry,
    started: Instant,
    /// Milliseconds after `started` of the controller loop's last tick.
    heartbeat_ms: AtomicU64,
    ready: AtomicBool,
    endpoints: Family<Labels2, Gauge>,
    attached: Family<Labels1, Gauge>,
    uplinks: Family<Labels1, Gauge>,
    reconciles: Family<Labels1, Counter>,
    reconcile_seconds: Histogram,
    drift: Counter,
}

fn set_by_datapath(family: &Family<Labels1, Gauge>, xdp: usize, tc: usize) {
    for (datapath, n) in [("xdp", xdp), ("tc", tc)] {
        family
            .get_or_create(&[("datapath", datapath)])
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }
}

impl Telemetry {
    /// Metrics for the datapath pinned under `pins`.
    pub fn new(pins: &PinDir) -> Arc<Self> {
        let mut registry = Registry::default();
        let endpoints = Family::<Labels2, Gauge>::default();
        registry.register(
            "xdp_fastpath_endpoints",
            "Pod addresses programmed into the datapath, by address family and whether the pod is meshed",
            endpoints.clone(),
        );
        let attached = Family::<Labels1, Gauge>::default();
        registry.register(
            "xdp_fastpath_attached_interfaces",
            "Pod veths carrying the datapath, by hook (xdp, tc)",
            attached.clone(),
        );
        let uplinks = Family::<Labels1, Gauge>::default();
        registry.register(
            "xdp_fastpath_attached_uplinks",
            "Uplinks carrying the uplink program (traffic from other nodes), by hook (xdp, tc)",
            uplinks.clone(),
        );
        let reconciles = Family::<Labels1, Counter>::default();
        registry.register(
            "xdp_fastpath_reconcile",
            "Reconciles of desired and programmed state (event batches and full resyncs), by result (ok, error)",
            reconciles.clone(),
        );
        let reconcile_seconds = Histogram::new([
            0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ]);
        registry.register(
            "xdp_fastpath_reconcile_duration_seconds",
            "Time taken by one reconcile (event batch or full resync)",
            reconcile_seconds.clone(),
        );
        let drift = Counter::default();
        registry.register(
            "xdp_fastpath_drift_repaired",
            "Map entries and attachments a periodic resync found wrong and repaired",
            drift.clone(),
        );
        let build = Family::<Labels1, Gauge>::default();
        build
            .get_or_create(&[("version", env!("CARGO_PKG_VERSION"))])
            .set(1);
        registry.register(
            "xdp_fastpath_build_info",
            "The running xdp-ctl's version (always 1)",
            build,
        );
        for (family, meshed) in [
            ("ipv4", "true"),
            ("ipv4", "false"),
            ("ipv6", "true"),
            ("ipv6", "false"),
        ] {
            endpoints
                .get_or_create(&[("family", family), ("meshed", meshed)])
                .set(0);
        }
        for datapath in ["xdp", "tc"] {
            attached.get_or_create(&[("datapath", datapath)]).set(0);
            uplinks.get_or_create(&[("datapath", datapath)]).set(0);
        }
        for result in ["ok", "error"] {
            reconciles.get_or_create(&[("result", result)]).inc_by(0);
        }
        registry.register_collector(Box::new(DatapathCollector { pins: pins.clone() }));
        Arc::new(Self {
            registry,
            started: Instant::now(),
            heartbeat_ms: AtomicU64::new(0),
            ready: AtomicBool::new(false),
            endpoints,
            attached,
            uplinks,
            reconciles,
            reconcile_seconds,
            drift,
        })
    }

    /// The controller loop ticked.
    pub fn heartbeat(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.heartbeat_ms.store(ms, Ordering::Relaxed);
    }

    /// Time since the controller loop last ticked.
    pub fn heartbeat_age(&self) -> Duration {
        let beat = Duration::from_millis(self.heartbeat_ms.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(beat)
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Programmed endpoints: (IPv4 meshed, IPv4 not meshed, IPv6 meshed, IPv6 not meshed).
    pub fn set_endpoints(&self, counts: [usize; 4]) {
        let labels = [
            ("ipv4", "true"),
            ("ipv4", "false"),
            ("ipv6", "true"),
            ("ipv6", "false"),
        ];
        for ((family, meshed), n) in labels.into_iter().zip(counts) {
            self.endpoints
                .get_or_create(&[("family", family), ("meshed", meshed)])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// Attached pod veths: (xdp, tc).
    pub fn set_attached(&self, xdp: usize, tc: usize) {
        set_by_datapath(&self.attached, xdp, tc);
    }

    /// Attached uplinks: (xdp, tc).
    pub fn set_uplinks(&self, xdp: usize, tc: usize) {
        set_by_datapath(&self.uplinks, xdp, tc);
    }

    /// One reconcile ran.
    pub fn reconciled(&self, took: Duration, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.reconciles.get_or_create(&[("result", result)]).inc();
        self.reconcile_seconds.observe(took.as_secs_f64());
    }

    pub fn drift_repaired(&self, writes: u64) {
        self.drift.inc_by(writes);
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// Reads the datapath's counters and flow table from the pins at each scrape.
#[derive(Debug)]
struct DatapathCollector {
    pins: PinDir,
}

impl Collector for DatapathCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // A scrape must not fail because the datapath is not (yet) pinned: the series are then
        // absent, and `xdp_fastpath_attached_interfaces` says why.
        let Ok(maps) = Maps::open_pinned(&self.pins) else {
            return Ok(());
        };
        if let Ok(counters) = maps.counters() {
            let mut fam = encoder.encode_descriptor(
                "xdp_fastpath_packets",
                "Packets the datapath saw, by reason: redirected (fast-pathed) or why it left them to the kernel",
                None,
                MetricType::Counter,
            )?;
            for (reason, c) in &counters {
                let labels = [("reason", reason.name())];
                ConstCounter::new(c.packets).encode(fam.encode_family(&labels)?)?;
            }
            let mut fam = encoder.encode_descriptor(
                "xdp_fastpath_bytes",
                "Bytes of those packets, by reason",
                None,
                MetricType::Counter,
            )?;
            for (reason, c) in &counters {
                let labels = [("reason", reason.name())];
                ConstCounter::new(c.bytes).encode(fam.encode_family(&labels)?)?;
            }
        }
        if let Ok(t) = maps.flow_table() {
            let m = encoder.encode_descriptor(
                "xdp_fastpath_flows",
                "Flows in the flow table (connections the datapath saw start and fast-paths)",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(i64::from(t.flows)).encode(m)?;
        }
        Ok(())
    }
}
