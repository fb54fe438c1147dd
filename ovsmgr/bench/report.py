"""The markdown summary of a results file: headline ratios against same-run baselines.

Absolute rates on a shared two-core VM say more about the VM than about the
pipeline, so every headline is a ratio to a baseline measured minutes apart on
the same hosts (plain OVS forwarding, the same system with no rules, the
smallest flow count, or a raw ``ovs-ofctl`` bundle); absolute figures follow in
the tables. `TARGETS` are the issue's acceptance targets; `evaluate_targets`
says met / missed / not measured and, when missed, shows the datapath
statistics and profile the run recorded for the point.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ovsmgr.bench.spec import KEPT_UP

Point = Mapping[str, Any]
NONE = "\u2013"  # an en dash: no value


def _num(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return NONE
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        v = float(value)
        if v != 0 and (abs(v) >= 1e5 or abs(v) < 10 ** -digits):
            return f"{v:.3g}"
        return f"{v:,.{digits}g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(value)


def _ratio(value: Any) -> str:
    return f"{float(value):.2f}x" if isinstance(value, int | float) and value == value else NONE


@dataclass(frozen=True)
class Target:
    name: str
    threshold: float
    select: Callable[[Point], bool]
    figure: str = "ndr_pps"
    higher_is_better: bool = True
    """False for costs: the target is met when the ratio is at most 1/threshold."""
    unmet: Callable[[Point], str | None] | None = None
    """A condition of the target besides the ratio: why the point does not count as met."""
    condition: str = ""
    """That condition in words, shown with the threshold."""

    @property
    def needed(self) -> str:
        needed = f">= {self.threshold}x" if self.higher_is_better else f"<= {1 / self.threshold:.2f}x"
        return f"{needed}, {self.condition}" if self.condition else needed

    def met(self, ratio: Any) -> bool:
        if not isinstance(ratio, int | float) or ratio != ratio:
            return False
        return ratio >= self.threshold if self.higher_is_better else ratio <= 1 / self.threshold


def _is_rules_max(p: Point, measure: str = "ndr", rules: int = 5000) -> bool:
    return (p["method"] == "rules" and p["params"].get("system") == "ovs"
            and p["params"].get("measure") == measure and p["params"].get("rules") == rules
            and bool(p.get("baseline")))


def _firewall_vs_plain(p: Point, measure: str = "ndr") -> bool:
    base = (p.get("baseline") or {}).get("params", {})
    pipeline = str(p["params"].get("pipeline", ""))
    return (p["params"].get("measure") == measure and base.get("pipeline") == "plain"
            and (pipeline == "seed-firewall" or pipeline.startswith("ovsmgr ")))


def _flows_100k(p: Point, measure: str = "ndr") -> bool:
    base = (p.get("baseline") or {}).get("params", {})
    return (p["method"] == "flows" and p["params"].get("measure") == measure
            and p["params"].get("flows") == 100_000 and base.get("flows") == 100)


UPDATE_RATE = 100.0


def _updates(p: Point) -> bool:
    """The NDR while `UPDATE_RATE` runtime changes per second were requested, against the NDR
    of the same pipeline without them."""
    base = (p.get("baseline") or {}).get("params", {})
    return (p["method"] == "updates" and p["params"].get("update_rate") == UPDATE_RATE
            and base.get("update_rate") == 0 and "ndr_pps" in (p.get("ratio") or {}))


def _updates_unmet(p: Point) -> str | None:
    """The ratio counts only if the changes were really applied at the rate, none failing."""
    f = p["figures"]
    achieved, failed = f.get("updates_per_s"), f.get("updates_failed") or 0
    if failed:
        return f"{_num(failed)} changes failed"
    if not isinstance(achieved, int | float) or achieved < KEPT_UP * UPDATE_RATE:
        return (f"the updater applied {_num(achieved)} changes/s of {UPDATE_RATE:g} requested "
                f"(p50 {_num(f.get('update_latency_p50_ms'))} ms per change)")
    return None


def _cost(select: Callable[..., bool]) -> Callable[[Point], bool]:
    return lambda p: select(p, "rate") and "pmd_cycles_per_packet" in (p.get("ratio") or {})


def _nat_cps_spread(p: Point) -> bool:
    """New connections per second through the seed NAT, SYNs spread over destinations, against
    plain forwarding of the same SYNs."""
    base = (p.get("baseline") or {}).get("params", {})
    return (p["method"] == "cps" and p["params"].get("pipeline") == "seed-nat"
            and p["params"].get("destinations", "1x1") != "1x1" and base.get("pipeline") == "plain")


def _flood_one_destination(p: Point) -> bool:
    """The stream's throughput while SYNs flood one destination through a NAT pipeline, against
    the same pipeline without the flood."""
    return (p["method"] == "flood" and p["params"].get("destinations") == "1x1"
            and p["params"].get("pipeline") != "plain" and "stream_mbps" in (p.get("ratio") or {}))


def _ping_lost(p: Point) -> str | None:
    loss = p["figures"].get("ping_loss")
    if not isinstance(loss, int | float) or loss != loss:
        return "no ping figures"
    return f"the ping lost {loss:.1%}" if loss > 0 else None


COST = "pmd_cycles_per_packet"
TARGETS = (
    Target("ovsmgr NDR at 5,000 rules / at 0 rules", 0.9, _is_rules_max),
    Target("stateful firewall NDR / plain forwarding", 0.7, _firewall_vs_plain),
    Target("NDR with 100,000 connections / with 100", 0.8, _flows_100k),
    Target("NDR with 100 updates/s / without updates", 0.9, _updates, unmet=_updates_unmet,
           condition="at >= 95 applied/s"),
    Target("  the same from DPDK cycles/packet at a fixed rate: 5,000 rules / 0", 0.9,
           _cost(_is_rules_max), COST, False),
    Target("  the same from DPDK cycles/packet at a fixed rate: firewall / plain", 0.7,
           _cost(_firewall_vs_plain), COST, False),
    Target("  the same from DPDK cycles/packet at a fixed rate: 100,000 / 100", 0.8,
           _cost(_flows_100k), COST, False),
    Target("NAT new connections/s, spread destinations / plain forwarding", 0.5, _nat_cps_spread, "cps"),
    Target("established stream during a one-destination SYN flood / without", 0.9, _flood_one_destination,
           "stream_mbps", unmet=_ping_lost, condition="its ping loses nothing"),
)


def evaluate_targets(points: Sequence[Point]) -> list[dict[str, Any]]:
    """A verdict per matching point; the cost estimates, one per target, over the median of
    all matching fixed-rate points (a sweep has one at every rate)."""
    out = []
    for target in TARGETS:
        matches = [p for p in points if target.select(p)]
        if not target.higher_is_better and matches:
            values = sorted(float(p["ratio"][target.figure]) for p in matches)
            ratio = statistics.median(values)
            out.append({"target": target.name, "threshold": target.threshold, "needed": target.needed,
                        "ratio": ratio, "status": "met" if target.met(ratio) else "missed",
                        "point": matches[0], "summary": f"median of {len(values)} points "
                        f"({values[0]:.2f}x-{values[-1]:.2f}x)"})
            continue
        for p in matches:
            value = (p.get("ratio") or {}).get(target.figure)
            verdict = {"target": target.name, "threshold": target.threshold, "needed": target.needed,
                       "ratio": value, "status": "met" if target.met(value) else "missed", "point": p}
            reason = target.unmet(p) if target.unmet else None
            if reason:
                verdict.update(status="missed", reason=reason)
            out.append(verdict)
        if not matches and target.higher_is_better:
            out.append({"target": target.name, "threshold": target.threshold, "needed": target.needed,
                        "ratio": None, "status": "not measured", "point": None})
    return out


def _describe(p: Point) -> str:
    params = p["params"]
    keys = ("pipeline", "rules", "rule_kind", "flows", "size", "destinations", "flood", "update_rate", "update_kind",
            "datapath")
    return ", ".join(f"{k}={params[k]}" for k in keys if k in params and params[k] is not None)


def _why(p: Point) -> list[str]:
    diag = p.get("diagnostics") or {}
    lines = []
    pmd = diag.get("pmd") or {}
    if pmd:
        shown = {k: pmd[k] for k in ("processing cycles per packet", "emc hits share",
                                     "megaflow hits share", "miss with success upcall",
                                     "packet recirculations") if k in pmd}
        lines.append("datapath (subject): " + ", ".join(f"{k} {_num(v)}" for k, v in shown.items()))
    if "megaflows" in diag:
        lines.append(f"megaflows after the point: {diag['megaflows']}")
    if "softnet_backlog_drops" in diag:
        lines.append(f"softnet backlog drops: {diag['softnet_backlog_drops']}")
    profile = diag.get("profile")
    if isinstance(profile, list) and profile:
        top = ", ".join(f"{e['symbol']} {e['percent']:.1f}%" for e in profile[:6])
        lines.append(f"profile (ovs-vswitchd, top symbols): {top}")
    f = p["figures"]
    if "updates_per_s" in f:
        lines.append(f"updates: {_num(f.get('updates_per_s'))}/s applied of {_num(f.get('update_rate'))}/s "
                     f"requested ({_num(f.get('updates_applied'))} applied, {_num(f.get('updates_failed'))} "
                     f"failed), p50 {_num(f.get('update_latency_p50_ms'))} ms, p99 "
                     f"{_num(f.get('update_latency_p99_ms'))} ms per change; ovs-vswitchd besides the PMD "
                     f"used {_num(f.get('vswitchd_other_cpu_share'))} of a CPU")
    trials = p["figures"].get("trials") or []
    if trials:
        lines.append("trials (offered kpps / loss / CPU share the switch got): " + ", ".join(
            f"{(t.get('offered_pps') or 0) / 1000:.1f}/{_num(t.get('loss'))}/"
            f"{_num(t.get('pmd_cpu_share', t.get('switch_cpu_share')))}" for t in trials))
    return lines


SWEEP_COLUMNS = ("offered_pps", "delivered_pps", "loss", "latency_p50_us", "latency_p99_us", "latency_max_us")


def _table(rows: list[list[str]], header: list[str]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *["| " + " | ".join(r) + " |" for r in rows]]


UPDATE_COLUMNS = ("updates_per_s", "updates_applied", "updates_failed", "update_latency_p50_ms",
                  "update_latency_p99_ms", "update_lag_max_ms", "vswitchd_other_cpu_share")


def _updates_table(points: Sequence[Point]) -> list[str]:
    rows = []
    for p in points:
        f, b = p["figures"], (p.get("baseline") or {}).get("figures", {})
        limited = " (offered < requested: at least this)"
        rows.append([p["params"]["pipeline"], str(p["params"].get("flows")), str(p["params"].get("size")),
                     _num(b.get("ndr_pps")) + (limited if b.get("generator_limited") else ""),
                     _num(f.get("ndr_pps")) + (limited if f.get("generator_limited") else ""),
                     _ratio((p.get("ratio") or {}).get("ndr_pps")),
                     f"{_num(b.get('at_ndr_latency_p99_us'))} / {_num(f.get('at_ndr_latency_p99_us'))}",
                     f"{_num(f.get('update_rate'))} ({f.get('update_kind', NONE)})",
                     *[_num(f.get(c)) for c in UPDATE_COLUMNS], _num(f.get("updates_kept_up"))])
    return _table(rows, ["pipeline", "flows", "bytes", "NDR without updates (pps)", "NDR with updates (pps)",
                         "ratio", "p99 µs at NDR without / with", "updates/s requested", "applied/s",
                         "applied", "failed", "p50 ms", "p99 ms", "max lag ms",
                         "ovs-vswitchd CPU besides the PMD", "kept up"])


def _flood_table(points: Sequence[Point]) -> list[str]:
    rows = []
    for p in points:
        f, b, r = p["figures"], (p.get("baseline") or {}).get("figures", {}), p.get("ratio") or {}
        rows.append([p["params"]["pipeline"], str(p["params"].get("destinations")), p["params"].get("datapath", ""),
                     f"{_num((f.get('flood_offered_pps') or 0) / 1000)} / {_num((f.get('flood_delivered_pps') or 0) / 1000)}",
                     f"{_num(f.get('conntrack_connections'))} ({_num(f.get('port_space_used'))})",
                     f"{_num(b.get('stream_mbps'))} / {_num(f.get('stream_mbps'))}", _ratio(r.get("stream_mbps")),
                     f"{_num(b.get('ping_loss'))} / {_num(f.get('ping_loss'))}",
                     f"{_num(b.get('ping_rtt_p50_ms'))} / {_num(f.get('ping_rtt_p50_ms'))}",
                     f"{_num(b.get('ping_rtt_p99_ms'))} / {_num(f.get('ping_rtt_p99_ms'))}",
                     f"{_num(b.get('pmd_cpu_share', b.get('switch_cpu_share')))} / "
                     f"{_num(f.get('pmd_cpu_share', f.get('switch_cpu_share')))}"])
    return _table(rows, ["pipeline", "destinations", "datapath", "flood kpps offered / delivered",
                         "connections (NAT ports used)", "stream Mbit/s without / with", "ratio",
                         "ping loss without / with", "ping p50 ms", "ping p99 ms", "switch CPU share"])


def _experiment_section(name: str, points: Sequence[Point]) -> list[str]:
    method = points[0]["method"]
    lines = [f"### {name} ({method})", ""]
    if method == "updates":
        return [*lines, *_updates_table(points), ""]
    if method == "flood":
        return [*lines, *_flood_table(points), ""]
    if method == "sweep":
        rows = []
        for p in sorted(points, key=lambda q: (q["params"]["pipeline"], q["params"]["size"],
                                               q["params"]["flows"], q["params"].get("rate_pps", 0))):
            f, b = p["figures"], (p.get("baseline") or {}).get("figures", {})
            rows.append([p["params"]["pipeline"], str(p["params"]["size"]), str(p["params"]["flows"]),
                         *[_num(f.get(c)) for c in SWEEP_COLUMNS], _num(b.get("loss")),
                         _num(b.get("latency_p99_us")), _ratio(p["ratio"].get("delivered_pps"))])
        lines += _table(rows, ["pipeline", "bytes", "flows", "offered pps", "delivered pps", "loss",
                               "p50 µs", "p99 µs", "max µs", "plain loss", "plain p99 µs",
                               "delivered / plain"])
        return [*lines, ""]
    rows = []
    for p in points:
        head = p.get("headline") or "ndr_pps"
        base = p.get("baseline") or {}
        extra = []
        for key in ("pmd_cycles_per_packet", "at_ndr_latency_p99_us", "rr_p50_us", "incremental_s",
                    "updates_per_s", "update_latency_p99_ms", "at_ndr_port_space_used", "max_port_space_used"):
            if key in p["figures"]:
                extra.append(f"{key} {_num(p['figures'][key])}"
                             + (f" ({_ratio(p['ratio'].get(key))})" if key in p.get("ratio", {}) else ""))
        if p["figures"].get("generator_limited"):
            extra.append("offered < requested: NDR is at least this")
        rows.append([_describe(p), f"{head} {_num(p['figures'].get(head))}",
                     f"{base.get('params', {}).get('pipeline', NONE)} "
                     f"{_num(base.get('figures', {}).get(head))}" if base else NONE,
                     _ratio((p.get("ratio") or {}).get(head)), "; ".join(extra)])
    lines += _table(rows, ["point", "figure", "same-run baseline", "ratio", "also"])
    return [*lines, ""]


def render_report(data: Mapping[str, Any], plots: Sequence[Path] = (), base: Path | None = None) -> str:
    points = data.get("points", [])
    env = data.get("environment", {})
    host, versions = env.get("host", {}), env.get("versions", {})
    lines = [f"# ovsmgr bench: {data.get('name')}", ""]
    if data.get("interrupted"):
        lines += ["**Interrupted**: the run was stopped before it finished; these are the points it "
                  "measured.", ""]
    lines += [f"- command: `{' '.join(data.get('command') or [])}`",
              f"- started {data.get('started')}, finished {data.get('finished')}",
              f"- host: {host.get('cpus')} CPUs ({host.get('cpu_model')}), kernel {host.get('kernel')}, "
              f"load average at start {_loads(host.get('load_average'))}, "
              f"at end {_loads(host.get('load_average_end'))}",
              "- versions: " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items())), "",
              "Every headline is a ratio to a baseline measured in the same run, on the same hosts, "
              "alternating with the point (absolute rates are this machine's, not the pipeline's). "
              "\"offered < requested\" marks an NDR found at the first, highest rate, where the "
              "generator (one CPU) or the device's back-pressure kept the offered load below the "
              "request: the device forwarded at least that much without loss.", ""]
    failed = [e for e in data.get("experiments", []) if e.get("status") not in ("done", "running")]
    for exp in failed:
        lines += [f"- experiment **{exp['name']}**: {exp['status']}"
                  + (f": {exp.get('error')}" if exp.get("error") else ""), ""]
    verdicts = evaluate_targets(points)
    lines += ["## Targets", ""]
    rows = [[v["target"], v["needed"], _ratio(v["ratio"]), v["status"],
             v.get("summary") or ((_describe(v["point"]) + (f" ({v['reason']})" if v.get("reason") else ""))
                                  if v["point"] else NONE)] for v in verdicts]
    lines += [*_table(rows, ["target", "needed", "measured", "status", "point"]), ""]
    for v in verdicts:
        if v["status"] == "missed" and not v.get("summary"):
            lines += [f"**Missed: {v['target']}** ({_describe(v['point'])}): {_ratio(v['ratio'])}"
                      + (f"; {v['reason']}" if v.get("reason") else ""), ""]
            lines += [f"- {w}" for w in _why(v["point"])] + [""]
    lines += ["## Results", ""]
    names = list(dict.fromkeys(p["experiment"] for p in points))
    for name in names:
        lines += _experiment_section(name, [p for p in points if p["experiment"] == name])
    if plots:
        lines += ["## Plots", ""]
        for path in plots:
            rel = path.relative_to(base) if base and path.is_relative_to(base) else path
            lines += [f"![{path.stem}]({rel})", ""]
    return "\n".join(lines).rstrip() + "\n"


def _loads(values: Any) -> str:
    return "/".join(f"{v:.2f}" for v in values) if isinstance(values, list) else NONE
