"""packaging/grafana/ovsmgr.json against a live controller on a real lab switch: every expression
names metrics the controller exports, with labels they carry."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest

from ovsmgr.cli.lab_probe import probe_once
from ovsmgr.lab.netns import free_port
from ovsmgr.lab.ovs import LabPort

from .controller_helpers import controller, scrape

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "packaging" / "grafana" / "ovsmgr.json"
HOSTS = (LabPort("lan0", 1, "10.0.0.5/24"), LabPort("dmz0", 2, "10.0.1.10/24"), LabPort("wan0", 3, "198.51.100.9/24"))
METRIC = re.compile(r"\bovsmgr_[a-z0-9_]+")
SELECTOR = re.compile(r"(ovsmgr_[a-z0-9_]+)\{([^}]*)\}")
GROUPING = re.compile(r"\bby \(([^)]*)\)")
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def expressions(dashboard: dict[str, Any]) -> list[str]:
    out = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    out += [v["definition"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return out


def exported(metrics: str) -> tuple[set[str], dict[str, set[str]]]:
    """Every series name the endpoint serves (also of families without samples yet), and the label
    names each name's samples carry."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://{metrics}/metrics", timeout=10) as response:
        families = list(text_string_to_metric_families(response.read().decode()))
    names: set[str] = set()
    labels: dict[str, set[str]] = {}
    for family in families:
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ("",)))
        for sample in family.samples:
            names.add(sample.name)
            labels.setdefault(sample.name, set()).update(sample.labels)
    return names, labels


def test_every_dashboard_expression_names_metrics_a_live_controller_exports(lab_factory, tmp_path):
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = expressions(dashboard)
    assert len(exprs) >= 20
    lab = lab_factory(HOSTS)
    metrics = f"127.0.0.1:{free_port()}"
    with controller(lab, [ROOT / "policies" / "gateway.yaml"], tmp_path, ["--metrics", metrics]) as ctl:
        lab.announce()
        assert probe_once(lab, "lan0", "wan0", "tcp/443", None, None, 3.0)["passed"]  # firewall + NAT
        assert probe_once(lab, "lan0", "wan0", "tcp/80", None, None, 3.0)["passed"]  # shadow rule
        assert not probe_once(lab, "lan0", "wan0", "tcp/25", None, None, 1.0)["passed"]  # default drop
        ctl.cli("rule", "disable", "dmz-updates")  # a runtime change: the latency histogram
        time.sleep(1)  # --stats-interval 0.5: the next scrape fetches fresh flow statistics
        names, labels = exported(metrics)
        samples = scrape(metrics)
    for kind in ("firewall", "nat", "shadow", "default"):
        assert any(lb["kind"] == kind for lb, _ in samples["ovsmgr_rule_packets_total"]), kind
    assert any(v > 0 for _, v in samples["ovsmgr_dropped_packets_total"])
    assert any(lb["rule"] == "masquerade" and v > 0 for lb, v in samples["ovsmgr_nat_rule_packets_total"])
    assert samples["ovsmgr_change_duration_seconds_count"][0][1] >= 1
    checked: set[str] = set()
    for expr in exprs:
        used = set(METRIC.findall(expr))
        assert used, f"names no ovsmgr metric: {expr}"
        missing = used - names
        assert not missing, f"{expr}: not exported: {sorted(missing)} (exported: {sorted(names)})"
        for name, selector in SELECTOR.findall(expr):  # labels of the metrics that have samples here
            keys = {part.split("=")[0].strip() for part in selector.split(",") if part.strip()}
            assert name not in labels or keys <= labels[name], f"{expr}: {name} has no label {keys - labels[name]}"
        sampled = [labels[name] for name in used if name in labels]
        for group in GROUPING.findall(expr):
            keys = {k.strip() for k in group.split(",")} - {"le"}
            assert not sampled or any(keys <= have for have in sampled), f"{expr}: no metric has {keys}"
        checked |= used
    print("dashboard metrics checked:", " ".join(sorted(checked)))
