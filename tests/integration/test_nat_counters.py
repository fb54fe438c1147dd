"""Per-NAT-rule counters with real traffic: policies/gateway.yaml's masquerade (SNAT, lan0 to
wan0) and web-forward (DNAT, wan0 to 200.200.200.200:8080, to the DMZ host's port 80).

Each UDP request/response through the masquerade is one connection of exactly two packets (the
request and the answer), so its packets and connections are known exactly; TCP through the
forward adds the handshake, data and teardown (at least five packets a connection). Each
rule's numbers must move by what went through it and the other rule's must stay where they
were, in `ovsmgr status` (apply) and in the controller's metrics. The zone keeps answered UDP
and closed TCP connections for an hour (`conntrack.timeouts`), so the connection counts do not
depend on how fast the test runs.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from click.testing import CliRunner

from ovsmgr.cli import main
from ovsmgr.lab.netns import free_port
from ovsmgr.lab.ovs import Lab, LabPort

from .controller_helpers import controller, eventually, scrape
from .switch import POLICIES, apply, compiled_text, settle_flow_stats
from .traffic import converse, server

pytestmark = pytest.mark.integration

HOSTS = (LabPort("lan0", 1, "10.0.0.5/24"), LabPort("dmz0", 2, "10.0.1.10/24"), LabPort("wan0", 3, "198.51.100.9/24"))
WAN, PUBLIC = "198.51.100.9", "200.200.200.200"
UDP_CONNECTIONS, TCP_CONNECTIONS = 5, 3
KEEP = ", ".join(f"{key}: 3600" for key in ("udp_first", "udp_single", "udp_multiple", "tcp_fin_wait",
                                             "tcp_close_wait", "tcp_last_ack", "tcp_time_wait", "tcp_close"))
POLICY = (POLICIES / "gateway.yaml").read_text().replace("\nconntrack:\n", f"\nconntrack:\n  timeouts: {{{KEEP}}}\n", 1)


def _status(lab: Lab) -> dict[str, Any]:
    result = CliRunner().invoke(main, ["status", "br0", "--db", lab.db_endpoint, "-o", "json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return dict(json.loads(result.output))


def _rules(lab: Lab) -> dict[str, dict[str, Any]]:
    settle_flow_stats(lab)  # every packet sent so far counted
    return {row["rule"]: row for row in _status(lab)["nat_rules"]}


def _masquerade(lab: Lab, count: int) -> None:
    with server(lab, "wan0", "udp", 53, timeout=60):
        for _ in range(count):  # a fresh source port each: one connection each
            out = converse(lab, "lan0", "udp", WAN, 53)
            assert out["ok"] and out["seen_as"] == PUBLIC, out


def _forward(lab: Lab, count: int) -> None:
    with server(lab, "dmz0", "tcp", 80, timeout=60):
        for _ in range(count):
            out = converse(lab, "wan0", "tcp", PUBLIC, 8080)
            assert out["ok"] and out["seen_as"] == WAN, out


def test_status_counts_packets_and_connections_of_the_rule_that_translated_them(lab_factory):
    lab = lab_factory(HOSTS)
    assert "timeouts" in POLICY
    apply(lab, compiled_text(POLICY))
    lab.announce()
    before = _rules(lab)
    assert set(before) == {"masquerade", "web-forward"}
    assert all(row["packets"] == 0 and row["connections"] == 0 for row in before.values()), before

    _masquerade(lab, UDP_CONNECTIONS)
    after_snat = _rules(lab)
    masq = after_snat["masquerade"]
    assert masq["packets"] == 2 * UDP_CONNECTIONS, masq  # each request and its answer, nothing else
    assert masq["bytes"] > 2 * UDP_CONNECTIONS * 28  # IP and UDP headers at least
    assert masq["connections"] == UDP_CONNECTIONS, masq
    assert after_snat["web-forward"] == before["web-forward"], "the DNAT rule counted SNAT traffic"

    _forward(lab, TCP_CONNECTIONS)
    after_dnat = _rules(lab)
    forward = after_dnat["web-forward"]
    assert forward["packets"] >= 5 * TCP_CONNECTIONS, forward  # handshake, request, answer at least
    assert forward["connections"] == TCP_CONNECTIONS, forward  # closed, kept by the timeouts
    assert after_dnat["masquerade"] == masq, "the SNAT rule counted DNAT traffic"

    text = CliRunner().invoke(main, ["status", "br0", "--db", lab.db_endpoint], catch_exceptions=False).output
    print(text)
    header = next(line for line in text.splitlines() if "NAT rule" in line)
    assert header.split() == ["NAT", "rule", "packets", "bytes", "connections"], text
    row = next(line for line in text.splitlines() if line.split()[:1] == ["masquerade"])
    assert row.split()[1:] == [str(masq["packets"]), str(masq["bytes"]), str(UDP_CONNECTIONS)], text


def _nat_samples(metrics: str) -> dict[str, dict[str, float]]:
    """metric -> rule -> value, for the ovsmgr_nat_rule_* metrics."""
    samples = scrape(metrics)
    return {name: {labels["rule"]: value for labels, value in samples.get(name, [])}
            for name in ("ovsmgr_nat_rule_packets_total", "ovsmgr_nat_rule_bytes_total",
                         "ovsmgr_nat_rule_connections")}


def test_controller_metrics_move_for_the_right_nat_rule_only(lab_factory, tmp_path):
    lab = lab_factory(HOSTS)
    metrics = f"127.0.0.1:{free_port()}"
    path = tmp_path / "gateway.yaml"
    path.write_text(POLICY)
    with controller(lab, [path], tmp_path, ["--metrics", metrics]):
        lab.announce()
        before = _nat_samples(metrics)
        assert before["ovsmgr_nat_rule_packets_total"] == {"masquerade": 0, "web-forward": 0}, before
        assert before["ovsmgr_nat_rule_connections"] == {"masquerade": 0, "web-forward": 0}, before

        _masquerade(lab, UDP_CONNECTIONS)
        settle_flow_stats(lab)
        time.sleep(1)  # --stats-interval 0.5: the next scrape asks the switch for fresh statistics
        snat = eventually(lambda: (s := _nat_samples(metrics))["ovsmgr_nat_rule_packets_total"]["masquerade"]
                          == 2 * UDP_CONNECTIONS and s, timeout=10)
        assert snat, _nat_samples(metrics)
        assert snat["ovsmgr_nat_rule_connections"]["masquerade"] == UDP_CONNECTIONS, snat
        assert snat["ovsmgr_nat_rule_packets_total"]["web-forward"] == 0, snat
        assert snat["ovsmgr_nat_rule_connections"]["web-forward"] == 0, snat

        _forward(lab, TCP_CONNECTIONS)
        settle_flow_stats(lab)
        time.sleep(1)
        dnat = eventually(lambda: (s := _nat_samples(metrics))["ovsmgr_nat_rule_connections"]["web-forward"]
                          == TCP_CONNECTIONS and s, timeout=10)
        assert dnat, _nat_samples(metrics)
        assert dnat["ovsmgr_nat_rule_packets_total"]["web-forward"] >= 5 * TCP_CONNECTIONS, dnat
        assert dnat["ovsmgr_nat_rule_bytes_total"]["web-forward"] > 0, dnat
        assert dnat["ovsmgr_nat_rule_packets_total"]["masquerade"] == 2 * UDP_CONNECTIONS, dnat
        assert dnat["ovsmgr_nat_rule_connections"]["masquerade"] == UDP_CONNECTIONS, dnat
