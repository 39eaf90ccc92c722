#!/usr/bin/env python3
"""Summarise a scripts/bench.sh run: raw.json -> results.json, results.md, chart.svg.

Usage: bench-report.py RAW_JSON OUT_DIR
       bench-report.py --cross-node CROSS_NODE_JSON   (prints the cross-node table)

Standard library only (benchmarks are not run by CI, but nothing here needs installing).
Medians with min and max over the trials; every figure also as a ratio to the kernel path of
the same rule set (the loopback floor against kernel@none); the issue-10 targets checked for
the default datapath (tc). The sections from their own scripts (the programs' cost per packet
from bench-prog.sh, the controller from bench-controller.sh, pod to pod across two nodes from
bench-cross-node.sh) are summarised when raw.json has them; older raw.json files without them
still work. With --cross-node, the table of a bench-cross-node.sh --json file alone.
"""

import json
import statistics
import sys
from html import escape
from pathlib import Path

RULESETS = {
    "none": "no rules",
    "kubeproxy": "kube-proxy ({services:,} services)",
    "fwrules": "{rules:,} FORWARD rules",
}
DATAPATHS = ["kernel", "tc", "xdp"]
COLORS = {"kernel": "#8c8c8c", "tc": "#2f6fb5", "xdp": "#e08a1e", "loopback": "#2a9d4b"}
DEFAULT_DATAPATH = "tc"
# The issue-10 ceiling target for the XDP program on one core (live frames).
XDP_TARGET_MPPS = 3.0
# The flow table: the maps whose size is the price of the flow rule (DESIGN.md section 3a).
FLOW_MAPS = ["FLOWS", "KERNEL_SOCKETS"]
# Sizes at which bench-controller.sh's targets are stated (ready and RSS at 1,000 pods, a
# 200-pod burst): a smaller run (--quick) shows its values but does not check them.
CONTROLLER_TARGET_PODS = 1000
CONTROLLER_TARGET_BURST = 200

# key: (label, unit, getter, lower_is_better)
METRICS = {
    "rr_pinned_p50_us": ("RR p50, same CPU", "us", lambda t: t["rr_pinned"]["p50_us"], True),
    "rr_pinned_p99_us": ("RR p99, same CPU", "us", lambda t: t["rr_pinned"]["p99_us"], True),
    "rr_unpinned_p50_us": ("RR p50, unpinned", "us", lambda t: t["rr_unpinned"]["p50_us"], True),
    "rr_unpinned_p99_us": ("RR p99, unpinned", "us", lambda t: t["rr_unpinned"]["p99_us"], True),
    "conn_per_s": ("new TCP connections/s", "1/s", lambda t: t["conn"]["conn_per_s"], False),
    "tcp_gbps": ("TCP single stream", "Gbit/s", lambda t: t["tcp"]["gbps"], False),
    "udp64_rx_kpps": ("64 B UDP received", "kpps", lambda t: t["udp64"]["rx_pps"] / 1e3, False),
    "udp64_tx_kpps": ("64 B UDP sent", "kpps", lambda t: t["udp64"]["tx_pps"] / 1e3, False),
    "cpu_ms_per_mpkt": ("CPU per Mpkt at a fixed rate", "ms", lambda t: t["cpu"]["ms_per_mpkt"], True),
}
CHART = ["rr_pinned_p50_us", "rr_unpinned_p50_us", "conn_per_s", "tcp_gbps", "udp64_rx_kpps",
         "cpu_ms_per_mpkt"]
# Across nodes (bench-cross-node.sh): its metrics and rule sets.
CROSS_METRICS = ["rr_pinned_p50_us", "rr_pinned_p99_us", "conn_per_s", "tcp_gbps"]
CROSS_RULESETS = ["none", "kubeproxy"]


def stat(values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "n": len(values)}


def get(trial, fn):
    try:
        return fn(trial)
    except (KeyError, TypeError):
        return None


def scenarios(trials, kind, keys):
    """Per scenario ("DATAPATH@RULESET") of the trials of KIND: median/min/max/n of each metric
    in KEYS, and its ratio to the kernel path of the same rule set (loopback: kernel@none)."""
    scen = {}
    for t in trials:
        if t["kind"] == kind:
            scen.setdefault(t["scenario"], []).append(t)
    summary = {}
    for name, ts in scen.items():
        entry = {"datapath": ts[0]["datapath"], "ruleset": ts[0]["ruleset"], "trials": len(ts)}
        if kind == "scenario":
            entry["program"] = ts[0].get("program")
        entry["metrics"] = {}
        for key in keys:
            s = stat([get(t, METRICS[key][2]) for t in ts])
            if s is not None:
                entry["metrics"][key] = s
        summary[name] = entry
    for name, entry in summary.items():
        ref = "kernel@none" if entry["datapath"] == "loopback" else f"kernel@{entry['ruleset']}"
        for key, s in entry["metrics"].items():
            base = summary.get(ref, {}).get("metrics", {}).get(key)
            s["ratio"] = s["median"] / base["median"] if base and base["median"] else None
            s["ratio_to"] = ref
    return summary


def cross_node(cn):
    """bench-cross-node.sh's figures: its parameters and the per-scenario summary."""
    if not cn:
        return None
    loads = [t.get("loadavg_1min") for t in cn["trials"]]
    return {"parameters": cn["parameters"],
            "loadavg_1min_at_trials": stat(loads),
            "summary": scenarios(cn["trials"], "cross_node", CROSS_METRICS)}


def summarise(raw):
    trials = raw["trials"]
    summary = scenarios(trials, "scenario", METRICS)
    extra = {}
    gen = stat([t["tx_pps"] / 1e3 for t in trials if t["kind"] == "generator"])
    if gen:
        extra["generator_kpps"] = gen
        extra["generator_ms_per_mpkt"] = stat([t.get("ms_per_mpkt") for t in trials
                                              if t["kind"] == "generator"])
    for kind in ("xdp_live", "xdp_live_drop"):
        live = [t for t in trials if t["kind"] == kind]
        if not live:
            continue
        # Runs without run-time statistics give the ceiling; runs with them the program's own
        # time. Records from before the split (no "stats" field) had them on.
        on = [t for t in live if t.get("stats", True)]
        off = [t for t in live if not t.get("stats", True)]
        ceiling = off or on
        extra[kind] = {
            "statistics": "off" if off else "on",
            "wall_mpps": stat([t["mpps"] for t in ceiling]),
            "kernel_timed_mpps": stat([t["kernel_mpps"] for t in ceiling]),
            "with_statistics": {"wall_mpps": stat([t["mpps"] for t in on]),
                                "kernel_timed_mpps": stat([t["kernel_mpps"] for t in on])},
            "prog_ns_per_frame": stat([t.get("prog_ns_per_frame") for t in on]),
            "prog_only_mpps": stat([1e3 / t["prog_ns_per_frame"] for t in on
                                    if t.get("prog_ns_per_frame")]),
        }
        if kind == "xdp_live_drop":
            extra[kind]["drop_ns_per_frame"] = stat([t.get("drop_ns_per_frame") for t in on])
            extra[kind]["drop_at"] = live[0].get("drop_at")
        else:
            extra[kind]["pod_received_percent"] = stat(
                [t["pod_udp_received"] / t["frames"] * 100 for t in live
                 if t.get("pod_udp_received") is not None and t["frames"]])
    flow = flow_table(raw, trials)
    if flow:
        extra["flow_table"] = flow
    ctrl = controller(raw)
    if ctrl:
        extra["controller"] = ctrl
    cn = cross_node(raw.get("cross_node"))
    if cn:
        extra["cross_node"] = cn
    return summary, extra


def flow_table(raw, trials):
    """The flow table's cost: the programs' ns per packet (bench-prog.sh) and the maps' memory
    after an attach (bpftool memlock, per datapath, from the first trial that recorded it)."""
    out = {}
    pc = raw.get("prog_cost")
    if pc:
        out["prog_ns_per_packet"] = {
            name: {"median": v["median"], "min": v["min"], "max": v["max"],
                   "n": len(v["ns_per_packet"]), "runs": sum(v["runs"])}
            for name, v in pc["programs"].items()}
        out["workload"] = pc.get("workload")
        out["duration_s"] = pc.get("duration_s")
    maps = {}
    for t in trials:
        if t["kind"] == "scenario" and t.get("maps") and t["datapath"] not in maps:
            maps[t["datapath"]] = t["maps"]
    if maps:
        out["maps"] = {}
        for dp, ms in sorted(maps.items()):
            flow = {n: ms[n] for n in FLOW_MAPS if n in ms}
            out["maps"][dp] = {
                "flow_table_bytes": sum(v["bytes_memlock"] for v in flow.values()),
                "all_maps_bytes": sum(v["bytes_memlock"] for v in ms.values()),
                "flow_maps": {n: {**v, "bytes_per_entry": v["bytes_memlock"] / v["max_entries"]}
                              for n, v in flow.items()},
                "maps": ms,
            }
    return out


def controller(raw):
    """bench-controller.sh's figures per datapath, and its targets (checked only at the sizes
    they are stated for)."""
    c = raw.get("controller")
    if not c:
        return None
    cfg = c["config"]
    full = (cfg["pods"] >= CONTROLLER_TARGET_PODS and cfg["burst"] >= CONTROLLER_TARGET_BURST)
    t = cfg["targets"]
    out = {"pods": cfg["pods"], "burst": cfg["burst"], "burst2": cfg["burst2"],
           "at_target_size": full, "targets": t, "datapaths": {}}
    for dp in ("tc", "xdp"):
        d = c.get(dp)
        if not d:
            continue
        # The RSS target is stated at the node's pod count: cold and restart (ready); after the
        # bursts the node has pods + burst + burst2 (shown, not checked).
        rss = [d[k]["vmrss_mib"] for k in ("cold", "restart") if k in d]
        hwm = [d[k]["vmhwm_mib"] for k in ("cold", "restart") if k in d]
        b1 = d.get("burst1", {})
        checks = {
            "ready_after_start_ms": (d["cold"]["sync_ms"], t["after_dump_ms"]),
            "burst_last_event_to_converged_ms": (b1.get("last_event_to_converged_ms"),
                                                 t["burst_ms"]),
            "rss_max_mib": (max(rss) if rss else None, t["rss_mib"]),
        }
        never = b1.get("converged") is False  # gave up waiting: a miss, whatever the size
        out["datapaths"][dp] = {
            "cold": d["cold"], "restart": d["restart"], "burst1": b1,
            "burst2": d.get("burst2", {}), "after_bursts": d.get("after_bursts", {}),
            "rss_max_mib": max(rss) if rss else None, "hwm_max_mib": max(hwm) if hwm else None,
            "loadavg_before": d.get("loadavg_before"),
            "checks": {k: {"value": v, "target": lim,
                           "met": (False if never and k.startswith("burst") and full
                                   else None if not full or v is None else v < lim)}
                       for k, (v, lim) in checks.items()},
        }
    return out


def m(summary, scen, key):
    return summary.get(scen, {}).get("metrics", {}).get(key)


def targets(summary, extra):
    d = DEFAULT_DATAPATH
    out = []

    def ratio(scen, key, ref_scen, op, limit, what):
        a, b = m(summary, scen, key), m(summary, ref_scen, key)
        if not a or not b or not b["median"]:
            out.append({"target": what, "value": None, "met": None})
            return
        r = a["median"] / b["median"]
        out.append({"target": what, "value": round(r, 3),
                    "met": r <= limit if op == "<=" else r >= limit})

    ratio(f"{d}@none", "rr_pinned_p50_us", "kernel@none", "<=", 0.95,
          "pinned RR p50 <= 0.95x kernel, no rules")
    ratio(f"{d}@fwrules", "rr_pinned_p50_us", "kernel@fwrules", "<=", 0.15,
          "pinned RR p50 <= 0.15x kernel, FORWARD rules")
    ratio(f"{d}@none", "rr_pinned_p50_us", "loopback", "<=", 1.10,
          "pinned RR p50 <= 1.10x the loopback floor")
    for rs in RULESETS:
        ratio(f"{d}@{rs}", "tcp_gbps", f"kernel@{rs}", ">=", 1.0,
              f"TCP >= 1.0x kernel ({rs})")
    ratio(f"{d}@kubeproxy", "conn_per_s", "kernel@kubeproxy", ">=", 1.5,
          "connection rate >= 1.5x kernel, kube-proxy rules")
    for kind, what in (
            ("xdp_live", "end to end into a pod (the veth builds an skb per frame)"),
            ("xdp_live_drop", "redirect-and-drop (program + devmap redirect; XDP_DROP on the "
                              "pod side, no skb)")):
        live = extra.get(kind)
        name = (f"XDP program ceiling >= {XDP_TARGET_MPPS:g} Mpps, one core, live frames, "
                f"{what}, kernel-timed")
        if live:
            name += f", run-time statistics {live['statistics']}"
            v = live["kernel_timed_mpps"]["median"]
            out.append({"target": name, "value": round(v, 3), "met": v >= XDP_TARGET_MPPS})
        else:
            out.append({"target": name, "value": None, "met": None})
    return out


def fmt(v):
    if v is None:
        return "n/a"
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def order(summary):
    names = []
    for rs in RULESETS:
        for dp in DATAPATHS:
            if f"{dp}@{rs}" in summary:
                names.append(f"{dp}@{rs}")
        if rs == "none" and "loopback" in summary:
            names.append("loopback")
    return names


def sections_took(p):
    secs = p.get("sections", {}).get("seconds") or {}
    if not secs:
        return ""
    return (f" (the scenarios {p['scenarios_elapsed_s']} s, "
            + ", ".join(f"{k} {v} s" for k, v in secs.items()) + ")")


def markdown(raw, summary, extra, tgts):
    p = raw["parameters"]
    label = {rs: RULESETS[rs].format(services=p["kube_proxy_services"], rules=p["forward_rules"])
             for rs in RULESETS}
    lines = [
        f"# Benchmark {p['start'][:10]}{' (quick)' if p['quick'] else ''}",
        "",
        f"- Machine: {p['cpus']} vCPU ({p['cpu_model']}), {p['memory']}, Linux {p['kernel']}; "
        f"load average (1/5/15 min) before {p['load_before']}, after {p['load_after']}.",
        f"- {p['trials']} trial(s) x {p['duration_s']} s per measurement, interleaved; "
        f"run took {p['elapsed_s']} s{sections_took(p)}; git {p['git']}.",
        f"- Rule sets: {', '.join(f'`{k}` = {v}' for k, v in label.items())}.",
        "- Cells: median over the trials, then (ratio to the kernel path of the same rule set; "
        "loopback: to kernel@none). Min-max in the second table.",
        "",
    ]
    keys = [k for k in METRICS if k != "udp64_tx_kpps"]
    head = ["scenario"] + [f"{METRICS[k][0]} ({METRICS[k][1]})" for k in keys]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for name in order(summary):
        row = [f"**{name}**"]
        for k in keys:
            s = m(summary, name, k)
            if not s:
                row.append("")
                continue
            cell = fmt(s["median"])
            if s.get("ratio") is not None and not name.startswith("kernel@"):
                cell += f" ({s['ratio']:.2f}x)"
            row.append(cell)
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "Min-max over the trials:", ""]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for name in order(summary):
        row = [name]
        for k in keys:
            s = m(summary, name, k)
            row.append(f"{fmt(s['min'])}-{fmt(s['max'])}" if s else "")
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    lines.append("64 B UDP sent (kpps, trafgen, median): " + ", ".join(
        f"{n} {fmt(m(summary, n, 'udp64_tx_kpps')['median'])}" for n in order(summary)
        if m(summary, n, "udp64_tx_kpps")))
    if "generator_kpps" in extra:
        g = extra["generator_kpps"]
        lines.append(f"\nGenerator ceiling (trafgen alone into a veth whose peer is down, one CPU): "
                     f"{fmt(g['median'])} kpps [{fmt(g['min'])}-{fmt(g['max'])}].")
        gc = extra.get("generator_ms_per_mpkt")
        if gc:
            lines.append(f"The generator's own CPU cost at the fixed rate of "
                         f"{p['cpu_metric_rate_pps']:,} pps: {fmt(gc['median'])} ms/Mpkt "
                         f"[{fmt(gc['min'])}-{fmt(gc['max'])}] (included in the CPU column: trafgen's "
                         f"own CPU time, which carries the softirq work of the whole path).")
    progs = {summary[n]["datapath"]: summary[n]["program"] for n in summary
             if summary[n].get("program")}
    for dp, pr in sorted(progs.items()):
        verified = ("" if pr.get("verified_insns") is None
                    else f", {pr['verified_insns']} insns verified")
        lines.append(f"\nProgram ({dp}): {pr['name']}, {pr['xlated_insns']} insns translated, "
                     f"{pr['jited_bytes']} bytes JIT{verified}.")
    lines += xdp_ceiling_md(extra)
    lines += flow_table_md(extra)
    lines += controller_md(extra, p)
    lines += cross_node_md(extra.get("cross_node"))
    lines += ["", f"## Targets (default datapath: {DEFAULT_DATAPATH})", "",
              "| target | measured | met |", "|---|---|---|"]
    for t in tgts:
        met = {True: "yes", False: "**no**", None: "not measured"}[t["met"]]
        val = "n/a" if t["value"] is None else (f"{t['value']:.2f}x" if "Mpps" not in t["target"]
                                                else f"{t['value']:.2f} Mpps")
        lines.append(f"| {t['target']} | {val} | {met} |")
    failed = p.get("sections", {}).get("failed") or []
    if failed:
        lines += ["", f"**Sections that failed in this run (left out above): {', '.join(failed)}** "
                      "(their logs are in this directory)."]
    lines.append("")
    return "\n".join(lines)


def xdp_ceiling_md(extra):
    x, d = extra.get("xdp_live"), extra.get("xdp_live_drop")
    if not x and not d:
        return []

    def rng(st, f="{:.2f}"):
        if not st:
            return "n/a"
        return f"{f.format(st['median'])} [{f.format(st['min'])}-{f.format(st['max'])}]"

    out = ["", "## XDP program ceiling (one CPU, live frames)", "",
           "`BPF_PROG_TEST_RUN` with `BPF_F_TEST_XDP_LIVE_FRAMES` on the attached XDP program, "
           "frames as if received on pod1's host veth, really redirected through the devmap. "
           "Kernel-timed = the kernel's own time per frame, which includes everything the frame "
           "costs on this CPU until the call returns (the program, the redirect, the target veth's "
           "NAPI poll and what follows it); wall-clock adds the syscall and a fresh page pool per "
           "256 frames. The ceiling comes from runs without run-time statistics: with them "
           "(`BPF_ENABLE_STATS`, for the program's own ns) the kernel reads the clock twice around "
           "every program run (on a VM a paravirtual clock read), which the second column shows.",
           "",
           f"| into | kernel-timed Mpps | kernel-timed Mpps, statistics on | wall-clock Mpps "
           f"| program ns/frame | kernel-timed vs {XDP_TARGET_MPPS:g} Mpps |",
           "|---|---|---|---|---|---|"]
    for st, what in ((x, "pod2 end to end: its veth builds an skb per frame, pod2's stack "
                         "delivers it to a UDP socket"),
                     (d, "redirect-and-drop: an `XDP_DROP` program on pod2's eth0 drops each "
                         "frame in the veth's NAPI poll, before any skb (program + devmap redirect "
                         "+ veth hand-over)")):
        if not st:
            continue
        v = st["kernel_timed_mpps"]["median"]
        first = rng(st["kernel_timed_mpps"])
        if st["statistics"] == "on":
            first = "not measured (statistics were on in every run)"
        out.append(f"| {what} | {first} | {rng(st['with_statistics']['kernel_timed_mpps'])} | "
                   f"{rng(st['wall_mpps'])} | {rng(st['prog_ns_per_frame'], '{:.0f}')} | "
                   f"{v / XDP_TARGET_MPPS:.2f}x ({'met' if v >= XDP_TARGET_MPPS else 'missed'}"
                   f"{', statistics on' if st['statistics'] == 'on' else ''}) |")
    if x and x.get("prog_ns_per_frame"):
        out.append(f"\nThe program alone (its `BPF_ENABLE_STATS` run time, clock reads included): "
                   f"{x['prog_ns_per_frame']['median']:.0f} ns/frame = "
                   f"{x['prog_only_mpps']['median']:.1f} Mpps.")
    if x and x.get("pod_received_percent"):
        out.append(f"End to end, pod2's socket received {x['pod_received_percent']['median']:.1f}% "
                   f"of the frames run.")
    if d:
        dn = d.get("drop_ns_per_frame")
        out.append("Redirect-and-drop: every frame reached the drop program and pod2's stack "
                   "received none (bench.sh checks the veth's `xdp_drops`, the drop program's run "
                   "count with statistics, and pod2's UDP counters)" +
                   (f"; the drop program's own time {dn['median']:.0f} ns/frame." if dn else "."))
    return out


def flow_table_md(extra):
    f = extra.get("flow_table")
    if not f:
        return []
    out = ["", "## The flow table's cost", ""]
    pn = f.get("prog_ns_per_packet")
    if pn:
        out.append(f"Each program's own time per packet with the flow table, under "
                   f"{f.get('workload') or 'a TCP ping-pong'} (`scripts/bench-prog.sh`, "
                   f"`kernel.bpf_stats_enabled`, {f.get('duration_s')} s per trial; median [min-max]):")
        out.append("")
        out.append("| program | ns per packet | packets through it |")
        out.append("|---|---|---|")
        for name, v in pn.items():
            out.append(f"| {name} | {fmt(v['median'])} [{fmt(v['min'])}-{fmt(v['max'])}] "
                       f"| {v['runs']:,} in {v['n']} trial(s) |")
    ms = f.get("maps")
    if ms:
        out.append("")
        out.append("Memory after an attach (`bpftool map show`, memlock; LRU hashes are "
                   "preallocated, so it is all taken at attach time, once per node):")
        out.append("")
        out.append("| datapath | " + " | ".join(f"{n} (entries, bytes/entry)" for n in FLOW_MAPS)
                   + " | flow table | all maps |")
        out.append("|---|" + "---|" * (len(FLOW_MAPS) + 2))
        for dp, v in ms.items():
            cells = []
            for n in FLOW_MAPS:
                fm = v["flow_maps"].get(n)
                cells.append("n/a" if not fm else
                             f"{fm['bytes_memlock'] / 2**20:.1f} MiB ({fm['max_entries']:,}, "
                             f"{fm['bytes_per_entry']:.0f})")
            out.append(f"| {dp} | " + " | ".join(cells) +
                       f" | {v['flow_table_bytes'] / 2**20:.1f} MiB | "
                       f"{v['all_maps_bytes'] / 2**20:.1f} MiB |")
    return out


def cross_node_md(cn):
    """The cross-node section of results.md (also what --cross-node prints)."""
    if not cn:
        return []
    p, summary = cn["parameters"], cn["summary"]
    rs_label = {"none": "no rules",
                "kubeproxy": f"kube-proxy ({p['kube_proxy_services']:,} services)"}
    out = ["", "## Across nodes: pod 1 on node 1 -> pod 1 on node 2 (`scripts/bench-cross-node.sh`)",
           "",
           "Two node namespaces joined by a veth pair as the wire (tx checksumming off, native "
           "routing: each node routes the other's pod CIDR via the other's wire address), one pod "
           "on each; IPv4. `kernel`: both nodes route and run netfilter FORWARD; `tc` / `xdp`: the "
           "fast path attached on **both** nodes (`xdp-ctl attach --uplink` on the pod's host veth "
           "and the wire end, the local pod as endpoint, the other node's pod CIDRs as remote "
           "meshed prefixes): the sender's pod program redirects to the uplink, the receiver's "
           "uplink program into the pod. Rule sets in both nodes: "
           + ", ".join(f"`{k}` = {v}" for k, v in rs_label.items()) + ". "
           f"{p['trials']} trial(s) x {p['duration_s']} s per measurement, interleaved; the section "
           f"took {p['elapsed_s']} s; load average (1/5/15 min) before {p['load_before']}, after "
           f"{p['load_after']}" + (" (**quick**: indicative only)" if p.get("quick") else "") + ".",
           "",
           "Every figure was path-checked on both nodes: fast path, each node's `redirected` "
           "counter covered the traffic (both directions go through each node's programs); "
           "kernel path, each node's IPv4 `ForwDatagrams` did.",
           "",
           "Cells: median [min-max] over the trials, then (ratio to the kernel path of the same "
           "rule set).",
           ""]
    keys = [k for k in CROSS_METRICS if any(k in e["metrics"] for e in summary.values())]
    head = ["scenario"] + [f"{METRICS[k][0]} ({METRICS[k][1]})" for k in keys]
    out.append("| " + " | ".join(head) + " |")
    out.append("|" + "---|" * len(head))
    for rs in CROSS_RULESETS:
        for dp in DATAPATHS:
            name = f"{dp}@{rs}"
            if name not in summary:
                continue
            row = [f"**{name}**"]
            for k in keys:
                st = summary[name]["metrics"].get(k)
                if not st:
                    row.append("")
                    continue
                cell = f"{fmt(st['median'])} [{fmt(st['min'])}-{fmt(st['max'])}]"
                if dp != "kernel" and st.get("ratio") is not None:
                    cell += f" ({st['ratio']:.2f}x)"
                row.append(cell)
            out.append("| " + " | ".join(row) + " |")
    la = cn.get("loadavg_1min_at_trials")
    if la:
        out += ["", f"1-minute load average at the start of the trials: {fmt(la['median'])} "
                    f"[{fmt(la['min'])}-{fmt(la['max'])}] (per trial in `trials` of the raw JSON)."]
    return out


def controller_md(extra, p):
    c = extra.get("controller")
    if not c:
        return []
    dps = list(c["datapaths"])
    t = c["targets"]
    size = (f"{c['pods']:,} pods, bursts of {c['burst']} and {c['burst2']}")
    out = ["", f"## Controller (`xdp-ctl run`, `scripts/bench-controller.sh`): {size}", ""]
    if not c["at_target_size"]:
        out.append(f"**Smaller than the targets' size** ({CONTROLLER_TARGET_PODS:,} pods, a burst "
                   f"of {CONTROLLER_TARGET_BURST}){' because of --quick' if p.get('quick') else ''}: "
                   f"the figures are shown, the targets are not checked.")
        out.append("")
    out.append("| figure | " + " | ".join(dps) + " | target |")
    out.append("|---|" + "---|" * (len(dps) + 1))

    def cell(dp, get, check=None):
        d = c["datapaths"][dp]
        try:
            v = get(d)
        except (KeyError, TypeError):
            v = None
        if v is None:
            txt = "n/a"
        elif isinstance(v, int):
            txt = f"{v:,}"
        else:
            txt = fmt(v) if isinstance(v, float) else str(v)
        if check and check.startswith("burst") and d["burst1"].get("converged") is False:
            txt = "never"
        if check:
            met = d["checks"][check]["met"]
            if met is not None:
                txt += " (met)" if met else " (**missed**)"
        return txt

    def row(label, get, target="", check=None):
        out.append(f"| {label} | " + " | ".join(cell(dp, get, check) for dp in dps)
                   + f" | {target} |")

    b1, b2 = f"burst of {c['burst']}", f"burst of {c['burst2']}"
    row("cold: process start -> ready (ms)", lambda d: d["cold"]["ready_ms"])
    row("cold: controller start -> ready (ms; initial dump included)",
        lambda d: d["cold"]["sync_ms"], f"< {t['after_dump_ms']} after the dump",
        "ready_after_start_ms")
    row("cold: interfaces attached / map writes",
        lambda d: f"{d['cold']['attached']} / {d['cold']['sync_writes']}")
    row("restart (re-adopts): process start -> ready (ms)", lambda d: d["restart"]["ready_ms"])
    row("restart: map writes", lambda d: d["restart"]["sync_writes"])
    for key, label in (("burst1", b1), ("burst2", b2)):
        row(f"{label}: last node event -> converged (ms)",
            lambda d, k=key: d[k]["last_event_to_converged_ms"],
            f"< {t['burst_ms']}" if key == "burst1" else "",
            "burst_last_event_to_converged_ms" if key == "burst1" else None)
        row(f"{label}: creation end -> converged (ms)",
            lambda d, k=key: d[k]["create_end_to_converged_ms"])
        row(f"{label}: reconciles / map writes",
            lambda d, k=key: f"{d[k]['reconciles']} / {d[k]['map_writes']}")
    row(f"VmRSS at {c['pods']:,} pods, highest of cold and restart ready (MiB)",
        lambda d: d["rss_max_mib"], f"< {t['rss_mib']}", "rss_max_mib")
    row(f"VmHWM at {c['pods']:,} pods (MiB)", lambda d: d["hwm_max_mib"])
    after = c["pods"] + c["burst"] + c["burst2"]
    row(f"VmRSS / VmHWM after the bursts, {after:,} pods (MiB)",
        lambda d: f"{fmt(d['after_bursts']['vmrss_mib'])} / {fmt(d['after_bursts']['vmhwm_mib'])}")
    row("load average before", lambda d: d["loadavg_before"])
    out.append("")
    out.append("Negative times: the controller had converged before that event (the last events, "
               "e.g. carrier changes, needed no work). Raw figures: `controller` in results.json.")
    return out


def svg_panel(out, box, key, summary, rulesets, label, floor=None):
    """One panel: bars per datapath grouped by rule set, whiskers min-max, ratio labels, an
    optional dashed floor line. box = (x, y, width, height) of the panel."""
    name, unit, _, lower = METRICS[key]
    ox, oy, pw, ph = box
    left, top, w, h = ox + 50, oy + 30, pw - 70, ph - 80
    vals = [s for s in (m(summary, f"{dp}@{rs}", key) for rs in rulesets for dp in DATAPATHS)
            if s]
    top_v = max([s["max"] for s in vals] + ([floor["max"]] if floor else []) + [1e-9]) * 1.15
    out.append(f'<text x="{ox + 10}" y="{oy + 15}" font-size="13" font-weight="bold">'
               f'{escape(name)} ({unit}), {"lower" if lower else "higher"} is better</text>')
    for j in range(5):
        v = top_v * j / 4
        y = top + h - h * j / 4
        out.append(f'<line x1="{left}" x2="{left + w}" y1="{y:.1f}" y2="{y:.1f}" '
                   f'stroke="#e4e4e4"/><text x="{left - 4}" y="{y + 4:.1f}" '
                   f'text-anchor="end">{fmt(v)}</text>')
    gw = w / max(len(rulesets), 1)
    bw = gw / (len(DATAPATHS) + 1)
    for gi, rs in enumerate(rulesets):
        gx = left + gi * gw
        out.append(f'<text x="{gx + gw / 2:.1f}" y="{top + h + 15}" text-anchor="middle">'
                   f'{escape(label[rs])}</text>')
        for bi, dp in enumerate(DATAPATHS):
            s = m(summary, f"{dp}@{rs}", key)
            if not s:
                continue
            x = gx + bw / 2 + bi * bw
            y = top + h - h * s["median"] / top_v
            out.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bw * 0.9:.1f}" '
                       f'height="{top + h - y:.1f}" fill="{COLORS[dp]}"><title>{dp}@{rs}: '
                       f'{fmt(s["median"])} {unit} [{fmt(s["min"])}-{fmt(s["max"])}]'
                       f'</title></rect>')
            cx = x + bw * 0.45
            y0, y1 = top + h - h * s["min"] / top_v, top + h - h * s["max"] / top_v
            out.append(f'<line x1="{cx:.1f}" x2="{cx:.1f}" y1="{y0:.1f}" y2="{y1:.1f}" '
                       f'stroke="black"/>')
            txt = fmt(s["median"])
            if dp != "kernel" and s.get("ratio") is not None:
                txt = f"{s['ratio']:.2f}x"
            out.append(f'<text x="{cx:.1f}" y="{min(y, y1) - 3:.1f}" text-anchor="middle" '
                       f'font-size="10">{txt}</text>')
    if floor:
        y = top + h - h * floor["median"] / top_v
        out.append(f'<line x1="{left}" x2="{left + w}" y1="{y:.1f}" y2="{y:.1f}" '
                   f'stroke="{COLORS["loopback"]}" stroke-dasharray="5,3"/>'
                   f'<text x="{left + w}" y="{y - 3:.1f}" text-anchor="end" '
                   f'fill="{COLORS["loopback"]}">loopback {fmt(floor["median"])}</text>')
    out.append(f'<line x1="{left}" x2="{left + w}" y1="{top + h}" y2="{top + h}" '
               f'stroke="black"/>')


def svg_chart(raw, summary, cross=None):
    """The one-node panels, and below them (when the run has them) the cross-node panels, under
    their own heading."""
    p = raw["parameters"]
    rulesets = [rs for rs in RULESETS if any(f"{dp}@{rs}" in summary for dp in DATAPATHS)]
    label = {"none": "no rules", "kubeproxy": f"kube-proxy {p['kube_proxy_services']:,} svc",
             "fwrules": f"{p['forward_rules']:,} FORWARD"}
    cols, pw, ph, mx, my = 3, 400, 300, 20, 60
    rows = (len(CHART) + cols - 1) // cols
    width, height = cols * pw + 2 * mx, rows * ph + my + 40
    cross_rs, cross_y = [], 0
    if cross:
        cs = cross["summary"]
        cross_rs = [rs for rs in CROSS_RULESETS if any(f"{dp}@{rs}" in cs for dp in DATAPATHS)]
    if cross_rs:
        cross_y = rows * ph + my + 20
        height = cross_y + 40 + ((len(CROSS_METRICS) + cols - 1) // cols) * ph + 20
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="11">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{mx}" y="22" font-size="15" font-weight="bold">xdp-fastpath: pod to pod on '
           f'one node, {p["cpus"]} vCPU, Linux {escape(p["kernel"])}, {p["start"][:10]}'
           f'{" (quick)" if p["quick"] else ""}</text>',
           f'<text x="{mx}" y="40">median of {p["trials"]} trial(s), whiskers min-max; '
           f'label = ratio to the kernel path of the same rule set; dashed green = loopback '
           f'floor; load {escape(p["load_before"])} -&gt; {escape(p["load_after"])}</text>']
    lx = width - 250
    for i, dp in enumerate(DATAPATHS + ["loopback"]):
        out.append(f'<rect x="{lx + i * 60}" y="30" width="10" height="10" fill="{COLORS[dp]}"/>'
                   f'<text x="{lx + i * 60 + 13}" y="39">{dp}</text>')
    for idx, key in enumerate(CHART):
        box = (mx + (idx % cols) * pw, my + (idx // cols) * ph, pw, ph)
        svg_panel(out, box, key, summary, rulesets, label, m(summary, "loopback", key))
    if cross_rs:
        cp = cross["parameters"]
        clabel = {"none": "no rules", "kubeproxy": f"kube-proxy {cp['kube_proxy_services']:,} svc"}
        out.append(f'<line x1="{mx}" x2="{width - mx}" y1="{cross_y - 8}" y2="{cross_y - 8}" '
                   f'stroke="#999"/>')
        out.append(f'<text x="{mx}" y="{cross_y + 12}" font-size="15" font-weight="bold">Across '
                   f'two nodes: pod on node 1 -&gt; pod on node 2 over a veth wire, fast path '
                   f'attached on both nodes (scripts/bench-cross-node.sh)'
                   f'{" (quick)" if cp.get("quick") else ""}</text>')
        out.append(f'<text x="{mx}" y="{cross_y + 30}">median of {cp["trials"]} trial(s) x '
                   f'{cp["duration_s"]} s, whiskers min-max; rule sets on both nodes; label = '
                   f'ratio to the kernel path (both nodes forwarding) of the same rule set; load '
                   f'{escape(cp["load_before"])} -&gt; {escape(cp["load_after"])}</text>')
        for idx, key in enumerate(CROSS_METRICS):
            box = (mx + (idx % cols) * pw, cross_y + 40 + (idx // cols) * ph, pw, ph)
            svg_panel(out, box, key, cross["summary"], cross_rs, clabel)
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--cross-node":
        cn = cross_node(json.loads(Path(sys.argv[2]).read_text()))
        print("\n".join(cross_node_md(cn)).lstrip("\n"))
        return
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    raw = json.loads(Path(sys.argv[1]).read_text())
    out = Path(sys.argv[2])
    summary, extra = summarise(raw)
    tgts = targets(summary, extra)
    result = {"parameters": raw["parameters"], "summary": summary, **extra, "targets": tgts,
              "trials": raw["trials"]}
    (out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "results.md").write_text(markdown(raw, summary, extra, tgts))
    (out / "chart.svg").write_text(svg_chart(raw, summary, extra.get("cross_node")))


if __name__ == "__main__":
    main()
