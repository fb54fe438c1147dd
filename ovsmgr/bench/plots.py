"""PNG plots of a results file, one or more per experiment.

- sweep: latency percentiles (p50, p75, p99, max; log scale) and loss against the
  offered rate, one panel per pipeline, the same-run baseline's p99 and loss
  dashed, as the seed's Figures 4.2-4.7;
- rules: NDR (or TCP throughput) against rule count, each system relative to its
  own zero-rule baseline, with the absolute figures below;
- flows: NDR against flow count (log scale) relative to the smallest count;
- ndr, tcp, cps: bars of the pipelines next to their baseline;
- flood: the established stream without and with the flood, and the ping's loss, per point;
- control: apply and incremental update time against rule count, ovsmgr against
  a raw ``ovs-ofctl --bundle``;
- updates: NDR without and with runtime changes, and the changes per second
  requested and applied, with their latency.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

DPI = 80
COLORS = {"p50": "#1b9e77", "p75": "#7570b3", "p99": "#d95f02", "max": "#e7298a"}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    _pyplot().close(fig)
    return path


def _by(points: Sequence[Mapping[str, Any]], *keys: str) -> dict[tuple[Any, ...], list[Mapping[str, Any]]]:
    out: dict[tuple[Any, ...], list[Mapping[str, Any]]] = defaultdict(list)
    for p in points:
        out[tuple(p["params"].get(k) for k in keys)].append(p)
    return out


def _f(point: Mapping[str, Any], key: str, baseline: bool = False) -> float:
    figures = (point.get("baseline") or {}).get("figures", {}) if baseline else point["figures"]
    value = figures.get(key)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else float("nan")


def plot_sweep(name: str, points: Sequence[Mapping[str, Any]], out: Path) -> list[Path]:
    plt = _pyplot()
    paths = []
    for (flows, size), group in sorted(_by(points, "flows", "size").items()):
        pipelines = list(dict.fromkeys(p["params"]["pipeline"] for p in group))
        fig, axes = plt.subplots(1, len(pipelines), figsize=(5.4 * len(pipelines), 4.4), squeeze=False)
        for ax, pipeline in zip(axes[0], pipelines, strict=True):
            pts = sorted((p for p in group if p["params"]["pipeline"] == pipeline),
                         key=lambda p: _f(p, "offered_pps"))
            x = [_f(p, "offered_pps") / 1000 for p in pts]
            for q in ("p50", "p75", "p99", "max"):
                ax.plot(x, [_f(p, f"latency_{q}_us") for p in pts], marker="o", ms=3, color=COLORS[q],
                        label=q)
            by_base = sorted(pts, key=lambda p: _f(p, "offered_pps", baseline=True))
            bx = [_f(p, "offered_pps", baseline=True) / 1000 for p in by_base]
            base = [_f(p, "latency_p99_us", baseline=True) for p in by_base]
            if any(v == v for v in base):
                ax.plot(bx, base, ls="--", color="grey", label="p99, plain (same run)")
            ax.set_yscale("log")
            ax.set_xlabel("offered load (kpps)")
            ax.set_ylabel("one-way latency (µs)")
            ax.set_title(f"{pipeline}, {size} B, {flows} flows", fontsize=10)
            loss_ax = ax.twinx()
            loss_ax.plot(x, [100 * _f(p, "loss") for p in pts], color="black", lw=1, marker="x",
                         ms=4, label="loss")
            bloss = [100 * _f(p, "loss", baseline=True) for p in by_base]
            if any(v == v for v in bloss):
                loss_ax.plot(bx, bloss, color="black", lw=1, ls=":", label="loss, plain")
            loss_ax.set_ylabel("loss (%)")
            loss_ax.set_ylim(bottom=0)
            handles = ax.get_legend_handles_labels()
            lh = loss_ax.get_legend_handles_labels()
            ax.legend(handles[0] + lh[0], handles[1] + lh[1], fontsize=7, loc="upper center",
                      bbox_to_anchor=(0.5, -0.16), ncol=4, frameon=False)
        paths.append(_save(fig, out / f"{name}-sweep-{flows}flows-{size}B.png"))
    return paths


def plot_rules(name: str, points: Sequence[Mapping[str, Any]], out: Path) -> list[Path]:
    plt = _pyplot()
    paths = []
    scaling = [p for p in points if p["params"].get("rules") is not None and p.get("baseline")
               and p["baseline"]["params"].get("pipeline") != "plain"]
    for measure, group in _by(scaling, "measure").items():
        key = {"ndr": "ndr_pps", "tcp": "tcp_gbps", "cps": "cps", "rate": "pmd_cycles_per_packet"}[measure[0]]
        unit = {"ndr": ("NDR (kpps)", 1e-3), "tcp": ("TCP (Gbit/s)", 1.0), "cps": ("conn/s (k)", 1e-3),
                "rate": ("PMD cycles per packet", 1.0)}[measure[0]]
        kinds = sorted({p["params"]["rule_kind"] for p in group})
        fig, axes = plt.subplots(2, len(kinds), figsize=(5.2 * len(kinds), 6.4), squeeze=False)
        for col, kind in enumerate(kinds):
            for system, pts in sorted(_by([p for p in group if p["params"]["rule_kind"] == kind],
                                          "system").items()):
                pts = sorted(pts, key=lambda p: p["params"]["rules"])
                zeros = sorted(_f(p, key, baseline=True) for p in pts)  # re-measured for every count
                xs = [0] + [p["params"]["rules"] for p in pts]
                ratio = [1.0] + [float(p["ratio"].get(key, float("nan"))) for p in pts]
                absolute = [zeros[len(zeros) // 2] * unit[1]] + [_f(p, key) * unit[1] for p in pts]
                label = "ovsmgr (OVS)" if system[0] == "ovs" else system[0]
                axes[0][col].plot(xs, ratio, marker="o", label=label)
                axes[1][col].plot(xs, absolute, marker="o", label=label)
            axes[0][col].set_title(f"{kind} rules: relative to 0 rules (same run)", fontsize=10)
            axes[0][col].set_ylabel(f"{unit[0].split(' (')[0]} / same system at 0 rules")
            axes[0][col].axhline(1.0, color="grey", lw=0.6)
            axes[0][col].set_ylim(bottom=0)
            axes[1][col].set_ylabel(unit[0])
            axes[1][col].set_xlabel("rules")
            axes[1][col].set_ylim(bottom=0)
            axes[0][col].legend(fontsize=7)
        paths.append(_save(fig, out / f"{name}-rules-{measure[0]}.png"))
    return paths


def plot_flows(name: str, points: Sequence[Mapping[str, Any]], out: Path) -> list[Path]:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for (pipeline, size), pts in sorted(_by(points, "pipeline", "size").items()):
        pts = sorted(pts, key=lambda p: p["params"]["flows"])
        first = pts[0].get("baseline") or {}
        bases = sorted(_f(p, "ndr_pps", baseline=True) for p in pts)  # re-measured for every count
        xs = [first.get("params", {}).get("flows")] + [p["params"]["flows"] for p in pts]
        ys = [bases[len(bases) // 2] / 1000] + [_f(p, "ndr_pps") / 1000 for p in pts]
        line = ax.plot(xs, ys, marker="o", label=f"{pipeline}, {size} B")
        for p in pts:
            ax.annotate(f"{p['ratio'].get('ndr_pps', float('nan')):.2f}x",
                        (p["params"]["flows"], _f(p, "ndr_pps") / 1000), fontsize=7,
                        color=line[0].get_color(), textcoords="offset points", xytext=(3, 4))
    ax.set_xscale("log")
    ax.set_xlabel("flows (distinct 5-tuples, connections in conntrack)")
    ax.set_ylabel("NDR (kpps)")
    ax.set_ylim(bottom=0)
    ax.set_title("NDR against flow count (ratios to the smallest count, same run)", fontsize=10)
    ax.legend(fontsize=7)
    return [_save(fig, out / f"{name}-flows.png")]


def plot_bars(name: str, points: Sequence[Mapping[str, Any]], out: Path, keys: Sequence[str],
              labels: Sequence[str]) -> list[Path]:
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(keys), figsize=(4.6 * len(keys), 3.6), squeeze=False)
    for ax, key, label in zip(axes[0], keys, labels, strict=True):
        names, values, colors = [], [], []
        for p in points:
            tag = " ".join(str(p["params"][k]) for k in ("flows", "size", "destinations") if k in p["params"])
            base = p.get("baseline")
            if base and f"{base['params']['pipeline']} {tag}" not in names:
                names.append(f"{base['params']['pipeline']} {tag}".strip())
                values.append(_f(p, key, baseline=True))
                colors.append("grey")
            names.append(f"{p['params']['pipeline']} {tag}".strip())
            values.append(_f(p, key))
            colors.append("#1f77b4")
        ax.barh(names, values, color=colors)
        ax.set_xlabel(label)
        ax.invert_yaxis()
    return [_save(fig, out / f"{name}-{points[0]['method']}.png")]


def plot_flood(name: str, points: Sequence[Mapping[str, Any]], out: Path) -> list[Path]:
    """Per point: the stream's throughput without and with the flood, and the ping's loss."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 0.5 * len(points) + 1.6), squeeze=False)
    names = [f"{p['params']['pipeline']} to {p['params'].get('destinations')} ({p['params'].get('datapath', '')})"
             for p in points]
    ys = list(range(len(points)))
    stream, ping = axes[0]
    stream.barh([y - 0.2 for y in ys], [_f(p, "stream_mbps", baseline=True) for p in points], height=0.4,
                color="grey", label="without the flood")
    stream.barh([y + 0.2 for y in ys], [_f(p, "stream_mbps") for p in points], height=0.4, color="#1f77b4",
                label="during the flood")
    stream.set_xlabel("established TCP stream (Mbit/s)")
    stream.set_yticks(ys, names, fontsize=7)
    stream.legend(fontsize=7)
    ping.barh(ys, [100 * _f(p, "ping_loss") for p in points], color="#d62728")
    ping.set_xlabel("ping loss during the flood (%)")
    ping.set_yticks(ys, [""] * len(ys))
    for ax in (stream, ping):
        ax.invert_yaxis()
    return [_save(fig, out / f"{name}-flood.png")]


def plot_control(name: str, points: Sequence[Mapping[str, Any]], out: Path) -> list[Path]:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for (kind,), pts in _by(points, "rule_kind").items():
        pts = sorted(pts, key=lambda p: p["params"]["rules"])
        xs = [p["params"]["rules"] for p in pts]
        for ax, key in zip(axes, ("apply_s", "incremental_s"), strict=True):
            ax.plot(xs, [_f(p, key) for p in pts], marker="o", label=f"ovsmgr apply ({kind})")
            ax.plot(xs, [_f(p, key, baseline=True) for p in pts], marker="s", ls="--",
                    label=f"raw ovs-ofctl --bundle ({kind})")
    axes[0].set_title("full apply onto an empty table", fontsize=10)
    axes[1].set_title("one rule changed", fontsize=10)
    for ax in axes:
        ax.set_xlabel("rules")
        ax.set_ylabel("seconds")
        ax.legend(fontsize=7)
    return [_save(fig, out / f"{name}-control.png")]


def plot_updates(name: str, points: Sequence[Mapping[str, Any]], out: Path) -> list[Path]:
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 0.9 * len(points) + 2.6))
    labels = [f"{p['params']['pipeline']}\n{p['params'].get('flows')} flows, {p['params'].get('size')} B"
              for p in points]
    ys = list(range(len(points)))
    left.barh([y - 0.2 for y in ys], [_f(p, "ndr_pps", baseline=True) / 1000 for p in points], 0.4,
              color="grey", label="no updates")
    left.barh([y + 0.2 for y in ys], [_f(p, "ndr_pps") / 1000 for p in points], 0.4, color="#1f77b4",
              label="with updates")
    for y, p in zip(ys, points, strict=True):
        ratio = (p.get("ratio") or {}).get("ndr_pps")
        if isinstance(ratio, int | float):
            left.annotate(f"{ratio:.2f}x", (_f(p, "ndr_pps") / 1000, y + 0.2), fontsize=8, va="center")
    left.set_yticks(ys, labels, fontsize=8)
    left.invert_yaxis()
    left.set_xlabel("NDR (kpps)")
    left.legend(fontsize=7)
    right.barh([y - 0.2 for y in ys], [_f(p, "update_rate") for p in points], 0.4, color="grey",
               label="changes/s requested")
    right.barh([y + 0.2 for y in ys], [_f(p, "updates_per_s") for p in points], 0.4, color="#d95f02",
               label="changes/s applied")
    for y, p in zip(ys, points, strict=True):
        right.annotate(f"p50 {_f(p, 'update_latency_p50_ms'):.0f} ms, p99 {_f(p, 'update_latency_p99_ms'):.0f} ms",
                       (_f(p, "updates_per_s"), y + 0.2), fontsize=8, va="center")
    right.set_yticks(ys, [""] * len(ys))
    right.invert_yaxis()
    right.set_xlabel("runtime changes per second (controller engine)")
    right.legend(fontsize=7)
    fig.suptitle("NDR while runtime changes are applied, against the same pipeline without", fontsize=10)
    return [_save(fig, out / f"{name}-updates.png")]


def write_plots(data: Mapping[str, Any], out: Path) -> list[Path]:
    """Every plot the results allow; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    by_exp: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for p in data.get("points", []):
        by_exp[p["experiment"]].append(p)
    for name, points in by_exp.items():
        method = points[0]["method"]
        if method == "sweep":
            paths += plot_sweep(name, points, out)
        elif method == "rules":
            paths += plot_rules(name, points, out)
            pipeline_points = [p for p in points if p not in [q for q in points if q["params"].get("rules")]]
            if pipeline_points:
                paths += plot_bars(f"{name}-vs-plain", pipeline_points, out, ["ndr_pps"], ["NDR (pps)"]) \
                    if "ndr_pps" in pipeline_points[0]["figures"] else []
        elif method == "flows":
            paths += plot_flows(name, [p for p in points if p["params"].get("measure") == "ndr"], out)
        elif method == "ndr":
            paths += plot_bars(name, points, out, ["ndr_pps", "at_ndr_latency_p99_us"],
                               ["NDR (pps)", "p99 latency at NDR (µs)"])
        elif method == "tcp":
            paths += plot_bars(name, points, out, ["tcp_gbps", "rr_p50_us"],
                               ["TCP throughput (Gbit/s)", "request/response p50 (µs)"])
        elif method == "cps":
            paths += plot_bars(name, points, out, ["cps"], ["new connections per second"])
        elif method == "control":
            paths += plot_control(name, points, out)
        elif method == "updates":
            paths += plot_updates(name, points, out)
        elif method == "flood":
            paths += plot_flood(name, points, out)
    return paths
