"""A shadow rule on a real switch: it counts and logs live traffic that passes untouched; one key enforces it.

policies/gateway.yaml has `try-no-plain-http` (lan to wan, tcp/80, drop, log, shadow) above `lan-out`,
which allows web traffic and masquerades it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ovsmgr.cli.lab_probe import probe_once
from ovsmgr.lab.netns import free_port
from ovsmgr.lab.ovs import LabPort

from .controller_helpers import controller, eventually, scrape

pytestmark = pytest.mark.integration

POLICIES = Path(__file__).resolve().parents[2] / "policies"
HOSTS = (LabPort("lan0", 1, "10.0.0.5/24"), LabPort("dmz0", 2, "10.0.1.10/24"), LabPort("wan0", 3, "198.51.100.9/24"))
RULE = "try-no-plain-http"


def _shadow_packets(metrics: str) -> float:
    samples = scrape(metrics).get("ovsmgr_rule_packets_total", [])
    return sum(v for labels, v in samples if labels["rule"] == RULE and labels["kind"] == "shadow")


def test_the_shadow_rule_counts_and_logs_passing_traffic_and_a_flip_enforces_it(lab_factory, tmp_path):
    lab = lab_factory(HOSTS)
    policy = tmp_path / "gateway.yaml"
    text = (POLICIES / "gateway.yaml").read_text()
    policy.write_text(text)
    metrics = f"127.0.0.1:{free_port()}"
    match_log = tmp_path / "matches.jsonl"
    extra = ["--metrics", metrics, "--match-log", str(match_log)]
    with controller(lab, [policy], tmp_path, extra) as ctl:
        lab.announce()
        assert _shadow_packets(metrics) == 0
        print(f"before: ovsmgr_rule_packets_total{{rule={RULE!r},kind='shadow'}} = 0")
        for _ in range(3):
            out = probe_once(lab, "lan0", "wan0", "tcp/80", None, None, 3.0)
            assert out["passed"] and out["seen_as"].startswith("200.200.200.200:"), out  # untouched: lan-out + SNAT
        # each connection's first packet met FILTER (and the shadow flow); the rest passed as established
        assert eventually(lambda: _shadow_packets(metrics) >= 3, 10), scrape(metrics)
        assert _shadow_packets(metrics) <= 6, "more than the SYNs (and a retransmission each) were counted"
        assert probe_once(lab, "lan0", "wan0", "tcp/443", None, None, 3.0)["passed"]
        counted = _shadow_packets(metrics)
        assert counted <= 6, "tcp/443 is not the shadow rule's"
        print(f"after 3 tcp/80 connections that passed (SNAT to 200.200.200.200) and one tcp/443: "
              f"ovsmgr_rule_packets_total{{rule={RULE!r},kind='shadow'}} = {counted:g}")

        logged = [json.loads(line) for line in match_log.read_text().splitlines()]
        ours = [line for line in logged if line["rule"] == RULE]
        assert len(ours) >= 3 and all(line["shadow"] is True and line["dport"] == 80 for line in ours), logged

        status = json.loads(ctl.cli("status", "br0", "-o", "json").stdout)
        assert [r["rule"] for r in status["shadow_rules"]] == [RULE]
        assert status["shadow_rules"][0]["packets"] >= 3
        print("status:", status["shadow_rules"], "| a match log line:", ours[0])

        generation = ctl.api().call("GET", "/v1/status")["generation"]
        policy.write_text(text.replace("      shadow: true\n", ""))  # the flip: now it is enforced
        assert eventually(lambda: ctl.api().call("GET", "/v1/status")["generation"] > generation, 15), ctl.log()
        assert not probe_once(lab, "lan0", "wan0", "tcp/80", None, None, 2.0)["passed"]
        assert probe_once(lab, "lan0", "wan0", "tcp/443", None, None, 3.0)["passed"]
        assert json.loads(ctl.cli("status", "br0", "-o", "json").stdout)["shadow_rules"] == []
