//! What the controller tells the world: the pinned `ControllerState` (heartbeat, counters,
//! readiness) that `status` reads, the membership sources' configuration, and the log lines
//! that say it is ready.
use std::{
    net::IpAddr,
    time::{SystemTime, UNIX_EPOCH},
};

use tracing::{info, warn};

use super::Controller;

pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Controller {
    pub(super) fn log_ready(&self) {
        let fields = (
            self.state.interfaces,
            self.realized.len(),
            self.realized.values().filter(|e| e.is_meshed()).count(),
            self.pending.len(),
        );
        if self.state.ready != 0 {
            info!(
                interfaces = fields.0,
                endpoints = fields.1,
                meshed = fields.2,
                pending = fields.3,
                "ready"
            );
        } else {
            info!(
                interfaces = fields.0,
                endpoints = fields.1,
                pending = fields.3,
                "first reconcile applied; not ready until the membership sources answered"
            );
        }
    }

    pub(super) fn publish(&mut self) {
        self.state.heartbeat_unix_ms = now_ms();
        let (mut v4, mut v6) = (0u32, 0u32);
        for p in self.realized.keys() {
            match p.addr {
                IpAddr::V4(_) => v4 += 1,
                IpAddr::V6(_) => v6 += 1,
            }
        }
        self.state.endpoints_v4 = v4;
        self.state.endpoints_v6 = v6;
        self.state.pending = u32::try_from(self.pending.len()).unwrap_or(u32::MAX);
        // Endpoints by (family, meshed), in `Telemetry::set_endpoints`' order.
        let mut by_kind = [0usize; 4];
        for (p, ep) in &self.realized {
            by_kind[usize::from(p.addr.is_ipv6()) * 2 + usize::from(!ep.is_meshed())] += 1;
        }
        self.telemetry.set_endpoints(by_kind);
        self.telemetry.set_ready(self.state.ready != 0);
        self.telemetry.heartbeat();
        if let Err(e) = self.attacher.maps.set_controller_state(&self.state) {
            warn!("publishing controller state: {e:#}");
        }
        let bits = self.membership.config_bits();
        if self.members_map.config() != Some(bits) {
            if let Err(e) = self.members_map.set_config(bits) {
                warn!("publishing membership sources: {e:#}");
            }
        }
    }
}
