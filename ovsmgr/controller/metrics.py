"""Prometheus metrics of controller mode, collected when scraped.

Per-rule packet and byte counters come from OpenFlow flow statistics (polled
by the app) mapped back through cookies to rule names, the drops of each rule's
`limit:` from its meter's statistics; conntrack entries of the
policy's zone from ovs-vswitchd's `dpctl/ct-stats-show` (OpenFlow has no conntrack
statistics). A flow replaced by an update starts counting from zero again,
which Prometheus' rate() treats as a counter reset.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from ovsmgr.compiler.pipeline import CookieKind, cookie_parts
from ovsmgr.compiler.stages.filter import DEFAULT_RULE
from ovsmgr.southbound.conntrack import OvsToolError, zone_connections


@dataclass
class Counters:
    """Counters the controller keeps itself (packet-ins, logs, rejects)."""

    packet_ins: dict[str, int] = field(default_factory=lambda: {"reject": 0, "log": 0, "unknown": 0})
    rejects_sent: int = 0
    log_lines: int = 0
    log_suppressed: int = 0
    reject_suppressed: int = 0


def conntrack_entries(ctl: str | None, zone: int) -> int | None:
    """Connections in `zone` of a userspace datapath, or None when they cannot be read."""
    if ctl is None:
        return None
    try:
        return zone_connections(ctl, zone)
    except OvsToolError:
        return None


def rule_totals(stats: dict[int, list[int]], names: dict[int, str]) -> dict[tuple[str, str], list[int]]:
    """(rule, kind) -> [packets, bytes], summed over the rule's flows."""
    out: dict[tuple[str, str], list[int]] = {}
    for cookie_value, (packets, octets) in stats.items():
        ours, kind, rid = cookie_parts(cookie_value)
        if not ours or kind is None or kind in (CookieKind.INFRA, CookieKind.LEARNED):
            continue
        name = DEFAULT_RULE if kind is CookieKind.DEFAULT else names.get(rid, f"(removed rule {rid:#010x})")
        entry = out.setdefault((name, kind.name.lower()), [0, 0])
        entry[0] += packets
        entry[1] += octets
    return out


class ControllerCollector(Collector):
    """Reads the controller's state at scrape time; `source` returns a plain snapshot."""

    def __init__(self, source: Callable[[], dict[str, Any]]) -> None:
        self.source = source

    def collect(self) -> Iterator[Any]:
        snap = self.source()
        labels = ["bridge"]
        bridge = [snap["bridge"]]
        yield _gauge("ovsmgr_applied_generation", "Generation of the flows the controller last pushed.",
                     labels, bridge, snap["generation"])
        yield _gauge("ovsmgr_applied_timestamp_seconds", "When the controller last pushed flows (Unix time).",
                     labels, bridge, snap["applied_at"])
        yield _gauge("ovsmgr_last_change_duration_seconds", "How long the last reload or runtime change took.",
                     labels, bridge, snap["last_change_seconds"])
        yield _gauge("ovsmgr_switch_connected", "1 while the switch is connected to the controller.",
                     labels, bridge, 1 if snap["connected"] else 0)
        yield _gauge("ovsmgr_flows", "ovsmgr flows the controller keeps on the switch.", labels, bridge, snap["flows"])
        yield _counter("ovsmgr_reload_failures", "Reloads refused because the policy did not validate.",
                       labels, bridge, snap["reload_failures"])
        yield _counter("ovsmgr_update_failures", "Runtime changes refused.", labels, bridge, snap["update_failures"])
        yield from _packet_in_metrics(snap, bridge)
        yield from _rule_metrics(snap, bridge)
        backends = GaugeMetricFamily("ovsmgr_backend_up", "1 while a load-balanced DNAT backend passes its health "
                                     "check, 0 while it is taken out.", labels=["bridge", "rule", "backend"])
        for backend in snap.get("backends", ()):
            where = f"{backend['address']}:{backend['port']}" if backend["port"] else str(backend["address"])
            backends.add_metric([*bridge, str(backend["rule"]), where], 1 if backend["up"] else 0)
        yield backends
        if snap.get("conntrack") is not None:
            yield _gauge("ovsmgr_conntrack_entries", "Conntrack entries in the policy's zone.", ["bridge", "zone"],
                         [*bridge, str(snap["zone"])], snap["conntrack"])


def _packet_in_metrics(snap: dict[str, Any], bridge: list[str]) -> Iterator[Any]:
    counters: Counters = snap["counters"]
    packet_ins = CounterMetricFamily("ovsmgr_packet_ins", "Packet-ins by kind.", labels=["bridge", "kind"])
    for kind, count in sorted(counters.packet_ins.items()):
        packet_ins.add_metric([*bridge, kind], count)
    yield packet_ins
    yield _counter("ovsmgr_rejects_sent", "TCP RSTs and ICMP unreachables sent for reject rules.",
                   ["bridge"], bridge, counters.rejects_sent)
    yield _counter("ovsmgr_log_lines", "Match log lines written.", ["bridge"], bridge, counters.log_lines)
    yield _counter("ovsmgr_log_suppressed", "Match log lines dropped by the rate limit.", ["bridge"], bridge,
                   counters.log_suppressed)


def _rule_metrics(snap: dict[str, Any], bridge: list[str]) -> Iterator[Any]:
    packets = CounterMetricFamily("ovsmgr_rule_packets", "Packets matched by a rule's flows.",
                                  labels=["bridge", "rule", "kind"])
    octets = CounterMetricFamily("ovsmgr_rule_bytes", "Bytes matched by a rule's flows.",
                                 labels=["bridge", "rule", "kind"])
    for (rule, kind), (p, b) in sorted(rule_totals(snap["stats"], snap["names"]).items()):
        packets.add_metric([*bridge, rule, kind], p)
        octets.add_metric([*bridge, rule, kind], b)
    yield packets
    yield octets
    dropped = CounterMetricFamily("ovsmgr_limit_dropped_packets", "Packets a rule's limit: dropped (its meter).",
                                  labels=["bridge", "rule"])
    for rule, count in sorted(snap.get("limit_drops", {}).items()):
        dropped.add_metric([*bridge, rule], count)
    yield dropped


def _gauge(name: str, doc: str, labels: list[str], values: list[str], value: float) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=labels)
    family.add_metric(values, value)
    return family


def _counter(name: str, doc: str, labels: list[str], values: list[str], value: float) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=labels)
    family.add_metric(values, value)
    return family


def registry_for(source: Callable[[], dict[str, Any]]) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ControllerCollector(source))
    return registry
