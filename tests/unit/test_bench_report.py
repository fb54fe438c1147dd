"""Results records, the markdown report and its verdicts on the targets, CSV and plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ovsmgr.bench.diagnostics import parse_perf_report
from ovsmgr.bench.plots import write_plots
from ovsmgr.bench.report import NONE, evaluate_targets, render_report
from ovsmgr.bench.results import (
    FORMAT,
    jsonable,
    load_results,
    median_figures,
    point_record,
    ratios,
    write_csv,
)
from ovsmgr.bench.testbed import parse_pmd_stats


def ndr_point(experiment: str, method: str, params: dict[str, Any], ndr: list[float],
              base_params: dict[str, Any] | None, base_ndr: list[float], **diag: Any) -> dict[str, Any]:
    runs = [{"ndr_pps": v, "at_ndr_latency_p99_us": 100.0, "trials": [{"offered_pps": v, "loss": 0}]}
            for v in ndr]
    base = [{"ndr_pps": v, "at_ndr_latency_p99_us": 80.0} for v in base_ndr]
    return point_record(experiment, method, {"measure": "ndr", **params}, runs, base_params, base, "ndr",
                        diag or None)


def results(points: list[dict[str, Any]]) -> dict[str, Any]:
    return {"format": FORMAT, "name": "unit", "started": "t0", "finished": "t1", "interrupted": False,
            "command": ["ovsmgr", "bench", "run", "x.yaml"], "experiments": [{"name": "e", "status": "done"}],
            "environment": {"versions": {"ovsmgr": "0.1.0"}, "host": {"cpus": 2, "load_average": [1, 2, 3]}},
            "points": points}


def test_ratios_pair_repetitions_and_take_medians() -> None:
    point = ndr_point("x", "ndr", {"pipeline": "seed-firewall"}, [70.0, 90.0, 50.0], {"pipeline": "plain"},
                      [100.0, 100.0, 100.0])
    assert point["figures"]["ndr_pps"] == 70.0
    assert point["baseline"]["figures"]["ndr_pps"] == 100.0
    assert point["ratio"]["ndr_pps"] == pytest.approx(0.7)
    assert [r["ratio"]["ndr_pps"] for r in point["repetitions"]] == [0.7, 0.9, 0.5]
    assert point["headline"] == "ndr_pps"


def test_ratio_and_median_helpers_skip_what_is_not_a_number() -> None:
    assert ratios({"a": 2.0, "b": "x", "c": 1.0, "d": True}, {"a": 4.0, "b": "y", "c": 0}) == {"a": 0.5}
    assert median_figures([{"a": 1, "s": "x"}, {"a": 3, "s": "y"}]) == {"a": 2, "s": "x"}
    assert jsonable({"n": float("nan"), "p": Path("/x")}) == {"n": None, "p": "/x"}


POINTS = [
    ndr_point("rules", "rules", {"pipeline": "ovsmgr dport x5000", "system": "ovs", "rules": 5000,
                                 "rule_kind": "dport", "flows": 1000, "size": 64},
              [95.0], {"pipeline": "ovsmgr dport x0"}, [100.0]),
    ndr_point("rules", "rules", {"pipeline": "ovsmgr src x5000", "system": "ovs", "rules": 5000,
                                 "rule_kind": "src", "flows": 1000, "size": 64},
              [60.0], {"pipeline": "ovsmgr src x0"}, [100.0],
              pmd={"processing cycles per packet": 900.0, "emc hits share": 0.1}, megaflows=5000,
              profile=[{"percent": 31.0, "thread": "pmd", "object": "ovs", "symbol": "dpcls_lookup"}]),
    ndr_point("rules", "rules", {"pipeline": "iptables dport x5000", "system": "iptables", "rules": 5000,
                                 "rule_kind": "dport", "flows": 1000, "size": 64},
              [50.0], {"pipeline": "iptables dport x0"}, [100.0]),
    ndr_point("ndr", "ndr", {"pipeline": "seed-firewall", "flows": 100, "size": 64}, [80.0],
              {"pipeline": "plain", "flows": 100}, [100.0]),
]


def test_targets_are_judged_on_same_run_ratios() -> None:
    verdicts = evaluate_targets(POINTS)
    by = {(v["target"], (v["point"] or {}).get("params", {}).get("pipeline")): v["status"] for v in verdicts}
    assert by[("ovsmgr NDR at 5,000 rules / at 0 rules", "ovsmgr dport x5000")] == "met"
    assert by[("ovsmgr NDR at 5,000 rules / at 0 rules", "ovsmgr src x5000")] == "missed"
    assert by[("stateful firewall NDR / plain forwarding", "seed-firewall")] == "met"
    assert by[("NDR with 100,000 connections / with 100", None)] == "not measured"
    assert not [v for v in verdicts if (v["point"] or {}).get("params", {}).get("system") == "iptables"]


def test_the_report_leads_with_ratios_and_explains_misses() -> None:
    text = render_report(results(POINTS))
    assert text.startswith("# ovsmgr bench: unit")
    assert "| ovsmgr NDR at 5,000 rules / at 0 rules | >= 0.9x | 0.95x | met |" in text
    assert "**Missed: ovsmgr NDR at 5,000 rules / at 0 rules**" in text
    assert "processing cycles per packet 900" in text and "dpcls_lookup 31.0%" in text
    assert "megaflows after the point: 5000" in text
    assert "| pipeline=seed-firewall, flows=100, size=64 | ndr_pps 80 | plain 100 | 0.80x |" in text


def test_an_interrupted_run_says_so() -> None:
    data = results(POINTS[:1])
    data["interrupted"] = True
    assert "**Interrupted**" in render_report(data)


def test_sweep_tables_show_latency_and_loss_next_to_plain() -> None:
    runs = [{"offered_pps": 50000.0, "delivered_pps": 49000.0, "loss": 0.02, "latency_p50_us": 40.0,
             "latency_p99_us": 900.0, "latency_max_us": 2000.0}]
    base = [{"offered_pps": 50000.0, "delivered_pps": 50000.0, "loss": 0.0, "latency_p99_us": 300.0}]
    point = point_record("sweep", "sweep", {"pipeline": "seed-nat", "size": 64, "flows": 100,
                                            "rate_pps": 50000.0, "measure": "rate"},
                         runs, {"pipeline": "plain"}, base, "rate")
    text = render_report(results([point]))
    assert "| seed-nat | 64 | 100 | 50,000 | 49,000 | 0.02 | 40 | 900 | 2,000 | 0 | 300 | 0.98x |" in text


def test_csv_has_one_row_per_point_with_baseline_and_ratio(tmp_path: Path) -> None:
    write_csv(results(POINTS), tmp_path / "r.csv")
    rows = (tmp_path / "r.csv").read_text().splitlines()
    assert len(rows) == 1 + len(POINTS)
    header = rows[0].split(",")
    assert {"param_pipeline", "ndr_pps", "baseline", "baseline_ndr_pps", "ratio_ndr_pps"} <= set(header)


def test_results_files_are_checked(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps(results(POINTS)))
    bad.write_text(json.dumps({"format": "something else"}))
    assert load_results(good)["name"] == "unit"
    with pytest.raises(ValueError, match="not an ovsmgr bench results file"):
        load_results(bad)


def test_plots_are_png_files(tmp_path: Path) -> None:
    runs = [{"offered_pps": r, "delivered_pps": r, "loss": 0.0, "latency_p50_us": 40.0,
             "latency_p75_us": 50.0, "latency_p99_us": 90.0, "latency_max_us": 200.0}
            for r in (10000.0, 20000.0)]
    sweep = [point_record("sweep", "sweep", {"pipeline": "seed-firewall", "size": 64, "flows": 100,
                                             "rate_pps": run["offered_pps"], "measure": "rate"},
                          [run], {"pipeline": "plain"}, [run], "rate") for run in runs]
    paths = write_plots(results([*POINTS, *sweep]), tmp_path)
    names = {p.name for p in paths}
    assert "sweep-sweep-100flows-64B.png" in names and "rules-rules-ndr.png" in names
    assert "ndr-ndr.png" in names
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_datapath_statistics_and_profiles_are_parsed() -> None:
    pmd = parse_pmd_stats("""pmd thread numa_id 0 core_id 1:
  packets received: 1000
  packet recirculations: 1000
  emc hits: 1500
  megaflow hits: 500
  miss with success upcall: 2
  processing cycles: 900000 (28.74%)
  avg cycles per packet: 32703.76 (55007688768/1681999)
main thread:
  packets received: 0
""")
    assert pmd["packets received"] == 1000 and pmd["processing cycles per packet"] == 900.0
    assert pmd["emc hits share"] == 0.75 and "avg cycles per packet" not in pmd
    report = parse_perf_report("""# Overhead  Command  Shared Object  Symbol
    31.20%  pmd-c01/id:8  ovs-vswitchd-dpdk  [.] dpcls_subtable_lookup_generic
     5.00%  pmd-c01/id:8  [kernel.kallsyms]  [k] __memcpy
""")
    assert report[0] == {"percent": 31.2, "thread": "pmd-c01/id:8", "object": "ovs-vswitchd-dpdk",
                         "symbol": "dpcls_subtable_lookup_generic"}
    assert len(report) == 2


def test_every_method_gets_its_plot(tmp_path: Path) -> None:
    flows = [ndr_point("flows", "flows", {"pipeline": "seed-firewall", "flows": f, "size": 64}, [90.0],
                       {"pipeline": "seed-firewall", "flows": 100}, [100.0]) for f in (1000, 100_000)]
    tcp = point_record("tcp", "tcp", {"pipeline": "seed-nat", "measure": "tcp"},
                       [{"tcp_gbps": 0.5, "rr_p50_us": 90.0}], {"pipeline": "plain"},
                       [{"tcp_gbps": 0.7, "rr_p50_us": 60.0}], "tcp")
    cps = point_record("cps", "cps", {"pipeline": "seed-firewall", "measure": "cps", "size": 64},
                       [{"cps": 20000.0}], {"pipeline": "plain"}, [{"cps": 90000.0}], "cps")
    control = [point_record("control", "control", {"pipeline": f"ovsmgr dport x{n}", "rules": n,
                                                   "rule_kind": "dport", "measure": "control"},
                            [{"apply_s": n / 1000, "incremental_s": 0.2}],
                            {"pipeline": "ovs-ofctl --bundle add-flows"},
                            [{"apply_s": n / 5000, "incremental_s": 0.05}], "control") for n in (100, 1000)]
    data = results([*flows, tcp, cps, *control])
    names = {p.name for p in write_plots(data, tmp_path)}
    assert names == {"flows-flows.png", "tcp-tcp.png", "cps-cps.png", "control-control.png"}
    text = render_report(data)
    assert "| NDR with 100,000 connections / with 100 | >= 0.8x | 0.90x | met |" in text
    assert "apply_s 1 | ovs-ofctl --bundle add-flows 0.2 | 5.00x" in text


def updates_point(ndr: float, base_ndr: float, **updates: Any) -> dict[str, Any]:
    figures = {"ndr_pps": ndr, "update_rate": 100.0, "update_kind": "mixed", "updates_per_s": 99.0,
               "updates_applied": 3000, "updates_failed": 0, "update_latency_p50_ms": 6.0,
               "update_latency_p99_ms": 9.0, "update_lag_max_ms": 12.0, "updates_kept_up": True,
               "vswitchd_other_cpu_share": 0.1, "trials": [{"offered_pps": ndr, "loss": 0, "updates_per_s": 99}]}
    figures.update(updates)
    params = {"pipeline": "seed-firewall+blocklist", "measure": "ndr", "flows": 1000, "size": 64}
    return point_record("updates", "updates", {**params, "update_rate": 100.0, "update_kind": "mixed"},
                        [figures], {**params, "update_rate": 0.0}, [{"ndr_pps": base_ndr}], "ndr")


def test_the_updates_target_needs_the_ratio_and_the_rate_really_applied() -> None:
    target = "NDR with 100 updates/s / without updates"

    def verdict(point: dict[str, Any]) -> dict[str, Any]:
        return next(v for v in evaluate_targets([point]) if v["target"] == target)

    assert verdict(updates_point(95.0, 100.0))["status"] == "met"
    assert verdict(updates_point(80.0, 100.0))["status"] == "missed"
    slow = verdict(updates_point(99.0, 100.0, updates_per_s=38.5, updates_kept_up=False))
    assert slow["status"] == "missed" and "applied 38.5 changes/s of 100 requested" in slow["reason"]
    failing = verdict(updates_point(99.0, 100.0, updates_failed=3))
    assert failing["status"] == "missed" and failing["reason"] == "3 changes failed"
    assert next(v for v in evaluate_targets(POINTS) if v["target"] == target)["status"] == "not measured"
    # another rate is measured and shown, but it is not the target's point
    other = updates_point(95.0, 100.0)
    other["params"]["update_rate"] = 50.0
    assert verdict(other)["status"] == "not measured"


def test_the_report_and_plot_show_updates_next_to_the_ndr(tmp_path: Path) -> None:
    data = results([updates_point(90.0, 100.0), updates_point(99.0, 100.0, updates_per_s=38.5)])
    text = render_report(data)
    assert "| NDR with 100 updates/s / without updates | >= 0.9x, at >= 95 applied/s | 0.90x | met |" in text
    assert f"| seed-firewall+blocklist | 1000 | 64 | 100 | 90 | 0.90x | {NONE} / {NONE} | 100 (mixed) | 99 | 3,000 | 0 |" in text
    assert "update_rate=100.0" in text and "applied 38.5 changes/s of 100 requested" in text
    assert "updates: 38.5/s applied of 100/s requested" in text  # under the missed target
    assert {p.name for p in write_plots(data, tmp_path)} == {"updates-updates.png"}
