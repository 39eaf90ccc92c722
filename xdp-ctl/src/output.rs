//! Everything `xdp-ctl` prints on success: one renderer per command, each writing either text
//! for people (tables with a header row) or JSON for machines (`--json`).
use std::path::Path;

use common::{Counter, Reason};
use serde::Serialize;
use serde_json::json;
use xdp_ctl::{
    attach::{AttachReport, AttachResult, DetachReport},
    maps::{FlowTable, Prefix},
    ops::{ControllerView, EndpointView, Status},
    remote::RemoteEntry,
};

/// Text or JSON, as `--json` asked.
#[derive(Clone, Copy)]
pub struct Output {
    json: bool,
}

impl Output {
    pub fn new(json: bool) -> Self {
        Self { json }
    }

    pub fn attach(self, reports: &[AttachReport]) {
        if self.json {
            return print_json(&json!({ "attached": reports }));
        }
        for r in reports {
            match r.result {
                AttachResult::AlreadyAttached => println!(
                    "{}: already attached ({} {}), nothing to do",
                    r.iface,
                    r.datapath.name(),
                    r.mode
                ),
                result => println!(
                    "{}{}: {} ({} {}, link pinned at {})",
                    r.iface,
                    if r.role == xdp_ctl::attach::Role::Uplink {
                        " (uplink)"
                    } else {
                        ""
                    },
                    result.name(),
                    r.datapath.name(),
                    r.mode,
                    r.pin_path.display()
                ),
            }
        }
    }

    pub fn detach(self, pin_dir: &Path, reports: &[DetachReport]) {
        if self.json {
            return print_json(&json!({ "detached": reports }));
        }
        if reports.is_empty() {
            println!(
                "nothing attached under {}: nothing to detach",
                pin_dir.display()
            );
        }
        for r in reports {
            println!(
                "{}: detached {} ({} endpoints removed{})",
                r.iface,
                r.datapath,
                r.endpoints_removed,
                if r.pod_settings_restored {
                    ", pod settings restored"
                } else {
                    ""
                }
            );
        }
    }

    pub fn endpoint_added(self, v: &EndpointView) {
        if self.json {
            return print_json(&json!({ "endpoint": v }));
        }
        println!(
            "{} -> {} (pod mac {}, {})",
            v.prefix,
            v.iface,
            v.pod_mac,
            if v.meshed { "meshed" } else { "not meshed" }
        );
    }

    pub fn endpoint_deleted(self, prefix: Prefix) {
        if self.json {
            return print_json(&json!({ "deleted": prefix.to_string() }));
        }
        println!("{prefix} removed");
    }

    pub fn remote_added(self, e: &RemoteEntry) {
        if self.json {
            return print_json(&json!({ "added": e }));
        }
        println!(
            "{} {} (via {})",
            e.prefix,
            if e.meshed { "meshed" } else { "not meshed" },
            via(e.uplink)
        );
    }

    pub fn remote_deleted(self, prefix: Prefix) {
        if self.json {
            return print_json(&json!({ "deleted": prefix.to_string() }));
        }
        println!("{prefix} removed");
    }

    pub fn remotes(self, list: &[RemoteEntry]) {
        if self.json {
            return print_json(&json!({ "remotes": list }));
        }
        println!("{:<24} {:<7} VIA", "PREFIX", "MESHED");
        for e in list {
            println!(
                "{:<24} {:<7} {}",
                e.prefix,
                if e.meshed { "yes" } else { "no" },
                via(e.uplink)
            );
        }
    }

    pub fn endpoints(self, list: &[EndpointView]) {
        if self.json {
            return print_json(&json!({ "endpoints": list }));
        }
        println!(
            "{:<24} {:<16} {:<18} {:<18} {:<7} WHY",
            "PREFIX", "IFACE", "POD MAC", "HOST MAC", "MESHED"
        );
        for e in list {
            println!(
                "{:<24} {:<16} {:<18} {:<18} {:<7} {}",
                e.prefix,
                e.iface,
                e.pod_mac,
                e.host_mac,
                if e.meshed { "yes" } else { "no" },
                if e.sources.is_empty() {
                    "-".to_string()
                } else {
                    e.sources.join(",")
                }
            );
        }
    }

    pub fn status(self, st: &Status) {
        if self.json {
            return print_json(st);
        }
        println!("pin dir: {}", st.pin_dir.display());
        println!(
            "endpoints: {} IPv4, {} IPv6",
            st.endpoints_v4, st.endpoints_v6
        );
        if let Some(c) = &st.controller {
            controller_line(c);
        }
        if let Some(m) = &st.membership {
            if m.sources.is_empty() {
                println!(
                    "membership: no source configured: no pod is meshed, nothing is fast-pathed"
                );
            } else {
                println!(
                    "membership: {}{}; {} of {} endpoints meshed",
                    m.sources.join(", "),
                    if m.synced { "" } else { " (NOT SYNCED yet)" },
                    m.meshed_endpoints,
                    st.endpoints_v4 + st.endpoints_v6
                );
            }
        }
        if st.interfaces.is_empty() {
            println!("no interfaces attached");
            return;
        }
        if st.remote_prefixes > 0 {
            println!("remote prefixes: {}", st.remote_prefixes);
        }
        println!(
            "{:<16} {:>7} {:<6} {:<8} {:<6} {:>7} {:>7} {:<9} PIN",
            "IFACE", "IFINDEX", "ROLE", "DATAPATH", "MODE", "PROG", "LINK", "KIND"
        );
        let opt = |v: Option<u32>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
        for i in &st.interfaces {
            println!(
                "{:<16} {:>7} {:<6} {:<8} {:<6} {:>7} {:>7} {:<9} {}{}",
                i.name,
                i.ifindex,
                i.role,
                i.datapath,
                i.mode,
                opt(i.program_id),
                opt(i.link_id),
                i.link_kind,
                i.pin_path.display(),
                if i.live {
                    ""
                } else {
                    "  (STALE: interface gone or replaced)"
                }
            );
        }
    }

    pub fn stats(self, counters: &[(Reason, Counter)], table: &FlowTable) {
        if self.json {
            let reasons: serde_json::Map<String, serde_json::Value> = counters
                .iter()
                .map(|(r, c)| {
                    (
                        r.name().to_string(),
                        json!({ "packets": c.packets, "bytes": c.bytes }),
                    )
                })
                .collect();
            return print_json(&json!({ "reasons": reasons, "flow_table": table }));
        }
        println!("{:<18} {:>14} {:>16}", "REASON", "PACKETS", "BYTES");
        for (r, c) in counters {
            println!("{:<18} {:>14} {:>16}", r.name(), c.packets, c.bytes);
        }
        println!(
            "flows: {} of {}; UDP sockets on the kernel path: {} of {}",
            table.flows, table.flows_capacity, table.kernel_sockets, table.kernel_sockets_capacity
        );
    }
}

fn controller_line(c: &ControllerView) {
    if !c.running {
        println!(
            "controller: not running (last heartbeat {}s ago; the datapath keeps forwarding)",
            c.heartbeat_age_ms / 1000
        );
        return;
    }
    let resync = c.last_resync_age_ms.map_or_else(
        || "never".to_string(),
        |ms| format!("{}.{}s ago", ms / 1000, ms % 1000 / 100),
    );
    println!(
        "controller: pid {}, {}, {} interfaces, {} pending, last resync {resync}, {} resyncs, \
         {} drift repaired, {} map writes",
        c.pid,
        if c.ready { "ready" } else { "NOT READY" },
        c.interfaces,
        c.pending,
        c.resyncs,
        c.drift_repaired,
        c.map_writes
    );
}

fn via(uplink: u32) -> String {
    if uplink == 0 {
        "any uplink".to_string()
    } else {
        format!("ifindex {uplink}")
    }
}

fn print_json(v: &impl Serialize) {
    match serde_json::to_string_pretty(v) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("xdp-ctl: error: encoding JSON: {e}"),
    }
}
