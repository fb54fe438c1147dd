"""Controller metrics from a snapshot: what the Grafana dashboard reads."""

from __future__ import annotations

from typing import Any

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from ovsmgr.compiler.ids import rule_id
from ovsmgr.compiler.pipeline import CookieKind, cookie
from ovsmgr.controller.metrics import Counters, Durations, registry_for


def _snapshot(**over: Any) -> dict[str, Any]:
    durations = Durations()
    for seconds in (0.004, 0.02, 0.02, 3.0, 100.0):
        durations.observe(seconds)
    ids = {rule_id(n): n for n in ("blocked", "lan-out", "masquerade", "try-telnet")}
    snap = {
        "bridge": "br0", "generation": 4, "applied_at": 1.0, "last_change_seconds": 0.02, "connected": True,
        "flows": 10, "reload_failures": 0, "update_failures": 1, "counters": Counters(),
        "stats": {cookie(CookieKind.FIREWALL, rule_id("blocked")): [5, 300],
                  cookie(CookieKind.FIREWALL, rule_id("lan-out")): [7, 700],
                  cookie(CookieKind.NAT, rule_id("masquerade")): [2, 120],
                  cookie(CookieKind.SHADOW, rule_id("try-telnet")): [1, 60],
                  cookie(CookieKind.DEFAULT): [3, 180]},
        "names": ids, "actions": {rule_id("blocked"): "drop", rule_id("lan-out"): "allow", 0: "drop"},
        "zone": 7, "conntrack": 12, "conntrack_limit": 100, "change_durations": durations,
    }
    return {**snap, **over}


def _samples(snap: dict[str, Any]) -> dict[str, list[tuple[dict[str, str], float]]]:
    text = generate_latest(registry_for(lambda: snap)).decode()
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((dict(s.labels), s.value))
    return out


def test_drops_count_enforced_drop_and_reject_rules_and_the_default_only() -> None:
    dropped = {lb["rule"]: v for lb, v in _samples(_snapshot())["ovsmgr_dropped_packets_total"]}
    assert dropped == {"blocked": 5, "(default)": 3}


def test_rule_packets_are_labelled_by_kind() -> None:
    kinds = {(lb["rule"], lb["kind"]) for lb, _ in _samples(_snapshot())["ovsmgr_rule_packets_total"]}
    assert kinds == {("blocked", "firewall"), ("lan-out", "firewall"), ("masquerade", "nat"),
                     ("try-telnet", "shadow"), ("(default)", "default")}


def test_change_durations_are_a_cumulative_histogram() -> None:
    samples = _samples(_snapshot())
    buckets = {lb["le"]: v for lb, v in samples["ovsmgr_change_duration_seconds_bucket"]}
    assert (buckets["0.005"], buckets["0.025"], buckets["5.0"], buckets["60.0"], buckets["+Inf"]) == (1, 3, 4, 4, 5)
    assert samples["ovsmgr_change_duration_seconds_count"][0][1] == 5


def test_conntrack_fill_needs_a_limit() -> None:
    assert _samples(_snapshot())["ovsmgr_conntrack_limit"][0][1] == 100
    assert "ovsmgr_conntrack_limit" not in _samples(_snapshot(conntrack_limit=None))


def test_nat_rule_metrics_come_from_the_nat_count_flows_and_conntrack() -> None:
    masq = rule_id("masquerade")
    stats = {**_snapshot()["stats"], cookie(CookieKind.NAT_COUNT, masq): [40, 4000]}
    samples = _samples(_snapshot(stats=stats, nat_connections={masq: 3}))
    assert samples["ovsmgr_nat_rule_packets_total"] == [({"bridge": "br0", "rule": "masquerade"}, 40)]
    assert samples["ovsmgr_nat_rule_bytes_total"] == [({"bridge": "br0", "rule": "masquerade"}, 4000)]
    assert samples["ovsmgr_nat_rule_connections"] == [({"bridge": "br0", "rule": "masquerade"}, 3)]
    # the counting flows are not a fifth kind of ovsmgr_rule_packets_total
    kinds = {lb["kind"] for lb, _ in samples["ovsmgr_rule_packets_total"]}
    assert "nat_count" not in kinds


def test_nat_rule_connections_are_left_out_while_conntrack_cannot_be_read() -> None:
    stats = {cookie(CookieKind.NAT_COUNT, rule_id("masquerade")): [1, 60]}
    samples = _samples(_snapshot(stats=stats, nat_connections=None))
    assert samples["ovsmgr_nat_rule_packets_total"] == [({"bridge": "br0", "rule": "masquerade"}, 1)]
    assert "ovsmgr_nat_rule_connections" not in samples


def test_a_fleet_controller_labels_every_sample_by_switch() -> None:
    snaps = [_snapshot(switch="edge-1", fleet_generation=3, active=True),
             _snapshot(switch="edge-2", fleet_generation=4, connected=False, active=False)]
    text = generate_latest(registry_for(lambda: snaps)).decode()
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, []).append((dict(s.labels), s.value))
    assert {lb["switch"]: v for lb, v in samples["ovsmgr_switch_connected"]} == {"edge-1": 1, "edge-2": 0}
    assert {lb["switch"]: v for lb, v in samples["ovsmgr_fleet_generation"]} == {"edge-1": 3, "edge-2": 4}
    assert {lb["switch"]: v for lb, v in samples["ovsmgr_fleet_active"]} == {"edge-1": 1, "edge-2": 0}
    assert all("switch" in lb for series in samples.values() for lb, _ in series)
    dropped = {(lb["switch"], lb["rule"]) for lb, _ in samples["ovsmgr_dropped_packets_total"]}
    assert dropped == {(s, r) for s in ("edge-1", "edge-2") for r in ("blocked", "(default)")}
    assert "switch" not in _samples(_snapshot())["ovsmgr_switch_connected"][0][0], "one bridge: no switch label"
