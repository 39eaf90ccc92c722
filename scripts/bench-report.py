#!/usr/bin/env python3
"""Summarise a scripts/bench.sh run: raw.json -> results.json, results.md, chart.svg.

Usage: bench-report.py RAW_JSON OUT_DIR

Standard library only (benchmarks are not run by CI, but nothing here needs installing).
Medians with min and max over the trials; every figure also as a ratio to the kernel path of
the same rule set (the loopback floor against kernel@none); the issue-10 targets checked for
the default datapath (tc).
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


def summarise(raw):
    trials = raw["trials"]
    scen = {}
    for t in trials:
        if t["kind"] == "scenario":
            scen.setdefault(t["scenario"], []).append(t)
    summary = {}
    for name, ts in scen.items():
        entry = {"datapath": ts[0]["datapath"], "ruleset": ts[0]["ruleset"], "trials": len(ts),
                 "program": ts[0].get("program"), "metrics": {}}
        for key, (_, _, fn, _) in METRICS.items():
            s = stat([get(t, fn) for t in ts])
            if s is not None:
                entry["metrics"][key] = s
        summary[name] = entry
    for name, entry in summary.items():
        ref = "kernel@none" if entry["datapath"] == "loopback" else f"kernel@{entry['ruleset']}"
        for key, s in entry["metrics"].items():
            base = summary.get(ref, {}).get("metrics", {}).get(key)
            s["ratio"] = s["median"] / base["median"] if base and base["median"] else None
            s["ratio_to"] = ref
    extra = {}
    gen = stat([t["tx_pps"] / 1e3 for t in trials if t["kind"] == "generator"])
    if gen:
        extra["generator_kpps"] = gen
        extra["generator_ms_per_mpkt"] = stat([t.get("ms_per_mpkt") for t in trials
                                              if t["kind"] == "generator"])
    live = [t for t in trials if t["kind"] == "xdp_live"]
    if live:
        extra["xdp_live"] = {
            "wall_mpps": stat([t["mpps"] for t in live]),
            "kernel_timed_mpps": stat([t["kernel_mpps"] for t in live]),
            "prog_ns_per_frame": stat([t["prog_ns_per_frame"] for t in live]),
            "prog_only_mpps": stat([1e3 / t["prog_ns_per_frame"] for t in live
                                    if t["prog_ns_per_frame"] > 0]),
        }
    return summary, extra


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
    live = extra.get("xdp_live")
    if live:
        v = live["kernel_timed_mpps"]["median"]
        out.append({"target": "XDP program ceiling >= 3 Mpps, one core, live frames (kernel-timed)",
                    "value": round(v, 3), "met": v >= 3.0})
    else:
        out.append({"target": "XDP program ceiling >= 3 Mpps", "value": None, "met": None})
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
        f"run took {p['elapsed_s']} s; git {p['git']}.",
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
    if "xdp_live" in extra:
        x = extra["xdp_live"]
        lines.append(
            f"\nXDP program ceiling, one CPU, BPF_PROG_TEST_RUN live frames redirected into a real "
            f"veth: {x['kernel_timed_mpps']['median']:.2f} Mpps kernel-timed "
            f"[{x['kernel_timed_mpps']['min']:.2f}-{x['kernel_timed_mpps']['max']:.2f}], "
            f"{x['wall_mpps']['median']:.2f} Mpps wall-clock (one syscall per 256 frames); "
            f"the program alone {x['prog_ns_per_frame']['median']:.0f} ns/frame "
            f"= {x['prog_only_mpps']['median']:.1f} Mpps (BPF_ENABLE_STATS).")
    progs = {summary[n]["datapath"]: summary[n]["program"] for n in summary
             if summary[n].get("program")}
    for dp, pr in sorted(progs.items()):
        verified = ("" if pr.get("verified_insns") is None
                    else f", {pr['verified_insns']} insns verified")
        lines.append(f"\nProgram ({dp}): {pr['name']}, {pr['xlated_insns']} insns translated, "
                     f"{pr['jited_bytes']} bytes JIT{verified}.")
    lines += ["", f"## Targets (default datapath: {DEFAULT_DATAPATH})", "",
              "| target | measured | met |", "|---|---|---|"]
    for t in tgts:
        met = {True: "yes", False: "**no**", None: "not measured"}[t["met"]]
        val = "n/a" if t["value"] is None else (f"{t['value']:.2f}x" if "Mpps" not in t["target"]
                                                else f"{t['value']:.2f} Mpps")
        lines.append(f"| {t['target']} | {val} | {met} |")
    lines.append("")
    return "\n".join(lines)


def svg_chart(raw, summary):
    p = raw["parameters"]
    rulesets = [rs for rs in RULESETS if any(f"{dp}@{rs}" in summary for dp in DATAPATHS)]
    label = {"none": "no rules", "kubeproxy": f"kube-proxy {p['kube_proxy_services']:,} svc",
             "fwrules": f"{p['forward_rules']:,} FORWARD"}
    cols, pw, ph, mx, my = 3, 400, 300, 20, 60
    rows = (len(CHART) + cols - 1) // cols
    width, height = cols * pw + 2 * mx, rows * ph + my + 40
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
        name, unit, _, lower = METRICS[key]
        ox, oy = mx + (idx % cols) * pw, my + (idx // cols) * ph
        left, top, w, h = ox + 50, oy + 30, pw - 70, ph - 80
        vals = [s for s in (m(summary, f"{dp}@{rs}", key) for rs in rulesets for dp in DATAPATHS)
                if s]
        floor = m(summary, "loopback", key)
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
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main():
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
    (out / "chart.svg").write_text(svg_chart(raw, summary))


if __name__ == "__main__":
    main()
