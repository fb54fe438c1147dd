"""`ovsmgr bench run --smoke --out DIR` end to end: the harness works; speed is never judged.

Runs the real thing (a netdev lab, a Linux router namespace, trafgen, the probes,
iperf3, ovs-ofctl) for well under a minute and checks the shape of what it wrote:
every point has its parameters, figures, same-run baseline and ratio; versions and
host facts are recorded; the plots are PNG files; the report has the targets table.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

TOOLS = ("ovs-vswitchd", "trafgen", "iperf3", "tc", "nft", "iptables-legacy", "ipset", "taskset")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:  # type: ignore[type-arg]
    if os.geteuid() != 0:
        pytest.skip("bench needs root")
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        pytest.skip(f"missing {', '.join(missing)} (scripts/install)")
    out = tmp_path_factory.mktemp("bench") / "smoke"
    (out.parent / "namespaces-before").write_text("\n".join(_bench_namespaces()))
    (out.parent / "tmp").mkdir()  # the run's own temporary directory: what it leaves there is seen
    ovsmgr = [sys.executable, "-c", "import sys; from ovsmgr.cli import main; sys.exit(main())"]
    proc = subprocess.run([*ovsmgr, "bench", "run", "--smoke", "--out", str(out)],
                          capture_output=True, text=True, timeout=240, check=False,
                          env={**os.environ, "TMPDIR": str(out.parent / "tmp")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, json.loads((out / "results.json").read_text())


def test_every_point_has_parameters_figures_baseline_and_ratio(smoke_run: tuple[Path, dict]) -> None:  # type: ignore[type-arg]
    _, data = smoke_run
    assert data["format"] == "ovsmgr-bench/1" and data["interrupted"] is False
    assert {e["name"]: e["status"] for e in data["experiments"]} == {
        "sweep": "done", "ndr": "done", "rules": "done", "control": "done", "updates": "done", "flood": "done"}
    methods = {p["method"] for p in data["points"]}
    assert methods == {"sweep", "ndr", "rules", "control", "updates", "flood"}
    for point in data["points"]:
        assert point["params"]["pipeline"] and point["figures"]
        assert point["headline"] in point["figures"]
        if point["baseline"] is None:
            continue  # plain Linux forwarding is a reference of its own
        assert point["baseline"]["params"]["pipeline"] and point["baseline"]["figures"]
        assert point["headline"] in point["ratio"] or point["baseline"]["figures"][point["headline"]] == 0
        for rep in point["repetitions"]:
            assert {"figures", "baseline", "ratio"} <= set(rep)


def test_the_measures_of_each_method_are_there(smoke_run: tuple[Path, dict]) -> None:  # type: ignore[type-arg]
    _, data = smoke_run
    by_method = {p["method"]: p for p in data["points"]}
    sweep = by_method["sweep"]["figures"]
    for key in ("offered_pps", "delivered_pps", "loss", "latency_p50_us", "latency_p75_us",
                "latency_p99_us", "latency_max_us", "probe_loss"):
        assert key in sweep
    assert "ndr_pps" in by_method["ndr"]["figures"] and by_method["ndr"]["figures"]["trials"]
    assert by_method["ndr"]["baseline"]["params"]["pipeline"] == "plain"
    tcp = [p for p in data["points"] if p["params"].get("measure") == "tcp"]
    assert tcp and all({"tcp_gbps", "rr_tps", "rr_p50_us"} <= set(p["figures"]) for p in tcp)
    systems = {p["params"]["system"] for p in data["points"] if p["method"] == "rules"}
    assert systems == {"ovs", "iptables"}
    control = by_method["control"]
    assert {"compile_s", "apply_s", "incremental_s", "flows_per_s"} <= set(control["figures"])
    assert control["baseline"]["params"]["pipeline"].startswith("ovs-ofctl")


def test_updates_were_applied_on_the_switch_while_the_load_ran(smoke_run: tuple[Path, dict]) -> None:  # type: ignore[type-arg]
    """The figures are there and the changes reached the switch; how fast is never judged."""
    _, data = smoke_run
    point = next(p for p in data["points"] if p["method"] == "updates")
    assert point["params"]["pipeline"] == "seed-firewall+blocklist" and point["params"]["update_rate"] == 100
    assert point["baseline"]["params"]["update_rate"] == 0
    assert "ndr_pps" in point["baseline"]["figures"] and "ndr_pps" in point["figures"]
    f = point["figures"]
    for key in ("updates_requested", "updates_applied", "updates_failed", "updates_per_s",
                "update_latency_p50_ms", "update_latency_p99_ms", "updates_kept_up", "update_flow_mods"):
        assert key in f, key
    assert f["updates_applied"] > 0 and f["updates_failed"] == 0
    assert f["update_flow_mods"] >= f["updates_applied"]  # every change moved at least one flow
    cycle = f["verified_cycle"]
    assert cycle["steps"] == ["add", "disable", "enable", "remove"]
    counts = cycle["switch_flows"]
    assert counts[0] == counts[-1] and all(a != b for a, b in itertools.pairwise(counts))
    assert f["switch_agrees"] is True and f["reconcile_flow_mods"] == 0
    assert all("updates_per_s" in t for t in f["trials"])
    assert not any("updates_per_s" in t for t in point["baseline"]["figures"].get("trials", []))


def test_the_flood_ran_beside_an_established_stream_and_a_ping(smoke_run: tuple[Path, dict]) -> None:  # type: ignore[type-arg]
    """Both trials carried the stream and the ping; the subject's flood reached the switch and its
    NAT rule's meter (bench-only) held it back. What the flood cost is never judged."""
    _, data = smoke_run
    point = next(p for p in data["points"] if p["method"] == "flood")
    assert point["params"]["pipeline"] == "seed-nat+meter syn 1000/s"
    assert point["params"]["flood"] == "5kpps" and point["baseline"]["params"]["flood"] == "none"
    for figures in (point["figures"], point["baseline"]["figures"]):
        assert figures["stream_mbps"] > 0 and figures["stream_window_s"] > 0
        assert figures["ping_sent"] > 0 and 0 <= figures["ping_loss"] <= 1
    f = point["figures"]
    assert f["flood_offered_pps"] > 1000, "the flood was sent"
    assert 0 < f["flood_delivered_pps"] < f["flood_offered_pps"], "the meter dropped part of it"
    assert f["conntrack_connections"] >= 2 and 0 < f["port_space_used"] < 1
    assert point["baseline"]["figures"]["flood_delivered_pps"] == 0


def test_versions_and_host_facts_are_recorded(smoke_run: tuple[Path, dict]) -> None:  # type: ignore[type-arg]
    _, data = smoke_run
    versions = data["environment"]["versions"]
    for tool in ("ovsmgr", "ovs-vswitchd", "trafgen", "iperf3", "python"):
        assert versions.get(tool), tool
    host = data["environment"]["host"]
    assert host["cpus"] and host["kernel"] and "load_average" in host
    assert data["spec"]["name"] == "smoke"


def test_csv_plots_and_report(smoke_run: tuple[Path, dict]) -> None:  # type: ignore[type-arg]
    out, data = smoke_run
    rows = (out / "results.csv").read_text().splitlines()
    assert len(rows) == len(data["points"]) + 1 and "ratio_" in rows[0]
    plots = sorted((out / "plots").glob("*.png"))
    assert plots
    for png in plots:
        assert png.read_bytes()[:8] == PNG_MAGIC, png
    report = (out / "report.md").read_text()
    assert "## Targets" in report and "stateful firewall NDR / plain forwarding" in report
    assert "NDR with 100 updates/s / without updates" in report
    assert (out / "plots" / "updates-updates.png").exists()
    assert (out / "plots" / "flood-flood.png").exists()
    assert "established stream during a one-destination SYN flood / without" in report
    assert "![" in report


def _bench_namespaces() -> list[str]:
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                                check=False).stdout.split()
    return [n for n in namespaces if n.startswith("ob") and len(n.split("-")[0]) == 8]


def test_nothing_is_left_behind(smoke_run: tuple[Path, dict]) -> None:  # type: ignore[type-arg]
    """Only this run's namespaces count: another bench (or one killed earlier) may have its own."""
    before = set((smoke_run[0].parent / "namespaces-before").read_text().split())
    ours = [n for n in _bench_namespaces() if n not in before]
    assert not ours, f"bench namespaces left behind: {ours}"
    left = sorted(p.name for p in (smoke_run[0].parent / "tmp").iterdir())
    assert not left, f"temporary files left behind: {left}"
