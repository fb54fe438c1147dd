"""Results of a run: points with their same-run baselines, environment facts, JSON and CSV.

``results.json`` (format ``ovsmgr-bench/1``)::

    {"format": ..., "name": ..., "started": ..., "finished": ..., "interrupted": false,
     "command": [...], "spec": {...}, "environment": {"versions": {...}, "host": {...}},
     "experiments": [{"name", "method", "status", "error", "settings": {...}}],
     "points": [{"experiment", "method", "params": {...}, "figures": {...},
                 "baseline": {"params": {...}, "figures": {...}} | null,
                 "ratio": {...}, "headline": "ndr_pps", "repetitions": [...], "diagnostics": {...}}]}

``figures`` and ``baseline.figures`` are medians over the repetitions; ``ratio``
holds, for every figure both have, the median of the per-repetition ratios
subject/baseline (each from measurements taken back to back). The file is
rewritten after every point, so an interrupted run keeps what it measured.
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from ovsmgr import __version__
from ovsmgr.switch.statefile import atomic_write

FORMAT = "ovsmgr-bench/1"
HEADLINE = {"rate": "delivered_pps", "ndr": "ndr_pps", "tcp": "tcp_gbps", "cps": "cps", "flood": "stream_mbps",
            "control": "apply_s"}
VERSION_COMMANDS = {
    "ovs-vswitchd": ["ovs-vswitchd", "--version"],
    "ovs-vswitchd-dpdk": ["/usr/lib/openvswitch-switch-dpdk/ovs-vswitchd-dpdk", "--version"],
    "trafgen": ["trafgen", "--version"],
    "iperf3": ["iperf3", "--version"],
    "iptables": ["iptables-legacy", "--version"],
    "iptables-nft": ["iptables-nft", "--version"],
    "ipset": ["ipset", "--version"],
    "nft": ["nft", "--version"],
    "tc": ["tc", "-V"],
    "perf": ["perf", "--version"],
}
DEBIAN_PACKAGES = ("openvswitch-switch", "openvswitch-switch-dpdk", "dpdk", "netsniff-ng", "iperf3",
                   "iptables", "ipset", "nftables", "iproute2", "linux-perf")


def _first_line(argv: Sequence[str]) -> str | None:
    if shutil.which(argv[0]) is None and not os.access(argv[0], os.X_OK):
        return None
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (proc.stdout or proc.stderr).strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    dpdk = next((ln for ln in lines if "DPDK" in ln), None)
    first = lines[0] if lines else None
    return f"{first}; {dpdk}" if dpdk and dpdk != first else first


def _package_versions() -> dict[str, str]:
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f", "${Package} ${Version}\\n", *DEBIAN_PACKAGES],
                             capture_output=True, text=True, timeout=10, check=False).stdout
    except OSError:
        return {}
    return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)


def environment() -> dict[str, Any]:
    """Tool and package versions and host facts, recorded with every run."""
    versions = {name: v for name, argv in VERSION_COMMANDS.items() if (v := _first_line(argv))}
    versions["ovsmgr"] = __version__
    versions["python"] = sys.version.split()[0]
    try:
        import matplotlib

        versions["matplotlib"] = matplotlib.__version__
    except ImportError:
        pass
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"^model name\s*:\s*(.*)$", cpuinfo, re.MULTILINE)
    meminfo = Path("/proc/meminfo").read_text() if Path("/proc/meminfo").exists() else ""
    mem = re.search(r"^MemTotal:\s*(\d+)", meminfo, re.MULTILINE)
    huge = re.search(r"^HugePages_Total:\s*(\d+)", meminfo, re.MULTILINE)
    return {
        "versions": versions,
        "packages": _package_versions(),
        "host": {
            "hostname": platform.node(), "kernel": platform.release(), "machine": platform.machine(),
            "cpus": os.cpu_count(), "cpu_model": model[1].strip() if model else None,
            "memory_mb": int(mem[1]) // 1024 if mem else None,
            "hugepages": int(huge[1]) if huge else None,
            "load_average": list(os.getloadavg()),
            "generator_cpu": 0, "switch_cpu": 1,
        },
    }


def jsonable(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return jsonable(asdict(value))
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def median_figures(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per key, the median of the numeric values over repetitions (others: the first value)."""
    out: dict[str, Any] = {}
    for key in dict.fromkeys(k for run in runs for k in run):
        values = [run[key] for run in runs if key in run]
        numbers = [float(v) for v in values if isinstance(v, int | float) and not isinstance(v, bool)
                   and not (isinstance(v, float) and math.isnan(v))]
        if numbers and len(numbers) == len(values):
            out[key] = round(statistics.median(numbers), 6)
        else:
            out[key] = values[0]
    return out


def ratios(subject: Mapping[str, Any], baseline: Mapping[str, Any]) -> dict[str, float]:
    """subject/baseline for every numeric figure both have (baseline not 0)."""
    out = {}
    for key, value in subject.items():
        base = baseline.get(key)
        if (isinstance(value, int | float) and isinstance(base, int | float) and not isinstance(value, bool)
                and base and not math.isnan(float(base)) and not math.isnan(float(value))):
            out[key] = round(float(value) / float(base), 4)
    return out


def point_record(experiment: str, method: str, params: dict[str, Any], runs: list[dict[str, Any]],
                 baseline_params: dict[str, Any] | None, baseline_runs: list[dict[str, Any]],
                 measure: str, diagnostics: dict[str, Any] | None = None) -> dict[str, Any]:
    figures = median_figures(runs)
    record: dict[str, Any] = {"experiment": experiment, "method": method, "params": params,
                              "figures": figures, "headline": HEADLINE.get(measure), "baseline": None,
                              "ratio": {}, "repetitions": []}
    for i, run in enumerate(runs):
        rep: dict[str, Any] = {"figures": run}
        if i < len(baseline_runs):
            rep["baseline"] = baseline_runs[i]
            rep["ratio"] = ratios(run, baseline_runs[i])
        record["repetitions"].append(rep)
    if baseline_params is not None and baseline_runs:
        record["baseline"] = {"params": baseline_params, "figures": median_figures(baseline_runs)}
        per_rep = [r["ratio"] for r in record["repetitions"] if "ratio" in r]
        record["ratio"] = median_figures(per_rep) if per_rep else {}
    if diagnostics:
        record["diagnostics"] = diagnostics
    return record


class Results:
    """The run's results file, rewritten after every point."""

    def __init__(self, out_dir: Path, name: str, spec: dict[str, Any], command: list[str]):
        self.out_dir = out_dir
        self.data: dict[str, Any] = {
            "format": FORMAT, "name": name, "started": _now(), "finished": None, "interrupted": False,
            "command": command, "spec": spec, "environment": environment(), "experiments": [],
            "points": [],
        }

    @property
    def path(self) -> Path:
        return self.out_dir / "results.json"

    def experiment(self, record: dict[str, Any]) -> dict[str, Any]:
        self.data["experiments"].append(record)
        self.save()
        return record

    def add_point(self, record: dict[str, Any]) -> None:
        self.data["points"].append(record)
        self.save()

    def finish(self, interrupted: bool) -> None:
        self.data["finished"] = _now()
        self.data["interrupted"] = interrupted
        self.data["environment"]["host"]["load_average_end"] = list(os.getloadavg())
        self.save()
        write_csv(self.data, self.out_dir / "results.csv")

    def save(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, json.dumps(jsonable(self.data), indent=1))


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def flat_row(point: Mapping[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {"experiment": point["experiment"], "method": point["method"]}
    row.update({f"param_{k}": v for k, v in point["params"].items()})
    scalar = {k: v for k, v in point["figures"].items() if not isinstance(v, list | dict)}
    row.update(scalar)
    base = point.get("baseline") or {}
    row["baseline"] = (base.get("params") or {}).get("pipeline", "")
    row.update({f"baseline_{k}": v for k, v in (base.get("figures") or {}).items()
                if not isinstance(v, list | dict)})
    row.update({f"ratio_{k}": v for k, v in (point.get("ratio") or {}).items()})
    return row


def write_csv(data: Mapping[str, Any], path: Path) -> None:
    rows = [flat_row(p) for p in data.get("points", [])]
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: jsonable(v) for k, v in row.items()})


def load_results(path: str | Path) -> dict[str, Any]:
    data = json.loads(Path(path).read_text())
    if data.get("format") != FORMAT:
        raise ValueError(f"{path}: not an ovsmgr bench results file (format {data.get('format')!r})")
    return dict(data)
